/**
 * Reading operator input for the command groups: files and stdin as bytes, and the bounds of
 * numeric options. Every rejection is a one-line usage error (exit 2), never a stack trace or a
 * silently empty answer.
 */
import { FileSystem } from "@effect/platform"
import { Effect } from "effect"
import { CliFailure, usage } from "./failure.js"

/** A file's bytes; an unreadable file is a usage error naming the path. */
export const readBytes = (path: string): Effect.Effect<Uint8Array, CliFailure, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFile(path)).pipe(
    Effect.mapError((e) => new CliFailure({ code: 2, message: `cannot read ${path}: ${e.message}` }))
  )

/** All of stdin (an unreadable stdin reads as what arrived before the error). */
export const readStdin = Effect.async<Uint8Array>((resume) => {
  const chunks: Array<Buffer> = []
  process.stdin.on("data", (c: Buffer) => chunks.push(c))
  process.stdin.on("end", () => resume(Effect.succeed(Buffer.concat(chunks))))
  process.stdin.on("error", () => resume(Effect.succeed(Buffer.concat(chunks))))
})

/** An integer option within [min, max], or a usage error that states the range. */
export const intInRange = (option: string, value: number, min: number, max: number): Effect.Effect<number, CliFailure> =>
  Number.isSafeInteger(value) && value >= min && value <= max
    ? Effect.succeed(value)
    : Effect.fail(usage(`${option} must be an integer from ${min} to ${max} (got ${value})`))

/** A TCP port to bind: 0 (any free port) to 65535. */
export const port = (value: number) => intInRange("--port", value, 0, 65_535)
