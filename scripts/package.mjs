// `npm run package`: dist/deb/felhom-agent_<version>_amd64.deb (issue 14, SPEC §15), built with
// dpkg-deb from `npm run build`'s output (dist/) and the pinned Node runtime.
//
//   node scripts/package.mjs [--out DIR] [--cache DIR] [--tree DIR] [--no-code-cache]
//
// --tree DIR also leaves the staged release tree there (a self-update release: sign its
// RELEASE.json with `ssh-keygen -Y sign -n felhom-release-v1` and publish it to the hub).
//
// The runtime is package.json's `felhomRuntime` (not an npm dependency: a `node` bin in
// node_modules/.bin would shadow the system node in every npm script): `npm pack` fetches it once
// into --cache (.cache/runtime), and its sha512 must equal the pin before anything of it is used.
// The release tree (src/schema/install.ts) is staged as /opt/felhom-agent/package:
//   bin/node               the pinned runtime
//   bin/felhom-agent       sh wrapper (configs/release/felhom-agent): node flags + lib/felhom-agent.cjs
//   lib/felhom-agent.cjs   loader (configs/release/felhom-agent.cjs) → lib/code-cache.cjs →
//   lib/bundle/            the esbuild bundle (+ map) and its V8 code caches, primed here by the
//                          packaged node under the wrapper's flags
//   lib/node_modules/      better-sqlite3 (JS + the native addon `npm ci` built) and its runtime deps
//   configs/               sudoers, units, root helpers, golden files: what `felhom-agent enroll`
//                          installs (it reads them beside the running tree)
//   RELEASE.json           every file's path, size, mode and sha256 (unsigned here: the package's
//                          tree comes through apt; self-update releases carry RELEASE.json.sig)
// Before the .deb is built the packaged node must load the staged addon (Node 20.x keeps
// NODE_MODULE_VERSION 115, so the addon built for the dev node fits); otherwise the build fails.
import { spawn, spawnSync } from "node:child_process"
import { createHash } from "node:crypto"
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..")
const PKG = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"))
const VERSION = PKG.version
const RUNTIME = PKG.felhomRuntime
const PREFIX = "opt/felhom-agent"
const RUN_TIMEOUT_MS = 60_000

const arg = (name, fallback) => {
  const at = process.argv.indexOf(name)
  return at > 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback
}
const OUT = arg("--out", join(ROOT, "dist", "deb"))
const CACHE = arg("--cache", join(ROOT, ".cache", "runtime"))
const TREE_OUT = arg("--tree", undefined)
const CODE_CACHE = !process.argv.includes("--no-code-cache")

class PackageError extends Error {}
const fail = (msg) => {
  throw new PackageError(msg)
}
const log = (msg) => console.log(`package: ${msg}`)

/** A child's whole environment: nothing of this shell's FELHOM_AGENT_*, NODE_* or systemd variables. */
const cleanEnv = (extra = {}) => ({
  PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: process.env.HOME ?? "/root",
  LC_ALL: "C",
  ...extra
})

const run = (cmd, args, opts = {}) => {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: RUN_TIMEOUT_MS, ...opts })
  if (r.error !== undefined) fail(`${cmd} ${args.join(" ")}: ${r.error.message}`)
  return r
}
const runOk = (cmd, args, opts = {}) => {
  const r = run(cmd, args, opts)
  if (r.status !== 0) fail(`${cmd} ${args.join(" ")} exited ${r.status ?? r.signal}: ${(r.stderr ?? "").trim().slice(-2000)}`)
  return r
}

// ---------------------------------------------------------------------------------------------
// the pinned runtime

const sha512Integrity = (file) => `sha512-${createHash("sha512").update(readFileSync(file)).digest("base64")}`

/** The verified runtime tarball in the cache; fetched with `npm pack` when absent. */
const runtimeTarball = () => {
  if (RUNTIME === undefined || typeof RUNTIME.version !== "string" || !/^sha512-/.test(RUNTIME.integrity ?? "")) {
    fail("package.json has no felhomRuntime {package, version, integrity: sha512-...}")
  }
  const name = `${RUNTIME.package}-${RUNTIME.version}.tgz`
  const cached = join(CACHE, name)
  mkdirSync(CACHE, { recursive: true })
  if (!existsSync(cached)) {
    const tmp = mkdtempSync(join(CACHE, ".fetch-"))
    try {
      const t0 = Date.now()
      runOk("npm", ["pack", `${RUNTIME.package}@${RUNTIME.version}`, "--pack-destination", tmp, "--silent"], {
        cwd: tmp,
        timeout: 300_000,
        env: { ...process.env, npm_config_ignore_scripts: "true" }
      })
      if (!existsSync(join(tmp, name))) fail(`npm pack wrote no ${name}`)
      // verified before it enters the cache: a cache entry is always the pinned bytes
      const got = sha512Integrity(join(tmp, name))
      if (got !== RUNTIME.integrity) fail(`${name}: integrity ${got} is not the pinned ${RUNTIME.integrity}; refusing it`)
      renameSync(join(tmp, name), cached)
      log(`fetched ${name} (${Date.now() - t0} ms)`)
    } finally {
      rmSync(tmp, { recursive: true, force: true })
    }
  }
  // and again at every use: the cache directory is not trusted more than the registry
  const got = sha512Integrity(cached)
  if (got !== RUNTIME.integrity) fail(`${cached}: integrity ${got} is not the pinned ${RUNTIME.integrity}; refusing it (delete it to fetch again)`)
  return cached
}

// ---------------------------------------------------------------------------------------------
// staging

const mkdir = (dir) => {
  mkdirSync(dir, { recursive: true })
  chmodSync(dir, 0o755)
}
const put = (from, to, mode) => {
  mkdir(dirname(to))
  copyFileSync(from, to)
  chmodSync(to, mode)
}
const write = (to, text, mode) => {
  mkdir(dirname(to))
  writeFileSync(to, text)
  chmodSync(to, mode)
}
/** Files below dir (relative, sorted); refuses anything but files and directories (symlinks: skipped if told). */
const walk = (dir, skipSymlinks = false, base = dir) =>
  readdirSync(dir).sort().flatMap((name) => {
    const p = join(dir, name)
    const st = lstatSync(p)
    if (st.isDirectory()) return walk(p, skipSymlinks, base)
    if (st.isFile()) return [relative(base, p)]
    if (st.isSymbolicLink() && skipSymlinks) return []
    return fail(`${p}: neither a file nor a directory`)
  })

/** The runtime pieces of a node_modules package: only what `require` reaches, plus its license. */
const NODE_MODULES = {
  "better-sqlite3": (dir) => ["package.json", "LICENSE", ...walk(join(dir, "lib")).map((f) => `lib/${f}`), "build/Release/better_sqlite3.node"],
  bindings: () => ["package.json", "bindings.js", "LICENSE.md"],
  "file-uri-to-path": () => ["package.json", "index.js", "LICENSE"]
}

/** What enroll installs from the running tree's configs/ (src/layers/HostSetup.ts); never configs/sim (dev TLS keys). */
const ENROLL_CONFIGS = ["sudoers", "systemd", "libexec", "golden"]
const configMode = (dir, file) =>
  dir === "libexec" || (dir === "golden" && !/\.(service|path)$/.test(file)) ? 0o755 : 0o644

const stageTree = (tree, tarball) => {
  const bundle = join(ROOT, "dist", "felhom-agent.cjs")
  if (!existsSync(bundle)) fail("dist/felhom-agent.cjs is missing: run `npm run build` first")
  // bin/node and the runtime's license from the verified tarball
  const x = mkdtempSync(join(OUT, ".runtime-"))
  try {
    runOk("tar", ["-xzf", tarball, "-C", x, "package/bin/node", "package/LICENSE"])
    put(join(x, "package", "bin", "node"), join(tree, "bin", "node"), 0o755)
    put(join(x, "package", "LICENSE"), join(tree, "lib", "node.LICENSE"), 0o644)
  } finally {
    rmSync(x, { recursive: true, force: true })
  }
  put(join(ROOT, "configs", "release", "felhom-agent"), join(tree, "bin", "felhom-agent"), 0o755)
  put(join(ROOT, "configs", "release", "felhom-agent.cjs"), join(tree, "lib", "felhom-agent.cjs"), 0o644)
  put(join(ROOT, "bin", "code-cache.cjs"), join(tree, "lib", "code-cache.cjs"), 0o644)
  put(bundle, join(tree, "lib", "bundle", "felhom-agent.cjs"), 0o644)
  if (existsSync(`${bundle}.map`)) put(`${bundle}.map`, join(tree, "lib", "bundle", "felhom-agent.cjs.map"), 0o644)
  for (const [name, files] of Object.entries(NODE_MODULES)) {
    const from = join(ROOT, "node_modules", name)
    for (const f of files(from)) {
      put(join(from, f), join(tree, "lib", "node_modules", name, f), f.endsWith(".node") ? 0o755 : 0o644)
    }
  }
  for (const d of ENROLL_CONFIGS) {
    for (const f of walk(join(ROOT, "configs", d))) put(join(ROOT, "configs", d, f), join(tree, "configs", d, f), configMode(d, f))
  }
}

/** The packaged node opens an in-memory database through the staged better-sqlite3, and nothing else. */
const proveSqlite = (tree) => {
  const probe = `
    const D = require(${JSON.stringify(join(tree, "lib", "node_modules", "better-sqlite3"))})
    const db = new D(":memory:")
    const v = db.prepare("select sqlite_version() as v").get().v
    db.close()
    const outside = Object.keys(require.cache).filter((f) => !f.startsWith(${JSON.stringify(tree + "/")}))
    if (outside.length > 0) throw new Error("loaded from outside the tree: " + outside.join(", "))
    process.stdout.write(JSON.stringify({ node: process.version, abi: process.versions.modules, exec: process.execPath, sqlite: v }))`
  const r = run(join(tree, "bin", "node"), ["-e", probe], { cwd: "/", env: cleanEnv() })
  if (r.status !== 0) fail(`the packaged node cannot load the staged better-sqlite3 addon:\n${r.stderr.trim().slice(-2000)}`)
  const got = JSON.parse(r.stdout)
  if (got.node !== `v${RUNTIME.version}` || got.exec !== join(tree, "bin", "node")) fail(`the probe ran ${got.exec} ${got.node}, not the packaged node`)
  log(`packaged node ${got.node} (ABI ${got.abi}) loads the staged better-sqlite3 (SQLite ${got.sqlite})`)
}

// ---------------------------------------------------------------------------------------------
// the V8 code cache, primed through the tree's own wrapper (its node, its flags)

const CACHE_LINE = "felhom-agent: code cache "
const cacheLines = (stderr) => (stderr ?? "").split("\n").filter((l) => l.startsWith(CACHE_LINE)).map((l) => l.slice(CACHE_LINE.length))
const removeCaches = (tree, role) => {
  const dir = join(tree, "lib", "bundle")
  for (const f of readdirSync(dir)) {
    const m = /^felhom-agent\.cjs\.([a-z]+)\.[0-9a-f]+\.cache(\.\d+\.tmp)?$/.exec(f)
    if (m !== null && (role === undefined || m[1] === role)) rmSync(join(dir, f), { force: true })
  }
}

const primeDaemon = (wrapper, env, dir) =>
  new Promise((resolve, reject) => {
    const config = JSON.parse(readFileSync(join(ROOT, "configs", "agent.example.json"), "utf8"))
    config.host_id = "code-cache-prime"
    config.state_dir = join(dir, "state")
    config.proxmox.url = "https://127.0.0.1:9" // never contacted before READY
    config.hub.url = "https://127.0.0.1:9"
    config.local_api = { ...config.local_api, listen: "127.0.0.1", port: 0 }
    delete config.local_api.advertise_url
    // the status endpoint (issue 14) on any free loopback port: two builds, or a live agent, never collide
    config.status_endpoint = { ...(config.status_endpoint ?? {}), host: "127.0.0.1", port: 0 }
    writeFileSync(join(dir, "agent.json"), JSON.stringify(config))
    const child = spawn(wrapper, ["daemon"], { cwd: dir, env: { ...env, FELHOM_AGENT_CONFIG: join(dir, "agent.json") }, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    let stopped = false
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`no READY within ${RUN_TIMEOUT_MS / 1000} s: ${(out + err).slice(-1500)}`))
    }, RUN_TIMEOUT_MS)
    child.stdout.setEncoding("utf8").on("data", (c) => {
      out += c
      if (!stopped && /message="?ready\b/.test(out)) {
        stopped = true
        child.kill("SIGTERM") // the wrapper exec'd node: this is node's pid
      }
    })
    child.stderr.setEncoding("utf8").on("data", (c) => (err += c))
    child.on("error", (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      if (!stopped) reject(new Error(`ended (${signal ?? `exit ${code}`}) before READY: ${(out + err).slice(-1500)}`))
      else if (!cacheLines(err).some((l) => l.startsWith("written"))) reject(new Error(`wrote no cache: ${cacheLines(err).join("; ")}`))
      else resolve()
    })
  })

/** Primes the cli and daemon caches; true when a plain `version` run then accepts one. Never fails the build. */
const primeCodeCache = async (tree) => {
  const wrapper = join(tree, "bin", "felhom-agent")
  removeCaches(tree)
  const dir = mkdtempSync(join(OUT, ".prime-"))
  writeFileSync(join(dir, "none.json"), "{}")
  const env = cleanEnv({ FELHOM_AGENT_DEBUG_CACHE: "1", FELHOM_AGENT_CONFIG: join(dir, "none.json") })
  const failed = (role, e) => {
    removeCaches(tree, role)
    console.warn(`package: code cache: priming the ${role} cache failed, shipping without it: ${e instanceof Error ? e.message : e}`)
  }
  try {
    const v = run(wrapper, ["version"], { cwd: dir, env: { ...env, FELHOM_AGENT_CODE_CACHE: "prime" } })
    if (v.status !== 0 || !cacheLines(v.stderr).some((l) => l.startsWith("written"))) failed("cli", `version exited ${v.status}: ${cacheLines(v.stderr).join("; ") || v.stderr.trim()}`)
    await primeDaemon(wrapper, { ...env, FELHOM_AGENT_CODE_CACHE: "prime" }, dir).catch((e) => failed("daemon", e))
    const check = run(wrapper, ["version"], { cwd: dir, env })
    if (check.status === 0 && cacheLines(check.stderr)[0] === "accepted") return true
    removeCaches(tree, "cli")
    console.warn(`package: code cache: a plain \`version\` run did not accept it (${cacheLines(check.stderr).join("; ")}); shipping without a cli cache`)
    return false
  } finally {
    rmSync(dir, { recursive: true, force: true })
    // temp files of an interrupted write never ship
    for (const f of readdirSync(join(tree, "lib", "bundle"))) if (f.endsWith(".tmp")) rmSync(join(tree, "lib", "bundle", f), { force: true })
  }
}

// ---------------------------------------------------------------------------------------------
// the CLI of the staged tree (no cache reads or writes: FELHOM_AGENT_CODE_CACHE=off)

const cli = (tree, args) => run(join(tree, "bin", "felhom-agent"), args, { cwd: "/", env: cleanEnv({ FELHOM_AGENT_CODE_CACHE: "off", NO_COLOR: "1" }) })

const stripAnsi = (s) => s.replace(/\u001b\[[0-9;]*m/g, "")

/** configs/debian/felhom-agent.txt, then the tree's own `--help`, one command per entry. */
const helpText = (tree) => {
  const r = cli(tree, ["--help"])
  if (r.status !== 0) fail(`felhom-agent --help exited ${r.status}: ${r.stderr.trim()}`)
  const commands = stripAnsi(r.stdout).split("\n").flatMap((line) => {
    const m = /^ {2}- (.*?)\s{2,}(\S.*)$/.exec(line)
    if (m === null) return line.startsWith("  - ") ? [`       ${line.slice(4).trim()}`, ""] : []
    return [`       ${m[1].trim()}`, `              ${m[2].trim()}`, ""]
  })
  if (commands.length === 0) fail("felhom-agent --help listed no commands")
  const head = readFileSync(join(ROOT, "configs", "debian", "felhom-agent.txt"), "utf8")
  return `${head}${commands.join("\n")}\n       Every command takes --help.\n\nfelhom-agent ${VERSION}\n`
}

/** RELEASE.json through B's `release manifest` when the bundle has it; until then the same shape here. */
const writeManifest = (tree) => {
  // an unknown subcommand's --help prints the root help (exit 0): look for the command's own usage line
  const help = cli(tree, ["release", "manifest", "--help"])
  if (help.status === 0 && /^\$ (release )?manifest\b.*--dir/m.test(stripAnsi(help.stdout))) {
    const r = cli(tree, ["release", "manifest", "--dir", tree, "--release", VERSION, "--node", RUNTIME.version])
    if (r.status !== 0) fail(`felhom-agent release manifest exited ${r.status}: ${r.stderr.trim()}`)
    log("RELEASE.json written by `felhom-agent release manifest`")
  } else {
    const files = walk(tree).filter((p) => p !== "RELEASE.json" && p !== "RELEASE.json.sig").map((p) => {
      const bytes = readFileSync(join(tree, p))
      const mode = statSync(join(tree, p)).mode & 0o7777
      if (mode !== 0o644 && mode !== 0o755) fail(`${p}: mode ${mode.toString(8)} is neither 0644 nor 0755`)
      return { path: p, sha256: createHash("sha256").update(bytes).digest("hex"), size: bytes.length, mode }
    })
    const created = process.env.SOURCE_DATE_EPOCH !== undefined ? new Date(Number(process.env.SOURCE_DATE_EPOCH) * 1000) : new Date()
    const manifest = { format: "felhom-release-v1", version: VERSION, created_at: created.toISOString(), node: RUNTIME.version, files }
    write(join(tree, "RELEASE.json"), `${JSON.stringify(manifest, null, 2)}\n`, 0o644)
    log("RELEASE.json written by this script (`felhom-agent release manifest` is not in this build yet)")
  }
  chmodSync(join(tree, "RELEASE.json"), 0o644)
}

// ---------------------------------------------------------------------------------------------
// the Debian package

const COPYRIGHT = (tree) =>
  [
    "felhom-agent: Copyright felhom. All rights reserved (UNLICENSED).",
    "",
    "It ships, unmodified, under their own licenses:",
    `  /${PREFIX}/package/bin/node: Node.js ${RUNTIME.version} (license below)`,
    "  /opt/felhom-agent/package/lib/node_modules/{better-sqlite3,bindings,file-uri-to-path}: MIT (their LICENSE files)",
    "",
    "---- Node.js ----",
    readFileSync(join(tree, "lib", "node.LICENSE"), "utf8")
  ].join("\n")

const UNIT_NAME = /^[a-z0-9][a-z0-9.@-]*\.(service|timer|path|socket)$/

const stageDeb = (deb, tree) => {
  // units: every one configs/systemd holds at build time
  const units = readdirSync(join(ROOT, "configs", "systemd")).sort()
  for (const u of units) {
    if (!UNIT_NAME.test(u)) fail(`configs/systemd/${u}: not a unit file name`)
    put(join(ROOT, "configs", "systemd", u), join(deb, "lib", "systemd", "system", u), 0o644)
  }
  for (const f of walk(join(ROOT, "configs", "libexec"))) put(join(ROOT, "configs", "libexec", f), join(deb, "usr", "local", "libexec", "felhom-agent", f), 0o755)
  for (const f of walk(join(ROOT, "configs", "golden"))) {
    put(join(ROOT, "configs", "golden", f), join(deb, "usr", "local", "share", "felhom-agent", "golden", f), configMode("golden", f))
  }
  put(join(ROOT, "configs", "sudoers", "felhom-agent"), join(deb, "usr", "share", "felhom-agent", "sudoers"), 0o644)
  const doc = join(deb, "usr", "share", "doc", "felhom-agent")
  put(join(ROOT, "configs", "agent.example.json"), join(doc, "agent.example.json"), 0o644)
  write(join(doc, "felhom-agent.txt"), helpText(tree), 0o644)
  write(join(doc, "copyright"), COPYRIGHT(tree), 0o644)
  mkdir(join(deb, "usr", "bin"))
  symlinkSync(`/${PREFIX}/current/bin/felhom-agent`, join(deb, "usr", "bin", "felhom-agent"))

  // every directory 0755 whatever the umask (files got explicit modes above)
  const dirs = (d) => {
    chmodSync(d, 0o755)
    for (const n of readdirSync(d)) if (lstatSync(join(d, n)).isDirectory()) dirs(join(d, n))
  }
  dirs(deb)

  const control = join(deb, "DEBIAN")
  mkdir(control)
  const payload = walk(deb, true).filter((p) => !p.startsWith("DEBIAN/"))
  const kib = Math.ceil(payload.reduce((n, p) => n + statSync(join(deb, p)).size, 0) / 1024)
  const fill = (text) =>
    text.replaceAll("@VERSION@", VERSION).replaceAll("@INSTALLED_SIZE@", String(kib)).replaceAll("@NODE@", RUNTIME.version).replaceAll("@UNITS@", units.join(" "))
  write(join(control, "control"), fill(readFileSync(join(ROOT, "configs", "debian", "control"), "utf8")), 0o644)
  for (const s of ["postinst", "prerm", "postrm"]) write(join(control, s), fill(readFileSync(join(ROOT, "configs", "debian", s), "utf8")), 0o755)
  write(join(control, "md5sums"), payload.map((p) => `${createHash("md5").update(readFileSync(join(deb, p))).digest("hex")}  ${p}\n`).join(""), 0o644)
  // whatever lands in /etc is a conffile: dpkg then never overwrites an edited copy
  const etc = payload.filter((p) => p.startsWith("etc/"))
  if (etc.length > 0) write(join(control, "conffiles"), etc.map((p) => `/${p}\n`).join(""), 0o644)
  return units
}

// ---------------------------------------------------------------------------------------------

const main = async () => {
  const t0 = Date.now()
  mkdirSync(OUT, { recursive: true })
  const tarball = runtimeTarball()
  const name = `felhom-agent_${VERSION}_amd64`
  const deb = mkdtempSync(join(OUT, `.${name}-`))
  try {
    chmodSync(deb, 0o755)
    const tree = join(deb, PREFIX, "package")
    stageTree(tree, tarball)
    proveSqlite(tree)
    if (CODE_CACHE) {
      const t = Date.now()
      const ok = await primeCodeCache(tree)
      log(ok ? `code cache primed with the packaged node (${Date.now() - t} ms)` : "shipping without a primed cli code cache")
    } else log("code cache skipped (--no-code-cache)")
    const units = stageDeb(deb, tree)
    writeManifest(tree)
    const target = join(OUT, `${name}.deb`)
    const tmp = `${target}.tmp`
    const tb = Date.now()
    // zstd -3 (dpkg >= 1.21.18: Debian 12 / PVE 8, which the sudoers file requires anyway).
    // Measured on this tree, 2 busy cores: zstd -3 4.0 s 38.0 MiB; gzip -6 11.7 s 39.6 MiB;
    // gzip -1 6.1 s 44.3 MiB; zstd -9 10.0 s 34.0 MiB; xz -6 266 s 27.0 MiB.
    runOk("dpkg-deb", ["--root-owner-group", "-Zzstd", "-z3", "--build", deb, tmp], { timeout: 300_000 })
    renameSync(tmp, target)
    if (TREE_OUT !== undefined) {
      rmSync(TREE_OUT, { recursive: true, force: true })
      cpSync(tree, TREE_OUT, { recursive: true, preserveTimestamps: true })
      log(`release tree: ${TREE_OUT}`)
    }
    const size = statSync(target).size
    log(`${relative(process.cwd(), target) || target}: ${(size / 1048576).toFixed(1)} MiB, units ${units.join(", ")}; dpkg-deb ${Date.now() - tb} ms, total ${Date.now() - t0} ms`)
  } finally {
    rmSync(deb, { recursive: true, force: true })
  }
}

await main().catch((e) => {
  console.error(`package: ${e instanceof PackageError ? e.message : e instanceof Error ? e.stack : e}`)
  process.exitCode = 1
})
