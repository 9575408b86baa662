/**
 * `felhom-agent plan`: what reconcile would do now against the live node, with each action's
 * gate verdict. A preview: it audits nothing and consumes no nonce (offered signatures are
 * checked against a throwaway in-memory nonce store).
 */
import { Effect, Either, Option } from "effect"
import type { AuthzShape } from "../../layers/Authz.js"
import type { DesiredState } from "../../schema/desired.js"
import type { SignedOp } from "./gate.js"
import { currentProvenance, judge } from "./gate.js"
import { gatedActionOf, observeContext, observePve, signatureKey, withRecoveries } from "./apply.js"
import { ageInWords } from "../bringup/tiers.js"
import { type Action, plan } from "./plan.js"
import { parseTimeZone, UTC } from "../protection/calendar.js"
import { type ProtectionPreview, protectionPreview, renderProtection } from "../protection/view.js"

export interface PlannedAction {
  readonly vmid: number
  readonly action: Action["kind"]
  readonly detail: Record<string, unknown>
  readonly verdict: "allowed" | "pending_signature" | "signed_ok" | "rejected"
  readonly reason: string
}

export interface PlanReport {
  readonly generation: number
  readonly actions: ReadonlyArray<PlannedAction>
  readonly notes: ReadonlyArray<{ readonly vmid: number; readonly reason: string; readonly message: string }>
  /**
   * Data protection (issue 10), when the desired state has a storage manifest: per-guest status,
   * and per target the retention change with the archives a shrinking policy would delete and
   * the verdict on an offered `retention-change` signature.
   */
  readonly protection: (ProtectionPreview & { readonly retention_verdicts: ReadonlyArray<{ readonly storage: string; readonly verdict: PlannedAction["verdict"]; readonly reason: string }> }) | null
}

const detailOf = (a: Action): Record<string, unknown> => {
  switch (a.kind) {
    case "create":
      return { hostname: a.spec.hostname, source: a.source?.archive ?? null }
    case "destroy":
      return { reason: a.reason }
    case "set_config":
      return { ...a.set }
    case "resize":
      return { disk: a.disk, size_gib: a.sizeGib }
    case "recover":
      return {
        mode: a.recover.mode,
        tier: a.recover.point.tier,
        point: a.recover.point.point,
        age: ageInWords(a.recover.ageSeconds),
        storage: a.recover.storage,
        sign: { op: "recover", guest_id: a.vmid, params: a.recover.gatedParams }
      }
    default:
      return {}
  }
}

/** `offered` maps signatureKey(op, vmid) → signed op; `authz` checks them without side effects. */
export const planReport = (desired: DesiredState, offered: ReadonlyMap<string, SignedOp>, authz: Option.Option<AuthzShape>, timeZone = "UTC") =>
  Effect.gen(function*() {
    const obs = yield* observePve
    const p = yield* withRecoveries(plan(obs.actual, desired, yield* observeContext(obs, desired, { record: false })), desired)
    const actions = yield* Effect.forEach(p.actions, (a) =>
      Effect.gen(function*() {
        const ga = gatedActionOf(a)
        const d = yield* judge(ga, yield* currentProvenance(ga.vmid), Option.fromNullable(offered.get(signatureKey(ga.op, ga.vmid))), authz)
        const reason = d.verdict === "rejected" ? `${d.reason}: ${d.message}` : d.reason
        return { vmid: a.vmid, action: a.kind, detail: detailOf(a), verdict: d.verdict, reason } satisfies PlannedAction
      }))
    const protection = desired.storage === undefined ? null : yield* Effect.gen(function*() {
      const preview = yield* protectionPreview(desired, Either.getOrElse(parseTimeZone(timeZone), () => UTC))
      const retention_verdicts = yield* Effect.forEach(preview.retention.filter((r) => r.signature_params !== null), (r) =>
        Effect.gen(function*() {
          const action = { op: "retention-change", vmid: null, params: r.signature_params! }
          const d = yield* judge(action, Option.none(), Option.fromNullable(offered.get(signatureKey("retention-change", null))), authz)
          return { storage: r.storage, verdict: d.verdict, reason: d.verdict === "rejected" ? `${d.reason}: ${d.message}` : d.reason }
        }))
      return { ...preview, retention_verdicts }
    })
    const report: PlanReport = {
      generation: p.generation,
      actions,
      notes: p.notes.map((n) => ({ vmid: n.vmid, reason: n.reason, message: n.message })),
      protection
    }
    return report
  })

export const renderPlan = (r: PlanReport): string => {
  const lines = [`plan for desired generation ${r.generation}: ${r.actions.length} action(s)`]
  for (const a of r.actions) {
    const detail = Object.entries(a.detail).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")
    lines.push(`  ${String(a.vmid).padEnd(6)} ${a.action.padEnd(10)} ${a.verdict.toUpperCase().padEnd(17)} ${detail}`)
    lines.push(`         ${a.reason}`)
  }
  for (const n of r.notes) lines.push(`  note ${n.vmid}: ${n.reason}: ${n.message}`)
  if (r.protection !== null) {
    lines.push(...renderProtection(r.protection))
    for (const v of r.protection.retention_verdicts) lines.push(`  retention-change ${v.storage}: ${v.verdict.toUpperCase()} (${v.reason})`)
  }
  return lines.join("\n")
}
