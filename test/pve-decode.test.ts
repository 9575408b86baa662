/** Realistic PVE response bodies (test/fixtures/pve, written from reference/proxmox-api.md) decode. */
import { describe, expect, it } from "@effect/vitest"
import { Either, Schema } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import {
  Envelope,
  ErrorBody,
  GuestConfig,
  GuestStatus,
  GuestSummary,
  NextIdResponse,
  NodeEntry,
  NodeStatus,
  NodeStorageEntry,
  PveVersion,
  SnapshotEntry,
  StorageConfigEntry,
  StorageContentEntry,
  TaskLogPage,
  TaskStatus,
  UpidOrNull,
  UpidOrOk,
  UpidResponse
} from "../src/schema/proxmox.js"

const fixture = (name: string): unknown => JSON.parse(readFileSync(join(__dirname, "fixtures", "pve", name), "utf8"))
const decode = <A, I>(schema: Schema.Schema<A, I>, name: string): A => {
  const r = Schema.decodeUnknownEither(schema)(fixture(name))
  if (Either.isLeft(r)) throw new Error(`${name}: ${r.left.message}`)
  return r.right
}
const rejects = <A, I>(schema: Schema.Schema<A, I>, value: unknown) =>
  expect(Either.isLeft(Schema.decodeUnknownEither(schema)(value))).toBe(true)

describe("PVE response fixtures decode", () => {
  it("version (PVE 9 and PVE 7 formats)", () => {
    expect(decode(Envelope(PveVersion), "version-pve9.json").data.release).toBe("9.0")
    expect(decode(Envelope(PveVersion), "version-pve7.json").data.version).toBe("7.4-16")
  })

  it("nodes, with and without stats", () => {
    const nodes = decode(Envelope(Schema.Array(NodeEntry)), "nodes.json").data
    expect(nodes[0]!.ssl_fingerprint).toMatch(/^5C:D2/)
    const two = decode(Envelope(Schema.Array(NodeEntry)), "nodes-offline.json").data
    expect(two.map((n) => n.status)).toEqual(["online", "offline"])
    expect(two[1]!.maxmem).toBeUndefined()
  })

  it("node status: loadavg and cpuinfo.mhz arrive as strings", () => {
    const s = decode(Envelope(NodeStatus), "node-status.json").data
    expect(s.loadavg).toEqual([0.41, 0.37, 0.33])
    expect(s.cpuinfo?.mhz).toBe(2100)
    expect(s.memory?.total).toBe(33517207552)
  })

  it("lxc list: PVE 9 integers and PVE 7 numbers-as-strings", () => {
    const g9 = decode(Envelope(Schema.Array(GuestSummary)), "lxc-list-pve9.json").data
    expect(g9.map((g) => [g.vmid, g.status])).toEqual([[101, "running"], [102, "stopped"], [900, "stopped"]])
    expect(g9[2]!.lock).toBe("backup")
    const g7 = decode(Envelope(Schema.Array(GuestSummary)), "lxc-list-pve7.json").data
    expect(g7[0]!.vmid).toBe(101)
    expect(g7[0]!.cpus).toBe(1.5)
    expect(g7[0]!.maxdisk).toBe(8589934592)
  })

  it("status/current with ha", () => {
    expect(decode(Envelope(GuestStatus), "lxc-status-current.json").data.ha?.managed).toBe(0)
  })

  it("config: typed keys plus raw netN/mpN/lxc/unused keys; cpulimit string", () => {
    const c = decode(Envelope(GuestConfig), "lxc-config.json").data
    expect(c.memory).toBe(2048)
    expect(c.cpulimit).toBe(1.5)
    expect(c.features).toBe("keyctl=1,nesting=1")
    expect(c["net0"]).toMatch(/^name=eth0/)
    expect(c["mp0"]).toContain("backup=0")
  })

  it("storage config and node storage (inactive usb target)", () => {
    const st = decode(Envelope(Schema.Array(StorageConfigEntry)), "storage.json").data
    expect(st.map((s) => s.type)).toEqual(["dir", "lvmthin", "pbs"])
    const ns = decode(Envelope(Schema.Array(NodeStorageEntry)), "node-storage.json").data
    expect(ns.find((s) => s.storage === "usb-1")?.active).toBe(0)
  })

  it("storage content: dir backups and PBS snapshots", () => {
    const dir = decode(Envelope(Schema.Array(StorageContentEntry)), "storage-content-backup.json").data
    expect(dir[1]!.protected).toBe(1)
    const pbs = decode(Envelope(Schema.Array(StorageContentEntry)), "storage-content-pbs.json").data
    expect(pbs[0]!.format).toBe("pbs-ct")
  })

  it("snapshot list with the 'current' pseudo-entry and a null parent", () => {
    const snaps = decode(Envelope(Schema.Array(SnapshotEntry)), "snapshot-list.json").data
    expect(snaps.map((s) => s.name)).toEqual(["pre-update", "current"])
    expect(snaps[0]!.parent).toBeUndefined()
  })

  it("task status: running, OK, and an error with numbers as strings and a 9-digit pstart", () => {
    expect(decode(Envelope(TaskStatus), "task-status-running.json").data.status).toBe("running")
    expect(decode(Envelope(TaskStatus), "task-status-ok.json").data.exitstatus).toBe("OK")
    const err = decode(Envelope(TaskStatus), "task-status-error.json").data
    expect(err.pstart).toBe(7295254752)
    expect(err.exitstatus).toContain("VM.Backup")
  })

  it("task log page with total", () => {
    const page = decode(TaskLogPage, "task-log.json")
    expect(page.total).toBe(7)
    expect(page.data.at(-1)!.t).toBe("TASK OK")
  })

  it("nextid as a string, UPID, null PUT, vzdump OK, error bodies", () => {
    expect(decode(NextIdResponse, "nextid.json").data).toBe(103)
    expect(decode(UpidResponse, "upid.json").data).toMatch(/^UPID:pve:/)
    expect(decode(UpidOrNull, "put-config-null.json").data).toBeNull()
    expect(decode(UpidOrOk, "vzdump-ok.json").data).toBe("OK")
    expect(decode(ErrorBody, "error-403.json").message).toContain("Permission check failed")
    expect(decode(ErrorBody, "error-400.json").errors?.["vmid"]).toBe("VM 101 already exists")
  })
})

describe("decoders reject what we cannot use", () => {
  it("an unknown run state, a non-numeric vmid, a missing vmid", () => {
    rejects(GuestSummary, { vmid: 101, status: "paused" })
    rejects(GuestSummary, { vmid: "abc", status: "running" })
    rejects(GuestSummary, { status: "running" })
    rejects(GuestSummary, { vmid: 42, status: "running" }) // below PVE's vmid range
  })
  it("a task status without a valid UPID or with an unknown state", () => {
    rejects(TaskStatus, { upid: "UPID:bad", node: "pve", status: "stopped" })
    rejects(TaskStatus, { upid: "UPID:pve:0003A1F2:0B2C4D5E:691F0A10:vzsnapshot:101:root@pam:", node: "pve", status: "done" })
  })
  it("a mutation answer that is neither a UPID nor null", () => {
    rejects(UpidOrNull, { data: "OK" })
    rejects(UpidResponse, { data: 17 })
    rejects(UpidResponse, { data: null })
  })
})
