/**
 * Guest-loss DR (issue 12, SPEC §10, §13): what could bring a guest back, which of it to use, and
 * the plan an operator reads and signs (`recover --plan`).
 *
 * - `survivingPoints` reads PVE: the guest's snapshots (only while it exists), its vzdump archives
 *   on every attached non-PBS backup storage, its PBS snapshots; what could not be read is kept
 *   as "looked at", so a refusal says where it looked.
 * - `chooseTier` is pure: the fastest surviving tier (a snapshot only while the guest exists;
 *   then a local vzdump; then PBS), the newest point within it, never another guest's.
 * - `pbsKeyProblem` is pure: an encrypted PBS point on a storage without (the right) key.
 * - `recoverPlan` puts them together with the restore target, the layout (./layout.ts), the
 *   identity rows of the scenario and whether a signature is needed; `formatRecoverPlan` renders it.
 *
 * Which snapshots count: every finished snapshot of the guest, the agent's own included (a
 * controller's `ctl-` snapshot or a pre-update `felhom-preupd-` one is a full state of this very
 * guest, taken by its own controller or by the agent); not PVE's `current` pseudo-entry, not
 * vzdump's transient `vzdump` snapshot, and not one being made or deleted (snapstate set).
 */
import { Clock, Data, Effect, Either, Option, Schema } from "effect"
import { GuestRecords } from "../../layers/GuestRecords.js"
import type { JournalError } from "../../layers/Journal.js"
import { backupOwner, Proxmox } from "../../layers/Proxmox.js"
import type { DesiredGuest } from "../../schema/desired.js"
import { IDENTITY_TABLE, identityRows, type IdentityAttribute, type LossScenario, lossScenario, type Scenario, type Treatment } from "../../schema/identity.js"
import { StorageId, type VmId, VolumeId } from "../../schema/ids.js"
import type { RecoverPoint } from "../../schema/operations.js"
import type { NodeStorageEntry, ProxmoxError, StorageConfigEntry, StorageContentEntry } from "../../schema/proxmox.js"
import type { GuestPlacement, StorageManifest } from "../../schema/storage.js"
import { existing } from "../control/steps.js"
import { type BulkReport, bulkSurvivors, type DroppedMount, type OverwriteLoss, overwriteLosses, type RestoreLayout, restoreLayout } from "./layout.js"

export type Tier = RecoverPoint["tier"]
/** Fastest first: the restore-source priority (SPEC §13). */
export const TIER_ORDER: ReadonlyArray<Tier> = ["snapshot", "vzdump", "pbs"]
export type RecoverSource = "auto" | Tier

/** One thing that could bring the guest back. */
export interface SurvivingPoint {
  readonly vmid: number
  readonly tier: Tier
  /** the snapshot name, or the backup's volume id */
  readonly point: string
  /** the storage holding the backup; null for a snapshot */
  readonly storage: StorageId | null
  /** when it was taken (epoch ms) */
  readonly takenAtMs: number
  /** PBS: the key fingerprint (or "1") it is encrypted with; null when not encrypted */
  readonly encrypted: string | null
}

/** Where `survivingPoints` looked and what it found there (null: could not look). */
export interface LookedAt {
  readonly where: string
  readonly tier: Tier
  readonly found: number | null
  readonly note?: string
}

export interface Survivors {
  readonly vmid: number
  readonly guestExists: boolean
  readonly points: ReadonlyArray<SurvivingPoint>
  readonly looked: ReadonlyArray<LookedAt>
}

/** Nothing that `source` allows survives; the message lists what was looked at. */
export class NoRestorePoint extends Data.TaggedError("NoRestorePoint")<{ readonly vmid: number; readonly source: RecoverSource; readonly message: string }> {}

/** The chosen PBS snapshot is encrypted and this host's storage entry cannot decrypt it. Never carries key material. */
export class PbsKeyMissing extends Data.TaggedError("PbsKeyMissing")<{ readonly point: string; readonly storage: string; readonly message: string }> {}

/** The plan cannot be made (no restore target, an archive config a token cannot restore). */
export class RecoverPlanRefused extends Data.TaggedError("RecoverPlanRefused")<{ readonly message: string }> {}

// ---------------------------------------------------------------------------------------------
// Survivors (reads PVE)

const excerpt = (s: string, n = 160) => (s.length > n ? `${s.slice(0, n)}…` : s)

/** An LXC backup's volume id (vzdump `vzdump-lxc-`/`-openvz-` file, PBS `backup/ct/`): a QEMU backup cannot bring a CT back. */
const isContainerBackup = (volid: string) => /:backup\/(?:vzdump-(?:lxc|openvz)-\d+-|ct\/\d+\/)/.test(volid)

/** The backup time in the volume id (vzdump: node local time, UTC here as on the simulator; PBS: UTC). */
const timeInVolid = (volid: string): Option.Option<number> => {
  const v = /vzdump-(?:lxc|openvz)-\d+-(\d{4})_(\d{2})_(\d{2})-(\d{2})_(\d{2})_(\d{2})\./.exec(volid)
  const p = /\/(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/.exec(volid)
  const m = v ?? p
  if (m === null) return Option.none()
  const ms = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]))
  return Number.isFinite(ms) ? Option.some(ms) : Option.none()
}

/** Only entries that are provably this guest's container backups on this storage count (PVE's vmid filter is not trusted alone). */
export const pointsOfListing = (vmid: number, storage: StorageId, tier: Tier, entries: ReadonlyArray<StorageContentEntry>): ReadonlyArray<SurvivingPoint> =>
  entries.flatMap((e) => {
    if (e.content !== undefined && e.content !== "backup") return []
    if (!e.volid.startsWith(`${storage}:`) || !isContainerBackup(e.volid)) return []
    const owner = backupOwner(e.volid)
    if (Option.isNone(owner) || owner.value !== vmid || (e.vmid !== undefined && e.vmid !== vmid)) return []
    const taken = e.ctime !== undefined && Number.isFinite(e.ctime) ? Option.some(e.ctime * 1000) : timeInVolid(e.volid)
    if (Option.isNone(taken)) return []
    return [{ vmid, tier, point: e.volid, storage, takenAtMs: taken.value, encrypted: tier === "pbs" && e.encrypted !== undefined && e.encrypted !== "" ? e.encrypted : null }]
  })

const backupStorages = (listed: ReadonlyArray<NodeStorageEntry>) =>
  listed.filter((s) => (s.content ?? "").split(",").includes("backup")).sort((a, b) => a.storage.localeCompare(b.storage))

/**
 * Everything that could bring guest `vmid` back. A storage that is disabled, inactive or cannot
 * be listed is "looked at" with why, never an error: the other tiers still count.
 */
export const survivingPoints = (vmid: VmId): Effect.Effect<Survivors, ProxmoxError, Proxmox> =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const guestExists = Option.isSome(yield* existing(vmid))
    const points: Array<SurvivingPoint> = []
    const looked: Array<LookedAt> = []
    if (guestExists) {
      const snaps = yield* Effect.either(pve.listSnapshots(vmid))
      if (Either.isLeft(snaps)) looked.push({ where: `snapshots of ${vmid}`, tier: "snapshot", found: null, note: excerpt(snaps.left.message) })
      else {
        const usable = snaps.right.filter((s) =>
          s.name !== "current" && s.name !== "vzdump" && (s.snapstate === undefined || s.snapstate === "") && s.snaptime !== undefined && Number.isFinite(s.snaptime)
        )
        for (const s of usable) points.push({ vmid, tier: "snapshot", point: s.name, storage: null, takenAtMs: s.snaptime! * 1000, encrypted: null })
        looked.push({ where: `snapshots of ${vmid}`, tier: "snapshot", found: usable.length })
      }
    } else {
      looked.push({ where: `snapshots of ${vmid}`, tier: "snapshot", found: null, note: "the guest does not exist" })
    }
    for (const s of backupStorages(yield* pve.nodeStorage)) {
      const tier: Tier = s.type === "pbs" ? "pbs" : "vzdump"
      const storage = StorageId.make(s.storage)
      if (s.enabled === 0) {
        looked.push({ where: s.storage, tier, found: null, note: "disabled" })
        continue
      }
      if (s.active === 0) {
        looked.push({ where: s.storage, tier, found: null, note: "not active (offline or not mounted)" })
        continue
      }
      const listed = yield* Effect.either(pve.storageContent(storage, { content: "backup", vmid }))
      if (Either.isLeft(listed)) {
        looked.push({ where: s.storage, tier, found: null, note: excerpt(listed.left.message) })
        continue
      }
      const found = pointsOfListing(vmid, storage, tier, listed.right)
      points.push(...found)
      looked.push({ where: s.storage, tier, found: found.length })
    }
    return { vmid, guestExists, points, looked }
  })

// ---------------------------------------------------------------------------------------------
// The choice (pure)

const newest = (ps: ReadonlyArray<SurvivingPoint>): SurvivingPoint | undefined =>
  ps.reduce<SurvivingPoint | undefined>((best, p) =>
    best === undefined || p.takenAtMs > best.takenAtMs || (p.takenAtMs === best.takenAtMs && p.point > best.point) ? p : best, undefined)

const describeLooked = (l: LookedAt) =>
  `${l.where} (${l.tier}): ${l.found === null ? (l.note ?? "not read") : `${l.found} point${l.found === 1 ? "" : "s"}`}`

/** The SurvivingPoint a RecoverPoint came from. */
export const toRecoverPoint = (p: SurvivingPoint): RecoverPoint => ({ tier: p.tier, point: p.point, backupStorage: p.storage, takenAtMs: p.takenAtMs })

/**
 * The point to recover guest `survivors.vmid` from. `auto`: the newest snapshot while the guest
 * exists, else the newest local vzdump archive, else the newest PBS snapshot. An explicit source:
 * the newest point of that tier, or a refusal naming it (a snapshot needs the guest to exist).
 * Points of any other guest are never chosen.
 */
export const chooseTier = (
  survivors: Survivors,
  opts: { readonly source: RecoverSource; readonly guestExists: boolean }
): Either.Either<RecoverPoint, NoRestorePoint> => {
  const mine = survivors.points.filter((p) => p.vmid === survivors.vmid && (p.tier !== "snapshot" || opts.guestExists))
  const inTier = (t: Tier) => newest(mine.filter((p) => p.tier === t))
  const tiers = opts.source === "auto" ? TIER_ORDER : [opts.source]
  for (const t of tiers) {
    const p = inTier(t)
    if (p !== undefined) return Either.right(toRecoverPoint(p))
  }
  const what = opts.source === "auto" ? "no snapshot, vzdump archive or PBS snapshot" : `no ${opts.source === "vzdump" ? "vzdump archive" : opts.source === "pbs" ? "PBS snapshot" : "snapshot"}`
  const why = opts.source === "snapshot" && !opts.guestExists ? " (a snapshot can only bring back a guest that still exists)" : ""
  const where = survivors.looked.length === 0 ? "nothing to look at" : survivors.looked.map(describeLooked).join("; ")
  return Either.left(new NoRestorePoint({
    vmid: survivors.vmid,
    source: opts.source,
    message: `guest ${survivors.vmid}: ${what} to recover from${why}; looked at: ${where}`
  }))
}

// ---------------------------------------------------------------------------------------------
// The PBS key (pure)

/**
 * What stops this host from decrypting `point`: an encrypted PBS snapshot on a storage whose PVE
 * entry has no encryption key, or a key with another fingerprint. Fingerprints only, never a key.
 */
export const pbsKeyProblem = (point: SurvivingPoint, storageConfig: StorageConfigEntry | undefined): Option.Option<PbsKeyMissing> => {
  if (point.tier !== "pbs" || point.encrypted === null) return Option.none()
  const storage = point.storage ?? "?"
  const fp = point.encrypted === "1" ? "unknown" : point.encrypted
  const remedy = "restore the key from escrow with the recovery code (issue 13) or re-add the target with its key"
  const have = storageConfig?.["encryption-key"]
  if (storageConfig === undefined || have === undefined || have === "") {
    return Option.some(new PbsKeyMissing({
      point: point.point,
      storage,
      message: `PBS snapshot ${point.point} on storage ${storage} is encrypted (key fingerprint ${fp}) but storage ${storage} has no encryption key: the PBS key is missing on this host; ${remedy}`
    }))
  }
  if (point.encrypted !== "1" && have !== "1" && have.toLowerCase() !== point.encrypted.toLowerCase()) {
    return Option.some(new PbsKeyMissing({
      point: point.point,
      storage,
      message: `PBS snapshot ${point.point} on storage ${storage} is encrypted with key fingerprint ${fp} but storage ${storage} holds the key with fingerprint ${have}: the PBS key it needs is missing on this host; ${remedy}`
    }))
  }
  return Option.none()
}

// ---------------------------------------------------------------------------------------------
// The plan

export type RecoverMode = "fresh" | "overwrite" | "rollback"

export interface RecoverPlanInput {
  /** host-loss: restore mode on a new box (src/programs/hostloss/restore.ts). */
  readonly scenario: LossScenario | "host-loss"
  readonly source: RecoverSource
  /**
   * A point the caller chose (host-loss: a PBS snapshot of this vmid with exactly the host's key);
   * it must be among what PVE lists for this guest now, else NoRestorePoint. Overrides `source`.
   */
  readonly point?: RecoverPoint
  /** The desired guest when the hub still wants it (sizes the rootfs), else null. */
  readonly desired: DesiredGuest | null
  /** The guest's volume placement from the desired state. */
  readonly placement: GuestPlacement | undefined
  /** The storage manifest: a bulk volume on a disconnected target is reported as such. */
  readonly manifest: StorageManifest
  /**
   * The desired state's provisioning storage: the restore target when the archive's rootfs
   * storage is not attached here. (Not in the brief's input list: the desired guest does not carry it.)
   */
  readonly provisioningStorage?: StorageId | undefined
}

export interface RecoverPlan {
  readonly vmid: VmId
  readonly scenario: Scenario
  readonly guestExists: boolean
  readonly mode: RecoverMode
  readonly point: RecoverPoint
  readonly ageSeconds: number
  /** where the guest's volumes are restored (rollback: where its rootfs is) */
  readonly storage: StorageId
  readonly identity: ReadonlyArray<{ readonly attribute: IdentityAttribute; readonly treatment: Treatment }>
  readonly linkDown: boolean
  /** the explicit layout of the restore; null for a rollback */
  readonly layout: RestoreLayout | null
  readonly bulk: ReadonlyArray<BulkReport>
  readonly dropped: ReadonlyArray<DroppedMount>
  /** overwrite only: volumes of the current guest outside its backups that PVE's restore over it destroys */
  readonly overwriteLosses: ReadonlyArray<OverwriteLoss>
  readonly needsSignature: boolean
  /** What an operator signs for op `recover`, exactly. */
  readonly gatedParams: { readonly scenario: Scenario; readonly tier: Tier; readonly point: string; readonly storage: StorageId }
  /** where the plan looked for restore points */
  readonly looked: ReadonlyArray<LookedAt>
}

export type RecoverPlanError = NoRestorePoint | PbsKeyMissing | RecoverPlanRefused | ProxmoxError | JournalError

const decodeVolumeId = Schema.decodeUnknownOption(VolumeId)

const storageOfVolume = (spec: string | undefined): Option.Option<StorageId> => {
  const m = spec === undefined ? null : /^([A-Za-z][A-Za-z0-9\-_.]*):[^,]+/.exec(spec)
  return m === null ? Option.none() : Option.some(StorageId.make(m[1]!))
}

/** Attached here: listed for this node, enabled, active, and able to hold container volumes. */
const attachedForGuests = (listed: ReadonlyArray<NodeStorageEntry>, id: StorageId) => {
  const s = listed.find((x) => x.storage === id)
  return s !== undefined && s.enabled !== 0 && s.active !== 0 && (s.content ?? "").split(",").includes("rootdir")
}

/**
 * The plan for recovering guest `vmid`: the chosen point and its age, the mode (fresh: the
 * guest is gone; overwrite: it exists and a backup is restored over it; rollback: to a
 * snapshot), the restore target (the archive's rootfs storage if attached here, else the
 * provisioning storage), the explicit layout and its bulk volumes, the identity rows, and
 * whether a signature is needed (overwrite and rollback always; a fresh restore only when the
 * agent knows the vmid as a customer or lost guest).
 */
export const recoverPlan = (vmid: VmId, input: RecoverPlanInput): Effect.Effect<RecoverPlan, RecoverPlanError, Proxmox | GuestRecords> =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const records = yield* GuestRecords
    const survivors = yield* survivingPoints(vmid)
    const guestExists = survivors.guestExists
    const pinned = input.point
    const point = pinned === undefined
      ? yield* chooseTier(survivors, { source: input.source, guestExists })
      : survivors.points.some((p) => p.vmid === vmid && p.tier === pinned.tier && p.point === pinned.point && p.storage === pinned.backupStorage)
      ? pinned
      : yield* new NoRestorePoint({ vmid, source: pinned.tier, message: `guest ${vmid}: ${pinned.point} is not among its restore points PVE lists now` })
    const chosen = survivors.points.find((p) => p.tier === point.tier && p.point === point.point)
    const scenario = input.scenario === "host-loss" ? "host-loss" : lossScenario(input.scenario)
    const mode: RecoverMode = point.tier === "snapshot" ? "rollback" : guestExists ? "overwrite" : "fresh"
    const nodeStorage = yield* pve.nodeStorage

    if (point.tier === "pbs") {
      const config = (yield* pve.storageList).find((s) => s.storage === point.backupStorage)
      const problem = chosen === undefined ? Option.none() : pbsKeyProblem(chosen, config)
      if (Option.isSome(problem)) return yield* problem.value
    }

    let storage: StorageId
    let layout: RestoreLayout | null = null
    let bulk: ReadonlyArray<BulkReport> = []
    let losses: ReadonlyArray<OverwriteLoss> = []
    if (mode === "rollback") {
      const current = yield* pve.guestConfig(vmid)
      const at = Option.orElse(storageOfVolume(typeof current.rootfs === "string" ? current.rootfs : undefined), () => Option.fromNullable(input.provisioningStorage))
      if (Option.isNone(at)) return yield* new RecoverPlanRefused({ message: `guest ${vmid}: its rootfs storage cannot be read from its config` })
      storage = at.value
    } else {
      const archive = decodeVolumeId(point.point)
      if (Option.isNone(archive)) return yield* new RecoverPlanRefused({ message: `guest ${vmid}: the backup's volume id is not one the agent restores from` })
      const archiveConfig = yield* pve.extractConfig(archive.value)
      const own = storageOfVolume(archiveConfig["rootfs"])
      const target = Option.isSome(own) && attachedForGuests(nodeStorage, own.value)
        ? Option.some(own.value)
        : input.provisioningStorage !== undefined && attachedForGuests(nodeStorage, input.provisioningStorage)
        ? Option.some(input.provisioningStorage)
        : Option.none<StorageId>()
      if (Option.isNone(target)) {
        const ownText = Option.match(own, { onNone: () => "the archive names no rootfs storage", onSome: (s) => `the archive's rootfs storage ${s} is not attached here` })
        const prov = input.provisioningStorage === undefined ? "the desired state names no provisioning storage" : `the provisioning storage ${input.provisioningStorage} is not attached here either`
        return yield* new RecoverPlanRefused({ message: `guest ${vmid}: no storage to restore into: ${ownText}, and ${prov}` })
      }
      storage = target.value
      const planned = restoreLayout(archiveConfig, { storage, placement: input.placement, rootfsGib: input.desired?.rootfs_gib, bulk: "recreate" })
      if (Either.isLeft(planned)) return yield* new RecoverPlanRefused({ message: `guest ${vmid}: ${planned.left.message}` })
      layout = planned.right
      bulk = yield* bulkSurvivors(layout)
      // a bulk volume whose target the manifest says is disconnected: unreachable, whatever PVE's cache lists
      const disconnected = new Set(input.manifest.filter((t) => t.state !== "attached").map((t) => t.id as string))
      bulk = bulk.map((b) => {
        const home = Option.getOrElse(storageOfVolume(b.originalVolid), () => b.target)
        return disconnected.has(home) && b.original === "exists"
          ? { ...b, status: "recreated-empty", original: "unreachable", detail: `target ${home} is not attached` }
          : b
      })
      if (mode === "overwrite") losses = overwriteLosses(vmid, yield* pve.guestConfig(vmid))
    }

    const known = (yield* records.guestRecords).some((r) => r.vmid === vmid)
    const now = yield* Clock.currentTimeMillis
    return {
      vmid,
      scenario,
      guestExists,
      mode,
      point,
      ageSeconds: Math.max(0, Math.floor((now - point.takenAtMs) / 1000)),
      storage,
      identity: identityRows(scenario),
      linkDown: IDENTITY_TABLE[scenario].linkDown,
      layout,
      bulk,
      dropped: layout?.dropped ?? [],
      overwriteLosses: losses,
      needsSignature: mode !== "fresh" || known,
      gatedParams: { scenario, tier: point.tier, point: point.point, storage },
      looked: survivors.looked
    }
  })

// ---------------------------------------------------------------------------------------------
// For people

/** "3 days 4 hours", "12 minutes", "40 seconds": the largest unit and the next when it is not zero. */
export const ageInWords = (seconds: number): string => {
  const units: ReadonlyArray<readonly [string, number]> = [["day", 86_400], ["hour", 3_600], ["minute", 60], ["second", 1]]
  const total = Math.max(0, Math.floor(seconds))
  const word = (n: number, name: string) => `${n} ${name}${n === 1 ? "" : "s"}`
  const i = units.findIndex(([, size]) => total >= size)
  if (i === -1) return "0 seconds"
  const [name, size] = units[i]!
  const first = Math.floor(total / size)
  const next = units[i + 1]
  const second = next === undefined ? 0 : Math.floor((total - first * size) / next[1])
  return next === undefined || second === 0 ? word(first, name) : `${word(first, name)} ${word(second, next[0])}`
}

const TIER_WORDS: Readonly<Record<Tier, string>> = { snapshot: "snapshot", vzdump: "vzdump archive", pbs: "PBS snapshot" }

const decisionText = (b: BulkReport) =>
  b.backupDecision === null
    ? "it has no own-backup decision"
    : "target" in b.backupDecision
    ? `its own backup is on ${b.backupDecision.target}: restore it from there`
    : `it is deliberately not backed up (${b.backupDecision.none.reason})`

/** The plan as a person reads it before signing. */
export const formatRecoverPlan = (plan: RecoverPlan): string => {
  const lines: Array<string> = []
  const taken = new Date(plan.point.takenAtMs).toISOString().replace("T", " ").replace(/\.\d{3}Z$/, " UTC")
  const action = plan.mode === "rollback"
    ? `roll guest ${plan.vmid} back to its snapshot`
    : plan.mode === "overwrite"
    ? `restore OVER the existing guest ${plan.vmid} from`
    : `restore guest ${plan.vmid} (absent) from`
  lines.push(`recover guest ${plan.vmid} (${plan.scenario}): ${action} ${TIER_WORDS[plan.point.tier]} ${plan.point.point}${plan.point.backupStorage === null ? "" : ` on ${plan.point.backupStorage}`}`)
  lines.push(`  restore point: taken ${taken}, ${ageInWords(plan.ageSeconds)} ago`)
  if (plan.mode !== "rollback") lines.push(`  restored into storage ${plan.storage}`)
  if (plan.mode === "rollback") {
    lines.push("  identity: unchanged (a rollback keeps the guest as it was at the snapshot)")
  } else {
    for (const t of ["kept", "reset", "fresh"] as const) {
      const attrs = plan.identity.filter((r) => r.treatment === t).map((r) => r.attribute)
      const how = t === "reset" ? " (replaced at first boot by the bootstrap directive)" : ""
      lines.push(`  ${t}: ${attrs.length === 0 ? "nothing" : attrs.join(", ")}${attrs.length === 0 ? "" : how}`)
    }
  }
  lines.push(plan.linkDown
    ? "  network: every NIC stays link-down until an operator confirms the source is gone (recover --confirm)"
    : "  network: link up as in the backup")
  for (const b of plan.bulk) {
    const where = `${b.volume} ${b.path} (${b.sizeGib} GiB on ${b.target})`
    if (b.status === "reattachable") {
      lines.push(plan.scenario === "guest-loss-partial"
        ? `  bulk ${where}: the original ${b.originalVolid} still exists and is LEFT DETACHED (the source may still be live); it comes back empty until you attach the original`
        : `  bulk ${where}: the original ${b.originalVolid} still exists and is re-attached`)
    }
    else if (b.status === "omitted") lines.push(`  bulk ${where}: left out`)
    else {
      const why = b.original === "unreachable" ? `its storage cannot be read now${b.detail === undefined ? "" : ` (${b.detail})`}` : `the original ${b.originalVolid} is gone`
      lines.push(`  bulk ${where}: THIS HOST CANNOT BRING IT BACK (${why}); it comes back empty; ${decisionText(b)}`)
    }
  }
  for (const d of plan.dropped) lines.push(`  not restored: ${d.key} ${d.type} mount ${d.source} at ${d.path} (a token cannot restore it; the agent re-creates its own mounts)`)
  for (const l of plan.overwriteLosses) {
    lines.push(`  DESTROYED by the overwrite: ${l.key} ${l.volid} at ${l.path} (not in any backup of this guest)`)
  }
  lines.push(plan.needsSignature
    ? `  needs an operator signature: op "recover" with params ${JSON.stringify(plan.gatedParams)}`
    : "  no signature needed: nothing is overwritten and the agent knows nothing of this vmid")
  return lines.join("\n")
}
