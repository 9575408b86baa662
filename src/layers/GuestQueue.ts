/**
 * GuestQueue: the one per-guest serializer every mutation goes through (SPEC §8).
 *
 * - Same key: strictly serial, in submit order. A Semaphore(1) per key would not do: it wakes
 *   waiters from a scheduled task, so a fiber that releases and re-submits at once can jump the
 *   queue. Each key instead has an explicit FIFO of waiters and the lock is handed to the head.
 * - Different keys: in parallel, under a global cap (`maxConcurrent` tasks running at once), so
 *   the PVE host is not flooded. A task holds its key while it waits for a global slot.
 * - A task that fails, dies or is interrupted releases its key to the next waiter. A waiter
 *   interrupted before its turn leaves the queue (or, if the lock was handed to it in that
 *   instant, passes it on), so the chain never stalls.
 * - Per-key state exists only while the key has a holder; the last release deletes it.
 *
 * "host" is an ordinary key of its own (host-level mutations, e.g. storage): it does not
 * exclude guest keys.
 *
 * `whenIdle` runs an effect only while no key is held, and holds back every new submission
 * until it ends: journal recovery uses it, because an op in flight in the journal is orphaned
 * (left by a crash or a failed store) only when nothing of ours runs. The hub cycle is no longer
 * the only mutator (the data-protection fibers run their sagas beside it), so "between cycles" no
 * longer means "nothing runs".
 */
import { Context, Deferred, Effect, Exit, FiberId, Layer, Option } from "effect"

export type QueueKey = number | "host"

export interface GuestQueueShape {
  readonly serialize: (key: QueueKey) => <A, E, R>(task: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** `effect` now if no key is held (Some), else nothing (None); submissions wait while it runs. */
  readonly whenIdle: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<Option.Option<A>, E, R>
}

/** What the queue holds right now (tests, diagnostics). */
export interface GuestQueueStats {
  /** Keys with a holder (running or waiting for a global slot). */
  readonly activeKeys: number
  /** Submissions waiting behind a holder, across all keys. */
  readonly waiting: number
}

interface KeyState {
  // FIFO of submissions behind the current holder; the holder itself is not in it
  readonly waiters: Array<Deferred.Deferred<void>>
}

export const make = (maxConcurrent: number) =>
  Effect.gen(function*() {
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) {
      return yield* Effect.dieMessage(`GuestQueue: maxConcurrent must be a positive integer, got ${maxConcurrent}`)
    }
    const global = yield* Effect.makeSemaphore(maxConcurrent)
    const keys = new Map<QueueKey, KeyState>()
    let closed = false
    // set while a whenIdle effect runs: new submissions wait for it
    let exclusive: Deferred.Deferred<void> | null = null

    // All state changes below are synchronous, so each is atomic with respect to other fibers.
    // Ownership of a key is "not in the waiters list any more": release() removes the head and
    // only then completes its Deferred, so an interruption in between cannot lose the lock.

    /** Takes the key now (null) or enqueues and returns the Deferred to wait on. */
    const enqueue = (key: QueueKey): Deferred.Deferred<void> | null => {
      const state = keys.get(key)
      if (state === undefined) {
        keys.set(key, { waiters: [] })
        return null
      }
      const turn = Deferred.unsafeMake<void>(FiberId.none)
      state.waiters.push(turn)
      return turn
    }

    const release = (key: QueueKey): void => {
      const state = keys.get(key)
      if (state === undefined) return
      const next = state.waiters.shift()
      if (next === undefined) keys.delete(key)
      else Deferred.unsafeDone(next, Exit.void)
    }

    /** An interrupted waiter: leave the queue, or pass on a lock handed over in that instant. */
    const abandon = (key: QueueKey, turn: Deferred.Deferred<void>): void => {
      const state = keys.get(key)
      const at = state === undefined ? -1 : state.waiters.indexOf(turn)
      if (state !== undefined && at >= 0) state.waiters.splice(at, 1)
      else release(key)
    }

    const serialize = (key: QueueKey) => <A, E, R>(task: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
      Effect.uninterruptibleMask((restore): Effect.Effect<A, E, R> =>
        Effect.suspend(() => {
          if (closed) return Effect.interrupt
          // behind a whenIdle effect: wait for it, then submit afresh
          if (exclusive !== null) return Effect.zipRight(restore(Deferred.await(exclusive)), serialize(key)(task))
          const turn = enqueue(key)
          const acquired = turn === null
            ? Effect.void
            : restore(Deferred.await(turn)).pipe(Effect.onInterrupt(() => Effect.sync(() => abandon(key, turn))))
          return Effect.zipRight(
            acquired,
            restore(global.withPermits(1)(task)).pipe(Effect.ensuring(Effect.sync(() => release(key))))
          )
        })
      )

    const whenIdle = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<Option.Option<A>, E, R> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.suspend(() => {
          if (closed || keys.size > 0 || exclusive !== null) return Effect.succeed(Option.none<A>())
          const gate = Deferred.unsafeMake<void>(FiberId.none)
          exclusive = gate
          return restore(effect).pipe(
            Effect.map(Option.some),
            Effect.ensuring(Effect.sync(() => {
              exclusive = null
              Deferred.unsafeDone(gate, Exit.void)
            }))
          )
        })
      )

    const stats = Effect.sync((): GuestQueueStats => {
      let waiting = 0
      for (const s of keys.values()) waiting += s.waiters.length
      return { activeKeys: keys.size, waiting }
    })

    // after shutdown no new mutation may start; running ones are interrupted by their owners
    yield* Effect.addFinalizer(() => Effect.sync(() => { closed = true }))

    return { serialize, whenIdle, stats } as const
  })

export class GuestQueue extends Context.Tag("felhom/GuestQueue")<GuestQueue, GuestQueueShape>() {
  /** The serializer for the daemon's lifetime; submissions after its scope closes are interrupted. */
  static readonly layer = (maxConcurrent: number): Layer.Layer<GuestQueue> =>
    Layer.scoped(GuestQueue, Effect.map(make(maxConcurrent), ({ serialize, whenIdle }): GuestQueueShape => ({ serialize, whenIdle })))
}
