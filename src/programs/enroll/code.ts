/**
 * The recovery code R with the person at the box (issue 13, SPEC §13): shown once, typed back, or
 * typed in to unwrap the escrowed key. R lives only in memory, Redacted: it is never stored,
 * logged, journaled, or put in an error or a report. What is said about a wrong code names the
 * wrong word's position, never a word of the code.
 */
import { Effect, Option, Redacted } from "effect"
import { type KeyFileError, unwrapKey } from "../escrow/keyFile.js"
import { checkRecoveryCode, formatForPaper, nearbyCodes } from "../escrow/recoveryCode.js"
import type { KeyFingerprint } from "../../schema/escrow.js"
import { EnrollFailed, EnrollIO } from "./ports.js"

/** How many times the person may type the code back before enrollment stops (nothing uploaded). */
export const TYPE_BACK_TRIES = 3
/** Each nearby code costs one scrypt (~0.2 s, 64 MiB): at most this many are tried. */
export const NEARBY_TRIES = 24

export const LOSS_STATEMENT =
  "Write this recovery code on paper now and keep it somewhere safe, away from this box.\n" +
  "It is the only way to read the offsite backups if this box is lost: felhom never sees it\n" +
  "and cannot recover it.\n" +
  "Losing BOTH this code and this box makes the offsite backups unrecoverable by anyone."

const words = (code: string) => code.split(" ")

/** Which positions of a checksum-valid typed code differ from R (positions only: no word). */
const differing = (typed: string, code: string): ReadonlyArray<number> => {
  const a = words(typed)
  const b = words(code)
  return a.flatMap((w, i) => (w === b[i] ? [] : [i + 1]))
}

const positionsText = (ps: ReadonlyArray<number>) =>
  ps.length === 1 ? `word ${ps[0]} is` : `words ${ps.slice(0, -1).join(", ")} and ${ps[ps.length - 1]} are`

/**
 * Shows R once with the loss statement and asks the person to type it back (4-letter prefixes,
 * any case and spacing). After TYPE_BACK_TRIES wrong answers, or the end of input, it fails and
 * the caller uploads nothing.
 */
export const showAndConfirm = (code: Redacted.Redacted<string>, step: string) =>
  Effect.gen(function*() {
    const io = yield* EnrollIO
    yield* io.say(`\n${LOSS_STATEMENT}\n`)
    yield* io.showSecret(`RECOVERY CODE (shown once):\n\n${formatForPaper(code)}`)
    yield* io.say("Type the code back to confirm you have it (the first four letters of each word are enough).")
    for (let attempt = 1; attempt <= TYPE_BACK_TRIES; attempt++) {
      const line = yield* io.secretLine(`recovery code (${attempt}/${TYPE_BACK_TRIES}): `)
      if (Option.isNone(line)) break
      const check = checkRecoveryCode(line.value)
      if (check._tag === "Problem") {
        yield* io.say(`not accepted: ${check.message}`)
        continue
      }
      const typed = Redacted.value(check.canonical)
      if (typed === Redacted.value(code)) {
        yield* io.forgetSecret
        yield* io.say("recovery code confirmed.")
        return
      }
      const diff = differing(typed, Redacted.value(code))
      yield* io.say(`not accepted: ${positionsText(diff)} not what was shown`)
    }
    return yield* new EnrollFailed({
      step,
      message: `the recovery code was not typed back correctly (${TYPE_BACK_TRIES} tries or the end of input): nothing was uploaded; ` +
        "run the command again for a new code"
    })
  })

/** The person's code unwrapped the blob: K, its fingerprint (checked), and the canonical code. */
export interface Unwrapped {
  readonly key: Redacted.Redacted<Uint8Array>
  readonly fingerprint: KeyFingerprint
}

/**
 * Asks for R (no echo; a stdin line otherwise) and unwraps `blob` with it, until it unwraps or the
 * input ends. A checksum problem names the word; a checksum-valid code that does not unwrap is
 * checked against its near neighbours, and the one that unwraps names the wrong word. A wrong
 * code changes nothing and costs nothing: ask again. The unwrapped key's fingerprint must be
 * `expected` (the hub's record of it), or nothing is returned.
 */
export const askAndUnwrap = (blob: string, expected: KeyFingerprint, step: string) =>
  Effect.gen(function*() {
    const io = yield* EnrollIO
    const unwrap = (code: Redacted.Redacted<string>) => Effect.either(unwrapKey(blob, code))
    for (;;) {
      const line = yield* io.secretLine("recovery code: ")
      if (Option.isNone(line)) {
        return yield* new EnrollFailed({
          step,
          message: "no correct recovery code was given: nothing was installed or restored; run the command again to retry (a wrong code counts against nothing)"
        })
      }
      const check = checkRecoveryCode(line.value)
      if (check._tag === "Problem") {
        yield* io.say(`not accepted: ${check.message}`)
        continue
      }
      const r = yield* unwrap(check.canonical)
      if (r._tag === "Right") {
        if (r.right.fingerprint !== expected) {
          return yield* new EnrollFailed({
            step,
            message: `the escrowed key unwraps to fingerprint ${r.right.fingerprint}, but the hub records ${expected}: refusing it (nothing installed)`
          })
        }
        return { key: r.right.key, fingerprint: r.right.fingerprint } satisfies Unwrapped
      }
      if ((r.left as KeyFileError).reason !== "WrongPassphrase") {
        return yield* new EnrollFailed({ step, message: `the escrowed key file cannot be used: ${r.left.message}` })
      }
      let named: number | undefined
      for (const near of nearbyCodes(line.value).slice(0, NEARBY_TRIES)) {
        const n = yield* unwrap(near.code)
        if (n._tag === "Right") {
          named = near.position
          break
        }
      }
      yield* io.say(
        named === undefined
          ? "not accepted: this code does not unwrap the escrowed key (check every word and their order); try again"
          : `not accepted: word ${named} is wrong (a near word unwraps the key); correct it and type the code again`
      )
    }
  })
