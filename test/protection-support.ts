/**
 * Wiring for the backup scheduler and retention tests: the in-process simulator with a USB backup
 * target (a dir storage that must be a mount point), a real Journal, Authz and ProtectionStore on
 * one SQLite file, the serializer, and the scheduler's environment (Europe/Budapest, cap 2).
 */
import { Effect, Either, Fiber, Layer, Option, Schema, TestClock } from "effect"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { JournalLive } from "../src/layers/Journal.js"
import { ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { parseTimeZone, type TimeZone } from "../src/programs/protection/calendar.js"
import { protectionEnvLayer } from "../src/programs/protection/env.js"
import { listedArchives } from "../src/programs/protection/provenance.js"
import { decodeDesiredState, type DesiredState } from "../src/schema/desired.js"
import { StorageId, type VmId } from "../src/schema/ids.js"
import type { SimPve } from "../src/sim/pve/index.js"
import { StorageContentEntry } from "../src/schema/proxmox.js"
import { defaultSeedJson } from "../src/sim/pve/index.js"
import { authzLayer, settle } from "./engine-support.js"
import { inProcessProxmox, seedWith } from "./support.js"

export const TZ: TimeZone = Either.getOrThrow(parseTimeZone("Europe/Budapest"))
export const USB = StorageId.make("usb1")
export const USB_UUID = "0b6d4c2e-8a1f-4e3b-9c7d-2f5a6b8c9d0e"
/** Monday 2 March 2026, 00:00 UTC (01:00 in Budapest). */
export const T0 = Date.parse("2026-03-02T00:00:00Z")
export const HOUR = 3_600_000
export const DAY = 24 * HOUR

type Json = Record<string, unknown>

/** The default seed plus a 2 TB USB disk at /mnt/felhom/usb1 (offline when pulled). */
export const protectionSeed = (extra: Json = {}) =>
  seedWith({
    storages: [
      ...((defaultSeedJson as Json)["storages"] as ReadonlyArray<unknown>),
      {
        storage: "usb1",
        type: "dir",
        path: "/mnt/felhom/usb1",
        is_mountpoint: "yes",
        content: ["backup"],
        total: 2_000_000_000_000,
        used: 0
      }
    ],
    task_durations_ms: { vzdump: 3000, imgdel: 1000 },
    ...extra
  })

/** Everything the scheduler needs, over one database file (reopen = a new call with the same path). */
export const protectionLayer = (
  sim: SimPve,
  path: string,
  opts: { readonly proxmox?: Layer.Layer<Proxmox>; readonly passIntervalSeconds?: number; readonly maxConcurrentBackups?: number } = {}
) => {
  const db = layerAt(path)
  return Layer.mergeAll(
    opts.proxmox ?? inProcessProxmox(sim, { node: "pve" }),
    JournalLive.pipe(Layer.provide(db)),
    ProtectionStoreLive.pipe(Layer.provide(db)),
    authzLayer().pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    protectionEnvLayer({ timeZone: TZ, maxConcurrentBackups: opts.maxConcurrentBackups ?? 2, passIntervalSeconds: opts.passIntervalSeconds ?? 60 })
  ).pipe(Layer.orDie)
}

export const guestsJson = [
  { vmid: 100, hostname: "cust-alpha", cores: 2, memory_bytes: 2147483648, swap_mib: 512, rootfs_gib: 16, power: "running", description: "felhom customer guest alpha", tags: ["felhom", "customer"] },
  { vmid: 101, hostname: "cust-beta", cores: 1, memory_bytes: 1073741824, swap_mib: 512, rootfs_gib: 8, power: "stopped", description: "", tags: ["customer", "felhom"] }
]

export const usbTarget = (policy: Json | undefined, state = "attached"): Json => ({
  id: "usb1",
  type: "usb",
  durable_id: USB_UUID,
  class: "slow",
  role: "vzdump-target",
  state,
  ...(policy === undefined ? {} : { policy })
})

/** A desired state with guests 100 and 101 and the USB target under `policy`. */
export const desiredWith = (policy: Json | undefined, extra: Json = {}): DesiredState =>
  Either.getOrThrow(decodeDesiredState({
    generation: 1,
    guests: guestsJson,
    storage: [
      { id: "local-lvm", type: "local-dir", durable_id: "/var/lib/vz", class: "fast", role: "primary", state: "attached" },
      usbTarget(policy)
    ],
    ...extra
  }))

/** Runs `eff` to completion, advancing simulated time in `stepMs` steps. */
export const runFor = <A, E, R>(eff: Effect.Effect<A, E, R>, stepMs = 500, maxSteps = 100_000) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(eff)
    for (let i = 0; i < maxSteps; i++) {
      yield* settle
      if (fiber.unsafePoll() !== null) break
      yield* TestClock.adjust(stepMs)
    }
    return yield* Fiber.join(fiber)
  })

/** Advances simulated time to `untilMs` in `stepMs` steps, letting in-process HTTP settle. */
export const advanceTo = (untilMs: number, stepMs = 1000) =>
  Effect.gen(function*() {
    for (;;) {
      yield* settle
      const now = yield* TestClock.currentTimeMillis
      if (now >= untilMs) return
      yield* TestClock.adjust(Math.min(stepMs, untilMs - now))
    }
  })

/** The backups the simulator lists for a guest on a storage (unfiltered by permissions). */
export const listed = (sim: SimPve, storage: StorageId, vmid?: VmId | number) =>
  Effect.map(sim.storageContent(storage), (entries) =>
    listedArchives(storage, Schema.decodeUnknownSync(Schema.Array(StorageContentEntry))(entries)).filter((a) => vmid === undefined || a.vmid === vmid))

export const volids = (sim: SimPve, storage: StorageId, vmid?: VmId | number) =>
  Effect.map(listed(sim, storage, vmid), (as) => as.map((a) => a.id as string).sort())

export const some = Option.some
