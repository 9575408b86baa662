/**
 * Reconcile (SPEC §7a) as pure functions: normalize what PVE reports and what the hub wants into
 * one comparable shape, then diff them into the minimal action set. Nothing here talks to PVE or
 * decides whether an action may run; the gate and the executor do that.
 *
 * Normalization exists so that PVE's round-trip quirks never read as drift: memory in MiB,
 * description with PVE's trailing newline, tags in any order and separator, absent keys meaning
 * PVE's defaults.
 */
import type { RecoverPlan } from "../bringup/tiers.js"
import { mountsFor } from "../bringup/mounts.js"
import type { StorageId, VmId, VolumeId } from "../../schema/ids.js"
import type { DesiredGuest, DesiredState } from "../../schema/desired.js"
import type { GuestConfig, GuestSummary } from "../../schema/proxmox.js"
import { rootfsBytes } from "../cli/selftest.js"

const MiB = 1024 * 1024
const GiB = 1024 * MiB

/** PVE's defaults for a CT config that omits the key (pve-container's schema). */
export const PVE_DEFAULT_MEMORY_MIB = 512
export const PVE_DEFAULT_SWAP_MIB = 512

export type Power = "running" | "stopped"

export interface NormalSpec {
  readonly hostname: string | null
  /** null: unset, PVE gives the guest all host cores. */
  readonly cores: number | null
  readonly memory_mib: number | null
  readonly swap_mib: number | null
  /** Whole GiB, rounded down; null when the rootfs size is not readable. */
  readonly rootfs_gib: number | null
  readonly description: string
  /** Sorted, deduplicated, lower-case. */
  readonly tags: ReadonlyArray<string>
}

export interface DesiredSpec extends NormalSpec {
  readonly power: Power
}

export interface ActualGuest {
  readonly vmid: VmId
  readonly status: Power
  readonly lock: string | null
  /** null: the config could not be read, so only the run state is known. */
  readonly spec: NormalSpec | null
}

// ---------------------------------------------------------------------------------------------
// Normalization

/** PVE returns the description decoded, with a trailing newline; CRLF from web UI pastes. */
export const normalizeDescription = (s: string | undefined): string =>
  (s ?? "").replace(/\r\n?/g, "\n").trimEnd()

/** PVE joins with ";" but older tooling wrote "," or spaces; order carries no meaning. */
export const normalizeTags = (tags: string | ReadonlyArray<string> | undefined): ReadonlyArray<string> => {
  const parts = typeof tags === "string" ? tags.split(/[;,\s]+/) : (tags ?? [])
  const set = new Set<string>()
  for (const t of parts) {
    const lc = t.trim().toLowerCase()
    if (lc !== "") set.add(lc)
  }
  return [...set].sort()
}

/**
 * Rounded down: a disk of 8.5 GiB satisfies a desired 8 (no bogus shrink note) and does not
 * satisfy a desired 9 (so the grow is planned). Rounding up would miss that grow.
 */
export const rootfsGib = (rootfs: string | undefined): number | null => {
  const bytes = rootfsBytes(rootfs)
  return bytes === null || !Number.isFinite(bytes) ? null : Math.floor(bytes / GiB)
}

// Config numbers are already numbers (GuestConfig decodes numeric strings); a fractional MiB is
// rounded down so the guest is never credited with memory it does not have.
const mib = (n: number | undefined, dflt: number): number =>
  n === undefined || !Number.isFinite(n) ? dflt : Math.floor(n)

export const normalizeConfig = (config: GuestConfig): NormalSpec => ({
  hostname: config.hostname ?? null,
  cores: config.cores === undefined || !Number.isFinite(config.cores) ? null : config.cores,
  memory_mib: mib(config.memory, PVE_DEFAULT_MEMORY_MIB),
  swap_mib: mib(config.swap, PVE_DEFAULT_SWAP_MIB),
  rootfs_gib: rootfsGib(config.rootfs),
  description: normalizeDescription(config.description),
  tags: normalizeTags(config.tags)
})

export const normalizeActual = (summary: GuestSummary, config: GuestConfig | null): ActualGuest => ({
  vmid: summary.vmid,
  status: summary.status,
  // The config's lock is read later than the list entry, so it wins when both are present.
  lock: config?.lock ?? summary.lock ?? null,
  spec: config === null ? null : normalizeConfig(config)
})

/** Bytes to MiB rounding up: PVE takes whole MiB and the guest gets at least what was asked. */
export const normalizeDesired = (g: DesiredGuest): DesiredSpec => ({
  hostname: g.hostname,
  cores: g.cores ?? null,
  memory_mib: Math.ceil(g.memory_bytes / MiB),
  swap_mib: g.swap_mib,
  rootfs_gib: g.rootfs_gib,
  description: normalizeDescription(g.description),
  tags: normalizeTags(g.tags),
  power: g.power
})

// ---------------------------------------------------------------------------------------------
// Plan

export type ConfigSet = {
  readonly cores?: number
  /** MiB */
  readonly memory?: number
  /** MiB */
  readonly swap?: number
  readonly hostname?: string
  /** Normalized; "" means delete the key. */
  readonly description?: string
  /** ";"-joined, sorted; "" means delete the key. */
  readonly tags?: string
}

export type Action =
  | {
    readonly kind: "create"
    readonly vmid: VmId
    readonly spec: DesiredGuest
    /** null: the desired state has no provisioning section (a note says so). */
    readonly source: { readonly archive: VolumeId; readonly storage: StorageId } | null
    /** Mount points the bring-up allocates from the guest's placement (bringup/mounts.ts); absent: none. */
    readonly mounts?: Readonly<Record<string, string>>
    /**
     * The guest is not started by the create: its controller's bootstrap (with the first-boot
     * directive) is mounted first and a `start` follows, so the first boot sees the directive.
     */
    readonly deferStart?: true
  }
  | { readonly kind: "destroy"; readonly vmid: VmId; readonly reason: "absent_from_desired" }
  | { readonly kind: "set_config"; readonly vmid: VmId; readonly set: ConfigSet }
  | { readonly kind: "resize"; readonly vmid: VmId; readonly disk: "rootfs"; readonly sizeGib: number }
  | { readonly kind: "start"; readonly vmid: VmId }
  | { readonly kind: "stop"; readonly vmid: VmId }
  /** The provisioning back half (issue 11): token, bootstrap files, the read-only mount. */
  | { readonly kind: "deploy_controller"; readonly vmid: VmId; readonly image: string }
  /**
   * A new controller image. `basis` is the plan's, from the agent's own config: "policy" when
   * the image is in `controllers.repositories` (health-checked, rolled back on failure), else
   * "signed" (an operator vouches for it).
   */
  | { readonly kind: "update_controller"; readonly vmid: VmId; readonly from: string; readonly to: string; readonly basis: "policy" | "signed" }
  /**
   * A lost guest the hub still wants (issue 12): recovered from its fastest surviving backup,
   * never recreated blank. Planned outside the pure diff (apply.ts withRecoveries reads PVE for
   * the restore points); always destructive-class: it runs only with an operator's signature.
   */
  | { readonly kind: "recover"; readonly vmid: VmId; readonly recover: RecoverPlan; readonly spec: DesiredGuest }

export type NoteReason =
  | "shrink_refused"
  | "locked"
  | "config_unreadable"
  | "rootfs_size_unknown"
  | "no_provisioning"
  | "held"
  | "lost"
  | "resize_refused"
  | "memory_refused"
  | "golden_unverified"
  | "controller_refused"
  | "controller_update_failed"
  | "no_local_api"

/** Something the plan cannot converge this pass; reported, never silently dropped. */
export interface Note {
  readonly vmid: VmId
  readonly reason: NoteReason
  readonly message: string
}

export interface Plan {
  readonly generation: number
  /** Grouped by vmid ascending; per guest in execution order (set_config, resize, start/stop). */
  readonly actions: ReadonlyArray<Action>
  readonly notes: ReadonlyArray<Note>
}

const sameTags = (a: ReadonlyArray<string>, b: ReadonlyArray<string>): boolean =>
  a.length === b.length && a.every((t, i) => t === b[i])

const configDiff = (actual: NormalSpec, want: DesiredSpec): ConfigSet => {
  const set: {
    cores?: number
    memory?: number
    swap?: number
    hostname?: string
    description?: string
    tags?: string
  } = {}
  // cores null in desired = unmanaged; null in actual = all host cores, drift only if desired sets it
  if (want.cores !== null && want.cores !== actual.cores) set.cores = want.cores
  if (want.memory_mib !== null && want.memory_mib !== actual.memory_mib) set.memory = want.memory_mib
  if (want.swap_mib !== null && want.swap_mib !== actual.swap_mib) set.swap = want.swap_mib
  if (want.hostname !== null && want.hostname !== actual.hostname) set.hostname = want.hostname
  if (want.description !== actual.description) set.description = want.description
  if (!sameTags(want.tags, actual.tags)) set.tags = want.tags.join(";")
  return set
}

const powerAction = (vmid: VmId, status: Power, want: Power): Array<Action> =>
  status === want ? [] : [want === "running" ? { kind: "start", vmid } : { kind: "stop", vmid }]

/** First occurrence wins, so a duplicated vmid in the input cannot make the plan order-dependent. */
const indexBy = <A extends { readonly vmid: VmId }>(xs: ReadonlyArray<A>): Map<VmId, A> => {
  const m = new Map<VmId, A>()
  for (const x of xs) if (!m.has(x.vmid)) m.set(x.vmid, x)
  return m
}

/**
 * What the agent knows beside PVE and the hub, so the plan can refuse what the hub must not get
 * (issue 8, findings 2, 6 and 9). Everything here comes from the journal or from PVE, never from
 * the hub.
 */
export interface PlanContext {
  /** Guests the agent will not touch this pass: an op needs an operator, or one is in flight. */
  readonly held: ReadonlyMap<VmId, string>
  /** Guests known to hold customer data (created and sealed, or adopted), and those found lost. */
  readonly customer: ReadonlySet<VmId>
  /** Host memory in MiB (bounds memory and swap); null when unknown. */
  readonly hostMemoryMiB: number | null
  /** Archives an operator signed (or the agent built) as provisioning sources; null: not checked. */
  readonly goldenArchives: ReadonlySet<string> | null
  /** Free GiB on the storage holding a guest's rootfs (bounds a grow); undefined when unknown. */
  readonly rootfsFreeGib: (vmid: VmId) => number | undefined
  /**
   * Controllers (issue 11): null when this host serves no local API (no controller is deployed).
   * `deployed`: each guest's deployed image; `repositories`: the operator's allowed repositories.
   */
  readonly controllers?: {
    readonly deployed: ReadonlyMap<VmId, string>
    readonly repositories: ReadonlyArray<string>
    /**
     * A guest whose newest controller update was rolled back: that image is not retried on the
     * hub's word, and while `recent` no other policy update runs either (each rollback discards
     * what the guest wrote since its snapshot; a hub alternating images must not repeat that).
     */
    readonly failedUpdates?: ReadonlyMap<VmId, { readonly image: string; readonly recent: boolean }>
  } | null
}

/** The repository of an image reference (`registry/path`, without tag or digest). */
export const repositoryOf = (image: string): string => {
  const noDigest = image.split("@")[0] ?? image
  const slash = noDigest.lastIndexOf("/")
  const colon = noDigest.lastIndexOf(":")
  return colon > slash ? noDigest.slice(0, colon) : noDigest
}

/** Whether the operator's config lets the hub deploy or update to this image on its word. */
export const imageAllowed = (image: string, repositories: ReadonlyArray<string>): boolean =>
  repositories.includes(repositoryOf(image))

/** The controller actions of a desired guest that exists (or is being created in this plan). */
const controllerActions = (vmid: VmId, d: DesiredGuest, ctx: PlanContext, note: (vmid: VmId, reason: NoteReason, message: string) => void): Array<Action> => {
  if (d.controller === undefined) return []
  const c = ctx.controllers
  if (c === undefined || c === null) {
    note(vmid, "no_local_api", "a controller is desired but this host serves no local API (config local_api); not deployed")
    return []
  }
  const want = d.controller.image
  const have = c.deployed.get(vmid)
  if (have === undefined) {
    if (!imageAllowed(want, c.repositories)) {
      note(vmid, "controller_refused", `controller image ${want} is not in the agent's controllers.repositories; not deployed`)
      return []
    }
    return [{ kind: "deploy_controller", vmid, image: want }]
  }
  if (have === want) return []
  const basis = imageAllowed(want, c.repositories) ? "policy" as const : "signed" as const
  const failed = c.failedUpdates?.get(vmid)
  if (failed !== undefined && basis === "policy" && (failed.image === want || failed.recent)) {
    // retrying on every pass would roll the guest back each time: a later (or signed) one tries again
    note(
      vmid,
      "controller_update_failed",
      failed.image === want
        ? `the update to ${want} was rolled back; not retried until the desired image changes (or an operator signs controller-update)`
        : `the update to ${failed.image} was rolled back recently; no other policy update of this controller until the cool-down ends (an operator may sign controller-update)`
    )
    return []
  }
  return [{ kind: "update_controller", vmid, from: have, to: want, basis }]
}

/** Nothing known: a grow is refused (free space unknown), nothing is held. */
export const emptyContext: PlanContext = {
  held: new Map(),
  customer: new Set(),
  hostMemoryMiB: null,
  goldenArchives: new Set(),
  rootfsFreeGib: () => undefined
}

/** For the pure model and its properties: no holds, no records, no bounds. */
export const unboundedContext: PlanContext = { ...emptyContext, goldenArchives: null, rootfsFreeGib: () => Number.POSITIVE_INFINITY }

/** The smallest memory a guest may be cut to (below it a Debian guest does not boot). */
export const MIN_MEMORY_MIB = 64

/** Why this memory/swap is refused, or undefined. Growth beyond the host is as absurd as a cut to nothing. */
const memoryRefusal = (memoryMiB: number | null, swapMiB: number | null, ctx: PlanContext): string | undefined => {
  if (memoryMiB !== null && memoryMiB < MIN_MEMORY_MIB) return `memory ${memoryMiB} MiB is below the ${MIN_MEMORY_MIB} MiB floor`
  if (ctx.hostMemoryMiB !== null) {
    if (memoryMiB !== null && memoryMiB > ctx.hostMemoryMiB) return `memory ${memoryMiB} MiB exceeds the host's ${ctx.hostMemoryMiB} MiB`
    if (swapMiB !== null && swapMiB > ctx.hostMemoryMiB) return `swap ${swapMiB} MiB exceeds the host's memory (${ctx.hostMemoryMiB} MiB)`
  }
  return undefined
}

/** The minimal action set taking `actual` to `desired`; total and deterministic. */
export const plan = (actual: ReadonlyArray<ActualGuest>, desired: DesiredState, ctx: PlanContext = emptyContext): Plan => {
  const have = indexBy(actual)
  const want = indexBy(desired.guests)
  const vmids = [...new Set<VmId>([...have.keys(), ...want.keys()])].sort((a, b) => a - b)
  const source = desired.provisioning === undefined
    ? null
    : { archive: desired.provisioning.golden_archive, storage: desired.provisioning.storage }

  const actions: Array<Action> = []
  const notes: Array<Note> = []
  const note = (vmid: VmId, reason: NoteReason, message: string) => notes.push({ vmid, reason, message })

  for (const vmid of vmids) {
    const a = have.get(vmid)
    const d = want.get(vmid)
    const held = ctx.held.get(vmid)
    if (held !== undefined) {
      note(vmid, "held", `not touched: ${held}; no action`)
      continue
    }
    if (a === undefined) {
      if (d === undefined) continue
      if (ctx.customer.has(vmid)) {
        // a guest that held customer data is gone: recover it from a backup, never recreate it blank
        note(vmid, "lost", "this guest held customer data and is gone: lost, needs recovery (never recreated blank)")
        continue
      }
      const w0 = normalizeDesired(d)
      const refused = memoryRefusal(w0.memory_mib, w0.swap_mib, ctx)
      if (refused !== undefined) {
        note(vmid, "memory_refused", `not created: ${refused}`)
        continue
      }
      if (source !== null && ctx.goldenArchives !== null && !ctx.goldenArchives.has(source.archive)) {
        // the hub must not be able to provision a guest from any archive it names (e.g. another
        // customer's backup): only from one an operator signed or the agent built
        note(vmid, "golden_unverified", `not created: ${source.archive} is not a registered golden archive (an operator signs golden-register)`)
        continue
      }
      const mounts = mountsFor(desired.policies?.guests.find((p) => p.vmid === vmid))
      // the back half follows the create in the same turn of the guest's queue (not run if it fails)
      const back = source === null ? [] : controllerActions(vmid, d, ctx, note)
      const defer = back.length > 0 && d.power === "running"
      actions.push({ kind: "create", vmid, spec: d, source, ...(Object.keys(mounts).length === 0 ? {} : { mounts }), ...(defer ? { deferStart: true as const } : {}) })
      if (source === null) note(vmid, "no_provisioning", "guest must be created but the desired state names no golden archive")
      actions.push(...back)
      if (defer) actions.push({ kind: "start", vmid })
      continue
    }
    if (a.lock !== null) {
      // A locked guest is busy (backup, snapshot, a create in flight): act on it next pass.
      note(vmid, "locked", `guest is locked (${a.lock}); no action this pass`)
      continue
    }
    if (d === undefined) {
      actions.push({ kind: "destroy", vmid, reason: "absent_from_desired" })
      continue
    }
    const w = normalizeDesired(d)
    if (a.spec === null) {
      note(vmid, "config_unreadable", "config could not be read; only the power state is converged")
      actions.push(...powerAction(vmid, a.status, w.power))
      continue
    }
    const diff = configDiff(a.spec, w)
    const refusal = memoryRefusal(diff.memory ?? null, diff.swap ?? null, ctx)
    const set: ConfigSet = refusal === undefined
      ? diff
      : Object.fromEntries(Object.entries(diff).filter(([k]) => k !== "memory" && k !== "swap"))
    if (refusal !== undefined) note(vmid, "memory_refused", `memory/swap not changed: ${refusal}`)
    if (Object.keys(set).length > 0) actions.push({ kind: "set_config", vmid, set })
    const size = a.spec.rootfs_gib
    if (w.rootfs_gib !== null) {
      if (size === null) {
        note(vmid, "rootfs_size_unknown", "rootfs size is not readable; not resizing")
      } else if (size < w.rootfs_gib) {
        const free = ctx.rootfsFreeGib(vmid)
        // a grow is irreversible: only within the space the storage has now
        if (free === undefined) note(vmid, "resize_refused", "the rootfs storage's free space is unknown; not growing")
        else if (w.rootfs_gib - size > free) {
          note(vmid, "resize_refused", `growing rootfs by ${w.rootfs_gib - size} GiB exceeds the ${free} GiB free on its storage`)
        } else actions.push({ kind: "resize", vmid, disk: "rootfs", sizeGib: w.rootfs_gib })
      } else if (size > w.rootfs_gib) {
        note(vmid, "shrink_refused", `rootfs is ${size} GiB, desired ${w.rootfs_gib} GiB: PVE cannot shrink a disk`)
      }
    }
    // a deploy goes before a start, so the guest boots with its bootstrap; an update after the power change
    const ctlActions = controllerActions(vmid, d, ctx, note)
    actions.push(...ctlActions.filter((c) => c.kind === "deploy_controller"))
    actions.push(...powerAction(vmid, a.status, w.power))
    actions.push(...ctlActions.filter((c) => c.kind !== "deploy_controller"))
  }
  return { generation: desired.generation, actions, notes }
}
