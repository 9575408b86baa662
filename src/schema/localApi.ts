/**
 * The local API's wire contract (SPEC §11, issue 11): what a controller inside a guest sends the
 * agent on the host and what it gets back. The agent's server (src/layers/LocalApi.ts), the
 * endpoints' programs (src/programs/localapi/) and the simulated controller (src/sim/controller/)
 * all speak exactly these schemas; docs/local-api.md documents them with their status codes.
 *
 * Every message here is self-scoped: nothing names a guest. The guest is the one the bearer token
 * was minted for, so no field a controller sends can point at another guest.
 */
import { Data, Schema } from "effect"

// ---------------------------------------------------------------------------------------------
// Tokens

/**
 * `fla1_<id>_<secret>`: `id` (16 hex) is a public lookup key, `secret` 32 random bytes as
 * base64url (43 chars, 256 bits). Only sha256(secret) is stored; the secret is compared to it in
 * constant time. The id lets the lookup avoid a secret-dependent search.
 */
export const LOCAL_TOKEN_PATTERN = /^fla1_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/
export const LOCAL_TOKEN_PREFIX = "fla1_"

/** Parses a presented token into its lookup id and secret; null for anything malformed. */
export const parseLocalToken = (s: string): { readonly id: string; readonly secret: string } | null => {
  if (s.length !== 5 + 16 + 1 + 43) return null
  const m = LOCAL_TOKEN_PATTERN.exec(s)
  return m === null ? null : { id: m[1]!, secret: m[2]! }
}

// ---------------------------------------------------------------------------------------------
// Snapshots a controller may name

/**
 * Snapshots the controller itself takes are `ctl-<name>`; the agent's own before a controller
 * update are `felhom-preupd-<n>`. A controller may roll back only to those two kinds, and only
 * ones the agent recorded as taken for this guest (never a snapshot an operator or PVE made).
 */
export const CONTROLLER_SNAPSHOT_PREFIX = "ctl-"
export const PRE_UPDATE_SNAPSHOT_PREFIX = "felhom-preupd-"

/** The name part a controller chooses: the agent prefixes it with `ctl-`. */
export const ControllerSnapshotLabel = Schema.String.pipe(
  Schema.filter((s) => /^[a-z0-9][a-z0-9_-]{0,31}$/.test(s), {
    message: () => "name is 1-32 of [a-z0-9_-], starting with a letter or digit"
  })
)

/** A snapshot as a controller refers to it when rolling back: a full PVE name of one of the two kinds. */
export const RollbackTarget = Schema.String.pipe(
  Schema.filter((s) => /^(ctl-[a-z0-9][a-z0-9_-]{0,31}|felhom-preupd-[0-9a-z]{1,24})$/.test(s), {
    message: () => "snapshot names a ctl-<name> snapshot this controller took or a felhom-preupd-<id> snapshot of a controller update"
  })
)

// ---------------------------------------------------------------------------------------------
// Requests

export const SnapshotRequest = Schema.Struct({
  name: ControllerSnapshotLabel,
  description: Schema.optional(Schema.String.pipe(
    Schema.filter((s) => s.length <= 200 && !/[\u0000-\u001f]/.test(s), { message: () => "description is at most 200 printable characters" })
  ))
})
export type SnapshotRequest = typeof SnapshotRequest.Type

export const RollbackRequest = Schema.Struct({ snapshot: RollbackTarget })
export type RollbackRequest = typeof RollbackRequest.Type

/** `POST /backup`: an empty object (the agent picks the target from the guest's policy). */
export const BackupRequest = Schema.Struct({})
export type BackupRequest = typeof BackupRequest.Type

/** `POST /heartbeat`: what a controller says of itself; the host report lists it. */
export const HeartbeatRequest = Schema.Struct({
  version: Schema.String.pipe(Schema.filter((s) => /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/.test(s), {
    message: () => "version is 1-64 of [A-Za-z0-9._+-]"
  })),
  /** The image the controller runs, as it was published to it. */
  image: Schema.String.pipe(Schema.filter((s) => s.length <= 255 && /^[\x21-\x7e]+$/.test(s), {
    message: () => "image is 1-255 printable characters"
  })),
  status: Schema.Literal("healthy", "unhealthy"),
  detail: Schema.optional(Schema.String.pipe(Schema.filter((s) => s.length <= 200, { message: () => "detail is at most 200 characters" })))
})
export type HeartbeatRequest = typeof HeartbeatRequest.Type

// ---------------------------------------------------------------------------------------------
// Responses

export const StorageMount = Schema.Struct({
  /** `rootfs` or `mpN`. */
  key: Schema.String,
  /** Where it is mounted in the guest. */
  path: Schema.String,
  class: Schema.Literal("fast", "slow"),
  /** The storage target or PVE storage it lives on. */
  storage: Schema.String,
  size_gib: Schema.NullOr(Schema.Number),
  /** Whether the guest's vzdump captures it (bulk volumes are backup=0). */
  backup: Schema.Boolean
})
export const StorageResponse = Schema.Struct({ mounts: Schema.Array(StorageMount) })
export type StorageResponse = typeof StorageResponse.Type

export const SnapshotResponse = Schema.Struct({ snapshot: Schema.String, taken_at: Schema.String })
export type SnapshotResponse = typeof SnapshotResponse.Type

export const RollbackResponse = Schema.Struct({ snapshot: Schema.String, rolled_back_at: Schema.String })
export type RollbackResponse = typeof RollbackResponse.Type

export const JobState = Schema.Literal("queued", "running", "done", "failed")
export const BackupAccepted = Schema.Struct({ job: Schema.String, state: JobState })
export type BackupAccepted = typeof BackupAccepted.Type

export const BackupDueResponse = Schema.Struct({
  due: Schema.Boolean,
  /** Why (due.ts's DueReason): never_backed_up, slot_passed, not_yet, no_policy, ... */
  reason: Schema.String,
  /** The target a `POST /backup` would write to; null when the guest has no backup policy. */
  target: Schema.NullOr(Schema.String),
  last_success_at: Schema.NullOr(Schema.String),
  next_due_at: Schema.NullOr(Schema.String)
})
export type BackupDueResponse = typeof BackupDueResponse.Type

export const BackupJobView = Schema.Struct({
  job: Schema.String,
  state: JobState,
  requested_at: Schema.String,
  ended_at: Schema.NullOr(Schema.String),
  /** The archive it made (done), or why it failed. */
  archive: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.String)
})
export const BackupStatusResponse = Schema.Struct({
  jobs: Schema.Array(BackupJobView),
  last_success_at: Schema.NullOr(Schema.String),
  last_archive: Schema.NullOr(Schema.String)
})
export type BackupStatusResponse = typeof BackupStatusResponse.Type

export const RestoreTestStatusResponse = Schema.Struct({
  last_result: Schema.NullOr(Schema.Literal("pass", "fail")),
  last_at: Schema.NullOr(Schema.String),
  archive: Schema.NullOr(Schema.String),
  detail: Schema.NullOr(Schema.String),
  last_pass_at: Schema.NullOr(Schema.String)
})
export type RestoreTestStatusResponse = typeof RestoreTestStatusResponse.Type

export const HeartbeatResponse = Schema.Struct({ ok: Schema.Literal(true) })

/** `GET /health` (no token): the agent's own liveness, for the self-update health gate. */
export const HealthResponse = Schema.Struct({
  status: Schema.Literal("ok", "degraded"),
  version: Schema.String,
  checks: Schema.Record({ key: Schema.String, value: Schema.Literal("ok", "failing") })
})
export type HealthResponse = typeof HealthResponse.Type

/** Every non-2xx answer: a stable code and a message that never echoes a secret. */
export const ErrorResponse = Schema.Struct({
  error: Schema.Struct({ code: Schema.String, message: Schema.String })
})
export type ErrorResponse = typeof ErrorResponse.Type

// ---------------------------------------------------------------------------------------------
// The endpoints' failures (mapped to a status by the server)

export type ApiFailureCode =
  | "not_found" // 404: e.g. no such snapshot of this guest
  | "conflict" // 409: the guest is busy, held, locked, or a snapshot cap is reached
  | "refused" // 403: the gate refused (e.g. a snapshot the controller may not roll back to)
  | "unprocessable" // 422: well-formed but impossible now (no backup policy, guest stopped, ...)
  | "unavailable" // 503: PVE or the store failed; nothing was changed, or the op is journaled

export const API_FAILURE_STATUS: { readonly [K in ApiFailureCode]: number } = {
  not_found: 404,
  conflict: 409,
  refused: 403,
  unprocessable: 422,
  unavailable: 503
}

/** A handler's typed failure: its code decides the status, its message is shown as is (no secrets). */
export class ApiFailure extends Data.TaggedError("ApiFailure")<{ readonly code: ApiFailureCode; readonly message: string }> {}
