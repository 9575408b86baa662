/** `sim pve`, `sim hub`, `sim stack`: the simulators of the outside world, on loopback. */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { Effect, Option } from "effect"
import { runDevHubCli } from "../../sim/hub/index.js"
import { runSimPveCli } from "../../sim/pve/index.js"
import { toCliFailure, usage } from "./failure.js"
import { intInRange, port } from "./input.js"

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

/** `sim stack`: PVE simulator, dev hub, the daemon with its local API, and simulated controllers. */
export const simStack = (o: {
  readonly info: Option.Option<string>
  readonly guests: number
  readonly localApiPort: number
  readonly pvePort: number
  readonly hubPort: number
}) =>
  Effect.all([
    intInRange("--guests", o.guests, 1, 20),
    intInRange("--local-api-port", o.localApiPort, 0, 65_535),
    intInRange("--pve-port", o.pvePort, 0, 65_535),
    intInRange("--hub-port", o.hubPort, 0, 65_535)
  ]).pipe(
    Effect.flatMap(([guests, localApiPort, pvePort, hubPort]) =>
      Effect.flatMap(Effect.promise(() => import("../daemon/stack.js")), (m) =>
        m.runStack({ guests, localApiPort, pvePort, hubPort, infoFile: Option.getOrUndefined(o.info) }).pipe(
          Effect.mapError((e) => (e._tag === "StackInfoRefused" ? usage(e.message) : toCliFailure(e)))
        ))
    ),
    Effect.provide(NodeCommandExecutor.layer)
  )
