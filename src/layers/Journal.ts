/**
 * Journal (SPEC §9): the operation journal with in-flight UPIDs, agent-internal provenance, the
 * idempotency store and the hash-chained audit log, all in the state database.
 *
 * Every write is its own transaction and is durable when the call returns (synchronous=FULL). A
 * failed journal write is a defect, never a typed error: the agent cannot act safely without its
 * journal, so the process dies, systemd restarts it and recovery replays the journal.
 * Requires only SqlClient: no HTTP, no processes. Time comes from Clock (TestClock in tests).
 */
import { SqlClient } from "@effect/sql"
import { Cause, Clock, Context, Data, Deferred, Effect, Exit, FiberId, Layer, Option, Schema } from "effect"
import { randomUUID } from "node:crypto"
import { type AuditContent, auditHash, canonicalJson, GENESIS_HASH } from "../schema/journal.js"
import { AuditLog } from "./AuditLog.js"
import { GuestRecords } from "./GuestRecords.js"
import { Idempotency } from "./Idempotency.js"
import { OpLog } from "./OpLog.js"

/**
 * `needs_operator`: the op could not be completed or undone safely (e.g. a create whose
 * compensation failed). It is never resumed, converged or destroyed by the agent: its guest is
 * held and reported until an operator resolves it with a signed op.
 */
export type OpStatus = "in_flight" | "done" | "rolled_back" | "failed" | "needs_operator"
export type StepStatus = "started" | "done" | "compensated"

export interface StepRecord {
  readonly name: string
  readonly status: StepStatus
  readonly upid: string | null
  /** JSON */
  readonly data: unknown
  readonly updatedAtMs: number
}

export interface JournalOp {
  readonly id: string
  readonly kind: string
  readonly vmid: number | null
  readonly status: OpStatus
  /** JSON */
  readonly payload: unknown
  /** In the order each step was first written. */
  readonly steps: ReadonlyArray<StepRecord>
  readonly detail: string | null
  readonly createdAtMs: number
  readonly updatedAtMs: number
}

/** A stored audit entry: its content and the chain hash over it. */
export interface AuditEntry extends AuditContent {
  readonly hash: string
}

export type AuditVerdict =
  | { readonly ok: true; readonly entries: number }
  | { readonly ok: false; readonly entries: number; readonly brokenAtSeq: number; readonly reason: string }

export type Provenance = {
  readonly kind: "same_transaction" | "scratch"
  readonly opId: string
  /** The instance marker the op put on the guest it created (null for older records). */
  readonly marker: string | null
}

/**
 * What the agent knows about a guest beyond PVE: `customer` once it holds customer data (a
 * create sealed it, or it was adopted), `lost` when such a guest disappeared (SPEC §10 guest
 * loss: recovered from a backup, never recreated blank).
 */
export interface GuestRecord {
  readonly vmid: number
  readonly state: "customer" | "lost"
  readonly sinceMs: number
  readonly detail: string
}

export type RunOnceResult<A> =
  | { readonly replayed: false; readonly value: A }
  | { readonly replayed: true; readonly outcome: unknown; readonly interrupted: boolean }

export interface JournalShape {
  /** Dies if `id` is given and already used: op ids are never reused. */
  readonly begin: (op: {
    readonly id?: string
    readonly kind: string
    readonly vmid: number | null
    readonly payload: unknown
  }) => Effect.Effect<JournalOp, JournalError>
  /**
   * Admits an op in ONE transaction: spends its signature's nonce (if signed), claims its
   * idempotency key (if any) and begins it. Either all three are durable or none is, so a kill
   * between claiming a job and journaling it cannot happen, and a nonce is spent only by an op
   * that is really in the journal.
   */
  readonly admit: (a: {
    readonly key: string | null
    readonly nonce: NonceSpend | null
    readonly op: { readonly kind: string; readonly vmid: number | null; readonly payload: unknown }
  }) => Effect.Effect<JournalOp, AdmissionRefused | JournalError>
  /** A real one-row write: fails (JournalError) when the store is locked or cannot be written. */
  readonly probe: Effect.Effect<void, JournalError>
  /** Whether a nonce is recorded as spent (the gate checks it before clearing a signed call). */
  readonly nonceRecorded: (nonce: string) => Effect.Effect<boolean, JournalError>
  /** (Re)starts a step: status started, upid cleared; `data` replaces the step's data if given. */
  readonly stepStarted: (opId: string, step: string, data?: unknown) => Effect.Effect<void, JournalError>
  /**
   * Called with the UPID BEFORE waiting on it, so a crash mid-wait leaves it recoverable.
   * Leaves the step's status and data as they are (a step not yet written is created as started).
   */
  readonly recordUpid: (opId: string, step: string, upid: string) => Effect.Effect<void, JournalError>
  /** `data` replaces the step's data if given; the upid is kept. */
  readonly stepDone: (opId: string, step: string, data?: unknown) => Effect.Effect<void, JournalError>
  readonly stepCompensated: (opId: string, step: string) => Effect.Effect<void, JournalError>
  /** Dies for an unknown op id. */
  readonly finish: (opId: string, status: Exclude<OpStatus, "in_flight">, detail?: string) => Effect.Effect<void, JournalError>
  readonly get: (opId: string) => Effect.Effect<Option.Option<JournalOp>, JournalError>
  /** Oldest first. */
  readonly inFlight: Effect.Effect<ReadonlyArray<JournalOp>, JournalError>
  /** Newest first; `limit` defaults to 100. */
  readonly list: (opts?: { readonly limit?: number; readonly status?: OpStatus }) => Effect.Effect<ReadonlyArray<JournalOp>, JournalError>
  /**
   * Agent-internal provenance (never from the hub): a guest created inside journaled op `opId`,
   * or tagged scratch by the agent. Keyed by vmid, so it must be cleared when the guest is
   * destroyed: PVE reuses vmids.
   */
  readonly recordProvenance: (
    vmid: number,
    kind: "same_transaction" | "scratch",
    opId: string,
    marker?: string
  ) => Effect.Effect<void, JournalError>
  readonly clearProvenance: (vmid: number) => Effect.Effect<void, JournalError>
  readonly provenanceOf: (vmid: number) => Effect.Effect<Option.Option<Provenance>, JournalError>
  /** Records (or refreshes) a guest as holding customer data; a lost record stays lost. */
  readonly markCustomer: (vmid: number, detail: string) => Effect.Effect<void, JournalError>
  /** A lost (or unknown) guest brought back from a backup by a recovery: customer data again. */
  readonly markRecovered: (vmid: number, detail: string) => Effect.Effect<void, JournalError>
  /** A customer guest that disappeared: reported as lost, never recreated blank. */
  readonly markLost: (vmid: number, detail: string) => Effect.Effect<void, JournalError>
  /** Records an archive as a provisioning source (an operator signed it, or the agent built it). */
  readonly registerGolden: (volid: string, basis: "signed" | "built", opId: string) => Effect.Effect<void, JournalError>
  readonly goldenArchives: Effect.Effect<ReadonlySet<string>, JournalError>
  /** Only after a signed decommission or a recovery that brought the guest back. */
  readonly forgetGuest: (vmid: number) => Effect.Effect<void, JournalError>
  readonly guestRecords: Effect.Effect<ReadonlyArray<GuestRecord>, JournalError>
  /** Idempotency store: key → outcome JSON (null while running). */
  readonly idempotencyGet: (
    key: string
  ) => Effect.Effect<Option.Option<{ readonly state: "running" | "done"; readonly outcome: unknown }>, JournalError>
  /** Atomically claims a key; false if it already exists (in any state). */
  readonly idempotencyClaim: (key: string) => Effect.Effect<boolean, JournalError>
  readonly idempotencyComplete: (key: string, outcome: unknown) => Effect.Effect<void, JournalError>
  /**
   * Runs `effect` at most once per key across retries and restarts: a second call returns
   * { replayed: true, outcome } (outcome of the first); a key left "running" by a crash returns
   * { replayed: true, outcome: null, interrupted: true } and does NOT run again.
   *
   * - success: outcome = encode(value).
   * - typed failure: the key is completed with { failed: true, error, message } and the failure
   *   is re-raised; wrap `effect` in Effect.either to choose the encoding yourself.
   * - defect or interruption: the key stays "running" (outcome unknown, like a crash).
   * A concurrent call for a key running in this process waits for it, then replays.
   */
  readonly runOnce: <A, E, R>(
    key: string,
    effect: Effect.Effect<A, E, R>,
    encode: (a: A) => unknown
  ) => Effect.Effect<RunOnceResult<A>, E | JournalError, R>
  /** Append-only, tamper-evident: each entry carries the sha256 of the previous entry's hash + its own canonical content. */
  readonly audit: (e: {
    readonly actor: string
    readonly action: string
    readonly target: string | null
    readonly decision: string
    readonly detail?: unknown
  }) => Effect.Effect<AuditEntry, JournalError>
  /** Oldest→newest of the last n. */
  readonly auditTail: (n: number) => Effect.Effect<ReadonlyArray<AuditEntry>, JournalError>
  /**
   * Recomputes the whole chain: an edited, deleted (anywhere, including the newest, via
   * sqlite_sequence) or reordered entry breaks it. Someone able to rewrite the file can rebuild
   * a consistent chain; only a head hash kept off-host (the hub) catches that.
   */
  readonly verifyAudit: Effect.Effect<AuditVerdict, JournalError>
}

export class Journal extends Context.Tag("felhom/Journal")<Journal, JournalShape>() {}

/**
 * The state store could not be read or written (disk full, locked past the busy timeout, I/O).
 * Typed, not a defect: the operation that needed the write stops before any further PVE
 * mutation, and the daemon keeps heartbeating and reports the store unhealthy.
 */
export class JournalError extends Data.TaggedError("JournalError")<{ readonly message: string }> {}

/** An operator signature's nonce, spent when (and only when) its op is admitted. */
export interface NonceSpend {
  readonly nonce: string
  readonly signerFingerprint: string
  readonly op: string
  readonly expiresAtMs: number
}

/** The op was not admitted: its nonce was already spent, or its idempotency key already claimed. */
export class AdmissionRefused extends Data.TaggedError("AdmissionRefused")<{
  readonly reason: "replay" | "duplicate"
  readonly message: string
}> {}

// ---------------------------------------------------------------------------------------------
// Row decoding: columns are decoded, never cast; a row that does not decode is a defect.

const Json = Schema.parseJson()

const OpRow = Schema.Struct({
  id: Schema.String,
  kind: Schema.String,
  vmid: Schema.NullOr(Schema.Number),
  status: Schema.Literal("in_flight", "done", "rolled_back", "failed", "needs_operator"),
  payload: Json,
  detail: Schema.NullOr(Schema.String),
  created_at_ms: Schema.Number,
  updated_at_ms: Schema.Number
})
const OpRows = Schema.Array(OpRow)

const StepRows = Schema.Array(Schema.Struct({
  op_id: Schema.String,
  name: Schema.String,
  status: Schema.Literal("started", "done", "compensated"),
  upid: Schema.NullOr(Schema.String),
  data: Json,
  updated_at_ms: Schema.Number
}))

const ProvenanceRows = Schema.Array(Schema.Struct({
  kind: Schema.Literal("same_transaction", "scratch"),
  op_id: Schema.String,
  marker: Schema.NullOr(Schema.String)
}))

const GuestRows = Schema.Array(Schema.Struct({
  vmid: Schema.Number,
  state: Schema.Literal("customer", "lost"),
  since_ms: Schema.Number,
  detail: Schema.String
}))

const IdempotencyRows = Schema.Array(Schema.Struct({
  state: Schema.Literal("running", "done"),
  outcome: Schema.NullOr(Json)
}))

// detail stays TEXT here: verifyAudit checks the stored bytes are canonical
const AuditRow = Schema.Struct({
  seq: Schema.Number,
  at_ms: Schema.Number,
  actor: Schema.String,
  action: Schema.String,
  target: Schema.NullOr(Schema.String),
  decision: Schema.String,
  detail: Schema.String,
  prev_hash: Schema.String,
  hash: Schema.String
})
type AuditRow = typeof AuditRow.Type
const AuditRows = Schema.Array(AuditRow)

const SeqRows = Schema.Array(Schema.Struct({ seq: Schema.Number }))

/** SQL failures become JournalError; anything else here (a row that does not decode) is a bug. */
const store = <A, E, R>(eff: Effect.Effect<A, E, R>): Effect.Effect<A, JournalError, R> =>
  Effect.catchAll(eff, (e) =>
    typeof e === "object" && e !== null && "_tag" in e && e._tag === "JournalError"
      ? Effect.fail(e as unknown as JournalError)
      : typeof e === "object" && e !== null && "_tag" in e && e._tag === "SqlError"
      ? Effect.fail(new JournalError({ message: `state store: ${(e as { message?: string }).message ?? "SQL error"}` }))
      : Effect.die(e))

const decode = <A, I>(schema: Schema.Schema<A, I>) => (rows: unknown) => Effect.orDie(Schema.decodeUnknown(schema)(rows))

/** Canonical JSON text for a JSON column; a value JSON cannot carry (BigInt, cycle) is a defect. */
const toJson = (value: unknown) => Effect.try({ try: () => canonicalJson(value), catch: (e) => e }).pipe(Effect.orDie)
const fromJson = (text: string) => Effect.orDie(Schema.decodeUnknown(Json)(text))

const AUDIT_PAGE = 1000
const DEFAULT_LIST_LIMIT = 100

const clampCount = (n: number) => (Number.isFinite(n) ? Math.max(0, Math.floor(n)) : 0)

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  // --- ops and steps -------------------------------------------------------------------------

  const withSteps = (ops: ReadonlyArray<typeof OpRow.Type>) =>
    Effect.gen(function*() {
      if (ops.length === 0) return []
      const steps = yield* sql`
        SELECT op_id, name, status, upid, data, updated_at_ms FROM journal_steps
        WHERE ${sql.in("op_id", ops.map((o) => o.id))} ORDER BY seq`.pipe(Effect.flatMap(decode(StepRows)))
      const byOp = new Map<string, Array<StepRecord>>()
      for (const s of steps) {
        const list = byOp.get(s.op_id) ?? []
        list.push({ name: s.name, status: s.status, upid: s.upid, data: s.data, updatedAtMs: s.updated_at_ms })
        byOp.set(s.op_id, list)
      }
      return ops.map((o): JournalOp => ({
        id: o.id,
        kind: o.kind,
        vmid: o.vmid,
        status: o.status,
        payload: o.payload,
        steps: byOp.get(o.id) ?? [],
        detail: o.detail,
        createdAtMs: o.created_at_ms,
        updatedAtMs: o.updated_at_ms
      }))
    })

  const OP_COLUMNS = sql`id, kind, vmid, status, payload, detail, created_at_ms, updated_at_ms`

  const begin: JournalShape["begin"] = Effect.fn("Journal.begin")(function*(op) {
    const id = op.id ?? randomUUID()
    const at = yield* Clock.currentTimeMillis
    const payloadText = yield* toJson(op.payload)
    yield* sql`
      INSERT INTO journal_ops (id, kind, vmid, status, payload, detail, created_at_ms, updated_at_ms)
      VALUES (${id}, ${op.kind}, ${op.vmid}, 'in_flight', ${payloadText}, NULL, ${at}, ${at})`
    const created: JournalOp = {
      id,
      kind: op.kind,
      vmid: op.vmid,
      status: "in_flight",
      payload: yield* fromJson(payloadText), // as `get` will return it
      steps: [],
      detail: null,
      createdAtMs: at,
      updatedAtMs: at
    }
    return created
  }, store)

  const admit: JournalShape["admit"] = (a) =>
    Effect.gen(function*() {
      const id = randomUUID()
      const at = yield* Clock.currentTimeMillis
      const payloadText = yield* toJson(a.op.payload)
      const outcome = yield* Effect.gen(function*() {
        if (a.nonce !== null) {
          const n = a.nonce
          const rows = yield* sql<{ nonce: string }>`
            INSERT INTO nonces (nonce, signer_fingerprint, op, expires_at_ms, recorded_at_ms)
            VALUES (${n.nonce}, ${n.signerFingerprint}, ${n.op}, ${n.expiresAtMs}, ${at})
            ON CONFLICT (nonce) DO NOTHING RETURNING nonce`
          if (rows.length !== 1) return "replay" as const
        }
        if (a.key !== null) {
          const rows = yield* sql<{ key: string }>`
            INSERT INTO idempotency (key, state, outcome, claimed_at_ms) VALUES (${a.key}, 'running', NULL, ${at})
            ON CONFLICT (key) DO NOTHING RETURNING key`
          if (rows.length !== 1) return "duplicate" as const
        }
        yield* sql`
          INSERT INTO journal_ops (id, kind, vmid, status, payload, detail, created_at_ms, updated_at_ms)
          VALUES (${id}, ${a.op.kind}, ${a.op.vmid}, 'in_flight', ${payloadText}, NULL, ${at}, ${at})`
        return "admitted" as const
      }).pipe(
        // a refusal rolls the whole transaction back: nothing of it stays
        Effect.flatMap((r) => (r === "admitted" ? Effect.succeed(r) : Effect.fail(r))),
        sql.withTransaction,
        Effect.catchIf((e): e is "replay" | "duplicate" => e === "replay" || e === "duplicate", (r) => Effect.succeed(r)),
        store
      )
      if (outcome === "replay") {
        return yield* new AdmissionRefused({ reason: "replay", message: "this op's nonce was already used: replay refused" })
      }
      if (outcome === "duplicate") {
        return yield* new AdmissionRefused({ reason: "duplicate", message: `${a.key ?? "the key"} was already claimed` })
      }
      const created: JournalOp = {
        id,
        kind: a.op.kind,
        vmid: a.op.vmid,
        status: "in_flight",
        payload: yield* fromJson(payloadText),
        steps: [],
        detail: null,
        createdAtMs: at,
        updatedAtMs: at
      }
      return created
    }).pipe(Effect.withSpan("Journal.admit"))

  const probe: JournalShape["probe"] = Effect.gen(function*() {
    const at = yield* Clock.currentTimeMillis
    yield* sql`INSERT INTO store_probe (id, at_ms) VALUES (1, ${at}) ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms`
  }).pipe(store, Effect.withSpan("Journal.probe"))

  const nonceRecorded: JournalShape["nonceRecorded"] = (nonce) =>
    sql<{ n: number }>`SELECT 1 AS n FROM nonces WHERE nonce = ${nonce}`.pipe(
      Effect.map((rows) => rows.length > 0),
      store,
      Effect.withSpan("Journal.nonceRecorded")
    )

  /** Bumps the op's updated_at in the same transaction as a step write; an unknown op is a bug. */
  const touchOp = (opId: string, at: number) =>
    sql<{ id: string }>`UPDATE journal_ops SET updated_at_ms = ${at} WHERE id = ${opId} RETURNING id`.pipe(
      Effect.flatMap((rows) => rows.length === 1 ? Effect.void : Effect.dieMessage(`journal: unknown op ${opId}`))
    )

  const stepWrite = (opId: string, write: (at: number) => Effect.Effect<unknown, unknown>) =>
    Effect.gen(function*() {
      const at = yield* Clock.currentTimeMillis
      yield* Effect.gen(function*() {
        yield* touchOp(opId, at)
        yield* write(at)
      }).pipe(sql.withTransaction)
    }).pipe(store)

  const optionalJson = (data: unknown) => data === undefined ? Effect.succeed(null) : toJson(data)

  const stepStarted: JournalShape["stepStarted"] = (opId, step, data) =>
    Effect.flatMap(optionalJson(data), (d) =>
      stepWrite(opId, (at) =>
        sql`
          INSERT INTO journal_steps (op_id, name, status, upid, data, updated_at_ms)
          VALUES (${opId}, ${step}, 'started', NULL, COALESCE(${d}, 'null'), ${at})
          ON CONFLICT (op_id, name) DO UPDATE SET
            status = 'started', upid = NULL, data = COALESCE(${d}, data), updated_at_ms = ${at}`)).pipe(
        Effect.withSpan("Journal.stepStarted")
      )

  const recordUpid: JournalShape["recordUpid"] = (opId, step, upid) =>
    stepWrite(opId, (at) =>
      sql`
        INSERT INTO journal_steps (op_id, name, status, upid, data, updated_at_ms)
        VALUES (${opId}, ${step}, 'started', ${upid}, 'null', ${at})
        ON CONFLICT (op_id, name) DO UPDATE SET upid = ${upid}, updated_at_ms = ${at}`).pipe(
      Effect.withSpan("Journal.recordUpid")
    )

  const stepDone: JournalShape["stepDone"] = (opId, step, data) =>
    Effect.flatMap(optionalJson(data), (d) =>
      stepWrite(opId, (at) =>
        sql`
          INSERT INTO journal_steps (op_id, name, status, upid, data, updated_at_ms)
          VALUES (${opId}, ${step}, 'done', NULL, COALESCE(${d}, 'null'), ${at})
          ON CONFLICT (op_id, name) DO UPDATE SET
            status = 'done', data = COALESCE(${d}, data), updated_at_ms = ${at}`)).pipe(
        Effect.withSpan("Journal.stepDone")
      )

  const stepCompensated: JournalShape["stepCompensated"] = (opId, step) =>
    stepWrite(opId, (at) =>
      sql`
        INSERT INTO journal_steps (op_id, name, status, upid, data, updated_at_ms)
        VALUES (${opId}, ${step}, 'compensated', NULL, 'null', ${at})
        ON CONFLICT (op_id, name) DO UPDATE SET status = 'compensated', updated_at_ms = ${at}`).pipe(
      Effect.withSpan("Journal.stepCompensated")
    )

  const finish: JournalShape["finish"] = Effect.fn("Journal.finish")(function*(opId, status, detail) {
    const at = yield* Clock.currentTimeMillis
    const rows = yield* sql<{ id: string }>`
      UPDATE journal_ops SET status = ${status}, detail = ${detail ?? null}, updated_at_ms = ${at}
      WHERE id = ${opId} RETURNING id`
    if (rows.length !== 1) return yield* Effect.dieMessage(`journal: finish of unknown op ${opId}`)
  }, store)

  const get: JournalShape["get"] = Effect.fn("Journal.get")(function*(opId) {
    const ops = yield* sql`SELECT ${OP_COLUMNS} FROM journal_ops WHERE id = ${opId}`.pipe(Effect.flatMap(decode(OpRows)))
    const [op] = yield* withSteps(ops)
    return Option.fromNullable(op)
  }, store)

  const inFlight: JournalShape["inFlight"] =
    sql`SELECT ${OP_COLUMNS} FROM journal_ops WHERE status = 'in_flight' ORDER BY seq ASC`.pipe(
      Effect.flatMap(decode(OpRows)),
      Effect.flatMap(withSteps),
      store,
      Effect.withSpan("Journal.inFlight")
    )

  const list: JournalShape["list"] = Effect.fn("Journal.list")(function*(opts) {
    const limit = clampCount(opts?.limit ?? DEFAULT_LIST_LIMIT)
    const where = opts?.status === undefined ? sql`` : sql`WHERE status = ${opts.status}`
    const ops = yield* sql`SELECT ${OP_COLUMNS} FROM journal_ops ${where} ORDER BY seq DESC LIMIT ${limit}`.pipe(
      Effect.flatMap(decode(OpRows))
    )
    return yield* withSteps(ops)
  }, store)

  // --- provenance ----------------------------------------------------------------------------

  const recordProvenance: JournalShape["recordProvenance"] = Effect.fn("Journal.recordProvenance")(function*(vmid, kind, opId, marker) {
    const at = yield* Clock.currentTimeMillis
    const m = marker ?? null
    yield* sql`
      INSERT INTO provenance (vmid, kind, op_id, recorded_at_ms, marker) VALUES (${vmid}, ${kind}, ${opId}, ${at}, ${m})
      ON CONFLICT (vmid) DO UPDATE SET kind = ${kind}, op_id = ${opId}, recorded_at_ms = ${at}, marker = ${m}`
  }, store)

  const markCustomer: JournalShape["markCustomer"] = Effect.fn("Journal.markCustomer")(function*(vmid, detail) {
    const at = yield* Clock.currentTimeMillis
    yield* sql`
      INSERT INTO guest_records (vmid, state, since_ms, detail) VALUES (${vmid}, 'customer', ${at}, ${detail})
      ON CONFLICT (vmid) DO NOTHING`
  }, store)

  const markRecovered: JournalShape["markRecovered"] = Effect.fn("Journal.markRecovered")(function*(vmid, detail) {
    const at = yield* Clock.currentTimeMillis
    yield* sql`
      INSERT INTO guest_records (vmid, state, since_ms, detail) VALUES (${vmid}, 'customer', ${at}, ${detail})
      ON CONFLICT (vmid) DO UPDATE SET state = 'customer', since_ms = ${at}, detail = ${detail}`
  }, store)

  const markLost: JournalShape["markLost"] = Effect.fn("Journal.markLost")(function*(vmid, detail) {
    const at = yield* Clock.currentTimeMillis
    yield* sql`
      INSERT INTO guest_records (vmid, state, since_ms, detail) VALUES (${vmid}, 'lost', ${at}, ${detail})
      ON CONFLICT (vmid) DO UPDATE SET state = 'lost', since_ms = ${at}, detail = ${detail}
      WHERE guest_records.state <> 'lost'`
  }, store)

  const registerGolden: JournalShape["registerGolden"] = Effect.fn("Journal.registerGolden")(function*(volid, basis, opId) {
    const at = yield* Clock.currentTimeMillis
    yield* sql`
      INSERT INTO golden_archives (volid, basis, op_id, recorded_at_ms) VALUES (${volid}, ${basis}, ${opId}, ${at})
      ON CONFLICT (volid) DO UPDATE SET basis = ${basis}, op_id = ${opId}, recorded_at_ms = ${at}`
  }, store)

  const goldenArchives: JournalShape["goldenArchives"] = sql<{ volid: string }>`SELECT volid FROM golden_archives`.pipe(
    Effect.map((rows): ReadonlySet<string> => new Set(rows.map((r) => String(r.volid)))),
    store,
    Effect.withSpan("Journal.goldenArchives")
  )

  const forgetGuest: JournalShape["forgetGuest"] = (vmid) =>
    sql`DELETE FROM guest_records WHERE vmid = ${vmid}`.pipe(Effect.asVoid, store, Effect.withSpan("Journal.forgetGuest"))

  const guestRecords: JournalShape["guestRecords"] = sql`SELECT vmid, state, since_ms, detail FROM guest_records ORDER BY vmid`.pipe(
    Effect.flatMap(decode(GuestRows)),
    Effect.map((rows) => rows.map((r): GuestRecord => ({ vmid: r.vmid, state: r.state, sinceMs: r.since_ms, detail: r.detail }))),
    store,
    Effect.withSpan("Journal.guestRecords")
  )

  const clearProvenance: JournalShape["clearProvenance"] = (vmid) =>
    sql`DELETE FROM provenance WHERE vmid = ${vmid}`.pipe(Effect.asVoid, store, Effect.withSpan("Journal.clearProvenance"))

  const provenanceOf: JournalShape["provenanceOf"] = (vmid) =>
    sql`SELECT kind, op_id, marker FROM provenance WHERE vmid = ${vmid}`.pipe(
      Effect.flatMap(decode(ProvenanceRows)),
      Effect.map((rows) =>
        Option.map(Option.fromNullable(rows[0]), (r): Provenance => ({ kind: r.kind, opId: r.op_id, marker: r.marker }))
      ),
      store,
      Effect.withSpan("Journal.provenanceOf")
    )

  // --- idempotency ---------------------------------------------------------------------------

  const idempotencyGet: JournalShape["idempotencyGet"] = (key) =>
    sql`SELECT state, outcome FROM idempotency WHERE key = ${key}`.pipe(
      Effect.flatMap(decode(IdempotencyRows)),
      Effect.map((rows) => Option.fromNullable(rows[0])),
      store,
      Effect.withSpan("Journal.idempotencyGet")
    )

  const idempotencyClaim: JournalShape["idempotencyClaim"] = Effect.fn("Journal.idempotencyClaim")(function*(key) {
    const at = yield* Clock.currentTimeMillis
    const rows = yield* sql<{ key: string }>`
      INSERT INTO idempotency (key, state, outcome, claimed_at_ms) VALUES (${key}, 'running', NULL, ${at})
      ON CONFLICT (key) DO NOTHING RETURNING key`
    return rows.length === 1
  }, store)

  const idempotencyComplete: JournalShape["idempotencyComplete"] = Effect.fn("Journal.idempotencyComplete")(
    function*(key, outcome) {
      const at = yield* Clock.currentTimeMillis
      const text = yield* toJson(outcome)
      yield* sql`
        INSERT INTO idempotency (key, state, outcome, claimed_at_ms, completed_at_ms)
        VALUES (${key}, 'done', ${text}, ${at}, ${at})
        ON CONFLICT (key) DO UPDATE SET state = 'done', outcome = ${text}, completed_at_ms = ${at}`
    },
    store
  )

  const replayOf = (key: string) =>
    Effect.map(idempotencyGet(key), (row): RunOnceResult<never> =>
      Option.isSome(row) && row.value.state === "done"
        ? { replayed: true, outcome: row.value.outcome, interrupted: false }
        // "running" with no run of it in this process: a crash, a defect or an interruption
        // cut it short, so its outcome is unknown and it must not run again
        : { replayed: true, outcome: null, interrupted: true })

  /** What a typed failure is recorded as; falls back to the message if the error is not JSON. */
  const failureOutcome = (e: unknown): unknown => {
    const message = e instanceof Error ? e.message : String(e)
    try {
      return JSON.parse(canonicalJson({ failed: true, error: e, message }))
    } catch {
      return { failed: true, error: null, message }
    }
  }

  // keys running in this process: a concurrent call waits for the first instead of misreading
  // its "running" row as a crash
  const running = new Map<string, Deferred.Deferred<void>>()

  const runOnce: JournalShape["runOnce"] = <A, E, R>(key: string, effect: Effect.Effect<A, E, R>, encode: (a: A) => unknown) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.suspend((): Effect.Effect<RunOnceResult<A>, E | JournalError, R> => {
        const inProcess = running.get(key)
        if (inProcess !== undefined) return Effect.zipRight(restore(Deferred.await(inProcess)), replayOf(key))
        const done = Deferred.unsafeMake<void>(FiberId.none)
        running.set(key, done)
        const release = Effect.sync(() => {
          running.delete(key)
          Deferred.unsafeDone(done, Exit.void)
        })
        return Effect.gen(function*() {
          if (!(yield* idempotencyClaim(key))) return yield* replayOf(key)
          const exit = yield* Effect.exit(restore(effect))
          if (Exit.isSuccess(exit)) {
            const outcome = yield* Effect.try({ try: () => encode(exit.value), catch: (e) => e }).pipe(Effect.orDie)
            yield* idempotencyComplete(key, outcome)
            const result: RunOnceResult<A> = { replayed: false, value: exit.value }
            return result
          }
          if (!Cause.isInterrupted(exit.cause) && !Cause.isDie(exit.cause)) {
            const failure = Cause.failureOption(exit.cause)
            if (Option.isSome(failure)) yield* idempotencyComplete(key, failureOutcome(failure.value))
          }
          return yield* Effect.failCause(exit.cause)
        }).pipe(Effect.ensuring(release))
      })
    ).pipe(Effect.withSpan("Journal.runOnce", { attributes: { key } }))

  // --- audit ---------------------------------------------------------------------------------

  const toEntry = (r: AuditRow, detail: unknown): AuditEntry => ({
    seq: r.seq,
    atMs: r.at_ms,
    actor: r.actor,
    action: r.action,
    target: r.target,
    decision: r.decision,
    detail,
    prevHash: r.prev_hash,
    hash: r.hash
  })

  /** The highest seq ever handed out (survives deleting the newest rows); 0 for an empty log. */
  const sequenceHigh = sql`SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'`.pipe(
    Effect.flatMap(decode(SeqRows)),
    Effect.map((rows) => rows[0]?.seq)
  )

  const audit: JournalShape["audit"] = Effect.fn("Journal.audit")(function*(e) {
    const at = yield* Clock.currentTimeMillis
    const detailText = yield* toJson(e.detail ?? null)
    const detail = yield* fromJson(detailText)
    return yield* Effect.gen(function*() {
      const last = yield* sql`SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1`.pipe(
        Effect.flatMap(decode(Schema.Array(Schema.Struct({ seq: Schema.Number, hash: Schema.String }))))
      )
      const high = yield* sequenceHigh
      // never reuse a seq, even one whose row was deleted: the gap stays visible to verifyAudit
      const seq = Math.max(last[0]?.seq ?? 0, high ?? 0) + 1
      const prevHash = last[0]?.hash ?? GENESIS_HASH
      const hash = auditHash({ seq, atMs: at, actor: e.actor, action: e.action, target: e.target, decision: e.decision, detail, prevHash })
      yield* sql`
        INSERT INTO audit_log (seq, at_ms, actor, action, target, decision, detail, prev_hash, hash)
        VALUES (${seq}, ${at}, ${e.actor}, ${e.action}, ${e.target}, ${e.decision}, ${detailText}, ${prevHash}, ${hash})`
      const entry: AuditEntry = { seq, atMs: at, actor: e.actor, action: e.action, target: e.target, decision: e.decision, detail, prevHash, hash }
      return entry
    }).pipe(sql.withTransaction)
  }, store)

  const auditTail: JournalShape["auditTail"] = Effect.fn("Journal.auditTail")(function*(n) {
    const rows = yield* sql`SELECT * FROM audit_log ORDER BY seq DESC LIMIT ${clampCount(n)}`.pipe(
      Effect.flatMap(decode(AuditRows))
    )
    return yield* Effect.forEach([...rows].reverse(), (r) => Effect.map(fromJson(r.detail), (d) => toEntry(r, d)))
  }, store)

  type Check = { readonly ok: true; readonly hash: string } | { readonly ok: false; readonly reason: string }

  /** One row against the chain so far. Pure: a garbled row is a verdict, not a defect. */
  const checkRow = (r: AuditRow, expectedSeq: number, prevHash: string): Check => {
    if (r.seq !== expectedSeq) return { ok: false, reason: `entry ${expectedSeq} is missing` }
    if (r.prev_hash !== prevHash) {
      return { ok: false, reason: `prev_hash does not match the hash of entry ${expectedSeq - 1} (deleted, reordered or edited)` }
    }
    let detail: unknown
    try {
      detail = JSON.parse(r.detail)
    } catch {
      return { ok: false, reason: "detail is not valid JSON (edited)" }
    }
    if (canonicalJson(detail) !== r.detail) return { ok: false, reason: "detail is not in canonical form (edited)" }
    const hash = auditHash({
      seq: r.seq,
      atMs: r.at_ms,
      actor: r.actor,
      action: r.action,
      target: r.target,
      decision: r.decision,
      detail,
      prevHash: r.prev_hash
    })
    return hash === r.hash ? { ok: true, hash } : { ok: false, reason: "content does not match its hash (edited)" }
  }

  const verifyAudit: JournalShape["verifyAudit"] = Effect.gen(function*() {
    let prevHash = GENESIS_HASH
    let lastSeq = 0
    let entries = 0
    // paged by seq so a long log is never held in memory at once
    for (;;) {
      const page = yield* sql`SELECT * FROM audit_log WHERE seq > ${lastSeq} ORDER BY seq ASC LIMIT ${AUDIT_PAGE}`.pipe(
        Effect.flatMap(decode(AuditRows))
      )
      for (const row of page) {
        const check = checkRow(row, lastSeq + 1, prevHash)
        if (!check.ok) {
          const verdict: AuditVerdict = { ok: false, entries, brokenAtSeq: lastSeq + 1, reason: check.reason }
          return verdict
        }
        prevHash = check.hash
        lastSeq = row.seq
        entries++
      }
      if (page.length < AUDIT_PAGE) break
    }
    const high = yield* sequenceHigh
    if (entries > 0 && high === undefined) {
      const verdict: AuditVerdict = { ok: false, entries, brokenAtSeq: lastSeq + 1, reason: "the log's sequence record is missing" }
      return verdict
    }
    const highSeq = high ?? 0
    if (highSeq !== lastSeq) {
      const verdict: AuditVerdict = {
        ok: false,
        entries,
        brokenAtSeq: Math.min(highSeq, lastSeq) + 1,
        reason: highSeq > lastSeq
          ? `entries ${lastSeq + 1}..${highSeq} were removed from the end of the log`
          : `the log's sequence record (${highSeq}) is behind its last entry (${lastSeq})`
      }
      return verdict
    }
    const verdict: AuditVerdict = { ok: true, entries }
    return verdict
  }).pipe(store, Effect.withSpan("Journal.verifyAudit"))

  const shape: JournalShape = {
    begin,
    admit,
    probe,
    nonceRecorded,
    stepStarted,
    recordUpid,
    stepDone,
    stepCompensated,
    finish,
    get,
    inFlight,
    list,
    recordProvenance,
    clearProvenance,
    provenanceOf,
    markCustomer,
    markRecovered,
    markLost,
    forgetGuest,
    guestRecords,
    registerGolden,
    goldenArchives,
    idempotencyGet,
    idempotencyClaim,
    idempotencyComplete,
    runOnce,
    audit,
    auditTail,
    verifyAudit
  }
  return shape
})

/**
 * The state store's four services (OpLog, GuestRecords, Idempotency, AuditLog), built once on one
 * SQL client; `Journal` is their union, for the CLI and tests that inspect the whole store.
 * Programs ask for the narrow service they use, so their type says what they can touch.
 */
export const JournalLive = Layer.effectContext(
  Effect.map(make, (shape) =>
    Context.make(Journal, shape).pipe(
      Context.add(OpLog, shape),
      Context.add(GuestRecords, shape),
      Context.add(Idempotency, shape),
      Context.add(AuditLog, shape)
    ))
).pipe(Layer.ensureRequirementsType<SqlClient.SqlClient>())

/** The state store's services over a facade someone wrapped (tests inject faults this way). */
export const fromJournal: Layer.Layer<OpLog | GuestRecords | Idempotency | AuditLog, never, Journal> = Layer.effectContext(
  Effect.map(Journal, (shape) =>
    Context.make(OpLog, shape).pipe(Context.add(GuestRecords, shape), Context.add(Idempotency, shape), Context.add(AuditLog, shape)))
)

/** The four narrow services programs use (the `Journal` facade is for the CLI and tests). */
export type StoreServices = OpLog | GuestRecords | Idempotency | AuditLog
