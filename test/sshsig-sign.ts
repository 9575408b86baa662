/**
 * Test-only SSHSIG signer on node:crypto, written apart from the verifier (its own encoders) so
 * the two check each other. Makes keys of all seven types, including synthetic FIDO (sk-*) keys
 * following PROTOCOL.u2f, and signatures with knobs for negative tests. Never use outside tests.
 */
import * as crypto from "node:crypto"
import type { SshKeyType } from "../src/schema/sshsig.js"

// ---------------------------------------------------------------------------------------------
// Wire encoders

export const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n >>> 0)
  return b
}
export const sshString = (b: Uint8Array | string): Buffer => {
  const bytes = typeof b === "string" ? Buffer.from(b, "utf8") : Buffer.from(b)
  return Buffer.concat([u32(bytes.length), bytes])
}
/** Unsigned big-endian bytes as an SSH mpint: minimal, with a 0x00 when the top bit is set. */
export const mpint = (b: Uint8Array): Buffer => {
  let i = 0
  while (i < b.length && b[i] === 0) i++
  const d = Buffer.from(b.subarray(i))
  return sshString(d.length > 0 && (d[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.of(0), d]) : d)
}
const fromB64url = (s: string | undefined): Buffer => Buffer.from(s ?? "", "base64url")
const sha256 = (b: Uint8Array) => crypto.createHash("sha256").update(b).digest()

export const armor = (blob: Uint8Array, width = 70): string => {
  const b64 = Buffer.from(blob).toString("base64")
  const lines: Array<string> = []
  for (let i = 0; i < b64.length; i += width) lines.push(b64.slice(i, i + width))
  return `-----BEGIN SSH SIGNATURE-----\n${lines.join("\n")}\n-----END SSH SIGNATURE-----\n`
}

// ---------------------------------------------------------------------------------------------
// Keys

export interface TestKey {
  readonly type: SshKeyType
  readonly privateKey: crypto.KeyObject
  /** `blob` is the SSH wire encoding; `line` the authorized_keys form "type base64 comment". */
  readonly publicKey: { readonly blob: Uint8Array; readonly line: string }
  /** sk-* keys only. */
  readonly application?: string
}

const CURVE: Record<string, { readonly id: string; readonly crv: string; readonly hash: string; readonly size: number }> = {
  "ecdsa-sha2-nistp256": { id: "nistp256", crv: "P-256", hash: "sha256", size: 32 },
  "ecdsa-sha2-nistp384": { id: "nistp384", crv: "P-384", hash: "sha384", size: 48 },
  "ecdsa-sha2-nistp521": { id: "nistp521", crv: "P-521", hash: "sha512", size: 66 },
  "sk-ecdsa-sha2-nistp256@openssh.com": { id: "nistp256", crv: "P-256", hash: "sha256", size: 32 }
}

const isSk = (type: SshKeyType) => type.startsWith("sk-")

/** The SSH public key blob of `privateKey` as a key of `type`. */
export const publicBlob = (type: SshKeyType, privateKey: crypto.KeyObject, application = "ssh:"): Buffer => {
  const jwk = crypto.createPublicKey(privateKey).export({ format: "jwk" })
  const tail = isSk(type) ? [sshString(application)] : []
  switch (type) {
    case "ssh-ed25519":
    case "sk-ssh-ed25519@openssh.com":
      return Buffer.concat([sshString(type), sshString(fromB64url(jwk.x)), ...tail])
    case "ssh-rsa":
      return Buffer.concat([sshString(type), mpint(fromB64url(jwk.e)), mpint(fromB64url(jwk.n))])
    default: {
      const c = CURVE[type]
      if (c === undefined) throw new Error(`no curve for ${type}`)
      const q = Buffer.concat([Buffer.of(4), fromB64url(jwk.x), fromB64url(jwk.y)])
      return Buffer.concat([sshString(type), sshString(c.id), sshString(q), ...tail])
    }
  }
}

/** Wraps an existing private key (ed25519, EC or RSA, matching `type`). */
export const keyFromPrivate = (
  type: SshKeyType,
  privateKey: crypto.KeyObject,
  opts: { readonly application?: string; readonly comment?: string } = {}
): TestKey => {
  const application = opts.application ?? "ssh:"
  const blob = publicBlob(type, privateKey, application)
  const line = `${type} ${blob.toString("base64")} ${opts.comment ?? "felhom-test"}`
  return { type, privateKey, publicKey: { blob: new Uint8Array(blob), line }, ...(isSk(type) ? { application } : {}) }
}

/** A fresh key of `type` (RSA: 2048 bits unless `bits` says otherwise; sk-*: application "ssh:"). */
export const makeKey = (
  type: SshKeyType,
  opts: { readonly bits?: number; readonly application?: string; readonly comment?: string } = {}
): TestKey => {
  let privateKey: crypto.KeyObject
  if (type === "ssh-ed25519" || type === "sk-ssh-ed25519@openssh.com") {
    privateKey = crypto.generateKeyPairSync("ed25519").privateKey
  } else if (type === "ssh-rsa") {
    privateKey = crypto.generateKeyPairSync("rsa", { modulusLength: opts.bits ?? 2048, publicExponent: 65537 }).privateKey
  } else {
    privateKey = crypto.generateKeyPairSync("ec", { namedCurve: CURVE[type]?.crv ?? "P-256" }).privateKey
  }
  return keyFromPrivate(type, privateKey, opts)
}

// ---------------------------------------------------------------------------------------------
// Signatures

/** The SSHSIG signed data (PROTOCOL.sshsig), with any hash node knows (for negatives). */
export const sshsigSignedData = (namespace: string, hashAlgorithm: string, message: Uint8Array): Buffer =>
  Buffer.concat([
    Buffer.from("SSHSIG"),
    sshString(namespace),
    sshString(""),
    sshString(hashAlgorithm),
    sshString(crypto.createHash(hashAlgorithm).update(message).digest())
  ])

const ecdsaRs = (p1363: Buffer, size: number) =>
  sshString(Buffer.concat([mpint(p1363.subarray(0, size)), mpint(p1363.subarray(size))]))

export interface SignOptions {
  readonly message: Uint8Array
  readonly namespace: string
  readonly key: TestKey
  /** Default sha512, like ssh-keygen. Any node hash name is accepted, for negatives. */
  readonly hashAlgorithm?: string
  /** sk-* only: default 0x01 (user present). */
  readonly flags?: number
  /** sk-* only: default 1. */
  readonly counter?: number
  /** sk-* only: the application the authenticator signs for (default: the key's). */
  readonly application?: string
  /** The sigtype written and used: RSA default rsa-sha2-512 ("ssh-rsa" signs SHA-1); others only relabel. */
  readonly sigType?: string
  /** Outer blob overrides (the signature is still made over `namespace`). */
  readonly blobNamespace?: string
  readonly reserved?: Uint8Array
  readonly version?: number
  readonly trailing?: Uint8Array
  /** Transforms the inner signature blob before it is wrapped (e.g. strip a byte). */
  readonly mapInner?: (inner: Buffer) => Buffer
}

/** The inner SSH signature blob over `data`. */
export const innerSignature = (key: TestKey, data: Uint8Array, o: Omit<SignOptions, "message" | "namespace" | "key"> = {}): Buffer => {
  const type = key.type
  switch (type) {
    case "ssh-ed25519":
      return Buffer.concat([sshString(o.sigType ?? type), sshString(crypto.sign(null, data, key.privateKey))])
    case "ssh-rsa": {
      const sigType = o.sigType ?? "rsa-sha2-512"
      const hash = sigType === "ssh-rsa" ? "sha1" : sigType === "rsa-sha2-256" ? "sha256" : "sha512"
      const s = crypto.sign(hash, data, { key: key.privateKey, padding: crypto.constants.RSA_PKCS1_PADDING })
      return Buffer.concat([sshString(sigType), sshString(s)])
    }
    case "ecdsa-sha2-nistp256":
    case "ecdsa-sha2-nistp384":
    case "ecdsa-sha2-nistp521": {
      const c = CURVE[type]!
      const p1363 = crypto.sign(c.hash, data, { key: key.privateKey, dsaEncoding: "ieee-p1363" })
      return Buffer.concat([sshString(o.sigType ?? type), ecdsaRs(p1363, c.size)])
    }
    case "sk-ssh-ed25519@openssh.com":
    case "sk-ecdsa-sha2-nistp256@openssh.com": {
      const flags = o.flags ?? 0x01
      const counter = o.counter ?? 1
      const application = o.application ?? key.application ?? "ssh:"
      // PROTOCOL.u2f: the authenticator signs SHA256(app) || flags || counter || SHA256(data).
      const skMessage = Buffer.concat([sha256(Buffer.from(application)), Buffer.of(flags), u32(counter), sha256(data)])
      const sig = type === "sk-ssh-ed25519@openssh.com"
        ? sshString(crypto.sign(null, skMessage, key.privateKey))
        : ecdsaRs(crypto.sign("sha256", skMessage, { key: key.privateKey, dsaEncoding: "ieee-p1363" }), 32)
      return Buffer.concat([sshString(o.sigType ?? type), sig, Buffer.of(flags), u32(counter)])
    }
  }
}

export interface SshsigBlobFields {
  readonly version?: number
  readonly publicKey: Uint8Array
  readonly namespace: string
  readonly reserved?: Uint8Array
  readonly hashAlgorithm: string
  readonly signature: Uint8Array
  readonly trailing?: Uint8Array
}

export const sshsigBlob = (f: SshsigBlobFields): Buffer =>
  Buffer.concat([
    Buffer.from("SSHSIG"),
    u32(f.version ?? 1),
    sshString(f.publicKey),
    sshString(f.namespace),
    sshString(f.reserved ?? new Uint8Array(0)),
    sshString(f.hashAlgorithm),
    sshString(f.signature),
    Buffer.from(f.trailing ?? new Uint8Array(0))
  ])

/** The raw SSHSIG blob. */
export const signSshsigBlob = (o: SignOptions): Buffer => {
  const hashAlgorithm = o.hashAlgorithm ?? "sha512"
  const data = sshsigSignedData(o.namespace, hashAlgorithm, o.message)
  const inner = innerSignature(o.key, data, o)
  return sshsigBlob({
    ...(o.version === undefined ? {} : { version: o.version }),
    publicKey: o.key.publicKey.blob,
    namespace: o.blobNamespace ?? o.namespace,
    ...(o.reserved === undefined ? {} : { reserved: o.reserved }),
    hashAlgorithm,
    signature: o.mapInner ? o.mapInner(inner) : inner,
    ...(o.trailing === undefined ? {} : { trailing: o.trailing })
  })
}

/** An armored SSHSIG signature, as `ssh-keygen -Y sign` would write it. */
export const signSshsig = (o: SignOptions): string => armor(signSshsigBlob(o))
