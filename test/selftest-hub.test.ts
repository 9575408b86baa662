/**
 * `selftest hub` (issue 14) against the dev hub over loopback HTTPS with the production
 * transport (HubHttpClientLive from hub.ca_file): ok, a wrong api key, the wrong CA, a hub that
 * is down, a hub whose clock is 10 minutes off, a garbage envelope. Each failure is classified;
 * no output carries the api key; the probe is never a heartbeat.
 */
import { HttpServerResponse } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Option, Schema } from "effect"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { CliFailure } from "../src/programs/cli/failure.js"
import { HubSelftestReport, renderHubReport, selftestHub, selftestHubCommand } from "../src/programs/cli/selftest.js"
import { devHubCaPem, serveApp, serveDevHub } from "../src/sim/hub/index.js"

const KEY = "fhk_selftest-HUB-key-5a7c9e1b3d5f7a9c1e3b5d7f"
const HOST = "pve-selftest-1"
const dir = mkdtempSync(join(tmpdir(), "felhom-selftest-hub-"))
const caFile = join(dir, "hub-ca.pem")
writeFileSync(caFile, devHubCaPem)
const wrongCa = join(__dirname, "..", "configs", "sim", "tls", "pve-sim.crt")

let n = 0
const configAt = (url: string, o: { key?: string; ca?: string; skew?: number } = {}) => {
  const path = join(dir, `agent-${n++}.json`)
  writeFileSync(path, JSON.stringify({
    host_id: HOST,
    hub: { url, api_key: o.key ?? KEY, ca_file: o.ca ?? caFile },
    ...(o.skew === undefined ? {} : { authz: { signers: [], clock_skew_seconds: o.skew } })
  }))
  return Option.some(path)
}

const run = (config: Option.Option<string>) => selftestHub(config).pipe(Effect.provide(NodeFileSystem.layer))

/** Decodes the --json form with its schema and checks neither form carries the key. */
const checked = (r: HubSelftestReport) => {
  const json = JSON.stringify(r)
  expect(Schema.decodeUnknownSync(HubSelftestReport)(JSON.parse(json), { onExcessProperty: "error" })).toEqual(r)
  for (const text of [json, renderHubReport(r)]) {
    expect(text).not.toContain(KEY)
    expect(text).not.toContain("selftest-HUB-key")
  }
  return r
}

const envelopeApp = (body: unknown, headers: Record<string, string> = {}) =>
  Effect.succeed(HttpServerResponse.unsafeJson(body, { status: 200, headers }))

describe("selftest hub", () => {
  it.live("reaches the dev hub, authenticates and reads the envelope; not a heartbeat", () =>
    Effect.scoped(Effect.gen(function*() {
      const s = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { [KEY]: HOST } })
      const r = checked(yield* run(configAt(s.url)))
      expect(r).toMatchObject({ ok: true, reason: null, http_status: 200, hub_url: s.url })
      expect(r.envelope).toEqual({ poll_interval_seconds: 60, blocked: false, desired_generation: 0, has_signed_ops: false })
      expect(r.rtt_ms).toBeGreaterThanOrEqual(0)
      expect(Math.abs(r.clock_skew_seconds ?? 99)).toBeLessThanOrEqual(2)
      // never counted as a report: the dead-man's switch still sees silence
      expect(Option.isNone(yield* s.hub.lastSeen(HOST))).toBe(true)
      expect(yield* s.hub.reports(HOST)).toHaveLength(0)
      expect(renderHubReport(r)).toMatch(/^felhom-agent selftest hub: OK/)
      // the command itself exits 0
      const exit = yield* Effect.exit(selftestHubCommand({ config: configAt(s.url), json: true }).pipe(Effect.provide(NodeFileSystem.layer)))
      expect(Exit.isSuccess(exit)).toBe(true)
    })))

  it.live("a wrong api key is auth (401), exit 1", () =>
    Effect.scoped(Effect.gen(function*() {
      const s = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { "fhk_the-right-one-0123456789abcdef": HOST } })
      const r = checked(yield* run(configAt(s.url)))
      expect(r).toMatchObject({ ok: false, reason: "auth", http_status: 401, envelope: null })
      const exit = yield* Effect.exit(selftestHubCommand({ config: configAt(s.url), json: false }).pipe(Effect.provide(NodeFileSystem.layer)))
      expect(exit).toEqual(Exit.fail(new CliFailure({ code: 1, message: "selftest hub: auth" })))
    })))

  it.live("the wrong CA is tls; nothing reaches the hub's handler", () =>
    Effect.scoped(Effect.gen(function*() {
      const s = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { [KEY]: HOST } })
      const r = checked(yield* run(configAt(s.url, { ca: wrongCa })))
      expect(r).toMatchObject({ ok: false, reason: "tls", http_status: null })
      expect(r.message).toMatch(/certificate/i)
    })))

  it.live("a hub that is down is unreachable", () =>
    Effect.gen(function*() {
      // a port that was just free: bound, then closed
      const port = yield* Effect.async<number>((resume) => {
        const srv = createServer()
        srv.listen(0, "127.0.0.1", () => {
          const a = srv.address()
          srv.close(() => resume(Effect.succeed(typeof a === "object" && a !== null ? a.port : 1)))
        })
      })
      const r = checked(yield* run(configAt(`https://127.0.0.1:${port}`)))
      expect(r).toMatchObject({ ok: false, reason: "unreachable", http_status: null })
      expect(r.message).toMatch(/ECONNREFUSED|refused/i)
    }))

  it.live("a hub whose Date is 10 minutes off is clock_skew (signed ops would fail); within tolerance it passes", () =>
    Effect.scoped(Effect.gen(function*() {
      const env = { poll_interval_seconds: 60, blocked: false, desired_generation: 3, has_signed_ops: false }
      const off = yield* serveApp(
        Effect.suspend(() => envelopeApp(env, { date: new Date(Date.now() + 600_000).toUTCString() })),
        { host: "127.0.0.1", port: 0 }
      )
      const r = checked(yield* run(configAt(off.url)))
      expect(r).toMatchObject({ ok: false, reason: "clock_skew", http_status: 200, max_clock_skew_seconds: 120 })
      expect(r.clock_skew_seconds).toBeGreaterThanOrEqual(598)
      expect(r.clock_skew_seconds).toBeLessThanOrEqual(601)
      expect(r.message).toMatch(/clock/)
      // behind works the same way; a tolerance above the offset accepts it
      const behind = yield* serveApp(
        Effect.suspend(() => envelopeApp(env, { date: new Date(Date.now() - 600_000).toUTCString() })),
        { host: "127.0.0.1", port: 0 }
      )
      expect(checked(yield* run(configAt(behind.url)))).toMatchObject({ ok: false, reason: "clock_skew" })
      expect(checked(yield* run(configAt(off.url, { skew: 900 })))).toMatchObject({ ok: true, reason: null })
    })))

  it.live("a garbage envelope, and an HTML error page, are bad_answer", () =>
    Effect.scoped(Effect.gen(function*() {
      const garbage = yield* serveApp(envelopeApp({ poll_interval_seconds: "soon", echo: KEY }), { host: "127.0.0.1", port: 0 })
      const r = checked(yield* run(configAt(garbage.url)))
      expect(r).toMatchObject({ ok: false, reason: "bad_answer" })
      const html = yield* serveApp(Effect.succeed(HttpServerResponse.text(`<h1>oops ${KEY}</h1>`, { status: 502 })), { host: "127.0.0.1", port: 0 })
      expect(checked(yield* run(configAt(html.url)))).toMatchObject({ ok: false, reason: "bad_answer", http_status: 502 })
    })))

  it.live("a hostile hub's error text cannot drive the operator's terminal: no control characters in the output", () =>
    Effect.scoped(Effect.gen(function*() {
      const evil = "\u001b]0;owned\u0007\u001b[2J\u001b[1A\u009b\r\n  OK"
      const hub = yield* serveApp(Effect.succeed(HttpServerResponse.text(`oops${evil}`, { status: 502 })), { host: "127.0.0.1", port: 0 })
      const r = checked(yield* run(configAt(hub.url)))
      expect(r).toMatchObject({ ok: false, reason: "bad_answer", http_status: 502 })
      expect(renderHubReport(r)).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/)
    })))

  it.live("no hub block is a configuration error (exit 2)", () =>
    Effect.gen(function*() {
      const path = join(dir, "nohub.json")
      writeFileSync(path, JSON.stringify({ host_id: HOST }))
      const exit = yield* Effect.exit(run(Option.some(path)))
      expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error.code : null).toBe(2)
      expect(readFileSync(path, "utf8")).not.toContain(KEY)
    }))
})
