/**
 * `npm run bench`: every benchmark, each against a baseline measured in the same run, printed as
 * one table (bench/table.ts: ratio = ours ÷ baseline; `≤` goals are costs, `≥` throughput).
 */
import { Effect } from "effect"
import { authzBench } from "./authz.js"
import { localApiBench } from "./localapi.js"
import { convergeBench } from "./converge.js"
import { escrowBench } from "./escrow.js"
import { protectionBench } from "./protection.js"
import { reportBench } from "./report.js"
import { sshsigBench } from "./sshsig-verify.js"
import { startupBench, startupRows } from "./startup.js"
import { printTable, type Row } from "./table.js"
import { waitTaskBench } from "./wait-task.js"
import { binFlagsNote } from "./proc.js"

const main = async () => {
  const rows: Array<Row> = []
  const step = (name: string) => process.stderr.write(`bench: ${name}...\n`)
  step("start-up and memory (real processes)")
  rows.push(...startupRows(await startupBench()))
  step("converge")
  rows.push(...(await Effect.runPromise(convergeBench)))
  step("protection: a week of backups for 200 guests (a few minutes)")
  rows.push(...(await Effect.runPromise(protectionBench)))
  step("waitTask")
  rows.push(...(await Effect.runPromise(waitTaskBench)))
  step("sshsig")
  rows.push(...sshsigBench())
  step("escrow key wrapping (scrypt, ~8 s)")
  rows.push(...(await escrowBench()))
  step("authz")
  rows.push(...(await Effect.runPromise(authzBench)))
  step("host report")
  rows.push(...(await Effect.runPromise(reportBench)))
  step("local API: 50 keep-alive controllers against bare node:https (~20 s)")
  rows.push(...(await Effect.runPromise(localApiBench)))
  printTable(`felhom-agent benchmarks (node ${process.version}, ${binFlagsNote()})`, rows)
}
void main()
