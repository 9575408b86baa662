/**
 * Journal recovery, run at start before any mutation (SPEC §9): every op left in flight by a
 * crash is resumed, rolled back, or held for an operator, so no half-done operation survives and
 * nothing is destroyed on a guess. The rule per kind is an exhaustive switch over the typed
 * operation (src/schema/operations.ts): a new kind without a rule does not compile.
 *
 * - create: sealed → the guest is a customer guest; what is left (untag, start) is left to
 *   reconcile. Not sealed → compensated through the gate (exact instance by its marker, never
 *   started), or needs_operator when that cannot be proven or fails.
 * - decommission: resumed (it was signed when it started; the gate re-clears the destroy from
 *   the journal's record of that signature).
 * - restore-now: recorded tasks settled; never resumed (the operator re-signs). A guest gone
 *   after an interrupted overwrite is recorded lost.
 * - restore-test: recorded tasks settled; the scratch guest torn down through the gate's
 *   scratch clearance, or held for an operator when it cannot be proven (never resumed).
 * - the rest: recorded UPIDs are waited; all steps OK → done, otherwise failed (reconcile plans
 *   again from the actual state).
 * An op whose payload does not decode is held for an operator.
 */
import { recoverRecoverOp } from "../bringup/recoverGuest.js"
import { recoverGoldenBuild } from "../golden/build.js"
import { OpLog } from "../../layers/OpLog.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import { Effect, Either, Option } from "effect"
import { type JournalOp, type StoreServices } from "../../layers/Journal.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { Upid } from "../../schema/ids.js"
import { decodeOperation, type Operation, type OperationOf } from "../../schema/operations.js"
import { clearResume } from "./gate.js"
import { decommissionSteps, existing, rollBackCreate, sagaOf, type StepError } from "./steps.js"
import { recordInterrupted, tearDown } from "../protection/restoreTest.js"
import { RestoreTestSettings } from "../protection/scratch.js"
import { recoverControllerDeploy } from "../controller/deploy.js"
import { recoverControllerUpdate } from "../controller/update.js"
import { recoverControllerRestart } from "../controller/heal.js"
import { recoverApiRollback, recoverApiSnapshot } from "../localapi/ops.js"
import { recoverBreakGlass } from "../breakglass/enable.js"
import { recoverAgentUpdate } from "../update/saga.js"

export interface RecoveredOp {
  readonly id: string
  readonly kind: string
  readonly vmid: number | null
  readonly outcome: "done" | "rolled_back" | "failed" | "needs_operator" | "in_flight"
  readonly detail: string
}

/** What a kind's recovery rule decided (kinds' own rules live beside their sagas and return this). */
export type Outcome = { readonly outcome: RecoveredOp["outcome"]; readonly detail: string }

const isUpid = (u: string | null): u is Upid => u !== null && u.startsWith("UPID:")

/** Waits every started step's recorded task; true when all of them ended OK. */
export const settleStarted = (op: JournalOp) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const ops = yield* OpLog
    let allOk = true
    for (const step of op.steps) {
      if (step.status !== "started") continue
      if (!isUpid(step.upid)) {
        allOk = false
        continue
      }
      const ok = yield* pve.waitTask(step.upid).pipe(Effect.as(true), Effect.orElseSucceed(() => false))
      if (ok) yield* ops.stepDone(op.id, step.name)
      else allOk = false
    }
    return allOk
  })

export const reread = (op: JournalOp) => Effect.map(Effect.flatMap(OpLog, (j) => j.get(op.id)), Option.getOrElse(() => op))

/** Settles the op's started tasks, then its record as it now stands and the names of its done steps. */
export const settledSteps = (op: JournalOp) =>
  Effect.gen(function*() {
    yield* settleStarted(op)
    const after = yield* reread(op)
    return { after, done: new Set(after.steps.filter((s) => s.status === "done").map((s) => s.name)) }
  })

const recoverCreate = (op: JournalOp, typed: OperationOf<"create">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const { done } = yield* settledSteps(op)
    if (done.has("seal")) {
      // sealed: customer data; its provenance ended with the seal (finish what the seal began)
      yield* guests.clearProvenance(typed.vmid)
      yield* guests.markCustomer(typed.vmid, `created by op ${op.id}`)
      if (done.has("untag") && done.has("start")) {
        yield* ops.finish(op.id, "done", "recovered: every step had completed")
        return { outcome: "done", detail: "every step had completed" }
      }
      yield* ops.finish(op.id, "failed", "recovered: sealed before the crash; reconcile converges the rest")
      return { outcome: "failed", detail: "sealed; the guest is kept and reconcile converges the rest" }
    }
    const r = yield* rollBackCreate(sagaOf(op.id, typed), "recovered: interrupted before the seal", { transient: "leave" })
    return r === "rolled_back"
      ? { outcome: "rolled_back", detail: "interrupted before the seal; rolled back" }
      : { outcome: "needs_operator", detail: "interrupted before the seal; could not be undone safely, held for an operator" }
  })

const resumeDecommission = (op: JournalOp, typed: OperationOf<"decommission">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    yield* settleStarted(op)
    yield* decommissionSteps(sagaOf(op.id, typed), clearResume(op.id, typed.vmid))
    yield* ops.finish(op.id, "done", "recovered: decommission resumed")
    return { outcome: "done", detail: "decommission resumed to completion" }
  })

const settleRestoreNow = (op: JournalOp, typed: OperationOf<"restore-now">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const ok = yield* settleStarted(op)
    const after = yield* reread(op)
    if (ok && after.steps.length > 0 && after.steps.every((s) => s.status === "done") && after.steps.some((s) => s.name === "rollback" || s.name === "restore")) {
      yield* ops.finish(op.id, "done", "recovered: the restore had completed")
      return { outcome: "done", detail: "restore had completed" }
    }
    if (Option.isNone(yield* existing(typed.vmid))) {
      yield* guests.markLost(typed.vmid, `restore-now ${op.id} was interrupted and the guest is gone`)
    }
    yield* ops.finish(op.id, "failed", "recovered: interrupted; not resumed (the operator signs again)")
    return { outcome: "failed", detail: "interrupted; not resumed" }
  })

const settleOther = (op: JournalOp): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const ok = yield* settleStarted(op)
    const after = yield* reread(op)
    if (ok && after.steps.length > 0 && after.steps.every((s) => s.status === "done")) {
      yield* ops.finish(op.id, "done", "recovered: the task had completed")
      return { outcome: "done", detail: "task had completed" }
    }
    yield* ops.finish(op.id, "failed", "recovered: interrupted before completion; reconcile plans again")
    return { outcome: "failed", detail: "interrupted; left to the next reconcile" }
  })

/**
 * A prune is never resumed: the archives it was to delete were what the policy in force removed
 * when it began, and the policy may have changed since. Its started deletions are settled; the
 * next protection pass recomputes from what is still listed.
 */
const settlePrune = (op: JournalOp): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    yield* settleStarted(op)
    yield* ops.finish(op.id, "failed", "recovered: interrupted; not resumed (the next protection pass recomputes)")
    return { outcome: "failed", detail: "interrupted; the next protection pass recomputes what to prune" }
  })

/**
 * An interrupted restore-test: its recorded tasks are settled, then its scratch guest is torn down
 * through the gate (exactly this op's scratch guest: in range, journal provenance of this op with
 * its marker, exactly the marker tag) and the op ends failed; a scratch guest that cannot be
 * proven is held for an operator, never destroyed on a guess. A PVE failure leaves the op in
 * flight for the next recovery. Without the restore-test settings in the graph: held.
 */
const recoverRestoreTest = (op: JournalOp, typed: OperationOf<"restore-test">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const hold = (why: string) =>
      Effect.as(ops.finish(op.id, "needs_operator", `recovered: restore-test interrupted; ${why}; scratch guest ${typed.vmid} held for an operator`), {
        outcome: "needs_operator" as const,
        detail: `restore-test interrupted; ${why}; held for an operator`
      })
    const settings = yield* Effect.serviceOption(RestoreTestSettings)
    if (Option.isNone(settings)) return yield* hold("the scratch range is not configured in this process")
    yield* settleStarted(op)
    const down = yield* Effect.either(tearDown(sagaOf(op.id, typed)).pipe(Effect.provideService(RestoreTestSettings, settings.value)))
    if (Either.isLeft(down)) {
      if (down.left._tag === "ClearanceRefused") {
        yield* recordInterrupted(op, typed, `interrupted; scratch guest held for an operator (${down.left.message})`)
        return yield* hold(down.left.message)
      }
      return yield* Effect.fail(down.left)
    }
    const what = down.right === "destroyed" ? "scratch torn down" : "no scratch guest was left"
    yield* recordInterrupted(op, typed, `interrupted by an agent restart; ${what}`)
    yield* ops.finish(op.id, "failed", `recovered: interrupted; ${what}`)
    return { outcome: "failed", detail: `restore-test interrupted; ${what}` }
  })

/**
 * A signed storage detach/decommission has no PVE task: done only if its last step (recording
 * the target's new state) was; otherwise failed, never resumed (the unmount is harmless to have
 * happened; the storage pass reads the target again and asks for a new signature if it should
 * still go).
 */
const settleStorageRemoval = (op: JournalOp): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    if (op.steps.some((s) => s.name === "record" && s.status === "done")) {
      yield* ops.finish(op.id, "done", "recovered: the target's new state had been recorded")
      return { outcome: "done", detail: "the removal had completed" }
    }
    yield* ops.finish(op.id, "failed", "recovered: interrupted; not resumed (the storage pass asks for a new signature)")
    return { outcome: "failed", detail: "interrupted; not resumed" }
  })

/** The rule for each kind. Exhaustive: the `never` default stops compiling when a kind is added. */
const ruleFor = (op: JournalOp, typed: Operation): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> => {
  switch (typed._tag) {
    case "create":
      return recoverCreate(op, typed)
    case "decommission":
      return resumeDecommission(op, typed)
    case "restore-now":
      return settleRestoreNow(op, typed)
    case "force-backup":
    case "start":
    case "stop":
    case "set_config":
    case "resize":
    case "golden-register":
    case "backup":
      return settleOther(op)
    case "retention-change":
      // not resumed: an interrupted adoption leaves the previous policy in force (keeps more)
      return settleOther(op)
    case "storage-removal":
      return settleStorageRemoval(op)
    case "prune":
      return settlePrune(op)
    case "restore-test":
      return recoverRestoreTest(op, typed)
    case "controller-deploy":
      // before its commit: compensated (token and files both gone); after: finished
      return recoverControllerDeploy(op, typed)
    case "controller-update":
      // before its commit: rolled back to the pre-update snapshot, the old image republished
      return recoverControllerUpdate(op, typed)
    case "controller-restart":
      return recoverControllerRestart(op, typed)
    case "api-snapshot":
      return recoverApiSnapshot(op, typed)
    case "api-rollback":
      // never resumed: the controller asks again
      return recoverApiRollback(op, typed)
    case "recover":
      // before its seal: a fresh restore is destroyed again (exact instance); after: finished
      return recoverRecoverOp(op, typed)
    case "link-confirm":
      // a config PUT: done if it completed, else the operator confirms again
      return settleOther(op)
    case "golden-build":
      // the build container is the op's own: removed; an archive already dumped is kept, unregistered
      return recoverGoldenBuild(op, typed)
    case "break-glass":
      // start not recorded done: the unit is stopped (fail closed) and the session ends
      // "interrupted"; done: the expiry fiber takes over
      return recoverBreakGlass(op, typed)
    case "agent-update":
      // never re-run: before activate, abandoned (download removed; nothing changed); after it,
      // the health gate's update.json and what `current` runs decide done or failed
      return recoverAgentUpdate(op, typed)
    default: {
      const unreachable: never = typed
      return unreachable
    }
  }
}

const recoverOne = (op: JournalOp): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> => {
  const typed = decodeOperation(op.payload)
  if (Either.isLeft(typed) || typed.right._tag !== op.kind) {
    return Effect.flatMap(OpLog, (j) => j.finish(op.id, "needs_operator", "recovered: the journal record does not decode; held for an operator")).pipe(
      Effect.as({ outcome: "needs_operator" as const, detail: "journal record does not decode" })
    )
  }
  return ruleFor(op, typed.right)
}

/** Recovers every in-flight op, oldest first. Errors talking to PVE leave the op in flight. */
export const recover = Effect.gen(function*() {
  const log = yield* OpLog
  const pending = yield* log.inFlight
  const results: Array<RecoveredOp> = []
  for (const op of pending) {
    const r = yield* recoverOne(op).pipe(
      Effect.catchAll((e) =>
        e._tag === "JournalError"
          ? Effect.fail(e) // no journal, no recovery: the caller makes no change until it can
          : Effect.succeed({ outcome: "in_flight" as const, detail: `recovery could not finish (${e._tag}: ${e.message}); still in flight` })
      )
    )
    results.push({ id: op.id, kind: op.kind, vmid: op.vmid, outcome: r.outcome, detail: r.detail })
  }
  return results
})
