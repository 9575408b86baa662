/**
 * Fixtures for the root side of A/B self-update (issue 14): a scratch host root holding the
 * installed layout of src/schema/install.ts with FAKE releases, a fake systemctl that really
 * starts and stops the fake agent of whatever `current` names, and runners for the shipped
 * scripts configs/libexec/felhom-update and configs/libexec/felhom-healthgate.
 *
 * A fake release: bin/felhom-agent (sh) and RELEASE.json. `daemon` execs a tiny node server on the
 * host's loopback port answering /health per the release's behaviour; `release verify` is a stand-in
 * for B's verifier (version, sha256 of every expected file, nothing unlisted), with an optional hook
 * script run first (the TOCTOU tests rewrite the source from it).
 */
import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { SLOT_TARGETS } from "../src/schema/install.js"

export const UPDATE_HELPER = join(__dirname, "..", "configs", "libexec", "felhom-update")
export const HEALTH_GATE = join(__dirname, "..", "configs", "libexec", "felhom-healthgate")

export const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`

/**
 * How a fake release's daemon behaves: ok answers healthy with its version; failing answers 503
 * {"status":"failing"}; exit quits at once; old answers ok with another version (a stale process);
 * flaky answers its first `flakyAfter` health requests ok, then failing (by count, not time, so a
 * loaded machine cannot turn it into a release that never became healthy).
 */
export type Behaviour = "ok" | "failing" | "exit" | "old" | "flaky"

const FAKE_AGENT = `
const http = require("node:http")
const [port, version, behaviour, flakyAfter] = process.argv.slice(2)
if (behaviour === "exit") process.exit(1)
const started = Date.now()
let served = 0
http.createServer((req, res) => {
  served += 1
  const failing = behaviour === "failing" || (behaviour === "flaky" && served > Number(flakyAfter))
  const v = behaviour === "old" ? "0.0.1" : version
  const body = JSON.stringify({ status: failing ? "failing" : "ok", version: v, pid: process.pid, started_at: new Date(started).toISOString(), checks: { loop: "ok", recovered: "ok", store: "ok", hub: "ok" } })
  res.writeHead(failing ? 503 : 200, { "content-type": "application/json" })
  res.end(body)
}).listen(Number(port), "127.0.0.1")
`

// The fake systemctl: records argv; restart kills the running fake agent and starts
// <prefix>/current/bin/felhom-agent daemon in its own session; is-active says whether it runs.
// FAKE_CRASH_CALL=N kills its whole process group (the gate's) on the Nth call, FAKE_CRASH_WHEN
// before or after the call's effect; FAKE_SYSTEMCTL_FAIL=1 makes start fail.
const fakeSystemctl = (base: string, prefix: string) => `#!/bin/sh
b=${shq(base)}
printf '%s\\n' "$*" >>"$b/systemctl.log"
n=$(( $(cat "$b/systemctl.calls" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$b/systemctl.calls"
crash() { if [ "\${FAKE_CRASH_CALL:-}" = "$n" ] && [ "\${FAKE_CRASH_WHEN:-after}" = "$1" ]; then echo "$n" >"$b/crashed"; kill -9 0; fi; }
alive() {
  [ -f "$b/agent.pid" ] || return 1
  p=$(cat "$b/agent.pid")
  [ -r "/proc/$p/stat" ] || return 1
  s=$(cut -d' ' -f3 "/proc/$p/stat")
  [ "$s" != Z ] && [ "$s" != X ]
}
crash before
rc=0
case "$1 $2" in
  "restart felhom-agent.service")
    if alive; then
      p=$(cat "$b/agent.pid"); kill -9 "$p"
      while alive; do sleep 0.02; done
    fi
    setsid ${shq(prefix)}/current/bin/felhom-agent daemon >>"$b/agent.log" 2>&1 </dev/null 9>&- &
    echo $! >"$b/agent.pid"
    ;;
  "is-active felhom-agent.service")
    if alive; then echo active; else echo failed; rc=3; fi
    ;;
  "start --no-block")
    [ "\${FAKE_SYSTEMCTL_FAIL:-}" = 1 ] && rc=1
    ;;
esac
crash after
exit $rc
`

export interface ReleaseSpec {
  readonly version: string
  readonly behaviour?: Behaviour
  readonly flakyAfter?: number
  /** Extra files (relative path → content) beside bin/ and RELEASE.json. */
  readonly files?: Record<string, string>
}

export interface Host {
  readonly base: string
  readonly root: string
  readonly prefix: string
  readonly port: number
  readonly systemctl: string
  /** Writes a fake release tree at `dir` (absolute). */
  readonly writeRelease: (dir: string, spec: ReleaseSpec) => void
  /** The relative target of <prefix>/<name>, or undefined if not a symlink. */
  readonly link: (name: "current" | "last-good") => string | undefined
  readonly setLink: (name: "current" | "last-good", target: string) => void
  readonly state: () => Record<string, unknown> | undefined
  readonly writeState: (s: Record<string, unknown>) => void
  readonly systemctlLog: () => Array<string>
  /** The version the running fake agent answers, or undefined. */
  readonly health: () => Promise<string | undefined>
  readonly killAgent: () => void
  /** Asserts `current` names one of SLOT_TARGETS holding a whole release; returns its version. */
  readonly currentRelease: () => string
  readonly cleanup: () => void
}

export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.on("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const a = s.address()
      const port = typeof a === "object" && a !== null ? a.port : 0
      s.close(() => resolve(port))
    })
  })

/** A scratch host root with <prefix>/package (the given release), current and last-good → package. */
export const makeHost = async (pkg: ReleaseSpec = { version: "1.0.0" }): Promise<Host> => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-update-")))
  chmodSync(base, 0o755)
  const root = join(base, "root")
  const prefix = join(root, "opt", "felhom-agent")
  mkdirSync(join(prefix, "slots"), { recursive: true, mode: 0o755 })
  for (const d of [root, join(root, "opt"), prefix, join(prefix, "slots")]) chmodSync(d, 0o755)
  const port = await freePort()
  writeFileSync(join(base, "port"), String(port))
  writeFileSync(join(base, "fake-agent.cjs"), FAKE_AGENT)
  const systemctl = join(base, "systemctl")
  writeFileSync(systemctl, fakeSystemctl(base, prefix), { mode: 0o755 })

  const writeRelease = (dir: string, spec: ReleaseSpec) => {
    mkdirSync(join(dir, "bin"), { recursive: true })
    const files: Record<string, string> = { ...(spec.files ?? {}) }
    writeFileSync(join(dir, "bin", "felhom-agent"), [
      "#!/bin/sh",
      `b=${shq(base)}`,
      `if [ "$1" = daemon ]; then exec ${shq(process.execPath)} "$b/fake-agent.cjs" "$(cat "$b/port")" ${shq(spec.version)} ${shq(spec.behaviour ?? "ok")} ${spec.flakyAfter ?? 2}; fi`,
      // the stand-in verifier: release verify --dir D --config F --expect-version V
      `if [ "$1 $2" = "release verify" ]; then`,
      `  printf '%s\\0' "$@" >"$b/verify.argv"`,
      `  env >"$b/verify.env"`,
      `  [ -x "$b/verify.hook" ] && "$b/verify.hook"`,
      `  d=$4; v=$8`,
      `  [ -f "$b/expected/$v.sums" ] || { echo "no release $v is known"; exit 1; }`,
      `  grep -q "\\"version\\":\\"$v\\"" "$d/RELEASE.json" || { echo "version mismatch"; exit 1; }`,
      `  (cd "$d" && sha256sum -c --quiet "$b/expected/$v.sums") >/dev/null 2>&1 || { echo "checksum mismatch"; exit 1; }`,
      `  [ "$(cd "$d" && find . -mindepth 1 ! -type d | sort)" = "$(cat "$b/expected/$v.list")" ] || { echo "unlisted file"; exit 1; }`,
      `  echo "verified $v"; exit 0`,
      `fi`,
      `echo "fake felhom-agent ${spec.version}"`
    ].join("\n") + "\n", { mode: 0o755 })
    chmodSync(join(dir, "bin", "felhom-agent"), 0o755)
    for (const [p, c] of Object.entries(files)) {
      mkdirSync(join(dir, p, ".."), { recursive: true })
      writeFileSync(join(dir, p), c, { mode: 0o644 })
    }
    writeFileSync(join(dir, "RELEASE.json"), JSON.stringify({ format: "felhom-release-v1", version: spec.version, created_at: "2026-11-30T00:00:00Z", node: "20.20.2", files: [] }), { mode: 0o644 })
    // what the stand-in verifier expects of this version: these exact files and bytes
    mkdirSync(join(base, "expected"), { recursive: true })
    const list = ["./RELEASE.json", "./bin/felhom-agent", ...Object.keys(files).map((p) => `./${p}`)].sort()
    writeFileSync(join(base, "expected", `${spec.version}.list`), list.join("\n"))
    const sums = list.map((p) => {
      const r = spawnHash(join(dir, p))
      return `${r}  ${p}`
    })
    writeFileSync(join(base, "expected", `${spec.version}.sums`), sums.join("\n") + "\n")
  }

  writeRelease(join(prefix, "package"), pkg)
  symlinkSync("package", join(prefix, "current"))
  symlinkSync("package", join(prefix, "last-good"))

  const link = (name: "current" | "last-good") => {
    const p = join(prefix, name)
    return existsSync(p) || isLink(p) ? (isLink(p) ? readlinkSync(p) : undefined) : undefined
  }
  const setLink = (name: "current" | "last-good", target: string) => {
    rmSync(join(prefix, name), { force: true })
    symlinkSync(target, join(prefix, name))
  }
  const stateFile = join(prefix, "update.json")
  const state = () => (existsSync(stateFile) ? (JSON.parse(readFileSync(stateFile, "utf8")) as Record<string, unknown>) : undefined)
  const writeState = (s: Record<string, unknown>) => writeFileSync(stateFile, JSON.stringify(s) + "\n")
  const systemctlLog = () => (existsSync(join(base, "systemctl.log")) ? readFileSync(join(base, "systemctl.log"), "utf8").split("\n").filter((l) => l !== "") : [])
  const healthOnce = async () => {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(2000) })
      const body = (await r.json()) as { status: string; version: string }
      return body.status === "ok" ? body.version : `${body.status}:${body.version}`
    } catch {
      return undefined
    }
  }
  // a restarted fake agent needs a moment to listen: poll for up to 5 s
  const health = async () => {
    for (let i = 0; i < 50; i++) {
      const v = await healthOnce()
      if (v !== undefined) return v
      await new Promise((r) => setTimeout(r, 100))
    }
    return undefined
  }
  const killAgent = () => {
    const pidFile = join(base, "agent.pid")
    if (!existsSync(pidFile)) return
    try {
      process.kill(Number(readFileSync(pidFile, "utf8").trim()), "SIGKILL")
    } catch {
      // already gone
    }
  }
  const currentRelease = () => {
    const t = link("current")
    if (t === undefined || !(SLOT_TARGETS as ReadonlyArray<string>).includes(t)) throw new Error(`current is ${String(t)}`)
    const dir = join(prefix, t)
    if (!lstatSync(dir).isDirectory()) throw new Error(`${t} is not a directory`)
    if ((lstatSync(join(dir, "bin", "felhom-agent")).mode & 0o111) === 0) throw new Error(`${t} has no executable bin/felhom-agent`)
    return (JSON.parse(readFileSync(join(dir, "RELEASE.json"), "utf8")) as { version: string }).version
  }
  return {
    base,
    root,
    prefix,
    port,
    systemctl,
    writeRelease,
    link,
    setLink,
    state,
    writeState,
    systemctlLog,
    health,
    killAgent,
    currentRelease,
    cleanup: () => {
      killAgent()
      rmSync(base, { recursive: true, force: true })
    }
  }
}

const isLink = (p: string) => {
  try {
    return lstatSync(p).isSymbolicLink()
  } catch {
    return false
  }
}

const spawnHash = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex")

/**
 * Polls, every few milliseconds while a script runs, that `current` names a whole release and
 * update.json parses (it is replaced by rename, never rewritten in place). Returns the stopper,
 * which gives the violations seen and how many samples were taken.
 */
export const watchInvariants = (h: Host) => {
  const violations = new Set<string>()
  let samples = 0
  const timer = setInterval(() => {
    samples += 1
    try {
      h.currentRelease()
    } catch (e) {
      violations.add(`current: ${String(e)}`)
    }
    try {
      h.state()
    } catch (e) {
      violations.add(`update.json: ${String(e)}`)
    }
  }, 3)
  return () => {
    clearInterval(timer)
    return { violations: [...violations], samples }
  }
}

export interface RunResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs a script in its own process group (so the fake systemctl can kill the whole group). */
export const runScript = (argv: ReadonlyArray<string>, env: Record<string, string>, timeoutMs = 30_000) =>
  new Promise<RunResult>((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), {
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ...env }
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL")
      } catch {
        // gone
      }
    }, timeoutMs)
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })

export interface GateTiming {
  readonly grace?: number
  readonly window?: number
  readonly interval?: number
}

/** felhom-healthgate run against the host, with short windows. */
export const runGate = (host: Host, extra: Record<string, string> = {}, t: GateTiming = {}) =>
  runScript([HEALTH_GATE, "run"], {
    FELHOM_GATE_TEST_ROOT: host.root,
    FELHOM_GATE_TEST_SYSTEMCTL: host.systemctl,
    FELHOM_GATE_HEALTH_URL: `http://127.0.0.1:${host.port}/health`,
    FELHOM_GATE_GRACE_SECONDS: String(t.grace ?? 15),
    FELHOM_GATE_WINDOW_SECONDS: String(t.window ?? 0.8),
    FELHOM_GATE_INTERVAL_SECONDS: String(t.interval ?? 0.2),
    ...extra
  })

/** felhom-update with the host root and fake systemctl. */
export const runUpdate = (host: Host, args: ReadonlyArray<string>, extra: Record<string, string> = {}) =>
  runScript([UPDATE_HELPER, ...args], {
    FELHOM_UPDATE_TEST_ROOT: host.root,
    FELHOM_UPDATE_TEST_SYSTEMCTL: host.systemctl,
    ...extra
  })

/** <root>/etc/felhom-agent/agent.json, root-owned 0644 in a root-owned 0755 directory. */
export const writeAgentConfig = (host: Host) => {
  const etc = join(host.root, "etc", "felhom-agent")
  mkdirSync(etc, { recursive: true })
  for (const d of [join(host.root, "etc"), etc]) chmodSync(d, 0o755)
  writeFileSync(join(etc, "agent.json"), "{}\n", { mode: 0o644 })
  chmodSync(join(etc, "agent.json"), 0o644)
  return join(etc, "agent.json")
}

/** The service user's download directory /var/lib/felhom-agent/update/<version>/ with a release. */
export const writeDownload = (host: Host, spec: ReleaseSpec) => {
  const dir = join(host.root, "var", "lib", "felhom-agent", "update", spec.version)
  mkdirSync(join(dir, ".."), { recursive: true })
  host.writeRelease(dir, spec)
  return dir
}
