/**
 * Reconcile engine, gate and signed jobs against the simulator (in-process, TestClock), with a
 * real Journal and Authz on SQLite. The adversarial matrix asserts, for every "no", that the
 * simulator's guests were not touched.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber, Option, TestClock } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { Journal } from "../src/layers/Journal.js"
import { executePlan, observeActual, planNow, signatureKey } from "../src/programs/control/apply.js"
import { runSignedJob, type SignedJob } from "../src/programs/control/jobs.js"
import { plan } from "../src/programs/control/plan.js"
import { recover } from "../src/programs/control/recover.js"
import { decodeDesiredState, type DesiredState } from "../src/schema/desired.js"
import { VmId } from "../src/schema/ids.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { agentLayer, type AgentServices, dbFile, job, recoveryKey, registerGolden, runTimed, settle, signedOp, stranger } from "./engine-support.js"
import { seedWith } from "./support.js"

const desired = (name: string): DesiredState =>
  Either.getOrThrow(decodeDesiredState(JSON.parse(readFileSync(join(__dirname, "fixtures", "desired", name), "utf8"))))

/** What the gate must not have touched: every guest's status, lock and config. */
const snapshotGuests = (sim: SimPve) =>
  Effect.map(sim.guests, (gs) => JSON.stringify(gs.map((g) => ({ vmid: g.vmid, status: g.status, lock: g.lock, config: g.config, snaps: g.snapshots.length }))))

const withSim = <A, E>(body: (sim: SimPve, path: string) => Effect.Effect<A, E, AgentServices>) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({ task_durations_ms: { vzrestore: 4000, vzdump: 3000 } }))
    const path = dbFile()
    return yield* Effect.zipRight(registerGolden, body(sim, path)).pipe(Effect.provide(agentLayer(sim, path)))
  }))

const countTasks = (sim: SimPve, type: string, vmid: number) =>
  Effect.map(sim.tasks, (ts) => ts.filter((t) => t.type === type && t.id === String(vmid)).length)


describe("reconcile engine", () => {
  it.scoped("converges benign drift, creates by golden restore, and holds the destroy pending_signature", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const want = desired("sim-mixed.json")
        const before102 = yield* sim.guest(102)
        const p = (yield* planNow(want))
        const outcomes = yield* runTimed(executePlan(p))
        const byKey = Object.fromEntries(outcomes.map((o) => [`${o.action}:${o.vmid}`, `${o.verdict}/${o.result}`]))
        expect(byKey).toEqual({
          "resize:100": "allowed/applied",
          "set_config:101": "allowed/applied",
          "start:101": "allowed/applied",
          "destroy:102": "pending_signature/not_run",
          "create:110": "allowed/applied"
        })
        // converged except the destroy, which waits for an operator
        const again = (yield* planNow(want))
        expect(again.actions.map((a) => `${a.kind}:${a.vmid}`)).toEqual(["destroy:102"])
        const created = yield* sim.guest(110)
        expect(created._tag === "Some" && created.value.config["features"]).toBe("keyctl=1,nesting=1")
        expect(created._tag === "Some" && created.value.status).toBe("running")
        expect(yield* sim.guest(102)).toEqual(before102)
        // every decision audited, chain intact
        const journal = yield* Journal
        expect((yield* journal.auditTail(50)).filter((e) => e.actor === "reconcile").length).toBe(5)
        expect((yield* journal.verifyAudit).ok).toBe(true)
      })))

  it.scoped("a destroy in the desired state runs with a signature bound to it", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* sim.setLock(102, undefined)
        const want: DesiredState = { ...desired("sim-converged.json"), guests: desired("sim-converged.json").guests.filter((g) => g.vmid !== 101) }
        const p = (yield* planNow(want))
        expect(p.actions.map((a) => `${a.kind}:${a.vmid}`)).toEqual(["destroy:101"])
        const sig = signedOp({ op: "decommission", guest_id: 101 })
        const outcomes = yield* runTimed(executePlan(p, new Map([[signatureKey("decommission", VmId.make(101)), sig]])))
        expect(outcomes.map((o) => `${o.verdict}/${o.result}`)).toEqual(["signed_ok/applied"])
        expect((yield* sim.guest(101))._tag).toBe("None")
      })))

  it.scoped("a guest the agent created is customer data once the create finished: removing it needs a signature", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const want = desired("sim-mixed.json")
        yield* runTimed(executePlan((yield* planNow(want))))
        expect((yield* sim.guest(110))._tag).toBe("Some")
        const before = yield* snapshotGuests(sim)
        const without110: DesiredState = { ...want, guests: want.guests.filter((g) => g.vmid !== 110) }
        const outcomes = yield* runTimed(executePlan(plan(yield* observeActual, without110)))
        expect(outcomes.filter((o) => o.vmid === 110).map((o) => `${o.action}:${o.verdict}`)).toEqual(["destroy:pending_signature"])
        expect(yield* snapshotGuests(sim)).toBe(before)
      })))

  it.scoped("a create that fails half-way removes what it built (same-transaction rollback)", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const want = desired("sim-mixed.json")
        const only110 = { ...(yield* planNow(want)) }
        const p = { ...only110, actions: only110.actions.filter((a) => a.vmid === 110) }
        // every task fails from now: the restore itself fails, PVE removes the guest
        yield* sim.setFaults({ task_failure_rate: 1 })
        const [outcome] = yield* runTimed(executePlan(p))
        expect(outcome).toMatchObject({ action: "create", result: "failed" })
        expect((yield* sim.guest(110))._tag).toBe("None")
        const journal = yield* Journal
        expect((yield* journal.list({ limit: 1 }))[0]).toMatchObject({ kind: "create", status: "rolled_back" })
        expect(Option.isNone(yield* journal.provenanceOf(110))).toBe(true)
      })))

  it.scoped("finding 2: a create whose compensation fails is held needs_operator: never resumed, converged or destroyed later", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const want = desired("sim-mixed.json")
        const all = (yield* planNow(want))
        const p = { ...all, actions: all.actions.filter((a) => a.vmid === 110) }
        const fiber = yield* Effect.fork(executePlan(p))
        // let the restore finish, then make every further task fail (resize, then the compensating destroy)
        for (let i = 0; i < 200; i++) {
          yield* settle
          const g = yield* sim.guest(110)
          if (Option.isSome(g) && g.value.lock === undefined) break
          yield* TestClock.adjust("500 millis")
        }
        yield* sim.setFaults({ task_failure_rate: 1 })
        for (let i = 0; i < 200 && fiber.unsafePoll() === null; i++) {
          yield* settle
          yield* TestClock.adjust("500 millis")
        }
        const [outcome] = yield* Fiber.join(fiber)
        expect(outcome).toMatchObject({ action: "create", result: "failed" })
        const journal = yield* Journal
        expect(yield* journal.inFlight).toEqual([])
        const held = yield* journal.list({ status: "needs_operator" })
        expect(held.map((o) => `${o.kind}:${o.vmid}`)).toEqual(["create:110"])
        expect((yield* sim.guest(110))._tag).toBe("Some")
        yield* sim.setFaults({ task_failure_rate: 0 })
        // a restart's recovery has nothing to do: the held op is not in flight
        expect(yield* runTimed(recover)).toEqual([])
        // the hub keeps the guest: reconcile leaves 110 alone (no resize, no start)
        const keep = yield* planNow(want)
        expect(keep.actions.filter((a) => a.vmid === 110)).toEqual([])
        expect(keep.notes.find((n) => n.vmid === 110)?.reason).toBe("held")
        // the hub drops it: still nothing planned for 110, so no unsigned destroy can even be judged
        const dropped = yield* planNow({ ...want, guests: want.guests.filter((g) => g.vmid !== 110) })
        expect(dropped.actions.filter((a) => a.vmid === 110)).toEqual([])
        yield* runTimed(executePlan(dropped))
        expect((yield* sim.guest(110))._tag).toBe("Some")
        expect(yield* countTasks(sim, "vzdestroy", 110)).toBe(1) // only the failed compensation attempt
      })))

  it.scoped("a hub-supplied scratch tag is not provenance: the destroy stays pending", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const base = desired("sim-converged.json")
        // the hub first tags 101 scratch, then drops it from the desired state
        const tagged: DesiredState = { ...base, guests: base.guests.map((g) => g.vmid === 101 ? { ...g, tags: ["scratch"], description: "scratch restore-test" } : g) }
        yield* runTimed(executePlan((yield* planNow(tagged))))
        const before = yield* snapshotGuests(sim)
        const dropped: DesiredState = { ...base, guests: base.guests.filter((g) => g.vmid !== 101) }
        const outcomes = yield* runTimed(executePlan((yield* planNow(dropped))))
        expect(outcomes.map((o) => `${o.action}:${o.verdict}`)).toEqual(["destroy:pending_signature"])
        expect(yield* snapshotGuests(sim)).toBe(before)
      })))
})

describe("the adversarial matrix: the gate says no and nothing is touched", () => {
  const refused = (name: string, build: () => SignedJob, expected: string) =>
    it.scoped(name, () =>
      withSim((sim) =>
        Effect.gen(function*() {
          const before = yield* snapshotGuests(sim)
          const tasksBefore = (yield* sim.tasks).length
          const r = yield* runTimed(runSignedJob(build()))
          expect(`${r.status}:${r.reason}`).toMatch(new RegExp(`^${expected}`))
          expect(yield* snapshotGuests(sim)).toBe(before)
          expect((yield* sim.tasks).length).toBe(tasksBefore)
        })))

  refused("unsigned decommission job → pending_signature", () => job({ op: "decommission", guest_id: 101 }), "pending_signature")
  refused("unsigned restore-now job → pending_signature", () => job({ op: "restore-now", guest_id: 101, params: { snapshot: "pre_upgrade" } }), "pending_signature")
  refused("unknown signer → UnknownSigner", () => job({ op: "decommission", guest_id: 101 }, signedOp({ op: "decommission", guest_id: 101 }, stranger)), "rejected:UnknownSigner")
  refused("expired → Expired", () => job({ op: "decommission", guest_id: 101 }, signedOp({ op: "decommission", guest_id: 101, expiresInMs: -3_600_000 })), "rejected:Expired")
  refused("wrong host → Target", () => job({ op: "decommission", guest_id: 101 }, signedOp({ op: "decommission", guest_id: 101, host_id: "host-other" })), "rejected:Target")
  refused("wrong guest → binding_mismatch", () => job({ op: "decommission", guest_id: 101 }, signedOp({ op: "decommission", guest_id: 100 })), "rejected:binding_mismatch")
  refused("wrong op → binding_mismatch", () => job({ op: "decommission", guest_id: 101 }, signedOp({ op: "restore-now", guest_id: 101 })), "rejected:binding_mismatch")
  refused("wrong params → binding_mismatch", () =>
    job({ op: "restore-now", guest_id: 101, params: { snapshot: "pre_upgrade" } }, signedOp({ op: "restore-now", guest_id: 101, params: { snapshot: "other" } })), "rejected:binding_mismatch")
  refused("recovery key on an ordinary destructive op → role_denied", () =>
    job({ op: "decommission", guest_id: 101 }, signedOp({ op: "decommission", guest_id: 101 }, recoveryKey)), "rejected:role_denied")
  refused("an unknown op class is destructive → pending_signature", () => job({ op: "wipe-everything", guest_id: null }), "pending_signature")

  it.scoped("valid + role + target + fresh nonce → executed once; the replay is rejected, also after a restart", () =>
    Effect.scoped(Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const path = dbFile()
      const signed = signedOp({ op: "restore-now", guest_id: 101, params: { snapshot: "pre_upgrade" } })
      const first = job({ op: "restore-now", guest_id: 101, params: { snapshot: "pre_upgrade" } }, signed)
      const r1 = yield* runTimed(runSignedJob(first)).pipe(Effect.provide(agentLayer(sim, path)))
      expect(r1.status).toBe("done")
      const rollbacks = (yield* sim.tasks).filter((t) => t.type === "vzrollback").length
      expect(rollbacks).toBe(1)
      // the hub redelivers the same job: not run again
      const r2 = yield* runTimed(runSignedJob(first)).pipe(Effect.provide(agentLayer(sim, path)))
      expect(r2.status).toBe("duplicate")
      // the same signed blob under a new job id, after a restart (new connection, new layers)
      const before = yield* snapshotGuests(sim)
      const replay = { ...first, id: "job-replayed" }
      const r3 = yield* runTimed(runSignedJob(replay)).pipe(Effect.provide(agentLayer(sim, path)))
      expect(`${r3.status}:${r3.reason}`).toMatch(/^rejected:Replay/)
      expect((yield* sim.tasks).filter((t) => t.type === "vzrollback").length).toBe(1)
      expect(yield* snapshotGuests(sim)).toBe(before)
    })))

  it.scoped("a signed decommission runs once through the real Proxmox path", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const r = yield* runTimed(runSignedJob(job({ op: "decommission", guest_id: 101 }, signedOp({ op: "decommission", guest_id: 101 }))))
        expect(r.status).toBe("done")
        expect((yield* sim.guest(101))._tag).toBe("None")
        const journal = yield* Journal
        const ops = yield* journal.list({ limit: 5 })
        expect(ops[0]).toMatchObject({ kind: "decommission", vmid: 101, status: "done" })
      })))

  it.scoped("a signed restore-now from a backup takes a safety backup first, then overwrites and restarts the guest", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const content = yield* sim.storageContent("local")
        const nightly = content.find((c) => String(c["volid"]).includes("vzdump-lxc-100-"))!
        const params = { backup: String(nightly["volid"]), storage: "local-lvm", backup_storage: "local" }
        const r = yield* runTimed(runSignedJob(job({ op: "restore-now", guest_id: 100, params }, signedOp({ op: "restore-now", guest_id: 100, params }))))
        expect(`${r.status}:${r.reason}`).toMatch(/^done/)
        const types = (yield* sim.tasks).filter((t) => t.id === "100").map((t) => t.type)
        // the safety backup comes first, then stop, the overwrite, and the restart
        expect(types).toEqual(["vzdump", "vzstop", "vzrestore", "vzstart"])
        expect((yield* sim.storageContent("local")).length).toBe(content.length + 1)
        const g = yield* sim.guest(100)
        expect(g._tag === "Some" && g.value.status).toBe("running")
      })))

  it.scoped("force-backup is benign: it runs unsigned", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const before = (yield* sim.storageContent("local")).length
        const r = yield* runTimed(runSignedJob(job({ op: "force-backup", guest_id: 100, params: { storage: "local" } })))
        expect(r.status).toBe("done")
        expect((yield* sim.storageContent("local")).length).toBe(before + 1)
      })))
})

