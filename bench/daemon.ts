/**
 * The shipped daemon as a real process against the PVE simulator (200 guests) and the dev hub,
 * both as real processes on loopback: time from spawn to READY=1 (a python3 listener on the
 * NOTIFY_SOCKET datagram socket stamps it; Node cannot bind AF_UNIX datagram sockets) as a ratio
 * to `node -e 0`, and idle RSS after ~10 s as a ratio to an idle `node`, both baselines measured
 * in the same run.
 */
import { benchGuests } from "./seed.js"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { devHubCaPem } from "../src/sim/hub/index.js"
import { defaultSeedJson } from "../src/sim/pve/index.js"

const GUESTS = Number(process.env["BENCH_DAEMON_GUESTS"] ?? 200)
const IDLE_MS = 10_000
const BASE_RUNS = 10
const STARTUP_TIMEOUT_MS = 30_000

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const bin = join(root, "bin", "felhom-agent.cjs")

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const guests = benchGuests(GUESTS)

/** A child whose stdout/stderr lines are kept (and drained, so it never blocks on a full pipe). */
class Proc {
  readonly lines: Array<string> = []
  private readonly waiters: Array<() => void> = []
  exit: string | undefined

  constructor(readonly name: string, readonly child: ChildProcess) {
    const onLine = (line: string) => {
      this.lines.push(line)
      if (this.lines.length > 2000) this.lines.splice(0, 1000)
      for (const w of this.waiters.splice(0)) w()
    }
    if (child.stdout) createInterface({ input: child.stdout }).on("line", onLine)
    if (child.stderr) createInterface({ input: child.stderr }).on("line", onLine)
    child.on("exit", (code, signal) => {
      this.exit = signal === null ? `exit ${code}` : `signal ${signal}`
      for (const w of this.waiters.splice(0)) w()
    })
    child.on("error", (e) => {
      this.exit = `spawn failed: ${e.message}`
      for (const w of this.waiters.splice(0)) w()
    })
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name}: no pid (${this.exit ?? "not started"})`)
    return this.child.pid
  }

  /** Resolves with the first value `pick` finds in the lines seen so far or to come. */
  async waitFor<A>(what: string, pick: (lines: ReadonlyArray<string>) => A | undefined, timeoutMs = STARTUP_TIMEOUT_MS): Promise<A> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const found = pick(this.lines)
      if (found !== undefined) return found
      if (this.exit !== undefined) throw new Error(`${this.name} ended (${this.exit}) before ${what}:\n${this.tail()}`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`${this.name}: no ${what} within ${timeoutMs} ms:\n${this.tail()}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 250)) // also notices other processes ending
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  tail(n = 20): string {
    return this.lines.slice(-n).map((l) => `    ${l}`).join("\n")
  }

  async stop(): Promise<void> {
    if (this.exit !== undefined || this.child.pid === undefined) return
    this.child.kill("SIGTERM")
    for (let i = 0; i < 50 && this.exit === undefined; i++) await sleep(100)
    if (this.exit === undefined) this.child.kill("SIGKILL")
  }
}

/** `export NAME='value'` lines (shell single quoting, as the simulators print them). */
const exportsOf = (lines: ReadonlyArray<string>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const line of lines) {
    const m = /^export (FELHOM_AGENT_[A-Z0-9_]+)='(.*)'$/.exec(line.trim())
    if (m) out[m[1]!] = m[2]!.replace(/'\\''/g, "'")
  }
  return out
}

const having = (names: ReadonlyArray<string>) => (lines: ReadonlyArray<string>) => {
  const found = exportsOf(lines)
  return names.every((n) => found[n] !== undefined) ? found : undefined
}

const rssKiB = (pid: number): number => {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  if (!m) throw new Error(`no VmRSS for pid ${pid}`)
  return Number(m[1])
}

const nodeWallMs = (): number => {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(process.execPath, ["-e", "0"], { stdio: "ignore" })
  if (r.status !== 0) throw new Error(`node -e 0 exited ${r.status}`)
  return Number(process.hrtime.bigint() - t0) / 1e6
}

/** Binds the datagram socket, then prints `<time.time()> <json of the datagram>` per message. */
const LISTENER = String.raw`
import array, json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    data, anc, _flags, _addr = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
    t = time.time()
    # systemd-notify's BARRIER=1 passes a pipe fd and waits until the manager closes it
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    print("%.6f %s" % (t, json.dumps(data.decode("utf-8", "replace"))), flush=True)
`

/** Datagrams the listener has printed: [epoch ms, text]. */
const datagrams = (lines: ReadonlyArray<string>): Array<readonly [number, string]> =>
  lines.flatMap((l) => {
    const m = /^(\d+\.\d+) (".*")$/.exec(l)
    if (!m) return []
    const text: unknown = JSON.parse(m[2]!)
    return typeof text === "string" ? [[Number(m[1]) * 1000, text] as const] : []
  })

export interface DaemonBenchResult {
  readonly readyMs: number
  readonly nodeMs: number
  readonly readyRatio: number
  readonly rssMiB: number
  readonly nodeRssMiB: number
  readonly rssRatio: number
}

export const daemonBench = async (): Promise<DaemonBenchResult> => {
  const build = spawnSync(process.execPath, ["scripts/build.mjs"], { cwd: root, encoding: "utf8" })
  if (build.status !== 0) throw new Error(`build failed (${build.status}): ${build.stderr}`)

  const dir = mkdtempSync(join(tmpdir(), "felhom-daemon-bench-"))
  const procs: Array<Proc> = []
  const killAll = () => {
    for (const p of procs) if (p.exit === undefined && p.child.pid !== undefined) p.child.kill("SIGKILL")
  }
  // a bench killed midway (Ctrl-C, an uncaught error) leaves no children behind
  process.once("exit", killAll)
  const start = (name: string, cmd: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env) => {
    const p = new Proc(name, spawn(cmd, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] }))
    procs.push(p)
    return p
  }

  try {
    const seedFile = join(dir, "seed.json")
    writeFileSync(seedFile, JSON.stringify({ ...(defaultSeedJson as object), guests }))
    // the dev hub's own certificate (not the PVE simulator's: the two clients trust separately)
    const caFile = join(dir, "hub-ca.pem")
    writeFileSync(caFile, devHubCaPem)
    const configFile = join(dir, "agent.json")
    writeFileSync(configFile, JSON.stringify({ authz: { signers: [] } }))
    const socketPath = join(dir, "notify.sock")

    // baselines first, while nothing else runs
    nodeWallMs() // warm the page cache
    const base: Array<number> = []
    for (let i = 0; i < BASE_RUNS; i++) base.push(nodeWallMs())
    const nodeMs = median(base)
    const idle = start("idle node", process.execPath, ["-e", "setInterval(() => {}, 1000)"])
    await sleep(2000)
    const nodeRss = rssKiB(idle.pid)
    await idle.stop()

    const pve = start("sim pve", process.execPath, [bin, "sim", "pve", "--port", "0", "--seed", seedFile])
    const hub = start("sim hub", process.execPath, [bin, "sim", "hub", "--port", "0", "--host-id", "bench-host"])
    const listener = start("notify listener", "python3", ["-u", "-c", LISTENER, socketPath])
    const pveEnv = await pve.waitFor("PVE exports", having([
      "FELHOM_AGENT_PROXMOX_URL",
      "FELHOM_AGENT_PROXMOX_TOKEN_ID",
      "FELHOM_AGENT_PROXMOX_TOKEN_SECRET",
      "FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256"
    ]))
    const hubEnv = await hub.waitFor("hub exports", having(["FELHOM_AGENT_HUB_URL", "FELHOM_AGENT_HUB_API_KEY", "FELHOM_AGENT_HOST_ID"]))
    await listener.waitFor("socket bound", (lines) => (lines.includes("listening") ? true : undefined))

    // the daemon sees only its own FELHOM_AGENT_* and no systemd variables from the bench's environment
    const inherited = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_") && !["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"].includes(k))
    )
    const env: NodeJS.ProcessEnv = {
      ...inherited,
      ...pveEnv,
      FELHOM_AGENT_HUB_URL: hubEnv["FELHOM_AGENT_HUB_URL"],
      FELHOM_AGENT_HUB_API_KEY: hubEnv["FELHOM_AGENT_HUB_API_KEY"],
      FELHOM_AGENT_HOST_ID: hubEnv["FELHOM_AGENT_HOST_ID"],
      FELHOM_AGENT_HUB_CA_FILE: caFile,
      FELHOM_AGENT_STATE_DIR: dir,
      FELHOM_AGENT_CONFIG: configFile,
      NOTIFY_SOCKET: socketPath
    }
    const spawnedAt = Date.now()
    const daemon = start("daemon", process.execPath, [bin, "daemon"], env)
    const readyAt = await listener.waitFor("READY=1 from the daemon", (lines) => {
      if (daemon.exit !== undefined) throw new Error(`daemon ended (${daemon.exit}) before READY=1:\n${daemon.tail()}`)
      return datagrams(lines).find(([, text]) => text.split("\n").includes("READY=1"))?.[0]
    })
    const readyMs = readyAt - spawnedAt

    const samples: Array<number> = []
    for (const at of [IDLE_MS - 2000, IDLE_MS - 1000, IDLE_MS]) {
      await sleep(Math.max(0, spawnedAt + readyMs + at - Date.now()))
      if (daemon.exit !== undefined) throw new Error(`daemon ended (${daemon.exit}) while idle:\n${daemon.tail()}`)
      samples.push(rssKiB(daemon.pid))
    }
    const rss = samples[samples.length - 1]!
    const reports = hub.lines.flatMap((l) => {
      const m = /report from \S+: (\d+) guest/.exec(l)
      return m ? [Number(m[1])] : []
    })
    const notifies = datagrams(listener.lines).map(([, t]) => t.split("\n")[0]).join(", ")

    const result: DaemonBenchResult = {
      readyMs,
      nodeMs,
      readyRatio: readyMs / nodeMs,
      rssMiB: rss / 1024,
      nodeRssMiB: nodeRss / 1024,
      rssRatio: rss / nodeRss
    }
    console.log(
      `daemon (real process, ${GUESTS} guests on the PVE simulator, dev hub; reports the hub got: ${reports.length}${
        reports.length > 0 ? `, last with ${reports[reports.length - 1]} guests` : ""
      }; notifications: ${notifies}):\n` +
        `  spawn to READY=1 ${result.readyMs.toFixed(0)} ms vs node -e 0 ${result.nodeMs.toFixed(0)} ms (median of ${BASE_RUNS}): ratio ${result.readyRatio.toFixed(2)}x\n` +
        `  idle RSS after ${IDLE_MS / 1000} s ${result.rssMiB.toFixed(1)} MiB (samples ${samples.map((k) => (k / 1024).toFixed(1)).join(", ")}) ` +
        `vs idle node ${result.nodeRssMiB.toFixed(1)} MiB: ratio ${result.rssRatio.toFixed(2)}x`
    )
    return result
  } finally {
    await Promise.all(procs.map((p) => p.stop()))
    process.removeListener("exit", killAll)
    rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) void daemonBench()
