/**
 * Contracts of the Privileged layer (SPEC §3): the argument validators that run before any root
 * command is spawned, the allowed filesystem roots, the typed error, and the decoded hardware
 * readings. The validators mirror the regular expressions in configs/sudoers/felhom-agent: sudoers
 * is the first line of defence, these are the second, and both must accept the same argv.
 */
import { Data, Schema } from "effect"
import { BOOTSTRAP_FILES } from "./bootstrap.js"
import type { PrivilegedCommand } from "./config.js"

// ---------------------------------------------------------------------------------------------
// Allowed roots

/**
 * USB targets are mounted at exactly one directory level below this root (`/mnt/felhom/<target>`),
 * each by a persistent systemd mount unit. One level only: a deeper mount point would traverse a
 * directory that may live on a previously mounted, customer-controlled filesystem, where a symlink
 * could redirect a root mount anywhere. The root itself must be root-owned (checked before each
 * mount: the agent user must not be able to plant symlinks in it).
 */
export const USB_MOUNT_ROOT = "/mnt/felhom"

/** Where the persistent mount units are written (root-owned; the sudoers rule names it). */
export const SYSTEMD_UNIT_DIR = "/etc/systemd/system"

/**
 * The first line of every mount unit the agent writes (configs/libexec/felhom-mount-unit prints
 * the same text; a test compares them). A unit file without it is never rewritten or removed.
 */
export const MOUNT_UNIT_MARKER =
  "# Managed by felhom-agent (felhom-mount-unit): rewritten or removed by the agent, do not edit."

/**
 * The default of `privileged.archive_storage_paths`: PVE's `local` directory storage. Archives
 * live in `<storage path>/dump/`; every USB target's mount point is such a storage path too.
 */
export const DEFAULT_ARCHIVE_STORAGE_PATHS: ReadonlyArray<string> = ["/var/lib/vz"]

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
  uuid: "uuid must be a filesystem UUID as udev names it: lower-case 8-4-4-4-12 hex (ext4, xfs, btrfs) " +
    "or an upper-case XXXX-XXXX vfat/exfat serial",
  targetId: "targetId must be a USB target id: a letter, then up to 47 of [A-Za-z0-9._-]",
  fsType: "fsType must be one of auto, ext4, xfs, btrfs, vfat, exfat",
  archivePath: "archivePath must be <storage path>/dump/vzdump-lxc-<vmid>-YYYY_MM_DD-HH_MM_SS.tar[.zst|.gz|.lzo], " +
    `where the storage path is one of privileged.archive_storage_paths or a USB target below ${USB_MOUNT_ROOT}, ` +
    "both before and after resolving symlinks",
  hostPath: `hostPath must be strictly below privileged.bootstrap_root (default ${DEFAULT_BOOTSTRAP_ROOT}) and be ${SAFE_PATH_RULE}`,
  guestPath: `guestPath must be ${SAFE_PATH_RULE}, and not '/'`,
  mpIndex: "mpIndex must be an integer in 0..255",
  readOnly: "readOnly must be a boolean",
  bootstrapFile: "a bootstrap file name must be one of controller.json, local-token, registry-password",
  bootstrapContent: "a bootstrap file's content must be a string of at most 65536 bytes (UTF-8)",
  bootstrapRoot: `bootstrapRoot is privileged.bootstrap_root (default ${DEFAULT_BOOTSTRAP_ROOT}): ${SAFE_PATH_RULE}`,
  device: "device must be a disk name like 'sda' or 'nvme0n1' (no '/dev/' prefix)",
  goldenHostname: "the golden build container's hostname must be felhom-golden-<the build op's UUID>",
  bridge: "bridge must be a Linux bridge name: a letter, then up to 14 of [A-Za-z0-9_.-]",
  releaseVersion: "releaseVersion must be a release version like 1.4.0 or 1.4.0-rc.1 (src/schema/release.ts)"
} as const
export type ArgumentName = keyof typeof ARGUMENT_RULES

/** Any safe absolute path (used for paths inside a guest). */
export const GuestPath = Schema.String.pipe(
  Schema.filter((p) => isSafeAbsolutePath(p) || ARGUMENT_RULES.guestPath),
  Schema.brand("GuestPath")
)
export type GuestPath = typeof GuestPath.Type

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
 * Filesystem UUIDs exactly as udev names the /dev/disk/by-uuid symlinks: the RFC 4122 form in lower
 * case (blkid prints ext4, xfs and btrfs UUIDs so) and the vfat/exfat volume serial `XXXX-XXXX` in
 * upper case. The symlink name is case-sensitive, so any other spelling could never match a disk:
 * it is refused here rather than left to time out as a unit that never mounts.
 */
export const FsUuid = Schema.String.pipe(
  Schema.pattern(/^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9A-F]{4}-[0-9A-F]{4})$/, {
    message: () => ARGUMENT_RULES.uuid
  }),
  Schema.brand("FsUuid")
)
export type FsUuid = typeof FsUuid.Type

/**
 * A USB target's id, also its mount directory below USB_MOUNT_ROOT and (escaped) its unit name. A
 * PVE storage id (a letter first), at most 48 characters so that even a fully escaped unit name
 * (`-` becomes `\x2d`) stays below systemd's 255.
 */
export const UsbTargetId = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z][A-Za-z0-9._-]{0,47}$/, { message: () => ARGUMENT_RULES.targetId }),
  Schema.brand("UsbTargetId")
)
export type UsbTargetId = typeof UsbTargetId.Type

/** The filesystems a USB target may carry (`auto`: mount(8) probes). */
export const UsbFsType = Schema.Literal("auto", "ext4", "xfs", "btrfs", "vfat", "exfat").annotations({
  message: () => ARGUMENT_RULES.fsType
})
export type UsbFsType = typeof UsbFsType.Type

// ---------------------------------------------------------------------------------------------
// vzdump archives

/** How a vzdump archive is compressed, from its name (`none`: a plain `.tar`). */
export type ArchiveCompression = "zst" | "gz" | "lzo" | "none"

/**
 * A container backup as vzdump names it on a directory storage. The date fields are range-checked
 * so that the name is one vzdump could have written, not just digits.
 */
const VZDUMP_LXC_NAME =
  /^vzdump-lxc-[1-9][0-9]{2,8}-[0-9]{4}_(0[1-9]|1[0-2])_(0[1-9]|[12][0-9]|3[01])-([01][0-9]|2[0-3])_[0-5][0-9]_[0-5][0-9]\.tar(?<ext>\.zst|\.gz|\.lzo)?$/

/** The compression of a vzdump container archive name, or undefined if it is not one. */
export const vzdumpLxcCompression = (name: string): ArchiveCompression | undefined => {
  const m = VZDUMP_LXC_NAME.exec(name)
  if (m === null) return undefined
  const ext = m.groups?.["ext"]
  return ext === ".zst" ? "zst" : ext === ".gz" ? "gz" : ext === ".lzo" ? "lzo" : "none"
}

/** The storage path an archive path lies in (`<storage>/dump/<name>`), or undefined. */
export const archiveStorageOf = (path: string): string | undefined => {
  if (!isSafeAbsolutePath(path)) return undefined
  const parts = path.split("/")
  const name = parts[parts.length - 1] ?? ""
  if (parts.length < 4 || parts[parts.length - 2] !== "dump" || vzdumpLxcCompression(name) === undefined) return undefined
  return parts.slice(0, -2).join("/")
}

/**
 * `<storage path>/dump/<vzdump-lxc name>` where the storage path is one of `storagePaths` or a
 * USB target's mount point (one level below `usbMountRoot`). The string half of the check; the
 * layer resolves symlinks, re-checks the result with this same schema and inspects the tree.
 */
export const archivePathUnder = (storagePaths: ReadonlyArray<string>, usbMountRoot: string) =>
  Schema.String.pipe(
    Schema.filter((p) => {
      const storage = archiveStorageOf(p)
      const ok = storage !== undefined && (
        storagePaths.includes(storage) ||
        (isStrictlyInside(usbMountRoot, storage) && !storage.slice(usbMountRoot.length + 1).includes("/") &&
          Schema.is(UsbTargetId)(storage.slice(usbMountRoot.length + 1)))
      )
      return ok || ARGUMENT_RULES.archivePath
    }),
    Schema.brand("ArchivePath")
  )
export type ArchivePath = Schema.Schema.Type<ReturnType<typeof archivePathUnder>>

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

/**
 * The hostname of a golden build container: `felhom-golden-<op id>`, the op id being the build
 * op's random UUID (src/programs/golden/build.ts). It is the container's instance marker: the
 * root helper installs only into a container whose config carries it, and the agent destroys only
 * a container that carries it and that the journal records as that op's build container.
 */
export const GoldenHostname = Schema.String.pipe(
  Schema.pattern(/^felhom-golden-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, {
    message: () => ARGUMENT_RULES.goldenHostname
  }),
  Schema.brand("GoldenHostname")
)
export type GoldenHostname = typeof GoldenHostname.Type

/** A Linux bridge (IFNAMSIZ: at most 15 characters) the build container's net0 is put on. */
export const BridgeName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z][A-Za-z0-9_.-]{0,14}$/, { message: () => ARGUMENT_RULES.bridge }),
  Schema.brand("BridgeName")
)
export type BridgeName = typeof BridgeName.Type

/** A SHA-256 digest as sha256sum prints it: 64 lower-case hex digits. */
export const Sha256Hex = Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/), Schema.brand("Sha256Hex"))
export type Sha256Hex = typeof Sha256Hex.Type

/** PVE's limits: memory >= 16 MiB, 1..8192 cores; rootfs sizes are whole GiB. */
export const MemoryMiB = intIn("memory", 16, 4_194_304)
export const Cores = intIn("cores", 1, 8192)
export const RootfsGiB = intIn("rootfsGiB", 1, 65_536)
/**
 * The files a controller's bootstrap directory may hold (src/schema/bootstrap.ts); the root helper
 * configs/libexec/felhom-bootstrap accepts exactly these names and removes only these.
 */
export const BootstrapFileName = Schema.Literal(BOOTSTRAP_FILES.config, BOOTSTRAP_FILES.token, BOOTSTRAP_FILES.registryPassword)
  .annotations({ message: () => ARGUMENT_RULES.bootstrapFile })
export type BootstrapFileName = typeof BootstrapFileName.Type

/**
 * The most a bootstrap file may hold (the helper enforces the same cap on its stdin): the config
 * is a few KiB, the secrets one line each.
 */
export const BOOTSTRAP_FILE_MAX_BYTES = 64 * 1024

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
  /** A host file the layer reads itself (mountinfo, /dev/disk/by-uuid) could not be read. */
  | "HostRead"

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
  /** An archive that is not a regular file (a device, a FIFO, a directory). */
  | "NotARegularFile"
  /** A unit file at the target's unit name that the agent did not write (no marker line). */
  | "NotManagedByAgent"
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
  /** The command, or `mount-state` for the layer's own child-free reads. */
  readonly command: PrivilegedCommand | "mount-state"
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

// ---------------------------------------------------------------------------------------------
// USB targets

/**
 * Where a USB target stands, from /dev/disk/by-uuid and /proc/self/mountinfo (no child process):
 * - `mounted`: the disk is present and mounted at the target's mount point;
 * - `unmounted`: the disk is present, nothing is mounted there;
 * - `absent`: no disk with that UUID, nothing mounted (pulled, or never plugged in);
 * - `stale`: something is still mounted there but the disk is gone (pulled while mounted; writes fail);
 * - `foreign`: another device or filesystem is mounted there.
 */
export type UsbMountState = "mounted" | "unmounted" | "absent" | "stale" | "foreign"

export interface UsbState {
  readonly state: UsbMountState
  readonly devicePresent: boolean
  /** The block device the by-uuid link resolves to (`/dev/sdb1`), when present. */
  readonly device?: string
  readonly mountPoint: string
  readonly mounted: boolean
  /** Of the topmost mount at the mount point, when mounted. */
  readonly mountSource?: string
  readonly fsType?: string
  /** Mounted read-only (per mount or per superblock, e.g. ext4 errors=remount-ro after I/O errors). */
  readonly readOnly?: boolean
}

/** The outcome of writing a target's mount unit and starting it. */
export interface UsbMountResult {
  readonly unit: string
  readonly mountPoint: string
  /** The unit file was (re)written, so systemd was reloaded. */
  readonly changed: boolean
}

export interface UsbUnmountResult {
  readonly unit: string
  /** False when there was no unit file to remove (already detached). */
  readonly removed: boolean
}

// ---------------------------------------------------------------------------------------------
// Archive integrity

/**
 * A read-only archive test: the compression's own test (checksums and framing), then a full
 * listing of the tar stream. `ok: false` means the archive is damaged; anything that says nothing
 * about the archive (bad argument, untrusted path, sudo refusal, timeout) is a PrivilegedError.
 * `reason` is a clipped excerpt of the tool's stderr with paths replaced, never its full output.
 */
export type ArchiveCheck =
  | { readonly ok: true; readonly compression: ArchiveCompression }
  | {
    readonly ok: false
    readonly compression: ArchiveCompression
    readonly stage: "compression" | "tar"
    readonly exitCode: number
    readonly reason: string
  }

// ---------------------------------------------------------------------------------------------
// systemd unit names

const UNIT_NAME_MAX = 255
const PATH_MAX = 4096
const NAME_MAX = 255

export type EscapePathError = "NotNormalized" | "TooLong"

/**
 * `systemd-escape --path <p>` (systemd 252, unit_name_path_escape): simplify the path (drop empty
 * and `.` components and trailing slashes), refuse a `..` component or a path or component too
 * long for Linux, map the root and the empty path to `-`, then escape: `/` becomes `-`, a leading
 * `.` and every byte outside [A-Za-z0-9:_.] becomes `\xNN` (lower-case hex of each UTF-8 byte).
 * test/privileged-escape.test.ts compares it with the real binary.
 */
export const escapeSystemdPath = (path: string): { readonly ok: true; readonly name: string } | {
  readonly ok: false
  readonly error: EscapePathError
} => {
  const absolute = path.startsWith("/")
  const parts = path.split("/").filter((c) => c !== "" && c !== ".")
  // A relative path made only of `.` components simplifies to `.`, which is not normalized.
  if (parts.length === 0) {
    return !absolute && path !== "" ? { ok: false, error: "NotNormalized" } : { ok: true, name: "-" }
  }
  if (parts.includes("..")) return { ok: false, error: "NotNormalized" }
  const simplified = (absolute ? "/" : "") + parts.join("/")
  if (parts.some((c) => Buffer.byteLength(c) > NAME_MAX) || Buffer.byteLength(simplified) >= PATH_MAX) {
    return { ok: false, error: "TooLong" }
  }
  const bytes = Buffer.from(parts.join("/"), "utf8")
  let out = ""
  bytes.forEach((b, i) => {
    const c = String.fromCharCode(b)
    if (c === "/") out += "-"
    else if ((i === 0 && c === ".") || !/^[A-Za-z0-9:_.]$/.test(c)) out += `\\x${b.toString(16).padStart(2, "0")}`
    else out += c
  })
  return { ok: true, name: out }
}

/** The unit name systemd requires for a mount at `path` (`Where=` must match it), if valid. */
export const mountUnitName = (path: string): string | undefined => {
  const escaped = escapeSystemdPath(path)
  if (!escaped.ok) return undefined
  const name = `${escaped.name}.mount`
  return name.length <= UNIT_NAME_MAX ? name : undefined
}

// ---------------------------------------------------------------------------------------------
// /proc/self/mountinfo

export interface MountInfoEntry {
  readonly mountPoint: string
  readonly source: string
  readonly fsType: string
  readonly readOnly: boolean
}

/** mountinfo escapes space, tab, newline and backslash as `\ooo` octal. */
const unescapeMountField = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))

/**
 * Parses proc(5) mountinfo: `id parent major:minor root mountpoint options [optional...] - fstype
 * source superoptions`. Lines that do not have that shape are skipped (the kernel writes none).
 */
export const parseMountInfo = (text: string): ReadonlyArray<MountInfoEntry> => {
  const entries: Array<MountInfoEntry> = []
  for (const line of text.split("\n")) {
    const f = line.split(" ")
    const sep = f.indexOf("-", 6)
    if (sep < 0 || sep + 2 >= f.length) continue
    const mountPoint = f[4]
    const options = f[5]
    const fsType = f[sep + 1]
    const source = f[sep + 2]
    const superOptions = f[sep + 3] ?? ""
    if (mountPoint === undefined || options === undefined || fsType === undefined || source === undefined) continue
    entries.push({
      mountPoint: unescapeMountField(mountPoint),
      source: unescapeMountField(source),
      fsType,
      readOnly: options.split(",").includes("ro") || superOptions.split(",").includes("ro")
    })
  }
  return entries
}

/**
 * The `major:minor` (st_dev) and mount point of every mount in a mountinfo text: what
 * Privileged.mountUsb compares a USB target's device against, so that a filesystem already
 * mounted elsewhere on the host (the root, /boot, a PVE storage) is never mounted again as a target.
 */
export const mountDevices = (text: string): ReadonlyArray<{ readonly majorMinor: string; readonly mountPoint: string; readonly source: string }> =>
  text.split("\n").flatMap((line) => {
    const f = line.split(" ")
    const sep = f.indexOf("-", 6)
    const majorMinor = f[2]
    const mountPoint = f[4]
    const source = f[sep + 2]
    if (sep < 0 || majorMinor === undefined || !/^\d+:\d+$/.test(majorMinor) || mountPoint === undefined || source === undefined) return []
    return [{ majorMinor, mountPoint: unescapeMountField(mountPoint), source: unescapeMountField(source) }]
  })
