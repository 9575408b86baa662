/**
 * felhom-agent CLI entry: the command tree and the one place effects are run.
 *
 * Exit codes: 0 healthy / done; 1 unhealthy or an operation failed; 2 usage or configuration
 * error; 3 unexpected (a bug). Failures print one line, `felhom-agent: <reason>`, on stderr.
 */
import { Command, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, Console, Data, Effect, Exit, Layer, Option, Schema } from "effect"
import * as AgentConfigLayer from "./layers/Config.js"
import { ProxmoxWithoutClient } from "./layers/Proxmox.js"
import { PveHttpClientLive } from "./layers/PveTransport.js"
import { runDemo } from "./programs/demo.js"
import { renderReport, renderTask, selftestRead, selftestTask } from "./programs/selftest.js"
import type { ConfigMode } from "./schema/config.js"
import { VmId } from "./schema/ids.js"
import { runSimPveCli } from "./sim/pve/index.js"
import { VERSION } from "./version.js"

/** A failure the CLI reports as one line with a meaningful exit code. */
class CliFailure extends Data.TaggedError("CliFailure")<{ readonly code: number; readonly message: string }> {}

const toCliFailure = (e: { readonly _tag: string; readonly message: string }): CliFailure =>
  e._tag === "CliFailure"
    ? (e as CliFailure)
    : new CliFailure({ code: e._tag === "ConfigError" ? 2 : 1, message: `${e._tag}: ${e.message}` })

const configOpt = Options.text("config").pipe(
  Options.withAlias("c"),
  Options.withDescription(`config file (default ${AgentConfigLayer.DEFAULT_CONFIG_PATH}, or $FELHOM_AGENT_CONFIG)`),
  Options.optional
)
const jsonOpt = Options.boolean("json").pipe(Options.withDescription("machine-readable JSON output"))
const printConfigOpt = Options.boolean("print-config").pipe(
  Options.withDescription("print the effective configuration (secrets redacted) and exit")
)

const configLayer = (path: Option.Option<string>, mode: ConfigMode) => AgentConfigLayer.layer({ path, mode })

const proxmoxLayer = (path: Option.Option<string>) =>
  ProxmoxWithoutClient.pipe(Layer.provide(PveHttpClientLive), Layer.provideMerge(configLayer(path, "selftest")))

const printConfig = (path: Option.Option<string>, mode: ConfigMode) =>
  AgentConfigLayer.loadConfig({ path, mode }).pipe(
    Effect.flatMap((c) => Console.log(AgentConfigLayer.renderRedacted(c.file)))
  )

// ---------------------------------------------------------------------------------------------

const version = Command.make("version", { json: jsonOpt }, ({ json }) =>
  Console.log(json ? JSON.stringify({ name: "felhom-agent", version: VERSION }) : `felhom-agent ${VERSION}`)
).pipe(Command.withDescription("print the agent version"))

const selftestTaskCmd = Command.make(
  "task",
  {
    config: configOpt,
    json: jsonOpt,
    vmid: Options.integer("vmid").pipe(Options.withSchema(VmId), Options.withDescription("guest to exercise")),
    yes: Options.boolean("yes").pipe(
      Options.withDescription("confirm: snapshots, rolls back (restarting a running guest) and deletes the snapshot")
    )
  },
  ({ config, json, vmid, yes }) =>
    Effect.gen(function*() {
      if (!yes) {
        return yield* new CliFailure({
          code: 2,
          message: `selftest task rolls guest ${vmid} back to a fresh snapshot (a running guest restarts); pass --yes to confirm`
        })
      }
      const report = yield* selftestTask(vmid)
      yield* Console.log(json ? JSON.stringify(report, null, 2) : renderTask(report))
      if (!report.ok) {
        const failed = report.steps.find((s) => !s.ok)
        return yield* new CliFailure({ code: 1, message: `selftest task failed at ${failed?.step ?? "?"}: ${failed?.error ?? ""}` })
      }
    }).pipe(Effect.provide(proxmoxLayer(config)), Effect.mapError(toCliFailure))
).pipe(Command.withDescription("exercise the task path on one guest: snapshot → rollback → delete snapshot"))

const selftestReadHandler = (config: Option.Option<string>, json: boolean) =>
  Effect.gen(function*() {
    const report = yield* selftestRead
    yield* Console.log(json ? JSON.stringify(report, null, 2) : renderReport(report))
    if (!report.healthy) {
      return yield* new CliFailure({ code: 1, message: `unhealthy: ${report.problems[0] ?? "unknown problem"}` })
    }
  }).pipe(Effect.provide(proxmoxLayer(config)), Effect.mapError(toCliFailure))

const selftestReadCmd = Command.make("read", { config: configOpt, json: jsonOpt }, ({ config, json }) =>
  selftestReadHandler(config, json)
).pipe(Command.withDescription("read-only health report (the default)"))

const selftest = Command.make(
  "selftest",
  { config: configOpt, json: jsonOpt, printConfig: printConfigOpt },
  ({ config, json, printConfig: print }) =>
    print ? printConfig(config, "selftest").pipe(Effect.mapError(toCliFailure)) : selftestReadHandler(config, json)
).pipe(
  Command.withDescription("read-only health report: PVE version, nodes, node status, guests with spec, storage"),
  Command.withSubcommands([selftestReadCmd, selftestTaskCmd])
)

const simPve = Command.make(
  "pve",
  {
    port: Options.integer("port").pipe(Options.withDefault(8006), Options.withDescription("TCP port (0 = any free port)")),
    host: Options.text("host").pipe(Options.withDefault("127.0.0.1"), Options.withDescription("loopback address to bind")),
    seed: Options.text("seed").pipe(Options.optional, Options.withDescription("state seed JSON (default: configs/sim/pve.json)"))
  },
  ({ host, port, seed }) =>
    runSimPveCli({ host, port, seedPath: Option.getOrUndefined(seed) }).pipe(Effect.mapError(toCliFailure))
).pipe(Command.withDescription("run the PVE simulator on loopback and print the token and TLS fingerprint to use"))

const sim = Command.make("sim").pipe(
  Command.withDescription("simulators of the outside world (loopback only)"),
  Command.withSubcommands([simPve])
)

const demo = Command.make("demo", {}, () => runDemo.pipe(Effect.mapError(toCliFailure))).pipe(
  Command.withDescription("start the PVE simulator in-process and run selftest read + task against it")
)

const root = Command.make("felhom-agent").pipe(
  Command.withDescription("felhom host agent for Proxmox VE"),
  Command.withSubcommands([version, selftest, sim, demo])
)

const cli = Command.run(root, { name: "felhom-agent", version: VERSION })

const exitCodeOf = (exit: Exit.Exit<unknown, unknown>): number => {
  if (Exit.isSuccess(exit)) return 0
  if (Cause.isInterruptedOnly(exit.cause)) return 0
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    const f = failure.value
    if (Schema.is(Schema.Struct({ _tag: Schema.Literal("CliFailure"), code: Schema.Number }))(f)) return f.code
    return 2 // @effect/cli validation errors: usage
  }
  return 3
}

cli(process.argv).pipe(
  Effect.tapErrorCause((cause) => {
    const failure = Cause.failureOption(cause)
    if (Option.isSome(failure) && failure.value instanceof CliFailure) {
      return Console.error(`felhom-agent: ${failure.value.message}`)
    }
    if (Option.isSome(failure)) return Effect.void // @effect/cli already printed the usage error
    return Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(`felhom-agent: unexpected error\n${Cause.pretty(cause)}`)
  }),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({
    disableErrorReporting: true,
    teardown: (exit, onExit) => onExit(exitCodeOf(exit))
  })
)
