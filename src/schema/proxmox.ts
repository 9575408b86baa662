/**
 * Wire shapes of the PVE REST API (reference/proxmox-api.md). PVE emits numbers as strings
 * depending on how the Perl scalar was last used and omits fields freely, so every numeric field
 * is "number or numeric string" and every non-identity field is optional. Identity fields we act
 * on (vmid, status, upid, volid) are strict.
 */
import { Data, Option, ParseResult, Schema } from "effect"
import { Upid, WireVmId } from "./ids.js"

/** A number, or a string holding one ("1.5", "106"). */
export const Num = Schema.Union(Schema.Number, Schema.NumberFromString)
// PVE omits unset fields, but a few paths emit null (e.g. a snapshot without parent): both read as absent.
const optNum = Schema.optionalWith(Num, { nullable: true })
const optStr = Schema.optionalWith(Schema.String, { nullable: true })

/** 0/1 flags; PVE before 7.0 sends "" for an unset flag (template: "", lock: ""). */
export const Flag = Schema.transformOrFail(Schema.Union(Schema.Number, Schema.String), Schema.Number, {
  strict: true,
  decode: (v, _, ast) => {
    if (typeof v === "number") return ParseResult.succeed(v)
    if (v.trim() === "") return ParseResult.succeed(0)
    const n = Number(v)
    return Number.isFinite(n) ? ParseResult.succeed(n) : ParseResult.fail(new ParseResult.Type(ast, v, "expected 0/1"))
  },
  encode: (n) => ParseResult.succeed(n)
})
const optFlag = Schema.optionalWith(Flag, { nullable: true })

/** A string where "" means unset (PVE 7's `lock: ""`). */
const optNonEmpty = Schema.optionalToOptional(Schema.NullOr(Schema.String), Schema.String, {
  decode: Option.flatMap((s) => (s === null || s === "" ? Option.none() : Option.some(s))),
  encode: (o) => o
})

/** `{"data": ...}`; extra top-level keys (total, message) are tolerated. */
export const Envelope = <A, I, R>(data: Schema.Schema<A, I, R>) => Schema.Struct({ data })

export const PveVersion = Schema.Struct({
  version: Schema.String,
  release: optStr,
  repoid: optStr,
  console: optStr
})
export type PveVersion = typeof PveVersion.Type

export const NodeEntry = Schema.Struct({
  node: Schema.String,
  status: Schema.String,
  id: optStr,
  type: optStr,
  level: optStr,
  ssl_fingerprint: optStr,
  cpu: optNum,
  maxcpu: optNum,
  mem: optNum,
  maxmem: optNum,
  disk: optNum,
  maxdisk: optNum,
  uptime: optNum
})
export type NodeEntry = typeof NodeEntry.Type

const MemTriple = Schema.Struct({ total: optNum, used: optNum, free: optNum, available: optNum })

export const NodeStatus = Schema.Struct({
  uptime: optNum,
  cpu: optNum,
  wait: optNum,
  loadavg: Schema.optional(Schema.Array(Num)),
  kversion: optStr,
  pveversion: optStr,
  cpuinfo: Schema.optional(Schema.Struct({
    model: optStr,
    sockets: optNum,
    cores: optNum,
    cpus: optNum,
    mhz: optNum
  })),
  memory: Schema.optional(MemTriple),
  swap: Schema.optional(MemTriple),
  rootfs: Schema.optional(Schema.Struct({ total: optNum, used: optNum, free: optNum, avail: optNum }))
})
export type NodeStatus = typeof NodeStatus.Type

/** Run state as PVE reports it; anything else is a decode error (we act on this value). */
export const GuestRunState = Schema.Literal("running", "stopped")

const guestCommon = {
  vmid: WireVmId,
  status: GuestRunState,
  name: optStr,
  cpus: optNum,
  cpu: optNum,
  mem: optNum,
  maxmem: optNum,
  swap: optNum,
  maxswap: optNum,
  disk: optNum,
  maxdisk: optNum,
  uptime: optNum,
  pid: optNum,
  template: optFlag,
  lock: optNonEmpty,
  tags: optNonEmpty,
  type: optStr
}

export const GuestSummary = Schema.Struct(guestCommon)
export type GuestSummary = typeof GuestSummary.Type

export const GuestStatus = Schema.Struct({
  ...guestCommon,
  ha: Schema.optional(Schema.Struct({ managed: optNum, state: optStr }))
})
export type GuestStatus = typeof GuestStatus.Type

/**
 * A CT config: the keys we read are typed, every other key (netN, mpN, unusedN, ...) is kept raw.
 * PVE omits keys that hold their default, so all are optional.
 */
export const GuestConfig = Schema.Struct(
  {
    digest: optStr,
    hostname: optStr,
    description: optStr,
    memory: optNum,
    swap: optNum,
    cores: optNum,
    cpulimit: optNum,
    cpuunits: optNum,
    rootfs: optStr,
    features: optStr,
    tags: optStr,
    onboot: optFlag,
    unprivileged: optFlag,
    protection: optFlag,
    template: optFlag,
    lock: optNonEmpty,
    ostype: optStr,
    arch: optStr,
    parent: optStr
  },
  Schema.Record({ key: Schema.String, value: Schema.Unknown })
)
export type GuestConfig = typeof GuestConfig.Type

export const StorageConfigEntry = Schema.Struct({
  storage: Schema.String,
  type: Schema.String,
  content: optStr,
  path: optStr,
  shared: optFlag,
  disable: optFlag,
  nodes: optStr,
  digest: optStr,
  "prune-backups": optStr,
  "max-protected-backups": optNum,
  /** dir: yes/no/1/0 or the mount path; offline when not mounted */
  is_mountpoint: optStr,
  /** nfs, cifs, pbs */
  server: optStr,
  /** nfs */
  export: optStr,
  /** cifs */
  share: optStr,
  subdir: optStr,
  /** cifs, pbs (PVE never lists a password) */
  username: optStr,
  /** pbs */
  datastore: optStr,
  namespace: optStr,
  port: optNum,
  fingerprint: optStr,
  /** pbs: the key's fingerprint (or "1"), never the key */
  "encryption-key": optStr,
  "master-pubkey": optFlag
})
export type StorageConfigEntry = typeof StorageConfigEntry.Type

export const NodeStorageEntry = Schema.Struct({
  storage: Schema.String,
  type: Schema.String,
  content: optStr,
  enabled: optFlag,
  active: optFlag,
  shared: optFlag,
  total: optNum,
  used: optNum,
  avail: optNum,
  used_fraction: optNum
})
export type NodeStorageEntry = typeof NodeStorageEntry.Type

export const StorageContentEntry = Schema.Struct({
  volid: Schema.String,
  content: optStr,
  format: optStr,
  size: optNum,
  ctime: optNum,
  vmid: optNum,
  subtype: optStr,
  notes: optStr,
  protected: optFlag,
  /** PBS: the encryption key's fingerprint, or "1" */
  encrypted: optStr,
  /** PBS: the last verify job's verdict (absent: never verified) */
  verification: Schema.optionalWith(Schema.Struct({ state: Schema.Literal("ok", "failed"), upid: optStr }), { nullable: true })
})
export type StorageContentEntry = typeof StorageContentEntry.Type

/**
 * POST /storage answers `{storage, type, config?}`; `config.encryption-key` is a PBS key PVE
 * generated (or was given), handed back this once. Kept as unknown here: Proxmox.ts takes the
 * key out into a Redacted value without ever formatting it.
 */
export const CreateStorageResponse = Envelope(Schema.Struct({
  storage: Schema.String,
  type: Schema.String,
  config: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.Unknown }), { nullable: true })
}))

export const SnapshotEntry = Schema.Struct({
  name: Schema.String,
  description: optStr,
  snaptime: optNum,
  parent: optStr,
  snapstate: optStr,
  running: optFlag,
  digest: optStr
})
export type SnapshotEntry = typeof SnapshotEntry.Type

export const TaskStatus = Schema.Struct({
  upid: Upid,
  node: Schema.String,
  status: Schema.Literal("running", "stopped"),
  exitstatus: optStr,
  type: optStr,
  id: optStr,
  user: optStr,
  tokenid: optStr,
  pid: optNum,
  pstart: optNum,
  starttime: optNum
})
export type TaskStatus = typeof TaskStatus.Type

/**
 * One `GET /nodes/{node}/tasks` entry, as far as waiting reads it. With `source=active` PVE lists
 * a running task with status "RUNNING" (older code: none) and a finished, not yet archived one
 * with its exit status and endtime. Loose on purpose: the list only says "still running"; a
 * task's own status is what decides how it ended.
 */
export const TaskListEntry = Schema.Struct({ upid: Schema.String, status: optStr, endtime: optNum })
export type TaskListEntry = typeof TaskListEntry.Type

export const TaskLogLine = Schema.Struct({ n: Num, t: Schema.String })
export type TaskLogLine = typeof TaskLogLine.Type
export const TaskLogPage = Schema.Struct({ data: Schema.Array(TaskLogLine), total: optNum })

/** Async mutations answer a UPID; vzdump may answer "OK"; PUT config answers null. */
export const UpidResponse = Envelope(Upid)
export const UpidOrNull = Envelope(Schema.NullOr(Upid))
export const UpidOrOk = Envelope(Schema.Union(Upid, Schema.Literal("OK")))
export const NextIdResponse = Envelope(WireVmId)
export const NullResponse = Envelope(Schema.Null)

/** Error body: `{data: null, message?, errors?}` (message since libpve-http-server-perl 5.2.0). */
export const ErrorBody = Schema.Struct({
  message: optStr,
  errors: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
})

// ---------------------------------------------------------------------------------------------
// Errors

/** The `(<acl path>, <privilege>[|<privilege>...])` of a PVE permission failure. */
export interface MissingPermission {
  readonly aclPath: string
  readonly privileges: ReadonlyArray<string>
}

export type ApiErrorKind =
  | "auth" // 401
  | "permission" // 403
  | "validation" // 400
  | "not_found" // 500 "... does not exist"
  | "conflict" // 500 already exists / running / not running / digest mismatch
  | "proxy" // 595/596: pveproxy could not finish; the change may still have happened
  | "not_implemented" // 501
  | "server" // any other 5xx

/** PVE answered with an error status. */
export class PveApiError extends Data.TaggedError("PveApiError")<{
  readonly method: string
  readonly path: string
  readonly status: number
  readonly kind: ApiErrorKind
  readonly message: string
  readonly permission?: MissingPermission
  readonly paramErrors?: Readonly<Record<string, string>>
}> {}

/** The guest carries a `lock:` (or its config flock timed out): retry later. */
export class PveLocked extends Data.TaggedError("PveLocked")<{
  readonly method: string
  readonly path: string
  readonly lock: string
  readonly message: string
}> {
  get retryable(): true {
    return true
  }
}

/** Network, TLS or timeout before a complete PVE answer. */
export class PveTransportError extends Data.TaggedError("PveTransportError")<{
  readonly method: string
  readonly path: string
  /** tls: the peer failed verification or the pin; retrying cannot help. */
  readonly reason: "network" | "tls" | "timeout"
  readonly message: string
}> {}

/** PVE answered, but not with a shape we can use. */
export class PveDecodeError extends Data.TaggedError("PveDecodeError")<{
  readonly method: string
  readonly path: string
  readonly message: string
}> {}

/** A task stopped with an exitstatus other than OK. */
export class PveTaskFailed extends Data.TaggedError("PveTaskFailed")<{
  readonly upid: string
  readonly exitstatus: string
  readonly permission?: MissingPermission
  readonly logTail: ReadonlyArray<string>
  readonly message: string
}> {}

/** The wait gave up; the task itself may still be running on the host. */
export class PveTaskTimeout extends Data.TaggedError("PveTaskTimeout")<{
  readonly upid: string
  readonly afterSeconds: number
  readonly message: string
}> {}

export type ProxmoxError = PveApiError | PveLocked | PveTransportError | PveDecodeError
export type WaitError = ProxmoxError | PveTaskFailed | PveTaskTimeout
