/**
 * `felhom-agent enroll` as a process (issue 13): the token as stdin's first line, the recovery code
 * read off stdout and typed back on stdin, --prefix/--config/--hub-ca, against the dev hub served
 * by this test over loopback HTTPS and the fake pveum/systemctl. A re-run with nothing on stdin
 * completes without asking anything. Root only (files must be root-owned).
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Option, Redacted } from "effect"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { unwrapKey } from "../src/programs/escrow/keyFile.js"
import { serveDevHub } from "../src/sim/hub/index.js"
import { type EnrollHost, makeEnrollHost, TOKEN_SECRET, wordsShown, writeCa } from "./enroll-support.js"
import { isRoot } from "./privileged-support.js"

const ROOT = join(__dirname, "..")
const hosts: Array<EnrollHost> = []
afterAll(() => {
  for (const h of hosts) h.cleanup()
})

interface Ran {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs the CLI from source; `onOutput` may answer on stdin as output arrives. */
const runCli = (args: ReadonlyArray<string>, firstInput: string | undefined, onOutput: (stdout: string, write: (s: string) => void) => void) =>
  Effect.async<Ran>((resume) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "src", "main.ts"), ...args], {
      cwd: ROOT,
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_"))),
      stdio: ["pipe", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    const write = (s: string) => void child.stdin.write(s)
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString("utf8")
      onOutput(stdout, write)
    })
    child.stderr.on("data", (b: Buffer) => void (stderr += b.toString("utf8")))
    if (firstInput === undefined) child.stdin.end()
    else write(firstInput)
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000)
    child.on("close", (status) => {
      clearTimeout(timer)
      resume(Effect.succeed({ status, stdout, stderr }))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe.skipIf(!isRoot)("felhom-agent enroll (the process)", () => {
  it.live("token on stdin, code typed back on stdin: enrolled; a re-run asks nothing", () =>
    Effect.scoped(Effect.gen(function*() {
      const h = makeEnrollHost()
      hosts.push(h)
      const served = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: {} })
      const ca = writeCa(h.base, served.caPem)
      const token = `et${randomBytes(16).toString("hex")}`
      yield* served.hub.addEnrollmentToken(token, { mode: "new" })
      const baseFile = join(h.base, "base.json")
      writeFileSync(baseFile, JSON.stringify({ ...h.baseConfig, privileged: { commands: { pveum: h.pveum, systemctl: h.systemctl } } }))
      const args = ["enroll", "--hub", served.url, "--hub-ca", ca, "--config", baseFile, "--prefix", h.prefix, "--node", "pve"]
      let typed = false
      const first = yield* runCli(args, `${token}\n`, (out, write) => {
        const code = wordsShown([out])
        if (code !== undefined && !typed && out.includes("Type the code back")) {
          typed = true
          write(`${code}\n`)
        }
      })
      expect(first.status, first.stderr).toBe(0)
      expect(first.stdout).toContain("unrecoverable by anyone")
      expect(first.stdout).toMatch(/enrolled: host \S+ \(new\)/)
      const hostId = /enrolled: host (\S+)/.exec(first.stdout)![1]!
      const code = wordsShown([first.stdout])!
      const blob = Option.getOrThrow(yield* served.hub.escrowOf(hostId))
      expect((yield* unwrapKey(blob.key, Redacted.make(code))).fingerprint).toBe(blob.fingerprint)
      for (const s of [token, TOKEN_SECRET]) {
        expect(first.stdout).not.toContain(s)
        expect(first.stderr).not.toContain(s)
      }
      const keyBefore = readFileSync(h.keyFile, "utf8")
      // a re-run: the installed agent.json is the base; nothing on stdin
      const again = yield* runCli(["enroll", "--hub", served.url, "--hub-ca", ca, "--prefix", h.prefix, "--config", baseFile, "--json"], undefined, () => {})
      expect(again.status, again.stderr).toBe(0)
      const r = JSON.parse(again.stdout.trim().split("\n").pop()!) as { hostId: string; steps: Array<{ outcome: string }> }
      expect(r.hostId).toBe(hostId)
      expect(r.steps.every((s) => s.outcome === "skipped")).toBe(true)
      expect(readFileSync(h.keyFile, "utf8")).toBe(keyBefore)
    })), 240_000)
})
