/** `audit verify`: recompute the audit log's hash chain; exit 1 when any entry was edited or deleted. */
import { Console, Effect, type Option } from "effect"
import { Journal } from "../../layers/Journal.js"
import { CliFailure, toCliFailure } from "./failure.js"
import { stateLayer } from "./journal.js"

export const auditVerify = (o: { readonly config: Option.Option<string>; readonly json: boolean }) =>
  Effect.gen(function*() {
    const verdict = yield* Effect.flatMap(Journal, (j) => j.verifyAudit)
    yield* Console.log(
      o.json
        ? JSON.stringify(verdict)
        : verdict.ok
        ? `audit log intact: ${verdict.entries} entries`
        : `audit log BROKEN at entry ${verdict.brokenAtSeq}: ${verdict.reason}`
    )
    if (!verdict.ok) return yield* new CliFailure({ code: 1, message: `audit chain broken at entry ${verdict.brokenAtSeq}` })
  }).pipe(Effect.provide(stateLayer(o.config, "none")), Effect.mapError((e) => toCliFailure(e)))
