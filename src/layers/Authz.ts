/**
 * Authz: verifies operator-signed operations (SPEC §5). The pipeline order is part of the
 * contract, and every stage after the signature check rejects even a valid signature:
 *
 *   armor → namespace → public key → allow-list (key bytes) → crypto over the raw bytes
 *   → parse blob → target host → time window → nonce (last, durably committed)
 *
 * A rejected op never records its nonce; an accepted op's nonce is committed (synchronous=FULL)
 * before `verify` returns; a nonce store that cannot answer fails safe, as a replay.
 * Requires only SqlClient and AgentConfig: no HTTP, no processes.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Either, Layer } from "effect"
import { timingSafeEqual } from "node:crypto"
import { ConfigError } from "../schema/errors.js"
import type { VmId } from "../schema/ids.js"
import {
  type AuthzError,
  BadSignature,
  decodeOpBlob,
  Expired,
  Malformed,
  Namespace,
  NotYetValid,
  OP_NAMESPACE,
  Replay,
  type SignerRole,
  Target,
  UnknownSigner
} from "../schema/op.js"
import {
  dearmor,
  parsePublicKeyBlob,
  parsePublicKeyLine,
  parseSignatureBlob,
  type SshPublicKey,
  verifySignatureBlob
} from "../schema/sshsig.js"
import { AgentConfig } from "./Config.js"

export interface Signer {
  readonly keyId: string
  readonly role: SignerRole
  readonly key: SshPublicKey
  readonly comment: string
}

export interface SignerInfo {
  readonly keyId: string
  readonly role: SignerRole
  readonly type: string
  readonly fingerprint: string
}

export interface VerifiedOp {
  readonly op: string
  readonly hostId: string
  readonly guestId: VmId | null
  readonly params: Readonly<Record<string, unknown>>
  readonly nonce: string
  readonly notBeforeMs: number | undefined
  readonly expiresAtMs: number
  /** What the blob claims (audit only; matching is by key bytes). */
  readonly claimedKeyId: string
  /** The allow-listed signer whose key verified the signature. */
  readonly signer: SignerInfo
  /** FIDO keys: the authenticator's flags and counter, for the audit log. */
  readonly sk: { readonly flags: number; readonly counter: number } | undefined
}

export interface VerifyInput {
  /** The op blob exactly as received. */
  readonly blob: Uint8Array
  /** The armored SSHSIG signature. */
  readonly signature: string | Uint8Array
}

export interface AuthzShape {
  readonly signers: ReadonlyArray<SignerInfo>
  /** Runs the full pipeline; on success the nonce is already durably recorded. */
  readonly verify: (input: VerifyInput) => Effect.Effect<VerifiedOp, AuthzError>
  /** Removes nonces whose op has expired (plus skew); returns how many. */
  readonly pruneNonces: Effect.Effect<number>
}

export class Authz extends Context.Tag("felhom/Authz")<Authz, AuthzShape>() {}

// ---------------------------------------------------------------------------------------------
// Signer lines: `role=<operational|recovery>,key-id=<id> <type> <base64> [comment]`

const KEY_ID_RE = /^[A-Za-z0-9._@+-]{1,64}$/

export const parseSignerLine = (line: string, index: number): Either.Either<Signer, ConfigError> => {
  const where = `authz.signers[${index}]`
  const fail = (message: string) => Either.left(new ConfigError({ key: where, message: `${where}: ${message}` }))
  const trimmed = line.trim()
  const space = trimmed.search(/\s/)
  if (space < 0) return fail("expected 'role=...,key-id=... <key type> <base64 key> [comment]'")
  const options = trimmed.slice(0, space)
  const rest = trimmed.slice(space).trim()
  let role: SignerRole | undefined
  let keyId: string | undefined
  for (const pair of options.split(",")) {
    const eq = pair.indexOf("=")
    const name = eq < 0 ? pair : pair.slice(0, eq)
    const value = eq < 0 ? "" : pair.slice(eq + 1)
    if (name === "role") {
      if (role !== undefined) return fail("role given twice")
      if (value !== "operational" && value !== "recovery") return fail("role must be 'operational' or 'recovery'")
      role = value
    } else if (name === "key-id") {
      if (keyId !== undefined) return fail("key-id given twice")
      if (!KEY_ID_RE.test(value)) return fail("key-id must be 1-64 of [A-Za-z0-9._@+-]")
      keyId = value
    } else {
      return fail(`unknown option '${name.slice(0, 32)}' (allowed: role, key-id)`)
    }
  }
  if (role === undefined) return fail("missing role=operational|recovery")
  if (keyId === undefined) return fail("missing key-id=<id>")
  const parsed = parsePublicKeyLine(rest)
  if (Either.isLeft(parsed)) return fail(`bad public key: ${parsed.left.message}`)
  return Either.right({ keyId, role, key: parsed.right.key, comment: parsed.right.comment })
}

export const parseSigners = (lines: ReadonlyArray<string>): Either.Either<ReadonlyArray<Signer>, ConfigError> => {
  const out: Array<Signer> = []
  for (const [i, line] of lines.entries()) {
    const s = parseSignerLine(line, i)
    if (Either.isLeft(s)) return Either.left(s.left)
    const dup = out.findIndex((o) => bytesEqual(o.key.blob, s.right.key.blob))
    if (dup >= 0) {
      return Either.left(new ConfigError({
        key: `authz.signers[${i}]`,
        message: `authz.signers[${i}]: the same key as authz.signers[${dup}]; one key has one role`
      }))
    }
    if (out.some((o) => o.keyId === s.right.keyId)) {
      return Either.left(new ConfigError({ key: `authz.signers[${i}]`, message: `authz.signers[${i}]: key-id '${s.right.keyId}' used twice` }))
    }
    out.push(s.right)
  }
  return Either.right(out)
}

const bytesEqual = (a: Uint8Array, b: Uint8Array) => a.length === b.length && timingSafeEqual(a, b)

export const signerInfo = (s: Signer): SignerInfo => ({ keyId: s.keyId, role: s.role, type: s.key.type, fingerprint: s.key.fingerprint })

// ---------------------------------------------------------------------------------------------

export interface AuthzOptions {
  readonly hostId: string
  readonly signers: ReadonlyArray<Signer>
  readonly clockSkewSeconds: number
}

export const make = (opts: AuthzOptions) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const skewMs = opts.clockSkewSeconds * 1000

    const stage = <A, E>(e: Either.Either<A, E>, onLeft: (e: E) => AuthzError): Effect.Effect<A, AuthzError> =>
      Either.isRight(e) ? Effect.succeed(e.right) : Effect.fail(onLeft(e.left))

    const prune = (now: number) => sql`DELETE FROM nonces WHERE expires_at_ms + ${skewMs} <= ${now}`

    /** Prune, then insert; a conflict is a replay. Any failure of the store is treated as "seen". */
    const commitNonce = (nonce: string, signer: Signer, op: string, expiresAtMs: number, now: number) =>
      Effect.gen(function*() {
        yield* prune(now)
        const rows = yield* sql<{ nonce: string }>`
          INSERT INTO nonces (nonce, signer_fingerprint, op, expires_at_ms, recorded_at_ms)
          VALUES (${nonce}, ${signer.key.fingerprint}, ${op}, ${expiresAtMs}, ${now})
          ON CONFLICT (nonce) DO NOTHING
          RETURNING nonce`
        return rows.length === 1
      }).pipe(
        sql.withTransaction,
        Effect.catchAllCause(() => Effect.succeed("store-failed" as const)),
        Effect.flatMap((r) =>
          r === true
            ? Effect.void
            : Effect.fail(new Replay({
              stage: "nonce",
              message: r === "store-failed"
                ? "the nonce store could not record this nonce; treated as already used (fail safe)"
                : "this op's nonce was already used: replay refused"
            }))
        )
      )

    const verify = (input: VerifyInput): Effect.Effect<VerifiedOp, AuthzError> =>
      Effect.gen(function*() {
        // 1. armor (and the SSHSIG envelope inside it)
        const raw = yield* stage(dearmor(input.signature), (e) => new Malformed({ stage: "armor", message: e.message }))
        const sig = yield* stage(parseSignatureBlob(raw), (e) => new Malformed({ stage: "armor", message: e.message }))
        // 2. namespace: a fixed constant, never caller-supplied
        if (sig.namespace !== OP_NAMESPACE) {
          return yield* new Namespace({
            stage: "namespace",
            message: `signature namespace is ${JSON.stringify(sig.namespace.slice(0, 64))}, expected "${OP_NAMESPACE}"`
          })
        }
        // 3. public key
        const key = yield* stage(parsePublicKeyBlob(sig.publicKey), (e) => new Malformed({ stage: "public_key", message: e.message }))
        // 4. allow-list by key material (key_id is never used for matching)
        const signer = opts.signers.find((s) => bytesEqual(s.key.blob, key.blob))
        if (signer === undefined) {
          return yield* new UnknownSigner({
            stage: "allow_list",
            message: `signing key ${key.type} ${key.fingerprint} is not an allow-listed operator key`
          })
        }
        // 5. crypto over the raw received bytes (never re-serialized)
        const checked = yield* stage(
          verifySignatureBlob(sig, signer.key, OP_NAMESPACE, input.blob, { requireUserPresence: true }),
          (e): AuthzError =>
            e.kind === "Namespace"
              ? new Namespace({ stage: "namespace", message: e.message })
              : new BadSignature({ stage: "signature", message: e.message })
        )
        // 6. parse the blob
        const blob = yield* stage(decodeOpBlob(input.blob), (m) => new Malformed({ stage: "blob", message: m }))
        // 7. target
        if (blob.host_id !== opts.hostId) {
          return yield* new Target({
            stage: "target",
            message: `op is for host ${JSON.stringify(blob.host_id)}, this host is ${JSON.stringify(opts.hostId)}`
          })
        }
        // 8. time window, with skew tolerance
        const now = yield* Clock.currentTimeMillis
        if (blob.not_before !== undefined && now + skewMs < blob.not_before) {
          return yield* new NotYetValid({
            stage: "time",
            message: `op is not valid before ${new Date(blob.not_before).toISOString()} (now ${new Date(now).toISOString()})`
          })
        }
        if (now - skewMs >= blob.expires_at) {
          return yield* new Expired({
            stage: "time",
            message: `op expired at ${new Date(blob.expires_at).toISOString()} (now ${new Date(now).toISOString()})`
          })
        }
        // 9. nonce, last: only a fully valid op consumes it
        yield* commitNonce(blob.nonce, signer, blob.op, blob.expires_at, now)
        const verified: VerifiedOp = {
          op: blob.op,
          hostId: blob.host_id,
          guestId: blob.guest_id,
          params: blob.params,
          nonce: blob.nonce,
          notBeforeMs: blob.not_before,
          expiresAtMs: blob.expires_at,
          claimedKeyId: blob.key_id,
          signer: signerInfo(signer),
          sk: checked.flags === undefined || checked.counter === undefined
            ? undefined
            : { flags: checked.flags, counter: checked.counter }
        }
        return verified
      })

    const pruneNonces = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const rows = yield* sql<{ n: number }>`
        DELETE FROM nonces WHERE expires_at_ms + ${skewMs} <= ${now} RETURNING 1 AS n`
      return rows.length
    }).pipe(Effect.orElseSucceed(() => 0))

    const shape: AuthzShape = { signers: opts.signers.map(signerInfo), verify, pruneNonces }
    return shape
  })

/** Authz from AgentConfig's host_id and authz block; every bad signer line is a ConfigError. */
export const AuthzLive = Layer.effect(
  Authz,
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    if (file.host_id === undefined) return yield* new ConfigError({ key: "host_id", message: "host_id: required to verify signed ops" })
    if (file.authz === undefined) return yield* new ConfigError({ key: "authz", message: "authz: the authz block is not configured" })
    const signers = yield* parseSigners(file.authz.signers)
    return yield* make({ hostId: file.host_id, signers, clockSkewSeconds: file.authz.clock_skew_seconds })
  })
).pipe(Layer.ensureRequirementsType<SqlClient.SqlClient | AgentConfig>())
