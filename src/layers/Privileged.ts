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
 * - a cleared environment (CHILD_ENV), stdin at EOF;
 * - a timeout that terminates the process group (SIGTERM, then SIGKILL);
 * - bounded capture: the first STDOUT_CAP_BYTES of stdout, the last STDERR_TAIL_BYTES of stderr.
 * Log lines and errors name the command and the argument, never argument values.
 */
import { CommandExecutor } from "@effect/platform"
import * as Command from "@effect/platform/Command"
import type { PlatformError } from "@effect/platform/Error"
import { Clock, Context, Duration, Effect, Layer, Option, Ref, Schema, Scope, Stream } from "effect"
import { lstat } from "node:fs/promises"
import type { PrivilegedCommand } from "../schema/config.js"
import { StorageId, VmId, VolumeId } from "../schema/ids.js"
import {
  ARGUMENT_RULES,
  type ArgumentName,
  BlockDevice,
  bootstrapHostPathUnder,
  Cores,
  FsUuid,
  type GoldenArchive,
  GuestPath,
  Hostname,
  isStrictlyInside,
  MemoryMiB,
  MountPointIndex,
  PrivilegedError,
  RootfsGiB,
  type SensorKind,
  type SensorReading,
  type SmartFinding,
  type SmartReport,
  TemplateVolume,
  type UntrustedPathReason,
  UsbMountPoint
} from "../schema/privileged.js"
import { AgentConfig } from "./Config.js"

export { DEFAULT_BOOTSTRAP_ROOT, PrivilegedError, USB_MOUNT_ROOT } from "../schema/privileged.js"

// ---------------------------------------------------------------------------------------------
// Execution constants

/** Where the binaries live on a PVE 8 host; configs/sudoers/felhom-agent allows exactly these. */
export const DEFAULT_COMMAND_PATHS: { readonly [K in PrivilegedCommand]: string } = {
  pct: "/usr/sbin/pct",
  vzdump: "/usr/bin/vzdump",
  "systemd-mount": "/usr/bin/systemd-mount",
  "systemd-umount": "/usr/bin/systemd-umount",
  smartctl: "/usr/sbin/smartctl",
  sensors: "/usr/bin/sensors"
}

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
  /** The filesystem UUID as listed under /dev/disk/by-uuid. */
  readonly uuid: string
  /** `/mnt/felhom/<name>` (see USB_MOUNT_ROOT). */
  readonly mountPoint: string
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

export interface PrivilegedShape {
  /**
   * `pct create <vmid> <template> --features keyctl=1,nesting=1 --unprivileged 1 ...`: the golden
   * base container. Why not the API: PVE lets only root@pam set `keyctl` (needed for Docker in an
   * unprivileged LXC), and an API token is never root@pam. Per-customer guests are restored from
   * the golden archive by the API instead (a token-authorized restore preserves keyctl, SPEC §10).
   */
  readonly createGoldenContainer: (spec: GoldenContainerSpec) => Effect.Effect<void, PrivilegedError>
  /**
   * `vzdump <vmid> --storage <s> --mode stop --compress zstd --remove 0`: the golden archive.
   * Why here: strictly, the API could run this vzdump (VM.Backup on the build vmid). It sits on
   * the root path so the golden build (create → dump → destroy) does not depend on the token's
   * ACL covering a container the token did not create; moving it to the Proxmox layer is an
   * option. `--remove 0` keeps the storage's prune policy from deleting the previous golden
   * archive before the new one has been proven by a restore.
   */
  readonly dumpGoldenArchive: (spec: GoldenDumpSpec) => Effect.Effect<GoldenArchive, PrivilegedError>
  /**
   * `pct destroy <vmid>`: removes the golden build container after the dump (or after a failed
   * build). Why here: as for dumpGoldenArchive, the API could do it with VM.Allocate; it stays
   * beside `pct create` so cleanup of a root-created container never depends on the token's ACL.
   */
  readonly destroyGoldenContainer: (vmid: VmId) => Effect.Effect<void, PrivilegedError>
  /**
   * `systemd-mount --collect --options=nosuid,nodev,noexec /dev/disk/by-uuid/<uuid> <mountPoint>`.
   * Why not the API: PVE has no API for mounting an arbitrary host block device; creating a
   * storage on it presumes it is already mounted. systemd-mount makes a transient unit, so the
   * mount is visible to and managed by systemd, and `--collect` unloads the unit if it fails.
   * Runs without `--no-block`, so the exit status reports whether the mount actually happened.
   */
  readonly mountUsbByUuid: (spec: UsbMountSpec) => Effect.Effect<void, PrivilegedError>
  /** `systemd-umount <mountPoint>` for a mount point below USB_MOUNT_ROOT. Same reason as mounting. */
  readonly unmount: (mountPoint: string) => Effect.Effect<void, PrivilegedError>
  /**
   * `pct set <vmid> --mp<N> <hostPath>,mp=<guestPath>,ro=<0|1>,backup=0`: a host directory bind
   * mounted into a guest (the read-only bootstrap config mount, SPEC §12). Why not the API: PVE
   * accepts non-volume (bind) mount points only from root@pam. `backup=0` keeps the host
   * directory out of the guest's backups. The source is refused unless it is below the root-owned
   * bootstrap tree on disk too (UntrustedPath): root resolves it now and at every guest start.
   */
  readonly bindMountIntoGuest: (spec: GuestBindMountSpec) => Effect.Effect<void, PrivilegedError>
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

// ---------------------------------------------------------------------------------------------
// Validation

const invalid = (command: PrivilegedCommand, argument: ArgumentName) =>
  new PrivilegedError({ reason: "InvalidArgument", command, argument, message: ARGUMENT_RULES[argument] })

/** Decodes one argument; the error quotes the argument's rule, never its value. */
const check = <A, I>(command: PrivilegedCommand, argument: ArgumentName, schema: Schema.Schema<A, I>) =>
(value: unknown): Effect.Effect<A, PrivilegedError> =>
  Schema.decodeUnknown(schema)(value).pipe(Effect.mapError(() => invalid(command, argument)))

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

const make = Effect.gen(function*() {
  const executor = yield* CommandExecutor.CommandExecutor
  const config = (yield* AgentConfig).file.privileged
  const timeout = Duration.seconds(config.timeout_seconds)
  const BootstrapHostPath = bootstrapHostPathUnder(config.bootstrap_root)
  const trustedBootstrapPath = trustedTree("pct", "hostPath", config.bootstrap_root)

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
  const run = (name: PrivilegedCommand, args: ReadonlyArray<string>): Effect.Effect<Completed, PrivilegedError> => {
    const binary = binaryOf(name)
    const [exe, argv] = config.mode === "sudo"
      ? [config.sudo_path, ["-n", binary, ...args]] as const
      : [binary, args] as const
    const command = Command.make(exe, ...argv).pipe(
      Command.env(CHILD_ENV, { extendEnv: false }),
      Command.stdin(Stream.empty)
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
          const outcome = yield* Effect.timeoutOption(finished, timeout)
          const c = yield* Ref.get(captured)
          if (Option.isNone(outcome)) {
            const fate = (yield* Ref.get(stuck)) ? "survived SIGKILL" : "was terminated"
            return yield* fail("Timeout", `timed out after ${config.timeout_seconds} s and ${fate}`, c)
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
  const runOk = (name: PrivilegedCommand, args: ReadonlyArray<string>) =>
    Effect.flatMap(run(name, args), (r) => (r.exitCode === 0 ? Effect.succeed(r) : Effect.fail(nonZero(name, r))))

  const nonZero = (name: PrivilegedCommand, r: Completed) => {
    const hint = config.mode === "sudo" && r.exitCode === 1 && r.stderrTail.includes("a password is required")
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
      String(vmid), "--storage", storage, "--mode", "stop", "--compress", "zstd", "--remove", "0"
    ])
    return archiveOf(storage, `${r.stdout}\n${r.stderrTail}`)
  })

  const destroyGoldenContainer = Effect.fn("Privileged.destroyGoldenContainer")(function*(vmid: VmId) {
    const id = yield* check("pct", "vmid", VmId)(vmid)
    yield* runOk("pct", ["destroy", String(id)])
  })

  const mountUsbByUuid = Effect.fn("Privileged.mountUsbByUuid")(function*(spec: UsbMountSpec) {
    const uuid = yield* check("systemd-mount", "uuid", FsUuid)(spec.uuid)
    const mountPoint = yield* check("systemd-mount", "mountPoint", UsbMountPoint)(spec.mountPoint)
    yield* runOk("systemd-mount", [
      "--collect", "--options=nosuid,nodev,noexec", `/dev/disk/by-uuid/${uuid}`, mountPoint
    ])
  })

  const unmount = Effect.fn("Privileged.unmount")(function*(mountPoint: string) {
    const mp = yield* check("systemd-umount", "mountPoint", UsbMountPoint)(mountPoint)
    yield* runOk("systemd-umount", [mp])
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

  return Privileged.of({
    createGoldenContainer,
    dumpGoldenArchive,
    destroyGoldenContainer,
    mountUsbByUuid,
    unmount,
    bindMountIntoGuest,
    smart,
    sensors
  })
})

/** The fence: this layer may need a process executor and config, never an HTTP client. */
export const PrivilegedLive = Layer.effect(Privileged, make).pipe(
  Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>()
)

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
