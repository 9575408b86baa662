/**
 * The explicit restore layout (src/programs/bringup/layout.ts) and what it fixes (issue 12):
 * - the simulator's GET /nodes/{node}/vzdump/extractconfig, through the production client
 *   (Proxmox.extractConfig + parseConfigText): the archive's config, PVE's errors and privileges;
 * - restoreLayout: bind/device mounts dropped, hot volumes on their target, bulk ones recreated
 *   empty on theirs (or omitted), sizes rounded up and never shrunk; a property over random
 *   archive configs;
 * - overwriteLosses / bulkSurvivors;
 * - a guest with a controller (the bootstrap bind mount in its backup) passes its restore-test,
 *   where PVE's storage-only restore refuses the archive to a token; a signed restore-now of such
 *   a guest works, and one that would destroy a bulk volume is refused before anything is sent.
 */
import { describe, expect, it } from "@effect/vitest"
import { HttpClientRequest } from "@effect/platform"
import { Effect, Either, Exit, FastCheck as fc, Layer, Option, Schema } from "effect"
import { layerAt } from "../src/layers/Database.js"
import { guestHealthFromSim } from "../src/layers/GuestHealth.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { JournalLive } from "../src/layers/Journal.js"
import { ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { parseConfigText, Proxmox } from "../src/layers/Proxmox.js"
import { bulkSurvivors, overwriteLosses, parseMount, restoreLayout, type RestoreLayout, sizeGibOf } from "../src/programs/bringup/layout.js"
import { runSignedJob } from "../src/programs/control/jobs.js"
import { UTC } from "../src/programs/protection/calendar.js"
import { type RestoreTestOutcome, restoreTestPass } from "../src/programs/protection/restoreTest.js"
import { restoreTestSettings } from "../src/programs/protection/scratch.js"
import { DesiredState } from "../src/schema/desired.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { GuestPlacement } from "../src/schema/storage.js"
import { defaultSeedJson, makeSimHttpClient, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { agentLayer as engineLayer, dbFile, job, runTimed, runToExit, signedOp } from "./engine-support.js"
import { inProcessProxmox, seedWith } from "./support.js"

type Json = Record<string, unknown>
const GiB = 1024 ** 3
const MiB = 1024 ** 2
const base = defaultSeedJson as { guests: ReadonlyArray<Json>; storages: ReadonlyArray<Json>; backups: ReadonlyArray<Json> }
const config100 = base.guests.find((g) => g["vmid"] === 100)!["config"] as Json

const BOOTSTRAP = "/var/lib/felhom/bootstrap/100,mp=/etc/felhom-bootstrap,ro=1"
const BACKUP_100 = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
const USB1 = { storage: "usb1", type: "dir", path: "/mnt/felhom/usb1", is_mountpoint: "yes", content: ["images", "rootdir"], total: 2048 * GiB, used: GiB }
const PBS_FP = Array.from({ length: 32 }, (_, i) => (i * 7 % 256).toString(16).padStart(2, "0").toUpperCase()).join(":")
const KEY_FP = "0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9:0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9"
const PBS1 = { storage: "pbs1", type: "pbs", server: "pbs.example.net", datastore: "felhom", username: "felhom@pbs!host1", fingerprint: PBS_FP, "encryption-key": KEY_FP, content: ["backup"], total: 1024 * GiB, used: 0 }

/** Guest 100 with a controller: the bootstrap bind mount in its config and in its nightly backup. */
const withController = (extraConfig: Json = {}, extraBackup: Json = {}) =>
  seedWith({
    storages: [...base.storages, USB1, PBS1],
    guests: base.guests.map((g) => (g["vmid"] === 100 ? { ...g, config: { ...config100, mp0: BOOTSTRAP, ...extraConfig } } : g)),
    backups: [
      ...base.backups.map((b) => (b["vmid"] === 100 ? { ...b, config: { ...(b["config"] as Json), mp0: BOOTSTRAP, ...extraBackup } } : b)),
      { storage: "pbs1", vmid: 100, time: "2026-01-15T02:00:00Z", size: 734003200, config: { ...config100, mp0: BOOTSTRAP } }
    ]
  })

const pveLayer = (sim: SimPve) => inProcessProxmox(sim, { node: "pve" })

/** The raw answer of GET extractconfig (status, data, message), as a client sees it. */
const rawExtract = (sim: SimPve, volume: string) =>
  Effect.gen(function*() {
    const client = makeSimHttpClient(sim)
    const res = yield* client.execute(
      HttpClientRequest.get(`https://127.0.0.1:8006/api2/json/nodes/pve/vzdump/extractconfig?volume=${encodeURIComponent(volume)}`).pipe(
        HttpClientRequest.setHeader("Authorization", sim.authorization)
      )
    )
    const body = (yield* res.json) as { data: unknown; message?: string }
    return { status: res.status, data: body.data, message: body.message ?? "" }
  }).pipe(Effect.orDie)

// ---------------------------------------------------------------------------------------------

describe("simulator: GET /nodes/{node}/vzdump/extractconfig", () => {
  it.scoped("the archive's config as PVE prints it: description as # comments, key: value lines, no snapshot section; Proxmox.extractConfig reads it", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* withController())
      const raw = yield* rawExtract(sim, BACKUP_100)
      expect(raw.status).toBe(200)
      const text = raw.data as string
      expect(text.split("\n")[0]).toBe("#felhom customer guest alpha")
      expect(text).toContain("\nmp0: /var/lib/felhom/bootstrap/100,mp=/etc/felhom-bootstrap,ro=1\n")
      expect(text).toContain("\nrootfs: local-lvm:vm-100-disk-0,size=16G\n")
      expect(text).not.toMatch(/^\[/m)
      expect(text).not.toMatch(/^(lock|parent|digest):/m)
      const parsed = yield* Effect.flatMap(Proxmox, (p) => p.extractConfig(VolumeId.make(BACKUP_100))).pipe(Effect.provide(pveLayer(sim)))
      expect(parsed).toEqual({ ...Object.fromEntries(Object.entries(config100).filter(([k]) => k !== "description").map(([k, v]) => [k, String(v)])), mp0: BOOTSTRAP })
      // a PBS snapshot's pct.conf the same way
      const pbs = yield* Effect.flatMap(Proxmox, (p) => p.extractConfig(VolumeId.make("pbs1:backup/ct/100/2026-01-15T02:00:00Z"))).pipe(Effect.provide(pveLayer(sim)))
      expect(pbs["mp0"]).toBe(BOOTSTRAP)
    }))

  it.scoped("PVE's errors: a missing archive, a volume that is not a backup, an unknown storage, a path, an offline storage", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* withController())
      const missing = yield* rawExtract(sim, "local:backup/vzdump-lxc-100-2020_01_01-00_00_00.tar.zst")
      expect([missing.status, missing.message]).toEqual([500, "can't find file 'local:backup/vzdump-lxc-100-2020_01_01-00_00_00.tar.zst'\n"])
      const template = yield* rawExtract(sim, "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst")
      expect([template.status, template.message]).toEqual([500, "unable to use volume local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst - content type needs to be 'backup'\n"])
      const disk = yield* rawExtract(sim, "local-lvm:vm-100-disk-0")
      expect(disk.message).toMatch(/content type needs to be 'backup'/)
      expect((yield* rawExtract(sim, "nowhere:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst")).message).toBe("storage 'nowhere' does not exist\n")
      expect((yield* rawExtract(sim, "/etc/pve/priv/token.cfg")).message).toBe("Only root can pass arbitrary filesystem paths.\n")
      const missingPbs = yield* rawExtract(sim, "pbs1:backup/ct/100/2020-01-01T00:00:00Z")
      expect(missingPbs.status).toBe(500)
      expect(missingPbs.message).toMatch(/^proxmox-backup-client failed: Error: /)
      yield* sim.setStorage("pbs1", { online: false })
      expect((yield* rawExtract(sim, "pbs1:backup/ct/100/2026-01-15T02:00:00Z")).message).toMatch(/Connection refused/)
      // through the client: a typed error, never a crash
      // (a 500 on a read is retried on the Clock: runTimed moves it)
      const e = yield* runTimed(Effect.flip(Effect.flatMap(Proxmox, (p) => p.extractConfig(VolumeId.make("local:backup/vzdump-lxc-100-2020_01_01-00_00_00.tar.zst"))))).pipe(Effect.provide(pveLayer(sim)))
      expect(e._tag).toBe("PveApiError")
    }))

  it.scoped("privileges: VM.Backup on the backed-up guest is needed even with Datastore.Allocate on the storage (403 naming it)", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* withController())
      yield* sim.revoke("felhom@pve!agent", "/vms/100", ["VM.Backup"])
      const denied = yield* rawExtract(sim, BACKUP_100)
      expect([denied.status, denied.message]).toEqual([403, "Permission check failed (/vms/100, VM.Backup)\n"])
      const e = yield* Effect.flip(Effect.flatMap(Proxmox, (p) => p.extractConfig(VolumeId.make(BACKUP_100)))).pipe(Effect.provide(pveLayer(sim)))
      expect(e._tag === "PveApiError" && e.permission).toEqual({ aclPath: "/vms/100", privileges: ["VM.Backup"] })
    }))

  it.scoped("without Datastore.Allocate: Datastore.AllocateSpace on the storage is needed too", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* withController())
      yield* sim.revoke("felhom@pve!agent", "/storage/local", ["Datastore.Allocate", "Datastore.AllocateSpace"])
      expect((yield* rawExtract(sim, BACKUP_100)).message).toBe("Permission check failed (/storage/local, Datastore.AllocateSpace)\n")
    }))

  it("parseConfigText keeps only the main section and never writes through __proto__", () => {
    const parsed = parseConfigText("#a comment\nrootfs: local-lvm:vm-1-disk-0,size=8G\n__proto__: x\n\n[snap]\nrootfs: other\n")
    expect(parsed).toEqual({ rootfs: "local-lvm:vm-1-disk-0,size=8G" })
    expect(Object.getPrototypeOf(parsed)).toBe(null)
  })
})

// ---------------------------------------------------------------------------------------------

const placementOf = (volumes: ReadonlyArray<Json>) => Schema.decodeUnknownSync(GuestPlacement)({ vmid: 100, volumes })
const local = StorageId.make("local-lvm")

describe("restoreLayout", () => {
  const archive = {
    rootfs: "local-lvm:vm-100-disk-0,size=16G",
    mp0: BOOTSTRAP,
    mp1: "local-lvm:vm-100-disk-1,mp=/var/lib/postgresql,backup=1,size=10G,acl=1",
    mp2: "usb1:vm-100-disk-2,mp=/srv/media,backup=0,size=500G",
    mp3: "/dev/ttyUSB0,mp=/dev/ttyUSB0",
    hostname: "cust-alpha"
  }

  it("a controller's guest: the bind and device mounts dropped and reported; hot on the restore storage; bulk recreated empty on its own storage", () => {
    const r = Either.getOrThrow(restoreLayout(archive, { storage: local }))
    expect(r.layout).toEqual({
      rootfs: "local-lvm:16",
      mounts: {
        mp1: "local-lvm:10,mp=/var/lib/postgresql,backup=1,acl=1",
        mp2: "usb1:500,mp=/srv/media,backup=0"
      }
    })
    expect(r.dropped).toEqual([
      { key: "mp0", type: "bind", source: "/var/lib/felhom/bootstrap/100", path: "/etc/felhom-bootstrap" },
      { key: "mp3", type: "device", source: "/dev/ttyUSB0", path: "/dev/ttyUSB0" }
    ])
    expect(r.bulk).toEqual([{
      volume: "mp2",
      path: "/srv/media",
      originalVolid: "usb1:vm-100-disk-2",
      target: "usb1",
      sizeGib: 500,
      backupDecision: null,
      status: "recreated-empty",
      original: "unchecked"
    }])
  })

  it("with a placement: hot volumes on their fast target, bulk on its target with its backup decision; the desired rootfs size grows, never shrinks", () => {
    const placement = placementOf([
      { volume: "mp1", kind: "hot", target: "nvme" },
      { volume: "mp2", kind: "bulk", target: "usb2", backup: { none: { reason: "replaceable media" } }, path: "/srv/media", size_gib: 600 }
    ])
    const grown = Either.getOrThrow(restoreLayout(archive, { storage: local, placement, rootfsGib: 20 }))
    expect(grown.layout.rootfs).toBe("local-lvm:20")
    expect(grown.layout.mounts["mp1"]).toBe("nvme:10,mp=/var/lib/postgresql,backup=1,acl=1")
    expect(grown.layout.mounts["mp2"]).toBe("usb2:600,mp=/srv/media,backup=0")
    expect(grown.bulk[0]).toMatchObject({ target: "usb2", sizeGib: 600, backupDecision: { none: { reason: "replaceable media" } } })
    const kept = Either.getOrThrow(restoreLayout(archive, { storage: local, rootfsGib: 8 }))
    expect(kept.layout.rootfs).toBe("local-lvm:16")
  })

  it("bulk omitted (a scratch copy): not in the layout, reported as omitted", () => {
    const r = Either.getOrThrow(restoreLayout(archive, { storage: StorageId.make("scratch"), bulk: "omit" }))
    expect(Object.keys(r.layout.mounts)).toEqual(["mp1"])
    expect(r.layout.mounts["mp1"]).toMatch(/^scratch:10,/)
    expect(r.bulk.map((b) => [b.volume, b.status])).toEqual([["mp2", "omitted"]])
  })

  it("sizes in PVE's units round up to whole GiB; a volume mount point without backup=1 is bulk (PVE's default is 0)", () => {
    expect([sizeGibOf("8G"), sizeGibOf("8.5G"), sizeGibOf("512M"), sizeGibOf("1073741825"), sizeGibOf("2T"), sizeGibOf("0"), sizeGibOf("x")]).toEqual(
      [Option.some(8), Option.some(9), Option.some(1), Option.some(2), Option.some(2048), Option.none(), Option.none()]
    )
    const r = Either.getOrThrow(restoreLayout({ rootfs: "a:vm-1-disk-0,size=1500M", mp4: "b:vm-1-disk-1,mp=/x,size=1G" }, { storage: local }))
    expect(r.layout).toEqual({ rootfs: "local-lvm:2", mounts: { mp4: "b:1,mp=/x,backup=0" } })
  })

  it("refused (never sent) when the archive's config cannot be laid out safely", () => {
    const refused = (cfg: Record<string, string>, rootfsGib?: number) =>
      Either.match(restoreLayout(cfg, { storage: local, rootfsGib }), { onLeft: (e) => e.message, onRight: () => "laid out" })
    expect(refused({ hostname: "x" })).toMatch(/no rootfs/)
    expect(refused({ rootfs: "local-lvm:vm-1-disk-0" })).toMatch(/no size/)
    expect(refused({ rootfs: "local-lvm:vm-1-disk-0" }, 8)).toBe("laid out")
    expect(refused({ rootfs: "a:b,size=1G", mp0: "a:c,mp=/srv/../etc,size=1G" })).toMatch(/no usable mount path/)
    expect(refused({ rootfs: "a:b,size=1G", mp0: "a:c,size=1G" })).toMatch(/no usable mount path/)
    expect(refused({ rootfs: "a:b,size=1G", mp0: "a:c,mp=/x,backup=1" })).toMatch(/mp0 \(\/x\) has no size/)
    expect(refused({ rootfs: "a:b,size=1G", mp0: "a:c,mp=/x,size=1G,size=2G" })).toMatch(/unreadable/)
    // unknown or odd options are not carried into what PVE receives
    const r = Either.getOrThrow(restoreLayout({ rootfs: "a:b,size=1G", mp0: "a:c,mp=/x,backup=1,size=1G,mountoptions=noatime;rw=1,shared=1,quota=1" }, { storage: local }))
    expect(r.layout.mounts["mp0"]).toBe("local-lvm:1,mp=/x,backup=1,quota=1")
  })

  // -------------------------------------------------------------------------------------------
  // property: over random archive configs

  const sizeArb = fc.oneof(
    fc.integer({ min: 1, max: 4096 }).map((n) => `${n}G`),
    fc.integer({ min: 1, max: 4_000_000 }).map((n) => `${n}M`),
    fc.integer({ min: 1, max: 4 }).map((n) => `${n}T`),
    fc.integer({ min: 1, max: 2 ** 40 }).map(String)
  )
  const mountArb = fc.record({
    kind: fc.constantFrom("hot", "bulk", "bind", "device"),
    storage: fc.constantFrom("local-lvm", "usb1", "nas"),
    size: sizeArb,
    path: fc.stringMatching(/^\/[a-z]{1,8}(\/[a-z0-9]{1,6}){0,2}$/)
  })
  const configArb = fc.record({
    rootSize: sizeArb,
    mounts: fc.dictionary(fc.integer({ min: 0, max: 255 }).map((n) => `mp${n}`), mountArb, { maxKeys: 8 })
  })
  const GIB_OF = (s: string) => Option.getOrThrow(sizeGibOf(s))
  const layoutGib = (v: string) => Number(/^[^:]+:(\d+)/.exec(v)![1])

  it.prop("no bind or device mount ever in the layout; every volume mount point is laid out or reported; sizes never shrink", [configArb, fc.boolean(), fc.option(fc.integer({ min: 1, max: 8192 }), { nil: undefined })], ([c, omit, rootfsGib]) => {
    const cfg: Record<string, string> = { rootfs: `local-lvm:vm-100-disk-0,size=${c.rootSize}` }
    for (const [key, m] of Object.entries(c.mounts)) {
      cfg[key] = m.kind === "bind"
        ? `/host${m.path},mp=${m.path}`
        : m.kind === "device"
        ? `/dev/sd${key},mp=${m.path}`
        : `${m.storage}:vm-100-disk-${key.slice(2)},mp=${m.path},backup=${m.kind === "hot" ? 1 : 0},size=${m.size}`
    }
    const r = Either.getOrThrow(restoreLayout(cfg, { storage: local, bulk: omit ? "omit" : "recreate", rootfsGib }))
    expect(layoutGib(r.layout.rootfs)).toBeGreaterThanOrEqual(Math.max(GIB_OF(c.rootSize), rootfsGib ?? 0))
    for (const [key, value] of Object.entries(r.layout.mounts)) {
      const mp = Either.getOrThrow(parseMount(key, value))
      expect(mp.type).toBe("volume")
      expect(c.mounts[key]?.kind === "hot" || c.mounts[key]?.kind === "bulk").toBe(true)
      expect(layoutGib(value)).toBeGreaterThanOrEqual(GIB_OF(c.mounts[key]!.size))
      expect(mp.props["mp"]).toBe(c.mounts[key]!.path)
    }
    for (const [key, m] of Object.entries(c.mounts)) {
      const laid = r.layout.mounts[key] !== undefined
      const reported = r.bulk.filter((b) => b.volume === key)
      const dropped = r.dropped.filter((d) => d.key === key)
      if (m.kind === "hot") expect([laid, reported.length, dropped.length]).toEqual([true, 0, 0])
      if (m.kind === "bulk") {
        expect([laid, reported.length, dropped.length]).toEqual([!omit, 1, 0])
        expect(reported[0]!.sizeGib).toBeGreaterThanOrEqual(GIB_OF(m.size))
        expect(reported[0]!.originalVolid).toBe(`${m.storage}:vm-100-disk-${key.slice(2)}`)
      }
      if (m.kind === "bind" || m.kind === "device") expect([laid, reported.length, dropped.length]).toEqual([false, 0, 1])
    }
  })
})

describe("overwriteLosses and bulkSurvivors", () => {
  it("a restore over a guest destroys its own volumes outside its backups: those are listed; bind mounts, backed-up volumes and another guest's volumes are not", () => {
    expect(overwriteLosses(100, {
      rootfs: "local-lvm:vm-100-disk-0,size=16G",
      mp0: BOOTSTRAP,
      mp1: "local-lvm:vm-100-disk-1,mp=/db,backup=1,size=1G",
      mp2: "usb1:100/vm-100-disk-2.raw,mp=/srv/media,size=500G",
      mp3: "usb1:vm-200-disk-0,mp=/shared,size=1G",
      mp4: "nas:odd-name,mp=/odd,backup=0,size=1G"
    })).toEqual([
      { key: "mp2", volid: "usb1:100/vm-100-disk-2.raw", path: "/srv/media" },
      { key: "mp4", volid: "nas:odd-name", path: "/odd" }
    ])
  })

  it.scoped("the original of a bulk volume: exists (reattachable), gone, or its storage unreachable", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* withController({ mp2: "usb1:vm-100-disk-2,mp=/srv/media,backup=0,size=500G" }))
      const r: RestoreLayout = Either.getOrThrow(restoreLayout({
        rootfs: "local-lvm:vm-100-disk-0,size=16G",
        mp2: "usb1:vm-100-disk-2,mp=/srv/media,backup=0,size=500G",
        mp3: "usb1:vm-100-disk-3,mp=/srv/photos,backup=0,size=10G",
        mp4: "local-lvm:vm-100-disk-4,mp=/tmp/x,backup=0,size=1G"
      }, { storage: local }))
      const checked = yield* bulkSurvivors(r).pipe(Effect.provide(pveLayer(sim)))
      expect(checked.map((b) => [b.volume, b.status, b.original])).toEqual([
        ["mp2", "reattachable", "exists"],
        ["mp3", "recreated-empty", "gone"],
        ["mp4", "recreated-empty", "gone"]
      ])
      yield* sim.setStorage("usb1", { online: false })
      const offline = yield* runTimed(bulkSurvivors(r)).pipe(Effect.provide(pveLayer(sim)))
      expect(offline.map((b) => [b.volume, b.status, b.original])).toEqual([
        ["mp2", "recreated-empty", "unreachable"],
        ["mp3", "recreated-empty", "unreachable"],
        ["mp4", "recreated-empty", "gone"]
      ])
      expect(offline[0]!.detail).toMatch(/mount point/)
      // omitted volumes are never looked up: a scratch copy never attaches the real one
      const omitted = Either.getOrThrow(restoreLayout({ rootfs: "local-lvm:x,size=1G", mp2: "usb1:vm-100-disk-2,mp=/srv/media,size=1G" }, { storage: local, bulk: "omit" }))
      const before = (yield* sim.requests).length
      expect((yield* bulkSurvivors(omitted).pipe(Effect.provide(pveLayer(sim))))[0]).toMatchObject({ status: "omitted", original: "unchecked" })
      expect((yield* sim.requests).length).toBe(before)
    }))
})

// ---------------------------------------------------------------------------------------------
// The fix: restore-test and restore-now of a guest with a controller

const SETTINGS = { scratchMin: 999_900, scratchMax: 999_999, timeZone: UTC, passIntervalSeconds: 60 }
const desired100 = Schema.decodeUnknownSync(DesiredState)({
  generation: 1,
  guests: [{ vmid: 100, hostname: "cust-alpha", cores: 2, memory_bytes: 2048 * MiB, swap_mib: 512, rootfs_gib: 16, power: "running", description: "", tags: [] }],
  storage: [{ id: "local", type: "local-dir", durable_id: "/var/lib/vz", class: "slow", role: "vzdump-target", policy: { schedule: "02:00", retention: { keep_last: 7 } }, state: "attached" }]
})

const protectionLayer = (sim: SimPve) => {
  const db = layerAt(dbFile())
  return Layer.mergeAll(
    pveLayer(sim),
    JournalLive.pipe(Layer.provide(db)),
    ProtectionStoreLive.pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    guestHealthFromSim(sim),
    restoreTestSettings(SETTINGS)
  ).pipe(Layer.orDie)
}

const runOk = <A, E, R>(eff: Effect.Effect<A, E, R>) =>
  Effect.flatMap(runToExit(eff), (exit) => (Exit.isSuccess(exit) ? Effect.succeed(exit.value) : Effect.dieMessage(`failed: ${String(exit.cause)}`)))

describe("restore-test and restore-now of a guest with a controller", () => {
  it.scoped("PVE's storage-only restore refuses the archive to a token ('only possible for root'): the bug this fixes", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* withController())
      const pve = yield* Effect.provide(Proxmox, pveLayer(sim))
      const upid = yield* pve.restore({ vmid: VmId.make(999_950), archive: VolumeId.make(BACKUP_100), storage: local, tags: "x" })
      const failed = yield* Effect.flip(runTimed(pve.waitTask(upid)))
      expect(failed.message).toMatch(/restoring 'mp0' to bind mount is only possible for root/)
    }))

  it.scoped("a guest with the bootstrap bind mount (and a bulk volume) passes its restore-test: explicit layout on the scratch storage, mount and bulk left out", () =>
    Effect.gen(function*() {
      const bulk = "usb1:vm-100-disk-2,mp=/srv/media,backup=0,size=500G"
      const sim = yield* makeSimPve(yield* withController({ mp2: bulk }, { mp2: bulk }))
      const before = (yield* sim.guest(100)).pipe(Option.getOrThrow).config
      const o = yield* runOk(restoreTestPass(desired100)).pipe(Effect.provide(protectionLayer(sim)))
      const t = o as Extract<RestoreTestOutcome, { _tag: "tested" }>
      expect(t).toMatchObject({ _tag: "tested", result: "pass", teardown: "done" })
      const restore = (yield* sim.requests).find((r) => r.method === "POST" && r.path === "/nodes/pve/lxc")!
      expect(restore.params).toMatchObject({ ostemplate: BACKUP_100, rootfs: "local-lvm:16" })
      expect(Object.keys(restore.params).filter((k) => /^mp\d+$/.test(k))).toEqual([])
      const extract = (yield* sim.requests).filter((r) => r.path === "/nodes/pve/vzdump/extractconfig")
      expect(extract.map((r) => r.params["volume"])).toEqual([BACKUP_100])
      // the real bulk volume untouched, the customer guest unchanged, the scratch guest gone
      expect((yield* sim.storageContent("usb1")).map((v) => v["volid"])).toEqual(["usb1:vm-100-disk-2"])
      expect((yield* sim.guest(100)).pipe(Option.getOrThrow).config).toEqual(before)
      expect((yield* sim.guests).filter((g) => g.vmid >= SETTINGS.scratchMin)).toEqual([])
    }))

  it.scoped("a signed restore-now of a guest with the bootstrap bind mount: the overwrite is sent with the explicit layout and succeeds", () =>
    Effect.scoped(Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* withController())
      const params = { backup: BACKUP_100, storage: "local-lvm", backup_storage: "local" }
      const r = yield* runTimed(runSignedJob(job({ op: "restore-now", guest_id: 100, params }, signedOp({ op: "restore-now", guest_id: 100, params })))).pipe(
        Effect.provide(engineLayer(sim, dbFile()))
      )
      expect(`${r.status}:${r.reason}`).toMatch(/^done/)
      const restore = (yield* sim.requests).find((x) => x.method === "POST" && x.path === "/nodes/pve/lxc")!
      expect(restore.params).toMatchObject({ vmid: "100", force: "1", rootfs: "local-lvm:16" })
      expect(restore.params["mp0"]).toBeUndefined()
      expect((yield* sim.tasks).filter((t) => t.id === "100").map((t) => `${t.type}:${t.exitstatus}`)).toEqual(["vzdump:OK", "vzstop:OK", "vzrestore:OK", "vzstart:OK"])
    })))

  it.scoped("a signed restore-now that would destroy a volume outside the backups is refused before anything is sent", () =>
    Effect.scoped(Effect.gen(function*() {
      const bulk = "usb1:vm-100-disk-2,mp=/srv/media,backup=0,size=500G"
      const sim = yield* makeSimPve(yield* withController({ mp2: bulk }, { mp2: bulk }))
      const params = { backup: BACKUP_100, storage: "local-lvm", backup_storage: "local" }
      const r = yield* runTimed(runSignedJob(job({ op: "restore-now", guest_id: 100, params }, signedOp({ op: "restore-now", guest_id: 100, params })))).pipe(
        Effect.provide(engineLayer(sim, dbFile()))
      )
      expect(r.status).not.toBe("done")
      expect(r.reason).toMatch(/would destroy volumes that are in none of its backups \(mp2 usb1:vm-100-disk-2 at \/srv\/media\)/)
      expect((yield* sim.requests).filter((x) => x.method !== "GET")).toEqual([])
      expect((yield* sim.storageContent("usb1")).map((v) => v["volid"])).toEqual(["usb1:vm-100-disk-2"])
    })))
})

