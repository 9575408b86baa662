/**
 * What data protection shows (issue 10): `plan` per guest (newest point per tier and its age
 * against the policy, bulk decisions, unprotected), the host report's `protection` and its
 * retention-change pending signature through the ProtectionBoard hook, and a force-backup's
 * archive carrying the agent's provenance. (The daemon's wiring is src/programs/daemon/protection.ts.)
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Option, Schema, TestClock } from "effect"
import { runSignedJob } from "../src/programs/control/jobs.js"
import { planReport, renderPlan } from "../src/programs/control/preview.js"
import { collectReport } from "../src/programs/daemon/report.js"
import { protectionPass } from "../src/programs/protection/pass.js"
import { ownership } from "../src/programs/protection/provenance.js"
import { ProtectionBoard } from "../src/programs/protection/view.js"
import { decodeDesiredState } from "../src/schema/desired.js"
import { HostReport } from "../src/schema/hub.js"
import { VmId } from "../src/schema/ids.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile } from "./engine-support.js"
import { DAY, guestsJson, HOUR, listed, protectionLayer, protectionSeed, runFor, T0, TZ, USB, usbTarget } from "./protection-support.js"

const desired = (retention: Record<string, unknown>) =>
  Either.getOrThrow(decodeDesiredState({
    generation: 3,
    guests: guestsJson,
    storage: [
      { id: "local-lvm", type: "local-dir", durable_id: "/var/lib/vz", class: "fast", role: "primary", state: "attached" },
      { id: "nas", type: "nfs", durable_id: "nas.lan:/bulk", class: "slow", role: "bulk-data", state: "attached" },
      usbTarget({ schedule: "02:00", retention })
    ],
    policies: {
      guests: [
        { vmid: 100, volumes: [{ volume: "rootfs", kind: "hot", target: "local-lvm" }, { volume: "mp0", kind: "bulk", target: "nas" }] },
        {
          vmid: 101,
          volumes: [
            { volume: "rootfs", kind: "hot", target: "local-lvm" },
            { volume: "mp0", kind: "bulk", target: "nas", backup: { none: { reason: "media library, re-downloadable" } } }
          ]
        }
      ]
    }
  }))

const withSim = <A, E>(body: (sim: SimPve) => Effect.Effect<A, E, Layer.Layer.Success<ReturnType<typeof protectionLayer>> | ProtectionBoard>) =>
  Effect.scoped(Effect.gen(function*() {
    yield* TestClock.setTime(T0)
    const sim = yield* makeSimPve(yield* protectionSeed())
    const base = protectionLayer(sim, dbFile())
    return yield* body(sim).pipe(Effect.provide(Layer.provideMerge(ProtectionBoard.layer, base)))
  }))

describe("plan: protection per guest", () => {
  it.scoped("newest point per tier and its age against the policy, bulk decisions, unprotected, overdue", () =>
    withSim(() => Effect.gen(function*() {
      const want = desired({ keep_daily: 7 })
      const before = yield* planReport(want, new Map(), Option.none(), TZ)
      const g0 = before.protection!.guests
      expect(g0.map((g) => [g.vmid, g.status])).toEqual([[100, "unprotected"], [101, "no_backup"]])
      yield* runFor(protectionPass(want))
      yield* TestClock.adjust("30 minutes")
      const p = yield* planReport(want, new Map(), Option.none(), TZ)
      const [g100, g101] = p.protection!.guests
      expect(g100!.status).toBe("unprotected")
      expect(g100!.bulk).toEqual([{ volume: "mp0", target: "nas", decision: null, status: "unprotected" }])
      expect(g101!.status).toBe("ok")
      expect(g101!.bulk[0]!.status).toBe("accepted_none")
      const vz = g101!.tiers.find((t) => t.tier === "vzdump")!
      expect(vz.target).toBe("usb1")
      expect(vz.interval_seconds).toBe(86_400)
      expect(vz.age_seconds).toBeGreaterThanOrEqual(30 * 60)
      expect(vz.overdue).toBe(false) // the next slot is 02:00 Budapest (01:00 UTC)
      // the seed's snapshot of 101 is the snapshot tier's newest point
      expect(g101!.tiers.find((t) => t.tier === "snapshot")!.newest_at).toBe(1768356000 * 1000)
      expect(g101!.last_runs.map((r) => r.result)).toEqual(["ok"])
      const text = renderPlan(p)
      expect(text).toMatch(/UNPROTECTED: no backup decision/)
      expect(text).toMatch(/crash-consistent/)
      // the slot passes without a backup (no pass ran): overdue
      yield* TestClock.adjust(HOUR)
      const later = yield* planReport(want, new Map(), Option.none(), TZ)
      expect(later.protection!.guests[1]!.status).toBe("overdue")
    })))
})

describe("host report: protection", () => {
  it.scoped("per guest status and the retention-change pending signature; the report decodes as the hub's contract", () =>
    withSim(() => Effect.gen(function*() {
      const board = yield* ProtectionBoard
      const wide = desired({ keep_daily: 7 })
      for (let d = 0; d < 5; d++) {
        yield* TestClock.setTime(T0 + d * DAY + HOUR + 30_000)
        yield* board.publish(wide, yield* runFor(protectionPass(wide)))
      }
      const narrow = desired({ keep_daily: 2 })
      yield* TestClock.adjust("1 minute")
      const r1 = yield* runFor(protectionPass(narrow))
      yield* board.publish(narrow, r1)
      const input = { hostId: "host-7f3c2a90", desiredGenerationApplied: 3, pendingSignatures: [], cloudflared: Effect.succeed("running" as const) }
      const report = yield* collectReport(input)
      expect(Schema.decodeUnknownEither(HostReport)(report, { onExcessProperty: "error" })._tag).toBe("Right")
      expect(report.protection.map((p) => [p.vmid, p.status, p.consistency])).toEqual([[100, "unprotected", "crash"], [101, "ok", "crash"]])
      const t = report.protection[1]!.targets.find((x) => x.target === "usb1")!
      expect(t.last_result).toBe("ok")
      expect(t.newest_at).toMatch(/Z$/)
      expect(report.protection[1]!.bulk).toEqual([{ volume: "mp0", target: "nas", status: "accepted_none", backup_target: null, reason: "media library, re-downloadable" }])
      const pending = report.pending_signatures.filter((p) => p.op === "retention-change")
      expect(pending).toEqual([{ op: "retention-change", vmid: null, params: { storage: "usb1", retention: { keep_daily: 2 } }, reason: expect.stringMatching(/would delete 6 existing/), since: expect.any(String) }])
      // `since` is kept while the same change stays pending
      yield* TestClock.adjust("10 minutes")
      yield* board.publish(narrow, yield* runFor(protectionPass(narrow)))
      const again = (yield* collectReport(input)).pending_signatures.filter((p) => p.op === "retention-change")
      expect(again[0]!.since).toBe(pending[0]!.since)
    })))
})

describe("force-backup provenance", () => {
  it.scoped("a force-backup job's archive carries its op in the notes and counts as the agent's", () =>
    withSim((sim) => Effect.gen(function*() {
      const done = yield* runFor(runSignedJob({ id: "job-fb", op: "force-backup", guest_id: VmId.make(100), params: { storage: "usb1" } }))
      expect(done.status).toBe("done")
      const archives = yield* listed(sim, USB, 100)
      expect(archives).toHaveLength(1)
      expect(archives[0]!.notes).toMatch(/^felhom-op=/)
      const owned = yield* ownership(archives)
      expect(owned.get(archives[0]!.id)).toMatchObject({ ours: true })
    })))
})
