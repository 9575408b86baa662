/**
 * The retention policy in force per target and what prunes under it (issue 10). Pure apart from
 * reading ProtectionStore. Used by the prune saga, the scheduler pass, `plan`, and the gate's own
 * independent check before it clears a deletion.
 *
 * - Only the policy in force ever removes anything. It is agent-internal (ProtectionStore): the
 *   manifest's policy replaces it only when that deletes none of the agent's existing archives
 *   (`retentionChange` is `adopt`), or when an operator signs a `retention-change`.
 * - No policy in force (never adopted, or a stored value that does not decode) keeps everything.
 * - The newest archive of a guest on a target is never removed, whatever the policy says.
 */
import { Effect, Option, Schema } from "effect"
import { ProtectionStore } from "../../layers/ProtectionStore.js"
import type { VmId } from "../../schema/ids.js"
import { jsonEqual } from "../../schema/json.js"
import { Retention } from "../../schema/storage.js"
import type { TimeZone } from "./calendar.js"
import { newestOf } from "./provenance.js"
import { type Archive, keepsEverything, prune, shrinkage } from "./retention.js"

const decodeRetention = Schema.decodeUnknownOption(Retention, { onExcessProperty: "error" })

/** The retention in force on a storage; None keeps everything. */
export const retentionInForce = (storage: string) =>
  Effect.flatMap(ProtectionStore, (s) => s.retentionInForce(storage)).pipe(
    Effect.map((r) => Option.flatMap(r, (x) => decodeRetention(x.retention)))
  )

/** What nothing is pruned under. */
export const KEEP_ALL: Retention = { keep_all: true }

/** The wire form of a retention, as a signed `retention-change` carries it in its params. */
export const retentionJson = (r: Retention): { readonly [k: string]: number | boolean } => {
  const out: Record<string, number | boolean> = {}
  for (const [k, v] of Object.entries(r)) if (v !== undefined) out[k] = v
  return out
}

export const sameRetention = (a: Retention, b: Retention): boolean => jsonEqual(retentionJson(a), retentionJson(b))

export type RetentionChange =
  | { readonly _tag: "same" }
  /** Deletes none of the agent's archives now: adopted unsigned (basis manifest). */
  | { readonly _tag: "adopt" }
  /** Would delete these (newest first per guest): needs an operator's signed `retention-change`. */
  | { readonly _tag: "shrinks"; readonly wouldDelete: ReadonlyArray<Archive & { readonly vmid: VmId }> }

/**
 * Whether replacing the policy in force (None: keep everything) with the manifest's is destructive,
 * over the agent's own archives on that target, one backup group per guest.
 */
export const retentionChange = <A extends Archive & { readonly vmid: VmId }>(
  inForce: Option.Option<Retention>,
  next: Retention,
  oursByGuest: ReadonlyMap<VmId, ReadonlyArray<A>>,
  tz: TimeZone
): RetentionChange => {
  if (Option.isSome(inForce) && sameRetention(inForce.value, next)) return { _tag: "same" }
  const previous = Option.getOrElse(inForce, () => KEEP_ALL)
  const wouldDelete: Array<A> = []
  for (const group of oursByGuest.values()) wouldDelete.push(...shrinkage(previous, next, group, tz))
  return wouldDelete.length === 0 ? { _tag: "adopt" } : { _tag: "shrinks", wouldDelete }
}

/**
 * What the policy removes from one guest's archives on one target: `prune()` over the agent's own
 * archives, minus the newest archive of the guest there (ours or not) and our newest, checked here
 * independently of prune()'s own guarantee. Newest first.
 */
export const removals = <A extends Archive>(
  ours: ReadonlyArray<A>,
  allOfGuest: ReadonlyArray<Archive>,
  policy: Option.Option<Retention>,
  tz: TimeZone
): ReadonlyArray<A> => {
  if (Option.isNone(policy) || keepsEverything(policy.value)) return []
  const newestAll = newestOf(allOfGuest)?.id
  const newestOurs = newestOf(ours)?.id
  return prune(ours, policy.value, tz).removed.filter((a) => a.id !== newestAll && a.id !== newestOurs && a.protected !== true)
}
