/** ControllerStore (issue 11): deploys, contacts, snapshot provenance and backup jobs over the state database. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, TestClock } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { ControllerStore, ControllerStoreLive } from "../src/layers/ControllerStore.js"
import type { VmId } from "../src/schema/ids.js"

const store = (file: string) => ControllerStoreLive.pipe(Layer.provide(layerAt(file)), Layer.orDie)
const v = (n: number) => n as VmId
const pins = [{ spki_sha256: "c3BraQ==", cert_sha256: "ab".repeat(32) }]

describe("ControllerStore", () => {
  it.effect("a deploy, contacts with and without a report, restarts and unresponsiveness", () =>
    Effect.gen(function*() {
      const s = yield* ControllerStore
      yield* TestClock.setTime(1_000)
      yield* s.recordDeploy({ vmid: v(101), image: "reg/ctl:1", generation: 1, tokenId: "0123456789abcdef", mpIndex: 9, pins })
      let r = Option.getOrThrow(yield* s.get(v(101)))
      expect(r).toMatchObject({ image: "reg/ctl:1", generation: 1, mpIndex: 9, pins, deployedMs: 1_000, health: "unknown", lastContactMs: null })

      yield* s.markUnresponsive(v(101), 1_500)
      yield* s.markUnresponsive(v(101), 1_800)
      expect(Option.getOrThrow(yield* s.get(v(101))).unresponsiveSinceMs).toBe(1_500)

      yield* s.recordContact(v(101), 2_000, Option.some({ version: "1.2.3", image: "reg/ctl:1", health: "unhealthy", detail: "db down" }))
      r = Option.getOrThrow(yield* s.get(v(101)))
      expect(r).toMatchObject({ lastContactMs: 2_000, version: "1.2.3", reportedImage: "reg/ctl:1", health: "unhealthy", healthDetail: "db down", unresponsiveSinceMs: null })
      // a contact without a report keeps the last report; an older timestamp never moves it back
      yield* s.recordContact(v(101), 3_000, Option.none())
      yield* s.recordContact(v(101), 2_500, Option.none())
      r = Option.getOrThrow(yield* s.get(v(101)))
      expect(r).toMatchObject({ lastContactMs: 3_000, version: "1.2.3", health: "unhealthy" })

      yield* s.recordRestart(v(101), 4_000)
      // a redeploy changes the deploy, keeps what the controller reported
      yield* TestClock.setTime(5_000)
      yield* s.recordDeploy({ vmid: v(101), image: "reg/ctl:2", generation: 2, tokenId: "fedcba9876543210", mpIndex: 9, pins: [] })
      r = Option.getOrThrow(yield* s.get(v(101)))
      expect(r).toMatchObject({ image: "reg/ctl:2", generation: 2, tokenId: "fedcba9876543210", pins: [], deployedMs: 5_000, lastContactMs: 3_000, lastRestartMs: 4_000 })

      // a contact for a guest without a controller writes nothing
      yield* s.recordContact(v(102), 1, Option.none())
      expect((yield* s.records).map((x) => x.vmid)).toEqual([101])
    }).pipe(Effect.provide(store(":memory:"))))

  it.effect("snapshot provenance is per guest; forget drops the record and its snapshots", () =>
    Effect.gen(function*() {
      const s = yield* ControllerStore
      yield* s.recordDeploy({ vmid: v(101), image: "i", generation: 1, tokenId: "0123456789abcdef", mpIndex: 9, pins })
      yield* s.recordSnapshot({ vmid: v(101), name: "ctl-a", origin: "controller", opId: "op1", takenMs: 10 })
      yield* s.recordSnapshot({ vmid: v(101), name: "felhom-preupd-1", origin: "pre-update", opId: "op2", takenMs: 20 })
      yield* s.recordSnapshot({ vmid: v(102), name: "ctl-b", origin: "controller", opId: "op3", takenMs: 30 })
      expect((yield* s.snapshots(v(101))).map((x) => x.name)).toEqual(["ctl-a", "felhom-preupd-1"])
      expect(Option.isNone(yield* s.snapshotOf(v(101), "ctl-b"))).toBe(true)
      expect(Option.getOrThrow(yield* s.snapshotOf(v(102), "ctl-b"))).toEqual({ vmid: 102, name: "ctl-b", origin: "controller", opId: "op3", takenMs: 30 })
      yield* s.forgetSnapshot(v(101), "ctl-a")
      expect((yield* s.snapshots(v(101))).map((x) => x.name)).toEqual(["felhom-preupd-1"])
      yield* s.forget(v(101))
      expect(yield* s.snapshots(v(101))).toEqual([])
      expect(Option.isNone(yield* s.get(v(101)))).toBe(true)
      expect((yield* s.snapshots(v(102))).length).toBe(1)
    }).pipe(Effect.provide(store(":memory:"))))

  it.effect("jobs: lifecycle, newest first per guest, orphans failed at start", () =>
    Effect.gen(function*() {
      const s = yield* ControllerStore
      const a = yield* s.createJob(v(101), "backup", 100)
      const b = yield* s.createJob(v(101), "backup", 200)
      const c = yield* s.createJob(v(102), "backup", 300)
      expect(new Set([a.id, b.id, c.id]).size).toBe(3)
      expect(a.id).toMatch(/^job-[0-9a-f]{24}$/)
      yield* s.updateJob(a.id, { state: "running", at: 150, opId: "op-a" })
      yield* s.updateJob(a.id, { state: "done", at: 180, result: "local:backup/vzdump-lxc-101.tar.zst" })
      const jobs = yield* s.jobs(v(101), 10)
      expect(jobs.map((j) => j.id)).toEqual([b.id, a.id])
      expect(jobs[1]).toMatchObject({ state: "done", opId: "op-a", endedMs: 180, result: "local:backup/vzdump-lxc-101.tar.zst", error: null })
      expect(yield* s.jobs(v(101), 1)).toHaveLength(1)

      expect(yield* s.failOrphanJobs(999)).toBe(2)
      const after = [...(yield* s.jobs(v(101), 10)), ...(yield* s.jobs(v(102), 10))]
      expect(after.filter((j) => j.state === "failed").map((j) => j.id).sort()).toEqual([b.id, c.id].sort())
      expect(after.find((j) => j.id === b.id)).toMatchObject({ endedMs: 999, error: "the agent restarted before the job finished" })
      expect(after.find((j) => j.id === a.id)?.state).toBe("done")
      expect(yield* s.failOrphanJobs(1000)).toBe(0)
    }).pipe(Effect.provide(store(":memory:"))))

  it.effect("survives a reopen", () => {
    const file = join(mkdtempSync(join(tmpdir(), "felhom-ctl-")), "state.db")
    return Effect.gen(function*() {
      yield* Effect.flatMap(ControllerStore, (s) =>
        Effect.zipRight(
          s.recordDeploy({ vmid: v(107), image: "i", generation: 3, tokenId: "0123456789abcdef", mpIndex: 2, pins }),
          s.recordSnapshot({ vmid: v(107), name: "ctl-x", origin: "controller", opId: "o", takenMs: 1 })
        )).pipe(Effect.provide(store(file)))
      const again = yield* Effect.flatMap(ControllerStore, (s) => Effect.all([s.get(v(107)), s.snapshots(v(107))])).pipe(Effect.provide(store(file)))
      expect(Option.getOrThrow(again[0]).pins).toEqual(pins)
      expect(again[1].map((x) => x.name)).toEqual(["ctl-x"])
    })
  })
})
