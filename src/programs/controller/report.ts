/**
 * The host report's view of the controllers (issue 11): each deployed controller as it last
 * reported itself through the local API, and what heal makes of it (silent, unresponsive,
 * unhealthy, with the reason). Read with serviceOption, so a graph without a controller store
 * reports none.
 */
import { Effect, Option } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { type ControllerRecord, ControllerStore } from "../../layers/ControllerStore.js"
import { ControllersConfig } from "../../schema/config.js"
import type { ReportVersions } from "../../schema/hub.js"
import { controllerProblems, type HealSettings, healSettingsOf } from "./heal.js"

type ReportController = ReportVersions["controllers"][number]

export const reportControllers = (records: ReadonlyArray<ControllerRecord>, now: number, heal: HealSettings): Array<ReportController> => {
  const problems = new Map(controllerProblems(records, now, heal).map((p) => [p.vmid as number, p]))
  return [...records].sort((a, b) => a.vmid - b.vmid).map((r) => {
    const problem = problems.get(r.vmid)
    return {
      vmid: r.vmid,
      version: r.version,
      image: r.image,
      state: problem?.state ?? "ok",
      last_contact_at: r.lastContactMs === null ? null : new Date(r.lastContactMs).toISOString(),
      detail: problem?.reason ?? r.healthDetail
    }
  })
}

/** What the report lists; a failing store reads as none (the report says the store's health elsewhere). */
export const controllersForReport = (now: number) =>
  Effect.gen(function*() {
    const store = yield* Effect.serviceOption(ControllerStore)
    if (Option.isNone(store)) return []
    const config = yield* Effect.serviceOption(AgentConfig)
    const heal = healSettingsOf(Option.match(config, { onNone: () => ControllersConfig.make({}), onSome: (c) => c.file.controllers }))
    const records = yield* store.value.records.pipe(Effect.orElseSucceed(() => []))
    return reportControllers(records, now, heal)
  })
