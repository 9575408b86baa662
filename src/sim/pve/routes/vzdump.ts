/**
 * POST /nodes/{node}/vzdump: backs up local guests into a storage's `backup` content (a vzdump
 * archive on dir/nfs/cifs, a snapshot `ct/<vmid>/<time>` on PBS). Returns the plain string "OK"
 * when none of the guests lives on this node. One job per node at a time (the global lock); each
 * guest carries `lock: backup` while it is dumped; the archive snapshots the guest config so a
 * later restore recovers it (and, sim-only, the guest's service health).
 *
 * As PVE::VZDump: the storage is activated before the job starts (unreachable/unmounted: the
 * task fails with no guest touched); retention is the `prune-backups` parameter, else the
 * storage's, else keep-all; with `remove` (default 1) older archives are pruned by the full
 * keep-last/hourly/daily/weekly/monthly/yearly rule after a guest's archive is written, and with
 * remove=0 a count-based retention becomes a limit that fails the guest's backup once reached.
 * The archive takes space: a storage that runs full fails the write with the compressor's
 * ENOSPC text, and a target that goes away mid-write (USB pulled, server down) fails it with an
 * I/O error; either way the temporary `.dat` is removed and nothing is listed.
 */
import { clientKeyOf, cryptArgs, snapshotReadError } from "../pbsCrypt.js"
import { Effect, Either, Option } from "effect"
import { check, findGuest, hasPriv, pBool, pStr, type RequestCtx, requireNode, startTask, taskFailure, type TaskCtx, vzdumpLock } from "../env.js"
import { die500, paramError } from "../errors.js"
import { configFileText, type LxcConfig, parseMountPoint } from "../lxcconf.js"
import { fmtStorageId, fmtVmidList, type Params } from "../params.js"
import { ALL, optional, reply, type RouteDef, schema } from "../route.js"
import { innerOf } from "../guestModel.js"
import {
  backupVolid,
  type GuestState,
  logTimestamp,
  pbsTime,
  pbsVolid,
  type SimState,
  type StorageState,
  volumeName
} from "../state.js"
import {
  activationError,
  backupLimit,
  describeKeep,
  dumpDir,
  isKeepAll,
  markPrune,
  parsePruneBackups,
  type PruneKeep,
  storageAvail,
  storageLayer,
  volumeOnLayer
} from "../storage.js"

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
  "prune-backups": optional({ type: "string", format: (v) => Either.match(parsePruneBackups(v), { onLeft: (e) => e, onRight: () => undefined }) }),
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

/** What the job was asked for, resolved in the API handler (as API2/VZDump does before forking). */
interface JobPlan {
  readonly storage: string
  readonly params: Params
  /** Datastore.Allocate on the storage: no default cap on protected backups */
  readonly mayAllocate: boolean
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
      const plan: JobPlan = {
        storage,
        params: ctx.params,
        mayAllocate: hasPriv(ctx.env, ctx.token, `/storage/${storage}`, "Datastore.Allocate")
      }
      const upid = yield* startTask(ctx.env, {
        node,
        type: "vzdump",
        id: local.length === 1 ? String(local[0]) : "",
        token: ctx.token,
        body: (t) => dumpJob(t, node.node, local, plan),
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

const dumpJob = (t: TaskCtx, node: string, vmids: ReadonlyArray<number>, plan: JobPlan) =>
  Effect.gen(function*() {
    const state = t.env.state
    const storage = plan.storage
    // PVE::VZDump->new: the storage is activated and inspected before the job logs anything
    const st = state.storages.get(storage)
    if (st === undefined) return yield* Effect.fail(taskFailure(`could not activate storage '${storage}': storage '${storage}' does not exist`))
    const activation = activationError(st)
    if (activation !== undefined) return yield* Effect.fail(taskFailure(`could not activate storage '${storage}': ${activation}`))
    if (!st.content.includes("backup")) {
      // [sim] PVE prefixes this with "could not get storage information for '<id>': " (kept short: test/sim-pve.test.ts)
      return yield* Effect.fail(taskFailure(`can't use storage '${storage}' for backups - wrong content type`))
    }
    const given = pStr(plan.params, "prune-backups")
    const keep: PruneKeep = Either.getOrElse(parsePruneBackups(given ?? st["prune-backups"] ?? "keep-all=1"), (): PruneKeep => ({ "keep-all": true }))
    // "avoid triggering any remove code path if keep-all is set"
    const remove = (plan.params["remove"] === undefined || pBool(plan.params, "remove")) && !isKeepAll(keep)
    yield* t.log(`INFO: starting new backup job: ${commandLine(plan.params, node)}`)
    const lock = vzdumpLock(t.env, node)
    const job = Effect.gen(function*() {
      let failures = 0
      for (const vmid of vmids) {
        const ok = yield* dumpGuest(t, node, vmid, st, plan, keep, remove)
        if (!ok) failures++
      }
      if (failures > 0) {
        yield* t.log("INFO: Backup job finished with errors")
        return yield* Effect.fail(taskFailure("job errors"))
      }
      yield* t.log("INFO: Backup job finished successfully")
    })
    const ran = yield* lock.withPermitsIfAvailable(1)(job)
    if (Option.isNone(ran)) {
      yield* t.log("INFO: trying to get global lock - waiting...")
      yield* lock.withPermits(1)(Effect.zipRight(t.log("INFO: got global lock"), job))
    }
  })

/** Compressor: archive extension, size ratio of the tar stream [inf], and the pipeline's tail. */
const COMPRESSORS: Readonly<Record<string, { readonly ext: string | undefined; readonly ratio: number; readonly tool: string | undefined }>> = {
  "0": { ext: undefined, ratio: 1, tool: undefined },
  "1": { ext: "lzo", ratio: 0.55, tool: "lzop" },
  lzo: { ext: "lzo", ratio: 0.55, tool: "lzop" },
  gzip: { ext: "gz", ratio: 0.45, tool: "gzip" },
  zstd: { ext: "zst", ratio: 0.42, tool: "zstd '--threads=1'" }
}

/** Share of a volume's size the guest's files take (deterministic per guest). */
export const usedFraction = (vmid: number): number => 0.18 + ((vmid * 7919) % 97) / 1000

/** The volumes a CT backup includes (rootfs, and volume mount points with backup=1), with log lines. */
const backedUpVolumes = (conf: LxcConfig): { readonly bytes: number; readonly lines: ReadonlyArray<string> } => {
  let bytes = 0
  const lines: Array<string> = []
  for (const key of Object.keys(conf).filter((k) => k === "rootfs" || /^mp\d+$/.test(k)).sort((a, b) => (a === "rootfs" ? -1 : b === "rootfs" ? 1 : Number(a.slice(2)) - Number(b.slice(2))))) {
    const mp = Either.getOrUndefined(parseMountPoint(key, String(conf[key])))
    if (mp === undefined) continue
    const at = key === "rootfs" ? "/" : (mp.props["mp"] ?? "?")
    if (key !== "rootfs" && mp.type !== "volume") {
      lines.push(`INFO: excluding ${mp.type} mount point ${key} ('${at}') from backup (not a volume)`)
    } else if (key !== "rootfs" && mp.props["backup"] !== "1") {
      lines.push(`INFO: excluding volume mount point ${key} ('${at}') from backup (disabled)`)
    } else {
      lines.push(`INFO: including mount point ${key} ('${at}') in backup`)
      bytes += mp.size ?? 4 * 1024 ** 3
    }
  }
  return { bytes, lines }
}

const tarCommand = (sink: string) =>
  `set -o pipefail && lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 -- tar cpf - --totals --one-file-system -p --sparse --numeric-owner --acls --xattrs '--xattrs-include=user.*' '--xattrs-include=security.capability' '--warning=no-file-ignored' '--warning=no-xattr-write' --one-file-system '--warning=no-file-ignored' '--directory=/mnt/vzsnap0' ./etc/vzdump/pct.conf ./etc/vzdump/pct.fw '--directory=/mnt/vzsnap0' --no-anchored '--exclude=lost+found' --anchored '--exclude=./tmp/?*' '--exclude=./var/tmp/?*' '--exclude=./var/run/?*.pid' ./ ${sink}`

/** How writing the archive breaks: the tool's stderr line(s) and its exit code [inf: texts of zstd/gzip/lzop/tar]. */
const writeError = (tool: string | undefined, errno: "No space left on device" | "Input/output error") => {
  if (tool === undefined) return { lines: [`tar: -: Cannot write: ${errno}`, "tar: Error is not recoverable: exiting now"], code: 2 }
  if (tool.startsWith("zstd")) return { lines: [`zstd: error 70 : Write error : cannot write block : ${errno}`], code: 70 }
  if (tool === "gzip") return { lines: [`gzip: stdout: ${errno}`], code: 1 }
  return { lines: [`lzop: <stdout>: Write error : ${errno}`], code: 1 }
}

/** One guest; logs `ERROR: Backup of VM ... failed - ...` and returns false on failure. */
const dumpGuest = (t: TaskCtx, node: string, vmid: number, st: StorageState, plan: JobPlan, keep: PruneKeep, remove: boolean) =>
  Effect.gen(function*() {
    const state = t.env.state
    const params = plan.params
    const storage = st.storage
    const pbs = st.type === "pbs"
    const startMs = yield* t.now
    const startSec = Math.floor(startMs / 1000)
    const failed = (msg: string) =>
      Effect.zipRight(
        t.log(`ERROR: Backup of VM ${vmid} failed - ${msg}`),
        Effect.as(Effect.flatMap(t.now, (ms) => t.log(`INFO: Failed at ${logTimestamp(Math.floor(ms / 1000))}`)), false)
      )
    const g = findGuest(t.env, node, vmid)
    if (g === undefined) return yield* failed(`unable to find VM '${vmid}'`)
    // the limit checks run before the guest's backup starts (exec_backup_task)
    const wantProtected = pBool(params, "protected")
    const limit = backupLimit(keep)
    if ((limit > 0 && !remove) || wantProtected) {
      const mine = [...state.volumes.values()].filter((v) =>
        v.storage === storage && v.content === "backup" && v.vmid === vmid && volumeOnLayer(st, v)
      )
      const unprotected = mine.filter((v) => v.protected !== true).length
      if (wantProtected) {
        const max = st["max-protected-backups"] ?? (plan.mayAllocate ? -1 : 5)
        if (max > -1 && mine.length - unprotected >= max) {
          return yield* failed(`The number of protected backups per guest is limited to ${max} on storage '${storage}'`)
        }
      } else if (unprotected >= limit) {
        return yield* failed(
          `There is a max backup limit of ${limit} enforced by the target storage or the vzdump parameters. Either increase the limit or delete old backups.`
        )
      }
    }
    yield* t.log(`INFO: Starting Backup of VM ${vmid} (lxc)`)
    yield* t.log(`INFO: Backup started at ${logTimestamp(startSec)}`)
    const existingLock = g.config["lock"]
    if (typeof existingLock === "string") return yield* failed(`CT is locked (${existingLock})`)
    yield* Effect.sync(() => setLock(g, "backup"))
    const unlock = Effect.sync(() => setLock(g, undefined))
    const running = g.status === "running"
    const requestedMode = pStr(params, "mode") ?? "snapshot"
    const mode = running ? requestedMode : "stop"
    yield* t.log(`INFO: status = ${running ? "running" : "stopped"}`)
    yield* t.log(`INFO: CT Name: ${String(g.config["hostname"] ?? `CT${vmid}`)}`)
    const volumes = backedUpVolumes(g.config)
    for (const line of volumes.lines) yield* t.log(line)
    yield* t.log(`INFO: backup mode: ${mode}`)
    yield* t.log("INFO: ionice priority: 7")
    if (mode === "snapshot") yield* t.log("INFO: create storage snapshot 'vzdump'")

    const comp = pbs ? undefined : COMPRESSORS[pStr(params, "compress") ?? "0"] ?? COMPRESSORS["0"]!
    const written = Math.floor(volumes.bytes * usedFraction(vmid))
    const size = comp === undefined ? written : Math.floor(written * comp.ratio)
    const volid = pbs
      ? pbsVolid(storage, vmid, startSec)
      : backupVolid(storage, vmid, startSec, comp?.ext ?? "").replace(/\.$/, "")
    const dumpdir = dumpDir(st)
    const file = volumeName(volid).slice("backup/".length)
    // the archive is written as <name minus its last extension>.dat, renamed when complete
    const tmpfile = `${dumpdir}/${file.replace(/\.[^.]+$/, ".dat")}`
    const repository = `${st.username ?? "root@pam"}@${st.server ?? "localhost"}:${st.datastore ?? "store"}`
    const clientKey = clientKeyOf(st)
    const clientCmd = `/usr/bin/proxmox-backup-client backup ${cryptArgs(st, false)} pct.conf:/var/tmp/vzdumptmp${t.task.pid}_${vmid}/etc/vzdump/pct.conf root.pxar:/mnt/vzsnap0 --include-dev /mnt/vzsnap0/./ --skip-lost-and-found --exclude=/tmp/?* --exclude=/var/tmp/?* --exclude=/var/run/?*.pid --backup-type ct --backup-id ${vmid} --backup-time ${startSec} --entries-max 1048576 --repository ${repository}`
    if (pbs) {
      yield* t.log(`INFO: creating Proxmox Backup Server archive 'ct/${vmid}/${pbsTime(startSec)}'`)
      yield* t.log(`INFO: run: ${clientCmd}`)
      yield* t.log(`INFO: Starting backup: ct/${vmid}/${pbsTime(startSec)}`)
      yield* t.log(`INFO: Client name: ${node}`)
      if (clientKey._tag === "broken") {
        yield* unlock
        yield* t.log(`INFO: Error: ${clientKey.error}`)
        return yield* failed(`command '${clientCmd}' failed: exit code 255`)
      }
      if (clientKey._tag === "key") yield* t.log(`INFO: Encryption key fingerprint: ${clientKey.fingerprint}`)
    } else {
      yield* t.log(`INFO: creating vzdump archive '${dumpdir}/${file}'`)
    }
    // where the archive lands: the storage's own filesystem, or (dir, disk absent) the mount point directory
    const layerAtStart = storageLayer(st)
    const epochAtStart = st.epoch
    const roomAtStart = storageAvail(state, st)
    // PBS chunks are compressed and deduplicated: a group's later snapshots store only what changed [inf: 5%]
    const groupExists = pbs && [...state.volumes.values()].some((v) => v.storage === storage && v.vmid === vmid && v.content === "backup")
    const stored = pbs ? Math.floor(written * (groupExists ? 0.05 : 0.42)) : size
    yield* t.step(0.85)
    if (t.injectFailure) {
      yield* unlock
      return yield* failed(`command '${tarCommand(`| zstd '--threads=1' >${tmpfile}`)}' failed: exit code 2`)
    }
    const pulled = st.epoch !== epochAtStart || storageLayer(st) !== layerAtStart
    const full = roomAtStart < stored
    if (pulled || full) {
      yield* unlock
      const errno = pulled ? "Input/output error" as const : "No space left on device" as const
      if (pbs) {
        // [inf] proxmox-backup-client's texts for a lost connection / a full datastore
        yield* t.log(pulled
          ? "INFO: Error: error sending data: connection closed before message completed"
          : "INFO: Error: HTTP Error 400 Bad Request: inserting chunk failed: No space left on device (os error 28)")
        return yield* failed(`command '${clientCmd}' failed: exit code 255`)
      }
      const e = writeError(comp?.tool, errno)
      for (const line of e.lines) yield* t.log(`INFO: ${line}`)
      const sink = comp?.tool === undefined ? `>${tmpfile}` : `| ${comp.tool} >${tmpfile}`
      return yield* failed(`command '${tarCommand(sink)}' failed: exit code ${e.code}`)
    }
    if (pbs) {
      const gib = (n: number) => `${(n / 1024 ** 3).toFixed(3)} GiB`
      yield* t.log(`INFO: root.pxar: had to backup ${gib(written)} of ${gib(written)} (compressed ${gib(Math.floor(written * 0.42))}) in ${(state.durations.vzdump * 0.85 / 1000).toFixed(2)}s`)
    } else {
      yield* t.log(`INFO: Total bytes written: ${written} (${(written / 1024 ** 3).toFixed(1)}GiB, 187MiB/s)`)
      yield* t.log(`INFO: archive file size: ${(size / 1024 ** 2).toFixed(0)}MB`)
    }
    const notesTemplate = pStr(params, "notes-template")
    const notes = notesTemplate === undefined ? undefined : notesFrom(notesTemplate, g, node)
    if (notes !== undefined) yield* t.log("INFO: adding notes to backup")
    if (wantProtected) yield* t.log("INFO: marking backup as protected")
    yield* Effect.sync(() => {
      state.volumes.set(volid, {
        volid,
        storage,
        content: "backup",
        format: pbs ? "pbs-ct" : comp?.ext === undefined ? "tar" : `tar.${comp.ext}`,
        size,
        ctime: startSec,
        vmid,
        notes,
        protected: wantProtected,
        archiveConfig: archiveSnapshot(g.config),
        services: g.services ?? "healthy",
        inner: innerOf(g),
        ...(pbs ? { stored } : {}),
        ...(layerAtStart === "underlying" ? { underlying: true } : {}),
        // the manifest records the key the client really used
        ...(pbs && clientKey._tag === "key" ? { encrypted: clientKey.fingerprint } : {})
      })
    })
    if (remove) {
      yield* t.log(`INFO: prune older backups with retention: ${describeKeep(keep)}`)
      const pruned = yield* Effect.sync(() => prune(state, st, vmid, keep))
      for (const v of pruned) yield* t.log(`INFO: removing backup '${v}'`)
      yield* t.log(`INFO: pruned ${pruned.length} backup(s)${pruned.length > 0 ? " not covered by keep-retention policy" : ""}`)
    }
    if (mode === "snapshot") yield* t.log("INFO: cleanup temporary 'vzdump' snapshot")
    yield* t.step(0.15)
    yield* unlock
    const endSec = Math.floor((yield* t.now) / 1000)
    yield* t.log(`INFO: Finished Backup of VM ${vmid} (${hms(endSec - startSec)})`)
    yield* t.log(`INFO: Backup finished at ${logTimestamp(endSec)}`)
    return true
  })

/** PVE::Storage::prune_backups for one guest's group on the storage; returns the removed volids. */
const prune = (state: SimState, st: StorageState, vmid: number, keep: PruneKeep): ReadonlyArray<string> => {
  const group = [...state.volumes.values()].filter((v) =>
    v.storage === st.storage && v.content === "backup" && v.vmid === vmid && volumeOnLayer(st, v)
  )
  const marks = markPrune(group.map((v) => ({ id: v.volid, ctime: v.ctime, protected: v.protected === true })), keep)
  const removed = group.filter((v) => marks.get(v.volid) === "remove").map((v) => v.volid).sort()
  for (const id of removed) state.volumes.delete(id)
  return removed
}

// ---------------------------------------------------------------------------------------------
// GET /nodes/{node}/vzdump/extractconfig

/**
 * The backup's guest config as PVE prints it (pve-manager API2/VZDump.pm extractconfig over
 * pve-storage Storage.pm): check_volume_access with content type `backup` (Datastore.Allocate on
 * the storage, or Datastore.AllocateSpace there and VM.Backup on the owner), then VM.Backup on the
 * owner in any case; then the archive's pct.conf. vzdump writes it without lock, parent, pending
 * and snapshot sections (VZDump/LXC.pm assemble), so the text has no `[name]` section [src].
 */
const backupVolname = (volname: string): { readonly vtype: string; readonly owner: number | undefined } => {
  if (volname.startsWith("backup/")) {
    const m = /^backup\/(?:vzdump-(?:lxc|openvz|qemu)-(\d+)-|(?:ct|vm)\/(\d+)\/)/.exec(volname)
    const id = m?.[1] ?? m?.[2]
    return { vtype: "backup", owner: id === undefined ? undefined : Number(id) }
  }
  return { vtype: volname.startsWith("vztmpl/") ? "vztmpl" : volname.startsWith("iso/") ? "iso" : "images", owner: undefined }
}

const extractConfigAccess = (ctx: RequestCtx, volid: string) =>
  Effect.gen(function*() {
    const colon = volid.indexOf(":")
    const sid = colon > 0 ? volid.slice(0, colon) : undefined
    if (sid === undefined || !/^[a-z][a-z0-9\-_.]*$/i.test(sid)) return yield* Effect.fail(die500("Only root can pass arbitrary filesystem paths."))
    const st = ctx.env.state.storages.get(sid)
    if (st === undefined) return yield* Effect.fail(die500(`storage '${sid}' does not exist`))
    const { owner, vtype } = backupVolname(volid.slice(colon + 1))
    if (vtype !== "backup") return yield* Effect.fail(die500(`unable to use volume ${volid} - content type needs to be 'backup'`))
    if (!hasPriv(ctx.env, ctx.token, `/storage/${sid}`, "Datastore.Allocate")) {
      if (owner === undefined) return yield* Effect.fail(die500(`missing privileges to access ${volid}`))
      yield* check(ctx, `/storage/${sid}`, ["Datastore.AllocateSpace"])
      yield* check(ctx, `/vms/${owner}`, ["VM.Backup"])
    }
    if (owner !== undefined) yield* check(ctx, `/vms/${owner}`, ["VM.Backup"])
    return st
  })

const extractConfig: RouteDef = {
  method: "GET",
  path: "/nodes/:node/vzdump/extractconfig",
  schema: schema({ volume: { type: "string" } }),
  // user => 'all': the handler checks (check_volume_access, then VM.Backup on the owner)
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      yield* requireNode(ctx.env, String(ctx.params["node"]))
      const volid = String(ctx.params["volume"])
      const st = yield* extractConfigAccess(ctx, volid)
      const v = ctx.env.state.volumes.get(volid)
      if (st.type === "pbs") {
        const repository = `${st.username ?? "root@pam"}@${st.server ?? "localhost"}:${st.datastore ?? "store"}`
        if (st.disable) return yield* Effect.fail(die500(`storage '${st.storage}' is disabled`))
        // [inf] proxmox-backup-client's texts for an unreachable server, a missing snapshot, a missing key
        if (activationError(st) !== undefined) {
          return yield* Effect.fail(die500("proxmox-backup-client failed: Error: error trying to connect: tcp connect error: Connection refused (os error 111)"))
        }
        if (v === undefined || v.archiveConfig === undefined) {
          return yield* Effect.fail(die500(`proxmox-backup-client failed: Error: unable to open backup snapshot '${volumeName(volid).slice("backup/".length)}' in repository '${repository}' - not found`))
        }
        const unreadable = snapshotReadError(st, v.encrypted)
        if (unreadable !== undefined) return yield* Effect.fail(die500(`proxmox-backup-client failed: Error: ${unreadable}`))
        return reply(configFileText(v.archiveConfig, []))
      }
      // abs_filesystem_path: activate_volumes, then the file must exist
      const activation = activationError(st)
      if (activation !== undefined) return yield* Effect.fail(die500(activation))
      if (v === undefined || v.content !== "backup" || !volumeOnLayer(st, v)) return yield* Effect.fail(die500(`can't find file '${volid}'`))
      if (v.archiveConfig === undefined) return yield* Effect.fail(die500("ERROR: archive contains no configuration file"))
      return reply(configFileText(v.archiveConfig, []))
    })
}

export const vzdumpRoutes: ReadonlyArray<RouteDef> = [vzdump, extractConfig]
