/**
 * Retention (src/programs/protection/retention.ts) against PVE's own prune test cases
 * (pve-storage src/test/prune_backups_test.pm, one backup group, in UTC) and, as properties,
 * against a separate reference written from the documented rules: per option, among archives not
 * yet marked and whose period no earlier option kept, take the N newest periods; keep the newest
 * archive of each and remove the rest of those periods; all else is removed.
 */
import { describe, expect, expectTypeOf, it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import { parseTimeZone, type TimeZone } from "../src/programs/protection/calendar.js"
import { type Archive, type KeepOptions, type KeepRule, keepsEverything, prune, shrinkage } from "../src/programs/protection/retention.js"
import type { Retention } from "../src/schema/storage.js"

const tzOf = (s: string): TimeZone => Either.getOrThrow(parseTimeZone(s))
const UTC = tzOf("UTC")

const H = 3600
const D = 24 * H
const BASE = 1577881101 // 2020-01-01 12:18:21 UTC, as in PVE's test

/** PVE's "default" list for one guest's qemu group: index 2 is protected. */
const pveDefault: ReadonlyArray<Archive> = [
  { id: "2018_05_26-11_18_21", ctimeEpochSeconds: BASE - 585 * D - H },
  { id: "2019_12_31-11_18_21", ctimeEpochSeconds: BASE - D - H },
  { id: "2019_12_31-11_18_51", ctimeEpochSeconds: BASE - D - H + 30, protected: true },
  { id: "2019_12_31-11_19_21", ctimeEpochSeconds: BASE - D - H + 60 },
  { id: "2020_01_01-11_18_21", ctimeEpochSeconds: BASE - H },
  { id: "2020_01_01-12_18_21", ctimeEpochSeconds: BASE }
]

type Mark = "keep" | "remove" | "protected"

const marks = (archives: ReadonlyArray<Archive>, options: KeepOptions, tz = UTC): Record<string, Mark> => {
  const r = prune(archives, options, tz)
  const out: Record<string, Mark> = {}
  for (const k of r.kept) out[k.archive.id] = k.rule === "protected" ? "protected" : "keep"
  for (const a of r.removed) out[a.id] = "remove"
  return out
}

/** PVE's expected marks for the five unprotected archives, oldest first. */
const expectDefault = (options: KeepOptions, five: ReadonlyArray<"keep" | "remove">) => {
  const ids = pveDefault.filter((a) => a.protected !== true).map((a) => a.id)
  const want: Record<string, Mark> = { "2019_12_31-11_18_51": "protected" }
  ids.forEach((id, i) => (want[id] = five[i]!))
  expect(marks(pveDefault, options)).toEqual(want)
}

describe("retention: PVE's prune test cases", () => {
  it("keep-last=3", () => expectDefault({ keep_last: 3 }, ["remove", "remove", "keep", "keep", "keep"]))
  it("keep-weekly=2 (2019-12-31 is in ISO week 2020-W01)", () => expectDefault({ keep_weekly: 2 }, ["keep", "remove", "remove", "remove", "keep"]))
  it("keep-daily=weekly=monthly=1, hourly=0", () =>
    expectDefault({ keep_hourly: 0, keep_daily: 1, keep_weekly: 1, keep_monthly: 1 }, ["keep", "remove", "keep", "remove", "keep"]))
  it("keep-hourly=4, daily=0", () => expectDefault({ keep_hourly: 4, keep_daily: 0 }, ["keep", "remove", "keep", "keep", "keep"]))
  it("keep-yearly=2, others 0", () =>
    expectDefault({ keep_hourly: 0, keep_daily: 0, keep_weekly: 0, keep_monthly: 0, keep_yearly: 2 }, ["remove", "remove", "keep", "remove", "keep"]))
  it("keep-last=2, hourly=2", () => expectDefault({ keep_last: 2, keep_hourly: 2 }, ["keep", "remove", "keep", "keep", "keep"]))
  it("keep-last=1, monthly=2", () => expectDefault({ keep_last: 1, keep_monthly: 2 }, ["keep", "remove", "keep", "remove", "keep"]))
  it("keep-monthly=3", () => expectDefault({ keep_monthly: 3 }, ["keep", "remove", "keep", "remove", "keep"]))
  it("keep-last=daily=weekly=1", () => expectDefault({ keep_last: 1, keep_daily: 1, keep_weekly: 1 }, ["keep", "remove", "keep", "remove", "keep"]))
  it("keep-daily=2", () => expectDefault({ keep_daily: 2 }, ["remove", "remove", "keep", "remove", "keep"]))
  it("keep-weekly=monthly=1", () => expectDefault({ keep_weekly: 1, keep_monthly: 1 }, ["keep", "remove", "remove", "remove", "keep"]))
  it("keep-weekly=yearly=1", () => expectDefault({ keep_weekly: 1, keep_yearly: 1 }, ["keep", "remove", "remove", "remove", "keep"]))
  it("all missing, and all zero: everything kept", () => {
    expectDefault({}, ["keep", "keep", "keep", "keep", "keep"])
    expectDefault({ keep_last: 0, keep_hourly: 0, keep_daily: 0, keep_weekly: 0, keep_monthly: 0, keep_yearly: 0 }, ["keep", "keep", "keep", "keep", "keep"])
  })

  it("three-way: the month is already covered by the archive keep-weekly kept", () => {
    const list = [
      { id: "2019_12_25", ctimeEpochSeconds: BASE - 7 * D },
      { id: "2019_12_31", ctimeEpochSeconds: BASE - D },
      { id: "2020_01_01", ctimeEpochSeconds: BASE }
    ]
    expect(marks(list, { keep_daily: 1, keep_weekly: 1, keep_monthly: 1 })).toEqual({ "2019_12_25": "keep", "2019_12_31": "remove", "2020_01_01": "keep" })
  })

  it("week boundary: Thursday and Friday share a week, the next Monday starts another", () => {
    const list = [
      { id: "2020_12_03", ctimeEpochSeconds: BASE + (366 - 31 + 2) * D },
      { id: "2020_12_04", ctimeEpochSeconds: BASE + (366 - 31 + 3) * D },
      { id: "2020_12_07", ctimeEpochSeconds: BASE + (366 - 31 + 6) * D }
    ]
    expect(marks(list, { keep_daily: 1, keep_weekly: 1 })).toEqual({ "2020_12_03": "remove", "2020_12_04": "keep", "2020_12_07": "keep" })
  })

  it("years before 2000 and after 2038", () => {
    const list = [{ id: "1970", ctimeEpochSeconds: 83 }, { id: "2070", ctimeEpochSeconds: D * (365 * 100 + 25) + 60 }]
    expect(marks(list, { keep_yearly: 1 })).toEqual({ "1970": "remove", "2070": "keep" })
  })
})

describe("retention: rules", () => {
  it("an archive keep-last kept does not use a keep-daily slot, but covers its day", () => {
    const list = [
      { id: "today-12", ctimeEpochSeconds: BASE },
      { id: "today-08", ctimeEpochSeconds: BASE - 4 * H },
      { id: "yesterday-20", ctimeEpochSeconds: BASE - 16 * H },
      { id: "yesterday-10", ctimeEpochSeconds: BASE - 26 * H }
    ]
    const r = prune(list, { keep_last: 1, keep_daily: 1 }, UTC)
    expect(r.kept.map((k) => [k.archive.id, k.rule])).toEqual([["today-12", "keep-last"], ["yesterday-20", "keep-daily"]])
    expect(r.removed.map((a) => a.id)).toEqual(["today-08", "yesterday-10"])
  })

  it("days are local: 23:30 and 00:30 UTC are one Budapest day in winter, and two UTC days", () => {
    const list = [{ id: "late", ctimeEpochSeconds: Date.parse("2026-01-11T00:30:00Z") / 1000 }, { id: "early", ctimeEpochSeconds: Date.parse("2026-01-10T23:30:00Z") / 1000 }]
    expect(prune(list, { keep_daily: 5 }, UTC).removed).toHaveLength(0)
    expect(prune(list, { keep_daily: 5 }, tzOf("Europe/Budapest")).removed.map((a) => a.id)).toEqual(["early"])
  })

  it("the repeated fall-back hour is one keep-hourly period", () => {
    // 2026-11-01 New York: 05:30Z is 01:30 EDT, 06:30Z is 01:30 EST
    const list = [{ id: "est", ctimeEpochSeconds: Date.parse("2026-11-01T06:30:00Z") / 1000 }, { id: "edt", ctimeEpochSeconds: Date.parse("2026-11-01T05:30:00Z") / 1000 }]
    expect(prune(list, { keep_hourly: 5 }, tzOf("America/New_York")).removed.map((a) => a.id)).toEqual(["edt"])
  })

  it("protected archives are kept and take no slot", () => {
    const list = [
      { id: "newest", ctimeEpochSeconds: BASE, protected: true },
      { id: "second", ctimeEpochSeconds: BASE - H },
      { id: "third", ctimeEpochSeconds: BASE - 2 * H }
    ]
    const r = prune(list, { keep_last: 1 }, UTC)
    expect(r.kept.map((k) => [k.archive.id, k.rule])).toEqual([["newest", "protected"], ["second", "keep-last"]])
  })

  it("a decoded policy's retention is what prune takes", () => {
    expectTypeOf<Retention>().toMatchTypeOf<KeepOptions>()
  })

  it("keep_all keeps everything whatever else is set", () => {
    expect(prune(pveDefault, { keep_all: true, keep_last: 1 }, UTC).removed).toHaveLength(0)
    expect(keepsEverything({ keep_all: true })).toBe(true)
    expect(keepsEverything({ keep_all: false })).toBe(true)
    expect(keepsEverything({ keep_daily: 1 })).toBe(false)
  })

  it("shrinkage lists what the new policy would delete that the old one keeps", () => {
    const daily = Array.from({ length: 10 }, (_, i) => ({ id: `d${i}`, ctimeEpochSeconds: BASE - i * D }))
    expect(shrinkage({ keep_daily: 7 }, { keep_daily: 3 }, daily, UTC).map((a) => a.id)).toEqual(["d3", "d4", "d5", "d6"])
    expect(shrinkage({ keep_daily: 3 }, { keep_daily: 7 }, daily, UTC)).toEqual([])
    // removing every option means keep everything: never a shrink
    expect(shrinkage({ keep_daily: 3 }, {}, daily, UTC)).toEqual([])
    expect(shrinkage({}, { keep_last: 1 }, daily, UTC)).toHaveLength(9)
  })
})

// ---------------------------------------------------------------------------------------------
// The reference

const refFormatters = new Map<string, Intl.DateTimeFormat>()
/** "YYYY-MM-DD HH" in the zone, from a different formatter and format than the implementation's. */
const localHourText = (tz: string, seconds: number): string => {
  let f = refFormatters.get(tz)
  if (f === undefined) {
    f = new Intl.DateTimeFormat("sv-SE", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", hourCycle: "h23" })
    refFormatters.set(tz, f)
  }
  return f.format(seconds * 1000)
}

/** ISO week: the Monday of the date's week; the week belongs to the year of its Thursday. */
const refIsoWeek = (ymd: string): string => {
  const [y, m, d] = ymd.split("-").map(Number) as [number, number, number]
  const date = new Date(Date.UTC(y, m - 1, d))
  const monday = new Date(date.getTime() - ((date.getUTCDay() + 6) % 7) * 86_400_000)
  const isoYear = new Date(monday.getTime() + 3 * 86_400_000).getUTCFullYear()
  const jan4 = new Date(Date.UTC(isoYear, 0, 4))
  const firstMonday = new Date(jan4.getTime() - ((jan4.getUTCDay() + 6) % 7) * 86_400_000)
  return `${isoYear}-W${Math.round((monday.getTime() - firstMonday.getTime()) / (7 * 86_400_000)) + 1}`
}

const REF_OPTIONS: ReadonlyArray<readonly [keyof KeepOptions, KeepRule, (tz: string, a: Archive) => string]> = [
  ["keep_last", "keep-last", (_tz, a) => `${a.ctimeEpochSeconds}#${a.id}`],
  ["keep_hourly", "keep-hourly", (tz, a) => localHourText(tz, a.ctimeEpochSeconds)],
  ["keep_daily", "keep-daily", (tz, a) => localHourText(tz, a.ctimeEpochSeconds).slice(0, 10)],
  ["keep_weekly", "keep-weekly", (tz, a) => refIsoWeek(localHourText(tz, a.ctimeEpochSeconds).slice(0, 10))],
  ["keep_monthly", "keep-monthly", (tz, a) => localHourText(tz, a.ctimeEpochSeconds).slice(0, 7)],
  ["keep_yearly", "keep-yearly", (tz, a) => localHourText(tz, a.ctimeEpochSeconds).slice(0, 4)]
]

const referencePrune = (archives: ReadonlyArray<Archive>, options: KeepOptions, tz: string): Map<string, KeepRule | "remove"> => {
  const sorted = [...archives].sort((a, b) => b.ctimeEpochSeconds - a.ctimeEpochSeconds || a.id.localeCompare(b.id, "en"))
  const out = new Map<string, KeepRule | "remove">()
  const counts = REF_OPTIONS.map(([k]) => options[k])
  const anyPositive = counts.some((n) => typeof n === "number" && n > 0)
  if (options.keep_all === true || !anyPositive) {
    for (const a of sorted) out.set(a.id, a.protected === true ? "protected" : "keep-all")
    return out
  }
  for (const a of sorted) if (a.protected === true) out.set(a.id, "protected")
  for (const [key, rule, periodOf] of REF_OPTIONS) {
    const n = options[key]
    if (typeof n !== "number" || n <= 0) continue
    const covered = new Set(sorted.filter((a) => (out.get(a.id) ?? "").startsWith("keep-")).map((a) => periodOf(tz, a)))
    const candidates = sorted.filter((a) => !out.has(a.id) && !covered.has(periodOf(tz, a)))
    const periods = [...new Set(candidates.map((a) => periodOf(tz, a)))].slice(0, n)
    for (const p of periods) {
      const [first, ...rest] = candidates.filter((a) => periodOf(tz, a) === p)
      out.set(first!.id, rule)
      for (const a of rest) out.set(a.id, "remove")
    }
  }
  for (const a of sorted) if (!out.has(a.id)) out.set(a.id, "remove")
  return out
}

// ---------------------------------------------------------------------------------------------
// Properties

const PROP = {
  numRuns: Number(process.env["PROP_RUNS"] ?? 300),
  ...(process.env["PROP_SEED"] === undefined ? {} : { seed: Number(process.env["PROP_SEED"]) })
}

const ZONES = ["UTC", "Europe/Budapest", "America/New_York"] as const

// Starts near DST changes and year ends; gaps from seconds to months, so periods collide often.
const archivesArb: fc.Arbitrary<ReadonlyArray<Archive>> = fc.record({
  start: fc.constantFrom("2025-10-25T20:00:00Z", "2026-03-28T20:00:00Z", "2026-10-31T20:00:00Z", "2026-12-27T00:00:00Z", "2027-06-01T00:00:00Z"),
  steps: fc.array(
    fc.record({
      gap: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 2 * H }), fc.integer({ min: H, max: 3 * D }), fc.integer({ min: D, max: 45 * D })),
      protected: fc.oneof({ weight: 12, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) })
    }),
    { maxLength: 40 }
  )
}).map(({ start, steps }) => {
  let t = Date.parse(start) / 1000
  return steps.map((s, i) => {
    t -= s.gap
    return s.protected ? { id: `a${i}`, ctimeEpochSeconds: t, protected: true } : { id: `a${i}`, ctimeEpochSeconds: t }
  })
})

const count = fc.oneof(fc.constant(undefined), fc.integer({ min: 0, max: 4 }))
const optionsArb: fc.Arbitrary<KeepOptions> = fc.record({
  keep_all: fc.oneof({ weight: 10, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.boolean() }),
  keep_last: count,
  keep_hourly: count,
  keep_daily: count,
  keep_weekly: count,
  keep_monthly: count,
  keep_yearly: count
}).map((o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as KeepOptions)

const asMap = (r: ReturnType<typeof prune>) => {
  const m = new Map<string, KeepRule | "remove">()
  for (const k of r.kept) m.set(k.archive.id, k.rule)
  for (const a of r.removed) m.set(a.id, "remove")
  return m
}

const newestUnprotected = (archives: ReadonlyArray<Archive>) =>
  [...archives].filter((a) => a.protected !== true).sort((a, b) => b.ctimeEpochSeconds - a.ctimeEpochSeconds || a.id.localeCompare(b.id, "en"))[0]

describe("retention: properties", () => {
  it.prop("the implementation agrees with the reference, archive by archive and rule by rule", [archivesArb, optionsArb, fc.constantFrom(...ZONES)], ([archives, options, zone]) => {
    const got = asMap(prune(archives, options, tzOf(zone)))
    const want = referencePrune(archives, options, zone)
    expect(Object.fromEntries(got)).toEqual(Object.fromEntries(want))
  }, { fastCheck: PROP })

  it.prop("the result is a partition of the input, and pruning the kept set again removes nothing", [archivesArb, optionsArb, fc.constantFrom(...ZONES)], ([archives, options, zone]) => {
    const tz = tzOf(zone)
    const r = prune(archives, options, tz)
    const ids = [...r.kept.map((k) => k.archive.id), ...r.removed.map((a) => a.id)]
    expect(ids.length).toBe(archives.length)
    expect(new Set(ids)).toEqual(new Set(archives.map((a) => a.id)))
    expect(prune(r.kept.map((k) => k.archive), options, tz).removed).toEqual([])
  }, { fastCheck: PROP })

  it.prop("never removes the newest archive, nor anything protected, and an empty or all-zero policy removes nothing", [archivesArb, optionsArb, fc.constantFrom(...ZONES)], ([archives, options, zone]) => {
    const r = prune(archives, options, tzOf(zone))
    const newest = newestUnprotected(archives)
    if (newest !== undefined) expect(r.removed).not.toContain(newest)
    expect(r.removed.filter((a) => a.protected === true)).toEqual([])
    if (keepsEverything(options)) expect(r.removed).toEqual([])
    const zero = { keep_last: 0, keep_daily: 0 }
    expect(prune(archives, zero, tzOf(zone)).removed).toEqual([])
    expect(prune(archives, {}, tzOf(zone)).removed).toEqual([])
  }, { fastCheck: PROP })

  it.prop("shrinkage is exactly what the old policy keeps and the new one removes", [archivesArb, optionsArb, optionsArb, fc.constantFrom(...ZONES)], ([archives, before, after, zone]) => {
    const tz = tzOf(zone)
    const keptBefore = new Set(prune(archives, before, tz).kept.map((k) => k.archive.id))
    const removedAfter = new Set(prune(archives, after, tz).removed.map((a) => a.id))
    const shrunk = shrinkage(before, after, archives, tz).map((a) => a.id)
    expect(new Set(shrunk)).toEqual(new Set([...removedAfter].filter((id) => keptBefore.has(id))))
    expect(shrinkage(before, before, archives, tz)).toEqual([])
    expect(shrinkage(before, { keep_all: true }, archives, tz)).toEqual([])
  }, { fastCheck: PROP })
})
