/** ProtectionStore (issue 10): runs keep their newest success through failures; records survive a reopen. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, TestClock } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { ProtectionStore, ProtectionStoreLive } from "../src/layers/ProtectionStore.js"

const store = (file: string) => ProtectionStoreLive.pipe(Layer.provide(layerAt(file)), Layer.orDie)

describe("ProtectionStore", () => {
  it.effect("a failed attempt keeps the newest success; a later success replaces it", () =>
    Effect.gen(function*() {
      const p = yield* ProtectionStore
      yield* TestClock.setTime(1_000)
      yield* p.recordRun({ kind: "backup", vmid: 101, storage: "usb1", result: "ok", detail: "archive a" })
      yield* TestClock.setTime(2_000)
      yield* p.recordRun({ kind: "backup", vmid: 101, storage: "usb1", result: "failed", detail: "no space" })
      let [r] = yield* p.runs
      expect(r).toEqual({ kind: "backup", vmid: 101, storage: "usb1", lastAttemptMs: 2_000, lastSuccessMs: 1_000, lastResult: "failed", detail: "no space" })
      yield* TestClock.setTime(3_000)
      yield* p.recordRun({ kind: "backup", vmid: 101, storage: "usb1", result: "warnings", detail: "WARNINGS: 1" })
      ;[r] = yield* p.runs
      expect(r?.lastSuccessMs).toBe(3_000)
      expect(r?.lastResult).toBe("warnings")
      // another kind or target is its own record
      yield* p.recordRun({ kind: "verify", vmid: 101, storage: "usb1", result: "skipped", detail: "storage short" })
      expect((yield* p.runs).length).toBe(2)
      expect((yield* p.runs).find((x) => x.kind === "verify")?.lastSuccessMs).toBeNull()
    }).pipe(Effect.provide(store(":memory:"))))

  it.effect("restore-tests newest first with their timings; retention in force; archive checks", () =>
    Effect.gen(function*() {
      const p = yield* ProtectionStore
      for (const [i, result] of (["pass", "fail"] as const).entries()) {
        yield* p.recordRestoreTest({ opId: `op${i}`, vmid: 101, archive: `a${i}`, startedMs: i, endedMs: i + 10, result, detail: result, timings: { restore: 5, check: 1 } })
      }
      const tests = yield* p.restoreTests(10)
      expect(tests.map((t) => t.result)).toEqual(["fail", "pass"])
      expect(tests[0]?.timings).toEqual({ restore: 5, check: 1 })
      expect(yield* p.restoreTests(1)).toHaveLength(1)

      expect(Option.isNone(yield* p.retentionInForce("usb1"))).toBe(true)
      yield* TestClock.setTime(5_000)
      yield* p.setRetentionInForce("usb1", { keep_last: 3 }, "manifest")
      yield* p.setRetentionInForce("usb1", { keep_last: 2 }, "signed")
      expect(Option.getOrThrow(yield* p.retentionInForce("usb1"))).toEqual({ storage: "usb1", retention: { keep_last: 2 }, basis: "signed", sinceMs: 5_000 })

      yield* p.recordArchiveCheck({ volid: "usb1:backup/x", storage: "usb1", vmid: 101, ok: false, detail: "truncated" })
      yield* p.recordArchiveCheck({ volid: "usb1:backup/x", storage: "usb1", vmid: 101, ok: true, detail: "ok" })
      expect(yield* p.archiveChecks).toEqual([{ volid: "usb1:backup/x", storage: "usb1", vmid: 101, checkedMs: 5_000, ok: true, detail: "ok" }])
    }).pipe(Effect.provide(store(":memory:"))))

  it.effect("what was recorded is there after the database is reopened", () => {
    const dir = mkdtempSync(join(tmpdir(), "felhom-protection-"))
    const file = join(dir, "state.db")
    return Effect.gen(function*() {
      yield* Effect.flatMap(ProtectionStore, (p) => p.recordRun({ kind: "restore_test", vmid: 7, storage: "pbs", result: "ok", detail: "pass" })).pipe(
        Effect.provide(store(file))
      )
      const runs = yield* Effect.flatMap(ProtectionStore, (p) => p.runs).pipe(Effect.provide(store(file)))
      expect(runs.map((r) => [r.kind, r.vmid, r.lastResult])).toEqual([["restore_test", 7, "ok"]])
    }).pipe(Effect.ensuring(Effect.sync(() => rmSync(dir, { recursive: true, force: true }))))
  })
})
