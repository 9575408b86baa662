/**
 * felhom-agent CLI entry: the command tree and the one place effects are run.
 *
 * Exit codes: 0 healthy / done; 1 unhealthy or an operation failed; 2 usage or configuration
 * error; 3 unexpected (a bug). Failures print one line, `felhom-agent: <reason>`, on stderr.
 */
import { Command, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { FileSystem } from "@effect/platform"
import { Cause, Console, Data, Duration, Effect, Either, Exit, Layer, Logger, Option, Queue, Ref, Schema } from "effect"
import { initialState, runDaemon } from "./programs/daemon/loop.js"
import { daemonLayer } from "./programs/daemon/root.js"
import { runDevHubCli } from "./sim/hub/index.js"
import { type AuthzShape, make as makeAuthz, parseSigners } from "./layers/Authz.js"
import { DatabaseLive, layerAt } from "./layers/Database.js"
import { Journal, JournalLive } from "./layers/Journal.js"
import { signatureKey } from "./programs/control/apply.js"
import { planReport, renderPlan } from "./programs/control/preview.js"
import { decodeDesiredState } from "./schema/desired.js"
import * as AgentConfigLayer from "./layers/Config.js"
import { ProxmoxWithoutClient } from "./layers/Proxmox.js"
import { PveHttpClientLive } from "./layers/PveTransport.js"
import { runDemo } from "./programs/daemon/demo.js"
import { newOp, signOp, verifyOpLocally } from "./programs/cli/op.js"
import { sshsigVerify } from "./programs/cli/sshsigVerify.js"
import { renderReport, renderTask, selftestRead, selftestTask } from "./programs/cli/selftest.js"
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
  ProxmoxWithoutClient.pipe(
    Layer.provide(PveHttpClientLive),
    Layer.provide(AgentConfigLayer.ProxmoxSettingsLive),
    Layer.provideMerge(configLayer(path, "selftest"))
  )

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

const simHub = Command.make(
  "hub",
  {
    port: Options.integer("port").pipe(Options.withDefault(8443), Options.withDescription("TCP port (0 = any free port)")),
    host: Options.text("host").pipe(Options.withDefault("127.0.0.1"), Options.withDescription("loopback address to bind")),
    desired: Options.text("desired").pipe(Options.optional, Options.withDescription("desired-state JSON to publish (reloaded when it changes)")),
    hostId: Options.text("host-id").pipe(Options.withDefault("dev-host"), Options.withDescription("the host the printed api key belongs to"))
  },
  ({ desired, host, hostId, port }) =>
    runDevHubCli({ host, port, desiredFile: Option.getOrUndefined(desired), hostId }).pipe(Effect.mapError((e) => toCliFailure(e)))
).pipe(Command.withDescription("run the dev hub on loopback: host reports, desired state, signed-job queue, dead-man's switch"))

const sim = Command.make("sim").pipe(
  Command.withDescription("simulators of the outside world (loopback only)"),
  Command.withSubcommands([simPve, simHub])
)

const daemonCmd = Command.make("daemon", { config: configOpt }, ({ config }) =>
  Effect.scoped(Effect.gen(function*() {
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
    return yield* runDaemon({ poke, state })
  })).pipe(
    Effect.provide(daemonLayer(config)),
    // journald: one structured logfmt line per event (runMain installs the pretty logger; swap it)
    Effect.provide(Logger.replace(Logger.prettyLoggerDefault, Logger.withConsoleLog(Logger.logfmtLogger))),
    Effect.mapError((e) => toCliFailure(e))
  )
).pipe(Command.withDescription("the systemd main: recover the journal, then the hub loop (SIGUSR1 polls now)"))

// ---------------------------------------------------------------------------------------------
// op: build, sign and verify operator-signed ops

const fileOpt = (name: string, description: string) => Options.text(name).pipe(Options.withDescription(description))

const readBytes = (path: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFile(path)).pipe(
    Effect.mapError((e) => new CliFailure({ code: 2, message: `cannot read ${path}: ${e.message}` }))
  )

const opNew = Command.make(
  "new",
  {
    op: Options.text("op").pipe(Options.withDescription("operation, e.g. decommission, restore-now, force-backup")),
    host: Options.text("host").pipe(Options.withDescription("target host_id")),
    guest: Options.integer("guest").pipe(Options.withSchema(VmId), Options.optional, Options.withDescription("target guest vmid")),
    params: Options.text("params").pipe(Options.withDefault("{}"), Options.withDescription("params as a JSON object")),
    expiresIn: Options.text("expires-in").pipe(Options.withDefault("1 hour"), Options.withDescription("validity, e.g. '15 minutes', '2 hours'")),
    notBefore: Options.text("not-before").pipe(Options.optional, Options.withDescription("RFC 3339 UTC start of validity")),
    keyId: Options.text("key-id").pipe(Options.withDescription("your key id (audit only)")),
    out: fileOpt("out", "write the blob here (default: stdout)").pipe(Options.optional)
  },
  (o) =>
    Effect.gen(function*() {
      const expiresIn = yield* Option.match(Duration.decodeUnknown(o.expiresIn), {
        onNone: () => Effect.fail(new CliFailure({ code: 2, message: `--expires-in: not a duration: ${o.expiresIn}` })),
        onSome: Effect.succeed
      })
      const bytes = yield* newOp({
        op: o.op,
        hostId: o.host,
        guestId: Option.getOrNull(o.guest),
        params: o.params,
        expiresIn,
        notBefore: Option.getOrUndefined(o.notBefore),
        keyId: o.keyId
      })
      if (Option.isSome(o.out)) {
        const out = o.out.value
        yield* Effect.flatMap(FileSystem.FileSystem, (fs) => fs.writeFile(out, bytes))
        yield* Console.error(`wrote ${bytes.length} bytes to ${out}; sign with: felhom-agent op sign --key KEY --in ${out}`)
      } else {
        yield* Effect.sync(() => process.stdout.write(bytes))
      }
    }).pipe(Effect.mapError((e) => toCliFailure(e)))
).pipe(Command.withDescription("build an op blob (fresh random nonce) and write its exact bytes"))

const opSign = Command.make(
  "sign",
  { key: fileOpt("key", "your ssh key (private key, or the .pub of a key held by ssh-agent or a FIDO token)"), file: fileOpt("in", "the op blob to sign") },
  ({ file, key }) =>
    signOp({ keyFile: key, file }).pipe(
      Effect.flatMap((sig) => Console.error(`signature written to ${sig}`)),
      Effect.mapError((e) => toCliFailure(e))
    )
).pipe(Command.withDescription("sign an op blob with ssh-keygen -Y sign -n felhom-op-v1"))

const readSignerLines = (path: string) =>
  Effect.map(readBytes(path), (b) =>
    new TextDecoder().decode(b).split("\n").map((l) => l.trim()).filter((l) => l.length > 0 && !l.startsWith("#")))

const opVerify = Command.make(
  "verify",
  {
    blob: fileOpt("blob", "the op blob"),
    signature: fileOpt("signature", "its armored SSHSIG signature (default: BLOB.sig)").pipe(Options.optional),
    signers: fileOpt("signers", "signer lines (role=...,key-id=... <key>), one per line; default: authz.signers from --config").pipe(Options.optional),
    hostId: Options.text("host-id").pipe(Options.optional, Options.withDescription("this host's id (default: host_id from --config)")),
    config: configOpt,
    json: jsonOpt
  },
  (o) =>
    Effect.gen(function*() {
      const needConfig = Option.isNone(o.signers) || Option.isNone(o.hostId)
      const cfg = needConfig ? Option.some(yield* AgentConfigLayer.loadConfig({ path: o.config, mode: "none" })) : Option.none()
      const fromConfig = Option.map(cfg, (c) => c.file)
      const signers = Option.isSome(o.signers)
        ? yield* readSignerLines(o.signers.value)
        : Option.getOrElse(Option.flatMap(fromConfig, (f) => Option.fromNullable(f.authz?.signers)), () => [] as ReadonlyArray<string>)
      const hostId = Option.getOrElse(o.hostId, () => Option.getOrElse(Option.flatMap(fromConfig, (f) => Option.fromNullable(f.host_id)), () => ""))
      if (hostId === "") return yield* new CliFailure({ code: 2, message: "no host id: pass --host-id or set host_id in the config" })
      if (signers.length === 0) return yield* new CliFailure({ code: 2, message: "no signers: pass --signers FILE or set authz.signers in the config" })
      const verdict = yield* verifyOpLocally({
        blob: yield* readBytes(o.blob),
        signature: yield* readBytes(Option.getOrElse(o.signature, () => `${o.blob}.sig`)),
        signers,
        hostId,
        clockSkewSeconds: Option.getOrElse(Option.flatMap(fromConfig, (f) => Option.fromNullable(f.authz?.clock_skew_seconds)), () => 120)
      })
      yield* Console.log(o.json ? JSON.stringify(verdict, null, 2) : verdict.valid ? verdict.message : `rejected at stage ${verdict.stage}: ${verdict.error}: ${verdict.message}`)
      if (!verdict.valid) return yield* new CliFailure({ code: 1, message: `rejected (${verdict.error} at ${verdict.stage})` })
    }).pipe(Effect.mapError((e) => toCliFailure(e)))
).pipe(Command.withDescription("verify an op blob + signature against an allow-list; prints the stage that rejected it"))

const op = Command.make("op").pipe(
  Command.withDescription("operator-signed operations: build, sign, verify"),
  Command.withSubcommands([opNew, opSign, opVerify])
)

const readStdin = Effect.async<Uint8Array>((resume) => {
  const chunks: Array<Buffer> = []
  process.stdin.on("data", (c: Buffer) => chunks.push(c))
  process.stdin.on("end", () => resume(Effect.succeed(Buffer.concat(chunks))))
  process.stdin.on("error", () => resume(Effect.succeed(Buffer.concat(chunks))))
})

const sshsigVerifyCmd = Command.make(
  "verify",
  {
    namespace: Options.text("namespace").pipe(Options.withDescription("the namespace the signature must carry")),
    key: fileOpt("key", "the signer's public key (.pub line)"),
    signature: fileOpt("signature", "the armored signature")
  },
  ({ key, namespace, signature }) =>
    Effect.gen(function*() {
      const message = yield* readStdin
      const r = yield* sshsigVerify({ namespace, keyFile: key, signatureFile: signature, message })
      if (r.valid) {
        yield* Console.log(`Good "${namespace}" signature with ${r.keyType ?? "?"} key ${r.fingerprint ?? "?"}`)
      } else {
        return yield* new CliFailure({ code: 1, message: `Could not verify signature: ${r.reason ?? "invalid"}` })
      }
    })
).pipe(Command.withDescription("check one SSHSIG signature of stdin against a key (like ssh-keygen -Y check-novalidate)"))

const sshsig = Command.make("sshsig").pipe(
  Command.withDescription("low-level SSHSIG diagnostics"),
  Command.withSubcommands([sshsigVerifyCmd])
)

// ---------------------------------------------------------------------------------------------
// plan, journal, audit

const stateLayer = (path: Option.Option<string>, mode: ConfigMode) =>
  JournalLive.pipe(Layer.provide(DatabaseLive), Layer.provideMerge(configLayer(path, mode)))

const planCmd = Command.make(
  "plan",
  {
    desired: fileOpt("desired", "desired state JSON (the hub's format)"),
    signed: fileOpt("signed", "a signed op blob to check against its action (BLOB.sig beside it); repeatable").pipe(Options.repeated),
    config: configOpt,
    json: jsonOpt
  },
  (o) =>
    Effect.scoped(Effect.gen(function*() {
      const raw = new TextDecoder().decode(yield* readBytes(o.desired))
      const desired = yield* Effect.try({ try: () => JSON.parse(raw) as unknown, catch: () => new CliFailure({ code: 2, message: `${o.desired} is not JSON` }) }).pipe(
        Effect.flatMap((u) => Either.match(decodeDesiredState(u), {
          onLeft: (m) => Effect.fail(new CliFailure({ code: 2, message: `${o.desired}: ${m}` })),
          onRight: Effect.succeed
        }))
      )
      const { file } = yield* AgentConfigLayer.AgentConfig
      const offered = new Map<string, { blob: Uint8Array; signature: Uint8Array }>()
      for (const path of o.signed) {
        const blob = yield* readBytes(path)
        const head = yield* Effect.try({
          try: () => JSON.parse(new TextDecoder().decode(blob)) as { op?: unknown; guest_id?: unknown },
          catch: () => new CliFailure({ code: 2, message: `${path} is not an op blob` })
        })
        const vmid = typeof head.guest_id === "number" ? VmId.make(head.guest_id) : null
        offered.set(signatureKey(String(head.op), vmid), { blob, signature: yield* readBytes(`${path}.sig`) })
      }
      let authz = Option.none<AuthzShape>()
      if (offered.size > 0) {
        if (file.host_id === undefined || file.authz === undefined) {
          return yield* new CliFailure({ code: 2, message: "--signed needs host_id and authz.signers in the config" })
        }
        const signers = yield* parseSigners(file.authz.signers)
        const memory = yield* Layer.build(layerAt(":memory:"))
        authz = Option.some(yield* makeAuthz({ hostId: file.host_id, signers, clockSkewSeconds: file.authz.clock_skew_seconds }).pipe(Effect.provide(memory)))
      }
      const report = yield* planReport(desired, offered, authz)
      yield* Console.log(o.json ? JSON.stringify(report, null, 2) : renderPlan(report))
    })).pipe(
      Effect.provide(
        Layer.mergeAll(
          ProxmoxWithoutClient.pipe(Layer.provide(PveHttpClientLive), Layer.provide(AgentConfigLayer.ProxmoxSettingsLive)),
          JournalLive.pipe(Layer.provide(DatabaseLive))
        ).pipe(
          Layer.provideMerge(configLayer(o.config, "selftest"))
        )
      ),
      Effect.mapError((e) => toCliFailure(e))
    )
).pipe(Command.withDescription("what reconcile would do now against the node, with each action's gate verdict"))

const journalList = Command.make(
  "list",
  { limit: Options.integer("limit").pipe(Options.withDefault(20)), config: configOpt, json: jsonOpt },
  ({ config, json, limit }) =>
    Effect.gen(function*() {
      const ops = yield* Effect.flatMap(Journal, (j) => j.list({ limit }))
      if (json) return yield* Console.log(JSON.stringify(ops, null, 2))
      for (const op of ops) {
        yield* Console.log(
          `${new Date(op.createdAtMs).toISOString()} ${op.status.padEnd(11)} ${op.kind.padEnd(14)} ${op.vmid ?? "-"} ${op.id}` +
            (op.detail === null ? "" : `  ${op.detail}`)
        )
      }
    }).pipe(Effect.provide(stateLayer(config, "none")), Effect.mapError((e) => toCliFailure(e)))
).pipe(Command.withDescription("recent journaled operations, newest first"))

const journalCmd = Command.make("journal").pipe(
  Command.withDescription("the operation journal"),
  Command.withSubcommands([journalList])
)

const auditVerify = Command.make("verify", { config: configOpt, json: jsonOpt }, ({ config, json }) =>
  Effect.gen(function*() {
    const verdict = yield* Effect.flatMap(Journal, (j) => j.verifyAudit)
    yield* Console.log(
      json ? JSON.stringify(verdict) : verdict.ok ? `audit log intact: ${verdict.entries} entries` : `audit log BROKEN at entry ${verdict.brokenAtSeq}: ${verdict.reason}`
    )
    if (!verdict.ok) return yield* new CliFailure({ code: 1, message: `audit chain broken at entry ${verdict.brokenAtSeq}` })
  }).pipe(Effect.provide(stateLayer(config, "none")), Effect.mapError((e) => toCliFailure(e)))
).pipe(Command.withDescription("recompute the audit log's hash chain; exit 1 if any entry was edited or deleted"))

const auditCmd = Command.make("audit").pipe(
  Command.withDescription("the tamper-evident audit log"),
  Command.withSubcommands([auditVerify])
)

const demo = Command.make("demo", {}, () => runDemo.pipe(Effect.mapError((e) => toCliFailure(e)))).pipe(
  Command.withDescription("PVE simulator + dev hub + the daemon in one process: the control loop end to end")
)

const root = Command.make("felhom-agent").pipe(
  Command.withDescription("felhom host agent for Proxmox VE"),
  Command.withSubcommands([version, daemonCmd, selftest, planCmd, journalCmd, auditCmd, op, sshsig, sim, demo])
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
