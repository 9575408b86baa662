/**
 * EnrollHub over the real clients: HubEnroll for the enrollment (the operator's token as bearer)
 * and the Hub client's escrow calls with the host's api key, which exists only once the hub has
 * answered the enrollment, so a Hub client is made per call from it. Both trust only the hub's
 * own TLS (the system roots, or `--hub-ca`).
 */
import { HttpClient } from "@effect/platform"
import { Effect, Layer, type Redacted } from "effect"
import { HubSettings } from "../../layers/Config.js"
import { hubHttpClientLayer, makeHub } from "../../layers/Hub.js"
import { HubEnroll, hubEnrollLayer } from "../../layers/HubEnroll.js"
import { HubConfig } from "../../schema/config.js"
import type { ConfigError } from "../../schema/errors.js"
import { EnrollHub } from "./ports.js"

export interface EnrollHubSettings {
  readonly url: string
  readonly ca_file?: string
}

export const enrollHubLayer = (s: EnrollHubSettings): Layer.Layer<EnrollHub, ConfigError> =>
  Layer.effect(
    EnrollHub,
    Effect.gen(function*() {
      const enrollment = yield* HubEnroll
      const http = yield* HttpClient.HttpClient
      const hubFor = (apiKey: Redacted.Redacted<string>) =>
        makeHub().pipe(
          Effect.provideService(HubSettings, HubConfig.make({ url: s.url, api_key: apiKey, ...(s.ca_file === undefined ? {} : { ca_file: s.ca_file }) })),
          Effect.provideService(HttpClient.HttpClient, http)
        )
      return EnrollHub.of({
        enroll: enrollment.enroll,
        escrow: (apiKey) => Effect.flatMap(hubFor(apiKey), (h) => h.escrow),
        putEscrow: (apiKey, u) => Effect.flatMap(hubFor(apiKey), (h) => h.putEscrow(u))
      })
    })
  ).pipe(Layer.provide(Layer.merge(hubEnrollLayer(s), hubHttpClientLayer(s.ca_file))))
