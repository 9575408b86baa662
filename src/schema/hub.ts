/**
 * The hub wire contract (SPEC §6, docs/hub-protocol.md): the host report the agent sends up, the
 * control envelope it gets back, signed jobs down and job results up. JSON field names are
 * snake_case and pinned by test/fixtures/hub/host-report.golden.json; every collection is an
 * array, never null, so "nothing" and "unknown" never look alike.
 */
import { SafeJsonObject } from "./json.js"
import { Data, Either, ParseResult, Schema } from "effect"
import { VmId } from "./ids.js"
import { OpName } from "./op.js"

// ---------------------------------------------------------------------------------------------
// Building blocks. Custom messages on refinements: the default text echoes the rejected value.

const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$/

/** An RFC 3339 timestamp in UTC with a Z suffix, kept as the string that travels. */
export const UtcTimestampString = Schema.String.pipe(
  Schema.filter((s) => RFC3339_UTC.test(s) && Number.isFinite(Date.parse(s)), {
    message: () => "expected an RFC 3339 UTC timestamp like 2026-11-22T10:00:00Z"
  })
)

/** JSON has no NaN or Infinity: a non-finite number would arrive as null. */
const Finite = Schema.Number.pipe(Schema.filter(Number.isFinite, { message: () => "expected a finite number" }))
const NonNegInt = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n >= 0, { message: () => "expected a non-negative integer" })
)
/** A PVE vmid as a plain number (the report is built from many sources; no brand required). */
const ReportVmId = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n >= 100 && n <= 999_999_999, {
    message: () => "expected a vmid (an integer between 100 and 999999999)"
  })
)
const NullableFinite = Schema.NullOr(Finite)
const RunStatus = Schema.Literal("running", "stopped", "unknown")

// ---------------------------------------------------------------------------------------------
// Host report (agent → hub)

export const ReportHost = Schema.Struct({
  /** CPU utilisation as PVE reports it (a fraction of all cores, 0..1). */
  cpu: NullableFinite,
  memory: Schema.Struct({ total: NullableFinite, used: NullableFinite }),
  /** The root filesystem of the host. */
  disk: Schema.Struct({ total: NullableFinite, used: NullableFinite }),
  uptime_seconds: NullableFinite,
  /** 1, 5 and 15 minute load averages; empty when unknown. */
  loadavg: Schema.Array(Finite)
})
export type ReportHost = typeof ReportHost.Type

export const ReportGuestSpec = Schema.Struct({
  hostname: Schema.NullOr(Schema.String),
  cores: NullableFinite,
  memory_mib: NullableFinite,
  swap_mib: NullableFinite,
  rootfs_gib: NullableFinite
})
export type ReportGuestSpec = typeof ReportGuestSpec.Type

export const ReportGuest = Schema.Struct({
  vmid: ReportVmId,
  name: Schema.NullOr(Schema.String),
  status: RunStatus,
  lock: Schema.NullOr(Schema.String),
  /** null when this guest's config could not be read (its status still counts). */
  spec: Schema.NullOr(ReportGuestSpec)
})
export type ReportGuest = typeof ReportGuest.Type

/** A guest volume whose placement breaks the policy (issue 10), reported under the target it names. */
export const ReportPlacementFinding = Schema.Struct({
  vmid: ReportVmId,
  /** rootfs or mpN */
  volume: Schema.String,
  kind: Schema.Literal("hot", "bulk"),
  /**
   * hot_not_fast: a hot volume on a target that is not fast; bulk_backed_up: a bulk mount point
   * without backup=0 (vzdump would capture it); unprotected: a bulk volume with no backup
   * decision; misplaced: the volume lives on another storage; missing: the guest has no such volume.
   */
  problem: Schema.Literal("hot_not_fast", "bulk_backed_up", "unprotected", "misplaced", "missing"),
  detail: Schema.String
})
export type ReportPlacementFinding = typeof ReportPlacementFinding.Type

/** What the storage manifest says about a target, with what the agent found (issue 10). */
export const ReportStorageTarget = Schema.Struct({
  type: Schema.Literal("local-dir", "usb", "nfs", "cifs", "pbs"),
  role: Schema.Literal("primary", "vzdump-target", "pbs-offsite", "bulk-data"),
  /** The class fixed at attach (a manifest that changes it is refused and says so in detail). */
  class: Schema.Literal("fast", "slow"),
  /** Why the target is in its state (what to plug in, what the operator must run or sign). */
  detail: Schema.NullOr(Schema.String),
  placement: Schema.Array(ReportPlacementFinding)
})
export type ReportStorageTarget = typeof ReportStorageTarget.Type

export const ReportStorage = Schema.Struct({
  /** The PVE storage id (= the manifest target's id). */
  storage: Schema.String,
  /** The PVE storage type (dir, nfs, cifs, pbs, lvmthin, ...). */
  type: Schema.String,
  active: Schema.Boolean,
  total: NullableFinite,
  used: NullableFinite,
  avail: NullableFinite,
  /**
   * attached / disconnected: reachable or not (PVE's active flag, and for a USB disk its mount);
   * decommissioned: retired; needs_operator: the agent cannot go on alone (detail says why).
   */
  state: Schema.Literal("attached", "disconnected", "decommissioned", "needs_operator"),
  /** null: a PVE storage the manifest does not name. */
  target: Schema.NullOr(ReportStorageTarget)
})
export type ReportStorage = typeof ReportStorage.Type

/** The newest backup per (storage, vmid). */
export const ReportBackup = Schema.Struct({
  storage: Schema.String,
  vmid: ReportVmId,
  volid: Schema.String,
  ctime: NullableFinite,
  size: NullableFinite
})
export type ReportBackup = typeof ReportBackup.Type

/**
 * One self-restore-test (issue 10): guest `vmid`'s `archive` restored into a scratch guest, booted
 * off the network, its services asked, torn down. `skipped`: not run (the restore target lacked
 * room, no scratch vmid was free; `detail` says). Milliseconds per phase; null for a phase not
 * reached. `op_id` is the journal op (null when skipped): a held scratch guest names it too.
 */
export const ReportRestoreTest = Schema.Struct({
  vmid: ReportVmId,
  at: UtcTimestampString,
  result: Schema.Literal("pass", "fail", "skipped"),
  detail: Schema.String,
  archive: Schema.String,
  op_id: Schema.NullOr(Schema.String),
  timings_ms: Schema.Struct({ restore: NullableFinite, start: NullableFinite, check: NullableFinite, teardown: NullableFinite })
})
export type ReportRestoreTest = typeof ReportRestoreTest.Type

/**
 * The newest integrity verify per guest and backup target (issue 10): PBS's verification state or
 * the read-only archive test. `ok: false` means the archive is damaged (that guest's restore-test
 * is then due at once).
 */
export const ReportArchiveCheck = Schema.Struct({
  storage: Schema.String,
  vmid: ReportVmId,
  volid: Schema.String,
  at: UtcTimestampString,
  ok: Schema.Boolean,
  detail: Schema.String
})
export type ReportArchiveCheck = typeof ReportArchiveCheck.Type

export const ReportPbsSnapshot = Schema.Struct({
  storage: Schema.String,
  vmid: ReportVmId,
  volid: Schema.String,
  ctime: NullableFinite
})
export type ReportPbsSnapshot = typeof ReportPbsSnapshot.Type

/**
 * A guest's data protection (issue 10): the newest restorable point per tier (snapshot, then
 * vzdump, then PBS: also the restore-source order) and its age against the policy, per scheduled
 * target the newest backup and the last attempt, and its bulk volumes' backup decisions. Agent
 * backups are crash-consistent (`consistency`).
 */
export const ReportGuestProtection = Schema.Struct({
  vmid: ReportVmId,
  /** unprotected (a bulk volume without a decision), no_backup, overdue, or ok */
  status: Schema.Literal("unprotected", "no_backup", "overdue", "ok"),
  consistency: Schema.Literal("crash"),
  tiers: Schema.Array(Schema.Struct({
    tier: Schema.Literal("snapshot", "vzdump", "pbs"),
    newest_at: Schema.NullOr(UtcTimestampString),
    target: Schema.NullOr(Schema.String),
    age_seconds: NullableFinite,
    /** the shortest schedule interval among the tier's targets (null: no schedule) */
    interval_seconds: NullableFinite,
    overdue: Schema.Boolean
  })),
  targets: Schema.Array(Schema.Struct({
    target: Schema.String,
    tier: Schema.Literal("vzdump", "pbs"),
    newest_at: Schema.NullOr(UtcTimestampString),
    age_seconds: NullableFinite,
    interval_seconds: NullableFinite,
    overdue: Schema.Boolean,
    /** the last backup attempt there: ok, warnings (the archive exists), failed, skipped */
    last_result: Schema.NullOr(Schema.Literal("ok", "warnings", "failed", "skipped")),
    last_detail: Schema.NullOr(Schema.String)
  })),
  bulk: Schema.Array(Schema.Struct({
    volume: Schema.String,
    target: Schema.String,
    status: Schema.Literal("own_backup", "accepted_none", "unprotected"),
    backup_target: Schema.NullOr(Schema.String),
    /** the reason the customer accepted for no backup */
    reason: Schema.NullOr(Schema.String)
  }))
})
export type ReportGuestProtection = typeof ReportGuestProtection.Type

export const ReportAuditEntry = Schema.Struct({
  seq: NonNegInt,
  at: UtcTimestampString,
  actor: Schema.String,
  action: Schema.String,
  target: Schema.NullOr(Schema.String),
  decision: Schema.String
})
export type ReportAuditEntry = typeof ReportAuditEntry.Type

/** The newest audit entry: its seq and chain hash. A hub that keeps it sees a log reset or rewritten. */
export const ReportAuditHead = Schema.Struct({
  seq: NonNegInt,
  hash: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/, { message: () => "expected a sha256 hash in lower-case hex" }))
})
export type ReportAuditHead = typeof ReportAuditHead.Type

export const ReportVersions = Schema.Struct({
  agent: Schema.String,
  /** Each deployed controller as it last reported itself through the local API (issue 11). */
  controllers: Schema.Array(Schema.Struct({
    vmid: ReportVmId,
    /** What the controller said it is; null before its first heartbeat. */
    version: Schema.NullOr(Schema.String),
    /** The image the agent published to it. */
    image: Schema.String,
    /** ok; unhealthy (it says so); unresponsive (silent after a heal restart); silent (not heard from within its window yet). */
    state: Schema.Literal("ok", "unhealthy", "unresponsive", "silent"),
    last_contact_at: Schema.NullOr(UtcTimestampString),
    detail: Schema.NullOr(Schema.String)
  }))
})
export type ReportVersions = typeof ReportVersions.Type

/** A destructive action the agent holds until an operator signs it (SPEC §7). */
export const ReportPendingSignature = Schema.Struct({
  op: Schema.String,
  vmid: Schema.NullOr(ReportVmId),
  params: Schema.Record({ key: Schema.String, value: Schema.Unknown }),
  reason: Schema.String,
  since: UtcTimestampString
})
export type ReportPendingSignature = typeof ReportPendingSignature.Type

export const HostReport = Schema.Struct({
  host_id: Schema.String,
  agent_version: Schema.String,
  reported_at: UtcTimestampString,
  /** The desired-state generation the agent last converged to; null before the first. */
  desired_generation_applied: Schema.NullOr(NonNegInt),
  host: ReportHost,
  guests: Schema.Array(ReportGuest),
  cloudflared: Schema.Struct({ status: RunStatus }),
  storage: Schema.Array(ReportStorage),
  backups: Schema.Array(ReportBackup),
  restore_tests: Schema.Array(ReportRestoreTest),
  archive_checks: Schema.Array(ReportArchiveCheck),
  pbs_snapshots: Schema.Array(ReportPbsSnapshot),
  /** Per desired guest (issue 10); empty while no storage manifest is in the desired state. */
  protection: Schema.Array(ReportGuestProtection),
  audit_tail: Schema.Array(ReportAuditEntry),
  /** The newest audit entry; null while the audit log is empty. */
  audit_head: Schema.NullOr(ReportAuditHead),
  /** When the agent's state database was created: a new value means its state was reset. */
  state_epoch: UtcTimestampString,
  /**
   * Whether the state database can be written. Unhealthy: the agent keeps heartbeating but makes
   * no change at all (no reconcile, no jobs) until a write succeeds again.
   */
  state_store: Schema.Struct({ healthy: Schema.Boolean, detail: Schema.NullOr(Schema.String) }),
  /**
   * Guests the agent holds for an operator and will not touch: `needs_operator` (an op could not
   * be completed or undone safely) or `lost` (it held customer data and is gone: recover it from a
   * backup; it is never recreated blank).
   */
  held_guests: Schema.Array(Schema.Struct({
    vmid: ReportVmId,
    state: Schema.Literal("needs_operator", "lost"),
    op_id: Schema.NullOr(Schema.String),
    detail: Schema.String
  })),
  versions: ReportVersions,
  pending_signatures: Schema.Array(ReportPendingSignature)
}).annotations({ identifier: "HostReport" })
export type HostReport = typeof HostReport.Type

// ---------------------------------------------------------------------------------------------
// Control envelope (hub → agent, the answer to a host report)

export const ControlEnvelope = Schema.Struct({
  /** The hub's wish; the agent adopts it only through clampPollInterval. */
  poll_interval_seconds: Finite,
  /** The hub holds this host: keep reporting, change nothing. */
  blocked: Schema.Boolean,
  /** 0 = the hub has published no desired state for this host yet. */
  desired_generation: NonNegInt,
  has_signed_ops: Schema.Boolean
}).annotations({ identifier: "ControlEnvelope" })
export type ControlEnvelope = typeof ControlEnvelope.Type

export const POLL_INTERVAL_MIN_SECONDS = 60
export const POLL_INTERVAL_MAX_SECONDS = 3600

/** A hub can slow the agent down or speed it up, but never to a storm or to silence. */
export const clampPollInterval = (s: number) =>
  Math.min(POLL_INTERVAL_MAX_SECONDS, Math.max(POLL_INTERVAL_MIN_SECONDS, Math.round(s)))

// ---------------------------------------------------------------------------------------------
// Signed jobs (hub → agent) and their results (agent → hub)

/** A job as the hub relays it: what it asks for, plus the operator's opaque signed blob. */
export const SignedJob = Schema.Struct({
  id: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9._:-]{1,128}$/)),
  op: OpName,
  guest_id: Schema.NullOr(VmId),
  params: SafeJsonObject,
  /** The op blob's exact bytes, base64. */
  blob: Schema.optional(Schema.String),
  /** The armored SSHSIG signature over those bytes. */
  signature: Schema.optional(Schema.String)
}).annotations({ identifier: "SignedJob" })
export type SignedJob = typeof SignedJob.Type

/** Entries are decoded one by one (decodeJobEntry): one bad job never costs the others. */
export const SignedJobsResponse = Schema.Struct({ jobs: Schema.Array(Schema.Unknown) }).annotations({ identifier: "SignedJobsResponse" })
export type SignedJobsResponse = typeof SignedJobsResponse.Type

const JOB_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/
const OP_RE = /^[a-z][a-z0-9_.-]{0,63}$/
const decodeJob = Schema.decodeUnknownEither(SignedJob, { errors: "all" })

/** One hub job entry; a refusal names the id and op when they are readable, never echoes input. */
export interface JobEntryError {
  readonly id: string | null
  readonly op: string | null
  readonly message: string
}
export type JobEntry = Either.Either<SignedJob, JobEntryError>

export const decodeJobEntry = (raw: unknown): JobEntry =>
  Either.mapLeft(decodeJob(raw), (e) => {
    const field = (k: string, re: RegExp): string | null => {
      if (typeof raw !== "object" || raw === null || !Object.hasOwn(raw, k)) return null
      const v: unknown = (raw as Record<string, unknown>)[k]
      return typeof v === "string" && re.test(v) ? v : null
    }
    const message = ParseResult.ArrayFormatter.formatErrorSync(e)
      .slice(0, 4)
      .map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message.replace(/,?\s*actual[\s\S]*$/, "").slice(0, 160)}`)
      .join("; ")
    return { id: field("id", JOB_ID_RE), op: field("op", OP_RE), message: `job does not decode: ${message}` }
  })

export const JobResult = Schema.Struct({
  id: Schema.String,
  op: Schema.String,
  guest_id: Schema.NullOr(Schema.Number),
  status: Schema.Literal("done", "failed", "pending_signature", "rejected", "duplicate"),
  reason: Schema.String
}).annotations({ identifier: "JobResult" })
export type JobResult = typeof JobResult.Type

export const JobResultsRequest = Schema.Struct({ results: Schema.Array(JobResult) }).annotations({ identifier: "JobResultsRequest" })
export type JobResultsRequest = typeof JobResultsRequest.Type

// ---------------------------------------------------------------------------------------------
// The client's one error type

/**
 * Everything the hub client can fail with. `message` is bounded and never carries the bearer
 * token (scrubbed even when the hub echoes it back) nor more than an excerpt of hub input.
 * - Transport: no connection, TLS failure, timeout.
 * - Status: the hub answered with an unexpected HTTP status (`status`, body excerpt).
 * - Decode: a body did not match its schema (the hub's answer, or, a bug here, our own request).
 * - TooLarge: the answer exceeded the response size cap and was not read.
 * - Conflict: a compare-and-swap lost (HTTP 409 to PUT /api/v1/escrow): the hub kept what it had.
 */
export class HubError extends Data.TaggedError("HubError")<{
  readonly reason: "Transport" | "Status" | "Decode" | "TooLarge" | "Conflict"
  readonly method: "GET" | "POST" | "PUT"
  readonly path: string
  readonly status?: number
  readonly message: string
}> {}
