/**
 * The reversibility gate (SPEC §7): classification by provenance and data-bearing-ness, not by
 * verb. Benign actions run; destructive ones run only with a valid, role-scoped operator
 * signature bound to exactly this action. Every decision is audited.
 *
 * Provenance comes only from the journal (agent-internal): a guest the agent created inside a
 * journaled transaction, or one it tagged scratch itself. Anything the hub says about a guest
 * (tags, names, descriptions) is never provenance.
 */
import { Effect, Option } from "effect"
import { Authz, type AuthzShape, type VerifiedOp } from "../../layers/Authz.js"
import { Journal } from "../../layers/Journal.js"
import type { VmId } from "../../schema/ids.js"

/** What the gate judges: the op name a signed blob would carry, its guest and its params. */
export interface GatedAction {
  readonly op: string
  readonly vmid: VmId | null
  readonly params: Readonly<Record<string, unknown>>
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

/** Ops that never touch data whatever their target. */
const ALWAYS_BENIGN = new Set(["create", "start", "stop", "shutdown", "restart", "resize", "snapshot", "force-backup"])

/** Ops that overwrite or remove data whatever their provenance. */
const ALWAYS_DESTRUCTIVE = new Set(["restore-now", "storage-detach", "storage-wipe", "break-glass-enable"])

/** Ops a recovery key may sign: rotation only (SPEC §5). */
export const RECOVERY_OPS = new Set(["rotate-recovery-code", "rotate-escrow"])

export type Provenance = Option.Option<{ readonly kind: "same_transaction" | "scratch"; readonly opId: string }>

/**
 * Pure classification. `destroy`-like ops are benign only for agent-created provenance;
 * set_config only when every key keeps data; anything unknown is destructive.
 */
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
    if (Option.isSome(provenance)) {
      return {
        class: "benign",
        reason: provenance.value.kind === "scratch"
          ? `guest is agent-tagged scratch (op ${provenance.value.opId})`
          : `guest was created by the agent in journaled op ${provenance.value.opId}`
      }
    }
    return { class: "destructive", reason: "destroys a guest holding customer data" }
  }
  if (ALWAYS_DESTRUCTIVE.has(op)) return { class: "destructive", reason: `${op} overwrites or removes customer data` }
  return { class: "destructive", reason: `unknown operation class '${op}' fails safe to destructive` }
}

/** Deep equality of JSON values, insensitive to object key order. */
const sameParams = (a: unknown, b: unknown): boolean => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b))
const canonical = (v: unknown): unknown => {
  if (Array.isArray(v)) return v.map(canonical)
  if (typeof v === "object" && v !== null) {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])]))
  }
  return v
}

/** Checks a verified op against the action it is meant to authorize. */
export const bindingError = (action: GatedAction, v: VerifiedOp): string | undefined => {
  if (v.op !== action.op) return `signed op is '${v.op}', the action is '${action.op}'`
  if (v.guestId !== action.vmid) return `signed op targets guest ${v.guestId ?? "none"}, the action targets ${action.vmid ?? "none"}`
  if (!sameParams(v.params, action.params)) return "signed params differ from the action's params"
  return undefined
}

/**
 * The journal's provenance for a guest, honoured only while it is still true: same-transaction
 * provenance lasts as long as its op is in flight (a finished create is a customer guest).
 */
export const currentProvenance = (vmid: VmId | null) =>
  Effect.gen(function*() {
    if (vmid === null) return Option.none() as Provenance
    const journal = yield* Journal
    const p = yield* journal.provenanceOf(vmid)
    if (Option.isNone(p) || p.value.kind === "scratch") return p
    const op = yield* journal.get(p.value.opId)
    return Option.isSome(op) && op.value.status === "in_flight" ? p : Option.none()
  })

export interface SignedOp {
  readonly blob: Uint8Array
  readonly signature: string | Uint8Array
}

/**
 * Judges one action. Audits the decision as `gate` with the action and verdict; the caller
 * executes only on `allowed` or `signed_ok`.
 */
/**
 * The decision itself, with the verifier passed in: the gate uses the agent's Authz (which
 * consumes the nonce), `plan` a throwaway one (a preview consumes nothing). No audit here.
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
    const verified = yield* Effect.either(authz.value.verify(signed.value))
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

export const gate = (action: GatedAction, signed: Option.Option<SignedOp>, actor = "gate") =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const authz = yield* Authz
    // provenance is agent-internal: only the journal can say a guest is scratch or ours
    const decision = yield* judge(action, yield* currentProvenance(action.vmid), signed, Option.some(authz))
    yield* journal.audit({
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
    return decision
  })
