// Bundles the CLI into dist/felhom-agent.cjs (run by bin/felhom-agent.cjs). Unbundled, Effect's
// module graph costs ~1.4 s of start-up; bundled ~0.35 s (SPEC §17). The native sqlite binding
// stays external.
//
// Start-up (SPEC §17, issue 9): main.ts is only the command tree and loads each command's
// implementation with a dynamic import(). In one CJS bundle esbuild keeps every module reachable
// from such an import behind a lazy `__esm` init wrapper, so `felhom-agent version` evaluates
// only what the tree needs. A wrapped barrel (`import { Effect } from "effect"`) would initialize
// every module the barrel re-exports (all of effect and fast-check), so the `deepImports` plugin
// rewrites our sources' barrel imports into the per-module imports they stand for
// (`import * as Effect from "effect/Effect"`), exactly what writing them by hand would give.
// Minified (with a linked sourcemap): 1.35 MB instead of 3.1 MB, and no slower to start.
// Measured (`version`, median of 21-25 interleaved runs on 2 busy cores, ratio to `node -e 0`):
// one eager bundle 4.9-6.0x; lazy imports alone 3.5-4.2x; lazy + deep imports 2.6-3.0x, minified
// 2.5-2.8x. A split ESM build (esbuild `splitting`) measured 2.2-2.9x but rules out a V8 code
// cache through vm.Script, which this one bundle takes (bin/code-cache.cjs, primed below by
// scripts/code-cache.mjs): `version` 1.8-2.2x, the same bundle required without it 2.8-3.1x;
// the daemon's spawn to its `ready` log line 3.7x instead of 4.4x.
import { build } from "esbuild"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { primeCodeCache, removeCodeCaches } from "./code-cache.mjs"

const require = createRequire(import.meta.url)

/** The barrels our sources import from, each re-exporting one module per name. */
const BARRELS = ["effect", "@effect/cli", "@effect/platform", "@effect/platform-node", "@effect/sql", "@effect/sql-sqlite-node"]

/** For each barrel: exported name → { module, namespace } read from its ESM index. */
const barrelExports = new Map(
  BARRELS.map((pkg) => {
    const index = readFileSync(require.resolve(`${pkg}/package.json`).replace(/package\.json$/, "dist/esm/index.js"), "utf8")
    const names = new Map()
    for (const m of index.matchAll(/export \* as (\w+) from "\.\/(\w+)\.js"/g)) names.set(m[1], { module: m[2], namespace: true })
    for (const m of index.matchAll(/export \{([^}]*)\} from "\.\/(\w+)\.js"/g)) {
      for (const n of m[1].split(",").map((s) => s.trim()).filter(Boolean)) names.set(n, { module: m[2], namespace: false })
    }
    if (names.size === 0) throw new Error(`deep imports: no re-exports found in ${pkg}'s index`)
    return [pkg, names]
  })
)

const BARREL_IMPORT = /import\s+\{([^}]*)\}\s+from\s+["'](effect|@effect\/[a-z-]+)["'];?/g

/** `import { A, b as c, type T } from "pkg"` → one import per module; line count preserved for the sourcemap. */
const deepImports = {
  name: "deep-imports",
  setup(b) {
    b.onLoad({ filter: /[\\/]src[\\/].*\.ts$/ }, (args) => {
      const source = readFileSync(args.path, "utf8")
      const warnings = []
      const contents = source.replace(BARREL_IMPORT, (whole, list, pkg) => {
        const names = barrelExports.get(pkg)
        if (names === undefined) return whole
        const imports = []
        const unknown = []
        const specs = list.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, "").split(",").map((s) => s.trim()).filter(Boolean)
        for (const spec of specs) {
          if (spec.startsWith("type ")) continue
          const [name, local = name] = spec.split(/\s+as\s+/)
          const target = names.get(name)
          if (target === undefined) unknown.push(spec)
          else if (target.namespace) imports.push(`import * as ${local} from "${pkg}/${target.module}";`)
          else imports.push(`import { ${name} as ${local} } from "${pkg}/${target.module}";`)
        }
        if (unknown.length > 0) {
          // still correct, but the whole barrel is initialized again wherever this module is
          warnings.push({ text: `deep imports: ${unknown.join(", ")} not re-exported by ${pkg}'s index; left on the barrel` })
          imports.push(`import { ${unknown.join(", ")} } from "${pkg}";`)
        }
        return imports.join(" ") + "\n".repeat(whole.split("\n").length - 1)
      })
      return { contents, loader: "ts", warnings }
    })
  }
}

/**
 * `undici` (the bare name only) → scripts/undici-entry.cjs: the dispatchers and what goes with
 * them, without the rest of undici's index, which also makes Node load its own bundled undici
 * (issue 9: ~12 MiB of the daemon's idle RSS, and 0.2 MB of bundle).
 */
const slimUndici = {
  name: "slim-undici",
  setup(b) {
    b.onResolve({ filter: /^undici$/ }, () => ({ path: join(dirname(fileURLToPath(import.meta.url)), "undici-entry.cjs") }))
  }
}

await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/felhom-agent.cjs",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  minify: true,
  sourcemap: "linked",
  external: ["better-sqlite3"],
  legalComments: "none",
  logLevel: "warning",
  plugins: [deepImports, slimUndici]
})

// The V8 code caches beside the bundle (bin/code-cache.cjs), primed by real runs of this bundle.
// Best effort: a failed priming warns and the build ships without (`--no-code-cache` skips it).
if (process.argv.includes("--no-code-cache")) removeCodeCaches()
else await primeCodeCache()
