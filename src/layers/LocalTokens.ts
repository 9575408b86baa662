/**
 * LocalTokens (issue 11): the per-guest bearer tokens of the local API. A token is minted at a
 * controller deploy (256 random bits, src/schema/localApi.ts for the format), handed to the guest
 * once through its bootstrap files, and stored here only as sha256 of its secret (migration 0009).
 * Verification parses the token, looks its public id up in memory and compares the secret's hash
 * in constant time; a revoked token (guest decommissioned, token rotated) fails at once, because
 * revocation updates the in-memory index in the same call that commits it.
 *
 * Store failures are JournalError. `verify` never fails; anything unusable reads as no guest.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import { VmId as VmIdSchema } from "../schema/ids.js"
import type { VmId } from "../schema/ids.js"
import { LOCAL_TOKEN_PREFIX, parseLocalToken } from "../schema/localApi.js"
import { JournalError } from "./Journal.js"

export interface MintedToken {
  /** The public lookup id (also in the journal of the op that minted it). */
  readonly id: string
  readonly token: Redacted.Redacted<string>
}

export interface TokenRecord {
  readonly id: string
  readonly vmid: VmId
  readonly createdMs: number
  readonly revokedMs: number | null
}

export interface LocalTokensShape {
  /** Mints a token for `vmid` with the given id (the caller journals the id first); other tokens of the guest stay valid. */
  readonly mint: (vmid: VmId, id: string) => Effect.Effect<MintedToken, JournalError>
  /** A fresh random token id (16 hex), to journal before `mint`. */
  readonly newId: Effect.Effect<string>
  /** The guest a presented token authorizes, if it is well-formed, known and not revoked. */
  readonly verify: (presented: string) => Effect.Effect<Option.Option<{ readonly vmid: VmId; readonly tokenId: string }>>
  /** Revokes one token (idempotent: an unknown or revoked id is left as it is). */
  readonly revoke: (id: string) => Effect.Effect<void, JournalError>
  /** Revokes every token of a guest except `keep`; returns how many were revoked. */
  readonly revokeGuest: (vmid: VmId, keep?: string) => Effect.Effect<number, JournalError>
  /** Tokens of a guest (newest first), revoked ones included. */
  readonly forGuest: (vmid: VmId) => Effect.Effect<ReadonlyArray<TokenRecord>, JournalError>
}

export class LocalTokens extends Context.Tag("felhom/LocalTokens")<LocalTokens, LocalTokensShape>() {}

// ---------------------------------------------------------------------------------------------
// Live: SQLite (migration 0009) + an in-memory index of the live tokens

const TokenRow = Schema.Struct({
  id: Schema.String,
  vmid: VmIdSchema,
  secret_sha256: Schema.Uint8ArrayFromSelf,
  created_ms: Schema.Int,
  revoked_ms: Schema.NullOr(Schema.Int)
})

const TOKEN_ID = /^[0-9a-f]{16}$/

const storeError = (what: string) => (e: unknown) =>
  new JournalError({
    message: `local token store: ${what}: ${typeof e === "object" && e !== null && "message" in e && typeof e.message === "string" ? e.message : String(e)}`
  })

const sha256 = (s: string): Buffer => createHash("sha256").update(s, "utf8").digest()

// Compared against when the id is unknown, so a miss costs the same hash and compare as a hit.
const DUMMY_HASH = Buffer.alloc(32)

export const makeLocalTokens = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql`SELECT id, vmid, secret_sha256, created_ms, revoked_ms FROM local_tokens`.pipe(
    Effect.flatMap(Schema.decodeUnknown(Schema.Array(TokenRow))),
    Effect.mapError(storeError("loading tokens"))
  )
  // Only live tokens are indexed: verify never reads the database, so a flood costs one hash each.
  const live = new Map<string, { readonly vmid: VmId; readonly hash: Buffer }>()
  for (const r of rows) {
    if (r.revoked_ms === null) live.set(r.id, { vmid: r.vmid, hash: Buffer.from(r.secret_sha256) })
  }

  const newId: LocalTokensShape["newId"] = Effect.sync(() => randomBytes(8).toString("hex"))

  const mint: LocalTokensShape["mint"] = (vmid, id) =>
    Effect.gen(function*() {
      if (!TOKEN_ID.test(id)) return yield* Effect.fail(new JournalError({ message: "local token store: a token id is 16 lower-case hex" }))
      const secret = randomBytes(32).toString("base64url")
      const hash = sha256(secret)
      const now = yield* Clock.currentTimeMillis
      // a reused id fails on the primary key: it never replaces another guest's token
      yield* sql`INSERT INTO local_tokens (id, vmid, secret_sha256, created_ms, revoked_ms)
        VALUES (${id}, ${vmid}, ${new Uint8Array(hash)}, ${now}, NULL)`.pipe(Effect.mapError(storeError("minting a token")))
      live.set(id, { vmid, hash })
      return { id, token: Redacted.make(`${LOCAL_TOKEN_PREFIX}${id}_${secret}`) } satisfies MintedToken
    })

  const verify: LocalTokensShape["verify"] = (presented) =>
    Effect.sync(() => {
      const parsed = parseLocalToken(presented)
      if (parsed === null) return Option.none()
      const entry = live.get(parsed.id)
      const ok = timingSafeEqual(sha256(parsed.secret), entry?.hash ?? DUMMY_HASH)
      return entry !== undefined && ok ? Option.some({ vmid: entry.vmid, tokenId: parsed.id }) : Option.none()
    })

  // The index drops a token before the revocation commits: if the commit fails, the token is
  // refused anyway until a restart reloads it (fail closed), and the caller sees the error.
  const revoke: LocalTokensShape["revoke"] = (id) =>
    Effect.gen(function*() {
      live.delete(id)
      const now = yield* Clock.currentTimeMillis
      yield* sql`UPDATE local_tokens SET revoked_ms = ${now} WHERE id = ${id} AND revoked_ms IS NULL`.pipe(
        Effect.mapError(storeError("revoking a token"))
      )
    })

  const revokeGuest: LocalTokensShape["revokeGuest"] = (vmid, keep) =>
    Effect.gen(function*() {
      const ids = [...live].filter(([id, e]) => e.vmid === vmid && id !== keep).map(([id]) => id)
      for (const id of ids) live.delete(id)
      const now = yield* Clock.currentTimeMillis
      const keepId = keep ?? ""
      const changed = yield* sql<{ readonly id: string }>`UPDATE local_tokens SET revoked_ms = ${now}
        WHERE vmid = ${vmid} AND id != ${keepId} AND revoked_ms IS NULL RETURNING id`.pipe(
        Effect.mapError(storeError("revoking a guest's tokens"))
      )
      // a row the index did not hold (none should exist) is revoked in the store all the same
      for (const r of changed) live.delete(r.id)
      return changed.length
    })

  const forGuest: LocalTokensShape["forGuest"] = (vmid) =>
    sql`SELECT id, vmid, secret_sha256, created_ms, revoked_ms FROM local_tokens WHERE vmid = ${vmid}
      ORDER BY created_ms DESC, id DESC`.pipe(
      Effect.flatMap(Schema.decodeUnknown(Schema.Array(TokenRow))),
      Effect.map((rs) => rs.map((r): TokenRecord => ({ id: r.id, vmid: r.vmid, createdMs: r.created_ms, revokedMs: r.revoked_ms }))),
      Effect.mapError(storeError("reading a guest's tokens"))
    )

  return { mint, newId, verify, revoke, revokeGuest, forGuest } satisfies LocalTokensShape
})

export const LocalTokensLive: Layer.Layer<LocalTokens, JournalError, SqlClient.SqlClient> = Layer.effect(LocalTokens, makeLocalTokens)
