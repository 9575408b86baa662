/**
 * What lives on a server rather than on the simulated box (issue 13, host loss): PBS snapshots
 * (server, datastore, namespace) and the backups on an NFS export or CIFS share. A storage entry
 * is only this node's view of them, so when the node is wiped (`SimPve.wipeNode`) they move here,
 * keyed by where they live, and a storage added later (any id) on the same place lists them again
 * under its own volids, encrypted fingerprints and all. Local storages (dir, USB, LVM) keep nothing.
 *
 * Move semantics: attaching takes the contents out of the store, so two storages added on the
 * same place one after the other do not both list (and later both delete) the same snapshot.
 */
import type { SimState, StorageState, VolumeState } from "./state.js"
import { pbsPort } from "./storage.js"

/** A backup as its server keeps it: everything but the storage id it was seen through. */
export type RemoteVolume = Omit<VolumeState, "volid" | "storage"> & { readonly volname: string }

/** Where a storage's contents live when they live off the box; undefined for local storages. */
export const remoteKey = (st: StorageState): string | undefined => {
  switch (st.type) {
    case "pbs":
      return st.server === undefined || st.datastore === undefined
        ? undefined
        : `pbs://${st.server.toLowerCase()}:${pbsPort(st)}/${st.datastore}?ns=${st.namespace ?? ""}`
    case "nfs":
      return st.server === undefined || st.export === undefined ? undefined : `nfs://${st.server.toLowerCase()}${st.export}`
    case "cifs":
      return st.server === undefined || st.share === undefined ? undefined : `cifs://${st.server.toLowerCase()}/${st.share}${st.subdir ?? ""}`
    default:
      return undefined
  }
}

/** Moves every backup on a remote storage into the store (the node is about to lose its view). */
export const detachRemote = (state: SimState): number => {
  let moved = 0
  for (const v of state.volumes.values()) {
    const st = state.storages.get(v.storage)
    const key = st === undefined ? undefined : remoteKey(st)
    if (key === undefined || v.content !== "backup" || v.underlying === true) continue
    const { volid, storage: _s, ...rest } = v
    const volname = volid.slice(volid.indexOf(":") + 1)
    const held = (state.remote.get(key) ?? []).filter((r) => r.volname !== volname)
    state.remote.set(key, [...held, { ...rest, volname }])
    moved++
  }
  return moved
}

/** Lists what the store holds for this storage's place under the storage's own volids. */
export const attachRemote = (state: SimState, st: StorageState): number => {
  const key = remoteKey(st)
  const held = key === undefined ? undefined : state.remote.get(key)
  if (key === undefined || held === undefined) return 0
  state.remote.delete(key)
  let listed = 0
  for (const { volname, ...rest } of held) {
    const volid = `${st.storage}:${volname}`
    if (state.volumes.has(volid)) continue
    state.volumes.set(volid, { ...rest, volid, storage: st.storage })
    listed++
  }
  return listed
}
