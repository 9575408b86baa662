/**
 * The production Proxmox client against the PVE simulator over real HTTPS on loopback (pinned
 * certificate): every operation, waited to completion, and every error type.
 * Tasks are shortened to 100 ms of simulated time so each wait costs one 1 s poll interval.
 */
import { clearForConsole } from "../src/programs/control/gate.js"
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Schema } from "effect"
import { proxmoxSettings } from "../src/layers/Config.js"
import { Proxmox, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { SnapshotName, StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { defaultSeedJson, serveSimPve } from "../src/sim/pve/index.js"
import { agentConfig, durations, httpsProxmox, seedWith } from "./support.js"

const vmid = (n: number) => VmId.make(n)
const snap = (s: string) => Schema.decodeSync(SnapshotName)(s)
const storage = (s: string) => Schema.decodeSync(StorageId)(s)
const TOKEN = "felhom@pve!agent"

/** A fresh simulator on 127.0.0.1:0 and the production client pinned to it. */
const withSim = <A, E>(
  body: (ctx: { readonly server: Effect.Effect.Success<ReturnType<typeof serveSimPve>> }) => Effect.Effect<A, E, Proxmox>,
  seedOverrides: Record<string, unknown> = durations(100)
) =>
  Effect.scoped(Effect.gen(function*() {
    const seed = yield* seedWith(seedOverrides)
    const server = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed })
    return yield* body({ server }).pipe(Effect.provide(httpsProxmox(server)))
  }))

describe("Proxmox client over HTTPS against the simulator: reads", () => {
  it.live("version, nodes, node, node status, guests, status, config, snapshots, storage, content, nextid", () =>
    withSim(({ server }) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        expect((yield* pve.version).version).toMatch(/^9\./)
        const nodes = yield* pve.nodes
        expect(nodes.map((n) => n.node)).toEqual(["pve"])
        expect(nodes[0]!.ssl_fingerprint).toBe(server.fingerprint256)
        expect(yield* pve.node).toBe("pve")
        const status = yield* pve.nodeStatus
        expect(status.loadavg?.length).toBe(3)
        expect(status.memory?.total).toBeGreaterThan(0)
        const guests = yield* pve.listGuests
        expect(guests.map((g) => [g.vmid, g.status])).toEqual([[100, "running"], [101, "stopped"], [102, "stopped"]])
        expect((yield* pve.guestStatus(vmid(100))).status).toBe("running")
        const config = yield* pve.guestConfig(vmid(100))
        expect(config.hostname).toBe("cust-alpha")
        expect(config.digest).toMatch(/^[0-9a-f]{40}$/)
        expect(config.cpulimit).toBeUndefined()
        expect((yield* pve.guestConfig(vmid(102))).cpulimit).toBe(1.5) // a string on the wire
        const snaps = yield* pve.listSnapshots(vmid(101))
        expect(snaps.map((s) => s.name).sort()).toEqual(["current", "pre_upgrade"])
        const atSnapshot = yield* pve.guestConfig(vmid(101), { snapshot: snap("pre_upgrade") })
        expect(atSnapshot.hostname).toBe("cust-beta")
        expect((yield* pve.storageList).map((s) => s.storage)).toEqual(["local", "local-lvm"])
        expect((yield* pve.nodeStorage).every((s) => s.active === 1)).toBe(true)
        const backups = yield* pve.storageContent(storage("local"), { content: "backup" })
        expect(backups.some((b) => b.volid.includes("vzdump-lxc-9000-"))).toBe(true)
        const only100 = yield* pve.storageContent(storage("local"), { content: "backup", vmid: vmid(100) })
        expect(only100.every((b) => b.vmid === 100)).toBe(true)
        expect(yield* pve.nextId()).toBe(103)
        expect(yield* pve.nextId(vmid(500))).toBe(500)
      })
    ))

  it.live("PVE 7 shapes (vmid as a string) decode the same", () =>
    withSim(() =>
      Effect.gen(function*() {
        const guests = yield* (yield* Proxmox).listGuests
        expect(guests.map((g) => g.vmid)).toEqual([100, 101, 102])
      }), { ...durations(100), quirks: { vmid_as_string: true, status_ints_as_string: true, error_message_body: false } }))
})

describe("Proxmox client over HTTPS against the simulator: async mutations", () => {
  it.live("snapshot → rollback → delete snapshot, each waited to OK, with task status and log", () =>
    withSim(({ server }) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const upid = yield* pve.snapshot(vmid(101), snap("t1"), "test")
        const done = yield* pve.waitTask(upid)
        expect(done.exitstatus).toBe("OK")
        expect(done.type).toBe("vzsnapshot")
        const log = yield* pve.taskLog(upid)
        expect(log.lines.at(-1)).toBe("TASK OK")
        expect(log.total).toBe(log.lines.length)
        expect((yield* pve.taskLogTail(upid, 1))).toEqual(["TASK OK"])
        yield* pve.rollback(vmid(101), snap("t1"), {}, clearForConsole({ call: "rollback", vmid: vmid(101), snapshot: snap("t1") }, "test")).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        yield* pve.deleteSnapshot(vmid(101), snap("t1"), {}, clearForConsole({ call: "delete-snapshot", vmid: vmid(101), snapshot: snap("t1") }, "test")).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        const g = Option.getOrThrow(yield* server.sim.guest(101))
        expect(g.snapshots.map((s) => s.name)).toEqual(["pre_upgrade"])
      })
    ))

  it.live("restore from the golden archive creates the guest and keeps keyctl+nesting; then size, start, stop, destroy", () =>
    withSim(({ server }) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const golden = (yield* pve.storageContent(storage("local"), { content: "backup", vmid: vmid(9000) }))[0]!
        const id = yield* pve.nextId()
        const restore = yield* pve.restore({
          vmid: id,
          archive: Schema.decodeSync(VolumeId)(golden.volid),
          storage: storage("local-lvm"),
          unique: true,
          hostname: "cust-new",
          cores: 2,
          memoryMiB: 1536
        })
        yield* pve.waitTask(restore)
        const config = yield* pve.guestConfig(id)
        expect(config.features).toBe("keyctl=1,nesting=1")
        expect(config.hostname).toBe("cust-new")
        expect(config.memory).toBe(1536)

        // set config, synchronous on PVE: None means applied
        const applied = yield* pve.setConfig(id, { set: { cores: 3, description: "resized" }, digest: config.digest! })
        expect(Option.isNone(applied)).toBe(true)
        expect((yield* pve.guestConfig(id)).cores).toBe(3)

        yield* pve.resize(id, "rootfs", "+2G", clearForConsole({ call: "resize", vmid: id, disk: "rootfs", size: "+2G" }, "test")).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        expect((yield* pve.guestConfig(id)).rootfs).toMatch(/size=6G/)

        yield* pve.start(id).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        expect((yield* pve.guestStatus(id)).status).toBe("running")
        yield* pve.shutdown(id, { timeoutSeconds: 30 }).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        expect((yield* pve.guestStatus(id)).status).toBe("stopped")
        yield* pve.start(id).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        yield* pve.stop(id).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        yield* pve.destroy(id, { purge: true }, clearForConsole({ call: "destroy", vmid: id }, "test")).pipe(Effect.flatMap((u) => pve.waitTask(u)))
        expect(Option.isNone(yield* server.sim.guest(id))).toBe(true)
      })
    ), 30_000)

  it.live("vzdump writes a new archive into storage content; the string \"OK\" maps to None", () =>
    withSim(() =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const before = yield* pve.storageContent(storage("local"), { content: "backup", vmid: vmid(101) })
        const upid = yield* pve.vzdump({ vmid: vmid(101), storage: storage("local") })
        expect(Option.isSome(upid)).toBe(true)
        yield* pve.waitTask(Option.getOrThrow(upid))
        const after = yield* pve.storageContent(storage("local"), { content: "backup", vmid: vmid(101) })
        expect(after.length).toBe(before.length + 1)
        expect(after.at(-1)!.volid).toMatch(/^local:backup\/vzdump-lxc-101-\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d\.tar\.zst$/)
        // a guest that is not on this node: PVE answers "OK" and starts nothing
        expect(Option.isNone(yield* pve.vzdump({ vmid: vmid(4242), storage: storage("local") }))).toBe(true)
      })
    ))
})

describe("Proxmox client over HTTPS against the simulator: every error type", () => {
  it.live("403 names the missing privilege and its ACL path", () =>
    withSim(({ server }) =>
      Effect.gen(function*() {
        yield* server.sim.revoke(TOKEN, "/vms/101", ["VM.Snapshot"])
        const e = yield* (yield* Proxmox).snapshot(vmid(101), snap("nope")).pipe(Effect.flip)
        expect(e._tag).toBe("PveApiError")
        if (e._tag !== "PveApiError") return
        expect(e.status).toBe(403)
        expect(e.kind).toBe("permission")
        expect(e.permission).toEqual({ aclPath: "/vms/101", privileges: ["VM.Snapshot"] })
        expect(JSON.stringify(e)).not.toContain(server.tokenSecret)
      })
    ))

  it.live("403 from a pre-8.3 host (text only in the reason phrase) still names the privilege", () =>
    withSim(({ server }) =>
      Effect.gen(function*() {
        yield* server.sim.revoke(TOKEN, "/nodes/pve", ["Sys.Audit"])
        const e = yield* (yield* Proxmox).nodeStatus.pipe(Effect.flip)
        expect(e._tag === "PveApiError" && e.permission).toEqual({ aclPath: "/nodes/pve", privileges: ["Sys.Audit"] })
      }), { ...durations(100), quirks: { error_message_body: false } }))

  it.live("a bad token is an auth error that never shows the secret", () =>
    Effect.scoped(Effect.gen(function*() {
      const server = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed: yield* seedWith() })
      const wrong = "00000000-1111-2222-3333-444444444444"
      const e = yield* Effect.flatMap(Proxmox, (p) => p.version).pipe(
        Effect.provide(httpsProxmox({ ...server, tokenSecret: wrong })),
        Effect.flip
      )
      expect(e._tag === "PveApiError" && e.kind).toBe("auth")
      expect(`${JSON.stringify(e)} ${e.message}`).not.toContain(wrong)
    })))

  it.live("a missing guest is PVE's 500, classified not_found", () =>
    withSim(() =>
      Effect.gen(function*() {
        const e = yield* (yield* Proxmox).guestConfig(vmid(4242)).pipe(Effect.flip)
        expect(e._tag === "PveApiError" && [e.status, e.kind]).toEqual([500, "not_found"])
        expect(e.message).toContain("does not exist")
      })
    ))

  it.live("a 400 carries PVE's per-parameter errors", () =>
    withSim(() =>
      Effect.gen(function*() {
        const e = yield* (yield* Proxmox).nextId(vmid(100)).pipe(Effect.flip)
        expect(e._tag === "PveApiError" && e.kind).toBe("validation")
        expect(e._tag === "PveApiError" && e.paramErrors?.["vmid"]).toMatch(/already exists/)
      })
    ))

  it.live("a conflicting op while a task holds the guest's lock is PveLocked (retryable)", () =>
    withSim(() =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const upid = yield* pve.snapshot(vmid(101), snap("slow"))
        // PUT config checks the `lock:` property before doing anything
        const e = yield* pve.setConfig(vmid(101), { set: { cores: 2 } }).pipe(Effect.flip)
        expect(e._tag).toBe("PveLocked")
        if (e._tag === "PveLocked") {
          expect(e.lock).toBe("snapshot")
          expect(e.retryable).toBe(true)
          expect(e.message).toContain("CT is locked (snapshot)")
        }
        yield* pve.waitTask(upid)
        // once the task is done the same change goes through
        expect(Option.isNone(yield* pve.setConfig(vmid(101), { set: { cores: 2 } }))).toBe(true)
      }), { task_durations_ms: { vzsnapshot: 1500 } }))

  it.live("a failed task is PveTaskFailed with the exitstatus and the log tail", () =>
    withSim(({ server }) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* server.sim.setFaults({ task_failure_rate: 1 })
        const upid = yield* pve.start(vmid(101))
        const e = yield* pve.waitTask(upid).pipe(Effect.flip)
        expect(e._tag).toBe("PveTaskFailed")
        if (e._tag !== "PveTaskFailed") return
        expect(e.exitstatus).not.toBe("OK")
        expect(e.logTail.length).toBeGreaterThan(0)
        expect(e.logTail.at(-1)).toMatch(/^TASK ERROR: /)
        expect(e.message).toContain(upid)
      })
    ))

  it.live("a task refused for a root-only rule fails in the task, after the POST succeeded", () =>
    withSim(() =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const archive = (yield* pve.storageContent(storage("local"), { content: "backup", vmid: vmid(555) }))[0]!
        // the POST succeeds: the authorization failure surfaces only at task execution
        const upid = yield* pve.restore({
          vmid: vmid(300),
          archive: Schema.decodeSync(VolumeId)(archive.volid),
          storage: storage("local-lvm")
        })
        const e = yield* pve.waitTask(upid).pipe(Effect.flip)
        expect(e._tag).toBe("PveTaskFailed")
        if (e._tag !== "PveTaskFailed") return
        expect(e.exitstatus).toMatch(/only possible for root/)
        expect(e.logTail.at(-1)).toMatch(/^TASK ERROR: /)
      }), {
      ...durations(100),
      backups: [
        ...((defaultSeedJson as { backups: Array<unknown> }).backups),
        {
          storage: "local",
          vmid: 555,
          time: "2026-01-12T02:00:00Z",
          size: 1024,
          config: {
            arch: "amd64",
            hostname: "with-bind",
            memory: 512,
            ostype: "debian",
            rootfs: "local-lvm:vm-555-disk-0,size=4G",
            mp0: "/srv/host-data,mp=/data",
            unprivileged: 1
          }
        }
      ]
    }))

  it.live("5xx on reads is retried then surfaced; a 5xx on a write is never retried", () =>
    withSim(({ server }) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* server.sim.setFaults({ http_error_rate: 1, http_error_statuses: [596] })
        const read = yield* pve.version.pipe(Effect.flip)
        expect(read._tag === "PveApiError" && [read.status, read.kind]).toEqual([596, "proxy"])
        const tasksBefore = (yield* server.sim.tasks).length
        const write = yield* pve.start(vmid(101)).pipe(Effect.flip)
        expect(write._tag === "PveApiError" && write.status).toBe(596)
        // a 596 on a write may have landed: exactly one attempt, never a second start
        yield* server.sim.setFaults({ http_error_rate: 0 })
        const tasksAfter = (yield* server.sim.tasks).length
        expect(tasksAfter - tasksBefore).toBeLessThanOrEqual(1)
      })
    ))
})

describe("Proxmox client: responses PVE would never send", () => {
  const file = agentConfig("https://127.0.0.1:8006", TOKEN, "5b2f9c1e-8d47-4a36-9e0b-3c7f1a2d6e84", { insecure_skip_verify: true }, { node: "pve" })
  const answering = (status: number, body: string) =>
    ProxmoxWithoutClient.pipe(
      Layer.provide(Layer.succeed(
        HttpClient.HttpClient,
        HttpClient.make((request) =>
          Effect.succeed(HttpClientResponse.fromWeb(request, new Response(body, { status, headers: { "content-type": "application/json" } })))
        )
      )),
      Layer.provide(proxmoxSettings(file.proxmox!))
    )

  it.effect.each<[string, string]>([
    ["malformed JSON", "{\"data\": [ {\"vmid\": 100,"],
    ["wrong types", "{\"data\": [{\"vmid\": \"abc\", \"status\": \"running\"}]}"],
    ["unknown run state", "{\"data\": [{\"vmid\": 100, \"status\": \"hibernating\"}]}"],
    ["no envelope", "[{\"vmid\": 100, \"status\": \"running\"}]"],
    ["empty body", ""]
  ])("%s → PveDecodeError", ([, body]) =>
    Effect.gen(function*() {
      const e = yield* Effect.flatMap(Proxmox, (p) => p.listGuests).pipe(Effect.provide(answering(200, body)), Effect.flip)
      expect(e._tag).toBe("PveDecodeError")
      expect(e.message.length).toBeLessThanOrEqual(601)
    }))

  it.effect("a mutation answered with something other than a UPID is a PveDecodeError, not success", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flatMap(Proxmox, (p) => p.start(vmid(100))).pipe(
        Effect.provide(answering(200, "{\"data\": \"OK\"}")),
        Effect.flip
      )
      expect(e._tag).toBe("PveDecodeError")
    }))
})
