/**
 * The simulated host's mutable state and the pure builders that render it in PVE's JSON shapes.
 * State is plain mutable data: every read-check-write happens inside one `Effect.sync` block in a
 * handler or task, which is atomic on the JS event loop, so no further locking is needed for
 * consistency (PVE's own flock is modelled separately, in sim.ts, because clients can see it).
 */
import { Either } from "effect"
import { formatUpid } from "../../schema/ids.js"
import {
  configFileText,
  type LxcConfig,
  parseMountPoint,
  type SnapshotSection,
  sha1Hex
} from "./lxcconf.js"
import type { AclEntry, TokenIdentity } from "./privileges.js"
import type { RemoteVolume } from "./remoteStore.js"
import type {
  ArchiveCorruption,
  ServiceHealth,
  SimNodeSeed,
  SimPveFaults,
  SimPveQuirks,
  SimStorageSeed,
  SimTaskType
} from "./seed.js"

export interface SnapshotState {
  readonly name: string
  description: string
  readonly snaptime: number
  config: LxcConfig
  /** set while a snapshot is being created or deleted (and after a failed delete) */
  snapstate?: "prepare" | "delete" | undefined
}

export interface GuestState {
  readonly vmid: number
  readonly node: string
  status: "running" | "stopped"
  /** includes `lock` and `parent` when set */
  config: LxcConfig
  snapshots: Array<SnapshotState>
  startedAtMs: number | undefined
  pid: number | undefined
  /** sim-only: do its services answer once booted (the guest model; default healthy) */
  services?: ServiceHealth | undefined
  /** sim-only: the archive it was last restored from */
  restoredFrom?: string | undefined
  /** sim-only: what lives inside the guest's rootfs and identifies it (README: "Guest model") */
  inner?: GuestInner | undefined
}

/**
 * Sim-only: the in-guest identity a golden first-boot unit manages (SPEC §10): machine-id, the
 * SSH host key's fingerprint, and the bootstrap directives it already applied (once per id).
 * Lives in the rootfs: vzdump copies it into the archive, a restore brings the archive's back.
 */
export interface GuestInner {
  readonly machineId: string
  readonly sshHostKey: string
  readonly hostname: string | null
  readonly applied: ReadonlyArray<string>
}

export type VolumeContent = "rootdir" | "images" | "backup" | "vztmpl" | "iso"

export interface VolumeState {
  readonly volid: string
  readonly storage: string
  readonly content: VolumeContent
  readonly format: string
  size: number
  /** epoch seconds */
  readonly ctime: number
  readonly vmid: number | undefined
  notes?: string | undefined
  protected?: boolean | undefined
  /** backups: the guest config stored in the archive */
  readonly archiveConfig?: LxcConfig | undefined
  /** bytes it takes on its storage when that differs from `size` (PBS chunks: compressed, deduplicated) */
  readonly stored?: number | undefined
  /**
   * dir storages: written into the mount point's directory while the disk was not mounted (and
   * the storage has no is_mountpoint), so it lives on the root filesystem, hidden once mounted.
   */
  readonly underlying?: boolean | undefined
  /** backups, sim-only: the source guest's services when it was taken */
  readonly services?: ServiceHealth | undefined
  /** backups, sim-only: the source guest's in-guest identity when it was taken */
  readonly inner?: GuestInner | undefined
  /** backups, sim-only: damage injected by a test */
  corrupt?: ArchiveCorruption | undefined
  /** PBS snapshots: the key fingerprint (or "1") when encrypted */
  readonly encrypted?: string | undefined
  /** PBS snapshots: the last verify job's verdict */
  verification?: { readonly state: "ok" | "failed"; readonly upid: string } | undefined
}

/**
 * A storage: its config as PVE keeps it in storage.cfg, plus the simulated host's view of it
 * (reachable or mounted, size, usage outside simulated volumes) and secrets PVE keeps outside
 * storage.cfg (never listed).
 */
export interface StorageState extends Omit<SimStorageSeed, "active" | "total" | "used"> {
  /** dir: filesystem mounted; nfs/cifs/pbs: server reachable */
  online: boolean
  /** bumped every time the storage goes offline: a task that saw another epoch lost its target midway */
  epoch: number
  total: number
  /** usage not accounted to simulated volumes */
  used: number
  /** PBS `master-pubkey` set (listed as 1) */
  readonly masterPubkey?: boolean | undefined
  /** priv/storage/<id>.pw and .enc: never listed */
  readonly secrets?: { readonly password?: string | undefined; readonly encryptionKey?: string | undefined } | undefined
}

/** Sim-only runtime for a storage id (also set ahead of its creation through POST /storage). */
export interface StorageRuntime {
  readonly online?: boolean | undefined
  readonly total?: number | undefined
  readonly used?: number | undefined
}

/** A guest started with a link-up NIC whose MAC another guest also has (see README: guest model). */
export interface MacConflict {
  /** Clock ms of the start */
  readonly atMs: number
  readonly vmid: number
  readonly iface: string
  readonly hwaddr: string
  readonly otherVmid: number
  readonly otherIface: string
  /** the other guest was running with that NIC's link up: both were on the LAN at once */
  readonly otherLive: boolean
}

export interface TaskState {
  readonly upid: string
  readonly node: string
  readonly pid: number
  readonly pstart: number
  readonly starttime: number
  /** epoch ms (Clock time) the task was started: finer than the UPID's starttime, for tests */
  readonly startedAtMs: number
  readonly type: SimTaskType
  readonly id: string
  readonly token: TokenIdentity
  status: "running" | "stopped"
  exitstatus: string | undefined
  endtime: number | undefined
  readonly log: Array<string>
}

export interface NodeState extends SimNodeSeed {
  /** epoch ms the node booted (Clock time at simulator start minus the seeded uptime) */
  readonly bootMs: number
}

export interface TokenState extends TokenIdentity {
  readonly secret: string
  readonly expire: number
}

export interface UserState {
  readonly userid: string
  readonly enable: boolean
  readonly expire: number
}

export interface SimState {
  readonly version: { readonly version: string; readonly release: string; readonly repoid: string }
  readonly nextid: { readonly lower: number; readonly upper: number }
  readonly nodes: Map<string, NodeState>
  readonly users: Map<string, UserState>
  readonly tokens: Map<string, TokenState>
  acl: Array<AclEntry>
  readonly storages: Map<string, StorageState>
  /** runtime for storages not created yet (applied by POST /storage) */
  readonly pendingStorage: Map<string, StorageRuntime>
  readonly guests: Map<number, GuestState>
  readonly volumes: Map<string, VolumeState>
  readonly tasks: Array<TaskState>
  readonly durations: Record<SimTaskType, number>
  readonly quirks: SimPveQuirks
  faults: SimPveFaults
  readonly authFailureDelayMs: number
  readonly tlsFingerprint: string | undefined
  nextPid: number
  /** sim-only: Clock ms from a guest's start until its services answer */
  readonly guestBootMs: number
  readonly macConflicts: Array<MacConflict>
  /** sim-only: backups on servers this node has no storage entry for (remoteStore.ts) */
  readonly remote: Map<string, ReadonlyArray<RemoteVolume>>
}

// ---------------------------------------------------------------------------------------------
// Small helpers

export const MiB = 1024 ** 2
export const GiB = 1024 ** 3

export const releaseMajor = (state: SimState): number => Number.parseInt(state.version.release, 10)

export const guestDigest = (g: GuestState): string =>
  sha1Hex(configFileText(g.config, g.snapshots.map((s): SnapshotSection => ({ name: s.name, config: snapshotFileConfig(s) }))))

const snapshotFileConfig = (s: SnapshotState): LxcConfig => ({
  ...s.config,
  ...(s.description.length > 0 ? { description: s.description } : {}),
  snaptime: s.snaptime,
  ...(s.snapstate !== undefined ? { snapstate: s.snapstate } : {})
})

export const rootfsSize = (config: LxcConfig): number | undefined => {
  const rootfs = config["rootfs"]
  if (typeof rootfs !== "string") return undefined
  return Either.match(parseMountPoint("rootfs", rootfs), { onLeft: () => undefined, onRight: (mp) => mp.size })
}

/** Volume ids referenced by a config (rootfs, mpN volumes, unusedN). */
export const configVolumes = (config: LxcConfig): ReadonlyArray<string> => {
  const out: Array<string> = []
  for (const [key, value] of Object.entries(config)) {
    if (key === "rootfs" || /^mp\d+$/.test(key)) {
      Either.match(parseMountPoint(key, String(value)), {
        onLeft: () => undefined,
        onRight: (mp) => {
          if (mp.type === "volume") out.push(mp.volume)
        }
      })
    } else if (/^unused\d+$/.test(key)) {
      out.push(String(value))
    }
  }
  return out
}

/** Next free `vm-<vmid>-disk-<n>` on a storage. */
export const allocateVolumeName = (state: SimState, storage: string, vmid: number, taken: ReadonlySet<string> = new Set()): string => {
  const seed = state.storages.get(storage)
  for (let n = 0; ; n++) {
    const volid =
      seed?.type === "dir" || seed?.type === "nfs" || seed?.type === "cifs"
        ? `${storage}:${vmid}/vm-${vmid}-disk-${n}.raw`
        : `${storage}:vm-${vmid}-disk-${n}`
    if (!state.volumes.has(volid) && !taken.has(volid)) return volid
  }
}

export const volumeName = (volid: string): string => volid.slice(volid.indexOf(":") + 1)

/** `2026_01_14-03_00_02` (UTC: the simulated node runs in UTC) */
export const archiveStamp = (epochSeconds: number): string => {
  const d = new Date(epochSeconds * 1000)
  const p = (n: number) => String(n).padStart(2, "0")
  return `${d.getUTCFullYear()}_${p(d.getUTCMonth() + 1)}_${p(d.getUTCDate())}-${p(d.getUTCHours())}_${p(d.getUTCMinutes())}_${p(d.getUTCSeconds())}`
}

/** `2026-01-14 03:00:02` as vzdump logs it */
export const logTimestamp = (epochSeconds: number): string => {
  const d = new Date(epochSeconds * 1000)
  const p = (n: number) => String(n).padStart(2, "0")
  return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`
}

export const backupVolid = (storage: string, vmid: number, epochSeconds: number, ext: string): string =>
  `${storage}:backup/vzdump-lxc-${vmid}-${archiveStamp(epochSeconds)}.tar.${ext}`

/** `2026-01-14T03:00:02Z`: a PBS snapshot's backup time (UTC, second precision) */
export const pbsTime = (epochSeconds: number): string => new Date(epochSeconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z")

/** `<storage>:backup/ct/<vmid>/<time>`, as PBSPlugin's print_volid */
export const pbsVolid = (storage: string, vmid: number, epochSeconds: number): string =>
  `${storage}:backup/ct/${vmid}/${pbsTime(epochSeconds)}`

export const storageContentString = (s: { readonly content: ReadonlyArray<string> }): string => [...s.content].sort().join(",")

// ---------------------------------------------------------------------------------------------
// Tasks

export const newTask = (
  state: SimState,
  args: { readonly node: NodeState; readonly type: SimTaskType; readonly id: string; readonly token: TokenIdentity; readonly nowMs: number }
): TaskState => {
  const pid = state.nextPid
  state.nextPid += 1 + (pid % 7)
  // pstart is the worker's start in clock ticks since boot (USER_HZ = 100)
  const pstart = Math.max(1, Math.floor((args.nowMs - args.node.bootMs) / 10))
  const starttime = Math.floor(args.nowMs / 1000)
  const upid = formatUpid({
    node: args.node.node,
    pid,
    pstart,
    starttime,
    type: args.type,
    id: args.id,
    user: args.token.tokenid
  })
  const task: TaskState = {
    upid,
    node: args.node.node,
    pid,
    pstart,
    starttime,
    startedAtMs: args.nowMs,
    type: args.type,
    id: args.id,
    token: args.token,
    status: "running",
    exitstatus: undefined,
    endtime: undefined,
    log: []
  }
  state.tasks.push(task)
  return task
}

export const taskStatusJson = (t: TaskState): Record<string, unknown> => ({
  upid: t.upid,
  node: t.node,
  pid: t.pid,
  pstart: t.pstart,
  starttime: t.starttime,
  type: t.type,
  id: t.id,
  user: t.token.userid,
  tokenid: t.token.tokenName,
  status: t.status,
  ...(t.status === "stopped" ? { exitstatus: t.exitstatus ?? "unexpected status" } : {})
})

// ---------------------------------------------------------------------------------------------
// Guest status rendering

const hashish = (n: number): number => ((n * 2654435761) >>> 0) / 2 ** 32

/** One `GET /nodes/{node}/lxc` entry (also the base of status/current). */
export const guestStatusJson = (
  state: SimState,
  g: GuestState,
  nowMs: number,
  mode: "list" | "current"
): Record<string, unknown> => {
  const conf = g.config
  const running = g.status === "running"
  const maxdisk = rootfsSize(conf) ?? 4 * GiB
  const maxmem = Number(conf["memory"] ?? 512) * MiB
  const maxswap = Number(conf["swap"] ?? 512) * MiB
  const uptime = running && g.startedAtMs !== undefined ? Math.max(0, Math.floor((nowMs - g.startedAtMs) / 1000)) : 0
  const h = hashish(g.vmid)
  const node = state.nodes.get(g.node)
  const cpulimit = conf["cpulimit"]
  const cpus =
    conf["cores"] !== undefined
      ? Number(conf["cores"])
      : cpulimit !== undefined && Number(cpulimit) > 0
        ? state.quirks.cpulimit_as_string
          ? String(cpulimit)
          : Number(cpulimit)
        : (node?.maxcpu ?? 1)
  const mem = running ? Math.floor(maxmem * (0.12 + 0.2 * h)) : 0
  const disk = running ? Math.floor(maxdisk * (0.15 + 0.3 * h)) : 0
  const hostname = typeof conf["hostname"] === "string" ? conf["hostname"].replace(/\s/g, "") : `CT${g.vmid}`
  const asInt = (n: number): number | string =>
    mode === "current" && state.quirks.status_ints_as_string ? String(n) : n
  const out: Record<string, unknown> = {
    vmid: mode === "list" && state.quirks.vmid_as_string ? String(g.vmid) : asInt(g.vmid),
    type: "lxc",
    status: g.status,
    name: hostname,
    cpus,
    cpu: running ? Math.round((0.002 + 0.03 * h) * 1e6) / 1e6 : 0,
    mem: asInt(mem),
    maxmem,
    swap: asInt(0),
    maxswap,
    disk: asInt(disk),
    maxdisk: asInt(maxdisk),
    diskread: asInt(running ? uptime * 3072 + 52_428_800 : 0),
    diskwrite: asInt(running ? uptime * 2048 + 10_485_760 : 0),
    netin: running ? uptime * 1300 : 0,
    netout: running ? uptime * 900 : 0,
    uptime
  }
  if (running && g.pid !== undefined) out["pid"] = asInt(g.pid)
  if (conf["template"] === 1) out["template"] = 1
  if (typeof conf["lock"] === "string") out["lock"] = conf["lock"]
  if (typeof conf["tags"] === "string") out["tags"] = conf["tags"]
  if (running && releaseMajor(state) >= 9) {
    out["pressurecpusome"] = 0
    out["pressurecpufull"] = 0
    out["pressureiosome"] = 0
    out["pressureiofull"] = 0
    out["pressurememorysome"] = 0
    out["pressurememoryfull"] = 0
  }
  if (mode === "current") out["ha"] = { managed: 0 }
  return out
}

/** A config as GET .../config returns it (numbers vs strings per PVE's typing). */
export const configJson = (state: SimState, config: LxcConfig, digest: string): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(config).sort()) {
    const value = config[key]
    out[key] = key === "cpulimit" && state.quirks.cpulimit_as_string ? String(value) : value
  }
  out["digest"] = digest
  return out
}

export const runningGuestsMem = (state: SimState, node: string, nowMs: number): number => {
  let total = 0
  for (const g of state.guests.values()) {
    if (g.node === node && g.status === "running") total += Number(guestStatusJson(state, g, nowMs, "list")["mem"])
  }
  return total
}
