/**
 * Authz: verifies operator-signed operations (SPEC §5). The pipeline order is part of the
 * contract, and every stage after the signature check rejects even a valid signature:
 *
 *   armor → namespace → public key → allow-list (key bytes) → crypto over the raw bytes
 *   → parse blob → target host → time window → state epoch → nonce (last, durably committed)
 *
 * A rejected op never records its nonce; an accepted op's nonce is committed (synchronous=FULL)
 * before `verify` returns; a nonce store that cannot answer fails safe, as a replay.
 *
 * Replay after state loss: the nonce store dies with state.db. So a signed op's validity is
 * bounded (authz.max_validity_seconds), and an op issued before the state database was created
 * (its state epoch, src/layers/Database.ts) is refused: it may have run against the lost
 * database. An op's issue time is its `not_before`, or, when absent, `expires_at` minus the
 * maximum validity (the earliest it can have been issued). Everything up to and including the
 * epoch stage reads nothing but the clock and the epoch read at build time; only the nonce
 * stage touches the store.
 * Requires only SqlClient and AgentConfig: no HTTP, no processes.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Either, Layer } from "effect"
import { timingSafeEqual } from "node:crypto"
import { DEFAULT_MAX_VALIDITY_SECONDS } from "../schema/config.js"
import { ConfigError } from "../schema/errors.js"
import type { JsonObject } from "../schema/json.js"
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
  StateReset,
  Target,
  TooLong,
  UnknownSigner
} from "../schema/op.js"
import {
  dearmor,
  type ParsedSshsig,
  parsePublicKeyBlob,
  parsePublicKeyLine,
  parseSignatureBlob,
  type SshPublicKey,
  type SshsigVerified,
  verifySignatureBlob
} from "../schema/sshsig.js"
import { AgentConfig } from "./Config.js"
import { type DatabaseError, readStateEpoch } from "./Database.js"

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
  readonly params: JsonObject
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
  /** When the state database was created (epoch ms), read once when this service was built. */
  readonly stateEpochMs: number
  /** Whether ops issued before `stateEpochMs` are refused (AuthzLive: always). */
  readonly refusesBeforeStateEpoch: boolean
  /** Runs the full pipeline; on success the nonce is already durably recorded. */
  readonly verify: (input: VerifyInput) => Effect.Effect<VerifiedOp, AuthzError>
  /**
   * Every stage, the nonce only read (a nonce already recorded, or a store that cannot answer,
   * is a Replay): nothing is written. The agent spends the nonce later, in the same transaction
   * that admits the op into the journal (Journal.admit), so a signature that is rejected for its
   * role or binding, or an op killed before it was journaled, never burns the operator's nonce.
   */
  readonly check: (input: VerifyInput) => Effect.Effect<VerifiedOp, AuthzError>
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

/**
 * The signer whose key blob is byte-equal to `blob`. Every signer is compared (no early exit),
 * each comparison constant-time once the lengths match.
 */
export const allowListed = (signers: ReadonlyArray<Signer>, blob: Uint8Array): Signer | undefined => {
  let found: Signer | undefined
  for (const s of signers) if (bytesEqual(s.key.blob, blob) && found === undefined) found = s
  return found
}

/** verify prunes expired nonces at most this often (Clock time); `pruneNonces` runs at once. */
export const PRUNE_INTERVAL_MS = 60_000

/**
 * Forgets nonces that expired at or before the bound (`now - skew`). The bound is on the bare
 * column so the `nonces_expiry` index answers it: SEARCH USING COVERING INDEX, where the old
 * `expires_at_ms + skew <= now` scanned the whole table.
 */
export const NONCE_PRUNE_SQL = "DELETE FROM nonces WHERE expires_at_ms <= ? RETURNING 1 AS n"

export const signerInfo = (s: Signer): SignerInfo => ({ keyId: s.keyId, role: s.role, type: s.key.type, fingerprint: s.key.fingerprint })

// ---------------------------------------------------------------------------------------------

// Time window and state epoch: pure, so they can run (and be tested) apart from the nonce store.

export interface TimePolicy {
  readonly skewMs: number
  readonly maxValidityMs: number
  /** Ops issued (give or take the skew) before this are refused; null: no epoch check. */
  readonly stateEpochMs: number | null
}

export interface OpTimes {
  readonly notBeforeMs: number | undefined
  readonly expiresAtMs: number
}

/** `not_before`, or when absent the earliest issue time the maximum validity allows. */
export const issueTimeOf = (t: OpTimes, maxValidityMs: number): number => t.notBeforeMs ?? t.expiresAtMs - maxValidityMs

const iso = (ms: number) => new Date(ms).toISOString()
const span = (ms: number) => {
  const s = Math.round(ms / 1000)
  return s % 3600 === 0 ? `${s / 3600} h` : s % 60 === 0 ? `${s / 60} min` : `${s} s`
}

/**
 * Stage "time" (not yet valid, expired, longer than the maximum validity), then stage "epoch"
 * (issued before the state database existed). Reads nothing: `nowMs` comes from the caller.
 */
export const checkTimes = (
  t: OpTimes,
  nowMs: number,
  p: TimePolicy
): Either.Either<void, NotYetValid | Expired | TooLong | StateReset> => {
  const now = iso(nowMs)
  if (t.notBeforeMs !== undefined && nowMs + p.skewMs < t.notBeforeMs) {
    return Either.left(new NotYetValid({ stage: "time", message: `op is not valid before ${iso(t.notBeforeMs)} (now ${now})` }))
  }
  if (nowMs - p.skewMs >= t.expiresAtMs) {
    return Either.left(new Expired({ stage: "time", message: `op expired at ${iso(t.expiresAtMs)} (now ${now})` }))
  }
  if (t.notBeforeMs !== undefined && t.expiresAtMs - t.notBeforeMs > p.maxValidityMs) {
    return Either.left(new TooLong({
      stage: "time",
      message: `op is valid for ${span(t.expiresAtMs - t.notBeforeMs)} (${iso(t.notBeforeMs)} to ${iso(t.expiresAtMs)}), ` +
        `longer than the maximum of ${span(p.maxValidityMs)} (authz.max_validity_seconds): re-sign with a shorter window`
    }))
  }
  // Without not_before, the op counts as issued max_validity before it expires; it cannot have
  // been issued in the future, so an expiry further away than that is a window too long.
  if (t.notBeforeMs === undefined && t.expiresAtMs - nowMs > p.maxValidityMs + p.skewMs) {
    return Either.left(new TooLong({
      stage: "time",
      message: `op has no not_before and expires at ${iso(t.expiresAtMs)}, more than the maximum validity of ` +
        `${span(p.maxValidityMs)} (authz.max_validity_seconds) from now (${now}): re-sign with a shorter window`
    }))
  }
  const issued = issueTimeOf(t, p.maxValidityMs)
  if (p.stateEpochMs !== null && issued + p.skewMs < p.stateEpochMs) {
    const how = t.notBeforeMs === undefined ? `expires_at minus the maximum validity of ${span(p.maxValidityMs)}, as it has no not_before` : "its not_before"
    return Either.left(new StateReset({
      stage: "epoch",
      message: `state was reset: re-sign. The op was issued at ${iso(issued)} (${how}), before this host's state ` +
        `database was created at ${iso(p.stateEpochMs)}; it may already have run against the lost state`
    }))
  }
  return Either.void
}

export interface AuthzOptions {
  readonly hostId: string
  readonly signers: ReadonlyArray<Signer>
  readonly clockSkewSeconds: number
  /** authz.max_validity_seconds; default DEFAULT_MAX_VALIDITY_SECONDS (a day). */
  readonly maxValiditySeconds?: number
  /**
   * Refuse ops issued before the state database was created (the state epoch stage). AuthzLive,
   * the agent's own verifier, always sets it. Off by default only for a throwaway store
   * (`op verify`, plan previews), whose fresh epoch says nothing about what already ran.
   */
  readonly refuseBeforeStateEpoch?: boolean
}

/** Reads the state epoch once, here; fails if the database has none. */
export const make = (opts: AuthzOptions): Effect.Effect<AuthzShape, DatabaseError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const skewMs = opts.clockSkewSeconds * 1000
    const stateEpochMs = yield* readStateEpoch
    const refusesBeforeStateEpoch = opts.refuseBeforeStateEpoch === true
    const policy: TimePolicy = {
      skewMs,
      maxValidityMs: (opts.maxValiditySeconds ?? DEFAULT_MAX_VALIDITY_SECONDS) * 1000,
      stateEpochMs: refusesBeforeStateEpoch ? stateEpochMs : null
    }

    const stage = <A, E>(e: Either.Either<A, E>, onLeft: (e: E) => AuthzError): Effect.Effect<A, AuthzError> =>
      Either.isRight(e) ? Effect.succeed(e.right) : Effect.fail(onLeft(e.left))

    /** Forgets the nonces of ops expired beyond the skew: the time stage refuses them, so they guard nothing. */
    const prune = (now: number) => sql.unsafe<{ n: number }>(NONCE_PRUNE_SQL, [now - skewMs])

    /**
     * Clock time of the last prune that ran inside a committed verify. Pruning is housekeeping,
     * not protection (a kept nonce only refuses more), so verify runs it at most once per
     * PRUNE_INTERVAL_MS of Clock time instead of on every op; a clock that went back prunes again.
     */
    let lastPruneMs: number | undefined
    const pruneDue = (now: number) => lastPruneMs === undefined || now - lastPruneMs >= PRUNE_INTERVAL_MS || now < lastPruneMs

    /** Prune (when due), then insert; a conflict is a replay. Any failure of the store is treated as "seen". */
    const commitNonce = (nonce: string, signer: Signer, op: string, expiresAtMs: number, now: number) => {
      const pruning = pruneDue(now)
      return Effect.gen(function*() {
        if (pruning) yield* prune(now)
        const rows = yield* sql<{ nonce: string }>`
          INSERT INTO nonces (nonce, signer_fingerprint, op, expires_at_ms, recorded_at_ms)
          VALUES (${nonce}, ${signer.key.fingerprint}, ${op}, ${expiresAtMs}, ${now})
          ON CONFLICT (nonce) DO NOTHING
          RETURNING nonce`
        return rows.length === 1
      }).pipe(
        sql.withTransaction,
        Effect.tap(() => {
          if (pruning) lastPruneMs = now
        }),
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
    }

    /**
     * Stages 3 (public key), 4 (allow-list) and 5 (signature), as one synchronous step.
     *
     * The embedded key blob is matched against the allow-list by bytes BEFORE it is parsed into
     * a crypto key: every allow-listed blob was fully parsed (type, structure, key material) when
     * the signers were loaded, so a byte-equal blob needs no second parse, and its KeyObject is
     * the signer's own. Only a blob that matches no signer is parsed here, to tell a malformed or
     * unsupported key (stage public_key) from a well-formed unknown one (stage allow_list). So
     * every input gets exactly the verdict, stage and message of parse-then-match, in that order.
     */
    const signatureStages = (
      sig: ParsedSshsig,
      blob: Uint8Array
    ): Either.Either<{ readonly signer: Signer; readonly checked: SshsigVerified }, AuthzError> => {
      const signer = allowListed(opts.signers, sig.publicKey)
      if (signer === undefined) {
        const key = parsePublicKeyBlob(sig.publicKey)
        if (Either.isLeft(key)) return Either.left(new Malformed({ stage: "public_key", message: key.left.message }))
        return Either.left(new UnknownSigner({
          stage: "allow_list",
          message: `signing key ${key.right.type} ${key.right.fingerprint} is not an allow-listed operator key`
        }))
      }
      const checked = verifySignatureBlob(sig, signer.key, OP_NAMESPACE, blob, { requireUserPresence: true })
      if (Either.isLeft(checked)) {
        const e = checked.left
        return Either.left(
          e.kind === "Namespace"
            ? new Namespace({ stage: "namespace", message: e.message })
            : new BadSignature({ stage: "signature", message: e.message })
        )
      }
      return Either.right({ signer, checked: checked.right })
    }

    /** Stages 1 to 9: everything but the nonce. Writes nothing. */
    const check = (input: VerifyInput, now: number) =>
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
        // 3. public key, 4. allow-list by key material (key_id is never used for matching),
        // 5. crypto over the raw received bytes (never re-serialized)
        const { checked, signer } = yield* signatureStages(sig, input.blob)
        // 6. parse the blob
        const blob = yield* stage(decodeOpBlob(input.blob), (m) => new Malformed({ stage: "blob", message: m }))
        // 7. target
        if (blob.host_id !== opts.hostId) {
          return yield* new Target({
            stage: "target",
            message: `op is for host ${JSON.stringify(blob.host_id)}, this host is ${JSON.stringify(opts.hostId)}`
          })
        }
        // 8. time window (skew-tolerant, bounded length), 9. state epoch: pure, on `now`
        yield* checkTimes({ notBeforeMs: blob.not_before, expiresAtMs: blob.expires_at }, now, policy)
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
        return { verified, signer }
      })

    const verify = (input: VerifyInput): Effect.Effect<VerifiedOp, AuthzError> =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const { signer, verified } = yield* check(input, now)
        // 10. nonce, last: only a fully valid op consumes it
        yield* commitNonce(verified.nonce, signer, verified.op, verified.expiresAtMs, now)
        return verified
      })

    const checkOnly = (input: VerifyInput): Effect.Effect<VerifiedOp, AuthzError> =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const { verified } = yield* check(input, now)
        const seen = yield* sql<{ n: number }>`SELECT 1 AS n FROM nonces WHERE nonce = ${verified.nonce}`.pipe(
          Effect.map((rows) => rows.length > 0),
          Effect.catchAllCause(() => Effect.succeed(true)) // a store that cannot answer: fail safe
        )
        if (seen) {
          return yield* new Replay({ stage: "nonce", message: "this op's nonce was already used (or the store cannot tell): replay refused" })
        }
        return verified
      })

    const pruneNonces = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const rows = yield* prune(now)
      lastPruneMs = now
      return rows.length
    }).pipe(Effect.orElseSucceed(() => 0))

    const shape: AuthzShape = { signers: opts.signers.map(signerInfo), stateEpochMs, refusesBeforeStateEpoch, verify, check: checkOnly, pruneNonces }
    return shape
  })

/**
 * The agent's verifier: AgentConfig's host_id and authz block (every bad signer line is a
 * ConfigError), the state epoch enforced.
 */
export const AuthzLive = Layer.effect(
  Authz,
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    if (file.host_id === undefined) return yield* new ConfigError({ key: "host_id", message: "host_id: required to verify signed ops" })
    if (file.authz === undefined) return yield* new ConfigError({ key: "authz", message: "authz: the authz block is not configured" })
    const signers = yield* parseSigners(file.authz.signers)
    return yield* make({
      hostId: file.host_id,
      signers,
      clockSkewSeconds: file.authz.clock_skew_seconds,
      maxValiditySeconds: file.authz.max_validity_seconds,
      refuseBeforeStateEpoch: true
    })
  })
).pipe(Layer.ensureRequirementsType<SqlClient.SqlClient | AgentConfig>())
