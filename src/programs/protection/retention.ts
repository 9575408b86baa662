/**
 * Retention with PVE/PBS prune semantics (pve-storage `prune_mark_backup_group`, PBS
 * `compute_prune_info`), for one backup group (one guest on one target). Pure.
 *
 * Archives are taken newest first. keep-last, keep-hourly, keep-daily, keep-weekly (ISO weeks,
 * Monday first), keep-monthly and keep-yearly run in that order; periods are local time in the
 * given zone, as PVE buckets them. Each option:
 *   - skips archives an earlier option already marked (kept or removed), and also every archive
 *     whose period already holds an archive kept by an earlier option: a keep-last archive does
 *     not use up a keep-daily slot, but its day counts as covered, so keep-daily starts at the
 *     next day without a kept archive;
 *   - keeps the newest archive of each new period until it has N periods, marking the older
 *     archives of those same periods removed, and stops at the first archive of period N+1.
 * Whatever no option kept is removed. Protected archives are kept and take no part.
 *
 * The agent never removes everything: keep-all, or no option above 0 (absent, empty or all
 * zero), keeps every archive, exactly as PVE treats an empty prune-backups.
 */

import { type TimeZone, wallAt } from "./calendar.js"

export interface KeepOptions {
  readonly keep_all?: boolean
  readonly keep_last?: number
  readonly keep_hourly?: number
  readonly keep_daily?: number
  readonly keep_weekly?: number
  readonly keep_monthly?: number
  readonly keep_yearly?: number
}

export interface Archive {
  readonly id: string
  readonly ctimeEpochSeconds: number
  /** PVE's `protected` flag: never pruned. */
  readonly protected?: boolean
}

export type KeepRule =
  | "keep-all"
  | "protected"
  | "keep-last"
  | "keep-hourly"
  | "keep-daily"
  | "keep-weekly"
  | "keep-monthly"
  | "keep-yearly"

export interface PruneResult<A extends Archive> {
  /** Newest first. */
  readonly kept: ReadonlyArray<{ readonly archive: A; readonly rule: KeepRule }>
  /** Newest first. */
  readonly removed: ReadonlyArray<A>
}

type Period = (a: Archive) => string

const pad = (n: number) => String(n).padStart(2, "0")

const isoWeek = (y: number, m: number, d: number): string => {
  const day = Math.floor(Date.UTC(y, m - 1, d) / 86_400_000)
  const dow = ((day % 7) + 10) % 7 + 1 // 1 = Monday .. 7 = Sunday (1970-01-01 was a Thursday)
  const thursday = day - dow + 4 // the ISO year is the year of the week's Thursday
  const isoYear = new Date(thursday * 86_400_000).getUTCFullYear()
  const week = Math.floor((thursday - Math.floor(Date.UTC(isoYear, 0, 1) / 86_400_000)) / 7) + 1
  return `${isoYear}/${pad(week)}`
}

const OPTIONS: ReadonlyArray<{ readonly key: Exclude<keyof KeepOptions, "keep_all">; readonly rule: KeepRule; readonly period: (tz: TimeZone) => Period }> = [
  // ctime and id: two archives with one ctime are still two archives
  { key: "keep_last", rule: "keep-last", period: () => (a) => `${a.ctimeEpochSeconds}/${a.id}` },
  { key: "keep_hourly", rule: "keep-hourly", period: (tz) => local(tz, (w) => `${w.year}/${pad(w.month)}/${pad(w.day)}/${pad(w.hour)}`) },
  { key: "keep_daily", rule: "keep-daily", period: (tz) => local(tz, (w) => `${w.year}/${pad(w.month)}/${pad(w.day)}`) },
  { key: "keep_weekly", rule: "keep-weekly", period: (tz) => local(tz, (w) => isoWeek(w.year, w.month, w.day)) },
  { key: "keep_monthly", rule: "keep-monthly", period: (tz) => local(tz, (w) => `${w.year}/${pad(w.month)}`) },
  { key: "keep_yearly", rule: "keep-yearly", period: (tz) => local(tz, (w) => `${w.year}`) }
]

const local = (tz: TimeZone, f: (w: ReturnType<typeof wallAt>) => string): Period => (a) => f(wallAt(tz, a.ctimeEpochSeconds * 1000))

const count = (n: number | undefined) => (n !== undefined && Number.isFinite(n) && n > 0 ? Math.floor(n) : 0)

/** True when the options keep everything: keep-all, or no count above 0. */
export const keepsEverything = (o: KeepOptions): boolean => o.keep_all === true || OPTIONS.every((opt) => count(o[opt.key]) === 0)

/** Newest first; equal times by id, so the result does not depend on the input order. */
const newestFirst = <A extends Archive>(archives: ReadonlyArray<A>): Array<A> =>
  [...archives].sort((a, b) => b.ctimeEpochSeconds - a.ctimeEpochSeconds || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))

export const prune = <A extends Archive>(archives: ReadonlyArray<A>, options: KeepOptions, tz: TimeZone): PruneResult<A> => {
  const list = newestFirst(archives)
  if (keepsEverything(options)) {
    return { kept: list.map((archive) => ({ archive, rule: archive.protected === true ? "protected" : "keep-all" })), removed: [] }
  }
  const mark = new Map<A, KeepRule | "remove">()
  for (const a of list) if (a.protected === true) mark.set(a, "protected")
  for (const opt of OPTIONS) {
    const n = count(options[opt.key])
    if (n === 0) continue
    const period = opt.period(tz)
    const covered = new Set<string>()
    for (const a of list) {
      const m = mark.get(a)
      if (m !== undefined && m !== "remove" && m !== "protected") covered.add(period(a))
    }
    const taken = new Set<string>()
    for (const a of list) {
      if (mark.has(a)) continue
      const p = period(a)
      if (covered.has(p)) continue
      if (taken.has(p)) {
        mark.set(a, "remove")
        continue
      }
      if (taken.size >= n) break
      taken.add(p)
      mark.set(a, opt.rule)
    }
  }
  const kept: Array<{ archive: A; rule: KeepRule }> = []
  const removed: Array<A> = []
  for (const a of list) {
    const m = mark.get(a)
    if (m === undefined || m === "remove") removed.push(a)
    else kept.push({ archive: a, rule: m })
  }
  return { kept, removed }
}

/**
 * The archives `next` would remove that `previous` keeps: a policy change with any is destructive
 * (it needs an operator signature), and `plan` lists them. Newest first.
 */
export const shrinkage = <A extends Archive>(previous: KeepOptions, next: KeepOptions, archives: ReadonlyArray<A>, tz: TimeZone): ReadonlyArray<A> => {
  const before = new Set(prune(archives, previous, tz).kept.map((k) => k.archive))
  return prune(archives, next, tz).removed.filter((a) => before.has(a))
}
