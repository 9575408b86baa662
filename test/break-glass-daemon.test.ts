/**
 * Break-glass through the daemon (issue 14, "break-glass expires on schedule across a restart"):
 * the dev hub publishes a desired state with the customer's consent and queues a signed enable;
 * the daemon's loop runs it (consent read from its own state), the expiry fiber runs beside it;
 * the daemon stops, the clock passes `until`, a new daemon over the same state database closes
 * the door at start. Also: withdrawing the consent in a newer desired state closes it. TestClock.
 */
import { HttpClient } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Option, Queue, Ref, Schema, TestClock } from "effect"
import { Authz, make as makeAuthz, parseSigners } from "../src/layers/Authz.js"
import { HubSettingsLive, layerFrom, ProxmoxSettingsLive } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { HubWithoutClient } from "../src/layers/Hub.js"
import { JournalLive } from "../src/layers/Journal.js"
import { PrivilegedBreakGlass } from "../src/layers/Privileged.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { makeSystemdLayer } from "../src/layers/Systemd.js"
import { consentOf, startBreakGlass } from "../src/programs/breakglass/daemon.js"
import { BreakGlass, breakGlassLayer } from "../src/programs/breakglass/service.js"
import { type DaemonState, initialState, runDaemon } from "../src/programs/daemon/loop.js"
import { AgentConfigFile } from "../src/schema/config.js"
import type { DesiredState } from "../src/schema/desired.js"
import { type DevHub, makeAppHttpClient, makeDevHub } from "../src/sim/hub/index.js"
import { makeSimHttpClient, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, HOST, settle, SIGNERS } from "./engine-support.js"
import { seedWith } from "./support.js"
import { enableJob, fakeUnit, HOUR, iso, REASON } from "./break-glass-support.js"

const KEY = "bg-daemon-api-key-0123456789"

const fileFor = (sim: SimPve) =>
  Schema.decodeUnknownSync(AgentConfigFile)({
    host_id: HOST,
    proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } },
    hub: { url: "https://hub.example.invalid", api_key: KEY },
    authz: { signers: SIGNERS },
    break_glass: { max_hours: 24, check_interval_seconds: 30 }
  })

/** A desired state with only the consent flag of interest (the seed's guests plan as pending destroys: never run unsigned). */
/** One daemon's services over the shared simulator, hub and state database (what cli/daemon.ts wires). */
const daemonServices = (o: {
  readonly sim: SimPve
  readonly hub: DevHub
  readonly db: ReturnType<typeof layerAt>
  readonly signers: Effect.Effect.Success<ReturnType<typeof parseSigners>>
  readonly state: Ref.Ref<DaemonState>
  readonly unit: ReturnType<typeof fakeUnit>
  readonly file: ReturnType<typeof fileFor>
}) =>
  Layer.mergeAll(
    ProxmoxWithoutClient.pipe(
      Layer.provide(Layer.succeed(HttpClient.HttpClient, makeSimHttpClient(o.sim, { reasonHeader: REASON_HEADER }))),
      Layer.provide(ProxmoxSettingsLive)
    ),
    HubWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, makeAppHttpClient(o.hub.app))), Layer.provide(HubSettingsLive)),
    JournalLive.pipe(Layer.provide(o.db)),
    Layer.effect(Authz, makeAuthz({ hostId: HOST, signers: o.signers, clockSkewSeconds: 60 })).pipe(Layer.provide(o.db)),
    GuestQueue.layer(4),
    makeSystemdLayer({ systemctl: "/bin/false", systemdNotify: "/bin/false" }).pipe(Layer.provide(NodeContext.layer)),
    // what cli/daemon.ts provides: the consent from this daemon's state, the unit (here a fake)
    breakGlassLayer(consentOf(o.state)).pipe(Layer.provide(Layer.succeed(PrivilegedBreakGlass, o.unit.shape)), Layer.provide(o.db))
  ).pipe(Layer.provideMerge(layerFrom(o.file)), Layer.orDie)

const desiredWith = (consent: boolean): DesiredState => ({ generation: 0, guests: [], break_glass_consent: consent })

const advance = (seconds: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < seconds; i++) {
      yield* settle
      yield* TestClock.adjust("1 seconds")
    }
    yield* settle
  })

describe("break-glass in the daemon", () => {
  it.scoped("a hub-relayed signed enable runs with consent; the door closes on schedule across a daemon restart", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const hub = yield* makeDevHub({ apiKeys: { [KEY]: HOST }, pollIntervalSeconds: 60 })
      const unit = fakeUnit()
      const path = dbFile()
      const file = fileFor(sim)
      const signers = yield* Effect.orDie(parseSigners(SIGNERS))

      /** One daemon process: its own layers over the same state database. */
      const startDaemon = Effect.gen(function*() {
        const db = layerAt(path)
        const state = yield* Ref.make<DaemonState>(initialState)
        const services = daemonServices({ sim, hub, db, signers, state, unit, file })
        const poke = yield* Queue.sliding<void>(1)
        const fiber = yield* Effect.fork(runDaemon({ poke, state, alongside: startBreakGlass }).pipe(Effect.provide(services)))
        return { fiber, state, services }
      })

      yield* hub.setDesired(HOST, desiredWith(true))
      yield* hub.enqueueJob(HOST, enableJob({ until: iso(2 * HOUR), reason: REASON }))
      const a = yield* startDaemon
      yield* advance(3)
      const results = yield* hub.jobResults(HOST)
      expect(results.map((r) => `${r.result.op} ${r.result.status}`)).toEqual(["break-glass-enable done"])
      expect(unit.state).toBe("active")

      // the daemon stops (an upgrade, a crash); the door stays open meanwhile (systemd's backstop is 24 h)
      yield* Fiber.interrupt(a.fiber)
      yield* TestClock.adjust("3 hours")
      expect(unit.state).toBe("active")

      const b = yield* startDaemon
      yield* advance(2)
      expect(unit.state).toBe("inactive")
      const ended = yield* Effect.flatMap(BreakGlass, (bg) => bg.store.latest).pipe(Effect.provide(b.services))
      expect(Option.getOrThrow(ended)).toMatchObject({ endReason: "expired", untilMs: 2 * HOUR })
      yield* Fiber.interrupt(b.fiber)
    }))

  it.scoped("consent withdrawn in a newer desired state closes the open session within a poll and a check", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const hub = yield* makeDevHub({ apiKeys: { [KEY]: HOST }, pollIntervalSeconds: 60 })
      const unit = fakeUnit()
      const path = dbFile()
      const file = fileFor(sim)
      const signers = yield* Effect.orDie(parseSigners(SIGNERS))
      const db = layerAt(path)
      const state = yield* Ref.make<DaemonState>(initialState)
      const services = daemonServices({ sim, hub, db, signers, state, unit, file })
      yield* hub.setDesired(HOST, desiredWith(true))
      yield* hub.enqueueJob(HOST, enableJob({ until: iso(10 * HOUR), reason: REASON }))
      const poke = yield* Queue.sliding<void>(1)
      const fiber = yield* Effect.fork(runDaemon({ poke, state, alongside: startBreakGlass }).pipe(Effect.provide(services)))
      yield* advance(3)
      expect(unit.state).toBe("active")
      yield* hub.setDesired(HOST, desiredWith(false))
      yield* advance(60 + 30 + 2)
      expect(unit.state).toBe("inactive")
      const ended = yield* Effect.flatMap(BreakGlass, (bg) => bg.store.latest).pipe(Effect.provide(services))
      expect(Option.getOrThrow(ended).endReason).toBe("consent_withdrawn")
      yield* Fiber.interrupt(fiber)
    }))
})
