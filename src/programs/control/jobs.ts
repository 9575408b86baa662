/**
 * Signed one-shot jobs (SPEC §7b): restore-now, decommission, force-backup. A job names a
 * target; the agent owns the how. Each job is gated (destructive ones need a signature bound to
 * exactly the job's op, guest and params), executed at most once per job id across retries and
 * restarts, journaled, and run through the per-guest serializer.
 */
import { Effect, Either, Option, Schema } from "effect"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { Journal } from "../../layers/Journal.js"
import { type JobResult, type SignedJob } from "../../schema/hub.js"
import { StorageId } from "../../schema/ids.js"
import { dearmor } from "../../schema/sshsig.js"
import type { Proxmox } from "../../layers/Proxmox.js"
import { BadJob, decommission, decodeRestoreSource, forceBackup, restoreNow, type StepError } from "./steps.js"
import { gate, type GatedAction } from "./gate.js"

// The wire shapes live with the rest of the hub contract; re-exported for existing importers.
export { JobResult, SignedJob } from "../../schema/hub.js"

/** Strict base64 (Buffer.from alone skips junk): the blob must be exactly what was signed. */
const decodeBlob = (b64: string): Either.Either<Uint8Array, string> =>
  /^[A-Za-z0-9+/]*={0,2}$/.test(b64) && b64.length % 4 === 0
    ? Either.right(Uint8Array.from(Buffer.from(b64, "base64")))
    : Either.left("blob is not strict base64")

const run = (job: SignedJob, authorization: unknown): Effect.Effect<void, StepError | BadJob, Proxmox | Journal> => {
  const vmid = job.guest_id
  switch (job.op) {
    case "decommission":
      return vmid === null ? Effect.fail(new BadJob({ message: "decommission needs guest_id" })) : decommission(vmid, authorization)
    case "restore-now": {
      const source = decodeRestoreSource(job.params)
      if (vmid === null || Option.isNone(source)) {
        return Effect.fail(new BadJob({ message: "restore-now needs guest_id and params {snapshot} or {backup, storage, backup_storage}" }))
      }
      return restoreNow(vmid, source.value, authorization)
    }
    case "force-backup": {
      const storage = Schema.decodeUnknownOption(StorageId)(job.params["storage"])
      if (vmid === null || Option.isNone(storage)) {
        return Effect.fail(new BadJob({ message: "force-backup needs guest_id and params.storage" }))
      }
      return forceBackup(vmid, storage.value)
    }
    default:
      return Effect.fail(new BadJob({ message: `no executor for op '${job.op}'` }))
  }
}

export const runSignedJob = (job: SignedJob) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const queue = yield* GuestQueue
    const key = `job:${job.id}`
    const result = (status: JobResult["status"], reason: string): JobResult => ({
      id: job.id,
      op: job.op,
      guest_id: job.guest_id,
      status,
      reason
    })

    // A redelivered job id returns what happened the first time and runs nothing.
    const seen = yield* journal.idempotencyGet(key)
    if (Option.isSome(seen)) {
      return result("duplicate", `job ${job.id} was already handled (${seen.value.state}); not run again`)
    }

    const action: GatedAction = { op: job.op, vmid: job.guest_id, params: job.params }
    let signed = Option.none<{ readonly blob: Uint8Array; readonly signature: string }>()
    if (job.blob !== undefined && job.signature !== undefined) {
      const bytes = decodeBlob(job.blob)
      if (Either.isLeft(bytes) || Either.isLeft(dearmor(job.signature))) {
        yield* journal.audit({ actor: "job", action: job.op, target: job.guest_id === null ? null : String(job.guest_id), decision: "rejected:Malformed", detail: { job: job.id } })
        return result("rejected", "Malformed: the blob or signature does not decode")
      }
      signed = Option.some({ blob: bytes.right, signature: job.signature })
    }

    const decision = yield* gate(action, signed, "job")
    if (decision.verdict === "pending_signature") return result("pending_signature", decision.reason)
    if (decision.verdict === "rejected") return result("rejected", `${decision.reason}: ${decision.message}`)

    const authorization = decision.verdict === "signed_ok"
      ? { signer: decision.verified.signer.keyId, fingerprint: decision.verified.signer.fingerprint, nonce: decision.verified.nonce, job: job.id }
      : { job: job.id, reason: decision.reason }
    const outcome = yield* queue.serialize(job.guest_id ?? "host")(
      journal.runOnce(key, run(job, authorization), () => ({ status: "done" }))
    ).pipe(Effect.either)
    if (Either.isLeft(outcome)) {
      yield* journal.idempotencyComplete(key, { status: "failed", reason: outcome.left.message })
      return result("failed", `${outcome.left._tag}: ${outcome.left.message}`)
    }
    if (outcome.right.replayed) return result("duplicate", `job ${job.id} was already handled; not run again`)
    return result("done", decision.reason)
  })
