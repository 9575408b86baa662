/**
 * Signed one-shot jobs (SPEC §7b): restore-now, decommission, force-backup. A job names a
 * target; the agent owns the how. Each job is gated (destructive ones need a signature bound to
 * exactly the job's op, guest and params), executed at most once per job id across retries and
 * restarts, journaled, and run through the per-guest serializer: the gate's decision and the
 * execution happen inside the same turn of that guest's queue, so nothing changes the guest
 * between them.
 *
 * What runs is decoded from the signed blob's own params (strictly, per op), never from the
 * hub's copy: the hub's copy only has to be equal to it for the binding check.
 */
import { Idempotency } from "../../layers/Idempotency.js"
import { AuditLog } from "../../layers/AuditLog.js"
import { Clock, Effect, Either, Option, Schema } from "effect"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { type StoreServices } from "../../layers/Journal.js"
import type { Proxmox } from "../../layers/Proxmox.js"
import { type JobEntry, type JobResult, type SignedJob } from "../../schema/hub.js"
import { SnapshotName, StorageId, VolumeId } from "../../schema/ids.js"
import type { JsonObject } from "../../schema/json.js"
import type { RestoreSource, SignedAuthorization } from "../../schema/operations.js"
import { dearmor } from "../../schema/sshsig.js"
import { gate, type GatedAction, type GateResult } from "./gate.js"
import { runStorageRemoval, type StorageRemovalFailed } from "../protection/detach.js"
import { admissionOf, BadJob, decommission, forceBackup, registerGolden, restoreNow, type StepError } from "./steps.js"
import { Retention } from "../../schema/storage.js"
import { adoptSignedRetention } from "../protection/prune.js"
import { ImageRef } from "../../schema/bootstrap.js"
import { type ControllerOpFailed, ControllerOps } from "../controller/ops.js"
import { recoverPlan } from "../bringup/tiers.js"
import { executeRecover } from "../bringup/recoverGuest.js"
import { jsonEqual } from "../../schema/json.js"
import { disableBreakGlassJob, enableBreakGlass } from "../breakglass/enable.js"
import type { BreakGlassRefused, BreakGlassUnitFailed } from "../breakglass/service.js"
import { AgentUpdater, type UpdateFailed } from "../update/saga.js"
import { inUpdateWindow } from "../update/window.js"
import type { UpdateWindow } from "../../schema/desired.js"
import { ReleaseVersion, Sha256Hex } from "../../schema/release.js"
import type { TimeZone } from "../protection/calendar.js"

// The wire shapes live with the rest of the hub contract; re-exported for existing importers.
export { JobResult, SignedJob } from "../../schema/hub.js"

/** Strict base64 (Buffer.from alone skips junk): the blob must be exactly what was signed. */
const decodeBlob = (b64: string): Either.Either<Uint8Array, string> =>
  /^[A-Za-z0-9+/]*={0,2}$/.test(b64) && b64.length % 4 === 0
    ? Either.right(Uint8Array.from(Buffer.from(b64, "base64")))
    : Either.left("blob is not strict base64")

// Per-op params, strict: an extra key is a refusal, never something to ignore.
const strict = { onExcessProperty: "error" } as const
const RestoreFromSnapshot = Schema.Struct({ snapshot: SnapshotName })
const RestoreFromBackup = Schema.Struct({ backup: VolumeId, storage: StorageId, backup_storage: StorageId })
const ForceBackupParams = Schema.Struct({ storage: StorageId })
const GoldenParams = Schema.Struct({ archive: VolumeId })
const RetentionChangeParams = Schema.Struct({ storage: StorageId, retention: Retention })
const StorageRemovalParams = Schema.Struct({ storage: StorageId })
const ControllerUpdateParams = Schema.Struct({ image: ImageRef })
const AgentUpdateParams = Schema.Struct({ version: ReleaseVersion, manifest_sha256: Sha256Hex })
const RecoverParams = Schema.Struct({
  scenario: Schema.Literal("guest-loss-total", "guest-loss-partial"),
  tier: Schema.Literal("snapshot", "vzdump", "pbs"),
  point: Schema.String,
  storage: StorageId
})

export const decodeRestoreSource = (params: JsonObject): Option.Option<RestoreSource> => {
  const snap = Schema.decodeUnknownOption(RestoreFromSnapshot, strict)(params)
  if (Option.isSome(snap)) return Option.some({ snapshot: snap.value.snapshot })
  const backup = Schema.decodeUnknownOption(RestoreFromBackup, strict)(params)
  return Option.map(backup, (b) => ({ backup: b.backup, storage: b.storage, backupStorage: b.backup_storage }))
}

type Approved = Extract<GateResult, { grant: object }>

const run = (
  job: SignedJob,
  approved: Approved,
  key: string
): Effect.Effect<void, StepError | BadJob | StorageRemovalFailed | ControllerOpFailed | BreakGlassRefused | BreakGlassUnitFailed | UpdateFailed, Proxmox | StoreServices> => {
  const vmid = job.guest_id
  const d = approved.decision
  // what runs is the signed op's own params when there is a signature, the job's otherwise
  const params = d.verdict === "signed_ok" ? d.verified.params : job.params
  const signed = (): Either.Either<SignedAuthorization, BadJob> =>
    d.verdict === "signed_ok"
      ? Either.right({ basis: "signed", signer: d.verified.signer.keyId, fingerprint: d.verified.signer.fingerprint, nonce: d.verified.nonce, job: job.id })
      : Either.left(new BadJob({ message: `${job.op} runs only with an operator signature` }))
  switch (job.op) {
    case "decommission": {
      const auth = signed()
      // an empty Struct would accept any object: decommission takes no params at all
      if (vmid === null || Object.keys(params).length > 0) {
        return Effect.fail(new BadJob({ message: "decommission needs guest_id and no params" }))
      }
      return Either.isLeft(auth) ? Effect.fail(auth.left) : decommission(vmid, approved.grant, auth.right, key)
    }
    case "restore-now": {
      const source = decodeRestoreSource(params)
      const auth = signed()
      if (vmid === null || Option.isNone(source)) {
        return Effect.fail(new BadJob({ message: "restore-now needs guest_id and params exactly {snapshot} or {backup, storage, backup_storage}" }))
      }
      return Either.isLeft(auth) ? Effect.fail(auth.left) : restoreNow(vmid, source.value, approved.grant, auth.right, key)
    }
    case "force-backup": {
      const p = Schema.decodeUnknownOption(ForceBackupParams, strict)(params)
      if (vmid === null || Option.isNone(p)) {
        return Effect.fail(new BadJob({ message: "force-backup needs guest_id and params exactly {storage}" }))
      }
      return forceBackup(vmid, p.value.storage, admissionOf(approved.grant, key))
    }
    case "golden-register": {
      const p = Schema.decodeUnknownOption(GoldenParams, strict)(params)
      const auth = signed()
      if (vmid !== null || Option.isNone(p)) {
        return Effect.fail(new BadJob({ message: "golden-register is host-level (guest_id null) with params exactly {archive}" }))
      }
      return Either.isLeft(auth) ? Effect.fail(auth.left) : registerGolden(p.value.archive, approved.grant, auth.right, key)
    }
    case "retention-change": {
      // strict all the way down: an extra key in the retention is a refusal, never ignored
      const p = Schema.decodeUnknownOption(RetentionChangeParams, strict)(params)
      const auth = signed()
      if (vmid !== null || Option.isNone(p)) {
        return Effect.fail(new BadJob({ message: "retention-change is host-level (guest_id null) with params exactly {storage, retention}" }))
      }
      return Either.isLeft(auth) ? Effect.fail(auth.left) : adoptSignedRetention(p.value.storage, p.value.retention, approved.grant, auth.right, key)
    }
    case "storage-detach":
    case "storage-decommission": {
      const p = Schema.decodeUnknownOption(StorageRemovalParams, strict)(params)
      const auth = signed()
      if (vmid !== null || Option.isNone(p)) {
        return Effect.fail(new BadJob({ message: `${job.op} is host-level (guest_id null) with params exactly {storage}` }))
      }
      const mode = job.op === "storage-detach" ? "detach" : "decommission"
      return Either.isLeft(auth) ? Effect.fail(auth.left) : runStorageRemoval(mode, p.value.storage, approved.grant, auth.right, key)
    }
    case "controller-update": {
      // an operator vouches for an image (e.g. one outside controllers.repositories); the policy
      // path ("controller-update-policy") is the plan's own and never runs as a hub job
      const p = Schema.decodeUnknownOption(ControllerUpdateParams, strict)(params)
      const auth = signed()
      if (vmid === null || Option.isNone(p)) {
        return Effect.fail(new BadJob({ message: "controller-update needs guest_id and params exactly {image}" }))
      }
      if (Either.isLeft(auth)) return Effect.fail(auth.left)
      const image = p.value.image
      return Effect.flatMap(Effect.serviceOption(ControllerOps), (c) =>
        Option.isSome(c)
          ? c.value.update(vmid, image, { basis: "signed", authorization: auth.right }, admissionOf(approved.grant, key))
          : Effect.fail<BadJob | ControllerOpFailed>(new BadJob({ message: "this host serves no local API: no controller can be updated" })))
    }
    case "recover": {
      // guest-loss DR: the signed params name the scenario, tier, restore point and target storage;
      // the plan is recomputed now and must name exactly that point (else: re-sign)
      const p = Schema.decodeUnknownOption(RecoverParams, strict)(params)
      const auth = signed()
      if (vmid === null || Option.isNone(p)) {
        return Effect.fail(new BadJob({ message: "recover needs guest_id and params exactly {scenario, tier, point, storage}" }))
      }
      if (Either.isLeft(auth)) return Effect.fail(auth.left)
      const want = p.value
      return Effect.gen(function*() {
        const plan = yield* recoverPlan(vmid, {
          scenario: want.scenario === "guest-loss-partial" ? "partial" : "total",
          source: want.tier,
          desired: null,
          placement: undefined,
          manifest: [],
          // the storage the operator signed: where the plan restores when the archive's own is not attached here
          provisioningStorage: want.storage
        }).pipe(Effect.mapError((e) => new BadJob({ message: `recover of ${vmid} cannot be planned: ${e.message}` })))
        if (!jsonEqual({ ...plan.gatedParams }, { ...want })) {
          return yield* new BadJob({
            message: `the signed recovery of ${vmid} names ${want.tier} ${want.point} on ${want.storage}; the plan now is ${plan.point.tier} ${plan.point.point} on ${plan.storage}: re-sign`
          })
        }
        const r = yield* executeRecover(plan, { decision: approved.decision, grant: approved.grant }, { key })
        if (r.outcome !== "done") return yield* new BadJob({ message: `recover of ${vmid}: ${r.outcome} (${r.detail})` })
      })
    }
    case "break-glass-enable": {
      // the emergency access path (src/programs/breakglass/enable.ts): consent, until and the one
      // open session are checked there, under its lock, before anything is admitted
      const auth = signed()
      if (vmid !== null) return Effect.fail(new BadJob({ message: "break-glass-enable is host-level (guest_id null)" }))
      return Either.isLeft(auth) ? Effect.fail(auth.left) : Effect.asVoid(enableBreakGlass(params, approved.grant, auth.right, key))
    }
    case "break-glass-disable": {
      // unsigned (benign in the gate): it only ever closes access
      if (vmid !== null || Object.keys(job.params).length > 0) {
        return Effect.fail(new BadJob({ message: "break-glass-disable is host-level (guest_id null) with no params" }))
      }
      return Effect.asVoid(disableBreakGlassJob(job.id))
    }
    case "agent-update": {
      // an operator vouches for a release: its version and the SHA-256 of its exact RELEASE.json;
      // the release key's own signature over that manifest is checked by the download step
      const p = Schema.decodeUnknownOption(AgentUpdateParams, strict)(params)
      const auth = signed()
      if (vmid !== null || Option.isNone(p)) {
        return Effect.fail(new BadJob({ message: "agent-update is host-level (guest_id null) with params exactly {version, manifest_sha256}" }))
      }
      if (Either.isLeft(auth)) return Effect.fail(auth.left)
      const want = p.value
      const grant = approved.grant
      return Effect.flatMap(
        Effect.serviceOption(AgentUpdater),
        (u): Effect.Effect<void, BadJob | UpdateFailed | StepError, StoreServices> =>
          Option.isSome(u)
            ? Effect.asVoid(u.value.run(want.version, want.manifest_sha256, auth.right, admissionOf(grant, key)))
            : Effect.fail(new BadJob({ message: "this process has no self-update services: agent-update cannot run here" }))
      )
    }
    default:
      return Effect.fail(new BadJob({ message: `no executor for op '${job.op}'` }))
  }
}

/** Benign to the gate because only the plan, from the agent's config, ever names them. */
const PLAN_ONLY_OPS: ReadonlySet<string> = new Set(["controller-update-policy", "controller-deploy"])

const resultOf = (job: { readonly id: string; readonly op: string; readonly guest_id: number | null }) =>
  (status: JobResult["status"], reason: string): JobResult => ({ id: job.id, op: job.op, guest_id: job.guest_id, status, reason })

export const runSignedJob = (job: SignedJob) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const idem = yield* Idempotency
    const queue = yield* GuestQueue
    const key = `job:${job.id}`
    const result = resultOf(job)

    // A redelivered job id returns what happened the first time and runs nothing.
    const seen = yield* idem.idempotencyGet(key)
    if (Option.isSome(seen)) {
      return result("duplicate", `job ${job.id} was already handled (${seen.value.state}); not run again`)
    }

    // ops the gate passes as benign only because the agent's own plan chose them from its config
    // (controllers.repositories): never on a hub's job, signed or not
    if (PLAN_ONLY_OPS.has(job.op)) {
      yield* auditLog.audit({ actor: "job", action: job.op, target: job.guest_id === null ? null : String(job.guest_id), decision: "rejected:plan_only", detail: { job: job.id } })
      return result("rejected", `plan_only: ${job.op} is decided by the agent's own plan, never by a job (an operator signs controller-update instead)`)
    }

    const action: GatedAction = { op: job.op, vmid: job.guest_id, params: job.params }
    let signed = Option.none<{ readonly blob: Uint8Array; readonly signature: string }>()
    if (job.blob !== undefined && job.signature !== undefined) {
      const bytes = decodeBlob(job.blob)
      if (Either.isLeft(bytes) || Either.isLeft(dearmor(job.signature))) {
        yield* auditLog.audit({ actor: "job", action: job.op, target: job.guest_id === null ? null : String(job.guest_id), decision: "rejected:Malformed", detail: { job: job.id } })
        return result("rejected", "Malformed: the blob or signature does not decode")
      }
      signed = Option.some({ blob: bytes.right, signature: job.signature })
    }

    // gate and execution in one turn of this guest's queue
    return yield* queue.serialize(job.guest_id ?? "host")(
      Effect.gen(function*() {
        const judged = yield* gate(action, signed, "job")
        if (judged.grant === null) {
          const d = judged.decision
          return d.verdict === "pending_signature" ? result("pending_signature", d.reason) : result("rejected", `${d.reason}: ${d.message}`)
        }
        const approved: Approved = judged
        // The job's key, its signature's nonce and its journal op are admitted together (one
        // transaction inside the executor), so redelivery after any crash is an honest duplicate.
        const outcome = yield* Effect.either(run(job, approved, key))
        if (Either.isLeft(outcome)) {
          const e = outcome.left
          if (e._tag === "AdmissionRefused") {
            return e.reason === "duplicate"
              ? result("duplicate", `job ${job.id} was already handled; not run again`)
              : result("rejected", `Replay: ${e.message}`)
          }
          // break-glass's own refusals (no consent, until, an open session): nothing was admitted
          if (e._tag === "BreakGlassRefused") return result("rejected", `${e.reason}: ${e.message}`)
          // admitted ops record their end; a job refused before admission claimed nothing
          yield* idem.idempotencyGet(key).pipe(
            Effect.flatMap((claimed) => Option.isSome(claimed) ? idem.idempotencyComplete(key, { status: "failed", reason: e.message }) : Effect.void)
          )
          return result("failed", `${e._tag}: ${e.message}`)
        }
        yield* idem.idempotencyComplete(key, { status: "done" })
        return result("done", approved.decision.reason)
      })
    )
  })

/**
 * A batch from the hub, one entry at a time: an entry that did not decode (prototype keys,
 * absurd nesting, a missing field) is rejected on its own and never costs the others.
 */
export const runJobBatch = (entries: ReadonlyArray<JobEntry>, updates?: UpdateWindowContext) =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const deferred = (entry: JobEntry) =>
      updates !== undefined && Either.isRight(entry) && entry.right.op === "agent-update" && !inUpdateWindow(updates.window, updates.timeZone, now)
    const results = yield* Effect.forEach(entries, (entry, i) =>
      deferred(entry)
        // left unanswered: nothing judged, nothing admitted, so its nonce stays unspent and the
        // hub hands it out again; a poll inside the window runs it
        ? Effect.as(
          Effect.logInfo(`job ${Either.isRight(entry) ? entry.right.id : "?"} agent-update: deferred to the update window (${updates?.window?.start}-${updates?.window?.end})`),
          Option.none<JobResult>()
        )
        : Either.match(entry, {
          onLeft: (bad) =>
            Effect.succeed(Option.some(resultOf({ id: bad.id ?? `invalid-${i}`, op: bad.op ?? "unknown", guest_id: null })(
              "rejected",
              `Malformed: ${bad.message}`
            ))),
          onRight: (job) => Effect.map(runSignedJob(job), Option.some)
        }))
    return results.flatMap(Option.toArray)
  })

/** The desired state's update window and the zone it is read in (protection.time_zone). */
export interface UpdateWindowContext {
  readonly window: UpdateWindow | undefined
  readonly timeZone: TimeZone
}
