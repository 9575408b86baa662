/**
 * The daemon with its status endpoint, for the status-endpoint and metrics tests: the real loop
 * (runDaemon) and the real endpoint (startStatusEndpoint on 127.0.0.1, port 0) against the PVE
 * simulator and the dev hub in-process, under TestClock; the hub can be made to fail (answering
 * with a chosen status and body) and the protection store is in the graph.
 */
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { Deferred, Duration, Effect, Layer, Option, Queue, Ref, Schema, TestClock } from "effect"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { HubSettingsLive, layerFrom, ProxmoxSettingsLive } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { HubWithoutClient } from "../src/layers/Hub.js"
import { JournalLive } from "../src/layers/Journal.js"
import { LoopProgress, make as makeProgress } from "../src/layers/LoopProgress.js"
import { ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { Systemd, type SystemdShape } from "../src/layers/Systemd.js"
import { type DaemonState, initialState, runDaemon } from "../src/programs/daemon/loop.js"
import { startStatusEndpoint } from "../src/programs/daemon/status.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { makeAppHttpClient, makeDevHub } from "../src/sim/hub/index.js"
import { makeSimHttpClient, makeSimPve } from "../src/sim/pve/index.js"
import { dbFile, settle } from "./engine-support.js"
import { seedWith } from "./support.js"

export const HOST = "host-status"
export const KEY = "status-api-key-0123456789abcdef"

export interface HubFault {
  answer: { status: number; body: string } | null
}

const quietSystemd: SystemdShape = {
  ready: Effect.void,
  watchdog: Effect.void,
  stopping: Effect.void,
  status: () => Effect.void,
  watchdogInterval: Option.some(Duration.seconds(15)),
  cloudflaredStatus: Effect.succeed("stopped")
}

export const startDaemonWithEndpoint = (o: { readonly pollIntervalSeconds?: number; readonly seed?: Record<string, unknown> } = {}) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith(o.seed ?? {}))
    const hub = yield* makeDevHub({ apiKeys: { [KEY]: HOST }, pollIntervalSeconds: o.pollIntervalSeconds ?? 60 })
    const fault: HubFault = { answer: null }
    const file = Schema.decodeUnknownSync(AgentConfigFile)({
      host_id: HOST,
      proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } },
      hub: { url: "https://hub.example.invalid", api_key: KEY },
      authz: { signers: [] },
      status_endpoint: { port: 0, stall_seconds: 300 }
    })
    const hubApp = makeAppHttpClient(hub.app)
    const hubClient = HttpClient.make((request) =>
      fault.answer === null
        ? hubApp.execute(request)
        : Effect.succeed(HttpClientResponse.fromWeb(request, new Response(fault.answer.body, { status: fault.answer.status })))
    )
    const path = dbFile()
    const db = layerAt(path)
    const services = Layer.mergeAll(
      ProxmoxWithoutClient.pipe(
        Layer.provide(Layer.succeed(HttpClient.HttpClient, makeSimHttpClient(sim, { reasonHeader: REASON_HEADER }))),
        Layer.provide(ProxmoxSettingsLive)
      ),
      HubWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, hubClient)), Layer.provide(HubSettingsLive)),
      JournalLive.pipe(Layer.provide(db)),
      ProtectionStoreLive.pipe(Layer.provide(db)),
      Layer.effect(Authz, makeAuthz({ hostId: HOST, signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db)),
      GuestQueue.layer(4),
      Layer.succeed(Systemd, quietSystemd),
      Layer.effect(LoopProgress, makeProgress(300)),
      // the same database (layers are shared by reference within one build): break-glass reads it
      db
    ).pipe(Layer.provideMerge(layerFrom(file)), Layer.orDie)
    const context = yield* Layer.build(services)
    const port = yield* Deferred.make<number>()
    const poke = yield* Queue.sliding<void>(1)
    const state = yield* Ref.make<DaemonState>(initialState)
    const fiber = yield* Effect.forkScoped(
      runDaemon({
        poke,
        state,
        alongside: startStatusEndpoint(state, { onListening: (p) => Deferred.succeed(port, p) })
      }).pipe(Effect.provide(context))
    )
    return { sim, hub, fault, fiber, state, path, context, port, tokenSecret: sim.tokenSecret }
  })

/** Advances simulated time in `step`-second steps, letting in-process I/O settle between them. */
export const advance = (seconds: number, step = 1) =>
  Effect.gen(function*() {
    for (let i = 0; i < Math.ceil(seconds / step); i++) {
      yield* settle
      yield* TestClock.adjust(Duration.seconds(step))
    }
    yield* settle
  })

export interface Got {
  readonly status: number
  readonly contentType: string | null
  readonly body: string
}

/** A GET over a real loopback socket (fetch: real time, the daemon's clock is untouched). */
export const get = (port: number, path: string): Effect.Effect<Got> =>
  Effect.promise(async () => {
    const res = await fetch(`http://127.0.0.1:${port}${path}`)
    return { status: res.status, contentType: res.headers.get("content-type"), body: await res.text() }
  })
