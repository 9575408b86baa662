/**
 * selftest: a read-only health report of the PVE host as the agent's token sees it, and the
 * `task` variant that exercises the async task path (snapshot → rollback → delete snapshot).
 */
import { Clock, Console, Effect, Layer, Option, Schema } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import { Proxmox, ProxmoxWithoutClient } from "../../layers/Proxmox.js"
import { PveHttpClientLive } from "../../layers/PveTransport.js"
import { SnapshotName, type Upid, type VmId } from "../../schema/ids.js"
import type { GuestConfig, ProxmoxError, WaitError } from "../../schema/proxmox.js"
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
