/**
 * The state database: one SQLite file in the state directory (WAL, synchronous=FULL), migrated
 * with `Migrator.make` from @effect/sql. (`SqliteMigrator.layer` shells out to the sqlite3 binary
 * to dump the schema, which would put a CommandExecutor into every layer above this one.)
 *
 * 0002_journal adds the journal, provenance, idempotency and audit tables (src/layers/Journal.ts).
 *
 * 0003_state_epoch records the database's creation time (the "state epoch") in `meta`, once.
 * Migrations run in one transaction, so a fresh file gets its epoch in the same commit as its
 * schema. A file that predates 0003 gets the time of the upgrade instead: later than its real
 * creation, which is conservative (Authz refuses more ops, never fewer). Triggers make the row
 * write-once. Authz refuses ops issued before the epoch: a deleted or lost state.db takes the
 * nonce records with it, and a re-created one must not accept an op that may already have run.
 */
import { FileSystem } from "@effect/platform"
import { Migrator, SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Cause, Clock, Data, Effect, Layer, Schema } from "effect"
import { AgentConfig } from "./Config.js"

export class DatabaseError extends Data.TaggedError("DatabaseError")<{ readonly message: string }> {}

export const STATE_DB_FILE = "state.db"

/** Migrations in order; ids come from the key prefix. Never edit one that has shipped. */
export const migrations: Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>> = {
  "0001_nonces": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // One row per accepted signed op. The nonce is global (not per signer): a blob's nonce can be
    // used once, whoever signed it. Rows live until the op's expiry plus the skew tolerance.
    yield* sql`CREATE TABLE nonces (
      nonce TEXT PRIMARY KEY NOT NULL,
      signer_fingerprint TEXT NOT NULL,
      op TEXT NOT NULL,
      expires_at_ms INTEGER NOT NULL,
      recorded_at_ms INTEGER NOT NULL
    ) STRICT`
    yield* sql`CREATE INDEX nonces_expiry ON nonces (expires_at_ms)`
  }),
  "0002_journal": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Multi-step ops (SPEC §9). `seq` orders ops independently of the clock; JSON columns are TEXT.
    yield* sql`CREATE TABLE journal_ops (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      id TEXT NOT NULL UNIQUE,
      kind TEXT NOT NULL,
      vmid INTEGER,
      status TEXT NOT NULL CHECK (status IN ('in_flight', 'done', 'rolled_back', 'failed')),
      payload TEXT NOT NULL,
      detail TEXT,
      created_at_ms INTEGER NOT NULL,
      updated_at_ms INTEGER NOT NULL
    ) STRICT`
    yield* sql`CREATE INDEX journal_ops_status ON journal_ops (status, seq)`
    // One row per (op, step); `seq` keeps the order the steps were first written.
    yield* sql`CREATE TABLE journal_steps (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      op_id TEXT NOT NULL REFERENCES journal_ops (id),
      name TEXT NOT NULL,
      status TEXT NOT NULL CHECK (status IN ('started', 'done', 'compensated')),
      upid TEXT,
      data TEXT NOT NULL,
      updated_at_ms INTEGER NOT NULL,
      UNIQUE (op_id, name)
    ) STRICT`
    // Agent-internal provenance: never written from hub data.
    yield* sql`CREATE TABLE provenance (
      vmid INTEGER PRIMARY KEY NOT NULL,
      kind TEXT NOT NULL CHECK (kind IN ('same_transaction', 'scratch')),
      op_id TEXT NOT NULL,
      recorded_at_ms INTEGER NOT NULL
    ) STRICT`
    yield* sql`CREATE TABLE idempotency (
      key TEXT PRIMARY KEY NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('running', 'done')),
      outcome TEXT,
      claimed_at_ms INTEGER NOT NULL,
      completed_at_ms INTEGER
    ) STRICT`
    // Hash-chained audit log. AUTOINCREMENT so sqlite_sequence remembers the highest seq ever
    // written: a deleted newest entry shows up as a gap against it.
    yield* sql`CREATE TABLE audit_log (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      at_ms INTEGER NOT NULL,
      actor TEXT NOT NULL,
      action TEXT NOT NULL,
      target TEXT,
      decision TEXT NOT NULL,
      detail TEXT NOT NULL,
      prev_hash TEXT NOT NULL,
      hash TEXT NOT NULL
    ) STRICT`
  }),
  "0003_state_epoch": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Write-once facts about this database file. `value` is typed per key (STRICT allows ANY).
    yield* sql`CREATE TABLE meta (
      key TEXT PRIMARY KEY NOT NULL,
      value ANY NOT NULL
    ) STRICT`
    yield* sql`CREATE TRIGGER meta_no_update BEFORE UPDATE ON meta
      BEGIN SELECT RAISE(ABORT, 'meta is write-once'); END`
    yield* sql`CREATE TRIGGER meta_no_delete BEFORE DELETE ON meta
      BEGIN SELECT RAISE(ABORT, 'meta is write-once'); END`
    const now = yield* Clock.currentTimeMillis
    yield* sql`INSERT INTO meta (key, value) VALUES (${STATE_EPOCH_KEY}, ${now})`
  }),
  "0004_sagas": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // journal_ops gains the `needs_operator` status. SQLite cannot alter a CHECK, so the table is
    // rebuilt; deferred foreign keys let journal_steps keep pointing at it by name.
    yield* sql`PRAGMA defer_foreign_keys = ON`
    yield* sql`CREATE TABLE journal_ops_v2 (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      id TEXT NOT NULL UNIQUE,
      kind TEXT NOT NULL,
      vmid INTEGER,
      status TEXT NOT NULL CHECK (status IN ('in_flight', 'done', 'rolled_back', 'failed', 'needs_operator')),
      payload TEXT NOT NULL,
      detail TEXT,
      created_at_ms INTEGER NOT NULL,
      updated_at_ms INTEGER NOT NULL
    ) STRICT`
    yield* sql`INSERT INTO journal_ops_v2 SELECT seq, id, kind, vmid, status, payload, detail, created_at_ms, updated_at_ms FROM journal_ops`
    yield* sql`DROP TABLE journal_ops`
    yield* sql`ALTER TABLE journal_ops_v2 RENAME TO journal_ops`
    yield* sql`CREATE INDEX journal_ops_status ON journal_ops (status, seq)`
    // the exact guest instance a create made: its marker tag (issue 8, finding 2)
    yield* sql`ALTER TABLE provenance ADD COLUMN marker TEXT`
    // guests known to hold customer data, and those found lost (finding 6)
    yield* sql`CREATE TABLE guest_records (
      vmid INTEGER PRIMARY KEY NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('customer', 'lost')),
      since_ms INTEGER NOT NULL,
      detail TEXT NOT NULL
    ) STRICT`
  }),
  "0005_store_probe": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // One row the daemon rewrites every cycle: a real write that fails when the store is locked
    // or cannot be written, so the state store's health is known before any mutation.
    yield* sql`CREATE TABLE store_probe (
      id INTEGER PRIMARY KEY CHECK (id = 1),
      at_ms INTEGER NOT NULL
    ) STRICT`
  }),
  "0006_golden_archives": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Archives the agent may provision from: registered by an operator-signed op (or, later, built
    // by the agent itself). The hub's desired state can name only these (issue 8, finding 9).
    yield* sql`CREATE TABLE golden_archives (
      volid TEXT PRIMARY KEY NOT NULL,
      basis TEXT NOT NULL CHECK (basis IN ('signed', 'built')),
      op_id TEXT NOT NULL,
      recorded_at_ms INTEGER NOT NULL
    ) STRICT`
  }),
  "0007_protection": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Data protection (issue 10), src/layers/ProtectionStore.ts. The newest attempt and success
    // per (kind, guest, target): what schedules are computed from, so missed runs collapse.
    yield* sql`CREATE TABLE protection_runs (
      kind TEXT NOT NULL CHECK (kind IN ('backup', 'restore_test', 'verify')),
      vmid INTEGER NOT NULL,
      storage TEXT NOT NULL,
      last_attempt_ms INTEGER NOT NULL,
      last_success_ms INTEGER,
      last_result TEXT NOT NULL CHECK (last_result IN ('ok', 'warnings', 'failed', 'skipped')),
      detail TEXT NOT NULL,
      PRIMARY KEY (kind, vmid, storage)
    ) STRICT`
    // Each self-restore-test, kept for the report.
    yield* sql`CREATE TABLE restore_tests (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      op_id TEXT NOT NULL,
      vmid INTEGER NOT NULL,
      archive TEXT NOT NULL,
      started_ms INTEGER NOT NULL,
      ended_ms INTEGER NOT NULL,
      result TEXT NOT NULL CHECK (result IN ('pass', 'fail', 'skipped')),
      detail TEXT NOT NULL,
      timings TEXT NOT NULL
    ) STRICT`
    // The retention policy in force per target, and what made it so: a policy that would delete
    // more than this one needs an operator's signature before it replaces it.
    yield* sql`CREATE TABLE retention_in_force (
      storage TEXT PRIMARY KEY NOT NULL,
      retention TEXT NOT NULL,
      basis TEXT NOT NULL CHECK (basis IN ('manifest', 'signed')),
      since_ms INTEGER NOT NULL
    ) STRICT`
    // Integrity verify results per archive (a failure raises that guest's restore-test priority).
    yield* sql`CREATE TABLE archive_checks (
      volid TEXT PRIMARY KEY NOT NULL,
      storage TEXT NOT NULL,
      vmid INTEGER NOT NULL,
      checked_ms INTEGER NOT NULL,
      ok INTEGER NOT NULL CHECK (ok IN (0, 1)),
      detail TEXT NOT NULL
    ) STRICT`
  }),
  "0008_storage_targets": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Storage targets the agent attached (issue 10), src/layers/StorageTargetStore.ts: what was
    // fixed at attach (type, durable id, class), where the target stands (attached, detached by
    // a signed job or as empty, decommissioned), and its creds as they arrived: sealed to this
    // host's key (src/programs/protection/creds.ts), never in plain text.
    yield* sql`CREATE TABLE storage_targets (
      id TEXT PRIMARY KEY NOT NULL,
      type TEXT NOT NULL CHECK (type IN ('local-dir', 'usb', 'nfs', 'cifs', 'pbs')),
      durable_id TEXT NOT NULL,
      class TEXT NOT NULL CHECK (class IN ('fast', 'slow')),
      role TEXT NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('attached', 'detached', 'decommissioned')),
      attached_ms INTEGER NOT NULL,
      changed_ms INTEGER NOT NULL,
      creds_sealed TEXT
    ) STRICT`
  }),
  "0009_local_tokens": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // The local API's per-guest bearer tokens (issue 11), src/layers/LocalTokens.ts: only the
    // SHA-256 of each token's secret is kept; the id is the token's public lookup key.
    yield* sql`CREATE TABLE local_tokens (
      id TEXT PRIMARY KEY NOT NULL,
      vmid INTEGER NOT NULL,
      secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
      created_ms INTEGER NOT NULL,
      revoked_ms INTEGER
    ) STRICT`
    yield* sql`CREATE INDEX local_tokens_vmid ON local_tokens (vmid)`
  }),
  "0010_controllers": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Each guest's controller (issue 11), src/layers/ControllerStore.ts: its deploy, what it last
    // reported, heal restarts; the snapshots a controller may roll back to; local-API backup jobs.
    yield* sql`CREATE TABLE controllers (
      vmid INTEGER PRIMARY KEY NOT NULL,
      image TEXT NOT NULL,
      generation INTEGER NOT NULL,
      token_id TEXT NOT NULL,
      mp_index INTEGER NOT NULL,
      pins TEXT NOT NULL,
      deployed_ms INTEGER NOT NULL,
      last_contact_ms INTEGER,
      version TEXT,
      reported_image TEXT,
      health TEXT NOT NULL CHECK (health IN ('unknown', 'healthy', 'unhealthy')),
      health_detail TEXT,
      last_restart_ms INTEGER,
      unresponsive_since_ms INTEGER
    ) STRICT`
    yield* sql`CREATE TABLE controller_snapshots (
      vmid INTEGER NOT NULL,
      name TEXT NOT NULL,
      origin TEXT NOT NULL CHECK (origin IN ('controller', 'pre-update')),
      op_id TEXT NOT NULL,
      taken_ms INTEGER NOT NULL,
      PRIMARY KEY (vmid, name)
    ) STRICT`
    yield* sql`CREATE TABLE api_jobs (
      id TEXT PRIMARY KEY NOT NULL,
      vmid INTEGER NOT NULL,
      kind TEXT NOT NULL CHECK (kind IN ('backup')),
      state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
      requested_ms INTEGER NOT NULL,
      ended_ms INTEGER,
      op_id TEXT,
      result TEXT,
      error TEXT
    ) STRICT`
    yield* sql`CREATE INDEX api_jobs_vmid ON api_jobs (vmid, requested_ms)`
  }),
  "0011_golden_builds": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Golden archives the agent built itself (issue 12, src/layers/GoldenStore.ts): the version it
    // was built as, the sha256 root read from the file, and whether it is current or retired by a
    // newer build (retired archives stay registered and on disk; nothing is deleted). Rows from
    // before (operator-signed registrations) keep NULL version and digest and are current.
    yield* sql`ALTER TABLE golden_archives ADD COLUMN version TEXT`
    yield* sql`ALTER TABLE golden_archives ADD COLUMN sha256 TEXT
      CHECK (sha256 IS NULL OR (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'))`
    yield* sql`ALTER TABLE golden_archives ADD COLUMN state TEXT NOT NULL DEFAULT 'current' CHECK (state IN ('current', 'retired'))`
    yield* sql`ALTER TABLE golden_archives ADD COLUMN state_detail TEXT`
    yield* sql`ALTER TABLE golden_archives ADD COLUMN state_changed_ms INTEGER`
  }),
  "0013_controller_identity": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // The first-boot directive a guest-loss recovery published (issue 12); null: the provision
    // one. (0011 and 0012 are the golden-archive migrations' numbers.)
    yield* sql`ALTER TABLE controllers ADD COLUMN identity TEXT`
  }),
  "0014_enrollment": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // `felhom-agent enroll`'s steps (issue 13, src/programs/enroll/ports.ts): one row per step, so
    // a re-run skips (and verifies) what is done. Not journal ops: the daemon's journal recovery
    // could finish none of them (they run as root and may need the person at the box to type the
    // recovery code); a re-run of enroll is their recovery. `detail` holds public facts only
    // (host id, key fingerprint, escrow generation), never a secret.
    yield* sql`CREATE TABLE enrollment_steps (
      step TEXT PRIMARY KEY NOT NULL,
      status TEXT NOT NULL CHECK (status IN ('started', 'done')),
      detail TEXT NOT NULL,
      updated_at_ms INTEGER NOT NULL
    ) STRICT`
  }),
  "0015_break_glass": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Break-glass sessions (issue 14, src/programs/breakglass/store.ts): one row per signed enable,
    // written before the access unit is started, ended only after it was stopped. Who signed (key
    // id and fingerprint) and until when; never a secret. `stop_error`: the last failed stop of an
    // open session (it stays open and is retried).
    yield* sql`CREATE TABLE break_glass_sessions (
      id TEXT PRIMARY KEY NOT NULL,
      op_id TEXT NOT NULL UNIQUE,
      job_id TEXT,
      enabled_at_ms INTEGER NOT NULL,
      until_ms INTEGER NOT NULL CHECK (until_ms > enabled_at_ms),
      signer TEXT NOT NULL,
      fingerprint TEXT NOT NULL,
      reason TEXT NOT NULL,
      ended_at_ms INTEGER,
      end_reason TEXT CHECK (end_reason IN ('expired', 'disabled', 'consent_withdrawn', 'interrupted', 'start_failed')),
      stop_error TEXT,
      CHECK ((ended_at_ms IS NULL) = (end_reason IS NULL))
    ) STRICT`
    // at most one open session: every open row indexes the same value
    yield* sql`CREATE UNIQUE INDEX break_glass_one_open ON break_glass_sessions ((ended_at_ms IS NULL)) WHERE ended_at_ms IS NULL`
    // an ended session is final: nothing (a replayed job, a bug) reopens or edits it
    yield* sql`CREATE TRIGGER break_glass_ended_final BEFORE UPDATE ON break_glass_sessions
      WHEN OLD.ended_at_ms IS NOT NULL
      BEGIN SELECT RAISE(ABORT, 'an ended break-glass session is final'); END`
    yield* sql`CREATE TRIGGER break_glass_no_delete BEFORE DELETE ON break_glass_sessions
      BEGIN SELECT RAISE(ABORT, 'break-glass sessions are kept'); END`
  })
}

/** The `meta` key of the state epoch: epoch milliseconds when this database file was created. */
export const STATE_EPOCH_KEY = "state_epoch_ms"

const EpochRows = Schema.Array(Schema.Struct({ value: Schema.Number.pipe(Schema.int(), Schema.nonNegative()) }))

/**
 * The state epoch (epoch milliseconds). A missing or garbled row is a DatabaseError: 0003 writes
 * it and triggers keep it, so only a hand-edited file lacks it, and guessing would be unsafe.
 */
export const readStateEpoch: Effect.Effect<number, DatabaseError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql`SELECT value FROM meta WHERE key = ${STATE_EPOCH_KEY}`.pipe(
    Effect.flatMap(Schema.decodeUnknown(EpochRows))
  )
  const first = rows[0]
  if (first === undefined) {
    return yield* new DatabaseError({ message: `state database has no ${STATE_EPOCH_KEY} in meta (edited by hand?)` })
  }
  return first.value
}).pipe(
  Effect.mapError((e) => e._tag === "DatabaseError" ? e : new DatabaseError({ message: `cannot read the state epoch: ${describe(e)}` }))
)

const migrate = Migrator.make({})({ loader: Migrator.fromRecord(migrations), table: "felhom_migrations" })

/** Pragmas, then migrations; fails the layer (with a clear message) if the file is unusable. */
const setup = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  // FULL: a committed nonce or journal row survives power loss, not only a process crash.
  yield* sql`PRAGMA synchronous = FULL`
  yield* sql`PRAGMA foreign_keys = ON`
  yield* sql`PRAGMA busy_timeout = 5000`
  yield* migrate
}).pipe(Effect.mapError((e) => new DatabaseError({ message: `state database setup failed: ${describe(e)}` })))

const describe = (e: unknown): string => {
  if (typeof e === "object" && e !== null && "message" in e && typeof e.message === "string" && e.message.length > 0) {
    const cause = "cause" in e && e.cause instanceof Error ? `: ${e.cause.message}` : ""
    return `${e.message}${cause}`
  }
  return String(e)
}

/** A database at an explicit path (":memory:" for benchmarks and throwaway verification). */
export const layerAt = (filename: string): Layer.Layer<SqlClient.SqlClient | SqliteClient.SqliteClient, DatabaseError> =>
  Layer.effectDiscard(setup).pipe(
    Layer.provideMerge(
      SqliteClient.layer({ filename }).pipe(
        // better-sqlite3 throws from its constructor (missing directory, permissions): that surfaces
        // as a defect, but it is an environment problem the operator must see as such
        Layer.catchAllCause((cause) =>
          Layer.fail(new DatabaseError({ message: `cannot open ${filename}: ${describe(Cause.squash(cause))}` }))
        )
      )
    )
  )

/** The state database in `state_dir` (created 0700 if missing). */
export const DatabaseLive: Layer.Layer<
  SqlClient.SqlClient | SqliteClient.SqliteClient,
  DatabaseError,
  AgentConfig | FileSystem.FileSystem
> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    const fs = yield* FileSystem.FileSystem
    yield* fs.makeDirectory(file.state_dir, { recursive: true, mode: 0o700 }).pipe(
      Effect.mapError((e) => new DatabaseError({ message: `cannot create state_dir ${file.state_dir}: ${e.message}` }))
    )
    return layerAt(`${file.state_dir.replace(/\/+$/, "")}/${STATE_DB_FILE}`)
  })
)
