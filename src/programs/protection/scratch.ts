/**
 * What the self-restore-test needs from the agent config (issue 10): the vmid range reserved for
 * scratch guests and the zone its schedules run in. Its own small service, derived from
 * AgentConfig in the daemon's root, so the gate can check the range without the whole config and
 * tests can provide it directly.
 */
import { Context, Effect, Either, Layer } from "effect"
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
