/**
 * Enrollment and PBS key escrow on the wire (issue 13, SPEC §10, §13). Shared by the agent's
 * enrollment client (src/layers/HubEnroll.ts), the hub client's escrow calls (src/layers/Hub.ts)
 * and the dev hub (src/sim/hub). docs/hub-protocol.md documents each endpoint.
 *
 * What travels: the wrapped key file (PBS's passphrase-protected format, wrapped under the
 * recovery code R), its key's fingerprint, and the generation the hub keeps it under. Never the
 * live key K, never R. The enrollment token and the api key travel only as bearer headers.
 *
 * Everything from the hub is hostile input: decoded strictly (excess keys refused, bounded
 * strings), and what it names (vmids, points, storage) is checked again where it is used.
 */
import { Schema } from "effect"
import { StorageManifest } from "./storage.js"

export const ENROLL_PATHS = {
  /** Bearer: the operator's one-time enrollment token. */
  enroll: "/api/v1/enroll",
  /** Bearer: the host's api key. GET: the current blob; PUT: replace it (compare-and-swap). */
  escrow: "/api/v1/escrow"
} as const

/** A host id as the hub assigns it (also `host_id` in the agent config). */
export const HostId = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, { message: () => "a host id: 1-128 of A-Z a-z 0-9 . _ -, starting alphanumeric" })
)

/** A PBS key fingerprint: 32 bytes as lowercase hex pairs joined by ':' (as PBS prints it). */
export const KeyFingerprint = Schema.String.pipe(
  Schema.pattern(/^[0-9a-f]{2}(:[0-9a-f]{2}){31}$/, { message: () => "a PBS key fingerprint: 32 lowercase hex pairs joined by ':'" })
)
export type KeyFingerprint = typeof KeyFingerprint.Type

/** The wrapped key file's JSON text, exactly as written (a PBS key file is about 400 bytes). */
export const WrappedKeyText = Schema.String.pipe(
  Schema.minLength(2),
  Schema.maxLength(8192, { message: () => "a wrapped key file is at most 8192 characters" })
)

const Generation = Schema.Int.pipe(Schema.between(1, Number.MAX_SAFE_INTEGER, { message: () => "a generation is a positive integer" }))

/** One escrowed blob as the hub keeps it, bound to the host. */
export const EscrowBlob = Schema.Struct({
  host_id: HostId,
  generation: Generation,
  fingerprint: KeyFingerprint,
  key: WrappedKeyText
}).annotations({ identifier: "EscrowBlob" })
export type EscrowBlob = typeof EscrowBlob.Type

/**
 * PUT /api/v1/escrow: replace the host's blob only if its current generation is `replaces`
 * (null: the host has none yet). The hub answers 409 otherwise and keeps what it has, so the
 * previous blob stays in force until this answer says the new one is: a crash in between never
 * leaves the hub without a usable blob.
 */
export const EscrowUpload = Schema.Struct({
  generation: Generation,
  replaces: Schema.NullOr(Generation),
  fingerprint: KeyFingerprint,
  key: WrappedKeyText
}).annotations({ identifier: "EscrowUpload" })
export type EscrowUpload = typeof EscrowUpload.Type

export const EscrowUploadResponse = Schema.Struct({ generation: Generation }).annotations({ identifier: "EscrowUploadResponse" })
export type EscrowUploadResponse = typeof EscrowUploadResponse.Type

export const EnrollMode = Schema.Literal("new", "restore")
export type EnrollMode = typeof EnrollMode.Type

/** POST /api/v1/enroll body. The enrollment token is the bearer, never in the body. */
export const EnrollRequest = Schema.Struct({
  mode: EnrollMode,
  hostname: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$/)),
  node: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9-]{0,62}$/)),
  agent_version: Schema.String.pipe(Schema.maxLength(64)),
  /** This host's storage-creds public key (X25519, base64 of 32 bytes): the hub seals target creds to it. */
  creds_public_key: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9+/]{43}=$/, { message: () => "base64 of a 32-byte X25519 public key" }))
}).annotations({ identifier: "EnrollRequest" })
export type EnrollRequest = typeof EnrollRequest.Type

/** One guest a restore directive asks for; `point` pins a PBS snapshot volid, absent: the newest. */
export const RestoreDirectiveGuest = Schema.Struct({
  vmid: Schema.Int.pipe(Schema.between(100, 999_999_999, { message: () => "a vmid between 100 and 999999999" })),
  name: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/, { message: () => "a guest name (hostname characters)" })),
  point: Schema.optional(Schema.String.pipe(Schema.maxLength(512)))
})
export type RestoreDirectiveGuest = typeof RestoreDirectiveGuest.Type

/**
 * What a restore-mode enrollment receives (SPEC §10): the lost host's identity, PBS namespace,
 * tunnel token, storage manifest (creds sealed to this new host's key), which guests to restore,
 * and the escrow blob. None of it is trusted for more than it names.
 */
export const RestoreBundle = Schema.Struct({
  pbs_namespace: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_][A-Za-z0-9._-]*(\/[A-Za-z0-9_][A-Za-z0-9._-]*){0,7}$/, { message: () => "a PBS namespace path" })),
  /** The cloudflared tunnel token: a secret, kept 0600 for the cloudflared service. */
  tunnel_token: Schema.Redacted(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(4096))),
  storage: StorageManifest,
  directive: Schema.Struct({ guests: Schema.Array(RestoreDirectiveGuest).pipe(Schema.maxItems(1000)) }),
  escrow: EscrowBlob
}).annotations({ identifier: "RestoreBundle" })
export type RestoreBundle = typeof RestoreBundle.Type

/** POST /api/v1/enroll answer: `restore` present iff the request's mode was restore. */
export const EnrollResponse = Schema.Struct({
  host_id: HostId,
  api_key: Schema.Redacted(Schema.String.pipe(Schema.minLength(16), Schema.maxLength(512))),
  restore: Schema.optional(RestoreBundle)
}).annotations({ identifier: "EnrollResponse" })
export type EnrollResponse = typeof EnrollResponse.Type
