/**
 * The update window (issue 14): the hub's desired state may say when a self-update job may run,
 * as wall-clock times in `protection.time_zone`. Pure: the instant comes in as epoch ms (the
 * daemon's Clock, TestClock in tests).
 */
import type { UpdateWindow } from "../../schema/desired.js"
import { type TimeZone, wallAt } from "../protection/calendar.js"

const minutesOf = (hhmm: string): number => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5))

/**
 * Whether `nowMs` falls inside the window: [start, end) on the zone's wall clock; an `end` before
 * `start` crosses midnight (22:00-04:00 holds 23:30 and 03:59, not 04:00). No window: always.
 */
export const inUpdateWindow = (window: UpdateWindow | undefined, tz: TimeZone, nowMs: number): boolean => {
  if (window === undefined) return true
  const w = wallAt(tz, nowMs)
  const now = w.hour * 60 + w.minute
  const start = minutesOf(window.start)
  const end = minutesOf(window.end)
  return start < end ? now >= start && now < end : now >= start || now < end
}
