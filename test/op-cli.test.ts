/**
 * Operator tooling through the shipped CLI with a real ssh-keygen key:
 * `op new | op sign | op verify` round-trips, each rejection names its stage, and
 * `sshsig verify` agrees with `ssh-keygen -Y check-novalidate` on every committed fixture.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { execFile, execFileSync, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const root = join(__dirname, "..")
const bin = join(root, "bin", "felhom-agent.cjs")
const dir = mkdtempSync(join(tmpdir(), "felhom-op-"))
const HOST = "host-7f3c2a90"
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_"))) as NodeJS.ProcessEnv
const run = (args: Array<string>, input?: Buffer) =>
  spawnSync(process.execPath, [bin, ...args], { env: cleanEnv, encoding: "utf8", timeout: 60_000, ...(input ? { input } : {}) })

beforeAll(() => {
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "alice@test", "-f", join(dir, "alice")])
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "mallory@test", "-f", join(dir, "mallory")])
  const pub = readFileSync(join(dir, "alice.pub"), "utf8").trim()
  writeFileSync(join(dir, "signers.txt"), `# operators\nrole=operational,key-id=alice ${pub}\n`)
})

const newOp = (name: string, extra: Array<string> = []) => {
  const out = join(dir, name)
  const r = run(["op", "new", "--op", "decommission", "--host", HOST, "--guest", "105", "--key-id", "alice",
    "--params", "{\"reason\":\"test\"}", "--expires-in", "30 minutes", "--out", out, ...extra])
  expect(r.status, r.stderr).toBe(0)
  return out
}
const signWith = (file: string, key = "alice") => run(["op", "sign", "--key", join(dir, key), "--in", file])
const verify = (file: string, extra: Array<string> = [], hostId = HOST) =>
  run(["op", "verify", "--blob", file, "--signers", join(dir, "signers.txt"), "--host-id", hostId, ...extra])

describe("op new | op sign | op verify", () => {
  it("round-trips with a real ssh-keygen key, and verifying twice consumes nothing", () => {
    const file = newOp("op1.json")
    const blob = JSON.parse(readFileSync(file, "utf8"))
    expect(Object.keys(blob)).toEqual(["op", "host_id", "guest_id", "params", "nonce", "not_before", "expires_at", "key_id"])
    expect(blob.nonce).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(signWith(file).status).toBe(0)
    expect(readFileSync(`${file}.sig`, "utf8")).toMatch(/^-----BEGIN SSH SIGNATURE-----\n/)
    const r = verify(file, ["--json"])
    expect(r.status, r.stderr).toBe(0)
    const verdict = JSON.parse(r.stdout)
    expect(verdict).toMatchObject({ valid: true, stage: null, op: { op: "decommission", host_id: HOST, guest_id: 105 } })
    expect(verdict.op.signer).toMatchObject({ key_id: "alice", role: "operational" })
    expect(verify(file).status).toBe(0) // a local check never burns the nonce
  })

  it("ssh-keygen's own verifier accepts what op sign produced", () => {
    const file = newOp("op2.json")
    signWith(file)
    const allowed = join(dir, "allowed_signers")
    writeFileSync(allowed, `alice ${readFileSync(join(dir, "alice.pub"), "utf8")}`)
    const r = spawnSync("ssh-keygen", ["-Y", "verify", "-f", allowed, "-I", "alice", "-n", "felhom-op-v1", "-s", `${file}.sig`], {
      input: readFileSync(file),
      encoding: "utf8"
    })
    expect(r.status, r.stderr).toBe(0)
  })

  it.each([
    ["another host", (f: string) => verify(f, [], "host-other").stdout, "target"],
    ["an unknown signer", (f: string) => {
      signWith(f, "mallory")
      return verify(f).stdout
    }, "allow_list"],
    ["a changed byte", (f: string) => {
      writeFileSync(f, readFileSync(f, "utf8").replace("\"test\"", "\"tesT\""))
      return verify(f).stdout
    }, "signature"]
  ])("rejects %s, naming the stage, exit 1", (_name, act, stage) => {
    const file = newOp(`op-${stage}.json`)
    signWith(file)
    const out = act(file)
    expect(out).toContain(`rejected at stage ${stage}`)
    const r = verify(file, [], stage === "target" ? "host-other" : HOST)
    expect(r.status).toBe(1)
  })

  it("an expired op is rejected at the time stage", () => {
    const file = newOp("op-expired.json", ["--not-before", "2020-01-01T00:00:00Z"])
    // rewrite expiry into the past and re-sign: the signature is valid, the window is not
    writeFileSync(file, readFileSync(file, "utf8").replace(/"expires_at":"[^"]+"/, "\"expires_at\":\"2020-01-02T00:00:00Z\""))
    signWith(file)
    const r = verify(file, ["--json"])
    expect(r.status).toBe(1)
    expect(JSON.parse(r.stdout)).toMatchObject({ valid: false, stage: "time", error: "Expired" })
  })

  it("op new sets not_before to now by default; validity is measured from not_before", () => {
    const before = Math.floor(Date.now() / 1000) * 1000
    const blob = JSON.parse(readFileSync(newOp("op-nb.json"), "utf8"))
    const after = Date.now()
    expect(blob.not_before).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/)
    const nb = Date.parse(blob.not_before)
    expect(nb).toBeGreaterThanOrEqual(before)
    expect(nb).toBeLessThanOrEqual(after)
    expect(Date.parse(blob.expires_at) - nb).toBe(30 * 60_000) // --expires-in '30 minutes'
    // --not-before overrides it, and the window starts there
    const later = JSON.parse(readFileSync(newOp("op-nb2.json", ["--not-before", "2099-01-01T10:00:00Z"]), "utf8"))
    expect(later.not_before).toBe("2099-01-01T10:00:00Z")
    expect(later.expires_at).toBe("2099-01-01T10:30:00Z")
  })

  it.each([
    ["100000000 days"],
    ["8 days"],
    ["-5 minutes"],
    ["0 seconds"],
    ["Infinity"],
    ["soon"]
  ])("op new --expires-in '%s': exit 2 with one line stating the rule, no stack trace", (expiresIn) => {
    const r = run(["op", "new", "--op", "decommission", "--host", HOST, "--key-id", "alice", "--expires-in", expiresIn])
    expect(r.status, r.stderr).toBe(2)
    expect(r.stdout).toBe("")
    const lines = r.stderr.trim().split("\n")
    expect(lines, r.stderr).toHaveLength(1)
    expect(lines[0]).toMatch(/^felhom-agent: --expires-in/)
    expect(lines[0]).toContain("positive finite duration of at most 7 days")
  })

  it("op new --expires-in '7 days' is the longest accepted", () => {
    const r = run(["op", "new", "--op", "decommission", "--host", HOST, "--key-id", "alice", "--expires-in", "7 days"])
    expect(r.status, r.stderr).toBe(0)
    const blob = JSON.parse(r.stdout)
    expect(Date.parse(blob.expires_at) - Date.parse(blob.not_before)).toBe(7 * 86_400_000)
  })

  it("op new --not-before that is not RFC 3339 UTC: exit 2, one line", () => {
    const r = run(["op", "new", "--op", "decommission", "--host", HOST, "--key-id", "alice", "--not-before", "2026-01-01"])
    expect(r.status).toBe(2)
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toContain("--not-before")
  })

  it("usage errors exit 2", () => {
    const file = newOp("op-usage.json")
    signWith(file)
    const noSigners = run(["op", "verify", "--blob", file, "--host-id", HOST, "--config", join(dir, "missing.json")])
    expect(noSigners.status).toBe(2)
    expect(run(["op", "verify"]).status).toBe(2)
    for (const params of ["[1,2", "[1,2]", "null"]) {
      const badParams = run(["op", "new", "--op", "x", "--host", HOST, "--key-id", "a", "--params", params])
      expect(badParams.status, params).toBe(2)
      expect(badParams.stderr.trim().split("\n"), params).toHaveLength(1)
    }
  })
})

describe("sshsig verify agrees with ssh-keygen -Y check-novalidate", () => {
  const fx = join(root, "test", "fixtures", "sshsig")
  const manifest = JSON.parse(readFileSync(join(fx, "manifest.json"), "utf8")) as {
    fixtures: Array<{ sig: string; key: string; message: string; namespace: string; expect: string }>
  }
  // Policy floors stricter than OpenSSH's, documented in docs/architecture.md
  const POLICY = new Set(["UnsupportedKey"])
  const status = (p: Promise<unknown>) => p.then(() => 0, (e: { code?: number }) => e.code ?? 1)

  it("on every committed fixture", async () => {
    const rows = manifest.fixtures
    const results: Array<{ sig: string; ours: number; theirs: number; expect: string }> = []
    for (let i = 0; i < rows.length; i += 4) {
      results.push(...await Promise.all(rows.slice(i, i + 4).map(async (f) => {
        const message = readFileSync(join(fx, "messages", f.message))
        const withInput = <T extends { stdin: NodeJS.WritableStream | null }>(child: T) => {
          // a verifier may exit before reading the message (EPIPE): its exit code is the verdict
          child.stdin?.on("error", () => undefined)
          child.stdin?.end(message)
          return child
        }
        const ours = status(new Promise((resolve, reject) => {
          withInput(execFile(process.execPath, [bin, "sshsig", "verify", "--namespace", f.namespace, "--key", join(fx, "keys", f.key), "--signature", join(fx, "sigs", f.sig)], { env: cleanEnv }, (err) => err ? reject(err) : resolve(null)))
        }))
        const theirs = status(new Promise((resolve, reject) => {
          withInput(execFile("ssh-keygen", ["-Y", "check-novalidate", "-n", f.namespace, "-s", join(fx, "sigs", f.sig)], (err) => err ? reject(err) : resolve(null)))
        }))
        return { sig: f.sig, ours: await ours, theirs: await theirs, expect: f.expect }
      })))
    }
    expect(results.length).toBe(rows.length)
    for (const r of results) {
      if (POLICY.has(r.expect)) {
        expect(r.ours, `${r.sig}: refused by our policy`).not.toBe(0)
      } else {
        expect(r.ours === 0, `${r.sig}: ours ${r.ours}, ssh-keygen ${r.theirs}`).toBe(r.theirs === 0)
        expect(r.ours === 0, r.sig).toBe(r.expect === "valid")
      }
    }
  }, 120_000)
})
