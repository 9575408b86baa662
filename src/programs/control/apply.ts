/**
 * The reconcile engine: executes a plan through the per-guest serializer, each action judged by
 * the gate first and run as a journaled op. A destructive action without a valid signature is
 * reported as pending_signature and never executed.
 */
import { Effect, Option } from "effect"
import { GuestQueue } from "../../layers/GuestQueue.js"
import type { VmId } from "../../schema/ids.js"
import type { Journal } from "../../layers/Journal.js"
import { Proxmox } from "../../layers/Proxmox.js"
import {
  createGuest,
  decommission,
  NoProvisioning,
  resizeRootfs,
  setGuestConfig,
  startGuest,
  type StepError,
  stopGuest
} from "./steps.js"
import { gate, type GatedAction, type SignedOp } from "./gate.js"
import { type Action, normalizeActual, normalizeDesired, type Plan } from "./plan.js"

/** Reads the node's guests as the planner sees them; a failed config read keeps the run state. */
export const observeActual = Effect.gen(function*() {
  const pve = yield* Proxmox
  const guests = yield* pve.listGuests
  return yield* Effect.forEach(
    guests.filter((g) => g.template !== 1),
    (g) => Effect.map(Effect.option(pve.guestConfig(g.vmid)), (c) => normalizeActual(g, Option.getOrNull(c))),
    { concurrency: 4 }
  )
})

export const gatedActionOf = (a: Action): GatedAction => {
  switch (a.kind) {
    case "create":
      return { op: "create", vmid: a.vmid, params: {} }
    case "destroy":
      // removing a guest is a decommission whichever way it arrives (SPEC §7)
      return { op: "decommission", vmid: a.vmid, params: {} }
    case "set_config":
      return { op: "set_config", vmid: a.vmid, params: a.set }
    case "resize":
      return { op: "resize", vmid: a.vmid, params: { disk: a.disk, size_gib: a.sizeGib } }
    case "start":
      return { op: "start", vmid: a.vmid, params: {} }
    case "stop":
      return { op: "stop", vmid: a.vmid, params: {} }
  }
}

export interface ActionOutcome {
  readonly vmid: number
  readonly action: Action["kind"]
  readonly verdict: "allowed" | "signed_ok" | "pending_signature" | "rejected"
  readonly result: "applied" | "failed" | "not_run"
  readonly reason: string
}

/** Signatures offered for destructive actions, keyed by `signatureKey`. */
export type Signatures = ReadonlyMap<string, SignedOp>
export const signatureKey = (op: string, vmid: VmId | null) => `${op}:${vmid ?? "host"}`

const execute = (a: Action, authorization: unknown): Effect.Effect<void, StepError | NoProvisioning, Proxmox | Journal> => {
  switch (a.kind) {
    case "create":
      return a.source === null
        ? Effect.fail(new NoProvisioning({ message: "desired state has no provisioning source (golden archive)" }))
        : createGuest(a.spec, a.source, normalizeDesired(a.spec).memory_mib ?? Math.ceil(a.spec.memory_bytes / 1048576))
    case "destroy":
      return decommission(a.vmid, authorization)
    case "set_config":
      return setGuestConfig(a.vmid, a.set)
    case "resize":
      return resizeRootfs(a.vmid, a.sizeGib)
    case "start":
      return startGuest(a.vmid)
    case "stop":
      return stopGuest(a.vmid)
  }
}

/** One guest's actions, in plan order; the first failure stops that guest's remaining actions. */
const runGuest = (vmid: VmId, actions: ReadonlyArray<Action>, signatures: Signatures) =>
  Effect.gen(function*() {
    const out: Array<ActionOutcome> = []
    let stopped = false
    for (const a of actions) {
      const ga = gatedActionOf(a)
      if (stopped) {
        out.push({ vmid, action: a.kind, verdict: "allowed", result: "not_run", reason: "an earlier action on this guest failed" })
        continue
      }
      const decision = yield* gate(ga, Option.fromNullable(signatures.get(signatureKey(ga.op, ga.vmid))), "reconcile")
      if (decision.verdict === "pending_signature" || decision.verdict === "rejected") {
        out.push({ vmid, action: a.kind, verdict: decision.verdict, result: "not_run", reason: decision.reason })
        stopped = true // later actions may depend on this one
        continue
      }
      const authorization = decision.verdict === "signed_ok"
        ? { signer: decision.verified.signer.keyId, nonce: decision.verified.nonce }
        : { provenance: decision.reason }
      const r = yield* Effect.either(execute(a, authorization))
      if (r._tag === "Left") {
        out.push({ vmid, action: a.kind, verdict: decision.verdict, result: "failed", reason: `${r.left._tag}: ${r.left.message}` })
        stopped = true
      } else {
        out.push({ vmid, action: a.kind, verdict: decision.verdict, result: "applied", reason: decision.reason })
      }
    }
    return out
  })

/** Executes a plan: per guest serially (submit order), guests in parallel under the queue's cap. */
export const executePlan = (plan: Plan, signatures: Signatures = new Map()) =>
  Effect.gen(function*() {
    const queue = yield* GuestQueue
    const groups = new Map<VmId, Array<Action>>()
    for (const a of plan.actions) groups.set(a.vmid, [...(groups.get(a.vmid) ?? []), a])
    const results = yield* Effect.forEach(
      [...groups.entries()],
      ([vmid, actions]) => queue.serialize(vmid)(runGuest(vmid, actions, signatures)),
      { concurrency: "unbounded" }
    )
    return results.flat()
  })
