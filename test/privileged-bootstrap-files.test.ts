/**
 * The controller's bootstrap files (issue 11, SPEC §12): Privileged.writeBootstrap / removeBootstrap
 * run the real root helper configs/libexec/felhom-bootstrap against a root-owned scratch tree
 * (needs root: files must end up owned 100000:100000), and a recording fake shows what reaches
 * argv, the log and errors. The secret is fed on stdin and must never appear in any of them.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Logger, LogLevel, Redacted } from "effect"
import { spawnSync } from "node:child_process"
import {
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { join } from "node:path"
import type { PrivilegedShape } from "../src/layers/Privileged.js"
import { BOOTSTRAP_FILE_MAX_BYTES, type PrivilegedError } from "../src/schema/privileged.js"
import { VmId } from "../src/schema/ids.js"
import {
  type Bin,
  expectError,
  expectValue,
  isRoot,
  type LayerOptions,
  makeBinDir,
  makeTrustedTree,
  SERVICE_UID,
  withPriv
} from "./privileged-support.js"

const HELPER = join(__dirname, "..", "configs", "libexec", "felhom-bootstrap")
const SECRET = "flt_SECRET-never-in-argv-0123456789abcdef"
const vmid = VmId.make(101)

const trees: Array<{ cleanup: () => void }> = []
afterAll(() => {
  for (const t of trees) t.cleanup()
})
const freshTree = () => {
  const t = makeTrustedTree()
  trees.push(t)
  return t
}

/** Runs `f` with the real helper over `root`, collecting every log line at every level. */
const withHelper = <A>(
  bin: Bin,
  root: string,
  f: (p: PrivilegedShape) => Effect.Effect<A, PrivilegedError>,
  extra: LayerOptions = {}
) => {
  const logs: Array<string> = []
  const logger = Logger.make(({ message }) => {
    logs.push(JSON.stringify(message))
  })
  return withPriv(bin, f, { bootstrap_root: root, commands: { "felhom-bootstrap": HELPER }, ...extra }).pipe(
    Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
    Logger.withMinimumLogLevel(LogLevel.All),
    Effect.map((r) => ({ r, logs }))
  )
}

const runHelper = (args: ReadonlyArray<string>, input = "") => spawnSync(HELPER, [...args], { input, encoding: "utf8" })

describe.skipIf(!isRoot)("felhom-bootstrap write: the real helper as root", () => {
  it.live("writes each file 100000:100000 0600 in a root-owned 0755 directory, content exactly from stdin", () => {
    const t = freshTree()
    const bin = makeBinDir()
    const config = "{\n  \"format\": \"x\"\n}\n"
    const odd = "line one\nünïcødé ✓\n\u0000tail without newline"
    return Effect.gen(function*() {
      const { logs, r } = yield* withHelper(bin, t.root, (p) =>
        p.writeBootstrap({
          vmid,
          files: [
            { name: "controller.json", content: config },
            { name: "local-token", content: Redacted.make(`${SECRET}\n`) },
            { name: "registry-password", content: Redacted.make(odd) }
          ]
        }))
      expectValue(r)
      const dir = join(t.root, "101")
      const d = lstatSync(dir)
      expect(d.isDirectory()).toBe(true)
      expect([d.uid, d.gid, d.mode & 0o7777]).toEqual([0, 0, 0o755])
      for (const [name, content] of [["controller.json", config], ["local-token", `${SECRET}\n`], ["registry-password", odd]] as const) {
        const st = lstatSync(join(dir, name))
        expect(st.isFile(), name).toBe(true)
        expect([st.uid, st.gid, st.mode & 0o7777], name).toEqual([100000, 100000, 0o600])
        expect(readFileSync(join(dir, name), "utf8"), name).toBe(content)
      }
      // no temp file left behind
      expect(readdirSync(dir).sort()).toEqual(["controller.json", "local-token", "registry-password"])
      expect(logs.join("\n")).not.toContain(SECRET)
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("replaces a file atomically (a new inode renamed over the name), never in place", () => {
    const t = freshTree()
    const bin = makeBinDir()
    const dir = join(t.root, "101")
    return Effect.gen(function*() {
      expectValue((yield* withHelper(bin, t.root, (p) => p.writeBootstrap({ vmid, files: [{ name: "local-token", content: Redacted.make("old\n") }] }))).r)
      const before = statSync(join(dir, "local-token")).ino
      // a reader holding the old file keeps reading the old content (rename, not truncate)
      const held = readFileSync(join(dir, "local-token"), "utf8")
      expectValue((yield* withHelper(bin, t.root, (p) => p.writeBootstrap({ vmid, files: [{ name: "local-token", content: Redacted.make("new\n") }] }))).r)
      const after = statSync(join(dir, "local-token"))
      expect(after.ino).not.toBe(before)
      expect(held).toBe("old\n")
      expect(readFileSync(join(dir, "local-token"), "utf8")).toBe("new\n")
      expect([after.uid, after.mode & 0o7777]).toEqual([100000, 0o600])
      expect(readdirSync(dir)).toEqual(["local-token"])
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("accepts exactly 64 KiB and refuses one byte more before anything is spawned", () => {
    const t = freshTree()
    const bin = makeBinDir()
    const exact = "a".repeat(BOOTSTRAP_FILE_MAX_BYTES)
    const over = `${SECRET}${"b".repeat(BOOTSTRAP_FILE_MAX_BYTES)}`
    return Effect.gen(function*() {
      expectValue((yield* withHelper(bin, t.root, (p) => p.writeBootstrap({ vmid, files: [{ name: "controller.json", content: exact }] }))).r)
      expect(readFileSync(join(t.root, "101", "controller.json"), "utf8")).toBe(exact)
      // the oversized file comes second: the first must not have been written either
      const { r } = yield* withHelper(bin, t.root, (p) =>
        p.writeBootstrap({
          vmid: VmId.make(102),
          files: [{ name: "controller.json", content: "{}" }, { name: "local-token", content: Redacted.make(over) }]
        }))
      const e = expectError(r)
      expect(e.reason).toBe("InvalidArgument")
      expect(e.argument).toBe("bootstrapContent")
      expect(JSON.stringify(e)).not.toContain(SECRET)
      expect(existsSync(join(t.root, "102"))).toBe(false)
      // the helper caps its stdin by itself too (exit 4, no file)
      const direct = runHelper(["write", t.root, "103", "local-token"], "x".repeat(BOOTSTRAP_FILE_MAX_BYTES + 1))
      expect(direct.status).toBe(4)
      expect(existsSync(join(t.root, "103", "local-token"))).toBe(false)
      expect(readdirSync(join(t.root, "103"))).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("refuses a symlinked or foreign guest directory, and a symlinked or non-regular file, touching nothing", () => {
    const t = freshTree()
    const bin = makeBinDir()
    const victim = join(t.base, "victim")
    mkdirSync(victim)
    writeFileSync(join(victim, "local-token"), "precious")
    // 101 -> a directory elsewhere
    symlinkSync(victim, join(t.root, "101"))
    // 102 owned by the service user
    mkdirSync(join(t.root, "102"))
    chownSync(join(t.root, "102"), SERVICE_UID, SERVICE_UID)
    // 103/local-token -> the victim file; 103/controller.json a directory
    mkdirSync(join(t.root, "103"), { mode: 0o755 })
    symlinkSync(join(victim, "local-token"), join(t.root, "103", "local-token"))
    mkdirSync(join(t.root, "103", "controller.json"))
    const write = (id: number, name: "local-token" | "controller.json") => (p: PrivilegedShape) =>
      p.writeBootstrap({ vmid: VmId.make(id), files: [{ name, content: Redacted.make(SECRET) }] })
    return Effect.gen(function*() {
      const e1 = expectError((yield* withHelper(bin, t.root, write(101, "local-token"))).r)
      expect([e1.reason, e1.untrusted]).toEqual(["UntrustedPath", "Symlink"])
      const e2 = expectError((yield* withHelper(bin, t.root, write(102, "local-token"))).r)
      expect([e2.reason, e2.untrusted]).toEqual(["UntrustedPath", "NotRootOwned"])
      // the file-level checks are the helper's (exit 3)
      const e3 = expectError((yield* withHelper(bin, t.root, write(103, "local-token"))).r)
      expect([e3.reason, e3.exitCode]).toEqual(["NonZeroExit", 3])
      const e4 = expectError((yield* withHelper(bin, t.root, write(103, "controller.json"))).r)
      expect([e4.reason, e4.exitCode]).toEqual(["NonZeroExit", 3])
      for (const e of [e1, e2, e3, e4]) expect(JSON.stringify(e) + e.message).not.toContain(SECRET)
      expect(readFileSync(join(victim, "local-token"), "utf8")).toBe("precious")
      expect(lstatSync(join(t.root, "103", "local-token")).isSymbolicLink()).toBe(true)
      expect(readdirSync(join(t.root, "103")).sort()).toEqual(["controller.json", "local-token"])
      // and the helper on its own refuses the symlinked directory (the TS check is the second line)
      expect(runHelper(["write", t.root, "101", "local-token"], SECRET).status).toBe(3)
      expect(readFileSync(join(victim, "local-token"), "utf8")).toBe("precious")
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("refuses an untrusted bootstrap root (a symlink, or group-writable) before spawning", () => {
    const t = freshTree()
    const bin = makeBinDir()
    const linked = join(t.base, "linked")
    symlinkSync(t.root, linked)
    return Effect.gen(function*() {
      const e = expectError((yield* withHelper(bin, linked, (p) => p.writeBootstrap({ vmid, files: [{ name: "controller.json", content: "{}" }] }))).r)
      expect([e.reason, e.untrusted, e.component]).toEqual(["UntrustedPath", "Symlink", linked])
      expect(existsSync(join(t.root, "101"))).toBe(false)
      expect(runHelper(["write", linked, "101", "controller.json"], "{}").status).toBe(3)
      expect(existsSync(join(t.root, "101"))).toBe(false)
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it("validates every argument itself (exit 2): names, vmids and roots outside the alphabet", () => {
    const t = freshTree()
    for (
      const args of [
        ["write", t.root, "101", "../etc/passwd"],
        ["write", t.root, "101", "other"],
        ["write", t.root, "99", "local-token"],
        ["write", t.root, "0101", "local-token"],
        ["write", t.root, "1x1", "local-token"],
        ["write", `${t.root}/../x`, "101", "local-token"],
        ["write", "relative", "101", "local-token"],
        ["write", t.root, "101"],
        ["write", t.root, "101", "local-token", "extra"],
        ["remove", t.root, "101", "extra"],
        ["chmod", t.root, "101"]
      ]
    ) {
      expect(runHelper(args, "x").status, args.join(" ")).toBe(2)
    }
    expect(readdirSync(t.root)).toEqual([])
  })
})

describe.skipIf(!isRoot)("felhom-bootstrap remove: the real helper as root", () => {
  it.live("removes our files and the directory; idempotent", () => {
    const t = freshTree()
    const bin = makeBinDir()
    return Effect.gen(function*() {
      expectValue((yield* withHelper(bin, t.root, (p) =>
        p.writeBootstrap({ vmid, files: [{ name: "controller.json", content: "{}" }, { name: "local-token", content: Redacted.make(SECRET) }] }))).r)
      // a temp file a crashed write left
      writeFileSync(join(t.root, "101", ".felhom-bootstrap.AbCd1234"), "partial")
      expect(expectValue((yield* withHelper(bin, t.root, (p) => p.removeBootstrap(vmid))).r)).toEqual({ removed: true })
      expect(existsSync(join(t.root, "101"))).toBe(false)
      expect(expectValue((yield* withHelper(bin, t.root, (p) => p.removeBootstrap(vmid))).r)).toEqual({ removed: false })
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("leaves a directory holding anything else in place (exit 5), and never follows a symlink", () => {
    const t = freshTree()
    const bin = makeBinDir()
    const victim = join(t.base, "victim")
    mkdirSync(victim)
    writeFileSync(join(victim, "controller.json"), "precious")
    mkdirSync(join(t.root, "101"), { mode: 0o755 })
    writeFileSync(join(t.root, "101", "local-token"), SECRET)
    writeFileSync(join(t.root, "101", "operator-notes"), "keep me")
    // 102/controller.json -> the victim: the link goes, the victim stays
    mkdirSync(join(t.root, "102"), { mode: 0o755 })
    symlinkSync(join(victim, "controller.json"), join(t.root, "102", "controller.json"))
    // 103 -> the victim directory: refused outright
    symlinkSync(victim, join(t.root, "103"))
    return Effect.gen(function*() {
      const e = expectError((yield* withHelper(bin, t.root, (p) => p.removeBootstrap(vmid))).r)
      expect([e.reason, e.exitCode]).toEqual(["NonZeroExit", 5])
      expect(readdirSync(join(t.root, "101"))).toEqual(["operator-notes"])
      expect(expectValue((yield* withHelper(bin, t.root, (p) => p.removeBootstrap(VmId.make(102)))).r)).toEqual({ removed: true })
      expect(readFileSync(join(victim, "controller.json"), "utf8")).toBe("precious")
      const e3 = expectError((yield* withHelper(bin, t.root, (p) => p.removeBootstrap(VmId.make(103)))).r)
      expect([e3.reason, e3.untrusted]).toEqual(["UntrustedPath", "Symlink"])
      expect(runHelper(["remove", t.root, "103"]).status).toBe(3)
      expect(readdirSync(victim)).toEqual(["controller.json"])
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })
})

describe("writeBootstrap: the secret reaches the helper's stdin only", () => {
  /** A fake helper that records argv and environment, copies its stdin aside and answers like the real one. */
  const fakeHelper = (bin: Bin, exit = 0) =>
    bin.fake("felhom-bootstrap", {
      script: [
        `cat > ${JSON.stringify(join(bin.dir, "stdin"))}`,
        exit === 0 ? `printf 'written %s\\n' "$4"` : `printf 'felhom-bootstrap: refusing: %s\\n' 'local-token is a symlink' >&2; exit ${exit}`
      ].join("\n")
    })

  const tree = isRoot ? freshTree() : undefined

  it.live.skipIf(!isRoot)("argv is `write <root> <vmid> <name>`, in direct and sudo mode; the content is stdin; nothing logs it", () => {
    if (tree === undefined) return Effect.void
    const bin = makeBinDir()
    const helper = fakeHelper(bin)
    const sudo = bin.fakeSudo()
    return Effect.gen(function*() {
      for (const mode of ["direct", "sudo"] as const) {
        const { logs, r } = yield* withHelper(bin, tree.root, (p) => p.writeBootstrap({ vmid, files: [{ name: "local-token", content: Redacted.make(SECRET) }] }), {
          mode,
          sudo_path: sudo,
          commands: { "felhom-bootstrap": helper }
        })
        expectValue(r)
        expect(bin.argv("felhom-bootstrap")).toEqual([helper, "write", tree.root, "101", "local-token"])
        if (mode === "sudo") expect(bin.argv("sudo")).toEqual([sudo, "-n", helper, "write", tree.root, "101", "local-token"])
        expect(readFileSync(join(bin.dir, "stdin"), "utf8")).toBe(SECRET)
        const env = readFileSync(join(bin.dir, "felhom-bootstrap.env"), "utf8")
        expect(env).not.toContain(SECRET)
        expect(JSON.stringify(bin.argv("felhom-bootstrap"))).not.toContain(SECRET)
        expect(logs.length).toBeGreaterThan(0)
        expect(logs.join("\n")).not.toContain(SECRET)
      }
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live.skipIf(!isRoot)("a failing helper's error carries its stderr, never the content", () => {
    if (tree === undefined) return Effect.void
    const bin = makeBinDir()
    const helper = fakeHelper(bin, 3)
    return Effect.gen(function*() {
      const { logs, r } = yield* withHelper(bin, tree.root, (p) => p.writeBootstrap({ vmid, files: [{ name: "local-token", content: Redacted.make(SECRET) }] }), {
        commands: { "felhom-bootstrap": helper }
      })
      const e = expectError(r)
      expect([e.reason, e.exitCode]).toEqual(["NonZeroExit", 3])
      expect(e.stderrTail).toContain("refusing")
      expect(`${JSON.stringify(e)} ${e.message} ${String(e)}`).not.toContain(SECRET)
      expect(logs.join("\n")).not.toContain(SECRET)
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("invalid names and vmids never spawn", () => {
    const bin = makeBinDir()
    const helper = fakeHelper(bin)
    return Effect.gen(function*() {
      const cases: ReadonlyArray<(p: PrivilegedShape) => Effect.Effect<unknown, PrivilegedError>> = [
        (p) => p.writeBootstrap({ vmid, files: [{ name: "../../etc/shadow" as "local-token", content: "x" }] }),
        (p) => p.writeBootstrap({ vmid: 99 as VmId, files: [{ name: "local-token", content: "x" }] }),
        (p) => p.writeBootstrap({ vmid, files: [{ name: "local-token", content: 42 as unknown as string }] }),
        (p) => p.removeBootstrap("101; rm -rf /" as unknown as VmId),
        (p) => p.unbindFromGuest({ vmid, mpIndex: 256 }),
        (p) => p.unbindFromGuest({ vmid, mpIndex: -1 })
      ]
      for (const c of cases) {
        const e = expectError(yield* withPriv(bin, c, { commands: { "felhom-bootstrap": helper } }))
        expect(e.reason).toBe("InvalidArgument")
      }
      expect(bin.recorded()).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
  })
})

describe("unbindFromGuest", () => {
  it.live("is exactly `pct set <vmid> --delete mp<N>`", () => {
    const bin = makeBinDir()
    const pct = bin.fake("pct")
    return withPriv(bin, (p) => p.unbindFromGuest({ vmid, mpIndex: 7 })).pipe(
      Effect.map((r) => {
        expect(Either.isRight(r)).toBe(true)
        expect(bin.argv("pct")).toEqual([pct, "set", "101", "--delete", "mp7"])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live("a failing pct is a NonZeroExit", () => {
    const bin = makeBinDir()
    bin.fake("pct", { exit: 255, stderr: "CT 101 is locked (backup)\n" })
    return withPriv(bin, (p) => p.unbindFromGuest({ vmid, mpIndex: 0 })).pipe(
      Effect.map((r) => {
        const e = expectError(r)
        expect([e.reason, e.exitCode]).toEqual(["NonZeroExit", 255])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })
})
