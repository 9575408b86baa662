/**
 * CT snapshots: list (with the "current" pseudo-entry), create, rollback, delete, and the
 * per-snapshot config. The work happens in tasks that hold the `snapshot` / `rollback` /
 * `snapshot-delete` config lock while they run, as AbstractConfig does.
 */
import { Effect, Either } from "effect"
import {
  guestLock,
  pBool,
  pStr,
  requireGuest,
  requireNode,
  startTask,
  taskFailure,
  type TaskCtx,
  withFlock,
  flockTimeoutText,
  findGuest
} from "../env.js"
import { die500, noSuchGuest, type TaskFailure } from "../errors.js"
import { type LxcConfig, parseMountPoint } from "../lxcconf.js"
import { fmtConfigId } from "../params.js"
import { optional, reply, type RouteDef, schema, vmPerm } from "../route.js"
import { configVolumes, type GuestState, guestDigest, rootfsSize, type SimState, volumeName } from "../state.js"
import { markStopped, startBody } from "./guest.js"

const snapnameSpec = { type: "string", format: fmtConfigId, maxLength: 40 } as const

const SNAPSHOT_CAPABLE = new Set(["lvmthin", "zfspool", "btrfs", "rbd"])

/** Keys a snapshot copies from the current config (AbstractConfig::__snapshot_copy_config). */
const copyForSnapshot = (conf: LxcConfig): LxcConfig => {
  const out: LxcConfig = {}
  for (const [k, v] of Object.entries(conf)) {
    if (k === "lock" || k === "snapstate" || k === "snaptime" || k === "description") continue
    out[k] = v
  }
  return out
}

const snapVolumes = (state: SimState, g: GuestState): ReadonlyArray<{ readonly volid: string; readonly type: string | undefined }> =>
  configVolumes(g.config)
    .filter((v) => !/^unused/.test(v))
    .map((volid) => ({ volid, type: state.storages.get(volid.slice(0, volid.indexOf(":")))?.type }))

const reloadIn = (t: TaskCtx, node: string, vmid: number): Effect.Effect<GuestState, TaskFailure> => {
  const g = findGuest(t.env, node, vmid)
  return g === undefined ? Effect.fail(taskFailure(noSuchGuest(node, vmid).message)) : Effect.succeed(g)
}

const flockIn = <A>(t: TaskCtx, vmid: number, body: Effect.Effect<A, TaskFailure>) =>
  withFlock(t.env, vmid, () => taskFailure(flockTimeoutText(vmid)), body)

const setLock = (g: GuestState, lock: string | undefined): void => {
  const { lock: _old, ...rest } = g.config
  g.config = lock === undefined ? rest : { ...rest, lock }
}

const list: RouteDef = {
  method: "GET",
  path: "/nodes/:node/lxc/:vmid/snapshot",
  schema: schema({}, { vmid: true }),
  perm: vmPerm(["VM.Audit"]),
  handler: (ctx) =>
    Effect.map(requireGuest(ctx), (g) => {
      const entries: Array<Record<string, unknown>> = [...g.snapshots]
        .sort((a, b) => a.snaptime - b.snaptime)
        .map((s) => {
          const e: Record<string, unknown> = { name: s.name, description: s.description, snaptime: s.snaptime }
          if (typeof s.config["parent"] === "string") e["parent"] = s.config["parent"]
          if (s.snapstate !== undefined) e["snapstate"] = s.snapstate
          return e
        })
      const current: Record<string, unknown> = {
        name: "current",
        description: "You are here!",
        digest: guestDigest(g),
        running: g.status === "running" ? 1 : 0
      }
      if (typeof g.config["parent"] === "string") current["parent"] = g.config["parent"]
      entries.push(current)
      return reply(entries)
    })
}

const create: RouteDef = {
  method: "POST",
  path: "/nodes/:node/lxc/:vmid/snapshot",
  schema: schema({ snapname: snapnameSpec, description: optional({ type: "string" }) }, { vmid: true }),
  perm: vmPerm(["VM.Snapshot"]),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const vmid = Number(ctx.params["vmid"])
      const name = String(ctx.params["snapname"])
      if (name === "current" || name === "vzdump") {
        return yield* Effect.fail(die500(`unable to use snapshot name '${name}' (reserved name)`))
      }
      const description = pStr(ctx.params, "description") ?? ""
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzsnapshot",
        id: String(vmid),
        token: ctx.token,
        body: (t) =>
          Effect.gen(function*() {
            const g = yield* flockIn(
              t,
              vmid,
              Effect.gen(function*() {
                const g = yield* reloadIn(t, node.node, vmid)
                const lock = guestLock(g)
                if (lock !== undefined) return yield* Effect.fail(taskFailure(`CT is locked (${lock})`))
                if (g.snapshots.some((s) => s.name === name)) {
                  return yield* Effect.fail(taskFailure(`snapshot name '${name}' already used`))
                }
                if (snapVolumes(t.env.state, g).some((v) => v.type === undefined || !SNAPSHOT_CAPABLE.has(v.type))) {
                  return yield* Effect.fail(taskFailure("snapshot feature is not available"))
                }
                const now = yield* t.now
                yield* Effect.sync(() => {
                  setLock(g, "snapshot")
                  g.snapshots.push({
                    name,
                    description,
                    snaptime: Math.floor(now / 1000),
                    config: copyForSnapshot(g.config),
                    snapstate: "prepare"
                  })
                })
                return g
              })
            )
            yield* t.step(1)
            const vols = snapVolumes(t.env.state, g)
            if (t.injectFailure) {
              yield* Effect.sync(() => {
                g.snapshots = g.snapshots.filter((s) => s.name !== name)
                setLock(g, undefined)
              })
              const lv = volumeName(vols[0]?.volid ?? `local-lvm:vm-${vmid}-disk-0`)
              return yield* Effect.fail(
                taskFailure(
                  `lvcreate snapshot 'pve/snap_${lv}_${name}' error:   Cannot create new thin volume, free space in thin pool pve/data reached threshold.`
                )
              )
            }
            for (const v of vols) {
              if (v.type === "lvmthin") yield* t.log(`  Logical volume "snap_${volumeName(v.volid)}_${name}" created.`)
            }
            yield* flockIn(
              t,
              vmid,
              Effect.sync(() => {
                const snap = g.snapshots.find((s) => s.name === name)
                if (snap !== undefined) snap.snapstate = undefined
                g.config = { ...g.config, parent: name }
                setLock(g, undefined)
              })
            )
          })
      })
      return reply(upid)
    })
}

const rollback: RouteDef = {
  method: "POST",
  path: "/nodes/:node/lxc/:vmid/snapshot/:snapname/rollback",
  schema: schema({ snapname: snapnameSpec, start: optional({ type: "boolean" }) }, { vmid: true }),
  perm: vmPerm(["VM.Snapshot", "VM.Snapshot.Rollback"], true),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const vmid = Number(ctx.params["vmid"])
      const name = String(ctx.params["snapname"])
      const startAfter = pBool(ctx.params, "start")
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzrollback",
        id: String(vmid),
        token: ctx.token,
        body: (t) =>
          Effect.gen(function*() {
            const g = yield* flockIn(
              t,
              vmid,
              Effect.gen(function*() {
                const g = yield* reloadIn(t, node.node, vmid)
                const snap = g.snapshots.find((s) => s.name === name)
                if (snap === undefined) return yield* Effect.fail(taskFailure(`snapshot '${name}' does not exist`))
                const lock = guestLock(g)
                if (lock !== undefined) return yield* Effect.fail(taskFailure(`CT is locked (${lock})`))
                if (snap.snapstate !== undefined) {
                  return yield* Effect.fail(taskFailure(`unable to rollback to incomplete snapshot (snapstate = ${snap.snapstate})`))
                }
                yield* Effect.sync(() => setLock(g, "rollback"))
                return g
              })
            )
            if (g.status === "running") {
              yield* t.step(0.3)
              yield* Effect.sync(() => markStopped(g))
            }
            yield* t.step(0.7)
            const vols = snapVolumes(t.env.state, g)
            const first = volumeName(vols[0]?.volid ?? `local-lvm:vm-${vmid}-disk-0`)
            if (t.injectFailure) {
              // PVE leaves the `rollback` lock behind after a failed rollback (pct unlock needed)
              return yield* Effect.fail(taskFailure(`lvremove 'pve/${first}' error:   Logical volume pve/${first} is used by another device.`))
            }
            for (const v of vols) {
              if (v.type === "lvmthin") {
                yield* t.log(`  Logical volume "${volumeName(v.volid)}" successfully removed.`)
                yield* t.log(`  Logical volume "${volumeName(v.volid)}" created.`)
              }
            }
            yield* flockIn(
              t,
              vmid,
              Effect.sync(() => {
                const snap = g.snapshots.find((s) => s.name === name)
                if (snap === undefined) return
                g.config = { ...snap.config, parent: name }
                const size = rootfsSize(snap.config)
                const rootVol = Either.getOrUndefined(parseMountPoint("rootfs", String(snap.config["rootfs"] ?? "")))
                if (size !== undefined && rootVol !== undefined) {
                  const vol = t.env.state.volumes.get(rootVol.volume)
                  if (vol !== undefined) vol.size = size
                }
              })
            )
            if (startAfter) {
              yield* startBody(t, node.node, vmid)
            }
          })
      })
      return reply(upid)
    })
}

const remove: RouteDef = {
  method: "DELETE",
  path: "/nodes/:node/lxc/:vmid/snapshot/:snapname",
  schema: schema({ snapname: snapnameSpec, force: optional({ type: "boolean" }) }, { vmid: true }),
  perm: vmPerm(["VM.Snapshot"]),
  guestWrite: true,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const vmid = Number(ctx.params["vmid"])
      const name = String(ctx.params["snapname"])
      const force = pBool(ctx.params, "force")
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzdelsnapshot",
        id: String(vmid),
        token: ctx.token,
        body: (t) =>
          Effect.gen(function*() {
            const g = yield* flockIn(
              t,
              vmid,
              Effect.gen(function*() {
                const g = yield* reloadIn(t, node.node, vmid)
                const snap = g.snapshots.find((s) => s.name === name)
                if (snap === undefined) return yield* Effect.fail(taskFailure(`snapshot '${name}' does not exist`))
                const lock = guestLock(g)
                if (lock !== undefined && !(force && lock === "snapshot-delete")) {
                  return yield* Effect.fail(taskFailure(`CT is locked (${lock})`))
                }
                yield* Effect.sync(() => {
                  setLock(g, "snapshot-delete")
                  snap.snapstate = "delete"
                })
                return g
              })
            )
            yield* t.step(1)
            const vols = snapVolumes(t.env.state, g)
            if (t.injectFailure && !force) {
              const lv = volumeName(vols[0]?.volid ?? `local-lvm:vm-${vmid}-disk-0`)
              // the snapshot keeps snapstate=delete and the CT stays locked, as on a real host
              return yield* Effect.fail(taskFailure(`lvremove 'pve/snap_${lv}_${name}' error:   Logical volume pve/snap_${lv}_${name} in use.`))
            }
            for (const v of vols) {
              if (v.type === "lvmthin") yield* t.log(`  Logical volume "snap_${volumeName(v.volid)}_${name}" successfully removed.`)
            }
            yield* flockIn(
              t,
              vmid,
              Effect.sync(() => {
                const snap = g.snapshots.find((s) => s.name === name)
                const parent = snap?.config["parent"]
                g.snapshots = g.snapshots.filter((s) => s.name !== name)
                for (const s of g.snapshots) {
                  if (s.config["parent"] === name) {
                    const { parent: _p, ...rest } = s.config
                    s.config = parent === undefined ? rest : { ...rest, parent }
                  }
                }
                if (g.config["parent"] === name) {
                  const { parent: _p, ...rest } = g.config
                  g.config = parent === undefined ? rest : { ...rest, parent }
                }
                setLock(g, undefined)
              })
            )
          })
      })
      return reply(upid)
    })
}

const snapConfigGet: RouteDef = {
  method: "GET",
  path: "/nodes/:node/lxc/:vmid/snapshot/:snapname/config",
  schema: schema({ snapname: snapnameSpec }, { vmid: true }),
  perm: vmPerm(["VM.Snapshot"]),
  handler: (ctx) =>
    Effect.flatMap(requireGuest(ctx), (g) => {
      const name = String(ctx.params["snapname"])
      const snap = g.snapshots.find((s) => s.name === name)
      if (snap === undefined) return Effect.fail(die500(`snapshot '${name}' does not exist`))
      return Effect.succeed(
        reply({
          ...snap.config,
          ...(snap.description.length > 0 ? { description: snap.description } : {}),
          snaptime: snap.snaptime,
          ...(snap.snapstate !== undefined ? { snapstate: snap.snapstate } : {})
        })
      )
    })
}

const snapConfigPut: RouteDef = {
  method: "PUT",
  path: "/nodes/:node/lxc/:vmid/snapshot/:snapname/config",
  schema: schema({ snapname: snapnameSpec, description: optional({ type: "string" }) }, { vmid: true }),
  perm: vmPerm(["VM.Snapshot"]),
  handler: (ctx) =>
    Effect.flatMap(requireGuest(ctx), (g) => {
      const name = String(ctx.params["snapname"])
      const snap = g.snapshots.find((s) => s.name === name)
      if (snap === undefined) return Effect.fail(die500(`snapshot '${name}' does not exist`))
      return Effect.sync(() => {
        const d = pStr(ctx.params, "description")
        if (d !== undefined) snap.description = d
        return reply(null)
      })
    })
}

export const snapshotRoutes: ReadonlyArray<RouteDef> = [list, create, rollback, remove, snapConfigGet, snapConfigPut]
