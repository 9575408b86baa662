/**
 * Break-glass test wiring: an in-memory unit (PrivilegedBreakGlass) whose start/stop can be made
 * to fail or hang, a consent the test flips, and the break-glass service over the engine's real
 * Journal/Authz database file (a second connection to the same file, as the daemon has).
 */
import { Effect, Layer, Option, Schema } from "effect"
import * as AgentConfigLayer from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { type BreakGlassUnitState, PrivilegedBreakGlass, type PrivilegedBreakGlassShape } from "../src/layers/Privileged.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { PrivilegedError } from "../src/schema/privileged.js"
import { BreakGlass, breakGlassLayer } from "../src/programs/breakglass/service.js"
import { makeSimPve } from "../src/sim/pve/index.js"
import { agentLayer, type AgentServices, dbFile, job, operator, signedOp } from "./engine-support.js"
import { seedWith } from "./support.js"
import type { TestKey } from "./sshsig-sign.js"

export interface FakeUnit {
  state: BreakGlassUnitState
  failStart: boolean
  failStop: boolean
  /** start sets the unit active, then never returns (a crash mid-start, once interrupted). */
  hangAfterStart: boolean
  readonly calls: Array<string>
  readonly shape: PrivilegedBreakGlassShape
}

const err = (what: string) =>
  new PrivilegedError({ reason: "NonZeroExit", command: "systemctl", exitCode: 1, message: `systemctl: ${what} exited with status 1` })

export const fakeUnit = (): FakeUnit => {
  const u: FakeUnit = {
    state: "inactive",
    failStart: false,
    failStop: false,
    hangAfterStart: false,
    calls: [],
    shape: {
      start: Effect.suspend(() => {
        u.calls.push("start")
        if (u.failStart) {
          u.state = "failed"
          return Effect.fail(err("start"))
        }
        u.state = "active"
        return u.hangAfterStart ? Effect.never : Effect.void
      }),
      stop: Effect.suspend(() => {
        u.calls.push("stop")
        if (u.failStop) return Effect.fail(err("stop"))
        u.state = "inactive"
        return Effect.void
      }),
      state: Effect.sync(() => {
        u.calls.push("is-active")
        return u.state
      })
    }
  }
  return u
}

export interface Harness {
  readonly path: string
  readonly unit: FakeUnit
  readonly consent: { value: Option.Option<boolean> }
}

export const harness = (path = dbFile()): Harness => ({ path, unit: fakeUnit(), consent: { value: Option.some(true) } })

export const CHECK_SECONDS = 30
export const MAX_HOURS = 24

export const configLayer = AgentConfigLayer.layerFrom(
  Schema.decodeUnknownSync(AgentConfigFile)({ break_glass: { max_hours: MAX_HOURS, check_interval_seconds: CHECK_SECONDS } })
)

/** The break-glass service over the harness (a fresh instance per call: a "restarted" daemon). */
export const bgLayer = (h: Harness) =>
  breakGlassLayer(Effect.sync(() => h.consent.value)).pipe(
    Layer.provide(Layer.succeed(PrivilegedBreakGlass, h.unit.shape)),
    Layer.provide(layerAt(h.path)),
    Layer.provide(configLayer),
    Layer.orDie
  )

/** The engine's services (simulated PVE, Journal, Authz, queue) plus break-glass, on one DB file. */
export const withBreakGlass = <A, E>(h: Harness, body: Effect.Effect<A, E, AgentServices | BreakGlass>) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith())
    return yield* body.pipe(Effect.provide(Layer.merge(agentLayer(sim, h.path), bgLayer(h))))
  }))

/** The same without break-glass (a process that is not the daemon: the CLI's recover --journal). */
export const withoutBreakGlass = <A, E>(h: Harness, body: Effect.Effect<A, E, AgentServices>) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith())
    return yield* body.pipe(Effect.provide(agentLayer(sim, h.path)))
  }))

export const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")
export const HOUR = 3_600_000
export const REASON = "customer ticket 4711: host unreachable through the hub"

/** A signed break-glass-enable job (the signature bound to exactly these params). */
export const enableJob = (params: Record<string, string>, opts: { readonly key?: TestKey; readonly signedParams?: Record<string, string>; readonly nowMs?: number } = {}) =>
  job(
    { op: "break-glass-enable", guest_id: null, params },
    signedOp({ op: "break-glass-enable", guest_id: null, params: opts.signedParams ?? params }, opts.key ?? operator, opts.nowMs ?? 0)
  )
