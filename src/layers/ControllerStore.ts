/**
 * ControllerStore (issue 11): what the agent knows of each guest's controller, in the state
 * database (migration 0010): its deploy (image, bootstrap generation, the pins published to it),
 * what it last reported through the local API (version, health, when), heal restarts, the
 * snapshots a controller may roll back to (their provenance), and the local API's backup jobs.
 *
 * Agent-internal: a controller reaches it only through its own guest's endpoints; a hub never
 * writes it. Store failures are JournalError.
 */
import { Context, type Effect, type Option } from "effect"
import type { CertPin } from "../schema/bootstrap.js"
import type { VmId } from "../schema/ids.js"
import type { JournalError } from "./Journal.js"

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
  /** An authenticated call from the guest's controller (heartbeat carries version and health). */
  readonly recordContact: (vmid: VmId, at: number, contact: Option.Option<ControllerContact>) => Effect.Effect<void, JournalError>
  readonly recordRestart: (vmid: VmId, at: number) => Effect.Effect<void, JournalError>
  readonly markUnresponsive: (vmid: VmId, since: number) => Effect.Effect<void, JournalError>

  /** Snapshot provenance: recorded before the snapshot is requested (by the op that takes it). */
  readonly recordSnapshot: (s: SnapshotRecord) => Effect.Effect<void, JournalError>
  readonly snapshotOf: (vmid: VmId, name: string) => Effect.Effect<Option.Option<SnapshotRecord>, JournalError>
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
