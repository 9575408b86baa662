/**
 * ProtectionStore (issue 10): what data protection remembers between cycles and restarts, in the
 * state database (migration 0007): the newest attempt and success of each backup, restore-test
 * and integrity verify per (guest, target), each restore-test's result, the retention policy in
 * force per target, and per-archive integrity results. Agent-internal: nothing here comes from
 * the hub. Store failures are JournalError, as for the journal: the daemon treats them as an
 * unhealthy store and makes no change.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Option, Schema } from "effect"
import { JournalError } from "./Journal.js"

export type RunKind = "backup" | "restore_test" | "verify"
export type RunResult = "ok" | "warnings" | "failed" | "skipped"

export interface RunRecord {
  readonly kind: RunKind
  readonly vmid: number
  readonly storage: string
  readonly lastAttemptMs: number
  /** The newest attempt that produced a restorable/verified result (ok or warnings). */
  readonly lastSuccessMs: number | null
  readonly lastResult: RunResult
  readonly detail: string
}

export interface RestoreTestRecord {
  readonly opId: string
  readonly vmid: number
  readonly archive: string
  readonly startedMs: number
  readonly endedMs: number
  readonly result: "pass" | "fail" | "skipped"
  readonly detail: string
  /** step name → milliseconds */
  readonly timings: Readonly<Record<string, number>>
}

export interface ArchiveCheck {
  readonly volid: string
  readonly storage: string
  readonly vmid: number
  readonly checkedMs: number
  readonly ok: boolean
  readonly detail: string
}

export interface RetentionInForce {
  readonly storage: string
  /** the Retention object, as JSON */
  readonly retention: unknown
  readonly basis: "manifest" | "signed"
  readonly sinceMs: number
}

export interface ProtectionStoreShape {
  readonly recordRun: (r: {
    readonly kind: RunKind
    readonly vmid: number
    readonly storage: string
    readonly result: RunResult
    readonly detail: string
  }) => Effect.Effect<void, JournalError>
  readonly runs: Effect.Effect<ReadonlyArray<RunRecord>, JournalError>
  readonly recordRestoreTest: (r: RestoreTestRecord) => Effect.Effect<void, JournalError>
  /** Newest first. */
  readonly restoreTests: (limit: number) => Effect.Effect<ReadonlyArray<RestoreTestRecord>, JournalError>
  readonly retentionInForce: (storage: string) => Effect.Effect<Option.Option<RetentionInForce>, JournalError>
  readonly setRetentionInForce: (storage: string, retention: unknown, basis: "manifest" | "signed") => Effect.Effect<void, JournalError>
  readonly recordArchiveCheck: (c: Omit<ArchiveCheck, "checkedMs">) => Effect.Effect<void, JournalError>
  readonly archiveChecks: Effect.Effect<ReadonlyArray<ArchiveCheck>, JournalError>
}

export class ProtectionStore extends Context.Tag("felhom/ProtectionStore")<ProtectionStore, ProtectionStoreShape>() {}

const RunRow = Schema.Struct({
  kind: Schema.Literal("backup", "restore_test", "verify"),
  vmid: Schema.Int,
  storage: Schema.String,
  last_attempt_ms: Schema.Int,
  last_success_ms: Schema.NullOr(Schema.Int),
  last_result: Schema.Literal("ok", "warnings", "failed", "skipped"),
  detail: Schema.String
})
const TestRow = Schema.Struct({
  op_id: Schema.String,
  vmid: Schema.Int,
  archive: Schema.String,
  started_ms: Schema.Int,
  ended_ms: Schema.Int,
  result: Schema.Literal("pass", "fail", "skipped"),
  detail: Schema.String,
  timings: Schema.parseJson(Schema.Record({ key: Schema.String, value: Schema.Number }))
})
const PolicyRow = Schema.Struct({
  storage: Schema.String,
  retention: Schema.parseJson(Schema.Unknown),
  basis: Schema.Literal("manifest", "signed"),
  since_ms: Schema.Int
})
const CheckRow = Schema.Struct({
  volid: Schema.String,
  storage: Schema.String,
  vmid: Schema.Int,
  checked_ms: Schema.Int,
  ok: Schema.Literal(0, 1),
  detail: Schema.String
})

const storeError = (what: string) => (e: { readonly message?: string } | unknown) =>
  new JournalError({
    message: `protection store: ${what}: ${typeof e === "object" && e !== null && "message" in e && typeof e.message === "string" ? e.message : String(e)}`
  })

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const recordRun: ProtectionStoreShape["recordRun"] = (r) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const success = r.result === "ok" || r.result === "warnings" ? now : null
      yield* sql`INSERT INTO protection_runs (kind, vmid, storage, last_attempt_ms, last_success_ms, last_result, detail)
        VALUES (${r.kind}, ${r.vmid}, ${r.storage}, ${now}, ${success}, ${r.result}, ${r.detail})
        ON CONFLICT (kind, vmid, storage) DO UPDATE SET
          last_attempt_ms = excluded.last_attempt_ms,
          last_success_ms = COALESCE(excluded.last_success_ms, protection_runs.last_success_ms),
          last_result = excluded.last_result,
          detail = excluded.detail`
    }).pipe(Effect.mapError(storeError("recording a run")))

  const runs: ProtectionStoreShape["runs"] = sql`SELECT kind, vmid, storage, last_attempt_ms, last_success_ms, last_result, detail
    FROM protection_runs ORDER BY kind, vmid, storage`.pipe(
    Effect.flatMap(Schema.decodeUnknown(Schema.Array(RunRow))),
    Effect.map((rows) =>
      rows.map((r): RunRecord => ({
        kind: r.kind,
        vmid: r.vmid,
        storage: r.storage,
        lastAttemptMs: r.last_attempt_ms,
        lastSuccessMs: r.last_success_ms,
        lastResult: r.last_result,
        detail: r.detail
      }))
    ),
    Effect.mapError(storeError("reading runs"))
  )

  const recordRestoreTest: ProtectionStoreShape["recordRestoreTest"] = (r) =>
    sql`INSERT INTO restore_tests (op_id, vmid, archive, started_ms, ended_ms, result, detail, timings)
      VALUES (${r.opId}, ${r.vmid}, ${r.archive}, ${r.startedMs}, ${r.endedMs}, ${r.result}, ${r.detail}, ${JSON.stringify(r.timings)})`.pipe(
      Effect.asVoid,
      Effect.mapError(storeError("recording a restore-test"))
    )

  const restoreTests: ProtectionStoreShape["restoreTests"] = (limit) =>
    sql`SELECT op_id, vmid, archive, started_ms, ended_ms, result, detail, timings FROM restore_tests
      ORDER BY seq DESC LIMIT ${Math.max(0, Math.floor(limit))}`.pipe(
      Effect.flatMap(Schema.decodeUnknown(Schema.Array(TestRow))),
      Effect.map((rows) =>
        rows.map((r): RestoreTestRecord => ({
          opId: r.op_id,
          vmid: r.vmid,
          archive: r.archive,
          startedMs: r.started_ms,
          endedMs: r.ended_ms,
          result: r.result,
          detail: r.detail,
          timings: r.timings
        }))
      ),
      Effect.mapError(storeError("reading restore-tests"))
    )

  const retentionInForce: ProtectionStoreShape["retentionInForce"] = (storage) =>
    sql`SELECT storage, retention, basis, since_ms FROM retention_in_force WHERE storage = ${storage}`.pipe(
      Effect.flatMap(Schema.decodeUnknown(Schema.Array(PolicyRow))),
      Effect.map((rows) =>
        Option.map(Option.fromNullable(rows[0]), (r): RetentionInForce => ({
          storage: r.storage,
          retention: r.retention,
          basis: r.basis,
          sinceMs: r.since_ms
        }))
      ),
      Effect.mapError(storeError("reading the retention in force"))
    )

  const setRetentionInForce: ProtectionStoreShape["setRetentionInForce"] = (storage, retention, basis) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      yield* sql`INSERT INTO retention_in_force (storage, retention, basis, since_ms)
        VALUES (${storage}, ${JSON.stringify(retention)}, ${basis}, ${now})
        ON CONFLICT (storage) DO UPDATE SET retention = excluded.retention, basis = excluded.basis, since_ms = excluded.since_ms`
    }).pipe(Effect.mapError(storeError("recording the retention in force")))

  const recordArchiveCheck: ProtectionStoreShape["recordArchiveCheck"] = (c) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      yield* sql`INSERT INTO archive_checks (volid, storage, vmid, checked_ms, ok, detail)
        VALUES (${c.volid}, ${c.storage}, ${c.vmid}, ${now}, ${c.ok ? 1 : 0}, ${c.detail})
        ON CONFLICT (volid) DO UPDATE SET checked_ms = excluded.checked_ms, ok = excluded.ok, detail = excluded.detail`
    }).pipe(Effect.mapError(storeError("recording an archive check")))

  const archiveChecks: ProtectionStoreShape["archiveChecks"] = sql`SELECT volid, storage, vmid, checked_ms, ok, detail
    FROM archive_checks ORDER BY checked_ms DESC`.pipe(
    Effect.flatMap(Schema.decodeUnknown(Schema.Array(CheckRow))),
    Effect.map((rows) =>
      rows.map((r): ArchiveCheck => ({ volid: r.volid, storage: r.storage, vmid: r.vmid, checkedMs: r.checked_ms, ok: r.ok === 1, detail: r.detail }))
    ),
    Effect.mapError(storeError("reading archive checks"))
  )

  return {
    recordRun,
    runs,
    recordRestoreTest,
    restoreTests,
    retentionInForce,
    setRetentionInForce,
    recordArchiveCheck,
    archiveChecks
  } satisfies ProtectionStoreShape
})

export const ProtectionStoreLive: Layer.Layer<ProtectionStore, never, SqlClient.SqlClient> = Layer.effect(ProtectionStore, make)
