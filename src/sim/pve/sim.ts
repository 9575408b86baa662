/**
 * makeSimPve: builds a simulated PVE host from a seed. Tasks are fibers forked into the caller's
 * scope and every delay runs on Effect's Clock, so a test under TestClock can drive hours of
 * host time deterministically. Besides the HttpApp, the handle offers inspection and
 * manipulation helpers for tests (state snapshots, faults, ACL grants/revokes, stale locks).
 */
import type { HttpApp } from "@effect/platform"
import { Clock, Effect, Either, Fiber, Option, type Scope } from "effect"
import { makeRequestLog, makeRng, type SimEnv, type SimRequest } from "./env.js"
import { SimPveSeedError } from "./errors.js"
import { type LxcConfig, parseMountPoint, validateConfig } from "./lxcconf.js"
import type { RawValue } from "./params.js"
import { type AclEntry, splitTokenId, subjectPrivileges } from "./privileges.js"
import { detachRemote } from "./remoteStore.js"
import { makeApp } from "./router.js"
import { guestHealth, type SimGuestHealth } from "./guestModel.js"
import { contentEntry } from "./routes/read.js"
import { destroyGuestVolumes, removeGuest } from "./routes/guest.js"
import { innerOf, newHex } from "./guestModel.js"
import {
  type ArchiveCorruption,
  crossCheckSeed,
  DEFAULT_TASK_DURATIONS_MS,
  type ServiceHealth,
  type SimPveFaults,
  type SimPveSeed,
  type SimTaskType,
  TASK_TYPES
} from "./seed.js"
import {
  applyStorageRuntime,
  pbsVerificationUpid,
  setStorageKey,
  type SimStorageView,
  storageFromSeed,
  storageView
} from "./routes/storage.js"
import {
  backupVolid,
  type GuestInner,
  type GuestState,
  type MacConflict,
  type NodeState,
  pbsVolid,
  rootfsSize,
  type SimState,
  type StorageRuntime,
  type StorageState,
  type TokenState,
  type VolumeState
} from "./state.js"

export interface SimPveOptions {
  /** overrides of the seed's fault settings */
  readonly faults?: Partial<SimPveFaults> | undefined
  /** SHA-256 fingerprint (AA:BB:..) of the certificate the server presents: shown in GET /nodes */
  readonly tlsFingerprint?: string | undefined
}

export interface SimGuestView {
  readonly vmid: number
  readonly node: string
  readonly status: "running" | "stopped"
  readonly lock: string | undefined
  readonly config: Readonly<LxcConfig>
  readonly snapshots: ReadonlyArray<{
    readonly name: string
    readonly description: string
    readonly snaptime: number
    readonly snapstate: string | undefined
    readonly config: Readonly<LxcConfig>
  }>
}

export interface SimTaskView {
  readonly upid: string
  readonly node: string
  readonly type: SimTaskType
  readonly id: string
  /** the full token id that started it */
  readonly user: string
  /** epoch ms (Clock time) it was started (the UPID's starttime is whole seconds) */
  readonly startedAtMs: number
  readonly status: "running" | "stopped"
  readonly exitstatus: string | undefined
  readonly log: ReadonlyArray<string>
}

export interface SimPve {
  /** the API as an HttpApp (serve it, or call it in-process with layerSimHttpClient) */
  readonly app: HttpApp.Default
  /** the default token: `user@realm!name` */
  readonly tokenId: string
  readonly tokenSecret: string
  /** ready-to-send `Authorization` header value for the default token */
  readonly authorization: string
  /** the first node's name */
  readonly node: string
  readonly guests: Effect.Effect<ReadonlyArray<SimGuestView>>
  readonly guest: (vmid: number) => Effect.Effect<Option.Option<SimGuestView>>
  readonly tasks: Effect.Effect<ReadonlyArray<SimTaskView>>
  /**
   * Every authenticated API call received, oldest first (the newest REQUEST_LOG_LIMIT): method,
   * path, parameters, whether the handler ran, the UPID it started, the status answered. For
   * tests that count what a program sent (e.g. no unsigned destroy ever reached PVE).
   */
  readonly requests: Effect.Effect<ReadonlyArray<SimRequestView>>
  /** The seq of the newest call logged (0 before any): a cheap "now" in the request log. */
  readonly requestSeq: Effect.Effect<number>
  readonly task: (upid: string) => Effect.Effect<Option.Option<SimTaskView>>
  /** storage content as the API lists it (unfiltered by permissions) */
  readonly storageContent: (storage: string) => Effect.Effect<ReadonlyArray<Record<string, unknown>>>
  readonly faults: Effect.Effect<SimPveFaults>
  /** changes fault injection; a new `seed` restarts the PRNGs */
  readonly setFaults: (faults: Partial<SimPveFaults>) => Effect.Effect<void>
  /**
   * Adds privileges for a user or token on a path, on top of what it already has there
   * (the entry written at `path` carries the union, so nothing inherited is lost).
   */
  readonly grant: (ugid: string, path: string, privs: ReadonlyArray<string>) => Effect.Effect<void>
  /** Removes privileges for a user or token on a path and below (like a narrower role on that path). */
  readonly revoke: (ugid: string, path: string, privs: ReadonlyArray<string>) => Effect.Effect<void>
  /** Sets or clears a guest's `lock` (e.g. the stale lock a crashed job leaves for `pct unlock`). */
  readonly setLock: (vmid: number, lock: string | undefined) => Effect.Effect<void>
  /**
   * What a root `pct set <vmid> --mpN <value>` (or `--delete mpN` for null) does to a guest's
   * config: the API refuses bind mounts to a token, so the Privileged layer's simulator
   * (privilegedSim.ts) calls this instead. Hot-plug: the guest may be running or stopped. Like pct,
   * it refuses a locked guest and a value that is not a mount point; deleting an absent key is a no-op.
   */
  readonly setMountPoint: (vmid: number, key: string, value: string | null) => Effect.Effect<SetMountPointResult>

  // what root does on the host beside the API: the golden build (Privileged, issue 12). Sim-side
  // only, like setMountPoint: none of these is an API request (the request log does not see them).

  /**
   * Root's `pct create <vmid> <template> --features keyctl=1,nesting=1 ...` (PVE refuses keyctl to
   * a token): a stopped container with `config`, its rootfs volume allocated. `exists` when the
   * vmid is taken (pct: "CT <vmid> already exists"), `invalid` for a config PVE would refuse.
   */
  readonly rootCreate: (vmid: number, config: LxcConfig) => Effect.Effect<"ok" | "exists" | "invalid">
  /** Root's `pct destroy <vmid>`: the container and its volumes; its backups stay. */
  readonly rootDestroy: (vmid: number) => Effect.Effect<"ok" | "absent" | "running" | "locked">
  /**
   * The archive a root `vzdump <vmid> --storage <s> --mode stop --compress zstd --remove 0` wrote
   * as `volid` (`<storage>:backup/vzdump-lxc-<vmid>-<stamp>.tar.zst`): a backup volume holding the
   * guest's config (keyctl and all), which the API can restore. `absent`: no such guest;
   * `invalid`: not such a name on a storage with backup content, or taken.
   */
  readonly rootDump: (vmid: number, volid: string) => Effect.Effect<"ok" | "absent" | "invalid">

  // storage faults and the guest model (README: "Storage", "Guest model")

  /** Every storage with its sim-side state (reachable or mounted, sizes). */
  readonly storages: Effect.Effect<ReadonlyArray<SimStorageView>>
  /**
   * Pulls/plugs a USB disk or takes an NFS/CIFS/PBS server down/up (`online`), or sets sizes.
   * For a storage id that does not exist yet, the values apply when POST /storage creates it.
   */
  readonly setStorage: (storage: string, runtime: StorageRuntime) => Effect.Effect<void>
  /** Damages (or repairs, null) an archive; false when there is no such backup volume. */
  readonly setArchive: (volid: string, change: { readonly corrupt: ArchiveCorruption | null }) => Effect.Effect<boolean>
  /** A PBS verify job over a pbs storage's snapshots: `failed` for damaged ones, `ok` for the rest. */
  readonly verifyPbs: (storage: string) => Effect.Effect<ReadonlyArray<{ readonly volid: string; readonly state: "ok" | "failed" }>>
  /** Whether a guest's services answer once booted; false when there is no such guest. */
  readonly setGuestServices: (vmid: number, services: ServiceHealth) => Effect.Effect<boolean>
  /** What `GET /sim-guest/{vmid}/health` answers. */
  readonly guestHealth: (vmid: number) => Effect.Effect<Option.Option<SimGuestHealth>>
  /** Guests started with a link-up NIC whose MAC another guest has, oldest first. */
  readonly macConflicts: Effect.Effect<ReadonlyArray<MacConflict>>
  /**
   * A guest lost as a failed disk or a root `pct destroy` loses it: stopped where it stood, its
   * config and the volumes on `storage` (its rootfs's) gone, volumes elsewhere left as orphans.
   */
  readonly loseGuest: (vmid: number, storage: string) => Effect.Effect<boolean>
  /** What identifies the guest inside its rootfs (materialized on first look); none for no such guest. */
  readonly guestInner: (vmid: number) => Effect.Effect<Option.Option<GuestInner>>
  /**
   * The golden first-boot unit reading a bootstrap directive (SPEC §10): once per `directive_id`,
   * regenerates what `reset` names (machine-id, SSH host keys, hostname from the config).
   */
  readonly applyDirective: (
    vmid: number,
    directive: { readonly directive_id: string; readonly reset: ReadonlyArray<string> }
  ) => Effect.Effect<"applied" | "already" | "absent">

  // host loss (issue 13)

  /**
   * What `pvesm set <storage> --encryption-key <file>` does (root, beside the API): the key file's
   * text to PVE's private store, `fingerprint || 1` into the storage config's `encryption-key`
   * (null: `--delete encryption-key`). Backups through the storage are then encrypted with the
   * key's real fingerprint, and reading a snapshot made with another key fails as PBS does.
   */
  readonly setStorageEncryptionKey: (storage: string, keyFileJson: string | null) => Effect.Effect<SetStorageKeyResult>
  /**
   * The box died and a fresh PVE install took its place: running tasks are killed, guests, tasks,
   * locks and every storage entry but the installer's (`keepStorages`, default local, local-lvm,
   * local-zfs, emptied) are gone. Backups on servers survive (PBS datastore and namespace, NFS
   * export, CIFS share: remoteStore.ts) and are listed again by a storage added on the same place.
   * Tokens, users and ACLs stay, so the re-enrolled agent can reach the simulator.
   */
  readonly wipeNode: (options?: { readonly keepStorages?: ReadonlyArray<string> }) => Effect.Effect<WipeNodeResult>
}

export type SetStorageKeyResult =
  | { readonly _tag: "ok"; readonly encryptionKey: string | undefined }
  | { readonly _tag: "refused"; readonly message: string }

export interface WipeNodeResult {
  readonly keptStorages: ReadonlyArray<string>
  /** backups now held only by their servers */
  readonly serverBackups: number
}

/** The storage ids a fresh PVE install creates. */
export const INSTALLER_STORAGES: ReadonlyArray<string> = ["local", "local-lvm", "local-zfs"]

/** The outcome of SimPve.setMountPoint (pct's refusals, by kind). */
export type SetMountPointResult = "ok" | "absent" | "locked" | "invalid"

export type SimRequestView = Readonly<SimRequest>

const cloneConfig = (c: LxcConfig): LxcConfig => ({ ...c })

const guestView = (g: GuestState): SimGuestView => ({
  vmid: g.vmid,
  node: g.node,
  status: g.status,
  lock: typeof g.config["lock"] === "string" ? g.config["lock"] : undefined,
  config: cloneConfig(g.config),
  snapshots: g.snapshots.map((s) => ({
    name: s.name,
    description: s.description,
    snaptime: s.snaptime,
    snapstate: s.snapstate,
    config: cloneConfig(s.config)
  }))
})

const validated = (raw: Readonly<Record<string, RawValue>>): LxcConfig =>
  // the seed was cross-checked, so a Left cannot happen here
  Either.getOrElse(validateConfig(raw), () => ({}))

const mergeDurations = (seed: SimPveSeed): Record<SimTaskType, number> => {
  const out = { ...DEFAULT_TASK_DURATIONS_MS }
  for (const type of TASK_TYPES) {
    const ms = seed.task_durations_ms[type]
    if (ms !== undefined) out[type] = ms
  }
  return out
}

/** Builds the initial state from a decoded, cross-checked seed. */
const buildState = (seed: SimPveSeed, options: SimPveOptions, nowMs: number): SimState => {
  const nowSec = Math.floor(nowMs / 1000)
  const nodes = new Map<string, NodeState>(seed.nodes.map((n) => [n.node, { ...n, bootMs: nowMs - n.uptime_s * 1000 }]))
  const firstNode = seed.nodes[0].node
  const tokens = new Map<string, TokenState>()
  for (const t of seed.tokens) {
    const split = splitTokenId(t.tokenid)
    if (split === undefined) continue
    tokens.set(t.tokenid, { tokenid: t.tokenid, userid: split.userid, tokenName: split.tokenName, privsep: t.privsep, secret: t.secret, expire: t.expire })
  }
  const acl: Array<AclEntry> = seed.acl.map((e) => ({
    path: e.path,
    ugid: e.ugid,
    propagate: e.propagate,
    privs: new Set(e.roles.flatMap((r) => seed.roles[r] ?? []))
  }))
  const volumes = new Map<string, VolumeState>()
  const guests = new Map<number, GuestState>()
  for (const g of seed.guests) {
    const config = validated(g.config)
    const running = g.status === "running"
    guests.set(g.vmid, {
      vmid: g.vmid,
      node: g.node ?? firstNode,
      status: g.status,
      config,
      snapshots: g.snapshots.map((s) => ({
        name: s.name,
        description: s.description,
        snaptime: s.snaptime,
        config: validated(s.config)
      })),
      startedAtMs: running ? nowMs - g.uptime_s * 1000 : undefined,
      pid: running ? 2000 + ((g.vmid * 131) % 90_000) : undefined,
      services: g.services
    })
    for (const [key, value] of Object.entries(config)) {
      if (key !== "rootfs" && !/^mp\d+$/.test(key)) continue
      const mp = Either.getOrUndefined(parseMountPoint(key, String(value)))
      if (mp === undefined || mp.type !== "volume" || mp.storage === undefined) continue
      volumes.set(mp.volume, {
        volid: mp.volume,
        storage: mp.storage,
        content: "rootdir",
        format: "raw",
        size: mp.size ?? 0,
        ctime: nowSec - 30 * 86_400,
        vmid: g.vmid
      })
    }
  }
  const storages = new Map<string, StorageState>(seed.storages.map((st) => [st.storage, storageFromSeed(st)]))
  for (const b of seed.backups) {
    const ctime = Math.floor(Date.parse(b.time) / 1000)
    const st = storages.get(b.storage)
    const pbs = st?.type === "pbs"
    const volid = pbs ? pbsVolid(b.storage, b.vmid, ctime) : backupVolid(b.storage, b.vmid, ctime, b.compression)
    volumes.set(volid, {
      volid,
      storage: b.storage,
      content: "backup",
      format: pbs ? "pbs-ct" : `tar.${b.compression}`,
      size: b.size,
      ctime,
      vmid: b.vmid,
      notes: b.notes,
      protected: b.protected,
      archiveConfig: validated(b.config),
      services: b.services,
      corrupt: b.corrupt,
      ...(pbs && st?.["encryption-key"] !== undefined ? { encrypted: st["encryption-key"] } : {}),
      ...(b.verification !== undefined ? { verification: { state: b.verification, upid: pbsVerificationUpid(st, b.vmid, ctime, ctime + 86_400) } } : {})
    })
  }
  for (const t of seed.templates) {
    const volid = `${t.storage}:vztmpl/${t.name}`
    // PVE reports templates as tgz / txz / tzst
    const format = `t${t.name.slice(t.name.lastIndexOf(".") + 1)}`
    volumes.set(volid, { volid, storage: t.storage, content: "vztmpl", format, size: t.size, ctime: t.ctime, vmid: undefined })
  }
  return {
    version: seed.version,
    nextid: { lower: seed.cluster.nextid_lower, upper: seed.cluster.nextid_upper },
    nodes,
    users: new Map(seed.users.map((u) => [u.userid, u])),
    tokens,
    acl,
    storages,
    pendingStorage: new Map(),
    guests,
    volumes,
    tasks: [],
    durations: mergeDurations(seed),
    quirks: seed.quirks,
    faults: { ...seed.faults, ...options.faults },
    authFailureDelayMs: seed.auth_failure_delay_ms,
    tlsFingerprint: options.tlsFingerprint,
    nextPid: 0x0003_1a2c,
    guestBootMs: seed.guest_boot_ms,
    macConflicts: [],
    remote: new Map()
  }
}

/** Rewrites `ugid`'s entries on `path` to carry exactly `privs` (propagating). */
const setPrivsAt = (state: SimState, ugid: string, path: string, privs: ReadonlySet<string>): void => {
  state.acl = [...state.acl.filter((e) => !(e.ugid === ugid && e.path === path)), { path, ugid, propagate: true, privs }]
}

export const makeSimPve = (
  seed: SimPveSeed,
  options: SimPveOptions = {}
): Effect.Effect<SimPve, SimPveSeedError, Scope.Scope> =>
  Effect.gen(function*() {
    const problem = crossCheckSeed(seed)
    if (problem !== undefined) return yield* Effect.fail(new SimPveSeedError({ source: "seed", message: problem }))
    const nowMs = yield* Clock.currentTimeMillis
    const state = buildState(seed, options, nowMs)
    const env: SimEnv = {
      state,
      scope: yield* Effect.scope,
      rng: makeRng(state.faults.seed),
      flocks: new Map(),
      vzdumpLocks: new Map(),
      fibers: new Map(),
      requests: makeRequestLog()
    }
    const app = yield* makeApp(env)
    const defaultTokenId = seed.default_token ?? seed.tokens[0]?.tokenid ?? ""
    const token = state.tokens.get(defaultTokenId)
    const secret = token?.secret ?? ""
    const taskView = (t: SimState["tasks"][number]): SimTaskView => ({
      upid: t.upid,
      node: t.node,
      type: t.type,
      id: t.id,
      user: t.token.tokenid,
      startedAtMs: t.startedAtMs,
      status: t.status,
      exitstatus: t.exitstatus,
      log: [...t.log]
    })
    const sim: SimPve = {
      app,
      tokenId: defaultTokenId,
      tokenSecret: secret,
      authorization: `PVEAPIToken=${defaultTokenId}=${secret}`,
      node: seed.nodes[0].node,
      guests: Effect.sync(() => [...state.guests.values()].sort((a, b) => a.vmid - b.vmid).map(guestView)),
      guest: (vmid) => Effect.sync(() => Option.map(Option.fromNullable(state.guests.get(vmid)), guestView)),
      tasks: Effect.sync(() => state.tasks.map(taskView)),
      requests: Effect.sync(() => env.requests.entries.map((r) => ({ ...r, params: { ...r.params } }))),
      requestSeq: Effect.sync(() => env.requests.seq),
      task: (upid) => Effect.sync(() => Option.map(Option.fromNullable(state.tasks.find((t) => t.upid === upid)), taskView)),
      storageContent: (storage) =>
        Effect.sync(() =>
          [...state.volumes.values()]
            .filter((v) => v.storage === storage)
            .sort((a, b) => a.volid.localeCompare(b.volid))
            .map(contentEntry)
        ),
      faults: Effect.sync(() => ({ ...state.faults })),
      setFaults: (faults) =>
        Effect.sync(() => {
          state.faults = { ...state.faults, ...faults }
          if (faults.seed !== undefined) Object.assign(env.rng, makeRng(faults.seed))
        }),
      grant: (ugid, path, privs) =>
        Effect.sync(() => {
          const have = new Set(subjectPrivileges(state.acl, ugid, path).keys())
          for (const p of privs) have.add(p)
          setPrivsAt(state, ugid, path, have)
        }),
      revoke: (ugid, path, privs) =>
        Effect.sync(() => {
          const have = new Set(subjectPrivileges(state.acl, ugid, path).keys())
          for (const p of privs) have.delete(p)
          setPrivsAt(state, ugid, path, have)
        }),
      setLock: (vmid, lock) =>
        Effect.sync(() => {
          const g = state.guests.get(vmid)
          if (g === undefined) return
          const { lock: _l, ...rest } = g.config
          g.config = lock === undefined ? rest : { ...rest, lock }
        }),
      setMountPoint: (vmid, key, value) =>
        Effect.sync((): SetMountPointResult => {
          const g = state.guests.get(vmid)
          if (g === undefined) return "absent"
          if (!/^mp(?:[0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$/.test(key)) return "invalid"
          if (typeof g.config["lock"] === "string") return "locked"
          if (value === null) {
            const { [key]: _gone, ...rest } = g.config
            g.config = rest
            return "ok"
          }
          if (Either.isLeft(parseMountPoint(key, value))) return "invalid"
          g.config = { ...g.config, [key]: value }
          return "ok"
        }),
      rootCreate: (vmid, config) =>
        Effect.flatMap(Clock.currentTimeMillis, (atMs) => Effect.sync(() => {
          if (state.guests.has(vmid)) return "exists" as const
          const checked = validateConfig(config)
          if (Either.isLeft(checked)) return "invalid" as const
          const rootfs = Either.getOrUndefined(parseMountPoint("rootfs", String(checked.right["rootfs"] ?? "")))
          if (rootfs === undefined || rootfs.type !== "volume" || rootfs.storage === undefined || state.volumes.has(rootfs.volume)) {
            return "invalid" as const
          }
          state.guests.set(vmid, {
            vmid,
            node: seed.nodes[0].node,
            status: "stopped",
            config: { ...checked.right },
            snapshots: [],
            startedAtMs: undefined,
            pid: undefined,
            services: "healthy"
          })
          state.volumes.set(rootfs.volume, {
            volid: rootfs.volume,
            storage: rootfs.storage,
            content: "rootdir",
            format: "raw",
            size: rootfs.size ?? 0,
            ctime: Math.floor(atMs / 1000),
            vmid
          })
          return "ok" as const
        })),
      rootDestroy: (vmid) =>
        Effect.sync(() => {
          const g = state.guests.get(vmid)
          if (g === undefined) return "absent" as const
          if (g.status === "running") return "running" as const
          if (typeof g.config["lock"] === "string") return "locked" as const
          destroyGuestVolumes(state, g, false)
          removeGuest(state, vmid)
          return "ok" as const
        }),
      rootDump: (vmid, volid) =>
        Effect.sync(() => {
          const g = state.guests.get(vmid)
          if (g === undefined) return "absent" as const
          const m = /^([A-Za-z][A-Za-z0-9._-]*):backup\/vzdump-lxc-(\d+)-(\d{4})_(\d{2})_(\d{2})-(\d{2})_(\d{2})_(\d{2})\.tar\.zst$/.exec(volid)
          const st = m === null ? undefined : state.storages.get(m[1] ?? "")
          if (m === null || Number(m[2]) !== vmid || st === undefined || !st.content.includes("backup") || state.volumes.has(volid)) {
            return "invalid" as const
          }
          const ctime = Math.floor(Date.UTC(Number(m[3]), Number(m[4]) - 1, Number(m[5]), Number(m[6]), Number(m[7]), Number(m[8])) / 1000)
          const { lock: _l, parent: _p, ...stored } = g.config
          state.volumes.set(volid, {
            volid,
            storage: st.storage,
            content: "backup",
            format: "tar.zst",
            size: Math.floor((rootfsSize(g.config) ?? 0) * 0.2 * 0.42),
            ctime,
            vmid,
            archiveConfig: stored,
            services: g.services ?? "healthy"
          })
          return "ok" as const
        }),
      storages: Effect.sync(() => [...state.storages.values()].map((st) => storageView(state, st))),
      setStorage: (storage, runtime) =>
        Effect.sync(() => {
          const st = state.storages.get(storage)
          if (st !== undefined) applyStorageRuntime(st, runtime)
          else state.pendingStorage.set(storage, { ...state.pendingStorage.get(storage), ...runtime })
        }),
      setArchive: (volid, change) =>
        Effect.sync(() => {
          const v = state.volumes.get(volid)
          if (v === undefined || v.content !== "backup") return false
          v.corrupt = change.corrupt ?? undefined
          return true
        }),
      verifyPbs: (storage) =>
        Effect.flatMap(Clock.currentTimeMillis, (nowMs) =>
          Effect.sync(() => {
            const st = state.storages.get(storage)
            if (st === undefined || st.type !== "pbs") return []
            return [...state.volumes.values()]
              .filter((v) => v.storage === storage && v.content === "backup")
              .sort((a, b) => a.volid.localeCompare(b.volid))
              .map((v) => {
                const verdict = v.corrupt === undefined ? "ok" as const : "failed" as const
                v.verification = { state: verdict, upid: pbsVerificationUpid(st, v.vmid ?? 0, v.ctime, Math.floor(nowMs / 1000)) }
                return { volid: v.volid, state: verdict }
              })
          })),
      setGuestServices: (vmid, services) =>
        Effect.sync(() => {
          const g = state.guests.get(vmid)
          if (g === undefined) return false
          g.services = services
          return true
        }),
      loseGuest: (vmid, storage) =>
        Effect.sync(() => {
          const g = state.guests.get(vmid)
          if (g === undefined) return false
          for (const v of [...state.volumes.values()]) {
            if (v.vmid === vmid && v.storage === storage && v.content !== "backup") state.volumes.delete(v.volid)
          }
          removeGuest(state, vmid)
          return true
        }),
      guestInner: (vmid) =>
        Effect.sync(() => {
          const g = state.guests.get(vmid)
          return g === undefined ? Option.none() : Option.some(innerOf(g))
        }),
      applyDirective: (vmid, directive) =>
        Effect.sync(() => {
          const g = state.guests.get(vmid)
          if (g === undefined) return "absent" as const
          const inner = innerOf(g)
          if (inner.applied.includes(directive.directive_id)) return "already" as const
          g.inner = {
            machineId: directive.reset.includes("machine-id") ? newHex(16) : inner.machineId,
            sshHostKey: directive.reset.includes("ssh-host-keys") ? newHex(32) : inner.sshHostKey,
            hostname: directive.reset.includes("hostname") ? (typeof g.config["hostname"] === "string" ? g.config["hostname"] : null) : inner.hostname,
            applied: [...inner.applied, directive.directive_id]
          }
          return "applied" as const
        }),
      guestHealth: (vmid) =>
        Effect.flatMap(Clock.currentTimeMillis, (nowMs) =>
          Effect.sync(() => Option.map(Option.fromNullable(state.guests.get(vmid)), (g) => guestHealth(state, g, nowMs)))),
      macConflicts: Effect.sync(() => [...state.macConflicts]),
      setStorageEncryptionKey: (storage, keyFileJson) =>
        Effect.sync((): SetStorageKeyResult =>
          Either.match(setStorageKey(state, storage, keyFileJson), {
            onLeft: (message) => ({ _tag: "refused", message }),
            onRight: (encryptionKey) => ({ _tag: "ok", encryptionKey })
          })
        ),
      wipeNode: (options) =>
        Effect.gen(function*() {
          // the box is gone mid-task: its workers die with it (their kill hooks run first)
          yield* Effect.forEach([...env.fibers.values()], (f) => Fiber.interrupt(f), { discard: true })
          return yield* Effect.sync((): WipeNodeResult => {
            const keep = new Set(options?.keepStorages ?? INSTALLER_STORAGES)
            detachRemote(state)
            const serverBackups = [...state.remote.values()].reduce((n, vs) => n + vs.length, 0)
            state.volumes.clear()
            state.guests.clear()
            state.tasks.length = 0
            env.fibers.clear()
            env.flocks.clear()
            env.vzdumpLocks.clear()
            state.pendingStorage.clear()
            state.macConflicts.length = 0
            for (const id of [...state.storages.keys()]) if (!keep.has(id)) state.storages.delete(id)
            return { keptStorages: [...state.storages.keys()].sort(), serverBackups }
          })
        })
    }
    return sim
  })
