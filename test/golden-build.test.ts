/**
 * The golden-build saga (issue 12, src/programs/golden/build.ts) and its refresh (refresh.ts),
 * against the in-process PVE simulator with the real Privileged layers over fake root
 * executables that record argv (test/golden-support.ts). Root only: the archive's checksum is
 * read from a root-owned tree, as in production.
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, FastCheck, Layer, Option, Ref, Schema, TestClock } from "effect"
import { createHash } from "node:crypto"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { layerAt, migrations } from "../src/layers/Database.js"
import { Migrator, SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { GoldenStore, GoldenStoreLive, type GoldenRecord } from "../src/layers/GoldenStore.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { fromJournal, Journal, JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { Privileged } from "../src/layers/Privileged.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { consoleGrant } from "../src/programs/control/gate.js"
import { plan, unboundedContext } from "../src/programs/control/plan.js"
import { recover } from "../src/programs/control/recover.js"
import { beginOperation, createGuest, sagaOf } from "../src/programs/control/steps.js"
import {
  buildContainerVerdict,
  buildGolden,
  destroyBuildContainer,
  goldenHostname,
  goldenSettings,
  requestFromSettings
} from "../src/programs/golden/build.js"
import { type LastAttempt, refreshDecision, refreshGolden, retireSuperseded, startGolden } from "../src/programs/golden/refresh.js"
import { restoreTestSettings } from "../src/programs/protection/scratch.js"
import { UTC } from "../src/programs/protection/calendar.js"
import { DesiredGuest, DesiredState } from "../src/schema/desired.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { type OperationOf } from "../src/schema/operations.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, runToExit } from "./engine-support.js"
import { makeRootWorld, rootLayers, type RootWorld, SCRATCH_MAX, SCRATCH_MIN, SETTINGS, storeLayers } from "./golden-support.js"
import { isRoot } from "./privileged-support.js"
import { inProcessProxmox, seedWith } from "./support.js"

const request = (version = "2026.01.10-1") => requestFromSettings(SETTINGS, version, "enrollment")

/** The simulator, a state file and the fake root world, all fresh. */
const world = Effect.gen(function*() {
  const sim = yield* makeSimPve(yield* seedWith({}))
  return { sim, path: dbFile(), root: makeRootWorld() }
})

type World = Effect.Effect.Success<typeof world>

const layers = (w: World) => Layer.mergeAll(storeLayers(w.sim, w.path), rootLayers(w.root, w.sim))

/** Customer guests as the seed has them, to prove nothing touched them. */
const customerSnapshot = (sim: SimPve) =>
  Effect.map(sim.guests, (gs) => gs.filter((g) => g.vmid < 999_000).map((g) => JSON.stringify({ vmid: g.vmid, status: g.status, config: g.config })))

/** Every API request that could change something, on a guest outside the scratch range. */
const mutationsOutsideScratch = (sim: SimPve) =>
  Effect.map(sim.requests, (rs) =>
    rs.filter((r) => r.method !== "GET" && /\/lxc\/(\d+)/.test(r.path) && Number(/\/lxc\/(\d+)/.exec(r.path)?.[1]) < 999_900))

const calls = (root: RootWorld, name: string) => root.bin.calls(name)
const callsOf = (root: RootWorld, name: string, action: string) => calls(root, name).filter((c) => c[0] === action)

const sha256Of = (root: RootWorld, volid: string) =>
  createHash("sha256").update(root.archiveBytes(volid.slice(volid.indexOf("backup/") + 7))).digest("hex")

describe.skipIf(!isRoot)("golden build", () => {
  it.scoped("builds as root, registers the archive with its version and sha256, removes the build container; the archive provisions with keyctl+nesting", () =>
    Effect.gen(function*() {
      const w = yield* world
      const before = yield* customerSnapshot(w.sim)
      const result = yield* runToExit(buildGolden(request("2026.01.10-1"))).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(result)).toBe(true)
      if (!Exit.isSuccess(result)) return
      const b = result.value
      const vmid = String(SCRATCH_MAX)
      expect(b.vmid).toBe(SCRATCH_MAX)
      expect(b.volid).toMatch(/^local:backup\/vzdump-lxc-999999-2026_01_10-\d\d_\d\d_\d\d\.tar\.zst$/)
      expect(b.sha256).toBe(sha256Of(w.root, b.volid))
      // the root argv, each exactly once
      const hostname = goldenHostname(b.opId)
      expect(callsOf(w.root, "pct", "create")).toEqual([[
        "create", vmid, SETTINGS.template, "--features", "keyctl=1,nesting=1", "--unprivileged", "1", "--hostname", hostname,
        "--storage", "local-lvm", "--rootfs", "local-lvm:4", "--memory", "1024", "--cores", "2"
      ]])
      expect(calls(w.root, "felhom-golden")).toEqual([
        ["install", vmid, hostname, "vmbr0"],
        ["checksum", join(w.root.dump, b.volid.slice(b.volid.indexOf("backup/") + 7))]
      ])
      expect(calls(w.root, "vzdump")).toEqual([[vmid, "--storage", "local", "--mode", "stop", "--compress", "zstd", "--remove", "0", "--prune-backups", "keep-all=1"]])
      expect(callsOf(w.root, "pct", "destroy")).toEqual([["destroy", vmid]])
      // the container is gone, the archive listed and registered current
      expect(Option.isNone(yield* w.sim.guest(SCRATCH_MAX))).toBe(true)
      expect((yield* w.sim.storageContent("local")).some((e) => e["volid"] === b.volid)).toBe(true)
      const { ops, records, registered, audit } = yield* Effect.gen(function*() {
        const j = yield* Journal
        const store = yield* GoldenStore
        return { ops: yield* j.list({ limit: 10 }), records: yield* store.records, registered: yield* j.goldenArchives, audit: yield* j.auditTail(20) }
      }).pipe(Effect.provide(storeLayers(w.sim, w.path)))
      expect(records).toEqual([expect.objectContaining({ volid: b.volid, basis: "built", version: "2026.01.10-1", sha256: b.sha256, state: "current", opId: b.opId })])
      expect(registered.has(b.volid)).toBe(true)
      const op = ops.find((o) => o.id === b.opId)
      expect(op?.status).toBe("done")
      expect(op?.steps.map((s) => [s.name, s.status])).toEqual([
        ["create", "done"], ["install", "done"], ["dump", "done"], ["checksum", "done"], ["destroy", "done"], ["register", "done"]
      ])
      expect(audit.some((a) => a.action === "destroy" && a.decision === "allowed" && a.target === vmid)).toBe(true)
      expect(audit.filter((a) => a.action === "golden-build").map((a) => [a.decision, a.detail])).toEqual([
        ["registered", { op: b.opId, volid: b.volid, version: "2026.01.10-1", sha256: b.sha256, basis: "enrollment" }]
      ])
      // nothing else was touched
      expect(yield* customerSnapshot(w.sim)).toEqual(before)
      expect(yield* mutationsOutsideScratch(w.sim)).toEqual([])

      // the plan accepts it as a provisioning source, and the restore keeps keyctl+nesting
      const spec = Schema.decodeUnknownSync(DesiredGuest)({
        vmid: 120, hostname: "cust-new", cores: 1, memory_bytes: 1073741824, swap_mib: 0, rootfs_gib: 8, power: "stopped", description: "new", tags: []
      })
      const desired = Schema.decodeUnknownSync(DesiredState)({ generation: 1, provisioning: { golden_archive: b.volid, storage: "local-lvm" }, guests: [spec] })
      const p = plan([], desired, { ...unboundedContext, goldenArchives: registered })
      expect(p.notes.filter((n) => n.reason === "golden_unverified")).toEqual([])
      expect(p.actions.some((a) => a.kind === "create" && a.vmid === 120)).toBe(true)
      const grant = consoleGrant({ op: "create", vmid: VmId.make(120), params: { rootfs_gib: 8 } }, "test")
      const created = yield* runToExit(createGuest(spec, { archive: VolumeId.make(b.volid), storage: StorageId.make("local-lvm") }, 1024, grant)).pipe(
        Effect.provide(storeLayers(w.sim, w.path))
      )
      expect(Exit.isSuccess(created)).toBe(true)
      const guest = yield* w.sim.guest(120)
      expect(Option.map(guest, (g) => [g.config["features"], g.config["unprivileged"]])).toEqual(Option.some(["keyctl=1,nesting=1", 1]))
    }))
})

// ---------------------------------------------------------------------------------------------
// A failure at each step

/** The journal's view after a build: its op, the golden records, what the plan accepts. */
const journalView = (w: World) =>
  Effect.gen(function*() {
    const j = yield* Journal
    const store = yield* GoldenStore
    const ops = (yield* j.list({ limit: 50 })).filter((o) => o.kind === "golden-build")
    return { ops, inFlight: yield* j.inFlight, records: yield* store.records, registered: yield* j.goldenArchives, audit: yield* j.auditTail(100) }
  }).pipe(Effect.provide(storeLayers(w.sim, w.path)))

const failureTag = <A, E extends { readonly _tag: string }>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Option.map(Cause.failureOption(exit.cause), (e) => e._tag)) : undefined

const scratchGuests = (sim: SimPve) => Effect.map(sim.guests, (gs) => gs.filter((g) => g.vmid >= SCRATCH_MIN && g.vmid <= SCRATCH_MAX))

describe.skipIf(!isRoot)("golden build: a failure at each step", () => {
  const cases = [
    { fault: "pct.create", container: "was never created", archive: false },
    { fault: "golden.install", container: "was removed", archive: false },
    { fault: "vzdump", container: "was removed", archive: false },
    { fault: "golden.checksum", container: "was removed", archive: true }
  ] as const
  for (const c of cases) {
    it.scoped(`${c.fault} fails: the build container ${c.container}, nothing registered${c.archive ? ", the archive left in place and reported" : ""}`, () =>
      Effect.gen(function*() {
        const w = yield* world
        const before = yield* customerSnapshot(w.sim)
        w.root.failNext(c.fault)
        const exit = yield* runToExit(buildGolden(request())).pipe(Effect.provide(layers(w)))
        expect(failureTag(exit)).toBe("GoldenBuildFailed")
        const v = yield* journalView(w)
        expect(v.ops.map((o) => o.status)).toEqual(["rolled_back"])
        expect(v.ops[0]?.detail).toContain(`the build container ${c.container}`)
        expect(v.records).toEqual([])
        expect(v.inFlight).toEqual([])
        expect(yield* scratchGuests(w.sim)).toEqual([])
        const files = w.root.archives()
        expect(files.length).toBe(c.archive ? 1 : 0)
        if (c.archive) {
          // left alone (never deleted on a guess) and reported
          expect(v.ops[0]?.detail).toContain(`local:backup/${files[0]}`)
          expect(v.ops[0]?.detail).toContain("not registered")
          expect((yield* w.sim.storageContent("local")).some((e) => e["volid"] === `local:backup/${files[0]}`)).toBe(true)
        }
        // each root step ran at most once; the destroy only when there was a container
        expect(callsOf(w.root, "pct", "create").length).toBe(1)
        expect(callsOf(w.root, "pct", "destroy").length).toBe(c.container === "was removed" ? 1 : 0)
        expect(calls(w.root, "vzdump").length).toBeLessThanOrEqual(1)
        expect(yield* customerSnapshot(w.sim)).toEqual(before)
        expect(yield* mutationsOutsideScratch(w.sim)).toEqual([])
      }))
  }

  it.scoped("the destroy fails once: compensation proves the container again and removes it; nothing registered, the archive reported", () =>
    Effect.gen(function*() {
      const w = yield* world
      w.root.failNext("pct.destroy")
      const exit = yield* runToExit(buildGolden(request())).pipe(Effect.provide(layers(w)))
      expect(Exit.isFailure(exit)).toBe(true)
      const v = yield* journalView(w)
      expect(v.ops.map((o) => o.status)).toEqual(["rolled_back"])
      expect(v.records).toEqual([])
      expect(yield* scratchGuests(w.sim)).toEqual([])
      expect(callsOf(w.root, "pct", "destroy").length).toBe(2)
      expect(v.ops[0]?.detail).toContain(`local:backup/${w.root.archives()[0]}`)
    }))

  it.scoped("a removal that keeps failing leaves the op in flight (the reason given); the next recovery proves the container again and removes it", () =>
    Effect.gen(function*() {
      const w = yield* world
      w.root.failNext("golden.install")
      w.root.failAlways("pct.destroy")
      const exit = yield* runToExit(buildGolden(request())).pipe(Effect.provide(layers(w)))
      expect(failureTag(exit)).toBe("GoldenBuildFailed")
      expect(Exit.isFailure(exit) && JSON.stringify(Cause.failureOption(exit.cause))).toContain("left in flight for recovery")
      let v = yield* journalView(w)
      expect(v.inFlight.map((o) => o.kind)).toEqual(["golden-build"])
      expect((yield* scratchGuests(w.sim)).length).toBe(1)
      // still failing: recovery leaves it in flight too, and says why
      const stuck = yield* runToExit(recover).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(stuck) && stuck.value.map((o) => o.outcome)).toEqual(["in_flight"])
      w.root.heal("pct.destroy")
      const healed = yield* runToExit(recover).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(healed) && healed.value.map((o) => o.outcome)).toEqual(["rolled_back"])
      v = yield* journalView(w)
      expect(v.inFlight).toEqual([])
      expect(yield* scratchGuests(w.sim)).toEqual([])
      expect(v.records).toEqual([])
    }))

  it.scoped("recovery in a graph without the privileged runner leaves the op in flight with the reason, and touches nothing", () =>
    Effect.gen(function*() {
      const w = yield* world
      // the process dies right after pct create was recorded done
      const counter: Counter = { writes: 0, names: [] }
      const probe = yield* runToExit(buildGolden(request())).pipe(Effect.provide(crashingStore(w, 4, counter)))
      expect(Exit.isInterrupted(probe)).toBe(true)
      expect(counter.names.at(-1)).toBe("done create")
      const r = yield* runToExit(recover).pipe(Effect.provide(storeLayers(w.sim, w.path)))
      expect(Exit.isSuccess(r) && r.value.map((o) => [o.outcome, o.detail])).toEqual([["in_flight", expect.stringContaining("privileged runner")]])
      expect((yield* scratchGuests(w.sim)).length).toBe(1)
      const again = yield* runToExit(recover).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(again) && again.value.map((o) => o.outcome)).toEqual(["rolled_back"])
      expect(yield* scratchGuests(w.sim)).toEqual([])
      expect(callsOf(w.root, "pct", "create").length).toBe(1)
    }))

  it.scoped("the token never reaches the journal, the audit log or the failure when PVE echoes it in an error", () =>
    Effect.gen(function*() {
      const w = yield* world
      // listing the dump storage fails (checksum step), with the Authorization header echoed
      yield* w.sim.setFaults({ echo_headers: ["message", "reason", "params", "task", "body"] })
      yield* w.sim.setStorage("local", { online: false })
      const exit = yield* runToExit(buildGolden(request())).pipe(Effect.provide(layers(w)))
      yield* w.sim.setStorage("local", { online: true })
      expect(Exit.isFailure(exit)).toBe(true)
      const v = yield* journalView(w)
      expect(v.ops.map((o) => o.status)).toEqual(["rolled_back"])
      const text = JSON.stringify({ exit, v })
      expect(text).not.toContain(w.sim.tokenSecret)
      const db = readFileSync(w.path)
      expect(db.includes(Buffer.from(w.sim.tokenSecret))).toBe(false)
      expect(yield* scratchGuests(w.sim)).toEqual([])
    }))
})

// ---------------------------------------------------------------------------------------------
// A crash after every durable write, then recovery

interface Counter {
  writes: number
  readonly names: Array<string>
}

/** The real journal (and golden store), interrupting the caller right after its `crashAfter`-th write. */
const crashingStore = (w: World, crashAfter: number, counter: Counter) => {
  const after = <A, E>(name: string, write: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.flatMap(write, (a) => {
      counter.writes++
      counter.names.push(name)
      return counter.writes === crashAfter ? Effect.interrupt : Effect.succeed(a)
    })
  const db = layerAt(w.path)
  const real = JournalLive.pipe(Layer.provide(db))
  const journal = Layer.effect(
    Journal,
    Effect.map(Journal, (j): JournalShape => ({
      ...j,
      begin: (op) => after("begin", j.begin(op)),
      admit: (a) => after("admit", j.admit(a)),
      stepStarted: (id, step, data) => after(`started ${step}`, j.stepStarted(id, step, data)),
      recordUpid: (id, step, upid) => after(`upid ${step}`, j.recordUpid(id, step, upid)),
      stepDone: (id, step, data) => after(`done ${step}`, j.stepDone(id, step, data)),
      stepCompensated: (id, step) => after(`compensated ${step}`, j.stepCompensated(id, step)),
      finish: (id, status, detail) => after(`finish ${status}`, j.finish(id, status, detail)),
      recordProvenance: (vmid, kind, opId, marker) => after("provenance", j.recordProvenance(vmid, kind, opId, marker)),
      clearProvenance: (vmid) => after("clear provenance", j.clearProvenance(vmid)),
      registerGolden: (volid, basis, opId) => after("register golden", j.registerGolden(volid, basis, opId)),
      audit: (e) => after(`audit ${e.action} ${e.decision}`, j.audit(e))
    }))
  ).pipe(Layer.provide(real))
  const store = Layer.effect(
    GoldenStore,
    Effect.map(GoldenStore, (s) => ({ ...s, registerBuilt: (r: Parameters<typeof s.registerBuilt>[0]) => after("registerBuilt", s.registerBuilt(r)) }))
  ).pipe(Layer.provide(GoldenStoreLive.pipe(Layer.provide(db))))
  return Layer.mergeAll(
    inProcessProxmox(w.sim, { node: "pve" }),
    Layer.provideMerge(fromJournal, journal),
    store,
    GuestQueue.layer(4),
    goldenSettings(SETTINGS),
    restoreTestSettings({ scratchMin: SCRATCH_MIN, scratchMax: SCRATCH_MAX, timeZone: UTC, passIntervalSeconds: 60 }),
    rootLayers(w.root, w.sim)
  ).pipe(Layer.orDie)
}

const crashRun = (crashAfter: number, fault?: Parameters<RootWorld["failNext"]>[0]) =>
  Effect.gen(function*() {
    const w = yield* world
    if (fault !== undefined) w.root.failNext(fault)
    const before = yield* customerSnapshot(w.sim)
    const counter: Counter = { writes: 0, names: [] }
    const first = yield* runToExit(buildGolden(request())).pipe(Effect.provide(crashingStore(w, crashAfter, counter)))
    // restart: a fresh journal on the same file, recovery before anything else
    const recovered = yield* runToExit(recover).pipe(Effect.provide(layers(w)))
    return { w, before, first, recovered, counter }
  })

describe.skipIf(!isRoot)("golden build: a crash after every durable write", () => {
  const everyCrash = (fault: Parameters<RootWorld["failNext"]>[0] | undefined, outcomes: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      const clean = yield* crashRun(Number.MAX_SAFE_INTEGER, fault)
      expect(Exit.isSuccess(clean.first)).toBe(fault === undefined)
      const total = clean.counter.writes
      expect(total).toBeGreaterThan(15)
      const seen = new Set<string>()
      for (let k = 1; k <= total; k++) {
        const r = yield* crashRun(k, fault)
        const at = `crash after write ${k} (${r.counter.names[k - 1]})`
        expect(Exit.isInterrupted(r.first), at).toBe(k <= total)
        expect(Exit.isSuccess(r.recovered), at).toBe(true)
        const v = yield* journalView(r.w)
        expect(v.inFlight, at).toEqual([])
        expect(v.ops.length, at).toBe(1)
        const op = v.ops[0]!
        seen.add(op.status)
        expect(["done", "rolled_back", "failed"], at).toContain(op.status)
        // no build container survives, none was ever created twice, no root step ran twice
        expect(yield* scratchGuests(r.w.sim), at).toEqual([])
        for (const [name, action] of [["pct", "create"], ["pct", "destroy"], ["felhom-golden", "install"], ["felhom-golden", "checksum"]] as const) {
          expect(callsOf(r.w.root, name, action).length, `${at}: ${name} ${action}`).toBeLessThanOrEqual(1)
        }
        expect(calls(r.w.root, "vzdump").length, at).toBeLessThanOrEqual(1)
        // registered whole (version + sha256 of the file) or not at all
        const files = r.w.root.archives()
        if (op.status === "done") {
          expect(v.records.length, at).toBe(1)
          const rec = v.records[0]!
          expect(rec.sha256, at).toBe(sha256Of(r.w.root, rec.volid))
          expect(rec.version, at).toBe("2026.01.10-1")
          expect(v.registered.has(rec.volid), at).toBe(true)
        } else {
          expect(v.records, at).toEqual([])
          // an archive it wrote is still there and named in the op's detail
          for (const f of files) expect(op.detail ?? "", at).toContain(`local:backup/${f}`)
        }
        // nothing deleted: every archive vzdump wrote is on disk
        expect(files.length, at).toBe(calls(r.w.root, "vzdump").length)
        expect(yield* customerSnapshot(r.w.sim), at).toEqual(r.before)
        expect(yield* mutationsOutsideScratch(r.w.sim), at).toEqual([])
      }
      expect([...seen].sort()).toEqual(outcomes)
    })

  it.scoped("the build container is removed, nothing is registered half-way, a dumped archive is left and reported, nothing runs twice, no customer guest is touched", () =>
    everyCrash(undefined, ["done", "failed", "rolled_back"]), { timeout: 600_000 })

  it.scoped("the same while a failed checksum is being compensated: the container removed once, the archive kept and reported", () =>
    everyCrash("golden.checksum", ["rolled_back"]), { timeout: 600_000 })
})

// ---------------------------------------------------------------------------------------------
// The golden store over an older database

describe("GoldenStore: migration 0011 keeps older rows valid", () => {
  it.scoped("an operator's signed row from before 0011 reads as current without version or digest; a build never takes it over; digests are checked", () =>
    Effect.gen(function*() {
      const path = dbFile()
      const SIGNED = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
      // a database as issue 11 left it: migrations up to 0010, with a signed golden registration
      const older = Object.fromEntries(Object.entries(migrations).filter(([id]) => Number(id.slice(0, 4)) <= 10))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* Migrator.make({})({ loader: Migrator.fromRecord(older), table: "felhom_migrations" })
        yield* sql`INSERT INTO golden_archives (volid, basis, op_id, recorded_at_ms) VALUES (${SIGNED}, 'signed', 'op-signed', 1)`
      }).pipe(Effect.provide(SqliteClient.layer({ filename: path })), Effect.orDie)
      yield* Effect.gen(function*() {
      const s = yield* GoldenStore
      expect(yield* s.records).toEqual([
        { volid: SIGNED, basis: "signed", opId: "op-signed", recordedAtMs: 1, version: null, sha256: null, state: "current", stateDetail: null, stateChangedMs: null }
      ])
      const taken = yield* Effect.either(s.registerBuilt({ volid: SIGNED, version: "v", sha256: "a".repeat(64), opId: "op-build" }))
      expect(taken._tag === "Left" && taken.left._tag).toBe("GoldenConflict")
      expect((yield* s.records)[0]?.basis).toBe("signed")
      const bad = yield* Effect.either(s.registerBuilt({ volid: "local:backup/x.tar.zst", version: "v", sha256: "not hex", opId: "op-build" }))
      expect(bad._tag === "Left" && bad.left._tag).toBe("JournalError")
      // idempotent for its own op
      yield* s.registerBuilt({ volid: "local:backup/y.tar.zst", version: "v", sha256: "b".repeat(64), opId: "op-build" })
      yield* s.registerBuilt({ volid: "local:backup/y.tar.zst", version: "v", sha256: "b".repeat(64), opId: "op-build" })
      expect(yield* s.retire("local:backup/y.tar.zst", "test")).toBe(true)
      expect(yield* s.retire("local:backup/y.tar.zst", "test")).toBe(false)
      expect(Object.fromEntries((yield* s.records).map((r) => [r.volid, r.state]))).toEqual({ [SIGNED]: "current", "local:backup/y.tar.zst": "retired" })
      }).pipe(Effect.provide(GoldenStoreLive.pipe(Layer.provide(layerAt(path)), Layer.orDie)))
    }))
})

// ---------------------------------------------------------------------------------------------
// The one destroy: only this op's build container, in the range, never a customer guest

const DEFECTS = ["customer-hostname", "customer-record", "no-keyctl", "op-finished", "outside-range", "other-vmid"] as const
type Defect = (typeof DEFECTS)[number]
type ProvenanceCase = "ours" | "none" | "other-op" | "scratch"

const OTHER_OP = "0b7d6c2e-5a41-4f2e-9d3c-1e2f3a4b5c6d"

const containerConfig = (hostname: string, vmid: number, features = "keyctl=1,nesting=1") => ({
  arch: "amd64",
  ostype: "debian",
  hostname,
  features,
  unprivileged: 1,
  memory: 1024,
  rootfs: `local-lvm:vm-${vmid}-disk-0,size=4G`
})

/**
 * A golden-build op as the saga leaves it mid-way (op journaled, provenance, a container at its
 * vmid), with `defects` each breaking one condition of the proof. Returns the saga a destroy
 * would be asked with.
 */
const lookAlike = (w: World, defects: ReadonlySet<Defect>, provenance: ProvenanceCase) =>
  Effect.gen(function*() {
    const j = yield* Journal
    const vmid = VmId.make(defects.has("outside-range") ? 150 : SCRATCH_MAX - 1)
    const s = yield* beginOperation<"golden-build">({
      _tag: "golden-build",
      vmid,
      template: SETTINGS.template,
      storage: SETTINGS.storage,
      dumpStorage: SETTINGS.dumpStorage,
      version: "v1",
      basis: "enrollment",
      authorization: null
    })
    // the guest the destroy is pointed at: this op's vmid, or (other-vmid) another one that looks right
    const target = defects.has("other-vmid") ? VmId.make(SCRATCH_MAX - 2) : vmid
    const marker = goldenHostname(s.id)
    if (provenance !== "none") {
      const by = provenance === "other-op" ? OTHER_OP : s.id
      yield* j.recordProvenance(target, provenance === "scratch" ? "scratch" : "same_transaction", by, goldenHostname(by))
    }
    if (defects.has("customer-record")) yield* j.markCustomer(target, "adopted")
    const created = yield* w.sim.rootCreate(
      target,
      containerConfig(defects.has("customer-hostname") ? "cust-zeta" : marker, target, defects.has("no-keyctl") ? "nesting=1" : "keyctl=1,nesting=1")
    )
    expect(created).toBe("ok")
    if (defects.has("op-finished")) yield* j.finish(s.id, "failed", "test")
    const op: OperationOf<"golden-build"> = { ...s.op, vmid: target }
    return { saga: sagaOf(s.id, op), target }
  })

const defectsArb = FastCheck.record({
  defects: FastCheck.subarray([...DEFECTS]),
  provenance: FastCheck.constantFrom<ProvenanceCase>("ours", "none", "other-op", "scratch")
})

describe.skipIf(!isRoot)("golden build: the build container's destroy", () => {
  it.scoped.prop(
    "destroys iff every condition holds; otherwise refuses (audited), runs no pct destroy and leaves the guest as it was",
    { c: defectsArb },
    ({ c }) =>
      Effect.gen(function*() {
        const w = yield* world
        const defects = new Set(c.defects)
        const clean = defects.size === 0 && c.provenance === "ours"
        const { saga, target } = yield* lookAlike(w, defects, c.provenance).pipe(Effect.provide(storeLayers(w.sim, w.path)))
        const before = yield* w.sim.guest(target)
        const verdict = yield* buildContainerVerdict(saga.id, target).pipe(Effect.provide(layers(w)))
        const r = yield* runToExit(destroyBuildContainer(saga, "compensate_destroy"), 60).pipe(Effect.provide(layers(w)))
        const what = JSON.stringify(c)
        if (clean) {
          expect(verdict._tag, what).toBe("ours")
          expect(Exit.isSuccess(r), what).toBe(true)
          expect(Option.isNone(yield* w.sim.guest(target)), what).toBe(true)
          expect(callsOf(w.root, "pct", "destroy"), what).toEqual([["destroy", String(target)]])
        } else {
          expect(verdict._tag, what).toBe("refused")
          expect(failureTag(r), what).toBe("BuildContainerRefused")
          expect(yield* w.sim.guest(target), what).toEqual(before)
          expect(callsOf(w.root, "pct", "destroy"), what).toEqual([])
          const v = yield* journalView(w)
          expect(v.audit.some((a) => a.action === "destroy" && a.decision === "refused:golden-build" && a.target === String(target)), what).toBe(true)
        }
        expect(yield* mutationsOutsideScratch(w.sim), what).toEqual([])
      }),
    { timeout: 300_000, fastCheck: { numRuns: 30, seed: 12 } }
  )

  it.scoped("the build container itself (every condition met) is stopped if running and destroyed, once; a second ask finds it absent", () =>
    Effect.gen(function*() {
      const w = yield* world
      const { saga, target } = yield* lookAlike(w, new Set(), "ours").pipe(Effect.provide(storeLayers(w.sim, w.path)))
      // running: the proof is taken again after the stop, before the destroy
      const started = yield* runToExit(Effect.flatMap(Proxmox, (p) => Effect.flatMap(p.start(target), (u) => p.waitTask(u)))).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(started)).toBe(true)
      const first = yield* runToExit(destroyBuildContainer(saga, "compensate_destroy")).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(first) && first.value).toBe("destroyed")
      const second = yield* runToExit(destroyBuildContainer(saga, "compensate_destroy")).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(second) && second.value).toBe("absent")
      expect(callsOf(w.root, "pct", "destroy")).toEqual([["destroy", String(target)]])
      expect(Option.isNone(yield* w.sim.guest(target))).toBe(true)
      const v = yield* journalView(w)
      expect(v.audit.filter((a) => a.action === "destroy").map((a) => a.decision)).toEqual(["allowed"])
    }))

  it.scoped("recovery of an interrupted build whose vmid holds a guest it cannot prove holds the op for an operator and touches nothing", () =>
    Effect.gen(function*() {
      const w = yield* world
      const { target } = yield* lookAlike(w, new Set(["customer-hostname"]), "ours").pipe(Effect.provide(storeLayers(w.sim, w.path)))
      const before = yield* w.sim.guest(target)
      const r = yield* runToExit(recover).pipe(Effect.provide(layers(w)))
      expect(Exit.isSuccess(r) && r.value.map((o) => o.outcome)).toEqual(["needs_operator"])
      expect(yield* w.sim.guest(target)).toEqual(before)
      expect(callsOf(w.root, "pct", "destroy")).toEqual([])
    }))

  it.scoped("a guest that appears at the build vmid before pct create (pct: already exists) is never destroyed: the build is held for an operator", () =>
    Effect.gen(function*() {
      const w = yield* world
      const customer = containerConfig("cust-omega", SCRATCH_MAX)
      // the host gains a guest at the picked vmid between the pick and pct create
      const racing = Layer.effect(
        Privileged,
        Effect.map(Privileged, (p) => ({
          ...p,
          createGoldenContainer: (spec: Parameters<typeof p.createGoldenContainer>[0]) =>
            Effect.zipRight(w.sim.rootCreate(spec.vmid, { ...customer, rootfs: `local-lvm:vm-${spec.vmid}-disk-9,size=4G` }), p.createGoldenContainer(spec))
        }))
      ).pipe(Layer.provide(rootLayers(w.root, w.sim)))
      const exit = yield* runToExit(buildGolden(request())).pipe(
        Effect.provide(Layer.mergeAll(storeLayers(w.sim, w.path), rootLayers(w.root, w.sim), racing))
      )
      expect(failureTag(exit)).toBe("GoldenBuildFailed")
      const v = yield* journalView(w)
      expect(v.ops.map((o) => o.status)).toEqual(["needs_operator"])
      expect(Option.map(yield* w.sim.guest(SCRATCH_MAX), (g) => g.config["hostname"])).toEqual(Option.some("cust-omega"))
      expect(callsOf(w.root, "pct", "destroy")).toEqual([])
      expect(v.records).toEqual([])
    }))
})

// ---------------------------------------------------------------------------------------------
// Refresh

const built = (volid: string, recordedAtMs: number, basis: "built" | "signed" = "built"): GoldenRecord => ({
  volid,
  basis,
  opId: "op",
  recordedAtMs,
  version: basis === "built" ? "v" : null,
  sha256: null,
  state: "current",
  stateDetail: null,
  stateChangedMs: null
})

const DAY = 86_400_000

describe("golden refresh: when a build is due", () => {
  const cadence = { refreshDays: 30, retryHours: 12 }
  it("the first build is an enrollment build; then every refresh_days after the newest built archive; signed ones do not count", () => {
    expect(refreshDecision(0, cadence, [], null)).toMatchObject({ due: true, basis: "enrollment" })
    expect(refreshDecision(0, cadence, [built("a", 0, "signed")], null)).toMatchObject({ due: true, basis: "enrollment" })
    expect(refreshDecision(29 * DAY, cadence, [built("a", 0)], null)).toMatchObject({ due: false })
    expect(refreshDecision(30 * DAY, cadence, [built("a", 0)], null)).toMatchObject({ due: true, basis: "policy" })
    expect(refreshDecision(31 * DAY, cadence, [built("a", 0), built("b", 10 * DAY)], null)).toMatchObject({ due: false })
    expect(refreshDecision(365 * DAY, { ...cadence, refreshDays: 0 }, [], null)).toMatchObject({ due: false })
  })
  it("never beside a build in flight or one held for an operator; a failed one is retried after retry_hours", () => {
    const last = (status: LastAttempt["status"], atMs = 0): LastAttempt => ({ atMs, status })
    expect(refreshDecision(99 * DAY, cadence, [], last("in_flight"))).toMatchObject({ due: false })
    expect(refreshDecision(99 * DAY, cadence, [], last("needs_operator"))).toMatchObject({ due: false })
    expect(refreshDecision(11 * 3_600_000, cadence, [], last("rolled_back"))).toMatchObject({ due: false })
    expect(refreshDecision(12 * 3_600_000, cadence, [], last("failed"))).toMatchObject({ due: true })
    expect(refreshDecision(1, cadence, [], last("done"))).toMatchObject({ due: true })
  })
  it.prop(
    "without a pending attempt: due iff no built archive, or refresh_days have passed since the newest built one",
    [
      FastCheck.array(FastCheck.record({ at: FastCheck.integer({ min: 0, max: 400 * DAY }), signed: FastCheck.boolean() }), { maxLength: 6 }),
      FastCheck.integer({ min: 0, max: 800 * DAY }),
      FastCheck.integer({ min: 1, max: 365 })
    ],
    ([rs, now, days]) => {
      const records = rs.map((r, i) => built(`v${i}`, r.at, r.signed ? "signed" : "built"))
      const builtAt = rs.filter((r) => !r.signed).map((r) => r.at)
      const expected = builtAt.length === 0 || now >= Math.max(...builtAt) + days * DAY
      expect(refreshDecision(now, { refreshDays: days, retryHours: 12 }, records, null).due).toBe(expected)
    }
  )
})

describe.skipIf(!isRoot)("golden refresh", () => {
  it.scoped("a refresh while a create restores from the old archive keeps the old one current; it is retired (never deleted, still accepted) once no create references it", () =>
    Effect.gen(function*() {
      const w = yield* world
      const L = layers(w)
      // an operator-signed archive is never retired by the agent
      const SIGNED = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
      yield* Effect.flatMap(Journal, (j) => j.registerGolden(SIGNED, "signed", "operator")).pipe(Effect.provide(L))
      const first = yield* runToExit(refreshGolden).pipe(Effect.provide(L))
      expect(Exit.isSuccess(first) && first.value._tag).toBe("built")
      if (!Exit.isSuccess(first) || first.value._tag !== "built") return
      const v1 = first.value.build.volid
      // a provision of guest 130 from v1 is in flight (its restore running, say)
      const spec = Schema.decodeUnknownSync(DesiredGuest)({
        vmid: 130, hostname: "cust-late", cores: 1, memory_bytes: 1073741824, swap_mib: 0, rootfs_gib: 8, power: "stopped", description: "late", tags: []
      })
      const create = yield* beginOperation<"create">({
        _tag: "create",
        vmid: spec.vmid,
        spec,
        source: { archive: VolumeId.make(v1), storage: StorageId.make("local-lvm") },
        memoryMiB: 1024,
        marker: "felhom-prov-0123456789abcdef" as OperationOf<"create">["marker"]
      }).pipe(Effect.provide(L))
      // not due yet
      const early = yield* runToExit(refreshGolden).pipe(Effect.provide(L))
      expect(Exit.isSuccess(early) && early.value._tag).toBe("not_due")
      yield* TestClock.adjust(`${31 * 24} hours`)
      const second = yield* runToExit(refreshGolden).pipe(Effect.provide(L))
      expect(Exit.isSuccess(second) && second.value._tag).toBe("built")
      if (!Exit.isSuccess(second) || second.value._tag !== "built") return
      const v2 = second.value.build.volid
      expect(v2).not.toBe(v1)
      expect(second.value.retire).toEqual({ current: v2, retired: [], kept: [{ volid: v1, op: create.id }] })
      let v = yield* journalView(w)
      const stateOf = (volid: string) => v.records.find((r) => r.volid === volid)?.state
      expect([stateOf(v1), stateOf(v2), stateOf(SIGNED)]).toEqual(["current", "current", "current"])
      expect([v.registered.has(v1), v.registered.has(v2)]).toEqual([true, true])
      // the provision finishes; the next pass retires v1, and only marks it
      yield* Effect.flatMap(Journal, (j) => j.finish(create.id, "done")).pipe(Effect.provide(L))
      const pass = yield* runToExit(retireSuperseded).pipe(Effect.provide(L))
      expect(Exit.isSuccess(pass) && pass.value).toEqual({ current: v2, retired: [v1], kept: [] })
      v = yield* journalView(w)
      expect([stateOf(v1), stateOf(v2), stateOf(SIGNED)]).toEqual(["retired", "current", "current"])
      expect(v.records.find((r) => r.volid === v1)?.stateDetail).toContain(v2)
      expect(v.audit.filter((a) => a.action === "golden-retire").map((a) => a.detail)).toEqual([{ volid: v1, supersededBy: v2 }])
      expect([v.registered.has(v1), v.registered.has(v2), v.registered.has(SIGNED)]).toEqual([true, true, true])
      // still on disk and listed by PVE, still a source the plan accepts
      expect(w.root.archives().map((f) => `local:backup/${f}`)).toEqual([v1, v2].sort())
      const listed = (yield* w.sim.storageContent("local")).map((e) => e["volid"])
      expect(listed).toEqual(expect.arrayContaining([v1, v2]))
      const desired = Schema.decodeUnknownSync(DesiredState)({ generation: 2, provisioning: { golden_archive: v1, storage: "local-lvm" }, guests: [spec] })
      const p = plan([], desired, { ...unboundedContext, goldenArchives: v.registered })
      expect(p.notes.filter((n) => n.reason === "golden_unverified")).toEqual([])
      // a second pass changes nothing
      const again = yield* runToExit(refreshGolden).pipe(Effect.provide(L))
      expect(Exit.isSuccess(again) && again.value).toMatchObject({ _tag: "not_due", retire: { current: v2, retired: [], kept: [] } })
      expect(callsOf(w.root, "pct", "create").length).toBe(2)
    }), { timeout: 120_000 })

  it.scoped("the daemon's fiber builds the first archive once recovered, and nothing while mutations are not allowed", () =>
    Effect.gen(function*() {
      const w = yield* world
      const allowed = yield* Ref.make(false)
      const records = Effect.flatMap(GoldenStore, (s) => s.records).pipe(Effect.provide(storeLayers(w.sim, w.path)))
      yield* Effect.scoped(Effect.gen(function*() {
        yield* startGolden(Ref.get(allowed))
        for (let i = 0; i < 20; i++) yield* TestClock.adjust("500 millis")
        expect(yield* records).toEqual([])
        expect(calls(w.root, "pct")).toEqual([])
      })).pipe(Effect.provide(layers(w)))
      yield* Ref.set(allowed, true)
      const run = Effect.scoped(Effect.gen(function*() {
        yield* startGolden(Ref.get(allowed))
        for (let i = 0; i < 600 && (yield* records).length === 0; i++) {
          yield* Effect.promise(() => new Promise<void>((r) => setImmediate(r)))
          yield* TestClock.adjust("500 millis")
        }
      })).pipe(Effect.provide(layers(w)))
      yield* run
      expect((yield* records).map((r) => [r.basis, r.state])).toEqual([["built", "current"]])
    }), { timeout: 120_000 })

  it.scoped("refresh_days 0: the fiber does not start", () =>
    Effect.gen(function*() {
      const w = yield* world
      yield* Effect.scoped(Effect.gen(function*() {
        yield* startGolden(Effect.succeed(true))
        for (let i = 0; i < 10; i++) yield* TestClock.adjust("1 hour")
      })).pipe(Effect.provide(Layer.mergeAll(layers(w), goldenSettings({ ...SETTINGS, refreshDays: 0 }))))
      expect(calls(w.root, "pct")).toEqual([])
    }))
})
