/**
 * Host report collection for 50 / 200 / 500 guests on the in-process PVE simulator with a fixed
 * 5 ms latency per request (live clock): wall time of `collectReport` as a ratio to one
 * guest-config round trip (median of sequential `Proxmox.guestConfig` calls, same simulator, same
 * run) times the number of config rounds, ceil(N / GUEST_CONFIG_CONCURRENCY).
 */
import { benchGuests } from "./seed.js"
import { Effect, Layer, Schema } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { proxmoxSettings } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { JournalLive } from "../src/layers/Journal.js"
import { Proxmox, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { collectReport, GUEST_CONFIG_CONCURRENCY } from "../src/programs/daemon/report.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { VmId } from "../src/schema/ids.js"
import { decodeSeed, defaultSeedJson, layerSimHttpClient, makeSimPve } from "../src/sim/pve/index.js"

const SIZES = (process.env["BENCH_REPORT_GUESTS"] ?? "50,200,500").split(",").map(Number)
const LATENCY_MS = 5
const ROUND_TRIPS = 50
const COLLECT_RUNS = 3

const guestsOf = benchGuests


const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const t0 = performance.now()
    yield* effect
    return performance.now() - t0
  })

interface Row {
  readonly guests: number
  readonly collectMs: number
  readonly roundTripMs: number
  readonly boundMs: number
  readonly ratio: number
}

const measure = (n: number, dir: string) =>
  Effect.scoped(Effect.gen(function*() {
    const seed = yield* decodeSeed({ ...(defaultSeedJson as object), guests: guestsOf(n) }, "bench")
    const sim = yield* makeSimPve(seed, { faults: { latency_ms: LATENCY_MS } })
    const file = Schema.decodeUnknownSync(AgentConfigFile)({
      proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } }
    })
    const db = layerAt(join(dir, `state-${n}.db`))
    const layer = Layer.mergeAll(
      ProxmoxWithoutClient.pipe(Layer.provide(layerSimHttpClient(sim, { reasonHeader: REASON_HEADER })), Layer.provide(proxmoxSettings(file.proxmox!))),
      JournalLive.pipe(Layer.provide(db)),
      // the report carries the state epoch, which Authz reads from the same database
      Layer.effect(Authz, makeAuthz({ hostId: "bench-host", signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db))
    ).pipe(Layer.orDie)

    return yield* Effect.gen(function*() {
      const pve = yield* Proxmox
      const vmid = VmId.make(1000)
      yield* pve.guestConfig(vmid).pipe(Effect.orDie) // warm-up
      const trips: Array<number> = []
      for (let i = 0; i < ROUND_TRIPS; i++) trips.push(yield* timed(pve.guestConfig(vmid).pipe(Effect.orDie)))
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
      for (let i = 0; i < COLLECT_RUNS; i++) runs.push(yield* timed(collect))
      const collectMs = median(runs)
      const boundMs = roundTripMs * Math.ceil(n / GUEST_CONFIG_CONCURRENCY)
      const row: Row = { guests: n, collectMs, roundTripMs, boundMs, ratio: collectMs / boundMs }
      return row
    }).pipe(Effect.provide(layer))
  }))

export const reportBench = Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "felhom-report-bench-"))
  const rows = yield* Effect.forEach(SIZES, (n) => measure(n, dir)).pipe(
    Effect.ensuring(Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
  )
  console.log(
    `host report: collectReport wall time (median of ${COLLECT_RUNS}) vs one guest-config round trip ` +
      `(median of ${ROUND_TRIPS}, ${LATENCY_MS} ms simulated latency) x ceil(N / ${GUEST_CONFIG_CONCURRENCY})`
  )
  for (const r of rows) {
    console.log(
      `  ${String(r.guests).padStart(4)} guests: collect ${r.collectMs.toFixed(1).padStart(7)} ms, ` +
        `round trip ${r.roundTripMs.toFixed(2)} ms, bound ${r.boundMs.toFixed(1).padStart(7)} ms, ratio ${r.ratio.toFixed(2)}x`
    )
  }
  return rows
})

if (process.argv[1] === fileURLToPath(import.meta.url)) void Effect.runPromise(reportBench)
