/**
 * Serving the simulator over HTTPS on loopback (its certificate key and token secret are public,
 * so anything else is refused), and the `felhom-agent sim pve` entry point that prints how to
 * point the agent at it.
 */
import type { FileSystem } from "@effect/platform"
import { HttpServerRequest } from "@effect/platform"
import { NodeHttpServer, NodeHttpServerRequest } from "@effect/platform-node"
import { randomBytes, X509Certificate } from "node:crypto"
import { createServer } from "node:https"
import { isIPv4, isIPv6 } from "node:net"
import { Console, Effect, type Scope } from "effect"
import { makeSimAdminApp, SIM_ADMIN_PREFIX } from "./admin.js"
import { defaultSeed } from "./defaultSeed.js"
import { SimPveBindRefused, type SimPveSeedError, SimPveServeError } from "./errors.js"
import { loadSeed, type SimPveFaults, type SimPveSeed } from "./seed.js"
import { makeSimPve, type SimPve } from "./sim.js"
import { simCertPem, simKeyPem } from "./tlsMaterial.js"

export interface ServeSimPveOptions {
  /** loopback only: 127.0.0.0/8, ::1 or localhost */
  readonly host: string
  /** 0 picks a free port */
  readonly port: number
  /** default: the embedded configs/sim/pve.json */
  readonly seed?: SimPveSeed | undefined
  readonly faults?: Partial<SimPveFaults> | undefined
  /** bearer token of the admin endpoints under /sim-admin (see ./admin.ts); random when absent */
  readonly adminToken?: string | undefined
}

export interface SimPveServer {
  readonly sim: SimPve
  /** `https://127.0.0.1:<port>` (the agent appends /api2/json) */
  readonly url: string
  readonly host: string
  /** the bound port (useful with port 0) */
  readonly port: number
  readonly tokenId: string
  readonly tokenSecret: string
  /** X509Certificate.fingerprint256 of the served certificate (AA:BB:...) */
  readonly fingerprint256: string
  /** bearer token of the admin endpoints under `${url}/sim-admin` */
  readonly adminToken: string
}

/** SHA-256 fingerprint of the simulator's certificate, as PVE's ssl_fingerprint shows it. */
export const simFingerprint256: string = new X509Certificate(simCertPem).fingerprint256

export const isLoopbackHost = (host: string): boolean => {
  const h = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host
  if (h === "localhost") return true
  if (isIPv4(h)) return h.startsWith("127.")
  if (isIPv6(h)) return h === "::1" || /^::ffff:127\./i.test(h)
  return false
}

const urlHost = (host: string): string => (isIPv6(host) ? `[${host}]` : host)

export const serveSimPve = (
  options: ServeSimPveOptions
): Effect.Effect<SimPveServer, SimPveBindRefused | SimPveServeError | SimPveSeedError, Scope.Scope> =>
  Effect.gen(function*() {
    if (!isLoopbackHost(options.host)) {
      return yield* Effect.fail(
        new SimPveBindRefused({
          host: options.host,
          message: `refusing to serve the PVE simulator on '${options.host}': its TLS key and token are public, bind a loopback address (127.0.0.1, ::1, localhost)`
        })
      )
    }
    const seed = options.seed ?? (yield* defaultSeed)
    const sim = yield* makeSimPve(seed, { faults: options.faults, tlsFingerprint: simFingerprint256 })
    const bindHost = options.host.startsWith("[") ? options.host.slice(1, -1) : options.host
    const server = yield* NodeHttpServer.make(() => createServer({ key: simKeyPem, cert: simCertPem }), {
      host: bindHost,
      port: options.port
    }).pipe(
      Effect.mapError((e) => new SimPveServeError({ message: `cannot listen on ${bindHost}:${options.port}: ${String(e.cause)}`, cause: e.cause }))
    )
    // NodeHttpServer writes no reason phrase; PVE's is the first line of the error, so set it on the node response
    const api = Effect.tap(sim.app, (response) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        Effect.sync(() => {
          if (response.statusText !== undefined) NodeHttpServerRequest.toServerResponse(request).statusMessage = response.statusText
        })))
    const adminToken = options.adminToken ?? `fsa_${randomBytes(24).toString("base64url")}`
    const admin = makeSimAdminApp(sim, adminToken)
    const app = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
      request.url === SIM_ADMIN_PREFIX || request.url.startsWith(`${SIM_ADMIN_PREFIX}/`) ? admin : api)
    yield* server.serve(app)
    const port = server.address._tag === "TcpAddress" ? server.address.port : options.port
    return {
      sim,
      url: `https://${urlHost(bindHost)}:${port}`,
      host: bindHost,
      port,
      tokenId: sim.tokenId,
      tokenSecret: sim.tokenSecret,
      fingerprint256: simFingerprint256,
      adminToken
    }
  })

export interface RunSimPveCliOptions {
  readonly port: number
  readonly host: string
  /** a seed JSON file; default: the embedded configs/sim/pve.json */
  readonly seedPath?: string | undefined
}

/** Starts the HTTPS simulator, prints URL, token and fingerprint (plus env exports), runs until interrupted. */
export const runSimPveCli = (
  options: RunSimPveCliOptions
): Effect.Effect<never, SimPveBindRefused | SimPveServeError | SimPveSeedError, FileSystem.FileSystem> =>
  Effect.scoped(
    Effect.gen(function*() {
      const seed = options.seedPath === undefined ? yield* defaultSeed : yield* loadSeed(options.seedPath)
      const s = yield* serveSimPve({ host: options.host, port: options.port, seed })
      const q = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`
      yield* Console.log(
        [
          `PVE simulator (PVE ${seed.version.version}, node '${s.sim.node}') listening on ${s.url}/api2/json`,
          `  token id:     ${s.tokenId}`,
          `  token secret: ${s.tokenSecret}`,
          `  TLS SHA-256:  ${s.fingerprint256}`,
          `  admin token:  ${s.adminToken} (Bearer, for ${s.url}${SIM_ADMIN_PREFIX}/{tasks,guests,requests,faults})`,
          `  (simulator-only token and certificate: both are public, use them for nothing else)`,
          "",
          `export FELHOM_AGENT_PROXMOX_URL=${q(s.url)}`,
          `export FELHOM_AGENT_PROXMOX_TOKEN_ID=${q(s.tokenId)}`,
          `export FELHOM_AGENT_PROXMOX_TOKEN_SECRET=${q(s.tokenSecret)}`,
          `export FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256=${q(s.fingerprint256)}`,
          "",
          "Ctrl-C stops the simulator."
        ].join("\n")
      )
      return yield* Effect.never
    })
  )
