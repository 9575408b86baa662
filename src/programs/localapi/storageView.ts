/**
 * `GET /storage`: the caller's guest's volumes as its controller should see them: rootfs and each
 * volume mount point (mpN) from the guest's PVE config, with where it is mounted, its size, whether
 * vzdump captures it, and its class.
 *
 * Class: a volume on a storage the manifest lists takes that target's class (the hub's word, as
 * the storage pass attached it). A storage outside the manifest is classed by PVE's type for it:
 * network-backed (nfs, cifs, pbs, glusterfs, cephfs, iscsi) is `slow`, host-local is `fast`, and a
 * type PVE does not tell us is `slow` (a controller puts hot data only on fast, so unknown errs on
 * the side of not promising speed).
 *
 * Bind mounts (a host path, e.g. the read-only bootstrap directory) are left out: they are no
 * storage of the guest, and their host paths are none of the controller's business.
 */
import { Effect, Option } from "effect"
import { Proxmox } from "../../layers/Proxmox.js"
import type { DesiredState } from "../../schema/desired.js"
import type { VmId } from "../../schema/ids.js"
import { ApiFailure, type StorageResponse } from "../../schema/localApi.js"
import type { StorageConfigEntry } from "../../schema/proxmox.js"
import { parseVolume } from "../protection/storage.js"
import { pveFailure } from "./ops.js"

const NETWORK_TYPES = new Set(["nfs", "cifs", "pbs", "glusterfs", "cephfs", "iscsi", "iscsidirect"])
const LOCAL_TYPES = new Set(["dir", "lvm", "lvmthin", "zfspool", "zfs", "btrfs", "rbd"])

const UNITS: Readonly<Record<string, number>> = { "": 1 / 1024 ** 3, K: 1 / 1024 ** 2, M: 1 / 1024, G: 1, T: 1024 }

/** `size=8G` → 8 (GiB, two decimals); null when absent or unreadable. */
export const sizeGib = (size: string | undefined): number | null => {
  if (size === undefined) return null
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)$/.exec(size)
  return m === null ? null : Math.round(Number(m[1]) * UNITS[m[2]!]! * 100) / 100
}

export const classOf = (
  storage: string,
  manifest: ReadonlyArray<{ readonly id: string; readonly class: "fast" | "slow" }>,
  types: ReadonlyMap<string, string>
): "fast" | "slow" => {
  const target = manifest.find((t) => t.id === storage)
  if (target !== undefined) return target.class
  const type = types.get(storage)
  return type !== undefined && LOCAL_TYPES.has(type) && !NETWORK_TYPES.has(type) ? "fast" : "slow"
}

const volumeKeys = (config: Readonly<Record<string, unknown>>): ReadonlyArray<string> =>
  [
    ...(typeof config["rootfs"] === "string" ? ["rootfs"] : []),
    ...Object.keys(config).filter((k) => /^mp(0|[1-9][0-9]{0,2})$/.test(k)).sort((a, b) => Number(a.slice(2)) - Number(b.slice(2)))
  ]

export const storageView = (vmid: VmId, desired: Effect.Effect<Option.Option<DesiredState>>) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const config = yield* pve.guestConfig(vmid).pipe(
      Effect.mapError((e) =>
        e._tag === "PveApiError" && e.kind === "not_found"
          ? new ApiFailure({ code: "not_found", message: "storage: the guest does not exist" })
          : pveFailure("storage", e)
      )
    )
    const manifest = Option.match(yield* desired, { onNone: () => [], onSome: (d) => d.storage ?? [] })
    const listed = yield* Effect.option(pve.storageList)
    const types = new Map(Option.getOrElse(listed, (): ReadonlyArray<StorageConfigEntry> => []).map((s) => [s.storage, s.type] as const))
    const mounts = volumeKeys(config).flatMap((key) => {
      const raw = config[key]
      if (typeof raw !== "string") return []
      const ref = parseVolume(raw)
      if (ref.storage === undefined) return [] // a bind mount: a host path, not guest storage
      const path = key === "rootfs" ? "/" : ref.options.get("mp")
      if (path === undefined) return []
      return [{
        key,
        path,
        class: classOf(ref.storage, manifest, types),
        storage: ref.storage,
        size_gib: sizeGib(ref.options.get("size")),
        // PVE leaves a mount point out of vzdump unless backup=1; rootfs is always in
        backup: key === "rootfs" || ref.options.get("backup") === "1"
      }]
    })
    const response: StorageResponse = { mounts }
    return response
  })
