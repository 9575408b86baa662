/**
 * The benches' common output: one row per metric, `ratio = ours ÷ baseline` everywhere (both
 * measured in the same run). Each goal says its direction: `≤` for costs (time, memory, calls:
 * lower is better), `≥` for throughput (verifications per second: higher is better). A goal
 * stated in absolute units (the 80 MB RSS) is checked against `ours`, and the ratio is shown for
 * reference only.
 */
import { Effect } from "effect"

export interface Row {
  readonly metric: string
  /** the measured value, with its unit */
  readonly ours: string
  readonly baseline: string
  /** ours ÷ baseline */
  readonly ratio: number
  /** e.g. "≤ 2.5×", "≥ 0.8×", "≤ 80 MB", or "—" for a figure kept for reference */
  readonly goal: string
  readonly met: boolean | undefined
}

export const row = (r: Omit<Row, "met"> & { readonly met?: boolean }): Row => {
  if (r.met !== undefined) return { ...r, met: r.met }
  const m = /^([≤≥]) ([\d.]+)×$/.exec(r.goal)
  if (m === null) return { ...r, met: undefined }
  const bound = Number(m[2])
  return { ...r, met: m[1] === "≤" ? r.ratio <= bound : r.ratio >= bound }
}

export const printTable = (title: string, rows: ReadonlyArray<Row>): void => {
  const header = ["metric", "ours", "baseline", "ratio", "goal", "met"]
  const cells = rows.map((r) => [r.metric, r.ours, r.baseline, `${r.ratio.toFixed(2)}×`, r.goal, r.met === undefined ? "—" : r.met ? "yes" : "NO"])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)))
  const line = (c: ReadonlyArray<string>) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(" | ")} |`
  console.log(`\n${title}\nratio = ours ÷ baseline (same run); goals with ≤ are costs (lower is better), ≥ throughput (higher is better)\n`)
  console.log(line(header))
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`)
  for (const c of cells) console.log(line(c))
}

/** CPU time (user + system) of this process, µs. */
const cpuMicros = (): number => {
  const u = process.cpuUsage()
  return u.user + u.system
}

/**
 * Throughput of `ours` relative to `base` as the median over `rounds` of paired blocks, each
 * `perBlock` calls of one then the other (order alternating), timed in CPU time: a noisy
 * neighbour on a 2-core machine slows the wall clock of both sides unevenly, CPU time much less.
 * Returns ours ÷ base in calls per CPU second (higher is better) and both rates.
 */
export const pairedRate = (ours: () => void, base: () => void, opts: { readonly rounds?: number; readonly perBlock?: number } = {}) => {
  const rounds = opts.rounds ?? 31
  const perBlock = opts.perBlock ?? 200
  const block = (f: () => void) => {
    const t0 = cpuMicros()
    for (let i = 0; i < perBlock; i++) f()
    return Math.max(1, cpuMicros() - t0)
  }
  for (let i = 0; i < 3; i++) {
    block(ours) // warm-up: both JIT-compiled before anything is timed
    block(base)
  }
  const ratios: Array<number> = []
  const oursT: Array<number> = []
  const baseT: Array<number> = []
  for (let r = 0; r < rounds; r++) {
    const [a, b] = r % 2 === 0 ? [block(ours), block(base)] : (() => {
      const y = block(base)
      return [block(ours), y] as const
    })()
    oursT.push(a)
    baseT.push(b)
    ratios.push(b / a)
  }
  const med = (xs: ReadonlyArray<number>) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!
  return { ratio: med(ratios), oursPerSec: (perBlock * 1e6) / med(oursT), basePerSec: (perBlock * 1e6) / med(baseT) }
}

export const perSec = (n: number): string => `${n >= 10_000 ? (n / 1000).toFixed(0) + "k" : n.toFixed(0)}/s`

/** pairedRate for an effectful `ours` (one call of it per invocation) against a plain `base`. */
export const pairedRateEffect = <E, R>(
  ours: Effect.Effect<void, E, R>,
  base: () => void,
  opts: { readonly rounds?: number; readonly perBlock?: number } = {}
) =>
  Effect.gen(function*() {
    const rounds = opts.rounds ?? 31
    const perBlock = opts.perBlock ?? 50
    const oursBlock = Effect.gen(function*() {
      const t0 = cpuMicros()
      for (let i = 0; i < perBlock; i++) yield* ours
      return Math.max(1, cpuMicros() - t0)
    })
    const baseBlock = Effect.sync(() => {
      const t0 = cpuMicros()
      for (let i = 0; i < perBlock; i++) base()
      return Math.max(1, cpuMicros() - t0)
    })
    for (let i = 0; i < 3; i++) {
      yield* oursBlock // warm-up
      yield* baseBlock
    }
    const ratios: Array<number> = []
    const oursT: Array<number> = []
    const baseT: Array<number> = []
    for (let r = 0; r < rounds; r++) {
      let a: number
      let b: number
      if (r % 2 === 0) {
        a = yield* oursBlock
        b = yield* baseBlock
      } else {
        b = yield* baseBlock
        a = yield* oursBlock
      }
      oursT.push(a)
      baseT.push(b)
      ratios.push(b / a)
    }
    const med = (xs: ReadonlyArray<number>) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!
    return { ratio: med(ratios), oursPerSec: (perBlock * 1e6) / med(oursT), basePerSec: (perBlock * 1e6) / med(baseT) }
  })
