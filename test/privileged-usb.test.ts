/**
 * USB targets through persistent systemd mount units: the real root helper
 * (configs/libexec/felhom-mount-unit, which calls the real systemd-escape) writing into a scratch
 * unit directory, a fake `systemctl` that logs every call, and the child-free state read over a
 * scratch /dev/disk/by-uuid and mountinfo. The on-disk trust checks need a root-owned mount root,
 * so the cases that mount skip without root; so do the ones needing systemd-escape (the helper
 * uses it), and the sudoers case needs root + unshare. Each skip names its reason.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DEFAULT_COMMAND_PATHS, type PrivilegedHostPaths, type PrivilegedShape } from "../src/layers/Privileged.js"
import { escapeSystemdPath, MOUNT_UNIT_MARKER, type PrivilegedError } from "../src/schema/privileged.js"
import {
  type Bin,
  expectError,
  expectValue,
  isRoot,
  type LayerOptions,
  makeBinDir,
  makeSudoSandbox,
  MOUNT_UNIT_HELPER,
  SERVICE_UID,
  shq,
  withPriv as withPrivIn
} from "./privileged-support.js"

const hasEscape = spawnSync("sh", ["-c", "command -v systemd-escape"]).status === 0
const hasAnalyze = spawnSync("sh", ["-c", "command -v systemd-analyze"]).status === 0
const canMount = isRoot && hasEscape

const EXT4 = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
const VFAT = "A1B2-C3D4"

/** A scratch host: root-owned mount root and unit dir (the trust checks pass when we are root). */
const makeHost = () => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-usb-")))
  chmodSync(base, 0o755)
  const paths: PrivilegedHostPaths = {
    usbMountRoot: join(base, "felhom"),
    unitDir: join(base, "units"),
    byUuidDir: join(base, "by-uuid"),
    mountInfo: join(base, "mountinfo")
  }
  for (const d of [paths.usbMountRoot, paths.unitDir, paths.byUuidDir]) {
    mkdirSync(d)
    chmodSync(d, 0o755)
  }
  writeFileSync(paths.mountInfo, "")
  const unitOf = (id: string) => {
    const e = escapeSystemdPath(`${paths.usbMountRoot}/${id}`)
    if (!e.ok) throw new Error("unescapable test path")
    return `${e.name}.mount`
  }
  return { base, paths, unitOf, cleanup: () => rmSync(base, { recursive: true, force: true }) }
}
type Host = ReturnType<typeof makeHost>

/**
 * The fake systemctl: logs its argv; `show` prints `<dir>/systemctl.show` (default "no"); a verb
 * listed in `<dir>/systemctl.fail` exits 1 with a systemd-like message.
 */
const fakeSystemctl = (bin: Bin) =>
  bin.logged(
    "systemctl",
    [
      `d=${shq(bin.dir)}`,
      `if [ -f "$d/systemctl.fail" ] && grep -qx -- "$1" "$d/systemctl.fail"; then`,
      `  echo "Job for $3 failed. See \\"systemctl status $3\\" and \\"journalctl -xeu $3\\" for details." >&2`,
      "  exit 1",
      "fi",
      `if [ "$1" = show ]; then if [ -f "$d/systemctl.show" ]; then cat "$d/systemctl.show"; else echo no; fi; fi`,
      "exit 0"
    ].join("\n")
  )

const withUsb = <A>(
  bin: Bin,
  host: Host,
  f: (p: PrivilegedShape) => Effect.Effect<A, PrivilegedError>,
  extra: LayerOptions = {}
) =>
  withPrivIn(bin, f, {
    ...extra,
    commands: { "felhom-mount-unit": MOUNT_UNIT_HELPER, ...extra.commands },
    paths: { ...host.paths, ...extra.paths }
  })

const unitText = (host: Host, id: string, uuid: string, fsType: string) => {
  const device = escapeSystemdPath(`/dev/disk/by-uuid/${uuid}`)
  if (!device.ok) throw new Error("unescapable device")
  return [
    MOUNT_UNIT_MARKER,
    "[Unit]",
    `Description=felhom-agent USB target ${id}`,
    "JobTimeoutSec=30s",
    "",
    "[Mount]",
    `What=/dev/disk/by-uuid/${uuid}`,
    `Where=${host.paths.usbMountRoot}/${id}`,
    `Type=${fsType}`,
    "Options=nofail,noatime,nosuid,nodev,noexec",
    "",
    "[Install]",
    `WantedBy=multi-user.target ${device.name}.device`,
    ""
  ].join("\n")
}

const leftovers = (host: Host) => readdirSync(host.paths.unitDir).filter((f) => f.startsWith("."))

// ---------------------------------------------------------------------------------------------

describe("mountUsb: a persistent mount unit, written atomically and idempotently", () => {
  it("the helper prints the marker line the layer checks for", () => {
    expect(readFileSync(MOUNT_UNIT_HELPER, "utf8")).toContain(`MARKER='${MOUNT_UNIT_MARKER}'`)
    expect(statSync(MOUNT_UNIT_HELPER).mode & 0o777).toBe(0o755)
  })

  it.live.skipIf(!canMount)("writes the unit, reloads systemd, enables --now (needs root + systemd-escape)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const unit = host.unitOf("usb-backup")
    return Effect.gen(function*() {
      const r = expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb-backup", uuid: EXT4, fsType: "ext4" })))
      expect(r).toEqual({ unit, mountPoint: `${host.paths.usbMountRoot}/usb-backup`, changed: true })
      // The name is the escaped mount path, '-' in the id included.
      expect(unit.endsWith("-felhom-usb\\x2dbackup.mount")).toBe(true)
      const file = join(host.paths.unitDir, unit)
      expect(readFileSync(file, "utf8")).toBe(unitText(host, "usb-backup", EXT4, "ext4"))
      const st = statSync(file)
      expect(st.mode & 0o777).toBe(0o644)
      expect(st.uid).toBe(0)
      expect(leftovers(host)).toEqual([])
      expect(bin.calls("systemctl")).toEqual([["daemon-reload"], ["enable", "--now", unit]])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.live.skipIf(!canMount || !hasAnalyze)("the unit passes systemd-analyze verify, for both UUID forms (needs root, systemd-escape, systemd-analyze)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    return Effect.gen(function*() {
      for (const [id, uuid, fsType] of [["usb-backup", EXT4, "ext4"], ["stick.2", VFAT, "vfat"], ["x_y", EXT4, "auto"]] as const) {
        expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: id, uuid, fsType })))
        const r = spawnSync("systemd-analyze", ["verify", join(host.paths.unitDir, host.unitOf(id))], { encoding: "utf8" })
        expect(r.stderr).not.toContain("Refusing")
        expect(r.status, r.stderr).toBe(0)
      }
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.live.skipIf(!canMount)("the same target again: no rewrite, no reload, only enable --now (needs root + systemd-escape)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const unit = host.unitOf("usb")
    const file = join(host.paths.unitDir, unit)
    return Effect.gen(function*() {
      expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: VFAT })))
      const before = statSync(file)
      rmSync(join(bin.dir, "systemctl.calls"))
      const r = expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: VFAT })))
      expect(r.changed).toBe(false)
      const after = statSync(file)
      expect(after.ino).toBe(before.ino)
      expect(after.mtimeMs).toBe(before.mtimeMs)
      expect(bin.calls("systemctl")).toEqual([
        ["show", "--property=NeedDaemonReload", "--value", unit],
        ["enable", "--now", unit]
      ])
      expect(leftovers(host)).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.live.skipIf(!canMount)("an unchanged file systemd has not loaded yet (a reload that failed) is reloaded (needs root + systemd-escape)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const unit = host.unitOf("usb")
    return Effect.gen(function*() {
      // First attempt: the reload fails, the file is already in place.
      writeFileSync(join(bin.dir, "systemctl.fail"), "daemon-reload\n")
      const e = expectError(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: VFAT })))
      expect(e.reason).toBe("NonZeroExit")
      expect(e.command).toBe("systemctl")
      rmSync(join(bin.dir, "systemctl.fail"))
      rmSync(join(bin.dir, "systemctl.calls"))
      writeFileSync(join(bin.dir, "systemctl.show"), "yes\n")
      const r = expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: VFAT })))
      expect(r.changed).toBe(false)
      expect(bin.calls("systemctl")).toEqual([
        ["show", "--property=NeedDaemonReload", "--value", unit],
        ["daemon-reload"],
        ["enable", "--now", unit]
      ])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.live.skipIf(!canMount)("a changed UUID is written by rename: an open reader keeps the old unit, the path has the new one (needs root + systemd-escape)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const file = join(host.paths.unitDir, host.unitOf("usb"))
    return Effect.gen(function*() {
      expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: VFAT, fsType: "vfat" })))
      const oldIno = statSync(file).ino
      const fd = openSync(file, "r")
      try {
        const r = expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: EXT4, fsType: "ext4" })))
        expect(r.changed).toBe(true)
        const buf = Buffer.alloc(4096)
        const n = readSync(fd, buf, 0, buf.length, 0)
        expect(buf.subarray(0, n).toString("utf8")).toBe(unitText(host, "usb", VFAT, "vfat"))
      } finally {
        closeSync(fd)
      }
      expect(statSync(file).ino).not.toBe(oldIno)
      expect(readFileSync(file, "utf8")).toBe(unitText(host, "usb", EXT4, "ext4"))
      expect(leftovers(host)).toEqual([])
      expect(bin.calls("systemctl").filter((c) => c[0] === "daemon-reload")).toHaveLength(2)
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.live.skipIf(!canMount)("a disk that does not show up fails enable --now as NonZeroExit; the unit stays for when it does (needs root + systemd-escape)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    writeFileSync(join(bin.dir, "systemctl.fail"), "enable\n")
    return withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: EXT4 })).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        expect(e.reason).toBe("NonZeroExit")
        expect(e.command).toBe("systemctl")
        expect(e.stderrTail).toContain("failed")
        expect(existsSync(join(host.paths.unitDir, host.unitOf("usb")))).toBe(true)
      }),
      Effect.ensuring(Effect.sync(() => {
        bin.cleanup()
        host.cleanup()
      }))
    )
  })

  it.live.skipIf(!isRoot)("a unit file the agent did not write is neither overwritten nor disabled nor removed (needs root)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const file = join(host.paths.unitDir, host.unitOf("usb"))
    const foreign = "[Mount]\nWhat=/dev/sda1\nWhere=/x\n"
    writeFileSync(file, foreign)
    return Effect.gen(function*() {
      const ops: ReadonlyArray<(p: PrivilegedShape) => Effect.Effect<unknown, PrivilegedError>> = [
        (p) => p.mountUsb({ targetId: "usb", uuid: EXT4 }),
        (p) => p.unmountUsb("usb")
      ]
      for (const op of ops) {
        const e = expectError(yield* withUsb(bin, host, op))
        expect(e.reason).toBe("UntrustedPath")
        expect(e.untrusted).toBe("NotManagedByAgent")
      }
      expect(readFileSync(file, "utf8")).toBe(foreign)
      expect(bin.recorded()).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })
})

describe("unmountUsb: disable --now, remove, reload", () => {
  it.live.skipIf(!canMount)("detaches a mounted target, then is a no-op (needs root + systemd-escape)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const unit = host.unitOf("usb-backup")
    return Effect.gen(function*() {
      expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb-backup", uuid: EXT4 })))
      rmSync(join(bin.dir, "systemctl.calls"))
      expect(expectValue(yield* withUsb(bin, host, (p) => p.unmountUsb("usb-backup")))).toEqual({ unit, removed: true })
      expect(bin.calls("systemctl")).toEqual([["disable", "--now", unit], ["daemon-reload"]])
      expect(readdirSync(host.paths.unitDir)).toEqual([])
      rmSync(join(bin.dir, "systemctl.calls"))
      expect(expectValue(yield* withUsb(bin, host, (p) => p.unmountUsb("usb-backup")))).toEqual({ unit, removed: false })
      expect(bin.calls("systemctl")).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.live.skipIf(!canMount)("a busy filesystem (disable --now fails) leaves the unit file in place (needs root + systemd-escape)", () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const file = join(host.paths.unitDir, host.unitOf("usb"))
    return Effect.gen(function*() {
      expectValue(yield* withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: EXT4 })))
      writeFileSync(join(bin.dir, "systemctl.fail"), "disable\n")
      rmSync(join(bin.dir, "systemctl.calls"))
      const e = expectError(yield* withUsb(bin, host, (p) => p.unmountUsb("usb")))
      expect(e.reason).toBe("NonZeroExit")
      expect(existsSync(file)).toBe(true)
      expect(bin.calls("systemctl").map((c) => c[0])).toEqual(["disable"])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })
})

describe("mountUsb: the mount root and mount point must be root's", () => {
  const refusals: ReadonlyArray<readonly [string, (h: Host) => void, string]> = [
    ["a group-writable mount root", (h) => chmodSync(h.paths.usbMountRoot, 0o775), "GroupOrOtherWritable"],
    ["a mount root owned by the service user", (h) => chownSync(h.paths.usbMountRoot, SERVICE_UID, SERVICE_UID), "NotRootOwned"],
    ["a missing mount root", (h) => rmSync(h.paths.usbMountRoot, { recursive: true }), "Missing"],
    ["a mount point that is a symlink to /etc", (h) => symlinkSync("/etc", join(h.paths.usbMountRoot, "usb")), "Symlink"],
    ["a mount point owned by the service user", (h) => {
      mkdirSync(join(h.paths.usbMountRoot, "usb"))
      chownSync(join(h.paths.usbMountRoot, "usb"), SERVICE_UID, SERVICE_UID)
    }, "NotRootOwned"],
    ["a mount point that is a file", (h) => writeFileSync(join(h.paths.usbMountRoot, "usb"), ""), "NotADirectory"]
  ]
  for (const [label, spoil, why] of refusals) {
    it.live.skipIf(!isRoot)(`${label} → UntrustedPath(${why}), nothing runs (needs root)`, () => {
      const bin = makeBinDir()
      const host = makeHost()
      fakeSystemctl(bin)
      spoil(host)
      return withUsb(bin, host, (p) => p.mountUsb({ targetId: "usb", uuid: EXT4 })).pipe(
        Effect.map((r) => {
          const e = expectError(r)
          expect(e.reason).toBe("UntrustedPath")
          expect(e.untrusted).toBe(why)
          expect(bin.recorded()).toEqual([])
          expect(readdirSync(host.paths.unitDir)).toEqual([])
        }),
        Effect.ensuring(Effect.sync(() => {
          bin.cleanup()
          host.cleanup()
        }))
      )
    })
  }
})

describe("USB targets: hostile input never reaches the helper or systemctl", () => {
  const badIds = [
    "../etc", "..", ".", "a/b", "/etc", "usb\n[Service]\nExecStart=/bin/sh", "usb backup", "-x", "_x", "1usb",
    "usb\0", "üsb", "usb;reboot", "usb$(id)", "usb\\x2d", "a".repeat(49), ""
  ]
  const badUuids = [
    "../../sda1", "A1B2-C3D4/../../sda", `${EXT4}\nExecStart=/bin/sh`, EXT4.toUpperCase(), "a1b2-c3d4", ` ${VFAT}`,
    `${VFAT} `, "A1B2-C3D4-E5F6", "", "/dev/sda1", "A1B2_C3D4"
  ]
  const badTypes = ["ext4\nOptions=exec", "ext4,loop", "nfs", "none", "EXT4", ""]
  const cases: ReadonlyArray<readonly [string, string, (p: PrivilegedShape) => Effect.Effect<unknown, PrivilegedError>]> = [
    ...badIds.flatMap((id) => [
      ["targetId", `mount ${JSON.stringify(id)}`, (p: PrivilegedShape) => p.mountUsb({ targetId: id, uuid: EXT4 })] as const,
      ["targetId", `unmount ${JSON.stringify(id)}`, (p: PrivilegedShape) => p.unmountUsb(id)] as const,
      ["targetId", `state of ${JSON.stringify(id)}`, (p: PrivilegedShape) => p.usbState({ targetId: id, uuid: EXT4 })] as const
    ]),
    ...badUuids.flatMap((uuid) => [
      ["uuid", `mount uuid ${JSON.stringify(uuid)}`, (p: PrivilegedShape) => p.mountUsb({ targetId: "usb", uuid })] as const,
      ["uuid", `state of uuid ${JSON.stringify(uuid)}`, (p: PrivilegedShape) => p.usbState({ targetId: "usb", uuid })] as const
    ]),
    ...badTypes.map((t) =>
      ["fsType", `fsType ${JSON.stringify(t)}`, (p: PrivilegedShape) => p.mountUsb({ targetId: "usb", uuid: EXT4, fsType: t as "ext4" })] as const
    ),
    ["targetId", "a target id that is not a string", (p) => p.unmountUsb(42 as unknown as string)]
  ]
  it.live(`${cases.length} hostile inputs → InvalidArgument naming the argument, nothing spawned, nothing written, in both modes`, () => {
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    bin.fake("felhom-mount-unit")
    const sudo = bin.fakeSudo()
    return Effect.gen(function*() {
      for (const [argument, label, run] of cases) {
        for (const mode of ["direct", "sudo"] as const) {
          const e = expectError(yield* withUsb(bin, host, run, {
            mode,
            sudo_path: sudo,
            commands: { "felhom-mount-unit": join(bin.dir, "felhom-mount-unit") }
          }))
          expect(e.reason, label).toBe("InvalidArgument")
          expect(e.argument, label).toBe(argument)
        }
      }
      expect(bin.recorded()).toEqual([])
      expect(readdirSync(host.paths.unitDir)).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.skipIf(!hasEscape)("the helper refuses the same values on its own (the second line, should sudoers be bypassed)", () => {
    const host = makeHost()
    try {
      const run = (...args: ReadonlyArray<string>) =>
        spawnSync(MOUNT_UNIT_HELPER, args, { encoding: "utf8", env: { PATH: "/usr/bin:/bin" } })
      const u = host.paths.unitDir
      const m = host.paths.usbMountRoot
      const refused: ReadonlyArray<ReadonlyArray<string>> = [
        ...badIds.filter((id) => !id.includes("\0")).map((id) => ["write", u, m, id, EXT4, "ext4"]),
        ...badUuids.map((uuid) => ["write", u, m, "usb", uuid, "ext4"]),
        ...badTypes.map((t) => ["write", u, m, "usb", EXT4, t]),
        ["write", u, m, "usb", EXT4, "ext4", "extra"],
        ["write", u, m, "usb", EXT4],
        ["write", `${u}/../../etc`, m, "usb", EXT4, "ext4"],
        ["write", `${u}/`, m, "usb", EXT4, "ext4"],
        ["write", u, "/", "usb", EXT4, "ext4"],
        ["write", u, `${m}//x`, "usb", EXT4, "ext4"],
        ["write", "relative/dir", m, "usb", EXT4, "ext4"],
        ["remove", u, m, "../x"],
        ["remove", u, m, "usb", "extra"],
        ["exec", u, m, "usb"]
      ]
      for (const args of refused) {
        const r = run(...args)
        expect(r.status, args.join(" ")).toBe(2)
        expect(r.stdout).toBe("")
      }
      expect(readdirSync(u)).toEqual([])
      // and a well-formed call works
      const ok = run("write", u, m, "usb", EXT4, "ext4")
      expect(ok.status, ok.stderr).toBe(0)
      expect(ok.stdout).toBe(`written ${host.unitOf("usb")}\n`)
    } finally {
      host.cleanup()
    }
  })
})

describe("usbState: the state from /dev/disk/by-uuid and mountinfo, without any child process", () => {
  const setup = () => {
    const bin = makeBinDir()
    const host = makeHost()
    // Every command a fake, and sudo mode: a read that spawned anything would show up here.
    for (const c of Object.keys(DEFAULT_COMMAND_PATHS)) bin.fake(c)
    const sudo = bin.fakeSudo()
    const devDir = join(host.base, "dev")
    mkdirSync(devDir)
    const device = join(devDir, "sdz1")
    writeFileSync(device, "")
    const mountPoint = `${host.paths.usbMountRoot}/usb`
    const plug = () => symlinkSync("../dev/sdz1", join(host.paths.byUuidDir, EXT4))
    const pull = () => unlinkSync(join(host.paths.byUuidDir, EXT4))
    const table = (...lines: ReadonlyArray<string>) => writeFileSync(host.paths.mountInfo, lines.map((l) => `${l}\n`).join(""))
    const line = (source: string, opts = "rw,noatime", superOpts = "rw", fs = "ext4", at = mountPoint) =>
      `61 26 8:33 / ${at} ${opts} shared:31 - ${fs} ${source} ${superOpts}`
    const state = () =>
      withUsb(bin, host, (p) => p.usbState({ targetId: "usb", uuid: EXT4 }), { mode: "sudo", sudo_path: sudo })
        .pipe(Effect.map(expectValue))
    return { bin, host, device, mountPoint, plug, pull, table, line, state, cleanup: () => {
      bin.cleanup()
      host.cleanup()
    } }
  }

  it.live("mounted → stale (pulled while mounted) → absent (unmounted) → unmounted (replugged), each at the next read", () => {
    const t = setup()
    return Effect.gen(function*() {
      t.plug()
      t.table("1 0 8:1 / / rw - ext4 /dev/sda1 rw", t.line(t.device))
      expect(yield* t.state()).toEqual({
        state: "mounted",
        devicePresent: true,
        device: t.device,
        mountPoint: t.mountPoint,
        mounted: true,
        mountSource: t.device,
        fsType: "ext4",
        readOnly: false
      })
      t.pull()
      expect(yield* t.state()).toMatchObject({ state: "stale", devicePresent: false, mounted: true, mountSource: t.device })
      t.table("1 0 8:1 / / rw - ext4 /dev/sda1 rw")
      expect(yield* t.state()).toEqual({ state: "absent", devicePresent: false, mountPoint: t.mountPoint, mounted: false })
      t.plug()
      expect(yield* t.state()).toMatchObject({ state: "unmounted", devicePresent: true, device: t.device, mounted: false })
      expect(t.bin.recorded()).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(t.cleanup)))
  })

  it.live("something else mounted there is foreign; the topmost of stacked mounts counts; read-only is reported", () => {
    const t = setup()
    return Effect.gen(function*() {
      t.plug()
      t.table(t.line("/dev/sdy9"))
      expect(yield* t.state()).toMatchObject({ state: "foreign", mountSource: "/dev/sdy9" })
      t.table(t.line("/dev/sdy9"), t.line(t.device, "rw", "ro,errors=remount-ro"))
      expect(yield* t.state()).toMatchObject({ state: "mounted", readOnly: true })
      t.table(t.line(t.device), t.line("tmpfs", "rw", "rw", "tmpfs"))
      expect(yield* t.state()).toMatchObject({ state: "foreign", fsType: "tmpfs" })
      // a mount at a longer path sharing the prefix is not this target's
      t.table(t.line(t.device, "rw", "rw", "ext4", `${t.mountPoint}2`))
      expect(yield* t.state()).toMatchObject({ state: "unmounted", mounted: false })
      expect(t.bin.recorded()).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(t.cleanup)))
  })

  it.live("a dangling by-uuid link counts as absent; an unreadable mountinfo is HostRead", () => {
    const t = setup()
    return Effect.gen(function*() {
      symlinkSync("../dev/gone", join(t.host.paths.byUuidDir, EXT4))
      expect(yield* t.state()).toMatchObject({ state: "absent", devicePresent: false })
      rmSync(t.host.paths.mountInfo)
      const e = expectError(yield* withUsb(t.bin, t.host, (p) => p.usbState({ targetId: "usb", uuid: EXT4 })))
      expect(e.reason).toBe("HostRead")
      expect(e.command).toBe("mount-state")
      expect(e.message).toContain("ENOENT")
    }).pipe(Effect.ensuring(Effect.sync(t.cleanup)))
  })

  it.live("reads the real /proc/self/mountinfo and /dev/disk/by-uuid by default (absent here: no such disk)", () =>
    Effect.gen(function*() {
      const bin = makeBinDir()
      const r = yield* withPrivIn(bin, (p) => p.usbState({ targetId: "usb", uuid: EXT4 }))
      expect(expectValue(r)).toEqual({ state: "absent", devicePresent: false, mountPoint: "/mnt/felhom/usb", mounted: false })
      bin.cleanup()
    }))
})

// ---------------------------------------------------------------------------------------------
// The sudoers drop-in

describe("configs/sudoers/felhom-agent: the USB rules", () => {
  const sandbox = makeSudoSandbox()
  afterAll(() => sandbox?.cleanup())

  it.live.skipIf(sandbox === undefined || !canMount)("allows exactly the argv mount and unmount produce (needs root + unshare + systemd-escape)", () => {
    if (sandbox === undefined) return Effect.void
    const bin = makeBinDir()
    const host = makeHost()
    fakeSystemctl(bin)
    const sudo = bin.fakeSudo()
    const scratchPrefix = (() => {
      const e = escapeSystemdPath(host.paths.usbMountRoot)
      return e.ok ? `${e.name}-` : "?"
    })()
    // The scratch host stands for the production paths the rules name.
    const toProduction = (a: string) =>
      a === host.paths.unitDir
        ? "/etc/systemd/system"
        : a === host.paths.usbMountRoot
        ? "/mnt/felhom"
        : a.startsWith(scratchPrefix)
        ? `mnt-felhom-${a.slice(scratchPrefix.length)}`
        : a
    return Effect.gen(function*() {
      const ops: ReadonlyArray<(p: PrivilegedShape) => Effect.Effect<unknown, PrivilegedError>> = [
        (p) => p.mountUsb({ targetId: "usb-backup", uuid: EXT4, fsType: "ext4" }),
        (p) => p.mountUsb({ targetId: "usb-backup", uuid: EXT4, fsType: "ext4" }),
        (p) => p.mountUsb({ targetId: "Stick.2_a", uuid: VFAT }),
        (p) => p.unmountUsb("usb-backup"),
        (p) => p.unmountUsb("Stick.2_a")
      ]
      for (const op of ops) expectValue(yield* withUsb(bin, host, op, { mode: "sudo", sudo_path: sudo }))
      const calls = bin.calls("sudo")
      expect(calls.length).toBeGreaterThanOrEqual(11)
      const commands = new Set<string>()
      for (const call of calls) {
        expect(call[0]).toBe("-n")
        const [binary, ...args] = call.slice(1)
        const production = binary === MOUNT_UNIT_HELPER
          ? DEFAULT_COMMAND_PATHS["felhom-mount-unit"]
          : binary === join(bin.dir, "systemctl")
          ? DEFAULT_COMMAND_PATHS.systemctl
          : "?"
        commands.add(`${production} ${args[0]}`)
        const argv = [production, ...args.map(toProduction)]
        expect(sandbox.allows(argv), argv.join(" ")).toBe(true)
      }
      // every shape was exercised
      expect([...commands].sort()).toEqual([
        "/usr/bin/systemctl daemon-reload",
        "/usr/bin/systemctl disable",
        "/usr/bin/systemctl enable",
        "/usr/bin/systemctl show",
        "/usr/local/libexec/felhom-agent/felhom-mount-unit remove",
        "/usr/local/libexec/felhom-agent/felhom-mount-unit write"
      ])
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      host.cleanup()
    })))
  })

  it.skipIf(sandbox === undefined)("refuses anything else for the helper and systemctl (needs root + unshare)", () => {
    if (sandbox === undefined) return
    const H = DEFAULT_COMMAND_PATHS["felhom-mount-unit"]
    const S = DEFAULT_COMMAND_PATHS.systemctl
    const U = "/etc/systemd/system"
    const M = "/mnt/felhom"
    for (const denied of [
      [H, "write", "/tmp", M, "usb", EXT4, "ext4"],
      [H, "write", U, "/", "usb", EXT4, "ext4"],
      [H, "write", U, "/etc", "usb", EXT4, "ext4"],
      [H, "write", U, M, "../etc", EXT4, "ext4"],
      [H, "write", U, M, "usb", EXT4.toUpperCase(), "ext4"],
      [H, "write", U, M, "usb", "a1b2-c3d4", "vfat"],
      [H, "write", U, M, "usb", EXT4, "nfs"],
      [H, "write", U, M, "usb", EXT4, "ext4", "extra"],
      // (sudo matches the argv joined by spaces, so `[..., "<uuid> ext4"]` as ONE argument would
      // match; the helper refuses that uuid itself, see "the helper refuses the same values")
      [H, "remove", U, M, "usb", "x"],
      [H, "remove", "/etc", M, "usb"],
      [S, "enable", "--now", "sshd.service"],
      [S, "enable", "--now", "/tmp/evil.mount"],
      [S, "enable", "--now", "mnt-felhom-a/b.mount"],
      [S, "enable", "--now", "mnt-felhom-a.mount", "sshd.service"],
      [S, "enable", "mnt-felhom-a.mount"],
      [S, "start", "mnt-felhom-a.mount"],
      [S, "disable", "--now", "mnt-felhom-a.service"],
      [S, "enable", "--now", "mnt-felhom-usb\\x2e.mount"],
      [S, "enable", "--now", "mnt-felhom-usb\\\\x2d.mount"],
      [S, "show", "--property=ExecStart", "--value", "mnt-felhom-a.mount"],
      [S, "daemon-reexec"],
      [S, "link", "/tmp/x.mount"],
      [S, "edit", "mnt-felhom-a.mount"]
    ]) {
      expect(sandbox.allows(denied), denied.join(" ")).toBe(false)
    }
    expect(sandbox.allows([S, "enable", "--now", "mnt-felhom-usb\\x2dbackup.mount"])).toBe(true)
  })
})
