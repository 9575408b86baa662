/**
 * Proxmox: the typed PVE REST client (SPEC §2). It never shells out: its layer requires only an
 * HttpClient and its own config block (ProxmoxSettings: it cannot read the hub key), and every
 * method is `R = never` (checked in test/fence.test.ts). Every PVE-originated text is scrubbed
 * of the token secret before it becomes an error.
 *
 * Every mutating call returns what PVE returns (a UPID, or nothing for synchronous PUT config);
 * `waitTask` is the only way to learn whether the work happened. Writes are never retried here:
 * a 596 does not mean the change did not land, so callers read back first (SPEC §17).
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import type { HttpClientResponse } from "@effect/platform"
import { Cause, Clock, Context, Deferred, Duration, Effect, Either, Exit, Fiber, FiberId, Layer, Option, Redacted, Schedule, Schema } from "effect"
import { type CallKind, type CallOf, Clearance, ClearanceRefused } from "../schema/clearance.js"
import type { NodeName, SnapshotName, StorageId, VmId, VolumeId } from "../schema/ids.js"
import { NodeName as NodeNameSchema, type Upid, upidParts, VmId as VmIdSchema } from "../schema/ids.js"
import type { MissingPermission, ProxmoxError, WaitError } from "../schema/proxmox.js"
import {
  CreateStorageResponse,
  Envelope,
  ErrorBody,
  GuestConfig,
  GuestStatus,
  GuestSummary,
  NextIdResponse,
  NodeEntry,
  NodeStatus,
  NodeStorageEntry,
  NullResponse,
  PveApiError,
  PveDecodeError,
  PveLocked,
  PveTaskFailed,
  PveTaskTimeout,
  PveTransportError,
  PveVersion,
  SnapshotEntry,
  StorageConfigEntry,
  StorageContentEntry,
  TaskListEntry,
  TaskLogPage,
  TaskStatus,
  UpidOrNull,
  UpidOrOk,
  UpidResponse
} from "../schema/proxmox.js"
import { deepestCauseMessage, formatIssues, makeScrubber, type Scrubber } from "../schema/text.js"
import { ProxmoxSettings } from "./Config.js"
import { REASON_HEADER } from "./PveTransport.js"
import { LoopProgress } from "./LoopProgress.js"
import { type PveOutcome, recordPveRequest, recordTaskWait } from "./Metrics.js"

// ---------------------------------------------------------------------------------------------
// Parameters

/** Form values; booleans become 1/0 in exactly one place (PVE rejects true/false in forms). */
export type Param = string | number | boolean | undefined
export type Params = Readonly<Record<string, Param>>

export const encodeParams = (params: Params): Array<[string, string]> =>
  Object.entries(params).flatMap(([k, v]) =>
    v === undefined ? [] : [[k, typeof v === "boolean" ? (v ? "1" : "0") : String(v)] as [string, string]]
  )

export interface RestoreOptions {
  readonly vmid: VmId
  /** The backup volume to restore from (golden archive or a customer backup). */
  readonly archive: VolumeId
  /** Target storage for the guest's volumes. */
  readonly storage: StorageId
  /** Fresh MACs for every netN in the backup. */
  readonly unique?: boolean
  readonly hostname?: string
  readonly cores?: number
  readonly memoryMiB?: number
  readonly swapMiB?: number
  /** ";"-joined PVE tags; the create path puts its instance marker here. */
  readonly tags?: string
  readonly start?: boolean
  /**
   * Replaces the backup's net0 (e.g. a restore-test's scratch guest: link down, fresh MAC).
   * Refused together with `unique`: PVE would overwrite it with the backup's net0 and a new MAC.
   */
  readonly net0?: NetOverride
  /**
   * Overrides the backup's `protection` flag (a restore-test's scratch guest: false, or it could
   * not be torn down when the backed-up guest was protected). VM.Config.Options.
   */
  readonly protection?: boolean
  /**
   * An explicit volume layout (issue 12): `rootfs` and `mpN` values such as `local-lvm:8` or
   * `usb1:100,mp=/srv/media,backup=0`, allocated fresh. Without it PVE recreates the archive's
   * layout on `storage`, and refuses (for a token) an archive whose config holds a bind mount,
   * which every guest with a controller has (the bootstrap mount).
   */
  readonly layout?: { readonly rootfs: string; readonly mounts: Readonly<Record<string, string>> }
}

/** A `netN` value for a restore. Without `hwaddr`, PVE generates a fresh MAC. */
export interface NetOverride {
  /** interface name inside the guest, e.g. eth0 */
  readonly name: string
  readonly bridge: string
  /** link_down=1: the NIC exists but is disconnected from the bridge */
  readonly linkDown: boolean
  readonly hwaddr?: string
  /** "dhcp", "manual" or an IPv4 CIDR */
  readonly ip?: string
  readonly firewall?: boolean
}

export type StorageContentType = "backup" | "images" | "rootdir" | "vztmpl" | "iso" | "snippets" | "import"

interface StorageCommon {
  readonly storage: StorageId
  readonly content: ReadonlyArray<StorageContentType>
  readonly nodes?: ReadonlyArray<NodeName>
  readonly disable?: boolean
}

/**
 * A new PVE storage entry, per type. Every storage the agent creates gets
 * `prune-backups=keep-all=1`: the agent prunes only its own archives, PVE never prunes. Secrets
 * (passwords, a PBS key) are Redacted and never appear in errors.
 */
export type CreateStorageParams =
  | StorageCommon & {
    readonly type: "dir"
    readonly path: string
    /** PVE treats the storage as offline while nothing is mounted at `path` (a USB disk) */
    readonly isMountpoint?: boolean
    readonly createBasePath?: boolean
    readonly createSubdirs?: boolean
  }
  | StorageCommon & {
    readonly type: "nfs"
    readonly server: string
    readonly export: string
    /** default /mnt/pve/<storage> */
    readonly path?: string
    readonly options?: string
  }
  | StorageCommon & {
    readonly type: "cifs"
    readonly server: string
    readonly share: string
    readonly subdir?: string
    readonly username?: string
    readonly password?: Redacted.Redacted<string>
    readonly domain?: string
    readonly smbversion?: "default" | "2.0" | "2.1" | "3" | "3.0" | "3.11"
    readonly path?: string
  }
  | StorageCommon & {
    readonly type: "pbs"
    readonly server: string
    readonly datastore: string
    /** a PBS token id `user@realm!name` */
    readonly username: string
    /** the PBS token secret */
    readonly password: Redacted.Redacted<string>
    /** the PBS server certificate's SHA-256 fingerprint (needed unless it chains to a trusted CA) */
    readonly fingerprint?: string
    readonly namespace?: string
    readonly port?: number
    /** a key file's JSON, or "autogen" to let PVE make one (handed back once in CreatedStorage) */
    readonly encryptionKey?: "autogen" | Redacted.Redacted<string>
  }

export interface CreatedStorage {
  readonly storage: string
  readonly type: string
  /** The PBS key PVE generated or stored: the only time it is handed back; save it off-host. */
  readonly encryptionKey: Option.Option<Redacted.Redacted<string>>
}

export interface VzdumpOptions {
  readonly vmid: VmId
  readonly storage: StorageId
  readonly mode?: "snapshot" | "suspend" | "stop"
  readonly compress?: "zstd" | "gzip" | "lzo" | "0"
  readonly notesTemplate?: string
  readonly protected?: boolean
  // No prune option: every agent-initiated vzdump is sent with remove=0, so the storage's
  // prune-backups rule can never delete an older archive as a side effect (issue 8, finding 3).
}

export interface ConfigChange {
  /** Keys to set, e.g. { cores: 2, memory: 2048, description: "..." }. */
  readonly set: Params
  /** Keys to remove. */
  readonly delete?: ReadonlyArray<string>
  /** Refuse if the config changed since this digest was read. */
  readonly digest?: string
}

export interface WaitOptions {
  /** Give up waiting (not the task) after this long; default proxmox.task_timeout_seconds. */
  readonly timeout?: Duration.DurationInput
  /** Treat `WARNINGS: n` as success. Off by default: only `OK` is success. */
  readonly acceptWarnings?: boolean
}

export interface ProxmoxShape {
  /** The node this agent manages (config, or the cluster's only node). */
  readonly node: Effect.Effect<NodeName, ProxmoxError>
  readonly version: Effect.Effect<PveVersion, ProxmoxError>
  readonly nodes: Effect.Effect<ReadonlyArray<NodeEntry>, ProxmoxError>
  readonly nodeStatus: Effect.Effect<NodeStatus, ProxmoxError>
  readonly listGuests: Effect.Effect<ReadonlyArray<GuestSummary>, ProxmoxError>
  readonly guestStatus: (vmid: VmId) => Effect.Effect<GuestStatus, ProxmoxError>
  /**
   * Tasks of `type` for guest `vmid` the node lists as running: e.g. a destroy whose POST ended in
   * a 596 or a cut connection may be running although no UPID came back.
   */
  readonly runningTasksOf: (vmid: VmId, type: string) => Effect.Effect<ReadonlyArray<Upid>, ProxmoxError>
  readonly guestConfig: (vmid: VmId, opts?: { readonly snapshot?: SnapshotName }) => Effect.Effect<GuestConfig, ProxmoxError>
  readonly listSnapshots: (vmid: VmId) => Effect.Effect<ReadonlyArray<SnapshotEntry>, ProxmoxError>
  readonly storageList: Effect.Effect<ReadonlyArray<StorageConfigEntry>, ProxmoxError>
  readonly nodeStorage: Effect.Effect<ReadonlyArray<NodeStorageEntry>, ProxmoxError>
  readonly storageContent: (
    storage: StorageId,
    opts?: { readonly content?: string; readonly vmid?: VmId }
  ) => Effect.Effect<ReadonlyArray<StorageContentEntry>, ProxmoxError>
  /** A free vmid (nothing is reserved: creators race and retry). With `vmid`, asks if that one is free. */
  readonly nextId: (vmid?: VmId) => Effect.Effect<VmId, ProxmoxError>
  readonly taskStatus: (upid: Upid) => Effect.Effect<TaskStatus, ProxmoxError>
  readonly taskLog: (
    upid: Upid,
    opts?: { readonly start?: number; readonly limit?: number }
  ) => Effect.Effect<{ readonly lines: ReadonlyArray<string>; readonly total: number }, ProxmoxError>
  /** The last `n` log lines of a task. */
  readonly taskLogTail: (upid: Upid, n?: number) => Effect.Effect<ReadonlyArray<string>, ProxmoxError>

  /**
   * The guest config stored inside a backup archive (`GET /nodes/{node}/vzdump/extractconfig`),
   * as PVE prints it: `key: value` lines, snapshots as `[name]` sections (dropped here).
   */
  readonly extractConfig: (archive: VolumeId) => Effect.Effect<Readonly<Record<string, string>>, ProxmoxError>
  /** Restore into a vmid that holds no guest (never with force: PVE refuses an existing one). */
  readonly restore: (opts: RestoreOptions) => Effect.Effect<Upid, ProxmoxError>
  /** Restore over an existing stopped guest (`force=1`): its volumes are destroyed first. */
  readonly restoreOverwrite: (
    opts: RestoreOptions,
    clearance: Clearance<"restore-overwrite">
  ) => Effect.Effect<Upid, ProxmoxError | ClearanceRefused>
  /** None when PVE answers "OK": the guest is not on this node, nothing was started. Always remove=0. */
  readonly vzdump: (opts: VzdumpOptions) => Effect.Effect<Option.Option<Upid>, ProxmoxError>
  readonly snapshot: (vmid: VmId, name: SnapshotName, description?: string) => Effect.Effect<Upid, ProxmoxError>
  readonly rollback: (
    vmid: VmId,
    name: SnapshotName,
    opts: { readonly start?: boolean },
    clearance: Clearance<"rollback">
  ) => Effect.Effect<Upid, ProxmoxError | ClearanceRefused>
  readonly deleteSnapshot: (
    vmid: VmId,
    name: SnapshotName,
    opts: { readonly force?: boolean },
    clearance: Clearance<"delete-snapshot">
  ) => Effect.Effect<Upid, ProxmoxError | ClearanceRefused>
  /**
   * Dual mode: Some(upid) → wait for it; None → applied synchronously. Only data-safe keys
   * (DATA_SAFE_CONFIG_KEYS); anything else is refused here, unsent: use setConfigVolumes.
   */
  readonly setConfig: (vmid: VmId, change: ConfigChange) => Effect.Effect<Option.Option<Upid>, ProxmoxError | ClearanceRefused>
  /** A config change touching keys that can detach or drop a volume; cleared for exactly those keys. */
  readonly setConfigVolumes: (
    vmid: VmId,
    change: ConfigChange,
    clearance: Clearance<"set-config-volumes">
  ) => Effect.Effect<Option.Option<Upid>, ProxmoxError | ClearanceRefused>
  /** `size` as PVE takes it: "+2G" grows by, "16G" sets absolute. Irreversible: PVE cannot shrink. */
  readonly resize: (
    vmid: VmId,
    disk: string,
    size: string,
    clearance: Clearance<"resize">,
    digest?: string
  ) => Effect.Effect<Upid, ProxmoxError | ClearanceRefused>
  readonly start: (vmid: VmId) => Effect.Effect<Upid, ProxmoxError>
  readonly stop: (vmid: VmId) => Effect.Effect<Upid, ProxmoxError>
  readonly shutdown: (
    vmid: VmId,
    opts?: { readonly timeoutSeconds?: number; readonly forceStop?: boolean }
  ) => Effect.Effect<Upid, ProxmoxError>
  readonly destroy: (
    vmid: VmId,
    opts: { readonly purge?: boolean; readonly force?: boolean },
    clearance: Clearance<"destroy">
  ) => Effect.Effect<Upid, ProxmoxError | ClearanceRefused>
  /**
   * Deletes a backup archive (a vzdump file or a PBS snapshot): an `imgdel` task. Irreversible;
   * the clearance names the guest the archive backs up (read from the volume id). PVE refuses a
   * protected backup in the task.
   */
  readonly deleteBackup: (
    storage: StorageId,
    volid: VolumeId,
    clearance: Clearance<"delete-backup">
  ) => Effect.Effect<Upid, ProxmoxError | ClearanceRefused>
  /** Adds a storage entry (synchronous; PVE activates it once and refuses one it cannot reach). */
  readonly createStorage: (params: CreateStorageParams) => Effect.Effect<CreatedStorage, ProxmoxError>
  /**
   * Enables or disables a storage entry (`PUT /storage/{storage}` with `disable`; Datastore.Allocate
   * on /storage/{storage}). Data-safe: nothing on the storage changes. The PBS host-key attach
   * (issue 13) creates a PBS entry disabled and enables it only once it holds this host's key.
   */
  readonly setStorageDisabled: (storage: StorageId, disabled: boolean) => Effect.Effect<void, ProxmoxError>

  /** Polls until the task stops; succeeds only on exitstatus "OK". */
  readonly waitTask: (upid: Upid, opts?: WaitOptions) => Effect.Effect<TaskStatus, WaitError>
}

export class Proxmox extends Context.Tag("felhom/Proxmox")<Proxmox, ProxmoxShape>() {}

// ---------------------------------------------------------------------------------------------
// Error classification (one place: PVE has no 404 and signals most failures by message text)

const PERMISSION_RE = /Permission check failed \(([^,()]+), ([^()]+)\)/
const LOCK_RE = /(?:CT|VM) is locked \(([a-z-]+)\)/
const FLOCK_RE = /can't lock file '[^']*' - got timeout/

export const parsePermission = (text: string): MissingPermission | undefined => {
  const m = PERMISSION_RE.exec(text)
  if (m === null) return undefined
  return { aclPath: m[1]!.trim(), privileges: m[2]!.split("|").map((p) => p.trim()).filter((p) => p.length > 0) }
}

const classify = (status: number, message: string): PveApiError["kind"] => {
  if (status === 401) return "auth"
  if (status === 403) return "permission"
  if (status === 400) return "validation"
  if (status === 501) return "not_implemented"
  if (status === 595 || status === 596) return "proxy"
  if (/does not exist/.test(message)) return "not_found"
  if (/already exists|already running|not running|already used|detected modified configuration|can't overwrite running/.test(message)) {
    return "conflict"
  }
  return "server"
}

/** Most parameter errors PVE reports at once; more are counted, not kept. */
const MAX_PARAM_ERRORS = 32

// ---------------------------------------------------------------------------------------------
// Task polling (SPEC §2: 1 s growing to a 5 s cap). One poller per node serves every waiter on it.

export const POLL_INITIAL = Duration.seconds(1)
export const POLL_CAP = Duration.seconds(5)

/**
 * The delay a task waited on alone gets at `ageMs` into the wait: 1 s growing ×2 to the 5 s cap,
 * so a lone task is polled at 0, 1, 3, 7, 12, 17, ... s.
 */
export const pollDelayMs = (ageMs: number): number =>
  ageMs < 1000 ? 1000 : ageMs < 3000 ? 2000 : ageMs < 7000 ? 4000 : Duration.toMillis(POLL_CAP)

/** The first age after `ageMs` at which a task waited on alone is polled (1, 3, 7, 12, 17, ... s). */
export const nextLonePollAgeMs = (ageMs: number): number => {
  if (ageMs < 1000) return 1000
  if (ageMs < 3000) return 3000
  if (ageMs < 7000) return 7000
  const cap = Duration.toMillis(POLL_CAP)
  return 7000 + cap * (Math.floor((ageMs - 7000) / cap) + 1)
}

/**
 * The interval of a node's shared poll over tasks waited on for `agesMs`: the combined rate they
 * would poll at one by one (so one list call never costs more calls than separate polling), but
 * every poll covers them all; never below 1 s, never above the 5 s cap. One task: pollDelayMs.
 * The poller also never looks at a task later than it would have alone (nextLonePollAgeMs).
 */
export const sharedPollIntervalMs = (agesMs: ReadonlyArray<number>): number => {
  const rate = agesMs.reduce((sum, age) => sum + 1 / pollDelayMs(age), 0)
  const floor = Duration.toMillis(POLL_INITIAL)
  // whole milliseconds: a poll time must be one the clock can actually reach
  return rate === 0 ? Duration.toMillis(POLL_CAP) : Math.min(Duration.toMillis(POLL_CAP), Math.max(floor, Math.ceil(1 / rate)))
}

/**
 * A task the list keeps calling running is still read directly this often: the list is an
 * index PVE updates after the fact, the task's own status is the truth (a stale entry cannot
 * hold a finished task until the timeout).
 */
export const LIST_TRUST_MS = 60_000
/** Active tasks asked for per list call (PVE's default is 50; 0 would list none). */
const TASK_LIST_LIMIT = 500

const TLS_FAILURE_RE = /fingerprint mismatch|certificate|self[- ]signed|altnames|CERT_|SSL|TLS/i

const isTransientRead = (e: ProxmoxError) =>
  (e._tag === "PveTransportError" && e.reason !== "tls") || (e._tag === "PveApiError" && (e.kind === "proxy" || (e.kind === "server" && e.status >= 500)))

/** Reads retry transient failures a few times; writes never do (see the module comment). */
const readRetry = Schedule.exponential("250 millis").pipe(Schedule.intersect(Schedule.recurs(3)))

/** A request's outcome as a metric label: a fixed vocabulary, never PVE's text. */
const pveOutcomeOf = (exit: Exit.Exit<unknown, ProxmoxError>): PveOutcome => {
  if (Exit.isSuccess(exit)) return "ok"
  const failure = Cause.failureOption(exit.cause)
  if (Option.isNone(failure)) return "network"
  const e = failure.value
  switch (e._tag) {
    case "PveApiError":
      return "api_error"
    case "PveLocked":
      return "locked"
    case "PveDecodeError":
      return "decode"
    case "PveTransportError":
      return e.reason
  }
}

// ---------------------------------------------------------------------------------------------

export const make = Effect.gen(function*() {
  // Only the proxmox block: this layer cannot read the hub key or any other block.
  const pve = yield* ProxmoxSettings
  const http = yield* HttpClient.HttpClient
  const base = `${pve.url.replace(/\/+$/, "")}/api2/json`
  const requestTimeout = Duration.seconds(pve.request_timeout_seconds)
  const taskTimeout = Duration.seconds(pve.task_timeout_seconds)

  const authorize = (req: HttpClientRequest.HttpClientRequest) =>
    req.pipe(
      HttpClientRequest.setHeader("Authorization", `PVEAPIToken=${pve.token_id}=${Redacted.value(pve.token_secret)}`),
      HttpClientRequest.acceptJson
    )

  /**
   * PVE (or a proxy in front of it) may echo our request headers in any text it returns, so
   * every PVE-originated string is scrubbed of the token secret here, at the transport boundary,
   * before it becomes part of an error (SPEC §17). Bounded: `excerpt` reads only a text's head.
   * The token id is not scrubbed: it is no credential, and PVE prints it in every UPID.
   */
  const scrubber = makeScrubber([Redacted.value(pve.token_secret)])
  const excerpt = (text: string, max = 300) => scrubber.excerpt(text, max)

  const scrubParamErrors = (errors: Readonly<Record<string, string>>): Readonly<Record<string, string>> => {
    const entries = Object.entries(errors)
    const kept = entries.slice(0, MAX_PARAM_ERRORS).map(([k, v]) => [excerpt(k, 64), excerpt(v, 300)] as const)
    if (entries.length > MAX_PARAM_ERRORS) kept.push(["(more)", `${entries.length - MAX_PARAM_ERRORS} more not shown`])
    // Own keys only, on a plain object: a scrubbed key can never become a prototype.
    const out: Record<string, string> = {}
    for (const [k, v] of kept) Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true })
    return out
  }

  const errorFrom = (method: string, path: string, res: HttpClientResponse.HttpClientResponse, text: string): ProxmoxError => {
    const body = Schema.decodeUnknownOption(Schema.parseJson(ErrorBody))(text)
    const reason = res.headers[REASON_HEADER] ?? ""
    const fromBody = Option.flatMap(body, (b) => Option.fromNullable(b.message))
    // Scrubbed before anything reads it: classification, the lock and permission parsers, the message.
    const raw = excerpt(Option.getOrElse(fromBody, () => reason), 2000)
    const message = excerpt(raw.length > 0 ? raw : `HTTP ${res.status}`)
    const lock = LOCK_RE.exec(raw)
    if (lock !== null) return new PveLocked({ method, path, lock: lock[1]!, message })
    if (FLOCK_RE.test(raw)) return new PveLocked({ method, path, lock: "flock", message })
    const permission = res.status === 403 ? parsePermission(raw) : undefined
    const paramErrors = Option.getOrUndefined(
      Option.map(Option.flatMap(body, (b) => Option.fromNullable(b.errors)), scrubParamErrors)
    )
    const detail = paramErrors === undefined
      ? message
      : excerpt(`${message} ${Object.entries(paramErrors).map(([k, v]) => `${k}: ${excerpt(v, 120)}`).join("; ")}`, 1000)
    return new PveApiError({
      method,
      path,
      status: res.status,
      kind: classify(res.status, raw),
      message: detail,
      ...(permission === undefined ? {} : { permission }),
      ...(paramErrors === undefined ? {} : { paramErrors })
    })
  }

  const request = <A, I>(
    method: "GET" | "POST" | "PUT" | "DELETE",
    path: string,
    schema: Schema.Schema<A, I>,
    params: Params = {},
    /** reads retry transient failures unless the caller has its own fallback */
    retryReads = true,
    /** decode errors quote PVE's values; off for answers that may carry a secret */
    quoteActual = true
  ): Effect.Effect<A, ProxmoxError> => {
    const url = base + path
    const encoded = encodeParams(params)
    const req = authorize(
      method === "GET" || method === "DELETE"
        ? HttpClientRequest.make(method)(url).pipe(HttpClientRequest.setUrlParams(encoded))
        : HttpClientRequest.make(method)(url).pipe(HttpClientRequest.bodyUrlParams(encoded))
    )
    const transport = (message: string, reason: PveTransportError["reason"] = "network") =>
      new PveTransportError({ method, path, reason, message })
    const fromCause = (cause: unknown, fallback: string) => {
      const message = excerpt(deepestCauseMessage(cause, fallback))
      return transport(message, TLS_FAILURE_RE.test(message) ? "tls" : "network")
    }
    const once = http.execute(req).pipe(
      Effect.flatMap((res) => Effect.map(res.text, (text) => [res, text] as const)),
      Effect.timeoutFail({ duration: requestTimeout, onTimeout: () => transport(`no answer within ${Duration.format(requestTimeout)}`, "timeout") }),
      Effect.catchTags({
        RequestError: (e) => Effect.fail(fromCause(e.cause, e.message)),
        ResponseError: (e) => Effect.fail(fromCause(e.cause, e.message))
      }),
      Effect.flatMap(([res, text]): Effect.Effect<A, ProxmoxError> => {
        if (res.status !== 200) return Effect.fail(errorFrom(method, path, res, text))
        return Schema.decodeUnknown(Schema.parseJson(schema))(text).pipe(
          Effect.mapError((e) =>
            // Each issue quotes the offending PVE value ("actual"): scrubbed like any PVE text.
            new PveDecodeError({ method, path, message: excerpt(`response does not match the schema: ${formatIssues(e, 4, 240, quoteActual)}`, 600) })
          )
        )
      })
    )
    // each attempt is measured (metrics: method and outcome only, never the path or PVE's text)
    const measured = Effect.gen(function*() {
      const t0 = yield* Clock.currentTimeMillis
      const exit = yield* Effect.exit(once)
      const t1 = yield* Clock.currentTimeMillis
      yield* recordPveRequest(method, pveOutcomeOf(exit), (t1 - t0) / 1000)
      return yield* exit
    })
    return method === "GET" && retryReads ? measured.pipe(Effect.retry({ schedule: readRetry, while: isTransientRead })) : measured
  }

  const get = <A, I>(path: string, schema: Schema.Schema<A, I>, params?: Params) =>
    Effect.map(request("GET", path, Envelope(schema), params), (e) => e.data)

  const pathNode = yield* Effect.cached(
    pve.node !== undefined
      ? Effect.succeed(pve.node)
      : get("/nodes", Schema.Array(NodeEntry)).pipe(
        Effect.flatMap((nodes) =>
          nodes.length === 1 && Schema.is(NodeNameSchema)(nodes[0]!.node)
            ? Effect.succeed(nodes[0]!.node)
            : Effect.fail(new PveApiError({
              method: "GET",
              path: "/nodes",
              status: 200,
              kind: "validation",
              message: excerpt(`cluster has ${nodes.length} nodes (${nodes.map((n) => n.node).join(", ")}); set proxmox.node`, 600)
            }))
        )
      )
  )
  const onNode = <A>(f: (node: NodeName) => Effect.Effect<A, ProxmoxError>) => Effect.flatMap(pathNode, f)
  const ct = (node: string, vmid: VmId) => `/nodes/${node}/lxc/${vmid}`
  const post = (path: string, params?: Params) => Effect.map(request("POST", path, UpidResponse, params), (e) => e.data)

  const taskPath = (upid: Upid) => `/nodes/${upidParts(upid).node}/tasks/${encodeURIComponent(upid)}`

  const taskStatus = (upid: Upid) => get(`${taskPath(upid)}/status`, TaskStatus)

  const taskLog = (upid: Upid, opts: { readonly start?: number; readonly limit?: number } = {}) =>
    request("GET", `${taskPath(upid)}/log`, TaskLogPage, { start: opts.start ?? 0, limit: opts.limit ?? 50 }).pipe(
      // Task log lines are PVE text that ends up in errors and logs: scrubbed here, at the source.
      Effect.map((page) => ({ lines: page.data.map((l) => excerpt(l.t, 2000)), total: page.total ?? page.data.length }))
    )

  const taskLogTail = (upid: Upid, n = 20) =>
    Effect.flatMap(taskLog(upid, { start: 0, limit: 1 }), ({ total }) =>
      Effect.map(taskLog(upid, { start: Math.max(0, total - n), limit: n }), (p) => p.lines))

  // -------------------------------------------------------------------------------------------
  // Waiting for tasks. Every waiter on a node is served by one poller fiber, started by the first
  // waiter and interrupted when the last one leaves. Alone, a task is polled by its own status on
  // the lone schedule (0, 1, 3, 7, 12, ... s). With two or more, each poll is ONE
  // `GET /nodes/{node}/tasks?source=active` for all of them, at their combined rate (at least 1 s
  // apart, see sharedPollIntervalMs); a task the list no longer shows running gets its own status
  // read, which alone decides how it ended. A task the list does not show while its status says
  // running is read directly from then on, on its own schedule; a failed list call falls back to
  // direct reads for that poll.

  interface TaskWaiter {
    readonly upid: Upid
    readonly arrivedMs: number
    readonly result: Deferred.Deferred<TaskStatus, ProxmoxError>
    /** the list missed it while its status said running: polled directly, on the lone schedule */
    blind: boolean
    /** next direct read of a blind waiter */
    nextOwnMs: number
    /** last time its own status was read (or it arrived) */
    lastOwnMs: number
    settled: boolean
    /** the waiting fiber's loop progress (LoopProgress.ts): a long wait that polls is progress */
    readonly onPoll: Effect.Effect<void>
  }

  interface NodePoller {
    readonly node: string
    readonly waiters: Set<TaskWaiter>
    fiber: Fiber.RuntimeFiber<void> | undefined
    /** completed to make the poller recompute its next poll (a waiter arrived) */
    wake: Deferred.Deferred<void>
    lastSharedMs: number | undefined
  }

  const pollers = new Map<string, NodePoller>()

  /** The upids the node lists as running. */
  // not retried: a failed list call falls back to reading each task directly for that poll
  const listRunning = (node: string) =>
    request("GET", `/nodes/${node}/tasks`, Envelope(Schema.Array(TaskListEntry)), { source: "active", limit: TASK_LIST_LIMIT }, false).pipe(
      Effect.map(({ data }) =>
        new Set(data.filter((e) => e.status === undefined || /^running$/i.test(e.status)).map((e) => e.upid))
      )
    )

  const settle = (w: TaskWaiter, exit: Exit.Exit<TaskStatus, ProxmoxError>) =>
    Effect.suspend(() => {
      w.settled = true
      return Deferred.done(w.result, exit)
    })

  /** Reads one task's own status; `absent`: the list did not show it running. */
  const readOwn = (w: TaskWaiter, absent: boolean, now: number) =>
    taskStatus(w.upid).pipe(
      Effect.matchEffect({
        onFailure: (e) => settle(w, Exit.fail(e)),
        onSuccess: (s) =>
          s.status !== "running"
            ? settle(w, Exit.succeed(s))
            : Effect.sync(() => {
              w.lastOwnMs = now
              if (absent) w.blind = true
              if (w.blind) w.nextOwnMs = now + pollDelayMs(now - w.arrivedMs)
            })
      })
    )

  const pollOnce = (p: NodePoller, now: number, sharedDue: boolean, live: ReadonlyArray<TaskWaiter>) =>
    Effect.gen(function*() {
      const reads: Array<readonly [TaskWaiter, boolean]> = live.filter((w) => w.blind && w.nextOwnMs <= now).map((w) => [w, false] as const)
      if (sharedDue) {
        p.lastSharedMs = now
        const shared = live.filter((w) => !w.blind)
        if (shared.length === 1) {
          reads.push([shared[0]!, false])
        } else if (shared.length > 1) {
          const running = yield* Effect.either(listRunning(p.node))
          for (const w of shared) {
            if (Either.isLeft(running)) reads.push([w, false])
            else if (!running.right.has(w.upid)) reads.push([w, true])
            else if (now - w.lastOwnMs >= LIST_TRUST_MS) reads.push([w, false])
          }
        }
      }
      yield* Effect.forEach(reads, ([w, absent]) => readOwn(w, absent, now), { concurrency: 8, discard: true })
    })

  const runPoller = (p: NodePoller): Effect.Effect<void> =>
    Effect.gen(function*() {
      for (;;) {
        p.wake = Deferred.unsafeMake<void>(FiberId.none)
        const now = yield* Clock.currentTimeMillis
        const live = [...p.waiters].filter((w) => !w.settled)
        const shared = live.filter((w) => !w.blind)
        const last = p.lastSharedMs
        const sharedAt = shared.length === 0
          ? Number.POSITIVE_INFINITY
          : last === undefined
          ? now
          : Math.min(
            last + sharedPollIntervalMs(shared.map((w) => Math.max(0, last - w.arrivedMs))),
            // no task seen later than alone, yet polls stay at least the 1 s floor apart
            Math.max(
              last + Duration.toMillis(POLL_INITIAL),
              Math.min(...shared.map((w) => w.arrivedMs + nextLonePollAgeMs(Math.max(0, last - w.arrivedMs))))
            )
          )
        const at = Math.min(sharedAt, ...live.filter((w) => w.blind).map((w) => w.nextOwnMs))
        if (at > now) {
          const woken = Deferred.await(p.wake)
          yield* at === Number.POSITIVE_INFINITY ? woken : Effect.raceFirst(Effect.sleep(Duration.millis(Math.ceil(at - now))), woken)
          continue
        }
        yield* pollOnce(p, now, sharedAt <= now, live)
        yield* Effect.forEach(live, (w) => w.onPoll, { discard: true })
      }
    }).pipe(
      // a defect must not leave waiters hanging
      Effect.onExit((exit) =>
        Exit.isFailure(exit) && !Exit.isInterrupted(exit)
          ? Effect.forEach(p.waiters, (w) => Deferred.failCause(w.result, exit.cause), { discard: true })
          : Effect.void
      )
    )

  const register = (upid: Upid) =>
    Effect.gen(function*() {
      const result = yield* Deferred.make<TaskStatus, ProxmoxError>()
      const now = yield* Clock.currentTimeMillis
      const node = upidParts(upid).node
      // read in the waiter's fiber: the poller runs detached, without the waiter's services
      const progress = yield* Effect.serviceOption(LoopProgress)
      const onPoll = Option.match(progress, { onNone: () => Effect.void, onSome: (p) => p.beat("pve task poll") })
      const w: TaskWaiter = { upid, arrivedMs: now, result, blind: false, nextOwnMs: now, lastOwnMs: now, settled: false, onPoll }
      const existing = pollers.get(node)
      if (existing !== undefined) {
        existing.waiters.add(w)
        yield* Deferred.succeed(existing.wake, undefined)
        return [existing, w] as const
      }
      const p: NodePoller = { node, waiters: new Set([w]), fiber: undefined, wake: Deferred.unsafeMake(FiberId.none), lastSharedMs: undefined }
      pollers.set(node, p)
      // forked from the (uninterruptible) acquire: the poller itself must stay interruptible
      p.fiber = yield* Effect.forkDaemon(Effect.interruptible(runPoller(p)))
      return [p, w] as const
    })

  const unregister = (p: NodePoller, w: TaskWaiter) =>
    Effect.suspend(() => {
      w.settled = true
      p.waiters.delete(w)
      if (p.waiters.size > 0 || pollers.get(p.node) !== p) return Effect.void
      pollers.delete(p.node)
      const fiber = p.fiber
      p.fiber = undefined
      return fiber === undefined ? Effect.void : Fiber.interrupt(fiber)
    })

  const waitTask = (upid: Upid, opts: WaitOptions = {}): Effect.Effect<TaskStatus, WaitError> => {
    const limit = opts.timeout === undefined ? taskTimeout : Duration.decode(opts.timeout)
    const waited = Effect.acquireUseRelease(register(upid), ([, w]) => Deferred.await(w.result), ([p, w]) => unregister(p, w)).pipe(
      Effect.timeoutFail({
        duration: limit,
        onTimeout: () =>
          new PveTaskTimeout({
            upid,
            afterSeconds: Duration.toSeconds(limit),
            message: `task ${upid} still running after ${Duration.format(limit)}; it was not stopped, keep tracking it`
          })
      })
    )
    // the wait's length by task type (metrics; the type only, never the UPID)
    const measured = Effect.gen(function*() {
      const t0 = yield* Clock.currentTimeMillis
      const exit = yield* Effect.exit(waited)
      yield* recordTaskWait(upidParts(upid).type, ((yield* Clock.currentTimeMillis) - t0) / 1000)
      return yield* exit
    })
    return measured.pipe(
      Effect.flatMap((last): Effect.Effect<TaskStatus, WaitError> => {
        if (last.status === "stopped" && (last.exitstatus === "OK" || (opts.acceptWarnings === true && /^WARNINGS: \d+$/.test(last.exitstatus ?? "")))) {
          return Effect.succeed(last)
        }
        // From here on the exitstatus is PVE text bound for an error: scrubbed first.
        const exit = excerpt(last.exitstatus ?? "(no exitstatus)", 1000)
        return taskLogTail(upid).pipe(
          Effect.orElseSucceed((): ReadonlyArray<string> => []),
          Effect.flatMap((logTail) => {
            const permission = parsePermission(exit) ?? logTail.map(parsePermission).find((p) => p !== undefined)
            return Effect.fail(new PveTaskFailed({
              upid,
              exitstatus: exit,
              logTail,
              message: excerpt(`task ${last.type ?? upidParts(upid).type} (${upid}) failed: ${excerpt(exit)}${
                permission === undefined ? "" : ` [missing ${permission.privileges.join("|")} on ${permission.aclPath}]`
              }`, 1000),
              ...(permission === undefined ? {} : { permission })
            }))
          })
        )
      })
    )
  }

  /** Runs `call` only if `clearance` is the gate's, for exactly this call, unspent; else nothing is sent. */
  const cleared = <K extends CallKind, A>(
    clearance: Clearance<K>,
    call: CallOf<K>,
    effect: Effect.Effect<A, ProxmoxError>
  ): Effect.Effect<A, ProxmoxError | ClearanceRefused> =>
    Effect.suspend((): Effect.Effect<A, ProxmoxError | ClearanceRefused> => {
      const redeemed = Clearance.redeem(clearance, call)
      return Either.isLeft(redeemed) ? Effect.fail(redeemed.left) : effect
    })

  const restoreCall = (o: RestoreOptions, force: boolean) =>
    onNode((n) => {
      const net0 = restoreNet0(o)
      if (Either.isLeft(net0)) return Effect.fail(notSent("POST", `/nodes/${n}/lxc`, net0.left))
      return post(`/nodes/${n}/lxc`, {
        vmid: o.vmid,
        ostemplate: o.archive,
        restore: true,
        storage: o.storage,
        force: force ? true : undefined,
        unique: o.unique,
        hostname: o.hostname,
        cores: o.cores,
        memory: o.memoryMiB,
        swap: o.swapMiB,
        tags: o.tags,
        start: o.start,
        net0: net0.right,
        protection: o.protection,
        rootfs: o.layout?.rootfs,
        ...(o.layout?.mounts ?? {})
      })
    })

  /** Refused before sending: nothing reached PVE. */
  const notSent = (method: string, path: string, message: string) =>
    new PveApiError({ method, path, status: 400, kind: "validation", message: excerpt(`not sent: ${message}`, 600) })

  const restoreNet0 = (o: RestoreOptions): Either.Either<string | undefined, string> => {
    if (o.net0 === undefined) return Either.right(undefined)
    if (o.unique === true) return Either.left("net0 together with unique: PVE would replace net0 with the backup's")
    return printNetOverride(o.net0)
  }

  /** Every secret of a createStorage call, in the forms PVE or a proxy could echo them. */
  const storageSecrets = (p: CreateStorageParams): Scrubber => {
    const values: Array<string> = [Redacted.value(pve.token_secret)]
    if ((p.type === "cifs" || p.type === "pbs") && p.password !== undefined) values.push(Redacted.value(p.password))
    if (p.type === "pbs" && p.encryptionKey !== undefined && p.encryptionKey !== "autogen") {
      const key = Redacted.value(p.encryptionKey)
      values.push(key, ...keyDataOf(key))
    }
    return makeScrubber(values)
  }

  const createStorage = (p: CreateStorageParams): Effect.Effect<CreatedStorage, ProxmoxError> => {
    const path = "/storage"
    const built = storageParams(p)
    if (Either.isLeft(built)) return Effect.fail(notSent("POST", path, built.left))
    const secrets = storageSecrets(p)
    return request("POST", path, CreateStorageResponse, built.right, false, false).pipe(
      // PVE text may quote what was sent: every error is scrubbed of this call's secrets too
      Effect.mapError((e) => scrubError(e, secrets)),
      Effect.map(({ data }): CreatedStorage => {
        const key = data.config?.["encryption-key"]
        return {
          storage: data.storage,
          type: data.type,
          encryptionKey: typeof key === "string" && key.length > 0 ? Option.some(Redacted.make(key)) : Option.none()
        }
      })
    )
  }

  const deleteBackup = (storage: StorageId, volid: VolumeId, clearance: Clearance<"delete-backup">) =>
    Effect.suspend((): Effect.Effect<Upid, ProxmoxError | ClearanceRefused> => {
      const owner = backupOwner(volid)
      if (Option.isNone(owner) || !volid.startsWith(`${storage}:`)) {
        return Effect.fail(new ClearanceRefused({ message: excerpt(`${volid} is not a guest backup on ${storage}: not deleted`, 400) }))
      }
      return cleared(
        clearance,
        { call: "delete-backup", vmid: owner.value, storage, volume: volid },
        onNode((n) =>
          Effect.map(
            request("DELETE", `/nodes/${n}/storage/${storage}/content/${encodeURIComponent(volid)}`, UpidResponse),
            (e) => e.data
          )
        )
      )
    })

  const configCall = (vmid: VmId, change: ConfigChange) =>
    onNode((n) =>
      request("PUT", `${ct(n, vmid)}/config`, UpidOrNull, {
        ...change.set,
        delete: change.delete === undefined || change.delete.length === 0 ? undefined : change.delete.join(","),
        digest: change.digest
      }).pipe(Effect.map((e) => Option.fromNullable(e.data)))
    )

  const shape: ProxmoxShape = {
    node: pathNode,
    version: get("/version", PveVersion),
    nodes: get("/nodes", Schema.Array(NodeEntry)),
    nodeStatus: onNode((n) => get(`/nodes/${n}/status`, NodeStatus)),
    listGuests: onNode((n) => get(`/nodes/${n}/lxc`, Schema.Array(GuestSummary))),
    guestStatus: (vmid) => onNode((n) => get(`${ct(n, vmid)}/status/current`, GuestStatus)),
    runningTasksOf: (vmid, type) =>
      onNode((n) =>
        Effect.map(listRunning(n), (running) =>
          [...running].filter((u): u is Upid => {
            const p = upidParts(u as Upid)
            return p.type === type && p.id === String(vmid)
          })
        )
      ),
    guestConfig: (vmid, opts = {}) => onNode((n) => get(`${ct(n, vmid)}/config`, GuestConfig, { snapshot: opts.snapshot })),
    listSnapshots: (vmid) => onNode((n) => get(`${ct(n, vmid)}/snapshot`, Schema.Array(SnapshotEntry))),
    storageList: get("/storage", Schema.Array(StorageConfigEntry)),
    nodeStorage: onNode((n) => get(`/nodes/${n}/storage`, Schema.Array(NodeStorageEntry))),
    storageContent: (storage, opts = {}) =>
      onNode((n) =>
        get(`/nodes/${n}/storage/${storage}/content`, Schema.Array(StorageContentEntry), {
          content: opts.content,
          vmid: opts.vmid
        })
      ),
    extractConfig: (archive) =>
      onNode((n) => get(`/nodes/${n}/vzdump/extractconfig`, Schema.String, { volume: archive })).pipe(Effect.map(parseConfigText)),
    nextId: (vmid) => Effect.map(request("GET", "/cluster/nextid", NextIdResponse, { vmid }), (e) => e.data),
    taskStatus,
    taskLog,
    taskLogTail,

    restore: (o) => restoreCall(o, false),
    restoreOverwrite: (o, clearance) =>
      cleared(clearance, { call: "restore-overwrite", vmid: o.vmid, archive: o.archive }, restoreCall(o, true)),
    vzdump: (o) =>
      onNode((n) =>
        request("POST", `/nodes/${n}/vzdump`, UpidOrOk, {
          vmid: o.vmid,
          storage: o.storage,
          mode: o.mode ?? "snapshot",
          compress: o.compress ?? "zstd",
          // never let PVE prune (finding 3): remove=0, and keep-all so that a count-based
          // retention on the storage is no backup limit either (with remove=0 PVE refuses a
          // guest's backup once it has that many archives: "There is a max backup limit of N")
          remove: false,
          "prune-backups": "keep-all=1",
          "notes-template": o.notesTemplate,
          protected: o.protected
        }).pipe(Effect.map((e) => (e.data === "OK" ? Option.none() : Option.some(e.data))))
      ),
    snapshot: (vmid, name, description) =>
      onNode((n) => post(`${ct(n, vmid)}/snapshot`, { snapname: name, description })),
    rollback: (vmid, name, opts, clearance) =>
      cleared(
        clearance,
        { call: "rollback", vmid, snapshot: name },
        onNode((n) => post(`${ct(n, vmid)}/snapshot/${name}/rollback`, { start: opts.start }))
      ),
    deleteSnapshot: (vmid, name, opts, clearance) =>
      cleared(
        clearance,
        { call: "delete-snapshot", vmid, snapshot: name },
        onNode((n) =>
          Effect.map(request("DELETE", `${ct(n, vmid)}/snapshot/${name}`, UpidResponse, { force: opts.force }), (e) => e.data)
        )
      ),
    setConfig: (vmid, change) => {
      const unsafe = volumeKeysOf(change)
      return unsafe.length === 0
        ? configCall(vmid, change)
        : Effect.fail(new ClearanceRefused({
          message: `config of ${vmid}: keys ${unsafe.join(",")} may detach or drop a volume; not sent without a clearance`
        }))
    },
    setConfigVolumes: (vmid, change, clearance) =>
      cleared(clearance, { call: "set-config-volumes", vmid, keys: volumeKeysOf(change) }, configCall(vmid, change)),
    resize: (vmid, disk, size, clearance, digest) =>
      cleared(
        clearance,
        { call: "resize", vmid, disk, size },
        onNode((n) => Effect.map(request("PUT", `${ct(n, vmid)}/resize`, UpidResponse, { disk, size, digest }), (e) => e.data))
      ),
    start: (vmid) => onNode((n) => post(`${ct(n, vmid)}/status/start`)),
    stop: (vmid) => onNode((n) => post(`${ct(n, vmid)}/status/stop`)),
    shutdown: (vmid, opts = {}) =>
      onNode((n) => post(`${ct(n, vmid)}/status/shutdown`, { timeout: opts.timeoutSeconds, forceStop: opts.forceStop })),
    destroy: (vmid, opts, clearance) =>
      cleared(
        clearance,
        { call: "destroy", vmid },
        // never `destroy-unreferenced-disks` (the simulator, like some PVE versions, defaults it on): volumes of
        // this vmid outside its config, e.g. a lost guest's surviving bulk volumes, must outlive any destroy
        onNode((n) =>
          Effect.map(
            request("DELETE", ct(n, vmid), UpidResponse, { purge: opts.purge, force: opts.force, "destroy-unreferenced-disks": false }),
            (e) => e.data
          )
        )
      ),
    deleteBackup,
    createStorage,
    setStorageDisabled: (storage, disabled) =>
      Effect.asVoid(request("PUT", `/storage/${encodeURIComponent(storage)}`, NullResponse, { disable: disabled }, false)),
    waitTask
  }
  return shape
})

/** `key: value` lines up to the first snapshot section; comments (the description) dropped. */
export const parseConfigText = (text: string): Readonly<Record<string, string>> => {
  const out: Record<string, string> = Object.create(null)
  for (const line of text.split("\n")) {
    if (line.startsWith("[")) break
    const m = /^([a-z][a-z0-9_-]*):\s?(.*)$/.exec(line)
    if (m !== null && m[1] !== "__proto__") out[m[1]!] = m[2]!
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Backups and storages

const DIR_BACKUP_RE = /^[A-Za-z][A-Za-z0-9\-_.]*:backup\/vzdump-(?:lxc|qemu|openvz)-(\d+)-\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}\.(?:tgz|tar(?:\.(?:zst|gz|lzo|bz2))?|vma(?:\.(?:zst|gz|lzo))?)$/
const PBS_BACKUP_RE = /^[A-Za-z][A-Za-z0-9\-_.]*:backup\/(?:ct|vm)\/(\d+)\/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/

/** The guest a backup volume id belongs to (vzdump file name or PBS group), if it is one. */
export const backupOwner = (volid: string): Option.Option<VmId> => {
  const m = DIR_BACKUP_RE.exec(volid) ?? PBS_BACKUP_RE.exec(volid)
  if (m === null) return Option.none()
  return Schema.decodeUnknownOption(VmIdSchema)(Number(m[1]))
}

/** The `data` field of a key file's JSON: the raw key, scrubbed on its own too. */
const keyDataOf = (key: string): ReadonlyArray<string> => {
  try {
    const parsed: unknown = JSON.parse(key)
    if (typeof parsed === "object" && parsed !== null && "data" in parsed && typeof parsed.data === "string") return [parsed.data]
  } catch {
    // not JSON: PVE refuses it, and the whole text is already scrubbed
  }
  return []
}

/** Applies a second scrubber to every PVE-originated text of an error. */
const scrubError = (e: ProxmoxError, scrubber: Scrubber): ProxmoxError => {
  const text = (t: string) => scrubber.scrub(t)
  switch (e._tag) {
    case "PveApiError": {
      const paramErrors = e.paramErrors === undefined
        ? undefined
        : Object.fromEntries(Object.entries(e.paramErrors).map(([k, v]) => [text(k), text(v)]))
      return new PveApiError({
        method: e.method,
        path: e.path,
        status: e.status,
        kind: e.kind,
        message: text(e.message),
        ...(e.permission === undefined ? {} : { permission: { aclPath: text(e.permission.aclPath), privileges: e.permission.privileges.map(text) } }),
        ...(paramErrors === undefined ? {} : { paramErrors })
      })
    }
    case "PveLocked":
      return new PveLocked({ method: e.method, path: e.path, lock: text(e.lock), message: text(e.message) })
    case "PveTransportError":
      return new PveTransportError({ method: e.method, path: e.path, reason: e.reason, message: text(e.message) })
    case "PveDecodeError":
      return new PveDecodeError({ method: e.method, path: e.path, message: text(e.message) })
  }
}

const NET_NAME_RE = /^[A-Za-z0-9][-_.A-Za-z0-9]{0,15}$/
const MAC_RE = /^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$/
const IPV4_CIDR_RE = /^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\/(?:3[0-2]|[12]?\d)$/

/** `name=eth0,bridge=vmbr0,...,link_down=1`; Left says which field is unusable (without echoing it). */
export const printNetOverride = (n: NetOverride): Either.Either<string, string> => {
  if (!NET_NAME_RE.test(n.name)) return Either.left("net0.name: expected an interface name like eth0")
  if (!NET_NAME_RE.test(n.bridge)) return Either.left("net0.bridge: expected a bridge name like vmbr0")
  // a unicast address: the low bit of the first octet clear
  if (n.hwaddr !== undefined && (!MAC_RE.test(n.hwaddr) || (parseInt(n.hwaddr.slice(0, 2), 16) & 1) === 1)) {
    return Either.left("net0.hwaddr: expected a unicast MAC address")
  }
  if (n.ip !== undefined && n.ip !== "dhcp" && n.ip !== "manual" && !IPV4_CIDR_RE.test(n.ip)) {
    return Either.left("net0.ip: expected dhcp, manual or an IPv4 CIDR")
  }
  const parts = [`name=${n.name}`, `bridge=${n.bridge}`]
  if (n.firewall !== undefined) parts.push(`firewall=${n.firewall ? 1 : 0}`)
  if (n.hwaddr !== undefined) parts.push(`hwaddr=${n.hwaddr.toUpperCase()}`)
  if (n.ip !== undefined) parts.push(`ip=${n.ip}`)
  if (n.linkDown) parts.push("link_down=1")
  parts.push("type=veth")
  return Either.right(parts.join(","))
}

/** A storage.cfg value: one line, no control characters (PVE refuses line feeds anyway). */
const CFG_VALUE_RE = /^[^\x00-\x1f\x7f]+$/

/** The form of a POST /storage; Left names the field that is unusable (never its value). */
export const storageParams = (p: CreateStorageParams): Either.Either<Params, string> => {
  const common: Record<string, Param> = {
    storage: p.storage,
    type: p.type,
    content: p.content.join(","),
    nodes: p.nodes === undefined || p.nodes.length === 0 ? undefined : p.nodes.join(","),
    disable: p.disable,
    "prune-backups": "keep-all=1"
  }
  let specific: Record<string, Param>
  switch (p.type) {
    case "dir":
      specific = {
        path: p.path,
        is_mountpoint: p.isMountpoint === undefined ? undefined : p.isMountpoint ? "yes" : "no",
        "create-base-path": p.createBasePath,
        "create-subdirs": p.createSubdirs
      }
      break
    case "nfs":
      specific = { server: p.server, export: p.export, path: p.path, options: p.options }
      break
    case "cifs":
      specific = {
        server: p.server,
        share: p.share,
        subdir: p.subdir,
        username: p.username,
        password: p.password === undefined ? undefined : Redacted.value(p.password),
        domain: p.domain,
        smbversion: p.smbversion,
        path: p.path
      }
      break
    case "pbs":
      specific = {
        server: p.server,
        datastore: p.datastore,
        username: p.username,
        password: Redacted.value(p.password),
        fingerprint: p.fingerprint,
        namespace: p.namespace,
        port: p.port,
        "encryption-key": p.encryptionKey === undefined ? undefined : p.encryptionKey === "autogen" ? "autogen" : Redacted.value(p.encryptionKey)
      }
      break
  }
  const out: Record<string, Param> = { ...common, ...specific }
  for (const [k, v] of Object.entries(out)) {
    // key JSON is multi-line when pretty-printed: PVE takes it as given, so only the others are checked
    if (typeof v === "string" && k !== "encryption-key" && !CFG_VALUE_RE.test(v)) return Either.left(`${k}: empty or contains a control character`)
  }
  if (p.type === "pbs" && p.fingerprint !== undefined && !/^(?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$/.test(p.fingerprint)) {
    return Either.left("fingerprint: expected 32 colon-separated hex pairs (SHA-256)")
  }
  return Either.right(out)
}

/** Config keys whose change never removes or detaches data (volumes are rootfs, mpN, unusedN). */
export const DATA_SAFE_CONFIG_KEYS: ReadonlySet<string> = new Set([
  "cores",
  "memory",
  "swap",
  "hostname",
  "description",
  "tags",
  "onboot",
  "cpulimit",
  "cpuunits"
])

/** The keys of a change (set or delete) outside DATA_SAFE_CONFIG_KEYS, sorted. */
export const volumeKeysOf = (change: ConfigChange): ReadonlyArray<string> =>
  [...new Set([...Object.keys(change.set), ...(change.delete ?? [])])].filter((k) => !DATA_SAFE_CONFIG_KEYS.has(k)).sort()

/** Proxmox over whatever HttpClient is provided (real undici in production, in-process sim in tests). */
export const ProxmoxWithoutClient = Layer.effect(Proxmox, make).pipe(
  Layer.ensureRequirementsType<HttpClient.HttpClient | ProxmoxSettings>()
)

