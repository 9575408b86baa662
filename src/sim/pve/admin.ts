/**
 * The simulator's admin surface over HTTP, for tests that run it as a separate process (e.g. the
 * kill -9 test): what an in-process test reads from the `SimPve` handle — tasks (with their ms
 * start time), guests, fault settings — and changing the faults, under `/sim-admin`, outside PVE's
 * `/api2/json` so the API's fidelity is untouched. Guarded by its own bearer token (printed by
 * `felhom-agent sim pve`), never the PVE API token.
 *
 *   GET /sim-admin/tasks   → { tasks: SimTaskView[] }   oldest first
 *   GET /sim-admin/guests  → { guests: SimGuestView[] } by vmid
 *   GET /sim-admin/requests → { requests: SimRequestView[] } the request log, oldest first
 *   GET /sim-admin/faults  → the fault settings
 *   PUT /sim-admin/faults  → replaces them (omitted keys take their defaults, i.e. off); a new
 *                            `seed` restarts the fault PRNGs
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { timingSafeEqual } from "node:crypto"
import { Effect, ParseResult, Schema } from "effect"
import { SimPveFaultsSeed } from "./seed.js"
import type { SimPve } from "./sim.js"

export const SIM_ADMIN_PREFIX = "/sim-admin"

const safeEqual = (a: string, b: string): boolean => {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length === bb.length && timingSafeEqual(ab, bb)
}

const json = (status: number, body: unknown) => HttpServerResponse.unsafeJson(body, { status })

const decodeFaults = Schema.decodeUnknown(SimPveFaultsSeed, { onExcessProperty: "error" })

/** The admin HttpApp; `token` is the bearer token it requires. */
export const makeSimAdminApp = (sim: SimPve, token: string): HttpApp.Default =>
  Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const m = /^Bearer ([^\s]+)\s*$/.exec(req.headers["authorization"] ?? "")
    if (m === null || !safeEqual(m[1]!, token)) return json(401, { error: "the simulator's admin endpoints need its admin bearer token" })
    const path = req.url.split("?")[0] ?? ""
    const route = `${req.method} ${path.slice(SIM_ADMIN_PREFIX.length)}`
    switch (route) {
      case "GET /tasks":
        return json(200, { tasks: yield* sim.tasks })
      case "GET /guests":
        return json(200, { guests: yield* sim.guests })
      case "GET /requests":
        return json(200, { requests: yield* sim.requests })
      case "GET /faults":
        return json(200, yield* sim.faults)
      case "PUT /faults": {
        const text = yield* req.text.pipe(Effect.orElseSucceed(() => ""))
        let raw: unknown
        try {
          raw = text.trim() === "" ? {} : JSON.parse(text)
        } catch {
          return json(400, { error: "request body is not valid JSON" })
        }
        const decoded = yield* Effect.either(decodeFaults(raw))
        if (decoded._tag === "Left") return json(400, { error: ParseResult.TreeFormatter.formatErrorSync(decoded.left) })
        yield* sim.setFaults(decoded.right)
        return json(200, yield* sim.faults)
      }
      default:
        return json(404, { error: `no such admin endpoint: ${route.slice(0, 200)}` })
    }
  })
