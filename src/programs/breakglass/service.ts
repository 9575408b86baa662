/**
 * The break-glass service (issue 14, SPEC §15): what enabling, ending and the expiry fiber run on —
 * the unit's three systemctl commands (PrivilegedBreakGlass), the session store, the customer's
 * consent as the daemon last fetched it, the config's bounds, and one lock so that an enable, an
 * end and an expiry check never interleave.
 *
 * A tag of its own so that the job runner and journal recovery find it with
 * `Effect.serviceOption`: a process without it (the CLI's `recover --journal`, the demo) refuses a
 * break-glass job before admission (its nonce unspent) and leaves a break-glass op in flight for
 * the daemon, instead of requiring Privileged everywhere.
 */
import { SqlClient } from "@effect/sql"
import { Context, Data, Effect, Layer, type Option } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { PrivilegedBreakGlass, type PrivilegedBreakGlassShape } from "../../layers/Privileged.js"
import { type BreakGlassStoreShape, makeStore } from "./store.js"

export interface BreakGlassShape {
  /** config break_glass.max_hours: the longest a signed enable may keep access open. */
  readonly maxHours: number
  /** config break_glass.check_interval_seconds, in ms. */
  readonly checkIntervalMs: number
  /**
   * `break_glass_consent` of the newest desired state: None while none is known (after a restart,
   * before the first fetch). An enable needs Some(true); an open session ends on Some(false).
   */
  readonly consent: Effect.Effect<Option.Option<boolean>>
  readonly unit: PrivilegedBreakGlassShape
  readonly store: BreakGlassStoreShape
  /** Runs `eff` alone among enables, ends and expiry checks (not across processes: the schema's one-open index is the backstop). */
  readonly exclusive: <A, E, R>(eff: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

export class BreakGlass extends Context.Tag("felhom/BreakGlass")<BreakGlass, BreakGlassShape>() {}

/** A signed enable refused by break-glass's own rules (reported as the job's result, audited). */
export class BreakGlassRefused extends Data.TaggedError("BreakGlassRefused")<{
  readonly reason: "no_consent" | "until_past" | "too_long" | "session_active" | "bad_params"
  readonly message: string
}> {}

/** systemctl failed on the unit (start, stop, is-active); the message names the step, never a secret. */
export class BreakGlassUnitFailed extends Data.TaggedError("BreakGlassUnitFailed")<{ readonly message: string }> {}

/** The service over the config's break_glass block; `consent` comes from the daemon's state. */
export const breakGlassLayer = (
  consent: Effect.Effect<Option.Option<boolean>>
): Layer.Layer<BreakGlass, never, PrivilegedBreakGlass | SqlClient.SqlClient | AgentConfig> =>
  Layer.effect(
    BreakGlass,
    Effect.gen(function*() {
      const { file } = yield* AgentConfig
      const unit = yield* PrivilegedBreakGlass
      const store = yield* makeStore
      const lock = yield* Effect.makeSemaphore(1)
      return {
        maxHours: file.break_glass.max_hours,
        checkIntervalMs: file.break_glass.check_interval_seconds * 1000,
        consent,
        unit,
        store,
        exclusive: (eff) => lock.withPermits(1)(eff)
      } satisfies BreakGlassShape
    })
  )
