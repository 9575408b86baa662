import { Schedule } from "effect"

/** A lock held by a task that is still finishing is transient: retry for up to ~2 minutes. */
export const lockRetry = Schedule.exponential("1 second").pipe(Schedule.union(Schedule.spaced("10 seconds")), Schedule.upTo("2 minutes"))
