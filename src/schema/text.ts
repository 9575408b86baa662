/**
 * Text helpers for error messages, shared by every client that turns remote text into errors
 * (Proxmox, Hub) and by config decoding: bounded single-line excerpts, Schema issues without the
 * offending input, and the one secret scrubber.
 *
 * The scrubber is the transport-boundary rule of SPEC §17: a remote peer (PVE, a proxy in front
 * of it, a hub) may echo our request headers back in any text it returns, so every such text is
 * scrubbed of the credential before it becomes part of an error, a log line, a journal row or a
 * job result.
 */
import { ParseResult } from "effect"

/** Collapses all whitespace (newlines included) to single spaces. */
export const oneLine = (s: string): string => s.replace(/\s+/g, " ").trim()

/** At most `max` characters, with an ellipsis when cut. */
export const clip = (s: string, max: number): string => (s.length > max ? `${s.slice(0, max)}…` : s)

/** A bounded single-line excerpt of text we did not write (no scrubbing: see `Scrubber.excerpt`). */
export const excerpt = (s: string, max = 300): string => clip(oneLine(s), max)

/**
 * Schema's default messages end in `, actual <input>`: for remote or config input that may be a
 * secret or a whole block. Cuts from `actual` to the end.
 */
export const withoutActual = (message: string): string => message.replace(/,?\s*actual[\s\S]*$/, "").trim()

/**
 * Schema issues as `path: message`, at most `maxIssues` of them. The `actual <input>` part is cut
 * unless `keepActual`: only for input that is scrubbed afterwards (PVE data, see Proxmox.ts).
 */
export const formatIssues = (e: ParseResult.ParseError, maxIssues = 8, maxEach = 160, keepActual = false): string => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(e)
  const lines = issues.slice(0, maxIssues).map((i) => {
    const path = i.path.length === 0 ? "(root)" : i.path.map(String).join(".")
    return `${path}: ${clip(keepActual ? oneLine(i.message) : withoutActual(i.message), maxEach)}`
  })
  if (issues.length > maxIssues) lines.push(`(${issues.length - maxIssues} more)`)
  return lines.join("; ")
}

/** The most specific message in an error's cause chain (undici wraps connector errors). */
export const deepestCauseMessage = (cause: unknown, fallback: string): string => {
  const seen: Array<string> = []
  let c: unknown = cause
  for (let i = 0; i < 5 && c !== undefined && c !== null; i++) {
    if (c instanceof Error) {
      seen.push(c.message)
      c = (c as { cause?: unknown }).cause
    } else {
      seen.push(String(c))
      break
    }
  }
  return seen.filter((m) => m.length > 0).pop() ?? fallback
}

// ---------------------------------------------------------------------------------------------
// Scrubbing secrets out of remote text

export const REDACTED = "<redacted>"

/**
 * Runs of at least this many characters of a secret (or of one of its encoded forms) are
 * scrubbed too: a peer may echo a truncated or split header. Shorter runs occur by chance in
 * ordinary text (a hex UUID secret shares 3-character runs with any hex digest) and give an
 * attacker next to nothing.
 */
export const FRAGMENT_MIN = 8
const CHUNK = Math.ceil(FRAGMENT_MIN / 2)

/** Lower-cases ASCII letters only, so indices in the result are indices in the input. */
const asciiLower = (s: string): string => s.replace(/[A-Z]+/g, (m) => m.toLowerCase())

/** The secret as it may appear in remote text: raw, JSON-escaped (once, twice), URL-encoded (once, twice, form style). */
export const encodedForms = (secret: string): ReadonlyArray<string> => {
  const json = JSON.stringify(secret).slice(1, -1)
  const url = encodeURIComponent(secret)
  return [...new Set([
    secret,
    json,
    JSON.stringify(json).slice(1, -1),
    url,
    encodeURIComponent(url),
    new URLSearchParams({ s: secret }).toString().slice(2)
  ])].filter((f) => f.length > 0)
}

export interface Scrubber {
  /**
   * Replaces every occurrence of a secret, in any encoded form, ASCII case-insensitively, and
   * every run of ≥ FRAGMENT_MIN of its characters, with `<redacted>`. Work is linear in the text.
   */
  readonly scrub: (text: string) => string
  /**
   * A scrubbed, single-line excerpt of at most `max` characters. Reads only a bounded head of
   * `text` (so a 4 MiB body costs the same as a short one); a secret cut at that head's end
   * leaves fewer than FRAGMENT_MIN of its characters, which `scrub` counts as chance.
   */
  readonly excerpt: (text: string, max?: number) => string
}

/** A scrubber for these secrets (empty strings are ignored). */
export const makeScrubber = (secrets: ReadonlyArray<string>): Scrubber => {
  const forms = [...new Set(secrets.filter((s) => s.length > 0).flatMap(encodedForms).map(asciiLower))]
  // Every FRAGMENT_MIN-character window of a form, and the form cut into aligned CHUNK-character
  // pieces. Any run of ≥ 2·CHUNK−1 (≤ FRAGMENT_MIN) characters of a form contains a whole aligned
  // piece, so a native indexOf per piece finds every place a fragment can start; only there are
  // the windows around it looked up. Text without the secret costs one fast scan per piece.
  const grams = new Set<string>()
  const pieces = new Set<string>()
  const short: Array<string> = []
  let longest = 0
  for (const f of forms) {
    longest = Math.max(longest, f.length)
    if (f.length < FRAGMENT_MIN) {
      short.push(f)
      continue
    }
    for (let i = 0; i + FRAGMENT_MIN <= f.length; i++) grams.add(f.slice(i, i + FRAGMENT_MIN))
    for (let i = 0; i + CHUNK <= f.length; i += CHUNK) pieces.add(f.slice(i, i + CHUNK))
  }

  const scrub = (text: string): string => {
    if (forms.length === 0 || text.length === 0) return text
    const lower = asciiLower(text)
    // Allocated on the first hit only: most texts contain no secret at all.
    let marked: Uint8Array | null = null
    // Every run of ≥ FRAGMENT_MIN secret characters is covered by its FRAGMENT_MIN-windows, so
    // marking each window that is a gram marks the whole run.
    for (const piece of pieces) {
      for (let at = lower.indexOf(piece); at !== -1; at = lower.indexOf(piece, at + 1)) {
        const last = Math.min(at, lower.length - FRAGMENT_MIN)
        for (let i = Math.max(0, at + CHUNK - FRAGMENT_MIN); i <= last; i++) {
          if (grams.has(lower.slice(i, i + FRAGMENT_MIN))) {
            marked ??= new Uint8Array(text.length)
            marked.fill(1, i, i + FRAGMENT_MIN)
          }
        }
      }
    }
    for (const f of short) {
      for (let at = lower.indexOf(f); at !== -1; at = lower.indexOf(f, at + f.length)) {
        marked ??= new Uint8Array(text.length)
        marked.fill(1, at, at + f.length)
      }
    }
    if (marked === null) return text
    let out = ""
    let from = 0
    let i = 0
    while (i < text.length) {
      if (marked[i] !== 1) {
        i++
        continue
      }
      out += text.slice(from, i) + REDACTED
      while (i < text.length && marked[i] === 1) i++
      from = i
    }
    return out + text.slice(from)
  }

  const excerptOf = (text: string, max = 300): string =>
    clip(oneLine(scrub(text.slice(0, 2 * max + 4 * longest + 64))), max)

  return { scrub, excerpt: excerptOf }
}
