/**
 * Wiring for the storage pass and watchdog tests: the in-process PVE simulator (its storages, and
 * a USB disk's presence as its `online` flag), a USB world behind a fake Privileged (present,
 * plugged, mounted), the real state DB (journal, audit, StorageTargetStore), a creds vault over a
 * scratch key directory, and StorageStatus.
 */
import { Effect, Layer, Option } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { JournalLive } from "../src/layers/Journal.js"
import { Privileged, type PrivilegedShape, type UsbMountSpec, type UsbStateSpec } from "../src/layers/Privileged.js"
import { ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { StorageTargetStoreLive } from "../src/layers/StorageTargetStore.js"
import { credsVaultAt, makeVault } from "../src/programs/protection/creds.js"
import { StorageRemoverLive } from "../src/programs/protection/detach.js"
import { StorageStatusLive } from "../src/programs/protection/status.js"
import { PrivilegedError, USB_MOUNT_ROOT } from "../src/schema/privileged.js"
import type { SimPve } from "../src/sim/pve/index.js"
import { authzLayer, dbFile } from "./engine-support.js"
import { inProcessProxmox } from "./support.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"

export const USB_UUID = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
export const PBS_FP = Array.from({ length: 32 }, (_, i) => (i * 7 + 16).toString(16).padStart(2, "0").toUpperCase()).join(":")

/** A key file's JSON as proxmox-backup-client writes it (kdf none). */
export const PBS_KEY_JSON = JSON.stringify({
  kdf: null,
  created: "2026-01-01T00:00:00+00:00",
  modified: "2026-01-01T00:00:00+00:00",
  data: Buffer.alloc(32, 7).toString("base64"),
  fingerprint: "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99"
})

/**
 * The USB disks of the simulated host, as Privileged reports them: a disk is present or not (its
 * filesystem UUID), and each target id is mounted from one UUID or not. Every mount/unmount call
 * is recorded. A disk pulled while mounted reads `stale`, as on a real host.
 */
export interface UsbWorld {
  readonly present: Set<string>
  readonly mounted: Map<string, string>
  readonly calls: Array<string>
}

export const makeUsbWorld = (): UsbWorld => ({ present: new Set(), mounted: new Map(), calls: [] })

const unsupported = (name: string) => () => Effect.die(`Privileged.${name} is not part of these tests`)

export const fakePrivileged = (world: UsbWorld): Layer.Layer<Privileged> =>
  Layer.succeed(
    Privileged,
    {
      createGoldenContainer: unsupported("createGoldenContainer"),
      dumpGoldenArchive: unsupported("dumpGoldenArchive"),
      destroyGoldenContainer: unsupported("destroyGoldenContainer"),
      verifyArchive: unsupported("verifyArchive"),
      bindMountIntoGuest: unsupported("bindMountIntoGuest"),
      smart: unsupported("smart"),
      sensors: unsupported("sensors"),
      mountUsb: (spec: UsbMountSpec) =>
        Effect.suspend(() => {
          world.calls.push(`mount ${spec.targetId} ${spec.uuid}`)
          if (!world.present.has(spec.uuid)) {
            return Effect.fail(new PrivilegedError({ reason: "NonZeroExit", command: "systemctl", exitCode: 1, message: "systemctl: exited with status 1" }))
          }
          world.mounted.set(spec.targetId, spec.uuid)
          return Effect.succeed({ unit: `mnt-felhom-${spec.targetId}.mount`, mountPoint: `${USB_MOUNT_ROOT}/${spec.targetId}`, changed: true })
        }),
      unmountUsb: (targetId: string) =>
        Effect.sync(() => {
          world.calls.push(`unmount ${targetId}`)
          const had = world.mounted.delete(targetId)
          return { unit: `mnt-felhom-${targetId}.mount`, removed: had }
        }),
      usbState: (spec: UsbStateSpec) =>
        Effect.sync(() => {
          const present = world.present.has(spec.uuid)
          const from = world.mounted.get(spec.targetId)
          const mountPoint = `${USB_MOUNT_ROOT}/${spec.targetId}`
          const state = from === undefined ? (present ? "unmounted" : "absent") : from !== spec.uuid ? "foreign" : present ? "mounted" : "stale"
          return { state, devicePresent: present, mountPoint, mounted: from !== undefined } as const
        })
    } as unknown as PrivilegedShape
  )

/** Plugs a disk in (present, not mounted) and tells the simulator its storage's filesystem is there. */
export const plug = (sim: SimPve, world: UsbWorld, storage: string, uuid = USB_UUID) =>
  Effect.gen(function*() {
    world.present.add(uuid)
    yield* sim.setStorage(storage, { online: true })
  })

/** Pulls a disk: gone from by-uuid (a mount of it goes stale) and offline in PVE. */
export const pull = (sim: SimPve, world: UsbWorld, storage: string, uuid = USB_UUID) =>
  Effect.gen(function*() {
    world.present.delete(uuid)
    yield* sim.setStorage(storage, { online: false })
  })

export const keyDir = () => mkdtempSync(join(tmpdir(), "felhom-creds-"))

/** The host's public sealing key for a key dir (created there if missing). */
export const hostPublicKey = (dir: string) => Effect.map(Effect.orDie(makeVault(dir)), (v) => v.publicKey)

/** Everything the storage pass, the watchdog and the storage jobs need, over one DB file. */
export const storageLayer = (
  sim: SimPve,
  world: UsbWorld,
  opts: { readonly path?: string; readonly keys?: string; readonly privileged?: Layer.Layer<Privileged> } = {}
) => {
  const db = layerAt(opts.path ?? dbFile())
  const store = StorageTargetStoreLive.pipe(Layer.provide(db))
  const priv = opts.privileged ?? fakePrivileged(world)
  return Layer.mergeAll(
    db,
    inProcessProxmox(sim, { node: "pve" }),
    JournalLive.pipe(Layer.provide(db)),
    ProtectionStoreLive.pipe(Layer.provide(db)),
    authzLayer().pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    store,
    priv,
    StorageStatusLive,
    credsVaultAt(opts.keys ?? keyDir()),
    StorageRemoverLive.pipe(Layer.provide(Layer.merge(store, priv)))
  ).pipe(Layer.orDie)
}

export const optionValue = <A>(o: Option.Option<A>): A => Option.getOrThrow(o)
