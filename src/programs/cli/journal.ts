/** `journal list`: recent journaled operations from the state database, newest first. */
import { Console, Effect, Layer, type Option } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { Journal, JournalLive } from "../../layers/Journal.js"
import type { ConfigMode } from "../../schema/config.js"
import { toCliFailure } from "./failure.js"
import { intInRange } from "./input.js"

/** The journal over the configured state database (audit verify uses it too). */
export const stateLayer = (path: Option.Option<string>, mode: ConfigMode) =>
  JournalLive.pipe(Layer.provide(DatabaseLive), Layer.provideMerge(AgentConfigLayer.layer({ path, mode })))

export const MAX_JOURNAL_LIMIT = 10_000

export const journalList = (o: { readonly limit: number; readonly config: Option.Option<string>; readonly json: boolean }) =>
  Effect.gen(function*() {
    const limit = yield* intInRange("--limit", o.limit, 1, MAX_JOURNAL_LIMIT)
    const ops = yield* Effect.flatMap(Journal, (j) => j.list({ limit }))
    if (o.json) return yield* Console.log(JSON.stringify(ops, null, 2))
    for (const op of ops) {
      yield* Console.log(
        `${new Date(op.createdAtMs).toISOString()} ${op.status.padEnd(11)} ${op.kind.padEnd(14)} ${op.vmid ?? "-"} ${op.id}` +
          (op.detail === null ? "" : `  ${op.detail}`)
      )
    }
  }).pipe(Effect.provide(stateLayer(o.config, "none")), Effect.mapError((e) => toCliFailure(e)))
