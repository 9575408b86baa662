/**
 * Restore points and the tier choice of guest-loss DR (src/programs/bringup/tiers.ts, issue 12):
 * - chooseTier under every combination of surviving tiers (property): the fastest surviving tier,
 *   never a snapshot of a guest that is gone, the newest point within the tier, never another
 *   guest's point; an explicit source picks its tier or fails naming it;
 * - survivingPoints against the simulator: snapshots (only while the guest exists), vzdump
 *   archives on every backup storage, PBS snapshots with their encryption, and where it could
 *   not look; a listing that carries other guests' backups is not trusted;
 * - pbsKeyProblem: an encrypted PBS point on a storage without (its) key says exactly what is
 *   missing and carries no secret;
 * - recoverPlan / formatRecoverPlan: mode, restore target, layout and bulk volumes, identity,
 *   link-down, signature, the signed params.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, Layer, Option, Schema, TestClock } from "effect"
import { layerAt } from "../src/layers/Database.js"
import { GuestRecords } from "../src/layers/GuestRecords.js"
import { JournalLive } from "../src/layers/Journal.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import {
  ageInWords,
  chooseTier,
  formatRecoverPlan,
  pbsKeyProblem,
  pointsOfListing,
  type RecoverPlanInput,
  recoverPlan,
  type RecoverSource,
  type SurvivingPoint,
  survivingPoints,
  type Survivors,
  type Tier,
  TIER_ORDER
} from "../src/programs/bringup/tiers.js"
import { StorageId, VmId } from "../src/schema/ids.js"
import type { StorageConfigEntry } from "../src/schema/proxmox.js"
import { GuestPlacement, StorageManifest } from "../src/schema/storage.js"
import { defaultSeedJson, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { dbFile, runTimed } from "./engine-support.js"
import { inProcessProxmox, seedWith } from "./support.js"

type Json = Record<string, unknown>
const GiB = 1024 ** 3
const base = defaultSeedJson as { guests: ReadonlyArray<Json>; storages: ReadonlyArray<Json>; backups: ReadonlyArray<Json> }
const config100 = base.guests.find((g) => g["vmid"] === 100)!["config"] as Json
const { parent: _parent, ...config101 } = base.guests.find((g) => g["vmid"] === 101)!["config"] as Json

const PBS_FP = Array.from({ length: 32 }, (_, i) => (i * 7 % 256).toString(16).padStart(2, "0").toUpperCase()).join(":")
const KEY_FP = "0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9:0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9"
const STORAGES = [
  ...base.storages,
  { storage: "usb1", type: "dir", path: "/mnt/felhom/usb1", is_mountpoint: "yes", content: ["backup", "images", "rootdir"], total: 2048 * GiB, used: GiB },
  { storage: "nas", type: "nfs", server: "192.0.2.10", export: "/srv/backup", path: "/mnt/pve/nas", content: ["backup"], total: 500 * GiB, used: 0 },
  { storage: "pbs1", type: "pbs", server: "pbs.example.net", datastore: "felhom", username: "felhom@pbs!host1", fingerprint: PBS_FP, "encryption-key": KEY_FP, content: ["backup"], total: 1024 * GiB, used: 0 }
]

/** Guest 105 is gone: only its backups survive (local ×2, nas, pbs1); 101 exists with a snapshot; 106's PBS snapshot is beside them. */
const config105 = {
  ...config100,
  hostname: "cust-gamma",
  rootfs: "local-lvm:vm-105-disk-0,size=12G",
  mp0: "/var/lib/felhom/bootstrap/105,mp=/etc/felhom-bootstrap,ro=1",
  mp1: "usb1:vm-105-disk-1,mp=/srv/media,backup=0,size=100G"
}
const BULK_101 = "usb1:vm-101-disk-1,mp=/srv/media,backup=0,size=200G"
const backup = (storage: string, vmid: number, time: string, config: Json) => ({ storage, vmid, time, size: 700 * 1024 ** 2, config })
const SEED = {
  storages: STORAGES,
  guests: base.guests.map((g) => (g["vmid"] === 101 ? { ...g, config: { ...(g["config"] as Json), mp1: BULK_101 } } : g)),
  backups: [
    ...base.backups,
    backup("local", 105, "2026-01-10T03:00:00Z", config105),
    backup("local", 105, "2026-01-12T03:00:00Z", config105),
    backup("nas", 105, "2026-01-11T03:00:00Z", config105),
    backup("pbs1", 105, "2026-01-13T03:00:00Z", config105),
    backup("pbs1", 106, "2026-01-15T03:00:00Z", { ...config100, hostname: "other" }),
    backup("local", 101, "2026-01-13T04:00:00Z", { ...config101, mp1: BULK_101 })
  ]
}
const NOW = Date.parse("2026-01-16T03:00:00Z")
const LOCAL_105 = "local:backup/vzdump-lxc-105-2026_01_12-03_00_00.tar.zst"
const PBS_105 = "pbs1:backup/ct/105/2026-01-13T03:00:00Z"

const manifest = Schema.decodeUnknownSync(StorageManifest)([
  { id: "usb1", type: "usb", durable_id: "0c2d6a8e-6a3c-4a57-9d3e-3b8e0e8c1f11", class: "slow", role: "bulk-data", state: "attached" }
])
const input = (over: Partial<RecoverPlanInput> = {}): RecoverPlanInput => ({
  scenario: "total",
  source: "auto",
  desired: null,
  placement: undefined,
  manifest,
  ...over
})

const layerOf = (sim: SimPve, pve: Layer.Layer<Proxmox> = inProcessProxmox(sim, { node: "pve" }).pipe(Layer.orDie)) =>
  Layer.mergeAll(pve, JournalLive.pipe(Layer.provide(layerAt(dbFile())), Layer.orDie))

/** The simulator with the seed above, the clock at NOW, and the agent's layers over it. */
const withSim = <A, E>(body: (sim: SimPve) => Effect.Effect<A, E, Proxmox | GuestRecords>, extra: Json = {}, pve?: (sim: SimPve) => Layer.Layer<Proxmox>) =>
  Effect.scoped(Effect.gen(function*() {
    yield* TestClock.setTime(NOW)
    const sim = yield* makeSimPve(yield* seedWith({ ...SEED, ...extra }))
    return yield* runTimed(body(sim)).pipe(Effect.provide(layerOf(sim, pve?.(sim))))
  }))

// ---------------------------------------------------------------------------------------------
// chooseTier (pure)

const TARGET = 105
const pointArb: fc.Arbitrary<SurvivingPoint> = fc.record({
  vmid: fc.constantFrom(TARGET, TARGET, TARGET, 106, 1050),
  tier: fc.constantFrom<Tier>("snapshot", "vzdump", "pbs"),
  point: fc.stringMatching(/^[a-z]{1,6}$/),
  storage: fc.constant(null),
  takenAtMs: fc.integer({ min: 0, max: 10_000 }),
  encrypted: fc.constant(null)
})
const survivorsArb = fc.record({
  points: fc.array(pointArb, { maxLength: 12 }),
  guestExists: fc.boolean(),
  source: fc.constantFrom<RecoverSource>("auto", "snapshot", "vzdump", "pbs")
})

describe("chooseTier", () => {
  it.prop("picks the fastest surviving tier, never a snapshot when the guest is gone, the newest point within it, never another guest's", [survivorsArb], ([{ guestExists, points, source }]) => {
    const survivors: Survivors = { vmid: TARGET, guestExists, points, looked: [] }
    const eligible = points.filter((p) => p.vmid === TARGET && (p.tier !== "snapshot" || guestExists))
    const allowed = source === "auto" ? TIER_ORDER : [source]
    const r = chooseTier(survivors, { source, guestExists })
    if (Either.isLeft(r)) {
      expect(eligible.filter((p) => allowed.includes(p.tier))).toEqual([])
      expect(r.left.message).toContain(`guest ${TARGET}`)
      return
    }
    const chosen = r.right
    const from = points.find((p) => p.tier === chosen.tier && p.point === chosen.point && p.takenAtMs === chosen.takenAtMs && p.vmid === TARGET)
    expect(from).toBeDefined()
    if (chosen.tier === "snapshot") expect(guestExists).toBe(true)
    expect(allowed).toContain(chosen.tier)
    // the fastest surviving tier
    for (const faster of TIER_ORDER.slice(0, TIER_ORDER.indexOf(chosen.tier))) {
      if (allowed.includes(faster)) expect(eligible.filter((p) => p.tier === faster)).toEqual([])
    }
    // the newest within it
    for (const p of eligible.filter((x) => x.tier === chosen.tier)) expect(p.takenAtMs).toBeLessThanOrEqual(chosen.takenAtMs)
  })

  it("an explicit source with nothing in its tier fails naming it and where it looked; a snapshot needs the guest to exist", () => {
    const survivors: Survivors = {
      vmid: 105,
      guestExists: false,
      points: [{ vmid: 105, tier: "snapshot", point: "before", storage: null, takenAtMs: 5, encrypted: null }],
      looked: [
        { where: "snapshots of 105", tier: "snapshot", found: null, note: "the guest does not exist" },
        { where: "local", tier: "vzdump", found: 0 },
        { where: "pbs1", tier: "pbs", found: null, note: "pbs1: error fetching datastores" }
      ]
    }
    const snap = chooseTier(survivors, { source: "snapshot", guestExists: false })
    expect(Either.isLeft(snap) && snap.left.message).toBe(
      "guest 105: no snapshot to recover from (a snapshot can only bring back a guest that still exists); looked at: snapshots of 105 (snapshot): the guest does not exist; local (vzdump): 0 points; pbs1 (pbs): pbs1: error fetching datastores"
    )
    const pbs = chooseTier(survivors, { source: "pbs", guestExists: false })
    expect(Either.isLeft(pbs) && pbs.left).toMatchObject({ _tag: "NoRestorePoint", vmid: 105, source: "pbs" })
    expect(Either.isLeft(pbs) && pbs.left.message).toMatch(/^guest 105: no PBS snapshot to recover from; looked at: /)
  })

  it("a listing is not trusted to be this guest's: other guests' backups, QEMU backups and other storages' volumes are left out", () => {
    const entries = [
      { volid: "local:backup/vzdump-lxc-105-2026_01_12-03_00_00.tar.zst", content: "backup", ctime: 100, vmid: 105 },
      { volid: "local:backup/vzdump-lxc-106-2026_01_12-03_00_00.tar.zst", content: "backup", ctime: 200, vmid: 105 },
      { volid: "local:backup/vzdump-lxc-105-2026_01_13-03_00_00.tar.zst", content: "backup", ctime: 300, vmid: 106 },
      { volid: "local:backup/vzdump-qemu-105-2026_01_14-03_00_00.vma.zst", content: "backup", ctime: 400, vmid: 105 },
      { volid: "nas:backup/vzdump-lxc-105-2026_01_15-03_00_00.tar.zst", content: "backup", ctime: 500, vmid: 105 },
      { volid: "local:backup/vzdump-lxc-105-2026_01_09-03_00_00.tar.zst", content: "backup", vmid: 105 }
    ]
    const got = pointsOfListing(105, StorageId.make("local"), "vzdump", entries)
    expect(got.map((p) => [p.point, p.takenAtMs])).toEqual([
      ["local:backup/vzdump-lxc-105-2026_01_12-03_00_00.tar.zst", 100_000],
      ["local:backup/vzdump-lxc-105-2026_01_09-03_00_00.tar.zst", Date.parse("2026-01-09T03:00:00Z")]
    ])
  })
})

// ---------------------------------------------------------------------------------------------
// pbsKeyProblem (pure)

describe("pbsKeyProblem", () => {
  const point: SurvivingPoint = { vmid: 105, tier: "pbs", point: PBS_105, storage: StorageId.make("pbs1"), takenAtMs: 0, encrypted: KEY_FP }
  const storage = (key?: string): StorageConfigEntry => ({ storage: "pbs1", type: "pbs", ...(key === undefined ? {} : { "encryption-key": key }) })

  it("an encrypted snapshot on a storage without a key: the message says exactly what is missing", () => {
    const p = pbsKeyProblem(point, storage())
    expect(Option.getOrThrow(p).message).toBe(
      `PBS snapshot ${PBS_105} on storage pbs1 is encrypted (key fingerprint ${KEY_FP}) but storage pbs1 has no encryption key: the PBS key is missing on this host; restore the key from escrow with the recovery code (issue 13) or re-add the target with its key`
    )
    expect(Option.getOrThrow(pbsKeyProblem(point, undefined))._tag).toBe("PbsKeyMissing")
    expect(Option.getOrThrow(pbsKeyProblem({ ...point, encrypted: "1" }, storage())).message).toContain("(key fingerprint unknown)")
  })

  it("a storage holding another key is named too; the right key, an unencrypted snapshot or a vzdump point are no problem", () => {
    const other = "ff:".repeat(31) + "ff"
    expect(Option.getOrThrow(pbsKeyProblem(point, storage(other))).message).toContain(`encrypted with key fingerprint ${KEY_FP} but storage pbs1 holds the key with fingerprint ${other}`)
    expect(pbsKeyProblem(point, storage(KEY_FP.toUpperCase()))).toEqual(Option.none())
    expect(pbsKeyProblem(point, storage("1"))).toEqual(Option.none())
    expect(pbsKeyProblem({ ...point, encrypted: null }, storage())).toEqual(Option.none())
    expect(pbsKeyProblem({ ...point, tier: "vzdump" }, storage())).toEqual(Option.none())
  })
})

// ---------------------------------------------------------------------------------------------
// survivingPoints and recoverPlan against the simulator

describe("survivingPoints", () => {
  it.effect("a lost guest: every backup storage's archives of it (PBS with its key fingerprint), no snapshot, nothing of another guest", () =>
    withSim(() =>
      Effect.gen(function*() {
        const s = yield* survivingPoints(VmId.make(105))
        expect(s.guestExists).toBe(false)
        expect(s.points.map((p) => [p.tier, p.point, p.storage, p.encrypted]).sort()).toEqual([
          ["pbs", PBS_105, "pbs1", KEY_FP],
          ["vzdump", "local:backup/vzdump-lxc-105-2026_01_10-03_00_00.tar.zst", "local", null],
          ["vzdump", LOCAL_105, "local", null],
          ["vzdump", "nas:backup/vzdump-lxc-105-2026_01_11-03_00_00.tar.zst", "nas", null]
        ])
        expect(s.points.every((p) => p.vmid === 105)).toBe(true)
        expect(s.looked).toEqual([
          { where: "snapshots of 105", tier: "snapshot", found: null, note: "the guest does not exist" },
          { where: "local", tier: "vzdump", found: 2 },
          { where: "nas", tier: "vzdump", found: 1 },
          { where: "pbs1", tier: "pbs", found: 1 },
          { where: "usb1", tier: "vzdump", found: 0 }
        ])
      })))

  it.effect("an existing guest: its finished snapshots too; a storage that is offline is noted, the rest still count", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* sim.setStorage("nas", { online: false })
        const s = yield* survivingPoints(VmId.make(101))
        expect(s.guestExists).toBe(true)
        expect(s.points.map((p) => [p.tier, p.point])).toEqual([
          ["snapshot", "pre_upgrade"],
          ["vzdump", "local:backup/vzdump-lxc-101-2026_01_13-04_00_00.tar.zst"]
        ])
        expect(s.points[0]!.takenAtMs).toBe(1_768_356_000_000)
        expect(s.looked.find((l) => l.where === "nas")).toMatchObject({ found: null })
        expect(s.looked.find((l) => l.where === "nas")?.note).toMatch(/not active|not online/)
      })))
})

describe("recoverPlan", () => {
  it.effect("a lost guest, auto: the newest local vzdump (not the newer PBS snapshot), restored fresh into the archive's rootfs storage; unsigned only while the agent knows nothing of the vmid", () =>
    withSim(() =>
      Effect.gen(function*() {
        const plan = yield* recoverPlan(VmId.make(105), input())
        expect(plan).toMatchObject({
          vmid: 105,
          scenario: "guest-loss-total",
          guestExists: false,
          mode: "fresh",
          point: { tier: "vzdump", point: LOCAL_105, backupStorage: "local", takenAtMs: Date.parse("2026-01-12T03:00:00Z") },
          ageSeconds: 4 * 86_400,
          storage: "local-lvm",
          linkDown: false,
          needsSignature: false,
          overwriteLosses: []
        })
        expect(plan.gatedParams).toEqual({ scenario: "guest-loss-total", tier: "vzdump", point: LOCAL_105, storage: "local-lvm" })
        expect(plan.layout?.layout).toEqual({ rootfs: "local-lvm:12", mounts: { mp1: "usb1:100,mp=/srv/media,backup=0" } })
        expect(plan.dropped.map((d) => d.key)).toEqual(["mp0"])
        expect(plan.bulk).toMatchObject([{ volume: "mp1", status: "recreated-empty", original: "gone", backupDecision: null }])
        const text = formatRecoverPlan(plan)
        expect(text).toContain(`recover guest 105 (guest-loss-total): restore guest 105 (absent) from vzdump archive ${LOCAL_105} on local`)
        expect(text).toContain("taken 2026-01-12 03:00:00 UTC, 4 days ago")
        expect(text).toContain("kept: mac, hostname, controller-identity, restic-identity, tunnel")
        expect(text).toContain("reset: machine-id, ssh-host-keys")
        expect(text).toContain("bulk mp1 /srv/media (100 GiB on usb1): THIS HOST CANNOT BRING IT BACK (the original usb1:vm-105-disk-1 is gone)")
        expect(text).toContain("not restored: mp0 bind mount /var/lib/felhom/bootstrap/105 at /etc/felhom-bootstrap")
        expect(text).toContain("no signature needed")
        // a vmid the agent recorded (customer or lost) needs a signature even for a fresh restore
        yield* Effect.flatMap(GuestRecords, (g) => g.markLost(105, "vanished"))
        expect((yield* recoverPlan(VmId.make(105), input())).needsSignature).toBe(true)
      })))

  it.effect("the desired guest's size and placement shape the layout; a bulk volume's own-backup decision is shown", () =>
    withSim(() =>
      Effect.gen(function*() {
        const placement = Schema.decodeUnknownSync(GuestPlacement)({
          vmid: 105,
          volumes: [{ volume: "mp1", kind: "bulk", target: "usb1", backup: { target: "nas" } }]
        })
        const desired = { vmid: VmId.make(105), hostname: "cust-gamma", memory_bytes: 2 * GiB, swap_mib: 512, rootfs_gib: 20, power: "running" as const, description: "", tags: [] }
        const plan = yield* recoverPlan(VmId.make(105), input({ desired, placement }))
        expect(plan.layout?.layout.rootfs).toBe("local-lvm:20")
        expect(plan.bulk[0]?.backupDecision).toEqual({ target: "nas" })
        expect(formatRecoverPlan(plan)).toContain("its own backup is on nas: restore it from there")
      })))

  it.effect("partial loss: a fresh MAC and every NIC link-down until confirmed", () =>
    withSim(() =>
      Effect.gen(function*() {
        const plan = yield* recoverPlan(VmId.make(105), input({ scenario: "partial" }))
        expect(plan.scenario).toBe("guest-loss-partial")
        expect(plan.linkDown).toBe(true)
        expect(plan.identity.find((r) => r.attribute === "mac")?.treatment).toBe("fresh")
        expect(formatRecoverPlan(plan)).toContain("every NIC stays link-down until an operator confirms")
        expect(plan.gatedParams.scenario).toBe("guest-loss-partial")
      })))

  it.effect("an existing guest, auto: a rollback to its newest snapshot, always signed; vzdump: an overwrite that names the bulk volume PVE would destroy, and its original as re-attachable", () =>
    withSim(() =>
      Effect.gen(function*() {
        const rollback = yield* recoverPlan(VmId.make(101), input())
        expect(rollback).toMatchObject({ mode: "rollback", point: { tier: "snapshot", point: "pre_upgrade", backupStorage: null }, storage: "local-lvm", layout: null, needsSignature: true })
        expect(formatRecoverPlan(rollback)).toContain("identity: unchanged")
        const overwrite = yield* recoverPlan(VmId.make(101), input({ source: "vzdump" }))
        expect(overwrite).toMatchObject({ mode: "overwrite", needsSignature: true, point: { tier: "vzdump" } })
        expect(overwrite.overwriteLosses).toEqual([{ key: "mp1", volid: "usb1:vm-101-disk-1", path: "/srv/media" }])
        expect(overwrite.bulk).toMatchObject([{ volume: "mp1", status: "reattachable", original: "exists" }])
        const text = formatRecoverPlan(overwrite)
        expect(text).toContain("restore OVER the existing guest 101")
        expect(text).toContain("DESTROYED by the overwrite: mp1 usb1:vm-101-disk-1 at /srv/media")
      })))

  it.effect("a bulk target the manifest says is disconnected: its original is unreachable, reported as not recoverable here", () =>
    withSim(() =>
      Effect.gen(function*() {
        const off = Schema.decodeUnknownSync(StorageManifest)([{ ...manifest[0], durable_id: "0c2d6a8e-6a3c-4a57-9d3e-3b8e0e8c1f11", state: "disconnected" }])
        const plan = yield* recoverPlan(VmId.make(101), input({ source: "vzdump", manifest: off }))
        expect(plan.bulk).toMatchObject([{ status: "recreated-empty", original: "unreachable", detail: "target usb1 is not attached" }])
        expect(formatRecoverPlan(plan)).toContain("THIS HOST CANNOT BRING IT BACK (its storage cannot be read now (target usb1 is not attached))")
      })))

  it.effect("PBS: chosen when nothing local survives; an encrypted snapshot whose storage has its key plans fine", () =>
    withSim((sim) =>
      Effect.gen(function*() {
        yield* sim.setStorage("local", { online: false })
        yield* sim.setStorage("nas", { online: false })
        const plan = yield* recoverPlan(VmId.make(105), input())
        expect(plan.point).toMatchObject({ tier: "pbs", point: PBS_105, backupStorage: "pbs1" })
        expect(plan.storage).toBe("local-lvm")
        expect(formatRecoverPlan(plan)).toContain(`PBS snapshot ${PBS_105} on pbs1`)
      })))

  it.effect("PBS without the key on this host: refused with what is missing, and no secret in the message", () =>
    withSim(
      (sim) =>
        Effect.gen(function*() {
          const e = yield* Effect.flip(recoverPlan(VmId.make(105), input({ source: "pbs" })))
          expect(e._tag).toBe("PbsKeyMissing")
          expect(e.message).toContain(`PBS snapshot ${PBS_105} on storage pbs1 is encrypted (key fingerprint ${KEY_FP}) but storage pbs1 has no encryption key: the PBS key is missing on this host`)
          expect(e.message).not.toContain(sim.tokenSecret)
          // nothing was restored or changed
          expect((yield* sim.requests).filter((r) => r.method !== "GET")).toEqual([])
        }),
      {},
      // this host's PVE entry for pbs1 has no key (a new host, or the key file lost)
      (sim) =>
        Layer.effect(Proxmox, Effect.map(Proxmox, (p) => ({
          ...p,
          storageList: Effect.map(p.storageList, (l) => l.map(({ "encryption-key": _k, ...rest }) => rest))
        }))).pipe(Layer.provide(inProcessProxmox(sim, { node: "pve" })), Layer.orDie)
    ))

  it.effect("nothing survives: refused, saying where it looked; a snapshot source for a lost guest is refused too", () =>
    withSim(() =>
      Effect.gen(function*() {
        const none = yield* Effect.flip(recoverPlan(VmId.make(107), input()))
        expect(none._tag).toBe("NoRestorePoint")
        expect(none.message).toBe(
          "guest 107: no snapshot, vzdump archive or PBS snapshot to recover from; looked at: snapshots of 107 (snapshot): the guest does not exist; local (vzdump): 0 points; nas (vzdump): 0 points; pbs1 (pbs): 0 points; usb1 (vzdump): 0 points"
        )
        const snap = yield* Effect.flip(recoverPlan(VmId.make(105), input({ source: "snapshot" })))
        expect(snap.message).toContain("a snapshot can only bring back a guest that still exists")
      })))

  it.effect("no storage to restore into: the archive's rootfs storage is not attached and no provisioning storage: refused; with one: used", () =>
    withSim(
      () =>
        Effect.gen(function*() {
          const e = yield* Effect.flip(recoverPlan(VmId.make(105), input()))
          expect(e._tag).toBe("RecoverPlanRefused")
          expect(e.message).toBe("guest 105: no storage to restore into: the archive's rootfs storage gone-lvm is not attached here, and the desired state names no provisioning storage")
          const plan = yield* recoverPlan(VmId.make(105), input({ provisioningStorage: StorageId.make("local-lvm") }))
          expect(plan.storage).toBe("local-lvm")
          expect(plan.layout?.layout.rootfs).toBe("local-lvm:12")
        }),
      { backups: [backup("local", 105, "2026-01-12T03:00:00Z", { ...config105, rootfs: "gone-lvm:vm-105-disk-0,size=12G" })] }
    ))
})

describe("ageInWords", () => {
  it("the largest unit and the next when it is not zero", () => {
    expect([0, 1, 59, 61, 3600, 3661, 86_400, 90_061, 4 * 86_400, 400 * 86_400 + 7200].map(ageInWords)).toEqual([
      "0 seconds",
      "1 second",
      "59 seconds",
      "1 minute 1 second",
      "1 hour",
      "1 hour 1 minute",
      "1 day",
      "1 day 1 hour",
      "4 days",
      "400 days 2 hours"
    ])
  })
})
