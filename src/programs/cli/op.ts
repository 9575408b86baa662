/**
 * Operator tooling for signed ops (SPEC §5): build a blob, sign it with the operator's own
 * ssh-keygen (so ssh-agent and FIDO keys work), and verify a blob + signature locally, saying
 * which pipeline stage rejected it. Verification here uses a throwaway in-memory nonce store:
 * checking an op on a laptop must never consume its nonce anywhere.
 */
import { Command, FileSystem } from "@effect/platform"
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { Clock, Console, Data, Duration, Effect, Either, Option, ParseResult, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { make as makeAuthz, parseSigners, type VerifiedOp } from "../../layers/Authz.js"
import * as AgentConfigLayer from "../../layers/Config.js"
import { layerAt } from "../../layers/Database.js"
import type { ConfigError } from "../../schema/errors.js"
import type { VmId } from "../../schema/ids.js"
import { type AuthzError, OP_NAMESPACE, OpBlob, UtcTimestamp } from "../../schema/op.js"
import { CliFailure, toCliFailure, usage } from "./failure.js"
import { readBytes } from "./input.js"

export class OpToolError extends Data.TaggedError("OpToolError")<{ readonly message: string }> {}

export interface NewOpInput {
  readonly op: string
  readonly hostId: string
  readonly guestId: number | null
  /** JSON object text. */
  readonly params: string
  /** How long the op is valid, measured from not_before; at most MAX_OP_VALIDITY. */
  readonly expiresIn: Duration.Duration
  /** RFC 3339 UTC start of validity; the current time when absent. */
  readonly notBefore: string | undefined
  readonly keyId: string
}

/**
 * The longest validity `op new` writes, the top of `authz.max_validity_seconds`' range. The agent
 * refuses ops whose window (not_before to expires_at) exceeds its configured maximum (24 h by
 * default), so a longer op here could never be used.
 */
export const MAX_OP_VALIDITY_DAYS = 7
export const MAX_OP_VALIDITY = Duration.days(MAX_OP_VALIDITY_DAYS)

const toIso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

const VALIDITY_RULE =
  `validity must be a positive finite duration of at most ${MAX_OP_VALIDITY_DAYS} days, e.g. '15 minutes' or '2 hours'`

const validValidity = (d: Duration.Duration): boolean =>
  Duration.isFinite(d) && Duration.greaterThan(d, Duration.zero) && Duration.lessThanOrEqualTo(d, MAX_OP_VALIDITY)

/** `--expires-in` text as a validity: a positive finite duration of at most MAX_OP_VALIDITY. */
export const parseValidity = (text: string): Either.Either<Duration.Duration, string> =>
  Option.match(Duration.decodeUnknown(text), {
    onNone: () => Either.left(`--expires-in: not a duration: '${text}'; ${VALIDITY_RULE}`),
    onSome: (d) => validValidity(d) ? Either.right(d) : Either.left(`--expires-in '${text}': ${VALIDITY_RULE}`)
  })

/** `--not-before` text as epoch milliseconds: an RFC 3339 UTC timestamp. */
export const parseNotBefore = (text: string): Either.Either<number, string> =>
  Either.mapLeft(
    Schema.decodeUnknownEither(UtcTimestamp)(text),
    () => `--not-before '${text}': expected an RFC 3339 UTC timestamp like 2026-11-22T10:00:00Z`
  )

/**
 * Builds the exact bytes to sign: compact JSON in a fixed key order, no trailing newline.
 * not_before is the current time unless given; expires_at is not_before plus the validity.
 */
export const newOp = (input: NewOpInput) =>
  Effect.gen(function*() {
    const params = yield* Effect.try({
      try: () => JSON.parse(input.params) as unknown,
      catch: () => new OpToolError({ message: "--params must be a JSON object" })
    })
    if (!validValidity(input.expiresIn)) return yield* new OpToolError({ message: VALIDITY_RULE })
    const notBeforeMs = input.notBefore === undefined
      ? Math.floor((yield* Clock.currentTimeMillis) / 1000) * 1000
      : yield* Either.match(parseNotBefore(input.notBefore), {
        onLeft: (message) => Effect.fail(new OpToolError({ message })),
        onRight: Effect.succeed
      })
    const raw = {
      op: input.op,
      host_id: input.hostId,
      guest_id: input.guestId,
      params,
      nonce: randomBytes(32).toString("base64url"),
      not_before: input.notBefore ?? toIso(notBeforeMs),
      expires_at: toIso(notBeforeMs + Duration.toMillis(input.expiresIn)),
      key_id: input.keyId
    }
    // Validate with the same schema the agent uses, so an op that would be refused is never signed.
    yield* Schema.decodeUnknown(OpBlob)(raw, { onExcessProperty: "error" }).pipe(
      Effect.mapError((e) =>
        new OpToolError({
          message: `invalid op: ${
            ParseResult.ArrayFormatter.formatErrorSync(e).map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message}`).join("; ")
          }`
        })
      )
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


// ---------------------------------------------------------------------------------------------
// The commands: `op new`, `op sign`, `op verify`

/** `op new`: usage errors (validity, not-before) are exit 2 before anything is built. */
export const opNewCommand = (o: {
  readonly op: string
  readonly host: string
  readonly guest: Option.Option<VmId>
  readonly params: string
  readonly expiresIn: string
  readonly notBefore: Option.Option<string>
  readonly keyId: string
  readonly out: Option.Option<string>
}) =>
  Effect.gen(function*() {
    const validity = parseValidity(o.expiresIn)
    if (Either.isLeft(validity)) return yield* usage(validity.left)
    if (Option.isSome(o.notBefore)) {
      const notBefore = parseNotBefore(o.notBefore.value)
      if (Either.isLeft(notBefore)) return yield* usage(notBefore.left)
    }
    const bytes = yield* newOp({
      op: o.op,
      hostId: o.host,
      guestId: Option.getOrNull(o.guest),
      params: o.params,
      expiresIn: validity.right,
      notBefore: Option.getOrUndefined(o.notBefore),
      keyId: o.keyId
    })
    if (Option.isSome(o.out)) {
      const out = o.out.value
      yield* Effect.flatMap(FileSystem.FileSystem, (fs) => fs.writeFile(out, bytes))
      yield* Console.error(`wrote ${bytes.length} bytes to ${out}; sign with: felhom-agent op sign --key KEY --in ${out}`)
    } else {
      yield* Effect.sync(() => process.stdout.write(bytes))
    }
  }).pipe(
    // everything newOp refuses is the operator's input (params, validity, not-before, a field the schema rejects)
    Effect.mapError((e) => e._tag === "OpToolError" ? usage(e.message) : toCliFailure(e))
  )

/** `op sign`: the operator's own ssh-keygen writes FILE.sig. */
export const opSignCommand = (o: { readonly key: string; readonly file: string }) =>
  signOp({ keyFile: o.key, file: o.file }).pipe(
    Effect.flatMap((sig) => Console.error(`signature written to ${sig}`)),
    Effect.mapError((e) => toCliFailure(e)),
    Effect.provide(NodeCommandExecutor.layer)
  )

const readSignerLines = (path: string) =>
  Effect.map(readBytes(path), (b) =>
    new TextDecoder().decode(b).split("\n").map((l) => l.trim()).filter((l) => l.length > 0 && !l.startsWith("#")))

/** `op verify`: the full pipeline locally; exit 1 naming the stage that rejected it. */
export const opVerifyCommand = (o: {
  readonly blob: string
  readonly signature: Option.Option<string>
  readonly signers: Option.Option<string>
  readonly hostId: Option.Option<string>
  readonly config: Option.Option<string>
  readonly json: boolean
}) =>
  Effect.gen(function*() {
    const needConfig = Option.isNone(o.signers) || Option.isNone(o.hostId)
    const cfg = needConfig ? Option.some(yield* AgentConfigLayer.loadConfig({ path: o.config, mode: "none" })) : Option.none()
    const fromConfig = Option.map(cfg, (c) => c.file)
    const signers = Option.isSome(o.signers)
      ? yield* readSignerLines(o.signers.value)
      : Option.getOrElse(Option.flatMap(fromConfig, (f) => Option.fromNullable(f.authz?.signers)), () => [] as ReadonlyArray<string>)
    const hostId = Option.getOrElse(o.hostId, () => Option.getOrElse(Option.flatMap(fromConfig, (f) => Option.fromNullable(f.host_id)), () => ""))
    if (hostId === "") return yield* usage("no host id: pass --host-id or set host_id in the config")
    if (signers.length === 0) return yield* usage("no signers: pass --signers FILE or set authz.signers in the config")
    const verdict = yield* verifyOpLocally({
      blob: yield* readBytes(o.blob),
      signature: yield* readBytes(Option.getOrElse(o.signature, () => `${o.blob}.sig`)),
      signers,
      hostId,
      clockSkewSeconds: Option.getOrElse(Option.flatMap(fromConfig, (f) => Option.fromNullable(f.authz?.clock_skew_seconds)), () => 120)
    })
    yield* Console.log(
      o.json ? JSON.stringify(verdict, null, 2) : verdict.valid ? verdict.message : `rejected at stage ${verdict.stage}: ${verdict.error}: ${verdict.message}`
    )
    if (!verdict.valid) return yield* new CliFailure({ code: 1, message: `rejected (${verdict.error} at ${verdict.stage})` })
  }).pipe(Effect.mapError((e) => toCliFailure(e)))
