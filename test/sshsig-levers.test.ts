/**
 * The verifier's performance levers (issue 9) keep its behaviour: the parsed-key cache (bounded,
 * exact bytes, never hands out a key whose blob was written into), the per-(namespace, hash)
 * signed-data prefix, the copy-free armor decoding, the allow-list match before the key parse
 * (same verdicts, stages and messages), and the nonce prune (indexed, at most once a minute on
 * verify). The strictness itself is covered by sshsig*.test.ts and authz.test.ts, unchanged.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, TestClock } from "effect"
import * as crypto from "node:crypto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { make as makeAuthz, NONCE_PRUNE_SQL, parseSigners, PRUNE_INTERVAL_MS } from "../src/layers/Authz.js"
import { layerAt } from "../src/layers/Database.js"
import { OP_NAMESPACE } from "../src/schema/op.js"
import { KEY_CACHE_SIZE, keyCacheSize, strictBase64 } from "../src/schema/sshkeys.js"
import {
  dearmor,
  FELHOM_OP_NAMESPACE,
  parsePublicKeyBlob,
  parseSignatureBlob,
  signedData,
  verifySignatureBlob
} from "../src/schema/sshsig.js"
import { armor, makeKey, signSshsig, sshsigBlob, sshsigSignedData, sshString } from "./sshsig-sign.js"

const right = <A, E>(e: Either.Either<A, E>): A => {
  if (Either.isLeft(e)) throw new Error(`expected success, got ${JSON.stringify(e.left)}`)
  return e.right
}

describe("parsed-key cache", () => {
  it("equal bytes give the same parsed key, whatever array holds them", () => {
    const k = makeKey("ecdsa-sha2-nistp256")
    const a = right(parsePublicKeyBlob(k.publicKey.blob))
    const b = right(parsePublicKeyBlob(Buffer.from(k.publicKey.blob)))
    expect(b).toBe(a)
    expect(Object.getPrototypeOf(a.blob)).toBe(Uint8Array.prototype)
  })

  it("stays bounded, keeps what is in use, and re-parses what it evicted", () => {
    const hot = makeKey("ssh-ed25519")
    const hotKey = right(parsePublicKeyBlob(hot.publicKey.blob))
    const first = makeKey("ssh-ed25519")
    const firstKey = right(parsePublicKeyBlob(first.publicKey.blob))
    for (let i = 0; i < 2 * KEY_CACHE_SIZE; i++) {
      right(parsePublicKeyBlob(makeKey("ssh-ed25519").publicKey.blob))
      expect(right(parsePublicKeyBlob(hot.publicKey.blob))).toBe(hotKey) // used all along: kept
      expect(keyCacheSize()).toBeLessThanOrEqual(KEY_CACHE_SIZE)
    }
    const again = right(parsePublicKeyBlob(first.publicKey.blob))
    expect(again).not.toBe(firstKey) // evicted, parsed afresh, and the same key
    expect(again.fingerprint).toBe(firstKey.fingerprint)
    expect(again.key.equals(firstKey.key)).toBe(true)
  })

  it("a rejected blob takes no slot and is rejected again", () => {
    const k = makeKey("ecdsa-sha2-nistp256")
    const offCurve = Buffer.from(k.publicKey.blob)
    offCurve[offCurve.length - 1]! ^= 1
    const before = keyCacheSize()
    for (let i = 0; i < 3; i++) {
      const r = parsePublicKeyBlob(offCurve)
      expect(Either.isLeft(r) && r.left.message).toMatch(/rejected the key material/)
    }
    expect(keyCacheSize()).toBe(before)
  })

  it("a key whose blob a caller wrote into is never handed out again", () => {
    const k = makeKey("ssh-ed25519")
    const message = Buffer.from("op")
    const sig = right(parseSignatureBlob(right(dearmor(signSshsig({ message, namespace: OP_NAMESPACE, key: k })))))
    const shared = right(parsePublicKeyBlob(k.publicKey.blob))
    ;(shared.blob as Uint8Array)[20]! ^= 0xff
    const fresh = right(parsePublicKeyBlob(k.publicKey.blob))
    expect(fresh).not.toBe(shared)
    expect(Buffer.from(fresh.blob).equals(Buffer.from(k.publicKey.blob))).toBe(true)
    right(verifySignatureBlob(sig, fresh, OP_NAMESPACE, message))
    // the damaged one fails closed: its blob no longer names the signature's key
    expect(Either.isLeft(verifySignatureBlob(sig, shared, OP_NAMESPACE, message))).toBe(true)
  })
})

describe("signed data and decoding", () => {
  it.prop(
    "signedData is the reference layout for any namespace, hash and message (more namespaces than the prefix cache holds)",
    [fc.array(fc.string({ minLength: 1, maxLength: 20 }), { minLength: 20, maxLength: 30 }), fc.uint8Array({ maxLength: 300 })],
    ([namespaces, message]) => {
      for (const ns of [...namespaces, "felhom-op-v1", "fïlé"]) {
        for (const hash of ["sha256", "sha512"] as const) {
          expect(Buffer.from(signedData(ns, hash, message)).equals(sshsigSignedData(ns, hash, message))).toBe(true)
        }
      }
    },
    { fastCheck: { numRuns: 20 } }
  )

  it("dearmor gives a plain Uint8Array; a parsed signature owns its bytes", () => {
    const k = makeKey("ssh-ed25519")
    const blob = right(dearmor(signSshsig({ message: Buffer.from("x"), namespace: OP_NAMESPACE, key: k })))
    expect(Object.getPrototypeOf(blob)).toBe(Uint8Array.prototype)
    const input = Buffer.from(blob)
    const parsed = right(parseSignatureBlob(input))
    const snapshot = [Buffer.from(parsed.publicKey), Buffer.from(parsed.signature)]
    input.fill(0)
    expect(Buffer.from(parsed.publicKey).equals(snapshot[0]!)).toBe(true)
    expect(Buffer.from(parsed.signature).equals(snapshot[1]!)).toBe(true)
    expect(Object.getPrototypeOf(parsed.publicKey)).toBe(Uint8Array.prototype)
  })

  it.prop(
    "strict base64: the padding-bits check accepts exactly the canonical encodings",
    [fc.uint8Array({ minLength: 1, maxLength: 8 }), fc.integer({ min: 0, max: 63 })],
    ([bytes, symbol]) => {
      const canonical = Buffer.from(bytes).toString("base64")
      const pad = canonical.endsWith("==") ? 2 : canonical.endsWith("=") ? 1 : 0
      const at = canonical.length - pad - 1
      const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
      const s = canonical.slice(0, at) + alphabet[symbol] + canonical.slice(at + 1)
      const reencodes = Buffer.from(s, "base64").toString("base64") === s
      expect(Either.isRight(strictBase64(s, "x"))).toBe(reencodes)
      if (reencodes) expect(Buffer.from(right(strictBase64(s, "x"))).equals(Buffer.from(s, "base64"))).toBe(true)
    },
    { fastCheck: { numRuns: 300 } }
  )
})

// ---------------------------------------------------------------------------------------------
// Authz

const HOST = "host-levers"
const alice = makeKey("ssh-ed25519")
const iso = (ms: number) => new Date(ms).toISOString()
const opBlob = (expiresAtMs: number) =>
  new TextEncoder().encode(JSON.stringify({
    op: "decommission",
    host_id: HOST,
    guest_id: 105,
    params: {},
    nonce: crypto.randomBytes(32).toString("base64url"),
    expires_at: iso(expiresAtMs),
    key_id: "alice"
  }))
const signed = (blob: Uint8Array) => ({ blob, signature: signSshsig({ message: blob, namespace: OP_NAMESPACE, key: alice }) })

const withAuthz = <A, E>(body: (authz: Effect.Effect.Success<ReturnType<typeof makeAuthz>>) => Effect.Effect<A, E, SqlClient.SqlClient>) =>
  Effect.gen(function*() {
    const signers = yield* parseSigners([`role=operational,key-id=alice ${alice.publicKey.line}`])
    return yield* body(yield* makeAuthz({ hostId: HOST, signers, clockSkewSeconds: 60 }))
  }).pipe(Effect.provide(layerAt(join(mkdtempSync(join(tmpdir(), "felhom-levers-")), "state.db"))))

const nonceCount = Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ n: number }>`SELECT count(*) AS n FROM nonces`).pipe(
  Effect.map((rows) => rows[0]!.n)
)

describe("Authz: the allow-list is matched before the key is parsed, with the same verdicts", () => {
  it.effect("an unknown key with an off-curve point is still Malformed at public_key; a good unknown key is UnknownSigner", () =>
    withAuthz((authz) =>
      Effect.gen(function*() {
        const blob = opBlob(3_600_000)
        const mallory = makeKey("ecdsa-sha2-nistp256")
        const good = signSshsig({ message: blob, namespace: OP_NAMESPACE, key: mallory })
        const e1 = yield* Effect.flip(authz.verify({ blob, signature: good }))
        expect([e1._tag, e1.stage]).toEqual(["UnknownSigner", "allow_list"])
        const parsed = right(parseSignatureBlob(right(dearmor(good))))
        const offCurve = Buffer.from(parsed.publicKey)
        offCurve[offCurve.length - 1]! ^= 1
        const tampered = armor(sshsigBlob({ ...parsed, publicKey: offCurve }))
        const e2 = yield* Effect.flip(authz.verify({ blob, signature: tampered }))
        expect([e2._tag, e2.stage]).toEqual(["Malformed", "public_key"])
        expect(e2.message).toMatch(/rejected the key material/)
        // a structurally bad key (a type with nothing after it) too
        const truncated = armor(sshsigBlob({ ...parsed, publicKey: sshString("ecdsa-sha2-nistp256") }))
        const e3 = yield* Effect.flip(authz.verify({ blob, signature: truncated }))
        expect([e3._tag, e3.stage]).toEqual(["Malformed", "public_key"])
        expect(yield* nonceCount).toBe(0)
      })))
})

describe("nonce prune", () => {
  it.effect("the prune query is answered by the nonces_expiry index", () =>
    withAuthz(() =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const plan = yield* sql.unsafe<{ detail: string }>(`EXPLAIN QUERY PLAN ${NONCE_PRUNE_SQL}`, [0])
        expect(plan.map((r) => r.detail).join(" | ")).toMatch(/SEARCH nonces USING (COVERING )?INDEX nonces_expiry/)
      })))

  it.effect("verify prunes at most once per PRUNE_INTERVAL_MS of Clock time; pruneNonces at once", () =>
    withAuthz((authz) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const stale = (nonce: string) =>
          sql`INSERT INTO nonces (nonce, signer_fingerprint, op, expires_at_ms, recorded_at_ms)
              VALUES (${nonce}, ${"SHA256:x"}, ${"decommission"}, ${-10 * 60_000}, ${0})`
        yield* authz.verify(signed(opBlob(3_600_000))) // t = 0: the first verify prunes
        yield* stale("stale-1")
        yield* TestClock.adjust(PRUNE_INTERVAL_MS - 1)
        yield* authz.verify(signed(opBlob(3_600_000)))
        expect(yield* nonceCount).toBe(3) // not due yet: the stale row stays
        yield* TestClock.adjust(1)
        yield* authz.verify(signed(opBlob(3_600_000)))
        expect(yield* nonceCount).toBe(3) // due: stale-1 pruned, the new nonce recorded
        yield* stale("stale-2")
        expect(yield* authz.pruneNonces).toBe(1)
        expect(yield* nonceCount).toBe(3)
      })))
})

describe("the fixtures still verify through the cached path", () => {
  it("every parse returns the cached key and the signature verifies", () => {
    const k = makeKey("ecdsa-sha2-nistp256")
    const message = Buffer.from("{}")
    for (let i = 0; i < 5; i++) {
      const sig = right(parseSignatureBlob(right(dearmor(signSshsig({ message, namespace: FELHOM_OP_NAMESPACE, key: k })))))
      right(verifySignatureBlob(sig, right(parsePublicKeyBlob(sig.publicKey)), FELHOM_OP_NAMESPACE, message))
    }
  })
})
