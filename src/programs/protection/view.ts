/**
 * What data protection shows (issue 10): per guest, the newest restorable point per tier and its
 * age against the policy, bulk volumes' decisions (`unprotected` when one has none), the last
 * backup attempt per target; per target, the retention in force against the manifest's and the
 * archives a shrinking policy would delete. Read-only: `plan` previews with it (nothing adopted,
 * nothing audited) and the host report carries it (ProtectionBoard, one hook in report.ts).
 */
import { Clock, Context, Effect, Layer, Option, Ref } from "effect"
import { ProtectionStore, type RunRecord } from "../../layers/ProtectionStore.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { DesiredState } from "../../schema/desired.js"
import type { ReportGuestProtection, ReportPendingSignature } from "../../schema/hub.js"
import { StorageId, VmId } from "../../schema/ids.js"
import type { NodeStorageEntry, StorageContentEntry } from "../../schema/proxmox.js"
import type { Retention, StorageTarget } from "../../schema/storage.js"
import { CRASH_CONSISTENT } from "./backup.js"
import type { TimeZone } from "./calendar.js"
import { protectionStatus, type ProtectionStatus, type RestorePoint } from "./due.js"
import { ProtectionEnv } from "./env.js"
import { type PassReport, pendingSignaturesOf } from "./pass.js"
import { retentionChange, retentionInForce, retentionJson } from "./policy.js"
import { classifyListing } from "./prune.js"
import { listedArchives } from "./provenance.js"

export interface RetentionPreview {
  readonly storage: string
  readonly in_force: Retention | null
  readonly in_force_basis: "manifest" | "signed" | null
  readonly manifest: Retention | null
  /** same / adopt (deletes none of the agent's archives) / shrinks (needs a signed retention-change) / no_policy (keeps everything) / unreadable */
  readonly change: "same" | "adopt" | "shrinks" | "no_policy" | "unreadable"
  readonly would_delete: ReadonlyArray<{ readonly vmid: number; readonly volid: string; readonly ctime: number }>
  /** The params a `retention-change` signature must carry, when one is needed. */
  readonly signature_params: { readonly storage: string; readonly retention: Record<string, number | boolean> } | null
}

export interface GuestPreview extends ProtectionStatus {
  readonly last_runs: ReadonlyArray<{ readonly target: string; readonly result: RunRecord["lastResult"]; readonly at: number; readonly detail: string }>
}

export interface ProtectionPreview {
  readonly consistency: string
  readonly guests: ReadonlyArray<GuestPreview>
  readonly retention: ReadonlyArray<RetentionPreview>
}

const tierOfStorage = (type: string | undefined, entry: StorageContentEntry): RestorePoint["tier"] =>
  type === "pbs" || entry.format === "pbs-ct" ? "pbs" : "vzdump"

/** Restore points from storage listings: every backup PVE lists, ours or not (all restorable). */
const backupPoints = (contents: ReadonlyArray<{ readonly storage: string; readonly type: string | undefined; readonly entries: ReadonlyArray<StorageContentEntry> }>) => {
  const out = new Map<number, Array<RestorePoint>>()
  for (const c of contents) {
    const sid = StorageId.make(c.storage)
    for (const a of listedArchives(sid, c.entries)) {
      const entry = c.entries.find((e) => e.volid === a.id)!
      const list = out.get(a.vmid) ?? []
      list.push({ tier: tierOfStorage(c.type, entry), target: sid, at: a.ctimeEpochSeconds * 1000 })
      out.set(a.vmid, list)
    }
  }
  return out
}

/** Snapshot points of the desired guests (a guest that cannot be read has none). */
const snapshotPoints = (guests: ReadonlyArray<VmId>) =>
  Effect.flatMap(Proxmox, (pve) =>
    Effect.forEach(guests, (vmid) =>
      pve.listSnapshots(vmid).pipe(
        Effect.map((snaps) =>
          [vmid, snaps.flatMap((s): Array<RestorePoint> =>
            s.name === "current" || s.snaptime === undefined ? [] : [{ tier: "snapshot", target: null, at: s.snaptime * 1000 }])] as const
        ),
        Effect.orElseSucceed(() => [vmid, [] as Array<RestorePoint>] as const)
      ), { concurrency: 4 }))

const statuses = (
  desired: DesiredState,
  points: ReadonlyMap<number, ReadonlyArray<RestorePoint>>,
  runs: ReadonlyArray<RunRecord>,
  now: number,
  tz: TimeZone
): ReadonlyArray<GuestPreview> =>
  desired.guests.map((g) => {
    const vmid = VmId.make(g.vmid)
    const status = protectionStatus({
      vmid,
      manifest: desired.storage ?? [],
      placement: desired.policies?.guests.find((p) => p.vmid === g.vmid),
      points: points.get(g.vmid) ?? [],
      now,
      tz
    })
    return {
      ...status,
      last_runs: runs
        .filter((r) => r.kind === "backup" && r.vmid === g.vmid)
        .map((r) => ({ target: r.storage, result: r.lastResult, at: r.lastAttemptMs, detail: r.detail }))
    }
  })

const backupTargets = (desired: DesiredState): ReadonlyArray<StorageTarget> =>
  (desired.storage ?? []).filter((t) => t.role === "vzdump-target" || t.role === "pbs-offsite")

/**
 * `plan`'s protection section: lists the backup targets and the desired guests' snapshots, and
 * says what the retention would do, without adopting or auditing anything.
 */
export const protectionPreview = (desired: DesiredState, tz: TimeZone) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const store = yield* ProtectionStore
    const now = yield* Clock.currentTimeMillis
    const nodeStorage = Option.getOrElse(yield* Effect.option(pve.nodeStorage), (): ReadonlyArray<NodeStorageEntry> => [])
    const active = new Set(nodeStorage.filter((s) => s.active === 1).map((s) => s.storage))
    const contents: Array<{ storage: string; type: string | undefined; entries: ReadonlyArray<StorageContentEntry> }> = []
    const retention: Array<RetentionPreview> = []
    for (const t of backupTargets(desired)) {
      const stored = yield* store.retentionInForce(t.id)
      const inForce = yield* retentionInForce(t.id)
      const base = {
        storage: t.id,
        in_force: Option.getOrNull(inForce),
        in_force_basis: Option.match(stored, { onNone: () => null, onSome: (r) => r.basis }),
        manifest: t.policy?.retention ?? null
      }
      const listing = active.has(t.id) ? yield* Effect.option(pve.storageContent(t.id, { content: "backup" })) : Option.none()
      if (Option.isSome(listing)) contents.push({ storage: t.id, type: t.type === "pbs" ? "pbs" : undefined, entries: listing.value })
      if (t.policy === undefined || t.state !== "attached") {
        retention.push({ ...base, change: "no_policy", would_delete: [], signature_params: null })
        continue
      }
      if (Option.isNone(listing)) {
        retention.push({ ...base, change: "unreadable", would_delete: [], signature_params: null })
        continue
      }
      const archives = yield* classifyListing(t.id, listing.value)
      const change = retentionChange(inForce, t.policy.retention, new Map([...archives].map(([v, a]) => [v, a.ours] as const)), tz)
      retention.push({
        ...base,
        change: change._tag,
        would_delete: change._tag === "shrinks" ? change.wouldDelete.map((a) => ({ vmid: a.vmid, volid: a.id, ctime: a.ctimeEpochSeconds })) : [],
        signature_params: change._tag === "shrinks" ? { storage: t.id, retention: retentionJson(t.policy.retention) } : null
      })
    }
    const present = new Set((Option.getOrElse(yield* Effect.option(pve.listGuests), () => [])).map((g) => g.vmid as number))
    const snaps = yield* snapshotPoints(desired.guests.filter((g) => present.has(g.vmid)).map((g) => VmId.make(g.vmid)))
    const points = backupPoints(contents)
    for (const [vmid, ps] of snaps) points.set(vmid, [...(points.get(vmid) ?? []), ...ps])
    const preview: ProtectionPreview = {
      consistency: CRASH_CONSISTENT,
      guests: statuses(desired, points, yield* store.runs, now, tz),
      retention
    }
    return preview
  })

export const renderProtection = (p: ProtectionPreview): ReadonlyArray<string> => {
  const lines: Array<string> = []
  if (p.guests.length === 0 && p.retention.length === 0) return lines
  const age = (s: number | null) => (s === null ? "none" : s < 3600 ? `${Math.round(s / 60)} min` : s < 172_800 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86_400).toFixed(1)} d`)
  lines.push(`protection (agent backups are ${p.consistency}):`)
  for (const g of p.guests) {
    lines.push(`  ${String(g.vmid).padEnd(6)} ${g.status.toUpperCase()}`)
    for (const t of g.tiers) {
      const every = t.interval_seconds === null ? "" : ` (policy every ${age(t.interval_seconds)}${t.overdue ? ", OVERDUE" : ""})`
      lines.push(`         ${t.tier.padEnd(8)} newest ${t.newest_at === null ? "none" : `${new Date(t.newest_at).toISOString()} on ${t.target ?? "-"}, ${age(t.age_seconds)} old`}${every}`)
    }
    for (const b of g.bulk) {
      const what = b.decision === null ? "UNPROTECTED: no backup decision" : "target" in b.decision ? `backed up to ${b.decision.target}` : `no backup (accepted: ${b.decision.none.reason})`
      lines.push(`         bulk ${b.volume} on ${b.target}: ${what}`)
    }
    for (const r of g.last_runs) lines.push(`         last backup to ${r.target}: ${r.result} at ${new Date(r.at).toISOString()}`)
  }
  for (const r of p.retention) {
    lines.push(`  retention on ${r.storage}: ${r.change}${r.in_force === null ? " (nothing in force: everything kept)" : ` (in force: ${JSON.stringify(r.in_force)}, ${r.in_force_basis})`}`)
    if (r.change === "shrinks") {
      lines.push(`         the manifest's ${JSON.stringify(r.manifest)} would delete ${r.would_delete.length} backup(s); it needs a signed retention-change ${JSON.stringify(r.signature_params)}`)
      for (const w of r.would_delete) lines.push(`         would delete ${w.volid} (guest ${w.vmid})`)
    }
  }
  return lines
}

// ---------------------------------------------------------------------------------------------
// The host report's view

const toReport = (g: GuestPreview): ReportGuestProtection => {
  const at = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z"))
  return {
    vmid: g.vmid,
    status: g.status,
    consistency: "crash",
    tiers: g.tiers.map((t) => ({
      tier: t.tier,
      newest_at: at(t.newest_at),
      target: t.target,
      age_seconds: t.age_seconds,
      interval_seconds: t.interval_seconds,
      overdue: t.overdue
    })),
    targets: g.targets.map((t) => {
      const run = g.last_runs.find((r) => r.target === t.target)
      return {
        target: t.target,
        tier: t.tier,
        newest_at: at(t.newest_at),
        age_seconds: t.age_seconds,
        interval_seconds: t.interval_seconds,
        overdue: t.overdue,
        last_result: run?.result ?? null,
        last_detail: run === undefined ? null : run.detail.slice(0, 500)
      }
    }),
    bulk: g.bulk.map((b) => ({
      volume: b.volume,
      target: b.target,
      status: b.status,
      backup_target: b.decision !== null && "target" in b.decision ? b.decision.target : null,
      reason: b.decision !== null && "none" in b.decision ? b.decision.none.reason : null
    }))
  }
}

export interface ProtectionBoardShape {
  /** The scheduler's last pass and the desired state it ran on. */
  readonly publish: (desired: DesiredState, report: PassReport) => Effect.Effect<void>
  /** Retention changes waiting for a signature, as the host report lists them. */
  readonly pendingSignatures: Effect.Effect<ReadonlyArray<ReportPendingSignature>>
  /** Per-guest protection status, from the storage listings the host report already made. */
  readonly forReport: (
    contents: ReadonlyArray<{ readonly storage: NodeStorageEntry; readonly entries: ReadonlyArray<StorageContentEntry> }>
  ) => Effect.Effect<ReadonlyArray<ReportGuestProtection>>
}

/**
 * What the host report reads of data protection (report.ts asks for it with serviceOption, so a
 * graph without it reports none). The lead wires `publish` as the protection loop's publisher.
 */
export class ProtectionBoard extends Context.Tag("felhom/ProtectionBoard")<ProtectionBoard, ProtectionBoardShape>() {
  static readonly layer: Layer.Layer<ProtectionBoard, never, Proxmox | ProtectionStore | ProtectionEnv> = Layer.effect(
    ProtectionBoard,
    Effect.gen(function*() {
      const context = yield* Effect.context<Proxmox | ProtectionStore | ProtectionEnv>()
      const env = yield* ProtectionEnv
      const last = yield* Ref.make<Option.Option<{ readonly desired: DesiredState; readonly pending: ReadonlyArray<ReportPendingSignature> }>>(Option.none())
      const shape: ProtectionBoardShape = {
        publish: (desired, report) =>
          Ref.update(last, (prev) =>
            Option.some({ desired, pending: pendingSignaturesOf(report, Option.match(prev, { onNone: () => [], onSome: (p) => p.pending })) })),
        pendingSignatures: Effect.map(Ref.get(last), Option.match({ onNone: () => [], onSome: (p) => p.pending })),
        forReport: (contents) =>
          Effect.gen(function*() {
            const state = yield* Ref.get(last)
            if (Option.isNone(state)) return []
            const desired = state.value.desired
            const now = yield* Clock.currentTimeMillis
            const guests = yield* Effect.option(Effect.flatMap(Proxmox, (p) => p.listGuests))
            const present = new Set(Option.getOrElse(guests, () => []).map((g) => g.vmid as number))
            const snaps = yield* snapshotPoints(desired.guests.filter((g) => present.has(g.vmid)).map((g) => VmId.make(g.vmid)))
            const points = backupPoints(contents.map((c) => ({ storage: c.storage.storage, type: c.storage.type, entries: c.entries })))
            for (const [vmid, ps] of snaps) points.set(vmid, [...(points.get(vmid) ?? []), ...ps])
            const runs = yield* Effect.orElseSucceed(Effect.flatMap(ProtectionStore, (s) => s.runs), () => [])
            return statuses(desired, points, runs, now, env.timeZone).map(toReport)
          }).pipe(Effect.provide(context))
      }
      return shape
    })
  )
}
