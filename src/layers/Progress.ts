/**
 * Progress of a long operation for whoever started it (issue 12): a person at a terminal sees the
 * step, the PVE task log tail and the elapsed time; `--json` or no TTY gets quiet structured
 * lines. Sagas report through `Effect.serviceOption(Progress)`, so the daemon (which has none)
 * pays nothing. Never given a secret: steps, UPIDs and PVE task log lines only.
 */
import { Context, type Effect } from "effect"
import type { Upid } from "../schema/ids.js"

export type ProgressEvent =
  | { readonly kind: "op"; readonly opId: string; readonly op: string; readonly vmid: number | null }
  | { readonly kind: "step"; readonly step: string; readonly state: "started" | "done" | "failed"; readonly detail?: string }
  /** A PVE task the current step waits on; the renderer may tail its log. */
  | { readonly kind: "task"; readonly step: string; readonly upid: Upid }
  | { readonly kind: "note"; readonly text: string }

export interface ProgressShape {
  readonly emit: (event: ProgressEvent) => Effect.Effect<void>
}

export class Progress extends Context.Tag("felhom/Progress")<Progress, ProgressShape>() {}
