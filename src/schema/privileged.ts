/**
 * Contracts of the Privileged layer (SPEC §3): the argument validators that run before any root
 * command is spawned, the allowed filesystem roots, the typed error, and the decoded hardware
 * readings. The validators mirror the regular expressions in configs/sudoers/felhom-agent: sudoers
 * is the first line of defence, these are the second, and both must accept the same argv.
 */
import { Data, Schema } from "effect"
import type { PrivilegedCommand } from "./config.js"

// ---------------------------------------------------------------------------------------------
// Allowed roots

/**
 * USB disks are mounted at exactly one directory level below this root (`/mnt/felhom/<name>`).
 * One level only: a deeper mount point would traverse a directory that may live on a previously
 * mounted, customer-controlled filesystem, where a symlink could redirect a root mount anywhere.
 * The root itself must be root-owned (the agent user must not be able to plant symlinks in it).
 */
export const USB_MOUNT_ROOT = "/mnt/felhom"

/**
 * The default of `privileged.bootstrap_root`: host directories bind-mounted into guests (the
 * read-only bootstrap config mount, SPEC §12) live below it, one directory per guest. Nothing else
 * on the host can be exposed to a guest through this layer.
 *
 * It is deliberately NOT below the service user's state directory (/var/lib/felhom-agent): the
 * service user owns that directory, so it can rename any entry in it, root-owned or not, and put
 * a symlink in its place (`bootstrap -> /`). The bind-mount source is resolved by root, when
 * `pct set` runs and again at every container start, so the whole path must stay root-owned and
 * unwritable by anyone else for as long as the guest exists (issue 8, finding 7). The sudoers
 * rule for `pct set --mpN` names this path literally.
 */
export const DEFAULT_BOOTSTRAP_ROOT = "/var/lib/felhom-agent-root/bootstrap"

// ---------------------------------------------------------------------------------------------
// Argument validators. Character sets are allowlists: nothing here can carry whitespace, a comma,
// '=', ':' or a leading '-', so no value can be re-parsed as a pct property or a command option.

/** One path component: no empty, '.', '..', hidden or dash-led names. */
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/
const MAX_PATH = 255

/**
 * An absolute, canonical path: every component matches SEGMENT, so there is no '.', '..', empty
 * component ('//' or a trailing '/'), whitespace, ',', '=', ':' or any byte outside the allowlist.
 * Such a path is its own `path.posix.normalize` and cannot be re-parsed by pct or sudo.
 */
export const isSafeAbsolutePath = (p: string): boolean =>
  p.length > 1 && p.length <= MAX_PATH && p.startsWith("/") && p.slice(1).split("/").every((s) => SEGMENT.test(s))

/** Component-wise containment of canonical absolute paths (`/a/bc` is not inside `/a/b`). */
export const isStrictlyInside = (parent: string, child: string): boolean =>
  child.startsWith(parent === "/" ? "/" : `${parent}/`) && child.length > parent.length

/** `a` and `b` name the same directory or one contains the other (canonical absolute paths). */
export const pathsOverlap = (a: string, b: string): boolean => a === b || isStrictlyInside(a, b) || isStrictlyInside(b, a)

export const SAFE_PATH_RULE = "an absolute, normalized path of [A-Za-z0-9._-] components " +
  "(no '.', '..', empty or dash-led components, no whitespace, ',', '=' or ':')"

/**
 * The rule each argument must satisfy, as stated in errors. Errors quote the rule, never the
 * rejected value.
 */
export const ARGUMENT_RULES = {
  vmid: "vmid must be an integer in 100..999999999",
  storage: "storage must be a PVE storage id: a letter, then [A-Za-z0-9._-]",
  ostemplate: "ostemplate must be a container template volume '<storage>:vztmpl/<file>'",
  hostname: "hostname must be a DNS name: dot-separated labels of [A-Za-z0-9-], not starting or ending with '-'",
  memory: "memory must be an integer number of MiB in 16..4194304",
  cores: "cores must be an integer in 1..8192",
  rootfsGiB: "rootfsGiB must be an integer number of GiB in 1..65536",
  uuid: "uuid must be a filesystem UUID (8-4-4-4-12 hex) or a vfat/exfat serial (XXXX-XXXX hex)",
  mountPoint: `mountPoint must be one directory directly below ${USB_MOUNT_ROOT}/, made of ${SAFE_PATH_RULE}`,
  hostPath: `hostPath must be strictly below privileged.bootstrap_root (default ${DEFAULT_BOOTSTRAP_ROOT}) and be ${SAFE_PATH_RULE}`,
  guestPath: `guestPath must be ${SAFE_PATH_RULE}, and not '/'`,
  mpIndex: "mpIndex must be an integer in 0..255",
  readOnly: "readOnly must be a boolean",
  device: "device must be a disk name like 'sda' or 'nvme0n1' (no '/dev/' prefix)"
} as const
export type ArgumentName = keyof typeof ARGUMENT_RULES

/** Any safe absolute path (used for paths inside a guest). */
export const GuestPath = Schema.String.pipe(
  Schema.filter((p) => isSafeAbsolutePath(p) || ARGUMENT_RULES.guestPath),
  Schema.brand("GuestPath")
)
export type GuestPath = typeof GuestPath.Type

/** `/mnt/felhom/<name>`: one component directly below USB_MOUNT_ROOT. */
export const UsbMountPoint = Schema.String.pipe(
  Schema.filter((p) => {
    const ok = isSafeAbsolutePath(p) && p.startsWith(`${USB_MOUNT_ROOT}/`) &&
      !p.slice(USB_MOUNT_ROOT.length + 1).includes("/")
    return ok || ARGUMENT_RULES.mountPoint
  }),
  Schema.brand("UsbMountPoint")
)
export type UsbMountPoint = typeof UsbMountPoint.Type

/**
 * A bind-mount source: a canonical host path strictly below `root` (the configured, root-owned
 * bootstrap tree). This is the string half of the check; the filesystem half (every component
 * root-owned, not group/other-writable, not a symlink) runs in the layer just before spawning.
 */
export const bootstrapHostPathUnder = (root: string) =>
  Schema.String.pipe(
    Schema.filter((p) => (isSafeAbsolutePath(root) && isSafeAbsolutePath(p) && isStrictlyInside(root, p)) ||
      ARGUMENT_RULES.hostPath),
    Schema.brand("BootstrapHostPath")
  )
export type BootstrapHostPath = Schema.Schema.Type<ReturnType<typeof bootstrapHostPathUnder>>

/**
 * Filesystem UUIDs as they appear under /dev/disk/by-uuid: the RFC 4122 form (ext4, xfs, btrfs)
 * and the vfat/exfat volume serial `XXXX-XXXX`. Case is kept, because the symlink name is
 * case-sensitive (vfat serials are upper case, ext4 UUIDs lower case).
 */
export const FsUuid = Schema.String.pipe(
  Schema.pattern(
    /^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4})$/,
    { message: () => ARGUMENT_RULES.uuid }
  ),
  Schema.brand("FsUuid")
)
export type FsUuid = typeof FsUuid.Type

/** A whole-disk kernel name: SATA/SAS/USB `sdX` or an NVMe namespace `nvmeXnY`. */
export const BlockDevice = Schema.String.pipe(
  Schema.pattern(/^(sd[a-z]{1,4}|nvme[0-9]{1,3}n[0-9]{1,3})$/, {
    message: () => ARGUMENT_RULES.device
  }),
  Schema.brand("BlockDevice")
)
export type BlockDevice = typeof BlockDevice.Type

/** RFC 1123 host name (PVE's `dns-name` format), at most 253 characters. */
export const Hostname = Schema.String.pipe(
  Schema.pattern(/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/, {
    message: () => ARGUMENT_RULES.hostname
  }),
  Schema.brand("Hostname")
)
export type Hostname = typeof Hostname.Type

/** `<storage>:vztmpl/<file>`: only container templates may seed the golden container. */
export const TemplateVolume = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z][A-Za-z0-9._-]*:vztmpl\/[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/, {
    message: () => ARGUMENT_RULES.ostemplate
  })
)

const intIn = (name: ArgumentName, min: number, max: number) =>
  Schema.Number.pipe(Schema.filter((n) => (Number.isSafeInteger(n) && n >= min && n <= max) || ARGUMENT_RULES[name]))

/** PVE's limits: memory >= 16 MiB, 1..8192 cores; rootfs sizes are whole GiB. */
export const MemoryMiB = intIn("memory", 16, 4_194_304)
export const Cores = intIn("cores", 1, 8192)
export const RootfsGiB = intIn("rootfsGiB", 1, 65_536)
/** PVE 8 numbers container mount points mp0..mp255. */
export const MountPointIndex = intIn("mpIndex", 0, 255)

// ---------------------------------------------------------------------------------------------
// Error

export type PrivilegedErrorReason =
  | "InvalidArgument"
  | "UntrustedPath"
  | "SpawnFailed"
  | "NonZeroExit"
  | "Timeout"
  | "Decode"

/**
 * Why a component of a host path handed to a root command is not trusted (UntrustedPath). The
 * path is inspected with lstat from `/` down, never following a symlink.
 */
export type UntrustedPathReason =
  /** A symlink: whoever can write its directory, or owns it, decides what the path names. */
  | "Symlink"
  /** Owned by a uid other than 0: its owner can rename or replace what is below it. */
  | "NotRootOwned"
  /** Group- or other-writable (a root-owned sticky directory above the trusted root excepted). */
  | "GroupOrOtherWritable"
  | "NotADirectory"
  | "Missing"
  /** lstat failed otherwise (e.g. EACCES: the tree must be traversable by the service user). */
  | "Uninspectable"

/**
 * The one error of the Privileged layer. `argument` names the rejected input (InvalidArgument,
 * UntrustedPath); `component` and `untrusted` name the offending path component and why it is
 * not trusted (UntrustedPath); `exitCode` and `stderrTail` describe a failed run. Messages never
 * quote argument values, except the component of an UntrustedPath, a path that already passed the
 * allowlist validator (no whitespace, separators or control bytes can be in it).
 */
export class PrivilegedError extends Data.TaggedError("PrivilegedError")<{
  readonly reason: PrivilegedErrorReason
  readonly command: PrivilegedCommand
  readonly message: string
  readonly argument?: string
  readonly component?: string
  readonly untrusted?: UntrustedPathReason
  readonly exitCode?: number
  readonly stderrTail?: string
}> {}

// ---------------------------------------------------------------------------------------------
// Results

/** What vzdump reported about the archive it wrote (parsed from its log; absent if not found). */
export const GoldenArchive = Schema.Struct({
  /** The path (file storages) or PBS snapshot name vzdump printed. */
  archive: Schema.optional(Schema.String),
  /** `<storage>:backup/<file>` when the archive is a file on a directory-backed storage. */
  volumeId: Schema.optional(Schema.String)
})
export type GoldenArchive = typeof GoldenArchive.Type

/**
 * smartctl's exit status bits 2..7: health findings, reported rather than raised (bits 0 and 1,
 * "command line did not parse" and "device open failed", are failures).
 */
export const SmartFinding = Schema.Literal(
  "SmartCommandFailed", // bit 2: some SMART or ATA command failed, or a checksum error
  "DiskFailing", // bit 3: SMART status "DISK FAILING"
  "PrefailAttributeAtThreshold", // bit 4: prefail attributes <= threshold
  "AttributeWasAtThreshold", // bit 5: usage or prefail attributes <= threshold in the past
  "ErrorLogHasRecords", // bit 6: the device error log contains records
  "SelfTestLogHasErrors" // bit 7: the self-test log contains errors
)
export type SmartFinding = typeof SmartFinding.Type

export const SmartReport = Schema.Struct({
  device: Schema.String,
  /** smartctl's raw exit status (bitmask). */
  exitStatus: Schema.Number,
  findings: Schema.Array(SmartFinding),
  model: Schema.optional(Schema.String),
  serial: Schema.optional(Schema.String),
  /** smart_status.passed */
  passed: Schema.optional(Schema.Boolean),
  /** temperature.current, °C */
  temperatureC: Schema.optional(Schema.Number),
  /** power_on_time.hours */
  powerOnHours: Schema.optional(Schema.Number)
})
export type SmartReport = typeof SmartReport.Type

export const SensorKind = Schema.Literal("temperature", "fan", "voltage", "current", "power", "energy", "humidity")
export type SensorKind = typeof SensorKind.Type

/** One lm-sensors feature with an input value (temperature °C, fan RPM, V, A, W, J, %RH). */
export const SensorReading = Schema.Struct({
  chip: Schema.String,
  adapter: Schema.optional(Schema.String),
  label: Schema.String,
  kind: SensorKind,
  input: Schema.Number,
  min: Schema.optional(Schema.Number),
  max: Schema.optional(Schema.Number),
  crit: Schema.optional(Schema.Number),
  alarm: Schema.optional(Schema.Boolean)
})
export type SensorReading = typeof SensorReading.Type
