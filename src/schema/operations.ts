/**
 * Journaled operations as typed sagas (issue 8). Each kind is a schema-defined tagged struct:
 * its payload (everything recovery needs, decoded back from the journal, never trusted as
 * `unknown`), its literal step names, and the authorization it ran under. `recover` matches
 * over `Operation["_tag"]` exhaustively, so a new kind without a recovery rule does not compile.
 */
import { Schema } from "effect"
import { DesiredGuest } from "./desired.js"
import { SnapshotName, StorageId, VmId, VolumeId } from "./ids.js"
import { Retention } from "./storage.js"

/** A random tag the create path puts on the guest it restores: proof of the exact instance. */
export const InstanceMarker = Schema.String.pipe(Schema.pattern(/^felhom-prov-[0-9a-f]{16}$/))
export type InstanceMarker = typeof InstanceMarker.Type

/**
 * The tag a self-restore-test puts on its scratch guest (issue 10), recorded in the journal before
 * the restore is requested: only a guest carrying exactly this tag, in the scratch vmid range,
 * recorded as this op's scratch provenance, is ever torn down as scratch.
 */
export const ScratchMarker = Schema.String.pipe(Schema.pattern(/^felhom-scratch-[0-9a-f]{16}$/))
export type ScratchMarker = typeof ScratchMarker.Type

export const CreateSource = Schema.Struct({ archive: VolumeId, storage: StorageId })
export type CreateSource = typeof CreateSource.Type

/** What let a destructive op run: an operator signature (recorded for resume and audit). */
export const SignedAuthorization = Schema.Struct({
  basis: Schema.Literal("signed"),
  signer: Schema.String,
  fingerprint: Schema.String,
  nonce: Schema.String,
  job: Schema.NullOr(Schema.String)
})
export type SignedAuthorization = typeof SignedAuthorization.Type

/**
 * What let a host-loss restore run (issue 13): the person at the new box typed the recovery code,
 * which unwrapped the escrowed PBS key with this fingerprint. Only the fingerprint is kept (never
 * the code or the key). The gate accepts it for a fresh `recover` of scenario host-loss into an
 * empty vmid only (gate.ts: approveRecoveryCode).
 */
export const RecoveryCodeAuthorization = Schema.Struct({
  basis: Schema.Literal("recovery-code"),
  fingerprint: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{2}(:[0-9a-f]{2}){31}$/))
})
export type RecoveryCodeAuthorization = typeof RecoveryCodeAuthorization.Type

export const RestoreSource = Schema.Union(
  Schema.Struct({ snapshot: SnapshotName }),
  Schema.Struct({ backup: VolumeId, storage: StorageId, backupStorage: StorageId })
)
export type RestoreSource = typeof RestoreSource.Type

export const ConfigSetPayload = Schema.Struct({
  cores: Schema.optional(Schema.Int),
  memory: Schema.optional(Schema.Int),
  swap: Schema.optional(Schema.Int),
  hostname: Schema.optional(Schema.String),
  description: Schema.optional(Schema.String),
  tags: Schema.optional(Schema.String)
})

export const CreateOperation = Schema.TaggedStruct("create", {
  vmid: VmId,
  spec: DesiredGuest,
  source: CreateSource,
  memoryMiB: Schema.Int,
  marker: InstanceMarker,
  /** Mount points allocated by the `mounts` step (bringup/mounts.ts), `mpN` → value; new volumes, the saga's own. */
  mounts: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), { exact: true })
})
export const DecommissionOperation = Schema.TaggedStruct("decommission", { vmid: VmId, authorization: SignedAuthorization })
export const RestoreNowOperation = Schema.TaggedStruct("restore-now", {
  vmid: VmId,
  source: RestoreSource,
  authorization: SignedAuthorization
})
export const ForceBackupOperation = Schema.TaggedStruct("force-backup", { vmid: VmId, storage: StorageId })
export const StartOperation = Schema.TaggedStruct("start", { vmid: VmId })
export const StopOperation = Schema.TaggedStruct("stop", { vmid: VmId })
export const SetConfigOperation = Schema.TaggedStruct("set_config", { vmid: VmId, set: ConfigSetPayload })
export const ResizeOperation = Schema.TaggedStruct("resize", { vmid: VmId, disk: Schema.Literal("rootfs"), sizeGib: Schema.Int })
/** An operator vouches for an archive as a provisioning source (a golden archive); host-level. */
export const GoldenRegisterOperation = Schema.TaggedStruct("golden-register", {
  vmid: Schema.Null,
  archive: VolumeId,
  authorization: SignedAuthorization
})

/** A backup the agent decided on itself (its schedule, or the local API's due computation). */
export const BackupOperation = Schema.TaggedStruct("backup", {
  vmid: VmId,
  storage: StorageId,
  trigger: Schema.Literal("schedule", "api")
})
/**
 * Retention pruning of archives the agent made, on one target for one guest: `archives` is fixed
 * when the op begins (what the policy in force removes); recovery never resumes a deletion, the
 * next pass recomputes from what is still listed. `basis` says what cleared it: the policy in
 * force (unchanged since the archives were made, or grown), or an operator's signature (a policy
 * that shrank).
 */
export const PruneOperation = Schema.TaggedStruct("prune", {
  vmid: VmId,
  storage: StorageId,
  archives: Schema.Array(VolumeId),
  basis: Schema.Literal("policy", "signed")
})
/**
 * A self-restore-test: the newest backup of `source` restored into scratch guest `vmid` (in the
 * agent's reserved range, link down, unique MAC), booted, health-checked and torn down.
 */
export const RestoreTestOperation = Schema.TaggedStruct("restore-test", {
  vmid: VmId,
  source: VmId,
  archive: VolumeId,
  storage: StorageId,
  marker: ScratchMarker
})

/**
 * A storage target detached (unmounted, kept as it is) or decommissioned (retired) on an
 * operator's signature (src/programs/protection/detach.ts). Host-level; deletes nothing.
 */
export const StorageRemovalOperation = Schema.TaggedStruct("storage-removal", {
  vmid: Schema.Null,
  storage: StorageId,
  mode: Schema.Literal("detach", "decommission"),
  authorization: SignedAuthorization
})

/**
 * An operator-signed retention policy for one target becomes the policy in force (a policy that
 * would delete existing archives is never adopted unsigned). Host-level; touches no PVE object.
 */
export const RetentionChangeOperation = Schema.TaggedStruct("retention-change", {
  vmid: Schema.Null,
  storage: StorageId,
  retention: Retention,
  authorization: SignedAuthorization
})

/**
 * The provisioning back half (issue 11, src/programs/controller/deploy.ts): a local-API token
 * minted (its id journaled first), the bootstrap files written, the directory bind-mounted at
 * /etc/felhom-bootstrap, the deploy recorded. Until `commit`, a failure or crash is compensated
 * (unmount, remove the files, revoke the token), so token and files are both in place or both
 * gone. `replacesToken`: a redeploy's previous token, revoked only after the commit.
 */
export const ControllerDeployOperation = Schema.TaggedStruct("controller-deploy", {
  vmid: VmId,
  tokenId: Schema.String,
  image: Schema.String,
  generation: Schema.Int,
  mpIndex: Schema.Int,
  replacesToken: Schema.NullOr(Schema.String)
})

/**
 * A controller update (src/programs/controller/update.ts): pre-update snapshot → publish the new
 * image → the guest's unit restarts the controller → a healthy heartbeat with the new image
 * within the deadline → commit; otherwise roll back to the snapshot and republish the old image.
 * A crash before `commit` rolls back; after it, done.
 */
export const ControllerUpdateOperation = Schema.TaggedStruct("controller-update", {
  vmid: VmId,
  fromImage: Schema.String,
  toImage: Schema.String,
  snapshot: SnapshotName,
  fromGeneration: Schema.Int,
  deadlineSeconds: Schema.Int,
  basis: Schema.Literal("policy", "signed"),
  authorization: Schema.NullOr(SignedAuthorization)
})

/** Heal: a silent controller's bootstrap republished with a restart request (once per window). */
export const ControllerRestartOperation = Schema.TaggedStruct("controller-restart", {
  vmid: VmId,
  generation: Schema.Int,
  reason: Schema.String
})

/** `POST /snapshot` from the guest's controller: a `ctl-` snapshot, provenance recorded first. */
export const ApiSnapshotOperation = Schema.TaggedStruct("api-snapshot", { vmid: VmId, snapshot: SnapshotName })
/** `POST /rollback` from the guest's controller, to a snapshot it may name (gate: clearControllerRollback). */
export const ApiRollbackOperation = Schema.TaggedStruct("api-rollback", { vmid: VmId, snapshot: SnapshotName })

/**
 * The restore point a guest-loss recovery brings back (src/programs/bringup/tiers.ts): the
 * fastest surviving tier (snapshot, only while the guest exists; then a local vzdump archive;
 * then PBS), fixed when the op is planned and signed, never re-chosen by a resume.
 */
export const RecoverPoint = Schema.Struct({
  tier: Schema.Literal("snapshot", "vzdump", "pbs"),
  /** The snapshot name (tier snapshot) or the backup's volume id. */
  point: Schema.String,
  /** The storage holding the backup; null for a snapshot. */
  backupStorage: Schema.NullOr(StorageId),
  /** When the restore point was taken (epoch ms). */
  takenAtMs: Schema.Number
})
export type RecoverPoint = typeof RecoverPoint.Type

/**
 * Guest-loss DR (issue 12, src/programs/bringup/recoverGuest.ts), on the shared bring-up front
 * half. `mode`:
 * - fresh: the guest is gone; restored into the empty vmid with an instance marker, so until the
 *   seal a failure destroys exactly what this op restored (same-transaction provenance);
 * - overwrite: the guest exists; a safety backup of its current state first, then a forced
 *   restore over it. Never compensated by a destroy: the old volumes are gone once PVE starts,
 *   so a failure holds the op for an operator with the safety backup named;
 * - rollback: the guest exists and has the snapshot; a rollback, no identity change.
 * `spec`: the desired guest when the hub still wants it (sizing and config), else null (the
 * backup's own config stands). No controller deploy: the backup holds the controller.
 */
export const RecoverOperation = Schema.TaggedStruct("recover", {
  vmid: VmId,
  /** host-loss (issue 13): restore mode on a new box, from PBS, always fresh, under the recovery code. */
  scenario: Schema.Literal("guest-loss-total", "guest-loss-partial", "host-loss"),
  source: RecoverPoint,
  mode: Schema.Literal("fresh", "overwrite", "rollback"),
  /** Where the guest's volumes are restored (fresh, overwrite). */
  storage: StorageId,
  spec: Schema.NullOr(DesiredGuest),
  marker: InstanceMarker,
  /**
   * null only for a fresh restore run by a local operator at the console (nothing is overwritten);
   * recovery-code only for a fresh host-loss restore (restoreHost).
   */
  authorization: Schema.NullOr(Schema.Union(SignedAuthorization, RecoveryCodeAuthorization))
})

/**
 * The golden base archive built as root (SPEC §10, src/programs/golden/build.ts): a container
 * `vmid` (from the agent's reserved build range) created from a Debian template with
 * nesting=1,keyctl=1, the golden unit installed, dumped, destroyed, and the archive registered
 * with its version and checksum. The build container is the op's own: a failure or crash before
 * `destroy` removes it (it never held customer data).
 */
export const GoldenBuildOperation = Schema.TaggedStruct("golden-build", {
  vmid: VmId,
  template: VolumeId,
  /** rootfs storage of the build container */
  storage: StorageId,
  /** backup storage that receives the archive */
  dumpStorage: StorageId,
  version: Schema.String,
  basis: Schema.Literal("enrollment", "policy", "signed"),
  authorization: Schema.NullOr(SignedAuthorization)
})

/**
 * Break-glass (issue 14, src/programs/breakglass/enable.ts): the emergency access unit opened on
 * an operator's signature until `until` (ISO 8601 UTC, seconds). `record` writes the session row
 * before `start` starts the unit, so a crash after the start never leaves an unrecorded open door.
 * Host-level.
 */
export const BreakGlassOperation = Schema.TaggedStruct("break-glass", {
  vmid: Schema.Null,
  until: Schema.String.pipe(Schema.pattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/)),
  reason: Schema.String,
  authorization: SignedAuthorization
})

/**
 * Agent self-update (issue 14, src/programs/update/saga.ts): download (the signed release into
 * `<state_dir>/update/<version>/`) → stage (the root helper verifies it again and fills the
 * inactive slot) → activate (the health gate flips `current` and restarts the agent). Host-level.
 * `manifestSha256`: the SHA-256 of the exact RELEASE.json bytes the operator signed for.
 * `authorization` null: run by a local operator (root at the console, `felhom-agent update`).
 */
export const AgentUpdateOperation = Schema.TaggedStruct("agent-update", {
  vmid: Schema.Null,
  version: Schema.String.pipe(Schema.pattern(/^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$/)),
  manifestSha256: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/)),
  authorization: Schema.NullOr(SignedAuthorization)
})

/** After a partial-loss recovery an operator confirmed the source is gone: the guest's NICs come up. */
export const LinkConfirmOperation = Schema.TaggedStruct("link-confirm", { vmid: VmId, nics: Schema.Array(Schema.String) })

export const Operation = Schema.Union(
  CreateOperation,
  DecommissionOperation,
  RestoreNowOperation,
  ForceBackupOperation,
  StartOperation,
  StopOperation,
  SetConfigOperation,
  ResizeOperation,
  GoldenRegisterOperation,
  BackupOperation,
  PruneOperation,
  RestoreTestOperation,
  RetentionChangeOperation,
  StorageRemovalOperation,
  ControllerDeployOperation,
  ControllerUpdateOperation,
  ControllerRestartOperation,
  ApiSnapshotOperation,
  ApiRollbackOperation,
  RecoverOperation,
  GoldenBuildOperation,
  LinkConfirmOperation,
  BreakGlassOperation,
  AgentUpdateOperation
)
export type Operation = typeof Operation.Type
export type OperationKind = Operation["_tag"]
export type OperationOf<K extends OperationKind> = Extract<Operation, { readonly _tag: K }>

/**
 * Step names per kind, in order. The create saga seals (its provenance ends) before the guest is
 * ever started, and removes its instance marker after the seal.
 */
export const STEPS = {
  create: ["restore", "resize", "mounts", "configure", "seal", "untag", "start", "compensate_stop", "compensate_destroy"],
  decommission: ["revoke", "stop", "destroy"],
  "restore-now": ["rollback", "safety_backup", "stop", "restore", "start"],
  "force-backup": ["backup"],
  start: ["start"],
  stop: ["stop"],
  set_config: ["set_config"],
  resize: ["resize"],
  "golden-register": ["register"],
  backup: ["backup"],
  prune: ["delete"],
  "restore-test": ["restore", "start", "check", "stop", "destroy"],
  "retention-change": ["adopt"],
  "storage-removal": ["unmount", "record"],
  "controller-deploy": ["mint", "write", "mount", "commit", "revoke_previous", "compensate_unmount", "compensate_remove", "compensate_revoke"],
  "controller-update": ["snapshot", "publish", "health", "commit", "rollback", "republish"],
  "controller-restart": ["publish"],
  "api-snapshot": ["snapshot"],
  "api-rollback": ["rollback"],
  recover: [
    "rollback",
    "safety_backup",
    "stop",
    "restore",
    "identity",
    "resize",
    "configure",
    "seal",
    "untag",
    "reattach",
    "start",
    "compensate_stop",
    "compensate_destroy"
  ],
  "link-confirm": ["link"],
  "golden-build": ["create", "install", "dump", "checksum", "destroy", "register", "compensate_destroy"],
  "break-glass": ["record", "start"],
  "agent-update": ["download", "stage", "activate"]
} as const satisfies { readonly [K in OperationKind]: ReadonlyArray<string> }

export type StepName<K extends OperationKind> = (typeof STEPS)[K][number]

/** The create steps that must all be done for the guest to count as built. */
export const CREATE_BUILD_STEPS = ["restore", "resize", "mounts", "configure", "seal"] as const

/** The bring-up front half's steps, shared by create (provision) and recover (guest-loss DR). */
export type FrontStep = StepName<"create"> & StepName<"recover">

export const encodeOperation = Schema.encodeSync(Operation)
export const decodeOperation = Schema.decodeUnknownEither(Operation)
