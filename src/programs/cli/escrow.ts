/**
 * `escrow inspect FILE [--json]`: what a PBS key file says about itself, and for a wrapped file
 * whether the recovery code (or passphrase) on stdin really opens it (issue 13). Operators use it
 * to check an escrow blob before they need it.
 *
 * Prints kdf, times, fingerprint and hint; never key bytes, never the code. Every refusal is one
 * line: PBS's own wording for a wrong code, a tampered file or a fingerprint mismatch, the
 * position of the wrong word for a mistyped code.
 */
import { FileSystem } from "@effect/platform"
import { Console, Effect, Either, Redacted } from "effect"
import { inspectKeyFile, type KeyFileError, MAX_KEY_FILE_CHARS, shortFingerprint, unwrapKey } from "../escrow/keyFile.js"
import { checkRecoveryCode, RECOVERY_CODE_WORDS } from "../escrow/recoveryCode.js"
import { CliFailure } from "./failure.js"
import { readStdin } from "./input.js"

/** A recovery code is ~100 characters and a passphrase no novel: more on stdin is a mistake. */
const MAX_SECRET_BYTES = 4096

const failed = (e: KeyFileError) => new CliFailure({ code: 1, message: e.message })

/** The file's text, bounded before it is read whole (FILE may be anything, even a device). */
const readKeyFile = (path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const cannot = (e: { readonly message: string }) => new CliFailure({ code: 2, message: `cannot read ${path}: ${e.message}` })
    const info = yield* Effect.mapError(fs.stat(path), cannot)
    if (info.type !== "File") return yield* new CliFailure({ code: 2, message: `cannot read ${path}: not a regular file` })
    if (Number(info.size) > MAX_KEY_FILE_CHARS * 4) return yield* new CliFailure({ code: 1, message: `not a PBS key file: larger than ${MAX_KEY_FILE_CHARS} characters` })
    const bytes = yield* Effect.mapError(fs.readFile(path), cannot)
    return yield* Effect.try({
      try: () => new TextDecoder("utf-8", { fatal: true }).decode(bytes),
      catch: () => new CliFailure({ code: 1, message: "not a PBS key file: not UTF-8 text" })
    })
  })

/**
 * One line from a terminal with echo off (the code must not stay on screen), or all of a piped
 * stdin. Ctrl-C or Ctrl-D on an empty line gives up.
 */
export const readSecret = (prompt: string): Effect.Effect<Redacted.Redacted<string>, CliFailure> =>
  process.stdin.isTTY === true
    ? Effect.async<Redacted.Redacted<string>, CliFailure>((resume) => {
      const stdin = process.stdin
      let buf = ""
      const finish = (r: Effect.Effect<Redacted.Redacted<string>, CliFailure>) => {
        cleanup()
        process.stderr.write("\n")
        resume(r)
      }
      const onData = (chunk: string) => {
        for (const ch of chunk) {
          if (ch === "\r" || ch === "\n") return finish(Effect.succeed(Redacted.make(buf)))
          if (ch === "\u0003" || (ch === "\u0004" && buf === "")) return finish(Effect.fail(new CliFailure({ code: 1, message: "no recovery code given" })))
          if (ch === "\u007f" || ch === "\b") buf = buf.slice(0, -1)
          else if (ch === "\u0015") buf = "" // Ctrl-U
          else if (ch >= " " && buf.length < MAX_SECRET_BYTES) buf += ch
        }
      }
      const cleanup = () => {
        stdin.removeListener("data", onData)
        stdin.setRawMode(false)
        stdin.pause()
      }
      // echo off before the prompt shows: whatever is typed after it must never reach the screen
      stdin.setEncoding("utf8")
      stdin.setRawMode(true)
      stdin.on("data", onData)
      stdin.resume()
      process.stderr.write(prompt)
      return Effect.sync(cleanup)
    })
    : Effect.flatMap(readStdin, (bytes) =>
      bytes.length > MAX_SECRET_BYTES
        ? Effect.fail(new CliFailure({ code: 2, message: `stdin: more than ${MAX_SECRET_BYTES} bytes is not a recovery code or passphrase` }))
        : Effect.succeed(Redacted.make(new TextDecoder().decode(bytes).replace(/\r?\n$/, ""))))

type Candidate = { readonly passphrase: Redacted.Redacted<string>; readonly codeProblem: string | undefined }

/**
 * Twelve words are a recovery code: normalized (case, spacing, 4-letter prefixes) or refused
 * naming the wrong word. Anything else is a raw PBS passphrase, used as typed. Twelve words that
 * are no valid code may still be a passphrase: tried as typed, the code's problem reported if
 * that fails too.
 */
const interpret = (secret: Redacted.Redacted<string>): Candidate => {
  const text = Redacted.value(secret)
  const words = text.trim().split(/\s+/).filter((w) => w.length > 0)
  if (words.length !== RECOVERY_CODE_WORDS) return { passphrase: secret, codeProblem: undefined }
  const c = checkRecoveryCode(text)
  return c._tag === "Ok" ? { passphrase: c.canonical, codeProblem: undefined } : { passphrase: secret, codeProblem: c.message }
}

export const escrowInspectCommand = (o: { readonly file: string; readonly json: boolean }) =>
  Effect.gen(function*() {
    const text = yield* readKeyFile(o.file)
    const info = yield* Either.mapLeft(inspectKeyFile(text), failed)
    let fingerprint = info.fingerprint
    if (info.kdf !== "none") {
      const secret = yield* readSecret("Recovery code or passphrase: ")
      const cand = interpret(secret)
      const opened = yield* Effect.either(unwrapKey(text, cand.passphrase))
      if (Either.isLeft(opened)) {
        // a mistyped code: say which word, rather than PBS's generic "wrong password"
        if (cand.codeProblem !== undefined && opened.left.reason === "WrongPassphrase") {
          return yield* new CliFailure({ code: 1, message: `recovery code: ${cand.codeProblem}` })
        }
        return yield* failed(opened.left)
      }
      Redacted.value(opened.right.key).fill(0)
      fingerprint = opened.right.fingerprint
    } else {
      // a plain file: inspect already checked the stored fingerprint against the key
      const opened = yield* Effect.mapError(unwrapKey(text, undefined), failed)
      Redacted.value(opened.key).fill(0)
    }
    const out = {
      kdf: info.kdf,
      created: info.created,
      modified: info.modified,
      fingerprint: fingerprint ?? null,
      short_fingerprint: fingerprint === undefined ? null : shortFingerprint(fingerprint),
      hint: info.hint ?? null,
      verified: true
    }
    yield* Console.log(
      o.json
        ? JSON.stringify(out, null, 2)
        : [
          `kdf:               ${out.kdf}`,
          `created:           ${out.created}`,
          `modified:          ${out.modified}`,
          `fingerprint:       ${out.fingerprint}`,
          `short fingerprint: ${out.short_fingerprint}`,
          ...(out.hint === null ? [] : [`hint:              ${out.hint}`]),
          info.kdf === "none" ? "key:               plain (no passphrase), fingerprint checked" : "key:               unwrapped, fingerprint checked"
        ].join("\n")
    )
  })
