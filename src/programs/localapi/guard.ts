/**
 * The local API may listen before the journal is recovered, but it may not mutate until then:
 * recovery reads every op in flight as orphaned by a crash, so an api-snapshot running beside it
 * would be "recovered" while it runs. Nor while the state store is unhealthy (the daemon makes
 * no change at all then). Reads and heartbeats pass; snapshot, rollback and backup answer 503.
 */
import { Effect, Layer } from "effect"
import { ApiFailure } from "../../schema/localApi.js"
import { LocalApiBackend, type LocalApiBackendShape } from "./backend.js"

const notYet = Effect.fail(new ApiFailure({ code: "unavailable", message: "the agent is starting or its state store is failing; nothing was changed, try again later" }))

export const guardMutations = (inner: LocalApiBackendShape, mayMutate: Effect.Effect<boolean>): LocalApiBackendShape => {
  const guarded = <A>(run: Effect.Effect<A, ApiFailure>): Effect.Effect<A, ApiFailure> =>
    Effect.flatMap(mayMutate, (ok) => (ok ? run : notYet))
  return {
    ...inner,
    snapshot: (vmid, req) => guarded(inner.snapshot(vmid, req)),
    rollback: (vmid, req) => guarded(inner.rollback(vmid, req)),
    backup: (vmid) => guarded(inner.backup(vmid))
  }
}

/** The backend below, with its mutations held until `mayMutate`. */
export const guardedBackend = <E, R>(inner: Layer.Layer<LocalApiBackend, E, R>, mayMutate: Effect.Effect<boolean>) =>
  Layer.effect(LocalApiBackend, Effect.map(LocalApiBackend, (b) => guardMutations(b, mayMutate))).pipe(Layer.provide(inner))
