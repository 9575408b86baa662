/**
 * The hub client against the dev hub over real HTTPS on 127.0.0.1 (CA-verified with the dev
 * hub's own certificate, not the PVE simulator's), the dev hub's own protocol and admin
 * surface, the dead-man's switch under TestClock, every way a hub can misbehave (each a typed
 * HubError, none carrying the token), the golden contract of the host report, and the fence
 * in types.
 */
import { type MethodR, type RIn, runFenceCheck } from "./fence-support.js"
import { CommandExecutor, HttpClient, HttpClientRequest, HttpServerRequest, HttpServerResponse, type HttpApp } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, expectTypeOf, it, vi } from "@effect/vitest"
import { Cause, Chunk, Duration, Effect, Either, Exit, Fiber, Layer, Logger, LogLevel, Option, Schedule, Schema, SchemaAST, Stream, TestClock } from "effect"
import { existsSync, mkdtempSync, readFileSync, utimesSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { inspect } from "node:util"
import { hubSettings, type HubSettings } from "../src/layers/Config.js"
import { Hub, type HubClientOptions, type HubShape, HubHttpClientLive, hubHttpClientLayer, HubWithoutClient, layerWithoutClient } from "../src/layers/Hub.js"
import { AgentConfigFile } from "../src/schema/config.js"
import type { ConfigError } from "../src/schema/errors.js"
import { type DesiredState, DesiredState as DesiredStateSchema } from "../src/schema/desired.js"
import {
  clampPollInterval,
  type HostReport,
  HostReport as HostReportSchema,
  type HubError,
  ReportGuest,
  type SignedJob,
  SignedJob as SignedJobSchema
} from "../src/schema/hub.js"
import { devHubCaPem, layerAppHttpClient, makeAppHttpClient, makeDevHub, runDevHubCli, serveApp, serveDevHub } from "../src/sim/hub/index.js"

const TOKEN = "s3cr3t-HUB-token-7f9a1c2e4b6d8f0a1c3e5b7d9f1a3c5e"
const HOST = "pve-hel1-07"
const dir = mkdtempSync(join(tmpdir(), "felhom-hub-"))
const caFile = join(dir, "hub-ca.pem")
writeFileSync(caFile, devHubCaPem)

const golden: unknown = JSON.parse(readFileSync(join(__dirname, "fixtures", "hub", "host-report.golden.json"), "utf8"))
const goldenReport = Schema.decodeUnknownSync(HostReportSchema)(golden, { onExcessProperty: "error" })
const reportFor = (hostId: string): HostReport => ({ ...goldenReport, host_id: hostId })

const configFile = (url: string, apiKey: string, ca: string | undefined = caFile) =>
  Schema.decodeUnknownSync(AgentConfigFile)({
    host_id: HOST,
    hub: { url, api_key: apiKey, ...(ca === undefined ? {} : { ca_file: ca }) }
  })

/** The production wiring: HubHttpClientLive reads hub.ca_file from the hub block. */
const liveHub = (url: string, apiKey = TOKEN, ca?: string) =>
  HubWithoutClient.pipe(Layer.provide(HubHttpClientLive), Layer.provide(hubSettings(configFile(url, apiKey, ca ?? caFile).hub!)))

const hubWith = (url: string, options: HubClientOptions, apiKey = TOKEN) =>
  layerWithoutClient(options).pipe(Layer.provide(hubHttpClientLayer(caFile)), Layer.provide(hubSettings(configFile(url, apiKey).hub!)))

const desiredFixture = Schema.decodeUnknownSync(DesiredStateSchema)(
  JSON.parse(readFileSync(join(__dirname, "fixtures", "desired", "sim-converged.json"), "utf8"))
)
const desired = (guests: number): DesiredState => ({ ...desiredFixture, guests: desiredFixture.guests.slice(0, guests) })

const job = (id: string, guest: number | null = 100): SignedJob =>
  Schema.decodeUnknownSync(SignedJobSchema)({ id, op: "force-backup", guest_id: guest, params: { storage: "local" } })

// ---------------------------------------------------------------------------------------------
// The token never leaks

/** Any run of 10+ characters of the token counts as a leak (a hub may echo it truncated). */
const leaksToken = (text: string) => {
  for (let i = 0; i + 10 <= TOKEN.length; i++) if (text.includes(TOKEN.slice(i, i + 10))) return true
  return false
}

const logs: Array<string> = []
const captureLogs = Layer.merge(
  Logger.replace(Logger.defaultLogger, Logger.make(({ message, cause }) => {
    logs.push(inspect(message, { depth: 8 }), Cause.pretty(cause))
  })),
  Logger.minimumLogLevel(LogLevel.All)
)

/** Runs `eff` expecting a HubError; checks every rendering of it (and the logs) for the token. */
const hubFailure = <A>(eff: Effect.Effect<A, HubError, Hub>, layer: Layer.Layer<Hub, ConfigError>) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(eff.pipe(Effect.provide(layer)))
    if (Exit.isSuccess(exit)) return yield* Effect.dieMessage(`expected a HubError, got ${inspect(exit.value)}`)
    const failure = Cause.failureOption(exit.cause)
    if (Option.isNone(failure) || failure.value._tag !== "HubError") {
      return yield* Effect.dieMessage(`expected a HubError, got ${Cause.pretty(exit.cause)}`)
    }
    const e = failure.value
    for (const text of [String(e), JSON.stringify(e), e.message, inspect(e, { depth: 8 }), Cause.pretty(exit.cause), ...logs]) {
      expect(leaksToken(text), text).toBe(false)
    }
    expect(e.message.length).toBeLessThanOrEqual(1001)
    return e
  }).pipe(Effect.provide(captureLogs))

const withDevHub = <A, E>(
  body: (s: Effect.Effect.Success<ReturnType<typeof serveDevHub>>) => Effect.Effect<A, E, never>,
  opts: { pollIntervalSeconds?: number } = {}
) =>
  Effect.scoped(Effect.flatMap(
    serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { [TOKEN]: HOST, "other-key-for-h2-0123456789": "h2" }, ...opts }),
    body
  ))

/** A hub that answers every request with `respond` (HTTPS, simulator certificate). */
const fakeHub = (respond: (req: HttpServerRequest.HttpServerRequest) => Effect.Effect<HttpServerResponse.HttpServerResponse>) => {
  const app: HttpApp.Default = Effect.flatMap(HttpServerRequest.HttpServerRequest, respond)
  return serveApp(app, { host: "127.0.0.1", port: 0 })
}

const json = (status: number, body: unknown) => Effect.succeed(HttpServerResponse.unsafeJson(body, { status }))

// ---------------------------------------------------------------------------------------------

describe("host report golden contract", () => {
  type Tree = { readonly paths: Set<string>; readonly opaque: Set<string> }

  /** JSON field paths from the schema's encoded (wire) side: `a.b`, `list[].field`; records are opaque. */
  const schemaTree = (ast: SchemaAST.AST): Tree => {
    const paths = new Set<string>()
    const opaque = new Set<string>()
    const walk = (a: SchemaAST.AST, prefix: string): void => {
      switch (a._tag) {
        case "Refinement":
          return walk(a.from, prefix)
        case "Transformation":
          return walk(a.from, prefix)
        case "Suspend":
          return walk(a.f(), prefix)
        case "Union":
          return a.types.forEach((t) => walk(t, prefix))
        case "TupleType":
          a.elements.forEach((e) => walk(e.type, `${prefix}[]`))
          return a.rest.forEach((r) => walk(r.type, `${prefix}[]`))
        case "TypeLiteral": {
          if (a.indexSignatures.length > 0) opaque.add(prefix)
          for (const p of a.propertySignatures) {
            const path = prefix === "" ? String(p.name) : `${prefix}.${String(p.name)}`
            paths.add(path)
            walk(p.type, path)
          }
          return
        }
        default:
          return
      }
    }
    walk(ast, "")
    return { paths, opaque }
  }

  const jsonPaths = (value: unknown, opaque: Set<string>): Set<string> => {
    const paths = new Set<string>()
    const walk = (v: unknown, prefix: string): void => {
      if (opaque.has(prefix)) return
      if (Array.isArray(v)) return v.forEach((x) => walk(x, `${prefix}[]`))
      if (typeof v === "object" && v !== null) {
        for (const [k, x] of Object.entries(v)) {
          const path = prefix === "" ? k : `${prefix}.${k}`
          paths.add(path)
          walk(x, path)
        }
      }
    }
    walk(value, "")
    return paths
  }

  const sorted = (s: Set<string>) => [...s].sort()

  it("the HostReport schema's field names, deep, equal the golden file's", () => {
    const tree = schemaTree(HostReportSchema.ast)
    expect(sorted(tree.opaque)).toEqual(["pending_signatures[].params"])
    expect(tree.paths.has("guests[].spec.rootfs_gib")).toBe(true)
    expect(sorted(jsonPaths(golden, tree.opaque))).toEqual(sorted(tree.paths))
  })

  it("the golden file decodes strictly and encodes back to itself", () => {
    const decoded = Schema.decodeUnknownSync(HostReportSchema)(golden, { onExcessProperty: "error", errors: "all" })
    expect(Schema.encodeSync(HostReportSchema)(decoded)).toEqual(golden)
  })

  it("the comparison notices a field added, removed or renamed anywhere", () => {
    const base = schemaTree(HostReportSchema.ast)
    // schema side: a nested element struct loses a field, the top level gains one
    const fewer = Schema.Struct({ ...HostReportSchema.fields, guests: Schema.Array(ReportGuest.pipe(Schema.omit("lock"))) })
    expect(sorted(schemaTree(fewer.ast).paths)).not.toEqual(sorted(base.paths))
    const more = Schema.Struct({ ...HostReportSchema.fields, extra: Schema.String })
    expect(sorted(schemaTree(more.ast).paths)).not.toEqual(sorted(base.paths))
    // golden side: a rename deep inside an array element
    const renamed = JSON.parse(JSON.stringify(golden)) as { guests: Array<{ spec: Record<string, unknown> | null }> }
    const spec = renamed.guests[0]!.spec!
    spec["memory_bytes"] = spec["memory_mib"]
    delete spec["memory_mib"]
    expect(sorted(jsonPaths(renamed, base.opaque))).not.toEqual(sorted(base.paths))
  })

  it("clampPollInterval keeps the agent between 60 s and an hour", () => {
    expect([5, 59.4, 60, 90.4, 3600, 99999, -1].map(clampPollInterval)).toEqual([60, 60, 60, 90, 3600, 3600, 60])
  })
})

describe("Hub client against the dev hub over HTTPS", () => {
  it.live("report → control envelope; the hub records the report and the heartbeat", () =>
    withDevHub(({ hub, url }) =>
      Effect.gen(function*() {
        const client = yield* Hub
        const envelope = yield* client.report(reportFor(HOST))
        expect(envelope).toEqual({ poll_interval_seconds: 120, blocked: false, desired_generation: 0, has_signed_ops: false })
        const received = yield* hub.reports(HOST)
        expect(received.map((r) => r.report)).toEqual([reportFor(HOST)])
        expect(Option.isSome(yield* hub.lastSeen(HOST))).toBe(true)
        expect(Option.isNone(yield* hub.lastSeen("h2"))).toBe(true)
        yield* hub.setBlocked(HOST, true)
        expect((yield* client.report(reportFor(HOST))).blocked).toBe(true)
        expect(yield* hub.reports(HOST)).toHaveLength(2)
      }).pipe(Effect.provide(liveHub(url)), Effect.orDie), { pollIntervalSeconds: 120 }))

  it.live("the poll interval is clamped: 5 → 60, 99999 → 3600", () =>
    Effect.gen(function*() {
      for (const [asked, adopted] of [[5, 60], [99999, 3600]] as const) {
        const envelope = yield* withDevHub(({ url }) =>
          Effect.flatMap(Hub, (h) => h.report(reportFor(HOST))).pipe(Effect.provide(liveHub(url)), Effect.orDie), { pollIntervalSeconds: asked })
        expect(envelope.poll_interval_seconds).toBe(adopted)
      }
    }))

  it.live("desired state: 404 before anything is published, then the published state under the hub's generation", () =>
    withDevHub(({ hub, url }) =>
      Effect.gen(function*() {
        const client = yield* Hub
        const before = yield* hubFailure(client.desiredState, liveHub(url))
        expect([before.reason, before.status]).toEqual(["Status", 404])
        const first = yield* hub.setDesired(HOST, desired(3))
        expect(first).toBe(1)
        expect((yield* client.report(reportFor(HOST))).desired_generation).toBe(1)
        const got = yield* client.desiredState
        expect(got).toEqual({ ...desired(3), generation: 1 })
        yield* hub.setDesired(HOST, { ...desired(1), generation: 77 }) // the hub owns generations
        expect((yield* client.report(reportFor(HOST))).desired_generation).toBe(2)
        const second = yield* client.desiredState
        expect([second.generation, second.guests.length]).toEqual([2, 1])
      }).pipe(Effect.provide(liveHub(url)), Effect.orDie)))

  it.live("signed jobs are handed out once; results are recorded (a re-post replaces by id)", () =>
    withDevHub(({ hub, url }) =>
      Effect.gen(function*() {
        const client = yield* Hub
        yield* hub.enqueueJob(HOST, job("job-1"))
        yield* hub.enqueueJob(HOST, job("job-2", null))
        yield* hub.enqueueJob("h2", job("job-other"))
        expect((yield* client.report(reportFor(HOST))).has_signed_ops).toBe(true)
        const jobs = (yield* client.signedJobs).map((e) => Either.getOrThrow(e))
        expect(jobs.map((j) => j.id)).toEqual(["job-1", "job-2"])
        expect(jobs[0]).toEqual(job("job-1"))
        // unanswered jobs are handed out again (a job deferred to the update window waits there)
        expect((yield* client.signedJobs).map((e) => Either.getOrThrow(e).id)).toEqual(["job-1", "job-2"])
        expect((yield* client.report(reportFor(HOST))).has_signed_ops).toBe(true)
        yield* client.postJobResults([{ id: "job-1", op: "force-backup", guest_id: 100, status: "done", reason: "ok" }])
        expect((yield* client.signedJobs).map((e) => Either.getOrThrow(e).id)).toEqual(["job-2"])
        yield* client.postJobResults([{ id: "job-2", op: "force-backup", guest_id: null, status: "failed", reason: "BadJob: needs guest_id" }])
        expect(yield* client.signedJobs).toEqual([])
        expect((yield* client.report(reportFor(HOST))).has_signed_ops).toBe(false)
        yield* client.postJobResults([{ id: "job-1", op: "force-backup", guest_id: 100, status: "duplicate", reason: "already handled" }])
        const results = yield* hub.jobResults(HOST)
        expect(results.map((r) => [r.result.id, r.result.status])).toEqual([["job-1", "duplicate"], ["job-2", "failed"]])
        expect(yield* hub.jobResults("h2")).toEqual([])
        const view = yield* hub.view(HOST)
        expect([view.queued_jobs, view.handed_out_jobs]).toEqual([[], ["job-1", "job-2"]])
      }).pipe(Effect.provide(liveHub(url)), Effect.orDie)))

  it.live("an unknown key is 401; a report for another host is 403; system roots refuse the dev hub's certificate", () =>
    withDevHub(({ url }) =>
      Effect.gen(function*() {
        const unknown = yield* hubFailure(Effect.flatMap(Hub, (h) => h.report(reportFor(HOST))), liveHub(url, "not-a-key-of-this-hub"))
        expect([unknown.reason, unknown.status]).toEqual(["Status", 401])
        expect(unknown.message).toContain("unknown or missing bearer token")
        const other = yield* hubFailure(Effect.flatMap(Hub, (h) => h.report(reportFor("h2"))), liveHub(url))
        expect([other.reason, other.status]).toEqual(["Status", 403])
        const noCa = HubWithoutClient.pipe(
          Layer.provide(HubHttpClientLive),
          Layer.provide(hubSettings(Schema.decodeUnknownSync(AgentConfigFile)({ host_id: HOST, hub: { url, api_key: TOKEN } }).hub!))
        )
        const untrusted = yield* hubFailure(Effect.flatMap(Hub, (h) => h.report(reportFor(HOST))), noCa)
        expect(untrusted.reason).toBe("Transport")
        expect(untrusted.message).toMatch(/certificate/i)
      })))

  it.live("a missing CA file is a ConfigError naming hub.ca_file", () =>
    Effect.gen(function*() {
      const layer = liveHub("https://127.0.0.1:1", TOKEN, join(dir, "absent.pem"))
      const exit = yield* Effect.exit(Effect.provide(Hub, layer))
      expect(Exit.isFailure(exit) && Option.getOrUndefined(Cause.failureOption(exit.cause))).toMatchObject({ _tag: "ConfigError", key: "hub.ca_file" })
    }))
})

describe("dev hub", () => {
  it.scoped("dead-man's switch under TestClock: overdue after 3 × the interval of silence, and not before", () =>
    Effect.gen(function*() {
      const hub = yield* makeDevHub({ apiKeys: { [TOKEN]: HOST, k2: "h2" }, pollIntervalSeconds: 60 })
      expect(hub.overdueAfterSeconds).toBe(180)
      const client = HubWithoutClient.pipe(
        Layer.provide(layerAppHttpClient(hub.app)),
        Layer.provide(hubSettings(configFile("https://hub.invalid", TOKEN).hub!))
      )
      const report = Effect.flatMap(Hub, (h) => h.report(reportFor(HOST))).pipe(Effect.provide(client), Effect.orDie)
      expect(yield* hub.overdue).toEqual([])
      yield* TestClock.adjust("100 seconds")
      yield* report
      expect(yield* hub.lastSeen(HOST)).toEqual(Option.some(100_000))
      yield* TestClock.adjust("81 seconds")
      // h2 never reported: counted from the hub's start
      expect(yield* hub.overdue).toEqual(["h2"])
      yield* TestClock.adjust("99 seconds") // exactly 180 s of silence is not yet overdue
      expect(yield* hub.overdue).toEqual(["h2"])
      yield* TestClock.adjust("1 second")
      expect(yield* hub.overdue).toEqual([HOST, "h2"])
      expect((yield* hub.view(HOST)).overdue).toBe(true)
      yield* report
      expect(yield* hub.overdue).toEqual(["h2"])
      yield* TestClock.adjust(Duration.hours(5))
      expect(yield* hub.overdue).toEqual([HOST, "h2"])
    }))

  it.scoped("overdueAfterSeconds overrides the default", () =>
    Effect.gen(function*() {
      const hub = yield* makeDevHub({ apiKeys: { k: "h" }, pollIntervalSeconds: 5, overdueAfterSeconds: 30 })
      yield* TestClock.adjust("30 seconds")
      expect(yield* hub.overdue).toEqual([])
      yield* TestClock.adjust("1 second")
      expect(yield* hub.overdue).toEqual(["h"])
    }))

  it.scoped("bad agent input: 400 with a message; unknown routes 404", () =>
    Effect.gen(function*() {
      const hub = yield* makeDevHub({ apiKeys: { [TOKEN]: HOST } })
      const http = makeAppHttpClient(hub.app).pipe(HttpClient.mapRequest(HttpClientRequest.bearerToken(TOKEN)))
      const post = (path: string, body: string) =>
        http.execute(HttpClientRequest.post(`https://hub.invalid${path}`).pipe(HttpClientRequest.bodyText(body, "application/json"))).pipe(
          Effect.flatMap((r) => Effect.map(r.text, (t) => [r.status, t] as const)),
          Effect.orDie
        )
      expect(yield* post("/api/v1/host-report", "{nope")).toEqual([400, JSON.stringify({ error: "request body is not valid JSON" })])
      const [s2, b2] = yield* post("/api/v1/host-report", JSON.stringify({ ...reportFor(HOST), guests: null }))
      expect([s2, b2]).toEqual([400, expect.stringContaining("guests")])
      const [s3, b3] = yield* post("/api/v1/host-report", JSON.stringify({ ...reportFor(HOST), surprise: 1 }))
      expect([s3, b3]).toEqual([400, expect.stringContaining("surprise")])
      expect((yield* post("/api/v1/job-results", JSON.stringify({ results: [{ id: "x" }] })))[0]).toBe(400)
      expect((yield* post("/api/v1/nowhere", "{}"))[0]).toBe(404)
      expect(yield* hub.reports(HOST)).toEqual([])
    }))
})

describe("a misbehaving hub is a typed HubError, never carrying the token", () => {
  const envelope = { poll_interval_seconds: 300, blocked: false, desired_generation: 3, has_signed_ops: false }
  const report = Effect.flatMap(Hub, (h) => h.report(reportFor(HOST)))
  const authOf = (req: HttpServerRequest.HttpServerRequest) => req.headers["authorization"] ?? ""

  /** Serves `respond` and runs `eff` through a client with a short timeout. */
  const against = <A>(
    respond: (req: HttpServerRequest.HttpServerRequest) => Effect.Effect<HttpServerResponse.HttpServerResponse>,
    eff: Effect.Effect<A, HubError, Hub> = report as Effect.Effect<never, HubError, Hub>,
    requestTimeout: Duration.DurationInput = "400 millis"
  ) =>
    Effect.scoped(Effect.flatMap(fakeHub(respond), ({ url }) => hubFailure(eff, hubWith(url, { requestTimeout }))))

  it.live("the same fake hub answering well works (the harness itself is sound)", () =>
    Effect.scoped(Effect.gen(function*() {
      const { url } = yield* fakeHub(() => json(200, { ...envelope, extra_field_from_a_newer_hub: true }))
      const got = yield* report.pipe(Effect.provide(hubWith(url, {})))
      expect(got).toEqual(envelope)
    })))

  it.live("a 500 and a 401 echoing the Authorization header: Status, with a scrubbed excerpt", () =>
    Effect.gen(function*() {
      const e500 = yield* against((req) => json(500, { error: "internal", you_sent: authOf(req) }))
      expect([e500.reason, e500.status]).toEqual(["Status", 500])
      expect(e500.message).toContain("HTTP 500")
      expect(e500.message).toContain("Bearer <redacted>")
      const e401 = yield* against((req) => Effect.succeed(HttpServerResponse.text(`denied: ${authOf(req)} (${encodeURIComponent(authOf(req))})`, { status: 401 })))
      expect([e401.reason, e401.status]).toEqual(["Status", 401])
      // truncated echoes, and a body far larger than any excerpt
      const partial = yield* against((req) => Effect.succeed(HttpServerResponse.text(`token starts ${authOf(req).slice(7, 7 + 20)} and ends ${authOf(req).slice(-15)}`, { status: 503 })))
      expect(partial.status).toBe(503)
      const big = yield* against((req) => Effect.succeed(HttpServerResponse.text(`${authOf(req)} `.repeat(20_000), { status: 500 })))
      expect(big.message.length).toBeLessThan(600)
    }))

  it.live("a 2xx that is not 200 where a body is expected, and a redirect (never followed), are Status", () =>
    Effect.gen(function*() {
      expect((yield* against(() => Effect.succeed(HttpServerResponse.empty({ status: 204 })))).status).toBe(204)
      const moved = yield* against(() => Effect.succeed(HttpServerResponse.empty({ status: 302, headers: { location: "https://127.0.0.1:1/elsewhere" } })))
      expect([moved.reason, moved.status]).toEqual(["Status", 302])
    }))

  it.live("malformed JSON, wrong types and missing fields: Decode, without echoing the input", () =>
    Effect.gen(function*() {
      const notJson = yield* against((req) => Effect.succeed(HttpServerResponse.text(`${authOf(req)} is not JSON {`, { status: 200 })))
      expect(notJson.reason).toBe("Decode")
      expect(notJson.message).toContain("not valid JSON")
      const wrongType = yield* against((req) => json(200, { ...envelope, poll_interval_seconds: authOf(req) }))
      expect(wrongType.reason).toBe("Decode")
      expect(wrongType.message).toContain("poll_interval_seconds")
      const missing = yield* against(() => json(200, { poll_interval_seconds: 60 }))
      expect(missing.message).toContain("desired_generation")
      const array = yield* against(() => json(200, [envelope]))
      expect(array.reason).toBe("Decode")
      const badDesired = yield* against((req) => json(200, { generation: 1, guests: [{ vmid: authOf(req) }] }), Effect.flatMap(Hub, (h) => h.desiredState))
      expect(badDesired.reason).toBe("Decode")
      expect(badDesired.message).toContain("guests")
      // a bad entry is refused on its own (never costs the batch), without the token anywhere
      const entries = yield* Effect.scoped(Effect.flatMap(
        fakeHub((req) => json(200, { jobs: [{ id: authOf(req).slice(7), op: "x" }, { id: "ok-1", op: "force-backup", guest_id: 100, params: { storage: "local" } }] })),
        ({ url }) => Effect.flatMap(Hub, (h) => h.signedJobs).pipe(Effect.provide(hubWith(url, { requestTimeout: "400 millis" })))
      ))
      expect(entries.map((e) => e._tag)).toEqual(["Left", "Right"])
      expect(JSON.stringify(entries)).not.toContain(TOKEN)
      const nullJobs = yield* against(() => json(200, { jobs: null }), Effect.flatMap(Hub, (h) => h.signedJobs))
      expect(nullJobs.reason).toBe("Decode")
    }))

  it.live("a body over the cap: TooLarge, whether announced by content-length or streamed", () =>
    Effect.gen(function*() {
      const fiveMiB = "x".repeat(5 * 1024 * 1024)
      // a generous timeout: on a loaded machine streaming 4 MiB can take longer than the usual 400 ms
      const announced = yield* against(() => Effect.succeed(HttpServerResponse.text(fiveMiB, { status: 200 })), undefined, "10 seconds")
      expect(announced.reason).toBe("TooLarge")
      const chunk = new Uint8Array(64 * 1024).fill(0x20)
      const streamed = yield* against(() =>
        Effect.succeed(HttpServerResponse.stream(Stream.fromChunk(Chunk.make(chunk)).pipe(Stream.forever, Stream.take(100)), { status: 200 })), undefined, "10 seconds")
      expect(streamed.reason).toBe("TooLarge")
      expect(streamed.message).toContain(`${4 * 1024 * 1024} bytes`)
    }))

  it.live("no answer within the timeout, and nobody listening: Transport", () =>
    Effect.gen(function*() {
      const started = Date.now()
      const slow = yield* against(() => Effect.as(Effect.sleep("5 seconds"), HttpServerResponse.unsafeJson(envelope)))
      expect(slow.reason).toBe("Transport")
      expect(slow.message).toContain("no complete answer within")
      expect(Date.now() - started).toBeLessThan(3000)
      const refused = yield* Effect.scoped(Effect.gen(function*() {
        const { url } = yield* fakeHub(() => json(200, envelope))
        return url
      })).pipe(Effect.flatMap((closedUrl) => hubFailure(report, hubWith(closedUrl, {}))))
      expect(refused.reason).toBe("Transport")
    }))

  it.live("our own report failing its schema is caught before it is sent", () =>
    Effect.scoped(Effect.gen(function*() {
      let requests = 0
      const { url } = yield* fakeHub(() => Effect.sync(() => requests++).pipe(Effect.as(HttpServerResponse.unsafeJson(envelope))))
      const bad = { ...reportFor(HOST), reported_at: "yesterday" }
      const e = yield* hubFailure(Effect.flatMap(Hub, (h) => h.report(bad)), hubWith(url, {}))
      expect(e.reason).toBe("Decode")
      expect(e.message).toContain("reported_at")
      expect(requests).toBe(0)
    })))

  it.live("the client sends the bearer token, JSON and its user agent", () =>
    Effect.scoped(Effect.gen(function*() {
      const seen: Array<Record<string, string | undefined>> = []
      const { url } = yield* fakeHub((req) =>
        Effect.sync(() => seen.push({ method: req.method, url: req.url, auth: req.headers["authorization"], type: req.headers["content-type"], ua: req.headers["user-agent"] }))
          .pipe(Effect.as(HttpServerResponse.unsafeJson(envelope))))
      yield* report.pipe(Effect.provide(hubWith(`${url}/prefix/`, {})), Effect.orDie)
      expect(seen).toEqual([{ method: "POST", url: "/prefix/api/v1/host-report", auth: `Bearer ${TOKEN}`, type: "application/json", ua: "felhom-agent/0.1.0" }])
    })))
})

describe("dev hub admin API and CLI", () => {
  const adminCall = (url: string, token: string, method: "GET" | "POST", path: string, body?: unknown) =>
    Effect.gen(function*() {
      const http = yield* HttpClient.HttpClient
      const base = method === "GET" ? HttpClientRequest.get(`${url}${path}`) : HttpClientRequest.post(`${url}${path}`)
      const req = base.pipe(
        HttpClientRequest.bearerToken(token),
        (r) => (body === undefined ? r : HttpClientRequest.bodyText(r, JSON.stringify(body), "application/json"))
      )
      const res = yield* http.execute(req)
      return [res.status, yield* res.json] as const
    }).pipe(Effect.provide(hubHttpClientLayer(caFile)), Effect.orDie)

  it.live("admin endpoints publish desired state, queue jobs, block, and show a host; they need the admin token", () =>
    withDevHub(({ hub, url }) =>
      Effect.gen(function*() {
        const admin = (method: "GET" | "POST", path: string, body?: unknown) => adminCall(url, hub.adminToken, method, path, body)
        const { generation: _, ...withoutGeneration } = desired(2)
        expect(yield* admin("POST", `/admin/hosts/${HOST}/desired`, withoutGeneration)).toEqual([200, { host_id: HOST, generation: 1 }])
        expect((yield* admin("POST", `/admin/hosts/${HOST}/desired`, { guests: "all" }))[0]).toBe(400)
        expect(yield* admin("POST", `/admin/hosts/${HOST}/jobs`, job("j-9"))).toEqual([202, { host_id: HOST, queued: ["j-9"] }])
        expect((yield* admin("POST", `/admin/hosts/${HOST}/jobs`, { id: "bad id!" }))[0]).toBe(400)
        expect(yield* admin("POST", `/admin/hosts/${HOST}/blocked`, { blocked: true })).toEqual([200, { host_id: HOST, blocked: true }])
        expect((yield* admin("POST", "/admin/hosts/nobody/blocked", { blocked: true }))[0]).toBe(404)
        const [status, view] = yield* admin("GET", `/admin/hosts/${HOST}`)
        expect(status).toBe(200)
        expect(view).toMatchObject({ host_id: HOST, last_seen: null, blocked: true, desired_generation: 1, queued_jobs: ["j-9"], reports_received: 0 })
        expect((yield* admin("GET", "/admin/hosts"))[1]).toMatchObject({ hosts: [{ host_id: HOST }, { host_id: "h2" }] })
        expect(yield* admin("GET", "/admin/overdue")).toEqual([200, { hosts: [] }])
        expect(Option.map(yield* hub.desired(HOST), (d) => d.guests.length)).toEqual(Option.some(2))
        // the agent's key is not an admin key, and the admin token is not an agent key
        expect((yield* adminCall(url, TOKEN, "GET", `/admin/hosts/${HOST}`))[0]).toBe(401)
        expect((yield* adminCall(url, hub.adminToken, "GET", "/api/v1/signed-jobs"))[0]).toBe(401)
        const envelope = yield* Effect.flatMap(Hub, (h) => h.report(reportFor(HOST))).pipe(Effect.provide(liveHub(url)), Effect.orDie)
        expect(envelope).toMatchObject({ blocked: true, desired_generation: 1, has_signed_ops: true })
      })))

  it.live("serveDevHub refuses a non-loopback bind; plain HTTP is available on loopback", () =>
    Effect.scoped(Effect.gen(function*() {
      const refused = yield* Effect.flip(serveDevHub({ host: "0.0.0.0", port: 0, apiKeys: {} }))
      expect(refused._tag).toBe("DevHubBindRefused")
      const plain = yield* serveDevHub({ host: "127.0.0.1", port: 0, tls: false, apiKeys: { [TOKEN]: HOST } })
      expect(plain.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      const res = yield* Effect.promise(() => fetch(`${plain.url}/api/v1/signed-jobs`, { headers: { authorization: `Bearer ${TOKEN}` } }))
      expect(res.status).toBe(200)
      expect(yield* Effect.promise(() => res.json())).toEqual({ jobs: [] })
    })))

  it.live("`sim hub`: prints the exports, serves, and publishes the desired file again when it changes", () =>
    Effect.scoped(Effect.gen(function*() {
      const file = join(dir, "desired.json")
      const { generation: _, ...withoutGeneration } = desired(3)
      writeFileSync(file, JSON.stringify(withoutGeneration))
      const lines: Array<string> = []
      const spy = vi.spyOn(console, "log").mockImplementation((...args: Array<unknown>) => void lines.push(args.map(String).join(" ")))
      const errSpy = vi.spyOn(console, "error").mockImplementation((...args: Array<unknown>) => void lines.push(args.map(String).join(" ")))
      yield* Effect.addFinalizer(() => Effect.sync(() => (spy.mockRestore(), errSpy.mockRestore())))
      const fiber = yield* Effect.forkScoped(runDevHubCli({ host: "127.0.0.1", port: 0, desiredFile: file, hostId: HOST }).pipe(Effect.provide(NodeFileSystem.layer)))
      const waitFor = (re: RegExp) =>
        Effect.suspend(() => {
          const m = lines.join("\n").match(re)
          return m === null ? Effect.fail(`not printed yet: ${re}`) : Effect.succeed(m)
        }).pipe(Effect.retry(Schedule.spaced("25 millis")), Effect.timeout("5 seconds"), Effect.orDie)
      const exported = (name: string) => waitFor(new RegExp(`export ${name}='([^']*)'`)).pipe(Effect.map((m) => m[1]!))
      const url = yield* exported("FELHOM_AGENT_HUB_URL")
      const apiKey = yield* exported("FELHOM_AGENT_HUB_API_KEY")
      expect(yield* exported("FELHOM_AGENT_HOST_ID")).toBe(HOST)
      const cliCa = yield* exported("FELHOM_AGENT_HUB_CA_FILE")
      const adminToken = (yield* waitFor(/admin token: (\S+)/))[1]!
      yield* waitFor(/as generation 1/)
      const client = liveHub(url, apiKey, cliCa)
      const first = yield* Effect.flatMap(Hub, (h) => Effect.zip(h.report(reportFor(HOST)), h.desiredState)).pipe(Effect.provide(client), Effect.orDie)
      expect([first[0].desired_generation, first[1].guests.length]).toEqual([1, 3])
      // a broken edit is reported and the last good state stays; a good one is published
      writeFileSync(file, "{ broken")
      utimesSync(file, new Date(), new Date(Date.now() + 5_000))
      yield* waitFor(/desired file not published: .*not valid JSON/)
      writeFileSync(file, JSON.stringify({ ...withoutGeneration, guests: withoutGeneration.guests.slice(0, 1) }))
      utimesSync(file, new Date(), new Date(Date.now() + 10_000))
      yield* waitFor(/as generation 2/)
      const [status, view] = yield* adminCall(url, adminToken, "GET", `/admin/hosts/${HOST}`)
      expect([status, view]).toMatchObject([200, { desired_generation: 2, reports_received: 1 }])
      yield* Fiber.interrupt(fiber)
      expect(existsSync(cliCa)).toBe(false)
    })))
})

describe("the fence (types)", () => {

  it("Hub's layer requires only HttpClient and its own config block, never a CommandExecutor; methods require nothing", () => {
    expectTypeOf<RIn<typeof HubWithoutClient>>().toEqualTypeOf<HttpClient.HttpClient | HubSettings>()
    expectTypeOf<RIn<typeof HubHttpClientLive>>().toEqualTypeOf<HubSettings>()
    expectTypeOf<Extract<RIn<typeof HubWithoutClient>, CommandExecutor.CommandExecutor>>().toBeNever()
    expectTypeOf<MethodR<HubShape>>().toBeNever()
  })

  it("a Hub layer that shells out does not compile", () => {
    const shellsOut = Layer.effect(Hub, Effect.as(CommandExecutor.CommandExecutor, Hub.of({} as HubShape)))
    // @ts-expect-error CommandExecutor is outside the Hub's allow-list
    const fenced = shellsOut.pipe(Layer.ensureRequirementsType<HttpClient.HttpClient | HubSettings>())
    expect(fenced).toBeDefined()
  })
})

describe("the fence (import boundaries)", () => {
  const runOn = (files: Record<string, string>) => runFenceCheck(files)
  const clean = {
    "src/layers/Proxmox.ts": "export const x = 1\n",
    "src/layers/Privileged.ts": `import { Command } from "@effect/platform"\nexport const z = Command\n`,
    "src/layers/Authz.ts": "export const a = 1\n",
    "src/layers/Hub.ts": `import { HttpClient } from "@effect/platform"\nimport { NodeHttpClient } from "@effect/platform-node"\nexport const h = [HttpClient, NodeHttpClient]\n`
  }

  it("a Hub client that does HTTP passes; one reaching a process, directly or through a helper, fails", () => {
    expect(runOn(clean).status).toBe(0)
    for (const [body, expected] of [
      [`import { execFile } from "node:child_process"\nexport const h = execFile\n`, "imports node:child_process"],
      [`import { CommandExecutor } from "@effect/platform"\nexport const h = CommandExecutor\n`, "imports CommandExecutor"],
      [`import { NodeContext } from "@effect/platform-node"\nexport const h = NodeContext\n`, "imports NodeContext"],
      [`import { run } from "../util/run.js"\nexport const h = run\n`, "src/layers/Hub.ts -> src/util/run.ts"]
    ] as const) {
      const r = runOn({ ...clean, "src/layers/Hub.ts": body, "src/util/run.ts": `import { spawn } from "child_process"\nexport const run = spawn\n` })
      expect(r.status, body).toBe(1)
      expect(r.stderr).toContain(expected)
    }
  })
})
