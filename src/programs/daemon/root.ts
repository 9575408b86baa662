/**
 * The daemon's composition root: every service, wired once. Each client receives only its own
 * config block (ProxmoxSettings, HubSettings) and builds its own HttpClient from it (PVE: pinned,
 * CA-verified or loopback-insecure; hub: system roots or CA file) over its own undici dispatcher,
 * so neither can reach the other's endpoint with the other's trust (TlsDispatcher.ts says why a
 * shared layer value would), and the privileged runner is not in this graph at all until an
 * operation needs it.
 */
import { Layer } from "effect"
import type { Option } from "effect"
import { AuthzLive } from "../../layers/Authz.js"
import * as AgentConfigLayer from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { HubHttpClientLive, HubWithoutClient } from "../../layers/Hub.js"
import { JournalLive } from "../../layers/Journal.js"
import { ProxmoxWithoutClient } from "../../layers/Proxmox.js"
import { PveHttpClientLive } from "../../layers/PveTransport.js"
import { SystemdLive } from "../../layers/Systemd.js"
import { PbsKeyLive } from "../../layers/PbsKey.js"
import { type Privileged, PrivilegedLive, PrivilegedPbsKeyLive, PrivilegedUpdateLive } from "../../layers/Privileged.js"
import { HubReleasesLive } from "../../layers/HubReleases.js"
import { AgentUpdaterLive, UpdateSettingsLive } from "../update/saga.js"
import { goldenDaemonLayer } from "../golden/live.js"
import { type GuestHealth, GuestHealthLive } from "../../layers/GuestHealth.js"
import { RestoreTestSettingsLive } from "../protection/scratch.js"
import { ProtectionStoreLive } from "../../layers/ProtectionStore.js"
import { type ProtectionEnv, ProtectionEnvLive } from "../protection/env.js"
import { StorageServicesLive } from "../protection/storage.js"
import { ProtectionBoard } from "../protection/view.js"

/** The Proxmox client from AgentConfig: the client itself sees only the proxmox block. */
export const ProxmoxFromConfig = ProxmoxWithoutClient.pipe(
  Layer.provide(PveHttpClientLive),
  Layer.provide(AgentConfigLayer.ProxmoxSettingsLive)
)

/** The hub client from AgentConfig: the client itself sees only the hub block. */
export const HubFromConfig = HubWithoutClient.pipe(
  Layer.provide(HubHttpClientLive),
  Layer.provide(AgentConfigLayer.HubSettingsLive)
)

/** How many guests may be mutated at once (PVE serializes per node anyway; keep it modest). */
export const MAX_CONCURRENT_GUEST_OPS = 4

/** Everything the daemon runs on, given an already-built AgentConfig. */
export const servicesLayer = Layer.mergeAll(
  ProxmoxFromConfig,
  HubFromConfig,
  JournalLive,
  AuthzLive,
  GuestQueue.layer(MAX_CONCURRENT_GUEST_OPS),
  SystemdLive
).pipe(Layer.provide(DatabaseLive))

/**
 * Data protection's services (issue 10), over the daemon's: the protection store and settings,
 * the board the host report reads, the storage status, creds vault and target store, the
 * restore-test settings and guest health probe, and the privileged runner (USB mounts, the
 * watchdog's mount reads, archive tests, health probes). ReportNow comes from the daemon.
 */
export const protectionLayerWith = <E, R, E2, R2, E3, R3>(
  env: Layer.Layer<ProtectionEnv, E, R>,
  health: Layer.Layer<GuestHealth, E2, R2>,
  privileged: Layer.Layer<Privileged, E3, R3>
) =>
  Layer.mergeAll(ProtectionStoreLive, env, StorageServicesLive, RestoreTestSettingsLive, health).pipe(
    Layer.provideMerge(privileged),
    Layer.provideMerge(DatabaseLive)
  )

/** With the settings of the config file's `protection` block. */
export const protectionLayer = protectionLayerWith(ProtectionEnvLive, GuestHealthLive, PrivilegedLive)

/**
 * The host's PBS key (issue 13): the storage pass attaches it to a PBS entry through the root
 * helper and the backup guard checks every PBS storage holds it. The daemon reads only the
 * public fingerprint; the key file is root's.
 */
export const pbsKeyDaemonLayer = PbsKeyLive.pipe(Layer.provide(PrivilegedPbsKeyLive))

/**
 * Self-update (issue 14): the `agent-update` job's saga with its own hub client for releases
 * (the hub block only), the root helper felhom-update and the update settings. A malformed
 * `update.release_signers` line stops the daemon at start, like any bad config key.
 */
export const agentUpdaterDaemonLayer = AgentUpdaterLive.pipe(
  Layer.provide(Layer.mergeAll(
    UpdateSettingsLive,
    HubReleasesLive.pipe(Layer.provide(AgentConfigLayer.HubSettingsLive)),
    PrivilegedUpdateLive
  ))
)

/** The board reads PVE and the protection store; it is built over both. */
export const protectionBoardLayer = ProtectionBoard.layer

/** The daemon graph from a config file (validated for the daemon mode). */
export const daemonLayer = (path: Option.Option<string>) =>
  protectionBoardLayer.pipe(
    Layer.provideMerge(Layer.mergeAll(servicesLayer, protectionLayer, goldenDaemonLayer, pbsKeyDaemonLayer, agentUpdaterDaemonLayer)),
    Layer.provideMerge(AgentConfigLayer.layer({ path, mode: "daemon" }))
  )
