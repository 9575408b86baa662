/**
 * ProtectionEnv: what the backup scheduler needs from the host's configuration (issue 10): the
 * time zone schedules and retention periods are read in, the global cap on concurrent backups
 * (one semaphore for the daemon's lifetime, shared by every pass), and how often the pass runs.
 * Built from `file.protection` in the daemon, or given directly in tests and benches.
 */
import { Context, Duration, Effect, Either, Layer } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import type { JournalOp } from "../../layers/Journal.js"
import { parseTimeZone, type TimeZone } from "./calendar.js"

/**
 * What the scheduler keeps between passes, in memory (a restart starts afresh: the first pass
 * sweeps every target). Only the protection pass touches it, one pass at a time.
 */
export interface SchedulerMemory {
  /** When each target was last listed whole (pruned and its retention settled), under which policy in force. */
  readonly sweptAt: Map<string, { readonly atMs: number; readonly inForce: string }>
  /** The retention change last found pending per target, with the manifest retention it was for. */
  readonly pending: Map<string, { readonly key: string; readonly pending: unknown }>
  /** Finished journal ops by id (immutable once finished): provenance reads each at most once. */
  readonly finishedOps: Map<string, JournalOp>
  /**
   * Per guest and target, the first slot after its last success (`nextRun(schedule, last)`, fixed
   * until the next success): a pass finds "not yet" without evaluating the calendar again.
   */
  readonly nextSlot: Map<string, { readonly schedule: string; readonly last: number; readonly slot: number }>
}

export interface ProtectionEnvShape {
  readonly timeZone: TimeZone
  /** Backups running at once on this host (`max_concurrent_backups`). */
  readonly backupSlots: Effect.Semaphore
  readonly maxConcurrentBackups: number
  readonly passInterval: Duration.Duration
  /**
   * A failed backup is tried again at the next pass after this long, not at every pass: a pulled
   * disk or a full target would otherwise mean a vzdump attempt every minute.
   */
  readonly failedRetryAfter: Duration.Duration
  /**
   * Each target is listed whole (every guest pruned, retention settled) at least this often; in
   * between, a pass touches PVE only for what is due, so an idle pass costs no PVE call.
   */
  readonly sweepInterval: Duration.Duration
  readonly memory: SchedulerMemory
}

export class ProtectionEnv extends Context.Tag("felhom/ProtectionEnv")<ProtectionEnv, ProtectionEnvShape>() {}

export interface ProtectionEnvOptions {
  readonly timeZone: string
  readonly maxConcurrentBackups: number
  readonly passIntervalSeconds: number
  readonly failedRetryAfterSeconds?: number
  readonly sweepIntervalSeconds?: number
}

export const DEFAULT_FAILED_RETRY_SECONDS = 15 * 60
export const DEFAULT_SWEEP_SECONDS = 60 * 60

export const makeProtectionEnv = (o: ProtectionEnvOptions) =>
  Effect.gen(function*() {
    const tz = parseTimeZone(o.timeZone)
    if (Either.isLeft(tz)) return yield* Effect.dieMessage(`protection: ${tz.left.message}`)
    if (!Number.isInteger(o.maxConcurrentBackups) || o.maxConcurrentBackups < 1) {
      return yield* Effect.dieMessage("protection: max_concurrent_backups must be a positive integer")
    }
    const shape: ProtectionEnvShape = {
      timeZone: tz.right,
      backupSlots: yield* Effect.makeSemaphore(o.maxConcurrentBackups),
      maxConcurrentBackups: o.maxConcurrentBackups,
      passInterval: Duration.seconds(o.passIntervalSeconds),
      failedRetryAfter: Duration.seconds(o.failedRetryAfterSeconds ?? DEFAULT_FAILED_RETRY_SECONDS),
      sweepInterval: Duration.seconds(o.sweepIntervalSeconds ?? DEFAULT_SWEEP_SECONDS),
      memory: { sweptAt: new Map(), pending: new Map(), finishedOps: new Map(), nextSlot: new Map() }
    }
    return shape
  })

export const protectionEnvLayer = (o: ProtectionEnvOptions): Layer.Layer<ProtectionEnv> => Layer.effect(ProtectionEnv, makeProtectionEnv(o))

/** From the config file's `protection` block (validated there: zone, cap, interval). */
export const ProtectionEnvLive: Layer.Layer<ProtectionEnv, never, AgentConfig> = Layer.effect(
  ProtectionEnv,
  Effect.flatMap(AgentConfig, ({ file }) =>
    makeProtectionEnv({
      timeZone: file.protection.time_zone,
      maxConcurrentBackups: file.protection.max_concurrent_backups,
      passIntervalSeconds: file.protection.pass_interval_seconds
    }))
)
