/**
 * HostSetup: what `felhom-agent enroll` does to the host itself (issue 13, SPEC §10, §15), run as
 * root: the PVE role, service user and privilege-separated API token through `pveum`; the agent
 * config and its secrets file; the sudoers allowlist, validated by `visudo -c` before it lands;
 * the root helpers; the systemd unit; the PVE TLS pin; the tunnel token.
 *
 * The fence: it shells out through CommandExecutor only and never does HTTP (listed in
 * scripts/check-boundaries.mjs). Binaries by absolute path, argv only, a cleared environment,
 * stdin at EOF; no secret is ever an argument (argv is readable by every user in /proc): the token
 * secret comes back on pveum's stdout and goes to disk in a 0600 root file.
 *
 * Every file lands atomically (a temp file beside it, O_EXCL, fsync, rename, fsync of the
 * directory), so a crash leaves the old file or the new one, never half of one. All paths sit
 * below a root prefix ("" in production; tests use a scratch directory).
 *
 * Errors name the step, the file or the command and its exit status, never a secret: pveum's
 * stdout (which holds the token secret) is never put in an error.
 */
import { CommandExecutor } from "@effect/platform"
import * as Command from "@effect/platform/Command"
import { Context, Data, Duration, Effect, Either, Layer, Option, Redacted, Schema, Stream } from "effect"
import { X509Certificate } from "node:crypto"
import { access, chmod, lstat, mkdir, readdir, readFile, rename, unlink } from "node:fs/promises"
import { basename, dirname, join } from "node:path"
import { removeQuietly, syncDir, writeTemp } from "./durableFile.js"
import { FELHOM_ROLE, FELHOM_ROLE_PRIVS } from "../schema/pveRole.js"

export class HostSetupError extends Data.TaggedError("HostSetupError")<{
  readonly step: "pveum" | "config" | "secrets" | "sudoers" | "helpers" | "units" | "tls" | "tunnel"
  readonly message: string
}> {}

/** The role and its privileges: one list with the simulator's (src/schema/pveRole.ts). */
export { FELHOM_ROLE, FELHOM_ROLE_PRIVS }
export const FELHOM_USER = "felhom-agent@pve"
export const FELHOM_TOKEN_NAME = "agent"
export const FELHOM_TOKEN_ID = `${FELHOM_USER}!${FELHOM_TOKEN_NAME}`

/** The env names Config.ts reads the two secrets from (its FELHOM_AGENT_* overlay). */
export const SECRET_ENV = {
  proxmoxTokenSecret: "FELHOM_AGENT_PROXMOX_TOKEN_SECRET",
  hubApiKey: "FELHOM_AGENT_HUB_API_KEY",
  /** The cloudflared tunnel token (issue 14): the daemon hands it to the felhom-cloudflared helper. */
  cloudflaredToken: "FELHOM_AGENT_CLOUDFLARED_TOKEN",
  /**
   * Not a secret and not a config overlay (the daemon reads host_id from agent.json): the host id
   * the hub answered with, written in the same atomic write as its api key, so a crash can never
   * leave the api key without the host id it belongs to (the enrollment token is spent by then).
   */
  enrolledHostId: "FELHOM_AGENT_ENROLLED_HOST_ID"
} as const

const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/** Production locations (below the prefix). */
export const HOST_FILES = {
  configDir: "/etc/felhom-agent",
  agentJson: "/etc/felhom-agent/agent.json",
  secretsEnv: "/etc/felhom-agent/secrets.env",
  tunnelToken: "/etc/felhom-agent/cloudflared.token",
  sudoers: "/etc/sudoers.d/felhom-agent",
  unitDir: "/etc/systemd/system",
  libexecDir: "/usr/local/libexec/felhom-agent",
  goldenShareDir: "/usr/local/share/felhom-agent/golden",
  pveSslPem: "/etc/pve/local/pve-ssl.pem",
  /**
   * Shipped by the Debian package (issue 14, scripts/package.mjs): its presence means dpkg owns
   * the sudoers file, the root helpers, the golden files and the units, so enroll leaves them be
   * (a copy of the unit in /etc/systemd/system would shadow every later packaged one).
   */
  packageMarker: "/usr/share/felhom-agent/sudoers"
} as const

/** The units shipped in configs/systemd/, installed and enabled. */
export const UNITS: ReadonlyArray<string> = ["felhom-agent.service"]
/** The root helpers shipped in configs/libexec/, which the sudoers rules name. */
export const HELPERS: ReadonlyArray<string> = ["felhom-mount-unit", "felhom-bootstrap", "felhom-golden", "felhom-pbskey"]

export interface HostSetupOptions {
  /** Root prefix of every host path ("" in production). */
  readonly prefix: string
  /** The shipped configs/ directory (sudoers, systemd, libexec, golden). */
  readonly configsDir: string
  readonly binaries: { readonly pveum: string; readonly systemctl: string; readonly visudo: string }
  /** Per command; default 120 s. */
  readonly timeout?: Duration.DurationInput
}

export interface PveAccessResult {
  readonly role: "added" | "modified" | "unchanged"
  readonly user: "added" | "existed"
  /**
   * The new token's secret (shown by PVE once); None when the token existed and its secret is
   * already stored (`haveSecret`). A token that exists without a stored secret is removed and made
   * again (the secret is lost for good otherwise).
   */
  readonly tokenSecret: Option.Option<Redacted.Redacted<string>>
}

export interface StoredSecrets {
  readonly proxmoxTokenSecret: Option.Option<Redacted.Redacted<string>>
  readonly hubApiKey: Option.Option<Redacted.Redacted<string>>
  /** The host id stored with the api key (see SECRET_ENV.enrolledHostId). */
  readonly hostId: Option.Option<string>
  readonly cloudflaredToken: Option.Option<Redacted.Redacted<string>>
}

export interface HostSetupShape {
  readonly options: HostSetupOptions
  /** The host path `p` below the prefix. */
  readonly path: (p: string) => string
  readonly pveAccess: (o: { readonly haveSecret: boolean }) => Effect.Effect<PveAccessResult, HostSetupError>
  /** agent.json, 0644: the caller passes it without secrets (checked: refused if it holds either). */
  readonly writeConfig: (json: string) => Effect.Effect<void, HostSetupError>
  /** secrets.env, 0600 root; the given secrets replace the stored ones, the others are kept. */
  readonly writeSecrets: (
    s: Partial<{
      readonly proxmoxTokenSecret: Redacted.Redacted<string>
      readonly hubApiKey: Redacted.Redacted<string>
      readonly hostId: string
      readonly cloudflaredToken: Redacted.Redacted<string>
    }>
  ) => Effect.Effect<void, HostSetupError>
  readonly readSecrets: Effect.Effect<StoredSecrets, HostSetupError>
  /** The sudoers drop-in, 0440, validated with `visudo -c -f <temp>` before the rename. */
  readonly installSudoers: Effect.Effect<void, HostSetupError>
  /** The root helpers (0755) the sudoers rules name, the golden-baked files, the bootstrap root. */
  readonly installHelpers: Effect.Effect<void, HostSetupError>
  /** The units (0644) and `systemctl daemon-reload`; not enabled (enableUnits, at the end of enroll). */
  readonly installUnits: Effect.Effect<void, HostSetupError>
  /** `systemctl enable <unit>` (not started): enroll's last step. */
  readonly enableUnits: Effect.Effect<void, HostSetupError>
  /** SHA-256 of PVE's own certificate, `AA:BB:...` as proxmox.tls.fingerprint_sha256 takes it. */
  readonly pveTlsFingerprint: Effect.Effect<string, HostSetupError>
  /** The cloudflared tunnel token, 0600 root, and into secrets.env for the daemon's cloudflared manager. */
  readonly writeTunnelToken: (token: Redacted.Redacted<string>) => Effect.Effect<void, HostSetupError>
  /** A root-only (0600) file below the config directory, e.g. the restore bundle. */
  readonly writeSecretFile: (hostPath: string, content: string) => Effect.Effect<void, HostSetupError>
  /** Removes a file below the config directory written by writeSecretFile; absent is fine. */
  readonly removeFile: (hostPath: string) => Effect.Effect<void, HostSetupError>
}

export class HostSetup extends Context.Tag("felhom/HostSetup")<HostSetup, HostSetupShape>() {}

/** The whole child environment: nothing of ours is inherited (the secrets may be in it). */
const CHILD_ENV: Readonly<Record<string, string>> = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" }
const OUTPUT_CAP = 1024 * 1024
const STDERR_SHOWN = 400

const codeOf = (e: unknown): string => {
  const inner = (e as { error?: unknown } | undefined)?.error ?? e
  const code = (inner as { code?: unknown } | undefined)?.code
  return typeof code === "string" ? code : "unknown error"
}

/** A value systemd's EnvironmentFile reads back verbatim: no quotes, backslashes, whitespace or control characters. */
const ENV_VALUE = /^[\x21\x23-\x26\x28-\x5b\x5d-\x7e]{1,4096}$/

const PveumJsonList = Schema.Array(Schema.Record({ key: Schema.String, value: Schema.Unknown }))
const TokenAdded = Schema.Struct({ value: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(4096)) })

interface Completed {
  readonly exitCode: number
  readonly stdout: string
  readonly stderr: string
}

export const makeHostSetup = (options: HostSetupOptions) =>
  Effect.gen(function*() {
    const executor = yield* CommandExecutor.CommandExecutor
    const timeout = Duration.decode(options.timeout ?? Duration.seconds(120))
    const path = (p: string) => (options.prefix === "" ? p : join(options.prefix, p))
    const err = (step: HostSetupError["step"], message: string) => new HostSetupError({ step, message })

    const collect = (s: Stream.Stream<Uint8Array, unknown>) =>
      Stream.runFold(s, { size: 0, parts: [] as Array<Uint8Array> }, (acc, b) => {
        if (acc.size < OUTPUT_CAP) acc.parts.push(b)
        return { size: acc.size + b.length, parts: acc.parts }
      }).pipe(Effect.map((acc) => Buffer.concat(acc.parts).toString("utf8")))

    /** Runs argv; the exit code is the caller's to judge. The error names the binary only. */
    const run = (step: HostSetupError["step"], binary: string, args: ReadonlyArray<string>): Effect.Effect<Completed, HostSetupError> =>
      Effect.scoped(Effect.gen(function*() {
        const command = Command.make(binary, ...args).pipe(Command.env(CHILD_ENV, { extendEnv: false }), Command.stdin(Stream.empty))
        const proc = yield* executor.start(command)
        const [stdout, stderr, exitCode] = yield* Effect.all([collect(proc.stdout), collect(proc.stderr), proc.exitCode], { concurrency: "unbounded" })
        return { exitCode, stdout, stderr }
      })).pipe(
        Effect.timeoutFail({ duration: timeout, onTimeout: () => err(step, `${basename(binary)} did not finish within ${Duration.format(timeout)}`) }),
        Effect.mapError((e) => (e instanceof HostSetupError ? e : err(step, `could not run ${binary} (${codeOf(e)})`)))
      )

    const stderrOf = (r: Completed) => {
      const t = r.stderr.replace(/[\u0000-\u001f\u007f]+/g, " ").trim()
      return t.length === 0 ? "" : `: ${t.length > STDERR_SHOWN ? `${t.slice(0, STDERR_SHOWN)}…` : t}`
    }
    /** Exit 0 or an error with the command's words (pveum's argv and stderr carry no secret). */
    const runOk = (step: HostSetupError["step"], binary: string, args: ReadonlyArray<string>, what: string) =>
      Effect.flatMap(run(step, binary, args), (r) =>
        r.exitCode === 0 ? Effect.succeed(r) : Effect.fail(err(step, `${what} exited with status ${r.exitCode}${stderrOf(r)}`)))

    // -------------------------------------------------------------------------------------------
    // Files

    const ensureDir = (step: HostSetupError["step"], dir: string, mode: number) =>
      Effect.tryPromise(async () => {
        await mkdir(dir, { recursive: true, mode })
        const st = await lstat(dir)
        if (st.isSymbolicLink() || !st.isDirectory()) throw Object.assign(new Error("not a directory"), { code: "ENOTDIR" })
        if (st.uid !== 0) throw Object.assign(new Error("not root's"), { code: "not root-owned" })
        if ((st.mode & 0o022) !== 0) await chmod(dir, st.mode & ~0o022 & 0o7777)
      }).pipe(Effect.mapError((e) => err(step, `cannot prepare directory ${dir} (${codeOf(e)})`)))

    /** The rename after `check(tmp)` passes; a failed check or rename leaves no temp file behind. */
    const atomicWrite = (
      step: HostSetupError["step"],
      target: string,
      content: string | Uint8Array,
      mode: number,
      check: (tmp: string) => Effect.Effect<void, HostSetupError> = () => Effect.void
    ) =>
      Effect.gen(function*() {
        const tmp = yield* writeTemp(target, content, mode).pipe(Effect.mapError((e) => err(step, `cannot write beside ${target} (${codeOf(e)})`)))
        yield* Effect.gen(function*() {
          yield* check(tmp)
          const st = yield* Effect.tryPromise(() => lstat(target)).pipe(Effect.option)
          if (Option.isSome(st) && (st.value.isSymbolicLink() || !st.value.isFile())) {
            return yield* err(step, `${target} exists and is not a regular file; refusing to replace it`)
          }
          yield* Effect.tryPromise(() => rename(tmp, target)).pipe(Effect.mapError((e) => err(step, `cannot install ${target} (${codeOf(e)})`)))
        }).pipe(Effect.tapError(() => removeQuietly(tmp)))
        yield* syncDir(dirname(target)).pipe(Effect.mapError((e) => err(step, `cannot sync ${dirname(target)} (${codeOf(e)})`)))
      })

    const readSource = (step: HostSetupError["step"], rel: string) =>
      Effect.tryPromise(() => readFile(join(options.configsDir, rel))).pipe(
        Effect.mapError((e) => err(step, `cannot read ${join(options.configsDir, rel)} (${codeOf(e)})`))
      )

    // -------------------------------------------------------------------------------------------
    // pveum

    const pveum = options.binaries.pveum
    const listJson = (args: ReadonlyArray<string>, what: string) =>
      Effect.gen(function*() {
        const r = yield* runOk("pveum", pveum, [...args, "--output-format", "json"], what)
        return yield* Effect.try(() => JSON.parse(r.stdout) as unknown).pipe(
          Effect.flatMap(Schema.decodeUnknown(PveumJsonList)),
          Effect.mapError(() => err("pveum", `${what}: the output is not the JSON list pveum prints`))
        )
      })

    const privsOf = (raw: unknown): ReadonlyArray<string> => {
      if (typeof raw === "string") return raw.split(/[\s,;]+/).filter((p) => p.length > 0)
      if (Array.isArray(raw)) return raw.filter((p): p is string => typeof p === "string")
      if (typeof raw === "object" && raw !== null) return Object.entries(raw).filter(([, v]) => v === 1 || v === true).map(([k]) => k)
      return []
    }

    const pveAccess: HostSetupShape["pveAccess"] = ({ haveSecret }) =>
      Effect.gen(function*() {
        const wanted = [...FELHOM_ROLE_PRIVS].sort()
        const roles = yield* listJson(["role", "list"], "pveum role list")
        const role = roles.find((r) => r["roleid"] === FELHOM_ROLE)
        let roleOutcome: PveAccessResult["role"] = "unchanged"
        if (role === undefined) {
          yield* runOk("pveum", pveum, ["role", "add", FELHOM_ROLE, "--privs", FELHOM_ROLE_PRIVS.join(",")], "pveum role add")
          roleOutcome = "added"
        } else {
          const have = [...new Set(privsOf(role["privs"]))].sort()
          if (have.join(",") !== wanted.join(",")) {
            // without --append, modify sets exactly this list (a privilege added by hand is taken away)
            yield* runOk("pveum", pveum, ["role", "modify", FELHOM_ROLE, "--privs", FELHOM_ROLE_PRIVS.join(",")], "pveum role modify")
            roleOutcome = "modified"
          }
        }
        const users = yield* listJson(["user", "list"], "pveum user list")
        const userExisted = users.some((u) => u["userid"] === FELHOM_USER)
        if (!userExisted) {
          yield* runOk("pveum", pveum, ["user", "add", FELHOM_USER, "--comment", "felhom host agent"], "pveum user add")
        }
        const tokens = yield* listJson(["user", "token", "list", FELHOM_USER], "pveum user token list")
        const token = tokens.find((t) => t["tokenid"] === FELHOM_TOKEN_NAME)
        const privsep = token !== undefined && (token["privsep"] === 1 || token["privsep"] === "1" || token["privsep"] === true)
        let secret = Option.none<Redacted.Redacted<string>>()
        if (token === undefined || !haveSecret || !privsep) {
          if (token !== undefined) {
            // its secret is gone (or it shares the user's privileges): make it again
            yield* runOk("pveum", pveum, ["user", "token", "remove", FELHOM_USER, FELHOM_TOKEN_NAME], "pveum user token remove")
          }
          const r = yield* runOk(
            "pveum",
            pveum,
            ["user", "token", "add", FELHOM_USER, FELHOM_TOKEN_NAME, "--privsep", "1", "--comment", "felhom-agent", "--output-format", "json"],
            "pveum user token add"
          )
          const added = yield* Effect.try(() => JSON.parse(r.stdout) as unknown).pipe(
            Effect.flatMap(Schema.decodeUnknown(TokenAdded)),
            // never the output itself: it holds the secret
            Effect.mapError(() => err("pveum", "pveum user token add: the output holds no token secret (value)"))
          )
          if (!ENV_VALUE.test(added.value)) return yield* err("pveum", "pveum user token add: the token secret has characters an env file cannot hold")
          secret = Option.some(Redacted.make(added.value))
        }
        // a privilege-separated token has the intersection of its own and its user's ACLs: grant both
        yield* runOk("pveum", pveum, ["acl", "modify", "/", "--users", FELHOM_USER, "--roles", FELHOM_ROLE], "pveum acl modify (user)")
        yield* runOk("pveum", pveum, ["acl", "modify", "/", "--tokens", FELHOM_TOKEN_ID, "--roles", FELHOM_ROLE], "pveum acl modify (token)")
        return { role: roleOutcome, user: userExisted ? "existed" : "added", tokenSecret: secret } satisfies PveAccessResult
      }).pipe(Effect.withSpan("HostSetup.pveAccess"))

    // -------------------------------------------------------------------------------------------
    // Config and secrets

    const configDir = path(HOST_FILES.configDir)
    const secretsPath = path(HOST_FILES.secretsEnv)

    const readSecrets: HostSetupShape["readSecrets"] = Effect.gen(function*() {
      const text = yield* Effect.tryPromise(() => readFile(secretsPath, "utf8")).pipe(
        Effect.either,
        Effect.flatMap((r) =>
          Either.isRight(r)
            ? Effect.succeed(r.right)
            : codeOf(r.left) === "ENOENT"
            ? Effect.succeed("")
            : Effect.fail(err("secrets", `cannot read ${secretsPath} (${codeOf(r.left)})`)))
      )
      const values = new Map<string, string>()
      for (const line of text.split("\n")) {
        const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line)
        if (m !== null) values.set(m[1]!, m[2]!)
      }
      const get = (k: string) => Option.map(Option.fromNullable(values.get(k)).pipe(Option.filter((v) => v.length > 0)), Redacted.make)
      const hostId = Option.fromNullable(values.get(SECRET_ENV.enrolledHostId)).pipe(Option.filter((v) => HOST_ID.test(v)))
      return {
        proxmoxTokenSecret: get(SECRET_ENV.proxmoxTokenSecret),
        hubApiKey: get(SECRET_ENV.hubApiKey),
        hostId,
        cloudflaredToken: get(SECRET_ENV.cloudflaredToken)
      }
    })

    const writeSecrets: HostSetupShape["writeSecrets"] = (given) =>
      Effect.gen(function*() {
        yield* ensureDir("secrets", configDir, 0o755)
        const stored = yield* readSecrets
        const pick = (g: Redacted.Redacted<string> | undefined, s: Option.Option<Redacted.Redacted<string>>) =>
          g !== undefined ? Option.some(g) : s
        const entries: Array<readonly [string, Option.Option<Redacted.Redacted<string>>]> = [
          [SECRET_ENV.proxmoxTokenSecret, pick(given.proxmoxTokenSecret, stored.proxmoxTokenSecret)],
          [SECRET_ENV.hubApiKey, pick(given.hubApiKey, stored.hubApiKey)],
          [SECRET_ENV.cloudflaredToken, pick(given.cloudflaredToken, stored.cloudflaredToken)]
        ]
        const lines = ["# felhom-agent secrets (written by felhom-agent enroll); root-only, read by systemd (EnvironmentFile=)"]
        for (const [name, value] of entries) {
          if (Option.isNone(value)) continue
          const v = Redacted.value(value.value)
          if (!ENV_VALUE.test(v)) return yield* err("secrets", `${name}: the value has characters an env file cannot hold (quotes, backslashes, spaces)`)
          lines.push(`${name}=${v}`)
        }
        const hostId = given.hostId !== undefined ? Option.some(given.hostId) : stored.hostId
        if (Option.isSome(hostId)) {
          if (!HOST_ID.test(hostId.value)) return yield* err("secrets", "the hub's host id is not a host id (1-128 of A-Z a-z 0-9 . _ -)")
          lines.push(`${SECRET_ENV.enrolledHostId}=${hostId.value}`)
        }
        yield* atomicWrite("secrets", secretsPath, `${lines.join("\n")}\n`, 0o600)
      }).pipe(Effect.withSpan("HostSetup.writeSecrets"))

    const writeConfig: HostSetupShape["writeConfig"] = (json) =>
      Effect.gen(function*() {
        const stored = yield* readSecrets
        for (const s of [stored.proxmoxTokenSecret, stored.hubApiKey, stored.cloudflaredToken]) {
          if (Option.isSome(s) && json.includes(Redacted.value(s.value))) {
            return yield* err("config", "refusing to write agent.json: it holds a secret (secrets belong in secrets.env)")
          }
        }
        yield* ensureDir("config", configDir, 0o755)
        yield* atomicWrite("config", path(HOST_FILES.agentJson), json.endsWith("\n") ? json : `${json}\n`, 0o644)
      }).pipe(Effect.withSpan("HostSetup.writeConfig"))

    const writeTunnelToken: HostSetupShape["writeTunnelToken"] = (token) =>
      Effect.gen(function*() {
        yield* ensureDir("tunnel", configDir, 0o755)
        yield* atomicWrite("tunnel", path(HOST_FILES.tunnelToken), `${Redacted.value(token)}\n`, 0o600)
        yield* writeSecrets({ cloudflaredToken: token })
      })

    const writeSecretFile: HostSetupShape["writeSecretFile"] = (hostPath, content) =>
      Effect.gen(function*() {
        if (!hostPath.startsWith(`${HOST_FILES.configDir}/`)) return yield* err("config", `${hostPath} is not below ${HOST_FILES.configDir}`)
        yield* ensureDir("config", configDir, 0o755)
        yield* atomicWrite("config", path(hostPath), content, 0o600)
      })

    const removeFile: HostSetupShape["removeFile"] = (hostPath) =>
      Effect.gen(function*() {
        if (!hostPath.startsWith(`${HOST_FILES.configDir}/`)) return yield* err("config", `${hostPath} is not below ${HOST_FILES.configDir}`)
        yield* Effect.tryPromise(() => unlink(path(hostPath))).pipe(
          Effect.catchAll((e) => codeOf(e) === "ENOENT" ? Effect.void : Effect.fail(err("config", `cannot remove ${path(hostPath)} (${codeOf(e)})`)))
        )
      })

    // -------------------------------------------------------------------------------------------
    // sudoers, helpers, units

    /** dpkg owns the sudoers file, helpers, golden files and units on a packaged host. */
    const packaged = Effect.promise(() => access(path(HOST_FILES.packageMarker)).then(() => true, () => false))

    const installSudoers: HostSetupShape["installSudoers"] = Effect.gen(function*() {
      if (yield* packaged) return
      const text = yield* readSource("sudoers", "sudoers/felhom-agent")
      const target = path(HOST_FILES.sudoers)
      yield* ensureDir("sudoers", dirname(target), 0o755)
      // the temp name has a '.', which sudo skips in sudoers.d: never live before it is checked
      yield* atomicWrite("sudoers", target, text, 0o440, (tmp) =>
        Effect.asVoid(runOk("sudoers", options.binaries.visudo, ["-c", "-f", tmp], "visudo -c (the sudoers drop-in does not parse; nothing was installed)")))
    }).pipe(Effect.withSpan("HostSetup.installSudoers"))

    const installHelpers: HostSetupShape["installHelpers"] = Effect.gen(function*() {
      if (yield* packaged) return
      const libexec = path(HOST_FILES.libexecDir)
      yield* ensureDir("helpers", libexec, 0o755)
      for (const h of HELPERS) yield* atomicWrite("helpers", join(libexec, h), yield* readSource("helpers", `libexec/${h}`), 0o755)
      const share = path(HOST_FILES.goldenShareDir)
      yield* ensureDir("helpers", share, 0o755)
      const golden = yield* Effect.tryPromise(() => readdir(join(options.configsDir, "golden"))).pipe(
        Effect.mapError((e) => err("helpers", `cannot list ${join(options.configsDir, "golden")} (${codeOf(e)})`))
      )
      for (const f of golden.sort()) {
        const mode = f.endsWith(".service") || f.endsWith(".path") ? 0o644 : 0o755
        yield* atomicWrite("helpers", join(share, f), yield* readSource("helpers", `golden/${f}`), mode)
      }
      // the root-owned tree of bind-mount sources (privileged.bootstrap_root), outside the state dir
      yield* ensureDir("helpers", path("/var/lib/felhom-agent-root/bootstrap"), 0o755)
    }).pipe(Effect.withSpan("HostSetup.installHelpers"))

    const installUnits: HostSetupShape["installUnits"] = Effect.gen(function*() {
      if (yield* packaged) return
      const dir = path(HOST_FILES.unitDir)
      yield* ensureDir("units", dir, 0o755)
      for (const u of UNITS) yield* atomicWrite("units", join(dir, u), yield* readSource("units", `systemd/${u}`), 0o644)
      yield* runOk("units", options.binaries.systemctl, ["daemon-reload"], "systemctl daemon-reload")
    }).pipe(Effect.withSpan("HostSetup.installUnits"))

    // enabled only once enrollment is done: a reboot before the escrow upload must not start a
    // daemon that backs up offsite under a key nobody could recover yet
    const enableUnits: HostSetupShape["enableUnits"] = Effect.gen(function*() {
      for (const u of UNITS) yield* runOk("units", options.binaries.systemctl, ["enable", u], `systemctl enable ${u}`)
    }).pipe(Effect.withSpan("HostSetup.enableUnits"))

    const pveTlsFingerprint: HostSetupShape["pveTlsFingerprint"] = Effect.gen(function*() {
      const pem = path(HOST_FILES.pveSslPem)
      const text = yield* Effect.tryPromise(() => readFile(pem)).pipe(Effect.mapError((e) => err("tls", `cannot read ${pem} (${codeOf(e)})`)))
      const cert = yield* Effect.try(() => new X509Certificate(text)).pipe(Effect.mapError(() => err("tls", `${pem} is not a PEM certificate`)))
      return cert.fingerprint256.toUpperCase()
    })

    return HostSetup.of({
      options,
      path,
      pveAccess,
      writeConfig,
      writeSecrets,
      readSecrets,
      installSudoers,
      installHelpers,
      installUnits,
      enableUnits,
      pveTlsFingerprint,
      writeTunnelToken,
      writeSecretFile,
      removeFile
    })
  })

/** The layer over explicit options. The fence: a process executor, never an HTTP client. */
export const hostSetupLayer = (options: HostSetupOptions) =>
  Layer.effect(HostSetup, makeHostSetup(options)).pipe(Layer.ensureRequirementsType<CommandExecutor.CommandExecutor>())
