/**
 * The cloudflared manager (issue 14, SPEC §15: "a separate service the agent manages and
 * health-watches, never embeds"). A fiber of the daemon, started when `cloudflared.enabled` and
 * a token is configured:
 *
 * 1. bring-up: the token written through the root helper (`felhom-cloudflared write-token`, the
 *    token on stdin), then `systemctl restart` when it changed, else `systemctl start`;
 * 2. every check_interval_seconds: `GET http://127.0.0.1:<metrics_port>/ready` (loopback only,
 *    short timeout). Ready → view "running", failures and backoff reset. Not ready → "stopped";
 *    after failures_before_restart consecutive failures: token re-ensured, unit restarted, then
 *    a pause of the current backoff (backoff_min, doubling up to backoff_max) before checking on.
 *    With interval 15 s, 3 failures, backoff 30 → 900 s and a tunnel that never comes up, the
 *    restarts fall at 45, 120, 225, 390, 675 s... (3 checks, restart, pause, 3 checks, ...).
 *
 * The view (running | stopped | unknown | disabled) feeds the host report and /status.
 *
 * Hostile inputs: the hub never reaches this (the token comes from secrets.env, the port from
 * agent.json); whatever answers on the metrics port can only make the agent restart cloudflared
 * (rate-limited by the backoff) or report it running. The token is never logged: errors carry
 * PrivilegedError texts, which name the command and never its stdin.
 */
import { Context, Duration, Effect, Layer, Option, Redacted, Ref } from "effect"
import { request } from "node:http"
import { AgentConfig } from "../../layers/Config.js"
import { type CloudflaredTokenResult, PrivilegedCloudflared, PrivilegedCloudflaredLive, type PrivilegedError } from "../../layers/Privileged.js"
import type { SystemdShape } from "../../layers/Systemd.js"
import type { CloudflaredStatus } from "../daemon/report.js"

export type CloudflaredView = "running" | "stopped" | "unknown" | "disabled"

/** The manager's current view, for the host report and /status (absent: no manager in this graph). */
export class CloudflaredState extends Context.Tag("felhom/CloudflaredState")<CloudflaredState, {
  readonly view: Effect.Effect<CloudflaredView>
}>() {}

/** What the manager drives: the root helper and the unit (PrivilegedCloudflared in production). */
export interface CloudflaredControl {
  readonly writeToken: (token: Redacted.Redacted<string>) => Effect.Effect<CloudflaredTokenResult, PrivilegedError>
  readonly start: Effect.Effect<void, PrivilegedError>
  readonly restart: Effect.Effect<void, PrivilegedError>
}

export interface ManagerSettings {
  readonly token: Redacted.Redacted<string>
  readonly checkInterval: Duration.Duration
  readonly failuresBeforeRestart: number
  readonly backoffMin: Duration.Duration
  readonly backoffMax: Duration.Duration
}

/** The readiness request's cap; cloudflared answers /ready from memory. */
export const READY_TIMEOUT_MS = 2000

/**
 * `GET http://127.0.0.1:<port>/ready`: true only for HTTP 200. Fixed to 127.0.0.1 (never a
 * configurable host), the body is not read beyond its end, and any error or a slow answer is
 * "not ready". Wall-clock timeout: a hung listener must not hang the manager.
 */
export const probeReady = (port: number, timeoutMs = READY_TIMEOUT_MS): Effect.Effect<boolean> =>
  Effect.async<boolean>((resume) => {
    let settled = false
    const done = (ok: boolean) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      req.destroy()
      resume(Effect.succeed(ok))
    }
    const req = request({ host: "127.0.0.1", port, path: "/ready", method: "GET" }, (res) => {
      res.resume()
      done(res.statusCode === 200)
    })
    const timer = setTimeout(() => done(false), timeoutMs)
    req.on("error", () => done(false))
    req.end()
    return Effect.sync(() => done(false))
  })

const describe = (e: PrivilegedError) => `${e.reason}: ${e.message}`

/**
 * The manager loop; never fails, runs until interrupted. `view` is written as it goes. Every
 * wait is on Effect's Clock (TestClock drives the schedule in tests).
 */
export const runManager = (s: ManagerSettings, control: CloudflaredControl, probe: Effect.Effect<boolean>, view: Ref.Ref<CloudflaredView>) =>
  Effect.gen(function*() {
    /** Token first (a restart picks a changed one up), then the unit; false when either failed. */
    const ensure = (always: "restart" | "start") =>
      control.writeToken(s.token).pipe(
        Effect.flatMap((r) => (r === "changed" || always === "restart" ? control.restart : control.start).pipe(Effect.as(r))),
        Effect.tap((r) => Effect.logInfo(`cloudflared: ${always === "restart" ? "restarted" : "started"} (token ${r})`)),
        Effect.as(true),
        Effect.catchAll((e) =>
          Effect.as(Effect.zipRight(Ref.set(view, "unknown"), Effect.logWarning(`cloudflared: ${always} failed: ${describe(e)}`)), false)
        )
      )

    yield* Ref.set(view, "unknown")
    yield* ensure("start")
    let failures = 0
    let backoff = s.backoffMin
    for (;;) {
      yield* Effect.sleep(s.checkInterval)
      if (yield* probe) {
        if (failures > 0 || (yield* Ref.get(view)) !== "running") yield* Effect.logInfo("cloudflared: ready")
        yield* Ref.set(view, "running")
        failures = 0
        backoff = s.backoffMin
        continue
      }
      failures++
      yield* Ref.set(view, "stopped")
      if (failures < s.failuresBeforeRestart) continue
      yield* Effect.logWarning(`cloudflared: not ready for ${failures} check(s); restarting, next pause ${Duration.format(backoff)}`)
      yield* ensure("restart")
      failures = 0
      yield* Effect.sleep(backoff)
      backoff = Duration.min(Duration.times(backoff, 2), s.backoffMax)
    }
  }).pipe(Effect.withLogSpan("cloudflared"))

/** The settings from the config block; None: disabled (not enabled, or no token). */
export const settingsOf = (c: {
  readonly enabled: boolean
  readonly token?: Redacted.Redacted<string> | undefined
  readonly check_interval_seconds: number
  readonly failures_before_restart: number
  readonly backoff_min_seconds: number
  readonly backoff_max_seconds: number
}): Option.Option<ManagerSettings> =>
  !c.enabled || c.token === undefined
    ? Option.none()
    : Option.some({
      token: c.token,
      checkInterval: Duration.seconds(c.check_interval_seconds),
      failuresBeforeRestart: c.failures_before_restart,
      backoffMin: Duration.seconds(c.backoff_min_seconds),
      // a max below the min would shrink the pause; the min wins
      backoffMax: Duration.seconds(Math.max(c.backoff_min_seconds, c.backoff_max_seconds))
    })

/**
 * CloudflaredState with the manager forked for the layer's life when enabled, over any control
 * and probe (tests give fakes); disabled: the view is "disabled" and nothing runs.
 */
export const layerWith = <E, R>(control: Layer.Layer<PrivilegedCloudflared, E, R>, probe?: (port: number) => Effect.Effect<boolean>) =>
  Layer.scoped(
    CloudflaredState,
    Effect.gen(function*() {
      const { file } = yield* AgentConfig
      const settings = settingsOf(file.cloudflared)
      const view = yield* Ref.make<CloudflaredView>(Option.isSome(settings) ? "unknown" : "disabled")
      if (Option.isSome(settings)) {
        const helper = yield* PrivilegedCloudflared
        const port = file.cloudflared.metrics_port
        yield* Effect.forkScoped(runManager(settings.value, helper, (probe ?? probeReady)(port), view))
      } else if (file.cloudflared.enabled) {
        yield* Effect.logWarning("cloudflared: enabled but no token configured (FELHOM_AGENT_CLOUDFLARED_TOKEN); not managed")
      }
      return { view: Ref.get(view) }
    })
  ).pipe(Layer.provide(control))

/** The daemon's: the root helper and systemctl through sudo. */
export const CloudflaredLive = layerWith(PrivilegedCloudflaredLive)

/** The host report's cloudflared status: the manager's view, else (no manager) systemd's word. */
export const cloudflaredReportStatus = (systemd: SystemdShape): Effect.Effect<CloudflaredStatus> =>
  Effect.flatMap(Effect.serviceOption(CloudflaredState), (o) =>
    Option.match(o, {
      onNone: () => systemd.cloudflaredStatus,
      // the report has no "disabled": a tunnel this host does not run is not running
      onSome: (s) => Effect.map(s.view, (v): CloudflaredStatus => (v === "disabled" ? "stopped" : v))
    }))

/** /status's cloudflared field: the manager's view when it runs, else the fallback (E's endpoint). */
export const cloudflaredView = (fallback: Effect.Effect<CloudflaredStatus>): Effect.Effect<CloudflaredView> =>
  Effect.flatMap(Effect.serviceOption(CloudflaredState), (o) => Option.match(o, { onNone: () => fallback, onSome: (s) => s.view }))
