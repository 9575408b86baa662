/**
 * The daemon (SPEC §6, §9, §15): recover the journal before any mutation, then the hub loop —
 * report immediately, then every adopted interval; reconcile on new desired state; run signed
 * jobs; report what waits for a signature. Every cycle is resilient: an error is logged and the
 * loop goes on. systemd gets READY=1 after recovery, watchdog pings only while the loop makes
 * progress (LoopProgress.ts: beats per step, per PVE task poll, and its declared sleep), and
 * STOPPING=1 on the way out.
 */
import { OpLog } from "../../layers/OpLog.js"
import { Clock, Duration, Effect, Either, Fiber, Option, Queue, Ref } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { Hub } from "../../layers/Hub.js"
import { } from "../../layers/Journal.js"
import { Systemd } from "../../layers/Systemd.js"
import { beat, LoopProgress, type LoopProgressShape, make as makeLoopProgress } from "../../layers/LoopProgress.js"
import { recordAction, recordCycle, recordHubPoll } from "../../layers/Metrics.js"
import { clampPollInterval } from "../../schema/hub.js"
import type { DesiredState } from "../../schema/desired.js"
import type { JsonObject } from "../../schema/json.js"
import { executePlan, planNow } from "../control/apply.js"
import { runJobBatch } from "../control/jobs.js"
import { parseTimeZone, UTC } from "../protection/calendar.js"
import { recover } from "../control/recover.js"
import { collectReport } from "./report.js"
// the cloudflared manager's view when the daemon runs it (issue 14), else systemd's word
import { cloudflaredReportStatus } from "../cloudflared/manager.js"

export interface PendingSignature {
  readonly op: string
  readonly vmid: number | null
  readonly params: JsonObject
  readonly reason: string
  readonly since: string
}

export interface DaemonState {
  readonly interval: Duration.Duration
  readonly desired: Option.Option<DesiredState>
  readonly appliedGeneration: number | null
  readonly pending: ReadonlyArray<PendingSignature>
  readonly cycles: number
  /** The state store's last verdict: no change at all is made while it is unhealthy. */
  readonly store: { readonly healthy: boolean; readonly detail: string | null }
  /** Whether journal recovery has completed; until it has, nothing is mutated. */
  readonly recovered: boolean
  /** The last host report the hub accepted (epoch ms), and the last failure since (scrubbed text). */
  readonly lastHubContactMs: number | null
  readonly lastHubError: string | null
  readonly lastCycleMs: number | null
  /** Guests the desired state wants that PVE no longer has (the plan's "lost" notes). */
  readonly lostGuests: ReadonlyArray<number>
}

export const initialState: DaemonState = {
  interval: Duration.seconds(60),
  desired: Option.none(),
  appliedGeneration: null,
  pending: [],
  cycles: 0,
  store: { healthy: true, detail: null },
  recovered: false,
  lastHubContactMs: null,
  lastHubError: null,
  lastCycleMs: null,
  lostGuests: []
}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

/** Reconcile against the current desired state; returns what waits for an operator. */
const reconcileOnce = (desired: DesiredState, previous: ReadonlyArray<PendingSignature>) =>
  Effect.gen(function*() {
    const p = yield* planNow(desired)
    yield* beat("cycle planned")
    for (const n of p.notes) yield* Effect.logWarning(`reconcile note for ${n.vmid}: ${n.reason}: ${n.message}`)
    // a lost guest is noted "lost" whether or not a recover could be planned for it
    const lost = [...new Set(p.notes.filter((n) => n.reason === "lost").map((n) => n.vmid as number))].sort((a, b) => a - b)
    if (p.actions.length === 0) return { pending: [] as ReadonlyArray<PendingSignature>, failed: 0, lost }
    yield* Effect.logInfo(`reconcile generation ${desired.generation}: ${p.actions.length} action(s)`)
    const outcomes = yield* executePlan(p)
    const now = iso(yield* Clock.currentTimeMillis)
    const pending = outcomes
      .filter((o) => o.verdict === "pending_signature")
      .map((o): PendingSignature => {
        const op = o.action === "destroy" ? "decommission" : o.action
        const since = previous.find((x) => x.op === op && x.vmid === o.vmid)?.since ?? now
        return { op, vmid: o.vmid, params: o.params ?? {}, reason: o.reason, since }
      })
    for (const o of outcomes) {
      yield* Effect.logInfo(`reconcile ${o.action} ${o.vmid}: ${o.verdict} ${o.result}${o.result === "applied" ? "" : ` (${o.reason})`}`)
      yield* recordAction(o.action, o.verdict, o.result)
    }
    return { pending, failed: outcomes.filter((o) => o.result === "failed").length, lost }
  })

/** One poll cycle. Never fails: every error is logged and the state keeps what it had. */
export const cycle = (state: Ref.Ref<DaemonState>) =>
  Effect.gen(function*() {
    const hub = yield* Hub
    const systemd = yield* Systemd
    const { file } = yield* AgentConfig
    const hostId = file.host_id ?? "unknown-host"
    const ops = yield* OpLog
    yield* beat("cycle start")

    // The state store first: a write that fails (locked, disk full) means no change this cycle,
    // only the heartbeat, with the store reported unhealthy.
    const probed = yield* Effect.either(ops.probe)
    yield* Ref.update(state, (x) => ({
      ...x,
      store: Either.isLeft(probed) ? { healthy: false, detail: probed.left.message } : { healthy: true, detail: null }
    }))
    if (Either.isLeft(probed)) yield* Effect.logWarning(`state store unhealthy: ${probed.left.message}; no change this cycle`)
    // An op in flight while nothing of ours runs (the guest queue idle: no cycle action, job or
    // data-protection saga) was left by a crash, a failed store or a recovery PVE cut short:
    // recover it (one SELECT when there is nothing). While something runs, the next cycle does.
    if (Either.isRight(probed)) {
      const queue = yield* GuestQueue
      yield* queue.whenIdle(recoverInto(state))
    }
    yield* beat("cycle store probed")
    const s = yield* Ref.get(state)
    const mayMutate = s.store.healthy && s.recovered

    const report = yield* Effect.either(collectReport({
      hostId,
      desiredGenerationApplied: s.appliedGeneration,
      pendingSignatures: s.pending,
      cloudflared: cloudflaredReportStatus(systemd),
      stateStore: s.store
    }))
    yield* beat("cycle report collected")
    if (Either.isLeft(report)) {
      yield* Effect.logWarning(`host report skipped: ${report.left.message}`)
      return
    }
    const envelope = yield* Effect.either(hub.report(report.right))
    yield* noteHubContact(state, envelope)
    if (Either.isLeft(envelope)) {
      yield* Effect.logWarning(`host report not delivered: ${envelope.left.message}`)
      return
    }
    const env = envelope.right
    const interval = Duration.seconds(clampPollInterval(env.poll_interval_seconds))
    yield* Ref.update(state, (x) => ({ ...x, interval, cycles: x.cycles + 1 }))
    yield* recordCycle
    if (env.blocked) {
      yield* Effect.logWarning("the hub marks this host blocked: no reconcile, no jobs this cycle")
      return
    }
    if (!mayMutate) return

    // desired state: fetched when the generation moved, reconciled every cycle (drift heals)
    // generation 0: the hub has published nothing yet (reconciling "no guests" would plan destroys)
    let desired = s.desired
    if (env.desired_generation > 0 && (Option.isNone(desired) || desired.value.generation !== env.desired_generation)) {
      const fetched = yield* Effect.either(hub.desiredState)
      if (Either.isLeft(fetched)) yield* Effect.logWarning(`desired state not fetched: ${fetched.left.message}`)
      else desired = Option.some(fetched.right)
      yield* beat("cycle desired fetched")
    }
    if (Option.isSome(desired)) {
      const d = desired.value
      const r = yield* Effect.either(reconcileOnce(d, s.pending))
      if (Either.isLeft(r)) {
        yield* Effect.logWarning(`reconcile failed: ${r.left._tag}: ${r.left.message}`)
        yield* Ref.update(state, (x) => ({
          ...x,
          desired,
          ...(r.left._tag === "JournalError" ? { store: { healthy: false, detail: r.left.message } } : {})
        }))
      } else {
        yield* Ref.update(state, (x) => ({
          ...x,
          desired,
          pending: r.right.pending,
          lostGuests: r.right.lost,
          appliedGeneration: r.right.failed === 0 ? d.generation : x.appliedGeneration
        }))
      }
      yield* beat("cycle reconciled")
    }

    if (env.has_signed_ops && (yield* Ref.get(state)).store.healthy) {
      const jobs = yield* Effect.either(hub.signedJobs)
      if (Either.isLeft(jobs)) {
        yield* Effect.logWarning(`signed jobs not fetched: ${jobs.left.message}`)
      } else if (jobs.right.length > 0) {
        // agent-update jobs outside the desired state's update window are left unanswered
        const results = yield* runJobBatch(jobs.right, {
          window: Option.getOrUndefined(desired)?.update_window,
          timeZone: Either.getOrElse(parseTimeZone(file.protection.time_zone), () => UTC)
        })
        for (const r of results) yield* Effect.logInfo(`job ${r.id} ${r.op} ${r.guest_id ?? "-"}: ${r.status}: ${r.reason}`)
        const posted = results.length === 0 ? Either.right(undefined) : yield* Effect.either(hub.postJobResults(results))
        if (Either.isLeft(posted)) yield* Effect.logWarning(`job results not delivered: ${posted.left.message}`)
      }
      yield* beat("cycle jobs run")
    }
  }).pipe(
    // resilient to every error, defects included; only interruption ends the loop
    Effect.catchAllCause((cause) => Effect.logError("poll cycle failed", cause)),
    // the end of a cycle is progress however it ended
    Effect.zipRight(Effect.flatMap(Clock.currentTimeMillis, (now) => Ref.update(state, (x) => ({ ...x, lastCycleMs: now })))),
    Effect.zipRight(beat("cycle end")),
    Effect.withLogSpan("cycle")
  )

/**
 * Records a hub exchange's outcome for /health, /status and the metrics. The error text is the
 * hub client's own message, already scrubbed of the api key (Hub.ts); it is bounded here too.
 */
const noteHubContact = <A, E extends { readonly message: string }>(state: Ref.Ref<DaemonState>, result: Either.Either<A, E>) =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    yield* recordHubPoll(Either.isRight(result), now)
    yield* Ref.update(state, (x) =>
      Either.isRight(result)
        ? { ...x, lastHubContactMs: now, lastHubError: null }
        : { ...x, lastHubError: result.left.message.slice(0, 300) })
  })

/**
 * The hub loop: first cycle immediately, then after the adopted interval, or at once when
 * poked (SIGUSR1, or the demo driver).
 */
export const hubLoop = (state: Ref.Ref<DaemonState>, poke: Queue.Queue<void>) =>
  Effect.gen(function*() {
    const progress = yield* Effect.serviceOption(LoopProgress)
    const idle = (ms: number) => Option.match(progress, { onNone: () => Effect.void, onSome: (p) => p.idleUntil(ms) })
    for (;;) {
      yield* cycle(state)
      const { interval } = yield* Ref.get(state)
      // asleep by design until the next cycle is due: no beat is expected before then
      yield* idle((yield* Clock.currentTimeMillis) + Duration.toMillis(interval))
      yield* Effect.raceFirst(Effect.sleep(interval), Queue.take(poke))
      // awake (the interval, or a poke): from here on silence counts again
      yield* idle(yield* Clock.currentTimeMillis)
      yield* Queue.takeAll(poke) // several pokes during one cycle mean one extra cycle
    }
  })

/**
 * A host report outside the cycle (the storage watchdog's "a target came or went"): collect and
 * send only, no desired state, no jobs; adopts the hub's interval like a cycle. Never fails.
 */
export const reportOnly = (state: Ref.Ref<DaemonState>) =>
  Effect.gen(function*() {
    const hub = yield* Hub
    const systemd = yield* Systemd
    const { file } = yield* AgentConfig
    const s = yield* Ref.get(state)
    const report = yield* collectReport({
      hostId: file.host_id ?? "unknown-host",
      desiredGenerationApplied: s.appliedGeneration,
      pendingSignatures: s.pending,
      cloudflared: cloudflaredReportStatus(systemd),
      stateStore: s.store
    })
    const sent = yield* Effect.either(hub.report(report))
    yield* noteHubContact(state, sent)
    const env = yield* sent
    yield* Ref.update(state, (x) => ({ ...x, interval: Duration.seconds(clampPollInterval(env.poll_interval_seconds)) }))
  }).pipe(Effect.catchAllCause((cause) => Effect.logWarning("out-of-cycle host report failed", cause)))

/** Serves report-now requests as they come, concurrently with the cycle (which may be busy for minutes). */
export const reportNowLoop = (state: Ref.Ref<DaemonState>, requests: Queue.Queue<void>) =>
  Effect.forever(
    Effect.gen(function*() {
      yield* Queue.take(requests)
      yield* Queue.takeAll(requests) // requests arriving together make one report
      yield* reportOnly(state)
    })
  )

/**
 * Journal recovery; on success the daemon may mutate. A state store that fails (JournalError)
 * leaves `recovered` false and the store unhealthy: the loop heartbeats and tries again.
 */
const recoverInto = (state: Ref.Ref<DaemonState>) =>
  Effect.gen(function*() {
    const r = yield* Effect.either(recover)
    if (Either.isLeft(r)) {
      yield* Effect.logError(`journal recovery could not run: ${r.left.message}; no change until it has`)
      yield* Ref.update(state, (x) => ({ ...x, recovered: false, store: { healthy: false, detail: r.left.message } }))
      return 0
    }
    for (const op of r.right) yield* Effect.logInfo(`recovered ${op.kind} ${op.vmid ?? "-"} (${op.id}): ${op.outcome}: ${op.detail}`)
    yield* Ref.update(state, (x) => ({ ...x, recovered: true }))
    return r.right.length
  })

/**
 * systemd's watchdog, pinged only while the hub loop progresses (LoopProgress.ts): a loop that
 * hangs (a deadlock, a wait that never ends and never polls) stops the pings, and systemd kills
 * and restarts the daemon after WatchdogSec. Said once when it stops, once when it resumes.
 */
export const watchdogLoop = (systemd: Systemd["Type"], progress: LoopProgressShape, every: Duration.Duration) =>
  Effect.gen(function*() {
    let stalled = false
    for (;;) {
      if (!(yield* progress.stalled)) {
        if (stalled) {
          stalled = false
          yield* Effect.logWarning("hub loop progressing again: pinging the watchdog again")
          yield* systemd.status("polling the hub")
        }
        yield* systemd.watchdog
      } else if (!stalled) {
        stalled = true
        const silentS = Math.round((yield* progress.silentForMs) / 1000)
        const { lastLabel } = yield* progress.snapshot
        yield* Effect.logError(
          `hub loop made no progress for ${silentS}s: no longer pinging the watchdog; systemd will restart the daemon`
        ).pipe(Effect.annotateLogs("last_step", lastLabel))
        yield* systemd.status(`hub loop stalled after "${lastLabel}": no watchdog pings`)
      }
      yield* Effect.sleep(every)
    }
  })

/**
 * Recovery first, READY=1, watchdog pings from the loop's progress, then the loop until
 * interrupted (SIGTERM). The LoopProgress in context is used (the status endpoint reads the same
 * one); without one, the daemon makes its own from status_endpoint.stall_seconds.
 */
export const runDaemon = <R = never>(opts: {
  readonly poke: Queue.Queue<void>
  readonly state: Ref.Ref<DaemonState>
  /** Out-of-cycle report requests (the storage watchdog's ReportNow, reportNowFromQueue). */
  readonly reportNow?: Queue.Queue<void>
  /** Started once recovery has run and READY=1 is sent (the data-protection fibers, forked scoped). */
  readonly alongside?: Effect.Effect<void, never, R>
}) =>
  Effect.gen(function*() {
    const systemd = yield* Systemd
    const { file } = yield* AgentConfig
    const progress = yield* Option.match(yield* Effect.serviceOption(LoopProgress), {
      onNone: () => makeLoopProgress(file.status_endpoint.stall_seconds),
      onSome: Effect.succeed
    })
    return yield* Effect.gen(function*() {
      yield* Effect.logInfo("felhom-agent daemon starting: recovering the journal before any mutation")
      const recovered = yield* recoverInto(opts.state)
      yield* progress.beat("recovered")
      yield* systemd.ready
      yield* systemd.status(`recovered ${recovered} op(s); polling the hub`)
      const watchdog = yield* Option.match(systemd.watchdogInterval, {
        onNone: () => Effect.succeed(Option.none<Fiber.RuntimeFiber<unknown, never>>()),
        onSome: (every) => Effect.map(Effect.forkScoped(watchdogLoop(systemd, progress, every)), Option.some)
      })
      yield* Effect.logInfo(`ready${Option.isSome(watchdog) ? ", watchdog armed (pinged while the hub loop progresses)" : ""}`)
      if (opts.reportNow !== undefined) yield* Effect.forkScoped(reportNowLoop(opts.state, opts.reportNow))
      if (opts.alongside !== undefined) yield* opts.alongside
      return yield* hubLoop(opts.state, opts.poke)
    }).pipe(Effect.provideService(LoopProgress, progress))
  }).pipe(
    // the fibers forked above (watchdog pings, report-now, data protection) end with the daemon,
    // not with whatever scope its caller runs in (the demo restarts the daemon in one process)
    Effect.scoped,
    Effect.onInterrupt(() => Effect.flatMap(Systemd, (s) => Effect.zipRight(Effect.logInfo("stopping"), s.stopping)))
  )
