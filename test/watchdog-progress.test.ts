/**
 * The systemd watchdog is pinged only from the hub loop's progress (issue 14): the real daemon
 * loop (runDaemon) against the PVE simulator and the dev hub in-process, under TestClock, with a
 * recording Systemd whose watchdog is armed (15 s). A cycle that hangs (its state-store probe
 * never returns, so no beat) stops the pings once stall_seconds have passed without progress and
 * says so once; a PVE task wait longer than stall_seconds keeps them going (each poll is a beat);
 * the sleep between cycles (3600 s, the longest the hub may ask) keeps them going; a loop that
 * comes back resumes them.
 */
import { HttpClient } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Deferred, Duration, Effect, FastCheck as fc, Layer, Logger, Option, Queue, Ref, Schema, TestClock } from "effect"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { HubSettingsLive, layerFrom, ProxmoxSettingsLive } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { HubWithoutClient } from "../src/layers/Hub.js"
import { JournalLive } from "../src/layers/Journal.js"
import { coverFor, LoopProgress, make as makeProgress } from "../src/layers/LoopProgress.js"
import { OpLog } from "../src/layers/OpLog.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { Systemd, type SystemdShape } from "../src/layers/Systemd.js"
import { type DaemonState, initialState, runDaemon } from "../src/programs/daemon/loop.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { DesiredState } from "../src/schema/desired.js"
import { makeAppHttpClient, makeDevHub } from "../src/sim/hub/index.js"
import { makeSimHttpClient, makeSimPve } from "../src/sim/pve/index.js"
import { dbFile, settle } from "./engine-support.js"
import { seedWith } from "./support.js"

const HOST = "host-watchdog"
const KEY = "watchdog-api-key-0123456789"
const STALL_SECONDS = 300
const PING_EVERY_S = 15

interface Recorded {
  readonly pings: Array<number>
  readonly statuses: Array<string>
  readonly logs: Array<string>
}

const recordingSystemd = (rec: Recorded): SystemdShape => ({
  ready: Effect.void,
  watchdog: Effect.map(Clock.currentTimeMillis, (t) => void rec.pings.push(t)),
  stopping: Effect.void,
  status: (text) => Effect.sync(() => void rec.statuses.push(text)),
  watchdogInterval: Option.some(Duration.seconds(PING_EVERY_S)),
  cloudflaredStatus: Effect.succeed("stopped")
})

const setup = (o: { readonly pollIntervalSeconds: number; readonly seed?: Record<string, unknown> }) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith(o.seed ?? {}))
    const hub = yield* makeDevHub({ apiKeys: { [KEY]: HOST }, pollIntervalSeconds: o.pollIntervalSeconds })
    const file = Schema.decodeUnknownSync(AgentConfigFile)({
      host_id: HOST,
      proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } },
      hub: { url: "https://hub.example.invalid", api_key: KEY },
      authz: { signers: [] },
      status_endpoint: { stall_seconds: STALL_SECONDS }
    })
    const rec: Recorded = { pings: [], statuses: [], logs: [] }
    const db = layerAt(dbFile())
    const services = Layer.mergeAll(
      ProxmoxWithoutClient.pipe(
        Layer.provide(Layer.succeed(HttpClient.HttpClient, makeSimHttpClient(sim, { reasonHeader: REASON_HEADER }))),
        Layer.provide(ProxmoxSettingsLive)
      ),
      HubWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, makeAppHttpClient(hub.app))), Layer.provide(HubSettingsLive)),
      JournalLive.pipe(Layer.provide(db)),
      Layer.effect(Authz, makeAuthz({ hostId: HOST, signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db)),
      GuestQueue.layer(4),
      Layer.succeed(Systemd, recordingSystemd(rec))
    ).pipe(Layer.provideMerge(layerFrom(file)), Layer.orDie)
    // the hang: while `hang` holds an open gate, the cycle's first step (the store probe) waits on it
    const hang: { gate: Deferred.Deferred<void> | null } = { gate: null }
    const logger = Logger.make(({ message }) => void rec.logs.push(Array.isArray(message) ? message.map(String).join(" ") : String(message)))
    const poke = yield* Queue.sliding<void>(1)
    const state = yield* Ref.make<DaemonState>(initialState)
    yield* Effect.forkScoped(
      runDaemon({ poke, state }).pipe(
        Effect.updateService(OpLog, (ops) => ({
          ...ops,
          probe: Effect.suspend(() => (hang.gate === null ? ops.probe : Effect.zipRight(Deferred.await(hang.gate), ops.probe)))
        })),
        Effect.provide(services),
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
    )
    return { sim, hub, rec, hang, state, poke }
  })

/** Advances simulated time in `step`-second steps, letting in-process I/O settle between them. */
const advance = (seconds: number, step = 5) =>
  Effect.gen(function*() {
    for (let i = 0; i < Math.ceil(seconds / step); i++) {
      yield* settle
      yield* TestClock.adjust(Duration.seconds(step))
    }
    yield* settle
  })

const now = Clock.currentTimeMillis
/** The longest silence between pings in [from, to] (ms), counting the window's edges. */
const longestGap = (pings: ReadonlyArray<number>, from: number, to: number) => {
  const inside = [from, ...pings.filter((t) => t >= from && t <= to), to]
  let gap = 0
  for (let i = 1; i < inside.length; i++) gap = Math.max(gap, inside[i]! - inside[i - 1]!)
  return gap
}
const STALL_LOG = /^hub loop made no progress for \d+s: no longer pinging the watchdog; systemd will restart the daemon$/

describe("watchdog pinged from the loop's progress (TestClock)", () => {
  it.scoped("a hung cycle stops the pings after stall_seconds and says so once; a loop that recovers resumes them", () =>
    Effect.gen(function*() {
      const { rec, hang, hub, poke } = yield* setup({ pollIntervalSeconds: 60 })
      yield* advance(5)
      expect((yield* hub.reports(HOST)).length).toBe(1)
      hang.gate = yield* Deferred.make<void>()
      // the next cycle (at 60 s) hangs at its first step
      yield* advance(60)
      const hungAt = yield* now
      yield* advance(STALL_SECONDS - 30)
      // still within the window: pinging
      expect(longestGap(rec.pings, hungAt - 60_000, yield* now)).toBeLessThanOrEqual(PING_EVERY_S * 1000)
      yield* advance(60)
      const stoppedBy = yield* now
      const pingsAtStop = rec.pings.length
      yield* advance(900)
      // no ping at all for 15 minutes: systemd (WatchdogSec=60) would have killed us long ago
      expect(rec.pings.length).toBe(pingsAtStop)
      expect(rec.pings.at(-1)!).toBeLessThanOrEqual(stoppedBy)
      expect(rec.logs.filter((l) => STALL_LOG.test(l))).toHaveLength(1)
      expect(rec.statuses.at(-1)).toMatch(/^hub loop stalled after "cycle (start|end)": no watchdog pings$/)
      expect((yield* hub.reports(HOST)).length).toBe(1)
      // a poke does not help a hung loop (it is not sleeping)
      yield* Queue.offer(poke, undefined)
      yield* advance(30)
      expect(rec.pings.length).toBe(pingsAtStop)

      // the hang ends: the cycle goes on, beats, and the pings resume within one interval
      const gate = hang.gate
      hang.gate = null
      yield* Deferred.succeed(gate, undefined)
      const releasedAt = yield* now
      yield* advance(120)
      expect(rec.pings.filter((t) => t > releasedAt).length).toBeGreaterThanOrEqual(7)
      expect(rec.pings.find((t) => t > releasedAt)! - releasedAt).toBeLessThanOrEqual(PING_EVERY_S * 1000 + 5000)
      expect(rec.logs).toContain("hub loop progressing again: pinging the watchdog again")
      expect(rec.statuses.at(-1)).toBe("polling the hub")
      expect((yield* hub.reports(HOST)).length).toBeGreaterThanOrEqual(2)
    }), 120_000)

  it.scoped("a PVE task wait longer than stall_seconds keeps pinging: each poll is progress", () =>
    Effect.gen(function*() {
      const TASK_MS = 2 * STALL_SECONDS * 1000
      const { rec, hub, sim } = yield* setup({ pollIntervalSeconds: 60, seed: { task_durations_ms: { vzstart: TASK_MS } } })
      yield* advance(5)
      // guest 102 is stopped; the desired state wants it running: a start, allowed without a signature
      const guests = yield* sim.guests
      const desired = Schema.decodeUnknownSync(DesiredState)({
        generation: 0,
        guests: [
          { vmid: 100, hostname: "cust-alpha", cores: 2, memory_bytes: 2048 * 1048576, swap_mib: 512, rootfs_gib: 16, power: "running", description: "felhom customer guest alpha", tags: ["customer", "felhom"] },
          { vmid: 101, hostname: "cust-beta", memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "", tags: [] },
          { vmid: 102, hostname: "ops-tools", memory_bytes: 512 * 1048576, swap_mib: 512, rootfs_gib: 4, power: "running", description: "", tags: [] }
        ]
      })
      expect(guests.find((g) => g.vmid === 102)?.status).toBe("stopped")
      const starts = Effect.map(sim.tasks, (ts) => ts.filter((t) => t.type === "vzstart").length)
      const startsBefore = yield* starts
      yield* hub.setDesired(HOST, desired)
      yield* advance(60)
      const waitFrom = yield* now
      expect(yield* starts).toBeGreaterThan(startsBefore)
      // still running well past the stall window (the wait is what is being tested)
      yield* advance(STALL_SECONDS + 60)
      expect((yield* sim.guests).find((g) => g.vmid === 102)?.status).toBe("stopped")
      yield* advance(TASK_MS / 1000 - STALL_SECONDS)
      const waitTo = yield* now
      // the task really ran for longer than the stall window, and the cycle waited on it throughout
      expect((yield* sim.guests).find((g) => g.vmid === 102)?.status).toBe("running")
      expect(longestGap(rec.pings, waitFrom, waitTo)).toBeLessThanOrEqual(PING_EVERY_S * 1000)
      expect(rec.logs.filter((l) => STALL_LOG.test(l))).toHaveLength(0)
    }), 120_000)

  it.scoped("the sleep between cycles (3600 s) keeps pinging", () =>
    Effect.gen(function*() {
      const { rec, hub } = yield* setup({ pollIntervalSeconds: 3600 })
      yield* advance(5)
      const from = yield* now
      yield* advance(2 * 3600 + 10, 10)
      expect((yield* hub.reports(HOST)).length).toBe(3)
      expect(longestGap(rec.pings, from, yield* now)).toBeLessThanOrEqual(PING_EVERY_S * 1000)
      expect(rec.logs.filter((l) => STALL_LOG.test(l))).toHaveLength(0)
    }), 120_000)
})

describe("LoopProgress's rule", () => {
  it.effect.prop(
    "stalled exactly when now > max(last beat, idle until) + stall",
    { beatAt: fc.integer({ min: 0, max: 10_000 }), idleFor: fc.integer({ min: -5_000, max: 10_000 }), after: fc.integer({ min: 0, max: 20_000 }) },
    ({ beatAt, idleFor, after }) =>
      Effect.gen(function*() {
        const p = yield* makeProgress(30)
        yield* TestClock.adjust(Duration.seconds(beatAt))
        yield* p.beat("step")
        const t = yield* now
        yield* p.idleUntil(t + idleFor * 1000)
        yield* TestClock.adjust(Duration.seconds(after))
        const covered = Math.max(t, t + idleFor * 1000)
        expect(yield* p.stalled).toBe((yield* now) > covered + 30_000)
      })
  )

  it.effect("coverFor: a bounded wait (the update's root helper) covers the loop until its bound, not after", () =>
    Effect.gen(function*() {
      const p = yield* makeProgress(30)
      const layer = Layer.succeed(LoopProgress, p)
      yield* coverFor("stage", Duration.minutes(5)).pipe(Effect.provide(layer))
      yield* TestClock.adjust("5 minutes")
      yield* TestClock.adjust("30 seconds")
      expect(yield* p.stalled).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* p.stalled).toBe(true)
      // outside a daemon (CLI, tests) it does nothing
      yield* coverFor("stage", Duration.minutes(5))
    }))

  it.effect("the boundary: stall_seconds of silence is still alive, one more millisecond is not", () =>
    Effect.gen(function*() {
      const p = yield* makeProgress(60)
      yield* p.beat("a")
      yield* TestClock.adjust("60 seconds")
      expect(yield* p.stalled).toBe(false)
      yield* TestClock.adjust("1 millis")
      expect(yield* p.stalled).toBe(true)
      expect(yield* p.silentForMs).toBe(60_001)
      yield* p.beat("b")
      expect(yield* p.stalled).toBe(false)
    }))
})
