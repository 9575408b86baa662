/**
 * waitTask under TestClock, against the simulator in-process (its tasks run on the same clock):
 * the poll times, interruption, the exact timeout, and that only exitstatus "OK" is success; with
 * many waiters on one node, one shared poller (one list call per poll, status reads only to
 * confirm), and how little the list is trusted.
 */
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Exit, FastCheck as fc, Fiber, Layer, Schema, TestClock } from "effect"
import { proxmoxSettings } from "../src/layers/Config.js"
import { LIST_TRUST_MS, nextLonePollAgeMs, Proxmox, ProxmoxWithoutClient, sharedPollIntervalMs } from "../src/layers/Proxmox.js"
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

  it.scoped("a poll at the very instant the task ends sees it stopped (the simulator has no tie)", () =>
    Effect.gen(function*() {
      const { pve, rec, t0, upid } = yield* setup(1_000)
      const waiter = yield* Effect.fork(pve.waitTask(upid).pipe(Effect.zipRight(Clock.currentTimeMillis)))
      yield* advance("4 seconds")
      expect((yield* Fiber.join(waiter)) - t0).toBe(1_000)
      expect(rel(rec, t0)).toEqual([0, 1])
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

// ---------------------------------------------------------------------------------------------
// Many waiters on one node: one poller, one list call per poll

/** `n` stopped debian CTs from vmid 1000 (plenty of guests to run tasks on side by side). */
const guestsSeed = (n: number) =>
  Array.from({ length: n }, (_, i) => ({
    vmid: 1000 + i,
    status: "stopped",
    config: { arch: "amd64", cores: 1, hostname: `g${1000 + i}`, memory: 512, ostype: "debian", rootfs: `local-lvm:vm-${1000 + i}-disk-0,size=4G`, swap: 0, unprivileged: 1 }
  }))

interface Call {
  readonly at: number
  readonly kind: "list" | "status" | "log" | "other"
}

/** The production client over the in-process simulator, recording every call with its time. */
const recording = (sim: SimPve, calls: Array<Call>) => {
  const file = agentConfig("https://127.0.0.1:8006", sim.tokenId, sim.tokenSecret, { insecure_skip_verify: true })
  const client = makeSimHttpClient(sim, { reasonHeader: REASON_HEADER }).pipe(
    HttpClient.tapRequest((req) =>
      Effect.map(Clock.currentTimeMillis, (at) => {
        const kind = req.url.endsWith("/tasks") ? "list" : req.url.includes("/tasks/") && req.url.endsWith("/status") ? "status" : req.url.endsWith("/log") ? "log" : "other"
        calls.push({ at, kind })
      })
    )
  )
  return ProxmoxWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(proxmoxSettings(file.proxmox!)))
}

const manyWaiters = (n: number, overrides: Record<string, unknown> = {}) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({ guests: guestsSeed(n), ...overrides }))
    const calls: Array<Call> = []
    const t0 = yield* Clock.currentTimeMillis
    const pve = yield* Effect.provide(Proxmox, recording(sim, calls))
    /** Starts a task with `start`, then waits on it; the fiber yields [end seen at, status] relative to t0. */
    const launch = (start: Effect.Effect<Upid, unknown>) =>
      Effect.gen(function*() {
        const f = yield* Effect.fork(start)
        yield* settle
        const upid = yield* Fiber.join(f)
        const waiter = yield* Effect.fork(pve.waitTask(upid).pipe(Effect.zip(Clock.currentTimeMillis), Effect.map(([s, at]) => ({ s, at: at - t0 }))))
        return { upid, waiter }
      })
    return { sim, calls, pve, t0, launch }
  })

const at = (calls: ReadonlyArray<Call>, kind: Call["kind"], t0: number) => calls.filter((c) => c.kind === kind).map((c) => (c.at - t0) / 1000)

describe("waitTask: one poller per node for every waiter", () => {
  it("the lone schedule and the shared interval", () => {
    const lone = [0]
    while (lone.length < 8) lone.push(nextLonePollAgeMs(lone.at(-1)!))
    expect(lone).toEqual([0, 1_000, 3_000, 7_000, 12_000, 17_000, 22_000, 27_000])
    expect(nextLonePollAgeMs(12_500)).toBe(17_000)
    // one task: its own delay; many young tasks: the 1 s floor; many old ones: the 5 s cap over their count
    expect([0, 1_500, 4_000, 60_000].map((a) => sharedPollIntervalMs([a]))).toEqual([1_000, 2_000, 4_000, 5_000])
    expect(sharedPollIntervalMs([0, 0, 0, 0])).toBe(1_000)
    expect(sharedPollIntervalMs([60_000, 60_000])).toBe(2_500)
    expect(sharedPollIntervalMs(Array.from({ length: 10 }, () => 60_000))).toBe(1_000)
  })

  it.scoped("N concurrent waiters cost one list call per 1 s interval, and each learns its task's end within that interval", () =>
    Effect.gen(function*() {
      const N = 6
      const { calls, launch, pve, t0 } = yield* manyWaiters(N, { task_durations_ms: { vzsnapshot: 6_000 } })
      // task i starts at i × 0.4 s and ends 6 s later
      const started: Array<{ readonly startMs: number; readonly waiter: Fiber.RuntimeFiber<{ s: { exitstatus?: string | null | undefined }; at: number }, unknown> }> = []
      for (let i = 0; i < N; i++) {
        const startMs = (yield* Clock.currentTimeMillis) - t0
        started.push({ startMs, ...(yield* launch(pve.snapshot(VmId.make(1000 + i), snap(`s${i}`)))) })
        yield* advance("400 millis")
      }
      yield* advance("10 seconds")
      for (const { startMs, waiter } of started) {
        const seen = yield* Fiber.join(waiter)
        expect(seen.s.exitstatus).toBe("OK")
        const endMs = startMs + 6_000
        expect(seen.at).toBeGreaterThanOrEqual(endMs)
        expect(seen.at - endMs).toBeLessThanOrEqual(1_000)
      }
      // the first waiter, alone at 0, is read directly; from then on ONE list call per poll, a
      // second apart while four or more young tasks wait; the last three (older than 3 s) are
      // looked at when the oldest of them would have been polled alone (8.2 s)
      expect(at(calls, "list", t0)).toEqual([1, 2, 3, 4, 5, 6, 7, 8.2])
      // status reads only to confirm: one per task, when the list stopped showing it running
      expect(at(calls, "status", t0)).toEqual([0, 6, 7, 7, 8.2, 8.2, 8.2])
    }))

  it.scoped("a failed task among concurrent waiters is PveTaskFailed with its log tail; the others still succeed", () =>
    Effect.gen(function*() {
      const { launch, pve } = yield* manyWaiters(3, {
        task_durations_ms: { vzsnapshot: 3_000, vzstart: 2_000 },
        faults: { task_failure_types: ["vzstart"] }
      })
      const a = yield* launch(pve.snapshot(VmId.make(1000), snap("sa")))
      const failing = yield* launch(pve.start(VmId.make(1001)))
      const b = yield* launch(pve.snapshot(VmId.make(1002), snap("sb")))
      yield* advance("5 seconds")
      const e = yield* Effect.flip(Fiber.join(failing.waiter))
      expect(e._tag).toBe("PveTaskFailed")
      if (e._tag === "PveTaskFailed") {
        expect(e.logTail.length).toBeGreaterThan(0)
        expect(e.logTail.at(-1)).toMatch(/^TASK ERROR: /)
        expect(e.exitstatus).toBe(e.logTail.at(-1)!.replace(/^TASK ERROR: /, ""))
      }
      expect((yield* Fiber.join(a.waiter)).s.exitstatus).toBe("OK")
      expect((yield* Fiber.join(b.waiter)).s.exitstatus).toBe("OK")
    }))

  it.scoped("interrupting waiters: the poller goes on for those left and stops when the last one leaves", () =>
    Effect.gen(function*() {
      const { calls, launch, pve, sim } = yield* manyWaiters(3, { task_durations_ms: { vzsnapshot: 600_000 } })
      const ws = [
        yield* launch(pve.snapshot(VmId.make(1000), snap("sa"))),
        yield* launch(pve.snapshot(VmId.make(1001), snap("sb"))),
        yield* launch(pve.snapshot(VmId.make(1002), snap("sc")))
      ]
      yield* advance("5 seconds")
      yield* Fiber.interrupt(ws[0]!.waiter)
      const before = calls.length
      yield* advance("10 seconds", "500 millis")
      expect(calls.length).toBeGreaterThan(before)
      yield* Fiber.interrupt(ws[1]!.waiter)
      yield* Fiber.interrupt(ws[2]!.waiter)
      const stopped = calls.length
      yield* advance("60 seconds", "1 second")
      expect(calls.length).toBe(stopped)
      for (const w of ws) {
        const task = yield* sim.task(w.upid)
        expect(task._tag === "Some" && task.value.status).toBe("running")
      }
      // a new waiter afterwards (on a task still running) starts a new poller
      const late = yield* launch(Effect.succeed(ws[0]!.upid))
      yield* advance("2 seconds")
      expect(calls.length).toBeGreaterThan(stopped)
      yield* Fiber.interrupt(late.waiter)
    }))

  it.scoped("a waiter timing out leaves the others waiting", () =>
    Effect.gen(function*() {
      const { launch, pve } = yield* manyWaiters(2, { task_durations_ms: { vzsnapshot: 20_000 } })
      const a = yield* launch(pve.snapshot(VmId.make(1000), snap("sa")))
      const f = yield* Effect.fork(pve.snapshot(VmId.make(1001), snap("sb")))
      yield* settle
      const upid = yield* Fiber.join(f)
      const short = yield* Effect.fork(pve.waitTask(upid, { timeout: "5 seconds" }))
      yield* advance("6 seconds")
      const e = yield* Effect.flip(Fiber.join(short))
      expect(e._tag).toBe("PveTaskTimeout")
      yield* advance("16 seconds")
      expect((yield* Fiber.join(a.waiter)).s.exitstatus).toBe("OK")
    }))
})

describe("waitTask trusts the task list only for 'still running'", () => {
  const node = "pve"
  const upidOf = (i: number) => `UPID:${node}:0003A1F${i}:0B2C4D5E:691F0A10:vzsnapshot:10${i}:felhom@pve!agent:` as Upid
  /**
   * A PVE whose tasks i end at endsMs[i] (Clock time), with a task list that is honest, omits
   * everything, never updates (calls every task running forever), or fails.
   */
  const fakePve = (endsMs: ReadonlyArray<number>, list: "honest" | "empty" | "stale" | "fails", calls: Array<Call>) => {
    const file = agentConfig("https://127.0.0.1:8006", "felhom@pve!agent", "5b2f9c1e-8d47-4a36-9e0b-3c7f1a2d6e84", { insecure_skip_verify: true }, { node })
    const client = HttpClient.make((request) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const body = (status: number, data: unknown) => HttpClientResponse.fromWeb(request, new Response(JSON.stringify(data), { status }))
        const i = endsMs.findIndex((_, k) => request.url.includes(encodeURIComponent(upidOf(k))))
        if (request.url.endsWith("/tasks")) {
          calls.push({ at: now, kind: "list" })
          if (list === "fails") return body(500, { data: null, message: "list broke" })
          const rows = list === "empty" ? [] : endsMs.map((end, k) => (list === "stale" || now < end ? { upid: upidOf(k), status: "RUNNING" } : { upid: upidOf(k), status: "OK", endtime: 1 }))
          return body(200, { data: rows, total: rows.length })
        }
        if (request.url.endsWith("/status") && i >= 0) {
          calls.push({ at: now, kind: "status" })
          const running = now < endsMs[i]!
          return body(200, { data: { upid: upidOf(i), node, status: running ? "running" : "stopped", ...(running ? {} : { exitstatus: "OK" }) } })
        }
        calls.push({ at: now, kind: "other" })
        return body(500, { data: null })
      })
    )
    return ProxmoxWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(proxmoxSettings(file.proxmox!)))
  }

  const run = (endsMs: ReadonlyArray<number>, list: "honest" | "empty" | "stale" | "fails", forMs: number) =>
    Effect.gen(function*() {
      const calls: Array<Call> = []
      const t0 = yield* Clock.currentTimeMillis
      const pve = yield* Effect.provide(Proxmox, fakePve(endsMs.map((e) => t0 + e), list, calls))
      const waiters = yield* Effect.forEach(endsMs, (_, i) =>
        Effect.fork(pve.waitTask(upidOf(i)).pipe(Effect.zipRight(Clock.currentTimeMillis), Effect.map((t) => t - t0))))
      yield* advance(Duration.millis(forMs), "250 millis")
      const seen = yield* Effect.forEach(waiters, (w) => Fiber.join(w))
      return { seen, lists: at(calls, "list", t0), statuses: at(calls, "status", t0) }
    })

  it.scoped("an honest list: only confirmations are read directly", () =>
    Effect.gen(function*() {
      const { lists, seen, statuses } = yield* run([4_000, 6_000], "honest", 8_000)
      // two waiters from 0: one list call a second while both are young (their combined lone rate,
      // 2 × 1/2 s), then 2 s apart (2 × 1/4 s); the first end is confirmed at 5; the second task,
      // alone from then on, is read directly at 7, when it would have been polled alone anyway
      expect(lists).toEqual([0, 1, 2, 3, 5])
      expect(statuses).toEqual([5, 7])
      expect(seen).toEqual([5_000, 7_000])
    }))

  it.scoped("a task the list does not show is read directly on its own schedule", () =>
    Effect.gen(function*() {
      const { seen, statuses } = yield* run([10_000, 10_000], "empty", 13_000)
      expect(seen.every((t) => t >= 10_000 && t <= 12_000)).toBe(true)
      expect(statuses.length).toBeLessThanOrEqual(2 * 6)
    }))

  it.scoped("a list that never updates cannot hold a finished task longer than LIST_TRUST_MS", () =>
    Effect.gen(function*() {
      const { seen } = yield* run([5_000, 5_000], "stale", LIST_TRUST_MS + 3_000)
      expect(seen.every((t) => t <= LIST_TRUST_MS + 2_000)).toBe(true)
    }))

  it.scoped("a failing list call falls back to reading each task for that poll", () =>
    Effect.gen(function*() {
      const { lists, seen, statuses } = yield* run([3_000, 4_000], "fails", 8_000)
      // not retried: each failed list call is followed at once by both tasks' own reads
      expect(lists).toEqual([0, 1, 2, 3])
      expect(statuses).toEqual([0, 0, 1, 1, 2, 2, 3, 3, 7])
      // the second task, alone from 3 s, is read when it would have been alone: 7 s
      expect(seen).toEqual([3_000, 7_000])
    }))
})
