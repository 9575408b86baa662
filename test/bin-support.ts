/**
 * Running the shipped bin in tests: a clean environment (no FELHOM_AGENT_* from the caller), a
 * non-blocking runner that never orphans a child, and `sim pve` started as its own process.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { join } from "node:path"

export const root = join(__dirname, "..")
export const bin = join(root, "bin", "felhom-agent.cjs")

export interface RunResult {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

/** The caller's environment without FELHOM_AGENT_*, the config pointed at `configFile`, then `extra`. */
export const cleanEnv = (configFile: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_"))),
  FELHOM_AGENT_CONFIG: configFile,
  ...extra
}) as NodeJS.ProcessEnv

/**
 * A runner of node with `argv` that does not block this worker (a long spawnSync keeps vitest's
 * RPC replies unread and fails the run); `kill` ends every child still running (for afterAll).
 */
export const nodeRunner = (env: (extra: Record<string, string>) => NodeJS.ProcessEnv) => {
  const running = new Set<ChildProcess>()
  const spawnAsync = (argv: Array<string>, extra: Record<string, string> = {}, timeoutMs = 60_000) =>
    new Promise<RunResult>((resolve, reject) => {
      const child = spawn(process.execPath, argv, { env: env(extra), stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs })
      running.add(child)
      child.on("exit", () => running.delete(child))
      let stdout = ""
      let stderr = ""
      child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c))
      child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c))
      child.on("error", reject)
      child.on("close", (status) => resolve({ status, stdout, stderr }))
    })
  return {
    /** Children to kill in afterAll: a test that spawns its own adds them here. */
    running,
    spawnAsync,
    run: (args: Array<string>, extra: Record<string, string> = {}, timeoutMs = 60_000) => spawnAsync([bin, ...args], extra, timeoutMs),
    kill: () => {
      for (const child of running) child.kill("SIGKILL")
    }
  }
}

/** `felhom-agent sim pve --port 0 [--seed FILE]` until it prints its exports (the connection settings). */
export const startSimPve = async (env: NodeJS.ProcessEnv, seedFile?: string) => {
  const args = [bin, "sim", "pve", "--port", "0", ...(seedFile === undefined ? [] : ["--seed", seedFile])]
  const child = spawn(process.execPath, args, { env, stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`simulator did not start: ${out}`)), 20_000)
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString()
      if (out.includes("Ctrl-C")) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.on("exit", (code) => reject(new Error(`simulator exited ${code}: ${out}`)))
  })
  const exports: Record<string, string> = {}
  for (const m of out.matchAll(/^export (FELHOM_AGENT_[A-Z_0-9]+)='([^']*)'$/gm)) exports[m[1]!] = m[2]!
  return { child, exports }
}
