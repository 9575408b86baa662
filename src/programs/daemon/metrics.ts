/**
 * /metrics (issue 14): Prometheus text exposition 0.0.4. The figures code records as it runs live
 * in effect's Metric registry (src/layers/Metrics.ts: cycles, actions, PVE requests and tasks, hub
 * polls); the rest is computed at scrape from what the daemon already holds (watchdog, checks,
 * pending signatures, lost guests) and one read of the protection store (backup ages and the last
 * restore-test per guest). A scrape never calls PVE or the hub: a local client cannot turn
 * scrapes into load on either.
 */
import { Effect, Metric, MetricState, Option } from "effect"
import { PREFIX } from "../../layers/Metrics.js"
import type { RunRecord } from "../../layers/ProtectionStore.js"

export type MetricType = "counter" | "gauge" | "histogram"

export interface Sample {
  /** The family name plus a suffix for histograms (_bucket, _sum, _count). */
  readonly name: string
  readonly labels: ReadonlyArray<readonly [string, string]>
  readonly value: number
}

export interface Family {
  readonly name: string
  readonly help: string
  readonly type: MetricType
  readonly samples: ReadonlyArray<Sample>
}

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

const escapeLabel = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")
const escapeHelp = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

export const formatValue = (v: number): string =>
  Number.isNaN(v) ? "NaN" : v === Number.POSITIVE_INFINITY ? "+Inf" : v === Number.NEGATIVE_INFINITY ? "-Inf" : String(v)

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/

/** The exposition text: HELP and TYPE per family, then its samples; families in name order. */
export const render = (families: ReadonlyArray<Family>): string => {
  const lines: Array<string> = []
  for (const f of [...families].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (!NAME_RE.test(f.name)) continue
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`)
    for (const s of f.samples) {
      const labels = s.labels.filter(([k]) => LABEL_RE.test(k)).map(([k, v]) => `${k}="${escapeLabel(v)}"`)
      lines.push(`${s.name}${labels.length === 0 ? "" : `{${labels.join(",")}}`} ${formatValue(s.value)}`)
    }
  }
  return lines.join("\n") + "\n"
}

/** Our families from effect's Metric registry (felhom_* only: effect's own are left out). */
export const registryFamilies: Effect.Effect<ReadonlyArray<Family>> = Effect.map(Metric.snapshot, (pairs) => {
  const byName = new Map<string, { help: string; type: MetricType; samples: Array<Sample> }>()
  for (const { metricKey: key, metricState: state } of pairs) {
    if (!key.name.startsWith(PREFIX)) continue
    const labels = key.tags.map((t) => [t.key, t.value] as const)
    const help = Option.getOrElse(key.description, () => key.name)
    const add = (type: MetricType, samples: ReadonlyArray<Sample>) => {
      const f = byName.get(key.name) ?? { help, type, samples: [] }
      f.samples.push(...samples)
      byName.set(key.name, f)
    }
    if (MetricState.isCounterState(state)) add("counter", [{ name: key.name, labels, value: Number(state.count) }])
    else if (MetricState.isGaugeState(state)) add("gauge", [{ name: key.name, labels, value: Number(state.value) }])
    else if (MetricState.isHistogramState(state)) {
      // effect's buckets are cumulative and end with +Inf (MetricBoundaries.fromIterable adds it)
      const buckets = state.buckets.map(([le, n]): Sample => ({ name: `${key.name}_bucket`, labels: [...labels, ["le", formatValue(le)]], value: n }))
      if (!state.buckets.some(([le]) => le === Number.POSITIVE_INFINITY)) {
        buckets.push({ name: `${key.name}_bucket`, labels: [...labels, ["le", "+Inf"]], value: state.count })
      }
      add("histogram", [
        ...buckets,
        { name: `${key.name}_sum`, labels, value: state.sum },
        { name: `${key.name}_count`, labels, value: state.count }
      ])
    }
  }
  return [...byName].map(([name, f]) => ({ name, ...f }))
})

const gauge = (name: string, help: string, samples: ReadonlyArray<readonly [ReadonlyArray<readonly [string, string]>, number]>): Family => ({
  name,
  help,
  type: "gauge",
  samples: samples.map(([labels, value]) => ({ name, labels, value }))
})

export interface ScrapeInput {
  readonly nowMs: number
  readonly version: string
  readonly watchdog: "armed" | "stalled" | "off"
  readonly checks: Readonly<Record<string, "ok" | "failing">>
  readonly lastProgressMs: number
  readonly pendingSignatures: number
  readonly lostGuests: number
  /** The protection store's runs; None when it is not in the graph or could not be read. */
  readonly runs: Option.Option<ReadonlyArray<RunRecord>>
  /** The open break-glass session's end (epoch ms), Some(null) when none is open; None: unknown. */
  readonly breakGlassUntilMs: Option.Option<number | null>
}

const RESTORE_VALUE: Record<RunRecord["lastResult"], number> = { ok: 1, warnings: 1, failed: 0, skipped: -1 }

/** The families computed at scrape. vmids are the only per-guest label. */
export const scrapeFamilies = (i: ScrapeInput): ReadonlyArray<Family> => {
  const families: Array<Family> = [
    gauge("felhom_agent_info", "The running agent's version (always 1).", [[[["version", i.version]], 1]]),
    gauge("felhom_watchdog_state", "systemd watchdog: armed (pinged while the hub loop progresses), stalled (pings stopped), off (not under a watchdog).",
      (["armed", "stalled", "off"] as const).map((s) => [[["state", s]], i.watchdog === s ? 1 : 0] as const)),
    gauge("felhom_health_check", "The /health checks: 1 ok, 0 failing.",
      Object.entries(i.checks).map(([k, v]) => [[["check", k]], v === "ok" ? 1 : 0] as const)),
    gauge("felhom_loop_last_progress_timestamp_seconds", "Unix time of the hub loop's last progress beat.", [[[], Math.floor(i.lastProgressMs / 1000)]]),
    gauge("felhom_pending_signatures", "Actions waiting for an operator's signature.", [[[], i.pendingSignatures]]),
    gauge("felhom_lost_guests", "Guests the desired state wants that PVE no longer has.", [[[], i.lostGuests]])
  ]
  if (Option.isSome(i.runs)) {
    const newest = new Map<number, number | null>()
    const restore = new Map<number, RunRecord>()
    for (const r of i.runs.value) {
      if (!Number.isSafeInteger(r.vmid)) continue
      if (r.kind === "backup") {
        const prev = newest.get(r.vmid) ?? null
        newest.set(r.vmid, r.lastSuccessMs === null ? prev : Math.max(prev ?? 0, r.lastSuccessMs))
      } else if (r.kind === "restore_test") {
        const prev = restore.get(r.vmid)
        if (prev === undefined || r.lastAttemptMs > prev.lastAttemptMs) restore.set(r.vmid, r)
      }
    }
    const byVmid = <A>(m: Map<number, A>) => [...m].sort(([a], [b]) => a - b)
    families.push(
      gauge("felhom_backup_age_seconds", "Age of the guest's newest successful backup by the agent (+Inf: attempted, none succeeded).",
        byVmid(newest).map(([vmid, ms]) => [[["vmid", String(vmid)]], ms === null ? Number.POSITIVE_INFINITY : Math.max(0, (i.nowMs - ms) / 1000)] as const)),
      gauge("felhom_restore_test_last_result", "The guest's last restore-test: 1 passed, 0 failed, -1 skipped.",
        byVmid(restore).map(([vmid, r]) => [[["vmid", String(vmid)]], RESTORE_VALUE[r.lastResult]] as const)),
      gauge("felhom_restore_test_last_timestamp_seconds", "Unix time of the guest's last restore-test attempt.",
        byVmid(restore).map(([vmid, r]) => [[["vmid", String(vmid)]], Math.floor(r.lastAttemptMs / 1000)] as const))
    )
  }
  if (Option.isSome(i.breakGlassUntilMs)) {
    const until = i.breakGlassUntilMs.value
    families.push(
      gauge("felhom_break_glass_active", "Whether an emergency access (break-glass) session is open (1) or not (0).", [[[], until === null ? 0 : 1]]),
      ...(until === null ? [] : [gauge("felhom_break_glass_until_timestamp_seconds", "Unix time the open break-glass session expires.", [[[], Math.floor(until / 1000)]])])
    )
  }
  families.push(gauge("felhom_protection_store_readable", "Whether this scrape could read the protection store (1) or not (0).",
    [[[], Option.isSome(i.runs) ? 1 : 0]]))
  return families
}
