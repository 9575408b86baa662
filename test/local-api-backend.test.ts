/**
 * LocalApiBackendLive (issue 11): what each endpoint answers for the caller's guest, against the
 * in-process simulator with a real Journal, ProtectionStore and ControllerStore under TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber, Layer, Option, Ref, type Scope, TestClock, type TestServices } from "effect"
import { ControllerStore } from "../src/layers/ControllerStore.js"
import { JournalError } from "../src/layers/Journal.js"
import { OpLog } from "../src/layers/OpLog.js"
import { ProtectionStore } from "../src/layers/ProtectionStore.js"
import { LocalApiBackend } from "../src/programs/localapi/backend.js"
import { LocalApiBackendLive } from "../src/programs/localapi/backendLive.js"
import { classOf, sizeGib } from "../src/programs/localapi/storageView.js"
import type { DesiredState } from "../src/schema/desired.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { defaultSeedJson } from "../src/sim/pve/index.js"
import { dbFile, settle } from "./engine-support.js"
import { apiLayer, vm } from "./local-api-backend-support.js"
import { desiredWith, protectionSeed, runFor, T0, USB } from "./protection-support.js"

type Json = Record<string, unknown>
const daily = { schedule: "02:00", retention: { keep_daily: 7 } }

/** Guest 100 with a backed-up volume, a bulk one, and a bind mount (the bootstrap directory). */
const seed = () => {
  const guests = ((defaultSeedJson as Json)["guests"] as ReadonlyArray<Json>).map((g) =>
    g["vmid"] !== 100 ? g : {
      ...g,
      config: {
        ...(g["config"] as Json),
        mp0: "local-lvm:vm-100-disk-1,mp=/var/lib/app,backup=1,size=4G",
        mp1: "local-lvm:vm-100-disk-2,mp=/srv/media,size=512M",
        mp9: "/var/lib/felhom/bootstrap/100,mp=/etc/felhom-bootstrap,ro=1"
      }
    })
  return protectionSeed({ guests, task_durations_ms: { vzdump: 3000, imgdel: 1000, vzsnapshot: 3000 } })
}

type Env = Layer.Layer.Success<ReturnType<typeof apiLayer>> | LocalApiBackend | Scope.Scope | TestServices.TestServices

const withBackend = <A, E>(
  desired: Option.Option<DesiredState>,
  body: (sim: SimPve, desiredRef: Ref.Ref<Option.Option<DesiredState>>) => Effect.Effect<A, E, Env>,
  prepare: Effect.Effect<void, never, Layer.Layer.Success<ReturnType<typeof apiLayer>>> = Effect.void
) =>
  Effect.scoped(Effect.gen(function*() {
    yield* TestClock.setTime(T0)
    const sim = yield* makeSimPve(yield* seed())
    const path = dbFile()
    const ref = yield* Ref.make(desired)
    const base = apiLayer(sim, path)
    yield* prepare.pipe(Effect.provide(base))
    const backend = LocalApiBackendLive({ desired: Ref.get(ref), maxSnapshots: 3 }).pipe(Layer.provideMerge(base))
    return yield* body(sim, ref).pipe(Effect.provide(backend))
  }))

const code = <A>(e: Either.Either<A, { readonly _tag: string }>) =>
  Either.isLeft(e) ? (e.left as unknown as { code?: string }).code ?? e.left._tag : "ok"

describe("GET /storage", () => {
  it("class: the manifest's word, else PVE's storage type (unknown is slow); sizes in GiB", () => {
    const manifest = [{ id: "usb1", class: "slow" as const }, { id: "local-lvm", class: "fast" as const }]
    const types = new Map([["local", "dir"], ["nas", "nfs"], ["local-lvm", "lvmthin"]])
    expect(classOf("local-lvm", manifest, types)).toBe("fast")
    expect(classOf("usb1", manifest, new Map([["usb1", "dir"]]))).toBe("slow")
    expect(classOf("local", manifest, types)).toBe("fast")
    expect(classOf("nas", manifest, types)).toBe("slow")
    expect(classOf("mystery", manifest, types)).toBe("slow")
    expect([sizeGib("16G"), sizeGib("512M"), sizeGib("1T"), sizeGib(undefined), sizeGib("lots")]).toEqual([16, 0.5, 1024, null, null])
  })

  it.scoped("the guest's rootfs and volume mount points, never a bind mount's host path; another vmid is 404", () =>
    withBackend(Option.some(desiredWith(daily)), () =>
      Effect.gen(function*() {
        const api = yield* LocalApiBackend
        const r = yield* api.storage(vm(100))
        expect(r.mounts).toEqual([
          { key: "rootfs", path: "/", class: "fast", storage: "local-lvm", size_gib: 16, backup: true },
          { key: "mp0", path: "/var/lib/app", class: "fast", storage: "local-lvm", size_gib: 4, backup: true },
          { key: "mp1", path: "/srv/media", class: "fast", storage: "local-lvm", size_gib: 0.5, backup: false }
        ])
        expect(JSON.stringify(r)).not.toContain("/var/lib/felhom")
        expect(code(yield* Effect.either(api.storage(vm(999))))).toBe("not_found")
      })))
})

describe("backup endpoints", () => {
  it.scoped("due: never backed up → due to the policy's target; a guest not desired or no desired state → no_policy", () =>
    withBackend(Option.some(desiredWith(daily)), (_sim, ref) =>
      Effect.gen(function*() {
        const api = yield* LocalApiBackend
        const d = yield* api.backupDue(vm(100))
        expect(d).toMatchObject({ due: true, reason: "never_backed_up", target: "usb1", last_success_at: null })
        expect(yield* api.backupDue(vm(102))).toMatchObject({ due: false, reason: "no_policy", target: null })
        yield* Ref.set(ref, Option.some(desiredWith(undefined)))
        expect(yield* api.backupDue(vm(100))).toMatchObject({ due: false, reason: "no_policy", target: null })
        yield* Ref.set(ref, Option.none())
        expect((yield* api.backupDue(vm(100))).reason).toBe("no_policy")
        expect(code(yield* Effect.either(api.backup(vm(100))))).toBe("unprocessable")
      })))

  it.scoped("POST /backup: a job queued → running → done with its archive; a second is 409 meanwhile; due and status follow", () =>
    withBackend(Option.some(desiredWith(daily)), (sim) =>
      Effect.gen(function*() {
        const api = yield* LocalApiBackend
        const accepted = yield* api.backup(vm(100))
        expect(accepted.state).toBe("queued")
        expect(code(yield* Effect.either(api.backup(vm(100))))).toBe("conflict")
        // another guest's backup is its own
        expect((yield* api.backup(vm(101))).state).toBe("queued")
        yield* settle
        const running = yield* api.backupStatus(vm(100))
        expect(running.jobs[0]).toMatchObject({ job: accepted.job, state: "running" })
        for (let i = 0; i < 40; i++) {
          yield* TestClock.adjust("500 millis")
          yield* settle
        }
        const status = yield* api.backupStatus(vm(100))
        expect(status.jobs).toHaveLength(1)
        const job = status.jobs[0]!
        expect(job).toMatchObject({ job: accepted.job, state: "done", error: null })
        expect(job.archive).toMatch(/^usb1:backup\/vzdump-lxc-100-/)
        expect(status.last_archive).toBe(job.archive)
        expect(status.last_success_at).not.toBeNull()
        const vz = (yield* sim.tasks).filter((t) => t.type === "vzdump" && t.id === "100")
        expect(vz).toHaveLength(1)
        // the job's op is a backup with trigger api; due answers the new state at once
        const ops = yield* Effect.flatMap(OpLog, (o) => o.list({ limit: 10 }))
        expect(ops.find((o) => o.kind === "backup" && o.vmid === 100)?.payload).toMatchObject({ trigger: "api", storage: USB })
        expect(yield* api.backupDue(vm(100))).toMatchObject({ due: false, reason: "not_yet", target: "usb1" })
        // a new one may be asked for now
        expect((yield* api.backup(vm(100))).state).toBe("queued")
      })))

  it.scoped("a failing vzdump ends the job failed with PVE's reason; jobs left by a crash are failed at start", () =>
    withBackend(
      Option.some(desiredWith(daily)),
      (sim) =>
        Effect.gen(function*() {
          const api = yield* LocalApiBackend
          const store = yield* ControllerStore
          expect((yield* store.jobs(vm(101), 5))[0]).toMatchObject({ state: "failed", error: "the agent restarted before the job finished" })
          yield* sim.setFaults({ task_failure_types: ["vzdump"] })
          const a = yield* api.backup(vm(100))
          yield* runFor(Effect.gen(function*() {
            for (;;) {
              const [j] = yield* api.backupStatus(vm(100)).pipe(Effect.map((s) => s.jobs))
              if (j !== undefined && j.job === a.job && (j.state === "failed" || j.state === "done")) return j
              yield* Effect.sleep("500 millis")
            }
          }))
          const [j] = (yield* api.backupStatus(vm(100))).jobs
          expect(j?.state).toBe("failed")
          expect(j?.error).toMatch(/backup of 100 to usb1 failed/)
        }),
      Effect.asVoid(Effect.flatMap(ControllerStore, (s) => s.createJob(vm(101), "backup", T0 - 1000))).pipe(Effect.orDie)
    ))
})

describe("status, contact, mutations", () => {
  it.scoped("restore-test status: this guest's newest pass/fail, its last pass; nothing of another guest", () =>
    withBackend(Option.some(desiredWith(daily)), () =>
      Effect.gen(function*() {
        const api = yield* LocalApiBackend
        expect(yield* api.restoreTestStatus(vm(100))).toEqual({ last_result: null, last_at: null, archive: null, detail: null, last_pass_at: null })
        const p = yield* ProtectionStore
        yield* p.recordRestoreTest({ opId: "a", vmid: 100, archive: "usb1:backup/a", startedMs: T0, endedMs: T0 + 1000, result: "pass", detail: "ok", timings: {} })
        yield* p.recordRestoreTest({ opId: "b", vmid: 100, archive: "usb1:backup/b", startedMs: T0 + 2000, endedMs: T0 + 3000, result: "fail", detail: "services down", timings: {} })
        yield* p.recordRestoreTest({ opId: "c", vmid: 101, archive: "usb1:backup/c", startedMs: T0 + 4000, endedMs: T0 + 5000, result: "pass", detail: "ok", timings: {} })
        yield* p.recordRestoreTest({ opId: "d", vmid: 100, archive: "usb1:backup/d", startedMs: T0 + 6000, endedMs: T0 + 7000, result: "skipped", detail: "no archive", timings: {} })
        expect(yield* api.restoreTestStatus(vm(100))).toEqual({
          last_result: "fail",
          last_at: new Date(T0 + 3000).toISOString().replace(/\.\d{3}Z$/, "Z"),
          archive: "usb1:backup/b",
          detail: "services down",
          last_pass_at: new Date(T0 + 1000).toISOString().replace(/\.\d{3}Z$/, "Z")
        })
      })))

  it.scoped("heartbeat records the report; contact writes at most once per window; health is ok", () =>
    withBackend(Option.some(desiredWith(daily)), () =>
      Effect.gen(function*() {
        const api = yield* LocalApiBackend
        const store = yield* ControllerStore
        yield* store.recordDeploy({ vmid: vm(100), image: "reg/ctl:1", generation: 1, tokenId: "0123456789abcdef", mpIndex: 9, pins: [] })
        yield* api.contact(vm(100))
        expect(Option.getOrThrow(yield* store.get(vm(100))).lastContactMs).toBe(T0)
        yield* TestClock.adjust("10 seconds")
        yield* api.contact(vm(100))
        expect(Option.getOrThrow(yield* store.get(vm(100))).lastContactMs).toBe(T0) // in memory only
        yield* TestClock.adjust("25 seconds")
        yield* api.contact(vm(100))
        expect(Option.getOrThrow(yield* store.get(vm(100))).lastContactMs).toBe(T0 + 35_000)
        yield* api.heartbeat(vm(100), { version: "1.4.0", image: "reg/ctl:1", status: "unhealthy", detail: "db down" })
        expect(Option.getOrThrow(yield* store.get(vm(100)))).toMatchObject({ version: "1.4.0", health: "unhealthy", healthDetail: "db down", lastContactMs: T0 + 35_000 })
        expect(yield* api.health).toMatchObject({ status: "ok", checks: { state_store: "ok" } })
      })))

  it.scoped("a snapshot whose caller goes away still completes (the saga is the layer's, not the request's)", () =>
    withBackend(Option.some(desiredWith(daily)), (sim) =>
      Effect.gen(function*() {
        const api = yield* LocalApiBackend
        const caller = yield* Effect.fork(api.snapshot(vm(100), { name: "keep" }))
        yield* settle
        yield* TestClock.adjust("100 millis")
        yield* settle
        // the request goes away while its snapshot task runs
        expect((yield* Effect.flatMap(OpLog, (o) => o.inFlight)).map((o) => o.kind)).toEqual(["api-snapshot"])
        yield* Fiber.interrupt(caller)
        for (let i = 0; i < 20; i++) {
          yield* TestClock.adjust("500 millis")
          yield* settle
        }
        const g = Option.getOrThrow(yield* sim.guest(100))
        expect(g.snapshots.map((s) => s.name)).toContain("ctl-keep")
        const ops = yield* Effect.flatMap(OpLog, (o) => o.list({ limit: 10 }))
        expect(ops.find((o) => o.kind === "api-snapshot")?.status).toBe("done")
        expect(code(yield* Effect.either(api.rollback(vm(100), { snapshot: "ctl-nope" })))).toBe("not_found")
      })))
})

describe("a failing state store", () => {
  it.scoped("health is degraded, reads are 503 without the store's own words, contact never fails the request", () =>
    Effect.scoped(Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const sim = yield* makeSimPve(yield* seed())
      const base = apiLayer(sim, dbFile())
      const broken = new JournalError({ message: "disk I/O error at /var/lib/felhom-agent/state.db" })
      const failing = Layer.effect(
        ControllerStore,
        Effect.map(ControllerStore, (s) => ({ ...s, records: Effect.fail(broken), jobs: () => Effect.fail(broken), recordContact: () => Effect.fail(broken) }))
      ).pipe(Layer.provide(base))
      const backend = LocalApiBackendLive({ desired: Effect.succeed(Option.some(desiredWith(daily))), maxSnapshots: 3 }).pipe(
        Layer.provide(failing),
        Layer.provideMerge(base)
      )
      yield* Effect.gen(function*() {
        const api = yield* LocalApiBackend
        expect((yield* api.health).status).toBe("degraded")
        const r = yield* Effect.either(api.backupStatus(vm(100)))
        expect(code(r)).toBe("unavailable")
        expect(Either.isLeft(r) && r.left.message).not.toMatch(/disk I\/O|state\.db/)
        yield* api.contact(vm(100))
      }).pipe(Effect.provide(backend))
    })))
})

