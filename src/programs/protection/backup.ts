/**
 * The scheduled backup (issue 10): one vzdump of one guest to one target as a journaled `backup`
 * op, in the guest's GuestQueue turn (never beside another op or a restore-test of that guest:
 * the restore-test runs under the source guest's key too) and under the host's cap on concurrent
 * backups. PVE prunes nothing: the Proxmox layer sends every vzdump with `remove=0` (and
 * keep-all, so no count-based retention becomes a backup limit). The archive carries
 * `felhom-op=<op id>` as its notes, which is how the agent later knows it made it.
 *
 * `exitstatus` `WARNINGS: N` is a success with warnings (the archive exists): recorded
 * "warnings", and the schedule moves on as for OK. A failure (a target pulled mid-write, a full
 * target, a lock) is recorded "failed" with PVE's own error line, nothing is deleted, and the
 * pass tries again after `failedRetryAfter`.
 *
 * Agent backups are crash-consistent only (vzdump snapshot mode, nothing quiesced inside the
 * guest); the app-consistent path is the controller's, through the local API (SPEC §13).
 */
import { Clock, Effect, Option } from "effect"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { ProtectionStore } from "../../layers/ProtectionStore.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { StorageId, Upid, VmId, VolumeId } from "../../schema/ids.js"
import type { StorageContentEntry, WaitError } from "../../schema/proxmox.js"
import { beginOperation, GuestNotOnNode } from "../control/steps.js"
import { ProtectionEnv } from "./env.js"
import { pbsBackupRefusal } from "./pbsGuard.js"
import { notesFor } from "./provenance.js"

export const CRASH_CONSISTENT = "crash-consistent (vzdump snapshot mode; nothing quiesced inside the guest)"

export type BackupResult = "ok" | "warnings" | "failed"

export interface BackupOutcome {
  readonly vmid: VmId
  readonly storage: StorageId
  /** The journal op; null when nothing was journaled (the store failed first). */
  readonly opId: string | null
  readonly result: BackupResult
  readonly detail: string
  /** The archive it produced, when PVE listed it right after. */
  readonly archive: VolumeId | null
  readonly startedMs: number
  readonly endedMs: number
  /** The guest's backups on the target right after the backup (None: not listed). */
  readonly listing: Option.Option<ReadonlyArray<StorageContentEntry>>
}

const clip = (s: string, n = 400) => (s.length > n ? `${s.slice(0, n)}…` : s)

/** PVE's own reason for a failed vzdump: its `ERROR:` line when the log has one (already scrubbed). */
const failureText = (e: WaitError | GuestNotOnNode): string => {
  if (e._tag === "PveTaskFailed") {
    // vzdump logs the guest's own reason; the task's exitstatus is only "job errors"
    const at = e.logTail.findIndex((l) => /ERROR: Backup of VM \d+ failed - /.test(l))
    if (at < 0) return clip(e.exitstatus)
    const reason = e.logTail[at]!.replace(/^.*?ERROR: Backup of VM \d+ failed - /, "")
    // a failed pipeline names its (long) command: the tool's own error line says what happened
    const command = /^command '[\s\S]*' failed: (.*)$/.exec(reason)
    if (command === null) return clip(reason)
    const tool = e.logTail.slice(0, at).reverse().find((l) => /error|Error|Cannot/.test(l))?.replace(/^INFO: /, "")
    return clip(tool === undefined ? `a backup command failed: ${command[1]}` : `${tool} (${command[1]})`)
  }
  return clip(`${e._tag}: ${e.message}`)
}

/**
 * The saga alone (no queue, no cap): begin → vzdump (UPID recorded before the wait) → wait,
 * accepting WARNINGS → list the guest's backups there and record which archive it made → done.
 * A JournalError is the only error: PVE failures end the op failed and come back as an outcome.
 */
export const backupSaga = (vmid: VmId, storage: StorageId, trigger: "schedule" | "api") =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const startedMs = yield* Clock.currentTimeMillis
    // no job key, no nonce: admission cannot be refused (a refusal would be a bug)
    const s = yield* beginOperation<"backup">({ _tag: "backup", vmid, storage, trigger }).pipe(Effect.catchTag("AdmissionRefused", Effect.die))
    const notes = notesFor(s.id)
    const refused = yield* pbsBackupRefusal(storage)
    if (Option.isSome(refused)) {
      const detail = `backup of ${vmid} to ${storage} refused: ${refused.value}`
      yield* ops.finish(s.id, "failed", detail)
      const now = yield* Clock.currentTimeMillis
      return { vmid, storage, opId: s.id, result: "failed", detail, archive: null, startedMs, endedMs: now, listing: Option.none() } satisfies BackupOutcome as BackupOutcome
    }
    const ran = yield* Effect.either(Effect.gen(function*() {
      yield* s.started("backup", { notes })
      const started = yield* pve.vzdump({ vmid, storage, mode: "snapshot", notesTemplate: notes })
      if (Option.isNone(started)) {
        return yield* new GuestNotOnNode({ message: `vzdump of ${vmid} started nothing: the guest is not on this node` })
      }
      const upid: Upid = started.value
      yield* ops.recordUpid(s.id, "backup", upid)
      return yield* pve.waitTask(upid, { acceptWarnings: true })
    }))
    if (ran._tag === "Left") {
      const e = ran.left
      if (e._tag === "JournalError") return yield* e
      const detail = `backup of ${vmid} to ${storage} failed: ${failureText(e)}; nothing was deleted`
      yield* ops.finish(s.id, "failed", detail)
      const outcome: BackupOutcome = {
        vmid,
        storage,
        opId: s.id,
        result: "failed",
        detail,
        archive: null,
        startedMs,
        endedMs: yield* Clock.currentTimeMillis,
        listing: Option.none()
      }
      return outcome
    }
    const exit = ran.right.exitstatus ?? "OK"
    const warnings = exit !== "OK"
    // which archive is ours: the one carrying this op's notes (a failed listing leaves it to the
    // time-window rule in provenance.ts)
    const listing = yield* Effect.option(pve.storageContent(storage, { content: "backup", vmid }))
    const archive = Option.getOrNull(Option.flatMap(listing, (l) => Option.fromNullable(l.find((e) => e.notes === notes)?.volid as VolumeId | undefined)))
    yield* s.done("backup", { notes, archive, exitstatus: exit })
    const detail = `${warnings ? `backup with warnings (${clip(exit, 60)}): the archive exists` : "backup ok"}; ${CRASH_CONSISTENT}`
    yield* ops.finish(s.id, "done", detail)
    const outcome: BackupOutcome = {
      vmid,
      storage,
      opId: s.id,
      result: warnings ? "warnings" : "ok",
      detail,
      archive,
      startedMs,
      endedMs: yield* Clock.currentTimeMillis,
      listing
    }
    return outcome
  })

/**
 * A backup as the scheduler runs it: a slot of the global cap, then the guest's queue turn, then
 * the saga; its result recorded in ProtectionStore (what the schedule is computed from).
 */
export const runBackup = (vmid: VmId, storage: StorageId, trigger: "schedule" | "api" = "schedule") =>
  Effect.gen(function*() {
    const env = yield* ProtectionEnv
    const queue = yield* GuestQueue
    const store = yield* ProtectionStore
    // the slot first: a backup waiting for its guest's turn never holds a slot of the queue's own cap
    return yield* env.backupSlots.withPermits(1)(queue.serialize(vmid)(
      Effect.gen(function*() {
        const outcome = yield* backupSaga(vmid, storage, trigger)
        yield* store.recordRun({ kind: "backup", vmid, storage, result: outcome.result, detail: outcome.detail })
        if (outcome.result === "failed") yield* Effect.logWarning(outcome.detail)
        return outcome
      })
    ))
  })

export type BackupServices = Proxmox | StoreServices | ProtectionStore | GuestQueue | ProtectionEnv
