/**
 * Authz: the signed-op pipeline end to end on a real SQLite file. Each stage rejects an
 * otherwise-valid signature; only a fully valid op consumes its nonce; replay protection
 * survives reopening the database; the store fails safe; time runs on TestClock. Validity is
 * bounded, and an op issued before the state database was created is refused, so deleting
 * state.db does not reopen the door to a used op (issue 8, finding 8).
 */
import { NodeFileSystem } from "@effect/platform-node"
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, FastCheck as fc, Layer, Schema, TestClock } from "effect"
import { randomBytes } from "node:crypto"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Authz, AuthzLive, type AuthzOptions, type AuthzShape, checkTimes, make as makeAuthz, parseSigners } from "../src/layers/Authz.js"
import { layerFrom } from "../src/layers/Config.js"
import { DatabaseLive, layerAt, STATE_DB_FILE } from "../src/layers/Database.js"
import { AgentConfigFile } from "../src/schema/config.js"
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

const withAuthz = <A, E>(
  path: string,
  body: (authz: AuthzShape) => Effect.Effect<A, E, SqlClient.SqlClient>,
  opts: Partial<Pick<AuthzOptions, "maxValiditySeconds" | "refuseBeforeStateEpoch">> = {}
) =>
  Effect.gen(function*() {
    const signers = yield* parseSigners(SIGNERS)
    const authz = yield* makeAuthz({ hostId: HOST, signers, clockSkewSeconds: 60, ...opts })
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

const HOUR = 3_600_000
const DAY = 24 * HOUR

describe("bounded validity (authz.max_validity_seconds, default a day)", () => {
  it.effect("a not_before→expires_at window longer than the maximum is TooLong at stage time; exactly the maximum verifies", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const long = blob({ not_before: iso(0), expires_at: iso(DAY + 1000) })
        const e = yield* rejected(authz, long, sign(long))
        expect(e._tag).toBe("TooLong")
        expect(e.stage).toBe("time")
        expect(e.message).toContain("24 h")
        expect(e.message).toContain("authz.max_validity_seconds")
        expect(yield* nonceCount).toBe(0)
        const day = blob({ not_before: iso(0), expires_at: iso(DAY) })
        yield* authz.verify({ blob: day, signature: sign(day) })
      })))

  it.effect("without not_before, an expiry further away than the maximum (plus skew) is TooLong", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const far = blob({ expires_at: iso(DAY + 61_000) })
        const e = yield* rejected(authz, far, sign(far))
        expect(e._tag).toBe("TooLong")
        expect(e.message).toContain("no not_before")
        const year = blob({ expires_at: iso(365 * DAY) })
        expect((yield* rejected(authz, year, sign(year)))._tag).toBe("TooLong")
        expect(yield* nonceCount).toBe(0)
        const within = blob({ expires_at: iso(DAY + 59_000) })
        yield* authz.verify({ blob: within, signature: sign(within) })
      })))

  it.effect("the maximum is configurable: an hour refuses a two-hour window", () =>
    withAuthz(dbFile(), (authz) =>
      Effect.gen(function*() {
        const two = blob({ not_before: iso(0), expires_at: iso(2 * HOUR) })
        const e = yield* rejected(authz, two, sign(two))
        expect(e._tag).toBe("TooLong")
        expect(e.message).toContain("1 h")
      }), { maxValiditySeconds: 3600 }))
})

describe("state epoch: an op issued before the state database was created is refused", () => {
  const enforced = { refuseBeforeStateEpoch: true } as const

  it.effect("the epoch is the database's creation time on the Clock, read once at build", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(5 * HOUR)
      const path = dbFile()
      yield* withAuthz(path, (authz) => Effect.sync(() => expect(authz.stateEpochMs).toBe(5 * HOUR)))
      yield* TestClock.adjust("3 hours")
      // reopened later: the same file, the same epoch
      yield* withAuthz(path, (authz) => Effect.sync(() => expect(authz.stateEpochMs).toBe(5 * HOUR)), enforced)
    }))

  it.effect("without not_before, an op counts as issued max_validity before expiry: within the window but before the epoch → StateReset", () =>
    Effect.gen(function*() {
      const path = dbFile() // created at 0
      yield* TestClock.setTime(2 * HOUR)
      yield* withAuthz(path, (authz) =>
        Effect.gen(function*() {
          // expires in an hour, so valid now, but it may have been issued up to a day ago
          const b = blob({ expires_at: iso(3 * HOUR) })
          const e = yield* rejected(authz, b, sign(b))
          expect(e._tag).toBe("StateReset")
          expect(e.stage).toBe("epoch")
          expect(e.message).toContain("state was reset: re-sign")
          expect(e.message).toContain("no not_before")
          expect(yield* nonceCount).toBe(0)
        }), enforced)
      // a day after the epoch, the same shape of op is fine: its earliest issue time is after it
      yield* TestClock.setTime(DAY + 2 * HOUR)
      yield* withAuthz(path, (authz) =>
        Effect.gen(function*() {
          const b = blob({ expires_at: iso(DAY + 3 * HOUR) })
          yield* authz.verify({ blob: b, signature: sign(b) })
          expect(yield* nonceCount).toBe(1)
        }), enforced)
    }))

  it.effect("not_before is the issue time; the skew tolerance applies to the comparison with the epoch", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(10 * HOUR)
      const path = dbFile() // created at 10 h
      yield* withAuthz(path, (authz) =>
        Effect.gen(function*() {
          const epoch = authz.stateEpochMs
          const justBefore = blob({ not_before: iso(epoch - 61_000), expires_at: iso(epoch + HOUR) })
          expect((yield* rejected(authz, justBefore, sign(justBefore)))._tag).toBe("StateReset")
          const withinSkew = blob({ not_before: iso(epoch - 59_000), expires_at: iso(epoch + HOUR) })
          yield* authz.verify({ blob: withinSkew, signature: sign(withinSkew) })
          const after = blob({ not_before: iso(epoch + 1000), expires_at: iso(epoch + HOUR) })
          yield* authz.verify({ blob: after, signature: sign(after) })
          expect(yield* nonceCount).toBe(2)
        }), enforced)
    }))

  it.effect("stage order: an expired op is Expired, a too-long one TooLong, before the epoch is looked at", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(3 * DAY)
      yield* withAuthz(dbFile(), (authz) =>
        Effect.gen(function*() {
          const old = blob({ not_before: iso(0), expires_at: iso(HOUR) })
          expect((yield* rejected(authz, old, sign(old)))._tag).toBe("Expired")
          const long = blob({ not_before: iso(0), expires_at: iso(4 * DAY) })
          expect((yield* rejected(authz, long, sign(long)))._tag).toBe("TooLong")
        }), enforced)
    }))

  it("checkTimes is pure: the same inputs give the same verdict, and a null epoch skips the epoch stage", () => {
    const policy = { skewMs: 60_000, maxValidityMs: DAY, stateEpochMs: 10 * HOUR }
    const times = { notBeforeMs: 9 * HOUR, expiresAtMs: 11 * HOUR }
    const a = checkTimes(times, 10 * HOUR + 1, policy)
    expect(Either.isLeft(a) && a.left._tag).toBe("StateReset")
    expect(checkTimes(times, 10 * HOUR + 1, policy)).toEqual(a)
    expect(Either.isRight(checkTimes(times, 10 * HOUR + 1, { ...policy, stateEpochMs: null }))).toBe(true)
  })
})

describe("replay after state loss (issue 8, finding 8), through the agent's own wiring", () => {
  const T0 = Date.parse("2026-03-01T10:00:00Z")

  /** AuthzLive over DatabaseLive in `stateDir`, as the daemon builds them; SqlClient exposed to count nonces. */
  const agent = (stateDir: string, authz: Record<string, unknown> = {}) => {
    const file = Schema.decodeUnknownSync(AgentConfigFile)({
      host_id: HOST,
      state_dir: stateDir,
      authz: { signers: SIGNERS, clock_skew_seconds: 120, ...authz }
    })
    const config = Layer.merge(layerFrom(file), NodeFileSystem.layer)
    return AuthzLive.pipe(Layer.provideMerge(DatabaseLive), Layer.provide(config))
  }

  /** What `op new` makes: not_before now, expiring in an hour. */
  const freshOp = (now: number) => blob({ not_before: iso(now), expires_at: iso(now + HOUR) })

  it.effect("a used decommission is refused after state.db is deleted and re-created, and burns no nonce", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const stateDir = join(mkdtempSync(join(tmpdir(), "felhom-reset-")), "state")
      const verifyWith = <A, E>(body: (authz: AuthzShape) => Effect.Effect<A, E, SqlClient.SqlClient>) =>
        Effect.flatMap(Authz, body).pipe(Effect.provide(agent(stateDir)))

      // DB #1 comes up; the operator signs a decommission a minute later; it runs once
      yield* verifyWith(() => Effect.void)
      yield* TestClock.adjust("1 minute")
      const op = freshOp(T0 + 60_000)
      const signature = sign(op)
      yield* TestClock.adjust("30 seconds")
      const v = yield* verifyWith((authz) => authz.verify({ blob: op, signature }))
      expect(v).toMatchObject({ op: "decommission", guestId: 105 })
      expect((yield* verifyWith((authz) => rejected(authz, op, signature)))._tag).toBe("Replay")

      // the state is lost: state.db (and its WAL companions) deleted; the agent restarts
      for (const f of [STATE_DB_FILE, `${STATE_DB_FILE}-wal`, `${STATE_DB_FILE}-shm`]) rmSync(join(stateDir, f), { force: true })
      expect(existsSync(join(stateDir, STATE_DB_FILE))).toBe(false)
      yield* TestClock.adjust("5 minutes")

      // DB #2: the same op, still unexpired, is refused, and its nonce is not recorded
      const [e, nonces, epoch] = yield* verifyWith((authz) =>
        Effect.all([rejected(authz, op, signature), nonceCount, Effect.succeed(authz.stateEpochMs)]))
      expect(e._tag).toBe("StateReset")
      expect(e.stage).toBe("epoch")
      expect(e.message).toContain("state was reset: re-sign")
      expect(nonces).toBe(0)
      expect(epoch).toBe(T0 + 90_000 + 5 * 60_000)

      // the operator re-signs: a fresh op issued after the new epoch runs
      const again = freshOp(T0 + 7 * 60_000)
      yield* TestClock.adjust("1 minute")
      const ok = yield* verifyWith((authz) => Effect.zip(authz.verify({ blob: again, signature: sign(again) }), nonceCount))
      expect(ok[1]).toBe(1)
    }))

  it.effect("AuthzLive applies authz.max_validity_seconds from the config", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const stateDir = join(mkdtempSync(join(tmpdir(), "felhom-reset-")), "state")
      yield* TestClock.adjust("1 minute")
      const op = blob({ not_before: iso(T0 + 60_000), expires_at: iso(T0 + 60_000 + 2 * HOUR) })
      const e = yield* Effect.flatMap(Authz, (authz) => rejected(authz, op, sign(op))).pipe(
        Effect.provide(agent(stateDir, { max_validity_seconds: 3600 }))
      )
      expect(e._tag).toBe("TooLong")
    }))

  it("authz.max_validity_seconds is bounded: a minute to a week", () => {
    const decode = (n: number) =>
      Schema.decodeUnknownEither(AgentConfigFile)({ authz: { signers: [], max_validity_seconds: n } })
    expect(Either.isRight(decode(60))).toBe(true)
    expect(Either.isRight(decode(7 * 86_400))).toBe(true)
    expect(Either.isLeft(decode(59))).toBe(true)
    expect(Either.isLeft(decode(7 * 86_400 + 1))).toBe(true)
    const dflt = Schema.decodeUnknownSync(AgentConfigFile)({ authz: { signers: [] } })
    expect(dflt.authz?.max_validity_seconds).toBe(86_400)
  })
})

describe("Authz property: mutations never verify and never die", () => {
  const base = blob({ expires_at: iso(3_600_000) })
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

