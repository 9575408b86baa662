/**
 * HubEnroll: the enrollment client (issue 13, docs/hub-protocol.md "Enrollment and key escrow").
 * `felhom-agent enroll` runs before the host has an api key: its one credential is the operator's
 * one-time enrollment token, sent only as the bearer of POST /api/v1/enroll. The answer is the
 * host id, the host's api key and, in restore mode, the lost host's restore bundle.
 *
 * Same rules as the hub client (Hub.ts, through HubExchange.ts): verified TLS only (system roots,
 * or only `ca_file`), its own HttpClient built from its own settings, size and time caps, no
 * retries (a spent token cannot be spent again). The token, and the api key and tunnel token the
 * answer carries, never reach an error text, even when the hub echoes them. The answer is decoded
 * strictly (a key the schema does not name is refused, every string bounded) and checked against
 * the request: `restore` present exactly in restore mode, the escrow blob bound to the host id
 * given, the token nowhere in it. A hostile answer is a Decode error whose text holds no value
 * from it.
 */
import { HttpClient } from "@effect/platform"
import { Context, Effect, Layer, ParseResult, Redacted } from "effect"
import { ENROLL_PATHS, EnrollRequest, EnrollResponse } from "../schema/escrow.js"
import type { ConfigError } from "../schema/errors.js"
import { HubError } from "../schema/hub.js"
import { makeScrubber } from "../schema/text.js"
import { DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_TIMEOUT, type HubClientOptions } from "./Hub.js"
import { makeHubExchange } from "./HubExchange.js"
import { httpClientLayer, type TlsMode } from "./TlsDispatcher.js"

export { HubError }

/** Where to enroll: the hub's https URL, and the CA to trust instead of the system roots. */
export interface HubEnrollSettingsShape {
  readonly url: string
  readonly ca_file?: string
}

export class HubEnrollSettings extends Context.Tag("felhom/HubEnrollSettings")<HubEnrollSettings, HubEnrollSettingsShape>() {}

export interface HubEnrollShape {
  /** Spends `token` on this enrollment; the hub's answer, checked against `req`. */
  readonly enroll: (token: Redacted.Redacted<string>, req: EnrollRequest) => Effect.Effect<EnrollResponse, HubError>
}

export class HubEnroll extends Context.Tag("felhom/HubEnroll")<HubEnroll, HubEnrollShape>() {}

const PATH = ENROLL_PATHS.enroll

/** A segment of an issue path as it may be shown: our own field names and indexes, nothing the hub chose. */
const showSegment = (p: PropertyKey): string =>
  typeof p === "number" || (typeof p === "string" && /^[a-z_]{1,32}$/.test(p)) ? String(p) : "<key>"

/**
 * Issues as `path: message` without any value: excess keys are named by the hub (and could be a
 * secret), messages lose Schema's `actual ...` tail.
 */
const describeIssues = (e: ParseResult.ParseError): string => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(e)
  const lines = issues.slice(0, 8).map((i) => {
    const path = i.path.length === 0 ? "(root)" : i.path.map(showSegment).join(".")
    const message = i.message.replace(/,?\s*actual[\s\S]*$/, "").replace(/"[^"]*"/g, "<value>").trim().slice(0, 120)
    return `${path}: ${message}`
  })
  if (issues.length > 8) lines.push(`(${issues.length - 8} more)`)
  return lines.join("; ")
}

/** Secret-looking string values of a raw answer (the api key, the tunnel token): scrubbed from any text too. */
const answerSecrets = (raw: unknown): ReadonlyArray<string> => {
  const out: Array<string> = []
  const take = (v: unknown) => {
    if (typeof v === "string" && v.length >= 8 && v.length <= 8192) out.push(v)
  }
  if (typeof raw === "object" && raw !== null) {
    const r = raw as { readonly api_key?: unknown; readonly restore?: unknown }
    take(r.api_key)
    if (typeof r.restore === "object" && r.restore !== null) take((r.restore as { readonly tunnel_token?: unknown }).tunnel_token)
  }
  return out
}

export const makeHubEnroll = (options: HubClientOptions = {}) =>
  Effect.gen(function*() {
    const settings = yield* HubEnrollSettings
    const http = yield* HttpClient.HttpClient

    const enroll = (token: Redacted.Redacted<string>, req: EnrollRequest): Effect.Effect<EnrollResponse, HubError> =>
      Effect.suspend(() => {
        // The one place the token is unwrapped: the scrubber has to know what to look for.
        const x = makeHubExchange(http, {
          url: settings.url,
          bearer: token,
          secrets: [Redacted.value(token)],
          timeout: options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT,
          maxBytes: options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES
        })
        const decodeFail = (message: string) => new HubError({ reason: "Decode", method: "POST", path: PATH, message: x.safe(`POST ${PATH}: ${message}`) })
        if (!isHttpsUrl(settings.url)) {
          return Effect.fail(new HubError({ reason: "Transport", method: "POST", path: PATH, message: `POST ${PATH}: the hub URL must be https:// (verified TLS only)` }))
        }
        return x.exchange(
          "POST",
          PATH,
          x.encodeBody("POST", PATH, EnrollRequest, req),
          (status, text) =>
            // the token has no business in the answer: wherever it sits (a host id, a key name)
            // it would be written to the config and reported onwards
            x.scrubber.scrub(text) !== text
              ? Effect.fail(decodeFail("the answer carries the enrollment token; refused"))
              : x.decodeWith("POST", PATH, EnrollResponse, {
              strict: true,
              // what an answer that does not decode says: structure only, and scrubbed of its own secrets too
              describe: (e, raw) => {
                const secrets = answerSecrets(raw)
                const text = describeIssues(e)
                return secrets.length === 0 ? text : scrubWith(secrets, text)
              }
            })(status, text)
        ).pipe(
          Effect.flatMap((res) => {
            if (req.mode === "restore" && res.restore === undefined) return Effect.fail(decodeFail("a restore-mode enrollment answered without a restore bundle"))
            if (req.mode === "new" && res.restore !== undefined) return Effect.fail(decodeFail("a new enrollment answered with a restore bundle"))
            if (res.restore !== undefined && res.restore.escrow.host_id !== res.host_id) {
              return Effect.fail(decodeFail("the restore bundle's escrow blob belongs to another host"))
            }
            return Effect.succeed(res)
          }),
          Effect.withSpan("HubEnroll.enroll")
        )
      })

    return HubEnroll.of({ enroll })
  })

const isHttpsUrl = (s: string): boolean => {
  try {
    const u = new URL(s)
    return u.protocol === "https:" && u.username === "" && u.password === ""
  } catch {
    return false
  }
}

const scrubWith = (secrets: ReadonlyArray<string>, text: string): string => makeScrubber(secrets).scrub(text)

/** HubEnroll over whatever HttpClient is provided (hubEnrollHttpClientLayer in production). */
export const HubEnrollWithoutClient = Layer.effect(HubEnroll, makeHubEnroll()).pipe(
  Layer.ensureRequirementsType<HttpClient.HttpClient | HubEnrollSettings>()
)

/** The same with non-default limits (tests shorten the timeout). */
export const hubEnrollLayerWithoutClient = (options: HubClientOptions) =>
  Layer.effect(HubEnroll, makeHubEnroll(options)).pipe(Layer.ensureRequirementsType<HttpClient.HttpClient | HubEnrollSettings>())

const tlsMode = (caFile: string | undefined): TlsMode =>
  caFile === undefined ? { _tag: "system" } : { _tag: "ca", file: caFile, key: "hub.ca_file" }

/** Its own HttpClient from its own settings (never another client's trust): verified TLS only. */
export const HubEnrollHttpClientLive: Layer.Layer<HttpClient.HttpClient, ConfigError, HubEnrollSettings> = httpClientLayer(
  Effect.map(HubEnrollSettings, (s) => tlsMode(s.ca_file))
)

/** Settings given directly (the enroll CLI builds them from its flags; tests). */
export const hubEnrollSettings = (s: HubEnrollSettingsShape): Layer.Layer<HubEnrollSettings> => Layer.succeed(HubEnrollSettings, s)

/** The whole client: settings, its own TLS client, the service. */
export const hubEnrollLayer = (s: HubEnrollSettingsShape, options: HubClientOptions = {}): Layer.Layer<HubEnroll, ConfigError> =>
  hubEnrollLayerWithoutClient(options).pipe(Layer.provide(HubEnrollHttpClientLive), Layer.provide(hubEnrollSettings(s)))
