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
import { Effect, Either, FastCheck as fc, TestClock } from "effect"
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

const send = (s: SimPveServer, method: Method, path: string, opts: { readonly form?: Json; readonly json?: unknown; readonly auth?: string | null } = {}) =>
  Effect.async<Res, Error>((resume) => {
    const headers: Record<string, string> = {}
    const auth = opts.auth === undefined ? `PVEAPIToken=${s.tokenId}=${s.tokenSecret}` : opts.auth
    if (auth !== null) headers["Authorization"] = auth
    let payload: string | undefined
    if (opts.form !== undefined) {
      payload = new URLSearchParams(Object.entries(opts.form).map(([k, v]) => [k, String(v)])).toString()
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
  send(s, "GET", `/api2/json${path}${Object.keys(query).length === 0 ? "" : `?${new URLSearchParams(Object.entries(query).map(([k, v]) => [k, String(v)]))}`}`)

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

/** Lets simulated time pass until the task stops; its status and full log. */
const finish = (s: SimPveServer, upid: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 120; i++) {
      const st = ok(yield* get(s, `${taskPath(upid)}/status`)) as Json
      if (st["status"] === "stopped") {
        const log = (ok(yield* get(s, `${taskPath(upid)}/log`, { limit: 0 })) as Array<{ t: string }>).map((l) => l.t)
        return { exitstatus: String(st["exitstatus"]), log }
      }
      yield* TestClock.adjust("30 seconds")
    }
    return expect.fail(`task ${upid} never stopped`)
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
