/**
 * The HttpClient the Proxmox layer talks through, built from `proxmox.tls`: a CA file (full
 * verification), a pinned SHA-256 leaf fingerprint, or (loopback only) no verification.
 *
 * Pinning lives in the undici connector: Node never calls `checkServerIdentity` when chain
 * verification fails, and a PVE host's certificate is self-signed, so the check must run on the
 * connected socket before undici writes a single request byte.
 */
import { HttpClient } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import * as Undici from "@effect/platform-node/Undici"
import { Effect, Layer } from "effect"
import { readFileSync } from "node:fs"
import type { TLSSocket } from "node:tls"
import type { TlsTrust } from "../schema/config.js"
import { ConfigError } from "../schema/errors.js"
import { AgentConfig, isLoopbackUrl } from "./Config.js"

/**
 * PVE before libpve-http-server-perl 5.2.0 puts its error text only in the HTTP reason phrase,
 * which Effect's HttpClientResponse does not expose; this interceptor copies it into a header.
 */
export const REASON_HEADER = "x-felhom-pve-reason"

const keepReason: Undici.Dispatcher.DispatcherComposeInterceptor = (dispatch) => (opts, handler) => {
  // DecoratorHandler adapts legacy handlers (undici.request's) to the onResponse* API.
  const inner: Undici.Dispatcher.DispatchHandler = new Undici.DecoratorHandler(handler)
  const wrapped: Undici.Dispatcher.DispatchHandler = {
    onRequestStart: (c, ctx) => inner.onRequestStart?.(c, ctx),
    onRequestUpgrade: (c, status, headers, socket) => inner.onRequestUpgrade?.(c, status, headers, socket),
    onResponseStart: (c, status, headers, message) =>
      inner.onResponseStart?.(c, status, message === undefined ? headers : { ...headers, [REASON_HEADER]: message }, message),
    onResponseData: (c, chunk) => inner.onResponseData?.(c, chunk),
    onResponseEnd: (c, trailers) => inner.onResponseEnd?.(c, trailers),
    onResponseError: (c, error) => inner.onResponseError?.(c, error)
  }
  return dispatch(opts, wrapped)
}

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

/** Builds the undici dispatcher for one trust mode; throws only on programmer error (caught below). */
const dispatcherFor = (tls: TlsTrust, url: string): Effect.Effect<Undici.Dispatcher, ConfigError> => {
  if (tls.fingerprint_sha256 !== undefined) {
    const fp = tls.fingerprint_sha256
    return Effect.sync(() => new Undici.Agent({ connect: pinnedConnector(fp) }))
  }
  if (tls.ca_file !== undefined) {
    const caFile = tls.ca_file
    return Effect.try({
      try: () => new Undici.Agent({ connect: { ca: readFileSync(caFile, "utf8") } }),
      catch: (e) => new ConfigError({ key: "proxmox.tls.ca_file", message: `cannot read CA file ${caFile}: ${String(e)}` })
    })
  }
  if (tls.insecure_skip_verify) {
    if (!isLoopbackUrl(url)) {
      return Effect.fail(new ConfigError({
        key: "proxmox.tls.insecure_skip_verify",
        message: "proxmox.tls.insecure_skip_verify is refused for a non-loopback proxmox.url"
      }))
    }
    return Effect.sync(() => new Undici.Agent({ connect: { rejectUnauthorized: false } }))
  }
  return Effect.fail(new ConfigError({
    key: "proxmox.tls",
    message: "proxmox.tls: set exactly one of ca_file, fingerprint_sha256 or insecure_skip_verify (loopback only)"
  }))
}

/** An HttpClient layer for a given trust mode; the undici agent is destroyed with the scope. */
export const layerFor = (tls: TlsTrust, url: string): Layer.Layer<HttpClient.HttpClient, ConfigError> =>
  NodeHttpClient.layerUndiciWithoutDispatcher.pipe(
    Layer.provide(Layer.scoped(
      NodeHttpClient.Dispatcher,
      Effect.acquireRelease(dispatcherFor(tls, url), (agent) => Effect.promise(() => agent.destroy())).pipe(
        Effect.map((agent) => agent.compose(keepReason))
      )
    ))
  )

/** The PVE HttpClient from AgentConfig's proxmox block. */
export const PveHttpClientLive: Layer.Layer<HttpClient.HttpClient, ConfigError, AgentConfig> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    if (file.proxmox === undefined) {
      return yield* new ConfigError({ key: "proxmox", message: "proxmox: the Proxmox block is not configured" })
    }
    return layerFor(file.proxmox.tls, file.proxmox.url)
  })
)
