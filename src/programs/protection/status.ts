/**
 * Where each storage target stands, between the storage pass (storage.ts), the watchdog
 * (watchdog.ts) and the host report (report.ts reads it through one hook), and the daemon's
 * "report now" hook the watchdog pulls when a target comes or goes.
 *
 * The pass decides a target's verdict (ok, decommissioned, needs_operator) and what the watchdog
 * should probe; the watchdog owns reachability (PVE's `active`, and for a USB disk its mount) and
 * asks for a report at once when it changes. Nothing here comes from the hub verbatim except
 * validated ids and durable ids; no secret is ever in it.
 */
import { Context, Effect, Layer, Queue, Ref } from "effect"
import type { HostReport, ReportPendingSignature, ReportPlacementFinding, ReportStorage } from "../../schema/hub.js"
import type { TargetClass, TargetRole, TargetType } from "../../schema/storage.js"

export type TargetVerdict = "ok" | "decommissioned" | "needs_operator"

/** What the watchdog reads for a target; null: not watched (decommissioned). */
export interface TargetProbe {
  /** Whether PVE has a storage entry for it (its `active` flag is then read). */
  readonly pveEntry: boolean
  /** A USB target's filesystem UUID (its mount is read without sudo). */
  readonly usbUuid: string | null
}

export interface TargetStatus {
  readonly id: string
  readonly type: TargetType
  readonly role: TargetRole
  /** The class fixed at attach (the manifest's, until attached). */
  readonly class: TargetClass
  readonly verdict: TargetVerdict
  /** Why the verdict (set by the pass); null when there is nothing to say. */
  readonly detail: string | null
  /** Reachable now; null: not known yet. */
  readonly available: boolean | null
  /** Why it is unreachable, from the last probe; null when reachable. */
  readonly availabilityDetail: string | null
  readonly placement: ReadonlyArray<ReportPlacementFinding>
  readonly probe: TargetProbe | null
}

export interface AvailabilityChange {
  readonly id: string
  readonly from: boolean | null
  readonly to: boolean
  readonly detail: string | null
}

export interface StorageSnapshot {
  readonly targets: ReadonlyArray<TargetStatus>
  /** Removals held for a signature (storage-detach / storage-decommission), for the report. */
  readonly pending: ReadonlyArray<ReportPendingSignature>
}

export interface StorageStatusShape {
  readonly snapshot: Effect.Effect<StorageSnapshot>
  /**
   * The pass's result. A target's reachability is carried over from what the watchdog knew when
   * the pass did not measure it itself (`available: null`). Returns the reachability changes the
   * pass itself measured (to report at once, as the watchdog's: after it the watchdog sees none).
   */
  readonly replace: (next: StorageSnapshot) => Effect.Effect<ReadonlyArray<AvailabilityChange>>
  /** The watchdog's readings; returns what changed (to report at once). */
  readonly observe: (
    readings: ReadonlyArray<{ readonly id: string; readonly available: boolean; readonly detail: string | null }>
  ) => Effect.Effect<ReadonlyArray<AvailabilityChange>>
}

export class StorageStatus extends Context.Tag("felhom/StorageStatus")<StorageStatus, StorageStatusShape>() {}

export const makeStorageStatus = Effect.map(
  Ref.make<StorageSnapshot>({ targets: [], pending: [] }),
  (ref): StorageStatusShape => ({
    snapshot: Ref.get(ref),
    replace: (next) =>
      Ref.modify(ref, (prev) => {
        const before = new Map(prev.targets.map((t) => [t.id, t] as const))
        const changes: Array<AvailabilityChange> = []
        const targets = next.targets.map((t) => {
          const old = before.get(t.id)
          if (t.available === null && old !== undefined && t.probe !== null) {
            return { ...t, available: old.available, availabilityDetail: old.availabilityDetail }
          }
          if (old !== undefined && t.available !== null && old.available !== null && old.available !== t.available) {
            changes.push({ id: t.id, from: old.available, to: t.available, detail: t.availabilityDetail })
          }
          return t
        })
        return [changes, { pending: next.pending, targets }] as const
      }),
    observe: (readings) =>
      Ref.modify(ref, (prev) => {
        const byId = new Map(readings.map((r) => [r.id, r] as const))
        const changes: Array<AvailabilityChange> = []
        const targets = prev.targets.map((t) => {
          const r = byId.get(t.id)
          if (r === undefined || t.probe === null) return t
          if (t.available !== r.available) changes.push({ id: t.id, from: t.available, to: r.available, detail: r.detail })
          return { ...t, available: r.available, availabilityDetail: r.available ? null : r.detail }
        })
        return [changes, { ...prev, targets }] as const
      })
  })
)

export const StorageStatusLive: Layer.Layer<StorageStatus> = Layer.effect(StorageStatus, makeStorageStatus)

// ---------------------------------------------------------------------------------------------
// The daemon's out-of-cycle report

/** Asks the daemon for a host report now (not a whole cycle: no reconcile, no jobs). */
export class ReportNow extends Context.Tag("felhom/ReportNow")<ReportNow, { readonly request: Effect.Effect<void> }>() {}

/** The daemon's side: a request is an offer to the queue its report-now fiber takes from. */
export const reportNowFromQueue = (queue: Queue.Queue<void>): Layer.Layer<ReportNow> =>
  Layer.succeed(ReportNow, { request: Effect.asVoid(Queue.offer(queue, undefined)) })

// ---------------------------------------------------------------------------------------------
// Into the host report

/** The PVE storage type a target maps to (what `pvesm add` gets). */
export const pveTypeOf = (t: TargetType): string => (t === "usb" || t === "local-dir" ? "dir" : t)

const stateOf = (t: TargetStatus, active: boolean): ReportStorage["state"] => {
  if (t.verdict === "decommissioned") return "decommissioned"
  if (t.verdict === "needs_operator") return "needs_operator"
  return active && t.available !== false ? "attached" : "disconnected"
}

const targetPart = (t: TargetStatus): NonNullable<ReportStorage["target"]> => ({
  type: t.type,
  role: t.role,
  class: t.class,
  detail: t.detail ?? (t.available === false ? t.availabilityDetail : null),
  placement: [...t.placement]
})

/**
 * The report with the manifest's view merged in: each PVE storage that is a target gets its
 * target part and state; a target PVE does not list yet gets its own row (inactive, no sizes);
 * removals waiting for a signature join `pending_signatures`.
 */
export const withStorageTargets = (report: HostReport, snap: StorageSnapshot): HostReport => {
  const byId = new Map(snap.targets.map((t) => [t.id, t] as const))
  const listed = new Set(report.storage.map((s) => s.storage))
  const rows: Array<ReportStorage> = report.storage.map((row) => {
    const t = byId.get(row.storage)
    return t === undefined ? row : { ...row, state: stateOf(t, row.active), target: targetPart(t) }
  })
  for (const t of snap.targets) {
    if (listed.has(t.id)) continue
    rows.push({ storage: t.id, type: pveTypeOf(t.type), active: false, total: null, used: null, avail: null, state: stateOf(t, false), target: targetPart(t) })
  }
  const key = (p: ReportPendingSignature) => `${p.op} ${JSON.stringify(p.params)}`
  const have = new Set(report.pending_signatures.map(key))
  return {
    ...report,
    storage: rows,
    pending_signatures: [...report.pending_signatures, ...snap.pending.filter((p) => !have.has(key(p)))]
  }
}
