/**
 * The simulator's PBS key semantics and node wipe (issue 13), over real HTTPS on loopback with
 * the production Proxmox client: a storage's key (what `pvesm set --encryption-key` does) marks
 * every snapshot written through it with the key's real fingerprint; reading a snapshot through a
 * storage with another key, or none, fails with proxmox-backup-client's own text; a wiped node
 * keeps only what lives on its servers, and a PBS storage added under any id on the same
 * server/datastore/namespace lists those snapshots again and restores them with the right key.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Redacted, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { Proxmox } from "../src/layers/Proxmox.js"
import { pbsFingerprint, plainKeyFile, shortFingerprint, wrapKey } from "../src/programs/escrow/keyFile.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { defaultSeedJson, serveSimPve, simCertPem, type SimPveServer } from "../src/sim/pve/index.js"
import { httpsJson } from "./kill9-support.js"
import { durations, httpsProxmox, seedWith } from "./support.js"

type Json = Record<string, unknown>

const vmid = (n: number) => VmId.make(n)
const storage = (s: string) => Schema.decodeSync(StorageId)(s)
const volume = (s: string) => Schema.decodeSync(VolumeId)(s)
const GiB = 1024 ** 3
const NOW = Date.UTC(2026, 10, 30, 12)

const base = defaultSeedJson as { storages: ReadonlyArray<Json> }
const PBS = { type: "pbs", server: "pbs.example.net", datastore: "felhom", username: "felhom@pbs!host1", namespace: "host1", content: ["backup"], total: 1024 * GiB, used: 0 }
const SEED: Json = {
  ...durations(100),
  storages: [...base.storages, { storage: "pbs1", ...PBS }]
}

const newKey = () => {
  const bytes = new Uint8Array(randomBytes(32))
  return { bytes, text: plainKeyFile(bytes, NOW), fingerprint: pbsFingerprint(bytes) }
}

const withSim = <A, E>(body: (server: SimPveServer) => Effect.Effect<A, E, Proxmox>) =>
  Effect.scoped(Effect.gen(function*() {
    const server = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed: yield* seedWith(SEED) })
    return yield* body(server).pipe(Effect.provide(httpsProxmox(server)))
  }))

/** vzdump of `vm` to `to`, waited; the new snapshot's listing entry. */
const backup = (vm: number, to: string) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const before = new Set((yield* pve.storageContent(storage(to), { vmid: vmid(vm) })).map((e) => e.volid))
    const upid = yield* pve.vzdump({ vmid: vmid(vm), storage: storage(to), mode: "snapshot" })
    yield* pve.waitTask(Option.getOrThrow(upid))
    const after = yield* pve.storageContent(storage(to), { vmid: vmid(vm) })
    return after.find((e) => !before.has(e.volid))!
  })

const restoreTo = (vm: number, archive: string) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const upid = yield* pve.restore({ vmid: vmid(vm), archive: volume(archive), storage: storage("local-lvm") })
    return yield* pve.waitTask(upid)
  })

const setKey = (server: SimPveServer, id: string, text: string | null) =>
  Effect.map(server.sim.setStorageEncryptionKey(id, text), (r) => {
    if (r._tag !== "ok") throw new Error(r.message)
    return r.encryptionKey
  })

describe("sim PVE: PBS encryption keyed by the key's real fingerprint", () => {
  it.live("a keyed storage lists the key file's fingerprint, marks the snapshot with the real one, and reads it back", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const k = newKey()
        expect(yield* setKey(server, "pbs1", k.text)).toBe(k.fingerprint)
        const listed = (yield* pve.storageList).find((s) => s.storage === "pbs1")
        expect(listed?.["encryption-key"]).toBe(k.fingerprint)
        // the key itself never shows in the API
        expect(JSON.stringify(yield* pve.storageList)).not.toContain(Buffer.from(k.bytes).toString("base64"))
        const snap = yield* backup(101, "pbs1")
        expect(snap).toMatchObject({ format: "pbs-ct", encrypted: k.fingerprint })
        const tasks = yield* server.sim.tasks
        const log = tasks[tasks.length - 1]!.log.join("\n")
        expect(log).toContain("proxmox-backup-client backup --crypt-mode=encrypt --keyfd=14")
        expect(log).not.toContain(Buffer.from(k.bytes).toString("base64"))
        expect((yield* pve.extractConfig(volume(snap.volid)))["hostname"]).toBeDefined()
        const done = yield* restoreTo(200, snap.volid)
        expect(done.exitstatus).toBe("OK")
        expect(Option.isSome(yield* server.sim.guest(200))).toBe(true)
      })))

  it.live("another key: extractconfig and restore fail with PBS's wrong-key text (short ids) and leave no guest; no key: 'missing key'", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const k1 = newKey()
        const k2 = newKey()
        yield* setKey(server, "pbs1", k1.text)
        const snap = yield* backup(101, "pbs1")
        yield* setKey(server, "pbs1", k2.text)
        const wrong = `wrong key - unable to verify signature since manifest's key ${shortFingerprint(k1.fingerprint)} does not match provided key ${shortFingerprint(k2.fingerprint)}`
        const e = yield* pve.extractConfig(volume(snap.volid)).pipe(Effect.flip)
        expect(e.message).toContain(`proxmox-backup-client failed: Error: ${wrong}`)
        const failed = yield* restoreTo(201, snap.volid).pipe(Effect.flip)
        expect(failed._tag).toBe("PveTaskFailed")
        if (failed._tag === "PveTaskFailed") {
          expect(failed.logTail.join("\n")).toContain(`Error: ${wrong}`)
          expect(failed.exitstatus).toContain("proxmox-backup-client restore '--crypt-mode=encrypt' '--keyfd=14'")
        }
        expect(Option.isNone(yield* server.sim.guest(201))).toBe(true)
        // no key at all
        yield* setKey(server, "pbs1", null)
        expect((yield* pve.storageList).find((s) => s.storage === "pbs1")?.["encryption-key"]).toBeUndefined()
        const missing = yield* pve.extractConfig(volume(snap.volid)).pipe(Effect.flip)
        expect(missing.message).toContain(`Error: missing key - manifest was created with key ${shortFingerprint(k1.fingerprint)}`)
        const noKey = yield* restoreTo(202, snap.volid).pipe(Effect.flip)
        expect(noKey._tag === "PveTaskFailed" && noKey.logTail.join("\n")).toContain("missing key - manifest was created with key")
        expect(noKey._tag === "PveTaskFailed" && noKey.exitstatus).toContain("'--crypt-mode=none'")
        // the right key again: readable
        yield* setKey(server, "pbs1", k1.text)
        expect((yield* restoreTo(203, snap.volid)).exitstatus).toBe("OK")
      })))

  it.live("a key file without a fingerprint lists as 1 (as PVE writes it) yet snapshots carry the real one; a lying or wrapped key fails the backup", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const k = newKey()
        const bare = JSON.parse(k.text) as Json
        delete bare["fingerprint"]
        expect(yield* setKey(server, "pbs1", JSON.stringify(bare))).toBe("1")
        expect((yield* backup(101, "pbs1")).encrypted).toBe(k.fingerprint)

        const other = newKey()
        yield* setKey(server, "pbs1", JSON.stringify({ ...bare, fingerprint: other.fingerprint }))
        const upid = Option.getOrThrow(yield* pve.vzdump({ vmid: vmid(102), storage: storage("pbs1") }))
        const lying = yield* pve.waitTask(upid).pipe(Effect.flip)
        expect(lying._tag === "PveTaskFailed" && lying.logTail.join("\n")).toContain(
          `KeyConfig contains wrong fingerprint ${shortFingerprint(other.fingerprint)}, contained key has fingerprint ${shortFingerprint(k.fingerprint)}`
        )
        expect(yield* pve.storageContent(storage("pbs1"), { vmid: vmid(102) })).toEqual([])

        const wrapped = yield* wrapKey(k.bytes, Redacted.make("correct horse battery"), { kdf: "pbkdf2", nowMs: NOW })
        yield* setKey(server, "pbs1", wrapped)
        const upid2 = Option.getOrThrow(yield* pve.vzdump({ vmid: vmid(102), storage: storage("pbs1") }))
        const noTty = yield* pve.waitTask(upid2).pipe(Effect.flip)
        expect(noTty._tag === "PveTaskFailed" && noTty.logTail.join("\n")).toContain("Error: no password input mechanism available")
        // PVE's own refusals
        expect(yield* server.sim.setStorageEncryptionKey("pbs1", "not json")).toEqual({
          _tag: "refused",
          message: "Value does not seems like a valid, JSON formatted encryption key!"
        })
        expect((yield* server.sim.setStorageEncryptionKey("local", k.text))._tag).toBe("refused")
        expect((yield* server.sim.setStorageEncryptionKey("nope", k.text))._tag).toBe("refused")
      })))
})

describe("sim PVE: wipeNode", () => {
  it.live("guests, tasks, local backups and storage entries are gone; a PBS storage added under another id lists the snapshots again and restores them with the key", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const k = newKey()
        yield* setKey(server, "pbs1", k.text)
        const s100 = yield* backup(100, "pbs1")
        const s101 = yield* backup(101, "pbs1")
        const local = yield* backup(101, "local")
        const hostname101 = Option.getOrThrow(yield* server.sim.guest(101)).config["hostname"]
        expect(hostname101).toBeDefined()
        expect(local.volid.startsWith("local:backup/")).toBe(true)

        const wiped = yield* server.sim.wipeNode()
        expect(wiped).toEqual({ keptStorages: ["local", "local-lvm"], serverBackups: 2 })
        expect(yield* server.sim.guests).toEqual([])
        expect(yield* server.sim.tasks).toEqual([])
        expect((yield* pve.storageList).map((s) => s.storage).sort()).toEqual(["local", "local-lvm"])
        expect(yield* pve.storageContent(storage("local"))).toEqual([])
        expect(yield* pve.listGuests).toEqual([])

        // another namespace on the same datastore: nothing of ours
        yield* pve.createStorage({
          type: "pbs", storage: storage("elsewhere"), server: PBS.server, datastore: PBS.datastore, namespace: "host2",
          username: PBS.username, password: Redacted.make("pbs-secret"), content: ["backup"]
        })
        expect(yield* pve.storageContent(storage("elsewhere"))).toEqual([])

        // the same place under a new id, no key yet: listed, encrypted, unreadable
        yield* pve.createStorage({
          type: "pbs", storage: storage("offsite"), server: PBS.server.toUpperCase(), datastore: PBS.datastore, namespace: PBS.namespace,
          username: PBS.username, password: Redacted.make("pbs-secret"), content: ["backup"]
        })
        const listed = yield* pve.storageContent(storage("offsite"), { content: "backup" })
        const rename = (v: string) => v.replace(/^pbs1:/, "offsite:")
        expect(listed.map((e) => [e.volid, e.encrypted]).sort()).toEqual([[rename(s100.volid), k.fingerprint], [rename(s101.volid), k.fingerprint]].sort())
        const missing = yield* restoreTo(101, rename(s101.volid)).pipe(Effect.flip)
        expect(missing._tag === "PveTaskFailed" && missing.logTail.join("\n")).toContain("missing key - manifest was created with key")
        expect(yield* server.sim.guests).toEqual([])

        // with the key: the guest comes back from its snapshot
        yield* setKey(server, "offsite", k.text)
        expect((yield* restoreTo(101, rename(s101.volid))).exitstatus).toBe("OK")
        expect(Option.getOrThrow(yield* server.sim.guest(101)).config["hostname"]).toBe(hostname101)
        // a second wipe keeps them again (the store is the server's, not this storage's)
        const again = yield* server.sim.wipeNode({ keepStorages: ["local-lvm"] })
        expect(again).toEqual({ keptStorages: ["local-lvm"], serverBackups: 2 })
      })))

  it.live("a task running when the node dies is gone with it, and NFS backups survive like PBS ones", () =>
    withSim((server) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        yield* pve.createStorage({ type: "nfs", storage: storage("nas"), server: "nas.lan", export: "/srv/backup", content: ["backup"] })
        const nfsSnap = yield* backup(100, "nas")
        // a backup still running at the wipe
        yield* pve.vzdump({ vmid: vmid(101), storage: storage("nas") })
        const wiped = yield* server.sim.wipeNode()
        expect(wiped.serverBackups).toBe(1)
        expect(yield* server.sim.tasks).toEqual([])
        yield* pve.createStorage({ type: "nfs", storage: storage("nas-again"), server: "nas.lan", export: "/srv/backup", content: ["backup"] })
        expect((yield* pve.storageContent(storage("nas-again"))).map((e) => e.volid)).toEqual([nfsSnap.volid.replace(/^nas:/, "nas-again:")])
      })))
})

describe("sim PVE admin API: encryption key and wipe over HTTP", () => {
  it.live("PUT encryption-key answers the config value and never echoes the key; POST wipe-node; both need the admin token", () =>
    Effect.scoped(Effect.gen(function*() {
      const server = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed: yield* seedWith(SEED) })
      const k = newKey()
      const call = (method: string, path: string, body: unknown, token = server.adminToken) =>
        Effect.promise(() => httpsJson(`${server.url}/sim-admin${path}`, { ca: simCertPem, token, method, body }))
      const denied = yield* call("PUT", "/storage/pbs1/encryption-key", { key: k.text }, "wrong")
      expect(denied.status).toBe(401)
      const set = yield* call("PUT", "/storage/pbs1/encryption-key", { key: k.text })
      expect(set.status).toBe(200)
      expect(set.body).toEqual({ storage: "pbs1", encryption_key: k.fingerprint })
      expect(JSON.stringify(set.body)).not.toContain(Buffer.from(k.bytes).toString("base64"))
      const bad = yield* call("PUT", "/storage/pbs1/encryption-key", { key: "{}" })
      expect([bad.status, bad.body]).toEqual([400, { error: "Value does not seems like a valid, JSON formatted encryption key!" }])
      const wipe = yield* call("POST", "/wipe-node", {})
      expect(wipe.status).toBe(200)
      expect(wipe.body).toEqual({ keptStorages: ["local", "local-lvm"], serverBackups: 0 })
      expect(yield* server.sim.guests).toEqual([])
    })))
})
