/**
 * The provisioning back half (issue 11): deployController as the controller-deploy saga against
 * the in-process PVE simulator, the real journal, token store and controller store on SQLite, and
 * the simulated Privileged bootstrap half (src/sim/pve/privilegedSim.ts: plain files below a
 * scratch root, the mount on the simulated guest's config).
 *
 * Crashes: after the k-th durable write of ANY kind (journal, token store, controller store, a
 * file written or removed, a mount set or deleted) the op's fiber is interrupted (no handler
 * runs, as a process death); the database is reopened and the recovery rule runs. For every k the
 * guest ends with token, files, mount and record all in place and agreeing, or all gone.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Layer, Option, Redacted, Schema, TestClock } from "effect"
import { existsSync, mkdtempSync, readFileSync, realpathSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import { ControllerStore, ControllerStoreLive, type ControllerStoreShape } from "../src/layers/ControllerStore.js"
import { layerAt } from "../src/layers/Database.js"
import { fromJournal, Journal, JournalError, JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { LocalTokens, LocalTokensLive, type LocalTokensShape } from "../src/layers/LocalTokens.js"
import { Privileged, type PrivilegedShape } from "../src/layers/Privileged.js"
import { republishConfig } from "../src/programs/controller/bootstrap.js"
import { ControllerContext } from "../src/programs/controller/context.js"
import { deployController, pickMpIndex, recoverControllerDeploy, undeployController } from "../src/programs/controller/deploy.js"
import { ControllerBootstrap } from "../src/schema/bootstrap.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { VmId } from "../src/schema/ids.js"
import { decodeOperation } from "../src/schema/operations.js"
import { PrivilegedError } from "../src/schema/privileged.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { bootstrapDirOf, makePrivilegedSim } from "../src/sim/pve/privilegedSim.js"
import { dbFile } from "./engine-support.js"
import { inProcessProxmox, seedWith } from "./support.js"

const VMID = VmId.make(100)
const IMAGE = "registry.example.net/felhom/controller:1.4.2"
const IMAGE2 = "registry.example.net/felhom/controller:1.5.0"
const REGISTRY_PASSWORD = "reg-pass-SECRET-42"
const PINS = [{ spki_sha256: "c3BraQ==", cert_sha256: "ab".repeat(32) }]

/** The real layer's other methods are never reached by a deploy. */
const unreachable = () => Effect.dieMessage("not part of a controller deploy")
const stubReal: PrivilegedShape = {
  createGoldenContainer: unreachable,
  dumpGoldenArchive: unreachable,
  destroyGoldenContainer: unreachable,
  mountUsb: unreachable,
  unmountUsb: unreachable,
  usbState: unreachable,
  verifyArchive: unreachable,
  guestSystemState: unreachable,
  bindMountIntoGuest: unreachable,
  unbindFromGuest: unreachable,
  writeBootstrap: unreachable,
  removeBootstrap: unreachable,
  smart: unreachable,
  sensors: unreachable
}

const context = Layer.succeed(ControllerContext, {
  hostId: "host-test",
  hubUrl: "https://hub.example.net",
  localApiUrl: "https://10.10.0.1:7443",
  pins: Effect.succeed(PINS),
  registry: { server: "registry.example.net", username: "pull-100", password: Redacted.make(REGISTRY_PASSWORD) }
})

interface Counter {
  writes: number
  crashAfter: number
}

/** Counts `write` and interrupts its caller right after the counter reaches `crashAfter`. */
const counted = (c: Counter) => <A, E, R>(write: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(write, (a) => {
    c.writes++
    return c.writes === c.crashAfter ? Effect.interrupt : Effect.succeed(a)
  })

interface Faults {
  /** Make these privileged calls fail (pct exit 255). */
  readonly failing?: ReadonlySet<"bindMountIntoGuest" | "unbindFromGuest" | "writeBootstrap" | "removeBootstrap">
  /** Make the commit (recordDeploy) fail. */
  readonly failCommit?: boolean
  /** Called when recordDeploy runs (before it writes). */
  readonly onCommit?: Effect.Effect<void>
}

/** Everything a deploy needs over one database file, every durable write counted. */
const agent = (sim: SimPve, path: string, root: string, c: Counter, faults: Faults = {}) => {
  const db = layerAt(path)
  const after = counted(c)
  const journal = Layer.effect(
    Journal,
    Effect.map(Journal, (real): JournalShape => ({
      ...real,
      begin: (op) => after(real.begin(op)),
      admit: (a) => after(real.admit(a)),
      stepStarted: (id, step, data) => after(real.stepStarted(id, step, data)),
      recordUpid: (id, step, upid) => after(real.recordUpid(id, step, upid)),
      stepDone: (id, step, data) => after(real.stepDone(id, step, data)),
      finish: (id, status, detail) => after(real.finish(id, status, detail))
    }))
  ).pipe(Layer.provide(JournalLive))
  const tokens = Layer.effect(
    LocalTokens,
    Effect.map(LocalTokens, (real): LocalTokensShape => ({
      ...real,
      mint: (vmid, id) => after(real.mint(vmid, id)),
      revoke: (id) => after(real.revoke(id)),
      revokeGuest: (vmid, keep) => after(real.revokeGuest(vmid, keep))
    }))
  ).pipe(Layer.provide(LocalTokensLive))
  const store = Layer.effect(
    ControllerStore,
    Effect.map(ControllerStore, (real): ControllerStoreShape => ({
      ...real,
      recordDeploy: (d) =>
        Effect.zipRight(
          faults.onCommit ?? Effect.void,
          faults.failCommit === true ? Effect.fail(new JournalError({ message: "database is locked" })) : after(real.recordDeploy(d))
        ),
      forget: (vmid) => after(real.forget(vmid))
    }))
  ).pipe(Layer.provide(ControllerStoreLive))
  const simPriv = makePrivilegedSim(stubReal, sim, root)
  const fail = (name: string) => faults.failing?.has(name as never) === true
  const privileged = Layer.succeed(Privileged, {
    ...simPriv,
    writeBootstrap: (s) => fail("writeBootstrap") ? Effect.fail(pctError("felhom-bootstrap")) : after(simPriv.writeBootstrap(s)),
    removeBootstrap: (v) => fail("removeBootstrap") ? Effect.fail(pctError("felhom-bootstrap")) : after(simPriv.removeBootstrap(v)),
    bindMountIntoGuest: (s) => fail("bindMountIntoGuest") ? Effect.fail(pctError("pct")) : after(simPriv.bindMountIntoGuest(s)),
    unbindFromGuest: (s) => fail("unbindFromGuest") ? Effect.fail(pctError("pct")) : after(simPriv.unbindFromGuest(s))
  })
  const config = Layer.succeed(AgentConfig, {
    source: undefined,
    file: Schema.decodeUnknownSync(AgentConfigFile)({ privileged: { bootstrap_root: root } })
  })
  return Layer.mergeAll(
    inProcessProxmox(sim, { node: "pve" }),
    Layer.provideMerge(fromJournal, journal),
    tokens,
    store,
    privileged,
    config,
    context
  ).pipe(Layer.provide(db), Layer.orDie)
}

const pctError = (command: "pct" | "felhom-bootstrap") =>
  new PrivilegedError({ reason: "NonZeroExit", command, exitCode: 255, stderrTail: "CT is locked\n", message: `${command}: exited with status 255` })

const scratchRoot = () => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-deploy-")))
  return join(base, "bootstrap")
}

/** Recovery of every in-flight controller-deploy, as recover.ts will run it. */
const recoverDeploys = Effect.gen(function*() {
  const journal = yield* Journal
  const results: Array<{ outcome: string; detail: string }> = []
  for (const op of yield* journal.inFlight) {
    const typed = decodeOperation(op.payload)
    if (Either.isLeft(typed) || typed.right._tag !== "controller-deploy") throw new Error(`unexpected op ${op.kind}`)
    results.push(yield* recoverControllerDeploy(op, typed.right))
  }
  return results
})

interface GuestState {
  readonly liveTokens: ReadonlyArray<string>
  readonly fileToken: string | null
  readonly fileTokenVerifies: boolean
  readonly config: ControllerBootstrap | null
  readonly mountDir: string | null
  readonly recordToken: string | null
  readonly inFlight: number
}

const observe = (sim: SimPve, root: string) =>
  Effect.gen(function*() {
    const tokens = yield* LocalTokens
    const store = yield* ControllerStore
    const journal = yield* Journal
    const live = (yield* tokens.forGuest(VMID)).filter((t) => t.revokedMs === null).map((t) => t.id)
    const tokenFile = join(root, String(VMID), "local-token")
    const fileToken = existsSync(tokenFile) ? readFileSync(tokenFile, "utf8").trim() : null
    const verified = fileToken === null ? Option.none() : yield* tokens.verify(fileToken)
    const configFile = join(root, String(VMID), "controller.json")
    const config = existsSync(configFile) ? Schema.decodeUnknownSync(Schema.parseJson(ControllerBootstrap))(readFileSync(configFile, "utf8")) : null
    const record = yield* store.get(VMID)
    return {
      liveTokens: live,
      fileToken,
      fileTokenVerifies: Option.exists(verified, (v) => v.vmid === VMID && live.includes(v.tokenId)),
      config,
      mountDir: Option.getOrNull(yield* bootstrapDirOf(sim, VMID)),
      recordToken: Option.match(record, { onNone: () => null, onSome: (r) => r.tokenId }),
      inFlight: (yield* journal.inFlight).length
    } satisfies GuestState
  })

/** Both in place and agreeing, or both gone: never one without the other. */
const consistency = (s: GuestState, root: string): "deployed" | "gone" | string => {
  const dir = join(root, String(VMID))
  if (s.liveTokens.length === 0 && s.fileToken === null && s.config === null && s.mountDir === null && s.recordToken === null) return "gone"
  if (
    s.liveTokens.length === 1 && s.fileTokenVerifies && s.config !== null && s.mountDir === dir &&
    s.recordToken === s.liveTokens[0] && s.fileToken?.includes(`_${s.liveTokens[0]}_`) === true
  ) return "deployed"
  return `inconsistent: ${JSON.stringify({ ...s, fileToken: s.fileToken === null ? null : "<present>" })}`
}

const withSim = <A, E>(f: (sim: SimPve) => Effect.Effect<A, E>) =>
  Effect.scoped(Effect.flatMap(Effect.flatMap(seedWith({}), (seed) => makeSimPve(seed)), f))

describe("pickMpIndex", () => {
  const host = "/b/100"
  const ours = `${host},mp=/etc/felhom-bootstrap,ro=1,backup=0`
  it("the previous index when free or ours; else one holding our dir; else the lowest free", () => {
    expect(pickMpIndex({ mp0: "local-lvm:vm-100-disk-1,mp=/data,size=8G" }, host, null)).toBe(1)
    expect(pickMpIndex({ mp0: "x,mp=/a", mp1: "y,mp=/b", mp3: "z,mp=/c" }, host, null)).toBe(2)
    expect(pickMpIndex({ mp0: "x,mp=/a", mp5: ours }, host, null)).toBe(5)
    expect(pickMpIndex({ mp0: "x,mp=/a", mp5: ours }, host, 5)).toBe(5)
    expect(pickMpIndex({ mp0: "x,mp=/a" }, host, 7)).toBe(7)
    // the previous index taken by something else: never reused
    expect(pickMpIndex({ mp7: "local-lvm:vm-100-disk-2,mp=/srv" }, host, 7)).toBe(0)
    // a look-alike source is not ours
    expect(pickMpIndex({ mp0: `${host}-x,mp=/etc/felhom-bootstrap`, mp1: `${host},mp=/etc/other` }, host, null)).toBe(2)
    const full = Object.fromEntries(Array.from({ length: 256 }, (_, i) => [`mp${i}`, "x,mp=/a"]))
    expect(pickMpIndex(full, host, null)).toBeUndefined()
    // a "__proto__" key decoded into a record is not a mount point
    expect(pickMpIndex(JSON.parse(`{"__proto__": {"mp0": "x,mp=/a"}}`), host, null)).toBe(0)
  })
})

describe("deployController", () => {
  it.effect("deploys: token minted, files written (config decodes, secrets beside it), mounted read-only, recorded, op done", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const c: Counter = { writes: 0, crashAfter: Infinity }
        const result = yield* deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, dbFile(), root, c)))
        expect(result.generation).toBe(1)
        const g = Option.getOrThrow(yield* sim.guest(VMID))
        expect(g.config[`mp${result.mpIndex}`]).toBe(`${root}/100,mp=/etc/felhom-bootstrap,ro=1,backup=0`)
        const cfg = Schema.decodeUnknownSync(Schema.parseJson(ControllerBootstrap))(readFileSync(join(root, "100", "controller.json"), "utf8"))
        expect(cfg.controller.image).toBe(IMAGE)
        expect(cfg.identity.scenario).toBe("provision")
        expect(cfg.local_api.pins).toEqual(PINS)
        expect(readFileSync(join(root, "100", "registry-password"), "utf8")).toBe(`${REGISTRY_PASSWORD}\n`)
        expect(readFileSync(join(root, "100", "controller.json"), "utf8")).not.toContain(REGISTRY_PASSWORD)
        expect(readFileSync(join(root, "100", "local-token"), "utf8")).toMatch(/^fla1_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\n$/)
      })
    ))

  it.effect("republishConfig rewrites only controller.json: new image and generation, same directive, token file untouched", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const layer = agent(sim, dbFile(), root, { writes: 0, crashAfter: Infinity })
        yield* deployController(VMID, { image: IMAGE }).pipe(Effect.provide(layer))
        const read = () => Schema.decodeUnknownSync(Schema.parseJson(ControllerBootstrap))(readFileSync(join(root, "100", "controller.json"), "utf8"))
        const before = read()
        const tokenFile = join(root, "100", "local-token")
        const token = readFileSync(tokenFile, "utf8")
        const pins = yield* republishConfig(VMID, { image: IMAGE2, generation: 2 }).pipe(Effect.provide(layer))
        const after = read()
        expect(pins).toEqual(PINS)
        expect([after.controller.image, after.generation]).toEqual([IMAGE2, 2])
        expect(after.identity).toEqual(before.identity)
        expect(after.hub).toEqual(before.hub)
        expect(readFileSync(tokenFile, "utf8")).toBe(token)
        expect(consistency(yield* observe(sim, root).pipe(Effect.provide(layer)), root)).toBe("deployed")
        const none = yield* Effect.either(republishConfig(VmId.make(101), { image: IMAGE2, generation: 2 }).pipe(Effect.provide(layer)))
        expect(Either.isLeft(none) && none.left._tag === "NothingToRepublish").toBe(true)
      })
    ))

  it.effect("every crash point recovers to token and files both in place (recorded) or both gone", () =>
    withSim((sim0) =>
      Effect.gen(function*() {
        void sim0
        // an uninterrupted run tells how many durable writes a deploy makes
        const clean: Counter = { writes: 0, crashAfter: Infinity }
        yield* withSim((sim) => deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, dbFile(), scratchRoot(), clean))))
        const total = clean.writes
        expect(total).toBeGreaterThanOrEqual(12)
        const seen = new Set<string>()
        for (let k = 1; k <= total; k++) {
          yield* withSim((sim) =>
            Effect.gen(function*() {
              const root = scratchRoot()
              const path = dbFile()
              const c: Counter = { writes: 0, crashAfter: k }
              const first = yield* Effect.exit(deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, path, root, c))))
              expect(Exit.isInterrupted(first) || k === total, `crash after write ${k}`).toBe(true)
              const after = yield* Effect.gen(function*() {
                const r = yield* recoverDeploys
                return { r, state: yield* observe(sim, root) }
              }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
              const verdict = consistency(after.state, root)
              expect(["deployed", "gone"], `crash after write ${k}: ${verdict} ${JSON.stringify(after.r)}`).toContain(verdict)
              expect(after.state.inFlight, `in flight after recovery (k=${k})`).toBe(0)
              seen.add(verdict)
            })
          )
        }
        // the matrix covered both ends
        expect([...seen].sort()).toEqual(["deployed", "gone"])
      })
    ), { timeout: 120_000 })

  it.effect("a redeploy keeps the old token valid until the commit, then revokes it; crash at every point stays consistent", () =>
    Effect.gen(function*() {
      // clean redeploy: the old token verifies while the new deploy is being recorded
      yield* withSim((sim) =>
        Effect.gen(function*() {
          const root = scratchRoot()
          const path = dbFile()
          const first = yield* deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
          const oldToken = readFileSync(join(root, "100", "local-token"), "utf8").trim()
          const oldDirective = Schema.decodeUnknownSync(Schema.parseJson(ControllerBootstrap))(readFileSync(join(root, "100", "controller.json"), "utf8")).identity
          // deploys are never in the same millisecond (the oldest token names the directive)
          yield* TestClock.adjust("1 second")
          let validAtCommit: boolean | null = null
          const onCommit = Effect.flatMap(LocalTokens, (t) => t.verify(oldToken)).pipe(
            Effect.map((v) => {
              validAtCommit = Option.isSome(v)
            }),
            Effect.provide(LocalTokensLive.pipe(Layer.provide(layerAt(path)), Layer.orDie))
          )
          const second = yield* Effect.gen(function*() {
            const r = yield* deployController(VMID, { image: IMAGE2 })
            return { r, state: yield* observe(sim, root), oldNow: yield* Effect.flatMap(LocalTokens, (t) => t.verify(oldToken)) }
          }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity }, { onCommit })))
          expect(validAtCommit).toBe(true)
          expect(Option.isNone(second.oldNow)).toBe(true)
          expect(second.r.generation).toBe(2)
          expect(second.r.mpIndex).toBe(first.mpIndex)
          expect(consistency(second.state, root)).toBe("deployed")
          expect(second.state.config?.controller.image).toBe(IMAGE2)
          // the first-boot directive is the same: a redeploy never resets the guest's identity again
          expect(second.state.config?.identity).toEqual(oldDirective)
        })
      )
      // crashes during a redeploy
      const clean: Counter = { writes: 0, crashAfter: Infinity }
      yield* withSim((sim) =>
        Effect.gen(function*() {
          const root = scratchRoot()
          const path = dbFile()
          yield* deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
          yield* deployController(VMID, { image: IMAGE2 }).pipe(Effect.provide(agent(sim, path, root, clean)))
        })
      )
      const outcomes = new Set<string>()
      for (let k = 1; k <= clean.writes; k++) {
        yield* withSim((sim) =>
          Effect.gen(function*() {
            const root = scratchRoot()
            const path = dbFile()
            yield* deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
            const oldToken = readFileSync(join(root, "100", "local-token"), "utf8").trim()
            yield* Effect.exit(deployController(VMID, { image: IMAGE2 }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: k }))))
            const state = yield* Effect.zipRight(recoverDeploys, observe(sim, root)).pipe(
              Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity }))
            )
            const verdict = consistency(state, root)
            expect(["deployed", "gone"], `redeploy crash after write ${k}: ${verdict}`).toContain(verdict)
            expect(state.inFlight).toBe(0)
            if (verdict === "deployed") {
              const which = state.fileToken === oldToken ? "old" : state.config?.controller.image === IMAGE2 ? "new" : "mixed"
              expect(which, `redeploy crash after write ${k}`).not.toBe("mixed")
              outcomes.add(which)
            } else outcomes.add("gone")
          })
        )
      }
      // early crashes keep the old deploy, late ones commit the new one
      expect(outcomes.has("old") && outcomes.has("new")).toBe(true)
    }), { timeout: 180_000 })

  it.effect("faulty PVE: a mount that fails (locked guest) is compensated; the op ends rolled_back", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const path = dbFile()
        yield* sim.setLock(VMID, "backup")
        const r = yield* Effect.either(deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity }))))
        yield* sim.setLock(VMID, undefined)
        expect(Either.isLeft(r) && r.left._tag === "ControllerDeployFailed" && r.left.outcome === "rolled_back").toBe(true)
        const state = yield* observe(sim, root).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
        expect(consistency(state, root)).toBe("gone")
        const ops = yield* Effect.flatMap(Journal, (j) => j.list({ limit: 10 })).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
        expect(ops[0]?.status).toBe("rolled_back")
      })
    ))

  it.effect("a commit that fails after the mount is compensated in the saga (unmounted, files removed, token revoked)", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const path = dbFile()
        const r = yield* Effect.either(deployController(VMID, { image: IMAGE }).pipe(
          Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity }, { failCommit: true }))
        ))
        expect(Either.isLeft(r) && r.left._tag === "ControllerDeployFailed" && r.left.outcome === "rolled_back").toBe(true)
        const state = yield* observe(sim, root).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
        expect(consistency(state, root)).toBe("gone")
      })
    ))

  it.effect("compensation that cannot unmount: the saga holds the op for an operator, the files keep their valid token", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const path = dbFile()
        const failing = new Set(["unbindFromGuest"] as const)
        const r = yield* Effect.either(deployController(VMID, { image: IMAGE }).pipe(
          Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity }, { failing, failCommit: true }))
        ))
        expect(Either.isLeft(r) && r.left._tag === "ControllerDeployFailed" && r.left.outcome === "needs_operator").toBe(true)
        const state = yield* observe(sim, root).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
        // nothing half: the mount and the files stay, with a token that still verifies (no record)
        expect(state.fileTokenVerifies).toBe(true)
        expect(state.mountDir).toBe(join(root, "100"))
        expect(state.inFlight).toBe(0)
      })
    ))

  it.effect("recovery whose unmount fails leaves the op in flight, touching nothing; the next recovery finishes", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const path = dbFile()
        // how many durable writes a whole deploy makes
        const clean: Counter = { writes: 0, crashAfter: Infinity }
        yield* withSim((sim2) => deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim2, dbFile(), scratchRoot(), clean))))
        // the crash point right after the bind: the first k whose crash leaves the mount set
        let k = 1
        for (; k <= clean.writes; k++) {
          const set = yield* withSim((sim3) =>
            Effect.gen(function*() {
              const root3 = scratchRoot()
              yield* Effect.exit(deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim3, dbFile(), root3, { writes: 0, crashAfter: k }))))
              return Option.isSome(yield* bootstrapDirOf(sim3, VMID))
            })
          )
          if (set) break
        }
        yield* Effect.exit(deployController(VMID, { image: IMAGE }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: k }))))
        const failing = new Set(["unbindFromGuest"] as const)
        const after = yield* Effect.gen(function*() {
          const results = yield* recoverDeploys
          return { results, state: yield* observe(sim, root) }
        }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity }, { failing })))
        expect(after.results.map((x) => x.outcome)).toEqual(["in_flight"])
        expect(after.state.fileTokenVerifies).toBe(true)
        expect(after.state.mountDir).toBe(join(root, "100"))
        expect(after.state.inFlight).toBe(1)
        const final = yield* Effect.zipRight(recoverDeploys, observe(sim, root)).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
        expect(consistency(final, root)).toBe("gone")
      })
    ), { timeout: 60_000 })

  it.effect("hostile input: an image that is no image reference is refused before anything is journaled", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const path = dbFile()
        for (const image of ["Registry/UPPER:1", "x;rm -rf /", "a b", "", `r/${"x".repeat(300)}`, "-flag"]) {
          const r = yield* Effect.either(deployController(VMID, { image }).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity }))))
          expect(Either.isLeft(r) && r.left._tag === "ControllerDeployFailed" && r.left.outcome === "refused", image).toBe(true)
        }
        const ops = yield* Effect.flatMap(Journal, (j) => j.list({ limit: 10 })).pipe(Effect.provide(agent(sim, path, root, { writes: 0, crashAfter: Infinity })))
        expect(ops).toEqual([])
        expect(existsSync(join(root, "100"))).toBe(false)
      })
    ))

  it.effect("no secret in the journal, the audit log or the op details", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const path = dbFile()
        const layer = agent(sim, path, root, { writes: 0, crashAfter: Infinity })
        yield* deployController(VMID, { image: IMAGE }).pipe(Effect.provide(layer))
        yield* sim.setLock(VMID, "backup")
        yield* Effect.either(deployController(VMID, { image: IMAGE2 }).pipe(Effect.provide(layer)))
        yield* sim.setLock(VMID, undefined)
        const token = readFileSync(join(root, "100", "local-token"), "utf8").trim()
        const secret = token.split("_")[2] ?? "<none>"
        const dump = yield* Effect.flatMap(Journal, (j) => Effect.all([j.list({ limit: 100 }), j.inFlight])).pipe(Effect.provide(layer))
        const text = JSON.stringify(dump)
        expect(text).not.toContain(secret)
        expect(text).not.toContain(REGISTRY_PASSWORD)
      })
    ))

  it.effect("undeploy revokes every token, removes the mount and the files, forgets the record; idempotent", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const root = scratchRoot()
        const path = dbFile()
        const layer = agent(sim, path, root, { writes: 0, crashAfter: Infinity })
        yield* deployController(VMID, { image: IMAGE }).pipe(Effect.provide(layer))
        const token = readFileSync(join(root, "100", "local-token"), "utf8").trim()
        yield* undeployController(VMID).pipe(Effect.provide(layer))
        yield* undeployController(VMID).pipe(Effect.provide(layer))
        const state = yield* observe(sim, root).pipe(Effect.provide(layer))
        expect(consistency(state, root)).toBe("gone")
        expect(Option.isNone(yield* Effect.flatMap(LocalTokens, (t) => t.verify(token)).pipe(Effect.provide(layer)))).toBe(true)
      })
    ))
})
