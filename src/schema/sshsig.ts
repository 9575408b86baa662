/**
 * SSHSIG (`ssh-keygen -Y sign`) verification on node:crypto, byte for byte as
 * reference/sshsig.md describes it. Pure and total: every failure is an `SshsigError` value.
 *
 * Pipeline pieces, in the order of the contract's stages:
 *   dearmor → parseSignatureBlob → (namespace compare) → parsePublicKeyBlob → (allow-list)
 *   → verifySignatureBlob
 * (Authz compares the embedded key blob with its allow-listed blobs first and parses only a
 * blob that matches none, which gives the same verdicts; see Authz.signatureStages.)
 *
 * Cost (issue 9): parsed keys are cached by their blob bytes (sshkeys.ts), the signed-data
 * prefix is built once per (namespace, hash), and parsing throws a private rejection instead of
 * building an Either per field, so a verification costs little more than the crypto itself.
 *
 * Error kinds:
 *   Malformed       armor, base64, blob structure, trailing bytes, unsupported hash, bad key material
 *   Namespace       the blob's namespace is not the expected one
 *   UnsupportedKey  key type outside the seven supported ones, certificates, RSA < 2048 bits
 *   BadSignature    the crypto fails, the signature type does not fit the key (incl. legacy
 *                   ssh-rsa SHA-1 and the webauthn-sk form), the signature names another key,
 *                   or the FIDO user-presence flag is missing under the default policy
 *
 * Deliberate differences from ssh-keygen `-Y check-novalidate` (9.2):
 *   - CR LF after the BEGIN line is accepted (as OpenSSH >= 9.5 does; 9.2 rejects it).
 *   - RSA keys under 2048 bits are refused (OpenSSH's floor is 1024).
 *   - sk signatures without the user-presence flag are refused unless the policy says otherwise
 *     (ssh-keygen ignores the flags; sshd does not).
 *   - The webauthn-sk-ecdsa signature form is refused (ssh-keygen never makes it).
 *   - Non-canonical Ed25519 signatures (S >= L) are refused: OpenSSL checks S < L, while
 *     OpenSSH 9.2's bundled ref10 code accepts S + L. Honest signers never produce them.
 *   - Only [ \t\r\n] is skipped inside the base64 body (b64_pton also skips \v and \f).
 *   - Text fields (namespace, hash, types, application) may not contain any NUL byte, not even
 *     the single trailing one sshbuf_get_cstring tolerates ("felhom-op-v1\0" passes ssh-keygen).
 *   - Namespace and FIDO application must be valid UTF-8; RSA exponents are capped at 64 bits.
 */
import { Either } from "effect"
import * as crypto from "node:crypto"
import {
  attempt,
  bytesEqual,
  EC_CURVES,
  ecCurveOf,
  excerpt,
  parsePublicKeyBlob,
  reject,
  SshReader,
  type SshPublicKey,
  type SshsigError,
  strictBase64Bytes,
  unwrap
} from "./sshkeys.js"

export {
  parsePublicKeyBlob,
  parsePublicKeyLine,
  RSA_MIN_BITS,
  SSH_KEY_TYPES,
  type SshKeyType,
  type SshPublicKey,
  SshsigError,
  type SshsigErrorKind,
  sshFingerprint
} from "./sshkeys.js"

/** The namespace of operator-signed operation blobs (SPEC §5). */
export const FELHOM_OP_NAMESPACE = "felhom-op-v1"

/** Armor larger than this is refused before any decoding (a real one is well under 2 KiB). */
export const SSHSIG_MAX_ARMOR_BYTES = 16 * 1024

export type SshsigHashAlgorithm = "sha256" | "sha512"

export interface ParsedSshsig {
  readonly version: 1
  /** The signer's public key blob, as embedded in the signature. */
  readonly publicKey: Uint8Array
  /** The namespace field of the blob: compare it, never sign over it. */
  readonly namespace: string
  /** Read and ignored, as OpenSSH does: it never enters the signed data. */
  readonly reserved: Uint8Array
  readonly hashAlgorithm: SshsigHashAlgorithm
  /** The inner SSH signature blob (string sigtype, ...). */
  readonly signature: Uint8Array
}

export interface VerifyPolicy {
  /** Require the FIDO user-presence flag (0x01) on sk signatures. Default true. */
  readonly requireUserPresence?: boolean
}

/** Set for sk-* keys only: the authenticator flags and counter the signature covers. */
export interface SshsigVerified {
  readonly flags?: number
  readonly counter?: number
}

const MAGIC = Uint8Array.from([0x53, 0x53, 0x48, 0x53, 0x49, 0x47]) // "SSHSIG"
const BEGIN = "-----BEGIN SSH SIGNATURE-----"
const END = "-----END SSH SIGNATURE-----"
const END_LINE = "\n" + END
const FLAG_USER_PRESENT = 0x01

const malformed = (message: string): never => reject("Malformed", message)
const badSignature = (message: string): never => reject("BadSignature", message)

// ---------------------------------------------------------------------------------------------
// Armor

/**
 * Strict armor parse (reference §2): the BEGIN line at byte 0 followed by LF or CR LF, a body
 * up to the first LF + END line (anything after END is ignored, as OpenSSH does), [ \t\r\n]
 * skipped, and strict canonical base64 for the rest.
 */
export const dearmor = (armored: string | Uint8Array): Either.Either<Uint8Array, SshsigError> =>
  attempt("armor", () => dearmorBytes(armored))

const dearmorBytes = (armored: string | Uint8Array): Uint8Array => {
  let text: string
  if (typeof armored === "string") {
    // .length is a lower bound on the UTF-8 size and 3 × .length an upper one (a UTF-16 unit
    // is at most 3 UTF-8 bytes); byteLength only runs when the two straddle the cap
    if (
      armored.length > SSHSIG_MAX_ARMOR_BYTES ||
      (armored.length * 3 > SSHSIG_MAX_ARMOR_BYTES && Buffer.byteLength(armored, "utf8") > SSHSIG_MAX_ARMOR_BYTES)
    ) {
      return malformed(`armor: larger than ${SSHSIG_MAX_ARMOR_BYTES} bytes`)
    }
    text = armored
  } else {
    if (armored.length > SSHSIG_MAX_ARMOR_BYTES) return malformed(`armor: larger than ${SSHSIG_MAX_ARMOR_BYTES} bytes`)
    // latin1 maps every byte to one char, so non-ASCII bytes stay visible to the base64 check
    text = Buffer.from(armored.buffer, armored.byteOffset, armored.length).toString("latin1")
  }
  if (!text.startsWith(BEGIN)) return malformed("armor: must start with the BEGIN SSH SIGNATURE line at byte 0")
  let pos = BEGIN.length
  if (text.startsWith("\n", pos)) pos += 1
  else if (text.startsWith("\r\n", pos)) pos += 2
  else return malformed("armor: the BEGIN line must end with a newline")
  const end = text.indexOf(END_LINE, pos)
  if (end < 0) return malformed("armor: missing END SSH SIGNATURE line")
  return strictBase64Bytes(text.slice(pos, end).replace(/[ \t\r\n]/g, ""), "armor body")
}

/**
 * Uninitialised bytes carved from Buffer's shared pool, as a plain Uint8Array (Buffer's own
 * slice() aliases). A small array costs under half of a fresh Uint8Array this way, which needs
 * its own off-heap store. Callers write every byte they expose.
 */
const poolBytes = (n: number): Uint8Array => {
  const b = Buffer.allocUnsafe(n)
  return new Uint8Array(b.buffer, b.byteOffset, n)
}

// ---------------------------------------------------------------------------------------------
// Signature blob

/**
 * Parses the outer SSHSIG blob (reference §3). It does NOT check the namespace against an
 * expectation (Authz compares it as a separate stage), nor parse the embedded key.
 */
export const parseSignatureBlob = (blob: Uint8Array): Either.Either<ParsedSshsig, SshsigError> =>
  attempt("signature", () => parseSignatureBytes(blob))

const parseSignatureBytes = (input: Uint8Array): ParsedSshsig => {
  // One private copy; the fields kept below are views into it, so a caller that reuses its
  // buffer cannot change a parsed signature.
  const blob = poolBytes(input.length)
  blob.set(input)
  const r = new SshReader(blob, "signature")
  if (!bytesEqual(r.bytes(MAGIC.length, "magic"), MAGIC)) return malformed("signature: missing SSHSIG magic")
  const version = r.u32("version")
  if (version !== 1) return malformed(`signature: unsupported version ${version} (expected 1)`)
  const publicKey = r.string("public key")
  const namespace = r.utf8("namespace")
  if (namespace.length === 0) return malformed("signature: empty namespace")
  const reserved = r.string("reserved")
  const hash = r.cstring("hash algorithm")
  if (hash !== "sha256" && hash !== "sha512") {
    return malformed(`signature: unsupported hash algorithm ${excerpt(hash)} (sha256 or sha512)`)
  }
  const signature = r.string("signature")
  r.end()
  return { version: 1, publicKey, namespace, reserved, hashAlgorithm: hash, signature }
}

// ---------------------------------------------------------------------------------------------
// Signed data

const u32be = (n: number) => Uint8Array.from([(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff])
const sshString = (b: Uint8Array) => [u32be(b.length), b]
const DIGEST_SIZE: Readonly<Record<SshsigHashAlgorithm, number>> = { sha256: 32, sha512: 64 }

/**
 * Everything of the signed data but the digest bytes: magic, namespace, empty reserved, hash
 * name and the digest's length. It depends only on (namespace, hash), so it is built once per
 * pair; the namespace is the verifier's own expectation (a handful of constants), and the cache
 * is bounded all the same.
 */
const prefixes = new Map<string, Buffer>()
const PREFIX_CACHE_SIZE = 16

/** The last pair asked for: a verifier asks for its own namespace every time. */
let lastPrefix: { readonly namespace: string; readonly hash: SshsigHashAlgorithm; readonly prefix: Buffer } | undefined

const signedDataPrefix = (namespace: string, hashAlgorithm: SshsigHashAlgorithm): Buffer => {
  if (lastPrefix !== undefined && lastPrefix.namespace === namespace && lastPrefix.hash === hashAlgorithm) return lastPrefix.prefix
  const k = `${hashAlgorithm}:${namespace}`
  const hit = prefixes.get(k)
  if (hit !== undefined) {
    lastPrefix = { namespace, hash: hashAlgorithm, prefix: hit }
    return hit
  }
  const prefix = Buffer.concat([
    MAGIC,
    ...sshString(Buffer.from(namespace, "utf8")),
    ...sshString(new Uint8Array(0)),
    ...sshString(Buffer.from(hashAlgorithm, "latin1")),
    u32be(DIGEST_SIZE[hashAlgorithm])
  ])
  if (prefixes.size >= PREFIX_CACHE_SIZE) prefixes.clear()
  prefixes.set(k, prefix)
  lastPrefix = { namespace, hash: hashAlgorithm, prefix }
  return prefix
}

/**
 * The bytes the key actually signs (reference §4), built from the EXPECTED namespace with an
 * always-empty reserved field, over the message bytes exactly as received.
 */
export const signedData = (namespace: string, hashAlgorithm: SshsigHashAlgorithm, message: Uint8Array): Uint8Array => {
  const prefix = signedDataPrefix(namespace, hashAlgorithm)
  const out = Buffer.allocUnsafe(prefix.length + DIGEST_SIZE[hashAlgorithm])
  prefix.copy(out, 0)
  digest(hashAlgorithm, message).copy(out, prefix.length)
  return out
}

/** crypto.hash (Node >= 20.12) skips the Hash object: about half the cost for a short message. */
const oneShotHash: ((algorithm: string, data: Uint8Array, encoding: "buffer") => Buffer) | undefined =
  typeof crypto.hash === "function" ? crypto.hash : undefined

const digest = (algorithm: string, data: Uint8Array): Buffer =>
  oneShotHash !== undefined ? oneShotHash(algorithm, data, "buffer") : crypto.createHash(algorithm).update(data).digest()

// ---------------------------------------------------------------------------------------------
// Signature verification

const cryptoVerify = (
  algorithm: string | null,
  data: Uint8Array,
  key: crypto.KeyObject | crypto.VerifyKeyObjectInput,
  signature: Uint8Array
): boolean => {
  try {
    return crypto.verify(algorithm, data, key, signature)
  } catch {
    return false
  }
}

/** mpint r, mpint s (and nothing else) → IEEE-P1363 r || s, each left-padded to the curve size. */
const ecdsaP1363 = (rs: Uint8Array, size: number): Uint8Array => {
  const r = new SshReader(rs, "ECDSA signature")
  const sigR = r.mpint("r")
  const sigS = r.mpint("s")
  r.end()
  if (sigR.length > size || sigS.length > size) return badSignature("ECDSA r or s is larger than the curve order")
  const out = new Uint8Array(2 * size)
  out.set(sigR, size - sigR.length)
  out.set(sigS, 2 * size - sigS.length)
  return out
}

const checkSigType = (sigType: string, key: SshPublicKey): void => {
  if (sigType === key.type) return
  if (sigType.startsWith("webauthn-sk-")) return badSignature("webauthn-sk signatures are not supported")
  return badSignature(`signature type ${excerpt(sigType)} does not match the key type ${key.type}`)
}

const sha256 = (b: Uint8Array) => digest("sha256", b)

/**
 * Verifies a parsed SSHSIG against `key` (which must be the key embedded in the signature) and
 * the message bytes as received. The signed data is built from `expectedNamespace`; a blob
 * naming another namespace is refused (kind Namespace) before any crypto.
 */
export const verifySignatureBlob = (
  sig: ParsedSshsig,
  key: SshPublicKey,
  expectedNamespace: string,
  message: Uint8Array,
  policy: VerifyPolicy = {}
): Either.Either<SshsigVerified, SshsigError> =>
  attempt("verify", () => verifyParsed(sig, key, expectedNamespace, message, policy))

const verifyParsed = (
  sig: ParsedSshsig,
  key: SshPublicKey,
  expectedNamespace: string,
  message: Uint8Array,
  policy: VerifyPolicy
): SshsigVerified => {
  if (sig.namespace !== expectedNamespace) {
    return reject(
      "Namespace",
      `signature namespace ${excerpt(sig.namespace)} is not the expected ${excerpt(expectedNamespace)}`
    )
  }
  if (sig.version !== 1) return malformed("signature: unsupported version")
  if (sig.hashAlgorithm !== "sha256" && sig.hashAlgorithm !== "sha512") {
    return malformed("signature: unsupported hash algorithm")
  }
  if (!bytesEqual(key.blob, sig.publicKey)) {
    return badSignature("the signature names a different public key than the one given")
  }
  const data = signedData(expectedNamespace, sig.hashAlgorithm, message)
  const r = new SshReader(sig.signature, "signature blob")
  const sigType = r.cstring("signature type")

  switch (key.type) {
    case "ssh-ed25519": {
      checkSigType(sigType, key)
      const s = r.string("ed25519 signature")
      r.end()
      if (s.length !== 64) return malformed(`signature blob: ed25519 signature is ${s.length} bytes, expected 64`)
      if (!cryptoVerify(null, data, key.key, s)) return badSignature("ed25519 signature does not verify")
      return {}
    }
    case "ecdsa-sha2-nistp256":
    case "ecdsa-sha2-nistp384":
    case "ecdsa-sha2-nistp521": {
      checkSigType(sigType, key)
      const curve = EC_CURVES[ecCurveOf(key.type) ?? "nistp256"]
      const rs = r.string("ECDSA signature")
      r.end()
      const p1363 = ecdsaP1363(rs, curve.size)
      if (!cryptoVerify(curve.hash, data, { key: key.key, dsaEncoding: "ieee-p1363" }, p1363)) {
        return badSignature("ECDSA signature does not verify")
      }
      return {}
    }
    case "ssh-rsa": {
      if (sigType === "ssh-rsa") {
        return badSignature("legacy ssh-rsa (SHA-1) signatures are refused: sign with rsa-sha2-512 or rsa-sha2-256")
      }
      if (sigType !== "rsa-sha2-512" && sigType !== "rsa-sha2-256") {
        return badSignature(`unsupported RSA signature algorithm ${excerpt(sigType)}`)
      }
      const s = r.string("RSA signature")
      r.end()
      const modulusBits = key.key.asymmetricKeyDetails?.modulusLength ?? key.bits ?? 0
      const size = Math.ceil(modulusBits / 8)
      if (s.length > size) return badSignature("RSA signature is longer than the modulus")
      // OpenSSH left-pads a short s; OpenSSL would just return false.
      let padded = s
      if (s.length < size) {
        padded = new Uint8Array(size)
        padded.set(s, size - s.length)
      }
      const hash = sigType === "rsa-sha2-512" ? "sha512" : "sha256"
      if (!cryptoVerify(hash, data, { key: key.key, padding: crypto.constants.RSA_PKCS1_PADDING }, padded)) {
        return badSignature("RSA signature does not verify")
      }
      return {}
    }
    case "sk-ssh-ed25519@openssh.com":
    case "sk-ecdsa-sha2-nistp256@openssh.com": {
      checkSigType(sigType, key)
      const inner = r.string("sk signature")
      const flags = r.u8("sk flags")
      const counter = r.u32("sk counter")
      r.end()
      // The authenticator signs SHA256(application) || flags || counter || SHA256(signed data).
      const skMessage = Buffer.concat([
        sha256(Buffer.from(key.application ?? "", "utf8")),
        Uint8Array.of(flags),
        u32be(counter),
        sha256(data)
      ])
      let ok: boolean
      if (key.type === "sk-ssh-ed25519@openssh.com") {
        if (inner.length !== 64) {
          return malformed(`signature blob: ed25519 signature is ${inner.length} bytes, expected 64`)
        }
        ok = cryptoVerify(null, skMessage, key.key, inner)
      } else {
        const p1363 = ecdsaP1363(inner, EC_CURVES.nistp256.size)
        ok = cryptoVerify("sha256", skMessage, { key: key.key, dsaEncoding: "ieee-p1363" }, p1363)
      }
      if (!ok) return badSignature("security-key signature does not verify")
      // Checked after the crypto so the message only ever describes a genuine signature.
      if ((policy.requireUserPresence ?? true) && (flags & FLAG_USER_PRESENT) === 0) {
        return badSignature("user presence flag not set")
      }
      return { flags, counter }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Convenience for the diagnostics CLI

export interface SshsigArmoredResult extends SshsigVerified {
  readonly key: SshPublicKey
  readonly namespace: string
  readonly hashAlgorithm: SshsigHashAlgorithm
}

/**
 * `ssh-keygen -Y check-novalidate` on node:crypto (plus this module's stricter policies):
 * verifies against the key embedded in the signature, or, when `publicKey` is given, requires
 * the embedded key to be byte-equal to it. No allow-list is consulted.
 */
export const verifyArmored = (
  armored: string | Uint8Array,
  expectedNamespace: string,
  message: Uint8Array,
  opts: { readonly publicKey?: SshPublicKey } & VerifyPolicy = {}
): Either.Either<SshsigArmoredResult, SshsigError> =>
  attempt("verify", () => {
    const sig = parseSignatureBytes(dearmorBytes(armored))
    if (sig.namespace !== expectedNamespace) {
      return reject(
        "Namespace",
        `signature namespace ${excerpt(sig.namespace)} is not the expected ${excerpt(expectedNamespace)}`
      )
    }
    const embedded = unwrap(parsePublicKeyBlob(sig.publicKey))
    if (opts.publicKey !== undefined && !bytesEqual(opts.publicKey.blob, sig.publicKey)) {
      return badSignature(
        `signed by ${embedded.type} ${embedded.fingerprint}, not by the given key ${opts.publicKey.fingerprint}`
      )
    }
    const policy: VerifyPolicy = opts.requireUserPresence === undefined ? {} : { requireUserPresence: opts.requireUserPresence }
    const info = verifyParsed(sig, embedded, expectedNamespace, message, policy)
    return { key: embedded, namespace: sig.namespace, hashAlgorithm: sig.hashAlgorithm, ...info }
  })
