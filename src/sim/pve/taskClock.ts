/**
 * Task time without ties. On the simulator's Clock (TestClock in tests) a task's timed step and a
 * client's poll can wake at the same instant, and the poll may be served first and see a task
 * that has just ended as still running. Real PVE has no such tie: a worker ends at some instant,
 * and a read after it sees it ended. So every timed task step is registered with its due time,
 * and a request served at or after that time first waits until the step has passed. The task
 * fiber marks it passed right as its sleep ends and then runs on synchronously (to its next
 * step, a lock it waits for, or its end) before the waiting request is resumed.
 */
import { Deferred, Duration, Effect } from "effect"

interface DueStep {
  readonly dueMs: number
  readonly passed: Deferred.Deferred<void>
}

const stepsOf = new WeakMap<object, Set<DueStep>>()

const steps = (owner: object): Set<DueStep> => {
  let s = stepsOf.get(owner)
  if (s === undefined) {
    s = new Set()
    stepsOf.set(owner, s)
  }
  return s
}

/** A task's timed step of `ms` (a non-positive step only yields to the clock, as before). */
export const taskSleep = (owner: object, ms: number): Effect.Effect<void> =>
  ms <= 0
    ? Effect.sleep(Duration.zero)
    : Effect.clockWith((clock) =>
      Effect.gen(function*() {
        const step: DueStep = { dueMs: clock.unsafeCurrentTimeMillis() + ms, passed: yield* Deferred.make<void>() }
        const pending = steps(owner)
        pending.add(step)
        yield* Effect.sleep(Duration.millis(ms)).pipe(
          Effect.ensuring(Effect.suspend(() => {
            pending.delete(step)
            return Deferred.succeed(step.passed, undefined)
          }))
        )
      })
    )

/** Waits until every task step due at or before `nowMs` has passed (see the module comment). */
export const awaitDueSteps = (owner: object, nowMs: number): Effect.Effect<void> =>
  Effect.suspend(() => {
    const s = stepsOf.get(owner)
    if (s === undefined || s.size === 0) return Effect.void
    const due = [...s].filter((step) => step.dueMs <= nowMs)
    return due.length === 0 ? Effect.void : Effect.forEach(due, (step) => Deferred.await(step.passed), { discard: true })
  })
