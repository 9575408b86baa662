/** `sim pve`, `sim hub`: the simulators of the outside world, on loopback. */
import { Effect, Option } from "effect"
import { runDevHubCli } from "../../sim/hub/index.js"
import { runSimPveCli } from "../../sim/pve/index.js"
import { toCliFailure } from "./failure.js"
import { port } from "./input.js"

export const simPve = (o: { readonly host: string; readonly port: number; readonly seed: Option.Option<string> }) =>
  port(o.port).pipe(
    Effect.flatMap((p) =>
      runSimPveCli({ host: o.host, port: p, seedPath: Option.getOrUndefined(o.seed) }).pipe(Effect.mapError(toCliFailure))
    )
  )

export const simHub = (o: {
  readonly host: string
  readonly port: number
  readonly desired: Option.Option<string>
  readonly hostId: string
}) =>
  port(o.port).pipe(
    Effect.flatMap((p) =>
      runDevHubCli({ host: o.host, port: p, desiredFile: Option.getOrUndefined(o.desired), hostId: o.hostId }).pipe(
        Effect.mapError((e) => toCliFailure(e))
      )
    )
  )
