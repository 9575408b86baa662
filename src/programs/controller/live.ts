/**
 * The daemon's controller services (issue 11), from its config and the running local API:
 * ControllerContext (what every bootstrap carries: host id, hub, the local API's URL and pins,
 * registry credentials) and ControllerOps (deploy, update, undeploy for reconcile and jobs).
 */
import { Clock, Effect, Either, Layer } from "effect"
import { OpLog } from "../../layers/OpLog.js"
import type { VmId } from "../../schema/ids.js"
import { decodeOperation } from "../../schema/operations.js"
import { AgentConfig } from "../../layers/Config.js"
import { LocalApi } from "../../layers/LocalApi.js"
import { ControllerContext, type ControllerContextShape } from "./context.js"
import { ControllerStore } from "../../layers/ControllerStore.js"
import { deployController, undeployController } from "./deploy.js"
import { ControllerOpFailed, ControllerOps, type ControllerOpsShape } from "./ops.js"
import { updateController } from "./update.js"
import { reidentifyController } from "./reidentify.js"

/** After a rolled-back policy update, no other policy update of that controller for this long. */
export const UPDATE_COOLDOWN_MS = 6 * 3600 * 1000

/** `https://host:port`, with an IPv6 literal bracketed. */
export const httpsUrl = (host: string, port: number): string => `https://${host.includes(":") ? `[${host}]` : host}:${port}`

export const ControllerContextLive: Layer.Layer<ControllerContext, never, AgentConfig | LocalApi> = Layer.effect(
  ControllerContext,
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    const api = yield* LocalApi
    const registry = file.controllers.registry
    return {
      hostId: file.host_id ?? "unknown-host",
      hubUrl: file.hub?.url ?? null,
      // advertise_url when the guests reach the host by another name; else the address as bound
      localApiUrl: file.local_api?.advertise_url ?? httpsUrl(api.host, api.port),
      pins: api.pins,
      registry: registry === undefined ? null : { server: registry.server, username: registry.username, password: registry.password }
    } satisfies ControllerContextShape
  })
)

/**
 * ControllerOps over the sagas: deploy (which revokes any stale token of the vmid once its own
 * is committed), update (policy or signed; anything but a commit is a failure the caller
 * reports), undeploy (tokens first). The caller holds the guest's queue turn.
 */
export const ControllerOpsLive = Layer.effect(
  ControllerOps,
  Effect.gen(function*() {
    const context = yield* Effect.context<DeployServicesOf | UpdateServicesOf | ReidentifyServicesOf>()
    const { file } = yield* AgentConfig
    const store = yield* ControllerStore
    const ops = yield* OpLog
    const failed = (what: string) => (e: { readonly message: string }) => new ControllerOpFailed({ message: `${what}: ${e.message}` })
    const settings = { healthDeadlineSeconds: file.controllers.health_deadline_seconds }
    return {
      view: Effect.gen(function*() {
        const rs = yield* store.records
        // the newest update per guest: a rolled-back one is not retried for the same image
        const failedUpdates = new Map<VmId, { readonly image: string; readonly recent: boolean }>()
        const now = yield* Clock.currentTimeMillis
        const ended = [...(yield* ops.list({ status: "rolled_back", limit: 200 })), ...(yield* ops.list({ status: "done", limit: 200 }))]
          .filter((o) => o.kind === "controller-update")
          .sort((a, b) => a.createdAtMs - b.createdAtMs)
        for (const o of ended) {
          const typed = decodeOperation(o.payload)
          if (Either.isLeft(typed) || typed.right._tag !== "controller-update") continue
          if (o.status === "rolled_back") {
            failedUpdates.set(typed.right.vmid, { image: typed.right.toImage, recent: now - o.updatedAtMs < UPDATE_COOLDOWN_MS })
          }
          else failedUpdates.delete(typed.right.vmid)
        }
        return { deployed: new Map(rs.map((r) => [r.vmid, r.image] as const)), repositories: file.controllers.repositories, failedUpdates }
      }).pipe(Effect.mapError(failed("the controller store cannot be read"))),
      deploy: (vmid, image) =>
        deployController(vmid, { image }).pipe(Effect.asVoid, Effect.mapError(failed(`controller deploy on ${vmid}`)), Effect.provide(context)),
      update: (vmid, image, basis, admission) =>
        updateController(vmid, image, basis, settings, admission).pipe(
          Effect.mapError(failed(`controller update of ${vmid}`)),
          Effect.flatMap((r) =>
            r.outcome === "committed"
              ? Effect.void
              : Effect.fail(new ControllerOpFailed({ message: `controller update of ${vmid} to ${image}: ${r.outcome}${r.reason === null ? "" : ` (${r.reason})`}` }))),
          Effect.provide(context)
        ),
      reidentify: (vmid, identity) =>
        reidentifyController(vmid, identity).pipe(Effect.mapError(failed(`republishing the identity of ${vmid}`)), Effect.provide(context)),
      undeploy: (vmid) => undeployController(vmid).pipe(Effect.mapError(failed(`controller undeploy of ${vmid}`)), Effect.provide(context))
    } satisfies ControllerOpsShape
  })
)

type DeployServicesOf = Effect.Effect.Context<ReturnType<typeof deployController>>
type UpdateServicesOf = Effect.Effect.Context<ReturnType<typeof updateController>>
type ReidentifyServicesOf = Effect.Effect.Context<ReturnType<typeof reidentifyController>>
