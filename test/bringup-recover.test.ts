/**
 * Guest-loss recovery end to end against the simulator (issue 12): the plan, the signature, the
 * fresh restore with the scenario's identity, bulk re-attach, and what a failure leaves.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Either, Fiber, Layer, Option, TestClock } from "effect"
import { GuestRecords } from "../src/layers/GuestRecords.js"
import { OpLog } from "../src/layers/OpLog.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { confirmLink, runRecover } from "../src/programs/bringup/recoverGuest.js"
import { recoverPlan, type RecoverPlan } from "../src/programs/bringup/tiers.js"
import { ControllerOpFailed, ControllerOps, type ControllerOpsShape } from "../src/programs/controller/ops.js"
import { clearForConsole } from "../src/programs/control/gate.js"
import { recover } from "../src/programs/control/recover.js"
import { VmId } from "../src/schema/ids.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { agentLayer, type AgentServices, dbFile, GOLDEN, job, operator, runTimed, settle, signedOp } from "./engine-support.js"
import { executePlan, planNow } from "../src/programs/control/apply.js"
import { runSignedJob } from "../src/programs/control/jobs.js"
import { decodeDesiredState } from "../src/schema/desired.js"
import { guestsJson, protectionSeed, T0, USB } from "./protection-support.js"

const V100 = VmId.make(100)
const MAC100 = "BC:24:11:3A:5C:01"

const net0Of = (sim: SimPve, vmid: number) =>
  Effect.map(sim.guest(vmid), (g) => String(Option.getOrThrow(g).config["net0"] ?? ""))

/** Guest 100 with a bulk volume (mp1, backup=0), backed up to usb1, then lost: the bulk volume outlives it. */
const loseGuest100 = (sim: SimPve, opts: { readonly bulk: boolean } = { bulk: true }) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const records = yield* GuestRecords
    if (opts.bulk) {
      const c = clearForConsole({ call: "set-config-volumes", vmid: V100, keys: ["mp1"] }, "test setup: a bulk volume")
      const u = yield* pve.setConfigVolumes(V100, { set: { mp1: "local-lvm:2,mp=/srv/media,backup=0" } }, c)
      if (Option.isSome(u)) yield* pve.waitTask(u.value)
    }
    const dump = yield* pve.vzdump({ vmid: V100, storage: USB, mode: "snapshot" })
    yield* pve.waitTask(Option.getOrThrow(dump))
    yield* records.markCustomer(V100, "test setup")
    yield* pve.waitTask(yield* pve.stop(V100))
    // the loss: the guest's config and rootfs are gone; its bulk volume is not (a separate disk)
    if (opts.bulk) yield* sim.setMountPoint(100, "mp1", null)
    expect(yield* sim.rootDestroy(100)).toBe("ok")
    yield* records.markLost(V100, "test: gone")
  })

const planFor = (scenario: "total" | "partial") =>
  recoverPlan(V100, { scenario, source: "auto", desired: null, placement: undefined, manifest: [] })

const volumesOf100 = (sim: SimPve) =>
  Effect.map(sim.storageContent("local-lvm"), (vs) => vs.map((v) => String(v["volid"])).filter((v) => /vm-100-/.test(v)).sort())

const withSim = <A, E>(body: (sim: SimPve) => Effect.Effect<A, E, AgentServices>, extra: Layer.Layer<never> = Layer.empty) =>
  Effect.gen(function*() {
    // after the seed's own backups, so the backup taken here is the newest
    yield* TestClock.setTime(T0)
    const sim = yield* makeSimPve(yield* protectionSeed())
    return yield* body(sim).pipe(Effect.provide(Layer.merge(agentLayer(sim, dbFile()), extra)))
  })

/** The operator's signature over exactly the plan's params, made at the current (simulated) time. */
const REPO = "registry.felhom.dev/felhom/controller"
/** A host that serves a local API with the operator's repository: the plan defers a new guest's start behind its deploy. */
const viewOnly: ControllerOpsShape = {
  view: Effect.succeed({ deployed: new Map(), repositories: [REPO], failedUpdates: new Map() }),
  deploy: () => Effect.void,
  update: () => Effect.void,
  undeploy: () => Effect.void,
  reidentify: () => Effect.succeed("no_controller" as const)
}

const signFor = (plan: RecoverPlan, params: Record<string, unknown> = plan.gatedParams) =>
  Effect.map(Clock.currentTimeMillis, (now) => signedOp({ op: "recover", guest_id: plan.vmid, params: { ...params } }, operator, now))

describe("recover: guest-loss DR", () => {
  it.scoped("a lost customer guest: the plan needs a signature, and nothing runs without one", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim))
        const plan = yield* runTimed(planFor("total"))
        expect(plan.mode).toBe("fresh")
        expect(plan.point.tier).toBe("vzdump")
        expect(plan.needsSignature).toBe(true)
        const before = (yield* sim.requests).length
        const r = yield* runTimed(runRecover(plan, Option.none(), "test"))
        expect(r.outcome).toBe("pending_signature")
        expect(r.opId).toBeNull()
        expect((yield* sim.requests).slice(before).filter((q) => q.method !== "GET")).toEqual([])
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
      })
    ))

  it.scoped("total loss, signed: back from its backup with the same MAC, its tags, running; the surviving bulk volume re-attached", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim))
        const orphan = (yield* volumesOf100(sim)).filter((v) => v.endsWith("disk-1"))
        expect(orphan).toEqual(["local-lvm:vm-100-disk-1"])
        const plan = yield* runTimed(planFor("total"))
        const r = yield* runTimed(runRecover(plan, Option.some(yield* signFor(plan)), "test"))
        expect(r.outcome).toBe("done")
        const g = Option.getOrThrow(yield* sim.guest(100))
        expect(g.status).toBe("running")
        expect(String(g.config["net0"])).toContain(`hwaddr=${MAC100}`)
        expect(String(g.config["net0"])).not.toContain("link_down=1")
        expect(String(g.config["tags"])).toBe("customer;felhom")
        // the original bulk volume is mp1 again; the empty one PVE recreated is kept as unused
        expect(String(g.config["mp1"])).toMatch(/^local-lvm:vm-100-disk-1,mp=\/srv\/media,backup=0/)
        expect(Object.entries(g.config).filter(([k]) => /^unused\d+$/.test(k)).map(([, v]) => v)).toEqual(["local-lvm:vm-100-disk-2"])
        expect(yield* volumesOf100(sim)).toEqual(["local-lvm:vm-100-disk-0", "local-lvm:vm-100-disk-1", "local-lvm:vm-100-disk-2"])
        expect(r.bulk.map((b) => [b.volume, b.status])).toEqual([["mp1", "reattachable"]])
        const rec = (yield* Effect.flatMap(GuestRecords, (x) => x.guestRecords)).find((x) => x.vmid === 100)
        expect(rec?.state).toBe("customer")
        const op = Option.getOrThrow(yield* Effect.flatMap(OpLog, (o) => o.get(r.opId!)))
        expect(op.status).toBe("done")
        expect(op.steps.map((s) => s.name)).toEqual(["restore", "identity", "resize", "configure", "seal", "untag", "reattach", "start"])
      })
    ))

  it.scoped("partial loss: a fresh MAC, every NIC link-down until the operator confirms", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim, { bulk: false }))
        const plan = yield* runTimed(planFor("partial"))
        const r = yield* runTimed(runRecover(plan, Option.some(yield* signFor(plan)), "test"))
        expect(r.outcome).toBe("done")
        const net0 = yield* net0Of(sim, 100)
        expect(net0).not.toContain(MAC100)
        expect(net0).toContain("link_down=1")
        expect(yield* runTimed(confirmLink(V100))).toEqual(["net0"])
        expect(yield* net0Of(sim, 100)).not.toContain("link_down=1")
      })
    ))

  it.scoped("a signature for another restore point is refused (binding_mismatch) and nothing runs", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim, { bulk: false }))
        const plan = yield* runTimed(planFor("total"))
        const other = yield* signFor(plan, { ...plan.gatedParams, point: "usb1:backup/vzdump-lxc-100-2020_01_01-00_00_00.tar.zst" })
        const r = yield* runTimed(runRecover(plan, Option.some(other), "test"))
        expect(r.outcome).toBe("rejected")
        expect(r.detail).toContain("binding_mismatch")
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
      })
    ))

  it.scoped("a failure before the seal destroys only the restored instance: the lost guest's bulk volume survives", () => {
    const failing: ControllerOpsShape = {
      view: Effect.succeed({ deployed: new Map(), repositories: [], failedUpdates: new Map() }),
      deploy: () => Effect.void,
      update: () => Effect.void,
      undeploy: () => Effect.void,
      reidentify: () => Effect.fail(new ControllerOpFailed({ message: "bootstrap helper failed" }))
    }
    return withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim))
        const plan = yield* runTimed(planFor("total"))
        const r = yield* runTimed(runRecover(plan, Option.some(yield* signFor(plan)), "test"))
        expect(r.outcome).toBe("rolled_back")
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
        // destroy-unreferenced-disks=0: the orphan bulk volume of vmid 100 is still there
        expect(yield* volumesOf100(sim)).toEqual(["local-lvm:vm-100-disk-1"])
        const deletes = (yield* sim.requests).filter((q) => q.method === "DELETE")
        expect(deletes.length).toBe(1)
        expect(deletes[0]!.params["destroy-unreferenced-disks"]).toBe("0")
      })
    , Layer.succeed(ControllerOps, failing) as Layer.Layer<never>)
  })

  it.scoped("a crash after the restore and before the seal: journal recovery destroys exactly that instance", () => {
    // the process dies while the identity step waits on the bootstrap helper
    const hanging: ControllerOpsShape = {
      view: Effect.succeed({ deployed: new Map(), repositories: [], failedUpdates: new Map() }),
      deploy: () => Effect.void,
      update: () => Effect.void,
      undeploy: () => Effect.void,
      reidentify: () => Effect.never
    }
    return withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim))
        const plan = yield* runTimed(planFor("total"))
        const fiber = yield* Effect.fork(runRecover(plan, Option.some(yield* signFor(plan)), "test"))
        for (let i = 0; i < 400; i++) {
          yield* settle
          const ops = yield* Effect.flatMap(OpLog, (o) => o.inFlight)
          if (ops.some((o) => o.steps.some((s) => s.name === "identity"))) break
          yield* TestClock.adjust("500 millis")
        }
        yield* Fiber.interrupt(fiber)
        expect(Option.isSome(yield* sim.guest(100))).toBe(true)
        const results = yield* runTimed(recover)
        expect(results.map((x) => [x.kind, x.outcome])).toEqual([["recover", "rolled_back"]])
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
        expect(yield* volumesOf100(sim)).toEqual(["local-lvm:vm-100-disk-1"])
      })
    , Layer.succeed(ControllerOps, hanging) as Layer.Layer<never>)
  })

  it.scoped("the plan names what it looked at when there is nothing to recover from", () =>
    withSim(() =>
      Effect.gen(function*() {
        const e = yield* Effect.flip(runTimed(recoverPlan(VmId.make(150), { scenario: "total", source: "auto", desired: null, placement: undefined, manifest: [] })))
        expect(e._tag).toBe("NoRestorePoint")
        expect(e.message).toContain("looked at")
      })
    ))

  it.scoped("reconcile offers a lost guest the hub still wants as a recover pending signature; the operator's signed job brings it back", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim, { bulk: false }))
        const desired = Either.getOrThrow(decodeDesiredState({ generation: 7, guests: [guestsJson[0]] }))
        const p = yield* runTimed(planNow(desired))
        const action = p.actions.find((a) => a.kind === "recover")
        expect(action?.vmid).toBe(100)
        expect(p.actions.filter((a) => a.kind === "create")).toEqual([]) // never recreated blank
        expect(p.notes.find((n) => n.vmid === 100)?.message).toContain("waits for an operator's signature")
        const outcomes = yield* runTimed(executePlan(p))
        const pending = outcomes.find((o) => o.action === "recover")!
        expect(pending.verdict).toBe("pending_signature")
        expect(pending.result).toBe("not_run")
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
        // the operator signs exactly the params the report shows; the hub relays it as a job
        const params = pending.params!
        expect(params["tier"]).toBe("vzdump")
        const signed = signedOp({ op: "recover", guest_id: 100, params }, operator, yield* Clock.currentTimeMillis)
        const result = yield* runTimed(runSignedJob(job({ op: "recover", guest_id: 100, params }, signed)))
        expect(result.status).toBe("done")
        const g = Option.getOrThrow(yield* sim.guest(100))
        expect(String(g.config["net0"])).toContain(`hwaddr=${MAC100}`)
        expect(g.config["hostname"]).toBe("cust-alpha")
        // the next pass has nothing left to do for it
        const again = yield* runTimed(planNow(desired))
        expect(again.actions.filter((a) => a.vmid === 100)).toEqual([])
      })
    ))

  it.scoped("a hub job whose signed point is no longer the plan's is refused, nothing restored", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* runTimed(loseGuest100(sim, { bulk: false }))
        const plan = yield* runTimed(planFor("total"))
        const params = { ...plan.gatedParams, point: "usb1:backup/vzdump-lxc-100-2020_01_01-00_00_00.tar.zst" }
        const signed = signedOp({ op: "recover", guest_id: 100, params }, operator, yield* Clock.currentTimeMillis)
        const result = yield* runTimed(runSignedJob(job({ op: "recover", guest_id: 100, params }, signed)))
        expect(result.status).toBe("failed")
        expect(result.reason).toContain("re-sign")
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
      })
    ))

  it.scoped("a lost state database: the hub's create of a vmid whose backups the journal cannot account for is refused (with its back half and deferred start), offered as a recover", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        // guest 100 backed up, then lost, and the agent's records of it gone with its database
        yield* runTimed(loseGuest100(sim, { bulk: false }))
        yield* Effect.flatMap(GuestRecords, (r) => r.forgetGuest(V100))
        yield* Effect.flatMap(GuestRecords, (r) => r.registerGolden(GOLDEN, "signed", "test-setup"))
        const desired = Either.getOrThrow(decodeDesiredState({
          generation: 3,
          provisioning: { golden_archive: GOLDEN, storage: "local-lvm" },
          guests: [{ ...guestsJson[0], controller: { image: `${REPO}:1.0.0` } }]
        }))
        const p = yield* runTimed(planNow(desired))
        expect(p.actions.filter((a) => a.vmid === 100).map((a) => a.kind)).toEqual(["recover"])
        expect(p.notes.find((n) => n.vmid === 100)?.message).toContain("not created blank: backups of 100 exist")
        yield* runTimed(executePlan(p))
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
        const rec = (yield* Effect.flatMap(GuestRecords, (x) => x.guestRecords)).find((x) => x.vmid === 100)
        expect(rec?.state).toBe("lost")
      })
    , Layer.succeed(ControllerOps, viewOnly) as Layer.Layer<never>))

  it.scoped("after a signed decommission, the vmid's older backups do not block a new guest", () =>
    withSim(() =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const dump = yield* runTimed(pve.vzdump({ vmid: VmId.make(101), storage: USB, mode: "snapshot" }))
        yield* runTimed(pve.waitTask(Option.getOrThrow(dump)))
        yield* TestClock.adjust("1 minute")
        const signed = signedOp({ op: "decommission", guest_id: 101 }, operator, yield* Clock.currentTimeMillis)
        expect((yield* runTimed(runSignedJob(job({ op: "decommission", guest_id: 101 }, signed)))).status).toBe("done")
        yield* Effect.flatMap(GuestRecords, (r) => r.registerGolden(GOLDEN, "signed", "test-setup"))
        const desired = Either.getOrThrow(decodeDesiredState({
          generation: 4,
          provisioning: { golden_archive: GOLDEN, storage: "local-lvm" },
          guests: [guestsJson[0], { ...guestsJson[0], vmid: 101, hostname: "new-tenant" }]
        }))
        const p = yield* runTimed(planNow(desired))
        expect(p.actions.filter((a) => a.vmid === 101).map((a) => a.kind)).toEqual(["create"])
      })
    ))
})
