/**
 * The local API's mutations (issue 11): the gate's controller-rollback clearance, the api-snapshot
 * and api-rollback sagas, and their recovery rules, against the in-process simulator with a real
 * Journal and ControllerStore.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, Fiber, type Layer, Option, Schema, type Scope, TestClock, type TestServices } from "effect"
import { Proxmox } from "../src/layers/Proxmox.js"
import { AuditLog } from "../src/layers/AuditLog.js"
import { ControllerStore } from "../src/layers/ControllerStore.js"
import { OpLog } from "../src/layers/OpLog.js"
import { clearControllerRollback } from "../src/programs/control/gate.js"
import { beginOperation } from "../src/programs/control/steps.js"
import { apiRollback, apiSnapshot, recoverApiRollback, recoverApiSnapshot } from "../src/programs/localapi/ops.js"
import { SnapshotName } from "../src/schema/ids.js"
import type { ApiFailure } from "../src/schema/localApi.js"
import { decodeOperation, type OperationOf } from "../src/schema/operations.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, runTimed, settle } from "./engine-support.js"
import { apiLayer, recordSnap, seedWithSnapshots, snapNames, vm } from "./local-api-backend-support.js"
import { durations } from "./support.js"

const withSim = <A, E>(
  snaps: Readonly<Record<number, ReadonlyArray<string>>>,
  body: (sim: SimPve, path: string) => Effect.Effect<A, E, Layer.Layer.Success<ReturnType<typeof apiLayer>> | Scope.Scope | TestServices.TestServices>,
  extra: Record<string, unknown> = {}
) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWithSnapshots(snaps, { ...durations(2000), ...extra }))
    const path = dbFile()
    return yield* body(sim, path).pipe(Effect.provide(apiLayer(sim, path)))
  }))

const rollbackOp = (vmid: number, snapshot: string) =>
  beginOperation<"api-rollback">({ _tag: "api-rollback", vmid: vm(vmid), snapshot: SnapshotName.make(snapshot) })

const refusal = <A>(e: Either.Either<A, { readonly _tag: string; readonly message: string }>) =>
  Either.isLeft(e) ? `${e.left._tag}: ${e.left.message}` : "issued"

describe("clearControllerRollback", () => {
  it.scoped("issues a rollback clearance for a recorded ctl- snapshot PVE lists for this guest, and audits it", () =>
    withSim({ 100: ["ctl-a"] }, () =>
      Effect.gen(function*() {
        yield* recordSnap(100, "ctl-a", "controller")
        const op = yield* rollbackOp(100, "ctl-a")
        const c = yield* clearControllerRollback(op.id, vm(100), "ctl-a")
        expect(c.call).toEqual({ call: "rollback", vmid: 100, snapshot: "ctl-a" })
        expect(c.basis).toEqual({ basis: "provenance", opId: op.id })
        const [last] = yield* Effect.flatMap(AuditLog, (a) => a.auditTail(1))
        expect(last).toMatchObject({ actor: "gate", action: "rollback", target: "100", decision: "allowed" })
      })))

  it.scoped("refuses an operator's snapshot, PVE's vzdump, another guest's, a deleted one, a mismatched origin, and a wrong op", () =>
    withSim({ 100: ["ctl-b", "vzdump", "felhom-preupd-7", "ctl-m"], 101: ["pre_upgrade", "ctl-b"] }, () =>
      Effect.gen(function*() {
        yield* recordSnap(101, "ctl-b", "controller") // recorded for 101 only
        yield* recordSnap(100, "ctl-gone", "controller") // recorded, never (or no longer) in PVE
        yield* recordSnap(100, "ctl-m", "pre-update") // origin does not match the prefix
        yield* recordSnap(100, "felhom-preupd-7", "pre-update")
        const try100 = (name: string) =>
          Effect.gen(function*() {
            const op = yield* beginOperation<"api-rollback">({ _tag: "api-rollback", vmid: vm(100), snapshot: SnapshotName.make(name === "vzdump" ? "ctl-b" : name) })
            return refusal(yield* Effect.either(clearControllerRollback(op.id, vm(100), name)))
          })
        expect(yield* try100("ctl-b")).toMatch(/no record of taking this snapshot for this guest/)
        expect(yield* try100("vzdump")).toMatch(/does not roll back to this snapshot|only ctl- and felhom-preupd-/)
        expect(yield* try100("ctl-gone")).toMatch(/PVE does not list it/)
        expect(yield* try100("ctl-m")).toMatch(/recorded as a pre-update snapshot/)
        const op101 = yield* rollbackOp(101, "pre_upgrade")
        expect(refusal(yield* Effect.either(clearControllerRollback(op101.id, vm(101), "pre_upgrade")))).toMatch(/only ctl- and felhom-preupd-/)
        // the pre-update one is issued; but not for an op of another guest, a finished op, or another snapshot than the op's
        const good = yield* rollbackOp(100, "felhom-preupd-7")
        expect(refusal(yield* Effect.either(clearControllerRollback(good.id, vm(100), "felhom-preupd-7")))).toBe("issued")
        expect(refusal(yield* Effect.either(clearControllerRollback(op101.id, vm(100), "felhom-preupd-7")))).toMatch(/not a controller rollback or update of guest 100/)
        expect(refusal(yield* Effect.either(clearControllerRollback(good.id, vm(100), "ctl-b")))).toMatch(/does not roll back to this snapshot/)
        yield* Effect.flatMap(OpLog, (o) => o.finish(good.id, "done"))
        expect(refusal(yield* Effect.either(clearControllerRollback(good.id, vm(100), "felhom-preupd-7")))).toMatch(/not in flight/)
        const refused = (yield* Effect.flatMap(AuditLog, (a) => a.auditTail(50))).filter((e) => e.decision === "refused:controller-rollback")
        expect(refused.length).toBeGreaterThanOrEqual(8)
      })))

  it.scoped("property: issued iff recorded for this vmid with the prefix's origin and listed by PVE for this vmid", () =>
    withSim({ 100: [], 101: [] }, () =>
      Effect.gen(function*() {
        const names = ["ctl-a", "ctl-b", "felhom-preupd-1", "pre_upgrade", "vzdump", "ctlx"]
        const store = yield* ControllerStore
        const pve = yield* Proxmox
        const origin = fc.constantFrom("controller" as const, "pre-update" as const)
        const arb = fc.record({
          vmid: fc.constantFrom(100, 101),
          name: fc.constantFrom(...names),
          records: fc.array(fc.record({ vmid: fc.constantFrom(100, 101), name: fc.constantFrom(...names), origin }), { maxLength: 6 }),
          listed: fc.array(fc.record({ vmid: fc.constantFrom(100, 101), name: fc.constantFrom(...names) }), { maxLength: 6 })
        })
        let issued = 0
        for (const s of fc.sample(arb, { numRuns: 60, seed: 11 })) {
          for (const v of [100, 101]) for (const r of yield* store.snapshots(vm(v))) yield* store.forgetSnapshot(vm(v), r.name)
          for (const r of s.records) yield* store.recordSnapshot({ vmid: vm(r.vmid), name: r.name, origin: r.origin, opId: "seed", takenMs: 0 })
          // PVE's listing per guest, as the sample says
          const fake = { ...pve, listSnapshots: (v: number) => Effect.succeed(s.listed.filter((x) => x.vmid === v).map((x) => ({ name: x.name }))) }
          const payload = Schema.is(SnapshotName)(s.name) ? s.name : "ctl-a"
          const op = yield* rollbackOp(s.vmid, payload)
          const got = yield* Effect.either(clearControllerRollback(op.id, vm(s.vmid), s.name).pipe(Effect.provideService(Proxmox, fake)))
          yield* Effect.flatMap(OpLog, (o) => o.finish(op.id, "failed"))
          // the last record of a (vmid, name) wins (recordSnapshot upserts)
          const rec = [...s.records].reverse().find((r) => r.vmid === s.vmid && r.name === s.name)
          const want = payload === s.name &&
            s.listed.some((x) => x.vmid === s.vmid && x.name === s.name) &&
            ((s.name.startsWith("ctl-") && rec?.origin === "controller") || (s.name.startsWith("felhom-preupd-") && rec?.origin === "pre-update"))
          expect(Either.isRight(got), JSON.stringify(s)).toBe(want)
          if (want) issued++
        }
        expect(issued).toBeGreaterThan(0)
      })))
})

// ---------------------------------------------------------------------------------------------
// The sagas

const code = <A>(e: Either.Either<A, { readonly _tag: string }>) =>
  Either.isLeft(e) ? (e.left._tag === "ApiFailure" ? (e.left as unknown as { code: string }).code : e.left._tag) : "ok"

const opsOf = (kind: string) => Effect.flatMap(OpLog, (o) => Effect.map(o.list({ limit: 100 }), (l) => l.filter((x) => x.kind === kind)))

const tasksOf = (sim: SimPve, type: string) => Effect.map(sim.tasks, (ts) => ts.filter((t) => t.type === type))

/** Runs `eff` until op `kind`'s step has its UPID recorded, then interrupts it (a crash mid-task). */
const crashWhenUpid = <A, E, R>(eff: Effect.Effect<A, E, R>, kind: string) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(eff)
    for (let i = 0; i < 400; i++) {
      yield* settle
      const flying = yield* Effect.flatMap(OpLog, (o) => o.inFlight)
      if (flying.some((o) => o.kind === kind && o.steps.some((s) => s.upid !== null))) break
      yield* TestClock.adjust("100 millis")
    }
    yield* Fiber.interrupt(fiber)
    const [op] = (yield* Effect.flatMap(OpLog, (o) => o.inFlight)).filter((o) => o.kind === kind)
    expect(op).toBeDefined()
    return op!
  })

const typedOf = <K extends "api-snapshot" | "api-rollback">(payload: unknown, kind: K) => {
  const d = decodeOperation(payload)
  if (Either.isLeft(d) || d.right._tag !== kind) throw new Error("bad payload")
  return d.right as OperationOf<K>
}

describe("api-snapshot", () => {
  it.scoped("takes ctl-<name>, provenance recorded with its op; a taken name and the cap are 409", () =>
    withSim({ 100: ["manual"] }, (sim) =>
      Effect.gen(function*() {
        const r = yield* runTimed(apiSnapshot(vm(100), { name: "one" }, 2))
        expect(r.snapshot).toBe("ctl-one")
        expect(yield* snapNames(sim, 100)).toEqual(["ctl-one", "manual"])
        const [op] = yield* opsOf("api-snapshot")
        expect(op?.status).toBe("done")
        const rec = Option.getOrThrow(yield* Effect.flatMap(ControllerStore, (s) => s.snapshotOf(vm(100), "ctl-one")))
        expect(rec).toMatchObject({ origin: "controller", opId: op!.id })
        expect(code(yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "one" }, 2))))).toBe("conflict")
        yield* runTimed(apiSnapshot(vm(100), { name: "two" }, 2))
        // the operator's snapshot does not count against the controller's cap
        const third = yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "three" }, 2)))
        expect(code(third)).toBe("conflict")
        expect(Either.isLeft(third) && third.left.message).toMatch(/2 ctl- snapshots/)
        expect(yield* snapNames(sim, 100)).toEqual(["ctl-one", "ctl-two", "manual"])
        expect((yield* opsOf("api-snapshot")).length).toBe(2) // the refusals journaled nothing
        // another guest is not this one
        expect(code(yield* Effect.either(runTimed(apiSnapshot(vm(999), { name: "x" }, 2))))).toBe("not_found")
      })))

  it.scoped("a failed snapshot task removes its provenance; a lock is 409; 5xx/596 are 503 with nothing half-done", () =>
    withSim({}, (sim) =>
      Effect.gen(function*() {
        const store = yield* ControllerStore
        yield* sim.setFaults({ task_failure_types: ["vzsnapshot"] })
        expect(code(yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "a" }, 5))))).toBe("unprocessable")
        expect(yield* snapNames(sim, 100)).toEqual([])
        expect(yield* store.snapshots(vm(100))).toEqual([])
        expect((yield* opsOf("api-snapshot"))[0]?.status).toBe("failed")

        yield* sim.setFaults({ task_failure_types: [] })
        yield* sim.setLock(100, "backup")
        expect(code(yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "b" }, 5))))).toBe("conflict")
        expect(yield* store.snapshots(vm(100))).toEqual([])
        yield* sim.setLock(100, undefined)

        for (const status of [500, 596] as const) {
          yield* sim.setFaults({ http_error_rate: 1, http_error_statuses: [status] })
          const r = yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "c" }, 5)))
          expect(code(r)).toBe("unavailable")
          expect(Either.isLeft(r) && r.left.message).not.toMatch(/PVEAPIToken|root@pam|secret/i)
        }
        yield* sim.setFaults({ http_error_rate: 0 })
        expect(yield* snapNames(sim, 100)).toEqual([])
        expect(yield* store.snapshots(vm(100))).toEqual([])
        expect((yield* Effect.flatMap(OpLog, (o) => o.inFlight)).length).toBe(0)
      })))

  it.scoped("crash mid-snapshot: recovery settles the task and keeps the provenance; a crash before the request forgets it", () =>
    withSim({}, (sim) =>
      Effect.gen(function*() {
        const store = yield* ControllerStore
        const op = yield* crashWhenUpid(apiSnapshot(vm(100), { name: "mid" }, 5), "api-snapshot")
        const out = yield* runTimed(recoverApiSnapshot(op, typedOf(op.payload, "api-snapshot")))
        expect(out.outcome).toBe("done")
        expect(yield* snapNames(sim, 100)).toEqual(["ctl-mid"])
        expect(Option.isSome(yield* store.snapshotOf(vm(100), "ctl-mid"))).toBe(true)

        // provenance recorded, the request never sent: recovery forgets only this op's record
        const early = yield* beginOperation<"api-snapshot">({ _tag: "api-snapshot", vmid: vm(100), snapshot: SnapshotName.make("ctl-early") })
        yield* store.recordSnapshot({ vmid: vm(100), name: "ctl-early", origin: "controller", opId: early.id, takenMs: 1 })
        const early2 = Option.getOrThrow(yield* Effect.flatMap(OpLog, (o) => o.get(early.id)))
        const out2 = yield* runTimed(recoverApiSnapshot(early2, typedOf(early2.payload, "api-snapshot")))
        expect(out2.outcome).toBe("failed")
        expect(Option.isNone(yield* store.snapshotOf(vm(100), "ctl-early"))).toBe(true)
        expect(Option.isSome(yield* store.snapshotOf(vm(100), "ctl-mid"))).toBe(true)
      })))
})

describe("api-rollback", () => {
  it.scoped("rolls a running guest back to its own ctl- snapshot and starts it again", () =>
    withSim({ 100: ["ctl-a"] }, (sim) =>
      Effect.gen(function*() {
        yield* recordSnap(100, "ctl-a", "controller")
        const r = yield* runTimed(apiRollback(vm(100), "ctl-a"))
        expect(r.snapshot).toBe("ctl-a")
        const [task] = yield* tasksOf(sim, "vzrollback")
        expect(task?.exitstatus).toBe("OK")
        const post = (yield* sim.requests).find((q) => q.method === "POST" && q.path.endsWith("/rollback"))
        expect(String(post?.params["start"])).toMatch(/^(1|true)$/)
        expect((yield* opsOf("api-rollback"))[0]?.status).toBe("done")
      })))

  it.scoped("refuses an operator's snapshot, another guest's, one recorded for another vmid, a missing one, a stopped guest", () =>
    withSim({ 100: ["manual", "ctl-b", "ctl-c"], 101: ["ctl-c"] }, (sim) =>
      Effect.gen(function*() {
        yield* recordSnap(101, "ctl-b", "controller") // guest 101's record; PVE lists ctl-b on 100 only
        yield* recordSnap(101, "ctl-c", "controller")
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "manual"))))).toBe("refused")
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-b"))))).toBe("refused")
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-c"))))).toBe("refused")
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-nope"))))).toBe("not_found")
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(101), "ctl-c"))))).toBe("unprocessable") // 101 is stopped
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(999), "ctl-c"))))).toBe("not_found")
        expect(yield* tasksOf(sim, "vzrollback")).toEqual([])
      })))

  it.scoped("a guest with an op in flight or held for an operator is 409 for both mutations", () =>
    withSim({ 100: ["ctl-a"] }, (sim) =>
      Effect.gen(function*() {
        yield* recordSnap(100, "ctl-a", "controller")
        const flying = yield* beginOperation<"stop">({ _tag: "stop", vmid: vm(100) })
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-a"))))).toBe("conflict")
        expect(code(yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "x" }, 5))))).toBe("conflict")
        yield* Effect.flatMap(OpLog, (o) => o.finish(flying.id, "needs_operator", "held"))
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-a"))))).toBe("conflict")
        expect(code(yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "x" }, 5))))).toBe("conflict")
        expect(yield* tasksOf(sim, "vzrollback")).toEqual([])
        expect(yield* tasksOf(sim, "vzsnapshot")).toEqual([])
      })))

  it.scoped("a lock is 409 and a 596 is 503, nothing rolled back; crash mid-rollback settles, an unsent one is never resumed", () =>
    withSim({ 100: ["ctl-a"] }, (sim) =>
      Effect.gen(function*() {
        yield* recordSnap(100, "ctl-a", "controller")
        yield* sim.setLock(100, "backup")
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-a"))))).toBe("conflict")
        yield* sim.setLock(100, undefined)
        yield* sim.setFaults({ http_error_rate: 1, http_error_statuses: [596] })
        expect(code(yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-a"))))).toBe("unavailable")
        yield* sim.setFaults({ http_error_rate: 0 })
        expect((yield* tasksOf(sim, "vzrollback")).filter((t) => t.exitstatus === "OK")).toEqual([])

        const op = yield* crashWhenUpid(apiRollback(vm(100), "ctl-a"), "api-rollback")
        const out = yield* runTimed(recoverApiRollback(op, typedOf(op.payload, "api-rollback")))
        expect(out.outcome).toBe("done")

        const unsent = yield* rollbackOp(100, "ctl-a")
        const rec = Option.getOrThrow(yield* Effect.flatMap(OpLog, (o) => o.get(unsent.id)))
        const before = (yield* tasksOf(sim, "vzrollback")).length
        const out2 = yield* runTimed(recoverApiRollback(rec, typedOf(rec.payload, "api-rollback")))
        expect(out2.outcome).toBe("failed")
        expect((yield* tasksOf(sim, "vzrollback")).length).toBe(before)
      })))
})

describe("secrets", () => {
  it.scoped("a PVE that echoes the token into errors and task logs leaks it into neither the answer nor the journal", () =>
    withSim({ 100: ["ctl-a"] }, (sim) =>
      Effect.gen(function*() {
        yield* recordSnap(100, "ctl-a", "controller")
        yield* sim.setFaults({ echo_headers: ["message", "reason", "params", "task", "body"], task_failure_types: ["vzsnapshot", "vzrollback"] })
        const answers: Array<Either.Either<unknown, ApiFailure>> = [
          yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "s" }, 5))),
          yield* Effect.either(runTimed(apiRollback(vm(100), "ctl-a")))
        ]
        for (const a of answers) expect(Either.isLeft(a)).toBe(true)
        yield* sim.setFaults({ echo_headers: [], task_failure_types: [], http_error_rate: 1, http_error_statuses: [500] })
        answers.push(yield* Effect.either(runTimed(apiSnapshot(vm(100), { name: "t" }, 5))))
        const ops = yield* Effect.flatMap(OpLog, (o) => o.list({ limit: 20 }))
        const text = JSON.stringify(answers) + JSON.stringify(ops)
        expect(ops.length).toBeGreaterThanOrEqual(2)
        expect(text).not.toContain(sim.tokenSecret)
      })))
})

