/**
 * The explicit volume layout of a restore (issue 12), read from the archive's own config
 * (`Proxmox.extractConfig`), because PVE's storage-only restore cannot serve us:
 * - it recreates every mount point of the archive, and a bind or device mount point is "only
 *   possible for root": every guest with a controller has the bootstrap bind mount, so a token's
 *   restore of its backup fails outright (pve-container API2/LXC.pm; the simulator's create.ts);
 * - it puts every volume on the one restore storage, while a bulk volume (a `backup=0` mount
 *   point: its data is not in the archive) belongs on ITS target, and a hot one on its fast target.
 * With `rootfs` and `mpN` given as `<storage>:<GiB>`, PVE allocates exactly those volumes and never
 * restores the archive's mount points (sanitize_and_merge_config skips them).
 *
 * Bind and device mount points are left out and reported (the agent re-creates the bootstrap
 * mount itself). Bulk volumes come back empty on their target, or are omitted (a scratch copy),
 * and are reported with their original volume id so the bring-up can re-attach the original
 * after its seal when it still exists (`bulkSurvivors`).
 */
import { Data, Effect, Either, Option } from "effect"
import { Proxmox } from "../../layers/Proxmox.js"
import { ClearanceRefused } from "../../schema/clearance.js"
import { StorageId, type VmId, type VolumeId } from "../../schema/ids.js"
import type { ProxmoxError } from "../../schema/proxmox.js"
import type { BackupDecision, GuestPlacement, VolumePlacement } from "../../schema/storage.js"

/** The archive's config is unusable for an explicit layout (never sent to PVE). */
export class LayoutError extends Data.TaggedError("LayoutError")<{ readonly message: string }> {}

export interface RestoreLayoutOptions {
  /** The restore target: rootfs, and every volume whose placement names no target. */
  readonly storage: StorageId
  /** The guest's placement from the desired state (hot volumes on their target, bulk on theirs). */
  readonly placement?: GuestPlacement | undefined
  /** The desired rootfs size: the rootfs is allocated at least this big (never smaller than the archive's). */
  readonly rootfsGib?: number | undefined
  /**
   * Bulk volumes (`backup=0`: not in the archive): `recreate` allocates an empty one on its target
   * (a bring-up; the original is re-attached later when it survived), `omit` leaves it out (a
   * scratch copy, which must never hold or touch the real volume). Default `recreate`.
   */
  readonly bulk?: "recreate" | "omit"
}

/** A bind or device mount point of the archive, not restored (a token may not create one). */
export interface DroppedMount {
  readonly key: string
  readonly type: "bind" | "device"
  /** the host path or device */
  readonly source: string
  /** where it was mounted in the guest */
  readonly path: string
}

/**
 * A bulk volume of the archive. `status`: `recreated-empty` (the layout allocates an empty volume
 * at its path), `omitted` (not in the layout), `reattachable` (its original still exists: the
 * bring-up swaps it in after the seal). `original`: what `bulkSurvivors` found of the original.
 */
export interface BulkReport {
  readonly volume: string
  readonly path: string
  readonly originalVolid: string
  /** where the empty volume is allocated (its placement target, else the original's storage) */
  readonly target: StorageId
  readonly sizeGib: number
  /** the placement's own-backup decision; null when the desired state records none */
  readonly backupDecision: BackupDecision | null
  readonly status: "reattachable" | "recreated-empty" | "omitted"
  readonly original: "unchecked" | "exists" | "gone" | "unreachable"
  /** why `unreachable` (the listing's error), or nothing */
  readonly detail?: string
}

export interface RestoreLayout {
  readonly layout: { readonly rootfs: string; readonly mounts: Readonly<Record<string, string>> }
  readonly dropped: ReadonlyArray<DroppedMount>
  readonly bulk: ReadonlyArray<BulkReport>
}

// ---------------------------------------------------------------------------------------------
// Parsing PVE's mount point values (pure)

const GiB = 1024 ** 3
const UNIT: Readonly<Record<string, number>> = { "": 1, K: 1024, M: 1024 ** 2, G: GiB, T: 1024 ** 4 }
const MP_KEY = /^mp(?:[0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])$/
const STORAGE_OF = /^([A-Za-z][A-Za-z0-9\-_.]*):\S+$/

/** Options carried into the new mount point when they hold a value PVE itself would write. */
const CARRIED: Readonly<Record<string, RegExp>> = {
  acl: /^[01]$/,
  quota: /^[01]$/,
  ro: /^[01]$/,
  replicate: /^[01]$/,
  mountoptions: /^(?:noatime|lazytime|nodev|nosuid|noexec|discard)(?:;(?:noatime|lazytime|nodev|nosuid|noexec|discard))*$/
}

export interface ParsedMount {
  readonly key: string
  readonly volume: string
  readonly type: "volume" | "bind" | "device"
  readonly props: Readonly<Record<string, string>>
}

/** `volume[,key=value...]` (the volume may also be spelled `volume=`). Left says what is wrong. */
export const parseMount = (key: string, value: string): Either.Either<ParsedMount, string> => {
  const props: Record<string, string> = Object.create(null)
  let volume: string | undefined
  for (const [i, part] of value.split(",").entries()) {
    const eq = part.indexOf("=")
    if (eq === -1) {
      if (i !== 0 || part.length === 0) return Either.left(`${key}: unexpected '${clip(part)}'`)
      volume = part
      continue
    }
    const k = part.slice(0, eq)
    const v = part.slice(eq + 1)
    if (!/^[a-z_]+$/.test(k) || k in props) return Either.left(`${key}: unexpected option '${clip(k)}'`)
    if (k === "volume") volume = v
    else props[k] = v
  }
  if (volume === undefined || volume.length === 0) return Either.left(`${key}: no volume`)
  const type = volume.startsWith("/dev/") ? "device" : volume.startsWith("/") ? "bind" : "volume"
  return Either.right({ key, volume, type, props })
}

const clip = (s: string) => (s.length > 40 ? `${s.slice(0, 40)}…` : s)

/** `size=` in whole GiB, rounded up (PVE's units: none = bytes, K, M, G, T). */
export const sizeGibOf = (size: string | undefined): Option.Option<number> => {
  const m = size === undefined ? null : /^(\d+(?:\.\d+)?)([KMGT]?)$/.exec(size)
  if (m === null) return Option.none()
  const bytes = Number(m[1]) * UNIT[m[2] ?? ""]!
  return Number.isFinite(bytes) && bytes > 0 ? Option.some(Math.max(1, Math.ceil(bytes / GiB))) : Option.none()
}

/** A mount path PVE accepts and we can put in a property string: absolute, no ',' or '..', no control characters. */
const validPath = (p: string | undefined): p is string =>
  p !== undefined && p.length <= 4096 && /^\/[^,\x00-\x1f\x7f]*$/.test(p) && !p.split("/").includes("..")

const storageOfVolid = (volid: string): Option.Option<StorageId> => {
  const m = STORAGE_OF.exec(volid)
  return m === null ? Option.none() : Option.some(StorageId.make(m[1]!))
}

const carried = (props: Readonly<Record<string, string>>): string =>
  Object.keys(CARRIED).filter((k) => props[k] !== undefined && CARRIED[k]!.test(props[k]!)).map((k) => `,${k}=${props[k]}`).join("")

/** PVE's default for a volume mount point is backup=0: only an explicit 1 puts it in the archive. */
const backedUp = (m: ParsedMount) => m.props["backup"] === "1"

const mpOrder = (a: string, b: string) => Number(a.slice(2)) - Number(b.slice(2))

// ---------------------------------------------------------------------------------------------
// The layout (pure)

/**
 * The explicit layout for restoring an archive whose config is `archiveConfig` (as
 * `Proxmox.extractConfig` returns it). rootfs on `storage`; a backed-up mount point on its
 * placement target (else `storage`); a bulk one recreated empty on its placement target (else
 * its original's storage) or omitted; bind and device mount points dropped. Sizes are the
 * archive's, rounded up to GiB, grown to the desired size when that is larger, never shrunk.
 */
export const restoreLayout = (
  archiveConfig: Readonly<Record<string, string>>,
  opts: RestoreLayoutOptions
): Either.Either<RestoreLayout, LayoutError> => {
  const fail = (message: string) => Either.left(new LayoutError({ message }))
  const placed = new Map<string, VolumePlacement>((opts.placement?.volumes ?? []).map((v) => [v.volume as string, v]))

  const rootValue = archiveConfig["rootfs"]
  if (rootValue === undefined) return fail("the archive's config has no rootfs")
  const root = parseMount("rootfs", rootValue)
  if (Either.isLeft(root)) return fail(`the archive's rootfs is unreadable (${root.left})`)
  const rootArchive = sizeGibOf(root.right.props["size"])
  const rootGib = Math.max(Option.getOrElse(rootArchive, () => 0), opts.rootfsGib ?? 0)
  if (rootGib < 1) return fail("the archive's rootfs has no size and no rootfs size is desired")
  const rootfs = `${opts.storage}:${rootGib}${carried(root.right.props)}`

  const mounts: Record<string, string> = {}
  const dropped: Array<DroppedMount> = []
  const bulk: Array<BulkReport> = []
  const keys = Object.keys(archiveConfig).filter((k) => MP_KEY.test(k)).sort(mpOrder)
  for (const key of keys) {
    const m = parseMount(key, archiveConfig[key]!)
    if (Either.isLeft(m)) return fail(`the archive's ${key} is unreadable (${m.left})`)
    const mp = m.right
    const path = mp.props["mp"]
    if (!validPath(path)) return fail(`the archive's ${key} has no usable mount path`)
    if (mp.type !== "volume") {
      dropped.push({ key, type: mp.type, source: mp.volume, path })
      continue
    }
    const placement = placed.get(key)
    const archived = sizeGibOf(mp.props["size"])
    const sizeGib = Math.max(Option.getOrElse(archived, () => 0), placement?.size_gib ?? 0)
    if (sizeGib < 1) return fail(`the archive's ${key} (${path}) has no size and the placement gives none`)
    if (backedUp(mp)) {
      const target = placement?.target ?? opts.storage
      mounts[key] = `${target}:${sizeGib},mp=${path},backup=1${carried(mp.props)}`
      continue
    }
    const target = placement?.target ?? Option.getOrElse(storageOfVolid(mp.volume), () => opts.storage)
    const recreate = (opts.bulk ?? "recreate") === "recreate"
    if (recreate) mounts[key] = `${target}:${sizeGib},mp=${path},backup=0${carried(mp.props)}`
    bulk.push({
      volume: key,
      path,
      originalVolid: mp.volume,
      target,
      sizeGib,
      backupDecision: placement?.backup ?? null,
      status: recreate ? "recreated-empty" : "omitted",
      original: "unchecked"
    })
  }
  return Either.right({ layout: { rootfs, mounts }, dropped, bulk })
}

// ---------------------------------------------------------------------------------------------
// What a restore over an existing guest destroys (pure)

/** The guest a volume id belongs to (`vm-N-disk-M`, `subvol-N-disk-M`, `base-N-disk-M`, dir `N/...`), if it says. */
export const volumeOwner = (volid: string): Option.Option<number> => {
  const m = /:(?:(\d+)\/)?(?:vm|subvol|base)-(\d+)-disk-\d+/.exec(volid)
  return m === null ? Option.none() : Option.some(Number(m[2]))
}

export interface OverwriteLoss {
  readonly key: string
  readonly volid: string
  readonly path: string
}

/**
 * The volumes of guest `vmid`'s current config that are not in its backups (volume mount points
 * without backup=1) and that a restore over it destroys: PVE frees every volume of the old config
 * the guest owns before it extracts (pve-container destroy_lxc_container), bulk ones included.
 * A volume whose owner cannot be read is counted (never assume it survives).
 */
export const overwriteLosses = (vmid: number, currentConfig: Readonly<Record<string, unknown>>): ReadonlyArray<OverwriteLoss> =>
  Object.keys(currentConfig).filter((k) => MP_KEY.test(k)).sort(mpOrder).flatMap((key) => {
    const value = currentConfig[key]
    if (typeof value !== "string") return []
    const m = parseMount(key, value)
    if (Either.isLeft(m)) return [{ key, volid: "(unreadable)", path: "?" }]
    if (m.right.type !== "volume" || backedUp(m.right)) return []
    const owner = volumeOwner(m.right.volume)
    if (Option.isSome(owner) && owner.value !== vmid) return []
    return [{ key, volid: m.right.volume, path: m.right.props["mp"] ?? "?" }]
  })

// ---------------------------------------------------------------------------------------------
// Which originals survive (reads PVE)

/**
 * Checks, per recreated bulk volume, whether its original volume is still listed on its storage
 * (one listing per storage): `reattachable` when it is, `recreated-empty` (original `gone`) when
 * the listing lacks it, `unreachable` when the storage cannot be listed now (offline, pulled).
 * Omitted volumes are left as they are: a scratch copy never attaches the real one.
 */
export const bulkSurvivors = (result: RestoreLayout): Effect.Effect<ReadonlyArray<BulkReport>, never, Proxmox> =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const listings = new Map<string, Either.Either<ReadonlySet<string>, string>>()
    const listing = (storage: StorageId) =>
      Effect.gen(function*() {
        const have = listings.get(storage)
        if (have !== undefined) return have
        const listed = yield* Effect.either(pve.storageContent(storage))
        const out = Either.match(listed, {
          onLeft: (e) => Either.left<string>(e.message.length > 200 ? `${e.message.slice(0, 200)}…` : e.message),
          onRight: (entries) => Either.right<ReadonlySet<string>>(new Set(entries.map((x) => x.volid)))
        })
        listings.set(storage, out)
        return out
      })
    return yield* Effect.forEach(result.bulk, (b) =>
      Effect.gen(function*() {
        if (b.status === "omitted") return b
        const storage = storageOfVolid(b.originalVolid)
        if (Option.isNone(storage)) return { ...b, status: "recreated-empty", original: "gone" } satisfies BulkReport
        const l = yield* listing(storage.value)
        if (Either.isLeft(l)) return { ...b, status: "recreated-empty", original: "unreachable", detail: l.left } satisfies BulkReport
        return l.right.has(b.originalVolid)
          ? ({ ...b, status: "reattachable", original: "exists" } satisfies BulkReport)
          : ({ ...b, status: "recreated-empty", original: "gone" } satisfies BulkReport)
      }))
  })

// ---------------------------------------------------------------------------------------------
// A restore over an existing guest (restore-now)

/**
 * The layout for restoring `archive` over the existing guest `vmid` (all volumes on `storage`, as
 * PVE's storage-only mode would put them; bulk volumes of the archive recreated empty on their
 * own storage). Refused before anything is sent when the guest holds volumes outside its backups:
 * PVE's restore over it would destroy them (see overwriteLosses), and no signature on "restore
 * from backup X" can be read as consent to that.
 */
export const overwriteLayout = (
  vmid: VmId,
  archive: VolumeId,
  storage: StorageId
): Effect.Effect<RestoreLayout, ClearanceRefused | ProxmoxError, Proxmox> =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const losses = overwriteLosses(vmid, yield* pve.guestConfig(vmid))
    if (losses.length > 0) {
      const what = losses.map((l) => `${l.key} ${l.volid} at ${l.path}`).join(", ")
      return yield* new ClearanceRefused({
        message: `restore over guest ${vmid} not sent: it would destroy volumes that are in none of its backups (${what}); move or detach them first`
      })
    }
    const planned = restoreLayout(yield* pve.extractConfig(archive), { storage, bulk: "recreate" })
    if (Either.isLeft(planned)) return yield* new ClearanceRefused({ message: `restore over guest ${vmid} not sent: ${planned.left.message}` })
    return planned.right
  })
