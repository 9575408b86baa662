/**
 * An HttpClient that hands requests straight to an HttpApp (the PVE simulator, the dev hub)
 * without a socket: the request is rebuilt as a web Request, served through
 * HttpServerRequest.fromWeb, and the response converted back via a web Response. Everything runs
 * on the caller's fiber, so tests under TestClock stay deterministic.
 */
import {
  HttpClient,
  HttpClientError,
  type HttpClientRequest,
  HttpClientResponse,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { Chunk, Effect, Layer, Stream } from "effect"

type BodyInit = string | Uint8Array | FormData | URLSearchParams | undefined

const bodyOf = (request: HttpClientRequest.HttpClientRequest): Effect.Effect<BodyInit, HttpClientError.RequestError> => {
  const body = request.body
  const encodeError = (description: string) =>
    new HttpClientError.RequestError({ request, reason: "Encode", description })
  switch (body._tag) {
    case "Empty":
      return Effect.succeed(undefined)
    case "Uint8Array":
      return Effect.succeed(body.body)
    case "FormData":
      return Effect.succeed(body.formData)
    case "Raw": {
      const raw = body.body
      if (typeof raw === "string" || raw instanceof Uint8Array || raw instanceof URLSearchParams) return Effect.succeed(raw)
      return Effect.fail(encodeError("unsupported raw body for an in-process app"))
    }
    case "Stream":
      return Stream.runCollect(body.stream).pipe(
        Effect.map((chunks) => {
          const parts = Chunk.toReadonlyArray(chunks)
          const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
          let offset = 0
          for (const p of parts) {
            out.set(p, offset)
            offset += p.length
          }
          return out
        }),
        Effect.mapError((cause) => new HttpClientError.RequestError({ request, reason: "Encode", cause }))
      )
  }
}

export interface AppHttpClientOptions {
  /**
   * Copy the HTTP reason phrase into this response header. A web Response keeps it only as
   * `statusText`, which HttpClientResponse does not expose; a transport that surfaces the reason
   * phrase as a header (for pre-8.3 hosts, whose bodies carry no message) can name it here.
   */
  readonly reasonHeader?: string | undefined
}

/** An HttpClient that serves every request from `app` in-process. */
export const makeAppHttpClient = (app: HttpApp.Default, options: AppHttpClientOptions = {}): HttpClient.HttpClient =>
  HttpClient.make((request, url) =>
    Effect.gen(function*() {
      const body = yield* bodyOf(request)
      const method = request.method
      const webRequest = yield* Effect.try({
        try: () =>
          new Request(url.toString(), {
            method,
            headers: { ...request.headers },
            ...(body !== undefined && method !== "GET" && method !== "HEAD" ? { body } : {})
          }),
        catch: (cause) => new HttpClientError.RequestError({ request, reason: "Transport", cause })
      })
      const response = yield* app.pipe(
        Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(webRequest)),
        Effect.scoped
      )
      const web = HttpServerResponse.toWeb(response)
      const reasonHeader = options.reasonHeader
      if (reasonHeader === undefined || web.statusText.length === 0) return HttpClientResponse.fromWeb(request, web)
      const headers = new Headers(web.headers)
      headers.set(reasonHeader, web.statusText)
      return HttpClientResponse.fromWeb(
        request,
        new Response(web.body, { status: web.status, statusText: web.statusText, headers })
      )
    })
  )

/** `HttpClient.HttpClient` dispatching to `app` in-process (no socket, TestClock-safe). */
export const layerAppHttpClient = (app: HttpApp.Default, options: AppHttpClientOptions = {}): Layer.Layer<HttpClient.HttpClient> =>
  Layer.succeed(HttpClient.HttpClient, makeAppHttpClient(app, options))
