/**
 * What the self-restore-test needs from the agent config (issue 10): the vmid range reserved for
 * scratch guests and the zone its schedules run in. Its own small service, derived from
 * AgentConfig in the daemon's root, so the gate can check the range without the whole config and
 * tests can provide it directly.
 */
import { Context, Duration, Effect, Either, Layer, Option, Schedule } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { parseTimeZone, type TimeZone, UTC } from "./calendar.js"

export interface RestoreTestSettingsShape {
  /** The reserved scratch range, inclusive (file.protection.scratch_vmid_min/max). */
  readonly scratchMin: number
  readonly scratchMax: number
  readonly timeZone: TimeZone
  /** How often the restore-test and verify loops look for due work (seconds). */
  readonly passIntervalSeconds: number
}

export class RestoreTestSettings extends Context.Tag("felhom/RestoreTestSettings")<RestoreTestSettings, RestoreTestSettingsShape>() {}

export const inScratchRange = (s: RestoreTestSettingsShape, vmid: number): boolean =>
  Number.isSafeInteger(vmid) && vmid >= s.scratchMin && vmid <= s.scratchMax

/** From the config's protection block (decoded and range-checked there). */
export const RestoreTestSettingsLive: Layer.Layer<RestoreTestSettings, never, AgentConfig> = Layer.effect(
  RestoreTestSettings,
  Effect.map(AgentConfig, ({ file }): RestoreTestSettingsShape => ({
    scratchMin: file.protection.scratch_vmid_min,
    scratchMax: file.protection.scratch_vmid_max,
    // the config already refused a zone Intl does not know; UTC is only the type's fallback
    timeZone: Either.getOrElse(parseTimeZone(file.protection.time_zone), () => UTC),
    passIntervalSeconds: file.protection.pass_interval_seconds
  }))
)

export const restoreTestSettings = (s: RestoreTestSettingsShape): Layer.Layer<RestoreTestSettings> => Layer.succeed(RestoreTestSettings, s)

/**
 * A pass every `pass_interval_seconds` of Clock time over the desired state `current` yields at
 * that moment (None: nothing published, or the daemon may not mutate now: nothing runs). A failing
 * pass is logged as `what` and the loop goes on. The restore-test and verify loops.
 */
export const settingsPassLoop = <D, E, R, E2, R2>(
  what: string,
  current: Effect.Effect<Option.Option<D>, E, R>,
  pass: (desired: D) => Effect.Effect<unknown, E2, R2>
) =>
  Effect.gen(function*() {
    const settings = yield* RestoreTestSettings
    const once = Effect.flatMap(current, Option.match({ onNone: () => Effect.void, onSome: (d) => Effect.asVoid(pass(d)) })).pipe(
      Effect.catchAllCause((cause) => Effect.logWarning(`${what} pass failed`, cause))
    )
    return yield* Effect.repeat(once, Schedule.spaced(Duration.seconds(settings.passIntervalSeconds)))
  })
