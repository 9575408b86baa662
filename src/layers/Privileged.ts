/**
 * Privileged: the fenced root-command runner (SPEC §3). The only OS-root exceptions the agent
 * has, each documented with why the PVE API cannot do it. It depends on CommandExecutor and
 * AgentConfig only and must never reach the network (SPEC §1, the fence).
 *
 * Execution rules, all enforced here:
 * - every argument is validated before anything is spawned (typed InvalidArgument naming it);
 * - a host path a root command consumes (the bind-mount source) must also be trusted on disk:
 *   inspected with lstat from `/` down, every component a root-owned directory that only root can
 *   write, never a symlink (typed UntrustedPath naming the component and why), see trustedTree;
 * - argv only, never a shell; binaries by absolute path (DEFAULT_COMMAND_PATHS, overridable by
 *   `privileged.commands`); `sudo -n <binary> <args>` in sudo mode, `<binary> <args>` in direct;
 * - a cleared environment (CHILD_ENV), stdin at EOF, except for felhom-bootstrap write, whose
 *   stdin is the file's content (secrets never go in argv, which /proc shows to every user), capped
 *   at BOOTSTRAP_FILE_MAX_BYTES and never logged;
 * - a timeout that terminates the process group (SIGTERM, then SIGKILL);
 * - bounded capture: the first STDOUT_CAP_BYTES of stdout, the last STDERR_TAIL_BYTES of stderr.
 * Log lines and errors name the command and the argument, never argument values.
 *
 * Two reads need no child at all and stay cheap enough to poll every second (the storage
 * watchdog): a USB target's state from /dev/disk/by-uuid and /proc/self/mountinfo (usbState).
 */
import { CommandExecutor } from "@effect/platform"
import * as Command from "@effect/platform/Command"
import type { PlatformError } from "@effect/platform/Error"
import { Clock, Context, Duration, Effect, Layer, Option, Redacted, Ref, Schema, Scope, Stream } from "effect"
import type { Stats } from "node:fs"
import { lstat, readFile, realpath, stat } from "node:fs/promises"
import { posix } from "node:path"
import type { PrivilegedCommand } from "../schema/config.js"
import { StorageId, VmId, VolumeId } from "../schema/ids.js"
import { ReleaseVersion } from "../schema/release.js"
import {
  type ArchiveCheck,
  type ArchiveCompression,
  archivePathUnder,
  archiveStorageOf,
  ARGUMENT_RULES,
  type ArgumentName,
  BlockDevice,
  BOOTSTRAP_FILE_MAX_BYTES,
  BootstrapFileName,
  BridgeName,
  bootstrapHostPathUnder,
  Cores,
  FsUuid,
  type GoldenArchive,
  GoldenHostname,
  GuestPath,
  Hostname,
  isSafeAbsolutePath,
  isStrictlyInside,
  MemoryMiB,
  MountPointIndex,
  MOUNT_UNIT_MARKER,
  mountDevices,
  mountUnitName,
  parseMountInfo,
  PrivilegedError,
  RootfsGiB,
  Sha256Hex,
  type SensorKind,
  type SensorReading,
  type SmartFinding,
  type SmartReport,
  SYSTEMD_UNIT_DIR,
  TemplateVolume,
  type UntrustedPathReason,
  USB_MOUNT_ROOT,
  UsbFsType,
  type UsbMountResult,
  type UsbMountState,
  type UsbState,
  UsbTargetId,
  type UsbUnmountResult,
  vzdumpLxcCompression
} from "../schema/privileged.js"
import { AgentConfig } from "./Config.js"

export {
  type ArchiveCheck,
  DEFAULT_BOOTSTRAP_ROOT,
  PrivilegedError,
  SYSTEMD_UNIT_DIR,
  USB_MOUNT_ROOT,
  type UsbMountResult,
  type UsbState,
  type UsbUnmountResult
} from "../schema/privileged.js"

// ---------------------------------------------------------------------------------------------
// Execution constants

/** Where the binaries live on a PVE 8 host; configs/sudoers/felhom-agent allows exactly these. */
export const DEFAULT_COMMAND_PATHS: { readonly [K in PrivilegedCommand]: string } = {
  pct: "/usr/sbin/pct",
  vzdump: "/usr/bin/vzdump",
  "felhom-mount-unit": "/usr/local/libexec/felhom-agent/felhom-mount-unit",
  systemctl: "/usr/bin/systemctl",
  smartctl: "/usr/sbin/smartctl",
  sensors: "/usr/bin/sensors",
  tar: "/usr/bin/tar",
  zstd: "/usr/bin/zstd",
  gzip: "/usr/bin/gzip",
  lzop: "/usr/bin/lzop",
  "felhom-bootstrap": "/usr/local/libexec/felhom-agent/felhom-bootstrap",
  "felhom-golden": "/usr/local/libexec/felhom-agent/felhom-golden",
  "felhom-pbskey": "/usr/local/libexec/felhom-agent/felhom-pbskey",
  "pveum": "/usr/sbin/pveum",
  "felhom-update": "/usr/local/libexec/felhom-agent/felhom-update",
  "felhom-cloudflared": "/usr/local/libexec/felhom-agent/felhom-cloudflared"
}

/**
 * Host locations the layer reads or hands to root commands. Production uses the defaults, which
 * the sudoers rules name literally; tests point them at scratch directories.
 */
export interface PrivilegedHostPaths {
  /** USB targets are mounted one level below it (root-owned, see USB_MOUNT_ROOT). */
  readonly usbMountRoot: string
  /** Where felhom-mount-unit writes the persistent mount units. */
  readonly unitDir: string
  /** udev's filesystem-UUID symlinks. */
  readonly byUuidDir: string
  /** The mount table of the agent's own mount namespace. */
  readonly mountInfo: string
}

export const DEFAULT_HOST_PATHS: PrivilegedHostPaths = {
  usbMountRoot: USB_MOUNT_ROOT,
  unitDir: SYSTEMD_UNIT_DIR,
  byUuidDir: "/dev/disk/by-uuid",
  mountInfo: "/proc/self/mountinfo"
}

/** The longest excerpt of a failed archive test's stderr that is kept as its reason. */
export const ARCHIVE_REASON_MAX = 300

/** The whole child environment: nothing of the agent's own environment is inherited. */
export const CHILD_ENV: Readonly<Record<string, string>> = {
  PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
  LC_ALL: "C"
}

/** smartctl -a JSON is tens of KiB; anything past 1 MiB is a runaway and is dropped (and flagged). */
export const STDOUT_CAP_BYTES = 1024 * 1024
/** Enough of stderr to explain a failure; older bytes are dropped as new ones arrive. */
export const STDERR_TAIL_BYTES = 8 * 1024
/** How long a signal gets to take effect before escalating (SIGTERM → SIGKILL → give up). */
export const KILL_GRACE = Duration.seconds(5)

// ---------------------------------------------------------------------------------------------
// The service

/** What `systemctl is-system-running` prints (systemd(1)); anything else is an error. */
export const GUEST_SYSTEM_STATES = ["initializing", "starting", "running", "degraded", "maintenance", "stopping", "offline", "unknown"] as const
export type GuestSystemState = (typeof GUEST_SYSTEM_STATES)[number]

export interface GoldenContainerSpec {
  readonly vmid: VmId
  /** A `<storage>:vztmpl/<file>` template volume. */
  readonly ostemplate: VolumeId
  /** Storage for the root filesystem. */
  readonly storage: StorageId
  readonly hostname: string
  /** MiB */
  readonly memory: number
  readonly cores: number
  readonly rootfsGiB: number
}

export interface GoldenDumpSpec {
  readonly vmid: VmId
  /** A backup-capable storage that receives the golden archive. */
  readonly storage: StorageId
}

export interface UsbMountSpec {
  /** The target's id: its mount point is `<USB_MOUNT_ROOT>/<targetId>`. */
  readonly targetId: string
  /** The filesystem UUID exactly as listed under /dev/disk/by-uuid. */
  readonly uuid: string
  /** Default `auto` (mount(8) probes the filesystem). */
  readonly fsType?: UsbFsType
}

export interface UsbStateSpec {
  readonly targetId: string
  readonly uuid: string
}

export interface GuestBindMountSpec {
  readonly vmid: VmId
  /** N in `mpN`, 0..255. */
  readonly mpIndex: number
  /**
   * A directory strictly below `privileged.bootstrap_root`, every component of which is a
   * root-owned directory not writable by group or others, and no symlink (checked before running).
   */
  readonly hostPath: string
  /** Absolute path inside the guest. */
  readonly guestPath: string
  readonly readOnly: boolean
}

/** One file of a guest's bootstrap directory; secrets stay Redacted until they are piped to the helper. */
export interface BootstrapFile {
  readonly name: BootstrapFileName
  readonly content: Redacted.Redacted<string> | string
}

export interface BootstrapWriteSpec {
  readonly vmid: VmId
  readonly files: ReadonlyArray<BootstrapFile>
}

export interface GuestUnbindSpec {
  readonly vmid: VmId
  /** N in `mpN`, 0..255. */
  readonly mpIndex: number
}

/** What `felhom-bootstrap remove` found: the directory removed, or none there. */
export interface BootstrapRemoveResult {
  readonly removed: boolean
}

export interface PrivilegedShape {
  /**
   * `pct create <vmid> <template> --features keyctl=1,nesting=1 --unprivileged 1 ...`: the golden
   * base container. Why not the API: PVE lets only root@pam set `keyctl` (needed for Docker in an
   * unprivileged LXC), and an API token is never root@pam. Per-customer guests are restored from
   * the golden archive by the API instead (a token-authorized restore preserves keyctl, SPEC §10).
   */
  readonly createGoldenContainer: (spec: GoldenContainerSpec) => Effect.Effect<void, PrivilegedError>
  /**
   * `vzdump <vmid> --storage <s> --mode stop --compress zstd --remove 0 --prune-backups keep-all=1`: the golden archive.
   * Why here: strictly, the API could run this vzdump (VM.Backup on the build vmid). It sits on
   * the root path so the golden build (create → dump → destroy) does not depend on the token's
   * ACL covering a container the token did not create; moving it to the Proxmox layer is an
   * option. `--remove 0` keeps the storage's prune policy from deleting the previous golden
   * archive before the new one has been proven by a restore; `keep-all=1` beside it, because with
   * `--remove 0` alone PVE turns a count-based retention into a hard backup limit (issue 10).
   */
  readonly dumpGoldenArchive: (spec: GoldenDumpSpec) => Effect.Effect<GoldenArchive, PrivilegedError>
  /**
   * `pct destroy <vmid>`: removes the golden build container after the dump (or after a failed
   * build). Why here: as for dumpGoldenArchive, the API could do it with VM.Allocate; it stays
   * beside `pct create` so cleanup of a root-created container never depends on the token's ACL.
   */
  readonly destroyGoldenContainer: (vmid: VmId) => Effect.Effect<void, PrivilegedError>
  /**
   * Mounts a USB target by filesystem UUID through a persistent systemd mount unit
   * `<escaped mount point>.mount` in /etc/systemd/system: `felhom-mount-unit write` (root helper:
   * builds the unit from validated arguments, writes it atomically, leaves an identical file
   * alone), `systemctl daemon-reload` only when the file changed or systemd still holds an older
   * version, then `systemctl enable --now <unit>`. The unit mounts `What=/dev/disk/by-uuid/<uuid>`
   * at `Where=<USB_MOUNT_ROOT>/<targetId>` with nofail,noatime,nosuid,nodev,noexec, is wanted by
   * multi-user.target and by the disk's device unit (so a replugged disk is mounted again), and
   * gives an absent disk 30 s. Why not the API: PVE has no API for mounting a host block device;
   * a directory storage on it presumes it is mounted. Why not `systemd-mount`: its units are
   * transient and gone after a reboot. Before anything runs, the mount root and an existing mount
   * directory must be root-owned, only root-writable and no symlink (UntrustedPath). Fails with
   * NonZeroExit when the disk does not show up (the unit stays, and mounts it when it does).
   */
  readonly mountUsb: (spec: UsbMountSpec) => Effect.Effect<UsbMountResult, PrivilegedError>
  /**
   * Detaches a USB target: `systemctl disable --now <unit>` (unmounts; fails, changing nothing
   * on disk, while the filesystem is busy), `felhom-mount-unit remove`, `systemctl daemon-reload`.
   * Idempotent: no unit file means nothing to do. Whether a detach is allowed (a target holding
   * data is destructive, signed) is the gate's decision; this only performs the step.
   */
  readonly unmountUsb: (targetId: string) => Effect.Effect<UsbUnmountResult, PrivilegedError>
  /**
   * A USB target's state without any child process or sudo: lstat/realpath of
   * /dev/disk/by-uuid/<uuid> and one read of /proc/self/mountinfo, cheap enough for the storage
   * watchdog to poll every second. Reads the agent's own mount namespace, which sees the host's
   * mounts (systemd propagates them into a ProtectSystem= sandbox).
   */
  readonly usbState: (spec: UsbStateSpec) => Effect.Effect<UsbState, PrivilegedError>
  /**
   * A read-only integrity test of a vzdump container archive on a directory storage:
   * `zstd -q -t` / `gzip -t` / `lzop -q -t` (the compression's checksums and framing), then
   * `tar --force-local [--zstd|--gzip|--lzop] -t -f` (the whole tar stream, headers and length).
   * Why root: archives are root's files on root-owned storage. The path must be
   * `<storage>/dump/vzdump-lxc-<vmid>-<date>.tar[.zst|.gz|.lzo]` below a configured storage path
   * or a USB target, and still be after symlinks are resolved; the resolved path is what runs,
   * and every directory on it must be root-owned and only root-writable (UntrustedPath), so that
   * no one else can swap it in the meantime. Nothing is written anywhere; stdout is drained and
   * dropped. Bounded by `privileged.archive_test_timeout_seconds` per command.
   */
  readonly verifyArchive: (path: string) => Effect.Effect<ArchiveCheck, PrivilegedError>
  /**
   * `pct exec <vmid> -- systemctl is-system-running`: systemd's own summary of a restore-test's
   * scratch guest after boot (`running`; `degraded` when a unit failed; `starting` while it boots).
   * Why not the API: PVE has no API to ask inside a container, and the scratch guest's only NIC is
   * link-down, so nothing can reach it over the network. Read-only; the fixed argv runs the
   * guest's own systemctl inside the container's namespaces. Its exit status is systemd's
   * verdict (non-zero for anything but `running`), so the state is read from stdout; output that
   * is none of systemd's states (the container is not running, sudo refused) is a NonZeroExit.
   * Which guests the agent asks is its own rule (only its scratch range), not this layer's.
   */
  readonly guestSystemState: (vmid: VmId) => Effect.Effect<GuestSystemState, PrivilegedError>
  /**
   * `pct set <vmid> --mp<N> <hostPath>,mp=<guestPath>,ro=<0|1>,backup=0`: a host directory bind
   * mounted into a guest (the read-only bootstrap config mount, SPEC §12). Why not the API: PVE
   * accepts non-volume (bind) mount points only from root@pam. `backup=0` keeps the host
   * directory out of the guest's backups. The source is refused unless it is below the root-owned
   * bootstrap tree on disk too (UntrustedPath): root resolves it now and at every guest start.
   */
  readonly bindMountIntoGuest: (spec: GuestBindMountSpec) => Effect.Effect<void, PrivilegedError>
  /**
   * `pct set <vmid> --delete mp<N>`: hot-unplugs a mount point (the compensation of
   * bindMountIntoGuest). Why not the API: deleting a bind mount point is root@pam only, like
   * adding one. sudoers cannot tell a bind mount from a volume one (deleting a volume mount point
   * detaches the volume as `unusedN`, it does not destroy it); callers check the key in the
   * guest's config names their bootstrap directory before asking.
   */
  readonly unbindFromGuest: (spec: GuestUnbindSpec) => Effect.Effect<void, PrivilegedError>
  /**
   * Writes a guest's bootstrap files into `<bootstrap_root>/<vmid>/`, one
   * `felhom-bootstrap write <root> <vmid> <name>` per file with the content on stdin (never in
   * argv). The root helper creates the directory root-owned 0755 (guest root, uid 100000 on the
   * host, must traverse it), writes a temp file beside the target, owns it 100000:100000 mode 0600
   * (guest root under the unprivileged id map; anything else reads as nobody in the guest), syncs
   * it and renames it over the name, so a reader sees the old file or the new one. It refuses a
   * directory or file that is a symlink or not what it should be. Why root: the files must be
   * owned by 100000 in a tree only root can write (issue 8, finding 7). Before running, the
   * bootstrap root and an existing guest directory must be trusted on disk (UntrustedPath).
   */
  readonly writeBootstrap: (spec: BootstrapWriteSpec) => Effect.Effect<void, PrivilegedError>
  /**
   * `felhom-bootstrap remove <root> <vmid>`: removes the guest's bootstrap files (only the names
   * the helper writes, and its leftover temp files) and then the directory. Idempotent. Fails
   * (NonZeroExit) if the directory holds anything else, which it then leaves in place.
   */
  readonly removeBootstrap: (vmid: VmId) => Effect.Effect<BootstrapRemoveResult, PrivilegedError>
  /**
   * `smartctl --json=c -a /dev/<device>`. Why not the API: PVE's `GET /nodes/{node}/disks/smart`
   * (Sys.Audit) gives a health string plus an ATA attribute table, or unparsed text for NVMe, and
   * drops smartctl's exit-status bits; the uniform JSON (temperature, power-on hours, findings)
   * needs smartctl itself, which needs root for the device ioctls. Exit status bits 0-1 are
   * errors; bits 2-7 are findings reported in the result.
   */
  readonly smart: (device: string) => Effect.Effect<SmartReport, PrivilegedError>
  /**
   * `sensors -j`. Why not the API: PVE exposes no hwmon readings at all. lm-sensors itself needs
   * no root; it runs here because this is the one layer allowed to spawn processes.
   */
  readonly sensors: () => Effect.Effect<ReadonlyArray<SensorReading>, PrivilegedError>
}

export class Privileged extends Context.Tag("felhom/Privileged")<Privileged, PrivilegedShape>() {}

export interface GoldenInstallSpec {
  readonly vmid: VmId
  /** The build container's hostname, `felhom-golden-<op id>`: the helper installs into nothing else. */
  readonly hostname: string
  /** The bridge its net0 goes on (the archive's net0, which every provisioned guest inherits). */
  readonly bridge: string
}

/** The archive's digest as root read it, and the path that was read (symlinks resolved). */
export interface ArchiveChecksum {
  readonly path: string
  readonly sha256: Sha256Hex
}

/**
 * The golden build's own root commands (SPEC §3 exception 1, issue 12), beside Privileged's
 * create, dump and destroy. A tag of its own so that programs (and test doubles) of Privileged
 * that never build a golden image need not know it; the same fenced runner implements both
 * (`privilegedGoldenLayerAt`).
 */
export interface PrivilegedGoldenShape {
  /**
   * `felhom-golden install <vmid> <hostname> <bridge>`: the root helper
   * (configs/libexec/felhom-golden) puts net0 on the bridge, starts the container, installs Docker
   * and jq with apt-get inside it (`pct exec`, fixed argv), pushes the golden-baked units and
   * scripts (configs/golden/, installed root-owned at /usr/local/share/felhom-agent/golden) with
   * `pct push`, enables them, clears the machine-id and SSH host keys (the first boot of every
   * guest makes its own), and stops it. Why a helper rather than one sudoers rule per command:
   * sudoers cannot tell a build container from a customer guest, so fixed-argv rules for
   * `pct exec <vmid> -- apt-get ...` and `pct push <vmid> ...` would let the service user run them
   * in any guest; the helper first requires the container's config to carry exactly this
   * `felhom-golden-<uuid>` hostname and the keyctl+nesting features, and the one rule pins
   * `install <vmid> felhom-golden-<uuid> <bridge>`. Why root at all: `pct exec`/`pct push` have no
   * API, and the container was created by root. Killed after `golden.install_timeout_seconds`.
   */
  readonly installGolden: (spec: GoldenInstallSpec) => Effect.Effect<void, PrivilegedError>
  /**
   * `felhom-golden checksum <archive>`: the SHA-256 of a vzdump archive, read as root (archives
   * are root's 0600 files). The path must be a vzdump container archive in the `dump/` directory
   * of a configured storage path or USB target (as for verifyArchive), is resolved and re-checked,
   * and every directory on it must be root-owned and only root-writable; the helper refuses a
   * symlink or anything but a regular file again.
   */
  readonly archiveChecksum: (path: string) => Effect.Effect<ArchiveChecksum, PrivilegedError>
}

export class PrivilegedGolden extends Context.Tag("felhom/PrivilegedGolden")<PrivilegedGolden, PrivilegedGoldenShape>() {}

/** What `felhom-pbskey attach` did: set the key, or found the storage already holding it. */
export type PbsKeyAttachResult = "attached" | "unchanged"

/**
 * The PBS encryption key's root helper (issue 13, SPEC §13), a tag of its own like
 * PrivilegedGolden so that Privileged's test doubles need not know it; the same fenced runner.
 */
export interface PrivilegedPbsKeyShape {
  /**
   * `felhom-pbskey attach <storage>`: the root helper (configs/libexec/felhom-pbskey) runs
   * `pvesm set <storage> --encryption-key /etc/felhom-agent/pbs/encryption-key.json`. Why root:
   * K is a root-only file the service user must never read, and PVE keeps storage keys in its
   * root-only /etc/pve/priv/storage. Why a helper: the key path is fixed inside it (sudoers then
   * pins only the storage id), and it refuses a storage already holding another key (PVE keeps
   * one key per storage entry: replacing it would strand the backups made under the old one), a
   * storage that is not `pbs:` in storage.cfg, and a key file that is not root's 0600.
   */
  readonly attachPbsKey: (storage: StorageId) => Effect.Effect<PbsKeyAttachResult, PrivilegedError>
}

export class PrivilegedPbsKey extends Context.Tag("felhom/PrivilegedPbsKey")<PrivilegedPbsKey, PrivilegedPbsKeyShape>() {}

/** The helper and its sudoers rule take storage ids of at most this length. */
export const PBSKEY_STORAGE_MAX = 64

/** What `systemctl is-active` says of the break-glass unit; anything unknown counts as active (fail closed). */
export type BreakGlassUnitState = "active" | "inactive" | "failed" | "activating" | "deactivating" | "reloading" | "unknown"

/**
 * The break-glass unit (issue 14, SPEC §15): `systemctl start|stop|is-active
 * felhom-breakglass.service` (configs/systemd/felhom-breakglass.service), fixed argv: no caller
 * picks a unit. Why root: starting a system unit is root's (polkit would need a rule of its own).
 * Whether it may be started (a signed enable with the customer's consent) is decided in
 * src/programs/breakglass/; this only performs it. A tag of its own like PrivilegedPbsKey.
 */
export interface PrivilegedBreakGlassShape {
  readonly start: Effect.Effect<void, PrivilegedError>
  readonly stop: Effect.Effect<void, PrivilegedError>
  readonly state: Effect.Effect<BreakGlassUnitState, PrivilegedError>
}

export class PrivilegedBreakGlass extends Context.Tag("felhom/PrivilegedBreakGlass")<PrivilegedBreakGlass, PrivilegedBreakGlassShape>() {}

export const BREAK_GLASS_UNIT = "felhom-breakglass.service"

/** What `felhom-update stage` printed: the slot it filled (never `current`'s or `last-good`'s target). */
export interface UpdateStaged {
  readonly slot: "a" | "b"
  readonly version: string
}

/**
 * The self-update root helper (issue 14, configs/libexec/felhom-update), a tag of its own like
 * PrivilegedPbsKey. Why root: the slots, `current` and update.json are root's (the service user
 * only reads what it runs). Why a helper: the source directory (the default state_dir's
 * `update/<version>/`) and the prefix are fixed inside it, so sudoers pins only the version, and
 * the helper verifies the copy itself (`release verify` as root, with the release signers of
 * /etc/felhom-agent/agent.json) before it fills the inactive slot.
 */
export interface PrivilegedUpdateShape {
  /** `felhom-update stage <version>`: copy, verify as root, rename into the inactive slot; update.json `staged`. */
  readonly stage: (version: string) => Effect.Effect<UpdateStaged, PrivilegedError>
  /** `felhom-update activate`: update.json must be `staged`; starts the health gate (--no-block). */
  readonly activate: Effect.Effect<string, PrivilegedError>
}

export class PrivilegedUpdate extends Context.Tag("felhom/PrivilegedUpdate")<PrivilegedUpdate, PrivilegedUpdateShape>() {}

/**
 * Staging copies and hashes a whole release tree (~100 MiB) as root: longer than the default
 * timeout, and well inside status_endpoint.stall_seconds (600 by default: the step beats no
 * progress while the helper runs).
 */
export const UPDATE_STAGE_TIMEOUT = Duration.minutes(5)

/** What `felhom-cloudflared write-token` did: wrote a different token, or found this one there. */
export type CloudflaredTokenResult = "changed" | "unchanged"

/**
 * cloudflared's service (issue 14, SPEC §15: a separate service, never embedded), a tag of its
 * own like PrivilegedPbsKey. Why root: the token file (/etc/felhom-agent/cloudflared/token.env,
 * the unit's EnvironmentFile) is root's 0600, and starting a system unit is root's. Why a helper:
 * the path is fixed inside it, and the token travels on stdin, never in argv (which /proc shows
 * to every user). The unit name is fixed here: no caller picks a unit.
 */
export interface PrivilegedCloudflaredShape {
  /** `felhom-cloudflared write-token`, the token on stdin; rewritten (atomically, 0600) only when it differs. */
  readonly writeToken: (token: Redacted.Redacted<string>) => Effect.Effect<CloudflaredTokenResult, PrivilegedError>
  /** `systemctl start felhom-cloudflared.service` (a no-op when it runs). */
  readonly start: Effect.Effect<void, PrivilegedError>
  /** `systemctl restart felhom-cloudflared.service` (starts it when stopped). */
  readonly restart: Effect.Effect<void, PrivilegedError>
}

export class PrivilegedCloudflared extends Context.Tag("felhom/PrivilegedCloudflared")<PrivilegedCloudflared, PrivilegedCloudflaredShape>() {}

export const CLOUDFLARED_UNIT = "felhom-cloudflared.service"

/** What the helper (and its EnvironmentFile line) accepts: base64 and base64url characters, bounded. */
export const isTunnelToken = (s: string): boolean => s.length >= 1 && s.length <= 4096 && /^[A-Za-z0-9+/=._-]+$/.test(s)

/** How long the install step may take unless `golden.install_timeout_seconds` says otherwise. */
export const DEFAULT_GOLDEN_INSTALL_TIMEOUT_SECONDS = 1800

// ---------------------------------------------------------------------------------------------
// Validation

export const invalid = (command: PrivilegedCommand, argument: ArgumentName) =>
  new PrivilegedError({ reason: "InvalidArgument", command, argument, message: ARGUMENT_RULES[argument] })

/** Decodes one argument; the error quotes the argument's rule, never its value. */
export const check = <A, I>(command: PrivilegedCommand, argument: ArgumentName, schema: Schema.Schema<A, I>) =>
(value: unknown): Effect.Effect<A, PrivilegedError> =>
  Schema.decodeUnknown(schema)(value).pipe(Effect.mapError(() => invalid(command, argument)))

/** A bootstrap write's files, each name and size validated before anything touches the disk. */
export const validBootstrapFiles = (files: BootstrapWriteSpec["files"]) =>
  Effect.gen(function*() {
    const out: Array<readonly [BootstrapFileName, Uint8Array]> = []
    for (const f of files) {
      const name = yield* check("felhom-bootstrap", "bootstrapFile", BootstrapFileName)(f.name)
      const text = Redacted.isRedacted(f.content) ? Redacted.value(f.content) : f.content
      if (typeof text !== "string") return yield* invalid("felhom-bootstrap", "bootstrapContent")
      const bytes = Buffer.from(text, "utf8")
      if (bytes.length > BOOTSTRAP_FILE_MAX_BYTES) return yield* invalid("felhom-bootstrap", "bootstrapContent")
      out.push([name, bytes])
    }
    return out as ReadonlyArray<readonly [BootstrapFileName, Uint8Array]>
  })

const checkTemplate = (value: unknown): Effect.Effect<VolumeId, PrivilegedError> =>
  check("pct", "ostemplate", VolumeId)(value).pipe(
    Effect.tap((v) => check("pct", "ostemplate", TemplateVolume)(v))
  )

const checkBoolean = (command: PrivilegedCommand, argument: ArgumentName) => (value: unknown) =>
  typeof value === "boolean" ? Effect.succeed(value) : Effect.fail(invalid(command, argument))

// ---------------------------------------------------------------------------------------------
// Trusted host paths

const S_IWGRP = 0o020
const S_IWOTH = 0o002
const S_ISVTX = 0o1000

const UNTRUSTED_TEXT: { readonly [K in UntrustedPathReason]: string } = {
  Symlink: "is a symlink",
  NotRootOwned: "is not owned by root",
  GroupOrOtherWritable: "is writable by its group or by others",
  NotADirectory: "is not a directory",
  NotARegularFile: "is not a regular file",
  NotManagedByAgent: "was not written by felhom-agent (no marker line); it is left alone",
  Missing: "does not exist",
  Uninspectable: "cannot be inspected (it must be traversable by the service user)"
}

/** `/a/b/c` → `/`, `/a`, `/a/b`, `/a/b/c`. */
const componentsOf = (path: string): ReadonlyArray<string> => {
  const parts = path.split("/").filter((p) => p.length > 0)
  return ["/", ...parts.map((_, i) => `/${parts.slice(0, i + 1).join("/")}`)]
}

/**
 * Why `component` is not trusted, or undefined. lstat, so a symlink is seen as itself and never
 * followed. The one exception to "only root can write it": a root-owned sticky directory strictly
 * above the trusted root (a /tmp), where others may create entries but cannot rename or remove
 * root's, so the root-owned component below it stays put.
 */
const inspect = (component: string, trustedRoot: string): Effect.Effect<UntrustedPathReason | undefined> =>
  Effect.tryPromise(() => lstat(component)).pipe(
    Effect.map((st): UntrustedPathReason | undefined => {
      if (st.isSymbolicLink()) return "Symlink"
      if (!st.isDirectory()) return "NotADirectory"
      if (st.uid !== 0) return "NotRootOwned"
      const writable = (st.mode & (S_IWGRP | S_IWOTH)) !== 0
      const stickyAncestor = (st.mode & S_ISVTX) !== 0 && isStrictlyInside(component, trustedRoot)
      return writable && !stickyAncestor ? "GroupOrOtherWritable" : undefined
    }),
    Effect.catchAll((e) => {
      const code = (e.error as { code?: unknown } | undefined)?.code
      return Effect.succeed<UntrustedPathReason>(code === "ENOENT" || code === "ENOTDIR" ? "Missing" : "Uninspectable")
    })
  )

/**
 * Refuses `path` unless every component, from `/` down, is a directory owned by uid 0 that only
 * root can write, and none is a symlink (issue 8, finding 7). Root resolves a bind-mount source
 * when pct runs and again at every guest start, long after this check; what makes the check hold
 * for that long is exactly these properties: nobody but root can rename, replace or redirect any
 * component. It runs after the string validation, so `path` is canonical and below the root.
 */
const trustedTree = (command: PrivilegedCommand, argument: ArgumentName, trustedRoot: string) =>
(path: string): Effect.Effect<void, PrivilegedError> =>
  Effect.gen(function*() {
    for (const component of componentsOf(path)) {
      const why = yield* inspect(component, trustedRoot)
      if (why === undefined) continue
      return yield* new PrivilegedError({
        reason: "UntrustedPath",
        command,
        argument,
        component,
        untrusted: why,
        message: `${command}: refusing ${argument}: ${component} ${UNTRUSTED_TEXT[why]}; every component of ` +
          "a host path handed to a root command must be a root-owned directory that only root can write, " +
          "and no symlink (see docs/operations.md §3)"
      })
    }
  })

// ---------------------------------------------------------------------------------------------
// Running a command

interface Completed {
  readonly exitCode: number
  readonly stdout: string
  readonly stdoutTruncated: boolean
  readonly stderrTail: string
}

interface Captured {
  readonly head: ReadonlyArray<Uint8Array>
  readonly headBytes: number
  readonly stdoutTruncated: boolean
  readonly tail: Uint8Array
  readonly stderrTruncated: boolean
}

const emptyCapture: Captured = {
  head: [],
  headBytes: 0,
  stdoutTruncated: false,
  tail: new Uint8Array(0),
  stderrTruncated: false
}

/** Keeps the first STDOUT_CAP_BYTES; later bytes are read (so the child never blocks) and dropped. */
const appendHead = (c: Captured, bytes: Uint8Array): Captured => {
  const room = STDOUT_CAP_BYTES - c.headBytes
  if (bytes.length <= room) return { ...c, head: [...c.head, bytes], headBytes: c.headBytes + bytes.length }
  return {
    ...c,
    head: room > 0 ? [...c.head, bytes.slice(0, room)] : c.head,
    headBytes: STDOUT_CAP_BYTES,
    stdoutTruncated: true
  }
}

/** Keeps the last STDERR_TAIL_BYTES. */
const appendTail = (c: Captured, bytes: Uint8Array): Captured => {
  const joined = Buffer.concat([c.tail, bytes])
  if (joined.length <= STDERR_TAIL_BYTES) return { ...c, tail: joined }
  return { ...c, tail: joined.slice(joined.length - STDERR_TAIL_BYTES), stderrTruncated: true }
}

const decodeUtf8 = (parts: ReadonlyArray<Uint8Array>) => Buffer.concat(parts).toString("utf8")
const stderrText = (c: Captured) => (c.stderrTruncated ? "…" : "") + decodeUtf8([c.tail])

/** The cause of a spawn failure without the argv the platform error message would include. */
const spawnReason = (e: PlatformError): string =>
  e._tag === "SystemError" ? `${e.reason}${e.syscall === undefined ? "" : ` (${e.syscall})`}` : "bad argument"

const makeBoth = (paths: PrivilegedHostPaths) => Effect.gen(function*() {
  const executor = yield* CommandExecutor.CommandExecutor
  const file = (yield* AgentConfig).file
  const config = file.privileged
  const installTimeout = Duration.seconds(file.golden?.install_timeout_seconds ?? DEFAULT_GOLDEN_INSTALL_TIMEOUT_SECONDS)
  const timeout = Duration.seconds(config.timeout_seconds)
  const archiveTimeout = Duration.seconds(config.archive_test_timeout_seconds)
  const BootstrapHostPath = bootstrapHostPathUnder(config.bootstrap_root)
  const trustedBootstrapPath = trustedTree("pct", "hostPath", config.bootstrap_root)
  const ArchivePath = archivePathUnder(config.archive_storage_paths, paths.usbMountRoot)

  const binaryOf = (name: PrivilegedCommand): string => config.commands[name] ?? DEFAULT_COMMAND_PATHS[name]

  /**
   * SIGTERM the process group, then SIGKILL; reports whether the process is still alive. The
   * child leads its own group (the executor spawns detached), so the agent is never signalled.
   * In sudo mode the group signal reaches sudo, which relays SIGTERM to the root command; a
   * SIGKILL can only end sudo itself.
   */
  const terminate = (proc: CommandExecutor.Process): Effect.Effect<boolean> => {
    const running = proc.isRunning.pipe(Effect.orElseSucceed(() => false))
    const signal = (s: "SIGTERM" | "SIGKILL") => proc.kill(s).pipe(Effect.timeout(KILL_GRACE), Effect.ignore)
    return Effect.gen(function*() {
      yield* signal("SIGTERM")
      if (yield* running) yield* signal("SIGKILL")
      return yield* running
    })
  }

  /**
   * Runs argv, returns the exit code and the bounded output. Fails only for spawn failures,
   * signals, lost pipes and the timeout; the exit code is the caller's to judge.
   */
  const run = (
    name: PrivilegedCommand,
    args: ReadonlyArray<string>,
    limit: Duration.Duration = timeout,
    input?: Uint8Array
  ): Effect.Effect<Completed, PrivilegedError> => {
    const binary = binaryOf(name)
    const [exe, argv] = config.mode === "sudo"
      ? [config.sudo_path, ["-n", binary, ...args]] as const
      : [binary, args] as const
    // stdin is a pipe closed after `input` (the one command fed a file's content), else at EOF
    const command = Command.make(exe, ...argv).pipe(
      Command.env(CHILD_ENV, { extendEnv: false }),
      Command.stdin(input === undefined ? Stream.empty : Stream.make(input))
    )
    const fail = (reason: "SpawnFailed" | "NonZeroExit" | "Timeout", message: string, c?: Captured) =>
      new PrivilegedError({
        reason,
        command: name,
        message: `${name}: ${message}`,
        ...(c === undefined ? {} : { stderrTail: stderrText(c) })
      })

    return Effect.gen(function*() {
      const captured = yield* Ref.make(emptyCapture)
      const stuck = yield* Ref.make(false)
      const started = yield* Clock.currentTimeMillis

      const body = (scope: Scope.Scope) =>
        Effect.gen(function*() {
          const proc = yield* Scope.extend(executor.start(command), scope).pipe(
            Effect.mapError((e) => fail("SpawnFailed", `could not start ${exe}: ${spawnReason(e)}`))
          )
          const drain = Effect.all([
            Stream.runForEach(proc.stdout, (b) => Ref.update(captured, (c) => appendHead(c, b))),
            Stream.runForEach(proc.stderr, (b) => Ref.update(captured, (c) => appendTail(c, b)))
          ], { concurrency: "unbounded", discard: true })
          // Both pipes drained and the exit status known; None = ended by a signal.
          const finished = Effect.zipRight(drain, Effect.option(proc.exitCode), { concurrent: true }).pipe(
            Effect.mapError(() => fail("SpawnFailed", "lost the output pipes of the process")),
            Effect.onInterrupt(() => Effect.flatMap(terminate(proc), (alive) => Ref.set(stuck, alive)))
          )
          const outcome = yield* Effect.timeoutOption(finished, limit)
          const c = yield* Ref.get(captured)
          if (Option.isNone(outcome)) {
            const fate = (yield* Ref.get(stuck)) ? "survived SIGKILL" : "was terminated"
            return yield* fail("Timeout", `timed out after ${Duration.toSeconds(limit)} s and ${fate}`, c)
          }
          if (Option.isNone(outcome.value)) return yield* fail("NonZeroExit", "terminated by a signal", c)
          return {
            exitCode: outcome.value.value,
            stdout: decodeUtf8(c.head),
            stdoutTruncated: c.stdoutTruncated,
            stderrTail: stderrText(c)
          } satisfies Completed
        })

      const result = yield* Effect.acquireUseRelease(
        Scope.make(),
        body,
        // A process that survived SIGKILL (uninterruptible I/O) would block the scope's finalizer
        // forever; leave that scope open rather than hang the caller.
        (scope, exit) =>
          Effect.flatMap(Ref.get(stuck), (isStuck) =>
            isStuck
              ? Effect.logWarning(`${name} survived SIGKILL; leaving it behind`)
              : Scope.close(scope, exit))
      )
      const elapsed = (yield* Clock.currentTimeMillis) - started
      yield* Effect.logDebug(`${name} exited ${result.exitCode} after ${elapsed} ms`)
      return result
    })
  }

  /** Exit 0 or a NonZeroExit carrying the exit code and stderr tail. */
  const runOk = (name: PrivilegedCommand, args: ReadonlyArray<string>, input?: Uint8Array) =>
    Effect.flatMap(run(name, args, timeout, input), (r) => (r.exitCode === 0 ? Effect.succeed(r) : Effect.fail(nonZero(name, r))))

  /** In sudo mode, exit 1 with this text is sudo's own refusal, not the command's verdict. */
  const sudoRefused = (r: Completed) =>
    config.mode === "sudo" && r.exitCode === 1 && r.stderrTail.includes("a password is required")

  const nonZero = (name: PrivilegedCommand, r: Completed) => {
    const hint = sudoRefused(r)
      ? " (sudo refused: the argv is not allowed by the sudoers drop-in, see configs/sudoers/felhom-agent)"
      : ""
    return new PrivilegedError({
      reason: "NonZeroExit",
      command: name,
      exitCode: r.exitCode,
      stderrTail: r.stderrTail,
      message: `${name}: exited with status ${r.exitCode}${hint}`
    })
  }

  const createGoldenContainer = Effect.fn("Privileged.createGoldenContainer")(function*(spec: GoldenContainerSpec) {
    const vmid = yield* check("pct", "vmid", VmId)(spec.vmid)
    const ostemplate = yield* checkTemplate(spec.ostemplate)
    const storage = yield* check("pct", "storage", StorageId)(spec.storage)
    const hostname = yield* check("pct", "hostname", Hostname)(spec.hostname)
    const memory = yield* check("pct", "memory", MemoryMiB)(spec.memory)
    const cores = yield* check("pct", "cores", Cores)(spec.cores)
    const rootfs = yield* check("pct", "rootfsGiB", RootfsGiB)(spec.rootfsGiB)
    yield* runOk("pct", [
      "create", String(vmid), ostemplate,
      "--features", "keyctl=1,nesting=1",
      "--unprivileged", "1",
      "--hostname", hostname,
      "--storage", storage,
      "--rootfs", `${storage}:${rootfs}`,
      "--memory", String(memory),
      "--cores", String(cores)
    ])
  })

  const dumpGoldenArchive = Effect.fn("Privileged.dumpGoldenArchive")(function*(spec: GoldenDumpSpec) {
    const vmid = yield* check("vzdump", "vmid", VmId)(spec.vmid)
    const storage = yield* check("vzdump", "storage", StorageId)(spec.storage)
    const r = yield* runOk("vzdump", [
      String(vmid), "--storage", storage, "--mode", "stop", "--compress", "zstd", "--remove", "0", "--prune-backups", "keep-all=1"
    ])
    return archiveOf(storage, `${r.stdout}\n${r.stderrTail}`)
  })

  const destroyGoldenContainer = Effect.fn("Privileged.destroyGoldenContainer")(function*(vmid: VmId) {
    const id = yield* check("pct", "vmid", VmId)(vmid)
    yield* runOk("pct", ["destroy", String(id)])
  })

  // -------------------------------------------------------------------------------------------
  // USB targets

  /** The target's mount point and unit name; the name must fit systemd's limit (InvalidArgument). */
  const usbTarget = (command: PrivilegedCommand | "mount-state", targetId: unknown) =>
    Effect.gen(function*() {
      const id = yield* Schema.decodeUnknown(UsbTargetId)(targetId).pipe(
        Effect.mapError(() =>
          new PrivilegedError({ reason: "InvalidArgument", command, argument: "targetId", message: ARGUMENT_RULES.targetId })
        )
      )
      const mountPoint = `${paths.usbMountRoot}/${id}`
      const unit = mountUnitName(mountPoint)
      if (unit === undefined) {
        return yield* new PrivilegedError({
          reason: "InvalidArgument",
          command,
          argument: "targetId",
          message: `${ARGUMENT_RULES.targetId}; its escaped unit name must fit systemd's 255 characters`
        })
      }
      return { id, mountPoint, unit }
    })

  /**
   * systemd creates a missing mount directory itself; one that exists must be a directory only
   * root controls, since mount(8) would follow a symlink there (onto /etc, say).
   */
  const trustedMountPoint = (mountPoint: string) =>
    Effect.gen(function*() {
      yield* trustedTree("felhom-mount-unit", "targetId", paths.usbMountRoot)(paths.usbMountRoot)
      const why = yield* inspect(mountPoint, paths.usbMountRoot)
      if (why === undefined || why === "Missing") return
      return yield* new PrivilegedError({
        reason: "UntrustedPath",
        command: "felhom-mount-unit",
        argument: "targetId",
        component: mountPoint,
        untrusted: why,
        message: `felhom-mount-unit: refusing targetId: the mount point ${mountPoint} ${UNTRUSTED_TEXT[why]}; ` +
          "it must be absent or a root-owned directory that only root can write, and no symlink"
      })
    })

  /** `<written|unchanged|removed|absent> <unit>`: what the helper did, checked against our own name. */
  const helperVerdict = <V extends string>(r: Completed, verdicts: ReadonlyArray<V>, unit: string) => {
    const line = r.stdout.trim()
    const verdict = verdicts.find((v) => line === `${v} ${unit}`)
    return verdict === undefined
      ? Effect.fail(decodeError("felhom-mount-unit", "unexpected output (a different unit name or verdict)", r))
      : Effect.succeed(verdict)
  }

  /**
   * Whether the target's unit file exists and is ours. The helper refuses a foreign file too; this
   * check also keeps `systemctl disable --now` away from a unit someone else wrote.
   */
  const unitFile = (unit: string) =>
    Effect.gen(function*() {
      const path = `${paths.unitDir}/${unit}`
      const cannot = (e: { readonly error: unknown }) =>
        new PrivilegedError({
          reason: "HostRead",
          command: "felhom-mount-unit",
          message: `felhom-mount-unit: cannot inspect ${paths.unitDir}: ${errnoOf(e.error)}`
        })
      const st = yield* Effect.tryPromise(() => lstat(path)).pipe(
        Effect.map(Option.some),
        Effect.catchAll((e) =>
          errnoOf(e.error) === "ENOENT" ? Effect.succeed(Option.none<Stats>()) : Effect.fail(cannot(e))
        )
      )
      if (Option.isNone(st)) return "absent" as const
      const first = st.value.isFile()
        ? (yield* Effect.tryPromise(() => readFile(path, "utf8")).pipe(Effect.mapError(cannot))).split("\n", 1)[0]
        : undefined
      if (first === MOUNT_UNIT_MARKER) return "ours" as const
      return yield* new PrivilegedError({
        reason: "UntrustedPath",
        command: "felhom-mount-unit",
        argument: "targetId",
        component: path,
        untrusted: "NotManagedByAgent",
        message: `felhom-mount-unit: refusing targetId: ${path} ${UNTRUSTED_TEXT.NotManagedByAgent}`
      })
    })

  /**
   * A filesystem already mounted anywhere but at the target's own mount point is refused: a
   * manifest naming the UUID of the host's root, /boot or a PVE storage would otherwise get a
   * second, writable mount of it that the agent then treats as a removable target (sudoers cannot
   * tell disks apart; this can). Same filesystem = the mount's device number equals the block
   * device the by-uuid link resolves to, or its source resolves to that device. A disk that is
   * not present is not mounted anywhere. Read without a child process, like usbState.
   */
  const notMountedElsewhere = (uuid: string, mountPoint: string) =>
    Effect.gen(function*() {
      const hostRead = (what: string) => (e: { readonly error: unknown }) =>
        new PrivilegedError({ reason: "HostRead", command: "felhom-mount-unit", message: `cannot read ${what}: ${errnoOf(e.error)}` })
      const device = yield* Effect.tryPromise(() => realpath(`${paths.byUuidDir}/${uuid}`)).pipe(Effect.option)
      if (Option.isNone(device)) return
      const st = yield* Effect.tryPromise(() => stat(device.value, { bigint: true })).pipe(Effect.option)
      const number = Option.isSome(st) && st.value.isBlockDevice()
        ? `${((st.value.rdev >> 8n) & 0xfffn) | ((st.value.rdev >> 32n) & ~0xfffn)}:${(st.value.rdev & 0xffn) | ((st.value.rdev >> 12n) & ~0xffn)}`
        : undefined
      const table = yield* Effect.tryPromise(() => readFile(paths.mountInfo, "utf8")).pipe(Effect.mapError(hostRead(paths.mountInfo)))
      for (const m of mountDevices(table)) {
        if (m.mountPoint === mountPoint) continue
        const same = m.majorMinor === number ||
          (m.source.startsWith("/") && (yield* Effect.tryPromise(() => realpath(m.source)).pipe(Effect.option)).pipe(Option.contains(device.value)))
        if (!same) continue
        return yield* new PrivilegedError({
          reason: "InvalidArgument",
          command: "felhom-mount-unit",
          argument: "uuid",
          message: `felhom-mount-unit: refusing uuid: that filesystem is already mounted at ${m.mountPoint.replace(/[^\x20-\x7e]/g, "?").slice(0, 200)} ` +
            "on this host; a USB target is a disk of its own, never one of the host's filesystems"
        })
      }
    })

  const mountUsb = Effect.fn("Privileged.mountUsb")(function*(spec: UsbMountSpec) {
    const { id, mountPoint, unit } = yield* usbTarget("felhom-mount-unit", spec.targetId)
    const uuid = yield* check("felhom-mount-unit", "uuid", FsUuid)(spec.uuid)
    const fsType = yield* check("felhom-mount-unit", "fsType", UsbFsType)(spec.fsType ?? "auto")
    yield* notMountedElsewhere(uuid, mountPoint)
    yield* trustedMountPoint(mountPoint)
    yield* unitFile(unit)
    const written = yield* runOk("felhom-mount-unit", [
      "write", paths.unitDir, paths.usbMountRoot, id, uuid, fsType
    ]).pipe(Effect.flatMap((r) => helperVerdict(r, ["written", "unchanged"], unit)))
    // An unchanged file may still be newer than what systemd loaded (a reload that failed last time).
    const stale = written === "unchanged" &&
      (yield* runOk("systemctl", ["show", "--property=NeedDaemonReload", "--value", unit])).stdout.trim() === "yes"
    if (written === "written" || stale) yield* runOk("systemctl", ["daemon-reload"])
    yield* runOk("systemctl", ["enable", "--now", unit])
    return { unit, mountPoint, changed: written === "written" } satisfies UsbMountResult
  })

  const unmountUsb = Effect.fn("Privileged.unmountUsb")(function*(targetId: string) {
    const { id, unit } = yield* usbTarget("felhom-mount-unit", targetId)
    if ((yield* unitFile(unit)) === "absent") return { unit, removed: false } satisfies UsbUnmountResult
    // disable reads the unit's [Install] section, so it runs while the file is still there.
    yield* runOk("systemctl", ["disable", "--now", unit])
    const removed = yield* runOk("felhom-mount-unit", ["remove", paths.unitDir, paths.usbMountRoot, id]).pipe(
      Effect.flatMap((r) => helperVerdict(r, ["removed", "absent"], unit))
    )
    yield* runOk("systemctl", ["daemon-reload"])
    return { unit, removed: removed === "removed" } satisfies UsbUnmountResult
  })

  const usbState = Effect.fn("Privileged.usbState")(function*(spec: UsbStateSpec) {
    const { mountPoint } = yield* usbTarget("mount-state", spec.targetId)
    const uuid = yield* Schema.decodeUnknown(FsUuid)(spec.uuid).pipe(
      Effect.mapError(() =>
        new PrivilegedError({ reason: "InvalidArgument", command: "mount-state", argument: "uuid", message: ARGUMENT_RULES.uuid })
      )
    )
    const hostRead = (what: string) => (e: { readonly error: unknown }) =>
      new PrivilegedError({ reason: "HostRead", command: "mount-state", message: `cannot read ${what}: ${errnoOf(e.error)}` })
    // A pulled disk's udev link goes away; a dangling one (device node gone first) counts as absent.
    const device = yield* Effect.tryPromise(() => realpath(`${paths.byUuidDir}/${uuid}`)).pipe(
      Effect.map(Option.some),
      Effect.catchAll((e) => {
        const code = (e.error as { code?: unknown } | undefined)?.code
        return code === "ENOENT" || code === "ENOTDIR" ? Effect.succeed(Option.none<string>()) : Effect.fail(hostRead(paths.byUuidDir)(e))
      })
    )
    const table = yield* Effect.tryPromise(() => readFile(paths.mountInfo, "utf8")).pipe(
      Effect.mapError(hostRead(paths.mountInfo))
    )
    // The last entry for a mount point is the one on top, the one a path lookup reaches.
    const top = parseMountInfo(table).filter((m) => m.mountPoint === mountPoint).at(-1)
    const state: UsbMountState = top === undefined
      ? (Option.isSome(device) ? "unmounted" : "absent")
      : Option.isNone(device)
      ? "stale"
      : top.source === device.value
      ? "mounted"
      : "foreign"
    return {
      state,
      devicePresent: Option.isSome(device),
      ...optionalField("device", device),
      mountPoint,
      mounted: top !== undefined,
      ...(top === undefined ? {} : { mountSource: top.source, fsType: top.fsType, readOnly: top.readOnly })
    } satisfies UsbState
  })

  // -------------------------------------------------------------------------------------------
  // Archive integrity

  const checkArchivePath = (command: PrivilegedCommand, value: unknown) => check(command, "archivePath", ArchivePath)(value)

  /**
   * The path that will run: symlinks resolved, the result valid by the same rule, every directory
   * on it trusted (only root can swap anything between here and the root command), and a file.
   */
  const resolveArchive = (given: string, command: PrivilegedCommand = "tar") =>
    Effect.gen(function*() {
      const resolved = yield* Effect.tryPromise(() => realpath(given)).pipe(
        Effect.catchAll((e) => {
          const code = (e.error as { code?: unknown } | undefined)?.code
          const why: UntrustedPathReason = code === "ENOENT" || code === "ENOTDIR" ? "Missing" : "Uninspectable"
          return Effect.fail(
            new PrivilegedError({
              reason: "UntrustedPath",
              command,
              argument: "archivePath",
              untrusted: why,
              message: `${command}: refusing archivePath: the archive ${UNTRUSTED_TEXT[why]}`
            })
          )
        })
      )
      const archive = yield* checkArchivePath(command, resolved).pipe(
        Effect.mapError(() =>
          new PrivilegedError({
            reason: "InvalidArgument",
            command,
            argument: "archivePath",
            message: `${ARGUMENT_RULES.archivePath} (this one resolves through a symlink to a path that is not)`
          })
        )
      )
      const storage = archiveStorageOf(archive) ?? archive
      yield* trustedTree(command, "archivePath", storage)(posix.dirname(archive))
      const st = yield* Effect.tryPromise(() => lstat(archive)).pipe(Effect.option)
      if (Option.isNone(st) || !st.value.isFile()) {
        const why: UntrustedPathReason = Option.isNone(st) ? "Missing" : "NotARegularFile"
        return yield* new PrivilegedError({
          reason: "UntrustedPath",
          command,
          argument: "archivePath",
          component: archive,
          untrusted: why,
          message: `${command}: refusing archivePath: ${archive} ${UNTRUSTED_TEXT[why]}`
        })
      }
      return archive
    })

  const verifyArchive = Effect.fn("Privileged.verifyArchive")(function*(path: string) {
    const given = yield* checkArchivePath("tar", path)
    const archive = yield* resolveArchive(given)
    const compression = vzdumpLxcCompression(posix.basename(archive)) ?? "none"
    const stages = archiveStages(compression, archive)
    for (const [stage, name, args] of stages) {
      const r = yield* run(name, args, archiveTimeout)
      if (r.exitCode === 0) continue
      if (sudoRefused(r)) return yield* nonZero(name, r)
      return {
        ok: false,
        compression,
        stage,
        exitCode: r.exitCode,
        reason: archiveReason(r.stderrTail, [archive, given])
      } satisfies ArchiveCheck
    }
    return { ok: true, compression } satisfies ArchiveCheck
  })

  const guestSystemState = Effect.fn("Privileged.guestSystemState")(function*(vmid: VmId) {
    const id = yield* check("pct", "vmid", VmId)(vmid)
    const r = yield* run("pct", ["exec", String(id), "--", "systemctl", "is-system-running"])
    const state = r.stdout.split("\n")[0]?.trim() ?? ""
    const known = GUEST_SYSTEM_STATES.find((s) => s === state)
    if (known === undefined || sudoRefused(r)) return yield* nonZero("pct", r)
    return known
  })

  const bindMountIntoGuest = Effect.fn("Privileged.bindMountIntoGuest")(function*(spec: GuestBindMountSpec) {
    const vmid = yield* check("pct", "vmid", VmId)(spec.vmid)
    const index = yield* check("pct", "mpIndex", MountPointIndex)(spec.mpIndex)
    const hostPath = yield* check("pct", "hostPath", BootstrapHostPath)(spec.hostPath)
    const guestPath = yield* check("pct", "guestPath", GuestPath)(spec.guestPath)
    const readOnly = yield* checkBoolean("pct", "readOnly")(spec.readOnly)
    yield* trustedBootstrapPath(hostPath)
    yield* runOk("pct", [
      "set", String(vmid), `--mp${index}`, `${hostPath},mp=${guestPath},ro=${readOnly ? 1 : 0},backup=0`
    ])
  })

  const unbindFromGuest = Effect.fn("Privileged.unbindFromGuest")(function*(spec: GuestUnbindSpec) {
    const vmid = yield* check("pct", "vmid", VmId)(spec.vmid)
    const index = yield* check("pct", "mpIndex", MountPointIndex)(spec.mpIndex)
    yield* runOk("pct", ["set", String(vmid), "--delete", `mp${index}`])
  })

  // -------------------------------------------------------------------------------------------
  // Bootstrap files

  const BootstrapRoot = Schema.String.pipe(Schema.filter((p) => isSafeAbsolutePath(p)))

  /**
   * The root, and the guest's directory if it exists, must be trusted (root-owned, only root can
   * write, no symlink) before the helper runs; the helper checks the directory and file again.
   */
  const bootstrapDir = (vmidIn: unknown) =>
    Effect.gen(function*() {
      const vmid = yield* check("felhom-bootstrap", "vmid", VmId)(vmidIn)
      const root = yield* check("felhom-bootstrap", "bootstrapRoot", BootstrapRoot)(config.bootstrap_root)
      yield* trustedTree("felhom-bootstrap", "bootstrapRoot", root)(root)
      const dir = `${root}/${vmid}`
      const why = yield* inspect(dir, root)
      if (why !== undefined && why !== "Missing") {
        return yield* new PrivilegedError({
          reason: "UntrustedPath",
          command: "felhom-bootstrap",
          argument: "vmid",
          component: dir,
          untrusted: why,
          message: `felhom-bootstrap: refusing vmid: the guest's bootstrap directory ${dir} ${UNTRUSTED_TEXT[why]}; ` +
            "it must be absent or a root-owned directory that only root can write, and no symlink"
        })
      }
      return { vmid, root }
    })

  /** The helper prints one line, `<verdict> <name>`; anything else is a Decode error. */
  const bootstrapVerdict = <V extends string>(r: Completed, verdicts: ReadonlyArray<V>, what: string) => {
    const line = r.stdout.trim()
    const verdict = verdicts.find((v) => line === `${v} ${what}`)
    return verdict === undefined
      ? Effect.fail(decodeError("felhom-bootstrap", "unexpected output (a different name or verdict)", r))
      : Effect.succeed(verdict)
  }

  const writeBootstrap = Effect.fn("Privileged.writeBootstrap")(function*(spec: BootstrapWriteSpec) {
    yield* check("felhom-bootstrap", "vmid", VmId)(spec.vmid)
    // every file is validated before the disk is inspected and the first is written
    const files = yield* validBootstrapFiles(spec.files)
    const { root, vmid } = yield* bootstrapDir(spec.vmid)
    for (const [name, bytes] of files) {
      const r = yield* runOk("felhom-bootstrap", ["write", root, String(vmid), name], bytes)
      yield* bootstrapVerdict(r, ["written"], name)
    }
  })

  const removeBootstrap = Effect.fn("Privileged.removeBootstrap")(function*(vmidIn: VmId) {
    const { root, vmid } = yield* bootstrapDir(vmidIn)
    const r = yield* runOk("felhom-bootstrap", ["remove", root, String(vmid)])
    const verdict = yield* bootstrapVerdict(r, ["removed", "absent"], String(vmid))
    return { removed: verdict === "removed" } satisfies BootstrapRemoveResult
  })

  const smart = Effect.fn("Privileged.smart")(function*(device: string) {
    const dev = yield* check("smartctl", "device", BlockDevice)(device)
    const r = yield* run("smartctl", ["--json=c", "-a", `/dev/${dev}`])
    // Bits 0-1: the command line did not parse, or the device could not be opened.
    if ((r.exitCode & 0b11) !== 0) return yield* nonZero("smartctl", r)
    return yield* decodeSmart(dev, r)
  })

  const sensors = Effect.fn("Privileged.sensors")(function*() {
    const r = yield* run("sensors", ["-j"])
    // A host without hwmon chips (e.g. nested virtualisation) is an empty reading, not a failure.
    if (r.exitCode !== 0 && r.stderrTail.includes("No sensors found")) return []
    if (r.exitCode !== 0) return yield* nonZero("sensors", r)
    return yield* decodeSensors(r)
  })

  // -------------------------------------------------------------------------------------------
  // The golden build's helper

  /** The helper prints one line, `<verdict> <what>`; anything else is a Decode error. */
  const goldenVerdict = (r: Completed, expected: string) =>
    r.stdout.trim() === expected
      ? Effect.void
      : Effect.fail(decodeError("felhom-golden", "unexpected output (a different container or verdict)", r))

  const installGolden = Effect.fn("Privileged.installGolden")(function*(spec: GoldenInstallSpec) {
    const vmid = yield* check("felhom-golden", "vmid", VmId)(spec.vmid)
    const hostname = yield* check("felhom-golden", "goldenHostname", GoldenHostname)(spec.hostname)
    const bridge = yield* check("felhom-golden", "bridge", BridgeName)(spec.bridge)
    const r = yield* run("felhom-golden", ["install", String(vmid), hostname, bridge], installTimeout)
    if (r.exitCode !== 0) return yield* nonZero("felhom-golden", r)
    yield* goldenVerdict(r, `installed ${vmid}`)
  })

  const archiveChecksum = Effect.fn("Privileged.archiveChecksum")(function*(path: string) {
    const given = yield* checkArchivePath("felhom-golden", path)
    // the golden dump is zstd (dumpGoldenArchive); the helper and sudoers take nothing else
    if (vzdumpLxcCompression(posix.basename(given)) !== "zst") return yield* invalid("felhom-golden", "archivePath")
    const archive = yield* resolveArchive(given, "felhom-golden")
    if (vzdumpLxcCompression(posix.basename(archive)) !== "zst") return yield* invalid("felhom-golden", "archivePath")
    const r = yield* run("felhom-golden", ["checksum", archive], archiveTimeout)
    if (r.exitCode !== 0) return yield* nonZero("felhom-golden", r)
    const m = /^sha256 ([0-9a-f]{64})$/.exec(r.stdout.trim())
    const sha256 = m === null ? Option.none() : Schema.decodeUnknownOption(Sha256Hex)(m[1])
    if (Option.isNone(sha256)) return yield* decodeError("felhom-golden", "unexpected output (no sha256 line)", r)
    return { path: archive, sha256: sha256.value } satisfies ArchiveChecksum
  })

  const golden = PrivilegedGolden.of({ installGolden, archiveChecksum })

  // -------------------------------------------------------------------------------------------
  // The PBS key's helper

  const attachPbsKey = Effect.fn("Privileged.attachPbsKey")(function*(storageIn: StorageId) {
    const storage = yield* check("felhom-pbskey", "storage", StorageId)(storageIn)
    if (storage.length > PBSKEY_STORAGE_MAX) return yield* invalid("felhom-pbskey", "storage")
    const r = yield* runOk("felhom-pbskey", ["attach", storage])
    const line = r.stdout.trim()
    if (line === `attached ${storage}`) return "attached" as const
    if (line === `unchanged ${storage}`) return "unchanged" as const
    return yield* decodeError("felhom-pbskey", "unexpected output (a different storage or verdict)", r)
  })

  const pbsKey = PrivilegedPbsKey.of({ attachPbsKey })

  // -------------------------------------------------------------------------------------------
  // The break-glass unit

  const breakGlass = PrivilegedBreakGlass.of({
    start: Effect.asVoid(runOk("systemctl", ["start", BREAK_GLASS_UNIT])).pipe(Effect.withSpan("Privileged.breakGlassStart")),
    stop: Effect.asVoid(runOk("systemctl", ["stop", BREAK_GLASS_UNIT])).pipe(Effect.withSpan("Privileged.breakGlassStop")),
    // exit 0 only for active; the state word is on stdout either way (3: inactive/failed)
    state: Effect.flatMap(run("systemctl", ["is-active", BREAK_GLASS_UNIT]), (r) => {
      if (sudoRefused(r)) return Effect.fail(nonZero("systemctl", r))
      const word = r.stdout.trim()
      const known = ["active", "inactive", "failed", "activating", "deactivating", "reloading"] as const
      const state = known.find((k) => k === word)
      return Effect.succeed<BreakGlassUnitState>(state ?? "unknown")
    }).pipe(Effect.withSpan("Privileged.breakGlassState"))
  })

  // -------------------------------------------------------------------------------------------
  // The self-update helper

  const stageUpdate = Effect.fn("Privileged.stageUpdate")(function*(versionIn: string) {
    const version = yield* check("felhom-update", "releaseVersion", ReleaseVersion)(versionIn)
    const r = yield* run("felhom-update", ["stage", version], UPDATE_STAGE_TIMEOUT)
    if (r.exitCode !== 0) return yield* nonZero("felhom-update", r)
    const m = /^staged (a|b) (\S+)$/.exec(r.stdout.trim())
    if (m === null || m[2] !== version) return yield* decodeError("felhom-update", "unexpected output (no 'staged <slot> <version>' for this version)", r)
    return { slot: m[1] as "a" | "b", version } satisfies UpdateStaged
  })

  const activateUpdate = Effect.gen(function*() {
    const r = yield* runOk("felhom-update", ["activate"])
    const m = /^activating (\S+)$/.exec(r.stdout.trim())
    if (m === null) return yield* decodeError("felhom-update", "unexpected output (no 'activating <version>')", r)
    return m[1]!
  }).pipe(Effect.withSpan("Privileged.activateUpdate"))

  const update = PrivilegedUpdate.of({ stage: stageUpdate, activate: activateUpdate })

  // -------------------------------------------------------------------------------------------
  // cloudflared: its token file and its unit

  const writeCloudflaredToken = Effect.fn("Privileged.writeCloudflaredToken")(function*(token: Redacted.Redacted<string>) {
    const value = Redacted.value(token)
    // checked here too, so a bad token never reaches sudo; the message never quotes it
    if (!isTunnelToken(value)) {
      return yield* new PrivilegedError({
        reason: "InvalidArgument",
        command: "felhom-cloudflared",
        argument: "token",
        message: "felhom-cloudflared: the tunnel token must be 1 to 4096 characters of [A-Za-z0-9+/=._-] (value hidden)"
      })
    }
    const r = yield* runOk("felhom-cloudflared", ["write-token"], new TextEncoder().encode(`${value}\n`))
    const line = r.stdout.trim()
    if (line === "changed" || line === "unchanged") return line
    return yield* decodeError("felhom-cloudflared", "unexpected output (neither changed nor unchanged)", r)
  })

  const cloudflared = PrivilegedCloudflared.of({
    writeToken: writeCloudflaredToken,
    start: Effect.asVoid(runOk("systemctl", ["start", CLOUDFLARED_UNIT])).pipe(Effect.withSpan("Privileged.cloudflaredStart")),
    restart: Effect.asVoid(runOk("systemctl", ["restart", CLOUDFLARED_UNIT])).pipe(Effect.withSpan("Privileged.cloudflaredRestart"))
  })

  const privileged = Privileged.of({
    createGoldenContainer,
    dumpGoldenArchive,
    destroyGoldenContainer,
    mountUsb,
    unmountUsb,
    usbState,
    verifyArchive,
    guestSystemState,
    bindMountIntoGuest,
    unbindFromGuest,
    writeBootstrap,
    removeBootstrap,
    smart,
    sensors
  })
  return { privileged, golden, pbsKey, breakGlass, update, cloudflared }
})

const make = (paths: PrivilegedHostPaths) => Effect.map(makeBoth(paths), (both) => both.privileged)

/**
 * The layer over explicit host paths (tests use scratch directories). The fence: it may need a
 * process executor and config, never an HTTP client.
 */
export const privilegedLayerAt = (paths: PrivilegedHostPaths) =>
  Layer.effect(Privileged, make(paths)).pipe(
    Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>()
  )

/** The production layer: the host paths the sudoers rules name. */
export const PrivilegedLive = privilegedLayerAt(DEFAULT_HOST_PATHS)

/** The golden build's root commands over explicit host paths; the same fence as Privileged. */
export const privilegedGoldenLayerAt = (paths: PrivilegedHostPaths) =>
  Layer.effect(PrivilegedGolden, Effect.map(makeBoth(paths), (both) => both.golden)).pipe(
    Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>()
  )

export const PrivilegedGoldenLive = privilegedGoldenLayerAt(DEFAULT_HOST_PATHS)

/** The PBS key's root helper over explicit host paths; the same fence as Privileged. */
export const privilegedPbsKeyLayerAt = (paths: PrivilegedHostPaths) =>
  Layer.effect(PrivilegedPbsKey, Effect.map(makeBoth(paths), (both) => both.pbsKey)).pipe(
    Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>()
  )

export const PrivilegedPbsKeyLive = privilegedPbsKeyLayerAt(DEFAULT_HOST_PATHS)

/** The break-glass unit's three systemctl commands; the same fence as Privileged. */
export const PrivilegedBreakGlassLive = Layer.effect(PrivilegedBreakGlass, Effect.map(makeBoth(DEFAULT_HOST_PATHS), (both) => both.breakGlass)).pipe(
  Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>()
)

/** The self-update helper over explicit host paths (tests); the same fence as Privileged. */
export const privilegedUpdateLayerAt = (paths: PrivilegedHostPaths) =>
  Layer.effect(PrivilegedUpdate, Effect.map(makeBoth(paths), (both) => both.update)).pipe(
    Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>()
  )

export const PrivilegedUpdateLive = privilegedUpdateLayerAt(DEFAULT_HOST_PATHS)

/** cloudflared's helper and unit over explicit host paths (tests); the same fence as Privileged. */
export const privilegedCloudflaredLayerAt = (paths: PrivilegedHostPaths) =>
  Layer.effect(PrivilegedCloudflared, Effect.map(makeBoth(paths), (both) => both.cloudflared)).pipe(
    Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>()
  )

export const PrivilegedCloudflaredLive = privilegedCloudflaredLayerAt(DEFAULT_HOST_PATHS)

// ---------------------------------------------------------------------------------------------
// Archive tests

type ArchiveStage = readonly [stage: "compression" | "tar", command: PrivilegedCommand, args: ReadonlyArray<string>]

/** The compression's own test first (it names a bad checksum precisely), then the tar listing. */
const archiveStages = (compression: ArchiveCompression, archive: string): ReadonlyArray<ArchiveStage> => {
  // --force-local: GNU tar would read a `host:path` archive name from a remote host over rsh.
  const tar = (filter: ReadonlyArray<string>): ArchiveStage => ["tar", "tar", ["--force-local", ...filter, "-t", "-f", archive]]
  switch (compression) {
    case "zst":
      return [["compression", "zstd", ["-q", "-t", "--", archive]], tar(["--zstd"])]
    case "gz":
      return [["compression", "gzip", ["-t", "--", archive]], tar(["--gzip"])]
    case "lzo":
      return [["compression", "lzop", ["-q", "-t", "--", archive]], tar(["--lzop"])]
    case "none":
      return [tar([])]
  }
}

/**
 * The last lines of a failed test's stderr, fit for a report: control characters dropped, the
 * archive's own path and any other path (tar may name entries of the customer's filesystem)
 * replaced, clipped to ARCHIVE_REASON_MAX.
 */
export const archiveReason = (stderr: string, archivePaths: ReadonlyArray<string>): string => {
  let text = stderr
  for (const p of archivePaths) text = text.split(p).join("<archive>")
  const lines = text
    .split("\n")
    .map((l) =>
      l.replace(/[\u0000-\u001f\u007f-\u009f]/g, " ")
        .replace(/(^|[\s'"`(])\.{0,2}\/[^\s'"`):,]*/g, "$1<path>")
        .replace(/\s+/g, " ")
        .trim()
    )
    .filter((l) => l.length > 0 && l !== "…")
  const tail = lines.slice(-3).join(" / ")
  const reason = tail.length > 0 ? tail : "no error output"
  return reason.length > ARCHIVE_REASON_MAX ? `${reason.slice(0, ARCHIVE_REASON_MAX - 1)}…` : reason
}

const errnoOf = (error: unknown): string => {
  const code = (error as { code?: unknown } | undefined)?.code
  return typeof code === "string" ? code : "unknown error"
}

// ---------------------------------------------------------------------------------------------
// Output decoding

const decodeError = (command: PrivilegedCommand, message: string, r: Completed) =>
  new PrivilegedError({ reason: "Decode", command, message: `${command}: ${message}`, stderrTail: r.stderrTail })

/** Parses stdout as JSON; a truncated or malformed document is a Decode error. */
const parseJsonOutput = (command: PrivilegedCommand, r: Completed): Effect.Effect<unknown, PrivilegedError> =>
  r.stdoutTruncated
    ? Effect.fail(decodeError(command, `output exceeded ${STDOUT_CAP_BYTES} bytes and was cut off`, r))
    : Schema.decodeUnknown(Schema.parseJson())(r.stdout).pipe(
      Effect.mapError(() => decodeError(command, "output is not valid JSON", r))
    )

const JsonObject = Schema.Record({ key: Schema.String, value: Schema.Unknown })

/** Reads an optional field at `path`, ignoring it when absent or of another type. */
const field = <A, I>(root: unknown, path: ReadonlyArray<string>, schema: Schema.Schema<A, I>): Option.Option<A> => {
  let node: unknown = root
  for (const key of path) {
    const obj = Schema.decodeUnknownOption(JsonObject)(node)
    if (Option.isNone(obj)) return Option.none()
    node = obj.value[key]
  }
  return Schema.decodeUnknownOption(schema)(node)
}

const optionalField = <K extends string, A>(key: K, value: Option.Option<A>): { [P in K]?: A } =>
  Option.match(value, { onNone: () => ({}), onSome: (v) => ({ [key]: v }) as { [P in K]?: A } })

const SMART_FINDING_BITS: ReadonlyArray<readonly [bit: number, finding: SmartFinding]> = [
  [2, "SmartCommandFailed"],
  [3, "DiskFailing"],
  [4, "PrefailAttributeAtThreshold"],
  [5, "AttributeWasAtThreshold"],
  [6, "ErrorLogHasRecords"],
  [7, "SelfTestLogHasErrors"]
]

/** Keeps a handful of fields, each only when present with the expected type (drive firmwares vary). */
const decodeSmart = (device: string, r: Completed): Effect.Effect<SmartReport, PrivilegedError> =>
  Effect.gen(function*() {
    const json = yield* parseJsonOutput("smartctl", r)
    if (Option.isNone(Schema.decodeUnknownOption(JsonObject)(json))) {
      return yield* decodeError("smartctl", "output is not a JSON object", r)
    }
    const text = Schema.String
    const num = Schema.Number
    return {
      device,
      exitStatus: r.exitCode,
      findings: SMART_FINDING_BITS.filter(([bit]) => (r.exitCode & (1 << bit)) !== 0).map(([, f]) => f),
      ...optionalField("model", field(json, ["model_name"], text)),
      ...optionalField("serial", field(json, ["serial_number"], text)),
      ...optionalField("passed", field(json, ["smart_status", "passed"], Schema.Boolean)),
      ...optionalField("temperatureC", field(json, ["temperature", "current"], num)),
      ...optionalField("powerOnHours", field(json, ["power_on_time", "hours"], num))
    } satisfies SmartReport
  })

/** lm-sensors subfeature prefixes and the kind of reading each one is. */
const SENSOR_KINDS: ReadonlyArray<readonly [prefix: string, kind: SensorKind]> = [
  ["temp", "temperature"],
  ["fan", "fan"],
  ["in", "voltage"],
  ["curr", "current"],
  ["power", "power"],
  ["energy", "energy"],
  ["humidity", "humidity"]
]

/** One feature object (`{"temp1_input": 45, "temp1_max": 80, ...}`) to a reading, if it has an input. */
const readingOf = (chip: string, adapter: Option.Option<string>, label: string, feature: unknown) =>
  Option.gen(function*() {
    const subs = yield* Schema.decodeUnknownOption(JsonObject)(feature)
    const numbers = new Map<string, number>()
    for (const [k, v] of Object.entries(subs)) if (typeof v === "number" && Number.isFinite(v)) numbers.set(k, v)
    // power sensors may only report an average
    const inputKey = yield* Option.fromNullable(
      [...numbers.keys()].find((k) => /^[a-z]+\d+_input$/.test(k)) ??
        [...numbers.keys()].find((k) => /^power\d+_average$/.test(k))
    )
    const prefix = inputKey.slice(0, inputKey.indexOf("_"))
    const kind = yield* Option.fromNullable(SENSOR_KINDS.find(([p]) => new RegExp(`^${p}\\d+$`).test(prefix))?.[1])
    const sub = (name: string) => Option.fromNullable(numbers.get(`${prefix}_${name}`))
    const alarm = Option.map(sub("alarm"), (v) => v !== 0)
    return {
      chip,
      ...optionalField("adapter", adapter),
      label,
      kind,
      input: numbers.get(inputKey) ?? 0,
      ...optionalField("min", sub("min")),
      ...optionalField("max", sub("max")),
      ...optionalField("crit", sub("crit")),
      ...optionalField("alarm", alarm)
    } satisfies SensorReading
  })

/** `sensors -j`: `{ chip: { "Adapter": string, feature: { subfeature: number } } }`. */
const decodeSensors = (r: Completed): Effect.Effect<ReadonlyArray<SensorReading>, PrivilegedError> =>
  Effect.gen(function*() {
    const json = yield* parseJsonOutput("sensors", r)
    const chips = yield* Schema.decodeUnknown(JsonObject)(json).pipe(
      Effect.mapError(() => decodeError("sensors", "output is not a JSON object", r))
    )
    const readings: Array<SensorReading> = []
    for (const [chip, body] of Object.entries(chips)) {
      const features = Schema.decodeUnknownOption(JsonObject)(body)
      if (Option.isNone(features)) continue
      const adapter = field(features.value, ["Adapter"], Schema.String)
      for (const [label, feature] of Object.entries(features.value)) {
        if (label === "Adapter") continue
        Option.match(readingOf(chip, adapter, label, feature), {
          onNone: () => undefined,
          onSome: (reading) => readings.push(reading)
        })
      }
    }
    return readings
  })

/** vzdump logs `creating vzdump archive '<path>'` (file storages) or names a PBS archive. */
const archiveOf = (storage: StorageId, log: string): GoldenArchive => {
  const m = /creating (?:vzdump|Proxmox Backup Server) archive '([^'\n]+)'/.exec(log)
  if (m === null || m[1] === undefined) return {}
  const archive = m[1]
  const base = archive.slice(archive.lastIndexOf("/") + 1)
  const volumeId = archive.startsWith("/") && /^vzdump-lxc-\d+-[\w.-]+$/.test(base)
    ? Schema.decodeUnknownOption(VolumeId)(`${storage}:backup/${base}`)
    : Option.none()
  return { archive, ...optionalField("volumeId", volumeId) }
}
