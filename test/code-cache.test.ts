/**
 * The V8 code cache (bin/code-cache.cjs, primed by scripts/code-cache.mjs) on a private copy of
 * the install (bin/, the bundle, the example config), so neither a concurrent build nor these
 * tests' damage reaches the shipped dist/: a valid cache is used; an absent, damaged, foreign or
 * rejected one falls back to compiling (same output, exit 0) and is rewritten; an unwritable
 * install runs without one.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { VERSION } from "../src/version.js"

const root = join(__dirname, "..")
const install = mkdtempSync(join(tmpdir(), "felhom-code-cache-"))
const bin = join(install, "bin", "felhom-agent.cjs")
const dist = join(install, "dist")
const bundle = join(dist, "felhom-agent.cjs")

/** Env without FELHOM_AGENT_* or NODE_OPTIONS from the developer's shell (V8 flags there change the cache's key). */
const env = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_") && k !== "NODE_OPTIONS")),
  FELHOM_AGENT_CONFIG: join(install, "none.json"),
  FELHOM_AGENT_DEBUG_CACHE: "1",
  ...extra
})

interface Ran {
  readonly status: number | null
  readonly stdout: string
  readonly stderr: string
}

const spawnAsync = (argv: ReadonlyArray<string>, opts: { env?: NodeJS.ProcessEnv; uid?: number; gid?: number } = {}) =>
  new Promise<Ran>((resolve, reject) => {
    const child = spawn(process.execPath, argv, { env: opts.env ?? env(), stdio: ["ignore", "pipe", "pipe"], timeout: 60_000, ...(opts.uid === undefined ? {} : { uid: opts.uid, gid: opts.gid! }) })
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c))
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c))
    child.on("error", reject)
    child.on("close", (status) => resolve({ status, stdout, stderr }))
  })

/** The node flags on the bin's #! line: what it runs with when executed, and what the caches are primed with. */
const shippedFlags = (): Array<string> => {
  const m = /^#!\/usr\/bin\/env -S node((?: --[a-z0-9-]+(?:=\S+)?)*)$/.exec(readFileSync(join(root, "bin", "felhom-agent.cjs"), "utf8").split("\n", 1)[0]!)
  return m === null ? [] : m[1]!.split(" ").filter((f) => f.length > 0)
}

/** `felhom-agent version` from the copy (as executed: the bin's flags, unless `flags` says otherwise): it must always print the version and exit 0. */
const version = async (opts: { flags?: ReadonlyArray<string>; env?: NodeJS.ProcessEnv; uid?: number; gid?: number } = {}) => {
  const r = await spawnAsync([...(opts.flags ?? shippedFlags()), bin, "version"], opts)
  expect(r.status, r.stderr).toBe(0)
  expect(r.stdout).toBe(`felhom-agent ${VERSION}\n`)
  return r.stderr.split("\n").filter((l) => l.length > 0)
}

const caches = (role: string) => readdirSync(dist).filter((n) => n.startsWith(`felhom-agent.cjs.${role}.`) && n.endsWith(".cache"))
/** The CLI's cache for this process's V8 (node, and the flags the bin runs with). */
let cliCache = ""
let primed: Buffer

/** A cache file's header (its first line) and data. */
const split = (file: Buffer) => {
  const nl = file.indexOf(10)
  return { header: JSON.parse(file.subarray(0, nl).toString("utf8")) as Record<string, unknown>, data: file.subarray(nl + 1) }
}
const join2 = (header: Record<string, unknown>, data: Buffer) => Buffer.concat([Buffer.from(`${JSON.stringify(header)}\n`), data])

beforeAll(async () => {
  mkdirSync(join(install, "bin"))
  mkdirSync(dist)
  mkdirSync(join(install, "configs"))
  for (const f of ["felhom-agent.cjs", "code-cache.cjs"]) copyFileSync(join(root, "bin", f), join(install, "bin", f))
  copyFileSync(join(root, "dist", "felhom-agent.cjs"), bundle) // built by test/global-setup.ts
  copyFileSync(join(root, "configs", "agent.example.json"), join(install, "configs", "agent.example.json"))
  symlinkSync(join(root, "node_modules"), join(install, "node_modules")) // the externals (better-sqlite3)
  writeFileSync(join(install, "none.json"), "{}")
  // what the build does, on the copy
  const prime = await spawnAsync([join(root, "scripts", "code-cache.mjs"), "--root", install], { env: env({ FELHOM_AGENT_DEBUG_CACHE: "" }) })
  expect(prime.status, prime.stderr).toBe(0)
  expect(prime.stderr).toBe("")
  expect(caches("daemon").length).toBe(1)
  expect(caches("cli").length).toBe(1)
  cliCache = join(dist, caches("cli")[0]!)
  primed = readFileSync(cliCache)
}, 180_000)

afterAll(() => {
  chmodSync(dist, 0o755)
  rmSync(install, { recursive: true, force: true })
})

/** Puts `bytes` (or nothing) in place of the CLI's cache. */
const withCache = (bytes: Buffer | undefined) => {
  for (const n of caches("cli")) rmSync(join(dist, n))
  if (bytes !== undefined) writeFileSync(cliCache, bytes)
}

describe("V8 code cache", () => {
  it("the primed cache is used, and nothing is rewritten", async () => {
    withCache(primed)
    expect(await version()).toEqual(["felhom-agent: code cache accepted"])
    expect(readFileSync(cliCache).equals(primed)).toBe(true)
    const { header, data } = split(primed)
    expect(header).toMatchObject({ format: "felhom-agent code cache 1", node: process.version, v8: process.versions.v8, bytes: data.length })
  }, 120_000)

  it("an absent cache: compiles, then writes one the next run uses", async () => {
    withCache(undefined)
    const first = await version()
    expect(first[0]).toBe("felhom-agent: code cache absent")
    expect(first[1]).toMatch(/^felhom-agent: code cache written: felhom-agent\.cjs\.cli\.[0-9a-f]{8}\.cache, \d+ bytes$/)
    expect(await version()).toEqual(["felhom-agent: code cache accepted"])
    expect(readdirSync(dist).filter((n) => n.endsWith(".tmp"))).toEqual([])
  }, 120_000)

  it("a damaged or foreign cache falls back, prints the version, and is replaced", async () => {
    const { header, data } = split(primed)
    const flipped = Buffer.from(data)
    const mid = Math.floor(flipped.length / 2)
    flipped.writeUInt8(flipped.readUInt8(mid) ^ 0xff, mid)
    const cases: Array<readonly [string, Buffer]> = [
      ["not a cache file", Buffer.from("garbage\n\u0000\u0001")],
      ["not a cache file", primed.subarray(0, 20)], // truncated inside the header
      ["damaged", join2(header, flipped)], // V8 itself would take this one: it checks no checksum
      ["damaged", primed.subarray(0, primed.length - 100)],
      ["made for another bundle", join2({ ...header, bundle: "0".repeat(64) }, data)],
      ["made by another Node, V8 or V8 flags", join2({ ...header, node: "v0.0.0" }, data)]
    ]
    for (const [why, bytes] of cases) {
      withCache(bytes)
      const lines = await version()
      expect(lines[0], why).toBe(`felhom-agent: code cache rejected: ${why}`)
      expect(lines[1], why).toMatch(/^felhom-agent: code cache written: /)
      expect(await version(), why).toEqual(["felhom-agent: code cache accepted"])
    }
  }, 120_000)

  it("a cache made with other V8 flags is not used: ours tells by its key, V8 by its own check", async () => {
    withCache(undefined)
    // the same bin with a V8 flag: another key, so another file beside ours
    const flagged = await version({ flags: ["--max-semi-space-size=1"], env: env({ FELHOM_AGENT_CODE_CACHE: "prime" }) })
    expect(flagged[0]).toBe("felhom-agent: code cache absent")
    const other = caches("cli")
    expect(other.length).toBe(1)
    expect(join(dist, other[0]!)).not.toBe(cliCache)
    const foreign = readFileSync(join(dist, other[0]!))
    rmSync(join(dist, other[0]!))
    // the foreign cache in our place: its header names the other key
    withCache(foreign)
    expect((await version())[0]).toBe("felhom-agent: code cache rejected: made by another Node, V8 or V8 flags")
    // a header claiming our key: only V8's check (cachedDataRejected) stands between
    const { header, data } = split(foreign)
    withCache(join2({ ...header, tag: split(primed).header["tag"] }, data))
    const lines = await version()
    expect(lines[0]).toBe("felhom-agent: code cache rejected: by V8")
    expect(lines[1]).toMatch(/^felhom-agent: code cache written: /)
    expect(await version()).toEqual(["felhom-agent: code cache accepted"])
  }, 120_000)

  it("a read-only install runs without writing", async () => {
    const asOther = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {} // root ignores modes
    chmodSync(install, 0o755)
    try {
      for (const bytes of [undefined, Buffer.from("garbage\n")]) {
        withCache(bytes)
        chmodSync(dist, 0o555)
        const lines = await version(asOther)
        expect(lines[0]).toMatch(bytes === undefined ? /^felhom-agent: code cache absent$/ : /^felhom-agent: code cache rejected: /)
        expect(lines[1]).toMatch(/^felhom-agent: code cache not written: (EACCES|EROFS|EPERM)$/)
        expect(lines.length).toBe(2)
        chmodSync(dist, 0o755)
        expect(readdirSync(dist).filter((n) => n.endsWith(".tmp"))).toEqual([])
      }
      // and a valid cache in a read-only install is used
      withCache(primed)
      chmodSync(dist, 0o555)
      expect(await version(asOther)).toEqual(["felhom-agent: code cache accepted"])
    } finally {
      chmodSync(dist, 0o755)
    }
  }, 120_000)

  it("a module runs as under require: its bindings, `this`, the require cache and stack positions", async () => {
    const fx = join(install, "fx")
    mkdirSync(fx)
    const file = join(fx, "m.cjs")
    writeFileSync(file, [
      "\"use strict\";function f(){throw new Error(\"boom\")}",
      "process.stdout.write(JSON.stringify({ module: typeof module, exports: typeof exports, filename: __filename, dirname: __dirname,",
      "  self: this === module.exports, resolved: require.resolve(\"./m.cjs\"), id: module.id, main: require.main === process.mainModule,",
      "  cached: require.cache[__filename] === module, paths: module.paths[0] }) + \"\\n\")",
      "try { f() } catch (e) { process.stdout.write(e.stack.split(\"\\n\").slice(0, 3).join(\"\\n\") + \"\\n\") }",
      "module.exports.done = true"
    ].join("\n"))
    const driver = (how: string) =>
      `const m = ${how === "require" ? `require(${JSON.stringify(file)})` : `require(${JSON.stringify(join(install, "bin", "code-cache.cjs"))}).run(${JSON.stringify(file)})`}; if (m.done !== true) process.exit(9)`
    const plain = await spawnAsync(["-e", driver("require")])
    expect(plain.status, plain.stderr).toBe(0)
    expect(plain.stdout).toContain(`at f (${file}:1:33)`)
    expect(plain.stdout).toContain(`(${file}:5:7)`)
    const compiled = await spawnAsync(["-e", driver("vm")]) // no cache yet: compiled, then one written
    expect(compiled.stderr).toMatch(/^felhom-agent: code cache absent\nfelhom-agent: code cache written: m\.cjs\.cli\./)
    const cached = await spawnAsync(["-e", driver("vm")])
    expect(cached.stderr).toBe("felhom-agent: code cache accepted\n")
    for (const r of [compiled, cached]) {
      expect(r.status, r.stderr).toBe(0)
      expect(r.stdout).toBe(plain.stdout)
    }
  }, 120_000)

  it("with source maps enabled the bundle is required as before (Node maps only what it loads)", async () => {
    withCache(primed)
    expect(await version({ flags: ["--enable-source-maps"] })).toEqual(["felhom-agent: code cache off: source maps enabled"])
    expect(await version({ env: env({ FELHOM_AGENT_CODE_CACHE: "off" }) })).toEqual(["felhom-agent: code cache off"])
  }, 120_000)
})
