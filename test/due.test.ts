/**
 * "Is a backup due for guest N" and the per-guest protection status
 * (src/programs/protection/due.ts), at fixed epoch values in Europe/Budapest.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, Schema } from "effect"
import { parseTimeZone, type TimeZone } from "../src/programs/protection/calendar.js"
import { backupDue, backupDueOnTarget, guestSchedules, protectionStatus, type RestorePoint } from "../src/programs/protection/due.js"
import { StorageId, VmId } from "../src/schema/ids.js"
import { CalendarSchedule, GuestPlacement, redactCredsIn, StorageManifest } from "../src/schema/storage.js"

const BUD: TimeZone = Either.getOrThrow(parseTimeZone("Europe/Budapest"))
const ms = (iso: string) => Date.parse(iso)
const sid = (s: string) => StorageId.make(s)
const sched = (s: string) => CalendarSchedule.make(s)

const FP = Array.from({ length: 32 }, () => "AB").join(":")
const manifest = Schema.decodeUnknownSync(StorageManifest)(redactCredsIn([
  { id: "local-lvm", type: "local-dir", durable_id: "/var/lib/vz", class: "fast", role: "primary", state: "attached" },
  { id: "usb-1", type: "usb", durable_id: "ABCD-1234", class: "slow", role: "vzdump-target", state: "attached", policy: { schedule: "02:00", retention: { keep_daily: 7 } } },
  {
    id: "pbs",
    type: "pbs",
    durable_id: { repo: "pbs.example.net:store", fingerprint: FP },
    class: "slow",
    role: "pbs-offsite",
    creds: { ref: "pbs-token" },
    state: "attached",
    policy: { schedule: "sun 03:00", retention: { keep_weekly: 8 } }
  },
  { id: "nas", type: "nfs", durable_id: "nas:/bulk", class: "slow", role: "bulk-data", state: "attached" },
  { id: "old", type: "usb", durable_id: "ABCD-9999", class: "slow", role: "vzdump-target", state: "disconnected", policy: { schedule: "hourly", retention: {} } }
]))

describe("backup due", () => {
  const daily = { target: sid("usb-1"), schedule: sched("02:00") }

  it("never backed up: due now, with the next slot", () => {
    const d = backupDueOnTarget(daily, undefined, ms("2026-01-10T12:00:00Z"), BUD)
    expect(d).toEqual({ due: true, reason: "never_backed_up", target: "usb-1", next_at: ms("2026-01-11T01:00:00Z"), last_at: null })
  })

  it("a slot passed since the last backup: due; before the slot: not yet", () => {
    const last = ms("2026-01-09T01:05:00Z")
    expect(backupDueOnTarget(daily, last, ms("2026-01-10T01:00:00Z"), BUD)).toMatchObject({ due: true, reason: "slot_passed", last_at: last })
    expect(backupDueOnTarget(daily, last, ms("2026-01-10T00:59:59Z"), BUD)).toEqual({
      due: false,
      reason: "not_yet",
      target: "usb-1",
      next_at: ms("2026-01-10T01:00:00Z"),
      last_at: last
    })
  })

  it("a month offline is one backup, not thirty", () => {
    const back = ms("2026-02-10T12:00:00Z")
    expect(backupDueOnTarget(daily, ms("2026-01-10T01:05:00Z"), back, BUD).due).toBe(true)
    // the backup taken on return is the last: not due again until tomorrow 02:00
    expect(backupDueOnTarget(daily, back + 60_000, back + 120_000, BUD)).toMatchObject({ due: false, reason: "not_yet", next_at: ms("2026-02-11T01:00:00Z") })
  })

  it("a last backup dated after now is reported, not repeated", () => {
    expect(backupDueOnTarget(daily, ms("2026-01-11T01:00:00Z"), ms("2026-01-10T12:00:00Z"), BUD)).toMatchObject({ due: false, reason: "last_in_future" })
  })

  it("over several targets: the never-backed-up one first, else the longest missed, else the soonest slot", () => {
    const pbs = { target: sid("pbs"), schedule: sched("sun 03:00") }
    const now = ms("2026-01-10T12:00:00Z") // Saturday
    const both = backupDue([daily, pbs], new Map([[sid("usb-1"), ms("2026-01-08T01:00:00Z")]]), now, BUD)
    expect(both).toMatchObject({ due: true, reason: "never_backed_up", target: "pbs" })
    expect(both.targets.map((t) => [t.target, t.reason])).toEqual([["usb-1", "slot_passed"], ["pbs", "never_backed_up"]])

    const older = backupDue([daily, pbs], new Map([[sid("usb-1"), ms("2026-01-08T01:00:00Z")], [sid("pbs"), ms("2025-12-28T02:00:00Z")]]), now, BUD)
    expect(older).toMatchObject({ due: true, reason: "slot_passed", target: "pbs" })

    const fresh = backupDue([daily, pbs], new Map([[sid("usb-1"), ms("2026-01-10T01:00:00Z")], [sid("pbs"), ms("2026-01-04T02:00:00Z")]]), now, BUD)
    expect(fresh).toMatchObject({ due: false, reason: "not_yet", target: "usb-1", next_at: ms("2026-01-11T01:00:00Z") })
  })

  it("no scheduled target: never due, and says why", () => {
    expect(backupDue([], new Map(), ms("2026-01-10T12:00:00Z"), BUD)).toEqual({ due: false, reason: "no_policy", target: null, next_at: null, last_at: null, targets: [] })
  })

  it("the guest's schedules are the attached backup targets with a policy", () => {
    expect(guestSchedules(manifest)).toEqual([{ target: "usb-1", schedule: "02:00" }, { target: "pbs", schedule: "sun 03:00" }])
  })
})

describe("protection status", () => {
  const vmid = VmId.make(100)
  const now = ms("2026-01-10T12:00:00Z") // Saturday, 13:00 in Budapest
  const placement = (volumes: ReadonlyArray<object>) => Schema.decodeUnknownSync(GuestPlacement)({ vmid: 100, volumes })
  const point = (tier: RestorePoint["tier"], target: string | null, iso: string): RestorePoint => ({ tier, target: target === null ? null : sid(target), at: ms(iso) })
  const fresh = [
    point("snapshot", null, "2026-01-10T11:00:00Z"),
    point("vzdump", "usb-1", "2026-01-10T01:10:00Z"),
    point("vzdump", "usb-1", "2026-01-09T01:10:00Z"),
    point("pbs", "pbs", "2026-01-04T02:20:00Z")
  ]

  it("newest point per tier with its age and the policy's interval; all fresh is ok", () => {
    const s = protectionStatus({ vmid, manifest, placement: placement([{ volume: "rootfs", kind: "hot", target: "local-lvm" }]), points: fresh, now, tz: BUD })
    expect(s.status).toBe("ok")
    expect(s.tiers.map((t) => [t.tier, t.target, t.age_seconds, t.interval_seconds, t.overdue])).toEqual([
      ["snapshot", null, 3600, null, false],
      ["vzdump", "usb-1", 10 * 3600 + 50 * 60, 86_400, false],
      ["pbs", "pbs", 6 * 86_400 + 9 * 3600 + 40 * 60, 7 * 86_400, false]
    ])
    expect(s.bulk).toEqual([])
    expect(s.unprotected).toBe(false)
  })

  it("a slot passed without a new backup is overdue", () => {
    const stale = fresh.filter((p) => p.tier !== "vzdump" || p.at < ms("2026-01-10T00:00:00Z"))
    const s = protectionStatus({ vmid, manifest, placement: undefined, points: stale, now, tz: BUD })
    expect(s.status).toBe("overdue")
    expect(s.targets.find((t) => t.target === "usb-1")).toMatchObject({ overdue: true, newest_at: ms("2026-01-09T01:10:00Z") })
    expect(s.targets.find((t) => t.target === "pbs")?.overdue).toBe(false)
  })

  it("a snapshot is not a backup: with only snapshots the guest has no backup", () => {
    const s = protectionStatus({ vmid, manifest, placement: undefined, points: [fresh[0]!], now, tz: BUD })
    expect(s.status).toBe("no_backup")
    expect(s.tiers[0].newest_at).toBe(ms("2026-01-10T11:00:00Z"))
    expect(s.targets.every((t) => t.overdue)).toBe(true)
  })

  it("each bulk volume's decision is shown; one without a decision makes the guest unprotected", () => {
    const s = protectionStatus({
      vmid,
      manifest,
      placement: placement([
        { volume: "rootfs", kind: "hot", target: "local-lvm" },
        { volume: "mp0", kind: "bulk", target: "nas", backup: { target: "usb-1" } },
        { volume: "mp1", kind: "bulk", target: "nas", backup: { none: { reason: "media, re-downloadable" } } },
        { volume: "mp2", kind: "bulk", target: "nas" }
      ]),
      points: fresh,
      now,
      tz: BUD
    })
    expect(s.bulk.map((b) => [b.volume, b.status, b.decision])).toEqual([
      ["mp0", "own_backup", { target: "usb-1" }],
      ["mp1", "accepted_none", { none: { reason: "media, re-downloadable" } }],
      ["mp2", "unprotected", null]
    ])
    expect(s.unprotected).toBe(true)
    expect(s.status).toBe("unprotected")
  })

  it("the interval follows the wall clock: a daily policy spans 23 hours across the spring change", () => {
    const s = protectionStatus({ vmid, manifest, placement: undefined, points: fresh, now: ms("2026-03-28T12:00:00Z"), tz: BUD })
    expect(s.targets.find((t) => t.target === "usb-1")?.interval_seconds).toBe(23 * 3600)
  })
})
