/**
 * The reconcile engine: executes a plan through the per-guest serializer, each action judged by
 * the gate first and run as a journaled op. A destructive action without a valid signature is
 * reported as pending_signature and never executed.
 */
import { OpLog } from "../../layers/OpLog.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import { Effect, Option } from "effect"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { VmId } from "../../schema/ids.js"
import { type StoreServices } from "../../layers/Journal.js"
import type { DesiredState } from "../../schema/desired.js"
import { Proxmox } from "../../layers/Proxmox.js"
import {
  admissionOf,
  BadJob,
  createGuest,
  noAdmission,
  decommission,
  NoProvisioning,
  resizeRootfs,
  setGuestConfig,
  startGuest,
  type StepError,
  stopGuest
} from "./steps.js"
import { gate, type GatedAction, type GateResult, type SignedOp } from "./gate.js"
import { type Action, normalizeActual, normalizeDesired, type Plan, plan, type PlanContext } from "./plan.js"
import { inScratchRange, RestoreTestSettings } from "../protection/scratch.js"
import { pointsOfListing, recoverPlan } from "../bringup/tiers.js"
import { StorageId } from "../../schema/ids.js"
import { executeRecover } from "../bringup/recoverGuest.js"
import type { JsonObject } from "../../schema/json.js"
import { ControllerOpFailed, ControllerOps, type ControllerOpsShape } from "../controller/ops.js"

const GiB = 1024 * 1024 * 1024

/**
 * Reads the node's guests as the planner sees them (a failed config read keeps the run state),
 * plus what bounds a plan: free space on each guest's rootfs storage and the host's memory.
 */
export const observePve = Effect.gen(function*() {
  const pve = yield* Proxmox
  const guests = yield* pve.listGuests
  const read = yield* Effect.forEach(
    guests.filter((g) => g.template !== 1),
    (g) => Effect.map(Effect.option(pve.guestConfig(g.vmid)), (c) => ({ g, config: Option.getOrNull(c) })),
    { concurrency: 4 }
  )
  const storages = yield* Effect.option(pve.nodeStorage)
  const status = yield* Effect.option(pve.nodeStatus)
  const avail = new Map<string, number>()
  for (const st of Option.getOrElse(storages, () => [])) {
    if (st.avail !== undefined && Number.isFinite(st.avail)) avail.set(st.storage, Math.floor(st.avail / GiB))
  }
  const rootfsFreeGib = new Map<VmId, number>()
  for (const { config, g } of read) {
    const storage = config?.rootfs?.split(":")[0]
    const free = storage === undefined ? undefined : avail.get(storage)
    if (free !== undefined) rootfsFreeGib.set(g.vmid, free)
  }
  const total = Option.flatMap(status, (s) => Option.fromNullable(s.memory?.total))
  return {
    actual: read.map(({ config, g }) => normalizeActual(g, config)),
    rootfsFreeGib,
    hostMemoryMiB: Option.match(total, { onNone: () => null, onSome: (t) => (Number.isFinite(t) ? Math.floor(t / (1024 * 1024)) : null) })
  }
})

export const observeActual = Effect.map(observePve, (o) => o.actual)

/**
 * The plan's context from the journal: guests held for an operator or with an op in flight, and
 * guests known to hold customer data. Desired guests that exist are recorded as customer guests
 * here (adoption), so a later disappearance reads as a loss, never as "create it blank".
 */
export const observeContext = (obs: Effect.Effect.Success<typeof observePve>, desired: DesiredState, opts: { readonly record: boolean } = { record: true }) =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const present = new Set(obs.actual.map((a) => a.vmid))
    const held = new Map<VmId, string>()
    for (const op of yield* ops.list({ status: "needs_operator", limit: 1000 })) {
      if (op.vmid !== null) held.set(VmId.make(op.vmid), `${op.kind} ${op.id} needs an operator: ${op.detail ?? ""}`)
    }
    for (const op of yield* ops.inFlight) {
      if (op.vmid !== null && !held.has(VmId.make(op.vmid))) held.set(VmId.make(op.vmid), `${op.kind} ${op.id} is in flight`)
    }
    // The restore-test scratch range is the agent's own: no customer guest is planned, adopted or
    // removed there, whatever the hub lists (src/programs/protection/restoreTest.ts).
    const scratch = yield* Effect.serviceOption(RestoreTestSettings)
    if (Option.isSome(scratch)) {
      for (const vmid of [...present, ...desired.guests.map((g) => g.vmid)]) {
        if (inScratchRange(scratch.value, vmid) && !held.has(VmId.make(vmid))) {
          held.set(VmId.make(vmid), `in the reserved restore-test scratch range ${scratch.value.scratchMin}..${scratch.value.scratchMax}`)
        }
      }
    }
    // Adoption: a desired guest that exists holds customer data from now on. Never a held one: a
    // create left in flight is not the customer's until its saga sealed it.
    const adoptable = desired.guests.filter((g) => present.has(g.vmid) && !held.has(g.vmid))
    if (opts.record) for (const g of adoptable) yield* guests.markCustomer(g.vmid, "adopted: present and desired")
    const customer = new Set<VmId>((yield* guests.guestRecords).map((r) => VmId.make(r.vmid)))
    // a preview records nothing, so count what this pass would adopt as recorded already
    if (!opts.record) for (const g of adoptable) customer.add(g.vmid)
    const controllerOps = yield* Effect.serviceOption(ControllerOps)
    const controllers = Option.isNone(controllerOps)
      ? null
      : yield* controllerOps.value.view.pipe(
        // an unreadable controller store plans no controller work this pass
        Effect.orElseSucceed(() => ({ deployed: new Map<VmId, string>(), repositories: [] as ReadonlyArray<string>, failedUpdates: new Map<VmId, { readonly image: string; readonly recent: boolean }>() }))
      )
    const ctx: PlanContext = {
      controllers,
      held,
      customer,
      hostMemoryMiB: obs.hostMemoryMiB,
      goldenArchives: yield* guests.goldenArchives,
      rootfsFreeGib: (vmid) => obs.rootfsFreeGib.get(vmid)
    }
    return ctx
  })

/**
 * A create is refused while backups of its vmid exist that the journal cannot account for (no
 * completed decommission of that vmid after the newest of them): after a lost state database the
 * agent no longer knows a guest held customer data, and a blank guest at its vmid would be backed
 * up beside the real backups and let retention prune them. The guest is planned as lost instead
 * (withRecoveries offers the recover, pending a signature). One listing per backup storage per pass,
 * only when the plan creates something; a storage that cannot be listed refuses nothing.
 */
export const guardCreates = (p: Plan) =>
  Effect.gen(function*() {
    const creates = p.actions.filter((a) => a.kind === "create")
    if (creates.length === 0) return p
    const pve = yield* Proxmox
    const ops = yield* OpLog
    const storages = yield* Effect.orElseSucceed(pve.nodeStorage, () => [])
    const newest = new Map<number, { readonly volid: string; readonly ms: number }>()
    for (const st of storages) {
      if (!(st.content ?? "").split(",").includes("backup") || st.enabled === 0 || st.active === 0) continue
      const storage = StorageId.make(st.storage)
      const listed = yield* Effect.either(pve.storageContent(storage, { content: "backup" }))
      if (listed._tag === "Left") continue
      for (const c of creates) {
        for (const pt of pointsOfListing(c.vmid, storage, st.type === "pbs" ? "pbs" : "vzdump", listed.right)) {
          const had = newest.get(c.vmid)
          if (had === undefined || pt.takenAtMs > had.ms) newest.set(c.vmid, { volid: pt.point, ms: pt.takenAtMs })
        }
      }
    }
    if (newest.size === 0) return p
    const decommissioned = (yield* ops.list({ status: "done", limit: 10_000 })).filter((o) => o.kind === "decommission")
    const refused = new Map<number, string>()
    for (const [vmid, b] of newest) {
      if (decommissioned.some((o) => o.vmid === vmid && o.updatedAtMs >= b.ms)) continue
      refused.set(vmid, b.volid)
    }
    if (refused.size === 0) return p
    return {
      ...p,
      // no guest exists at a refused vmid: every action planned for it belongs to the create (the
      // back half, a deferred start)
      actions: p.actions.filter((a) => !refused.has(a.vmid)),
      notes: [
        ...p.notes,
        ...[...refused].map(([vmid, volid]) => ({
          vmid: VmId.make(vmid),
          reason: "lost" as const,
          message: `not created blank: backups of ${vmid} exist (newest ${volid}) and the journal records no decommission after them; it is recovered, never recreated blank`
        }))
      ]
    } satisfies Plan as Plan
  })

/**
 * For each lost guest the desired state still wants: a `recover` action from its fastest surviving
 * restore point (pending an operator's signature), or, when none can be planned, the lost note
 * says why (no restore point, the PBS key missing, no storage to restore to).
 */
export const withRecoveries = (p0: Plan, desired: DesiredState) =>
  Effect.gen(function*() {
    const p = yield* guardCreates(p0)
    const actions: Array<Action> = [...p.actions]
    const notes: Array<Plan["notes"][number]> = []
    for (const n of p.notes) {
      const d = desired.guests.find((g) => g.vmid === n.vmid)
      if (n.reason !== "lost" || d === undefined) {
        notes.push(n)
        continue
      }
      const planned = yield* Effect.either(recoverPlan(n.vmid, {
        scenario: "total",
        source: "auto",
        desired: d,
        placement: desired.policies?.guests.find((g) => g.vmid === n.vmid),
        manifest: desired.storage ?? [],
        provisioningStorage: desired.provisioning?.storage
      }))
      if (planned._tag === "Left") {
        notes.push({ ...n, message: `${n.message}; no recovery can be planned: ${planned.left.message}` })
        continue
      }
      notes.push({ ...n, message: `${n.message}; a recover from ${planned.right.point.tier} ${planned.right.point.point} waits for an operator's signature` })
      actions.push({ kind: "recover", vmid: n.vmid, recover: planned.right, spec: d })
    }
    actions.sort((a, b) => a.vmid - b.vmid)
    return { ...p, actions, notes } satisfies Plan as Plan
  })

/** Observe PVE and the journal, then plan; a guest found lost is recorded lost. */
export const planNow = (desired: DesiredState) =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const obs = yield* observePve
    const ctx = yield* observeContext(obs, desired)
    const p = plan(obs.actual, desired, ctx)
    const out = yield* withRecoveries(p, desired)
    for (const n of out.notes) if (n.reason === "lost") yield* guests.markLost(n.vmid, n.message)
    return out
  })

export const gatedActionOf = (a: Action): GatedAction => {
  switch (a.kind) {
    case "create":
      // the bring-up sizes the guest it restores: that resize is all the grant clears
      return { op: "create", vmid: a.vmid, params: { rootfs_gib: a.spec.rootfs_gib } }
    case "destroy":
      // removing a guest is a decommission whichever way it arrives (SPEC §7)
      return { op: "decommission", vmid: a.vmid, params: {} }
    case "set_config":
      return { op: "set_config", vmid: a.vmid, params: { ...a.set } }
    case "resize":
      return { op: "resize", vmid: a.vmid, params: { disk: a.disk, size_gib: a.sizeGib } }
    case "start":
      return { op: "start", vmid: a.vmid, params: {} }
    case "stop":
      return { op: "stop", vmid: a.vmid, params: {} }
    case "deploy_controller":
      return { op: "controller-deploy", vmid: a.vmid, params: { image: a.image } }
    case "update_controller":
      // the plan chose the basis from the agent's config, never from the hub
      return { op: a.basis === "policy" ? "controller-update-policy" : "controller-update", vmid: a.vmid, params: { image: a.to } }
    case "recover":
      return { op: "recover", vmid: a.vmid, params: { ...a.recover.gatedParams } }
  }
}

/** The controller service, or a BadJob: a graph without it plans no controller work. */
const withControllers = <A>(f: (c: ControllerOpsShape) => Effect.Effect<A, ControllerOpFailed>): Effect.Effect<A, ControllerOpFailed | BadJob> =>
  Effect.flatMap(Effect.serviceOption(ControllerOps), (c) =>
    Option.isSome(c) ? f(c.value) : Effect.fail<ControllerOpFailed | BadJob>(new BadJob({ message: "this host serves no local API: no controller can be deployed or updated" })))

export interface ActionOutcome {
  readonly vmid: number
  readonly action: Action["kind"]
  readonly verdict: "allowed" | "signed_ok" | "pending_signature" | "rejected"
  readonly result: "applied" | "failed" | "not_run"
  readonly reason: string
  /** What an operator signs for it (the gated params), for a pending destructive action. */
  readonly params?: JsonObject
}

/** Signatures offered for destructive actions, keyed by `signatureKey`. */
export type Signatures = ReadonlyMap<string, SignedOp>
export const signatureKey = (op: string, vmid: VmId | null) => `${op}:${vmid ?? "host"}`

type Approved = Extract<GateResult, { grant: object }>

const execute = (a: Action, approved: Approved): Effect.Effect<void, StepError | NoProvisioning | BadJob | ControllerOpFailed, Proxmox | StoreServices> => {
  switch (a.kind) {
    case "create":
      return a.source === null
        ? Effect.fail(new NoProvisioning({ message: "desired state has no provisioning source (golden archive)" }))
        : createGuest(a.spec, a.source, normalizeDesired(a.spec).memory_mib ?? Math.ceil(a.spec.memory_bytes / 1048576), approved.grant, a.mounts, { deferStart: a.deferStart === true })
    case "destroy": {
      const d = approved.decision
      return d.verdict === "signed_ok"
        ? decommission(a.vmid, approved.grant, {
          basis: "signed",
          signer: d.verified.signer.keyId,
          fingerprint: d.verified.signer.fingerprint,
          nonce: d.verified.nonce,
          job: null
        })
        : Effect.fail(new BadJob({ message: "removing a guest runs only with an operator signature" }))
    }
    case "set_config":
      return setGuestConfig(a.vmid, a.set)
    case "resize":
      return resizeRootfs(a.vmid, a.sizeGib, approved.grant)
    case "start":
      return startGuest(a.vmid)
    case "stop":
      return stopGuest(a.vmid)
    case "deploy_controller":
      return withControllers((c) => c.deploy(a.vmid, a.image))
    case "update_controller": {
      const d = approved.decision
      if (a.basis === "policy") return withControllers((c) => c.update(a.vmid, a.to, { basis: "policy" }, noAdmission))
      return d.verdict === "signed_ok"
        ? withControllers((c) =>
          c.update(a.vmid, a.to, {
            basis: "signed",
            authorization: { basis: "signed", signer: d.verified.signer.keyId, fingerprint: d.verified.signer.fingerprint, nonce: d.verified.nonce, job: null }
          }, admissionOf(approved.grant)))
        : Effect.fail(new BadJob({ message: "a controller image outside the operator's repositories runs only with an operator signature" }))
    }
    case "recover":
      return executeRecover(a.recover, { decision: approved.decision, grant: approved.grant }, { spec: a.spec }).pipe(
        Effect.flatMap((r) =>
          r.outcome === "done" ? Effect.void : Effect.fail(new BadJob({ message: `recover of ${a.vmid}: ${r.outcome} (${r.detail})` })))
      )
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
      const judged = yield* gate(ga, Option.fromNullable(signatures.get(signatureKey(ga.op, ga.vmid))), "reconcile")
      if (judged.grant === null) {
        const d = judged.decision
        out.push({ vmid, action: a.kind, verdict: d.verdict, result: "not_run", reason: d.reason, params: ga.params })
        stopped = true // later actions may depend on this one
        continue
      }
      const approved: Approved = judged
      const r = yield* Effect.either(execute(a, approved))
      if (r._tag === "Left") {
        out.push({ vmid, action: a.kind, verdict: approved.decision.verdict, result: "failed", reason: `${r.left._tag}: ${r.left.message}` })
        stopped = true
      } else {
        out.push({ vmid, action: a.kind, verdict: approved.decision.verdict, result: "applied", reason: approved.decision.reason })
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
