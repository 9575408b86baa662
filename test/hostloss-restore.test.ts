/**
 * Host-loss DR (issue 13) against the simulator: a host whose guests are backed up to a simulated
 * PBS storage encrypted with its own key K (attached by the storage pass: disabled, K attached
 * through pbsKeySimLayer, checked, enabled), the box wiped (SimPve.wipeNode, a fresh state
 * database, a fresh creds key and key directory), then `restoreHost` with K installed. Real
 * Journal and stores on SQLite files; the production Proxmox client over the simulator's HTTP app.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Either, Layer, Logger, Option, Redacted, Schema, TestClock } from "effect"
import { randomBytes } from "node:crypto"
import { chmodSync, existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AuditLog } from "../src/layers/AuditLog.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { fromJournal, Journal, JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { OpLog } from "../src/layers/OpLog.js"
import { PbsKey } from "../src/layers/PbsKey.js"
import { Proxmox, type ProxmoxShape } from "../src/layers/Proxmox.js"
import { StorageTargetStoreLive } from "../src/layers/StorageTargetStore.js"
import { pbsFingerprint, plainKeyFile } from "../src/programs/escrow/keyFile.js"
import { PBS_WAIT, restoreHost, type HostRestoreReport } from "../src/programs/hostloss/restore.js"
import { approveRecoveryCode } from "../src/programs/control/gate.js"
import { recover } from "../src/programs/control/recover.js"
import { credsVaultAt, sealCreds } from "../src/programs/protection/creds.js"
import { backupSaga } from "../src/programs/protection/backup.js"
import { StorageRemoverLive } from "../src/programs/protection/detach.js"
import { UTC } from "../src/programs/protection/calendar.js"
import { restoreTestSettings } from "../src/programs/protection/scratch.js"
import { StorageStatusLive } from "../src/programs/protection/status.js"
import { storageReconcilePass } from "../src/programs/protection/storage.js"
import { type KeyFingerprint, RestoreBundle } from "../src/schema/escrow.js"
import { StorageId, VmId } from "../src/schema/ids.js"
import { decodeOperation } from "../src/schema/operations.js"
import { PveApiError, PveLocked } from "../src/schema/proxmox.js"
import { StorageManifest } from "../src/schema/storage.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { pbsKeySimLayer } from "../src/sim/pve/pbsKeySim.js"
import { type Counter, crashGate } from "./controller-lifecycle-support.js"
import { authzLayer, HOST, runTimed, runToExit } from "./engine-support.js"
import { fakePrivileged, hostPublicKey, keyDir, makeUsbWorld, PBS_FP } from "./storage-support.js"
import { durations, inProcessProxmox, seedWith } from "./support.js"

const T0 = Date.parse("2026-11-30T12:00:00Z")
const PBS = StorageId.make("pbs-off")
const REPO = "felhom@pbs!host1@pbs.example.net:8007:store1"
const PBS_PASSWORD = "pbs-token-secret-0001"
const TUNNEL = "tunnel-token-secret-abcdef0123"
const MAC = { 100: "BC:24:11:3A:5C:01", 101: "BC:24:11:3A:5C:02", 102: "BC:24:11:3A:5C:03" } as const
const SCRATCH = { scratchMin: 9000, scratchMax: 9099 }

const newKey = () => {
  const bytes = new Uint8Array(randomBytes(32))
  return { text: plainKeyFile(bytes, T0), fingerprint: pbsFingerprint(bytes) as KeyFingerprint, data: Buffer.from(bytes).toString("base64") }
}
type Key = ReturnType<typeof newKey>

const tmp = (p: string) => mkdtempSync(join(tmpdir(), p))

/** One box's state: its database, creds key and PBS key directory. */
interface Box {
  readonly db: string
  readonly creds: string
  readonly pbsDir: string
}
const newBox = (): Box => ({ db: join(tmp("felhom-hl-db-"), "state.db"), creds: keyDir(), pbsDir: join(tmp("felhom-hl-pbs-"), "pbs") })

type Gate = ReturnType<typeof crashGate>

const crashingJournal = (gate: Gate) => (real: JournalShape): JournalShape => ({
  ...real,
  begin: (op) => gate(`begin:${op.kind}`, real.begin(op)),
  admit: (a) => gate(`admit:${a.op.kind}`, real.admit(a)),
  stepStarted: (id, step, data) => gate(`started:${step}`, real.stepStarted(id, step, data)),
  recordUpid: (id, step, upid) => gate(`upid:${step}`, real.recordUpid(id, step, upid)),
  stepDone: (id, step, data) => gate(`done:${step}`, real.stepDone(id, step, data)),
  stepCompensated: (id, step) => gate(`compensated:${step}`, real.stepCompensated(id, step)),
  finish: (id, status, detail) => gate(`finish:${status}`, real.finish(id, status, detail)),
  recordProvenance: (vmid, kind, opId, marker) => gate("provenance", real.recordProvenance(vmid, kind, opId, marker)),
  clearProvenance: (vmid) => gate("clear-provenance", real.clearProvenance(vmid)),
  markRecovered: (vmid, detail) => gate("mark-recovered", real.markRecovered(vmid, detail)),
  audit: (e) => gate(`audit:${e.action}`, real.audit(e))
})

/** Everything restore mode needs on `box` over the simulator; `wrap` changes the Proxmox client, `gate` crashes at a write. */
const boxLayer = (sim: SimPve, box: Box, opts: { readonly wrap?: (real: ProxmoxShape) => ProxmoxShape; readonly gate?: Gate } = {}) => {
  const db = layerAt(box.db)
  const real = inProcessProxmox(sim, { node: "pve" })
  const wrap = opts.wrap
  const proxmox = wrap === undefined ? real : Layer.effect(Proxmox, Effect.map(Proxmox, wrap)).pipe(Layer.provide(real))
  const realJournal = JournalLive.pipe(Layer.provide(db))
  const gate = opts.gate
  const journal = gate === undefined
    ? realJournal
    : Layer.provideMerge(fromJournal, Layer.effect(Journal, Effect.map(Journal, crashingJournal(gate))).pipe(Layer.provide(realJournal)))
  const store = StorageTargetStoreLive.pipe(Layer.provide(db))
  const world = makeUsbWorld()
  const priv = fakePrivileged(world)
  return Layer.mergeAll(
    db,
    proxmox,
    journal,
    authzLayer().pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    store,
    priv,
    StorageStatusLive,
    credsVaultAt(box.creds),
    StorageRemoverLive.pipe(Layer.provide(Layer.merge(store, priv))),
    pbsKeySimLayer(sim, box.pbsDir),
    restoreTestSettings({ ...SCRATCH, timeZone: UTC, passIntervalSeconds: 60 })
  ).pipe(Layer.orDie)
}

/** The manifest for a box whose creds public key is `pub`: one PBS target, creds without a key. */
const manifestJson = (pub: string) => [{
  id: PBS,
  type: "pbs",
  durable_id: { repo: REPO, fingerprint: PBS_FP },
  class: "slow",
  role: "pbs-offsite",
  creds: { ciphertext: sealCreds(pub, PBS, { password: PBS_PASSWORD }) },
  state: "attached"
}]

const install = (k: Key) => Effect.flatMap(PbsKey, (p) => p.install(Redacted.make(k.text)))

interface Before {
  readonly inner: Map<number, string>
}

/**
 * The lost host: K installed, the PBS target attached by the storage pass (with K), each of
 * `vmids` backed up there through the agent's backup saga; then the box dies (wipeNode).
 */
const liveAndDie = (sim: SimPve, k: Key, vmids: ReadonlyArray<number> = [100, 101, 102]) =>
  Effect.gen(function*() {
    const box = newBox()
    const pub = yield* hostPublicKey(box.creds)
    const inner = new Map<number, string>()
    yield* Effect.gen(function*() {
      yield* install(k)
      const snap = yield* runTimed(storageReconcilePass({ storage: Schema.decodeUnknownSync(StorageManifest)(manifestJson(pub)), policies: undefined }))
      expect(snap.targets.find((t) => t.id === PBS), JSON.stringify(snap.targets)).toMatchObject({ verdict: "ok", available: true })
      const entry = (yield* Effect.flatMap(Proxmox, (p) => p.storageList)).find((s) => s.storage === PBS)
      expect(entry?.["encryption-key"]).toBe(k.fingerprint)
      expect(entry?.disable).toBeUndefined()
      for (const v of vmids) {
        inner.set(v, Option.getOrThrow(yield* sim.guestInner(v)).machineId)
        const r = yield* runTimed(backupSaga(VmId.make(v), PBS, "schedule"))
        expect(r.result, r.detail).toBe("ok")
        yield* TestClock.adjust("1 minute")
      }
    }).pipe(Effect.provide(boxLayer(sim, box)))
    yield* sim.wipeNode()
    expect(yield* sim.guests).toEqual([])
    return { inner } satisfies Before
  })

/** The bundle a hub hands the new box (`pub`: its creds key), directing `guests`. */
const bundleFor = (pub: string, guests: ReadonlyArray<Record<string, unknown>>, escrowFingerprint: string) =>
  Schema.decodeUnknownSync(RestoreBundle)({
    pbs_namespace: "host1",
    tunnel_token: TUNNEL,
    storage: manifestJson(pub),
    directive: { guests },
    escrow: { host_id: HOST, generation: 1, fingerprint: escrowFingerprint, key: "{\"kdf\":{\"Scrypt\":{}},\"data\":\"wrapped\"}" }
  })

const ALL = [{ vmid: 100, name: "cust-alpha" }, { vmid: 101, name: "cust-beta" }, { vmid: 102, name: "ops-tools" }]

const start = (seedExtra: Record<string, unknown> = {}) =>
  Effect.gen(function*() {
    yield* TestClock.setTime(T0)
    return yield* makeSimPve(yield* seedWith({ ...durations(500), ...seedExtra }))
  })

const outcomes = (r: HostRestoreReport) => r.guests.map((g) => [g.vmid, g.outcome])

/** Requests after `seq` that change a guest (anything but reads and storage config). */
const guestMutations = (sim: SimPve, seq: number) =>
  Effect.map(sim.requests, (rs) => rs.filter((r) => r.seq > seq && r.method !== "GET" && /\/lxc|vzdump/.test(r.path)))

const readDb = (path: string) => [path, `${path}-wal`].filter(existsSync).map((p) => readFileSync(p).toString("latin1")).join("\n")

describe("restoreHost: host-loss DR from PBS with the host's key", () => {
  it.scoped("wipe → fresh box → restore with K: every directed guest back, running, same MAC and hostname, its data, reported restored; no secret anywhere", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      const before = yield* liveAndDie(sim, k)
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const logs: Array<string> = []
      const logger = Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => logs.push(JSON.stringify(message))))
      const report = yield* Effect.gen(function*() {
        expect((yield* install(k)).fingerprint).toBe(k.fingerprint)
        const report = yield* runTimed(restoreHost({ bundle: bundleFor(pub, ALL, k.fingerprint), keyFingerprint: k.fingerprint }))
        // the journal: a host-loss recover per guest, fresh, on the recovery-code basis
        const ops = (yield* Effect.flatMap(OpLog, (o) => o.list({ status: "done", limit: 100 }))).filter((o) => o.kind === "recover")
        expect(ops.length).toBe(3)
        for (const o of ops) {
          const typed = decodeOperation(o.payload)
          expect(typed._tag === "Right" && typed.right._tag === "recover" && [typed.right.scenario, typed.right.mode, typed.right.authorization]).toEqual(
            ["host-loss", "fresh", { basis: "recovery-code", fingerprint: k.fingerprint }]
          )
        }
        // a re-run (enroll --restore-mode again): the journal knows these three, nothing is redone
        const again = yield* runTimed(restoreHost({ bundle: bundleFor(pub, ALL, k.fingerprint), keyFingerprint: k.fingerprint }))
        expect(outcomes(again)).toEqual([[100, "restored"], [101, "restored"], [102, "restored"]])
        for (const g of again.guests) expect(g.detail).toContain("restored earlier")
        expect((yield* Effect.flatMap(OpLog, (o) => o.list({ status: "done", limit: 100 }))).filter((o) => o.kind === "recover").length).toBe(3)
        return report
      }).pipe(Effect.provide(Layer.merge(boxLayer(sim, box), logger)))
      expect(outcomes(report)).toEqual([[100, "restored"], [101, "restored"], [102, "restored"]])
      for (const g of report.guests) expect(g.point).toMatch(new RegExp(`^pbs-off:backup/ct/${g.vmid}/`))
      expect(report.storage.find((s) => s.id === PBS)).toMatchObject({ verdict: "ok", available: true })
      const entry = (yield* sim.storages).find((s) => s.storage === PBS)
      expect(entry?.active).toBe(true)
      for (const v of [100, 101, 102] as const) {
        const g = Option.getOrThrow(yield* sim.guest(v))
        expect(g.status).toBe("running")
        expect(String(g.config["net0"])).toContain(`hwaddr=${MAC[v]}`)
        expect(g.config["hostname"]).toBe(ALL.find((x) => x.vmid === v)!.name)
        // the archive's in-guest state came back (no bootstrap reached the guest: nothing was reset yet)
        expect(Option.getOrThrow(yield* sim.guestInner(v)).machineId).toBe(before.inner.get(v))
      }
      expect(report.notes.join(" ")).toContain("fresh")
      // K, the tunnel token and the PBS password: in no report, log line, journal or audit row
      const dump = [JSON.stringify(report), logs.join("\n"), readDb(box.db)].join("\n")
      for (const secret of [k.data, TUNNEL, PBS_PASSWORD]) expect(dump).not.toContain(secret)
      expect(readFileSync(join(box.pbsDir, "encryption-key.json"), "utf8")).toContain(k.data) // where K does live
    }))

  it.scoped("another key installed (the hub names it for the escrow): nothing restored, every guest's detail says the key does not match, no guest is touched", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      yield* liveAndDie(sim, k)
      const other = newKey()
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const seq = yield* sim.requestSeq
      const report = yield* Effect.gen(function*() {
        yield* install(other)
        return yield* runTimed(restoreHost({ bundle: bundleFor(pub, ALL, other.fingerprint), keyFingerprint: other.fingerprint }))
      }).pipe(Effect.provide(boxLayer(sim, box)))
      expect(outcomes(report)).toEqual([[100, "refused"], [101, "refused"], [102, "refused"]])
      for (const g of report.guests) expect(g.detail).toContain("the key does not match")
      expect(yield* guestMutations(sim, seq)).toEqual([])
      expect(yield* sim.guests).toEqual([])
    }))

  it.scoped("another key, the hub honest about the escrow: refused before anything is attached (no PVE mutation at all)", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      yield* liveAndDie(sim, k, [100])
      const other = newKey()
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const seq = yield* sim.requestSeq
      const report = yield* Effect.gen(function*() {
        yield* install(other)
        return yield* runTimed(restoreHost({ bundle: bundleFor(pub, [ALL[0]!], k.fingerprint), keyFingerprint: other.fingerprint }))
      }).pipe(Effect.provide(boxLayer(sim, box)))
      expect(outcomes(report)).toEqual([[100, "refused"]])
      expect(report.guests[0]!.detail).toContain("the key does not match")
      expect((yield* sim.requests).filter((r) => r.seq > seq && r.method !== "GET")).toEqual([])
    }))

  it.scoped("the installed key must be the one named: otherwise refused as a whole, nothing done", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const e = yield* Effect.flip(runTimed(restoreHost({ bundle: bundleFor(pub, ALL, k.fingerprint), keyFingerprint: k.fingerprint })).pipe(Effect.provide(boxLayer(sim, box))))
      expect(e._tag).toBe("HostRestoreRefused")
    }))

  it.scoped("hostile bundles: an existing vmid, a scratch vmid, duplicates, another vmid's pinned point, a planted plaintext snapshot: each refused, the rest restored", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      yield* liveAndDie(sim, k)
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const report = yield* Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* install(k)
        // the attach first (a clean directive), so the test can plant and read what PBS lists
        const first = yield* runTimed(restoreHost({ bundle: bundleFor(pub, [], k.fingerprint), keyFingerprint: k.fingerprint }))
        expect(first.guests).toEqual([])
        const listed = (v: number) => Effect.map(pve.storageContent(PBS, { vmid: VmId.make(v) }), (es) => es.map((e) => e.volid))
        const of101 = (yield* listed(101))[0]!
        // a hostile PBS plants a newer plaintext snapshot of 100 (the storage's key removed for it)
        expect((yield* sim.setStorageEncryptionKey(PBS, null))._tag).toBe("ok")
        yield* sim.rootCreate(100, { hostname: "planted", rootfs: "local-lvm:vm-100-disk-7,size=1G", arch: "amd64", ostype: "debian" })
        const dump = yield* pve.vzdump({ vmid: VmId.make(100), storage: PBS, mode: "snapshot" })
        yield* runTimed(pve.waitTask(Option.getOrThrow(dump)))
        expect(yield* sim.rootDestroy(100)).toBe("ok")
        const k2 = yield* Effect.flatMap(PbsKey, (p) => p.read)
        expect((yield* sim.setStorageEncryptionKey(PBS, Redacted.value(k2)))._tag).toBe("ok")
        const plain = (yield* pve.storageContent(PBS, { vmid: VmId.make(100) })).find((e) => e.encrypted === undefined)!.volid
        // an existing guest at 102 (something the new box already holds)
        expect(yield* sim.rootCreate(102, { hostname: "already-here", rootfs: "local-lvm:vm-102-disk-7,size=1G", arch: "amd64", ostype: "debian" })).toBe("ok")
        const seq = yield* sim.requestSeq
        const guests = [
          { vmid: 100, name: "cust-alpha", point: plain }, // pinned to the plaintext one
          { vmid: 101, name: "cust-beta" },
          { vmid: 102, name: "ops-tools" },
          { vmid: 9001, name: "scratchy" },
          { vmid: 103, name: "dup-a" },
          { vmid: 103, name: "dup-b" },
          { vmid: 104, name: "thief", point: of101 } // another vmid's snapshot
        ]
        const r = yield* runTimed(restoreHost({ bundle: bundleFor(pub, guests, k.fingerprint), keyFingerprint: k.fingerprint }))
        // nothing was sent for a refused guest; only 101's restore reached PVE
        const restores = (yield* sim.requests).filter((q) => q.seq > seq && q.method === "POST" && /\/lxc$/.test(q.path))
        expect(restores.map((q) => q.params["vmid"])).toEqual(["101"])
        return { r, plain }
      }).pipe(Effect.provide(boxLayer(sim, box)))
      const { r } = report
      expect(outcomes(r)).toEqual([[100, "refused"], [101, "restored"], [102, "refused"], [9001, "refused"], [103, "refused"], [103, "refused"], [104, "refused"]])
      const detail = (i: number) => r.guests[i]!.detail
      expect(detail(0)).toContain("is not encrypted")
      expect(detail(2)).toContain("already exists")
      expect(detail(3)).toContain("scratch range")
      expect(detail(4)).toContain("named 2 times")
      expect(detail(6)).toContain("is not a PBS snapshot of guest 104")
      // untouched: the guest that was already there, and no planted guest came back
      expect(Option.getOrThrow(yield* sim.guest(102)).config["hostname"]).toBe("already-here")
      expect(Option.isNone(yield* sim.guest(100))).toBe(true)
      expect(Option.isNone(yield* sim.guest(104))).toBe(true)
    }))

  it.scoped("without a pin, the newest snapshot with the host's key is taken, never a newer plaintext one", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      yield* liveAndDie(sim, k, [100])
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const r = yield* Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* install(k)
        yield* runTimed(restoreHost({ bundle: bundleFor(pub, [], k.fingerprint), keyFingerprint: k.fingerprint }))
        const keyed = (yield* pve.storageContent(PBS, { vmid: VmId.make(100) }))[0]!.volid
        yield* sim.setStorageEncryptionKey(PBS, null)
        yield* sim.rootCreate(100, { hostname: "planted", rootfs: "local-lvm:vm-100-disk-7,size=1G", arch: "amd64", ostype: "debian" })
        yield* TestClock.adjust("1 hour")
        yield* runTimed(pve.waitTask(Option.getOrThrow(yield* pve.vzdump({ vmid: VmId.make(100), storage: PBS, mode: "snapshot" }))))
        yield* sim.rootDestroy(100)
        yield* sim.setStorageEncryptionKey(PBS, Redacted.value(yield* Effect.flatMap(PbsKey, (p) => p.read)))
        const r = yield* runTimed(restoreHost({ bundle: bundleFor(pub, [ALL[0]!], k.fingerprint), keyFingerprint: k.fingerprint }))
        return { r, keyed }
      }).pipe(Effect.provide(boxLayer(sim, box)))
      expect(outcomes(r.r)).toEqual([[100, "restored"]])
      expect(r.r.guests[0]!.point).toBe(r.keyed)
      expect(Option.getOrThrow(yield* sim.guest(100)).config["hostname"]).toBe("cust-alpha")
    }))

  it.scoped("the PBS server unreachable: restore mode waits, bounded; still away: every guest skipped, nothing restored; back within the wait: restored", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      yield* liveAndDie(sim, k, [100])
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const bundle = bundleFor(pub, [ALL[0]!], k.fingerprint)
      yield* sim.setStorage(PBS, { online: false })
      const seq = yield* sim.requestSeq
      const t0 = yield* Clock.currentTimeMillis
      const away = yield* Effect.gen(function*() {
        yield* install(k)
        return yield* runTimed(restoreHost({ bundle, keyFingerprint: k.fingerprint }))
      }).pipe(Effect.provide(boxLayer(sim, box)))
      expect(outcomes(away)).toEqual([[100, "skipped"]])
      expect(away.guests[0]!.detail).toContain("no PBS storage holding this host's key is reachable")
      expect((yield* Clock.currentTimeMillis) - t0).toBeGreaterThanOrEqual(Duration.toMillis(PBS_WAIT.every) * (PBS_WAIT.attempts - 1))
      expect(yield* guestMutations(sim, seq)).toEqual([])
      // the server answers again 30 s into the next attempt's wait
      yield* Effect.forkScoped(Effect.delay(sim.setStorage(PBS, { online: true }), "30 seconds"))
      const back = yield* runTimed(restoreHost({ bundle, keyFingerprint: k.fingerprint })).pipe(Effect.provide(boxLayer(sim, box)))
      expect(outcomes(back)).toEqual([[100, "restored"]])
    }))

  it.scoped("PVE faults on one guest (a 596 after the restore was sent, a lock): that guest failed and compensated, the others restored", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      yield* liveAndDie(sim, k)
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const wrap = (real: ProxmoxShape): ProxmoxShape => ({
        ...real,
        restore: (o) =>
          o.vmid === 100
            ? Effect.zipRight(real.restore(o), Effect.fail(new PveApiError({ method: "POST", path: "/nodes/pve/lxc", status: 596, kind: "proxy", message: "596 Connection timed out" })))
            : o.vmid === 101
            ? Effect.fail(new PveLocked({ method: "POST", path: "/nodes/pve/lxc", lock: "create", message: "CT is locked (create)" }))
            : real.restore(o)
      })
      const report = yield* Effect.gen(function*() {
        yield* install(k)
        return yield* runTimed(restoreHost({ bundle: bundleFor(pub, ALL, k.fingerprint), keyFingerprint: k.fingerprint }))
      }).pipe(Effect.provide(boxLayer(sim, box, { wrap })))
      expect(outcomes(report)).toEqual([[100, "failed"], [101, "failed"], [102, "restored"]])
      expect(report.guests[0]!.detail).toContain("removed")
      // the 596'd restore did run in PVE; its instance was destroyed again (compensated)
      expect(Option.isNone(yield* sim.guest(100))).toBe(true)
      expect(Option.isNone(yield* sim.guest(101))).toBe(true)
      expect(Option.getOrThrow(yield* sim.guest(102)).status).toBe("running")
    }))

  it.scoped("the PBS storage's entry left half-attached by a crash (disabled, keyless; or keyed, disabled) is finished by the next pass; one holding another key is reported and never enabled or backed up to", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      const box = newBox()
      const pub = yield* hostPublicKey(box.creds)
      const manifest = Schema.decodeUnknownSync(StorageManifest)(manifestJson(pub))
      yield* Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* install(k)
        const entry = Effect.map(pve.storageList, (l) => l.find((s) => s.storage === PBS))
        const addDisabled = pve.createStorage({
          storage: PBS,
          type: "pbs",
          content: ["backup"],
          server: "pbs.example.net",
          port: 8007,
          datastore: "store1",
          username: "felhom@pbs!host1",
          password: Redacted.make(PBS_PASSWORD),
          fingerprint: PBS_FP,
          disable: true
        })
        // crashed after the create: disabled, no key
        yield* addDisabled
        expect((yield* entry)?.disable).toBe(1)
        const t1 = (yield* runTimed(storageReconcilePass({ storage: manifest, policies: undefined }))).targets.find((t) => t.id === PBS)
        expect(t1?.verdict).toBe("ok")
        expect(yield* entry).toMatchObject({ "encryption-key": k.fingerprint })
        expect((yield* entry)?.disable).toBeUndefined()
        // crashed after the attach: keyed, still disabled
        yield* pve.setStorageDisabled(PBS, true)
        yield* runTimed(storageReconcilePass({ storage: manifest, policies: undefined }))
        expect((yield* entry)?.disable).toBeUndefined()
        // another key on it (disabled or not): reported, never enabled, no backup sent to it
        const other = newKey()
        expect((yield* sim.setStorageEncryptionKey(PBS, other.text))._tag).toBe("ok")
        yield* pve.setStorageDisabled(PBS, true)
        const t3 = (yield* runTimed(storageReconcilePass({ storage: manifest, policies: undefined }))).targets.find((t) => t.id === PBS)
        expect(t3?.verdict).toBe("needs_operator")
        expect(t3?.detail).toContain("another encryption key")
        expect((yield* entry)?.disable).toBe(1)
        yield* pve.setStorageDisabled(PBS, false)
        const seq = yield* sim.requestSeq
        const b = yield* runTimed(backupSaga(VmId.make(100), PBS, "schedule"))
        expect(b.result).toBe("failed")
        expect(b.detail).toContain("another encryption key")
        expect((yield* sim.requests).filter((q) => q.seq > seq && /vzdump/.test(q.path))).toEqual([])
        // no key at all, enabled: reported, no backup either
        yield* sim.setStorageEncryptionKey(PBS, null)
        const t4 = (yield* runTimed(storageReconcilePass({ storage: manifest, policies: undefined }))).targets.find((t) => t.id === PBS)
        expect(t4?.verdict).toBe("needs_operator")
        expect((yield* runTimed(backupSaga(VmId.make(100), PBS, "schedule"))).detail).toContain("has no encryption key")
      }).pipe(Effect.provide(boxLayer(sim, box)))
    }))
})

describe("pbsKeySimLayer", () => {
  it.scoped("no key: None; install is idempotent for K, refuses another key (Exists), refuses a key file others can read (Untrusted); attach goes through the simulator; no error carries key bytes", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const box = newBox()
      const k = newKey()
      const other = newKey()
      yield* Effect.gen(function*() {
        const p = yield* PbsKey
        expect(yield* p.fingerprint).toEqual(Option.none())
        expect((yield* Effect.flip(p.read)).reason).toBe("Missing")
        expect((yield* p.install(Redacted.make(k.text))).fingerprint).toBe(k.fingerprint)
        expect((yield* p.install(Redacted.make(k.text))).fingerprint).toBe(k.fingerprint)
        const exists = yield* Effect.flip(p.install(Redacted.make(other.text)))
        expect(exists.reason).toBe("Exists")
        expect(yield* p.fingerprint).toEqual(Option.some(k.fingerprint))
        expect(Redacted.value(yield* p.read)).toBe(k.text)
        const absent = yield* Effect.flip(p.attachToStorage(StorageId.make("nope")))
        expect(absent.reason).toBe("Attach")
        chmodSync(join(box.pbsDir, "encryption-key.json"), 0o644)
        const untrusted = yield* Effect.flip(p.read)
        expect(untrusted.reason).toBe("Untrusted")
        const bad = yield* Effect.flip(p.install(Redacted.make("{\"kdf\":null}")))
        expect(bad.reason).toBe("Unreadable")
        for (const e of [exists, absent, untrusted, bad]) expect(JSON.stringify(e) + e.message).not.toContain(k.data)
      }).pipe(Effect.provide(boxLayer(sim, box)))
    }))
})

describe("the gate's recovery-code basis", () => {
  it.scoped("approves only a fresh host-loss recover from PBS into a vmid PVE holds nothing at; every decision audited", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      const box = newBox()
      yield* Effect.gen(function*() {
        const audit = yield* AuditLog
        const params = { scenario: "host-loss", tier: "pbs", point: "pbs-off:backup/ct/150/2026-11-30T12:00:00Z", storage: "local-lvm" }
        const ask = (vmid: number | null, p: Record<string, string>, mode: "fresh" | "overwrite" | "rollback" = "fresh", op = "recover") =>
          approveRecoveryCode({ op, vmid: vmid === null ? null : VmId.make(vmid), params: p }, mode, k.fingerprint)
        expect(yield* ask(150, params)).toEqual(Either.right({ basis: "recovery-code", fingerprint: k.fingerprint }))
        const refusals = [
          yield* ask(100, params), // guest 100 exists in the seed
          yield* ask(150, params, "overwrite"),
          yield* ask(150, params, "rollback"),
          yield* ask(150, { ...params, scenario: "guest-loss-total" }),
          yield* ask(150, { ...params, tier: "vzdump" }),
          yield* ask(150, params, "fresh", "decommission"),
          yield* ask(null, params)
        ]
        for (const r of refusals) expect(Either.isLeft(r)).toBe(true)
        expect(Either.getLeft(refusals[0]!).pipe(Option.getOrThrow)).toContain("a guest exists at 100")
        const tail = yield* audit.auditTail(8)
        expect(tail.map((e) => e.decision)).toEqual(["allowed", ...refusals.map(() => "refused:recovery-code")])
        for (const e of tail) expect(JSON.stringify(e)).toContain(k.fingerprint)
      }).pipe(Effect.provide(boxLayer(sim, box)))
    }))
})

describe("restoreHost: a crash at each durable write of one guest's recovery, then journal recovery", () => {
  it.scoped("ends restored (sealed) or with nothing of it left, after every write", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const k = newKey()
      yield* liveAndDie(sim, k, [100])
      const keyBox = newBox() // the new box's creds key and key dir, shared by every attempt
      const pub = yield* hostPublicKey(keyBox.creds)
      const bundle = bundleFor(pub, [ALL[0]!], k.fingerprint)
      // a clean run on a scratch copy of the world counts the writes
      const clean: Counter = { writes: 0, names: [] }
      const probeBox = { ...keyBox, db: join(tmp("felhom-hl-db-"), "state.db") }
      yield* Effect.gen(function*() {
        yield* install(k)
        const r = yield* runTimed(restoreHost({ bundle, keyFingerprint: k.fingerprint }))
        expect(outcomes(r)).toEqual([[100, "restored"]])
      }).pipe(Effect.provide(boxLayer(sim, probeBox, { gate: crashGate(0, "after", clean) })))
      const firstRecoverWrite = clean.names.findIndex((n) => n === "admit:recover")
      expect(firstRecoverWrite).toBeGreaterThan(-1)
      const total = clean.writes
      const ends = { restored: 0, gone: 0 }
      for (let at = firstRecoverWrite + 1; at <= total; at++) {
        for (const when of ["after"] as const) {
          // the box again: no guest, the PBS entry gone (as after wipeNode), a fresh database
          yield* sim.wipeNode()
          const box = { ...keyBox, db: join(tmp("felhom-hl-db-"), "state.db") }
          const counter: Counter = { writes: 0, names: [] }
          const exit = yield* runToExit(restoreHost({ bundle, keyFingerprint: k.fingerprint }).pipe(Effect.provide(boxLayer(sim, box, { gate: crashGate(at, when, counter) }))))
          const label = `${when} write ${at} (${clean.names[at - 1]}): ${exit._tag}`
          // the daemon's start: journal recovery on the same database
          yield* runTimed(recover).pipe(Effect.provide(boxLayer(sim, box)))
          const inFlight = yield* Effect.flatMap(OpLog, (o) => o.inFlight).pipe(Effect.provide(boxLayer(sim, box)))
          expect(inFlight, label).toEqual([])
          const g = yield* sim.guest(100)
          if (Option.isSome(g)) {
            // sealed: the customer's guest, with its identity; finished by the recovery
            expect(String(g.value.config["net0"]), label).toContain(`hwaddr=${MAC[100]}`)
            expect(String(g.value.config["tags"] ?? ""), label).not.toMatch(/felhom-prov-/)
            expect(g.value.status, label).toBe("running")
            ends.restored++
          } else {
            ends.gone++
            // nothing of it left: no volume of 100 on the restore target
            const vols = (yield* sim.storageContent("local-lvm")).filter((v) => /vm-100-/.test(String(v["volid"])))
            expect(vols, label).toEqual([])
          }
        }
      }
      // both ends are reached: early crashes are undone, crashes after the seal are finished
      expect(ends.restored).toBeGreaterThan(0)
      expect(ends.gone).toBeGreaterThan(0)
      expect(ends.restored + ends.gone).toBe(total - firstRecoverWrite)
    }), 240_000)
})
