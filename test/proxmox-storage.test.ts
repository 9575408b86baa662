/**
 * The Proxmox client's storage methods (issue 10) against the PVE simulator over real HTTPS on
 * loopback (pinned certificate): PBS/NFS/CIFS entries decode, deleteBackup is cleared per
 * archive and waited as PVE's imgdel task, createStorage per type with its secrets kept out of
 * every error (even when PVE echoes the request body), vzdump never lets PVE prune nor hit its
 * backup limit, a restore's net0 override. Tasks take 100 ms of simulated time.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Redacted, Schema } from "effect"
import { inspect } from "node:util"
import { backupOwner, printNetOverride, Proxmox, type ProxmoxShape } from "../src/layers/Proxmox.js"
import { clearForConsole } from "../src/programs/control/gate.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { defaultSeedJson, serveSimPve, type SimPveServer } from "../src/sim/pve/index.js"
import { classifyRequest } from "./sim-calls.js"
import { durations, httpsProxmox, seedWith } from "./support.js"

type Json = Record<string, unknown>

const vmid = (n: number) => VmId.make(n)
const storage = (s: string) => Schema.decodeSync(StorageId)(s)
const volume = (s: string) => Schema.decodeSync(VolumeId)(s)

const GiB = 1024 ** 3
const PBS_FP = "0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9"
const KEY_FP = "0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9:0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9"
const NIGHTLY = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
const PBS_SNAP = "pbs1:backup/ct/101/2026-02-20T02:00:04Z"

const base = defaultSeedJson as { storages: ReadonlyArray<Json>; backups: ReadonlyArray<Json> }

const SEED: Json = {
  ...durations(100),
  task_durations_ms: { ...durations(100).task_durations_ms, imgdel: 100 },
  storages: [
    ...base.storages,
    { storage: "nas", type: "nfs", server: "192.0.2.10", export: "/srv/backup", path: "/mnt/pve/nas", content: ["backup"], total: 500 * GiB, used: 0, "prune-backups": "keep-last=1" },
    {
      storage: "pbs1", type: "pbs", server: "pbs.example.net", datastore: "felhom", username: "felhom@pbs!host1", fingerprint: PBS_FP,
      namespace: "host1", "encryption-key": KEY_FP, content: ["backup"], total: 1024 * GiB, used: 0
    }
  ],
  backups: [
    ...base.backups,
    { storage: "pbs1", vmid: 101, time: "2026-02-20T02:00:04Z", size: 734003200, verification: "failed", config: { hostname: "cust-beta", rootfs: "local-lvm:vm-101-disk-0,size=8G" } },
    { storage: "nas", vmid: 100, time: "2026-02-20T02:00:00Z", size: GiB, config: { hostname: "cust-alpha", rootfs: "local-lvm:vm-100-disk-0,size=16G" } }
  ]
}

const withSim = <A, E>(body: (server: SimPveServer) => Effect.Effect<A, E, Proxmox>, extra: Json = {}) =>
  Effect.scoped(Effect.gen(function*() {
    const server = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed: yield* seedWith({ ...SEED, ...extra }) })
    return yield* body(server).pipe(Effect.provide(httpsProxmox(server)))
  }))

// Compile-time half: both lines must fail to type-check (tsc runs in `npm test`).
export const typeLevel = (pve: ProxmoxShape) => {
  // @ts-expect-error deleting a backup takes a clearance
  void pve.deleteBackup(storage("local"), volume(NIGHTLY))
  // @ts-expect-error a destroy clearance does not delete a backup
  void pve.deleteBackup(storage("local"), volume(NIGHTLY), clearForConsole({ call: "destroy", vmid: vmid(100) }, "t"))
}

const requestsSince = (server: SimPveServer, seq: number) => Effect.map(server.sim.requests, (rs) => rs.filter((r) => r.seq > seq))

describe("Proxmox client: storage reads", () => {
  it.live("PBS, NFS entries decode: listing fields, content with encrypted and verification, node status", () =>
    withSim(() =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const list = yield* pve.storageList
        expect(list.find((s) => s.storage === "pbs1")).toMatchObject({
          type: "pbs", server: "pbs.example.net", datastore: "felhom", username: "felhom@pbs!host1", fingerprint: PBS_FP, namespace: "host1", "encryption-key": KEY_FP
        })
        expect(list.find((s) => s.storage === "nas")).toMatchObject({ type: "nfs", server: "192.0.2.10", export: "/srv/backup", "prune-backups": "keep-last=1" })
        const [snap] = yield* pve.storageContent(storage("pbs1"), { content: "backup" })
        expect(snap).toMatchObject({ volid: PBS_SNAP, format: "pbs-ct", subtype: "lxc", vmid: 101, encrypted: KEY_FP })
        expect(snap?.verification?.state).toBe("failed")
        expect(snap?.verification?.upid).toMatch(/^UPID:pbs:/)
        expect((yield* pve.nodeStorage).find((s) => s.storage === "pbs1")?.active).toBe(1)
      })))

  it.live("an unreachable PBS: node status says inactive with zero sizes, its listing is a PveApiError with PVE's text", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* server.sim.setStorage("pbs1", { online: false })
        expect((yield* pve.nodeStorage).find((s) => s.storage === "pbs1")).toMatchObject({ active: 0, total: 0, used: 0 })
        const e = yield* pve.storageContent(storage("pbs1")).pipe(Effect.flip)
        expect(e._tag === "PveApiError" && [e.status, e.kind]).toEqual([500, "server"])
        expect(e.message).toContain("pbs1: error fetching datastores")
      })))
})

describe("Proxmox client: deleteBackup", () => {
  it.live("with a clearance for exactly that archive: one DELETE, an imgdel task waited to OK, the archive gone", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const seq = yield* server.sim.requestSeq
        const clearance = clearForConsole({ call: "delete-backup", vmid: vmid(100), storage: storage("local"), volume: volume(NIGHTLY) }, "test")
        const upid = yield* pve.deleteBackup(storage("local"), volume(NIGHTLY), clearance)
        const done = yield* pve.waitTask(upid)
        expect([done.type, done.id, done.exitstatus]).toEqual(["imgdel", "100@local", "OK"])
        expect((yield* pve.storageContent(storage("local"), { vmid: vmid(100) })).map((e) => e.volid)).toEqual([])
        const sent = (yield* requestsSince(server, seq)).filter((r) => r.method !== "GET")
        expect(sent.map((r) => [r.method, r.path])).toEqual([["DELETE", `/nodes/pve/storage/local/content/${encodeURIComponent(NIGHTLY)}`]])
        expect(classifyRequest(sent[0]!)).toEqual({ kind: "delete-backup", volume: NIGHTLY })
        // a PBS snapshot the same way
        const pbs = clearForConsole({ call: "delete-backup", vmid: vmid(101), storage: storage("pbs1"), volume: volume(PBS_SNAP) }, "test")
        yield* pve.waitTask(yield* pve.deleteBackup(storage("pbs1"), volume(PBS_SNAP), pbs))
        expect(yield* pve.storageContent(storage("pbs1"))).toEqual([])
      })))

  it.live("refused before anything is sent: a clearance for another archive, a spent one, a volume that is no guest backup or not on that storage", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const seq = yield* server.sim.requestSeq
        const forGolden = clearForConsole({ call: "delete-backup", vmid: vmid(9000), storage: storage("local"), volume: volume(GOLDEN) }, "test")
        const other = yield* pve.deleteBackup(storage("local"), volume(NIGHTLY), clearForConsole({ call: "delete-backup", vmid: vmid(100), storage: storage("nas"), volume: volume(NIGHTLY) }, "t")).pipe(Effect.flip)
        expect(other._tag).toBe("ClearanceRefused")
        expect(other.message).toContain("clearance was issued for delete backup")
        const wrong = yield* pve.deleteBackup(storage("local"), volume(NIGHTLY), forGolden).pipe(Effect.flip)
        expect(wrong._tag).toBe("ClearanceRefused")
        const tmpl = yield* pve.deleteBackup(
          storage("local"),
          volume("local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst"),
          clearForConsole({ call: "delete-backup", vmid: vmid(100), storage: storage("local"), volume: volume("local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst") }, "t")
        ).pipe(Effect.flip)
        expect([tmpl._tag, tmpl.message]).toEqual(["ClearanceRefused", "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst is not a guest backup on local: not deleted"])
        const elsewhere = yield* pve.deleteBackup(storage("nas"), volume(NIGHTLY), clearForConsole({ call: "delete-backup", vmid: vmid(100), storage: storage("nas"), volume: volume(NIGHTLY) }, "t")).pipe(Effect.flip)
        expect(elsewhere._tag).toBe("ClearanceRefused")
        expect((yield* requestsSince(server, seq)).filter((r) => r.method === "DELETE")).toEqual([])
        // the golden clearance is still unspent (the refusals above did not redeem it): PVE refuses the protected archive in the task
        const e = yield* pve.deleteBackup(storage("local"), volume(GOLDEN), forGolden).pipe(Effect.flatMap((u) => pve.waitTask(u)), Effect.flip)
        expect(e._tag === "PveTaskFailed" && e.exitstatus).toBe("cannot remove protected volume 'backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst' on 'local'")
        const spent = yield* pve.deleteBackup(storage("local"), volume(GOLDEN), forGolden).pipe(Effect.flip)
        expect([spent._tag, spent.message]).toEqual(["ClearanceRefused", `delete backup ${GOLDEN} of 9000 on local: clearance already used`])
      })))

  it("backupOwner reads the guest from vzdump names and PBS groups only", () => {
    expect(backupOwner(NIGHTLY)).toEqual(Option.some(100))
    expect(backupOwner(PBS_SNAP)).toEqual(Option.some(101))
    expect(backupOwner("local:backup/vzdump-qemu-205-2026_01_01-00_00_00.vma.zst")).toEqual(Option.some(205))
    expect(backupOwner("local:backup/my-copy.tar.zst")).toEqual(Option.none())
    expect(backupOwner("local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst.notes")).toEqual(Option.none())
    expect(backupOwner("local-lvm:vm-100-disk-0")).toEqual(Option.none())
    expect(backupOwner("pbs1:backup/ct/12/2026-02-20T02:00:04Z")).toEqual(Option.none())
  })
})

describe("Proxmox client: createStorage", () => {
  it.live("dir (a USB mount point) and nfs: created with is_mountpoint and keep-all=1, listed, active", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const usb = yield* pve.createStorage({ type: "dir", storage: storage("usb1"), path: "/mnt/felhom/usb1", isMountpoint: true, content: ["backup"] })
        expect([usb.storage, usb.type, Option.isNone(usb.encryptionKey)]).toEqual(["usb1", "dir", true])
        yield* pve.createStorage({ type: "nfs", storage: storage("nas2"), server: "nas.lan", export: "/export/pve", content: ["backup"] })
        const list = yield* pve.storageList
        expect(list.find((s) => s.storage === "usb1")).toMatchObject({ path: "/mnt/felhom/usb1", is_mountpoint: "yes", "prune-backups": "keep-all=1", content: "backup" })
        expect(list.find((s) => s.storage === "nas2")).toMatchObject({ server: "nas.lan", export: "/export/pve", path: "/mnt/pve/nas2", "prune-backups": "keep-all=1" })
        // pulled: the storage PVE now knows goes inactive (the agent's watchdog reads this)
        yield* server.sim.setStorage("usb1", { online: false })
        expect((yield* pve.nodeStorage).find((s) => s.storage === "usb1")?.active).toBe(0)
      })))

  it.live("pbs with an autogen key: the key comes back once, as a Redacted that never prints; PVE lists only its fingerprint", () =>
    withSim(() =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const created = yield* pve.createStorage({
          type: "pbs",
          storage: storage("pbs2"),
          server: "pbs.lan",
          datastore: "store1",
          username: "felhom@pbs!h1",
          password: Redacted.make("pbs-token-secret-7f3a91"),
          fingerprint: PBS_FP,
          encryptionKey: "autogen",
          content: ["backup"]
        })
        const key = Option.getOrThrow(created.encryptionKey)
        const json = JSON.parse(Redacted.value(key)) as { data: string; fingerprint: string }
        expect(json.data.length).toBeGreaterThan(40)
        for (const shown of [String(created.encryptionKey), JSON.stringify(created), inspect(created, { depth: 5 })]) {
          expect(shown).not.toContain(json.data)
          expect(shown).not.toContain("pbs-token-secret-7f3a91")
        }
        expect((yield* pve.storageList).find((s) => s.storage === "pbs2")?.["encryption-key"]).toBe(json.fingerprint)
      })))

  it.live("passwords and keys never reach an error, even from a PVE that echoes the request body into every error text", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* server.sim.setFaults({ echo_headers: ["body", "message", "reason"] })
        const keyData = "c2ltLWtleS1kYXRhLTMyLWJ5dGVzLWxvbmctLS0tLS0="
        const keyJson = JSON.stringify({ data: keyData, kdf: null, created: "2026-01-01T00:00:00+00:00", fingerprint: KEY_FP })
        const password = "cifs-pw-9d2e7b41c0"
        const failures = [
          // already defined: refused inside the config lock, body echoed
          yield* pve.createStorage({ type: "cifs", storage: storage("local"), server: "nas.lan", share: "pve", username: "u", password: Redacted.make(password), content: ["backup"] }).pipe(Effect.flip),
          yield* pve.createStorage({
            type: "pbs", storage: storage("pbs1"), server: "pbs.lan", datastore: "d", username: "felhom@pbs!h1",
            password: Redacted.make(password), encryptionKey: Redacted.make(keyJson), content: ["backup"]
          }).pipe(Effect.flip)
        ]
        // the simulator did echo them: without the scrubbing they would be in the text
        const echoed = (yield* server.sim.requests).filter((r) => r.path === "/storage")
        expect(echoed.map((r) => r.status)).toEqual([500, 500])
        // the echoed key is within the part of the text the error keeps
        expect(failures[1]!.message).toContain("encryption-key=")
        for (const e of failures) {
          expect(e._tag).toBe("PveApiError")
          expect(e.message).toContain("create storage failed: storage ID")
          expect(e.message).toContain("<redacted>")
          for (const shown of [e.message, JSON.stringify(e), inspect(e, { depth: 5 }), String(e)]) {
            expect(shown).not.toContain(password)
            expect(shown).not.toContain(keyData)
            expect(shown).not.toContain(server.tokenSecret)
          }
        }
      })))

  it.live("refused before sending, naming the field but not its value: a bad fingerprint, a control character", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const seq = yield* server.sim.requestSeq
        const fp = yield* pve.createStorage({
          type: "pbs", storage: storage("p9"), server: "pbs.lan", datastore: "d", username: "u@pbs!t", password: Redacted.make("x-secret-123456"),
          fingerprint: "AA:BB", content: ["backup"]
        }).pipe(Effect.flip)
        expect([fp._tag, fp._tag === "PveApiError" && fp.kind, fp.message]).toEqual(["PveApiError", "validation", "not sent: fingerprint: expected 32 colon-separated hex pairs (SHA-256)"])
        const ctl = yield* pve.createStorage({
          type: "cifs", storage: storage("c9"), server: "nas.lan", share: "pve", password: Redacted.make("line\nbreak-secret"), content: ["backup"]
        }).pipe(Effect.flip)
        expect(ctl.message).toBe("not sent: password: empty or contains a control character")
        expect((yield* requestsSince(server, seq)).filter((r) => r.path === "/storage")).toEqual([])
      })))
})

describe("Proxmox client: vzdump never lets PVE prune, restore's net0", () => {
  it.live("on a keep-last=1 storage vzdump keeps every archive and is not stopped by PVE's backup limit (remove=0 with keep-all=1)", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const before = (yield* pve.storageContent(storage("nas"), { vmid: vmid(100) })).map((e) => e.volid)
        expect(before).toHaveLength(1)
        const seq = yield* server.sim.requestSeq
        const upid = Option.getOrThrow(yield* pve.vzdump({ vmid: vmid(100), storage: storage("nas") }))
        yield* pve.waitTask(upid)
        const after = (yield* pve.storageContent(storage("nas"), { vmid: vmid(100) })).map((e) => e.volid)
        expect(after).toHaveLength(2)
        expect(after).toEqual(expect.arrayContaining(before))
        const sent = (yield* requestsSince(server, seq)).find((r) => r.path === "/nodes/pve/vzdump")!
        expect(sent.params).toMatchObject({ remove: "0", "prune-backups": "keep-all=1" })
        expect(classifyRequest(sent)).toBeNull()
      })))

  it.live("a restore's net0 override (link down, fresh MAC) lands in the config; with unique it is refused unsent", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const net0 = { name: "eth0", bridge: "vmbr0", linkDown: true, ip: "manual" }
        yield* pve.waitTask(yield* pve.restore({ vmid: vmid(900), archive: volume(NIGHTLY), storage: storage("local-lvm"), net0 }))
        const conf = yield* pve.guestConfig(vmid(900))
        expect(String(conf["net0"])).toMatch(/^name=eth0,bridge=vmbr0,hwaddr=BC:24:11:[0-9A-F:]{8},ip=manual,link_down=1,type=veth$/)
        const seq = yield* server.sim.requestSeq
        const e = yield* pve.restore({ vmid: vmid(901), archive: volume(NIGHTLY), storage: storage("local-lvm"), unique: true, net0 }).pipe(Effect.flip)
        expect(e.message).toBe("not sent: net0 together with unique: PVE would replace net0 with the backup's")
        expect((yield* requestsSince(server, seq)).filter((r) => r.method === "POST")).toEqual([])
      })))

  it("printNetOverride: PVE's property string; bad names, multicast MACs and odd IPs are refused without echoing them", () => {
    expect(printNetOverride({ name: "eth0", bridge: "vmbr0", linkDown: true, hwaddr: "bc:24:11:00:00:01", ip: "10.0.0.5/24", firewall: false }))
      .toEqual(Either.right("name=eth0,bridge=vmbr0,firewall=0,hwaddr=BC:24:11:00:00:01,ip=10.0.0.5/24,link_down=1,type=veth"))
    expect(printNetOverride({ name: "eth0,link_down=0", bridge: "vmbr0", linkDown: true })).toEqual(Either.left("net0.name: expected an interface name like eth0"))
    expect(printNetOverride({ name: "eth0", bridge: "vmbr0", linkDown: true, hwaddr: "01:00:5E:00:00:01" })).toEqual(Either.left("net0.hwaddr: expected a unicast MAC address"))
    expect(printNetOverride({ name: "eth0", bridge: "vmbr0", linkDown: false, ip: "dhcp,gw=1.2.3.4" })).toEqual(Either.left("net0.ip: expected dhcp, manual or an IPv4 CIDR"))
  })
})
