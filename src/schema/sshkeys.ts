/**
 * OpenSSH public keys on node:crypto (reference/sshsig.md §1 and §6): the bounds-checked wire
 * reader shared with the SSHSIG verifier, key-blob parsing for the seven supported types, and
 * authorized_keys-style key lines. Every exported parse function is total: a bad input comes
 * back as a `SshsigError` value, never as an exception. Inside, the parsers are straight-line
 * code that throws a private rejection (`reject`, `SshReader`, `strictBase64Bytes`, `unwrap`)
 * which `attempt` turns back into a value at the boundary: no Either per field read.
 */
import { Data, Either } from "effect"
import * as crypto from "node:crypto"

export class SshsigError extends Data.TaggedError("SshsigError")<{
  readonly kind: "Malformed" | "Namespace" | "UnsupportedKey" | "BadSignature"
  /** Says what is wrong; never echoes more than a short, sanitised excerpt of the input. */
  readonly message: string
}> {}

export type SshsigErrorKind = SshsigError["kind"]

export type SshKeyType =
  | "ssh-ed25519"
  | "sk-ssh-ed25519@openssh.com"
  | "ecdsa-sha2-nistp256"
  | "ecdsa-sha2-nistp384"
  | "ecdsa-sha2-nistp521"
  | "sk-ecdsa-sha2-nistp256@openssh.com"
  | "ssh-rsa"

export const SSH_KEY_TYPES: ReadonlyArray<SshKeyType> = [
  "ssh-ed25519",
  "sk-ssh-ed25519@openssh.com",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "sk-ecdsa-sha2-nistp256@openssh.com",
  "ssh-rsa"
]

export interface SshPublicKey {
  readonly type: SshKeyType
  /** The SSH wire encoding of the key: what allow-lists compare byte for byte. */
  readonly blob: Uint8Array
  readonly key: crypto.KeyObject
  /** FIDO application string (sk-* keys only), usually "ssh:". */
  readonly application?: string
  /** "SHA256:" + unpadded base64 of SHA-256(blob), as ssh-keygen prints it. */
  readonly fingerprint: string
  readonly bits?: number
}

/** Project policy floor; OpenSSH itself accepts 1024-bit RSA keys. */
export const RSA_MIN_BITS = 2048
/** OpenSSL's (and OpenSSH's SSHBUF_MAX_BIGNUM) ceiling. */
export const RSA_MAX_BITS = 16384
/** A 16384-bit RSA key line is about 2.8 KB; anything far beyond that is not a key line. */
export const SSH_KEY_LINE_MAX_CHARS = 16 * 1024

// ---------------------------------------------------------------------------------------------
// Errors and small helpers

/**
 * A rejection in flight. The parsers below are written straight-line and throw this (never
 * anything else on purpose); `attempt` turns it back into a Left at the public boundary. Only
 * values of this class are typed rejections; every other exception is the fail-closed safety net.
 */
class Rejection {
  constructor(readonly error: SshsigError) {}
}

/** Throws a typed rejection; for use inside `attempt` only. */
export const reject = (kind: SshsigErrorKind, message: string): never => {
  throw new Rejection(new SshsigError({ kind, message }))
}

const malformed = (message: string): never => reject("Malformed", message)
const unsupported = (message: string): never => reject("UnsupportedKey", message)

/** A short, printable excerpt of untrusted text for error messages. */
export const excerpt = (s: string, max = 40): string => {
  const clean = s.slice(0, max).replace(/[^\x20-\x7e]/g, "?")
  return JSON.stringify(s.length > max ? `${clean}...` : clean)
}

const internalError = (what: string) => Either.left(new SshsigError({ kind: "Malformed", message: `${what}: internal error while processing the input (rejected)` }))

/**
 * Runs `f` (which rejects by `reject`) and returns its value or the typed rejection. Any other
 * exception becomes a Malformed value: the public functions must stay total even if
 * node:crypto or a bug throws, and a verifier must fail closed.
 */
export const attempt = <A>(what: string, f: () => A): Either.Either<A, SshsigError> => {
  try {
    return Either.right(f())
  } catch (e) {
    return e instanceof Rejection ? Either.left(e.error) : internalError(what)
  }
}

/** Unwraps an Either inside `attempt` (a Left is re-thrown as a rejection). */
export const unwrap = <A>(e: Either.Either<A, SshsigError>): A => {
  if (Either.isLeft(e)) throw new Rejection(e.left)
  return e.right
}

export const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

const utf8Fatal = new TextDecoder("utf-8", { fatal: true })
const b64url = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString("base64url")

/** Bytes as a string, one char per byte (what latin1 decoding gives); short input without a Buffer. */
export const latin1 = (b: Uint8Array): string =>
  b.length <= 64
    ? String.fromCharCode.apply(null, b as unknown as Array<number>)
    : Buffer.from(b.buffer, b.byteOffset, b.length).toString("latin1")

export const sshFingerprint = (blob: Uint8Array): string =>
  "SHA256:" + crypto.createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")

// ---------------------------------------------------------------------------------------------
// Wire reader (RFC 4251). Views into the input; callers copy what they keep. Every read is
// bounds-checked and rejects (Malformed) rather than reading past the end.

export class SshReader {
  private offset = 0
  constructor(private readonly buf: Uint8Array, private readonly what: string) {}

  get remaining(): number {
    return this.buf.length - this.offset
  }

  bytes(n: number, field: string): Uint8Array {
    if (n > this.remaining) return malformed(`${this.what}: truncated ${field}`)
    const out = this.buf.subarray(this.offset, this.offset + n)
    this.offset += n
    return out
  }

  u8(field: string): number {
    if (this.remaining < 1) return malformed(`${this.what}: truncated ${field}`)
    return this.buf[this.offset++] ?? 0
  }

  u32(field: string): number {
    if (this.remaining < 4) return malformed(`${this.what}: truncated ${field}`)
    const b = this.buf
    const o = this.offset
    this.offset += 4
    return (((b[o] ?? 0) << 24) >>> 0) + ((b[o + 1] ?? 0) << 16) + ((b[o + 2] ?? 0) << 8) + (b[o + 3] ?? 0)
  }

  string(field: string): Uint8Array {
    return this.bytes(this.u32(field), field)
  }

  /** A text field (cf. sshbuf_get_cstring, but stricter: no NUL at all, not even a final one); bytes kept 1:1. */
  cstring(field: string): string {
    const raw = this.string(field)
    if (raw.includes(0)) return malformed(`${this.what}: ${field} contains a NUL byte`)
    return latin1(raw)
  }

  /** A cstring that must also be valid UTF-8 (namespace, FIDO application). */
  utf8(field: string): string {
    const raw = this.string(field)
    let ascii = true
    for (let i = 0; i < raw.length; i++) {
      const c = raw[i] ?? 0
      if (c === 0) return malformed(`${this.what}: ${field} contains a NUL byte`)
      if (c >= 0x80) ascii = false
    }
    if (ascii) return latin1(raw)
    try {
      return utf8Fatal.decode(raw)
    } catch {
      return malformed(`${this.what}: ${field} is not valid UTF-8`)
    }
  }

  /**
   * A non-negative mpint as OpenSSH reads it (sshbuf_get_bignum2_bytes_direct): negative values
   * and values over 16384 bits are refused, leading zero bytes are trimmed off the result.
   */
  mpint(field: string): Uint8Array {
    let d = this.string(field)
    if (d.length > 0 && ((d[0] ?? 0) & 0x80) !== 0) return malformed(`${this.what}: ${field} is negative`)
    let i = 0
    while (i < d.length && d[i] === 0) i++
    d = d.subarray(i)
    if (d.length > RSA_MAX_BITS / 8) return malformed(`${this.what}: ${field} is too large`)
    return d
  }

  end(): void {
    if (this.remaining !== 0) malformed(`${this.what}: ${this.remaining} trailing byte(s)`)
  }
}

// ---------------------------------------------------------------------------------------------
// Strict base64 (OpenSSH's b64_pton; Buffer.from(s, "base64") silently drops junk, SPEC §17)

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/
const B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

export const strictBase64 = (s: string, what: string): Either.Either<Uint8Array, SshsigError> =>
  attempt(what, () => strictBase64Bytes(s, what))

/** `strictBase64` inside `attempt`. */
export const strictBase64Bytes = (s: string, what: string): Uint8Array => {
  if (s.length % 4 !== 0 || !BASE64_RE.test(s)) return malformed(`${what}: not strict base64`)
  // Non-zero bits past the last full byte (e.g. "AB==") are a subliminal channel b64_pton
  // refuses: with "==" the last symbol's low 4 bits are padding, with "=" its low 2 bits.
  const pad = s.endsWith("==") ? 2 : s.endsWith("=") ? 1 : 0
  if (pad > 0) {
    const last = B64_ALPHABET.indexOf(s.charAt(s.length - pad - 1))
    if ((last & (pad === 2 ? 0x0f : 0x03)) !== 0) return malformed(`${what}: non-canonical base64`)
  }
  const bytes = Buffer.from(s, "base64")
  // A plain Uint8Array view of the decoded bytes (no copy): Buffer's own slice() would alias.
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)
}

// ---------------------------------------------------------------------------------------------
// Key blobs

export type EcCurveId = "nistp256" | "nistp384" | "nistp521"

export interface EcCurve {
  readonly crv: "P-256" | "P-384" | "P-521"
  /** Coordinate (and scalar) size in bytes. */
  readonly size: number
  /** RFC 5656 hash for the curve. */
  readonly hash: "sha256" | "sha384" | "sha512"
  readonly bits: number
}

export const EC_CURVES: Readonly<Record<EcCurveId, EcCurve>> = {
  nistp256: { crv: "P-256", size: 32, hash: "sha256", bits: 256 },
  nistp384: { crv: "P-384", size: 48, hash: "sha384", bits: 384 },
  nistp521: { crv: "P-521", size: 66, hash: "sha512", bits: 521 }
}

/** The curve of an ECDSA (or sk-ECDSA) key type; undefined for the others. */
export const ecCurveOf = (type: SshKeyType): EcCurveId | undefined => {
  switch (type) {
    case "ssh-ed25519":
    case "sk-ssh-ed25519@openssh.com":
    case "ssh-rsa":
      return undefined
    case "ecdsa-sha2-nistp256":
    case "sk-ecdsa-sha2-nistp256@openssh.com":
      return "nistp256"
    case "ecdsa-sha2-nistp384":
      return "nistp384"
    case "ecdsa-sha2-nistp521":
      return "nistp521"
  }
}

/**
 * Key material → KeyObject. JWK, not DER: on Node 20 (OpenSSL 3.0) importing a JWK costs
 * ~8 µs (Ed25519) and ~70 µs (P-256, which includes the point checks) against ~100 µs and
 * ~150 µs for the same key as SPKI DER through OpenSSL's decoder, and the resulting keys verify
 * at the same speed (CPU time, same run). Parsed keys are cached (below), so this runs once per
 * key anyway.
 */
const importJwk = (jwk: crypto.JsonWebKey, what: string): crypto.KeyObject => {
  try {
    return crypto.createPublicKey({ key: jwk, format: "jwk" })
  } catch {
    // e.g. an EC point that is not on the curve
    return malformed(`${what}: node:crypto rejected the key material`)
  }
}

const ed25519Key = (r: SshReader): crypto.KeyObject => {
  const pk = r.string("ed25519 public key")
  if (pk.length !== 32) return malformed(`public key: ed25519 key is ${pk.length} bytes, expected 32`)
  return importJwk({ kty: "OKP", crv: "Ed25519", x: b64url(pk) }, "ed25519 public key")
}

const ecdsaKey = (r: SshReader, expected: EcCurveId): crypto.KeyObject => {
  const curveName = r.cstring("curve name")
  if (curveName !== expected) {
    return malformed(`public key: curve ${excerpt(curveName)} does not match the key type (${expected})`)
  }
  const curve = EC_CURVES[expected]
  const q = r.string("EC point")
  // OpenSSH only handles uncompressed points.
  if (q.length !== 1 + 2 * curve.size || q[0] !== 0x04) {
    return malformed(`public key: EC point is not an uncompressed ${curve.crv} point`)
  }
  return importJwk(
    { kty: "EC", crv: curve.crv, x: b64url(q.subarray(1, 1 + curve.size)), y: b64url(q.subarray(1 + curve.size)) },
    "ECDSA public key"
  )
}

const bitLength = (d: Uint8Array): number => (d.length === 0 ? 0 : (d.length - 1) * 8 + (32 - Math.clz32(d[0] ?? 0)))

const rsaKey = (r: SshReader): { readonly key: crypto.KeyObject; readonly bits: number } => {
  const e = r.mpint("RSA exponent")
  const n = r.mpint("RSA modulus")
  const bits = bitLength(n)
  if (bits < RSA_MIN_BITS) return unsupported(`RSA key of ${bits} bits is below the ${RSA_MIN_BITS}-bit floor`)
  if (e.length === 0 || e.length > 8 || ((e[e.length - 1] ?? 0) & 1) === 0 || (e.length === 1 && e[0] === 1)) {
    return malformed("public key: RSA exponent must be odd, at least 3, and at most 64 bits")
  }
  return { key: importJwk({ kty: "RSA", n: b64url(n), e: b64url(e) }, "RSA public key"), bits }
}

const parseKeyBlob = (blob: Uint8Array): SshPublicKey => {
  const r = new SshReader(blob, "public key")
  const type = r.cstring("key type")
  const base = () => ({ blob: new Uint8Array(blob), fingerprint: sshFingerprint(blob) })
  switch (type) {
    case "ssh-ed25519": {
      const key = ed25519Key(r)
      r.end()
      return { type, key, bits: 256, ...base() } satisfies SshPublicKey
    }
    case "sk-ssh-ed25519@openssh.com": {
      const key = ed25519Key(r)
      const application = r.utf8("application")
      r.end()
      return { type, key, application, bits: 256, ...base() } satisfies SshPublicKey
    }
    case "ecdsa-sha2-nistp256":
    case "ecdsa-sha2-nistp384":
    case "ecdsa-sha2-nistp521": {
      const curve = ecCurveOf(type) ?? "nistp256"
      const key = ecdsaKey(r, curve)
      r.end()
      return { type, key, bits: EC_CURVES[curve].bits, ...base() } satisfies SshPublicKey
    }
    case "sk-ecdsa-sha2-nistp256@openssh.com": {
      const key = ecdsaKey(r, "nistp256")
      const application = r.utf8("application")
      r.end()
      return { type, key, application, bits: 256, ...base() } satisfies SshPublicKey
    }
    case "ssh-rsa": {
      const { bits, key } = rsaKey(r)
      r.end()
      return { type, key, bits, ...base() } satisfies SshPublicKey
    }
    default:
      if (type.endsWith("-cert-v01@openssh.com")) {
        return unsupported(`certificate keys (${excerpt(type)}) are not supported: pin the plain key`)
      }
      return unsupported(`key type ${excerpt(type)} is not supported`)
  }
}

// ---------------------------------------------------------------------------------------------
// Parsed-key cache. Importing a key into node:crypto costs far more than verifying with it
// (P-256: ~70 µs against ~75 µs per verify), and a host only ever sees its few allow-listed
// keys, so parsed keys are kept by their exact blob bytes. Only successful parses are cached
// (a rejection is always recomputed); the cache is bounded, least recently used first out, so
// a stream of distinct keys costs what it did without it and never grows memory.

/** How many parsed keys are kept. An allow-list holds a handful; 64 leaves room. */
export const KEY_CACHE_SIZE = 64

interface CacheEntry {
  readonly key: SshPublicKey
  /** The cache's own copy of the blob (callers get `key`, whose blob they could write into). */
  readonly blob: Uint8Array
  /** Use counter at the last hit: the entry with the lowest is the least recently used. */
  used: number
}
const keyCache = new Map<string, CacheEntry>()
let useCounter = 0

/** The blob's bytes as a string (one char per byte): an exact, collision-free Map key. */
const cacheKey = (blob: Uint8Array): string => latin1(blob)

/** The entry of the last hit: most calls ask for the same key again, and bytes compare cheaper than a lookup. */
let lastHit: CacheEntry | undefined

/**
 * An entry is handed out only while the key's own blob still holds the bytes it was parsed
 * from: a caller that wrote into a shared key's blob gets that entry dropped and re-parsed,
 * never passed on.
 */
const intact = (e: CacheEntry): boolean => bytesEqual(e.key.blob, e.blob)

const cachedKey = (blob: Uint8Array): SshPublicKey => {
  if (lastHit !== undefined && bytesEqual(lastHit.blob, blob) && intact(lastHit)) {
    lastHit.used = ++useCounter
    return lastHit.key
  }
  if (blob.length > SSH_KEY_LINE_MAX_CHARS) return parseKeyBlob(blob) // never a key this verifier accepts; not worth a slot
  const k = cacheKey(blob)
  const hit = keyCache.get(k)
  if (hit !== undefined && intact(hit)) {
    hit.used = ++useCounter
    lastHit = hit
    return hit.key
  }
  if (hit !== undefined) keyCache.delete(k)
  const key = parseKeyBlob(blob)
  if (keyCache.size >= KEY_CACHE_SIZE) {
    // Evict the least recently used: a scan of at most 64 entries, only when a new key arrives.
    let oldest: string | undefined
    let oldestUse = Infinity
    for (const [ek, e] of keyCache) {
      if (e.used < oldestUse) {
        oldestUse = e.used
        oldest = ek
      }
    }
    if (oldest !== undefined) {
      if (lastHit === keyCache.get(oldest)) lastHit = undefined
      keyCache.delete(oldest)
    }
  }
  const entry: CacheEntry = { key, blob: key.blob.slice(), used: ++useCounter }
  keyCache.set(k, entry)
  lastHit = entry
  return key
}

/** For tests: how many parsed keys the cache holds. */
export const keyCacheSize = (): number => keyCache.size

/**
 * Parses an SSH public key blob. Certificates and types outside `SshKeyType` are UnsupportedKey,
 * as are RSA keys under 2048 bits; trailing bytes and bad key material are Malformed. The
 * result may be shared with other callers that passed the same bytes: treat it as immutable.
 */
export const parsePublicKeyBlob = (blob: Uint8Array): Either.Either<SshPublicKey, SshsigError> =>
  attempt("public key", () => cachedKey(blob))

// ---------------------------------------------------------------------------------------------
// authorized_keys-style lines

const KEY_LINE_RE = /^(\S+)[ \t]+(\S+)(?:[ \t]+(.*))?$/

/**
 * Parses "type base64 [comment]" (one line; surrounding whitespace and a final newline are
 * ignored). An options prefix is not supported here: the caller strips role/key_id first.
 */
export const parsePublicKeyLine = (
  line: string
): Either.Either<{ readonly key: SshPublicKey; readonly comment: string }, SshsigError> =>
  attempt("public key line", () => {
    if (line.length > SSH_KEY_LINE_MAX_CHARS) {
      return malformed(`public key line: longer than ${SSH_KEY_LINE_MAX_CHARS} characters`)
    }
    const trimmed = line.replace(/^[ \t]+/, "").replace(/[ \t\r\n]+$/, "")
    if (/[\r\n]/.test(trimmed)) return malformed("public key line: expected a single line")
    const m = KEY_LINE_RE.exec(trimmed)
    if (m === null) return malformed("public key line: expected \"type base64 [comment]\"")
    const typeField = m[1] ?? ""
    const blob = strictBase64Bytes(m[2] ?? "", "public key line (options prefixes are not supported)")
    const key = cachedKey(blob)
    if (key.type !== typeField) {
      return malformed(`public key line: type field ${excerpt(typeField)} does not match the key (${key.type})`)
    }
    return { key, comment: m[3] ?? "" }
  })
