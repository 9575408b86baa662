/**
 * LocalTokens (issue 11): the per-guest bearer tokens of the local API. A token is minted at a
 * controller deploy (256 random bits, src/schema/localApi.ts for the format), handed to the guest
 * once through its bootstrap files, and stored here only as sha256 of its secret (migration 0009).
 * Verification parses the token, looks its public id up in memory and compares the secret's hash
 * in constant time; a revoked token (guest decommissioned, token rotated) fails at once, because
 * revocation updates the in-memory index in the same call that commits it.
 *
 * Store failures are JournalError. `verify` never fails: anything unusable reads as no guest.
 */
import { Context, type Effect, type Option, type Redacted } from "effect"
import type { VmId } from "../schema/ids.js"
import type { JournalError } from "./Journal.js"

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
