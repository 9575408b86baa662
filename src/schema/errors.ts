/** Errors shared across services. Service-specific errors live beside their schema. */
import { Data } from "effect"

/** Bad or missing configuration. `key` is the dotted path (or env var) at fault. */
export class ConfigError extends Data.TaggedError("ConfigError")<{
  readonly key: string
  readonly message: string
}> {}
