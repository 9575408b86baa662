/**
 * The Privileged layer against real fake executables: small sh scripts written per test into a
 * temp dir that record their argv (NUL-separated, so any byte but NUL survives) and environment,
 * then print canned output and exit with a canned status. Direct mode points
 * privileged.commands at them; sudo mode adds a fake sudo that records its own argv and execs
 * the rest (fixtures in privileged-support.ts). Nothing here needs root, except the tests that
 * need a root-owned bootstrap tree and the sudoers-matching test, which skip without it.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { spawnSync } from "node:child_process"
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { join } from "node:path"
import {
  CHILD_ENV,
  DEFAULT_BOOTSTRAP_ROOT,
  DEFAULT_COMMAND_PATHS,
  type PrivilegedShape,
  STDERR_TAIL_BYTES,
  STDOUT_CAP_BYTES
} from "../src/layers/Privileged.js"
import type { PrivilegedCommand } from "../src/schema/config.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import type { PrivilegedError } from "../src/schema/privileged.js"
import {
  ALL,
  type Bin,
  expectError,
  expectValue,
  hasVisudo,
  isRoot,
  type LayerOptions,
  makeBinDir,
  makeSudoSandbox,
  makeTrustedTree,
  shq,
  SUDOERS,
  withPriv as withPrivIn
} from "./privileged-support.js"

// ---------------------------------------------------------------------------------------------
// Fixtures

/**
 * Bind-mount sources must be below a root-owned tree on disk; only root can make one, so the
 * tests that run a bind mount skip without root (the validation cases do not need it).
 */
const tree = isRoot ? makeTrustedTree("101/data") : undefined
afterAll(() => tree?.cleanup())
const BOOT = tree?.root ?? DEFAULT_BOOTSTRAP_ROOT

const withPriv = <A>(
  bin: Bin,
  f: (p: PrivilegedShape) => Effect.Effect<A, PrivilegedError>,
  extra?: LayerOptions
) => withPrivIn(bin, f, { bootstrap_root: BOOT, ...extra })


const vmid = VmId.make(9000)
const golden = {
  vmid,
  ostemplate: VolumeId.make("local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"),
  storage: StorageId.make("local-lvm"),
  hostname: "golden-base",
  memory: 1024,
  cores: 2,
  rootfsGiB: 8
}
const goldenArgs = [
  "create", "9000", "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
  "--features", "keyctl=1,nesting=1",
  "--unprivileged", "1",
  "--hostname", "golden-base",
  "--storage", "local-lvm",
  "--rootfs", "local-lvm:8",
  "--memory", "1024",
  "--cores", "2"
]
const bind = {
  vmid: VmId.make(101),
  mpIndex: 7,
  hostPath: `${BOOT}/101`,
  guestPath: "/etc/felhom-bootstrap",
  readOnly: true
}

// ---------------------------------------------------------------------------------------------
// argv and environment

describe("Privileged: exact argv per operation (direct mode)", () => {
  it.live("createGoldenContainer runs pct create with keyctl+nesting, unprivileged", () => {
    const bin = makeBinDir()
    const pct = bin.fake("pct")
    return withPriv(bin, (p) => p.createGoldenContainer(golden)).pipe(
      Effect.map((r) => {
        expectValue(r)
        expect(bin.argv("pct")).toEqual([pct, ...goldenArgs])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("the child gets only PATH and LC_ALL, never the agent's environment", () => {
    const bin = makeBinDir()
    bin.fake("sensors", { stdout: "{}" })
    process.env["FELHOM_LEAK_CANARY"] = "must-not-leak"
    return withPriv(bin, (p) => p.sensors()).pipe(
      Effect.map((r) => {
        expect(expectValue(r)).toEqual([])
        const env = bin.env("sensors")
        expect(env["PATH"]).toBe(CHILD_ENV["PATH"])
        expect(env["LC_ALL"]).toBe("C")
        expect(env["FELHOM_LEAK_CANARY"]).toBeUndefined()
        expect(env["HOME"]).toBeUndefined()
        // The shell itself may add PWD/SHLVL/_; nothing else may appear.
        expect(Object.keys(env).filter((k) => !["PATH", "LC_ALL", "PWD", "SHLVL", "_"].includes(k))).toEqual([])
      }),
      Effect.ensuring(Effect.sync(() => {
        delete process.env["FELHOM_LEAK_CANARY"]
        bin.cleanup()
      }))
    )
  })

  it.live("dumpGoldenArchive runs vzdump stop/zstd without pruning and reports the archive", () => {
    const bin = makeBinDir()
    const vzdump = bin.fake("vzdump", {
      stderr: [
        "INFO: starting new backup job: vzdump 9000 --storage local --mode stop --compress zstd --remove 0 --prune-backups keep-all=1",
        "INFO: Starting Backup of VM 9000 (lxc)",
        "INFO: creating vzdump archive '/var/lib/vz/dump/vzdump-lxc-9000-2026_01_01-00_00_00.tar.zst'",
        "INFO: Backup job finished successfully",
        ""
      ].join("\n")
    })
    return withPriv(bin, (p) => p.dumpGoldenArchive({ vmid, storage: StorageId.make("local") })).pipe(
      Effect.map((r) => {
        expect(expectValue(r)).toEqual({
          archive: "/var/lib/vz/dump/vzdump-lxc-9000-2026_01_01-00_00_00.tar.zst",
          volumeId: "local:backup/vzdump-lxc-9000-2026_01_01-00_00_00.tar.zst"
        })
        expect(bin.argv("vzdump")).toEqual([
          vzdump, "9000", "--storage", "local", "--mode", "stop", "--compress", "zstd", "--remove", "0", "--prune-backups", "keep-all=1"
        ])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("dumpGoldenArchive without an archive line still succeeds, with nothing reported", () => {
    const bin = makeBinDir()
    bin.fake("vzdump", { stdout: "INFO: done\n" })
    return withPriv(bin, (p) => p.dumpGoldenArchive({ vmid, storage: StorageId.make("local") })).pipe(
      Effect.map((r) => expect(expectValue(r)).toEqual({})),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("destroyGoldenContainer runs pct destroy <vmid>", () => {
    const bin = makeBinDir()
    const pct = bin.fake("pct")
    return withPriv(bin, (p) => p.destroyGoldenContainer(vmid)).pipe(
      Effect.map((r) => {
        expectValue(r)
        expect(bin.argv("pct")).toEqual([pct, "destroy", "9000"])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live.skipIf(!isRoot)("bindMountIntoGuest runs pct set --mpN host,mp=guest,ro=1|0,backup=0 (needs root)", () => {
    const bin = makeBinDir()
    const pct = bin.fake("pct")
    return Effect.gen(function*() {
      expectValue(yield* withPriv(bin, (p) => p.bindMountIntoGuest(bind)))
      expect(bin.argv("pct")).toEqual([
        pct, "set", "101", "--mp7", `${BOOT}/101,mp=/etc/felhom-bootstrap,ro=1,backup=0`
      ])
      expectValue(yield* withPriv(bin, (p) =>
        p.bindMountIntoGuest({ ...bind, mpIndex: 255, hostPath: `${BOOT}/101/data`, readOnly: false })))
      expect(bin.argv("pct")).toEqual([
        pct, "set", "101", "--mp255", `${BOOT}/101/data,mp=/etc/felhom-bootstrap,ro=0,backup=0`
      ])
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("smart runs smartctl --json=c -a /dev/<disk>; sensors runs sensors -j", () => {
    const bin = makeBinDir()
    const smartctl = bin.fake("smartctl", { stdout: "{}" })
    const sensors = bin.fake("sensors", { stdout: "{}" })
    return Effect.gen(function*() {
      expectValue(yield* withPriv(bin, (p) => p.smart("nvme0n1")))
      expect(bin.argv("smartctl")).toEqual([smartctl, "--json=c", "-a", "/dev/nvme0n1"])
      expectValue(yield* withPriv(bin, (p) => p.sensors()))
      expect(bin.argv("sensors")).toEqual([sensors, "-j"])
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("stdin is at EOF: a command reading stdin does not hang", () => {
    const bin = makeBinDir()
    bin.fake("sensors", { script: "cat >/dev/null", stdout: "{}" })
    return withPriv(bin, (p) => p.sensors(), { timeout_seconds: 5 }).pipe(
      Effect.map((r) => expect(expectValue(r)).toEqual([])),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })
})

describe("Privileged: sudo mode", () => {
  it.live("runs sudo -n <absolute binary> <args>, and the binary sees the same argv", () => {
    const bin = makeBinDir()
    const sudo = bin.fakeSudo()
    const pct = bin.fake("pct")
    return withPriv(bin, (p) => p.createGoldenContainer(golden), { mode: "sudo", sudo_path: sudo }).pipe(
      Effect.map((r) => {
        expectValue(r)
        expect(bin.argv("sudo")).toEqual([sudo, "-n", pct, ...goldenArgs])
        expect(bin.argv("pct")).toEqual([pct, ...goldenArgs])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("a sudoers refusal is a NonZeroExit that points at the sudoers drop-in", () => {
    const bin = makeBinDir()
    const sudo = bin.fakeSudo({ stderr: "sudo: a password is required\n", exit: 1 })
    bin.fake("pct")
    return withPriv(bin, (p) => p.destroyGoldenContainer(vmid), { mode: "sudo", sudo_path: sudo }).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        expect(e.reason).toBe("NonZeroExit")
        expect(e.exitCode).toBe(1)
        expect(e.message).toContain("configs/sudoers/felhom-agent")
        expect(bin.argv("pct")).toBeUndefined()
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("default binary paths are the PVE 8 locations named in the sudoers file", () => {
    const sudoers = readFileSync(join(__dirname, "..", "configs", "sudoers", "felhom-agent"), "utf8")
    expect(DEFAULT_COMMAND_PATHS).toEqual({
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
      pveum: "/usr/sbin/pveum",
      "felhom-update": "/usr/local/libexec/felhom-agent/felhom-update",
      "felhom-cloudflared": "/usr/local/libexec/felhom-agent/felhom-cloudflared"
    })
    // pveum is enroll's, run as root: the service user may never create roles, users or tokens
    for (const [name, path] of Object.entries(DEFAULT_COMMAND_PATHS)) {
      if (name === "pveum") expect(sudoers).not.toContain(path)
      else expect(sudoers).toContain(`    ${path} ^`)
    }
    return Effect.void
  })
})

// ---------------------------------------------------------------------------------------------
// Validation: nothing is spawned for a bad argument

describe("Privileged: invalid arguments never spawn", () => {
  const cases: ReadonlyArray<readonly [string, string, (p: PrivilegedShape) => Effect.Effect<unknown, PrivilegedError>]> = [
    ["vmid", "vmid below 100", (p) => p.destroyGoldenContainer(99 as VmId)],
    ["vmid", "vmid not an integer", (p) => p.createGoldenContainer({ ...golden, vmid: 100.5 as VmId })],
    ["vmid", "vmid as a string with an option", (p) => p.destroyGoldenContainer("100 --purge" as unknown as VmId)],
    ["hostname", "command substitution in hostname", (p) => p.createGoldenContainer({ ...golden, hostname: "$(touch MARKER)" })],
    ["hostname", "option injection in hostname", (p) => p.createGoldenContainer({ ...golden, hostname: "-x" })],
    ["hostname", "space in hostname", (p) => p.createGoldenContainer({ ...golden, hostname: "a --net0 b" })],
    ["ostemplate", "a backup instead of a template", (p) =>
      p.createGoldenContainer({ ...golden, ostemplate: VolumeId.make("local:backup/vzdump-lxc-1.tar.zst") })],
    ["ostemplate", "a template path escaping vztmpl/", (p) =>
      p.createGoldenContainer({ ...golden, ostemplate: "local:vztmpl/../../etc/x" as VolumeId })],
    ["storage", "storage with a comma", (p) => p.createGoldenContainer({ ...golden, storage: "local,size=1" as StorageId })],
    ["memory", "memory below 16 MiB", (p) => p.createGoldenContainer({ ...golden, memory: 8 })],
    ["cores", "fractional cores", (p) => p.createGoldenContainer({ ...golden, cores: 1.5 })],
    ["rootfsGiB", "zero rootfs", (p) => p.createGoldenContainer({ ...golden, rootfsGiB: 0 })],
    ["storage", "bad vzdump storage", (p) => p.dumpGoldenArchive({ vmid, storage: "-all" as StorageId })],
    ["uuid", "uuid with a path", (p) => p.mountUsb({ targetId: "usb", uuid: "../../sda1" })],
    ["uuid", "uuid of the wrong length", (p) => p.mountUsb({ targetId: "usb", uuid: "ABCD-12345" })],
    ["targetId", "target id escaping the mount root", (p) => p.mountUsb({ targetId: "../etc", uuid: "ABCD-1234" })],
    ["targetId", "nested target id", (p) => p.mountUsb({ targetId: "a/b", uuid: "ABCD-1234" })],
    ["targetId", "empty target id (the mount root itself)", (p) => p.unmountUsb("")],
    ["targetId", "newline in target id", (p) => p.unmountUsb("usb\n/etc")],
    ["targetId", "NUL in target id", (p) => p.unmountUsb("usb\0")],
    ["fsType", "fsType with extra options", (p) => p.mountUsb({ targetId: "usb", uuid: "ABCD-1234", fsType: "ext4,loop" as "ext4" })],
    ["archivePath", "an archive path outside every storage", (p) => p.verifyArchive("/etc/shadow")],
    ["hostPath", "host path outside the bootstrap root", (p) => p.bindMountIntoGuest({ ...bind, hostPath: "/etc" })],
    ["hostPath", "host path under the state dir (the old bootstrap location)", (p) =>
      p.bindMountIntoGuest({ ...bind, hostPath: "/var/lib/felhom-agent/bootstrap/101" })],
    ["hostPath", "host path with ..", (p) => p.bindMountIntoGuest({ ...bind, hostPath: `${BOOT}/../../../../etc` })],
    ["hostPath", "host path with a comma (pct property injection)", (p) =>
      p.bindMountIntoGuest({ ...bind, hostPath: `${BOOT}/x,mp=/root` })],
    ["hostPath", "host path that is the root itself", (p) => p.bindMountIntoGuest({ ...bind, hostPath: BOOT })],
    ["hostPath", "host path with a double slash", (p) => p.bindMountIntoGuest({ ...bind, hostPath: `${BOOT}//x` })],
    ["hostPath", "host path with a trailing slash", (p) => p.bindMountIntoGuest({ ...bind, hostPath: `${BOOT}/101/` })],
    ["hostPath", "host path sharing only a string prefix with the root", (p) =>
      p.bindMountIntoGuest({ ...bind, hostPath: `${BOOT}-evil/101` })],
    ["guestPath", "guest path '/'", (p) => p.bindMountIntoGuest({ ...bind, guestPath: "/" })],
    ["guestPath", "relative guest path", (p) => p.bindMountIntoGuest({ ...bind, guestPath: "etc/x" })],
    ["guestPath", "guest path with '=' (pct property injection)", (p) =>
      p.bindMountIntoGuest({ ...bind, guestPath: "/etc/x,ro=0" })],
    ["guestPath", "guest path with a dash-led component", (p) => p.bindMountIntoGuest({ ...bind, guestPath: "/-x" })],
    ["mpIndex", "mp index 256", (p) => p.bindMountIntoGuest({ ...bind, mpIndex: 256 })],
    ["mpIndex", "negative mp index", (p) => p.bindMountIntoGuest({ ...bind, mpIndex: -1 })],
    ["readOnly", "readOnly not a boolean", (p) => p.bindMountIntoGuest({ ...bind, readOnly: "yes" as unknown as boolean })],
    ["device", "device with /dev/", (p) => p.smart("/dev/sda")],
    ["device", "device path traversal", (p) => p.smart("../sda")],
    ["device", "a partition", (p) => p.smart("sda1")],
    ["device", "option injection in device", (p) => p.smart("-d")]
  ]

  for (const [argument, label, run] of cases) {
    it.live(`${label} → InvalidArgument(${argument}), nothing spawned`, () => {
      const bin = makeBinDir()
      for (const c of ALL) bin.fake(c)
      const sudo = bin.fakeSudo()
      const marker = join(bin.dir, "MARKER")
      // Swap in the real marker path, so a shell (if one were involved) would create it.
      const runWithMarker = (p: PrivilegedShape) =>
        run({
          ...p,
          createGoldenContainer: (spec) =>
            p.createGoldenContainer({ ...spec, hostname: spec.hostname.replace("MARKER", marker) })
        })
      return Effect.gen(function*() {
        for (const mode of ["direct", "sudo"] as const) {
          const e = expectError(yield* withPriv(bin, runWithMarker, { mode, sudo_path: sudo }))
          expect(e.reason).toBe("InvalidArgument")
          expect(e.argument).toBe(argument)
          expect(e.message.length).toBeGreaterThan(0)
        }
        expect(bin.recorded()).toEqual([])
        expect(existsSync(marker)).toBe(false)
      }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
    })
  }

  it.live("error messages state the rule and never echo the rejected value", () => {
    const bin = makeBinDir()
    return withPriv(bin, (p) => p.createGoldenContainer({ ...golden, hostname: "secret-looking$value" })).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        expect(e.message).toContain("hostname must be")
        expect(e.message).not.toContain("secret-looking")
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })
})

describe("Privileged: no shell anywhere", () => {
  it.live("a binary path full of shell syntax is executed literally, in direct and sudo mode", () => {
    const bin = makeBinDir()
    const marker = join(bin.root, "pwned")
    // The directory name is valid for spawn but would run `touch` and split on spaces in a shell.
    const evil = makeBinDir(`x $(touch ${marker}) \`touch ${marker}\` ; touch ${marker} |`)
    const sensors = evil.fake("sensors", { stdout: "{}" })
    const sudo = evil.fakeSudo()
    return Effect.gen(function*() {
      expectValue(yield* withPriv(evil, (p) => p.sensors()))
      expect(evil.argv("sensors")).toEqual([sensors, "-j"])
      expectValue(yield* withPriv(evil, (p) => p.sensors(), { mode: "sudo", sudo_path: sudo }))
      expect(evil.argv("sudo")).toEqual([sudo, "-n", sensors, "-j"])
      expect(existsSync(marker)).toBe(false)
      expect(readdirSync(bin.root).filter((f) => f === "pwned")).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      evil.cleanup()
    })))
  })
})

// ---------------------------------------------------------------------------------------------
// Failures: exit status, spawn, timeout, caps

describe("Privileged: failures", () => {
  it.live("a non-zero exit is NonZeroExit with the exit code and the stderr tail", () => {
    const bin = makeBinDir()
    bin.fake("pct", { stderr: "unable to create CT 9000 - storage 'local-lvm' does not exist\n", exit: 255 })
    return withPriv(bin, (p) => p.createGoldenContainer(golden)).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        expect(e.reason).toBe("NonZeroExit")
        expect(e.command).toBe("pct")
        expect(e.exitCode).toBe(255)
        expect(e.stderrTail).toContain("storage 'local-lvm' does not exist")
        // argv values stay out of the message
        expect(e.message).not.toContain("golden-base")
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("a missing binary is SpawnFailed, and the message carries no argv", () => {
    const bin = makeBinDir()
    return withPriv(bin, (p) => p.createGoldenContainer(golden)).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        expect(e.reason).toBe("SpawnFailed")
        expect(e.message).toContain("NotFound")
        expect(e.message).not.toContain("golden-base")
        expect(e.message).not.toContain("keyctl")
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("a command that outlives the timeout is killed, with its whole process group", () => {
    const bin = makeBinDir()
    const childPid = join(bin.dir, "child.pid")
    // The fake starts a grandchild and waits on it: both must die.
    bin.fake("vzdump", {
      script: `echo 'INFO: starting' >&2\nsleep 30 &\necho $! > ${shq(childPid)}\nwait`
    })
    const started = Date.now()
    return withPriv(bin, (p) => p.dumpGoldenArchive({ vmid, storage: StorageId.make("local") }), { timeout_seconds: 1 })
      .pipe(
        Effect.map((r) => {
          const elapsed = Date.now() - started
          const e = expectError(r)
          expect(e.reason).toBe("Timeout")
          expect(e.stderrTail).toContain("INFO: starting")
          expect(elapsed).toBeLessThan(2500)
          const pid = Number(readFileSync(childPid, "utf8").trim())
          expect(isAlive(pid)).toBe(false)
        }),
        Effect.ensuring(Effect.sync(bin.cleanup))
      )
  })

  it.live("interrupting the caller terminates the running command", () => {
    const bin = makeBinDir()
    const childPid = join(bin.dir, "child.pid")
    bin.fake("pct", { script: `sleep 30 &\necho $! > ${shq(childPid)}\nwait` })
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(withPriv(bin, (p) => p.destroyGoldenContainer(vmid)))
      // wait (really) until the grandchild exists, then interrupt
      yield* Effect.sleep("50 millis").pipe(Effect.repeat({ until: () => existsSync(childPid) }))
      yield* Effect.sleep("50 millis")
      yield* Fiber.interrupt(fiber)
      const pid = Number(readFileSync(childPid, "utf8").trim())
      // The group got SIGTERM before interrupt returned; on a loaded machine the grandchild may
      // take a moment to act on it, so allow it two seconds (it would sleep for 30).
      yield* Effect.sleep("20 millis").pipe(Effect.repeat({ until: () => !isAlive(pid) }), Effect.timeout("2 seconds"), Effect.ignore)
      expect(isAlive(pid)).toBe(false)
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("stderr is kept as a bounded tail", () => {
    const bin = makeBinDir()
    const noise = "x".repeat(100 * 1024)
    bin.fake("pct", { stderr: `${noise}\nEND-OF-STDERR\n`, exit: 2 })
    return withPriv(bin, (p) => p.destroyGoldenContainer(vmid)).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        const tail = e.stderrTail ?? ""
        expect(tail.startsWith("…")).toBe(true)
        expect(Buffer.byteLength(tail.slice(1))).toBeLessThanOrEqual(STDERR_TAIL_BYTES)
        expect(tail.endsWith("END-OF-STDERR\n")).toBe(true)
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("stdout past the cap is dropped (the process still completes) and reported as Decode", () => {
    const bin = makeBinDir()
    bin.fake("sensors", { script: `head -c ${STDOUT_CAP_BYTES * 3} /dev/zero | tr '\\0' ' '\necho '{}'` })
    return withPriv(bin, (p) => p.sensors()).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        expect(e.reason).toBe("Decode")
        expect(e.message).toContain(`exceeded ${STDOUT_CAP_BYTES} bytes`)
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })
})

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  // A zombie still answers kill(0); it is dead for our purposes.
  const stat = existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, "utf8") : ""
  return !/^\d+ \(.*\) Z/.test(stat)
}

// ---------------------------------------------------------------------------------------------
// Hardware decoding

const smartJson = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    json_format_version: [1, 0],
    smartctl: { version: [7, 3], exit_status: 0 },
    device: { name: "/dev/sda", info_name: "/dev/sda [SAT]", type: "sat", protocol: "ATA" },
    model_name: "Samsung SSD 870 EVO 1TB",
    serial_number: "S6PTNX0T123456A",
    smart_status: { passed: true },
    temperature: { current: 31 },
    power_on_time: { hours: 12345 },
    ata_smart_attributes: { revision: 1, table: [] },
    ...extra
  })

describe("Privileged: smartctl", () => {
  it.live("decodes model, serial, passed, temperature and power-on hours", () => {
    const bin = makeBinDir()
    bin.fake("smartctl", { stdout: smartJson() })
    return withPriv(bin, (p) => p.smart("sda")).pipe(
      Effect.map((r) =>
        expect(expectValue(r)).toEqual({
          device: "sda",
          exitStatus: 0,
          findings: [],
          model: "Samsung SSD 870 EVO 1TB",
          serial: "S6PTNX0T123456A",
          passed: true,
          temperatureC: 31,
          powerOnHours: 12345
        })
      ),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("exit status bits 2-7 are findings, not errors", () => {
    const bin = makeBinDir()
    bin.fake("smartctl", { stdout: smartJson({ smart_status: { passed: false } }), exit: 4 | 8 | 64 })
    return withPriv(bin, (p) => p.smart("sdb")).pipe(
      Effect.map((r) => {
        const report = expectValue(r)
        expect(report.exitStatus).toBe(76)
        expect(report.findings).toEqual(["SmartCommandFailed", "DiskFailing", "ErrorLogHasRecords"])
        expect(report.passed).toBe(false)
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  for (const status of [1, 2, 2 | 64]) {
    it.live(`exit status ${status} (bit 0 or 1 set) is NonZeroExit`, () => {
      const bin = makeBinDir()
      bin.fake("smartctl", {
        stdout: JSON.stringify({ smartctl: { exit_status: status, messages: [{ string: "open failed", severity: "error" }] } }),
        stderr: "Smartctl open device: /dev/sdc failed: No such device\n",
        exit: status
      })
      return withPriv(bin, (p) => p.smart("sdc")).pipe(
        Effect.map((r) => {
          const e = expectError(r)
          expect(e.reason).toBe("NonZeroExit")
          expect(e.exitCode).toBe(status)
          expect(e.stderrTail).toContain("No such device")
        }),
        Effect.ensuring(Effect.sync(bin.cleanup))
      )
    })
  }

  it.live("fields that are missing or of an unexpected type are left out", () => {
    const bin = makeBinDir()
    bin.fake("smartctl", {
      stdout: JSON.stringify({
        model_name: 42,
        serial_number: "X1",
        smart_status: "passed",
        temperature: { current: "hot" },
        power_on_time: null
      })
    })
    return withPriv(bin, (p) => p.smart("nvme1n1")).pipe(
      Effect.map((r) =>
        expect(expectValue(r)).toEqual({ device: "nvme1n1", exitStatus: 0, findings: [], serial: "X1" })
      ),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("output that is not a JSON object is a Decode error", () => {
    const bin = makeBinDir()
    bin.fake("smartctl", { stdout: "smartctl 7.3 2022-02-28 r5338 [x86_64-linux] (local build)\n" })
    return Effect.gen(function*() {
      const e = expectError(yield* withPriv(bin, (p) => p.smart("sda")))
      expect(e.reason).toBe("Decode")
      bin.fake("smartctl", { stdout: "[1,2]" })
      expect(expectError(yield* withPriv(bin, (p) => p.smart("sda"))).reason).toBe("Decode")
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })
})

const sensorsJson = JSON.stringify({
  "coretemp-isa-0000": {
    Adapter: "ISA adapter",
    "Package id 0": { temp1_input: 45.0, temp1_max: 80.0, temp1_crit: 100.0, temp1_crit_alarm: 0.0 },
    "Core 0": { temp2_input: 42.0, temp2_max: 80.0, temp2_crit: 100.0, temp2_crit_alarm: 1.0 }
  },
  "nvme-pci-0100": {
    Adapter: "PCI adapter",
    Composite: { temp1_input: 38.85, temp1_max: 81.85, temp1_min: -273.15, temp1_crit: 84.85, temp1_alarm: 0.0 }
  },
  "nct6798-isa-0290": {
    Adapter: "ISA adapter",
    in0: { in0_input: 0.352, in0_min: 0.0, in0_max: 1.744, in0_alarm: 0.0 },
    fan2: { fan2_input: 1205.0, fan2_min: 0.0, fan2_alarm: 0.0 },
    intrusion0: { intrusion0_alarm: 1.0 }
  },
  "power_meter-acpi-0": { Adapter: "ACPI interface", power1: { power1_average: 98.5 } },
  "broken-chip": "not an object"
})

describe("Privileged: sensors", () => {
  it.live("decodes sensors -j into typed readings", () => {
    const bin = makeBinDir()
    bin.fake("sensors", { stdout: sensorsJson })
    return withPriv(bin, (p) => p.sensors()).pipe(
      Effect.map((r) =>
        expect(expectValue(r)).toEqual([
          {
            chip: "coretemp-isa-0000",
            adapter: "ISA adapter",
            label: "Package id 0",
            kind: "temperature",
            input: 45,
            max: 80,
            crit: 100
          },
          {
            chip: "coretemp-isa-0000",
            adapter: "ISA adapter",
            label: "Core 0",
            kind: "temperature",
            input: 42,
            max: 80,
            crit: 100
          },
          {
            chip: "nvme-pci-0100",
            adapter: "PCI adapter",
            label: "Composite",
            kind: "temperature",
            input: 38.85,
            min: -273.15,
            max: 81.85,
            crit: 84.85,
            alarm: false
          },
          {
            chip: "nct6798-isa-0290",
            adapter: "ISA adapter",
            label: "in0",
            kind: "voltage",
            input: 0.352,
            min: 0,
            max: 1.744,
            alarm: false
          },
          { chip: "nct6798-isa-0290", adapter: "ISA adapter", label: "fan2", kind: "fan", input: 1205, min: 0, alarm: false },
          { chip: "power_meter-acpi-0", adapter: "ACPI interface", label: "power1", kind: "power", input: 98.5 }
        ])
      ),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("a host without sensors is an empty list; other failures are NonZeroExit", () => {
    const bin = makeBinDir()
    bin.fake("sensors", {
      stderr: "No sensors found!\nMake sure you loaded all the kernel drivers you need.\nTry sensors-detect to find out which these are.\n",
      exit: 1
    })
    return Effect.gen(function*() {
      expect(expectValue(yield* withPriv(bin, (p) => p.sensors()))).toEqual([])
      bin.fake("sensors", { stderr: "Error: File /etc/sensors3.conf, line 12: parse error\n", exit: 1 })
      const e = expectError(yield* withPriv(bin, (p) => p.sensors()))
      expect(e.reason).toBe("NonZeroExit")
      expect(e.stderrTail).toContain("parse error")
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("invalid JSON is a Decode error", () => {
    const bin = makeBinDir()
    bin.fake("sensors", { stdout: `{"coretemp-isa-0000":{"Adapter": "ISA adapter",}` })
    return withPriv(bin, (p) => p.sensors()).pipe(
      Effect.map((r) => expect(expectError(r).reason).toBe("Decode")),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })
})

// ---------------------------------------------------------------------------------------------
// The sudoers drop-in

describe("configs/sudoers/felhom-agent", () => {
  // CI images may lack sudo entirely; `apt-get install sudo` makes this run.
  it.skipIf(!hasVisudo)("passes visudo -cf (skipped only when visudo is not installed)", () => {
    const r = spawnSync("visudo", ["-cf", SUDOERS], { encoding: "utf8" })
    expect(r.stderr + r.stdout).toContain("parsed OK")
    expect(r.status).toBe(0)
  })

  /**
   * Checks the argv the layer really produces against the real sudoers rules with
   * `sudo -l -U felhom-agent <argv>`, inside a private mount namespace where the drop-in is bound
   * over /etc/sudoers (with a felhom-agent user) and stub binaries are overlaid at the default
   * paths. Needs root, unshare and overlayfs; skipped elsewhere, since it cannot run unprivileged.
   */
  const sandbox = makeSudoSandbox()
  it.live.skipIf(sandbox === undefined)("allows exactly the argv the layer produces (needs root + unshare)", () => {
    if (sandbox === undefined) return Effect.void
    const bin = makeBinDir()
    for (const c of ALL) bin.fake(c, { stdout: "{}" })
    const sudo = bin.fakeSudo()
    const ops: ReadonlyArray<readonly [PrivilegedCommand, (p: PrivilegedShape) => Effect.Effect<unknown, PrivilegedError>]> = [
      ["pct", (p) => p.createGoldenContainer(golden)],
      ["vzdump", (p) => p.dumpGoldenArchive({ vmid, storage: StorageId.make("local") })],
      ["pct", (p) => p.destroyGoldenContainer(vmid)],
      ["pct", (p) => p.bindMountIntoGuest(bind)],
      ["pct", (p) => p.bindMountIntoGuest({ ...bind, mpIndex: 0, readOnly: false })],
      ["smartctl", (p) => p.smart("sda")],
      ["smartctl", (p) => p.smart("nvme10n1")],
      ["sensors", (p) => p.sensors()]
    ]
    return Effect.gen(function*() {
      for (const [name, op] of ops) {
        rmSync(join(bin.dir, "sudo.argv"), { force: true })
        expectValue(yield* withPriv(bin, op, { mode: "sudo", sudo_path: sudo }))
        const argv = bin.argv("sudo") ?? []
        // [fake sudo, -n, <fake dir>/<name>, ...args] → the production binary with the same args,
        // the scratch bootstrap tree standing for the default one the sudoers rule names
        const args = argv.slice(3).map((a) => a.replace(`${BOOT}/`, `${DEFAULT_BOOTSTRAP_ROOT}/`))
        expect(argv[2]).toBe(join(bin.dir, name))
        expect(sandbox.allows([DEFAULT_COMMAND_PATHS[name], ...args]), args.join(" ")).toBe(true)
      }
      // And a few things the agent would never produce are refused.
      for (const denied of [
        ["/usr/sbin/pct", "exec", "9000", "--", "sh"],
        ["/usr/sbin/pct", "destroy", "9000", "--purge"],
        ["/usr/sbin/pct", "set", "101", "--mp0", "/etc,mp=/mnt/etc,ro=0,backup=0"],
        ["/usr/sbin/pct", "set", "101", "--mp0", `${DEFAULT_BOOTSTRAP_ROOT}/../../../etc,mp=/x,ro=0,backup=0`],
        ["/usr/sbin/pct", ...goldenArgs.map((a) => (a === "golden-base" ? "golden --net0 name=eth0" : a))],
        ["/usr/bin/vzdump", "--all"],
        ["/usr/bin/systemd-mount", "/dev/sda1", "/mnt/felhom/usb"],
        ["/usr/bin/systemd-umount", "/"],
        ["/usr/sbin/smartctl", "--json=c", "-a", "/dev/sda", "-s", "off"],
        ["/usr/bin/sensors", "-s"],
        ["/bin/sh"]
      ]) {
        expect(sandbox.allows(denied), denied.join(" ")).toBe(false)
      }
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  /**
   * Issue 8, finding 7: the service user owns the state dir, so it could swap a root-owned
   * `<state>/bootstrap` for a symlink to `/`; the rule used to allow exactly that source.
   */
  it.live.skipIf(sandbox === undefined)("the bind-mount rule matches only the root-owned bootstrap tree (needs root + unshare)", () => {
    if (sandbox === undefined) return Effect.void
    const pctSet = (source: string) => ["/usr/sbin/pct", "set", "101", "--mp0", `${source},mp=/etc/felhom-bootstrap,ro=1,backup=0`]
    for (const source of [
      "/var/lib/felhom-agent/bootstrap/etc", // the finding's argv: bootstrap -> / makes this /etc
      "/var/lib/felhom-agent/bootstrap/101",
      "/var/lib/felhom-agent/101",
      DEFAULT_BOOTSTRAP_ROOT, // the root itself: one directory per guest, never all of them
      `${DEFAULT_BOOTSTRAP_ROOT}-x/101`,
      `${DEFAULT_BOOTSTRAP_ROOT}/./101`,
      `${DEFAULT_BOOTSTRAP_ROOT}//101`,
      `${DEFAULT_BOOTSTRAP_ROOT}/.x`,
      `${DEFAULT_BOOTSTRAP_ROOT}/101/`
    ]) {
      expect(sandbox.allows(pctSet(source)), source).toBe(false)
    }
    expect(sandbox.allows(pctSet("/var/lib/felhom-agent-root/bootstrap/101"))).toBe(true)
    return Effect.void
  })

  it("names the bootstrap tree in the pct set rule, and nothing under the state dir", () => {
    const rules = readFileSync(SUDOERS, "utf8").split("\n").filter((l) => !l.startsWith("#"))
    const mp = rules.filter((l) => l.includes("--mp"))
    expect(mp).toHaveLength(1)
    expect(mp[0]).toContain(` ${DEFAULT_BOOTSTRAP_ROOT}(/[A-Za-z0-9_][A-Za-z0-9._-]*)+,mp=`)
    expect(rules.join("\n")).not.toContain("/var/lib/felhom-agent/")
  })
  afterAll(() => sandbox?.cleanup())
})

// ---------------------------------------------------------------------------------------------
// Controller bootstrap files (issue 11): the helper's and the unplug's argv, golden and sudoers

describe("Privileged: bootstrap files and unplug, exact argv (issue 11)", () => {
  /** A fake felhom-bootstrap answering like the real one (`written <name>` / `removed <vmid>`). */
  const fakeBootstrap = (bin: Bin) =>
    bin.fake("felhom-bootstrap", {
      script: `cat >/dev/null; if [ "$1" = write ]; then printf 'written %s\\n' "$4"; else printf 'removed %s\\n' "$3"; fi`
    })

  it.live.skipIf(!isRoot)("writeBootstrap: one `write <root> <vmid> <name>` per file; removeBootstrap: `remove <root> <vmid>` (needs root)", () => {
    const bin = makeBinDir()
    const helper = fakeBootstrap(bin)
    return Effect.gen(function*() {
      expectValue(yield* withPriv(bin, (p) =>
        p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "controller.json", content: "{}" }, { name: "local-token", content: "t" }] }), {
        commands: { "felhom-bootstrap": helper }
      }))
      expect(bin.argv("felhom-bootstrap")).toEqual([helper, "write", BOOT, "101", "local-token"])
      expect(expectValue(yield* withPriv(bin, (p) => p.removeBootstrap(VmId.make(101)), { commands: { "felhom-bootstrap": helper } })))
        .toEqual({ removed: true })
      expect(bin.argv("felhom-bootstrap")).toEqual([helper, "remove", BOOT, "101"])
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live.skipIf(!isRoot)("a helper answering for another name or vmid is a Decode error (needs root)", () => {
    const bin = makeBinDir()
    const helper = bin.fake("felhom-bootstrap", { stdout: "written controller.json\n" })
    return Effect.gen(function*() {
      const e = expectError(yield* withPriv(bin, (p) =>
        p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "local-token", content: "t" }] }), { commands: { "felhom-bootstrap": helper } }))
      expect(e.reason).toBe("Decode")
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("unbindFromGuest runs pct set <vmid> --delete mp<N>", () => {
    const bin = makeBinDir()
    const pct = bin.fake("pct")
    return withPriv(bin, (p) => p.unbindFromGuest({ vmid: VmId.make(101), mpIndex: 255 })).pipe(
      Effect.map((r) => {
        expectValue(r)
        expect(bin.argv("pct")).toEqual([pct, "set", "101", "--delete", "mp255"])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  const sandbox = makeSudoSandbox()
  it.live.skipIf(sandbox === undefined || !isRoot)("sudoers allows exactly the argv the layer produces for them (needs root + unshare)", () => {
    if (sandbox === undefined) return Effect.void
    const bin = makeBinDir()
    const helper = fakeBootstrap(bin)
    bin.fake("pct")
    const sudo = bin.fakeSudo()
    const ops: ReadonlyArray<readonly [PrivilegedCommand, (p: PrivilegedShape) => Effect.Effect<unknown, PrivilegedError>]> = [
      ["felhom-bootstrap", (p) => p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "controller.json", content: "{}" }] })],
      ["felhom-bootstrap", (p) => p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "local-token", content: "t" }] })],
      ["felhom-bootstrap", (p) => p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "registry-password", content: "p" }] })],
      ["felhom-bootstrap", (p) => p.removeBootstrap(VmId.make(999999999))],
      ["pct", (p) => p.unbindFromGuest({ vmid: VmId.make(101), mpIndex: 0 })],
      ["pct", (p) => p.unbindFromGuest({ vmid: VmId.make(100), mpIndex: 255 })]
    ]
    return Effect.gen(function*() {
      for (const [name, op] of ops) {
        rmSync(join(bin.dir, "sudo.argv"), { force: true })
        expectValue(yield* withPriv(bin, op, { mode: "sudo", sudo_path: sudo, commands: { "felhom-bootstrap": helper } }))
        const argv = bin.argv("sudo") ?? []
        const args = argv.slice(3).map((a) => (a === BOOT ? DEFAULT_BOOTSTRAP_ROOT : a))
        expect(argv[2]).toBe(join(bin.dir, name))
        expect(sandbox.allows([DEFAULT_COMMAND_PATHS[name], ...args]), args.join(" ")).toBe(true)
      }
      const helperPath = DEFAULT_COMMAND_PATHS["felhom-bootstrap"]
      for (
        const denied of [
          [helperPath, "write", DEFAULT_BOOTSTRAP_ROOT, "101", "../../etc/shadow"],
          [helperPath, "write", DEFAULT_BOOTSTRAP_ROOT, "101", "other"],
          [helperPath, "write", DEFAULT_BOOTSTRAP_ROOT, "101", "local-token", "extra"],
          [helperPath, "write", "/var/lib/felhom-agent/bootstrap", "101", "local-token"],
          [helperPath, "write", "/etc", "101", "local-token"],
          [helperPath, "write", DEFAULT_BOOTSTRAP_ROOT, "99", "local-token"],
          [helperPath, "write", DEFAULT_BOOTSTRAP_ROOT, "101/../..", "local-token"],
          [helperPath, "remove", DEFAULT_BOOTSTRAP_ROOT, "101", "controller.json"],
          [helperPath, "remove", "/", "101"],
          [helperPath, "write", DEFAULT_BOOTSTRAP_ROOT, "101", "local-token SECRET"],
          ["/usr/sbin/pct", "set", "101", "--delete", "rootfs"],
          ["/usr/sbin/pct", "set", "101", "--delete", "mp256"],
          ["/usr/sbin/pct", "set", "101", "--delete", "mp0,mp1"],
          ["/usr/sbin/pct", "set", "101", "--delete", "mp0", "--mp1", "/etc,mp=/x,ro=0,backup=0"],
          ["/usr/sbin/pct", "set", "101", "--delete", "net0"]
        ]
      ) {
        expect(sandbox.allows(denied), denied.join(" ")).toBe(false)
      }
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })
  afterAll(() => sandbox?.cleanup())
})
