/**
 * Writes on one existing CT: PUT config (synchronous, returns null), start/stop/shutdown,
 * destroy, resize. Pre-task errors are raised where PVE raises them before forking the worker;
 * the rest surface inside the task, as on a real host.
 */
import { Clock, Effect, Either, Fiber } from "effect"
import {
  check,
  findGuest,
  flockTimeoutText,
  guestLock,
  lockedError,
  pBool,
  pNum,
  pStr,
  type RequestCtx,
  requireGuest,
  requireNode,
  type SimEnv,
  startTask,
  takeFlock,
  taskFailure,
  type TaskCtx,
  withFlock
} from "../env.js"
import { die500, noSuchGuest, paramError, type PveApiError, type TaskFailure } from "../errors.js"
import { taskSleep } from "../taskClock.js"
import {
  CONFIG_PATTERN_PROPERTIES,
  CONFIG_PROPERTIES,
  configKeySpec,
  formatSize,
  parseMountPoint,
  parseSize,
  printMountPoint
} from "../lxcconf.js"
import { checkProp, fmtConfigIdList, type ParamValue } from "../params.js"
import { optional, reply, type RouteDef, schema, vmPerm } from "../route.js"
import { configVolumes, type GuestState, guestDigest, type SimState, volumeName } from "../state.js"
import { macConflictsOf } from "../guestModel.js"
import { applyConfigUpdate, checkConfigPerms, macsFor } from "./configOps.js"

const CONFIG_WRITE_PRIVS = ["VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options"]
const RESERVED = new Set(["node", "vmid", "delete", "revert", "digest"])
const READ_ONLY = new Set(["unprivileged", "template"])

const splitList = (s: string | undefined): ReadonlyArray<string> => (s === undefined ? [] : s.split(/[,;\s]+/).filter((x) => x.length > 0))

const configPut: RouteDef = {
  method: "PUT",
  path: "/nodes/:node/lxc/:vmid/config",
  schema: schema(
    {
      ...CONFIG_PROPERTIES,
      delete: optional({ type: "string", format: fmtConfigIdList }),
      revert: optional({ type: "string", format: fmtConfigIdList }),
      digest: optional({ type: "string", maxLength: 40 })
    },
    { vmid: true, patternProperties: CONFIG_PATTERN_PROPERTIES }
  ),
  perm: vmPerm(CONFIG_WRITE_PRIVS, true),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      const vmid = Number(ctx.params["vmid"])
      const sets: Record<string, ParamValue> = {}
      for (const [k, v] of Object.entries(ctx.params)) if (!RESERVED.has(k)) sets[k] = v
      const deletes = splitList(pStr(ctx.params, "delete"))
      const reverts = splitList(pStr(ctx.params, "revert"))
      // netN / mpN formats depend on the key, so they are checked here rather than by the generic schema
      const formatErrors: Record<string, string> = {}
      for (const [k, v] of Object.entries(sets)) {
        const spec = configKeySpec(k)
        if (spec !== undefined) Either.match(checkProp(spec, v), { onLeft: (e) => (formatErrors[k] = e), onRight: () => undefined })
      }
      if (Object.keys(formatErrors).length > 0) return yield* Effect.fail(paramError(formatErrors))
      if (Object.keys(sets).length === 0 && deletes.length === 0 && reverts.length === 0) {
        return yield* Effect.fail(die500("no options specified"))
      }
      for (const opt of deletes) {
        if (sets[opt] !== undefined) {
          return yield* Effect.fail(paramError({ delete: `you can't use '-${opt}' and -delete ${opt}' at the same time` }))
        }
        if (configKeySpec(opt) === undefined) return yield* Effect.fail(paramError({ delete: `unknown option '${opt}'` }))
      }
      for (const k of [...Object.keys(sets), ...deletes]) {
        if (READ_ONLY.has(k)) return yield* Effect.fail(die500(`unable to modify read-only option: '${k}'`))
      }
      const macs = yield* macsFor(ctx.env, sets)
      yield* withFlock(
        ctx.env,
        vmid,
        () => die500(flockTimeoutText(vmid)),
        Effect.gen(function*() {
          const g = yield* requireGuest(ctx)
          const lock = guestLock(g)
          if (lock !== undefined) return yield* Effect.fail(lockedError(lock))
          const digest = pStr(ctx.params, "digest")
          if (digest !== undefined && digest !== guestDigest(g)) {
            return yield* Effect.fail(die500("detected modified configuration - file changed by other user? Try again."))
          }
          yield* checkConfigPerms(ctx, vmid, g.config, sets, deletes, g.config["unprivileged"] === 1, "local")
          const nowSec = Math.floor((yield* Clock.currentTimeMillis) / 1000)
          const applied = applyConfigUpdate(ctx.env.state, g, sets, deletes, macs, nowSec)
          if (Either.isLeft(applied)) return yield* Effect.fail(applied.left)
        })
      )
      return reply(null)
    })
}

// ---------------------------------------------------------------------------------------------
// Power

const skiplockCheck = (ctx: RequestCtx): Effect.Effect<void, PveApiError> =>
  pBool(ctx.params, "skiplock") ? Effect.fail(paramError({ skiplock: "Only root may use this option." })) : Effect.void

/** Inside a task: reload the guest (it may be gone) or fail with the config-file text. */
const reload = (t: TaskCtx, node: string, vmid: number): Effect.Effect<GuestState, TaskFailure> => {
  const g = findGuest(t.env, node, vmid)
  return g === undefined ? Effect.fail(taskFailure(noSuchGuest(node, vmid).message)) : Effect.succeed(g)
}

const taskFlock = <A>(t: TaskCtx, vmid: number, body: Effect.Effect<A, TaskFailure>) =>
  withFlock(t.env, vmid, () => taskFailure(flockTimeoutText(vmid)), body)

const checkLockInTask = (g: GuestState, allow?: string): Effect.Effect<void, TaskFailure> => {
  const lock = guestLock(g)
  return lock !== undefined && lock !== allow ? Effect.fail(taskFailure(`CT is locked (${lock})`)) : Effect.void
}

export const markRunning = (env: SimEnv, g: GuestState, nowMs: number): void => {
  g.status = "running"
  g.startedAtMs = nowMs
  g.pid = 100_000 + ((env.state.nextPid * 37) % 800_000)
  // the guest model's fidelity check: a link-up NIC sharing a MAC with another guest
  env.state.macConflicts.push(...macConflictsOf(env.state, g, nowMs))
}

export const markStopped = (g: GuestState): void => {
  g.status = "stopped"
  g.startedAtMs = undefined
  g.pid = undefined
}

/** The body of a vzstart task, also used by restore/rollback with start=1. */
export const startBody = (t: TaskCtx, node: string, vmid: number): Effect.Effect<void, TaskFailure> =>
  Effect.gen(function*() {
    const g = yield* reload(t, node, vmid)
    if (g.config["template"] === 1) return yield* Effect.fail(taskFailure("you can't start a CT if it's a template"))
    yield* checkLockInTask(g, "mounted")
    yield* t.step(1)
    if (t.injectFailure) return yield* Effect.fail(taskFailure(`startup for container '${vmid}' failed`))
    const now = yield* t.now
    yield* Effect.sync(() => {
      if (g.status !== "running") markRunning(t.env, g, now)
    })
  })

const start: RouteDef = {
  method: "POST",
  path: "/nodes/:node/lxc/:vmid/status/start",
  schema: schema({ skiplock: optional({ type: "boolean" }), debug: optional({ type: "boolean" }) }, { vmid: true }),
  perm: vmPerm(["VM.PowerMgmt"]),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      yield* skiplockCheck(ctx)
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const g = yield* requireGuest(ctx)
      if (g.status === "running") return yield* Effect.fail(die500(`CT ${g.vmid} already running`))
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzstart",
        id: String(g.vmid),
        token: ctx.token,
        body: (t) => taskFlock(t, g.vmid, startBody(t, node.node, g.vmid))
      })
      return reply(upid)
    })
}

const stop: RouteDef = {
  method: "POST",
  path: "/nodes/:node/lxc/:vmid/status/stop",
  schema: schema(
    { skiplock: optional({ type: "boolean" }), "overrule-shutdown": optional({ type: "boolean" }) },
    { vmid: true }
  ),
  perm: vmPerm(["VM.PowerMgmt"]),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      yield* skiplockCheck(ctx)
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const g = yield* requireGuest(ctx)
      if (g.status !== "running") return yield* Effect.fail(die500(`CT ${g.vmid} not running`))
      const overrule = pBool(ctx.params, "overrule-shutdown")
      const shutdowns = overrule
        ? ctx.env.state.tasks.filter((x) => x.type === "vzshutdown" && x.status === "running" && x.id === String(g.vmid))
        : []
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzstop",
        id: String(g.vmid),
        token: ctx.token,
        body: (t) =>
          Effect.gen(function*() {
            for (const s of shutdowns) {
              yield* t.log(`overruling active shutdown tasks: ${s.upid}`)
              const fiber = t.env.fibers.get(s.upid)
              if (fiber !== undefined) yield* Fiber.interrupt(fiber)
            }
            yield* taskFlock(
              t,
              g.vmid,
              Effect.gen(function*() {
                const cur = yield* reload(t, node.node, g.vmid)
                yield* checkLockInTask(cur)
                yield* t.step(1)
                if (t.injectFailure) return yield* Effect.fail(taskFailure(`command 'lxc-stop -n ${g.vmid} --kill' failed: exit code 1`))
                yield* Effect.sync(() => markStopped(cur))
              })
            )
          })
      })
      return reply(upid)
    })
}

const shutdown: RouteDef = {
  method: "POST",
  path: "/nodes/:node/lxc/:vmid/status/shutdown",
  schema: schema({ timeout: optional({ type: "integer", minimum: 0 }), forceStop: optional({ type: "boolean" }) }, { vmid: true }),
  perm: vmPerm(["VM.PowerMgmt"]),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const g = yield* requireGuest(ctx)
      if (g.status !== "running") return yield* Effect.fail(die500(`CT ${g.vmid} not running`))
      const timeoutMs = (pNum(ctx.params, "timeout") ?? 60) * 1000
      const forceStop = pBool(ctx.params, "forceStop")
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzshutdown",
        id: String(g.vmid),
        token: ctx.token,
        body: (t) =>
          taskFlock(
            t,
            g.vmid,
            Effect.gen(function*() {
              const cur = yield* reload(t, node.node, g.vmid)
              yield* checkLockInTask(cur)
              // an injected failure is a guest that ignores the shutdown request
              const needMs = t.injectFailure ? Number.POSITIVE_INFINITY : t.env.state.durations.vzshutdown
              yield* taskSleep(t.env, Math.min(needMs, timeoutMs))
              if (needMs > timeoutMs && !forceStop) return yield* Effect.fail(taskFailure("container did not stop"))
              yield* Effect.sync(() => markStopped(cur))
            })
          )
      })
      return reply(upid)
    })
}

// ---------------------------------------------------------------------------------------------
// Destroy

const lvmLine = (state: SimState, volid: string, verb: "created" | "successfully removed"): string => {
  const st = state.storages.get(volid.slice(0, volid.indexOf(":")))
  return st?.type === "lvmthin" || st?.type === "lvm"
    ? `  Logical volume "${volumeName(volid)}" ${verb}.`
    : verb === "created"
      ? `Formatting '${volid}' raw`
      : `Removing image: 100% complete...done.`
}

/** Removes a guest's volumes; returns the log lines. */
export const destroyGuestVolumes = (state: SimState, g: GuestState, unreferenced: boolean): ReadonlyArray<string> => {
  const vols = new Set<string>(configVolumes(g.config))
  for (const s of g.snapshots) for (const v of configVolumes(s.config)) vols.add(v)
  if (unreferenced) {
    for (const v of state.volumes.values()) {
      if (v.vmid === g.vmid && (v.content === "rootdir" || v.content === "images")) vols.add(v.volid)
    }
  }
  const lines: Array<string> = []
  for (const v of [...vols].sort()) {
    if (state.volumes.delete(v)) lines.push(lvmLine(state, v, "successfully removed"))
  }
  return lines
}

export const removeGuest = (state: SimState, vmid: number): void => {
  state.guests.delete(vmid)
  // remove_vm_access: ACLs on the vmid go with the guest
  state.acl = state.acl.filter((e) => e.path !== `/vms/${vmid}`)
}

const destroy: RouteDef = {
  method: "DELETE",
  path: "/nodes/:node/lxc/:vmid",
  schema: schema(
    {
      force: optional({ type: "boolean" }),
      purge: optional({ type: "boolean" }),
      "destroy-unreferenced-disks": optional({ type: "boolean" })
    },
    { vmid: true }
  ),
  perm: vmPerm(["VM.Allocate"]),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const g = yield* requireGuest(ctx)
      const vmid = g.vmid
      if (g.config["protection"] === 1) return yield* Effect.fail(die500(`can't remove CT ${vmid} - protection mode enabled`))
      const lock = guestLock(g)
      if (lock !== undefined) return yield* Effect.fail(lockedError(lock))
      const force = pBool(ctx.params, "force")
      const runningText = `unable to destroy CT ${vmid} - container is running`
      if (g.status === "running" && !force) return yield* Effect.fail(die500(runningText))
      const unreferenced = ctx.params["destroy-unreferenced-disks"] === undefined || pBool(ctx.params, "destroy-unreferenced-disks")
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzdestroy",
        id: String(vmid),
        token: ctx.token,
        body: (t) =>
          taskFlock(
            t,
            vmid,
            Effect.gen(function*() {
              const cur = yield* reload(t, node.node, vmid)
              yield* checkLockInTask(cur)
              if (cur.status === "running") {
                if (!force) return yield* Effect.fail(taskFailure(runningText))
                yield* taskSleep(t.env, t.env.state.durations.vzstop)
                yield* Effect.sync(() => markStopped(cur))
              }
              yield* t.step(0.6)
              if (t.injectFailure) {
                const root = configVolumes(cur.config)[0] ?? `local-lvm:vm-${vmid}-disk-0`
                return yield* Effect.fail(
                  taskFailure(`lvremove 'pve/${volumeName(root)}' error:   Logical volume pve/${volumeName(root)} in use.`)
                )
              }
              const lines = yield* Effect.sync(() => {
                const out = destroyGuestVolumes(t.env.state, cur, unreferenced)
                removeGuest(t.env.state, vmid)
                return out
              })
              for (const line of lines) yield* t.log(line)
              yield* t.step(0.4)
            })
          )
      })
      return reply(upid)
    })
}

// ---------------------------------------------------------------------------------------------
// Resize

const resize: RouteDef = {
  method: "PUT",
  path: "/nodes/:node/lxc/:vmid/resize",
  schema: schema(
    {
      disk: {
        type: "string",
        enum: ["rootfs", ...Array.from({ length: 256 }, (_, i) => `mp${i}`)]
      },
      size: { type: "string", pattern: /\+?\d+(\.\d+)?[KMGT]?/ },
      digest: optional({ type: "string", maxLength: 40 })
    },
    { vmid: true }
  ),
  perm: vmPerm(["VM.Config.Disk"]),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const vmid = Number(ctx.params["vmid"])
      // the worker is forked while the config flock is held, so the task keeps it until it ends
      const release = yield* takeFlock(ctx.env, vmid, () => die500(flockTimeoutText(vmid)))
      const prepared = yield* prepareResize(ctx).pipe(Effect.tapError(() => release))
      const { g, disk, volid, oldSize, newSize } = prepared
      const running = g.status === "running"
      const upid = yield* startTask(ctx.env, {
        node,
        type: "resize",
        id: String(vmid),
        token: ctx.token,
        body: (t) =>
          Effect.gen(function*() {
            const lv = volumeName(volid)
            const st = t.env.state.storages.get(volid.slice(0, volid.indexOf(":")))
            const vg = st?.vgname ?? "pve"
            yield* t.step(0.5)
            if (t.injectFailure) {
              return yield* Effect.fail(taskFailure(`command '/sbin/lvextend -L${Math.floor(newSize / 1024)}k ${vg}/${lv}' failed: exit code 5`))
            }
            const gib = (n: number) => (n / 1024 ** 3).toFixed(2)
            const ext = (n: number) => Math.floor(n / (4 * 1024 ** 2))
            yield* t.log(`  Size of logical volume ${vg}/${lv} changed from ${gib(oldSize)} GiB (${ext(oldSize)} extents) to ${gib(newSize)} GiB (${ext(newSize)} extents).`)
            yield* t.log(`  Logical volume ${vg}/${lv} successfully resized.`)
            const blocks = Math.floor(newSize / 4096)
            if (running) {
              yield* t.log("resize2fs 1.47.2 (1-Jan-2025)")
              yield* t.log("Filesystem at /dev/loop0 is mounted on /tmp; on-line resizing required")
              yield* t.log("old_desc_blocks = 2, new_desc_blocks = 3")
              yield* t.log(`The filesystem on /dev/loop0 is now ${blocks} (4k) blocks long.`)
            } else {
              yield* t.log("e2fsck 1.47.2 (1-Jan-2025)")
              yield* t.log("Pass 1: Checking inodes, blocks, and sizes")
              yield* t.log("Pass 2: Checking directory structure")
              yield* t.log("Pass 3: Checking directory connectivity")
              yield* t.log("Pass 4: Checking reference counts")
              yield* t.log("Pass 5: Checking group summary information")
              yield* t.log(`/dev/${vg}/${lv}: 29843/1048576 files (0.3% non-contiguous), 512741/${Math.floor(oldSize / 4096)} blocks`)
              yield* t.log("resize2fs 1.47.2 (1-Jan-2025)")
              yield* t.log(`Resizing the filesystem on /dev/${vg}/${lv} to ${blocks} (4k) blocks.`)
              yield* t.log(`The filesystem on /dev/${vg}/${lv} is now ${blocks} (4k) blocks long.`)
            }
            yield* t.step(0.5)
            yield* Effect.sync(() => {
              const cur = t.env.state.guests.get(vmid)
              const vol = t.env.state.volumes.get(volid)
              if (vol !== undefined) vol.size = newSize
              if (cur === undefined) return
              const mp = parseMountPoint(disk, String(cur.config[disk] ?? ""))
              if (Either.isRight(mp) && mp.right.volume === volid) {
                cur.config = { ...cur.config, [disk]: printMountPoint({ ...mp.right.props, size: formatSize(newSize) }) }
              }
            })
          }).pipe(Effect.ensuring(release))
      }).pipe(Effect.tapError(() => release))
      return reply(upid)
    })
}

const prepareResize = (ctx: RequestCtx) =>
  Effect.gen(function*() {
    const g = yield* requireGuest(ctx)
    const lock = guestLock(g)
    if (lock !== undefined) return yield* Effect.fail(lockedError(lock))
    const digest = pStr(ctx.params, "digest")
    if (digest !== undefined && digest !== guestDigest(g)) {
      return yield* Effect.fail(die500("detected modified configuration - file changed by other user? Try again."))
    }
    const disk = String(ctx.params["disk"])
    const value = g.config[disk]
    if (value === undefined) return yield* Effect.fail(die500(`disk '${disk}' does not exist`))
    const mp = Either.getOrUndefined(parseMountPoint(disk, String(value)))
    if (mp === undefined || mp.type !== "volume" || mp.storage === undefined) {
      return yield* Effect.fail(die500(`can't resize mount point '${disk}' of type ${mp?.type ?? "unknown"}`))
    }
    yield* check(ctx, `/storage/${mp.storage}`, ["Datastore.AllocateSpace"])
    const vol = ctx.env.state.volumes.get(mp.volume)
    const oldSize = vol?.size ?? mp.size ?? 0
    const sizeText = String(ctx.params["size"])
    const grow = sizeText.startsWith("+")
    const amount = parseSize(grow ? sizeText.slice(1) : sizeText) ?? 0
    const newSize = grow ? oldSize + amount : amount
    if (newSize < oldSize) return yield* Effect.fail(die500("unable to shrink disk size"))
    if (newSize === oldSize) return yield* Effect.fail(die500("disk is already at specified size"))
    return { g, disk, volid: mp.volume, oldSize, newSize }
  })

export const guestRoutes: ReadonlyArray<RouteDef> = [configPut, start, stop, shutdown, destroy, resize]
export { lvmLine }
