/**
 * Authz: the signed-op pipeline end to end on a real SQLite file. Each stage rejects an
 * otherwise-valid signature; only a fully valid op consumes its nonce; replay protection
 * survives reopening the database; the store fails safe; time runs on TestClock.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, FastCheck as fc, TestClock } from "effect"
import { randomBytes } from "node:crypto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type AuthzShape, make as makeAuthz, parseSigners } from "../src/layers/Authz.js"
import { layerAt } from "../src/layers/Database.js"
import { OP_NAMESPACE } from "../src/schema/op.js"
import { makeKey, signSshsig, type TestKey } from "./sshsig-sign.js"

const HOST = "host-7f3c2a90"
const alice = makeKey("ssh-ed25519", { comment: "alice@laptop" })
const bob = makeKey("ecdsa-sha2-nistp256", { comment: "bob@safe" })
const fido = makeKey("sk-ssh-ed25519@openssh.com", { comment: "carol@yubikey" })
const mallory = makeKey("ssh-ed25519")
const SIGNERS = [
  `role=operational,key-id=alice ${alice.publicKey.line}`,
  `role=recovery,key-id=bob ${bob.publicKey.line}`,
  `role=operational,key-id=carol ${fido.publicKey.line}`
]

const iso = (ms: number) => new Date(ms).toISOString()
const nonce = () => randomBytes(32).toString("base64url")
const enc = (s: string) => new TextEncoder().encode(s)

/** An op blob's exact bytes; `at` is "now" on the TestClock (0 at the start of each test). */
const blob = (fields: Record<string, unknown> = {}, at = 0) =>
  enc(JSON.stringify({
    op: "decommission",
    host_id: HOST,
    guest_id: 105,
    params: { reason: "customer left" },
    nonce: nonce(),
    expires_at: iso(at + 3_600_000),
    key_id: "alice",
    ...fields
  }))

const sign = (bytes: Uint8Array, key: TestKey = alice, extra: Partial<Parameters<typeof signSshsig>[0]> = {}) =>
  signSshsig({ message: bytes, namespace: OP_NAMESPACE, key, ...extra })

const dbFile = () => join(mkdtempSync(join(tmpdir(), "felhom-authz-")), "state.db")

const withAuthz = <A, E>(path: string, body: (authz: AuthzShape) => Effect.Effect<A, E, SqlClient.SqlClient>) =>
  Effect.gen(function*() {
    const signers = yield* parseSigners(SIGNERS)
    const authz = yield* makeAuthz({ hostId: HOST, signers, clockSkewSeconds: 60 })
    return yield* body(authz)
  }).pipe(Effect.provide(layerAt(path)))

const nonceCount = Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ n: number }>`SELECT count(*) AS n FROM nonces`).pipe(
  Effect.map((rows) => rows[0]!.n)
)

const rejected = (authz: AuthzShape, bytes: Uint8Array, signature: string | Uint8Array) =>
  Effect.flip(authz.verify({ blob: bytes, signature }))

describe("Authz pipeline", () => {
  it.effect("a valid op verifies and returns op, host, guest, params, key_id and the matched signer", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const b = blob()
        const v = yield* authz.verify({ blob: b, signature: sign(b) })
        expect(v.op).toBe("decommission")
        expect(v.hostId).toBe(HOST)
        expect(v.guestId).toBe(105)
        expect(v.params).toEqual({ reason: "customer left" })
        expect(v.claimedKeyId).toBe("alice")
        expect(v.signer).toMatchObject({ keyId: "alice", role: "operational", type: "ssh-ed25519" })
        expect(yield* nonceCount).toBe(1)
      })))

  it.effect("the signer's role comes from the allow-list: a recovery key verifies as recovery", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        // the blob claims key_id alice; matching is by key bytes, so it is bob (recovery)
        const b = blob({ op: "rotate-recovery-code", guest_id: null })
        const v = yield* authz.verify({ blob: b, signature: sign(b, bob) })
        expect(v.signer).toMatchObject({ keyId: "bob", role: "recovery" })
        expect(v.claimedKeyId).toBe("alice")
      })))

  it.effect("FIDO: a touched sk signature verifies and carries flags and counter; no touch is BadSignature", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const b = blob()
        const v = yield* authz.verify({ blob: b, signature: sign(b, fido, { flags: 0x05, counter: 42 }) })
        expect(v.sk).toEqual({ flags: 0x05, counter: 42 })
        const b2 = blob()
        const e = yield* rejected(authz, b2, sign(b2, fido, { flags: 0x00 }))
        expect(e._tag).toBe("BadSignature")
        expect(yield* nonceCount).toBe(1)
      })))

  describe("each stage rejects an otherwise-valid signature, and no rejected op burns its nonce", () => {
    const cases: ReadonlyArray<readonly [string, string, string, (b: Uint8Array) => readonly [Uint8Array, string]]> = [
      ["armor: a junk character in the base64", "Malformed", "armor", (b) => {
        const s = sign(b).split("\n")
        s[1] = s[1]!.slice(0, 10) + "*" + s[1]!.slice(10)
        return [b, s.join("\n")]
      }],
      ["namespace: signed for 'file'", "Namespace", "namespace", (b) => [b, signSshsig({ message: b, namespace: "file", key: alice })]],
      // the field passes the namespace stage, but the signed data was built for "file"
      ["signature: blob relabelled to felhom-op-v1 after signing for 'file'", "BadSignature", "signature", (b) =>
        [b, signSshsig({ message: b, namespace: "file", key: alice, blobNamespace: OP_NAMESPACE })]],
      ["public key: RSA below 2048 bits", "Malformed", "public_key", (b) => [b, sign(b, makeKey("ssh-rsa", { bits: 1024 }))]],
      ["allow-list: an unknown key", "UnknownSigner", "allow_list", (b) => [b, sign(b, mallory)]],
      ["signature: made over other bytes", "BadSignature", "signature", (b) => [b, sign(blob())]],
      ["blob: not JSON", "Malformed", "blob", () => {
        const b = enc("decommission 105 please")
        return [b, sign(b)]
      }],
      ["blob: an unknown field", "Malformed", "blob", () => {
        const b = blob({ force: true })
        return [b, sign(b)]
      }],
      ["target: another host", "Target", "target", () => {
        const b = blob({ host_id: "host-other" })
        return [b, sign(b)]
      }],
      ["time: expired beyond the skew", "Expired", "time", () => {
        const b = blob({ expires_at: iso(-61_000) })
        return [b, sign(b)]
      }],
      ["time: not yet valid beyond the skew", "NotYetValid", "time", () => {
        const b = blob({ not_before: iso(61_000) })
        return [b, sign(b)]
      }]
    ]
    for (const [name, tag, stage, build] of cases) {
      it.effect(name, () =>
        withAuthz(dbFile(), (authz) =>
          Effect.gen(function*() {
            const [b, signature] = build(blob())
            const e = yield* rejected(authz, b, signature)
            expect(e._tag).toBe(tag)
            expect(e.stage).toBe(stage)
            expect(yield* nonceCount).toBe(0)
          })))
    }
  })

  it.effect("the skew tolerance accepts an op just expired or just not yet valid", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const late = blob({ expires_at: iso(-59_000) })
        yield* authz.verify({ blob: late, signature: sign(late) })
        const early = blob({ not_before: iso(59_000) })
        yield* authz.verify({ blob: early, signature: sign(early) })
      })))

  it.effect("stage order: an earlier stage's verdict wins", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        // unknown signer AND wrong host: the allow-list comes first
        const b1 = blob({ host_id: "elsewhere" })
        expect((yield* rejected(authz, b1, sign(b1, mallory)))._tag).toBe("UnknownSigner")
        // wrong host AND expired: target comes before time
        const b2 = blob({ host_id: "elsewhere", expires_at: iso(-3_600_000) })
        expect((yield* rejected(authz, b2, sign(b2)))._tag).toBe("Target")
        // bad signature AND malformed blob: crypto comes before parsing the blob
        const b3 = enc("{not json")
        expect((yield* rejected(authz, b3, sign(enc("{other"))))._tag).toBe("BadSignature")
      })))

  it.effect("an invalid signature does not burn the nonce: the same op with a good signature then runs", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const b = blob()
        const forged = sign(b, mallory)
        expect((yield* rejected(authz, b, forged))._tag).toBe("UnknownSigner")
        const wrongBytes = sign(blob())
        expect((yield* rejected(authz, b, wrongBytes))._tag).toBe("BadSignature")
        yield* authz.verify({ blob: b, signature: sign(b) })
      })))

  it.effect("byte-exact: a re-serialized, semantically equal blob fails crypto", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const b = blob()
        const signature = sign(b)
        const pretty = enc(JSON.stringify(JSON.parse(new TextDecoder().decode(b)), null, 2))
        expect((yield* rejected(authz, pretty, signature))._tag).toBe("BadSignature")
        const trailingNewline = enc(new TextDecoder().decode(b) + "\n")
        expect((yield* rejected(authz, trailingNewline, signature))._tag).toBe("BadSignature")
        yield* authz.verify({ blob: b, signature })
      })))

  it.effect("replay is refused in the same process", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const b = blob()
        const signature = sign(b)
        yield* authz.verify({ blob: b, signature })
        const e = yield* rejected(authz, b, signature)
        expect(e._tag).toBe("Replay")
        expect(e.stage).toBe("nonce")
        // a different op reusing the nonce is a replay too: nonces are global
        const parsed = JSON.parse(new TextDecoder().decode(b)) as { nonce: string }
        const other = blob({ op: "restore-now", nonce: parsed.nonce })
        expect((yield* rejected(authz, other, sign(other)))._tag).toBe("Replay")
      })))

  it.effect("replay is refused after closing and reopening the database", () =>
    Effect.gen(function*() {
      const path = dbFile()
      const b = blob()
      const signature = sign(b)
      yield* withAuthz(path, (authz) => authz.verify({ blob: b, signature }))
      // a new connection to the same file, as after a restart
      const e = yield* withAuthz(path, (authz) => rejected(authz, b, signature))
      expect(e._tag).toBe("Replay")
    }))

  it.effect("the nonce is committed (visible to another connection) before verify returns", () =>
    Effect.gen(function*() {
      const path = dbFile()
      const b = blob()
      const seen = yield* withAuthz(path, (authz) =>
        Effect.gen(function*() {
          yield* authz.verify({ blob: b, signature: sign(b) })
          // a second, independent connection (another process would see the same)
          return yield* nonceCount.pipe(Effect.provide(layerAt(path)))
        }))
      expect(seen).toBe(1)
    }))

  it.effect("a nonce store that cannot answer fails safe: the op is rejected as a replay", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`DROP TABLE nonces`
        const b = blob()
        const e = yield* rejected(authz, b, sign(b))
        expect(e._tag).toBe("Replay")
        expect(e.message).toContain("fail safe")
      })))

  it.effect("expired nonces are pruned under TestClock, never before their expiry plus skew", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const b = blob({ expires_at: iso(10 * 60_000) })
        yield* authz.verify({ blob: b, signature: sign(b) })
        yield* TestClock.adjust("10 minutes")
        expect(yield* authz.pruneNonces).toBe(0) // expired, but still inside the skew
        expect(yield* nonceCount).toBe(1)
        yield* TestClock.adjust("59 seconds")
        expect(yield* authz.pruneNonces).toBe(0)
        yield* TestClock.adjust("1 second")
        // now the op itself would be refused as Expired, so forgetting its nonce is safe
        const e = yield* rejected(authz, b, sign(b))
        expect(e._tag).toBe("Expired")
        expect(yield* authz.pruneNonces).toBe(1)
        expect(yield* nonceCount).toBe(0)
      })))

  it.effect("verifying prunes expired nonces as it goes", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const short = blob({ expires_at: iso(60_000) })
        yield* authz.verify({ blob: short, signature: sign(short) })
        yield* TestClock.adjust("3 minutes")
        const next = blob({ expires_at: iso(3 * 60_000 + 3_600_000) })
        yield* authz.verify({ blob: next, signature: sign(next) })
        expect(yield* nonceCount).toBe(1)
      })))
})

describe("Authz property: mutations never verify and never die", () => {
  const base = blob({ expires_at: iso(10 * 365 * 86_400_000) })
  const baseSig = sign(base)
  const mutate = (bytes: Uint8Array, at: number, kind: number, value: number): Uint8Array => {
    const b = Array.from(bytes)
    const i = at % Math.max(1, b.length)
    if (kind === 0) b[i] = (b[i]! ^ (1 + (value % 255))) & 0xff
    else if (kind === 1) b.splice(i, 0, value & 0xff)
    else if (kind === 2) b.splice(i, 1)
    else b.length = i
    return Uint8Array.from(b)
  }
  const mutation = fc.tuple(fc.nat(), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 255 }))

  it.effect.prop(
    "a mutated blob or armor is a typed rejection, never success, never a defect",
    [mutation, fc.boolean()],
    ([[at, kind, value], mutateArmor]) =>
      withAuthz(dbFile(), (authz) =>
        Effect.gen(function*() {
          const sigBytes = enc(baseSig)
          const input = mutateArmor
            ? { blob: base, signature: mutate(sigBytes, at, kind, value) }
            : { blob: mutate(base, at, kind, value), signature: baseSig }
          const exit = yield* Effect.exit(authz.verify(input))
          if (Exit.isSuccess(exit)) {
            // only a mutation that changed nothing (e.g. base64 whitespace) may still verify
            expect(mutateArmor).toBe(true)
            return
          }
          expect(Exit.isFailure(exit) && exit.cause._tag).toBe("Fail")
        })),
    { fastCheck: { numRuns: 60 } }
  )
})

describe("signer lines", () => {
  const line = alice.publicKey.line
  it.each([
    [`${line}`, "authz.signers[0]", "role"],
    [`role=admin,key-id=a ${line}`, "authz.signers[0]", "operational"],
    [`role=operational ${line}`, "authz.signers[0]", "key-id"],
    [`role=operational,key-id=a,from=x ${line}`, "authz.signers[0]", "unknown option"],
    [`role=operational,key-id=a ssh-ed25519 AAAA*notbase64 c`, "authz.signers[0]", "bad public key"]
  ])("%s is refused naming the line", (bad, key, hint) => {
    const r = parseSigners([bad])
    expect(Either.isLeft(r)).toBe(true)
    if (Either.isLeft(r)) {
      expect(r.left.key).toBe(key)
      expect(r.left.message).toContain(hint)
    }
  })

  it("the same key twice (two roles) is refused, naming both lines", () => {
    const r = parseSigners([`role=operational,key-id=a ${line}`, `role=recovery,key-id=b ${line}`])
    expect(Either.isLeft(r) && r.left.message).toMatch(/signers\[1\].*signers\[0\]/)
  })

  it("the example config's signers parse", async () => {
    const { readFileSync } = await import("node:fs")
    const example = JSON.parse(readFileSync(join(__dirname, "..", "configs", "agent.example.json"), "utf8")) as {
      authz: { signers: Array<string> }
    }
    const r = parseSigners(example.authz.signers)
    expect(Either.isRight(r)).toBe(true)
  })
})

