/**
 * An HttpClient that hands each request straight to an HttpApp, without a socket (the same
 * technique as the PVE simulator's client, for any app). Everything runs on the caller's fiber,
 * so a test under TestClock drives the dev hub's clock and the client's together.
 */
import { HttpClient, HttpClientError, type HttpClientRequest, HttpClientResponse, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { Chunk, Effect, Layer, Stream } from "effect"

type BodyInit = string | Uint8Array | FormData | URLSearchParams | undefined

const bodyOf = (request: HttpClientRequest.HttpClientRequest): Effect.Effect<BodyInit, HttpClientError.RequestError> => {
  const body = request.body
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
      return Effect.fail(new HttpClientError.RequestError({ request, reason: "Encode", description: "unsupported raw body for an in-process app" }))
    }
    case "Stream":
      return Stream.runCollect(body.stream).pipe(
        Effect.map((chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks))),
        Effect.map((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength)),
        Effect.mapError((cause) => new HttpClientError.RequestError({ request, reason: "Encode", cause }))
      )
  }
}

/** An HttpClient serving every request from `app` in-process. */
export const makeAppHttpClient = (app: HttpApp.Default): HttpClient.HttpClient =>
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
      return HttpClientResponse.fromWeb(request, HttpServerResponse.toWeb(response))
    })
  )

/** `HttpClient.HttpClient` dispatching to `app` in-process (no socket, TestClock-safe). */
export const layerAppHttpClient = (app: HttpApp.Default): Layer.Layer<HttpClient.HttpClient> =>
  Layer.succeed(HttpClient.HttpClient, makeAppHttpClient(app))
