/**
 * Integrity verify (SPEC §13, issue 10): cheaper than a restore-test and run more often (the
 * target policy's `verify` schedule, default daily), over each desired guest's newest archive on
 * each scheduled backup target.
 *
 * - PBS: the verification state PVE lists for the snapshot (PBS's own verify jobs re-read every
 *   chunk); `failed` is damage, no state yet is no verdict.
 * - vzdump archives on directory storages: Privileged's read-only archive test (the compression's
 *   checksums, then the whole tar stream), on `<storage path>/dump/<file>`.
 * A verdict is recorded per archive (ProtectionStore.recordArchiveCheck) and per (guest, target)
 * run; a damaged archive is logged, reported, and makes that guest's restore-test due at once
 * (restoreTest.ts reads the checks). A check that could not be made is never a verdict.
 */
import { Clock, Effect, Either, Option } from "effect"
import { Privileged } from "../../layers/Privileged.js"
import { ProtectionStore } from "../../layers/ProtectionStore.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { DesiredState } from "../../schema/desired.js"
import type { StorageId } from "../../schema/ids.js"
import type { StorageConfigEntry, StorageContentEntry } from "../../schema/proxmox.js"
import { dueRuns, parseCalendarEvent } from "./calendar.js"
import { listTargets, newestArchives } from "./restoreTest.js"
import { inScratchRange, RestoreTestSettings, settingsPassLoop } from "./scratch.js"

export interface VerifyOutcome {
  readonly vmid: number
  readonly storage: StorageId
  readonly volid: string
  /** ok / damaged: a verdict (recorded as an archive check); unchecked: none could be made. */
  readonly result: "ok" | "damaged" | "unchecked"
  readonly detail: string
}

type Verdict = Omit<VerifyOutcome, "vmid" | "storage" | "volid">

/** The host path of a vzdump archive on a directory-backed storage, if the volume id is one. */
export const archivePathOf = (storage: StorageConfigEntry | undefined, volid: string): Option.Option<string> => {
  const m = /^[A-Za-z][A-Za-z0-9\-_.]*:backup\/(vzdump-lxc-[^/]+)$/.exec(volid)
  if (m === null || storage?.path === undefined || !storage.path.startsWith("/")) return Option.none()
  return Option.some(`${storage.path.replace(/\/+$/, "")}/dump/${m[1]}`)
}

const pbsVerdict = (e: StorageContentEntry): Verdict =>
  e.verification === undefined
    ? { result: "unchecked", detail: "PBS has not verified this snapshot yet" }
    : e.verification.state === "ok"
    ? { result: "ok", detail: "PBS verification ok" }
    : { result: "damaged", detail: "PBS verification failed" }

const archiveTest = (storage: StorageConfigEntry | undefined, e: StorageContentEntry) =>
  Effect.gen(function*() {
    const path = archivePathOf(storage, e.volid)
    if (Option.isNone(path)) return { result: "unchecked", detail: "not a container archive on a directory storage" } as Verdict
    const priv = yield* Privileged
    const r = yield* Effect.either(priv.verifyArchive(path.value))
    if (Either.isLeft(r)) return { result: "unchecked", detail: `archive test not run: ${r.left.reason}` } as Verdict
    return r.right.ok
      ? ({ result: "ok", detail: `archive test ok (${r.right.compression})` } as Verdict)
      : ({ result: "damaged", detail: `archive test failed at the ${r.right.stage} stage (exit ${r.right.exitCode}): ${r.right.reason}` } as Verdict)
  })

/** One verify pass: every due (desired guest, scheduled target) newest archive, one after another. */
export const verifyPass = (desired: DesiredState) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const store = yield* ProtectionStore
    const settings = yield* RestoreTestSettings
    const now = yield* Clock.currentTimeMillis
    const runs = yield* store.runs
    const listings = yield* listTargets(desired)
    const config = listings.some((l) => l.target.type !== "pbs")
      ? Option.getOrElse(yield* Effect.option(pve.storageList), (): ReadonlyArray<StorageConfigEntry> => [])
      : []
    const guests = desired.guests.map((g) => g.vmid).filter((v) => !inScratchRange(settings, v))
    const out: Array<VerifyOutcome> = []
    for (const { entries, target } of listings) {
      const event = parseCalendarEvent(target.policy.verify)
      if (Either.isLeft(event)) continue
      const newest = newestArchives(entries)
      for (const vmid of guests) {
        const entry = newest.get(vmid)
        if (entry === undefined) continue
        const last = runs.find((r) => r.kind === "verify" && r.vmid === vmid && r.storage === target.id)?.lastAttemptMs
        if (!dueRuns(event.right, last, now, settings.timeZone).due) continue
        const verdict = target.type === "pbs" ? pbsVerdict(entry) : yield* archiveTest(config.find((c) => c.storage === target.id), entry)
        if (verdict.result !== "unchecked") {
          yield* store.recordArchiveCheck({ volid: entry.volid, storage: target.id, vmid, ok: verdict.result === "ok", detail: verdict.detail })
        }
        yield* store.recordRun({
          kind: "verify",
          vmid,
          storage: target.id,
          result: verdict.result === "ok" ? "ok" : verdict.result === "damaged" ? "failed" : "skipped",
          detail: verdict.detail
        })
        if (verdict.result === "damaged") {
          yield* Effect.logWarning(`integrity verify: ${entry.volid} (guest ${vmid}) is damaged: ${verdict.detail}; its restore-test is due now`)
        }
        out.push({ vmid, storage: target.id, volid: entry.volid, ...verdict })
      }
    }
    return out
  })

/** The verify loop: a pass every `pass_interval_seconds` over the current desired state (as restoreTestLoop). */
export const verifyLoop = <E, R>(current: Effect.Effect<Option.Option<DesiredState>, E, R>) =>
  settingsPassLoop("integrity verify", current, verifyPass)
