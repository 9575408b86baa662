/**
 * waitTask under TestClock, against the simulator in-process (its tasks run on the same clock):
 * the poll times, interruption, the exact timeout, and that only exitstatus "OK" is success.
 */
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Exit, FastCheck as fc, Fiber, Layer, Schema, TestClock } from "effect"
import { proxmoxSettings } from "../src/layers/Config.js"
import { Proxmox, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { SnapshotName, type Upid, VmId } from "../src/schema/ids.js"
import { makeSimHttpClient, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { agentConfig, seedWith } from "./support.js"

const snap = (s: string) => Schema.decodeSync(SnapshotName)(s)

/** Lets in-process HTTP (promise-based bodies) settle without touching the clock. */
const settle = Effect.promise(() => new Promise<void>((r) => setImmediate(r))).pipe(Effect.repeatN(3))

/** Advances simulated time in small steps, letting pending I/O finish between them. */
const advance = (total: Duration.DurationInput, step: Duration.DurationInput = "100 millis") =>
  Effect.gen(function*() {
    const steps = Math.round(Duration.toMillis(total) / Duration.toMillis(step))
    for (let i = 0; i < steps; i++) {
      yield* settle
      yield* TestClock.adjust(step)
    }
    yield* settle
  })

interface Recorder {
  readonly statusPolls: Array<number>
}

/** The production client over the in-process simulator, recording when task status was polled. */
const instrumented = (sim: SimPve, rec: Recorder, extra: Record<string, unknown> = {}) => {
  const file = agentConfig("https://127.0.0.1:8006", sim.tokenId, sim.tokenSecret, { insecure_skip_verify: true }, extra)
  const client = makeSimHttpClient(sim, { reasonHeader: REASON_HEADER }).pipe(
    HttpClient.tapRequest((req) =>
      req.url.endsWith("/status") && req.url.includes("/tasks/")
        ? Effect.map(Clock.currentTimeMillis, (t) => void rec.statusPolls.push(t))
        : Effect.void
    )
  )
  return ProxmoxWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(proxmoxSettings(file.proxmox!)))
}

const setup = (snapshotMs: number, extra: Record<string, unknown> = {}) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({ task_durations_ms: { vzsnapshot: snapshotMs } }))
    const rec: Recorder = { statusPolls: [] }
    const t0 = yield* Clock.currentTimeMillis
    const pve = yield* Effect.provide(Proxmox, instrumented(sim, rec, extra))
    const upidFiber = yield* Effect.fork(pve.snapshot(VmId.make(101), snap("clocked")))
    yield* settle
    const upid = yield* Fiber.join(upidFiber)
    return { sim, rec, pve, upid, t0 }
  })

const rel = (rec: Recorder, t0: number) => rec.statusPolls.map((t) => (t - t0) / 1000)

describe("waitTask under TestClock", () => {
  it.scoped("polls at 0, 1, 3, 7, 12 s for a 10 s task (1 s growing to the 5 s cap) and returns the stopped status", () =>
    Effect.gen(function*() {
      const { pve, rec, t0, upid } = yield* setup(10_000)
      const waiter = yield* Effect.fork(pve.waitTask(upid))
      yield* advance("11.5 seconds")
      expect(rel(rec, t0)).toEqual([0, 1, 3, 7])
      expect(waiter.unsafePoll()).toBeNull()
      yield* advance("1 second")
      const status = yield* Fiber.join(waiter)
      expect(status.exitstatus).toBe("OK")
      expect(rel(rec, t0)).toEqual([0, 1, 3, 7, 12])
    }))

  it.scoped("the delay stays at the 5 s cap for long tasks", () =>
    Effect.gen(function*() {
      const { pve, rec, t0, upid } = yield* setup(40_000)
      const waiter = yield* Effect.fork(pve.waitTask(upid))
      yield* advance("45 seconds", "500 millis")
      yield* Fiber.join(waiter)
      const times = rel(rec, t0)
      expect(times.slice(0, 4)).toEqual([0, 1, 3, 7])
      const gaps = times.slice(1).map((t, i) => t - times[i]!)
      expect(gaps.slice(3).every((g) => g === 5)).toBe(true)
      expect(times.at(-1)).toBe(42)
    }))

  it.scoped("interruption stops the polling at once and leaves the task running on the host", () =>
    Effect.gen(function*() {
      const { pve, rec, sim, upid } = yield* setup(60_000)
      const waiter = yield* Effect.fork(pve.waitTask(upid))
      yield* advance("3.5 seconds")
      const polled = rec.statusPolls.length
      yield* Fiber.interrupt(waiter)
      yield* advance("30 seconds", "1 second")
      expect(rec.statusPolls.length).toBe(polled)
      const task = yield* sim.task(upid)
      expect(task._tag === "Some" && task.value.status).toBe("running")
    }))

  it.scoped("times out exactly at the limit with PveTaskTimeout; the task is not stopped", () =>
    Effect.gen(function*() {
      const { pve, sim, upid } = yield* setup(600_000)
      const waiter = yield* Effect.fork(pve.waitTask(upid, { timeout: "30 seconds" }))
      yield* advance("29.9 seconds")
      expect(waiter.unsafePoll()).toBeNull()
      yield* advance("0.1 seconds")
      const exit = yield* Fiber.await(waiter)
      expect(Exit.isFailure(exit)).toBe(true)
      const e = yield* Effect.flip(exit)
      expect(e._tag).toBe("PveTaskTimeout")
      if (e._tag === "PveTaskTimeout") {
        expect(e.afterSeconds).toBe(30)
        expect(e.message).toContain("not stopped")
      }
      const task = yield* sim.task(upid)
      expect(task._tag === "Some" && task.value.status).toBe("running")
    }))

  it.scoped("the default timeout is proxmox.task_timeout_seconds", () =>
    Effect.gen(function*() {
      const { pve, upid } = yield* setup(600_000, { task_timeout_seconds: 45 })
      const waiter = yield* Effect.fork(pve.waitTask(upid))
      yield* advance("44 seconds", "1 second")
      expect(waiter.unsafePoll()).toBeNull()
      yield* advance("1 second")
      const e = yield* Effect.flip(Fiber.join(waiter))
      expect(e._tag === "PveTaskTimeout" && e.afterSeconds).toBe(45)
    }))

  it.scoped("a task failing in the simulator is PveTaskFailed, never success", () =>
    Effect.gen(function*() {
      const { pve, sim } = yield* setup(2_000)
      yield* sim.setFaults({ task_failure_rate: 1 })
      const upidFiber = yield* Effect.fork(pve.start(VmId.make(101)))
      yield* settle
      const upid = yield* Fiber.join(upidFiber)
      const waiter = yield* Effect.fork(pve.waitTask(upid))
      yield* advance("10 seconds")
      const e = yield* Effect.flip(Fiber.join(waiter))
      expect(e._tag).toBe("PveTaskFailed")
    }))
})

describe("waitTask accepts nothing but exitstatus OK", () => {
  const UPID = "UPID:pve:0003A1F2:0B2C4D5E:691F0A10:vzsnapshot:101:felhom@pve!agent:" as Upid
  /** A PVE answering task status with a fixed body (the simulator never sends these odd ones). */
  const answering = (status: Record<string, unknown>) => {
    const file = agentConfig("https://127.0.0.1:8006", "felhom@pve!agent", "5b2f9c1e-8d47-4a36-9e0b-3c7f1a2d6e84", {
      insecure_skip_verify: true
    }, { node: "pve" })
    const client = HttpClient.make((request) =>
      Effect.succeed(HttpClientResponse.fromWeb(
        request,
        new Response(
          request.url.includes("/log")
            ? JSON.stringify({ data: [{ n: 1, t: "TASK ERROR: it went wrong" }], total: 1 })
            : JSON.stringify({ data: { upid: UPID, node: "pve", status: "stopped", ...status } }),
          { status: 200 }
        )
      ))
    )
    return ProxmoxWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(proxmoxSettings(file.proxmox!)))
  }
  const wait = (status: Record<string, unknown>, acceptWarnings = false) =>
    Effect.flatMap(Proxmox, (p) => p.waitTask(UPID, { acceptWarnings })).pipe(Effect.provide(answering(status)), Effect.either)

  it.effect("OK succeeds", () =>
    Effect.gen(function*() {
      expect((yield* wait({ exitstatus: "OK" }))._tag).toBe("Right")
    }))

  it.effect("a stopped task without exitstatus fails", () =>
    Effect.gen(function*() {
      const r = yield* wait({})
      expect(r._tag === "Left" && r.left._tag).toBe("PveTaskFailed")
    }))

  it.effect("WARNINGS: n fails unless the caller opts in", () =>
    Effect.gen(function*() {
      expect((yield* wait({ exitstatus: "WARNINGS: 2" }))._tag).toBe("Left")
      expect((yield* wait({ exitstatus: "WARNINGS: 2" }, true))._tag).toBe("Right")
      expect((yield* wait({ exitstatus: "WARNINGS: many" }, true))._tag).toBe("Left")
    }))

  it.effect("a permission failure in the exitstatus is parsed onto the error", () =>
    Effect.gen(function*() {
      const r = yield* wait({ exitstatus: "Permission check failed (/vms/101, VM.Backup)" })
      if (r._tag !== "Left" || r.left._tag !== "PveTaskFailed") throw new Error("expected PveTaskFailed")
      expect(r.left.permission).toEqual({ aclPath: "/vms/101", privileges: ["VM.Backup"] })
      expect(r.left.logTail).toEqual(["TASK ERROR: it went wrong"])
    }))

  it.effect.prop(
    "any exitstatus other than OK is a failure",
    [fc.string({ maxLength: 40 }).filter((s) => s !== "OK")],
    ([exitstatus]) =>
      Effect.gen(function*() {
        const r = yield* wait({ exitstatus })
        expect(r._tag).toBe("Left")
      })
  )
})
