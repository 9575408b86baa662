/**
 * scripts/undici-entry.cjs, what the bundle gets for "undici" (issue 9): the same objects as
 * undici's index for every name anything bundled reads, and without the index's side effect of
 * loading Node's own copy of undici.
 */
import { describe, expect, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import { readdirSync, readFileSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { join } from "node:path"

const root = join(__dirname, "..")
const entryPath = join(root, "scripts", "undici-entry.cjs")
const require_ = createRequire(__filename)

const filesUnder = (dir: string): Array<string> =>
  readdirSync(dir).flatMap((n) => {
    const p = join(dir, n)
    return statSync(p).isDirectory() ? filesUnder(p) : [p]
  })

/** `Undici.Name` as read by our sources and by @effect/platform-node's undici HTTP client. */
const namesRead = (): Set<string> => {
  const files = [
    ...filesUnder(join(root, "src")).filter((f) => f.endsWith(".ts")),
    require_.resolve("@effect/platform-node/package.json").replace(/package\.json$/, "dist/esm/internal/httpClientUndici.js")
  ]
  const names = new Set<string>()
  for (const f of files) {
    const text = readFileSync(f, "utf8")
    if (!/["']@effect\/platform-node\/Undici["']|["']undici["']|\.\.\/Undici\.js/.test(text)) continue
    for (const m of text.matchAll(/(?<![\w/.])Undici\.([A-Za-z_]\w*)\b(?!["'])/g)) names.add(m[1]!)
  }
  return names
}

describe("the bundle's undici entry", () => {
  it("exports every name the agent and platform-node read, as the very objects undici's index has", () => {
    const entry = require_(entryPath) as Record<string, unknown>
    const full = require_("undici") as Record<string, unknown>
    const read = namesRead()
    expect([...read].sort()).toEqual(["Agent", "DecoratorHandler", "Dispatcher", "buildConnector", "getGlobalDispatcher"])
    for (const name of read) {
      expect(Object.keys(entry), name).toContain(name)
      expect(entry[name], name).toBe(full[name])
    }
    // the request API on every dispatcher, as the index installs it
    expect(typeof (entry["Dispatcher"] as { prototype: Record<string, unknown> }).prototype["request"]).toBe("function")
  })

  it("does not make Node load its own undici (undici's index does)", () => {
    const loads = (what: string) => {
      const r = spawnSync(process.execPath, ["-e", `require(${JSON.stringify(what)}); process.stdout.write(String(process.moduleLoadList.includes("NativeModule internal/deps/undici/undici")))`], {
        cwd: root,
        encoding: "utf8"
      })
      return r.stdout
    }
    expect(loads(entryPath)).toBe("false")
    expect(loads("undici")).toBe("true") // the check is not vacuous
  })
})
