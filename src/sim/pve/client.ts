/** The PVE simulator's API as an in-process HttpClient (see ../appClient.ts). */
import type { HttpClient } from "@effect/platform"
import type { Layer } from "effect"
import { type AppHttpClientOptions, layerAppHttpClient, makeAppHttpClient } from "../appClient.js"
import type { SimPve } from "./sim.js"

export type SimHttpClientOptions = AppHttpClientOptions

/** An HttpClient that serves every request from `sim.app` in-process. */
export const makeSimHttpClient = (sim: SimPve, options: SimHttpClientOptions = {}): HttpClient.HttpClient =>
  makeAppHttpClient(sim.app, options)

/** `HttpClient.HttpClient` dispatching to the simulator in-process (no socket, TestClock-safe). */
export const layerSimHttpClient = (sim: SimPve, options: SimHttpClientOptions = {}): Layer.Layer<HttpClient.HttpClient> =>
  layerAppHttpClient(sim.app, options)
