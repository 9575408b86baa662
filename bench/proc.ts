/**
 * Real processes for the benchmarks: the shipped bin, the simulators it serves (`sim pve`,
 * `sim hub`) and a NOTIFY_SOCKET listener, each a child whose output lines are kept, plus the
 * measurements taken from outside (wall time, VmRSS).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"

export const STARTUP_TIMEOUT_MS = 30_000

export const root = join(dirname(fileURLToPath(import.meta.url)), "..")
/** The shipped bin; BENCH_BIN runs another entry instead (e.g. dist/felhom-agent.cjs, to compare). */
export const bin = resolve(process.env["BENCH_BIN"] ?? join(root, "bin", "felhom-agent.cjs"))

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
export const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/**
 * How the benches run the bin: executed, as an operator or the unit does (its #! line carries
 * its node flags); with BENCH_NODE_FLAGS set (space separated, may be empty), as
 * `node <those flags> bin` instead, to compare V8 settings.
 */
export const binCommand = (args: ReadonlyArray<string>): readonly [string, Array<string>] => {
  const flags = process.env["BENCH_NODE_FLAGS"]
  return flags === undefined ? [bin, [...args]] : [process.execPath, [...flags.split(" ").filter((f) => f.length > 0), bin, ...args]]
}

/** What binCommand runs with, for the report. */
export const binFlagsNote = (): string => {
  const flags = process.env["BENCH_NODE_FLAGS"]
  if (flags !== undefined) return `node ${flags.trim() || "(no flags)"} ${bin}`
  const first = readFileSync(bin, "utf8").split("\n", 1)[0] ?? ""
  return `${bin} executed (${first.replace(/^#!\/usr\/bin\/env -S /, "")})`
}

/** Builds the shipped bundle (what the bin runs). */
export const build = () => {
  const r = spawnSync(process.execPath, ["scripts/build.mjs"], { cwd: root, encoding: "utf8" })
  if (r.status !== 0) throw new Error(`build failed (${r.status}): ${r.stderr}`)
}

/** A child whose stdout/stderr lines are kept (and drained, so it never blocks on a full pipe). */
export class Proc {
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

/** The children of one bench; all are killed if the bench process ends midway. */
export class Procs {
  private readonly all: Array<Proc> = []
  private readonly killAll = () => {
    for (const p of this.all) if (p.exit === undefined && p.child.pid !== undefined) p.child.kill("SIGKILL")
  }

  constructor(private readonly cwd: string) {
    process.once("exit", this.killAll)
  }

  start(name: string, cmd: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env): Proc {
    const p = new Proc(name, spawn(cmd, args, { cwd: this.cwd, env, stdio: ["ignore", "pipe", "pipe"] }))
    this.all.push(p)
    return p
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.all.map((p) => p.stop()))
    process.removeListener("exit", this.killAll)
  }
}

// the simulators' `export NAME='value'` lines, parsed as the kill -9 test parses them
export { exportsOf, having } from "../test/kill9-support.js"
import { having } from "../test/kill9-support.js"

export const PVE_EXPORTS = [
  "FELHOM_AGENT_PROXMOX_URL",
  "FELHOM_AGENT_PROXMOX_TOKEN_ID",
  "FELHOM_AGENT_PROXMOX_TOKEN_SECRET",
  "FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256"
] as const

/** Starts `sim pve` on a free loopback port with `seedFile`; resolves with its exports. */
export const startSimPve = async (procs: Procs, seedFile: string) => {
  const pve = procs.start("sim pve", ...binCommand(["sim", "pve", "--port", "0", "--seed", seedFile]))
  const env = await pve.waitFor("PVE exports", having(PVE_EXPORTS))
  return { proc: pve, env }
}

export const rssKiB = (pid: number): number => {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  if (!m) throw new Error(`no VmRSS for pid ${pid}`)
  return Number(m[1])
}

/** Wall time of one run of `cmd args` to its exit, in ms. */
export const wallMs = (cmd: string, args: ReadonlyArray<string>): number => {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(cmd, args, { stdio: "ignore" })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}`)
  return Number(process.hrtime.bigint() - t0) / 1e6
}

/** `node -e 0`: the baseline of every start-up figure. */
export const bareNodeMs = () => wallMs(process.execPath, ["-e", "0"])

/** Binds the datagram socket, then prints `<time.time()> <json of the datagram>` per message. */
export const NOTIFY_LISTENER = String.raw`
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
export const datagrams = (lines: ReadonlyArray<string>): Array<readonly [number, string]> =>
  lines.flatMap((l) => {
    const m = /^(\d+\.\d+) (".*")$/.exec(l)
    if (!m) return []
    const text: unknown = JSON.parse(m[2]!)
    return typeof text === "string" ? [[Number(m[1]) * 1000, text] as const] : []
  })
