/**
 * HubReleases: the hub client for self-update releases (issue 14, RELEASE_PATHS in
 * src/schema/release.ts, docs/hub-protocol.md). The same transport and rules as the hub client
 * (Hub.ts, HubExchange.ts): its own verified-TLS HttpClient from the hub block, bearer auth, size
 * and time caps, no retries, and no error text that could carry the api key (every message passes
 * the exchange's scrubber).
 *
 * The hub is not trusted with a single byte: the manifest and signature come back raw, for the
 * caller to verify before it reads them; a file is fetched by its SHA-256 from the verified
 * manifest, streamed to a temp file with its listed size as the cap and hashed on the way, and
 * renamed into place only when size and hash match. So the hub can withhold or corrupt a
 * release, never substitute one.
 *
 * Like Hub.ts, this module never shells out.
 */
import { HttpClient, HttpClientError, HttpClientRequest } from "@effect/platform"
import type { HttpClientResponse } from "@effect/platform"
import { Context, Data, Duration, Effect, Layer, Redacted, Stream } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { constants } from "node:fs"
import { type FileHandle, open, rename, unlink } from "node:fs/promises"
import { basename, dirname } from "node:path"
import { HubError } from "../schema/hub.js"
import { RELEASE_PATHS, type ReleaseFile, type ReleaseVersion } from "../schema/release.js"
import { deepestCauseMessage } from "../schema/text.js"
import { VERSION } from "../version.js"
import { HubSettings } from "./Config.js"
import { beat } from "./LoopProgress.js"
import { syncDir } from "./durableFile.js"
import { DEFAULT_REQUEST_TIMEOUT, hubHttpClientLayer } from "./Hub.js"
import { makeHubExchange } from "./HubExchange.js"

/** The local side of a download failed (disk full, permissions); the hub is not to blame. */
export class ReleaseWriteError extends Data.TaggedError("ReleaseWriteError")<{ readonly message: string }> {}

export interface ReleaseBytes {
  readonly manifest: Uint8Array
  readonly signature: Uint8Array
}

export interface HubReleasesShape {
  /** RELEASE.json and RELEASE.json.sig of `version`, exactly as served (caps: 4 MiB, 16 KiB). */
  readonly manifest: (version: ReleaseVersion) => Effect.Effect<ReleaseBytes, HubError>
  /**
   * GET the file by its SHA-256 into `target` (temp beside it, O_EXCL, synced, renamed): refused
   * unread when the declared length exceeds `file.size`, aborted the moment more arrives, and
   * never renamed unless size and SHA-256 match. `target`'s directory must exist.
   */
  readonly file: (version: ReleaseVersion, file: ReleaseFile, target: string) => Effect.Effect<void, HubError | ReleaseWriteError>
}

export class HubReleases extends Context.Tag("felhom/HubReleases")<HubReleases, HubReleasesShape>() {}

export const MANIFEST_MAX_BYTES = 4 * 1024 * 1024
export const SIGNATURE_MAX_BYTES = 16 * 1024

/** A file may take a minute plus one second per 256 KiB (a slow uplink still finishes ~100 MiB). */
export const fileTimeout = (size: number): Duration.Duration => Duration.seconds(60 + Math.ceil(size / (256 * 1024)))

export interface HubReleasesOptions {
  readonly requestTimeout?: Duration.DurationInput
}

const codeOf = (e: unknown): string =>
  typeof e === "object" && e !== null && "code" in e ? String((e as { readonly code: unknown }).code) : "error"

export const makeHubReleases = (options: HubReleasesOptions = {}) =>
  Effect.gen(function*() {
    const hub = yield* HubSettings
    const http = yield* HttpClient.HttpClient
    // The one place the api key is unwrapped: the scrubber has to know what to look for.
    const x = makeHubExchange(http, {
      url: hub.url,
      bearer: hub.api_key,
      secrets: [Redacted.value(hub.api_key)],
      timeout: options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT,
      maxBytes: MANIFEST_MAX_BYTES
    })
    const base = hub.url.replace(/\/+$/, "")
    const fail = (reason: HubError["reason"], path: string, message: string, status?: number) =>
      new HubError({ reason, method: "GET", path, ...(status === undefined ? {} : { status }), message: x.safe(`GET ${path}: ${message}`) })

    /**
     * One GET whose body goes chunk by chunk to `sink`, at most `maxBytes` of it (declared or
     * streamed). A non-2xx answer's body is read (bounded) for a scrubbed excerpt only.
     */
    const streamed = <E>(
      path: string,
      maxBytes: number,
      timeout: Duration.Duration,
      sink: (chunk: Uint8Array) => Effect.Effect<void, E>
    ): Effect.Effect<void, HubError | E> => {
      const transport = (e: HttpClientError.HttpClientError) => Effect.fail(fail("Transport", path, deepestCauseMessage(e.cause, e.message)))
      const body = (res: HttpClientResponse.HttpClientResponse): Effect.Effect<void, HubError | E | HttpClientError.ResponseError> => {
        if (res.status < 200 || res.status > 299) {
          return res.stream.pipe(
            Stream.take(8),
            Stream.runFold("", (acc, c) => (acc.length > 2048 ? acc : acc + Buffer.from(c).toString("utf8"))),
            Effect.orElseSucceed(() => ""),
            Effect.flatMap((text) => {
              const shown = x.scrubber.excerpt(text, 300)
              return Effect.fail(fail("Status", path, `HTTP ${res.status}${shown.length > 0 ? `: ${shown}` : ""}`, res.status))
            })
          )
        }
        const declared = Number(res.headers["content-length"])
        if (Number.isFinite(declared) && declared > maxBytes) {
          return Effect.fail(fail("TooLarge", path, `the hub declares ${declared} bytes, more than the ${maxBytes} expected; not read`, res.status))
        }
        return res.stream.pipe(
          Stream.runFoldEffect(0, (size, chunk): Effect.Effect<number, HubError | E> => {
            const next = size + chunk.length
            if (next > maxBytes) return Effect.fail(fail("TooLarge", path, `the body exceeds the ${maxBytes} bytes expected; aborted`, res.status))
            return Effect.as(sink(chunk), next)
          }),
          Effect.asVoid
        )
      }
      const request = HttpClientRequest.get(base + path).pipe(
        HttpClientRequest.bearerToken(hub.api_key),
        HttpClientRequest.setHeader("user-agent", `felhom-agent/${VERSION}`)
      )
      return http.execute(request).pipe(
        Effect.flatMap(body),
        Effect.catchIf((e): e is HttpClientError.HttpClientError => typeof e === "object" && e !== null && HttpClientError.TypeId in e, transport),
        Effect.timeoutFail({ duration: timeout, onTimeout: () => fail("Transport", path, `no complete answer within ${Duration.format(timeout)}`) }),
        Effect.scoped
      )
    }

    const bytes = (path: string, maxBytes: number) =>
      Effect.suspend(() => {
        const chunks: Array<Uint8Array> = []
        return streamed(path, maxBytes, Duration.decode(options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT), (c) => Effect.sync(() => void chunks.push(c))).pipe(
          Effect.map(() => new Uint8Array(Buffer.concat(chunks)))
        )
      })

    const manifest = (version: ReleaseVersion) =>
      Effect.all({
        manifest: bytes(RELEASE_PATHS.manifest(version), MANIFEST_MAX_BYTES),
        signature: bytes(RELEASE_PATHS.signature(version), SIGNATURE_MAX_BYTES)
      }).pipe(Effect.withSpan("HubReleases.manifest"))

    const file = (version: ReleaseVersion, f: ReleaseFile, target: string) => {
      const path = RELEASE_PATHS.file(version, f.sha256)
      const tmp = `${dirname(target)}/.${basename(target)}.part-${randomBytes(6).toString("hex")}`
      const writeFail = (what: string) => (e: unknown) => new ReleaseWriteError({ message: `${f.path}: cannot ${what}: ${codeOf(e)}` })
      const download = (h: FileHandle) =>
        Effect.gen(function*() {
          const hash = createHash("sha256")
          let size = 0
          yield* streamed(path, f.size, fileTimeout(f.size), (chunk) => {
            hash.update(chunk)
            size += chunk.length
            // a long download is progress of the hub loop (the watchdog); fileTimeout bounds a trickle
            return Effect.tryPromise({ try: () => h.write(chunk), catch: writeFail("write") }).pipe(Effect.zipRight(beat("release download")))
          })
          if (size !== f.size) return yield* fail("Decode", path, `${f.path}: got ${size} bytes, the signed manifest lists ${f.size}`)
          if (hash.digest("hex") !== f.sha256) return yield* fail("Decode", path, `${f.path}: the bytes do not match the signed manifest's SHA-256`)
          yield* Effect.tryPromise({ try: async () => {
            await h.chmod(f.mode)
            await h.sync()
          }, catch: writeFail("sync") })
        })
      return Effect.acquireUseRelease(
        Effect.tryPromise({ try: () => open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600), catch: writeFail("create") }),
        download,
        (h) => Effect.promise(() => h.close().catch(() => undefined))
      ).pipe(
        Effect.zipRight(Effect.tryPromise({ try: () => rename(tmp, target), catch: writeFail("rename") })),
        Effect.zipRight(Effect.mapError(syncDir(dirname(target)), writeFail("sync the directory"))),
        // nothing half-written is ever left under a listed name; the temp goes on any failure
        Effect.tapError(() => Effect.promise(() => unlink(tmp).catch(() => undefined))),
        Effect.withSpan("HubReleases.file")
      )
    }

    return HubReleases.of({ manifest, file })
  })

/** Over whatever HttpClient is provided (tests: loopback HTTPS with the dev hub's CA). */
export const HubReleasesWithoutClient = Layer.effect(HubReleases, makeHubReleases()).pipe(
  Layer.ensureRequirementsType<HttpClient.HttpClient | HubSettings>()
)

export const hubReleasesLayerWithoutClient = (options: HubReleasesOptions) =>
  Layer.effect(HubReleases, makeHubReleases(options)).pipe(Layer.ensureRequirementsType<HttpClient.HttpClient | HubSettings>())

/** Production: its own verified-TLS client from the hub block (hub.ca_file, else the system roots). */
export const HubReleasesLive: Layer.Layer<HubReleases, import("../schema/errors.js").ConfigError, HubSettings> = HubReleasesWithoutClient.pipe(
  Layer.provide(Layer.unwrapEffect(Effect.map(HubSettings, (h) => hubHttpClientLayer(h.ca_file))))
)
