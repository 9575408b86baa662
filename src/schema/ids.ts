/**
 * Identifiers shared by every wire contract: guest ids, node names, snapshot and storage names,
 * and the PVE task id (UPID). Each is a branded Schema so a value that reached a PVE path or an
 * argv was validated first.
 */
import { Either, Schema } from "effect"

/** PVE accepts 100..999999999 for guest ids. */
export const VmId = Schema.Int.pipe(
  Schema.between(100, 999_999_999, {
    message: () => "a guest id (vmid) is an integer between 100 and 999999999"
  }),
  Schema.brand("VmId")
)
export type VmId = typeof VmId.Type

/** PVE before 8.2 sends vmid as a JSON string ("106"). */
export const VmIdFromString = Schema.compose(Schema.NumberFromString, VmId)
export const WireVmId = Schema.Union(VmId, VmIdFromString)

/** Node names: PVE's own pattern for the UPID node field (a hostname label). */
export const NodeName = Schema.String.pipe(
  Schema.pattern(/^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$/, {
    message: () => "a node name is a hostname label ([a-zA-Z0-9-], not starting or ending with '-')"
  }),
  Schema.brand("NodeName")
)
export type NodeName = typeof NodeName.Type

/** PVE snapshot names: a letter first, then [A-Za-z0-9_-], 2..40 chars; "current"/"vzdump" reserved. */
export const SnapshotName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z][A-Za-z0-9_-]{1,39}$/, {
    message: () => "a snapshot name starts with a letter, then 1-39 of [A-Za-z0-9_-]"
  }),
  Schema.filter((s) => s !== "current" && s !== "vzdump", {
    message: () => "snapshot names 'current' and 'vzdump' are reserved by PVE"
  }),
  Schema.brand("SnapshotName")
)
export type SnapshotName = typeof SnapshotName.Type

/** PVE storage ids: letter first, then [A-Za-z0-9._-]. */
export const StorageId = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z][A-Za-z0-9\-_.]*$/, {
    message: () => "a storage id starts with a letter, then [A-Za-z0-9._-]"
  }),
  Schema.brand("StorageId")
)
export type StorageId = typeof StorageId.Type

/** A volume id such as `local:backup/vzdump-lxc-101-2026_01_01-00_00_00.tar.zst`. */
export const VolumeId = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z][A-Za-z0-9\-_.]*:[^\s,;=]+$/, {
    message: () => "a volume id is '<storage>:<path>' without whitespace, ',', ';' or '='"
  }),
  // no path traversal and no absolute path after the storage: PVE resolves volnames into paths
  Schema.filter((s) => !/(^|[:/])\.\.(\/|$)/.test(s) && !s.includes(":/") && !s.includes("//"), {
    message: () => "a volume id's path has no '..' segment, no leading '/' and no '//'"
  }),
  Schema.maxLength(255),
  Schema.brand("VolumeId")
)
export type VolumeId = typeof VolumeId.Type

// ---------------------------------------------------------------------------------------------
// UPID: UPID:<node>:<pid 8 hex>:<pstart 8|9 hex>:<starttime 8 hex>:<type>:<id>:<user>:

export interface UpidParts {
  readonly node: string
  readonly pid: number
  readonly pstart: number
  readonly starttime: number
  readonly type: string
  readonly id: string
  readonly user: string
}

const UPID_RE =
  /^UPID:([a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$/

export const parseUpidParts = (s: string): Either.Either<UpidParts, string> => {
  const m = UPID_RE.exec(s)
  if (m === null) return Either.left(`not a UPID: ${JSON.stringify(s.slice(0, 120))}`)
  const [, node, pid, pstart, starttime, type, id, user] = m
  return Either.right({
    node: node!,
    pid: parseInt(pid!, 16),
    pstart: parseInt(pstart!, 16),
    starttime: parseInt(starttime!, 16),
    type: type!,
    id: id!,
    user: user!
  })
}

const hex = (n: number, width: number) => n.toString(16).toUpperCase().padStart(width, "0")

/** Formats as PVE does: upper-case hex, pid and starttime 8 digits, pstart 8 (9 when it needs to). */
export const formatUpid = (p: UpidParts): string =>
  `UPID:${p.node}:${hex(p.pid, 8)}:${hex(p.pstart, 8)}:${hex(p.starttime, 8)}:${p.type}:${p.id}:${p.user}:`

export const Upid = Schema.String.pipe(
  Schema.filter((s) => Either.isRight(parseUpidParts(s)) || "expected a PVE task id (UPID:node:pid:pstart:starttime:type:id:user:)"),
  Schema.brand("Upid")
)
export type Upid = typeof Upid.Type

export const upidParts = (upid: Upid): UpidParts => {
  const parsed = parseUpidParts(upid)
  // A branded Upid was validated at decode time, so this cannot be Left.
  return Either.getOrElse(parsed, () => ({ node: "", pid: 0, pstart: 0, starttime: 0, type: "", id: "", user: "" }))
}
