"use strict"
// lib/felhom-agent.cjs of a release tree: what bin/felhom-agent.cjs is in the source tree. Runs
// the bundle (lib/bundle/felhom-agent.cjs) through the V8 code cache the package build primed
// beside it with this tree's node and the wrapper's flags (lib/code-cache.cjs, a copy of
// bin/code-cache.cjs).
//
// A release tree is root-owned and listed file by file in RELEASE.json, so no run adds to it:
// only a cache the build primed for this role and this V8 (version, flags, CPU features: the
// tag in its name) is used; without one the bundle is required as is. Otherwise every root run
// on another CPU (felhom-update's `release verify`, an operator's `status`) would write a cache
// into /opt, an unlisted file in a dpkg-owned directory.
const path = require("node:path")
const bundle = path.join(__dirname, "bundle", "felhom-agent.cjs")
const mode = process.env.FELHOM_AGENT_CODE_CACHE
const role = process.argv.slice(2).find((a) => !a.startsWith("-")) === "daemon" ? "daemon" : "cli"
const tag = require("node:v8").cachedDataVersionTag().toString(16).padStart(8, "0")
if (mode === "prime" || require("node:fs").existsSync(`${bundle}.${role}.${tag}.cache`)) {
  require("./code-cache.cjs").run(bundle)
} else {
  if (process.env.FELHOM_AGENT_DEBUG_CACHE === "1") process.stderr.write("felhom-agent: code cache absent (release tree: none written)\n")
  require(bundle)
}
