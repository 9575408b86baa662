/**
 * LocalCert (issue 11): the local API's self-signed certificate. Generated once, at first start,
 * and kept: every guest pins it (src/schema/bootstrap.ts CertPin), so a certificate that is
 * present but unreadable is a typed error and is never silently replaced.
 *
 * ECDSA P-256 from node:crypto; the X.509 v3 certificate is DER-encoded here (a few TLV
 * helpers), because the local API may not reach a CommandExecutor (no openssl shell-out).
 *
 * On disk, `<state_dir>/local-api/` (0700): `current.pem` and, during a rotation, `next.pem`,
 * each holding the private key and its certificate (0600). One file per slot makes every change a
 * single rename: a crash leaves either the old or the new slot, never a key of one certificate
 * beside another certificate. Rotation: `stage` writes `next.pem`; `pins` lists current and next;
 * `promote` renames next over current once `readyToPromote` says every deployed guest has been
 * given the next pin, and the running server swaps its context (LocalApi follows `changes`).
 */
import { Clock, Context, Data, Effect, Layer, type Stream, SubscriptionRef } from "effect"
import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
  X509Certificate
} from "node:crypto"
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeSync } from "node:fs"
import { isIP } from "node:net"
import { join } from "node:path"
import type { CertPin } from "../schema/bootstrap.js"
import { AgentConfig } from "./Config.js"

export class LocalCertError extends Data.TaggedError("LocalCertError")<{ readonly message: string }> {}

export interface CertMaterial {
  readonly keyPem: string
  readonly certPem: string
  readonly pin: CertPin
  readonly notAfter: string
}

export interface LocalCertState {
  readonly current: CertMaterial
  readonly next: CertMaterial | null
}

export interface LocalCertShape {
  readonly state: Effect.Effect<LocalCertState>
  /** [current] or, during a rotation, [current, next]: what every guest's bootstrap must list. */
  readonly pins: Effect.Effect<ReadonlyArray<CertPin>>
  /** Generates and keeps a `next` certificate (an existing one is kept: its pin may be published). */
  readonly stage: Effect.Effect<CertPin, LocalCertError>
  /** Makes `next` current. Fails when there is none. The caller checks `readyToPromote` first. */
  readonly promote: Effect.Effect<CertPin, LocalCertError>
  /** The state now and after every change (the server swaps its TLS context on a new current). */
  readonly changes: Stream.Stream<LocalCertState>
}

export class LocalCert extends Context.Tag("felhom/LocalCert")<LocalCert, LocalCertShape>() {}

/**
 * A staged certificate may become current only when every deployed guest's published pins include
 * it: a guest still pinning only the old one would lose the local API. No guests: nothing to wait for.
 */
export const readyToPromote = (
  nextSpki: string,
  pinsPublishedPerGuest: Iterable<ReadonlyArray<Pick<CertPin, "spki_sha256">>>
): boolean => {
  for (const pins of pinsPublishedPerGuest) {
    if (!pins.some((p) => p.spki_sha256 === nextSpki)) return false
  }
  return true
}

// ---------------------------------------------------------------------------------------------
// DER

const derLength = (n: number): Buffer => {
  if (n < 0x80) return Buffer.from([n])
  const bytes: Array<number> = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}
const tlv = (tag: number, body: Buffer): Buffer => Buffer.concat([Buffer.from([tag]), derLength(body.length), body])
const seq = (...items: ReadonlyArray<Buffer>): Buffer => tlv(0x30, Buffer.concat(items))
const set = (...items: ReadonlyArray<Buffer>): Buffer => tlv(0x31, Buffer.concat(items))
const explicit = (n: number, inner: Buffer): Buffer => tlv(0xa0 | n, inner)
const octets = (b: Buffer): Buffer => tlv(0x04, b)
const bits = (b: Buffer, unused = 0): Buffer => tlv(0x03, Buffer.concat([Buffer.from([unused]), b]))
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, "utf8"))
const bool = (v: boolean): Buffer => tlv(0x01, Buffer.from([v ? 0xff : 0x00]))

/** A non-negative INTEGER from big-endian bytes: minimal, with a 0x00 when the high bit is set. */
const uint = (b: Buffer): Buffer => {
  let i = 0
  while (i < b.length - 1 && b[i] === 0) i++
  const body = b.subarray(i)
  return tlv(0x02, (body[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), body]) : body)
}

const oid = (dotted: string): Buffer => {
  const parts = dotted.split(".").map(Number)
  const out: Array<number> = [40 * parts[0]! + parts[1]!]
  for (const p of parts.slice(2)) {
    const chunk: Array<number> = [p & 0x7f]
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | (v & 0x7f))
    out.push(...chunk)
  }
  return tlv(0x06, Buffer.from(out))
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; always UTC to the second. */
const time = (d: Date): Buffer => {
  const p = (n: number) => String(n).padStart(2, "0")
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`
  const y = d.getUTCFullYear()
  return y >= 1950 && y < 2050
    ? tlv(0x17, Buffer.from(`${p(y % 100)}${rest}`, "ascii"))
    : tlv(0x18, Buffer.from(`${String(y).padStart(4, "0")}${rest}`, "ascii"))
}

/** The address bytes of an IP literal (a SAN iPAddress); null when it is none. */
export const ipBytes = (ip: string): Buffer | null => {
  const addr = ip.replace(/%.*$/, "")
  const kind = isIP(addr)
  if (kind === 4) return Buffer.from(addr.split(".").map(Number))
  if (kind !== 6) return null
  // an embedded IPv4 tail (::ffff:1.2.3.4) becomes its two hex groups
  const text = addr.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_m, a: string, b: string, c: string, d: string) =>
    `${((Number(a) << 8) | Number(b)).toString(16)}:${((Number(c) << 8) | Number(d)).toString(16)}`)
  const [head, rest] = text.includes("::") ? (text.split("::") as [string, string]) : [text, null]
  const groups = (s: string) => (s === "" ? [] : s.split(":").map((g) => parseInt(g, 16)))
  const h = groups(head)
  const r = rest === null ? [] : groups(rest)
  const fill = 8 - h.length - r.length
  const words = rest === null ? h : [...h, ...Array<number>(Math.max(0, fill)).fill(0), ...r]
  if (words.length !== 8) return null
  const out = Buffer.alloc(16)
  words.forEach((w, i) => out.writeUInt16BE(w, i * 2))
  return out
}

const OID = {
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  commonName: "2.5.4.3",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  subjectKeyId: "2.5.29.14",
  serverAuth: "1.3.6.1.5.5.7.3.1"
} as const

export const LOCAL_API_DNS_NAME = "felhom-agent.local"
const VALIDITY_DAYS = 3650
const SKEW_MS = 60 * 60 * 1000

/** Base64 SHA-256 of the DER SubjectPublicKeyInfo, and hex SHA-256 of the DER certificate. */
export const pinOf = (cert: X509Certificate): CertPin => ({
  spki_sha256: createHash("sha256").update(cert.publicKey.export({ type: "spki", format: "der" })).digest("base64"),
  cert_sha256: createHash("sha256").update(cert.raw).digest("hex")
})

/** A fresh P-256 key and a self-signed certificate for `ip` (and felhom-agent.local). */
export const generateCertificate = (ip: string, nowMs: number): { readonly keyPem: string; readonly certPem: string } => {
  const ipb = ipBytes(ip)
  if (ipb === null) throw new Error(`not an IP literal: ${ip}`)
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" })
  const spki = publicKey.export({ type: "spki", format: "der" })
  // the BIT STRING inside the SPKI (the EC point) is what a subject key id hashes (RFC 5280 §4.2.1.2)
  const point = spki.subarray(spki.length - 65)
  const serial = randomBytes(16)
  serial[0] = (serial[0]! & 0x7f) | 0x01 // positive, never zero, 16 bytes
  const name = seq(set(seq(oid(OID.commonName), utf8("felhom-agent local API"))))
  const algorithm = seq(oid(OID.ecdsaWithSha256))
  const extension = (id: string, critical: boolean, value: Buffer) =>
    critical ? seq(oid(id), bool(true), octets(value)) : seq(oid(id), octets(value))
  const tbs = seq(
    explicit(0, uint(Buffer.from([2]))),
    uint(serial),
    algorithm,
    name,
    seq(time(new Date(nowMs - SKEW_MS)), time(new Date(nowMs + VALIDITY_DAYS * 86_400_000))),
    name,
    spki,
    explicit(3, seq(
      extension(OID.basicConstraints, true, seq()),
      extension(OID.keyUsage, true, bits(Buffer.from([0x80]), 7)),
      extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth))),
      extension(OID.subjectKeyId, false, octets(createHash("sha1").update(point).digest())),
      extension(OID.subjectAltName, false, seq(tlv(0x87, ipb), tlv(0x82, Buffer.from(LOCAL_API_DNS_NAME, "ascii"))))
    ))
  )
  const signature = sign("sha256", tbs, { key: privateKey, dsaEncoding: "der" })
  const der = seq(tbs, algorithm, bits(signature))
  const b64 = der.toString("base64").replace(/.{1,64}/g, "$&\n")
  return {
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    certPem: `-----BEGIN CERTIFICATE-----\n${b64}-----END CERTIFICATE-----\n`
  }
}

// ---------------------------------------------------------------------------------------------
// Files

export const LOCAL_API_DIR = "local-api"
const SLOT = { current: "current.pem", next: "next.pem" } as const

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

const keepAdvice = "the guests pin this certificate, so it is not regenerated: restore the file from a backup, " +
  "or move the directory away to issue a new one and redeploy every guest's bootstrap"

/** Parses one slot file: exactly one P-256 private key and the certificate it signs. */
export const parseSlot = (path: string, text: string): CertMaterial | LocalCertError => {
  const fail = (why: string) => new LocalCertError({ message: `local API certificate ${path} is unusable (${why}); ${keepAdvice}` })
  const key = /-----BEGIN PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END PRIVATE KEY-----\n?/.exec(text)
  const cert = /-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?/.exec(text)
  if (key === null || cert === null) return fail("no private key and certificate in it")
  let k: KeyObject
  let x: X509Certificate
  try {
    k = createPrivateKey(key[0])
    x = new X509Certificate(cert[0])
  } catch (e) {
    return fail(`cannot parse: ${describe(e).slice(0, 120)}`)
  }
  if (k.asymmetricKeyType !== "ec" || k.asymmetricKeyDetails?.namedCurve !== "prime256v1") return fail("the key is not ECDSA P-256")
  if (!x.checkPrivateKey(k)) return fail("the key does not belong to the certificate")
  if (!x.verify(x.publicKey)) return fail("the certificate's signature does not verify")
  return { keyPem: key[0], certPem: cert[0], pin: pinOf(x), notAfter: x.validTo }
}

/** tmp + fsync + rename + fsync(dir): a crash leaves the old file or the new one, whole. */
const writeAtomic = (dir: string, name: string, data: string): void => {
  const tmp = join(dir, `.${name}.${randomBytes(6).toString("hex")}.tmp`)
  const fd = openSync(tmp, "wx", 0o600)
  try {
    writeSync(fd, data)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  renameSync(tmp, join(dir, name))
  syncDir(dir)
}

const syncDir = (dir: string): void => {
  const fd = openSync(dir, "r")
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

const readSlot = (dir: string, slot: string): CertMaterial | LocalCertError | null => {
  const path = join(dir, slot)
  let text: string
  try {
    text = readFileSync(path, "utf8")
  } catch (e) {
    if (typeof e === "object" && e !== null && "code" in e && e.code === "ENOENT") return null
    return new LocalCertError({ message: `local API certificate ${path} cannot be read (${describe(e)}); ${keepAdvice}` })
  }
  return parseSlot(path, text)
}

export interface LocalCertOptions {
  /** `<state_dir>/local-api` */
  readonly dir: string
  /** The listen address: the certificate's IP SAN. */
  readonly listen: string
}

export const makeLocalCert = (options: LocalCertOptions): Effect.Effect<LocalCertShape, LocalCertError> =>
  Effect.gen(function*() {
    const { dir, listen } = options
    const io = <A>(what: string, f: () => A) =>
      Effect.try({ try: f, catch: (e) => new LocalCertError({ message: `local API certificate: ${what} in ${dir}: ${describe(e)}` }) })
    const settle = <A>(r: A | LocalCertError) => (r instanceof LocalCertError ? Effect.fail(r) : Effect.succeed(r))

    yield* io("creating the directory", () => mkdirSync(dir, { recursive: true, mode: 0o700 }))
    const mode = yield* io("reading the directory", () => statSync(dir).mode & 0o777)
    if ((mode & 0o077) !== 0) {
      return yield* Effect.fail(new LocalCertError({ message: `local API certificate directory ${dir} is mode ${mode.toString(8)}: it holds the private key, make it 0700` }))
    }
    const fresh = (nowMs: number) =>
      io("generating a certificate", () => {
        const g = generateCertificate(listen, nowMs)
        return `${g.keyPem}${g.certPem}`
      })

    let current = yield* settle(readSlot(dir, SLOT.current))
    const next = yield* settle(readSlot(dir, SLOT.next))
    if (current === null) {
      // a next without a current is no state this module leaves behind: refuse to guess
      if (next !== null) {
        return yield* Effect.fail(new LocalCertError({ message: `local API certificate: ${dir} has ${SLOT.next} but no ${SLOT.current}; ${keepAdvice}` }))
      }
      const text = yield* fresh(yield* Clock.currentTimeMillis)
      yield* io("writing the certificate", () => writeAtomic(dir, SLOT.current, text))
      current = yield* settle(parseSlot(join(dir, SLOT.current), text))
    }
    const ref = yield* SubscriptionRef.make<LocalCertState>({ current, next })
    // stage and promote change the files and the state together, one at a time
    const lock = yield* Effect.makeSemaphore(1)

    const stage: LocalCertShape["stage"] = lock.withPermits(1)(Effect.gen(function*() {
      const s = yield* SubscriptionRef.get(ref)
      if (s.next !== null) return s.next.pin
      const text = yield* fresh(yield* Clock.currentTimeMillis)
      const material = yield* settle(parseSlot(join(dir, SLOT.next), text))
      yield* io("writing the next certificate", () => writeAtomic(dir, SLOT.next, text))
      yield* SubscriptionRef.set(ref, { current: s.current, next: material })
      return material.pin
    }))

    const promote: LocalCertShape["promote"] = lock.withPermits(1)(Effect.gen(function*() {
      const s = yield* SubscriptionRef.get(ref)
      if (s.next === null) return yield* Effect.fail(new LocalCertError({ message: "local API certificate: no next certificate is staged" }))
      const promoted = s.next
      yield* io("promoting the next certificate", () => {
        renameSync(join(dir, SLOT.next), join(dir, SLOT.current))
        syncDir(dir)
      })
      yield* SubscriptionRef.set(ref, { current: promoted, next: null })
      return promoted.pin
    }))

    const state = SubscriptionRef.get(ref)
    return {
      state,
      pins: Effect.map(state, (s) => (s.next === null ? [s.current.pin] : [s.current.pin, s.next.pin])),
      stage,
      promote,
      changes: ref.changes
    } satisfies LocalCertShape
  })

export const LocalCertLive = (options: LocalCertOptions): Layer.Layer<LocalCert, LocalCertError> =>
  Layer.effect(LocalCert, makeLocalCert(options))

/** The daemon's: `<state_dir>/local-api`, SAN = local_api.listen. Absent local_api: a typed error. */
export const LocalCertFromConfig: Layer.Layer<LocalCert, LocalCertError, AgentConfig> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    if (file.local_api === undefined) {
      return Layer.fail(new LocalCertError({ message: "local API certificate: no local_api block in the config" }))
    }
    return LocalCertLive({ dir: join(file.state_dir, LOCAL_API_DIR), listen: file.local_api.listen })
  })
)
