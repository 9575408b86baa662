/**
 * Cold start: wall time of `felhom-agent version` (the shipped bundle) as a ratio to `node -e 0`
 * measured in the same run, interleaved so machine noise hits both alike.
 */
import { spawnSync } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const runs = Number(process.env["BENCH_RUNS"] ?? 15)
const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "bin", "felhom-agent.cjs")

const time = (args: Array<string>): number => {
  const t0 = process.hrtime.bigint()
  const r = spawnSync(process.execPath, args, { stdio: "ignore" })
  if (r.status !== 0) throw new Error(`${args.join(" ")} exited ${r.status}`)
  return Number(process.hrtime.bigint() - t0) / 1e6
}
const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

export const coldStart = () => {
  time(["-e", "0"]) // warm the page cache for both
  time([bin, "version"])
  const base: Array<number> = []
  const ours: Array<number> = []
  for (let i = 0; i < runs; i++) {
    base.push(time(["-e", "0"]))
    ours.push(time([bin, "version"]))
  }
  const b = median(base)
  const o = median(ours)
  console.log(`cold start (median of ${runs}): node -e 0 ${b.toFixed(0)} ms, felhom-agent version ${o.toFixed(0)} ms, ratio ${(o / b).toFixed(2)}x`)
  return { baseMs: b, oursMs: o, ratio: o / b }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) coldStart()
