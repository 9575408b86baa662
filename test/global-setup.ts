/**
 * Builds the CLI bundle once before any test file runs: the CLI tests spawn the shipped
 * bin/felhom-agent.cjs, and rebuilding it per file would race with other files spawning it.
 */
import { spawnSync } from "node:child_process"
import { join } from "node:path"

export default function setup() {
  const root = join(__dirname, "..")
  const build = spawnSync(process.execPath, [join(root, "scripts", "build.mjs")], { cwd: root, encoding: "utf8" })
  if (build.status !== 0) throw new Error(`CLI bundle build failed:\n${build.stderr}`)
}
