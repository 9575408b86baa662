/**
 * The golden base archive, built as root (SPEC §10, issue 12). Filled in by the golden-build work.
 */
import { Effect } from "effect"
import { OpLog } from "../../layers/OpLog.js"
import type { JournalOp, StoreServices } from "../../layers/Journal.js"
import type { Proxmox } from "../../layers/Proxmox.js"
import type { OperationOf } from "../../schema/operations.js"
import type { Outcome } from "../control/recover.js"
import type { StepError } from "../control/steps.js"

/** Recovery rule for an interrupted golden build. */
export const recoverGoldenBuild = (op: JournalOp, _typed: OperationOf<"golden-build">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.flatMap(OpLog, (j) => j.finish(op.id, "needs_operator", "recovered: golden build interrupted; held for an operator")).pipe(
    Effect.as({ outcome: "needs_operator" as const, detail: "golden build interrupted; held for an operator" })
  )
