/**
 * The calendar-event subset (src/programs/protection/calendar.ts): parsing the documented PVE
 * examples, refusing the rest with a typed error naming the part, and evaluation in Europe/Budapest
 * and America/New_York across DST, leap days and month ends, all at fixed epoch values. Properties
 * check nextRun against a brute-force minute-by-minute reference written from the rules, not from
 * the implementation.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc, Option } from "effect"
import {
  CalendarError,
  type CalendarEvent,
  dueRuns,
  nextRun,
  parseCalendarEvent,
  parseTimeZone,
  type TimeZone
} from "../src/programs/protection/calendar.js"

const tzOf = (s: string): TimeZone => Either.getOrThrow(parseTimeZone(s))
const BUD = tzOf("Europe/Budapest")
const NY = tzOf("America/New_York")
const UTCZ = tzOf("UTC")

const ev = (s: string): CalendarEvent => {
  const r = parseCalendarEvent(s)
  if (Either.isLeft(r)) throw new Error(`${s}: ${r.left.message}`)
  return r.right
}
const errOf = (s: string): CalendarError => {
  const r = parseCalendarEvent(s)
  if (Either.isRight(r)) throw new Error(`${s} parsed`)
  return r.left
}
const ms = (iso: string) => Date.parse(iso)
const iso = (t: number) => new Date(t).toISOString()

/** The next `n` runs after `after`, as ISO strings ("none" once the event stops). */
const runs = (s: string, after: string, tz: TimeZone, n: number): Array<string> => {
  const e = ev(s)
  const out: Array<string> = []
  let t = ms(after)
  for (let i = 0; i < n; i++) {
    const r = nextRun(e, t, tz)
    if (Option.isNone(r)) {
      out.push("none")
      break
    }
    t = r.value
    out.push(iso(t))
  }
  return out
}

const sameFields = (a: CalendarEvent, b: CalendarEvent) => {
  const { source: _a, ...ra } = a
  const { source: _b, ...rb } = b
  expect(ra).toEqual(rb)
}

describe("calendar: parsing", () => {
  it("accepts PVE's documented examples and their alternatives", () => {
    sameFields(ev("mon,tue,wed,thu,fri"), ev("mon..fri"))
    sameFields(ev("sat,sun"), ev("sat..sun"))
    sameFields(ev("fri 12..13:5/20"), ev("fri 12,13:5/20"))
    sameFields(ev("12,14,16,18,20,22:5"), ev("12/2:5"))
    sameFields(ev("*:0/5"), ev("0/1:0/5"))
    sameFields(ev("mon..wed *:30/10"), ev("mon,tue,wed *:30/10"))
    expect(ev("fri 12..13:5/20").minutes).toEqual([5, 25, 45])
    expect(ev("mon..fri 8..17,22:0/15").hours).toEqual([8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 22])
    expect(ev("*-05").days).toEqual([5])
    expect(ev("Sat *-1..7 15:00").days).toEqual([1, 2, 3, 4, 5, 6, 7])
    expect(ev("2015-10-21").years).toEqual([2015])
    expect(ev("*-*-* 02:00").hours).toEqual([2])
    expect(ev("*-*-* 02:00:00").minutes).toEqual([0])
    expect(ev("0/2:00").hours).toEqual([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22])
  })

  it("expands the keywords as PVE defines them", () => {
    sameFields(ev("daily"), ev("*-*-* 00:00"))
    sameFields(ev("hourly"), ev("*:00"))
    sameFields(ev("weekly"), ev("mon 00:00"))
    sameFields(ev("monthly"), ev("*-*-01 00:00"))
    sameFields(ev("yearly"), ev("*-01-01 00:00"))
    sameFields(ev("annually"), ev("yearly"))
    sameFields(ev("quarterly"), ev("*-01,04,07,10-01 00:00"))
    sameFields(ev("semi-annually"), ev("*-01,07-01"))
    sameFields(ev("minutely"), ev("*:*"))
  })

  it("takes a weekday range in Monday-first order and any letter case", () => {
    expect(ev("mon..sun 01:00").weekdays).toBe(0b1111111)
    expect(ev("SAT,Sun 01:00").weekdays).toBe(0b1000001)
    expect(ev("mon..fri").weekdays).toBe(0b0111110)
  })

  it("refuses what is outside the subset, naming the part", () => {
    const cases: ReadonlyArray<readonly [string, CalendarError["reason"], string]> = [
      ["mon..fri 22", "unsupported", "22"],
      ["*/5", "unsupported", "*/5"],
      ["fri..mon 02:00", "unsupported", "fri..mon"],
      ["02:00:30", "unsupported", "02:00:30"],
      ["*/2-01-01", "unsupported", "*/2"],
      ["daily 02:00", "invalid", "daily"],
      ["mon 02:00 Europe/Budapest", "unsupported", "Europe/Budapest"],
      ["25:00", "invalid", "25"],
      ["02:60", "invalid", "60"],
      ["*-13-01", "invalid", "13"],
      ["*-02-00", "invalid", "00"],
      ["5..3:00", "invalid", "5..3"],
      ["0/0:00", "invalid", "0"],
      ["funday 02:00", "invalid", "funday"],
      ["", "empty", ""],
      ["   ", "empty", ""],
      ["02:00;reboot", "bad_character", ";"],
      ["02:00\n", "bad_character", "\n"],
      ["x".repeat(200), "too_long", "x".repeat(40) + "…"]
    ]
    for (const [s, reason, part] of cases) {
      const e = errOf(s)
      expect(e).toBeInstanceOf(CalendarError)
      expect([s, e.reason]).toEqual([s, reason])
      expect([s, e.part]).toEqual([s, part])
      expect(e.message.length).toBeLessThan(200)
    }
  })

  it("refuses an unknown time zone", () => {
    expect(Either.isLeft(parseTimeZone("Mars/Olympus"))).toBe(true)
    expect(Either.isLeft(parseTimeZone("../etc/passwd"))).toBe(true)
    expect(Either.isRight(parseTimeZone("Europe/Budapest"))).toBe(true)
  })
})

describe("calendar: nextRun", () => {
  it("weekdays at a time, over a weekend, in Budapest (CET = UTC+1)", () => {
    // 2026-01-09 is a Friday
    expect(runs("mon..fri 02:00", "2026-01-09T00:00:00Z", BUD, 3)).toEqual([
      "2026-01-09T01:00:00.000Z",
      "2026-01-12T01:00:00.000Z",
      "2026-01-13T01:00:00.000Z"
    ])
    expect(runs("sat,sun 03:15", "2026-01-09T00:00:00Z", BUD, 3)).toEqual([
      "2026-01-10T02:15:00.000Z",
      "2026-01-11T02:15:00.000Z",
      "2026-01-17T02:15:00.000Z"
    ])
  })

  it("is strictly after: a run at exactly `after` is not returned again", () => {
    const t = ms("2026-01-09T01:00:00Z")
    expect(Option.getOrThrow(nextRun(ev("02:00"), t, BUD))).toBe(ms("2026-01-10T01:00:00Z"))
    expect(Option.getOrThrow(nextRun(ev("02:00"), t - 1, BUD))).toBe(t)
  })

  it("Budapest spring forward (2026-03-29, 02:00 CET → 03:00 CEST): a wall time in the gap runs once at the gap's end", () => {
    expect(runs("02:30", "2026-03-28T12:00:00Z", BUD, 2)).toEqual(["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"])
    // 02:00, 02:15, 02:30, 02:45 and 03:00 all land on 01:00Z: one run, then 03:15 CEST
    expect(runs("*:0/15", "2026-03-29T00:40:00Z", BUD, 3)).toEqual([
      "2026-03-29T00:45:00.000Z",
      "2026-03-29T01:00:00.000Z",
      "2026-03-29T01:15:00.000Z"
    ])
  })

  it("Budapest fall back (2026-10-25, 03:00 CEST → 02:00 CET): a repeated wall time runs at its first occurrence only", () => {
    expect(runs("02:30", "2026-10-24T12:00:00Z", BUD, 2)).toEqual(["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"])
    expect(runs("hourly", "2026-10-24T22:30:00Z", BUD, 3)).toEqual([
      "2026-10-24T23:00:00.000Z", // 01:00 CEST
      "2026-10-25T00:00:00.000Z", // 02:00 CEST; 02:00 CET (01:00Z) is the same wall time: skipped
      "2026-10-25T02:00:00.000Z" // 03:00 CET
    ])
    // asked from inside the repeated hour (02:10 CET), 02:30 has already run today
    expect(runs("02:30", "2026-10-25T01:10:00Z", BUD, 1)).toEqual(["2026-10-26T01:30:00.000Z"])
  })

  it("New York spring forward (2026-03-08) and fall back (2026-11-01)", () => {
    // 02:00 EST does not exist on 2026-03-08: it runs at 03:00 EDT (07:00Z), then 02:00 EDT
    expect(runs("02:00", "2026-03-07T12:00:00Z", NY, 2)).toEqual(["2026-03-08T07:00:00.000Z", "2026-03-09T06:00:00.000Z"])
    expect(runs("01:30", "2026-10-31T12:00:00Z", NY, 2)).toEqual(["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z"])
    expect(runs("hourly", "2026-11-01T03:30:00Z", NY, 3)).toEqual([
      "2026-11-01T04:00:00.000Z",
      "2026-11-01T05:00:00.000Z",
      "2026-11-01T07:00:00.000Z"
    ])
  })

  it("leap days", () => {
    expect(runs("*-02-29 02:00", "2025-01-01T00:00:00Z", BUD, 2)).toEqual(["2028-02-29T01:00:00.000Z", "2032-02-29T01:00:00.000Z"])
    // the next Monday 29 February
    expect(runs("mon *-02-29", "2026-01-01T00:00:00Z", UTCZ, 1)).toEqual(["2044-02-29T00:00:00.000Z"])
    expect(runs("*-02-28..29 12:00", "2027-02-27T00:00:00Z", UTCZ, 3)).toEqual([
      "2027-02-28T12:00:00.000Z",
      "2028-02-28T12:00:00.000Z",
      "2028-02-29T12:00:00.000Z"
    ])
  })

  it("month ends and month starts", () => {
    expect(runs("*-*-31 03:00", "2026-04-01T00:00:00Z", BUD, 3)).toEqual([
      "2026-05-31T01:00:00.000Z",
      "2026-07-31T01:00:00.000Z",
      "2026-08-31T01:00:00.000Z"
    ])
    expect(runs("monthly", "2026-01-31T12:00:00Z", UTCZ, 2)).toEqual(["2026-02-01T00:00:00.000Z", "2026-03-01T00:00:00.000Z"])
    expect(runs("Sat *-1..7 15:00", "2026-01-01T00:00:00Z", UTCZ, 3)).toEqual([
      "2026-01-03T15:00:00.000Z",
      "2026-02-07T15:00:00.000Z",
      "2026-03-07T15:00:00.000Z"
    ])
    expect(runs("yearly", "2026-12-31T23:30:00Z", UTCZ, 1)).toEqual(["2027-01-01T00:00:00.000Z"])
  })

  it("an event with no future instant is None", () => {
    expect(runs("2015-10-21", "2026-01-01T00:00:00Z", BUD, 1)).toEqual(["none"])
    expect(runs("*-02-30", "2026-01-01T00:00:00Z", BUD, 1)).toEqual(["none"])
    expect(runs("2027-01-01 00:00", "2026-01-01T00:00:00Z", UTCZ, 2)).toEqual(["2027-01-01T00:00:00.000Z", "none"])
  })

  it("a trailing UTC evaluates in UTC whatever the host's zone", () => {
    expect(runs("03:15 UTC", "2026-07-01T00:00:00Z", BUD, 1)).toEqual(["2026-07-01T03:15:00.000Z"])
    expect(runs("03:15", "2026-07-01T00:00:00Z", BUD, 1)).toEqual(["2026-07-01T01:15:00.000Z"])
  })
})

describe("calendar: dueRuns", () => {
  const hourly = ev("hourly")

  it("never run: due now", () => {
    const d = dueRuns(hourly, undefined, ms("2026-01-01T00:30:00Z"), UTCZ)
    expect(d).toMatchObject({ due: true, reason: "never_run", nextAt: ms("2026-01-01T01:00:00Z") })
  })

  it("a week of downtime is one run, not 168", () => {
    const now = ms("2026-01-08T00:30:00Z")
    const d = dueRuns(hourly, ms("2026-01-01T00:00:00Z"), now, UTCZ)
    expect(d).toMatchObject({ due: true, reason: "slot_passed", slotAt: ms("2026-01-01T01:00:00Z"), nextAt: ms("2026-01-08T01:00:00Z") })
    // the run is recorded at now: nothing more is due until the next slot
    expect(dueRuns(hourly, now, now, UTCZ)).toMatchObject({ due: false, reason: "not_yet" })
    expect(dueRuns(hourly, now, now + 29 * 60_000, UTCZ).due).toBe(false)
    expect(dueRuns(hourly, now, now + 30 * 60_000, UTCZ).due).toBe(true)
  })

  it("a last run dated after now (the clock went back) is not due until a slot after it", () => {
    const d = dueRuns(hourly, ms("2026-01-02T00:00:00Z"), ms("2026-01-01T00:00:00Z"), UTCZ)
    expect(d).toMatchObject({ due: false, reason: "last_run_in_future", nextAt: ms("2026-01-02T01:00:00Z") })
  })

  it("an event that never fires again is never due", () => {
    expect(dueRuns(ev("2015-10-21"), ms("2015-10-21T00:00:00Z"), ms("2026-01-01T00:00:00Z"), UTCZ)).toMatchObject({ due: false, reason: "never" })
  })

  it("a poller every 5 minutes over two weeks across the Budapest spring change: mon..fri 02:30, the slots missed while down collapse into one catch-up run", () => {
    const e = ev("mon..fri 02:30")
    const start = ms("2026-03-21T00:00:00Z") // Saturday
    const end = start + 14 * 86_400_000
    const down = { from: ms("2026-03-24T12:00:00Z"), to: ms("2026-03-27T12:00:00Z") } // Tue noon .. Fri noon
    let last: number | undefined = start
    const ran: Array<number> = []
    for (let now = start; now < end; now += 5 * 60_000) {
      if (now >= down.from && now < down.to) continue
      if (dueRuns(e, last, now, BUD).due) {
        ran.push(now)
        last = now
      }
    }
    // Mon 23, Tue 24 ran; Wed/Thu/Fri 02:30 slots missed → one catch-up at Fri noon; then Mon 30..Fri 3
    expect(ran.map(iso)).toEqual([
      "2026-03-23T01:30:00.000Z",
      "2026-03-24T01:30:00.000Z",
      "2026-03-27T12:00:00.000Z",
      "2026-03-30T00:30:00.000Z",
      "2026-03-31T00:30:00.000Z",
      "2026-04-01T00:30:00.000Z",
      "2026-04-02T00:30:00.000Z",
      "2026-04-03T00:30:00.000Z"
    ])
  })
})

// ---------------------------------------------------------------------------------------------
// Properties against a brute-force reference

const PROP = {
  numRuns: Number(process.env["PROP_RUNS"] ?? 60),
  ...(process.env["PROP_SEED"] === undefined ? {} : { seed: Number(process.env["PROP_SEED"]) })
}

/** An event built from explicit sets, rendered to the syntax; the reference matches on the sets. */
interface Spec {
  readonly weekdays: ReadonlyArray<number> // 0 = Sunday
  readonly days: ReadonlyArray<number> | null
  readonly hours: ReadonlyArray<number>
  readonly minutes: ReadonlyArray<number>
}

const NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

const render = (s: Spec): string => {
  const wd = s.weekdays.length === 7 ? "" : `${s.weekdays.map((d) => NAMES[d]).join(",")} `
  const date = s.days === null ? "" : `*-*-${s.days.join(",")} `
  return `${wd}${date}${s.hours.join(",")}:${s.minutes.join(",")}`
}

const sortedSubset = (max: number, min: number, maxLen: number) =>
  fc.uniqueArray(fc.integer({ min, max }), { minLength: 1, maxLength: maxLen }).map((a) => [...a].sort((x, y) => x - y))

const specArb: fc.Arbitrary<Spec> = fc.record({
  weekdays: fc.oneof(fc.constant([0, 1, 2, 3, 4, 5, 6]), sortedSubset(6, 0, 7)),
  days: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: sortedSubset(31, 1, 10) }),
  // hours biased to the DST-changing ones (0..3)
  hours: fc.oneof(sortedSubset(3, 0, 4), sortedSubset(23, 0, 6)),
  minutes: fc.oneof(fc.constant([0]), fc.constant([0, 30]), sortedSubset(59, 0, 4))
})

// Independent wall clock: its own formatter, parsed from a different format.
const refFormatters = new Map<string, Intl.DateTimeFormat>()
const refWall = (tz: string, t: number) => {
  let f = refFormatters.get(tz)
  if (f === undefined) {
    f = new Intl.DateTimeFormat("en-GB", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23", weekday: "short" })
    refFormatters.set(tz, f)
  }
  const p = Object.fromEntries(f.formatToParts(t).map((x) => [x.type, x.value]))
  const key = Date.UTC(Number(p["year"]), Number(p["month"]) - 1, Number(p["day"]), Number(p["hour"]), Number(p["minute"]))
  return { key, weekday: NAMES.indexOf(String(p["weekday"]).toLowerCase().slice(0, 3)) }
}
const keyMatches = (s: Spec, key: number) => {
  const d = new Date(key)
  return s.weekdays.includes(d.getUTCDay()) && (s.days === null || s.days.includes(d.getUTCDate())) && s.hours.includes(d.getUTCHours()) &&
    s.minutes.includes(d.getUTCMinutes())
}

/**
 * Run instants by the rules, minute by minute: t runs if its wall time matches and was not seen
 * before (first occurrence), or if the wall clock jumped over a matching wall time to reach t.
 */
const referenceRuns = (s: Spec, tz: string, from: number, to: number): Array<number> => {
  const out: Array<number> = []
  let t = Math.floor((from - 3 * 3_600_000) / 60_000) * 60_000
  let maxSeen = -Infinity
  let prevKey = refWall(tz, t - 60_000).key
  for (; t <= to; t += 60_000) {
    const w = refWall(tz, t)
    let run = keyMatches(s, w.key) && w.key > maxSeen
    if (!run && w.key - prevKey > 60_000) {
      for (let k = prevKey + 60_000; k < w.key && !run; k += 60_000) if (k > maxSeen && keyMatches(s, k)) run = true
    }
    if (run && t > from) out.push(t)
    maxSeen = Math.max(maxSeen, w.key)
    prevKey = w.key
  }
  return out
}

const TRANSITIONS = [
  ["Europe/Budapest", "2025-03-30T01:00:00Z"],
  ["Europe/Budapest", "2025-10-26T01:00:00Z"],
  ["Europe/Budapest", "2026-03-29T01:00:00Z"],
  ["Europe/Budapest", "2026-10-25T01:00:00Z"],
  ["America/New_York", "2026-03-08T07:00:00Z"],
  ["America/New_York", "2026-11-01T06:00:00Z"],
  ["America/New_York", "2028-03-12T07:00:00Z"],
  ["UTC", "2028-02-29T00:00:00Z"]
] as const

const pointArb = fc.record({
  at: fc.constantFrom(...TRANSITIONS),
  // up to two days either side of the transition, any millisecond
  offset: fc.integer({ min: -2 * 86_400_000, max: 2 * 86_400_000 })
})

describe("calendar: properties", () => {
  const WINDOW = 3 * 86_400_000

  it.prop("nextRun is the first reference run after x (or none within the window)", [specArb, pointArb], ([spec, p]) => {
    const tz = tzOf(p.at[0])
    const x = ms(p.at[1]) + p.offset
    const e = ev(render(spec))
    const next = nextRun(e, x, tz)
    const ref = referenceRuns(spec, p.at[0], x, x + WINDOW)
    if (ref.length > 0) {
      expect(Option.getOrNull(next)).toBe(ref[0])
    } else {
      expect(Option.isNone(next) || next.value > x + WINDOW).toBe(true)
    }
  }, { fastCheck: PROP })

  it.prop("successive runs are strictly increasing and each is a reference run (no instant twice)", [specArb, pointArb], ([spec, p]) => {
    const tz = tzOf(p.at[0])
    const x = ms(p.at[1]) + p.offset
    const e = ev(render(spec))
    const ref = referenceRuns(spec, p.at[0], x, x + 2 * 86_400_000)
    const got: Array<number> = []
    let t = x
    for (;;) {
      const r = nextRun(e, t, tz)
      if (Option.isNone(r) || r.value > x + 2 * 86_400_000) break
      expect(r.value).toBeGreaterThan(t)
      got.push(r.value)
      t = r.value
    }
    expect(got).toEqual(ref)
  }, { fastCheck: { ...PROP, numRuns: Math.max(1, Math.floor(PROP.numRuns / 3)) } })

  it.prop("a run recorded at now is never due again at now", [specArb, pointArb], ([spec, p]) => {
    const now = ms(p.at[1]) + p.offset
    expect(dueRuns(ev(render(spec)), now, now, tzOf(p.at[0])).due).toBe(false)
  }, { fastCheck: PROP })

  it.prop("due iff a reference run lies in (last, now]", [specArb, pointArb, fc.integer({ min: 0, max: 86_400_000 })], ([spec, p, back]) => {
    const now = ms(p.at[1]) + p.offset
    const last = now - back
    const due = dueRuns(ev(render(spec)), last, now, tzOf(p.at[0])).due
    expect(due).toBe(referenceRuns(spec, p.at[0], last, now).length > 0)
  }, { fastCheck: PROP })
})
