// Primes the V8 code cache beside the bundle (bin/code-cache.cjs reads it; issue 9, SPEC §17).
// Run by scripts/build.mjs after bundling, or alone: `node scripts/code-cache.mjs [--root DIR]`
// (DIR: an install with bin/, dist/felhom-agent.cjs and configs/agent.example.json; the tests
// prime a private copy).
//
// A cache holds the bytecode of every function compiled when it was serialized, so each is made
// by a real run through the shipped bin with FELHOM_AGENT_CODE_CACHE=prime (the node flags on the
// bin's #! line, not this script's): `felhom-agent version` for the CLI's cache, and the daemon from spawn to
// READY (config, journal recovery, clients, authz) for the daemon's, with the example config
// pointed at a closed loopback port, stopped with SIGTERM. Last, a plain `version` run must
// report `accepted`.
//
// Offline and best effort: nothing is contacted beyond loopback, and a priming run that fails
// is a warning; the build ships with what was primed, or with no cache (the bin then compiles
// the bundle itself and writes a cache at its first run where the directory is writable).
import { spawn, spawnSync } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..")
const CACHE_FILE = /^felhom-agent\.cjs\.([a-z]+)\.[0-9a-f]+\.cache(\.\d+\.tmp)?$/
const RUN_TIMEOUT_MS = 60_000

/** Removes the caches (and temp files) beside the bundle, of one role or all: a new bundle starts from none. */
export const removeCodeCaches = (root = ROOT, role = undefined) => {
  const dist = join(root, "dist")
  let names = []
  try {
    names = readdirSync(dist)
  } catch {
    return
  }
  for (const name of names) {
    const m = CACHE_FILE.exec(name)
    if (m !== null && (role === undefined || m[1] === role)) {
      try {
        unlinkSync(join(dist, name))
      } catch {
        // raced with another build removing it
      }
    }
  }
}

/**
 * The node flags on the bin's `#!/usr/bin/env -S node ...` line: the flags it runs with when
 * executed (and the unit's ExecStart passes the same). V8 accepts a cache only under the flags it
 * was made with, so every priming run uses them.
 */
export const binNodeFlags = (bin) => {
  const first = readFileSync(bin, "utf8").split("\n", 1)[0]
  const m = /^#!\/usr\/bin\/env(?: -S)? node((?:\s+--[a-z0-9-]+(?:=\S+)?)*)\s*$/.exec(first)
  if (m === null) throw new Error(`${bin}: unexpected first line ${JSON.stringify(first)}`)
  return m[1].split(/\s+/).filter((f) => f.length > 0)
}

/** What the shipped bin sees: no FELHOM_AGENT_*, NODE_OPTIONS or systemd variables from this shell. */
const cleanEnv = (extra) => ({
  ...Object.fromEntries(
    Object.entries(process.env).filter(([k]) =>
      !k.startsWith("FELHOM_AGENT_") && !["NODE_OPTIONS", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"].includes(k)
    )
  ),
  FELHOM_AGENT_DEBUG_CACHE: "1",
  ...extra
})

/** The cache lines the bin printed on stderr. */
const PREFIX = "felhom-agent: code cache "
const cacheLines = (stderr) => stderr.split("\n").filter((l) => l.startsWith(PREFIX)).map((l) => l.slice(PREFIX.length))

const primeVersion = (bin, env) => {
  const r = spawnSync(process.execPath, [...binNodeFlags(bin), bin, "version"], { env, encoding: "utf8", timeout: RUN_TIMEOUT_MS })
  if (r.status !== 0) throw new Error(`version exited ${r.status ?? r.signal}: ${r.stderr.trim()}`)
  const lines = cacheLines(r.stderr)
  if (!lines.some((l) => l.startsWith("written"))) throw new Error(`version wrote no cache: ${lines.join("; ")}`)
}

/** The daemon up to READY (`message=ready` in its log), then SIGTERM: its exit writes the cache. */
const primeDaemon = (root, bin, env, dir) =>
  new Promise((resolve, reject) => {
    const config = JSON.parse(readFileSync(join(root, "configs", "agent.example.json"), "utf8"))
    config.host_id = "code-cache-prime"
    config.state_dir = join(dir, "state")
    config.proxmox.url = "https://127.0.0.1:9" // never contacted before READY; refused after
    config.hub.url = "https://127.0.0.1:9"
    // the local API (issue 11) is part of the daemon's start: on loopback, any free port
    config.local_api = { ...config.local_api, listen: "127.0.0.1", port: 0 }
    delete config.local_api.advertise_url
    const configFile = join(dir, "agent.json")
    writeFileSync(configFile, JSON.stringify(config))
    const child = spawn(process.execPath, [...binNodeFlags(bin), bin, "daemon"], {
      cwd: dir,
      env: { ...env, FELHOM_AGENT_CONFIG: configFile },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    let stopped = false
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`daemon: no READY within ${RUN_TIMEOUT_MS / 1000} s:\n${out.slice(-2000)}${err.slice(-2000)}`))
    }, RUN_TIMEOUT_MS)
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      out += chunk
      if (!stopped && /message="?ready\b/.test(out)) {
        stopped = true
        child.kill("SIGTERM")
      }
    })
    child.stderr.setEncoding("utf8").on("data", (chunk) => (err += chunk))
    child.on("error", (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      const lines = cacheLines(err)
      if (!stopped) reject(new Error(`daemon ended (${signal ?? `exit ${code}`}) before READY:\n${out.slice(-2000)}${err.slice(-2000)}`))
      else if (!lines.some((l) => l.startsWith("written"))) reject(new Error(`daemon wrote no cache (${signal ?? `exit ${code}`}): ${lines.join("; ")}`))
      else resolve()
    })
  })

/** Primes the caches; true when a plain `version` run then accepts one. Never throws. */
export const primeCodeCache = async ({ root = ROOT } = {}) => {
  const bin = join(root, "bin", "felhom-agent.cjs")
  removeCodeCaches(root)
  const dir = mkdtempSync(join(tmpdir(), "felhom-code-cache-"))
  const env = cleanEnv({ FELHOM_AGENT_CODE_CACHE: "prime", FELHOM_AGENT_CONFIG: join(dir, "none.json") })
  writeFileSync(join(dir, "none.json"), "{}")
  const failed = (role, what, e) => {
    removeCodeCaches(root, role) // what a failed run wrote at exit is no measure of a start
    console.warn(`code cache: ${what} failed, shipping without a ${role} cache: ${e instanceof Error ? e.message : e}`)
  }
  try {
    try {
      primeVersion(bin, env)
    } catch (e) {
      failed("cli", "priming `version`", e)
    }
    try {
      await primeDaemon(root, bin, env, dir)
    } catch (e) {
      failed("daemon", "priming the daemon's start", e)
    }
    const check = spawnSync(process.execPath, [...binNodeFlags(bin), bin, "version"], { env: cleanEnv({ FELHOM_AGENT_CONFIG: join(dir, "none.json") }), encoding: "utf8", timeout: RUN_TIMEOUT_MS })
    const lines = cacheLines(check.stderr ?? "")
    if (check.status === 0 && lines[0] === "accepted") return true
    removeCodeCaches(root, "cli") // what that run wrote at exit is no primed cache either
    console.warn(`code cache: a plain \`version\` run did not accept it (exit ${check.status}: ${lines.join("; ") || check.stderr.trim()})`)
    return false
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const at = process.argv.indexOf("--root")
  process.exitCode = (await primeCodeCache(at > 0 ? { root: process.argv[at + 1] } : {})) ? 0 : 1
}
