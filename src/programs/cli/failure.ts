/**
 * The CLI's one failure shape: a one-line reason and the exit code it means (0 done, 1 an
 * operation failed or is unhealthy, 2 usage or configuration, 3 a bug, 4 refused until an
 * operator signs it). Kept free of any heavy import: main.ts loads it eagerly, every command
 * group lazily.
 */
import { Data } from "effect"

/** A failure the CLI reports as one line, `felhom-agent: <message>`, with a meaningful exit code. */
export class CliFailure extends Data.TaggedError("CliFailure")<{ readonly code: number; readonly message: string }> {}

/** Any tagged error as a CliFailure: configuration errors are exit 2, everything else exit 1. */
export const toCliFailure = (e: { readonly _tag: string; readonly message: string }): CliFailure =>
  e._tag === "CliFailure"
    ? (e as CliFailure)
    : new CliFailure({ code: e._tag === "ConfigError" ? 2 : 1, message: `${e._tag}: ${e.message}` })

/** Exit code of an operation refused for want of an operator signature (`recover` prints how to make one). */
export const NEEDS_SIGNATURE = 4

/** A usage error (exit 2). */
export const usage = (message: string): CliFailure => new CliFailure({ code: 2, message })
