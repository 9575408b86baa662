/**
 * The daemon's controller services (issue 11), from its config and the running local API:
 * ControllerContext (what every bootstrap carries: host id, hub, the local API's URL and pins,
 * registry credentials) and ControllerOps (deploy, update, undeploy for reconcile and jobs).
 */
import { Effect, Layer } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { LocalApi } from "../../layers/LocalApi.js"
import { ControllerContext, type ControllerContextShape } from "./context.js"

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
