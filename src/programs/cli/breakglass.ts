/**
 * `break-glass status [--json]` and `break-glass disable` (issue 14). Status reads the session
 * store and asks systemd for the unit's state; exit 0 when they agree (closed, or open within its
 * time), 1 when the door is open without an open session or past its `until` (a stop that failed),
 * or the unit's state cannot be read. Disable needs no signature (it only closes access): it stops
 * the unit through Privileged (root: direct; the service user: sudo) and ends the open session,
 * audited with the local user's name. It does not take the state lock: the daemon may be running,
 * and an end is idempotent on both sides.
 */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { Clock, Console, Effect, Either, Layer, Option } from "effect"
import { userInfo } from "node:os"
import * as AgentConfigLayer from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { JournalLive } from "../../layers/Journal.js"
import { PrivilegedBreakGlass, PrivilegedBreakGlassLive } from "../../layers/Privileged.js"
import { disableBreakGlass } from "../breakglass/enable.js"
import { breakGlassLayer } from "../breakglass/service.js"
import { isoSeconds, makeStore } from "../breakglass/store.js"
import { CliFailure, toCliFailure } from "./failure.js"

type ConfigOpt = Option.Option<string>

const baseLayer = (path: ConfigOpt) =>
  Layer.mergeAll(DatabaseLive, PrivilegedBreakGlassLive).pipe(
    Layer.provideMerge(AgentConfigLayer.layer({ path, mode: "none" })),
    Layer.provide(NodeCommandExecutor.layer)
  )

const whoAmI = (): string => {
  try {
    return userInfo().username.replace(/[^A-Za-z0-9._-]/g, "?").slice(0, 32)
  } catch {
    return `uid-${process.getuid?.() ?? "unknown"}`
  }
}

export const breakGlassStatus = (o: { readonly config: ConfigOpt; readonly json: boolean }) =>
  Effect.gen(function*() {
    const store = yield* makeStore
    const unit = yield* PrivilegedBreakGlass
    const open = yield* store.open
    const latest = yield* store.latest
    const state = yield* Effect.either(unit.state)
    const now = yield* Clock.currentTimeMillis
    const session = open[0]
    const unitState = Either.isRight(state) ? state.right : "unknown"
    const unitOn = Either.isRight(state) && state.right !== "inactive" && state.right !== "failed"
    const problems: Array<string> = []
    if (Either.isLeft(state)) problems.push(`the unit's state cannot be read: ${state.left.message}`)
    if (session === undefined && unitOn) problems.push(`the unit is ${unitState} without an open session (the daemon stops it at its next check)`)
    if (session !== undefined && session.untilMs <= now) {
      problems.push(`session ${session.id} is past its until ${isoSeconds(session.untilMs)} and still open${session.stopError === null ? "" : ` (${session.stopError})`}`)
    }
    const last = Option.filter(latest, (s) => s.endedAtMs !== null)
    const body = {
      active: session !== undefined,
      unit: unitState,
      session: session === undefined ? null : {
        id: session.id,
        since: isoSeconds(session.enabledAtMs),
        until: isoSeconds(session.untilMs),
        signer: session.signer,
        fingerprint: session.fingerprint,
        reason: session.reason,
        job: session.jobId,
        stop_error: session.stopError
      },
      last_ended: Option.isNone(last) || session !== undefined ? null : {
        id: last.value.id,
        since: isoSeconds(last.value.enabledAtMs),
        until: isoSeconds(last.value.untilMs),
        ended_at: isoSeconds(last.value.endedAtMs ?? 0),
        end_reason: last.value.endReason,
        signer: last.value.signer
      },
      problems
    }
    if (o.json) {
      yield* Console.log(JSON.stringify(body, null, 2))
    } else if (session !== undefined) {
      yield* Console.log(`break-glass OPEN: session ${session.id} by ${session.signer} (${session.fingerprint})`)
      yield* Console.log(`  since ${isoSeconds(session.enabledAtMs)} until ${isoSeconds(session.untilMs)}; unit ${unitState}`)
      yield* Console.log(`  reason: ${session.reason}`)
    } else {
      yield* Console.log(`break-glass closed; unit ${unitState}`)
      if (body.last_ended !== null) {
        const l = body.last_ended
        yield* Console.log(`  last session ${l.id} by ${l.signer}: ${l.since} → ended ${l.ended_at} (${l.end_reason})`)
      }
    }
    if (!o.json) for (const p of problems) yield* Console.log(`  PROBLEM: ${p}`)
    if (problems.length > 0) return yield* new CliFailure({ code: 1, message: problems[0]! })
  }).pipe(
    Effect.provide(baseLayer(o.config)),
    Effect.mapError((e) => toCliFailure(e))
  )

export const breakGlassDisable = (o: { readonly config: ConfigOpt; readonly json: boolean }) =>
  Effect.gen(function*() {
    const r = yield* disableBreakGlass(`cli:${whoAmI()}`)
    if (o.json) return yield* Console.log(JSON.stringify({ stopped: true, ended: r.ended }))
    yield* Console.log(
      r.ended.length === 0
        ? "break-glass unit stopped; no session was open"
        : `break-glass unit stopped; session ${r.ended.join(", ")} ended (disabled)`
    )
  }).pipe(
    // not the daemon: no desired state here, so no consent (an end needs none)
    Effect.provide(breakGlassLayer(Effect.succeed(Option.none())).pipe(Layer.provideMerge(JournalLive))),
    Effect.provide(baseLayer(o.config)),
    Effect.mapError((e) => toCliFailure(e))
  )

