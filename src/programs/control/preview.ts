/**
 * `felhom-agent plan`: what reconcile would do now against the live node, with each action's
 * gate verdict. A preview: it audits nothing and consumes no nonce (offered signatures are
 * checked against a throwaway in-memory nonce store).
 */
import { Effect, Option } from "effect"
import type { AuthzShape } from "../../layers/Authz.js"
import type { DesiredState } from "../../schema/desired.js"
import type { SignedOp } from "./gate.js"
import { currentProvenance, judge } from "./gate.js"
import { gatedActionOf, observeContext, observePve, signatureKey } from "./apply.js"
import { type Action, plan } from "./plan.js"

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
    default:
      return {}
  }
}

/** `offered` maps signatureKey(op, vmid) → signed op; `authz` checks them without side effects. */
export const planReport = (desired: DesiredState, offered: ReadonlyMap<string, SignedOp>, authz: Option.Option<AuthzShape>) =>
  Effect.gen(function*() {
    const obs = yield* observePve
    const p = plan(obs.actual, desired, yield* observeContext(obs, desired, { record: false }))
    const actions = yield* Effect.forEach(p.actions, (a) =>
      Effect.gen(function*() {
        const ga = gatedActionOf(a)
        const d = yield* judge(ga, yield* currentProvenance(ga.vmid), Option.fromNullable(offered.get(signatureKey(ga.op, ga.vmid))), authz)
        const reason = d.verdict === "rejected" ? `${d.reason}: ${d.message}` : d.reason
        return { vmid: a.vmid, action: a.kind, detail: detailOf(a), verdict: d.verdict, reason } satisfies PlannedAction
      }))
    const report: PlanReport = {
      generation: p.generation,
      actions,
      notes: p.notes.map((n) => ({ vmid: n.vmid, reason: n.reason, message: n.message }))
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
  return lines.join("\n")
}
