/**
 * Storage target creds sealed to this host (SPEC §13: "creds encrypted"; issue 10).
 *
 * The manifest carries a target's creds as `{ ciphertext }`, sealed to this host's public key, or
 * as `{ ref }` (a credential the operator put on the host: the agent does not read it, the
 * operator adds the PVE storage entry, see storage.ts). The agent keeps the ciphertext as it
 * arrived (StorageTargetStore), so what is at rest is only ever ciphertext, and opens it in
 * memory just before the one call that needs it, `Proxmox.createStorage`, where the secret
 * stays Redacted; the client scrubs it from every PVE text. It never reaches a log line, an
 * error, a report, the journal or the audit log (test/storage-reconcile.test.ts sweeps them).
 *
 * Sealing: X25519 (an ephemeral key per message and the host's static key) → HKDF-SHA256 →
 * AES-256-GCM, the target id as associated data, so a ciphertext opens only on this host and
 * only for the target it was sealed for (a hub cannot move one target's secret to another, e.g.
 * to a server it controls). Wire form, base64: 0x01 | ephemeral public key (32) | nonce (12) |
 * ciphertext | tag (16). The plaintext is JSON `{ password, username?, domain?, encryption_key? }`.
 *
 * The host key: `state_dir/storage-creds.key` (PKCS#8, mode 0600, created once, exclusively),
 * its public half beside it in `storage-creds.pub` (base64 of the raw 32 bytes) for the hub.
 * Why a file in state_dir and not a root-owned key behind Privileged: the service user must read
 * the secret anyway to hand it to PVE, so a root-held key would add a sudo rule without hiding
 * the secret from that user; what the key protects is the database and copies of it (backups of
 * state_dir, a leaked state.db), which hold only ciphertext. A key file readable by anyone but
 * its owner is refused.
 */
import { Context, Data, Effect, Either, Layer, Redacted, Schema } from "effect"
import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
  randomBytes
} from "node:crypto"
import { chmod, mkdir, readFile, stat, writeFile } from "node:fs/promises"
import { AgentConfig } from "../../layers/Config.js"
import type { StorageCreds } from "../../schema/storage.js"

export const CREDS_KEY_FILE = "storage-creds.key"
export const CREDS_PUB_FILE = "storage-creds.pub"

const VERSION = 0x01
const INFO = "felhom-storage-creds-v1"
const KEY_LEN = 32
const NONCE_LEN = 12
const TAG_LEN = 16
/** DER prefix of an X25519 SubjectPublicKeyInfo; the raw key follows. */
const SPKI_PREFIX = Buffer.from("302a300506032b656e032100", "hex")

/** Why creds could not be used. Messages are fixed texts: never a value, never a length. */
export class CredsError extends Data.TaggedError("CredsError")<{
  readonly reason: "HostKey" | "Malformed" | "WrongKey" | "BadPlaintext"
  readonly message: string
}> {}

/** What a sealed message holds. */
export interface StorageSecret {
  readonly password: Redacted.Redacted<string>
  readonly username?: string
  readonly domain?: string
  /** A PBS encryption key file's JSON. */
  readonly encryptionKey?: Redacted.Redacted<string>
}

export type OpenedCreds =
  | { readonly kind: "ref" }
  | { readonly kind: "sealed"; readonly sealed: Redacted.Redacted<string>; readonly secret: StorageSecret }

const Plain = Schema.Struct({
  password: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(4096)),
  username: Schema.optional(Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9._@!\\-]{1,128}$/))),
  domain: Schema.optional(Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9._-]{1,128}$/))),
  encryption_key: Schema.optional(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(16384)))
})
const decodePlain = Schema.decodeUnknownEither(Plain, { onExcessProperty: "error" })

const fail = (reason: CredsError["reason"], message: string) => new CredsError({ reason, message })

const rawPublic = (key: KeyObject): Buffer => Buffer.from(key.export({ format: "der", type: "spki" })).subarray(SPKI_PREFIX.length)
const publicFromRaw = (raw: Buffer): KeyObject => createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: "der", type: "spki" })

const aad = (targetId: string) => Buffer.from(`${INFO}\u0000${targetId}`, "utf8")
const derive = (shared: Buffer, ephemeral: Buffer, host: Buffer) =>
  Buffer.from(hkdfSync("sha256", shared, Buffer.concat([ephemeral, host]), INFO, KEY_LEN))

/**
 * Seals creds for one target of the host whose public key (`storage-creds.pub`, base64) is
 * given: what a hub does before it puts `{ ciphertext }` in the manifest. Here for the dev hub,
 * the tests and operator tooling; the agent itself only opens.
 */
export const sealCreds = (
  hostPublicKey: string,
  targetId: string,
  secret: { readonly password: string; readonly username?: string; readonly domain?: string; readonly encryption_key?: string }
): string => {
  const host = Buffer.from(hostPublicKey, "base64")
  if (host.length !== KEY_LEN) throw new Error("a host public key is 32 bytes, base64")
  const eph = generateKeyPairSync("x25519")
  const ephRaw = rawPublic(eph.publicKey)
  const shared = diffieHellman({ privateKey: eph.privateKey, publicKey: publicFromRaw(host) })
  const nonce = randomBytes(NONCE_LEN)
  const cipher = createCipheriv("aes-256-gcm", derive(shared, ephRaw, host), nonce)
  cipher.setAAD(aad(targetId))
  const body = Buffer.concat([cipher.update(JSON.stringify(secret), "utf8"), cipher.final()])
  return Buffer.concat([Buffer.from([VERSION]), ephRaw, nonce, body, cipher.getAuthTag()]).toString("base64")
}

/** Opens a sealed message with the host's private key; every failure is a fixed text. */
export const openSealed = (privateKey: KeyObject, targetId: string, sealed: string): Either.Either<StorageSecret, CredsError> => {
  const bytes = Buffer.from(sealed, "base64")
  if (bytes.length < 1 + KEY_LEN + NONCE_LEN + TAG_LEN + 2 || bytes[0] !== VERSION) {
    return Either.left(fail("Malformed", "the creds ciphertext is not a sealed message this agent understands (version 1)"))
  }
  const ephRaw = bytes.subarray(1, 1 + KEY_LEN)
  const nonce = bytes.subarray(1 + KEY_LEN, 1 + KEY_LEN + NONCE_LEN)
  const body = bytes.subarray(1 + KEY_LEN + NONCE_LEN, bytes.length - TAG_LEN)
  const tag = bytes.subarray(bytes.length - TAG_LEN)
  let text: string
  try {
    const host = rawPublic(createPublicKey(privateKey))
    const shared = diffieHellman({ privateKey, publicKey: publicFromRaw(Buffer.from(ephRaw)) })
    const decipher = createDecipheriv("aes-256-gcm", derive(shared, Buffer.from(ephRaw), host), nonce)
    decipher.setAAD(aad(targetId))
    decipher.setAuthTag(tag)
    text = Buffer.concat([decipher.update(body), decipher.final()]).toString("utf8")
  } catch {
    return Either.left(fail("WrongKey", "the creds do not open with this host's key (sealed for another host or another target, or damaged)"))
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    return Either.left(fail("BadPlaintext", "the sealed creds are not JSON { password, username?, domain?, encryption_key? }"))
  }
  return Either.match(decodePlain(json), {
    onLeft: () => Either.left(fail("BadPlaintext", "the sealed creds are not JSON { password, username?, domain?, encryption_key? }")),
    onRight: (p) =>
      Either.right<StorageSecret>({
        password: Redacted.make(p.password),
        ...(p.username === undefined ? {} : { username: p.username }),
        ...(p.domain === undefined ? {} : { domain: p.domain }),
        ...(p.encryption_key === undefined ? {} : { encryptionKey: Redacted.make(p.encryption_key) })
      })
  })
}

/** Same secret (what PVE would be told), compared without printing anything. */
export const sameSecret = (a: StorageSecret, b: StorageSecret): boolean =>
  Redacted.value(a.password) === Redacted.value(b.password) && a.username === b.username && a.domain === b.domain &&
  (a.encryptionKey === undefined ? undefined : Redacted.value(a.encryptionKey)) ===
    (b.encryptionKey === undefined ? undefined : Redacted.value(b.encryptionKey))

// ---------------------------------------------------------------------------------------------
// The service

export interface CredsVaultShape {
  /** This host's public key, base64 (also in `state_dir/storage-creds.pub`). */
  readonly publicKey: string
  /** A manifest's creds for `targetId`: a `{ ref }`, or the opened secret with its ciphertext. */
  readonly open: (targetId: string, creds: StorageCreds) => Effect.Effect<OpenedCreds, CredsError>
  /** Ciphertext kept at rest (StorageTargetStore), opened again. */
  readonly openStored: (targetId: string, sealed: string) => Effect.Effect<StorageSecret, CredsError>
}

export class CredsVault extends Context.Tag("felhom/CredsVault")<CredsVault, CredsVaultShape>() {}

const errno = (e: unknown): string => {
  const code = (e as { code?: unknown } | undefined)?.code
  return typeof code === "string" ? code : "unknown error"
}

/** Reads the host key in `dir`, creating it (0600, exclusively) when there is none. */
const loadOrCreateKey = (dir: string): Effect.Effect<KeyObject, CredsError> =>
  Effect.gen(function*() {
    const keyPath = `${dir.replace(/\/+$/, "")}/${CREDS_KEY_FILE}`
    const pubPath = `${dir.replace(/\/+$/, "")}/${CREDS_PUB_FILE}`
    const hostKey = (why: string) => fail("HostKey", `storage creds key ${keyPath}: ${why}`)
    yield* Effect.tryPromise(() => mkdir(dir, { recursive: true, mode: 0o700 })).pipe(
      Effect.mapError((e) => hostKey(`cannot create its directory (${errno(e.error)})`))
    )
    const fresh = generateKeyPairSync("x25519")
    const pem = fresh.privateKey.export({ format: "pem", type: "pkcs8" })
    // "wx": the first writer wins; a key that exists is never replaced (ciphertext sealed to it would be lost)
    const created = yield* Effect.tryPromise(() => writeFile(keyPath, pem, { mode: 0o600, flag: "wx" })).pipe(
      Effect.as(true),
      Effect.catchAll((e) => (errno(e.error) === "EEXIST" ? Effect.succeed(false) : Effect.fail(hostKey(`cannot create (${errno(e.error)})`))))
    )
    const st = yield* Effect.tryPromise(() => stat(keyPath)).pipe(Effect.mapError((e) => hostKey(`cannot inspect (${errno(e.error)})`)))
    if ((st.mode & 0o077) !== 0) return yield* hostKey("is readable or writable by others than its owner (it must be 0600); refusing to use it")
    const text = yield* Effect.tryPromise(() => readFile(keyPath, "utf8")).pipe(Effect.mapError((e) => hostKey(`cannot read (${errno(e.error)})`)))
    const key = yield* Effect.try(() => createPrivateKey({ key: text, format: "pem" })).pipe(Effect.mapError(() => hostKey("is not a PKCS#8 key")))
    if (key.asymmetricKeyType !== "x25519") return yield* hostKey("is not an X25519 key")
    const pub = rawPublic(createPublicKey(key)).toString("base64")
    // the public half is for the hub: rewritten when missing or stale, world-readable
    const current = yield* Effect.tryPromise(() => readFile(pubPath, "utf8")).pipe(Effect.orElseSucceed(() => ""))
    if (created || current.trim() !== pub) {
      yield* Effect.tryPromise(async () => {
        await writeFile(pubPath, `${pub}\n`, { mode: 0o644 })
        await chmod(pubPath, 0o644)
      }).pipe(Effect.mapError((e) => hostKey(`cannot write ${CREDS_PUB_FILE} (${errno(e.error)})`)))
    }
    return key
  })

export const makeVault = (dir: string): Effect.Effect<CredsVaultShape, CredsError> =>
  Effect.map(loadOrCreateKey(dir), (key): CredsVaultShape => {
    const publicKey = rawPublic(createPublicKey(key)).toString("base64")
    const openStored = (targetId: string, sealed: string) =>
      Either.match(openSealed(key, targetId, sealed), { onLeft: Effect.fail, onRight: Effect.succeed })
    return {
      publicKey,
      open: (targetId, creds) => {
        const wire = Redacted.value(creds)
        if ("ref" in wire) return Effect.succeed<OpenedCreds>({ kind: "ref" })
        return Either.match(openSealed(key, targetId, wire.ciphertext), {
          onLeft: Effect.fail,
          onRight: (secret) => Effect.succeed<OpenedCreds>({ kind: "sealed", sealed: Redacted.make(wire.ciphertext), secret })
        })
      },
      openStored
    }
  })

/** The vault over a key in `dir` (tests: a scratch directory). */
export const credsVaultAt = (dir: string): Layer.Layer<CredsVault, CredsError> => Layer.effect(CredsVault, makeVault(dir))

/** The production vault: the key in `state_dir`. */
export const CredsVaultLive: Layer.Layer<CredsVault, CredsError, AgentConfig> = Layer.effect(
  CredsVault,
  Effect.flatMap(AgentConfig, ({ file }) => makeVault(file.state_dir))
)
