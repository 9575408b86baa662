/**
 * Operator tooling for signed ops (SPEC §5): build a blob, sign it with the operator's own
 * ssh-keygen (so ssh-agent and FIDO keys work), and verify a blob + signature locally, saying
 * which pipeline stage rejected it. Verification here uses a throwaway in-memory nonce store:
 * checking an op on a laptop must never consume its nonce anywhere.
 */
import { Command, FileSystem } from "@effect/platform"
import { Clock, Data, Duration, Effect, Either, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { make as makeAuthz, parseSigners, type VerifiedOp } from "../../layers/Authz.js"
import { layerAt } from "../../layers/Database.js"
import type { ConfigError } from "../../schema/errors.js"
import { type AuthzError, OP_NAMESPACE, OpBlob } from "../../schema/op.js"

export class OpToolError extends Data.TaggedError("OpToolError")<{ readonly message: string }> {}

export interface NewOpInput {
  readonly op: string
  readonly hostId: string
  readonly guestId: number | null
  /** JSON object text. */
  readonly params: string
  readonly expiresIn: Duration.Duration
  readonly notBefore: string | undefined
  readonly keyId: string
}

const toIso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

/** Builds the exact bytes to sign: compact JSON in a fixed key order, no trailing newline. */
export const newOp = (input: NewOpInput) =>
  Effect.gen(function*() {
    const params = yield* Effect.try({
      try: () => JSON.parse(input.params) as unknown,
      catch: () => new OpToolError({ message: "--params must be a JSON object" })
    })
    const now = yield* Clock.currentTimeMillis
    const raw = {
      op: input.op,
      host_id: input.hostId,
      guest_id: input.guestId,
      params,
      nonce: randomBytes(32).toString("base64url"),
      ...(input.notBefore === undefined ? {} : { not_before: input.notBefore }),
      expires_at: toIso(now + Duration.toMillis(input.expiresIn)),
      key_id: input.keyId
    }
    // Validate with the same schema the agent uses, so an op that would be refused is never signed.
    yield* Schema.decodeUnknown(OpBlob)(raw, { onExcessProperty: "error" }).pipe(
      Effect.mapError((e) => new OpToolError({ message: `invalid op: ${e.message.split("\n").slice(-1)[0] ?? ""}` }))
    )
    return new TextEncoder().encode(JSON.stringify(raw))
  })

/** Signs `file` by running `ssh-keygen -Y sign -n felhom-op-v1`; returns the signature path. */
export const signOp = (opts: { readonly keyFile: string; readonly file: string; readonly sshKeygen?: string }) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const sigPath = `${opts.file}.sig`
    // ssh-keygen refuses to overwrite; a stale signature of other bytes must not survive either
    yield* fs.remove(sigPath).pipe(Effect.ignore)
    const cmd = Command.make(opts.sshKeygen ?? "ssh-keygen", "-Y", "sign", "-n", OP_NAMESPACE, "-f", opts.keyFile, opts.file).pipe(
      Command.stdin("inherit"), // passphrase prompts and FIDO touch prompts reach the operator
      Command.stderr("inherit")
    )
    const code = yield* Command.exitCode(cmd).pipe(
      Effect.mapError((e) => new OpToolError({ message: `cannot run ssh-keygen: ${e.message}` }))
    )
    if (code !== 0) return yield* new OpToolError({ message: `ssh-keygen -Y sign exited ${code}` })
    return sigPath
  })

export interface Verdict {
  readonly valid: boolean
  /** The stage that rejected it, when rejected. */
  readonly stage: string | null
  readonly error: string | null
  readonly message: string
  readonly op: {
    readonly op: string
    readonly host_id: string
    readonly guest_id: number | null
    readonly params: Readonly<Record<string, unknown>>
    readonly expires_at: string
    readonly key_id: string
    readonly signer: { readonly key_id: string; readonly role: string; readonly fingerprint: string }
  } | null
}

const verdictOf = (r: Either.Either<VerifiedOp, AuthzError>): Verdict =>
  Either.match(r, {
    onLeft: (e) => ({ valid: false, stage: e.stage, error: e._tag, message: e.message, op: null }),
    onRight: (v) => ({
      valid: true,
      stage: null,
      error: null,
      message: `valid: ${v.op} signed by ${v.signer.keyId} (${v.signer.role}, ${v.signer.fingerprint})`,
      op: {
        op: v.op,
        host_id: v.hostId,
        guest_id: v.guestId,
        params: v.params,
        expires_at: toIso(v.expiresAtMs),
        key_id: v.claimedKeyId,
        signer: { key_id: v.signer.keyId, role: v.signer.role, fingerprint: v.signer.fingerprint }
      }
    })
  })

/** Full pipeline against the given signers and host id, with a throwaway nonce store. */
export const verifyOpLocally = (opts: {
  readonly blob: Uint8Array
  readonly signature: Uint8Array
  readonly signers: ReadonlyArray<string>
  readonly hostId: string
  readonly clockSkewSeconds: number
}): Effect.Effect<Verdict, ConfigError | OpToolError> =>
  Effect.gen(function*() {
    const signers = yield* parseSigners(opts.signers)
    const authz = yield* makeAuthz({ hostId: opts.hostId, signers, clockSkewSeconds: opts.clockSkewSeconds })
    return verdictOf(yield* Effect.either(authz.verify({ blob: opts.blob, signature: opts.signature })))
  }).pipe(
    Effect.provide(layerAt(":memory:")),
    Effect.catchTag("DatabaseError", (e) => Effect.fail(new OpToolError({ message: e.message })))
  )

