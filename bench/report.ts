/**
 * Host report collection for 50 / 200 / 500 guests against `sim pve` as a separate process (the
 * shipped bin, real HTTPS on loopback, pinned certificate), so the simulator's CPU is not charged
 * to the client. The bound is the simulator's own capacity: it serves one request at a time on
 * one thread, so a collection cannot finish before the simulator has spent the CPU time it takes
 * to serve it, measured from /proc/<pid>/stat over the timed collections themselves (per
 * collection). The ratio is the wall time of `collectReport` (median of 3 after a warm-up) to that
 * floor: what the client's own work, its concurrency and the network add. Also shown: the naive bound of
 * sequential round trips × ceil(N / GUEST_CONFIG_CONCURRENCY), which a single-threaded server
 * cannot reach.
 */
import { benchGuests } from "./seed.js"
import { HttpClient } from "@effect/platform"
import { Effect, Layer, Schema } from "effect"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { proxmoxSettings } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { JournalLive } from "../src/layers/Journal.js"
import { Proxmox, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { PveHttpClientLive } from "../src/layers/PveTransport.js"
import { collectReport, GUEST_CONFIG_CONCURRENCY } from "../src/programs/daemon/report.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { VmId } from "../src/schema/ids.js"
import { defaultSeedJson } from "../src/sim/pve/index.js"
import { median, Procs, startSimPve } from "./proc.js"
import { printTable, type Row, row } from "./table.js"

const SIZES = (process.env["BENCH_REPORT_GUESTS"] ?? "50,200,500").split(",").map(Number)
const ROUND_TRIPS = 200
/** USER_HZ on Linux: /proc/<pid>/stat counts CPU time in 1/100 s */
const TICK_MS = 10

/** utime + stime of a process, ms. */
const cpuMsOf = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS
}
const COLLECT_RUNS = 3

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const t0 = performance.now()
    yield* effect
    return performance.now() - t0
  })

const measure = (n: number, dir: string, procs: Procs) =>
  Effect.scoped(Effect.gen(function*() {
    const seedFile = join(dir, `seed-${n}.json`)
    writeFileSync(seedFile, JSON.stringify({ ...(defaultSeedJson as object), guests: benchGuests(n) }))
    const pve = yield* Effect.promise(() => startSimPve(procs, seedFile))
    yield* Effect.addFinalizer(() => Effect.promise(() => pve.proc.stop()))
    const file = Schema.decodeUnknownSync(AgentConfigFile)({
      proxmox: {
        url: pve.env["FELHOM_AGENT_PROXMOX_URL"],
        token_id: pve.env["FELHOM_AGENT_PROXMOX_TOKEN_ID"],
        token_secret: pve.env["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"],
        node: "pve",
        tls: { fingerprint_sha256: pve.env["FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256"] }
      }
    })
    let requests = 0
    const db = layerAt(join(dir, `state-${n}.db`))
    const layer = Layer.mergeAll(
      ProxmoxWithoutClient.pipe(
        Layer.provide(Layer.effect(HttpClient.HttpClient, Effect.map(HttpClient.HttpClient, HttpClient.tapRequest(() => Effect.sync(() => void requests++))))),
        Layer.provide(PveHttpClientLive),
        Layer.provide(proxmoxSettings(file.proxmox!))
      ),
      JournalLive.pipe(Layer.provide(db)),
      // the report carries the state epoch, which Authz reads from the same database
      Layer.effect(Authz, makeAuthz({ hostId: "bench-host", signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db))
    ).pipe(Layer.orDie)

    return yield* Effect.gen(function*() {
      const proxmox = yield* Proxmox
      const vmid = VmId.make(1000)
      for (let i = 0; i < 5; i++) yield* proxmox.guestConfig(vmid).pipe(Effect.orDie) // warm-up (TLS session, JIT)
      const trips: Array<number> = []
      const serverBefore = cpuMsOf(pve.proc.pid)
      for (let i = 0; i < ROUND_TRIPS; i++) trips.push(yield* timed(proxmox.guestConfig(vmid).pipe(Effect.orDie)))
      const serverMsPerRequest = (cpuMsOf(pve.proc.pid) - serverBefore) / ROUND_TRIPS
      const roundTripMs = median(trips)
      const collect = collectReport({
        hostId: "bench-host",
        desiredGenerationApplied: null,
        pendingSignatures: [],
        cloudflared: Effect.succeed("running" as const)
      }).pipe(
        Effect.tap((r) => r.guests.length === n ? Effect.void : Effect.dieMessage(`report has ${r.guests.length} guests, expected ${n}`)),
        Effect.orDie
      )
      yield* collect // warm-up
      const runs: Array<number> = []
      requests = 0
      const serverAtCollect = cpuMsOf(pve.proc.pid)
      for (let i = 0; i < COLLECT_RUNS; i++) runs.push(yield* timed(collect))
      const perCollect = requests / COLLECT_RUNS
      const collectMs = median(runs)
      // the simulator's CPU time spent serving the collections themselves (concurrent requests
      // cost it less each than sequential ones: shared TLS sessions and event-loop turns)
      const floorMs = (cpuMsOf(pve.proc.pid) - serverAtCollect) / COLLECT_RUNS
      const naiveMs = roundTripMs * Math.ceil(n / GUEST_CONFIG_CONCURRENCY)
      return row({
        metric: `host report, ${n} guests (${perCollect} requests; naive bound ${naiveMs.toFixed(0)} ms)`,
        ours: `${collectMs.toFixed(0)} ms`,
        baseline: `${floorMs.toFixed(0)} ms sim CPU floor (${(floorMs / perCollect).toFixed(2)} ms/request; ${serverMsPerRequest.toFixed(2)} sequential)`,
        ratio: collectMs / floorMs,
        goal: "≤ 1.5×"
      })
    }).pipe(Effect.provide(layer))
  }))

export const reportBench = Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "felhom-report-bench-"))
  const procs = new Procs(dir)
  const rows: ReadonlyArray<Row> = yield* Effect.forEach(SIZES, (n) => measure(n, dir, procs)).pipe(
    Effect.ensuring(Effect.promise(async () => {
      await procs.stopAll()
      rmSync(dir, { recursive: true, force: true })
    }))
  )
  return rows
})

if (process.argv[1] === fileURLToPath(import.meta.url)) void Effect.runPromise(reportBench).then((rows) => printTable("host report", rows))
