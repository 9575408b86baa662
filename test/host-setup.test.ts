/**
 * HostSetup (issue 13): pveum steps against a fake pveum keeping PVE's user database, the config
 * and secrets files, the sudoers drop-in checked by visudo before it lands, the helpers and units,
 * the PVE TLS pin. Runs as root (files must be root-owned). The token secret must never be in any
 * argv, error or non-0600 file.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Redacted } from "effect"
import { execFileSync } from "node:child_process"
import { cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { FELHOM_ROLE_PRIVS, HostSetup, type HostSetupError, HOST_FILES } from "../src/layers/HostSetup.js"
import { CONFIGS_DIR, type FakeHost, makeFakeHost } from "./host-setup-support.js"
import { isRoot } from "./privileged-support.js"

const hosts: Array<FakeHost> = []
afterAll(() => {
  for (const h of hosts) h.cleanup()
})
const fresh = (...a: Parameters<typeof makeFakeHost>) => {
  const h = makeFakeHost(...a)
  hosts.push(h)
  return h
}

const SECRET = "11111111-2222-4333-8444-555555555555"

const withSetup = <A>(h: FakeHost, f: (s: typeof HostSetup.Service) => Effect.Effect<A, HostSetupError>, extra = {}) =>
  Effect.flatMap(HostSetup, (s) => Effect.either(f(s))).pipe(Effect.provide(h.layer(extra)))

const ok = <A>(r: Either.Either<A, HostSetupError>): A => {
  if (Either.isLeft(r)) throw new Error(`expected success, got ${r.left.step}: ${r.left.message}`)
  return r.right
}
const bad = <A>(r: Either.Either<A, HostSetupError>): HostSetupError => {
  if (Either.isRight(r)) throw new Error("expected a HostSetupError")
  return r.left
}

/** The role's privilege list as docs/operations.md §2 writes it. */
const documentedPrivs = (): ReadonlyArray<string> => {
  const doc = readFileSync(join(__dirname, "..", "docs", "operations.md"), "utf8")
  const m = /pveum role add FelhomAgent -privs "([^"]+)"/.exec(doc)
  if (m === null) throw new Error("docs/operations.md lost its pveum role add line")
  return m[1]!.replace(/\\\n/g, " ").split(/\s+/).filter((p) => p.length > 0)
}

const allArgv = (h: FakeHost) => [...h.calls("pveum"), ...h.calls("systemctl"), ...h.calls("visudo")].flat().join("\n")

describe.skipIf(!isRoot)("HostSetup.pveAccess (fake pveum)", () => {
  it.effect("a fresh host: role with exactly the documented 16 privileges, user, privsep token (json), both ACLs on /", () =>
    Effect.gen(function*() {
      const h = fresh()
      const r = ok(yield* withSetup(h, (s) => s.pveAccess({ haveSecret: false })))
      expect(r.role).toBe("added")
      expect(r.user).toBe("added")
      expect(Option.map(r.tokenSecret, Redacted.value)).toEqual(Option.some(SECRET))
      expect([...FELHOM_ROLE_PRIVS].sort()).toEqual([...documentedPrivs()].sort())
      expect(FELHOM_ROLE_PRIVS).toHaveLength(16)
      const st = h.state()
      expect([...st.roles["FelhomAgent"]!].sort()).toEqual([...documentedPrivs()].sort())
      expect(st.users).toEqual(["felhom-agent@pve"])
      expect(st.tokens).toEqual({ agent: { privsep: 1 } })
      expect(st.acl).toEqual([
        { path: "/", ugid: "felhom-agent@pve", roleid: "FelhomAgent", type: "user" },
        { path: "/", ugid: "felhom-agent@pve!agent", roleid: "FelhomAgent", type: "token" }
      ])
      const add = h.calls("pveum").find((c) => c[1] === "token" && c[2] === "add")
      expect(add).toEqual(["user", "token", "add", "felhom-agent@pve", "agent", "--privsep", "1", "--comment", "felhom-agent", "--output-format", "json"])
      expect(allArgv(h)).not.toContain(SECRET)
    }))

  it.effect("a re-run with the secret stored changes nothing and makes no second token", () =>
    Effect.gen(function*() {
      const h = fresh()
      ok(yield* withSetup(h, (s) => s.pveAccess({ haveSecret: false })))
      const before = h.state()
      const n = h.calls("pveum").length
      const again = ok(yield* withSetup(h, (s) => s.pveAccess({ haveSecret: true })))
      expect(again).toEqual({ role: "unchanged", user: "existed", tokenSecret: Option.none() })
      expect(h.state()).toEqual(before)
      const mutating = h.calls("pveum").slice(n).filter((c) => ["add", "modify", "remove"].includes(c[c[0] === "user" && c[1] === "token" ? 2 : 1]!) && c[0] !== "acl")
      expect(mutating).toEqual([])
    }))

  it.effect("a role with other privileges is set to exactly the list (role modify, no --append)", () =>
    Effect.gen(function*() {
      const h = fresh({ state: { roles: { FelhomAgent: ["VM.Audit", "Sys.Modify"] } } })
      const r = ok(yield* withSetup(h, (s) => s.pveAccess({ haveSecret: false })))
      expect(r.role).toBe("modified")
      expect([...h.state().roles["FelhomAgent"]!].sort()).toEqual([...FELHOM_ROLE_PRIVS].sort())
      const modify = h.calls("pveum").find((c) => c[0] === "role" && c[1] === "modify")
      expect(modify).toEqual(["role", "modify", "FelhomAgent", "--privs", FELHOM_ROLE_PRIVS.join(",")])
    }))

  it.effect("a token whose secret is lost (or without privsep) is removed and made again", () =>
    Effect.gen(function*() {
      const h = fresh({ state: { users: ["felhom-agent@pve"], tokens: { agent: { privsep: 0 } }, nextSecret: "aaaaaaaa-0000-4000-8000-000000000001" } })
      const r = ok(yield* withSetup(h, (s) => s.pveAccess({ haveSecret: true })))
      expect(Option.map(r.tokenSecret, Redacted.value)).toEqual(Option.some("aaaaaaaa-0000-4000-8000-000000000001"))
      expect(h.state().tokens).toEqual({ agent: { privsep: 1 } })
      const names = h.calls("pveum").filter((c) => c[1] === "token").map((c) => c[2])
      expect(names).toEqual(["list", "remove", "add"])
    }))

  it.effect("a failing pveum names the command and exit status; a token add without a secret never echoes its output", () =>
    Effect.gen(function*() {
      const h = fresh({ state: { failOn: "acl modify" } })
      const e = bad(yield* withSetup(h, (s) => s.pveAccess({ haveSecret: false })))
      expect(e.step).toBe("pveum")
      expect(e.message).toContain("pveum acl modify (user) exited with status 1")
      expect(e.message).not.toContain(SECRET)
      const odd = fresh({ state: { nextSecret: "has a \"quote\" and spaces" } })
      const e2 = bad(yield* withSetup(odd, (s) => s.pveAccess({ haveSecret: false })))
      expect(e2.message).not.toContain("quote")
    }))
})

describe.skipIf(!isRoot)("HostSetup files", () => {
  it.effect("secrets.env 0600 root with both env names; a later write keeps the other; agent.json 0644 refuses a secret", () =>
    Effect.gen(function*() {
      const h = fresh()
      ok(yield* withSetup(h, (s) => s.writeSecrets({ proxmoxTokenSecret: Redacted.make(SECRET) })))
      ok(yield* withSetup(h, (s) => s.writeSecrets({ hubApiKey: Redacted.make("hubkey-0123456789abcdef") })))
      const path = join(h.prefix, HOST_FILES.secretsEnv)
      expect(lstatSync(path).mode & 0o7777).toBe(0o600)
      expect(lstatSync(path).uid).toBe(0)
      const text = readFileSync(path, "utf8")
      expect(text).toContain(`FELHOM_AGENT_PROXMOX_TOKEN_SECRET=${SECRET}\n`)
      expect(text).toContain("FELHOM_AGENT_HUB_API_KEY=hubkey-0123456789abcdef\n")
      const read = ok(yield* withSetup(h, (s) => s.readSecrets))
      expect(Option.map(read.proxmoxTokenSecret, Redacted.value)).toEqual(Option.some(SECRET))
      expect(Option.map(read.hubApiKey, Redacted.value)).toEqual(Option.some("hubkey-0123456789abcdef"))
      const e = bad(yield* withSetup(h, (s) => s.writeConfig(JSON.stringify({ proxmox: { token_secret: SECRET } }))))
      expect(e.message).not.toContain(SECRET)
      expect(existsSync(join(h.prefix, HOST_FILES.agentJson))).toBe(false)
      ok(yield* withSetup(h, (s) => s.writeConfig(JSON.stringify({ host_id: "h1" }))))
      expect(lstatSync(join(h.prefix, HOST_FILES.agentJson)).mode & 0o7777).toBe(0o644)
      const bad1 = bad(yield* withSetup(h, (s) => s.writeSecrets({ hubApiKey: Redacted.make("with space") })))
      expect(bad1.message).not.toContain("with space")
      expect(readdirSync(join(h.prefix, "etc", "felhom-agent")).filter((f) => f.includes(".tmp-"))).toEqual([])
    }))

  it.effect("sudoers: the shipped file lands 0440 after visudo -c -f <temp>; a broken one never lands and the good one stays", () =>
    Effect.gen(function*() {
      const h = fresh()
      ok(yield* withSetup(h, (s) => s.installSudoers))
      const target = join(h.prefix, HOST_FILES.sudoers)
      expect(readFileSync(target, "utf8")).toBe(readFileSync(join(CONFIGS_DIR, "sudoers", "felhom-agent"), "utf8"))
      expect(lstatSync(target).mode & 0o7777).toBe(0o440)
      const checked = h.calls("visudo")
      expect(checked).toHaveLength(1)
      expect(checked[0]!.slice(0, 2)).toEqual(["-c", "-f"])
      expect(checked[0]![2]).toMatch(/\/etc\/sudoers\.d\/\.felhom-agent\.tmp-[0-9a-f]+$/)
      // a broken drop-in
      const broken = join(h.base, "configs-broken")
      cpSync(CONFIGS_DIR, broken, { recursive: true })
      writeFileSync(join(broken, "sudoers", "felhom-agent"), "felhom-agent ALL=(root) NOPASSWD: BROKEN (((\n")
      const e = bad(yield* withSetup(h, (s) => s.installSudoers, { configsDir: broken }))
      expect(e.step).toBe("sudoers")
      expect(e.message).toContain("nothing was installed")
      expect(readFileSync(target, "utf8")).toBe(readFileSync(join(CONFIGS_DIR, "sudoers", "felhom-agent"), "utf8"))
      expect(readdirSync(join(h.prefix, "etc", "sudoers.d"))).toEqual(["felhom-agent"])
      // a fresh host with the broken file: nothing at all
      const h2 = fresh()
      bad(yield* withSetup(h2, (s) => s.installSudoers, { configsDir: broken }))
      expect(readdirSync(join(h2.prefix, "etc", "sudoers.d"))).toEqual([])
    }))

  it.effect("units: installed 0644 and daemon-reload, enabled only by enableUnits (never started); the unit loads secrets.env", () =>
    Effect.gen(function*() {
      const h = fresh()
      ok(yield* withSetup(h, (s) => s.installUnits))
      const unit = join(h.prefix, HOST_FILES.unitDir, "felhom-agent.service")
      expect(lstatSync(unit).mode & 0o7777).toBe(0o644)
      expect(readFileSync(unit, "utf8")).toMatch(/^EnvironmentFile=-?\/etc\/felhom-agent\/secrets\.env$/m)
      // a reboot between the units step and the escrow upload must not start the daemon
      expect(h.calls("systemctl")).toEqual([["daemon-reload"]])
      ok(yield* withSetup(h, (s) => s.enableUnits))
      expect(h.calls("systemctl")).toEqual([["daemon-reload"], ["enable", "felhom-agent.service"]])
      ok(yield* withSetup(h, (s) => s.installHelpers))
      for (const helper of ["felhom-pbskey", "felhom-bootstrap", "felhom-golden", "felhom-mount-unit"]) {
        const p = join(h.prefix, HOST_FILES.libexecDir, helper)
        expect(lstatSync(p).mode & 0o7777).toBe(0o755)
        expect(readFileSync(p, "utf8")).toBe(readFileSync(join(CONFIGS_DIR, "libexec", helper), "utf8"))
      }
      expect(lstatSync(join(h.prefix, "var/lib/felhom-agent-root/bootstrap")).isDirectory()).toBe(true)
    }))

  it.effect("the TLS pin is the SHA-256 of pve-ssl.pem as openssl prints it", () =>
    Effect.gen(function*() {
      const h = fresh()
      const dir = join(h.prefix, "etc", "pve", "local")
      mkdirSync(dir, { recursive: true })
      execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=pve", "-days", "1",
        "-keyout", join(h.base, "k.pem"), "-out", join(dir, "pve-ssl.pem")], { stdio: "ignore" })
      const expected = execFileSync("openssl", ["x509", "-in", join(dir, "pve-ssl.pem"), "-noout", "-fingerprint", "-sha256"], { encoding: "utf8" })
        .trim().replace(/^.*=/, "")
      expect(ok(yield* withSetup(h, (s) => s.pveTlsFingerprint))).toBe(expected)
      writeFileSync(join(dir, "pve-ssl.pem"), "not a cert")
      expect(bad(yield* withSetup(h, (s) => s.pveTlsFingerprint)).step).toBe("tls")
    }))

  it.effect("the tunnel token lands 0600", () =>
    Effect.gen(function*() {
      const h = fresh()
      ok(yield* withSetup(h, (s) => s.writeTunnelToken(Redacted.make("tunnel-token-xyz"))))
      const p = join(h.prefix, HOST_FILES.tunnelToken)
      expect(lstatSync(p).mode & 0o7777).toBe(0o600)
      expect(readFileSync(p, "utf8")).toBe("tunnel-token-xyz\n")
      // and into secrets.env for the daemon's cloudflared manager (issue 14), beside the other secrets
      ok(yield* withSetup(h, (s) => s.writeSecrets({ hubApiKey: Redacted.make("hubkey-0123456789abcdef") })))
      const env = readFileSync(join(h.prefix, HOST_FILES.secretsEnv), "utf8")
      expect(env).toContain("FELHOM_AGENT_CLOUDFLARED_TOKEN=tunnel-token-xyz\n")
      expect(env).toContain("FELHOM_AGENT_HUB_API_KEY=hubkey-0123456789abcdef\n")
      expect(lstatSync(join(h.prefix, HOST_FILES.secretsEnv)).mode & 0o7777).toBe(0o600)
      const e = bad(yield* withSetup(h, (s) => s.writeConfig(JSON.stringify({ cloudflared: { token: "tunnel-token-xyz" } }))))
      expect(e.message).not.toContain("tunnel-token-xyz")
    }))

  it.effect("a packaged host (issue 14): sudoers, helpers, golden files and units are dpkg's; enroll writes none of them", () =>
    Effect.gen(function*() {
      const h = fresh()
      mkdirSync(join(h.prefix, "usr/share/felhom-agent"), { recursive: true })
      writeFileSync(join(h.prefix, HOST_FILES.packageMarker), readFileSync(join(CONFIGS_DIR, "sudoers", "felhom-agent")))
      ok(yield* withSetup(h, (s) => s.installSudoers))
      ok(yield* withSetup(h, (s) => s.installHelpers))
      ok(yield* withSetup(h, (s) => s.installUnits))
      expect(existsSync(join(h.prefix, HOST_FILES.sudoers))).toBe(false)
      expect(existsSync(join(h.prefix, HOST_FILES.libexecDir))).toBe(false)
      expect(existsSync(join(h.prefix, HOST_FILES.goldenShareDir))).toBe(false)
      // a unit copy in /etc/systemd/system would shadow every later packaged unit
      expect(existsSync(join(h.prefix, HOST_FILES.unitDir, "felhom-agent.service"))).toBe(false)
      expect(h.calls("visudo")).toEqual([])
      // enabling is still enroll's last step
      ok(yield* withSetup(h, (s) => s.enableUnits))
      expect(h.calls("systemctl")).toEqual([["enable", "felhom-agent.service"]])
    }))
})
