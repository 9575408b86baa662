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
 *
 * Storage faults and the guest model (README: "Storage", "Guest model"):
 *
 *   GET /sim-admin/storage             → { storages: SimStorageView[] }
 *   PUT /sim-admin/storage/{id}        ← { online?, total?, used? }: pull/plug a USB disk, take a
 *                                        server down/up, resize; for an id not created yet it
 *                                        applies when POST /storage creates it
 *   PUT /sim-admin/archive             ← { volid, corrupt: "restore" | "health" | null }
 *   POST /sim-admin/pbs-verify         ← { storage }: a PBS verify job → { verified: [{volid, state}] }
 *   PUT /sim-admin/guests/{vmid}/services ← { services: "healthy" | "failing" }
 *   GET /sim-admin/mac-conflicts       → { conflicts: MacConflict[] }
 *
 * Host loss (issue 13):
 *
 *   PUT /sim-admin/storage/{id}/encryption-key ← { key: <key file JSON text> | null }: what
 *                                        `pvesm set <id> --encryption-key <file>` does
 *                                        → { storage, encryption_key } (the config's value), or
 *                                        400 with PVE's text; the key itself is never echoed
 *   POST /sim-admin/wipe-node          ← { keep_storages?: string[] }: the box died and was
 *                                        reinstalled (SimPve.wipeNode) → WipeNodeResult
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { timingSafeEqual } from "node:crypto"
import { Effect, ParseResult, Schema } from "effect"
import { ArchiveCorruption, ServiceHealth, SimPveFaultsSeed } from "./seed.js"
import type { SimPve } from "./sim.js"

export const SIM_ADMIN_PREFIX = "/sim-admin"

const safeEqual = (a: string, b: string): boolean => {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length === bb.length && timingSafeEqual(ab, bb)
}

const json = (status: number, body: unknown) => HttpServerResponse.unsafeJson(body, { status })

const decodeFaults = Schema.decodeUnknown(SimPveFaultsSeed, { onExcessProperty: "error" })

const strict = { onExcessProperty: "error" } as const
const NonNegative = Schema.Int.pipe(Schema.nonNegative())
const decodeStorage = Schema.decodeUnknown(
  Schema.Struct({ online: Schema.optional(Schema.Boolean), total: Schema.optional(NonNegative), used: Schema.optional(NonNegative) }),
  strict
)
const decodeArchive = Schema.decodeUnknown(Schema.Struct({ volid: Schema.String, corrupt: Schema.NullOr(ArchiveCorruption) }), strict)
const decodeVerify = Schema.decodeUnknown(Schema.Struct({ storage: Schema.String }), strict)
const decodeServices = Schema.decodeUnknown(Schema.Struct({ services: ServiceHealth }), strict)
const decodeKey = Schema.decodeUnknown(Schema.Struct({ key: Schema.NullOr(Schema.String.pipe(Schema.maxLength(16384))) }), strict)
const decodeWipe = Schema.decodeUnknown(Schema.Struct({ keep_storages: Schema.optional(Schema.Array(Schema.String)) }), strict)

/** The admin HttpApp; `token` is the bearer token it requires. */
export const makeSimAdminApp = (sim: SimPve, token: string): HttpApp.Default =>
  Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const m = /^Bearer ([^\s]+)\s*$/.exec(req.headers["authorization"] ?? "")
    if (m === null || !safeEqual(m[1]!, token)) return json(401, { error: "the simulator's admin endpoints need its admin bearer token" })
    const path = req.url.split("?")[0] ?? ""
    const route = `${req.method} ${path.slice(SIM_ADMIN_PREFIX.length)}`
    /** The JSON body decoded by `decode`, or the 400 to answer. */
    const body = <A>(decode: (u: unknown) => Effect.Effect<A, ParseResult.ParseError>) =>
      Effect.gen(function*() {
        const text = yield* req.text.pipe(Effect.orElseSucceed(() => ""))
        let raw: unknown
        try {
          raw = text.trim() === "" ? {} : JSON.parse(text)
        } catch {
          return { error: json(400, { error: "request body is not valid JSON" }) } as const
        }
        const decoded = yield* Effect.either(decode(raw))
        if (decoded._tag === "Left") return { error: json(400, { error: ParseResult.TreeFormatter.formatErrorSync(decoded.left) }) } as const
        return { value: decoded.right } as const
      })
    const storageMatch = /^PUT \/storage\/([A-Za-z][A-Za-z0-9\-_.]*)$/.exec(route)
    if (storageMatch !== null) {
      const b = yield* body(decodeStorage)
      if ("error" in b) return b.error
      yield* sim.setStorage(storageMatch[1]!, b.value)
      return json(200, { storages: yield* sim.storages })
    }
    const keyMatch = /^PUT \/storage\/([A-Za-z][A-Za-z0-9\-_.]*)\/encryption-key$/.exec(route)
    if (keyMatch !== null) {
      const b = yield* body(decodeKey)
      if ("error" in b) return json(400, { error: "expected { key: <key file JSON text> | null }" })
      const r = yield* sim.setStorageEncryptionKey(keyMatch[1]!, b.value.key)
      return r._tag === "ok"
        ? json(200, { storage: keyMatch[1]!, encryption_key: r.encryptionKey ?? null })
        : json(400, { error: r.message })
    }
    const servicesMatch = /^PUT \/guests\/(\d{3,9})\/services$/.exec(route)
    if (servicesMatch !== null) {
      const b = yield* body(decodeServices)
      if ("error" in b) return b.error
      const found = yield* sim.setGuestServices(Number(servicesMatch[1]), b.value.services)
      return found ? json(200, { vmid: Number(servicesMatch[1]), services: b.value.services }) : json(404, { error: `no guest ${servicesMatch[1]!}` })
    }
    switch (route) {
      case "GET /storage":
        return json(200, { storages: yield* sim.storages })
      case "PUT /archive": {
        const b = yield* body(decodeArchive)
        if ("error" in b) return b.error
        const found = yield* sim.setArchive(b.value.volid, { corrupt: b.value.corrupt })
        return found ? json(200, b.value) : json(404, { error: `no backup volume ${b.value.volid.slice(0, 200)}` })
      }
      case "POST /pbs-verify": {
        const b = yield* body(decodeVerify)
        if ("error" in b) return b.error
        return json(200, { verified: yield* sim.verifyPbs(b.value.storage) })
      }
      case "POST /wipe-node": {
        const b = yield* body(decodeWipe)
        if ("error" in b) return b.error
        return json(200, yield* sim.wipeNode(b.value.keep_storages === undefined ? {} : { keepStorages: b.value.keep_storages }))
      }
      case "GET /mac-conflicts":
        return json(200, { conflicts: yield* sim.macConflicts })
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
