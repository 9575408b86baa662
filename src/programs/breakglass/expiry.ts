/**
 * The break-glass expiry fiber (issue 14): the agent's side of "auto-expires".
 *
 * Each check (under the service's lock): read the unit's state, then the open sessions (in this
 * order: an enable records its row before it starts the unit, so a unit seen active was recorded
 * before this read); end every session whose `until` has passed on the wall clock ("expired") or,
 * when a newer desired state withdrew the customer's consent, every open one ("consent_withdrawn");
 * and stop the unit when it runs with no open session at all (a crash, or someone started it by
 * hand: an open door nobody signed for). The first check runs at once, so a restart after an
 * expiry closes the door before anything else.
 *
 * Between checks it sleeps until the earliest open `until`, but never longer than
 * break_glass.check_interval_seconds, and re-reads the wall clock and the store each time: a
 * clock jump forward is caught within one interval. A jump backward would keep the session open
 * longer by the agent's reckoning; the unit's own RuntimeMaxSec (systemd's monotonic clock) is
 * the backstop for that and for a dead agent. A stop that fails leaves the session open, noted on
 * its row, and is retried every interval.
 */
import { Clock, Duration, Effect, Either, Option } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import { endSession } from "./enable.js"
import { BreakGlass } from "./service.js"
import type { EndReason } from "./store.js"

/** One check; returns the `until` of every session still open. Never fails on a unit error. */
export const checkBreakGlass = Effect.gen(function*() {
  const bg = yield* BreakGlass
  return yield* bg.exclusive(Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const unit = yield* Effect.either(bg.unit.state)
    const open = yield* bg.store.open
    const now = yield* Clock.currentTimeMillis
    const consent = yield* bg.consent
    const remaining: Array<number> = []
    for (const s of open) {
      const why: EndReason | null = s.untilMs <= now
        ? "expired"
        : Option.isSome(consent) && !consent.value
        ? "consent_withdrawn"
        : null
      if (why === null) {
        remaining.push(s.untilMs)
        continue
      }
      const ended = yield* Effect.either(endSession(bg, s, why, "break-glass"))
      if (Either.isLeft(ended)) {
        yield* Effect.logWarning(`break-glass session ${s.id} should have ended (${why}) but stays open: ${ended.left.message}`)
        remaining.push(s.untilMs)
      }
    }
    if (Either.isLeft(unit)) {
      yield* Effect.logWarning(`break-glass unit state unknown: ${unit.left.message}`)
    } else if (open.length === 0 && unit.right !== "inactive" && unit.right !== "failed") {
      const stopped = yield* Effect.either(bg.unit.stop)
      yield* auditLog.audit({
        actor: "break-glass",
        action: "break-glass-stop",
        target: null,
        decision: Either.isRight(stopped) ? "stopped:no_session" : "stop_failed:no_session",
        detail: { unit_state: unit.right, ...(Either.isLeft(stopped) ? { message: stopped.left.message } : {}) }
      })
      if (Either.isLeft(stopped)) yield* Effect.logWarning(`break-glass unit runs without a session and could not be stopped: ${stopped.left.message}`)
      else yield* Effect.logWarning(`break-glass unit was ${unit.right} without an open session: stopped`)
    }
    return remaining as ReadonlyArray<number>
  }))
})

/** How long to sleep after a check: until the earliest open `until`, at most one interval. */
export const nextWait = (remaining: ReadonlyArray<number>, now: number, intervalMs: number): number => {
  const future = remaining.filter((u) => u > now)
  // an overdue session (its stop failed) is retried on the interval, never in a tight loop
  return future.length === 0 ? intervalMs : Math.min(Math.min(...future) - now, intervalMs)
}

/** The fiber: checks forever; a failed check (the state store) is logged and retried next interval. */
export const breakGlassExpiry = Effect.gen(function*() {
  const bg = yield* BreakGlass
  yield* Effect.logInfo(`break-glass expiry watch started (every ${bg.checkIntervalMs / 1000} s at most)`)
  for (;;) {
    const remaining = yield* checkBreakGlass.pipe(
      Effect.catchAllCause((cause) => Effect.as(Effect.logWarning("break-glass check failed", cause), [] as ReadonlyArray<number>))
    )
    const now = yield* Clock.currentTimeMillis
    yield* Effect.sleep(Duration.millis(nextWait(remaining, now, bg.checkIntervalMs)))
  }
})
