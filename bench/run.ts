/** Runs every benchmark; each prints ratios against a baseline measured in the same run. */
import { Effect } from "effect"
import { authzBench } from "./authz.js"
import { coldStart } from "./cold-start.js"
import { convergeBench } from "./converge.js"
import { daemonBench } from "./daemon.js"
import { reportBench } from "./report.js"
import { sshsigBench } from "./sshsig-verify.js"
import { waitTaskBench } from "./wait-task.js"

const main = async () => {
  await Effect.runPromise(waitTaskBench)
  coldStart()
  sshsigBench()
  await Effect.runPromise(authzBench)
  await Effect.runPromise(convergeBench)
  await Effect.runPromise(reportBench)
  await daemonBench()
}
void main()
