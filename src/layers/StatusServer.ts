/**
 * The daemon's loopback status endpoint (issue 14; src/schema/status.ts has the bodies): a bare
 * node:http server (no framework: the daemon's idle RSS is the budget) serving a fixed set of
 * GET paths with small responses. The health gate, `felhom-agent status` and a Prometheus
 * scraper on the host read it; nothing here changes state.
 *
 * A hostile local client (any user on the host can reach loopback) gets: GET only (405 with
 * `connection: close` otherwise), no request body (a declared or chunked one is a 400 and the
 * socket is closed), exact paths (a query string or anything else is a 404), headers capped in
 * size and count and cut off after `headersTimeoutMs` (slowloris), the whole request after
 * `requestTimeoutMs`, idle keep-alive sockets after `idleTimeoutMs`, at most `maxConnections`
 * sockets at once (node drops the rest at accept), and each handler bounded by
 * `handlerTimeoutMs` (a 503). Handlers run as their own fibers: nothing a client does blocks
 * or fails the hub loop.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import { Data, Duration, Effect, Fiber, Runtime, type Scope } from "effect"

export class StatusServerError extends Data.TaggedError("StatusServerError")<{ readonly message: string }> {}

export interface StatusReply {
  readonly status: number
  readonly contentType: string
  readonly body: string
}

export interface StatusServerOptions {
  readonly host: string
  /** 0: a free port (tests); the bound one is returned. */
  readonly port: number
  /** Exact path → reply. Anything else is a 404. */
  readonly routes: ReadonlyMap<string, Effect.Effect<StatusReply>>
  readonly maxConnections?: number
  readonly headersTimeoutMs?: number
  readonly requestTimeoutMs?: number
  readonly idleTimeoutMs?: number
  readonly handlerTimeoutMs?: number
  readonly maxHeaderBytes?: number
}

export const DEFAULT_LIMITS = {
  maxConnections: 16,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  idleTimeoutMs: 5_000,
  handlerTimeoutMs: 10_000,
  maxHeaderBytes: 8 * 1024
} as const

const HEADERS = { "cache-control": "no-store", "x-content-type-options": "nosniff" } as const

const text = (status: number, body: string): StatusReply => ({ status, contentType: "text/plain; charset=utf-8", body })

const send = (res: ServerResponse, reply: StatusReply, close = false) => {
  if (res.headersSent || res.destroyed) return
  res.writeHead(reply.status, {
    ...HEADERS,
    "content-type": reply.contentType,
    "content-length": Buffer.byteLength(reply.body),
    ...(close ? { connection: "close" } : {})
  })
  res.end(reply.body)
}

/** A request that says it carries a body (any length but 0, or chunked). */
const declaresBody = (req: IncomingMessage) =>
  req.headers["transfer-encoding"] !== undefined ||
  (req.headers["content-length"] !== undefined && req.headers["content-length"] !== "0")

/**
 * Listens until the scope closes (open sockets are destroyed then); returns the bound port.
 * Handler effects run on the caller's runtime (its services, its clock).
 */
export const serveStatus = (o: StatusServerOptions): Effect.Effect<{ readonly port: number }, StatusServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const limits = { ...DEFAULT_LIMITS, ...definedOnly(o) }
    const runtime = yield* Effect.runtime<never>()
    const fibers = new Set<Fiber.RuntimeFiber<void, never>>()

    const handle = (req: IncomingMessage, res: ServerResponse) => {
      if (req.method !== "GET") {
        res.setHeader("allow", "GET")
        send(res, text(405, "GET only\n"), true)
        req.socket.destroySoon()
        return
      }
      if (declaresBody(req)) {
        // the body is never read: the socket cannot be reused
        send(res, text(400, "no request body\n"), true)
        req.socket.destroySoon()
        return
      }
      const route = o.routes.get(req.url ?? "")
      if (route === undefined) {
        send(res, text(404, "not found\n"))
        return
      }
      const run = route.pipe(
        Effect.timeoutTo({
          duration: Duration.millis(limits.handlerTimeoutMs),
          onTimeout: () => text(503, "timed out\n"),
          onSuccess: (r) => r
        }),
        Effect.catchAllCause(() => Effect.succeed(text(500, "internal error\n"))),
        Effect.flatMap((reply) => Effect.sync(() => send(res, reply)))
      )
      const fiber = Runtime.runFork(runtime)(run)
      fibers.add(fiber)
      fiber.addObserver(() => fibers.delete(fiber))
      // a client that goes away does not keep its handler running
      res.once("close", () => {
        if (fibers.has(fiber)) Runtime.runFork(runtime)(Fiber.interrupt(fiber))
      })
    }

    const server = yield* Effect.acquireRelease(
      Effect.async<Server, StatusServerError>((resume) => {
        const s = createServer({
          maxHeaderSize: limits.maxHeaderBytes,
          headersTimeout: limits.headersTimeoutMs,
          requestTimeout: limits.requestTimeoutMs,
          keepAliveTimeout: limits.idleTimeoutMs,
          // node checks the two timeouts above only this often (default 30 s)
          connectionsCheckingInterval: Math.min(1000, Math.max(50, Math.floor(limits.headersTimeoutMs / 4)))
        }, handle)
        s.maxConnections = limits.maxConnections
        s.maxHeadersCount = 32
        s.maxRequestsPerSocket = 100
        // a socket that sends nothing at all, or stops mid-request
        s.timeout = limits.requestTimeoutMs
        s.on("clientError", (_err, socket) => {
          // oversized or malformed headers, a timeout: a fixed answer (if still writable) and close
          if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
          else socket.destroy()
        })
        const onError = (e: Error) => resume(Effect.fail(new StatusServerError({ message: `cannot listen on ${o.host}:${o.port}: ${e.message}` })))
        s.once("error", onError)
        s.listen({ host: o.host, port: o.port, exclusive: true }, () => {
          s.off("error", onError)
          // after listening, a server error (EMFILE at accept) is no reason to stop
          s.on("error", () => undefined)
          resume(Effect.succeed(s))
        })
      }),
      (s) =>
        Effect.async<void>((resume) => {
          s.close(() => resume(Effect.void))
          s.closeAllConnections()
        }).pipe(Effect.zipRight(Effect.forEach([...fibers], Fiber.interrupt, { discard: true })))
    )
    const address = server.address()
    const port = address !== null && typeof address === "object" ? address.port : o.port
    return { port }
  })

const definedOnly = (o: StatusServerOptions) => {
  const out: Partial<Record<keyof typeof DEFAULT_LIMITS, number>> = {}
  for (const k of Object.keys(DEFAULT_LIMITS) as Array<keyof typeof DEFAULT_LIMITS>) {
    const v = o[k]
    if (v !== undefined) out[k] = v
  }
  return out
}
