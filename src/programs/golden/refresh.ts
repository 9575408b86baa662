/**
 * The golden archive's refresh (SPEC §10, issue 12): the daemon rebuilds it on the configured
 * cadence (`golden.refresh_days` after the newest built one; policy, no signature: the template
 * and every other input come from the operator's config, nothing from the hub), and retires what
 * a newer build superseded.
 *
 * A refresh never breaks a provision in flight. Retiring only marks an archive not-current: it
 * stays registered (the plan keeps accepting it, so a hub still naming it provisions as before)
 * and on disk; nothing in this module deletes anything. Even that mark waits while an in-flight
 * `create` op restores from the archive (its payload's `source.archive`), so a future deletion
 * keyed on `retired` could never pull an archive from under a provision. Operator-signed
 * registrations are the operator's: never retired here.
 */
import { Clock, Duration, Effect, Either, Option, Schedule } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import { GoldenStore, type GoldenRecord } from "../../layers/GoldenStore.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { OpLog } from "../../layers/OpLog.js"
import { Privileged, PrivilegedGolden } from "../../layers/Privileged.js"
import { decodeOperation } from "../../schema/operations.js"
import { RestoreTestSettings } from "../protection/scratch.js"
import { buildGolden, type GoldenBuildResult, GoldenSettings, type GoldenSettingsShape, requestFromSettings, versionNow } from "./build.js"

const DAY_MS = 86_400_000
const HOUR_MS = 3_600_000

/** How often the daemon looks whether a build is due (and retires what it can). */
export const GOLDEN_CHECK_INTERVAL = Duration.hours(1)

/** The newest golden-build attempt the journal knows, for the retry back-off. */
export interface LastAttempt {
  readonly atMs: number
  readonly status: "in_flight" | "done" | "rolled_back" | "failed" | "needs_operator"
}

export type RefreshDecision =
  | { readonly due: true; readonly basis: "enrollment" | "policy"; readonly reason: string }
  | { readonly due: false; readonly reason: string }

/**
 * Pure: whether a build is due at `nowMs`. None while one is in flight or held for an operator;
 * none within `retry_hours` of a failed one; the first build (no built archive yet) is an
 * enrollment build; after that one every `refresh_days` from the newest built archive.
 */
export const refreshDecision = (
  nowMs: number,
  settings: Pick<GoldenSettingsShape, "refreshDays" | "retryHours">,
  records: ReadonlyArray<GoldenRecord>,
  last: LastAttempt | null
): RefreshDecision => {
  if (settings.refreshDays === 0) return { due: false, reason: "golden.refresh_days is 0: no automatic build" }
  if (last !== null && last.status === "in_flight") return { due: false, reason: "a golden build is in flight" }
  if (last !== null && last.status === "needs_operator") return { due: false, reason: "the last golden build is held for an operator" }
  if (last !== null && last.status !== "done" && nowMs < last.atMs + settings.retryHours * HOUR_MS) {
    return { due: false, reason: `the last golden build failed; retried after ${new Date(last.atMs + settings.retryHours * HOUR_MS).toISOString()}` }
  }
  const built = records.filter((r) => r.basis === "built")
  if (built.length === 0) return { due: true, basis: "enrollment", reason: "no golden archive built on this host yet" }
  const newest = Math.max(...built.map((r) => r.recordedAtMs))
  const dueAt = newest + settings.refreshDays * DAY_MS
  return nowMs >= dueAt
    ? { due: true, basis: "policy", reason: `the newest golden archive is older than ${settings.refreshDays} days` }
    : { due: false, reason: `next build due ${new Date(dueAt).toISOString()}` }
}

/** How many recent ops are searched for the last golden build (they are rare; older ones are long settled). */
const RECENT_OPS = 2000

export const lastAttempt = Effect.gen(function*() {
  const ops = yield* OpLog
  const recent = yield* ops.list({ limit: RECENT_OPS })
  const newest = recent.find((o) => o.kind === "golden-build")
  return newest === undefined ? null : ({ atMs: newest.createdAtMs, status: newest.status } satisfies LastAttempt)
})

/** Whether a (re)build is due now, from the golden store, the journal and the configured cadence. */
export const goldenRefreshDue = (nowMs: number) =>
  Effect.gen(function*() {
    const settings = yield* GoldenSettings
    const store = yield* GoldenStore
    return refreshDecision(nowMs, settings, yield* store.records, yield* lastAttempt)
  })

/** The archives in-flight `create` ops restore from, each with the first op naming it. */
export const inFlightSources = Effect.gen(function*() {
  const ops = yield* OpLog
  const out = new Map<string, string>()
  for (const op of yield* ops.inFlight) {
    const typed = decodeOperation(op.payload)
    if (Either.isRight(typed) && typed.right._tag === "create" && !out.has(typed.right.source.archive)) {
      out.set(typed.right.source.archive, op.id)
    }
  }
  return out
})

export interface RetireOutcome {
  readonly current: string | null
  readonly retired: ReadonlyArray<string>
  /** Superseded but kept current: an in-flight create restores from it (the op named). */
  readonly kept: ReadonlyArray<{ readonly volid: string; readonly op: string }>
}

/**
 * Marks every built archive but the newest retired, except one an in-flight create references
 * (kept current until a later pass finds no such op). Deletes nothing; signed archives untouched.
 */
export const retireSuperseded = Effect.gen(function*() {
  const store = yield* GoldenStore
  const auditLog = yield* AuditLog
  const records = yield* store.records
  const built = records.filter((r) => r.basis === "built")
  const newest = built.reduce<GoldenRecord | null>((a, r) => (a === null || r.recordedAtMs >= a.recordedAtMs ? r : a), null)
  if (newest === null) return { current: null, retired: [], kept: [] } satisfies RetireOutcome
  const referenced = yield* inFlightSources
  const retired: Array<string> = []
  const kept: Array<{ readonly volid: string; readonly op: string }> = []
  for (const r of built) {
    if (r.volid === newest.volid || r.state !== "current") continue
    const op = referenced.get(r.volid)
    if (op !== undefined) {
      kept.push({ volid: r.volid, op })
      continue
    }
    if (yield* store.retire(r.volid, `superseded by ${newest.volid} (golden ${newest.version ?? "?"})`)) {
      retired.push(r.volid)
      yield* auditLog.audit({ actor: "golden", action: "golden-retire", target: null, decision: "retired", detail: { volid: r.volid, supersededBy: newest.volid } })
    }
  }
  return { current: newest.volid, retired, kept } satisfies RetireOutcome
})

export type RefreshOutcome =
  | { readonly _tag: "not_due"; readonly reason: string; readonly retire: RetireOutcome }
  | { readonly _tag: "built"; readonly build: GoldenBuildResult; readonly retire: RetireOutcome }

/**
 * One refresh pass: retire what can be retired; build when due (then retire again, the new
 * archive now being the newest). A failed build fails the pass (the journal has its op).
 */
export const refreshGolden = Effect.gen(function*() {
  const now = yield* Clock.currentTimeMillis
  const before = yield* retireSuperseded
  const decision = yield* goldenRefreshDue(now)
  if (!decision.due) return { _tag: "not_due", reason: decision.reason, retire: before } satisfies RefreshOutcome as RefreshOutcome
  const settings = yield* GoldenSettings
  yield* Effect.logInfo(`golden: building (${decision.basis}): ${decision.reason}`)
  const build = yield* buildGolden(requestFromSettings(settings, yield* versionNow, decision.basis))
  const retire = yield* retireSuperseded
  return { _tag: "built", build, retire } satisfies RefreshOutcome as RefreshOutcome
})

const describeRetire = (r: RetireOutcome) =>
  [
    ...(r.retired.length > 0 ? [`retired ${r.retired.join(", ")}`] : []),
    ...r.kept.map((k) => `kept ${k.volid} current: in-flight create ${k.op} restores from it`)
  ].join("; ")

/**
 * The daemon's golden fiber, started beside data protection: every GOLDEN_CHECK_INTERVAL, while
 * `mayMutate` (recovered, store healthy), one refresh pass; a failure is logged and the loop goes
 * on. Off (a log line) on a host without a `golden` block or with refresh_days 0, or when the
 * graph lacks the golden services. Takes its services from the graph so that graphs without them
 * (the demo, tests) need nothing.
 */
export const startGolden = (mayMutate: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    const settings = yield* Effect.serviceOption(GoldenSettings)
    const store = yield* Effect.serviceOption(GoldenStore)
    const golden = yield* Effect.serviceOption(PrivilegedGolden)
    const priv = yield* Effect.serviceOption(Privileged)
    const scratch = yield* Effect.serviceOption(RestoreTestSettings)
    const queue = yield* Effect.serviceOption(GuestQueue)
    if (Option.isNone(settings)) return yield* Effect.logInfo("golden: no golden block configured; the agent builds no golden archive")
    if (settings.value.refreshDays === 0) return yield* Effect.logInfo("golden: refresh_days is 0; builds only on `felhom-agent golden build`")
    if (Option.isNone(store) || Option.isNone(golden) || Option.isNone(priv) || Option.isNone(scratch) || Option.isNone(queue)) {
      return yield* Effect.logWarning("golden: the golden services are not in this graph; no automatic refresh")
    }
    const pass = refreshGolden.pipe(
      Effect.provideService(GoldenSettings, settings.value),
      Effect.provideService(GoldenStore, store.value),
      Effect.provideService(PrivilegedGolden, golden.value),
      Effect.provideService(Privileged, priv.value),
      Effect.provideService(RestoreTestSettings, scratch.value),
      Effect.provideService(GuestQueue, queue.value),
      Effect.tap((r) =>
        r._tag === "built"
          ? Effect.logInfo(`golden: registered ${r.build.volid} as ${r.build.version} (sha256 ${r.build.sha256})${describeRetire(r.retire) === "" ? "" : `; ${describeRetire(r.retire)}`}`)
          : describeRetire(r.retire) === ""
          ? Effect.void
          : Effect.logInfo(`golden: ${describeRetire(r.retire)}`)
      ),
      Effect.catchAllCause((cause) => Effect.logWarning("golden: refresh pass failed", cause))
    )
    const once = Effect.flatMap(mayMutate, (ok) => (ok ? pass : Effect.void))
    yield* Effect.forkScoped(Effect.repeat(once, Schedule.spaced(GOLDEN_CHECK_INTERVAL)))
    yield* Effect.logInfo(`golden: refresh every ${settings.value.refreshDays} days (checked hourly)`)
  })
