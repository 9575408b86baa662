/**
 * Self-restore-test (SPEC §13, issue 10): restore a guest's newest backup into a throwaway scratch
 * guest, boot it off the network, ask its services, tear it down, report pass/fail with timings.
 *
 * Which test runs: per (guest, backup target) on the target policy's `restore_test` schedule
 * (default weekly), from the last attempt recorded in ProtectionStore, so missed slots after
 * downtime are one test. A failed integrity verify of the guest's archive there (verify.ts) makes
 * it due at once and first. Then the longest overdue, then the tier (local vzdump before PBS: the
 * restore-source priority), then the vmid. One test per pass; one at a time per host.
 *
 * The scratch guest is never confused with a customer guest:
 * - its vmid is from the reserved range (`protection.scratch_vmid_min..max`), free in PVE, and no
 *   guest, provenance or op the journal knows;
 * - the op (with its random marker) is journaled, and the vmid's scratch provenance (op id and
 *   marker) recorded, BEFORE the restore is requested; the restore tags the guest with exactly
 *   the marker, never uses force, and replaces net0 with a link-down NIC with a fresh MAC;
 * - before the first start the gate re-proves the guest (scratchVerdict), extra NICs are removed
 *   through a gate clearance, `onboot` is cleared, and the start happens only if every NIC left
 *   is link-down;
 * - teardown destroys only with `clearScratchTeardown` (gate.ts): op in flight for exactly that
 *   vmid, vmid in range, journal provenance of this op with this marker, exactly the marker tag on
 *   the guest. Anything else ends the op needs_operator: the guest is held, never destroyed.
 * It runs under the SOURCE guest's GuestQueue key, so never beside a backup of that guest.
 * A crash at any step leaves an in-flight op; recovery (recover.ts) tears the scratch guest down
 * through the same clearance, or holds it.
 */
import { Clock, Duration, Effect, Either, Option, Schedule, Schema } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { AuditLog } from "../../layers/AuditLog.js"
import { GuestHealth } from "../../layers/GuestHealth.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import type { StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { ProtectionStore, type ArchiveCheck, type RunRecord } from "../../layers/ProtectionStore.js"
import { backupOwner, Proxmox } from "../../layers/Proxmox.js"
import { ClearanceRefused } from "../../schema/clearance.js"
import type { DesiredState } from "../../schema/desired.js"
import { StorageId, type Upid, VmId, VolumeId } from "../../schema/ids.js"
import type { ScratchMarker } from "../../schema/operations.js"
import type { GuestConfig, ProxmoxError, StorageContentEntry } from "../../schema/proxmox.js"
import { type BackupPolicy, type BackupTier, scheduledBackupTargets, type StorageTarget, tierOf } from "../../schema/storage.js"
import { clearScratchIsolation, clearScratchTeardown, scratchVerdict } from "../control/gate.js"
import { lockRetry } from "../control/schedules.js"
import { beginOperation, existing, type Saga } from "../control/steps.js"
import { restoreLayout } from "../bringup/layout.js"
import { dueRuns, parseCalendarEvent, type TimeZone } from "./calendar.js"
import { inScratchRange, RestoreTestSettings, settingsPassLoop } from "./scratch.js"

// ---------------------------------------------------------------------------------------------
// Constants

/** The scratch guest's resources: enough to boot and answer, small enough to never crowd the host. */
export const SCRATCH_MEMORY_MIB = 512
export const SCRATCH_CORES = 1
/** How long a booted scratch guest gets until its services must answer. */
export const HEALTH_TIMEOUT = Duration.minutes(5)
export const HEALTH_POLL = Duration.seconds(5)
/** Free space the restore target must have beyond the restored volumes: 10 %, at least 1 GiB. */
export const spaceNeeded = (bytes: number): number => bytes + Math.max(GiB, Math.ceil(bytes * 0.1))
/** At most this many vmids of the range are asked of PVE per test (each is one request). */
const MAX_VMID_PROBES = 16

const GiB = 1024 ** 3

// ---------------------------------------------------------------------------------------------
// Choosing the test (pure)

/** One backup target's listing, as the pass read it. */
export interface TargetListing {
  readonly target: StorageTarget & { readonly policy: BackupPolicy }
  readonly entries: ReadonlyArray<StorageContentEntry>
}

export interface RestoreCandidate {
  readonly source: VmId
  /** The backup target the archive is on (the storage of its volume id). */
  readonly target: StorageId
  readonly tier: BackupTier
  readonly archive: VolumeId
  /** Bytes as listed; null when PVE did not say. */
  readonly archiveSize: number | null
  readonly reason: "integrity_failed" | "never_run" | "slot_passed"
  /** How long the missed slot is past (ms); Infinity when never run. */
  readonly overdueMs: number
}

const decodeVolumeId = Schema.decodeUnknownOption(VolumeId)

/** The guest an entry backs up: PVE's `vmid`, else the one its volume id names. */
export const entryOwner = (e: StorageContentEntry): Option.Option<number> =>
  e.vmid !== undefined && Number.isSafeInteger(e.vmid) ? Option.some(e.vmid) : backupOwner(e.volid)

/** The newest backup of each guest in a listing (ctime, then the volume id, which carries the time). */
export const newestArchives = (entries: ReadonlyArray<StorageContentEntry>): ReadonlyMap<number, StorageContentEntry> => {
  const best = new Map<number, StorageContentEntry>()
  for (const e of entries) {
    if (e.content !== undefined && e.content !== "backup") continue
    const owner = entryOwner(e)
    if (Option.isNone(owner)) continue
    const have = best.get(owner.value)
    const ta = e.ctime ?? -Infinity
    const tb = have?.ctime ?? -Infinity
    if (have === undefined || ta > tb || (ta === tb && e.volid > have.volid)) best.set(owner.value, e)
  }
  return best
}

/**
 * Every due (guest, target) test, most urgent first. `guests` are the guests whose backups are
 * tested (the desired guests); the scratch range is never among them.
 */
export const chooseRestoreTests = (input: {
  readonly guests: ReadonlyArray<VmId>
  readonly listings: ReadonlyArray<TargetListing>
  readonly runs: ReadonlyArray<RunRecord>
  readonly checks: ReadonlyArray<ArchiveCheck>
  readonly now: number
  readonly tz: TimeZone
}): ReadonlyArray<RestoreCandidate> => {
  const out: Array<RestoreCandidate> = []
  for (const { entries, target } of input.listings) {
    const event = parseCalendarEvent(target.policy.restore_test)
    const newest = newestArchives(entries)
    for (const source of input.guests) {
      const entry = newest.get(source)
      if (entry === undefined) continue
      const archive = decodeVolumeId(entry.volid)
      if (Option.isNone(archive)) continue
      const last = input.runs.find((r) => r.kind === "restore_test" && r.vmid === source && r.storage === target.id)?.lastAttemptMs
      // a failed integrity check newer than the last test makes it due now, and first
      const failed = input.checks.some((c) => !c.ok && c.vmid === source && c.storage === target.id && (last === undefined || c.checkedMs > last))
      const base = { source, target: target.id, tier: tierOf(target), archive: archive.value, archiveSize: entry.size ?? null }
      if (failed) {
        out.push({ ...base, reason: "integrity_failed", overdueMs: last === undefined ? Infinity : input.now - last })
        continue
      }
      if (Either.isLeft(event)) continue
      const d = dueRuns(event.right, last, input.now, input.tz)
      if (!d.due) continue
      out.push({
        ...base,
        reason: d.reason === "never_run" ? "never_run" : "slot_passed",
        overdueMs: d.reason === "never_run" || d.slotAt === null ? Infinity : input.now - d.slotAt
      })
    }
  }
  const rank = (c: RestoreCandidate) => (c.reason === "integrity_failed" ? 0 : 1)
  return out.sort((a, b) =>
    rank(a) - rank(b) ||
    (a.overdueMs === b.overdueMs ? 0 : a.overdueMs > b.overdueMs ? -1 : 1) ||
    (a.tier === b.tier ? 0 : a.tier === "vzdump" ? -1 : 1) ||
    a.source - b.source ||
    a.target.localeCompare(b.target)
  )
}

// ---------------------------------------------------------------------------------------------
// Helpers over PVE

const SIZE_UNITS: Readonly<Record<string, number>> = { "": 1, K: 1024, M: 1024 ** 2, G: GiB, T: 1024 ** 4 }

const volumeBytes = (spec: string): number => {
  const m = /(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)/.exec(spec)
  return m === null ? 0 : Number(m[1]) * (SIZE_UNITS[m[2] ?? ""] ?? 1)
}

/** What a restore recreates: rootfs and every mount point vzdump includes (backup=1). */
export const restoredBytes = (config: GuestConfig): number =>
  Object.entries(config).reduce((sum, [k, v]) => {
    if (typeof v !== "string") return sum
    if (k === "rootfs") return sum + volumeBytes(v)
    if (/^mp\d+$/.test(k) && /(?:^|,)backup=1(?:,|$)/.test(v)) return sum + volumeBytes(v)
    return sum
  }, 0)

const storageOfVolume = (spec: string | undefined): Option.Option<StorageId> => {
  const m = spec === undefined ? null : /^([A-Za-z][A-Za-z0-9\-_.]*):/.exec(spec)
  return m === null ? Option.none() : Option.some(StorageId.make(m[1]!))
}

const bridgeOf = (net: unknown): string => {
  const m = typeof net === "string" ? /(?:^|,)bridge=([A-Za-z0-9][-_.A-Za-z0-9]{0,15})(?:,|$)/.exec(net) : null
  return m?.[1] ?? "vmbr0"
}

/** Every `netN` of a config: key → whether its link is down. */
export const nicsOf = (config: GuestConfig): ReadonlyArray<{ readonly key: string; readonly linkDown: boolean }> =>
  Object.entries(config)
    .filter(([k]) => /^net\d+$/.test(k))
    .map(([key, v]) => ({ key, linkDown: typeof v === "string" && /(?:^|,)link_down=1(?:,|$)/.test(v) }))
    .sort((a, b) => a.key.localeCompare(b.key))

/** PVE surely did not act on a request it answered with one of these (the rest may have landed). */
const surelyRefused = (e: ProxmoxError) =>
  (e._tag === "PveApiError" && ["validation", "permission", "auth", "conflict", "not_found", "not_implemented"].includes(e.kind)) ||
  e._tag === "PveDecodeError" ||
  e._tag === "PveLocked"

const retryLocked = <A, E extends { readonly _tag: string }, R>(e: Effect.Effect<A, E, R>) =>
  Effect.retry(e, { schedule: lockRetry, while: (x) => x._tag === "PveLocked" })

const newMarker = Effect.sync(() => `felhom-scratch-${randomBytes(8).toString("hex")}` as ScratchMarker)

const short = (s: string, n = 300) => (s.length > n ? `${s.slice(0, n)}…` : s)

// ---------------------------------------------------------------------------------------------
// The saga

export type TestResult = "pass" | "fail"

export interface Timings {
  restore?: number
  start?: number
  check?: number
  teardown?: number
}

export type RestoreTestOutcome =
  | { readonly _tag: "nothing_due" }
  | { readonly _tag: "busy"; readonly detail: string }
  | { readonly _tag: "skipped"; readonly candidate: RestoreCandidate; readonly detail: string }
  | {
    readonly _tag: "tested"
    readonly candidate: RestoreCandidate
    readonly opId: string
    readonly scratch: VmId
    readonly result: TestResult
    readonly detail: string
    readonly timings: Timings
    /** How the op ended: done (torn down), or needs_operator (the scratch guest is held). */
    readonly teardown: "done" | "needs_operator"
  }

/** A test verdict reached inside the body (a failure of the archive or guest, not of the agent). */
interface Verdict {
  readonly result: TestResult
  readonly detail: string
}

const elapsedSince = (t0: number) => Effect.map(Clock.currentTimeMillis, (t) => t - t0)

/** Polls the guest's health until it answers, fails, or the deadline passes. */
const awaitHealth = (vmid: VmId) =>
  Effect.gen(function*() {
    const health = yield* GuestHealth
    const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(HEALTH_TIMEOUT)
    let last = "no answer yet"
    while (true) {
      const r = yield* Effect.either(health.probe(vmid))
      if (Either.isRight(r) && r.right.phase === "up") {
        return r.right.ok
          ? ({ result: "pass", detail: `booted; ${r.right.detail}` } satisfies Verdict)
          : ({ result: "fail", detail: `booted, but ${r.right.detail}` } satisfies Verdict)
      }
      last = Either.isRight(r) ? r.right.detail : r.left.message
      if ((yield* Clock.currentTimeMillis) + Duration.toMillis(HEALTH_POLL) > deadline) break
      yield* Effect.sleep(HEALTH_POLL)
    }
    return { result: "fail", detail: `services did not answer within ${Duration.toSeconds(HEALTH_TIMEOUT)} s (${short(last, 120)})` } satisfies Verdict
  })

/**
 * The scratch guest's volumes, from the archive's own config: all on the scratch storage; bind
 * and device mount points (the controller's bootstrap mount) left out, as a token cannot restore
 * them (PVE's storage-only restore refuses the whole archive); bulk volumes (backup=0: not in the
 * archive) omitted, not recreated: a scratch copy tests what the backup holds, must never hold or
 * touch the real bulk volume, and an empty stand-in would only take space on the scratch target.
 */
const scratchLayout = (archive: VolumeId, storage: StorageId) =>
  Effect.flatMap(Proxmox, (pve) => pve.extractConfig(archive)).pipe(
    Effect.flatMap((config) => restoreLayout(config, { storage, bulk: "omit" }))
  )

/**
 * restore → isolate + start → check. Ends with a verdict, or fails with what stopped it (the
 * caller tears down either way). A restore PVE surely refused made nothing: `created` false.
 */
const testBody = (s: Saga<"restore-test">, sourceConfig: Option.Option<GuestConfig>, timings: Timings) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const ops = yield* OpLog
    const guests = yield* GuestRecords
    const { archive, marker, storage, vmid } = s.op

    // restore: the marker is in the op payload; the provenance is written before the POST
    const t0 = yield* Clock.currentTimeMillis
    const layout = yield* Effect.either(scratchLayout(archive, storage))
    if (Either.isLeft(layout)) {
      return { created: false, verdict: { result: "fail", detail: `restore not started: ${short(layout.left.message)}` } as Verdict }
    }
    yield* s.started("restore", {
      marker,
      dropped: layout.right.dropped.map((d) => d.key),
      omitted: layout.right.bulk.map((b) => b.volume)
    })
    yield* guests.recordProvenance(vmid, "scratch", s.id, marker)
    const posted = yield* Effect.either(pve.restore({
      vmid,
      archive,
      storage,
      hostname: `restore-test-${s.op.source}`,
      cores: SCRATCH_CORES,
      memoryMiB: SCRATCH_MEMORY_MIB,
      swapMiB: 0,
      tags: marker,
      layout: layout.right.layout,
      // the backed-up guest may be protected; its scratch copy must be removable
      protection: false,
      // never on the customer LAN: link down, no hwaddr (PVE generates a fresh MAC); extra NICs go below
      net0: { name: "eth0", bridge: bridgeOf(Option.getOrUndefined(sourceConfig)?.["net0"]), linkDown: true, ip: "manual" }
    }))
    if (Either.isLeft(posted)) {
      const e = posted.left
      return { created: !surelyRefused(e), verdict: { result: "fail", detail: `restore not started: ${short(e.message)}` } as Verdict }
    }
    yield* ops.recordUpid(s.id, "restore", posted.right)
    const restored = yield* Effect.either(pve.waitTask(posted.right))
    timings.restore = yield* elapsedSince(t0)
    if (Either.isLeft(restored)) {
      return { created: true, verdict: { result: "fail", detail: `restore failed: ${short(restored.left.message)}` } as Verdict }
    }
    yield* s.done("restore")

    // isolate, then start: only a proven scratch guest whose every NIC is link-down is started
    const t1 = yield* Clock.currentTimeMillis
    yield* s.started("start")
    const proof = yield* scratchVerdict(s.id, vmid)
    if (proof._tag !== "ours" || proof.status !== "stopped") {
      return { created: true, verdict: { result: "fail", detail: `not started: the restored guest could not be proven scratch (${proof._tag === "refused" ? proof.reason : proof._tag})` } as Verdict }
    }
    const before = yield* pve.guestConfig(vmid)
    const extra = nicsOf(before).filter((n) => n.key !== "net0").map((n) => n.key)
    const change = { set: { onboot: 0 }, ...(extra.length === 0 ? {} : { delete: extra }) }
    const put = extra.length === 0
      ? yield* pve.setConfig(vmid, change)
      : yield* Effect.flatMap(clearScratchIsolation(s.id, vmid, extra), (c) => pve.setConfigVolumes(vmid, change, c))
    if (Option.isSome(put)) {
      yield* ops.recordUpid(s.id, "start", put.value)
      yield* pve.waitTask(put.value)
    }
    const nics = nicsOf(yield* pve.guestConfig(vmid))
    if (nics.length === 0 || nics.some((n) => n.key !== "net0" || !n.linkDown)) {
      return { created: true, verdict: { result: "fail", detail: "not started: the scratch guest's network could not be verified link-down" } as Verdict }
    }
    const started = yield* Effect.either(Effect.flatMap(pve.start(vmid), (upid: Upid) =>
      Effect.zipRight(ops.recordUpid(s.id, "start", upid), pve.waitTask(upid))))
    timings.start = yield* elapsedSince(t1)
    if (Either.isLeft(started)) {
      if (started.left._tag === "JournalError") return yield* Effect.fail(started.left)
      return { created: true, verdict: { result: "fail", detail: `start failed: ${short(started.left.message)}` } as Verdict }
    }
    yield* s.done("start")

    // check: the services answer (through GuestHealth: pct exec in production, the sim's model here)
    const t2 = yield* Clock.currentTimeMillis
    yield* s.started("check")
    const verdict = yield* awaitHealth(vmid)
    timings.check = yield* elapsedSince(t2)
    yield* s.done("check", { result: verdict.result, detail: verdict.detail, ms: timings.check })
    return { created: true, verdict }
  })

/**
 * Stop (if running) and destroy the scratch guest, each only after the gate proved it (a fresh
 * proof per attempt: a clearance is spent when sent). "absent": nothing was there. Fails with
 * ClearanceRefused when the guest is not provably ours: the caller holds it. A failed stop or
 * destroy is tried again from a fresh read, a few times (a start whose UPID a crash lost may
 * still be running: the destroy then finds the guest running, and the next round stops it).
 */
export const tearDown = (s: Saga<"restore-test">) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const ops = yield* OpLog
    const guests = yield* GuestRecords
    const auditLog = yield* AuditLog
    const vmid = s.op.vmid
    const round = Effect.gen(function*() {
      if (Option.isNone(yield* existing(vmid))) return "absent" as const
      const proof = yield* scratchVerdict(s.id, vmid)
      if (proof._tag === "absent") return "absent" as const
      if (proof._tag === "refused") {
        yield* auditLog.audit({ actor: "executor", action: "restore-test", target: String(vmid), decision: "needs_operator", detail: { op: s.id, reason: proof.reason } })
        return yield* new ClearanceRefused({ message: `scratch guest ${vmid} not torn down: ${proof.reason}` })
      }
      if (proof.status === "running") yield* s.task("stop", retryLocked(pve.stop(vmid)))
      else yield* s.done("stop")
      // the clearance is asked for right before the call; a guest already gone is done
      yield* s.started("destroy")
      const attempt = Effect.gen(function*() {
        if (Option.isNone(yield* existing(vmid))) return Option.none<Upid>()
        const clearance = yield* clearScratchTeardown(s.id, vmid)
        return Option.some(yield* pve.destroy(vmid, { purge: true }, clearance))
      })
      const upid = yield* retryLocked(attempt)
      if (Option.isSome(upid)) {
        yield* ops.recordUpid(s.id, "destroy", upid.value)
        yield* pve.waitTask(upid.value)
      }
      yield* s.done("destroy")
      return "destroyed" as const
    })
    const result = yield* round.pipe(
      Effect.retry({ times: 3, schedule: Schedule.spaced(Duration.seconds(5)), while: (e) => e._tag !== "ClearanceRefused" && e._tag !== "JournalError" })
    )
    yield* guests.clearProvenance(vmid)
    return result
  })

/** Records a finished (or skipped) test in ProtectionStore: the report and the scheduler read it. */
const recordResult = (r: {
  readonly opId: string
  readonly candidate: RestoreCandidate
  readonly startedMs: number
  readonly result: "pass" | "fail" | "skipped"
  readonly detail: string
  readonly timings: Timings
}) =>
  Effect.gen(function*() {
    const store = yield* ProtectionStore
    const endedMs = yield* Clock.currentTimeMillis
    yield* store.recordRestoreTest({
      opId: r.opId,
      vmid: r.candidate.source,
      archive: r.candidate.archive,
      startedMs: r.startedMs,
      endedMs,
      result: r.result,
      detail: r.detail,
      timings: { ...r.timings }
    })
    yield* store.recordRun({
      kind: "restore_test",
      vmid: r.candidate.source,
      storage: r.candidate.target,
      result: r.result === "pass" ? "ok" : r.result === "skipped" ? "skipped" : "failed",
      detail: r.detail
    })
  })

/**
 * A free vmid in the scratch range, searched from its bottom (restore-tests) or its top (the golden
 * build, issue 12): not listed by PVE, unknown to the journal (records, provenance, ops in flight
 * or held), and free by PVE's nextid; at most `maxProbes` nextid calls.
 */
export const freeScratchVmid = (from: "bottom" | "top", maxProbes: number) =>
  Effect.gen(function*() {
    const settings = yield* RestoreTestSettings
    const pve = yield* Proxmox
    const guests = yield* GuestRecords
    const ops = yield* OpLog
    const taken = new Set<number>((yield* pve.listGuests).map((g) => g.vmid))
    for (const r of yield* guests.guestRecords) taken.add(r.vmid)
    for (const o of [...(yield* ops.inFlight), ...(yield* ops.list({ status: "needs_operator", limit: 1000 }))]) if (o.vmid !== null) taken.add(o.vmid)
    const span = settings.scratchMax - settings.scratchMin
    let probes = 0
    for (let i = 0; i <= span && probes < maxProbes; i++) {
      const v = from === "bottom" ? settings.scratchMin + i : settings.scratchMax - i
      if (taken.has(v)) continue
      if (Option.isSome(yield* guests.provenanceOf(v))) continue
      probes++
      const vmid = VmId.make(v)
      const free = yield* Effect.either(pve.nextId(vmid))
      if (Either.isRight(free) && free.right === vmid) return Option.some(vmid)
    }
    return Option.none<VmId>()
  })

/** A free vmid in the scratch range, from its bottom. */
export const pickScratchVmid = freeScratchVmid("bottom", MAX_VMID_PROBES)

/**
 * One restore-test of `c`, under the source guest's queue key. Skipped (recorded) when the restore
 * target lacks room or no scratch vmid is free; otherwise journaled, torn down, recorded.
 */
export const runRestoreTest = (c: RestoreCandidate, fallbackStorage: Option.Option<StorageId>) =>
  Effect.flatMap(GuestQueue, (queue) =>
    queue.serialize(c.source)(Effect.gen(function*() {
      const pve = yield* Proxmox
      const ops = yield* OpLog
      const startedMs = yield* Clock.currentTimeMillis
      const skip = (detail: string) =>
        Effect.as(
          Effect.zipRight(
            recordResult({ opId: `skipped-${randomUUID()}`, candidate: c, startedMs, result: "skipped", detail, timings: {} }),
            Effect.logWarning(`restore-test of ${c.source} from ${c.archive} skipped: ${detail}`)
          ),
          { _tag: "skipped", candidate: c, detail } as RestoreTestOutcome
        )

      // where the scratch guest's volumes go: the source's own rootfs storage, else provisioning's
      const sourceConfig = yield* Effect.option(pve.guestConfig(c.source))
      const storage = Option.orElse(Option.flatMap(sourceConfig, (cfg) => storageOfVolume(cfg.rootfs)), () => fallbackStorage)
      if (Option.isNone(storage)) return yield* skip("no storage to restore into (the guest's rootfs storage is unknown)")
      const bytes = Math.max(c.archiveSize ?? 0, Option.match(sourceConfig, { onNone: () => 0, onSome: restoredBytes }))
      const need = spaceNeeded(bytes)
      const listed = yield* Effect.option(pve.nodeStorage)
      const avail = Option.flatMap(listed, (l) => Option.fromNullable(l.find((x) => x.storage === storage.value)?.avail))
      if (Option.isNone(avail) || !Number.isFinite(avail.value)) return yield* skip(`free space on ${storage.value} is unknown`)
      if (avail.value < need) {
        return yield* skip(`${storage.value} has ${(avail.value / GiB).toFixed(1)} GiB free; the restore needs ${(need / GiB).toFixed(1)} GiB`)
      }
      const scratch = yield* pickScratchVmid
      if (Option.isNone(scratch)) return yield* skip("no free vmid in the scratch range")

      const marker = yield* newMarker
      const s = yield* beginOperation<"restore-test">({
        _tag: "restore-test",
        vmid: scratch.value,
        source: c.source,
        archive: c.archive,
        storage: storage.value,
        marker
      })
      const timings: Timings = {}
      const body = yield* Effect.either(testBody(s, sourceConfig, timings))
      if (Either.isLeft(body) && body.left._tag === "JournalError") return yield* Effect.fail(body.left)
      const { created, verdict } = Either.isRight(body)
        ? body.right
        : { created: true, verdict: { result: "fail" as const, detail: `the test stopped: ${short(body.left.message)}` } }

      const t3 = yield* Clock.currentTimeMillis
      const down = created
        ? yield* Effect.either(tearDown(s))
        : yield* Effect.as(Effect.flatMap(GuestRecords, (g) => g.clearProvenance(scratch.value)), Either.right("absent" as const))
      timings.teardown = (yield* Clock.currentTimeMillis) - t3
      if (Either.isLeft(down) && down.left._tag === "JournalError") return yield* Effect.fail(down.left)

      const held = Either.isLeft(down)
      const detail = held
        ? `${verdict.detail}; scratch guest ${scratch.value} held for an operator (${short(down.left.message, 200)})`
        : `${verdict.detail}; scratch guest ${scratch.value} ${down.right === "destroyed" ? "torn down" : "left nothing behind"}`
      yield* recordResult({ opId: s.id, candidate: c, startedMs, result: verdict.result, detail, timings })
      if (held) {
        yield* ops.finish(s.id, "needs_operator", `restore-test ${verdict.result}; ${detail}`)
      } else {
        yield* ops.finish(s.id, "done", `restore-test ${verdict.result}: ${detail}`)
      }
      const log = verdict.result === "pass" ? Effect.logInfo : Effect.logWarning
      yield* log(`restore-test of ${c.source} from ${c.archive}: ${verdict.result} (${detail})`)
      return {
        _tag: "tested",
        candidate: c,
        opId: s.id,
        scratch: scratch.value,
        result: verdict.result,
        detail,
        timings: { ...timings },
        teardown: held ? "needs_operator" : "done"
      } as RestoreTestOutcome
    })))

// ---------------------------------------------------------------------------------------------
// The pass and the loop

/** One restore-test at a time in this process (the journal check below covers a restart). */
const oneAtATime = Effect.unsafeMakeSemaphore(1)

/** Every scheduled backup target's listing; a target PVE cannot list now is left out (logged). */
export const listTargets = (desired: DesiredState) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const targets = scheduledBackupTargets(desired.storage ?? [])
    const listings = yield* Effect.forEach(targets, (target) =>
      pve.storageContent(target.id, { content: "backup" }).pipe(
        Effect.map((entries) => Option.some<TargetListing>({ target, entries })),
        Effect.catchAll((e) => Effect.as(Effect.logWarning(`protection: backups on ${target.id} not listed (${e._tag}: ${e.message})`), Option.none<TargetListing>()))
      ), { concurrency: 2 })
    return listings.flatMap(Option.toArray)
  })

/**
 * One restore-test pass: the most urgent due test, if any, run to its end. Skips (without a
 * test) while another restore-test is in flight in the journal.
 */
export const restoreTestPass = (desired: DesiredState) =>
  oneAtATime.withPermits(1)(Effect.gen(function*() {
    const ops = yield* OpLog
    const store = yield* ProtectionStore
    const settings = yield* RestoreTestSettings
    const running = (yield* ops.inFlight).find((o) => o.kind === "restore-test")
    if (running !== undefined) return { _tag: "busy", detail: `restore-test ${running.id} is in flight` } as RestoreTestOutcome
    const listings = yield* listTargets(desired)
    const guests = desired.guests.map((g) => g.vmid).filter((v) => !inScratchRange(settings, v))
    const candidates = chooseRestoreTests({
      guests,
      listings,
      runs: yield* store.runs,
      checks: yield* store.archiveChecks,
      now: yield* Clock.currentTimeMillis,
      tz: settings.timeZone
    })
    const first = candidates[0]
    if (first === undefined) return { _tag: "nothing_due" } as RestoreTestOutcome
    return yield* runRestoreTest(first, Option.fromNullable(desired.provisioning?.storage))
  }))

/**
 * The restore-test loop: a pass every `pass_interval_seconds` of Clock time over the current
 * desired state (None: no desired state yet, or the daemon is not ready to mutate; nothing runs).
 * A failing pass is logged and the loop goes on; only a journal failure ends a pass early.
 */
export const restoreTestLoop = <E, R>(current: Effect.Effect<Option.Option<DesiredState>, E, R>) =>
  settingsPassLoop("restore-test", current, restoreTestPass)

/** What the recovery rule and tests need without the pass. */
export type RestoreTestServices = Proxmox | StoreServices | GuestQueue | GuestHealth | ProtectionStore | RestoreTestSettings

/**
 * Recovery's record of an interrupted test (when the process has a ProtectionStore): the check's
 * own verdict if it was reached before the crash, else a failure saying it was interrupted.
 */
export const recordInterrupted = (op: { readonly id: string; readonly createdAtMs: number; readonly steps: ReadonlyArray<{ readonly name: string; readonly status: string; readonly data: unknown }> }, typed: {
  readonly source: VmId
  readonly archive: VolumeId
}, what: string) =>
  Effect.gen(function*() {
    const store = yield* Effect.serviceOption(ProtectionStore)
    if (Option.isNone(store)) return
    const check = op.steps.find((x) => x.name === "check" && x.status === "done")?.data
    const reached = Schema.decodeUnknownOption(Schema.Struct({ result: Schema.Literal("pass", "fail"), detail: Schema.String }))(check)
    const target = storageOfVolume(typed.archive)
    if (Option.isNone(target)) return
    const candidate: RestoreCandidate = { source: typed.source, target: target.value, tier: "vzdump", archive: typed.archive, archiveSize: null, reason: "slot_passed", overdueMs: 0 }
    yield* recordResult({
      opId: op.id,
      candidate,
      startedMs: op.createdAtMs,
      result: Option.match(reached, { onNone: () => "fail" as const, onSome: (r) => r.result }),
      detail: Option.match(reached, { onNone: () => what, onSome: (r) => `${r.detail}; ${what}` }),
      timings: {}
    }).pipe(Effect.provideService(ProtectionStore, store.value))
  })
