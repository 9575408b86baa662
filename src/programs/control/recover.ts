/**
 * Journal recovery, run at start before any mutation (SPEC §9): every op left in flight by a
 * crash is resumed or rolled back, so no half-done operation survives.
 *
 * - create: rolled back unless every step finished. The guest is destroyed only if the journal
 *   proves it is ours (same-transaction provenance, written right after PVE accepted the
 *   restore); a guest whose origin is unproven is left alone and reported.
 * - decommission: resumed (it was authorized when it started): stop if running, destroy.
 * - anything else: recorded UPIDs are waited; all steps OK → done, otherwise failed (the next
 *   reconcile plans again from the actual state).
 */
import { Effect, Option } from "effect"
import { Journal, type JournalOp } from "../../layers/Journal.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { type Upid, VmId } from "../../schema/ids.js"
import { compensateCreate, CREATE_STEPS, lockRetry, type StepError, taskStep } from "./steps.js"

export interface RecoveredOp {
  readonly id: string
  readonly kind: string
  readonly vmid: number | null
  readonly outcome: "done" | "rolled_back" | "failed"
  readonly detail: string
}

const isUpid = (u: string | null): u is Upid => u !== null && u.startsWith("UPID:")

/** Waits every started step's recorded task; true when all of them ended OK. */
const settleStarted = (op: JournalOp) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const journal = yield* Journal
    let allOk = true
    for (const step of op.steps) {
      if (step.status !== "started") continue
      if (!isUpid(step.upid)) {
        allOk = false
        continue
      }
      const ok = yield* pve.waitTask(step.upid).pipe(Effect.as(true), Effect.orElseSucceed(() => false))
      if (ok) yield* journal.stepDone(op.id, step.name)
      else allOk = false
    }
    return allOk
  })

const rollbackCreate = (op: JournalOp, vmid: VmId) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    yield* settleStarted(op)
    const after = Option.getOrElse(yield* journal.get(op.id), () => op)
    const done = new Set(after.steps.filter((s) => s.status === "done").map((s) => s.name))
    if (CREATE_STEPS.every((s) => done.has(s))) {
      // a finished create is a customer guest like any other: its provenance ends with the transaction
      yield* journal.clearProvenance(vmid)
      yield* journal.finish(op.id, "done", "recovered: every step had completed")
      return { outcome: "done", detail: "every step had completed" } as const
    }
    const ours = yield* compensateCreate(op.id, vmid)
    if (!ours) {
      // PVE never accepted our restore (or we cannot prove it did): touch nothing
      yield* journal.finish(op.id, "rolled_back", "recovered: the restore was never accepted; nothing to undo")
      return { outcome: "rolled_back", detail: "restore never accepted; nothing to undo" } as const
    }
    yield* journal.finish(op.id, "rolled_back", "recovered: half-built guest destroyed")
    return { outcome: "rolled_back", detail: "half-built guest destroyed" } as const
  })

const resumeDecommission = (op: JournalOp, vmid: VmId) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const pve = yield* Proxmox
    yield* settleStarted(op)
    const status = yield* Effect.flatMap(Proxmox, (p) => p.guestStatus(vmid)).pipe(
      Effect.map(Option.some),
      Effect.catchIf((e) => e._tag === "PveApiError" && e.kind === "not_found", () => Effect.succeed(Option.none()))
    )
    if (Option.isSome(status)) {
      if (status.value.status === "running") yield* taskStep(op.id, "stop", pve.stop(vmid))
      yield* taskStep(op.id, "destroy", pve.destroy(vmid, { purge: true })).pipe(
        Effect.retry({ schedule: lockRetry, while: (e) => e._tag === "PveLocked" })
      )
    }
    yield* journal.clearProvenance(vmid)
    yield* journal.finish(op.id, "done", "recovered: decommission resumed")
    return { outcome: "done", detail: "decommission resumed to completion" } as const
  })

const settleOther = (op: JournalOp) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const ok = yield* settleStarted(op)
    const after = Option.getOrElse(yield* journal.get(op.id), () => op)
    if (ok && after.steps.length > 0 && after.steps.every((s) => s.status === "done")) {
      yield* journal.finish(op.id, "done", "recovered: the task had completed")
      return { outcome: "done", detail: "task had completed" } as const
    }
    yield* journal.finish(op.id, "failed", "recovered: interrupted before completion; reconcile plans again")
    return { outcome: "failed", detail: "interrupted; left to the next reconcile" } as const
  })

const recoverOne = (op: JournalOp): Effect.Effect<{ readonly outcome: RecoveredOp["outcome"]; readonly detail: string }, StepError, Journal | Proxmox> => {
  const vmid = op.vmid === null ? undefined : VmId.make(op.vmid)
  if (op.kind === "create" && vmid !== undefined) return rollbackCreate(op, vmid)
  if (op.kind === "decommission" && vmid !== undefined) return resumeDecommission(op, vmid)
  return settleOther(op)
}

/** Recovers every in-flight op, oldest first. Errors talking to PVE leave the op in flight. */
export const recover = Effect.gen(function*() {
  const journal = yield* Journal
  const ops = yield* journal.inFlight
  const results: Array<RecoveredOp> = []
  for (const op of ops) {
    const r = yield* recoverOne(op).pipe(
      Effect.catchAll((e) =>
        Effect.succeed({ outcome: "failed" as const, detail: `recovery could not finish (${e._tag}: ${e.message}); still in flight` })
      )
    )
    results.push({ id: op.id, kind: op.kind, vmid: op.vmid, outcome: r.outcome, detail: r.detail })
  }
  return results
})
