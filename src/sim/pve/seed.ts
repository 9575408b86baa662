/**
 * The simulator's seed: everything a fresh simulated PVE host starts with (version, nodes, users,
 * tokens, roles and ACLs, storages, guests, backup archives), plus type quirks, task durations and
 * fault injection. Decoded with effect/Schema; cross-references (ACL roles, storages of volumes,
 * nodes of guests, config keys) are checked after decoding, so a bad seed is one clear error.
 */
import { FileSystem } from "@effect/platform"
import { Effect, Either, ParseResult, Schema } from "effect"
import { SimPveSeedError } from "./errors.js"
import { parseMountPoint, validateConfig } from "./lxcconf.js"
import { STORAGE_CONTENT_TYPES } from "./params.js"
import { isPrivilege, splitTokenId } from "./privileges.js"

/** Where the default seed lives, relative to the repository root (the CLI's cwd). */
export const defaultSeedPath = "configs/sim/pve.json"

export const TASK_TYPES = [
  "vzcreate",
  "vzrestore",
  "vzdump",
  "vzsnapshot",
  "vzrollback",
  "vzdelsnapshot",
  "resize",
  "vzstart",
  "vzstop",
  "vzshutdown",
  "vzdestroy",
  "imgdel"
] as const
export type SimTaskType = (typeof TASK_TYPES)[number]

/** Simulated run time per task type, in milliseconds of (Test)Clock time. */
export const DEFAULT_TASK_DURATIONS_MS: Readonly<Record<SimTaskType, number>> = {
  vzcreate: 15_000,
  vzrestore: 20_000,
  vzdump: 15_000,
  vzsnapshot: 2_000,
  vzrollback: 4_000,
  vzdelsnapshot: 2_000,
  resize: 3_000,
  vzstart: 3_000,
  vzstop: 2_000,
  vzshutdown: 5_000,
  vzdestroy: 3_000,
  imgdel: 1_000
}

const NonNegativeInt = Schema.Int.pipe(Schema.nonNegative())
const Rate = Schema.Number.pipe(Schema.between(0, 1))

const Privilege = Schema.String.pipe(
  Schema.filter((s) => isPrivilege(s) || `unknown PVE 9 privilege '${s}' (there is no VM.Monitor in PVE 9 and no VM.Config.CPUMemory)`)
)

const ConfigValue = Schema.Union(Schema.String, Schema.Number, Schema.Boolean)
const ConfigRecord = Schema.Record({ key: Schema.String, value: ConfigValue })

/** Sim-only: whether a guest's services answer once it has booted (the guest model, see README). */
export const ServiceHealth = Schema.Literal("healthy", "failing")
export type ServiceHealth = typeof ServiceHealth.Type

const NodeSeed = Schema.Struct({
  node: Schema.String.pipe(Schema.pattern(/^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$/)),
  status: Schema.optionalWith(Schema.Literal("online", "offline"), { default: () => "online" as const }),
  level: Schema.optionalWith(Schema.String, { default: () => "" }),
  maxcpu: Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { default: () => 8 }),
  sockets: Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { default: () => 1 }),
  cpu_model: Schema.optionalWith(Schema.String, { default: () => "Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz" }),
  cpu_mhz: Schema.optionalWith(Schema.String, { default: () => "2100.000" }),
  maxmem: Schema.optionalWith(NonNegativeInt, { default: () => 32 * 1024 ** 3 }),
  mem_used: Schema.optionalWith(NonNegativeInt, { default: () => 3 * 1024 ** 3 }),
  swap_total: Schema.optionalWith(NonNegativeInt, { default: () => 8 * 1024 ** 3 }),
  maxdisk: Schema.optionalWith(NonNegativeInt, { default: () => 100 * 1024 ** 3 }),
  disk_used: Schema.optionalWith(NonNegativeInt, { default: () => 12 * 1024 ** 3 }),
  uptime_s: Schema.optionalWith(NonNegativeInt, { default: () => 864_000 }),
  cpu: Schema.optionalWith(Rate, { default: () => 0.031 }),
  loadavg: Schema.optionalWith(Schema.Tuple(Schema.Number, Schema.Number, Schema.Number), {
    default: () => [0.21, 0.27, 0.25] as const
  }),
  kversion: Schema.optionalWith(Schema.String, {
    default: () => "Linux 6.17.2-1-pve #1 SMP PREEMPT_DYNAMIC PMX 6.17.2-1 (2025-10-21T11:55Z)"
  }),
  kernel_release: Schema.optionalWith(Schema.String, { default: () => "6.17.2-1-pve" }),
  boot_mode: Schema.optionalWith(Schema.Literal("efi", "legacy-bios"), { default: () => "efi" as const })
})
export type SimNodeSeed = typeof NodeSeed.Type

const UserSeed = Schema.Struct({
  userid: Schema.String.pipe(Schema.pattern(/^[^\s:!@]+@[A-Za-z][A-Za-z0-9.\-_]+$/)),
  enable: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  /** epoch seconds, 0 = never */
  expire: Schema.optionalWith(NonNegativeInt, { default: () => 0 })
})

const TokenSeed = Schema.Struct({
  tokenid: Schema.String.pipe(Schema.filter((s) => splitTokenId(s) !== undefined || "a token id is user@realm!name")),
  // the simulator's secrets are public, but keep even them out of decode errors
  secret: Schema.String.pipe(
    Schema.pattern(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/),
    Schema.annotations({ message: () => ({ message: "expected a lower-case UUID token secret (value hidden)", override: true }) })
  ),
  privsep: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  expire: Schema.optionalWith(NonNegativeInt, { default: () => 0 })
})

const AclSeed = Schema.Struct({
  path: Schema.String.pipe(Schema.pattern(/^\/[^\s]*$/)),
  /** a user id or a token id */
  ugid: Schema.String,
  roles: Schema.Array(Schema.String),
  propagate: Schema.optionalWith(Schema.Boolean, { default: () => true })
})

const ContentType = Schema.Literal(...STORAGE_CONTENT_TYPES)

/** SHA-256 fingerprint, 32 colon-separated hex pairs (PVE's `fingerprint-sha256` format). */
export const FINGERPRINT_RE = /^(?:[A-Fa-f0-9]{2}:){31}[A-Fa-f0-9]{2}$/

export const STORAGE_TYPES = ["dir", "lvmthin", "lvm", "zfspool", "btrfs", "nfs", "cifs", "pbs"] as const
export type StorageType = (typeof STORAGE_TYPES)[number]

const StorageSeed = Schema.Struct({
  storage: Schema.String.pipe(Schema.pattern(/^[a-z][a-z0-9\-_.]*[a-z0-9]$/i)),
  type: Schema.Literal(...STORAGE_TYPES),
  content: Schema.Array(ContentType),
  path: Schema.optional(Schema.String),
  vgname: Schema.optional(Schema.String),
  thinpool: Schema.optional(Schema.String),
  shared: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  disable: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /**
   * Sim-only: reachable at start. dir: its filesystem is mounted (a USB disk plugged in);
   * nfs/cifs/pbs: the server answers. Flipped later with `setStorage` / PUT /sim-admin/storage.
   */
  active: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  nodes: Schema.optional(Schema.Array(Schema.String)),
  "prune-backups": Schema.optional(Schema.String),
  "max-protected-backups": Schema.optional(Schema.Int.pipe(Schema.greaterThanOrEqualTo(-1))),
  /** dir: PVE's `is_mountpoint` (yes/no/1/0 or the mount path): offline when not mounted */
  is_mountpoint: Schema.optional(Schema.String),
  /** nfs, cifs, pbs */
  server: Schema.optional(Schema.String),
  /** nfs */
  export: Schema.optional(Schema.String),
  options: Schema.optional(Schema.String),
  /** cifs */
  share: Schema.optional(Schema.String),
  subdir: Schema.optional(Schema.String),
  domain: Schema.optional(Schema.String),
  smbversion: Schema.optional(Schema.String),
  /** cifs, pbs (a PBS token id `user@realm!name`) */
  username: Schema.optional(Schema.String),
  /** pbs */
  datastore: Schema.optional(Schema.String),
  namespace: Schema.optional(Schema.String),
  port: Schema.optional(Schema.Int.pipe(Schema.between(1, 65535))),
  fingerprint: Schema.optional(Schema.String.pipe(Schema.pattern(FINGERPRINT_RE))),
  /** pbs: the encryption key's fingerprint as PVE lists it (the key itself is never seeded) */
  "encryption-key": Schema.optional(Schema.String),
  total: NonNegativeInt,
  /** usage not accounted to simulated volumes (OS, ISOs, ...) */
  used: NonNegativeInt
})
export type SimStorageSeed = typeof StorageSeed.Type

const SnapshotSeed = Schema.Struct({
  name: Schema.String.pipe(Schema.pattern(/^[A-Za-z][A-Za-z0-9_-]+$/), Schema.maxLength(40)),
  description: Schema.optionalWith(Schema.String, { default: () => "" }),
  snaptime: NonNegativeInt,
  config: ConfigRecord
})

const GuestSeed = Schema.Struct({
  vmid: Schema.Int.pipe(Schema.between(100, 999_999_999)),
  node: Schema.optional(Schema.String),
  status: Schema.Literal("running", "stopped"),
  /** for running guests: seconds they have been up when the simulator starts */
  uptime_s: Schema.optionalWith(NonNegativeInt, { default: () => 3600 }),
  config: ConfigRecord,
  snapshots: Schema.optionalWith(Schema.Array(SnapshotSeed), { default: () => [] }),
  /** sim-only: whether its services answer once booted (default healthy); copied into its backups */
  services: Schema.optional(ServiceHealth)
})
export type SimGuestSeed = typeof GuestSeed.Type

/** Sim-only archive damage: `restore` makes a restore fail in extraction, `health` restores a guest whose services fail. */
export const ArchiveCorruption = Schema.Literal("restore", "health")
export type ArchiveCorruption = typeof ArchiveCorruption.Type

const BackupSeed = Schema.Struct({
  storage: Schema.String,
  vmid: Schema.Int.pipe(Schema.between(100, 999_999_999)),
  /** backup time, UTC, e.g. "2026-01-10T02:00:00Z" (also the archive name's timestamp) */
  time: Schema.String.pipe(Schema.filter((s) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/.test(s) || "expected YYYY-MM-DDTHH:MM:SSZ")),
  /** vzdump archives only (a PBS snapshot is `pbs-ct`) */
  compression: Schema.optionalWith(Schema.Literal("zst", "gz", "lzo"), { default: () => "zst" as const }),
  size: NonNegativeInt,
  notes: Schema.optional(Schema.String),
  protected: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** the guest config stored inside the archive (what a restore recovers) */
  config: ConfigRecord,
  /** sim-only: the services of the guest it was taken from (default healthy) */
  services: Schema.optional(ServiceHealth),
  /** sim-only: damage (see ArchiveCorruption) */
  corrupt: Schema.optional(ArchiveCorruption),
  /** PBS snapshots: the last verify job's verdict (absent: never verified) */
  verification: Schema.optional(Schema.Literal("ok", "failed"))
})
export type SimBackupSeed = typeof BackupSeed.Type

const TemplateSeed = Schema.Struct({
  storage: Schema.String,
  /** file name under vztmpl/, e.g. debian-13-standard_13.1-2_amd64.tar.zst */
  name: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._+-]*\.tar\.(?:gz|xz|zst)$/)),
  size: NonNegativeInt,
  ctime: Schema.optionalWith(NonNegativeInt, { default: () => 1_760_000_000 })
})
export type SimTemplateSeed = typeof TemplateSeed.Type

const TaskDurations = Schema.partial(
  Schema.Struct(Object.fromEntries(TASK_TYPES.map((t) => [t, NonNegativeInt])) as Record<SimTaskType, typeof NonNegativeInt>)
)

export const SimPveQuirks = Schema.Struct({
  /** PVE < 8.2: the lxc list's `vmid` is a JSON string */
  vmid_as_string: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** config `cpulimit` (schema type number) comes back as a string */
  cpulimit_as_string: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  /** node status `loadavg` is an array of strings */
  loadavg_strings: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  /** PVE >= 8.3/8.4 updates: error bodies carry `message`; older hosts only the reason phrase */
  error_message_body: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  /** PVE < 7.0: status/current vmid, pid, disk, maxdisk, mem, swap, diskread, diskwrite as strings */
  status_ints_as_string: Schema.optionalWith(Schema.Boolean, { default: () => false })
})
export type SimPveQuirks = typeof SimPveQuirks.Type

export const Latency = Schema.Union(
  NonNegativeInt,
  Schema.Struct({ min: NonNegativeInt, max: NonNegativeInt }).pipe(Schema.filter((r) => r.min <= r.max || "latency min must be <= max"))
)

export const SimPveFaultsSeed = Schema.Struct({
  /** PRNG seed: the same seed and the same request sequence give the same faults */
  seed: Schema.optionalWith(Schema.Int, { default: () => 1 }),
  /** share of API calls answered with a 5xx instead */
  http_error_rate: Schema.optionalWith(Rate, { default: () => 0 }),
  http_error_statuses: Schema.optionalWith(Schema.Array(Schema.Literal(500, 595, 596)), {
    default: () => [500, 595, 596] as const
  }),
  /** extra response latency (Clock time), fixed or a uniform range */
  latency_ms: Schema.optionalWith(Latency, { default: () => 0 }),
  /** share of tasks that end in TASK ERROR (with the type's realistic failure and its side effects) */
  task_failure_rate: Schema.optionalWith(Rate, { default: () => 0 }),
  /** task types that always end in TASK ERROR (e.g. ["vzrestore"]), on top of the rate */
  task_failure_types: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /**
   * task types that succeed with one warning (`WARNINGS: 1`), as vzdump does when a file changes
   * while tar reads it: the archive exists [inf: the warning text is tar's, as vzdump logs it]
   */
  task_warning_types: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** share of mutating calls on a guest refused with a lock conflict */
  lock_conflict_rate: Schema.optionalWith(Rate, { default: () => 0 }),
  /**
   * Echo the request's Authorization header (token id and secret) into error texts, as a
   * misconfigured proxy or a debugging build might: `message` in the body (even without
   * quirks.error_message_body), `reason` in the HTTP reason phrase, `params` in the `errors` map
   * (as a value and as a key), `task` in a failed task's exitstatus and log lines. `body` echoes
   * the request's body parameters (passwords, keys) into the error `message` and reason phrase.
   * Not random: every error answer (every failed task) echoes. For tests of the client's scrubbing.
   */
  echo_headers: Schema.optionalWith(Schema.Array(Schema.Literal("message", "reason", "params", "task", "body")), {
    default: () => []
  })
})
export type SimPveFaults = typeof SimPveFaultsSeed.Type

export const SimPveSeed = Schema.Struct({
  version: Schema.Struct({ version: Schema.String, release: Schema.String, repoid: Schema.String }),
  cluster: Schema.optionalWith(
    Schema.Struct({
      nextid_lower: Schema.optionalWith(Schema.Int.pipe(Schema.between(100, 999_999_999)), { default: () => 100 }),
      nextid_upper: Schema.optionalWith(Schema.Int.pipe(Schema.between(101, 1_000_000_000)), { default: () => 1_000_000 })
    }),
    { default: () => ({ nextid_lower: 100, nextid_upper: 1_000_000 }) }
  ),
  nodes: Schema.NonEmptyArray(NodeSeed),
  roles: Schema.Record({ key: Schema.String, value: Schema.Array(Privilege) }),
  users: Schema.Array(UserSeed),
  tokens: Schema.Array(TokenSeed),
  acl: Schema.Array(AclSeed),
  storages: Schema.Array(StorageSeed),
  guests: Schema.optionalWith(Schema.Array(GuestSeed), { default: () => [] }),
  backups: Schema.optionalWith(Schema.Array(BackupSeed), { default: () => [] }),
  /** container templates (vztmpl) for plain creates */
  templates: Schema.optionalWith(Schema.Array(TemplateSeed), { default: () => [] }),
  task_durations_ms: Schema.optionalWith(TaskDurations, { default: () => ({}) }),
  quirks: Schema.optionalWith(SimPveQuirks, { default: () => Schema.decodeSync(SimPveQuirks)({}) }),
  faults: Schema.optionalWith(SimPveFaultsSeed, { default: () => Schema.decodeSync(SimPveFaultsSeed)({}) }),
  /** sim-only: Clock time from a guest's start until its services answer (the guest model) */
  guest_boot_ms: Schema.optionalWith(NonNegativeInt, { default: () => 5_000 }),
  /** PVE delays 401s by ~3 s; 0 keeps tests fast (Clock time) */
  auth_failure_delay_ms: Schema.optionalWith(NonNegativeInt, { default: () => 0 }),
  /** the token whose id/secret the simulator reports (default: the first) */
  default_token: Schema.optional(Schema.String)
})
export type SimPveSeed = typeof SimPveSeed.Type
export type SimPveSeedEncoded = typeof SimPveSeed.Encoded

const BUILTIN_ROLES = new Set(["NoAccess"])

/** Options PVE requires per storage type (path for nfs/cifs defaults to /mnt/pve/<id>). */
const REQUIRED_BY_TYPE: Partial<Record<StorageType, ReadonlyArray<"path" | "server" | "export" | "share" | "datastore" | "vgname">>> = {
  dir: ["path"],
  nfs: ["server", "export"],
  cifs: ["server", "share"],
  pbs: ["server", "datastore"]
}

/** Checks what the schema cannot: references between sections. Returns the first problem. */
export const crossCheckSeed = (seed: SimPveSeed): string | undefined => {
  const nodes = new Set(seed.nodes.map((n) => n.node))
  if (nodes.size !== seed.nodes.length) return "nodes: duplicate node name"
  const users = new Set(seed.users.map((u) => u.userid))
  const tokens = new Set(seed.tokens.map((t) => t.tokenid))
  for (const t of seed.tokens) {
    const owner = splitTokenId(t.tokenid)?.userid
    if (owner === undefined || !users.has(owner)) return `tokens: ${t.tokenid}: owning user ${owner ?? "?"} is not in users`
  }
  if (tokens.size !== seed.tokens.length) return "tokens: duplicate token id"
  if (seed.tokens.length === 0) return "tokens: the simulator needs at least one API token"
  if (seed.default_token !== undefined && !tokens.has(seed.default_token)) {
    return `default_token: ${seed.default_token} is not in tokens`
  }
  for (const [i, e] of seed.acl.entries()) {
    if (!users.has(e.ugid) && !tokens.has(e.ugid)) return `acl[${i}]: ${e.ugid} is neither a user nor a token`
    for (const r of e.roles) {
      if (seed.roles[r] === undefined && !BUILTIN_ROLES.has(r)) return `acl[${i}]: role '${r}' is not defined in roles`
    }
  }
  const storages = new Map(seed.storages.map((s) => [s.storage, s]))
  if (storages.size !== seed.storages.length) return "storages: duplicate storage id"
  for (const s of seed.storages) {
    const missing = (REQUIRED_BY_TYPE[s.type] ?? []).find((k) => s[k] === undefined)
    if (missing !== undefined) return `storages[${s.storage}]: a ${s.type} storage needs '${missing}'`
    if (s.type === "pbs" && s.content.some((c) => c !== "backup")) return `storages[${s.storage}]: a pbs storage holds only backup content`
  }
  const vmids = new Set<number>()
  const volumes = new Set<string>()
  for (const g of seed.guests) {
    const where = `guests[vmid=${g.vmid}]`
    if (vmids.has(g.vmid)) return `${where}: duplicate vmid`
    vmids.add(g.vmid)
    if (g.node !== undefined && !nodes.has(g.node)) return `${where}: node '${g.node}' is not in nodes`
    const cfg = validateConfig(g.config)
    if (Either.isLeft(cfg)) return `${where}.config: ${firstError(cfg.left)}`
    if (cfg.right["rootfs"] === undefined) return `${where}.config: rootfs is required`
    for (const [key, value] of Object.entries(cfg.right)) {
      if (key !== "rootfs" && !/^mp\d+$/.test(key)) continue
      const mp = parseMountPoint(key, String(value))
      if (Either.isLeft(mp)) return `${where}.config.${key}: ${mp.left}`
      if (mp.right.type !== "volume") continue
      const st = mp.right.storage === undefined ? undefined : storages.get(mp.right.storage)
      if (st === undefined) return `${where}.config.${key}: storage of '${mp.right.volume}' is not in storages`
      if (!st.content.includes("rootdir")) return `${where}.config.${key}: storage '${st.storage}' has no rootdir content`
      if (mp.right.size === undefined) return `${where}.config.${key}: size= is required`
      if (volumes.has(mp.right.volume)) return `${where}.config.${key}: volume '${mp.right.volume}' used twice`
      volumes.add(mp.right.volume)
    }
    for (const s of g.snapshots) {
      const sc = validateConfig(s.config)
      if (Either.isLeft(sc)) return `${where}.snapshots[${s.name}].config: ${firstError(sc.left)}`
    }
  }
  for (const [i, b] of seed.backups.entries()) {
    const st = storages.get(b.storage)
    if (st === undefined) return `backups[${i}]: storage '${b.storage}' is not in storages`
    if (!st.content.includes("backup")) return `backups[${i}]: storage '${b.storage}' has no backup content`
    if (b.verification !== undefined && st.type !== "pbs") return `backups[${i}]: verification is listed for PBS snapshots only`
    const cfg = validateConfig(b.config)
    if (Either.isLeft(cfg)) return `backups[${i}].config: ${firstError(cfg.left)}`
    if (cfg.right["rootfs"] === undefined) return `backups[${i}].config: rootfs is required (restore recovers it)`
  }
  for (const [i, t] of seed.templates.entries()) {
    const st = storages.get(t.storage)
    if (st === undefined) return `templates[${i}]: storage '${t.storage}' is not in storages`
    if (!st.content.includes("vztmpl")) return `templates[${i}]: storage '${t.storage}' has no vztmpl content`
  }
  return undefined
}

const firstError = (errors: Record<string, string>): string => {
  const [k, v] = Object.entries(errors)[0] ?? ["?", "?"]
  return `${k}: ${v.trimEnd()}`
}

/** Decodes and cross-checks a seed value (e.g. the parsed default seed JSON). */
export const decodeSeed = (input: unknown, source: string): Effect.Effect<SimPveSeed, SimPveSeedError> =>
  Schema.decodeUnknown(SimPveSeed, { onExcessProperty: "error" })(input).pipe(
    Effect.mapError((e) => new SimPveSeedError({ source, message: ParseResult.TreeFormatter.formatErrorSync(e) })),
    Effect.flatMap((seed) => {
      const problem = crossCheckSeed(seed)
      return problem === undefined ? Effect.succeed(seed) : Effect.fail(new SimPveSeedError({ source, message: problem }))
    })
  )

/** Reads a seed file (JSON) and decodes it. */
export const loadSeed = (path: string): Effect.Effect<SimPveSeed, SimPveSeedError, FileSystem.FileSystem> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const text = yield* fs.readFileString(path).pipe(
      Effect.mapError((e) => new SimPveSeedError({ source: path, message: `cannot read seed file: ${e.message}` }))
    )
    const json = yield* Effect.try({
      try: (): unknown => JSON.parse(text),
      catch: (e) => new SimPveSeedError({ source: path, message: `seed file is not JSON: ${e instanceof Error ? e.message : String(e)}` })
    })
    return yield* decodeSeed(json, path)
  })
