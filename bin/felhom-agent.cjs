#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size --v8-pool-size=1
"use strict"
// Node/V8 flags (issue 9, SPEC §17): the daemon idles with a ~14 MiB live heap, and V8's default
// young generation alone reserves 32 MiB; a 1 MiB semi-space and the memory-favouring heap sizing,
// and one V8 worker thread instead of four (each worker's malloc arena and stacks measured 7-12 MB
// of RSS; an idle daemon needs no parallel GC), keep its RSS under 80 MB. The same flags are in the systemd unit's ExecStart (test/startup-flags.test.ts
// keeps them equal), and scripts/code-cache.mjs primes the code cache with them (V8 accepts a
// cache only under the flags it was made with). Run as `node bin/felhom-agent.cjs` they are not
// applied, and the bin compiles without the primed cache.
// The shipped entry runs the esbuild bundle (built by `npm ci` through the prepare script),
// compiled with the V8 code cache the build primed beside it (bin/code-cache.cjs).
require("./code-cache.cjs").run(require("node:path").join(__dirname, "..", "dist", "felhom-agent.cjs"))
