/**
 * Real processes for test/kill9.test.ts: children whose output lines are kept, HTTPS JSON calls
 * to the simulators' admin surfaces (each pinned to its own certificate), a seeded PRNG, and the
 * shipped CLI's `journal list --json` / `audit verify`.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { appendFileSync, copyFileSync, mkdirSync, readdirSync } from "node:fs"
import { request } from "node:https"
import { dirname, join } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"

export const root = join(dirname(fileURLToPath(import.meta.url)), "..")

/**
 * A private copy of the shipped bin and its bundle (test/global-setup.ts built it), so a rebuild
 * of dist/ while this long test runs cannot swap the program under it. The bundle's one external
 * (better-sqlite3) resolves from the repository's node_modules through NODE_PATH (see cleanEnv).
 */
export const snapshotBin = async (into: string): Promise<string> => {
  mkdirSync(join(into, "bin"), { recursive: true })
  mkdirSync(join(into, "dist"), { recursive: true })
  for (let attempt = 1; ; attempt++) {
    try {
      for (const f of readdirSync(join(root, "bin"))) copyFileSync(join(root, "bin", f), join(into, "bin", f))
      copyFileSync(join(root, "dist", "felhom-agent.cjs"), join(into, "dist", "felhom-agent.cjs"))
      break
    } catch (e) {
      // a build in progress elsewhere (it replaces dist/): wait for it
      if (attempt >= 60) throw e
      await sleep(500)
    }
  }
  bin = join(into, "bin", "felhom-agent.cjs")
  return bin
}

/** The entry every process here runs: the shipped bin, or its snapshot once taken. */
export let bin = join(root, "bin", "felhom-agent.cjs")

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** mulberry32: small, seeded, good enough to pick delays reproducibly. */
export const prng = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** The environment without any FELHOM_AGENT_* or systemd variables of the developer's shell. */
export const cleanEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
  ...Object.fromEntries(
    Object.entries(process.env).filter(([k]) =>
      !k.startsWith("FELHOM_AGENT_") && !["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"].includes(k)
    )
  ),
  NODE_PATH: join(root, "node_modules"),
  ...extra
})

/** A child whose stdout/stderr lines are kept (and drained, so it never blocks on a full pipe). */
export class Proc {
  readonly lines: Array<string> = []
  /** Every line ever seen (the kept window is bounded). */
  seen = 0
  exit: string | undefined
  readonly exited: Promise<void>
  private readonly waiters: Array<() => void> = []

  constructor(readonly name: string, readonly child: ChildProcess, readonly logFile?: string, readonly keep = 4000) {
    const onLine = (line: string) => {
      if (logFile !== undefined) appendFileSync(logFile, `${line}\n`)
      this.seen++
      this.lines.push(line)
      if (this.lines.length > keep) this.lines.splice(0, this.lines.length - keep)
      for (const w of this.waiters.splice(0)) w()
    }
    if (child.stdout) createInterface({ input: child.stdout }).on("line", onLine)
    if (child.stderr) createInterface({ input: child.stderr }).on("line", onLine)
    this.exited = new Promise<void>((resolve) => {
      child.on("exit", (code, signal) => {
        this.exit = signal === null ? `exit ${code}` : `signal ${signal}`
        for (const w of this.waiters.splice(0)) w()
        resolve()
      })
      child.on("error", (e) => {
        this.exit = `spawn failed: ${e.message}`
        for (const w of this.waiters.splice(0)) w()
        resolve()
      })
    })
  }

  static start(
    name: string,
    args: ReadonlyArray<string>,
    opts: { readonly cwd: string; readonly env: NodeJS.ProcessEnv; readonly logFile?: string }
  ): Proc {
    return new Proc(name, spawn(process.execPath, [bin, ...args], { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"] }), opts.logFile)
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name}: no pid (${this.exit ?? "not started"})`)
    return this.child.pid
  }

  /** Resolves with the first value `pick` finds in the lines seen so far or to come. */
  async waitFor<A>(what: string, pick: (lines: ReadonlyArray<string>) => A | undefined, timeoutMs = 30_000): Promise<A> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const found = pick(this.lines)
      if (found !== undefined) return found
      if (this.exit !== undefined) throw new Error(`${this.name} ended (${this.exit}) before ${what}:\n${this.tail()}`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`${this.name}: no ${what} within ${timeoutMs} ms:\n${this.tail()}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 250))
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  tail(n = 25): string {
    return this.lines.slice(-n).map((l) => `    ${l}`).join("\n")
  }

  signal(sig: NodeJS.Signals): boolean {
    return this.exit === undefined && this.child.pid !== undefined && this.child.kill(sig)
  }

  async kill9(): Promise<void> {
    this.signal("SIGKILL")
    await this.exited
  }

  async stop(graceMs = 5000): Promise<void> {
    if (this.exit !== undefined || this.child.pid === undefined) return
    this.child.kill("SIGTERM")
    await Promise.race([this.exited, sleep(graceMs)])
    if (this.exit === undefined) await this.kill9()
  }
}

/** `export NAME='value'` lines (shell single quoting, as the simulators print them). */
export const exportsOf = (lines: ReadonlyArray<string>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const line of lines) {
    const m = /^export (FELHOM_AGENT_[A-Z0-9_]+)='(.*)'$/.exec(line.trim())
    if (m) out[m[1]!] = m[2]!.replace(/'\\''/g, "'")
  }
  return out
}

export const having = (names: ReadonlyArray<string>) => (lines: ReadonlyArray<string>) => {
  const found = exportsOf(lines)
  return names.every((n) => found[n] !== undefined) ? found : undefined
}

/** The first capture of `re` in any line. */
export const lineMatch = (re: RegExp) => (lines: ReadonlyArray<string>) => {
  for (const l of lines) {
    const m = re.exec(l)
    if (m) return m[1]!
  }
  return undefined
}

/** One HTTPS JSON call, trusting exactly `ca` (each simulator has its own certificate). */
export const httpsJson = (
  url: string,
  o: { readonly ca: string; readonly token: string; readonly method?: string; readonly body?: unknown; readonly timeoutMs?: number }
) =>
  new Promise<{ readonly status: number; readonly body: unknown }>((resolve, reject) => {
    const payload = o.body === undefined ? undefined : JSON.stringify(o.body)
    const req = request(url, {
      method: o.method ?? "GET",
      ca: o.ca,
      headers: {
        authorization: `Bearer ${o.token}`,
        ...(payload === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) })
      },
      timeout: o.timeoutMs ?? 15_000
    }, (res) => {
      let text = ""
      res.setEncoding("utf8").on("data", (c: string) => (text += c))
      res.on("end", () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: text === "" ? null : JSON.parse(text) })
        } catch (e) {
          reject(new Error(`${url}: ${res.statusCode} not JSON: ${text.slice(0, 300)} (${String(e)})`))
        }
      })
    })
    req.on("timeout", () => req.destroy(new Error(`${url}: timed out`)))
    req.on("error", reject)
    if (payload !== undefined) req.write(payload)
    req.end()
  })

/** Runs the CLI to completion without blocking the worker; stdout, stderr and the exit status. */
export const runCli = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv, timeoutMs = 60_000) =>
  new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env, stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c))
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c))
    child.on("error", reject)
    child.on("close", (status) => resolve({ status, stdout, stderr }))
  })
