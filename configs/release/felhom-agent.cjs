"use strict"
// lib/felhom-agent.cjs of a release tree: what bin/felhom-agent.cjs is in the source tree. Runs
// the bundle (lib/bundle/felhom-agent.cjs) through the V8 code cache the package build primed
// beside it with this tree's node and the wrapper's flags (lib/code-cache.cjs, a copy of
// bin/code-cache.cjs). The tree is root-owned: the service user's daemon never writes a cache
// here and compiles the bundle itself whenever the shipped cache does not fit (another CPU).
require("./code-cache.cjs").run(require("node:path").join(__dirname, "bundle", "felhom-agent.cjs"))
