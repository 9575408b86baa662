/**
 * The reversibility gate (SPEC §7, issue 8): the one module that can mint a `Clearance`, the only
 * key to an irreversible PVE call. Classification is by provenance and data-bearing-ness, not by
 * verb. Benign actions run; destructive ones run only with a valid, role-scoped operator
 * signature bound to exactly this action. Every decision is audited.
 *
 * What an approved action may do irreversibly is fixed here too (`permits`): a signed
 * decommission of 101 clears a destroy of 101 and nothing else; a signed restore-now from backup
 * X clears a restore-overwrite of that guest from X. The Proxmox layer re-checks each clearance
 * against the exact call before sending it.
 *
 * Provenance comes only from the journal (agent-internal). Same-transaction provenance is never
 * a reason to approve an action that arrives from the hub: it clears only the create saga's own
 * compensation (`clearCompensation`), for the exact guest instance that saga restored (its
 * marker tag), while the saga is in flight, before the guest was ever started.
 */
import { OpLog } from "../../layers/OpLog.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import { AuditLog } from "../../layers/AuditLog.js"
import { Effect, Either, Option, Schema } from "effect"
import { Authz, type AuthzShape, type VerifiedOp } from "../../layers/Authz.js"
import { type JournalError, type NonceSpend, type StoreServices } from "../../layers/Journal.js"
import { Proxmox } from "../../layers/Proxmox.js"
import {
  type CallKind,
  type CallOf,
  type Clearance,
  type ClearanceBasis,
  ClearanceRefused,
  type IrreversibleCall,
  takeIssuer
} from "../../schema/clearance.js"
import { SnapshotName, VolumeId, type VmId } from "../../schema/ids.js"
import { jsonEqual, type JsonObject } from "../../schema/json.js"
import { decodeOperation, type ScratchMarker } from "../../schema/operations.js"
import { PveLocked, type ProxmoxError } from "../../schema/proxmox.js"
import { lockRetry } from "./schedules.js"
import { normalizeTags } from "./plan.js"
import { inScratchRange, RestoreTestSettings } from "../protection/scratch.js"
import type { StorageId } from "../../schema/ids.js"
import type { TimeZone } from "../protection/calendar.js"
import { removals, retentionInForce } from "../protection/policy.js"
import { byGuest, listedArchives, newestOf, oursOf, ownership } from "../protection/provenance.js"
import { ControllerStore, type SnapshotOrigin } from "../../layers/ControllerStore.js"
import { CONTROLLER_SNAPSHOT_PREFIX, PRE_UPDATE_SNAPSHOT_PREFIX } from "../../schema/localApi.js"

// Taken at load: a second taker anywhere in the process crashes at start (see clearance.ts).
const mint = takeIssuer()

/** What the gate judges: the op name a signed blob would carry, its guest and its params. */
export interface GatedAction {
  readonly op: string
  readonly vmid: VmId | null
  readonly params: JsonObject
}

export type ActionClass = "benign" | "destructive"

export type GateDecision =
  | { readonly verdict: "allowed"; readonly class: "benign"; readonly reason: string }
  | { readonly verdict: "pending_signature"; readonly class: "destructive"; readonly reason: string }
  | { readonly verdict: "signed_ok"; readonly class: "destructive"; readonly reason: string; readonly verified: VerifiedOp }
  | {
    readonly verdict: "rejected"
    readonly class: "destructive"
    /** binding_mismatch, role_denied, or the Authz error tag (Malformed, Replay, ...). */
    readonly reason: string
    readonly message: string
  }

/** Config keys whose change never removes data (volumes are `rootfs`, `mpN`, `unusedN`). */
const DATA_SAFE_CONFIG_KEYS = new Set(["cores", "memory", "swap", "hostname", "description", "tags", "onboot", "cpulimit", "cpuunits"])

/** Ops that never destroy data whatever their target (resize: grow-only and bounded by the plan). */
const ALWAYS_BENIGN = new Set([
  "create",
  "start",
  "stop",
  "shutdown",
  "restart",
  "resize",
  "snapshot",
  "force-backup",
  // the back half: a token and read-only bootstrap files; nothing of the guest's data is touched
  "controller-deploy",
  // the plan names this op only for an image in the operator's controllers.repositories (the hub
  // cannot: a hub job with it is refused by the job runner); health-checked and rolled back
  "controller-update-policy",
  // closes the emergency access path early (SPEC §15: unsigned): it only ever reduces access; a
  // hostile hub can at worst cut an operator's session short, never open one
  "break-glass-disable"
])

/** Ops that overwrite or remove data whatever their provenance. */
const ALWAYS_DESTRUCTIVE = new Set(["restore-now", "storage-detach", "storage-decommission", "storage-wipe", "break-glass-enable"])

/** Ops that change no data now but decide what later changes are made from: signature only. */
const SIGNED_ONLY: ReadonlyMap<string, string> = new Map([
  ["golden-register", "registers a provisioning source (a golden archive): only an operator vouches for one"],
  ["retention-change", "a retention policy that would delete existing backups: only an operator may make it the policy in force"],
  ["controller-update", "a controller image outside the operator's repositories runs as root in the customer's guest: only an operator vouches for it"],
  ["agent-update", "runs new agent code as the service user and root's CLI: only an operator vouches for a release"],
  [
    "recover",
    "brings a customer guest back from a restore point only an operator chooses (it decides which data the customer has; over an existing guest it overwrites it)"
  ]
])

/** Ops a recovery key may sign: rotation only (SPEC §5). */
export const RECOVERY_OPS = new Set(["rotate-recovery-code", "rotate-escrow"])

/** Only scratch provenance (restore-test guests the agent tagged) can make a destroy benign. */
export type Provenance = Option.Option<{ readonly kind: "scratch"; readonly opId: string }>

/** Pure classification; anything unknown is destructive. */
export const classify = (action: GatedAction, provenance: Provenance): { readonly class: ActionClass; readonly reason: string } => {
  const op = action.op
  if (ALWAYS_BENIGN.has(op)) return { class: "benign", reason: `${op} keeps all data` }
  if (op === "set_config") {
    const keys = Object.keys(action.params)
    const unsafe = keys.filter((k) => !DATA_SAFE_CONFIG_KEYS.has(k))
    return unsafe.length === 0
      ? { class: "benign", reason: "config change keeps data" }
      : { class: "destructive", reason: `config change touches ${unsafe.join(", ")} (may remove data)` }
  }
  if (op === "decommission" || op === "destroy") {
    if (Option.isSome(provenance)) return { class: "benign", reason: `guest is agent-tagged scratch (op ${provenance.value.opId})` }
    return { class: "destructive", reason: "destroys a guest holding customer data" }
  }
  if (ALWAYS_DESTRUCTIVE.has(op)) return { class: "destructive", reason: `${op} overwrites or removes customer data` }
  const signedOnly = SIGNED_ONLY.get(op)
  if (signedOnly !== undefined) return { class: "destructive", reason: signedOnly }
  return { class: "destructive", reason: `unknown operation class '${op}' fails safe to destructive` }
}

/** Checks a verified op against the action it is meant to authorize: op, guest and params exactly. */
export const bindingError = (action: GatedAction, v: VerifiedOp): string | undefined => {
  if (v.op !== action.op) return `signed op is '${v.op}', the action is '${action.op}'`
  if (v.guestId !== action.vmid) return `signed op targets guest ${v.guestId ?? "none"}, the action targets ${action.vmid ?? "none"}`
  if (!jsonEqual(v.params, action.params)) return "signed params differ from the action's params"
  return undefined
}

/** Scratch provenance from the journal; same-transaction provenance never approves an action. */
export const currentProvenance = (vmid: VmId | null) =>
  Effect.gen(function*() {
    if (vmid === null) return Option.none() as Provenance
    const guests = yield* GuestRecords
    const p = yield* guests.provenanceOf(vmid)
    return Option.isSome(p) && p.value.kind === "scratch"
      ? Option.some({ kind: "scratch" as const, opId: p.value.opId })
      : (Option.none() as Provenance)
  })

export interface SignedOp {
  readonly blob: Uint8Array
  readonly signature: string | Uint8Array
}

/**
 * The decision itself, with the verifier passed in: the gate uses the agent's Authz (which
 * consumes the nonce), `plan` a throwaway one (a preview consumes nothing). No audit, no grant.
 */
export const judge = (
  action: GatedAction,
  provenance: Provenance,
  signed: Option.Option<SignedOp>,
  authz: Option.Option<AuthzShape>
): Effect.Effect<GateDecision> =>
  Effect.gen(function*() {
    const c = classify(action, provenance)
    if (c.class === "benign") return { verdict: "allowed", class: "benign", reason: c.reason } as const
    if (Option.isNone(signed) || Option.isNone(authz)) {
      return { verdict: "pending_signature", class: "destructive", reason: c.reason } as const
    }
    // check only: the nonce is spent when the op is admitted into the journal (Journal.admit)
    const verified = yield* Effect.either(authz.value.check(signed.value))
    if (verified._tag === "Left") {
      return { verdict: "rejected", class: "destructive", reason: verified.left._tag, message: verified.left.message } as const
    }
    const v = verified.right
    if (v.signer.role === "recovery" && !RECOVERY_OPS.has(action.op)) {
      return {
        verdict: "rejected",
        class: "destructive",
        reason: "role_denied",
        message: `recovery key ${v.signer.keyId} may only sign rotation, not '${action.op}'`
      } as const
    }
    const mismatch = bindingError(action, v)
    if (mismatch !== undefined) {
      return { verdict: "rejected", class: "destructive", reason: "binding_mismatch", message: mismatch } as const
    }
    return {
      verdict: "signed_ok",
      class: "destructive",
      reason: `${c.reason}; signed by ${v.signer.keyId} (${v.signer.role})`,
      verified: v
    } as const
  })

// ---------------------------------------------------------------------------------------------
// What an approved action may do irreversibly

const decodeParam = <A, I>(schema: Schema.Schema<A, I>, params: JsonObject, key: string): Option.Option<A> =>
  Object.hasOwn(params, key) ? Schema.decodeUnknownOption(schema)(params[key]) : Option.none()

/** The irreversible calls an approved action entails; nothing else can be cleared for it. */
export const permits = (action: GatedAction, call: IrreversibleCall): boolean => {
  if (action.vmid === null || call.vmid !== action.vmid) return false
  switch (action.op) {
    case "decommission":
    case "destroy":
      return call.call === "destroy"
    case "restore-now": {
      if (call.call === "rollback") {
        return Option.exists(decodeParam(SnapshotName, action.params, "snapshot"), (s) => s === call.snapshot)
      }
      if (call.call === "restore-overwrite") {
        return Option.exists(decodeParam(VolumeId, action.params, "backup"), (b) => b === call.archive)
      }
      return false
    }
    case "recover": {
      // guest-loss DR over an existing guest: exactly the signed restore point, nothing else
      const point = action.params["point"]
      if (typeof point !== "string") return false
      if (call.call === "rollback") return action.params["tier"] === "snapshot" && call.snapshot === point
      if (call.call === "restore-overwrite") return action.params["tier"] !== "snapshot" && call.archive === point
      return false
    }
    case "resize":
      return call.call === "resize" && call.disk === action.params["disk"] && call.size === `${String(action.params["size_gib"])}G`
    case "create":
      // sizing the guest it just restored
      return call.call === "resize" && call.disk === "rootfs" && call.size === `${String(action.params["rootfs_gib"])}G`
    default:
      return false
  }
}

/**
 * Proof the gate approved one action: clears exactly the calls that action entails. A signed
 * grant clears nothing until its nonce is spent, i.e. until its op was admitted into the journal.
 */
export interface Grant {
  readonly action: GatedAction
  readonly basis: ClearanceBasis
  /** The signature's nonce, spent by Journal.admit with the op; null when unsigned. */
  readonly nonce: NonceSpend | null
  readonly clear: <K extends CallKind>(call: CallOf<K>) => Effect.Effect<Clearance<K>, ClearanceRefused | JournalError, StoreServices>
}

const grantFor = (action: GatedAction, basis: ClearanceBasis, nonce: NonceSpend | null = null): Grant => ({
  action,
  basis,
  nonce,
  clear: (call) =>
    Effect.gen(function*() {
      if (!permits(action, call)) {
        return yield* new ClearanceRefused({ message: `${action.op} of ${action.vmid ?? "host"} does not entail ${call.call} of ${call.vmid}` })
      }
      if (nonce !== null && !(yield* Effect.flatMap(OpLog, (j) => j.nonceRecorded(nonce.nonce)))) {
        return yield* new ClearanceRefused({ message: `${action.op} of ${action.vmid ?? "host"}: the signed op was not admitted into the journal` })
      }
      return mint(call, basis)
    })
})

export type GateResult =
  | { readonly decision: Extract<GateDecision, { verdict: "allowed" | "signed_ok" }>; readonly grant: Grant }
  | { readonly decision: Extract<GateDecision, { verdict: "pending_signature" | "rejected" }>; readonly grant: null }

/**
 * Judges one action with the agent's Authz, audits the decision, and for an approved action
 * returns the grant its executor needs for each irreversible call.
 */
export const gate = (action: GatedAction, signed: Option.Option<SignedOp>, actor = "gate") =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const authz = yield* Authz
    // provenance is agent-internal: only the journal can say a guest is scratch
    const decision = yield* judge(action, yield* currentProvenance(action.vmid), signed, Option.some(authz))
    yield* auditLog.audit({
      actor,
      action: action.op,
      target: action.vmid === null ? null : String(action.vmid),
      decision: decision.verdict === "rejected" ? `rejected:${decision.reason}` : decision.verdict,
      detail: {
        class: decision.class,
        reason: decision.reason,
        params: action.params,
        ...(decision.verdict === "rejected" ? { message: decision.message } : {}),
        ...(decision.verdict === "signed_ok"
          ? { signer: decision.verified.signer.keyId, fingerprint: decision.verified.signer.fingerprint, nonce: decision.verified.nonce }
          : {})
      }
    })
    switch (decision.verdict) {
      case "allowed":
        return { decision, grant: grantFor(action, { basis: "benign", reason: decision.reason }) } satisfies GateResult as GateResult
      case "signed_ok":
        return {
          decision,
          grant: grantFor(action, { basis: "signed", signer: decision.verified.signer.keyId, nonce: decision.verified.nonce }, {
            nonce: decision.verified.nonce,
            signerFingerprint: decision.verified.signer.fingerprint,
            op: decision.verified.op,
            expiresAtMs: decision.verified.expiresAtMs
          })
        } satisfies GateResult as GateResult
      default:
        return { decision, grant: null } satisfies GateResult as GateResult
    }
  })

// ---------------------------------------------------------------------------------------------
// Clearances from the journal: compensation, resume, and the operator's console

const notFound = (e: ProxmoxError) => e._tag === "PveApiError" && e.kind === "not_found"

export type CompensationVerdict =
  | { readonly _tag: "absent" }
  | { readonly _tag: "foreign" }
  | { readonly _tag: "ours"; readonly clearance: Clearance<"destroy"> }

/** Reads a guest's config, waiting out a create/restore lock (the marker is written at its end). */
const settledConfig = (vmid: VmId) =>
  Effect.flatMap(Proxmox, (pve) =>
    pve.guestConfig(vmid).pipe(
      Effect.flatMap((c) =>
        c.lock === "create" || c.lock === "restore"
          ? Effect.fail(new PveLocked({ method: "GET", path: `lxc/${vmid}/config`, lock: c.lock, message: `guest ${vmid} is locked (${c.lock})` }))
          : Effect.succeed(c)
      ),
      Effect.retry({ schedule: lockRetry, while: (e) => e._tag === "PveLocked" }),
      Effect.map(Option.some),
      Effect.catchIf(notFound, () => Effect.succeedNone)
    ))

/**
 * What the create saga `opId` may do to undo itself at `vmid`. The instance is proven only by
 * the marker recorded in the op's own journal payload (written before the restore was sent) and
 * found on the guest in PVE: `ours` (with a destroy clearance) requires the op in flight, never
 * sealed or started, the marker on the guest, and the guest stopped; a guest without the marker
 * is `foreign` and is never touched; anything else is refused (the caller holds the op for an
 * operator).
 */
export const clearCompensation = (opId: string, vmid: VmId) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const refuse = (why: string) =>
      Effect.zipRight(
        auditLog.audit({ actor: "gate", action: "destroy", target: String(vmid), decision: "refused:compensation", detail: { op: opId, reason: why } }),
        Effect.fail(new ClearanceRefused({ message: `compensating destroy of ${vmid} refused: ${why}` }))
      )
    const op = yield* ops.get(opId)
    if (Option.isNone(op) || op.value.status !== "in_flight") return yield* refuse(`op ${opId} is not in flight`)
    const typed = decodeOperation(op.value.payload)
    // a create, or a recovery that restored into an empty vmid (an overwrite or a rollback acted
    // on the customer's own guest: never undone by a destroy)
    if (
      Either.isLeft(typed) || typed.right.vmid !== vmid ||
      !(typed.right._tag === "create" || (typed.right._tag === "recover" && typed.right.mode === "fresh"))
    ) {
      return yield* refuse(`op ${opId} is not a create or a fresh recovery of ${vmid}`)
    }
    const marker = typed.right.marker
    const steps = new Map(op.value.steps.map((s) => [s.name, s.status]))
    if (steps.get("seal") === "done" || steps.has("start")) return yield* refuse("the guest was sealed or started: it is customer data")
    if (!steps.has("restore")) return { _tag: "absent" } as CompensationVerdict // the restore was never sent
    const config = yield* settledConfig(vmid)
    if (Option.isNone(config)) return { _tag: "absent" } as CompensationVerdict
    if (!normalizeTags(config.value.tags).includes(marker)) return { _tag: "foreign" } as CompensationVerdict
    const status = yield* pve.guestStatus(vmid)
    if (status.status !== "stopped") return yield* refuse(`the guest is ${status.status}; it was started after the restore`)
    yield* auditLog.audit({
      actor: "gate",
      action: "destroy",
      target: String(vmid),
      decision: "allowed",
      detail: { op: opId, reason: `compensating rollback of ${typed.right._tag} ${opId} (same-transaction provenance, marker ${marker})` }
    })
    return { _tag: "ours", clearance: mint({ call: "destroy", vmid }, { basis: "provenance", opId }) } as CompensationVerdict
  })

/** A destroy clearance to finish an in-flight decommission the journal records as signed. */
export const clearResume = (opId: string, vmid: VmId) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const ops = yield* OpLog
    const op = yield* ops.get(opId)
    const decoded = Option.map(op, (o) => ({ status: o.status, decoded: decodeOperation(o.payload) }))
    if (
      Option.isNone(decoded) || decoded.value.status !== "in_flight" || Either.isLeft(decoded.value.decoded) ||
      decoded.value.decoded.right._tag !== "decommission" || decoded.value.decoded.right.vmid !== vmid
    ) {
      return yield* new ClearanceRefused({ message: `op ${opId} is not an in-flight signed decommission of ${vmid}` })
    }
    const auth = decoded.value.decoded.right.authorization
    yield* auditLog.audit({
      actor: "gate",
      action: "destroy",
      target: String(vmid),
      decision: "allowed",
      detail: { op: opId, reason: `resuming decommission signed by ${auth.signer} (nonce ${auth.nonce})` }
    })
    return mint({ call: "destroy", vmid }, { basis: "resume", opId })
  })

/**
 * The operator at the host's console: `felhom-agent selftest task --yes` (rollback to and delete
 * of the snapshot it just took) and the test suite's direct client tests. The import-boundary
 * lint fails the build if any other module under src/ calls this.
 */
export const clearForConsole = <K extends CallKind>(call: CallOf<K>, reason: string): Clearance<K> =>
  mint(call, { basis: "console", reason })

/**
 * A host-loss restore under the recovery code (issue 13, SPEC §10): the person at the new box
 * typed R, which unwrapped the escrowed PBS key with `fingerprint`. That proves who may bring the
 * lost host's guests back, and nothing more: this basis approves only op `recover` with scenario
 * host-loss from a PBS point, mode fresh, into a vmid PVE holds no guest at (re-read here, after
 * any create/restore lock settles). Never an overwrite or a rollback: it clears no irreversible
 * call (a fresh restore needs none). Audited either way; Left says why it is refused.
 */
export const approveRecoveryCode = (action: GatedAction, mode: "fresh" | "overwrite" | "rollback", fingerprint: string) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const vmid = action.vmid
    const decide = (decision: string, reason: string) =>
      auditLog.audit({ actor: "gate", action: action.op, target: vmid === null ? null : String(vmid), decision, detail: { basis: "recovery-code", fingerprint, reason, params: action.params } })
    const refuse = (why: string) => Effect.as(decide("refused:recovery-code", why), Either.left(why))
    if (action.op !== "recover" || vmid === null) return yield* refuse(`the recovery code authorizes only a recovery of a guest, not ${action.op}`)
    if (action.params["scenario"] !== "host-loss") return yield* refuse("the recovery code authorizes only a host-loss recovery")
    if (action.params["tier"] !== "pbs") return yield* refuse("a host-loss recovery restores from PBS only")
    if (mode !== "fresh") return yield* refuse(`the recovery code never authorizes ${mode === "overwrite" ? "a restore over an existing guest" : "a rollback"}`)
    const present = yield* Effect.either(settledConfig(vmid))
    if (Either.isLeft(present)) return yield* refuse(`whether ${vmid} is empty could not be read (${present.left._tag}): nothing is restored on a guess`)
    if (Option.isSome(present.right)) return yield* refuse(`a guest exists at ${vmid}: a host-loss restore goes into empty vmids only`)
    yield* decide("allowed", `fresh host-loss restore of ${vmid} into an empty vmid; the recovery code unwrapped the PBS key ${fingerprint}`)
    return Either.right({ basis: "recovery-code" as const, fingerprint })
  })

/** A grant on the console basis for one action (same callers as clearForConsole). */
export const consoleGrant = (action: GatedAction, reason: string): Grant => grantFor(action, { basis: "console", reason })

/**
 * A retention deletion (issue 10): a `delete-backup` clearance for `volid` (guest `vmid`, on
 * `storage`) for the prune saga `opId`. The gate re-proves everything itself, from the journal and
 * a fresh listing, never from what the saga says; it mints only if ALL hold:
 *   1. `opId` is an in-flight `prune` of exactly this guest and storage whose archive list, fixed
 *      when it began, names `volid`;
 *   2. PVE lists `volid` now, as a backup of `vmid` on `storage`;
 *   3. the archive is ours: its notes name a backup op the journal knows for this guest and
 *      storage (src/programs/protection/provenance.ts);
 *   4. it is neither the newest archive of this guest on this target nor our newest there;
 *   5. the retention in force on `storage` (ProtectionStore; none keeps everything) removes it.
 * Every decision is audited. `tz` is the host's configured zone (periods are local days).
 */
export const clearPrune = (opId: string, vmid: VmId, storage: StorageId, volid: VolumeId, tz: TimeZone) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const refuse = (why: string) =>
      Effect.zipRight(
        auditLog.audit({ actor: "gate", action: "delete-backup", target: String(vmid), decision: "refused:prune", detail: { op: opId, storage, volid, reason: why } }),
        Effect.fail(new ClearanceRefused({ message: `deleting ${volid} refused: ${why}` }))
      )
    const op = yield* ops.get(opId)
    if (Option.isNone(op) || op.value.status !== "in_flight") return yield* refuse(`op ${opId} is not in flight`)
    const typed = decodeOperation(op.value.payload)
    if (Either.isLeft(typed) || typed.right._tag !== "prune" || op.value.kind !== "prune" || typed.right.vmid !== vmid || typed.right.storage !== storage) {
      return yield* refuse(`op ${opId} is not a prune of guest ${vmid} on ${storage}`)
    }
    if (!typed.right.archives.includes(volid)) return yield* refuse(`op ${opId} did not list this archive when it began`)
    const listed = yield* pve.storageContent(storage, { content: "backup", vmid }).pipe(
      Effect.map((entries) => byGuest(listedArchives(storage, entries)).get(vmid) ?? []),
      Effect.catchAll((e) => refuse(`the storage could not be listed (${e._tag})`))
    )
    const archive = listed.find((a) => a.id === volid)
    if (archive === undefined) return yield* refuse(`PVE does not list it as a backup of guest ${vmid} on ${storage}`)
    const owned = yield* ownership(listed)
    const own = owned.get(volid)
    if (own === undefined || !own.ours) return yield* refuse(`not made by the agent: ${own !== undefined && !own.ours ? own.reason : "unknown"}`)
    const ours = oursOf(listed, owned)
    if (newestOf(listed)?.id === volid || newestOf(ours)?.id === volid) return yield* refuse("it is the newest backup of the guest on this target")
    const policy = yield* retentionInForce(storage)
    if (Option.isNone(policy)) return yield* refuse("no retention is in force on this target: everything is kept")
    if (!removals(ours, listed, policy, tz).some((a) => a.id === volid)) return yield* refuse("the retention in force keeps it")
    yield* auditLog.audit({
      actor: "gate",
      action: "delete-backup",
      target: String(vmid),
      decision: "allowed",
      detail: { op: opId, storage, volid, reason: `retention in force removes it (archive of op ${own.opId})`, retention: policy.value }
    })
    return mint({ call: "delete-backup", vmid, storage, volume: volid }, { basis: "provenance", opId })
  })

// ---------------------------------------------------------------------------------------------
// Self-restore-test scratch guests (issue 10)

export type ScratchVerdict =
  /** Nothing at that vmid: nothing to tear down. */
  | { readonly _tag: "absent" }
  /** Proven to be exactly the scratch guest of that op; `status` as PVE reports it now. */
  | { readonly _tag: "ours"; readonly status: "running" | "stopped"; readonly marker: ScratchMarker }
  /** Not proven: never stopped, reconfigured or destroyed; the caller holds it for an operator. */
  | { readonly _tag: "refused"; readonly reason: string }

/**
 * Whether the guest at `vmid` is provably the scratch guest restore-test `opId` made. All of:
 * the op is in flight, is a restore-test, and its payload names exactly this vmid; the vmid lies
 * in the configured scratch range; the journal's provenance for the vmid is `scratch`, recorded by
 * this op with this op's marker; the vmid is no guest the journal knows as customer data (created,
 * adopted or lost); and the guest in PVE carries exactly one tag, the marker (read once any
 * create/restore lock is gone, since PVE writes the tags at the end of the restore). A copied tag
 * without the journal, a journal entry of another op, a vmid outside the range, or a guest whose
 * tags differ is refused. Reads only; audits nothing (the minting callers do).
 */
export const scratchVerdict = (opId: string, vmid: VmId) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const guests = yield* GuestRecords
    const settings = yield* RestoreTestSettings
    const pve = yield* Proxmox
    const refused = (reason: string) => ({ _tag: "refused", reason }) as ScratchVerdict
    const op = yield* ops.get(opId)
    if (Option.isNone(op) || op.value.status !== "in_flight") return refused(`op ${opId} is not in flight`)
    const typed = decodeOperation(op.value.payload)
    if (Either.isLeft(typed) || typed.right._tag !== "restore-test" || typed.right.vmid !== vmid || op.value.vmid !== vmid) {
      return refused(`op ${opId} is not a restore-test of scratch guest ${vmid}`)
    }
    const marker = typed.right.marker
    if (!inScratchRange(settings, vmid)) {
      return refused(`${vmid} is outside the scratch range ${settings.scratchMin}..${settings.scratchMax}`)
    }
    const p = yield* guests.provenanceOf(vmid)
    if (Option.isNone(p) || p.value.kind !== "scratch" || p.value.opId !== opId || p.value.marker !== marker) {
      return refused(`the journal does not record ${vmid} as scratch of op ${opId} with its marker`)
    }
    if ((yield* guests.guestRecords).some((r) => r.vmid === vmid)) return refused(`${vmid} is recorded as a customer guest`)
    const config = yield* settledConfig(vmid)
    if (Option.isNone(config)) return { _tag: "absent" } as ScratchVerdict
    const tags = normalizeTags(config.value.tags)
    if (tags.length !== 1 || tags[0] !== marker) return refused(`the guest at ${vmid} does not carry exactly the scratch marker of op ${opId}`)
    const status = yield* pve.guestStatus(vmid)
    return { _tag: "ours", status: status.status, marker } as ScratchVerdict
  })

/** Proves the scratch guest and audits the decision; fails (refused) unless it is `ours`. */
const proveScratch = (opId: string, vmid: VmId, action: CallKind, what: string) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const verdict = yield* scratchVerdict(opId, vmid)
    const audit = (decision: string, reason: string) =>
      auditLog.audit({ actor: "gate", action, target: String(vmid), decision, detail: { op: opId, reason } })
    if (verdict._tag === "ours") {
      return yield* audit("allowed", `${what} of restore-test ${opId}'s scratch guest (scratch provenance, marker ${verdict.marker})`)
    }
    const why = verdict._tag === "absent" ? "no guest at that vmid" : verdict.reason
    yield* audit("refused:scratch", why)
    return yield* new ClearanceRefused({ message: `${what} of ${vmid} refused: ${why}` })
  })

/**
 * The only clearance that tears a scratch guest down: a `destroy` of `vmid`, minted when
 * `scratchVerdict` proves it is exactly restore-test `opId`'s scratch guest. Otherwise refused
 * (audited): the guest is held for an operator, never destroyed.
 */
export const clearScratchTeardown = (opId: string, vmid: VmId) =>
  // minted only after the proof succeeded (map, not as: `as` would build it up front)
  Effect.map(proveScratch(opId, vmid, "destroy", "teardown"), () => mint({ call: "destroy", vmid }, { basis: "provenance", opId }))

/**
 * Cutting a proven scratch guest off the network before its first start: removing NICs other
 * than net0 (which the restore put link-down). Only `netN` keys, N ≥ 1; never a volume key.
 */
export const clearScratchIsolation = (opId: string, vmid: VmId, keys: ReadonlyArray<string>) =>
  keys.length === 0 || keys.some((k) => !/^net[1-9][0-9]*$/.test(k))
    ? Effect.fail(new ClearanceRefused({ message: `isolating ${vmid}: only extra NICs (net1..) may be removed` }))
    : Effect.map(proveScratch(opId, vmid, "set-config-volumes", "isolation"), () =>
      mint({ call: "set-config-volumes", vmid, keys }, { basis: "provenance", opId }))

/**
 * A bring-up's own config change (issue 12) on the guest it is building: mount points it allocates
 * or re-attaches (`mpN`) and NIC link state (`netN`), for create or recover op `opId` in flight on
 * exactly `vmid` (or a link-confirm, NICs only). Never `rootfs` or `unusedN` (deleting an unused volume frees it): setting an
 * `mpN` at most moves a previous volume to `unusedN`, which keeps it.
 */
export const clearBringupConfig = (opId: string, vmid: VmId, keys: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    if (keys.length === 0 || keys.some((k) => !/^(mp|net)(0|[1-9][0-9]{0,2})$/.test(k))) {
      return yield* new ClearanceRefused({ message: `bring-up config of ${vmid}: only mpN and netN keys (got ${keys.join(", ")})` })
    }
    const op = yield* ops.get(opId)
    const typed = Option.map(op, (o) => ({ status: o.status, decoded: decodeOperation(o.payload) }))
    if (
      Option.isNone(typed) || typed.value.status !== "in_flight" || Either.isLeft(typed.value.decoded) ||
      (typed.value.decoded.right._tag !== "create" && typed.value.decoded.right._tag !== "recover" && typed.value.decoded.right._tag !== "link-confirm") ||
      typed.value.decoded.right.vmid !== vmid
    ) {
      return yield* new ClearanceRefused({ message: `op ${opId} is not a create, recovery or link confirmation of ${vmid} in flight` })
    }
    if (typed.value.decoded.right._tag === "link-confirm" && keys.some((k) => !/^net/.test(k))) {
      return yield* new ClearanceRefused({ message: `a link confirmation of ${vmid} changes NICs only` })
    }
    return mint({ call: "set-config-volumes", vmid, keys: [...keys].sort() }, { basis: "provenance", opId })
  })

// ---------------------------------------------------------------------------------------------
// A controller's rollback of its own guest (issue 11)

/** The ops that may roll a guest back to a controller's or a pre-update snapshot. */
const CONTROLLER_ROLLBACK_OPS: ReadonlySet<string> = new Set(["api-rollback", "controller-update"])

/** Which recorded origin each snapshot-name prefix must carry. */
const originOfName = (name: string): SnapshotOrigin | null =>
  name.startsWith(CONTROLLER_SNAPSHOT_PREFIX) ? "controller" : name.startsWith(PRE_UPDATE_SNAPSHOT_PREFIX) ? "pre-update" : null

/**
 * A `rollback` clearance of guest `vmid` to `snapshot` for op `opId` (an api-rollback or a
 * controller update's own rollback). Rolling back discards everything written since the snapshot,
 * so a controller may do it only to a snapshot the agent itself recorded taking for THIS guest, on
 * a controller's request (`ctl-`) or before a controller update (`felhom-preupd-`). Mints only if
 * ALL hold, each re-proven here: `opId` is one of those ops, in flight, for exactly this guest; the
 * name has one of the two prefixes; ControllerStore records it for this vmid with the origin that
 * prefix means; PVE lists it now among this guest's snapshots. An operator's snapshot, PVE's
 * `vzdump` one, another guest's, or one recorded but deleted since is refused. Audited.
 */
export const clearControllerRollback = (opId: string, vmid: VmId, snapshot: string) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const ops = yield* OpLog
    const controllers = yield* ControllerStore
    const pve = yield* Proxmox
    const refuse = (why: string) =>
      Effect.zipRight(
        auditLog.audit({ actor: "gate", action: "rollback", target: String(vmid), decision: "refused:controller-rollback", detail: { op: opId, snapshot, reason: why } }),
        Effect.fail(new ClearanceRefused({ message: `rollback of ${vmid} to ${snapshot} refused: ${why}` }))
      )
    const op = yield* ops.get(opId)
    if (Option.isNone(op) || op.value.status !== "in_flight") return yield* refuse(`op ${opId} is not in flight`)
    if (!CONTROLLER_ROLLBACK_OPS.has(op.value.kind) || op.value.vmid !== vmid) {
      return yield* refuse(`op ${opId} is not a controller rollback or update of guest ${vmid}`)
    }
    // each op is bound to the one snapshot its journal payload names: an api-rollback's target, a
    // controller update's own pre-update snapshot (never another one, whoever asks)
    const typed = decodeOperation(op.value.payload)
    if (
      Either.isLeft(typed) || (typed.right._tag !== "api-rollback" && typed.right._tag !== "controller-update") ||
      typed.right.vmid !== vmid || typed.right.snapshot !== snapshot
    ) {
      return yield* refuse(`op ${opId} does not roll back to this snapshot`)
    }
    const name = Schema.decodeUnknownOption(SnapshotName)(snapshot)
    const wanted = originOfName(snapshot)
    if (Option.isNone(name) || wanted === null) return yield* refuse("only ctl- and felhom-preupd- snapshots can be rolled back to by a controller")
    const record = yield* controllers.snapshotOf(vmid, snapshot)
    if (Option.isNone(record) || record.value.vmid !== vmid) return yield* refuse("the agent has no record of taking this snapshot for this guest")
    if (record.value.origin !== wanted) return yield* refuse(`recorded as a ${record.value.origin} snapshot, which its name does not match`)
    const listed = yield* pve.listSnapshots(vmid).pipe(
      Effect.catchAll((e) => refuse(`the guest's snapshots could not be listed (${e._tag})`))
    )
    if (!listed.some((s) => s.name === snapshot)) return yield* refuse("PVE does not list it among the guest's snapshots (deleted since?)")
    yield* auditLog.audit({
      actor: "gate",
      action: "rollback",
      target: String(vmid),
      decision: "allowed",
      detail: { op: opId, snapshot, reason: `${record.value.origin} snapshot the agent took for this guest (op ${record.value.opId})` }
    })
    return mint({ call: "rollback", vmid, snapshot: name.value }, { basis: "provenance", opId })
  })
