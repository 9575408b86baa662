/**
 * Break-glass enable, disable, end and journal recovery (issue 14, SPEC §15, §7b).
 *
 * Enable: a signed `break-glass-enable` job (destructive class in the gate: the signature is bound
 * to op + host + params), host-level, params exactly {until, reason}. Refused (typed, audited, its
 * nonce unspent) without the customer's consent in the desired state, with `until` not in the
 * future or further than break_glass.max_hours away, or while a session is open (an operator
 * disables first; extending is disable + a new enable). Otherwise one journaled op `break-glass`
 * admitted with the signature's nonce and the job key: `record` writes the session row, THEN
 * `start` starts the unit, so a crash after the start never leaves an unrecorded open door.
 *
 * Ending (expiry, consent withdrawn, disable, recovery): the unit is stopped FIRST; the session is
 * marked ended only after the stop succeeded. A failed stop leaves it open (and says so); the
 * expiry fiber retries it every check.
 *
 * Attacker notes. A hostile hub cannot enable (no operator signature), cannot replay an enable
 * (the nonce and the job key are spent on admission; an ended row is final by trigger), cannot
 * stretch it (until is inside the signed params, bounded by max_hours, and the unit's own
 * RuntimeMaxSec cuts it regardless); it can disable early (allowed: it only reduces access) or
 * withhold a desired state (consent stays as last fetched; expiry does not need the hub). The
 * operator's `reason` is signed and length/character-bounded; no secret is ever handled here.
 */
import { Clock, Effect, Either, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { AuditLog } from "../../layers/AuditLog.js"
import type { JournalOp } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import type { JsonObject } from "../../schema/json.js"
import type { OperationOf, SignedAuthorization } from "../../schema/operations.js"
import type { Grant } from "../control/gate.js"
import { admissionOf, BadJob, runOperation } from "../control/steps.js"
import { BreakGlass, BreakGlassRefused, type BreakGlassShape, BreakGlassUnitFailed } from "./service.js"
import { type EndReason, isoSeconds, type Session } from "./store.js"

const UNTIL_PATTERN = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/

/** No control characters (log lines, the audit log, the status output), 1..200 characters. */
const PrintableReason = Schema.String.pipe(
  Schema.filter((s) => {
    const n = [...s].length
    return n >= 1 && n <= 200 && !/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(s)
  }, { message: () => "reason is 1 to 200 printable characters" })
)

/** The signed params, strictly: an extra key is a refusal, never ignored. */
export const EnableParams = Schema.Struct({
  until: Schema.String.pipe(Schema.filter((s) => UNTIL_PATTERN.test(s) && isoSeconds(Date.parse(s)) === s, {
    message: () => "until is an ISO 8601 UTC time YYYY-MM-DDTHH:MM:SSZ"
  })),
  reason: PrintableReason
})
export type EnableParams = typeof EnableParams.Type

export const decodeEnableParams = (params: JsonObject): Option.Option<EnableParams> =>
  Schema.decodeUnknownOption(EnableParams, { onExcessProperty: "error" })(params)

const withService = <A, E, R>(what: string, f: (bg: BreakGlassShape) => Effect.Effect<A, E, R>): Effect.Effect<A, E | BadJob, R> =>
  Effect.flatMap(Effect.serviceOption(BreakGlass), (svc): Effect.Effect<A, E | BadJob, R> =>
    Option.isNone(svc)
      ? Effect.fail(new BadJob({ message: `${what} needs the daemon's break-glass service, which this process does not run` }))
      : f(svc.value))

const unitFailed = (step: string) => (e: { readonly message: string }) =>
  new BreakGlassUnitFailed({ message: `break-glass unit ${step} failed: ${e.message}` })

const sessionDetail = (s: Session) => ({
  session: s.id,
  signer: s.signer,
  fingerprint: s.fingerprint,
  since: isoSeconds(s.enabledAtMs),
  until: isoSeconds(s.untilMs)
})

/**
 * Ends one open session: stop the unit, then mark the row ended. A failed stop is noted on the
 * row (audited on its first failure) and fails; the session stays open. Call inside `exclusive`.
 */
export const endSession = (bg: BreakGlassShape, s: Session, reason: EndReason, by: string) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const stopped = yield* Effect.either(bg.unit.stop)
    if (Either.isLeft(stopped)) {
      const message = `stop failed: ${stopped.left.message}`
      if (s.stopError === null) {
        yield* auditLog.audit({
          actor: by,
          action: "break-glass-end",
          target: null,
          decision: "stop_failed",
          detail: { ...sessionDetail(s), end_reason: reason, message }
        })
      }
      yield* bg.store.noteStopError(s.id, message)
      return yield* unitFailed(`stop (session ${s.id} stays open, retried)`)(stopped.left)
    }
    const now = yield* Clock.currentTimeMillis
    const ended = yield* bg.store.end(s.id, now, reason)
    if (ended) {
      yield* auditLog.audit({ actor: by, action: "break-glass-end", target: null, decision: `ended:${reason}`, detail: sessionDetail(s) })
      yield* Effect.logInfo(`break-glass session ${s.id} ended (${reason}); the unit is stopped`)
    }
    return ended
  })

/**
 * Runs an approved break-glass-enable (see the module comment). `params` are the signed op's own,
 * `authorization` its signer; refusals are audited and fail with BreakGlassRefused before anything
 * is admitted, so the nonce stays unspent.
 */
export const enableBreakGlass = (params: JsonObject, grant: Grant, authorization: SignedAuthorization, key: string | null) =>
  withService("break-glass-enable", (bg) =>
    bg.exclusive(Effect.gen(function*() {
      const auditLog = yield* AuditLog
      const who = { signer: authorization.signer, fingerprint: authorization.fingerprint, job: authorization.job }
      const refuse = (reason: BreakGlassRefused["reason"], message: string, until: string | null) =>
        Effect.zipRight(
          auditLog.audit({ actor: "break-glass", action: "break-glass-enable", target: null, decision: `refused:${reason}`, detail: { ...who, until, message } }),
          Effect.fail(new BreakGlassRefused({ reason, message }))
        )
      const p = decodeEnableParams(params)
      if (Option.isNone(p)) {
        return yield* refuse("bad_params", "break-glass-enable is host-level (guest_id null) with params exactly {until: YYYY-MM-DDTHH:MM:SSZ, reason: 1..200 printable characters}", null)
      }
      const { until, reason } = p.value
      const untilMs = Date.parse(until)
      const consent = yield* bg.consent
      if (!Option.getOrElse(consent, () => false)) {
        return yield* refuse(
          "no_consent",
          Option.isNone(consent)
            ? "no desired state is known yet, so the customer's consent (break_glass_consent) is not given"
            : "the customer's consent (break_glass_consent in the desired state) is not given",
          until
        )
      }
      const now = yield* Clock.currentTimeMillis
      if (untilMs <= now) return yield* refuse("until_past", `until ${until} is not in the future (now ${isoSeconds(now)})`, until)
      if (untilMs - now > bg.maxHours * 3_600_000) {
        return yield* refuse("too_long", `until ${until} is more than break_glass.max_hours (${bg.maxHours} h) away`, until)
      }
      const open = yield* bg.store.open
      if (open.length > 0) {
        const s = open[0]!
        return yield* refuse(
          "session_active",
          `a break-glass session is already open (${s.id}, by ${s.signer}, until ${isoSeconds(s.untilMs)}): disable it first (to extend: disable, then a new signed enable)`,
          until
        )
      }
      const id = `bg-${randomBytes(8).toString("hex")}`
      yield* runOperation({ _tag: "break-glass", vmid: null, until, reason, authorization }, (saga) =>
        Effect.gen(function*() {
          yield* saga.started("record", { session: id })
          const enabledAt = yield* Clock.currentTimeMillis
          yield* bg.store.insert({
            id,
            opId: saga.id,
            jobId: authorization.job,
            enabledAtMs: enabledAt,
            untilMs,
            signer: authorization.signer,
            fingerprint: authorization.fingerprint,
            reason
          })
          yield* saga.done("record", { session: id })
          yield* saga.started("start")
          const started = yield* Effect.either(bg.unit.start)
          if (Either.isLeft(started)) {
            // fail closed: a half-started unit is stopped and the session ends; if even the stop
            // fails the session stays open and the expiry fiber keeps stopping it
            const rows = yield* bg.store.byOp(saga.id)
            if (Option.isSome(rows)) yield* Effect.ignore(endSession(bg, rows.value, "start_failed", "break-glass"))
            return yield* unitFailed("start")(started.left)
          }
          yield* saga.done("start")
        }), admissionOf(grant, key))
      yield* auditLog.audit({
        actor: "break-glass",
        action: "break-glass-enable",
        target: null,
        decision: "enabled",
        detail: { ...who, session: id, until, reason }
      })
      yield* Effect.logInfo(`break-glass enabled: session ${id} by ${authorization.signer} until ${until}`)
      return { session: id, until }
    })))

/**
 * Ends the open session now (unsigned: it only closes access), stopping the unit first — also
 * when no session is open (a unit left running is closed). `by` names who asked (the job, or the
 * local user of the CLI). Fails with BreakGlassUnitFailed when the stop fails (nothing is ended).
 */
export const disableBreakGlass = (by: string) => Effect.flatMap(BreakGlass, (bg) => disableWith(bg, by))

const disableWith = (bg: BreakGlassShape, by: string) =>
  bg.exclusive(Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const open = yield* bg.store.open
    if (open.length === 0) {
      yield* bg.unit.stop.pipe(Effect.mapError(unitFailed("stop")))
      yield* auditLog.audit({ actor: by, action: "break-glass-disable", target: null, decision: "no_session", detail: {} })
      return { ended: [] as ReadonlyArray<string> }
    }
    const ended: Array<string> = []
    for (const s of open) {
      if (yield* endSession(bg, s, "disabled", by)) ended.push(s.id)
    }
    return { ended: ended as ReadonlyArray<string> }
  }))

/** The job runner's entry for `break-glass-disable`: as disableBreakGlass, BadJob without the service. */
export const disableBreakGlassJob = (jobId: string) => withService("break-glass-disable", (bg) => disableWith(bg, `job:${jobId}`))

/**
 * Journal recovery of `break-glass` (exhaustive rule, src/programs/control/recover.ts): `start`
 * recorded done ⇒ done (the expiry fiber owns the session from here). Otherwise the unit may or
 * may not have been started: it is stopped (fail closed) and the op's session, if its row was
 * written, ends "interrupted"; the op ends failed (the operator signs again). Without the
 * break-glass service in this process, or when the stop fails, the op stays in flight for the
 * next recovery (the daemon's).
 */
export const recoverBreakGlass = (op: JournalOp, _typed: OperationOf<"break-glass">) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    if (op.steps.some((s) => s.name === "start" && s.status === "done")) {
      yield* ops.finish(op.id, "done", "recovered: the unit had started; the expiry fiber ends the session")
      return { outcome: "done" as const, detail: "the unit had started; the session runs to its expiry" }
    }
    const svc = yield* Effect.serviceOption(BreakGlass)
    if (Option.isNone(svc)) {
      return { outcome: "in_flight" as const, detail: "break-glass unit control is not in this process; left for the daemon's recovery" }
    }
    const bg = svc.value
    return yield* bg.exclusive(Effect.gen(function*() {
      const row = yield* bg.store.byOp(op.id)
      const open = Option.filter(row, (s) => s.endedAtMs === null)
      if (Option.isSome(open)) {
        const ended = yield* Effect.either(endSession(bg, open.value, "interrupted", "recovery"))
        if (Either.isLeft(ended)) {
          return { outcome: "in_flight" as const, detail: `${ended.left.message}; still in flight` }
        }
      } else {
        const stopped = yield* Effect.either(bg.unit.stop)
        if (Either.isLeft(stopped)) return { outcome: "in_flight" as const, detail: `break-glass unit stop failed: ${stopped.left.message}; still in flight` }
      }
      yield* ops.finish(op.id, "failed", "recovered: interrupted before the unit was known started; unit stopped, session ended")
      return { outcome: "failed" as const, detail: "interrupted before the start was recorded; unit stopped, session ended (interrupted)" }
    }))
  })

