/**
 * Break-glass sessions in the state database (migration 0015_break_glass): who opened the
 * emergency access path, under which key, why, and until when; when and why it ended.
 *
 * Invariants the schema holds by itself (not only this code): at most one open session (a partial
 * unique index), an ended session is final (a trigger: a replayed enable can never reopen it), no
 * session is ever deleted. A session is opened BEFORE the unit is started and ended only AFTER the
 * unit was stopped, so the table never shows the door shut while it may be open.
 *
 * `currentSession` is the read `felhom-agent status` uses (over SqlClient only).
 */
import { SqlClient } from "@effect/sql"
import { Effect, Option, Schema } from "effect"
import { JournalError } from "../../layers/Journal.js"

export const END_REASONS = ["expired", "disabled", "consent_withdrawn", "interrupted", "start_failed"] as const
export type EndReason = (typeof END_REASONS)[number]

/** A recorded session: what the enable recorded, and how it ended. */
export interface Session extends NewSession {
  readonly endedAtMs: number | null
  readonly endReason: EndReason | null
  readonly stopError: string | null
}

/** What `status` shows: the open session, with times as ISO 8601 UTC. */
export interface CurrentSession {
  readonly active: true
  readonly id: string
  readonly since: string
  readonly until: string
  readonly signer: string
  readonly fingerprint: string
  readonly reason: string
  /** The last stop that failed while this session should have ended (it stays open, retried). */
  readonly stopError: string | null
}

const Row = Schema.Struct({
  id: Schema.String,
  op_id: Schema.String,
  job_id: Schema.NullOr(Schema.String),
  enabled_at_ms: Schema.Number,
  until_ms: Schema.Number,
  signer: Schema.String,
  fingerprint: Schema.String,
  reason: Schema.String,
  ended_at_ms: Schema.NullOr(Schema.Number),
  end_reason: Schema.NullOr(Schema.Literal(...END_REASONS)),
  stop_error: Schema.NullOr(Schema.String)
})
const Rows = Schema.Array(Row)

const toSession = (r: typeof Row.Type): Session => ({
  id: r.id,
  opId: r.op_id,
  jobId: r.job_id,
  enabledAtMs: r.enabled_at_ms,
  untilMs: r.until_ms,
  signer: r.signer,
  fingerprint: r.fingerprint,
  reason: r.reason,
  endedAtMs: r.ended_at_ms,
  endReason: r.end_reason,
  stopError: r.stop_error
})

export const isoSeconds = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

/** SQL failures become JournalError (the state store's one error); decode failures too. */
const stored = <A, E, R>(what: string, eff: Effect.Effect<A, E, R>): Effect.Effect<A, JournalError, R> =>
  Effect.mapError(eff, (e) =>
    new JournalError({
      message: `break-glass store (${what}): ${typeof e === "object" && e !== null && "message" in e ? String(e.message) : "error"}`
    }))

const COLUMNS = "id, op_id, job_id, enabled_at_ms, until_ms, signer, fingerprint, reason, ended_at_ms, end_reason, stop_error"

const select = (sql: SqlClient.SqlClient, where: string, params: ReadonlyArray<string | number>) =>
  sql.unsafe(`SELECT ${COLUMNS} FROM break_glass_sessions ${where}`, params).pipe(
    Effect.flatMap(Schema.decodeUnknown(Rows)),
    Effect.map((rows) => rows.map(toSession))
  )

export interface NewSession {
  readonly id: string
  readonly opId: string
  readonly jobId: string | null
  readonly enabledAtMs: number
  readonly untilMs: number
  readonly signer: string
  readonly fingerprint: string
  readonly reason: string
}

export interface BreakGlassStoreShape {
  /** Open sessions, earliest `until` first (at most one, by the schema). */
  readonly open: Effect.Effect<ReadonlyArray<Session>, JournalError>
  readonly byOp: (opId: string) => Effect.Effect<Option.Option<Session>, JournalError>
  /** The newest session, open or ended. */
  readonly latest: Effect.Effect<Option.Option<Session>, JournalError>
  /** Fails (JournalError) if a session is already open. */
  readonly insert: (s: NewSession) => Effect.Effect<void, JournalError>
  /** Ends the session if it is still open; false if it had already ended. */
  readonly end: (id: string, atMs: number, reason: EndReason) => Effect.Effect<boolean, JournalError>
  /** Records a failed stop on an open session (it stays open). */
  readonly noteStopError: (id: string, message: string) => Effect.Effect<void, JournalError>
}

export const makeStore: Effect.Effect<BreakGlassStoreShape, never, SqlClient.SqlClient> = Effect.map(
  SqlClient.SqlClient,
  (sql): BreakGlassStoreShape => ({
    open: stored("open", select(sql, "WHERE ended_at_ms IS NULL ORDER BY until_ms", [])),
    byOp: (opId) => stored("byOp", Effect.map(select(sql, "WHERE op_id = ?", [opId]), (rows) => Option.fromNullable(rows[0]))),
    latest: stored("latest", Effect.map(select(sql, "ORDER BY enabled_at_ms DESC, rowid DESC LIMIT 1", []), (rows) => Option.fromNullable(rows[0]))),
    insert: (s) =>
      stored(
        "insert",
        sql`INSERT INTO break_glass_sessions (id, op_id, job_id, enabled_at_ms, until_ms, signer, fingerprint, reason)
          VALUES (${s.id}, ${s.opId}, ${s.jobId}, ${s.enabledAtMs}, ${s.untilMs}, ${s.signer}, ${s.fingerprint}, ${s.reason})`
      ).pipe(Effect.asVoid),
    end: (id, atMs, reason) =>
      stored(
        "end",
        sql<{ id: string }>`UPDATE break_glass_sessions SET ended_at_ms = ${atMs}, end_reason = ${reason}
          WHERE id = ${id} AND ended_at_ms IS NULL RETURNING id`
      ).pipe(Effect.map((rows) => rows.length === 1)),
    noteStopError: (id, message) =>
      stored(
        "noteStopError",
        sql`UPDATE break_glass_sessions SET stop_error = ${message.slice(0, 300)} WHERE id = ${id} AND ended_at_ms IS NULL`
      ).pipe(Effect.asVoid)
  })
)

/**
 * The open break-glass session, if any (interface 6 of issue 14: `felhom-agent status`). An open
 * session past its `until` is still shown: the unit's stop failed and is being retried.
 */
export const currentSession: Effect.Effect<Option.Option<CurrentSession>, JournalError, SqlClient.SqlClient> = Effect.flatMap(
  makeStore,
  (store) =>
    Effect.map(store.open, (rows) =>
      Option.map(Option.fromNullable(rows[0]), (s): CurrentSession => ({
        active: true,
        id: s.id,
        since: isoSeconds(s.enabledAtMs),
        until: isoSeconds(s.untilMs),
        signer: s.signer,
        fingerprint: s.fingerprint,
        reason: s.reason,
        stopError: s.stopError
      })))
)
