/**
 * The Debian package (issue 14): `scripts/package.mjs` builds the .deb once (from the test run's
 * bundle and the pinned runtime, cached in .cache/runtime), then it is inspected (control fields,
 * file list, modes, owners, the release manifest) and installed for real with
 * `dpkg --root=<scratch> --force-script-chrootless`, so the maintainer scripts run with DPKG_ROOT
 * against the scratch root's own /etc/passwd, /etc/group and /etc/sudoers.d. The installed layout
 * runs `version` and `selftest --help` on the packaged node. Then: reinstall over a self-update
 * slot and an edited sudoers file, a package with a broken sudoers file, remove and purge.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, relative } from "node:path"
import { MANIFEST_FILE, ReleaseManifest, REQUIRED_RELEASE_FILES } from "../src/schema/release.js"

const root = join(__dirname, "..")
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
  version: string
  felhomRuntime: { package: string; version: string; integrity: string }
}
const VERSION = pkg.version
const NODE = pkg.felhomRuntime.version

interface Run {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Never spawnSync: a long one keeps vitest's RPC unread (test/bin-support.ts). */
const sh = (cmd: string, args: ReadonlyArray<string>, opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}) =>
  new Promise<Run>((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd ?? "/",
      env: opts.env ?? { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: opts.timeoutMs ?? 60_000
    })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c))
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c))
    child.on("error", reject)
    child.on("close", (status) => resolve({ status, stdout, stderr }))
  })

/** dpkg, dpkg-deb, visudo and useradd: a Debian host (.ci/run installs sudo where it is missing). */
const missingTools = ["dpkg", "dpkg-deb", "visudo", "useradd", "userdel"].filter((t) =>
  !(process.env["PATH"] ?? "/usr/sbin:/usr/bin").split(":").some((d) => existsSync(join(d, t)))
)
const needsTools = describe.skipIf(missingTools.length > 0)
if (missingTools.length > 0) console.warn(`package.test: skipped, this host lacks ${missingTools.join(", ")}`)

const work = mkdtempSync(join(tmpdir(), "felhom-package-"))
const out = join(work, "out")
const deb = join(out, `felhom-agent_${VERSION}_amd64.deb`)
let build: Run

beforeAll(async () => {
  if (missingTools.length > 0) return
  build = await sh(process.execPath, [join(root, "scripts", "package.mjs"), "--out", out], {
    cwd: root,
    env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: process.env["HOME"] ?? "/root" },
    timeoutMs: 240_000
  })
  if (build.status !== 0) throw new Error(`npm run package failed:\n${build.stdout}\n${build.stderr}`)
}, 240_000)

afterAll(() => rmSync(work, { recursive: true, force: true }))

// ---------------------------------------------------------------------------------------------
// a scratch dpkg root

const ACCOUNTS = {
  passwd: "root:x:0:0:root:/root:/bin/sh\n",
  group: "root:x:0:\n",
  shadow: "root:*:19000:0:99999:7:::\n",
  gshadow: "root:*::\n"
}
/** What the package Depends on, as installed (dpkg checks them; their file lists are empty). */
const DEPENDS = [["sudo", "1.9.13p3-1"], ["systemd", "252.30-1"], ["passwd", "1:4.13+dfsg1-1"], ["coreutils", "9.1-1"]]

const scratchRoot = (name: string, accounts: Partial<typeof ACCOUNTS> = {}) => {
  const r = join(work, name)
  for (const d of ["var/lib/dpkg/updates", "var/lib/dpkg/info", "var/lib/dpkg/triggers", "etc"]) mkdirSync(join(r, d), { recursive: true })
  writeFileSync(
    join(r, "var/lib/dpkg/status"),
    DEPENDS.map(([p, v]) => `Package: ${p}\nStatus: install ok installed\nVersion: ${v}\nArchitecture: amd64\nMaintainer: x\nDescription: x\n\n`).join("")
  )
  for (const [p] of DEPENDS) writeFileSync(join(r, `var/lib/dpkg/info/${p}.list`), "")
  writeFileSync(join(r, "var/lib/dpkg/available"), "")
  for (const [f, text] of Object.entries({ ...ACCOUNTS, ...accounts })) writeFileSync(join(r, "etc", f), text)
  chmodSync(join(r, "etc/shadow"), 0o640)
  return r
}

const dpkg = (r: string, args: ReadonlyArray<string>) =>
  sh("dpkg", [`--root=${r}`, "--force-script-chrootless", "--force-not-root", `--log=${join(r, "dpkg.log")}`, ...args], { timeoutMs: 120_000 })

const modeOf = (p: string) => lstatSync(p).mode & 0o7777
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex")
const files = (dir: string): Array<string> =>
  readdirSync(dir).sort().flatMap((n) => (lstatSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : [join(dir, n)]))

// ---------------------------------------------------------------------------------------------

needsTools("the built package", { timeout: 120_000 }, () => {
  it("control: name, version from package.json, amd64, maintainer, Depends without nodejs, description", async () => {
    const f = await sh("dpkg-deb", ["-f", deb])
    expect(f.status).toBe(0)
    const field = (k: string) => new RegExp(`^${k}: (.*)$`, "m").exec(f.stdout)?.[1]
    expect(field("Package")).toBe("felhom-agent")
    expect(field("Version")).toBe(VERSION)
    expect(field("Architecture")).toBe("amd64")
    expect(field("Maintainer")).toMatch(/\S+ <\S+@\S+>/)
    expect(field("Description")).toMatch(/felhom host agent/)
    const depends = field("Depends")!.split(",").map((d) => d.trim().split(" ")[0])
    expect(depends).toEqual(expect.arrayContaining(["sudo", "systemd", "passwd"]))
    expect(depends.some((d) => /node/.test(d!))).toBe(false)
    expect(Number(field("Installed-Size"))).toBeGreaterThan(100_000) // KiB: the runtime is ~95 MiB
    const info = await sh("dpkg-deb", ["-I", deb])
    expect(info.stdout).toMatch(/postinst/)
    expect(info.stdout).toMatch(/prerm/)
    expect(info.stdout).toMatch(/postrm/)
    expect(info.stdout).not.toMatch(/conffiles/) // nothing lands in /etc (enroll writes agent.json)
    expect(build.stdout).toMatch(/packaged node v20\.\d+\.\d+ \(ABI 115\) loads the staged better-sqlite3/)
  })

  it("file list: the release tree, units, helpers, sudoers template, docs; root:root; explicit modes", async () => {
    const c = await sh("dpkg-deb", ["-c", deb])
    expect(c.status).toBe(0)
    const entries = new Map(c.stdout.trim().split("\n").map((line) => {
      const [perm, owner, , , , path, , target] = line.split(/\s+/)
      return [path!.replace(/^\.\//, "/").replace(/\/$/, "") || "/", { perm: perm!, owner: owner!, target }] as const
    }))
    for (const [path, e] of entries) {
      expect(e.owner, path).toBe("root/root")
      // nothing setuid/setgid/sticky, nothing group- or world-writable (symlinks' own mode means nothing)
      if (!e.perm.startsWith("l")) expect(e.perm, path).toMatch(/^[-d]r[-w][-x]r-[-x]r-[-x]$/)
    }
    const perm = (p: string) => entries.get(p)?.perm
    const pfx = "/opt/felhom-agent/package"
    expect(perm(`${pfx}/bin/node`)).toBe("-rwxr-xr-x")
    expect(perm(`${pfx}/bin/felhom-agent`)).toBe("-rwxr-xr-x")
    expect(perm(`${pfx}/lib/felhom-agent.cjs`)).toBe("-rw-r--r--")
    expect(perm(`${pfx}/lib/bundle/felhom-agent.cjs`)).toBe("-rw-r--r--")
    expect(perm(`${pfx}/lib/node_modules/better-sqlite3/build/Release/better_sqlite3.node`)).toBe("-rwxr-xr-x")
    expect(perm(`${pfx}/lib/node_modules/bindings/bindings.js`)).toBe("-rw-r--r--")
    expect(perm(`${pfx}/lib/node_modules/file-uri-to-path/index.js`)).toBe("-rw-r--r--")
    expect(perm(`${pfx}/RELEASE.json`)).toBe("-rw-r--r--")
    expect(entries.get("/usr/bin/felhom-agent")).toMatchObject({ perm: "lrwxrwxrwx", target: "/opt/felhom-agent/current/bin/felhom-agent" })
    for (const u of readdirSync(join(root, "configs", "systemd"))) expect(perm(`/lib/systemd/system/${u}`), u).toBe("-rw-r--r--")
    for (const h of readdirSync(join(root, "configs", "libexec"))) expect(perm(`/usr/local/libexec/felhom-agent/${h}`), h).toBe("-rwxr-xr-x")
    for (const g of readdirSync(join(root, "configs", "golden"))) expect(entries.has(`/usr/local/share/felhom-agent/golden/${g}`), g).toBe(true)
    expect(perm("/usr/share/felhom-agent/sudoers")).toBe("-rw-r--r--")
    expect(perm("/usr/share/doc/felhom-agent/agent.example.json")).toBe("-rw-r--r--")
    expect(perm("/usr/share/doc/felhom-agent/felhom-agent.txt")).toBe("-rw-r--r--")
    expect(perm("/usr/share/doc/felhom-agent/copyright")).toBe("-rw-r--r--")
    // what is not shipped: no /etc file (sudoers lands through postinst's visudo check), no dev TLS keys, no node_modules beyond the addon's
    expect([...entries.keys()].filter((p) => p.startsWith("/etc"))).toEqual([])
    expect([...entries.keys()].filter((p) => /configs\/sim|\.pem$|\.key$/.test(p))).toEqual([])
    expect(new Set([...entries.keys()].flatMap((p) => /\/lib\/node_modules\/([^/]+)/.exec(p)?.[1] ?? []))).toEqual(
      new Set(["better-sqlite3", "bindings", "file-uri-to-path"])
    )
  })

  it("refuses a runtime tarball that is not the pinned one", async () => {
    const cache = join(work, "bad-cache")
    mkdirSync(cache)
    writeFileSync(join(cache, `${pkg.felhomRuntime.package}-${NODE}.tgz`), "not node")
    const r = await sh(process.execPath, [join(root, "scripts", "package.mjs"), "--out", join(work, "bad-out"), "--cache", cache], { cwd: root })
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/integrity sha512-\S+ is not the pinned sha512-\S+; refusing it/)
    expect(existsSync(join(work, "bad-out", `felhom-agent_${VERSION}_amd64.deb`))).toBe(false)
  })
})

needsTools("installed into a scratch root (dpkg --root, maintainer scripts with DPKG_ROOT)", { timeout: 120_000 }, () => {
  const r = join(work, "root")
  const pfx = join(r, "opt/felhom-agent")
  const sudoers = join(r, "etc/sudoers.d/felhom-agent")
  const run = (args: ReadonlyArray<string>, extra: Record<string, string> = {}) =>
    sh(join(pfx, "current/bin/felhom-agent"), args, { env: { PATH: "/usr/bin:/bin", ...extra } })

  it("installs: service user, state dirs, current and last-good → package, sudoers 0440 passing visudo", async () => {
    scratchRoot("root")
    const i = await dpkg(r, ["-i", deb])
    expect(i.status, i.stderr).toBe(0)
    const user = readFileSync(join(r, "etc/passwd"), "utf8").split("\n").find((l) => l.startsWith("felhom-agent:"))!
    const [, , uid, gid, , home, shell] = user.split(":")
    expect(Number(uid)).toBeGreaterThan(0)
    expect(Number(uid)).toBeLessThan(1000) // a system account
    expect([home, shell]).toEqual(["/var/lib/felhom-agent", "/usr/sbin/nologin"])
    expect(readFileSync(join(r, "etc/group"), "utf8")).toMatch(new RegExp(`^felhom-agent:x:${gid}:`, "m"))
    expect(readFileSync(join(r, "etc/shadow"), "utf8")).toMatch(/^felhom-agent:!/m) // no password
    const state = statSync(join(r, "var/lib/felhom-agent"))
    expect([state.uid, state.gid, state.mode & 0o7777]).toEqual([Number(uid), Number(gid), 0o700])
    for (const d of ["var/lib/felhom-agent-root", "var/lib/felhom-agent-root/bootstrap"]) {
      const s = statSync(join(r, d))
      expect([s.uid, s.gid, s.mode & 0o7777], d).toEqual([0, 0, 0o755])
    }
    expect(readlinkSync(join(pfx, "current"))).toBe("package")
    expect(readlinkSync(join(pfx, "last-good"))).toBe("package")
    expect(existsSync(join(pfx, "update.json"))).toBe(false)
    const s = statSync(sudoers)
    expect([s.uid, s.gid, s.mode & 0o7777]).toEqual([0, 0, 0o440])
    expect(readFileSync(sudoers, "utf8")).toBe(readFileSync(join(root, "configs/sudoers/felhom-agent"), "utf8"))
    expect((await sh("visudo", ["-c", "-f", sudoers])).status).toBe(0)
    expect(readdirSync(join(r, "etc/sudoers.d"))).toEqual(["felhom-agent"]) // no temp copy left
    // DPKG_ROOT: the live systemd was not asked to enable anything in the scratch root
    expect(existsSync(join(r, "etc/systemd"))).toBe(false)
  })

  it("runs `version` and `selftest --help` from the installed layout on the packaged node, with its code cache", async () => {
    const probe = join(work, "probe.cjs")
    writeFileSync(probe, `process.on("exit", () => process.stderr.write("probe " + JSON.stringify([process.execPath, process.version, process.execArgv, process.argv[1]]) + "\\n"))`)
    const v = await run(["version"], { NODE_OPTIONS: `--require ${probe}`, FELHOM_AGENT_DEBUG_CACHE: "1" })
    expect(v.status, v.stderr).toBe(0)
    expect(v.stdout.trim()).toBe(`felhom-agent ${VERSION}`)
    const line = v.stderr.split("\n").find((l) => l.startsWith("probe "))!
    const [exec, version, execArgv, main] = JSON.parse(line.slice("probe ".length)) as [string, string, Array<string>, string]
    expect(exec).toBe(realpathSync(join(pfx, "package/bin/node")))
    expect(exec).not.toBe(process.execPath)
    expect(version).toBe(`v${NODE}`)
    expect(execArgv).toEqual(["--max-semi-space-size=1", "--optimize-for-size", "--v8-pool-size=1"])
    // enroll reads the files it installs from <dirname(dirname(realpath(argv[1])))>/configs (src/programs/cli/enroll.ts)
    expect(readFileSync(join(dirname(dirname(realpathSync(main))), "configs", "sudoers", "felhom-agent"), "utf8")).toBe(
      readFileSync(join(root, "configs/sudoers/felhom-agent"), "utf8")
    )
    // the cache primed at build time with this node and these flags is taken as is
    expect(v.stderr).toMatch(/^felhom-agent: code cache accepted$/m)
    // a V8 without a primed cache (other flags here; on a host: another CPU) runs the bundle as is, and writes nothing into the tree
    const before = readdirSync(join(pfx, "package/lib/bundle")).sort()
    const other = await run(["version"], { NODE_OPTIONS: "--max-old-space-size=100", FELHOM_AGENT_DEBUG_CACHE: "1" })
    expect(other.status, other.stderr).toBe(0)
    expect(other.stdout.trim()).toBe(`felhom-agent ${VERSION}`)
    expect(other.stderr).toMatch(/^felhom-agent: code cache absent \(release tree: none written\)$/m)
    expect(readdirSync(join(pfx, "package/lib/bundle")).sort()).toEqual(before)
    const h = await run(["selftest", "--help"])
    expect(h.status, h.stderr).toBe(0)
    expect(h.stdout).toMatch(/selftest/)
    expect(h.stdout).toMatch(/read-only health report/)
  })

  it("RELEASE.json lists every file of the tree with its size, mode and sha256, and nothing else", async () => {
    const x = r // as installed
    const tree = join(x, "opt/felhom-agent/package")
    const manifest = Schema.decodeUnknownSync(ReleaseManifest)(JSON.parse(readFileSync(join(tree, MANIFEST_FILE), "utf8")), { onExcessProperty: "error" })
    expect(manifest.version).toBe(VERSION)
    expect(manifest.node).toBe(NODE)
    const onDisk = files(tree).map((f) => relative(tree, f)).filter((f) => f !== MANIFEST_FILE)
    expect(manifest.files.map((f) => f.path).sort()).toEqual(onDisk)
    for (const f of manifest.files) {
      const bytes = readFileSync(join(tree, f.path))
      expect({ path: f.path, size: bytes.length, sha256: sha256(bytes), mode: statSync(join(tree, f.path)).mode & 0o777 }).toEqual(f)
    }
    for (const r of REQUIRED_RELEASE_FILES) expect(onDisk).toContain(r)
    // the help text for /usr/share/doc: man-page sections and every command of the tree's own --help
    const help = readFileSync(join(x, "usr/share/doc/felhom-agent/felhom-agent.txt"), "utf8")
    for (const s of ["NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "COMMANDS"]) expect(help).toMatch(new RegExp(`^${s}$`, "m"))
    for (const cmd of ["version", "daemon", "selftest", "enroll", "recover"]) expect(help).toMatch(new RegExp(`^ {7}${cmd}\\b`, "m"))
    expect(help).not.toMatch(/\u001b\[/)
  })

  it("reinstall: apt wins over a self-update slot (kept), an edited sudoers file is kept, agent.json untouched", async () => {
    // a self-update in trial on slot b; an operator's edit; enroll's config
    mkdirSync(join(pfx, "slots/b/bin"), { recursive: true })
    writeFileSync(join(pfx, "slots/b/RELEASE.json"), "{}")
    symlinkSync("slots/b", join(pfx, "current.new"))
    renameSync(join(pfx, "current.new"), join(pfx, "current"))
    writeFileSync(join(pfx, "update.json"), `{"state":"trial","slot":"slots/b","previous":"package"}\n`)
    chmodSync(sudoers, 0o640)
    writeFileSync(sudoers, `${readFileSync(sudoers, "utf8")}\n# local: pct lives elsewhere here\n`)
    chmodSync(sudoers, 0o440)
    const edited = readFileSync(sudoers, "utf8")
    mkdirSync(join(r, "etc/felhom-agent"), { recursive: true })
    writeFileSync(join(r, "etc/felhom-agent/agent.json"), `{"host_id":"h1"}\n`)

    const i = await dpkg(r, ["-i", deb])
    expect(i.status, i.stderr).toBe(0)
    expect(readlinkSync(join(pfx, "current"))).toBe("package")
    expect(readlinkSync(join(pfx, "last-good"))).toBe("package")
    expect(existsSync(join(pfx, "update.json"))).toBe(false)
    expect(existsSync(join(pfx, "slots/b/RELEASE.json"))).toBe(true)
    expect(readFileSync(sudoers, "utf8")).toBe(edited)
    expect(i.stderr).toMatch(/sudoers\.d\/felhom-agent was edited locally and is kept/)
    const dist = join(r, "etc/sudoers.d/felhom-agent.dpkg-dist")
    expect(readFileSync(dist, "utf8")).toBe(readFileSync(join(root, "configs/sudoers/felhom-agent"), "utf8"))
    expect(modeOf(dist)).toBe(0o440)
    expect(readFileSync(join(r, "etc/felhom-agent/agent.json"), "utf8")).toBe(`{"host_id":"h1"}\n`)
    // one service user still
    expect(readFileSync(join(r, "etc/passwd"), "utf8").match(/^felhom-agent:/gm)).toHaveLength(1)
  })

  it("remove keeps state and the user but drops the sudoers file; purge removes state, slots, user, and never the PBS key", async () => {
    mkdirSync(join(r, "etc/felhom-agent/pbs"), { recursive: true })
    writeFileSync(join(r, "etc/felhom-agent/pbs/encryption-key.json"), "K")
    writeFileSync(join(r, "etc/felhom-agent/secrets.env"), "FELHOM_AGENT_HUB_API_KEY=x\n")
    writeFileSync(join(r, "var/lib/felhom-agent/state.db"), "db")
    writeFileSync(join(pfx, "update.json"), `{"state":"committed"}\n`)

    const rm = await dpkg(r, ["-r", "felhom-agent"])
    expect(rm.status, rm.stderr).toBe(0)
    expect(existsSync(sudoers)).toBe(false)
    expect(existsSync(join(pfx, "package"))).toBe(false)
    expect(existsSync(join(r, "usr/bin/felhom-agent"))).toBe(false)
    expect(readFileSync(join(r, "var/lib/felhom-agent/state.db"), "utf8")).toBe("db")
    expect(existsSync(join(pfx, "slots/b/RELEASE.json"))).toBe(true)
    expect(readFileSync(join(r, "etc/passwd"), "utf8")).toMatch(/^felhom-agent:/m)

    const purge = await dpkg(r, ["-P", "felhom-agent"])
    expect(purge.status, purge.stderr).toBe(0)
    expect(existsSync(join(r, "var/lib/felhom-agent"))).toBe(false)
    expect(existsSync(pfx)).toBe(false) // slots, current, last-good, update.json, the lock
    expect(existsSync(join(r, "etc/felhom-agent/agent.json"))).toBe(false)
    expect(existsSync(join(r, "etc/felhom-agent/secrets.env"))).toBe(false)
    expect(readFileSync(join(r, "etc/passwd"), "utf8")).not.toMatch(/^felhom-agent:/m)
    expect(readFileSync(join(r, "etc/group"), "utf8")).not.toMatch(/^felhom-agent:/m)
    expect(readFileSync(join(r, "etc/felhom-agent/pbs/encryption-key.json"), "utf8")).toBe("K")
    expect(purge.stderr).toMatch(/kept \/etc\/felhom-agent\/pbs: the PBS encryption key/)
    expect(existsSync(join(r, "var/lib/felhom-agent-root"))).toBe(false) // empty bootstrap tree: gone
  })
})

/** A sudoers file visudo rejects (an unclosed runas list). */
const BROKEN_SUDOERS = "felhom-agent ALL = (root NOPASSWD: ALL\n"

/**
 * The refusals run the package's own maintainer scripts (dpkg-deb -e) with DPKG_ROOT on a small
 * root holding only what postinst reads (the sudoers template, the release directory): dpkg adds
 * nothing to these checks, and unpacking the ~115 MiB payload again for each costs ~5 s.
 */
needsTools("postinst refusals (the package's scripts, DPKG_ROOT on a small root)", { timeout: 120_000 }, () => {
  const control = join(work, "control")
  const miniRoot = async (name: string, sudoers: string, accounts: Partial<typeof ACCOUNTS> = {}) => {
    if (!existsSync(control)) expect((await sh("dpkg-deb", ["-e", deb, control])).status).toBe(0)
    const r = scratchRoot(name, accounts)
    mkdirSync(join(r, "opt/felhom-agent/package"), { recursive: true })
    mkdirSync(join(r, "usr/share/felhom-agent"), { recursive: true })
    writeFileSync(join(r, "usr/share/felhom-agent/sudoers"), sudoers)
    return r
  }
  const postinst = (r: string) =>
    sh("sh", [join(control, "postinst"), "configure", ""], { env: { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", DPKG_ROOT: r } })

  it("a broken sudoers file never lands: postinst fails and /etc/sudoers.d/felhom-agent does not exist", async () => {
    const r = await miniRoot("mini-bad", BROKEN_SUDOERS)
    const i = await postinst(r)
    expect(i.status).toBe(1)
    expect(i.stderr).toMatch(/does not pass visudo -c; nothing was installed/)
    expect(readdirSync(join(r, "etc/sudoers.d"))).toEqual([])
  })

  it("an upgrade to a broken sudoers file fails and leaves the installed one in force", async () => {
    const good = readFileSync(join(root, "configs/sudoers/felhom-agent"), "utf8")
    const r = await miniRoot("mini-upgrade", good)
    expect((await postinst(r)).status).toBe(0)
    expect(readFileSync(join(r, "etc/sudoers.d/felhom-agent"), "utf8")).toBe(good)
    writeFileSync(join(r, "usr/share/felhom-agent/sudoers"), BROKEN_SUDOERS) // what dpkg unpacked
    const i = await postinst(r)
    expect(i.status).toBe(1)
    expect(readFileSync(join(r, "etc/sudoers.d/felhom-agent"), "utf8")).toBe(good)
    expect(readdirSync(join(r, "etc/sudoers.d"))).toEqual(["felhom-agent"])
  })

  it("a sudoers file not installed by the package is replaced, the old copy kept aside (inert: its name has a dot)", async () => {
    const good = readFileSync(join(root, "configs/sudoers/felhom-agent"), "utf8")
    const r = await miniRoot("mini-foreign", good)
    mkdirSync(join(r, "etc/sudoers.d"))
    writeFileSync(join(r, "etc/sudoers.d/felhom-agent"), "# an older hand-installed allowlist\n")
    const i = await postinst(r)
    expect(i.status, i.stderr).toBe(0)
    expect(readFileSync(join(r, "etc/sudoers.d/felhom-agent"), "utf8")).toBe(good)
    expect(readFileSync(join(r, "etc/sudoers.d/felhom-agent.dpkg-old"), "utf8")).toBe("# an older hand-installed allowlist\n")
  })

  it("an existing felhom-agent account with root's uid is refused before anything is installed", async () => {
    const r = await miniRoot("mini-uid0", readFileSync(join(root, "configs/sudoers/felhom-agent"), "utf8"), {
      passwd: `${ACCOUNTS.passwd}felhom-agent:x:0:0::/var/lib/felhom-agent:/bin/sh\n`
    })
    const i = await postinst(r)
    expect(i.status).toBe(1)
    expect(i.stderr).toMatch(/refusing the existing account felhom-agent \(uid '0'/)
    expect(existsSync(join(r, "etc/sudoers.d/felhom-agent"))).toBe(false)
    expect(existsSync(join(r, "opt/felhom-agent/current"))).toBe(false)
  })
})
