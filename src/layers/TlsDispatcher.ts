/**
 * The one place TLS trust becomes an undici dispatcher and an HttpClient, shared by the PVE
 * transport (PveTransport.ts) and the hub client (Hub.ts). Four trust modes:
 *
 * - `pinned`: exact SHA-256 match of the leaf certificate, checked in the connector on the
 *   connected socket before undici writes a request byte (Node never calls
 *   `checkServerIdentity` when chain verification fails, and a PVE certificate is self-signed);
 * - `ca`: full chain and host name verification against a PEM bundle read from a file;
 * - `insecure-loopback`: no verification, refused unless the URL is loopback;
 * - `system`: full verification against Node's bundled roots.
 *
 * Each client gets its OWN HttpClient. `httpClientLayer` builds the client inside the layer's
 * effect with `NodeHttpClient.makeUndici(dispatcher)`, from a dispatcher that effect acquired:
 * there is no shared layer value in between. The previous wiring provided a different
 * `Dispatcher` to the same `NodeHttpClient.layerUndiciWithoutDispatcher` value for each client;
 * Effect memoizes a layer by its value within one build, so the second client silently received
 * the first one's instance, and the hub client inherited the PVE trust (SPEC §17, issue 8 #4).
 * Calling `httpClientLayer` twice gives two layer values whose build effects each create their
 * own dispatcher, so memoization cannot merge them.
 */
import { HttpClient } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import * as Undici from "@effect/platform-node/Undici"
import { Effect, Layer, type Scope } from "effect"
import { readFileSync } from "node:fs"
import type { TLSSocket } from "node:tls"
import { ConfigError } from "../schema/errors.js"
import { isLoopbackUrl } from "./Config.js"

export type TlsMode =
  | { readonly _tag: "pinned"; readonly fingerprint256: string }
  /** `key` names the config key in errors (e.g. "hub.ca_file"). */
  | { readonly _tag: "ca"; readonly file: string; readonly key: string }
  | { readonly _tag: "insecure-loopback"; readonly url: string; readonly key: string }
  | { readonly _tag: "system" }

export const normalizeFingerprint = (fp: string) => fp.replace(/[^0-9a-fA-F]/g, "").toUpperCase()

export class TlsPinMismatch extends Error {
  override readonly name = "TlsPinMismatch"
  constructor(readonly expected: string, readonly actual: string) {
    super(`TLS certificate fingerprint mismatch: pinned ${expected}, server presented ${actual || "(none)"}`)
  }
}

const pinnedConnector = (fingerprint256: string): Undici.buildConnector.connector => {
  // No session cache: a resumed TLS session carries no peer certificate to compare, and every
  // connection must prove the pinned certificate itself.
  const base = Undici.buildConnector({ rejectUnauthorized: false, maxCachedSessions: 0 })
  const want = normalizeFingerprint(fingerprint256)
  return (options, callback) =>
    base(options, (error, socket) => {
      if (error !== null) return callback(error, null)
      const peer = (socket as TLSSocket).getPeerCertificate()
      const got = peer.fingerprint256 ?? ""
      if (normalizeFingerprint(got) !== want) {
        socket.destroy()
        return callback(new TlsPinMismatch(fingerprint256, got), null)
      }
      callback(null, socket)
    })
}

const agentFor = (mode: TlsMode): Effect.Effect<Undici.Agent, ConfigError> => {
  switch (mode._tag) {
    case "pinned":
      return Effect.sync(() => new Undici.Agent({ connect: pinnedConnector(mode.fingerprint256) }))
    case "ca":
      return Effect.try({
        try: () => new Undici.Agent({ connect: { ca: readFileSync(mode.file, "utf8") } }),
        catch: (e) =>
          new ConfigError({ key: mode.key, message: `cannot read CA file ${mode.file}: ${e instanceof Error ? e.message : String(e)}` })
      })
    case "insecure-loopback":
      return isLoopbackUrl(mode.url)
        ? Effect.sync(() => new Undici.Agent({ connect: { rejectUnauthorized: false } }))
        : Effect.fail(new ConfigError({ key: mode.key, message: `${mode.key} is refused for a non-loopback URL` }))
    case "system":
      return Effect.sync(() => new Undici.Agent())
  }
}

/** A fresh undici dispatcher for one trust mode, destroyed with the scope. */
export const makeDispatcher = (
  mode: TlsMode,
  compose?: Undici.Dispatcher.DispatcherComposeInterceptor
): Effect.Effect<Undici.Dispatcher, ConfigError, Scope.Scope> =>
  Effect.acquireRelease(agentFor(mode), (agent) => Effect.promise(() => agent.destroy())).pipe(
    Effect.map((agent): Undici.Dispatcher => (compose === undefined ? agent : agent.compose(compose)))
  )

/**
 * An HttpClient over its own dispatcher (see the module comment: never a shared layer value).
 * `mode` is an effect so a layer can derive it from its own config block at build time.
 */
export const httpClientLayer = <R>(
  mode: Effect.Effect<TlsMode, ConfigError, R>,
  compose?: Undici.Dispatcher.DispatcherComposeInterceptor
): Layer.Layer<HttpClient.HttpClient, ConfigError, R> =>
  Layer.scoped(
    HttpClient.HttpClient,
    Effect.flatMap(mode, (m) => Effect.map(makeDispatcher(m, compose), NodeHttpClient.makeUndici))
  )
