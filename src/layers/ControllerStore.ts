/**
 * ControllerStore (issue 11): what the agent knows of each guest's controller, in the state
 * database (migration 0010): its deploy (image, bootstrap generation, the pins published to it),
 * what it last reported through the local API (version, health, when), heal restarts, the
 * snapshots a controller may roll back to (their provenance), and the local API's backup jobs.
 *
 * Agent-internal: a controller reaches it only through its own guest's endpoints; a hub never
 * writes it. Store failures are JournalError.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { CertPin, IdentityDirective } from "../schema/bootstrap.js"
import { VmId } from "../schema/ids.js"
import { JournalError } from "./Journal.js"

export type ControllerHealth = "unknown" | "healthy" | "unhealthy"

export interface ControllerRecord {
  readonly vmid: VmId
  /** The image published in the bootstrap config. */
  readonly image: string
  readonly generation: number
  /** The token id the bootstrap files hold. */
  readonly tokenId: string
  /** The mpN key the bootstrap directory is mounted at. */
  readonly mpIndex: number
  readonly pins: ReadonlyArray<CertPin>
  readonly deployedMs: number
  readonly lastContactMs: number | null
  readonly version: string | null
  /** The image the controller said it runs at its last contact. */
  readonly reportedImage: string | null
  readonly health: ControllerHealth
  readonly healthDetail: string | null
  /** The last heal restart, for the once-per-window rule. */
  readonly lastRestartMs: number | null
  /** Set when heal gave up on it (restarted in this window already, still silent); cleared by a contact. */
  readonly unresponsiveSinceMs: number | null
  /**
   * The first-boot directive in force when a recovery replaced the provision one (issue 12);
   * null: the provision directive (derived, bootstrap.ts). Every republish keeps it.
   */
  readonly identity: IdentityDirective | null
}

export interface ControllerDeploy {
  readonly vmid: VmId
  readonly image: string
  readonly generation: number
  readonly tokenId: string
  readonly mpIndex: number
  readonly pins: ReadonlyArray<CertPin>
}

export interface ControllerContact {
  readonly version: string
  readonly image: string
  readonly health: "healthy" | "unhealthy"
  readonly detail: string | null
}

export type SnapshotOrigin = "controller" | "pre-update"

export interface SnapshotRecord {
  readonly vmid: VmId
  readonly name: string
  readonly origin: SnapshotOrigin
  readonly opId: string
  readonly takenMs: number
}

export type ApiJobState = "queued" | "running" | "done" | "failed"

export interface ApiJob {
  readonly id: string
  readonly vmid: VmId
  readonly kind: "backup"
  readonly state: ApiJobState
  readonly requestedMs: number
  readonly endedMs: number | null
  readonly opId: string | null
  /** The archive a done backup made. */
  readonly result: string | null
  readonly error: string | null
}

export interface ControllerStoreShape {
  readonly records: Effect.Effect<ReadonlyArray<ControllerRecord>, JournalError>
  readonly get: (vmid: VmId) => Effect.Effect<Option.Option<ControllerRecord>, JournalError>
  /** A deploy committed (or republished: image, generation, token or pins changed). */
  readonly recordDeploy: (d: ControllerDeploy) => Effect.Effect<void, JournalError>
  /** The controller is gone (undeployed, guest decommissioned): its record and snapshot provenance too. */
  readonly forget: (vmid: VmId) => Effect.Effect<void, JournalError>
  /** Records the directive a recovery published (kept by every later republish). */
  readonly setIdentity: (vmid: VmId, identity: IdentityDirective) => Effect.Effect<void, JournalError>
  /** An authenticated call from the guest's controller (heartbeat carries version and health). */
  readonly recordContact: (vmid: VmId, at: number, contact: Option.Option<ControllerContact>) => Effect.Effect<void, JournalError>
  readonly recordRestart: (vmid: VmId, at: number) => Effect.Effect<void, JournalError>
  readonly markUnresponsive: (vmid: VmId, since: number) => Effect.Effect<void, JournalError>

  /** Snapshot provenance: recorded before the snapshot is requested (by the op that takes it). */
  readonly recordSnapshot: (s: SnapshotRecord) => Effect.Effect<void, JournalError>
  readonly snapshotOf: (vmid: VmId, name: string) => Effect.Effect<Option.Option<SnapshotRecord>, JournalError>
  /** Whether a snapshot of this name is recorded for a guest other than `vmid` (the local API's 403). */
  readonly snapshotOfOther: (vmid: VmId, name: string) => Effect.Effect<boolean, JournalError>
  readonly snapshots: (vmid: VmId) => Effect.Effect<ReadonlyArray<SnapshotRecord>, JournalError>
  readonly forgetSnapshot: (vmid: VmId, name: string) => Effect.Effect<void, JournalError>

  /** Local-API backup jobs. */
  readonly createJob: (vmid: VmId, kind: "backup", at: number) => Effect.Effect<ApiJob, JournalError>
  readonly updateJob: (
    id: string,
    change: { readonly state: ApiJobState; readonly at: number; readonly opId?: string; readonly result?: string; readonly error?: string }
  ) => Effect.Effect<void, JournalError>
  readonly jobs: (vmid: VmId, limit: number) => Effect.Effect<ReadonlyArray<ApiJob>, JournalError>
  /** At start: jobs left queued or running by a crash are failed ("the agent restarted before it ran"). */
  readonly failOrphanJobs: (at: number) => Effect.Effect<number, JournalError>
}

export class ControllerStore extends Context.Tag("felhom/ControllerStore")<ControllerStore, ControllerStoreShape>() {}

// ---------------------------------------------------------------------------------------------
// Live: over the state database (migration 0010)

const Pins = Schema.parseJson(Schema.Array(CertPin))

const ControllerRow = Schema.Struct({
  vmid: VmId,
  image: Schema.String,
  generation: Schema.Int,
  token_id: Schema.String,
  mp_index: Schema.Int,
  pins: Pins,
  deployed_ms: Schema.Int,
  last_contact_ms: Schema.NullOr(Schema.Int),
  version: Schema.NullOr(Schema.String),
  reported_image: Schema.NullOr(Schema.String),
  health: Schema.Literal("unknown", "healthy", "unhealthy"),
  health_detail: Schema.NullOr(Schema.String),
  last_restart_ms: Schema.NullOr(Schema.Int),
  unresponsive_since_ms: Schema.NullOr(Schema.Int),
  identity: Schema.NullOr(Schema.parseJson(IdentityDirective))
})

const SnapshotRow = Schema.Struct({
  vmid: VmId,
  name: Schema.String,
  origin: Schema.Literal("controller", "pre-update"),
  op_id: Schema.String,
  taken_ms: Schema.Int
})

const JobRow = Schema.Struct({
  id: Schema.String,
  vmid: VmId,
  kind: Schema.Literal("backup"),
  state: Schema.Literal("queued", "running", "done", "failed"),
  requested_ms: Schema.Int,
  ended_ms: Schema.NullOr(Schema.Int),
  op_id: Schema.NullOr(Schema.String),
  result: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.String)
})

const toRecord = (r: typeof ControllerRow.Type): ControllerRecord => ({
  vmid: r.vmid,
  image: r.image,
  generation: r.generation,
  tokenId: r.token_id,
  mpIndex: r.mp_index,
  pins: r.pins,
  deployedMs: r.deployed_ms,
  lastContactMs: r.last_contact_ms,
  version: r.version,
  reportedImage: r.reported_image,
  health: r.health,
  healthDetail: r.health_detail,
  lastRestartMs: r.last_restart_ms,
  unresponsiveSinceMs: r.unresponsive_since_ms,
  identity: r.identity
})

const toSnapshot = (r: typeof SnapshotRow.Type): SnapshotRecord => ({
  vmid: r.vmid,
  name: r.name,
  origin: r.origin,
  opId: r.op_id,
  takenMs: r.taken_ms
})

const toJob = (r: typeof JobRow.Type): ApiJob => ({
  id: r.id,
  vmid: r.vmid,
  kind: r.kind,
  state: r.state,
  requestedMs: r.requested_ms,
  endedMs: r.ended_ms,
  opId: r.op_id,
  result: r.result,
  error: r.error
})

const storeError = (what: string) => (e: unknown) =>
  new JournalError({
    message: `controller store: ${what}: ${typeof e === "object" && e !== null && "message" in e && typeof e.message === "string" ? e.message : String(e)}`
  })

const CONTROLLER_COLUMNS = "vmid, image, generation, token_id, mp_index, pins, deployed_ms, last_contact_ms, version, reported_image, health, health_detail, last_restart_ms, unresponsive_since_ms, identity"
const JOB_COLUMNS = "id, vmid, kind, state, requested_ms, ended_ms, op_id, result, error"

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const records: ControllerStoreShape["records"] = sql.unsafe(`SELECT ${CONTROLLER_COLUMNS} FROM controllers ORDER BY vmid`).pipe(
    Effect.flatMap(Schema.decodeUnknown(Schema.Array(ControllerRow))),
    Effect.map((rows) => rows.map(toRecord)),
    Effect.mapError(storeError("reading controllers"))
  )

  const get: ControllerStoreShape["get"] = (vmid) =>
    sql.unsafe(`SELECT ${CONTROLLER_COLUMNS} FROM controllers WHERE vmid = ?`, [vmid]).pipe(
      Effect.flatMap(Schema.decodeUnknown(Schema.Array(ControllerRow))),
      Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), toRecord)),
      Effect.mapError(storeError(`reading controller of ${vmid}`))
    )

  const recordDeploy: ControllerStoreShape["recordDeploy"] = (d) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const pins = yield* Schema.encode(Pins)(d.pins)
      // a redeploy keeps what the controller last reported (heal still knows when it last spoke)
      yield* sql`INSERT INTO controllers (vmid, image, generation, token_id, mp_index, pins, deployed_ms, health)
        VALUES (${d.vmid}, ${d.image}, ${d.generation}, ${d.tokenId}, ${d.mpIndex}, ${pins}, ${now}, 'unknown')
        ON CONFLICT (vmid) DO UPDATE SET image = excluded.image, generation = excluded.generation,
          token_id = excluded.token_id, mp_index = excluded.mp_index, pins = excluded.pins, deployed_ms = excluded.deployed_ms`
    }).pipe(Effect.mapError(storeError(`recording the deploy of ${d.vmid}`)))

  const setIdentity: ControllerStoreShape["setIdentity"] = (vmid, identity) =>
    Effect.gen(function*() {
      const json = yield* Schema.encode(Schema.parseJson(IdentityDirective))(identity)
      yield* sql`UPDATE controllers SET identity = ${json} WHERE vmid = ${vmid}`
    }).pipe(Effect.mapError(storeError(`recording the identity directive of ${vmid}`)))

  const forget: ControllerStoreShape["forget"] = (vmid) =>
    sql.withTransaction(Effect.gen(function*() {
      yield* sql`DELETE FROM controllers WHERE vmid = ${vmid}`
      yield* sql`DELETE FROM controller_snapshots WHERE vmid = ${vmid}`
    })).pipe(Effect.mapError(storeError(`forgetting the controller of ${vmid}`)))

  const recordContact: ControllerStoreShape["recordContact"] = (vmid, at, contact) =>
    (Option.isSome(contact)
      ? sql`UPDATE controllers SET last_contact_ms = MAX(COALESCE(last_contact_ms, 0), ${at}), version = ${contact.value.version},
          reported_image = ${contact.value.image}, health = ${contact.value.health}, health_detail = ${contact.value.detail},
          unresponsive_since_ms = NULL WHERE vmid = ${vmid}`
      : sql`UPDATE controllers SET last_contact_ms = MAX(COALESCE(last_contact_ms, 0), ${at}), unresponsive_since_ms = NULL
          WHERE vmid = ${vmid}`).pipe(Effect.asVoid, Effect.mapError(storeError(`recording a contact of ${vmid}`)))

  const recordRestart: ControllerStoreShape["recordRestart"] = (vmid, at) =>
    sql`UPDATE controllers SET last_restart_ms = ${at} WHERE vmid = ${vmid}`.pipe(
      Effect.asVoid,
      Effect.mapError(storeError(`recording a restart of ${vmid}`))
    )

  const markUnresponsive: ControllerStoreShape["markUnresponsive"] = (vmid, since) =>
    // the first time heal gave up stays the "since"
    sql`UPDATE controllers SET unresponsive_since_ms = COALESCE(unresponsive_since_ms, ${since}) WHERE vmid = ${vmid}`.pipe(
      Effect.asVoid,
      Effect.mapError(storeError(`marking ${vmid} unresponsive`))
    )

  const recordSnapshot: ControllerStoreShape["recordSnapshot"] = (s) =>
    // a retried op re-records its own snapshot; another op's record of the same name is replaced
    // only through forgetSnapshot first (the saga refuses a name that exists)
    sql`INSERT INTO controller_snapshots (vmid, name, origin, op_id, taken_ms)
      VALUES (${s.vmid}, ${s.name}, ${s.origin}, ${s.opId}, ${s.takenMs})
      ON CONFLICT (vmid, name) DO UPDATE SET origin = excluded.origin, op_id = excluded.op_id, taken_ms = excluded.taken_ms`.pipe(
      Effect.asVoid,
      Effect.mapError(storeError(`recording snapshot ${s.name} of ${s.vmid}`))
    )

  const decodeSnapshots = Schema.decodeUnknown(Schema.Array(SnapshotRow))

  const snapshotOf: ControllerStoreShape["snapshotOf"] = (vmid, name) =>
    sql`SELECT vmid, name, origin, op_id, taken_ms FROM controller_snapshots WHERE vmid = ${vmid} AND name = ${name}`.pipe(
      Effect.flatMap(decodeSnapshots),
      Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), toSnapshot)),
      Effect.mapError(storeError(`reading snapshot ${name} of ${vmid}`))
    )

  const snapshotOfOther: ControllerStoreShape["snapshotOfOther"] = (vmid, name) =>
    sql`SELECT vmid, name, origin, op_id, taken_ms FROM controller_snapshots WHERE vmid <> ${vmid} AND name = ${name} LIMIT 1`.pipe(
      Effect.flatMap(decodeSnapshots),
      Effect.map((rows) => rows.length > 0),
      Effect.mapError(storeError(`looking up snapshot ${name}`))
    )

  const snapshots: ControllerStoreShape["snapshots"] = (vmid) =>
    sql`SELECT vmid, name, origin, op_id, taken_ms FROM controller_snapshots WHERE vmid = ${vmid} ORDER BY taken_ms, name`.pipe(
      Effect.flatMap(decodeSnapshots),
      Effect.map((rows) => rows.map(toSnapshot)),
      Effect.mapError(storeError(`reading snapshots of ${vmid}`))
    )

  const forgetSnapshot: ControllerStoreShape["forgetSnapshot"] = (vmid, name) =>
    sql`DELETE FROM controller_snapshots WHERE vmid = ${vmid} AND name = ${name}`.pipe(
      Effect.asVoid,
      Effect.mapError(storeError(`forgetting snapshot ${name} of ${vmid}`))
    )

  const decodeJobs = Schema.decodeUnknown(Schema.Array(JobRow))

  const createJob: ControllerStoreShape["createJob"] = (vmid, kind, at) =>
    Effect.gen(function*() {
      // random, not sequential: a controller cannot guess another guest's job ids (they are never
      // looked up by id across guests anyway)
      const id = `job-${randomBytes(12).toString("hex")}`
      yield* sql`INSERT INTO api_jobs (id, vmid, kind, state, requested_ms) VALUES (${id}, ${vmid}, ${kind}, 'queued', ${at})`
      return { id, vmid, kind, state: "queued", requestedMs: at, endedMs: null, opId: null, result: null, error: null } satisfies ApiJob
    }).pipe(Effect.mapError(storeError(`creating a ${kind} job for ${vmid}`)))

  const updateJob: ControllerStoreShape["updateJob"] = (id, change) => {
    const ended = change.state === "done" || change.state === "failed" ? change.at : null
    return sql`UPDATE api_jobs SET state = ${change.state}, ended_ms = COALESCE(${ended}, ended_ms),
        op_id = COALESCE(${change.opId ?? null}, op_id), result = COALESCE(${change.result ?? null}, result),
        error = COALESCE(${change.error ?? null}, error)
      WHERE id = ${id}`.pipe(Effect.asVoid, Effect.mapError(storeError(`updating job ${id}`)))
  }

  const jobs: ControllerStoreShape["jobs"] = (vmid, limit) =>
    sql.unsafe(`SELECT ${JOB_COLUMNS} FROM api_jobs WHERE vmid = ? ORDER BY requested_ms DESC, rowid DESC LIMIT ?`, [vmid, Math.max(0, Math.floor(limit))]).pipe(
      Effect.flatMap(decodeJobs),
      Effect.map((rows) => rows.map(toJob)),
      Effect.mapError(storeError(`reading jobs of ${vmid}`))
    )

  const failOrphanJobs: ControllerStoreShape["failOrphanJobs"] = (at) =>
    sql.withTransaction(Effect.gen(function*() {
      const rows = yield* sql`SELECT id FROM api_jobs WHERE state IN ('queued', 'running')`.pipe(
        Effect.flatMap(Schema.decodeUnknown(Schema.Array(Schema.Struct({ id: Schema.String }))))
      )
      yield* sql`UPDATE api_jobs SET state = 'failed', ended_ms = ${at}, error = 'the agent restarted before the job finished'
        WHERE state IN ('queued', 'running')`
      return rows.length
    })).pipe(Effect.mapError(storeError("failing orphaned jobs")))

  return {
    records,
    get,
    recordDeploy,
    forget,
    setIdentity,
    recordContact,
    recordRestart,
    markUnresponsive,
    recordSnapshot,
    snapshotOf,
    snapshotOfOther,
    snapshots,
    forgetSnapshot,
    createJob,
    updateJob,
    jobs,
    failOrphanJobs
  } satisfies ControllerStoreShape
})

export const ControllerStoreLive: Layer.Layer<ControllerStore, never, SqlClient.SqlClient> = Layer.effect(ControllerStore, make)
