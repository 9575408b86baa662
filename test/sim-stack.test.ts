/**
 * `felhom-agent sim stack` as a developer runs it: the shipped bundle in its own process, the
 * info file it writes once every controller is healthy, the local API it names answering a
 * guest's token over a pinned connection (and refusing a wrong token or a wrong pin), no secret
 * on its output, and Ctrl-C taking everything down with exit 0 and the work dir gone.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Either, Redacted, Schema } from "effect"
import { StackInfo } from "../src/programs/daemon/stack.js"
import { parseLocalToken } from "../src/schema/localApi.js"
import { pinnedCall } from "../src/sim/controller/pinnedHttps.js"

const bin = join(__dirname, "..", "bin", "felhom-agent.cjs")
/** `sim stack` reads no config file; nothing from the developer's FELHOM_AGENT_* reaches it either. */
const env = () => Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_"))) as NodeJS.ProcessEnv

const running = new Set<ChildProcess>()
const scratch: Array<string> = []
const infoDir = () => {
  const d = mkdtempSync(join(tmpdir(), "felhom-stack-info-"))
  scratch.push(d)
  return d
}
afterAll(() => {
  for (const c of running) c.kill("SIGKILL")
  for (const d of scratch) rmSync(d, { recursive: true, force: true })
})

interface Proc {
  readonly child: ChildProcess
  readonly out: () => string
  readonly exited: Promise<number | null>
}

const start = (args: Array<string>): Proc => {
  const child = spawn(process.execPath, [bin, ...args], { env: env(), stdio: ["ignore", "pipe", "pipe"] })
  running.add(child)
  let out = ""
  child.stdout!.setEncoding("utf8").on("data", (c: string) => (out += c))
  child.stderr!.setEncoding("utf8").on("data", (c: string) => (out += c))
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => {
    running.delete(child)
    resolve(code)
  }))
  return { child, out: () => out, exited }
}

/** Real time: the child is another process. */
const until = async <A>(what: string, p: Proc, f: () => A | undefined, ms: number): Promise<A> => {
  const deadline = Date.now() + ms
  for (;;) {
    const v = f()
    if (v !== undefined) return v
    if (p.child.exitCode !== null) throw new Error(`sim stack exited (${p.child.exitCode}) before ${what}:\n${p.out()}`)
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${p.out()}`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

const withinMs = <A>(p: Promise<A>, ms: number) =>
  Promise.race([p, new Promise<"timeout">((r) => setTimeout(() => r("timeout"), ms))])

/** A previous run's info file (its stack long gone). */
const STALE: StackInfo = {
  dev_only: true,
  work_dir: "/tmp/felhom-stack-STALE0",
  pve: { url: "https://127.0.0.1:1", token_id: "felhom@pve!agent", token_secret: "stale", fingerprint_sha256: "00" },
  hub: { url: "https://127.0.0.1:2", api_key: "stale", host_id: "stack-host", ca_pem_file: "/tmp/felhom-stack-STALE0/hub-ca.pem" },
  local_api: { url: "https://127.0.0.1:3", pins: [] },
  guests: [],
  operator: { key_file: "/tmp/felhom-stack-STALE0/operator", key_id: "stack-operator" }
}

const call = (info: StackInfo, token: string, pins = info.local_api.pins) =>
  Effect.runPromise(Effect.either(pinnedCall({
    base: new URL(info.local_api.url),
    method: "GET",
    path: "/backup/due",
    token: Redacted.make(token),
    pins,
    timeout: "5 seconds"
  })))

describe("sim stack", () => {
  it("comes up, writes the info file, serves the local API to each guest's token, and stops cleanly on SIGINT", async () => {
    const infoFile = join(infoDir(), "stack.json")
    // a previous stack's info file is there: it must be replaced, not read as this one's
    writeFileSync(infoFile, JSON.stringify(STALE), { mode: 0o600 })
    const p = start(["sim", "stack", "--info", infoFile, "--guests", "2"])
    const raw = await until("the info file", p, () => {
      const text = existsSync(infoFile) ? readFileSync(infoFile, "utf8") : ""
      return text !== "" && !text.includes(STALE.work_dir) ? text : undefined
    }, 50_000)

    // its shape, and only the owner may read it
    expect(statSync(infoFile).mode & 0o777).toBe(0o600)
    const decoded = Schema.decodeUnknownEither(Schema.parseJson(StackInfo))(raw)
    if (Either.isLeft(decoded)) throw new Error(`info file does not decode: ${decoded.left.message}`)
    const info = decoded.right
    expect(info.dev_only).toBe(true)
    expect(info.guests.map((g) => g.vmid)).toEqual([200, 201])
    for (const url of [info.pve.url, info.hub.url, info.local_api.url]) expect(new URL(url).hostname).toBe("127.0.0.1")
    expect(info.local_api.pins.length).toBeGreaterThanOrEqual(1)
    for (const g of info.guests) {
      expect(parseLocalToken(g.token)).not.toBeNull()
      expect(g.image).toBe("registry.felhom.dev/felhom/controller:1.0.0")
      expect(g.bootstrap_dir.startsWith(`${info.work_dir}/`)).toBe(true)
      // the token the info file names is the one the guest's bootstrap mount holds
      expect(readFileSync(join(g.bootstrap_dir, "local-token"), "utf8").trim()).toBe(g.token)
    }
    expect(new Set(info.guests.map((g) => g.token)).size).toBe(2)
    expect(existsSync(info.operator.key_file)).toBe(true)
    expect(existsSync(info.hub.ca_pem_file)).toBe(true)

    // a controller's call: its token over a connection pinned to the published pins
    const ok = await call(info, info.guests[0]!.token)
    if (Either.isLeft(ok)) throw new Error(`GET /backup/due failed: ${ok.left.message}`)
    expect(ok.right.status).toBe(200)
    expect(JSON.parse(ok.right.body)).toHaveProperty("due")
    // a well-formed token the agent never minted, and a real one with its secret altered
    const t = info.guests[1]!.token
    const forged = `fla1_${"0".repeat(16)}_${"A".repeat(43)}`
    const altered = `${t.slice(0, -1)}${t.endsWith("A") ? "B" : "A"}`
    for (const bad of [forged, altered]) {
      const r = await call(info, bad)
      if (Either.isLeft(r)) throw new Error(`GET /backup/due with a wrong token failed: ${r.left.message}`)
      expect(r.right.status).toBe(401)
    }
    // pinned to another certificate, the client refuses before sending anything
    const wrongPin = await call(info, t, [{ spki_sha256: "AAAA", cert_sha256: "00".repeat(32) }])
    expect(Either.isLeft(wrongPin) && wrongPin.left.reason).toBe("pin")

    // the secrets live in the info file only, never on the output
    for (const secret of [...info.guests.map((g) => g.token), info.pve.token_secret, info.hub.api_key]) {
      expect(p.out()).not.toContain(secret)
    }
    expect(p.out()).toContain("dev only")

    // Ctrl-C: everything stops, exit 0, the work dir is gone
    p.child.kill("SIGINT")
    expect(await withinMs(p.exited, 8_000)).toBe(0)
    expect(existsSync(info.work_dir)).toBe(false)
    expect(existsSync(infoFile)).toBe(false)
  }, 75_000)

  it("SIGTERM while the guests are being provisioned: exit 0, the work dir gone, no info file", async () => {
    const infoFile = join(infoDir(), "stack.json")
    const p = start(["sim", "stack", "--info", infoFile, "--guests", "3"])
    const workDir = await until("the work dir", p, () => /work dir (\S+)\)/.exec(p.out())?.[1], 30_000)
    await until("the desired state", p, () => (p.out().includes("hub wants 3 guest(s)") ? true : undefined), 30_000)
    expect(existsSync(workDir)).toBe(true)
    p.child.kill("SIGTERM")
    expect(await withinMs(p.exited, 8_000)).toBe(0)
    expect(existsSync(workDir)).toBe(false)
    expect(existsSync(infoFile)).toBe(false)
    expect(p.out()).not.toContain("ready:")
  }, 45_000)

  it("a local API port already taken: the agent's failure ends the stack (exit 1, the reason named, the work dir gone)", async () => {
    const taken = createServer()
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()))
    const port = (taken.address() as { port: number }).port
    try {
      const infoFile = join(infoDir(), "stack.json")
      const p = start(["sim", "stack", "--info", infoFile, "--guests", "1", "--local-api-port", String(port)])
      const workDir = await until("the work dir", p, () => /work dir (\S+)\)/.exec(p.out())?.[1], 30_000)
      expect(await withinMs(p.exited, 30_000)).toBe(1)
      expect(p.out()).toContain(`cannot listen on 127.0.0.1:${port}`)
      expect(existsSync(workDir)).toBe(false)
      expect(existsSync(infoFile)).toBe(false)
    } finally {
      taken.close()
    }
  }, 60_000)

  it("never overwrites a file at --info that is not a stack's info file", async () => {
    const infoFile = join(infoDir(), "notes.txt")
    writeFileSync(infoFile, "my notes\n")
    const p = start(["sim", "stack", "--info", infoFile])
    expect(await withinMs(p.exited, 20_000)).toBe(2)
    expect(p.out()).toContain("is not a sim stack info file")
    expect(p.out()).not.toContain("[stack]")
    expect(readFileSync(infoFile, "utf8")).toBe("my notes\n")
  }, 30_000)

  it("refuses --guests outside 1..20 as a usage error before starting anything", async () => {
    for (const n of ["0", "21"]) {
      const p = start(["sim", "stack", "--guests", n])
      expect(await withinMs(p.exited, 20_000)).toBe(2)
      expect(p.out()).toContain("--guests must be an integer from 1 to 20")
    }
  }, 45_000)
})
