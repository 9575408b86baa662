/**
 * The host report collector against the PVE simulator in-process (the production Proxmox client,
 * real 403s from revoked privileges, a wrapping HttpClient where PVE itself must misbehave for
 * one URL) and a real Journal on a temp SQLite file.
 */
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Fiber, Layer, Schema, TestClock } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { proxmoxSettings } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { Journal, JournalLive } from "../src/layers/Journal.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import {
  AUDIT_TAIL_LENGTH,
  type CloudflaredStatus,
  collectReport,
  type CollectInput,
  GUEST_CONFIG_CONCURRENCY,
  lastBackups,
  pbsSnapshots,
  ReportSkipped
} from "../src/programs/daemon/report.js"
import { HostReport, type ReportPendingSignature } from "../src/schema/hub.js"
import type { StorageContentEntry } from "../src/schema/proxmox.js"
import { defaultSeedJson, makeSimHttpClient, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { VERSION } from "../src/version.js"
import { agentConfig, inProcessProxmox, seedWith } from "./support.js"

type Json = Record<string, unknown>

const dbFile = () => join(mkdtempSync(join(tmpdir(), "felhom-report-")), "state.db")
/** Journal and Authz (the report's state epoch) over one fresh database file. */
const journal = () => {
  const db = layerAt(dbFile())
  return Layer.mergeAll(
    JournalLive,
    Layer.effect(Authz, makeAuthz({ hostId: "host-7f3a", signers: [], clockSkewSeconds: 60 }))
  ).pipe(Layer.provideMerge(db))
}

/** A fake of PVE misbehaving for some URLs: the simulator answers everything else. */
interface Wrap {
  /** Answer with this PVE-style error instead of asking the simulator. */
  readonly failWhen?: (path: string, method: string) => { readonly status: number; readonly message: string } | undefined
  /** Called around every request that reaches the simulator. */
  readonly around?: (path: string) => { readonly enter: () => void; readonly exit: () => void } | undefined
}

const wrappedProxmox = (sim: SimPve, wrap: Wrap, extra: Json = {}) => {
  const file = agentConfig("https://127.0.0.1:8006", sim.tokenId, sim.tokenSecret, { insecure_skip_verify: true }, extra)
  const client = makeSimHttpClient(sim, { reasonHeader: REASON_HEADER }).pipe(
    HttpClient.transform((effect, request) => {
      const path = new URL(request.url).pathname
      const failure = wrap.failWhen?.(path, request.method)
      if (failure !== undefined) {
        return Effect.succeed(HttpClientResponse.fromWeb(
          request,
          new Response(JSON.stringify({ data: null, message: `${failure.message}\n` }), { status: failure.status, statusText: failure.message })
        ))
      }
      const hooks = wrap.around?.(path)
      return hooks === undefined ? effect : Effect.acquireUseRelease(Effect.sync(hooks.enter), () => effect, () => Effect.sync(hooks.exit))
    })
  )
  return ProxmoxWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, client)), Layer.provide(proxmoxSettings(file.proxmox!)))
}

const pending: ReadonlyArray<ReportPendingSignature> = [
  { op: "destroy", vmid: 101, params: { purge: true }, reason: "absent from desired state", since: "2026-02-01T11:00:00Z" }
]

const input = (over: Partial<CollectInput> = {}): CollectInput => ({
  hostId: "host-7f3a",
  desiredGenerationApplied: 12,
  pendingSignatures: pending,
  cloudflared: Effect.succeed("running" as const),
  ...over
})

/** Neither the token secret nor the header value built from it may be anywhere in `x`. */
const expectNoSecret = (sim: SimPve, x: unknown) => {
  for (const text of [JSON.stringify(x), String(x), x instanceof Error ? x.message : ""]) {
    expect(text).not.toContain(sim.tokenSecret)
    expect(text).not.toContain(sim.authorization)
  }
}

/** The report must satisfy the wire contract after a JSON round trip. */
const expectWireValid = (report: HostReport) => {
  const decoded = Schema.decodeUnknownEither(HostReport)(JSON.parse(JSON.stringify(report)))
  expect(Either.isRight(decoded) ? "valid" : String(decoded.left)).toBe("valid")
}

const NOW = Date.parse("2026-02-01T12:00:00Z")

describe("collectReport: a full report from the default seed", () => {
  it.scoped("host, guests with specs, storage, last backup per target, audit tail, versions, pending signatures", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW)
      // an older nightly for 100 next to the seed's: only the newer one is reported
      const seedJson = defaultSeedJson as Json
      const backups = [...(seedJson["backups"] as Array<Json>)]
      const nightly = backups.find((b) => b["vmid"] === 100)!
      backups.push({ ...nightly, time: "2026-01-13T03:00:02Z", notes: "cust-alpha older nightly" })
      const sim = yield* makeSimPve(yield* seedWith({ backups }))

      const { last, report, tail1 } = yield* Effect.gen(function*() {
        const j = yield* Journal
        const written = []
        for (let i = 1; i <= 25; i++) {
          yield* TestClock.setTime(NOW - (26 - i) * 60_000)
          written.push(yield* j.audit({ actor: i % 2 === 0 ? "hub" : "agent", action: `action-${i}`, target: i === 3 ? null : `vmid:${100 + (i % 3)}`, decision: "allowed", detail: { i } }))
        }
        yield* TestClock.setTime(NOW)
        const report = yield* collectReport(input())
        return { last: written[written.length - 1]!, report, tail1: yield* j.auditTail(1) }
      }).pipe(Effect.provide(Layer.merge(inProcessProxmox(sim), journal())))

      expect(report).toMatchObject({
        host_id: "host-7f3a",
        agent_version: VERSION,
        reported_at: "2026-02-01T12:00:00.000Z",
        desired_generation_applied: 12,
        cloudflared: { status: "running" },
        restore_tests: [],
        pbs_snapshots: [],
        versions: { agent: VERSION, controllers: [] },
        pending_signatures: pending
      })
      expect(report.host.disk).toEqual({ total: 100861726720, used: 12884901888 })
      expect(report.host.memory.total).toBe(34359738368)
      // the host's own use plus what the running guest takes
      expect(report.host.memory.used).toBeGreaterThan(4294967296)
      expect(report.host.memory.used).toBeLessThan(34359738368)
      expect(report.host.uptime_seconds).toBeGreaterThanOrEqual(864000)
      expect(report.host.cpu).toEqual(expect.any(Number))
      expect(report.host.loadavg).toHaveLength(3) // sent as strings (quirk), reported as numbers
      expect(report.host.loadavg.every((n) => typeof n === "number")).toBe(true)

      expect(report.guests).toEqual([
        { vmid: 100, name: "cust-alpha", status: "running", lock: null, spec: { hostname: "cust-alpha", cores: 2, memory_mib: 2048, swap_mib: 512, rootfs_gib: 16 } },
        { vmid: 101, name: "cust-beta", status: "stopped", lock: null, spec: { hostname: "cust-beta", cores: 1, memory_mib: 1024, swap_mib: 512, rootfs_gib: 8 } },
        // no cores key: all host cores, reported as null
        { vmid: 102, name: "ops-tools", status: "stopped", lock: null, spec: { hostname: "ops-tools", cores: null, memory_mib: 512, swap_mib: 256, rootfs_gib: 4 } }
      ])

      // used and avail follow the volumes the simulator holds; total is the seed's
      const space = { used: expect.any(Number), avail: expect.any(Number) }
      expect(report.storage).toEqual([
        { storage: "local", type: "dir", active: true, total: 100861726720, ...space, state: "attached", target: null },
        { storage: "local-lvm", type: "lvmthin", active: true, total: 375809638400, ...space, state: "attached", target: null }
      ])

      // the golden (9000) and the newer nightly (100), from the storage's own listing
      const content = yield* sim.storageContent("local")
      const backupOf = (vmid: number, time: string) => {
        const e = content.find((c) => c["vmid"] === vmid && c["ctime"] === Date.parse(time) / 1000)!
        return { storage: "local", vmid, volid: e["volid"], ctime: e["ctime"], size: e["size"] }
      }
      expect(content.filter((c) => c["content"] === "backup")).toHaveLength(3)
      expect(report.backups).toEqual([backupOf(100, "2026-01-14T03:00:02Z"), backupOf(9000, "2026-01-10T02:00:00Z")])

      expect(report.audit_tail).toHaveLength(AUDIT_TAIL_LENGTH)
      expect(report.audit_tail.map((a) => a.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 6))
      expect(report.audit_tail[0]).toEqual({ seq: 6, at: "2026-02-01T11:40:00.000Z", actor: "hub", action: "action-6", target: "vmid:100", decision: "allowed" })
      expect(report.audit_tail[19]).toMatchObject({ seq: 25, at: "2026-02-01T11:59:00.000Z" })
      // the head is the newest entry, hash included: what the hub compares report to report
      expect(report.audit_head).toEqual({ seq: 25, hash: last.hash })
      expect(tail1).toEqual([last])
      // the database was created (the layer built) at NOW, before the backdated audit entries
      expect(report.state_epoch).toBe("2026-02-01T12:00:00.000Z")

      expectWireValid(report)
      expectNoSecret(sim, report)
    }))
})

describe("collectReport: failure rules", () => {
  it.scoped("node status 403 (Sys.Audit revoked on /nodes/pve) skips the whole report", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith())
      yield* sim.revoke(sim.tokenId, "/nodes/pve", ["Sys.Audit"])
      const error = yield* collectReport(input()).pipe(
        Effect.flip,
        Effect.provide(Layer.merge(inProcessProxmox(sim, { node: "pve" }), journal()))
      )
      expect(error).toBeInstanceOf(ReportSkipped)
      expect(error.reason).toBe("node_status_unreadable")
      expect(error.message).toMatch(/^node status unreadable: PveApiError: .*Permission check failed \(\/nodes\/pve, Sys\.Audit\)/)
      expectNoSecret(sim, error)
    }))

  it.scoped("a guest list that keeps failing skips the report (an empty list would read as every guest gone)", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith())
      const proxmox = wrappedProxmox(sim, {
        failWhen: (path) => (path.endsWith("/nodes/pve/lxc") ? { status: 500, message: "cluster not ready - no quorum?" } : undefined)
      })
      const fiber = yield* collectReport(input()).pipe(Effect.flip, Effect.provide(Layer.merge(proxmox, journal())), Effect.fork)
      yield* TestClock.adjust("1 minute") // the client's read retries run on the Clock
      const error = yield* Fiber.join(fiber)
      expect(error).toMatchObject({ _tag: "ReportSkipped", reason: "guest_list_unreadable" })
      expect(error.message).toContain("no quorum")
      expectNoSecret(sim, error)
    }))

  it.scoped("a failed config read of guest 101 keeps its run state and lock, spec null; the others are whole", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith())
      yield* sim.setLock(101, "backup")
      let configReads101 = 0
      const proxmox = wrappedProxmox(sim, {
        failWhen: (path) => {
          if (!path.endsWith("/lxc/101/config")) return undefined
          configReads101++
          return { status: 500, message: "unable to read config" }
        }
      })
      const fiber = yield* collectReport(input()).pipe(Effect.provide(Layer.merge(proxmox, journal())), Effect.fork)
      yield* TestClock.adjust("1 minute")
      const report = yield* Fiber.join(fiber)
      expect(configReads101).toBe(4) // first try plus the client's three retries
      expect(report.guests.map((g) => [g.vmid, g.status, g.lock, g.spec === null])).toEqual([
        [100, "running", null, false],
        [101, "stopped", "backup", true],
        [102, "stopped", null, false]
      ])
      expect(report.backups).toHaveLength(2)
      expectWireValid(report)
      expectNoSecret(sim, report)
    }))

  it.scoped("a failed storage content read drops only that storage's backups; a failed storage list drops storage and backups", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith())
      const run = (failing: string) =>
        collectReport(input()).pipe(
          Effect.provide(Layer.merge(
            wrappedProxmox(sim, { failWhen: (path) => (path.endsWith(failing) ? { status: 403, message: "Permission check failed (/storage/local, Datastore.Audit|Datastore.AllocateSpace)" } : undefined) }),
            journal()
          ))
        )
      const noContent = yield* run("/storage/local/content")
      expect(noContent.storage.map((s) => s.storage)).toEqual(["local", "local-lvm"])
      expect(noContent.backups).toEqual([])
      expect(noContent.guests).toHaveLength(3)

      const noList = yield* run("/nodes/pve/storage")
      expect(noList.storage).toEqual([])
      expect(noList.backups).toEqual([])
      expect(noList.guests.every((g) => g.spec !== null)).toBe(true)
      expectWireValid(noList)
    }))

  it.scoped("an inactive (unreachable) storage is reported disconnected and its content is not read", () =>
    Effect.gen(function*() {
      const storages = [
        ...((defaultSeedJson as Json)["storages"] as Array<Json>),
        // is_mountpoint: without it PVE keeps an absent disk's storage active on the root filesystem
        { storage: "usb-backup", type: "dir", path: "/mnt/felhom/usb1", is_mountpoint: "yes", content: ["backup"], total: 1000, used: 10, active: false }
      ]
      const sim = yield* makeSimPve(yield* seedWith({ storages }))
      const contentReads: Array<string> = []
      const proxmox = wrappedProxmox(sim, {
        around: (path) => {
          if (path.endsWith("/content")) contentReads.push(path)
          return undefined
        }
      })
      const report = yield* collectReport(input()).pipe(Effect.provide(Layer.merge(proxmox, journal())))
      expect(contentReads).toEqual(["/api2/json/nodes/pve/storage/local/content"])
      expect(report.storage.map((s) => [s.storage, s.active, s.state])).toEqual([
        ["local", true, "attached"],
        ["local-lvm", true, "attached"],
        ["usb-backup", false, "disconnected"]
      ])
      expectWireValid(report)
    }))

  it.scoped("the cloudflared probe failing, dying or hanging reads as unknown; its answer otherwise", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith())
      const statusWith = (probe: Effect.Effect<CloudflaredStatus, unknown>) =>
        collectReport(input({ cloudflared: probe })).pipe(
          Effect.map((r) => r.cloudflared.status),
          Effect.provide(Layer.merge(inProcessProxmox(sim), journal()))
        )
      expect(yield* statusWith(Effect.succeed("stopped"))).toBe("stopped")
      expect(yield* statusWith(Effect.fail(new Error("systemctl exploded")))).toBe("unknown")
      expect(yield* statusWith(Effect.die("bug"))).toBe("unknown")
      const hanging = yield* Effect.fork(statusWith(Effect.never))
      yield* TestClock.adjust("11 seconds")
      expect(yield* Fiber.join(hanging)).toBe("unknown")
    }))
})

describe("collectReport: collections are arrays, never null", () => {
  it.scoped("a host with no guests, no backups, an empty journal and nothing pending", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ guests: [], backups: [] }))
      const report = yield* collectReport(input({ pendingSignatures: [], desiredGenerationApplied: null })).pipe(
        Effect.provide(Layer.merge(inProcessProxmox(sim), journal()))
      )
      expect(report).toMatchObject({
        desired_generation_applied: null,
        guests: [],
        backups: [],
        restore_tests: [],
        pbs_snapshots: [],
        audit_tail: [],
        audit_head: null,
        pending_signatures: [],
        versions: { controllers: [] }
      })
      expect(report.storage).toHaveLength(2)
      expect(JSON.stringify(report)).not.toMatch(/"(guests|storage|backups|restore_tests|pbs_snapshots|audit_tail|pending_signatures|controllers|loadavg)":null/)
      expectWireValid(report)
    }))

  it.scoped("no storage visible (Datastore.Audit revoked on /storage): storage and backups are []", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith())
      yield* sim.revoke(sim.tokenId, "/storage", ["Datastore.Audit", "Datastore.AllocateSpace", "Datastore.Allocate"])
      const report = yield* collectReport(input()).pipe(Effect.provide(Layer.merge(inProcessProxmox(sim), journal())))
      expect(report.storage).toEqual([])
      expect(report.backups).toEqual([])
      expect(report.guests).toHaveLength(3)
    }))
})

describe("collectReport: bounded concurrency", () => {
  it.live(`with 50 guests and a slow PVE, at most ${GUEST_CONFIG_CONCURRENCY} config reads are in flight`, () =>
    Effect.scoped(Effect.gen(function*() {
      const base = (defaultSeedJson as Json)["guests"] as Array<Json>
      const template = base.find((g) => g["vmid"] === 102)!["config"] as Json
      const guests = Array.from({ length: 50 }, (_, i) => ({
        vmid: 200 + i,
        status: i % 3 === 0 ? "running" : "stopped",
        config: { ...template, hostname: `g${200 + i}`, rootfs: `local-lvm:vm-${200 + i}-disk-0,size=4G`, protection: 0 }
      }))
      const sim = yield* makeSimPve(yield* seedWith({ guests, backups: [] }))
      yield* sim.setFaults({ latency_ms: 15 })
      let inFlight = 0
      let peak = 0
      let reads = 0
      const proxmox = wrappedProxmox(sim, {
        around: (path) =>
          /\/lxc\/\d+\/config$/.test(path)
            ? {
              enter: () => {
                reads++
                peak = Math.max(peak, ++inFlight)
              },
              exit: () => {
                inFlight--
              }
            }
            : undefined
      })
      const report = yield* collectReport(input()).pipe(Effect.provide(Layer.merge(proxmox, journal())))
      expect(report.guests).toHaveLength(50)
      expect(report.guests.every((g) => g.spec !== null)).toBe(true)
      expect(reads).toBe(50)
      expect(peak).toBe(GUEST_CONFIG_CONCURRENCY)

      // a smaller bound is honoured too
      peak = 0
      yield* collectReport(input({ configConcurrency: 3 })).pipe(Effect.provide(Layer.merge(proxmox, journal())))
      expect(peak).toBe(3)
    })))
})

// ---------------------------------------------------------------------------------------------

const entry = (e: Partial<StorageContentEntry> & { volid: string }): StorageContentEntry => ({ content: "backup", ...e })

describe("backup selection (pure)", () => {
  it("last per vmid by ctime, then by volid; vmid from the field or the volume name; other content skipped", () => {
    const got = lastBackups("nfs", [
      entry({ volid: "nfs:backup/vzdump-lxc-100-2026_01_01-00_00_00.tar.zst", vmid: 100, ctime: 10, size: 1 }),
      entry({ volid: "nfs:backup/vzdump-lxc-100-2026_01_03-00_00_00.tar.zst", vmid: 100, ctime: 30, size: 3 }),
      entry({ volid: "nfs:backup/vzdump-lxc-100-2026_01_02-00_00_00.tar.zst", vmid: 100, ctime: 20, size: 2 }),
      entry({ volid: "nfs:backup/vzdump-lxc-105-2026_01_01-00_00_00.tar.zst", ctime: 5 }),
      entry({ volid: "nfs:backup/vzdump-lxc-106-2026_01_01-00_00_00.tar.zst", vmid: 106 }),
      entry({ volid: "nfs:backup/vzdump-lxc-106-2026_01_02-00_00_00.tar.zst", vmid: 106 }),
      entry({ volid: "nfs:iso/debian.iso", content: "iso", vmid: 100, ctime: 99 }),
      entry({ volid: "nfs:backup/mystery.tar" })
    ])
    expect(got).toEqual([
      { storage: "nfs", vmid: 100, volid: "nfs:backup/vzdump-lxc-100-2026_01_03-00_00_00.tar.zst", ctime: 30, size: 3 },
      { storage: "nfs", vmid: 105, volid: "nfs:backup/vzdump-lxc-105-2026_01_01-00_00_00.tar.zst", ctime: 5, size: null },
      { storage: "nfs", vmid: 106, volid: "nfs:backup/vzdump-lxc-106-2026_01_02-00_00_00.tar.zst", ctime: null, size: null }
    ])
  })

  it("PBS: every snapshot, by vmid then time; vmid parsed from backup/ct/<vmid>/<time>", () => {
    const snaps = [
      entry({ volid: "pbs:backup/ct/101/2026-01-02T03:00:00Z", ctime: 200 }),
      entry({ volid: "pbs:backup/ct/100/2026-01-02T03:00:00Z", vmid: 100, ctime: 200 }),
      entry({ volid: "pbs:backup/ct/100/2026-01-01T03:00:00Z", vmid: 100, ctime: 100 })
    ]
    expect(pbsSnapshots("pbs", snaps)).toEqual([
      { storage: "pbs", vmid: 100, volid: "pbs:backup/ct/100/2026-01-01T03:00:00Z", ctime: 100 },
      { storage: "pbs", vmid: 100, volid: "pbs:backup/ct/100/2026-01-02T03:00:00Z", ctime: 200 },
      { storage: "pbs", vmid: 101, volid: "pbs:backup/ct/101/2026-01-02T03:00:00Z", ctime: 200 }
    ])
    expect(lastBackups("pbs", snaps).map((b) => b.volid)).toEqual([
      "pbs:backup/ct/100/2026-01-02T03:00:00Z",
      "pbs:backup/ct/101/2026-01-02T03:00:00Z"
    ])
    expect(pbsSnapshots("pbs", [])).toEqual([])
  })
})
