/**
 * The PVE simulator's storage half (issue 10), over real HTTPS on loopback (serveSimPve), with
 * simulated time on the TestClock: PBS/NFS/CIFS/USB storages as PVE lists them, availability under
 * fault injection through /sim-admin, space accounting, PVE's prune semantics (with a property
 * test against an independent reference), deleting backups, creating storages, and the guest
 * model (health after restore, net0 link_down, duplicate MACs).
 */
import { describe, expect, it } from "@effect/vitest"
import { request as httpsRequest } from "node:https"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { Effect, Either, FastCheck as fc, Fiber, TestClock } from "effect"
import { parseUpidParts } from "../src/schema/ids.js"
import { defaultSeedJson, serveSimPve, simCertPem, type SimPveServer } from "../src/sim/pve/index.js"
import { markPrune, parsePruneBackups, type PruneEntry, type PruneKeep } from "../src/sim/pve/storage.js"
import { seedWith } from "./support.js"

// ---------------------------------------------------------------------------------------------
// wiring

type Json = Record<string, unknown>
type Method = "GET" | "POST" | "PUT" | "DELETE"

interface Res {
  readonly status: number
  readonly reason: string
  readonly body: Json
}

const GiB = 1024 ** 3
const PBS_FP = "0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9"
const KEY_FP = "0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9:0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9"
/** Monday 2 March 2026, 03:00 UTC: the simulated clock's start */
const T0 = Date.parse("2026-03-02T03:00:00Z")

const base = defaultSeedJson as { storages: ReadonlyArray<Json>; guests: ReadonlyArray<Json> }

const STORAGES: ReadonlyArray<Json> = [
  ...base.storages,
  { storage: "usb1", type: "dir", path: "/mnt/felhom/usb1", is_mountpoint: "yes", content: ["backup"], total: 64 * GiB, used: GiB },
  { storage: "usbraw", type: "dir", path: "/mnt/usbraw", content: ["backup"], total: 32 * GiB, used: 0 },
  { storage: "nas", type: "nfs", server: "192.0.2.10", export: "/srv/backup", path: "/mnt/pve/nas", content: ["backup"], total: 500 * GiB, used: 10 * GiB },
  { storage: "smb", type: "cifs", server: "nas.lan", share: "backup", username: "felhom", path: "/mnt/pve/smb", content: ["backup"], total: 200 * GiB, used: 0 },
  {
    storage: "pbs1",
    type: "pbs",
    server: "pbs.example.net",
    datastore: "felhom",
    username: "felhom@pbs!host1",
    fingerprint: PBS_FP,
    namespace: "host1",
    port: 8007,
    "encryption-key": KEY_FP,
    content: ["backup"],
    total: 1024 * GiB,
    used: 100 * GiB
  }
]

const seed = (extra: Json = {}) => seedWith({ storages: STORAGES, guest_boot_ms: 5000, ...extra })

/** A simulator on 127.0.0.1:0 with the clock at T0, for the body. */
const withServer = <A, E>(body: (s: SimPveServer) => Effect.Effect<A, E>, extra: Json = {}) =>
  Effect.scoped(Effect.gen(function*() {
    yield* TestClock.setTime(T0)
    const s = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed: yield* seed(extra) })
    return yield* body(s)
  }))

/** `a=1&b=x` from a record of scalars */
const qs = (query: Json): string => new URLSearchParams(Object.entries(query).map(([k, v]): [string, string] => [k, String(v)])).toString()

const send = (s: SimPveServer, method: Method, path: string, opts: { readonly form?: Json; readonly json?: unknown; readonly auth?: string | null } = {}) =>
  Effect.async<Res, Error>((resume) => {
    const headers: Record<string, string> = {}
    const auth = opts.auth === undefined ? `PVEAPIToken=${s.tokenId}=${s.tokenSecret}` : opts.auth
    if (auth !== null) headers["Authorization"] = auth
    let payload: string | undefined
    if (opts.form !== undefined) {
      payload = qs(opts.form)
      headers["Content-Type"] = "application/x-www-form-urlencoded"
    } else if (opts.json !== undefined) {
      payload = JSON.stringify(opts.json)
      headers["Content-Type"] = "application/json"
    }
    const req = httpsRequest(`${s.url}${path}`, { method, ca: simCertPem, headers }, (res) => {
      let text = ""
      res.setEncoding("utf8")
      res.on("data", (c: string) => (text += c))
      res.on("end", () =>
        resume(Effect.succeed({ status: res.statusCode ?? 0, reason: res.statusMessage ?? "", body: text.length > 0 ? JSON.parse(text) as Json : {} })))
    })
    req.on("error", (e) => resume(Effect.fail(e)))
    if (payload !== undefined) req.write(payload)
    req.end()
  }).pipe(Effect.orDie)

const api = (s: SimPveServer, method: Method, path: string, form?: Json) =>
  send(s, method, `/api2/json${path}`, form === undefined ? {} : method === "GET" || method === "DELETE" ? {} : { form })

const get = (s: SimPveServer, path: string, query: Json = {}) =>
  send(s, "GET", `/api2/json${path}${Object.keys(query).length === 0 ? "" : `?${qs(query)}`}`)

const admin = (s: SimPveServer, method: Method, path: string, json?: unknown) =>
  send(s, method, `/sim-admin${path}`, { auth: `Bearer ${s.adminToken}`, ...(json === undefined ? {} : { json }) })

const ok = (r: Res): unknown => {
  expect(r.status, `${r.status} ${r.reason}`).toBe(200)
  return r.body["data"]
}

const upidOf = (r: Res): string => {
  const data = ok(r)
  expect(typeof data).toBe("string")
  expect(Either.isRight(parseUpidParts(String(data))), String(data)).toBe(true)
  return String(data)
}

const taskPath = (upid: string) => `/nodes/pve/tasks/${encodeURIComponent(upid)}`

/** Lets simulated time pass (in `step`s) until the task stops; its status and full log. */
const finish = (s: SimPveServer, upid: string, step: "30 seconds" | "1 second" = "30 seconds") =>
  Effect.gen(function*() {
    for (let i = 0; i < 120; i++) {
      const st = ok(yield* get(s, `${taskPath(upid)}/status`)) as Json
      if (st["status"] === "stopped") {
        const log = (ok(yield* get(s, `${taskPath(upid)}/log`, { limit: 0 })) as Array<{ t: string }>).map((l) => l.t)
        return { exitstatus: String(st["exitstatus"]), log }
      }
      yield* TestClock.adjust(step)
    }
    return expect.fail(`task ${upid} never stopped`)
  })

/** Waits (over real round trips, no clock) until the simulator has started a task of this type. */
const untilTask = (s: SimPveServer, type: string, count: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < 500; i++) {
      const tasks = (yield* admin(s, "GET", "/tasks")).body["tasks"] as Array<Json>
      if (tasks.filter((t) => t["type"] === type).length >= count) return
    }
    return expect.fail(`no ${type} task started`)
  })

const content = (s: SimPveServer, storage: string, query: Json = {}) =>
  Effect.map(get(s, `/nodes/pve/storage/${storage}/content`, query), (r) => ok(r) as Array<Json>)

const nodeStorage = (s: SimPveServer, storage: string) =>
  Effect.map(get(s, "/nodes/pve/storage", { storage }), (r) => (ok(r) as Array<Json>)[0]!)

const setStorage = (s: SimPveServer, storage: string, runtime: Json) =>
  Effect.map(admin(s, "PUT", `/storage/${storage}`, runtime), (r) => expect(r.status).toBe(200))

const dump = (s: SimPveServer, form: Json) => Effect.map(api(s, "POST", "/nodes/pve/vzdump", form), upidOf)

const backupsOf = (s: SimPveServer, storage: string, vmid: number) =>
  Effect.map(content(s, storage, { content: "backup", vmid }), (c) => c.map((e) => String(e["volid"])).sort())

const jsonType = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v)
const fixture = (name: string): Json => JSON.parse(readFileSync(join(__dirname, "fixtures", "pve", name), "utf8")) as Json

// ---------------------------------------------------------------------------------------------

describe("sim storage: types as PVE lists them", () => {
  it.scoped("GET /storage: pbs (server, datastore, username, fingerprint, namespace, port, key fingerprint), nfs, cifs, dir is_mountpoint; never a secret", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const list = ok(yield* get(s, "/storage")) as Array<Json>
        const by = new Map(list.map((e) => [String(e["storage"]), e]))
        expect(by.get("pbs1")).toMatchObject({
          type: "pbs",
          content: "backup",
          server: "pbs.example.net",
          datastore: "felhom",
          username: "felhom@pbs!host1",
          fingerprint: PBS_FP,
          namespace: "host1",
          port: 8007,
          "encryption-key": KEY_FP
        })
        expect(by.get("nas")).toMatchObject({ type: "nfs", server: "192.0.2.10", export: "/srv/backup", path: "/mnt/pve/nas" })
        expect(by.get("smb")).toMatchObject({ type: "cifs", server: "nas.lan", share: "backup", username: "felhom" })
        expect(by.get("usb1")).toMatchObject({ type: "dir", path: "/mnt/felhom/usb1", is_mountpoint: "yes" })
        for (const e of list) {
          expect(e).not.toHaveProperty("password")
          expect(typeof e["digest"]).toBe("string")
        }
        // same JSON types as the fixture written from PVE's sources
        const real = new Map((fixture("storage.json")["data"] as Array<Json>).map((e) => [String(e["type"]), e]))
        for (const [type, realEntry] of real) {
          const mine = list.find((e) => e["type"] === type)!
          for (const [k, v] of Object.entries(mine)) if (k in realEntry) expect(jsonType(v), `${type}.${k}`).toBe(jsonType(realEntry[k]))
        }
      })))

  it.scoped("PBS snapshots list as backup/ct/<vmid>/<time>, pbs-ct, subtype lxc, encrypted, verification: same keys and types as the PVE fixture", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const listed = yield* content(s, "pbs1", { content: "backup" })
        expect(listed.map((e) => e["volid"])).toEqual(["pbs1:backup/ct/101/2026-02-20T02:00:04Z"])
        const e = listed[0]!
        expect(e).toMatchObject({ format: "pbs-ct", subtype: "lxc", vmid: 101, ctime: Date.parse("2026-02-20T02:00:04Z") / 1000, encrypted: KEY_FP })
        expect((e["verification"] as Json)["state"]).toBe("ok")
        expect(String((e["verification"] as Json)["upid"])).toMatch(/^UPID:pbs:/)
        const real = (fixture("storage-content-pbs.json")["data"] as Array<Json>)[0]!
        expect(Object.keys(e).sort()).toEqual(Object.keys(real).sort())
        for (const [k, v] of Object.entries(real)) expect(jsonType(e[k]), k).toBe(jsonType(v))
      }), {
      backups: [
        ...((defaultSeedJson as { backups: ReadonlyArray<Json> }).backups),
        { storage: "pbs1", vmid: 101, time: "2026-02-20T02:00:04Z", size: 734003200, notes: "cust-beta", verification: "ok", config: { hostname: "cust-beta", rootfs: "local-lvm:vm-101-disk-0,size=8G", unprivileged: 1 } }
      ]
    }))

  it.scoped("vzdump to PBS writes snapshot ct/<vmid>/<time>: encrypted with the storage's key, unverified until a verify job runs; a damaged one verifies failed", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const done = yield* finish(s, yield* dump(s, { vmid: 100, storage: "pbs1", mode: "snapshot", remove: 0 }))
        expect(done.exitstatus).toBe("OK")
        expect(done.log).toContain("INFO: creating Proxmox Backup Server archive 'ct/100/2026-03-02T03:00:00Z'")
        expect(done.log.some((l) => l.startsWith("INFO: run: /usr/bin/proxmox-backup-client backup --crypt-mode=encrypt"))).toBe(true)
        const [snap] = yield* content(s, "pbs1", { vmid: 100 })
        expect(snap).toMatchObject({ volid: "pbs1:backup/ct/100/2026-03-02T03:00:00Z", format: "pbs-ct", subtype: "lxc", encrypted: KEY_FP })
        expect(snap).not.toHaveProperty("verification")
        yield* TestClock.adjust("1 hour")
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "pbs1", remove: 0 }))
        const both = yield* backupsOf(s, "pbs1", 100)
        expect(both).toHaveLength(2)
        expect((yield* admin(s, "PUT", "/archive", { volid: both[1], corrupt: "restore" })).status).toBe(200)
        const verified = (yield* admin(s, "POST", "/pbs-verify", { storage: "pbs1" })).body["verified"] as Array<Json>
        expect(verified).toEqual([{ volid: both[0], state: "ok" }, { volid: both[1], state: "failed" }])
        const states = (yield* content(s, "pbs1", { vmid: 100 })).map((e) => (e["verification"] as Json)["state"])
        expect(states).toEqual(["ok", "failed"])
      })))
})

describe("sim storage: availability under fault injection (/sim-admin)", () => {
  it.scoped("USB disk (dir, is_mountpoint) pulled: active 0 and zero sizes, listing and vzdump fail as PVE does, a restore from it fails; plugged back: its archives are there", () =>
    withServer((s) =>
      Effect.gen(function*() {
        expect(yield* nodeStorage(s, "usb1")).toMatchObject({ active: 1, total: 64 * GiB })
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "usb1", compress: "zstd", remove: 0 }))
        const [archive] = yield* backupsOf(s, "usb1", 100)
        expect(archive).toBe("usb1:backup/vzdump-lxc-100-2026_03_02-03_00_00.tar.zst")

        yield* setStorage(s, "usb1", { online: false })
        expect(yield* nodeStorage(s, "usb1")).toMatchObject({ active: 0, total: 0, used: 0, avail: 0, enabled: 1 })
        const notMounted = "unable to activate storage 'usb1' - directory is expected to be a mount point but is not mounted: '/mnt/felhom/usb1'"
        const listing = yield* get(s, "/nodes/pve/storage/usb1/content")
        expect([listing.status, listing.reason]).toEqual([500, notMounted])
        const failed = yield* finish(s, yield* dump(s, { vmid: 101, storage: "usb1", remove: 0 }))
        expect(failed.exitstatus).toBe(`could not activate storage 'usb1': ${notMounted}`)
        expect(failed.log.some((l) => l.includes("Starting Backup"))).toBe(false)
        expect((yield* admin(s, "GET", "/guests")).body["guests"]).toSatisfy((gs: Array<Json>) => gs.every((g) => g["lock"] === undefined))
        const restore = yield* finish(s, upidOf(yield* api(s, "POST", "/nodes/pve/lxc", { vmid: 300, ostemplate: archive, restore: 1, storage: "local-lvm" })))
        expect(restore.exitstatus).toBe(`unable to restore CT 300 - ${notMounted}`)
        expect((yield* get(s, "/nodes/pve/lxc/300/status/current")).status).toBe(500)

        yield* setStorage(s, "usb1", { online: true })
        expect(yield* backupsOf(s, "usb1", 100)).toEqual([archive])
        expect((yield* nodeStorage(s, "usb1"))["active"]).toBe(1)
      })))

  it.scoped("NFS, CIFS and PBS servers down: active 0, listings fail with PVE's texts, a restore onto an offline target is refused before any task", () =>
    withServer((s) =>
      Effect.gen(function*() {
        for (const id of ["nas", "smb", "pbs1"]) yield* setStorage(s, id, { online: false })
        for (const id of ["nas", "smb", "pbs1"]) expect(yield* nodeStorage(s, id)).toMatchObject({ active: 0, total: 0, used: 0 })
        expect((yield* get(s, "/nodes/pve/storage/nas/content")).reason).toBe("storage 'nas' is not online")
        expect((yield* get(s, "/nodes/pve/storage/smb/content")).reason).toBe("storage 'smb' is not online")
        const pbs = yield* get(s, "/nodes/pve/storage/pbs1/content")
        expect([pbs.status, pbs.reason]).toEqual([500, "pbs1: error fetching datastores - 500 Can't connect to pbs.example.net:8007 (Connection refused)"])
        const nfsDump = yield* finish(s, yield* dump(s, { vmid: 100, storage: "nas", remove: 0 }))
        expect(nfsDump.exitstatus).toBe("could not activate storage 'nas': storage 'nas' is not online")
        // a restore target that does not activate: 500 before the task, nothing reserved
        const tasksBefore = ((yield* admin(s, "GET", "/tasks")).body["tasks"] as Array<Json>).length
        const refused = yield* api(s, "POST", "/nodes/pve/lxc", {
          vmid: 301, ostemplate: "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst", restore: 1, storage: "nas"
        })
        expect([refused.status, refused.reason]).toEqual([400, "Parameter verification failed."])
        expect(refused.body["errors"]).toEqual({ storage: "storage 'nas' does not support container directories" })
        // the only storage with rootdir content here is local-lvm: take it away as an NFS mount would go
        yield* setStorage(s, "local-lvm", { online: false })
        const offline = yield* api(s, "POST", "/nodes/pve/lxc", {
          vmid: 301, ostemplate: "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst", restore: 1, storage: "local-lvm"
        })
        expect([offline.status, offline.reason]).toEqual([500, "storage 'local-lvm' is not online"])
        expect(((yield* admin(s, "GET", "/tasks")).body["tasks"] as Array<Json>).length).toBe(tasksBefore)
        expect((yield* get(s, "/nodes/pve/lxc/301/config")).status).toBe(500)
        yield* setStorage(s, "pbs1", { online: true })
        expect((yield* get(s, "/nodes/pve/storage/pbs1/content")).status).toBe(200)
      })))

  it.scoped("USB pulled mid-vzdump: the running task fails with an I/O error, the lock is released, no archive (nor its .dat) is listed when the disk is back", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const upid = yield* dump(s, { vmid: 100, storage: "usb1", compress: "zstd", remove: 0 })
        yield* TestClock.adjust("5 seconds")
        expect(((yield* admin(s, "GET", "/guests")).body["guests"] as Array<Json>).find((g) => g["vmid"] === 100)?.["lock"]).toBe("backup")
        yield* setStorage(s, "usb1", { online: false })
        yield* TestClock.adjust("2 seconds")
        yield* setStorage(s, "usb1", { online: true }) // plugged back before the write ends: the open file is still gone
        const done = yield* finish(s, upid)
        expect(done.exitstatus).toBe("job errors")
        expect(done.log).toContain("INFO: zstd: error 70 : Write error : cannot write block : Input/output error")
        const err = done.log.find((l) => l.startsWith("ERROR: Backup of VM 100 failed - "))!
        expect(err).toMatch(/failed - command '.*\| zstd '--threads=1' >\/mnt\/felhom\/usb1\/dump\/vzdump-lxc-100-2026_03_02-03_00_00\.tar\.dat' failed: exit code 70$/)
        expect(done.log).toContain("INFO: Backup job finished with errors")
        expect(((yield* admin(s, "GET", "/guests")).body["guests"] as Array<Json>).find((g) => g["vmid"] === 100)?.["lock"]).toBeUndefined()
        expect(yield* content(s, "usb1")).toEqual([])
        expect((yield* nodeStorage(s, "usb1"))["used"]).toBe(GiB)
      })))

  it.scoped("a dir storage WITHOUT is_mountpoint whose disk is absent stays active on the root filesystem: a backup lands there and is hidden once the disk is mounted again", () =>
    withServer((s) =>
      Effect.gen(function*() {
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "usbraw", compress: "zstd", remove: 0 }))
        const onDisk = yield* backupsOf(s, "usbraw", 100)
        yield* setStorage(s, "usbraw", { online: false })
        const status = yield* nodeStorage(s, "usbraw")
        // the node's root filesystem (seeded maxdisk) under the empty mount point
        expect(status).toMatchObject({ active: 1, total: 100861726720 })
        expect(yield* content(s, "usbraw")).toEqual([])
        yield* TestClock.adjust("1 hour")
        const done = yield* finish(s, yield* dump(s, { vmid: 100, storage: "usbraw", compress: "zstd", remove: 0 }))
        expect(done.exitstatus).toBe("OK")
        const onRoot = yield* backupsOf(s, "usbraw", 100)
        expect(onRoot).toHaveLength(1)
        expect(onRoot).not.toEqual(onDisk)
        yield* setStorage(s, "usbraw", { online: true })
        expect(yield* backupsOf(s, "usbraw", 100)).toEqual(onDisk)
      })))
})

describe("sim storage: space accounting", () => {
  it.scoped("vzdump takes the archive's size: deterministic from the guest's backed-up volumes and the compression; used grows by exactly the listed size", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const sizes: Record<string, number> = {}
        for (const compress of ["zstd", "gzip", "lzo", "0"]) {
          const before = Number((yield* nodeStorage(s, "usbraw"))["used"])
          yield* finish(s, yield* dump(s, { vmid: 100, storage: "usbraw", compress, remove: 0 }))
          const newest = (yield* content(s, "usbraw", { vmid: 100 })).sort((a, b) => Number(b["ctime"]) - Number(a["ctime"]))[0]!
          sizes[compress] = Number(newest["size"])
          expect(Number((yield* nodeStorage(s, "usbraw"))["used"]) - before).toBe(sizes[compress])
          yield* TestClock.adjust("1 hour")
        }
        expect(sizes["zstd"]!).toBeLessThan(sizes["gzip"]!)
        expect(sizes["gzip"]!).toBeLessThan(sizes["lzo"]!)
        expect(sizes["lzo"]!).toBeLessThan(sizes["0"]!)
        // uncompressed: the used share of the 16 GiB rootfs, the only volume backed up
        expect(sizes["0"]!).toBeGreaterThan(0.18 * 16 * GiB)
        expect(sizes["0"]!).toBeLessThan(0.28 * 16 * GiB)
        // same guest, same compression: same size
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "usbraw", compress: "zstd", remove: 0 }))
        const zsts = (yield* content(s, "usbraw", { vmid: 100 })).filter((e) => e["format"] === "tar.zst").map((e) => e["size"])
        expect(zsts).toEqual([sizes["zstd"], sizes["zstd"]])
      })))

  it.scoped("a mount point with backup=1 adds to the archive; one without is excluded and logged so", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const one = yield* finish(s, yield* dump(s, { vmid: 100, storage: "usbraw", remove: 0 }))
        expect(one.log).toContain("INFO: including mount point rootfs ('/') in backup")
        const plain = Number((yield* content(s, "usbraw", { vmid: 100 }))[0]!["size"])
        ok(yield* api(s, "PUT", "/nodes/pve/lxc/100/config", { mp0: "local-lvm:8,mp=/srv/data,backup=1", mp1: "local-lvm:4,mp=/srv/cache" }))
        yield* TestClock.adjust("1 hour")
        const two = yield* finish(s, yield* dump(s, { vmid: 100, storage: "usbraw", remove: 0 }))
        expect(two.log).toContain("INFO: including mount point mp0 ('/srv/data') in backup")
        expect(two.log).toContain("INFO: excluding volume mount point mp1 ('/srv/cache') from backup (disabled)")
        const sizes = (yield* content(s, "usbraw", { vmid: 100 })).map((e) => Number(e["size"])).sort((a, b) => a - b)
        expect(sizes[0]).toBe(plain)
        expect(sizes[1]! / plain).toBeCloseTo(24 / 16, 6)
      })))

  it.scoped("a full storage fails vzdump with zstd's ENOSPC line (exit code 70): nothing listed, space as before", () =>
    withServer((s) =>
      Effect.gen(function*() {
        yield* setStorage(s, "usb1", { total: 2 * GiB })
        const done = yield* finish(s, yield* dump(s, { vmid: 100, storage: "usb1", compress: "zstd", remove: 0 }))
        expect(done.exitstatus).toBe("job errors")
        expect(done.log).toContain("INFO: zstd: error 70 : Write error : cannot write block : No space left on device")
        expect(done.log.some((l) => /^ERROR: Backup of VM 100 failed - command '.*' failed: exit code 70$/.test(l))).toBe(true)
        expect(yield* content(s, "usb1")).toEqual([])
        expect(yield* nodeStorage(s, "usb1")).toMatchObject({ total: 2 * GiB, used: GiB })
        // uncompressed to a fuller disk: tar's own message
        const tar = yield* finish(s, yield* dump(s, { vmid: 101, storage: "usb1", remove: 0 }))
        expect(tar.log).toContain("INFO: tar: -: Cannot write: No space left on device")
        yield* setStorage(s, "usb1", { total: 64 * GiB })
        expect((yield* finish(s, yield* dump(s, { vmid: 100, storage: "usb1", compress: "zstd", remove: 0 }))).exitstatus).toBe("OK")
      })))

  it.scoped("restore takes its volumes' size on the target; a target without room fails the extraction with tar's ENOSPC and leaves no guest", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const archive = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
        const before = Number((yield* nodeStorage(s, "local-lvm"))["used"])
        const done = yield* finish(s, upidOf(yield* api(s, "POST", "/nodes/pve/lxc", { vmid: 310, ostemplate: archive, restore: 1, storage: "local-lvm" })))
        expect(done.exitstatus).toBe("OK")
        expect(Number((yield* nodeStorage(s, "local-lvm"))["used"]) - before).toBe(16 * GiB)
        const total = Number((yield* nodeStorage(s, "local-lvm"))["total"])
        yield* setStorage(s, "local-lvm", { used: total - before - 16 * GiB - 8 * GiB }) // 8 GiB left
        const full = yield* finish(s, upidOf(yield* api(s, "POST", "/nodes/pve/lxc", { vmid: 311, ostemplate: archive, restore: 1, storage: "local-lvm" })))
        expect(full.log).toContain("tar: ./var/lib/dpkg/info/libc6:amd64.list: Cannot write: No space left on device")
        expect(full.exitstatus).toMatch(/^unable to restore CT 311 - command 'lxc-usernsexec .* tar xpf - --zstd .*' failed: exit code 2$/)
        expect((yield* get(s, "/nodes/pve/lxc/311/config")).status).toBe(500)
        expect((yield* content(s, "local-lvm", { vmid: 311 }))).toEqual([])
        // a smaller rootfs fits
        const small = yield* finish(s, upidOf(yield* api(s, "POST", "/nodes/pve/lxc", { vmid: 312, ostemplate: archive, restore: 1, storage: "local-lvm", rootfs: "local-lvm:6" })))
        expect(small.exitstatus).toBe("OK")
      })))
})

// ---------------------------------------------------------------------------------------------
// prune: an independent reference, written as "pick buckets", not as PVE's marking loop

const OPTS = ["keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"] as const

const refBucket = (opt: (typeof OPTS)[number], ctime: number): string => {
  const d = new Date(ctime * 1000)
  const day = d.toISOString().slice(0, 10)
  switch (opt) {
    case "keep-last":
      return `#${ctime}`
    case "keep-hourly":
      return d.toISOString().slice(0, 13)
    case "keep-daily":
      return day
    case "keep-weekly": {
      // ISO week: the Monday that starts it identifies it
      const monday = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - ((d.getUTCDay() + 6) % 7)))
      return monday.toISOString().slice(0, 10)
    }
    case "keep-monthly":
      return day.slice(0, 7)
    case "keep-yearly":
      return day.slice(0, 4)
  }
}

/** Kept ids: per option, the first N buckets (newest first) holding no kept archive yet, each keeping its newest undecided archive. */
const referencePrune = (entries: ReadonlyArray<PruneEntry>, keep: Partial<Record<(typeof OPTS)[number], number>>): Set<string> => {
  const candidates = entries.filter((e) => !e.protected)
  if (!OPTS.some((o) => (keep[o] ?? 0) > 0)) return new Set(candidates.map((e) => e.id))
  const kept = new Set<string>()
  const removed = new Set<string>()
  for (const opt of OPTS) {
    const n = keep[opt] ?? 0
    if (n === 0) continue
    const keptBuckets = new Set(candidates.filter((e) => kept.has(e.id)).map((e) => refBucket(opt, e.ctime)))
    const open = candidates.filter((e) => !kept.has(e.id) && !removed.has(e.id) && !keptBuckets.has(refBucket(opt, e.ctime)))
    const newestFirst = [...open].sort((a, b) => b.ctime - a.ctime)
    const chosen: Array<string> = []
    for (const e of newestFirst) {
      const b = refBucket(opt, e.ctime)
      if (!chosen.includes(b)) chosen.push(b)
    }
    for (const b of chosen.slice(0, n)) {
      const inBucket = newestFirst.filter((e) => refBucket(opt, e.ctime) === b)
      kept.add(inBucket[0]!.id)
      for (const e of inBucket.slice(1)) removed.add(e.id)
    }
  }
  return kept
}

const keptBy = (marks: ReadonlyMap<string, string>): Set<string> => new Set([...marks].filter(([, m]) => m === "keep").map(([id]) => id))

const at = (iso: string) => Date.parse(iso) / 1000
const entriesAt = (isos: ReadonlyArray<string>, protectedIds: ReadonlyArray<string> = []): Array<PruneEntry> =>
  isos.map((iso) => ({ id: iso, ctime: at(iso), protected: protectedIds.includes(iso) }))

describe("sim storage: prune-backups as PVE prunes", () => {
  it("documented semantics: keep-last covers its days without using keep-daily slots; only the newest of a day; protected never counts; ISO weeks across the year end", () => {
    const daily = Array.from({ length: 20 }, (_, i) => `2026-02-${String(i + 1).padStart(2, "0")}T03:00:00Z`)
    const kept = keptBy(markPrune(entriesAt(daily), { "keep-last": 3, "keep-daily": 5 }))
    expect([...kept].sort()).toEqual(daily.slice(12).sort()) // 20, 19, 18 by keep-last; 17..13 by keep-daily
    const twice = Array.from({ length: 4 }, (_, i) => [`2026-02-0${i + 1}T03:00:00Z`, `2026-02-0${i + 1}T15:00:00Z`]).flat()
    expect([...keptBy(markPrune(entriesAt(twice), { "keep-daily": 3 }))].sort()).toEqual(["2026-02-02T15:00:00Z", "2026-02-03T15:00:00Z", "2026-02-04T15:00:00Z"])
    const marks = markPrune(entriesAt(["2026-02-01T03:00:00Z", "2026-02-02T03:00:00Z"], ["2026-02-02T03:00:00Z"]), { "keep-last": 1 })
    expect(Object.fromEntries(marks)).toEqual({ "2026-02-01T03:00:00Z": "keep", "2026-02-02T03:00:00Z": "protected" })
    // Thu 31 Dec 2026 and Sun 3 Jan 2027 are both in ISO week 2026-W53
    const yearEnd = markPrune(entriesAt(["2026-12-27T12:00:00Z", "2026-12-31T12:00:00Z", "2027-01-03T12:00:00Z"]), { "keep-weekly": 2 })
    expect(Object.fromEntries(yearEnd)).toEqual({ "2026-12-27T12:00:00Z": "keep", "2026-12-31T12:00:00Z": "remove", "2027-01-03T12:00:00Z": "keep" })
  })

  it("the prune-backups format: all counts zero is keep-all; keep-all with a count, unknown keys and negatives are refused", () => {
    expect(parsePruneBackups("keep-last=0,keep-daily=0")).toEqual(Either.right({ "keep-all": true }))
    expect(parsePruneBackups("keep-daily=7,keep-last=3")).toEqual(Either.right({ "keep-daily": 7, "keep-last": 3 }))
    expect(parsePruneBackups("keep-all=1,keep-last=2")).toEqual(Either.left("keep-all cannot be set together with other options."))
    expect(Either.isLeft(parsePruneBackups("keep-forever=1"))).toBe(true)
    expect(Either.isLeft(parsePruneBackups("keep-last=-1"))).toBe(true)
  })

  const entryArb = fc.uniqueArray(
    fc.record({ minutes: fc.integer({ min: 0, max: 3 * 366 * 24 * 60 }), protected: fc.integer({ min: 0, max: 5 }).map((n) => n === 0) }),
    { minLength: 0, maxLength: 40, selector: (e) => e.minutes }
  ).map((xs) => xs.map((x, i) => ({ id: `a${i}`, ctime: Date.parse("2024-01-01T00:00:00Z") / 1000 + x.minutes * 60 * (x.minutes % 7 === 0 ? 97 : 1), protected: x.protected })))
  const keepArb = fc.record(
    Object.fromEntries(OPTS.map((o) => [o, fc.option(fc.integer({ min: 0, max: 6 }), { nil: undefined })])) as Record<(typeof OPTS)[number], fc.Arbitrary<number | undefined>>
  )

  it.prop("markPrune keeps exactly what the reference keeps; a partition; protected untouched; never empties a group that had an unprotected archive", [entryArb, keepArb], ([entries, keepRaw]) => {
    const keep: Partial<Record<(typeof OPTS)[number], number>> = {}
    for (const o of OPTS) if (keepRaw[o] !== undefined) keep[o] = keepRaw[o]
    const marks = markPrune(entries, keep as PruneKeep)
    expect(marks.size).toBe(entries.length)
    expect(keptBy(marks)).toEqual(referencePrune(entries, keep))
    for (const e of entries) if (e.protected) expect(marks.get(e.id)).toBe("protected")
    const unprotected = entries.filter((e) => !e.protected)
    if (unprotected.length > 0) {
      const newest = unprotected.reduce((a, b) => (b.ctime > a.ctime ? b : a))
      expect(marks.get(newest.id)).toBe("keep")
    }
  })

  it.scoped("vzdump with remove (default) prunes by the storage's rule after writing, logging PVE's lines; remove=0 prunes nothing (issue 8 finding 3 stays meaningful)", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const before = yield* backupsOf(s, "nas", 101)
        expect(before).toHaveLength(4)
        const pruning = yield* finish(s, yield* dump(s, { vmid: 101, storage: "nas" }))
        expect(pruning.exitstatus).toBe("OK")
        expect(pruning.log).toContain("INFO: prune older backups with retention: keep-daily=2, keep-last=1")
        const after = yield* backupsOf(s, "nas", 101)
        // kept: the new one (keep-last), the newest of each of the two days before it that have
        // unprotected backups (keep-daily: 1 March holds only a protected one, which fills no slot)
        expect(after).toEqual([
          "nas:backup/vzdump-lxc-101-2026_02_27-03_00_00.tar.zst",
          "nas:backup/vzdump-lxc-101-2026_02_28-15_00_00.tar.zst",
          "nas:backup/vzdump-lxc-101-2026_03_01-03_00_00.tar.zst",
          "nas:backup/vzdump-lxc-101-2026_03_02-03_00_00.tar"
        ])
        const removed = before.filter((v) => !after.includes(v))
        expect(removed).toEqual(["nas:backup/vzdump-lxc-101-2026_02_28-03_00_00.tar.zst"])
        for (const v of removed) expect(pruning.log).toContain(`INFO: removing backup '${v}'`)
        expect(pruning.log).toContain(`INFO: pruned ${removed.length} backup(s) not covered by keep-retention policy`)
        // remove=0 and keep-all=1 (what the agent sends): nothing pruned, no limit
        yield* TestClock.adjust("1 hour")
        const kept = yield* finish(s, yield* dump(s, { vmid: 101, storage: "nas", remove: 0, "prune-backups": "keep-all=1" }))
        expect(kept.exitstatus).toBe("OK")
        expect(kept.log.filter((l) => /^INFO: (prune|pruned|removing)/.test(l))).toEqual([])
        const all = yield* backupsOf(s, "nas", 101)
        expect(all).toHaveLength(5)
        expect(all).toEqual(expect.arrayContaining(after))
      }), {
      storages: STORAGES.map((st) => (st["storage"] === "nas" ? { ...st, "prune-backups": "keep-last=1,keep-daily=2" } : st)),
      backups: ["2026-02-27T03:00:00Z", "2026-02-28T03:00:00Z", "2026-02-28T15:00:00Z", "2026-03-01T03:00:00Z"].map((time) => ({
        storage: "nas", vmid: 101, time, size: GiB, config: { hostname: "cust-beta", rootfs: "local-lvm:vm-101-disk-0,size=8G" }
      })).map((b, i) => (i === 3 ? { ...b, protected: true } : b))
    }))

  it.scoped("remove=0 with a count-based retention is a limit: the guest's backup fails once reached (before it starts); protected archives do not count; keep-all lifts it", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const limited = yield* finish(s, yield* dump(s, { vmid: 100, storage: "local", remove: 0 }))
        expect(limited.exitstatus).toBe("job errors")
        expect(limited.log).toContain(
          "ERROR: Backup of VM 100 failed - There is a max backup limit of 1 enforced by the target storage or the vzdump parameters. Either increase the limit or delete old backups."
        )
        expect(limited.log.some((l) => l.includes("Starting Backup"))).toBe(false)
        const lifted = yield* finish(s, yield* dump(s, { vmid: 100, storage: "local", remove: 0, "prune-backups": "keep-all=1" }))
        expect(lifted.exitstatus).toBe("OK")
        // the golden archive of 9000 is protected: it is no limit for 9000's next backup either way
        const bad = yield* api(s, "POST", "/nodes/pve/vzdump", { vmid: 100, storage: "local", "prune-backups": "keep-all=1,keep-last=2" })
        expect(bad.status).toBe(400)
        expect(bad.body["errors"]).toEqual({ "prune-backups": "invalid format - keep-all cannot be set together with other options.\n" })
      }), { storages: STORAGES.map((st) => (st["storage"] === "local" ? { ...st, "prune-backups": "keep-last=1" } : st)) }))
})

describe("sim storage: DELETE .../content/{volume}", () => {
  const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
  const NIGHTLY = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
  const del = (s: SimPveServer, storage: string, volume: string, query: Json = {}) =>
    send(s, "DELETE", `/api2/json/nodes/pve/storage/${storage}/content/${encodeURIComponent(volume)}${Object.keys(query).length === 0 ? "" : `?${qs(query)}`}`)

  it.scoped("is an imgdel task with id <vmid>@<storage> that removes the archive and frees its space; a protected one is refused in the task", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const before = Number((yield* nodeStorage(s, "local"))["used"])
        const size = Number((yield* content(s, "local", { vmid: 100 }))[0]!["size"])
        const upid = upidOf(yield* del(s, "local", NIGHTLY))
        const parts = Either.getOrThrow(parseUpidParts(upid))
        expect([parts.type, parts.id]).toEqual(["imgdel", "100@local"])
        const done = yield* finish(s, upid)
        expect(done.exitstatus).toBe("OK")
        expect(done.log).toContain(`Removed volume '${NIGHTLY}'`)
        expect(yield* backupsOf(s, "local", 100)).toEqual([])
        expect(before - Number((yield* nodeStorage(s, "local"))["used"])).toBe(size)
        const refused = yield* finish(s, upidOf(yield* del(s, "local", GOLDEN)))
        expect(refused.exitstatus).toBe("cannot remove protected volume 'backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst' on 'local'")
        expect(yield* backupsOf(s, "local", 9000)).toEqual([GOLDEN])
        // gone already: PVE warns and still says removed
        const again = yield* finish(s, upidOf(yield* del(s, "local", NIGHTLY)))
        expect(again.exitstatus).toBe("WARNINGS: 1")
        expect(again.log).toContain("WARN: disk image '/var/lib/vz/dump/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst' does not exist")
        // an injected failure leaves the archive where it was
        yield* s.sim.setFaults({ task_failure_types: ["imgdel"] })
        const tmpl = "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst"
        const broken = yield* finish(s, upidOf(yield* del(s, "local", tmpl)))
        expect(broken.exitstatus).toBe("unlink '/var/lib/vz/template/cache/debian-13-standard_13.1-2_amd64.tar.zst' failed - Input/output error")
        expect((yield* content(s, "local", { content: "vztmpl" })).map((e) => e["volid"])).toEqual([tmpl])
      })))

  it.scoped("permissions: a backup needs Datastore.AllocateSpace on the storage and VM.Backup on its guest (or Datastore.Allocate); anything else Datastore.Allocate", () =>
    withServer((s) =>
      Effect.gen(function*() {
        yield* s.sim.revoke("felhom@pve!agent", "/vms/100", ["VM.Backup"])
        yield* s.sim.revoke("felhom@pve!agent", "/storage/local", ["Datastore.Allocate"])
        const denied = yield* del(s, "local", NIGHTLY)
        expect([denied.status, denied.reason]).toEqual([403, "Permission check failed (/vms/100, VM.Backup)"])
        const tmpl = yield* del(s, "local", "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst")
        expect([tmpl.status, tmpl.reason]).toEqual([403, "Permission check failed (/storage/local, Datastore.Allocate)"])
        // VM.Backup on 9000 (not revoked) and AllocateSpace on the storage suffice for 9000's archive
        expect((yield* del(s, "local", GOLDEN)).status).toBe(200)
        // nothing was started for the refused ones
        const tasks = (yield* admin(s, "GET", "/tasks")).body["tasks"] as Array<Json>
        expect(tasks.map((t) => t["id"])).toEqual(["9000@local"])
      })))

  it.scoped("volume ids: bare names need the storage, a mismatched storage is refused, an unknown storage or volname is PVE's 500", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const mismatch = yield* del(s, "usb1", NIGHTLY)
        expect(mismatch.body["errors"]).toEqual({ volume: "storage ID mismatch (local != usb1)\n" })
        const bare = yield* del(s, "local", "backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst")
        expect(Either.isRight(parseUpidParts(String(ok(bare))))).toBe(true)
        expect((yield* del(s, "nope", "nope:backup/x")).reason).toBe("storage 'nope' does not exist")
        expect((yield* del(s, "local", "local:junk/x")).reason).toBe("unable to parse directory volume name 'junk/x'")
        expect((yield* del(s, "pbs1", "pbs1:backup/ct/100/yesterday")).reason).toBe("unable to parse PBS volume name 'backup/ct/100/yesterday'")
      })))

  it.scoped("delay: null when the task ended in time, the task's error when it failed, the UPID when still running", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const answer = (fiber: Fiber.RuntimeFiber<Res>) => Fiber.join(fiber)
        const inTime = yield* Effect.fork(del(s, "local", NIGHTLY, { delay: 5 }))
        yield* untilTask(s, "imgdel", 1)
        yield* TestClock.adjust("5 seconds")
        const res = yield* answer(inTime)
        expect([res.status, res.body["data"]]).toEqual([200, null])
        const failing = yield* Effect.fork(del(s, "local", GOLDEN, { delay: 5 }))
        yield* untilTask(s, "imgdel", 2)
        yield* TestClock.adjust("5 seconds")
        const fres = yield* answer(failing)
        expect([fres.status, fres.reason]).toEqual([500, "cannot remove protected volume 'backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst' on 'local'"])
        const slow = yield* Effect.fork(del(s, "local", "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst", { delay: 1 }))
        yield* untilTask(s, "imgdel", 3)
        yield* TestClock.adjust("1 second")
        const sres = yield* answer(slow)
        expect(Either.isRight(parseUpidParts(String(sres.body["data"])))).toBe(true)
      }), { task_durations_ms: { imgdel: 3000 } }))

  it.scoped("on an unreachable storage the task fails with the activation text; a PBS snapshot is forgotten, a protected one refused by PBS", () =>
    withServer((s) =>
      Effect.gen(function*() {
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "pbs1", remove: 0, protected: 1 }))
        yield* TestClock.adjust("1 hour")
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "pbs1", remove: 0 }))
        const [prot, plain] = yield* backupsOf(s, "pbs1", 100)
        yield* setStorage(s, "pbs1", { online: false })
        const offline = yield* finish(s, upidOf(yield* del(s, "pbs1", plain!)))
        expect(offline.exitstatus).toBe("pbs1: error fetching datastores - 500 Can't connect to pbs.example.net:8007 (Connection refused)")
        yield* setStorage(s, "pbs1", { online: true })
        expect((yield* finish(s, upidOf(yield* del(s, "pbs1", plain!)))).exitstatus).toBe("OK")
        expect((yield* finish(s, upidOf(yield* del(s, "pbs1", prot!)))).exitstatus).toBe("proxmox-backup-client failed: Error: cannot remove protected snapshot")
        expect(yield* backupsOf(s, "pbs1", 100)).toEqual([prot])
      })))
})

describe("sim storage: POST /storage", () => {
  const create = (s: SimPveServer, form: Json) => send(s, "POST", "/api2/json/storage", { form })

  it.scoped("creates dir, nfs, cifs and pbs entries; secrets are never listed; a PBS autogen key is handed back once, listed as its fingerprint", () =>
    withServer((s) =>
      Effect.gen(function*() {
        expect(ok(yield* create(s, { storage: "usb2", type: "dir", path: "/mnt/felhom/usb2", is_mountpoint: "yes", content: "backup" })))
          .toEqual({ storage: "usb2", type: "dir" })
        expect(ok(yield* create(s, { storage: "nas2", type: "nfs", server: "nas.lan", export: "/export/pve", content: "backup" })))
          .toEqual({ storage: "nas2", type: "nfs" })
        expect(ok(yield* create(s, { storage: "smb2", type: "cifs", server: "nas.lan", share: "pve", username: "u", password: "cifs-secret-pw", content: "backup" })))
          .toEqual({ storage: "smb2", type: "cifs" })
        const pbs = ok(yield* create(s, {
          storage: "pbs2", type: "pbs", server: "pbs.lan", datastore: "store1", username: "felhom@pbs!h1", password: "pbs-token-secret-0000",
          fingerprint: PBS_FP, "encryption-key": "autogen", content: "backup"
        })) as Json
        const key = JSON.parse(String((pbs["config"] as Json)["encryption-key"])) as Json
        expect(key).toMatchObject({ kdf: null })
        expect(String(key["data"])).toMatch(/^[A-Za-z0-9+/]{43}=$/)
        const list = new Map((ok(yield* get(s, "/storage")) as Array<Json>).map((e) => [String(e["storage"]), e]))
        expect(list.get("usb2")).toMatchObject({ type: "dir", path: "/mnt/felhom/usb2", is_mountpoint: "yes", content: "backup" })
        expect(list.get("nas2")).toMatchObject({ server: "nas.lan", export: "/export/pve", path: "/mnt/pve/nas2" })
        expect(list.get("pbs2")).toMatchObject({ server: "pbs.lan", datastore: "store1", "encryption-key": key["fingerprint"] })
        const text = JSON.stringify([...list.values()])
        for (const secret of ["cifs-secret-pw", "pbs-token-secret-0000", String(key["data"])]) expect(text).not.toContain(secret)
        expect(yield* nodeStorage(s, "nas2")).toMatchObject({ active: 1 })
        // nor does the simulator's own request log keep them
        const logged = (yield* admin(s, "GET", "/requests")).body["requests"] as Array<{ path: string; params: Json }>
        const smb = logged.find((r) => r.path === "/storage" && r.params["storage"] === "smb2")!
        expect(smb.params["password"]).toBe("<redacted>")
        expect(JSON.stringify(logged)).not.toContain("cifs-secret-pw")
      })))

  it.scoped("validation as PVE: schema 400s, then check_config's 500s, then 'create storage failed: ...' inside the config lock", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const schema = yield* create(s, { storage: "9bad", type: "dir", path: "relative", fingerprint: "AB:CD" })
        expect(schema.status).toBe(400)
        expect(schema.body["errors"]).toEqual({
          storage: "invalid format - storage ID '9bad' contains illegal characters\n",
          path: "invalid format - value does not look like a valid absolute path\n",
          fingerprint: "value does not match the regex pattern"
        })
        expect((yield* create(s, { storage: "d1", type: "dir", path: "/mnt/x", server: "nas.lan" })).reason).toBe("unexpected property 'server'")
        expect((yield* create(s, { storage: "d1", type: "dir", path: "/mnt/x", password: "pw" })).reason).toBe("unexpected property 'password'")
        expect((yield* create(s, { storage: "n1", type: "nfs", server: "nas.lan" })).reason).toBe("missing value for required option 'export'")
        expect((yield* create(s, { storage: "p1", type: "pbs", server: "pbs.lan" })).reason).toBe("missing value for required option 'datastore'")
        expect((yield* create(s, { storage: "d1", type: "dir", path: "/mnt/x y" })).reason).toBe("illegal path for directory storage: /mnt/x y")
        expect((yield* create(s, { storage: "p1", type: "pbs", server: "pbs.lan", datastore: "d", content: "images" })).status).toBe(200)
        expect((yield* create(s, { storage: "n2", type: "nfs", server: "nas.lan", export: "/e", content: "none" })).status).toBe(400)
        expect((yield* create(s, { storage: "usb1", type: "dir", path: "/mnt/y" })).reason).toBe("create storage failed: storage ID 'usb1' already defined")
        expect((yield* create(s, { storage: "p2", type: "pbs", server: "pbs.lan", datastore: "d", "encryption-key": "not json" })).reason)
          .toBe("create storage failed: Value does not seems like a valid, JSON formatted encryption key!")
        expect((yield* create(s, { storage: "p3", type: "pbs", server: "pbs.lan", datastore: "d", "master-pubkey": "LS0t" })).reason)
          .toBe("create storage failed: 'master-pubkey' can only be used together with 'encryption-key'")
        expect(ok(yield* get(s, "/storage", { type: "pbs" }))).toSatisfy((l: Array<Json>) => l.map((e) => e["storage"]).join() === "pbs1,p1")
      })))

  it.scoped("needs Datastore.Allocate on /storage (403 before validation); an unreachable server or an unmounted disk refuses the new entry; runtime set ahead applies", () =>
    withServer((s) =>
      Effect.gen(function*() {
        yield* setStorage(s, "nfsdown", { online: false })
        const down = yield* create(s, { storage: "nfsdown", type: "nfs", server: "10.0.0.9", export: "/e", content: "backup" })
        expect([down.status, down.reason]).toEqual([500, "create storage failed: storage 'nfsdown' is not online"])
        yield* setStorage(s, "usb9", { online: false, total: 16 * GiB })
        const unmounted = yield* create(s, { storage: "usb9", type: "dir", path: "/mnt/felhom/usb9", is_mountpoint: "1", content: "backup" })
        expect(unmounted.reason).toBe("create storage failed: unable to activate storage 'usb9' - directory is expected to be a mount point but is not mounted: '/mnt/felhom/usb9'")
        yield* setStorage(s, "usb9", { online: true })
        expect((yield* create(s, { storage: "usb9", type: "dir", path: "/mnt/felhom/usb9", is_mountpoint: "1", content: "backup" })).status).toBe(200)
        expect(yield* nodeStorage(s, "usb9")).toMatchObject({ active: 1, total: 16 * GiB, used: 0 })
        yield* s.sim.revoke("felhom@pve!agent", "/storage", ["Datastore.Allocate"])
        const denied = yield* create(s, { storage: "x", type: "bogus" })
        expect([denied.status, denied.reason]).toEqual([403, "Permission check failed (/storage, Datastore.Allocate)"])
      })))
})

describe("sim storage: guest model", () => {
  const health = (s: SimPveServer, vmid: number) => send(s, "GET", `/sim-guest/${vmid}/health`, { auth: null })
  const restore = (s: SimPveServer, form: Json) => Effect.flatMap(api(s, "POST", "/nodes/pve/lxc", { restore: 1, storage: "local-lvm", ...form }), (r) => finish(s, upidOf(r)))

  it.scoped("a restored guest reports its archive's health once booted: booting (503), then ok (200); a source with failing services gives failing archives", () =>
    withServer((s) =>
      Effect.gen(function*() {
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "usb1", remove: 0 }))
        const [good] = yield* backupsOf(s, "usb1", 100)
        expect((yield* admin(s, "PUT", "/guests/100/services", { services: "failing" })).status).toBe(200)
        yield* TestClock.adjust("1 hour")
        yield* finish(s, yield* dump(s, { vmid: 100, storage: "usb1", remove: 0 }))
        const bad = (yield* backupsOf(s, "usb1", 100)).find((v) => v !== good)!

        expect((yield* restore(s, { vmid: 400, ostemplate: good })).exitstatus).toBe("OK")
        const started = yield* finish(s, upidOf(yield* api(s, "POST", "/nodes/pve/lxc/400/status/start")), "1 second")
        expect(started.exitstatus).toBe("OK")
        const booting = yield* health(s, 400)
        expect([booting.status, booting.body["phase"], booting.body["services"]]).toEqual([503, "booting", null])
        yield* TestClock.adjust("5 seconds")
        const up = yield* health(s, 400)
        expect([up.status, up.body["phase"], up.body["services"], up.body["restored_from"]]).toEqual([200, "up", "ok", good])

        expect((yield* restore(s, { vmid: 401, ostemplate: bad })).exitstatus).toBe("OK")
        expect((yield* health(s, 401)).body["phase"]).toBe("stopped")
        yield* finish(s, upidOf(yield* api(s, "POST", "/nodes/pve/lxc/401/status/start")))
        yield* TestClock.adjust("10 seconds")
        const failing = yield* health(s, 401)
        expect([failing.status, failing.body["services"]]).toEqual([503, "failing"])
        expect((yield* health(s, 999)).status).toBe(404)
      })))

  it.scoped("a corrupted archive: 'restore' fails the task with zstd's and tar's errors and leaves no guest; 'health' restores fine but the services fail", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const archive = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
        expect((yield* admin(s, "PUT", "/archive", { volid: archive, corrupt: "restore" })).status).toBe(200)
        const broken = yield* restore(s, { vmid: 410, ostemplate: archive })
        expect(broken.log).toEqual(expect.arrayContaining([
          "zstd: /*stdin*\\: Decoding error (36) : Corrupted block detected",
          "tar: Unexpected EOF in archive",
          "tar: Error is not recoverable: exiting now"
        ]))
        expect(broken.exitstatus).toMatch(/^unable to restore CT 410 - command 'lxc-usernsexec .* tar xpf - --zstd .*' failed: exit code 2$/)
        expect((yield* get(s, "/nodes/pve/lxc/410/config")).status).toBe(500)
        expect((yield* admin(s, "PUT", "/archive", { volid: archive, corrupt: "health" })).status).toBe(200)
        expect((yield* restore(s, { vmid: 411, ostemplate: archive, start: 1 })).exitstatus).toBe("OK")
        yield* TestClock.adjust("10 seconds")
        expect((yield* health(s, 411)).body["services"]).toBe("failing")
        expect((yield* admin(s, "PUT", "/archive", { volid: "local:backup/none.tar.zst", corrupt: null })).status).toBe(404)
      })))

  it.scoped("net0 with link_down=1 given on restore is kept in the config; starting a link-up guest with another guest's MAC is recorded, link-down is not", () =>
    withServer((s) =>
      Effect.gen(function*() {
        const archive = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
        const scratch = yield* restore(s, { vmid: 420, ostemplate: archive, net0: "name=eth0,bridge=vmbr0,link_down=1,ip=manual", start: 1 })
        expect(scratch.exitstatus).toBe("OK")
        const conf = ok(yield* get(s, "/nodes/pve/lxc/420/config")) as Json
        expect(String(conf["net0"])).toMatch(/^name=eth0,bridge=vmbr0,hwaddr=BC:24:11:[0-9A-F:]{8},ip=manual,link_down=1$/)
        expect(String(conf["net0"])).not.toContain("BC:24:11:3A:5C:01")
        expect((yield* admin(s, "GET", "/mac-conflicts")).body["conflicts"]).toEqual([])
        // without a net0 override the backup's MAC (guest 100's, running) comes back with the link up
        expect((yield* restore(s, { vmid: 421, ostemplate: archive, start: 1 })).exitstatus).toBe("OK")
        const conflicts = (yield* admin(s, "GET", "/mac-conflicts")).body["conflicts"] as Array<Json>
        expect(conflicts).toEqual([expect.objectContaining({ vmid: 421, iface: "net0", hwaddr: "BC:24:11:3A:5C:01", otherVmid: 100, otherIface: "net0", otherLive: true })])
        const g = yield* health(s, 420)
        expect(g.body["nics"]).toEqual([{ iface: "net0", hwaddr: String(conf["net0"]).match(/hwaddr=([^,]+)/)![1], link: "down" }])
      })))

  it.scoped("the guest model is outside the PVE API: no token needed there, and /api2/json has no such path", () =>
    withServer((s) =>
      Effect.gen(function*() {
        expect((yield* send(s, "GET", "/sim-guest/100/health", { auth: null })).status).toBe(200)
        const viaApi = yield* send(s, "GET", "/api2/json/sim-guest/100/health")
        expect([viaApi.status, viaApi.reason]).toEqual([501, "Method 'GET /sim-guest/100/health' not implemented"])
        expect((yield* send(s, "POST", "/sim-guest/100/health", { auth: null })).status).toBe(404)
      }), { guest_boot_ms: 0 }))
})
