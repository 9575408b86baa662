/** AgentConfig: file + env overlay, mode-aware validation, key-naming errors, and redaction. */
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Option, Redacted } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { loadConfig, overlayEnvNames, renderRedacted } from "../src/layers/Config.js"
import type { ConfigMode } from "../src/schema/config.js"

const SECRET = "7f3c2a90-5d1e-4b8a-9c6f-0e2d4a6b8c1d"
const API_KEY = "hubkey-SHOULD-NEVER-APPEAR-0123456789"
const FP = Array.from({ length: 32 }, (_, i) => (i * 7 % 256).toString(16).padStart(2, "0").toUpperCase()).join(":")

const dir = mkdtempSync(join(tmpdir(), "felhom-config-"))
let n = 0
const writeConfig = (value: unknown) => {
  const path = join(dir, `agent-${n++}.json`)
  writeFileSync(path, typeof value === "string" ? value : JSON.stringify(value))
  return path
}

const base = {
  host_id: "host-1",
  proxmox: {
    url: "https://127.0.0.1:8006",
    token_id: "felhom@pve!agent",
    token_secret: SECRET,
    tls: { fingerprint_sha256: FP }
  },
  hub: { url: "https://hub.example.net", api_key: API_KEY },
  authz: { signers: [] }
}

const load = (path: string | undefined, mode: ConfigMode, env: Record<string, string> = {}) =>
  loadConfig({ path: Option.fromNullable(path), mode }).pipe(
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
    Effect.provide(NodeFileSystem.layer),
    Effect.either
  )

const failure = (r: Either.Either<unknown, { key: string; message: string }>) => {
  if (Either.isRight(r)) throw new Error("expected a ConfigError")
  return r.left
}

describe("AgentConfig", () => {
  it.effect("loads a complete file; secrets are Redacted", () =>
    Effect.gen(function*() {
      const r = yield* load(writeConfig(base), "daemon")
      const c = Either.getOrThrow(r)
      expect(Redacted.isRedacted(c.file.proxmox!.token_secret)).toBe(true)
      expect(Redacted.value(c.file.proxmox!.token_secret)).toBe(SECRET)
      expect(c.file.proxmox!.task_timeout_seconds).toBe(3600)
      expect(c.file.privileged.mode).toBe("sudo")
      expect(c.file.state_dir).toBe("/var/lib/felhom-agent")
    }))

  it.effect("the environment overrides the file, so secrets can stay off disk", () =>
    Effect.gen(function*() {
      const path = writeConfig({ ...base, proxmox: { ...base.proxmox, token_secret: "from-file" } })
      const c = Either.getOrThrow(yield* load(path, "selftest", {
        FELHOM_AGENT_PROXMOX_TOKEN_SECRET: SECRET,
        FELHOM_AGENT_PROXMOX_TASK_TIMEOUT_SECONDS: "120",
        FELHOM_AGENT_PROXMOX_NODE: "pve2"
      }))
      expect(Redacted.value(c.file.proxmox!.token_secret)).toBe(SECRET)
      expect(c.file.proxmox!.task_timeout_seconds).toBe(120)
      expect(c.file.proxmox!.node).toBe("pve2")
    }))

  it.effect("env alone is enough when no file exists at the default path", () =>
    Effect.gen(function*() {
      // FELHOM_AGENT_CONFIG names the file explicitly, so a missing one is an error
      const explicit = failure(yield* load(undefined, "selftest", { FELHOM_AGENT_CONFIG: join(dir, "missing.json") }))
      expect(explicit.message).toContain("missing.json")
      const env = Either.getOrThrow(yield* load(undefined, "selftest", {
        FELHOM_AGENT_PROXMOX_URL: "https://[::1]:8006",
        FELHOM_AGENT_PROXMOX_TOKEN_ID: "felhom@pve!agent",
        FELHOM_AGENT_PROXMOX_TOKEN_SECRET: SECRET,
        FELHOM_AGENT_PROXMOX_TLS_INSECURE_SKIP_VERIFY: "true"
      }))
      expect(env.source).toBeUndefined()
      expect(env.file.proxmox!.tls.insecure_skip_verify).toBe(true)
    }))

  it.effect("an explicit config path that does not exist is an error naming it", () =>
    Effect.gen(function*() {
      const e = failure(yield* load(join(dir, "nope.json"), "selftest"))
      expect(e.key).toBe("--config")
      expect(e.message).toContain("nope.json")
    }))

  it.effect("mode-aware: selftest needs only proxmox; daemon needs hub, authz and host_id too", () =>
    Effect.gen(function*() {
      const onlyPve = writeConfig({ proxmox: base.proxmox })
      expect(Either.isRight(yield* load(onlyPve, "selftest"))).toBe(true)
      expect(failure(yield* load(onlyPve, "daemon")).key).toBe("host_id")
      expect(failure(yield* load(writeConfig({ ...base, authz: undefined }), "daemon")).key).toBe("authz")
      const e = failure(yield* load(writeConfig({ ...base, hub: undefined }), "daemon"))
      expect(e.key).toBe("hub")
      expect(e.message).toContain("FELHOM_AGENT_HUB")
      // `op verify` with a config needs host_id and authz, not hub or proxmox
      expect(Either.isRight(yield* load(writeConfig({ host_id: "h", authz: { signers: [] } }), "authz"))).toBe(true)
      const none = failure(yield* load(writeConfig({}), "selftest"))
      expect(none.key).toBe("proxmox")
      expect(Either.isRight(yield* load(writeConfig({}), "none"))).toBe(true)
    }))

  it.effect.each([
    [{ ...base.proxmox, url: "http://127.0.0.1:8006" }, "proxmox.url", "https://"],
    [{ ...base.proxmox, token_id: "felhom@pve" }, "proxmox.token_id", "user@realm!tokenname"],
    [{ ...base.proxmox, tls: { fingerprint_sha256: "AA:BB" } }, "proxmox.tls.fingerprint_sha256", "32 hex pairs"],
    [{ ...base.proxmox, tls: {} }, "proxmox.tls", "exactly one"],
    [{ ...base.proxmox, tls: { fingerprint_sha256: FP, insecure_skip_verify: true } }, "proxmox.tls", "exclusive"],
    [{ ...base.proxmox, url: "https://pve.lan:8006", tls: { insecure_skip_verify: true } }, "proxmox.tls.insecure_skip_verify", "non-loopback"],
    [{ ...base.proxmox, task_timeout_seconds: 1 }, "proxmox.task_timeout_seconds", "10"],
    [{ ...base.proxmox, tls: { fingerprint_sha256: FP }, colour: "blue" }, "proxmox.colour", ""]
  ])("names the bad key: %#", ([proxmox, key, hint]) =>
    Effect.gen(function*() {
      const e = failure(yield* load(writeConfig({ proxmox }), "selftest"))
      expect(e.key).toBe(key)
      expect(e.message).toContain(key)
      expect(e.message).toContain(hint)
    }))

  it.effect("a bad env value names the variable's key", () =>
    Effect.gen(function*() {
      const e = failure(yield* load(writeConfig(base), "selftest", { FELHOM_AGENT_PROXMOX_TASK_TIMEOUT_SECONDS: "soon" }))
      expect(e.key).toBe("proxmox.task_timeout_seconds")
    }))

  it.effect("no secret appears in any config error", () =>
    Effect.gen(function*() {
      const cases: Array<[unknown, Record<string, string>]> = [
        // a secret of the wrong type: the decode error would normally print the input
        [{ ...base, proxmox: { ...base.proxmox, token_secret: 12345678901234 } }, {}],
        [{ ...base, proxmox: { ...base.proxmox, token_secret: [SECRET] } }, {}],
        [{ ...base, hub: { ...base.hub, api_key: { key: API_KEY } } }, {}],
        // a secret beside another bad key: the whole-object error must still hide it
        [{ ...base, proxmox: { ...base.proxmox, url: "ftp://x" } }, {}],
        [{ ...base, proxmox: { ...base.proxmox, token_secret: "" } }, { FELHOM_AGENT_HUB_API_KEY: API_KEY, FELHOM_AGENT_PROXMOX_URL: "nope" }],
        // broken JSON around a secret: the JSON parser quotes the text near the error
        [`{"proxmox": {"token_secret": "${SECRET}" "url": 1}}`, {}]
      ]
      for (const [value, env] of cases) {
        const e = failure(yield* load(writeConfig(value), "daemon", env))
        const rendered = `${e.key} ${e.message} ${JSON.stringify(e)} ${String(e)}`
        expect(rendered).not.toContain(SECRET)
        expect(rendered).not.toContain(API_KEY)
        expect(rendered).not.toContain("12345678901234")
      }
    }))

  it.effect("--print-config renders every key with secrets redacted", () =>
    Effect.gen(function*() {
      const c = Either.getOrThrow(yield* load(writeConfig(base), "daemon"))
      const text = renderRedacted(c.file)
      expect(text).not.toContain(SECRET)
      expect(text).not.toContain(API_KEY)
      expect(text.match(/<redacted>/g)?.length).toBe(2)
      const parsed = JSON.parse(text)
      expect(parsed.proxmox.token_id).toBe("felhom@pve!agent")
      expect(parsed.privileged.timeout_seconds).toBe(600)
    }))

  it("every overlay variable is documented in configs/agent.example.json's companion doc", async () => {
    const { readFileSync } = await import("node:fs")
    const doc = readFileSync(join(__dirname, "..", "docs", "operations.md"), "utf8")
    for (const name of overlayEnvNames) expect(doc, name).toContain(name)
  })
})

describe("configs/agent.example.json", () => {
  const example = join(__dirname, "..", "configs", "agent.example.json")
  it.effect("decodes for the daemon mode", () =>
    Effect.gen(function*() {
      expect(Either.isRight(yield* load(example, "daemon"))).toBe(true)
    }))

  it("shows every key the schema knows (ca_file is documented in docs/operations.md, exclusive with the pin)", async () => {
    const { readFileSync } = await import("node:fs")
    const text = readFileSync(example, "utf8")
    const ops = readFileSync(join(__dirname, "..", "docs", "operations.md"), "utf8")
    const { AgentConfigFile, ProxmoxConfig, TlsTrust, PrivilegedConfig, HubConfig, ProtectionConfig, LocalApiConfig, ControllersConfig, GoldenConfig } =
      await import("../src/schema/config.js")
    for (const s of [AgentConfigFile, ProxmoxConfig, TlsTrust, PrivilegedConfig, HubConfig, ProtectionConfig, LocalApiConfig, ControllersConfig, GoldenConfig]) {
      for (const key of Object.keys(s.fields)) {
        expect(text.includes(`"${key}"`) || key === "ca_file", `example shows ${key}`).toBe(true)
        expect(ops.includes(`\`${key}\``) || ops.includes(`.${key}\``), `docs/operations.md documents ${key}`).toBe(true)
      }
    }
  })
})
