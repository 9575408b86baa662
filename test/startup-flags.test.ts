/**
 * The daemon's V8 flags (issue 9): the bin's #! line, the systemd unit's ExecStart and the code
 * cache priming all use the same ones (V8 discards a code cache made under other flags, and the
 * unit's daemon would then compile from scratch at every start), and the flags take effect.
 */
import { describe, expect, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const root = join(__dirname, "..")
const bin = join(root, "bin", "felhom-agent.cjs")
const unit = join(root, "configs", "systemd", "felhom-agent.service")
const wrapper = join(root, "configs", "release", "felhom-agent")

const shebangFlags = (): Array<string> => {
  const first = readFileSync(bin, "utf8").split("\n", 1)[0]!
  const m = /^#!\/usr\/bin\/env -S node((?: --[a-z0-9-]+(?:=\S+)?)*)$/.exec(first)
  if (m === null) throw new Error(`unexpected #! line: ${first}`)
  return m[1]!.split(" ").filter((f) => f.length > 0)
}

describe("the daemon's node flags", () => {
  it("the bin carries a small semi-space and memory-favouring heap sizing", () => {
    expect(shebangFlags()).toEqual(["--max-semi-space-size=1", "--optimize-for-size", "--v8-pool-size=1"])
  })

  it("the unit's ExecStart runs the installed release's wrapper, which execs its node with exactly the bin's flags", () => {
    const exec = readFileSync(unit, "utf8").split("\n").filter((l) => l.startsWith("ExecStart="))
    expect(exec).toEqual(["ExecStart=/opt/felhom-agent/current/bin/felhom-agent daemon"])
    // configs/release/felhom-agent becomes <release>/bin/felhom-agent (scripts/package.mjs)
    const execs = readFileSync(wrapper, "utf8").split("\n").filter((l) => /^\s*exec /.test(l))
    expect(execs).toEqual([`exec "$dir/node" ${shebangFlags().join(" ")} "$dir/../lib/felhom-agent.cjs" "$@"`])
  })

  it("the code cache is primed with the bin's flags", async () => {
    const { binNodeFlags } = (await import(join(root, "scripts", "code-cache.mjs"))) as { binNodeFlags: (bin: string) => Array<string> }
    expect(binNodeFlags(bin)).toEqual(shebangFlags())
  })

  it("executed directly, the bin runs with them (a young generation of 2 x 1 MiB)", () => {
    const dir = mkdtempSync(join(tmpdir(), "felhom-flags-"))
    try {
      // preloaded into the bin's own process: what node and V8 were started with
      const probe = join(dir, "probe.cjs")
      writeFileSync(probe, `process.on("exit", () => process.stderr.write("probe " + JSON.stringify([process.execArgv,
        require("node:v8").getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size]) + "\\n"))`)
      const r = spawnSync(bin, ["version"], { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: `--require ${probe}` } })
      expect(r.status).toBe(0)
      expect(r.stdout).toMatch(/^felhom-agent \d/)
      const line = r.stderr.split("\n").find((l) => l.startsWith("probe "))
      const [execArgv, newSpace] = JSON.parse(line!.slice("probe ".length)) as [Array<string>, number]
      expect(execArgv).toEqual(shebangFlags())
      expect(newSpace).toBeLessThanOrEqual(2 * 1024 * 1024)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
