/**
 * The HttpClient the Proxmox layer talks through, built from the proxmox block alone
 * (`ProxmoxSettings`): a CA file (full verification), a pinned SHA-256 leaf fingerprint, or
 * (loopback only) no verification. The dispatchers themselves live in TlsDispatcher.ts, shared
 * with the hub client; what is PVE-specific is the mapping from `proxmox.tls` and keeping the
 * HTTP reason phrase.
 */
import type { HttpClient } from "@effect/platform"
import * as Undici from "@effect/platform-node/Undici"
import { Effect, type Layer } from "effect"
import type { TlsTrust } from "../schema/config.js"
import { ConfigError } from "../schema/errors.js"
import { ProxmoxSettings } from "./Config.js"
import { httpClientLayer, type TlsMode } from "./TlsDispatcher.js"

export { normalizeFingerprint, TlsPinMismatch } from "./TlsDispatcher.js"

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

/** The trust mode the proxmox.tls block names (exactly one is set: validated at config load). */
export const pveTlsMode = (tls: TlsTrust, url: string): Effect.Effect<TlsMode, ConfigError> => {
  if (tls.fingerprint_sha256 !== undefined) return Effect.succeed({ _tag: "pinned", fingerprint256: tls.fingerprint_sha256 })
  if (tls.ca_file !== undefined) return Effect.succeed({ _tag: "ca", file: tls.ca_file, key: "proxmox.tls.ca_file" })
  if (tls.insecure_skip_verify) return Effect.succeed({ _tag: "insecure-loopback", url, key: "proxmox.tls.insecure_skip_verify" })
  return Effect.fail(new ConfigError({
    key: "proxmox.tls",
    message: "proxmox.tls: set exactly one of ca_file, fingerprint_sha256 or insecure_skip_verify (loopback only)"
  }))
}

/**
 * An HttpClient for a given trust mode, with its own undici dispatcher (destroyed with the
 * scope) and the reason-phrase interceptor. Never shared with another client (TlsDispatcher.ts).
 */
export const layerFor = (tls: TlsTrust, url: string): Layer.Layer<HttpClient.HttpClient, ConfigError> =>
  httpClientLayer(pveTlsMode(tls, url), keepReason)

/** The PVE HttpClient from the proxmox block alone. */
export const PveHttpClientLive: Layer.Layer<HttpClient.HttpClient, ConfigError, ProxmoxSettings> = httpClientLayer(
  Effect.flatMap(ProxmoxSettings, (pve) => pveTlsMode(pve.tls, pve.url)),
  keepReason
)
