#!/usr/bin/env node
"use strict"
// The shipped entry runs the esbuild bundle (built by `npm ci` through the prepare script),
// compiled with the V8 code cache the build primed beside it (bin/code-cache.cjs).
require("./code-cache.cjs").run(require("node:path").join(__dirname, "..", "dist", "felhom-agent.cjs"))
