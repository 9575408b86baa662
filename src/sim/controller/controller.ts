/**
 * One simulated controller: plays the golden-baked unit and the controller of one guest. It reads
 * the guest's bootstrap mount, checks the local API's certificate against the pins, and on every
 * period calls its endpoints with its token and posts a heartbeat. It polls `controller.json`'s
 * generation as the guest's path unit does, and "restarts" (re-reads everything, runs the newly
 * published image) when it changes. Every delay is on Effect's Clock, so TestClock drives it.
 *
 * Fault injection: per guest `healthy | unhealthy | crashloop | silent` (read every period, so a
 * test can change it live), and by image: a tag containing `broken` reports unhealthy, one
 * containing `crashloop` never gets as far as a call.
 */
import { Clock, Duration, Effect, Either, Option, type Redacted, SubscriptionRef, Stream } from "effect"
import type { CertPin } from "../../schema/bootstrap.js"
import { type Bootstrap, readBootstrap, readConfig } from "./bootstrapFiles.js"
import { pinnedCall, type SimCallError, type SimCallRequest, type SimCallResult } from "./pinnedHttps.js"

export type ControllerFault = "healthy" | "unhealthy" | "crashloop" | "silent"

export type ControllerState =
  | "starting"
  | "running"
  /** the image (or the fault) crashes before any call */
  | "crashloop"
  /** alive but making no calls (hung) */
  | "silent"
  /** the last call was refused at the TLS pin: nothing was sent */
  | "refused"
  /** the bootstrap mount is missing or does not decode */
  | "no-bootstrap"
  /** its guest is not running */
  | "stopped"

export interface ControllerCall {
  readonly atMs: number
  readonly generation: number
  readonly method: string
  readonly path: string
  /** null: no HTTP answer (the pin refused the server, or the transport failed). */
  readonly status: number | null
  readonly error: string | null
}

export interface SimControllerView {
  readonly vmid: number
  readonly state: ControllerState
  readonly generation: number | null
  readonly image: string | null
  /** The version it reports (from the image tag). */
  readonly version: string | null
  /** How many times it (re)started on a readable bootstrap. */
  readonly starts: number
  /** What its last heartbeat said. */
  readonly reported: "healthy" | "unhealthy" | null
  readonly calls: ReadonlyArray<ControllerCall>
  readonly callCount: number
  readonly lastError: string | null
}

export const CALL_HISTORY = 200

const emptyView = (vmid: number): SimControllerView => ({
  vmid,
  state: "starting",
  generation: null,
  image: null,
  version: null,
  starts: 0,
  reported: null,
  calls: [],
  callCount: 0,
  lastError: null
})

/** Every controller's view, one entry per guest, observable for tests and the demo. */
export interface ControllerBoard {
  readonly ref: SubscriptionRef.SubscriptionRef<ReadonlyMap<number, SimControllerView>>
  readonly update: (vmid: number, f: (v: SimControllerView) => SimControllerView) => Effect.Effect<void>
  readonly view: (vmid: number) => Effect.Effect<Option.Option<SimControllerView>>
  /** Waits (no timeout: the caller adds one) until the guest's view satisfies `pred`. */
  readonly waitFor: (vmid: number, pred: (v: SimControllerView) => boolean) => Effect.Effect<SimControllerView>
}

export const makeBoard: Effect.Effect<ControllerBoard> = Effect.map(
  SubscriptionRef.make<ReadonlyMap<number, SimControllerView>>(new Map()),
  (ref) => ({
    ref,
    update: (vmid, f) =>
      SubscriptionRef.update(ref, (m) => {
        const next = new Map(m)
        next.set(vmid, f(m.get(vmid) ?? emptyView(vmid)))
        return next
      }),
    view: (vmid) => Effect.map(SubscriptionRef.get(ref), (m) => Option.fromNullable(m.get(vmid))),
    waitFor: (vmid, pred) =>
      ref.changes.pipe(
        Stream.map((m) => m.get(vmid)),
        Stream.filter((v): v is SimControllerView => v !== undefined && pred(v)),
        Stream.runHead,
        Effect.flatMap(Option.match({ onNone: () => Effect.never, onSome: Effect.succeed }))
      )
  })
)

/** The image's tag (after the last `:` past the last `/`, without a digest), or "" when it has none. */
export const imageTag = (image: string): string => {
  const noDigest = image.split("@")[0] ?? ""
  const last = noDigest.slice(noDigest.lastIndexOf("/") + 1)
  const colon = last.lastIndexOf(":")
  return colon < 0 ? "" : last.slice(colon + 1)
}

export const versionOf = (image: string): string => {
  const tag = imageTag(image)
  return /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/.test(tag) ? tag : "sim"
}

/** What the controller does this period, from the guest's fault and the image it runs. */
export const modeOf = (fault: ControllerFault, image: string): ControllerFault => {
  const tag = imageTag(image)
  if (fault === "crashloop" || tag.includes("crashloop")) return "crashloop"
  if (fault === "silent") return "silent"
  if (fault === "unhealthy" || tag.includes("broken")) return "unhealthy"
  return "healthy"
}

export interface SimControllerOptions {
  readonly vmid: number
  /** The host directory the guest's /etc/felhom-bootstrap is mounted from. */
  readonly bootstrapDir: string
  readonly board: ControllerBoard
  /** Read every period. */
  readonly fault: Effect.Effect<ControllerFault>
  /** Between call rounds (default 30 s). */
  readonly period?: Duration.DurationInput
  /** Between generation checks (default 2 s). */
  readonly poll?: Duration.DurationInput
  readonly requestTimeout?: Duration.DurationInput
  /** How a call travels (default: pinned HTTPS); tests under TestClock hand the API in-process. */
  readonly transport?: SimTransport
}

/** One call from a controller to the local API. */
export type SimTransport = (req: SimCallRequest) => Effect.Effect<SimCallResult, SimCallError>

const READS = ["/backup/due", "/storage", "/backup/status", "/restore-test/status"] as const

/** A call as this controller makes it: its own token, its own pins. */
export interface Session {
  readonly base: URL
  readonly token: Redacted.Redacted<string>
  readonly pins: ReadonlyArray<CertPin>
  readonly generation: number
  readonly image: string
}

export const sessionOf = (b: Bootstrap): Either.Either<Session, string> => {
  try {
    const base = new URL(b.config.local_api.url)
    if (base.protocol !== "https:") return Either.left("local_api.url is not https")
    return Either.right({ base, token: b.token, pins: b.config.local_api.pins, generation: b.config.generation, image: b.config.controller.image })
  } catch {
    return Either.left("local_api.url is not a URL")
  }
}

const record = (board: ControllerBoard, vmid: number, call: ControllerCall) =>
  board.update(vmid, (v) => ({
    ...v,
    calls: [...v.calls.slice(-(CALL_HISTORY - 1)), call],
    callCount: v.callCount + 1,
    state: call.error !== null && call.status === null && call.error.startsWith("pin:") ? "refused" : v.state,
    lastError: call.error ?? (call.status !== null && call.status >= 400 ? `${call.method} ${call.path}: ${call.status}` : v.lastError)
  }))

const describe = (e: SimCallError) => `${e.reason}: ${e.message}`

/** One round: the four reads, then the heartbeat. A pin refusal ends the round (nothing else is tried). */
const round = (opts: SimControllerOptions, s: Session, status: "healthy" | "unhealthy") =>
  Effect.gen(function*() {
    const call = (method: "GET" | "POST", path: string, body?: unknown) =>
      Effect.gen(function*() {
        const r: Either.Either<SimCallResult, SimCallError> = yield* Effect.either((opts.transport ?? pinnedCall)({
          base: s.base,
          method,
          path,
          token: s.token,
          body,
          pins: s.pins,
          ...(opts.requestTimeout === undefined ? {} : { timeout: opts.requestTimeout })
        }))
        const atMs = yield* Clock.currentTimeMillis
        yield* record(opts.board, opts.vmid, {
          atMs,
          generation: s.generation,
          method,
          path,
          status: Either.isRight(r) ? r.right.status : null,
          error: Either.isLeft(r) ? describe(r.left) : null
        })
        return r
      })
    for (const path of READS) {
      const r = yield* call("GET", path)
      if (Either.isLeft(r) && r.left.reason === "pin") return
    }
    const hb = yield* call("POST", "/heartbeat", {
      version: versionOf(s.image),
      image: s.image,
      status,
      ...(status === "unhealthy" ? { detail: "simulated: the controller's checks fail" } : {})
    })
    if (Either.isRight(hb) && hb.right.status < 300) {
      yield* opts.board.update(opts.vmid, (v) => ({ ...v, state: "running", reported: status }))
    }
  })

/** Runs `s` until the process is restarted (interrupted by the generation watch). */
const serve = (opts: SimControllerOptions, s: Session) =>
  Effect.gen(function*() {
    const period = opts.period ?? Duration.seconds(30)
    while (true) {
      const mode = modeOf(yield* opts.fault, s.image)
      if (mode === "crashloop" || mode === "silent") {
        yield* opts.board.update(opts.vmid, (v) => ({ ...v, state: mode }))
      } else {
        yield* round(opts, s, mode)
      }
      yield* Effect.sleep(period)
    }
  })

/** Returns when controller.json's generation differs from `current` (an unreadable file is not a change). */
const generationChange = (dir: string, current: number, poll: Duration.DurationInput) =>
  Effect.gen(function*() {
    while (true) {
      yield* Effect.sleep(poll)
      const c = yield* Effect.either(readConfig(dir))
      if (Either.isRight(c) && c.right.generation !== current) return c.right.generation
    }
  })

/**
 * The unit and the controller, forever: read the bootstrap, run the published image, restart on
 * a new generation. Never fails; interrupt it to stop the "guest".
 */
export const runSimController = (opts: SimControllerOptions): Effect.Effect<never> =>
  Effect.gen(function*() {
    const poll = opts.poll ?? Duration.seconds(2)
    while (true) {
      const boot = yield* Effect.either(readBootstrap(opts.bootstrapDir))
      const session = Either.flatMap(Either.mapLeft(boot, (e) => e.message), sessionOf)
      if (Either.isLeft(session)) {
        yield* opts.board.update(opts.vmid, (v) => ({ ...v, state: "no-bootstrap", lastError: session.left }))
        yield* Effect.sleep(poll)
        continue
      }
      const s = session.right
      yield* opts.board.update(opts.vmid, (v) => ({
        ...v,
        state: "starting",
        generation: s.generation,
        image: s.image,
        version: versionOf(s.image),
        starts: v.starts + 1,
        reported: null
      }))
      yield* Effect.raceFirst(serve(opts, s), generationChange(opts.bootstrapDir, s.generation, poll))
    }
  })
