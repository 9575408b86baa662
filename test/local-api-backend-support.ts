/**
 * Wiring for the local API's backend tests (issue 11): the in-process simulator with a USB backup
 * target (protection-support.ts), a real Journal, ProtectionStore and ControllerStore on one
 * SQLite file, the serializer, and the protection environment.
 */
import { Effect, Layer, Option } from "effect"
import { ControllerStore, ControllerStoreLive } from "../src/layers/ControllerStore.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { JournalLive } from "../src/layers/Journal.js"
import { ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { protectionEnvLayer } from "../src/programs/protection/env.js"
import type { VmId } from "../src/schema/ids.js"
import { defaultSeedJson, type SimPve } from "../src/sim/pve/index.js"
import { authzLayer } from "./engine-support.js"
import { protectionSeed, TZ } from "./protection-support.js"
import { inProcessProxmox } from "./support.js"

export const apiLayer = (sim: SimPve, path: string) => {
  const db = layerAt(path)
  return Layer.mergeAll(
    inProcessProxmox(sim, { node: "pve" }),
    JournalLive.pipe(Layer.provide(db)),
    ProtectionStoreLive.pipe(Layer.provide(db)),
    ControllerStoreLive.pipe(Layer.provide(db)),
    authzLayer().pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    protectionEnvLayer({ timeZone: TZ, maxConcurrentBackups: 2, passIntervalSeconds: 60 })
  ).pipe(Layer.orDie)
}

export const vm = (n: number) => n as VmId

/** The snapshot names PVE lists for a guest (without `current`). */
export const snapNames = (sim: SimPve, vmid: number) =>
  Effect.map(sim.guest(vmid), (g) => Option.match(g, { onNone: () => [] as Array<string>, onSome: (x) => x.snapshots.map((s) => s.name).filter((n) => n !== "current").sort() }))

export const recordSnap = (vmid: number, name: string, origin: "controller" | "pre-update", opId = "op-seed") =>
  Effect.flatMap(ControllerStore, (s) => s.recordSnapshot({ vmid: vm(vmid), name, origin, opId, takenMs: 0 }))

type Json = Record<string, unknown>

/** The default seed with each listed guest given exactly these snapshots (and task durations). */
export const seedWithSnapshots = (snaps: Readonly<Record<number, ReadonlyArray<string>>>, extra: Json = {}) => {
  const guests = ((defaultSeedJson as Json)["guests"] as ReadonlyArray<Json>).map((g) => {
    const names = snaps[g["vmid"] as number]
    if (names === undefined) return g
    return { ...g, snapshots: names.map((name, i) => ({ name, description: "", snaptime: 1_768_000_000 + i, config: g["config"] })) }
  })
  return protectionSeed({ guests, ...extra })
}
