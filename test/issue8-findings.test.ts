/**
 * Regression tests for issue 8's attack findings against the control core: each one reproduces
 * the attack against the simulator with the real gate, journal and executors, and asserts the
 * promise (no unsigned irreversible change) holds.
 */
import { describe, expect, it } from "@effect/vitest"
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { Effect, Either, Exit, Layer, Option, Schema } from "effect"
import { proxmoxSettings } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { JournalLive } from "../src/layers/Journal.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { consoleGrant } from "../src/programs/control/gate.js"
import { createGuest } from "../src/programs/control/steps.js"
import { DesiredGuest } from "../src/schema/desired.js"
import { StorageId, VolumeId } from "../src/schema/ids.js"
import { makeSimHttpClient } from "../src/sim/pve/index.js"
import { Journal } from "../src/layers/Journal.js"
import { planNow } from "../src/programs/control/apply.js"
import { runJobBatch, runSignedJob, type SignedJob } from "../src/programs/control/jobs.js"
import { decodeDesiredState } from "../src/schema/desired.js"
import { decodeJobEntry } from "../src/schema/hub.js"
import { VmId } from "../src/schema/ids.js"
import { MAX_JSON_DEPTH, SafeJsonObject } from "../src/schema/json.js"
import { decodeOpBlob } from "../src/schema/op.js"
import { defaultSeedJson, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { agentLayer, type AgentServices, b64, dbFile, GOLDEN, runTimed, signedOp } from "./engine-support.js"
import { agentConfig, seedWith } from "./support.js"

type Json = Record<string, unknown>

/** The default seed, with the backup storage pruning to one archive per guest (as many hosts do). */
const pruningSeed = () => {
  const seed = defaultSeedJson as { storages: ReadonlyArray<Json> }
  return seedWith({
    storages: seed.storages.map((s) => (s["storage"] === "local" ? { ...s, "prune-backups": "keep-last=1" } : s))
  })
}

const withSim = <A, E>(body: (sim: SimPve) => Effect.Effect<A, E, AgentServices>, seed = seedWith({})) =>
  Effect.scoped(Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seed)
    return yield* body(sim).pipe(Effect.provide(agentLayer(sim, dbFile())))
  }))

const tasksOf = (sim: SimPve, vmid: number) => Effect.map(sim.tasks, (ts) => ts.filter((t) => t.id === String(vmid)).map((t) => t.type))

const backupsOf = (sim: SimPve, vmid: number) =>
  Effect.map(sim.storageContent("local"), (c) =>
    c.filter((e) => e["content"] === "backup" && Number(e["vmid"]) === vmid).map((e) => String(e["volid"])).sort())

/** The hub's JSON exactly as it would arrive on the wire, parsed the way the hub client parses it. */
const wire = (text: string): unknown => JSON.parse(text)

describe("finding 1: prototype keys in hub JSON", () => {
  it("a job whose params carry __proto__ does not decode, and one bad entry costs no other", () => {
    const raw = wire(`{"id":"j1","op":"restore-now","guest_id":100,"params":{"backup":"local:backup/x.tar.zst","__proto__":{"snapshot":"pre_upgrade"}}}`)
    const decoded = decodeJobEntry(raw)
    expect(Either.isLeft(decoded)).toBe(true)
    if (Either.isLeft(decoded)) {
      expect(decoded.left.id).toBe("j1")
      expect(decoded.left.message).toContain("__proto__")
    }
    for (const key of ["constructor", "prototype"]) {
      expect(Either.isLeft(decodeJobEntry(wire(`{"id":"j2","op":"force-backup","guest_id":100,"params":{"${key}":{}}}`)))).toBe(true)
    }
    // nested too
    expect(Either.isLeft(decodeJobEntry(wire(`{"id":"j3","op":"x","guest_id":null,"params":{"a":[{"__proto__":{"b":1}}]}}`)))).toBe(true)
  })

  it("a signed op blob with a __proto__ key in params is malformed", () => {
    const blob = new TextEncoder().encode(
      `{"op":"restore-now","host_id":"h","guest_id":101,"params":{"__proto__":{"snapshot":"pre_upgrade"}},"nonce":"${"n".repeat(24)}","expires_at":"2030-01-01T00:00:00Z","key_id":"alice"}`
    )
    expect(Either.isLeft(decodeOpBlob(blob))).toBe(true)
  })

  it.scoped("the attack end to end: a signed restore-now from backup, the hub adds __proto__.snapshot: rejected, nothing runs", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const backup: string = (yield* backupsOf(sim, 100))[0]!
        const params = { backup, storage: "local-lvm", backup_storage: "local" }
        const signed = signedOp({ op: "restore-now", guest_id: 100, params })
        const text = JSON.stringify({ id: "job-proto", op: "restore-now", guest_id: 100, blob: b64(signed.blob), signature: signed.signature, params })
          .replace(`"params":{`, `"params":{"__proto__":{"snapshot":"pre_upgrade"},`)
        const before = yield* tasksOf(sim, 100)
        const [result] = yield* runTimed(runJobBatch([decodeJobEntry(wire(text))]))
        expect(result).toMatchObject({ id: "job-proto", status: "rejected" })
        expect(yield* tasksOf(sim, 100)).toEqual(before)
      })))

  it.scoped("params with an extra own key are not what was signed: binding_mismatch, nothing runs", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const backup: string = (yield* backupsOf(sim, 100))[0]!
        const params = { backup, storage: "local-lvm", backup_storage: "local" }
        const signed = signedOp({ op: "restore-now", guest_id: 100, params })
        const job: SignedJob = {
          id: "job-extra",
          op: "restore-now",
          guest_id: VmId.make(100),
          params: { ...params, snapshot: "pre_upgrade" },
          blob: b64(signed.blob),
          signature: signed.signature
        }
        const before = yield* tasksOf(sim, 100)
        const r = yield* runTimed(runSignedJob(job))
        expect(r.status).toBe("rejected")
        expect(r.reason).toContain("binding_mismatch")
        expect(yield* tasksOf(sim, 100)).toEqual(before)
      })))

  it.scoped("a signed op whose own params carry an extra key runs nothing (strict per-op decode)", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const backup: string = (yield* backupsOf(sim, 100))[0]!
        const params = { backup, storage: "local-lvm", backup_storage: "local", snapshot: "pre_upgrade" }
        const signed = signedOp({ op: "restore-now", guest_id: 100, params })
        const before = yield* tasksOf(sim, 100)
        const r = yield* runTimed(runSignedJob({
          id: "job-both",
          op: "restore-now",
          guest_id: VmId.make(100),
          params,
          blob: b64(signed.blob),
          signature: signed.signature
        }))
        expect(r.status).toBe("failed")
        expect(r.reason).toContain("BadJob")
        expect(yield* tasksOf(sim, 100)).toEqual(before)
      })))
})

describe("finding 9: absurd nesting", () => {
  it("is refused at decode without overflowing the stack", () => {
    const deep = `${"[".repeat(200_000)}${"]".repeat(200_000)}`
    const raw = wire(`{"id":"deep","op":"force-backup","guest_id":100,"params":{"x":${deep}}}`)
    const r = decodeJobEntry(raw)
    expect(Either.isLeft(r)).toBe(true)
    if (Either.isLeft(r)) expect(r.left.message).toContain(`deeper than ${MAX_JSON_DEPTH}`)
    expect(Either.isLeft(Schema.decodeUnknownEither(SafeJsonObject)({ a: JSON.parse(deep) }))).toBe(true)
  })

  it.scoped("one bad job in a batch never costs the others", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const before = (yield* backupsOf(sim, 100)).length
        const deep = `${"[".repeat(100_000)}${"]".repeat(100_000)}`
        const results = yield* runTimed(runJobBatch([
          wire(`{"id":"deep","op":"force-backup","guest_id":100,"params":{"x":${deep}}}`),
          wire(`{"id":"ok","op":"force-backup","guest_id":100,"params":{"storage":"local"}}`),
          wire(`{"op":"no-id"}`)
        ].map(decodeJobEntry)))
        expect(results.map((r) => `${r.id}:${r.status}`)).toEqual(["deep:rejected", "ok:done", "invalid-2:rejected"])
        expect((yield* backupsOf(sim, 100)).length).toBe(before + 1)
      })))

  it("desired-state policy and storage blocks are checked the same way", () => {
    const base = { generation: 1, guests: [] }
    expect(Either.isLeft(decodeDesiredState(wire(`{"generation":1,"guests":[],"policies":{"__proto__":{"a":1}}}`)))).toBe(true)
    expect(Either.isLeft(decodeDesiredState({ ...base, storage: [JSON.parse(`${"[".repeat(50)}${"]".repeat(50)}`)] }))).toBe(true)
    // typed since issue 10 (src/schema/storage.ts): a well-formed block decodes, an unknown key does not
    expect(Either.isRight(decodeDesiredState({ ...base, policies: { guests: [] } }))).toBe(true)
    expect(Either.isLeft(decodeDesiredState({ ...base, policies: { nightly: { keep_last: 3 } } }))).toBe(true)
  })
})

describe("finding 3: the agent never causes PVE-side pruning", () => {
  it.scoped("three unsigned force-backups on a keep-last=1 storage delete no older archive", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const before = yield* backupsOf(sim, 100)
        expect(before.length).toBeGreaterThan(0)
        for (const id of ["fb-1", "fb-2", "fb-3"]) {
          const r = yield* runTimed(runSignedJob({ id, op: "force-backup", guest_id: VmId.make(100), params: { storage: "local" } }))
          expect(r.status).toBe("done")
        }
        const after = yield* backupsOf(sim, 100)
        expect(after.length).toBe(before.length + 3)
        for (const v of before) expect(after).toContain(v)
      }), pruningSeed()))

  it.scoped("a signed restore-now's safety backup does not prune the archive it restores from", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const backup: string = (yield* backupsOf(sim, 100))[0]!
        expect(backup).toBeDefined()
        const params = { backup, storage: "local-lvm", backup_storage: "local" }
        const signed = signedOp({ op: "restore-now", guest_id: 100, params })
        const r = yield* runTimed(runSignedJob({
          id: "rn-1",
          op: "restore-now",
          guest_id: VmId.make(100),
          params,
          blob: b64(signed.blob),
          signature: signed.signature
        }))
        expect(r.status).toBe("done")
        const after = yield* backupsOf(sim, 100)
        expect(after).toContain(backup)
        expect(after.length).toBe(2) // the original plus the safety backup
      }), pruningSeed()))
})

describe("finding 6: a lost guest is never recreated blank", () => {
  it.scoped("a signed restore-now whose restore fails leaves the guest lost; reconcile plans no create", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const backup: string = (yield* backupsOf(sim, 100))[0]!
        const params = { backup, storage: "local-lvm", backup_storage: "local" }
        const signed = signedOp({ op: "restore-now", guest_id: 100, params })
        // the restore task fails after PVE removed the old volumes (force=1)
        yield* sim.setFaults({ task_failure_types: ["vzrestore"] })
        const r = yield* runTimed(runSignedJob({
          id: "rn-fail",
          op: "restore-now",
          guest_id: VmId.make(100),
          params,
          blob: b64(signed.blob),
          signature: signed.signature
        }))
        expect(r.status).toBe("failed")
        yield* sim.setFaults({ task_failure_types: [] })
        expect(Option.isNone(yield* sim.guest(100))).toBe(true)
        const journal = yield* Journal
        expect((yield* journal.guestRecords).find((g) => g.vmid === 100)?.state).toBe("lost")
        // the hub still wants 101: the plan reports it lost and never creates it from the golden archive
        const desired = decodeDesiredState(JSON.parse(`{"generation":3,"provisioning":{"golden_archive":"local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst","storage":"local-lvm"},"guests":[{"vmid":100,"hostname":"cust-alpha","memory_bytes":1073741824,"swap_mib":512,"rootfs_gib":8,"power":"running","description":"","tags":[]}]}`))
        expect(Either.isRight(desired)).toBe(true)
        if (Either.isRight(desired)) {
          const p = yield* planNow(desired.right)
          // never a create: at most the recovery from a surviving backup, which waits for a signature (issue 12)
          expect(p.actions.filter((a) => a.vmid === 100).map((a) => a.kind).filter((k) => k !== "recover")).toEqual([])
          expect(p.notes.find((n) => n.vmid === 100)?.reason).toBe("lost")
        }
      })))
})

describe("finding 9: nonces and job claims are spent only when the op is admitted", () => {
  it.scoped("a binding mismatch or a role denial does not burn the operator's nonce", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const signed = signedOp({ op: "decommission", guest_id: 101 })
        const mismatched = yield* runTimed(runSignedJob({
          id: "dc-wrong",
          op: "decommission",
          guest_id: VmId.make(102),
          params: {},
          blob: b64(signed.blob),
          signature: signed.signature
        }))
        expect(mismatched.reason).toContain("binding_mismatch")
        expect(Option.isSome(yield* sim.guest(101))).toBe(true)
        // the same signature, now bound correctly, still works: its nonce was never spent
        const right = yield* runTimed(runSignedJob({
          id: "dc-right",
          op: "decommission",
          guest_id: VmId.make(101),
          params: {},
          blob: b64(signed.blob),
          signature: signed.signature
        }))
        expect(right.status).toBe("done")
        expect(Option.isNone(yield* sim.guest(101))).toBe(true)
        // and now it is spent: a replay under a new job id is refused
        const replay = yield* runTimed(runSignedJob({
          id: "dc-again",
          op: "decommission",
          guest_id: VmId.make(101),
          params: {},
          blob: b64(signed.blob),
          signature: signed.signature
        }))
        expect(replay.status).toBe("rejected")
        expect(replay.reason).toContain("Replay")
      })))

  it.scoped("the job key, the nonce and the journal op are one admission: a refused admission leaves none of them", () =>
    withSim(() =>
      Effect.gen(function*() {
        const journal = yield* Journal
        const nonce = { nonce: "n".repeat(30), signerFingerprint: "SHA256:x", op: "decommission", expiresAtMs: 10_000_000 }
        const op = { kind: "decommission", vmid: 101, payload: {} }
        yield* journal.admit({ key: "job:a", nonce, op })
        // same nonce, new key: replay, and the new key stays unclaimed
        const replay = yield* Effect.either(journal.admit({ key: "job:b", nonce, op }))
        expect(Either.isLeft(replay) && replay.left._tag === "AdmissionRefused" && replay.left.reason).toBe("replay")
        expect(Option.isNone(yield* journal.idempotencyGet("job:b"))).toBe(true)
        // same key, new nonce: duplicate, and the new nonce stays unspent
        const fresh = { ...nonce, nonce: "m".repeat(30) }
        const dup = yield* Effect.either(journal.admit({ key: "job:a", nonce: fresh, op }))
        expect(Either.isLeft(dup) && dup.left._tag === "AdmissionRefused" && dup.left.reason).toBe("duplicate")
        expect(yield* journal.nonceRecorded(fresh.nonce)).toBe(false)
        expect((yield* journal.list({ limit: 10 })).length).toBe(1)
      })))
})

describe("finding 9: a 596 on the restore POST", () => {
  const spec = Schema.decodeUnknownSync(DesiredGuest)({
    vmid: 110,
    hostname: "cust-gamma",
    memory_bytes: 1073741824,
    swap_mib: 512,
    rootfs_gib: 16,
    power: "running",
    description: "gamma",
    tags: []
  })
  const source = {
    archive: Schema.decodeSync(VolumeId)("local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"),
    storage: Schema.decodeSync(StorageId)("local-lvm")
  }

  /** PVE applies the restore, but the proxy in front of it times out: the client sees only a 596. */
  const proxyTimesOutOnRestore = (sim: SimPve) => {
    const inner = makeSimHttpClient(sim, { reasonHeader: REASON_HEADER })
    return HttpClient.make((req) =>
      req.method === "POST" && /\/nodes\/[^/]+\/lxc$/.test(new URL(req.url).pathname)
        ? Effect.flatMap(inner.execute(req), () =>
          Effect.succeed(HttpClientResponse.fromWeb(req, new Response("", { status: 596, statusText: "Connection timed out" }))))
        : inner.execute(req)
    )
  }

  it.scoped("the restore landed: compensation reads it back and removes exactly that guest, and the journal says so truly", () =>
    Effect.scoped(Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ task_durations_ms: { vzrestore: 4000 } }))
      const file = agentConfig("https://127.0.0.1:8006", sim.tokenId, sim.tokenSecret, { insecure_skip_verify: true }, { node: "pve" })
      const pveLayer = ProxmoxWithoutClient.pipe(
        Layer.provide(Layer.succeed(HttpClient.HttpClient, proxyTimesOutOnRestore(sim))),
        Layer.provide(proxmoxSettings(file.proxmox!))
      )
      const journalLayer = JournalLive.pipe(Layer.provide(layerAt(dbFile())), Layer.orDie)
      const grant = consoleGrant({ op: "create", vmid: VmId.make(110), params: { rootfs_gib: 16 } }, "test")
      const [exit, ops] = yield* Effect.gen(function*() {
        const exit = yield* runTimed(Effect.exit(createGuest(spec, source, 1024, grant)))
        return [exit, yield* Effect.flatMap(Journal, (j) => j.list({ limit: 5 }))] as const
      }).pipe(Effect.provide(Layer.merge(pveLayer, journalLayer)))
      expect(Exit.isFailure(exit)).toBe(true)
      // the restore ran once (it landed behind the 596) and exactly that guest was removed again
      const tasks = yield* sim.tasks
      expect(tasks.filter((t) => t.type === "vzrestore" && t.id === "110").length).toBe(1)
      expect(tasks.filter((t) => t.type === "vzdestroy" && t.id === "110").length).toBe(1)
      expect(Option.isNone(yield* sim.guest(110))).toBe(true)
      expect(ops[0]).toMatchObject({ kind: "create", status: "rolled_back" })
      expect(ops[0]?.detail).toContain("half-built guest was removed")
    })))
})

describe("finding 9: the hub can provision only from an operator-signed golden archive", () => {
  const desiredWith = (archive: string) =>
    Either.getOrThrow(decodeDesiredState({
      generation: 1,
      provisioning: { golden_archive: archive, storage: "local-lvm" },
      guests: [{ vmid: 110, hostname: "cust-new", memory_bytes: 1073741824, swap_mib: 512, rootfs_gib: 8, power: "running", description: "", tags: [] }]
    }))

  it.scoped("a customer's backup named as the golden archive creates nothing; a signed golden-register makes it a source", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        const customerBackup = (yield* backupsOf(sim, 100))[0]!
        const refused = yield* planNow(desiredWith(customerBackup))
        expect(refused.actions.filter((x) => x.vmid === 110)).toEqual([])
        expect(refused.notes.filter((n) => n.vmid === 110).map((n) => n.reason)).toEqual(["golden_unverified"])
        // unsigned registration: held for a signature
        const unsigned = yield* runTimed(runSignedJob({ id: "g-1", op: "golden-register", guest_id: null, params: { archive: GOLDEN } }))
        expect(unsigned.status).toBe("pending_signature")
        expect((yield* planNow(desiredWith(GOLDEN))).actions.filter((x) => x.vmid === 110)).toEqual([])
        // signed: registered, and now the plan creates from it
        const signed = signedOp({ op: "golden-register", guest_id: null, params: { archive: GOLDEN } })
        const r = yield* runTimed(runSignedJob({
          id: "g-2",
          op: "golden-register",
          guest_id: null,
          params: { archive: GOLDEN },
          blob: b64(signed.blob),
          signature: signed.signature
        }))
        expect(r.status).toBe("done")
        expect((yield* planNow(desiredWith(GOLDEN))).actions.filter((x) => x.vmid === 110).map((x) => x.kind)).toEqual(["create"])
        expect((yield* planNow(desiredWith(customerBackup))).actions.filter((x) => x.vmid === 110)).toEqual([])
      })))
})

describe("volume ids from the hub cannot traverse paths", () => {
  it("'..' segments, absolute paths and '//' are refused; ordinary volids decode", () => {
    for (const bad of ["local:backup/../../etc/shadow", "local:../x", "local:/etc/passwd", "local:backup//x", "local:backup/.."]) {
      expect(Either.isLeft(Schema.decodeUnknownEither(VolumeId)(bad)), bad).toBe(true)
    }
    for (const good of ["local:backup/vzdump-lxc-101-2026_01_01-00_00_00.tar.zst", "local-lvm:vm-101-disk-0", "pbs:backup/ct/101/2026-01-01T00:00:00Z", "local:backup/a..b.tar"]) {
      expect(Either.isRight(Schema.decodeUnknownEither(VolumeId)(good)), good).toBe(true)
    }
  })
})
