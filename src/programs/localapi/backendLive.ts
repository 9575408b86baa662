/**
 * LocalApiBackendLive (issue 11): what each local-API endpoint does for the guest its token
 * authorizes. Reads reuse data protection (due.ts over ProtectionStore's last successes, the
 * restore-test records) against the desired state the daemon holds; mutations are journaled sagas
 * in the guest's queue turn (./ops.ts, protection/backup.ts).
 *
 * Mutations run in fibers owned by this layer's scope, not the request's: a controller that
 * disconnects (its guest is being rolled back under it) cannot interrupt a saga halfway; the
 * daemon's shutdown ends them, and recovery settles what it interrupted.
 *
 * `GET /backup/due` is the hot path (every controller polls it): no PVE call, and its answer is
 * cached per guest until the next slot, a backup's result, a new desired state, or a few seconds.
 * `contact` keeps the last contact in memory and writes it through at most once per
 * CONTACT_WRITE_MS per guest.
 */
import { Cause, Clock, Effect, Exit, Fiber, Layer, Option, Ref } from "effect"
import { ControllerStore, type ApiJob } from "../../layers/ControllerStore.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { JournalError, StoreServices } from "../../layers/Journal.js"
import { ProtectionStore } from "../../layers/ProtectionStore.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { DesiredState } from "../../schema/desired.js"
import { StorageId, type VmId } from "../../schema/ids.js"
import {
  ApiFailure,
  type BackupDueResponse,
  type BackupStatusResponse,
  type HealthResponse,
  type RestoreTestStatusResponse
} from "../../schema/localApi.js"
import { VERSION } from "../../version.js"
import { runBackup } from "../protection/backup.js"
import { backupDue, type GuestBackupDue, guestSchedules } from "../protection/due.js"
import { ProtectionEnv } from "../protection/env.js"
import { LocalApiBackend, type LocalApiBackendShape } from "./backend.js"
import { apiRollback, apiSnapshot, guestBusy } from "./ops.js"
import { storageView } from "./storageView.js"

export interface LocalApiBackendOptions {
  /** The desired state the daemon holds now (None: nothing published yet, or changes not allowed now). */
  readonly desired: Effect.Effect<Option.Option<DesiredState>>
  /** `controllers.max_snapshots`. */
  readonly maxSnapshots: number
  /** How long a `/backup/due` answer is reused at most (default 5 s). */
  readonly dueCacheMs?: number
  /** A guest's contact is written to the store at most this often (default 30 s). */
  readonly contactWriteMs?: number
}

export type BackendServices = Proxmox | StoreServices | ControllerStore | ProtectionStore | GuestQueue | ProtectionEnv

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")
const isoOrNull = (ms: number | null) => (ms === null ? null : iso(ms))
const clip = (s: string, n = 300) => (s.length > n ? `${s.slice(0, n)}…` : s)

const storeDown = (what: string) => (_: JournalError) =>
  new ApiFailure({ code: "unavailable", message: `${what}: the agent's state store failed; try again later` })

interface DueEntry {
  readonly desired: DesiredState
  readonly computedAt: number
  readonly validUntil: number
  readonly answer: GuestBackupDue
  readonly response: BackupDueResponse
}

const JOB_HISTORY = 10
const HEALTH_PROBE_MS = 5_000

export const make = (opts: LocalApiBackendOptions) =>
  Effect.gen(function*() {
    const context = yield* Effect.context<BackendServices>()
    const scope = yield* Effect.scope
    const controllers = yield* ControllerStore
    const protection = yield* ProtectionStore
    const env = yield* ProtectionEnv
    const dueCacheMs = opts.dueCacheMs ?? 5_000
    const contactWriteMs = opts.contactWriteMs ?? 30_000

    // a crash left these queued or running: no fiber will ever finish them
    const orphaned = yield* Effect.either(Effect.flatMap(Clock.currentTimeMillis, controllers.failOrphanJobs))
    if (orphaned._tag === "Left") yield* Effect.logWarning(`local API: orphaned backup jobs not failed: ${orphaned.left.message}`)
    else if (orphaned.right > 0) yield* Effect.logInfo(`local API: ${orphaned.right} backup job(s) left by a restart marked failed`)

    const dueCache = new Map<number, DueEntry>()
    // the runs table changes when any backup ends; a generation counter invalidates every guest
    const runsGeneration = yield* Ref.make(0)
    let cachedRunsGeneration = 0
    const lastWritten = new Map<number, number>()
    const storeHealthy = yield* Ref.make(true)
    let lastProbe: number | null = null

    const noteStore = <A, E extends { readonly _tag: string }, R>(e: Effect.Effect<A, E, R>) =>
      e.pipe(
        Effect.tap(() => Ref.set(storeHealthy, true)),
        Effect.tapError((x) => (x._tag === "JournalError" ? Ref.set(storeHealthy, false) : Effect.void))
      )

    /** Runs a mutation in this layer's scope; the caller waits for it but cannot interrupt it. */
    const detached = <A>(eff: Effect.Effect<A, ApiFailure, BackendServices>): Effect.Effect<A, ApiFailure> =>
      Effect.flatMap(Effect.forkIn(Effect.provide(eff, context), scope), (f) => Fiber.join(f))

    const desiredGuest = (vmid: VmId) =>
      Effect.map(opts.desired, Option.flatMap((d) => (d.guests.some((g) => g.vmid === vmid) ? Option.some(d) : Option.none())))

    const computeDue = (vmid: VmId, desired: DesiredState, now: number) =>
      Effect.gen(function*() {
        const schedules = guestSchedules(desired.storage ?? [])
        const runs = yield* noteStore(protection.runs).pipe(Effect.mapError(storeDown("backup due")))
        const last = new Map<StorageId, number>()
        for (const r of runs) {
          if (r.kind === "backup" && r.vmid === vmid && r.lastSuccessMs !== null) last.set(StorageId.make(r.storage), r.lastSuccessMs)
        }
        return backupDue(schedules, last, now, env.timeZone)
      })

    const toResponse = (d: GuestBackupDue): BackupDueResponse => ({
      due: d.due,
      reason: d.reason,
      target: d.target,
      last_success_at: isoOrNull(d.last_at),
      next_due_at: isoOrNull(d.next_at)
    })

    const NO_POLICY: BackupDueResponse = { due: false, reason: "no_policy", target: null, last_success_at: null, next_due_at: null }

    /** The guest's due answer (cached), or None when the guest is not desired. */
    const dueOf = (vmid: VmId) =>
      Effect.gen(function*() {
        const desired = yield* desiredGuest(vmid)
        if (Option.isNone(desired)) return Option.none<DueEntry>()
        const now = yield* Clock.currentTimeMillis
        const gen = yield* Ref.get(runsGeneration)
        if (gen !== cachedRunsGeneration) {
          dueCache.clear()
          cachedRunsGeneration = gen
        }
        const hit = dueCache.get(vmid)
        if (hit !== undefined && hit.desired === desired.value && now < hit.validUntil && now >= hit.computedAt) {
          return Option.some(hit)
        }
        const answer = yield* computeDue(vmid, desired.value, now)
        // a due answer changes at the next slot at the latest (or when a backup ends: generation)
        const entry: DueEntry = {
          desired: desired.value,
          computedAt: now,
          validUntil: Math.min(now + dueCacheMs, answer.next_at ?? Infinity),
          answer,
          response: toResponse(answer)
        }
        dueCache.set(vmid, entry)
        return Option.some(entry)
      })

    const backupDueEndpoint: LocalApiBackendShape["backupDue"] = (vmid) =>
      Effect.map(dueOf(vmid), Option.match({ onNone: () => NO_POLICY, onSome: (e) => e.response }))

    const viewJob = (j: ApiJob) => ({
      job: j.id,
      state: j.state,
      requested_at: iso(j.requestedMs),
      ended_at: isoOrNull(j.endedMs),
      archive: j.result,
      error: j.error === null ? null : clip(j.error)
    })

    /** Runs the job's backup in the guest's queue turn, recording its state as it goes. */
    const runJob = (job: ApiJob, storage: StorageId) =>
      Effect.gen(function*() {
        const outcome = yield* Effect.exit(
          Effect.zipRight(
            Effect.flatMap(Clock.currentTimeMillis, (at) => controllers.updateJob(job.id, { state: "running", at })),
            runBackup(job.vmid, storage, "api")
          )
        )
        const at = yield* Clock.currentTimeMillis
        yield* Ref.update(runsGeneration, (n) => n + 1)
        if (Exit.isSuccess(outcome)) {
          const o = outcome.value
          yield* controllers.updateJob(job.id, {
            state: o.result === "failed" ? "failed" : "done",
            at,
            ...(o.opId === null ? {} : { opId: o.opId }),
            ...(o.archive === null ? {} : { result: o.archive }),
            ...(o.result === "failed" ? { error: o.detail } : {})
          })
        } else if (!Cause.isInterruptedOnly(outcome.cause)) {
          yield* controllers.updateJob(job.id, { state: "failed", at, error: "the backup could not run (the state store failed)" })
        }
        // interrupted: the daemon is stopping; failOrphanJobs marks it at the next start
      }).pipe(
        Effect.catchAll((e) => Effect.logWarning(`local API: backup job ${job.id} not recorded: ${e.message}`)),
        Effect.provide(context)
      )

    // one submission at a time: two racing POSTs must not both pass the "already queued" check
    const submitLock = yield* Effect.makeSemaphore(1)

    const shape: LocalApiBackendShape = {
      storage: (vmid) => Effect.provide(storageView(vmid, opts.desired), context),

      snapshot: (vmid, req) => detached(apiSnapshot(vmid, req, opts.maxSnapshots)),

      rollback: (vmid, req) => detached(apiRollback(vmid, req.snapshot)),

      backup: (vmid) =>
        submitLock.withPermits(1)(Effect.gen(function*() {
          const due = yield* dueOf(vmid)
          if (Option.isNone(due) || due.value.answer.target === null) {
            return yield* new ApiFailure({ code: "unprocessable", message: "backup: the guest has no backup policy" })
          }
          const storage = due.value.answer.target
          const recent = yield* noteStore(controllers.jobs(vmid, JOB_HISTORY)).pipe(Effect.mapError(storeDown("backup")))
          if (recent.some((j) => j.state === "queued" || j.state === "running")) {
            return yield* new ApiFailure({ code: "conflict", message: "backup: a backup of this guest is already queued or running" })
          }
          const busy = yield* Effect.mapError(Effect.provide(guestBusy(vmid), context), storeDown("backup"))
          // held for an operator: refused; an op in flight: the backup waits for its turn
          if (Option.isSome(busy) && busy.value.held) {
            return yield* new ApiFailure({ code: "conflict", message: `backup: ${busy.value.why}` })
          }
          const now = yield* Clock.currentTimeMillis
          const job = yield* noteStore(controllers.createJob(vmid, "backup", now)).pipe(Effect.mapError(storeDown("backup")))
          yield* Effect.forkIn(runJob(job, storage), scope)
          return { job: job.id, state: job.state }
        })),

      backupDue: backupDueEndpoint,

      backupStatus: (vmid) =>
        Effect.gen(function*() {
          const jobs = yield* noteStore(controllers.jobs(vmid, JOB_HISTORY)).pipe(Effect.mapError(storeDown("backup status")))
          const runs = yield* noteStore(protection.runs).pipe(Effect.mapError(storeDown("backup status")))
          const mine = runs.filter((r) => r.kind === "backup" && r.vmid === vmid && r.lastSuccessMs !== null)
          const lastSuccess = mine.reduce<number | null>((m, r) => (m === null || r.lastSuccessMs! > m ? r.lastSuccessMs : m), null)
          const lastArchive = jobs.find((j) => j.state === "done" && j.result !== null)?.result ?? null
          const response: BackupStatusResponse = {
            jobs: jobs.map(viewJob),
            last_success_at: isoOrNull(lastSuccess),
            last_archive: lastArchive
          }
          return response
        }),

      restoreTestStatus: (vmid) =>
        Effect.gen(function*() {
          const tests = yield* noteStore(protection.restoreTests(500)).pipe(Effect.mapError(storeDown("restore-test status")))
          const mine = tests.filter((t) => t.vmid === vmid && t.result !== "skipped")
          const last = mine[0]
          const lastPass = mine.find((t) => t.result === "pass")
          const response: RestoreTestStatusResponse = {
            last_result: last === undefined ? null : last.result === "pass" ? "pass" : "fail",
            last_at: last === undefined ? null : iso(last.endedMs),
            archive: last?.archive ?? null,
            detail: last === undefined ? null : clip(last.detail),
            last_pass_at: lastPass === undefined ? null : iso(lastPass.endedMs)
          }
          return response
        }),

      heartbeat: (vmid, req) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          yield* noteStore(controllers.recordContact(vmid, now, Option.some({
            version: req.version,
            image: req.image,
            health: req.status,
            detail: req.detail ?? null
          }))).pipe(Effect.mapError(storeDown("heartbeat")))
          lastWritten.set(vmid, now)
        }),

      contact: (vmid) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const last = lastWritten.get(vmid)
          if (last !== undefined && now - last < contactWriteMs && now >= last) return
          lastWritten.set(vmid, now)
          yield* noteStore(controllers.recordContact(vmid, now, Option.none())).pipe(
            Effect.catchAll((e) => Effect.logWarning(`local API: contact of ${vmid} not recorded: ${e.message}`))
          )
        }),

      // unauthenticated: the store is probed at most once per HEALTH_PROBE_MS, whoever asks
      health: Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        if (lastProbe === null || now - lastProbe >= HEALTH_PROBE_MS || now < lastProbe) {
          lastProbe = now
          yield* Effect.ignore(noteStore(controllers.records))
        }
        const ok = yield* Ref.get(storeHealthy)
        const response: HealthResponse = { status: ok ? "ok" : "degraded", version: VERSION, checks: { state_store: ok ? "ok" : "failing" } }
        return response
      })
    }
    return shape
  })

/** The backend over the daemon's services; its mutations end with the layer's scope. */
export const LocalApiBackendLive = (opts: LocalApiBackendOptions): Layer.Layer<LocalApiBackend, never, BackendServices> =>
  Layer.scoped(LocalApiBackend, make(opts))
