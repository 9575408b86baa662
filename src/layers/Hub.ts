/**
 * Hub: the client of the operator's hub (SPEC §6, docs/hub-protocol.md). The agent always dials
 * out; the hub never connects in. Its layer requires only an HttpClient and AgentConfig and every
 * method is `R = never`: it cannot shell out (test/hub.test.ts, scripts/check-boundaries.mjs).
 *
 * Nothing here retries: the poll loop is the retry, and a host report must not be sent twice
 * within one cycle. Responses are capped in size and time, and no error ever carries the bearer
 * token, even when a hub echoes the Authorization header back in its error body.
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import type { HttpClientError, HttpClientResponse } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import * as Undici from "@effect/platform-node/Undici"
import { Context, Duration, Effect, Either, Layer, ParseResult, Redacted, Schema, Stream } from "effect"
import { readFileSync } from "node:fs"
import { type DesiredState, decodeDesiredState } from "../schema/desired.js"
import { ConfigError } from "../schema/errors.js"
import {
  clampPollInterval,
  ControlEnvelope,
  HostReport,
  HubError,
  type JobResult,
  JobResultsRequest,
  type SignedJob,
  SignedJobsResponse
} from "../schema/hub.js"
import { VERSION } from "../version.js"
import { AgentConfig } from "./Config.js"
import { deepestCauseMessage } from "../schema/text.js"

export { HubError }

export interface HubShape {
  /** Heartbeat + host report up; the control envelope back, poll interval already clamped. */
  readonly report: (r: HostReport) => Effect.Effect<ControlEnvelope, HubError>
  /** The current desired state (404 while the hub has published none: envelope generation 0). */
  readonly desiredState: Effect.Effect<DesiredState, HubError>
  /** Signed jobs queued for this host; the hub hands each out once. */
  readonly signedJobs: Effect.Effect<ReadonlyArray<SignedJob>, HubError>
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
// Keeping the token and hub input out of error text

const EXCERPT_MAX = 300
const DECODE_MAX = 600
/** Token fragments at least this long are scrubbed too (a hub may echo a truncated header). */
const FRAGMENT_MIN = 8
const REDACTED = "<redacted>"

const oneLine = (s: string) => s.replace(/\s+/g, " ").trim()
const clip = (s: string, max: number) => (s.length > max ? `${s.slice(0, max)}…` : s)

/** Replaces the secret, its JSON- and URL-encoded forms, and any long run of it, with <redacted>. */
const scrubWith = (secret: string) => {
  const forms = [...new Set([secret, JSON.stringify(secret).slice(1, -1), encodeURIComponent(secret)])]
    .filter((f) => f.length > 0)
  return (text: string): string => {
    let out = text
    for (const f of forms) out = out.split(f).join(REDACTED)
    if (secret.length < FRAGMENT_MIN) return out
    const hit = new Array<boolean>(out.length).fill(false)
    for (let i = 0; i + FRAGMENT_MIN <= out.length; i++) {
      for (let j = 0; j + FRAGMENT_MIN <= secret.length; j++) {
        let k = 0
        while (i + k < out.length && j + k < secret.length && out[i + k] === secret[j + k]) k++
        if (k >= FRAGMENT_MIN) hit.fill(true, i, i + k)
      }
    }
    let result = ""
    for (let i = 0; i < out.length; i++) {
      if (!hit[i]) result += out[i]
      else if (i === 0 || !hit[i - 1]) result += REDACTED
    }
    return result
  }
}

/** The one place the api key is unwrapped: the scrubber has to know what to look for. */
const makeScrubber = (apiKey: Redacted.Redacted<string>) => {
  const secret = Redacted.value(apiKey)
  const scrub = scrubWith(secret)
  // Only the head of a body can reach an excerpt; the window covers a URL-encoded token
  // straddling the cut, and keeps the fragment scan off a 4 MiB body.
  const window = 2 * EXCERPT_MAX + 3 * secret.length + 64
  return { scrub, excerpt: (text: string) => clip(oneLine(scrub(text.slice(0, window))), EXCERPT_MAX) }
}

/** Schema issues as `path: message`, with the `actual <input>` part cut so hub input is never echoed. */
const formatIssues = (e: ParseResult.ParseError): string => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(e)
  const lines = issues.slice(0, 8).map((i) => {
    const path = i.path.length === 0 ? "(root)" : i.path.map(String).join(".")
    return `${path}: ${clip(i.message.replace(/,?\s*actual[\s\S]*$/, "").trim(), 160)}`
  })
  if (issues.length > 8) lines.push(`(${issues.length - 8} more)`)
  return lines.join("; ")
}


// ---------------------------------------------------------------------------------------------

export const makeHub = (options: HubClientOptions = {}) =>
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    const http = yield* HttpClient.HttpClient
    if (file.hub === undefined) {
      return yield* Effect.dieMessage("Hub layer built without a hub config block (validated at load)")
    }
    const hub = file.hub
    const base = hub.url.replace(/\/+$/, "")
    const timeout = Duration.decode(options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT)
    const maxBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES
    const { scrub, excerpt } = makeScrubber(hub.api_key)

    const exchange = <A>(
      method: "GET" | "POST",
      path: string,
      body: Effect.Effect<string | undefined, HubError>,
      onOk: (status: number, text: string) => Effect.Effect<A, HubError>
    ): Effect.Effect<A, HubError> => {
      // Every message passes through here: scrubbed first, then bounded.
      const fail = (reason: HubError["reason"], message: string, status?: number) =>
        new HubError({
          reason,
          method,
          path,
          ...(status === undefined ? {} : { status }),
          message: clip(oneLine(scrub(`${method} ${path}: ${message}`)), 1000)
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
      const decodeFail = (m: string) => new HubError({ reason: "Decode", method, path, message: clip(oneLine(scrub(`${method} ${path}: ${m}`)), 1000) })
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
            message: clip(oneLine(scrub(`${method} ${path}: request body does not match the schema: ${
              ParseResult.isParseError(e) ? formatIssues(e) : e instanceof Error ? e.message : "not serializable"
            }`)), 1000)
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
              message: clip(oneLine(scrub(`GET ${PATHS.desiredState}: ${m}`)), 1000)
            })),
          onRight: Effect.succeed
        })
      ),
      Effect.withSpan("Hub.desiredState")
    )

    const signedJobs = exchange("GET", PATHS.signedJobs, Effect.succeed(undefined), decodeWith("GET", PATHS.signedJobs, SignedJobsResponse)).pipe(
      Effect.map((r): ReadonlyArray<SignedJob> => r.jobs),
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
  Layer.ensureRequirementsType<HttpClient.HttpClient | AgentConfig>()
)

/** The same with non-default limits (tests shorten the timeout). */
export const layerWithoutClient = (options: HubClientOptions) =>
  Layer.effect(Hub, makeHub(options)).pipe(Layer.ensureRequirementsType<HttpClient.HttpClient | AgentConfig>())

// ---------------------------------------------------------------------------------------------
// Transport: verified TLS only. No pinning and no insecure mode: the hub has a real certificate.

const dispatcherFor = (caFile: string | undefined): Effect.Effect<Undici.Dispatcher, ConfigError> =>
  caFile === undefined
    ? Effect.sync(() => new Undici.Agent())
    : Effect.try({
      try: () => new Undici.Agent({ connect: { ca: readFileSync(caFile, "utf8") } }),
      catch: (e) => new ConfigError({ key: "hub.ca_file", message: `cannot read CA file ${caFile}: ${e instanceof Error ? e.message : String(e)}` })
    })

/** An HttpClient verifying against the system roots, or only against `caFile` when given. */
export const hubHttpClientLayer = (caFile: string | undefined): Layer.Layer<HttpClient.HttpClient, ConfigError> =>
  NodeHttpClient.layerUndiciWithoutDispatcher.pipe(
    Layer.provide(Layer.scoped(
      NodeHttpClient.Dispatcher,
      Effect.acquireRelease(dispatcherFor(caFile), (agent) => Effect.promise(() => agent.destroy()))
    ))
  )

/** The hub HttpClient from AgentConfig's hub block. */
export const HubHttpClientLive: Layer.Layer<HttpClient.HttpClient, ConfigError, AgentConfig> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    if (file.hub === undefined) {
      return yield* new ConfigError({ key: "hub", message: "hub: the hub block is not configured" })
    }
    return hubHttpClientLayer(file.hub.ca_file)
  })
)
