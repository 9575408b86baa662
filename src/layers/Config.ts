/**
 * AgentConfig: the JSON config file plus the FELHOM_AGENT_* environment overlay, validated for
 * the mode the CLI runs in. Named AgentConfig so it never shadows effect's `Config` module.
 */
import { FileSystem } from "@effect/platform"
import { Config, Context, Effect, Either, Layer, Option, ParseResult, Redacted, Schema } from "effect"
import { AgentConfigFile, AuthzConfig, type ConfigMode, HubConfig, PrivilegedConfig, ProxmoxConfig } from "../schema/config.js"
import { ConfigError } from "../schema/errors.js"
import { withoutActual } from "../schema/text.js"

export const DEFAULT_CONFIG_PATH = "/etc/felhom-agent/agent.json"
export const ENV_PREFIX = "FELHOM_AGENT_"

export interface AgentConfigShape {
  /** The file the config came from, when one was read. */
  readonly source: string | undefined
  readonly file: AgentConfigFile
}

export class AgentConfig extends Context.Tag("felhom/AgentConfig")<AgentConfig, AgentConfigShape>() {}

/**
 * Per-block settings: a service that talks to one peer is given only that peer's block, so the
 * Proxmox client cannot read the hub key and the hub client cannot read the PVE token. Each is
 * derived from AgentConfig in the composition root (`ProxmoxSettingsLive`, `HubSettingsLive`),
 * or given directly in tests (`proxmoxSettings(c)`, `hubSettings(c)`).
 */
export class ProxmoxSettings extends Context.Tag("felhom/ProxmoxSettings")<ProxmoxSettings, ProxmoxConfig>() {}
export class HubSettings extends Context.Tag("felhom/HubSettings")<HubSettings, HubConfig>() {}

/** Leaf keys the environment may set, with how the string is read. Env name = prefix + path upper-cased. */
const OVERLAY: ReadonlyArray<readonly [path: ReadonlyArray<string>, kind: "string" | "int" | "bool"]> = [
  [["host_id"], "string"],
  [["state_dir"], "string"],
  [["proxmox", "url"], "string"],
  [["proxmox", "token_id"], "string"],
  [["proxmox", "token_secret"], "string"],
  [["proxmox", "node"], "string"],
  [["proxmox", "tls", "ca_file"], "string"],
  [["proxmox", "tls", "fingerprint_sha256"], "string"],
  [["proxmox", "tls", "insecure_skip_verify"], "bool"],
  [["proxmox", "request_timeout_seconds"], "int"],
  [["proxmox", "task_timeout_seconds"], "int"],
  [["privileged", "mode"], "string"],
  [["privileged", "sudo_path"], "string"],
  [["privileged", "timeout_seconds"], "int"],
  [["hub", "url"], "string"],
  [["hub", "api_key"], "string"],
  [["hub", "ca_file"], "string"],
  [["authz", "clock_skew_seconds"], "int"],
  [["authz", "max_validity_seconds"], "int"],
  [["controllers", "registry", "password"], "string"],
  [["cloudflared", "token"], "string"]
]

export const envNameOf = (path: ReadonlyArray<string>) => ENV_PREFIX + path.join("_").toUpperCase()
export const overlayEnvNames: ReadonlyArray<string> = OVERLAY.map(([p]) => envNameOf(p))

const readLeaf = (raw: string, kind: "string" | "int" | "bool"): unknown => {
  if (kind === "int" && /^-?\d+$/.test(raw.trim())) return Number(raw.trim())
  if (kind === "bool") {
    const v = raw.trim().toLowerCase()
    if (v === "1" || v === "true" || v === "yes") return true
    if (v === "0" || v === "false" || v === "no") return false
  }
  // Left as a string: a bad int/bool then fails decoding with the key named.
  return raw
}

type Json = { [k: string]: unknown }
const isObject = (u: unknown): u is Json => typeof u === "object" && u !== null && !Array.isArray(u)

const setPath = (root: Json, path: ReadonlyArray<string>, value: unknown): void => {
  let node = root
  for (const seg of path.slice(0, -1)) {
    const next = node[seg]
    if (!isObject(next)) node[seg] = {}
    node = node[seg] as Json
  }
  node[path[path.length - 1]!] = value
}

/** Reads the overlay through effect's ConfigProvider (the environment by default). */
const envOverlay = Effect.forEach(OVERLAY, ([path, kind]) =>
  Config.option(Config.string(envNameOf(path))).pipe(
    Effect.map(Option.map((raw) => [path, readLeaf(raw, kind)] as const))
  )).pipe(
    Effect.map((entries) => entries.flatMap(Option.toArray)),
    Effect.mapError((e) => new ConfigError({ key: "environment", message: `could not read ${ENV_PREFIX}* variables: ${e._tag}` }))
  )

/**
 * Messages say what was expected, never what was found: Schema's default text appends
 * `actual <input>`, and for an optional block (a union with undefined) that input is the whole
 * block, secrets included. So the `actual` part is cut from every issue, and the union's
 * "Expected undefined" noise is dropped when a deeper issue explains the same block.
 */
const formatParseError = (e: ParseResult.ParseError): ConfigError => {
  const all = ParseResult.ArrayFormatter.formatErrorSync(e).map((i) => ({
    path: i.path.length === 0 ? "(root)" : i.path.map(String).join("."),
    message: withoutActual(i.message)
  }))
  const issues = all.filter((i) =>
    !(i.message === "Expected undefined" && all.some((j) => j !== i && j.path.startsWith(`${i.path}.`)))
  )
  const key = issues[0]?.path ?? "(root)"
  return new ConfigError({ key, message: issues.map((i) => `${i.path}: ${i.message}`).join("; ") })
}

export const decodeConfigObject = (raw: unknown): Either.Either<AgentConfigFile, ConfigError> =>
  Either.mapLeft(
    Schema.decodeUnknownEither(AgentConfigFile)(raw, { errors: "all", onExcessProperty: "error" }),
    formatParseError
  )

const isLoopbackHost = (hostname: string): boolean => {
  const h = hostname.replace(/^\[|\]$/g, "")
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)
}
export const isLoopbackUrl = (url: string): boolean => {
  try {
    return isLoopbackHost(new URL(url).hostname)
  } catch {
    return false
  }
}

/** Checks the one-of TLS trust rule and the loopback-only escape hatch. */
export const validateProxmox = (p: ProxmoxConfig): Either.Either<ProxmoxConfig, ConfigError> => {
  const modes = [p.tls.ca_file !== undefined, p.tls.fingerprint_sha256 !== undefined, p.tls.insecure_skip_verify]
    .filter(Boolean).length
  if (modes === 0) {
    return Either.left(new ConfigError({
      key: "proxmox.tls",
      message: "proxmox.tls: set exactly one of ca_file, fingerprint_sha256 or insecure_skip_verify (loopback only)"
    }))
  }
  if (modes > 1) {
    return Either.left(new ConfigError({
      key: "proxmox.tls",
      message: "proxmox.tls: ca_file, fingerprint_sha256 and insecure_skip_verify are exclusive; set exactly one"
    }))
  }
  if (p.tls.insecure_skip_verify && !isLoopbackUrl(p.url)) {
    return Either.left(new ConfigError({
      key: "proxmox.tls.insecure_skip_verify",
      message: "proxmox.tls.insecure_skip_verify is refused for a non-loopback proxmox.url; pin fingerprint_sha256 instead"
    }))
  }
  return Either.right(p)
}

const missing = (key: string, mode: ConfigMode) =>
  new ConfigError({ key, message: `${key}: required for '${mode}' but not set (config file or ${envNameOf(key.split("."))})` })

/** Mode-aware validation: each mode asks for exactly the blocks it uses. */
export const validateForMode = (
  file: AgentConfigFile,
  mode: ConfigMode
): Either.Either<AgentConfigFile, ConfigError> => {
  const needsProxmox = mode === "selftest" || mode === "daemon"
  if (needsProxmox) {
    if (file.proxmox === undefined) return Either.left(missing("proxmox", mode))
    const checked = validateProxmox(file.proxmox)
    if (Either.isLeft(checked)) return Either.left(checked.left)
  }
  if (mode === "daemon" || mode === "authz") {
    if (file.host_id === undefined) return Either.left(missing("host_id", mode))
    if (file.authz === undefined) return Either.left(missing("authz", mode))
  }
  if (mode === "daemon" && file.hub === undefined) return Either.left(missing("hub", mode))
  return Either.right(file)
}

export interface LoadOptions {
  /** Explicit --config path; a missing explicit file is an error, a missing default file is not. */
  readonly path: Option.Option<string>
  readonly mode: ConfigMode
}

export const loadConfig = (opts: LoadOptions) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const envPath = yield* Config.option(Config.string(`${ENV_PREFIX}CONFIG`)).pipe(
      Effect.orElseSucceed(() => Option.none<string>())
    )
    const explicit = Option.orElse(opts.path, () => envPath)
    const path = Option.getOrElse(explicit, () => DEFAULT_CONFIG_PATH)
    const exists = yield* fs.exists(path).pipe(Effect.orElseSucceed(() => false))
    if (!exists && Option.isSome(explicit)) {
      return yield* new ConfigError({ key: "--config", message: `config file ${path} does not exist` })
    }
    let raw: unknown = {}
    if (exists) {
      const text = yield* fs.readFileString(path).pipe(
        Effect.mapError((e) => new ConfigError({ key: "--config", message: `cannot read ${path}: ${e.message}` }))
      )
      raw = yield* Effect.try({
        try: () => JSON.parse(text) as unknown,
        // The JSON parser's message quotes file content, which may hold a secret: keep only the position.
        catch: (e) => new ConfigError({
          key: "--config",
          message: `${path} is not valid JSON${e instanceof SyntaxError ? positionOf(e.message) : ""}`
        })
      })
      if (!isObject(raw)) {
        return yield* new ConfigError({ key: "(root)", message: `${path}: expected a JSON object at the top level` })
      }
    }
    const merged: Json = structuredClone(raw as Json)
    for (const [leafPath, value] of yield* envOverlay) setPath(merged, leafPath, value)
    const file = yield* decodeConfigObject(merged)
    const valid = yield* validateForMode(file, opts.mode)
    return { source: exists ? path : undefined, file: valid } satisfies AgentConfigShape
  })

const positionOf = (msg: string): string => {
  const m = /position (\d+)/.exec(msg)
  return m === null ? "" : ` (at byte ${m[1]})`
}

export const layer = (opts: LoadOptions) => Layer.effect(AgentConfig, loadConfig(opts))

/** For tests and in-process composition: an already-decoded config. */
export const layerFrom = (file: AgentConfigFile) => Layer.succeed(AgentConfig, { source: undefined, file })

/** The proxmox block of AgentConfig; a ConfigError when the mode did not require it and it is absent. */
export const ProxmoxSettingsLive: Layer.Layer<ProxmoxSettings, ConfigError, AgentConfig> = Layer.effect(
  ProxmoxSettings,
  Effect.flatMap(AgentConfig, ({ file }) =>
    file.proxmox === undefined
      ? Effect.fail(new ConfigError({ key: "proxmox", message: "proxmox: the Proxmox block is not configured" }))
      : Effect.succeed(file.proxmox))
)

/** The hub block of AgentConfig; a ConfigError when absent. */
export const HubSettingsLive: Layer.Layer<HubSettings, ConfigError, AgentConfig> = Layer.effect(
  HubSettings,
  Effect.flatMap(AgentConfig, ({ file }) =>
    file.hub === undefined
      ? Effect.fail(new ConfigError({ key: "hub", message: "hub: the hub block is not configured" }))
      : Effect.succeed(file.hub))
)

/** A given proxmox block (tests, benches). */
export const proxmoxSettings = (config: ProxmoxConfig): Layer.Layer<ProxmoxSettings> => Layer.succeed(ProxmoxSettings, config)

/** A given hub block (tests, benches). */
export const hubSettings = (config: HubConfig): Layer.Layer<HubSettings> => Layer.succeed(HubSettings, config)

/** Renders the effective config as JSON with every secret replaced by "<redacted>". */
export const renderRedacted = (file: AgentConfigFile): string => {
  const walk = (v: unknown): unknown => {
    if (Redacted.isRedacted(v)) return "<redacted>"
    if (Array.isArray(v)) return v.map(walk)
    if (typeof v === "object" && v !== null) {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]))
    }
    return v
  }
  return JSON.stringify(walk(file), null, 2)
}

export { AuthzConfig, HubConfig, PrivilegedConfig, ProxmoxConfig }
