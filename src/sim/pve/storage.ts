/**
 * Storage availability and space as PVE's storage layer sees them (pve-storage `Storage.pm`,
 * `Plugin.pm`, `DirPlugin.pm`, `NFSPlugin.pm`, `CIFSPlugin.pm`, `PBSPlugin.pm`):
 *
 * - activation: `activate_storage` dies with the plugin's text when a storage is disabled, an
 *   NFS/CIFS server does not answer (`storage 'x' is not online`), a PBS server does not answer
 *   (`x: error fetching datastores - ...`), or a dir storage with `is_mountpoint` is not mounted.
 * - a dir storage WITHOUT `is_mountpoint` whose disk is not mounted stays active: PVE sees the
 *   empty mount point directory on the root filesystem (its size, its files). Archives written
 *   then land there and are hidden again once the disk is mounted over them. This is the
 *   classic USB-backup trap, and why the agent creates dir storages with is_mountpoint.
 * - status (`GET /nodes/{node}/storage`): an inactive storage shows `active: 0` and zero sizes.
 *
 * Sizes: a volume takes `stored ?? size` bytes of the layer it lives on.
 */
import { Either } from "effect"
import type { NodeState, SimState, StorageState, VolumeState } from "./state.js"

/** The path PVE treats as an externally managed mount point, if `is_mountpoint` is set. */
export const mountpointOf = (s: StorageState): string | undefined => {
  const v = s.is_mountpoint
  if (v === undefined) return undefined
  if (/^(?:1|on|yes|true)$/i.test(v)) return s.path
  if (/^(?:0|off|no|false)$/i.test(v)) return undefined
  return v
}

/**
 * Where the storage's data is now: `primary` (its own filesystem or server), `underlying` (dir
 * whose disk is absent: the root filesystem under the mount point), `offline` (not usable).
 */
export type StorageLayer = "primary" | "underlying" | "offline"

export const storageLayer = (s: StorageState): StorageLayer => {
  if (s.disable) return "offline"
  if (s.online) return "primary"
  return s.type === "dir" && mountpointOf(s) === undefined ? "underlying" : "offline"
}

export const pbsPort = (s: StorageState): number => s.port ?? 8007

/** What PVE's activate_storage dies with for this storage now, or undefined when it activates. */
export const activationError = (s: StorageState): string | undefined => {
  if (s.disable) return `storage '${s.storage}' is disabled`
  if (storageLayer(s) !== "offline") return undefined
  switch (s.type) {
    case "dir":
      return `unable to activate storage '${s.storage}' - directory is expected to be a mount point but is not mounted: '${mountpointOf(s) ?? s.path ?? ""}'`
    case "pbs":
      // [inf] the LWP error text of an unreachable server
      return `${s.storage}: error fetching datastores - 500 Can't connect to ${s.server ?? "?"}:${pbsPort(s)} (Connection refused)`
    default:
      return `storage '${s.storage}' is not online`
  }
}

/** The volume is on the layer the storage shows now (listed, readable). */
export const volumeOnLayer = (s: StorageState, v: VolumeState): boolean => {
  const layer = storageLayer(s)
  if (layer === "offline") return false
  return layer === "underlying" ? v.underlying === true : v.underlying !== true
}

const nodeOf = (state: SimState): NodeState | undefined => state.nodes.values().next().value

/** Total and used bytes of the layer the storage shows now; zero when inactive. */
export const storageSpace = (state: SimState, s: StorageState): { readonly active: boolean; readonly total: number; readonly used: number } => {
  const layer = storageLayer(s)
  if (layer === "offline") return { active: false, total: 0, used: 0 }
  let used = 0
  for (const v of state.volumes.values()) if (v.storage === s.storage && volumeOnLayer(s, v)) used += v.stored ?? v.size
  if (layer === "underlying") {
    const node = nodeOf(state)
    return { active: true, total: node?.maxdisk ?? 0, used: used + (node?.disk_used ?? 0) }
  }
  return { active: true, total: s.total, used: used + s.used }
}

export const storageAvail = (state: SimState, s: StorageState): number => {
  const sp = storageSpace(state, s)
  return Math.max(0, sp.total - sp.used)
}

/** Where a dump/download written to the storage now lands on disk. */
export const dumpDir = (s: StorageState): string => `${s.path ?? `/mnt/pve/${s.storage}`}/dump`

// ---------------------------------------------------------------------------------------------
// prune-backups (PVE::Storage::prune_mark_backup_group and the `prune-backups` format)

export const KEEP_OPTIONS = ["keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"] as const
export type KeepOption = (typeof KEEP_OPTIONS)[number]

/** Parsed and normalized: all counts zero means keep-all (validate_prune_backups). */
export type PruneKeep = { readonly "keep-all": true } | { readonly [K in KeepOption]?: number }

export const isKeepAll = (k: PruneKeep): k is { readonly "keep-all": true } => "keep-all" in k

/** PVE's `prune-backups` property string; Left is the text after `invalid format - `. */
export const parsePruneBackups = (text: string): Either.Either<PruneKeep, string> => {
  const counts: Partial<Record<KeepOption, number>> = {}
  let keepAll = false
  for (const part of text.split(",")) {
    if (part.length === 0) continue
    const eq = part.indexOf("=")
    const key = eq === -1 ? part : part.slice(0, eq)
    const value = eq === -1 ? "" : part.slice(eq + 1)
    if (key === "keep-all") {
      if (!/^(?:0|1)$/.test(value)) return Either.left(`keep-all: type check ('boolean') failed - got '${value}'`)
      keepAll = value === "1"
      continue
    }
    if (!(KEEP_OPTIONS as ReadonlyArray<string>).includes(key)) {
      return Either.left(`${key}: property is not defined in schema and the schema does not allow additional properties`)
    }
    if (!/^-?\d+$/.test(value)) return Either.left(`${key}: type check ('integer') failed - got '${value}'`)
    const n = Number(value)
    if (n < 0) return Either.left(`${key}: value must have a minimum value of 0`)
    counts[key as KeepOption] = n
  }
  const positive = Object.values(counts).some((n) => n > 0)
  if (!positive) return Either.right({ "keep-all": true })
  if (keepAll) return Either.left("keep-all cannot be set together with other options.")
  return Either.right(counts)
}

/** `keep-daily=7, keep-last=3` as vzdump logs the retention it applies (sorted keys). */
export const describeKeep = (k: PruneKeep): string =>
  isKeepAll(k)
    ? "keep-all=1"
    : Object.entries(k).filter(([, n]) => n !== undefined).sort(([a], [b]) => a.localeCompare(b)).map(([o, n]) => `${o}=${String(n)}`).join(", ")

/** vzdump's backup limit with remove=0: the sum of the keep counts (0 for keep-all). */
export const backupLimit = (k: PruneKeep): number =>
  isKeepAll(k) ? 0 : KEEP_OPTIONS.reduce((sum, o) => sum + (k[o] ?? 0), 0)

const p2 = (n: number) => String(n).padStart(2, "0")

/** ISO 8601 week and week-year (strftime %V / %G) of a UTC date. */
const isoWeek = (d: Date): { readonly week: number; readonly year: number } => {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()))
  const dow = t.getUTCDay() === 0 ? 7 : t.getUTCDay()
  t.setUTCDate(t.getUTCDate() + 4 - dow) // the Thursday of this week decides its year
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1)
  return { week: Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7), year: t.getUTCFullYear() }
}

/** Bucket ids per option; the simulated node's local time is UTC. */
const bucketOf: Readonly<Record<KeepOption, (ctime: number) => string>> = {
  "keep-last": (c) => String(c),
  "keep-hourly": (c) => {
    const d = new Date(c * 1000)
    return `${d.getUTCFullYear()}-${p2(d.getUTCMonth() + 1)}-${p2(d.getUTCDate())}T${p2(d.getUTCHours())}`
  },
  "keep-daily": (c) => new Date(c * 1000).toISOString().slice(0, 10),
  "keep-weekly": (c) => {
    const w = isoWeek(new Date(c * 1000))
    return `${w.year}-W${p2(w.week)}`
  },
  "keep-monthly": (c) => new Date(c * 1000).toISOString().slice(0, 7),
  "keep-yearly": (c) => String(new Date(c * 1000).getUTCFullYear())
}

export interface PruneEntry {
  readonly id: string
  readonly ctime: number
  readonly protected: boolean
}

export type PruneMark = "keep" | "remove" | "protected"

/**
 * Marks one backup group (one guest's archives on one storage). Protected archives are never
 * marked and never fill a slot. Each option in turn, newest first: an archive already kept makes
 * its bucket count as covered for this option; an unmarked archive in a new bucket is kept
 * (until the option's count of new buckets is reached, which ends the option); a later archive
 * in a bucket this option just filled is removed. Whatever is left unmarked is removed.
 */
export const markPrune = (entries: ReadonlyArray<PruneEntry>, keep: PruneKeep): ReadonlyMap<string, PruneMark> => {
  const marks = new Map<string, PruneMark>()
  for (const e of entries) if (e.protected) marks.set(e.id, "protected")
  if (isKeepAll(keep) || !KEEP_OPTIONS.some((o) => (keep[o] ?? 0) > 0)) {
    for (const e of entries) if (!marks.has(e.id)) marks.set(e.id, "keep")
    return marks
  }
  const newest = [...entries].sort((a, b) => b.ctime - a.ctime)
  for (const option of KEEP_OPTIONS) {
    const count = keep[option] ?? 0
    if (count <= 0) continue
    const bucket = bucketOf[option]
    const covered = new Set(newest.filter((e) => marks.get(e.id) === "keep").map((e) => bucket(e.ctime)))
    const filled = new Set<string>()
    for (const e of newest) {
      if (marks.has(e.id)) continue
      const b = bucket(e.ctime)
      if (covered.has(b)) continue
      if (filled.has(b)) {
        marks.set(e.id, "remove")
        continue
      }
      if (filled.size >= count) break
      filled.add(b)
      marks.set(e.id, "keep")
    }
  }
  for (const e of entries) if (!marks.has(e.id)) marks.set(e.id, "remove")
  return marks
}
