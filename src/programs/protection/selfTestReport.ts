/**
 * The host report's self-restore-tests and integrity checks (issue 10), from ProtectionStore: the
 * newest restore-tests (pass, fail or skipped, with their archive, op and phase timings) and the
 * newest integrity verify per guest and backup target. Read only when the daemon's graph has a
 * ProtectionStore; a store that cannot answer reports none here (state_store says why).
 */
import { Effect, Option } from "effect"
import { ProtectionStore } from "../../layers/ProtectionStore.js"
import type { ReportArchiveCheck, ReportRestoreTest } from "../../schema/hub.js"

/** How many restore-tests the report carries (newest first). */
export const REPORTED_RESTORE_TESTS = 20

const rfc3339 = (ms: number) => new Date(ms).toISOString()
const clip = (s: string) => (s.length > 500 ? `${s.slice(0, 500)}…` : s)
const ms = (n: number | undefined) => (n !== undefined && Number.isFinite(n) ? n : null)
const isVmid = (n: number) => Number.isSafeInteger(n) && n >= 100 && n <= 999_999_999

export interface SelfTests {
  readonly restoreTests: ReadonlyArray<ReportRestoreTest>
  readonly archiveChecks: ReadonlyArray<ReportArchiveCheck>
}

const none: SelfTests = { restoreTests: [], archiveChecks: [] }

export const selfTestsForReport: Effect.Effect<SelfTests> = Effect.gen(function*() {
  const store = yield* Effect.serviceOption(ProtectionStore)
  if (Option.isNone(store)) return none
  const tests = yield* store.value.restoreTests(REPORTED_RESTORE_TESTS)
  const checks = yield* store.value.archiveChecks
  const newest = new Map<string, ReportArchiveCheck>()
  // archiveChecks is newest first: the first per (storage, guest) is the one to report
  for (const c of checks) {
    const key = `${c.storage}\u0000${c.vmid}`
    if (!newest.has(key) && isVmid(c.vmid)) {
      newest.set(key, { storage: c.storage, vmid: c.vmid, volid: c.volid, at: rfc3339(c.checkedMs), ok: c.ok, detail: clip(c.detail) })
    }
  }
  return {
    restoreTests: tests.filter((t) => isVmid(t.vmid)).map((t): ReportRestoreTest => ({
      vmid: t.vmid,
      at: rfc3339(t.endedMs),
      result: t.result,
      detail: clip(t.detail),
      archive: t.archive,
      op_id: t.result === "skipped" ? null : t.opId,
      timings_ms: { restore: ms(t.timings["restore"]), start: ms(t.timings["start"]), check: ms(t.timings["check"]), teardown: ms(t.timings["teardown"]) }
    })),
    archiveChecks: [...newest.values()].sort((a, b) => a.vmid - b.vmid || a.storage.localeCompare(b.storage))
  } satisfies SelfTests
}).pipe(
  Effect.catchTag("JournalError", (e) => Effect.as(Effect.logWarning(`host report: restore-tests left out (${e.message})`), none))
)
