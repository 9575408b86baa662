/**
 * selftest: a read-only health report of the PVE host as the agent's token sees it, and the
 * `task` variant that exercises the async task path (snapshot → rollback → delete snapshot).
 */
import { Clock, Console, Duration, Effect, Either, Layer, Option, Schema } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import * as HubLayer from "../../layers/Hub.js"
import { Hub, type HubError } from "../../layers/Hub.js"
import { Proxmox, ProxmoxWithoutClient } from "../../layers/Proxmox.js"
import { PveHttpClientLive } from "../../layers/PveTransport.js"
import { SnapshotName, type Upid, type VmId } from "../../schema/ids.js"
import type { GuestConfig, ProxmoxError, WaitError } from "../../schema/proxmox.js"
import { AuthzConfig } from "../../schema/config.js"
import type { ClearanceRefused } from "../../schema/clearance.js"
import { clearForConsole } from "../control/gate.js"
import { CliFailure, toCliFailure } from "./failure.js"

export interface GuestSpec {
  readonly hostname: string | null
  readonly cores: number | null
  readonly memory_mib: number | null
  readonly swap_mib: number | null
  readonly rootfs: string | null
  readonly rootfs_bytes: number | null
  readonly features: string | null
}

export interface GuestReport {
  readonly vmid: VmId
  readonly name: string | null
  readonly status: "running" | "stopped"
  readonly lock: string | null
  /** null when the config read failed: the run state is still reported. */
  readonly spec: GuestSpec | null
}

export interface SelftestReport {
  readonly healthy: boolean
  readonly problems: ReadonlyArray<string>
  readonly pve_version: string | null
  readonly node: string | null
  readonly nodes: ReadonlyArray<{ readonly node: string; readonly status: string }>
  readonly node_status: {
    readonly uptime_seconds: number | null
    readonly cpu: number | null
    readonly loadavg: ReadonlyArray<number>
    readonly memory: { readonly total: number | null; readonly used: number | null }
    readonly rootfs: { readonly total: number | null; readonly used: number | null }
  } | null
  readonly guests: ReadonlyArray<GuestReport>
  readonly storage: ReadonlyArray<{
    readonly storage: string
    readonly type: string
    readonly content: string | null
    readonly active: boolean
    readonly total: number | null
    readonly used: number | null
    readonly avail: number | null
  }>
}

const UNITS: Record<string, number> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/** `local-lvm:vm-101-disk-0,size=8G` → 8 GiB in bytes (PVE's size units are binary). */
export const rootfsBytes = (rootfs: string | undefined): number | null => {
  if (rootfs === undefined) return null
  const m = /(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)/.exec(rootfs)
  if (m === null) return null
  return Math.round(Number(m[1]) * (m[2] === "" ? 1 : UNITS[m[2]!]!))
}

export const specOf = (c: GuestConfig): GuestSpec => ({
  hostname: c.hostname ?? null,
  cores: c.cores ?? null,
  memory_mib: c.memory ?? null,
  swap_mib: c.swap ?? null,
  rootfs: c.rootfs ?? null,
  rootfs_bytes: rootfsBytes(c.rootfs),
  features: c.features ?? null
})

const describe = (e: ProxmoxError | WaitError | ClearanceRefused) => `${e._tag}: ${e.message}`

/** Each section is read independently; a failed section becomes a problem, not an abort. */
export const selftestRead = Effect.gen(function*() {
  const pve = yield* Proxmox
  const problems: Array<string> = []
  const section = <A>(name: string, eff: Effect.Effect<A, ProxmoxError>) =>
    eff.pipe(
      Effect.map(Option.some),
      Effect.catchAll((e) => Effect.sync(() => {
        problems.push(`${name}: ${describe(e)}`)
        return Option.none<A>()
      }))
    )

  const version = yield* section("version", pve.version)
  const nodes = yield* section("nodes", pve.nodes)
  const node = yield* section("node", pve.node)
  const status = Option.isSome(node) ? yield* section("node status", pve.nodeStatus) : Option.none()
  const guests = Option.isSome(node) ? yield* section("guests", pve.listGuests) : Option.none()
  const storage = Option.isSome(node) ? yield* section("storage", pve.nodeStorage) : Option.none()

  const guestReports = yield* Effect.forEach(
    Option.getOrElse(guests, () => []),
    (g) =>
      pve.guestConfig(g.vmid).pipe(
        Effect.map((c): GuestSpec | null => specOf(c)),
        // A failed config read drops only the spec; the run state stays reported.
        Effect.catchAll((e) => Effect.sync(() => {
          problems.push(`guest ${g.vmid} config: ${describe(e)}`)
          return null
        })),
        Effect.map((spec): GuestReport => ({
          vmid: g.vmid,
          name: g.name ?? null,
          status: g.status,
          lock: g.lock ?? null,
          spec
        }))
      ),
    { concurrency: 4 }
  )
  for (const n of Option.getOrElse(nodes, () => [])) {
    if (n.status !== "online") problems.push(`node ${n.node} is ${n.status}`)
  }
  const storageRows = Option.getOrElse(storage, () => []).map((s) => ({
    storage: s.storage,
    type: s.type,
    content: s.content ?? null,
    active: s.active === 1,
    total: s.total ?? null,
    used: s.used ?? null,
    avail: s.avail ?? null
  }))
  for (const s of storageRows) if (!s.active) problems.push(`storage ${s.storage} is not active`)

  const report: SelftestReport = {
    healthy: problems.length === 0,
    problems,
    pve_version: Option.getOrNull(Option.map(version, (v) => v.version)),
    node: Option.getOrNull(node),
    nodes: Option.getOrElse(nodes, () => []).map((n) => ({ node: n.node, status: n.status })),
    node_status: Option.getOrNull(Option.map(status, (s) => ({
      uptime_seconds: s.uptime ?? null,
      cpu: s.cpu ?? null,
      loadavg: s.loadavg ?? [],
      memory: { total: s.memory?.total ?? null, used: s.memory?.used ?? null },
      rootfs: { total: s.rootfs?.total ?? null, used: s.rootfs?.used ?? null }
    }))),
    guests: guestReports,
    storage: storageRows
  }
  return report
})

export interface TaskStep {
  readonly step: "snapshot" | "rollback" | "delete_snapshot"
  readonly upid: string | null
  readonly ok: boolean
  readonly millis: number
  readonly error: string | null
}

export interface TaskReport {
  readonly vmid: number
  readonly snapshot: string
  readonly ok: boolean
  readonly steps: ReadonlyArray<TaskStep>
}

/**
 * snapshot → rollback → delete snapshot, each waited to `exitstatus == OK`. Rollback stops a
 * running guest, so it is restarted (`start=1`) when it was running. The snapshot is deleted
 * even when the rollback fails, so the test leaves nothing behind.
 */
export const selftestTask = (vmid: VmId) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const now = yield* Clock.currentTimeMillis
    const name = Schema.decodeSync(SnapshotName)(`felhomselftest${Math.floor(now / 1000)}`)
    const before = yield* pve.guestStatus(vmid)
    const steps: Array<TaskStep> = []
    const run = (step: TaskStep["step"], start: Effect.Effect<Upid, ProxmoxError | ClearanceRefused>) =>
      Effect.gen(function*() {
        const t0 = yield* Clock.currentTimeMillis
        let upid: string | null = null
        const outcome = yield* start.pipe(
          Effect.tap((u) => Effect.sync(() => { upid = u })),
          Effect.flatMap((u) => pve.waitTask(u)),
          Effect.either
        )
        const t1 = yield* Clock.currentTimeMillis
        const ok = outcome._tag === "Right"
        steps.push({ step, upid, ok, millis: t1 - t0, error: ok ? null : describe(outcome.left) })
        return ok
      })

    const snapped = yield* run("snapshot", pve.snapshot(vmid, name, "felhom-agent selftest; safe to delete"))
    if (snapped) {
      // the operator confirmed with --yes at the console; the snapshot is the one just taken
      const reason = `selftest task --yes on ${vmid}`
      yield* run(
        "rollback",
        pve.rollback(vmid, name, { start: before.status === "running" }, clearForConsole({ call: "rollback", vmid, snapshot: name }, reason))
      )
      yield* run("delete_snapshot", pve.deleteSnapshot(vmid, name, {}, clearForConsole({ call: "delete-snapshot", vmid, snapshot: name }, reason)))
    }
    const report: TaskReport = { vmid, snapshot: name, ok: snapped && steps.every((s) => s.ok), steps }
    return report
  })

const fmtBytes = (n: number | null) => {
  if (n === null) return "?"
  const gib = n / 1024 ** 3
  return gib >= 1 ? `${gib.toFixed(1)} GiB` : `${(n / 1024 ** 2).toFixed(0)} MiB`
}

export const renderReport = (r: SelftestReport): string => {
  const lines: Array<string> = []
  lines.push(`felhom-agent selftest: ${r.healthy ? "HEALTHY" : "UNHEALTHY"}`)
  lines.push(`  PVE ${r.pve_version ?? "?"}, node ${r.node ?? "?"} (${r.nodes.map((n) => `${n.node}:${n.status}`).join(", ")})`)
  if (r.node_status !== null) {
    const s = r.node_status
    lines.push(
      `  uptime ${s.uptime_seconds ?? "?"} s, cpu ${s.cpu === null ? "?" : (s.cpu * 100).toFixed(1) + "%"}, load ${s.loadavg.join(" ")}, ` +
        `memory ${fmtBytes(s.memory.used)}/${fmtBytes(s.memory.total)}, rootfs ${fmtBytes(s.rootfs.used)}/${fmtBytes(s.rootfs.total)}`
    )
  }
  lines.push(`  guests (${r.guests.length}):`)
  for (const g of r.guests) {
    const spec = g.spec === null
      ? "spec unavailable"
      : `${g.spec.cores ?? "?"} cores, ${g.spec.memory_mib ?? "?"} MiB, rootfs ${fmtBytes(g.spec.rootfs_bytes)}`
    lines.push(`    ${g.vmid} ${g.name ?? "-"} ${g.status}${g.lock === null ? "" : ` (locked: ${g.lock})`}: ${spec}`)
  }
  lines.push(`  storage (${r.storage.length}):`)
  for (const s of r.storage) {
    lines.push(`    ${s.storage} [${s.type}] ${s.active ? "active" : "INACTIVE"} ${fmtBytes(s.used)}/${fmtBytes(s.total)} (${s.content ?? ""})`)
  }
  for (const p of r.problems) lines.push(`  problem: ${p}`)
  return lines.join("\n")
}

export const renderTask = (t: TaskReport): string =>
  [
    `selftest task on ${t.vmid} (snapshot ${t.snapshot}): ${t.ok ? "OK" : "FAILED"}`,
    ...t.steps.map((s) => `  ${s.step.padEnd(16)} ${s.ok ? "ok  " : "FAIL"} ${String(s.millis).padStart(6)} ms  ${s.upid ?? ""}${s.error === null ? "" : `\n    ${s.error}`}`)
  ].join("\n")

// ---------------------------------------------------------------------------------------------
// The commands: `selftest [read]`, `selftest --print-config`, `selftest task`

const proxmoxLayer = (path: Option.Option<string>) =>
  ProxmoxWithoutClient.pipe(
    Layer.provide(PveHttpClientLive),
    Layer.provide(AgentConfigLayer.ProxmoxSettingsLive),
    Layer.provideMerge(AgentConfigLayer.layer({ path, mode: "selftest" }))
  )

/** The read-only report; exit 1 when unhealthy. */
export const selftestReadCommand = (o: { readonly config: Option.Option<string>; readonly json: boolean }) =>
  Effect.gen(function*() {
    const report = yield* selftestRead
    yield* Console.log(o.json ? JSON.stringify(report, null, 2) : renderReport(report))
    if (!report.healthy) {
      return yield* new CliFailure({ code: 1, message: `unhealthy: ${report.problems[0] ?? "unknown problem"}` })
    }
  }).pipe(Effect.provide(proxmoxLayer(o.config)), Effect.mapError(toCliFailure))

/** `selftest` itself: the read report, or the effective configuration with secrets redacted. */
export const selftestCommand = (o: { readonly config: Option.Option<string>; readonly json: boolean; readonly printConfig: boolean }) =>
  o.printConfig
    ? AgentConfigLayer.loadConfig({ path: o.config, mode: "selftest" }).pipe(
      Effect.flatMap((c) => Console.log(AgentConfigLayer.renderRedacted(c.file))),
      Effect.mapError(toCliFailure)
    )
    : selftestReadCommand(o)

/** Snapshot → rollback → delete on one guest; refuses without --yes (exit 2), exit 1 on a failed step. */
export const selftestTaskCommand = (o: {
  readonly config: Option.Option<string>
  readonly json: boolean
  readonly vmid: VmId
  readonly yes: boolean
}) =>
  Effect.gen(function*() {
    if (!o.yes) {
      return yield* new CliFailure({
        code: 2,
        message: `selftest task rolls guest ${o.vmid} back to a fresh snapshot (a running guest restarts); pass --yes to confirm`
      })
    }
    const report = yield* selftestTask(o.vmid)
    yield* Console.log(o.json ? JSON.stringify(report, null, 2) : renderTask(report))
    if (!report.ok) {
      const failed = report.steps.find((s) => !s.ok)
      return yield* new CliFailure({ code: 1, message: `selftest task failed at ${failed?.step ?? "?"}: ${failed?.error ?? ""}` })
    }
  }).pipe(Effect.provide(proxmoxLayer(o.config)), Effect.mapError(toCliFailure))

// ---------------------------------------------------------------------------------------------
// `selftest hub` (issue 14): reach the hub over the configured transport, authenticate, read
// the envelope (GET /api/v1/envelope: read-only, never a heartbeat), time it, and name the
// reason when it fails. Nothing it prints carries the api key: HubError texts are scrubbed of it
// by the exchange (HubExchange.ts), and this report only adds the URL (which the config refuses
// to hold credentials in) and numbers.

export const HubProbeReason = Schema.Literal("tls", "auth", "clock_skew", "unreachable", "bad_answer")
export type HubProbeReason = typeof HubProbeReason.Type

/** `selftest hub --json`: the machine-readable verdict. */
export const HubSelftestReport = Schema.Struct({
  ok: Schema.Boolean,
  hub_url: Schema.String,
  reason: Schema.NullOr(HubProbeReason),
  message: Schema.NullOr(Schema.String),
  rtt_ms: Schema.NullOr(Schema.Number),
  http_status: Schema.NullOr(Schema.Int),
  /** hub clock minus ours, seconds (from the answer's Date header); null when not known. */
  clock_skew_seconds: Schema.NullOr(Schema.Number),
  max_clock_skew_seconds: Schema.Int,
  envelope: Schema.NullOr(Schema.Struct({
    poll_interval_seconds: Schema.Number,
    blocked: Schema.Boolean,
    desired_generation: Schema.Int,
    has_signed_ops: Schema.Boolean
  })),
  notes: Schema.Array(Schema.String)
})
export type HubSelftestReport = typeof HubSelftestReport.Type

/** How long `selftest hub` waits for the whole exchange (the daemon's client waits 30 s). */
export const HUB_SELFTEST_TIMEOUT = Duration.seconds(10)

/** authz.clock_skew_seconds' default, from the schema itself (no authz block: still checked). */
const DEFAULT_CLOCK_SKEW_SECONDS = AuthzConfig.make({ signers: [] }).clock_skew_seconds

// undici/OpenSSL texts for a certificate the client refused (chain, name, expiry, pin)
const TLS_FAILURE =
  /certificate|self[- ]signed|unable to (get|verify)|CERT_|fingerprint mismatch|altnames|Hostname\/IP|SSL|TLS|handshake|wrong version number/i

/** The reason a failed exchange gets: what an operator has to fix. */
export const classifyHubError = (e: HubError): HubProbeReason => {
  switch (e.reason) {
    case "Status":
      return e.status === 401 || e.status === 403 ? "auth" : "bad_answer"
    case "Transport":
      return TLS_FAILURE.test(e.message) ? "tls" : "unreachable"
    default:
      return "bad_answer"
  }
}

const ADVICE: Record<HubProbeReason, string> = {
  tls: "the hub's certificate was not accepted (hub.ca_file, or the system roots without it)",
  auth: "the hub refused this host's api key (hub.api_key, FELHOM_AGENT_HUB_API_KEY)",
  clock_skew: "this host's clock differs from the hub's: signed operations would be refused (check NTP)",
  unreachable: "no answer from the hub (address, DNS, firewall, or the hub is down)",
  bad_answer: "the hub answered, but not with a control envelope"
}

/**
 * One envelope read through `Hub`, timed on `Clock`; the skew is the hub's Date against the
 * midpoint of the exchange (the header has whole seconds, so ±1 s is noise, not skew).
 */
export const probeHub = (o: { readonly hubUrl: string; readonly maxSkewSeconds: number }) =>
  Effect.gen(function*() {
    const hub = yield* Hub
    const t0 = yield* Clock.currentTimeMillis
    const r = yield* Effect.either(hub.envelope)
    const t1 = yield* Clock.currentTimeMillis
    const base = { hub_url: o.hubUrl, rtt_ms: t1 - t0, max_clock_skew_seconds: o.maxSkewSeconds }
    if (Either.isLeft(r)) {
      const reason = classifyHubError(r.left)
      const report: HubSelftestReport = {
        ...base,
        ok: false,
        reason,
        message: `${ADVICE[reason]}: ${r.left.message}`,
        http_status: r.left.status ?? null,
        clock_skew_seconds: null,
        envelope: null,
        notes: []
      }
      return report
    }
    const { date, envelope } = r.right
    const hubMs = Option.map(date, (d) => Date.parse(d)).pipe(Option.filter((ms) => Number.isFinite(ms)))
    // `|| 0`: no -0 in the JSON
    const skew = Option.map(hubMs, (ms) => Math.round((ms - (t0 + t1) / 2) / 1000) || 0)
    const notes = Option.isNone(hubMs) ? ["the hub's answer carried no usable Date header: clock skew not checked"] : []
    const skewed = Option.exists(skew, (s) => Math.abs(s) > o.maxSkewSeconds)
    const report: HubSelftestReport = {
      ...base,
      ok: !skewed,
      reason: skewed ? "clock_skew" : null,
      message: skewed
        ? `${ADVICE.clock_skew}: the hub's clock is ${Option.getOrElse(skew, () => 0)} s from ours (tolerance ${o.maxSkewSeconds} s, authz.clock_skew_seconds)`
        : null,
      http_status: 200,
      clock_skew_seconds: Option.getOrNull(skew),
      envelope: {
        poll_interval_seconds: envelope.poll_interval_seconds,
        blocked: envelope.blocked,
        desired_generation: envelope.desired_generation,
        has_signed_ops: envelope.has_signed_ops
      },
      notes: envelope.blocked ? [...notes, "the hub marks this host blocked"] : notes
    }
    return report
  })

export const renderHubReport = (r: HubSelftestReport): string =>
  [
    `felhom-agent selftest hub: ${r.ok ? "OK" : `FAILED (${r.reason ?? "?"})`}`,
    `  hub ${r.hub_url}, round trip ${r.rtt_ms ?? "?"} ms${r.http_status === null ? "" : `, HTTP ${r.http_status}`}`,
    ...(r.clock_skew_seconds === null ? [] : [`  clock skew ${r.clock_skew_seconds} s (tolerance ${r.max_clock_skew_seconds} s)`]),
    ...(r.envelope === null ? [] : [
      `  envelope: generation ${r.envelope.desired_generation}, poll ${r.envelope.poll_interval_seconds} s, ` +
      `${r.envelope.blocked ? "BLOCKED" : "not blocked"}, ${r.envelope.has_signed_ops ? "signed ops waiting" : "no signed ops"}`
    ]),
    ...(r.message === null ? [] : [`  ${r.message}`]),
    ...r.notes.map((n) => `  note: ${n}`)
  ].map(printable).join("\n")

/** The message quotes the hub's own text: no control character (an escape sequence) reaches the terminal. */
const printable = (s: string): string => s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, "?")

/** The hub client exactly as the daemon builds it (HubHttpClientLive over the hub block), with a shorter timeout. */
const hubProbeLayer = HubLayer.layerWithoutClient({ requestTimeout: HUB_SELFTEST_TIMEOUT }).pipe(
  Layer.provide(HubLayer.HubHttpClientLive),
  Layer.provide(AgentConfigLayer.HubSettingsLive)
)

/** The verdict as a value (tests); exit codes are the command's. */
export const selftestHub = (path: Option.Option<string>) =>
  Effect.gen(function*() {
    const { file } = yield* AgentConfigLayer.AgentConfig
    if (file.hub === undefined) {
      return yield* new CliFailure({ code: 2, message: "hub: not configured (config file or FELHOM_AGENT_HUB_URL / FELHOM_AGENT_HUB_API_KEY)" })
    }
    const maxSkewSeconds = file.authz?.clock_skew_seconds ?? DEFAULT_CLOCK_SKEW_SECONDS
    return yield* probeHub({ hubUrl: file.hub.url, maxSkewSeconds }).pipe(Effect.provide(hubProbeLayer))
  }).pipe(
    Effect.provide(AgentConfigLayer.layer({ path, mode: "none" })),
    Effect.mapError(toCliFailure)
  )

/** `selftest hub`: exit 0 reached and authenticated within the skew tolerance, 1 not, 2 configuration. */
export const selftestHubCommand = (o: { readonly config: Option.Option<string>; readonly json: boolean }) =>
  Effect.gen(function*() {
    const report = yield* selftestHub(o.config)
    yield* Console.log(o.json ? JSON.stringify(report, null, 2) : renderHubReport(report))
    if (!report.ok) return yield* new CliFailure({ code: 1, message: `selftest hub: ${report.reason ?? "failed"}` })
  })
