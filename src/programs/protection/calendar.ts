/**
 * Proxmox calendar events (the schedule syntax of PVE backup jobs, itself a subset of
 * systemd.time), parsed into a small value and evaluated in an IANA time zone. Pure: time comes in
 * as epoch milliseconds, so the daemon drives it from Effect's Clock and tests from fixed values.
 *
 * The accepted subset (anything else is a `CalendarError` naming the part):
 *   [WEEKDAYS] [[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:00]] [UTC]
 *   weekdays  mon..sun (any case), lists and ranges: `mon..fri`, `sat,sun`, `mon,wed..fri`
 *   values    `*`, `n`, `a..b`, `n/step`, `a..b/step`, `*∕step` and comma lists of these
 *   keywords  minutely hourly daily weekly monthly yearly annually quarterly semiannually
 *             semi-annually (the whole schedule)
 * Refused on purpose: a time without `:` (PVE reads `mon..fri 22` as minute 22 of every hour,
 * while its own prose calls it 22:00, so the agent makes the operator write `22:00` or `*:22`),
 * seconds other than `00`, wrap-around weekday ranges (`fri..mon`), `*∕step` for years, `~` and
 * time zone names.
 *
 * DST: a wall time that does not exist (the spring-forward gap) runs at the first instant after
 * the gap, once; a wall time that occurs twice (fall back) runs at its first occurrence only.
 */
import { statSync } from "node:fs"
import { Data, Either, Option } from "effect"

export class CalendarError extends Data.TaggedError("CalendarError")<{
  readonly reason: "empty" | "too_long" | "bad_character" | "unsupported" | "invalid"
  /** The offending part of the schedule, clipped. */
  readonly part: string
  readonly message: string
}> {}

/** A parsed event: every field expanded to its sorted allowed values; `null` is "any". */
export interface CalendarEvent {
  readonly _tag: "CalendarEvent"
  readonly source: string
  /** Bit d set: weekday d allowed (0 = Sunday, as Date.getUTCDay). */
  readonly weekdays: number
  readonly years: ReadonlyArray<number> | null
  readonly months: ReadonlyArray<number> | null
  readonly days: ReadonlyArray<number> | null
  readonly hours: ReadonlyArray<number>
  readonly minutes: ReadonlyArray<number>
  /** A trailing `UTC`: evaluated in UTC whatever the host's zone. */
  readonly utc: boolean
}

const ALL_WEEKDAYS = 0b1111111
const MAX_LENGTH = 128
const MAX_YEAR = 2199 // systemd's and proxmox-time's upper bound

const clipPart = (s: string) => (s.length > 40 ? `${s.slice(0, 40)}…` : s)
const fail = (reason: CalendarError["reason"], part: string, message: string) =>
  Either.left(new CalendarError({ reason, part: clipPart(part), message }))

const range = (from: number, to: number): Array<number> => {
  const out: Array<number> = []
  for (let v = from; v <= to; v++) out.push(v)
  return out
}

const KEYWORDS: Record<string, { readonly weekdays?: number; readonly months?: Array<number>; readonly days?: Array<number>; readonly hours?: Array<number>; readonly minutes?: Array<number> }> = {
  minutely: { hours: range(0, 23), minutes: range(0, 59) },
  hourly: { hours: range(0, 23), minutes: [0] },
  daily: { hours: [0], minutes: [0] },
  weekly: { weekdays: 1 << 1, hours: [0], minutes: [0] },
  monthly: { days: [1], hours: [0], minutes: [0] },
  yearly: { months: [1], days: [1], hours: [0], minutes: [0] },
  annually: { months: [1], days: [1], hours: [0], minutes: [0] },
  quarterly: { months: [1, 4, 7, 10], days: [1], hours: [0], minutes: [0] },
  semiannually: { months: [1, 7], days: [1], hours: [0], minutes: [0] },
  "semi-annually": { months: [1, 7], days: [1], hours: [0], minutes: [0] }
}

const WEEKDAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

interface Field {
  readonly name: string
  readonly min: number
  readonly max: number
  /** `*∕step` starts here (proxmox-time: 0 for times, 1 for month and day); null: not allowed. */
  readonly starStart: number | null
}

const HOUR: Field = { name: "hour", min: 0, max: 23, starStart: 0 }
const MINUTE: Field = { name: "minute", min: 0, max: 59, starStart: 0 }
const MONTH: Field = { name: "month", min: 1, max: 12, starStart: 1 }
const DAY: Field = { name: "day", min: 1, max: 31, starStart: 1 }
const YEAR: Field = { name: "year", min: 1970, max: MAX_YEAR, starStart: null }

type Parsed<A> = Either.Either<A, CalendarError>

const number = (s: string, f: Field): Parsed<number> => {
  if (!/^[0-9]{1,4}$/.test(s)) return fail("invalid", s, `'${clipPart(s)}' is not a ${f.name} value`)
  const n = Number(s)
  if (n < f.min || n > f.max) return fail("invalid", s, `${f.name} ${n} is outside ${f.min}..${f.max}`)
  return Either.right(n)
}

/** One field's list (`*`, `*∕r` or comma items) → sorted unique values; `null` for a bare `*`. */
const valueList = (s: string, f: Field): Parsed<Array<number> | null> => {
  if (s === "*") return Either.right(null)
  if (s.startsWith("*/")) {
    if (f.starStart === null) return fail("unsupported", s, `'*/step' is not supported for the ${f.name}`)
    return Either.map(step(s.slice(2), f), (r) => stepped(f.starStart ?? f.min, f.max, r))
  }
  const out = new Set<number>()
  for (const item of s.split(",")) {
    if (item === "") return fail("invalid", s, `empty item in the ${f.name} list '${clipPart(s)}'`)
    if (item.includes("*")) return fail("unsupported", item, `'*' inside a ${f.name} list is not supported`)
    const [span, stepText, extra] = item.split("/")
    if (extra !== undefined || span === undefined) return fail("invalid", item, `'${clipPart(item)}' has more than one '/'`)
    const bounds = span.split("..")
    if (bounds.length > 2) return fail("invalid", item, `'${clipPart(item)}' is not a ${f.name} range`)
    const lo = number(bounds[0] ?? "", f)
    if (Either.isLeft(lo)) return Either.left(lo.left)
    let hi = lo.right
    if (bounds.length === 2) {
      const h = number(bounds[1] ?? "", f)
      if (Either.isLeft(h)) return Either.left(h.left)
      if (h.right < lo.right) return fail("invalid", item, `${f.name} range '${clipPart(item)}' ends before it starts`)
      hi = h.right
    }
    if (stepText === undefined) {
      for (const v of range(lo.right, hi)) out.add(v)
    } else {
      const r = step(stepText, f)
      if (Either.isLeft(r)) return Either.left(r.left)
      // `a/r` without an end runs to the field's maximum, as in proxmox-time
      for (const v of stepped(lo.right, bounds.length === 2 ? hi : f.max, r.right)) out.add(v)
    }
  }
  return Either.right([...out].sort((a, b) => a - b))
}

const step = (s: string, f: Field): Parsed<number> => {
  if (!/^[0-9]{1,4}$/.test(s) || Number(s) === 0) return fail("invalid", s, `a ${f.name} step is a positive integer`)
  return Either.right(Number(s))
}

const stepped = (from: number, to: number, by: number): Array<number> => {
  const out: Array<number> = []
  for (let v = from; v <= to; v += by) out.push(v)
  return out
}

const weekdayList = (s: string): Parsed<number> => {
  let mask = 0
  const day = (name: string): Parsed<number> => {
    const i = WEEKDAY_NAMES.indexOf(name.toLowerCase())
    return i < 0 ? fail("invalid", name, `'${clipPart(name)}' is not a weekday (mon, tue, wed, thu, fri, sat, sun)`) : Either.right(i)
  }
  for (const item of s.split(",")) {
    const bounds = item.split("..")
    if (bounds.length > 2 || item === "") return fail("invalid", item, `'${clipPart(item)}' is not a weekday or weekday range`)
    const a = day(bounds[0] ?? "")
    if (Either.isLeft(a)) return Either.left(a.left)
    if (bounds.length === 1) {
      mask |= 1 << a.right
      continue
    }
    const b = day(bounds[1] ?? "")
    if (Either.isLeft(b)) return Either.left(b.left)
    // Monday-first order: mon..sun is the whole week, sun..mon wraps
    const ord = (d: number) => (d + 6) % 7
    if (ord(b.right) < ord(a.right)) return fail("unsupported", item, `wrap-around weekday range '${clipPart(item)}' is not supported: split it (e.g. fri..sun,mon)`)
    for (let o = ord(a.right); o <= ord(b.right); o++) mask |= 1 << ((o + 1) % 7)
  }
  return Either.right(mask)
}

interface DatePart {
  readonly years: Array<number> | null
  readonly months: Array<number> | null
  readonly days: Array<number> | null
}

const datePart = (s: string): Parsed<DatePart> => {
  const parts = s.split("-")
  if (parts.length !== 2 && parts.length !== 3) return fail("invalid", s, `'${clipPart(s)}' is not a date ([YEAR-]MONTH-DAY)`)
  const [y, m, d] = parts.length === 3 ? parts : [undefined, parts[0], parts[1]]
  const years = y === undefined ? Either.right(null) : valueList(y, YEAR)
  if (Either.isLeft(years)) return Either.left(years.left)
  const months = valueList(m ?? "", MONTH)
  if (Either.isLeft(months)) return Either.left(months.left)
  const days = valueList(d ?? "", DAY)
  if (Either.isLeft(days)) return Either.left(days.left)
  return Either.right({ years: years.right, months: months.right, days: days.right })
}

interface TimePart {
  readonly hours: Array<number>
  readonly minutes: Array<number>
}

const timePart = (s: string): Parsed<TimePart> => {
  const parts = s.split(":")
  if (parts.length < 2) {
    return fail("unsupported", s, `a time without ':' ('${clipPart(s)}') is not supported: PVE reads it as minutes of every hour; write HH:MM (e.g. 22:00 or *:${clipPart(s)})`)
  }
  if (parts.length > 3) return fail("invalid", s, `'${clipPart(s)}' is not a time (HH:MM[:SS])`)
  if (parts.length === 3 && !/^0{1,2}$/.test(parts[2] ?? "")) {
    return fail("unsupported", s, `seconds other than 00 are not supported ('${clipPart(s)}')`)
  }
  const hours = valueList(parts[0] ?? "", HOUR)
  if (Either.isLeft(hours)) return Either.left(hours.left)
  const minutes = valueList(parts[1] ?? "", MINUTE)
  if (Either.isLeft(minutes)) return Either.left(minutes.left)
  return Either.right({ hours: hours.right ?? range(0, 23), minutes: minutes.right ?? range(0, 59) })
}

/** Parses a schedule. Whitespace between parts may repeat; the order is weekdays, date, time. */
export const parseCalendarEvent = (input: string): Either.Either<CalendarEvent, CalendarError> => {
  if (input.length > MAX_LENGTH) return fail("too_long", input, `a schedule is at most ${MAX_LENGTH} characters`)
  const bad = /[^A-Za-z0-9*,./: -]/.exec(input)
  if (bad !== null) {
    return fail("bad_character", bad[0], `a schedule has only letters, digits, spaces and * , . / : - (found ${JSON.stringify(bad[0])})`)
  }
  let tokens = input.trim().split(/ +/).filter((t) => t !== "")
  if (tokens.length === 0) return fail("empty", "", "a schedule is empty")
  let utc = false
  if (tokens.length > 1 && tokens[tokens.length - 1] === "UTC") {
    utc = true
    tokens = tokens.slice(0, -1)
  }
  const base = { _tag: "CalendarEvent" as const, source: input, utc }
  if (tokens.length === 1) {
    const kw = KEYWORDS[(tokens[0] ?? "").toLowerCase()]
    if (kw !== undefined) {
      return Either.right({
        ...base,
        weekdays: kw.weekdays ?? ALL_WEEKDAYS,
        years: null,
        months: kw.months ?? null,
        days: kw.days ?? null,
        hours: kw.hours ?? [0],
        minutes: kw.minutes ?? [0]
      })
    }
  }
  let weekdays = ALL_WEEKDAYS
  let date: DatePart = { years: null, months: null, days: null }
  let time: TimePart = { hours: [0], minutes: [0] }
  let i = 0
  const at = (k: number) => tokens[k] ?? ""
  if (/^[A-Za-z]/.test(at(i))) {
    const w = weekdayList(at(i))
    if (Either.isLeft(w)) return Either.left(w.left)
    weekdays = w.right
    i++
  }
  if (i < tokens.length && at(i).includes("-")) {
    const d = datePart(at(i))
    if (Either.isLeft(d)) return Either.left(d.left)
    date = d.right
    i++
  }
  if (i < tokens.length && !/^[A-Za-z]/.test(at(i)) && !at(i).includes("-")) {
    const t = timePart(at(i))
    if (Either.isLeft(t)) return Either.left(t.left)
    time = t.right
    i++
  }
  if (i < tokens.length) {
    const rest = tokens.slice(i).join(" ")
    return fail(/^[A-Za-z]/.test(rest) ? "unsupported" : "invalid", rest, `unexpected '${clipPart(rest)}': a schedule is [WEEKDAYS] [[YEAR-]MONTH-DAY] [HH:MM] [UTC]`)
  }
  if (weekdays === 0) return fail("invalid", input, "no weekday selected")
  return Either.right({ ...base, weekdays, ...date, ...time })
}

// ---------------------------------------------------------------------------------------------
// Time zones and wall clocks

/** An IANA time zone name the host's tz database (or, without one, this runtime's ICU) knows (`parseTimeZone`). */
export type TimeZone = string & { readonly TimeZone: unique symbol }

const formatters = new Map<string, Intl.DateTimeFormat>()

const formatterFor = (tz: string): Intl.DateTimeFormat => {
  let f = formatters.get(tz)
  if (f === undefined) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      calendar: "gregory",
      numberingSystem: "latn",
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric"
    })
    formatters.set(tz, f)
  }
  return f
}

/** Where the host's tz database keeps one file per zone (Debian's tzdata). */
const ZONEINFO = "/usr/share/zoneinfo"

/**
 * Whether the host's tz database has this zone: a file lookup, no ICU. ICU's zone data is ~6 MB of
 * the node binary that stays paged in once touched, so the daemon validates its configured zone
 * this way and pages ICU in only when a schedule is first evaluated (issue 9: idle RSS). Undefined
 * when the host has no tz database (then ICU decides).
 */
const hostHasZone = (s: string): boolean | undefined => {
  if (s === "UTC") return true
  try {
    if (!statSync(ZONEINFO).isDirectory()) return undefined
  } catch {
    return undefined
  }
  if (s.split("/").some((part) => part === "." || part === ".." || part === "")) return false
  try {
    return statSync(`${ZONEINFO}/${s}`).isFile()
  } catch {
    return false
  }
}

export const parseTimeZone = (s: string): Either.Either<TimeZone, CalendarError> => {
  if (s.length === 0 || s.length > 64 || !/^[A-Za-z0-9_+\-/]+$/.test(s)) {
    return fail("invalid", s, "a time zone is an IANA name such as Europe/Budapest")
  }
  const known = hostHasZone(s)
  if (known !== undefined) return known ? Either.right(s as TimeZone) : fail("invalid", s, `unknown time zone '${clipPart(s)}'`)
  try {
    formatterFor(s)
    return Either.right(s as TimeZone)
  } catch {
    // Intl throws RangeError for a zone its ICU does not know
    return fail("invalid", s, `unknown time zone '${clipPart(s)}'`)
  }
}

export const UTC = "UTC" as TimeZone

/** Local calendar fields, month 1..12. */
export interface Wall {
  readonly year: number
  readonly month: number
  readonly day: number
  readonly hour: number
  readonly minute: number
  readonly second: number
}

/** The wall clock in `tz` at an instant (to the second). */
export const wallAt = (tz: TimeZone, epochMs: number): Wall => {
  const fields = { year: 0, month: 0, day: 0, hour: 0, minute: 0, second: 0 }
  for (const p of formatterFor(tz).formatToParts(epochMs)) {
    if (p.type in fields) fields[p.type as keyof typeof fields] = Number(p.value)
  }
  return fields
}

/** A wall time as if it were UTC: a monotone key for comparing wall times. */
export const wallKey = (w: Wall): number => Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second)

const floorSecond = (ms: number) => Math.floor(ms / 1000) * 1000

/** The zone's offset (wall minus UTC, ms) at an instant. */
const offsetAt = (tz: TimeZone, epochMs: number): number => wallKey(wallAt(tz, epochMs)) - floorSecond(epochMs)

const DAY_MS = 86_400_000

/**
 * The instant a wall time denotes in `tz`: its first occurrence, or for a wall time inside a
 * spring-forward gap the first instant after the gap.
 */
export const instantOf = (tz: TimeZone, key: number): { readonly kind: "exact" | "gap"; readonly epochMs: number } => {
  const offsets = [...new Set([offsetAt(tz, key - DAY_MS), offsetAt(tz, key), offsetAt(tz, key + DAY_MS)])]
  const exact = offsets.map((o) => key - o).filter((t) => wallKey(wallAt(tz, t)) === key).sort((a, b) => a - b)
  if (exact.length > 0) return { kind: "exact", epochMs: exact[0] ?? key }
  // In the gap: the transition lies between the candidates; find the first second whose wall is past `key`.
  let lo = key - Math.max(...offsets)
  let hi = key - Math.min(...offsets)
  if (wallKey(wallAt(tz, hi)) <= key) return { kind: "gap", epochMs: hi }
  while (hi - lo > 1000) {
    const mid = floorSecond(lo + (hi - lo) / 2)
    if (mid <= lo || mid >= hi) break
    if (wallKey(wallAt(tz, mid)) > key) hi = mid
    else lo = mid
  }
  return { kind: "gap", epochMs: hi }
}

// ---------------------------------------------------------------------------------------------
// Matching and evaluation

/** Days since 1970-01-01 of a civil date. */
const civilDay = (y: number, m: number, d: number) => Math.floor(Date.UTC(y, m - 1, d) / DAY_MS)
const daysInMonth = (y: number, m: number) => new Date(Date.UTC(y, m, 0)).getUTCDate()

const has = (list: ReadonlyArray<number> | null, v: number) => list === null || list.includes(v)

/** Whether a local date matches the event's weekday and date fields. */
export const dateMatches = (e: CalendarEvent, y: number, m: number, d: number): boolean =>
  has(e.years, y) && has(e.months, m) && has(e.days, d) && (e.weekdays & (1 << ((civilDay(y, m, d) % 7 + 11) % 7))) !== 0

/** Whether a wall time is one the event names (seconds must be 0). */
export const wallMatches = (e: CalendarEvent, w: Wall): boolean =>
  w.second === 0 && dateMatches(e, w.year, w.month, w.day) && e.hours.includes(w.hour) && e.minutes.includes(w.minute)

const HORIZON_YEARS = 400 // one Gregorian cycle: every weekday/date combination recurs within it

/**
 * The first run strictly after `afterEpochMs`, or None if the event never fires again (a year
 * list in the past, or a date that does not exist such as `*-02-30`).
 */
export const nextRun = (event: CalendarEvent, afterEpochMs: number, timeZone: TimeZone): Option.Option<number> => {
  const tz = event.utc ? UTC : timeZone
  // Wall times up to `spread` before `after`'s wall time can still map after it (offsets differ
  // around a transition); earlier ones cannot, so the search starts there.
  let lowOff = Infinity
  let highOff = -Infinity
  for (let k = -4; k <= 4; k++) {
    const o = offsetAt(tz, afterEpochMs + k * DAY_MS / 2)
    lowOff = Math.min(lowOff, o)
    highOff = Math.max(highOff, o)
  }
  const threshold = afterEpochMs + offsetAt(tz, afterEpochMs) - (highOff - lowOff) - 1000
  const start = new Date(threshold)
  let y = start.getUTCFullYear()
  let m = start.getUTCMonth() + 1
  let d = start.getUTCDate()
  const lastYear = Math.min(y + HORIZON_YEARS, MAX_YEAR)
  const nextYear = () => {
    y++
    m = 1
    d = 1
  }
  const nextMonth = () => {
    if (m === 12) nextYear()
    else {
      m++
      d = 1
    }
  }
  while (y <= lastYear) {
    if (!has(event.years, y)) {
      const later = event.years?.find((v) => v > y)
      if (later === undefined) return Option.none()
      y = later - 1
      nextYear()
      continue
    }
    if (!has(event.months, m)) {
      nextMonth()
      continue
    }
    if (d > daysInMonth(y, m)) {
      nextMonth()
      continue
    }
    if (dateMatches(event, y, m, d)) {
      const dayKey = Date.UTC(y, m - 1, d)
      for (const h of event.hours) {
        for (const min of event.minutes) {
          const key = dayKey + (h * 60 + min) * 60_000
          if (key < threshold) continue
          const t = instantOf(tz, key).epochMs
          if (t > afterEpochMs) return Option.some(t)
        }
      }
    }
    d++
  }
  return Option.none()
}

export interface DueRuns {
  readonly due: boolean
  /**
   * never_run: no run recorded, run now; slot_passed: a scheduled instant passed since the last
   * run (however many did, this is one run); not_yet: the next slot is ahead; last_run_in_future:
   * the recorded run is later than now (the clock went back), nothing runs until a slot after it;
   * never: the event has no future instant.
   */
  readonly reason: "never_run" | "slot_passed" | "not_yet" | "last_run_in_future" | "never"
  /** The earliest scheduled instant not yet served (the missed one when due). */
  readonly slotAt: number | null
  /** The next instant after now. */
  readonly nextAt: number | null
}

/**
 * Is a run due at `now`? Missed slots after downtime collapse into one run: once the caller records
 * a run at `now`, the next call is `not_yet` until the next slot.
 */
export const dueRuns = (event: CalendarEvent, lastRunEpochMs: number | undefined, nowEpochMs: number, tz: TimeZone): DueRuns => {
  const nextAt = Option.getOrNull(nextRun(event, nowEpochMs, tz))
  if (lastRunEpochMs === undefined) return { due: true, reason: "never_run", slotAt: null, nextAt }
  const slot = Option.getOrNull(nextRun(event, lastRunEpochMs, tz))
  if (lastRunEpochMs > nowEpochMs) return { due: false, reason: "last_run_in_future", slotAt: slot, nextAt: slot }
  if (slot === null) return { due: false, reason: "never", slotAt: null, nextAt: null }
  return slot <= nowEpochMs
    ? { due: true, reason: "slot_passed", slotAt: slot, nextAt }
    : { due: false, reason: "not_yet", slotAt: slot, nextAt: slot }
}
