/**
 * Guest-loss DR (SPEC §10, issue 12) on the shared bring-up front half: restore the chosen point
 * (tiers.ts) with an explicit layout (layout.ts) → identity per scenario (schema/identity.ts: the
 * MAC at restore, link down, the first-boot directive through the existing bootstrap) → size (the
 * layout allocates the rootfs at the desired size) → configure → seal → re-attach surviving bulk
 * volumes → start. No controller deploy: the backup holds the controller.
 *
 * What can undo what:
 * - fresh (the vmid is empty): restored with an instance marker, provenance recorded before the
 *   POST; until the seal a failure or a crash destroys exactly that instance (gate:
 *   clearCompensation, which re-proves it), and never with destroy-unreferenced-disks, so the lost
 *   guest's surviving bulk volumes outlive it. Bulk volumes are re-attached only after the seal,
 *   so no compensation can ever destroy them (PVE destroys every volume in a guest's config).
 * - overwrite (the guest exists): signed; a safety backup first; never compensated by a destroy
 *   (PVE removed the old volumes): a failure holds the op for an operator with the backup named.
 *   Refused up front when the guest holds volumes outside its backups (plan.overwriteLosses).
 * - rollback (a snapshot of the existing guest): signed; one PVE task.
 */
import { randomBytes } from "node:crypto"
import { Effect, Either, Option } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import type { JournalOp, StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { IdentityDirective } from "../../schema/bootstrap.js"
import type { KeyFingerprint } from "../../schema/escrow.js"
import { directiveResets, freshMac, IDENTITY_TABLE } from "../../schema/identity.js"
import { SnapshotName, type VmId, VolumeId } from "../../schema/ids.js"
import type { JsonObject } from "../../schema/json.js"
import type { DesiredGuest } from "../../schema/desired.js"
import { decodeOperation, type InstanceMarker, type OperationOf, type SignedAuthorization } from "../../schema/operations.js"
import { ControllerOps } from "../controller/ops.js"
import { normalizeTags } from "../control/plan.js"
import type { Outcome } from "../control/recover.js"
import { settledSteps } from "../control/recover.js"
import { approveRecoveryCode, clearBringupConfig, gate, type GateDecision, type Grant, type SignedOp } from "../control/gate.js"
import { jsonEqual } from "../../schema/json.js"
import {
  admissionOf,
  BadJob,
  beginOperation,
  emitProgress,
  existing,
  noAdmission,
  rollBackCreate,
  type Saga,
  sagaOf,
  type StepError,
  surelyRefused
} from "../control/steps.js"
import { pbsBackupRefusal } from "../protection/pbsGuard.js"
import { notesFor } from "../protection/provenance.js"
import { type BulkReport, bulkSurvivors, type RestoreLayout, restoreLayout, volumeOwner } from "./layout.js"
import type { RecoverPlan } from "./tiers.js"

export type RecoverOutcome = "done" | "rolled_back" | "needs_operator" | "failed" | "pending_signature" | "rejected"

export interface RecoverResult {
  readonly opId: string | null
  readonly outcome: RecoverOutcome
  readonly detail: string
  /** Bulk volumes and what became of them (re-attached, recreated empty, omitted). */
  readonly bulk: ReadonlyArray<BulkReport>
}

const newMarker = Effect.sync(() => `felhom-prov-${randomBytes(8).toString("hex")}` as InstanceMarker)

/** A first-boot directive for this recovery: the scenario's resets, once (a fresh id). */
const directiveFor = (scenario: OperationOf<"recover">["scenario"]) =>
  Effect.sync((): IdentityDirective => ({ scenario, reset: [...directiveResets(scenario)], directive_id: randomBytes(16).toString("hex") }))

/** `link_down=1` on a NIC value, replacing any link_down it had. */
export const withLinkDown = (value: string, down: boolean): string =>
  [...value.split(",").filter((p) => !p.startsWith("link_down=")), ...(down ? ["link_down=1"] : [])].join(",")

/** The guest's NICs: `netN` → value. */
const nicsOf = (config: Readonly<Record<string, unknown>>): ReadonlyArray<readonly [string, string]> =>
  Object.entries(config).flatMap(([k, v]) => (/^net\d+$/.test(k) && typeof v === "string" ? [[k, v] as const] : []))

/** A bring-up config change (mpN, netN) on the guest `s` is building, cleared by the gate for this op. */
const bringupConfig = (s: Saga<"recover">, step: "identity" | "reattach", set: Readonly<Record<string, string>>) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const ops = yield* OpLog
    if (Object.keys(set).length === 0) return
    const clearance = yield* clearBringupConfig(s.id, s.op.vmid, Object.keys(set))
    const upid = yield* pve.setConfigVolumes(s.op.vmid, { set }, clearance)
    if (Option.isSome(upid)) {
      yield* ops.recordUpid(s.id, step, upid.value)
      yield* pve.waitTask(upid.value)
    }
  })

/** The tags the guest ends with: the desired ones, else the archive's own. */
const finalTags = (op: OperationOf<"recover">, archiveTags: ReadonlyArray<string>): string =>
  [...(op.spec === null ? archiveTags : op.spec.tags)].sort().join(";")

/**
 * identity: NICs link-down when the scenario wants it (before any start), then the guest's
 * existing bootstrap republished with the scenario's first-boot directive.
 */
const identityStep = (s: Saga<"recover">) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    yield* s.started("identity")
    if (IDENTITY_TABLE[s.op.scenario].linkDown) {
      const config = yield* pve.guestConfig(s.op.vmid)
      yield* bringupConfig(s, "identity", Object.fromEntries(nicsOf(config).map(([k, v]) => [k, withLinkDown(v, true)])))
    }
    const controllers = yield* Effect.serviceOption(ControllerOps)
    const controller = Option.isNone(controllers)
      ? "no_local_api"
      : yield* controllers.value.reidentify(s.op.vmid, yield* directiveFor(s.op.scenario))
    yield* s.done("identity", { controller })
  })

/** reattach: a surviving original bulk volume swapped in for the empty one (which is kept as unusedN). */
const reattachStep = (s: Saga<"recover">, layout: RestoreLayout | null) =>
  Effect.gen(function*() {
    yield* s.started("reattach")
    const found = layout === null ? [] : yield* bulkSurvivors(layout)
    // only this guest's own volumes, and never while the source may still be live (partial loss:
    // two guests writing one filesystem); those stay detached until an operator attaches them
    const partial = s.op.scenario === "guest-loss-partial"
    const bulk = found.map((b) =>
      b.status !== "reattachable"
        ? b
        : !Option.exists(volumeOwner(b.originalVolid), (o) => o === s.op.vmid)
        ? { ...b, status: "recreated-empty" as const, detail: `${b.originalVolid} is not named for guest ${s.op.vmid}: not attached` }
        : partial
        ? { ...b, detail: `left detached: the source may still be live (partial loss); attach ${b.originalVolid} after confirming it is gone` }
        : b
    )
    const set = Object.fromEntries(
      bulk.filter((b) => b.status === "reattachable" && !partial).map((b) => [b.volume, `${b.originalVolid},mp=${b.path},backup=0`])
    )
    yield* bringupConfig(s, "reattach", set)
    yield* s.done("reattach", { reattached: Object.keys(set) })
    return bulk
  })

/** resize (recorded: the layout allocated the rootfs at the desired size, never below the archive's) → configure. */
const configureStep = (s: Saga<"recover">) =>
  Effect.gen(function*() {
    const { marker, spec } = s.op
    yield* s.done("resize")
    yield* s.config("configure", spec === null ? {} : { description: spec.description, tags: [...spec.tags, marker].sort().join(";") })
  })

/** The seal, written first: from here it is the customer's guest again, never destroyed as ours. */
const sealStep = (s: Saga<"recover">) =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    yield* s.done("seal")
    yield* guests.clearProvenance(s.op.vmid)
    yield* guests.markRecovered(s.op.vmid, `recovered by op ${s.id}`)
  })

/** configure → seal → untag → reattach → start: what follows a restore that landed. */
const finish = (s: Saga<"recover">, layout: RestoreLayout | null, archiveTags: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    yield* configureStep(s)
    yield* sealStep(s)
    return yield* afterSeal(s, layout, archiveTags)
  })

const afterSeal = (s: Saga<"recover">, layout: RestoreLayout | null, archiveTags: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const tags = finalTags(s.op, archiveTags)
    yield* s.config("untag", { tags })
    const bulk = yield* reattachStep(s, layout)
    const running = (yield* pve.guestStatus(s.op.vmid)).status === "running"
    if ((s.op.spec?.power ?? "running") === "running" && !running) yield* s.task("start", pve.start(s.op.vmid))
    else yield* s.done("start")
    return bulk
  })

const restoreOptions = (s: Saga<"recover">, plan: RecoverPlan) => ({
  vmid: s.op.vmid,
  archive: VolumeId.make(s.op.source.point),
  storage: s.op.storage,
  unique: freshMac(s.op.scenario),
  tags: s.op.marker,
  ...(s.op.spec === null
    ? {}
    : {
      hostname: s.op.spec.hostname,
      ...(s.op.spec.cores === undefined ? {} : { cores: s.op.spec.cores }),
      memoryMiB: Math.ceil(s.op.spec.memory_bytes / 1048576),
      swapMiB: s.op.spec.swap_mib
    }),
  ...(plan.layout === null ? {} : { layout: plan.layout.layout })
})

const archiveTagsOf = (point: string) =>
  Effect.flatMap(Proxmox, (p) => p.extractConfig(VolumeId.make(point))).pipe(
    Effect.map((c) => normalizeTags(c["tags"])),
    Effect.orElseSucceed((): ReadonlyArray<string> => [])
  )

/** The fresh restore: the vmid is empty; compensated by destroying exactly this instance until the seal. */
const freshBody = (s: Saga<"recover">, plan: RecoverPlan) =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const archiveTags = yield* archiveTagsOf(s.op.source.point)
    const built = yield* Effect.either(Effect.gen(function*() {
      yield* s.started("restore", { marker: s.op.marker })
      const accepted = yield* Effect.either(pve.restore(restoreOptions(s, plan)))
      if (accepted._tag === "Left") {
        // a 596 or a cut connection does not mean nothing started: record the instance as ours
        if (!surelyRefused(accepted.left)) yield* guests.recordProvenance(s.op.vmid, "same_transaction", s.id, s.op.marker)
        return yield* Effect.fail(accepted.left)
      }
      yield* guests.recordProvenance(s.op.vmid, "same_transaction", s.id, s.op.marker)
      yield* ops.recordUpid(s.id, "restore", accepted.right)
      yield* emitProgress({ kind: "task", step: "restore", upid: accepted.right })
      yield* pve.waitTask(accepted.right)
      yield* s.done("restore")
      yield* identityStep(s)
    }))
    if (Either.isLeft(built)) {
      const r = yield* rollBackCreate(s, built.left.message)
      return { outcome: r, detail: `${built.left.message}; ${r === "rolled_back" ? "the restored guest was removed" : "held for an operator"}`, bulk: [] as ReadonlyArray<BulkReport> }
    }
    const configured = yield* Effect.either(configureStep(s))
    if (Either.isLeft(configured)) {
      const r = yield* rollBackCreate(s, configured.left.message)
      return { outcome: r, detail: `${configured.left.message}; ${r === "rolled_back" ? "the restored guest was removed" : "held for an operator"}`, bulk: [] as ReadonlyArray<BulkReport> }
    }
    yield* sealStep(s)
    const after = yield* Effect.either(afterSeal(s, plan.layout, archiveTags))
    if (Either.isLeft(after)) {
      yield* ops.finish(s.id, "failed", `${after.left.message}; the recovered guest is kept (sealed)`)
      return { outcome: "failed" as const, detail: `${after.left.message}; the recovered guest is kept (sealed)`, bulk: [] as ReadonlyArray<BulkReport> }
    }
    yield* ops.finish(s.id, "done")
    return { outcome: "done" as const, detail: `recovered from ${s.op.source.tier} ${s.op.source.point}`, bulk: after.right }
  })

/** Over the existing guest: safety backup, stop, forced restore (signed), then as a fresh one but never destroyed. */
const overwriteBody = (s: Saga<"recover">, plan: RecoverPlan, grant: Grant) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const { vmid } = s.op
    const archiveTags = yield* archiveTagsOf(s.op.source.point)
    const safety = s.op.source.backupStorage
    const before = yield* Effect.either(Effect.gen(function*() {
      if (safety === null) return yield* new BadJob({ message: "an overwrite needs the backup's storage for its safety backup" })
      const keyless = yield* pbsBackupRefusal(safety)
      if (Option.isSome(keyless)) return yield* new BadJob({ message: `the safety backup of ${vmid} was not taken: ${keyless.value}` })
      const wasRunning = (yield* pve.guestStatus(vmid)).status === "running"
      yield* s.task(
        "safety_backup",
        Effect.flatMap(pve.vzdump({ vmid, storage: safety, mode: "snapshot", notesTemplate: notesFor(s.id) }), (u) =>
          Option.isSome(u) ? Effect.succeed(u.value) : Effect.fail(new BadJob({ message: `the safety backup of ${vmid} started nothing` })))
      )
      if (wasRunning) yield* s.task("stop", pve.stop(vmid))
      else yield* s.done("stop")
    }))
    if (Either.isLeft(before)) {
      yield* ops.finish(s.id, "failed", `${before.left.message}; nothing was overwritten`)
      return { outcome: "failed" as const, detail: `${before.left.message}; nothing was overwritten`, bulk: [] as ReadonlyArray<BulkReport> }
    }
    const restored = yield* Effect.either(Effect.gen(function*() {
      const clearance = yield* grant.clear({ call: "restore-overwrite", vmid, archive: VolumeId.make(s.op.source.point) })
      yield* s.task("restore", pve.restoreOverwrite(restoreOptions(s, plan), clearance))
      yield* identityStep(s)
      return yield* finish(s, plan.layout, archiveTags)
    }))
    if (Either.isLeft(restored)) {
      const gone = Option.isNone(yield* Effect.orElseSucceed(existing(vmid), () => Option.some(null)))
      if (gone) yield* guests.markLost(vmid, `recover ${s.id} failed after PVE removed the old volumes: ${restored.left.message}; a safety backup was taken first`)
      const detail = `${restored.left.message}; ${gone ? "the guest is gone: recover it again from the safety backup" : "the guest is kept as it is"} (held for an operator)`
      yield* ops.finish(s.id, "needs_operator", detail)
      return { outcome: "needs_operator" as const, detail, bulk: [] as ReadonlyArray<BulkReport> }
    }
    yield* ops.finish(s.id, "done")
    return { outcome: "done" as const, detail: `recovered over the existing guest from ${s.op.source.tier} ${s.op.source.point}`, bulk: restored.right }
  })

const rollbackBody = (s: Saga<"recover">, grant: Grant) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const ops = yield* OpLog
    const snapshot = SnapshotName.make(s.op.source.point)
    const r = yield* Effect.either(Effect.gen(function*() {
      const wasRunning = (yield* pve.guestStatus(s.op.vmid)).status === "running"
      const clearance = yield* grant.clear({ call: "rollback", vmid: s.op.vmid, snapshot })
      yield* s.task("rollback", pve.rollback(s.op.vmid, snapshot, { start: wasRunning }, clearance))
    }))
    if (Either.isLeft(r)) {
      yield* ops.finish(s.id, "failed", r.left.message)
      return { outcome: "failed" as const, detail: r.left.message, bulk: [] as ReadonlyArray<BulkReport> }
    }
    yield* ops.finish(s.id, "done")
    return { outcome: "done" as const, detail: `rolled back to snapshot ${snapshot}`, bulk: [] as ReadonlyArray<BulkReport> }
  })

/**
 * Runs a recovery plan. A signature is needed when the plan says so (an overwrite, a rollback, or
 * a guest the agent knows held customer data); without one the result is `pending_signature` and
 * nothing runs. `signed`: the operator's op `recover` with exactly `plan.gatedParams`. The caller
 * holds the guest's queue turn.
 */
export const runRecover = (
  plan: RecoverPlan,
  signed: Option.Option<SignedOp>,
  actor: string,
  opts: { readonly key?: string | null; readonly spec?: DesiredGuest | null } = {}
) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const params: JsonObject = { ...plan.gatedParams }
    if (!plan.needsSignature && Option.isNone(signed)) {
      // a fresh restore into a vmid the agent knows nothing of: nothing is overwritten or replaced
      yield* auditLog.audit({
        actor,
        action: "recover",
        target: String(plan.vmid),
        decision: "allowed",
        detail: { class: "benign", reason: "a fresh restore into an empty vmid the agent holds no record of", params }
      })
      return yield* executeRecover(plan, null, opts)
    }
    const judged = yield* gate({ op: "recover", vmid: plan.vmid, params }, signed, actor)
    if (judged.grant === null) {
      const d = judged.decision
      return { opId: null, outcome: d.verdict, detail: d.verdict === "rejected" ? `${d.reason}: ${d.message}` : d.reason, bulk: [] } satisfies RecoverResult as RecoverResult
    }
    return yield* executeRecover(plan, { decision: judged.decision, grant: judged.grant }, opts)
  })

/**
 * Runs a plan the gate already judged (`approved`: its grant for exactly `plan.gatedParams`), or,
 * with null, a fresh restore that needs no signature. Refuses a mismatch of plan and grant.
 */
export const executeRecover = (
  plan: RecoverPlan,
  approved: { readonly decision: GateDecision; readonly grant: Grant } | null,
  opts: { readonly key?: string | null; readonly spec?: DesiredGuest | null } = {}
) =>
  Effect.gen(function*() {
    const key = opts.key ?? null
    const grant = approved?.grant ?? null
    const refuse = (detail: string) => ({ opId: null, outcome: "rejected" as const, detail, bulk: [] }) satisfies RecoverResult as RecoverResult
    if (grant === null && (plan.mode !== "fresh" || plan.needsSignature)) {
      return { opId: null, outcome: "pending_signature", detail: `a ${plan.mode} recovery of ${plan.vmid} needs an operator signature`, bulk: [] } satisfies RecoverResult as RecoverResult
    }
    if (grant !== null && (grant.action.op !== "recover" || grant.action.vmid !== plan.vmid || !jsonEqual(grant.action.params, { ...plan.gatedParams }))) {
      return refuse(`the approval is for another action than this recovery of ${plan.vmid}`)
    }
    if (plan.mode === "overwrite" && plan.overwriteLosses.length > 0) {
      const lost = plan.overwriteLosses.map((l) => `${l.key} (${l.path})`).join(", ")
      return refuse(`a restore over guest ${plan.vmid} would destroy volumes outside its backups: ${lost}; detach them first`)
    }
    const d = approved?.decision
    const authorization: SignedAuthorization | null = d !== undefined && d.verdict === "signed_ok"
      ? { basis: "signed", signer: d.verified.signer.keyId, fingerprint: d.verified.signer.fingerprint, nonce: d.verified.nonce, job: key }
      : null
    if (plan.scenario !== "guest-loss-partial" && plan.scenario !== "guest-loss-total") {
      return refuse(`a ${plan.scenario} recovery of ${plan.vmid} is not run here (host-loss: runHostLossRecover, under the recovery code)`)
    }
    const scenario = plan.scenario
    const op: OperationOf<"recover"> = {
      _tag: "recover",
      vmid: plan.vmid,
      scenario,
      source: plan.point,
      mode: plan.mode,
      storage: plan.storage,
      spec: opts.spec ?? null,
      marker: yield* newMarker,
      authorization
    }
    const s = yield* beginOperation<"recover">(op, grant === null ? noAdmission : admissionOf(grant, key))
    yield* emitProgress({ kind: "op", opId: s.id, op: "recover", vmid: plan.vmid })
    const r = plan.mode === "fresh"
      ? yield* freshBody(s, plan)
      : grant === null
      ? yield* Effect.die("unreachable: a signed mode without a grant")
      : plan.mode === "overwrite"
      ? yield* overwriteBody(s, plan, grant)
      : yield* rollbackBody(s, grant)
    return { opId: s.id, ...r } satisfies RecoverResult as RecoverResult
  })

/**
 * A host-loss recovery (issue 13, restore mode on a new box): `plan` is a fresh restore of a
 * host-loss scenario from a PBS point the caller checked is encrypted with exactly the key whose
 * fingerprint is `fingerprint` (the one the recovery code unwrapped). The gate re-proves the rest
 * (approveRecoveryCode: scenario, tier, mode fresh, the vmid empty in PVE) and the op records the
 * recovery-code basis. The same fresh body as a guest loss: compensated by destroying exactly this
 * instance until the seal, journal recovery as for any fresh recover. The caller holds the guest's
 * queue turn.
 */
export const runHostLossRecover = (plan: RecoverPlan, fingerprint: KeyFingerprint, opts: { readonly spec?: DesiredGuest | null } = {}) =>
  Effect.gen(function*() {
    const refuse = (detail: string) => ({ opId: null, outcome: "rejected" as const, detail, bulk: [] }) satisfies RecoverResult as RecoverResult
    if (plan.scenario !== "host-loss") return refuse(`the recovery code authorizes host-loss recoveries only, not ${plan.scenario}`)
    const approved = yield* approveRecoveryCode({ op: "recover", vmid: plan.vmid, params: { ...plan.gatedParams } }, plan.mode, fingerprint)
    if (Either.isLeft(approved)) return refuse(approved.left)
    const op: OperationOf<"recover"> = {
      _tag: "recover",
      vmid: plan.vmid,
      scenario: "host-loss",
      source: plan.point,
      mode: "fresh",
      storage: plan.storage,
      spec: opts.spec ?? null,
      marker: yield* newMarker,
      authorization: approved.right
    }
    const s = yield* beginOperation<"recover">(op, noAdmission)
    yield* emitProgress({ kind: "op", opId: s.id, op: "recover", vmid: plan.vmid })
    const r = yield* freshBody(s, plan)
    return { opId: s.id, ...r } satisfies RecoverResult as RecoverResult
  })

/**
 * After a partial-loss recovery, an operator confirms the source is gone: every link-down NIC of
 * the guest comes up. Only for a guest with a completed partial recovery.
 */
export const confirmLink = (vmid: VmId) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const auditLog = yield* AuditLog
    // a partial recovery that reached its seal (done, or ended after it with the guest kept)
    const ended = [...(yield* ops.list({ status: "done", limit: 1000 })), ...(yield* ops.list({ status: "failed", limit: 1000 }))]
    const partial = ended.some((o) => {
      if (o.kind !== "recover" || o.vmid !== vmid || !o.steps.some((st) => st.name === "seal" && st.status === "done")) return false
      const d = decodeOperation(o.payload)
      return Either.isRight(d) && d.right._tag === "recover" && d.right.scenario === "guest-loss-partial"
    })
    if (!partial) return yield* new BadJob({ message: `guest ${vmid} has no completed partial-loss recovery to confirm` })
    const config = yield* pve.guestConfig(vmid)
    const set = Object.fromEntries(nicsOf(config).filter(([, v]) => /(?:^|,)link_down=1(?:,|$)/.test(v)).map(([k, v]) => [k, withLinkDown(v, false)]))
    const nics = Object.keys(set)
    if (nics.length === 0) return nics
    const s = yield* beginOperation<"link-confirm">({ _tag: "link-confirm", vmid, nics })
    yield* s.started("link")
    const clearance = yield* clearBringupConfig(s.id, vmid, nics)
    const upid = yield* pve.setConfigVolumes(vmid, { set }, clearance)
    if (Option.isSome(upid)) {
      yield* ops.recordUpid(s.id, "link", upid.value)
      yield* pve.waitTask(upid.value)
    }
    yield* s.done("link")
    yield* ops.finish(s.id, "done", `link confirmed up for ${nics.join(", ")}`)
    yield* auditLog.audit({ actor: "console", action: "link-confirm", target: String(vmid), decision: "allowed", detail: { nics } })
    return nics
  })

// ---------------------------------------------------------------------------------------------
// Recovery after a crash

/** The post-seal steps of an interrupted recovery, from the archive's config (its tags, its bulk volumes). */
const resumeAfterSeal = (op: JournalOp, typed: OperationOf<"recover">) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    // unreadable now: not finished on a guess (no re-attach, no tags); the op ends failed, kept
    const config = yield* pve.extractConfig(VolumeId.make(typed.source.point))
    const layout = Either.getOrNull(restoreLayout(config, { storage: typed.storage }))
    yield* afterSeal(sagaOf<"recover">(op.id, typed), layout, normalizeTags(config["tags"]))
  })

/**
 * An interrupted recovery. fresh: sealed → kept (finished as far as it got); not sealed → the
 * restored instance destroyed again through the gate (or held). overwrite: never destroyed; the
 * guest is kept or, if PVE removed it, recorded lost; held for an operator unless every step ran.
 * rollback: done if its task completed, else failed (the operator signs again).
 */
export const recoverRecoverOp = (op: JournalOp, typed: OperationOf<"recover">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const { after, done } = yield* settledSteps(op)
    const all = (names: ReadonlyArray<string>) => names.every((n) => done.has(n))
    if (typed.mode === "rollback") {
      if (done.has("rollback")) {
        yield* ops.finish(op.id, "done", "recovered: the rollback had completed")
        return { outcome: "done", detail: "the rollback had completed" }
      }
      yield* ops.finish(op.id, "failed", "recovered: interrupted; not resumed (the operator signs again)")
      return { outcome: "failed", detail: "interrupted; not resumed" }
    }
    if (done.has("seal")) {
      yield* guests.clearProvenance(typed.vmid)
      yield* guests.markRecovered(typed.vmid, `recovered by op ${op.id}`)
      if (all(["untag", "reattach", "start"])) {
        yield* ops.finish(op.id, "done", "recovered: every step had completed")
        return { outcome: "done", detail: "every step had completed" }
      }
      // sealed: the customer's guest. What follows the seal is safe to run again (untag, the re-attach
      // of its own surviving bulk volumes, start): finished now, from the archive's own config
      const resumed = yield* Effect.either(resumeAfterSeal(op, typed))
      if (Either.isRight(resumed)) {
        yield* ops.finish(op.id, "done", "recovered: sealed before the crash; the remaining steps were finished")
        return { outcome: "done", detail: "sealed; the remaining steps were finished" }
      }
      if (resumed.left._tag === "JournalError") return yield* Effect.fail(resumed.left)
      yield* ops.finish(op.id, "failed", `recovered: sealed before the crash; the guest is kept; finishing it failed (${resumed.left.message})`)
      return { outcome: "failed", detail: "sealed; the guest is kept" }
    }
    if (typed.mode === "fresh") {
      // PVE unreachable: left in flight for the next recovery, never held on a transport error
      const r = yield* rollBackCreate(sagaOf<"recover">(op.id, typed), "recovered: interrupted before the seal", { transient: "leave" })
      return r === "rolled_back"
        ? { outcome: "rolled_back", detail: "interrupted before the seal; rolled back" }
        : { outcome: "needs_operator", detail: "interrupted before the seal; could not be undone safely, held for an operator" }
    }
    // overwrite, not sealed
    const touched = after.steps.some((s) => s.name === "restore")
    if (!touched) {
      // stopped for the overwrite (a stop task ran: it was running), never restored: start it again
      const stopped = after.steps.find((s) => s.name === "stop")
      if (stopped !== undefined && stopped.upid !== null) {
        const pve = yield* Proxmox
        const now = yield* existing(typed.vmid)
        if (Option.exists(now, (g) => g.status === "stopped")) yield* pve.waitTask(yield* pve.start(typed.vmid))
      }
      yield* ops.finish(op.id, "failed", "recovered: interrupted before the restore; nothing was overwritten")
      return { outcome: "failed", detail: "interrupted before the restore; nothing overwritten" }
    }
    if (Option.isNone(yield* existing(typed.vmid))) {
      yield* guests.markLost(typed.vmid, `recover ${op.id} was interrupted after the restore began and the guest is gone; a safety backup was taken first`)
    }
    yield* ops.finish(op.id, "needs_operator", "recovered: an overwrite was interrupted after its restore began; held for an operator (never destroyed)")
    return { outcome: "needs_operator", detail: "overwrite interrupted after the restore began; held for an operator" }
  })
