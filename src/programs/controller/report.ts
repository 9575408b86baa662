/**
 * The host report's view of the controllers (issue 11): each deployed controller as it last
 * reported itself through the local API, and whether heal considers it silent or unresponsive.
 * Read with serviceOption, so a graph without a controller store reports none.
 */
import { Effect, Option } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { type ControllerRecord, ControllerStore } from "../../layers/ControllerStore.js"
import type { ReportVersions } from "../../schema/hub.js"

type ReportController = ReportVersions["controllers"][number]

const DEFAULT_CONTACT_WINDOW_MS = 600_000

export const controllerState = (r: ControllerRecord, now: number, windowMs: number): ReportController["state"] => {
  if (r.unresponsiveSinceMs !== null) return "unresponsive"
  const heard = r.lastContactMs ?? r.deployedMs
  if (now - heard > windowMs) return "silent"
  return r.health === "unhealthy" ? "unhealthy" : "ok"
}

export const reportControllers = (records: ReadonlyArray<ControllerRecord>, now: number, windowMs: number): Array<ReportController> =>
  [...records].sort((a, b) => a.vmid - b.vmid).map((r) => ({
    vmid: r.vmid,
    version: r.version,
    image: r.image,
    state: controllerState(r, now, windowMs),
    last_contact_at: r.lastContactMs === null ? null : new Date(r.lastContactMs).toISOString(),
    detail: r.healthDetail
  }))

/** What the report lists; a failing store reads as none (the report says the store's health elsewhere). */
export const controllersForReport = (now: number) =>
  Effect.gen(function*() {
    const store = yield* Effect.serviceOption(ControllerStore)
    if (Option.isNone(store)) return []
    const config = yield* Effect.serviceOption(AgentConfig)
    const windowMs = Option.match(config, {
      onNone: () => DEFAULT_CONTACT_WINDOW_MS,
      onSome: (c) => c.file.controllers.contact_window_seconds * 1000
    })
    const records = yield* store.value.records.pipe(Effect.orElseSucceed(() => []))
    return reportControllers(records, now, windowMs)
  })
