/**
 * The shipped CLI (the esbuild bundle behind bin/felhom-agent.cjs) as a user runs it:
 * `sim pve` in one process, `selftest --json` in another, exit codes and one-line reasons.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { type ChildProcess, execFileSync } from "node:child_process"
import { readFileSync, writeFileSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DEFAULT_CONFIG_PATH } from "../src/layers/Config.js"
import { VERSION } from "../src/version.js"
import { bin, cleanEnv, nodeRunner, root, startSimPve } from "./bin-support.js"


/** An empty config file, so a host's /etc/felhom-agent/agent.json never leaks into the test. */
const emptyConfig = join(mkdtempSync(join(tmpdir(), "felhom-cli-")), "empty.json")
writeFileSync(emptyConfig, "{}")

/**
 * A preload that records every module the process asks Node to load (Module._load: builtins,
 * externals such as the native sqlite binding), written as JSON to $FELHOM_TEST_LOADS at exit.
 * The bundle inlines undici, the SQL client, the simulators and the daemon, so evaluating any of
 * them shows up as the builtins they require at the top (net, tls, http, better-sqlite3, ...).
 */
const loadProbe = join(mkdtempSync(join(tmpdir(), "felhom-probe-")), "probe.cjs")
writeFileSync(loadProbe, [
  "const Module = require(\"node:module\"), fs = require(\"node:fs\")",
  "const load = Module._load, seen = new Set()",
  "Module._load = function (request) { seen.add(request.replace(/^node:/, \"\")); return load.apply(this, arguments) }",
  "process.on(\"exit\", () => fs.writeFileSync(process.env.FELHOM_TEST_LOADS, JSON.stringify([...seen])))"
].join("\n"))

/** Env without any FELHOM_AGENT_* from the developer's shell, plus what the test sets. */
const env = (extra: Record<string, string> = {}) => cleanEnv(emptyConfig, extra)
const runner = nodeRunner(env)
const { run, spawnAsync } = runner

/** The modules a CLI run loaded, through the probe above. */
const loadsOf = async (args: Array<string>, extra: Record<string, string> = {}) => {
  const out = join(mkdtempSync(join(tmpdir(), "felhom-loads-")), "loads.json")
  const r = await spawnAsync(["-r", loadProbe, bin, ...args], { ...extra, FELHOM_TEST_LOADS: out }, 60_000)
  return { status: r.status, stderr: r.stderr, loads: JSON.parse(readFileSync(out, "utf8")) as Array<string> }
}

/** Loaded only by the heavy parts: HTTP clients and servers (undici, simulators), SQLite, workers, processes. */
const HEAVY = ["better-sqlite3", "net", "tls", "http", "https", "http2", "dns", "zlib", "worker_threads", "child_process"]

let sim: ChildProcess
let exports: Record<string, string> = {}

beforeAll(async () => {
  // the bundle (what ships) was built from the current sources by test/global-setup.ts
  const started = await startSimPve(env())
  sim = started.child
  exports = started.exports
})

afterAll(() => {
  sim?.kill("SIGTERM")
  // a test that timed out leaves its CLI run behind; never orphan it
  runner.kill()
})

describe("felhom-agent CLI", () => {
  it("version matches package.json", async () => {
    const r = await run(["version"])
    expect(r.status).toBe(0)
    expect(r.stdout.trim()).toBe(`felhom-agent ${VERSION}`)
    expect(JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version).toBe(VERSION)
    expect(JSON.parse((await run(["version", "--json"])).stdout)).toEqual({ name: "felhom-agent", version: VERSION })
  })

  it("version and --help evaluate only the command tree: no HTTP, SQLite, simulators or daemon", async () => {
    for (const args of [["version"], ["version", "--json"], ["--help"], ["op", "new", "--help"]]) {
      const r = await loadsOf(args)
      expect(r.status, args.join(" ")).toBe(0)
      expect(r.loads.filter((m) => HEAVY.includes(m)), args.join(" ")).toEqual([])
    }
    // the probe sees lazily loaded implementations: the journal opens SQLite, selftest talks HTTPS
    const journal = await loadsOf(["journal", "list"], { FELHOM_AGENT_STATE_DIR: mkdtempSync(join(tmpdir(), "felhom-state-")) })
    expect(journal.status, journal.stderr).toBe(0)
    expect(journal.loads).toContain("better-sqlite3")
    const selftest = await loadsOf(["selftest"], exports)
    expect(selftest.status, selftest.stderr).toBe(0)
    expect(selftest.loads).toEqual(expect.arrayContaining(["tls", "http"]))
  })

  it("the --config help names the config layer's default path", async () => {
    expect((await run(["selftest", "--help"])).stdout).toContain(DEFAULT_CONFIG_PATH)
  })

  it("--help works on the root and on subcommands", async () => {
    for (const args of [["--help"], ["selftest", "--help"], ["selftest", "task", "--help"], ["sim", "pve", "--help"]]) {
      const r = await run(args)
      expect(r.status, args.join(" ")).toBe(0)
      expect(r.stdout).toContain("felhom-agent")
    }
  })

  it("sim pve prints everything selftest needs", async () => {
    expect(Object.keys(exports).sort()).toEqual([
      "FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256",
      "FELHOM_AGENT_PROXMOX_TOKEN_ID",
      "FELHOM_AGENT_PROXMOX_TOKEN_SECRET",
      "FELHOM_AGENT_PROXMOX_URL"
    ])
    expect(exports["FELHOM_AGENT_PROXMOX_URL"]).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/)
  })

  it("selftest --json against `sim pve` in another process: healthy, exit 0", async () => {
    const r = await run(["selftest", "--json"], exports)
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.healthy).toBe(true)
    expect(report.node).toBe("pve")
    expect(report.guests.map((g: { vmid: number }) => g.vmid)).toEqual([100, 101, 102])
    expect(report.guests[0].spec.memory_mib).toBe(2048)
    expect(report.storage.length).toBe(2)
    expect(r.stdout).not.toContain(exports["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"]!)
  })

  it("human output by default", async () => {
    const r = await run(["selftest"], exports)
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/^felhom-agent selftest: HEALTHY/)
  })

  it("selftest task needs --yes (exit 2, one line) and then completes the cycle", async () => {
    const refused = await run(["selftest", "task", "--vmid", "101"], exports)
    expect(refused.status).toBe(2)
    expect(refused.stderr.trim().split("\n")).toHaveLength(1)
    expect(refused.stderr).toContain("--yes")
    const r = await run(["selftest", "task", "--vmid", "101", "--yes", "--json"], exports)
    expect(r.status).toBe(0)
    const report = JSON.parse(r.stdout)
    expect(report.steps.map((s: { step: string; ok: boolean }) => [s.step, s.ok])).toEqual([
      ["snapshot", true],
      ["rollback", true],
      ["delete_snapshot", true]
    ])
  }, 60_000)

  it("a wrong pin: exit 1 with a one-line reason naming the mismatch, no secret", async () => {
    const wrong = exports["FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256"]!.split(":").reverse().join(":")
    const r = await run(["selftest"], { ...exports, FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256: wrong })
    expect(r.status).toBe(1)
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toContain("fingerprint mismatch")
    expect(r.stderr + r.stdout).not.toContain(exports["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"]!)
  })

  it("a missing privilege: exit 1, the reason names it", async () => {
    // a guest id the token has no VM.Audit on does not exist; use an unknown token instead
    const r = await run(["selftest"], { ...exports, FELHOM_AGENT_PROXMOX_TOKEN_SECRET: "00000000-0000-0000-0000-000000000000" })
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/auth|authentication/i)
    expect(r.stderr).not.toContain("00000000-0000-0000-0000-000000000000")
  })

  it("configuration errors: exit 2, the key named, nothing echoed", async () => {
    const r = await run(["selftest"], { ...exports, FELHOM_AGENT_PROXMOX_URL: "http://127.0.0.1:1" })
    expect(r.status).toBe(2)
    expect(r.stderr).toContain("proxmox.url")
    const none = await run(["selftest"])
    expect(none.status).toBe(2)
    expect(none.stderr).toContain("proxmox")
  })

  it("--print-config redacts the token secret", async () => {
    const dir = mkdtempSync(join(tmpdir(), "felhom-cli-"))
    const path = join(dir, "agent.json")
    writeFileSync(path, JSON.stringify({ privileged: { mode: "direct" } }))
    const r = await run(["selftest", "--print-config", "--config", path], exports)
    expect(r.status).toBe(0)
    const printed = JSON.parse(r.stdout)
    expect(printed.proxmox.token_secret).toBe("<redacted>")
    expect(printed.privileged.mode).toBe("direct")
    expect(r.stdout).not.toContain(exports["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"]!)
  })

  it("plan shows each action with its gate verdict; an offered signature turns the destroy signed_ok", async () => {
    const dir = mkdtempSync(join(tmpdir(), "felhom-plan-"))
    const stateEnv = { ...exports, FELHOM_AGENT_STATE_DIR: join(dir, "state") }
    const desired = join(root, "test", "fixtures", "desired", "sim-mixed.json")
    const unsigned = await run(["plan", "--desired", desired, "--json"], stateEnv)
    expect(unsigned.status, unsigned.stderr).toBe(0)
    const verdicts = (r: { stdout: string }) =>
      (JSON.parse(r.stdout) as { actions: Array<{ vmid: number; action: string; verdict: string }> }).actions.map((a) => `${a.action}:${a.vmid}:${a.verdict}`)
    expect(verdicts(unsigned)).toEqual([
      "resize:100:allowed",
      "set_config:101:allowed",
      "start:101:allowed",
      "destroy:102:pending_signature"
    ])
    // the hub's golden archive was never registered by an operator: no create, and the plan says why
    const notes = (JSON.parse(unsigned.stdout) as { notes: Array<{ vmid: number; reason: string }> }).notes
    expect(notes.map((n) => `${n.reason}:${n.vmid}`)).toContain("golden_unverified:110")
    // an operator key in the config, a signed decommission of 102, and one for the wrong guest
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(dir, "op")])
    const config = join(dir, "agent.json")
    writeFileSync(config, JSON.stringify({
      host_id: "host-1",
      authz: { signers: [`role=operational,key-id=alice ${readFileSync(join(dir, "op.pub"), "utf8").trim()}`] }
    }))
    const sign = async (name: string, guest: string) => {
      const blob = join(dir, name)
      expect((await run(["op", "new", "--op", "decommission", "--host", "host-1", "--guest", guest, "--key-id", "alice", "--out", blob])).status).toBe(0)
      expect((await run(["op", "sign", "--key", join(dir, "op"), "--in", blob])).status).toBe(0)
      return blob
    }
    const good = await sign("good.json", "102")
    const signed = await run(["plan", "--desired", desired, "--json", "--config", config, "--signed", good], stateEnv)
    expect(signed.status, signed.stderr).toBe(0)
    expect(verdicts(signed)).toContain("destroy:102:signed_ok")
    // a preview consumes nothing: the same signature is still good
    expect(verdicts(await run(["plan", "--desired", desired, "--json", "--config", config, "--signed", good], stateEnv))).toContain("destroy:102:signed_ok")
    const wrong = await sign("wrong.json", "101")
    const mismatched = await run(["plan", "--desired", desired, "--json", "--config", config, "--signed", wrong], stateEnv)
    // a signature for 101 is not a signature for 102's destroy
    expect(verdicts(mismatched)).toContain("destroy:102:pending_signature")
    const human = await run(["plan", "--desired", desired], stateEnv)
    expect(human.stdout).toContain("PENDING_SIGNATURE")
  }, 60_000)

  it("journal list and audit verify read the state database", async () => {
    const stateEnv = { FELHOM_AGENT_STATE_DIR: mkdtempSync(join(tmpdir(), "felhom-state-")) }
    expect((await run(["journal", "list"], stateEnv)).status).toBe(0)
    const audit = await run(["audit", "verify", "--json"], stateEnv)
    expect(audit.status).toBe(0)
    expect(JSON.parse(audit.stdout)).toEqual({ ok: true, entries: 0 })
  })

  it.each([["-1"], ["0"], ["10001"]])("journal list --limit %s: exit 2 with one line stating the range", async (limit) => {
    const r = await run(["journal", "list", "--limit", limit], { FELHOM_AGENT_STATE_DIR: mkdtempSync(join(tmpdir(), "felhom-state-")) })
    expect(r.status, r.stderr).toBe(2)
    expect(r.stdout).toBe("")
    expect(r.stderr.trim().split("\n")).toEqual([`felhom-agent: --limit must be an integer from 1 to 10000 (got ${limit})`])
  })

  it("journal list --limit at the bounds is accepted", async () => {
    const stateEnv = { FELHOM_AGENT_STATE_DIR: mkdtempSync(join(tmpdir(), "felhom-state-")) }
    expect((await run(["journal", "list", "--limit", "1"], stateEnv)).status).toBe(0)
    expect((await run(["journal", "list", "--limit", "10000", "--json"], stateEnv)).stdout.trim()).toBe("[]")
  })

  it.each([["pve", "70000"], ["pve", "-1"], ["hub", "65536"], ["hub", "-5"]])("sim %s --port %s: exit 2 with one line, no stack trace", async (which, port) => {
    const r = await run(["sim", which!, "--port", port!])
    expect(r.status, r.stderr).toBe(2)
    expect(r.stderr.trim().split("\n")).toEqual([`felhom-agent: --port must be an integer from 0 to 65535 (got ${port})`])
  })

  it("npm run demo's scenario runs end to end and exits 0", async () => {
    const r = await run(["demo"], {}, 300_000)
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0)
    for (const line of [
      "converged: 100 stopped, local-lvm:vm-100-disk-0,size=20G; 101 running, 2048 MiB",
      "agent reports pending_signature for decommission 101; guest 101 untouched: true",
      "job-1: done",
      "guest 101 exists: false",
      "replayed as job-2: rejected (Replay)",
      "agent killed while the restore of 110 runs",
      "create ops in the journal: done, rolled_back",
      // controllers (issue 11): provisioned end to end, pinned, self-scoped, a failed update rolled back
      "controller of 110 up (registry.felhom.dev/felhom/controller:1.0.0",
      "GET /backup/due 200, GET /backup/status 200, GET /restore-test/status 200, GET /storage 200, POST /heartbeat 200",
      "111's controller takes a snapshot: POST /snapshot 201",
      "110's controller asks to roll back to 111's ctl-before-import: 403",
      "a call without a token: 401",
      "host report versions.controllers: 110 1.0.0 ok, 111 1.0.0 ok",
      "update of 110 to 2.0.0-broken: rolled_back",
      "its controller runs registry.felhom.dev/felhom/controller:1.0.0 again, healthy",
      "job-ctl-110 (signed controller-update 110 to 1.1.0): done",
      "update of 110 to 1.1.0: done; its controller runs registry.felhom.dev/felhom/controller:1.1.0, healthy",
      // data protection (issue 10)
      "scheduled backups ran (never backed up: due at once): 100 ok",
      "the operator's archive is kept: true",
      "scratch guests left behind: 0",
      // guest-loss DR (issue 12): lost, offered as a signed recover, back with its kept identity
      "guest 110 is lost: its config and rootfs on local-lvm are gone",
      "plan: recover 110 PENDING_SIGNATURE from vzdump local:backup/vzdump-lxc-110-",
      "job-recover-110: done; 110 is running, restored from local:backup/vzdump-lxc-110-",
      "kept: MAC same, hub channel demo-host/110, local-API token same; reset at first boot (guest-loss-total: machine-id, ssh-host-keys): machine-id new, SSH host key new; its controller registry.felhom.dev/felhom/controller:1.1.0 healthy",
      "'usb-backup' disconnected (the disk was pulled while mounted", // the pass's detail adds what to do
      "'nas' disconnected"
    ]) expect(r.stdout, line).toContain(line)
    expect(r.stdout).toMatch(/retention keep-last 2 pruned [1-9]\d* of the agent's archives of 100/)
    expect(r.stdout).toMatch(/restore-test of 100: pass /)
    expect(r.stdout).toMatch(/restore-test of 102: fail \(booted, but services failing/)
    expect(r.stdout).toMatch(/overdue hosts: 0/)
  }, 300_000)

  it("an unknown command is a usage error (exit 2)", async () => {
    expect((await run(["frobnicate"])).status).toBe(2)
  })
})
