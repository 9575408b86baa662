/**
 * `rotate-recovery-code` (issue 13): a signed op (operational or recovery key) re-wraps the SAME K
 * under a new code, shown once and typed back, then a compare-and-swap PUT. Refused: unsigned,
 * another op, a replay, not root. A 409 or a failure before the hub's answer leaves the old blob
 * (and the old code) in force. The new blob unwraps with the new code to the same fingerprint.
 * Runs an enrollment first (root; the dev hub on loopback HTTPS).
 */
import { NodeContext } from "@effect/platform-node"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { make as makeAuthz, parseSigners, Authz } from "../src/layers/Authz.js"
import { JournalLive } from "../src/layers/Journal.js"
import { unwrapKey } from "../src/programs/escrow/keyFile.js"
import { enroll } from "../src/programs/enroll/enroll.js"
import { EnrollFailed } from "../src/programs/enroll/ports.js"
import { rotateRecoveryCode, type RotateResult } from "../src/programs/enroll/rotate.js"
import { stateDatabase } from "../src/programs/enroll/services.js"
import { rotateRecoveryCode as rotateCli } from "../src/programs/cli/enroll.js"
import { OP_NAMESPACE } from "../src/schema/op.js"
import { serveDevHub } from "../src/sim/hub/index.js"
import { type EnrollHost, makeEnrollHost, makePerson, type Responder, services, typeBack, writeCa } from "./enroll-support.js"
import { operator, recoveryKey, SIGNERS, stranger } from "./engine-support.js"
import { isRoot } from "./privileged-support.js"
import { signSshsig, type TestKey } from "./sshsig-sign.js"

const hosts: Array<EnrollHost> = []
afterAll(() => {
  for (const h of hosts) h.cleanup()
})

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

/** An op blob valid from a moment after the state database was made (its epoch), signed by `key`. */
const opFor = (hostId: string, op: string, key: TestKey, params: Record<string, unknown> = {}) => {
  const now = Date.now()
  const blob = new TextEncoder().encode(JSON.stringify({
    op,
    host_id: hostId,
    guest_id: null,
    params,
    nonce: `nonce-${randomBytes(16).toString("hex")}`,
    not_before: iso(now + 2000),
    expires_at: iso(now + 3_600_000),
    key_id: "alice"
  }))
  return { blob, signature: signSshsig({ message: blob, namespace: OP_NAMESPACE, key }) }
}

/** An enrolled host, its hub, the code the person wrote down and K's fingerprint. */
const enrolled = Effect.gen(function*() {
  const h = makeEnrollHost(SIGNERS)
  hosts.push(h)
  const served = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: {} })
  const hub = { ...served, caFile: writeCa(h.base, served.caPem) }
  const token = `et${randomBytes(16).toString("hex")}`
  yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
  const person = makePerson(typeBack)
  const r = yield* enroll({
    mode: "new",
    hubUrl: hub.url,
    hubCa: hub.caFile,
    token: Effect.succeed(Redacted.make(token)),
    node: "pve",
    base: h.baseConfig,
    paperkey: false,
    golden: false
  }, { isRoot: true, buildGolden: Effect.succeed(""), restoreHost: () => Effect.die("no") }).pipe(
    Effect.provide(services(h, hub)),
    Effect.provide(person.layer),
    Effect.orDie
  )
  return { h, hub, hostId: r.hostId, fingerprint: r.keyFingerprint, code: person.code()! }
})

type Enrolled = Effect.Effect.Success<typeof enrolled>

const authzOver = (e: Enrolled) =>
  Layer.mergeAll(
    JournalLive,
    Layer.effect(Authz, Effect.flatMap(parseSigners(SIGNERS), (signers) => makeAuthz({ hostId: e.hostId, signers, clockSkewSeconds: 60, refuseBeforeStateEpoch: true })))
  ).pipe(Layer.provideMerge(stateDatabase(e.h.stateDir)), Layer.orDie)

const rotate = (e: Enrolled, signed: { blob: Uint8Array; signature: string }, respond: Responder = typeBack, isRoot = true) =>
  Effect.gen(function*() {
    const person = makePerson(respond)
    const exit = yield* rotateRecoveryCode(signed, { isRoot }).pipe(
      Effect.provide(authzOver(e)),
      Effect.provide(services(e.h, e.hub)),
      Effect.provide(person.layer),
      Effect.exit
    )
    return { exit, person }
  })

const ok = (exit: Exit.Exit<RotateResult, unknown>): RotateResult => {
  if (Exit.isFailure(exit)) throw new Error(`expected success, got ${JSON.stringify(exit.cause)}`)
  return exit.value
}
const refused = (exit: Exit.Exit<RotateResult, unknown>): string => {
  if (Exit.isSuccess(exit)) throw new Error("expected a refusal")
  if (exit.cause._tag !== "Fail" || !(exit.cause.error instanceof EnrollFailed)) throw new Error(`expected EnrollFailed, got ${JSON.stringify(exit.cause)}`)
  return exit.cause.error.message
}

/** The hub's current blob opens with `code` to `fp`. */
const opens = (e: Enrolled, code: string) =>
  Effect.gen(function*() {
    const blob = Option.getOrThrow(yield* e.hub.hub.escrowOf(e.hostId))
    const r = yield* Effect.either(unwrapKey(blob.key, Redacted.make(code)))
    return r._tag === "Right" ? r.right.fingerprint : undefined
  })

describe.skipIf(!isRoot)("rotate-recovery-code", () => {
  it.live("signed by the operational key, then by the recovery key: each a new code for the same K, the old code stops opening the escrow", () =>
    Effect.scoped(Effect.gen(function*() {
      const e = yield* enrolled
      yield* Effect.sleep("2100 millis") // not_before is in the future by 2 s
      const keyBefore = readFileSync(e.h.keyFile, "utf8")
      const first = yield* rotate(e, opFor(e.hostId, "rotate-recovery-code", operator))
      const r1 = ok(first.exit)
      expect(r1).toEqual({ fingerprint: e.fingerprint, generation: 2, replaced: 1 })
      const code1 = first.person.code()!
      expect(code1).not.toBe(e.code)
      expect(yield* opens(e, code1)).toBe(e.fingerprint)
      expect(yield* opens(e, e.code)).toBeUndefined()
      expect(first.person.said.join("\n")).toContain("unrecoverable by anyone")
      const second = yield* rotate(e, opFor(e.hostId, "rotate-recovery-code", recoveryKey))
      expect(ok(second.exit).generation).toBe(3)
      expect(yield* opens(e, second.person.code()!)).toBe(e.fingerprint)
      expect(readFileSync(e.h.keyFile, "utf8")).toBe(keyBefore)
      // R never reaches the state database
      const { dumpStateDb } = yield* Effect.promise(() => import("./enroll-support.js"))
      const db = dumpStateDb(e.h.stateDir)
      for (const c of [e.code, code1, second.person.code()!]) expect(db).not.toContain(c)
    })), 60_000)

  it.live("refused, hub unchanged: a stranger's or a broken signature, another op, a recovery key on a destructive op, a replay, not root", () =>
    Effect.scoped(Effect.gen(function*() {
      const e = yield* enrolled
      yield* Effect.sleep("2100 millis")
      const unchanged = Effect.map(e.hub.hub.escrowOf(e.hostId), (b) => Option.getOrThrow(b).generation)
      const good = opFor(e.hostId, "rotate-recovery-code", operator)
      const cases: ReadonlyArray<readonly [string, { blob: Uint8Array; signature: string }]> = [
        ["stranger", opFor(e.hostId, "rotate-recovery-code", stranger)],
        ["wrong signature", { blob: good.blob, signature: opFor(e.hostId, "rotate-recovery-code", operator).signature }],
        ["other op", opFor(e.hostId, "rotate-escrow", operator)],
        ["recovery key, destructive op", opFor(e.hostId, "decommission", recoveryKey)],
        ["other host", opFor("another-host", "rotate-recovery-code", operator)],
        ["params", opFor(e.hostId, "rotate-recovery-code", operator, { new_key: true })]
      ]
      for (const [what, signed] of cases) {
        const r = yield* rotate(e, signed)
        expect(refused(r.exit), what).toContain("refused")
        expect(r.person.shown, what).toEqual([])
        expect(yield* unchanged, what).toBe(1)
      }
      expect(refused((yield* rotate(e, good, typeBack, false)).exit)).toContain("root")
      ok((yield* rotate(e, good)).exit)
      const replay = yield* rotate(e, good)
      expect(refused(replay.exit)).toMatch(/Replay|already/)
      expect(replay.person.shown).toEqual([])
      expect(yield* unchanged).toBe(2)
    })), 60_000)

  it.live("a 409, or a failure before the hub stored it, leaves the old blob and code in force; a failure after: keep both codes", () =>
    Effect.scoped(Effect.gen(function*() {
      const e = yield* enrolled
      yield* Effect.sleep("2100 millis")
      yield* e.hub.hub.failNextEscrowPut(e.hostId, { when: "before-store", status: 409 })
      const conflict = yield* rotate(e, opFor(e.hostId, "rotate-recovery-code", operator))
      expect(refused(conflict.exit)).toContain("nothing changed; the previous recovery code stays valid")
      expect(yield* opens(e, e.code)).toBe(e.fingerprint)
      expect(Option.getOrThrow(yield* e.hub.hub.escrowOf(e.hostId)).generation).toBe(1)
      yield* e.hub.hub.failNextEscrowPut(e.hostId, { when: "before-store", status: 500 })
      const crash = yield* rotate(e, opFor(e.hostId, "rotate-recovery-code", operator))
      expect(refused(crash.exit)).toContain("previous code (generation 1) may still be the one in force")
      expect(yield* opens(e, e.code)).toBe(e.fingerprint)
      // a wrong type-back uploads nothing either
      const wrong = yield* rotate(e, opFor(e.hostId, "rotate-recovery-code", operator), () => e.code)
      expect(refused(wrong.exit)).toContain("nothing was uploaded")
      expect(yield* opens(e, e.code)).toBe(e.fingerprint)
      // stored, but the answer lost: the new code opens it; the message said to keep both
      yield* e.hub.hub.failNextEscrowPut(e.hostId, { when: "after-store", status: 500 })
      const lost = yield* rotate(e, opFor(e.hostId, "rotate-recovery-code", operator))
      expect(refused(lost.exit)).toContain("keep both codes")
      expect(yield* opens(e, lost.person.code()!)).toBe(e.fingerprint)
    })), 60_000)

  it.effect("--new-key: changing K is out of scope, said plainly (exit 2)", () =>
    Effect.gen(function*() {
      const r = yield* Effect.flip(rotateCli({ signed: Option.none(), newKey: true, config: Option.none(), prefix: Option.none(), json: false })).pipe(
        Effect.provide(NodeContext.layer)
      )
      expect(r.code).toBe(2)
      expect(r.message).toContain("out of scope")
    }))
})
