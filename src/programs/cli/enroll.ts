/**
 * `felhom-agent enroll` and `felhom-agent rotate-recovery-code` (issue 13): the CLI around
 * src/programs/enroll/. Run as root on the PVE host.
 *
 * enroll --hub URL [--hub-ca FILE] [--token-file FILE] [--node N] [--config BASE] [--prefix DIR]
 *        [--paperkey] [--restore-mode] [--no-golden] [--json]
 *   The enrollment token comes from --token-file or the first line of stdin, never argv. The
 *   recovery code is typed back (restore mode: typed in) without echo on a terminal, or as the
 *   next line of stdin. --config names the base config (authz signers, golden, local_api...; by
 *   default the installed agent.json when there is one); --prefix puts every host path below a
 *   directory (tests). Output: progress and the code on stdout (stderr with --json, whose single
 *   JSON result goes to stdout). Exit 0 enrolled; 1 a step failed (re-run to resume); 2 usage.
 *
 * rotate-recovery-code --signed FILE [--new-key] [--config PATH] [--prefix DIR] [--json]
 *   The operator's signed op (FILE.sig beside it). --new-key only explains that changing K is out
 *   of scope (exit 2).
 */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { ConfigProvider, Console, Effect, Option, Redacted } from "effect"
import { existsSync, readFileSync, realpathSync } from "node:fs"
import { dirname, join } from "node:path"
import { createInterface } from "node:readline"
import { DEFAULT_PBS_KEY_FILE } from "../../schema/config.js"
import { HOST_FILES, type HostSetupOptions, SECRET_ENV } from "../../layers/HostSetup.js"
import { DEFAULT_COMMAND_PATHS } from "../../layers/Privileged.js"
import { enroll as runEnroll, type EnrollDeps, type EnrollResult } from "../enroll/enroll.js"
import { EnrollFailed, EnrollIO, type EnrollIOShape } from "../enroll/ports.js"
import { NEW_KEY_OUT_OF_SCOPE, rotateRecoveryCode as runRotate } from "../enroll/rotate.js"
import { enrollServices } from "../enroll/services.js"
import { CliFailure, toCliFailure, usage } from "./failure.js"
import { readBytes } from "./input.js"

export interface EnrollCommand {
  readonly hub: string
  readonly hubCa: Option.Option<string>
  readonly tokenFile: Option.Option<string>
  readonly node: Option.Option<string>
  readonly config: Option.Option<string>
  readonly prefix: Option.Option<string>
  readonly paperkey: boolean
  readonly restoreMode: boolean
  readonly noGolden: boolean
  readonly json: boolean
}

export interface RotateCommand {
  readonly signed: Option.Option<string>
  readonly newKey: boolean
  readonly config: Option.Option<string>
  readonly prefix: Option.Option<string>
  readonly json: boolean
}

// ---------------------------------------------------------------------------------------------
// The person at the box

/** stdin as lines, shared by the token and the codes (a pipe feeds them in that order). */
const makeLines = () => {
  const queue: Array<string> = []
  const waiting: Array<(l: string | undefined) => void> = []
  let ended = false
  let rl: ReturnType<typeof createInterface> | undefined
  const start = () => {
    if (rl !== undefined) return
    rl = createInterface({ input: process.stdin, terminal: false })
    rl.on("line", (l) => (waiting.length > 0 ? waiting.shift()!(l) : queue.push(l)))
    rl.on("close", () => {
      ended = true
      while (waiting.length > 0) waiting.shift()!(undefined)
    })
  }
  const next = Effect.async<string | undefined>((resume) => {
    start()
    if (queue.length > 0) return resume(Effect.succeed(queue.shift()))
    if (ended) return resume(Effect.succeed(undefined))
    waiting.push((l) => resume(Effect.succeed(l)))
  })
  const close = Effect.sync(() => rl?.close())
  return { next, close }
}

/** One line from a terminal without echo (raw mode); Ctrl-C or Ctrl-D: none. */
const ttyLine = (prompt: string) =>
  Effect.async<string | undefined>((resume) => {
    const stdin = process.stdin
    process.stderr.write(prompt)
    let line = ""
    stdin.setRawMode(true)
    stdin.resume()
    const done = (v: string | undefined) => {
      stdin.setRawMode(false)
      stdin.pause()
      stdin.off("data", onData)
      process.stderr.write("\n")
      resume(Effect.succeed(v))
    }
    const onData = (b: Buffer) => {
      for (const ch of b.toString("utf8")) {
        if (ch === "\r" || ch === "\n") return done(line)
        if (ch === "\u0003" || ch === "\u0004") return done(undefined)
        if (ch === "\u007f" || ch === "\b") line = line.slice(0, -1)
        else if (ch >= " ") line += ch
      }
    }
    stdin.on("data", onData)
  })

const personIO = (json: boolean, lines: ReturnType<typeof makeLines>): EnrollIOShape => {
  const out = (t: string) => Effect.sync(() => void (json ? process.stderr : process.stdout).write(`${t}\n`))
  const tty = process.stdin.isTTY === true
  return {
    say: out,
    showSecret: out,
    // a terminal clears the code off the screen and its scrollback once it was typed back
    forgetSecret: tty && process.stdout.isTTY === true ? Effect.sync(() => void process.stdout.write("\u001b[2J\u001b[3J\u001b[H")) : Effect.void,
    secretLine: (prompt) => Effect.map(tty ? ttyLine(prompt) : lines.next, Option.fromNullable)
  }
}

// ---------------------------------------------------------------------------------------------
// Where things are

/** The shipped configs/ beside the bin (bin/felhom-agent.cjs → ../configs). */
const shippedConfigs = (): string => {
  const bin = process.argv[1] === undefined ? process.cwd() : realpathSync(process.argv[1])
  return join(dirname(dirname(bin)), "configs")
}

const under = (prefix: string, p: string) => (prefix === "" ? p : join(prefix, p))

const readBase = (o: { readonly config: Option.Option<string>; readonly prefix: Option.Option<string> }) =>
  Effect.gen(function*() {
    const prefix = Option.getOrElse(o.prefix, () => "")
    const path = Option.getOrElse(o.config, () => under(prefix, HOST_FILES.agentJson))
    if (!existsSync(path)) {
      if (Option.isSome(o.config)) return yield* usage(`--config ${path} does not exist`)
      return {} as Record<string, unknown>
    }
    const text = new TextDecoder().decode(yield* readBytes(path))
    const parsed = yield* Effect.try(() => JSON.parse(text) as unknown).pipe(Effect.mapError(() => usage(`${path} is not valid JSON`)))
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return yield* usage(`${path}: expected a JSON object`)
    return parsed as Record<string, unknown>
  })

const setupOptions = (prefix: string, base: Record<string, unknown>): HostSetupOptions => {
  const commands = ((base["privileged"] as Record<string, unknown> | undefined)?.["commands"] ?? {}) as Record<string, unknown>
  const bin = (k: "pveum" | "systemctl") => (typeof commands[k] === "string" ? commands[k] : DEFAULT_COMMAND_PATHS[k])
  return { prefix, configsDir: shippedConfigs(), binaries: { pveum: bin("pveum"), systemctl: bin("systemctl"), visudo: "/usr/sbin/visudo" } }
}

const keyFileOf = (base: Record<string, unknown>) => {
  const k = (base["escrow"] as Record<string, unknown> | undefined)?.["key_file"]
  return typeof k === "string" ? k : DEFAULT_PBS_KEY_FILE
}
const stateDirOf = (base: Record<string, unknown>) => (typeof base["state_dir"] === "string" ? base["state_dir"] : "/var/lib/felhom-agent")

/**
 * The written agent.json with secrets.env overlaid (as systemd gives the daemon): what the golden
 * build and the restore engine run with.
 */
const withWrittenConfig = (prefix: string) => <A, E, R>(body: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const env = new Map(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined))
    const secretsPath = under(prefix, HOST_FILES.secretsEnv)
    if (existsSync(secretsPath)) {
      for (const line of readFileSync(secretsPath, "utf8").split("\n")) {
        const m = /^(FELHOM_AGENT_[A-Z_]+)=(.*)$/.exec(line)
        if (m !== null && Object.values(SECRET_ENV).includes(m[1] as never)) env.set(m[1]!, m[2]!)
      }
    }
    env.set("FELHOM_AGENT_CONFIG", under(prefix, HOST_FILES.agentJson))
    return yield* body.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(env)))
  })

const asFailed = (step: string) => (e: { readonly message: string }) => new EnrollFailed({ step, message: e.message })

// ---------------------------------------------------------------------------------------------
// enroll

const renderResult = (r: EnrollResult): string =>
  [
    `enrolled: host ${r.hostId} (${r.mode})`,
    `  PBS key ${r.keyFingerprint.split(":").slice(0, 8).join(":")} installed`,
    ...(r.escrowGeneration === null ? [] : [`  recovery-code escrow at the hub: generation ${r.escrowGeneration}`]),
    ...(r.mode === "new" ? ["  next: systemctl start felhom-agent"] : ["  next: systemctl start felhom-agent (it attaches the storage and reconciles)"])
  ].join("\n")

export const enroll = (o: EnrollCommand) =>
  Effect.scoped(Effect.gen(function*() {
    if (o.paperkey && o.restoreMode) {
      return yield* usage("--paperkey is for a new host's enrollment: in restore mode the key is the escrowed one, which your recovery code already opens (felhom-agent escrow inspect checks a blob)")
    }
    const prefix = Option.getOrElse(o.prefix, () => "")
    const base = yield* readBase(o)
    const lines = makeLines()
    yield* Effect.addFinalizer(() => lines.close)
    const token = Option.match(o.tokenFile, {
      onSome: (f) =>
        Effect.try(() => readFileSync(f, "utf8").trim()).pipe(Effect.mapError(() => new EnrollFailed({ step: "register", message: `cannot read --token-file ${f}`, code: 2 }))),
      onNone: () => Effect.map(lines.next, (l) => (l ?? "").trim())
    }).pipe(
      Effect.flatMap((t) =>
        t.length === 0
          ? Effect.fail(new EnrollFailed({ step: "register", message: "no enrollment token (give --token-file FILE, or the token as the first line of stdin)", code: 2 }))
          : Effect.succeed(Redacted.make(t))
      )
    )
    const inConfig = withWrittenConfig(prefix)
    const deps: EnrollDeps = {
      isRoot: process.getuid?.() === 0,
      buildGolden: inConfig(Effect.promise(() => import("./golden.js")).pipe(
        Effect.flatMap((m) => m.goldenBuild({ version: Option.none(), json: o.json, config: Option.none() })),
        Effect.as("golden archive built and registered"),
        Effect.mapError(asFailed("golden")),
        Effect.provide(NodeFileSystem.layer)
      )),
      restoreHost: (input) => inConfig(Effect.promise(() => import("./hostlossRestore.js")).pipe(
        Effect.flatMap((m) => m.runHostRestore(input)),
        Effect.mapError(asFailed("restore"))
      ))
    }
    const result = yield* runEnroll({
      mode: o.restoreMode ? "restore" : "new",
      hubUrl: o.hub,
      hubCa: Option.getOrUndefined(o.hubCa),
      token,
      node: Option.getOrUndefined(o.node),
      base,
      paperkey: o.paperkey,
      golden: !o.noGolden && base["golden"] !== undefined
    }, deps).pipe(
      Effect.provide(enrollServices({
        setup: setupOptions(prefix, base),
        keyFile: keyFileOf(base),
        stateDir: stateDirOf(base),
        hub: { url: o.hub, ...(Option.isSome(o.hubCa) ? { ca_file: o.hubCa.value } : {}) }
      })),
      Effect.provideService(EnrollIO, personIO(o.json, lines))
    )
    yield* Console.log(o.json ? JSON.stringify(result) : renderResult(result))
  })).pipe(
    Effect.mapError((e) =>
      e._tag === "EnrollFailed"
        ? new CliFailure({ code: e.code ?? 1, message: `enroll: ${e.step}: ${e.message}` })
        : toCliFailure(e)
    )
  )

// ---------------------------------------------------------------------------------------------
// rotate-recovery-code

export const rotateRecoveryCode = (o: RotateCommand) =>
  Effect.scoped(Effect.gen(function*() {
    if (o.newKey) return yield* usage(NEW_KEY_OUT_OF_SCOPE)
    if (Option.isNone(o.signed)) return yield* usage("give --signed FILE: the operator's signed op rotate-recovery-code (FILE.sig beside it)")
    const prefix = Option.getOrElse(o.prefix, () => "")
    const base = yield* readBase({ config: o.config, prefix: o.prefix })
    const hub = (base["hub"] ?? {}) as Record<string, unknown>
    if (typeof hub["url"] !== "string") return yield* usage("the config has no hub.url: is this host enrolled?")
    const blob = yield* readBytes(o.signed.value)
    const signature = yield* readBytes(`${o.signed.value}.sig`)
    const lines = makeLines()
    yield* Effect.addFinalizer(() => lines.close)
    const { authzServices } = yield* Effect.promise(() => import("./rotateServices.js"))
    const r = yield* withWrittenConfig(prefix)(
      runRotate({ blob, signature }, { isRoot: process.getuid?.() === 0 }).pipe(
        Effect.provide(authzServices(Option.getOrElse(o.config, () => under(prefix, HOST_FILES.agentJson)))),
        Effect.provide(enrollServices({
          setup: setupOptions(prefix, base),
          keyFile: keyFileOf(base),
          stateDir: stateDirOf(base),
          hub: { url: hub["url"], ...(typeof hub["ca_file"] === "string" ? { ca_file: hub["ca_file"] } : {}) }
        })),
        Effect.provideService(EnrollIO, personIO(o.json, lines))
      )
    )
    yield* Console.log(o.json
      ? JSON.stringify(r)
      : `recovery code rotated: the hub holds generation ${r.generation} (replaced ${r.replaced}) for key ${r.fingerprint.split(":").slice(0, 8).join(":")}; the hub's blob now opens only with the new code (K is unchanged: an old code still opens any copy of an older blob, so destroy old paper copies)`)
  })).pipe(
    Effect.provide(NodeFileSystem.layer),
    Effect.provide(NodeCommandExecutor.layer),
    Effect.mapError((e) =>
      e._tag === "EnrollFailed" ? new CliFailure({ code: e.code ?? 1, message: `rotate-recovery-code: ${e.message}` }) : toCliFailure(e)
    )
  )
