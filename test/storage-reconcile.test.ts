/**
 * The storage pass (issue 10) against the in-process PVE simulator, with a fake Privileged for
 * the USB disks (test/storage-support.ts) and the real state DB: attach (USB mount by UUID, PVE
 * entries created with keep-all or matched), what is left to the operator (403 with the missing
 * privilege, a local-dir path, `{ ref }` creds, a mismatching entry), reachability, placement
 * findings, and the hostile hub: a class flip, a data-holding target decommissioned or removed
 * (held for a signature, nothing unmounted or deleted; the signed job then detaches and deletes
 * nothing), path-like ids and prototype keys, a USB UUID that is the host's root filesystem
 * (refused by the real Privileged, nothing spawned). Last, a secret sweep for storage creds.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Either, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { generateKeyPairSync } from "node:crypto"
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { inspect } from "node:util"
import { Journal } from "../src/layers/Journal.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { StorageTargetStore } from "../src/layers/StorageTargetStore.js"
import { runSignedJob } from "../src/programs/control/jobs.js"
import { recover } from "../src/programs/control/recover.js"
import { beginOperation } from "../src/programs/control/steps.js"
import { collectReport } from "../src/programs/daemon/report.js"
import { CREDS_KEY_FILE, CREDS_PUB_FILE, makeVault, openSealed, sealCreds } from "../src/programs/protection/creds.js"
import { createParams, entryMismatch, operatorCommand, parseVolume, pbsParts, storageReconcilePass, type StorageInput } from "../src/programs/protection/storage.js"
import { type StorageSnapshot, StorageStatus, type TargetStatus, withStorageTargets } from "../src/programs/protection/status.js"
import { decodeDesiredState } from "../src/schema/desired.js"
import { HostReport, type SignedJob } from "../src/schema/hub.js"
import { StorageManifest, type StorageTarget } from "../src/schema/storage.js"
import { Schema } from "effect"
import { defaultSeedJson, makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { b64, dbFile, signedOp } from "./engine-support.js"
import { expectError, isRoot, layerFor, makeBinDir, withPriv } from "./privileged-support.js"
import {
  hostPublicKey,
  keyDir,
  makeUsbWorld,
  PBS_FP,
  PBS_KEY_JSON,
  plug,
  pull,
  storageLayer,
  USB_UUID,
  type UsbWorld
} from "./storage-support.js"
import { seedWith } from "./support.js"
import { DEFAULT_COMMAND_PATHS } from "../src/layers/Privileged.js"

type Json = Record<string, unknown>
const defaultStorages = (defaultSeedJson as Json)["storages"] as Array<Json>
const defaultGuests = (defaultSeedJson as Json)["guests"] as Array<Json>

const usb = { id: "usb-1", type: "usb", durable_id: USB_UUID, class: "slow", role: "vzdump-target", state: "attached" }
const nfs = { id: "nas", type: "nfs", durable_id: "10.0.0.5:/srv/bulk", class: "slow", role: "bulk-data", state: "attached" }
const lvm = { id: "local-lvm", type: "local-dir", durable_id: "/var/lib/vz", class: "fast", role: "primary", state: "attached" }
const pbsRepo = "felhom@pbs!host1@pbs.example.net:8007:store1"
const pbs = (ciphertext: string) => ({
  id: "pbs-off",
  type: "pbs",
  durable_id: { repo: pbsRepo, fingerprint: PBS_FP },
  class: "slow",
  role: "pbs-offsite",
  creds: { ciphertext },
  state: "attached"
})

/** The desired state's storage and policies, through the real decoder (creds redacted first). */
const input = (storage: ReadonlyArray<unknown> | undefined, policies?: unknown): StorageInput => {
  const d = decodeDesiredState({ generation: 1, guests: [], ...(storage === undefined ? {} : { storage }), ...(policies === undefined ? {} : { policies }) })
  if (Either.isLeft(d)) throw new Error(d.left)
  return { storage: d.right.storage, policies: d.right.policies }
}

type Services = Layer.Layer.Success<ReturnType<typeof storageLayer>>

/** A simulator, a USB world and the storage services over one DB and key dir. */
const withStorage = <A, E>(
  body: (ctx: { readonly sim: SimPve; readonly world: UsbWorld; readonly keys: string; readonly db: string }) => Effect.Effect<A, E, Services>,
  seed: Json = {}
) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith(seed))
    const world = makeUsbWorld()
    const keys = keyDir()
    const db = dbFile()
    return yield* body({ sim, world, keys, db }).pipe(Effect.provide(storageLayer(sim, world, { path: db, keys })))
  })

const pass = (i: StorageInput) => storageReconcilePass(i)
const targetOf = (snap: StorageSnapshot, id: string): TargetStatus => snap.targets.find((t) => t.id === id)!
const mutations = (sim: SimPve) => Effect.map(sim.requests, (rs) => rs.filter((r) => r.method !== "GET").map((r) => `${r.method} ${r.path}`))
const auditActions = Effect.flatMap(Journal, (j) => j.auditTail(100)).pipe(Effect.map((es) => es.map((e) => `${e.action} ${e.target ?? "-"} ${e.decision}`)))

// ---------------------------------------------------------------------------------------------

describe("storage pass: attach and match", () => {
  it.scoped("a USB disk: mounted by UUID, a dir storage with is_mountpoint and keep-all created, attached; the next pass does nothing", () =>
    withStorage(({ sim, world }) =>
      Effect.gen(function*() {
        yield* plug(sim, world, "usb-1")
        const snap = yield* pass(input([usb]))
        expect(world.calls).toEqual([`mount usb-1 ${USB_UUID}`])
        const t = targetOf(snap, "usb-1")
        expect(t).toMatchObject({ verdict: "ok", class: "slow", available: true, detail: null })
        const entry = (yield* Effect.flatMap(Proxmox, (p) => p.storageList)).find((s) => s.storage === "usb-1")
        expect(entry).toMatchObject({ type: "dir", path: "/mnt/felhom/usb-1", is_mountpoint: "yes", "prune-backups": "keep-all=1", content: "backup" })
        expect(yield* auditActions).toEqual(["storage-attach usb-1 allowed", "storage-create usb-1 allowed"])

        const before = (yield* mutations(sim)).length
        const again = yield* pass(input([usb]))
        expect(world.calls).toHaveLength(1) // mounted: not mounted again
        expect(yield* mutations(sim)).toHaveLength(before)
        expect(targetOf(again, "usb-1")).toMatchObject({ verdict: "ok", available: true })
        expect(yield* auditActions).toHaveLength(2)
      })
    ))

  it.scoped("a USB disk not plugged in: reported disconnected with its UUID, no mount tried, no storage created; plugged in later, attached", () =>
    withStorage(({ sim, world }) =>
      Effect.gen(function*() {
        const snap = yield* pass(input([usb]))
        expect(targetOf(snap, "usb-1")).toMatchObject({ verdict: "ok", available: false, availabilityDetail: `the disk (filesystem UUID ${USB_UUID}) is not plugged in` })
        expect(world.calls).toEqual([])
        expect(yield* mutations(sim)).toEqual([])
        yield* plug(sim, world, "usb-1")
        expect(targetOf(yield* pass(input([usb])), "usb-1")).toMatchObject({ verdict: "ok", available: true })
      })
    ))

  it.scoped("NFS created through the API; an NFS server that is down is disconnected (PVE refuses to create it), then attached when it answers", () =>
    withStorage(({ sim }) =>
      Effect.gen(function*() {
        yield* sim.setStorage("nas", { online: false })
        const down = targetOf(yield* pass(input([nfs])), "nas")
        expect(down).toMatchObject({ verdict: "ok", available: false })
        expect(down.availabilityDetail).toContain("not created yet, PVE cannot reach it")
        yield* sim.setStorage("nas", { online: true })
        expect(targetOf(yield* pass(input([nfs])), "nas")).toMatchObject({ verdict: "ok", available: true })
        const entry = (yield* Effect.flatMap(Proxmox, (p) => p.storageList)).find((s) => s.storage === "nas")
        expect(entry).toMatchObject({ type: "nfs", server: "10.0.0.5", export: "/srv/bulk", content: "rootdir", "prune-backups": "keep-all=1" })
      })
    ))

  it.scoped("PBS created with the creds sealed to this host (password and encryption key), pinned fingerprint; creds for another target do not open", () =>
    withStorage(({ keys }) =>
      Effect.gen(function*() {
        const pub = yield* hostPublicKey(keys)
        const sealed = sealCreds(pub, "pbs-off", { password: "pbs-token-secret-0001", encryption_key: PBS_KEY_JSON })
        const snap = yield* pass(input([pbs(sealed)]))
        expect(targetOf(snap, "pbs-off")).toMatchObject({ verdict: "ok", available: true })
        const entry = (yield* Effect.flatMap(Proxmox, (p) => p.storageList)).find((s) => s.storage === "pbs-off")
        expect(entry).toMatchObject({ type: "pbs", server: "pbs.example.net", port: 8007, datastore: "store1", username: "felhom@pbs!host1", fingerprint: PBS_FP })
        expect(entry?.["encryption-key"]).toBeDefined()
        // at rest: the ciphertext as it arrived, never the secret
        const rows = yield* Effect.flatMap(StorageTargetStore, (s) => s.records)
        expect(rows.find((r) => r.id === "pbs-off")?.credsSealed).toBe(sealed)

        // sealed for another target id: refused, nothing created
        const moved = sealCreds(pub, "other", { password: "x", encryption_key: PBS_KEY_JSON })
        const other = targetOf(yield* pass(input([{ ...pbs(moved), id: "pbs-two" }])), "pbs-two")
        expect(other).toMatchObject({ verdict: "needs_operator" })
        expect(other.detail).toContain("do not open with this host's key")
        expect((yield* Effect.flatMap(Proxmox, (p) => p.storageList)).some((s) => s.storage === "pbs-two")).toBe(false)
      })
    ))

  it.scoped("changed creds for a created target are not silently rewritten: needs_operator", () =>
    withStorage(({ keys }) =>
      Effect.gen(function*() {
        const pub = yield* hostPublicKey(keys)
        yield* pass(input([pbs(sealCreds(pub, "pbs-off", { password: "first", encryption_key: PBS_KEY_JSON }))]))
        // re-sealed, same secret: fine (ciphertexts differ each time)
        expect(targetOf(yield* pass(input([pbs(sealCreds(pub, "pbs-off", { password: "first", encryption_key: PBS_KEY_JSON }))])), "pbs-off").verdict).toBe("ok")
        const changed = targetOf(yield* pass(input([pbs(sealCreds(pub, "pbs-off", { password: "second", encryption_key: PBS_KEY_JSON }))])), "pbs-off")
        expect(changed.verdict).toBe("needs_operator")
        expect(changed.detail).toContain("creds for 'pbs-off' changed")
      })
    ))

  it.scoped("a token without Datastore.Allocate: needs_operator naming the privilege and the exact pvesm command", () =>
    withStorage(({ sim }) =>
      Effect.gen(function*() {
        yield* sim.revoke("felhom@pve!agent", "/storage", ["Datastore.Allocate"])
        const t = targetOf(yield* pass(input([nfs])), "nas")
        expect(t.verdict).toBe("needs_operator")
        expect(t.detail).toContain("missing Datastore.Allocate on /storage")
        expect(t.detail).toContain("pvesm add nfs nas --server 10.0.0.5 --export /srv/bulk --content rootdir --prune-backups keep-all=1")
      })
    ))

  it.scoped("local-dir paths and { ref } creds are the operator's: never created; an existing lvmthin primary matches", () =>
    withStorage(({ sim }) =>
      Effect.gen(function*() {
        const etc = { ...lvm, id: "evil", durable_id: "/etc" }
        const cifsRef = { id: "smb", type: "cifs", durable_id: "10.0.0.6:backups", class: "slow", role: "vzdump-target", creds: { ref: "smb-creds" }, state: "attached" }
        const snap = yield* pass(input([lvm, etc, cifsRef]))
        expect(targetOf(snap, "local-lvm")).toMatchObject({ verdict: "ok", available: true })
        expect(targetOf(snap, "evil").verdict).toBe("needs_operator")
        expect(targetOf(snap, "evil").detail).toContain("pvesm add dir evil --path /etc")
        expect(targetOf(snap, "smb").detail).toContain("does not read")
        expect(yield* mutations(sim)).toEqual([])
      })
    ))

  it.scoped("an existing USB storage without is_mountpoint (the root-filesystem trap) or at another path is reported, not used", () =>
    withStorage(
      ({ sim, world }) =>
        Effect.gen(function*() {
          yield* plug(sim, world, "usb-1")
          const t = targetOf(yield* pass(input([usb])), "usb-1")
          expect(t.verdict).toBe("needs_operator")
          expect(t.detail).toContain("pvesm set usb-1 --is_mountpoint yes")
        }),
      { storages: [...defaultStorages, { storage: "usb-1", type: "dir", path: "/mnt/felhom/usb-1", content: ["backup"], total: 1e12, used: 0 }] }
    ))
})

describe("placement", () => {
  const seed = {
    storages: [...defaultStorages, { storage: "nas", type: "nfs", server: "10.0.0.5", export: "/srv/bulk", content: ["rootdir", "backup"], total: 4e12, used: 0 }],
    guests: defaultGuests.map((g) =>
      g["vmid"] === 100
        ? { ...g, config: { ...(g["config"] as Json), mp0: "nas:100/vm-100-disk-1.raw,mp=/data,backup=1,size=8G", mp1: "nas:100/vm-100-disk-2.raw,mp=/media,size=8G", mp2: "local-lvm:vm-100-disk-3,mp=/db,size=2G" } }
        : g
    )
  }
  it.scoped("hot on a slow target, bulk with backup=1, bulk without a decision, misplaced and missing volumes are reported under the target named", () =>
    withStorage(
      () =>
        Effect.gen(function*() {
          const policies = {
            guests: [{
              vmid: 100,
              volumes: [
                { volume: "rootfs", kind: "hot", target: "local-lvm" },
                { volume: "mp0", kind: "bulk", target: "nas", backup: { target: "usb-1" } },
                { volume: "mp1", kind: "bulk", target: "nas" },
                { volume: "mp2", kind: "bulk", target: "nas", backup: { none: { reason: "scratch" } } },
                { volume: "mp3", kind: "bulk", target: "nas", backup: { none: { reason: "cache" } } }
              ]
            }, { vmid: 555, volumes: [{ volume: "rootfs", kind: "hot", target: "local-lvm" }] }]
          }
          const snap = yield* pass(input([lvm, nfs, usb], policies))
          const problems = (id: string) => targetOf(snap, id) as unknown as { placement: ReadonlyArray<{ volume: string; problem: string }> }
          expect(problems("local-lvm").placement).toEqual([])
          expect(problems("nas").placement.map((f) => `${f.volume}:${f.problem}`)).toEqual([
            "mp0:bulk_backed_up",
            "mp1:unprotected",
            "mp2:misplaced",
            "mp3:missing"
          ])
          // the same hot volume on a slow target
          const swapped = yield* pass(input([lvm, nfs, usb], {
            guests: [{ vmid: 100, volumes: [{ volume: "mp0", kind: "hot", target: "local-lvm" }] }]
          }))
          const f = (targetOf(swapped, "local-lvm") as unknown as { placement: ReadonlyArray<{ problem: string; detail: string }> }).placement
          expect(f.map((x) => x.problem)).toEqual(["misplaced", "hot_not_fast"])
          expect(f[1]!.detail).toContain("nas is slow")
        }),
      seed
    ))
})

describe("hostile hub", () => {
  const withBackupOnUsb = {
    storages: [...defaultStorages, { storage: "usb-1", type: "dir", path: "/mnt/felhom/usb-1", is_mountpoint: "yes", content: ["backup"], total: 1e12, used: 0 }],
    backups: [
      ...((defaultSeedJson as Json)["backups"] as Array<Json>),
      { storage: "usb-1", vmid: 100, time: "2026-01-12T02:00:00Z", size: 1000, config: (defaultGuests[0]!["config"] as Json) }
    ]
  }

  it.scoped("a manifest that flips a target's class (or its disk) is refused: needs_operator, the class stays, nothing done", () =>
    withStorage(({ sim, world }) =>
      Effect.gen(function*() {
        yield* plug(sim, world, "usb-1")
        yield* pass(input([usb]))
        const calls = world.calls.length
        const before = (yield* mutations(sim)).length
        const flipped = targetOf(yield* pass(input([{ ...usb, class: "fast" }])), "usb-1")
        expect(flipped).toMatchObject({ verdict: "needs_operator", class: "slow" })
        expect(flipped.detail).toContain("class is fixed at attach")
        const other = targetOf(yield* pass(input([{ ...usb, durable_id: "0b6f1c2e-2b7a-4c1d-9f3e-5a6b7c8d9e0f" }])), "usb-1")
        expect(other.verdict).toBe("needs_operator")
        expect(other.detail).toContain(`was attached as usb ${USB_UUID}`)
        expect(world.calls).toHaveLength(calls)
        expect(yield* mutations(sim)).toHaveLength(before)
        const rows = yield* Effect.flatMap(StorageTargetStore, (s) => s.records)
        expect(rows.map((r) => [r.id, r.class, r.durableId])).toEqual([["usb-1", "slow", USB_UUID]])
      })
    ))

  it.scoped("decommissioning or removing a target that holds backups is held for a signature: reported, audited once, nothing unmounted or deleted", () =>
    withStorage(
      ({ sim, world }) =>
        Effect.gen(function*() {
          world.present.add(USB_UUID)
          world.mounted.set("usb-1", USB_UUID)
          expect(targetOf(yield* pass(input([usb])), "usb-1").verdict).toBe("ok")
          const content = yield* sim.storageContent("usb-1")
          for (const manifest of [[{ ...usb, state: "decommissioned" }], [], [{ ...nfs }]]) {
            const snap = yield* pass(input(manifest))
            const t = targetOf(snap, "usb-1")
            expect(t.verdict).toBe("needs_operator")
            expect(t.detail).toContain("holds 1 backup(s)")
            const op = manifest.length === 1 && manifest[0]!.id === "usb-1" ? "storage-decommission" : "storage-detach"
            expect(snap.pending).toEqual([expect.objectContaining({ op, vmid: null, params: { storage: "usb-1" } })])
          }
          // a second pass with the same removal does not audit again
          yield* pass(input([]))
          expect((yield* auditActions).filter((a) => a.includes("pending_signature"))).toEqual([
            "storage-decommission usb-1 pending_signature",
            "storage-detach usb-1 pending_signature"
          ])
          expect(world.calls.filter((c) => c.startsWith("unmount"))).toEqual([])
          expect(world.mounted.get("usb-1")).toBe(USB_UUID)
          expect(yield* sim.storageContent("usb-1")).toEqual(content)
          expect((yield* mutations(sim)).filter((m) => m.startsWith("DELETE"))).toEqual([])
          const rows = yield* Effect.flatMap(StorageTargetStore, (s) => s.records)
          expect(rows.find((r) => r.id === "usb-1")?.state).toBe("attached")
          // in the host report: needs_operator with the detail, and the pending signature
          const report = yield* collectReport({ hostId: "h", desiredGenerationApplied: null, pendingSignatures: [], cloudflared: Effect.succeed("running") })
          const row = report.storage.find((s) => s.storage === "usb-1")
          expect(row).toMatchObject({ state: "needs_operator", target: { type: "usb", class: "slow", role: "vzdump-target" } })
          expect(report.pending_signatures).toEqual([expect.objectContaining({ op: "storage-detach", params: { storage: "usb-1" } })])
          Schema.decodeUnknownSync(HostReport)(Schema.encodeSync(HostReport)(report))
        }),
      withBackupOnUsb
    ))

  it.scoped("a pulled USB disk is disconnected, never decommissioned: no signature asked, nothing unmounted", () =>
    withStorage(
      ({ sim, world }) =>
        Effect.gen(function*() {
          world.present.add(USB_UUID)
          world.mounted.set("usb-1", USB_UUID)
          yield* pass(input([usb]))
          yield* pull(sim, world, "usb-1")
          const snap = yield* pass(input([usb]))
          expect(targetOf(snap, "usb-1")).toMatchObject({ verdict: "ok", available: false, availabilityDetail: "the disk was pulled while mounted; plug it back in" })
          expect(snap.pending).toEqual([])
          expect(world.calls).toEqual([])
        }),
      withBackupOnUsb
    ))

  it.scoped("an empty target removed from the manifest is detached unsigned (its disk unmounted, audited); one PVE cannot list is held", () =>
    withStorage(({ sim, world }) =>
      Effect.gen(function*() {
        yield* plug(sim, world, "usb-1")
        yield* pass(input([usb, nfs]))
        yield* sim.setStorage("nas", { online: false })
        const snap = yield* pass(input([]))
        expect(snap.targets.map((t) => t.id)).toEqual(["nas"])
        expect(snap.pending.map((p) => `${p.op} ${String(p.params["storage"])}`)).toEqual(["storage-detach nas"])
        expect(targetOf(snap, "nas").detail).toContain("not reachable now")
        expect(world.calls).toContain("unmount usb-1")
        expect(yield* auditActions).toContain("storage-detach usb-1 allowed")
        const rows = yield* Effect.flatMap(StorageTargetStore, (s) => s.records)
        expect(rows.map((r) => `${r.id}:${r.state}`)).toEqual(["nas:attached", "usb-1:detached"])
      })
    ))

  it.scoped("the signed storage-detach job unmounts and records it, deletes nothing; unsigned, or signed for another target, nothing runs", () =>
    withStorage(
      ({ sim, world }) =>
        Effect.gen(function*() {
          world.present.add(USB_UUID)
          world.mounted.set("usb-1", USB_UUID)
          yield* pass(input([usb]))
          const job = (id: string, params: Json, signed?: { blob: Uint8Array; signature: string }): SignedJob => ({
            id,
            op: "storage-detach",
            guest_id: null,
            params: params as SignedJob["params"],
            ...(signed === undefined ? {} : { blob: b64(signed.blob), signature: signed.signature })
          })
          const unsigned = yield* runSignedJob(job("j1", { storage: "usb-1" }))
          expect(unsigned.status).toBe("pending_signature")
          const forOther = signedOp({ op: "storage-detach", guest_id: null, params: { storage: "nas" } })
          expect((yield* runSignedJob(job("j2", { storage: "usb-1" }, forOther))).status).toBe("rejected")
          expect(world.calls).toEqual([])

          const good = signedOp({ op: "storage-detach", guest_id: null, params: { storage: "usb-1" } })
          const done = yield* runSignedJob(job("j3", { storage: "usb-1" }, good))
          expect(done.status).toBe("done")
          expect(world.calls).toEqual(["unmount usb-1"])
          const rows = yield* Effect.flatMap(StorageTargetStore, (s) => s.records)
          expect(rows.find((r) => r.id === "usb-1")?.state).toBe("detached")
          expect((yield* mutations(sim)).filter((m) => m.startsWith("DELETE"))).toEqual([])
          expect((yield* sim.storageContent("usb-1")).length).toBe(1)
          const ops = yield* Effect.flatMap(Journal, (j) => j.list({ limit: 10 }))
          expect(ops.map((o) => `${o.kind}:${o.status}`)).toContain("storage-removal:done")
          // extra params are refused before anything runs
          const extra = signedOp({ op: "storage-decommission", guest_id: null, params: { storage: "usb-1", wipe: true } })
          expect((yield* runSignedJob({ ...job("j4", { storage: "usb-1", wipe: true }, extra), op: "storage-decommission" })).status).toBe("failed")
        }),
      withBackupOnUsb
    ))

  it.scoped("a crash inside the signed detach (after the unmount, before the record): recovery ends the op failed, the target is held again, nothing deleted", () =>
    withStorage(
      ({ sim, world }) =>
        Effect.gen(function*() {
          world.present.add(USB_UUID)
          world.mounted.set("usb-1", USB_UUID)
          yield* pass(input([usb]))
          // the op as a crash leaves it: admitted, unmount started and done, record never started
          const saga = yield* beginOperation<"storage-removal">({
            _tag: "storage-removal",
            vmid: null,
            storage: "usb-1" as StorageTarget["id"],
            mode: "detach",
            authorization: { basis: "signed", signer: "alice", fingerprint: "SHA256:x", nonce: "n".repeat(22), job: "j9" }
          })
          yield* saga.started("unmount")
          world.mounted.delete("usb-1")
          yield* saga.done("unmount")
          const recovered = yield* recover
          expect(recovered.map((r) => `${r.kind}:${r.outcome}`)).toEqual(["storage-removal:failed"])
          const rows = yield* Effect.flatMap(StorageTargetStore, (st) => st.records)
          expect(rows.find((r) => r.id === "usb-1")?.state).toBe("attached")
          // the manifest that dropped it: held for a (new) signature again, never deleted
          const snap = yield* pass(input([]))
          expect(snap.pending.map((p) => p.op)).toEqual(["storage-detach"])
          expect((yield* mutations(sim)).filter((m) => m.startsWith("DELETE"))).toEqual([])
        }),
      withBackupOnUsb
    ))

  it("path-like ids and durable ids, prototype keys, spellings Privileged cannot mount: the manifest does not decode", () => {
    const refused = (m: unknown) => Either.isLeft(Schema.decodeUnknownEither(StorageManifest, { onExcessProperty: "error" })(m))
    expect(refused([{ ...usb, durable_id: "../../etc" }])).toBe(true)
    expect(refused([{ ...usb, durable_id: "/dev/sda1" }])).toBe(true)
    expect(refused([{ ...usb, durable_id: USB_UUID.toUpperCase() }])).toBe(true) // ext4 UUIDs are lower-case under by-uuid
    expect(refused([{ ...usb, durable_id: "abcd-1234" }])).toBe(true) // vfat serials are upper-case
    expect(refused([{ ...usb, durable_id: "ABCD-1234" }])).toBe(false)
    expect(refused([{ ...usb, id: "a".repeat(49) }])).toBe(true)
    expect(refused([{ ...usb, id: "a".repeat(48) }])).toBe(false)
    expect(refused([{ ...usb, id: "usb/../../etc" }])).toBe(true)
    expect(refused([{ ...nfs, durable_id: "10.0.0.5:/srv/../etc" }])).toBe(true)
    expect(refused([{ ...lvm, durable_id: "/var/../etc" }])).toBe(true)
    expect(refused(JSON.parse(`[{"id":"usb-1","type":"usb","durable_id":"${USB_UUID}","class":"slow","role":"vzdump-target","state":"attached","__proto__":{"class":"fast"}}]`))).toBe(true)
    expect(refused(JSON.parse(`[{"id":"usb-1","type":"usb","durable_id":"${USB_UUID}","class":"slow","role":"vzdump-target","state":"attached","constructor":{"prototype":{"x":1}}}]`))).toBe(true)
  })

  it("the pure helpers: repo parsing, commands without secrets, mismatches, volume options", () => {
    expect(pbsParts("felhom@pbs!host1@pbs.example.net:8007:store1")).toEqual({ server: "pbs.example.net", port: 8007, datastore: "store1", username: "felhom@pbs!host1" })
    expect(pbsParts("[fd00::5]:store")).toEqual({ server: "fd00::5", port: undefined, datastore: "store", username: undefined })
    const t = Schema.decodeUnknownSync(StorageManifest)([{ ...pbs("AAAA"), creds: Redacted.make({ ciphertext: "AAAA" }) }])[0]!
    expect(operatorCommand(t)).toBe(
      `pvesm add pbs pbs-off --server pbs.example.net --port 8007 --datastore store1 --username felhom@pbs!host1 --fingerprint ${PBS_FP} --password --encryption-key <key file> --content backup --prune-backups keep-all=1`
    )
    expect(Either.isLeft(createParams(t, Option.none()))).toBe(true)
    const u = Schema.decodeUnknownSync(StorageManifest)([usb])[0]!
    expect(entryMismatch(u, { storage: "usb-1", type: "dir", path: "/mnt/felhom/usb-1", is_mountpoint: "yes", content: "backup" })).toBeUndefined()
    expect(entryMismatch(u, { storage: "usb-1", type: "dir", path: "/mnt/felhom/usb-1", is_mountpoint: "yes", content: "backup", disable: 1 })).toContain("disabled")
    expect(entryMismatch(u, { storage: "usb-1", type: "dir", path: "/mnt/felhom/usb-1", is_mountpoint: "yes", content: "iso" })).toContain("--content iso,backup")
    expect(entryMismatch(u, { storage: "usb-1", type: "nfs", content: "backup" })).toContain("is nfs")
    expect(parseVolume("nas:100/vm-100-disk-1.raw,mp=/data,backup=1,size=8G")).toEqual({ storage: "nas", options: new Map([["mp", "/data"], ["backup", "1"], ["size", "8G"]]) })
    expect(parseVolume("/srv/host/dir,mp=/x").storage).toBeUndefined()
  })
})

describe("a USB UUID that is one of the host's own filesystems", () => {
  it.scoped.skipIf(!isRoot)("the real Privileged refuses to mount it (nothing spawned), and the pass reports needs_operator and creates nothing", () =>
    Effect.gen(function*() {
      const bin = makeBinDir()
      for (const c of Object.keys(DEFAULT_COMMAND_PATHS)) bin.fake(c)
      const base = bin.dir.replace(/\/bin$/, "")
      const paths = { usbMountRoot: join(base, "felhom"), unitDir: join(base, "units"), byUuidDir: join(base, "by-uuid"), mountInfo: join(base, "mountinfo") }
      for (const d of [paths.usbMountRoot, paths.unitDir, paths.byUuidDir, join(base, "dev")]) mkdirSync(d, { recursive: true })
      const rootDevice = join(base, "dev", "sda2")
      writeFileSync(rootDevice, "")
      symlinkSync("../dev/sda2", join(paths.byUuidDir, USB_UUID))
      // the host's root filesystem is that device
      writeFileSync(paths.mountInfo, `1 0 8:2 / / rw,relatime shared:1 - ext4 ${rootDevice} rw\n`)
      const e = expectError(yield* withPriv(bin, (p) => p.mountUsb({ targetId: "usb-1", uuid: USB_UUID }), { paths }))
      expect(e).toMatchObject({ reason: "InvalidArgument", argument: "uuid" })
      expect(e.message).toContain("already mounted at / on this host")
      expect(bin.recorded()).toEqual([])
      // also at /boot under another source spelling that resolves to it
      symlinkSync(rootDevice, join(base, "dev", "alias"))
      writeFileSync(paths.mountInfo, `1 0 0:30 / /boot rw - vfat ${join(base, "dev", "alias")} rw\n`)
      expect(expectError(yield* withPriv(bin, (p) => p.mountUsb({ targetId: "usb-1", uuid: USB_UUID }), { paths })).message).toContain("/boot")
      expect(bin.recorded()).toEqual([])

      // through the storage pass: needs_operator, no storage created, still nothing spawned
      writeFileSync(paths.mountInfo, `1 0 8:2 / / rw,relatime shared:1 - ext4 ${rootDevice} rw\n`)
      const sim = yield* makeSimPve(yield* seedWith())
      const snap = yield* storageReconcilePass(input([usb])).pipe(
        Effect.provide(storageLayer(sim, makeUsbWorld(), { privileged: layerFor(bin, { paths }) }))
      )
      expect(targetOf(snap, "usb-1").verdict).toBe("needs_operator")
      expect(targetOf(snap, "usb-1").detail).toContain("already mounted at / on this host")
      expect(yield* mutations(sim)).toEqual([])
      expect(bin.recorded()).toEqual([])
      expect(readdirSync(paths.unitDir)).toEqual([])
    }))
})

// ---------------------------------------------------------------------------------------------

describe("storage creds never leave the createStorage call", () => {
  const PASSWORD = "Pbs-S3cret-9f1c7a22e04b4d0c"
  const KEY_DATA = Buffer.alloc(32, 0x5a).toString("base64")
  const needles = (() => {
    const out = new Set<string>()
    for (const s of [PASSWORD, KEY_DATA]) {
      out.add(s)
      out.add(encodeURIComponent(s))
      for (let i = 0; i + 10 <= s.length; i++) out.add(s.slice(i, i + 10))
    }
    return [...out].map((n) => n.toLowerCase())
  })()
  const leaks = (where: string, text: string) => needles.filter((n) => text.toLowerCase().includes(n)).map((n) => `${where}: ${n}`)

  it.scoped("PVE echoing the body on failure, then succeeding: not in logs, statuses, reports, errors, the journal, the audit log or the DB file", () =>
    Effect.gen(function*() {
      const logs: Array<string> = []
      const capture = Layer.merge(
        Logger.replace(Logger.defaultLogger, Logger.make(({ message, cause }) => {
          logs.push(inspect(message, { depth: 8 }), Cause.pretty(cause))
        })),
        Logger.minimumLogLevel(LogLevel.All)
      )
      const found: Array<string> = []
      const keyJson = JSON.stringify({ kdf: null, created: "2026-01-01T00:00:00+00:00", modified: "2026-01-01T00:00:00+00:00", data: KEY_DATA, fingerprint: "11:22" })
      yield* withStorage(
        ({ sim, keys, db }) =>
          Effect.gen(function*() {
            const pub = yield* hostPublicKey(keys)
            // first: an invalid key (PVE refuses and echoes the request body into its error)
            const bad = sealCreds(pub, "pbs-off", { password: PASSWORD, encryption_key: `{"nodata":"${KEY_DATA}"}` })
            const failed = yield* pass(input([pbs(bad)]))
            const t = targetOf(failed, "pbs-off")
            expect(t.verdict).toBe("needs_operator")
            expect(t.detail).toContain("<redacted>") // the echo arrived, scrubbed
            // then a good one
            yield* sim.setFaults({ echo_headers: [] })
            const ok = yield* pass(input([pbs(sealCreds(pub, "pbs-off", { password: PASSWORD, encryption_key: keyJson }))]))
            expect(targetOf(ok, "pbs-off").verdict).toBe("ok")
            // a CIFS with a wrong key: the creds error
            const cifs = { id: "smb", type: "cifs", durable_id: "10.0.0.6:backups", class: "slow", role: "vzdump-target", creds: { ciphertext: bad }, state: "attached" }
            const wrong = yield* pass(input([cifs]))
            found.push(...leaks("creds error", JSON.stringify(wrong)))

            const snap = yield* Effect.flatMap(StorageStatus, (s) => s.snapshot)
            found.push(...leaks("status", JSON.stringify(snap)), ...leaks("status inspect", inspect(snap, { depth: 10 })))
            const report = yield* collectReport({ hostId: "h", desiredGenerationApplied: null, pendingSignatures: [], cloudflared: Effect.succeed("running") })
            found.push(...leaks("report", JSON.stringify(Schema.encodeSync(HostReport)(report))))
            found.push(...leaks("withStorageTargets", JSON.stringify(withStorageTargets(report, snap))))
            const sql = yield* SqlClient.SqlClient
            const tables = yield* sql.unsafe<{ readonly name: string }>("SELECT name FROM sqlite_master WHERE type = 'table'")
            expect(tables.map((t) => t.name)).toContain("storage_targets")
            for (const { name } of tables) {
              const rows = yield* sql.unsafe(`SELECT * FROM "${name}"`)
              found.push(...leaks(name, JSON.stringify(rows)))
            }
            // the ciphertext is what is at rest
            expect(JSON.stringify(yield* sql.unsafe("SELECT creds_sealed FROM storage_targets WHERE id = 'pbs-off'"))).not.toContain("null")
            const audit = yield* Effect.flatMap(Journal, (j) => j.auditTail(100))
            found.push(...leaks("audit", JSON.stringify(audit)))
            for (const f of [db, `${db}-wal`]) if (existsSync(f)) found.push(...leaks(f, readFileSync(f).toString("latin1")))
          }),
        { faults: { echo_headers: ["body", "message", "reason"] } }
      ).pipe(Effect.provide(capture))
      found.push(...leaks("logs", logs.join("\n")))
      expect(logs.join("\n")).toContain("storage")
      expect(found).toEqual([])
    }))

  it("a sealed message opens only with the host key and for its target; tampering is refused with a fixed text", () => {
    const k = generateKeyPairSync("x25519")
    const pub = Buffer.from(k.publicKey.export({ format: "der", type: "spki" })).subarray(12).toString("base64")
    const sealed = sealCreds(pub, "t1", { password: "pw-1" })
    expect(Either.map(openSealed(k.privateKey, "t1", sealed), (s) => Redacted.value(s.password))).toEqual(Either.right("pw-1"))
    expect(Either.isLeft(openSealed(k.privateKey, "t2", sealed))).toBe(true)
    const bytes = Buffer.from(sealed, "base64")
    bytes[bytes.length - 20] = bytes[bytes.length - 20]! ^ 1
    const tampered = openSealed(k.privateKey, "t1", bytes.toString("base64"))
    expect(Either.isLeft(tampered) && tampered.left.message).toBe("the creds do not open with this host's key (sealed for another host or another target, or damaged)")
    expect(Either.isLeft(openSealed(generateKeyPairSync("x25519").privateKey, "t1", sealed))).toBe(true)
  })

  it.effect("the host key: created 0600 with its public half beside it, reused, refused once others can read it", () =>
    Effect.gen(function*() {
      const dir = join(keyDir(), "state")
      const v1 = yield* makeVault(dir)
      expect(statSync(join(dir, CREDS_KEY_FILE)).mode & 0o777).toBe(0o600)
      expect(readFileSync(join(dir, CREDS_PUB_FILE), "utf8").trim()).toBe(v1.publicKey)
      expect((yield* makeVault(dir)).publicKey).toBe(v1.publicKey)
      chmodSync(join(dir, CREDS_KEY_FILE), 0o640)
      const e = yield* Effect.flip(makeVault(dir))
      expect(e.reason).toBe("HostKey")
      expect(e.message).toContain("must be 0600")
    }))
})
