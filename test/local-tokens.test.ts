/**
 * LocalTokensLive (issue 11): the local API's per-guest bearer tokens on the state database.
 * Only sha256(secret) is stored; verify is constant-time over the in-memory index; a revoke is
 * effective in the same call; a restart reloads exactly the live tokens.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, FastCheck as fc, Layer, Option, Redacted } from "effect"
import { createHash } from "node:crypto"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { LocalTokens, LocalTokensLive } from "../src/layers/LocalTokens.js"
import type { VmId } from "../src/schema/ids.js"
import { LOCAL_TOKEN_PATTERN } from "../src/schema/localApi.js"

const vm = (n: number) => n as VmId
const tokensAt = (path: string) => LocalTokensLive.pipe(Layer.provideMerge(layerAt(path)))
const dbFile = () => join(mkdtempSync(join(tmpdir(), "felhom-tokens-")), "state.db")

const mintFor = (vmid: VmId) =>
  Effect.gen(function*() {
    const t = yield* LocalTokens
    const id = yield* t.newId
    const minted = yield* t.mint(vmid, id)
    return { id, token: Redacted.value(minted.token) }
  })

describe("LocalTokensLive", () => {
  it.effect("mints fla1_<16 hex>_<43 base64url> tokens that verify to their guest and token id", () =>
    Effect.gen(function*() {
      const t = yield* LocalTokens
      const a = yield* mintFor(vm(101))
      const b = yield* mintFor(vm(102))
      expect(a.token).toMatch(LOCAL_TOKEN_PATTERN)
      expect(a.token.length).toBe(65)
      expect(a.id).not.toBe(b.id)
      expect(yield* t.verify(a.token)).toEqual(Option.some({ vmid: 101, tokenId: a.id }))
      expect(yield* t.verify(b.token)).toEqual(Option.some({ vmid: 102, tokenId: b.id }))
    }).pipe(Effect.provide(tokensAt(":memory:"))))

  it.effect("stores only sha256 of the secret: no token or secret in the table", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const a = yield* mintFor(vm(101))
      const secret = a.token.slice(22)
      const rows = yield* sql<{ readonly id: string; readonly secret_sha256: Uint8Array }>`SELECT id, secret_sha256 FROM local_tokens`
      expect(rows).toHaveLength(1)
      expect(Buffer.from(rows[0]!.secret_sha256).equals(createHash("sha256").update(secret).digest())).toBe(true)
      expect(JSON.stringify(rows)).not.toContain(secret)
    }).pipe(Effect.provide(tokensAt(":memory:"))))

  it.effect("truncated, extended, case-flipped, other-secret and other-id tokens are refused", () =>
    Effect.gen(function*() {
      const t = yield* LocalTokens
      const a = yield* mintFor(vm(101))
      const b = yield* mintFor(vm(102))
      const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === s[i]!.toUpperCase() ? s[i]!.toLowerCase() : s[i]!.toUpperCase()) + s.slice(i + 1)
      const bad = [
        "",
        a.token.slice(0, -1),
        `${a.token}A`,
        ` ${a.token}`,
        a.token.toUpperCase(),
        // a letter of the secret (a digit, '-' or '_' has no case: flipping it would change nothing)
        flip(a.token, 22 + a.token.slice(22).search(/[A-Za-z]/)),
        // a's id with b's secret, and b's id with a's secret: the id does not select a guest on its own
        `fla1_${a.id}_${b.token.slice(22)}`,
        `fla1_${b.id}_${a.token.slice(22)}`,
        a.token.replace("fla1_", "fla2_")
      ]
      for (const s of bad) expect(yield* t.verify(s)).toEqual(Option.none())
    }).pipe(Effect.provide(tokensAt(":memory:"))))

  it.effect("a revoke is effective at once; revokeGuest keeps `keep` and leaves other guests alone", () =>
    Effect.gen(function*() {
      const t = yield* LocalTokens
      const a1 = yield* mintFor(vm(101))
      const a2 = yield* mintFor(vm(101))
      const a3 = yield* mintFor(vm(101))
      const b = yield* mintFor(vm(102))
      yield* t.revoke(a1.id)
      expect(yield* t.verify(a1.token)).toEqual(Option.none())
      yield* t.revoke(a1.id) // idempotent
      yield* t.revoke("0000000000000000") // unknown: nothing
      expect(yield* t.revokeGuest(vm(101), a3.id)).toBe(1)
      expect(yield* t.verify(a2.token)).toEqual(Option.none())
      expect(Option.isSome(yield* t.verify(a3.token))).toBe(true)
      expect(Option.isSome(yield* t.verify(b.token))).toBe(true)
      const recs = yield* t.forGuest(vm(101))
      expect(recs.map((r) => [r.id, r.revokedMs !== null]).sort()).toEqual(
        [[a1.id, true], [a2.id, true], [a3.id, false]].sort()
      )
      expect(yield* t.revokeGuest(vm(101))).toBe(1)
      expect(yield* t.verify(a3.token)).toEqual(Option.none())
    }).pipe(Effect.provide(tokensAt(":memory:"))))

  it.effect("a malformed id or a reused id is a typed JournalError, never a replaced token", () =>
    Effect.gen(function*() {
      const t = yield* LocalTokens
      const a = yield* mintFor(vm(101))
      const reused = yield* Effect.exit(t.mint(vm(102), a.id))
      expect(Exit.isFailure(reused)).toBe(true)
      const bad = yield* Effect.flip(t.mint(vm(102), "XYZ"))
      expect(bad._tag).toBe("JournalError")
      expect(yield* t.verify(a.token)).toEqual(Option.some({ vmid: 101, tokenId: a.id }))
    }).pipe(Effect.provide(tokensAt(":memory:"))))

  it.effect("a restart reloads live tokens and not revoked ones; the DB file holds no secret", () =>
    Effect.gen(function*() {
      const file = dbFile()
      const [a, b] = yield* Effect.gen(function*() {
        const a = yield* mintFor(vm(101))
        const b = yield* mintFor(vm(102))
        yield* (yield* LocalTokens).revoke(b.id)
        return [a, b] as const
      }).pipe(Effect.provide(tokensAt(file)))
      yield* Effect.gen(function*() {
        const t = yield* LocalTokens
        expect(yield* t.verify(a.token)).toEqual(Option.some({ vmid: 101, tokenId: a.id }))
        expect(yield* t.verify(b.token)).toEqual(Option.none())
      }).pipe(Effect.provide(tokensAt(file)))
      for (const f of [file, `${file}-wal`]) {
        let bytes = ""
        try {
          bytes = readFileSync(f).toString("latin1")
        } catch {
          continue
        }
        expect(bytes).not.toContain(a.token.slice(22))
        expect(bytes).not.toContain(b.token.slice(22))
      }
    }))

  it.effect.prop("random strings never verify (fast-check)", [fc.string({ maxLength: 80 })], ([s]) =>
    Effect.gen(function*() {
      const t = yield* LocalTokens
      yield* mintFor(vm(101))
      expect(yield* t.verify(s)).toEqual(Option.none())
    }).pipe(Effect.provide(tokensAt(":memory:"))), { fastCheck: { numRuns: 50 } })
})
