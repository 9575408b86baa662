/**
 * `felhom-agent status` (issue 14): what an operator on the host asks first. Two sources:
 * - the daemon's loopback `GET /status` (StatusBody, 2 s cap): is it running and healthy, last
 *   hub contact, pending signatures, lost guests, watchdog, cloudflared;
 * - the state database, opened READ-ONLY: never created, never migrated, no state lock taken
 *   (a status beside a running daemon or a long `recover` must neither block nor change them):
 *   in-flight and needs_operator operations, lost guests, backups and restore-tests per guest,
 *   storage targets, break-glass.
 * Exit 0 only when all is well; 1 with every finding listed; 2 usage or configuration.
 *
 * Nothing secret is printed: journal payloads and storage creds (sealed) are never read out,
 * details are clipped, and the config's secrets are never touched (only state_dir and
 * status_endpoint are read from it).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Clock, Console, Effect, Either, Option, Schema } from "effect"
import { existsSync } from "node:fs"
import { request } from "node:http"
import { join } from "node:path"
import * as AgentConfigLayer from "../../layers/Config.js"
import { STATE_DB_FILE } from "../../layers/Database.js"
import * as JournalStore from "../../layers/Journal.js"
import * as ProtectionStoreLayer from "../../layers/ProtectionStore.js"
import * as StorageTargetStoreLayer from "../../layers/StorageTargetStore.js"
import { STATUS_PATH, StatusBody } from "../../schema/status.js"
import { currentSession } from "../breakglass/store.js"
import { excerpt as clip } from "../../schema/text.js"
import { CliFailure, toCliFailure } from "./failure.js"

// ---------------------------------------------------------------------------------------------
// The report (`--json` is exactly this, encoded)

const Iso = Schema.NullOr(Schema.String)

export const Finding = Schema.Struct({
  area: Schema.Literal("daemon", "hub", "signatures", "operations", "guests", "backups", "restore_tests", "storage", "break_glass", "cloudflared", "state_db"),
  message: Schema.String
})
export type Finding = typeof Finding.Type

export const OperationView = Schema.Struct({
  id: Schema.String,
  kind: Schema.String,
  vmid: Schema.NullOr(Schema.Int),
  status: Schema.Literal("in_flight", "needs_operator"),
  since: Schema.String,
  /** The newest step written, if any. */
  step: Schema.NullOr(Schema.String),
  detail: Schema.NullOr(Schema.String)
})

export const GuestProtectionView = Schema.Struct({
  vmid: Schema.Int,
  /** customer / lost from the guest records; null: only backup rows know it. */
  record: Schema.NullOr(Schema.Literal("customer", "lost")),
  last_backup_at: Iso,
  backup_age_hours: Schema.NullOr(Schema.Number),
  last_backup_attempt_at: Iso,
  last_backup_result: Schema.NullOr(Schema.Literal("ok", "warnings", "failed", "skipped")),
  last_backup_storage: Schema.NullOr(Schema.String),
  restore_test_at: Iso,
  restore_test_result: Schema.NullOr(Schema.Literal("pass", "fail", "skipped")),
  restore_test_detail: Schema.NullOr(Schema.String)
})

export const StorageTargetView = Schema.Struct({
  id: Schema.String,
  type: Schema.String,
  class: Schema.String,
  role: Schema.String,
  state: Schema.Literal("attached", "detached", "decommissioned"),
  since: Schema.String
})

export const BreakGlassView = Schema.Struct({
  state: Schema.Literal("closed", "open", "unknown"),
  since: Iso,
  until: Iso,
  signer: Schema.NullOr(Schema.String),
  fingerprint: Schema.NullOr(Schema.String),
  reason: Schema.NullOr(Schema.String),
  note: Schema.NullOr(Schema.String)
})
export type BreakGlassView = typeof BreakGlassView.Type

export const StatusReport = Schema.Struct({
  ok: Schema.Boolean,
  checked_at: Schema.String,
  findings: Schema.Array(Finding),
  daemon: Schema.Struct({
    state: Schema.Literal("running", "not_answering", "not_configured"),
    endpoint: Schema.NullOr(Schema.String),
    /** The daemon's own /status body as it answered (null when it did not). */
    status: Schema.NullOr(StatusBody)
  }),
  state_db: Schema.Struct({
    path: Schema.String,
    state: Schema.Literal("ok", "missing", "unreadable")
  }),
  operations: Schema.Array(OperationView),
  lost_guests: Schema.Array(Schema.Int),
  guests: Schema.Array(GuestProtectionView),
  storage_targets: Schema.Array(StorageTargetView),
  break_glass: BreakGlassView
})
export type StatusReport = typeof StatusReport.Type

/** A guest whose newest successful backup is older than this needs attention (a day's schedule, missed twice). */
export const BACKUP_STALE_HOURS = 48
/** The daemon must answer /status within this (wall-clock, socket to last byte). */
export const STATUS_TIMEOUT_MS = 2000
const STATUS_MAX_BYTES = 1024 * 1024
const DETAIL_MAX = 200

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

// ---------------------------------------------------------------------------------------------
// The daemon's /status

/** One GET on loopback; Left is a one-line reason (never the body). */
export const fetchDaemonStatus = (host: string, port: number, timeoutMs = STATUS_TIMEOUT_MS) =>
  Effect.async<Either.Either<StatusBody, string>>((resume) => {
    let settled = false
    const done = (r: Either.Either<StatusBody, string>) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resume(Effect.succeed(r))
    }
    const req = request({ host, port, path: STATUS_PATH, method: "GET", headers: { accept: "application/json" } }, (res) => {
      const chunks: Array<Buffer> = []
      let size = 0
      res.on("data", (c: Buffer) => {
        size += c.length
        if (size > STATUS_MAX_BYTES) {
          req.destroy()
          done(Either.left(`/status answered more than ${STATUS_MAX_BYTES} bytes`))
        } else chunks.push(c)
      })
      res.on("error", () => done(Either.left("/status answer cut off")))
      res.on("end", () => {
        if (res.statusCode !== 200) return done(Either.left(`/status answered HTTP ${res.statusCode ?? "?"}`))
        let parsed: unknown
        try {
          parsed = JSON.parse(Buffer.concat(chunks).toString("utf8"))
        } catch {
          return done(Either.left("/status answered something other than JSON"))
        }
        const decoded = Schema.decodeUnknownEither(StatusBody)(parsed)
        done(Either.isRight(decoded) ? Either.right(decoded.right) : Either.left("/status answered a body that is not a StatusBody"))
      })
    })
    // wall clock on purpose: a hung daemon must not hang the operator's first question
    const timer = setTimeout(() => {
      req.destroy()
      done(Either.left(`no answer within ${timeoutMs} ms`))
    }, timeoutMs)
    req.on("error", (e: NodeJS.ErrnoException) => done(Either.left(e.code ?? e.message)))
    req.end()
    return Effect.sync(() => {
      clearTimeout(timer)
      req.destroy()
    })
  })

// ---------------------------------------------------------------------------------------------
// The state database, read-only

export interface DbView {
  readonly operations: ReadonlyArray<typeof OperationView.Type>
  readonly records: ReadonlyArray<JournalStore.GuestRecord>
  readonly runs: ReadonlyArray<ProtectionStoreLayer.RunRecord>
  readonly tests: ReadonlyArray<ProtectionStoreLayer.RestoreTestRecord>
  readonly targets: ReadonlyArray<StorageTargetStoreLayer.TargetRecord>
  readonly breakGlass: BreakGlassView
  /** Sections that could not be read: each becomes a finding. */
  readonly problems: ReadonlyArray<string>
}

const RESTORE_TESTS_READ = 1000

const closedBreakGlass: BreakGlassView = { state: "closed", since: null, until: null, signer: null, fingerprint: null, reason: null, note: null }

/**
 * Break-glass: the open session from engineer D's store (its `currentSession`). A table that
 * cannot be read (a database from before 0015) is reported unknown, which is a finding: an
 * operator cannot be told access is closed when it is not known.
 */
export const readBreakGlass: Effect.Effect<BreakGlassView, never, SqlClient.SqlClient> = currentSession.pipe(
  Effect.map((o): BreakGlassView =>
    Option.match(o, {
      onNone: () => closedBreakGlass,
      onSome: (s) => ({
        state: "open",
        since: s.since,
        until: s.until,
        signer: clip(s.signer, DETAIL_MAX),
        fingerprint: s.fingerprint,
        reason: clip(s.reason, DETAIL_MAX),
        note: s.stopError === null ? null : `the unit's stop failed: ${clip(s.stopError, DETAIL_MAX)}`
      })
    })
  ),
  Effect.catchAll((e) => Effect.succeed({ ...closedBreakGlass, state: "unknown" as const, note: clip(e.message, DETAIL_MAX) }))
)

const opView = (o: JournalStore.JournalOp, status: "in_flight" | "needs_operator") => ({
  id: o.id,
  kind: o.kind,
  vmid: o.vmid,
  status,
  since: iso(o.createdAtMs),
  step: o.steps.length === 0 ? null : o.steps[o.steps.length - 1]!.name,
  detail: o.detail === null ? null : clip(o.detail, DETAIL_MAX)
})

/** Every section on its own: a table that cannot be read is a problem, never an abort. */
export const readDb: Effect.Effect<DbView, never, SqlClient.SqlClient> = Effect.gen(function*() {
  // root may read a file the service user wrote: no schema-defined function or view runs code here
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe("PRAGMA trusted_schema = OFF").pipe(Effect.ignore)
  const journal = yield* JournalStore.make
  const protection = yield* ProtectionStoreLayer.make
  const targets = yield* StorageTargetStoreLayer.make
  const problems: Array<string> = []
  const section = <A>(name: string, eff: Effect.Effect<A, { readonly message: string }>, fallback: A) =>
    eff.pipe(Effect.catchAll((e) => Effect.sync(() => {
      problems.push(`${name}: ${clip(e.message, DETAIL_MAX)}`)
      return fallback
    })))
  const inFlight = yield* section("in-flight operations", journal.inFlight, [])
  const needsOperator = yield* section("needs_operator operations", journal.list({ status: "needs_operator", limit: 1000 }), [])
  return {
    operations: [...inFlight.map((o) => opView(o, "in_flight")), ...needsOperator.map((o) => opView(o, "needs_operator"))],
    records: yield* section("guest records", journal.guestRecords, []),
    runs: yield* section("protection runs", protection.runs, []),
    tests: yield* section("restore tests", protection.restoreTests(RESTORE_TESTS_READ), []),
    targets: yield* section("storage targets", targets.records, []),
    breakGlass: yield* readBreakGlass,
    problems
  }
})

/**
 * Opens `<state_dir>/state.db` read-only (SQLite refuses every write on this connection) and
 * without the WAL pragma (a write). A missing file is not created: Left "missing".
 */
export const readStateDb = (path: string): Effect.Effect<Either.Either<DbView, "missing" | "unreadable">> =>
  existsSync(path)
    ? readDb.pipe(
      Effect.provide(SqliteClient.layer({ filename: path, readonly: true, disableWAL: true })),
      Effect.map((v): Either.Either<DbView, "missing" | "unreadable"> => Either.right(v)),
      // better-sqlite3 throws from its constructor (permissions, not a database): a defect there
      Effect.catchAllCause(() => Effect.succeed(Either.left("unreadable" as const)))
    )
    : Effect.succeed(Either.left("missing" as const))

// ---------------------------------------------------------------------------------------------
// Findings

export interface StatusInputs {
  readonly nowMs: number
  readonly endpoint: string | null
  readonly daemon: Either.Either<StatusBody, string> | null
  readonly dbPath: string
  readonly db: Either.Either<DbView, "missing" | "unreadable">
}

/** Pure: every finding, one line each, from what was read. */
export const assemble = (i: StatusInputs): StatusReport => {
  const findings: Array<Finding> = []
  const add = (area: Finding["area"], message: string) => findings.push({ area, message })
  const hours = (ms: number) => Math.round(((i.nowMs - ms) / 3_600_000) * 10) / 10

  // the daemon
  const body = i.daemon !== null && Either.isRight(i.daemon) ? i.daemon.right : null
  if (i.daemon === null) add("daemon", "status endpoint disabled (status_endpoint.enabled): the daemon's health is unknown")
  else if (Either.isLeft(i.daemon)) add("daemon", `not running or not answering (${i.endpoint ?? "?"}: ${i.daemon.left})`)
  if (body !== null) {
    const h = body.health
    for (const [check, state] of Object.entries(h.checks)) {
      if (state === "failing") add("daemon", `health check ${check} is failing`)
    }
    if (body.watchdog === "stalled") add("daemon", "the hub loop is stalled: systemd's watchdog will restart the daemon")
    if (body.last_hub_contact_at === null) add("hub", "no hub contact since the daemon started")
    if (body.last_hub_error !== null) add("hub", `last hub exchange failed: ${clip(body.last_hub_error, DETAIL_MAX)}`)
    for (const p of body.pending_signatures) {
      add("signatures", `${p.op}${p.vmid === null ? "" : ` ${p.vmid}`} waits for an operator's signature since ${p.since}: ${clip(p.reason, DETAIL_MAX)}`)
    }
    if (body.cloudflared === "stopped") add("cloudflared", "cloudflared is not ready (the tunnel is down)")
  }

  // the state database
  const db = Either.isRight(i.db) ? i.db.right : null
  if (Either.isLeft(i.db)) {
    add("state_db", i.db.left === "missing"
      ? `no state database at ${i.dbPath} (never started, or state_dir is wrong)`
      : `state database ${i.dbPath} cannot be opened read-only`)
  }
  for (const p of db?.problems ?? []) add("state_db", `unreadable: ${p}`)
  const operations = db?.operations ?? []
  for (const o of operations) {
    if (o.status === "needs_operator") {
      add("operations", `${o.kind}${o.vmid === null ? "" : ` ${o.vmid}`} (${o.id}) needs an operator${o.detail === null ? "" : `: ${o.detail}`}`)
    } else if (body === null) {
      add("operations", `${o.kind}${o.vmid === null ? "" : ` ${o.vmid}`} (${o.id}) is in flight with no daemon answering: recovered at its next start`)
    }
  }

  // guests: lost, backups, restore-tests
  const lost = new Set<number>([...(body?.lost_guests ?? []), ...(db?.records ?? []).filter((r) => r.state === "lost").map((r) => r.vmid)])
  for (const vmid of [...lost].sort((a, b) => a - b)) add("guests", `guest ${vmid} is lost (recover it from a backup)`)

  const vmids = new Set<number>([...(db?.records ?? []).map((r) => r.vmid), ...(db?.runs ?? []).filter((r) => r.kind === "backup").map((r) => r.vmid)])
  const guests = [...vmids].sort((a, b) => a - b).map((vmid) => {
    const record = db?.records.find((r) => r.vmid === vmid)?.state ?? null
    const backups = (db?.runs ?? []).filter((r) => r.kind === "backup" && r.vmid === vmid)
    const newestSuccess = backups.reduce<number | null>((m, r) => (r.lastSuccessMs !== null && (m === null || r.lastSuccessMs > m) ? r.lastSuccessMs : m), null)
    const newestAttempt = backups.reduce<ProtectionStoreLayer.RunRecord | null>((m, r) => (m === null || r.lastAttemptMs > m.lastAttemptMs ? r : m), null)
    // restoreTests are newest first
    const test = (db?.tests ?? []).find((t) => t.vmid === vmid) ?? null
    return {
      vmid,
      record,
      last_backup_at: newestSuccess === null ? null : iso(newestSuccess),
      backup_age_hours: newestSuccess === null ? null : hours(newestSuccess),
      last_backup_attempt_at: newestAttempt === null ? null : iso(newestAttempt.lastAttemptMs),
      last_backup_result: newestAttempt?.lastResult ?? null,
      last_backup_storage: newestAttempt?.storage ?? null,
      restore_test_at: test === null ? null : iso(test.endedMs),
      restore_test_result: test?.result ?? null,
      restore_test_detail: test === null ? null : clip(test.detail, DETAIL_MAX)
    }
  })
  for (const g of guests) {
    if (lost.has(g.vmid)) continue // already its own finding; its backups are what recovers it
    if (g.last_backup_at === null) add("backups", `guest ${g.vmid} has no successful backup`)
    else if ((g.backup_age_hours ?? 0) > BACKUP_STALE_HOURS) add("backups", `guest ${g.vmid}'s newest backup is ${g.backup_age_hours} h old (over ${BACKUP_STALE_HOURS} h)`)
    if (g.last_backup_result === "failed") add("backups", `guest ${g.vmid}'s last backup to ${g.last_backup_storage ?? "?"} failed`)
    if (g.restore_test_result === "fail") add("restore_tests", `guest ${g.vmid}'s last restore test failed: ${g.restore_test_detail ?? ""}`)
  }

  const storage_targets = (db?.targets ?? []).map((t) => ({
    id: t.id,
    type: t.type,
    class: t.class,
    role: t.role,
    state: t.state,
    since: iso(t.changedMs)
  }))

  const bg = db?.breakGlass ?? { ...closedBreakGlass, state: "unknown" as const, note: "state database not read" }
  if (bg.state === "open") {
    const expired = bg.until !== null && Date.parse(bg.until) < i.nowMs
    add("break_glass", `break-glass access is OPEN${bg.until === null ? "" : ` until ${bg.until}`}${bg.signer === null ? "" : ` (enabled by ${bg.signer})`}${expired ? ": past its expiry, it should have closed" : ""}${bg.note === null ? "" : `; ${bg.note}`}`)
  } else if (bg.state === "unknown" && db !== null) add("break_glass", `break-glass state unknown: ${bg.note ?? "not readable"}`)

  return {
    ok: findings.length === 0,
    checked_at: iso(i.nowMs),
    findings,
    daemon: {
      state: i.daemon === null ? "not_configured" : Either.isRight(i.daemon) ? "running" : "not_answering",
      endpoint: i.endpoint,
      status: body
    },
    state_db: { path: i.dbPath, state: Either.isRight(i.db) ? "ok" : i.db.left },
    operations,
    lost_guests: [...lost].sort((a, b) => a - b),
    guests,
    storage_targets,
    break_glass: bg
  }
}

// ---------------------------------------------------------------------------------------------
// Output

export const renderStatus = (r: StatusReport): string => {
  const lines: Array<string> = []
  lines.push(`felhom-agent status: ${r.ok ? "ALL WELL" : `${r.findings.length} finding(s)`}`)
  for (const f of r.findings) lines.push(`  ! ${f.area}: ${f.message}`)
  const s = r.daemon.status
  lines.push("daemon:")
  if (s === null) lines.push(`  ${r.daemon.state === "not_configured" ? "status endpoint disabled" : "not running or not answering"}`)
  else {
    lines.push(`  ${s.health.status} (version ${s.health.version}, pid ${s.health.pid}, since ${s.health.started_at}), ${s.cycles} cycle(s), watchdog ${s.watchdog}, cloudflared ${s.cloudflared}`)
    lines.push(`  last hub contact ${s.last_hub_contact_at ?? "never"}${s.last_hub_error === null ? "" : `, last error: ${clip(s.last_hub_error, DETAIL_MAX)}`}; applied generation ${s.applied_generation ?? "none"}`)
  }
  lines.push(`state database: ${r.state_db.path} (${r.state_db.state})`)
  if (r.operations.length > 0) {
    lines.push("operations:")
    for (const o of r.operations) lines.push(`  ${o.status.padEnd(14)} ${o.kind} ${o.vmid ?? "-"} ${o.id} since ${o.since}${o.step === null ? "" : `, at ${o.step}`}`)
  }
  if (r.guests.length > 0) {
    lines.push("guests (newest backup, age, last attempt; last restore test):")
    for (const g of r.guests) {
      lines.push(
        `  ${g.vmid}${g.record === "lost" ? " LOST" : ""}: backup ${g.last_backup_at ?? "never"}` +
          `${g.backup_age_hours === null ? "" : ` (${g.backup_age_hours} h)`}, last ${g.last_backup_result ?? "-"}` +
          `; restore test ${g.restore_test_result ?? "none"}${g.restore_test_at === null ? "" : ` ${g.restore_test_at}`}`
      )
    }
  }
  if (r.storage_targets.length > 0) {
    lines.push("storage targets:")
    for (const t of r.storage_targets) lines.push(`  ${t.id} [${t.type}, ${t.class}, ${t.role}] ${t.state} since ${t.since}`)
  }
  const bg = r.break_glass
  lines.push(`break-glass: ${bg.state}${bg.state === "open" ? ` since ${bg.since ?? "?"} until ${bg.until ?? "?"} by ${bg.signer ?? "?"}` : ""}`)
  return lines.map(printable).join("\n")
}

/**
 * Text for root's terminal: the strings come from whatever answers on the status port (any local
 * user can bind it while the daemon is down) and from the service user's database, so no control
 * character (escape sequences, a forged line) reaches the terminal.
 */
const printable = (s: string): string => s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, "?")

// ---------------------------------------------------------------------------------------------
// The command

/** Everything read and judged; no output, no exit code (tests). */
export const statusReport = (path: Option.Option<string>) =>
  Effect.gen(function*() {
    const { file } = yield* AgentConfigLayer.loadConfig({ path, mode: "none" })
    const ep = file.status_endpoint
    const endpoint = ep.enabled ? `http://${ep.host === "::1" ? "[::1]" : ep.host}:${ep.port}${STATUS_PATH}` : null
    const dbPath = join(file.state_dir, STATE_DB_FILE)
    const [daemon, db] = yield* Effect.all([
      ep.enabled ? Effect.map(fetchDaemonStatus(ep.host, ep.port), (r) => r as Either.Either<StatusBody, string> | null) : Effect.succeed(null),
      readStateDb(dbPath)
    ], { concurrency: 2 })
    const nowMs = yield* Clock.currentTimeMillis
    return assemble({ nowMs, endpoint, daemon, dbPath, db })
  })

/** `status`: exit 0 all well, 1 findings (each listed), 2 configuration. */
export const statusCommand = (o: { readonly config: Option.Option<string>; readonly json: boolean }) =>
  Effect.gen(function*() {
    const r = yield* statusReport(o.config)
    yield* Console.log(o.json ? JSON.stringify(Schema.encodeSync(StatusReport)(r), null, 2) : renderStatus(r))
    if (!r.ok) return yield* new CliFailure({ code: 1, message: printable(`${r.findings.length} finding(s): ${r.findings[0]!.area}: ${r.findings[0]!.message}`) })
  }).pipe(Effect.mapError(toCliFailure))
