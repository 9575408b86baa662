/**
 * Heal (issue 11): a controller that stops answering is restarted once per window, then reported.
 *
 * Every `heal_interval_seconds` (on the Clock), for each deployed controller whose guest is
 * running: silent means no local-API contact for `contact_window_seconds` (never contacted: since
 * its deploy). A silent one gets ONE `controller-restart` per `heal_window_seconds` (its bootstrap
 * republished with generation + 1, so the guest's path unit restarts it); still silent a contact
 * window after that restart, within the same heal window, it is marked unresponsive (a contact
 * clears the mark) and the host report says so. A stopped guest is not healed, nor one with an
 * op in flight or held for an operator (an interrupted update owns its generation).
 */
import { Clock, Effect, Option } from "effect"
import { type ControllerRecord, ControllerStore } from "../../layers/ControllerStore.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { JournalError, JournalOp, StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { VmId } from "../../schema/ids.js"
import type { OperationOf } from "../../schema/operations.js"
import { type Outcome, reread, settleStarted } from "../control/recover.js"
import { runOperation, type StepError } from "../control/steps.js"
import { ControllerPublisher } from "./update.js"

export interface HealSettings {
  readonly contactWindowSeconds: number
  readonly healWindowSeconds: number
  readonly healIntervalSeconds: number
}

/** From the config's `controllers` block. */
export const healSettingsOf = (c: { readonly contact_window_seconds: number; readonly heal_window_seconds: number; readonly heal_interval_seconds: number }): HealSettings => ({
  contactWindowSeconds: c.contact_window_seconds,
  healWindowSeconds: c.heal_window_seconds,
  healIntervalSeconds: c.heal_interval_seconds
})

export type HealVerdict =
  | { readonly kind: "ok" }
  | { readonly kind: "restart"; readonly reason: string }
  /** Restarted in this window already and silent since: reported (marked once). */
  | { readonly kind: "unresponsive"; readonly reason: string }
  /** Restarted in this window; its grace (one contact window) is not over yet. */
  | { readonly kind: "wait" }

const silentFor = (r: ControllerRecord, now: number) => now - (r.lastContactMs ?? r.deployedMs)

/** The decision for one running guest's controller (pure). */
export const healVerdict = (r: ControllerRecord, now: number, s: HealSettings): HealVerdict => {
  const windowMs = s.contactWindowSeconds * 1000
  if (silentFor(r, now) < windowMs) return { kind: "ok" }
  const heard = r.lastContactMs === null ? "never contacted the local API" : `silent since ${new Date(r.lastContactMs).toISOString()}`
  const restartedInWindow = r.lastRestartMs !== null && now - r.lastRestartMs < s.healWindowSeconds * 1000
  if (!restartedInWindow) return { kind: "restart", reason: `${heard} (contact window ${s.contactWindowSeconds} s)` }
  // the restart is still in its grace: the controller gets a whole contact window to speak
  if (now - r.lastRestartMs! < windowMs) return { kind: "wait" }
  return { kind: "unresponsive", reason: `${heard}; restarted at ${new Date(r.lastRestartMs!).toISOString()} and still silent` }
}

export interface HealAction {
  readonly vmid: VmId
  readonly action: "restarted" | "restart_failed" | "marked_unresponsive"
  readonly reason: string
}

/**
 * Republishes the bootstrap with generation + 1 as a `controller-restart` op. The generation is
 * recorded before the publish, so the store is never behind the file (a later publish always
 * changes the generation the guest sees); the restart is recorded first too, so a failing
 * publish still spends the window's one attempt.
 */
export const restartController = (vmid: VmId, reason: string) =>
  Effect.gen(function*() {
    const store = yield* ControllerStore
    const publisher = yield* ControllerPublisher
    const rec = yield* store.get(vmid)
    if (Option.isNone(rec)) return false
    const r = rec.value
    const generation = r.generation + 1
    yield* runOperation({ _tag: "controller-restart", vmid, generation, reason }, (s) =>
      Effect.gen(function*() {
        yield* s.started("publish", { image: r.image, generation })
        yield* store.recordRestart(vmid, yield* Clock.currentTimeMillis)
        yield* store.recordDeploy({ vmid, image: r.image, generation, tokenId: r.tokenId, mpIndex: r.mpIndex, pins: r.pins })
        const pins = yield* publisher.publish(vmid, { image: r.image, generation })
        yield* store.recordDeploy({ vmid, image: r.image, generation, tokenId: r.tokenId, mpIndex: r.mpIndex, pins })
        yield* s.done("publish")
      }))
    return true
  })

/** Guests an op is in flight on or held for an operator: heal leaves them to that op. */
const busyGuests = Effect.gen(function*() {
  const ops = yield* OpLog
  const inFlight = yield* ops.inFlight
  const held = yield* ops.list({ status: "needs_operator", limit: 1000 })
  return new Set([...inFlight, ...held].map((o) => o.vmid).filter((v): v is number => v !== null))
})

/** One heal pass; returns what it did. A guest whose state cannot be read is left for the next pass. */
export const healPass = (settings: HealSettings): Effect.Effect<
  ReadonlyArray<HealAction>,
  JournalError,
  StoreServices | Proxmox | ControllerStore | ControllerPublisher | GuestQueue
> =>
  Effect.gen(function*() {
    const store = yield* ControllerStore
    const pve = yield* Proxmox
    const queue = yield* GuestQueue
    const records = yield* store.records
    if (records.length === 0) return []
    const guests = yield* Effect.either(pve.listGuests)
    if (guests._tag === "Left") return [] // PVE unreadable: nothing is decided on a guess
    const running = new Set(guests.right.filter((g) => g.status === "running").map((g) => g.vmid as number))
    const out: Array<HealAction> = []
    for (const first of records) {
      if (!running.has(first.vmid)) continue
      // decided again inside the guest's turn: a contact or an update may have come meanwhile
      const acted = yield* queue.serialize(first.vmid)(Effect.gen(function*() {
        if ((yield* busyGuests).has(first.vmid)) return null
        const now = yield* Clock.currentTimeMillis
        const rec = yield* store.get(first.vmid)
        if (Option.isNone(rec)) return null
        const v = healVerdict(rec.value, now, settings)
        if (v.kind === "restart") {
          const done = yield* Effect.either(restartController(first.vmid, v.reason))
          if (done._tag === "Right") return { vmid: first.vmid, action: "restarted" as const, reason: v.reason }
          if (done.left._tag === "JournalError") return yield* Effect.fail(done.left)
          return { vmid: first.vmid, action: "restart_failed" as const, reason: `${v.reason}; the restart failed: ${done.left.message}` }
        }
        if (v.kind === "unresponsive" && rec.value.unresponsiveSinceMs === null) {
          yield* store.markUnresponsive(first.vmid, now)
          return { vmid: first.vmid, action: "marked_unresponsive" as const, reason: v.reason }
        }
        return null
      }))
      if (acted !== null) out.push(acted)
    }
    return out
  })

/** The heal loop: a pass every `heal_interval_seconds`; a store failure skips that pass. */
export const healLoop = (settings: HealSettings) =>
  Effect.forever(Effect.zipRight(
    healPass(settings).pipe(Effect.catchAll(() => Effect.succeed([]))),
    Effect.sleep(settings.healIntervalSeconds * 1000)
  ))

// ---------------------------------------------------------------------------------------------
// What the host report says about controllers

export interface ControllerProblem {
  readonly vmid: VmId
  readonly state: "unresponsive" | "unhealthy" | "silent"
  readonly reason: string
}

/** Controllers that are unresponsive (heal gave up), unhealthy (they say so) or silent, with reasons (pure). */
export const controllerProblems = (records: ReadonlyArray<ControllerRecord>, now: number, s: HealSettings): ReadonlyArray<ControllerProblem> =>
  [...records].sort((a, b) => a.vmid - b.vmid).flatMap((r): ReadonlyArray<ControllerProblem> => {
    if (r.unresponsiveSinceMs !== null) {
      return [{
        vmid: r.vmid,
        state: "unresponsive",
        reason: `no local-API contact since ${r.lastContactMs === null ? "its deploy" : new Date(r.lastContactMs).toISOString()}, ` +
          `still silent after a heal restart (unresponsive since ${new Date(r.unresponsiveSinceMs).toISOString()})`
      }]
    }
    if (silentFor(r, now) >= s.contactWindowSeconds * 1000) {
      return [{ vmid: r.vmid, state: "silent", reason: `no local-API contact for over ${s.contactWindowSeconds} s` }]
    }
    if (r.health === "unhealthy") return [{ vmid: r.vmid, state: "unhealthy", reason: r.healthDetail ?? "the controller reports unhealthy" }]
    return []
  })

// ---------------------------------------------------------------------------------------------
// Recovery

/**
 * An interrupted restart: no PVE task to settle; done if its publish step was, else failed (the
 * store's generation was raised before the publish, so the next pass's restart is seen).
 */
export const recoverControllerRestart = (op: JournalOp, _typed: OperationOf<"controller-restart">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    yield* settleStarted(op)
    const after = yield* reread(op)
    if (after.steps.some((s) => s.name === "publish" && s.status === "done")) {
      yield* ops.finish(op.id, "done", "recovered: the restart had been published")
      return { outcome: "done", detail: "restart published" }
    }
    yield* ops.finish(op.id, "failed", "recovered: interrupted before the restart was published; the next heal pass decides again")
    return { outcome: "failed", detail: "interrupted; the next heal pass decides again" }
  })
