/**
 * The simulated controllers of a simulated host: one per running guest that has the bootstrap
 * mount (an `mpN` whose `mp=` is /etc/felhom-bootstrap), started when the guest starts and
 * stopped when it stops, as the guest's systemd would. Each reads only its own guest's bootstrap
 * directory. Tests and the demo read what each saw, set faults, and probe the local API as a
 * controller would (e.g. naming another guest's snapshot, to show the refusal).
 */
import { Data, Duration, Effect, Either, FiberMap, Option, Ref, type Scope } from "effect"
import { BOOTSTRAP_GUEST_PATH } from "../../schema/bootstrap.js"
import { parseMountPoint } from "../pve/lxcconf.js"
import type { SimGuestView, SimPve } from "../pve/sim.js"
import { readBootstrap } from "./bootstrapFiles.js"
import {
  type ControllerBoard,
  type ControllerFault,
  makeBoard,
  runSimController,
  sessionOf,
  type SimControllerView,
  type SimTransport
} from "./controller.js"
import { pinnedCall, type SimCallError } from "./pinnedHttps.js"

export interface SimControllersOptions {
  /** How often the fleet looks at the guests (default 1 s). */
  readonly scan?: Duration.DurationInput
  readonly period?: Duration.DurationInput
  readonly poll?: Duration.DurationInput
  readonly requestTimeout?: Duration.DurationInput
  /** How calls travel (default: pinned HTTPS to the bootstrap's local_api.url). */
  readonly transport?: SimTransport
  /** Initial faults per guest (default healthy). */
  readonly faults?: Readonly<Record<number, ControllerFault>>
}

export interface ProbeRequest {
  readonly method: "GET" | "POST" | "PUT" | "DELETE"
  readonly path: string
  readonly body?: unknown
  /** Send the controller's own token (default) or none. */
  readonly auth?: "own" | "none"
}

export interface ProbeResult {
  readonly status: number
  readonly body: string
}

/** A probe that cannot be made: no controller runs for the guest, or its bootstrap is unreadable. */
export class SimProbeError extends Data.TaggedError("SimProbeError")<{ readonly message: string }> {}

export interface SimControllers {
  readonly board: ControllerBoard
  readonly views: Effect.Effect<ReadonlyArray<SimControllerView>>
  readonly view: (vmid: number) => Effect.Effect<Option.Option<SimControllerView>>
  readonly waitFor: (vmid: number, pred: (v: SimControllerView) => boolean) => Effect.Effect<SimControllerView>
  readonly setFault: (vmid: number, fault: ControllerFault) => Effect.Effect<void>
  /** Which guests have a controller running now. */
  readonly running: Effect.Effect<ReadonlyArray<number>>
  /** One pass over the guests now (the loop does this every `scan`). */
  readonly scanNow: Effect.Effect<void>
  /** A call as guest `vmid`'s controller makes it: its bootstrap's URL, pins and token. */
  readonly probe: (vmid: number, req: ProbeRequest) => Effect.Effect<ProbeResult, SimCallError | SimProbeError>
  /**
   * Guest `vmid`'s controller asks to roll back to a snapshot of guest `otherVmid` (one the sim
   * shows on it, preferring the kinds a controller may name): the API must refuse.
   */
  readonly probeOtherGuest: (vmid: number, otherVmid: number) => Effect.Effect<ProbeResult & { readonly snapshot: string }, SimCallError | SimProbeError>
}

/** The host directory a guest's bootstrap mount comes from, if it has one. */
export const bootstrapDirOf = (g: SimGuestView): string | null => {
  for (const [key, value] of Object.entries(g.config)) {
    if (!/^mp\d+$/.test(key) || typeof value !== "string") continue
    const mp = parseMountPoint(key, value)
    if (Either.isRight(mp) && mp.right.type === "bind" && mp.right.props["mp"] === BOOTSTRAP_GUEST_PATH) return mp.right.volume
  }
  return null
}

export const simControllers = (sim: SimPve, opts: SimControllersOptions = {}): Effect.Effect<SimControllers, never, Scope.Scope> =>
  Effect.gen(function*() {
    const board = yield* makeBoard
    const fibers = yield* FiberMap.make<number>()
    const faults = yield* Ref.make<ReadonlyMap<number, ControllerFault>>(new Map(Object.entries(opts.faults ?? {}).map(([k, v]) => [Number(k), v])))
    // which directory each running controller was started on
    const dirs = yield* Ref.make<ReadonlyMap<number, string>>(new Map())

    const faultOf = (vmid: number) => Effect.map(Ref.get(faults), (m) => m.get(vmid) ?? "healthy")

    const scanNow = Effect.gen(function*() {
      const guests = yield* sim.guests
      const want = new Map<number, string>()
      for (const g of guests) {
        const dir = g.status === "running" ? bootstrapDirOf(g) : null
        if (dir !== null) want.set(g.vmid, dir)
      }
      const have = yield* Ref.get(dirs)
      for (const [vmid, dir] of have) {
        if (want.get(vmid) !== dir) {
          yield* FiberMap.remove(fibers, vmid)
          yield* board.update(vmid, (v) => ({ ...v, state: "stopped" }))
        }
      }
      for (const [vmid, dir] of want) {
        if (have.get(vmid) === dir) continue
        // the golden first-boot unit, before the controller: the directive's resets, once per id
        const boot = yield* Effect.either(readBootstrap(dir))
        if (Either.isRight(boot)) yield* sim.applyDirective(vmid, boot.right.config.identity)
        yield* FiberMap.run(fibers, vmid, runSimController({
          vmid,
          bootstrapDir: dir,
          board,
          fault: faultOf(vmid),
          ...(opts.period === undefined ? {} : { period: opts.period }),
          ...(opts.poll === undefined ? {} : { poll: opts.poll }),
          ...(opts.requestTimeout === undefined ? {} : { requestTimeout: opts.requestTimeout }),
          ...(opts.transport === undefined ? {} : { transport: opts.transport })
        }))
      }
      yield* Ref.set(dirs, want)
    })

    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(scanNow, Effect.sleep(opts.scan ?? Duration.seconds(1)))))

    const sessionFor = (vmid: number) =>
      Effect.gen(function*() {
        const dir = (yield* Ref.get(dirs)).get(vmid)
        if (dir === undefined) return yield* new SimProbeError({ message: `guest ${vmid} has no controller running` })
        const boot = yield* Effect.mapError(readBootstrap(dir), (e) => new SimProbeError({ message: e.message }))
        return yield* Either.match(sessionOf(boot), {
          onLeft: (message) => Effect.fail(new SimProbeError({ message })),
          onRight: Effect.succeed
        })
      })

    const probe = (vmid: number, req: ProbeRequest) =>
      Effect.flatMap(sessionFor(vmid), (s) =>
        Effect.map(
          (opts.transport ?? pinnedCall)({
            base: s.base,
            method: req.method,
            path: req.path,
            token: req.auth === "none" ? null : s.token,
            body: req.body,
            pins: s.pins,
            ...(opts.requestTimeout === undefined ? {} : { timeout: opts.requestTimeout })
          }),
          (r) => ({ status: r.status, body: r.body })
        ))

    const probeOtherGuest = (vmid: number, otherVmid: number) =>
      Effect.gen(function*() {
        const other = yield* sim.guest(otherVmid)
        const names = Option.match(other, { onNone: () => [], onSome: (g) => g.snapshots.map((s) => s.name) })
        const snapshot = names.find((n) => n.startsWith("felhom-preupd-")) ?? names.find((n) => n.startsWith("ctl-")) ??
          `ctl-of-${otherVmid}`
        const r = yield* probe(vmid, { method: "POST", path: "/rollback", body: { snapshot } })
        return { ...r, snapshot }
      })

    return {
      board,
      views: Effect.map(board.ref.get, (m) => [...m.values()].sort((a, b) => a.vmid - b.vmid)),
      view: board.view,
      waitFor: board.waitFor,
      setFault: (vmid, fault) => Ref.update(faults, (m) => new Map(m).set(vmid, fault)),
      running: Effect.map(Ref.get(dirs), (m) => [...m.keys()].sort((a, b) => a - b)),
      scanNow,
      probe,
      probeOtherGuest
    }
  })
