/**
 * The daemon's loopback status endpoint (issue 14): /health's exact leading bytes (the shell gate
 * matches them literally) and its 200/503 rule per check, /status from the daemon state, a
 * hostile local client (wrong methods, bodies, huge headers, slowloris, idle sockets, too many
 * connections) cut off while a loop beside it goes on, and the real daemon loop serving it on a
 * loopback port: ok after the first report, still ok when the hub goes away ("since start"),
 * 503 while the state store is unusable, ok again when it heals; and the shipped bin's daemon
 * (built dist, `sim pve` and `sim hub` as processes) serving it on the port its log line names.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Option, Ref, Schema, TestClock } from "effect"
import { connect, type Socket } from "node:net"
import { spawn } from "node:child_process"
import { make as makeProgress } from "../src/layers/LoopProgress.js"
import { serveStatus } from "../src/layers/StatusServer.js"
import { type DaemonState, initialState } from "../src/programs/daemon/loop.js"
import { routesOf, type StatusSources } from "../src/programs/daemon/status.js"
import { HealthBody, StatusBody } from "../src/schema/status.js"
import { VERSION } from "../src/version.js"
import { advance, get, startDaemonWithEndpoint } from "./status-support.js"

const healthy: DaemonState = { ...initialState, recovered: true, lastHubContactMs: 1_000, cycles: 3 }

const sourcesWith = (state: DaemonState, o: { readonly armed?: boolean } = {}) =>
  Effect.gen(function*() {
    const progress = yield* makeProgress(60)
    const src: StatusSources = {
      state: yield* Ref.make(state),
      progress,
      watchdogArmed: o.armed ?? true,
      cloudflared: Effect.succeed("running"),
      runs: Option.none(),
      breakGlassUntil: Option.none(),
      startedAtMs: 0,
      pid: 4242,
      scrub: (t) => t.replaceAll("sekrit", "<redacted>")
    }
    return { src, routes: yield* routesOf(src) }
  })

const call = (routes: Map<string, Effect.Effect<{ status: number; body: string }>>, path: string) => routes.get(path)!

describe("/health and /status bodies", () => {
  it.effect("healthy: 200, and the body starts with exactly {\"status\":\"ok\",\"version\":\"<v>\"", () =>
    Effect.gen(function*() {
      const { routes } = yield* sourcesWith(healthy)
      const r = yield* call(routes, "/health")
      expect(r.status).toBe(200)
      expect(r.body.startsWith(`{"status":"ok","version":"${VERSION}"`)).toBe(true)
      expect(r.body).not.toMatch(/\s/)
      const h = Schema.decodeUnknownSync(HealthBody)(JSON.parse(r.body))
      expect(h.checks).toEqual({ loop: "ok", recovered: "ok", store: "ok", hub: "ok" })
      expect(h.pid).toBe(4242)
    }))

  it.effect("each failing check alone makes it 503 with status failing", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [string, DaemonState]> = [
        ["recovered", { ...healthy, recovered: false }],
        ["store", { ...healthy, store: { healthy: false, detail: "database is locked" } }],
        ["hub", { ...healthy, lastHubContactMs: null, lastHubError: "HTTP 503" }]
      ]
      for (const [check, state] of cases) {
        const { routes } = yield* sourcesWith(state)
        const r = yield* call(routes, "/health")
        expect([check, r.status]).toEqual([check, 503])
        expect(r.body.startsWith(`{"status":"failing","version":"${VERSION}"`)).toBe(true)
        const h = Schema.decodeUnknownSync(HealthBody)(JSON.parse(r.body))
        expect(Object.entries(h.checks).filter(([, v]) => v === "failing").map(([k]) => k)).toEqual([check])
      }
    }))

  it.effect("a stalled loop fails /health (loop) and /status says the watchdog is stalled; a beat heals it", () =>
    Effect.gen(function*() {
      const { routes, src } = yield* sourcesWith(healthy)
      yield* TestClock.adjust("61 seconds")
      const r = yield* call(routes, "/health")
      expect(r.status).toBe(503)
      expect(Schema.decodeUnknownSync(HealthBody)(JSON.parse(r.body)).checks.loop).toBe("failing")
      const s = Schema.decodeUnknownSync(StatusBody)(JSON.parse((yield* call(routes, "/status")).body))
      expect(s.watchdog).toBe("stalled")
      yield* src.progress.beat("cycle end")
      expect((yield* call(routes, "/health")).status).toBe(200)
      const off = yield* sourcesWith(healthy, { armed: false })
      expect(Schema.decodeUnknownSync(StatusBody)(JSON.parse((yield* call(off.routes, "/status")).body)).watchdog).toBe("off")
    }))

  it.effect("/status: lost guests, pending signatures without their params, the hub error scrubbed", () =>
    Effect.gen(function*() {
      const { routes } = yield* sourcesWith({
        ...healthy,
        lostGuests: [104, 107],
        appliedGeneration: 7,
        lastHubError: "HTTP 500: key sekrit echoed",
        pending: [{ op: "recover", vmid: 104, params: { point: "vzdump-lxc-104.tar.zst", token: "sekrit-param" }, reason: "needs a signature", since: "2026-01-01T00:00:00Z" }]
      })
      const r = yield* call(routes, "/status")
      expect(r.status).toBe(200)
      const s = Schema.decodeUnknownSync(StatusBody)(JSON.parse(r.body), { onExcessProperty: "error" })
      expect(s.lost_guests).toEqual([104, 107])
      expect(s.pending_signatures).toEqual([{ op: "recover", vmid: 104, reason: "needs a signature", since: "2026-01-01T00:00:00Z" }])
      expect(s.applied_generation).toBe(7)
      expect(s.cloudflared).toBe("running")
      expect(r.body).not.toContain("sekrit")
    }))
})

// ---------------------------------------------------------------------------------------------
// Hostile clients, live clock, small limits

const LIMITS = { headersTimeoutMs: 300, requestTimeoutMs: 800, idleTimeoutMs: 300, maxConnections: 4, handlerTimeoutMs: 500 }

interface Raw {
  readonly socket: Socket
  readonly data: () => string
  readonly closed: Promise<number>
}

/** A raw TCP client: what it received, and when (ms after open) the server closed it. */
const raw = (port: number): Promise<Raw> =>
  new Promise((resolve, reject) => {
    const t0 = Date.now()
    let buf = ""
    const socket = connect({ host: "127.0.0.1", port })
    const closed = new Promise<number>((r) => socket.once("close", () => r(Date.now() - t0)))
    socket.on("data", (d) => void (buf += d.toString("latin1")))
    socket.on("error", () => undefined)
    socket.once("connect", () => resolve({ socket, data: () => buf, closed }))
    socket.once("error", reject)
  })

const within = <A>(p: Promise<A>, ms: number) =>
  Promise.race([p, new Promise<"timeout">((r) => setTimeout(() => r("timeout"), ms))])

const hostileServer = Effect.gen(function*() {
  const hits = yield* Ref.make(0)
  const routes = new Map([
    ["/health", Effect.as(Ref.update(hits, (n) => n + 1), { status: 200, contentType: "application/json", body: "{\"status\":\"ok\"}" })],
    ["/slow", Effect.as(Effect.sleep("5 seconds"), { status: 200, contentType: "text/plain", body: "late" })]
  ])
  const { port } = yield* serveStatus({ host: "127.0.0.1", port: 0, routes, ...LIMITS })
  return { port, hits }
})

describe("a hostile local client is cut off; the loop beside it goes on", () => {
  it.live("methods, bodies, paths", () =>
    Effect.scoped(Effect.gen(function*() {
      const { port } = yield* hostileServer
      const res = (init: RequestInit, path = "/health") =>
        Effect.promise(async () => {
          const r = await fetch(`http://127.0.0.1:${port}${path}`, init)
          return { status: r.status, allow: r.headers.get("allow"), connection: r.headers.get("connection"), body: await r.text() }
        })
      expect((yield* res({ method: "GET" })).status).toBe(200)
      for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
        const r = yield* res({ method, body: method === "OPTIONS" ? null : "x".repeat(1024 * 1024) })
        expect([method, r.status, r.allow, r.connection]).toEqual([method, 405, "GET", "close"])
      }
      for (const path of ["/", "/health?x=1", "/HEALTH", "/health/", "/metrics"]) {
        expect([path, (yield* res({ method: "GET" }, path)).status]).toEqual([path, 404])
      }
      // paths fetch would normalize, sent as they are
      for (const path of ["/../health", "/./health", "//health", "http://127.0.0.1/health"]) {
        const got = yield* Effect.promise(async () => {
          const c = await raw(port)
          c.socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
          await within(c.closed, 2000)
          return c.data()
        })
        expect([path, got.slice(0, 12)]).toEqual([path, "HTTP/1.1 404"])
      }
      // a GET that declares a body: refused, nothing read
      const withBody = yield* Effect.promise(async () => {
        const c = await raw(port)
        c.socket.write("GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        await within(c.closed, 2000)
        return c.data()
      })
      expect(withBody).toMatch(/^HTTP\/1\.1 400 /)
      const chunked = yield* Effect.promise(async () => {
        const c = await raw(port)
        c.socket.write("GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await within(c.closed, 2000)
        return c.data()
      })
      expect(chunked).toMatch(/^HTTP\/1\.1 400 /)
      // a handler that takes too long: 503 after handlerTimeoutMs, not a hung socket
      const slow = yield* res({ method: "GET" }, "/slow")
      expect(slow.status).toBe(503)
    })), 30_000)

  it.live("huge headers, slowloris, idle sockets and a connection flood are cut off; a ticker and /health carry on", () =>
    Effect.scoped(Effect.gen(function*() {
      const { port, hits } = yield* hostileServer
      const ticks = yield* Ref.make(0)
      const t0 = Date.now()
      const ticker = yield* Effect.fork(Effect.forever(Effect.zipRight(Effect.sleep("20 millis"), Ref.update(ticks, (n) => n + 1))))
      const result = yield* Effect.promise(async () => {
        // 64 KiB of headers: refused at once (8 KiB cap)
        const big = await raw(port)
        big.socket.write(`GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ${"a".repeat(64 * 1024)}\r\n\r\n`)
        const bigClosed = await within(big.closed, 2000)

        // slowloris: one header byte every 50 ms, never finishing
        const slow = await raw(port)
        slow.socket.write("GET /health HTTP/1.1\r\nHost: x\r\n")
        const drip = setInterval(() => slow.socket.writable && slow.socket.write("X"), 50)
        const slowClosed = await within(slow.closed, 3000)
        clearInterval(drip)

        // connected, never sends a byte
        const idle = await raw(port)
        const idleClosed = await within(idle.closed, 3000)

        // a flood: 12 sockets at once against a cap of 4; the extra ones are dropped at accept
        const flood = await Promise.all(Array.from({ length: 12 }, () => raw(port)))
        const early = await Promise.all(flood.map((c) => within(c.closed, 300)))
        const droppedAtOnce = early.filter((x) => x !== "timeout").length
        const allClosed = await within(Promise.all(flood.map((c) => c.closed)), 3000)

        const after = await fetch(`http://127.0.0.1:${port}/health`)
        return { big: big.data(), bigClosed, slowClosed, idleClosed, droppedAtOnce, allClosed, afterStatus: after.status }
      })
      yield* Fiber.interrupt(ticker)
      const elapsed = Date.now() - t0
      expect(result.big).toMatch(/^HTTP\/1\.1 4\d\d /)
      expect(result.bigClosed).not.toBe("timeout")
      expect(result.slowClosed).not.toBe("timeout")
      expect(result.slowClosed as number).toBeLessThan(2000)
      expect(result.idleClosed).not.toBe("timeout")
      expect(result.droppedAtOnce).toBeGreaterThanOrEqual(8)
      expect(result.allClosed).not.toBe("timeout")
      expect(result.afterStatus).toBe(200)
      // none of the hostile requests reached the handler; the fiber beside them never stopped
      expect(yield* Ref.get(hits)).toBe(1)
      // the ticker (20 ms sleeps) kept at least a third of its pace throughout
      expect(yield* Ref.get(ticks)).toBeGreaterThan(elapsed / 20 / 3)
    })), 30_000)
})

// ---------------------------------------------------------------------------------------------
// The real daemon loop serving it

describe("the daemon serves the endpoint on loopback", () => {
  it.scoped("ok after the first report; still ok when the hub goes away (since start); 503 while the store is unusable; ok again", () =>
    Effect.gen(function*() {
      const d = yield* startDaemonWithEndpoint()
      const port = yield* Deferred.await(d.port)
      yield* advance(2)
      const first = yield* get(port, "/health")
      expect(first.status).toBe(200)
      expect(first.body.startsWith(`{"status":"ok","version":"${VERSION}"`)).toBe(true)
      expect(first.contentType).toBe("application/json")

      // the hub goes away: /health stays ok (one success since start), /status tells
      d.fault.answer = { status: 503, body: "maintenance" }
      yield* advance(61, 5)
      expect((yield* get(port, "/health")).status).toBe(200)
      const status = Schema.decodeUnknownSync(StatusBody)(JSON.parse((yield* get(port, "/status")).body))
      expect(status.last_hub_error).toMatch(/503/)
      expect(status.last_hub_contact_at).toBe("1970-01-01T00:00:00Z")
      d.fault.answer = null

      // another process holds the database's write lock: the store probe fails, /health is 503
      const locker = spawn("python3", ["-c", [
        "import sqlite3, sys, time",
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)",
        "c.execute('BEGIN EXCLUSIVE')",
        "print('locked', flush=True)",
        "time.sleep(120)"
      ].join("\n"), d.path], { stdio: ["ignore", "pipe", "inherit"] })
      yield* Effect.addFinalizer(() => Effect.sync(() => locker.kill("SIGKILL")))
      yield* Effect.promise(() => new Promise<void>((resolve) => locker.stdout.once("data", () => resolve())))
      yield* advance(61, 5)
      const locked = yield* get(port, "/health")
      expect(locked.status).toBe(503)
      expect(locked.body.startsWith(`{"status":"failing","version":"${VERSION}"`)).toBe(true)
      expect(Schema.decodeUnknownSync(HealthBody)(JSON.parse(locked.body)).checks.store).toBe("failing")
      locker.kill("SIGKILL")
      yield* Effect.promise(() => new Promise<void>((resolve) => locker.once("exit", () => resolve())))
      yield* advance(61, 5)
      expect((yield* get(port, "/health")).status).toBe(200)
      expect(d.fiber.unsafePoll()).toBeNull()
    }), 120_000)
})


// ---------------------------------------------------------------------------------------------
// The shipped bin: `felhom-agent daemon` against `sim pve` and `sim hub`, real processes on loopback

const waitFor = async <A>(what: string, probe: () => Promise<A | undefined> | A | undefined, ms = 30_000): Promise<A> => {
  const until = Date.now() + ms
  for (;;) {
    const got = await probe()
    if (got !== undefined) return got
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

describe("the shipped daemon serves /health (needs npm run build)", () => {
  it.live("the port from the log line; 200 with our version after the first report; the hub killed: still 200, /status says why; SIGTERM ends it", () =>
    Effect.promise(async () => {
      const { bin, cleanEnv, startSimPve } = await import("./bin-support.js")
      const { mkdtempSync, writeFileSync } = await import("node:fs")
      const { tmpdir } = await import("node:os")
      const { join } = await import("node:path")
      const dir = mkdtempSync(join(tmpdir(), "felhom-status-bin-"))
      const config = join(dir, "agent.json")
      writeFileSync(config, JSON.stringify({ state_dir: join(dir, "state"), authz: { signers: [] }, status_endpoint: { port: 0 } }))
      const children: Array<ReturnType<typeof spawn>> = []
      try {
        const pve = await startSimPve(cleanEnv(config))
        children.push(pve.child)
        const hub = spawn(process.execPath, [bin, "sim", "hub", "--port", "0", "--host-id", "host-bin"], { env: cleanEnv(config), stdio: ["ignore", "pipe", "pipe"] })
        children.push(hub)
        let hubOut = ""
        hub.stdout!.on("data", (c: Buffer) => void (hubOut += c.toString()))
        await waitFor("the dev hub", () => (hubOut.includes("Ctrl-C") ? true : undefined))
        const hubEnv: Record<string, string> = {}
        for (const m of hubOut.matchAll(/^export (FELHOM_AGENT_[A-Z_0-9]+)='([^']*)'$/gm)) hubEnv[m[1]!] = m[2]!
        const daemon = spawn(process.execPath, [bin, "daemon"], { env: cleanEnv(config, { ...pve.exports, ...hubEnv }), stdio: ["ignore", "pipe", "pipe"] })
        children.push(daemon)
        let log = ""
        daemon.stdout!.on("data", (c: Buffer) => void (log += c.toString()))
        daemon.stderr!.on("data", (c: Buffer) => void (log += c.toString()))
        const port = Number(await waitFor("the listening line", () => /status endpoint listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log)?.[1]))
        const health = async () => {
          const r = await fetch(`http://127.0.0.1:${port}/health`)
          return { status: r.status, body: await r.text() }
        }
        const ok = await waitFor("/health 200", async () => {
          const h = await health()
          return h.status === 200 ? h : undefined
        })
        expect(ok.body.startsWith(`{"status":"ok","version":"${VERSION}"`), log).toBe(true)

        // the hub goes away; SIGUSR1 polls at once: the report fails, /health stays ok (since start)
        hub.kill("SIGKILL")
        await new Promise((r) => hub.once("close", r))
        daemon.kill("SIGUSR1")
        const status = await waitFor("/status with a hub error", async () => {
          const r = await fetch(`http://127.0.0.1:${port}/status`)
          const s = Schema.decodeUnknownSync(StatusBody)(JSON.parse(await r.text()))
          return s.last_hub_error !== null ? s : undefined
        })
        expect(status.health.status).toBe("ok")
        expect((await health()).status).toBe(200)
        for (const secret of [hubEnv["FELHOM_AGENT_HUB_API_KEY"]!, pve.exports["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"]!]) {
          expect(secret.length).toBeGreaterThan(8)
          expect(JSON.stringify(status)).not.toContain(secret)
        }
        daemon.kill("SIGTERM")
        const code = await new Promise((r) => daemon.once("close", r))
        expect(code, log).toBe(0)
        await expect(fetch(`http://127.0.0.1:${port}/health`)).rejects.toThrow()
      } finally {
        for (const c of children) c.kill("SIGKILL")
      }
    }), 90_000)
})
