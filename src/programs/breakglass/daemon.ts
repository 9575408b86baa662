/**
 * Break-glass in the daemon (issue 14): the service over the daemon's state (the consent of the
 * desired state it last fetched) and the live unit control, provided before journal recovery so a
 * `break-glass` op interrupted by a crash is recovered (unit stopped) at start; the expiry fiber is
 * forked once recovery has run, beside data protection.
 */
import { Effect, Layer, Option, type Ref } from "effect"
import { PrivilegedBreakGlassLive } from "../../layers/Privileged.js"
import type { DaemonState } from "../daemon/loop.js"
import { breakGlassExpiry } from "./expiry.js"
import { breakGlassLayer } from "./service.js"

/** Consent as the daemon holds it: None until a desired state was fetched since the start. */
export const consentOf = (state: Ref.Ref<DaemonState>) =>
  Effect.map(state.get, (s) => Option.map(s.desired, (d) => d.break_glass_consent === true))

export const breakGlassDaemonLayer = (state: Ref.Ref<DaemonState>) =>
  breakGlassLayer(consentOf(state)).pipe(Layer.provide(PrivilegedBreakGlassLive))

/** Forks the expiry fiber into the daemon's scope. */
export const startBreakGlass = Effect.asVoid(Effect.forkScoped(breakGlassExpiry))
