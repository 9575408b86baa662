#!/usr/bin/env node
"use strict"
// The shipped entry runs the esbuild bundle (built by `npm ci` through the prepare script).
require("../dist/felhom-agent.cjs")
