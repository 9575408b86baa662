/**
 * The controller update saga (src/programs/controller/update.ts) over the in-process simulator
 * under TestClock, with simulated controllers heartbeating through an in-process local API:
 * - a healthy update commits (pre-update snapshot recorded before PVE was asked, new image
 *   published at generation + 1, the controller reports it healthy);
 * - a `broken` image (reports unhealthy) and a crash-looping one (no heartbeat by the deadline)
 *   roll back: the guest is at the op's own snapshot again, the old image republished at + 2;
 * - a hostile hub cannot steer the rollback: the only snapshot rolled back to is the op's own;
 * - a crash before or after every durable write → recovery leaves the old image published and
 *   running, or the new one committed; never held;
 * - the daemon's publisher rewrites controller.json only (token file and identity untouched).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option, Redacted } from "effect"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ControllerStore, ControllerStoreLive } from "../src/layers/ControllerStore.js"
import { layerAt } from "../src/layers/Database.js"
import { JournalLive } from "../src/layers/Journal.js"
import { LocalTokens, LocalTokensLive } from "../src/layers/LocalTokens.js"
import { Privileged, type PrivilegedShape } from "../src/layers/Privileged.js"
import { publishBootstrap } from "../src/programs/controller/bootstrap.js"
import { ControllerContext, type ControllerContextShape } from "../src/programs/controller/context.js"
import { identityFor } from "../src/programs/controller/deploy.js"
import { makeSimPve } from "../src/sim/pve/index.js"
import { privilegedSimLayer } from "../src/sim/pve/privilegedSim.js"
import { inProcessProxmox, seedWith } from "./support.js"
import { OpLog } from "../src/layers/OpLog.js"
import { ControllerPublisher, ControllerPublisherLive, recoverControllerUpdate, updateControllerQueued, type UpdateResult } from "../src/programs/controller/update.js"
import { decodeOperation } from "../src/schema/operations.js"
import {
  type Counter,
  IMAGE_A,
  IMAGE_B,
  IMAGE_BROKEN,
  IMAGE_CRASH,
  makeWorld,
  run,
  runToExit,
  until,
  V100,
  V101,
  type World
} from "./controller-lifecycle-support.js"

const SETTINGS = { healthDeadlineSeconds: 120 }

const reports = (w: World, vmid: number, image: string) =>
  Effect.map(w.fleet.view(vmid), (v) => Option.isSome(v) && v.value.image === image && v.value.reported === "healthy")

/** Deploys IMAGE_A on 100 and waits until its controller reports healthy. */
const ready = (w: World) =>
  Effect.gen(function*() {
    yield* w.deploy(V100, IMAGE_A)
    expect(yield* until(reports(w, 100, IMAGE_A))).toBe(true)
  })

const update = (w: World, image: string) => run(updateControllerQueued(V100, image, { basis: "policy" }, SETTINGS).pipe(Effect.provide(w.layer())))

const rollbacksOf = (w: World) =>
  Effect.map(w.sim.requests, (rs) => rs.filter((r) => r.method === "POST" && /\/snapshot\/[^/]+\/rollback$/.test(r.path)).map((r) => r.path.split("/").at(-2)))

const expectRolledBack = (w: World, r: UpdateResult, why: RegExp) =>
  Effect.gen(function*() {
    expect(r.outcome).toBe("rolled_back")
    expect(r.reason).toMatch(why)
    expect(r.reason).toContain(`rolled back to ${r.snapshot}`)
    // PVE rolled the guest back to the op's own snapshot and started it again
    expect(yield* rollbacksOf(w)).toEqual([r.snapshot])
    const g = Option.getOrThrow(yield* w.sim.guest(100))
    expect(g.config["parent"]).toBe(r.snapshot)
    expect(g.status).toBe("running")
    // the old image republished at generation + 2, and the record says so
    expect(w.published.map((p) => `${p.image}@${p.generation}`)).toEqual([`${r.toImage}@2`, `${IMAGE_A}@3`])
    expect(w.file(100)).toMatchObject({ generation: 3, controller: { image: IMAGE_A } })
    const rec = Option.getOrThrow(yield* w.store.get(V100))
    expect({ image: rec.image, generation: rec.generation }).toEqual({ image: IMAGE_A, generation: 3 })
    const op = Option.getOrThrow(yield* Effect.flatMap(OpLog, (o) => o.get(r.opId)).pipe(Effect.provide(w.layer())))
    expect(op.status).toBe("rolled_back")
    // and the controller comes back on the old image
    expect(yield* until(reports(w, 100, IMAGE_A))).toBe(true)
  })

describe("controller update", () => {
  it.scoped("a healthy update commits: snapshot recorded before PVE is asked, new image at generation + 1, reported healthy", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* ready(w)
      const r = yield* update(w, IMAGE_B)
      expect(r).toMatchObject({ outcome: "committed", fromImage: IMAGE_A, toImage: IMAGE_B, reason: null })
      expect(r.snapshot).toMatch(/^felhom-preupd-[0-9a-z]{1,24}$/)
      const snap = Option.getOrThrow(yield* w.store.snapshotOf(V100, r.snapshot))
      expect(snap).toMatchObject({ origin: "pre-update", opId: r.opId })
      const g = Option.getOrThrow(yield* w.sim.guest(100))
      expect(g.snapshots.map((s) => s.name)).toContain(r.snapshot)
      // provenance was written before the snapshot POST: its time is not after the task's start
      const task = (yield* w.sim.tasks).find((t) => t.type === "vzsnapshot")!
      expect(snap.takenMs).toBeLessThanOrEqual(task.startedAtMs)
      expect(w.published).toEqual([{ vmid: 100, image: IMAGE_B, generation: 2 }])
      const rec = Option.getOrThrow(yield* w.store.get(V100))
      expect(rec).toMatchObject({ image: IMAGE_B, generation: 2, reportedImage: IMAGE_B, health: "healthy" })
      expect(yield* rollbacksOf(w)).toEqual([])
      expect(yield* reports(w, 100, IMAGE_B)).toBe(true)
      // an update to what already runs is refused before anything is journaled
      const again = yield* runToExit(updateControllerQueued(V100, IMAGE_B, { basis: "policy" }, SETTINGS).pipe(Effect.provide(w.layer())))
      expect(Exit.isFailure(again)).toBe(true)
    }))

  it.scoped("an update to a broken image (it reports unhealthy) rolls back to its own snapshot and republishes the old image", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* ready(w)
      const r = yield* update(w, IMAGE_BROKEN)
      yield* expectRolledBack(w, r, /reported unhealthy on .*broken/)
    }))

  it.scoped("no healthy heartbeat by the deadline (a crash-looping image) rolls back", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* ready(w)
      const r = yield* update(w, IMAGE_CRASH)
      yield* expectRolledBack(w, r, /no healthy heartbeat with .*crashloop within 120 s/)
    }))

  it.scoped("a publish that fails after the snapshot rolls back too; a snapshot PVE refuses changes nothing", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* ready(w)
      w.failPublish.add(100)
      const r = yield* update(w, IMAGE_B)
      // the republish fails as well: the guest is rolled back but held for an operator
      expect(r.outcome).toBe("needs_operator")
      expect(r.reason).toMatch(/bootstrap helper failed/)
      expect(yield* rollbacksOf(w)).toEqual([r.snapshot])
      w.failPublish.delete(100)

      const w2 = yield* makeWorld
      yield* ready(w2)
      yield* w2.sim.setLock(100, "backup")
      // the snapshot task finds the guest locked: nothing else is tried
      const res = yield* update(w2, IMAGE_B)
      expect(res.outcome).toBe("failed")
      expect(res.reason).toMatch(/nothing was changed/)
      expect(w2.published).toEqual([])
      expect(yield* rollbacksOf(w2)).toEqual([])
    }))

  it.scoped("a hostile hub cannot name the snapshot: other snapshots, even ones a controller may name, are never rolled back to", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* ready(w)
      // a ctl- snapshot the controller took (recorded) and an operator's, both on this guest
      yield* w.store.recordSnapshot({ vmid: V100, name: "ctl-mine", origin: "controller", opId: "x", takenMs: 0 })
      const r = yield* update(w, IMAGE_BROKEN)
      expect(r.outcome).toBe("rolled_back")
      expect(yield* rollbacksOf(w)).toEqual([r.snapshot])
      // the op's payload is the only source of the name
      const op = Option.getOrThrow(yield* Effect.flatMap(OpLog, (o) => o.get(r.opId)).pipe(Effect.provide(w.layer())))
      const typed = decodeOperation(op.payload)
      expect(typed._tag === "Right" && typed.right._tag === "controller-update" ? typed.right.snapshot : null).toBe(r.snapshot)
    }))
})

// ---------------------------------------------------------------------------------------------
// A crash at every durable write

const recoverAll = (w: World) =>
  run(Effect.gen(function*() {
    const ops = yield* OpLog
    const pending = yield* ops.inFlight
    const outcomes: Array<string> = []
    for (const op of pending) {
      const typed = decodeOperation(op.payload)
      if (typed._tag === "Right" && typed.right._tag === "controller-update") outcomes.push((yield* recoverControllerUpdate(op, typed.right)).outcome)
    }
    return { outcomes, inFlight: yield* ops.inFlight, all: yield* ops.list({ limit: 20 }) }
  }).pipe(Effect.provide(w.layer())))

const withCrash = (image: string, at: number, when: "before" | "after") =>
  Effect.gen(function*() {
    const w = yield* makeWorld
    yield* ready(w)
    const counter: Counter = { writes: 0, names: [] }
    const first = yield* runToExit(updateControllerQueued(V100, image, { basis: "policy" }, SETTINGS).pipe(Effect.provide(w.layer({ at, when, counter }))))
    const recovered = yield* recoverAll(w)
    return { w, first, recovered, counter }
  })

describe("controller update: a crash at every step", () => {
  for (const image of [IMAGE_B, IMAGE_BROKEN]) {
    it.scoped(`${image.split(":")[1]}: before or after every write, recovery leaves the old image published and running, or the new one committed`, () =>
      Effect.gen(function*() {
        const clean = yield* withCrash(image, Number.MAX_SAFE_INTEGER, "after")
        expect(Exit.isSuccess(clean.first)).toBe(true)
        const total = clean.counter.writes
        expect(clean.counter.names.indexOf("store:snapshot")).toBeLessThan(clean.counter.names.indexOf("upid:snapshot"))
        const seen = new Set<string>()
        for (const when of ["after", "before"] as const) {
          for (let k = 1; k <= total; k++) {
            const { recovered, w } = yield* Effect.scoped(withCrash(image, k, when).pipe(Effect.flatMap((x) =>
              Effect.gen(function*() {
                const rec = Option.getOrThrow(yield* x.w.store.get(V100))
                const file = x.w.file(100)
                const ok = yield* until(reports(x.w, 100, rec.image), 120)
                const guest = Option.getOrThrow(yield* x.w.sim.guest(100))
                return { recovered: { ...x.recovered, rec, file, ok, guest }, w: x.w }
              })
            )))
            void w
            const label = `crash ${when} write ${k} (${clean.counter.names[k - 1]})`
            expect(recovered.inFlight, label).toEqual([])
            const op = recovered.all.find((o) => o.kind === "controller-update")
            if (op !== undefined) {
              expect(["done", "rolled_back", "failed"], `${label}: ${op.status} ${op.detail}`).toContain(op.status)
              seen.add(op.status)
              if (op.status === "done") expect(recovered.rec.image, label).toBe(image)
              else expect(recovered.rec.image, label).toBe(IMAGE_A)
            }
            // the file and the record agree, the guest runs, and its controller reports that image healthy
            expect({ image: recovered.file.controller.image, generation: recovered.file.generation }, label)
              .toEqual({ image: recovered.rec.image, generation: recovered.rec.generation })
            expect(recovered.guest.status, label).toBe("running")
            expect(recovered.ok, label).toBe(true)
          }
        }
        expect(seen.has("rolled_back")).toBe(true)
        if (image === IMAGE_B) expect(seen.has("done")).toBe(true)
      }), 600_000)
  }
})

// ---------------------------------------------------------------------------------------------
// The daemon's publisher: controller.json only, over the simulated Privileged bootstrap half

describe("ControllerPublisherLive", () => {
  it.scoped("rewrites controller.json with the new image and generation; token file, identity directive and hub channel stay as deployed", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const root = join(mkdtempSync(join(tmpdir(), "felhom-pub-")), "bootstrap")
      const ctx: ControllerContextShape = {
        hostId: "host-test",
        hubUrl: null,
        localApiUrl: "https://10.10.0.1:7443",
        pins: Effect.succeed([{ spki_sha256: "c3BraQ==", cert_sha256: "ab".repeat(32) }]),
        registry: null
      }
      const db = layerAt(join(mkdtempSync(join(tmpdir(), "felhom-pub-db-")), "state.db"))
      const stores = Layer.mergeAll(LocalTokensLive, ControllerStoreLive).pipe(Layer.provideMerge(JournalLive), Layer.provideMerge(db))
      const privileged = privilegedSimLayer(sim, root).pipe(Layer.provide(Layer.succeed(Privileged, {} as PrivilegedShape)))
      const base = Layer.mergeAll(stores, privileged, Layer.succeed(ControllerContext, ctx), inProcessProxmox(sim, { node: "pve" }))
      const layer = Layer.provideMerge(ControllerPublisherLive, base).pipe(Layer.orDie)
      const out = yield* run(Effect.gen(function*() {
        const tokens = yield* LocalTokens
        const store = yield* ControllerStore
        const id = yield* tokens.newId
        const minted = yield* tokens.mint(V100, id)
        const identity = yield* identityFor(V100, id)
        // as the deploy wrote it
        yield* publishBootstrap({ vmid: V100, hostname: "cust-alpha", image: IMAGE_A, generation: 1, identity, token: minted.token, pins: yield* ctx.pins })
        yield* store.recordDeploy({ vmid: V100, image: IMAGE_A, generation: 1, tokenId: id, mpIndex: 0, pins: yield* ctx.pins })
        const pins = yield* Effect.flatMap(ControllerPublisher, (p) => p.publish(V100, { image: IMAGE_B, generation: 2 }))
        return { token: Redacted.value(minted.token), identity, pins }
      }).pipe(Effect.provide(layer)))
      const dir = join(root, "100")
      const file = JSON.parse(readFileSync(join(dir, "controller.json"), "utf8")) as Record<string, unknown>
      expect(file).toMatchObject({ generation: 2, controller: { image: IMAGE_B }, identity: out.identity, hub: { channel: "host-test/100" }, guest: { vmid: 100 } })
      expect(readFileSync(join(dir, "local-token"), "utf8")).toBe(`${out.token}\n`)
      expect(out.pins).toHaveLength(1)
      // no controller record: nothing is written
      const none = yield* runToExit(Effect.flatMap(ControllerPublisher, (p) => p.publish(V101, { image: IMAGE_B, generation: 2 })).pipe(Effect.provide(layer)))
      expect(Exit.isFailure(none)).toBe(true)
    }))
})
