/**
 * Provisioning one guest on an operator's word (issue 12, `felhom-agent provision`): the same
 * bring-up reconcile runs for a new desired guest, judged by the same rules.
 *
 * Whether the guest may be created is decided by the reconcile planner itself (plan.ts) over a
 * desired state holding only this guest, with the context the journal gives (observeContext,
 * recording nothing): a guest that held customer data and is gone is `lost` (recovered, never
 * recreated blank), a held guest is left alone, memory is bounded by the host, and the archive
 * must be a registered golden archive. An archive the operator merely names is refused like one
 * the hub names: otherwise `provision --archive <another customer's backup>` would restore that
 * customer's data into a new guest.
 *
 * Then, in the guest's queue turn: the gate (create is benign; its grant clears only the sizing
 * of the guest it restores), the create saga (restore with marker → resize → mounts → configure
 * → seal → untag → start; a failure before the seal destroys exactly what it restored), and the
 * back half (ControllerOps.deploy) when the guest asks for a controller and this host serves a
 * local API, as reconcile does after a create.
 */
import { Effect, Option } from "effect"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { OpLog } from "../../layers/OpLog.js"
import type { DesiredGuest, DesiredState } from "../../schema/desired.js"
import type { GuestPlacement } from "../../schema/storage.js"
import type { VmId } from "../../schema/ids.js"
import { type CreateSource, STEPS } from "../../schema/operations.js"
import { gatedActionOf, guardCreates, observeContext, observePve } from "../control/apply.js"
import { currentProvenance, gate, type GateDecision, judge } from "../control/gate.js"
import { type Action, normalizeDesired, type Note, plan } from "../control/plan.js"
import { createGuest, emitProgress, startGuest } from "../control/steps.js"
import { ControllerOps } from "../controller/ops.js"
import { mountsFor } from "./mounts.js"

export interface ProvisionStep {
  /** front: the create saga; back: the controller deploy saga. */
  readonly phase: "front" | "back"
  readonly step: string
  readonly what: string
}

const FRONT_WHAT: Readonly<Record<string, (spec: DesiredGuest, source: CreateSource, mounts: Readonly<Record<string, string>>) => string>> = {
  restore: (_, s) => `restore ${s.archive} onto ${s.storage} with a fresh instance marker tag (unique MAC)`,
  resize: (g) => `grow the rootfs to ${g.rootfs_gib} GiB`,
  mounts: (_, __, m) =>
    Object.keys(m).length === 0
      ? "no storage mounts (the placement allocates none)"
      : `allocate the placement's volumes: ${Object.entries(m).map(([k, v]) => `${k} ${v}`).join("; ")}`,
  configure: () => "description and tags",
  seal: () => "seal: from here the guest is customer data (no compensating destroy)",
  untag: () => "remove the instance marker tag",
  start: (g) => (g.power === "running" ? "start the guest" : "leave the guest stopped (desired power: stopped)")
}

const BACK_WHAT: Readonly<Record<string, string>> = {
  mint: "mint the guest's local-API token (its id journaled first)",
  write: "write the controller's bootstrap files (0600, guest root's)",
  mount: "bind-mount them read-only at /etc/felhom-bootstrap",
  commit: "record the deploy"
}

/** What `provision` will do, in order (`--plan`): the create saga's steps, then the back half's. */
export const provisionSteps = (spec: DesiredGuest, source: CreateSource, placement?: GuestPlacement): ReadonlyArray<ProvisionStep> => {
  // with a controller the first boot comes after the back half (its bootstrap carries the directive)
  const deferred = spec.controller !== undefined && spec.power === "running"
  const front = STEPS.create
    .filter((s) => !s.startsWith("compensate_") && !(deferred && s === "start"))
    .map((step): ProvisionStep => ({ phase: "front", step, what: FRONT_WHAT[step]?.(spec, source, mountsFor(placement)) ?? step }))
  const back = spec.controller === undefined ? [] : STEPS["controller-deploy"].slice(0, 4).map((step): ProvisionStep => ({
    phase: "back",
    step: `deploy_controller:${step}`,
    what: step === "mint" ? `${BACK_WHAT[step]} for ${spec.controller!.image}` : BACK_WHAT[step] ?? step
  }))
  const start = FRONT_WHAT["start"]
  return [...front, ...back, ...(deferred ? [{ phase: "back" as const, step: "start", what: start?.(spec, source, mountsFor(placement)) ?? "start" }] : [])]
}

/** The desired state `provision` judges: this guest alone (with its placement), from this source. */
const desiredOf = (spec: DesiredGuest, source: CreateSource, placement: GuestPlacement | undefined): DesiredState => ({
  generation: 0,
  guests: [spec],
  provisioning: { golden_archive: source.archive, storage: source.storage },
  ...(placement === undefined ? {} : { policies: { guests: [placement] } })
})

interface Decision {
  readonly create: Extract<Action, { kind: "create" }> | null
  readonly deploy: Extract<Action, { kind: "deploy_controller" }> | null
  /** Why not, when `create` is null. */
  readonly refusal: string | null
  /** The planner's notes on this guest (e.g. a controller it will not deploy). */
  readonly notes: ReadonlyArray<Note>
}

/** The reconcile planner's verdict on creating this one guest now; records nothing. */
const decide = (spec: DesiredGuest, source: CreateSource, placement: GuestPlacement | undefined) =>
  Effect.gen(function*() {
    const desired = desiredOf(spec, source, placement)
    const obs = yield* observePve
    const ctx = yield* observeContext(obs, desired, { record: false })
    // never a blank guest over backups the journal cannot account for (a lost state database)
    const p = yield* guardCreates(plan(obs.actual, desired, ctx))
    const notes = p.notes.filter((n) => n.vmid === spec.vmid)
    const actions = p.actions.filter((a) => a.vmid === spec.vmid)
    const create = actions.find((a): a is Extract<Action, { kind: "create" }> => a.kind === "create") ?? null
    const deploy = actions.find((a): a is Extract<Action, { kind: "deploy_controller" }> => a.kind === "deploy_controller") ?? null
    const exists = obs.actual.some((a) => a.vmid === spec.vmid)
    const refusal = exists
      ? `guest ${spec.vmid} exists; provision only creates a new guest (reconcile converges an existing one)`
      : create === null
      ? notes.map((n) => `${n.reason}: ${n.message}`).join("; ") || `the planner would not create guest ${spec.vmid}`
      : null
    return { create: exists ? null : create, deploy: exists ? null : deploy, refusal, notes } satisfies Decision
  })

export interface ProvisionPreview {
  readonly vmid: number
  readonly source: CreateSource
  readonly steps: ReadonlyArray<ProvisionStep>
  /** The gate's verdict on the create (nothing is audited or spent: a preview). */
  readonly gate: { readonly verdict: GateDecision["verdict"]; readonly reason: string }
  /** Why the create would be refused now, or null. */
  readonly refusal: string | null
  /** The back half: deployed after the create, or why not. */
  readonly controller: { readonly image: string; readonly deploy: boolean; readonly detail: string } | null
}

const controllerNote = (notes: ReadonlyArray<Note>) =>
  notes.find((n) => n.reason === "no_local_api" || n.reason === "controller_refused")?.message

/** `provision --plan`: the steps, the gate's verdict and any refusal; changes nothing. */
export const provisionPreview = (spec: DesiredGuest, source: CreateSource, placement?: GuestPlacement) =>
  Effect.gen(function*() {
    const d = yield* decide(spec, source, placement)
    const action = gatedActionOf({ kind: "create", vmid: spec.vmid, spec, source })
    const verdict = yield* judge(action, yield* currentProvenance(spec.vmid), Option.none(), Option.none())
    const hasControllers = Option.isSome(yield* Effect.serviceOption(ControllerOps))
    const controller = spec.controller === undefined ? null : {
      image: spec.controller.image,
      deploy: d.deploy !== null,
      detail: d.deploy !== null
        ? "deployed after the create, in the same queue turn"
        : controllerNote(d.notes) ?? (hasControllers ? "not deployed" : "this host serves no local API (config local_api): not deployed")
    }
    return {
      vmid: spec.vmid,
      source,
      steps: provisionSteps(spec, source, placement),
      gate: { verdict: verdict.verdict, reason: verdict.reason },
      refusal: d.refusal,
      controller
    } satisfies ProvisionPreview
  })

export type ProvisionOutcome = "done" | "rolled_back" | "needs_operator" | "failed" | "refused"

export interface ProvisionResult {
  readonly vmid: number
  /** The create op in the journal; null when refused before anything was journaled. */
  readonly opId: string | null
  readonly outcome: ProvisionOutcome
  readonly detail: string
  readonly controller: {
    readonly state: "deployed" | "not_requested" | "skipped" | "failed" | "not_run"
    readonly detail: string
  }
}

export interface ProvisionOptions {
  /** Who asked, for the audit log. */
  readonly actor: string
  /** The guest's volume placement (the desired state's policies): the mounts the bring-up allocates. */
  readonly placement?: GuestPlacement | undefined
}

/** The create ops on `vmid` among the newest entries. */
const createOpsOf = (vmid: VmId) =>
  Effect.map(Effect.flatMap(OpLog, (j) => j.list({ limit: 100 })), (ops) => ops.filter((o) => o.kind === "create" && o.vmid === vmid))

/**
 * Creates guest `spec.vmid` from `source` and deploys its controller, all in the guest's queue
 * turn. Never fails for an operation that ran and failed: the outcome says what happened (and the
 * journal holds the op); only the state store or an unexpected PVE read failure is an error.
 */
export const provisionGuest = (spec: DesiredGuest, source: CreateSource, opts: ProvisionOptions) =>
  Effect.flatMap(GuestQueue, (queue) =>
    queue.serialize(spec.vmid)(Effect.gen(function*() {
      const notRun = { state: "not_run" as const, detail: "the create did not complete" }
      const d = yield* decide(spec, source, opts.placement)
      if (d.create === null) {
        const nothing = { state: "not_run" as const, detail: "nothing was created" }
        return { vmid: spec.vmid, opId: null, outcome: "refused", detail: d.refusal ?? "refused", controller: nothing } satisfies ProvisionResult
      }
      const judged = yield* gate(gatedActionOf(d.create), Option.none(), opts.actor)
      if (judged.grant === null) {
        return {
          vmid: spec.vmid,
          opId: null,
          outcome: "refused",
          detail: `the gate refused the create: ${judged.decision.reason}`,
          controller: { state: "not_run", detail: "nothing was created" }
        } satisfies ProvisionResult
      }
      yield* emitProgress({ kind: "note", text: `provisioning guest ${spec.vmid} from ${source.archive}` })
      const before = new Set((yield* createOpsOf(spec.vmid)).map((o) => o.id))
      const memoryMiB = normalizeDesired(spec).memory_mib ?? Math.ceil(spec.memory_bytes / 1048576)
      const deferStart = d.create.deferStart === true
      const created = yield* Effect.either(createGuest(spec, source, memoryMiB, judged.grant, d.create.mounts ?? {}, { deferStart }))
      // ours is the one create op of this guest that was not there before (we hold its turn)
      const op = (yield* createOpsOf(spec.vmid)).find((o) => !before.has(o.id)) ?? null
      const opId = op?.id ?? null
      if (created._tag === "Left") {
        const e = created.left
        if (e._tag === "JournalError") return yield* Effect.fail(e)
        const outcome: ProvisionOutcome = op?.status === "rolled_back" ? "rolled_back" : op?.status === "needs_operator" ? "needs_operator" : "failed"
        return { vmid: spec.vmid, opId, outcome, detail: op?.detail ?? `${e._tag}: ${e.message}`, controller: notRun } satisfies ProvisionResult
      }
      if (spec.controller === undefined) {
        return { vmid: spec.vmid, opId, outcome: "done", detail: "created", controller: { state: "not_requested", detail: "no controller in the spec" } } satisfies ProvisionResult
      }
      const controllers = yield* Effect.serviceOption(ControllerOps)
      if (d.deploy === null || Option.isNone(controllers)) {
        const why = controllerNote(d.notes) ?? "this host serves no local API (config local_api)"
        yield* emitProgress({ kind: "note", text: `controller not deployed: ${why}` })
        return { vmid: spec.vmid, opId, outcome: "done", detail: "created", controller: { state: "skipped", detail: why } } satisfies ProvisionResult
      }
      // the back half, in the same turn: judged like reconcile's deploy_controller
      const deployJudged = yield* gate(gatedActionOf(d.deploy), Option.none(), opts.actor)
      if (deployJudged.grant === null) {
        return {
          vmid: spec.vmid,
          opId,
          outcome: "failed",
          detail: "created; the controller deploy was refused by the gate",
          controller: { state: "failed", detail: deployJudged.decision.reason }
        } satisfies ProvisionResult
      }
      const deployed = yield* Effect.either(controllers.value.deploy(spec.vmid, d.deploy.image))
      // the first boot comes after the bootstrap (its directive) is mounted; a failed deploy leaves
      // the guest stopped for reconcile, which deploys before it starts
      if (deferStart && deployed._tag === "Right") {
        const started = yield* Effect.either(startGuest(spec.vmid))
        if (started._tag === "Left") {
          return {
            vmid: spec.vmid,
            opId,
            outcome: "failed",
            detail: `created and its controller deployed; the start failed: ${started.left.message}`,
            controller: { state: "deployed", detail: d.deploy.image }
          } satisfies ProvisionResult
        }
      }
      return deployed._tag === "Right"
        ? { vmid: spec.vmid, opId, outcome: "done", detail: "created", controller: { state: "deployed", detail: d.deploy.image } } satisfies ProvisionResult
        : {
          vmid: spec.vmid,
          opId,
          outcome: "failed",
          detail: "the guest was created (sealed, kept); its controller deploy failed and was undone; reconcile deploys it when the desired state asks for it",
          controller: { state: "failed", detail: deployed.left.message }
        } satisfies ProvisionResult
    })))
