/**
 * Start-up and memory of the shipped bin, as real processes (medians of BENCH_STARTUP_RUNS ≥ 10
 * runs, each against a baseline measured in the same run, interleaved so machine noise hits both):
 *
 * - cold start: wall time of `felhom-agent version` vs `node -e 0`;
 * - daemon READY: spawn to READY=1 of `felhom-agent daemon` with a fresh state directory against
 *   `sim pve` (200 guests) and `sim hub`, both real processes on loopback, vs `node -e 0` (a
 *   python3 listener on NOTIFY_SOCKET stamps READY=1; Node cannot bind AF_UNIX datagram sockets);
 * - idle RSS (VmRSS) of that daemon 10 s after READY=1 vs an idle `node` (a bare event loop);
 * - RSS under load: one more daemon, idle, then the hub publishes a desired state with drift on
 *   every guest and the daemon is poked: VmRSS sampled every 0.5 s while it converges.
 *
 * BENCH_NODE_FLAGS (space separated) are passed to every bin spawned, to compare V8 settings.
 */
import { benchGuests } from "./seed.js"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { devHubCaPem } from "../src/sim/hub/index.js"
import { defaultSeedJson } from "../src/sim/pve/index.js"
import {
  bareNodeMs,
  binCommand,
  binFlagsNote,
  build,
  datagrams,
  having,
  median,
  NOTIFY_LISTENER,
  type Proc,
  Procs,
  rssKiB,
  sleep,
  startSimPve,
  wallMs
} from "./proc.js"
import { printTable, type Row, row } from "./table.js"

const GUESTS = Number(process.env["BENCH_DAEMON_GUESTS"] ?? 200)
/** 10 by default (fewer only when asked for, to try things out) */
const RUNS = Number(process.env["BENCH_STARTUP_RUNS"] ?? 10)
const COLD_RUNS = Math.max(RUNS, 15)
const IDLE_MS = 10_000
const LOAD_MS = Number(process.env["BENCH_LOAD_MS"] ?? 30_000)

export interface StartupResult {
  readonly runs: number
  /** `felhom-agent version` vs `node -e 0`, ms */
  readonly versionMs: number
  readonly nodeMs: number
  /** spawn → READY=1 vs `node -e 0` measured between the daemon runs, ms */
  readonly readyMs: number
  readonly readyNodeMs: number
  /** VmRSS 10 s after READY=1 vs an idle node, MiB */
  readonly idleRssMiB: number
  readonly idleRssRange: readonly [number, number]
  readonly nodeRssMiB: number
  /** VmRSS while converging (median and peak of the samples), MiB; undefined when BENCH_LOAD_MS=0 */
  readonly loadRss: { readonly medianMiB: number; readonly peakMiB: number; readonly samples: number; readonly note: string } | undefined
}

/** Drift on every guest: a third more memory, a third a bigger disk, the stopped ones started. */
const desiredJson = () => ({
  guests: benchGuests(GUESTS).map((g, i) => ({
    vmid: g.vmid,
    hostname: g.config.hostname,
    cores: 2,
    memory_bytes: (i % 3 === 0 ? 4096 : 2048) * 1024 * 1024,
    swap_mib: 512,
    rootfs_gib: i % 3 === 1 ? 16 : 8,
    power: "running",
    description: "",
    tags: []
  }))
})

const coldStart = () => {
  const version = binCommand(["version"])
  bareNodeMs() // warm the page cache for both
  wallMs(...version)
  const base: Array<number> = []
  const ours: Array<number> = []
  for (let i = 0; i < COLD_RUNS; i++) {
    base.push(bareNodeMs())
    ours.push(wallMs(...version))
  }
  return { versionMs: median(ours), nodeMs: median(base) }
}

/** VmRSS of `n` idle nodes side by side, after 3 s. */
const idleNodeRss = async (procs: Procs, n: number) => {
  const idle = Array.from({ length: n }, (_, i) => procs.start(`idle node ${i}`, process.execPath, ["-e", "setInterval(() => {}, 1000)"]))
  await sleep(3000)
  const rss = idle.map((p) => rssKiB(p.pid))
  await Promise.all(idle.map((p) => p.stop()))
  return median(rss) / 1024
}

export const startupBench = async (opts: { readonly build?: boolean } = {}): Promise<StartupResult> => {
  if (opts.build !== false) build()
  const dir = mkdtempSync(join(tmpdir(), "felhom-startup-bench-"))
  const procs = new Procs(dir)
  try {
    const cold = coldStart()
    const nodeRssMiB = await idleNodeRss(procs, RUNS)

    const seedFile = join(dir, "seed.json")
    writeFileSync(seedFile, JSON.stringify({ ...(defaultSeedJson as object), guests: benchGuests(GUESTS) }))
    // the dev hub's own certificate (not the PVE simulator's: the two clients trust separately)
    const caFile = join(dir, "hub-ca.pem")
    writeFileSync(caFile, devHubCaPem)
    const configFile = join(dir, "agent.json")
    // as production runs it: with the controllers' local API (issue 11) listening on loopback
    writeFileSync(configFile, JSON.stringify({ authz: { signers: [] }, local_api: { listen: "127.0.0.1", port: 0 } }))
    const desiredFile = join(dir, "desired.json") // written only for the load phase
    const socketPath = join(dir, "notify.sock")

    const pve = await startSimPve(procs, seedFile)
    const hub = procs.start("sim hub", ...binCommand(["sim", "hub", "--port", "0", "--host-id", "bench-host", "--desired", desiredFile]))
    const listener = procs.start("notify listener", "python3", ["-u", "-c", NOTIFY_LISTENER, socketPath])
    const hubEnv = await hub.waitFor("hub exports", having(["FELHOM_AGENT_HUB_URL", "FELHOM_AGENT_HUB_API_KEY", "FELHOM_AGENT_HOST_ID"]))
    await listener.waitFor("socket bound", (lines) => (lines.includes("listening") ? true : undefined))

    // the daemon sees only its own FELHOM_AGENT_* and no systemd variables from the bench's environment
    const inherited = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_") && !["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"].includes(k))
    )
    const daemonEnv = (stateDir: string): NodeJS.ProcessEnv => ({
      ...inherited,
      ...pve.env,
      FELHOM_AGENT_HUB_URL: hubEnv["FELHOM_AGENT_HUB_URL"],
      FELHOM_AGENT_HUB_API_KEY: hubEnv["FELHOM_AGENT_HUB_API_KEY"],
      FELHOM_AGENT_HOST_ID: hubEnv["FELHOM_AGENT_HOST_ID"],
      FELHOM_AGENT_HUB_CA_FILE: caFile,
      FELHOM_AGENT_STATE_DIR: stateDir,
      FELHOM_AGENT_CONFIG: configFile,
      NOTIFY_SOCKET: socketPath
    })

    /** Spawns a daemon with a fresh state directory; resolves at its READY=1 with the time it took. */
    const spawnDaemon = async (run: string): Promise<{ daemon: Proc; spawnedAt: number; readyMs: number }> => {
      const stateDir = join(dir, `state-${run}`)
      mkdirSync(stateDir, { mode: 0o700 })
      const seen = listener.lines.length
      const spawnedAt = Date.now()
      const daemon = procs.start(`daemon ${run}`, ...binCommand(["daemon"]), daemonEnv(stateDir))
      const readyAt = await listener.waitFor("READY=1 from the daemon", (lines) => {
        if (daemon.exit !== undefined) throw new Error(`daemon ended (${daemon.exit}) before READY=1:\n${daemon.tail()}`)
        return datagrams(lines.slice(seen)).find(([, text]) => text.split("\n").includes("READY=1"))?.[0]
      })
      return { daemon, spawnedAt, readyMs: readyAt - spawnedAt }
    }

    const ready: Array<number> = []
    const readyNode: Array<number> = []
    const idleRss: Array<number> = []
    bareNodeMs()
    for (let i = 0; i < RUNS; i++) {
      readyNode.push(bareNodeMs())
      const { daemon, readyMs } = await spawnDaemon(String(i))
      ready.push(readyMs)
      await sleep(IDLE_MS)
      if (daemon.exit !== undefined) throw new Error(`daemon ended (${daemon.exit}) while idle:\n${daemon.tail()}`)
      idleRss.push(rssKiB(daemon.pid) / 1024)
      await daemon.stop()
    }

    let loadRss: StartupResult["loadRss"]
    if (LOAD_MS > 0) {
      const { daemon } = await spawnDaemon("load")
      await sleep(2000)
      const published = hub.lines.length
      writeFileSync(desiredFile, JSON.stringify(desiredJson()))
      await hub.waitFor("desired state published", (lines) => (lines.slice(published).some((l) => l.startsWith("published ")) ? true : undefined))
      const logged = daemon.lines.length
      daemon.child.kill("SIGUSR1") // a cycle now: fetch the new generation and reconcile
      await daemon.waitFor("reconcile start", (lines) => (lines.slice(logged).some((l) => /reconcile generation \d+: \d+ action/.test(l)) ? true : undefined))
      const samples: Array<number> = []
      const until = Date.now() + LOAD_MS
      let done = false
      while (Date.now() < until && !done) {
        if (daemon.exit !== undefined) throw new Error(`daemon ended (${daemon.exit}) while converging:\n${daemon.tail()}`)
        samples.push(rssKiB(daemon.pid) / 1024)
        // the outcomes are logged, one per action, when the whole plan has run
        done = daemon.lines.slice(logged).some((l) => /reconcile (?!generation|note|failed)\S+ \d+: /.test(l))
        await sleep(500)
      }
      const actions = daemon.lines.slice(logged).find((l) => /reconcile generation/.test(l))?.replace(/^.*reconcile generation/, "generation") ?? ""
      loadRss = {
        medianMiB: median(samples),
        peakMiB: Math.max(...samples),
        samples: samples.length,
        note: `${samples.length} samples over ${((samples.length * 500) / 1000).toFixed(0)} s of converging (${actions.replace(/".*$/, "").trim()}${done ? ", finished" : ", still running"})`
      }
      await daemon.stop()
    }

    return {
      runs: RUNS,
      versionMs: cold.versionMs,
      nodeMs: cold.nodeMs,
      readyMs: median(ready),
      readyNodeMs: median(readyNode),
      idleRssMiB: median(idleRss),
      idleRssRange: [Math.min(...idleRss), Math.max(...idleRss)],
      nodeRssMiB,
      loadRss
    }
  } finally {
    await procs.stopAll()
    rmSync(dir, { recursive: true, force: true })
  }
}

const MB = 1_000_000 / (1024 * 1024) // MiB per MB

export const startupRows = (r: StartupResult): ReadonlyArray<Row> => [
  row({
    metric: `felhom-agent version, cold start (median of ${COLD_RUNS})`,
    ours: `${r.versionMs.toFixed(0)} ms`,
    baseline: `${r.nodeMs.toFixed(0)} ms node -e 0`,
    ratio: r.versionMs / r.nodeMs,
    goal: "≤ 2.5×"
  }),
  row({
    metric: `daemon spawn to READY=1, ${GUESTS} guests (median of ${r.runs})`,
    ours: `${r.readyMs.toFixed(0)} ms`,
    baseline: `${r.readyNodeMs.toFixed(0)} ms node -e 0`,
    ratio: r.readyMs / r.readyNodeMs,
    goal: "≤ 4×"
  }),
  row({
    metric: `daemon idle RSS ${IDLE_MS / 1000} s after READY=1 (median of ${r.runs}; range ${(r.idleRssRange[0] / MB).toFixed(1)}-${(r.idleRssRange[1] / MB).toFixed(1)} MB)`,
    ours: `${(r.idleRssMiB / MB).toFixed(1)} MB`,
    baseline: `${(r.nodeRssMiB / MB).toFixed(1)} MB idle node`,
    ratio: r.idleRssMiB / r.nodeRssMiB,
    goal: "≤ 80 MB",
    met: r.idleRssMiB / MB <= 80
  }),
  ...(r.loadRss === undefined ? [] : [row({
    metric: `daemon RSS while converging (median; peak ${(r.loadRss.peakMiB / MB).toFixed(1)} MB; ${r.loadRss.note})`,
    ours: `${(r.loadRss.medianMiB / MB).toFixed(1)} MB`,
    baseline: `${(r.nodeRssMiB / MB).toFixed(1)} MB idle node`,
    ratio: r.loadRss.medianMiB / r.nodeRssMiB,
    goal: "—"
  })])
]

if (process.argv[1] === fileURLToPath(import.meta.url)) void startupBench().then((r) => printTable(`startup (${binFlagsNote()})`, startupRows(r)))
