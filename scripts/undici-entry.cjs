"use strict"
// What the bundle gets for `import ... from "undici"` (scripts/build.mjs aliases the bare name to
// this file; deep paths such as "undici/lib/..." resolve as usual). undici's own index loads
// everything it has (fetch, WebSocket, EventSource, cookies, caches, mocks, interceptors), and
// its cookies module reads globalThis.Headers, which makes Node load and run its own bundled
// copy of undici as well: ~13 MiB of RSS in a daemon that never calls fetch (issue 9). This is
// the part the agent and @effect/platform-node's HTTP client use: the dispatchers with the
// request API on them, the TLS connector, the handler base class, the errors and the global
// dispatcher. test/undici-entry.test.ts keeps it covering every name the bundle reads.
const Dispatcher = require("undici/lib/dispatcher/dispatcher")
const api = require("undici/lib/api")
const { getGlobalDispatcher, setGlobalDispatcher } = require("undici/lib/global")

// as undici's index does: dispatcher.request(...) and friends
Object.assign(Dispatcher.prototype, api)

module.exports = {
  Dispatcher,
  Client: require("undici/lib/dispatcher/client"),
  Pool: require("undici/lib/dispatcher/pool"),
  Agent: require("undici/lib/dispatcher/agent"),
  DecoratorHandler: require("undici/lib/handler/decorator-handler"),
  buildConnector: require("undici/lib/core/connect"),
  errors: require("undici/lib/core/errors"),
  getGlobalDispatcher,
  setGlobalDispatcher
}
