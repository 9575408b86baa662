/**
 * The daemon's composition root: every service, wired once. Each fenced service gets its own
 * HttpClient (PVE: pinned or CA-verified; hub: system roots or CA file), so neither can reach
 * the other's endpoint with the wrong trust, and the privileged runner is not in this graph at
 * all until an operation needs it.
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

/** How many guests may be mutated at once (PVE serializes per node anyway; keep it modest). */
export const MAX_CONCURRENT_GUEST_OPS = 4

/** Everything the daemon runs on, given an already-built AgentConfig. */
export const servicesLayer = Layer.mergeAll(
  ProxmoxWithoutClient.pipe(Layer.provide(PveHttpClientLive)),
  HubWithoutClient.pipe(Layer.provide(HubHttpClientLive)),
  JournalLive,
  AuthzLive,
  GuestQueue.layer(MAX_CONCURRENT_GUEST_OPS),
  SystemdLive
).pipe(Layer.provide(DatabaseLive))

/** The daemon graph from a config file (validated for the daemon mode). */
export const daemonLayer = (path: Option.Option<string>) =>
  servicesLayer.pipe(Layer.provideMerge(AgentConfigLayer.layer({ path, mode: "daemon" })))
