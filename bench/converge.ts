/**
 * Converge 200 guests with mixed drift on the simulator (every task 2 s of simulated time,
 * TestClock): total simulated time as a ratio to the lower bound (the longest per-guest chain,
 * or the total task time spread over the global cap, whichever is larger), and PVE calls per
 * action.
 */
import { benchGuests } from "./seed.js"
import { HttpClient } from "@effect/platform"
import { Clock, Effect, Fiber, Layer, Schema, TestClock, TestContext } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { proxmoxSettings } from "../src/layers/Config.js"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { JournalLive } from "../src/layers/Journal.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { executePlan, observeActual } from "../src/programs/control/apply.js"
import { plan } from "../src/programs/control/plan.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { DesiredState } from "../src/schema/desired.js"
import { decodeSeed, defaultSeedJson, makeSimHttpClient, makeSimPve } from "../src/sim/pve/index.js"
import { printTable, row } from "./table.js"

const N = Number(process.env["BENCH_GUESTS"] ?? 200)
const CAP = 4
const TASK_MS = 2000


const guests = benchGuests(N)

/** Drift by guest: a third needs more memory, a third a bigger disk, a third a start (and all three overlap). */
const desired = Schema.decodeUnknownSync(DesiredState)({
  generation: 1,
  guests: guests.map((g, i) => ({
    vmid: g.vmid,
    hostname: g.config.hostname,
    cores: 2,
    memory_bytes: (i % 3 === 0 ? 4096 : 2048) * 1024 * 1024,
    swap_mib: 512,
    rootfs_gib: i % 3 === 1 || i % 5 === 0 ? 16 : 8,
    power: "running",
    description: "",
    tags: []
  }))
})

export const convergeBench = Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "felhom-converge-"))
  const durations = Object.fromEntries(["vzstart", "resize", "vzstop"].map((t) => [t, TASK_MS]))
  const seed = yield* decodeSeed({ ...(defaultSeedJson as object), guests, task_durations_ms: durations }, "bench")
  const sim = yield* makeSimPve(seed)
  let calls = 0
  const client = makeSimHttpClient(sim).pipe(HttpClient.tapRequest(() => Effect.sync(() => void calls++)))
  const file = Schema.decodeUnknownSync(AgentConfigFile)({
    proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } }
  })
  const db = layerAt(join(dir, "state.db"))
  const layer = Layer.mergeAll(
    ProxmoxWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(proxmoxSettings(file.proxmox!))),
    JournalLive.pipe(Layer.provide(db)),
    Layer.effect(Authz, makeAuthz({ hostId: "bench", signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db)),
    GuestQueue.layer(CAP)
  ).pipe(Layer.orDie)

  const result = yield* Effect.gen(function*() {
    const p = plan(yield* observeActual, desired)
    const perGuest = new Map<number, number>()
    for (const a of p.actions) {
      const ms = a.kind === "set_config" ? 0 : TASK_MS
      perGuest.set(a.vmid, (perGuest.get(a.vmid) ?? 0) + ms)
    }
    const chainMs = Math.max(...perGuest.values())
    const totalTaskMs = [...perGuest.values()].reduce((x, y) => x + y, 0)
    const lowerBoundMs = Math.max(chainMs, totalTaskMs / CAP)
    calls = 0
    const t0 = yield* Clock.currentTimeMillis
    const fiber = yield* Effect.fork(executePlan(p))
    while (fiber.unsafePoll() === null) {
      yield* Effect.promise(() => new Promise<void>((r) => setImmediate(r))).pipe(Effect.repeatN(2))
      yield* TestClock.adjust("250 millis")
    }
    const outcomes = yield* Fiber.join(fiber)
    const elapsedMs = (yield* Clock.currentTimeMillis) - t0
    const again = plan(yield* observeActual, desired)
    return { actions: p.actions.length, applied: outcomes.filter((o) => o.result === "applied").length, elapsedMs, lowerBoundMs, calls, remaining: again.actions.length }
  }).pipe(Effect.provide(layer))

  rmSync(dir, { recursive: true, force: true })
  const note = `${result.actions} actions, ${result.applied} applied, ${result.remaining} left`
  return [
    row({
      metric: `converge ${N} guests (cap ${CAP}, ${TASK_MS / 1000} s tasks), simulated time; ${note}`,
      ours: `${(result.elapsedMs / 1000).toFixed(1)} s`,
      baseline: `${(result.lowerBoundMs / 1000).toFixed(1)} s lower bound`,
      ratio: result.elapsedMs / result.lowerBoundMs,
      goal: "≤ 1.15×",
      met: result.elapsedMs / result.lowerBoundMs <= 1.15 && result.remaining === 0
    }),
    row({
      metric: `converge: PVE calls per action`,
      ours: (result.calls / result.actions).toFixed(2),
      baseline: "4 per action",
      ratio: result.calls / result.actions / 4,
      goal: "≤ 1×"
    })
  ]
}).pipe(Effect.scoped, Effect.provide(TestContext.TestContext))

if (process.argv[1] === fileURLToPath(import.meta.url)) void Effect.runPromise(convergeBench).then((rows) => printTable("converge", rows))
