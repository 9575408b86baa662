/**
 * POST /nodes/{node}/lxc: restore from a backup archive (the agent's provisioning path) or a
 * plain create from a vztmpl. Mirrors pve-container's create_vm: pre-task existence, permission
 * and volume-access checks; a `create` lock while the task runs; the archive's stored config
 * merged under the given keys (so `features` such as keyctl survive a token-driven restore);
 * and its failure semantics (a failed task removes the guest, with force the old one is gone).
 */
import { cryptArgs, snapshotReadError } from "../pbsCrypt.js"
import { Effect, Either } from "effect"
import {
  check,
  checkAny,
  guestLock,
  hasPriv,
  pBool,
  pStr,
  randomMac,
  type RequestCtx,
  requireNode,
  startTask,
  taskFailure,
  type TaskCtx
} from "../env.js"
import { die500, paramError, permDeniedText, type TaskFailure } from "../errors.js"
import {
  CONFIG_PATTERN_PROPERTIES,
  CONFIG_PROPERTIES,
  configKeySpec,
  formatSize,
  GiB_BYTES,
  type LxcConfig,
  parseMountPoint,
  parseNet,
  printMountPoint,
  printNet,
  withCreateDefaults
} from "../lxcconf.js"
import { checkProp, type ParamValue, storageSpec, vmidSpec } from "../params.js"
import { ALL, optional, reply, type RouteDef, schema } from "../route.js"
import { allocateVolumeName, type GuestState, type SimState, type StorageState, volumeName } from "../state.js"
import { activationError, storageAvail, storageLayer, volumeOnLayer } from "../storage.js"
import { ALLOC_RE, checkConfigPerms, normalizeFeatures, normalizeNet } from "./configOps.js"
import { destroyGuestVolumes, lvmLine, removeGuest, startBody } from "./guest.js"

const CREATE_ONLY = new Set([
  "node",
  "vmid",
  "ostemplate",
  "restore",
  "force",
  "unique",
  "storage",
  "start",
  "pool",
  "password",
  "ssh-public-keys",
  "ignore-unpack-errors",
  "bwlimit",
  "ha-managed"
])

const volumeType = (volname: string): "backup" | "vztmpl" | "iso" | "images" =>
  volname.startsWith("backup/") ? "backup" : volname.startsWith("vztmpl/") ? "vztmpl" : volname.startsWith("iso/") ? "iso" : "images"

const backupOwner = (volname: string): number | undefined => {
  const m = /vzdump-(?:lxc|openvz|qemu)-(\d+)-/.exec(volname)
  return m === null ? undefined : Number(m[1])
}

/** The path PVE would extract from (only used in log lines and errors). */
const volumePath = (state: SimState, volid: string): string => {
  const sid = volid.slice(0, volid.indexOf(":"))
  const volname = volumeName(volid)
  const base = state.storages.get(sid)?.path ?? `/mnt/pve/${sid}`
  if (volname.startsWith("backup/")) return `${base}/dump/${volname.slice(7)}`
  if (volname.startsWith("vztmpl/")) return `${base}/template/cache/${volname.slice(7)}`
  return `${base}/${volname}`
}

const fsUuid = (vmid: number, n: number): string => {
  const h = ((vmid * 2654435761 + n * 40503) >>> 0).toString(16).padStart(8, "0")
  return `${h}-${h.slice(0, 4)}-4${h.slice(1, 4)}-a${h.slice(4, 7)}-${h}${h.slice(0, 4)}`
}

interface Plan {
  readonly vmid: number
  readonly restore: boolean
  readonly ostemplate: string
  readonly storage: string
  readonly unique: boolean
  readonly startAfter: boolean
  readonly sets: Readonly<Record<string, ParamValue>>
  readonly unprivileged: boolean | undefined
  readonly overwrite: boolean
}

const create: RouteDef = {
  method: "POST",
  path: "/nodes/:node/lxc",
  schema: schema(
    {
      ...CONFIG_PROPERTIES,
      vmid: vmidSpec,
      ostemplate: { type: "string", maxLength: 255 },
      restore: optional({ type: "boolean" }),
      force: optional({ type: "boolean" }),
      unique: optional({ type: "boolean" }),
      storage: optional(storageSpec),
      start: optional({ type: "boolean" }),
      pool: optional({ type: "string" }),
      password: optional({ type: "string" }),
      "ssh-public-keys": optional({ type: "string" }),
      "ignore-unpack-errors": optional({ type: "boolean" }),
      bwlimit: optional({ type: "number", minimum: 0 }),
      "ha-managed": optional({ type: "boolean" })
    },
    { patternProperties: CONFIG_PATTERN_PROPERTIES }
  ),
  // the schema-level check is an 'or' over /vms and /pool: done in the handler (bare 403)
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const state = ctx.env.state
      const vmid = Number(ctx.params["vmid"])
      const restore = pBool(ctx.params, "restore")
      const force = pBool(ctx.params, "force")
      const sets: Record<string, ParamValue> = {}
      for (const [k, v] of Object.entries(ctx.params)) if (!CREATE_ONLY.has(k)) sets[k] = v
      const formatErrors: Record<string, string> = {}
      for (const [k, v] of Object.entries(sets)) {
        const spec = configKeySpec(k)
        if (spec !== undefined) Either.match(checkProp(spec, v), { onLeft: (e) => (formatErrors[k] = e), onRight: () => undefined })
      }
      if (Object.keys(formatErrors).length > 0) return yield* Effect.fail(paramError(formatErrors))

      const existing = state.guests.get(vmid)
      const overwrite = existing !== undefined && restore && force
      if (existing !== undefined && !overwrite) {
        return yield* Effect.fail(die500(`CT ${vmid} already exists on node '${existing.node}'`))
      }
      if (existing !== undefined) {
        if (existing.status === "running") return yield* Effect.fail(die500("can't overwrite running container"))
        if (existing.config["protection"] === 1) {
          return yield* Effect.fail(die500(`unable to restore CT ${vmid} - protection mode enabled`))
        }
      }
      const pool = pStr(ctx.params, "pool")
      const allowed = hasPriv(ctx.env, ctx.token, `/vms/${vmid}`, "VM.Allocate") ||
        (pool !== undefined && hasPriv(ctx.env, ctx.token, `/pool/${pool}`, "VM.Allocate")) ||
        (overwrite && hasPriv(ctx.env, ctx.token, `/vms/${vmid}`, "VM.Backup"))
      if (!allowed) return yield* Effect.fail(permDeniedText())

      const storage = pStr(ctx.params, "storage") ?? "local"
      const ostemplate = String(ctx.params["ostemplate"])
      yield* checkVolumeAccess(ctx, vmid, ostemplate)
      const archive = state.volumes.get(ostemplate)
      const paramUnpriv = sets["unprivileged"]
      const unprivileged = paramUnpriv !== undefined
        ? paramUnpriv === 1
        : restore
        ? archive?.archiveConfig?.["unprivileged"] === 1
        : false
      yield* checkConfigPerms(ctx, vmid, undefined, sets, [], unprivileged, storage)

      const hasMp = Object.keys(sets).some((k) => /^mp\d+$/.test(k))
      if (hasMp && sets["rootfs"] === undefined) {
        return yield* Effect.fail(die500("mount points configured, but 'rootfs' not set - aborting"))
      }
      const targets = new Set<string>()
      for (const [k, v] of Object.entries(sets)) {
        if (k !== "rootfs" && !/^mp\d+$/.test(k)) continue
        const mp = Either.getOrUndefined(parseMountPoint(k, String(v)))
        const alloc = mp === undefined ? null : ALLOC_RE.exec(mp.volume)
        if (alloc !== null) targets.add(alloc[1] ?? storage)
        else if (mp?.storage !== undefined) targets.add(mp.storage)
      }
      if (sets["rootfs"] === undefined) targets.add(storage)
      for (const sid of targets) {
        const s = state.storages.get(sid)
        if (s === undefined) return yield* Effect.fail(die500(`storage '${sid}' does not exist`))
        if (!s.content.includes("rootdir")) {
          return yield* Effect.fail(paramError({ storage: `storage '${sid}' does not support container directories` }))
        }
        yield* check(ctx, `/storage/${sid}`, ["Datastore.AllocateSpace"])
        // check_and_activate_storage: an unreachable target refuses the restore before the task
        const activation = activationError(s)
        if (activation !== undefined) return yield* Effect.fail(die500(activation))
      }
      if (existing !== undefined) {
        const lock = guestLock(existing)
        if (lock !== undefined) return yield* Effect.fail(die500(`unable to restore CT ${vmid} - CT is locked (${lock})`))
      }
      // reserve the id: a config holding only `lock: create`, visible in the CT list meanwhile
      yield* Effect.suspend(() => {
        const now = state.guests.get(vmid)
        if (now !== existing) return Effect.fail(die500(`Could not reserve ID ${vmid}, already taken`))
        if (existing !== undefined) existing.config = { ...existing.config, lock: "create" }
        else {
          state.guests.set(vmid, {
            vmid,
            node: node.node,
            status: "stopped",
            config: { lock: "create" },
            snapshots: [],
            startedAtMs: undefined,
            pid: undefined
          })
        }
        return Effect.void
      })
      const plan: Plan = {
        vmid,
        restore,
        ostemplate,
        storage,
        unique: pBool(ctx.params, "unique"),
        startAfter: pBool(ctx.params, "start"),
        sets,
        unprivileged: paramUnpriv === undefined ? undefined : paramUnpriv === 1,
        overwrite
      }
      const upid = yield* startTask(ctx.env, {
        node,
        type: restore ? "vzrestore" : "vzcreate",
        id: String(vmid),
        token: ctx.token,
        body: (t) => createBody(t, node.node, plan)
      })
      return reply(upid)
    })
}

/** PVE::Storage::check_volume_access for the archive or template. */
const checkVolumeAccess = (ctx: RequestCtx, vmid: number, volid: string) =>
  Effect.gen(function*() {
    if (volid.startsWith("/")) return yield* Effect.fail(die500("Only root can pass arbitrary filesystem paths."))
    const colon = volid.indexOf(":")
    if (colon <= 0) return yield* Effect.fail(die500(`unable to parse volume ID '${volid}'`))
    const sid = volid.slice(0, colon)
    if (!ctx.env.state.storages.has(sid)) return yield* Effect.fail(die500(`storage '${sid}' does not exist`))
    const sp = `/storage/${sid}`
    if (hasPriv(ctx.env, ctx.token, sp, "Datastore.Allocate")) return
    const volname = volid.slice(colon + 1)
    const vtype = volumeType(volname)
    const owner = vtype === "backup" ? backupOwner(volname) : undefined
    if (vtype === "iso" || vtype === "vztmpl") {
      yield* checkAny(ctx, sp, ["Datastore.AllocateSpace", "Datastore.Audit"])
    } else if (owner !== undefined && owner === vmid) {
      return
    } else if (vtype === "backup" && owner !== undefined) {
      yield* check(ctx, sp, ["Datastore.AllocateSpace"])
      yield* check(ctx, `/vms/${owner}`, ["VM.Backup"])
    } else {
      yield* check(ctx, sp, ["Datastore.Allocate"])
    }
  })

interface DiskSpec {
  readonly key: string
  readonly storage: string
  readonly bytes: number
  readonly props: Readonly<Record<string, string>>
}

const createBody = (t: TaskCtx, node: string, plan: Plan): Effect.Effect<void, TaskFailure> => {
  const state = t.env.state
  const { vmid } = plan
  const emsg = plan.restore ? `unable to restore CT ${vmid} -` : `unable to create CT ${vmid} -`
  const created: Array<string> = []
  // any failure: drop the new volumes and the config (with force the old CT is already gone)
  const failWith = (text: string) =>
    Effect.zipRight(
      Effect.sync(() => {
        for (const v of created) state.volumes.delete(v)
        removeGuest(state, vmid)
      }),
      Effect.fail(taskFailure(`${emsg} ${text}`))
    )
  return Effect.gen(function*() {
    const archive = state.volumes.get(plan.ostemplate)
    const archivePath = volumePath(state, plan.ostemplate)
    let archiveConf: LxcConfig | undefined
    const archiveStorage = state.storages.get(plan.ostemplate.slice(0, plan.ostemplate.indexOf(":")))
    const fromPbs = archiveStorage?.type === "pbs"
    if (plan.restore) {
      yield* t.log(`recovering backed-up configuration from '${plan.ostemplate}'`)
      yield* t.step(0.05)
      if (archiveStorage !== undefined) {
        const unreadable = archiveUnreadable(archiveStorage, plan.ostemplate)
        if (unreadable !== undefined) {
          for (const line of unreadable.log) yield* t.log(line)
          return yield* failWith(unreadable.error)
        }
      }
      if (archive === undefined || (archiveStorage !== undefined && !volumeOnLayer(archiveStorage, archive))) {
        return yield* failWith(`unable to open file '${archivePath}' - No such file or directory`)
      }
      if (fromPbs && archiveStorage !== undefined) {
        // recover_config_from_proxmox_backup: the client reads the manifest with the storage's key first
        const unreadable = snapshotReadError(archiveStorage, archive.encrypted)
        if (unreadable !== undefined) {
          yield* t.log(`Error: ${unreadable}`)
          return yield* failWith(
            `command '/usr/bin/proxmox-backup-client restore ${cryptArgs(archiveStorage)} ${volumeName(plan.ostemplate).slice("backup/".length)} pct.conf - --repository ${pbsRepository(archiveStorage)}' failed: exit code 255`
          )
        }
      }
      archiveConf = archive.archiveConfig
      if (archiveConf === undefined) return yield* failWith("unable to recover configuration from archive (not a container backup)")
    } else {
      if (archive === undefined || archive.content !== "vztmpl") {
        return yield* failWith(`unable to open file '${archivePath}' - No such file or directory`)
      }
    }

    // volume layout: given rootfs/mpN, else the archive's (storage-only mode), else storage:4
    const disks: Array<DiskSpec> = []
    if (plan.sets["rootfs"] !== undefined) {
      for (const [k, v] of Object.entries(plan.sets)) {
        if (k !== "rootfs" && !/^mp\d+$/.test(k)) continue
        const mp = Either.getOrUndefined(parseMountPoint(k, String(v)))
        if (mp === undefined) continue
        const alloc = ALLOC_RE.exec(mp.volume)
        if (alloc === null) return yield* failWith(`unable to use existing volume '${mp.volume}' for '${k}'`)
        const { volume: _v, size: _s, ...props } = mp.props
        disks.push({ key: k, storage: alloc[1] ?? plan.storage, bytes: Math.round(Number(alloc[2]) * GiB_BYTES), props })
      }
    } else if (plan.restore && archiveConf !== undefined) {
      for (const [k, v] of Object.entries(archiveConf)) {
        if (k !== "rootfs" && !/^mp\d+$/.test(k)) continue
        const mp = Either.getOrUndefined(parseMountPoint(k, String(v)))
        if (mp === undefined) continue
        if (mp.type !== "volume") {
          if (k === "rootfs") return yield* failWith(`restoring rootfs to ${mp.type} mount is only possible by specifying -rootfs manually!`)
          // a token is never root@pam
          return yield* failWith(`restoring '${k}' to ${mp.type} mount is only possible for root`)
        }
        if (mp.size === undefined) return yield* failWith(`unable to detect disk size - please specify ${k} (size)`)
        const { volume: _v, size: _s, ...props } = mp.props
        disks.push({ key: k, storage: plan.storage, bytes: mp.size, props })
      }
      if (!disks.some((d) => d.key === "rootfs")) {
        return yield* failWith("rootfs configuration could not be recovered, please check and specify manually!")
      }
    } else {
      disks.push({ key: "rootfs", storage: plan.storage, bytes: 4 * GiB_BYTES, props: {} })
    }

    // space: a volume takes its full size on its storage (see storage.ts); a target without room
    // fails the lvcreate of a thick LV, and otherwise the extraction once the volume runs full
    const wanted = new Map<string, number>()
    for (const d of disks) wanted.set(d.storage, (wanted.get(d.storage) ?? 0) + d.bytes)
    const short = [...wanted].filter(([sid, bytes]) => {
      const st = state.storages.get(sid)
      return st !== undefined && storageAvail(state, st) < bytes
    }).map(([sid]) => sid)
    const thickShort = short.find((sid) => state.storages.get(sid)?.type === "lvm")
    if (thickShort !== undefined) {
      const st = state.storages.get(thickShort)
      const d = disks.find((x) => x.storage === thickShort)
      const vg = st?.vgname ?? "pve"
      const extents = (n: number) => Math.ceil(n / (4 * 1024 ** 2))
      return yield* failWith(
        `lvcreate '${vg}/vm-${vmid}-disk-0' error:   Volume group "${vg}" has insufficient free space (${extents(st === undefined ? 0 : storageAvail(state, st))} extents): ${extents(d?.bytes ?? 0)} required.`
      )
    }

    const nowSec = Math.floor((yield* t.now) / 1000)
    const mounts: Record<string, string> = {}
    for (const [i, d] of disks.entries()) {
      const volid = yield* Effect.sync(() => {
        const id = allocateVolumeName(state, d.storage, vmid, new Set(created))
        state.volumes.set(id, { volid: id, storage: d.storage, content: "rootdir", format: "raw", size: d.bytes, ctime: nowSec, vmid })
        created.push(id)
        return id
      })
      mounts[d.key] = printMountPoint({ ...d.props, volume: volid, size: formatSize(d.bytes) })
      const blocks = Math.floor(d.bytes / 4096)
      yield* t.log(lvmLine(state, volid, "created"))
      yield* t.log(`Creating filesystem with ${blocks} 4k blocks and ${Math.floor(blocks / 4)} inodes`)
      yield* t.log(`Filesystem UUID: ${fsUuid(vmid, i)}`)
      yield* t.log("Superblock backups stored on blocks: ")
      yield* t.log("\t32768, 98304, 163840, 229376, 294912, 819200, 884736")
    }
    yield* t.step(0.1)

    // force over an existing CT: its volumes go now, before the archive is even read
    const old = state.guests.get(vmid)
    if (plan.overwrite && old !== undefined) {
      const lines = yield* Effect.sync(() => {
        const out = destroyGuestVolumes(state, { ...old, config: old.config }, false)
        old.snapshots = []
        old.config = { lock: "create" }
        return out
      })
      for (const line of lines) yield* t.log(line)
    }

    if (plan.restore) yield* t.log(`restoring '${plan.ostemplate}' now..`)
    if (!fromPbs) yield* t.log(`extracting archive '${archivePath}'`)
    const epochAtStart = archiveStorage?.epoch
    yield* t.step(0.7)
    const tarFailed = failWith(`command '${extractCommand(vmid, archive?.format)}' failed: exit code 2`)
    if (t.injectFailure) return yield* tarFailed
    const extraction = extractionFailure({
      archive: plan.restore ? archive : undefined,
      sourceLost: archiveStorage !== undefined && (archiveStorage.epoch !== epochAtStart || storageLayer(archiveStorage) === "offline"),
      targetFull: short.length > 0
    })
    if (extraction !== undefined) {
      for (const line of extraction.log) yield* t.log(line)
      if (fromPbs) {
        return yield* failWith(`command '/usr/bin/proxmox-backup-client restore ${archiveStorage === undefined ? "'--crypt-mode=none'" : cryptArgs(archiveStorage)} ${volumeName(plan.ostemplate).slice("backup/".length)} root.pxar /var/lib/lxc/${vmid}/rootfs --allow-existing-dirs --repository ${pbsRepository(archiveStorage)}' failed: exit code 255`)
      }
      return yield* tarFailed
    }
    const bytesRead = Math.max(archive?.size ?? 0, 1) * 3
    yield* t.log(`Total bytes read: ${bytesRead} (${(bytesRead / 1024 ** 2).toFixed(0)}MiB, 212MiB/s)`)
    const arch = String(archiveConf?.["arch"] ?? plan.sets["arch"] ?? "amd64")
    yield* t.log(`Detected container architecture: ${arch}`)

    // merge: given keys win, then the archive's keys (restore_configuration / sanitize_and_merge_config)
    const conf: LxcConfig = {}
    for (const [k, v] of Object.entries(plan.sets)) {
      if (k === "rootfs" || /^mp\d+$/.test(k) || /^unused\d+$/.test(k)) continue
      if (/^net\d+$/.test(k)) {
        const net = Either.getOrUndefined(parseNet(k, String(v)))
        conf[k] = normalizeNet(k, String(v), net?.["hwaddr"] === undefined ? yield* randomMac(t.env) : undefined)
      } else if (k === "features") conf[k] = normalizeFeatures(String(v))
      else conf[k] = v
    }
    Object.assign(conf, mounts)
    const unpriv = plan.unprivileged ?? (archiveConf?.["unprivileged"] === 1)
    if (unpriv) conf["unprivileged"] = 1
    if (plan.restore && archiveConf !== undefined) {
      yield* t.log("merging backed-up and given configuration..")
      for (const key of Object.keys(archiveConf).sort()) {
        const value = archiveConf[key]!
        if (
          key === "digest" || key === "rootfs" || key === "unprivileged" || key === "parent" || key === "lock" ||
          key === "template" || /^mp\d+$/.test(key) || /^unused\d+$/.test(key)
        ) continue
        if (key === "features" && !unpriv && archiveConf["unprivileged"] === 1) {
          yield* t.warn("changing from unprivileged to privileged, skipping features")
          continue
        }
        if (plan.unique && /^net\d+$/.test(key)) {
          const net = Either.getOrUndefined(parseNet(key, String(value)))
          if (net !== undefined) conf[key] = printNet({ ...net, hwaddr: yield* randomMac(t.env) })
          continue
        }
        if (conf[key] === undefined) conf[key] = value
      }
    } else if (!plan.restore) {
      conf["arch"] ??= arch
      const m = /^vztmpl\/([a-z]+)-/.exec(volumeName(plan.ostemplate))
      if (m !== null && conf["ostype"] === undefined) conf["ostype"] = m[1]!
      yield* t.log("Creating SSH host key 'ssh_host_ed25519_key' - this may take some time ...")
      yield* t.log(`done: SHA256:${fsUuid(vmid, 7).replace(/-/g, "")} root@${String(conf["hostname"] ?? `CT${vmid}`)}`)
    }
    yield* t.step(0.15)
    const final = withCreateDefaults(vmid, conf)
    const done = yield* Effect.sync(() => {
      const g: GuestState | undefined = state.guests.get(vmid)
      if (g === undefined) return false
      g.config = final
      g.snapshots = []
      // the guest model: its services are what the archive carried (damaged: they fail)
      g.services = plan.restore ? (archive?.corrupt === "health" ? "failing" : archive?.services ?? "healthy") : "healthy"
      g.restoredFrom = plan.restore ? plan.ostemplate : undefined
      // what is inside the rootfs comes with it: the archive's machine-id, host keys, applied directives
      g.inner = plan.restore ? archive?.inner : undefined
      return true
    })
    if (!done) return yield* failWith(`Configuration file 'nodes/${node}/lxc/${vmid}.conf' does not exist`)
    if (plan.startAfter) yield* startBody(t, node, vmid)
  })
}

const pbsRepository = (st: StorageState | undefined): string =>
  `${st?.username ?? "root@pam"}@${st?.server ?? "localhost"}:${st?.datastore ?? "store"}`

const DECOMPRESS: Readonly<Record<string, string>> = { "tar.zst": " --zstd", "tar.gz": " -z", "tar.lzo": " --lzop" }

const extractCommand = (vmid: number, format: string | undefined) =>
  `lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 -- tar xpf -${DECOMPRESS[format ?? "tar.zst"] ?? ""} --totals --one-file-system -p --sparse --numeric-owner --acls --xattrs '--xattrs-include=user.*' '--xattrs-include=security.capability' '--warning=no-file-ignored' '--warning=no-xattr-write' -C /var/lib/lxc/${vmid}/rootfs --skip-old-files --anchored --exclude './dev/*'`

/**
 * Why the archive cannot be read at all now (its storage does not activate), with the log lines
 * PVE prints: a dir/nfs/cifs storage fails its activation, a PBS restore its client connection.
 */
const archiveUnreadable = (st: StorageState, volid: string): { readonly log: ReadonlyArray<string>; readonly error: string } | undefined => {
  const activation = activationError(st)
  if (activation === undefined) return undefined
  if (st.type !== "pbs" || st.disable) return { log: [], error: activation }
  // [inf] recover_config_from_proxmox_backup runs the client, which cannot connect
  return {
    log: [`Error: error trying to connect: tcp connect error: Connection refused (os error 111)`],
    error: `command '/usr/bin/proxmox-backup-client restore ${cryptArgs(st)} ${volumeName(volid).slice("backup/".length)} pct.conf - --repository ${pbsRepository(st)}' failed: exit code 255`
  }
}

/** The decompressor's and tar's stderr when extraction breaks [inf: zstd/gzip/lzop/tar texts]. */
const extractionFailure = (why: {
  readonly archive: { readonly format: string; readonly corrupt?: string | undefined } | undefined
  readonly sourceLost: boolean
  readonly targetFull: boolean
}): { readonly log: ReadonlyArray<string> } | undefined => {
  const format = why.archive?.format ?? "tar.zst"
  if (why.archive !== undefined && format === "pbs-ct" && (why.archive.corrupt === "restore" || why.sourceLost)) {
    return { log: [why.sourceLost ? "Error: error sending data: connection closed before message completed" : "Error: detected chunk with wrong digest."] }
  }
  const tarEof = ["tar: Unexpected EOF in archive", "tar: Unexpected EOF in archive", "tar: Error is not recoverable: exiting now"]
  const decompressor: Readonly<Record<string, ReadonlyArray<string>>> = {
    "tar.zst": ["zstd: /*stdin*\\: Decoding error (36) : Corrupted block detected", "tar: Child returned status 1"],
    "tar.gz": ["gzip: stdin: invalid compressed data--crc error", "tar: Child returned status 1"],
    "tar.lzo": ["lzop: <stdin>: Checksum error", "tar: Child returned status 1"]
  }
  if (why.archive?.corrupt === "restore") return { log: [...(decompressor[format] ?? []), ...tarEof] }
  if (why.sourceLost) {
    const eof: Readonly<Record<string, string>> = {
      "tar.zst": "zstd: /*stdin*\\: unexpected end of file",
      "tar.gz": "gzip: stdin: unexpected end of file",
      "tar.lzo": "lzop: <stdin>: Read error: Input/output error"
    }
    return { log: [...(eof[format] === undefined ? [] : [eof[format]!, "tar: Child returned status 1"]), ...tarEof] }
  }
  if (why.targetFull) {
    return { log: ["tar: ./var/lib/dpkg/info/libc6:amd64.list: Cannot write: No space left on device", "tar: Exiting with failure status due to previous errors"] }
  }
  return undefined
}

export const createRoutes: ReadonlyArray<RouteDef> = [create]
