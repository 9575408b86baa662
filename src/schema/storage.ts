/**
 * The storage manifest and backup policies of the desired state (SPEC §13, issue 10): the targets
 * a host keeps data on and backs up to, the policy per target, and per guest volume where it lives
 * and how it is protected. Decoded strictly (unknown keys are errors) with messages that name the
 * path and never echo a value; `creds` in particular never prints (see StorageCreds).
 */
import { Either, ParseResult, Redacted, Schema } from "effect"
import { parseCalendarEvent } from "../programs/protection/calendar.js"
import { StorageId, VmId } from "./ids.js"
import { FsUuid, UsbTargetId } from "./privileged.js"

const overrideMessage = (message: string) => ({ message: () => ({ message, override: true }) })

const literals = <const L extends ReadonlyArray<string>>(what: string, ...values: L) =>
  Schema.Literal(...values).annotations(overrideMessage(`${what} is one of ${values.map((v) => `"${v}"`).join(", ")}`))

// ---------------------------------------------------------------------------------------------
// Schedules and retention

/** A calendar event in the subset `src/programs/protection/calendar.ts` documents. */
export const CalendarSchedule = Schema.String.annotations({ message: () => "a schedule is a calendar event string such as \"mon..fri 02:00\"" }).pipe(
  Schema.filter((s) => Either.match(parseCalendarEvent(s), { onLeft: (e) => `invalid schedule: ${e.message}`, onRight: () => true })),
  Schema.brand("CalendarSchedule")
)
export type CalendarSchedule = typeof CalendarSchedule.Type

const keepCount = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n >= 0 && n <= 100_000, { message: () => "a keep count is an integer between 0 and 100000" })
)
const optionalExact = <S extends Schema.Schema.All>(s: S) => Schema.optionalWith(s, { exact: true })

/**
 * PVE's prune-backups options, snake_case (`keep_last` is PVE's `keep-last`). `keep_all: true`
 * keeps everything; so does no count above 0 (the agent never prunes to nothing).
 */
export const Retention = Schema.Struct({
  keep_all: optionalExact(Schema.Boolean.annotations(overrideMessage("keep_all is true or false"))),
  keep_last: optionalExact(keepCount),
  keep_hourly: optionalExact(keepCount),
  keep_daily: optionalExact(keepCount),
  keep_weekly: optionalExact(keepCount),
  keep_monthly: optionalExact(keepCount),
  keep_yearly: optionalExact(keepCount)
}).annotations({ message: () => "retention is an object { keep_all?, keep_last?, keep_hourly?, keep_daily?, keep_weekly?, keep_monthly?, keep_yearly? }" }).pipe(
  Schema.filter((r) => {
    const counted = [r.keep_last, r.keep_hourly, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly].some((n) => (n ?? 0) > 0)
    return r.keep_all === true && counted ? "keep_all cannot be combined with keep_* counts above 0" : true
  })
)
export type Retention = typeof Retention.Type

export const DEFAULT_RESTORE_TEST = CalendarSchedule.make("weekly")
export const DEFAULT_VERIFY = CalendarSchedule.make("daily")

export const BackupPolicy = Schema.Struct({
  /** When backups to this target run. */
  schedule: CalendarSchedule,
  retention: Retention,
  /** Self-restore-test of each guest's newest backup here; default weekly. */
  restore_test: Schema.optionalWith(CalendarSchedule, { exact: true, default: () => DEFAULT_RESTORE_TEST }),
  /** Integrity verify of the archives here; default daily. */
  verify: Schema.optionalWith(CalendarSchedule, { exact: true, default: () => DEFAULT_VERIFY })
}).annotations({ message: () => "a policy is an object { schedule, retention, restore_test?, verify? }" })
export type BackupPolicy = typeof BackupPolicy.Type

// ---------------------------------------------------------------------------------------------
// Credentials

const CredsWire = Schema.Union(
  Schema.Struct({ ref: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}$/)) }),
  Schema.Struct({ ciphertext: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9+/]{4,65536}={0,2}$/)) })
)
const checkCreds = Schema.decodeUnknownEither(CredsWire, { onExcessProperty: "error" })
type CredsValue = typeof CredsWire.Type

const CREDS_MESSAGE = "creds is { ref } (a credential already on the host) or { ciphertext } (base64, sealed to the host); the value is not shown"

/**
 * A target's credentials: a reference to a secret the host holds, or ciphertext sealed to the
 * host (decrypted by whoever uses it, never here). Decoded into a `Redacted`, so String(),
 * JSON.stringify, util.inspect and Effect's pretty-printing all show `<redacted>`; a malformed
 * value fails with a fixed message, and the parse issue carries a placeholder, not the input.
 * `Schema.encode` gives the wire value back (the dev hub serves what it was given).
 */
export const StorageCreds = Schema.transformOrFail(Schema.Unknown, Schema.RedactedFromSelf(Schema.typeSchema(CredsWire)), {
  strict: true,
  decode: (u, _, ast) =>
    Either.match(checkCreds(Redacted.isRedacted(u) ? Redacted.value(u) : u), {
      onLeft: () => ParseResult.fail(new ParseResult.Type(ast, "<redacted>", CREDS_MESSAGE)),
      onRight: (v) => ParseResult.succeed(Redacted.make(v))
    }),
  encode: (r) => ParseResult.succeed<unknown>(Redacted.value(r))
}).annotations(overrideMessage(CREDS_MESSAGE))
export type StorageCreds = Redacted.Redacted<CredsValue>

const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * Wraps each target's raw `creds` in a Redacted before decoding. A parse issue keeps the input it
 * rejected (a failing target, the whole array), so without this a deep inspect of a ParseError
 * would show the secret. Copies only what it changes; own keys, `__proto__` included, are kept
 * for the strict decode to judge.
 */
export const redactCredsIn = (manifest: unknown): unknown =>
  Array.isArray(manifest)
    ? manifest.map((t: unknown) => (isObject(t) && Object.hasOwn(t, "creds") && !Redacted.isRedacted(t["creds"]) ? { ...t, creds: Redacted.make(t["creds"]) } : t))
    : manifest

// ---------------------------------------------------------------------------------------------
// Targets

export const TargetType = literals("type", "local-dir", "usb", "nfs", "cifs", "pbs")
export type TargetType = typeof TargetType.Type
export const TargetClass = literals("class", "fast", "slow")
export type TargetClass = typeof TargetClass.Type
export const TargetRole = literals("role", "primary", "vzdump-target", "pbs-offsite", "bulk-data")
export type TargetRole = typeof TargetRole.Type
export const TargetState = literals("state", "attached", "disconnected", "decommissioned")
export type TargetState = typeof TargetState.Type

/** A PBS target's identity: the repository and the pinned server certificate fingerprint. */
export const PbsDurableId = Schema.Struct({ repo: Schema.String, fingerprint: optionalExact(Schema.String) })
export type PbsDurableId = typeof PbsDurableId.Type

const DURABLE_ID_MESSAGE = "durable_id is a string (usb filesystem UUID, nfs/cifs 'server:export', local-dir path) or { repo, fingerprint } for pbs"

// A USB target's UUID and id are what Privileged mounts (src/schema/privileged.ts): a manifest that
// decodes can always be mounted, never left to fail at the root helper.
const isUsbUuid = Schema.is(FsUuid)
const isUsbTargetId = Schema.is(UsbTargetId)
const HOST = String.raw`(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]{2,45}\])`
const NFS_ID = new RegExp(String.raw`^${HOST}:(/[A-Za-z0-9._~+@%/-]*)$`)
const CIFS_ID = new RegExp(String.raw`^${HOST}:([A-Za-z0-9._$ -]{1,80}(?:/[A-Za-z0-9._ -]+)*)$`)
const LOCAL_DIR = /^\/[A-Za-z0-9._~+@%/-]*$/
// [[user@realm[!token]@]server[:port]:]datastore, as proxmox-backup-client takes it; server required
const PBS_REPO = new RegExp(String.raw`^(?:[A-Za-z0-9._-]+@[A-Za-z0-9._-]+(?:![A-Za-z0-9._-]+)?@)?${HOST}(?::[0-9]{1,5})?:[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
const SHA256_FINGERPRINT = /^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}$/
const noDotDot = (p: string) => !/(^|\/)\.\.(\/|$)/.test(p)

const TargetFields = Schema.Struct({
  /** Stable name; also the PVE storage id the target maps to. */
  id: StorageId,
  type: TargetType,
  durable_id: Schema.Union(Schema.String, PbsDurableId).annotations(overrideMessage(DURABLE_ID_MESSAGE)),
  /** Fixed at attach: see classChangeRefused. */
  class: TargetClass,
  role: TargetRole,
  creds: optionalExact(StorageCreds),
  policy: optionalExact(BackupPolicy),
  state: TargetState
}).annotations({ message: () => "a storage target is an object { id, type, durable_id, class, role, creds?, policy?, state }" })

type TargetFields = typeof TargetFields.Type

const durableIdIssue = (t: TargetFields): string | undefined => {
  const id = t.durable_id
  if (t.type === "pbs") {
    if (typeof id === "string") return "a pbs target's durable_id is { repo, fingerprint }"
    if (!PBS_REPO.test(id.repo)) return "repo is [user@realm[!token]@]server[:port]:datastore"
    return undefined
  }
  if (typeof id !== "string") return `a ${t.type} target's durable_id is a string, not { repo, fingerprint }`
  switch (t.type) {
    case "usb":
      return isUsbUuid(id)
        ? undefined
        : "a usb target's durable_id is its filesystem UUID as udev names it (lower-case 8-4-4-4-12 hex, or upper-case XXXX-XXXX for vfat/exfat)"
    case "nfs":
      return NFS_ID.test(id) && noDotDot(id) && id.length <= 512 ? undefined : "an nfs target's durable_id is 'server:/export' (an absolute export path without '..')"
    case "cifs":
      return CIFS_ID.test(id) && noDotDot(id) && id.length <= 512 ? undefined : "a cifs target's durable_id is 'server:share[/subdir]'"
    case "local-dir":
      return LOCAL_DIR.test(id) && noDotDot(id) && id.length <= 512 ? undefined : "a local-dir target's durable_id is its absolute directory path (without '..')"
  }
}

const targetIssues = (t: TargetFields): Array<Schema.FilterIssue> => {
  const issues: Array<Schema.FilterIssue> = []
  if (t.type === "usb" && !isUsbTargetId(t.id)) {
    issues.push({ path: ["id"], message: "a usb target's id is also its mount directory and unit name: a letter, then up to 47 of [A-Za-z0-9._-]" })
  }
  const durable = durableIdIssue(t)
  if (durable !== undefined) {
    const onRepo = t.type === "pbs" && typeof t.durable_id !== "string"
    issues.push({ path: onRepo ? ["durable_id", "repo"] : ["durable_id"], message: durable })
  }
  // optional in the shape only so that its absence gets this message, not the generic one
  if (t.type === "pbs" && typeof t.durable_id !== "string" && !SHA256_FINGERPRINT.test(t.durable_id.fingerprint ?? "")) {
    issues.push({ path: ["durable_id", "fingerprint"], message: "a pbs target needs the server certificate's SHA-256 fingerprint (32 colon-separated hex bytes)" })
  }
  if (t.type === "pbs" && t.creds === undefined) issues.push({ path: ["creds"], message: "a pbs target needs creds (its API token secret)" })
  if ((t.type === "usb" || t.type === "local-dir" || t.type === "nfs") && t.creds !== undefined) {
    issues.push({ path: ["creds"], message: `a ${t.type} target has no creds` })
  }
  if ((t.type === "pbs") !== (t.role === "pbs-offsite")) {
    issues.push({ path: ["role"], message: "role pbs-offsite is for type pbs, and a pbs target's role is pbs-offsite" })
  }
  if (t.role === "primary" && t.policy !== undefined) {
    issues.push({ path: ["policy"], message: "a primary target holds guest volumes, not backups: put the policy on the target the backups go to" })
  }
  return issues
}

export const StorageTarget = TargetFields.pipe(Schema.filter(targetIssues))
export type StorageTarget = typeof StorageTarget.Type

const uniqueIds = (targets: ReadonlyArray<StorageTarget>): Array<Schema.FilterIssue> => {
  const first = new Map<string, number>()
  const issues: Array<Schema.FilterIssue> = []
  targets.forEach((t, i) => {
    const seen = first.get(t.id)
    if (seen === undefined) first.set(t.id, i)
    else issues.push({ path: [i, "id"], message: `duplicate target id '${t.id}' (first at [${seen}])` })
  })
  return issues
}

/** The manifest: every storage target of the host. */
export const StorageManifest = Schema.Array(StorageTarget).pipe(Schema.filter(uniqueIds))
export type StorageManifest = typeof StorageManifest.Type

// ---------------------------------------------------------------------------------------------
// Per-guest volume placement and backup decisions

/** PVE's container volume keys: rootfs and mp0..mp255. */
export const VolumeName = Schema.String.pipe(
  Schema.filter((s) => /^(rootfs|mp([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5]))$/.test(s), {
    message: () => "a volume is rootfs or mp0..mp255"
  })
)
export type VolumeName = typeof VolumeName.Type

/** A bulk volume's own protection: backed up to a target, or deliberately not (with the customer's reason). */
export const BackupDecision = Schema.Union(
  Schema.Struct({ target: StorageId }),
  Schema.Struct({
    none: Schema.Struct({
      reason: Schema.String.pipe(Schema.filter((s) => s.trim().length > 0 && s.length <= 500, { message: () => "the reason is 1-500 characters" }))
    })
  })
).annotations(overrideMessage("backup is { target } or { none: { reason } }"))
export type BackupDecision = typeof BackupDecision.Type

export const VolumeKind = literals("kind", "hot", "bulk")
export type VolumeKind = typeof VolumeKind.Type

export const VolumePlacement = Schema.Struct({
  volume: VolumeName,
  /** hot: DB/config, fast targets only, in the guest's vzdump; bulk: a backup=0 mount point. */
  kind: VolumeKind,
  target: StorageId,
  /** Bulk volumes only; absent on a bulk volume means unprotected (reported, never silent). */
  backup: optionalExact(BackupDecision),
  /**
   * Where the volume is mounted in the guest and its size (issue 12): a bring-up allocates a
   * missing mount point from these. Without them the volume is only checked, never allocated.
   */
  path: optionalExact(Schema.String.pipe(Schema.filter((p) => /^\/[A-Za-z0-9._\-/]{0,254}$/.test(p) && !p.split("/").includes(".."), {
    message: () => "a mount path is absolute, [A-Za-z0-9._-/], without '..', at most 255 characters"
  }))),
  size_gib: optionalExact(Schema.Number.pipe(Schema.filter((n) => Number.isSafeInteger(n) && n >= 1 && n <= 65536, {
    message: () => "size_gib is an integer between 1 and 65536"
  })))
}).annotations({ message: () => "a volume placement is an object { volume, kind, target, backup?, path?, size_gib? }" }).pipe(
  Schema.filter((v) => {
    const issues: Array<Schema.FilterIssue> = []
    if (v.kind === "bulk" && v.volume === "rootfs") issues.push({ path: ["kind"], message: "rootfs is always hot: bulk volumes are backup=0 mount points" })
    if (v.kind === "hot" && v.backup !== undefined) issues.push({ path: ["backup"], message: "only bulk volumes carry a backup decision (hot volumes are in the guest's backup)" })
    if (v.volume === "rootfs" && (v.path !== undefined || v.size_gib !== undefined)) issues.push({ path: ["volume"], message: "rootfs is sized by the guest's rootfs_gib and mounted at /" })
    if ((v.path === undefined) !== (v.size_gib === undefined)) issues.push({ path: ["path"], message: "path and size_gib come together (both or neither)" })
    return issues
  })
)
export type VolumePlacement = typeof VolumePlacement.Type

export const GuestPlacement = Schema.Struct({
  vmid: VmId,
  volumes: Schema.Array(VolumePlacement).pipe(
    Schema.filter((vs) => {
      const seen = new Set<string>()
      return vs.flatMap((v, i): Array<Schema.FilterIssue> => {
        if (!seen.has(v.volume)) {
          seen.add(v.volume)
          return []
        }
        return [{ path: [i, "volume"], message: `duplicate volume ${v.volume}` }]
      })
    })
  )
}).annotations({ message: () => "a guest placement is an object { vmid, volumes }" })
export type GuestPlacement = typeof GuestPlacement.Type

/** The desired state's `policies` block: per-guest placement and backup decisions. */
export const ProtectionPolicies = Schema.Struct({
  guests: Schema.optionalWith(
    Schema.Array(GuestPlacement).pipe(
      Schema.filter((gs) => {
        const seen = new Set<number>()
        return gs.flatMap((g, i): Array<Schema.FilterIssue> => {
          if (!seen.has(g.vmid)) {
            seen.add(g.vmid)
            return []
          }
          return [{ path: [i, "vmid"], message: `duplicate placement for vmid ${g.vmid}` }]
        })
      })
    ),
    { exact: true, default: () => [] }
  )
}).annotations({ message: () => "policies is an object { guests? }" })
export type ProtectionPolicies = typeof ProtectionPolicies.Type

/**
 * Cross-references between `storage` and `policies`, as filter issues with paths from the desired
 * state's root. Ids are echoed (validated storage ids, never secrets); nothing else is.
 */
export const protectionIssues = (storage: StorageManifest | undefined, policies: ProtectionPolicies | undefined): Array<Schema.FilterIssue> => {
  if (policies === undefined) return []
  const byId = new Map((storage ?? []).map((t) => [t.id as string, t] as const))
  const issues: Array<Schema.FilterIssue> = []
  policies.guests.forEach((g, gi) => {
    g.volumes.forEach((v, vi) => {
      const at = (...rest: Array<string>) => ["policies", "guests", gi, "volumes", vi, ...rest]
      const home = byId.get(v.target)
      if (home === undefined) issues.push({ path: at("target"), message: `unknown storage target '${v.target}'` })
      else {
        if (home.state === "decommissioned") issues.push({ path: at("target"), message: `target '${v.target}' is decommissioned` })
        if (home.type === "pbs") issues.push({ path: at("target"), message: `a volume cannot live on pbs target '${v.target}'` })
        if (v.kind === "hot" && home.class !== "fast") {
          issues.push({ path: at("target"), message: `a hot volume must live on a fast target; '${v.target}' is ${home.class}` })
        }
      }
      if (v.backup !== undefined && "target" in v.backup) {
        const dest = byId.get(v.backup.target)
        if (dest === undefined) issues.push({ path: at("backup", "target"), message: `unknown storage target '${v.backup.target}'` })
        else if (dest.id === v.target) issues.push({ path: at("backup", "target"), message: "a bulk volume's backup must go to another target than the one it lives on" })
        else if (dest.state === "decommissioned") issues.push({ path: at("backup", "target"), message: `target '${dest.id}' is decommissioned` })
      }
    })
  })
  return issues
}

// ---------------------------------------------------------------------------------------------
// Pure checks and lookups for the daemon and plan

export interface ClassChangeRefusal {
  readonly id: StorageId
  readonly from: TargetClass
  readonly to: TargetClass
  readonly message: string
}

/**
 * A target's class is fixed when it is attached (placement was checked against it): a manifest
 * that changes the class of a target the previous one had is refused, one entry per target.
 */
export const classChangeRefused = (previous: ReadonlyArray<StorageTarget>, next: ReadonlyArray<StorageTarget>): ReadonlyArray<ClassChangeRefusal> => {
  const before = new Map(previous.map((t) => [t.id as string, t.class] as const))
  return next.flatMap((t) => {
    const from = before.get(t.id)
    return from === undefined || from === t.class
      ? []
      : [{ id: t.id, from, to: t.class, message: `target '${t.id}' is ${from}: a target's class is fixed at attach and cannot change to ${t.class} (decommission it and attach the disk again as a new target)` }]
  })
}

export type BackupTier = "vzdump" | "pbs"

/** Where a target's backups sit in the tier order (snapshot → vzdump → pbs). */
export const tierOf = (t: StorageTarget): BackupTier => (t.type === "pbs" ? "pbs" : "vzdump")

/** Targets guests are backed up to on schedule: attached, vzdump-target or pbs-offsite, with a policy. */
export const scheduledBackupTargets = (manifest: ReadonlyArray<StorageTarget>): ReadonlyArray<StorageTarget & { readonly policy: BackupPolicy }> =>
  manifest.flatMap((t) =>
    t.state === "attached" && (t.role === "vzdump-target" || t.role === "pbs-offsite") && t.policy !== undefined ? [{ ...t, policy: t.policy }] : []
  )
