/**
 * Archive provenance (issue 10): the agent prunes only archives it made. Every agent vzdump
 * carries `notes-template` `felhom-op=<op id>`, and PVE keeps that line as the archive's notes.
 * Notes are only a claim (anyone with Datastore access can write them), so an archive is ours
 * only when the journal backs the claim:
 *
 *   - the notes are exactly `felhom-op=<uuid>`;
 *   - the journal knows that op, and it is a backup-producing op (a scheduled `backup`, a
 *     `force-backup`, a restore-now's safety backup) of the same guest to the same storage;
 *   - when the op recorded the archive it produced, it is this archive; when it could not (a
 *     crash or an unreadable listing right after the task), the archive's time lies inside the
 *     op's lifetime and no other listed archive makes the same claim.
 *
 * Everything else (an operator's manual backups, archives with forged or copied notes, archives of
 * ops the journal does not know) is foreign and never pruned.
 */
import { Effect, Either, Option, Schema } from "effect"
import { type JournalOp } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { backupOwner } from "../../layers/Proxmox.js"
import { type StorageId, type VmId, VolumeId } from "../../schema/ids.js"
import { decodeOperation } from "../../schema/operations.js"
import type { StorageContentEntry } from "../../schema/proxmox.js"
import type { Archive } from "./retention.js"

const PREFIX = "felhom-op="
const NOTES_RE = /^felhom-op=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/

/** The notes-template of an agent vzdump (single line, no `{{...}}` variables, far below 1024). */
export const notesFor = (opId: string): string => `${PREFIX}${opId}`

/** The op an archive's notes claim, if they are exactly one agent notes line. */
export const claimedOp = (notes: string | undefined): Option.Option<string> => {
  const m = NOTES_RE.exec(notes ?? "")
  return m === null ? Option.none() : Option.some(m[1]!)
}

/** A backup archive PVE lists for one guest on one storage. */
export interface ListedArchive extends Archive {
  readonly id: VolumeId
  readonly vmid: VmId
  readonly storage: StorageId
  readonly notes: string | null
  readonly size: number | null
}

const decodeVolid = Schema.decodeUnknownOption(VolumeId)

/**
 * The backup archives in a storage listing, each with its guest read from the volume id (the
 * `vmid` field must agree when present). An entry without a time cannot be bucketed and is left
 * out: it is never pruned.
 */
export const listedArchives = (storage: StorageId, entries: ReadonlyArray<StorageContentEntry>): ReadonlyArray<ListedArchive> =>
  entries.flatMap((e): Array<ListedArchive> => {
    if (e.content !== undefined && e.content !== "backup") return []
    const volid = decodeVolid(e.volid)
    if (Option.isNone(volid) || !volid.value.startsWith(`${storage}:`)) return []
    const owner = backupOwner(volid.value)
    if (Option.isNone(owner) || (e.vmid !== undefined && e.vmid !== owner.value)) return []
    if (e.ctime === undefined || !Number.isSafeInteger(e.ctime)) return []
    return [{
      id: volid.value,
      vmid: owner.value,
      storage,
      ctimeEpochSeconds: e.ctime,
      protected: e.protected === 1,
      notes: e.notes ?? null,
      size: e.size !== undefined && Number.isFinite(e.size) ? e.size : null
    }]
  })

/** Grouped by guest (a backup group: one guest on one storage). */
export const byGuest = <A extends { readonly vmid: VmId }>(archives: ReadonlyArray<A>): ReadonlyMap<VmId, ReadonlyArray<A>> => {
  const out = new Map<VmId, Array<A>>()
  for (const a of archives) {
    const list = out.get(a.vmid) ?? []
    list.push(a)
    out.set(a.vmid, list)
  }
  return out
}

export type Ownership =
  | { readonly ours: true; readonly opId: string }
  | { readonly ours: false; readonly reason: string }

/** The step of a backup-producing op that ran the vzdump, and the guest and storage it wrote to. */
const producedBy = (op: JournalOp): Option.Option<{ readonly vmid: number; readonly storage: string; readonly step: string }> => {
  const typed = decodeOperation(op.payload)
  if (Either.isLeft(typed) || typed.right._tag !== op.kind) return Option.none()
  const o = typed.right
  switch (o._tag) {
    case "backup":
      return Option.some({ vmid: o.vmid, storage: o.storage, step: "backup" })
    case "force-backup":
      return Option.some({ vmid: o.vmid, storage: o.storage, step: "backup" })
    case "restore-now":
      return "backupStorage" in o.source ? Option.some({ vmid: o.vmid, storage: o.source.backupStorage, step: "safety_backup" }) : Option.none()
    default:
      return Option.none()
  }
}

/** The archive the op recorded when its vzdump ended (`{ archive }` in the step's data), if any. */
const recordedArchive = (op: JournalOp, step: string): string | null => {
  const data = op.steps.find((s) => s.name === step)?.data
  if (typeof data !== "object" || data === null || !Object.hasOwn(data, "archive")) return null
  const a: unknown = (data as { readonly archive: unknown }).archive
  return typeof a === "string" ? a : null
}

const FINISHED_CACHE_LIMIT = 50_000

/**
 * Which of one storage's listed archives are ours (see the module comment). Pure apart from
 * reading the journal; one read per distinct op claimed (`finished`: the caller's cache of
 * finished ops, which never change; the gate passes none and reads every op itself).
 */
export const ownership = (archives: ReadonlyArray<ListedArchive>, finished?: Map<string, JournalOp>) =>
  Effect.gen(function*() {
    const log = yield* OpLog
    const claims = new Map<string, Array<ListedArchive>>()
    for (const a of archives) {
      const op = claimedOp(a.notes ?? undefined)
      if (Option.isSome(op)) claims.set(op.value, [...(claims.get(op.value) ?? []), a])
    }
    const ops = new Map<string, Option.Option<JournalOp>>()
    for (const id of claims.keys()) {
      const cached = finished?.get(id)
      if (cached !== undefined) {
        ops.set(id, Option.some(cached))
        continue
      }
      const read = yield* log.get(id)
      ops.set(id, read)
      if (finished !== undefined && Option.isSome(read) && read.value.status !== "in_flight") {
        // a finished op never changes; bounded, oldest entry out first
        if (finished.size >= FINISHED_CACHE_LIMIT) finished.delete(finished.keys().next().value!)
        finished.set(id, read.value)
      }
    }
    const out = new Map<string, Ownership>()
    for (const a of archives) {
      const claim = claimedOp(a.notes ?? undefined)
      if (Option.isNone(claim)) {
        out.set(a.id, { ours: false, reason: "no agent notes: not made by the agent" })
        continue
      }
      const opId = claim.value
      const op = ops.get(opId) ?? Option.none()
      if (Option.isNone(op)) {
        out.set(a.id, { ours: false, reason: `its notes name op ${opId}, which the journal does not know` })
        continue
      }
      const made = producedBy(op.value)
      if (Option.isNone(made) || made.value.vmid !== a.vmid || made.value.storage !== a.storage) {
        out.set(a.id, { ours: false, reason: `op ${opId} is not a backup of guest ${a.vmid} to ${a.storage}` })
        continue
      }
      const recorded = recordedArchive(op.value, made.value.step)
      if (recorded !== null) {
        out.set(a.id, recorded === a.id ? { ours: true, opId } : { ours: false, reason: `op ${opId} produced another archive (${recorded})` })
        continue
      }
      const from = Math.floor(op.value.createdAtMs / 1000)
      const until = op.value.status === "in_flight" ? Infinity : Math.ceil(op.value.updatedAtMs / 1000)
      if (a.ctimeEpochSeconds < from || a.ctimeEpochSeconds > until) {
        out.set(a.id, { ours: false, reason: `its time is outside op ${opId}'s lifetime` })
        continue
      }
      if ((claims.get(opId) ?? []).length > 1) {
        out.set(a.id, { ours: false, reason: `several archives claim op ${opId}; none is taken as ours` })
        continue
      }
      out.set(a.id, { ours: true, opId })
    }
    return out as ReadonlyMap<string, Ownership>
  })

/** Only the archives that are ours, in listing order. */
export const oursOf = (archives: ReadonlyArray<ListedArchive>, owned: ReadonlyMap<string, Ownership>): ReadonlyArray<ListedArchive> =>
  archives.filter((a) => owned.get(a.id)?.ours === true)

/** The newest archive (time, then the larger volid, whose name carries the time) of a list. */
export const newestOf = <A extends Archive>(archives: ReadonlyArray<A>): A | undefined =>
  archives.reduce<A | undefined>(
    (best, a) =>
      best === undefined || a.ctimeEpochSeconds > best.ctimeEpochSeconds || (a.ctimeEpochSeconds === best.ctimeEpochSeconds && a.id > best.id)
        ? a
        : best,
    undefined
  )
