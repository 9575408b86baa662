/**
 * Executes actions against PVE as journaled operations: every step is recorded as started,
 * its UPID is recorded before the wait, and it is marked done only after `exitstatus == OK`.
 * Recovery (./recover.ts) reads exactly these records after a crash.
 *
 * The destructive executors (decommission, restore-now) run only after the gate said
 * `signed_ok`, or `allowed` for agent-created provenance; they never decide that themselves.
 */
import { Data, Effect, Option, Schedule, Schema } from "effect"
import { Journal } from "../../layers/Journal.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { SnapshotName, StorageId, type Upid, type VmId, VolumeId } from "../../schema/ids.js"
import type { ProxmoxError, WaitError } from "../../schema/proxmox.js"
import type { DesiredGuest } from "../../schema/desired.js"

export type StepError = ProxmoxError | WaitError | GuestNotOnNode

/** The desired state asks for a guest but names no golden archive to restore it from. */
export class NoProvisioning extends Data.TaggedError("NoProvisioning")<{ readonly message: string }> {}

/** A job whose params do not say what its op needs. */
export class BadJob extends Data.TaggedError("BadJob")<{ readonly message: string }> {}

/** vzdump answered "OK": none of the requested guests is on this node, nothing ran. */
export class GuestNotOnNode extends Data.TaggedError("GuestNotOnNode")<{ readonly message: string }> {}

const vzdumpUpid = (vmid: VmId, storage: StorageId) =>
  Effect.flatMap(Proxmox, (p) => p.vzdump({ vmid, storage, mode: "snapshot" })).pipe(
    Effect.flatMap(Option.match({
      onNone: () => Effect.fail(new GuestNotOnNode({ message: `vzdump of ${vmid} started nothing: the guest is not on this node` })),
      onSome: (u: Upid) => Effect.succeed(u)
    }))
  )

/** A PVE task step: started → UPID recorded → waited → done. */
export const taskStep = <E, R>(opId: string, step: string, start: Effect.Effect<Upid, E, R>) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const pve = yield* Proxmox
    yield* journal.stepStarted(opId, step)
    const upid = yield* start
    yield* journal.recordUpid(opId, step, upid)
    yield* pve.waitTask(upid)
    yield* journal.stepDone(opId, step)
  })

/** PUT config is dual-mode: a UPID is waited, nothing means applied. An empty string deletes the key. */
export const configStep = (opId: string, step: string, vmid: VmId, changes: Readonly<Record<string, string | number | undefined>>) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const pve = yield* Proxmox
    const entries = Object.entries(changes).filter((e): e is [string, string | number] => e[1] !== undefined)
    const set = Object.fromEntries(entries.filter(([, v]) => v !== ""))
    const del = entries.filter(([, v]) => v === "").map(([k]) => k)
    yield* journal.stepStarted(opId, step, { set, delete: del })
    if (Object.keys(set).length === 0 && del.length === 0) return yield* journal.stepDone(opId, step)
    const maybe = yield* pve.setConfig(vmid, { set, delete: del })
    if (Option.isSome(maybe)) {
      yield* journal.recordUpid(opId, step, maybe.value)
      yield* pve.waitTask(maybe.value)
    }
    yield* journal.stepDone(opId, step)
  })

/** Runs `body` as one journaled op; the op ends done, or failed with the error's message. */
export const journaled = <A, E extends { readonly message: string }, R>(
  op: { readonly kind: string; readonly vmid: VmId | null; readonly payload: unknown },
  body: (opId: string) => Effect.Effect<A, E, R>
) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const entry = yield* journal.begin(op)
    return yield* body(entry.id).pipe(
      Effect.tap(() => journal.finish(entry.id, "done")),
      Effect.tapError((e) => journal.finish(entry.id, "failed", e.message))
    )
  })

// ---------------------------------------------------------------------------------------------
// Benign actions

export const startGuest = (vmid: VmId) =>
  journaled({ kind: "start", vmid, payload: {} }, (id) => taskStep(id, "start", Effect.flatMap(Proxmox, (p) => p.start(vmid))))

export const stopGuest = (vmid: VmId) =>
  journaled({ kind: "stop", vmid, payload: {} }, (id) => taskStep(id, "stop", Effect.flatMap(Proxmox, (p) => p.stop(vmid))))

export const setGuestConfig = (vmid: VmId, set: Readonly<Record<string, string | number | undefined>>) =>
  journaled({ kind: "set_config", vmid, payload: { set } }, (id) => configStep(id, "set_config", vmid, set))

export const resizeRootfs = (vmid: VmId, sizeGib: number) =>
  journaled(
    { kind: "resize", vmid, payload: { sizeGib } },
    (id) => taskStep(id, "resize", Effect.flatMap(Proxmox, (p) => p.resize(vmid, "rootfs", `${sizeGib}G`)))
  )

export interface CreateSource {
  readonly archive: VolumeId
  readonly storage: StorageId
}

export const CREATE_STEPS = ["restore", "resize", "configure", "start"] as const

/**
 * Provision by restoring the golden archive (never `pct create`: only a restore keeps keyctl),
 * then size, label and start it. The guest is recorded as same-transaction provenance as soon
 * as the restore is accepted, so a compensating destroy is allowed without a signature.
 */
const buildGuest = (id: string, spec: DesiredGuest, source: CreateSource, memoryMiB: number) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const pve = yield* Proxmox
    yield* journal.stepStarted(id, "restore")
    const upid = yield* pve.restore({
      vmid: spec.vmid,
      archive: source.archive,
      storage: source.storage,
      unique: true,
      hostname: spec.hostname,
      ...(spec.cores === undefined ? {} : { cores: spec.cores }),
      memoryMiB,
      swapMiB: spec.swap_mib
    })
    // From here the guest exists and is ours: record that before anything can go wrong.
    yield* journal.recordProvenance(spec.vmid, "same_transaction", id)
    yield* journal.recordUpid(id, "restore", upid)
    yield* pve.waitTask(upid)
    yield* journal.stepDone(id, "restore")

    yield* taskStep(id, "resize", pve.resize(spec.vmid, "rootfs", `${spec.rootfs_gib}G`)).pipe(
      // the archive may already be at least that large: PVE refuses a no-op or a shrink
      Effect.catchIf(
        (e) => e._tag === "PveApiError" && /already at specified size|unable to shrink/.test(e.message),
        () => journal.stepDone(id, "resize")
      )
    )
    yield* configStep(id, "configure", spec.vmid, {
      description: spec.description,
      ...(spec.tags.length > 0 ? { tags: [...spec.tags].sort().join(";") } : {})
    })
    if (spec.power === "running") {
      yield* taskStep(id, "start", pve.start(spec.vmid))
    } else {
      yield* journal.stepDone(id, "start")
    }
  })

/** A lock held by a task that is still finishing is transient: retry for up to ~2 minutes. */
export const lockRetry = Schedule.exponential("1 second").pipe(Schedule.union(Schedule.spaced("10 seconds")), Schedule.upTo("2 minutes"))

const existing = (vmid: VmId) =>
  Effect.flatMap(Proxmox, (p) => p.guestStatus(vmid)).pipe(
    Effect.map(Option.some),
    Effect.catchIf((e) => e._tag === "PveApiError" && e.kind === "not_found", () => Effect.succeed(Option.none()))
  )

/**
 * Undo a create: destroy the guest, but only if the journal proves op `opId` created it
 * (same-transaction provenance). Returns whether anything of ours existed.
 */
export const compensateCreate = (opId: string, vmid: VmId) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const pve = yield* Proxmox
    const provenance = yield* journal.provenanceOf(vmid)
    if (!(Option.isSome(provenance) && provenance.value.kind === "same_transaction" && provenance.value.opId === opId)) return false
    const status = yield* existing(vmid)
    if (Option.isSome(status)) {
      if (status.value.status === "running") {
        yield* taskStep(opId, "compensate_stop", pve.stop(vmid)).pipe(Effect.retry({ schedule: lockRetry, while: (e) => e._tag === "PveLocked" }))
      }
      yield* taskStep(opId, "compensate_destroy", pve.destroy(vmid, { purge: true })).pipe(
        Effect.retry({ schedule: lockRetry, while: (e) => e._tag === "PveLocked" })
      )
      yield* journal.audit({
        actor: "executor",
        action: "destroy",
        target: String(vmid),
        decision: "allowed",
        detail: { reason: `compensating rollback of create ${opId} (same-transaction provenance)` }
      })
    }
    yield* journal.clearProvenance(vmid)
    return true
  })

/**
 * Provision by restoring the golden archive (never `pct create`: only a restore keeps keyctl),
 * then size, label and start it. One journaled transaction: if any step fails, the guest it
 * created is destroyed again (allowed unsigned by same-transaction provenance). If even that
 * fails, the op stays in flight for recovery at the next start.
 */
export const createGuest = (spec: DesiredGuest, source: CreateSource, memoryMiB: number) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const entry = yield* journal.begin({ kind: "create", vmid: spec.vmid, payload: { spec, source, memoryMiB } })
    return yield* buildGuest(entry.id, spec, source, memoryMiB).pipe(
      // once built it holds customer data: same-transaction provenance ends with the transaction
      Effect.tap(() => Effect.zipRight(journal.clearProvenance(spec.vmid), journal.finish(entry.id, "done"))),
      Effect.tapError((e) =>
        compensateCreate(entry.id, spec.vmid).pipe(
          Effect.flatMap(() => journal.finish(entry.id, "rolled_back", `${e.message}; the half-built guest was removed`)),
          Effect.ignore // compensation failed: stays in flight, recovery retries
        )
      )
    )
  })

// ---------------------------------------------------------------------------------------------
// Destructive actions (gate-approved only)

/** Stops the guest if it runs, then destroys it with its volumes and job references. */
export const decommissionSteps = (opId: string, vmid: VmId) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const journal = yield* Journal
    const status = yield* pve.guestStatus(vmid)
    if (status.status === "running") yield* taskStep(opId, "stop", pve.stop(vmid))
    else yield* journal.stepDone(opId, "stop")
    yield* taskStep(opId, "destroy", pve.destroy(vmid, { purge: true }))
    yield* journal.clearProvenance(vmid)
  })

export const decommission = (vmid: VmId, authorization: unknown) =>
  journaled({ kind: "decommission", vmid, payload: { authorization } }, (id) => decommissionSteps(id, vmid))

export type RestoreSource =
  | { readonly snapshot: string }
  | { readonly backup: string; readonly storage: string; readonly backupStorage: string }

export const decodeRestoreSource = (params: Readonly<Record<string, unknown>>): Option.Option<RestoreSource> => {
  const snap = Schema.decodeUnknownOption(Schema.Struct({ snapshot: SnapshotName }))(params)
  if (Option.isSome(snap)) return Option.some({ snapshot: snap.value.snapshot })
  const backup = Schema.decodeUnknownOption(
    Schema.Struct({ backup: VolumeId, storage: StorageId, backup_storage: StorageId })
  )(params)
  return Option.map(backup, (b) => ({ backup: b.backup, storage: b.storage, backupStorage: b.backup_storage }))
}

/**
 * Restore-overwrite. From a snapshot: roll back (restarting a running guest). From a backup:
 * a restore with force destroys the old volumes first, so a failed overwrite would lose the
 * guest: take a fresh backup of the current state before anything else (SPEC §17).
 */
export const restoreNow = (vmid: VmId, source: RestoreSource, authorization: unknown) =>
  journaled({ kind: "restore-now", vmid, payload: { source, authorization } }, (id) =>
    Effect.gen(function*() {
      const pve = yield* Proxmox
      const wasRunning = (yield* pve.guestStatus(vmid)).status === "running"
      if ("snapshot" in source) {
        const name = Schema.decodeSync(SnapshotName)(source.snapshot)
        yield* taskStep(id, "rollback", pve.rollback(vmid, name, { start: wasRunning }))
        return
      }
      const backupStorage = Schema.decodeSync(StorageId)(source.backupStorage)
      yield* taskStep(id, "safety_backup", vzdumpUpid(vmid, backupStorage))
      if (wasRunning) yield* taskStep(id, "stop", pve.stop(vmid))
      yield* taskStep(
        id,
        "restore",
        pve.restore({
          vmid,
          archive: Schema.decodeSync(VolumeId)(source.backup),
          storage: Schema.decodeSync(StorageId)(source.storage),
          force: true
        })
      )
      if (wasRunning) yield* taskStep(id, "start", pve.start(vmid))
    }))

export const forceBackup = (vmid: VmId, storage: StorageId) =>
  journaled({ kind: "force-backup", vmid, payload: { storage } }, (id) =>
    taskStep(id, "backup", vzdumpUpid(vmid, storage)))
