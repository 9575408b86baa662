/**
 * The scheduler (issue 10): one protection pass over the current desired state at Clock time,
 * and the loop that runs it every `pass_interval_seconds` on Effect's Clock.
 *
 * Per pass:
 *   1. Targets with a policy that are not `attached` in the manifest, or that PVE does not list
 *      active (a pulled USB disk, an unreachable NFS/PBS), are skipped and reported: nothing runs
 *      against them and nothing is pruned there.
 *   2. Per active target: its backups are listed once, provenance is judged, and the manifest's
 *      retention is settled against the one in force (adopted, or held pending a signature).
 *   3. Per desired guest present on the node and per active target: `backupDueOnTarget` (due.ts)
 *      from ProtectionStore's last success; missed slots after downtime are one backup. A failed
 *      backup is retried after `failedRetryAfter`, not at every pass.
 *   4. Due backups run (each in its guest's queue turn under the global cap); after a success the
 *      guest is pruned on that target in the same turn. Guests not due are pruned when the policy
 *      in force removes something (the listing from step 2 decides, so an idle pass costs no extra
 *      PVE call per guest).
 * A removed target or a removed policy prunes nothing (only targets with a policy are visited).
 */
import { Clock, Duration, Effect, Either, Option, Schedule } from "effect"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { JournalError, StoreServices } from "../../layers/Journal.js"
import { ProtectionStore, type RunRecord } from "../../layers/ProtectionStore.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { DesiredState } from "../../schema/desired.js"
import { type StorageId, VmId } from "../../schema/ids.js"
import type { NodeStorageEntry } from "../../schema/proxmox.js"
import type { BackupPolicy, Retention, StorageTarget } from "../../schema/storage.js"
import { type BackupOutcome, backupSaga, type BackupServices } from "./backup.js"
import { backupDueOnTarget, type DueReason } from "./due.js"
import { ProtectionEnv, type SchedulerMemory } from "./env.js"
import { retentionInForce, retentionJson, sameRetention } from "./policy.js"
import {
  classifyListing,
  type PendingRetention,
  plannedRemovals,
  pruneGuest,
  pruneInTurn,
  type PruneOutcome,
  settleRetention
} from "./prune.js"

export interface PassSkip {
  readonly storage: StorageId
  readonly vmid: VmId | null
  readonly reason: string
}

export interface PassDecision {
  readonly vmid: VmId
  readonly storage: StorageId
  readonly due: boolean
  readonly reason: DueReason | "retry_later" | "not_on_node"
}

export interface PassReport {
  readonly atMs: number
  readonly decisions: ReadonlyArray<PassDecision>
  readonly backups: ReadonlyArray<BackupOutcome>
  readonly prunes: ReadonlyArray<PruneOutcome>
  readonly skipped: ReadonlyArray<PassSkip>
  /** Retention changes held for an operator's signature (reported like reconcile's). */
  readonly pending: ReadonlyArray<PendingRetention>
  readonly adopted: ReadonlyArray<StorageId>
}

type PolicyTarget = StorageTarget & { readonly policy: BackupPolicy }

/** Backup targets with a policy, whatever their state (the pass reports the ones it skips). */
const policyTargets = (manifest: ReadonlyArray<StorageTarget>): ReadonlyArray<PolicyTarget> =>
  manifest.flatMap((t) => (t.policy !== undefined && (t.role === "vzdump-target" || t.role === "pbs-offsite") ? [{ ...t, policy: t.policy }] : []))

const runKey = (vmid: number, storage: string) => `${vmid}\u0000${storage}`

/**
 * One guest's backup (a slot of the global cap, then the guest's queue turn), then its prune on
 * that target in a turn of its own: the slot is not held while archives are deleted, so the next
 * guest's vzdump starts at once. The prune lists again inside its turn only if the backup's
 * listing is missing; the gate lists afresh before every deletion anyway.
 */
const backupThenPrune = (vmid: VmId, storage: StorageId) =>
  Effect.gen(function*() {
    const env = yield* ProtectionEnv
    const queue = yield* GuestQueue
    const store = yield* ProtectionStore
    const outcome = yield* env.backupSlots.withPermits(1)(queue.serialize(vmid)(
      Effect.gen(function*() {
        const o = yield* backupSaga(vmid, storage, "schedule")
        yield* store.recordRun({ kind: "backup", vmid, storage, result: o.result, detail: o.detail })
        if (o.result === "failed") yield* Effect.logWarning(o.detail)
        return o
      })
    ))
    if (outcome.result === "failed") return { backup: outcome, prune: Option.none<PruneOutcome>() }
    const pruned = yield* queue.serialize(vmid)(pruneInTurn(vmid, storage, outcome.listing, env.timeZone, env.memory.finishedOps))
    return { backup: outcome, prune: Option.some(pruned) }
  })

/** One pass; see the module comment. Fails only when the state store fails (JournalError). */
export const protectionPass = (desired: DesiredState) =>
  Effect.gen(function*() {
    const env = yield* ProtectionEnv
    const pve = yield* Proxmox
    const store = yield* ProtectionStore
    const tz = env.timeZone
    const memory = env.memory
    const atMs = yield* Clock.currentTimeMillis
    const skipped: Array<PassSkip> = []
    const adopted: Array<StorageId> = []
    const decisions: Array<PassDecision> = []
    const empty = (): PassReport => ({ atMs, decisions, backups: [], prunes: [], skipped, pending: pendingFromMemory(memory, targets), adopted })

    const targets = policyTargets(desired.storage ?? [])
    // a target no longer in the manifest (or without a policy) has nothing pending any more
    for (const id of [...memory.pending.keys()]) if (!targets.some((t) => t.id === id && t.state === "attached")) memory.pending.delete(id)
    for (const t of targets) {
      if (t.state !== "attached") skipped.push({ storage: t.id, vmid: null, reason: `target is ${t.state} in the manifest: no backup, nothing pruned` })
    }
    const attached = targets.filter((t) => t.state === "attached")
    if (attached.length === 0) return empty()

    // what is due, from the store alone (no PVE call)
    const runs = new Map<string, RunRecord>()
    for (const r of yield* store.runs) if (r.kind === "backup") runs.set(runKey(r.vmid, r.storage), r)
    const retryMs = Duration.toMillis(env.failedRetryAfter)
    const sweepMs = Duration.toMillis(env.sweepInterval)
    const dueOn = new Map<string, Array<{ vmid: VmId; reason: DueReason }>>()
    const candidates = desired.guests.map((g) => VmId.make(g.vmid))
    for (const t of attached) {
      const list: Array<{ vmid: VmId; reason: DueReason }> = []
      for (const vmid of candidates) {
        const run = runs.get(runKey(vmid, t.id))
        const last = run?.lastSuccessMs ?? undefined
        // "not yet" from the slot remembered for this last success: the same answer backupDue
        // gives (its next slot after `last` is still ahead), without the calendar every pass
        const known = memory.nextSlot.get(runKey(vmid, t.id))
        if (last !== undefined && last <= atMs && known !== undefined && known.last === last && known.schedule === t.policy.schedule && known.slot > atMs) {
          decisions.push({ vmid, storage: t.id, due: false, reason: "not_yet" })
          continue
        }
        const due = backupDueOnTarget({ target: t.id, schedule: t.policy.schedule }, last, atMs, tz)
        if (last !== undefined && due.reason === "not_yet" && due.next_at !== null) {
          memory.nextSlot.set(runKey(vmid, t.id), { schedule: t.policy.schedule, last, slot: due.next_at })
        }
        const backoff = due.due && run !== undefined && run.lastResult === "failed" && atMs - run.lastAttemptMs < retryMs
        if (due.due && !backoff) list.push({ vmid, reason: due.reason })
        else decisions.push({ vmid, storage: t.id, due: false, reason: backoff ? "retry_later" : due.reason })
      }
      dueOn.set(t.id, list)
    }
    const inForce = new Map<string, Option.Option<Retention>>()
    for (const t of attached) inForce.set(t.id, yield* retentionInForce(t.id))
    // a target is listed whole when swept, or when its manifest retention is one not yet judged
    // (and when the policy in force changed since: a signed change prunes at the next pass)
    const inForceKey = (id: string) => Option.match(inForce.get(id) ?? Option.none(), { onNone: () => "none", onSome: retentionKey })
    const sweep = (t: PolicyTarget) => {
      const last = memory.sweptAt.get(t.id)
      const seen = memory.pending.get(t.id)
      const settled = Option.exists(inForce.get(t.id) ?? Option.none(), (r) => sameRetention(r, t.policy.retention)) ||
        (seen !== undefined && seen.key === retentionKey(t.policy.retention))
      return last === undefined || atMs - last.atMs >= sweepMs || last.inForce !== inForceKey(t.id) || !settled
    }
    const touched = attached.filter((t) => (dueOn.get(t.id) ?? []).length > 0 || sweep(t))
    if (touched.length === 0) return empty()

    const nodeStorage = yield* Effect.either(pve.nodeStorage)
    const guests = yield* Effect.either(pve.listGuests)
    if (Either.isLeft(nodeStorage) || Either.isLeft(guests)) {
      const why = Either.isLeft(nodeStorage) ? `storage status unreadable (${nodeStorage.left._tag})` : "guest list unreadable"
      for (const t of touched) skipped.push({ storage: t.id, vmid: null, reason: `${why}: no backup, nothing pruned` })
      return empty()
    }
    const status = new Map<string, NodeStorageEntry>(nodeStorage.right.map((s) => [s.storage, s]))
    const present = new Set<number>(guests.right.filter((g) => g.template !== 1).map((g) => g.vmid))

    const work: Array<Effect.Effect<{ backup: Option.Option<BackupOutcome>; prune: Option.Option<PruneOutcome> }, JournalError, BackupServices>> = []
    for (const t of touched) {
      const s = status.get(t.id)
      if (s === undefined || s.active !== 1 || s.enabled === 0) {
        skipped.push({
          storage: t.id,
          vmid: null,
          reason: s === undefined ? "PVE has no storage entry for this target: no backup, nothing pruned" : "target not active in PVE (disconnected or unreachable): no backup, nothing pruned"
        })
        continue
      }
      const due = (dueOn.get(t.id) ?? []).filter((d) => present.has(d.vmid))
      for (const d of dueOn.get(t.id) ?? []) {
        if (!present.has(d.vmid)) decisions.push({ vmid: d.vmid, storage: t.id, due: false, reason: "not_on_node" })
      }
      for (const d of due) {
        decisions.push({ vmid: d.vmid, storage: t.id, due: true, reason: d.reason })
        work.push(Effect.map(backupThenPrune(d.vmid, t.id), (r) => ({ backup: Option.some(r.backup), prune: r.prune })))
      }
      if (!sweep(t)) continue
      // the sweep: list the target whole, settle its retention, prune every guest not backed up now
      const listing = yield* Effect.either(pve.storageContent(t.id, { content: "backup" }))
      if (Either.isLeft(listing)) {
        skipped.push({ storage: t.id, vmid: null, reason: `backups could not be listed (${listing.left._tag}): nothing pruned` })
        continue
      }
      const archives = yield* classifyListing(t.id, listing.right, memory.finishedOps)
      const settled = yield* settleRetention(t.id, t.policy.retention, archives, tz)
      if (settled._tag === "pending") memory.pending.set(t.id, { key: retentionKey(t.policy.retention), pending: settled.pending })
      else memory.pending.delete(t.id)
      if (settled._tag === "adopted") adopted.push(t.id)
      const policy = yield* retentionInForce(t.id)
      memory.sweptAt.set(t.id, { atMs, inForce: Option.match(policy, { onNone: () => "none", onSome: retentionKey }) })
      const backingUp = new Set<number>(due.map((d) => d.vmid))
      for (const [vmid, a] of archives) {
        // a guest backed up now is pruned right after its backup, in the same turn
        if (backingUp.has(vmid) || plannedRemovals(a, policy, tz).length === 0) continue
        work.push(Effect.map(pruneGuest(vmid, t.id, tz, memory.finishedOps), (p) => ({ backup: Option.none(), prune: Option.some(p) })))
      }
    }

    // the cap and the queue bound what runs at once
    const results = yield* Effect.forEach(work, (w) => w, { concurrency: "unbounded" })
    return {
      atMs,
      decisions,
      backups: results.flatMap((r) => Option.toArray(r.backup)),
      prunes: results.flatMap((r) => Option.toArray(r.prune)).filter((p) => p.result !== "nothing"),
      skipped,
      pending: pendingFromMemory(memory, targets),
      adopted
    } satisfies PassReport
  })

const retentionKey = (r: Retention) => JSON.stringify(Object.entries(retentionJson(r)).sort(([a], [b]) => (a < b ? -1 : 1)))

/** The retention changes still waiting for a signature, for the targets the manifest has. */
const pendingFromMemory = (memory: SchedulerMemory, targets: ReadonlyArray<PolicyTarget>): ReadonlyArray<PendingRetention> =>
  targets.flatMap((t) => {
    const p = memory.pending.get(t.id)
    return p !== undefined && p.key === retentionKey(t.policy.retention) ? [p.pending as PendingRetention] : []
  })

export type PassServices = Proxmox | StoreServices | ProtectionStore | GuestQueue | ProtectionEnv

export interface ProtectionLoopOptions<R1, R2> {
  /** The desired state the daemon holds now (None: the hub published nothing yet: no pass). */
  readonly desired: Effect.Effect<Option.Option<DesiredState>, never, R1>
  /** Whether mutation is allowed now (journal recovered, state store healthy). */
  readonly mayMutate?: Effect.Effect<boolean, never, R1>
  /** Gets every pass's report and the desired state it ran on (ProtectionBoard.publish). */
  readonly publish?: (r: PassReport, desired: DesiredState) => Effect.Effect<void, never, R2>
}

/**
 * Runs a pass now and then every `pass_interval_seconds` (Effect's Clock: TestClock drives it in
 * tests). A pass that fails or dies is logged and the loop goes on; only interruption ends it.
 */
export const protectionLoop = <R1 = never, R2 = never>(opts: ProtectionLoopOptions<R1, R2>) =>
  Effect.gen(function*() {
    const env = yield* ProtectionEnv
    const once = Effect.gen(function*() {
      const may = opts.mayMutate === undefined ? true : yield* opts.mayMutate
      const desired = yield* opts.desired
      if (!may || Option.isNone(desired)) return
      const report = yield* protectionPass(desired.value)
      for (const b of report.backups) yield* Effect.logInfo(`backup ${b.vmid} → ${b.storage}: ${b.result}: ${b.detail}`)
      for (const p of report.prunes) yield* Effect.logInfo(`prune ${p.vmid} on ${p.storage}: ${p.result}: ${p.detail}`)
      for (const s of report.skipped) yield* Effect.logWarning(`protection skipped ${s.storage}${s.vmid === null ? "" : ` for ${s.vmid}`}: ${s.reason}`)
      if (opts.publish !== undefined) yield* opts.publish(report, desired.value)
    }).pipe(Effect.catchAllCause((cause) => Effect.logError("protection pass failed", cause)))
    return yield* Effect.repeat(once, Schedule.spaced(env.passInterval))
  }).pipe(Effect.asVoid)

/**
 * The pending signatures of a pass as the host report carries them, keeping `since` from the
 * previous report for a change still pending (the same storage and retention).
 */
export const pendingSignaturesOf = (
  report: PassReport,
  previous: ReadonlyArray<{ readonly op: string; readonly params: unknown; readonly since: string }>
) =>
  report.pending.map((p) => {
    const same = previous.find((x) => x.op === p.op && JSON.stringify(x.params) === JSON.stringify(p.params))
    return {
      op: p.op,
      vmid: p.vmid,
      params: p.params,
      reason: p.reason,
      since: same?.since ?? new Date(report.atMs).toISOString().replace(/\.\d{3}Z$/, "Z")
    }
  })
