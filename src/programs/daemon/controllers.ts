/**
 * The daemon's controller side (issue 11), on a host whose config has a `local_api` block: the
 * services (tokens, controller store, certificate, the local API server and its backend, the
 * bootstrap context, deploy/update/undeploy for reconcile and jobs, the republisher) and the
 * fibers started once the journal is recovered (heal, certificate rotation).
 *
 * The server listens from the start (the self-update health gate asks it early), but its
 * backend mutates nothing until recovery has run and while the store is unhealthy (guard.ts).
 */
import { Clock, Duration, Effect, Layer, Option, type Ref } from "effect"
import type { DaemonState } from "./loop.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { AgentConfig } from "../../layers/Config.js"
import { ControllerStore, ControllerStoreLive } from "../../layers/ControllerStore.js"
import { LocalApiLive, LocalApiSettingsLive } from "../../layers/LocalApi.js"
import { LocalCert, LocalCertFromConfig, readyToPromote } from "../../layers/LocalCert.js"
import { LocalTokensLive } from "../../layers/LocalTokens.js"
import type { DesiredState } from "../../schema/desired.js"
import { healLoop, healSettingsOf } from "../controller/heal.js"
import { ControllerContextLive, ControllerOpsLive } from "../controller/live.js"
import { ControllerPublisher, ControllerPublisherLive } from "../controller/update.js"
import { LocalApiBackendLive } from "../localapi/backendLive.js"
import { guardedBackend } from "../localapi/guard.js"

export interface ControllerGates {
  /** The desired state while changes are allowed (the same getter the protection fibers use). */
  readonly desired: Effect.Effect<Option.Option<DesiredState>>
  /** Recovered and the store healthy: the local API's mutations wait for it. */
  readonly mayMutate: Effect.Effect<boolean>
}

/** The daemon's gates from its state: the same rule the protection fibers follow. */
export const daemonGates = (state: Ref.Ref<DaemonState>): ControllerGates => ({
  desired: Effect.map(state.get, (s) => (s.store.healthy && s.recovered ? s.desired : Option.none())),
  mayMutate: Effect.map(state.get, (s) => s.store.healthy && s.recovered)
})

/** Every controller service over the daemon's (Proxmox, the stores, GuestQueue, Privileged, protection). */
export const controllersLayer = (gates: ControllerGates) =>
  Layer.unwrapEffect(Effect.map(AgentConfig, ({ file }) =>
    ControllerOpsLive.pipe(
      Layer.provideMerge(ControllerPublisherLive),
      Layer.provideMerge(ControllerContextLive),
      Layer.provideMerge(LocalApiLive()),
      Layer.provideMerge(guardedBackend(LocalApiBackendLive({ desired: gates.desired, maxSnapshots: file.controllers.max_snapshots }), gates.mayMutate)),
      Layer.provideMerge(Layer.mergeAll(LocalTokensLive, ControllerStoreLive, LocalCertFromConfig, LocalApiSettingsLive))
    )))

/** How long before the current certificate expires its successor is staged. */
export const ROTATE_BEFORE_EXPIRY_MS = 365 * 86_400_000

/**
 * A staged certificate is promoted once every deployed guest has been given its pin: guests
 * whose bootstrap lacks it are republished first (same image, next generation).
 */
export const certRotationPass = Effect.gen(function*() {
  const cert = yield* LocalCert
  const store = yield* ControllerStore
  const publisher = yield* ControllerPublisher
  const now = yield* Clock.currentTimeMillis
  const before = yield* cert.state
  if (before.next === null) {
    // a year before the current certificate expires, the next one is staged (then published)
    if (Date.parse(before.current.notAfter) - now > ROTATE_BEFORE_EXPIRY_MS) return "nothing staged" as const
    yield* cert.stage
    yield* Effect.logInfo("local API certificate: a year from expiry, the next one is staged; every guest gets its pin before it is served")
  }
  const state = yield* cert.state
  if (state.next === null) return "nothing staged" as const
  const next = state.next.pin
  const queue = yield* GuestQueue
  for (const first of yield* store.records) {
    if (first.pins.some((p) => p.spki_sha256 === next.spki_sha256)) continue
    // in the guest's turn, read again: an update or a redeploy owns the generation meanwhile
    yield* queue.serialize(first.vmid)(Effect.gen(function*() {
      const now = yield* store.get(first.vmid)
      if (Option.isNone(now) || now.value.pins.some((p) => p.spki_sha256 === next.spki_sha256)) return
      const r = now.value
      const pins = yield* publisher.publish(r.vmid, { image: r.image, generation: r.generation + 1 })
      yield* store.recordDeploy({ vmid: r.vmid, image: r.image, generation: r.generation + 1, tokenId: r.tokenId, mpIndex: r.mpIndex, pins })
    }))
  }
  const records = yield* store.records
  if (!readyToPromote(next.spki_sha256, records.map((r) => r.pins))) return "waiting" as const
  yield* cert.promote
  return "promoted" as const
})

/** Forked beside the hub loop once recovery has run: heal, and a certificate rotation in progress. */
export const startControllers = Effect.gen(function*() {
  const { file } = yield* AgentConfig
  const heal = healSettingsOf(file.controllers)
  yield* Effect.forkScoped(healLoop(heal))
  yield* Effect.forkScoped(Effect.forever(Effect.zipRight(
    certRotationPass.pipe(Effect.catchAllCause((c) => Effect.logWarning("local API certificate rotation pass failed", c))),
    Effect.sleep(Duration.seconds(heal.healIntervalSeconds))
  )))
  yield* Effect.logInfo("controllers started: local API, heal, certificate rotation")
})
