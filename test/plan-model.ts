/**
 * A pure model of executing a plan against PVE, with PVE's round-trip, for the convergence
 * properties in reconcile.test.ts. Test-only: it deliberately does not reuse the normalizers, so
 * the properties test them against an independent picture of PVE.
 */
import type { DesiredGuest } from "../src/schema/desired.js"
import type { VmId } from "../src/schema/ids.js"
import type { GuestConfig } from "../src/schema/proxmox.js"
import { type ActualGuest, type ConfigSet, type NormalSpec, normalizeActual, type Plan, type Power } from "../src/programs/control/plan.js"

const MiB = 1024 * 1024


/** PVE dedupes tags and stores them ";"-joined in sorted order (tag-style ordering default). */
const pveTags = (tags: ReadonlyArray<string>): string => [...new Set(tags.filter((t) => t !== ""))].sort().join(";")

/** What PVE would store for this spec and return from GET config (decoded). */
export const pveConfigOf = (vmid: VmId, spec: NormalSpec): GuestConfig => ({
  ...(spec.hostname === null ? {} : { hostname: spec.hostname }),
  ...(spec.cores === null ? {} : { cores: spec.cores }),
  ...(spec.memory_mib === null ? {} : { memory: spec.memory_mib }),
  ...(spec.swap_mib === null ? {} : { swap: spec.swap_mib }),
  ...(spec.rootfs_gib === null ? {} : { rootfs: `local-lvm:vm-${vmid}-disk-0,size=${spec.rootfs_gib}G` }),
  // PVE keeps the description as comment lines, so it comes back with a trailing newline.
  ...(spec.description === "" ? {} : { description: `${spec.description}\n` }),
  ...(spec.tags.length === 0 ? {} : { tags: pveTags(spec.tags) })
})

const without = (c: GuestConfig, key: string): GuestConfig =>
  Object.fromEntries(Object.entries(c).filter(([k]) => k !== key))

/** PUT config as PVE applies it: "" for description or tags deletes the key. */
const applySet = (c0: GuestConfig, set: ConfigSet): GuestConfig => {
  let c: GuestConfig = {
    ...c0,
    ...(set.cores === undefined ? {} : { cores: set.cores }),
    ...(set.memory === undefined ? {} : { memory: set.memory }),
    ...(set.swap === undefined ? {} : { swap: set.swap }),
    ...(set.hostname === undefined ? {} : { hostname: set.hostname })
  }
  if (set.description !== undefined) {
    c = set.description === "" ? without(c, "description") : { ...c, description: `${set.description}\n` }
  }
  if (set.tags !== undefined) {
    const tags = pveTags(set.tags.split(";"))
    c = tags === "" ? without(c, "tags") : { ...c, tags }
  }
  return c
}

const reread = (vmid: VmId, status: Power, lock: string | null, config: GuestConfig | null): ActualGuest =>
  normalizeActual({ vmid, status, ...(lock === null ? {} : { lock }) }, config)

/**
 * What PVE stores after the bring-up sends the desired guest as the hub wrote it (description and
 * tags unnormalized; memory in whole MiB, which is the executor's rounding, not PVE's).
 */
const pveConfigOfDesired = (g: DesiredGuest): GuestConfig => ({
  hostname: g.hostname,
  ...(g.cores === undefined ? {} : { cores: g.cores }),
  memory: Math.ceil(g.memory_bytes / MiB),
  swap: g.swap_mib,
  rootfs: `local-lvm:vm-${g.vmid}-disk-0,size=${g.rootfs_gib}G`,
  ...(g.description === "" ? {} : { description: `${g.description}\n` }),
  ...(g.tags.length === 0 ? {} : { tags: pveTags(g.tags) })
})

/** A guest as the bring-up would leave it (restore, size, power), read back through PVE. */
export const actualFromDesiredGuest = (g: DesiredGuest): ActualGuest =>
  reread(g.vmid, g.power, null, pveConfigOfDesired(g))

/**
 * A pure model of executing `p` against `actual`: what PVE would then store and return,
 * re-normalized. A create without a source does nothing (the executor reports it).
 */
export const applyPlanToActual = (actual: ReadonlyArray<ActualGuest>, p: Plan): ReadonlyArray<ActualGuest> => {
  const state = new Map<VmId, { status: Power; lock: string | null; config: GuestConfig | null }>()
  for (const a of actual) {
    if (!state.has(a.vmid)) {
      state.set(a.vmid, { status: a.status, lock: a.lock, config: a.spec === null ? null : pveConfigOf(a.vmid, a.spec) })
    }
  }
  for (const act of p.actions) {
    const g = state.get(act.vmid)
    switch (act.kind) {
      case "create": {
        if (act.source !== null && g === undefined) {
          state.set(act.vmid, { status: act.spec.power, lock: null, config: pveConfigOfDesired(act.spec) })
        }
        break
      }
      case "destroy":
        state.delete(act.vmid)
        break
      case "set_config":
        if (g !== undefined && g.config !== null) g.config = applySet(g.config, act.set)
        break
      case "resize":
        if (g !== undefined && g.config !== null) {
          const rest = (g.config.rootfs ?? `local-lvm:vm-${act.vmid}-disk-0`).replace(/,size=[^,]*/, "")
          g.config = { ...g.config, rootfs: `${rest},size=${act.sizeGib}G` }
        }
        break
      case "start":
        if (g !== undefined) g.status = "running"
        break
      case "stop":
        if (g !== undefined) g.status = "stopped"
        break
    }
  }
  return [...state.entries()]
    .sort(([a], [b]) => a - b)
    .map(([vmid, g]) => reread(vmid, g.status, g.lock, g.config))
}
