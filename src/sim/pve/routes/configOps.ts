/**
 * Shared by PUT config and POST lxc (create/restore): PVE's check_ct_modify_config_perm (the
 * per-key privilege rules, including the root-only ones a token always fails) and applying
 * config changes (MACs for new NICs, volume allocation for `mpN=<storage>:<GiB>`, unusedN).
 */
import { Effect, Either } from "effect"
import { check, randomMac, type RequestCtx, type SimEnv } from "../env.js"
import { die500, permDeniedText, type PveApiError } from "../errors.js"
import {
  formatSize,
  GiB_BYTES,
  isFeatureChangeNestingOnly,
  type LxcConfig,
  parseFeatures,
  parseMountPoint,
  parseNet,
  printMountPoint,
  printNet,
  printPropString,
  type PropString
} from "../lxcconf.js"
import type { ParamValue } from "../params.js"
import { allocateVolumeName, type GuestState, type SimState } from "../state.js"

/** `<storage>:<GiB>` or bare `<GiB>`: a request to allocate a new volume. */
export const ALLOC_RE = /^(?:(\S+):)?(\d+(?:\.\d+)?)$/

const propsOrEmpty = (e: Either.Either<PropString, string>): PropString => Either.getOrElse(e, () => ({}))

/**
 * check_ct_modify_config_perm. `oldConf` is undefined for a new container; `defaultStorage` is
 * where bare `<GiB>` volumes go.
 */
export const checkConfigPerms = (
  ctx: RequestCtx,
  vmid: number,
  oldConf: LxcConfig | undefined,
  sets: Readonly<Record<string, ParamValue>>,
  deletes: ReadonlyArray<string>,
  unprivileged: boolean,
  defaultStorage: string
): Effect.Effect<void, PveApiError> =>
  Effect.gen(function*() {
    const vm = `/vms/${vmid}`
    for (const opt of [...Object.keys(sets), ...deletes]) {
      const isDelete = sets[opt] === undefined
      if (opt === "cores" || opt === "cpulimit" || opt === "cpuunits") {
        yield* check(ctx, vm, ["VM.Config.CPU"])
      } else if (opt === "rootfs" || /^mp\d+$/.test(opt)) {
        yield* check(ctx, vm, ["VM.Config.Disk"])
        if (!isDelete) {
          const mp = parseMountPoint(opt, String(sets[opt]))
          if (Either.isRight(mp)) {
            if (mp.right.type !== "volume") {
              return yield* Effect.fail(permDeniedText(`mount point type ${mp.right.type} is only allowed for root@pam`))
            }
            const alloc = ALLOC_RE.exec(mp.right.volume)
            if (alloc !== null) yield* check(ctx, `/storage/${alloc[1] ?? defaultStorage}`, ["Datastore.AllocateSpace"])
          }
        }
      } else if (opt === "memory" || opt === "swap") {
        yield* check(ctx, vm, ["VM.Config.Memory"])
      } else if (/^net\d+$/.test(opt)) {
        yield* check(ctx, vm, ["VM.Config.Network"])
        if (!isDelete) {
          const net = propsOrEmpty(parseNet(opt, String(sets[opt])))
          const bridge = net["bridge"]
          if (bridge !== undefined) {
            const tag = net["tag"]
            yield* check(ctx, `/sdn/zones/localnetwork/${bridge}${tag !== undefined ? `/${tag}` : ""}`, ["SDN.Use"])
          }
        }
      } else if (opt === "hostname" || opt === "nameserver" || opt === "searchdomain") {
        yield* check(ctx, vm, ["VM.Config.Network"])
      } else if (/^dev\d+$/.test(opt)) {
        return yield* Effect.fail(permDeniedText("configuring device passthrough is only allowed for root@pam"))
      } else if (opt === "features") {
        if (!unprivileged) {
          return yield* Effect.fail(permDeniedText("changing feature flags for privileged container is only allowed for root@pam"))
        }
        const before = oldConf?.["features"] === undefined ? undefined : propsOrEmpty(parseFeatures(String(oldConf["features"])))
        const after = isDelete ? {} : propsOrEmpty(parseFeatures(String(sets[opt])))
        const diff = isFeatureChangeNestingOnly(before, after)
        if (diff.other) {
          return yield* Effect.fail(permDeniedText("changing feature flags (except nesting) is only allowed for root@pam"))
        }
        if (diff.nesting) yield* check(ctx, vm, ["VM.Allocate"])
      } else if (opt === "hookscript") {
        return yield* Effect.fail(permDeniedText("changing the hookscript is only allowed for root@pam"))
      } else if (/^unused\d+$/.test(opt)) {
        yield* check(ctx, vm, ["VM.Config.Disk"])
      } else {
        yield* check(ctx, vm, ["VM.Config.Options"])
      }
    }
  })

/** Fresh MACs for every NIC being set without `hwaddr` (drawn before the atomic apply). */
export const macsFor = (env: SimEnv, sets: Readonly<Record<string, ParamValue>>): Effect.Effect<Record<string, string>> =>
  Effect.gen(function*() {
    const out: Record<string, string> = {}
    for (const key of Object.keys(sets).sort()) {
      if (!/^net\d+$/.test(key)) continue
      const net = propsOrEmpty(parseNet(key, String(sets[key])))
      if (net["hwaddr"] === undefined) out[key] = yield* randomMac(env)
    }
    return out
  })

export const normalizeNet = (key: string, value: string, mac: string | undefined): string => {
  const net = propsOrEmpty(parseNet(key, value))
  return printNet(mac !== undefined && net["hwaddr"] === undefined ? { ...net, hwaddr: mac } : net)
}

export const normalizeFeatures = (value: string): string => printPropString(propsOrEmpty(parseFeatures(value)), [])

const storageSupportsRootdir = (state: SimState, storage: string): Either.Either<void, PveApiError> => {
  const s = state.storages.get(storage)
  if (s === undefined) return Either.left(die500(`storage '${storage}' does not exist`))
  if (!s.content.includes("rootdir")) return Either.left(die500(`storage '${storage}' does not support container directories`))
  return Either.right(undefined)
}

/** Allocates a new CT volume and returns its volid. */
export const allocateVolume = (
  state: SimState,
  storage: string,
  vmid: number,
  bytes: number,
  ctime: number
): Either.Either<string, PveApiError> =>
  Either.map(storageSupportsRootdir(state, storage), () => {
    const volid = allocateVolumeName(state, storage, vmid)
    state.volumes.set(volid, {
      volid,
      storage,
      content: "rootdir",
      format: "raw",
      size: bytes,
      ctime,
      vmid
    })
    return volid
  })

const nextUnusedKey = (conf: LxcConfig): string => {
  for (let i = 0; ; i++) if (conf[`unused${i}`] === undefined) return `unused${i}`
}

/**
 * update_pct_config for an existing guest, applied atomically (call inside Effect.sync).
 * Running guests get the change at once: the simulator has no pending section.
 */
export const applyConfigUpdate = (
  state: SimState,
  g: GuestState,
  sets: Readonly<Record<string, ParamValue>>,
  deletes: ReadonlyArray<string>,
  macs: Readonly<Record<string, string>>,
  nowSec: number
): Either.Either<void, PveApiError> => {
  const conf: LxcConfig = { ...g.config }
  const newVolumes: Array<string> = []
  const rollback = () => {
    for (const v of newVolumes) state.volumes.delete(v)
  }
  for (const opt of deletes) {
    const old = conf[opt]
    if (old === undefined) continue
    if (opt === "rootfs") return Either.left(die500("unable to delete required option 'rootfs'"))
    if (/^mp\d+$/.test(opt)) {
      const mp = parseMountPoint(opt, String(old))
      if (Either.isRight(mp) && mp.right.type === "volume") conf[nextUnusedKey(conf)] = mp.right.volume
    } else if (/^unused\d+$/.test(opt)) {
      const referenced = g.snapshots.some((s) => Object.values(s.config).some((v) => String(v).split(",")[0] === String(old)))
      if (!referenced) state.volumes.delete(String(old))
    }
    delete conf[opt]
  }
  for (const [opt, value] of Object.entries(sets)) {
    if (/^net\d+$/.test(opt)) {
      conf[opt] = normalizeNet(opt, String(value), macs[opt])
    } else if (opt === "features") {
      conf[opt] = normalizeFeatures(String(value))
    } else if (opt === "rootfs" || /^mp\d+$/.test(opt)) {
      const parsed = parseMountPoint(opt, String(value))
      if (Either.isLeft(parsed)) return Either.left(die500(parsed.left))
      const mp = parsed.right
      const alloc = ALLOC_RE.exec(mp.volume)
      const current = conf[opt] === undefined ? undefined : Either.getOrUndefined(parseMountPoint(opt, String(conf[opt])))
      if (opt === "rootfs") {
        if (alloc !== null || (current !== undefined && current.volume !== mp.volume)) {
          rollback()
          return Either.left(die500("unable to change the rootfs volume via a config update (use resize or restore)"))
        }
        conf[opt] = printMountPoint({ ...mp.props, ...(current?.props["size"] !== undefined ? { size: current.props["size"] } : {}) })
        continue
      }
      if (alloc !== null) {
        const storage = alloc[1] ?? "local"
        const bytes = Math.round(Number(alloc[2]) * GiB_BYTES)
        const made = allocateVolume(state, storage, g.vmid, bytes, nowSec)
        if (Either.isLeft(made)) {
          rollback()
          return Either.left(made.left)
        }
        newVolumes.push(made.right)
        if (current !== undefined && current.type === "volume") conf[nextUnusedKey(conf)] = current.volume
        conf[opt] = printMountPoint({ ...mp.props, volume: made.right, size: formatSize(bytes) })
      } else {
        const existing = state.volumes.get(mp.volume)
        if (existing === undefined) {
          rollback()
          return Either.left(die500(`volume '${mp.volume}' does not exist`))
        }
        for (const [k, v] of Object.entries(conf)) {
          if (/^unused\d+$/.test(k) && v === mp.volume) delete conf[k]
        }
        // a replaced volume is kept as unusedN, as for an allocation (pve-container add_unused_volume)
        if (current !== undefined && current.type === "volume" && current.volume !== mp.volume) conf[nextUnusedKey(conf)] = current.volume
        conf[opt] = printMountPoint({ ...mp.props, size: formatSize(existing.size) })
      }
    } else {
      conf[opt] = value
    }
  }
  g.config = conf
  return Either.right(undefined)
}
