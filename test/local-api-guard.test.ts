/** The local API mutates nothing before journal recovery or while the state store fails. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Ref } from "effect"
import { guardMutations } from "../src/programs/localapi/guard.js"
import type { LocalApiBackendShape } from "../src/programs/localapi/backend.js"
import { VmId } from "../src/schema/ids.js"

const recording = (calls: Array<string>): LocalApiBackendShape => ({
  storage: () => Effect.sync(() => { calls.push("storage"); return { mounts: [] } }),
  snapshot: () => Effect.sync(() => { calls.push("snapshot"); return { snapshot: "ctl-a", taken_at: "t" } }),
  rollback: () => Effect.sync(() => { calls.push("rollback"); return { snapshot: "ctl-a", rolled_back_at: "t" } }),
  backup: () => Effect.sync(() => { calls.push("backup"); return { job: "j", state: "queued" as const } }),
  backupDue: () => Effect.sync(() => { calls.push("due"); return { due: false, reason: "not_yet", target: null, last_success_at: null, next_due_at: null } }),
  backupStatus: () => Effect.sync(() => { calls.push("status"); return { jobs: [], last_success_at: null, last_archive: null } }),
  restoreTestStatus: () => Effect.sync(() => { calls.push("rt"); return { last_result: null, last_at: null, archive: null, detail: null, last_pass_at: null } }),
  heartbeat: () => Effect.sync(() => void calls.push("heartbeat")),
  contact: () => Effect.sync(() => void calls.push("contact")),
  health: Effect.succeed({ status: "ok" as const, version: "x", checks: {} })
})

describe("guardMutations", () => {
  it.effect("snapshot, rollback and backup answer 503 until mutations are allowed; reads pass", () =>
    Effect.gen(function*() {
      const calls: Array<string> = []
      const ready = yield* Ref.make(false)
      const b = guardMutations(recording(calls), Ref.get(ready))
      const vmid = VmId.make(101)
      const refused = [
        yield* Effect.flip(b.snapshot(vmid, { name: "a" })),
        yield* Effect.flip(b.rollback(vmid, { snapshot: "ctl-a" })),
        yield* Effect.flip(b.backup(vmid))
      ]
      expect(refused.map((r) => r.code)).toEqual(["unavailable", "unavailable", "unavailable"])
      yield* b.storage(vmid)
      yield* b.backupDue(vmid)
      yield* b.heartbeat(vmid, { version: "1", image: "i", status: "healthy" })
      expect(calls).toEqual(["storage", "due", "heartbeat"])
      yield* Ref.set(ready, true)
      yield* b.snapshot(vmid, { name: "a" })
      yield* b.backup(vmid)
      expect(calls.slice(3)).toEqual(["snapshot", "backup"])
    }))
})
