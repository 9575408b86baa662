/**
 * felhom-agent CLI entry: the command tree and the one place effects are run. Nothing else.
 *
 * Each command's options, arguments and description live here; its implementation lives in
 * src/programs/cli/<group>.ts and is loaded with a dynamic import() only when that command runs,
 * so `version` or `--help` never evaluates undici, SQL, the simulators or the daemon (the bundle
 * keeps each lazily imported module behind an init wrapper; SPEC §17).
 *
 * Exit codes: 0 healthy / done; 1 unhealthy or an operation failed; 2 usage or configuration
 * error; 3 unexpected (a bug); 4 refused until an operator signs it (recover). Failures print
 * one line, `felhom-agent: <reason>`, on stderr.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeTerminal from "@effect/platform-node/NodeTerminal"
import { Cause, Console, Effect, Exit, Layer, Option } from "effect"
import { CliFailure } from "./programs/cli/failure.js"
import { VmId } from "./schema/ids.js"
import { VERSION } from "./version.js"

/** Same as AgentConfig's DEFAULT_CONFIG_PATH (test/cli.test.ts checks), without loading the config layer. */
const DEFAULT_CONFIG_PATH = "/etc/felhom-agent/agent.json"

/** Runs a command's implementation from a lazily imported module. */
const lazy = <M, A, E, R>(load: () => Promise<M>, run: (m: M) => Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.promise(load), run)

const configOpt = Options.text("config").pipe(
  Options.withAlias("c"),
  Options.withDescription(`config file (default ${DEFAULT_CONFIG_PATH}, or $FELHOM_AGENT_CONFIG)`),
  Options.optional
)
const jsonOpt = Options.boolean("json").pipe(Options.withDescription("machine-readable JSON output"))
const fileOpt = (name: string, description: string) => Options.text(name).pipe(Options.withDescription(description))
const portOpt = (defaultPort: number) =>
  Options.integer("port").pipe(Options.withDefault(defaultPort), Options.withDescription("TCP port, 0 to 65535 (0 = any free port)"))
const hostOpt = Options.text("host").pipe(Options.withDefault("127.0.0.1"), Options.withDescription("loopback address to bind"))

// ---------------------------------------------------------------------------------------------
// version, selftest

const version = Command.make("version", { json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/version.js"), (m) => m.version(o))
).pipe(Command.withDescription("print the agent version"))

const selftestTask = Command.make(
  "task",
  {
    config: configOpt,
    json: jsonOpt,
    vmid: Options.integer("vmid").pipe(Options.withSchema(VmId), Options.withDescription("guest to exercise")),
    yes: Options.boolean("yes").pipe(
      Options.withDescription("confirm: snapshots, rolls back (restarting a running guest) and deletes the snapshot")
    )
  },
  (o) => lazy(() => import("./programs/cli/selftest.js"), (m) => m.selftestTaskCommand(o))
).pipe(Command.withDescription("exercise the task path on one guest: snapshot → rollback → delete snapshot"))

const selftestRead = Command.make("read", { config: configOpt, json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/selftest.js"), (m) => m.selftestReadCommand(o))
).pipe(Command.withDescription("read-only health report (the default)"))

const selftestHub = Command.make("hub", { config: configOpt, json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/selftest.js"), (m) => m.selftestHubCommand(o))
).pipe(Command.withDescription(
  "reach the hub over the configured transport, authenticate, read the envelope (never a heartbeat); exit 1 naming tls, auth, clock_skew, unreachable or bad_answer"
))

const selftest = Command.make(
  "selftest",
  {
    config: configOpt,
    json: jsonOpt,
    printConfig: Options.boolean("print-config").pipe(
      Options.withDescription("print the effective configuration (secrets redacted) and exit")
    )
  },
  (o) => lazy(() => import("./programs/cli/selftest.js"), (m) => m.selftestCommand(o))
).pipe(
  Command.withDescription("read-only health report: PVE version, nodes, node status, guests with spec, storage"),
  Command.withSubcommands([selftestRead, selftestTask, selftestHub])
)

const status = Command.make("status", { config: configOpt, json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/status.js"), (m) => m.statusCommand(o))
).pipe(Command.withDescription(
  "what to ask first: daemon health (its loopback /status), hub contact, pending signatures, in-flight and needs_operator ops, lost guests, backups and restore tests, storage targets, break-glass; reads the state DB read-only; exit 0 all well, 1 findings, 2 usage"
))

// ---------------------------------------------------------------------------------------------
// sim, daemon, demo

const simPve = Command.make(
  "pve",
  {
    port: portOpt(8006),
    host: hostOpt,
    seed: Options.text("seed").pipe(Options.optional, Options.withDescription("state seed JSON (default: configs/sim/pve.json)"))
  },
  (o) => lazy(() => import("./programs/cli/sim.js"), (m) => m.simPve(o))
).pipe(Command.withDescription("run the PVE simulator on loopback and print the token and TLS fingerprint to use"))

const simHub = Command.make(
  "hub",
  {
    port: portOpt(8443),
    host: hostOpt,
    desired: Options.text("desired").pipe(Options.optional, Options.withDescription("desired-state JSON to publish (reloaded when it changes)")),
    hostId: Options.text("host-id").pipe(Options.withDefault("dev-host"), Options.withDescription("the host the printed api key belongs to"))
  },
  (o) => lazy(() => import("./programs/cli/sim.js"), (m) => m.simHub(o))
).pipe(Command.withDescription("run the dev hub on loopback: host reports, desired state, signed-job queue, dead-man's switch"))

const simStack = Command.make(
  "stack",
  {
    info: fileOpt("info", "write every endpoint, the pins and (dev only) each guest's token here as JSON (0600)").pipe(Options.optional),
    guests: Options.integer("guests").pipe(Options.withDefault(2), Options.withDescription("guests with a controller, 1 to 20 (vmids 200..)")),
    localApiPort: Options.integer("local-api-port").pipe(Options.withDefault(0), Options.withDescription("the local API's port (0 = any free port)")),
    pvePort: Options.integer("pve-port").pipe(Options.withDefault(0), Options.withDescription("the PVE simulator's port (0 = any free port)")),
    hubPort: Options.integer("hub-port").pipe(Options.withDefault(0), Options.withDescription("the dev hub's port (0 = any free port)"))
  },
  (o) => lazy(() => import("./programs/cli/sim.js"), (m) => m.simStack(o))
).pipe(Command.withDescription("the dev environment on loopback: PVE simulator, dev hub, the daemon with its local API, simulated controllers"))

const sim = Command.make("sim").pipe(
  Command.withDescription("simulators of the outside world (loopback only)"),
  Command.withSubcommands([simPve, simHub, simStack])
)

const daemon = Command.make("daemon", { config: configOpt }, (o) =>
  lazy(() => import("./programs/cli/daemon.js"), (m) => m.daemon(o))
).pipe(Command.withDescription("the systemd main: recover the journal, then the hub loop (SIGUSR1 polls now)"))

const demo = Command.make("demo", {}, () => lazy(() => import("./programs/cli/demo.js"), (m) => m.demo())).pipe(
  Command.withDescription("PVE simulator + dev hub + the daemon in one process: the control loop end to end")
)

// ---------------------------------------------------------------------------------------------
// op: build, sign and verify operator-signed ops; sshsig diagnostics

const opNew = Command.make(
  "new",
  {
    op: Options.text("op").pipe(Options.withDescription("operation, e.g. decommission, restore-now, force-backup")),
    host: Options.text("host").pipe(Options.withDescription("target host_id")),
    guest: Options.integer("guest").pipe(Options.withSchema(VmId), Options.optional, Options.withDescription("target guest vmid")),
    params: Options.text("params").pipe(Options.withDefault("{}"), Options.withDescription("params as a JSON object")),
    expiresIn: Options.text("expires-in").pipe(
      Options.withDefault("1 hour"),
      Options.withDescription("validity from not_before, e.g. '15 minutes', '2 hours'; at most 7 days")
    ),
    notBefore: Options.text("not-before").pipe(
      Options.optional,
      Options.withDescription("RFC 3339 UTC start of validity (default: now)")
    ),
    keyId: Options.text("key-id").pipe(Options.withDescription("your key id (audit only)")),
    out: fileOpt("out", "write the blob here (default: stdout)").pipe(Options.optional)
  },
  (o) => lazy(() => import("./programs/cli/op.js"), (m) => m.opNewCommand(o))
).pipe(Command.withDescription("build an op blob (fresh random nonce) and write its exact bytes"))

const opSign = Command.make(
  "sign",
  {
    key: fileOpt("key", "your ssh key (private key, or the .pub of a key held by ssh-agent or a FIDO token)"),
    file: fileOpt("in", "the op blob to sign")
  },
  (o) => lazy(() => import("./programs/cli/op.js"), (m) => m.opSignCommand(o))
).pipe(Command.withDescription("sign an op blob with ssh-keygen -Y sign -n felhom-op-v1"))

const opVerify = Command.make(
  "verify",
  {
    blob: fileOpt("blob", "the op blob"),
    signature: fileOpt("signature", "its armored SSHSIG signature (default: BLOB.sig)").pipe(Options.optional),
    signers: fileOpt("signers", "signer lines (role=...,key-id=... <key>), one per line; default: authz.signers from --config").pipe(
      Options.optional
    ),
    hostId: Options.text("host-id").pipe(Options.optional, Options.withDescription("this host's id (default: host_id from --config)")),
    config: configOpt,
    json: jsonOpt
  },
  (o) => lazy(() => import("./programs/cli/op.js"), (m) => m.opVerifyCommand(o))
).pipe(Command.withDescription("verify an op blob + signature against an allow-list; prints the stage that rejected it"))

const op = Command.make("op").pipe(
  Command.withDescription("operator-signed operations: build, sign, verify"),
  Command.withSubcommands([opNew, opSign, opVerify])
)

const sshsigVerify = Command.make(
  "verify",
  {
    namespace: Options.text("namespace").pipe(Options.withDescription("the namespace the signature must carry")),
    key: fileOpt("key", "the signer's public key (.pub line)"),
    signature: fileOpt("signature", "the armored signature")
  },
  (o) => lazy(() => import("./programs/cli/sshsig.js"), (m) => m.sshsigVerifyCommand(o))
).pipe(Command.withDescription("check one SSHSIG signature of stdin against a key (like ssh-keygen -Y check-novalidate)"))

const sshsig = Command.make("sshsig").pipe(
  Command.withDescription("low-level SSHSIG diagnostics"),
  Command.withSubcommands([sshsigVerify])
)

// ---------------------------------------------------------------------------------------------
// escrow: PBS key files and the recovery code (issue 13)

const escrowInspect = Command.make(
  "inspect",
  {
    json: jsonOpt,
    file: Args.text({ name: "FILE" }).pipe(Args.withDescription("a PBS key file (plain, scrypt or pbkdf2)"))
  },
  (o) => lazy(() => import("./programs/cli/escrow.js"), (m) => m.escrowInspectCommand(o))
).pipe(Command.withDescription(
  "show a PBS key file's kdf, times and fingerprint; a wrapped file is opened with the recovery code or passphrase read from stdin (exit 1: wrong code, tampered file or fingerprint mismatch)"
))

const escrow = Command.make("escrow").pipe(
  Command.withDescription("PBS encryption key files and the recovery code"),
  Command.withSubcommands([escrowInspect])
)

// enroll, rotate-recovery-code (issue 13): run as root on the PVE host

const prefixOpt = fileOpt("prefix", "put every host path below this directory (tests)").pipe(Options.optional)

const enroll = Command.make(
  "enroll",
  {
    hub: Options.text("hub").pipe(Options.withDescription("the hub's https:// URL")),
    hubCa: fileOpt("hub-ca", "the CA (PEM) to trust for the hub instead of the system roots").pipe(Options.optional),
    tokenFile: fileOpt("token-file", "the one-time enrollment token (default: the first line of stdin; never on the command line)").pipe(Options.optional),
    node: Options.text("node").pipe(Options.optional, Options.withDescription("the PVE node name (default: the config's, else this host's short name)")),
    config: fileOpt("config", `the base config: authz signers, golden, local_api... (default ${DEFAULT_CONFIG_PATH} when present)`).pipe(Options.withAlias("c"), Options.optional),
    prefix: prefixOpt,
    paperkey: Options.boolean("paperkey").pipe(Options.withDescription("also print the raw PBS key in PBS's paperkey format (anyone holding it reads every backup)")),
    restoreMode: Options.boolean("restore-mode").pipe(Options.withDescription("a lost host on a new box: type its recovery code, install its key, restore its guests")),
    noGolden: Options.boolean("no-golden").pipe(Options.withDescription("skip the golden image build")),
    json: Options.boolean("json").pipe(Options.withDescription("the result as one JSON object on stdout; progress and the code on stderr"))
  },
  (o) => lazy(() => import("./programs/cli/enroll.js"), (m) => m.enroll(o))
).pipe(Command.withDescription(
  "make this PVE host a felhom host (PVE token, config, sudoers, units, hub registration, golden image, PBS key, recovery code); re-run to resume; exit 0 enrolled, 1 a step failed, 2 usage"
))

const rotateRecoveryCode = Command.make(
  "rotate-recovery-code",
  {
    signed: fileOpt("signed", "the operator's signed op rotate-recovery-code (BLOB.sig beside it)").pipe(Options.optional),
    newKey: Options.boolean("new-key").pipe(Options.withDescription("(out of scope: the PBS key itself is never changed; says why)")),
    config: configOpt,
    prefix: prefixOpt,
    json: jsonOpt
  },
  (o) => lazy(() => import("./programs/cli/enroll.js"), (m) => m.rotateRecoveryCode(o))
).pipe(Command.withDescription("a new recovery code for the same PBS key: shown once, typed back, then escrowed (signed op; the recovery key may sign it)"))

// ---------------------------------------------------------------------------------------------
// plan, journal, audit

const plan = Command.make(
  "plan",
  {
    desired: fileOpt("desired", "desired state JSON (the hub's format)"),
    signed: fileOpt("signed", "a signed op blob to check against its action (BLOB.sig beside it); repeatable").pipe(Options.repeated),
    config: configOpt,
    json: jsonOpt
  },
  (o) => lazy(() => import("./programs/cli/plan.js"), (m) => m.plan(o))
).pipe(Command.withDescription("what reconcile would do now against the node, with each action's gate verdict"))

const journalList = Command.make(
  "list",
  {
    limit: Options.integer("limit").pipe(Options.withDefault(20), Options.withDescription("how many, 1 to 10000")),
    config: configOpt,
    json: jsonOpt
  },
  (o) => lazy(() => import("./programs/cli/journal.js"), (m) => m.journalList(o))
).pipe(Command.withDescription("recent journaled operations, newest first"))

const journal = Command.make("journal").pipe(
  Command.withDescription("the operation journal"),
  Command.withSubcommands([journalList])
)

const auditVerify = Command.make("verify", { config: configOpt, json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/audit.js"), (m) => m.auditVerify(o))
).pipe(Command.withDescription("recompute the audit log's hash chain; exit 1 if any entry was edited or deleted"))

const audit = Command.make("audit").pipe(
  Command.withDescription("the tamper-evident audit log"),
  Command.withSubcommands([auditVerify])
)

// golden (issue 12): the golden base archive, built as root from the config's golden block

const goldenBuild = Command.make(
  "build",
  {
    // not --version: @effect/cli answers a --version right after the command path with the agent's own
    version: Options.text("golden-version").pipe(Options.optional, Options.withDescription("the version to register it as (default: its UTC start, YYYY.MM.DD-HHMMSS)")),
    config: configOpt,
    json: jsonOpt
  },
  (o) => lazy(() => import("./programs/cli/golden.js"), (m) => m.goldenBuild(o))
).pipe(Command.withDescription("build, checksum and register the golden archive (pct create, install, vzdump, pct destroy); exit 0 registered, 1 failed"))

const goldenList = Command.make("list", { config: configOpt, json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/golden.js"), (m) => m.goldenList(o))
).pipe(Command.withDescription("the golden archives the agent may provision from: version, sha256, current or retired"))

const golden = Command.make("golden").pipe(
  Command.withDescription("the golden base archive provisioning restores from"),
  Command.withSubcommands([goldenBuild, goldenList])
)

// ---------------------------------------------------------------------------------------------
// provision, recover (issue 12): long operations with progress on stderr

const provision = Command.make(
  "provision",
  {
    vmid: Options.integer("vmid").pipe(Options.withSchema(VmId), Options.withDescription("the guest to create")),
    fromDesired: Options.boolean("from-desired").pipe(Options.withDescription("take the guest from the hub's current desired state")),
    desired: fileOpt("desired", "take the guest from this desired-state JSON (the hub's format)").pipe(Options.optional),
    spec: fileOpt("spec", "one guest's JSON (a desired-state guest entry); needs --archive and --storage").pipe(Options.optional),
    archive: Options.text("archive").pipe(Options.optional, Options.withDescription("golden archive volume id (default: the desired state's provisioning); must be registered")),
    storage: Options.text("storage").pipe(Options.optional, Options.withDescription("storage for the guest's volumes (with --archive)")),
    plan: Options.boolean("plan").pipe(Options.withDescription("print the steps and the gate's verdict; change nothing")),
    dryRun: Options.boolean("dry-run").pipe(Options.withDescription("same as --plan")),
    config: configOpt,
    json: Options.boolean("json").pipe(
      Options.withDescription("the result as one JSON object on stdout; progress as JSON lines on stderr (also without a TTY)")
    )
  },
  (o) => lazy(() => import("./programs/cli/provision.js"), (m) => m.provision(o))
).pipe(Command.withDescription(
  "create one guest from the golden archive (the reconcile create saga, then its controller); exit 0 done, 1 refused/failed/rolled back, 2 usage"
))

const recover = Command.make(
  "recover",
  {
    vmid: Options.integer("vmid").pipe(Options.withSchema(VmId), Options.optional, Options.withDescription("the lost guest")),
    scenario: Options.choice("scenario", ["total", "partial"]).pipe(
      Options.withDefault("total" as const),
      Options.withDescription("total: the guest is gone (keeps its MAC); partial: its source may still be live (fresh MAC, link down until --confirm)")
    ),
    source: Options.choice("source", ["auto", "snapshot", "vzdump", "pbs"]).pipe(
      Options.withDefault("auto" as const),
      Options.withDescription("restore tier (auto: the fastest surviving one)")
    ),
    plan: Options.boolean("plan").pipe(Options.withDescription("print the plan (tier, point, age, identity, bulk volumes) and what to sign; change nothing")),
    signed: fileOpt("signed", "the operator's signed op recover (BLOB.sig beside it)").pipe(Options.optional),
    desired: fileOpt("desired", "desired-state JSON that sizes and configures the guest (default: the backup's own config)").pipe(Options.optional),
    fromDesired: Options.boolean("from-desired").pipe(Options.withDescription("take the desired state from the hub")),
    confirm: Options.boolean("confirm").pipe(Options.withDescription("after a partial recovery: the source is gone, bring the guest's NICs up")),
    journal: Options.boolean("journal").pipe(Options.withDescription("replay the journal now (what the daemon does at start) and report each op")),
    config: configOpt,
    json: Options.boolean("json").pipe(
      Options.withDescription("the result as one JSON object on stdout; progress as JSON lines on stderr (also without a TTY)")
    )
  },
  (o) => lazy(() => import("./programs/cli/recover.js"), (m) => m.recover(o))
).pipe(Command.withDescription(
  "guest-loss DR from the fastest surviving tier, journal replay (--journal), link confirmation (--confirm); exit 0 done, 1 failed, 2 usage, 4 needs an operator signature"
))

// ---------------------------------------------------------------------------------------------
// break-glass (issue 14): enabling is a signed job from the hub; here only what a person at the box needs

const breakGlassStatus = Command.make("status", { config: configOpt, json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/breakglass.js"), (m) => m.breakGlassStatus(o))
).pipe(Command.withDescription("the emergency access session (who, since, until, why) and the unit's state; exit 0 consistent, 1 a problem"))

const breakGlassDisable = Command.make("disable", { config: configOpt, json: jsonOpt }, (o) =>
  lazy(() => import("./programs/cli/breakglass.js"), (m) => m.breakGlassDisable(o))
).pipe(Command.withDescription("close the emergency access now: stop the unit, end the open session (no signature needed); root or the service user"))

const breakGlass = Command.make("break-glass").pipe(
  Command.withDescription("the operator-signed, time-limited emergency access path"),
  Command.withSubcommands([breakGlassStatus, breakGlassDisable])
)

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// self-update (issue 14): release manifests and signatures, the manual update

const releaseManifest = Command.make(
  "manifest",
  {
    dir: Options.directory("dir").pipe(Options.withDescription("the release tree (bin/, lib/)")),
    // not --version: @effect/cli answers a --version right after the command path with the agent's own
    version: Options.text("release").pipe(Options.withDescription("the release version, e.g. 1.4.0")),
    node: Options.text("node").pipe(Options.optional, Options.withDescription("the bundled Node runtime's version (default: the running one)"))
  },
  (o) => lazy(() => import("./programs/cli/release.js"), (m) => m.releaseManifest(o))
).pipe(Command.withDescription("write DIR/RELEASE.json for the tree; sign it with: ssh-keygen -Y sign -n felhom-release-v1 -f KEY DIR/RELEASE.json"))

const releaseVerify = Command.make(
  "verify",
  {
    dir: Options.directory("dir").pipe(Options.withDescription("the release tree with RELEASE.json and RELEASE.json.sig")),
    config: configOpt,
    expectVersion: Options.text("expect-version").pipe(Options.optional, Options.withDescription("refuse any other version"))
  },
  (o) => lazy(() => import("./programs/cli/release.js"), (m) => m.releaseVerify(o))
).pipe(Command.withDescription("verify a release tree: the SSHSIG by update.release_signers, then every file; exit 0 'verified <version>', else 1"))

const release = Command.make("release").pipe(
  Command.withDescription("self-update releases: write and verify signed manifests"),
  Command.withSubcommands([releaseManifest, releaseVerify])
)

const update = Command.make(
  "update",
  {
    // not --version: @effect/cli answers that flag itself, anywhere on the line, with the agent's version
    version: Options.text("release").pipe(Options.optional, Options.withDescription("the release version to install, e.g. 1.4.0 (signed by a release key)")),
    yes: Options.boolean("yes").pipe(Options.withDescription("do not ask")),
    status: Options.boolean("status").pipe(Options.withDescription("show update.json and the current and last-good versions")),
    config: configOpt
  },
  (o) => lazy(() => import("./programs/cli/update.js"), (m) => m.update(o))
).pipe(Command.withDescription(
  "as root, daemon stopped: download, verify and stage a signed release, then start the health gate (it flips and reverts on a failed window); --status shows where it stands"
))

const root = Command.make("felhom-agent").pipe(
  Command.withDescription("felhom host agent for Proxmox VE"),
  Command.withSubcommands([version, daemon, status, selftest, enroll, rotateRecoveryCode, plan, provision, recover, journal, audit, golden, op, sshsig, escrow, breakGlass, release, update, sim, demo])
)

const cli = Command.run(root, { name: "felhom-agent", version: VERSION })

const exitCodeOf = (exit: Exit.Exit<unknown, unknown>): number => {
  if (Exit.isSuccess(exit)) return 0
  if (Cause.isInterruptedOnly(exit.cause)) return 0
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) return failure.value instanceof CliFailure ? failure.value.code : 2 // @effect/cli validation errors: usage
  return 3
}

cli(process.argv).pipe(
  Effect.tapErrorCause((cause) => {
    const failure = Cause.failureOption(cause)
    if (Option.isSome(failure) && failure.value instanceof CliFailure) {
      // a message may carry hub or PVE text: no control character reaches the operator's terminal
      return Console.error(`felhom-agent: ${failure.value.message.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "?")}`)
    }
    if (Option.isSome(failure)) return Effect.void // @effect/cli already printed the usage error
    return Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(`felhom-agent: unexpected error\n${Cause.pretty(cause)}`)
  }),
  // what the command tree itself needs; a command that runs processes brings NodeCommandExecutor
  Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, NodeTerminal.layer)),
  NodeRuntime.runMain({
    disableErrorReporting: true,
    teardown: (exit, onExit) => onExit(exitCodeOf(exit))
  })
)
