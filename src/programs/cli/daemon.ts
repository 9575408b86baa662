/** `daemon`: the systemd main. Recovers the journal, then runs the hub loop until SIGTERM. */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { Effect, Logger, type Option, Queue, Ref } from "effect"
import { initialState, runDaemon } from "../daemon/loop.js"
import { startProtection } from "../daemon/protection.js"
import { startStatusEndpoint } from "../daemon/status.js"
import { reportNowFromQueue } from "../protection/status.js"
import { daemonLayer } from "../daemon/root.js"
import { controllersLayer, daemonGates, startControllers } from "../daemon/controllers.js"
import { AgentConfig } from "../../layers/Config.js"
import { toCliFailure } from "./failure.js"
import { holdStateLock } from "./stateLock.js"
import { CloudflaredLive } from "../cloudflared/manager.js"
import { breakGlassDaemonLayer, startBreakGlass } from "../breakglass/daemon.js"

export const daemon = (o: { readonly config: Option.Option<string> }) =>
  Effect.scoped(Effect.gen(function*() {
    // one mutator per state directory, held for the daemon's life: before recovery, so an
    // operator's provision or recover never runs beside it (stateLock.ts)
    yield* holdStateLock("daemon")
    const poke = yield* Queue.sliding<void>(1)
    const state = yield* Ref.make(initialState)
    // SIGUSR1: poll the hub now instead of waiting for the interval
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        const onUsr1 = () => void Queue.unsafeOffer(poke, undefined)
        process.on("SIGUSR1", onUsr1)
        return onUsr1
      }),
      (onUsr1) => Effect.sync(() => void process.off("SIGUSR1", onUsr1))
    )
    // the storage watchdog's out-of-cycle reports
    const reportNow = yield* Queue.sliding<void>(1)
    const { file } = yield* AgentConfig
    if (file.local_api === undefined) {
      return yield* runDaemon({ poke, state, reportNow, alongside: Effect.zipRight(startStatusEndpoint(state), Effect.zipRight(startProtection(state), startBreakGlass)) }).pipe(
        Effect.provide(reportNowFromQueue(reportNow)),
        // break-glass (issue 14): before recovery, which may have to stop its unit
        Effect.provide(breakGlassDaemonLayer(state))
      )
    }
    // the local API and the controllers (issue 11): services for recovery, reconcile and jobs,
    // fibers once recovered
    return yield* runDaemon({ poke, state, reportNow, alongside: Effect.zipRight(startStatusEndpoint(state), Effect.zipRight(startProtection(state), Effect.zipRight(startControllers, startBreakGlass))) }).pipe(
      Effect.provide(controllersLayer(daemonGates(state))),
      Effect.provide(reportNowFromQueue(reportNow)),
      Effect.provide(breakGlassDaemonLayer(state))
    )
  })).pipe(
    // the cloudflared manager (issue 14): a fiber for the daemon's life when cloudflared.enabled
    // and a token is configured; its view feeds the host report
    Effect.provide(CloudflaredLive),
    Effect.provide(daemonLayer(o.config)),
    // journald: one structured logfmt line per event (runMain installs the pretty logger; swap it)
    Effect.provide(Logger.replace(Logger.prettyLoggerDefault, Logger.withConsoleLog(Logger.logfmtLogger))),
    Effect.mapError((e) => toCliFailure(e)),
    Effect.provide(NodeCommandExecutor.layer)
  )
