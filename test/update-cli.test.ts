/**
 * The self-update commands through the built bin (issue 14): `release manifest` and `release
 * verify` as the package build and the root helper run them (a config with only an update block,
 * no state DB touched), `update --status` on a scratch prefix, and `update --release` refusing,
 * after verifying the hub's manifest, on a state_dir the root helper does not stage from.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { MANIFEST_FILE } from "../src/schema/release.js"
import { devHubCaPem, serveDevHub } from "../src/sim/hub/index.js"
import { cleanEnv, nodeRunner } from "./bin-support.js"
import { makeRelease, makeReleaseKey, makeTree, scratch, sshSign } from "./update-support.js"

const key = makeReleaseKey()
const configFile = join(scratch("cli-cfg"), "agent.json")
const stateDir = scratch("cli-state")
writeFileSync(configFile, JSON.stringify({ state_dir: stateDir, update: { release_signers: [key.line] } }))
const runner = nodeRunner((extra) => cleanEnv(configFile, extra))
afterAll(() => runner.kill())

describe("release manifest / release verify (built bin)", () => {
  it("manifest, ssh-keygen sign, verify: exit 0 'verified'; a tampered tree: exit 1, one line; no state DB", async () => {
    const dir = scratch("cli-rel")
    makeTree(dir, "2.0.0")
    const made = await runner.run(["release", "manifest", "--dir", dir, "--release", "2.0.0", "--node", "20.20.2"])
    expect(made.status, made.stderr).toBe(0)
    expect(made.stdout).toMatch(/wrote .*RELEASE\.json: 2\.0\.0, 4 files/)
    sshSign(key, join(dir, MANIFEST_FILE))
    const ok = await runner.run(["release", "verify", "--dir", dir, "--config", configFile, "--expect-version", "2.0.0"])
    expect([ok.status, ok.stdout.trim()]).toEqual([0, "verified 2.0.0"])
    const wrong = await runner.run(["release", "verify", "--dir", dir, "--config", configFile, "--expect-version", "2.0.1"])
    expect(wrong.status).toBe(1)
    writeFileSync(join(dir, "lib", "felhom-agent.cjs"), "// replaced\n")
    const bad = await runner.run(["release", "verify", "--dir", dir, "--config", configFile])
    expect(bad.status).toBe(1)
    expect(bad.stderr.trim().split("\n")).toHaveLength(1)
    expect(bad.stderr).toMatch(/lib\/felhom-agent\.cjs/)
    // verify opened no state database
    expect(existsSync(join(stateDir, "state.db"))).toBe(false)
  }, 120_000)
})

describe("update (built bin and in-process)", () => {
  it("--status: update.json, current and last-good with their versions", async () => {
    const prefix = scratch("cli-prefix")
    mkdirSync(join(prefix, "slots", "a"), { recursive: true })
    mkdirSync(join(prefix, "package"), { recursive: true })
    writeFileSync(join(prefix, "slots", "a", MANIFEST_FILE), JSON.stringify({ version: "1.4.0" }))
    writeFileSync(join(prefix, "package", MANIFEST_FILE), JSON.stringify({ version: "1.3.0" }))
    symlinkSync("slots/a", join(prefix, "current"))
    symlinkSync("package", join(prefix, "last-good"))
    writeFileSync(join(prefix, "update.json"), JSON.stringify({ state: "trial", slot: "slots/a", version: "1.4.0", attempt: 1 }))
    const cfg = join(prefix, "agent.json")
    writeFileSync(cfg, JSON.stringify({ update: { prefix } }))
    const r = await runner.run(["update", "--status", "--config", cfg])
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/update\.json: trial, version 1\.4\.0, slot slots\/a/)
    expect(r.stdout).toMatch(/current: +slots\/a \(1\.4\.0\)/)
    expect(r.stdout).toMatch(/last-good: +package \(1\.3\.0\)/)
    rmSync(join(prefix, "update.json"))
    expect((await runner.run(["update", "--status", "--config", cfg])).stdout).toMatch(/update\.json: none \(idle\)/)
  }, 120_000)

  it.live("--release against the dev hub: the signed manifest is shown, then a non-default state_dir is refused before anything is journaled", () =>
    Effect.scoped(Effect.gen(function*() {
      const TOKEN = "fhk_cli-update-api-key-0123456789abcdefXYZ"
      const s = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { [TOKEN]: "h1" } })
      const r = makeRelease(key, "1.4.0")
      yield* s.hub.addRelease(r.dir)
      const ca = join(scratch("cli-ca"), "ca.pem")
      writeFileSync(ca, devHubCaPem)
      const cfg = join(scratch("cli-upd"), "agent.json")
      writeFileSync(cfg, JSON.stringify({ host_id: "h1", state_dir: stateDir, hub: { url: s.url, api_key: TOKEN, ca_file: ca }, update: { release_signers: [key.line] } }))
      const out = yield* Effect.promise(() => runner.run(["update", "--release", "1.4.0", "--yes", "--config", cfg]))
      expect(out.status).toBe(1)
      expect(out.stderr).toMatch(/release 1\.4\.0 \(node 20\.20\.2, 4 files, .*manifest sha256 [0-9a-f]{64}/)
      expect(out.stderr).toMatch(/self-update needs the default state_dir/)
      expect(out.stderr + out.stdout).not.toContain(TOKEN)
      expect(readFileSync(cfg, "utf8")).toContain(TOKEN)
      expect(existsSync(join(stateDir, "update"))).toBe(false)
    })), 120_000)
})
