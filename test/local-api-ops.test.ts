/**
 * The local API's mutations (issue 11): the gate's controller-rollback clearance, the api-snapshot
 * and api-rollback sagas, and their recovery rules, against the in-process simulator with a real
 * Journal and ControllerStore.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, FastCheck as fc, Fiber, Option, Schema, TestClock } from "effect"
import { Proxmox } from "../src/layers/Proxmox.js"
import { AuditLog } from "../src/layers/AuditLog.js"
import { ControllerStore } from "../src/layers/ControllerStore.js"
import { OpLog } from "../src/layers/OpLog.js"
import { clearControllerRollback } from "../src/programs/control/gate.js"
import { beginOperation } from "../src/programs/control/steps.js"
import { apiRollback, apiSnapshot, recoverApiRollback, recoverApiSnapshot } from "../src/programs/localapi/ops.js"
import { SnapshotName } from "../src/schema/ids.js"
import { decodeOperation, type OperationOf } from "../src/schema/operations.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, runTimed, settle } from "./engine-support.js"
import { apiLayer, recordSnap, seedWithSnapshots, snapNames, vm } from "./local-api-support.js"
import { durations } from "./support.js"

const withSim = <A, E>(
  snaps: Readonly<Record<number, ReadonlyArray<string>>>,
  body: (sim: SimPve, path: string) => Effect.Effect<A, E, any>,
  extra: Record<string, unknown> = {}
) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWithSnapshots(snaps, { ...durations(2000), ...extra }))
    const path = dbFile()
    return yield* (body(sim, path) as Effect.Effect<A, E, never>).pipe(Effect.provide(apiLayer(sim, path)))
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
