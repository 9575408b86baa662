/**
 * The storage watchdog under TestClock (issue 10): the daemon's hub loop (runDaemon, with its
 * report-now hook), the storage pass and the watchdog fiber, against the in-process PVE
 * simulator and dev hub. A USB disk pulled, an NFS server and a PBS server taken down — through
 * the simulator's /sim-admin fault endpoint, as an operator's test harness would — must be in a
 * host report the hub receives within 5 s of simulated time, long before the next poll (60 s);
 * and so must their return. A PVE that cannot be read changes nothing ("unknown" is not a drop).
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Layer, Option, Queue, Ref, Schema, TestClock } from "effect"
import { HubSettingsLive, layerFrom } from "../src/layers/Config.js"
import { HubWithoutClient } from "../src/layers/Hub.js"
import { makeSystemdLayer } from "../src/layers/Systemd.js"
import { type DaemonState, initialState, runDaemon } from "../src/programs/daemon/loop.js"
import { sealCreds } from "../src/programs/protection/creds.js"
import { reportNowFromQueue, StorageStatus } from "../src/programs/protection/status.js"
import { storageReconcileLoop, storageReconcilePass } from "../src/programs/protection/storage.js"
import { storageWatchdog, storageWatchdogCheck } from "../src/programs/protection/watchdog.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { decodeDesiredState } from "../src/schema/desired.js"
import type { HostReport } from "../src/schema/hub.js"
import { makeAppHttpClient, makeDevHub } from "../src/sim/hub/index.js"
import { makeSimAdminApp } from "../src/sim/pve/admin.js"
import { defaultSeedJson, makeSimPve } from "../src/sim/pve/index.js"
import { dbFile, runTimed, settle } from "./engine-support.js"
import { hostPublicKey, keyDir, makeUsbWorld, PBS_FP, storageLayer, USB_UUID } from "./storage-support.js"
import { seedWith } from "./support.js"

const HOST = "host-watch"
const KEY = "watch-api-key-0123456789"
const ADMIN = "sim-admin-token-watchdog"

type Json = Record<string, unknown>

const seed = {
  storages: [
    ...((defaultSeedJson as Json)["storages"] as Array<Json>),
    { storage: "nas", type: "nfs", server: "10.0.0.5", export: "/srv/backup", content: ["backup"], total: 4e12, used: 0 },
    {
      storage: "pbs-off",
      type: "pbs",
      server: "pbs.example.net",
      port: 8007,
      datastore: "store1",
      username: "felhom@pbs!host1",
      fingerprint: PBS_FP,
      "encryption-key": "aa:bb",
      content: ["backup"],
      total: 8e12,
      used: 0
    }
  ]
}

const setup = Effect.gen(function*() {
  const sim = yield* makeSimPve(yield* seedWith(seed))
  const hub = yield* makeDevHub({ apiKeys: { [KEY]: HOST }, pollIntervalSeconds: 60 })
  const world = makeUsbWorld()
  world.present.add(USB_UUID)
  const keys = keyDir()
  const pub = yield* hostPublicKey(keys)
  const manifest = [
    { id: "usb-1", type: "usb", durable_id: USB_UUID, class: "slow", role: "vzdump-target", state: "attached" },
    { id: "nas", type: "nfs", durable_id: "10.0.0.5:/srv/backup", class: "slow", role: "vzdump-target", state: "attached" },
    {
      id: "pbs-off",
      type: "pbs",
      durable_id: { repo: "felhom@pbs!host1@pbs.example.net:8007:store1", fingerprint: PBS_FP },
      class: "slow",
      role: "pbs-offsite",
      creds: { ciphertext: sealCreds(pub, "pbs-off", { password: "pbs-secret-watch", encryption_key: "{\"data\":\"x\"}" }) },
      state: "attached"
    }
  ]
  const decoded = decodeDesiredState({ generation: 1, guests: [], storage: manifest })
  if (decoded._tag === "Left") return yield* Effect.dieMessage(decoded.left)
  const file = Schema.decodeUnknownSync(AgentConfigFile)({
    host_id: HOST,
    proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } },
    hub: { url: "https://hub.example.invalid", api_key: KEY },
    authz: { signers: [] }
  })
  const reportNow = yield* Queue.sliding<void>(1)
  const services = Layer.mergeAll(
    storageLayer(sim, world, { path: dbFile(), keys }),
    HubWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, makeAppHttpClient(hub.app))), Layer.provide(HubSettingsLive)),
    makeSystemdLayer({ systemctl: "/bin/false", systemdNotify: "/bin/false" }).pipe(Layer.provide(NodeContext.layer)),
    reportNowFromQueue(reportNow)
  ).pipe(Layer.provideMerge(layerFrom(file)), Layer.orDie)
  // the simulator's fault endpoint, called as a separate harness would (bearer token, JSON body)
  const admin = makeAppHttpClient(makeSimAdminApp(sim, ADMIN))
  const fault = (storage: string, online: boolean) =>
    HttpClientRequest.put(`http://sim.invalid/sim-admin/storage/${storage}`).pipe(
      HttpClientRequest.bearerToken(ADMIN),
      HttpClientRequest.bodyUnsafeJson({ online }),
      admin.execute,
      Effect.flatMap((r) => (r.status === 200 ? Effect.void : Effect.dieMessage(`sim-admin answered ${r.status}`))),
      Effect.orDie
    )
  return { sim, hub, world, services, reportNow, file, storage: { storage: decoded.right.storage, policies: decoded.right.policies }, fault }
})

const advance = (seconds: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < seconds * 2; i++) {
      yield* settle
      yield* TestClock.adjust("500 millis")
    }
    yield* settle
  })

const stateIn = (r: HostReport, id: string) => r.storage.find((s) => s.storage === id)?.state

describe("storage watchdog (TestClock)", () => {
  it.scoped("a USB disk pulled, NFS and PBS unreachable, and each back: reported within 5 s of simulated time, out of the poll cycle", () =>
    Effect.gen(function*() {
      const t = yield* setup
      yield* Effect.gen(function*() {
        // the pass on its schedule (first run now), as the daemon runs it
        yield* Effect.forkScoped(storageReconcileLoop(Effect.succeed(Option.some(t.storage)), Duration.seconds(t.file.protection.pass_interval_seconds)))
        const state = yield* Ref.make<DaemonState>(initialState)
        const poke = yield* Queue.sliding<void>(1)
        yield* Effect.forkScoped(runDaemon({ poke, state, reportNow: t.reportNow }))
        yield* Effect.forkScoped(storageWatchdog(Duration.seconds(t.file.protection.watchdog_interval_seconds)))
        yield* advance(1)
        const first = yield* t.hub.reports(HOST)
        expect(first).toHaveLength(1)
        expect(["usb-1", "nas", "pbs-off"].map((id) => stateIn(first[0]!.report, id))).toEqual(["attached", "attached", "attached"])

        /** Applies a fault at t, then looks for the first report after it saying `state` for `id`. */
        const within5s = (id: string, state: "attached" | "disconnected", act: Effect.Effect<void>) =>
          Effect.gen(function*() {
            yield* advance(3) // somewhere inside a watchdog interval, not on its edge
            const at = yield* TestClock.currentTimeMillis
            const seen = (yield* t.hub.reports(HOST)).length
            yield* act
            yield* advance(5)
            const after = (yield* t.hub.reports(HOST)).slice(seen)
            const hit = after.find((r) => stateIn(r.report, id) === state)
            expect(hit, `a report with ${id} ${state}`).toBeDefined()
            expect(hit!.receivedAt - at).toBeLessThanOrEqual(5000)
            expect(Date.parse(hit!.report.reported_at) - at).toBeLessThanOrEqual(5000)
            return hit!.report
          })

        const pulled = yield* within5s("usb-1", "disconnected", Effect.zipRight(Effect.sync(() => t.world.present.delete(USB_UUID)), t.fault("usb-1", false)))
        expect(pulled.storage.find((s) => s.storage === "usb-1")?.target?.detail).toBe("the disk was pulled while mounted")
        expect(stateIn(pulled, "nas")).toBe("attached")
        yield* within5s("usb-1", "attached", Effect.zipRight(Effect.sync(() => t.world.present.add(USB_UUID)), t.fault("usb-1", true)))
        const nasDown = yield* within5s("nas", "disconnected", t.fault("nas", false))
        expect(nasDown.storage.find((s) => s.storage === "nas")?.target?.detail).toContain("PVE reports it inactive")
        yield* within5s("nas", "attached", t.fault("nas", true))
        yield* within5s("pbs-off", "disconnected", t.fault("pbs-off", false))
        yield* within5s("pbs-off", "attached", t.fault("pbs-off", true))

        // all that was inside one poll interval: every report after the first was out of cycle
        const all = yield* t.hub.reports(HOST)
        expect(all[all.length - 1]!.receivedAt - all[0]!.receivedAt).toBeLessThan(60_000)
        expect(all.length).toBe(7)
        // and the pass never read a pulled disk as a removal
        expect((yield* Effect.flatMap(StorageStatus, (s) => s.snapshot)).pending).toEqual([])
      }).pipe(Effect.provide(t.services))
    }))

  it.scoped("no change, no report; a PVE that cannot be read is no reading (nothing flips, nothing reported)", () =>
    Effect.gen(function*() {
      const t = yield* setup
      yield* Effect.gen(function*() {
        yield* storageReconcilePass(t.storage)
        expect(yield* storageWatchdogCheck).toHaveLength(0) // the pass already knew
        expect(yield* Queue.size(t.reportNow)).toBe(0)
        // every PVE call answers 500 (the client's read retries included)
        yield* t.sim.setFaults({ http_error_rate: 1, http_error_statuses: [500], seed: 3 })
        yield* t.fault("nas", false)
        expect(yield* runTimed(storageWatchdogCheck, 60)).toHaveLength(0)
        expect(yield* Queue.size(t.reportNow)).toBe(0)
        // a USB drop is still seen (no PVE needed for it)
        t.world.present.delete(USB_UUID)
        const changes = yield* runTimed(storageWatchdogCheck, 60)
        expect(changes.map((c) => `${c.id}:${c.to}`)).toEqual(["usb-1:false"])
        expect(yield* Queue.size(t.reportNow)).toBe(1)
      }).pipe(Effect.provide(t.services))
    }))

  it.scoped("a drop the storage pass measures before the watchdog does is reported at once all the same", () =>
    Effect.gen(function*() {
      const t = yield* setup
      yield* Effect.gen(function*() {
        yield* storageReconcilePass(t.storage)
        expect(yield* Queue.size(t.reportNow)).toBe(0)
        // the NFS server goes away and the pass (not the watchdog) is the first to look
        yield* t.fault("nas", false)
        yield* runTimed(storageReconcilePass(t.storage), 120)
        expect(yield* Queue.size(t.reportNow)).toBe(1)
        const snap = yield* Effect.flatMap(StorageStatus, (st) => st.snapshot)
        expect(snap.targets.find((x) => x.id === "nas")?.available).toBe(false)
        // the watchdog now sees no change: without the pass's own report the hub would wait a poll
        yield* Queue.takeAll(t.reportNow)
        expect(yield* runTimed(storageWatchdogCheck, 60)).toHaveLength(0)
        expect(yield* Queue.size(t.reportNow)).toBe(0)
      }).pipe(Effect.provide(t.services))
    }))
})
