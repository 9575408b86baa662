/**
 * Crash recovery: a multi-step op (create by golden restore → resize → configure → start) is
 * killed right after each of its durable journal writes in turn; the database is reopened and
 * `recover` runs. Whatever the crash point, the guest ends fully built or fully gone, never
 * half-built, the journal has nothing in flight, and no PVE task ran twice.
 *
 * The crash is injected by wrapping the real Journal: after its k-th write completes, the op's
 * fiber is interrupted (no error handlers run), exactly as a process death would leave things.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option, Schema } from "effect"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { fromJournal, Journal, JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { createGuest, decommission } from "../src/programs/control/steps.js"
import { consoleGrant } from "../src/programs/control/gate.js"
import { recover } from "../src/programs/control/recover.js"
import { DesiredGuest } from "../src/schema/desired.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, runToExit as runToExitFor } from "./engine-support.js"
import { inProcessProxmox, seedWith } from "./support.js"

const spec = Schema.decodeUnknownSync(DesiredGuest)({
  vmid: 110,
  hostname: "cust-gamma",
  cores: 2,
  memory_bytes: 4294967296,
  swap_mib: 512,
  rootfs_gib: 16,
  power: "running",
  description: "felhom customer guest gamma",
  tags: ["customer", "felhom"]
})
const source = {
  archive: Schema.decodeSync(VolumeId)("local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"),
  storage: Schema.decodeSync(StorageId)("local-lvm")
}

/** The real journal, interrupting the caller right after its `crashAfter`-th write. */
const crashingJournal = (crashAfter: number, counter: { writes: number }) =>
  Layer.effect(
    Journal,
    Effect.map(Journal, (real): JournalShape => {
      const after = <A, E>(write: Effect.Effect<A, E>): Effect.Effect<A, E> =>
        Effect.flatMap(write, (a) => {
          counter.writes++
          return counter.writes === crashAfter ? Effect.interrupt : Effect.succeed(a)
        })
      return {
        ...real,
        begin: (op) => after(real.begin(op)),
        stepStarted: (id, step, data) => after(real.stepStarted(id, step, data)),
        recordUpid: (id, step, upid) => after(real.recordUpid(id, step, upid)),
        stepDone: (id, step, data) => after(real.stepDone(id, step, data)),
        stepCompensated: (id, step) => after(real.stepCompensated(id, step)),
        finish: (id, status, detail) => after(real.finish(id, status, detail)),
        recordProvenance: (vmid, kind, opId, marker) => after(real.recordProvenance(vmid, kind, opId, marker)),
        clearProvenance: (vmid) => after(real.clearProvenance(vmid)),
        markCustomer: (vmid, detail) => after(real.markCustomer(vmid, detail)),
        markLost: (vmid, detail) => after(real.markLost(vmid, detail)),
        forgetGuest: (vmid) => after(real.forgetGuest(vmid))
      }
    })
  )

const agent = (sim: SimPve, path: string, journal: Layer.Layer<Journal, never, Journal> | null) => {
  const real = JournalLive.pipe(Layer.provide(layerAt(path)), Layer.orDie)
  return Layer.mergeAll(
    inProcessProxmox(sim, { node: "pve" }),
    // a wrapped journal serves every store service, so the crash hits whichever one writes
    journal === null ? real : Layer.provideMerge(fromJournal, journal.pipe(Layer.provide(real))),
    GuestQueue.layer(4)
  )
}

/** Runs to completion or interruption, advancing simulated time (at most 300 s). */
const runToExit = <A, E, R>(eff: Effect.Effect<A, E, R>) => runToExitFor(eff, 300)

const countTasks = (sim: SimPve, type: string, vmid: number) =>
  Effect.map(sim.tasks, (ts) => ts.filter((t) => t.type === type && t.id === String(vmid)).length)

/** Sealed: restored, 16 GiB rootfs, described, keyctl kept (reconcile may still start it). */
const sealed = (sim: SimPve) =>
  Effect.map(sim.guest(110), (g) =>
    Option.isSome(g) &&
    String(g.value.config["rootfs"]).includes("size=16G") &&
    String(g.value.config["description"]).startsWith("felhom customer guest gamma") &&
    g.value.config["features"] === "keyctl=1,nesting=1")

/** Fully built: sealed, running, and the instance marker removed again. */
const fullyBuilt = (sim: SimPve) =>
  Effect.flatMap(sealed(sim), (ok) =>
    Effect.map(sim.guest(110), (g) =>
      ok && Option.isSome(g) && g.value.status === "running" && !String(g.value.config["tags"]).includes("felhom-prov-")))

const grant = consoleGrant({ op: "create", vmid: VmId.make(110), params: { rootfs_gib: 16 } }, "test")

const runWithCrashAt = (crashAfter: number) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({}))
    const path = dbFile()
    const counter = { writes: 0 }
    const first = yield* runToExit(createGuest(spec, source, 4096, grant)).pipe(
      Effect.provide(agent(sim, path, crashingJournal(crashAfter, counter)))
    )
    // restart: a fresh journal on the same file, then recovery before anything else
    const recovered = yield* runToExit(Effect.zip(recover, Effect.flatMap(Journal, (j) => Effect.zip(j.inFlight, j.list({ limit: 10 }))))).pipe(
      Effect.provide(agent(sim, path, null))
    )
    return { sim, first, recovered, writes: counter.writes }
  }))

describe("crash recovery of a multi-step create", () => {
  it.scoped("at every journal write boundary: fully built or fully rolled back, nothing in flight, no task twice", () =>
    Effect.gen(function*() {
      // an uninterrupted run tells how many durable writes the op makes
      const clean = yield* runWithCrashAt(Number.MAX_SAFE_INTEGER)
      expect(Exit.isSuccess(clean.first)).toBe(true)
      const total = clean.writes
      expect(total).toBeGreaterThanOrEqual(10)

      const outcomes: Array<string> = []
      for (let k = 1; k <= total; k++) {
        const r = yield* runWithCrashAt(k)
        expect(Exit.isInterrupted(r.first), `crash after write ${k}`).toBe(k < total || Exit.isInterrupted(r.first))
        expect(Exit.isSuccess(r.recovered), `recovery after write ${k}`).toBe(true)
        if (!Exit.isSuccess(r.recovered)) continue
        const [results, [inFlight, ops]] = r.recovered.value
        expect(inFlight, `in flight after recovery (crash after write ${k})`).toEqual([])
        const create = ops.find((o) => o.kind === "create")
        const built = yield* fullyBuilt(r.sim)
        const isSealed = yield* sealed(r.sim)
        const exists = Option.isSome(yield* r.sim.guest(110))
        // never half-built: no guest at all, or a sealed one (customer data; reconcile finishes it)
        expect(isSealed || !exists, `half-built guest after crash at write ${k}: ${JSON.stringify(results)}`).toBe(true)
        if (create !== undefined) expect(["done", "rolled_back", "failed"], `crash at write ${k}: ${JSON.stringify(results)}`).toContain(create.status)
        expect(create?.status === "done", `journal agrees with PVE after crash at write ${k}`).toBe(built)
        // a failed create is one that was sealed: its guest is kept, never destroyed
        if (create?.status === "failed") expect(isSealed).toBe(true)
        if (create?.status === "rolled_back") expect(exists).toBe(false)
        expect(yield* countTasks(r.sim, "vzrestore", 110)).toBeLessThanOrEqual(1)
        expect(yield* countTasks(r.sim, "vzstart", 110)).toBeLessThanOrEqual(1)
        outcomes.push(`${k}:${create?.status ?? "none"}`)
      }
      // the matrix really covered both ends: early crashes roll back, a crash after the last step is done
      expect(outcomes.some((o) => o.endsWith("rolled_back"))).toBe(true)
      expect(outcomes.at(-1)).toMatch(/done$/)
    }), 120_000)

  it.scoped("an authorized decommission interrupted mid-way is resumed to completion", () =>
    Effect.scoped(Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const path = dbFile()
      const counter = { writes: 0 }
      // 100 is running: stop, then destroy; crash right after the stop's UPID is recorded
      const auth = { basis: "signed", signer: "alice", fingerprint: "SHA256:test", nonce: "n".repeat(22), job: null } as const
      const first = yield* runToExit(decommission(VmId.make(100), consoleGrant({ op: "decommission", vmid: VmId.make(100), params: {} }, "test"), auth)).pipe(
        Effect.provide(agent(sim, path, crashingJournal(3, counter)))
      )
      expect(Exit.isInterrupted(first)).toBe(true)
      expect((yield* sim.guest(100))._tag).toBe("Some")
      const after = yield* runToExit(Effect.zipRight(recover, Effect.flatMap(Journal, (j) => j.list({ limit: 5 })))).pipe(
        Effect.provide(agent(sim, path, null))
      )
      expect(Exit.isSuccess(after) && after.value[0]).toMatchObject({ kind: "decommission", status: "done" })
      expect((yield* sim.guest(100))._tag).toBe("None")
      expect(yield* countTasks(sim, "vzstop", 100)).toBe(1)
      expect(yield* countTasks(sim, "vzdestroy", 100)).toBe(1)
    })))
})
