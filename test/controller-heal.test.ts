/**
 * Heal (src/programs/controller/heal.ts) under TestClock over the in-process simulator, with
 * simulated controllers: a silent controller is restarted once per heal window (its bootstrap
 * republished with generation + 1, which restarts it), reported unresponsive when still silent a
 * contact window later, restarted again only in the next window; a contact clears the report and
 * a talking controller is left alone; a stopped guest and a guest with an op in flight are not
 * healed; the restart's recovery rule.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import type { ControllerRecord } from "../src/layers/ControllerStore.js"
import { OpLog } from "../src/layers/OpLog.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { controllerProblems, healLoop, healPass, healVerdict, recoverControllerRestart } from "../src/programs/controller/heal.js"
import { beginOperation } from "../src/programs/control/steps.js"
import { decodeOperation } from "../src/schema/operations.js"
import { IMAGE_A, makeWorld, run, until, V100, V101, type World } from "./controller-lifecycle-support.js"

const S = { contactWindowSeconds: 60, healWindowSeconds: 600, healIntervalSeconds: 10 }

const record = (over: Partial<ControllerRecord>): ControllerRecord => ({
  vmid: V100,
  image: IMAGE_A,
  generation: 1,
  tokenId: "t",
  mpIndex: 0,
  pins: [],
  deployedMs: 0,
  lastContactMs: null,
  version: null,
  reportedImage: null,
  health: "unknown",
  healthDetail: null,
  lastRestartMs: null,
  unresponsiveSinceMs: null,
  identity: null,
  ...over
})

const healthy = (w: World, vmid: number) => Effect.map(w.fleet.view(vmid), (v) => Option.isSome(v) && v.value.reported === "healthy")

const restarts = (w: World, vmid: number) => w.published.filter((p) => p.vmid === vmid)

describe("heal: the verdict", () => {
  it("silent past the contact window → restart; within the grace → wait; after it → unresponsive; next window → restart again", () => {
    const min = 60_000
    expect(healVerdict(record({ lastContactMs: 10 * min }), 10 * min + 59_999, S).kind).toBe("ok")
    expect(healVerdict(record({ lastContactMs: 10 * min }), 11 * min, S)).toMatchObject({ kind: "restart", reason: expect.stringContaining("silent since") })
    // never contacted: counted from the deploy
    expect(healVerdict(record({ deployedMs: 0 }), 30_000, S).kind).toBe("ok")
    expect(healVerdict(record({ deployedMs: 0 }), min, S)).toMatchObject({ kind: "restart", reason: expect.stringContaining("never contacted") })
    const restarted = record({ lastContactMs: 0, lastRestartMs: 2 * min })
    expect(healVerdict(restarted, 2 * min + 59_000, S).kind).toBe("wait")
    expect(healVerdict(restarted, 3 * min, S).kind).toBe("unresponsive")
    expect(healVerdict(restarted, 12 * min - 1, S).kind).toBe("unresponsive")
    expect(healVerdict(restarted, 12 * min, S).kind).toBe("restart")
  })

  it("the report's problems: unresponsive, silent, unhealthy, with reasons; a healthy one is none", () => {
    const now = 3_600_000
    const problems = controllerProblems([
      record({ vmid: V101, lastContactMs: now - 1000, health: "unhealthy", healthDetail: "db down" }),
      record({ lastContactMs: 0, unresponsiveSinceMs: now - 5000 }),
      record({ vmid: 102 as ControllerRecord["vmid"], lastContactMs: 0 }),
      record({ vmid: 103 as ControllerRecord["vmid"], lastContactMs: now - 1000, health: "healthy" })
    ], now, S)
    expect(problems.map((p) => [p.vmid, p.state])).toEqual([[100, "unresponsive"], [101, "unhealthy"], [102, "silent"]])
    expect(problems[0]!.reason).toMatch(/still silent after a heal restart/)
    expect(problems[1]!.reason).toBe("db down")
  })
})

describe("heal: the loop", () => {
  it.scoped("a silent controller is restarted once per window, then reported unresponsive; restarted again next window; a contact clears it", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* w.deploy(V100, IMAGE_A)
      expect(yield* until(healthy(w, 100))).toBe(true)
      yield* w.fleet.setFault(100, "silent")
      yield* Effect.forkScoped(healLoop(S).pipe(Effect.provide(w.layer())))

      // silent for a contact window → one restart: generation + 1, same image, and the controller restarted
      expect(yield* until(Effect.sync(() => restarts(w, 100).length === 1), 200)).toBe(true)
      expect(restarts(w, 100)).toEqual([{ vmid: 100, image: IMAGE_A, generation: 2 }])
      expect(yield* until(Effect.map(w.fleet.view(100), (v) => Option.isSome(v) && v.value.starts === 2 && v.value.generation === 2))).toBe(true)
      const rec = Option.getOrThrow(yield* w.store.get(V100))
      expect(rec.generation).toBe(2)
      expect(rec.lastRestartMs).not.toBeNull()
      const ops = yield* run(Effect.flatMap(OpLog, (o) => o.list({ limit: 10 })).pipe(Effect.provide(w.layer())))
      expect(ops.filter((o) => o.kind === "controller-restart").map((o) => o.status)).toEqual(["done"])

      // still silent a contact window later → unresponsive, reported; no second restart in this window
      expect(yield* until(Effect.map(w.store.get(V100), (r) => Option.getOrThrow(r).unresponsiveSinceMs !== null), 120)).toBe(true)
      const problems = controllerProblems(yield* w.store.records, rec.lastRestartMs! + 61_000, S)
      expect(problems).toEqual([expect.objectContaining({ vmid: 100, state: "unresponsive" })])
      yield* until(Effect.succeed(false), 400)
      expect(restarts(w, 100)).toHaveLength(1)
      // the next heal window allows one more restart
      expect(yield* until(Effect.sync(() => restarts(w, 100).length === 2), 200)).toBe(true)
      expect(restarts(w, 100)[1]).toEqual({ vmid: 100, image: IMAGE_A, generation: 3 })

      // it speaks again: the mark is cleared, nothing is reported, nothing restarted
      yield* w.fleet.setFault(100, "healthy")
      expect(yield* until(Effect.map(w.store.get(V100), (r) => Option.getOrThrow(r).unresponsiveSinceMs === null), 120)).toBe(true)
      expect(controllerProblems(yield* w.store.records, Option.getOrThrow(yield* w.store.get(V100)).lastContactMs!, S)).toEqual([])
      yield* until(Effect.succeed(false), 700)
      expect(restarts(w, 100)).toHaveLength(2)
    }), 120_000)

  it.scoped("a stopped guest is not healed, nor one with an op in flight", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* w.deploy(V100, IMAGE_A)
      yield* w.deploy(V101, IMAGE_A)
      expect(yield* until(Effect.zipWith(healthy(w, 100), healthy(w, 101), (a, b) => a && b))).toBe(true)
      yield* run(Effect.flatMap(Proxmox, (p) => Effect.flatMap(p.stop(V101), (u) => p.waitTask(u))).pipe(Effect.provide(w.layer())))
      yield* w.fleet.setFault(100, "silent")
      // 100 has an op in flight (an update, say): heal leaves it to that op
      const op = yield* run(beginOperation({ _tag: "controller-restart", vmid: V100, generation: 9, reason: "another op" }).pipe(Effect.provide(w.layer())))
      yield* until(Effect.succeed(false), 120)
      const acted = yield* run(healPass(S).pipe(Effect.provide(w.layer())))
      expect(acted).toEqual([])
      expect(w.published).toEqual([])
      // once that op has ended, 100 is restarted; 101 (stopped, silent for long) still is not
      yield* run(Effect.flatMap(OpLog, (o) => o.finish(op.id, "failed", "test")).pipe(Effect.provide(w.layer())))
      const acted2 = yield* run(healPass(S).pipe(Effect.provide(w.layer())))
      expect(acted2.map((a) => [a.vmid, a.action])).toEqual([[100, "restarted"]])
      expect(w.published.map((p) => p.vmid)).toEqual([100])
    }), 60_000)

  it.scoped("a restart whose publish fails spends the window's attempt and is reported as failed", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      yield* w.deploy(V100, IMAGE_A)
      expect(yield* until(healthy(w, 100))).toBe(true)
      yield* w.fleet.setFault(100, "silent")
      w.failPublish.add(100)
      yield* until(Effect.succeed(false), 70)
      const acted = yield* run(healPass(S).pipe(Effect.provide(w.layer())))
      expect(acted).toEqual([expect.objectContaining({ vmid: 100, action: "restart_failed" })])
      expect(acted[0]!.reason).toMatch(/bootstrap helper failed/)
      const again = yield* run(healPass(S).pipe(Effect.provide(w.layer())))
      expect(again).toEqual([])
      const ops = yield* run(Effect.flatMap(OpLog, (o) => o.list({ limit: 10 })).pipe(Effect.provide(w.layer())))
      expect(ops.filter((o) => o.kind === "controller-restart").map((o) => o.status)).toEqual(["failed"])
    }), 60_000)

  it.scoped("recovery of an interrupted restart: done if published, else failed", () =>
    Effect.gen(function*() {
      const w = yield* makeWorld
      const outcomes = yield* run(Effect.gen(function*() {
        const ops = yield* OpLog
        const out: Array<string> = []
        for (const published of [true, false]) {
          const s = yield* beginOperation({ _tag: "controller-restart", vmid: V100, generation: 2, reason: "silent" })
          yield* s.started("publish")
          if (published) yield* s.done("publish")
          const op = Option.getOrThrow(yield* ops.get(s.id))
          const typed = decodeOperation(op.payload)
          if (typed._tag === "Left" || typed.right._tag !== "controller-restart") return yield* Effect.dieMessage("payload")
          out.push((yield* recoverControllerRestart(op, typed.right)).outcome)
          out.push(Option.getOrThrow(yield* ops.get(s.id)).status)
        }
        return out
      }).pipe(Effect.provide(w.layer())))
      expect(outcomes).toEqual(["done", "done", "failed", "failed"])
    }))
})
