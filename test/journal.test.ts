/**
 * Journal on real SQLite files: op lifecycle with steps and UPIDs, survival across a reopen (a
 * simulated restart), provenance, the idempotency store and runOnce, and the audit chain against
 * direct SQL tampering (hand-picked cases plus a property over random logs and tampers).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Data, Deferred, Effect, Exit, FastCheck as fc, Fiber, Layer, Option, TestClock } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { Journal, JournalLive } from "../src/layers/Journal.js"
import { auditHash, canonicalJson, GENESIS_HASH } from "../src/schema/journal.js"

const dbFile = () => join(mkdtempSync(join(tmpdir(), "felhom-journal-")), "state.db")

/** Journal plus the raw SqlClient (for tampering) on the file at `path`; closed when the effect ends. */
const journalAt = (path: string) => JournalLive.pipe(Layer.provideMerge(layerAt(path)))

const onDb = <A, E>(path: string, body: Effect.Effect<A, E, Journal | SqlClient.SqlClient>) =>
  body.pipe(Effect.provide(journalAt(path)))

class Boom extends Data.TaggedError("Boom")<{ readonly code: number }> {}

describe("Journal: ops and steps", () => {
  it.effect("lifecycle: begin, steps with data and UPIDs, finish; timestamps from the Clock", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      yield* TestClock.setTime(1_000)
      const op = yield* j.begin({ kind: "restore", vmid: 105, payload: { archive: "a.tar.zst", size: 8, nested: { b: 1, a: [1, 2] } } })
      expect(op).toMatchObject({ kind: "restore", vmid: 105, status: "in_flight", steps: [], detail: null, createdAtMs: 1_000, updatedAtMs: 1_000 })
      expect(op.id).toMatch(/^[0-9a-f-]{36}$/)

      yield* TestClock.setTime(2_000)
      yield* j.stepStarted(op.id, "restore", { storage: "local-lvm" })
      yield* j.recordUpid(op.id, "restore", "UPID:pve:1")
      yield* TestClock.setTime(3_000)
      yield* j.stepDone(op.id, "restore")
      yield* j.stepStarted(op.id, "start")
      yield* j.stepCompensated(op.id, "start")
      yield* TestClock.setTime(4_000)
      yield* j.finish(op.id, "rolled_back", "start failed; compensated")

      const got = Option.getOrThrow(yield* j.get(op.id))
      expect(got).toEqual({
        ...op,
        status: "rolled_back",
        detail: "start failed; compensated",
        updatedAtMs: 4_000,
        steps: [
          { name: "restore", status: "done", upid: "UPID:pve:1", data: { storage: "local-lvm" }, updatedAtMs: 3_000 },
          { name: "start", status: "compensated", upid: null, data: null, updatedAtMs: 3_000 }
        ]
      })
      expect(got.payload).toEqual({ archive: "a.tar.zst", size: 8, nested: { b: 1, a: [1, 2] } })
      expect(yield* j.inFlight).toEqual([])
      expect(yield* j.get("no-such-op")).toEqual(Option.none())
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("stepStarted again restarts the step: upid cleared, data kept unless replaced; stepDone replaces data", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      const op = yield* j.begin({ kind: "resize", vmid: 101, payload: null })
      yield* j.stepStarted(op.id, "resize", { size: "8G" })
      yield* j.recordUpid(op.id, "resize", "UPID:1")
      yield* j.stepStarted(op.id, "resize")
      const step = () => j.get(op.id).pipe(Effect.map((o) => Option.getOrThrow(o).steps))
      expect(yield* step()).toMatchObject([{ name: "resize", status: "started", upid: null, data: { size: "8G" } }])
      yield* j.recordUpid(op.id, "resize", "UPID:2")
      yield* j.stepDone(op.id, "resize", { took: 3 })
      expect(yield* step()).toMatchObject([{ name: "resize", status: "done", upid: "UPID:2", data: { took: 3 } }])
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("list is newest first, filters by status, honours limit; inFlight is oldest first", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      const ids: Array<string> = []
      for (let i = 0; i < 5; i++) ids.push((yield* j.begin({ id: `op-${i}`, kind: "k", vmid: i === 4 ? null : 100 + i, payload: i })).id)
      yield* j.finish("op-1", "done")
      yield* j.finish("op-3", "failed", "boom")
      expect((yield* j.list()).map((o) => o.id)).toEqual(["op-4", "op-3", "op-2", "op-1", "op-0"])
      expect((yield* j.list({ limit: 2 })).map((o) => o.id)).toEqual(["op-4", "op-3"])
      expect((yield* j.list({ status: "in_flight" })).map((o) => o.id)).toEqual(["op-4", "op-2", "op-0"])
      expect((yield* j.list({ status: "failed" })).map((o) => [o.id, o.detail])).toEqual([["op-3", "boom"]])
      expect((yield* j.list({ limit: 0 }))).toEqual([])
      expect((yield* j.inFlight).map((o) => o.id)).toEqual(["op-0", "op-2", "op-4"])
      expect((yield* j.get("op-4")).pipe(Option.map((o) => o.vmid))).toEqual(Option.some(null))
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("a reused op id, a step or finish for an unknown op, and a non-JSON payload are defects", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      yield* j.begin({ id: "x", kind: "k", vmid: null, payload: {} })
      const dies = (e: Effect.Effect<unknown, unknown>) => Effect.map(Effect.exit(e), (x) => Exit.isFailure(x) && Exit.causeOption(x).pipe(Option.exists((c) => c._tag === "Die")))
      // a reused id is refused by the store (a typed JournalError, never a second op)
      expect(Exit.isFailure(yield* Effect.exit(j.begin({ id: "x", kind: "k", vmid: null, payload: {} })))).toBe(true)
      expect(yield* dies(j.stepStarted("nope", "s"))).toBe(true)
      expect(yield* dies(j.recordUpid("nope", "s", "UPID:1"))).toBe(true)
      expect(yield* dies(j.finish("nope", "done"))).toBe(true)
      expect(yield* dies(j.begin({ kind: "k", vmid: null, payload: { n: 1n } }))).toBe(true)
      // nothing half-written by the failed step write
      const sql = yield* SqlClient.SqlClient
      expect(yield* sql`SELECT count(*) AS n FROM journal_steps`).toEqual([{ n: 0 }])
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("restart: an in-flight op and the UPID recorded before the wait survive a reopen", () =>
    Effect.gen(function*() {
      const path = dbFile()
      const [first, second] = yield* onDb(path, Effect.gen(function*() {
        const j = yield* Journal
        const a = yield* j.begin({ kind: "restore", vmid: 105, payload: { archive: "x" } })
        const b = yield* j.begin({ kind: "create", vmid: 106, payload: {} })
        const done = yield* j.begin({ kind: "start", vmid: 107, payload: {} })
        yield* j.stepStarted(a.id, "restore")
        yield* j.recordUpid(a.id, "restore", "UPID:pve:0000ABCD:restore")
        yield* j.finish(done.id, "done")
        return [a.id, b.id] as const
        // the layer closes here: the process "crashed" while waiting on the UPID
      }))
      const recovered = yield* onDb(path, Effect.flatMap(Journal, (j) => j.inFlight))
      expect(recovered.map((o) => o.id)).toEqual([first, second])
      expect(recovered[0]).toMatchObject({
        kind: "restore",
        vmid: 105,
        payload: { archive: "x" },
        steps: [{ name: "restore", status: "started", upid: "UPID:pve:0000ABCD:restore" }]
      })
    }))
})

describe("Journal: provenance", () => {
  it.effect("set, overwrite, get, clear; survives a reopen", () =>
    Effect.gen(function*() {
      const path = dbFile()
      yield* onDb(path, Effect.gen(function*() {
        const j = yield* Journal
        expect(yield* j.provenanceOf(105)).toEqual(Option.none())
        yield* j.recordProvenance(105, "same_transaction", "op-1")
        yield* j.recordProvenance(900, "scratch", "op-2")
        expect(yield* j.provenanceOf(105)).toEqual(Option.some({ kind: "same_transaction", opId: "op-1", marker: null }))
        yield* j.recordProvenance(105, "scratch", "op-3")
        expect(yield* j.provenanceOf(105)).toEqual(Option.some({ kind: "scratch", opId: "op-3", marker: null }))
      }))
      yield* onDb(path, Effect.gen(function*() {
        const j = yield* Journal
        expect(yield* j.provenanceOf(900)).toEqual(Option.some({ kind: "scratch", opId: "op-2", marker: null }))
        yield* j.clearProvenance(105)
        yield* j.clearProvenance(105) // idempotent
        expect(yield* j.provenanceOf(105)).toEqual(Option.none())
        expect(yield* j.provenanceOf(900)).toEqual(Option.some({ kind: "scratch", opId: "op-2", marker: null }))
      }))
    }))
})

describe("Journal: idempotency", () => {
  it.effect("claim is atomic and first-wins; complete records the outcome", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      expect(yield* j.idempotencyGet("k")).toEqual(Option.none())
      const claims = yield* Effect.all([j.idempotencyClaim("k"), j.idempotencyClaim("k"), j.idempotencyClaim("k")], { concurrency: "unbounded" })
      expect(claims.filter((c) => c)).toHaveLength(1)
      expect(yield* j.idempotencyGet("k")).toEqual(Option.some({ state: "running", outcome: null }))
      yield* j.idempotencyComplete("k", { vmid: 105, ok: true })
      expect(yield* j.idempotencyGet("k")).toEqual(Option.some({ state: "done", outcome: { ok: true, vmid: 105 } }))
      expect(yield* j.idempotencyClaim("k")).toBe(false)
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("runOnce runs once; a retry replays the outcome, also after a reopen", () =>
    Effect.gen(function*() {
      const path = dbFile()
      let runs = 0
      const job = Effect.sync(() => ++runs)
      const first = yield* onDb(path, Effect.flatMap(Journal, (j) => j.runOnce("nonce-1", job, (n) => ({ run: n }))))
      expect(first).toEqual({ replayed: false, value: 1 })
      const again = yield* onDb(path, Effect.flatMap(Journal, (j) => j.runOnce("nonce-1", job, (n) => ({ run: n }))))
      expect(again).toEqual({ replayed: true, outcome: { run: 1 }, interrupted: false })
      const other = yield* onDb(path, Effect.flatMap(Journal, (j) => j.runOnce("nonce-2", job, (n) => n)))
      expect(other).toEqual({ replayed: false, value: 2 })
      expect(runs).toBe(2)
    }))

  it.effect("a key left running by a crash never runs again, after a reopen", () =>
    Effect.gen(function*() {
      const path = dbFile()
      // crash between claim and complete: only the claim reached the disk
      yield* onDb(path, Effect.flatMap(Journal, (j) => j.idempotencyClaim("nonce-c")))
      let runs = 0
      const r = yield* onDb(path, Effect.flatMap(Journal, (j) => j.runOnce("nonce-c", Effect.sync(() => ++runs), (n) => n)))
      expect(r).toEqual({ replayed: true, outcome: null, interrupted: true })
      expect(runs).toBe(0)
    }))

  it.effect("an interrupted run leaves the key running: not re-run, in this process or after a reopen", () =>
    Effect.gen(function*() {
      const path = dbFile()
      let runs = 0
      const job = Effect.zipRight(Effect.sync(() => ++runs), Effect.sleep("1 hour"))
      yield* onDb(path, Effect.gen(function*() {
        const j = yield* Journal
        const fiber = yield* Effect.fork(j.runOnce("nonce-i", job, () => "done"))
        yield* TestClock.adjust("1 minute")
        yield* Fiber.interrupt(fiber)
        expect(yield* j.runOnce("nonce-i", job, () => "done")).toEqual({ replayed: true, outcome: null, interrupted: true })
      }))
      const r = yield* onDb(path, Effect.flatMap(Journal, (j) => j.runOnce("nonce-i", job, () => "done")))
      expect(r).toEqual({ replayed: true, outcome: null, interrupted: true })
      expect(runs).toBe(1)
    }))

  it.effect("a typed failure is re-raised once and recorded; retries replay it", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      let runs = 0
      const job = Effect.zipRight(Effect.sync(() => ++runs), Effect.fail(new Boom({ code: 7 })))
      const first = yield* Effect.flip(j.runOnce("nonce-f", job, () => null))
      expect(first).toEqual(new Boom({ code: 7 }))
      const again = yield* j.runOnce("nonce-f", job, () => null)
      expect(again).toMatchObject({ replayed: true, interrupted: false, outcome: { failed: true, error: { _tag: "Boom", code: 7 } } })
      expect(runs).toBe(1)
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("a defect leaves the key running (outcome unknown)", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      const exit = yield* Effect.exit(j.runOnce("nonce-d", Effect.dieMessage("bug"), () => null))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(yield* j.idempotencyGet("nonce-d")).toEqual(Option.some({ state: "running", outcome: null }))
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("concurrent calls with one key: one run, the others wait and replay its outcome", () =>
    Effect.gen(function*() {
      const j = yield* Journal
      let runs = 0
      const gate = yield* Deferred.make<void>()
      const job = Effect.zipRight(Effect.sync(() => ++runs), Effect.as(Deferred.await(gate), "restored"))
      const fibers = yield* Effect.forEach([1, 2, 3], () => Effect.fork(j.runOnce("nonce-x", job, (s) => ({ s }))))
      yield* Effect.yieldNow()
      yield* Deferred.succeed(gate, undefined)
      const results = yield* Effect.forEach(fibers, Fiber.join)
      expect(runs).toBe(1)
      expect(results.filter((r) => !r.replayed)).toEqual([{ replayed: false, value: "restored" }])
      expect(results.filter((r) => r.replayed)).toEqual([
        { replayed: true, outcome: { s: "restored" }, interrupted: false },
        { replayed: true, outcome: { s: "restored" }, interrupted: false }
      ])
    }).pipe(Effect.provide(journalAt(dbFile()))))
})

// ---------------------------------------------------------------------------------------------
// Audit

type Input = { actor: string; action: string; target: string | null; decision: string; detail: unknown }

const writeAll = (inputs: ReadonlyArray<Input>) => Effect.flatMap(Journal, (j) => Effect.forEach(inputs, (e) => j.audit(e)))

const sampleLog: ReadonlyArray<Input> = [
  { actor: "reconcile", action: "create", target: "105", decision: "allowed", detail: { reason: "desired" } },
  { actor: "job:restore-now", action: "restore_overwrite", target: "105", decision: "pending_signature", detail: null },
  { actor: "job:restore-now", action: "restore_overwrite", target: "105", decision: "signed_ok", detail: { signer: "alice", z: [1, { b: 2, a: 1 }] } },
  { actor: "recovery", action: "destroy", target: "106", decision: "allowed", detail: { reason: "compensating rollback" } },
  { actor: "agent", action: "start", target: null, decision: "allowed", detail: "boot" }
]

type Tamper =
  | { readonly kind: "edit"; readonly index: number; readonly field: Field }
  | { readonly kind: "delete"; readonly index: number }
  | { readonly kind: "deleteLast" }
  | { readonly kind: "swap"; readonly i: number; readonly j: number }

const FIELDS = ["seq", "at_ms", "actor", "action", "target", "decision", "detail", "detail_noncanonical", "prev_hash", "hash"] as const
type Field = typeof FIELDS[number]

const flipHex = (h: string) => (h[0] === "0" ? "1" : "0") + h.slice(1)

/** Applies one tamper with direct SQL; returns the seq verifyAudit must report. */
const tamper = (t: Tamper, n: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    type Row = { seq: number; at_ms: number; actor: string; action: string; target: string | null; decision: string; detail: string; prev_hash: string; hash: string }
    const row = (seq: number) => sql<Row>`SELECT * FROM audit_log WHERE seq = ${seq}`.pipe(Effect.map((r) => r[0]!))
    switch (t.kind) {
      case "edit": {
        const seq = (t.index % n) + 1
        const r = yield* row(seq)
        const set = {
          seq: sql`seq = ${1_000_000 + seq}`,
          at_ms: sql`at_ms = ${r.at_ms + 1}`,
          actor: sql`actor = ${r.actor + "x"}`,
          action: sql`action = ${r.action + "x"}`,
          target: sql`target = ${r.target === null ? "" : null}`,
          decision: sql`decision = ${r.decision === "allowed" ? "denied" : "allowed"}`,
          detail: sql`detail = ${canonicalJson({ tampered: r.detail })}`,
          // same JSON value, different bytes: still an edit of the stored entry
          detail_noncanonical: sql`detail = ${" " + r.detail}`,
          prev_hash: sql`prev_hash = ${flipHex(r.prev_hash)}`,
          hash: sql`hash = ${flipHex(r.hash)}`
        }[t.field]
        yield* sql`UPDATE audit_log SET ${set} WHERE seq = ${seq}`
        return seq
      }
      case "delete": {
        const seq = (t.index % n) + 1
        yield* sql`DELETE FROM audit_log WHERE seq = ${seq}`
        return seq
      }
      case "deleteLast": {
        yield* sql`DELETE FROM audit_log WHERE seq = ${n}`
        return n
      }
      case "swap": {
        const [a, b] = [(t.i % n) + 1, (t.j % n) + 1].sort((x, y) => x - y) as [number, number]
        const ra = yield* row(a)
        const rb = yield* row(b)
        const put = (seq: number, r: Row) =>
          sql`UPDATE audit_log SET at_ms = ${r.at_ms}, actor = ${r.actor}, action = ${r.action}, target = ${r.target},
              decision = ${r.decision}, detail = ${r.detail}, prev_hash = ${r.prev_hash}, hash = ${r.hash} WHERE seq = ${seq}`
        yield* put(a, rb)
        yield* put(b, ra)
        return a
      }
    }
  })

const verify = Effect.flatMap(Journal, (j) => j.verifyAudit)

describe("Journal: audit log", () => {
  it.effect("entries chain from the genesis hash over canonical content; tail is oldest→newest", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(42)
      const entries = yield* writeAll(sampleLog)
      expect(entries.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5])
      expect(entries[0]!.prevHash).toBe(GENESIS_HASH)
      for (const [i, e] of entries.entries()) {
        expect(e.atMs).toBe(42)
        if (i > 0) expect(e.prevHash).toBe(entries[i - 1]!.hash)
        expect(e.hash).toBe(auditHash(e))
        expect(e.hash).toMatch(/^[0-9a-f]{64}$/)
      }
      // key order of the detail does not matter to the hash
      const reordered = { ...entries[2]!, detail: { z: [1, { a: 1, b: 2 }], signer: "alice" } }
      expect(auditHash(reordered)).toBe(entries[2]!.hash)
      const j = yield* Journal
      expect(yield* j.auditTail(2)).toEqual(entries.slice(3))
      expect(yield* j.auditTail(100)).toEqual(entries)
      expect(yield* j.auditTail(0)).toEqual([])
      expect(yield* j.verifyAudit).toEqual({ ok: true, entries: 5 })
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("an empty log verifies; the chain continues across a reopen", () =>
    Effect.gen(function*() {
      const path = dbFile()
      expect(yield* onDb(path, verify)).toEqual({ ok: true, entries: 0 })
      yield* onDb(path, writeAll(sampleLog.slice(0, 2)))
      const more = yield* onDb(path, writeAll(sampleLog.slice(2)))
      expect(more[0]!.seq).toBe(3)
      expect(yield* onDb(path, verify)).toEqual({ ok: true, entries: 5 })
    }))

  const tamperCases: ReadonlyArray<[string, Tamper, number]> = [
    ...FIELDS.flatMap((field) =>
      [0, 2, 4].map((index): [string, Tamper, number] => [`edit ${field} of entry ${index + 1}`, { kind: "edit", index, field }, index + 1])
    ),
    ["delete a middle entry", { kind: "delete", index: 2 }, 3],
    ["delete the first entry", { kind: "delete", index: 0 }, 1],
    ["delete the last entry", { kind: "deleteLast" }, 5],
    ["swap two entries", { kind: "swap", i: 1, j: 3 }, 2],
    ["swap two adjacent entries", { kind: "swap", i: 3, j: 4 }, 4]
  ]

  it.effect.each(tamperCases)("detected: %s", ([, t, expectedSeq]) =>
    Effect.gen(function*() {
      yield* writeAll(sampleLog)
      expect(yield* tamper(t, sampleLog.length)).toBe(expectedSeq)
      const verdict = yield* verify
      expect(verdict).toMatchObject({ ok: false, brokenAtSeq: expectedSeq, entries: expectedSeq - 1 })
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("deleting the newest entries, then appending, still shows the gap", () =>
    Effect.gen(function*() {
      yield* writeAll(sampleLog)
      const sql = yield* SqlClient.SqlClient
      yield* sql`DELETE FROM audit_log WHERE seq >= 4`
      expect(yield* verify).toMatchObject({ ok: false, brokenAtSeq: 4 })
      const [next] = yield* writeAll(sampleLog.slice(0, 1))
      expect(next!.seq).toBe(6)
      expect(yield* verify).toMatchObject({ ok: false, brokenAtSeq: 4, reason: "entry 4 is missing" })
    }).pipe(Effect.provide(journalAt(dbFile()))))

  it.effect("wiping the log's sequence record is detected", () =>
    Effect.gen(function*() {
      yield* writeAll(sampleLog)
      const sql = yield* SqlClient.SqlClient
      yield* sql`DELETE FROM audit_log WHERE seq = 5`
      yield* sql`DELETE FROM sqlite_sequence WHERE name = 'audit_log'`
      expect(yield* verify).toMatchObject({ ok: false, brokenAtSeq: 5 })
    }).pipe(Effect.provide(journalAt(dbFile()))))

  const inputArb: fc.Arbitrary<Input> = fc.record({
    actor: fc.string({ maxLength: 12 }),
    action: fc.string({ maxLength: 12 }),
    target: fc.option(fc.string({ maxLength: 8 }), { nil: null }),
    decision: fc.constantFrom("allowed", "pending_signature", "signed_ok", "binding_mismatch", "denied"),
    detail: fc.jsonValue({ maxDepth: 3 })
  })
  const index = fc.nat({ max: 1_000 })
  const tamperArb: fc.Arbitrary<Tamper> = fc.oneof(
    fc.record({ kind: fc.constant("edit" as const), index, field: fc.constantFrom(...FIELDS) }),
    fc.record({ kind: fc.constant("delete" as const), index }),
    fc.constant({ kind: "deleteLast" as const }),
    fc.record({ kind: fc.constant("swap" as const), i: index, j: index })
  )

  it.effect.prop(
    "any single tamper of a random log is detected at the tampered seq; untouched logs verify",
    { inputs: fc.array(inputArb, { minLength: 1, maxLength: 10 }), t: tamperArb, gaps: fc.array(fc.nat({ max: 5_000 }), { maxLength: 10 }) },
    ({ inputs, t, gaps }) =>
      Effect.gen(function*() {
        const j = yield* Journal
        for (const [i, input] of inputs.entries()) {
          yield* TestClock.adjust(gaps[i] ?? 0)
          yield* j.audit(input)
        }
        expect(yield* j.verifyAudit).toEqual({ ok: true, entries: inputs.length })
        const n = inputs.length
        // a swap needs two distinct entries; otherwise edit the entry instead
        const applied: Tamper = t.kind === "swap" && (t.i % n) === (t.j % n) ? { kind: "edit", index: t.i, field: "actor" } : t
        const expectedSeq = yield* tamper(applied, n)
        const verdict = yield* j.verifyAudit
        expect(verdict).toMatchObject({ ok: false, brokenAtSeq: expectedSeq })
      }).pipe(Effect.provide(journalAt(":memory:"))),
    { fastCheck: { numRuns: 50 } }
  )
})
