/**
 * Break-glass (issue 14, SPEC §15): a signed, consented, audited enable starts the unit after the
 * session is recorded; it expires on time, after a restart, after a clock jump, on withdrawn
 * consent; a failing stop keeps the session open and is retried; an interrupted enable is
 * recovered fail-closed; an unsigned disable closes it early; a replayed enable never reopens.
 * Every time-driven path runs on TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, FastCheck as fc, Fiber, Option, Ref, TestClock } from "effect"
import { Journal } from "../src/layers/Journal.js"
import { runSignedJob } from "../src/programs/control/jobs.js"
import { recover } from "../src/programs/control/recover.js"
import { beginOperation } from "../src/programs/control/steps.js"
import { BreakGlass } from "../src/programs/breakglass/service.js"
import { breakGlassExpiry, checkBreakGlass, nextWait } from "../src/programs/breakglass/expiry.js"
import { currentSession } from "../src/programs/breakglass/store.js"
import { decodeEnableParams } from "../src/programs/breakglass/enable.js"
import { consentOf } from "../src/programs/breakglass/daemon.js"
import { initialState } from "../src/programs/daemon/loop.js"
import { decodeDesiredState } from "../src/schema/desired.js"
import { job, operator, recoveryKey, settle, stranger } from "./engine-support.js"
import {
  CHECK_SECONDS,
  enableJob,
  harness,
  HOUR,
  iso,
  REASON,
  withBreakGlass,
  withoutBreakGlass
} from "./break-glass-support.js"
import { layerAt } from "../src/layers/Database.js"
import { parseSigners } from "../src/layers/Authz.js"

/** The operator key's fingerprint as Authz computes it. */
const FINGERPRINT = Effect.map(Effect.orDie(parseSigners([`role=operational,key-id=alice ${operator.publicKey.line}`])), (s) => s[0]!.key.fingerprint)

/**
 * A wall clock that can jump while sleeps keep their own (monotonic) course, as on a real host:
 * TestClock.setTime alone would wake every sleep on the way, one interval at a time.
 */
const jumpingClock = (base: Clock.Clock, offset: { ms: number }): Clock.Clock => ({
  [Clock.ClockTypeId]: Clock.ClockTypeId,
  unsafeCurrentTimeMillis: () => base.unsafeCurrentTimeMillis() + offset.ms,
  unsafeCurrentTimeNanos: () => base.unsafeCurrentTimeNanos() + BigInt(offset.ms) * 1_000_000n,
  currentTimeMillis: Effect.sync(() => base.unsafeCurrentTimeMillis() + offset.ms),
  currentTimeNanos: Effect.sync(() => base.unsafeCurrentTimeNanos() + BigInt(offset.ms) * 1_000_000n),
  sleep: (d: Duration.Duration) => base.sleep(d)
})

const sessions = Effect.flatMap(BreakGlass, (bg) => Effect.zip(bg.store.open, bg.store.latest))
const audits = Effect.flatMap(Journal, (j) => j.auditTail(200))
const bgAudits = Effect.map(audits, (es) => es.filter((e) => e.action.startsWith("break-glass")).map((e) => `${e.action} ${e.decision}`))
const opsOf = (kind: string) => Effect.map(Effect.flatMap(Journal, (j) => j.list({ limit: 100 })), (ops) => ops.filter((o) => o.kind === kind))

/** Lets the forked fiber run after a clock step (the fake unit and SQLite are synchronous). */
const tick = (d: Parameters<typeof TestClock.adjust>[0]) => Effect.zipRight(TestClock.adjust(d), settle)

const UNTIL = iso(2 * HOUR)

describe("break-glass enable", () => {
  it.effect("a signed enable with consent records the session, then starts the unit, and audits who and until", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      const r = yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))
      expect(r.status).toBe("done")
      expect(h.unit.calls).toEqual(["start"])
      expect(h.unit.state).toBe("active")
      const fingerprint = yield* FINGERPRINT
      const [open] = yield* sessions
      expect(open).toHaveLength(1)
      expect(open[0]).toMatchObject({ untilMs: 2 * HOUR, signer: "alice", fingerprint, reason: REASON, endedAtMs: null, jobId: r.id })
      const [op] = yield* opsOf("break-glass")
      expect(op?.status).toBe("done")
      expect(op?.steps.map((s) => `${s.name}:${s.status}`)).toEqual(["record:done", "start:done"])
      const entries = yield* audits
      const enabled = entries.find((e) => e.action === "break-glass-enable" && e.decision === "enabled")
      expect(enabled?.detail).toMatchObject({ signer: "alice", fingerprint, until: UNTIL, reason: REASON })
      expect(entries.some((e) => e.action === "break-glass-enable" && e.decision === "signed_ok")).toBe(true)
      // what `status` reads (interface 6)
      const cur = yield* currentSession.pipe(Effect.provide(layerAt(h.path)), Effect.orDie)
      expect(Option.getOrThrow(cur)).toMatchObject({ active: true, since: iso(0), until: UNTIL, signer: "alice", reason: REASON })
    }))
  })

  it.effect("refused without consent, with no desired state, too long, past, unsigned, by a stranger or a recovery key, or signed for other params: nothing starts", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      const tryJob = (j: ReturnType<typeof enableJob>) => Effect.map(runSignedJob(j), (r) => `${r.status} ${r.reason.split(":")[0]}`)
      h.consent.value = Option.none()
      expect(yield* tryJob(enableJob({ until: UNTIL, reason: REASON }))).toBe("rejected no_consent")
      h.consent.value = Option.some(false)
      const noConsent = enableJob({ until: UNTIL, reason: REASON })
      expect(yield* tryJob(noConsent)).toBe("rejected no_consent")
      h.consent.value = Option.some(true)
      expect(yield* tryJob(enableJob({ until: iso(24 * HOUR + 1000), reason: REASON }))).toBe("rejected too_long")
      expect(yield* tryJob(enableJob({ until: iso(0), reason: REASON }))).toBe("rejected until_past")
      expect(yield* tryJob(enableJob({ until: "1970-02-30T00:00:00Z", reason: REASON }))).toBe("rejected bad_params")
      expect(yield* tryJob(enableJob({ until: UNTIL, reason: "two\nlines" }))).toBe("rejected bad_params")
      expect(yield* tryJob(enableJob({ until: UNTIL, reason: REASON, extra: "x" }))).toBe("rejected bad_params")
      expect(yield* tryJob(job({ op: "break-glass-enable", guest_id: null, params: { until: UNTIL, reason: REASON } }))).toBe("pending_signature break-glass-enable overwrites or removes customer data")
      expect(yield* tryJob(enableJob({ until: UNTIL, reason: REASON }, { key: stranger }))).toBe("rejected UnknownSigner")
      expect(yield* tryJob(enableJob({ until: UNTIL, reason: REASON }, { key: recoveryKey }))).toBe("rejected role_denied")
      expect(yield* tryJob(enableJob({ until: iso(23 * HOUR), reason: REASON }, { signedParams: { until: UNTIL, reason: REASON } })))
        .toBe("rejected binding_mismatch")
      expect(h.unit.calls).toEqual([])
      const [open, latest] = yield* sessions
      expect(open).toEqual([])
      expect(Option.isNone(latest)).toBe(true)
      expect(yield* opsOf("break-glass")).toEqual([])
      const refusals = (yield* bgAudits).filter((a) => a.startsWith("break-glass-enable refused:"))
      expect(refusals).toEqual(expect.arrayContaining(["break-glass-enable refused:no_consent", "break-glass-enable refused:too_long", "break-glass-enable refused:until_past"]))
      // a refusal spends nothing: the same signed job runs once the customer consents
      expect((yield* runSignedJob(noConsent)).status).toBe("done")
      expect(h.unit.state).toBe("active")
    }))
  })

  it.effect("refused while a session is open (say so); extend = disable + a new enable", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      expect((yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))).status).toBe("done")
      const second = yield* runSignedJob(enableJob({ until: iso(3 * HOUR), reason: REASON }))
      expect(second.status).toBe("rejected")
      expect(second.reason).toMatch(/^session_active: a break-glass session is already open .* by alice, until 1970-01-01T02:00:00Z\): disable it first/)
      expect((yield* runSignedJob(job({ op: "break-glass-disable", guest_id: null })))).toMatchObject({ status: "done" })
      expect((yield* runSignedJob(enableJob({ until: iso(3 * HOUR), reason: REASON }))).status).toBe("done")
      const [open] = yield* sessions
      expect(open.map((s) => s.untilMs)).toEqual([3 * HOUR])
    }))
  })

  it.effect("a unit that fails to start is stopped and its session ends start_failed; the op fails", () => {
    const h = harness()
    h.unit.failStart = true
    return withBreakGlass(h, Effect.gen(function*() {
      const r = yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))
      expect(r.status).toBe("failed")
      expect(h.unit.calls).toEqual(["start", "stop"])
      const [open, latest] = yield* sessions
      expect(open).toEqual([])
      expect(Option.getOrThrow(latest).endReason).toBe("start_failed")
      expect((yield* opsOf("break-glass"))[0]?.status).toBe("failed")
    }))
  })

  it.effect("without the break-glass service (not the daemon) an enable is refused before admission: its nonce stays unspent", () => {
    const h = harness()
    const j = enableJob({ until: UNTIL, reason: REASON })
    return Effect.gen(function*() {
      const r = yield* withoutBreakGlass(h, runSignedJob(j))
      expect(r.status).toBe("failed")
      expect(r.reason).toContain("break-glass service")
      expect(yield* withBreakGlass(h, Effect.map(runSignedJob(j), (x) => x.status))).toBe("done")
    })
  })
})

describe("break-glass expiry", () => {
  it.effect("on time: still open at until−1s, stopped and ended 'expired' at until", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))
      const fiber = yield* Effect.fork(breakGlassExpiry)
      yield* tick("1 millis")
      yield* tick(`${2 * 3600 - 1} seconds`)
      expect(h.unit.state).toBe("active")
      expect((yield* sessions)[0]).toHaveLength(1)
      yield* tick("1 seconds")
      expect(h.unit.state).toBe("inactive")
      const [open, latest] = yield* sessions
      expect(open).toEqual([])
      expect(Option.getOrThrow(latest)).toMatchObject({ endReason: "expired", endedAtMs: 2 * HOUR })
      expect(yield* bgAudits).toContain("break-glass-end ended:expired")
      yield* Fiber.interrupt(fiber)
    }))
  })

  it.effect("a restart after the expiry: a new daemon's fiber over the same database stops the unit at once", () => {
    const h = harness()
    return Effect.gen(function*() {
      yield* withBreakGlass(h, runSignedJob(enableJob({ until: UNTIL, reason: REASON })))
      // the daemon was down across the expiry (the unit kept running: its backstop is 24 h)
      yield* TestClock.setTime(2 * HOUR + 10 * 60_000)
      expect(h.unit.state).toBe("active")
      yield* withBreakGlass(h, Effect.gen(function*() {
        const fiber = yield* Effect.fork(breakGlassExpiry)
        yield* settle
        expect(h.unit.state).toBe("inactive")
        const [open, latest] = yield* sessions
        expect(open).toEqual([])
        expect(Option.getOrThrow(latest).endReason).toBe("expired")
        yield* Fiber.interrupt(fiber)
      }))
    })
  })

  it.effect("a clock jump forward past until (no sleep through it) is caught within one check interval", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      yield* runSignedJob(enableJob({ until: iso(20 * HOUR), reason: REASON }))
      const offset = { ms: 0 }
      const clock = jumpingClock(yield* Effect.clock, offset)
      const fiber = yield* Effect.fork(Effect.withClock(breakGlassExpiry, clock))
      yield* tick("1 seconds")
      // the fiber sleeps one interval at most (the until is 20 h away)
      yield* tick(`${CHECK_SECONDS} seconds`)
      expect(h.unit.state).toBe("active")
      offset.ms = 20 * HOUR
      yield* settle
      expect(h.unit.state).toBe("active") // nothing woke: only the wall clock moved
      yield* tick(`${CHECK_SECONDS} seconds`)
      expect(h.unit.state).toBe("inactive")
      expect(Option.getOrThrow((yield* sessions)[1]).endReason).toBe("expired")
      yield* Fiber.interrupt(fiber)
    }))
  })

  it("sleeps until the earliest until, never longer than the interval, and an overdue session waits the interval (no tight loop)", () => {
    expect(nextWait([], 0, 30_000)).toBe(30_000)
    expect(nextWait([10_000], 0, 30_000)).toBe(10_000)
    expect(nextWait([10 * HOUR], 0, 30_000)).toBe(30_000)
    expect(nextWait([5_000], 5_000, 30_000)).toBe(30_000)
    expect(nextWait([1_000, 50_000], 2_000, 30_000)).toBe(30_000)
  })

  it.prop(
    "the wait is positive, at most one interval, and never sleeps past the earliest future until",
    [fc.array(fc.integer({ min: 0, max: 10 * HOUR }), { maxLength: 4 }), fc.integer({ min: 0, max: 10 * HOUR }), fc.integer({ min: 1000, max: 3_600_000 })],
    ([untils, now, interval]) => {
      const w = nextWait(untils, now, interval)
      expect(w).toBeGreaterThan(0)
      expect(w).toBeLessThanOrEqual(interval)
      const future = untils.filter((u) => u > now)
      if (future.length > 0) expect(now + w).toBeLessThanOrEqual(Math.min(...future))
    }
  )

  it.effect("a failing stop keeps the session open (noted, audited once) and is retried every interval until it works", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))
      const fiber = yield* Effect.fork(breakGlassExpiry)
      h.unit.failStop = true
      yield* tick("2 hours")
      const stops = () => h.unit.calls.filter((c) => c === "stop").length
      expect(stops()).toBe(1)
      let [open] = yield* sessions
      expect(open).toHaveLength(1)
      expect(open[0]?.stopError).toContain("stop failed")
      yield* tick(`${CHECK_SECONDS} seconds`)
      yield* tick(`${CHECK_SECONDS} seconds`)
      expect(stops()).toBe(3)
      expect((yield* sessions)[0]).toHaveLength(1)
      expect((yield* bgAudits).filter((a) => a === "break-glass-end stop_failed")).toHaveLength(1)
      h.unit.failStop = false
      yield* tick(`${CHECK_SECONDS} seconds`)
      ;[open] = yield* sessions
      expect(open).toEqual([])
      expect(h.unit.state).toBe("inactive")
      expect(Option.getOrThrow((yield* sessions)[1]).endReason).toBe("expired")
      yield* Fiber.interrupt(fiber)
    }))
  })

  it.effect("consent withdrawn in a newer desired state ends the open session at the next check", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))
      const fiber = yield* Effect.fork(breakGlassExpiry)
      yield* tick("1 seconds")
      // a restarted daemon knows no desired state yet: that is not a withdrawal
      h.consent.value = Option.none()
      yield* tick(`${CHECK_SECONDS} seconds`)
      expect(h.unit.state).toBe("active")
      h.consent.value = Option.some(false)
      yield* tick(`${CHECK_SECONDS} seconds`)
      expect(h.unit.state).toBe("inactive")
      expect(Option.getOrThrow((yield* sessions)[1]).endReason).toBe("consent_withdrawn")
      expect(yield* bgAudits).toContain("break-glass-end ended:consent_withdrawn")
      yield* Fiber.interrupt(fiber)
    }))
  })

  it.effect("a unit running with no open session (a crash, or started by hand) is stopped and audited", () => {
    const h = harness()
    h.unit.state = "active"
    return withBreakGlass(h, Effect.gen(function*() {
      yield* checkBreakGlass
      expect(h.unit.state).toBe("inactive")
      expect(yield* bgAudits).toContain("break-glass-stop stopped:no_session")
      // once closed it is left alone: no audit per check
      yield* checkBreakGlass
      expect((yield* bgAudits).filter((a) => a.startsWith("break-glass-stop"))).toHaveLength(1)
    }))
  })
})

describe("break-glass inputs", () => {
  it.prop("until decodes exactly when it is a real UTC second written YYYY-MM-DDTHH:MM:SSZ", [fc.integer({ min: 0, max: 4_102_444_800_000 }), fc.string()], ([ms, junk]) => {
    const until = iso(ms - (ms % 1000))
    expect(Option.isSome(decodeEnableParams({ until, reason: REASON }))).toBe(true)
    expect(Option.isSome(decodeEnableParams({ until: `${until}${junk}`, reason: REASON }))).toBe(junk.length === 0)
    expect(Option.isSome(decodeEnableParams({ until: until.replace("Z", ".000Z"), reason: REASON }))).toBe(false)
  })

  it("the reason is 1..200 printable characters; nothing else is accepted beside until", () => {
    const ok = (reason: string) => Option.isSome(decodeEnableParams({ until: UNTIL, reason }))
    expect(ok("x")).toBe(true)
    expect(ok("é".repeat(200))).toBe(true)
    expect(ok("")).toBe(false)
    expect(ok("x".repeat(201))).toBe(false)
    for (const c of ["\n", "\r", "\u001b[2J", "\u0000", "\u2028"]) expect(ok(`a${c}b`), JSON.stringify(c)).toBe(false)
    expect(Option.isSome(decodeEnableParams({ until: UNTIL, reason: "x", hours: "3" }))).toBe(false)
    expect(Option.isSome(decodeEnableParams({ until: UNTIL }))).toBe(false)
  })

  it.effect("the daemon's consent: none until a desired state is known; absent or false in it is no consent", () =>
    Effect.gen(function*() {
      const state = yield* Ref.make(initialState)
      expect(yield* consentOf(state)).toEqual(Option.none())
      const desired = (extra: object) => Option.some(Option.getOrThrow(Option.getRight(decodeDesiredState({ generation: 1, guests: [], ...extra }))))
      yield* Ref.update(state, (s) => ({ ...s, desired: desired({}) }))
      expect(yield* consentOf(state)).toEqual(Option.some(false))
      yield* Ref.update(state, (s) => ({ ...s, desired: desired({ break_glass_consent: true }) }))
      expect(yield* consentOf(state)).toEqual(Option.some(true))
      expect(Option.isNone(Option.getRight(decodeDesiredState({ generation: 1, guests: [], break_glass_consent: "yes" })))).toBe(true)
    }))
})

describe("break-glass disable and replay", () => {
  it.effect("an unsigned disable job ends the session early and stops the unit", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))
      yield* TestClock.adjust("10 minutes")
      const r = yield* runSignedJob(job({ op: "break-glass-disable", guest_id: null }))
      expect(r.status).toBe("done")
      expect(h.unit.state).toBe("inactive")
      const [open, latest] = yield* sessions
      expect(open).toEqual([])
      expect(Option.getOrThrow(latest)).toMatchObject({ endReason: "disabled", endedAtMs: 10 * 60_000 })
      const ended = (yield* audits).find((e) => e.decision === "ended:disabled")
      expect(ended?.actor).toBe(`job:${r.id}`)
      expect(ended?.detail).toMatchObject({ signer: "alice", until: UNTIL })
      // params or a guest are refused: it is exactly a host-level no-params job
      expect((yield* runSignedJob(job({ op: "break-glass-disable", guest_id: null, params: { force: true } }))).status).toBe("failed")
    }))
  })

  it.effect("a disable whose stop fails ends nothing and says so", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      yield* runSignedJob(enableJob({ until: UNTIL, reason: REASON }))
      h.unit.failStop = true
      const r = yield* runSignedJob(job({ op: "break-glass-disable", guest_id: null }))
      expect(r.status).toBe("failed")
      expect(r.reason).toContain("stays open")
      expect((yield* sessions)[0]).toHaveLength(1)
    }))
  })

  it.effect("a hub replaying the enable (same job, or the same signed blob under a new job id) never reopens an ended session", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      const original = enableJob({ until: UNTIL, reason: REASON })
      expect((yield* runSignedJob(original)).status).toBe("done")
      yield* runSignedJob(job({ op: "break-glass-disable", guest_id: null }))
      const again = yield* runSignedJob(original)
      expect(again.status).toBe("duplicate")
      const relabelled = yield* runSignedJob({ ...original, id: "job-replayed" })
      expect(relabelled.status).toBe("rejected")
      expect(relabelled.reason).toMatch(/^Replay/)
      expect(h.unit.calls.filter((c) => c === "start")).toHaveLength(1)
      expect(h.unit.state).toBe("inactive")
      const [open, latest] = yield* sessions
      expect(open).toEqual([])
      expect(Option.getOrThrow(latest).endReason).toBe("disabled")
      // and the schema itself keeps an ended row final
      const reopen = yield* Effect.flatMap(BreakGlass, (bg) => Effect.either(bg.store.end(Option.getOrThrow(latest).id, 0, "expired")))
      expect(reopen).toMatchObject({ _tag: "Right", right: false })
    }))
  })
})

describe("break-glass journal recovery", () => {
  const crashAt = (h: ReturnType<typeof harness>, stage: "record" | "start" | "started") =>
    Effect.gen(function*() {
      // an admitted op as a crash leaves it (the nonce and job key spent on admission)
      const saga = yield* beginOperation({
        _tag: "break-glass",
        vmid: null,
        until: UNTIL,
        reason: REASON,
        authorization: { basis: "signed", signer: "alice", fingerprint: "SHA256:test", nonce: "n-1", job: "job-1" }
      })
      yield* saga.started("record")
      yield* Effect.flatMap(BreakGlass, (bg) =>
        bg.store.insert({ id: "bg-crash", opId: saga.id, jobId: "job-1", enabledAtMs: 0, untilMs: 2 * HOUR, signer: "alice", fingerprint: "fp", reason: REASON }))
      yield* saga.done("record")
      if (stage === "record") return saga.id
      yield* saga.started("start")
      h.unit.state = "active"
      if (stage === "start") return saga.id
      yield* saga.done("start")
      return saga.id
    })

  for (const stage of ["record", "start"] as const) {
    it.effect(`a crash after ${stage === "record" ? "record" : "starting the unit, before start was recorded done"}: recovery stops the unit and ends the session 'interrupted'`, () => {
      const h = harness()
      return withBreakGlass(h, Effect.gen(function*() {
        const id = yield* crashAt(h, stage)
        const results = yield* recover
        expect(results.find((r) => r.id === id)?.outcome).toBe("failed")
        expect(h.unit.calls).toContain("stop")
        expect(h.unit.state).toBe("inactive")
        const [open, latest] = yield* sessions
        expect(open).toEqual([])
        expect(Option.getOrThrow(latest).endReason).toBe("interrupted")
        expect(yield* bgAudits).toContain("break-glass-end ended:interrupted")
      }))
    })
  }

  it.effect("a crash after start was recorded done: recovery finishes the op, the session runs to its expiry", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      const id = yield* crashAt(h, "started")
      const results = yield* recover
      expect(results.find((r) => r.id === id)?.outcome).toBe("done")
      expect(h.unit.calls).not.toContain("stop")
      expect((yield* sessions)[0]).toHaveLength(1)
      const fiber = yield* Effect.fork(breakGlassExpiry)
      yield* tick("2 hours")
      expect(h.unit.state).toBe("inactive")
      expect(Option.getOrThrow((yield* sessions)[1]).endReason).toBe("expired")
      yield* Fiber.interrupt(fiber)
    }))
  })

  it.effect("a real interruption mid-start (the unit came up, the process died) is recovered fail-closed", () => {
    const h = harness()
    h.unit.hangAfterStart = true
    return withBreakGlass(h, Effect.gen(function*() {
      const fiber = yield* Effect.fork(runSignedJob(enableJob({ until: UNTIL, reason: REASON })))
      yield* settle
      expect(h.unit.state).toBe("active")
      yield* Fiber.interrupt(fiber)
      h.unit.hangAfterStart = false
      const [op] = yield* opsOf("break-glass")
      expect(op?.status).toBe("in_flight")
      yield* recover
      expect(h.unit.state).toBe("inactive")
      expect(Option.getOrThrow((yield* sessions)[1]).endReason).toBe("interrupted")
    }))
  })

  it.effect("recovery in a process without break-glass (recover --journal) leaves the op in flight for the daemon", () => {
    const h = harness()
    return Effect.gen(function*() {
      const id = yield* withBreakGlass(h, crashAt(h, "record"))
      const results = yield* withoutBreakGlass(h, recover)
      expect(results.find((r) => r.id === id)?.outcome).toBe("in_flight")
      expect(h.unit.calls).not.toContain("stop")
      const after = yield* withBreakGlass(h, recover)
      expect(after.find((r) => r.id === id)?.outcome).toBe("failed")
      expect(h.unit.state).toBe("inactive")
    })
  })

  it.effect("a stop that fails during recovery keeps the op in flight and the session open", () => {
    const h = harness()
    return withBreakGlass(h, Effect.gen(function*() {
      const id = yield* crashAt(h, "start")
      h.unit.failStop = true
      const results = yield* recover
      expect(results.find((r) => r.id === id)?.outcome).toBe("in_flight")
      expect((yield* sessions)[0]).toHaveLength(1)
      h.unit.failStop = false
      expect((yield* recover).find((r) => r.id === id)?.outcome).toBe("failed")
      expect(h.unit.state).toBe("inactive")
    }))
  })
})
