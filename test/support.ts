/** Shared test wiring: simulator seeds and the production Proxmox client pointed at a simulator. */
import { Effect, Layer, Schema } from "effect"
import { proxmoxSettings } from "../src/layers/Config.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { layerFor, REASON_HEADER } from "../src/layers/PveTransport.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { decodeSeed, defaultSeedJson, layerSimHttpClient, type SimPve } from "../src/sim/pve/index.js"

type Json = Record<string, unknown>

/** The default seed with overrides merged at the top level (e.g. task durations, quirks). */
export const seedWith = (overrides: Json = {}) =>
  decodeSeed({ ...(defaultSeedJson as Json), ...overrides }, "test seed").pipe(Effect.orDie)

/** Every task type finishing after `ms` of simulated time. */
export const durations = (ms: number) => ({
  task_durations_ms: Object.fromEntries(
    ["vzcreate", "vzrestore", "vzdump", "vzsnapshot", "vzrollback", "vzdelsnapshot", "resize", "vzstart", "vzstop", "vzshutdown", "vzdestroy"]
      .map((t) => [t, ms])
  )
})

export const agentConfig = (url: string, tokenId: string, secret: string, tls: Json, extra: Json = {}) =>
  Schema.decodeUnknownSync(AgentConfigFile)({
    proxmox: { url, token_id: tokenId, token_secret: secret, tls, ...extra }
  })

/** The production client over real HTTPS, pinned to the simulator's certificate. */
export const httpsProxmox = (s: { url: string; tokenId: string; tokenSecret: string; fingerprint256: string }, extra: Json = {}) => {
  const file = agentConfig(s.url, s.tokenId, s.tokenSecret, { fingerprint_sha256: s.fingerprint256 }, extra)
  return ProxmoxWithoutClient.pipe(Layer.provide(layerFor(file.proxmox!.tls, file.proxmox!.url)), Layer.provide(proxmoxSettings(file.proxmox!)))
}

/** The production client dispatching in-process to the simulator: no sockets, TestClock-safe. */
export const inProcessProxmox = (sim: SimPve, extra: Json = {}) => {
  const file = agentConfig("https://127.0.0.1:8006", sim.tokenId, sim.tokenSecret, { insecure_skip_verify: true }, extra)
  return ProxmoxWithoutClient.pipe(
    Layer.provide(layerSimHttpClient(sim, { reasonHeader: REASON_HEADER })),
    Layer.provide(proxmoxSettings(file.proxmox!))
  )
}
