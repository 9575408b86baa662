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
import { HttpClient } from "@effect/platform"
import { Context, Duration, Effect, Either, Layer, Option, Redacted, Schema } from "effect"
import { type DesiredState, decodeDesiredState } from "../schema/desired.js"
import { ENROLL_PATHS, EscrowBlob, EscrowUpload, EscrowUploadResponse } from "../schema/escrow.js"
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
import { HubSettings } from "./Config.js"
import { makeHubExchange } from "./HubExchange.js"
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
  /** This host's escrowed blob (GET /api/v1/escrow); None when the hub holds none (404). */
  readonly escrow: Effect.Effect<Option.Option<EscrowBlob>, HubError>
  /**
   * Replaces the blob by compare-and-swap (PUT /api/v1/escrow). A lost swap is HubError reason
   * Conflict (409: the hub kept what it had). Success means the hub confirmed this generation.
   */
  readonly putEscrow: (u: EscrowUpload) => Effect.Effect<EscrowUploadResponse, HubError>
  /**
   * GET /api/v1/envelope (issue 14, `selftest hub`): the control envelope without a report, so
   * a probe never counts as a heartbeat or changes hub state. `date` is the answer's Date header
   * (the hub's clock, for the skew check); the poll interval is returned unclamped.
   */
  readonly envelope: Effect.Effect<{ readonly envelope: ControlEnvelope; readonly date: Option.Option<string> }, HubError>
}

export class Hub extends Context.Tag("felhom/Hub")<Hub, HubShape>() {}

export const PATHS = {
  report: "/api/v1/host-report",
  desiredState: "/api/v1/desired-state",
  signedJobs: "/api/v1/signed-jobs",
  jobResults: "/api/v1/job-results",
  envelope: "/api/v1/envelope"
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

export const makeHub = (options: HubClientOptions = {}) =>
  Effect.gen(function*() {
    const hub = yield* HubSettings
    const http = yield* HttpClient.HttpClient
    // The one place the api key is unwrapped: the scrubber has to know what to look for.
    const exchangeOptions = {
      url: hub.url,
      bearer: hub.api_key,
      secrets: [Redacted.value(hub.api_key)],
      timeout: options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT,
      maxBytes: options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES
    }
    const { decodeWith, encodeBody, exchange, safe, scrubber } = makeHubExchange(http, exchangeOptions)

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

    // Escrow (issue 13): strict decoding, a lost compare-and-swap is Conflict.
    const conflictOn409 = (status: number): HubError["reason"] => (status === 409 ? "Conflict" : "Status")

    const escrow = exchange(
      "GET",
      ENROLL_PATHS.escrow,
      Effect.succeed(undefined),
      decodeWith("GET", ENROLL_PATHS.escrow, EscrowBlob, { strict: true })
    ).pipe(
      Effect.map(Option.some),
      // 404: the hub holds no blob for this host (yet)
      Effect.catchIf((e) => e.reason === "Status" && e.status === 404, () => Effect.succeed(Option.none<EscrowBlob>())),
      Effect.withSpan("Hub.escrow")
    )

    const putEscrow = (u: EscrowUpload) =>
      exchange(
        "PUT",
        ENROLL_PATHS.escrow,
        encodeBody("PUT", ENROLL_PATHS.escrow, EscrowUpload, u),
        decodeWith("PUT", ENROLL_PATHS.escrow, EscrowUploadResponse, { strict: true }),
        conflictOn409
      ).pipe(
        // the answer must confirm exactly what was sent: the caller retires the old blob on it
        Effect.filterOrFail(
          (r) => r.generation === u.generation,
          (r) =>
            new HubError({
              reason: "Decode",
              method: "PUT",
              path: ENROLL_PATHS.escrow,
              message: safe(`PUT ${ENROLL_PATHS.escrow}: the hub confirmed generation ${r.generation}, not the ${u.generation} sent`)
            })
        ),
        Effect.withSpan("Hub.putEscrow")
      )

    // Its own exchange per call over a client that notes the Date header of this one answer.
    const envelope = Effect.suspend(() => {
      let date: string | undefined
      const noting = HttpClient.tap(http, (res) => Effect.sync(() => { date = res.headers["date"] }))
      const ex = makeHubExchange(noting, exchangeOptions)
      return ex.exchange("GET", PATHS.envelope, Effect.succeed(undefined), ex.decodeWith("GET", PATHS.envelope, ControlEnvelope)).pipe(
        Effect.map((e) => ({ envelope: e, date: Option.fromNullable(date) })),
        Effect.withSpan("Hub.envelope")
      )
    })

    return Hub.of({ report, desiredState, signedJobs, postJobResults, escrow, putEscrow, envelope })
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
