/**
 * The simulated controller (src/sim/controller/) over real HTTPS on loopback, under TestClock:
 * - it reads its own bootstrap mount, checks the pin, calls the five endpoints with its token;
 * - a wrong pin (or none) → it refuses to talk: the TLS handshake happens, not one HTTP request
 *   (so no token) reaches the server;
 * - a changed generation restarts it on the new image; `broken` images report unhealthy,
 *   `crashloop` ones and silent controllers make no call; faults change live;
 * - it reads nothing outside its own bootstrap directory (token_file elsewhere, a symlink);
 * - the fleet runs one per running guest with the bootstrap mount, stops it with the guest, and
 *   probes as a controller would.
 *
 * Most cases use a tiny node:https server answering the contract's JSON with the PVE simulator's
 * (public, loopback-only) certificate; the last block runs the controllers against the agent's
 * real LocalApi layer (its certificate, its tokens; a recording backend).
 */
import { describe, expect, it } from "@effect/vitest"
import { HttpClientRequest } from "@effect/platform"
import { Effect, Fiber, Option, Schema, TestClock } from "effect"
import { randomBytes, X509Certificate } from "node:crypto"
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { createServer, type Server } from "node:https"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { BOOTSTRAP_FORMAT, type CertPin, type ControllerBootstrap } from "../src/schema/bootstrap.js"
import { HeartbeatRequest } from "../src/schema/localApi.js"
import {
  imageTag,
  makeBoard,
  modeOf,
  pinsOf,
  runSimController,
  simControllers,
  type SimControllerView,
  versionOf
} from "../src/sim/controller/index.js"
import { hubCertPem } from "../src/sim/hub/tlsMaterial.js"
import { defaultSeedJson, makeSimHttpClient, makeSimPve, type SimPve, simCertPem, simKeyPem } from "../src/sim/pve/index.js"
import { startApi } from "./local-api-harness.js"
import { seedWith } from "./support.js"

type Json = Record<string, unknown>

const derOf = (pem: string) => new X509Certificate(pem).raw
const GOOD_PIN = pinsOf(derOf(simCertPem))
const OTHER_PIN = pinsOf(derOf(hubCertPem))

const newToken = () => `fla1_${randomBytes(8).toString("hex")}_${randomBytes(32).toString("base64url")}`

interface Seen {
  readonly method: string
  readonly path: string
  readonly auth: string | undefined
  readonly body: string
}

interface TestApi {
  readonly url: string
  readonly seen: Array<Seen>
  /** TCP connections accepted (a refused pin still connects and shakes hands). */
  readonly handshakes: () => number
}

const ANSWERS: Record<string, Json> = {
  "GET /backup/due": { due: false, reason: "not_yet", target: "local", last_success_at: null, next_due_at: null },
  "GET /storage": { mounts: [] },
  "GET /backup/status": { jobs: [], last_success_at: null, last_archive: null },
  "GET /restore-test/status": { last_result: null, last_at: null, archive: null, detail: null, last_pass_at: null },
  "POST /heartbeat": { ok: true }
}

/** A loopback HTTPS server answering the contract's JSON; every request it received is kept. */
const testApi = Effect.acquireRelease(
  Effect.async<{ server: Server; api: TestApi }>((resume) => {
    const seen: Array<Seen> = []
    let handshakes = 0
    const server = createServer({ key: simKeyPem, cert: simCertPem }, (req, res) => {
      const chunks: Array<Buffer> = []
      req.on("data", (c: Buffer) => chunks.push(c))
      req.on("end", () => {
        const key = `${req.method} ${req.url}`
        seen.push({ method: req.method ?? "", path: req.url ?? "", auth: req.headers.authorization, body: Buffer.concat(chunks).toString() })
        const answer = ANSWERS[key]
        res.writeHead(answer === undefined ? 404 : 200, { "content-type": "application/json" })
        res.end(JSON.stringify(answer ?? { error: { code: "not_found", message: "no such endpoint" } }))
      })
    })
    server.on("connection", () => {
      handshakes++
    })
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port
      resume(Effect.succeed({ server, api: { url: `https://127.0.0.1:${port}`, seen, handshakes: () => handshakes } }))
    })
  }),
  ({ server }) => Effect.async<void>((resume) => {
    server.closeAllConnections()
    server.close(() => resume(Effect.void))
  })
).pipe(Effect.map(({ api }) => api))

const bootstrapJson = (o: { url: string; generation: number; image: string; pins: ReadonlyArray<CertPin>; tokenFile?: string; vmid?: number }): ControllerBootstrap => ({
  format: BOOTSTRAP_FORMAT,
  generation: o.generation,
  host_id: "host-test",
  guest: { vmid: o.vmid ?? 100, hostname: "cust-alpha" },
  identity: { scenario: "provision", reset: ["machine-id"], directive_id: "d1" },
  controller: { image: o.image },
  registry: null,
  hub: { url: null, channel: "stable" },
  local_api: { url: o.url, token_file: o.tokenFile ?? "/etc/felhom-bootstrap/local-token", pins: o.pins }
})

const makeDir = (o: Parameters<typeof bootstrapJson>[0], token = newToken()) => {
  const dir = mkdtempSync(join(tmpdir(), "felhom-simctl-"))
  writeFileSync(join(dir, "controller.json"), JSON.stringify(bootstrapJson(o)))
  writeFileSync(join(dir, "local-token"), `${token}\n`)
  return { dir, token }
}

const republish = (dir: string, o: Parameters<typeof bootstrapJson>[0]) => writeFileSync(join(dir, "controller.json"), JSON.stringify(bootstrapJson(o)))

const IMAGE = "registry.example/felhom/controller:1.4.2"
/** Waits on the board with a real-time guard (TestClock does not advance on its own). */
const waitReal = <A>(e: Effect.Effect<A>) =>
  Effect.raceFirst(
    e,
    Effect.flatMap(Effect.promise(() => new Promise<void>((r) => setTimeout(r, 15_000).unref())), () => Effect.dieMessage("condition not reached in 15 s"))
  )

const rounds = (v: SimControllerView) => v.calls.filter((c) => c.path === "/heartbeat").length

describe("simulated controller", () => {
  it("image tag, version and mode", () => {
    expect(imageTag("registry.example:5000/felhom/controller:1.4.2")).toBe("1.4.2")
    expect(imageTag("registry.example:5000/felhom/controller")).toBe("")
    expect(imageTag(`r/x:2.0-broken@sha256:${"a".repeat(64)}`)).toBe("2.0-broken")
    expect(versionOf("r/x")).toBe("sim")
    expect(modeOf("healthy", "r/x:2.0-broken")).toBe("unhealthy")
    expect(modeOf("healthy", "r/x:crashloop-1")).toBe("crashloop")
    expect(modeOf("silent", "r/x:1")).toBe("silent")
    // a registry port is not a tag: nothing in it is read as "broken"
    expect(modeOf("healthy", "broken.example:5000/x")).toBe("healthy")
  })

  it.scoped("calls the five endpoints with its token over a pinned connection, then again each period", () =>
    Effect.gen(function*() {
      const api = yield* testApi
      const { dir, token } = makeDir({ url: api.url, generation: 1, image: IMAGE, pins: [GOOD_PIN] })
      const board = yield* makeBoard
      yield* Effect.forkScoped(runSimController({ vmid: 100, bootstrapDir: dir, board, fault: Effect.succeed("healthy") }))
      const v = yield* waitReal(board.waitFor(100, (v) => v.reported === "healthy"))
      expect(v.state).toBe("running")
      expect(v.generation).toBe(1)
      expect(v.version).toBe("1.4.2")
      expect(api.seen.map((s) => `${s.method} ${s.path}`)).toEqual(Object.keys(ANSWERS))
      expect(api.seen.every((s) => s.auth === `Bearer ${token}`)).toBe(true)
      const hb = Schema.decodeUnknownSync(Schema.parseJson(HeartbeatRequest))(api.seen[4]!.body)
      expect(hb).toEqual({ version: "1.4.2", image: IMAGE, status: "healthy" })
      // the next round waits for the period (30 s by default) on the Clock
      yield* TestClock.adjust("29 seconds")
      expect(rounds((yield* board.view(100)).pipe(Option.getOrThrow))).toBe(1)
      yield* TestClock.adjust("1 second")
      yield* waitReal(board.waitFor(100, (v) => rounds(v) === 2))
      expect(api.seen).toHaveLength(10)
      // the token reached the board nowhere
      expect(JSON.stringify(yield* board.view(100))).not.toContain(token.slice(22))
      rmSync(dir, { recursive: true, force: true })
    }))

  it.scoped("a wrong pin: it connects, no HTTP request and no token is sent; no usable pin: it does not even connect", () =>
    Effect.gen(function*() {
      const api = yield* testApi
      for (const pins of [[OTHER_PIN], [], [{ spki_sha256: "", cert_sha256: "" }]]) {
        const before = api.handshakes()
        const { dir } = makeDir({ url: api.url, generation: 1, image: IMAGE, pins })
        const board = yield* makeBoard
        const fiber = yield* Effect.forkScoped(runSimController({ vmid: 100, bootstrapDir: dir, board, fault: Effect.succeed("healthy") }))
        const v = yield* waitReal(board.waitFor(100, (v) => v.state === "refused"))
        // one attempt, ended at the pin: the other reads and the heartbeat were not tried
        expect(v.calls).toHaveLength(1)
        expect(v.calls[0]!.status).toBeNull()
        expect(v.calls[0]!.error).toMatch(/^pin: /)
        expect(v.reported).toBeNull()
        // a usable pin is checked on the handshake; none at all fails closed before connecting
        expect(api.handshakes()).toBe(before + (pins.length > 0 && pins[0]!.spki_sha256 !== "" ? 1 : 0))
        expect(api.seen).toHaveLength(0)
        yield* Fiber.interrupt(fiber)
        rmSync(dir, { recursive: true, force: true })
      }
    }))

  it.scoped("either pin form alone is enough (SPKI base64, or the leaf's sha256 hex with colons, any case)", () =>
    Effect.gen(function*() {
      const api = yield* testApi
      const colonHex = GOOD_PIN.cert_sha256.toUpperCase().match(/../g)!.join(":")
      for (const [i, pin] of [{ spki_sha256: GOOD_PIN.spki_sha256, cert_sha256: "" }, { spki_sha256: "", cert_sha256: colonHex }].entries()) {
        const { dir } = makeDir({ url: api.url, generation: 1, image: IMAGE, pins: [OTHER_PIN, pin] })
        const board = yield* makeBoard
        yield* Effect.forkScoped(runSimController({ vmid: 100 + i, bootstrapDir: dir, board, fault: Effect.succeed("healthy") }))
        yield* waitReal(board.waitFor(100 + i, (v) => v.reported === "healthy"))
      }
      expect(api.seen).toHaveLength(10)
    }))

  it.scoped("a new generation restarts it on the new image; broken reports unhealthy; crashloop and silent make no call", () =>
    Effect.gen(function*() {
      const api = yield* testApi
      const o = { url: api.url, generation: 1, image: IMAGE, pins: [GOOD_PIN] }
      const { dir, token } = makeDir(o)
      const board = yield* makeBoard
      let fault: "healthy" | "silent" = "healthy"
      yield* Effect.forkScoped(runSimController({ vmid: 100, bootstrapDir: dir, board, fault: Effect.sync(() => fault) }))
      yield* waitReal(board.waitFor(100, (v) => v.reported === "healthy"))

      // the same generation rewritten is no restart
      republish(dir, o)
      yield* TestClock.adjust("2 seconds")
      expect((yield* board.view(100)).pipe(Option.getOrThrow).starts).toBe(1)

      const broken = "registry.example/felhom/controller:1.5.0-broken"
      republish(dir, { ...o, generation: 2, image: broken })
      yield* TestClock.adjust("2 seconds")
      const v2 = yield* waitReal(board.waitFor(100, (v) => v.generation === 2 && v.reported !== null))
      expect(v2.starts).toBe(2)
      expect(v2.image).toBe(broken)
      expect(v2.reported).toBe("unhealthy")
      const hb = JSON.parse(api.seen.at(-1)!.body) as Json
      expect(hb["status"]).toBe("unhealthy")
      expect(hb["image"]).toBe(broken)
      expect(hb["version"]).toBe("1.5.0-broken")

      const seenBefore = api.seen.length
      republish(dir, { ...o, generation: 3, image: "registry.example/felhom/controller:1.5.0-crashloop" })
      yield* TestClock.adjust("2 seconds")
      const v3 = yield* waitReal(board.waitFor(100, (v) => v.generation === 3 && v.state === "crashloop"))
      expect(v3.reported).toBeNull()
      yield* TestClock.adjust("60 seconds")
      expect(api.seen.length).toBe(seenBefore)

      // back to a good image, then silent live: no calls while silent, calls again after
      republish(dir, { ...o, generation: 4 })
      yield* TestClock.adjust("2 seconds")
      yield* waitReal(board.waitFor(100, (v) => v.generation === 4 && v.reported === "healthy"))
      fault = "silent"
      const n = api.seen.length
      yield* TestClock.adjust("30 seconds")
      yield* waitReal(board.waitFor(100, (v) => v.state === "silent"))
      yield* TestClock.adjust("60 seconds")
      expect(api.seen.length).toBe(n)
      fault = "healthy"
      yield* TestClock.adjust("30 seconds")
      yield* waitReal(board.waitFor(100, (v) => v.state === "running" && rounds(v) > 2))
      expect(api.seen.length).toBe(n + 5)
      // a rotated token is picked up at the restart
      const rotated = newToken()
      writeFileSync(join(dir, "local-token"), `${rotated}\n`)
      republish(dir, { ...o, generation: 5 })
      yield* TestClock.adjust("2 seconds")
      yield* waitReal(board.waitFor(100, (v) => v.generation === 5 && v.reported === "healthy"))
      expect(api.seen.at(-1)!.auth).toBe(`Bearer ${rotated}`)
      expect(api.seen.filter((s) => s.auth === `Bearer ${token}`).length).toBe(n + 5)
    }))

  it.scoped("reads nothing outside its own bootstrap directory", () =>
    Effect.gen(function*() {
      const api = yield* testApi
      const outside = mkdtempSync(join(tmpdir(), "felhom-simctl-other-"))
      const otherToken = newToken()
      writeFileSync(join(outside, "local-token"), `${otherToken}\n`)
      const cases: Array<{ tokenFile?: string; link?: boolean; why: RegExp }> = [
        { tokenFile: "/etc/felhom-bootstrap/../local-token", why: /not a file in the bootstrap mount/ },
        { tokenFile: `${outside}/local-token`, why: /not a file in the bootstrap mount/ },
        { tokenFile: "/etc/felhom-bootstrap/sub/local-token", why: /not a file in the bootstrap mount/ },
        { link: true, why: /ELOOP|symbolic link|not a regular file/ }
      ]
      for (const [i, c] of cases.entries()) {
        const { dir } = makeDir({ url: api.url, generation: 1, image: IMAGE, pins: [GOOD_PIN], ...(c.tokenFile === undefined ? {} : { tokenFile: c.tokenFile }) })
        mkdirSync(join(dir, "sub"))
        writeFileSync(join(dir, "sub", "local-token"), `${otherToken}\n`)
        if (c.link === true) {
          rmSync(join(dir, "local-token"))
          symlinkSync(join(outside, "local-token"), join(dir, "local-token"))
        }
        const board = yield* makeBoard
        yield* Effect.forkScoped(runSimController({ vmid: 200 + i, bootstrapDir: dir, board, fault: Effect.succeed("healthy") }))
        const v = yield* waitReal(board.waitFor(200 + i, (v) => v.state === "no-bootstrap"))
        expect(v.lastError).toMatch(c.why)
        expect(v.lastError).not.toContain(otherToken)
      }
      yield* TestClock.adjust("10 seconds")
      expect(api.seen).toHaveLength(0)
    }))

  it.scoped("the fleet: one controller per running guest with the bootstrap mount, stopped with its guest; probes", () =>
    Effect.gen(function*() {
      const api = yield* testApi
      const a = makeDir({ url: api.url, generation: 1, image: IMAGE, pins: [GOOD_PIN], vmid: 100 })
      const b = makeDir({ url: api.url, generation: 1, image: IMAGE, pins: [GOOD_PIN], vmid: 101 })
      const base = defaultSeedJson as { guests: ReadonlyArray<Json> }
      const guests = base.guests.map((g) => {
        const vmid = g["vmid"] as number
        const config = g["config"] as Json
        if (vmid === 100) return { ...g, config: { ...config, mp0: `${a.dir},mp=/etc/felhom-bootstrap,ro=1,backup=0` } }
        // 101 is stopped: no controller until it starts
        if (vmid === 101) return { ...g, config: { ...config, mp1: `${b.dir},mp=/etc/felhom-bootstrap,ro=1,backup=0` } }
        return g
      })
      const sim = yield* makeSimPve(yield* seedWith({ guests }))
      const fleet = yield* simControllers(sim, { faults: { 101: "unhealthy" } })
      yield* waitReal(fleet.waitFor(100, (v) => v.reported === "healthy"))
      expect(yield* fleet.running).toEqual([100])
      expect(Option.isNone(yield* fleet.view(101))).toBe(true)

      // a probe without the token, and one naming another guest's snapshot
      const anon = yield* fleet.probe(100, { method: "GET", path: "/storage", auth: "none" })
      expect(anon.status).toBe(200)
      expect(api.seen.at(-1)!.auth).toBeUndefined()
      const other = yield* fleet.probeOtherGuest(100, 101)
      expect(other.snapshot).toBe("ctl-of-101") // 101's only snapshot is an operator's: never named
      expect(api.seen.at(-1)).toMatchObject({ method: "POST", path: "/rollback", auth: `Bearer ${a.token}` })
      expect(JSON.parse(api.seen.at(-1)!.body)).toEqual({ snapshot: "ctl-of-101" })

      // state changes in the simulator's guests are followed on the next scan
      yield* setStatus(sim, 101, "running")
      yield* TestClock.adjust("1 second")
      const v101 = yield* waitReal(fleet.waitFor(101, (v) => v.reported !== null))
      expect(v101.reported).toBe("unhealthy")
      expect(api.seen.filter((s) => s.auth === `Bearer ${b.token}`).length).toBe(5)
      yield* setStatus(sim, 100, "stopped")
      yield* TestClock.adjust("1 second")
      yield* waitReal(fleet.waitFor(100, (v) => v.state === "stopped"))
      expect(yield* fleet.running).toEqual([101])
      const n = api.seen.filter((s) => s.auth === `Bearer ${a.token}`).length
      yield* fleet.setFault(101, "healthy")
      yield* TestClock.adjust("30 seconds")
      yield* waitReal(fleet.waitFor(101, (v) => v.reported === "healthy"))
      expect(api.seen.filter((s) => s.auth === `Bearer ${a.token}`).length).toBe(n)
      const probeStopped = yield* Effect.either(fleet.probe(100, { method: "GET", path: "/storage" }))
      expect(probeStopped._tag).toBe("Left")
    }))
})

/** Starts or stops a simulated guest through the simulator's API, and lets its task finish. */
const setStatus = (sim: SimPve, vmid: number, status: "running" | "stopped") =>
  Effect.gen(function*() {
    const client = makeSimHttpClient(sim)
    const path = `/api2/json/nodes/${sim.node}/lxc/${vmid}/status/${status === "running" ? "start" : "stop"}`
    const res = yield* client.execute(HttpClientRequest.post(`https://pve.invalid:8006${path}`).pipe(HttpClientRequest.setHeader("authorization", sim.authorization))).pipe(Effect.orDie)
    expect(res.status).toBe(200)
    // the task runs on the Clock
    yield* TestClock.adjust("10 seconds")
  })

describe("simulated controller against the real LocalApi", () => {
  it.scoped("pinned to the API's certificate, it calls every endpoint as its own guest; a wrong pin sends nothing; another guest's snapshot is refused; a revoked token is 401", () =>
    Effect.gen(function*() {
      const h = yield* startApi({ rate_per_minute: 600, rate_burst: 100 })
      const pins = yield* h.cert.pins
      const url = `https://127.0.0.1:${h.api.port}`
      const t100 = yield* h.mint(100)
      const t101 = yield* h.mint(101)
      const a = makeDir({ url, generation: 1, image: IMAGE, pins, vmid: 100 }, t100.token)
      const b = makeDir({ url, generation: 1, image: IMAGE, pins, vmid: 101 }, t101.token)
      const base = defaultSeedJson as { guests: ReadonlyArray<Json> }
      const guests = base.guests.map((g) => {
        const vmid = g["vmid"] as number
        const dir = vmid === 100 ? a.dir : vmid === 101 ? b.dir : null
        return dir === null ? g : { ...g, status: "running", config: { ...(g["config"] as Json), mp0: `${dir},mp=/etc/felhom-bootstrap,ro=1,backup=0` } }
      })
      const sim = yield* makeSimPve(yield* seedWith({ guests }))
      const fleet = yield* simControllers(sim)
      yield* waitReal(fleet.waitFor(100, (v) => v.reported === "healthy"))
      yield* waitReal(fleet.waitFor(101, (v) => v.reported === "healthy"))
      const of = (vmid: number) => h.backend.calls.filter((c) => c.vmid === vmid && c.method !== "contact").map((c) => c.method)
      expect(of(100)).toEqual(["backupDue", "storage", "backupStatus", "restoreTestStatus", "heartbeat"])
      expect(of(101)).toEqual(of(100))
      expect(h.backend.calls.find((c) => c.method === "heartbeat" && c.vmid === 100)?.body).toEqual({ version: "1.4.2", image: IMAGE, status: "healthy" })

      // 101's controller takes a snapshot; 100's names it: refused, nothing rolled back
      const snap = yield* fleet.probe(101, { method: "POST", path: "/snapshot", body: { name: "mine" } })
      expect(snap.status).toBe(201)
      const cross = yield* fleet.probe(100, { method: "POST", path: "/rollback", body: { snapshot: "ctl-mine" } })
      expect(cross.status).toBe(403)
      expect(h.backend.calls.filter((c) => c.method === "rollback").map((c) => c.vmid)).toEqual([100])
      const anon = yield* fleet.probe(100, { method: "GET", path: "/storage", auth: "none" })
      expect(anon.status).toBe(401)

      // a controller whose bootstrap pins another certificate talks to nobody
      const before = h.backend.calls.length
      const wrong = makeDir({ url, generation: 1, image: IMAGE, pins: [OTHER_PIN], vmid: 102 }, (yield* h.mint(102)).token)
      const board = yield* makeBoard
      yield* Effect.forkScoped(runSimController({ vmid: 102, bootstrapDir: wrong.dir, board, fault: Effect.succeed("healthy") }))
      yield* waitReal(board.waitFor(102, (v) => v.state === "refused"))
      expect(h.backend.calls.length).toBe(before)

      // revoked: the next round is 401 everywhere, and no heartbeat is recorded for it
      yield* h.tokens.revoke(t100.id)
      const heartbeats = h.backend.calls.filter((c) => c.method === "heartbeat" && c.vmid === 100).length
      yield* TestClock.adjust("30 seconds")
      const v = yield* waitReal(fleet.waitFor(100, (v) => v.calls.filter((c) => c.status === 401).length === 5))
      expect(v.calls.slice(-5).map((c) => c.status)).toEqual([401, 401, 401, 401, 401])
      expect(h.backend.calls.filter((c) => c.method === "heartbeat" && c.vmid === 100).length).toBe(heartbeats)
      // nothing the board keeps holds a token
      const all = JSON.stringify(yield* fleet.views)
      for (const t of [t100.token, t101.token]) expect(all).not.toContain(t.slice(22))
    }))
})
