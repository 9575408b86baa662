// Bundles the CLI into dist/felhom-agent.cjs. Unbundled, Effect's module graph costs ~1.4 s of
// start-up; bundled ~0.35 s (SPEC §17). The native sqlite binding stays external.
import { build } from "esbuild"

await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/felhom-agent.cjs",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  sourcemap: "linked",
  external: ["better-sqlite3"],
  legalComments: "none",
  logLevel: "warning"
})
