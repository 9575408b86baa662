/**
 * A controller update as the `controller-update` saga (SPEC §12): pre-update snapshot → publish
 * the new image (generation + 1; the guest's path unit restarts the controller) → health: a
 * healthy heartbeat naming the new image within the deadline → commit. Any failure after the
 * snapshot rolls the guest back to exactly that snapshot (through the gate's
 * clearControllerRollback) and republishes the old image (generation + 2); the op ends
 * rolled_back with the reason, or needs_operator when the rollback cannot be cleared or fails.
 *
 * The snapshot name is made here, journaled in the op's payload and recorded as pre-update
 * provenance before PVE is asked: nothing a hub sends names it, so a hub cannot steer a rollback.
 *
 * Callers hold the guest's queue turn (ControllerOps' contract); `updateControllerQueued` takes
 * one for callers that do not.
 */
import { Clock, Context, Data, Effect, Either, Layer, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { AuditLog } from "../../layers/AuditLog.js"
import { ControllerStore, type ControllerStoreShape } from "../../layers/ControllerStore.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { JournalError, JournalOp, StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { type CertPin, ImageRef } from "../../schema/bootstrap.js"
import { LocalTokens } from "../../layers/LocalTokens.js"
import { Privileged } from "../../layers/Privileged.js"
import { republishConfig } from "./bootstrap.js"
import { ControllerContext } from "./context.js"
import type { SnapshotName, VmId } from "../../schema/ids.js"
import { PRE_UPDATE_SNAPSHOT_PREFIX } from "../../schema/localApi.js"
import type { OperationOf } from "../../schema/operations.js"
import { clearControllerRollback } from "../control/gate.js"
import { type Outcome, reread, settleStarted } from "../control/recover.js"
import { type Admission, beginOperation, lockRetry, noAdmission, type Saga, sagaOf, type StepError } from "../control/steps.js"
import type { UpdateBasis } from "./ops.js"

// ---------------------------------------------------------------------------------------------
// Publishing a new generation

export class ControllerPublishFailed extends Data.TaggedError("ControllerPublishFailed")<{ readonly message: string }> {}

export interface ControllerPublisherShape {
  /**
   * Rewrites guest `vmid`'s controller.json with `image` and `generation`; its token, identity
   * directive and hub channel unchanged, the pins current. Returns the pins it wrote. Idempotent
   * for the same arguments (recovery may repeat it).
   */
  readonly publish: (vmid: VmId, change: { readonly image: string; readonly generation: number }) => Effect.Effect<ReadonlyArray<CertPin>, ControllerPublishFailed>
}

/** How update and heal republish a guest's bootstrap (the daemon builds it over Privileged). */
export class ControllerPublisher extends Context.Tag("felhom/ControllerPublisher")<ControllerPublisher, ControllerPublisherShape>() {}

/**
 * The daemon's publisher: renders the guest's bootstrap as its deploy did (same identity
 * directive, hostname from PVE, the current pins) and writes ONLY controller.json through
 * Privileged. The agent keeps no token secret (only its hash), so the token file and the
 * registry password stay exactly as the deploy wrote them.
 */
export const ControllerPublisherLive: Layer.Layer<ControllerPublisher, never, ControllerContext | Privileged | ControllerStore | LocalTokens | Proxmox> =
  Layer.effect(
    ControllerPublisher,
    Effect.map(Effect.context<ControllerContext | Privileged | ControllerStore | LocalTokens | Proxmox>(), (context): ControllerPublisherShape => ({
      publish: (vmid, change) =>
        republishConfig(vmid, change).pipe(
          Effect.mapError((e) => new ControllerPublishFailed({ message: `republishing the bootstrap of ${vmid}: ${e.message}` })),
          Effect.provide(context)
        )
    }))
  )

// ---------------------------------------------------------------------------------------------
// Results and errors

/** Refused before anything was journaled or changed. */
export class ControllerUpdateRefused extends Data.TaggedError("ControllerUpdateRefused")<{ readonly message: string }> {}

class HealthCheckFailed extends Data.TaggedError("HealthCheckFailed")<{ readonly message: string }> {}

export interface UpdateResult {
  readonly opId: string
  readonly vmid: VmId
  readonly fromImage: string
  readonly toImage: string
  readonly snapshot: string
  /**
   * committed: the new image runs healthy; rolled_back: it did not, the guest is back at the
   * snapshot with the old image; failed: the snapshot could not be taken, nothing changed;
   * needs_operator: undoing failed, the guest is held.
   */
  readonly outcome: "committed" | "rolled_back" | "failed" | "needs_operator"
  readonly reason: string | null
}

export interface UpdateSettings {
  /** controllers.health_deadline_seconds */
  readonly healthDeadlineSeconds: number
  /** Between looks at the controller store while waiting for health (default 2 s). */
  readonly healthPollMillis?: number
}

type UpdateServices = StoreServices | Proxmox | ControllerStore | ControllerPublisher

// ---------------------------------------------------------------------------------------------
// Steps

const newSnapshotName = Effect.sync(() => {
  const n = BigInt(`0x${randomBytes(8).toString("hex")}`).toString(36)
  return `${PRE_UPDATE_SNAPSHOT_PREFIX}${n}` as SnapshotName
})

const retryLocked = <A, E extends { readonly _tag: string }, R>(e: Effect.Effect<A, E, R>) =>
  Effect.retry(e, { schedule: lockRetry, while: (x) => x._tag === "PveLocked" })

/**
 * Waits for a heartbeat after `sinceMs` naming `image`: healthy → done; unhealthy → fails at
 * once; nothing by the deadline → fails. Only the heartbeat carries an image, so an older
 * controller's reads cannot pass for the new one (unless the record already named the new image
 * before the publish: the caller refuses an update to the image it reports running).
 */
const awaitHealthy = (store: ControllerStoreShape, vmid: VmId, image: string, sinceMs: number, settings: UpdateSettings) =>
  Effect.gen(function*() {
    const deadline = sinceMs + settings.healthDeadlineSeconds * 1000
    const poll = settings.healthPollMillis ?? 2000
    while (true) {
      const rec = yield* store.get(vmid)
      if (Option.isSome(rec)) {
        const r = rec.value
        if (r.lastContactMs !== null && r.lastContactMs >= sinceMs && r.reportedImage === image) {
          if (r.health === "healthy") return
          if (r.health === "unhealthy") {
            return yield* new HealthCheckFailed({ message: `the controller reported unhealthy on ${image}${r.healthDetail === null ? "" : ` (${r.healthDetail})`}` })
          }
        }
      }
      const now = yield* Clock.currentTimeMillis
      if (now >= deadline) {
        return yield* new HealthCheckFailed({ message: `no healthy heartbeat with ${image} within ${settings.healthDeadlineSeconds} s` })
      }
      yield* Effect.sleep(Math.min(poll, deadline - now))
    }
  })

const stepsOf = (op: JournalOp) => ({
  done: new Set(op.steps.filter((s) => s.status === "done").map((s) => s.name)),
  seen: new Set(op.steps.map((s) => s.name))
})

/** Commits the new image as the deploy (the health check passed). */
const commit = (s: Saga<"controller-update">, store: ControllerStoreShape, pins: ReadonlyArray<CertPin> | null) =>
  Effect.gen(function*() {
    const rec = yield* store.get(s.op.vmid)
    if (Option.isNone(rec)) return yield* Effect.dieMessage(`controller-update ${s.id}: the controller record of ${s.op.vmid} vanished`)
    yield* s.started("commit")
    yield* store.recordDeploy({
      vmid: s.op.vmid,
      image: s.op.toImage,
      generation: s.op.fromGeneration + 1,
      tokenId: rec.value.tokenId,
      mpIndex: rec.value.mpIndex,
      pins: pins ?? rec.value.pins
    })
    yield* s.done("commit")
  })

/**
 * Undo after the publish: roll back to the op's own snapshot (the name from its payload, cleared
 * by the gate against the store's pre-update record and PVE's listing; a snapshot that was never
 * taken means the guest itself was not changed) and start the guest, then republish the old
 * image at generation + 2. Returns what it did.
 */
const undo = (s: Saga<"controller-update">, store: ControllerStoreShape, publisher: ControllerPublisherShape) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const { fromGeneration, fromImage, snapshot, vmid } = s.op
    const current = yield* ops.get(s.id)
    const already = Option.match(current, { onNone: () => new Set<string>(), onSome: (o) => stepsOf(o).done })
    let what: string
    if (already.has("rollback")) {
      what = `rolled back to ${snapshot}`
    } else {
      // a rollback sent before a crash (its UPID never recorded) may still run: let it end first,
      // then roll back again (to the same snapshot: the guest ends in the same state)
      yield* awaitUnlocked(vmid)
      const listed = yield* pve.listSnapshots(vmid)
      if (listed.some((e) => e.name === snapshot)) {
        // one clearance per attempt: a clearance is spent when the call is sent
        yield* s.task(
          "rollback",
          retryLocked(Effect.flatMap(
            Effect.provideService(clearControllerRollback(s.id, vmid, snapshot), ControllerStore, store),
            (c) => pve.rollback(vmid, snapshot, { start: true }, c)
          ))
        )
        what = `rolled back to ${snapshot}`
      } else {
        yield* s.started("rollback", { skipped: "the pre-update snapshot does not exist" })
        yield* s.done("rollback")
        what = "no pre-update snapshot existed to roll back to"
      }
    }
    const rec = yield* store.get(vmid)
    if (Option.isNone(rec)) return yield* Effect.dieMessage(`controller-update ${s.id}: the controller record of ${vmid} vanished`)
    yield* s.started("republish", { image: fromImage, generation: fromGeneration + 2 })
    const pins = yield* publisher.publish(vmid, { image: fromImage, generation: fromGeneration + 2 })
    yield* store.recordDeploy({ vmid, image: fromImage, generation: fromGeneration + 2, tokenId: rec.value.tokenId, mpIndex: rec.value.mpIndex, pins })
    yield* s.done("republish")
    return `${what}; ${fromImage} republished`
  })

class GuestStillLocked extends Data.TaggedError("GuestStillLocked")<{ readonly message: string }> {}

/** Waits (on the Clock, at most 10 minutes) until the guest carries no lock. */
const awaitUnlocked = (vmid: VmId) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    for (let i = 0; i < 300; i++) {
      const lock = (yield* pve.guestConfig(vmid)).lock
      if (lock === undefined) return
      yield* Effect.sleep(2000)
    }
    return yield* new GuestStillLocked({ message: `guest ${vmid} stayed locked for 10 minutes` })
  })

/** Ends the op rolled_back, or needs_operator (audited) when the undo failed. */
const rollBack = (s: Saga<"controller-update">, store: ControllerStoreShape, publisher: ControllerPublisherShape, why: string) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const auditLog = yield* AuditLog
    const undone = yield* Effect.either(undo(s, store, publisher))
    if (Either.isRight(undone)) {
      const reason = `${why}; ${undone.right}`
      yield* ops.finish(s.id, "rolled_back", reason)
      yield* auditLog.audit({ actor: "executor", action: "controller-update", target: String(s.op.vmid), decision: "rolled_back", detail: { op: s.id, reason } })
      return { outcome: "rolled_back" as const, reason }
    }
    if (undone.left._tag === "JournalError") return yield* Effect.fail(undone.left)
    const reason = `${why}; undoing it failed (${undone.left._tag}: ${undone.left.message}); held for an operator`
    yield* ops.finish(s.id, "needs_operator", reason)
    yield* auditLog.audit({ actor: "executor", action: "controller-update", target: String(s.op.vmid), decision: "needs_operator", detail: { op: s.id, reason } })
    return { outcome: "needs_operator" as const, reason }
  })

// ---------------------------------------------------------------------------------------------
// The saga

/**
 * Updates guest `vmid`'s controller to `toImage`. Refused up front (nothing journaled) when the
 * guest has no deployed controller, is not running (the health check needs its controller), or
 * already runs or reports `toImage`. A journal failure propagates (recovery decides); every other
 * failure ends in the result.
 */
export const updateController = (
  vmid: VmId,
  toImage: string,
  basis: UpdateBasis,
  settings: UpdateSettings,
  admission: Admission = noAdmission
): Effect.Effect<UpdateResult, ControllerUpdateRefused | JournalError | StepError, UpdateServices> =>
  Effect.gen(function*() {
    const store = yield* ControllerStore
    const publisher = yield* ControllerPublisher
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const refuse = (message: string) => Effect.fail(new ControllerUpdateRefused({ message: `controller update of ${vmid}: ${message}` }))
    if (Option.isNone(Schema.decodeUnknownOption(ImageRef)(toImage))) return yield* refuse("the image is not an image reference")
    const rec = yield* store.get(vmid)
    if (Option.isNone(rec)) return yield* refuse("no controller is deployed on this guest")
    const from = rec.value
    if (from.image === toImage) return yield* refuse(`${toImage} is already deployed`)
    if (from.reportedImage === toImage) return yield* refuse(`the controller already reports running ${toImage}`)
    const status = yield* pve.guestStatus(vmid)
    if (status.status !== "running") return yield* refuse("the guest is not running: the health check needs its controller up")

    const snapshot = yield* newSnapshotName
    const op: OperationOf<"controller-update"> = {
      _tag: "controller-update",
      vmid,
      fromImage: from.image,
      toImage,
      snapshot,
      fromGeneration: from.generation,
      deadlineSeconds: settings.healthDeadlineSeconds,
      basis: basis.basis,
      authorization: basis.basis === "signed" ? basis.authorization : null
    }
    const s = yield* beginOperation<"controller-update">(op, admission)
    const result = (outcome: UpdateResult["outcome"], reason: string | null): UpdateResult => ({
      opId: s.id,
      vmid,
      fromImage: from.image,
      toImage,
      snapshot,
      outcome,
      reason
    })

    // snapshot: provenance first, then PVE; a failure here changed nothing of the guest
    const snap = yield* Effect.either(Effect.gen(function*() {
      yield* store.recordSnapshot({ vmid, name: snapshot, origin: "pre-update", opId: s.id, takenMs: yield* Clock.currentTimeMillis })
      yield* s.task("snapshot", retryLocked(pve.snapshot(vmid, snapshot, `felhom: before the controller update to ${toImage}`)))
    }))
    if (Either.isLeft(snap)) {
      if (snap.left._tag === "JournalError") return yield* Effect.fail(snap.left)
      const reason = `the pre-update snapshot failed (${snap.left.message}); nothing was changed`
      yield* ops.finish(s.id, "failed", reason)
      return result("failed", reason)
    }

    const forward = yield* Effect.either(Effect.gen(function*() {
      const generation = from.generation + 1
      yield* s.started("publish", { image: toImage, generation })
      const pins = yield* publisher.publish(vmid, { image: toImage, generation })
      const publishedMs = yield* Clock.currentTimeMillis
      yield* s.done("publish", { image: toImage, generation, at: publishedMs })
      yield* s.started("health", { since: publishedMs, deadlineSeconds: settings.healthDeadlineSeconds })
      yield* awaitHealthy(store, vmid, toImage, publishedMs, settings)
      yield* s.done("health")
      yield* commit(s, store, pins)
    }))
    if (Either.isRight(forward)) {
      yield* ops.finish(s.id, "done", `${toImage} runs healthy`)
      return result("committed", null)
    }
    if (forward.left._tag === "JournalError") return yield* Effect.fail(forward.left)
    const undone = yield* rollBack(s, store, publisher, forward.left.message)
    return result(undone.outcome, undone.reason)
  })

/** `updateController` in the guest's queue turn, for callers that do not hold one. */
export const updateControllerQueued = (vmid: VmId, toImage: string, basis: UpdateBasis, settings: UpdateSettings, admission: Admission = noAdmission) =>
  Effect.flatMap(GuestQueue, (q) => q.serialize(vmid)(updateController(vmid, toImage, basis, settings, admission)))

// ---------------------------------------------------------------------------------------------
// Recovery

/**
 * An interrupted controller update: its recorded tasks are settled; then
 * - commit done → done; republish done → rolled_back (it had been undone);
 * - health done (the new image was verified healthy) → the commit is finished → done;
 * - publish never started → nothing of the guest changed: failed (the snapshot, if any, is kept);
 * - otherwise rolled back as at run time (own snapshot through the gate, old image republished),
 *   needs_operator when that is refused or fails.
 * Without the controller store or the publisher in this graph it is left in flight (the guest
 * stays held by the plan) with a detail saying so.
 */
export const recoverControllerUpdate = (op: JournalOp, typed: OperationOf<"controller-update">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    yield* settleStarted(op)
    const after = stepsOf(yield* reread(op))
    if (after.done.has("commit")) {
      yield* ops.finish(op.id, "done", "recovered: the update had committed")
      return { outcome: "done", detail: "the update had committed" }
    }
    if (after.done.has("republish")) {
      yield* ops.finish(op.id, "rolled_back", "recovered: the update had been rolled back")
      return { outcome: "rolled_back", detail: "the update had been rolled back" }
    }
    const store = yield* Effect.serviceOption(ControllerStore)
    const publisher = yield* Effect.serviceOption(ControllerPublisher)
    if (Option.isNone(store) || Option.isNone(publisher)) {
      return { outcome: "in_flight", detail: "controller update interrupted; this process has no controller store or publisher to finish it; left in flight (the guest stays held)" }
    }
    const s = sagaOf<"controller-update">(op.id, typed)
    if (after.done.has("health")) {
      yield* commit(s, store.value, null)
      yield* ops.finish(op.id, "done", "recovered: the new image had passed its health check; commit finished")
      return { outcome: "done", detail: "health had passed; committed" }
    }
    if (!after.seen.has("publish")) {
      yield* ops.finish(op.id, "failed", "recovered: interrupted before the new image was published; nothing of the guest changed")
      return { outcome: "failed", detail: "interrupted before publishing; nothing changed" }
    }
    const r = yield* rollBack(s, store.value, publisher.value, "recovered: interrupted before the new image was committed")
    return { outcome: r.outcome, detail: r.reason }
  })
