/**
 * One request/answer exchange with the hub, shared by the hub client (Hub.ts) and the enrollment
 * client (HubEnroll.ts): bearer auth, the response size cap (declared length and streamed bytes)
 * and the whole-exchange time cap, and error texts scrubbed of every secret the caller names
 * (the bearer, and whatever else the exchange carries) and bounded. Nothing here retries.
 *
 * Like Hub.ts, this module never shells out (scripts/check-boundaries.mjs follows Hub.ts here).
 */
import { HttpClientRequest } from "@effect/platform"
import type { HttpClient, HttpClientError, HttpClientResponse } from "@effect/platform"
import { Duration, Effect, ParseResult, type Redacted, Schema, Stream } from "effect"
import { HubError } from "../schema/hub.js"
import { clip, deepestCauseMessage, formatIssues, makeScrubber, type Scrubber } from "../schema/text.js"
import { VERSION } from "../version.js"

export type HubMethod = HubError["method"]

export interface HubExchangeOptions {
  /** The hub's base URL (a trailing slash is dropped). */
  readonly url: string
  readonly bearer: Redacted.Redacted<string>
  /** Every secret that must never reach an error text (the bearer's value among them). */
  readonly secrets: ReadonlyArray<string>
  readonly timeout: Duration.DurationInput
  readonly maxBytes: number
}

const EXCERPT_MAX = 300
const DECODE_MAX = 600

/** What a caller does with a non-2xx status: the reason it becomes (default Status). */
export type StatusReason = (status: number) => HubError["reason"]

export interface HubExchange {
  readonly scrubber: Scrubber
  /** Scrubbed first, then bounded: every error message passes through this. */
  readonly safe: (message: string) => string
  readonly exchange: <A>(
    method: HubMethod,
    path: string,
    body: Effect.Effect<string | undefined, HubError>,
    onOk: (status: number, text: string) => Effect.Effect<A, HubError>,
    statusReason?: StatusReason
  ) => Effect.Effect<A, HubError>
  /** JSON.parse whose error keeps only where it broke (its own message quotes input). */
  readonly parseJson: (fail: (m: string) => HubError) => (text: string) => Effect.Effect<unknown, HubError>
  /**
   * An HTTP 200 body decoded with `schema`; `strict` refuses keys the schema does not name.
   * `describe` may replace the issue list (a caller whose answer carries secrets it must not echo).
   */
  readonly decodeWith: <A, I>(
    method: HubMethod,
    path: string,
    schema: Schema.Schema<A, I>,
    options?: { readonly strict?: boolean; readonly describe?: (e: ParseResult.ParseError, raw: unknown) => string }
  ) => (status: number, text: string) => Effect.Effect<A, HubError>
  /** Our own request checked against its schema before it leaves: a mismatch is a bug here. */
  readonly encodeBody: <A, I>(method: HubMethod, path: string, schema: Schema.Schema<A, I>, value: A) => Effect.Effect<string, HubError>
}

export const makeHubExchange = (http: HttpClient.HttpClient, o: HubExchangeOptions): HubExchange => {
  const base = o.url.replace(/\/+$/, "")
  const timeout = Duration.decode(o.timeout)
  const maxBytes = o.maxBytes
  const scrubber = makeScrubber(o.secrets)
  const excerpt = (text: string) => scrubber.excerpt(text, EXCERPT_MAX)
  const safe = (message: string) => scrubber.excerpt(message, 1000)

  const exchange = <A>(
    method: HubMethod,
    path: string,
    body: Effect.Effect<string | undefined, HubError>,
    onOk: (status: number, text: string) => Effect.Effect<A, HubError>,
    statusReason: StatusReason = () => "Status"
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
      const request = (method === "GET" ? HttpClientRequest.get(url) : method === "PUT" ? HttpClientRequest.put(url) : HttpClientRequest.post(url)).pipe(
        HttpClientRequest.bearerToken(o.bearer),
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
        return yield* fail(statusReason(status), `HTTP ${status}${shown.length > 0 ? `: ${shown}` : ""}`, status)
      }
      return yield* onOk(status, text)
    })
  }

  const parseJson = (fail: (m: string) => HubError) => (text: string) =>
    Effect.try({
      try: (): unknown => JSON.parse(text),
      catch: (e) => {
        const at = e instanceof Error ? /position (\d+)/.exec(e.message) : null
        return fail(`response is not valid JSON${at === null ? "" : ` (at byte ${at[1]})`}`)
      }
    })

  const decodeWith = <A, I>(
    method: HubMethod,
    path: string,
    schema: Schema.Schema<A, I>,
    options: { readonly strict?: boolean; readonly describe?: (e: ParseResult.ParseError, raw: unknown) => string } = {}
  ) => {
    const decodeFail = (m: string) => new HubError({ reason: "Decode", method, path, message: safe(`${method} ${path}: ${m}`) })
    const decode = Schema.decodeUnknown(schema, { errors: "all", ...(options.strict === true ? { onExcessProperty: "error" as const } : {}) })
    return (status: number, text: string): Effect.Effect<A, HubError> =>
      status !== 200
        ? Effect.fail(new HubError({ reason: "Status", method, path, status, message: `${method} ${path}: expected HTTP 200 with a body, got ${status}` }))
        : parseJson(decodeFail)(text).pipe(
          Effect.flatMap((u) =>
            decode(u).pipe(
              Effect.mapError((e) =>
                decodeFail(clip(`response does not match the schema: ${options.describe === undefined ? formatIssues(e) : options.describe(e, u)}`, DECODE_MAX))
              )
            )
          )
        )
  }

  const encodeBody = <A, I>(method: HubMethod, path: string, schema: Schema.Schema<A, I>, value: A) =>
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

  return { scrubber, safe, exchange, parseJson, decodeWith, encodeBody }
}
