/** Runs every benchmark; each prints ratios against a baseline measured in the same run. */
import { Effect } from "effect"
import { coldStart } from "./cold-start.js"
import { waitTaskBench } from "./wait-task.js"

const main = async () => {
  await Effect.runPromise(waitTaskBench)
  coldStart()
}
void main()
