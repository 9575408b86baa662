/**
 * The host report (SPEC §6): one read-only pass over PVE, the journal and cloudflared, shaped for
 * `POST /api/v1/host-report`.
 *
 * What a failed read does is chosen by what the hub would conclude from the gap:
 * - node status unreadable → the whole report is skipped (`ReportSkipped`): without it there is
 *   no host section, and a report that omits it would read as a host that lost its metrics.
 * - guest list unreadable → skipped too. An empty `guests` array is indistinguishable from "every
 *   guest is gone", which is the one conclusion the hub must never draw from a transient 5xx.
 * - one guest's config unreadable → that guest keeps its run state and lock, `spec` is null.
 * - storage list or one storage's content unreadable → only that part is left out.
 * - the cloudflared probe failing, dying or hanging → "unknown".
 * Part failures are logged (as warnings) and never fail the report.
 *
 * `audit_head` (the newest audit entry's seq and hash) and `state_epoch` (when the state database
 * was created, as Authz read it) let the hub notice a reset state: a head whose seq goes
 * backwards, or a new epoch, means the journal, nonces and audit chain were lost or replaced.
 */
import { AuditLog } from "../../layers/AuditLog.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import { OpLog } from "../../layers/OpLog.js"
import { Array as Arr, Clock, Data, Duration, Effect, Option, Schema } from "effect"
import { Authz } from "../../layers/Authz.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type {
  HostReport,
  ReportAuditEntry,
  ReportAuditHead,
  ReportBackup,
  ReportGuest,
  ReportPbsSnapshot,
  ReportPendingSignature,
  ReportStorage
} from "../../schema/hub.js"
import { StorageId } from "../../schema/ids.js"
import type { GuestConfig, GuestSummary, NodeStorageEntry, ProxmoxError, StorageContentEntry } from "../../schema/proxmox.js"
import { VERSION } from "../../version.js"
import { normalizeActual } from "../control/plan.js"
import { ProtectionBoard } from "../protection/view.js"
import { selfTestsForReport } from "../protection/selfTestReport.js"
import { StorageStatus, withStorageTargets } from "../protection/status.js"
import { controllersForReport } from "../controller/report.js"

// ---------------------------------------------------------------------------------------------

export type CloudflaredStatus = HostReport["cloudflared"]["status"]

/** The report was not collected; `reason` says which read failed, `message` why (no secrets: PVE errors carry path and PVE's text only). */
export class ReportSkipped extends Data.TaggedError("ReportSkipped")<{
  readonly reason: "node_status_unreadable" | "guest_list_unreadable"
  readonly message: string
}> {}

export interface CollectInput {
  readonly hostId: string
  readonly desiredGenerationApplied: number | null
  readonly pendingSignatures: ReadonlyArray<ReportPendingSignature>
  /** Any failure, defect or hang (past CLOUDFLARED_PROBE_TIMEOUT) reads as "unknown". */
  readonly cloudflared: Effect.Effect<CloudflaredStatus, unknown>
  /** Upper bound on concurrent guest config reads; default GUEST_CONFIG_CONCURRENCY. */
  readonly configConcurrency?: number
  /** The daemon's last verdict on the state store; a failed audit read here also counts. */
  readonly stateStore?: { readonly healthy: boolean; readonly detail: string | null }
}

/** Enough to be quick with 50 guests without flooding pveproxy (it has 3 workers by default). */
export const GUEST_CONFIG_CONCURRENCY = 8
export const STORAGE_CONTENT_CONCURRENCY = 4
export const AUDIT_TAIL_LENGTH = 20
export const CLOUDFLARED_PROBE_TIMEOUT = Duration.seconds(10)

// An id PVE lists but our brand rejects is not ours to read (it would not be a valid path segment).
const decodeStorageId = Schema.decodeUnknownOption(StorageId)

const describe = (e: ProxmoxError) => `${e._tag}: ${e.message}`

const rfc3339 = (ms: number) => new Date(ms).toISOString()

/** JSON has no NaN or Infinity (the contract requires finite numbers), so anything else is unknown. */
const finite = (n: number | null | undefined): number | null => (n !== undefined && n !== null && Number.isFinite(n) ? n : null)

const isVmid = (n: number) => Number.isSafeInteger(n) && n >= 100 && n <= 999_999_999

/** A part of the report that may be missing: logs the failure and yields None. */
const part = <A>(what: string, eff: Effect.Effect<A, ProxmoxError>): Effect.Effect<Option.Option<A>> =>
  eff.pipe(
    Effect.map(Option.some),
    Effect.catchAll((e) => Effect.as(Effect.logWarning(`host report: ${what} left out (${describe(e)})`), Option.none<A>()))
  )

export const guestEntry = (summary: GuestSummary, config: GuestConfig | null): ReportGuest => {
  const actual = normalizeActual(summary, config)
  return {
    vmid: actual.vmid,
    name: summary.name ?? null,
    status: actual.status,
    lock: actual.lock,
    spec: actual.spec === null
      ? null
      : {
        hostname: actual.spec.hostname,
        cores: finite(actual.spec.cores),
        memory_mib: finite(actual.spec.memory_mib),
        swap_mib: finite(actual.spec.swap_mib),
        rootfs_gib: finite(actual.spec.rootfs_gib)
      }
  }
}

export const storageEntry = (s: NodeStorageEntry): ReportStorage => {
  const active = s.active === 1
  return {
    storage: s.storage,
    type: s.type,
    active,
    total: finite(s.total),
    used: finite(s.used),
    avail: finite(s.avail),
    // Until the storage manifest (SPEC §13) exists, PVE's own view decides: an inactive storage
    // is one PVE cannot reach (unplugged USB, NFS server gone).
    state: active ? "attached" : "disconnected",
    // a manifest target's part is merged in by withStorageTargets (src/programs/protection/status.ts)
    target: null
  }
}

const contentTypes = (s: NodeStorageEntry): ReadonlyArray<string> =>
  (s.content ?? "").split(",").map((c) => c.trim()).filter((c) => c.length > 0)

/** `vzdump-lxc-100-2026_01_14-03_00_02.tar.zst` and PBS's `backup/ct/100/2026-01-14T03:00:02Z`. */
const VMID_IN_VOLID = /(?:vzdump-(?:lxc|qemu|openvz)-(\d+)-|backup\/(?:ct|vm)\/(\d+)\/)/

export const backupVmid = (e: StorageContentEntry): number | null => {
  if (e.vmid !== undefined) return isVmid(e.vmid) ? e.vmid : null
  const m = VMID_IN_VOLID.exec(e.volid)
  const digits = m?.[1] ?? m?.[2]
  return digits !== undefined && isVmid(Number(digits)) ? Number(digits) : null
}

/** Newer ctime wins; on equal (or missing) ctime the lexically larger volid, whose name carries the timestamp. */
const newer = (a: ReportBackup, b: ReportBackup): boolean => {
  const ta = a.ctime ?? -Infinity
  const tb = b.ctime ?? -Infinity
  return ta !== tb ? ta > tb : a.volid > b.volid
}

/** The last backup per vmid on one storage, by vmid ascending. Entries without a vmid are skipped. */
export const lastBackups = (storage: string, entries: ReadonlyArray<StorageContentEntry>): ReadonlyArray<ReportBackup> => {
  const best = new Map<number, ReportBackup>()
  for (const e of entries) {
    if (e.content !== undefined && e.content !== "backup") continue
    const vmid = backupVmid(e)
    if (vmid === null) continue
    const b: ReportBackup = { storage, vmid, volid: e.volid, ctime: finite(e.ctime), size: finite(e.size) }
    const have = best.get(vmid)
    if (have === undefined || newer(b, have)) best.set(vmid, b)
  }
  return [...best.values()].sort((a, b) => a.vmid - b.vmid)
}

/** Every snapshot on a PBS storage, by vmid, then oldest first. */
export const pbsSnapshots = (storage: string, entries: ReadonlyArray<StorageContentEntry>): ReadonlyArray<ReportPbsSnapshot> =>
  entries
    .flatMap((e): Array<ReportPbsSnapshot> => {
      if (e.content !== undefined && e.content !== "backup") return []
      const vmid = backupVmid(e)
      return vmid === null ? [] : [{ storage, vmid, volid: e.volid, ctime: finite(e.ctime) }]
    })
    .sort((a, b) => a.vmid - b.vmid || (a.ctime ?? -Infinity) - (b.ctime ?? -Infinity) || a.volid.localeCompare(b.volid))

const probeCloudflared = (probe: Effect.Effect<CloudflaredStatus, unknown>): Effect.Effect<CloudflaredStatus> =>
  probe.pipe(
    Effect.timeoutFail({ duration: CLOUDFLARED_PROBE_TIMEOUT, onTimeout: () => "timed out" as const }),
    Effect.catchAllCause((cause) =>
      Effect.as(Effect.logWarning("host report: cloudflared probe failed; reporting unknown", cause), "unknown" as const)
    )
  )

/** Collects one host report; see the module comment for what each failed read does. */
export const collectReport = (input: CollectInput): Effect.Effect<HostReport, ReportSkipped, Proxmox | AuditLog | OpLog | GuestRecords | Authz> =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const audits = yield* AuditLog
    const { stateEpochMs } = yield* Authz
    const reportedAt = rfc3339(yield* Clock.currentTimeMillis)

    const status = yield* pve.nodeStatus.pipe(
      Effect.mapError((e) => new ReportSkipped({ reason: "node_status_unreadable", message: `node status unreadable: ${describe(e)}` }))
    )
    const summaries = yield* pve.listGuests.pipe(
      Effect.mapError((e) => new ReportSkipped({ reason: "guest_list_unreadable", message: `guest list unreadable: ${describe(e)}` }))
    )

    const guests = Effect.forEach(
      [...summaries].sort((a, b) => a.vmid - b.vmid),
      (g) =>
        part(`spec of guest ${g.vmid}`, pve.guestConfig(g.vmid)).pipe(
          Effect.map((config) => guestEntry(g, Option.getOrNull(config)))
        ),
      { concurrency: input.configConcurrency ?? GUEST_CONFIG_CONCURRENCY }
    )

    const storages = Effect.gen(function*() {
      const list = Option.getOrElse(yield* part("storage list", pve.nodeStorage), (): ReadonlyArray<NodeStorageEntry> => [])
      // An inactive storage cannot be listed (PVE answers after its own mount timeout), so only
      // active backup storages are read; each read that fails drops only that storage's entries.
      const withBackups = list.flatMap((s) =>
        s.active === 1 && contentTypes(s).includes("backup")
          ? Option.toArray(Option.map(decodeStorageId(s.storage), (id) => ({ id, entry: s })))
          : []
      )
      const contents = yield* Effect.forEach(
        withBackups,
        ({ id, entry }) =>
          part(`backups on ${id}`, pve.storageContent(id, { content: "backup" })).pipe(
            Effect.map((entries) => ({ storage: entry, entries: Option.getOrElse(entries, (): ReadonlyArray<StorageContentEntry> => []) }))
          ),
        { concurrency: STORAGE_CONTENT_CONCURRENCY }
      )
      return {
        contents,
        storage: list.map(storageEntry),
        backups: contents.flatMap((c) => lastBackups(c.storage.storage, c.entries)),
        pbs: contents.filter((c) => c.storage.type === "pbs").flatMap((c) => pbsSnapshots(c.storage.storage, c.entries))
      }
    })

    // One read for tail and head, so the head is the tail's last entry.
    // Holds: what the agent will not touch until an operator acts (never dropped from the report
    // the way an old audit entry scrolls out of the tail). A store that cannot answer reports none
    // here; state_store says why.
    const held = Effect.gen(function*() {
      const ops = yield* (yield* OpLog).list({ status: "needs_operator", limit: 1000 })
      const records = yield* (yield* GuestRecords).guestRecords
      const out: Array<HostReport["held_guests"][number]> = []
      for (const o of ops) if (o.vmid !== null) out.push({ vmid: o.vmid, state: "needs_operator", op_id: o.id, detail: `${o.kind}: ${o.detail ?? ""}`.slice(0, 500) })
      for (const r of records) if (r.state === "lost") out.push({ vmid: r.vmid, state: "lost", op_id: null, detail: r.detail.slice(0, 500) })
      return out.sort((a, b) => a.vmid - b.vmid)
    }).pipe(Effect.catchTag("JournalError", () => Effect.succeed([] as HostReport["held_guests"])))

    const audit = Effect.map(audits.auditTail(AUDIT_TAIL_LENGTH), (entries) => ({
      problem: null as string | null,
      tail: entries.map((e): ReportAuditEntry => ({
        seq: e.seq,
        at: rfc3339(e.atMs),
        actor: e.actor,
        action: e.action,
        target: e.target,
        decision: e.decision
      })),
      head: Option.getOrNull(Option.map(Arr.last(entries), (e): ReportAuditHead => ({ seq: e.seq, hash: e.hash })))
    })).pipe(
      // an unreadable store must not stop the heartbeat: report it instead
      Effect.catchTag("JournalError", (e) => Effect.succeed({ problem: e.message, tail: [] as Array<ReportAuditEntry>, head: null }))
    )

    const [guestEntries, storage, cloudflared, auditLog, heldGuests] = yield* Effect.all(
      [guests, storages, probeCloudflared(input.cloudflared), audit, held],
      { concurrency: "unbounded" }
    )

    // data protection (issue 10), when the daemon runs the backup scheduler: per-guest status from
    // the listings above, and retention changes waiting for a signature
    const board = yield* Effect.serviceOption(ProtectionBoard)
    const protection = Option.isSome(board) ? yield* board.value.forReport(storage.contents) : []
    const protectionPending = Option.isSome(board) ? yield* board.value.pendingSignatures : []

    // self-restore-tests and integrity checks (issue 10), when the daemon has a ProtectionStore
    const selfTests = yield* selfTestsForReport

    const report: HostReport = {
      host_id: input.hostId,
      agent_version: VERSION,
      reported_at: reportedAt,
      desired_generation_applied: input.desiredGenerationApplied,
      host: {
        cpu: finite(status.cpu),
        memory: { total: finite(status.memory?.total), used: finite(status.memory?.used) },
        disk: { total: finite(status.rootfs?.total), used: finite(status.rootfs?.used) },
        uptime_seconds: finite(status.uptime),
        loadavg: (status.loadavg ?? []).filter(Number.isFinite)
      },
      guests: guestEntries,
      cloudflared: { status: cloudflared },
      storage: storage.storage,
      backups: storage.backups,
      restore_tests: [...selfTests.restoreTests],
      archive_checks: [...selfTests.archiveChecks],
      pbs_snapshots: storage.pbs,
      protection: [...protection],
      audit_tail: auditLog.tail,
      audit_head: auditLog.head,
      state_epoch: rfc3339(stateEpochMs),
      held_guests: heldGuests,
      state_store: auditLog.problem !== null
        ? { healthy: false, detail: auditLog.problem }
        : input.stateStore ?? { healthy: true, detail: null },
      versions: { agent: VERSION, controllers: yield* controllersForReport(Date.parse(reportedAt)) },
      pending_signatures: [...input.pendingSignatures, ...protectionPending]
    }
    // the storage manifest's view (issue 10), when the daemon runs the storage pass
    const targets = yield* Effect.serviceOption(StorageStatus)
    return Option.isSome(targets) ? withStorageTargets(report, yield* targets.value.snapshot) : report
  }).pipe(Effect.withSpan("collectReport"))
