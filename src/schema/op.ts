/**
 * The operator-signed operation blob (SPEC §5): JSON bytes, signed as received, never
 * re-serialized. Unknown fields are rejected: a signed blob must mean exactly what it says.
 */
import { SafeJsonObject } from "./json.js"
import { Data, Either, ParseResult, Schema } from "effect"
import { VmId } from "./ids.js"
import { FELHOM_OP_NAMESPACE } from "./sshsig.js"

/** The SSHSIG namespace for operator ops: a constant, never taken from a caller. */
export const OP_NAMESPACE = FELHOM_OP_NAMESPACE

/** RFC 3339 UTC timestamps with a Z suffix, second (optionally sub-second) precision. */
const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$/

export const UtcTimestamp = Schema.transformOrFail(Schema.String, Schema.Number, {
  strict: true,
  decode: (s, _, ast) => {
    const ms = Date.parse(s)
    return RFC3339_UTC.test(s) && Number.isFinite(ms)
      ? ParseResult.succeed(ms)
      : ParseResult.fail(new ParseResult.Type(ast, s, "expected an RFC 3339 UTC timestamp like 2026-11-22T10:00:00Z"))
  },
  encode: (ms) => ParseResult.succeed(new Date(ms).toISOString().replace(/\.000Z$/, "Z"))
})

export const OpName = Schema.String.pipe(
  Schema.pattern(/^[a-z][a-z0-9_.-]{0,63}$/, { message: () => "an op name is lower-case [a-z0-9_.-], starting with a letter" })
)

/** At least 128 bits: 22+ base64url characters (the CLI makes 32 random bytes). */
export const Nonce = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9_-]{22,128}$/, { message: () => "a nonce is 22-128 base64url characters (>= 128 bits)" })
)

export const OpBlob = Schema.Struct({
  op: OpName,
  host_id: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(128)),
  /** The guest the op acts on, or null for host-level ops. */
  guest_id: Schema.NullOr(VmId),
  params: SafeJsonObject,
  nonce: Nonce,
  not_before: Schema.optional(UtcTimestamp),
  expires_at: UtcTimestamp,
  /** Audit only: which operator key the operator says signed it. Never used for matching. */
  key_id: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(128))
})
export type OpBlob = typeof OpBlob.Type

export const MAX_OP_BLOB_BYTES = 64 * 1024

/** Decodes the exact received bytes; strict UTF-8, JSON, and no unknown fields. */
export const decodeOpBlob = (bytes: Uint8Array): Either.Either<OpBlob, string> => {
  if (bytes.length > MAX_OP_BLOB_BYTES) return Either.left(`op blob larger than ${MAX_OP_BLOB_BYTES} bytes`)
  let text: string
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes)
  } catch {
    return Either.left("op blob is not valid UTF-8")
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    return Either.left("op blob is not valid JSON")
  }
  return Either.mapLeft(
    Schema.decodeUnknownEither(OpBlob)(json, { onExcessProperty: "error", errors: "all" }),
    (e) =>
      ParseResult.ArrayFormatter.formatErrorSync(e)
        .map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message.replace(/,?\s*actual[\s\S]*$/, "")}`)
        .join("; ")
  )
}

export type SignerRole = "operational" | "recovery"

// ---------------------------------------------------------------------------------------------
// Verification errors, one per pipeline stage (SPEC §5). `stage` names where it stopped.

export type AuthzStage =
  | "armor"
  | "namespace"
  | "public_key"
  | "allow_list"
  | "signature"
  | "blob"
  | "target"
  | "time"
  | "epoch"
  | "nonce"

export class Malformed extends Data.TaggedError("Malformed")<{ readonly stage: AuthzStage; readonly message: string }> {}
export class Namespace extends Data.TaggedError("Namespace")<{ readonly stage: "namespace"; readonly message: string }> {}
export class UnknownSigner extends Data.TaggedError("UnknownSigner")<{ readonly stage: "allow_list"; readonly message: string }> {}
export class BadSignature extends Data.TaggedError("BadSignature")<{ readonly stage: "signature"; readonly message: string }> {}
export class Target extends Data.TaggedError("Target")<{ readonly stage: "target"; readonly message: string }> {}
export class Expired extends Data.TaggedError("Expired")<{ readonly stage: "time"; readonly message: string }> {}
export class NotYetValid extends Data.TaggedError("NotYetValid")<{ readonly stage: "time"; readonly message: string }> {}
/** The op's validity window is longer than authz.max_validity_seconds allows. */
export class TooLong extends Data.TaggedError("TooLong")<{ readonly stage: "time"; readonly message: string }> {}
/**
 * The op was issued before this host's state database was created: its nonce may have been
 * spent and then lost with the old database, so it is refused ("state was reset: re-sign").
 */
export class StateReset extends Data.TaggedError("StateReset")<{ readonly stage: "epoch"; readonly message: string }> {}
export class Replay extends Data.TaggedError("Replay")<{ readonly stage: "nonce"; readonly message: string }> {}

export type AuthzError =
  | Malformed
  | Namespace
  | UnknownSigner
  | BadSignature
  | Target
  | Expired
  | NotYetValid
  | TooLong
  | StateReset
  | Replay
