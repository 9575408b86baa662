/**
 * Wiring for the controller update and heal tests, all under TestClock: the in-process PVE
 * simulator whose guests 100 and 101 run with the bootstrap mount, a real journal and
 * ControllerStore on one SQLite file, a publisher that writes controller.json into each guest's
 * scratch bootstrap directory, and the simulated controllers talking to an in-process stand-in of
 * the local API (token → guest, every call a contact, the heartbeat's version/image/health
 * recorded, as the real backend does).
 */
import { Clock, Context, Effect, Exit, Layer, Option, Redacted, TestClock } from "effect"
import { randomBytes } from "node:crypto"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ControllerStore, ControllerStoreLive, type ControllerStoreShape } from "../src/layers/ControllerStore.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { fromJournal, Journal, JournalLive, type JournalShape, type StoreServices } from "../src/layers/Journal.js"
import type { Proxmox } from "../src/layers/Proxmox.js"
import { ControllerPublishFailed, ControllerPublisher, type ControllerPublisherShape } from "../src/programs/controller/update.js"
import { BOOTSTRAP_FORMAT, type ControllerBootstrap } from "../src/schema/bootstrap.js"
import { VmId } from "../src/schema/ids.js"
import { simControllers, type SimControllers, type SimTransport } from "../src/sim/controller/index.js"
import { defaultSeedJson, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { runToExit, settle } from "./engine-support.js"

export { runToExit }
import { durations, inProcessProxmox, seedWith } from "./support.js"

type Json = Record<string, unknown>

export const IMAGE_A = "registry.example/felhom/controller:1.4.2"
export const IMAGE_B = "registry.example/felhom/controller:1.5.0"
export const IMAGE_BROKEN = "registry.example/felhom/controller:1.5.0-broken"
export const IMAGE_CRASH = "registry.example/felhom/controller:1.5.0-crashloop"
export const V100 = VmId.make(100)
export const V101 = VmId.make(101)

export const newToken = () => `fla1_${randomBytes(8).toString("hex")}_${randomBytes(32).toString("base64url")}`

export interface Counter {
  writes: number
  readonly names: Array<string>
}

/** Interrupts the caller at the `at`-th counted write, just before or just after it. */
export const crashGate = (at: number, when: "before" | "after", counter: Counter) =>
<A, E>(name: string, write: Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.suspend(() => {
    const n = ++counter.writes
    counter.names.push(name)
    if (n === at && when === "before") return Effect.interrupt
    return Effect.flatMap(write, (a) => (n === at && when === "after" ? Effect.interrupt : Effect.succeed(a)))
  })

type Gate = ReturnType<typeof crashGate>

const crashingJournal = (gate: Gate) => (real: JournalShape): JournalShape => ({
  ...real,
  admit: (a) => gate("admit", real.admit(a)),
  stepStarted: (id, step, data) => gate(`started:${step}`, real.stepStarted(id, step, data)),
  recordUpid: (id, step, upid) => gate(`upid:${step}`, real.recordUpid(id, step, upid)),
  stepDone: (id, step, data) => gate(`done:${step}`, real.stepDone(id, step, data)),
  finish: (id, status, detail) => gate(`finish:${status}`, real.finish(id, status, detail))
})

const crashingStore = (gate: Gate) => (real: ControllerStoreShape): ControllerStoreShape => ({
  ...real,
  recordSnapshot: (s) => gate("store:snapshot", real.recordSnapshot(s)),
  recordDeploy: (d) => gate(`store:deploy:${d.image.split(":").at(-1)}@${d.generation}`, real.recordDeploy(d)),
  recordRestart: (v, at) => gate("store:restart", real.recordRestart(v, at))
})

export interface Published {
  readonly vmid: number
  readonly image: string
  readonly generation: number
}

export interface World {
  readonly sim: SimPve
  readonly path: string
  readonly dirs: ReadonlyMap<number, string>
  readonly published: Array<Published>
  /** Guests whose next publishes fail. */
  readonly failPublish: Set<number>
  readonly tokens: Map<string, number>
  readonly publisher: ControllerPublisherShape
  /** A long-lived store on the same file (the API stand-in's and the assertions'). */
  readonly store: ControllerStoreShape
  readonly fleet: SimControllers
  /** The layer the agent runs on; `crash` makes the journal, the store and the publisher interrupt at one write. */
  readonly layer: (crash?: { readonly at: number; readonly when: "before" | "after"; readonly counter: Counter }) => Layer.Layer<
    ControllerStore | ControllerPublisher | GuestQueue | Journal | StoreServices | Proxmox
  >
  /** What guest `vmid`'s controller.json says now. */
  readonly file: (vmid: number) => ControllerBootstrap
  readonly deploy: (vmid: VmId, image: string) => Effect.Effect<void>
}

const bootstrapOf = (vmid: number, image: string, generation: number): ControllerBootstrap => ({
  format: BOOTSTRAP_FORMAT,
  generation,
  host_id: "host-test",
  guest: { vmid, hostname: `cust-${vmid}` },
  identity: { scenario: "provision", reset: ["machine-id"], directive_id: `d-${vmid}` },
  controller: { image },
  registry: null,
  hub: { url: null, channel: `host-test/${vmid}` },
  local_api: { url: "https://10.10.0.1:7443", token_file: "/etc/felhom-bootstrap/local-token", pins: [{ spki_sha256: "sim", cert_sha256: "sim" }] }
})

const answer = (status: number, body: unknown) => ({ status, retryAfter: null, body: JSON.stringify(body) })

/** The local API as the controllers see it, in-process: self-scoped by token, contacts recorded. */
const inProcessApi = (store: ControllerStoreShape, tokens: ReadonlyMap<string, number>): SimTransport => (req) =>
  Effect.gen(function*() {
    const vmid = req.token === null ? undefined : tokens.get(Redacted.value(req.token))
    if (vmid === undefined) return answer(401, { error: { code: "unauthorized", message: "no valid token" } })
    const now = yield* Clock.currentTimeMillis
    if (req.method === "POST" && req.path === "/heartbeat") {
      const hb = req.body as { version: string; image: string; status: "healthy" | "unhealthy"; detail?: string }
      yield* store.recordContact(VmId.make(vmid), now, Option.some({ version: hb.version, image: hb.image, health: hb.status, detail: hb.detail ?? null })).pipe(Effect.orDie)
      return answer(200, { ok: true })
    }
    yield* store.recordContact(VmId.make(vmid), now, Option.none()).pipe(Effect.orDie)
    return answer(200, {})
  })

export const makeWorld = Effect.gen(function*() {
  const dirs = new Map<number, string>([[100, mkdtempSync(join(tmpdir(), "felhom-ctl-100-"))], [101, mkdtempSync(join(tmpdir(), "felhom-ctl-101-"))]])
  const base = defaultSeedJson as { guests: ReadonlyArray<Json> }
  const guests = base.guests.map((g) => {
    const vmid = g["vmid"] as number
    const dir = dirs.get(vmid)
    if (dir === undefined) return g
    return { ...g, status: "running", config: { ...(g["config"] as Json), mp0: `${dir},mp=/etc/felhom-bootstrap,ro=1,backup=0` } }
  })
  const sim = yield* makeSimPve(yield* seedWith({ guests, ...durations(1000) }))
  const path = join(mkdtempSync(join(tmpdir(), "felhom-ctl-db-")), "state.db")
  const db = layerAt(path)
  const store = Context.get(yield* Layer.build(ControllerStoreLive.pipe(Layer.provide(db), Layer.orDie)), ControllerStore)
  const published: Array<Published> = []
  const failPublish = new Set<number>()
  const tokens = new Map<string, number>()
  const write = (vmid: number, image: string, generation: number) =>
    writeFileSync(join(dirs.get(vmid)!, "controller.json"), JSON.stringify(bootstrapOf(vmid, image, generation)))
  const publisher: ControllerPublisherShape = {
    publish: (vmid, change) =>
      Effect.suspend(() => {
        if (failPublish.has(vmid)) return Effect.fail(new ControllerPublishFailed({ message: "the bootstrap helper failed (simulated)" }))
        write(vmid, change.image, change.generation)
        published.push({ vmid, image: change.image, generation: change.generation })
        return Effect.succeed(bootstrapOf(vmid, change.image, change.generation).local_api.pins)
      })
  }
  const fleet = yield* simControllers(sim, { transport: inProcessApi(store, tokens) })
  const layer: World["layer"] = (crash) => {
    const gate = crash === undefined ? null : crashGate(crash.at, crash.when, crash.counter)
    const realJournal = JournalLive.pipe(Layer.provide(db))
    const journal = gate === null
      ? realJournal
      : Layer.provideMerge(fromJournal, Layer.effect(Journal, Effect.map(Journal, crashingJournal(gate))).pipe(Layer.provide(realJournal)))
    const realStore = ControllerStoreLive.pipe(Layer.provide(db))
    const storeLayer = gate === null ? realStore : Layer.effect(ControllerStore, Effect.map(ControllerStore, crashingStore(gate))).pipe(Layer.provide(realStore))
    const pub: ControllerPublisherShape = gate === null
      ? publisher
      : { publish: (v, c) => gate(`publish:${c.image.split(":").at(-1)}@${c.generation}`, publisher.publish(v, c)) }
    return Layer.mergeAll(inProcessProxmox(sim, { node: "pve" }), journal, storeLayer, GuestQueue.layer(4), Layer.succeed(ControllerPublisher, pub)).pipe(Layer.orDie)
  }
  const world: World = {
    sim,
    path,
    dirs,
    published,
    failPublish,
    tokens,
    publisher,
    store,
    fleet,
    layer,
    file: (vmid) => JSON.parse(readFileSync(join(dirs.get(vmid)!, "controller.json"), "utf8")) as ControllerBootstrap,
    deploy: (vmid, image) =>
      Effect.gen(function*() {
        const token = newToken()
        writeFileSync(join(dirs.get(vmid)!, "local-token"), `${token}\n`)
        write(vmid, image, 1)
        tokens.set(token, vmid)
        yield* store.recordDeploy({ vmid, image, generation: 1, tokenId: `tok${vmid}`, mpIndex: 0, pins: bootstrapOf(vmid, image, 1).local_api.pins }).pipe(Effect.orDie)
      })
  }
  return world
})

export const run = <A, E, R>(eff: Effect.Effect<A, E, R>, maxSeconds = 900) =>
  Effect.flatMap(runToExit(eff, maxSeconds), (exit) => (Exit.isSuccess(exit) ? Effect.succeed(exit.value) : Effect.dieMessage(`failed: ${String(exit.cause)}`)))

/** Advances simulated time until `cond` holds (at most `maxSeconds`). */
export const until = <E, R>(cond: Effect.Effect<boolean, E, R>, maxSeconds = 300) =>
  Effect.gen(function*() {
    for (let i = 0; i < maxSeconds * 2; i++) {
      yield* settle
      if (yield* cond) return true
      yield* TestClock.adjust("500 millis")
    }
    return false
  })
