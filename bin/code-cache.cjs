"use strict"
/**
 * Runs the CommonJS bundle exactly as `require` would (module, exports, require, __filename,
 * __dirname; `this` is module.exports), but compiled through vm.Script with a V8 code cache, so
 * a start deserializes the bytecode of the functions the command needs instead of parsing and
 * compiling ~1.4 MB of JavaScript (SPEC §17, issue 9).
 *
 * The build primes the caches (scripts/code-cache.mjs runs `version` and the daemon up to READY
 * through the bin with FELHOM_AGENT_CODE_CACHE=prime, so with exactly the flags the bin runs
 * with) and writes them beside the bundle, one file per role and V8 fingerprint:
 *   <bundle>.<role>.<v8.cachedDataVersionTag() in hex>.cache
 * The role is `daemon` for the daemon and `cli` for every other command: deserializing costs per
 * byte, and the daemon's functions would make a `version` run pay for twice the bytecode it
 * needs. The tag hashes V8's version, its flags and the CPU features, everything V8 itself
 * checks, so a daemon run with other flags has its own file instead of evicting another's. A
 * file is one header line (JSON: Node and V8 versions, the tag, sha256 of the bundle and of the
 * data), then the data. V8 checks only the source's length and no checksum, so the bundle hash
 * and the data hash are ours: a cache of another bundle or a damaged one never reaches V8.
 *
 * Nothing here may fail a run or make it slower than compiling without a cache (beyond noise): a
 * cache that is absent, stale, damaged or rejected by V8 (`cachedDataRejected`) means compiling
 * normally, and then, best effort, writing a fresh cache at exit (a temp file renamed over it).
 * Where no cache can be written (a read-only install, ProtectSystem=strict), a run without a
 * usable one requires the bundle exactly as the bin did before caches (compiling it through
 * vm.Script costs more than `require` when nothing is gained from it). The cache is code: it
 * lives beside the bundle, so whoever may write it may as well replace the bundle.
 * With source maps enabled (--enable-source-maps) the bundle is required too: Node 20 maps
 * stack traces only for modules it loads itself.
 *
 * FELHOM_AGENT_DEBUG_CACHE=1 prints what happened to stderr (`felhom-agent: code cache accepted`,
 * `absent`, `rejected: <why>`, then `written` or `not written: <why>` when it refreshed).
 * FELHOM_AGENT_CODE_CACHE=off requires the bundle without a cache; =prime always writes at exit.
 */
const fs = require("node:fs")
const path = require("node:path")

const FORMAT = "felhom-agent code cache 1"
// the wrapper is a line of its own, taken back by lineOffset: bundle lines and columns stay exact
const WRAPPER = "(function (exports, require, module, __filename, __dirname) {\n"

exports.run = function run(filename) {
  const mode = process.env.FELHOM_AGENT_CODE_CACHE
  const debug = process.env.FELHOM_AGENT_DEBUG_CACHE === "1"
  const say = debug ? (text) => process.stderr.write(`felhom-agent: code cache ${text}\n`) : () => {}
  if (mode === "off" || sourceMapsEnabled()) {
    say(mode === "off" ? "off" : "off: source maps enabled")
    return require(filename)
  }
  const tag = require("node:v8").cachedDataVersionTag()
  const role = process.argv.slice(2).find((a) => !a.startsWith("-")) === "daemon" ? "daemon" : "cli"
  const cacheFile = `${filename}.${role}.${tag.toString(16).padStart(8, "0")}.cache`
  let bundle // the bytes compiled, and the bytes hashed: read once
  const bundleBytes = () => (bundle === undefined ? (bundle = fs.readFileSync(filename)) : bundle)
  let bundleHash // only when a cache is read or written
  const bundleSha256 = () => (bundleHash === undefined ? (bundleHash = sha256(bundleBytes())) : bundleHash)

  let cached
  let status
  try {
    const file = fs.readFileSync(cacheFile)
    const nl = file.indexOf(10)
    const header = nl > 0 && nl < 4096 ? parseHeader(file.toString("utf8", 0, nl)) : undefined
    const data = file.subarray(nl + 1)
    if (header === undefined || header.format !== FORMAT) status = "rejected: not a cache file"
    else if (header.node !== process.version || header.v8 !== process.versions.v8 || header.tag !== tag) {
      status = "rejected: made by another Node, V8 or V8 flags"
    } else if (header.bundle !== bundleSha256()) status = "rejected: made for another bundle"
    else if (header.bytes !== data.length || header.data !== sha256(data)) status = "rejected: damaged"
    else cached = data
  } catch (e) {
    status = e && e.code === "ENOENT" ? "absent" : `rejected: unreadable (${e && e.code})`
  }
  if (cached === undefined && mode !== "prime") {
    // no cache to write either (a read-only install): load the bundle exactly as without one
    const readOnly = notWritable(path.dirname(cacheFile))
    if (readOnly !== undefined) {
      say(status)
      say(`not written: ${readOnly}`)
      return require(filename)
    }
  }

  const vm = require("node:vm")
  const options = { filename, lineOffset: -1, cachedData: cached }
  if (vm.constants !== undefined && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER !== undefined) {
    // import() inside the bundle resolves as it would in a required module
    options.importModuleDynamically = vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER
  }
  const script = new vm.Script(WRAPPER + bundleBytes().toString("utf8") + "\n})", options)
  if (cached !== undefined) status = script.cachedDataRejected ? "rejected: by V8" : "accepted"
  say(status)
  if (status !== "accepted" || mode === "prime") {
    const header = () => ({ format: FORMAT, node: process.version, v8: process.versions.v8, tag, bundle: bundleSha256() })
    process.once("exit", () => refresh(script, cacheFile, header, say))
  }

  // what Module.prototype._compile does with the wrapper, as `require(filename)` would
  const Module = require("node:module")
  const mod = new Module(filename, module)
  mod.filename = filename
  mod.paths = Module._nodeModulePaths(path.dirname(filename))
  Module._cache[filename] = mod
  let ran = false
  try {
    script.runInThisContext({ displayErrors: true })
      .call(mod.exports, mod.exports, Module.createRequire(filename), mod, filename, path.dirname(filename))
    ran = true
  } finally {
    if (!ran) delete Module._cache[filename] // not rethrown: the error keeps its own source line
  }
  mod.loaded = true
  return mod.exports
}

/** Node 20.7+ says; before, the flag itself (a source-mapped run is a debugging run). */
function sourceMapsEnabled() {
  if (typeof process.sourceMapsEnabled === "boolean") return process.sourceMapsEnabled
  return [...process.execArgv, ...(process.env.NODE_OPTIONS || "").split(/\s+/)].includes("--enable-source-maps")
}

/** Why a file cannot be created in `dir` (EACCES, EROFS, ...), or undefined when it can. */
function notWritable(dir) {
  try {
    fs.accessSync(dir, fs.constants.W_OK)
    return undefined
  } catch (e) {
    return (e && e.code) || "unwritable"
  }
}

function parseHeader(line) {
  try {
    const h = JSON.parse(line)
    return typeof h === "object" && h !== null ? h : undefined
  } catch {
    return undefined
  }
}

function sha256(bytes) {
  return require("node:crypto").createHash("sha256").update(bytes).digest("hex")
}

function writeAll(fd, bytes) {
  for (let at = 0; at < bytes.length;) at += fs.writeSync(fd, bytes, at, bytes.length - at)
}

/** Serializes what is compiled now (the lazily compiled functions this run needed included). */
function refresh(script, cacheFile, header, say) {
  const tmp = `${cacheFile}.${process.pid}.tmp`
  let fd
  try {
    fd = fs.openSync(tmp, "wx", 0o644)
  } catch (e) {
    say(`not written: ${e && e.code}`) // a read-only install: run without
    return
  }
  try {
    const data = script.createCachedData()
    const h = header()
    const line = JSON.stringify({ ...h, bytes: data.length, data: sha256(data) })
    writeAll(fd, Buffer.from(`${line}\n`))
    writeAll(fd, data)
    fs.closeSync(fd)
    fd = undefined
    fs.renameSync(tmp, cacheFile)
    say(`written: ${path.basename(cacheFile)}, ${data.length} bytes`)
  } catch (e) {
    if (fd !== undefined) try { fs.closeSync(fd) } catch {}
    try { fs.unlinkSync(tmp) } catch {}
    say(`not written: ${e && (e.code || e.message)}`)
  }
}
