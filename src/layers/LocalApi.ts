/**
 * LocalApi (issue 11, SPEC §11): the HTTPS API the controllers inside the guests call. Anything on
 * the guests' bridge can reach it, so the bearer token is the only gate, and everything a
 * request can name is scoped to the guest its token was minted for: no path or body carries a
 * guest id, and the backend receives the token's vmid only.
 *
 * This layer owns transport, auth, limits and status mapping; src/programs/localapi/backend.ts
 * owns meaning. Per request, in this order (each step is cheap before the next runs):
 *   route (404 / 405) → failed-auth budget of the source address (429) → bearer token (401; one
 *   sha256 and an in-memory lookup, never the database) → per-token bucket (429) → contact →
 *   body (413 by Content-Length and by counting, 400 for JSON or schema) → backend → JSON.
 * Mutations (snapshot, rollback, backup) are audited before the backend runs (an unwritable audit
 * log refuses the call) and with their outcome after, and are not interrupted by a client that
 * hangs up: the audit pair is always complete.
 *
 * It never requires a CommandExecutor (SPEC §1; scripts/check-boundaries.mjs).
 */
import { HttpMiddleware, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer, NodeHttpServerRequest } from "@effect/platform-node"
import { Cause, Clock, Context, Data, Effect, Either, Layer, Option, ParseResult, Schema, Stream } from "effect"
import type { IncomingMessage } from "node:http"
import { createServer, type Server } from "node:https"
import { isIPv6 } from "node:net"
import type { CertPin } from "../schema/bootstrap.js"
import { type LocalApiConfig } from "../schema/config.js"
import type { VmId } from "../schema/ids.js"
import { unsafeJsonReason } from "../schema/json.js"
import {
  API_FAILURE_STATUS,
  ApiFailure,
  HeartbeatRequest,
  RollbackRequest,
  SnapshotRequest
} from "../schema/localApi.js"
import { LocalApiBackend, type LocalApiBackendShape } from "../programs/localapi/backend.js"
import { AuditLog } from "./AuditLog.js"
import { AgentConfig } from "./Config.js"
import { LocalCert } from "./LocalCert.js"
import { LocalTokens } from "./LocalTokens.js"

export class LocalApiError extends Data.TaggedError("LocalApiError")<{ readonly message: string }> {}

/** The local_api config block on its own (the layer reads nothing else of the config). */
export class LocalApiSettings extends Context.Tag("felhom/LocalApiSettings")<LocalApiSettings, LocalApiConfig>() {}
export const localApiSettings = (c: LocalApiConfig): Layer.Layer<LocalApiSettings> => Layer.succeed(LocalApiSettings, c)
export const LocalApiSettingsLive: Layer.Layer<LocalApiSettings, LocalApiError, AgentConfig> = Layer.effect(
  LocalApiSettings,
  Effect.flatMap(AgentConfig, ({ file }) =>
    file.local_api === undefined
      ? Effect.fail(new LocalApiError({ message: "the local API needs a local_api block in the config (listen address of the guests' bridge)" }))
      : Effect.succeed(file.local_api))
)

export interface LocalApiShape {
  /** The bound address (port 0 in the config: the one picked). */
  readonly host: string
  readonly port: number
  /** `https://<host>:<port>` as bound (bootstraps use advertise_url when set). */
  readonly url: string
  /** The pins a guest must accept now (current, and next during a rotation). */
  readonly pins: Effect.Effect<ReadonlyArray<CertPin>>
}

export class LocalApi extends Context.Tag("felhom/LocalApi")<LocalApi, LocalApiShape>() {}

// ---------------------------------------------------------------------------------------------
// Token buckets on Effect's Clock (TestClock drives them in tests)

export interface Bucket {
  tokens: number
  atMs: number
}

export interface RateLimiter {
  /** Takes one token for `key`; when none is left, how many whole seconds until one is. */
  readonly take: (key: string) => Effect.Effect<{ readonly ok: true } | { readonly ok: false; readonly retryAfterSeconds: number }>
  /** Whether `key` has a token, without taking it. */
  readonly peek: (key: string) => Effect.Effect<{ readonly ok: true } | { readonly ok: false; readonly retryAfterSeconds: number }>
}

/**
 * `burst` tokens, refilled at `perMinute`. At most `maxKeys` buckets are kept; the least recently
 * used one is forgotten first (keys are token ids or source addresses, both bounded in practice).
 */
export const makeRateLimiter = (perMinute: number, burst: number, maxKeys = 10_000): RateLimiter => {
  const buckets = new Map<string, Bucket>()
  const refill = (key: string, now: number): Bucket => {
    const b = buckets.get(key) ?? { tokens: burst, atMs: now }
    const elapsed = Math.max(0, now - b.atMs)
    b.tokens = Math.min(burst, b.tokens + (elapsed * perMinute) / 60_000)
    b.atMs = now
    buckets.delete(key)
    buckets.set(key, b)
    if (buckets.size > maxKeys) buckets.delete(buckets.keys().next().value!)
    return b
  }
  const verdict = (b: Bucket, take: boolean) => {
    if (b.tokens >= 1) {
      if (take) b.tokens -= 1
      return { ok: true } as const
    }
    return { ok: false, retryAfterSeconds: Math.max(1, Math.ceil(((1 - b.tokens) * 60) / perMinute)) } as const
  }
  return {
    take: (key) => Effect.map(Clock.currentTimeMillis, (now) => verdict(refill(key, now), true)),
    peek: (key) => Effect.map(Clock.currentTimeMillis, (now) => verdict(refill(key, now), false))
  }
}

// ---------------------------------------------------------------------------------------------
// Routes

type Method = "GET" | "POST"
type Handler = (vmid: VmId, body: unknown) => Effect.Effect<{ readonly status: number; readonly body: unknown }, ApiFailure>

interface Route {
  readonly method: Method
  /** The request schema (POST): validated before the backend sees anything. */
  readonly request?: Schema.Schema<unknown, unknown>
  /** Audited as `local-api.<action>`. */
  readonly mutation?: string
  readonly run: Handler
}

const ok = (status: number) => <A>(e: Effect.Effect<A, ApiFailure>) => Effect.map(e, (body) => ({ status, body: body as unknown }))

const asUnknown = <A, I>(s: Schema.Schema<A, I>): Schema.Schema<unknown, unknown> => s as unknown as Schema.Schema<unknown, unknown>

// BackupRequest is Struct({}), which admits any object; a field here would be a request for a
// target or guest the controller may not choose, so anything but {} is refused by name
const EmptyObject: Schema.Schema<unknown, unknown> = Schema.Unknown.pipe(
  Schema.filter((u) => typeof u === "object" && u !== null && Object.keys(u).length === 0, {
    message: () => "takes no fields: send {} (the agent picks the target from the guest's policy)"
  })
)

const routes = (b: LocalApiBackendShape): ReadonlyMap<string, Route> =>
  new Map<string, Route>([
    ["/storage", { method: "GET", run: (vmid) => ok(200)(b.storage(vmid)) }],
    ["/snapshot", {
      method: "POST",
      request: asUnknown(SnapshotRequest),
      mutation: "snapshot",
      run: (vmid, body) => ok(201)(b.snapshot(vmid, body as SnapshotRequest))
    }],
    ["/rollback", {
      method: "POST",
      request: asUnknown(RollbackRequest),
      mutation: "rollback",
      run: (vmid, body) => ok(200)(b.rollback(vmid, body as RollbackRequest))
    }],
    ["/backup", { method: "POST", request: EmptyObject, mutation: "backup", run: (vmid) => ok(202)(b.backup(vmid)) }],
    ["/backup/due", { method: "GET", run: (vmid) => ok(200)(b.backupDue(vmid)) }],
    ["/backup/status", { method: "GET", run: (vmid) => ok(200)(b.backupStatus(vmid)) }],
    ["/restore-test/status", { method: "GET", run: (vmid) => ok(200)(b.restoreTestStatus(vmid)) }],
    ["/heartbeat", {
      method: "POST",
      request: asUnknown(HeartbeatRequest),
      run: (vmid, body) => Effect.as(b.heartbeat(vmid, body as HeartbeatRequest), { status: 200, body: { ok: true } })
    }]
  ])

// The fields each request schema knows: only those are ever named in a 400 (an unknown key is
// attacker text and could be anything, a token included).
const KNOWN_FIELDS: ReadonlySet<string> = new Set(["name", "description", "snapshot", "version", "image", "status", "detail"])

/** A 400 message naming the fields, never echoing a value. */
export const describeIssues = (error: ParseResult.ParseError): string => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(error)
  const parts = issues.slice(0, 4).map((i) => {
    const key = i.path.length === 0 ? "body" : i.path.map((p) => (typeof p === "string" && KNOWN_FIELDS.has(p) ? p : "(unknown field)")).join(".")
    switch (i._tag) {
      case "Missing":
        return `${key}: is required`
      case "Unexpected":
        return `${key}: is not allowed`
      case "Refinement":
        // our refinements carry fixed messages; a default one would print the actual value
        return /actual|Expected/.test(i.message) ? `${key}: is invalid` : `${key}: ${i.message}`
      default:
        return i.path.length === 0 ? "body: must be a JSON object" : `${key}: has the wrong type or value`
    }
  })
  return parts.join("; ")
}

// ---------------------------------------------------------------------------------------------
// Bodies

type BodyRead =
  | { readonly _tag: "ok"; readonly text: string }
  | { readonly _tag: "too_large" }
  | { readonly _tag: "aborted" }

/** Reads at most `max` bytes; a longer body (with or without Content-Length) stops the read. */
const readBody = (req: IncomingMessage, max: number): Effect.Effect<BodyRead> => {
  const declared = req.headers["content-length"]
  if (declared !== undefined && (!/^\d+$/.test(declared) || Number(declared) > max)) return Effect.succeed({ _tag: "too_large" })
  return Effect.async<BodyRead>((resume) => {
    const chunks: Array<Buffer> = []
    let size = 0
    const done = (r: BodyRead) => {
      req.off("data", onData)
      req.off("end", onEnd)
      req.off("error", onError)
      req.off("aborted", onError)
      resume(Effect.succeed(r))
    }
    const onData = (c: Buffer) => {
      size += c.length
      if (size > max) {
        req.pause()
        done({ _tag: "too_large" })
      } else chunks.push(c)
    }
    const onEnd = () => done({ _tag: "ok", text: Buffer.concat(chunks).toString("utf8") })
    const onError = () => done({ _tag: "aborted" })
    req.on("data", onData)
    req.on("end", onEnd)
    req.on("error", onError)
    req.on("aborted", onError)
    return Effect.sync(() => {
      req.off("data", onData)
      req.off("end", onEnd)
      req.off("error", onError)
      req.off("aborted", onError)
    })
  })
}

// ---------------------------------------------------------------------------------------------
// Responses

const BASE_HEADERS = { "cache-control": "no-store", "x-content-type-options": "nosniff" } as const

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  HttpServerResponse.text(JSON.stringify(body), {
    status,
    contentType: "application/json",
    headers: { ...BASE_HEADERS, ...headers }
  })

const failure = (status: number, code: string, message: string, headers: Record<string, string> = {}) =>
  json(status, { error: { code, message } }, headers)

const unauthorized = (message: string) => failure(401, "unauthorized", message, { "www-authenticate": "Bearer" })

// RFC 9110: the scheme is case-insensitive; one space; the token itself is matched exactly later
const BEARER = /^bearer ([!-~]{1,200})$/i

export interface LocalApiOptions {
  /** Failed authentications allowed per source address (a burst, refilled per minute). */
  readonly authFailureBurst?: number
  readonly authFailuresPerMinute?: number
}

export const makeLocalApi = (options: LocalApiOptions = {}) =>
  Effect.gen(function*() {
    const settings = yield* LocalApiSettings
    const cert = yield* LocalCert
    const tokens = yield* LocalTokens
    const backend = yield* LocalApiBackend
    const auditLog = yield* AuditLog
    const table = routes(backend)
    const perToken = makeRateLimiter(settings.rate_per_minute, settings.rate_burst)
    const authFailures = makeRateLimiter(options.authFailuresPerMinute ?? 30, options.authFailureBurst ?? 20)

    const initial = yield* cert.state
    const headersMs = Math.min(settings.header_timeout_seconds, settings.request_timeout_seconds) * 1000
    let httpsServer: Server | undefined
    const server = yield* NodeHttpServer.make(() => {
      httpsServer = createServer({
        key: initial.current.keyPem,
        cert: initial.current.certPem,
        minVersion: "TLSv1.2",
        // a TLS handshake that never completes is cut like headers that never end
        handshakeTimeout: headersMs,
        headersTimeout: headersMs,
        requestTimeout: settings.request_timeout_seconds * 1000,
        keepAliveTimeout: settings.idle_timeout_seconds * 1000,
        // node checks the two timeouts above only this often (default 30 s)
        connectionsCheckingInterval: Math.min(1000, Math.max(100, headersMs / 4))
      })
      httpsServer.maxConnections = settings.max_connections
      httpsServer.timeout = settings.idle_timeout_seconds * 1000
      httpsServer.maxHeadersCount = 64
      return httpsServer
    }, { host: settings.listen, port: settings.port }).pipe(
      Effect.mapError((e) => new LocalApiError({ message: `the local API cannot listen on ${settings.listen}:${settings.port}: ${String(e.cause)}` }))
    )
    // before server.close (finalizers run in reverse): keep-alive sockets would hold it open
    yield* Effect.addFinalizer(() => Effect.sync(() => httpsServer?.closeAllConnections()))

    // a promoted certificate is served to the next handshake; open connections keep theirs
    yield* cert.changes.pipe(
      Stream.map((s) => s.current),
      Stream.changesWith((a, b) => a.pin.cert_sha256 === b.pin.cert_sha256),
      Stream.drop(1),
      Stream.runForEach((c) => Effect.sync(() => httpsServer?.setSecureContext({ key: c.keyPem, cert: c.certPem }))),
      Effect.forkScoped
    )

    const handle = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const nodeReq = NodeHttpServerRequest.toIncomingMessage(request)
      const path = request.url.split("?", 1)[0]!
      const route = table.get(path)

      if (path === "/health") {
        if (request.method !== "GET") return failure(405, "method_not_allowed", "GET only", { allow: "GET" })
        return json(200, yield* backend.health)
      }
      if (route === undefined) return failure(404, "not_found", "no such endpoint")
      if (request.method !== route.method) {
        return failure(405, "method_not_allowed", `${route.method} only`, { allow: route.method })
      }

      // A source address that keeps failing is refused before its next token is even hashed.
      const source = nodeReq.socket.remoteAddress ?? "unknown"
      const budget = yield* authFailures.peek(source)
      if (!budget.ok) {
        return failure(429, "rate_limited", "too many failed authentications", { "retry-after": String(budget.retryAfterSeconds) })
      }
      const header = request.headers["authorization"]
      const presented = header === undefined ? null : BEARER.exec(header)?.[1] ?? null
      const who = presented === null ? Option.none() : yield* tokens.verify(presented)
      if (Option.isNone(who)) {
        yield* authFailures.take(source)
        return unauthorized(presented === null ? "a bearer token is required" : "the token is not valid")
      }
      const { tokenId, vmid } = who.value

      const limit = yield* perToken.take(tokenId)
      if (!limit.ok) {
        return failure(429, "rate_limited", "too many requests", { "retry-after": String(limit.retryAfterSeconds) })
      }
      yield* backend.contact(vmid)

      let body: unknown = undefined
      if (route.request !== undefined) {
        const read = yield* readBody(nodeReq, settings.max_body_bytes)
        if (read._tag === "too_large") {
          // the rest of the body is never read: the connection cannot be reused
          return failure(413, "body_too_large", `the body is limited to ${settings.max_body_bytes} bytes`, { connection: "close" })
        }
        if (read._tag === "aborted") return failure(400, "bad_request", "the body was not received whole")
        const text = read.text.trim() === "" ? "{}" : read.text
        let parsed: unknown
        try {
          parsed = JSON.parse(text)
        } catch {
          return failure(400, "bad_request", "the body is not JSON")
        }
        const unsafe = unsafeJsonReason(parsed, { requireObject: true })
        if (unsafe !== undefined) {
          // the reason may quote attacker-chosen keys: say what kind of problem, not where
          const why = /nested deeper|more than/.test(unsafe) ? unsafe : unsafe === "expected a JSON object" ? "the body must be a JSON object" : "the body holds a key that is not allowed"
          return failure(400, "bad_request", why)
        }
        const decoded = Schema.decodeUnknownEither(route.request)(parsed, { onExcessProperty: "error", errors: "all" })
        if (Either.isLeft(decoded)) return failure(400, "bad_request", describeIssues(decoded.left))
        body = decoded.right
      }

      const outcome = (r: Either.Either<{ readonly status: number; readonly body: unknown }, ApiFailure>) =>
        Either.isRight(r)
          ? json(r.right.status, r.right.body)
          : failure(API_FAILURE_STATUS[r.left.code], r.left.code, r.left.message)

      if (route.mutation === undefined) return outcome(yield* Effect.either(route.run(vmid, body)))

      const action = `local-api.${route.mutation}`
      const detail = { token_id: tokenId, ...(body !== null && typeof body === "object" ? body : {}) }
      return yield* Effect.uninterruptible(Effect.gen(function*() {
        const requested = yield* Effect.either(auditLog.audit({ actor: "local-api", action, target: String(vmid), decision: "requested", detail }))
        if (Either.isLeft(requested)) {
          yield* Effect.logWarning(`local API: ${action} for ${vmid} refused: the audit log cannot be written (${requested.left.message})`)
          return failure(503, "unavailable", "the agent cannot record this call now; nothing was done")
        }
        const r = yield* Effect.either(route.run(vmid, body))
        const decision = Either.isRight(r) ? "ok" : r.left.code
        yield* auditLog.audit({
          actor: "local-api",
          action,
          target: String(vmid),
          decision,
          detail: { ...detail, status: Either.isRight(r) ? r.right.status : API_FAILURE_STATUS[r.left.code] }
        }).pipe(Effect.catchAll((e) => Effect.logWarning(`local API: the outcome of ${action} for ${vmid} was not audited: ${e.message}`)))
        return outcome(r)
      }))
    })

    // A body left unread (a GET's, or one a refusal never looked at) would be dumped by node
    // while the keep-alive socket is reused, racing the next request: read it within the cap
    // and drop it, or close the connection when it is over the cap.
    const settled = Effect.flatMap(handle, (response) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
        const nodeReq = NodeHttpServerRequest.toIncomingMessage(request)
        // a 413 already stopped reading and closes the connection
        const hasBody = nodeReq.headers["content-length"] !== undefined || nodeReq.headers["transfer-encoding"] !== undefined
        // `complete` only says the parser has it all; the bytes may still sit unread in the stream
        if (!hasBody || nodeReq.readableEnded || response.headers["connection"] === "close") {
          return Effect.succeed(response)
        }
        return Effect.map(readBody(nodeReq, settings.max_body_bytes), (r) =>
          r._tag === "ok" ? response : HttpServerResponse.setHeader(response, "connection", "close"))
      }))

    // A defect is a bug: logged (the cause never holds the request's headers) and answered 500.
    const app = settled.pipe(
      Effect.catchAllCause((cause) =>
        Cause.isInterruptedOnly(cause)
          ? Effect.failCause(cause)
          : Effect.as(Effect.logError("local API: handler defect", Cause.pretty(cause)), failure(500, "internal", "internal error"))
      )
    )
    // no tracing span per request: nothing here exports spans, and building one (URL parse, header
    // attributes) cost more CPU than the handler itself under the 50-controller bench
    yield* HttpMiddleware.withTracerDisabledWhenEffect(server.serve(app), () => true)

    const port = server.address._tag === "TcpAddress" ? server.address.port : settings.port
    const urlHost = isIPv6(settings.listen) ? `[${settings.listen}]` : settings.listen
    return {
      host: settings.listen,
      port,
      url: `https://${urlHost}:${port}`,
      pins: cert.pins
    } satisfies LocalApiShape
  })

export const LocalApiLive = (
  options: LocalApiOptions = {}
): Layer.Layer<LocalApi, LocalApiError, LocalApiSettings | LocalCert | LocalTokens | LocalApiBackend | AuditLog> =>
  Layer.scoped(LocalApi, makeLocalApi(options))
