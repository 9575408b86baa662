/**
 * Issue 8, finding 5: PVE error texts can echo request headers, so the token secret reached the
 * daemon log, job results and SQLite. Every PVE-originated text is scrubbed at the transport
 * boundary (src/layers/Proxmox.ts, the shared scrubber in src/schema/text.ts) before it becomes
 * an error. The simulator's `faults.echo_headers` echoes the Authorization header into the
 * body message, the reason phrase, the parameter errors and failed tasks' exitstatus and log.
 */
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer, Schema } from "effect"
import { inspect } from "node:util"
import { proxmoxSettings } from "../src/layers/Config.js"
import { Proxmox, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { StorageId, VmId } from "../src/schema/ids.js"
import { type SimPveFaults, serveSimPve } from "../src/sim/pve/index.js"
import { agentConfig, durations, httpsProxmox, seedWith } from "./support.js"

const vmid = (n: number) => VmId.make(n)

/** Every way the secret could be found in `value`: whole, URL-encoded, or any 8-character run. */
export const leaks = (value: unknown, secret: string): ReadonlyArray<string> => {
  const texts = [
    typeof value === "string" ? value : "",
    JSON.stringify(value) ?? "",
    inspect(value, { depth: 10 }),
    Exit.isExit(value) && Exit.isFailure(value) ? Cause.pretty(value.cause) : ""
  ].map((t) => t.toLowerCase())
  const needles = new Set([secret, encodeURIComponent(secret)].map((s) => s.toLowerCase()))
  for (let i = 0; i + 8 <= secret.length; i++) needles.add(secret.slice(i, i + 8).toLowerCase())
  return [...needles].filter((n) => texts.some((t) => t.includes(n)))
}

/** A fresh HTTPS simulator with these faults (and quirks), the production client pinned to it. */
const withEchoingSim = <A, E>(
  faults: Partial<SimPveFaults>,
  body: (secret: string) => Effect.Effect<A, E, Proxmox>,
  quirks: Record<string, unknown> = {}
) =>
  Effect.scoped(Effect.gen(function*() {
    const seed = yield* seedWith({ ...durations(100), quirks })
    const server = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed })
    yield* server.sim.setFaults(faults)
    return yield* body(server.tokenSecret).pipe(Effect.provide(httpsProxmox(server)))
  }))

const failure = <A, E>(eff: Effect.Effect<A, E, Proxmox>) => Effect.flip(eff)

describe("PVE texts echoing the Authorization header never carry the token secret into an error", () => {
  it.live("(i) the JSON body message", () =>
    withEchoingSim({ echo_headers: ["message"] }, (secret) =>
      Effect.gen(function*() {
        const e = yield* failure(Effect.flatMap(Proxmox, (p) => p.guestStatus(vmid(999))))
        expect(e._tag).toBe("PveApiError")
        if (e._tag !== "PveApiError") return
        expect(e.kind).toBe("not_found") // still classified from the scrubbed text
        expect(e.message).toContain("PVEAPIToken=felhom@pve!agent=<redacted>") // the echo happened, scrubbed
        expect(leaks(e, secret)).toEqual([])
      })))

  it.live("(ii) the HTTP reason phrase (PVE < 8.3: no message in the body), permission still parsed", () =>
    withEchoingSim({ echo_headers: ["reason"] }, (secret) =>
      Effect.gen(function*() {
        const missing = yield* failure(Effect.flatMap(Proxmox, (p) => p.guestStatus(vmid(999))))
        expect(missing.message).toContain("<redacted>")
        expect(leaks(missing, secret)).toEqual([])
      }), { error_message_body: false }))

  it.live("(ii) a 403 whose reason phrase echoes the header still names the privilege", () =>
    Effect.scoped(Effect.gen(function*() {
      const seed = yield* seedWith({ ...durations(100), quirks: { error_message_body: false } })
      const server = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed })
      yield* server.sim.setFaults({ echo_headers: ["reason"] })
      yield* server.sim.revoke("felhom@pve!agent", "/nodes/pve", ["Sys.Audit"])
      const e = yield* failure(Effect.flatMap(Proxmox, (p) => p.nodeStatus)).pipe(Effect.provide(httpsProxmox(server)))
      expect(e._tag).toBe("PveApiError")
      if (e._tag !== "PveApiError") return
      expect(e.permission).toEqual({ aclPath: "/nodes/pve", privileges: ["Sys.Audit"] })
      expect(e.message).toContain("<redacted>")
      expect(leaks(e, server.tokenSecret)).toEqual([])
    })))

  it.live("(iii) parameter errors, in values and in keys, with every other text echoing too", () =>
    withEchoingSim({ echo_headers: ["message", "reason", "params"] }, (secret) =>
      Effect.gen(function*() {
        const e = yield* failure(Effect.flatMap(Proxmox, (p) =>
          p.storageContent(Schema.decodeSync(StorageId)("local"), { content: "bogus" })))
        expect(e._tag).toBe("PveApiError")
        if (e._tag !== "PveApiError") return
        expect(e.status).toBe(400)
        expect(e.paramErrors?.["content"]).toBeDefined() // the real parameter error survives
        expect(e.paramErrors?.["authorization"]).toContain("<redacted>")
        expect(Object.keys(e.paramErrors ?? {}).some((k) => k.includes("<redacted>"))).toBe(true)
        expect(leaks(e, secret)).toEqual([])
      })))

  it.live("(iv) a failing task's exitstatus and log lines (PveTaskFailed)", () =>
    withEchoingSim({ echo_headers: ["task"], task_failure_rate: 1 }, (secret) =>
      Effect.gen(function*() {
        const pve = yield* Proxmox
        const upid = yield* pve.start(vmid(101))
        const e = yield* failure(pve.waitTask(upid))
        expect(e._tag).toBe("PveTaskFailed")
        if (e._tag !== "PveTaskFailed") return
        expect(e.exitstatus).toContain("<redacted>")
        expect(e.logTail.some((l) => l.includes("PVEAPIToken=felhom@pve!agent=<redacted>"))).toBe(true)
        expect(leaks(e, secret)).toEqual([])
        // the log read directly is scrubbed the same way
        const log = yield* pve.taskLogTail(upid)
        expect(leaks(log, secret)).toEqual([])
      })))

  it.effect("(v) a response that does not decode: the quoted 'actual' value is scrubbed", () =>
    Effect.gen(function*() {
      const secret = "5b2f9c1e-8d47-4a36-9e0b-3c7f1a2d6e84"
      const file = agentConfig("https://127.0.0.1:8006", "felhom@pve!agent", secret, { insecure_skip_verify: true }, { node: "pve" })
      const body = JSON.stringify({ data: [{ vmid: `PVEAPIToken=felhom@pve!agent=${secret}`, status: { echoed: encodeURIComponent(secret) } }] })
      const layer = ProxmoxWithoutClient.pipe(
        Layer.provide(Layer.succeed(
          HttpClient.HttpClient,
          HttpClient.make((request) =>
            Effect.succeed(HttpClientResponse.fromWeb(request, new Response(body, { status: 200, headers: { "content-type": "application/json" } }))))
        )),
        Layer.provide(proxmoxSettings(file.proxmox!))
      )
      const e = yield* failure(Effect.flatMap(Proxmox, (p) => p.listGuests)).pipe(Effect.provide(layer))
      expect(e._tag).toBe("PveDecodeError")
      expect(e.message).toContain("<redacted>")
      expect(leaks(e, secret)).toEqual([])
    }))

  it.live("(vi) a non-200 answer from a proxy that echoes the header in plain text", () =>
    Effect.gen(function*() {
      const secret = "5b2f9c1e-8d47-4a36-9e0b-3c7f1a2d6e84"
      const file = agentConfig("https://127.0.0.1:8006", "felhom@pve!agent", secret, { insecure_skip_verify: true }, { node: "pve" })
      const layer = ProxmoxWithoutClient.pipe(
        Layer.provide(Layer.succeed(
          HttpClient.HttpClient,
          HttpClient.make((request) =>
            Effect.succeed(HttpClientResponse.fromWeb(request, new Response(
              `<html>bad gateway; you sent ${JSON.stringify(request.headers)}</html>`,
              { status: 502, headers: { "x-felhom-pve-reason": `Bad Gateway ${request.headers["authorization"] ?? ""}` } }
            ))))
        )),
        Layer.provide(proxmoxSettings(file.proxmox!))
      )
      const e = yield* failure(Effect.flatMap(Proxmox, (p) => p.version)).pipe(Effect.provide(layer))
      expect(e._tag).toBe("PveApiError")
      expect(e.message).toContain("<redacted>")
      expect(leaks(e, secret)).toEqual([])
    }))
})
