/**
 * Crash at every step of provision and recover (issue 12): the process dies at a durable write
 * (the journal, the guest records, the audit log, and for the back half the token store, the
 * controller store and the root helper's file and mount writes), either right after it committed
 * (kill -9) or instead of it (the write is lost with the process). The state DB is reopened (a new
 * layer over the same file) and `recover` runs, as the daemon does at start. The crash point is
 * drawn by fast-check over the writes a clean run makes (a fixed seed, so CI is reproducible;
 * PROP_SEED=random or a number, and PROP_RUNS, explore further by hand).
 *
 * Whatever the crash point, after recovery:
 * - nothing half-built: a guest at the vmid exists only sealed (the journal's seal step done, the
 *   agent's record says customer) or held for an operator with the reason in the op's detail; a
 *   rolled-back attempt leaves no guest and no volume of its own;
 * - nothing twice: at most one restore POST, one vzrestore, one destroy (DELETE), one start and,
 *   for an overwrite, one safety vzdump reach PVE for the attempt;
 * - customer data never touched: every other guest's config, state and volumes are as before; the
 *   lost guest's surviving bulk volume still exists; an overwrite's restore request is only ever
 *   sent once a finished safety backup of this op exists;
 * - nothing in flight (PVE was reachable throughout), and a second `recover` finds nothing to do.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Exit, FastCheck as fc, Layer, Option, Schema, TestClock } from "effect"
import { mkdtempSync, realpathSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import { ControllerStore, ControllerStoreLive, type ControllerStoreShape } from "../src/layers/ControllerStore.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { fromJournal, Journal, type JournalOp, JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { LocalTokens, LocalTokensLive, type LocalTokensShape } from "../src/layers/LocalTokens.js"
import { Privileged, type PrivilegedShape } from "../src/layers/Privileged.js"
import { Proxmox, type ProxmoxShape } from "../src/layers/Proxmox.js"
import { mountsFor } from "../src/programs/bringup/mounts.js"
import { provisionGuest } from "../src/programs/bringup/provision.js"
import { confirmLink, runRecover } from "../src/programs/bringup/recoverGuest.js"
import { recoverPlan, type RecoverPlan } from "../src/programs/bringup/tiers.js"
import { ControllerContext } from "../src/programs/controller/context.js"
import { ControllerOpsLive } from "../src/programs/controller/live.js"
import { ControllerOps, type ControllerOpsShape } from "../src/programs/controller/ops.js"
import { ControllerPublisher } from "../src/programs/controller/update.js"
import { clearForConsole, consoleGrant } from "../src/programs/control/gate.js"
import { recover } from "../src/programs/control/recover.js"
import { createGuest } from "../src/programs/control/steps.js"
import { claimedOp } from "../src/programs/protection/provenance.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { DesiredGuest } from "../src/schema/desired.js"
import { directiveResets } from "../src/schema/identity.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { GuestPlacement } from "../src/schema/storage.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { bootstrapDirOf, makePrivilegedSim } from "../src/sim/pve/privilegedSim.js"
import { type Counter, crashGate } from "./controller-lifecycle-support.js"
import { type AgentServices, authzLayer, dbFile, GOLDEN, operator, registerGolden, runToExit, signedOp } from "./engine-support.js"
import { protectionSeed, T0, USB } from "./protection-support.js"
import { durations, inProcessProxmox, seedWith } from "./support.js"

const fcParams = (runs: number) => ({
  numRuns: Number(process.env["PROP_RUNS"] ?? runs),
  ...(process.env["PROP_SEED"] === "random" ? {} : { seed: Number(process.env["PROP_SEED"] ?? 20260412) })
})

const TIMEOUT = 120_000
const GiB = 1024 ** 3
const IMAGE = "registry.example/felhom/controller:1.4.2"
const MAC100 = "BC:24:11:3A:5C:01"
const SOURCE = { archive: VolumeId.make(GOLDEN), storage: StorageId.make("local-lvm") }

// ---------------------------------------------------------------------------------------------
// Crash injection: every durable write of the agent's stores and of the root helper

type Gate = ReturnType<typeof crashGate>

const crashingJournal = (gate: Gate) => (real: JournalShape): JournalShape => ({
  ...real,
  begin: (op) => gate(`begin:${op.kind}`, real.begin(op)),
  admit: (a) => gate(`admit:${a.op.kind}`, real.admit(a)),
  stepStarted: (id, step, data) => gate(`started:${step}`, real.stepStarted(id, step, data)),
  recordUpid: (id, step, upid) => gate(`upid:${step}`, real.recordUpid(id, step, upid)),
  stepDone: (id, step, data) => gate(`done:${step}`, real.stepDone(id, step, data)),
  stepCompensated: (id, step) => gate(`compensated:${step}`, real.stepCompensated(id, step)),
  finish: (id, status, detail) => gate(`finish:${status}`, real.finish(id, status, detail)),
  recordProvenance: (vmid, kind, opId, marker) => gate("provenance", real.recordProvenance(vmid, kind, opId, marker)),
  clearProvenance: (vmid) => gate("clear-provenance", real.clearProvenance(vmid)),
  markCustomer: (vmid, detail) => gate("mark-customer", real.markCustomer(vmid, detail)),
  markRecovered: (vmid, detail) => gate("mark-recovered", real.markRecovered(vmid, detail)),
  markLost: (vmid, detail) => gate("mark-lost", real.markLost(vmid, detail)),
  forgetGuest: (vmid) => gate("forget", real.forgetGuest(vmid)),
  audit: (e) => gate(`audit:${e.action}`, real.audit(e))
})

const crashingTokens = (gate: Gate) => (real: LocalTokensShape): LocalTokensShape => ({
  ...real,
  mint: (vmid, id) => gate("token:mint", real.mint(vmid, id)),
  revoke: (id) => gate("token:revoke", real.revoke(id)),
  revokeGuest: (vmid, keep) => gate("token:revoke-guest", real.revokeGuest(vmid, keep))
})

const crashingStore = (gate: Gate) => (real: ControllerStoreShape): ControllerStoreShape => ({
  ...real,
  recordDeploy: (d) => gate(`store:deploy@${d.generation}`, real.recordDeploy(d)),
  forget: (vmid) => gate("store:forget", real.forget(vmid)),
  setIdentity: (vmid, identity) => gate("store:identity", real.setIdentity(vmid, identity))
})

const crashingPrivileged = (gate: Gate | null, p: PrivilegedShape): PrivilegedShape =>
  gate === null ? p : {
    ...p,
    writeBootstrap: (s) => gate("root:write", p.writeBootstrap(s)),
    removeBootstrap: (v) => gate("root:remove", p.removeBootstrap(v)),
    bindMountIntoGuest: (s) => gate("root:mount", p.bindMountIntoGuest(s)),
    unbindFromGuest: (s) => gate("root:unmount", p.unbindFromGuest(s))
  }

/** What the test sees at each restore request, before it is sent. */
interface RestoreSeen {
  readonly kind: "restore" | "restore-overwrite"
  readonly vmid: number
  /** vzdump tasks of the guest started after the setup that had finished OK by then */
  readonly finishedDumps: number
  /** the ops the guest's backups' notes name (protection/provenance.ts) by then */
  readonly claimedBy: ReadonlyArray<string>
}

/** The production client over the simulator, noting what existed when each restore was asked for. */
const observedProxmox = (w: World) => {
  const look = (kind: RestoreSeen["kind"], vmid: number) =>
    Effect.gen(function*() {
      const since = new Set((yield* w.sim.requests).filter((r) => r.seq > w.setupSeq).flatMap((r) => (r.upid === undefined ? [] : [r.upid])))
      const finishedDumps = (yield* w.sim.tasks).filter((t) =>
        t.type === "vzdump" && t.id === String(vmid) && since.has(t.upid) && t.status === "stopped" && t.exitstatus === "OK"
      ).length
      const content = [...(yield* w.sim.storageContent("local")), ...(yield* w.sim.storageContent(USB))]
      const claimedBy = content.flatMap((e) =>
        e["vmid"] === vmid ? Option.toArray(claimedOp(typeof e["notes"] === "string" ? e["notes"] : undefined)) : []
      )
      w.seen.push({ kind, vmid, finishedDumps, claimedBy })
    })
  return Layer.effect(
    Proxmox,
    Effect.map(Proxmox, (real): ProxmoxShape => ({
      ...real,
      restore: (o) => Effect.zipRight(look("restore", o.vmid), real.restore(o)),
      restoreOverwrite: (o, c) => Effect.zipRight(look("restore-overwrite", o.vmid), real.restoreOverwrite(o, c))
    }))
  ).pipe(Layer.provide(inProcessProxmox(w.sim, { node: "pve" })))
}

// ---------------------------------------------------------------------------------------------
// The agent over one state DB file (reopen = a new layer on the same path)

const context = Layer.succeed(ControllerContext, {
  hostId: "host-test",
  hubUrl: "https://hub.example.net",
  localApiUrl: "https://10.10.0.1:7443",
  pins: Effect.succeed([{ spki_sha256: "c3BraQ==", cert_sha256: "ab".repeat(32) }]),
  registry: null
})

interface World {
  readonly sim: SimPve
  readonly path: string
  readonly root: string
  readonly seen: Array<RestoreSeen>
  /** The request log's seq when the setup ended: what came after is the attempt's (and recovery's). */
  setupSeq: number
}

/**
 * The graph: the simulator behind the production client, journal, authz and the queue, and the
 * controller service `fake` when given. `gate` crashes the process at one write.
 */
const agent = (w: World, opts: { readonly gate?: Gate; readonly fake?: ControllerOpsShape } = {}): Layer.Layer<AgentServices> => {
  const gate = opts.gate ?? null
  const db = layerAt(w.path)
  const realJournal = JournalLive.pipe(Layer.provide(db))
  const journal = gate === null
    ? realJournal
    : Layer.provideMerge(fromJournal, Layer.effect(Journal, Effect.map(Journal, crashingJournal(gate))).pipe(Layer.provide(realJournal)))
  const base = Layer.mergeAll(observedProxmox(w), journal, authzLayer().pipe(Layer.provide(db)), GuestQueue.layer(4))
  return (opts.fake === undefined ? base : Layer.merge(base, Layer.succeed(ControllerOps, opts.fake))).pipe(Layer.orDie)
}

/**
 * As `agent`, with the real ControllerOps: the deploy saga over the token store and the controller
 * store on the same file, the root helper's bootstrap half simulated (plain files below the
 * world's root, the bind mount on the simulated guest's config), every write of them crashable.
 */
const agentWithControllers = (w: World, gate?: Gate) => {
  const g = gate ?? null
  const db = layerAt(w.path)
  const realTokens = LocalTokensLive.pipe(Layer.provide(db))
  const tokens = g === null ? realTokens : Layer.effect(LocalTokens, Effect.map(LocalTokens, crashingTokens(g))).pipe(Layer.provide(realTokens))
  const realStore = ControllerStoreLive.pipe(Layer.provide(db))
  const store = g === null ? realStore : Layer.effect(ControllerStore, Effect.map(ControllerStore, crashingStore(g))).pipe(Layer.provide(realStore))
  // the root helper's other commands are never reached on these paths
  const privileged = Layer.succeed(Privileged, crashingPrivileged(g, makePrivilegedSim({} as PrivilegedShape, w.sim, w.root)))
  const config = Layer.succeed(AgentConfig, {
    source: undefined,
    file: Schema.decodeUnknownSync(AgentConfigFile)({
      host_id: "host-test",
      privileged: { bootstrap_root: w.root },
      controllers: { repositories: ["registry.example/felhom/controller"] }
    })
  })
  // updates never run here
  const publisher = Layer.succeed(ControllerPublisher, { publish: () => Effect.dieMessage("no controller update here") })
  const services = Layer.mergeAll(agent(w, g === null ? {} : { gate: g }), tokens, store, privileged, config, context, publisher)
  return Layer.provideMerge(ControllerOpsLive, services).pipe(Layer.orDie)
}

/** A controller service for the recover runs: the directive is noted, nothing is written (reidentify has its own tests). */
const noteDirectives = (directives: Array<string>): ControllerOpsShape => ({
  view: Effect.succeed({ deployed: new Map(), repositories: [], failedUpdates: new Map() }),
  deploy: () => Effect.dieMessage("no deploy on the recover path"),
  update: () => Effect.dieMessage("no update on the recover path"),
  undeploy: () => Effect.dieMessage("no undeploy on the recover path"),
  reidentify: (_vmid, d) =>
    Effect.sync(() => {
      directives.push(d === null ? "(the one in force)" : d.reset.join(","))
      return "republished" as const
    })
})

const newWorld = (seed: Effect.Effect<Parameters<typeof makeSimPve>[0]>) =>
  Effect.gen(function*() {
    yield* TestClock.setTime(T0)
    const sim = yield* makeSimPve(yield* seed)
    const root = join(realpathSync(mkdtempSync(join(tmpdir(), "felhom-crash-"))), "bootstrap")
    return { sim, path: dbFile(), root, seen: [], setupSeq: 0 } satisfies World as World
  })

// ---------------------------------------------------------------------------------------------
// Observation

interface Snapshot {
  readonly others: string
  readonly volumes: ReadonlyArray<string>
  readonly seq: number
}

const volumesOf = (sim: SimPve) =>
  Effect.map(Effect.all([sim.storageContent("local-lvm"), sim.storageContent("local"), sim.storageContent(USB)].map(Effect.orElseSucceed(() => []))), (ls) =>
    ls.flat().map((v) => String(v["volid"])).sort())

/** Every guest but `vmid` (status and config), and every volume. */
const snapshot = (sim: SimPve, vmid: number) =>
  Effect.gen(function*() {
    const others = (yield* sim.guests).filter((g) => g.vmid !== vmid).map((g) => ({ vmid: g.vmid, status: g.status, config: g.config }))
    return { others: JSON.stringify(others), volumes: yield* volumesOf(sim), seq: yield* sim.requestSeq } satisfies Snapshot
  })

/** The guest's disk volumes (rootfs, mpN, unusedN). */
const ownVolumes = (vs: ReadonlyArray<string>, vmid: number) => vs.filter((v) => new RegExp(`(^|[:/])vm-${vmid}-disk-`).test(v))
/** Everything that is not the guest's own (its disks, or a backup of it such as an overwrite's safety backup). */
const foreignVolumes = (vs: ReadonlyArray<string>, vmid: number) =>
  vs.filter((v) => ownVolumes([v], vmid).length === 0 && !new RegExp(`:backup/vzdump-lxc-${vmid}-`).test(v))

/** What PVE received for `vmid` after `seq`: restore POSTs, destroys, and the tasks it ran. */
const calls = (sim: SimPve, vmid: number, seq: number) =>
  Effect.gen(function*() {
    const log = (yield* sim.requests).filter((r) => r.seq > seq)
    const startedUpids = new Set(log.flatMap((r) => (r.upid === undefined ? [] : [r.upid])))
    const tasks = (yield* sim.tasks).filter((t) => t.id === String(vmid) && startedUpids.has(t.upid))
    const count = (type: string) => tasks.filter((t) => t.type === type).length
    return {
      restorePosts: log.filter((r) => r.method === "POST" && r.path === "/nodes/pve/lxc" && r.params["vmid"] === String(vmid)).length,
      destroys: log.filter((r) => r.method === "DELETE" && r.path === `/nodes/pve/lxc/${vmid}`).length,
      otherDestroys: log.filter((r) => r.method === "DELETE" && /^\/nodes\/pve\/lxc\/\d+$/.test(r.path) && r.path !== `/nodes/pve/lxc/${vmid}`).length,
      vzrestore: count("vzrestore"),
      vzdestroy: count("vzdestroy"),
      vzstart: count("vzstart"),
      vzdump: count("vzdump")
    }
  })

const stepDone = (op: JournalOp | undefined, name: string) => op?.steps.some((s) => s.name === name && s.status === "done") === true

const tagsOf = (config: Readonly<Record<string, unknown>>) => String(config["tags"] ?? "").split(";").filter((t) => t !== "")

/** Recovery on a reopened DB; then the journal and the guest records as they are. */
const reopenAndRecover = (layer: Layer.Layer<AgentServices>) =>
  Effect.gen(function*() {
    const exit = yield* runToExit(
      Effect.gen(function*() {
        const results = yield* recover
        const j = yield* Journal
        const again = yield* recover
        return { results, again, inFlight: yield* j.inFlight, ops: yield* j.list({ limit: 50 }), records: yield* j.guestRecords }
      }),
      600
    ).pipe(Effect.provide(layer))
    if (!Exit.isSuccess(exit)) return yield* Effect.dieMessage(`recovery failed: ${String(exit.cause)}`)
    return exit.value
  })

interface Crash {
  readonly at: number
  readonly when: "before" | "after"
}

const crashArb = fc.record({ at: fc.nat({ max: 10_000 }), when: fc.constantFrom<"before" | "after">("before", "after") })

/** Writes a clean run of each scenario makes, measured once. */
const writesOf = new Map<string, number>()

/**
 * Runs `scenario` once cleanly to count its writes (memoized), then maps `crash.at` onto them:
 * the property ranges over every write index and both crash modes.
 */
const crashPoint = <E, R>(name: string, crash: Crash, clean: Effect.Effect<number, E, R>) =>
  Effect.gen(function*() {
    let total = writesOf.get(name)
    if (total === undefined) {
      total = yield* clean
      writesOf.set(name, total)
    }
    return { at: 1 + (crash.at % total), when: crash.when, total }
  })

const label = (c: { readonly at: number; readonly when: string; readonly total: number }, counter: Counter) =>
  `crash ${c.when} write ${c.at}/${c.total} (${counter.names[c.at - 1] ?? "?"})`

// ---------------------------------------------------------------------------------------------
// a. provision: create with placement mounts (front half), and provisionGuest with its controller (back half)

const spec110 = (extra: Record<string, unknown> = {}) =>
  Schema.decodeUnknownSync(DesiredGuest)({
    vmid: 110,
    hostname: "cust-gamma",
    cores: 2,
    memory_bytes: 2 * GiB,
    swap_mib: 512,
    rootfs_gib: 16,
    power: "running",
    description: "felhom customer guest gamma",
    tags: ["customer", "felhom"],
    ...extra
  })

const placement110 = Schema.decodeUnknownSync(GuestPlacement)({
  vmid: 110,
  volumes: [
    { volume: "mp0", kind: "hot", target: "local-lvm", path: "/var/lib/app", size_gib: 4 },
    { volume: "mp1", kind: "bulk", target: "local-lvm", path: "/srv/media", size_gib: 8 }
  ]
})

const V110 = VmId.make(110)

/** Create as reconcile runs it: restore → resize → mounts → configure → seal → untag → start. */
const createRun = (w: World, gate?: Gate) =>
  runToExit(
    createGuest(spec110(), SOURCE, 2048, consoleGrant({ op: "create", vmid: V110, params: { rootfs_gib: 16 } }, "test"), mountsFor(placement110)),
    600
  ).pipe(Effect.provide(agent(w, gate === undefined ? {} : { gate })))

const provisionWorld = newWorld(seedWith(durations(1000)))

const checkCreated = (w: World, before: Snapshot, what: string, after: Effect.Effect.Success<ReturnType<typeof reopenAndRecover>>) =>
  Effect.gen(function*() {
    const { inFlight, ops, records, again } = after
    expect(inFlight, `${what}: in flight after recovery`).toEqual([])
    expect(again, `${what}: a second recovery has work`).toEqual([])
    const create = ops.find((o) => o.kind === "create")
    const g = yield* w.sim.guest(110)
    const now = yield* snapshot(w.sim, 110)
    const own = ownVolumes(now.volumes, 110)
    const c = yield* calls(w.sim, 110, before.seq)
    const ctx = `${what}: ${JSON.stringify({ create: create?.status, detail: create?.detail, steps: create?.steps.map((s) => `${s.name}:${s.status}`), own, c })}`
    // customer data never touched; nothing twice
    expect(now.others, ctx).toBe(before.others)
    expect(foreignVolumes(now.volumes, 110), ctx).toEqual(foreignVolumes(before.volumes, 110))
    expect(c.otherDestroys, ctx).toBe(0)
    expect(c.restorePosts, ctx).toBeLessThanOrEqual(1)
    expect(c.vzrestore, ctx).toBeLessThanOrEqual(1)
    expect(c.destroys, ctx).toBeLessThanOrEqual(1)
    expect(c.vzdestroy, ctx).toBeLessThanOrEqual(1)
    expect(c.vzstart, ctx).toBeLessThanOrEqual(1)
    if (create === undefined) {
      // died before the op was admitted: nothing reached PVE
      expect(c.restorePosts, ctx).toBe(0)
      expect(Option.isNone(g), ctx).toBe(true)
      return "none"
    }
    expect(["done", "rolled_back", "failed", "needs_operator"], ctx).toContain(create.status)
    const sealed = stepDone(create, "seal")
    if (create.status === "needs_operator") {
      expect(create.detail ?? "", ctx).toMatch(/held for an operator/)
      expect((create.detail ?? "").length, ctx).toBeGreaterThan(40)
      return create.status
    }
    // never half-built: a guest exists only sealed, and is then the customer's
    expect(Option.isSome(g), ctx).toBe(sealed)
    if (Option.isNone(g)) {
      expect(create.status, ctx).toBe("rolled_back")
      expect(own, `${ctx}: volumes of the rolled-back attempt left`).toEqual([])
      expect(records.some((r) => r.vmid === 110), ctx).toBe(false)
      return create.status
    }
    const config = g.value.config
    expect(records.find((r) => r.vmid === 110)?.state, ctx).toBe("customer")
    expect(String(config["rootfs"]), ctx).toContain("size=16G")
    expect(String(config["description"]), ctx).toContain("felhom customer guest gamma")
    expect(String(config["mp0"]), ctx).toMatch(/^local-lvm:vm-110-disk-\d+,mp=\/var\/lib\/app,.*size=4G/)
    expect(String(config["mp1"]), ctx).toMatch(/^local-lvm:vm-110-disk-\d+,mp=\/srv\/media,.*backup=0/)
    // every volume of the guest is in its config: nothing allocated twice
    expect(own.length, ctx).toBe(3)
    if (create.status === "done") {
      expect(g.value.status, ctx).toBe("running")
      expect(tagsOf(config), ctx).toEqual(["customer", "felhom"])
    } else {
      expect(create.status, ctx).toBe("failed")
      expect(create.detail ?? "", ctx).toMatch(/sealed/)
    }
    return create.status
  })

describe("crash at every write of provision, then journal recovery", () => {
  const outcomes = new Map<string, Set<string>>()
  const saw = (name: string, o: string) => outcomes.set(name, (outcomes.get(name) ?? new Set()).add(o))

  it.scoped.prop(
    "create with placement mounts (hot + bulk mpN): fully built and sealed, or gone with every volume it allocated; nothing twice, no other guest touched",
    { crash: crashArb },
    ({ crash }) =>
      Effect.gen(function*() {
        const clean = Effect.gen(function*() {
          const w = yield* provisionWorld
          const counter: Counter = { writes: 0, names: [] }
          const exit = yield* createRun(w, crashGate(Number.MAX_SAFE_INTEGER, "after", counter))
          expect(Exit.isSuccess(exit)).toBe(true)
          return counter.writes
        })
        const point = yield* crashPoint("create", crash, clean)
        const w = yield* provisionWorld
        const before = yield* snapshot(w.sim, 110)
        const counter: Counter = { writes: 0, names: [] }
        const first = yield* createRun(w, crashGate(point.at, point.when, counter))
        const what = label(point, counter)
        expect(Exit.isInterrupted(first), `${what}: the process did not die`).toBe(true)
        const after = yield* reopenAndRecover(agent(w))
        saw("create", yield* checkCreated(w, before, what, after))
      }),
    { timeout: TIMEOUT, fastCheck: fcParams(10) }
  )

  it.scoped.prop(
    "provisionGuest with placement and controller (create + the real deploy saga in one queue turn): the guest sealed or gone, the controller deployed whole or not at all",
    { crash: crashArb },
    ({ crash }) =>
      Effect.gen(function*() {
        const setup = Effect.gen(function*() {
          const w = yield* provisionWorld
          yield* runToExit(registerGolden, 10).pipe(Effect.provide(agent(w)))
          return w
        })
        const run = (w: World, gate: Gate) =>
          runToExit(provisionGuest(spec110({ controller: { image: IMAGE } }), SOURCE, { actor: "cli", placement: placement110 }), 600).pipe(
            Effect.provide(agentWithControllers(w, gate))
          )
        const clean = Effect.gen(function*() {
          const w = yield* setup
          const counter: Counter = { writes: 0, names: [] }
          const exit = yield* run(w, crashGate(Number.MAX_SAFE_INTEGER, "after", counter))
          expect(Exit.isSuccess(exit) && exit.value).toMatchObject({ outcome: "done", controller: { state: "deployed" } })
          return counter.writes
        })
        const point = yield* crashPoint("provision", crash, clean)
        const w = yield* setup
        const before = yield* snapshot(w.sim, 110)
        const counter: Counter = { writes: 0, names: [] }
        const first = yield* run(w, crashGate(point.at, point.when, counter))
        const what = label(point, counter)
        expect(Exit.isInterrupted(first), `${what}: the process did not die`).toBe(true)
        const layer = agentWithControllers(w)
        const after = yield* reopenAndRecover(layer)
        const { inFlight, ops, again } = after
        expect(inFlight, `${what}: in flight`).toEqual([])
        expect(again, `${what}: a second recovery has work`).toEqual([])
        const create = ops.find((o) => o.kind === "create")
        const deploy = ops.find((o) => o.kind === "controller-deploy")
        const g = yield* w.sim.guest(110)
        const c = yield* calls(w.sim, 110, before.seq)
        const now = yield* snapshot(w.sim, 110)
        const ctx = `${what}: ${JSON.stringify({ create: create?.status, deploy: deploy?.status, deployDetail: deploy?.detail, c })}`
        expect(now.others, ctx).toBe(before.others)
        expect(foreignVolumes(now.volumes, 110), ctx).toEqual(foreignVolumes(before.volumes, 110))
        expect(c.otherDestroys, ctx).toBe(0)
        expect(c.restorePosts, ctx).toBeLessThanOrEqual(1)
        expect(c.vzrestore, ctx).toBeLessThanOrEqual(1)
        expect(c.destroys, ctx).toBeLessThanOrEqual(1)
        expect(c.vzdestroy, ctx).toBeLessThanOrEqual(1)
        expect(c.vzstart, ctx).toBeLessThanOrEqual(1)
        // the front half: sealed or gone
        if (create === undefined || create.status === "rolled_back") {
          expect(Option.isNone(g), ctx).toBe(true)
          expect(ownVolumes(now.volumes, 110), ctx).toEqual([])
          expect(deploy, `${ctx}: a deploy without a guest`).toBeUndefined()
        } else if (create.status === "needs_operator") {
          expect(create.detail ?? "", ctx).toMatch(/held for an operator/)
        } else {
          expect(Option.isSome(g) && stepDone(create, "seal"), ctx).toBe(true)
          // the placement's volumes, each allocated once
          const config = Option.getOrThrow(g).config
          expect(String(config["mp0"]), ctx).toMatch(/,mp=\/var\/lib\/app,/)
          expect(String(config["mp1"]), ctx).toMatch(/,mp=\/srv\/media,.*backup=0/)
          expect(ownVolumes(now.volumes, 110).length, ctx).toBe(3)
        }
        // the back half: the token, the files, the mount and the record all in place and agreeing, or none of them
        const state = yield* Effect.gen(function*() {
          const tokens = yield* LocalTokens
          const store = yield* ControllerStore
          const live = (yield* tokens.forGuest(V110)).filter((t) => t.revokedMs === null).map((t) => t.id)
          const record = yield* store.get(V110)
          return { live, record: Option.map(record, (r) => r.tokenId), mount: Option.getOrNull(yield* bootstrapDirOf(w.sim, 110)) }
        }).pipe(Effect.provide(layer))
        const whole = state.live.length === 1 && Option.getOrNull(state.record) === state.live[0] && state.mount === join(w.root, "110")
        const none = state.live.length === 0 && Option.isNone(state.record) && state.mount === null
        expect(whole || none, `${ctx}: controller half-deployed ${JSON.stringify(state)}`).toBe(true)
        if (deploy !== undefined) expect(["done", "rolled_back", "failed"], ctx).toContain(deploy.status)
        if (whole) expect(deploy?.status, ctx).toBe("done")
        saw("provision", `${create?.status ?? "none"}/${deploy?.status ?? "none"}`)
      }),
    { timeout: TIMEOUT, fastCheck: fcParams(8) }
  )

  it.runIf(fcParams(10).numRuns >= 5)("the crash points covered both ends (rolled back early, done late)", () => {
    // a property run that only ever hit one side would prove little
    const create = outcomes.get("create") ?? new Set()
    expect([...create].some((o) => o === "rolled_back" || o === "none"), [...create].join(",")).toBe(true)
    expect([...create].some((o) => o === "done" || o === "failed"), [...create].join(",")).toBe(true)
  })
})

// ---------------------------------------------------------------------------------------------
// b, c. recover: fresh (total, partial) of a lost guest with a surviving bulk volume; overwrite

const V100 = VmId.make(100)
const ORPHAN = "local-lvm:vm-100-disk-1"

/** Guest 100 with a bulk volume (mp1, backup=0), backed up to usb1, then lost: the bulk volume outlives it. */
const loseGuest100 = (sim: SimPve) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const records = yield* Journal
    const c = clearForConsole({ call: "set-config-volumes", vmid: V100, keys: ["mp1"] }, "test setup: a bulk volume")
    const u = yield* pve.setConfigVolumes(V100, { set: { mp1: "local-lvm:2,mp=/srv/media,backup=0" } }, c)
    if (Option.isSome(u)) yield* pve.waitTask(u.value)
    const dump = yield* pve.vzdump({ vmid: V100, storage: USB, mode: "snapshot" })
    yield* pve.waitTask(Option.getOrThrow(dump))
    yield* records.markCustomer(V100, "test setup")
    yield* pve.waitTask(yield* pve.stop(V100))
    yield* sim.setMountPoint(100, "mp1", null)
    expect(yield* sim.rootDestroy(100)).toBe("ok")
    yield* records.markLost(V100, "test: gone")
  })

/** The operator's signature over exactly the plan's params, made now (simulated time). */
const signFor = (plan: RecoverPlan) =>
  Effect.map(Clock.currentTimeMillis, (now) => signedOp({ op: "recover", guest_id: plan.vmid, params: { ...plan.gatedParams } }, operator, now))

type RecoverCase = "total" | "partial" | "overwrite"

/** A world ready for the recovery: the plan made and signed; nothing of the attempt sent yet. */
const recoverWorld = (kind: RecoverCase) =>
  Effect.gen(function*() {
    const w = yield* newWorld(protectionSeed(durations(1000)))
    const prepared = yield* runToExit(
      Effect.gen(function*() {
        if (kind !== "overwrite") yield* loseGuest100(w.sim)
        else yield* Effect.flatMap(Journal, (j) => j.markCustomer(V100, "test setup"))
        const plan = yield* recoverPlan(V100, {
          scenario: kind === "partial" ? "partial" : "total",
          source: kind === "overwrite" ? "vzdump" : "auto",
          desired: null,
          placement: undefined,
          manifest: []
        })
        return { plan, signed: yield* signFor(plan) }
      }),
      600
    ).pipe(Effect.provide(agent(w)))
    if (!Exit.isSuccess(prepared)) return yield* Effect.dieMessage(`setup failed: ${String(prepared.cause)}`)
    expect(prepared.value.plan.mode).toBe(kind === "overwrite" ? "overwrite" : "fresh")
    w.setupSeq = yield* w.sim.requestSeq
    return { w, ...prepared.value }
  })

const recoverRun = (w: World, plan: RecoverPlan, signed: Effect.Effect.Success<ReturnType<typeof signFor>>, gate: Gate, directives: Array<string>) =>
  runToExit(runRecover(plan, Option.some(signed), "test"), 600).pipe(Effect.provide(agent(w, { gate, fake: noteDirectives(directives) })))

const checkRecovered = (
  kind: RecoverCase,
  w: World,
  before: Snapshot & { readonly config100: Readonly<Record<string, unknown>> | null },
  what: string,
  after: Effect.Effect.Success<ReturnType<typeof reopenAndRecover>>,
  directives: ReadonlyArray<string>
) =>
  Effect.gen(function*() {
    const { inFlight, ops, records, again } = after
    expect(inFlight, `${what}: in flight after recovery`).toEqual([])
    expect(again, `${what}: a second recovery has work`).toEqual([])
    const op = ops.find((o) => o.kind === "recover")
    const g = yield* w.sim.guest(100)
    const now = yield* snapshot(w.sim, 100)
    const c = yield* calls(w.sim, 100, before.seq)
    const own = ownVolumes(now.volumes, 100)
    const record = records.find((r) => r.vmid === 100)?.state
    const ctx = `${what}: ${JSON.stringify({ status: op?.status, detail: op?.detail, steps: op?.steps.map((s) => `${s.name}:${s.status}`), own, c, record, seen: w.seen })}`
    // customer data never touched: the other guests, their volumes; nothing twice
    expect(now.others, ctx).toBe(before.others)
    expect(foreignVolumes(now.volumes, 100), ctx).toEqual(foreignVolumes(before.volumes, 100))
    expect(c.otherDestroys, ctx).toBe(0)
    expect(c.restorePosts, ctx).toBeLessThanOrEqual(1)
    expect(c.vzrestore, ctx).toBeLessThanOrEqual(1)
    expect(c.destroys, ctx).toBeLessThanOrEqual(1)
    expect(c.vzdestroy, ctx).toBeLessThanOrEqual(1)
    expect(c.vzstart, ctx).toBeLessThanOrEqual(1)
    // at most one first-boot directive per attempt, and the scenario's
    expect(directives.length, ctx).toBeLessThanOrEqual(1)
    for (const d of directives) expect(d, ctx).toBe(directiveResets(kind === "partial" ? "guest-loss-partial" : "guest-loss-total").join(","))
    if (kind !== "overwrite") {
      // the lost guest's surviving bulk volume outlives every crash and every rollback
      expect(now.volumes, ctx).toContain(ORPHAN)
    }
    if (op === undefined) {
      expect(c.restorePosts, ctx).toBe(0)
      expect(Option.isSome(g), ctx).toBe(kind === "overwrite")
      if (kind !== "overwrite") expect(record, ctx).toBe("lost")
      return "none"
    }
    expect(["done", "rolled_back", "failed", "needs_operator"], ctx).toContain(op.status)
    const sealed = stepDone(op, "seal")
    if (kind === "overwrite") {
      // the safety backup of this op finished before any restore request went out; never a destroy
      expect(c.destroys, ctx).toBe(0)
      expect(c.vzdump, ctx).toBeLessThanOrEqual(1)
      for (const s of w.seen.filter((x) => x.kind === "restore-overwrite")) {
        expect(s.finishedDumps, `${ctx}: restore sent before the safety backup finished`).toBe(1)
        expect(s.claimedBy, `${ctx}: no backup of this op when the restore was sent`).toContain(op.id)
      }
      if (!op.steps.some((s) => s.name === "restore")) {
        // nothing was overwritten: the guest's config is as it was
        expect(op.status, ctx).toBe("failed")
        expect(op.detail ?? "", ctx).toMatch(/nothing (was )?overwritten/)
        expect(Option.map(g, (x) => x.config), ctx).toEqual(Option.some(before.config100))
        return op.status
      }
      if (op.status === "needs_operator") {
        expect(op.detail ?? "", ctx).toMatch(/held for an operator/)
        if (Option.isNone(g)) expect(record, `${ctx}: a guest the overwrite removed is not recorded lost`).toBe("lost")
        // held on the journal's word (the restore step began) though no request went out: the guest is as it was
        if (c.restorePosts === 0) expect(Option.map(g, (x) => x.config), ctx).toEqual(Option.some(before.config100))
        return op.status
      }
      expect(sealed, ctx).toBe(true)
    }
    if (op.status === "needs_operator") {
      expect(op.detail ?? "", ctx).toMatch(/held for an operator/)
      return op.status
    }
    // never half-built: a guest at 100 exists only sealed (customer again); otherwise nothing of the attempt is left
    expect(Option.isSome(g), ctx).toBe(sealed)
    if (Option.isNone(g)) {
      expect(op.status, ctx).toBe("rolled_back")
      expect(own, `${ctx}: volumes of the rolled-back attempt left`).toEqual([ORPHAN])
      // still lost: offered for recovery again, never recreated blank
      expect(record, ctx).toBe("lost")
      return op.status
    }
    expect(record, ctx).toBe("customer")
    const config = g.value.config
    const net0 = String(config["net0"])
    if (kind === "partial") {
      expect(net0, ctx).not.toContain(MAC100)
      expect(net0, ctx).toContain("link_down=1")
    } else {
      expect(net0, ctx).toContain(`hwaddr=${MAC100}`)
      expect(net0, ctx).not.toContain("link_down=1")
    }
    if (op.status === "done") {
      expect(g.value.status, ctx).toBe("running")
      expect(tagsOf(config).filter((t) => t.startsWith("felhom-prov-")), ctx).toEqual([])
      // total: its surviving bulk volume is re-attached; partial: left detached (the source may be live)
      if (kind === "total") expect(String(config["mp1"]), ctx).toMatch(new RegExp(`^${ORPHAN},mp=/srv/media,backup=0`))
      if (kind === "partial") expect(String(config["mp1"]), ctx).not.toMatch(new RegExp(`^${ORPHAN},`))
    } else {
      expect(op.status, ctx).toBe("failed")
      expect(op.detail ?? "", ctx).toMatch(/sealed/)
    }
    return op.status
  })

describe("crash at every write of recover, then journal recovery", () => {
  const outcomes = new Map<RecoverCase, Set<string>>()

  const property = (kind: RecoverCase) => ({ crash }: { readonly crash: Crash }) =>
    Effect.gen(function*() {
      const clean = Effect.gen(function*() {
        const { plan, signed, w } = yield* recoverWorld(kind)
        const counter: Counter = { writes: 0, names: [] }
        const exit = yield* recoverRun(w, plan, signed, crashGate(Number.MAX_SAFE_INTEGER, "after", counter), [])
        expect(Exit.isSuccess(exit)).toBe(true)
        return counter.writes
      })
      const point = yield* crashPoint(`recover-${kind}`, crash, clean)
      const { plan, signed, w } = yield* recoverWorld(kind)
      const before = { ...(yield* snapshot(w.sim, 100)), config100: Option.getOrNull(Option.map(yield* w.sim.guest(100), (g) => g.config)) }
      const counter: Counter = { writes: 0, names: [] }
      const directives: Array<string> = []
      const first = yield* recoverRun(w, plan, signed, crashGate(point.at, point.when, counter), directives)
      const what = label(point, counter)
      expect(Exit.isInterrupted(first), `${what}: the process did not die`).toBe(true)
      const after = yield* reopenAndRecover(agent(w))
      const o = yield* checkRecovered(kind, w, before, what, after, directives)
      outcomes.set(kind, (outcomes.get(kind) ?? new Set()).add(o))
    })

  it.scoped.prop("fresh, total loss: recovered and sealed (same MAC, bulk re-attached) or rolled back to just the surviving bulk volume", { crash: crashArb }, property("total"), {
    timeout: TIMEOUT,
    fastCheck: fcParams(8)
  })
  it.scoped.prop("fresh, partial loss: as total, with a fresh MAC and the link down", { crash: crashArb }, property("partial"), {
    timeout: TIMEOUT,
    fastCheck: fcParams(6)
  })
  it.scoped.prop("overwrite (signed): a finished safety backup before any restore request; never destroyed; held with the reason once the restore began", { crash: crashArb }, property("overwrite"), {
    timeout: TIMEOUT,
    fastCheck: fcParams(8)
  })

  it.runIf(fcParams(8).numRuns >= 5)("the crash points covered both ends (rolled back or nothing sent early, sealed late)", () => {
    const total = [...(outcomes.get("total") ?? [])]
    const overwrite = [...(outcomes.get("overwrite") ?? [])]
    expect(total.some((o) => o === "rolled_back"), total.join(",")).toBe(true)
    expect(total.some((o) => o === "done" || o === "failed"), total.join(",")).toBe(true)
    expect(overwrite.some((o) => o === "failed" || o === "none"), overwrite.join(",")).toBe(true)
    expect(overwrite.some((o) => o === "needs_operator" || o === "done"), overwrite.join(",")).toBe(true)
  })

  // A crash right after a recovery's seal: the recovery rule finishes the post-seal steps (untag,
  // re-attach, start) from the archive's own config; a partial one keeps its bulk volume detached
  // and its link down until the operator confirms.
  it.scoped("a crash right after the seal of a partial recovery: recovery finishes it (untagged, started, bulk left detached) and the link can be confirmed", () =>
    Effect.gen(function*() {
      const names = yield* Effect.gen(function*() {
        const { plan, signed, w } = yield* recoverWorld("partial")
        const counter: Counter = { writes: 0, names: [] }
        yield* recoverRun(w, plan, signed, crashGate(Number.MAX_SAFE_INTEGER, "after", counter), [])
        return counter.names
      })
      const { plan, signed, w } = yield* recoverWorld("partial")
      const first = yield* recoverRun(w, plan, signed, crashGate(names.indexOf("done:seal") + 1, "after", { writes: 0, names: [] }), [])
      expect(Exit.isInterrupted(first)).toBe(true)
      const after = yield* reopenAndRecover(agent(w))
      expect(after.results.map((r) => r.outcome)).toEqual(["done"])
      const g = Option.getOrThrow(yield* w.sim.guest(100))
      // the guest is kept (sealed) and safe: the surviving bulk volume exists, nothing was destroyed
      expect(yield* volumesOf(w.sim)).toContain(ORPHAN)
      expect(g.status).toBe("running")
      expect(String(g.config["mp1"])).not.toMatch(new RegExp(`^${ORPHAN},`))
      expect(tagsOf(g.config).filter((t) => t.startsWith("felhom-prov-"))).toEqual([])
      const linked = yield* runToExit(confirmLink(V100), 60).pipe(Effect.provide(agent(w)))
      expect(Exit.isSuccess(linked)).toBe(true)
      expect(String(Option.getOrThrow(yield* w.sim.guest(100)).config["net0"])).not.toContain("link_down=1")
    }), TIMEOUT)

  /** Crashed right after the restore's UPID was journaled, then recovered while PVE refuses every connection. */
  const crashThenOutage = (kind: RecoverCase) =>
    Effect.gen(function*() {
      const names = yield* Effect.gen(function*() {
        const { plan, signed, w } = yield* recoverWorld(kind)
        const counter: Counter = { writes: 0, names: [] }
        yield* recoverRun(w, plan, signed, crashGate(Number.MAX_SAFE_INTEGER, "after", counter), [])
        return counter.names
      })
      const { plan, signed, w } = yield* recoverWorld(kind)
      const first = yield* recoverRun(w, plan, signed, crashGate(names.indexOf("upid:restore") + 1, "after", { writes: 0, names: [] }), [])
      expect(Exit.isInterrupted(first)).toBe(true)
      yield* w.sim.setFaults({ http_error_rate: 1, http_error_statuses: [595] })
      const seq = yield* w.sim.requestSeq
      const down = yield* reopenAndRecover(agent(w))
      // nothing reached PVE but refused connections (the restore task PVE already ran goes on)
      expect((yield* w.sim.requests).filter((r) => r.seq > seq && r.handled)).toEqual([])
      yield* w.sim.setFaults({ http_error_rate: 0 })
      const up = yield* reopenAndRecover(agent(w))
      return { w, down, up }
    })

  it.scoped("PVE unreachable while recovering an interrupted overwrite: it stays in flight; once PVE answers it is held for an operator, never destroyed", () =>
    Effect.gen(function*() {
      const { down, up, w } = yield* crashThenOutage("overwrite")
      expect(down.results.map((r) => r.outcome)).toEqual(["in_flight"])
      expect(down.inFlight.map((o) => o.kind)).toEqual(["recover"])
      expect(up.results.map((r) => r.outcome)).toEqual(["needs_operator"])
      expect(up.inFlight).toEqual([])
      expect((yield* calls(w.sim, 100, w.setupSeq)).destroys).toBe(0)
    }), TIMEOUT)

  // PVE not answering while recovering an unsealed create/recover: the op stays in flight (never
  // held on a transport error), and the next recovery rolls it back.
  it.scoped("PVE unreachable while recovering an interrupted fresh recovery: it stays in flight; once PVE answers the next recovery rolls it back", () =>
    Effect.gen(function*() {
      const { down, up, w } = yield* crashThenOutage("total")
      // one destroy (the restored instance, once PVE answered), and the surviving bulk volume still there
      expect((yield* calls(w.sim, 100, w.setupSeq)).destroys).toBe(1)
      expect(yield* volumesOf(w.sim)).toContain(ORPHAN)
      expect(down.results.map((r) => r.outcome)).toEqual(["in_flight"])
      expect(up.results.map((r) => r.outcome)).toEqual(["rolled_back"])
      expect(Option.isNone(yield* w.sim.guest(100))).toBe(true)
    }), TIMEOUT)
})
