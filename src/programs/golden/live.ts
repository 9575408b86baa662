/**
 * The golden services for the daemon's graph (issue 12): the golden store over the state
 * database, the golden half of the privileged runner, and the `golden` block's settings when the
 * config has one. Without a block the settings are absent and `startGolden` (refresh.ts) stays
 * off; the store and the runner cost nothing until used.
 */
import { Effect, Layer } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { GoldenStoreLive } from "../../layers/GoldenStore.js"
import { PrivilegedGoldenLive } from "../../layers/Privileged.js"
import type { ConfigError } from "../../schema/errors.js"
import { GoldenSettingsLive } from "./build.js"

/** GoldenSettings when the config has a `golden` block, nothing otherwise (found with serviceOption). */
export const GoldenSettingsIfConfigured: Layer.Layer<never, ConfigError, AgentConfig> = Layer.unwrapEffect(
  Effect.map(AgentConfig, ({ file }): Layer.Layer<never, ConfigError, AgentConfig> => (file.golden === undefined ? Layer.empty : GoldenSettingsLive))
)

export const goldenDaemonLayer = Layer.mergeAll(
  GoldenStoreLive.pipe(Layer.provide(DatabaseLive)),
  PrivilegedGoldenLive,
  GoldenSettingsIfConfigured
)
