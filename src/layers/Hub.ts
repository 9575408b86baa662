/**
 * Hub: the client of the operator's hub (SPEC §6, docs/hub-protocol.md). The agent always dials
 * out; the hub never connects in. Its layer requires only an HttpClient and its own config block
 * (HubSettings: it cannot read the PVE token), and every method is `R = never`: it cannot shell
 * out (test/hub.test.ts, scripts/check-boundaries.mjs).
 *
 * Nothing here retries: the poll loop is the retry, and a host report must not be sent twice
 * within one cycle. Responses are capped in size and time, and no error ever carries the bearer
 * token, even when a hub echoes the Authorization header back in its error body.
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import type { HttpClientError, HttpClientResponse } from "@effect/platform"
import { Context, Duration, Effect, Either, Layer, ParseResult, Redacted, Schema, Stream } from "effect"
import { type DesiredState, decodeDesiredState } from "../schema/desired.js"
import type { ConfigError } from "../schema/errors.js"
import {
  clampPollInterval,
  ControlEnvelope,
  HostReport,
  HubError,
  type JobResult,
  decodeJobEntry,
  type JobEntry,
  JobResultsRequest,
  SignedJobsResponse
} from "../schema/hub.js"
import { VERSION } from "../version.js"
import { clip, deepestCauseMessage, formatIssues, makeScrubber } from "../schema/text.js"
import { HubSettings } from "./Config.js"
import { httpClientLayer, type TlsMode } from "./TlsDispatcher.js"

export { HubError }

export interface HubShape {
  /** Heartbeat + host report up; the control envelope back, poll interval already clamped. */
  readonly report: (r: HostReport) => Effect.Effect<ControlEnvelope, HubError>
  /** The current desired state (404 while the hub has published none: envelope generation 0). */
  readonly desiredState: Effect.Effect<DesiredState, HubError>
  /** Signed jobs queued for this host; the hub hands each out once. */
  /**
   * Each entry decoded on its own, so one bad job never costs the others. A refused entry's
   * message never echoes hub input, and an entry carrying the bearer token anywhere is refused
   * with its id withheld (it would otherwise reach logs and results).
   */
  readonly signedJobs: Effect.Effect<ReadonlyArray<JobEntry>, HubError>
  readonly postJobResults: (results: ReadonlyArray<JobResult>) => Effect.Effect<void, HubError>
}

export class Hub extends Context.Tag("felhom/Hub")<Hub, HubShape>() {}

export const PATHS = {
  report: "/api/v1/host-report",
  desiredState: "/api/v1/desired-state",
  signedJobs: "/api/v1/signed-jobs",
  jobResults: "/api/v1/job-results"
} as const

export interface HubClientOptions {
  /** Whole exchange, connect to last body byte. Default 30 s. */
  readonly requestTimeout?: Duration.DurationInput
  /** Larger answers are refused unread (TooLarge). Default 4 MiB. */
  readonly maxResponseBytes?: number
}

export const DEFAULT_REQUEST_TIMEOUT = Duration.seconds(30)
export const DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024

// ---------------------------------------------------------------------------------------------
// Keeping the token and hub input out of error text (src/schema/text.ts: the shared scrubber)

const EXCERPT_MAX = 300
const DECODE_MAX = 600

// ---------------------------------------------------------------------------------------------

export const makeHub = (options: HubClientOptions = {}) =>
  Effect.gen(function*() {
    const hub = yield* HubSettings
    const http = yield* HttpClient.HttpClient
    const base = hub.url.replace(/\/+$/, "")
    const timeout = Duration.decode(options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT)
    const maxBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES
    // The one place the api key is unwrapped: the scrubber has to know what to look for.
    const scrubber = makeScrubber([Redacted.value(hub.api_key)])
    const excerpt = (text: string) => scrubber.excerpt(text, EXCERPT_MAX)
    /** Every error message passes through this: scrubbed first, then bounded. */
    const safe = (message: string) => scrubber.excerpt(message, 1000)

    const exchange = <A>(
      method: "GET" | "POST",
      path: string,
      body: Effect.Effect<string | undefined, HubError>,
      onOk: (status: number, text: string) => Effect.Effect<A, HubError>
    ): Effect.Effect<A, HubError> => {
      const fail = (reason: HubError["reason"], message: string, status?: number) =>
        new HubError({
          reason,
          method,
          path,
          ...(status === undefined ? {} : { status }),
          message: safe(`${method} ${path}: ${message}`)
        })

      const read = (res: HttpClientResponse.HttpClientResponse): Effect.Effect<string, HubError | HttpClientError.ResponseError> => {
        const tooLarge = () => fail("TooLarge", `response body exceeds ${maxBytes} bytes (HTTP ${res.status}); not read`, res.status)
        const declared = Number(res.headers["content-length"])
        if (Number.isFinite(declared) && declared > maxBytes) return Effect.fail(tooLarge())
        return res.stream.pipe(
          Stream.runFoldEffect({ size: 0, chunks: [] as Array<Uint8Array> }, (acc, chunk) => {
            const size = acc.size + chunk.length
            if (size > maxBytes) return Effect.fail(tooLarge())
            acc.chunks.push(chunk)
            return Effect.succeed({ size, chunks: acc.chunks })
          }),
          Effect.map((acc) => Buffer.concat(acc.chunks).toString("utf8"))
        )
      }

      const transport = (e: HttpClientError.HttpClientError) =>
        Effect.fail(fail("Transport", deepestCauseMessage(e.cause, e.message)))

      return Effect.gen(function*() {
        const payload = yield* body
        const url = base + path
        const request = (method === "GET" ? HttpClientRequest.get(url) : HttpClientRequest.post(url)).pipe(
          HttpClientRequest.bearerToken(hub.api_key),
          HttpClientRequest.acceptJson,
          HttpClientRequest.setHeader("user-agent", `felhom-agent/${VERSION}`),
          (r) => (payload === undefined ? r : HttpClientRequest.bodyText(r, payload, "application/json"))
        )
        const [status, text] = yield* http.execute(request).pipe(
          Effect.flatMap((res) => Effect.map(read(res), (t) => [res.status, t] as const)),
          Effect.catchTags({ RequestError: transport, ResponseError: transport }),
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => fail("Transport", `no complete answer within ${Duration.format(timeout)}`)
          })
        )
        if (status < 200 || status > 299) {
          const shown = excerpt(text)
          return yield* fail("Status", `HTTP ${status}${shown.length > 0 ? `: ${shown}` : ""}`, status)
        }
        return yield* onOk(status, text)
      })
    }

    /** JSON.parse's own message quotes input; keep only where it broke. */
    const parseJson = (fail: (m: string) => HubError) => (text: string) =>
      Effect.try({
        try: (): unknown => JSON.parse(text),
        catch: (e) => {
          const at = e instanceof Error ? /position (\d+)/.exec(e.message) : null
          return fail(`response is not valid JSON${at === null ? "" : ` (at byte ${at[1]})`}`)
        }
      })

    const decodeWith = <A, I>(method: "GET" | "POST", path: string, schema: Schema.Schema<A, I>) => {
      const decodeFail = (m: string) => new HubError({ reason: "Decode", method, path, message: safe(`${method} ${path}: ${m}`) })
      return (status: number, text: string): Effect.Effect<A, HubError> =>
        status !== 200
          ? Effect.fail(new HubError({ reason: "Status", method, path, status, message: `${method} ${path}: expected HTTP 200 with a body, got ${status}` }))
          : parseJson(decodeFail)(text).pipe(
            Effect.flatMap((u) => Schema.decodeUnknown(schema, { errors: "all" })(u)),
            Effect.mapError((e) => (e._tag === "HubError" ? e : decodeFail(clip(`response does not match the schema: ${formatIssues(e)}`, DECODE_MAX))))
          )
    }

    /** Our own request checked against its schema before it leaves: a mismatch is a bug here. */
    const encodeBody = <A, I>(method: "POST", path: string, schema: Schema.Schema<A, I>, value: A) =>
      Schema.encode(schema)(value).pipe(
        Effect.flatMap((encoded) => Effect.try({ try: () => JSON.stringify(encoded), catch: (e) => e })),
        Effect.mapError((e) =>
          new HubError({
            reason: "Decode",
            method,
            path,
            message: safe(`${method} ${path}: request body does not match the schema: ${
              ParseResult.isParseError(e) ? formatIssues(e) : e instanceof Error ? e.message : "not serializable"
            }`)
          })
        )
      )

    const report = (r: HostReport) =>
      exchange("POST", PATHS.report, encodeBody("POST", PATHS.report, HostReport, r), decodeWith("POST", PATHS.report, ControlEnvelope)).pipe(
        Effect.map((env): ControlEnvelope => ({ ...env, poll_interval_seconds: clampPollInterval(env.poll_interval_seconds) })),
        Effect.withSpan("Hub.report")
      )

    const desiredState = exchange("GET", PATHS.desiredState, Effect.succeed(undefined), decodeWith("GET", PATHS.desiredState, Schema.Unknown)).pipe(
      Effect.flatMap((u) =>
        Either.match(decodeDesiredState(u), {
          onLeft: (m) =>
            Effect.fail(new HubError({
              reason: "Decode",
              method: "GET",
              path: PATHS.desiredState,
              message: safe(`GET ${PATHS.desiredState}: ${m}`)
            })),
          onRight: Effect.succeed
        })
      ),
      Effect.withSpan("Hub.desiredState")
    )

    const signedJobs = exchange("GET", PATHS.signedJobs, Effect.succeed(undefined), decodeWith("GET", PATHS.signedJobs, SignedJobsResponse)).pipe(
      Effect.map((r): ReadonlyArray<JobEntry> =>
        r.jobs.map((raw) => {
          const decoded = decodeJobEntry(raw)
          const carriesToken = (() => {
            try {
              const text = JSON.stringify(raw) ?? ""
              return scrubber.scrub(text) !== text
            } catch {
              return true
            }
          })()
          if (carriesToken) return Either.left({ id: null, op: null, message: "job entry carries this host's bearer token; refused" })
          return decoded
        })
      ),
      Effect.withSpan("Hub.signedJobs")
    )

    const postJobResults = (results: ReadonlyArray<JobResult>) =>
      exchange("POST", PATHS.jobResults, encodeBody("POST", PATHS.jobResults, JobResultsRequest, { results }), () => Effect.void).pipe(
        Effect.withSpan("Hub.postJobResults")
      )

    return Hub.of({ report, desiredState, signedJobs, postJobResults })
  })

/** Hub over whatever HttpClient is provided (HubHttpClientLive in production, in-process in tests). */
export const HubWithoutClient = Layer.effect(Hub, makeHub()).pipe(
  Layer.ensureRequirementsType<HttpClient.HttpClient | HubSettings>()
)

/** The same with non-default limits (tests shorten the timeout). */
export const layerWithoutClient = (options: HubClientOptions) =>
  Layer.effect(Hub, makeHub(options)).pipe(Layer.ensureRequirementsType<HttpClient.HttpClient | HubSettings>())

// ---------------------------------------------------------------------------------------------
// Transport: verified TLS only. No pinning and no insecure mode: the hub has a real certificate.
// Its own dispatcher and client (TlsDispatcher.ts): never the PVE client's, whatever it trusts.

const hubTlsMode = (caFile: string | undefined): TlsMode =>
  caFile === undefined ? { _tag: "system" } : { _tag: "ca", file: caFile, key: "hub.ca_file" }

/** An HttpClient verifying against the system roots, or only against `caFile` when given. */
export const hubHttpClientLayer = (caFile: string | undefined): Layer.Layer<HttpClient.HttpClient, ConfigError> =>
  httpClientLayer(Effect.succeed(hubTlsMode(caFile)))

/** The hub HttpClient from the hub block alone. */
export const HubHttpClientLive: Layer.Layer<HttpClient.HttpClient, ConfigError, HubSettings> = httpClientLayer(
  Effect.map(HubSettings, (hub) => hubTlsMode(hub.ca_file))
)
