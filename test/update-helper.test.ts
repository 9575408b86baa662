/**
 * The root helper felhom-update (issue 14): configs/libexec/felhom-update run for real against a
 * scratch root (FELHOM_UPDATE_TEST_ROOT) whose `current` release carries a stand-in `release
 * verify` (test/update-gate-support.ts). The service user's download is hostile: symlinks,
 * special and setuid files are refused in the root-owned copy; the source rewritten while the
 * verifier runs changes nothing (the copy is what is verified and installed); a failed verify
 * changes no slot; current's and last-good's slots are never written; nothing is staged during a
 * trial. Plus the sudoers rule for the two argv shapes. Needs root.
 */
import { afterAll, describe, expect, it, vi } from "@effect/vitest"
import { spawn, spawnSync } from "node:child_process"
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { makeSudoSandbox } from "./privileged-support.js"
import { type Host, makeHost, runUpdate, writeAgentConfig, writeDownload } from "./update-gate-support.js"

const isRoot = process.getuid?.() === 0
// Generous per-test limit: the shared CI machine runs at several times its core count.
vi.setConfig({ testTimeout: 120_000 })
const rootSuite = isRoot ? describe.concurrent : describe.skip
const SERVICE_UID = 64999

const hosts: Array<Host> = []
const sandbox = makeSudoSandbox()
afterAll(() => {
  for (const h of hosts) h.cleanup()
  sandbox?.cleanup()
})

/** A host on package 1.0.0 with agent.json and the service user's download of `version`. */
const hostWithDownload = async (version = "1.1.0", files: Record<string, string> = { "lib/felhom-agent.cjs": "console.log('1.1.0')\n" }) => {
  const h = await makeHost({ version: "1.0.0" })
  hosts.push(h)
  writeAgentConfig(h)
  const src = writeDownload(h, { version, files })
  chownTree(join(h.root, "var", "lib", "felhom-agent"), SERVICE_UID)
  return { h, src }
}

const chownTree = (p: string, uid: number) => {
  chownSync(p, uid, uid)
  if (lstatSync(p).isDirectory()) for (const e of readdirSync(p)) chownTree(join(p, e), uid)
}

/** Every entry below `dir` with its uid and mode, for "unchanged" and "root's" comparisons. */
const snapshot = (dir: string): Record<string, string> => {
  const out: Record<string, string> = {}
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p)
    out[rel] = `${st.uid} ${(st.mode & 0o7777).toString(8)} ${st.isFile() ? readFileSync(p, "utf8") : st.isSymbolicLink() ? "link" : "dir"}`
    if (st.isDirectory()) for (const e of readdirSync(p)) walk(join(p, e), `${rel}/${e}`)
  }
  if (existsSync(dir)) walk(dir, ".")
  return out
}

const stagingLeftovers = (h: Host) => readdirSync(join(h.prefix, "slots")).filter((e) => e.startsWith(".staging"))

rootSuite("felhom-update stage", () => {
  it("stages the download into slots/a: a root-owned copy, dirs 0755, verified as the copy, update.json staged", async () => {
    const { h, src } = await hostWithDownload()
    // a download made under the service user's umask 077
    chmodSync(join(src, "lib"), 0o700)
    chmodSync(join(src, "bin"), 0o700)
    const r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toBe("staged a 1.1.0\n")
    const slot = join(h.prefix, "slots", "a")
    const snap = snapshot(slot)
    expect(Object.keys(snap).sort()).toEqual([".", "./RELEASE.json", "./bin", "./bin/felhom-agent", "./lib", "./lib/felhom-agent.cjs"])
    for (const [p, v] of Object.entries(snap)) {
      const [uid, mode] = v.split(" ")
      expect(uid, p).toBe("0")
      if (v.endsWith("dir")) expect(mode, p).toBe("755")
    }
    expect(snap["./bin/felhom-agent"]!.split(" ")[1]).toBe("755")
    expect(snap["./lib/felhom-agent.cjs"]).toBe("0 644 console.log('1.1.0')\n")
    // the verifier ran as root on the staging copy with the fixed config and expected version
    const argv = readFileSync(join(h.base, "verify.argv"), "utf8").split("\0").slice(0, -1)
    expect(argv.slice(0, 3)).toEqual(["release", "verify", "--dir"])
    expect(argv[3]).toMatch(new RegExp(`^${h.prefix}/slots/\\.staging\\.[A-Za-z0-9]{6}/tree$`))
    expect(argv.slice(4)).toEqual(["--config", join(h.root, "etc", "felhom-agent", "agent.json"), "--expect-version", "1.1.0"])
    expect(h.state()).toMatchObject({ state: "staged", slot: "slots/a", version: "1.1.0", staged_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/) })
    expect(statSync(join(h.prefix, "update.json")).mode & 0o777).toBe(0o644)
    expect(stagingLeftovers(h)).toEqual([])
    // nothing else moved
    expect(h.link("current")).toBe("package")
    expect(h.link("last-good")).toBe("package")
    expect(h.systemctlLog()).toEqual([])
  })

  it("runs the verifier with an empty environment: nothing of the caller's (NODE_OPTIONS, secrets) reaches root's node", async () => {
    const { h } = await hostWithDownload()
    const r = await runUpdate(h, ["stage", "1.1.0"], { NODE_OPTIONS: "--require /tmp/evil.js", FELHOM_AGENT_HUB_API_KEY: "hub-secret-123", LD_PRELOAD: "/tmp/evil.so" })
    expect(r.code, r.stderr).toBe(0)
    const env = readFileSync(join(h.base, "verify.env"), "utf8")
    expect(env).not.toMatch(/NODE_OPTIONS|hub-secret-123|LD_PRELOAD|FELHOM_UPDATE_TEST/)
    expect(env).toMatch(/^PATH=\/usr\/sbin:\/usr\/bin:\/sbin:\/bin$/m)
  })

  it.each([
    ["a symlink", (src: string) => symlinkSync("/etc/shadow", join(src, "lib", "shadow"))],
    ["a symlinked directory", (src: string) => symlinkSync("/root", join(src, "lib", "home"))],
    ["a fifo", (src: string) => spawnSync("mkfifo", [join(src, "lib", "pipe")])],
    ["a setuid file", (src: string) => chmodSync(join(src, "lib", "felhom-agent.cjs"), 0o4755)],
    ["a setgid directory", (src: string) => chmodSync(join(src, "lib"), 0o2755)],
    ["a hidden symlink", (src: string) => symlinkSync("/", join(src, "bin", ".x"))],
    ["a symlink whose name forges a log line", (src: string) => symlinkSync("/", join(src, "lib", "x\nstaged a 9.9.9"))]
  ])("refuses %s in the download (exit 3): no slot, state unchanged, staging removed", async (_, plant) => {
    const { h, src } = await hostWithDownload()
    plant(src)
    const r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code, r.stdout).toBe(3)
    expect(r.stderr).toMatch(/only directories and regular files/)
    expect(r.stderr.trimEnd().split("\n")).toHaveLength(1)
    expect(existsSync(join(h.prefix, "slots", "a"))).toBe(false)
    expect(h.state()).toBeUndefined()
    expect(stagingLeftovers(h)).toEqual([])
    expect(existsSync(join(h.base, "verify.argv"))).toBe(false)
  })

  it("refuses a download directory that is a symlink, or missing", async () => {
    const { h, src } = await hostWithDownload()
    const elsewhere = join(h.base, "elsewhere")
    rmSync(elsewhere, { recursive: true, force: true })
    spawnSync("mv", [src, elsewhere])
    symlinkSync(elsewhere, src)
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(3)
    expect((await runUpdate(h, ["stage", "1.2.0"])).code).toBe(3)
    expect(existsSync(join(h.prefix, "slots", "a"))).toBe(false)
    expect(h.state()).toBeUndefined()
  })

  it("TOCTOU: the source rewritten while verify runs changes nothing; the verified copy is what lands", async () => {
    const { h, src } = await hostWithDownload()
    writeFileSync(join(h.base, "verify.hook"), [
      "#!/bin/sh",
      `printf 'evil\\n' > '${src}/lib/felhom-agent.cjs'`,
      `ln -s /etc/shadow '${src}/lib/shadow'`,
      `printf 'planted\\n' > '${src}/bin/extra'`
    ].join("\n") + "\n", { mode: 0o755 })
    const r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code, r.stderr).toBe(0)
    const slot = join(h.prefix, "slots", "a")
    expect(readFileSync(join(slot, "lib", "felhom-agent.cjs"), "utf8")).toBe("console.log('1.1.0')\n")
    expect(existsSync(join(slot, "lib", "shadow"))).toBe(false)
    expect(existsSync(join(slot, "bin", "extra"))).toBe(false)
    // and the source really was rewritten
    expect(readFileSync(join(src, "lib", "felhom-agent.cjs"), "utf8")).toBe("evil\n")
  })

  it("a release failing verification (exit 4) changes no slot and no state; the reason is one line", async () => {
    const { h, src } = await hostWithDownload()
    // slots/a holds an earlier staged release: it must survive a failed stage
    h.writeRelease(join(h.prefix, "slots", "a"), { version: "1.0.5" })
    const before = snapshot(join(h.prefix, "slots"))
    h.writeState({ state: "reverted", slot: "slots/a", previous: "package", version: "1.0.5", reason: "x" })
    writeFileSync(join(src, "lib", "felhom-agent.cjs"), "tampered\n")
    const r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code).toBe(4)
    expect(r.stderr).toBe("felhom-update: release 1.1.0 failed verification: checksum mismatch\n")
    expect(snapshot(join(h.prefix, "slots"))).toEqual(before)
    expect(h.state()).toMatchObject({ state: "reverted", version: "1.0.5" })
    expect(stagingLeftovers(h)).toEqual([])
    // an unlisted file, and a wrong version, fail too
    writeFileSync(join(src, "lib", "felhom-agent.cjs"), "console.log('1.1.0')\n")
    writeFileSync(join(src, "lib", "unlisted.js"), "x\n")
    expect((await runUpdate(h, ["stage", "1.1.0"])).stderr).toMatch(/unlisted file/)
    rmSync(join(src, "lib", "unlisted.js"))
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(0)
  })

  it("never writes current's or last-good's slot; refuses when both slots are taken", async () => {
    const { h } = await hostWithDownload()
    h.writeRelease(join(h.prefix, "slots", "a"), { version: "1.0.1" })
    h.setLink("current", "slots/a")
    h.setLink("last-good", "slots/a")
    let r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.stdout, r.stderr).toBe("staged b 1.1.0\n")
    expect(readFileSync(join(h.prefix, "slots", "a", "RELEASE.json"), "utf8")).toMatch(/"1\.0\.1"/)

    // current on b (mid-flight after a commit), last-good on a: no slot is free
    h.setLink("current", "slots/b")
    h.writeState({ state: "committed", slot: "slots/b", previous: "slots/a", version: "1.1.0" })
    const before = snapshot(join(h.prefix, "slots"))
    r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/both slots are in use/)
    expect(snapshot(join(h.prefix, "slots"))).toEqual(before)

    // current on package, last-good on b: a is free
    h.setLink("current", "package")
    h.setLink("last-good", "slots/b")
    r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.stdout, r.stderr).toBe("staged a 1.1.0\n")
    expect(readFileSync(join(h.prefix, "slots", "b", "RELEASE.json"), "utf8")).toMatch(/"1\.1\.0"/)
  })

  it("refuses during a trial, with an unreadable journal, and without a sane current", async () => {
    const { h } = await hostWithDownload()
    h.writeState({ state: "trial", slot: "slots/b", previous: "package", version: "1.0.9", started_at: "x", attempt: 1 })
    let r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/health window/)
    writeFileSync(join(h.prefix, "update.json"), "garbage\n")
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(3)
    rmSync(join(h.prefix, "update.json"))
    h.setLink("current", "/tmp")
    r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/current is not a symlink/)
    expect(existsSync(join(h.prefix, "slots", "a"))).toBe(false)
  })

  it("refuses while a recorded revert is unfinished (current still on the reverted slot): the record is not erased", async () => {
    const { h } = await hostWithDownload()
    // the gate wrote reverted, then died before flipping current back to package
    h.writeRelease(join(h.prefix, "slots", "a"), { version: "1.0.5" })
    h.setLink("current", "slots/a")
    const rec = { state: "reverted", slot: "slots/a", previous: "package", version: "1.0.5", reason: "x" }
    h.writeState(rec)
    const r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/revert of slots\/a is unfinished/)
    expect(h.state()).toEqual(rec)
    expect(existsSync(join(h.prefix, "slots", "b"))).toBe(false)
    // once the gate has flipped current back, staging goes ahead (slots/a is free again)
    h.setLink("current", "package")
    expect((await runUpdate(h, ["stage", "1.1.0"])).stdout).toBe("staged a 1.1.0\n")
  })

  it("refuses when the verifier's config or the prefix could be written by someone else", async () => {
    const { h } = await hostWithDownload()
    const cfg = join(h.root, "etc", "felhom-agent", "agent.json")
    chmodSync(cfg, 0o666)
    expect((await runUpdate(h, ["stage", "1.1.0"])).stderr).toMatch(/agent\.json must be a root-owned file only root can write/)
    chmodSync(cfg, 0o644)
    chownSync(cfg, SERVICE_UID, SERVICE_UID)
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(3)
    chownSync(cfg, 0, 0)
    chmodSync(h.prefix, 0o777)
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(3)
    chmodSync(h.prefix, 0o755)
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(0)
  })

  it("re-staging replaces a staged release (its record withdrawn first) and removes staging leftovers", async () => {
    const { h } = await hostWithDownload()
    expect((await runUpdate(h, ["stage", "1.1.0"])).stdout).toBe("staged a 1.1.0\n")
    mkdirSync(join(h.prefix, "slots", ".staging.ABCDEF", "tree"), { recursive: true })
    writeDownload(h, { version: "1.2.0" })
    const r = await runUpdate(h, ["stage", "1.2.0"])
    expect(r.stdout, r.stderr).toBe("staged a 1.2.0\n")
    expect(h.state()).toMatchObject({ state: "staged", slot: "slots/a", version: "1.2.0" })
    expect(readFileSync(join(h.prefix, "slots", "a", "RELEASE.json"), "utf8")).toMatch(/"1\.2\.0"/)
    expect(stagingLeftovers(h)).toEqual([])
  })

  it("gives up at once while the gate holds the lock", async () => {
    const { h } = await hostWithDownload()
    const lock = join(h.prefix, ".update.lock")
    writeFileSync(lock, "", { mode: 0o600 })
    const holder = spawn("flock", [lock, "sleep", "10"], { stdio: "ignore" })
    await new Promise((r) => setTimeout(r, 300))
    try {
      const r = await runUpdate(h, ["stage", "1.1.0"])
      expect(r.code).toBe(3)
      expect(r.stderr).toMatch(/an update is in progress/)
    } finally {
      holder.kill("SIGKILL")
    }
    expect(statSync(lock).mode & 0o777).toBe(0o600)
  })

  it.each([
    [["stage"]],
    [["stage", "1.2"]],
    [["stage", "1.2.3/../../x"]],
    [["stage", "../1.2.3"]],
    [["stage", "1.2.3 --dir /"]],
    [["stage", "1.2.3\n"]],
    [["stage", "-1.2.3"]],
    [["stage", `1.2.3-${"a".repeat(65)}`]],
    [["stage", "1.2.3", "extra"]],
    [["activate", "now"]],
    [["rollback"]],
    [[]]
  ])("bad arguments %j exit 2", async (args) => {
    const h = await makeHost()
    hosts.push(h)
    const r = await runUpdate(h, args)
    expect(r.code).toBe(2)
    expect(h.state()).toBeUndefined()
  })
})

rootSuite("felhom-update activate", () => {
  it("starts the gate unit without blocking when something is staged", async () => {
    const { h } = await hostWithDownload()
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(0)
    const r = await runUpdate(h, ["activate"])
    expect(r.stdout, r.stderr).toBe("activating 1.1.0\n")
    expect(h.systemctlLog()).toEqual(["start --no-block felhom-agent-gate.service"])
    // activate flips nothing itself: that is the gate's job
    expect(h.link("current")).toBe("package")
    // the record is marked activated: the gate (also at boot) trials nothing else
    expect(h.state()).toMatchObject({ state: "staged", slot: "slots/a", version: "1.1.0", activated_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/) })
    // systemctl failing is exit 5
    const failed = await runUpdate(h, ["activate"], { FAKE_SYSTEMCTL_FAIL: "1" })
    expect(failed.code).toBe(5)
  })

  it("withdraws the activation when systemctl fails: the agent records nothing changed, so no later boot may start it", async () => {
    const { h } = await hostWithDownload()
    expect((await runUpdate(h, ["stage", "1.1.0"])).code).toBe(0)
    const staged = h.state()
    const failed = await runUpdate(h, ["activate"], { FAKE_SYSTEMCTL_FAIL: "1" })
    expect(failed.code).toBe(5)
    expect(h.state()).toEqual(staged)
    expect(h.state()?.activated_at).toBeUndefined()
  })

  it.each([[undefined], [{ state: "trial", slot: "slots/a", previous: "package", version: "1.1.0" }], [{ state: "committed", slot: "slots/a", previous: "package", version: "1.1.0" }], [{ state: "idle" }]])("refuses without a staged release (%j)", async (state) => {
    const h = await makeHost()
    hosts.push(h)
    if (state !== undefined) h.writeState(state)
    const r = await runUpdate(h, ["activate"])
    expect(r.code).toBe(3)
    expect(h.systemctlLog()).toEqual([])
  })
})

describe.skipIf(sandbox === undefined)("sudoers: the felhom-update rule", () => {
  it("allows stage <release version> and activate, nothing else", () => {
    const helper = "/usr/local/libexec/felhom-agent/felhom-update"
    expect(sandbox!.allows([helper, "stage", "1.4.0"])).toBe(true)
    expect(sandbox!.allows([helper, "stage", "1.4.0-rc.1"])).toBe(true)
    expect(sandbox!.allows([helper, "stage", "10.20.30+build.5"])).toBe(true)
    expect(sandbox!.allows([helper, "activate"])).toBe(true)
    expect(sandbox!.allows([helper, "stage", "1.4"])).toBe(false)
    expect(sandbox!.allows([helper, "stage", "../../etc"])).toBe(false)
    expect(sandbox!.allows([helper, "stage", "1.4.0/../../x"])).toBe(false)
    expect(sandbox!.allows([helper, "stage", "1.4.0", "1.5.0"])).toBe(false)
    expect(sandbox!.allows([helper, "stage", "1.4.0 x"])).toBe(false)
    expect(sandbox!.allows([helper, "stage", `1.4.0-${"a".repeat(65)}`])).toBe(false)
    expect(sandbox!.allows([helper, "activate", "now"])).toBe(false)
    expect(sandbox!.allows([helper])).toBe(false)
    expect(sandbox!.allows([helper, "rollback"])).toBe(false)
    // the gate is never the agent's to run
    expect(sandbox!.allows(["/usr/local/libexec/felhom-agent/felhom-healthgate", "run"])).toBe(false)
    expect(sandbox!.allows(["/usr/bin/systemctl", "start", "felhom-agent-gate.service"])).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------
// With the real verifier: B's `felhom-agent release verify` from the built bundle as `current`

const REPO = join(__dirname, "..")
const BIN = join(REPO, "bin", "felhom-agent.cjs")
const probeRelease = spawnSync(process.execPath, [BIN, "release", "verify", "--help"], { encoding: "utf8", env: { PATH: "/usr/bin:/bin" } })
const hasReleaseVerify = !`${probeRelease.stdout}${probeRelease.stderr}`.includes("Invalid subcommand") && probeRelease.error === undefined

/** An ed25519 release key made by ssh-keygen, and a signer for RELEASE.json. */
const releaseKey = (dir: string, name: string) => {
  const key = join(dir, name)
  const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key], { encoding: "utf8" })
  if (r.status !== 0) throw new Error(r.stderr)
  return {
    pub: readFileSync(`${key}.pub`, "utf8").trim(),
    sign: (manifest: string) => {
      const s = spawnSync("ssh-keygen", ["-Y", "sign", "-f", key, "-n", "felhom-release-v1", manifest], { encoding: "utf8" })
      if (s.status !== 0) throw new Error(s.stderr)
    }
  }
}

describe.skipIf(!isRoot || !hasReleaseVerify)("felhom-update with the real release verify (the built bundle as current)", () => {
  it("stages a release signed by a configured key; refuses a tampered file, an unknown signer and a wrong version (exit 4)", async () => {
    const h = await makeHost({ version: "1.0.0" })
    hosts.push(h)
    // current: a release whose bin/felhom-agent is the repository's bin (the built bundle)
    writeFileSync(join(h.prefix, "package", "bin", "felhom-agent"), `#!/bin/sh\nexec ${process.execPath} ${BIN} "$@"\n`, { mode: 0o755 })
    const trusted = releaseKey(h.base, "release-key")
    const stranger = releaseKey(h.base, "stranger")
    const cfg = writeAgentConfig(h)
    writeFileSync(cfg, JSON.stringify({ update: { release_signers: [trusted.pub] } }) + "\n")

    const download = (version: string, signer: typeof trusted) => {
      const dir = join(h.root, "var", "lib", "felhom-agent", "update", version)
      rmSync(dir, { recursive: true, force: true })
      for (const d of ["bin", "lib"]) mkdirSync(join(dir, d), { recursive: true })
      writeFileSync(join(dir, "bin", "node"), "#!/bin/sh\necho fake node\n", { mode: 0o755 })
      writeFileSync(join(dir, "bin", "felhom-agent"), "#!/bin/sh\nexec \"$(dirname \"$0\")/node\" \"$@\"\n", { mode: 0o755 })
      writeFileSync(join(dir, "lib", "felhom-agent.cjs"), `console.log(${JSON.stringify(version)})\n`, { mode: 0o644 })
      const m = spawnSync(process.execPath, [BIN, "release", "manifest", "--dir", dir, "--release", version, "--node", "20.20.2"], { encoding: "utf8" })
      if (m.status !== 0) throw new Error(`release manifest: ${m.stdout}${m.stderr}`)
      signer.sign(join(dir, "RELEASE.json"))
      chownTree(join(h.root, "var", "lib", "felhom-agent"), SERVICE_UID)
      return dir
    }

    download("1.1.0", trusted)
    const r = await runUpdate(h, ["stage", "1.1.0"])
    expect(r.stdout, r.stderr).toBe("staged a 1.1.0\n")
    expect(readFileSync(join(h.prefix, "slots", "a", "lib", "felhom-agent.cjs"), "utf8")).toBe("console.log(\"1.1.0\")\n")
    expect(existsSync(join(h.prefix, "slots", "a", "RELEASE.json.sig"))).toBe(true)

    const refusedWith = async (version: string) => {
      const before = snapshot(join(h.prefix, "slots"))
      const state = h.state()
      const out = await runUpdate(h, ["stage", version])
      expect(out.code, out.stderr).toBe(4)
      expect(out.stderr).toMatch(new RegExp(`^felhom-update: release ${version.replaceAll(".", "\\.")} failed verification: .+\\n$`))
      expect(snapshot(join(h.prefix, "slots"))).toEqual(before)
      expect(h.state()).toEqual(state)
      expect(stagingLeftovers(h)).toEqual([])
    }
    // a file changed after signing
    writeFileSync(join(download("1.2.0", trusted), "lib", "felhom-agent.cjs"), "tampered\n")
    await refusedWith("1.2.0")
    // signed by a key the config does not list
    download("1.3.0", stranger)
    await refusedWith("1.3.0")
    // a validly signed release under another version's name
    const other = download("1.4.0", trusted)
    rmSync(join(h.root, "var", "lib", "felhom-agent", "update", "1.5.0"), { recursive: true, force: true })
    spawnSync("cp", ["-a", other, join(h.root, "var", "lib", "felhom-agent", "update", "1.5.0")])
    await refusedWith("1.5.0")
  })
})
