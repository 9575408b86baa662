/**
 * The local API's two mutations of a guest (issue 11): `POST /snapshot` (an `api-snapshot` op) and
 * `POST /rollback` (an `api-rollback` op), each one journaled saga in the guest's GuestQueue turn,
 * and their recovery rules.
 *
 * A snapshot's provenance (ControllerStore, origin `controller`) is recorded BEFORE PVE is asked
 * for it, so a crash can never leave a `ctl-` snapshot the agent does not know it made; a snapshot
 * PVE did not make has its provenance removed (by the saga, or by recovery), only the record this
 * op wrote. A rollback is cleared by the gate alone (clearControllerRollback): only to a snapshot
 * the agent recorded for this very guest and PVE still lists.
 *
 * Hostile controller: it names only a label (the agent prefixes `ctl-`) or a snapshot it may roll
 * back to; the guest is always the token's. Faulty PVE: a lock is a conflict, a 5xx/596/transport
 * failure "unavailable", and after a failed snapshot request PVE's listing decides whether one was
 * made (596: it may have been). Nothing PVE says is echoed to the controller: messages are fixed
 * texts; the journal keeps the detail.
 */
import { Clock, Effect, Either, Option, Schema } from "effect"
import { ControllerStore } from "../../layers/ControllerStore.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { JournalError, JournalOp, StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { ClearanceRefused } from "../../schema/clearance.js"
import { SnapshotName, type VmId } from "../../schema/ids.js"
import { ApiFailure, CONTROLLER_SNAPSHOT_PREFIX, type RollbackResponse, type SnapshotRequest, type SnapshotResponse } from "../../schema/localApi.js"
import type { OperationOf } from "../../schema/operations.js"
import type { ProxmoxError, WaitError } from "../../schema/proxmox.js"
import type { Outcome } from "../control/recover.js"
import { reread, settleStarted } from "../control/recover.js"
import { clearControllerRollback } from "../control/gate.js"
import { beginOperation, type StepError } from "../control/steps.js"

export type ApiOpServices = Proxmox | StoreServices | ControllerStore | GuestQueue

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

const clip = (s: string, n = 300) => (s.length > n ? `${s.slice(0, n)}…` : s)

/** A PVE failure as the controller sees it: a code and a fixed text (never PVE's own words). */
export const pveFailure = (what: string, e: WaitError | ClearanceRefused): ApiFailure => {
  switch (e._tag) {
    case "PveLocked":
      return new ApiFailure({ code: "conflict", message: `${what}: the guest is locked by another task; try again later` })
    case "PveApiError":
      if (e.kind === "not_found") return new ApiFailure({ code: "not_found", message: `${what}: PVE does not know it` })
      if (e.kind === "conflict") return new ApiFailure({ code: "conflict", message: `${what}: PVE refused it as conflicting with the guest's state` })
      if (e.kind === "validation" || e.kind === "not_implemented") return new ApiFailure({ code: "unprocessable", message: `${what}: PVE refused it` })
      return new ApiFailure({ code: "unavailable", message: `${what}: PVE is unavailable; try again later` })
    case "PveTaskFailed":
      // a lock (or a name taken meanwhile) is a conflict the controller may retry; anything else PVE could not do
      if (/is locked|can't lock file|already used|already exists/.test(e.exitstatus)) {
        return new ApiFailure({ code: "conflict", message: `${what}: the guest is busy or locked; try again later` })
      }
      return new ApiFailure({ code: "unprocessable", message: `${what}: the PVE task failed` })
    case "PveTaskTimeout":
      return new ApiFailure({ code: "unavailable", message: `${what}: the PVE task did not finish in time; its result is journaled` })
    case "ClearanceRefused":
      return new ApiFailure({ code: "refused", message: `${what}: not a snapshot this controller may roll back to` })
    default:
      return new ApiFailure({ code: "unavailable", message: `${what}: PVE is unavailable; try again later` })
  }
}

const storeFailure = (what: string) => (_: JournalError) =>
  new ApiFailure({ code: "unavailable", message: `${what}: the agent's state store failed; nothing was changed` })

const notFound = (e: ProxmoxError) => e._tag === "PveApiError" && e.kind === "not_found"

/**
 * Why the guest is busy (an op in flight, or one held for an operator), if it is. Mutations of a
 * held guest wait for the operator; beside an op in flight they would race it.
 */
export const guestBusy = (vmid: VmId) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const held = (yield* ops.list({ status: "needs_operator", limit: 1000 })).find((o) => o.vmid === vmid)
    if (held !== undefined) return Option.some({ held: true, why: `the guest is held for an operator (${held.kind} ${held.id})` })
    const flying = (yield* ops.inFlight).find((o) => o.vmid === vmid)
    return flying === undefined
      ? Option.none<{ readonly held: boolean; readonly why: string }>()
      : Option.some({ held: false, why: `an operation (${flying.kind}) is in progress on the guest` })
  })

const refuseIfBusy = (vmid: VmId, what: string) =>
  Effect.flatMap(Effect.mapError(guestBusy(vmid), storeFailure(what)), (busy) =>
    Option.isSome(busy) ? Effect.fail(new ApiFailure({ code: "conflict", message: `${what}: ${busy.value.why}` })) : Effect.void)

/** The guest's power state; absent → not_found. */
const guestState = (vmid: VmId, what: string) =>
  Effect.flatMap(Proxmox, (pve) => pve.guestStatus(vmid)).pipe(
    Effect.catchIf(notFound, () => Effect.fail(new ApiFailure({ code: "not_found", message: `${what}: the guest does not exist` }))),
    Effect.mapError((e) => (e._tag === "ApiFailure" ? e : pveFailure(what, e)))
  )

// ---------------------------------------------------------------------------------------------
// POST /snapshot

/**
 * `ctl-<label>` of the caller's guest. Refused (409) when the guest is busy, already has
 * `maxSnapshots` ctl- snapshots, or has one of that name. Runs in the guest's queue turn.
 */
export const apiSnapshot = (vmid: VmId, req: SnapshotRequest, maxSnapshots: number) => {
  const what = "snapshot"
  return Effect.gen(function*() {
    yield* refuseIfBusy(vmid, what)
    const queue = yield* GuestQueue
    return yield* queue.serialize(vmid)(snapshotInTurn(vmid, req, maxSnapshots))
  })
}

const snapshotInTurn = (vmid: VmId, req: SnapshotRequest, maxSnapshots: number) =>
  Effect.gen(function*() {
    const what = "snapshot"
    const pve = yield* Proxmox
    const ops = yield* OpLog
    const controllers = yield* ControllerStore
    // again in the turn: an op may have begun while this request waited
    yield* refuseIfBusy(vmid, what)
    const nameText = `${CONTROLLER_SNAPSHOT_PREFIX}${req.name}`
    const parsed = Schema.decodeUnknownOption(SnapshotName)(nameText)
    if (Option.isNone(parsed)) return yield* new ApiFailure({ code: "unprocessable", message: `${what}: not a valid snapshot name` })
    const decoded = parsed.value
    yield* guestState(vmid, what)
    const listed = yield* pve.listSnapshots(vmid).pipe(Effect.mapError((e) => pveFailure(what, e)))
    if (listed.some((s) => s.name === nameText)) {
      return yield* new ApiFailure({ code: "conflict", message: `${what}: the guest already has a snapshot named ${nameText}` })
    }
    const ours = listed.filter((s) => s.name.startsWith(CONTROLLER_SNAPSHOT_PREFIX)).length
    if (ours >= maxSnapshots) {
      return yield* new ApiFailure({ code: "conflict", message: `${what}: the guest has ${ours} ctl- snapshots, the most allowed is ${maxSnapshots}` })
    }
    const s = yield* beginOperation<"api-snapshot">({ _tag: "api-snapshot", vmid, snapshot: decoded }).pipe(
      Effect.catchTag("AdmissionRefused", Effect.die), // no key, no nonce: cannot be refused
      Effect.mapError(storeFailure(what))
    )
    const takenMs = yield* Clock.currentTimeMillis
    // provenance first: a crash after the request can never leave a ctl- snapshot we did not record
    yield* controllers.recordSnapshot({ vmid, name: nameText, origin: "controller", opId: s.id, takenMs }).pipe(
      Effect.tapError((e) => Effect.ignore(ops.finish(s.id, "failed", `provenance not recorded: ${e.message}`))),
      Effect.mapError(storeFailure(what))
    )
    const ran = yield* Effect.either(Effect.gen(function*() {
      yield* s.started("snapshot", { description: req.description ?? null })
      const upid = yield* pve.snapshot(vmid, decoded, req.description)
      yield* ops.recordUpid(s.id, "snapshot", upid)
      yield* pve.waitTask(upid)
      yield* s.done("snapshot")
    }))
    if (Either.isRight(ran)) {
      yield* ops.finish(s.id, "done", `snapshot ${nameText} taken`).pipe(Effect.mapError(storeFailure(what)))
      return { snapshot: nameText, taken_at: iso(takenMs) } satisfies SnapshotResponse
    }
    const e = ran.left
    if (e._tag === "JournalError") return yield* storeFailure(what)(e)
    // did PVE make it anyway (a 596, a timed-out wait)? Its listing decides; unreadable: keep the
    // record (the gate lists PVE again before any rollback to it) and leave the op for recovery
    const after = yield* Effect.either(pve.listSnapshots(vmid))
    if (Either.isLeft(after)) {
      yield* Effect.ignore(ops.finish(s.id, "failed", `snapshot request failed (${e._tag}: ${clip(e.message)}); the listing could not be read, provenance kept`))
      return yield* pveFailure(what, e)
    }
    if (after.right.some((x) => x.name === nameText)) {
      yield* Effect.ignore(ops.finish(s.id, "failed", `snapshot request failed (${e._tag}: ${clip(e.message)}) but PVE lists ${nameText}: provenance kept`))
    } else {
      yield* Effect.ignore(forgetOwn(vmid, nameText, s.id))
      yield* Effect.ignore(ops.finish(s.id, "failed", `snapshot not taken (${e._tag}: ${clip(e.message)}); provenance removed`))
    }
    return yield* pveFailure(what, e)
  })

/** Removes the provenance record only if op `opId` wrote it (never another op's of the same name). */
const forgetOwn = (vmid: VmId, name: string, opId: string) =>
  Effect.gen(function*() {
    const controllers = yield* ControllerStore
    const rec = yield* controllers.snapshotOf(vmid, name)
    if (Option.isSome(rec) && rec.value.opId === opId) yield* controllers.forgetSnapshot(vmid, name)
  })

// ---------------------------------------------------------------------------------------------
// POST /rollback

/**
 * Rolls the caller's guest back to `snapshot` (a ctl- or felhom-preupd- snapshot the agent took
 * for it), restarting it if it was running. 404 when the guest or the snapshot is not there, 422
 * when the guest is stopped, 409 when busy, 403 when the gate refuses.
 */
export const apiRollback = (vmid: VmId, snapshot: string) => {
  const what = "rollback"
  return Effect.gen(function*() {
    yield* refuseIfBusy(vmid, what)
    const queue = yield* GuestQueue
    return yield* queue.serialize(vmid)(rollbackInTurn(vmid, snapshot))
  })
}

const rollbackInTurn = (vmid: VmId, snapshot: string) =>
  Effect.gen(function*() {
    const what = "rollback"
    const pve = yield* Proxmox
    const ops = yield* OpLog
    const controllers = yield* ControllerStore
    yield* refuseIfBusy(vmid, what)
    const name = Option.getOrUndefined(Schema.decodeUnknownOption(SnapshotName)(snapshot))
    if (name === undefined) return yield* new ApiFailure({ code: "not_found", message: `${what}: no such snapshot of this guest` })
    const status = yield* guestState(vmid, what)
    if (status.status !== "running") {
      return yield* new ApiFailure({ code: "unprocessable", message: `${what}: the guest is ${status.status}` })
    }
    const listed = yield* pve.listSnapshots(vmid).pipe(Effect.mapError((e) => pveFailure(what, e)))
    const record = yield* controllers.snapshotOf(vmid, snapshot).pipe(Effect.mapError(storeFailure(what)))
    if (!listed.some((s) => s.name === snapshot)) {
      // another guest's (the agent took it for that guest): a resource of another guest, 403;
      // deleted since or never made: 404
      if (yield* controllers.snapshotOfOther(vmid, snapshot).pipe(Effect.mapError(storeFailure(what)))) {
        return yield* new ApiFailure({ code: "refused", message: `${what}: that snapshot belongs to another guest` })
      }
      return yield* new ApiFailure({ code: "not_found", message: `${what}: no such snapshot of this guest` })
    }
    if (Option.isNone(record)) {
      return yield* new ApiFailure({ code: "refused", message: `${what}: not a snapshot this controller may roll back to` })
    }
    const s = yield* beginOperation<"api-rollback">({ _tag: "api-rollback", vmid, snapshot: name }).pipe(
      Effect.catchTag("AdmissionRefused", Effect.die),
      Effect.mapError(storeFailure(what))
    )
    const ran = yield* Effect.either(Effect.gen(function*() {
      // the gate proves it all again itself (op, record for this vmid, prefix, PVE's listing)
      const clearance = yield* clearControllerRollback(s.id, vmid, snapshot)
      // the guest comes back up as it was (always running here: a stopped guest was refused)
      const start = status.status === "running"
      yield* s.started("rollback", { start })
      const upid = yield* pve.rollback(vmid, name, { start }, clearance)
      yield* ops.recordUpid(s.id, "rollback", upid)
      yield* pve.waitTask(upid)
      yield* s.done("rollback")
    }))
    if (Either.isLeft(ran)) {
      const e = ran.left
      if (e._tag === "JournalError") return yield* storeFailure(what)(e)
      yield* Effect.ignore(ops.finish(s.id, "failed", `rollback to ${snapshot} failed (${e._tag}: ${clip(e.message)})`))
      return yield* pveFailure(what, e)
    }
    yield* ops.finish(s.id, "done", `rolled back to ${snapshot}`).pipe(Effect.mapError(storeFailure(what)))
    return { snapshot, rolled_back_at: iso(yield* Clock.currentTimeMillis) } satisfies RollbackResponse
  })

// ---------------------------------------------------------------------------------------------
// Recovery rules (wired by recover.ts)

type RuleError = StepError

/**
 * An interrupted api-snapshot: its task settled; the snapshot PVE lists → done (provenance kept);
 * none → failed, and the provenance this op recorded removed. Without the ControllerStore in this
 * process it stays in flight (nothing is forgotten on a guess).
 */
export const recoverApiSnapshot = (op: JournalOp, typed: OperationOf<"api-snapshot">): Effect.Effect<Outcome, RuleError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const pve = yield* Proxmox
    yield* settleStarted(op)
    const after = yield* reread(op)
    if (after.steps.some((s) => s.name === "snapshot" && s.status === "done")) {
      yield* ops.finish(op.id, "done", "recovered: the snapshot had been taken")
      return { outcome: "done", detail: "the snapshot had been taken" }
    }
    const store = yield* Effect.serviceOption(ControllerStore)
    if (Option.isNone(store)) {
      return { outcome: "in_flight", detail: "snapshot interrupted; the controller store is not in this process: left in flight" }
    }
    const listed = yield* pve.listSnapshots(typed.vmid)
    if (listed.some((s) => s.name === typed.snapshot)) {
      yield* ops.finish(op.id, "done", `recovered: PVE lists ${typed.snapshot}; provenance kept`)
      return { outcome: "done", detail: "PVE lists the snapshot" }
    }
    yield* forgetOwn(typed.vmid, typed.snapshot, op.id).pipe(Effect.provideService(ControllerStore, store.value))
    yield* ops.finish(op.id, "failed", "recovered: interrupted; no snapshot was made, its provenance removed")
    return { outcome: "failed", detail: "no snapshot was made; provenance removed" }
  })

/**
 * An interrupted api-rollback: its task settled, never resumed (a rollback discards data; the
 * controller asks again if it still wants it). Done only if the rollback step was.
 */
export const recoverApiRollback = (op: JournalOp, _typed: OperationOf<"api-rollback">): Effect.Effect<Outcome, RuleError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    yield* settleStarted(op)
    const after = yield* reread(op)
    if (after.steps.some((s) => s.name === "rollback" && s.status === "done")) {
      yield* ops.finish(op.id, "done", "recovered: the rollback had completed")
      return { outcome: "done", detail: "the rollback had completed" }
    }
    yield* ops.finish(op.id, "failed", "recovered: interrupted; not resumed (the controller asks again)")
    return { outcome: "failed", detail: "rollback interrupted; not resumed" }
  })
