/**
 * The daemon's status endpoint (issue 14), composed: /health, /status and /metrics from the
 * daemon's state Ref, its LoopProgress and Systemd, served by src/layers/StatusServer.ts on
 * status_endpoint.host:port once recovery has run (the health gate's window covers start-up).
 *
 * Health checks: loop (LoopProgress not stalled: the watchdog's own rule), recovered (journal
 * recovery done), store (the last probe of the state store succeeded), hub (at least one host
 * report accepted since this process started; "since start": a hub outage later does not fail
 * /health, so the update gate judges the new binary, not the hub's uptime; /status shows the
 * last contact and error).
 *
 * Nothing served is secret: no params of pending signatures, hub errors are the hub client's
 * scrubbed text (scrubbed again here with the api key and the PVE token secret), metrics carry
 * bounded labels only.
 */
import { cloudflaredView } from "../cloudflared/manager.js"
import { Clock, Effect, Option, Redacted, type Ref, Schedule } from "effect"
import { SqlClient } from "@effect/sql"
import { AgentConfig } from "../../layers/Config.js"
import { LoopProgress, type LoopProgressShape } from "../../layers/LoopProgress.js"
import { ProtectionStore, type RunRecord } from "../../layers/ProtectionStore.js"
import { serveStatus, type StatusReply } from "../../layers/StatusServer.js"
import { Systemd } from "../../layers/Systemd.js"
import { HEALTH_PATH, type HealthBody, METRICS_PATH, STATUS_PATH, type StatusBody } from "../../schema/status.js"
import { makeScrubber } from "../../schema/text.js"
import { VERSION } from "../../version.js"
import { currentSession } from "../breakglass/store.js"
import type { DaemonState } from "./loop.js"
import { CONTENT_TYPE, registryFamilies, render, scrapeFamilies } from "./metrics.js"

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

export interface StatusSources {
  readonly state: Ref.Ref<DaemonState>
  readonly progress: LoopProgressShape
  readonly watchdogArmed: boolean
  /**
   * cloudflared's state: the manager's view when it runs (disabled included), else
   * Systemd.cloudflaredStatus; cached by the caller.
   */
  readonly cloudflared: Effect.Effect<StatusBody["cloudflared"]>
  /** The open break-glass session's end, epoch ms, or null (None: no state database in this graph). */
  readonly breakGlassUntil: Option.Option<Effect.Effect<number | null, unknown>>
  /** The protection store's runs (None: not in this graph). */
  readonly runs: Option.Option<Effect.Effect<ReadonlyArray<RunRecord>, unknown>>
  readonly startedAtMs: number
  readonly pid: number
  /** Removes secrets from text the endpoint quotes (the hub's last error). */
  readonly scrub: (text: string) => string
}

export const healthOf = (src: StatusSources): Effect.Effect<HealthBody> =>
  Effect.gen(function*() {
    const s = yield* src.state.get
    const stalled = yield* src.progress.stalled
    const checks = {
      loop: stalled ? "failing" as const : "ok" as const,
      recovered: s.recovered ? "ok" as const : "failing" as const,
      store: s.store.healthy ? "ok" as const : "failing" as const,
      hub: s.lastHubContactMs !== null ? "ok" as const : "failing" as const
    }
    const ok = Object.values(checks).every((c) => c === "ok")
    // key order is the contract: the gate matches `{"status":"ok","version":"<v>"` literally
    return { status: ok ? "ok" : "failing", version: VERSION, pid: src.pid, started_at: iso(src.startedAtMs), checks }
  })

export const statusOf = (src: StatusSources): Effect.Effect<StatusBody> =>
  Effect.gen(function*() {
    const health = yield* healthOf(src)
    const s = yield* src.state.get
    const watchdog = !src.watchdogArmed ? "off" as const : health.checks.loop === "ok" ? "armed" as const : "stalled" as const
    return {
      health,
      cycles: s.cycles,
      last_cycle_at: s.lastCycleMs === null ? null : iso(s.lastCycleMs),
      last_hub_contact_at: s.lastHubContactMs === null ? null : iso(s.lastHubContactMs),
      last_hub_error: s.lastHubError === null ? null : src.scrub(s.lastHubError).slice(0, 300),
      applied_generation: s.appliedGeneration,
      // what waits and why, never the params (a signature's params are the hub's business)
      pending_signatures: s.pending.map((p) => ({ op: p.op, vmid: p.vmid, reason: src.scrub(p.reason).slice(0, 300), since: p.since })),
      lost_guests: [...s.lostGuests],
      watchdog,
      cloudflared: yield* src.cloudflared
    }
  })

export const metricsOf = (src: StatusSources): Effect.Effect<string> =>
  Effect.gen(function*() {
    const s = yield* src.state.get
    const health = yield* healthOf(src)
    const snap = yield* src.progress.snapshot
    const runs = yield* Option.match(src.runs, {
      onNone: () => Effect.succeed(Option.none()),
      onSome: (read) => Effect.option(read)
    })
    const breakGlassUntilMs = yield* Option.match(src.breakGlassUntil, {
      onNone: () => Effect.succeed(Option.none<number | null>()),
      onSome: (read) => Effect.option(read)
    })
    const scraped = scrapeFamilies({
      nowMs: yield* Clock.currentTimeMillis,
      version: VERSION,
      watchdog: !src.watchdogArmed ? "off" : health.checks.loop === "ok" ? "armed" : "stalled",
      checks: health.checks,
      lastProgressMs: snap.lastBeatMs,
      pendingSignatures: s.pending.length,
      lostGuests: s.lostGuests.length,
      runs,
      breakGlassUntilMs
    })
    return render([...(yield* registryFamilies), ...scraped])
  })

const json = (status: number, body: unknown): StatusReply => ({ status, contentType: "application/json", body: JSON.stringify(body) })

/** The three routes, exact paths only. Scrapes are serialized (one store read at a time). */
export const routesOf = (src: StatusSources) =>
  Effect.gen(function*() {
    const oneScrape = yield* Effect.makeSemaphore(1)
    return new Map<string, Effect.Effect<StatusReply>>([
      [HEALTH_PATH, Effect.map(healthOf(src), (h) => json(h.status === "ok" ? 200 : 503, h))],
      [STATUS_PATH, Effect.map(statusOf(src), (b) => json(200, b))],
      [METRICS_PATH, oneScrape.withPermits(1)(Effect.map(metricsOf(src), (body) => ({ status: 200, contentType: CONTENT_TYPE, body })))]
    ])
  })

export interface StatusEndpointOptions {
  /** The cloudflared source (default: the manager's view, or Systemd.cloudflaredStatus without one). */
  readonly cloudflared?: Effect.Effect<StatusBody["cloudflared"]>
  /** Called with the bound port (tests, the demo). */
  readonly onListening?: (port: number) => Effect.Effect<void>
  /** Limits for tests (StatusServer.DEFAULT_LIMITS otherwise). */
  readonly limits?: Partial<Pick<Parameters<typeof serveStatus>[0], "headersTimeoutMs" | "requestTimeoutMs" | "idleTimeoutMs" | "maxConnections" | "handlerTimeoutMs">>
}

/**
 * Serves the endpoint for the rest of the caller's scope (forked). A port that cannot be bound
 * is logged and retried every 30 s: the daemon keeps managing guests without it (the health
 * gate, not the daemon, decides what an absent endpoint means).
 */
export const startStatusEndpoint = (state: Ref.Ref<DaemonState>, options: StatusEndpointOptions = {}) =>
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    const cfg = file.status_endpoint
    if (!cfg.enabled) {
      yield* Effect.logInfo("status endpoint disabled (status_endpoint.enabled false)")
      return
    }
    const systemd = yield* Systemd
    const progress = yield* LoopProgress
    const store = yield* Effect.serviceOption(ProtectionStore)
    const sql = yield* Effect.serviceOption(SqlClient.SqlClient)
    // systemctl per /status request would let any local user make the daemon spawn processes
    const cloudflared = yield* Effect.cachedWithTTL(options.cloudflared ?? cloudflaredView(systemd.cloudflaredStatus), "30 seconds")
    const secrets = [
      ...(file.hub === undefined ? [] : [Redacted.value(file.hub.api_key)]),
      ...(file.proxmox === undefined ? [] : [Redacted.value(file.proxmox.token_secret)])
    ]
    const scrubber = makeScrubber(secrets)
    const src: StatusSources = {
      state,
      progress,
      watchdogArmed: Option.isSome(systemd.watchdogInterval),
      cloudflared,
      runs: Option.map(store, (s) => s.runs),
      breakGlassUntil: Option.map(sql, (client) =>
        currentSession.pipe(
          Effect.map(Option.match({ onNone: () => null, onSome: (b) => Date.parse(b.until) })),
          Effect.provideService(SqlClient.SqlClient, client)
        )),
      startedAtMs: yield* Clock.currentTimeMillis,
      pid: process.pid,
      scrub: scrubber.scrub
    }
    const routes = yield* routesOf(src)
    const serve = Effect.scoped(Effect.gen(function*() {
      const { port } = yield* serveStatus({ host: cfg.host, port: cfg.port, routes, ...options.limits })
      yield* Effect.logInfo(`status endpoint listening on http://${cfg.host === "::1" ? "[::1]" : cfg.host}:${port}`)
      if (options.onListening !== undefined) yield* options.onListening(port)
      return yield* Effect.never
    }))
    yield* Effect.forkScoped(serve.pipe(
      Effect.tapError((e) => Effect.logError(`${e.message}; retrying in 30s`)),
      Effect.retry(Schedule.spaced("30 seconds")),
      Effect.catchAllCause((cause) => Effect.logError("status endpoint stopped", cause))
    ))
  })
