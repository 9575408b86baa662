/**
 * POST /nodes/{node}/vzdump: backs up local guests into a storage's `backup` content. Returns
 * the plain string "OK" when none of the guests lives on this node. One job per node at a time
 * (the global lock); each guest carries `lock: backup` while it is dumped; the archive snapshots
 * the guest config so a later restore recovers it; keep-last retention prunes when `remove`.
 */
import { Effect, Option } from "effect"
import { check, findGuest, pBool, pStr, requireNode, startTask, taskFailure, type TaskCtx, vzdumpLock } from "../env.js"
import { paramError } from "../errors.js"
import { type LxcConfig } from "../lxcconf.js"
import { fmtStorageId, fmtVmidList, type Params } from "../params.js"
import { ALL, optional, reply, type RouteDef, schema } from "../route.js"
import { backupVolid, type GuestState, logTimestamp, rootfsSize, type SimState, volumeName } from "../state.js"

const COMPRESS_EXT: Readonly<Record<string, string | undefined>> = {
  "0": undefined,
  "1": "lzo",
  gzip: "gz",
  lzo: "lzo",
  zstd: "zst"
}

const ROOT_ONLY = ["tmpdir", "dumpdir", "script", "job-id"] as const

const vzdumpSchema = schema({
  vmid: optional({ type: "string", format: fmtVmidList }),
  all: optional({ type: "boolean" }),
  exclude: optional({ type: "string", format: fmtVmidList }),
  storage: optional({ type: "string", format: fmtStorageId }),
  mode: optional({ type: "string", enum: ["snapshot", "suspend", "stop"] }),
  compress: optional({ type: "string", enum: ["0", "1", "gzip", "lzo", "zstd"] }),
  "notes-template": optional({ type: "string", maxLength: 1024 }),
  protected: optional({ type: "boolean" }),
  remove: optional({ type: "boolean" }),
  "prune-backups": optional({ type: "string" }),
  bwlimit: optional({ type: "integer", minimum: 0 }),
  ionice: optional({ type: "integer", minimum: 0, maximum: 8 }),
  performance: optional({ type: "string" }),
  zstd: optional({ type: "integer" }),
  pigz: optional({ type: "integer" }),
  lockwait: optional({ type: "integer", minimum: 0 }),
  stopwait: optional({ type: "integer", minimum: 0 }),
  "exclude-path": optional({ type: "string" }),
  "pbs-change-detection-mode": optional({ type: "string", enum: ["legacy", "data", "metadata"] }),
  "notification-mode": optional({ type: "string", enum: ["auto", "legacy-sendmail", "notification-system"] }),
  mailto: optional({ type: "string" }),
  mailnotification: optional({ type: "string", enum: ["always", "failure"] }),
  quiet: optional({ type: "boolean" }),
  stdexcludes: optional({ type: "boolean" }),
  tmpdir: optional({ type: "string" }),
  dumpdir: optional({ type: "string" }),
  script: optional({ type: "string" }),
  "job-id": optional({ type: "string" }),
  fleecing: optional({ type: "string" }),
  pool: optional({ type: "string" })
})

const splitIds = (s: string | undefined): ReadonlyArray<number> =>
  s === undefined ? [] : s.split(/[,;\s]+/).filter((x) => x.length > 0).map(Number)

const keepLast = (retention: string | undefined): number | undefined => {
  if (retention === undefined) return undefined
  const m = /(?:^|,)keep-last=(\d+)/.exec(retention)
  return m === null ? undefined : Number(m[1])
}

const commandLine = (params: Params, node: string): string => {
  const parts = ["vzdump"]
  const vmid = params["vmid"]
  if (vmid !== undefined) parts.push(...String(vmid).split(/[,;\s]+/))
  for (const key of Object.keys(params).sort()) {
    if (key === "vmid" || key === "node") continue
    parts.push(`--${key}`, String(params[key]))
  }
  parts.push("--node", node)
  return parts.join(" ")
}

const notesFrom = (template: string, g: GuestState, node: string): string =>
  template
    .replace(/\{\{guestname\}\}/g, String(g.config["hostname"] ?? `CT${g.vmid}`))
    .replace(/\{\{vmid\}\}/g, String(g.vmid))
    .replace(/\{\{node\}\}/g, node)
    .replace(/\{\{cluster\}\}/g, "")

/** What the archive stores: the config without runtime-only keys. */
const archiveSnapshot = (conf: LxcConfig): LxcConfig => {
  const out: LxcConfig = {}
  for (const [k, v] of Object.entries(conf)) if (k !== "lock" && k !== "parent") out[k] = v
  return out
}

const hms = (seconds: number): string => {
  const p = (n: number) => String(n).padStart(2, "0")
  return `${p(Math.floor(seconds / 3600))}:${p(Math.floor(seconds / 60) % 60)}:${p(seconds % 60)}`
}

const setLock = (g: GuestState, lock: string | undefined): void => {
  const { lock: _l, ...rest } = g.config
  g.config = lock === undefined ? rest : { ...rest, lock }
}

const vzdump: RouteDef = {
  method: "POST",
  path: "/nodes/:node/vzdump",
  schema: vzdumpSchema,
  // per-guest VM.Backup and the storage's AllocateSpace are checked in the handler
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const state = ctx.env.state
      for (const key of ROOT_ONLY) {
        if (ctx.params[key] !== undefined) return yield* Effect.fail(paramError({ [key]: "Only root may set this option." }))
      }
      const all = pBool(ctx.params, "all")
      const requested = splitIds(pStr(ctx.params, "vmid"))
      if (all && requested.length > 0) return yield* Effect.fail(paramError({ all: "option conflicts with option 'vmid'" }))
      if (!all && requested.length === 0) {
        return yield* Effect.fail(paramError({ vmid: "property is missing and it is not optional" }))
      }
      if (pStr(ctx.params, "storage") === undefined) {
        for (const key of ["notes-template", "protected"]) {
          if (ctx.params[key] !== undefined) return yield* Effect.fail(paramError({ [key]: "requires option 'storage'" }))
        }
      }
      for (const key of ["bwlimit", "ionice", "performance"]) {
        if (ctx.params[key] !== undefined) yield* check(ctx, "/", ["Sys.Modify"])
      }
      const excluded = new Set(splitIds(pStr(ctx.params, "exclude")))
      const ids = all
        ? [...state.guests.values()].filter((g) => g.node === node.node && !excluded.has(g.vmid)).map((g) => g.vmid)
        : requested
      for (const id of ids) yield* check(ctx, `/vms/${id}`, ["VM.Backup"])
      const storage = pStr(ctx.params, "storage") ?? "local"
      yield* check(ctx, `/storage/${storage}`, ["Datastore.AllocateSpace"])
      const retention = pStr(ctx.params, "prune-backups")
      if (retention !== undefined) yield* check(ctx, `/storage/${storage}`, ["Datastore.Allocate"])
      const local = ids.filter((id) => findGuest(ctx.env, node.node, id) !== undefined)
      if (local.length === 0) return reply("OK")
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzdump",
        id: local.length === 1 ? String(local[0]) : "",
        token: ctx.token,
        body: (t) => dumpJob(t, node.node, local, storage, ctx.params),
        onKill: Effect.sync(() => {
          for (const id of local) {
            const g = state.guests.get(id)
            if (g !== undefined && g.config["lock"] === "backup") setLock(g, undefined)
          }
        })
      })
      return reply(upid)
    })
}

const dumpJob = (t: TaskCtx, node: string, vmids: ReadonlyArray<number>, storage: string, params: Params) =>
  Effect.gen(function*() {
    const state = t.env.state
    yield* t.log(`INFO: starting new backup job: ${commandLine(params, node)}`)
    const lock = vzdumpLock(t.env, node)
    const job = Effect.gen(function*() {
      const st = state.storages.get(storage)
      if (st === undefined) return yield* Effect.fail(taskFailure(`storage '${storage}' does not exist`))
      if (!st.content.includes("backup")) {
        return yield* Effect.fail(taskFailure(`can't use storage '${storage}' for backups - wrong content type`))
      }
      let failures = 0
      for (const vmid of vmids) {
        const ok = yield* dumpGuest(t, node, vmid, storage, params)
        if (!ok) failures++
      }
      if (failures > 0) return yield* Effect.fail(taskFailure("job errors"))
      yield* t.log("INFO: Backup job finished successfully")
    })
    const ran = yield* lock.withPermitsIfAvailable(1)(job)
    if (Option.isNone(ran)) {
      yield* t.log("INFO: trying to get global lock - waiting...")
      yield* lock.withPermits(1)(Effect.zipRight(t.log("INFO: got global lock"), job))
    }
  })

/** One guest; logs `ERROR: Backup of VM ... failed - ...` and returns false on failure. */
const dumpGuest = (t: TaskCtx, node: string, vmid: number, storage: string, params: Params) =>
  Effect.gen(function*() {
    const state = t.env.state
    const startMs = yield* t.now
    const startSec = Math.floor(startMs / 1000)
    const failed = (msg: string) =>
      Effect.as(t.log(`ERROR: Backup of VM ${vmid} failed - ${msg}`), false)
    yield* t.log(`INFO: Starting Backup of VM ${vmid} (lxc)`)
    yield* t.log(`INFO: Backup started at ${logTimestamp(startSec)}`)
    const g = findGuest(t.env, node, vmid)
    if (g === undefined) return yield* failed(`Configuration file 'nodes/${node}/lxc/${vmid}.conf' does not exist`)
    const existingLock = g.config["lock"]
    if (typeof existingLock === "string") return yield* failed(`CT is locked (${existingLock})`)
    yield* Effect.sync(() => setLock(g, "backup"))
    const running = g.status === "running"
    const requestedMode = pStr(params, "mode") ?? "snapshot"
    const mode = running ? requestedMode : "stop"
    yield* t.log(`INFO: status = ${running ? "running" : "stopped"}`)
    yield* t.log(`INFO: CT Name: ${String(g.config["hostname"] ?? `CT${vmid}`)}`)
    yield* t.log("INFO: including mount point rootfs ('/') in backup")
    yield* t.log(`INFO: backup mode: ${mode}`)
    yield* t.log("INFO: ionice priority: 7")
    if (mode === "snapshot") yield* t.log("INFO: create storage snapshot 'vzdump'")
    const ext = COMPRESS_EXT[pStr(params, "compress") ?? "0"]
    const volid = backupVolid(storage, vmid, startSec, ext === undefined ? "" : ext).replace(/\.$/, "")
    const dumpdir = `${state.storages.get(storage)?.path ?? `/mnt/pve/${storage}`}/dump`
    const file = volumeName(volid).slice("backup/".length)
    yield* t.log(`INFO: creating vzdump archive '${dumpdir}/${file}'`)
    yield* t.step(0.85)
    if (t.injectFailure) {
      yield* Effect.sync(() => setLock(g, undefined))
      return yield* failed(
        `command 'set -o pipefail && lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 -- tar cpf - --totals --one-file-system -p --sparse --numeric-owner --acls --xattrs '--xattrs-include=user.*' '--xattrs-include=security.capability' '--warning=no-file-ignored' '--warning=no-xattr-write' --one-file-system '--warning=no-file-ignored' '--directory=/mnt/vzsnap0' ./etc/vzdump/pct.conf ./etc/vzdump/pct.fw '--directory=/mnt/vzsnap0' --no-anchored '--exclude=lost+found' --anchored '--exclude=./tmp/?*' '--exclude=./var/tmp/?*' '--exclude=./var/run/?*.pid' ./ | zstd '--threads=1' >${dumpdir}/${file}.dat' failed: exit code 2`
      )
    }
    const rootSize = rootfsSize(g.config) ?? 4 * 1024 ** 3
    const written = Math.floor(rootSize * (0.18 + ((vmid * 7919) % 97) / 1000))
    const size = ext === undefined ? written : Math.floor(written * 0.42)
    yield* t.log(`INFO: Total bytes written: ${written} (${(written / 1024 ** 3).toFixed(1)}GiB, 187MiB/s)`)
    yield* t.log(`INFO: archive file size: ${(size / 1024 ** 2).toFixed(0)}MB`)
    const notesTemplate = pStr(params, "notes-template")
    const notes = notesTemplate === undefined ? undefined : notesFrom(notesTemplate, g, node)
    if (notes !== undefined) yield* t.log("INFO: adding notes to backup")
    if (pBool(params, "protected")) yield* t.log("INFO: marking backup as protected")
    yield* Effect.sync(() => {
      state.volumes.set(volid, {
        volid,
        storage,
        content: "backup",
        format: ext === undefined ? "tar" : `tar.${ext}`,
        size,
        ctime: startSec,
        vmid,
        notes,
        protected: pBool(params, "protected"),
        archiveConfig: archiveSnapshot(g.config)
      })
    })
    const remove = params["remove"] === undefined || pBool(params, "remove")
    const retention = pStr(params, "prune-backups") ?? state.storages.get(storage)?.["prune-backups"]
    const keep = keepLast(retention)
    if (remove && keep !== undefined) {
      yield* t.log(`INFO: prune older backups with retention: ${retention}`)
      const pruned = yield* Effect.sync(() => prune(state, storage, vmid, keep))
      for (const v of pruned) yield* t.log(`INFO: removing backup '${v}'`)
      yield* t.log(`INFO: pruned ${pruned.length} backup(s) not covered by keep-retention policy`)
    }
    if (mode === "snapshot") yield* t.log("INFO: cleanup temporary 'vzdump' snapshot")
    yield* t.step(0.15)
    yield* Effect.sync(() => setLock(g, undefined))
    const endSec = Math.floor((yield* t.now) / 1000)
    yield* t.log(`INFO: Finished Backup of VM ${vmid} (${hms(endSec - startSec)})`)
    yield* t.log(`INFO: Backup finished at ${logTimestamp(endSec)}`)
    return true
  })

const prune = (state: SimState, storage: string, vmid: number, keep: number): ReadonlyArray<string> => {
  const backups = [...state.volumes.values()]
    .filter((v) => v.storage === storage && v.content === "backup" && v.vmid === vmid)
    .sort((a, b) => b.ctime - a.ctime)
  const removed: Array<string> = []
  let kept = 0
  for (const v of backups) {
    if (v.protected === true) continue
    if (kept < keep) {
      kept++
      continue
    }
    state.volumes.delete(v.volid)
    removed.push(v.volid)
  }
  return removed
}

export const vzdumpRoutes: ReadonlyArray<RouteDef> = [vzdump]
