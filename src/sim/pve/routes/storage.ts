/**
 * Storage configuration and volume deletion, after pve-storage `API2/Storage/Config.pm` (create)
 * and `API2/Storage/Content.pm` (delete):
 *
 * - POST /storage (Datastore.Allocate on /storage): types dir, nfs, cifs, pbs. Schema errors are
 *   400s; then, as SectionConfig::check_config does, a property the type does not take is a 500
 *   `unexpected property 'x'` and a missing required one `missing value for required option 'x'`;
 *   inside the storage.cfg lock errors carry `create storage failed: `, including the activation
 *   check (an unreachable server or an unmounted is_mountpoint refuses the storage). Passwords
 *   and keys go to the private store, never into storage.cfg; a PBS `encryption-key` (key JSON
 *   or `autogen`) is listed as its fingerprint and handed back once in the answer's `config`.
 * - DELETE /nodes/{node}/storage/{storage}/content/{volume}: always a task (`imgdel`, id
 *   `<vmid>@<storage>`), started after the permission check (a backup: Datastore.AllocateSpace
 *   on the storage and VM.Backup on its guest; anything else: Datastore.Allocate). The task
 *   refuses protected backups and fails when the storage does not activate. With `delay` the
 *   call waits up to that many seconds and answers null when the task finished in time.
 */
import { createHash } from "node:crypto"
import { Clock, Duration, Effect, Either } from "effect"
import { check, pNum, pStr, requireNode, startTask, taskFailure, type TaskCtx } from "../env.js"
import { die500, paramError, type TaskFailure } from "../errors.js"
import { fmtContentList, fmtDnsName, type ParamSpec, type Params, STORAGE_CONTENT_TYPES, storageSpec } from "../params.js"
import { optional, reply, type RouteDef, schema } from "../route.js"
import { pbsFingerprint } from "../../../programs/escrow/keyFile.js"
import { configFingerprintOf, parseKeyFileJson } from "../pbsCrypt.js"
import { attachRemote } from "../remoteStore.js"
import { FINGERPRINT_RE, type SimStorageSeed, type StorageType } from "../seed.js"
import { type SimState, type StorageRuntime, type StorageState, volumeName } from "../state.js"
import {
  activationError,
  dumpDir,
  parsePruneBackups,
  storageLayer,
  type StorageLayer,
  storageSpace,
  volumeOnLayer
} from "../storage.js"

// ---------------------------------------------------------------------------------------------
// Sim-side storage state

export const storageFromSeed = (seed: SimStorageSeed): StorageState => {
  const { active, total, used, ...config } = seed
  return { ...config, online: active, epoch: 0, total, used }
}

export const applyStorageRuntime = (st: StorageState, rt: StorageRuntime): void => {
  if (rt.online !== undefined) {
    if (st.online && !rt.online) st.epoch++
    st.online = rt.online
  }
  if (rt.total !== undefined) st.total = rt.total
  if (rt.used !== undefined) st.used = rt.used
}

/** A storage as the simulator sees it (sim-admin, tests). */
export interface SimStorageView {
  readonly storage: string
  readonly type: string
  readonly path: string | null
  /** dir: mounted; nfs/cifs/pbs: server reachable */
  readonly online: boolean
  readonly is_mountpoint: string | null
  /** where its data is now (see storage.ts) */
  readonly layer: StorageLayer
  /** as GET /nodes/{node}/storage shows it */
  readonly active: boolean
  readonly total: number
  readonly used: number
}

export const storageView = (state: SimState, st: StorageState): SimStorageView => {
  const sp = storageSpace(state, st)
  return {
    storage: st.storage,
    type: st.type,
    path: st.path ?? null,
    online: st.online,
    is_mountpoint: st.is_mountpoint ?? null,
    layer: storageLayer(st),
    active: sp.active,
    total: sp.total,
    used: sp.used
  }
}

const hex8 = (n: number) => (n >>> 0).toString(16).toUpperCase().padStart(8, "0")

/** A PBS verify task's UPID (PBS's own format: an extra task counter, systemd-escaped worker id). */
export const pbsVerificationUpid = (st: StorageState | undefined, vmid: number, backupTime: number, atSec: number): string => {
  const store = st?.datastore ?? "store"
  return `UPID:pbs:${hex8(0x3a1 + (vmid % 4096))}:${hex8(0x00a1b2c3)}:${hex8(vmid)}:${hex8(atSec)}:verify:${store}\\x3act\\x2f${vmid}\\x2f${hex8(backupTime)}:root@pam:`
}

// ---------------------------------------------------------------------------------------------
// POST /storage

const TYPES_ENUM = ["btrfs", "cephfs", "cifs", "dir", "esxi", "iscsi", "iscsidirect", "lvm", "lvmthin", "nfs", "pbs", "rbd", "zfs", "zfspool"]

const fmtPath = (v: string): string | undefined => (/^\/[^;()]+/.test(v) ? undefined : "value does not look like a valid absolute path")

const fmtServer = (v: string): string | undefined =>
  /^(?:\d{1,3}\.){3}\d{1,3}$/.test(v) || /^[0-9a-fA-F:]+$/.test(v) && v.includes(":") || fmtDnsName(v) === undefined
    ? undefined
    : "value does not look like a valid server name or IP address"

const fmtPrune = (v: string): string | undefined => Either.match(parsePruneBackups(v), { onLeft: (e) => e, onRight: () => undefined })

const fmtOptions = (v: string): string | undefined => (/^[-\w=,.:/@]+$/.test(v) ? undefined : `invalid options '${v}'`)

/** The union of the types' properties, as PVE::Storage::Plugin->createSchema offers them. */
const createProps: Readonly<Record<string, ParamSpec>> = {
  storage: storageSpec,
  type: { type: "string", enum: TYPES_ENUM },
  path: optional({ type: "string", format: fmtPath }),
  content: optional({ type: "string", format: fmtContentList }),
  nodes: optional({ type: "string" }),
  shared: optional({ type: "boolean" }),
  disable: optional({ type: "boolean" }),
  "prune-backups": optional({ type: "string", format: fmtPrune }),
  "max-protected-backups": optional({ type: "integer", minimum: -1 }),
  is_mountpoint: optional({ type: "string" }),
  mkdir: optional({ type: "boolean" }),
  "create-base-path": optional({ type: "boolean" }),
  "create-subdirs": optional({ type: "boolean" }),
  server: optional({ type: "string", format: fmtServer }),
  export: optional({ type: "string", format: fmtPath }),
  options: optional({ type: "string", format: fmtOptions }),
  share: optional({ type: "string" }),
  subdir: optional({ type: "string", format: fmtPath }),
  domain: optional({ type: "string", maxLength: 256 }),
  smbversion: optional({ type: "string", enum: ["default", "2.0", "2.1", "3", "3.0", "3.11"] }),
  username: optional({ type: "string" }),
  password: optional({ type: "string", maxLength: 256 }),
  datastore: optional({ type: "string" }),
  namespace: optional({ type: "string" }),
  port: optional({ type: "integer", minimum: 1, maximum: 65535 }),
  fingerprint: optional({ type: "string", pattern: FINGERPRINT_RE }),
  "encryption-key": optional({ type: "string" }),
  "master-pubkey": optional({ type: "string" }),
  vgname: optional({ type: "string" }),
  thinpool: optional({ type: "string" })
}

interface TypeDef {
  /** options the type takes (besides storage/type); `true` = required */
  readonly options: Readonly<Record<string, boolean>>
  readonly sensitive: ReadonlyArray<string>
  readonly content: ReadonlyArray<string>
  readonly defaultContent: ReadonlyArray<string>
  readonly noneAllowed: boolean
}

const COMMON_OPTS = { nodes: false, disable: false, "prune-backups": false, "max-protected-backups": false, content: false }
const FILE_OPTS = { ...COMMON_OPTS, mkdir: false, "create-base-path": false, "create-subdirs": false }
const FILE_CONTENT = ["images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"]

const TYPE_DEFS: Partial<Record<StorageType, TypeDef>> = {
  dir: {
    options: { ...FILE_OPTS, path: true, shared: false, is_mountpoint: false },
    sensitive: [],
    content: FILE_CONTENT,
    defaultContent: ["images", "rootdir"],
    noneAllowed: true
  },
  nfs: {
    options: { ...FILE_OPTS, path: true, server: true, export: true, options: false },
    sensitive: [],
    content: FILE_CONTENT,
    defaultContent: ["images"],
    noneAllowed: false
  },
  cifs: {
    options: { ...FILE_OPTS, path: true, server: true, share: true, subdir: false, username: false, password: false, domain: false, smbversion: false, options: false },
    sensitive: ["password"],
    content: FILE_CONTENT,
    defaultContent: ["images"],
    noneAllowed: false
  },
  pbs: {
    options: {
      ...COMMON_OPTS,
      server: true,
      datastore: true,
      namespace: false,
      port: false,
      username: false,
      password: false,
      "encryption-key": false,
      "master-pubkey": false,
      fingerprint: false
    },
    sensitive: ["encryption-key", "master-pubkey", "password"],
    content: ["backup"],
    defaultContent: ["backup"],
    noneAllowed: true
  }
}

/** A key file as `proxmox-backup-client key create --kdf none` writes it; deterministic per storage and time. */
const autogenKey = (storeid: string, nowMs: number): { readonly json: string; readonly fingerprint: string } => {
  const data = createHash("sha256").update(`sim-pbs-key:${storeid}:${nowMs}`).digest()
  const fingerprint = pbsFingerprint(data)
  const at = new Date(nowMs).toISOString().replace(/\.\d{3}Z$/, "+00:00")
  return { json: JSON.stringify({ kdf: null, created: at, modified: at, data: data.toString("base64"), fingerprint }), fingerprint }
}

/**
 * What `pvesm set <id> --encryption-key <file>` does (PBSPlugin on_update_hook): the key file's
 * text to the private store, `fingerprint || 1` into storage.cfg; null removes both
 * (`--delete encryption-key`). Left: PVE's error text.
 */
export const setStorageKey = (state: SimState, storeid: string, keyJson: string | null): Either.Either<string | undefined, string> => {
  const st = state.storages.get(storeid)
  if (st === undefined) return Either.left(`storage '${storeid}' does not exist`)
  if (st.type !== "pbs") return Either.left("unexpected property 'encryption-key'")
  // changed in place: running tasks hold this object (its epoch, its key at their start)
  const entry = st as { -readonly [K in keyof StorageState]: StorageState[K] }
  if (keyJson === null) {
    delete entry["encryption-key"]
    entry.secrets = { ...st.secrets, encryptionKey: undefined }
    return Either.right(undefined)
  }
  const key = parseKeyFileJson(keyJson)
  if (key === undefined) return Either.left("Value does not seems like a valid, JSON formatted encryption key!")
  const fingerprint = configFingerprintOf(key)
  entry["encryption-key"] = fingerprint
  entry.secrets = { ...st.secrets, encryptionKey: keyJson }
  return Either.right(fingerprint)
}

const createStorage: RouteDef = {
  method: "POST",
  path: "/storage",
  schema: { properties: createProps },
  perm: { kind: "perm", path: () => "/storage", privs: ["Datastore.Allocate"] },
  handler: (ctx) =>
    Effect.gen(function*() {
      const state = ctx.env.state
      const type = String(ctx.params["type"]) as StorageType
      const storeid = String(ctx.params["storage"])
      const def = TYPE_DEFS[type]
      if (def === undefined) return yield* Effect.fail(die500(`creating '${type}' storages is not modelled by the simulator`))
      const given: Record<string, string | number> = {}
      for (const [k, v] of Object.entries(ctx.params)) if (k !== "type" && k !== "storage") given[k] = v
      // an empty node list is dropped (Config.pm), then the type's secrets are set aside
      if (given["nodes"] === "") delete given["nodes"]
      const secrets: Record<string, string> = {}
      for (const k of def.sensitive) {
        if (given[k] !== undefined) {
          secrets[k] = String(given[k])
          delete given[k]
        }
      }
      // SectionConfig::check_config
      for (const k of Object.keys(given).sort()) {
        if (def.options[k] === undefined) return yield* Effect.fail(die500(`unexpected property '${k}'`))
      }
      if ((type === "nfs" || type === "cifs") && given["path"] === undefined) given["path"] = `/mnt/pve/${storeid}`
      for (const [k, required] of Object.entries(def.options)) {
        if (required && given[k] === undefined) return yield* Effect.fail(die500(`missing value for required option '${k}'`))
      }
      let content = def.defaultContent
      if (given["content"] !== undefined) {
        content = String(given["content"]).split(/[,;\s]+/).filter((c) => c.length > 0 && def.content.includes(c))
        if (content.length === 0 && !def.noneAllowed) return yield* Effect.fail(die500("storage does not support content type 'none'"))
      }
      const path = given["path"] === undefined ? undefined : String(given["path"]).replace(/\/+$/, "")
      if (type === "dir" && path !== undefined && !/^\/[-/a-zA-Z0-9_.@]+$/.test(path)) {
        return yield* Effect.fail(die500(`illegal path for directory storage: ${path}`))
      }
      const failed = (text: string) => Effect.fail(die500(`create storage failed: ${text}`))
      if (state.storages.has(storeid)) return yield* failed(`storage ID '${storeid}' already defined`)

      // on_add_hook (PBS): the key to the private store, its fingerprint into the config
      let encryptionFingerprint: string | undefined
      let returnedKey: string | undefined
      const key = secrets["encryption-key"]
      if (type === "pbs" && key !== undefined) {
        if (key === "autogen") {
          const made = autogenKey(storeid, ctx.nowMs)
          encryptionFingerprint = made.fingerprint
          returnedKey = made.json
        } else {
          const decoded = parseKeyFileJson(key)
          if (decoded === undefined) return yield* failed("Value does not seems like a valid, JSON formatted encryption key!")
          encryptionFingerprint = configFingerprintOf(decoded)
          returnedKey = key
        }
      }
      if (type === "pbs" && secrets["master-pubkey"] !== undefined && encryptionFingerprint === undefined) {
        return yield* failed("'master-pubkey' can only be used together with 'encryption-key'")
      }
      const pending = state.pendingStorage.get(storeid)
      const str = (k: string): string | undefined => (given[k] === undefined ? undefined : String(given[k]))
      const num = (k: string): number | undefined => (given[k] === undefined ? undefined : Number(given[k]))
      const st: StorageState = {
        storage: storeid,
        type,
        content: content as ReadonlyArray<(typeof STORAGE_CONTENT_TYPES)[number]>,
        path,
        shared: given["shared"] === 1,
        disable: given["disable"] === 1,
        nodes: str("nodes")?.split(/[,;\s]+/).filter((n) => n.length > 0),
        "prune-backups": str("prune-backups"),
        "max-protected-backups": num("max-protected-backups"),
        is_mountpoint: str("is_mountpoint"),
        server: str("server"),
        export: str("export"),
        options: str("options"),
        share: str("share"),
        subdir: str("subdir"),
        domain: str("domain"),
        smbversion: str("smbversion"),
        username: str("username"),
        datastore: str("datastore"),
        namespace: str("namespace"),
        port: num("port"),
        fingerprint: str("fingerprint"),
        "encryption-key": encryptionFingerprint,
        masterPubkey: secrets["master-pubkey"] !== undefined,
        secrets: { password: secrets["password"], encryptionKey: returnedKey },
        online: pending?.online ?? true,
        epoch: 0,
        total: pending?.total ?? 2 * 1024 ** 4,
        used: pending?.used ?? 0
      }
      // activate once to find problems now (a failure drops the new entry again); Config.pm
      // activates only an enabled storage, so a disabled one is added without reaching its server
      const activation = st.disable ? undefined : activationError(st)
      if (activation !== undefined) return yield* failed(activation)
      state.storages.set(storeid, st)
      state.pendingStorage.delete(storeid)
      // a server that outlived a wiped node still holds what was written there
      attachRemote(state, st)
      return reply({ storage: storeid, type, ...(returnedKey !== undefined ? { config: { "encryption-key": returnedKey } } : {}) })
    })
}

// ---------------------------------------------------------------------------------------------
// DELETE /nodes/{node}/storage/{storage}/content/{volume}

interface ParsedVolname {
  readonly vtype: "backup" | "vztmpl" | "iso" | "images" | "rootdir"
  readonly owner: number | undefined
}

/** PVE::Storage::parse_volname per plugin; Left is its die text. */
const parseVolname = (st: StorageState, volname: string): Either.Either<ParsedVolname, string> => {
  if (st.type === "pbs") {
    const m = /^backup\/([^\s_]+)\/([^\s_]+)\/(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)$/.exec(volname)
    if (m === null) return Either.left(`unable to parse PBS volume name '${volname}'`)
    return Either.right({ vtype: "backup", owner: /^\d+$/.test(m[2]!) ? Number(m[2]) : undefined })
  }
  if (st.type === "dir" || st.type === "nfs" || st.type === "cifs") {
    let m = /^backup\/([^/]+)$/.exec(volname)
    if (m !== null) {
      const owner = /^vzdump-(?:openvz|lxc|qemu)-(\d+)-.+/.exec(m[1]!)
      return Either.right({ vtype: "backup", owner: owner === null ? undefined : Number(owner[1]) })
    }
    if (/^vztmpl\/[^/]+$/.test(volname)) return Either.right({ vtype: "vztmpl", owner: undefined })
    if (/^iso\/[^/]+$/.test(volname)) return Either.right({ vtype: "iso", owner: undefined })
    m = /^(\d+)\/(?:vm|base|subvol)-\d+-disk-\d+(?:\.\w+)?$/.exec(volname)
    if (m !== null) return Either.right({ vtype: "images", owner: Number(m[1]) })
    return Either.left(`unable to parse directory volume name '${volname}'`)
  }
  const m = /^(?:vm|base|subvol)-(\d+)-disk-\d+$/.exec(volname)
  if (m === null) return Either.left(`unable to parse lvm volume name '${volname}'`)
  return Either.right({ vtype: "images", owner: Number(m[1]) })
}

/** The file (or PBS snapshot path) a volume is, for log lines and errors. */
const volumePathOf = (st: StorageState, volname: string): string => {
  if (st.type === "pbs") return `/${st.datastore ?? "store"}/${volname.slice("backup/".length)}`
  if (volname.startsWith("backup/")) return `${dumpDir(st)}/${volname.slice("backup/".length)}`
  const base = st.path ?? `/mnt/pve/${st.storage}`
  // Plugin.pm's vtype_subdirs
  if (volname.startsWith("vztmpl/")) return `${base}/template/cache/${volname.slice("vztmpl/".length)}`
  if (volname.startsWith("iso/")) return `${base}/template/iso/${volname.slice("iso/".length)}`
  return `${base}/images/${volname}`
}

const deleteBody = (t: TaskCtx, st: StorageState, volid: string, volname: string): Effect.Effect<void, TaskFailure> =>
  Effect.gen(function*() {
    const state = t.env.state
    yield* t.step(0.5)
    // vdisk_free activates the storage first
    const activation = activationError(st)
    if (activation !== undefined) return yield* Effect.fail(taskFailure(activation))
    const vol = state.volumes.get(volid)
    const present = vol !== undefined && volumeOnLayer(st, vol)
    if (t.injectFailure) {
      // [inf] a disk or server giving up during the delete
      return yield* Effect.fail(taskFailure(
        st.type === "pbs"
          ? "proxmox-backup-client failed: Error: error trying to connect: tcp connect error: Connection refused (os error 111)"
          : `unlink '${volumePathOf(st, volname)}' failed - Input/output error`
      ))
    }
    if (st.type === "pbs") {
      // free_image runs `proxmox-backup-client forget`: PBS refuses protected snapshots itself [inf: message composition]
      if (!present) {
        return yield* Effect.fail(taskFailure(
          `proxmox-backup-client failed: Error: removing backup snapshot "${volumePathOf(st, volname)}" failed - No such file or directory (os error 2)`
        ))
      }
      if (vol.protected === true) return yield* Effect.fail(taskFailure("proxmox-backup-client failed: Error: cannot remove protected snapshot"))
    } else if (present && vol.protected === true) {
      return yield* Effect.fail(taskFailure(`cannot remove protected volume '${volname}' on '${st.storage}'`))
    }
    if (!present) yield* t.warn(`disk image '${volumePathOf(st, volname)}' does not exist`)
    else yield* Effect.sync(() => state.volumes.delete(volid))
    yield* t.step(0.5)
    yield* t.log(`Removed volume '${volid}'`)
  })

const deleteVolume: RouteDef = {
  method: "DELETE",
  path: "/nodes/:node/storage/:storage/content/:volume",
  schema: schema({
    storage: optional(storageSpec),
    volume: { type: "string" },
    delay: optional({ type: "integer", minimum: 1, maximum: 30 })
  }),
  // user => 'all': the checks depend on the volume (below)
  perm: { kind: "all" },
  handler: (ctx) =>
    Effect.gen(function*() {
      const node = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const state = ctx.env.state
      const { volid, storeid } = yield* realVolumeId(ctx.params)
      const st = state.storages.get(storeid)
      if (st === undefined) return yield* Effect.fail(die500(`storage '${storeid}' does not exist`))
      const volname = volumeName(volid)
      const parsed = parseVolname(st, volname)
      if (Either.isLeft(parsed)) return yield* Effect.fail(die500(parsed.left))
      const { vtype, owner } = parsed.right
      if (vtype === "backup" && owner !== undefined) {
        yield* check(ctx, `/storage/${storeid}`, ["Datastore.AllocateSpace"])
        yield* check(ctx, `/vms/${owner}`, ["VM.Backup"])
      } else {
        yield* check(ctx, `/storage/${storeid}`, ["Datastore.Allocate"])
      }
      if (vtype === "images" || vtype === "rootdir") {
        return yield* Effect.fail(die500(`deleting guest volumes through the content API is not modelled by the simulator`))
      }
      const upid = yield* startTask(ctx.env, {
        node,
        type: "imgdel",
        id: `${owner === undefined ? "" : `${owner}@`}${storeid}`,
        token: ctx.token,
        body: (t) => deleteBody(t, st, volid, volname)
      })
      const delay = pNum(ctx.params, "delay")
      if (delay === undefined) return reply(upid)
      // wait up to `delay` seconds: null when it ended well in time, its error when it failed
      const until = ctx.nowMs + delay * 1000
      for (;;) {
        const task = state.tasks.find((x) => x.upid === upid)
        if (task !== undefined && task.status === "stopped") {
          const status = task.exitstatus ?? "unexpected status"
          return status === "OK" || /^WARNINGS: \d+$/.test(status) ? reply(null) : yield* Effect.fail(die500(status))
        }
        const now = yield* Clock.currentTimeMillis
        if (now >= until) return reply(upid)
        yield* Effect.sleep(Duration.millis(Math.min(1000, until - now)))
      }
    })
}

/** Content.pm's real_volume_id: `storage:volname` in `volume`, or a bare volname with `storage`. */
const realVolumeId = (params: Params) =>
  Effect.suspend(() => {
    const volume = String(params["volume"])
    const storage = pStr(params, "storage")
    if (volume.includes(":")) {
      const m = /^([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$/i.exec(volume)
      if (m === null) return Effect.fail(paramError({ volume: `unable to parse volume ID '${volume}'\n` }))
      if (storage !== undefined && m[1] !== storage) {
        return Effect.fail(paramError({ volume: `storage ID mismatch (${m[1]!} != ${storage})\n` }))
      }
      return Effect.succeed({ volid: volume, storeid: m[1]! })
    }
    if (storage === undefined) return Effect.fail(paramError({ volume: "no storage specified - incomplete volume ID" }))
    return Effect.succeed({ volid: `${storage}:${volume}`, storeid: storage })
  })

export const storageRoutes: ReadonlyArray<RouteDef> = [createStorage, deleteVolume]
