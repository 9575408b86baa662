/**
 * Property (issue 8, "Tests that must exist"): random fault schedules over a converge never leave
 * a guest destroyed, recreated blank, or half-built, and no PVE task runs twice for one op.
 *
 * One run: a desired state that creates guests (golden restore → resize → configure → seal →
 * untag → start), grows and reconfigures existing ones, starts or stops them and drops one (an
 * unsigned destroy: pending_signature). It is converged over several passes, each one a fresh
 * agent (new layers on the same SQLite file, `recover` first, as after a restart) with the
 * simulator's faults switched on or off: 5xx/595/596 (a 596 on a write lands), lock conflicts,
 * task failures (by rate and by type), latency. A pass may crash at a random journal write,
 * either right after it committed (kill -9) or instead of it (SQLITE_BUSY: the write is lost and
 * the process dies). Between passes the host keeps running for a while. Then faults stop and a
 * last restart converges.
 *
 * Checked against the simulator's request log and task list (what PVE saw), the journal as
 * recorded through a wrapper that marks, in request-log time, when each op began and ended:
 * - never destroyed: no destroy of a guest that existed at the start (no signature is ever
 *   offered); a destroy of a guest the agent created only inside that create op, before its seal;
 * - never recreated blank: no restore/create into a vmid that existed at the start, and none into
 *   a vmid after the create op that sealed a guest there began (other than that op's own);
 * - never half-built: after the last pass nothing is in flight, no guest exists that was neither
 *   there nor desired, and every desired guest is at its spec (hostname, cores, memory, swap,
 *   rootfs, description, tags without the instance marker, power, no lock) with no action left in
 *   the plan, or is reported held (a needs_operator op) or lost in the plan's notes;
 * - journaled: every mutating call PVE received falls inside exactly one op's window on its
 *   guest, and ops on one guest never overlap;
 * - no task twice for one op: per op and task type, every task but the last failed; every UPID
 *   the journal recorded is a task PVE started inside that op's window, recorded once.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, type Exit, FastCheck as fc, Fiber, Layer, Option, TestClock } from "effect"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { fromJournal, Journal, type JournalOp, type JournalShape, JournalLive } from "../src/layers/Journal.js"
import { executePlan, planNow } from "../src/programs/control/apply.js"
import { recover } from "../src/programs/control/recover.js"
import { decodeDesiredState, type DesiredState } from "../src/schema/desired.js"
import { makeSimPve, type SimPve, type SimPveFaults } from "../src/sim/pve/index.js"
import { agentLayer, authzLayer, dbFile, registerGolden, settle } from "./engine-support.js"
import { requestVmid } from "./sim-calls.js"
import { inProcessProxmox, seedWith } from "./support.js"

const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
const INITIAL = [100, 101, 102] as const
const MiB = 1024 * 1024

const fcParams = {
  numRuns: Number(process.env["PROP_RUNS"] ?? 8),
  // A fixed seed by default, so CI is reproducible (two random seeds found real bugs, now
  // regression tests below); PROP_SEED=random, or any number, explores further by hand.
  ...(process.env["PROP_SEED"] === "random" ? {} : { seed: Number(process.env["PROP_SEED"] ?? 20261130) }),
  interruptAfterTimeLimit: 150_000,
  markInterruptAsFailure: true
}

// ---------------------------------------------------------------------------------------------
// The desired state

interface NewGuest {
  readonly vmid: 110 | 111 | 112
  readonly rootfs: number
  readonly memMiB: number
  readonly power: "running" | "stopped"
  readonly tags: ReadonlyArray<string>
}

interface DesiredModel {
  readonly g100: { readonly rootfs: number; readonly memMiB: number; readonly cores: number; readonly power: "running" | "stopped" }
  readonly g101: { readonly memMiB: number; readonly power: "running" | "stopped" }
  readonly keep102: boolean
  readonly news: ReadonlyArray<NewGuest>
}

const power = fc.constantFrom("running" as const, "stopped" as const)

const desiredArb: fc.Arbitrary<DesiredModel> = fc.record({
  g100: fc.record({ rootfs: fc.constantFrom(16, 20, 32), memMiB: fc.constantFrom(2048, 4096), cores: fc.constantFrom(2, 4), power }),
  g101: fc.record({ memMiB: fc.constantFrom(1024, 2048), power }),
  keep102: fc.boolean(),
  news: fc.uniqueArray(
    fc.record({
      vmid: fc.constantFrom(110 as const, 111 as const, 112 as const),
      rootfs: fc.constantFrom(4, 8, 16),
      memMiB: fc.constantFrom(512, 1024),
      power,
      tags: fc.constantFrom<ReadonlyArray<string>>([], ["customer", "felhom"])
    }),
    { minLength: 1, maxLength: 3, selector: (g) => g.vmid }
  )
})

const desiredOf = (m: DesiredModel): DesiredState =>
  Either.getOrThrow(decodeDesiredState({
    generation: 1,
    provisioning: { golden_archive: GOLDEN, storage: "local-lvm" },
    guests: [
      {
        vmid: 100,
        hostname: "cust-alpha",
        cores: m.g100.cores,
        memory_bytes: m.g100.memMiB * MiB,
        swap_mib: 512,
        rootfs_gib: m.g100.rootfs,
        power: m.g100.power,
        description: "felhom customer guest alpha",
        tags: ["customer", "felhom"]
      },
      {
        vmid: 101,
        hostname: "cust-beta",
        cores: 1,
        memory_bytes: m.g101.memMiB * MiB,
        swap_mib: 512,
        rootfs_gib: 8,
        power: m.g101.power,
        description: "",
        tags: ["customer", "felhom"]
      },
      ...(m.keep102
        ? [{ vmid: 102, hostname: "ops-tools", memory_bytes: 512 * MiB, swap_mib: 256, rootfs_gib: 4, power: "stopped", description: "", tags: [] }]
        : []),
      ...m.news.map((g) => ({
        vmid: g.vmid,
        hostname: `cust-${g.vmid}`,
        cores: 2,
        memory_bytes: g.memMiB * MiB,
        swap_mib: 512,
        rootfs_gib: g.rootfs,
        power: g.power,
        description: `felhom customer guest ${g.vmid}`,
        tags: [...g.tags]
      }))
    ]
  }))

// ---------------------------------------------------------------------------------------------
// Fault schedules

type Faults = Omit<SimPveFaults, "echo_headers" | "task_warning_types">

const NO_FAULTS: Faults = {
  seed: 1,
  http_error_rate: 0,
  http_error_statuses: [500, 595, 596],
  latency_ms: 0,
  task_failure_rate: 0,
  task_failure_types: [],
  lock_conflict_rate: 0
}

const faultsArb: fc.Arbitrary<Faults> = fc.record({
  seed: fc.integer({ min: 1, max: 1_000_000 }),
  http_error_rate: fc.constantFrom(0, 0.1, 0.2, 0.4),
  // 596 most: on a write the change lands and the client only sees the error
  http_error_statuses: fc.oneof(fc.constant([596] as const), fc.subarray([500, 595, 596] as const, { minLength: 1 })),
  latency_ms: fc.oneof(fc.constant(0), fc.record({ min: fc.constant(0), max: fc.constantFrom(500, 2500) })),
  task_failure_rate: fc.constantFrom(0, 0.1, 0.3),
  task_failure_types: fc.oneof(
    { weight: 4, arbitrary: fc.constant([]) },
    { weight: 1, arbitrary: fc.subarray(["vzrestore", "resize", "vzstart", "vzstop", "vzdestroy"], { minLength: 1, maxLength: 2 }) }
  ),
  lock_conflict_rate: fc.constantFrom(0, 0.1, 0.3)
})

interface Crash {
  /** the n-th journal write of the pass */
  readonly at: number
  /** after: killed right after the write committed; busy: the write fails (SQLITE_BUSY) and the process dies */
  readonly mode: "after" | "busy"
}

interface Pass {
  readonly faults: Option.Option<Faults>
  readonly crash: Option.Option<Crash>
  /** simulated seconds the host runs on after the pass (tasks continue; the agent is down) */
  readonly downtimeS: number
}

const passArb: fc.Arbitrary<Pass> = fc.record({
  faults: fc.oneof({ weight: 4, arbitrary: faultsArb.map(Option.some) }, { weight: 1, arbitrary: fc.constant(Option.none<Faults>()) }),
  crash: fc.oneof(
    { weight: 1, arbitrary: fc.constant(Option.none<Crash>()) },
    { weight: 1, arbitrary: fc.record({ at: fc.integer({ min: 1, max: 60 }), mode: fc.constantFrom("after" as const, "busy" as const) }).map(Option.some) }
  ),
  downtimeS: fc.constantFrom(0, 2, 10, 60)
})

// ---------------------------------------------------------------------------------------------
// The journal, instrumented: op windows in request-log time, and the crash

interface Window {
  readonly id: string
  readonly kind: string
  readonly vmid: number | null
  readonly startSeq: number
  endSeq: number | null
}

interface Recorder {
  readonly windows: Map<string, Window>
  writes: number
  crash: Option.Option<Crash>
  /** the process is dead: every further journal call hangs until the pass is interrupted */
  dead: boolean
  crashes: number
}

const WRITES = [
  "begin",
  "admit",
  "stepStarted",
  "recordUpid",
  "stepDone",
  "stepCompensated",
  "finish",
  "recordProvenance",
  "clearProvenance",
  "markCustomer",
  "markLost",
  "forgetGuest",
  "registerGolden",
  "idempotencyClaim",
  "idempotencyComplete",
  "audit"
] as const

const instrumented = (sim: SimPve, rec: Recorder) =>
  Layer.effect(
    Journal,
    Effect.map(Journal, (real): JournalShape => {
      const out: Record<string, unknown> = { ...real }
      for (const name of Object.keys(real)) {
        const f = (real as unknown as Record<string, unknown>)[name]
        if (typeof f !== "function") {
          // reads that are effects (inFlight, guestRecords, ...): hang once the process is dead
          out[name] = Effect.suspend(() => (rec.dead ? Effect.never : (f as Effect.Effect<unknown>)))
          continue
        }
        const isWrite = (WRITES as ReadonlyArray<string>).includes(name)
        out[name] = (...args: Array<unknown>) =>
          Effect.gen(function*() {
            if (rec.dead) return yield* Effect.never
            if (!isWrite) return yield* (f as (...a: Array<unknown>) => Effect.Effect<unknown, unknown>)(...args)
            const n = ++rec.writes
            const crashHere = Option.isSome(rec.crash) && rec.crash.value.at === n
            if (crashHere && rec.crash.pipe(Option.exists((c) => c.mode === "busy"))) {
              rec.dead = true
              rec.crashes++
              return yield* Effect.die(new Error("SQLITE_BUSY: database is locked (injected)"))
            }
            const seq = yield* sim.requestSeq
            const result = yield* (f as (...a: Array<unknown>) => Effect.Effect<unknown, unknown>)(...args)
            if ((name === "begin" || name === "admit") && typeof result === "object" && result !== null) {
              const op = result as JournalOp
              rec.windows.set(op.id, { id: op.id, kind: op.kind, vmid: op.vmid, startSeq: seq, endSeq: null })
            }
            if (name === "finish") {
              const w = rec.windows.get(String(args[0]))
              if (w !== undefined) w.endSeq = seq
            }
            if (crashHere) {
              rec.dead = true
              rec.crashes++
              return yield* Effect.interrupt
            }
            return result
          })
      }
      return out as unknown as JournalShape
    })
  )

/** A fresh agent process on the same state file. */
const agent = (sim: SimPve, path: string, rec: Recorder) => {
  const db = layerAt(path)
  // the wrapped journal serves every store service (op log, guest records, idempotency, audit)
  const journal = Layer.provideMerge(fromJournal, instrumented(sim, rec).pipe(Layer.provide(JournalLive.pipe(Layer.provide(db)))))
  return Layer.mergeAll(inProcessProxmox(sim, { node: "pve" }), journal, authzLayer().pipe(Layer.provide(db)), GuestQueue.layer(4)).pipe(Layer.orDie)
}

/** Runs a pass to its end, or until the process "dies" or `maxSeconds` of host time pass. */
const runPass = <A, E, R>(eff: Effect.Effect<A, E, R>, rec: Recorder, maxSeconds: number) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(eff)
    let timedOut = true
    for (let i = 0; i < maxSeconds * 2; i++) {
      yield* settle
      if (fiber.unsafePoll() !== null) {
        timedOut = false
        break
      }
      if (rec.dead) break
      yield* TestClock.adjust("500 millis")
    }
    if (fiber.unsafePoll() === null) yield* Fiber.interrupt(fiber)
    const exit: Exit.Exit<A, E> = yield* Fiber.await(fiber)
    return { exit, timedOut: timedOut && !rec.dead }
  })

const hostRuns = (seconds: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < seconds * 2; i++) {
      yield* settle
      yield* TestClock.adjust("500 millis")
    }
    yield* settle
  })

const converge = (desired: DesiredState) =>
  Effect.gen(function*() {
    const recovered = yield* recover
    const p = yield* planNow(desired)
    const outcomes = yield* executePlan(p)
    return { recovered, plan: p, outcomes }
  })

// ---------------------------------------------------------------------------------------------
// Checks

const stats: Record<string, number> = {}
const count = (k: string, n = 1) => void (stats[k] = (stats[k] ?? 0) + n)
afterAll(() => {
  if (process.env["PROP_STATS"] !== undefined) console.log(JSON.stringify(stats, null, 1))
})

const rootfsGib = (rootfs: unknown): number | null => {
  const m = /size=(\d+)G/.exec(String(rootfs ?? ""))
  return m === null ? null : Number(m[1])
}

const normTags = (t: unknown) => [...new Set(String(t ?? "").split(/[;,\s]+/).filter((x) => x !== "").map((x) => x.toLowerCase()))].sort()

/** Differences between a guest in the simulator and its desired spec (empty: at spec). */
const specDiff = (g: { status: string; lock: string | undefined; config: Readonly<Record<string, unknown>> }, d: DesiredState["guests"][number]) => {
  const c = g.config
  const diff: Array<string> = []
  const eq = (what: string, actual: unknown, want: unknown) => {
    if (JSON.stringify(actual) !== JSON.stringify(want)) diff.push(`${what}: ${JSON.stringify(actual)} ≠ ${JSON.stringify(want)}`)
  }
  eq("hostname", c["hostname"], d.hostname)
  if (d.cores !== undefined) eq("cores", c["cores"], d.cores)
  eq("memory", c["memory"], Math.ceil(d.memory_bytes / MiB))
  eq("swap", c["swap"], d.swap_mib)
  eq("rootfs", rootfsGib(c["rootfs"]), d.rootfs_gib)
  eq("description", String(c["description"] ?? "").trimEnd(), d.description)
  eq("tags", normTags(c["tags"]), [...new Set(d.tags)].sort())
  eq("power", g.status, d.power)
  eq("lock", g.lock ?? null, null)
  return diff
}

const taskType = (upid: string) => upid.split(":")[5] ?? "?"

describe("found by the fault property (fixed; regression tests)", () => {
  // BUG: src/programs/control/steps.ts retries a lock conflict on a cleared destroy with
  // `retryLocked(pve.destroy(vmid, opts, clearance))`: the first attempt redeems the single-use
  // clearance before the request, so every retry is `ClearanceRefused: clearance already used`
  // and nothing is sent. A transient `CT is locked` (a backup, another task) on the compensating
  // destroy of a half-built guest therefore ends the create needs_operator instead of rolled
  // back; the same pattern in decommissionSteps fails a signed decommission on any lock
  // conflict. Fails safe (nothing destroyed), but a half-built guest is left for an operator.
  it.scoped("a transient lock conflict on the compensating destroy is retried and the half-built guest removed", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ task_durations_ms: { vzrestore: 3000 } }))
      const path = dbFile()
      const desired = desiredOf({
        g100: { rootfs: 16, memMiB: 2048, cores: 2, power: "running" },
        g101: { memMiB: 1024, power: "stopped" },
        keep102: true,
        news: [{ vmid: 110, rootfs: 8, memMiB: 512, power: "running", tags: [] }]
      })
      const outcome = yield* Effect.gen(function*() {
        yield* registerGolden
        const p = yield* planNow(desired)
        // every guest write is refused `CT is locked (backup)` (the restore POST is not a guest
        // write): the resize fails, then the compensating destroy meets the lock once
        yield* sim.setFaults({ lock_conflict_rate: 1, seed: 7 })
        const fiber = yield* Effect.fork(executePlan({ ...p, actions: p.actions.filter((a) => a.vmid === 110) }))
        for (let i = 0; i < 600 && fiber.unsafePoll() === null; i++) {
          yield* settle
          if ((yield* sim.requests).some((r) => r.method === "DELETE")) yield* sim.setFaults({ lock_conflict_rate: 0 })
          yield* TestClock.adjust("500 millis")
        }
        yield* Fiber.join(fiber)
        const journal = yield* Journal
        return (yield* journal.list({ limit: 10 })).find((o) => o.kind === "create")
      }).pipe(Effect.provide(agentLayer(sim, path)))
      expect(outcome?.detail ?? "").not.toContain("clearance already used")
      expect(outcome?.status).toBe("rolled_back")
      expect(Option.isNone(yield* sim.guest(110))).toBe(true)
    }))
})

/** The property's body: one generated desired state and fault schedule, converged and checked. */
const convergesUnderFaults = ({ desiredModel, passes }: { readonly desiredModel: DesiredModel; readonly passes: ReadonlyArray<Pass> }) =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({
        task_durations_ms: { vzrestore: 3000, vzdump: 2000, vzstart: 1000, vzstop: 1000, vzdestroy: 1000, resize: 1000 }
      }))
      const path = dbFile()
      const desired = desiredOf(desiredModel)
      const rec: Recorder = { windows: new Map(), writes: 0, crash: Option.none(), dead: false, crashes: 0 }
      const log: Array<string> = []
      // the operator registered the golden archive (a signed golden-register) before all this
      yield* runPass(registerGolden.pipe(Effect.provide(agent(sim, path, rec))), rec, 10)

      for (const [i, pass] of passes.entries()) {
        yield* sim.setFaults(Option.getOrElse(pass.faults, () => NO_FAULTS))
        rec.writes = 0
        rec.dead = false
        rec.crash = pass.crash
        const r = yield* runPass(converge(desired).pipe(Effect.provide(agent(sim, path, rec))), rec, 900)
        log.push(`pass ${i}: ${r.exit._tag}${rec.dead ? " (crashed)" : ""}${r.timedOut ? " (timed out)" : ""}${
          r.exit._tag === "Success" ? ` ${r.exit.value.outcomes.map((o) => `${o.action}:${o.vmid}=${o.result}`).join(" ")}` : ""
        }`)
        count(rec.dead ? "pass:crashed" : r.timedOut ? "pass:timed_out" : `pass:${r.exit._tag}`)
        yield* hostRuns(pass.downtimeS)
      }

      // faults stop; one last restart converges
      yield* sim.setFaults(NO_FAULTS)
      rec.writes = 0
      rec.dead = false
      rec.crash = Option.none()
      const last = yield* runPass(
        Effect.gen(function*() {
          const c = yield* converge(desired)
          const journal = yield* Journal
          // what is left to do after the pass, as the next one would see it
          const after = yield* planNow(desired)
          return { ...c, after, inFlight: yield* journal.inFlight, ops: yield* journal.list({ limit: 100_000 }), records: yield* journal.guestRecords }
        }).pipe(Effect.provide(agent(sim, path, rec))),
        rec,
        3600
      )
      const context = () => `desired: ${JSON.stringify(desiredModel)}\n${log.join("\n")}`
      if (last.exit._tag !== "Success") expect.fail(`the final pass did not complete: ${String(last.exit)}\n${context()}`)
      const { after, inFlight, ops, outcomes, records } = last.exit.value
      log.push(`final: ${outcomes.map((o) => `${o.action}:${o.vmid}=${o.result}${o.result === "failed" ? `(${o.reason.slice(0, 160)})` : ""}`).join(" ")}`)
      log.push(`after: actions ${after.actions.map((a) => `${a.kind}:${a.vmid}`).join(" ")}; notes ${after.notes.map((n) => `${n.reason}:${n.vmid}`).join(" ")}`)

      // nothing left in flight
      expect(inFlight.map((o) => `${o.kind}:${o.vmid}`), context()).toEqual([])

      const guests = new Map((yield* sim.guests).map((g) => [g.vmid, g]))
      const requests = yield* sim.requests
      const tasks = new Map((yield* sim.tasks).map((t) => [t.upid, t]))
      const wanted = new Map(desired.guests.map((g) => [g.vmid as number, g]))
      const windows = [...rec.windows.values()]
      const opById = new Map(ops.map((o) => [o.id, o]))

      // never destroyed: every guest there at the start is still there (no signature was offered)
      for (const v of INITIAL) expect(guests.has(v), `guest ${v} was destroyed\n${context()}`).toBe(true)
      // no stray guest
      for (const v of guests.keys()) {
        expect((INITIAL as ReadonlyArray<number>).includes(v) || wanted.has(v), `guest ${v} is neither initial nor desired\n${context()}`).toBe(true)
      }

      // every mutating call inside exactly one op window on its guest
      const windowsOf = (vmid: number | null, seq: number) =>
        windows.filter((w) => w.vmid === vmid && w.startSeq < seq && (w.endSeq === null || seq <= w.endSeq))
      for (const r of requests) {
        if (r.method === "GET") continue
        const vmid = requestVmid(r)
        const ws = windowsOf(vmid, r.seq)
        expect(ws.map((w) => w.kind), `#${r.seq} ${r.method} ${r.path} ${JSON.stringify(r.params)} is not inside exactly one op\n${context()}`)
          .toHaveLength(1)
      }
      // ops on one guest never overlap
      for (const a of windows) {
        for (const b of windows) {
          if (a === b || a.vmid !== b.vmid || a.vmid === null) continue
          const overlap = a.startSeq < b.startSeq && (a.endSeq === null || b.startSeq < a.endSeq)
          expect(overlap, `ops ${a.kind} ${a.id} and ${b.kind} ${b.id} on ${a.vmid} overlap\n${context()}`).toBe(false)
        }
      }

      const mutations = requests.filter((r) => r.method !== "GET")
      for (const r of mutations) if (r.status === 596 && r.handled) count(`596_landed:${r.upid === undefined ? r.path.replace(/\d+/g, "N") : taskType(r.upid)}`)
      const inWindow = (w: Window) => mutations.filter((r) => requestVmid(r) === w.vmid && w.startSeq < r.seq && (w.endSeq === null || r.seq <= w.endSeq))
      const sealedCreate = (opId: string) => opById.get(opId)?.steps.some((s) => s.name === "seal" && s.status === "done") === true

      // destroys: never of an initial guest; of a created guest only by its own create op before the seal
      for (const r of mutations.filter((x) => x.method === "DELETE" && /^\/nodes\/[^/]+\/lxc\/\d+$/.test(x.path))) {
        const vmid = requestVmid(r)!
        expect((INITIAL as ReadonlyArray<number>).includes(vmid), `destroy of initial guest ${vmid} (#${r.seq})\n${context()}`).toBe(false)
        const [w] = windowsOf(vmid, r.seq)
        expect(w?.kind, `destroy of ${vmid} (#${r.seq}) outside a create op\n${context()}`).toBe("create")
        expect(sealedCreate(w!.id), `destroy of ${vmid} (#${r.seq}) by create ${w!.id} that sealed it\n${context()}`).toBe(false)
        count("destroy:compensation")
      }

      // never recreated blank
      const restores = mutations.filter((x) => x.method === "POST" && /^\/nodes\/[^/]+\/lxc$/.test(x.path))
      for (const r of restores) {
        const vmid = Number(r.params["vmid"])
        expect((INITIAL as ReadonlyArray<number>).includes(vmid), `restore/create into initial guest ${vmid} (#${r.seq})\n${context()}`).toBe(false)
      }
      for (const v of wanted.keys()) {
        const sealed = windows.filter((w) => w.vmid === v && w.kind === "create" && sealedCreate(w.id))
        expect(sealed.length, `guest ${v} sealed by more than one create\n${context()}`).toBeLessThanOrEqual(1)
        if (sealed.length === 1) {
          const later = restores.filter((r) => Number(r.params["vmid"]) === v && r.seq > sealed[0]!.startSeq)
          expect(later.map((r) => r.seq), `guest ${v} restored again after its create sealed it\n${context()}`).toHaveLength(1)
        }
        count(`restores_per_guest:${restores.filter((r) => Number(r.params["vmid"]) === v).length}`)
      }

      // no task twice for one op; the journal's UPIDs are PVE's tasks of that op, each recorded once
      const seen = new Map<string, string>()
      for (const w of windows) {
        const started = inWindow(w).filter((r) => r.upid !== undefined)
        const byType = new Map<string, Array<string>>()
        for (const r of started) byType.set(taskType(r.upid!), [...(byType.get(taskType(r.upid!)) ?? []), r.upid!])
        for (const [type, upids] of byType) {
          const earlier = upids.slice(0, -1).map((u) => tasks.get(u)!)
          const ok = earlier.filter((t) => t.status !== "stopped" || t.exitstatus === "OK")
          expect(ok.map((t) => t.upid), `op ${w.kind} ${w.id} ran ${type} again after it ran\n${context()}`).toEqual([])
          if (upids.length > 1) count(`task_retried_in_op:${type}`)
        }
        const op = opById.get(w.id)
        for (const s of op?.steps ?? []) {
          if (s.upid === null) continue
          expect(started.map((r) => r.upid), `op ${w.id} step ${s.name} recorded ${s.upid}, not a task of that op\n${context()}`).toContain(s.upid)
          expect(seen.get(s.upid), `UPID ${s.upid} recorded twice`).toBeUndefined()
          seen.set(s.upid, `${w.id}:${s.name}`)
        }
        count(`orphan_tasks:${started.filter((r) => !(op?.steps ?? []).some((s) => s.upid === r.upid)).length > 0}`)
      }

      // never half-built: every desired guest at its spec with nothing left to do, or reported held/lost
      const held = new Set(ops.filter((o) => o.status === "needs_operator").map((o) => o.vmid))
      const lost = new Set(records.filter((r) => r.state === "lost").map((r) => r.vmid))
      for (const [v, d] of wanted) {
        const note = after.notes.find((n) => n.vmid === v && (n.reason === "held" || n.reason === "lost"))
        if (note !== undefined) {
          expect(note.reason === "held" ? held.has(v) : lost.has(v), `${v} noted ${note.reason} without a journal record\n${context()}`).toBe(true)
          count(`final:${note.reason}`)
          for (const o of ops.filter((x) => x.vmid === v && x.status === "needs_operator")) {
            count(`held_because:${(o.detail ?? "").replace(/UPID:[^ )]*/g, "UPID").replace(/\d{3}/g, "N").slice(0, 220)}`)
          }
          continue
        }
        const g = guests.get(v)
        expect(g, `desired guest ${v} is missing and not reported\n${context()}`).toBeDefined()
        expect(specDiff(g!, d), `guest ${v} is not at its spec\n${context()}`).toEqual([])
        expect(after.actions.filter((a) => a.vmid === v).map((a) => a.kind), `${v} still has actions\n${context()}`).toEqual([])
        count("final:at_spec")
      }
      // what is not desired is only ever pending a signature
      expect(after.actions.filter((a) => !wanted.has(a.vmid)).map((a) => a.kind).every((k) => k === "destroy"), context()).toBe(true)
      count(`crashes:${rec.crashes}`)
    })

describe("property: random fault schedules over a converge", () => {
  const arbs = { desiredModel: desiredArb, passes: fc.array(passArb, { minLength: 1, maxLength: 4 }) }
  it.scoped.prop(
    "never leave a guest destroyed, recreated blank or half-built; every PVE mutation journaled, no task twice for one op",
    arbs,
    convergesUnderFaults,
    { timeout: 300_000, fastCheck: fcParams }
  )
  // Found by this property (issue 11's CI run): a 596 on the compensating destroy of a half-built
  // guest, whose DELETE had landed, was retried while the first destroy still ran; a second
  // vzdestroy task went out for the same op and the create ended needs_operator. Compensation
  // now waits out a running destroy of the guest first.
  it.scoped.prop(
    "regression: a compensating destroy answered 596 is waited out, never sent twice (seed 831820820)",
    arbs,
    convergesUnderFaults,
    { timeout: 300_000, fastCheck: { seed: 831820820, path: "7:0:2:3:4:5:5:5:27:26:9", endOnFailure: true } }
  )
  // Found by this property (issue 11's second CI run): a grow whose task outlived a crash landed
  // between the next pass's plan and its resize POST; PVE answered "disk is already at specified
  // size", the resize counted as failed and the guest's later actions (a stop) never ran. The size
  // is the goal: a resize that finds it reached is done.
  it.scoped.prop(
    "regression: a grow that already landed is done, not a failure (seed -1879846376)",
    arbs,
    convergesUnderFaults,
    { timeout: 300_000, fastCheck: { seed: -1879846376, path: "3:2:2:3:2:3:3:2:4:2:2:2:3:2:2:3:4", endOnFailure: true } }
  )
})
