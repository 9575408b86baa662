/**
 * The local API under 50 concurrent keep-alive controllers (issue 11): throughput and p99 latency
 * of `GET /backup/due` on the agent's LocalApi layer (TLS, routing, failed-auth budget, bearer
 * token, per-token bucket, contact, backend, JSON) against a bare node:https server answering the
 * same JSON bytes with the same certificate, in the same run; and this process's RSS before and
 * after the load (the agent's server lives in it).
 *
 * Ours is the real backend (due computed from the desired state's policy and the protection store,
 * cached as in production) over the in-process simulator and real stores. The load generator runs in the same process as both servers, so both pay for it alike. Phases
 * alternate (bare, ours, platform, twice) and the better of each side's runs is kept, so a noisy
 * neighbour on the 2-core machine hurts neither side alone. A third server, @effect/platform's
 * NodeHttpServer answering the same bytes with no logic, shows how much of the gap is the
 * platform's own per-request cost rather than this layer's.
 */
import { HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { Agent, createServer, request } from "node:https"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { AuditLog } from "../src/layers/AuditLog.js"
import { layerAt } from "../src/layers/Database.js"
import { LocalApi, LocalApiLive, localApiSettings } from "../src/layers/LocalApi.js"
import { LocalCert, LocalCertLive } from "../src/layers/LocalCert.js"
import { LocalTokens, LocalTokensLive } from "../src/layers/LocalTokens.js"
import { LocalApiBackend } from "../src/programs/localapi/backend.js"
import { LocalApiBackendLive } from "../src/programs/localapi/backendLive.js"
import { makeSimPve } from "../src/sim/pve/index.js"
import { apiLayer } from "../test/local-api-backend-support.js"
import { desiredWith, protectionSeed } from "../test/protection-support.js"
import { LocalApiConfig } from "../src/schema/config.js"
import type { VmId } from "../src/schema/ids.js"
import { printTable, type Row, row } from "./table.js"

const CLIENTS = 50
const PHASE_MS = 3000
const WARMUP_MS = 500

/** The guest the controllers call as: desired, with a daily backup policy on a USB target. */
const GUEST = 101 as VmId

interface Load {
  readonly requests: number
  readonly seconds: number
  readonly p99Ms: number
  readonly errors: number
  /** CPU time of this process (servers and load generator) per request, µs */
  readonly cpuPerRequestUs: number
}

/** `CLIENTS` keep-alive loops of GET /backup/due for `ms`; latencies of every request. */
const load = (port: number, ca: string, token: string, ms: number): Promise<Load> =>
  new Promise((resolve) => {
    const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS, ca })
    const latencies: Array<number> = []
    let errors = 0
    let running = CLIENTS
    const started = performance.now()
    const cpu0 = process.cpuUsage()
    const deadline = started + ms
    const one = () => {
      if (performance.now() >= deadline) {
        if (--running === 0) {
          const seconds = (performance.now() - started) / 1000
          const cpu = process.cpuUsage(cpu0)
          agent.destroy()
          latencies.sort((a, b) => a - b)
          const requests = latencies.length
          resolve({
            requests,
            seconds,
            p99Ms: latencies[Math.floor(requests * 0.99)] ?? 0,
            errors,
            cpuPerRequestUs: (cpu.user + cpu.system) / Math.max(1, requests)
          })
        }
        return
      }
      const t0 = performance.now()
      const req = request({ host: "127.0.0.1", port, path: "/backup/due", agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
        res.on("data", () => undefined)
        res.on("end", () => {
          if (res.statusCode === 200) latencies.push(performance.now() - t0)
          else errors++
          one()
        })
      })
      req.on("error", () => {
        errors++
        one()
      })
      req.end()
    }
    for (let i = 0; i < CLIENTS; i++) one()
  })

const rssMiB = () => process.memoryUsage().rss / (1024 * 1024)

export const localApiBench: Effect.Effect<ReadonlyArray<Row>> = Effect.scoped(Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "felhom-bench-localapi-"))
  yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
  const config = LocalApiConfig.make({ listen: "127.0.0.1", port: 0, rate_per_minute: 1_000_000, rate_burst: 1_000_000, max_connections: 1024 })
  // the real backend over the in-process simulator and the real stores, as the daemon builds it
  const sim = yield* makeSimPve(yield* protectionSeed()).pipe(Effect.orDie)
  const dbPath = join(dir, "state.db")
  const base = apiLayer(sim, dbPath)
  const backend = LocalApiBackendLive({ desired: Effect.succeed(Option.some(desiredWith({ schedule: "02:00", retention: { keep_daily: 7 } }))), maxSnapshots: 5 })
  const ctx = yield* Layer.build(LocalApiLive().pipe(Layer.provideMerge(Layer.mergeAll(
    LocalTokensLive.pipe(Layer.provide(layerAt(dbPath)), Layer.orDie),
    LocalCertLive({ dir: join(dir, "local-api"), listen: "127.0.0.1" }),
    localApiSettings(config),
    backend.pipe(Layer.provideMerge(base))
  )))).pipe(Effect.orDie)
  const api = yield* Effect.provide(LocalApi, ctx)
  const tokens = yield* Effect.provide(LocalTokens, ctx)
  const cert = (yield* Effect.provide(LocalCert, ctx).pipe(Effect.flatMap((c) => c.state))).current
  yield* Effect.provide(AuditLog, ctx) // built: the real graph, audit log included
  const token = Redacted.value((yield* tokens.mint(GUEST, yield* tokens.newId).pipe(Effect.orDie)).token)
  // the bare server answers exactly what ours answers for this guest
  const due = yield* Effect.flatMap(Effect.provide(LocalApiBackend, ctx), (b) => b.backupDue(GUEST)).pipe(Effect.orDie)

  // the bare server: same certificate, same bytes, same keep-alive
  const body = Buffer.from(JSON.stringify(due))
  const bare = createServer({ key: cert.keyPem, cert: cert.certPem, keepAliveTimeout: config.idle_timeout_seconds * 1000 }, (_req, res) => {
    res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store", "content-length": body.length })
    res.end(body)
  })
  const barePort = yield* Effect.async<number>((resume) => {
    bare.listen(0, "127.0.0.1", () => {
      const a = bare.address()
      resume(Effect.succeed(typeof a === "object" && a !== null ? a.port : 0))
    })
  })
  yield* Effect.addFinalizer(() => Effect.async<void>((resume) => {
    bare.closeAllConnections()
    bare.close(() => resume(Effect.void))
  }))

  // the platform's own floor: @effect/platform's NodeHttpServer answering the same bytes, nothing else
  const platform = yield* NodeHttpServer.make(() => createServer({ key: cert.keyPem, cert: cert.certPem }), { host: "127.0.0.1", port: 0 }).pipe(Effect.orDie)
  yield* platform.serve(Effect.succeed(HttpServerResponse.uint8Array(body, { contentType: "application/json", headers: { "cache-control": "no-store" } })))
  const platformPort = platform.address._tag === "TcpAddress" ? platform.address.port : 0

  const run = (port: number, ms: number) => Effect.promise(() => load(port, cert.certPem, token, ms))
  yield* run(barePort, WARMUP_MS)
  yield* run(api.port, WARMUP_MS)
  global.gc?.()
  const rssBefore = rssMiB()
  const bares: Array<Load> = []
  const ours: Array<Load> = []
  const platforms: Array<Load> = []
  for (let i = 0; i < 2; i++) {
    bares.push(yield* run(barePort, PHASE_MS))
    ours.push(yield* run(api.port, PHASE_MS))
    platforms.push(yield* run(platformPort, PHASE_MS))
  }
  const rssAfter = rssMiB()
  const rate = (l: Load) => l.requests / l.seconds
  const best = (ls: ReadonlyArray<Load>) => ls.reduce((a, b) => (rate(b) > rate(a) ? b : a))
  const o = best(ours)
  const b = best(bares)
  const p = best(platforms)
  const errors = [...ours, ...bares].reduce((n, l) => n + l.errors, 0)
  const cpuBest = (ls: ReadonlyArray<Load>) => Math.min(...ls.map((l) => l.cpuPerRequestUs))
  return [
    row({
      metric: "local API GET /backup/due, CPU per request (servers + load generator)",
      ours: `${cpuBest(ours).toFixed(0)} µs`,
      baseline: `${cpuBest(bares).toFixed(0)} µs (bare node:https)`,
      ratio: cpuBest(ours) / cpuBest(bares),
      goal: "—"
    }),
    row({
      metric: `local API GET /backup/due, ${CLIENTS} keep-alive clients (req/s)`,
      ours: `${rate(o).toFixed(0)} req/s`,
      baseline: `${rate(b).toFixed(0)} req/s (bare node:https)`,
      ratio: rate(o) / rate(b),
      goal: "≥ 0.7×",
      ...(errors > 0 ? { met: false } : {})
    }),
    row({
      metric: "  the same against @effect/platform's bare NodeHttpServer (its floor)",
      ours: `${rate(o).toFixed(0)} req/s`,
      baseline: `${rate(p).toFixed(0)} req/s (platform, fixed bytes)`,
      ratio: rate(o) / rate(p),
      goal: "—"
    }),
    row({
      metric: "local API GET /backup/due p99 latency",
      ours: `${o.p99Ms.toFixed(1)} ms`,
      baseline: `${b.p99Ms.toFixed(1)} ms (bare node:https)`,
      ratio: o.p99Ms / b.p99Ms,
      goal: "—"
    }),
    row({
      metric: `RSS growth under the local API load (${(ours.length + bares.length + platforms.length) * PHASE_MS / 1000} s)`,
      ours: `${rssAfter.toFixed(0)} MiB after`,
      baseline: `${rssBefore.toFixed(0)} MiB before`,
      ratio: rssAfter / rssBefore,
      goal: "—"
    })
  ]
}))

if (process.argv[1] === fileURLToPath(import.meta.url)) void Effect.runPromise(localApiBench).then((rows) => printTable("local API", rows))
