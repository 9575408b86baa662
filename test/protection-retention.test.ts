/**
 * Retention pruning against the in-process simulator under TestClock (issue 10): over a month of
 * daily backups the target keeps exactly what prune() says of the agent's archives, never the
 * newest; a shrinking policy deletes nothing until an operator signs (and `plan` lists what it
 * would delete); foreign archives (manual, forged or copied notes) are never deleted; a removed
 * policy or target keeps everything; a crash mid-prune is not resumed and deletes nothing extra;
 * a hostile desired state cannot delete beyond the policy in force.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Fiber, Layer, Option, TestClock } from "effect"
import { randomUUID } from "node:crypto"
import { Journal } from "../src/layers/Journal.js"
import { ProtectionStore } from "../src/layers/ProtectionStore.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { clearPrune } from "../src/programs/control/gate.js"
import { runSignedJob } from "../src/programs/control/jobs.js"
import { planReport } from "../src/programs/control/preview.js"
import { recover } from "../src/programs/control/recover.js"
import { beginOperation } from "../src/programs/control/steps.js"
import { protectionPass, type PassReport } from "../src/programs/protection/pass.js"
import { notesFor, ownership } from "../src/programs/protection/provenance.js"
import { type Archive, prune } from "../src/programs/protection/retention.js"
import { decodeDesiredState, type DesiredState } from "../src/schema/desired.js"
import { VmId, type VolumeId } from "../src/schema/ids.js"
import type { Retention } from "../src/schema/storage.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { b64, dbFile, settle, signedOp } from "./engine-support.js"
import {
  DAY,
  desiredWith,
  guestsJson,
  HOUR,
  listed,
  protectionLayer,
  protectionSeed,
  runFor,
  T0,
  TZ,
  USB,
  usbTarget,
  volids
} from "./protection-support.js"

type Services = Layer.Layer.Success<ReturnType<typeof protectionLayer>>

const withSim = <A, E>(body: (sim: SimPve, path: string) => Effect.Effect<A, E, Services>) =>
  Effect.scoped(Effect.gen(function*() {
    yield* TestClock.setTime(T0)
    const sim = yield* makeSimPve(yield* protectionSeed())
    const path = dbFile()
    return yield* body(sim, path).pipe(Effect.provide(protectionLayer(sim, path)))
  }))

/** Every archive the agent's backups made, as prune() takes them. */
type Made = Array<Archive & { readonly vmid: number }>

const record = (made: Made, sim: SimPve, report: PassReport) =>
  Effect.gen(function*() {
    const all = yield* listed(sim, USB)
    for (const b of report.backups) {
      if (b.archive === null) continue
      const a = all.find((x) => x.id === b.archive)!
      made.push({ id: a.id, ctimeEpochSeconds: a.ctimeEpochSeconds, vmid: b.vmid })
    }
  })

/** One pass at 01:00:30 UTC (02:00:30 Budapest, after the slot) of day `d`. */
const nightly = (d: number, desired: DesiredState) =>
  Effect.gen(function*() {
    const at = T0 + d * DAY + HOUR + 30_000
    const now = yield* TestClock.currentTimeMillis
    if (at > now) yield* TestClock.adjust(at - now)
    return yield* runFor(protectionPass(desired))
  })

const kept = (made: Made, vmid: number, r: Retention) =>
  prune(made.filter((m) => m.vmid === vmid), r, TZ).kept.map((k) => k.archive.id).sort()

const month: Retention = { keep_daily: 7, keep_weekly: 3, keep_monthly: 2 }

describe("retention over simulated weeks", () => {
  it.scoped("a month of daily backups: the target keeps exactly what prune() keeps, never the newest, every deletion audited", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const desired = desiredWith({ schedule: "02:00", retention: month })
        const made: Made = []
        let deletions = 0
        for (let d = 0; d < 40; d++) {
          const report = yield* nightly(d, desired)
          yield* record(made, sim, report)
          deletions += report.prunes.reduce((n, p) => n + p.deleted.length, 0)
          for (const vmid of [100, 101]) {
            const now = yield* volids(sim, USB, vmid)
            expect(now).toEqual(kept(made, vmid, month))
            // the newest backup is always there
            expect(now).toContain(made.filter((m) => m.vmid === vmid).at(-1)!.id)
          }
        }
        expect(made).toHaveLength(80)
        // 7 daily + up to 3 weekly + up to 2 monthly per guest, far fewer than 40
        for (const vmid of [100, 101]) expect((yield* volids(sim, USB, vmid)).length).toBeLessThanOrEqual(12)
        expect(deletions).toBe(80 - (yield* volids(sim, USB)).length)
        const j = yield* Journal
        const audited = (yield* j.auditTail(5000)).filter((e) => e.action === "delete-backup")
        expect(audited.filter((e) => e.actor === "gate" && e.decision === "allowed")).toHaveLength(deletions)
        expect(audited.filter((e) => e.actor === "prune" && e.decision === "done")).toHaveLength(deletions)
        expect((yield* j.verifyAudit).ok).toBe(true)
        // every delete PVE received went through a gate clearance
        const deletes = (yield* sim.requests).filter((r) => r.method === "DELETE")
        expect(deletes).toHaveLength(deletions)
      })), 120_000)

  it.scoped("the gate never clears the newest archive, a foreign one, or one the policy keeps, even for a prune op naming it", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const desired = desiredWith({ schedule: "02:00", retention: { keep_all: true } })
        for (let d = 0; d < 3; d++) yield* nightly(d, desired)
        // as if an operator had signed keep_last 2
        yield* (yield* ProtectionStore).setRetentionInForce(USB, { keep_last: 2 }, "signed")
        const pve = yield* Proxmox
        // an operator's manual backup, after the agent's
        yield* runFor(Effect.flatMap(pve.vzdump({ vmid: VmId.make(100), storage: USB, notesTemplate: "before upgrade" }), (u) => pve.waitTask(Option.getOrThrow(u))))
        const mine = (yield* listed(sim, USB, 100)).sort((a, b) => a.ctimeEpochSeconds - b.ctimeEpochSeconds)
        const [oldest, middle, newestOurs, manual] = [mine[0]!, mine[1]!, mine[2]!, mine[3]!]
        expect(manual.notes).toBe("before upgrade")
        const op = yield* beginOperation<"prune">({
          _tag: "prune",
          vmid: VmId.make(100),
          storage: USB,
          archives: [oldest.id, middle.id, newestOurs.id, manual.id],
          basis: "policy"
        })
        const tryClear = (volid: VolumeId) => Effect.either(clearPrune(op.id, VmId.make(100), USB, volid, TZ))
        const refusal = (e: Either.Either<unknown, { readonly message: string }>) => (Either.isLeft(e) ? e.left.message : "cleared")
        expect(refusal(yield* tryClear(manual.id))).toMatch(/not made by the agent/)
        expect(refusal(yield* tryClear(newestOurs.id))).toMatch(/newest/)
        expect(refusal(yield* tryClear(middle.id))).toMatch(/keeps it/)
        expect(Either.isRight(yield* tryClear(oldest.id))).toBe(true)
        // another guest's op cannot clear it, nor a finished op
        const other = yield* beginOperation<"prune">({ _tag: "prune", vmid: VmId.make(101), storage: USB, archives: [oldest.id], basis: "policy" })
        expect(refusal(yield* Effect.either(clearPrune(other.id, VmId.make(100), USB, oldest.id, TZ)))).toMatch(/not a prune of guest 100/)
        yield* (yield* Journal).finish(op.id, "failed", "test")
        expect(refusal(yield* tryClear(oldest.id))).toMatch(/not in flight/)
        const refusals = (yield* (yield* Journal).auditTail(50)).filter((e) => e.decision === "refused:prune")
        expect(refusals.length).toBe(5)
      })))
})

describe("a shrinking policy", () => {
  it.scoped("deletes nothing without a signature, plan lists what it would delete, a signed retention-change applies it", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const wide = desiredWith({ schedule: "02:00", retention: { keep_daily: 7 } })
        const made: Made = []
        for (let d = 0; d < 9; d++) yield* record(made, sim, yield* nightly(d, wide))
        const before = yield* volids(sim, USB)
        expect(before).toHaveLength(14)
        const narrow = desiredWith({ schedule: "02:00", retention: { keep_daily: 3 } })
        // passes through two more nights under the new manifest: nothing shrinks unsigned
        const store = yield* ProtectionStore
        let pending: PassReport["pending"] = []
        for (let d = 9; d < 11; d++) {
          const r = yield* nightly(d, narrow)
          yield* record(made, sim, r)
          pending = r.pending
        }
        expect(Option.getOrThrow(yield* store.retentionInForce(USB))).toMatchObject({ retention: { keep_daily: 7 }, basis: "manifest" })
        for (const vmid of [100, 101]) expect(yield* volids(sim, USB, vmid)).toEqual(kept(made, vmid, { keep_daily: 7 }))
        expect(pending).toHaveLength(1)
        expect(pending[0]!.params).toEqual({ storage: "usb1", retention: { keep_daily: 3 } })
        const shrinks = (history: Made) =>
          [100, 101].flatMap((v) => kept(history, v, { keep_daily: 7 }).filter((id) => !kept(history, v, { keep_daily: 3 }).includes(id))).sort()
        // the pass judged the change on the listing it made before that night's backups
        const wouldDelete = pending[0]!.wouldDelete.map((w) => w.volid as string).sort()
        expect(wouldDelete).toEqual(shrinks(made.slice(0, -2)))
        expect(wouldDelete).toHaveLength(8)
        const expected = shrinks(made)

        // plan shows the list as of now, and what a signature must carry
        const deletesBeforePlan = (yield* sim.requests).filter((r) => r.method === "DELETE").length
        const plan = yield* planReport(narrow, new Map(), Option.none(), TZ)
        const usb = plan.protection!.retention.find((r) => r.storage === "usb1")!
        expect(usb.change).toBe("shrinks")
        expect(usb.would_delete.map((w) => w.volid).sort()).toEqual(expected)
        expect(plan.protection!.retention_verdicts).toEqual([{ storage: "usb1", verdict: "pending_signature", reason: expect.stringMatching(/only an operator/) }])
        expect((yield* sim.requests).filter((r) => r.method === "DELETE").length).toBe(deletesBeforePlan) // plan deleted nothing

        // a signature bound to other params is refused; the right one is adopted, then pruned under
        const now = yield* TestClock.currentTimeMillis
        const wrong = signedOp({ op: "retention-change", guest_id: null, params: { storage: "usb1", retention: { keep_daily: 1 } } }, undefined, now)
        const refused = yield* runSignedJob({
          id: "job-retention-wrong",
          op: "retention-change",
          guest_id: null,
          params: { storage: "usb1", retention: { keep_daily: 3 } },
          blob: b64(wrong.blob),
          signature: wrong.signature
        })
        expect(refused.status).toBe("rejected")
        expect(refused.reason).toMatch(/binding_mismatch/)
        const unsigned = yield* runSignedJob({ id: "job-retention-unsigned", op: "retention-change", guest_id: null, params: { storage: "usb1", retention: { keep_daily: 3 } } })
        expect(unsigned.status).toBe("pending_signature")
        const sig = signedOp({ op: "retention-change", guest_id: null, params: { storage: "usb1", retention: { keep_daily: 3 } } }, undefined, now)
        const done = yield* runSignedJob({
          id: "job-retention-ok",
          op: "retention-change",
          guest_id: null,
          params: { storage: "usb1", retention: { keep_daily: 3 } },
          blob: b64(sig.blob),
          signature: sig.signature
        })
        expect(done.status).toBe("done")
        expect(Option.getOrThrow(yield* store.retentionInForce(USB))).toMatchObject({ retention: { keep_daily: 3 }, basis: "signed" })
        // nothing deleted by the job itself: the next pass prunes
        for (const vmid of [100, 101]) expect(yield* volids(sim, USB, vmid)).toEqual(kept(made, vmid, { keep_daily: 7 }))
        yield* TestClock.adjust("1 minute")
        const after = yield* runFor(protectionPass(narrow))
        expect(after.pending).toEqual([])
        expect(after.prunes.flatMap((p) => p.deleted).sort()).toEqual(expected)
        for (const vmid of [100, 101]) expect(yield* volids(sim, USB, vmid)).toEqual(kept(made, vmid, { keep_daily: 3 }))
      })), 60_000)

  it.scoped("a growing policy is adopted unsigned and deletes nothing; the first policy over existing archives is judged against keep-all", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const store = yield* ProtectionStore
        // no policy first: backups accumulate, nothing in force
        const desired = desiredWith({ schedule: "02:00", retention: { keep_all: true } })
        for (let d = 0; d < 4; d++) yield* nightly(d, desired)
        expect(yield* volids(sim, USB)).toHaveLength(8)
        // a first count-based policy would delete existing archives: pending, not adopted
        const first = yield* nightly(4, desiredWith({ schedule: "02:00", retention: { keep_last: 2 } }))
        expect(first.pending).toHaveLength(1)
        expect(first.prunes).toEqual([])
        expect(Option.getOrThrow(yield* store.retentionInForce(USB))).toMatchObject({ retention: { keep_all: true } })
        expect(yield* volids(sim, USB)).toHaveLength(10)
        // a policy keeping at least as much as keep-all... only keep-all does: a large count keeps all 10
        const grown = yield* nightly(5, desiredWith({ schedule: "02:00", retention: { keep_last: 50 } }))
        expect(grown.pending).toEqual([])
        expect(grown.adopted).toEqual(["usb1"])
        expect(yield* volids(sim, USB)).toHaveLength(12)
      })))
})

describe("foreign archives", () => {
  it.scoped("manual backups and forged or copied notes are never pruned, whatever the policy", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const desired = desiredWith({ schedule: "02:00", retention: { keep_last: 1 } })
        const pve = yield* Proxmox
        const j = yield* Journal
        yield* nightly(0, desired)
        // the agent's op ids, as someone with storage access could read them from the notes
        const ops = yield* j.list({ limit: 10 })
        const backupOf = (vmid: number) => ops.find((o) => o.kind === "backup" && o.vmid === vmid)!.id
        const agentsBefore = new Set(yield* volids(sim, USB))
        const pruneOp = yield* beginOperation<"prune">({ _tag: "prune", vmid: VmId.make(101), storage: USB, archives: [], basis: "policy" })
        yield* j.finish(pruneOp.id, "done", "test")
        const manual = (vmid: number, notes: string) =>
          runFor(Effect.flatMap(pve.vzdump({ vmid: VmId.make(vmid), storage: USB, notesTemplate: notes }), (u) => pve.waitTask(Option.getOrThrow(u))))
        yield* TestClock.adjust("1 hour")
        yield* manual(100, "manual before upgrade")
        yield* manual(100, notesFor(randomUUID())) // an op the journal never had
        yield* manual(100, notesFor(backupOf(101))) // a real backup op, of another guest
        yield* manual(100, notesFor(backupOf(100))) // a copy of its own archive's notes
        yield* manual(100, notesFor(pruneOp.id)) // a real op that makes no backups
        yield* manual(101, `${notesFor(backupOf(101))}\nsecond line`) // more than the one line
        const foreign = (yield* listed(sim, USB)).filter((a) => !agentsBefore.has(a.id))
        expect(foreign).toHaveLength(6)
        const owned = yield* ownership(yield* listed(sim, USB))
        for (const f of foreign) expect(owned.get(f.id)?.ours).toBe(false)
        // a week of nightly backups under keep_last 1
        for (let d = 1; d < 8; d++) yield* nightly(d, desired)
        const now = yield* volids(sim, USB)
        for (const f of foreign) expect(now).toContain(f.id)
        // of the agent's own, only the newest per guest is left
        expect(now).toHaveLength(foreign.length + 2)
        const refusals = (yield* j.auditTail(500)).filter((e) => e.decision === "refused:prune")
        expect(refusals).toEqual([])
      })), 60_000)
})

describe("what keeps everything", () => {
  it.scoped("a removed policy, a removed target, a disconnected target: nothing is pruned", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const made: Made = []
        for (let d = 0; d < 3; d++) yield* record(made, sim, yield* nightly(d, desiredWith({ schedule: "02:00", retention: { keep_all: true } })))
        expect(yield* volids(sim, USB)).toHaveLength(6)
        const narrow = (extra: Partial<Record<"policy" | "state", unknown>>) =>
          Either.getOrThrow(decodeDesiredState({
            generation: 2,
            guests: guestsJson,
            storage: [{ ...usbTarget(undefined), ...(extra.state === undefined ? {} : { state: extra.state }), ...(extra.policy === undefined ? {} : { policy: extra.policy }) }]
          }))
        const without = [
          narrow({}), // the policy removed
          Either.getOrThrow(decodeDesiredState({ generation: 3, guests: guestsJson, storage: [] })), // the target removed
          Either.getOrThrow(decodeDesiredState({ generation: 4, guests: guestsJson })), // no manifest at all
          narrow({ state: "disconnected", policy: { schedule: "*:*", retention: { keep_last: 1 } } })
        ]
        for (let d = 3; d < 3 + without.length; d++) {
          const r = yield* nightly(d, without[d - 3]!)
          expect(r.backups).toEqual([])
          expect(r.prunes).toEqual([])
        }
        expect(yield* volids(sim, USB)).toHaveLength(6)
        expect((yield* sim.requests).filter((r) => r.method === "DELETE")).toEqual([])
      })))
})

describe("a crash during a prune", () => {
  it.scoped("recovery does not resume it; the next pass recomputes; nothing extra is deleted", () =>
    Effect.scoped(Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const sim = yield* makeSimPve(yield* protectionSeed({ task_durations_ms: { vzdump: 3000, imgdel: 5000 } }))
      const path = dbFile()
      const made: Made = []
      const wide = desiredWith({ schedule: "02:00", retention: { keep_daily: 7 } })
      const narrow = desiredWith({ schedule: "02:00", retention: { keep_daily: 2 } })
      // first life: history, then a signed shrink, then killed in the middle of the prune
      yield* Effect.gen(function*() {
        for (let d = 0; d < 8; d++) yield* record(made, sim, yield* nightly(d, wide))
        const now = yield* TestClock.currentTimeMillis
        const sig = signedOp({ op: "retention-change", guest_id: null, params: { storage: "usb1", retention: { keep_daily: 2 } } }, undefined, now)
        const done = yield* runSignedJob({ id: "job-shrink", op: "retention-change", guest_id: null, params: { storage: "usb1", retention: { keep_daily: 2 } }, blob: b64(sig.blob), signature: sig.signature })
        expect(done.status).toBe("done")
        yield* TestClock.adjust("1 minute")
        const pass = yield* Effect.fork(protectionPass(narrow))
        // until the second deletion is running (one done, one in PVE's hands), then the kill
        for (let i = 0; i < 200; i++) {
          yield* settle
          if ((yield* sim.tasks).filter((t) => t.type === "imgdel").length >= 2) break
          yield* TestClock.adjust("500 millis")
        }
        const exit = yield* Fiber.interrupt(pass)
        expect(Exit.isInterrupted(exit)).toBe(true)
        const inFlight = yield* (yield* Journal).inFlight
        expect(inFlight.map((o) => o.kind)).toContain("prune")
      }).pipe(Effect.provide(protectionLayer(sim, path)))
      // second life on the same database: recovery first, then the next pass
      yield* Effect.gen(function*() {
        const recovered = yield* runFor(recover)
        const prunes = recovered.filter((r) => r.kind === "prune")
        expect(prunes.length).toBeGreaterThan(0)
        for (const p of prunes) expect(p.outcome).toBe("failed")
        const deletesBefore = (yield* sim.requests).filter((r) => r.method === "DELETE").length
        yield* TestClock.adjust("1 minute")
        const next = yield* runFor(protectionPass(narrow))
        expect(next.prunes.every((p) => p.result === "done")).toBe(true)
        for (const vmid of [100, 101]) expect(yield* volids(sim, USB, vmid)).toEqual(kept(made, vmid, { keep_daily: 2 }))
        // every DELETE over both lives removed an archive keep_daily 2 removes, each once
        const deletes = (yield* sim.requests).filter((r) => r.method === "DELETE").map((r) => decodeURIComponent(r.path.split("/content/")[1]!))
        const shouldGo = [100, 101].flatMap((v) => made.filter((m) => m.vmid === v).map((m) => m.id).filter((id) => !kept(made, v, { keep_daily: 2 }).includes(id)))
        expect(new Set(deletes).size).toBe(deletes.length)
        expect(deletes.sort()).toEqual([...shouldGo].sort())
        expect(deletesBefore).toBeLessThan(deletes.length)
        expect(yield* (yield* Journal).inFlight).toEqual([])
      }).pipe(Effect.provide(protectionLayer(sim, path)))
    })), 60_000)
})

describe("a hostile hub", () => {
  it.scoped("prototype keys, absurd numbers and minute schedules cannot delete beyond the policy in force", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const made: Made = []
        const inForce: Retention = { keep_daily: 7 }
        for (let d = 0; d < 9; d++) yield* record(made, sim, yield* nightly(d, desiredWith({ schedule: "02:00", retention: inForce })))
        // refused at decode: nothing can run on them
        const hostile = (policy: unknown) =>
          decodeDesiredState({ generation: 9, guests: guestsJson, storage: [{ ...usbTarget(undefined), policy }] })
        expect(Either.isLeft(hostile(JSON.parse("{\"schedule\":\"02:00\",\"retention\":{\"__proto__\":{\"keep_last\":1}}}")))).toBe(true)
        expect(Either.isLeft(hostile(JSON.parse("{\"__proto__\":{\"schedule\":\"*:*\"},\"schedule\":\"02:00\",\"retention\":{}}")))).toBe(true)
        expect(Either.isLeft(hostile({ schedule: "02:00", retention: { keep_last: 1e9 } }))).toBe(true)
        expect(Either.isLeft(hostile({ schedule: "02:00", retention: { keep_last: -1 } }))).toBe(true)
        expect(Either.isLeft(hostile({ schedule: "02:00", retention: { keep_last: 1.5 } }))).toBe(true)
        expect(Either.isLeft(hostile({ schedule: "02:00", retention: { keep_all: true, keep_last: 1 } }))).toBe(true)
        // accepted, but destructive: a backup every minute with keep_last 1 (the hub cannot sign)
        const storm = desiredWith({ schedule: "*:*", retention: { keep_last: 1 } })
        for (let i = 0; i < 30; i++) {
          yield* TestClock.adjust("1 minute")
          const r = yield* runFor(protectionPass(storm))
          yield* record(made, sim, r)
          expect(r.pending.map((p) => p.op)).toEqual(["retention-change"])
        }
        const store = yield* ProtectionStore
        expect(Option.getOrThrow(yield* store.retentionInForce(USB))).toMatchObject({ retention: inForce, basis: "manifest" })
        // what is left is exactly what the policy in force keeps of everything the agent made
        for (const vmid of [100, 101]) expect(yield* volids(sim, USB, vmid)).toEqual(kept(made, vmid, inForce))
        // a huge but valid retention grows: adopted, and deletes nothing
        const huge = yield* nightly(10, desiredWith({ schedule: "02:00", retention: { keep_last: 100_000, keep_yearly: 100_000 } }))
        expect(huge.adopted).toEqual(["usb1"])
        const before = (yield* sim.requests).filter((r) => r.method === "DELETE").length
        yield* nightly(11, desiredWith({ schedule: "02:00", retention: { keep_last: 100_000, keep_yearly: 100_000 } }))
        expect((yield* sim.requests).filter((r) => r.method === "DELETE").length).toBe(before)
      })), 120_000)
})
