/**
 * kill -9, for real (issue 8, "a real-process test"): the shipped daemon against `sim pve` and
 * `sim hub` running as separate processes (HTTPS on 127.0.0.1, a real state.db in a temp
 * state_dir, a config file, an operator key as authz signer). The hub publishes a desired state
 * that needs golden-archive creates, config changes, resizes and starts; the PVE simulator
 * injects 5xx (596 included), lock conflicts and task failures, and its tasks last long enough
 * that kills land mid-task. The daemon is killed with SIGKILL at seeded random moments, KILLS
 * times, and restarted each time on the same state dir; the simulators stay up. Then faults are
 * turned off, the daemon converges (poked with SIGUSR1), and each invariant below is checked
 * against the simulator's own record of what happened (its task list, with ms start times, and
 * its guests) and the journal (`journal list --json`, guest records from state.db).
 *
 * Reproduce a failure with FELHOM_KILL9_SEED=<seed> (printed, with every kill point, in each
 * failing assertion); FELHOM_KILL9_KILLS changes the number of kills.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { randomBytes } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { hubCertPem as devHubCaPem } from "../src/sim/hub/tlsMaterial.js"
import { simCertPem } from "../src/sim/pve/tlsMaterial.js"
import {
  cleanEnv,
  having,
  httpsJson,
  lineMatch,
  Proc,
  prng,
  root,
  runCli,
  sleep,
  snapshotBin
} from "./kill9-support.js"
import { OP_NAMESPACE } from "../src/schema/op.js"
import { makeKey, signSshsig, type TestKey } from "./sshsig-sign.js"

const SEED = Number(process.env["FELHOM_KILL9_SEED"] ?? 8_2026)
const KILLS = Math.max(20, Number(process.env["FELHOM_KILL9_KILLS"] ?? 22))
/**
 * When each kill lands, in ms after the daemon was spawned (seeded): a third early (start-up and
 * recovery), the rest while the first cycles run their operations and wait on PVE tasks.
 */
const killAfterMs = (rnd: () => number) => Math.round(rnd() < 0.3 ? 200 + rnd() * 2800 : 3000 + rnd() * 6500)
const CONVERGE_TIMEOUT_MS = 100_000
const HOST_ID = "kill9-host"
const MiB = 1024 * 1024

const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"

/** Short tasks (ms), long enough that a kill often lands while one runs. */
const TASK_DURATIONS_MS = {
  vzcreate: 1500,
  vzrestore: 2200,
  vzdump: 1500,
  vzsnapshot: 500,
  vzrollback: 800,
  vzdelsnapshot: 500,
  resize: 900,
  vzstart: 1100,
  vzstop: 700,
  vzshutdown: 900,
  vzdestroy: 800
}

const FAULTS = {
  seed: SEED,
  http_error_rate: 0.06,
  http_error_statuses: [500, 595, 596],
  lock_conflict_rate: 0.05,
  task_failure_rate: 0.08
}

interface Guest {
  readonly vmid: number
  readonly hostname: string
  readonly cores: number
  readonly memory_bytes: number
  readonly swap_mib: number
  readonly rootfs_gib: number
  readonly power: "running" | "stopped"
  readonly description: string
  readonly tags: ReadonlyArray<string>
}

/** Existing guests change (config, grow, start); new ones are restored from the golden archive (4 GiB rootfs) and grown. */
const DESIRED_GUESTS: ReadonlyArray<Guest> = [
  {
    vmid: 100,
    hostname: "cust-alpha",
    cores: 4,
    memory_bytes: 3072 * MiB,
    swap_mib: 1024,
    rootfs_gib: 20,
    power: "running",
    description: "felhom customer guest alpha, grown",
    tags: ["customer", "felhom", "grown"]
  },
  {
    vmid: 101,
    hostname: "cust-beta",
    cores: 2,
    memory_bytes: 1536 * MiB,
    swap_mib: 512,
    rootfs_gib: 10,
    power: "running",
    description: "felhom customer guest beta",
    tags: ["customer", "felhom"]
  },
  ...[200, 201, 202, 203, 204, 205].map((vmid, i): Guest => ({
    vmid,
    hostname: `new-${vmid}`,
    cores: 1 + (i % 2),
    memory_bytes: (1024 + 512 * (i % 3)) * MiB,
    swap_mib: 512,
    rootfs_gib: 6 + (i % 3),
    power: i % 3 === 2 ? "stopped" : "running",
    description: `customer ${vmid}`,
    tags: ["customer", `c${vmid}`]
  }))
]
// 102 exists and is not desired: removing it needs a signature, so it must survive untouched
const EXISTING = [100, 101, 102]
const UNDESIRED_EXISTING = 102

// ---------------------------------------------------------------------------------------------
// What the simulators and the journal say

interface SimTask {
  readonly upid: string
  readonly type: string
  readonly id: string
  readonly user: string
  readonly status: "running" | "stopped"
  readonly exitstatus: string | undefined
  readonly startedAtMs: number
}

interface SimGuest {
  readonly vmid: number
  readonly status: "running" | "stopped"
  readonly lock: string | undefined
  readonly config: Readonly<Record<string, string | number | boolean>>
  readonly snapshots: ReadonlyArray<{ readonly name: string }>
}

interface JournalStep {
  readonly name: string
  readonly status: string
  readonly upid: string | null
  readonly updatedAtMs: number
}

interface JournalOp {
  readonly id: string
  readonly kind: string
  readonly vmid: number | null
  readonly status: string
  readonly steps: ReadonlyArray<JournalStep>
  readonly detail: string | null
  readonly createdAtMs: number
  readonly updatedAtMs: number
}

interface KillPoint {
  readonly n: number
  readonly afterMs: number
  /** ms after spawn the daemon logged READY, if it did */
  readonly readyMs: number | undefined
  readonly lastLine: string
}

/** The PVE task types each op kind's steps may start (PUT config starts none in the simulator). */
const STEP_TASK: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  create: { restore: "vzrestore", resize: "resize", start: "vzstart", compensate_stop: "vzstop", compensate_destroy: "vzdestroy" },
  start: { start: "vzstart" },
  stop: { stop: "vzstop" },
  resize: { resize: "resize" },
  set_config: {},
  decommission: { stop: "vzstop", destroy: "vzdestroy" },
  "force-backup": { backup: "vzdump" },
  "restore-now": { rollback: "vzrollback", safety_backup: "vzdump", stop: "vzstop", restore: "vzrestore", start: "vzstart" }
}

const sizeGib = (rootfs: unknown): number | null => {
  const m = /(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)/.exec(String(rootfs ?? ""))
  if (!m) return null
  const n = Number(m[1])
  const f = { K: 1 / 1024 / 1024, M: 1 / 1024, G: 1, T: 1024, "": 1 / 1024 ** 3 }[m[2] as "K" | "M" | "G" | "T" | ""]
  return Math.floor(n * f)
}
const volumeOf = (rootfs: unknown) => String(rootfs ?? "").split(",")[0]
const tagsOf = (t: unknown) => [...new Set(String(t ?? "").split(/[;,\s]+/).filter((x) => x !== "").map((x) => x.toLowerCase()))].sort()

/** What differs between a simulator guest and its desired spec ([] = at spec). */
const specDiff = (g: SimGuest, d: Guest): Array<string> => {
  const c = g.config
  const out: Array<string> = []
  const want = {
    hostname: d.hostname,
    cores: d.cores,
    memory: Math.ceil(d.memory_bytes / MiB),
    swap: d.swap_mib,
    rootfs_gib: d.rootfs_gib,
    description: d.description.trimEnd(),
    tags: [...d.tags].sort().join(";"),
    status: d.power
  }
  const have = {
    hostname: c["hostname"],
    cores: c["cores"],
    memory: c["memory"],
    swap: c["swap"],
    rootfs_gib: sizeGib(c["rootfs"]),
    description: String(c["description"] ?? "").trimEnd(),
    tags: tagsOf(c["tags"]).join(";"),
    status: g.status
  }
  for (const k of Object.keys(want) as Array<keyof typeof want>) {
    if (String(want[k]) !== String(have[k])) out.push(`${k}: want ${JSON.stringify(want[k])}, have ${JSON.stringify(have[k])}`)
  }
  if (g.lock !== undefined) out.push(`locked (${g.lock})`)
  return out
}

// ---------------------------------------------------------------------------------------------
// The run (in beforeAll); each invariant is its own test below

const dir = mkdtempSync(join(tmpdir(), "felhom-kill9-"))
const stateDir = join(dir, "state")
const configFile = join(dir, "agent.json")
const procs: Array<Proc> = []
const killPoints: Array<KillPoint> = []
const timings: Record<string, number> = {}

let pveUrl = ""
let pveAdmin = ""
let hubUrl = ""
let hubAdmin = ""
let initialGuests: ReadonlyArray<SimGuest> = []
let finalGuests: ReadonlyArray<SimGuest> = []
let tasks: ReadonlyArray<SimTask> = []
let requests: Awaited<ReturnType<typeof simRequests>> = []
let ops: ReadonlyArray<JournalOp> = []
let guestRecords: ReadonlyArray<{ readonly vmid: number; readonly state: string; readonly detail: string }> = []
let lastReport: Record<string, unknown> | null = null
let auditVerify = { status: null as number | null, stdout: "", stderr: "" }
let converged = false
let convergeNote = ""
let daemonLog: Array<string> = []

/** Printed with every failing assertion: enough to reproduce and to see where the kills landed. */
const context = () =>
  `\n  seed ${SEED} (FELHOM_KILL9_SEED=${SEED}), ${killPoints.length} kills; kill points (ms after spawn; the daemon's last log line):\n` +
  killPoints.map((k) =>
    `    #${k.n} at ${k.afterMs} ms (${k.readyMs === undefined ? "before READY" : `READY at ${k.readyMs} ms`}) | ${
      k.lastLine.replace(/^timestamp=\S+ /, "").slice(0, 200)
    }`
  ).join("\n") +
  `\n  converged: ${converged} ${convergeNote}\n  state dir: ${stateDir}`

const pve = (path: string, method = "GET", body?: unknown) =>
  httpsJson(`${pveUrl}/sim-admin/${path}`, { ca: simCertPem, token: pveAdmin, method, body }).then((r) => {
    if (r.status !== 200) throw new Error(`sim pve admin ${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`)
    return r.body as Record<string, unknown>
  })
const hubView = () =>
  httpsJson(`${hubUrl}/admin/hosts/${HOST_ID}`, { ca: devHubCaPem, token: hubAdmin }).then((r) => {
    if (r.status !== 200) throw new Error(`hub admin: ${r.status} ${JSON.stringify(r.body)}`)
    return r.body as {
      desired_generation: number
      last_report: Record<string, unknown> | null
      reports_received: number
      job_results: ReadonlyArray<unknown>
    }
  })
const simGuests = async () => (await pve("guests"))["guests"] as ReadonlyArray<SimGuest>
const simTasks = async () => (await pve("tasks"))["tasks"] as ReadonlyArray<SimTask>
const simRequests = async () =>
  (await pve("requests"))["requests"] as ReadonlyArray<
    { method: string; path: string; handled: boolean; upid: string | null; status: number | null }
  >
const hubPost = (path: string, body: unknown) =>
  httpsJson(`${hubUrl}/admin/hosts/${HOST_ID}/${path}`, { ca: devHubCaPem, token: hubAdmin, method: "POST", body }).then((r) => {
    if (r.status >= 300) throw new Error(`hub admin POST ${path}: ${r.status} ${JSON.stringify(r.body)}`)
    return r.body
  })

/** An operator-signed host-level op, valid from now for 30 minutes, as a hub job. */
const signedJob = (key: TestKey, id: string, op: string, params: Record<string, unknown>) => {
  const now = Date.now()
  const blob = Buffer.from(JSON.stringify({
    op,
    host_id: HOST_ID,
    guest_id: null,
    params,
    nonce: randomBytes(24).toString("base64url"),
    not_before: new Date(now).toISOString(),
    expires_at: new Date(now + 30 * 60_000).toISOString(),
    key_id: "kill9"
  }))
  return { id, op, guest_id: null, params, blob: blob.toString("base64"), signature: signSshsig({ message: blob, namespace: OP_NAMESPACE, key }) }
}

const daemonEnv = () => cleanEnv()
const startDaemon = (n: number) => {
  const p = Proc.start(`daemon #${n}`, ["daemon", "--config", configFile], { cwd: dir, env: daemonEnv(), logFile: join(dir, `daemon-${n}.log`) })
  procs.push(p)
  return p
}
const isStarting = (l: string) => l.includes("felhom-agent daemon starting")
const isReady = (l: string) => /message="?ready\b/.test(l)

/** A worker that dies midway leaves no simulator or daemon behind. */
const killAll = () => {
  for (const p of procs) p.signal("SIGKILL")
}

beforeAll(async () => {
  process.once("exit", killAll)
  const t0 = Date.now()
  await snapshotBin(join(dir, "agent"))
  const rnd = prng(SEED)
  const seedFile = join(dir, "pve-seed.json")
  const baseSeed = JSON.parse(readFileSync(join(root, "configs", "sim", "pve.json"), "utf8")) as Record<string, unknown>
  writeFileSync(seedFile, JSON.stringify({ ...baseSeed, task_durations_ms: TASK_DURATIONS_MS }))

  const simPve = Proc.start("sim pve", ["sim", "pve", "--port", "0", "--seed", seedFile], { cwd: dir, env: cleanEnv(), logFile: join(dir, "sim-pve.log") })
  const simHub = Proc.start("sim hub", ["sim", "hub", "--port", "0", "--host-id", HOST_ID], { cwd: dir, env: cleanEnv(), logFile: join(dir, "sim-hub.log") })
  procs.push(simPve, simHub)
  const pveEnv = await simPve.waitFor("PVE exports", having([
    "FELHOM_AGENT_PROXMOX_URL",
    "FELHOM_AGENT_PROXMOX_TOKEN_ID",
    "FELHOM_AGENT_PROXMOX_TOKEN_SECRET",
    "FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256"
  ]))
  pveAdmin = await simPve.waitFor("admin token", lineMatch(/^\s*admin token:\s+(\S+)/))
  pveUrl = pveEnv["FELHOM_AGENT_PROXMOX_URL"]!
  const hubEnv = await simHub.waitFor("hub exports", having(["FELHOM_AGENT_HUB_URL", "FELHOM_AGENT_HUB_API_KEY", "FELHOM_AGENT_HUB_CA_FILE"]))
  hubAdmin = await simHub.waitFor("hub admin token", lineMatch(/^\s*admin token:\s+(\S+)/))
  hubUrl = hubEnv["FELHOM_AGENT_HUB_URL"]!

  const operator = makeKey("ssh-ed25519", { comment: "kill9@ops" })
  writeFileSync(configFile, JSON.stringify({
    host_id: HOST_ID,
    state_dir: stateDir,
    proxmox: {
      url: pveUrl,
      token_id: pveEnv["FELHOM_AGENT_PROXMOX_TOKEN_ID"],
      token_secret: pveEnv["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"],
      tls: { fingerprint_sha256: pveEnv["FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256"] },
      request_timeout_seconds: 15,
      task_timeout_seconds: 120
    },
    hub: { url: hubUrl, api_key: hubEnv["FELHOM_AGENT_HUB_API_KEY"], ca_file: hubEnv["FELHOM_AGENT_HUB_CA_FILE"] },
    authz: { signers: [`role=operational,key-id=kill9 ${operator.publicKey.line}`] }
  }, null, 2))

  // -- setup, no faults, no kills: the operator registers the golden archive (signed after the
  // state database exists, so its epoch does not refuse it); nothing is desired yet
  const first = startDaemon(0)
  await first.waitFor("READY", (ls) => (ls.some(isReady) ? true : undefined))
  await hubPost("jobs", signedJob(operator, "golden-1", "golden-register", { archive: GOLDEN }))
  let golden: { status: string; reason: string } | undefined
  for (let i = 0; i < 60 && golden === undefined; i++) {
    first.signal("SIGUSR1")
    await sleep(500)
    const results = (await hubView())["job_results"] as ReadonlyArray<{ id: string; status: string; reason: string }>
    golden = results.find((r) => r.id === "golden-1")
  }
  if (golden?.status !== "done") throw new Error(`golden-register: ${JSON.stringify(golden)}\n${first.tail()}`)
  await first.stop()

  initialGuests = await simGuests()
  await hubPost("desired", { provisioning: { golden_archive: GOLDEN, storage: "local-lvm" }, guests: DESIRED_GUESTS })
  await pve("faults", "PUT", FAULTS)
  timings["setup"] = Date.now() - t0

  // -- the kills: each at a seeded moment after spawn; pokes keep cycles coming meanwhile
  const tKills = Date.now()
  for (let n = 1; n <= KILLS; n++) {
    const afterMs = killAfterMs(rnd)
    const d = startDaemon(n)
    const spawnedAt = Date.now()
    let lastPoke = 0
    let readyMs: number | undefined
    while (Date.now() - spawnedAt < afterMs && d.exit === undefined) {
      await sleep(Math.min(25, Math.max(1, afterMs - (Date.now() - spawnedAt))))
      if (readyMs === undefined && d.lines.some(isReady)) readyMs = Date.now() - spawnedAt
      // SIGUSR1 only once the daemon handles it (before that, node would start its inspector)
      if (d.lines.some(isStarting) && Date.now() - lastPoke > 700) {
        d.signal("SIGUSR1")
        lastPoke = Date.now()
      }
    }
    if (d.exit !== undefined) throw new Error(`daemon #${n} ended by itself (${d.exit}):\n${d.tail()}`)
    await d.kill9()
    killPoints.push({ n, afterMs, readyMs, lastLine: d.lines[d.lines.length - 1] ?? "(no output yet)" })
  }
  timings["kills"] = Date.now() - tKills

  // -- faults off, one more start, converge
  const tConverge = Date.now()
  await pve("faults", "PUT", { seed: SEED })
  const last = startDaemon(KILLS + 1)
  await last.waitFor("daemon starting", (ls) => (ls.some(isStarting) ? true : undefined))
  const deadline = Date.now() + CONVERGE_TIMEOUT_MS
  let stableSince: string | undefined
  while (Date.now() < deadline) {
    last.signal("SIGUSR1")
    await sleep(1500)
    if (last.exit !== undefined) throw new Error(`the last daemon ended (${last.exit}):\n${last.tail()}`)
    const [view, guests, ts] = await Promise.all([hubView(), simGuests(), simTasks()])
    const applied = view.last_report?.["desired_generation_applied"]
    const running = ts.filter((t) => t.status === "running").length
    const snapshot = JSON.stringify({ guests, n: ts.length })
    const quiet = applied === view.desired_generation && running === 0 && guests.every((g) => g.lock === undefined)
    convergeNote = `(applied ${String(applied)} of generation ${view.desired_generation}, ${running} task(s) running)`
    if (quiet && stableSince === snapshot) {
      converged = true
      break
    }
    stableSince = quiet ? snapshot : undefined
  }
  timings["converge"] = Date.now() - tConverge
  const view = await hubView()
  lastReport = view.last_report
  daemonLog = [...last.lines]
  await last.stop()

  finalGuests = await simGuests()
  tasks = await simTasks()
  requests = await simRequests()
  const env = daemonEnv()
  const listed = await runCli(["journal", "list", "--json", "--limit", "10000", "--config", configFile], env)
  if (listed.status !== 0) throw new Error(`journal list failed (${listed.status}): ${listed.stderr}`)
  ops = JSON.parse(listed.stdout) as Array<JournalOp>
  auditVerify = await runCli(["audit", "verify", "--config", configFile], env)
  const Database = createRequire(import.meta.url)("better-sqlite3") as new(p: string, o: { readonly: boolean }) => {
    prepare: (q: string) => { all: () => Array<unknown> }
    close: () => void
  }
  const db = new Database(join(stateDir, "state.db"), { readonly: true })
  try {
    guestRecords = db.prepare("SELECT vmid, state, detail FROM guest_records").all() as typeof guestRecords
  } finally {
    db.close()
  }
  timings["total"] = Date.now() - t0
  console.log(
    `kill9: seed ${SEED}, ${killPoints.length} kills (${killPoints.filter((k) => k.readyMs !== undefined).length} after READY), ` +
      `${tasks.length} PVE tasks, ${ops.length} journal ops; ` +
      Object.entries(timings).map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`).join(", ")
  )
  const statuses = new Map<string, number>()
  for (const o of ops) statuses.set(`${o.kind} ${o.status}`, (statuses.get(`${o.kind} ${o.status}`) ?? 0) + 1)
  console.log(`kill9: journal ${[...statuses].map(([k, v]) => `${v}× ${k}`).join(", ")}${context()}`)
}, 300_000)

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()))
  process.removeListener("exit", killAll)
  if (process.env["FELHOM_KILL9_KEEP"] === undefined) rmSync(dir, { recursive: true, force: true })
})

// ---------------------------------------------------------------------------------------------

/** The journal op on the task's guest whose lifetime contains the task's start. */
const opsOf = (t: SimTask) =>
  ops.filter((o) =>
    String(o.vmid) === t.id && o.createdAtMs <= t.startedAtMs && (o.status === "in_flight" || t.startedAtMs <= o.updatedAtMs)
  )

const held = (vmid: number) =>
  ops.some((o) => o.vmid === vmid && o.status === "needs_operator") ||
  guestRecords.some((r) => r.vmid === vmid && r.state === "lost")

/** The last host report tells the hub that `vmid` is held: a pending signature or the hold's audit entry. */
const reportsHold = (vmid: number) => {
  const pending = (lastReport?.["pending_signatures"] ?? []) as ReadonlyArray<{ vmid: number | null }>
  const tail = (lastReport?.["audit_tail"] ?? []) as ReadonlyArray<{ target: string | null; decision: string }>
  const holds = (lastReport?.["held_guests"] ?? []) as ReadonlyArray<{ vmid: number }>
  return pending.some((p) => p.vmid === vmid) || holds.some((h) => h.vmid === vmid) ||
    tail.some((e) => e.target === String(vmid) && /needs_operator|lost/.test(e.decision))
}

describe("kill -9 during a faulty converge (real processes: daemon, sim pve, sim hub)", () => {
  it("killed the daemon at least 20 times, and it converged once faults were off", () => {
    expect(killPoints.length, context()).toBeGreaterThanOrEqual(20)
    expect(converged, `${context()}\n  last daemon log:\n${daemonLog.slice(-30).join("\n")}`).toBe(true)
  })

  it("nothing is left in flight: no journal op, no PVE task, no guest lock", () => {
    const inFlight = ops.filter((o) => o.status === "in_flight").map((o) => `${o.kind} ${o.vmid} ${o.id}`)
    const running = tasks.filter((t) => t.status === "running").map((t) => t.upid)
    const locked = finalGuests.filter((g) => g.lock !== undefined).map((g) => `${g.vmid} (${g.lock})`)
    expect({ inFlight, running, locked }, context()).toEqual({ inFlight: [], running: [], locked: [] })
  })

  // Found by this test (fixed): a needs_operator hold was not part of the host report (only its
  // audit entry was, until newer entries pushed it out of audit_tail); the report now carries
  // held_guests, so the hub always knows why a desired guest never appears.
  it("every desired guest exists exactly once at its spec, or the journal holds it and the host report says so", () => {
    const problems: Array<string> = []
    for (const d of DESIRED_GUESTS) {
      const same = finalGuests.filter((g) => g.vmid === d.vmid || g.config["hostname"] === d.hostname)
      if (held(d.vmid)) {
        // needs_operator / lost: not converged on purpose, so the hub must be told, as a hold on
        // this guest (a pending signature, or the hold's own audit entry), not merely see it listed
        if (!reportsHold(d.vmid)) {
          const why = ops.find((o) => o.vmid === d.vmid && o.status === "needs_operator")?.detail ??
            guestRecords.find((r) => r.vmid === d.vmid)?.detail
          problems.push(`${d.vmid}: held by the journal (${why}) but the last host report does not say so`)
        }
        continue
      }
      if (same.length !== 1 || same[0]!.vmid !== d.vmid) {
        problems.push(`${d.vmid}: ${same.length} guest(s) carry its vmid or hostname (${same.map((g) => g.vmid).join(", ")})`)
        continue
      }
      const diff = specDiff(same[0]!, d)
      if (diff.length > 0) problems.push(`${d.vmid}: ${diff.join("; ")}`)
    }
    expect(problems, context()).toEqual([])
  })

  it("no guest that existed at the start was destroyed, recreated or touched beyond its spec", () => {
    const problems: Array<string> = []
    for (const vmid of EXISTING) {
      const before = initialGuests.find((g) => g.vmid === vmid)!
      const after = finalGuests.find((g) => g.vmid === vmid)
      if (after === undefined) {
        problems.push(`${vmid} is gone`)
        continue
      }
      if (volumeOf(after.config["rootfs"]) !== volumeOf(before.config["rootfs"])) {
        problems.push(`${vmid}: rootfs volume changed from ${volumeOf(before.config["rootfs"])} to ${volumeOf(after.config["rootfs"])}`)
      }
      const snapsBefore = before.snapshots.map((s) => s.name).sort()
      const snapsAfter = after.snapshots.map((s) => s.name).sort()
      if (JSON.stringify(snapsBefore) !== JSON.stringify(snapsAfter)) problems.push(`${vmid}: snapshots ${snapsBefore} became ${snapsAfter}`)
      for (const t of tasks.filter((t) => t.id === String(vmid) && ["vzdestroy", "vzrestore", "vzcreate", "vzrollback"].includes(t.type))) {
        problems.push(`${vmid}: ${t.type} ran on it (${t.upid})`)
      }
    }
    // not even attempted: no destroy request for them reached PVE (refused ones included)
    for (const r of requests.filter((r) => r.method === "DELETE" && EXISTING.some((v) => r.path.endsWith(`/lxc/${v}`)))) {
      problems.push(`a destroy of ${r.path} was sent (answered ${r.status})`)
    }
    const untouched = finalGuests.find((g) => g.vmid === UNDESIRED_EXISTING)
    const was = initialGuests.find((g) => g.vmid === UNDESIRED_EXISTING)
    if (JSON.stringify(untouched?.config) !== JSON.stringify(was?.config)) problems.push(`${UNDESIRED_EXISTING} (not desired) was changed`)
    const tasksOn102 = tasks.filter((t) => t.id === String(UNDESIRED_EXISTING))
    if (tasksOn102.length > 0) problems.push(`${UNDESIRED_EXISTING}: tasks ran on it: ${tasksOn102.map((t) => t.type).join(", ")}`)
    const pending = (lastReport?.["pending_signatures"] ?? []) as ReadonlyArray<{ op: string; vmid: number | null }>
    if (!pending.some((p) => p.op === "decommission" && p.vmid === UNDESIRED_EXISTING)) {
      problems.push(`the host report does not list the decommission of ${UNDESIRED_EXISTING} as pending a signature`)
    }
    expect(problems, context()).toEqual([])
  })

  it("no guest was destroyed or restored over once started or sealed: every destroy is a create's own unsealed compensation", () => {
    const problems: Array<string> = []
    const byVmid = new Map<string, Array<SimTask>>()
    for (const t of [...tasks].sort((a, b) => a.startedAtMs - b.startedAtMs)) byVmid.set(t.id, [...(byVmid.get(t.id) ?? []), t])
    for (const [vmid, ts] of byVmid) {
      let startedOk: SimTask | undefined
      for (const t of ts) {
        if (t.type === "vzstart" && t.exitstatus === "OK") startedOk ??= t
        if ((t.type === "vzdestroy" || t.type === "vzrestore") && startedOk !== undefined) {
          problems.push(`${vmid}: ${t.type} ${t.upid} after the guest was started (${startedOk.upid})`)
        }
        if (t.type === "vzdestroy") {
          const owners = opsOf(t)
          const op = owners[0]
          if (owners.length !== 1 || op === undefined || op.kind !== "create") {
            problems.push(`${vmid}: destroy ${t.upid} is not inside one create op (${owners.map((o) => `${o.kind} ${o.id}`).join(", ") || "none"})`)
          } else if (op.steps.some((s) => s.name === "seal" && s.status === "done")) {
            problems.push(`${vmid}: destroy ${t.upid} by create ${op.id}, which had sealed the guest`)
          }
        }
      }
    }
    expect(problems, context()).toEqual([])
  })

  it("no PVE task ran twice for one journal op (only a failed task is retried), and every task belongs to exactly one op", () => {
    const problems: Array<string> = []
    const perOp = new Map<string, Map<string, Array<string>>>()
    for (const t of tasks) {
      const owners = opsOf(t)
      if (owners.length !== 1) {
        problems.push(`task ${t.type} on ${t.id} (${t.upid}, at ${t.startedAtMs}) belongs to ${owners.length} journal ops` +
          (owners.length > 0 ? `: ${owners.map((o) => `${o.kind} ${o.id}`).join(", ")}` : ""))
        continue
      }
      const op = owners[0]!
      const allowed = Object.values(STEP_TASK[op.kind] ?? {})
      if (!allowed.includes(t.type)) problems.push(`task ${t.type} ${t.upid} inside ${op.kind} ${op.id}, which starts no such task`)
      const m = perOp.get(op.id) ?? new Map<string, Array<string>>()
      m.set(t.type, [...(m.get(t.type) ?? []), t.upid])
      perOp.set(op.id, m)
    }
    for (const [opId, byType] of perOp) {
      const op = ops.find((o) => o.id === opId)!
      for (const [type, upids] of byType) {
        // a retry of a task that failed is not a second run (it did nothing): every task of one
        // type in one op but the last must have failed (as test/fault-schedules.prop.test.ts)
        const ordered = upids.map((u) => tasks.find((x) => x.upid === u)!).sort((a, b) => a.startedAtMs - b.startedAtMs)
        if (ordered.slice(0, -1).some((t) => t.status !== "stopped" || t.exitstatus === "OK")) {
          // each task with how it ended and what the client was answered for the call that started it
          const how = upids.map((u) => {
            const t = tasks.find((x) => x.upid === u)
            const r = requests.find((x) => x.upid === u)
            return `${u} (answered ${r?.status ?? "?"}, ended ${t?.exitstatus ?? t?.status})`
          })
          problems.push(`${op.kind} ${op.vmid} ${opId} (${op.status}: ${op.detail ?? ""}) ran ${upids.length} ${type} tasks: ${how.join(", ")}`)
        }
      }
    }
    expect(problems, context()).toEqual([])
  })

  it("every UPID the journal recorded is a task of that step's type on that guest, and a step done is a task OK", () => {
    const problems: Array<string> = []
    const byUpid = new Map(tasks.map((t) => [t.upid, t]))
    for (const op of ops) {
      for (const s of op.steps) {
        if (s.upid === null) continue
        const t = byUpid.get(s.upid)
        const want = STEP_TASK[op.kind]?.[s.name]
        if (t === undefined) problems.push(`${op.kind} ${op.id} step ${s.name}: UPID ${s.upid} is no task of the simulator`)
        else if (t.id !== String(op.vmid) || t.type !== want) {
          problems.push(`${op.kind} ${op.id} step ${s.name}: UPID ${s.upid} is a ${t.type} on ${t.id}, expected ${want} on ${op.vmid}`)
        } else if (s.status === "done" && t.exitstatus !== "OK") {
          problems.push(`${op.kind} ${op.id} step ${s.name} is done but its task ended ${t.exitstatus}`)
        }
      }
    }
    expect(problems, context()).toEqual([])
  })

  // Seen by this test (seeds 82026 and 3) until d5926db: a 596 on the compensating destroy of a
  // half-built create (PVE applied it: the guest is gone) ended the create needs_operator "could
  // not be removed safely" without reading back, so the desired guest was held forever with
  // nothing left to hold. Compensation now retries transient failures, re-proving the instance.
  it("a guest held for an operator still exists: a hold is never left on a guest the compensation did remove", () => {
    // needs_operator says "could not be undone safely, the guest is held": if the guest is gone
    // (e.g. a 596 on the compensating destroy, which PVE applied), the journal claims what it did
    // not read back, and the desired guest is never created again
    const problems = ops
      .filter((o) => o.status === "needs_operator" && o.vmid !== null && !finalGuests.some((g) => g.vmid === o.vmid))
      .map((o) => `${o.kind} ${o.vmid} ${o.id} is needs_operator, but guest ${o.vmid} does not exist: ${o.detail}`)
    expect(problems, context()).toEqual([])
  })

  // Seen by this test (seeds 82026 and 3) until 9473a28, and pinned in-process by
  // fault-schedules.prop.test.ts: a lock-conflict retry of `pve.destroy(vmid, opts, clearance)`
  // re-sent a single-use Clearance already redeemed by the first attempt (ClearanceRefused), so
  // the half-built guest was held for an operator.
  it("no op failed or was held because the agent spent its own clearance twice (a retry reusing a single-use Clearance)", () => {
    const problems = ops
      .filter((o) => /clearance already used/i.test(o.detail ?? ""))
      .map((o) => `${o.kind} ${o.vmid} ${o.id} ended ${o.status}: ${o.detail}`)
    expect(problems, context()).toEqual([])
  })

  it("the audit chain still verifies", () => {
    expect(auditVerify.status, `${context()}\n${auditVerify.stdout}${auditVerify.stderr}`).toBe(0)
  })
})
