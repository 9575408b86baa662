/**
 * GuestQueue under TestClock: tasks sleep in virtual time while a recorder watches starts, ends,
 * per-key overlap and global concurrency. Hand-picked cases (order, overlap, cap, failure,
 * interruption, the release-and-resubmit case a Semaphore gets wrong, cleanup) plus a property
 * over random op streams with random failures and interruptions.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Data, Effect, Exit, FastCheck as fc, Fiber, FiberId, Layer, Option, Scope, TestClock } from "effect"
import { GuestQueue, make, type QueueKey } from "../src/layers/GuestQueue.js"

class TaskFailed extends Data.TaggedError("TaskFailed")<{ readonly id: number }> {}

/** Watches tasks: start order per key, overlap on a key, and the most tasks running at once. */
const recorder = () => {
  const started: Array<{ id: number; key: QueueKey }> = []
  const ended: Array<number> = []
  const perKey = new Map<QueueKey, number>()
  let running = 0
  let maxRunning = 0
  let sameKeyOverlap = false
  const task = (id: number, key: QueueKey, ms: number, outcome: "ok" | "fail" | "die" = "ok") =>
    Effect.suspend(() => {
      started.push({ id, key })
      running++
      maxRunning = Math.max(maxRunning, running)
      const onKey = (perKey.get(key) ?? 0) + 1
      if (onKey > 1) sameKeyOverlap = true
      perKey.set(key, onKey)
      return Effect.sleep(ms).pipe(
        Effect.ensuring(Effect.sync(() => {
          running--
          perKey.set(key, (perKey.get(key) ?? 1) - 1)
          ended.push(id)
        })),
        Effect.zipRight(
          outcome === "ok" ? Effect.succeed(id) : outcome === "fail" ? Effect.fail(new TaskFailed({ id })) : Effect.dieMessage(`task ${id} died`)
        )
      )
    })
  return {
    task,
    started,
    ended,
    order: (key: QueueKey) => started.filter((s) => s.key === key).map((s) => s.id),
    get maxRunning() {
      return maxRunning
    },
    get sameKeyOverlap() {
      return sameKeyOverlap
    }
  }
}

/**
 * Runs virtual time forward until every fiber has finished. One adjust suffices: TestClock wakes
 * sleeps in time order and waits for all fibers to suspend before each, so chained tasks
 * register their sleeps before the clock passes them.
 */
const settle = (fibers: ReadonlyArray<Fiber.Fiber<unknown, unknown>>) =>
  Effect.gen(function*() {
    yield* TestClock.adjust("1 hour")
    const polls = yield* Effect.forEach(fibers, (f) => f.poll)
    if (!polls.every(Option.isSome)) return yield* Effect.dieMessage("fibers did not settle")
  })

describe("GuestQueue", () => {
  it.scoped("same key: never overlaps, runs in submit order", () =>
    Effect.gen(function*() {
      const q = yield* make(4)
      const r = recorder()
      const durations = [3000, 100, 2000, 0, 500, 1000]
      const fibers = yield* Effect.forEach(durations, (ms, id) => Effect.fork(q.serialize(101)(r.task(id, 101, ms))))
      yield* settle(fibers)
      expect(r.order(101)).toEqual([0, 1, 2, 3, 4, 5])
      expect(r.ended).toEqual([0, 1, 2, 3, 4, 5])
      expect(r.sameKeyOverlap).toBe(false)
      expect(r.maxRunning).toBe(1)
      expect(yield* Effect.forEach(fibers, Fiber.join)).toEqual([0, 1, 2, 3, 4, 5])
      expect(yield* q.stats).toEqual({ activeKeys: 0, waiting: 0 })
    }))

  it.scoped("different keys run in parallel", () =>
    Effect.gen(function*() {
      const q = yield* make(4)
      const r = recorder()
      const fibers = yield* Effect.forEach([101, 102, "host" as const], (key, id) => Effect.fork(q.serialize(key)(r.task(id, key, 1000))))
      yield* TestClock.adjust("1 second")
      // all three finished within one task's duration: they overlapped
      expect(yield* Effect.forEach(fibers, Fiber.join)).toEqual([0, 1, 2])
      expect(r.maxRunning).toBe(3)
    }))

  it.scoped("the global cap holds across keys", () =>
    Effect.gen(function*() {
      const q = yield* make(3)
      const r = recorder()
      const fibers = yield* Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (id) =>
        Effect.fork(q.serialize(200 + id)(r.task(id, 200 + id, 1000))))
      yield* settle(fibers)
      expect(r.maxRunning).toBe(3)
      expect([...r.started.map((s) => s.id)].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    }))

  it.scoped("release-and-resubmit keeps submit order (H1, A, B, H2), where a Semaphore(1) runs H1, H2, A, B", () =>
    Effect.gen(function*() {
      const q = yield* make(4)
      const r = recorder()
      // H submits H1, then H2 the moment H1 is done; A and B were submitted while H1 ran
      const h = yield* Effect.fork(Effect.zipRight(q.serialize(7)(r.task(1, 7, 1000)), q.serialize(7)(r.task(4, 7, 1000))))
      yield* TestClock.adjust("100 millis")
      const a = yield* Effect.fork(q.serialize(7)(r.task(2, 7, 1000)))
      const b = yield* Effect.fork(q.serialize(7)(r.task(3, 7, 1000)))
      yield* settle([h, a, b])
      expect(r.order(7)).toEqual([1, 2, 3, 4])
      expect(r.sameKeyOverlap).toBe(false)
    }))

  it.scoped("a failed or dead task does not stall its key", () =>
    Effect.gen(function*() {
      const q = yield* make(2)
      const r = recorder()
      const f1 = yield* Effect.fork(q.serialize(5)(r.task(1, 5, 500, "fail")))
      const f2 = yield* Effect.fork(q.serialize(5)(r.task(2, 5, 500, "die")))
      const f3 = yield* Effect.fork(q.serialize(5)(r.task(3, 5, 500)))
      yield* settle([f1, f2, f3])
      expect(yield* Fiber.await(f1)).toEqual(Exit.fail(new TaskFailed({ id: 1 })))
      expect(Exit.isFailure(yield* Fiber.await(f2))).toBe(true)
      expect(yield* Fiber.join(f3)).toBe(3)
      expect(r.order(5)).toEqual([1, 2, 3])
      expect(yield* q.stats).toEqual({ activeKeys: 0, waiting: 0 })
    }))

  it.scoped("an interrupted running task hands its key to the next at once", () =>
    Effect.gen(function*() {
      const q = yield* make(2)
      const r = recorder()
      const f1 = yield* Effect.fork(q.serialize(5)(r.task(1, 5, 60_000)))
      const f2 = yield* Effect.fork(q.serialize(5)(r.task(2, 5, 1000)))
      yield* TestClock.adjust("1 second")
      expect(r.order(5)).toEqual([1])
      yield* Fiber.interrupt(f1)
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(f2)).toBe(2)
      expect(r.order(5)).toEqual([1, 2])
    }))

  it.scoped("a waiter interrupted before its turn never runs and does not break the chain", () =>
    Effect.gen(function*() {
      const q = yield* make(2)
      const r = recorder()
      const a = yield* Effect.fork(q.serialize(9)(r.task(1, 9, 1000)))
      const b = yield* Effect.fork(q.serialize(9)(r.task(2, 9, 1000)))
      const c = yield* Effect.fork(q.serialize(9)(r.task(3, 9, 1000)))
      const d = yield* Effect.fork(q.serialize(9)(r.task(4, 9, 1000)))
      yield* TestClock.adjust("100 millis")
      expect(yield* q.stats).toEqual({ activeKeys: 1, waiting: 3 })
      yield* Fiber.interrupt(b)
      yield* Fiber.interrupt(d)
      expect(yield* q.stats).toEqual({ activeKeys: 1, waiting: 1 })
      yield* settle([a, c])
      expect(r.order(9)).toEqual([1, 3])
      expect(yield* q.stats).toEqual({ activeKeys: 0, waiting: 0 })
    }))

  it.scoped("a waiter interrupted in the instant its turn is handed over passes the key on", () =>
    Effect.gen(function*() {
      const q = yield* make(2)
      const r = recorder()
      const later: { b?: Fiber.RuntimeFiber<number, TaskFailed> } = {}
      // A's last act: signal B's interruption; A's release then hands B the key, but B's
      // mailbox already holds the interrupt, so B sees it before its turn
      const a = yield* Effect.fork(q.serialize(3)(Effect.zipRight(
        Effect.sleep("1 second"),
        Effect.sync(() => later.b?.unsafeInterruptAsFork(FiberId.none))
      )))
      const b = yield* Effect.fork(q.serialize(3)(r.task(2, 3, 1000)))
      later.b = b
      const c = yield* Effect.fork(q.serialize(3)(r.task(3, 3, 1000)))
      yield* settle([a, b, c])
      expect(Exit.isInterrupted(yield* Fiber.await(b))).toBe(true)
      expect(r.order(3)).toEqual([3])
      expect(yield* q.stats).toEqual({ activeKeys: 0, waiting: 0 })
    }))

  it.scoped("a waiter interrupted while waiting for a global slot releases its key", () =>
    Effect.gen(function*() {
      const q = yield* make(1)
      const r = recorder()
      const other = yield* Effect.fork(q.serialize(1)(r.task(0, 1, 5000)))
      const b = yield* Effect.fork(q.serialize(2)(r.task(1, 2, 1000))) // holds key 2, no global slot yet
      const c = yield* Effect.fork(q.serialize(2)(r.task(2, 2, 1000)))
      yield* TestClock.adjust("100 millis")
      yield* Fiber.interrupt(b)
      yield* settle([other, c])
      expect(r.order(2)).toEqual([2])
      expect(r.maxRunning).toBe(1)
      expect(yield* q.stats).toEqual({ activeKeys: 0, waiting: 0 })
    }))

  it.effect("GuestQueue.layer provides serialize; after its scope closes, new submissions are interrupted", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const ctx = yield* Layer.buildWithScope(GuestQueue.layer(2), scope)
      const queue = Context.get(ctx, GuestQueue)
      expect(yield* queue.serialize(1)(Effect.succeed("ran"))).toBe("ran")
      yield* Scope.close(scope, Exit.void)
      const exit = yield* Effect.exit(queue.serialize(1)(Effect.succeed("late")))
      expect(Exit.isInterrupted(exit)).toBe(true)
    }))

  it.scoped("a cap below 1 is a defect", () =>
    Effect.gen(function*() {
      expect(Exit.isFailure(yield* Effect.exit(make(0)))).toBe(true)
      expect(Exit.isFailure(yield* Effect.exit(make(1.5)))).toBe(true)
    }))

  // -------------------------------------------------------------------------------------------

  type Op = { readonly key: QueueKey; readonly ms: number; readonly outcome: "ok" | "fail" | "die"; readonly interruptAt: number | null }
  const opArb: fc.Arbitrary<Op> = fc.record({
    key: fc.constantFrom<QueueKey>(101, 102, 103, "host"),
    ms: fc.integer({ min: 0, max: 30 }).map((n) => n * 100),
    outcome: fc.constantFrom("ok", "ok", "ok", "fail", "die"),
    interruptAt: fc.option(fc.integer({ min: 0, max: 40 }).map((n) => n * 100), { nil: null, freq: 4 })
  })

  it.scoped.prop(
    "random op streams: per-key submit order, no same-key overlap, cap respected, each task runs once",
    { ops: fc.array(opArb, { minLength: 1, maxLength: 16 }), cap: fc.integer({ min: 1, max: 4 }) },
    ({ ops, cap }) =>
      Effect.gen(function*() {
        const q = yield* make(cap)
        const r = recorder()
        const submitted: Array<number> = []
        const fibers: Array<Fiber.RuntimeFiber<number, TaskFailed>> = []
        for (const [id, op] of ops.entries()) {
          fibers.push(yield* Effect.fork(Effect.suspend(() => {
            submitted.push(id)
            return q.serialize(op.key)(r.task(id, op.key, op.ms, op.outcome))
          })))
        }
        const interrupters = yield* Effect.forEach(
          ops.flatMap((op, id) => (op.interruptAt === null ? [] : [[id, op.interruptAt] as const])),
          ([id, at]) => Effect.fork(Effect.zipRight(Effect.sleep(at), Fiber.interrupt(fibers[id]!)))
        )
        yield* settle([...fibers, ...interrupters])
        const exits = yield* Effect.forEach(fibers, Fiber.await)

        expect(r.sameKeyOverlap).toBe(false)
        expect(r.maxRunning).toBeLessThanOrEqual(cap)
        for (const key of new Set(ops.map((o) => o.key))) {
          const order = r.order(key)
          const inSubmitOrder = submitted.filter((id) => order.includes(id))
          expect(order).toEqual(inSubmitOrder)
        }
        for (const [id, op] of ops.entries()) {
          const runs = r.started.filter((s) => s.id === id).length
          const exit = exits[id]!
          if (Exit.isInterrupted(exit)) {
            expect(op.interruptAt).not.toBeNull()
            expect(runs).toBeLessThanOrEqual(1)
          } else {
            expect(runs).toBe(1)
            expect(r.ended.filter((e) => e === id)).toHaveLength(1)
            if (op.outcome === "ok") expect(exit).toEqual(Exit.succeed(id))
            if (op.outcome === "fail") expect(exit).toEqual(Exit.fail(new TaskFailed({ id })))
            if (op.outcome === "die") expect(Exit.isFailure(exit) && !Exit.isInterrupted(exit)).toBe(true)
          }
        }
        expect(yield* q.stats).toEqual({ activeKeys: 0, waiting: 0 })
      }),
    { fastCheck: { numRuns: 75 } }
  )
})

describe("GuestQueue.whenIdle (journal recovery beside the data-protection fibers)", () => {
  it.scoped("runs only while no key is held, and holds back submissions until it ends", () =>
    Effect.gen(function*() {
      const q = yield* make(4)
      const log: Array<string> = []
      // idle: it runs
      expect(yield* q.whenIdle(Effect.sync(() => log.push("recover 1")))).toEqual(Option.some(1))

      // a task holds key 101: nothing runs, None
      const busy = yield* Effect.fork(q.serialize(101)(Effect.zipRight(Effect.sleep("10 seconds"), Effect.sync(() => log.push("task 101 done")))))
      yield* Effect.yieldNow()
      expect(yield* q.whenIdle(Effect.sync(() => log.push("recover 2")))).toEqual(Option.none())
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.join(busy)

      // idle again: recovery runs for 5 s; a submission meanwhile waits for it
      const recovering = yield* Effect.fork(q.whenIdle(Effect.zipRight(Effect.sleep("5 seconds"), Effect.sync(() => log.push("recover 3")))))
      yield* Effect.yieldNow()
      const late = yield* Effect.fork(q.serialize(102)(Effect.sync(() => log.push("task 102"))))
      yield* Effect.yieldNow()
      yield* TestClock.adjust("1 second")
      expect(log).not.toContain("task 102")
      yield* TestClock.adjust("4 seconds")
      yield* Fiber.join(recovering)
      yield* Fiber.join(late)
      expect(log).toEqual(["recover 1", "task 101 done", "recover 3", "task 102"])
      // and a waiter interrupted while held back leaves nothing behind
      const gate = yield* Effect.fork(q.whenIdle(Effect.sleep("5 seconds")))
      yield* Effect.yieldNow()
      const waiter = yield* Effect.fork(q.serialize(103)(Effect.sync(() => log.push("task 103"))))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(waiter)
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.join(gate)
      expect(yield* q.stats).toEqual({ activeKeys: 0, waiting: 0 })
      expect(log).not.toContain("task 103")
    }))
})
