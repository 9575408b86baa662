/**
 * GoldenStore: the golden archives as the agent knows them (issue 12), on the `golden_archives`
 * table (migrations 0006 and 0011). GuestRecords.registerGolden and goldenArchives (an operator's
 * signed registration; the plan's set of accepted sources) work on the same rows; this service
 * adds what a build records and what a refresh changes:
 * - `registerBuilt`: an archive the agent built, with its version and the sha256 root read;
 * - `retire`: a built archive superseded by a newer one is marked retired, never deleted: it
 *   stays registered (the plan still accepts it) and on disk; only `current` changes.
 * Requires only SqlClient: no HTTP, no processes. Time comes from Clock.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Clock, Context, Data, Effect, Layer, Option, Schema } from "effect"
import { JournalError } from "./Journal.js"

export type GoldenState = "current" | "retired"

export interface GoldenRecord {
  readonly volid: string
  readonly basis: "signed" | "built"
  /** The golden-register or golden-build op that recorded it. */
  readonly opId: string
  readonly recordedAtMs: number
  /** Built archives only (null for an operator's signed registration). */
  readonly version: string | null
  readonly sha256: string | null
  readonly state: GoldenState
  /** Why the state last changed (e.g. which build superseded it). */
  readonly stateDetail: string | null
  readonly stateChangedMs: number | null
}

/** The archive is registered already, by another op: a build never takes over someone's row. */
export class GoldenConflict extends Data.TaggedError("GoldenConflict")<{ readonly message: string }> {}

export interface GoldenStoreShape {
  /** Idempotent for the same op; a row of another op is a GoldenConflict and is left as it is. */
  readonly registerBuilt: (r: {
    readonly volid: string
    readonly version: string
    readonly sha256: string
    readonly opId: string
  }) => Effect.Effect<void, GoldenConflict | JournalError>
  /** Oldest first. */
  readonly records: Effect.Effect<ReadonlyArray<GoldenRecord>, JournalError>
  readonly recordOf: (volid: string) => Effect.Effect<Option.Option<GoldenRecord>, JournalError>
  /** current → retired; false when it was not current (or not there). */
  readonly retire: (volid: string, detail: string) => Effect.Effect<boolean, JournalError>
}

export class GoldenStore extends Context.Tag("felhom/GoldenStore")<GoldenStore, GoldenStoreShape>() {}

const Rows = Schema.Array(Schema.Struct({
  volid: Schema.String,
  basis: Schema.Literal("signed", "built"),
  op_id: Schema.String,
  recorded_at_ms: Schema.Number,
  version: Schema.NullOr(Schema.String),
  sha256: Schema.NullOr(Schema.String),
  state: Schema.Literal("current", "retired"),
  state_detail: Schema.NullOr(Schema.String),
  state_changed_ms: Schema.NullOr(Schema.Number)
}))

const toRecord = (r: typeof Rows.Type[number]): GoldenRecord => ({
  volid: r.volid,
  basis: r.basis,
  opId: r.op_id,
  recordedAtMs: r.recorded_at_ms,
  version: r.version,
  sha256: r.sha256,
  state: r.state,
  stateDetail: r.state_detail,
  stateChangedMs: r.state_changed_ms
})

/** SQL failures are JournalError (the store cannot answer); a row that does not decode is a bug (orDie). */
const store = <A, E extends { readonly _tag: string }, R>(eff: Effect.Effect<A, E, R>) =>
  Effect.catchTag(eff as Effect.Effect<A, E | SqlError, R>, "SqlError", (e) =>
    Effect.fail(new JournalError({ message: `state store: ${(e as SqlError).message}` }))) as Effect.Effect<A, Exclude<E, SqlError> | JournalError, R>

const COLUMNS = "volid, basis, op_id, recorded_at_ms, version, sha256, state, state_detail, state_changed_ms"

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const decode = (rows: unknown) => Effect.orDie(Schema.decodeUnknown(Rows)(rows))

  const recordOf: GoldenStoreShape["recordOf"] = (volid) =>
    sql.unsafe(`SELECT ${COLUMNS} FROM golden_archives WHERE volid = ?`, [volid]).pipe(
      Effect.flatMap(decode),
      Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), toRecord)),
      store,
      Effect.withSpan("GoldenStore.recordOf")
    )

  const registerBuilt: GoldenStoreShape["registerBuilt"] = (r) =>
    Effect.gen(function*() {
      const at = yield* Clock.currentTimeMillis
      const inserted = yield* sql<{ volid: string }>`
        INSERT INTO golden_archives (volid, basis, op_id, recorded_at_ms, version, sha256, state, state_changed_ms)
        VALUES (${r.volid}, 'built', ${r.opId}, ${at}, ${r.version}, ${r.sha256}, 'current', ${at})
        ON CONFLICT (volid) DO NOTHING RETURNING volid`
      if (inserted.length === 1) return
      const existing = yield* recordOf(r.volid)
      if (Option.isSome(existing) && existing.value.basis === "built" && existing.value.opId === r.opId && existing.value.sha256 === r.sha256) return
      return yield* new GoldenConflict({
        message: `${r.volid} is registered already (${Option.match(existing, { onNone: () => "by another op", onSome: (e) => `${e.basis}, op ${e.opId}` })}); left as it is`
      })
    }).pipe(store, Effect.withSpan("GoldenStore.registerBuilt"))

  const records: GoldenStoreShape["records"] = sql.unsafe(`SELECT ${COLUMNS} FROM golden_archives ORDER BY recorded_at_ms, volid`).pipe(
    Effect.flatMap(decode),
    Effect.map((rows) => rows.map(toRecord)),
    store,
    Effect.withSpan("GoldenStore.records")
  )

  const retire: GoldenStoreShape["retire"] = (volid, detail) =>
    Effect.gen(function*() {
      const at = yield* Clock.currentTimeMillis
      const changed = yield* sql<{ volid: string }>`
        UPDATE golden_archives SET state = 'retired', state_detail = ${detail}, state_changed_ms = ${at}
        WHERE volid = ${volid} AND state = 'current' RETURNING volid`
      return changed.length === 1
    }).pipe(store, Effect.withSpan("GoldenStore.retire"))

  return GoldenStore.of({ registerBuilt, records, recordOf, retire })
})

export const GoldenStoreLive = Layer.effect(GoldenStore, make).pipe(Layer.ensureRequirementsType<SqlClient.SqlClient>())
