/**
 * Issue 11, the controller paths of the job runner and the decommission:
 * - the ops the gate passes as benign only because the agent's own plan chose them
 *   (controller-update-policy, controller-deploy) never run as a hub job, signed or not;
 * - a controller-update job runs only with an operator's signature, bound to exactly its image,
 *   with the grant's nonce spent as its op is admitted;
 * - a decommission revokes the guest's controller access before PVE is asked to destroy it.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { Journal } from "../src/layers/Journal.js"
import { runSignedJob } from "../src/programs/control/jobs.js"
import { ControllerOps, type ControllerOpsShape } from "../src/programs/controller/ops.js"
import type { Admission } from "../src/programs/control/steps.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { agentLayer, type AgentServices, dbFile, job, runTimed, signedOp } from "./engine-support.js"
import { seedWith } from "./support.js"

const IMAGE = "registry.felhom.eu/felhom/controller:2.0.0"

interface Seen {
  readonly calls: Array<string>
  readonly admissions: Array<Admission>
}

/** Records what the job runner asks of the controllers (the sagas themselves are tested elsewhere). */
const recordingOps = (seen: Seen, sim: SimPve): ControllerOpsShape => ({
  view: Effect.succeed({ deployed: new Map(), repositories: [], failedUpdates: new Map() }),
  deploy: (vmid, image) => Effect.sync(() => void seen.calls.push(`deploy ${vmid} ${image}`)),
  update: (vmid, image, basis, admission) =>
    Effect.sync(() => {
      seen.calls.push(`update ${vmid} ${image} ${basis.basis}`)
      seen.admissions.push(admission)
    }),
  reidentify: (vmid) => Effect.sync(() => (seen.calls.push(`reidentify ${vmid}`), "republished" as const)),
  // what PVE had been asked by the time the tokens were revoked
  undeploy: (vmid) =>
    Effect.map(sim.requests, (rs) => void seen.calls.push(`undeploy ${vmid} after ${rs.filter((r) => r.method === "DELETE").length} DELETE(s)`))
})

const withSim = <A, E>(body: (sim: SimPve, seen: Seen) => Effect.Effect<A, E, AgentServices | ControllerOps>) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({}))
    const seen: Seen = { calls: [], admissions: [] }
    return yield* body(sim, seen).pipe(
      Effect.provide(Layer.merge(agentLayer(sim, dbFile()), Layer.succeed(ControllerOps, recordingOps(seen, sim))))
    )
  }))


describe("controller jobs", () => {
  for (const op of ["controller-update-policy", "controller-deploy"]) {
    it.scoped(`a hub job '${op}' is rejected, signed or not, and nothing runs`, () =>
      withSim((_sim, seen) =>
        Effect.gen(function*() {
          const params = { image: IMAGE }
          for (const signed of [undefined, signedOp({ op, guest_id: 101, params })]) {
            const r = yield* runTimed(runSignedJob(job({ op, guest_id: 101, params }, signed)))
            expect(`${r.status}:${r.reason}`).toMatch(/^rejected:plan_only/)
          }
          expect(seen.calls).toEqual([])
          expect(yield* Effect.flatMap(Journal, (j) => j.list({ limit: 10 }))).toEqual([])
        })))
  }

  it.scoped("controller-update runs only signed, for exactly the signed image, with the grant's nonce admitted", () =>
    withSim((_sim, seen) =>
      Effect.gen(function*() {
        const params = { image: IMAGE }
        const unsigned = yield* runTimed(runSignedJob(job({ op: "controller-update", guest_id: 101, params })))
        expect(unsigned.status).toBe("pending_signature")
        // the hub swaps the image under the operator's signature
        const swapped = yield* runTimed(runSignedJob(job({ op: "controller-update", guest_id: 101, params: { image: "evil.example/x:1" } }, signedOp({ op: "controller-update", guest_id: 101, params }))))
        expect(`${swapped.status}:${swapped.reason}`).toMatch(/^rejected:binding_mismatch/)
        expect(seen.calls).toEqual([])
        const sig = signedOp({ op: "controller-update", guest_id: 101, params })
        const ok = yield* runTimed(runSignedJob(job({ op: "controller-update", guest_id: 101, params }, sig)))
        expect(ok.status).toBe("done")
        expect(seen.calls).toEqual([`update 101 ${IMAGE} signed`])
        expect(seen.admissions[0]?.nonce).not.toBeNull()
        expect(seen.admissions[0]?.key).toMatch(/^job:/)
        // extra params inside the signed blob: a bad job, nothing runs
        const extra = { image: IMAGE, force: true }
        const bad = yield* runTimed(runSignedJob(job({ op: "controller-update", guest_id: 101, params: extra }, signedOp({ op: "controller-update", guest_id: 101, params: extra }))))
        expect(bad.status).toBe("failed")
        expect(seen.calls).toHaveLength(1)
      })))

  it.scoped("a decommission revokes the guest's controller access before any destroy reaches PVE", () =>
    withSim((sim, seen) =>
      Effect.gen(function*() {
        const r = yield* runTimed(runSignedJob(job({ op: "decommission", guest_id: 101 }, signedOp({ op: "decommission", guest_id: 101 }))))
        expect(r.status).toBe("done")
        expect(seen.calls).toEqual(["undeploy 101 after 0 DELETE(s)"])
        expect(Option.isNone(yield* sim.guest(101))).toBe(true)
        const op = (yield* Effect.flatMap(Journal, (j) => j.list({ limit: 1 })))[0]
        expect(op?.steps.map((s) => `${s.name}:${s.status}`)).toEqual(["revoke:done", "stop:done", "destroy:done"])
      })))
})
