/**
 * The recovery code R (issue 13, SPEC §13): 12 BIP39 English words (128-bit entropy + 4-bit
 * checksum), the passphrase the escrowed PBS key file is wrapped under. Its canonical form (full
 * lowercase words, single spaces) is exactly the PBS passphrase, so an operator can also type it
 * into `proxmox-backup-client` by hand.
 *
 * Households copy R off paper, so input is forgiving (any case, any whitespace, 4-letter
 * prefixes) and a mistake is located: an unknown word by position, a checksum failure by the
 * single-word corrections that would fix it. Messages name positions only, never a word of the
 * code (a message can end up in a log; a suggested correction may be the right word).
 */
import * as crypto from "node:crypto"
import { generateMnemonic } from "@scure/bip39"
import { wordlist } from "@scure/bip39/wordlists/english.js"
import { Redacted } from "effect"

/** SHA-256 of the BIP39 English list (words joined by LF, final LF): reference §b; test/recovery-code.test.ts checks it. */
export const WORDLIST_SHA256 = "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"
export const RECOVERY_CODE_WORDS = 12

const WORDS: ReadonlyArray<string> = wordlist
const INDEX = new Map<string, number>(WORDS.map((w, i) => [w, i]))
/** First four letters → word index: unique over the English list (a 3-letter word is its own prefix). */
const PREFIX4 = new Map<string, number>(WORDS.map((w, i) => [w.slice(0, 4), i]))

export type CodeCheck =
  | { readonly _tag: "Ok"; readonly canonical: Redacted.Redacted<string> }
  | {
    readonly _tag: "Problem"
    /** 1-based position of the word that is wrong, when it can be told. */
    readonly position?: number
    /** Positions where a one-word correction would satisfy the checksum (set when several do). */
    readonly candidates?: ReadonlyArray<number>
    readonly message: string
  }

/** A fresh recovery code in canonical form. */
export const generateRecoveryCode = (): Redacted.Redacted<string> => Redacted.make(generateMnemonic(wordlist, 128))

/** The code numbered in three rows of four, for writing down and reading back. */
export const formatForPaper = (code: Redacted.Redacted<string>): string => {
  const words = Redacted.value(code).split(" ")
  const rows: Array<string> = []
  for (let r = 0; r * 4 < words.length; r++) {
    rows.push(
      words.slice(r * 4, r * 4 + 4)
        .map((w, i) => `${String(r * 4 + i + 1).padStart(2, " ")}. ${w.padEnd(8, " ")}`)
        .join("   ")
        .trimEnd()
    )
  }
  return rows.join("\n") + "\n"
}

// --- parsing -----------------------------------------------------------------------------------

/** Longer input is not a mistyped code; refusing it early bounds the correction search. */
const MAX_INPUT_CHARS = 1024
const MAX_TOKEN_CHARS = 16

/** A typed token → word index: the full word, or a prefix of at least four letters of exactly one word. */
const resolve = (token: string): number | undefined => {
  const exact = INDEX.get(token)
  if (exact !== undefined) return exact
  if (token.length < 4 || !/^[a-z]+$/.test(token)) return undefined
  const i = PREFIX4.get(token.slice(0, 4))
  return i !== undefined && WORDS[i]!.startsWith(token) ? i : undefined
}

const tokenize = (input: string): ReadonlyArray<string> => input.toLowerCase().split(/\s+/).filter((t) => t.length > 0)

/** BIP39's checksum over 12 word indexes: the top 4 bits of SHA-256(entropy) follow the 128 entropy bits. */
const checksumOk = (idx: ReadonlyArray<number>): boolean => {
  let bits = 0n
  for (const i of idx) bits = (bits << 11n) | BigInt(i)
  const entropy = Buffer.from((bits >> 4n).toString(16).padStart(32, "0"), "hex")
  return (crypto.createHash("sha256").update(entropy).digest()[0]! >> 4) === Number(bits & 0xfn)
}

const canonical = (idx: ReadonlyArray<number>): string => idx.map((i) => WORDS[i]!).join(" ")

// --- nearness ----------------------------------------------------------------------------------

/**
 * Distance from a typed token to a word: optimal-string-alignment edit distance (substitution,
 * insertion, deletion, adjacent transposition) to the word or to one of its prefixes of at least
 * four letters (the typed token may be a mistyped abbreviation). Stops early past `max`.
 */
const distance = (t: string, w: string, max: number): number => {
  const n = t.length
  // D[i][j]: w's first i letters against t's first j; column n row i is t against w's i-prefix.
  let prev2: Array<number> = []
  let prev: Array<number> = Array.from({ length: n + 1 }, (_, j) => j)
  let prevMin = 0
  let best = w.length === 0 ? n : Infinity
  for (let i = 1; i <= w.length; i++) {
    const cur: Array<number> = [i]
    let rowMin = i
    for (let j = 1; j <= n; j++) {
      let v = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (w[i - 1] === t[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && w[i - 1] === t[j - 2] && w[i - 2] === t[j - 1]) v = Math.min(v, prev2[j - 2]! + 1)
      cur.push(v)
      rowMin = Math.min(rowMin, v)
    }
    if (i === w.length || i >= 4) best = Math.min(best, cur[n]!)
    // Every later cell derives from the last two rows: once both exceed max, nothing gets nearer.
    if (rowMin > max && prevMin > max) break
    prevMin = rowMin
    prev2 = prev
    prev = cur
  }
  return best
}

/** Word indexes other than `current` within `max` of token `t`, nearest first. */
const neighbours = (t: string, current: number | undefined, max: number): ReadonlyArray<{ readonly index: number; readonly d: number }> => {
  const out: Array<{ index: number; d: number }> = []
  for (let i = 0; i < WORDS.length; i++) {
    if (i === current) continue
    const w = WORDS[i]!
    if (w.length + max < t.length) continue // a shorter word (or its prefix) is too far
    const d = distance(t, w, max)
    if (d <= max) out.push({ index: i, d })
  }
  return out.sort((a, b) => a.d - b.d || a.index - b.index)
}

interface Correction {
  readonly position: number // 0-based
  readonly index: number
  readonly d: number
}

/** Single-word corrections within `max` that pass the checksum, at `positions` (0-based). */
const corrections = (tokens: ReadonlyArray<string>, idx: ReadonlyArray<number | undefined>, positions: ReadonlyArray<number>, max: number): ReadonlyArray<Correction> => {
  const out: Array<Correction> = []
  const trial = idx.map((i) => i ?? 0)
  for (const p of positions) {
    for (const { index, d } of neighbours(tokens[p]!, idx[p], max)) {
      trial[p] = index
      if (checksumOk(trial)) out.push({ position: p, index, d })
    }
    trial[p] = idx[p] ?? 0
  }
  return out
}

const listPositions = (ps: ReadonlyArray<number>): string =>
  ps.length === 1 ? `${ps[0]}` : `${ps.slice(0, -1).join(", ")} and ${ps[ps.length - 1]}`

const problem = (message: string, position?: number, candidates?: ReadonlyArray<number>): CodeCheck => ({
  _tag: "Problem",
  message,
  ...(position === undefined ? {} : { position }),
  ...(candidates === undefined ? {} : { candidates })
})

/**
 * Normalizes a typed recovery code, or says what is wrong with it. Case and whitespace are free,
 * each word may be cut to its first four letters. A checksum failure is traced to the word a
 * one- (then two-) letter correction would fix; when several words could be it, all are listed.
 */
export const checkRecoveryCode = (input: string): CodeCheck => {
  if (input.length > MAX_INPUT_CHARS) return problem(`a recovery code has ${RECOVERY_CODE_WORDS} words; this input is far too long`)
  const tokens = tokenize(input)
  if (tokens.length !== RECOVERY_CODE_WORDS) return problem(`a recovery code has ${RECOVERY_CODE_WORDS} words; got ${tokens.length}`)
  const idx = tokens.map((t) => (t.length > MAX_TOKEN_CHARS ? undefined : resolve(t)))
  const unknown = idx.flatMap((i, p) => (i === undefined ? [p + 1] : []))
  if (unknown.length === 1) return problem(`word ${unknown[0]} is not a recovery-code word`, unknown[0])
  if (unknown.length > 1) return problem(`words ${listPositions(unknown)} are not recovery-code words`, unknown[0], unknown)
  const known = idx as ReadonlyArray<number>
  if (checksumOk(known)) return { _tag: "Ok", canonical: Redacted.make(canonical(known)) }
  const fixes2 = corrections(tokens, known, tokens.map((_, p) => p), 2)
  for (const max of [1, 2]) {
    const fixes = fixes2.filter((f) => f.d <= max)
    const positions = [...new Set(fixes.map((f) => f.position + 1))].sort((a, b) => a - b)
    if (positions.length === 1) return problem(`word ${positions[0]} is probably wrong: the code's checksum fails`, positions[0])
    if (positions.length > 1) {
      return problem(`the code's checksum fails: one of words ${listPositions(positions)} is likely wrong`, undefined, positions)
    }
  }
  return problem("the code's checksum fails: check every word, and the order of the words")
}

/**
 * Codes one word away from `input` (edit distance ≤ 2 on that word) that pass the checksum,
 * nearest first: when a checksum-valid code fails to unwrap the key, the caller tries each and
 * the one that works names the wrong word. With one unknown word, only that position varies.
 */
export const nearbyCodes = (input: string): ReadonlyArray<{ readonly position: number; readonly code: Redacted.Redacted<string> }> => {
  if (input.length > MAX_INPUT_CHARS) return []
  const tokens = tokenize(input)
  if (tokens.length !== RECOVERY_CODE_WORDS || tokens.some((t) => t.length > MAX_TOKEN_CHARS)) return []
  const idx = tokens.map(resolve)
  const unknown = idx.flatMap((i, p) => (i === undefined ? [p] : []))
  if (unknown.length > 1) return []
  const positions = unknown.length === 1 ? unknown : tokens.map((_, p) => p)
  return [...corrections(tokens, idx, positions, 2)]
    .sort((a, b) => a.d - b.d || a.position - b.position)
    .map((c) => {
      const trial = idx.map((i) => i ?? 0)
      trial[c.position] = c.index
      return { position: c.position + 1, code: Redacted.make(canonical(trial)) }
    })
}
