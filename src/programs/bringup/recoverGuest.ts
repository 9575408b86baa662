/**
 * Guest-loss DR on the shared bring-up front half (issue 12).
 */
import { Effect } from "effect"
import { OpLog } from "../../layers/OpLog.js"
import type { JournalOp, StoreServices } from "../../layers/Journal.js"
import type { Proxmox } from "../../layers/Proxmox.js"
import type { OperationOf } from "../../schema/operations.js"
import type { Outcome } from "../control/recover.js"
import type { StepError } from "../control/steps.js"

/** Recovery rule for an interrupted guest-loss recovery. */
export const recoverRecoverOp = (op: JournalOp, _typed: OperationOf<"recover">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.flatMap(OpLog, (j) => j.finish(op.id, "needs_operator", "recovered: recovery interrupted; held for an operator")).pipe(
    Effect.as({ outcome: "needs_operator" as const, detail: "recovery interrupted; held for an operator" })
  )
