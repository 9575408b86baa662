/**
 * Retention pruning (issue 10): per target per guest, only the agent's own archives
 * (provenance.ts), only under the retention policy in force (policy.ts), never the newest.
 *
 * A `prune` op lists the archives it will delete when it begins; each deletion then asks the gate
 * (`clearPrune`), which re-proves op, listing, provenance, newest and policy from scratch before it
 * mints the one `delete-backup` clearance, and audits its decision. A refusal skips that archive.
 * A deletion that fails ends the op: recovery never resumes a prune, the next pass recomputes from
 * what PVE still lists.
 *
 * Adopting the manifest's retention: when it deletes none of the agent's existing archives it
 * becomes the policy in force (basis manifest); otherwise it is destructive, is NOT adopted (the
 * old policy keeps applying) and waits for an operator's signed `retention-change`.
 */
import { Effect, Option } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { JournalOp, StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { ProtectionStore } from "../../layers/ProtectionStore.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { StorageId, VmId, VolumeId } from "../../schema/ids.js"
import type { JsonObject } from "../../schema/json.js"
import type { SignedAuthorization } from "../../schema/operations.js"
import type { StorageContentEntry } from "../../schema/proxmox.js"
import type { Retention } from "../../schema/storage.js"
import { clearPrune, type Grant } from "../control/gate.js"
import { admissionOf, BadJob, beginOperation, runOperation } from "../control/steps.js"
import type { TimeZone } from "./calendar.js"
import { removals, retentionChange, retentionInForce, retentionJson } from "./policy.js"
import { byGuest, type ListedArchive, listedArchives, oursOf, ownership } from "./provenance.js"

export interface PruneOutcome {
  readonly vmid: VmId
  readonly storage: StorageId
  readonly opId: string | null
  /** What the op listed when it began. */
  readonly planned: ReadonlyArray<VolumeId>
  readonly deleted: ReadonlyArray<VolumeId>
  /** Archives the gate refused, with its reason. */
  readonly refused: ReadonlyArray<{ readonly volid: VolumeId; readonly reason: string }>
  readonly result: "done" | "failed" | "nothing"
  readonly detail: string
}

/** One guest's archives on a target: everything listed, and which of them are ours. */
export interface GuestArchives {
  readonly all: ReadonlyArray<ListedArchive>
  readonly ours: ReadonlyArray<ListedArchive>
}

/** A storage listing grouped per guest with provenance judged (one journal read per claimed op). */
export const classifyListing = (storage: StorageId, entries: ReadonlyArray<StorageContentEntry>, finished?: Map<string, JournalOp>) =>
  Effect.gen(function*() {
    const listed = listedArchives(storage, entries)
    const owned = yield* ownership(listed, finished)
    const out = new Map<VmId, GuestArchives>()
    for (const [vmid, all] of byGuest(listed)) out.set(vmid, { all, ours: oursOf(all, owned) })
    return out as ReadonlyMap<VmId, GuestArchives>
  })

/** What the retention in force removes from one guest's archives (newest first). */
export const plannedRemovals = (archives: GuestArchives, policy: Option.Option<Retention>, tz: TimeZone): ReadonlyArray<ListedArchive> =>
  removals(archives.ours, archives.all, policy, tz)

/**
 * The prune saga for one guest on one target, inside the caller's queue turn. `archives` is what
 * the policy in force removes now; the gate decides each deletion on its own.
 */
export const pruneSaga = (vmid: VmId, storage: StorageId, archives: ReadonlyArray<VolumeId>, basis: "policy" | "signed", tz: TimeZone) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const auditLog = yield* AuditLog
    if (archives.length === 0) {
      return { vmid, storage, opId: null, planned: [], deleted: [], refused: [], result: "nothing", detail: "nothing to prune" } satisfies PruneOutcome
    }
    const s = yield* beginOperation<"prune">({ _tag: "prune", vmid, storage, archives, basis }).pipe(Effect.catchTag("AdmissionRefused", Effect.die))
    const deleted: Array<VolumeId> = []
    const refused: Array<{ volid: VolumeId; reason: string }> = []
    const failure = yield* Effect.either(Effect.forEach(archives, (volid) =>
      Effect.gen(function*() {
        const cleared = yield* Effect.either(clearPrune(s.id, vmid, storage, volid, tz))
        if (cleared._tag === "Left") {
          if (cleared.left._tag === "JournalError") return yield* cleared.left
          refused.push({ volid, reason: cleared.left.message })
          return
        }
        yield* s.started("delete", { volid, deleted })
        const upid = yield* pve.deleteBackup(storage, volid, cleared.right)
        yield* ops.recordUpid(s.id, "delete", upid)
        // a file already gone is PVE's `WARNINGS: 1`: the archive is not there either way
        yield* pve.waitTask(upid, { acceptWarnings: true })
        deleted.push(volid)
        yield* s.done("delete", { volid, deleted })
        yield* auditLog.audit({
          actor: "prune",
          action: "delete-backup",
          target: String(vmid),
          decision: "done",
          detail: { op: s.id, storage, volid, basis }
        })
      }), { discard: true }))
    if (failure._tag === "Left") {
      const e = failure.left
      if (e._tag === "JournalError") return yield* e
      const detail = `prune of ${vmid} on ${storage} stopped after ${deleted.length} deletion(s): ${e._tag}: ${e.message}`.slice(0, 600)
      yield* ops.finish(s.id, "failed", detail)
      return { vmid, storage, opId: s.id, planned: archives, deleted, refused, result: "failed", detail } satisfies PruneOutcome
    }
    const detail = `deleted ${deleted.length} of ${archives.length}${refused.length > 0 ? `; ${refused.length} refused by the gate` : ""}`
    yield* ops.finish(s.id, "done", detail)
    return { vmid, storage, opId: s.id, planned: archives, deleted, refused, result: "done", detail } satisfies PruneOutcome
  })

/**
 * Prunes one guest on one target in its own queue turn: lists the guest's backups there inside
 * the turn (no op of that guest can change them between the listing and the saga), then runs the
 * saga over what the policy in force removes.
 */
export const pruneGuest = (vmid: VmId, storage: StorageId, tz: TimeZone, finished?: Map<string, JournalOp>) =>
  Effect.flatMap(GuestQueue, (queue) =>
    queue.serialize(vmid)(pruneInTurn(vmid, storage, Option.none(), tz, finished)))

/** The same for a caller already inside the guest's turn (a backup's listing is reused). */
export const pruneInTurn = (
  vmid: VmId,
  storage: StorageId,
  listing: Option.Option<ReadonlyArray<StorageContentEntry>>,
  tz: TimeZone,
  finished?: Map<string, JournalOp>
) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const store = yield* ProtectionStore
    const entries = Option.isSome(listing)
      ? Option.some(listing.value)
      : yield* Effect.option(pve.storageContent(storage, { content: "backup", vmid }))
    if (Option.isNone(entries)) {
      return { vmid, storage, opId: null, planned: [], deleted: [], refused: [], result: "failed", detail: `the backups on ${storage} could not be listed; nothing pruned` } satisfies PruneOutcome
    }
    const archives = (yield* classifyListing(storage, entries.value, finished)).get(vmid) ?? { all: [], ours: [] }
    const policy = yield* retentionInForce(storage)
    const basis = Option.match(yield* store.retentionInForce(storage), { onNone: () => "policy" as const, onSome: (r) => (r.basis === "signed" ? "signed" as const : "policy" as const) })
    return yield* pruneSaga(vmid, storage, plannedRemovals(archives, policy, tz).map((a) => a.id), basis, tz)
  })

// ---------------------------------------------------------------------------------------------
// The retention in force

/** A destructive retention change the agent holds until an operator signs it. */
export interface PendingRetention {
  readonly op: "retention-change"
  readonly vmid: null
  readonly params: JsonObject
  readonly reason: string
  readonly wouldDelete: ReadonlyArray<{ readonly vmid: VmId; readonly volid: VolumeId; readonly ctime: number }>
}

export const pendingRetentionParams = (storage: StorageId, retention: Retention): JsonObject => ({ storage, retention: retentionJson(retention) })

export type RetentionSettlement =
  | { readonly _tag: "same" | "adopted" }
  | { readonly _tag: "pending"; readonly pending: PendingRetention }

/**
 * Compares the manifest's retention for `storage` with the one in force over the agent's own
 * archives there: equal → nothing; deletes none of them → adopted (basis manifest, audited);
 * otherwise pending a signature, the old policy staying in force.
 */
export const settleRetention = (
  storage: StorageId,
  manifest: Retention,
  archives: ReadonlyMap<VmId, GuestArchives>,
  tz: TimeZone
) =>
  Effect.gen(function*() {
    const store = yield* ProtectionStore
    const auditLog = yield* AuditLog
    const inForce = yield* retentionInForce(storage)
    const ours = new Map([...archives].map(([vmid, a]) => [vmid, a.ours] as const))
    const change = retentionChange(inForce, manifest, ours, tz)
    switch (change._tag) {
      case "same":
        return { _tag: "same" } as RetentionSettlement
      case "adopt":
        yield* store.setRetentionInForce(storage, retentionJson(manifest), "manifest")
        yield* auditLog.audit({
          actor: "protection",
          action: "retention-change",
          target: storage,
          decision: "allowed",
          detail: { storage, retention: retentionJson(manifest), reason: "deletes none of the agent's existing archives" }
        })
        return { _tag: "adopted" } as RetentionSettlement
      case "shrinks": {
        const pending: PendingRetention = {
          op: "retention-change",
          vmid: null,
          params: pendingRetentionParams(storage, manifest),
          reason: `the new retention on ${storage} would delete ${change.wouldDelete.length} existing backup(s); the policy in force stays until an operator signs`,
          wouldDelete: change.wouldDelete.map((a) => ({ vmid: a.vmid, volid: a.id as VolumeId, ctime: a.ctimeEpochSeconds }))
        }
        return { _tag: "pending", pending } as RetentionSettlement
      }
    }
  })

/**
 * The signed `retention-change` job: admitted with its nonce and job key, then the signed policy
 * becomes the one in force (basis signed). Deletes nothing itself; the next pass prunes under it.
 */
export const adoptSignedRetention = (storage: StorageId, retention: Retention, grant: Grant, authorization: SignedAuthorization, key: string | null) =>
  Effect.gen(function*() {
    const store = yield* Effect.serviceOption(ProtectionStore)
    if (Option.isNone(store)) {
      // checked before admission: the signature's nonce is not spent on a job that cannot run
      return yield* new BadJob({ message: "retention-change: the protection store is not available in this process" })
    }
    return yield* runOperation({ _tag: "retention-change", vmid: null, storage, retention, authorization }, (s) =>
      Effect.gen(function*() {
        const auditLog = yield* AuditLog
        yield* s.started("adopt")
        yield* store.value.setRetentionInForce(storage, retentionJson(retention), "signed")
        yield* s.done("adopt")
        yield* auditLog.audit({
          actor: "job",
          action: "retention-change",
          target: storage,
          decision: "applied",
          detail: { op: s.id, storage, retention: retentionJson(retention), signer: authorization.signer, nonce: authorization.nonce }
        })
      }), admissionOf(grant, key))
  })

export type PruneServices = Proxmox | StoreServices | ProtectionStore | GuestQueue
