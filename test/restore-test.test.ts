/**
 * Self-restore-tests and integrity verify (issue 10) against the in-process PVE simulator under
 * TestClock, with a real journal and ProtectionStore on a real SQLite file:
 * - a good archive passes (scratch range, link down, fresh MAC, small, marker tag, no force), a
 *   corrupted one fails (the restore fails / the services fail), timings recorded, teardown always;
 * - skipped (and recorded) when the restore target is short of space;
 * - never beside a backup of the same guest, one at a time per host;
 * - a crash after, and before, every journal write → after recovery no scratch guest is left and
 *   no customer guest was touched;
 * - a scratch guest is never confused with a customer guest (the gate refuses every look-alike);
 * - integrity verify: PBS verification state, the vzdump archive test, a failure's priority;
 * - the production health probe (Privileged `pct exec <vmid> -- systemctl is-system-running`).
 */
import { describe, expect, it } from "@effect/vitest"
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { Effect, Either, Exit, Fiber, Layer, Logger, Option, Schema, TestClock } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { GuestHealth, GuestHealthLive, guestHealthFromSim } from "../src/layers/GuestHealth.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { GuestRecords } from "../src/layers/GuestRecords.js"
import { fromJournal, Journal, JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { OpLog } from "../src/layers/OpLog.js"
import { Privileged, type PrivilegedShape } from "../src/layers/Privileged.js"
import { ProtectionStore, ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { planNow } from "../src/programs/control/apply.js"
import { clearScratchTeardown, scratchVerdict } from "../src/programs/control/gate.js"
import { recover } from "../src/programs/control/recover.js"
import { beginOperation, forceBackup } from "../src/programs/control/steps.js"
import { UTC } from "../src/programs/protection/calendar.js"
import { chooseRestoreTests, type RestoreTestOutcome, restoreTestPass } from "../src/programs/protection/restoreTest.js"
import { restoreTestSettings } from "../src/programs/protection/scratch.js"
import { selfTestsForReport } from "../src/programs/protection/selfTestReport.js"
import { HostReport, ReportArchiveCheck, ReportRestoreTest } from "../src/schema/hub.js"
import { makeAppHttpClient } from "../src/sim/appClient.js"
import { makeDevHub } from "../src/sim/hub/index.js"
import { archivePathOf, verifyPass } from "../src/programs/protection/verify.js"
import { DesiredState } from "../src/schema/desired.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import type { ScratchMarker } from "../src/schema/operations.js"
import { PrivilegedError } from "../src/schema/privileged.js"
import { defaultSeedJson, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, runToExit, settle } from "./engine-support.js"
import { expectError, expectValue, makeBinDir, makeSudoSandbox, withPriv } from "./privileged-support.js"
import { inProcessProxmox, seedWith } from "./support.js"

type Json = Record<string, unknown>
const GiB = 1024 ** 3
const MiB = 1024 ** 2

const SETTINGS = { scratchMin: 999_900, scratchMax: 999_999, timeZone: UTC, passIntervalSeconds: 60 }
const inRange = (v: number) => v >= SETTINGS.scratchMin && v <= SETTINGS.scratchMax
const BACKUP_100 = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
const BACKUP_101 = "local:backup/vzdump-lxc-101-2026_01_14-03_10_00.tar.zst"
const CUSTOMERS = [100, 101, 102] as const

const base = defaultSeedJson as { guests: ReadonlyArray<Json>; storages: ReadonlyArray<Json>; backups: ReadonlyArray<Json> }
// 101 without its snapshot parent (a backup or a look-alike guest has no snapshots)
const { parent: _parent, ...config101 } = (base.guests.find((g) => g["vmid"] === 101)!["config"]) as Json
/** A backup of 101 on local, beside the seed's backup of 100. */
const backup101 = { storage: "local", vmid: 101, time: "2026-01-14T03:10:00Z", size: 734003200, notes: "cust-beta nightly", config: config101 }

const guest = (vmid: number, hostname: string) => ({
  vmid,
  hostname,
  cores: 2,
  memory_bytes: 2048 * MiB,
  swap_mib: 512,
  rootfs_gib: 16,
  power: "running",
  description: "",
  tags: []
})
const LOCAL = { id: "local", type: "local-dir", durable_id: "/var/lib/vz", class: "slow", role: "vzdump-target", policy: { schedule: "02:00", retention: { keep_last: 7 } }, state: "attached" }
const PBS_FP = Array.from({ length: 32 }, (_, i) => (i * 7 % 256).toString(16).padStart(2, "0").toUpperCase()).join(":")
const PBS = {
  id: "pbs1",
  type: "pbs",
  durable_id: { repo: "felhom@pbs!host1@pbs.example.net:felhom", fingerprint: PBS_FP },
  class: "slow",
  role: "pbs-offsite",
  creds: { ref: "pbs-token" },
  policy: { schedule: "03:00", retention: { keep_daily: 7 } },
  state: "attached"
}
const desiredOf = (guests: ReadonlyArray<Json>, storage: ReadonlyArray<Json> = [LOCAL]) =>
  Schema.decodeUnknownSync(DesiredState)({ generation: 1, guests, storage })
const desired = desiredOf([guest(100, "cust-alpha")])

// ---------------------------------------------------------------------------------------------
// Wiring

const agentLayer = (sim: SimPve, path: string, wrap?: (real: JournalShape) => JournalShape) => {
  const db = layerAt(path)
  const real = JournalLive.pipe(Layer.provide(db))
  const journal = wrap === undefined ? real : Layer.provideMerge(fromJournal, Layer.effect(Journal, Effect.map(Journal, wrap)).pipe(Layer.provide(real)))
  return Layer.mergeAll(
    inProcessProxmox(sim, { node: "pve" }),
    journal,
    ProtectionStoreLive.pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    guestHealthFromSim(sim),
    restoreTestSettings(SETTINGS)
  ).pipe(Layer.orDie)
}


const run = <A, E, R>(eff: Effect.Effect<A, E, R>) =>
  Effect.flatMap(runToExit(eff), (exit) => (Exit.isSuccess(exit) ? Effect.succeed(exit.value) : Effect.dieMessage(`failed: ${String(exit.cause)}`)))

const tested = (o: RestoreTestOutcome) => {
  if (o._tag !== "tested") throw new Error(`expected a test, got ${JSON.stringify(o)}`)
  return o
}

/** Each customer guest's status and config, to prove none was touched. */
const customers = (sim: SimPve) =>
  Effect.map(sim.guests, (gs) => gs.filter((g) => (CUSTOMERS as ReadonlyArray<number>).includes(g.vmid)).map((g) => ({ vmid: g.vmid, status: g.status, config: g.config })))

/** Mutating calls PVE received for a customer guest. */
const customerMutations = (sim: SimPve) =>
  Effect.map(sim.requests, (rs) => rs.filter((r) => r.method !== "GET" && /\/lxc\/(100|101|102)(\/|$)/.test(r.path) || (r.method === "POST" && /\/vzdump$/.test(r.path) && (CUSTOMERS as ReadonlyArray<number>).map(String).includes(r.params["vmid"] ?? ""))))

const scratchGuests = (sim: SimPve) => Effect.map(sim.guests, (gs) => gs.filter((g) => inRange(g.vmid)))

const countTasks = (sim: SimPve, type: string, vmid: number) =>
  Effect.map(sim.tasks, (ts) => ts.filter((t) => t.type === type && t.id === String(vmid)).length)

// ---------------------------------------------------------------------------------------------

describe("restore-test: a full test against the simulator", () => {
  it.scoped("a good archive passes: restored into the scratch range (link down, fresh MAC, small, marker, no force), booted, checked, torn down; timings recorded", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const before = yield* customers(sim)
      const path = dbFile()
      const o = tested(yield* run(restoreTestPass(desired)).pipe(Effect.provide(agentLayer(sim, path))))
      expect(o).toMatchObject({ result: "pass", teardown: "done", candidate: { source: 100, target: "local", archive: BACKUP_100, reason: "never_run" } })
      expect(inRange(o.scratch)).toBe(true)
      for (const k of ["restore", "start", "check", "teardown"] as const) expect(o.timings[k], k).toBeGreaterThan(0)

      const restore = (yield* sim.requests).find((r) => r.method === "POST" && r.path === "/nodes/pve/lxc")!
      expect(restore.params).toMatchObject({ vmid: String(o.scratch), ostemplate: BACKUP_100, storage: "local-lvm", restore: "1", memory: "512", cores: "1" })
      expect(restore.params["tags"]).toMatch(/^felhom-scratch-[0-9a-f]{16}$/)
      expect(restore.params["force"]).toBeUndefined()
      expect(restore.params["net0"]).toContain("link_down=1")
      expect(restore.params["net0"]).not.toContain("hwaddr")
      // started once, never on the LAN, gone afterwards
      expect(yield* countTasks(sim, "vzstart", o.scratch)).toBe(1)
      expect(yield* sim.macConflicts).toEqual([])
      expect(yield* scratchGuests(sim)).toEqual([])
      expect(yield* customers(sim)).toEqual(before)
      expect(yield* customerMutations(sim)).toEqual([])

      const check = Effect.gen(function*() {
        const store = yield* ProtectionStore
        const [t] = yield* store.restoreTests(5)
        expect(t).toMatchObject({ opId: o.opId, vmid: 100, archive: BACKUP_100, result: "pass" })
        expect(Object.keys(t!.timings).sort()).toEqual(["check", "restore", "start", "teardown"])
        expect((yield* store.runs).find((r) => r.kind === "restore_test")).toMatchObject({ vmid: 100, storage: "local", lastResult: "ok" })
        const op = yield* Effect.flatMap(OpLog, (j) => j.get(o.opId))
        expect(Option.getOrThrow(op)).toMatchObject({ kind: "restore-test", status: "done", vmid: o.scratch })
        expect(yield* Effect.flatMap(GuestRecords, (g) => g.provenanceOf(o.scratch))).toEqual(Option.none())
      })
      yield* check.pipe(Effect.provide(agentLayer(sim, path)))
    }))

  it.scoped("a corrupted archive whose restore fails: fail, with the restore's error and timing; no guest left, nothing started", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      expect(yield* sim.setArchive(BACKUP_100, { corrupt: "restore" })).toBe(true)
      const path = dbFile()
      const o = tested(yield* run(restoreTestPass(desired)).pipe(Effect.provide(agentLayer(sim, path))))
      expect(o.result).toBe("fail")
      expect(o.detail).toMatch(/^restore failed: /)
      expect(o.teardown).toBe("done")
      expect(o.timings.restore).toBeGreaterThan(0)
      expect(o.timings.start).toBeUndefined()
      expect(yield* countTasks(sim, "vzstart", o.scratch)).toBe(0)
      expect(yield* scratchGuests(sim)).toEqual([])
      const stored = yield* Effect.flatMap(ProtectionStore, (s) => s.restoreTests(1)).pipe(Effect.provide(agentLayer(sim, path)))
      expect(stored[0]).toMatchObject({ result: "fail", vmid: 100 })
    }))

  it.scoped("an archive that restores but whose services fail: booted, fail, torn down", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      yield* sim.setArchive(BACKUP_100, { corrupt: "health" })
      const o = tested(yield* run(restoreTestPass(desired)).pipe(Effect.provide(agentLayer(sim, dbFile()))))
      expect(o).toMatchObject({ result: "fail", teardown: "done" })
      expect(o.detail).toContain("services failing")
      expect(yield* countTasks(sim, "vzstart", o.scratch)).toBe(1)
      expect(yield* countTasks(sim, "vzdestroy", o.scratch)).toBe(1)
      expect(yield* scratchGuests(sim)).toEqual([])
    }))

  it.scoped("a backup with a second NIC: the NIC is removed through the gate before the start, so nothing of the scratch guest is on the LAN", () =>
    Effect.gen(function*() {
      const net1 = "name=eth1,bridge=vmbr1,hwaddr=BC:24:11:3A:5C:09,ip=dhcp,type=veth"
      const sim = yield* makeSimPve(yield* seedWith({
        guests: base.guests.map((g) => (g["vmid"] === 101 ? { ...g, status: "running", config: { ...(g["config"] as Json), net1 } } : g)),
        backups: [...base.backups, { ...backup101, config: { ...config101, net1 } }]
      }))
      const path = dbFile()
      const o = tested(yield* run(restoreTestPass(desiredOf([guest(101, "cust-beta")]))).pipe(Effect.provide(agentLayer(sim, path))))
      expect(o).toMatchObject({ result: "pass", teardown: "done" })
      const put = (yield* sim.requests).find((r) => r.method === "PUT" && r.path === `/nodes/pve/lxc/${o.scratch}/config`)
      expect(put?.params).toMatchObject({ delete: "net1", onboot: "0" })
      expect(yield* sim.macConflicts).toEqual([])
      const audits = yield* Effect.flatMap(Journal, (j) => j.auditTail(20)).pipe(Effect.provide(agentLayer(sim, path)))
      expect(audits.filter((a) => a.action === "set-config-volumes").map((a) => [a.target, a.decision])).toEqual([[String(o.scratch), "allowed"]])
    }))

  it.scoped("skipped, recorded and restored nothing when the restore target is short of space", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      yield* sim.setStorage("local-lvm", { total: 30 * GiB, used: 0 })
      const path = dbFile()
      const o = yield* run(restoreTestPass(desired)).pipe(Effect.provide(agentLayer(sim, path)))
      expect(o._tag).toBe("skipped")
      if (o._tag === "skipped") expect(o.detail).toMatch(/^local-lvm has [\d.]+ GiB free; the restore needs 17\.6 GiB$/)
      expect((yield* sim.requests).some((r) => r.method === "POST" && r.path === "/nodes/pve/lxc")).toBe(false)
      const [tests, runs, ops] = yield* Effect.all([
        Effect.flatMap(ProtectionStore, (s) => s.restoreTests(5)),
        Effect.flatMap(ProtectionStore, (s) => s.runs),
        Effect.flatMap(OpLog, (j) => j.list({ limit: 10 }))
      ]).pipe(Effect.provide(agentLayer(sim, path)))
      expect(tests.map((t) => t.result)).toEqual(["skipped"])
      expect(runs.find((r) => r.kind === "restore_test")).toMatchObject({ vmid: 100, lastResult: "skipped", lastSuccessMs: null })
      expect(ops).toEqual([])
    }))

  it.scoped("not due again until the schedule's next slot (weekly by default)", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const layer = agentLayer(sim, dbFile())
      tested(yield* run(restoreTestPass(desired)).pipe(Effect.provide(layer)))
      expect((yield* run(restoreTestPass(desired)).pipe(Effect.provide(layer)))._tag).toBe("nothing_due")
      yield* TestClock.adjust("8 days")
      expect(tested(yield* run(restoreTestPass(desired)).pipe(Effect.provide(layer))).candidate.reason).toBe("slot_passed")
    }))
})

describe("restore-test: concurrency", () => {
  it.scoped("never beside a backup of the same guest: a test waits for a running backup, a backup waits for a running test", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ task_durations_ms: { vzdump: 30_000 } }))
      const layer = agentLayer(sim, dbFile())
      const program = Effect.gen(function*() {
        const queue = yield* GuestQueue
        // 1. a backup of 100 is running when the test starts
        const backup = yield* Effect.fork(queue.serialize(100)(forceBackup(VmId.make(100), StorageId.make("local"))))
        yield* settle
        const test = yield* Effect.fork(restoreTestPass(desired))
        yield* Fiber.join(backup)
        const first = tested(yield* Fiber.join(test))
        // 2. a test is running when a backup of 100 is asked for
        yield* TestClock.adjust("8 days")
        const test2 = yield* Effect.fork(restoreTestPass(desired))
        while ((yield* scratchGuests(sim)).length === 0) yield* Effect.sleep("500 millis")
        const backup2 = yield* Effect.fork(queue.serialize(100)(forceBackup(VmId.make(100), StorageId.make("local"))))
        const second = tested(yield* Fiber.join(test2))
        yield* Fiber.join(backup2)
        return [first, second] as const
      })
      const [first, second] = yield* run(program).pipe(Effect.provide(layer))
      const tasks = yield* sim.tasks
      const dumps = tasks.filter((t) => t.type === "vzdump").map((t) => t.startedAtMs).sort((a, b) => a - b)
      const restore1 = tasks.find((t) => t.type === "vzrestore" && t.id === String(first.scratch))!
      const destroy2 = tasks.filter((t) => t.type === "vzdestroy" && t.id === String(second.scratch)).at(-1)!
      expect(dumps).toHaveLength(2)
      expect(restore1.startedAtMs).toBeGreaterThanOrEqual(dumps[0]! + 30_000)
      expect(dumps[1]!).toBeGreaterThanOrEqual(destroy2.startedAtMs)
    }))

  it.scoped("one restore-test at a time per host: two concurrent passes never have two scratch guests", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ backups: [...base.backups, backup101] }))
      const two = desiredOf([guest(100, "cust-alpha"), guest(101, "cust-beta")])
      let most = 0
      const outcomes = yield* Effect.gen(function*() {
        const a = yield* Effect.fork(restoreTestPass(two))
        const b = yield* Effect.fork(restoreTestPass(two))
        for (let i = 0; i < 600 && (a.unsafePoll() === null || b.unsafePoll() === null); i++) {
          yield* settle
          most = Math.max(most, (yield* scratchGuests(sim)).length)
          yield* TestClock.adjust("500 millis")
        }
        return [yield* Fiber.join(a), yield* Fiber.join(b)] as const
      }).pipe(Effect.provide(agentLayer(sim, dbFile())))
      expect(outcomes.map((o) => tested(o).candidate.source).sort()).toEqual([100, 101])
      expect(most).toBe(1)
    }))
})

// ---------------------------------------------------------------------------------------------
// Crash at every step

interface Counter {
  writes: number
  readonly names: Array<string>
}

/** The real journal, interrupting the caller at its `at`-th write: just before it, or just after. */
const crashing = (at: number, when: "before" | "after", counter: Counter) => (real: JournalShape): JournalShape => {
  const gate = <A, E>(name: string, write: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.suspend(() => {
      const n = ++counter.writes
      counter.names.push(name)
      if (n === at && when === "before") return Effect.interrupt
      return Effect.flatMap(write, (a) => (n === at && when === "after" ? Effect.interrupt : Effect.succeed(a)))
    })
  return {
    ...real,
    admit: (a) => gate("admit", real.admit(a)),
    stepStarted: (id, step, data) => gate(`started:${step}`, real.stepStarted(id, step, data)),
    recordUpid: (id, step, upid) => gate(`upid:${step}`, real.recordUpid(id, step, upid)),
    stepDone: (id, step, data) => gate(`done:${step}`, real.stepDone(id, step, data)),
    finish: (id, status, detail) => gate(`finish:${status}`, real.finish(id, status, detail)),
    recordProvenance: (vmid, kind, opId, marker) => gate("provenance", real.recordProvenance(vmid, kind, opId, marker)),
    clearProvenance: (vmid) => gate("clear-provenance", real.clearProvenance(vmid)),
    audit: (e) => gate(`audit:${e.action}`, real.audit(e))
  }
}

const runWithCrash = (at: number, when: "before" | "after", archive: "good" | "health" = "good") =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({}))
    if (archive === "health") yield* sim.setArchive(BACKUP_100, { corrupt: "health" })
    const path = dbFile()
    const counter: Counter = { writes: 0, names: [] }
    const before = yield* customers(sim)
    const first = yield* runToExit(restoreTestPass(desired)).pipe(Effect.provide(agentLayer(sim, path, crashing(at, when, counter))))
    const recovered = yield* runToExit(
      Effect.gen(function*() {
        const results = yield* recover
        const j = yield* Journal
        const ops = yield* j.list({ limit: 20 })
        const provenance = yield* Effect.forEach(ops.filter((o) => o.vmid !== null), (o) => j.provenanceOf(o.vmid!))
        return { results, inFlight: yield* j.inFlight, ops, provenance }
      })
    ).pipe(Effect.provide(agentLayer(sim, path)))
    return { sim, path, first, recovered, before, counter }
  }))

describe("restore-test: a crash at every step", () => {
  it.scoped("after or before every journal write: recovery leaves no scratch guest, touches no customer guest, holds nothing, runs no task twice", () =>
    Effect.gen(function*() {
      const clean = yield* runWithCrash(Number.MAX_SAFE_INTEGER, "after")
      expect(Exit.isSuccess(clean.first)).toBe(true)
      const total = clean.counter.writes
      // begin, restore (started, provenance, upid, done), start, check, stop, destroy, finish
      expect(clean.counter.names).toEqual(expect.arrayContaining([
        "admit", "started:restore", "provenance", "upid:restore", "done:restore", "started:start", "upid:start", "done:start",
        "started:check", "done:check", "started:stop", "upid:stop", "started:destroy", "upid:destroy", "done:destroy", "clear-provenance", "finish:done"
      ]))
      expect(clean.counter.names.indexOf("provenance")).toBeLessThan(clean.counter.names.indexOf("upid:restore"))
      const seen = new Set<string>()
      for (const when of ["after", "before"] as const) {
        for (let k = 1; k <= total; k++) {
          const r = yield* runWithCrash(k, when)
          const label = `crash ${when} write ${k} (${clean.counter.names[k - 1]})`
          expect(Exit.isSuccess(r.recovered), label).toBe(true)
          if (!Exit.isSuccess(r.recovered)) continue
          const { inFlight, ops, provenance, results } = r.recovered.value
          expect(inFlight, label).toEqual([])
          expect(yield* scratchGuests(r.sim), `${label}: ${JSON.stringify(results)}`).toEqual([])
          expect(yield* customers(r.sim), label).toEqual(r.before)
          expect(yield* customerMutations(r.sim), label).toEqual([])
          expect(provenance.filter(Option.isSome), label).toEqual([])
          const op = ops.find((o) => o.kind === "restore-test")
          if (op !== undefined) {
            expect(["done", "failed"], `${label}: ${op.status} ${op.detail}`).toContain(op.status)
            expect(yield* countTasks(r.sim, "vzrestore", op.vmid!), label).toBeLessThanOrEqual(1)
            expect(yield* countTasks(r.sim, "vzstart", op.vmid!), label).toBeLessThanOrEqual(1)
            seen.add(op.status)
          }
        }
      }
      // both ends were reached: interrupted tests recovered as failed, a crash after the finish is done
      expect([...seen].sort()).toEqual(["done", "failed"])
    }), 600_000)

  it.scoped("an interrupted test whose check had passed is recorded with that verdict; one interrupted earlier as a failure", () =>
    Effect.gen(function*() {
      const clean = yield* runWithCrash(Number.MAX_SAFE_INTEGER, "after")
      const afterCheck = clean.counter.names.indexOf("done:check") + 1
      const afterRestore = clean.counter.names.indexOf("done:restore") + 1
      for (const [k, expected] of [[afterCheck, "pass"], [afterRestore, "fail"]] as const) {
        const r = yield* runWithCrash(k, "after")
        const tests = yield* Effect.flatMap(ProtectionStore, (s) => s.restoreTests(5)).pipe(Effect.provide(agentLayer(r.sim, r.path)))
        expect(tests).toHaveLength(1)
        expect(tests[0]).toMatchObject({ vmid: 100, archive: BACKUP_100, result: expected })
        expect(tests[0]!.detail).toContain("interrupted by an agent restart; scratch torn down")
      }
    }), 120_000)
})

// ---------------------------------------------------------------------------------------------
// Confusion: a scratch guest is never confused with a customer guest

const M_A = "felhom-scratch-00000000000000aa" as ScratchMarker
const M_B = "felhom-scratch-00000000000000bb" as ScratchMarker
const M_C = "felhom-scratch-00000000000000cc" as ScratchMarker
const lookalike = (vmid: number, tags: string, status = "stopped") => ({
  vmid,
  status,
  config: { ...config101, hostname: `look-${vmid}`, tags, rootfs: `local-lvm:vm-${vmid}-disk-0,size=4G` }
})

describe("restore-test: confusion attempts", () => {
  it.scoped("the gate refuses every look-alike (customer guest at a scratch vmid, copied marker without journal, another op's marker, a vmid outside the range, an extra tag), recovery holds them, nothing is destroyed", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({
        guests: [
          ...base.guests,
          lookalike(999_900, M_A), // a customer guest (adopted) at a scratch vmid, even carrying a marker
          lookalike(999_901, M_B), // a copied marker, no journal provenance
          lookalike(999_902, M_A), // provenance of op A; op B asks
          lookalike(450, M_C), // outside the range, with journal provenance and its marker
          lookalike(999_903, `${M_C};customer`) // the marker plus another tag
        ]
      }))
      const path = dbFile()
      const layer = agentLayer(sim, path)
      const seq0 = yield* sim.requestSeq
      const begin = (vmid: number, marker: ScratchMarker) =>
        Effect.map(beginOperation<"restore-test">({
          _tag: "restore-test",
          vmid: VmId.make(vmid),
          source: VmId.make(100),
          archive: VolumeId.make(BACKUP_100),
          storage: StorageId.make("local-lvm"),
          marker
        }), (s) => s.id)
      const refusals = yield* Effect.gen(function*() {
        const guests = yield* GuestRecords
        const opCustomer = yield* begin(999_900, M_A)
        yield* guests.recordProvenance(999_900, "scratch", opCustomer, M_A)
        yield* guests.markCustomer(999_900, "adopted: present and desired")
        const opCopied = yield* begin(999_901, M_B)
        const opA = yield* begin(999_902, M_A)
        yield* guests.recordProvenance(999_902, "scratch", opA, M_A)
        const opB = yield* begin(999_902, M_B)
        const opOutside = yield* begin(450, M_C)
        yield* guests.recordProvenance(450, "scratch", opOutside, M_C)
        const opExtra = yield* begin(999_903, M_C)
        yield* guests.recordProvenance(999_903, "scratch", opExtra, M_C)
        const cases = [[opCustomer, 999_900], [opCopied, 999_901], [opB, 999_902], [opOutside, 450], [opExtra, 999_903], [opA, 100]] as const
        const out: Array<string> = []
        for (const [op, vmid] of cases) {
          const r = yield* Effect.either(clearScratchTeardown(op, VmId.make(vmid)))
          expect(Either.isLeft(r), `${op} at ${vmid}`).toBe(true)
          if (Either.isLeft(r)) out.push(r.left.message)
        }
        // op A's own guest is the control: it is provably op A's
        expect((yield* scratchVerdict(opA, VmId.make(999_902)))._tag).toBe("ours")
        return out
      }).pipe(Effect.provide(layer))
      expect(refusals[0]).toContain("recorded as a customer guest")
      expect(refusals[1]).toContain("does not record 999901 as scratch")
      expect(refusals[2]).toContain("does not record 999902 as scratch of op")
      expect(refusals[3]).toContain("outside the scratch range")
      expect(refusals[4]).toContain("does not carry exactly the scratch marker")
      expect(refusals[5]).toContain("is not a restore-test of scratch guest 100")

      // recovery: op A's guest is torn down (and op B, asking after it, finds nothing left); every
      // look-alike is held, none destroyed or stopped
      const recovered = yield* run(recover).pipe(Effect.provide(layer))
      expect(recovered.map((r) => `${r.vmid}:${r.outcome}`).sort()).toEqual([
        "450:needs_operator", "999900:needs_operator", "999901:needs_operator", "999902:failed", "999902:failed", "999903:needs_operator"
      ])
      const left = (yield* sim.guests).map((g) => g.vmid)
      expect(left).toEqual(expect.arrayContaining([999_900, 999_901, 450, 999_903, ...CUSTOMERS]))
      expect(left).not.toContain(999_902)
      const deletes = (yield* sim.requests).filter((r) => r.seq > seq0 && r.method === "DELETE").map((r) => r.path)
      expect(deletes).toEqual(["/nodes/pve/lxc/999902"])
      const audits = yield* Effect.flatMap(Journal, (j) => j.auditTail(50)).pipe(Effect.provide(layer))
      expect(audits.filter((a) => a.decision === "refused:scratch").map((a) => a.target).sort()).toEqual(["100", "450", "999900", "999901", "999902", "999903"])
      expect(audits.filter((a) => a.action === "restore-test" && a.decision === "needs_operator").map((a) => a.target).sort()).toEqual(["450", "999900", "999901", "999903"])
    }))

  it.scoped("a scratch guest whose tags changed during the test is held for an operator, never destroyed", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const path = dbFile()
      const out = yield* Effect.gen(function*() {
        const fiber = yield* Effect.fork(restoreTestPass(desired))
        let scratch: number | undefined
        for (let i = 0; i < 600 && scratch === undefined; i++) {
          yield* settle
          scratch = (yield* scratchGuests(sim)).find((g) => g.status === "running")?.vmid
          if (scratch === undefined) yield* TestClock.adjust("500 millis")
        }
        // someone (an operator, a hub-driven change) retags it: it is no longer provably ours
        yield* Effect.flatMap(Proxmox, (p) => p.setConfig(VmId.make(scratch!), { set: { tags: "customer" } }))
        for (let i = 0; i < 600 && fiber.unsafePoll() === null; i++) {
          yield* settle
          yield* TestClock.adjust("500 millis")
        }
        const o = tested(yield* Fiber.join(fiber))
        return { o, op: Option.getOrThrow(yield* Effect.flatMap(OpLog, (j) => j.get(o.opId))), held: yield* Effect.flatMap(OpLog, (j) => j.list({ status: "needs_operator" })) }
      }).pipe(Effect.provide(agentLayer(sim, path)))
      expect(out.o).toMatchObject({ result: "pass", teardown: "needs_operator" })
      expect(out.op.status).toBe("needs_operator")
      expect(out.held.map((h) => h.vmid)).toEqual([out.o.scratch])
      expect(Option.isSome(yield* sim.guest(out.o.scratch))).toBe(true)
      expect(yield* countTasks(sim, "vzdestroy", out.o.scratch)).toBe(0)
    }))

  it.scoped("a customer guest already at a scratch vmid: the test picks another vmid and never touches it", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ guests: [...base.guests, lookalike(999_900, "customer", "running")] }))
      const before = Option.getOrThrow(yield* sim.guest(999_900))
      const o = tested(yield* run(restoreTestPass(desired)).pipe(Effect.provide(agentLayer(sim, dbFile()))))
      expect(o.scratch).toBe(999_901)
      expect(o.result).toBe("pass")
      expect(Option.getOrThrow(yield* sim.guest(999_900))).toEqual(before)
      expect((yield* sim.requests).filter((r) => r.method !== "GET" && r.path.includes("/999900"))).toEqual([])
    }))

  it.scoped("reconcile plans nothing in the scratch range: a hub cannot create, adopt, reconfigure or remove a guest there", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ guests: [...base.guests, lookalike(999_900, "customer", "running"), lookalike(999_901, "customer")] }))
      const hostile = desiredOf([guest(100, "cust-alpha"), guest(999_900, "take-over"), guest(999_950, "squatter")])
      const [p, records] = yield* Effect.zip(planNow(hostile), Effect.flatMap(GuestRecords, (g) => g.guestRecords)).pipe(
        Effect.provide(agentLayer(sim, dbFile()))
      )
      expect(p.actions.filter((a) => inRange(a.vmid))).toEqual([])
      expect(p.notes.filter((n) => inRange(n.vmid)).map((n) => [n.vmid, n.reason])).toEqual([[999_900, "held"], [999_901, "held"], [999_950, "held"]])
      expect(p.notes.find((n) => n.vmid === 999_950)?.message).toContain("reserved restore-test scratch range")
      expect(records.map((r) => r.vmid)).toEqual([100])
    }))

  it.scoped("a hub desired state that lists the scratch vmid: reconcile holds it while the test runs (no action, no adoption); the test still tears its guest down", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const layer = agentLayer(sim, dbFile())
      const out = yield* Effect.gen(function*() {
        const fiber = yield* Effect.fork(restoreTestPass(desired))
        let scratch: number | undefined
        for (let i = 0; i < 600 && scratch === undefined; i++) {
          yield* settle
          const running = (yield* scratchGuests(sim)).find((g) => g.status === "running")
          scratch = running?.vmid
          if (scratch === undefined) yield* TestClock.adjust("500 millis")
        }
        const vmid = scratch!
        const marker = String(Option.getOrThrow(yield* sim.guest(vmid)).config["tags"])
        // the hub lists the scratch guest, with its marker tag even, and wants it stopped
        const hostile = desiredOf([guest(100, "cust-alpha"), { ...guest(vmid, "mine-now"), power: "stopped", tags: [marker] }])
        const p = yield* planNow(hostile)
        const records = yield* Effect.flatMap(GuestRecords, (g) => g.guestRecords)
        for (let i = 0; i < 600 && fiber.unsafePoll() === null; i++) {
          yield* settle
          yield* TestClock.adjust("500 millis")
        }
        return { vmid, p, records, o: tested(yield* Fiber.join(fiber)) }
      }).pipe(Effect.provide(layer))
      expect(out.p.actions.filter((a) => a.vmid === out.vmid)).toEqual([])
      expect(out.p.notes.find((n) => n.vmid === out.vmid)?.reason).toBe("held")
      expect(out.records.map((r) => r.vmid)).not.toContain(out.vmid)
      expect(out.o).toMatchObject({ scratch: out.vmid, result: "pass", teardown: "done" })
      expect(yield* scratchGuests(sim)).toEqual([])
    }))
})

// ---------------------------------------------------------------------------------------------
// Choosing the test

describe("restore-test: which test runs", () => {
  const listing = (target: typeof LOCAL | typeof PBS, entries: ReadonlyArray<Json>) => {
    const d = desiredOf([], [target])
    return { target: { ...d.storage![0]!, policy: d.storage![0]!.policy! }, entries: entries as never }
  }
  const entry = (storage: string, vmid: number, ctime: number) => ({
    volid: storage === "pbs1" ? `pbs1:backup/ct/${vmid}/2026-01-0${ctime}T00:00:00Z` : `local:backup/vzdump-lxc-${vmid}-2026_01_0${ctime}-00_00_00.tar.zst`,
    content: "backup",
    vmid,
    ctime,
    size: GiB
  })
  const now = Date.parse("2026-02-01T12:00:00Z")
  const guests = [VmId.make(100), VmId.make(101)]

  it("the newest archive per guest; never run first by vmid; a recent run is not due under the weekly default", () => {
    const local = listing(LOCAL, [entry("local", 100, 1), entry("local", 100, 3), entry("local", 101, 2)])
    const all = chooseRestoreTests({ guests, listings: [local], runs: [], checks: [], now, tz: UTC })
    expect(all.map((c) => [c.source, c.archive, c.reason])).toEqual([
      [100, "local:backup/vzdump-lxc-100-2026_01_03-00_00_00.tar.zst", "never_run"],
      [101, "local:backup/vzdump-lxc-101-2026_01_02-00_00_00.tar.zst", "never_run"]
    ])
    const ran = { kind: "restore_test" as const, vmid: 100, storage: "local", lastAttemptMs: now - 3600_000, lastSuccessMs: null, lastResult: "ok" as const, detail: "" }
    expect(chooseRestoreTests({ guests, listings: [local], runs: [ran], checks: [], now, tz: UTC }).map((c) => c.source)).toEqual([101])
  })

  it("a failed integrity check newer than the last test comes first; the longest overdue next; vzdump before pbs on a tie", () => {
    const local = listing(LOCAL, [entry("local", 100, 1), entry("local", 101, 1)])
    const pbs = listing(PBS, [entry("pbs1", 100, 1)])
    const runFor = (vmid: number, storage: string, daysAgo: number) => ({
      kind: "restore_test" as const, vmid, storage, lastAttemptMs: now - daysAgo * 86_400_000, lastSuccessMs: null, lastResult: "ok" as const, detail: ""
    })
    const runs = [runFor(100, "local", 20), runFor(101, "local", 10), runFor(100, "pbs1", 20)]
    expect(chooseRestoreTests({ guests, listings: [pbs, local], runs, checks: [], now, tz: UTC }).map((c) => `${c.source}@${c.target}`))
      .toEqual(["100@local", "100@pbs1", "101@local"])
    const failed = { volid: "local:backup/vzdump-lxc-101-2026_01_01-00_00_00.tar.zst", storage: "local", vmid: 101, checkedMs: now - 1000, ok: false, detail: "damaged" }
    const first = chooseRestoreTests({ guests, listings: [pbs, local], runs, checks: [failed], now, tz: UTC })[0]
    expect(first).toMatchObject({ source: 101, target: "local", reason: "integrity_failed" })
    // a failure older than the last test no longer jumps the queue
    const stale = { ...failed, checkedMs: now - 11 * 86_400_000 }
    expect(chooseRestoreTests({ guests, listings: [pbs, local], runs, checks: [stale], now, tz: UTC })[0]?.reason).not.toBe("integrity_failed")
  })
})

// ---------------------------------------------------------------------------------------------
// Integrity verify

const unsupported = (name: string) => () => Effect.die(`Privileged.${name} is not part of these tests`)
/** A Privileged whose archive test damns the archives in `damaged` and fails to run for `broken`. */
const fakePrivileged = (damaged: ReadonlySet<string>, broken: ReadonlySet<string>, seen: Array<string>) =>
  Layer.succeed(Privileged, {
    createGoldenContainer: unsupported("createGoldenContainer"),
    dumpGoldenArchive: unsupported("dumpGoldenArchive"),
    destroyGoldenContainer: unsupported("destroyGoldenContainer"),
    mountUsb: unsupported("mountUsb"),
    unmountUsb: unsupported("unmountUsb"),
    usbState: unsupported("usbState"),
    guestSystemState: unsupported("guestSystemState"),
    bindMountIntoGuest: unsupported("bindMountIntoGuest"),
    unbindFromGuest: unsupported("unbindFromGuest"),
    writeBootstrap: unsupported("writeBootstrap"),
    removeBootstrap: unsupported("removeBootstrap"),
    smart: unsupported("smart"),
    sensors: unsupported("sensors"),
    verifyArchive: (path: string) =>
      Effect.suspend(() => {
        seen.push(path)
        if (broken.has(path)) return Effect.fail(new PrivilegedError({ reason: "Timeout", command: "tar", message: "tar: timed out" }))
        return Effect.succeed(damaged.has(path)
          ? { ok: false as const, compression: "zst" as const, stage: "compression" as const, exitCode: 1, reason: "Corrupted block detected" }
          : { ok: true as const, compression: "zst" as const })
      })
  } satisfies PrivilegedShape)

describe("integrity verify", () => {
  const PBS_STORAGE = {
    storage: "pbs1", type: "pbs", server: "pbs.example.net", datastore: "felhom", username: "felhom@pbs!host1", fingerprint: PBS_FP, content: ["backup"], total: 1024 * GiB, used: 10 * GiB
  }
  const snap = (vmid: number, time: string, verification?: "ok" | "failed") => ({
    storage: "pbs1", vmid, time, size: 734003200, notes: "nightly", ...(verification === undefined ? {} : { verification }), config: config101
  })

  it.scoped("PBS: the verification state PVE lists is the verdict (ok, failed; none yet is no verdict); a failure makes that guest's restore-test due first", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({
        storages: [...base.storages, PBS_STORAGE],
        backups: [...base.backups, backup101, snap(100, "2026-01-20T03:00:00Z", "ok"), snap(100, "2026-01-21T03:00:00Z", "failed"), snap(101, "2026-01-21T03:00:00Z")]
      }))
      const path = dbFile()
      const layer = Layer.merge(agentLayer(sim, path), fakePrivileged(new Set(), new Set(), []))
      const two = desiredOf([guest(100, "cust-alpha"), guest(101, "cust-beta")], [LOCAL, PBS])
      const out = yield* run(verifyPass(two)).pipe(Effect.provide(layer))
      const pbs = out.filter((o) => o.storage === "pbs1").map((o) => [o.vmid, o.volid, o.result])
      expect(pbs).toEqual([[100, "pbs1:backup/ct/100/2026-01-21T03:00:00Z", "damaged"], [101, "pbs1:backup/ct/101/2026-01-21T03:00:00Z", "unchecked"]])
      const checks = yield* Effect.flatMap(ProtectionStore, (s) => s.archiveChecks).pipe(Effect.provide(layer))
      expect(checks.filter((c) => c.storage === "pbs1").map((c) => [c.vmid, c.ok])).toEqual([[100, false]])
      // both guests were never tested on either target: the damaged one goes first, from PBS
      const o = tested(yield* run(restoreTestPass(two)).pipe(Effect.provide(layer)))
      expect(o.candidate).toMatchObject({ source: 100, target: "pbs1", reason: "integrity_failed", archive: "pbs1:backup/ct/100/2026-01-21T03:00:00Z" })
    }))

  it.scoped("vzdump: Privileged's archive test on <storage path>/dump/<file>; damage is recorded and jumps the queue; a test that cannot run is no verdict; daily by default", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ backups: [...base.backups, backup101] }))
      const seen: Array<string> = []
      const p100 = "/var/lib/vz/dump/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
      const p101 = "/var/lib/vz/dump/vzdump-lxc-101-2026_01_14-03_10_00.tar.zst"
      const layer = Layer.merge(agentLayer(sim, dbFile()), fakePrivileged(new Set([p101]), new Set([p100]), seen))
      const two = desiredOf([guest(100, "cust-alpha"), guest(101, "cust-beta")])
      const out = yield* run(verifyPass(two)).pipe(Effect.provide(layer))
      expect(seen.sort()).toEqual([p100, p101])
      expect(out.map((o) => [o.vmid, o.result])).toEqual([[100, "unchecked"], [101, "damaged"]])
      const [checks, runs] = yield* Effect.all([Effect.flatMap(ProtectionStore, (s) => s.archiveChecks), Effect.flatMap(ProtectionStore, (s) => s.runs)]).pipe(Effect.provide(layer))
      expect(checks.map((c) => [c.volid, c.ok])).toEqual([[BACKUP_101, false]])
      expect(runs.filter((r) => r.kind === "verify").map((r) => [r.vmid, r.lastResult])).toEqual([[100, "skipped"], [101, "failed"]])
      // 101 is tested first although 100 has the lower vmid, and its test of the damaged archive is recorded
      const o = tested(yield* run(restoreTestPass(two)).pipe(Effect.provide(layer)))
      expect(o.candidate).toMatchObject({ source: 101, reason: "integrity_failed", archive: BACKUP_101 })
      // not due again the same day; due after the next midnight
      expect(yield* run(verifyPass(two)).pipe(Effect.provide(layer))).toEqual([])
      yield* TestClock.adjust("1 day")
      expect((yield* run(verifyPass(two)).pipe(Effect.provide(layer))).length).toBe(2)
    }))

  it("the archive path: only a container vzdump file on a storage with an absolute path", () => {
    const local = { storage: "local", type: "dir", path: "/var/lib/vz/" }
    expect(archivePathOf(local, BACKUP_100)).toEqual(Option.some("/var/lib/vz/dump/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"))
    expect(archivePathOf(local, "local:backup/../../etc/shadow")).toEqual(Option.none())
    expect(archivePathOf(local, "local:backup/vzdump-qemu-100-2026_01_14-03_00_02.vma.zst")).toEqual(Option.none())
    expect(archivePathOf({ storage: "pbs1", type: "pbs" }, "pbs1:backup/ct/100/2026-01-21T03:00:00Z")).toEqual(Option.none())
    expect(archivePathOf(undefined, BACKUP_100)).toEqual(Option.none())
  })
})

// ---------------------------------------------------------------------------------------------
// The production health probe

describe("health probe: pct exec <vmid> -- systemctl is-system-running", () => {
  const vmid = VmId.make(999_900)

  it.live("runs exactly that argv and reads systemd's state from stdout, whatever the exit status", () => {
    const bin = makeBinDir()
    return Effect.gen(function*() {
      bin.fake("pct", { stdout: "running\n" })
      expect(expectValue(yield* withPriv(bin, (p) => p.guestSystemState(vmid)))).toBe("running")
      expect(bin.argv("pct")?.slice(1)).toEqual(["exec", "999900", "--", "systemctl", "is-system-running"])
      bin.fake("pct", { stdout: "degraded\n", exit: 1 })
      expect(expectValue(yield* withPriv(bin, (p) => p.guestSystemState(vmid)))).toBe("degraded")
      bin.fake("pct", { stdout: "", stderr: "container '999900' not running!\n", exit: 255 })
      const e = expectError(yield* withPriv(bin, (p) => p.guestSystemState(vmid)))
      expect([e.reason, e.exitCode]).toEqual(["NonZeroExit", 255])
      bin.fake("pct", { stdout: "running; rm -rf /\n" })
      expect(expectError(yield* withPriv(bin, (p) => p.guestSystemState(vmid))).reason).toBe("NonZeroExit")
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("refuses a bad vmid before spawning anything", () => {
    const bin = makeBinDir()
    bin.fake("pct", { stdout: "running\n" })
    return Effect.gen(function*() {
      for (const bad of [99, 1_000_000_000, "999900 -- sh" as unknown as number]) {
        const e = expectError(yield* withPriv(bin, (p) => p.guestSystemState(bad as VmId)))
        expect([e.reason, e.argument]).toEqual(["InvalidArgument", "vmid"])
      }
      expect(bin.argv("pct")).toBeUndefined()
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.effect("GuestHealthLive: running is up and healthy, degraded up and failing, starting booting, offline not up, a failed probe no verdict", () =>
    Effect.gen(function*() {
      const answers: Array<Either.Either<string, PrivilegedError>> = [
        Either.right("running"), Either.right("degraded"), Either.right("starting"), Either.right("offline"),
        Either.left(new PrivilegedError({ reason: "NonZeroExit", command: "pct", exitCode: 255, message: "pct: exited with status 255" }))
      ]
      const priv = Layer.succeed(Privileged, {
        guestSystemState: () => Effect.suspend(() => Either.match(answers.shift()!, { onLeft: Effect.fail, onRight: (s) => Effect.succeed(s as "running") }))
      } as unknown as PrivilegedShape)
      const readings = yield* Effect.flatMap(GuestHealth, (h) => Effect.forEach([1, 2, 3, 4, 5], () => Effect.either(h.probe(vmid)))).pipe(
        Effect.provide(GuestHealthLive.pipe(Layer.provide(priv)))
      )
      expect(readings.map((r) => (Either.isRight(r) ? `${r.right.phase}${r.right.phase === "up" ? `:${r.right.ok}` : ""}` : r.left._tag))).toEqual([
        "up:true", "up:false", "booting", "stopped", "GuestHealthError"
      ])
    }))

  const sandbox = makeSudoSandbox()
  it.skipIf(sandbox === undefined)("the sudoers drop-in allows exactly that argv (needs root + unshare)", () => {
    expect(sandbox!.allows(["/usr/sbin/pct", "exec", "999900", "--", "systemctl", "is-system-running"])).toBe(true)
    for (const denied of [
      ["/usr/sbin/pct", "exec", "999900", "--", "sh"],
      ["/usr/sbin/pct", "exec", "999900", "--", "systemctl", "is-system-running", "--wait"],
      ["/usr/sbin/pct", "exec", "999900", "--", "systemctl", "stop", "ssh"],
      ["/usr/sbin/pct", "exec", "99", "--", "systemctl", "is-system-running"],
      ["/usr/sbin/pct", "enter", "999900"]
    ]) {
      expect(sandbox!.allows(denied), denied.join(" ")).toBe(false)
    }
    sandbox!.cleanup()
  })
})

// ---------------------------------------------------------------------------------------------
// The host report and the dev hub

describe("restore-tests in the host report and the dev hub", () => {
  it.scoped("the report carries each test (result, archive, op, phase timings; skipped without an op) and the newest integrity check per guest and target; the dev hub shows each once, a failure as a warning", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ backups: [...base.backups, backup101] }))
      const layer = Layer.merge(
        agentLayer(sim, dbFile()),
        fakePrivileged(new Set(["/var/lib/vz/dump/vzdump-lxc-101-2026_01_14-03_10_00.tar.zst"]), new Set(), [])
      )
      const two = desiredOf([guest(100, "cust-alpha"), guest(101, "cust-beta")])
      yield* sim.setArchive(BACKUP_101, { corrupt: "health" })
      yield* run(verifyPass(two)).pipe(Effect.provide(layer))
      tested(yield* run(restoreTestPass(two)).pipe(Effect.provide(layer))) // 101: damaged, first; fails
      yield* sim.setStorage("local-lvm", { total: 30 * GiB, used: 0 })
      expect((yield* run(restoreTestPass(two)).pipe(Effect.provide(layer)))._tag).toBe("skipped") // 100
      const self = yield* selfTestsForReport.pipe(Effect.provide(layer))

      expect(self.restoreTests.map((t) => [t.vmid, t.result, t.archive])).toEqual([[100, "skipped", BACKUP_100], [101, "fail", BACKUP_101]])
      const [skipped, failed] = self.restoreTests
      expect(skipped).toMatchObject({ op_id: null, timings_ms: { restore: null, start: null, check: null, teardown: null } })
      expect(failed!.op_id).toMatch(/^[0-9a-f-]{36}$/)
      for (const k of ["restore", "start", "check", "teardown"] as const) expect(failed!.timings_ms[k], k).toBeGreaterThan(0)
      expect(self.archiveChecks.map((c) => [c.vmid, c.storage, c.ok])).toEqual([[100, "local", true], [101, "local", false]])
      for (const t of self.restoreTests) Schema.decodeUnknownSync(ReportRestoreTest, { onExcessProperty: "error" })(t)
      for (const c of self.archiveChecks) Schema.decodeUnknownSync(ReportArchiveCheck, { onExcessProperty: "error" })(c)

      // the dev hub: the same tests reported twice are shown once
      const golden = JSON.parse(readFileSync(join(__dirname, "fixtures", "hub", "host-report.golden.json"), "utf8")) as Json
      const report = Schema.encodeSync(HostReport)({
        ...Schema.decodeUnknownSync(HostReport)(golden),
        restore_tests: self.restoreTests,
        archive_checks: self.archiveChecks
      })
      const hub = yield* makeDevHub({ apiKeys: { "k-0123456789abcdef": "pve-hel1-07" } })
      const http = makeAppHttpClient(hub.app).pipe(HttpClient.mapRequest(HttpClientRequest.bearerToken("k-0123456789abcdef")))
      const lines: Array<string> = []
      const logger = Logger.make(({ logLevel, message }) => lines.push(`${logLevel.label} ${String(message)}`))
      for (let i = 0; i < 2; i++) {
        const status = yield* http.execute(HttpClientRequest.post("https://hub.invalid/api/v1/host-report").pipe(HttpClientRequest.bodyUnsafeJson(report))).pipe(
          Effect.map((r) => r.status),
          Effect.orDie,
          Effect.provide(Logger.replace(Logger.defaultLogger, logger))
        )
        expect(status).toBe(200)
      }
      const view = yield* hub.view("pve-hel1-07")
      expect(view.restore_tests.map((t) => [t.vmid, t.result])).toEqual([[100, "skipped"], [101, "fail"]])
      const shown = lines.filter((l) => l.includes("restore-test of guest"))
      expect(shown).toHaveLength(2)
      expect(shown[0]).toMatch(/^WARN host pve-hel1-07: restore-test of guest 101 from local:backup\/vzdump-lxc-101-.*: FAIL \(restore [\d.]+ s, start [\d.]+ s, check [\d.]+ s, teardown [\d.]+ s\): booted, but services failing/)
      expect(shown[1]).toMatch(/^INFO host pve-hel1-07: restore-test of guest 100 .*: SKIPPED \(restore -, start -, check -, teardown -\): local-lvm has/)
    }))
})
