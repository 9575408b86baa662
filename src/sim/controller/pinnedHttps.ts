/**
 * The simulated controller's HTTPS client: what the golden-baked controller does to reach the
 * local API. The agent's certificate is self-signed, so the chain is ignored and the server is
 * accepted only when its certificate matches one of the pins from the bootstrap config (SPKI
 * sha256 base64, or leaf sha256 hex). Node skips `checkServerIdentity` when chain verification
 * fails, so the pin is checked on the connected TLS socket, and only then is the socket handed
 * to the HTTP request: on a mismatch not one request byte (so no token) is written. No pins at
 * all is a mismatch (fail closed).
 */
import { createHash, X509Certificate } from "node:crypto"
import { request as httpRequest } from "node:http"
import { isIP } from "node:net"
import { connect as tlsConnect, type TLSSocket } from "node:tls"
import { Data, Duration, Effect, Redacted } from "effect"
import type { CertPin } from "../../schema/bootstrap.js"

export class SimCallError extends Data.TaggedError("SimCallError")<{
  /** pin: the server's certificate matched no pin; the rest: transport trouble. */
  readonly reason: "pin" | "tls" | "network" | "timeout" | "too_large"
  readonly message: string
}> {}

export interface SimCallResult {
  readonly status: number
  readonly retryAfter: string | null
  readonly body: string
}

export interface SimCallRequest {
  readonly base: URL
  readonly method: "GET" | "POST" | "PUT" | "DELETE"
  readonly path: string
  /** null: no Authorization header at all (probes). */
  readonly token: Redacted.Redacted<string> | null
  readonly body?: unknown
  readonly pins: ReadonlyArray<CertPin>
  readonly timeout?: Duration.DurationInput
}

/** Both pin forms of a DER certificate. */
export const pinsOf = (der: Uint8Array): CertPin => {
  const x = new X509Certificate(der)
  const spki = x.publicKey.export({ type: "spki", format: "der" })
  return {
    spki_sha256: createHash("sha256").update(spki).digest("base64"),
    cert_sha256: createHash("sha256").update(der).digest("hex")
  }
}

/** Whether a presented certificate matches a pin; computed values are never empty, so an empty pin matches nothing. */
export const matchesPins = (der: Uint8Array, pins: ReadonlyArray<CertPin>): boolean => {
  const got = pinsOf(der)
  return pins.some((p) => p.spki_sha256 === got.spki_sha256 || p.cert_sha256.toLowerCase().replace(/:/g, "") === got.cert_sha256)
}

const MAX_RESPONSE_BYTES = 1024 * 1024

const hostOf = (u: URL) => (u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname)

/** One request over a fresh, pin-checked TLS connection (no keep-alive: the sim does not need it). */
export const pinnedCall = (req: SimCallRequest): Effect.Effect<SimCallResult, SimCallError> =>
  usable(req.pins) ? connectAndCall(req) : Effect.fail(new SimCallError({ reason: "pin", message: "no pins in the bootstrap config: refusing to talk" }))

/** A pin list that can match anything at all (fail closed before connecting otherwise). */
const usable = (pins: ReadonlyArray<CertPin>) => pins.some((p) => p.spki_sha256 !== "" || p.cert_sha256 !== "")

const connectAndCall = (req: SimCallRequest): Effect.Effect<SimCallResult, SimCallError> =>
  Effect.async<SimCallResult, SimCallError>((resume, signal) => {
    const host = hostOf(req.base)
    const port = req.base.port === "" ? 443 : Number(req.base.port)
    let settled = false
    const finish = (e: Effect.Effect<SimCallResult, SimCallError>) => {
      if (settled) return
      settled = true
      resume(e)
    }
    const socket: TLSSocket = tlsConnect({
      host,
      port,
      ...(isIP(host) === 0 ? { servername: host } : {}),
      // the chain of a self-signed certificate never verifies: the pin below is the check
      rejectUnauthorized: false,
      ALPNProtocols: ["http/1.1"]
    })
    const onAbort = () => socket.destroy()
    signal.addEventListener("abort", onAbort, { once: true })
    socket.once("error", (e: NodeJS.ErrnoException) =>
      finish(Effect.fail(new SimCallError({ reason: (e.code ?? "").startsWith("ERR_SSL") ? "tls" : "network", message: e.message }))))
    socket.once("close", () => finish(Effect.fail(new SimCallError({ reason: "network", message: "connection closed" }))))
    socket.once("secureConnect", () => {
      const cert = socket.getPeerX509Certificate()
      if (cert === undefined || !matchesPins(cert.raw, req.pins)) {
        socket.destroy()
        return finish(Effect.fail(new SimCallError({ reason: "pin", message: "the server's certificate matches no pin: refusing to talk" })))
      }
      const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body))
      const headers: Record<string, string> = { host: req.base.host, accept: "application/json" }
      if (req.token !== null) headers["authorization"] = `Bearer ${Redacted.value(req.token)}`
      if (payload !== undefined) {
        headers["content-type"] = "application/json"
        headers["content-length"] = String(payload.length)
      }
      const basePath = req.base.pathname.replace(/\/+$/, "")
      const r = httpRequest({ createConnection: () => socket, method: req.method, path: `${basePath}${req.path}`, headers }, (res) => {
        const chunks: Array<Buffer> = []
        let size = 0
        res.on("data", (c: Buffer) => {
          size += c.length
          if (size > MAX_RESPONSE_BYTES) {
            socket.destroy()
            return finish(Effect.fail(new SimCallError({ reason: "too_large", message: "response over 1 MiB" })))
          }
          chunks.push(c)
        })
        res.on("end", () => {
          const ra = res.headers["retry-after"]
          finish(Effect.succeed({
            status: res.statusCode ?? 0,
            retryAfter: typeof ra === "string" ? ra : null,
            body: Buffer.concat(chunks).toString("utf8")
          }))
          socket.destroy()
        })
        res.on("error", (e) => finish(Effect.fail(new SimCallError({ reason: "network", message: e.message }))))
      })
      r.on("error", (e) => finish(Effect.fail(new SimCallError({ reason: "network", message: e.message }))))
      r.end(payload)
    })
    return Effect.sync(() => {
      signal.removeEventListener("abort", onAbort)
      socket.destroy()
    })
  }).pipe(
    Effect.timeoutFail({
      duration: req.timeout ?? Duration.seconds(10),
      onTimeout: () => new SimCallError({ reason: "timeout", message: "no answer in time" })
    })
  )
