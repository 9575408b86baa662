/**
 * The daemon's hub loop under TestClock, against the PVE simulator and the dev hub in-process
 * (both on the test's clock): first report immediately, the adopted and clamped interval,
 * resilience to collect and report errors, bad hub input changing nothing, clean interruption.
 */
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Layer, Option, Queue, Ref, Schema, TestClock } from "effect"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { HubSettingsLive, layerFrom, ProxmoxSettingsLive } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { HubWithoutClient } from "../src/layers/Hub.js"
import { JournalLive } from "../src/layers/Journal.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { makeSystemdLayer } from "../src/layers/Systemd.js"
import { type DaemonState, initialState, runDaemon } from "../src/programs/daemon/loop.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { DesiredState } from "../src/schema/desired.js"
import { type DevHub, makeAppHttpClient, makeDevHub } from "../src/sim/hub/index.js"
import { makeSimHttpClient, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { NodeContext } from "@effect/platform-node"
import { spawn } from "node:child_process"
import { dbFile, settle } from "./engine-support.js"
import { seedWith } from "./support.js"

const HOST = "host-loop"
const KEY = "loop-api-key-0123456789"

interface Faults {
  /** Answer hub calls with this instead of passing them to the dev hub. */
  hubAnswer: { status: number; body: string } | null
}

const setup = (pollIntervalSeconds: number) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({}))
    const hub = yield* makeDevHub({ apiKeys: { [KEY]: HOST }, pollIntervalSeconds })
    const faults: Faults = { hubAnswer: null }
    const file = Schema.decodeUnknownSync(AgentConfigFile)({
      host_id: HOST,
      proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } },
      hub: { url: "https://hub.example.invalid", api_key: KEY },
      authz: { signers: [] }
    })
    const hubApp = makeAppHttpClient(hub.app)
    const hubClient = HttpClient.make((request) =>
      faults.hubAnswer === null
        ? hubApp.execute(request)
        : Effect.succeed(HttpClientResponse.fromWeb(request, new Response(faults.hubAnswer.body, { status: faults.hubAnswer.status })))
    )
    const path = dbFile()
    const db = layerAt(path)
    const config = layerFrom(file)
    const services = Layer.mergeAll(
      ProxmoxWithoutClient.pipe(
        Layer.provide(Layer.succeed(HttpClient.HttpClient, makeSimHttpClient(sim, { reasonHeader: REASON_HEADER }))),
        Layer.provide(ProxmoxSettingsLive)
      ),
      HubWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, hubClient)), Layer.provide(HubSettingsLive)),
      JournalLive.pipe(Layer.provide(db)),
      Layer.effect(Authz, makeAuthz({ hostId: HOST, signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db)),
      GuestQueue.layer(4),
      // real systemd layer; no NOTIFY_SOCKET in tests, so notifications are no-ops
      makeSystemdLayer({ systemctl: "/bin/false", systemdNotify: "/bin/false" }).pipe(Layer.provide(NodeContext.layer))
    ).pipe(Layer.provideMerge(config), Layer.orDie)
    const poke = yield* Queue.sliding<void>(1)
    const state = yield* Ref.make<DaemonState>(initialState)
    const fiber = yield* Effect.forkScoped(runDaemon({ poke, state }).pipe(Effect.provide(services)))
    return { sim, hub, faults, fiber, state, path }
  })

const reportCount = (hub: DevHub) => Effect.map(hub.reports(HOST), (r) => r.length)
const advance = (seconds: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < seconds * 2; i++) {
      yield* settle
      yield* TestClock.adjust("500 millis")
    }
    yield* settle
  })

const snapshot = (sim: SimPve) => Effect.map(sim.guests, (gs) => JSON.stringify(gs))

describe("daemon hub loop under TestClock", () => {
  it.scoped("reports immediately, then on the adopted interval", () =>
    Effect.gen(function*() {
      const { hub } = yield* setup(120)
      yield* advance(1)
      expect(yield* reportCount(hub)).toBe(1)
      yield* advance(117)
      expect(yield* reportCount(hub)).toBe(1)
      yield* advance(3)
      expect(yield* reportCount(hub)).toBe(2)
      yield* advance(120)
      expect(yield* reportCount(hub)).toBe(3)
    }))

  it.scoped("clamps the hub's interval to [60, 3600]", () =>
    Effect.gen(function*() {
      const fast = yield* setup(5)
      yield* advance(1)
      expect(Duration.toMillis((yield* Ref.get(fast.state)).interval)).toBe(60_000)
      yield* advance(58)
      expect(yield* reportCount(fast.hub)).toBe(1) // not every 5 s
      yield* advance(2)
      expect(yield* reportCount(fast.hub)).toBe(2)
    }))

  it.scoped("a failed collect skips that report and the loop goes on", () =>
    Effect.gen(function*() {
      const { hub, sim } = yield* setup(60)
      yield* advance(1)
      expect(yield* reportCount(hub)).toBe(1)
      yield* sim.revoke("felhom@pve!agent", "/nodes/pve", ["Sys.Audit"])
      yield* advance(61)
      expect(yield* reportCount(hub)).toBe(1) // node status unreadable: no report this cycle
      yield* sim.grant("felhom@pve!agent", "/nodes/pve", ["Sys.Audit"])
      yield* advance(61)
      expect(yield* reportCount(hub)).toBe(2)
    }))

  it.scoped("bad hub answers (500, malformed, wrong types, a huge body) change nothing and the loop goes on", () =>
    Effect.gen(function*() {
      const { hub, sim, faults, fiber } = yield* setup(60)
      yield* advance(1)
      const before = yield* snapshot(sim)
      for (const answer of [
        { status: 500, body: "{\"error\":\"boom\"}" },
        { status: 200, body: "{not json" },
        { status: 200, body: "{\"poll_interval_seconds\":\"soon\",\"blocked\":\"no\",\"desired_generation\":-1,\"has_signed_ops\":1}" },
        { status: 200, body: `{"poll_interval_seconds":60,"pad":"${"x".repeat(5 * 1024 * 1024)}"}` }
      ]) {
        faults.hubAnswer = answer
        yield* advance(61)
        expect(fiber.unsafePoll(), `loop still alive after ${answer.body.slice(0, 30)}`).toBeNull()
      }
      expect(yield* snapshot(sim)).toBe(before)
      faults.hubAnswer = null
      const reportsBefore = yield* reportCount(hub)
      yield* advance(61)
      expect(yield* reportCount(hub)).toBe(reportsBefore + 1)
    }), 60_000)

  it.scoped("new desired state is reconciled; the destroy waits for a signature and is reported pending", () =>
    Effect.gen(function*() {
      const { hub, sim } = yield* setup(60)
      yield* advance(1)
      const desired = Schema.decodeUnknownSync(DesiredState)({
        generation: 0,
        guests: [
          { vmid: 100, hostname: "cust-alpha", cores: 2, memory_bytes: 2048 * 1048576, swap_mib: 512, rootfs_gib: 16, power: "running", description: "felhom customer guest alpha", tags: ["customer", "felhom"] },
          { vmid: 102, hostname: "ops-tools", memory_bytes: 512 * 1048576, swap_mib: 512, rootfs_gib: 4, power: "stopped", description: "", tags: [] }
        ]
      })
      const gen = yield* hub.setDesired(HOST, desired)
      yield* advance(121)
      const last = (yield* hub.reports(HOST)).at(-1)!.report
      expect(last.pending_signatures.map((p) => `${p.op}:${p.vmid}`)).toEqual(["decommission:101"])
      expect(Option.isSome(yield* sim.guest(101))).toBe(true)
      expect(last.desired_generation_applied).toBe(gen)
    }))

  it.scoped("interruption stops the loop cleanly", () =>
    Effect.gen(function*() {
      const { hub, fiber } = yield* setup(60)
      yield* advance(1)
      yield* Fiber.interrupt(fiber)
      const exit = yield* Fiber.await(fiber)
      expect(Exit.isInterrupted(exit)).toBe(true)
      const n = yield* reportCount(hub)
      yield* advance(300)
      expect(yield* reportCount(hub)).toBe(n)
    }))

  // issue 8: a locked or unwritable state store stops every change, never the heartbeat
  it.scoped("a locked state store: the heartbeat goes on, nothing is changed, the store is reported unhealthy; then it heals", () =>
    Effect.gen(function*() {
      const { fiber, hub, path, sim } = yield* setup(60)
      yield* advance(1)
      const desired = Schema.decodeUnknownSync(DesiredState)({
        generation: 0,
        guests: [
          { vmid: 100, hostname: "cust-alpha", cores: 3, memory_bytes: 2048 * 1048576, swap_mib: 512, rootfs_gib: 16, power: "running", description: "felhom customer guest alpha", tags: ["customer", "felhom"] },
          { vmid: 101, hostname: "cust-beta", memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "", tags: [] },
          { vmid: 102, hostname: "ops-tools", memory_bytes: 512 * 1048576, swap_mib: 512, rootfs_gib: 4, power: "stopped", description: "", tags: [] }
        ]
      })
      // another process holds the database's write lock (as a stuck backup tool or a full disk would)
      const locker = spawn("python3", ["-c", [
        "import sqlite3, sys, time",
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)",
        "c.execute('BEGIN EXCLUSIVE')",
        "print('locked', flush=True)",
        "time.sleep(120)"
      ].join("\n"), path], { stdio: ["ignore", "pipe", "inherit"] })
      yield* Effect.promise(() => new Promise<void>((resolve) => locker.stdout.once("data", () => resolve())))
      const tasksBefore = (yield* sim.tasks).length
      const reportsBefore = yield* reportCount(hub)
      yield* hub.setDesired(HOST, desired)
      yield* advance(61)
      expect(yield* reportCount(hub)).toBeGreaterThan(reportsBefore)
      const locked = (yield* hub.reports(HOST)).at(-1)!.report
      expect(locked.state_store.healthy).toBe(false)
      expect(locked.state_store.detail).toContain("state store")
      expect((yield* sim.tasks).length).toBe(tasksBefore) // cores 3 is wanted, but nothing ran
      expect(fiber.unsafePoll()).toBeNull() // the daemon is alive
      locker.kill("SIGKILL")
      yield* Effect.promise(() => new Promise<void>((resolve) => locker.once("exit", () => resolve())))
      yield* advance(61)
      const healed = (yield* hub.reports(HOST)).at(-1)!.report
      expect(healed.state_store.healthy).toBe(true)
      yield* advance(61)
      expect((yield* sim.tasks).length).toBeGreaterThan(tasksBefore) // the change happens once the store is back
    }), 60_000)
})
