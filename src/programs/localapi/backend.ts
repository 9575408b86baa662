/**
 * What the local API's endpoints do, as one service the HTTP layer (src/layers/LocalApi.ts)
 * calls with the guest the caller's token authorizes. The server owns transport, auth, limits
 * and status mapping; this owns meaning. Every method acts on `vmid` only: the HTTP layer passes
 * the token's guest, never anything from the request.
 */
import { Context, type Effect } from "effect"
import type { VmId } from "../../schema/ids.js"
import type {
  ApiFailure,
  BackupAccepted,
  BackupDueResponse,
  BackupStatusResponse,
  HealthResponse,
  HeartbeatRequest,
  RestoreTestStatusResponse,
  RollbackRequest,
  RollbackResponse,
  SnapshotRequest,
  SnapshotResponse,
  StorageResponse
} from "../../schema/localApi.js"

export interface LocalApiBackendShape {
  readonly storage: (vmid: VmId) => Effect.Effect<StorageResponse, ApiFailure>
  readonly snapshot: (vmid: VmId, req: SnapshotRequest) => Effect.Effect<SnapshotResponse, ApiFailure>
  readonly rollback: (vmid: VmId, req: RollbackRequest) => Effect.Effect<RollbackResponse, ApiFailure>
  readonly backup: (vmid: VmId) => Effect.Effect<BackupAccepted, ApiFailure>
  readonly backupDue: (vmid: VmId) => Effect.Effect<BackupDueResponse, ApiFailure>
  readonly backupStatus: (vmid: VmId) => Effect.Effect<BackupStatusResponse, ApiFailure>
  readonly restoreTestStatus: (vmid: VmId) => Effect.Effect<RestoreTestStatusResponse, ApiFailure>
  readonly heartbeat: (vmid: VmId, req: HeartbeatRequest) => Effect.Effect<void, ApiFailure>
  /** Any authenticated call: the controller is alive (heal's "contact"). Never fails the request. */
  readonly contact: (vmid: VmId) => Effect.Effect<void>
  readonly health: Effect.Effect<HealthResponse>
}

export class LocalApiBackend extends Context.Tag("felhom/LocalApiBackend")<LocalApiBackend, LocalApiBackendShape>() {}
