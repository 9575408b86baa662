/**
 * "Is a backup due for guest N" (the local API will serve it: the controller asks, quiesces, then
 * requests the backup) and the per-guest protection status the host report and `plan` show. Pure:
 * the caller passes the policy, what PVE lists, now (epoch ms, from Effect's Clock) and the zone.
 * Every instant here is epoch milliseconds.
 */
import { Either, Option } from "effect"
import type { StorageId, VmId } from "../../schema/ids.js"
import type { BackupDecision, BackupTier, CalendarSchedule, GuestPlacement, StorageTarget, VolumeName } from "../../schema/storage.js"
import { scheduledBackupTargets, tierOf } from "../../schema/storage.js"
import { type CalendarEvent, dueRuns, nextRun, parseCalendarEvent, type TimeZone } from "./calendar.js"

/** A guest's backup schedule on one target. */
export interface TargetSchedule {
  readonly target: StorageId
  readonly schedule: CalendarSchedule
}

/**
 * never_backed_up: no successful backup on the target yet; slot_passed: a scheduled instant passed
 * since the last one (many missed slots are still one backup); not_yet; last_in_future: the last
 * backup is dated after now (the clock went back); no_future_slot: the schedule never fires
 * again; no_policy: the guest has no scheduled target.
 */
export type DueReason = "never_backed_up" | "slot_passed" | "not_yet" | "last_in_future" | "no_future_slot" | "no_policy"

export interface BackupDue {
  readonly due: boolean
  readonly reason: DueReason
  readonly target: StorageId | null
  /** The next scheduled instant after now (when due: the one after this backup). */
  readonly next_at: number | null
  /** The last successful backup on `target`. */
  readonly last_at: number | null
}

/** A validated schedule's event; None only for a string that did not come through the schema. */
const eventOf = (s: CalendarSchedule): Option.Option<CalendarEvent> => Either.getRight(parseCalendarEvent(s))

export const backupDueOnTarget = (policy: TargetSchedule, lastSuccessAt: number | undefined, now: number, tz: TimeZone): BackupDue => {
  const last_at = lastSuccessAt ?? null
  const event = eventOf(policy.schedule)
  if (Option.isNone(event)) return { due: false, reason: "no_future_slot", target: policy.target, next_at: null, last_at }
  const d = dueRuns(event.value, lastSuccessAt, now, tz)
  const reason: DueReason = d.reason === "never_run"
    ? "never_backed_up"
    : d.reason === "last_run_in_future"
    ? "last_in_future"
    : d.reason === "never"
    ? "no_future_slot"
    : d.reason
  return { due: d.due, reason, target: policy.target, next_at: d.nextAt, last_at }
}

export interface GuestBackupDue extends BackupDue {
  /** Every target's own answer, in the order given. */
  readonly targets: ReadonlyArray<BackupDue>
}

/**
 * The guest's answer over all its targets: the most urgent due target (never backed up first,
 * then the longest-missed), or when none is due the one whose slot comes first.
 */
export const backupDue = (
  policies: ReadonlyArray<TargetSchedule>,
  lastSuccess: ReadonlyMap<StorageId, number>,
  now: number,
  tz: TimeZone
): GuestBackupDue => {
  const targets = policies.map((p) => backupDueOnTarget(p, lastSuccess.get(p.target), now, tz))
  if (targets.length === 0) return { due: false, reason: "no_policy", target: null, next_at: null, last_at: null, targets }
  const urgency = (d: BackupDue) => (d.reason === "never_backed_up" ? -Infinity : d.last_at ?? -Infinity)
  const due = targets.filter((d) => d.due).sort((a, b) => urgency(a) - urgency(b))
  const soonest = [...targets].sort((a, b) => (a.next_at ?? Infinity) - (b.next_at ?? Infinity))
  const pick = due[0] ?? soonest[0] ?? targets[0]!
  return { ...pick, targets }
}

/** The schedules a guest is backed up on: every attached backup target with a policy. */
export const guestSchedules = (manifest: ReadonlyArray<StorageTarget>): ReadonlyArray<TargetSchedule> =>
  scheduledBackupTargets(manifest).map((t) => ({ target: t.id, schedule: t.policy.schedule }))

// ---------------------------------------------------------------------------------------------
// Protection status

export type RestoreTier = "snapshot" | BackupTier

/** A restorable point PVE lists for the guest: a snapshot, or a backup on a target. */
export interface RestorePoint {
  readonly tier: RestoreTier
  /** The storage a backup is on; null for a snapshot. */
  readonly target: StorageId | null
  readonly at: number
}

export interface TargetProtection {
  readonly target: StorageId
  readonly tier: BackupTier
  readonly newest_at: number | null
  readonly age_seconds: number | null
  /** The schedule's interval around now (the gap between its next two slots). */
  readonly interval_seconds: number | null
  /** A scheduled slot passed after the newest backup here without a newer one (or none exists). */
  readonly overdue: boolean
}

export interface TierProtection {
  readonly tier: RestoreTier
  readonly newest_at: number | null
  readonly target: StorageId | null
  readonly age_seconds: number | null
  /** The shortest interval among the tier's scheduled targets; null for snapshots or no schedule. */
  readonly interval_seconds: number | null
  readonly overdue: boolean
}

export interface BulkVolumeProtection {
  readonly volume: VolumeName
  readonly target: StorageId
  readonly decision: BackupDecision | null
  /** own_backup: backed up to its decision's target; accepted_none: deliberately not, with the reason. */
  readonly status: "own_backup" | "accepted_none" | "unprotected"
}

export interface ProtectionStatus {
  readonly vmid: VmId
  /** In restore-source priority order: snapshot (not a backup), vzdump, pbs. */
  readonly tiers: readonly [TierProtection, TierProtection, TierProtection]
  readonly targets: ReadonlyArray<TargetProtection>
  readonly bulk: ReadonlyArray<BulkVolumeProtection>
  /** A bulk volume has no backup decision. */
  readonly unprotected: boolean
  /** unprotected, then no_backup (no vzdump or pbs point at all), then overdue, else ok. */
  readonly status: "unprotected" | "no_backup" | "overdue" | "ok"
}

export interface ProtectionInput {
  readonly vmid: VmId
  readonly manifest: ReadonlyArray<StorageTarget>
  readonly placement: GuestPlacement | undefined
  readonly points: ReadonlyArray<RestorePoint>
  readonly now: number
  readonly tz: TimeZone
}

const ageSeconds = (now: number, at: number | null) => (at === null ? null : Math.max(0, Math.floor((now - at) / 1000)))

const intervalSeconds = (event: CalendarEvent, now: number, tz: TimeZone): number | null => {
  const first = nextRun(event, now, tz)
  if (Option.isNone(first)) return null
  const second = nextRun(event, first.value, tz)
  return Option.isNone(second) ? null : Math.round((second.value - first.value) / 1000)
}

const newest = (points: ReadonlyArray<RestorePoint>): RestorePoint | null =>
  points.reduce<RestorePoint | null>((best, p) => (best === null || p.at > best.at ? p : best), null)

export const protectionStatus = (input: ProtectionInput): ProtectionStatus => {
  const { now, tz } = input
  const targets: Array<TargetProtection> = scheduledBackupTargets(input.manifest).map((t) => {
    const tier = tierOf(t)
    const last = newest(input.points.filter((p) => p.tier === tier && p.target === t.id))
    const event = eventOf(t.policy.schedule)
    const overdue = Option.match(event, {
      onNone: () => false,
      onSome: (e) => last === null || Option.match(nextRun(e, last.at, tz), { onNone: () => false, onSome: (slot) => slot <= now })
    })
    return {
      target: t.id,
      tier,
      newest_at: last?.at ?? null,
      age_seconds: ageSeconds(now, last?.at ?? null),
      interval_seconds: Option.match(event, { onNone: () => null, onSome: (e) => intervalSeconds(e, now, tz) }),
      overdue
    }
  })
  const tier = (name: RestoreTier): TierProtection => {
    const best = newest(input.points.filter((p) => p.tier === name))
    const scheduled = targets.filter((t) => t.tier === name)
    const intervals = scheduled.flatMap((t) => (t.interval_seconds === null ? [] : [t.interval_seconds]))
    return {
      tier: name,
      newest_at: best?.at ?? null,
      target: best?.target ?? null,
      age_seconds: ageSeconds(now, best?.at ?? null),
      interval_seconds: intervals.length === 0 ? null : Math.min(...intervals),
      overdue: scheduled.some((t) => t.overdue)
    }
  }
  const tiers = [tier("snapshot"), tier("vzdump"), tier("pbs")] as const
  const bulk: Array<BulkVolumeProtection> = (input.placement?.volumes ?? []).flatMap((v) =>
    v.kind !== "bulk"
      ? []
      : [{
        volume: v.volume,
        target: v.target,
        decision: v.backup ?? null,
        status: v.backup === undefined ? "unprotected" as const : "target" in v.backup ? "own_backup" as const : "accepted_none" as const
      }]
  )
  const unprotected = bulk.some((b) => b.status === "unprotected")
  const status = unprotected
    ? "unprotected"
    : tiers[1].newest_at === null && tiers[2].newest_at === null
    ? "no_backup"
    : targets.some((t) => t.overdue)
    ? "overdue"
    : "ok"
  return { vmid: input.vmid, tiers, targets, bulk, unprotected, status }
}
