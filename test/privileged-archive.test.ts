/**
 * The read-only archive integrity test against the real tar, zstd and gzip of this machine, on
 * real archives made in a scratch storage: a good one, a truncated one, a bit-flipped one, per
 * compression. lzop is not installed here, so the .tar.lzo cases that need it are skipped (each
 * says so); its argv is still checked against the sudoers rules through a fake. The storage's
 * directories must be root-owned for the trust check, so the cases that run an archive skip
 * without root; the sudoers cases need root + unshare.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { randomBytes } from "node:crypto"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ARCHIVE_REASON_MAX, archiveReason, DEFAULT_COMMAND_PATHS } from "../src/layers/Privileged.js"
import type { ArchiveCheck } from "../src/schema/privileged.js"
import {
  type Bin,
  expectError,
  expectValue,
  isRoot,
  type LayerOptions,
  makeBinDir,
  makeSudoSandbox,
  SERVICE_UID,
  withPriv as withPrivIn
} from "./privileged-support.js"

const which = (name: string): string | undefined => {
  const r = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" })
  return r.status === 0 ? r.stdout.trim() : undefined
}
const TAR = which("tar")
const ZSTD = which("zstd")
const GZIP = which("gzip")
const LZOP = which("lzop")

const NAME = "vzdump-lxc-101-2026_01_10-02_00_00"

/**
 * A scratch host with a directory storage (`store`, its `dump/`) and a USB mount root with one
 * target (`felhom/usb-1/dump`), all root-owned 0755 when we are root, plus a source tree to archive.
 */
const makeStore = () => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-arch-")))
  chmodSync(base, 0o755)
  const mk = (...parts: ReadonlyArray<string>) => {
    const p = join(base, ...parts)
    mkdirSync(p, { recursive: true })
    chmodSync(p, 0o755)
    return p
  }
  const store = mk("store")
  const dump = mk("store", "dump")
  const usbRoot = mk("felhom")
  const usbDump = mk("felhom", "usb-1", "dump")
  const src = mk("src", "etc")
  // incompressible content, so a flipped byte lands in compressed data, not in a header
  writeFileSync(join(src, "data.bin"), randomBytes(256 * 1024))
  writeFileSync(join(src, "hostname"), "ct101\n")
  const make = (file: string, filter: ReadonlyArray<string>) => {
    const r = spawnSync("tar", [...filter, "-cf", file, "-C", join(base, "src"), "."], { encoding: "utf8" })
    if (r.status !== 0) throw new Error(`tar failed: ${r.stderr}`)
    return file
  }
  return {
    base,
    store,
    dump,
    usbRoot,
    usbDump,
    make,
    options: (extra: LayerOptions = {}): LayerOptions => ({
      archive_storage_paths: [store],
      paths: { usbMountRoot: usbRoot },
      commands: {
        ...(TAR === undefined ? {} : { tar: TAR }),
        ...(ZSTD === undefined ? {} : { zstd: ZSTD }),
        ...(GZIP === undefined ? {} : { gzip: GZIP }),
        ...(LZOP === undefined ? {} : { lzop: LZOP }),
        ...extra.commands
      },
      ...extra
    }),
    cleanup: () => rmSync(base, { recursive: true, force: true })
  }
}
type Store = ReturnType<typeof makeStore>

const truncate = (from: string, to: string) => {
  const bytes = readFileSync(from)
  writeFileSync(to, bytes.subarray(0, Math.floor(bytes.length / 2)))
  return to
}
const flipBit = (from: string, to: string, at = 0.6) => {
  const bytes = Buffer.from(readFileSync(from))
  const i = Math.floor(bytes.length * at)
  bytes[i] = (bytes[i] ?? 0) ^ 0x10
  writeFileSync(to, bytes)
  return to
}

const verify = (bin: Bin, s: Store, path: string, extra: LayerOptions = {}) =>
  withPrivIn(bin, (p) => p.verifyArchive(path), s.options(extra))

/** Names, sizes and mtimes of everything below `dir`: equal before and after means nothing was written. */
const snapshot = (dir: string): ReadonlyArray<string> => {
  const out: Array<string> = []
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name)
      const st = statSync(p, { throwIfNoEntry: false })
      out.push(`${p} ${st?.size ?? "-"} ${st?.mtimeMs ?? "-"} ${st?.mode ?? "-"}`)
      if (e.isDirectory()) walk(p)
    }
  }
  walk(dir)
  return out
}

const withStore = <A>(f: (bin: Bin, s: Store) => Effect.Effect<A, unknown>) => {
  const bin = makeBinDir()
  const s = makeStore()
  return f(bin, s).pipe(Effect.ensuring(Effect.sync(() => {
    bin.cleanup()
    s.cleanup()
  })))
}

const expectDamaged = (r: ArchiveCheck, stage: "compression" | "tar", s: Store) => {
  if (r.ok) throw new Error("expected the archive to be reported damaged")
  expect(r.stage).toBe(stage)
  expect(r.exitCode).not.toBe(0)
  expect(r.reason.length).toBeGreaterThan(0)
  expect(r.reason.length).toBeLessThanOrEqual(ARCHIVE_REASON_MAX)
  // no path of ours (the archive, the storage) leaks into the reason
  expect(r.reason).not.toContain(s.base)
}

// ---------------------------------------------------------------------------------------------

const FORMATS = [
  { ext: ".tar.zst", compression: "zst", filter: ["--zstd"], need: [TAR, ZSTD], needs: "tar + zstd" },
  { ext: ".tar.gz", compression: "gz", filter: ["--gzip"], need: [TAR, GZIP], needs: "tar + gzip" },
  { ext: ".tar.lzo", compression: "lzo", filter: ["--lzop"], need: [TAR, LZOP], needs: "tar + lzop" },
  { ext: ".tar", compression: "none", filter: [], need: [TAR], needs: "tar" }
] as const

describe("verifyArchive: real archives, real tools", () => {
  for (const f of FORMATS) {
    const present = f.need.every((b) => b !== undefined)
    const skip = !isRoot || !present
    const why = `needs root and ${f.needs}${present ? "" : ` — skipped here: not installed`}`

    it.live.skipIf(skip)(`${f.ext}: a good archive passes (${why})`, () =>
      withStore((bin, s) =>
        Effect.gen(function*() {
          const a = s.make(join(s.dump, `${NAME}${f.ext}`), f.filter)
          expect(expectValue(yield* verify(bin, s, a))).toEqual({ ok: true, compression: f.compression })
        })
      ))

    it.live.skipIf(skip)(`${f.ext}: a truncated archive is reported damaged, at the first stage (${why})`, () =>
      withStore((bin, s) =>
        Effect.gen(function*() {
          const good = s.make(join(s.base, `good${f.ext}`), f.filter)
          const a = truncate(good, join(s.dump, `${NAME}${f.ext}`))
          expectDamaged(expectValue(yield* verify(bin, s, a)), f.compression === "none" ? "tar" : "compression", s)
        })
      ))

    it.live.skipIf(skip)(`${f.ext}: a flipped bit is reported damaged (${why})`, () =>
      withStore((bin, s) =>
        Effect.gen(function*() {
          const good = s.make(join(s.base, `good${f.ext}`), f.filter)
          // a plain tar has no content checksum: flip a bit in the first header (its name field)
          const a = flipBit(good, join(s.dump, `${NAME}${f.ext}`), f.compression === "none" ? 0 : 0.6)
          const r = expectValue(yield* verify(bin, s, a))
          expectDamaged(r, f.compression === "none" ? "tar" : "compression", s)
        })
      ))
  }

  it.live.skipIf(!isRoot || TAR === undefined || ZSTD === undefined)("runs the compression test, then the tar listing, on the exact argv sudo is asked for (needs root, tar, zstd)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        const sudo = bin.fakeSudo()
        const a = s.make(join(s.dump, `${NAME}.tar.zst`), ["--zstd"])
        expect(expectValue(yield* verify(bin, s, a, { mode: "sudo", sudo_path: sudo }))).toEqual({ ok: true, compression: "zst" })
        expect(bin.calls("sudo")).toEqual([
          ["-n", ZSTD!, "-q", "-t", "--", a],
          ["-n", TAR!, "--force-local", "--zstd", "-t", "-f", a]
        ])
      })
    ))

  it.live.skipIf(!isRoot || TAR === undefined || ZSTD === undefined)("a damaged compression stops before tar runs (needs root, tar, zstd)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        const sudo = bin.fakeSudo()
        const good = s.make(join(s.base, "good.tar.zst"), ["--zstd"])
        const a = truncate(good, join(s.dump, `${NAME}.tar.zst`))
        expectDamaged(expectValue(yield* verify(bin, s, a, { mode: "sudo", sudo_path: sudo })), "compression", s)
        expect(bin.calls("sudo").map((c) => c[1])).toEqual([ZSTD])
      })
    ))

  it.live.skipIf(!isRoot || TAR === undefined || ZSTD === undefined || GZIP === undefined)("nothing is written anywhere: the whole scratch tree is byte-for-byte and mtime-identical after good and bad runs (needs root, tar, zstd, gzip)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        const z = s.make(join(s.dump, `${NAME}.tar.zst`), ["--zstd"])
        const g = s.make(join(s.base, "g.tar.gz"), ["--gzip"])
        const bad = flipBit(g, join(s.dump, "vzdump-lxc-102-2026_01_10-02_00_00.tar.gz"))
        const before = snapshot(s.base)
        expectValue(yield* verify(bin, s, z))
        expectValue(yield* verify(bin, s, bad))
        expect(snapshot(s.base)).toEqual(before)
      })
    ))

  it.live.skipIf(!isRoot || TAR === undefined)("a listing far past the 1 MiB stdout cap is drained and dropped, and passes (needs root, tar)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        // 12 000 entries of ~130 characters: about 1.5 MiB of listing from a small archive
        const long = join(s.base, "src", "x".repeat(120))
        writeFileSync(long, "")
        const list = join(s.base, "list")
        writeFileSync(list, Array.from({ length: 12_000 }, () => `./${"x".repeat(120)}`).join("\n"))
        const a = join(s.dump, `${NAME}.tar`)
        const r = spawnSync("tar", ["-cf", a, "-C", join(s.base, "src"), "-T", list], { encoding: "utf8" })
        expect(r.status, r.stderr).toBe(0)
        const listing = spawnSync("tar", ["-tf", a], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 })
        expect(listing.stdout.length).toBeGreaterThan(1024 * 1024)
        expect(expectValue(yield* verify(bin, s, a))).toEqual({ ok: true, compression: "none" })
      })
    ))

  it.live.skipIf(!isRoot || TAR === undefined || ZSTD === undefined)("an archive on a USB target's storage is accepted (needs root, tar, zstd)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        const a = s.make(join(s.usbDump, `${NAME}.tar.zst`), ["--zstd"])
        expect(expectValue(yield* verify(bin, s, a))).toEqual({ ok: true, compression: "zst" })
      })
    ))
})

describe("verifyArchive: what is not a verdict on the archive is an error", () => {
  it.live.skipIf(!isRoot)("a command that outlives archive_test_timeout_seconds is killed: Timeout, not 'damaged' (needs root)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        writeFileSync(join(s.dump, `${NAME}.tar.zst`), "not really")
        const slow = bin.fake("zstd", { script: "sleep 30" })
        const started = Date.now()
        const e = expectError(yield* verify(bin, s, join(s.dump, `${NAME}.tar.zst`), {
          archive_test_timeout_seconds: 1,
          commands: { zstd: slow }
        }))
        expect(e.reason).toBe("Timeout")
        expect(e.message).toContain("timed out after 1 s")
        expect(Date.now() - started).toBeLessThan(8000)
      })
    ))

  it.live.skipIf(!isRoot)("sudo refusing the argv is NonZeroExit pointing at the sudoers file, not 'damaged' (needs root)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        writeFileSync(join(s.dump, `${NAME}.tar.gz`), "x")
        const sudo = bin.fakeSudo({ stderr: "sudo: a password is required\n", exit: 1 })
        const e = expectError(yield* verify(bin, s, join(s.dump, `${NAME}.tar.gz`), { mode: "sudo", sudo_path: sudo }))
        expect(e.reason).toBe("NonZeroExit")
        expect(e.message).toContain("configs/sudoers/felhom-agent")
      })
    ))
})

describe("verifyArchive: hostile paths never reach a root command", () => {
  const invalid = (s: Store): ReadonlyArray<readonly [string, string]> => [
    ["a file outside every storage", "/etc/shadow"],
    ["an archive name outside dump/", join(s.store, `${NAME}.tar.zst`)],
    ["a sub-directory of dump/", join(s.dump, "sub", `${NAME}.tar.zst`)],
    ["dump/ of a storage that is not configured", join(s.base, "other", "dump", `${NAME}.tar.zst`)],
    ["'..' out of dump/", `${s.dump}/../../../etc/${NAME}.tar.zst`],
    ["'..' back into dump/", `${s.dump}/../dump/${NAME}.tar.zst`],
    ["'.' in the path", `${s.dump}/./${NAME}.tar.zst`],
    ["'//' in the path", `${s.store}//dump/${NAME}.tar.zst`],
    ["a trailing slash", `${s.dump}/${NAME}.tar.zst/`],
    ["a relative path", `store/dump/${NAME}.tar.zst`],
    ["a space in the name", join(s.dump, "vzdump-lxc-101-2026_01_10-02_00_00 .tar.zst")],
    ["a name with a space inside", join(s.dump, "vzdump lxc-101-2026_01_10-02_00_00.tar.zst")],
    ["a newline in the name", join(s.dump, `${NAME}.tar.zst\n/etc/shadow`)],
    ["a NUL in the name", join(s.dump, `${NAME}.tar.zst\0`)],
    ["a colon (tar's remote-host syntax)", `${s.dump}/host:${NAME}.tar.zst`],
    ["a VM backup", join(s.dump, "vzdump-qemu-101-2026_01_10-02_00_00.vma.zst")],
    ["a vmid below 100", join(s.dump, "vzdump-lxc-99-2026_01_10-02_00_00.tar.zst")],
    ["month 13", join(s.dump, "vzdump-lxc-101-2026_13_10-02_00_00.tar.zst")],
    ["hour 24", join(s.dump, "vzdump-lxc-101-2026_01_10-24_00_00.tar.zst")],
    ["another compression", join(s.dump, `${NAME}.tar.bz2`)],
    ["a notes file", join(s.dump, `${NAME}.tar.zst.notes`)],
    ["a log file", join(s.dump, `${NAME}.log`)],
    ["the USB mount root itself as a storage", join(s.usbRoot, "dump", `${NAME}.tar.zst`)],
    ["two levels below the USB mount root", join(s.usbRoot, "usb-1", "x", "dump", `${NAME}.tar.zst`)],
    ["a USB target id that is not one", join(s.usbRoot, "1usb", "dump", `${NAME}.tar.zst`)],
    ["an option", "--to-command=sh"]
  ]

  it.live("each → InvalidArgument(archivePath), nothing spawned, in both modes", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        for (const c of Object.keys(DEFAULT_COMMAND_PATHS)) bin.fake(c)
        const sudo = bin.fakeSudo()
        const fakes = Object.fromEntries(Object.keys(DEFAULT_COMMAND_PATHS).map((c) => [c, join(bin.dir, c)]))
        for (const [label, path] of invalid(s)) {
          for (const mode of ["direct", "sudo"] as const) {
            const e = expectError(yield* verify(bin, s, path, { mode, sudo_path: sudo, commands: fakes }))
            expect(e.reason, label).toBe("InvalidArgument")
            expect(e.argument, label).toBe("archivePath")
            expect(e.message, label).not.toContain(s.base)
          }
        }
        expect(bin.recorded()).toEqual([])
      })
    ))

  /** Setups that pass the string check but must fail on disk; each also runs nothing. */
  const onDisk: ReadonlyArray<readonly [string, (s: Store) => string, string, string | undefined]> = [
    ["a symlink in dump/ to a file outside every storage", (s) => {
      writeFileSync(join(s.base, "secret"), "root's secret")
      symlinkSync(join(s.base, "secret"), join(s.dump, `${NAME}.tar.zst`))
      return join(s.dump, `${NAME}.tar.zst`)
    }, "InvalidArgument", undefined],
    ["a symlink to /etc/shadow", (s) => {
      symlinkSync("/etc/shadow", join(s.dump, `${NAME}.tar.gz`))
      return join(s.dump, `${NAME}.tar.gz`)
    }, "InvalidArgument", undefined],
    ["a symlink to an archive-named file in an unconfigured storage", (s) => {
      const other = join(s.base, "other", "dump")
      mkdirSync(other, { recursive: true })
      writeFileSync(join(other, `${NAME}.tar.zst`), "x")
      symlinkSync(join(other, `${NAME}.tar.zst`), join(s.dump, `${NAME}.tar.zst`))
      return join(s.dump, `${NAME}.tar.zst`)
    }, "InvalidArgument", undefined],
    ["a dump/ that is a symlink out of the storage", (s) => {
      const other = join(s.base, "elsewhere")
      mkdirSync(other)
      writeFileSync(join(other, `${NAME}.tar.zst`), "x")
      rmSync(s.dump, { recursive: true })
      symlinkSync(other, s.dump)
      return join(s.dump, `${NAME}.tar.zst`)
    }, "InvalidArgument", undefined],
    ["a missing archive", (s) => join(s.dump, `${NAME}.tar.zst`), "UntrustedPath", "Missing"],
    ["a directory named like an archive", (s) => {
      mkdirSync(join(s.dump, `${NAME}.tar.zst`))
      return join(s.dump, `${NAME}.tar.zst`)
    }, "UntrustedPath", "NotARegularFile"],
    ["a FIFO named like an archive (tar would block on it)", (s) => {
      spawnSync("mkfifo", [join(s.dump, `${NAME}.tar`)])
      return join(s.dump, `${NAME}.tar`)
    }, "UntrustedPath", "NotARegularFile"],
    ["a group-writable dump/", (s) => {
      writeFileSync(join(s.dump, `${NAME}.tar.zst`), "x")
      chmodSync(s.dump, 0o775)
      return join(s.dump, `${NAME}.tar.zst`)
    }, "UntrustedPath", "GroupOrOtherWritable"],
    ["a dump/ owned by the service user (it could swap the file for a symlink)", (s) => {
      writeFileSync(join(s.dump, `${NAME}.tar.zst`), "x")
      chownSync(s.dump, SERVICE_UID, SERVICE_UID)
      return join(s.dump, `${NAME}.tar.zst`)
    }, "UntrustedPath", "NotRootOwned"],
    ["a storage owned by the service user", (s) => {
      writeFileSync(join(s.dump, `${NAME}.tar.zst`), "x")
      chownSync(s.store, SERVICE_UID, SERVICE_UID)
      return join(s.dump, `${NAME}.tar.zst`)
    }, "UntrustedPath", "NotRootOwned"]
  ]
  for (const [label, setup, reason, untrusted] of onDisk) {
    it.live.skipIf(!isRoot)(`${label} → ${reason}${untrusted === undefined ? "" : `(${untrusted})`}, nothing spawned (needs root)`, () =>
      withStore((bin, s) =>
        Effect.gen(function*() {
          for (const c of Object.keys(DEFAULT_COMMAND_PATHS)) bin.fake(c)
          const fakes = Object.fromEntries(Object.keys(DEFAULT_COMMAND_PATHS).map((c) => [c, join(bin.dir, c)]))
          const path = setup(s)
          const e = expectError(yield* verify(bin, s, path, { commands: fakes }))
          expect(e.reason).toBe(reason)
          expect(e.argument).toBe("archivePath")
          if (untrusted !== undefined) expect(e.untrusted).toBe(untrusted)
          expect(bin.recorded()).toEqual([])
        })
      ))
  }

  it.live.skipIf(!isRoot || TAR === undefined || ZSTD === undefined)("a symlink to another archive of the same storage runs on the resolved path (needs root, tar, zstd)", () =>
    withStore((bin, s) =>
      Effect.gen(function*() {
        const sudo = bin.fakeSudo()
        const real = s.make(join(s.dump, "vzdump-lxc-102-2026_01_09-02_00_00.tar.zst"), ["--zstd"])
        symlinkSync(real, join(s.dump, `${NAME}.tar.zst`))
        expectValue(yield* verify(bin, s, join(s.dump, `${NAME}.tar.zst`), { mode: "sudo", sudo_path: sudo }))
        for (const call of bin.calls("sudo")) expect(call.at(-1)).toBe(real)
      })
    ))
})

describe("archiveReason: what a failed test may report", () => {
  it("replaces the archive's path and any other path, drops control characters, keeps the last three lines", () => {
    const a = "/var/lib/vz/dump/vzdump-lxc-101-2026_01_10-02_00_00.tar.zst"
    const stderr = [
      "tar: ./home/alice/Documents/private.txt: Cannot stat",
      `zstd: ${a}: Read error (39) : premature end \u001b[31mred\u001b[0m`,
      "tar: Unexpected EOF in archive",
      "tar: Error is not recoverable: exiting now",
      ""
    ].join("\n")
    const reason = archiveReason(stderr, [a])
    expect(reason).toBe(
      "zstd: <archive>: Read error (39) : premature end [31mred [0m / tar: Unexpected EOF in archive / " +
        "tar: Error is not recoverable: exiting now"
    )
    expect(archiveReason("tar: ./home/alice/x: Cannot open\n", [a])).toBe("tar: <path>: Cannot open")
    expect(archiveReason("gzip: /mnt/x/y.gz: unexpected end of file", [a])).toBe("gzip: <path>: unexpected end of file")
  })

  it("clips to ARCHIVE_REASON_MAX and never returns an empty reason", () => {
    expect(archiveReason("e".repeat(10_000), []).length).toBe(ARCHIVE_REASON_MAX)
    expect(archiveReason("", [])).toBe("no error output")
    expect(archiveReason("…\n\n", [])).toBe("no error output")
  })
})

// ---------------------------------------------------------------------------------------------
// The sudoers drop-in

describe("configs/sudoers/felhom-agent: the archive rules", () => {
  const sandbox = makeSudoSandbox()
  afterAll(() => sandbox?.cleanup())

  it.live.skipIf(sandbox === undefined)("allows exactly the argv verifyArchive produces, for every compression (needs root + unshare)", () => {
    if (sandbox === undefined) return Effect.void
    return withStore((bin, s) =>
      Effect.gen(function*() {
        const sudo = bin.fakeSudo()
        // fakes that succeed, so every stage runs for every compression (lzop included)
        const fakes = Object.fromEntries((["tar", "zstd", "gzip", "lzop"] as const).map((c) => [c, bin.fake(c)]))
        const archives = [
          join(s.dump, `${NAME}.tar.zst`),
          join(s.dump, "vzdump-lxc-999999999-2030_12_31-23_59_59.tar.gz"),
          join(s.dump, "vzdump-lxc-100-2026_02_28-00_00_00.tar.lzo"),
          join(s.usbDump, `${NAME}.tar`)
        ]
        for (const a of archives) {
          writeFileSync(a, "x")
          expectValue(yield* verify(bin, s, a, { mode: "sudo", sudo_path: sudo, commands: fakes }))
        }
        const calls = bin.calls("sudo")
        expect(calls).toHaveLength(7)
        const toProduction = (a: string) => a.replace(`${s.store}/`, "/var/lib/vz/").replace(`${s.usbRoot}/`, "/mnt/felhom/")
        for (const call of calls) {
          const name = Object.entries(fakes).find(([, path]) => path === call[1])?.[0] as keyof typeof DEFAULT_COMMAND_PATHS
          const argv = [DEFAULT_COMMAND_PATHS[name], ...call.slice(2).map(toProduction)]
          expect(sandbox.allows(argv), argv.join(" ")).toBe(true)
        }
      })
    )
  })

  it.skipIf(sandbox === undefined)("refuses decompressing, extracting, other paths and extra options (needs root + unshare)", () => {
    if (sandbox === undefined) return
    const A = `/var/lib/vz/dump/${NAME}.tar.zst`
    for (const denied of [
      ["/usr/bin/zstd", "-d", "--", A],
      ["/usr/bin/zstd", "-q", "-t", "--", A, "-o", "/etc/passwd"],
      ["/usr/bin/zstd", "-q", "-t", "--", "/etc/shadow"],
      ["/usr/bin/gzip", "-d", "--", `/var/lib/vz/dump/${NAME}.tar.gz`],
      ["/usr/bin/gzip", "-t", "--", `/var/lib/vz/dump/../../../../etc/${NAME}.tar.gz`],
      ["/usr/bin/tar", "--force-local", "--zstd", "-x", "-f", A],
      ["/usr/bin/tar", "--force-local", "--zstd", "-t", "-f", A, "--to-command=sh"],
      ["/usr/bin/tar", "--zstd", "-t", "-f", A],
      ["/usr/bin/tar", "--force-local", "-t", "-f", "/etc/shadow"],
      ["/usr/bin/tar", "--force-local", "--use-compress-program=sh", "-t", "-f", A],
      ["/usr/bin/tar", "--force-local", "--zstd", "-t", "-f", `/mnt/felhom/a/b/dump/${NAME}.tar.zst`],
      ["/usr/bin/tar", "--force-local", "--zstd", "-t", "-f", `/var/lib/vz/dump/vzdump-qemu-101-2026_01_10-02_00_00.tar.zst`],
      ["/usr/bin/lzop", "-d", `/var/lib/vz/dump/${NAME}.tar.lzo`]
    ]) {
      expect(sandbox.allows(denied), denied.join(" ")).toBe(false)
    }
  })
})
