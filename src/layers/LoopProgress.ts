/**
 * LoopProgress (issue 14, SPEC §15): whether the hub loop is alive, by its own word. The loop
 * beats at each cycle step; long waits inside a step beat on each poll (the PVE task wait reads
 * this service with `Effect.serviceOption`, so no layer depends on it); the sleep between cycles
 * is declared with `idleUntil`. The loop is stalled when neither a beat nor a declared sleep
 * covers now: `now > max(lastBeat, idleUntil) + stall`. systemd's watchdog is pinged only while
 * it is not stalled (runDaemon), and /health fails its `loop` check.
 *
 * Labels are fixed strings chosen by the code (never PVE or hub text): the stall log quotes the
 * last one.
 */
import { Clock, Context, Duration, Effect, Layer, Option } from "effect"

export interface ProgressSnapshot {
  readonly lastBeatMs: number
  readonly lastLabel: string
  readonly idleUntilMs: number
  readonly stallMs: number
}

export interface LoopProgressShape {
  /** The loop made progress now (Clock time). */
  readonly beat: (label: string) => Effect.Effect<void>
  /** The loop sleeps by design until `ms` (epoch ms); no beat is expected before then. */
  readonly idleUntil: (ms: number) => Effect.Effect<void>
  /** Now is past both the last beat and the declared sleep by more than the stall window. */
  readonly stalled: Effect.Effect<boolean>
  /** Milliseconds since the loop was last covered (0 while covered by a beat or a sleep). */
  readonly silentForMs: Effect.Effect<number>
  readonly snapshot: Effect.Effect<ProgressSnapshot>
}

export class LoopProgress extends Context.Tag("felhom/LoopProgress")<LoopProgress, LoopProgressShape>() {}

export const make = (stallSeconds: number): Effect.Effect<LoopProgressShape> =>
  Effect.gen(function*() {
    const stallMs = stallSeconds * 1000
    // plain mutable fields: every update is one synchronous assignment
    const s = { lastBeatMs: yield* Clock.currentTimeMillis, lastLabel: "start", idleUntilMs: 0 }
    const coveredUntil = () => Math.max(s.lastBeatMs, s.idleUntilMs)
    const shape: LoopProgressShape = {
      beat: (label) =>
        // a beat does not end a declared sleep: other fibers (a backup's task wait) beat too; the
        // loop itself ends its sleep with idleUntil(now) when it wakes
        Effect.map(Clock.currentTimeMillis, (now) => {
          s.lastBeatMs = now
          s.lastLabel = label
        }),
      idleUntil: (ms) => Effect.sync(() => void (s.idleUntilMs = ms)),
      stalled: Effect.map(Clock.currentTimeMillis, (now) => now > coveredUntil() + stallMs),
      silentForMs: Effect.map(Clock.currentTimeMillis, (now) => Math.max(0, now - coveredUntil())),
      snapshot: Effect.sync(() => ({ ...s, stallMs }))
    }
    return shape
  })

export const layer = (stallSeconds: number): Layer.Layer<LoopProgress> => Layer.effect(LoopProgress, make(stallSeconds))

/** Beats the loop's progress if this fiber runs under one (a no-op elsewhere: CLI, tests). */
export const beat = (label: string): Effect.Effect<void> =>
  Effect.flatMap(Effect.serviceOption(LoopProgress), Option.match({ onNone: () => Effect.void, onSome: (p) => p.beat(label) }))

/**
 * A wait bounded by its own timeout (a root helper's child process) counts as progress until that
 * timeout: the loop is covered until now + `bound` and beats now. The watchdog still fires if the
 * bound passes with no further beat (the timeout itself failed to end the wait).
 */
export const coverFor = (label: string, bound: Duration.Duration): Effect.Effect<void> =>
  Effect.flatMap(Effect.serviceOption(LoopProgress), Option.match({
    onNone: () => Effect.void,
    onSome: (p) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.zipRight(p.beat(label), p.idleUntil(now + Duration.toMillis(bound))))
  }))
