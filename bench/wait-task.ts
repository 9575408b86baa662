/**
 * waitTask: PVE calls per task for tasks of 1 s, 10 s, 60 s and 600 s of simulated time
 * (TestClock, in-process simulator), against the floor of one status call per 5 s.
 */
import { HttpClient } from "@effect/platform"
import { Duration, Effect, Fiber, Layer, Schema, TestClock, TestContext } from "effect"
import { proxmoxSettings } from "../src/layers/Config.js"
import { Proxmox, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { fileURLToPath } from "node:url"
import { SnapshotName, VmId } from "../src/schema/ids.js"
import { decodeSeed, defaultSeedJson, makeSimHttpClient, makeSimPve } from "../src/sim/pve/index.js"
import { printTable, row } from "./table.js"

const settle = Effect.promise(() => new Promise<void>((r) => setImmediate(r))).pipe(Effect.repeatN(2))

const measure = (taskSeconds: number) =>
  Effect.scoped(Effect.gen(function*() {
    const seed = yield* decodeSeed({ ...(defaultSeedJson as object), task_durations_ms: { vzsnapshot: taskSeconds * 1000 } }, "bench")
    const sim = yield* makeSimPve(seed)
    let calls = 0
    const client = makeSimHttpClient(sim).pipe(HttpClient.tapRequest(() => Effect.sync(() => void calls++)))
    const file = Schema.decodeUnknownSync(AgentConfigFile)({
      proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } }
    })
    const layer = ProxmoxWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(proxmoxSettings(file.proxmox!)))
    const pve = yield* Effect.provide(Proxmox, layer)
    const start = yield* Effect.fork(pve.snapshot(VmId.make(101), Schema.decodeSync(SnapshotName)("bench")))
    yield* settle
    const upid = yield* Fiber.join(start)
    calls = 0 // count only what waiting costs
    const waiter = yield* Effect.fork(pve.waitTask(upid, { timeout: Duration.hours(2) }))
    while (waiter.unsafePoll() === null) {
      yield* settle
      yield* TestClock.adjust("250 millis")
    }
    yield* Fiber.join(waiter)
    return calls
  }))

export const waitTaskBench = Effect.gen(function*() {
  const rows: Array<{ seconds: number; calls: number; floor: number; ratio: number }> = []
  for (const seconds of [1, 10, 60, 600]) {
    const calls = yield* measure(seconds)
    const floor = Math.ceil(seconds / 5)
    rows.push({ seconds, calls, floor, ratio: calls / floor })
  }
  return rows.map((r) =>
    row({
      metric: `waitTask on one ${r.seconds} s task: status calls (single-task figures kept)`,
      ours: `${r.calls} calls`,
      baseline: `${r.floor} (1 per 5 s)`,
      ratio: r.ratio,
      goal: "—"
    })
  )
}).pipe(Effect.provide(TestContext.TestContext))

if (process.argv[1] === fileURLToPath(import.meta.url)) void Effect.runPromise(waitTaskBench).then((rows) => printTable("waitTask", rows))
