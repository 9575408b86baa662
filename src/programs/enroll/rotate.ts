/**
 * `felhom-agent rotate-recovery-code --signed FILE` (issue 13, SPEC §5, §13): a new recovery code R
 * for the SAME key K. An operator-signed op `rotate-recovery-code` (a recovery-role key may sign
 * it, RECOVERY_OPS), run as root: the gate judges and audits the signature bound to the op (no
 * guest, params `{}`), its nonce is spent (a replay is refused), K is read, wrapped under a new R,
 * R is shown once and typed back, and only then is the new blob PUT with `replaces` = the hub's
 * current generation. The previous blob stays in force until the hub answers: a 409 or a crash
 * before the answer leaves the hub with the old blob and the old code valid.
 *
 * Changing K itself is out of scope: every offsite backup was made with it, and a new key would
 * need every backup chain started again (the CLI says so when asked).
 */
import { Clock, Effect, Option, Redacted } from "effect"
import { Authz } from "../../layers/Authz.js"
import { HostSetup } from "../../layers/HostSetup.js"
import { PbsKey } from "../../layers/PbsKey.js"
import type { KeyFingerprint } from "../../schema/escrow.js"
import { gate, type SignedOp } from "../control/gate.js"
import { unwrapKey, wrapKey } from "../escrow/keyFile.js"
import { generateRecoveryCode } from "../escrow/recoveryCode.js"
import { showAndConfirm } from "./code.js"
import { EnrollFailed, EnrollHub, EnrollIO } from "./ports.js"

export const ROTATE_OP = "rotate-recovery-code"

export const NEW_KEY_OUT_OF_SCOPE =
  "changing the PBS encryption key itself is out of scope: every offsite backup of this host was made with it, " +
  "so a new key would orphan them. rotate-recovery-code re-wraps the SAME key under a new recovery code."

export interface RotateResult {
  readonly fingerprint: KeyFingerprint
  readonly generation: number
  readonly replaced: number
}

const fail = (message: string, code?: number) => new EnrollFailed({ step: ROTATE_OP, message, ...(code === undefined ? {} : { code }) })

export const rotateRecoveryCode = (signed: SignedOp, deps: { readonly isRoot: boolean }) =>
  Effect.gen(function*() {
    if (!deps.isRoot) return yield* fail("rotate-recovery-code must run as root (it reads the PBS key)", 2)
    const authz = yield* Authz
    const judged = yield* gate({ op: ROTATE_OP, vmid: null, params: {} }, Option.some(signed), "cli")
    const d = judged.decision
    if (d.verdict === "rejected") return yield* fail(`the signed op was refused (${d.reason}): ${d.message}`)
    if (d.verdict !== "signed_ok") return yield* fail(`the signed op was not accepted (${d.verdict})`)
    // spends the nonce: the same blob can never rotate twice
    yield* authz.verify(signed).pipe(Effect.mapError((e) => fail(`the signed op was refused (${e._tag}): ${e.message}`)))

    const pbsKey = yield* PbsKey
    const hub = yield* EnrollHub
    const setup = yield* HostSetup
    const plain = yield* pbsKey.read.pipe(Effect.mapError((e) => fail(e.message)))
    const k = yield* unwrapKey(Redacted.value(plain), undefined).pipe(Effect.mapError((e) => fail(e.message)))
    const apiKey = Option.getOrUndefined((yield* setup.readSecrets.pipe(Effect.mapError((e) => fail(e.message)))).hubApiKey)
    if (apiKey === undefined) return yield* fail("no hub api key is stored (is this host enrolled?)")
    const current = yield* hub.escrow(apiKey).pipe(Effect.mapError((e) => fail(e.message)))
    if (Option.isNone(current)) return yield* fail("the hub holds no escrow blob for this host: finish `felhom-agent enroll` first")
    if (current.value.fingerprint !== k.fingerprint) {
      return yield* fail(`the hub's escrow is for another key (${current.value.fingerprint}, this host's is ${k.fingerprint}); refusing to rotate: ask the operator`)
    }
    const code = generateRecoveryCode()
    const now = yield* Clock.currentTimeMillis
    const wrapped = yield* wrapKey(Redacted.value(k.key), code, { kdf: "scrypt", nowMs: now, created: k.created }).pipe(Effect.mapError((e) => fail(e.message)))
    const check = yield* unwrapKey(wrapped, code).pipe(Effect.mapError(() => fail("the new blob does not unwrap with its own code (a bug); nothing uploaded")))
    if (check.fingerprint !== k.fingerprint) return yield* fail("the new blob unwraps to another key (a bug); nothing uploaded")
    // until the hub answers, the old code is the one that opens the escrow: a person who threw it
    // away on seeing the new one, before a crash or a 409, would hold a code nothing opens
    yield* Effect.flatMap(EnrollIO, (io) =>
      io.say(`Keep your current recovery code until this command says the rotation is done: until then it stays the one in force (generation ${current.value.generation}).`))
    yield* showAndConfirm(code, ROTATE_OP)
    const put = yield* hub.putEscrow(apiKey, {
      generation: current.value.generation + 1,
      replaces: current.value.generation,
      fingerprint: k.fingerprint,
      key: wrapped
    }).pipe(Effect.mapError((e) =>
      fail(
        e.reason === "Conflict"
          ? `the hub's escrow changed meanwhile (409): nothing changed; the previous recovery code stays valid (generation ${current.value.generation})`
          : `${e.message}: the hub did not confirm the new blob, so the previous code (generation ${current.value.generation}) may still be the one in force; ` +
            "keep both codes until a rotation is confirmed"
      )
    ))
    return { fingerprint: k.fingerprint, generation: put.generation, replaced: current.value.generation } satisfies RotateResult
  })
