/**
 * PBS encryption key files (issue 13, SPEC §13), byte-compatible with `proxmox-backup-client key`
 * (reference/recovery-code-and-pbs-key.md §a): the fingerprint, plain (`kdf: null`) files, files
 * wrapped under a passphrase with scrypt or PBKDF2 + AES-256-GCM, and the text paperkey.
 *
 * Every key file read here may come from a hostile hub (the escrow blob) or a damaged disk, so the
 * parser is strict: bounded size, exact field set and lengths, canonical base64, bounded KDF cost
 * (a hub must not make us allocate gigabytes or spin for minutes). Errors carry PBS's own wording
 * and public facts (fingerprints, the hint), never key bytes or the passphrase.
 */
import * as crypto from "node:crypto"
import { Data, Effect, Either, Redacted } from "effect"
import type { KeyFingerprint } from "../../schema/escrow.js"

export class KeyFileError extends Data.TaggedError("KeyFileError")<{
  /**
   * - Malformed: not a PBS key file we accept (syntax, fields, lengths, KDF parameters).
   * - WrongPassphrase: the GCM tag did not verify (wrong passphrase, or tampered data/iv/salt/params).
   * - FingerprintMismatch: the decrypted key's fingerprint differs from the stored one.
   * - PassphraseTooShort: under 5 bytes (PBS refuses these).
   * - PassphraseRequired: a wrapped file and no passphrase given.
   */
  readonly reason: "Malformed" | "WrongPassphrase" | "FingerprintMismatch" | "PassphraseTooShort" | "PassphraseRequired"
  readonly message: string
}> {}

export type KeyFileKdf = "none" | "scrypt" | "pbkdf2"

export interface KeyFileInfo {
  readonly kdf: KeyFileKdf
  readonly created: string
  readonly modified: string
  /** The stored fingerprint (unverified for a wrapped file; computed and checked for a plain one). */
  readonly fingerprint: KeyFingerprint | undefined
  readonly hint: string | undefined
}

/** Largest key file text accepted (PBS writes about 400 bytes; the hub wire bound is the same). */
export const MAX_KEY_FILE_CHARS = 8192
const MAX_HINT_CHARS = 256
const KEY_BYTES = 32
const SALT_BYTES = 32
const IV_BYTES = 16
const TAG_BYTES = 16
const MIN_PASSPHRASE_BYTES = 5

/** PBS's parameters (KeyConfig::with_key); what we write. */
const SCRYPT = { n: 65536, r: 8, p: 1 } as const
const PBKDF2_ITER = 65535
/**
 * What we accept on read. PBS reads any values, but a hostile file could ask for terabytes of
 * scrypt memory or billions of PBKDF2 rounds: these bounds keep one unwrap under ~1 s and 256 MiB
 * while admitting every file PBS itself writes.
 */
const SCRYPT_MAX_MEM = 256 * 1024 * 1024
const PBKDF2_MAX_ITER = 2_000_000

const malformed = (detail: string) => new KeyFileError({ reason: "Malformed", message: `not a PBS key file: ${detail}` })

// --- fingerprint -------------------------------------------------------------------------------

const FP_PREFIX = crypto.createHash("sha256").update("Proxmox Backup Encryption Key Fingerprint").digest()

const colonHex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(":")

/** PBS's key fingerprint (CryptConfig::fingerprint): public, identifies K without revealing it. */
export const pbsFingerprint = (key: Uint8Array): KeyFingerprint => {
  const idKey = crypto.pbkdf2Sync(key, "_id_key", 10, 32, "sha256")
  return colonHex(crypto.createHash("sha256").update(FP_PREFIX).update(idKey).digest())
}

/** The short form PBS lists (the first 8 bytes). */
export const shortFingerprint = (fp: KeyFingerprint): string => fp.split(":").slice(0, 8).join(":")

/** A fresh random PBS key K. */
export const generatePbsKey = (): Redacted.Redacted<Uint8Array> => Redacted.make(new Uint8Array(crypto.randomBytes(KEY_BYTES)))

// --- writing -----------------------------------------------------------------------------------

/** RFC 3339 as PBS parses it: no fractional seconds (UTC `Z`; PBS writes local offsets, reads both). */
const rfc3339 = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, "Z")

type KdfJson =
  | { readonly Scrypt: { readonly n: number; readonly r: number; readonly p: number; readonly salt: string } }
  | { readonly PBKDF2: { readonly iter: number; readonly salt: string } }

/** Compact JSON in serde's field order (kdf, created, modified, data, fingerprint, hint?). */
const serialize = (f: {
  readonly kdf: KdfJson | null
  readonly created: string
  readonly modified: string
  readonly data: string
  readonly fingerprint: KeyFingerprint | undefined
  readonly hint: string | undefined
}): string =>
  JSON.stringify({
    kdf: f.kdf,
    created: f.created,
    modified: f.modified,
    data: f.data,
    ...(f.fingerprint === undefined ? {} : { fingerprint: f.fingerprint }),
    ...(f.hint === undefined ? {} : { hint: f.hint })
  })

const checkKeyLength = (key: Uint8Array): void => {
  // A programming error, not input: every caller holds a key it generated or unwrapped.
  if (key.length !== KEY_BYTES) throw new RangeError(`a PBS key is ${KEY_BYTES} bytes`)
}

/** A plain (`kdf: null`) key file: what PVE's storage and the live key file hold. */
export const plainKeyFile = (key: Uint8Array, nowMs: number): string => {
  checkKeyLength(key)
  const ts = rfc3339(nowMs)
  return serialize({ kdf: null, created: ts, modified: ts, data: Buffer.from(key).toString("base64"), fingerprint: pbsFingerprint(key), hint: undefined })
}

const passphraseBytes = (passphrase: Redacted.Redacted<string>): Either.Either<Buffer, KeyFileError> => {
  const b = Buffer.from(Redacted.value(passphrase), "utf8")
  return b.length < MIN_PASSPHRASE_BYTES
    ? Either.left(new KeyFileError({ reason: "PassphraseTooShort", message: "Passphrase is too short!" }))
    : Either.right(b)
}

type Kdf =
  | { readonly _tag: "scrypt"; readonly n: number; readonly r: number; readonly p: number; readonly salt: Buffer }
  | { readonly _tag: "pbkdf2"; readonly iter: number; readonly salt: Buffer }

/** The KDF, asynchronously (libuv's threadpool): ~0.2 s of scrypt never blocks the event loop. */
const derive = (kdf: Kdf, pass: Buffer): Effect.Effect<Buffer, KeyFileError> =>
  Effect.async<Buffer, KeyFileError>((resume) => {
    const done = (err: Error | null, k: Buffer) =>
      resume(err === null ? Effect.succeed(k) : Effect.fail(new KeyFileError({ reason: "Malformed", message: `key derivation failed: ${err.message}` })))
    try {
      if (kdf._tag === "scrypt") {
        crypto.scrypt(pass, kdf.salt, KEY_BYTES, { N: kdf.n, r: kdf.r, p: kdf.p, maxmem: SCRYPT_MAX_MEM + 1024 * 1024 }, done)
      } else {
        crypto.pbkdf2(pass, kdf.salt, kdf.iter, KEY_BYTES, "sha256", done)
      }
    } catch (e) {
      // node:crypto validates parameters synchronously; the parser's bounds should make this unreachable.
      resume(Effect.fail(new KeyFileError({ reason: "Malformed", message: `key derivation refused: ${e instanceof Error ? e.message : String(e)}` })))
    }
  })

/**
 * K wrapped under a passphrase as `proxmox-backup-client key create --kdf scrypt|pbkdf2` writes it:
 * fresh salt and IV on every call. `created` keeps an earlier file's creation time (as PBS's
 * change-passphrase does); `modified` is now.
 */
export const wrapKey = (
  key: Uint8Array,
  passphrase: Redacted.Redacted<string>,
  o: { readonly kdf: "scrypt" | "pbkdf2"; readonly nowMs: number; readonly created?: string; readonly hint?: string }
): Effect.Effect<string, KeyFileError> =>
  Effect.gen(function*() {
    if (key.length !== KEY_BYTES) return yield* Effect.dieMessage(`a PBS key is ${KEY_BYTES} bytes`)
    const pass = yield* passphraseBytes(passphrase)
    if (o.hint !== undefined) yield* checkHint(o.hint)
    if (o.created !== undefined && !validTimestamp(o.created)) return yield* malformed("created is not an RFC 3339 time without fractional seconds")
    const salt = crypto.randomBytes(SALT_BYTES)
    const kdf: Kdf = o.kdf === "scrypt" ? { _tag: "scrypt", ...SCRYPT, salt } : { _tag: "pbkdf2", iter: PBKDF2_ITER, salt }
    const derived = yield* derive(kdf, pass)
    const iv = crypto.randomBytes(IV_BYTES)
    const cipher = crypto.createCipheriv("aes-256-gcm", derived, iv)
    const ct = Buffer.concat([cipher.update(key), cipher.final()])
    const tag = cipher.getAuthTag()
    derived.fill(0)
    const now = rfc3339(o.nowMs)
    const saltB64 = salt.toString("base64")
    return serialize({
      kdf: kdf._tag === "scrypt" ? { Scrypt: { ...SCRYPT, salt: saltB64 } } : { PBKDF2: { iter: PBKDF2_ITER, salt: saltB64 } },
      created: o.created ?? now,
      modified: now,
      data: Buffer.concat([iv, tag, ct]).toString("base64"),
      fingerprint: pbsFingerprint(key),
      hint: o.hint
    })
  })

// --- reading -----------------------------------------------------------------------------------

interface Parsed {
  readonly kdf: Kdf | undefined
  readonly created: string
  readonly modified: string
  readonly data: Buffer
  readonly fingerprint: KeyFingerprint | undefined
  readonly hint: string | undefined
}

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/
/** Standard padded base64, canonical (unused trailing bits zero): one text per byte string. */
const strictBase64 = (s: unknown, what: string, bytes: number): Either.Either<Buffer, KeyFileError> => {
  if (typeof s !== "string" || s.length > 4 * Math.ceil(bytes / 3) || !B64_RE.test(s)) return Either.left(malformed(`${what} is not ${bytes} bytes of padded base64`))
  const b = Buffer.from(s, "base64")
  return b.length === bytes && b.toString("base64") === s ? Either.right(b) : Either.left(malformed(`${what} is not ${bytes} bytes of padded base64`))
}

// proxmox_time::parse_rfc3339: exactly `YYYY-MM-DDTHH:MM:SSZ` or `...+hh:mm`, no fraction.
const TS_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:Z|[+-](\d{2}):(\d{2}))$/
const validTimestamp = (s: string): boolean => {
  const m = TS_RE.exec(s)
  if (m === null) return false
  const [, y, mo, d, h, mi, se, oh, om] = m.map(Number) as [number, number, number, number, number, number, number, number, number]
  const dim = new Date(Date.UTC(y, mo, 0)).getUTCDate()
  return mo >= 1 && mo <= 12 && d >= 1 && d <= dim && h <= 23 && mi <= 59 && se <= 60 &&
    (m[7] === undefined || (oh <= 23 && om <= 59))
}

const FP_RE = /^[0-9a-f]{2}(?::[0-9a-f]{2}){31}$/
/** PBS reads a fingerprint as hex with optional colons, either case; normalized to PBS's print form. */
const parseFingerprint = (v: unknown): Either.Either<KeyFingerprint | undefined, KeyFileError> => {
  if (v === undefined || v === null) return Either.right(undefined)
  if (typeof v !== "string" || v.length > 95) return Either.left(malformed("fingerprint is not 32 hex bytes"))
  const hex = v.replace(/:/g, "").toLowerCase()
  if (!/^[0-9a-f]{64}$/.test(hex)) return Either.left(malformed("fingerprint is not 32 hex bytes"))
  const fp = hex.match(/../g)!.join(":")
  return FP_RE.test(fp) ? Either.right(fp) : Either.left(malformed("fingerprint is not 32 hex bytes"))
}

// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/
/** A hint is printed to terminals and put in error messages: bounded, no control/bidi characters. */
const checkHint = (h: string): Either.Either<string, KeyFileError> =>
  h.length > MAX_HINT_CHARS || CONTROL_RE.test(h)
    ? Either.left(malformed(`hint must be at most ${MAX_HINT_CHARS} printable characters`))
    : Either.right(h)

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype

const onlyKeys = (o: Record<string, unknown>, allowed: ReadonlyArray<string>, what: string): Either.Either<void, KeyFileError> => {
  const extra = Object.keys(o).find((k) => !allowed.includes(k))
  return extra === undefined ? Either.right(undefined) : Either.left(malformed(`unexpected field in ${what}`))
}

const posInt = (v: unknown, max: number): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 1 && v <= max

const parseKdf = (v: unknown): Either.Either<Kdf | undefined, KeyFileError> =>
  Either.gen(function*() {
    if (v === null) return undefined
    if (!isPlainObject(v)) return yield* Either.left(malformed("kdf is not null, Scrypt or PBKDF2"))
    const names = Object.keys(v)
    if (names.length !== 1) return yield* Either.left(malformed("kdf is not null, Scrypt or PBKDF2"))
    const params = v[names[0]!]
    if (!isPlainObject(params)) return yield* Either.left(malformed("kdf is not null, Scrypt or PBKDF2"))
    if (names[0] === "Scrypt") {
      yield* onlyKeys(params, ["n", "r", "p", "salt"], "Scrypt")
      const { n, r, p } = params
      if (!posInt(n, 2 ** 24) || !posInt(r, 64) || !posInt(p, 16) || n < 2 || (n & (n - 1)) !== 0 || 128 * n * r * p > SCRYPT_MAX_MEM) {
        return yield* Either.left(malformed("Scrypt parameters out of range (n a power of two, at most 256 MiB)"))
      }
      const salt = yield* strictBase64(params.salt, "salt", SALT_BYTES)
      return { _tag: "scrypt", n, r, p, salt } as const
    }
    if (names[0] === "PBKDF2") {
      yield* onlyKeys(params, ["iter", "salt"], "PBKDF2")
      if (!posInt(params.iter, PBKDF2_MAX_ITER)) return yield* Either.left(malformed(`PBKDF2 iter out of range (1..${PBKDF2_MAX_ITER})`))
      const salt = yield* strictBase64(params.salt, "salt", SALT_BYTES)
      return { _tag: "pbkdf2", iter: params.iter, salt } as const
    }
    return yield* Either.left(malformed("kdf is not null, Scrypt or PBKDF2"))
  })

/**
 * Whether valid JSON `text` repeats a key within one object. JSON.parse keeps the last of
 * duplicates where serde (PBS) refuses the file: two readers must never see two different keys.
 */
const hasDuplicateKey = (text: string): boolean => {
  const stack: Array<Set<string> | undefined> = []
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === "{") stack.push(new Set())
    else if (c === "[") stack.push(undefined)
    else if (c === "}" || c === "]") stack.pop()
    else if (c === "\"") {
      let j = i + 1
      while (text[j] !== "\"") j += text[j] === "\\" ? 2 : 1
      const top = stack[stack.length - 1]
      let k = j + 1
      while (k < text.length && /\s/.test(text[k]!)) k++
      if (top !== undefined && text[k] === ":") {
        const key = JSON.parse(text.slice(i, j + 1)) as string
        if (top.has(key)) return true
        top.add(key)
      }
      i = j
    }
  }
  return false
}

const parse = (text: string): Either.Either<Parsed, KeyFileError> =>
  Either.gen(function*() {
    if (typeof text !== "string" || text.length > MAX_KEY_FILE_CHARS) return yield* Either.left(malformed(`larger than ${MAX_KEY_FILE_CHARS} characters`))
    const json = yield* Either.try({ try: (): unknown => JSON.parse(text), catch: () => malformed("not JSON") })
    if (hasDuplicateKey(text)) return yield* Either.left(malformed("a field appears twice"))
    if (!isPlainObject(json)) return yield* Either.left(malformed("not a JSON object"))
    yield* onlyKeys(json, ["kdf", "created", "modified", "data", "fingerprint", "hint"], "the key file")
    if (!("kdf" in json)) return yield* Either.left(malformed("no kdf"))
    const kdf = yield* parseKdf(json.kdf)
    const { created, modified } = json
    if (typeof created !== "string" || !validTimestamp(created)) return yield* Either.left(malformed("created is not an RFC 3339 time"))
    if (typeof modified !== "string" || !validTimestamp(modified)) return yield* Either.left(malformed("modified is not an RFC 3339 time"))
    const data = yield* strictBase64(json.data, "data", kdf === undefined ? KEY_BYTES : IV_BYTES + TAG_BYTES + KEY_BYTES)
    const fingerprint = yield* parseFingerprint(json.fingerprint)
    let hint: string | undefined
    if (json.hint !== undefined && json.hint !== null) {
      if (typeof json.hint !== "string") return yield* Either.left(malformed("hint is not a string"))
      hint = yield* checkHint(json.hint)
      // PBS's KeyConfig refuses a hint on an unprotected key (there is no password to hint at).
      if (kdf === undefined) return yield* Either.left(malformed("a key without a password has no hint"))
    }
    return { kdf, created, modified, data, fingerprint, hint }
  })

const kdfName = (k: Kdf | undefined): KeyFileKdf => (k === undefined ? "none" : k._tag)

const mismatch = (stored: KeyFingerprint, actual: KeyFingerprint) =>
  new KeyFileError({ reason: "FingerprintMismatch", message: `KeyConfig contains wrong fingerprint ${stored}, contained key has fingerprint ${actual}` })

/** What a key file says about itself, without a passphrase (a plain file's fingerprint is checked). */
export const inspectKeyFile = (text: string): Either.Either<KeyFileInfo, KeyFileError> =>
  Either.flatMap(parse(text), (p) => {
    let fingerprint = p.fingerprint
    if (p.kdf === undefined) {
      const actual = pbsFingerprint(p.data)
      if (fingerprint !== undefined && fingerprint !== actual) return Either.left(mismatch(fingerprint, actual))
      fingerprint = actual
    }
    return Either.right({ kdf: kdfName(p.kdf), created: p.created, modified: p.modified, fingerprint, hint: p.hint })
  })

/**
 * K out of a key file, as PBS's KeyConfig::decrypt: the passphrase (≥ 5 bytes) for a wrapped file,
 * none for a plain one; the fingerprint recomputed and checked against the stored one. Stricter
 * than PBS (which ignores a passphrase for a plain file): given a passphrase, a plain file is
 * refused as Malformed.
 */
export const unwrapKey = (
  text: string,
  passphrase: Redacted.Redacted<string> | undefined
): Effect.Effect<{ readonly key: Redacted.Redacted<Uint8Array>; readonly fingerprint: KeyFingerprint; readonly kdf: KeyFileKdf; readonly created: string }, KeyFileError> =>
  Effect.gen(function*() {
    const p = yield* parse(text)
    let key: Uint8Array
    if (p.kdf === undefined) {
      // A caller holding a passphrase expects a wrapped file (the escrow blob): a plain one in its
      // place would hand over a key nobody wrapped under that passphrase (a hostile hub's own).
      if (passphrase !== undefined) {
        return yield* new KeyFileError({ reason: "Malformed", message: "expected a password-protected key file, got one without a password (kdf null)" })
      }
      key = new Uint8Array(p.data)
    } else {
      if (passphrase === undefined) return yield* new KeyFileError({ reason: "PassphraseRequired", message: "the key file is protected by a password and none was given" })
      const pass = yield* passphraseBytes(passphrase)
      const derived = yield* derive(p.kdf, pass)
      const opened = Either.try({
        try: () => {
          const d = crypto.createDecipheriv("aes-256-gcm", derived, p.data.subarray(0, IV_BYTES))
          d.setAuthTag(p.data.subarray(IV_BYTES, IV_BYTES + TAG_BYTES))
          return Buffer.concat([d.update(p.data.subarray(IV_BYTES + TAG_BYTES)), d.final()])
        },
        catch: () =>
          new KeyFileError({
            reason: "WrongPassphrase",
            message: p.hint === undefined ? "Unable to decrypt key (wrong password?)" : `Unable to decrypt key (password hint: ${p.hint})`
          })
      })
      derived.fill(0)
      const plain = yield* opened
      key = new Uint8Array(plain)
      plain.fill(0)
    }
    const fingerprint = pbsFingerprint(key)
    if (p.fingerprint !== undefined && p.fingerprint !== fingerprint) return yield* mismatch(p.fingerprint, fingerprint)
    return { key: Redacted.make(key), fingerprint, kdf: kdfName(p.kdf), created: p.created }
  })

// --- paperkey ----------------------------------------------------------------------------------

/**
 * `proxmox-backup-client key paperkey --output-format text` without the QR code: the key file
 * re-serialized as pretty JSON between PBS's markers. Nothing is decrypted: a wrapped file's paper
 * copy still needs its passphrase. Throws on a file that does not parse (the caller wrote it).
 */
export const paperkeyText = (fileText: string, subject?: string): string => {
  const p = parse(fileText)
  if (Either.isLeft(p)) throw new Error(p.left.message)
  const o = p.right
  const salt = o.kdf?.salt.toString("base64") ?? ""
  const kdf: KdfJson | null = o.kdf === undefined
    ? null
    : o.kdf._tag === "scrypt"
    ? { Scrypt: { n: o.kdf.n, r: o.kdf.r, p: o.kdf.p, salt } }
    : { PBKDF2: { iter: o.kdf.iter, salt } }
  const pretty = JSON.stringify(
    {
      kdf,
      created: o.created,
      modified: o.modified,
      data: o.data.toString("base64"),
      ...(o.fingerprint === undefined ? {} : { fingerprint: o.fingerprint }),
      ...(o.hint === undefined ? {} : { hint: o.hint })
    },
    null,
    2
  )
  const head = subject === undefined ? "" : `Subject: ${subject.replace(/[\r\n]+/g, " ")}\n\n`
  return `${head}-----BEGIN PROXMOX BACKUP KEY-----\n${pretty}\n-----END PROXMOX BACKUP KEY-----\n`
}
