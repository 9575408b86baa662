/**
 * The service graph of the CLI's mutating commands (provision, recover): the daemon's services
 * minus its loops, over the same config and state directory, so an operator's command runs the
 * same sagas, gate and recovery rules the daemon does.
 *
 * - Proxmox, the journal and Authz over the state database, the per-guest queue, data
 *   protection's store and restore-test settings (the scratch vmid range stays the agent's own).
 * - Authz: the configured signers; a host without an authz block gets a verifier with none (every
 *   signature is UnknownSigner), which is all benign work needs.
 * - With a `local_api` block: the controller services (deploy, update, undeploy) and the
 *   privileged runner, built like the daemon's but without starting a local API server (the
 *   daemon's serves the guests; this process only writes their bootstrap). The guests' URL is the
 *   daemon's: `advertise_url`, else the configured listen address and port.
 */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { Effect, Layer } from "effect"
import { Authz, AuthzLive, make as makeAuthz } from "../../layers/Authz.js"
import * as AgentConfigLayer from "../../layers/Config.js"
import { ControllerStoreLive } from "../../layers/ControllerStore.js"
import { DatabaseLive } from "../../layers/Database.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { HubHttpClientLive, HubWithoutClient } from "../../layers/Hub.js"
import { JournalLive } from "../../layers/Journal.js"
import { LocalCert, LocalCertFromConfig } from "../../layers/LocalCert.js"
import { LocalTokensLive } from "../../layers/LocalTokens.js"
import { PrivilegedLive } from "../../layers/Privileged.js"
import { ProtectionStoreLive } from "../../layers/ProtectionStore.js"
import { ProxmoxWithoutClient } from "../../layers/Proxmox.js"
import { PveHttpClientLive } from "../../layers/PveTransport.js"
import { ConfigError } from "../../schema/errors.js"
import { ControllerContext, type ControllerContextShape } from "../controller/context.js"
import { ControllerOpsLive, httpsUrl } from "../controller/live.js"
import { ControllerPublisherLive } from "../controller/update.js"
import { RestoreTestSettingsLive } from "../protection/scratch.js"

/** As the daemon's (daemon/root.ts MAX_CONCURRENT_GUEST_OPS); a CLI command touches one guest anyway. */
const MAX_CONCURRENT_GUEST_OPS = 4

const ProxmoxFromConfig = ProxmoxWithoutClient.pipe(Layer.provide(PveHttpClientLive), Layer.provide(AgentConfigLayer.ProxmoxSettingsLive))

/** The hub client from the config's hub block (`--from-desired`). */
export const HubFromConfig = HubWithoutClient.pipe(Layer.provide(HubHttpClientLive), Layer.provide(AgentConfigLayer.HubSettingsLive))

/** The configured signers, or none (benign work needs no signature). */
const AuthzFromConfig = Layer.unwrapEffect(Effect.map(AgentConfigLayer.AgentConfig, ({ file }) =>
  file.host_id !== undefined && file.authz !== undefined
    ? AuthzLive
    : Layer.effect(Authz, makeAuthz({ hostId: file.host_id ?? "unconfigured", signers: [], clockSkewSeconds: 60, refuseBeforeStateEpoch: true }))))

/** Where guests reach the daemon's local API, and its pins, without serving it from here. */
const ControllerContextCli: Layer.Layer<ControllerContext, ConfigError, AgentConfigLayer.AgentConfig | LocalCert> = Layer.effect(
  ControllerContext,
  Effect.gen(function*() {
    const { file } = yield* AgentConfigLayer.AgentConfig
    const cert = yield* LocalCert
    const api = file.local_api
    if (api === undefined) return yield* new ConfigError({ key: "local_api", message: "local_api: not configured" })
    if (api.advertise_url === undefined && api.port === 0) {
      return yield* new ConfigError({
        key: "local_api.advertise_url",
        message: "local_api.port is 0 (any free port), so only the running daemon knows its URL: set local_api.advertise_url"
      })
    }
    const registry = file.controllers.registry
    return {
      hostId: file.host_id ?? "unknown-host",
      hubUrl: file.hub?.url ?? null,
      localApiUrl: api.advertise_url ?? httpsUrl(api.listen, api.port),
      pins: cert.pins,
      registry: registry === undefined ? null : { server: registry.server, username: registry.username, password: registry.password }
    } satisfies ControllerContextShape
  })
)

/** The controller services, on a host with a local_api block; none otherwise. */
const ControllersFromConfig = Layer.unwrapEffect(Effect.map(AgentConfigLayer.AgentConfig, ({ file }) =>
  file.local_api === undefined
    ? Layer.empty
    : ControllerOpsLive.pipe(
      Layer.provideMerge(ControllerPublisherLive),
      Layer.provideMerge(ControllerContextCli),
      Layer.provideMerge(Layer.mergeAll(LocalTokensLive, ControllerStoreLive, LocalCertFromConfig)),
      Layer.provideMerge(PrivilegedLive.pipe(Layer.provide(NodeCommandExecutor.layer)))
    )))

/** Everything but the config. */
export const cliServices = ControllersFromConfig.pipe(
  Layer.provideMerge(Layer.mergeAll(
    ProxmoxFromConfig,
    JournalLive,
    AuthzFromConfig,
    ProtectionStoreLive,
    RestoreTestSettingsLive,
    GuestQueue.layer(MAX_CONCURRENT_GUEST_OPS)
  )),
  Layer.provideMerge(DatabaseLive)
)
