/**
 * Operations as journaled sagas: every step is recorded as started, its UPID is recorded before
 * the wait, and it is marked done only after `exitstatus == OK`. Recovery (./recover.ts) reads
 * exactly these records after a crash. Step names are typed per operation kind
 * (src/schema/operations.ts), so a saga cannot write a step its recovery rule does not know.
 *
 * Irreversible PVE calls take a Clearance from the gate's Grant for the action (or, for a
 * create's own compensation, from `clearCompensation`); no executor decides that itself.
 */
import { OpLog } from "../../layers/OpLog.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import { AuditLog } from "../../layers/AuditLog.js"
import { Data, Effect, Option } from "effect"
import { lockRetry } from "./schedules.js"
import { Progress, type ProgressEvent } from "../../layers/Progress.js"
import { randomBytes } from "node:crypto"
import { type AdmissionRefused,  type JournalError, type NonceSpend, type StoreServices } from "../../layers/Journal.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { type Clearance, ClearanceRefused } from "../../schema/clearance.js"
import type { DesiredGuest } from "../../schema/desired.js"
import { type StorageId, type Upid, type VmId, type VolumeId } from "../../schema/ids.js"
import {
  type CreateSource,
  encodeOperation,
  type InstanceMarker,
  type Operation,
  type OperationKind,
  type OperationOf,
  type RestoreSource,
  type SignedAuthorization,
  type StepName
} from "../../schema/operations.js"
import type { ProxmoxError, WaitError } from "../../schema/proxmox.js"
import { clearBringupConfig, clearCompensation, type Grant } from "./gate.js"
import { notesFor } from "../protection/provenance.js"
import { pbsBackupRefusal } from "../protection/pbsGuard.js"
import { type ControllerOpFailed, ControllerOps } from "../controller/ops.js"
import { overwriteLayout } from "../bringup/layout.js"

export type StepError = ProxmoxError | WaitError | GuestNotOnNode | ClearanceRefused | AdmissionRefused | JournalError | ControllerOpFailed

/** The desired state asks for a guest but names no golden archive to restore it from. */
export class NoProvisioning extends Data.TaggedError("NoProvisioning")<{ readonly message: string }> {}

/** A job whose params do not say what its op needs. */
export class BadJob extends Data.TaggedError("BadJob")<{ readonly message: string }> {}

/** vzdump answered "OK": none of the requested guests is on this node, nothing ran. */
export class GuestNotOnNode extends Data.TaggedError("GuestNotOnNode")<{ readonly message: string }> {}

// ---------------------------------------------------------------------------------------------
// The saga: typed steps over the journal

export interface Saga<K extends OperationKind> {
  readonly id: string
  readonly op: OperationOf<K>
  /** A PVE task step: started → UPID recorded → waited → done. */
  readonly task: <E, R>(step: StepName<K>, start: Effect.Effect<Upid, E, R>) => Effect.Effect<void, E | WaitError | JournalError, R | StoreServices | Proxmox>
  /** PUT config (data-safe keys), dual-mode: a UPID is waited, nothing means applied. "" deletes a key. */
  readonly config: (
    step: StepName<K>,
    changes: Readonly<Record<string, string | number | undefined>>
  ) => Effect.Effect<void, ProxmoxError | WaitError | ClearanceRefused | JournalError, StoreServices | Proxmox>
  readonly started: (step: StepName<K>, data?: unknown) => Effect.Effect<void, JournalError, StoreServices>
  readonly done: (step: StepName<K>, data?: unknown) => Effect.Effect<void, JournalError, StoreServices>
}

/** Reports to whoever watches (the CLI's Progress); a no-op in the daemon. */
export const emitProgress = (event: ProgressEvent) =>
  Effect.flatMap(Effect.serviceOption(Progress), Option.match({ onNone: () => Effect.void, onSome: (p) => p.emit(event) }))

export const sagaOf = <K extends OperationKind>(id: string, op: OperationOf<K>): Saga<K> => ({
  id,
  op,
  task: (step, start) =>
    Effect.gen(function*() {
      const ops = yield* OpLog
      const pve = yield* Proxmox
      yield* ops.stepStarted(id, step)
      yield* emitProgress({ kind: "step", step, state: "started" })
      const upid = yield* start
      yield* ops.recordUpid(id, step, upid)
      yield* emitProgress({ kind: "task", step, upid })
      yield* pve.waitTask(upid)
      yield* ops.stepDone(id, step)
      yield* emitProgress({ kind: "step", step, state: "done" })
    }),
  config: (step, changes) =>
    Effect.gen(function*() {
      const ops = yield* OpLog
      const pve = yield* Proxmox
      const vmid = op.vmid
      if (vmid === null) return yield* Effect.dieMessage(`saga ${id}: a config step on a host-level op`)
      const entries = Object.entries(changes).filter((e): e is [string, string | number] => e[1] !== undefined)
      const set = Object.fromEntries(entries.filter(([, v]) => v !== ""))
      const del = entries.filter(([, v]) => v === "").map(([k]) => k)
      yield* ops.stepStarted(id, step, { set, delete: del })
      yield* emitProgress({ kind: "step", step, state: "started" })
      if (Object.keys(set).length === 0 && del.length === 0) {
        yield* ops.stepDone(id, step)
        return yield* emitProgress({ kind: "step", step, state: "done" })
      }
      const maybe = yield* pve.setConfig(vmid, { set, delete: del })
      if (Option.isSome(maybe)) {
        yield* ops.recordUpid(id, step, maybe.value)
        yield* pve.waitTask(maybe.value)
      }
      yield* ops.stepDone(id, step)
      yield* emitProgress({ kind: "step", step, state: "done" })
    }),
  started: (step, data) =>
    Effect.zipLeft(Effect.flatMap(OpLog, (j) => j.stepStarted(id, step, data)), emitProgress({ kind: "step", step, state: "started" })),
  done: (step, data) => Effect.zipLeft(Effect.flatMap(OpLog, (j) => j.stepDone(id, step, data)), emitProgress({ kind: "step", step, state: "done" }))
})

/**
 * How an op enters the journal: with the idempotency key of the job that carries it and the
 * nonce of the signature that authorizes it, both spent in the admitting transaction.
 */
export interface Admission {
  readonly key: string | null
  readonly nonce: NonceSpend | null
}

export const noAdmission: Admission = { key: null, nonce: null }

/** The admission of an approved action: its grant's nonce, and the job key if it came as a job. */
export const admissionOf = (grant: Grant, key: string | null = null): Admission => ({ key, nonce: grant.nonce })

/** Records the operation (its encoded payload is what recovery decodes) and returns its saga. */
export const beginOperation = <K extends OperationKind>(op: OperationOf<K>, admission: Admission = noAdmission) =>
  Effect.flatMap(OpLog, (ops) =>
    ops.admit({ key: admission.key, nonce: admission.nonce, op: { kind: op._tag, vmid: op.vmid, payload: encodeOperation(op as Operation) } })
  ).pipe(Effect.map((entry) => sagaOf<K>(entry.id, op)))

/** Runs `body` as one journaled op; the op ends done, or failed with the error's message. */
export const runOperation = <K extends OperationKind, A, E extends { readonly message: string }, R>(
  op: OperationOf<K>,
  body: (saga: Saga<K>) => Effect.Effect<A, E, R>,
  admission: Admission = noAdmission
) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const saga = yield* beginOperation(op, admission)
    yield* emitProgress({ kind: "op", opId: saga.id, op: op._tag, vmid: op.vmid })
    return yield* body(saga).pipe(
      Effect.tap(() => ops.finish(saga.id, "done")),
      Effect.tapError((e) => ops.finish(saga.id, "failed", e.message))
    )
  })

export { lockRetry } from "./schedules.js"

const retryLocked = <A, E extends { readonly _tag: string }, R>(e: Effect.Effect<A, E, R>) =>
  Effect.retry(e, { schedule: lockRetry, while: (x) => x._tag === "PveLocked" })

const notFound = (e: ProxmoxError) => e._tag === "PveApiError" && e.kind === "not_found"

export const existing = (vmid: VmId) =>
  Effect.flatMap(Proxmox, (p) => p.guestStatus(vmid)).pipe(
    Effect.map(Option.some),
    Effect.catchIf(notFound, () => Effect.succeedNone)
  )

/** `opId`'s notes on the archive are how retention later knows the agent made it (protection/provenance.ts). */
const vzdumpUpid = (vmid: VmId, storage: StorageId, opId: string) =>
  Effect.flatMap(pbsBackupRefusal(storage), (refused): Effect.Effect<Option.Option<Upid>, ClearanceRefused | ProxmoxError, Proxmox> =>
    // a PBS storage without this host's key (issue 13): nothing sent
    Option.isSome(refused)
      ? Effect.fail(new ClearanceRefused({ message: `backup of ${vmid} to ${storage} refused: ${refused.value}` }))
      : Effect.flatMap(Proxmox, (p) => p.vzdump({ vmid, storage, mode: "snapshot", notesTemplate: notesFor(opId) }))).pipe(
    Effect.flatMap(Option.match({
      onNone: () => Effect.fail(new GuestNotOnNode({ message: `vzdump of ${vmid} started nothing: the guest is not on this node` })),
      onSome: (u: Upid) => Effect.succeed(u)
    }))
  )

// ---------------------------------------------------------------------------------------------
// Benign operations

export const startGuest = (vmid: VmId) =>
  runOperation({ _tag: "start", vmid }, (s) => s.task("start", Effect.flatMap(Proxmox, (p) => p.start(vmid))))

export const stopGuest = (vmid: VmId) =>
  runOperation({ _tag: "stop", vmid }, (s) => s.task("stop", Effect.flatMap(Proxmox, (p) => p.stop(vmid))))

export const setGuestConfig = (
  vmid: VmId,
  set: { readonly cores?: number; readonly memory?: number; readonly swap?: number; readonly hostname?: string; readonly description?: string; readonly tags?: string }
) => runOperation({ _tag: "set_config", vmid, set }, (s) => s.config("set_config", set))

/** Grows the rootfs (the plan never asks for a shrink and bounds the size); the grant clears it. */
export const resizeRootfs = (vmid: VmId, sizeGib: number, grant: Grant) =>
  runOperation({ _tag: "resize", vmid, disk: "rootfs", sizeGib }, (s) =>
    Effect.gen(function*() {
      const clearance = yield* grant.clear({ call: "resize", vmid, disk: "rootfs", size: `${sizeGib}G` })
      yield* s.task("resize", Effect.flatMap(Proxmox, (p) => p.resize(vmid, "rootfs", `${sizeGib}G`, clearance))).pipe(
        // an earlier grow of ours landed meanwhile (its task outlived a crash): the size is the goal
        Effect.catchIf((e) => e._tag === "PveApiError" && /already at specified size/.test(e.message), () => s.done("resize"))
      )
    }))

export const forceBackup = (vmid: VmId, storage: StorageId, admission: Admission = noAdmission) =>
  runOperation({ _tag: "force-backup", vmid, storage }, (s) => s.task("backup", vzdumpUpid(vmid, storage, s.id)), admission)

// ---------------------------------------------------------------------------------------------
// Create: restore the golden archive as one saga with compensation

/** PVE surely did not act on a request it answered with one of these. */
export const surelyRefused = (e: ProxmoxError) =>
  (e._tag === "PveApiError" && (e.kind === "validation" || e.kind === "permission" || e.kind === "auth" || e.kind === "conflict" ||
    e.kind === "not_found" || e.kind === "not_implemented")) ||
  e._tag === "PveDecodeError" ||
  e._tag === "PveLocked"

/** A failure worth another attempt: the network, a proxy, a 5xx, a lock. Never a refusal. */
const transientPve = (e: StepError): boolean =>
  (e._tag === "PveTransportError" && e.reason !== "tls") ||
  e._tag === "PveLocked" ||
  (e._tag === "PveApiError" && (e.kind === "proxy" || e.kind === "server"))

const newMarker = Effect.sync(() => `felhom-prov-${randomBytes(8).toString("hex")}` as InstanceMarker)

const specTags = (spec: DesiredGuest, extra: ReadonlyArray<string> = []) => [...new Set([...spec.tags, ...extra])].sort().join(";")

/**
 * restore → resize → configure → seal → untag → start. Until the seal, the guest is the saga's
 * own (same-transaction provenance, proven by the marker tag it was restored with), and a
 * failure destroys it again. The seal ends that, durably, before the guest is ever started: from
 * then on it is a customer guest, and a later failure leaves it for reconcile to converge.
 */
const buildUntilSeal = (s: Saga<"create">, grant: Grant) =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const { marker, memoryMiB, source, spec, vmid } = s.op
    yield* s.started("restore", { marker })
    const accepted = yield* Effect.either(pve.restore({
      vmid,
      archive: source.archive,
      storage: source.storage,
      unique: true,
      hostname: spec.hostname,
      ...(spec.cores === undefined ? {} : { cores: spec.cores }),
      memoryMiB,
      swapMiB: spec.swap_mib,
      tags: marker
    }))
    if (accepted._tag === "Left") {
      // A 596 or a cut connection does not mean the restore did not start (SPEC §17): record the
      // marker as ours so compensation can read back and remove exactly what we may have made.
      if (!surelyRefused(accepted.left)) yield* guests.recordProvenance(vmid, "same_transaction", s.id, marker)
      return yield* Effect.fail(accepted.left)
    }
    // from here the guest exists and is ours: record that before anything else can go wrong
    yield* guests.recordProvenance(vmid, "same_transaction", s.id, marker)
    yield* ops.recordUpid(s.id, "restore", accepted.right)
    yield* emitProgress({ kind: "task", step: "restore", upid: accepted.right })
    yield* pve.waitTask(accepted.right)
    yield* s.done("restore")

    const size = `${spec.rootfs_gib}G`
    const clearance = yield* grant.clear({ call: "resize", vmid, disk: "rootfs", size })
    yield* s.task("resize", pve.resize(vmid, "rootfs", size, clearance)).pipe(
      // the archive may already be at least that large: PVE refuses a no-op or a shrink
      Effect.catchIf(
        (e) => e._tag === "PveApiError" && /already at specified size|unable to shrink/.test(e.message),
        () => s.done("resize")
      )
    )
    // new volumes for the placement's mount points: allocated by PVE inside the PUT, ours until the seal
    yield* allocateMounts(s, s.op.mounts ?? {})
    yield* s.config("configure", { description: spec.description, tags: specTags(spec, [marker]) })
    // the seal: written first, so a crash right after it can never be read as "still ours"
    yield* s.done("seal")
    yield* guests.clearProvenance(vmid)
    yield* guests.markCustomer(vmid, `created by op ${s.id}`)
  })

/**
 * The `mounts` step: `mpN=<storage>:<GiB>,...` allocations on the guest being built, only for keys
 * its config does not have yet (never a replacement), cleared by the gate for this op.
 */
export const allocateMounts = <K extends "create" | "recover">(s: Saga<K>, mounts: Readonly<Record<string, string>>) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const ops = yield* OpLog
    const vmid = (s.op as OperationOf<"create"> | OperationOf<"recover">).vmid
    const step = "mounts" as StepName<K>
    yield* s.started(step, { mounts })
    const config = yield* pve.guestConfig(vmid)
    const missing = Object.fromEntries(Object.entries(mounts).filter(([k]) => !Object.hasOwn(config, k)))
    if (Object.keys(missing).length > 0) {
      const clearance = yield* clearBringupConfig(s.id, vmid, Object.keys(missing))
      const upid = yield* pve.setConfigVolumes(vmid, { set: missing }, clearance)
      if (Option.isSome(upid)) {
        yield* ops.recordUpid(s.id, step, upid.value)
        yield* pve.waitTask(upid.value)
      }
    }
    yield* s.done(step)
  })

const afterSeal = (s: Saga<"create">, deferStart: boolean) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    yield* s.config("untag", { tags: s.op.spec.tags.length === 0 ? "" : specTags(s.op.spec) })
    // deferred: the controller's bootstrap is mounted first, then a start of its own follows
    if (s.op.spec.power === "running" && !deferStart) yield* s.task("start", pve.start(s.op.vmid))
    else yield* s.done("start", deferStart ? { deferred: true } : undefined)
  })

/**
 * A destroy of this guest sent earlier (before a 596, a cut connection or a crash, its UPID never
 * seen) may still be running: wait it out, so the gate judges the guest as it ends up and never
 * a second destroy task is sent beside the first.
 */
const settleRunningDestroys = (vmid: VmId) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    for (const upid of yield* pve.runningTasksOf(vmid, "vzdestroy")) yield* Effect.ignore(pve.waitTask(upid))
  })

/**
 * Undo an unsealed create: destroy the guest only with the gate's compensation clearance (exact
 * instance, never started). Returns what happened; a refusal or a PVE failure means the op needs
 * an operator and nothing more is tried.
 */
export const compensateCreate = <K extends "create" | "recover">(s: Saga<K>) =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const pve = yield* Proxmox
    const vmid = (s.op as OperationOf<"create"> | OperationOf<"recover">).vmid
    yield* settleRunningDestroys(vmid)
    const verdict = yield* clearCompensation(s.id, vmid)
    if (verdict._tag === "ours") {
      // A clearance is single-use and spent when the call is sent: each attempt after a lock
      // conflict asks the gate again, which re-proves the instance before clearing it.
      let first: Clearance<"destroy"> | null = verdict.clearance
      const attempt = Effect.suspend(() => {
        const c = first
        first = null
        return c !== null
          ? pve.destroy(vmid, { purge: true }, c)
          : Effect.zipRight(
            settleRunningDestroys(vmid),
            Effect.flatMap(clearCompensation(s.id, vmid), (v) =>
              v._tag === "ours"
                ? pve.destroy(vmid, { purge: true }, v.clearance)
                : Effect.fail(new ClearanceRefused({ message: `compensating destroy of ${vmid}: the guest is ${v._tag} now` })))
          )
      })
      yield* s.task("compensate_destroy" as StepName<K>, retryLocked(attempt))
    }
    yield* guests.clearProvenance(vmid)
    return verdict._tag
  })

/** Ends an unsealed create whose build failed: rolled back, or needs_operator if undoing failed. */
export const rollBackCreate = <K extends "create" | "recover">(
  s: Saga<K>,
  why: string,
  opts: { readonly transient?: "hold" | "leave" } = {}
) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const ops = yield* OpLog
    const op = s.op as OperationOf<"create"> | OperationOf<"recover">
    // Each attempt re-proves the instance through the gate, so retrying a transient PVE failure
    // (a 5xx, or a 596 after which the destroy may have landed: the guest then reads as absent)
    // is safe; a half-built guest is held for an operator only when undoing it really fails.
    const undone = yield* Effect.either(compensateCreate(s).pipe(
      Effect.retry({ schedule: lockRetry, while: (e) => transientPve(e) })
    ))
    if (undone._tag === "Right") {
      const what = undone.right === "ours"
        ? "the half-built guest was removed"
        : undone.right === "foreign"
        ? "the guest at this vmid is not the one it restored and was left alone"
        : "nothing of it existed"
      yield* ops.finish(s.id, "rolled_back", `${why}; ${what}`)
      return "rolled_back" as const
    }
    // recovery: PVE not answering is no reason to hold a guest; the op stays in flight for the next one
    if (opts.transient === "leave" && transientPve(undone.left)) return yield* Effect.fail(undone.left)
    yield* ops.finish(
      s.id,
      "needs_operator",
      `${why}; the guest could not be removed safely (${undone.left._tag}: ${undone.left.message}); held for an operator`
    )
    yield* auditLog.audit({
      actor: "executor",
      action: op._tag,
      target: String(op.vmid),
      decision: "needs_operator",
      detail: { op: s.id, reason: undone.left.message }
    })
    return "needs_operator" as const
  })

export const createGuest = (
  spec: DesiredGuest,
  source: CreateSource,
  memoryMiB: number,
  grant: Grant,
  mounts: Readonly<Record<string, string>> = {},
  opts: { readonly deferStart?: boolean } = {}
) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const marker = yield* newMarker
    const s = yield* beginOperation<"create">({
      _tag: "create",
      vmid: spec.vmid,
      spec,
      source,
      memoryMiB,
      marker,
      ...(Object.keys(mounts).length === 0 ? {} : { mounts })
    })
    yield* emitProgress({ kind: "op", opId: s.id, op: "create", vmid: spec.vmid })
    const built = yield* Effect.either(buildUntilSeal(s, grant))
    if (built._tag === "Left") {
      yield* rollBackCreate(s, built.left.message)
      return yield* Effect.fail(built.left)
    }
    return yield* afterSeal(s, opts.deferStart === true).pipe(
      Effect.tap(() => ops.finish(s.id, "done")),
      // sealed: customer data. The guest stays; reconcile converges what is missing.
      Effect.tapError((e) => ops.finish(s.id, "failed", `${e.message}; the guest was kept (sealed)`))
    )
  })

// ---------------------------------------------------------------------------------------------
// Destructive operations (signed; the grant clears exactly their irreversible calls)

/** Ends every needs_operator op held on this guest: the operator resolved it by signing. */
const resolveHolds = (vmid: VmId, by: string) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const held = yield* ops.list({ status: "needs_operator", limit: 1000 })
    for (const h of held.filter((o) => o.vmid === vmid)) {
      yield* ops.finish(h.id, "failed", `${h.detail ?? ""}; resolved by ${by}`.replace(/^; /, ""))
    }
  })

/** Stops the guest if it runs, then destroys it with its volumes and job references. */
export const decommissionSteps = <R>(s: Saga<"decommission">, destroyClearance: Effect.Effect<Clearance<"destroy">, ClearanceRefused | JournalError, R>) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const guests = yield* GuestRecords
    const vmid = s.op.vmid
    // First, durably: the guest's local-API tokens die before the guest does, so a token can
    // never outlive its guest into a new one given the same vmid (issue 11).
    const controllers = yield* Effect.serviceOption(ControllerOps)
    if (Option.isSome(controllers)) {
      yield* s.started("revoke")
      yield* controllers.value.undeploy(vmid)
      yield* s.done("revoke")
    }
    const status = yield* existing(vmid)
    if (Option.isSome(status)) {
      if (status.value.status === "running") yield* s.task("stop", retryLocked(pve.stop(vmid)))
      else yield* s.done("stop")
      // one clearance per attempt: a clearance is spent when the call is sent
      yield* s.task("destroy", retryLocked(Effect.flatMap(destroyClearance, (c) => pve.destroy(vmid, { purge: true }, c))))
    }
    yield* guests.clearProvenance(vmid)
    yield* guests.forgetGuest(vmid)
    yield* resolveHolds(vmid, `signed decommission ${s.id}`)
  })

export const decommission = (vmid: VmId, grant: Grant, authorization: SignedAuthorization, key: string | null = null) =>
  runOperation(
    { _tag: "decommission", vmid, authorization },
    (s) => decommissionSteps(s, grant.clear({ call: "destroy", vmid })),
    admissionOf(grant, key)
  )

/** Records an operator-signed golden archive; nothing touches PVE. */
export const registerGolden = (archive: VolumeId, grant: Grant, authorization: SignedAuthorization, key: string | null = null) =>
  runOperation({ _tag: "golden-register", vmid: null, archive, authorization }, (s) =>
    Effect.gen(function*() {
      const guests = yield* GuestRecords
      yield* s.started("register")
      yield* guests.registerGolden(archive, "signed", s.id)
      yield* s.done("register")
    }), admissionOf(grant, key))

/**
 * Restore-overwrite. From a snapshot: roll back (restarting a running guest). From a backup:
 * a restore with force destroys the old volumes first, so a failed overwrite would lose the
 * guest: take a fresh backup of the current state before anything else (SPEC §17), with
 * remove=0 so it can never prune the archive about to be restored. If the guest is gone after a
 * failed restore it is recorded lost (recovered from a backup, never recreated blank).
 */
export const restoreNow = (vmid: VmId, source: RestoreSource, grant: Grant, authorization: SignedAuthorization, key: string | null = null) =>
  runOperation({ _tag: "restore-now", vmid, source, authorization }, (s) =>
    Effect.gen(function*() {
      const pve = yield* Proxmox
      const guests = yield* GuestRecords
      const wasRunning = (yield* pve.guestStatus(vmid)).status === "running"
      if ("snapshot" in source) {
        const clearance = yield* grant.clear({ call: "rollback", vmid, snapshot: source.snapshot })
        yield* s.task("rollback", pve.rollback(vmid, source.snapshot, { start: wasRunning }, clearance))
        return
      }
      // explicit volumes: a token may not restore the archive's bind mounts (the controller's bootstrap mount)
      const { dropped, layout } = yield* overwriteLayout(vmid, source.backup, source.storage)
      if (dropped.length > 0) yield* Effect.logWarning(`restore-now ${s.id}: not restored (bind/device): ${dropped.map((d) => d.key).join(", ")}`)
      yield* s.task("safety_backup", vzdumpUpid(vmid, source.backupStorage, s.id))
      if (wasRunning) yield* s.task("stop", pve.stop(vmid))
      const clearance = yield* grant.clear({ call: "restore-overwrite", vmid, archive: source.backup })
      yield* s.task("restore", pve.restoreOverwrite({ vmid, archive: source.backup, storage: source.storage, layout }, clearance)).pipe(
        Effect.tapError((e) =>
          Effect.gen(function*() {
            const still = yield* Effect.either(existing(vmid))
            if (still._tag === "Right" && Option.isNone(still.right)) {
              yield* guests.markLost(vmid, `restore-now ${s.id} failed after PVE removed the old volumes: ${e.message}`)
            }
          })
        )
      )
      // a token's restore drops bind mounts: the controller's bootstrap goes back before any start
      const controllers = yield* Effect.serviceOption(ControllerOps)
      if (Option.isSome(controllers)) yield* controllers.value.reidentify(vmid, null)
      if (wasRunning) yield* s.task("start", pve.start(vmid))
    }), admissionOf(grant, key))
