/**
 * The HTTP face of the simulator: an @effect/platform HttpRouter under /api2/json that runs
 * every call through PVE's order of business: injected latency → authentication (401) → route
 * (501) → injected 5xx / lock conflict → schema permission check (403) → parameter validation
 * (400) → handler. Responses use PVE's envelope and put the first line of an error into the
 * HTTP reason phrase, which is all an older host gives a client to read.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { timingSafeEqual } from "node:crypto"
import { Clock, Duration, Effect, Either } from "effect"
import { checkAny, check, logRequest, type RequestCtx, type SimEnv, type SimRequest } from "./env.js"
import { die500, paramError, PveApiError } from "./errors.js"
import { awaitDueSteps } from "./taskClock.js"
import { type RawValue, validateParams } from "./params.js"
import type { TokenIdentity } from "./privileges.js"
import type { Reply, RouteDef } from "./route.js"
import { createRoutes } from "./routes/create.js"
import { guestRoutes } from "./routes/guest.js"
import { readRoutes } from "./routes/read.js"
import { snapshotRoutes } from "./routes/snapshot.js"
import { storageRoutes } from "./routes/storage.js"
import { storageUpdateRoutes } from "./routes/storageUpdate.js"
import { vzdumpRoutes } from "./routes/vzdump.js"
import { makeSimGuestApp, SIM_GUEST_PREFIX } from "./guestModel.js"

export const API_PREFIX = "/api2/json"

/** Body parameters PVE keeps out of storage.cfg (passwords, keys): never in the request log. */
const SENSITIVE_PARAMS: ReadonlySet<string> = new Set(["password", "encryption-key", "master-pubkey", "keyring"])

export const allRoutes: ReadonlyArray<RouteDef> = [
  ...readRoutes,
  ...guestRoutes,
  ...snapshotRoutes,
  ...createRoutes,
  ...vzdumpRoutes,
  ...storageRoutes,
  ...storageUpdateRoutes
]

// ---------------------------------------------------------------------------------------------
// Responses

/** The reason phrase: first line of the error, restricted to what HTTP allows in a status line. */
export const reasonPhrase = (message: string): string => {
  const first = (message.split("\n")[0] ?? "").replace(/[^\t\x20-\x7e]/g, "?").trim()
  return first.length > 0 ? first : "Internal Server Error"
}

const HEADERS = { "cache-control": "max-age=0", pragma: "no-cache", server: "pve-api-daemon/3.0" } as const

const jsonResponse = (status: number, statusText: string, body: unknown): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.text(JSON.stringify(body), {
    status,
    statusText,
    contentType: "application/json;charset=UTF-8",
    headers: HEADERS
  })

const okResponse = (r: Reply): HttpServerResponse.HttpServerResponse =>
  jsonResponse(200, "OK", r.total === undefined ? { data: r.data } : { data: r.data, total: r.total })

/**
 * `authorization`: the request's header, echoed into the texts `faults.echo_headers` names;
 * `requestBody`: its body parameters, echoed into the message and reason with `body`.
 */
const errorResponse = (env: SimEnv, e: PveApiError, authorization?: string, requestBody?: string): HttpServerResponse.HttpServerResponse => {
  const echo = env.state.faults.echo_headers
  const header = `Authorization: ${authorization ?? "(none)"}`
  const bodyEcho = echo.includes("body") && requestBody !== undefined ? ` (request body: ${requestBody})` : ""
  const body: Record<string, unknown> = { data: null }
  const errors = echo.includes("params") ? { ...e.errors, authorization: header, [header]: "echoed request header" } : e.errors
  if (errors !== undefined) body["errors"] = errors
  if (env.state.quirks.error_message_body || echo.includes("message") || bodyEcho !== "") {
    const base = `${e.message.replace(/\n$/, "")}${bodyEcho}`
    body["message"] = echo.includes("message") ? `${base} (request: ${header})\n` : `${base}\n`
  }
  const reason = echo.includes("reason") ? `${reasonPhrase(e.message)} (request: ${header})` : `${reasonPhrase(e.message)}${bodyEcho}`
  return jsonResponse(e.status, reasonPhrase(reason), body)
}

// ---------------------------------------------------------------------------------------------
// Authentication: `PVEAPIToken=USER@REALM!TOKENID=SECRET`, split at the last '='

const safeEqual = (a: string, b: string): boolean => {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length === bb.length && timingSafeEqual(ab, bb)
}

export const authenticate = (env: SimEnv, header: string | undefined, nowMs: number): Either.Either<TokenIdentity, PveApiError> => {
  const fail = (text: string) => Either.left(new PveApiError({ status: 401, message: `${text}\n` }))
  if (header === undefined) return fail("No ticket")
  const m = /^PVEAPIToken[= ](.+)$/s.exec(header.trim())
  if (m === null) return fail("No ticket")
  let value: string
  try {
    value = decodeURIComponent(m[1]!)
  } catch {
    return fail("authentication failure")
  }
  const eq = value.lastIndexOf("=")
  if (eq <= 0) return fail("authentication failure")
  const token = env.state.tokens.get(value.slice(0, eq))
  if (token === undefined || !safeEqual(token.secret, value.slice(eq + 1))) return fail("authentication failure")
  const user = env.state.users.get(token.userid)
  const nowSec = nowMs / 1000
  if (user === undefined || !user.enable || (user.expire > 0 && user.expire < nowSec)) return fail("authentication failure")
  if (token.expire > 0 && token.expire < nowSec) return fail("authentication failure")
  return Either.right({ tokenid: token.tokenid, userid: token.userid, tokenName: token.tokenName, privsep: token.privsep })
}

// ---------------------------------------------------------------------------------------------
// Parameters: body (form or JSON) with the query string merged over it

const readParams = (
  req: HttpServerRequest.HttpServerRequest
): Effect.Effect<Record<string, RawValue>, PveApiError> =>
  Effect.gen(function*() {
    const out: Record<string, RawValue> = {}
    const text = yield* req.text.pipe(Effect.orElseSucceed(() => ""))
    if (text.length > 0) {
      const type = (req.headers["content-type"] ?? "").toLowerCase()
      if (type.startsWith("application/json")) {
        const parsed = yield* Effect.try({
          try: (): unknown => JSON.parse(text),
          catch: () => new PveApiError({ status: 400, message: "malformed JSON string\n" })
        })
        if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
          return yield* Effect.fail(new PveApiError({ status: 400, message: "JSON body must be an object\n" }))
        }
        for (const [k, v] of Object.entries(parsed)) {
          if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") out[k] = v
          else if (v !== null) out[k] = JSON.stringify(v)
        }
      } else {
        for (const [k, v] of new URLSearchParams(text)) out[k] = v
      }
    }
    const q = req.url.indexOf("?")
    if (q !== -1) for (const [k, v] of new URLSearchParams(req.url.slice(q + 1))) out[k] = v
    return out
  })

// ---------------------------------------------------------------------------------------------
// Fault injection (seeded PRNG, a fixed number of draws per call so runs are reproducible)

const FAULT_TEXT: Readonly<Record<number, string>> = {
  500: "cluster not ready - no quorum?",
  595: "Errors during connection establishment, proxy handshake: Connection refused",
  596: "Errors during TLS negotiation, request sending and header processing: Connection timed out"
}

interface FaultDraw {
  readonly latencyMs: number
  readonly httpError: number | undefined
  readonly lockConflict: "locked" | "flock" | undefined
}

const drawFaults = (env: SimEnv): Effect.Effect<FaultDraw> =>
  Effect.gen(function*() {
    const f = env.state.faults
    const rng = env.rng.faults
    const r1 = yield* rng.next
    const r2 = yield* rng.next
    const r3 = yield* rng.next
    const r4 = yield* rng.next
    const latencyMs = typeof f.latency_ms === "number"
      ? f.latency_ms
      : Math.round(f.latency_ms.min + r1 * (f.latency_ms.max - f.latency_ms.min))
    const statuses = f.http_error_statuses
    const httpError = f.http_error_rate > 0 && r2 < f.http_error_rate && statuses.length > 0
      ? statuses[Math.min(statuses.length - 1, Math.floor(r3 * statuses.length))]
      : undefined
    const lockConflict = f.lock_conflict_rate > 0 && r4 < f.lock_conflict_rate
      ? r4 / f.lock_conflict_rate < 0.5 ? "locked" : "flock"
      : undefined
    return { latencyMs, httpError, lockConflict }
  })

// ---------------------------------------------------------------------------------------------

const relPath = (url: string): string => {
  const path = url.split("?")[0] ?? "/"
  return path.startsWith(API_PREFIX) ? path.slice(API_PREFIX.length) || "/" : path
}

const runRoute = (env: SimEnv, def: RouteDef) =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (req) => runRouteFor(env, def, req))

const runRouteFor = (env: SimEnv, def: RouteDef, req: HttpServerRequest.HttpServerRequest) => {
  // the request log entry, once the call is authenticated and its parameters are read
  let logged: SimRequest | undefined
  // the body parameters as sent (for faults.echo_headers "body")
  let sentBody: string | undefined
  return Effect.gen(function*() {
    const pathParams = yield* HttpRouter.params
    const faults = yield* drawFaults(env)
    if (faults.latencyMs > 0) yield* Effect.sleep(Duration.millis(faults.latencyMs))
    const nowMs = yield* Clock.currentTimeMillis
    // a task step ending at this very instant has ended before this request is served
    yield* awaitDueSteps(env, nowMs)
    const token = authenticate(env, req.headers["authorization"], nowMs)
    if (Either.isLeft(token)) {
      if (env.state.authFailureDelayMs > 0) yield* Effect.sleep(Duration.millis(env.state.authFailureDelayMs))
      return yield* Effect.fail(token.left)
    }
    const raw = yield* readParams(req)
    for (const [k, v] of Object.entries(pathParams)) {
      if (v === undefined) continue
      if (raw[k] !== undefined && String(raw[k]) !== v) {
        return yield* Effect.fail(paramError({ [k]: "duplicate parameter (already defined in URI) with conflicting values!" }))
      }
      raw[k] = v
    }
    const rawStrings: Record<string, string> = {}
    for (const [k, v] of Object.entries(raw)) rawStrings[k] = String(v)
    sentBody = Object.entries(rawStrings).filter(([k]) => pathParams[k] === undefined).map(([k, v]) => `${k}=${v}`).join("&")
    // the log is read by tests and /sim-admin: storage passwords and keys stay out of it
    const loggedParams: Record<string, string> = {}
    for (const [k, v] of Object.entries(rawStrings)) loggedParams[k] = SENSITIVE_PARAMS.has(k) ? "<redacted>" : v
    logged = logRequest(env.requests, { method: def.method, path: relPath(req.url), params: loggedParams })
    const ctxBase = { env, token: token.right, nowMs }
    if (faults.httpError !== undefined && !(faults.httpError === 596 && def.method !== "GET")) {
      return yield* Effect.fail(new PveApiError({ status: faults.httpError, message: `${FAULT_TEXT[faults.httpError]}\n` }))
    }
    if (def.guestWrite === true && faults.lockConflict !== undefined) {
      const vmid = String(raw["vmid"] ?? "")
      return yield* Effect.fail(
        die500(faults.lockConflict === "locked" ? "CT is locked (backup)" : `can't lock file '/run/lock/lxc/pve-config-${vmid}.lock' - got timeout`)
      )
    }
    if (def.perm.kind === "perm") {
      const permCtx: RequestCtx = { ...ctxBase, params: {} }
      const path = def.perm.path(rawStrings)
      yield* def.perm.any === true ? checkAny(permCtx, path, def.perm.privs) : check(permCtx, path, def.perm.privs)
    }
    const params = validateParams(def.schema, raw)
    if (Either.isLeft(params)) return yield* Effect.fail(paramError(params.left))
    logged.handled = true
    const result = yield* def.handler({ ...ctxBase, params: params.right })
    if (typeof result.data === "string" && result.data.startsWith("UPID:")) logged.upid = result.data
    // a proxy timeout on a write: the change landed, the client only sees the 596
    if (faults.httpError === 596) {
      return yield* Effect.fail(new PveApiError({ status: 596, message: `${FAULT_TEXT[596]}\n` }))
    }
    return result
  }).pipe(
    Effect.tapBoth({
      onFailure: (e) => Effect.sync(() => logged !== undefined && (logged.status = e.status)),
      onSuccess: () => Effect.sync(() => logged !== undefined && (logged.status = 200))
    }),
    Effect.match({ onFailure: (e) => errorResponse(env, e, req.headers["authorization"], sentBody), onSuccess: okResponse })
  )
}

const notImplemented = (env: SimEnv) =>
  Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const nowMs = yield* Clock.currentTimeMillis
    const token = authenticate(env, req.headers["authorization"], nowMs)
    if (Either.isLeft(token)) {
      if (env.state.authFailureDelayMs > 0) yield* Effect.sleep(Duration.millis(env.state.authFailureDelayMs))
      return errorResponse(env, token.left, req.headers["authorization"])
    }
    return errorResponse(
      env,
      new PveApiError({ status: 501, message: `Method '${req.method} ${relPath(req.url)}' not implemented\n` }),
      req.headers["authorization"]
    )
  })

/** Builds the simulator's HttpApp (usable with any HttpServer or in-process). */
export const makeApp = (env: SimEnv): Effect.Effect<HttpApp.Default> =>
  Effect.gen(function*() {
    let router: HttpRouter.HttpRouter = HttpRouter.empty
    for (const def of allRoutes) {
      router = HttpRouter.route(def.method)(router, `${API_PREFIX}${def.path}`, runRoute(env, def))
    }
    const app = yield* HttpRouter.toHttpApp(router)
    const api = app.pipe(Effect.catchTag("RouteNotFound", () => notImplemented(env)))
    // the guest model lives beside the API, never inside /api2/json
    const guests = makeSimGuestApp(env.state)
    return Effect.flatMap(HttpServerRequest.HttpServerRequest, (req) =>
      req.url === SIM_GUEST_PREFIX || req.url.startsWith(`${SIM_GUEST_PREFIX}/`) ? guests : api)
  })
