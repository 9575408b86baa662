/**
 * OpenSSH public keys on node:crypto (reference/sshsig.md §1 and §6): the bounds-checked wire
 * reader shared with the SSHSIG verifier, key-blob parsing for the seven supported types, and
 * authorized_keys-style key lines. Every exported function is total: a bad input comes back as
 * a `SshsigError` value, never as an exception.
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

export const sshsigFail = (kind: SshsigErrorKind, message: string): Either.Either<never, SshsigError> =>
  Either.left(new SshsigError({ kind, message }))

const malformed = (message: string) => sshsigFail("Malformed", message)
const unsupported = (message: string) => sshsigFail("UnsupportedKey", message)

/** A short, printable excerpt of untrusted text for error messages. */
export const excerpt = (s: string, max = 40): string => {
  const clean = s.slice(0, max).replace(/[^\x20-\x7e]/g, "?")
  return JSON.stringify(s.length > max ? `${clean}...` : clean)
}

/**
 * Runs `f` and turns any exception into a Malformed value: the public functions must stay
 * total even if node:crypto or a bug throws, and a verifier must fail closed.
 */
export const total = <A>(what: string, f: () => Either.Either<A, SshsigError>): Either.Either<A, SshsigError> => {
  try {
    return f()
  } catch {
    return malformed(`${what}: internal error while processing the input (rejected)`)
  }
}

export const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

const utf8Fatal = new TextDecoder("utf-8", { fatal: true })
const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString("latin1")
const b64url = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString("base64url")

export const sshFingerprint = (blob: Uint8Array): string =>
  "SHA256:" + crypto.createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")

// ---------------------------------------------------------------------------------------------
// Wire reader (RFC 4251). Views into the input; callers copy what they keep.

export class SshReader {
  private offset = 0
  constructor(private readonly buf: Uint8Array, private readonly what: string) {}

  get remaining(): number {
    return this.buf.length - this.offset
  }

  bytes(n: number, field: string): Either.Either<Uint8Array, SshsigError> {
    if (n > this.remaining) return malformed(`${this.what}: truncated ${field}`)
    const out = this.buf.subarray(this.offset, this.offset + n)
    this.offset += n
    return Either.right(out)
  }

  u8(field: string): Either.Either<number, SshsigError> {
    if (this.remaining < 1) return malformed(`${this.what}: truncated ${field}`)
    return Either.right(this.buf[this.offset++] ?? 0)
  }

  u32(field: string): Either.Either<number, SshsigError> {
    if (this.remaining < 4) return malformed(`${this.what}: truncated ${field}`)
    const b = this.buf
    const o = this.offset
    this.offset += 4
    return Either.right((((b[o] ?? 0) << 24) >>> 0) + ((b[o + 1] ?? 0) << 16) + ((b[o + 2] ?? 0) << 8) + (b[o + 3] ?? 0))
  }

  string(field: string): Either.Either<Uint8Array, SshsigError> {
    const len = this.u32(field)
    return Either.isLeft(len) ? Either.left(len.left) : this.bytes(len.right, field)
  }

  /** A text field (cf. sshbuf_get_cstring, but stricter: no NUL at all, not even a final one); bytes kept 1:1. */
  cstring(field: string): Either.Either<string, SshsigError> {
    const raw = this.string(field)
    if (Either.isLeft(raw)) return Either.left(raw.left)
    if (raw.right.includes(0)) return malformed(`${this.what}: ${field} contains a NUL byte`)
    return Either.right(latin1(raw.right))
  }

  /** A cstring that must also be valid UTF-8 (namespace, FIDO application). */
  utf8(field: string): Either.Either<string, SshsigError> {
    const raw = this.string(field)
    if (Either.isLeft(raw)) return Either.left(raw.left)
    if (raw.right.includes(0)) return malformed(`${this.what}: ${field} contains a NUL byte`)
    try {
      return Either.right(utf8Fatal.decode(raw.right))
    } catch {
      return malformed(`${this.what}: ${field} is not valid UTF-8`)
    }
  }

  /**
   * A non-negative mpint as OpenSSH reads it (sshbuf_get_bignum2_bytes_direct): negative values
   * and values over 16384 bits are refused, leading zero bytes are trimmed off the result.
   */
  mpint(field: string): Either.Either<Uint8Array, SshsigError> {
    const raw = this.string(field)
    if (Either.isLeft(raw)) return raw
    let d = raw.right
    if (d.length > 0 && ((d[0] ?? 0) & 0x80) !== 0) return malformed(`${this.what}: ${field} is negative`)
    let i = 0
    while (i < d.length && d[i] === 0) i++
    d = d.subarray(i)
    if (d.length > RSA_MAX_BITS / 8) return malformed(`${this.what}: ${field} is too large`)
    return Either.right(d)
  }

  end(): Either.Either<void, SshsigError> {
    return this.remaining === 0 ? Either.void : malformed(`${this.what}: ${this.remaining} trailing byte(s)`)
  }
}

// ---------------------------------------------------------------------------------------------
// Strict base64 (OpenSSH's b64_pton; Buffer.from(s, "base64") silently drops junk, SPEC §17)

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/

export const strictBase64 = (s: string, what: string): Either.Either<Uint8Array, SshsigError> => {
  if (s.length % 4 !== 0 || !BASE64_RE.test(s)) return malformed(`${what}: not strict base64`)
  const bytes = Buffer.from(s, "base64")
  // Non-zero bits past the last full byte (e.g. "AB==") are a subliminal channel b64_pton refuses.
  if (bytes.toString("base64") !== s) return malformed(`${what}: non-canonical base64`)
  return Either.right(new Uint8Array(bytes))
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
    case "ecdsa-sha2-nistp256":
    case "sk-ecdsa-sha2-nistp256@openssh.com":
      return "nistp256"
    case "ecdsa-sha2-nistp384":
      return "nistp384"
    case "ecdsa-sha2-nistp521":
      return "nistp521"
    default:
      return undefined
  }
}

const importJwk = (jwk: crypto.JsonWebKey, what: string): Either.Either<crypto.KeyObject, SshsigError> => {
  try {
    return Either.right(crypto.createPublicKey({ key: jwk, format: "jwk" }))
  } catch {
    // e.g. an EC point that is not on the curve
    return malformed(`${what}: node:crypto rejected the key material`)
  }
}

const ed25519Key = (r: SshReader) =>
  Either.gen(function*() {
    const pk = yield* r.string("ed25519 public key")
    if (pk.length !== 32) return yield* malformed(`public key: ed25519 key is ${pk.length} bytes, expected 32`)
    return yield* importJwk({ kty: "OKP", crv: "Ed25519", x: b64url(pk) }, "ed25519 public key")
  })

const ecdsaKey = (r: SshReader, expected: EcCurveId) =>
  Either.gen(function*() {
    const curveName = yield* r.cstring("curve name")
    if (curveName !== expected) {
      return yield* malformed(`public key: curve ${excerpt(curveName)} does not match the key type (${expected})`)
    }
    const curve = EC_CURVES[expected]
    const q = yield* r.string("EC point")
    // OpenSSH only handles uncompressed points.
    if (q.length !== 1 + 2 * curve.size || q[0] !== 0x04) {
      return yield* malformed(`public key: EC point is not an uncompressed ${curve.crv} point`)
    }
    return yield* importJwk(
      { kty: "EC", crv: curve.crv, x: b64url(q.subarray(1, 1 + curve.size)), y: b64url(q.subarray(1 + curve.size)) },
      "ECDSA public key"
    )
  })

const bitLength = (d: Uint8Array): number => (d.length === 0 ? 0 : (d.length - 1) * 8 + (32 - Math.clz32(d[0] ?? 0)))

const rsaKey = (r: SshReader) =>
  Either.gen(function*() {
    const e = yield* r.mpint("RSA exponent")
    const n = yield* r.mpint("RSA modulus")
    const bits = bitLength(n)
    if (bits < RSA_MIN_BITS) return yield* unsupported(`RSA key of ${bits} bits is below the ${RSA_MIN_BITS}-bit floor`)
    if (e.length === 0 || e.length > 8 || ((e[e.length - 1] ?? 0) & 1) === 0 || (e.length === 1 && e[0] === 1)) {
      return yield* malformed("public key: RSA exponent must be odd, at least 3, and at most 64 bits")
    }
    const key = yield* importJwk({ kty: "RSA", n: b64url(n), e: b64url(e) }, "RSA public key")
    return { key, bits }
  })

/**
 * Parses an SSH public key blob. Certificates and types outside `SshKeyType` are UnsupportedKey,
 * as are RSA keys under 2048 bits; trailing bytes and bad key material are Malformed.
 */
export const parsePublicKeyBlob = (blob: Uint8Array): Either.Either<SshPublicKey, SshsigError> =>
  total("public key", () =>
    Either.gen(function*() {
      const r = new SshReader(blob, "public key")
      const type = yield* r.cstring("key type")
      const base = () => ({ blob: new Uint8Array(blob), fingerprint: sshFingerprint(blob) })
      switch (type) {
        case "ssh-ed25519": {
          const key = yield* ed25519Key(r)
          yield* r.end()
          return { type, key, bits: 256, ...base() } satisfies SshPublicKey
        }
        case "sk-ssh-ed25519@openssh.com": {
          const key = yield* ed25519Key(r)
          const application = yield* r.utf8("application")
          yield* r.end()
          return { type, key, application, bits: 256, ...base() } satisfies SshPublicKey
        }
        case "ecdsa-sha2-nistp256":
        case "ecdsa-sha2-nistp384":
        case "ecdsa-sha2-nistp521": {
          const curve = ecCurveOf(type) ?? "nistp256"
          const key = yield* ecdsaKey(r, curve)
          yield* r.end()
          return { type, key, bits: EC_CURVES[curve].bits, ...base() } satisfies SshPublicKey
        }
        case "sk-ecdsa-sha2-nistp256@openssh.com": {
          const key = yield* ecdsaKey(r, "nistp256")
          const application = yield* r.utf8("application")
          yield* r.end()
          return { type, key, application, bits: 256, ...base() } satisfies SshPublicKey
        }
        case "ssh-rsa": {
          const { bits, key } = yield* rsaKey(r)
          yield* r.end()
          return { type, key, bits, ...base() } satisfies SshPublicKey
        }
        default:
          if (type.endsWith("-cert-v01@openssh.com")) {
            return yield* unsupported(`certificate keys (${excerpt(type)}) are not supported: pin the plain key`)
          }
          return yield* unsupported(`key type ${excerpt(type)} is not supported`)
      }
    }))

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
  total("public key line", () =>
    Either.gen(function*() {
      if (line.length > SSH_KEY_LINE_MAX_CHARS) {
        return yield* malformed(`public key line: longer than ${SSH_KEY_LINE_MAX_CHARS} characters`)
      }
      const trimmed = line.replace(/^[ \t]+/, "").replace(/[ \t\r\n]+$/, "")
      if (/[\r\n]/.test(trimmed)) return yield* malformed("public key line: expected a single line")
      const m = KEY_LINE_RE.exec(trimmed)
      if (m === null) return yield* malformed("public key line: expected \"type base64 [comment]\"")
      const typeField = m[1] ?? ""
      const blob = yield* strictBase64(m[2] ?? "", "public key line (options prefixes are not supported)")
      const key = yield* parsePublicKeyBlob(blob)
      if (key.type !== typeField) {
        return yield* malformed(`public key line: type field ${excerpt(typeField)} does not match the key (${key.type})`)
      }
      return { key, comment: m[3] ?? "" }
    }))
