/**
 * Serving the dev hub on loopback (HTTPS with its own certificate by default, because the
 * agent's hub.url must be https), and the `felhom-agent sim hub` entry point that prints how to
 * point an agent at it. The certificate's key is public, so anything but loopback is refused.
 */
import { FileSystem } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { randomBytes } from "node:crypto"
import { createServer as createHttpServer } from "node:http"
import { createServer as createHttpsServer } from "node:https"
import { isIPv6 } from "node:net"
import { Console, Effect, Either, Option, Ref, Schedule, type Scope } from "effect"
import { decodeDesiredState } from "../../schema/desired.js"
import { isLoopbackHost } from "../pve/server.js"
import { hubCertPem, hubKeyPem } from "./tlsMaterial.js"
import { DevHubBindRefused, DevHubServeError } from "./errors.js"
import { type DevHub, type DevHubOptions, makeDevHub } from "./hub.js"

/**
 * The certificate the dev hub serves (SANs localhost, 127.0.0.1, ::1): its own, distinct from
 * the PVE simulator's, so a hub client holding the PVE trust fails against it.
 */
export const devHubCaPem = hubCertPem

export interface ServeAppOptions {
  /** loopback only: 127.0.0.0/8, ::1 or localhost */
  readonly host: string
  /** 0 picks a free port */
  readonly port: number
  /** HTTPS with the dev hub certificate (default) or plain HTTP. */
  readonly tls?: boolean
}

export interface ServedApp {
  /** `https://127.0.0.1:<port>` (no trailing slash) */
  readonly url: string
  readonly host: string
  readonly port: number
}

const urlHost = (host: string): string => (isIPv6(host) ? `[${host}]` : host)

/** Serves any HttpApp on loopback for the scope's lifetime (tests use it for misbehaving hubs). */
export const serveApp = (
  app: HttpApp.Default,
  options: ServeAppOptions
): Effect.Effect<ServedApp, DevHubBindRefused | DevHubServeError, Scope.Scope> =>
  Effect.gen(function*() {
    if (!isLoopbackHost(options.host)) {
      return yield* new DevHubBindRefused({
        host: options.host,
        message: `refusing to serve the dev hub on '${options.host}': its TLS key is public and its tokens are printed; bind a loopback address (127.0.0.1, ::1, localhost)`
      })
    }
    const bindHost = options.host.startsWith("[") ? options.host.slice(1, -1) : options.host
    const tls = options.tls ?? true
    const server = yield* NodeHttpServer.make(
      () => (tls ? createHttpsServer({ key: hubKeyPem, cert: hubCertPem }) : createHttpServer()),
      { host: bindHost, port: options.port }
    ).pipe(
      Effect.mapError((e) => new DevHubServeError({ message: `cannot listen on ${bindHost}:${options.port}: ${String(e.cause)}`, cause: e.cause }))
    )
    yield* server.serve(app)
    const port = server.address._tag === "TcpAddress" ? server.address.port : options.port
    return { url: `${tls ? "https" : "http"}://${urlHost(bindHost)}:${port}`, host: bindHost, port }
  })

export interface ServeDevHubOptions extends ServeAppOptions, DevHubOptions {}

export interface DevHubServer extends ServedApp {
  readonly hub: DevHub
  /** PEM to trust (hub.ca_file) when served over HTTPS. */
  readonly caPem: string
}

export const serveDevHub = (
  options: ServeDevHubOptions
): Effect.Effect<DevHubServer, DevHubBindRefused | DevHubServeError, Scope.Scope> =>
  Effect.gen(function*() {
    if (!isLoopbackHost(options.host)) {
      // checked before the hub exists, so nothing is built for a refused bind
      return yield* new DevHubBindRefused({
        host: options.host,
        message: `refusing to serve the dev hub on '${options.host}': bind a loopback address (127.0.0.1, ::1, localhost)`
      })
    }
    const hub = yield* makeDevHub(options)
    const served = yield* serveApp(hub.app, options)
    return { ...served, hub, caPem: devHubCaPem }
  })

export interface RunDevHubCliOptions {
  readonly host: string
  readonly port: number
  /** Publish this desired-state JSON for the host, and re-publish whenever the file changes. */
  readonly desiredFile?: string | undefined
  /** The host the generated api key belongs to. Default "dev-host". */
  readonly hostId?: string | undefined
  readonly pollIntervalSeconds?: number | undefined
  /** Plain HTTP instead of HTTPS (the agent's config accepts only https:// hub URLs). */
  readonly plainHttp?: boolean | undefined
}

const q = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`

/**
 * Watches `path` by polling its mtime once a second; every new version that decodes is
 * published (the hub bumps the generation), a bad one is reported and the last good one stays.
 */
const watchDesiredFile = (hub: DevHub, hostId: string, path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const lastMtime = yield* Ref.make<number | undefined>(undefined)
    const lastError = yield* Ref.make<string | undefined>(undefined)
    const check = Effect.gen(function*() {
      const info = yield* fs.stat(path)
      const mtime = Option.match(info.mtime, { onNone: () => 0, onSome: (d) => d.getTime() })
      if ((yield* Ref.getAndSet(lastMtime, mtime)) === mtime) return
      const text = yield* fs.readFileString(path)
      const parsed = yield* Effect.try({ try: (): unknown => JSON.parse(text), catch: () => `${path} is not valid JSON` })
      const withGeneration = typeof parsed === "object" && parsed !== null && !Array.isArray(parsed) && !("generation" in parsed)
        ? { ...parsed, generation: 0 }
        : parsed
      const desired = decodeDesiredState(withGeneration)
      if (Either.isLeft(desired)) return yield* Effect.fail(`${path}: ${desired.left}`)
      const generation = yield* hub.setDesired(hostId, desired.right)
      yield* Console.log(`published ${path} for ${hostId} as generation ${generation}`)
      yield* Ref.set(lastError, undefined)
    }).pipe(
      Effect.catchAll((e) => {
        const message = typeof e === "string" ? e : e.message
        // once per distinct problem, not once a second
        return Effect.flatMap(Ref.getAndSet(lastError, message), (previous) =>
          previous === message ? Effect.void : Console.error(`desired file not published: ${message}`))
      })
    )
    return yield* Effect.repeat(check, Schedule.spaced("1 second"))
  })

/** Starts the dev hub, prints URL, keys and env exports, runs until interrupted. */
export const runDevHubCli = (
  options: RunDevHubCliOptions
): Effect.Effect<never, DevHubBindRefused | DevHubServeError, FileSystem.FileSystem> =>
  Effect.scoped(
    Effect.gen(function*() {
      const hostId = options.hostId ?? "dev-host"
      const apiKey = `fhk_${randomBytes(24).toString("base64url")}`
      const tls = options.plainHttp !== true
      const s = yield* serveDevHub({
        host: options.host,
        port: options.port,
        tls,
        apiKeys: { [apiKey]: hostId },
        ...(options.pollIntervalSeconds === undefined ? {} : { pollIntervalSeconds: options.pollIntervalSeconds }),
        verbose: true
      })
      // one enrollment token for `felhom-agent enroll` against this hub (mode new, a fresh host)
      const enrollToken = `fhe_${randomBytes(24).toString("base64url")}`
      yield* s.hub.addEnrollmentToken(enrollToken, { mode: "new" }).pipe(Effect.orDie)
      const fs = yield* FileSystem.FileSystem
      const caFile = tls
        ? yield* fs.makeTempDirectoryScoped({ prefix: "felhom-dev-hub-" }).pipe(
          Effect.flatMap((dir) => Effect.as(fs.writeFileString(`${dir}/ca.pem`, s.caPem), `${dir}/ca.pem`)),
          Effect.option
        )
        : Option.none<string>()
      const admin = `${s.url}/admin/hosts/${hostId}`
      const curl = `curl${Option.match(caFile, { onNone: () => "", onSome: (f) => ` --cacert ${q(f)}` })} -H ${q(`Authorization: Bearer ${s.hub.adminToken}`)}`
      yield* Console.log(
        [
          `dev hub listening on ${s.url} (agent protocol under /api/v1, admin under /admin)`,
          `  host id:     ${hostId}`,
          `  api key:     ${apiKey}`,
          `  admin token: ${s.hub.adminToken}`,
          `  enrollment token (one-time, mode new): ${enrollToken}`,
          ...Option.match(caFile, { onNone: () => [], onSome: (f) => [`  CA file:     ${f} (the dev hub certificate: public, loopback only)`] }),
          `  poll interval ${s.hub.pollIntervalSeconds} s; overdue after ${s.hub.overdueAfterSeconds} s of silence`,
          "",
          `export FELHOM_AGENT_HUB_URL=${q(s.url)}`,
          `export FELHOM_AGENT_HUB_API_KEY=${q(apiKey)}`,
          `export FELHOM_AGENT_HOST_ID=${q(hostId)}`,
          ...Option.match(caFile, { onNone: () => [], onSome: (f) => [`export FELHOM_AGENT_HUB_CA_FILE=${q(f)}`] }),
          "",
          "from another shell:",
          `  ${curl} ${admin}`,
          `  ${curl} -X POST --data @desired.json ${admin}/desired`,
          `  ${curl} -X POST --data '{"id":"job-1","op":"force-backup","guest_id":100,"params":{"storage":"local"}}' ${admin}/jobs`,
          `  ${curl} -X POST --data '{"blocked":true}' ${admin}/blocked`,
          `  ${curl} -X POST --data '{"token":"fhe_<at least 16 characters>"}' ${s.url}/admin/enrollment-tokens`,
          "",
          "Ctrl-C stops the dev hub."
        ].join("\n")
      )
      if (options.desiredFile !== undefined) yield* Effect.forkScoped(watchDesiredFile(s.hub, hostId, options.desiredFile))
      return yield* Effect.never
    })
  )
