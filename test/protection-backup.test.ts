/**
 * The backup scheduler against the in-process simulator under TestClock (issue 10): schedules fire
 * on time, missed runs run once after downtime, WARNINGS is a success, a USB disk pulled mid-backup
 * is a clear failure that loses nothing, and the archive provenance that retention relies on.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Option, TestClock } from "effect"
import { Journal } from "../src/layers/Journal.js"
import { ProtectionStore } from "../src/layers/ProtectionStore.js"
import { protectionLoop, protectionPass } from "../src/programs/protection/pass.js"
import { claimedOp, notesFor, ownership } from "../src/programs/protection/provenance.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, settle } from "./engine-support.js"
import {
  advanceTo,
  DAY,
  desiredWith,
  HOUR,
  listed,
  protectionLayer,
  protectionSeed,
  runFor,
  T0,
  USB,
  volids
} from "./protection-support.js"

const daily = { schedule: "02:00", retention: { keep_daily: 7 } }

const withSim = <A, E>(
  body: (sim: SimPve, path: string) => Effect.Effect<A, E, Layer.Layer.Success<ReturnType<typeof protectionLayer>>>,
  opts: { readonly passIntervalSeconds?: number } = {}
) =>
  Effect.scoped(Effect.gen(function*() {
    yield* TestClock.setTime(T0)
    const sim = yield* makeSimPve(yield* protectionSeed())
    const path = dbFile()
    return yield* body(sim, path).pipe(Effect.provide(protectionLayer(sim, path, opts)))
  }))

const vzdumps = (sim: SimPve, vmid?: number) =>
  Effect.map(sim.tasks, (ts) => ts.filter((t) => t.type === "vzdump" && (vmid === undefined || t.id === String(vmid))))

describe("backup saga", () => {
  it.scoped("a first pass backs up every desired guest to the target, remove=0, with the op's notes; the archive is ours", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const report = yield* runFor(protectionPass(desiredWith(daily)))
        expect(report.backups.map((b) => `${b.vmid}:${b.result}`).sort()).toEqual(["100:ok", "101:ok"])
        for (const b of report.backups) {
          expect(b.archive).not.toBeNull()
          expect(b.detail).toMatch(/crash-consistent/)
        }
        // every vzdump was sent with remove=0 and keep-all, and with this op's notes
        const posts = (yield* sim.requests).filter((r) => r.method === "POST" && r.path.endsWith("/vzdump"))
        expect(posts).toHaveLength(2)
        for (const p of posts) {
          expect(String(p.params["remove"])).toBe("0")
          expect(p.params["prune-backups"]).toBe("keep-all=1")
          expect(Option.isSome(claimedOp(String(p.params["notes-template"])))).toBe(true)
        }
        const archives = yield* listed(sim, USB)
        expect(archives).toHaveLength(2)
        const owned = yield* ownership(archives)
        expect([...owned.values()].every((o) => o.ours)).toBe(true)
        // recorded: last success per guest and target
        const runs = yield* (yield* ProtectionStore).runs
        expect(runs.map((r) => `${r.vmid}:${r.storage}:${r.lastResult}`).sort()).toEqual(["100:usb1:ok", "101:usb1:ok"])
        // journal: two backup ops done, nothing in flight
        const j = yield* Journal
        expect((yield* j.list({ limit: 10 })).filter((o) => o.kind === "backup").map((o) => o.status)).toEqual(["done", "done"])
        expect(yield* j.inFlight).toEqual([])
      })))
})

describe("schedules", () => {
  it.scoped("the loop on Effect's Clock fires each backup at its slot (02:00 Budapest), once per slot", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const desired = desiredWith(daily)
        let passes = 0
        const loop = yield* Effect.fork(protectionLoop({
          desired: Effect.succeed(Option.some(desired)),
          publish: () => Effect.sync(() => void passes++)
        }))
        // between passes the loop sleeps its interval: one step wakes it; during a pass, 1 s steps
        let seen = 0
        while ((yield* TestClock.currentTimeMillis) < T0 + 3 * DAY) {
          yield* settle
          if (passes > seen) {
            seen = passes
            yield* TestClock.adjust("10 minutes")
          } else yield* TestClock.adjust("1 second")
        }
        yield* Fiber.interrupt(loop)
        for (const vmid of [100, 101]) {
          const starts = (yield* vzdumps(sim, vmid)).map((t) => t.startedAtMs)
          // never backed up → at once; then 01:00 UTC (02:00 CET) on 2, 3 and 4 March
          const slots = [T0, T0 + HOUR, T0 + DAY + HOUR, T0 + 2 * DAY + HOUR]
          expect(starts).toHaveLength(slots.length)
          starts.forEach((s, i) => {
            expect(s).toBeGreaterThanOrEqual(slots[i]!)
            // a pass every 10 minutes here, two backups at a time, each a few seconds
            expect(s - slots[i]!).toBeLessThan(11 * 60_000)
          })
        }
      }), { passIntervalSeconds: 600 }), 60_000)

  it.scoped("missed runs after downtime run once, not once per missed slot", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const desired = desiredWith(daily)
        yield* runFor(protectionPass(desired))
        expect(yield* vzdumps(sim)).toHaveLength(2)
        // the agent is down for five days: five slots pass
        yield* TestClock.adjust(5 * DAY)
        const after = yield* runFor(protectionPass(desired))
        expect(after.backups.map((b) => b.vmid).sort()).toEqual([100, 101])
        expect(after.decisions.filter((d) => d.due).map((d) => d.reason)).toEqual(["slot_passed", "slot_passed"])
        const again = yield* runFor(protectionPass(desired))
        expect(again.backups).toEqual([])
        expect(yield* vzdumps(sim)).toHaveLength(4)
      })))
})

describe("results", () => {
  it.scoped("WARNINGS: N is success with warnings: recorded as such, the archive is ours, not retried", () =>
    Effect.scoped(Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      // PVE finishes a vzdump with a warning (a file changed while tar read it): the simulator's fault
      const sim = yield* makeSimPve(yield* protectionSeed(), { faults: { task_warning_types: ["vzdump"] } })
      yield* Effect.gen(function*() {
        const desired = desiredWith(daily)
        const first = yield* runFor(protectionPass(desired))
        expect(first.backups.map((b) => b.result)).toEqual(["warnings", "warnings"])
        expect(first.backups[0]!.detail).toMatch(/WARNINGS: 1.*archive exists/)
        const runs = yield* (yield* ProtectionStore).runs
        expect(runs.every((r) => r.lastResult === "warnings" && r.lastSuccessMs !== null)).toBe(true)
        // not due again before its slot: a warning is not a failure to retry
        yield* TestClock.adjust("30 minutes")
        expect((yield* runFor(protectionPass(desired))).backups).toEqual([])
        expect(yield* vzdumps(sim)).toHaveLength(2)
        const owned = yield* ownership(yield* listed(sim, USB))
        expect([...owned.values()].every((o) => o.ours)).toBe(true)
      }).pipe(Effect.provide(protectionLayer(sim, dbFile())))
    })))

  it.scoped("USB pulled mid-backup: a clear failure, nothing deleted, reported; skipped while gone, retried once back", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const desired = desiredWith({ schedule: "02:00", retention: { keep_last: 1 } })
        yield* runFor(protectionPass(desired))
        const before = yield* volids(sim, USB)
        expect(before).toHaveLength(2)
        yield* TestClock.adjust(DAY + HOUR)
        // the disk goes away 2 s into the next night's backups
        const pass = yield* Effect.fork(protectionPass(desired))
        yield* advanceTo(T0 + DAY + HOUR + 2000, 500)
        yield* sim.setStorage("usb1", { online: false })
        const report = yield* runFor(Fiber.join(pass))
        const failed = report.backups.filter((b) => b.result === "failed")
        expect(failed.length).toBeGreaterThan(0)
        for (const f of failed) expect(f.detail).toMatch(/failed: .*(Input\/output error|No space left|activate storage|not mounted)/)
        expect(failed[0]!.detail).toMatch(/nothing was deleted/)
        expect(report.prunes).toEqual([])
        const runs = yield* (yield* ProtectionStore).runs
        expect(runs.filter((r) => r.lastResult === "failed").length).toBe(failed.length)
        // while the disk is gone: skipped and reported, no vzdump tried
        yield* TestClock.adjust("20 minutes")
        const gone = yield* runFor(protectionPass(desired))
        expect(gone.backups).toEqual([])
        expect(gone.skipped.map((s) => s.reason)).toEqual([expect.stringMatching(/not active/)])
        // back: the archives from before are all there (nothing lost), the failed backups run again
        yield* sim.setStorage("usb1", { online: true })
        const back = yield* runFor(protectionPass(desired))
        expect(back.backups.filter((b) => b.result === "ok").length).toBe(failed.length)
        const after = yield* volids(sim, USB)
        // keep_last 1 prunes the older of each guest only after a new good backup of it
        expect(after).toHaveLength(2)
        expect(yield* (yield* Journal).inFlight).toEqual([])
      })))
})

describe("provenance", () => {
  it("agent notes are exactly one line naming a uuid", () => {
    const id = "0b5c2f0e-7d1a-4c1e-9a7e-3f2d6c8b9a10"
    expect(claimedOp(notesFor(id))).toEqual(Option.some(id))
    for (const bad of [`${notesFor(id)} `, ` ${notesFor(id)}`, `felhom-op=${id.toUpperCase()}`, "felhom-op=", `x\n${notesFor(id)}`, "manual"]) {
      expect(claimedOp(bad)).toEqual(Option.none())
    }
  })
})
