/**
 * The daemon's Prometheus figures (issue 14) that code updates as it runs, on effect's Metric
 * registry (no service: the Proxmox client and the loop record into it wherever they are). The
 * figures computed at scrape time (backup ages, restore tests, watchdog) and the exposition
 * itself are in src/programs/daemon/metrics.ts.
 *
 * Label values are bounded by construction: fixed vocabularies (method, outcome, verdict,
 * action) or a sanitized PVE task type; never a URL, a UPID, a guest name or an error message.
 */
import { Effect, Metric, MetricBoundaries, MetricLabel } from "effect"

export const PREFIX = "felhom_"

export const reconcileCycles = Metric.counter("felhom_reconcile_cycles_total", {
  description: "Hub poll cycles run to the end (reported, and reconciled when allowed).",
  incremental: true
})

export const actionsTotal = Metric.counter("felhom_actions_total", {
  description: "Reconcile actions by action kind, the gate's verdict and the result (applied, failed, not_run).",
  incremental: true
})

export const pveRequests = Metric.counter("felhom_pve_requests_total", {
  description: "PVE API requests by method and outcome (ok, api_error, locked, timeout, tls, network, decode).",
  incremental: true
})

export const pveRequestSeconds = Metric.histogram(
  "felhom_pve_request_duration_seconds",
  MetricBoundaries.fromIterable([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]),
  "PVE API request latency by method (one attempt; reads may be retried)."
)

export const pveTaskSeconds = Metric.histogram(
  "felhom_pve_task_duration_seconds",
  MetricBoundaries.fromIterable([1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200]),
  "How long the agent waited for a PVE task, by task type."
)

export const hubPolls = Metric.counter("felhom_hub_polls_total", {
  description: "Host reports sent to the hub, by outcome (ok, error).",
  incremental: true
})

export const hubLastSuccess = Metric.gauge("felhom_hub_last_success_timestamp_seconds", {
  description: "Unix time of the last host report the hub accepted (0: none since start)."
})

export type PveOutcome = "ok" | "api_error" | "locked" | "timeout" | "tls" | "network" | "decode"

const METHODS = new Set(["GET", "POST", "PUT", "DELETE"])

export const recordPveRequest = (method: string, outcome: PveOutcome, seconds: number): Effect.Effect<void> => {
  const m = METHODS.has(method) ? method : "other"
  return Effect.zipRight(
    Metric.increment(Metric.tagged(Metric.tagged(pveRequests, "method", m), "outcome", outcome)),
    Metric.update(Metric.tagged(pveRequestSeconds, "method", m), seconds)
  )
}

/** PVE names its task types (vzdump, vzstart, ...); other names become "other". */
export const taskTypeLabel = (type: string | undefined): string =>
  type !== undefined && /^[a-z][a-z0-9]{0,23}$/.test(type) ? type : "other"

export const recordTaskWait = (type: string | undefined, seconds: number): Effect.Effect<void> =>
  Metric.update(Metric.tagged(pveTaskSeconds, "type", taskTypeLabel(type)), seconds)

export const recordAction = (action: string, verdict: string, result: string): Effect.Effect<void> =>
  Metric.increment(Metric.taggedWithLabels(actionsTotal, [
    MetricLabel.make("action", action),
    MetricLabel.make("verdict", verdict),
    MetricLabel.make("result", result)
  ]))

export const recordHubPoll = (ok: boolean, nowMs: number): Effect.Effect<void> =>
  ok
    ? Effect.zipRight(Metric.increment(Metric.tagged(hubPolls, "outcome", "ok")), Metric.set(hubLastSuccess, Math.floor(nowMs / 1000)))
    : Metric.increment(Metric.tagged(hubPolls, "outcome", "error"))

export const recordCycle: Effect.Effect<void> = Metric.increment(reconcileCycles)
