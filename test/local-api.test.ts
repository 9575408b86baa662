/**
 * The local API over real HTTPS on 127.0.0.1 (issue 11): self-scoping, auth, status mapping,
 * audit, pinning and certificate rotation without a restart. Hostile input, limits and the
 * fuzzer are in test/local-api-hostile.test.ts.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, FastCheck as fc, TestClock } from "effect"
import { makeRateLimiter } from "../src/layers/LocalApi.js"
import { call, errorCode, mutationsOf, startApi } from "./local-api-harness.js"

const GETS = ["/storage", "/backup/due", "/backup/status", "/restore-test/status"] as const
const POSTS = [
  ["/snapshot", JSON.stringify({ name: "before-upgrade" })],
  ["/rollback", JSON.stringify({ snapshot: "ctl-before-upgrade" })],
  ["/backup", "{}"],
  ["/heartbeat", JSON.stringify({ version: "1.2.3", image: "registry.example/felhom/controller:1.2.3", status: "healthy" })]
] as const

describe("LocalApi: self-scoped endpoints", () => {
  it.scoped("every endpoint answers for the token's guest only; the backend never sees another vmid", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      yield* h.mint(102)
      for (const path of GETS) {
        const r = yield* call(h, path, { token: a.token })
        expect(r.status, path).toBe(200)
        expect(r.headers["cache-control"]).toBe("no-store")
        expect(r.headers["content-type"]).toContain("application/json")
      }
      const expected: Record<string, number> = { "/snapshot": 201, "/rollback": 200, "/backup": 202, "/heartbeat": 200 }
      for (const [path, body] of POSTS) {
        const r = yield* call(h, path, { method: "POST", token: a.token, body })
        expect(r.status, `${path} ${r.text}`).toBe(expected[path])
      }
      expect(new Set(h.backend.calls.map((c) => c.vmid))).toEqual(new Set([101]))
      expect(h.backend.calls.map((c) => c.method)).toEqual(expect.arrayContaining([
        "storage", "backupDue", "backupStatus", "restoreTestStatus", "snapshot", "rollback", "backup", "heartbeat", "contact"
      ]))
      // contact on every authenticated call
      expect(h.backend.calls.filter((c) => c.method === "contact")).toHaveLength(GETS.length + POSTS.length)
      const storage = yield* call(h, "/storage", { token: a.token })
      expect(storage.json).toEqual({ mounts: [expect.objectContaining({ storage: "local-101" })] })
    }))

  it.scoped("a rollback to another guest's snapshot is 403 (refused) and a missing one 404; nothing of B is touched", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      const b = yield* h.mint(102)
      expect((yield* call(h, "/snapshot", { method: "POST", token: b.token, body: JSON.stringify({ name: "bsnap" }) })).status).toBe(201)
      const r = yield* call(h, "/rollback", { method: "POST", token: a.token, body: JSON.stringify({ snapshot: "ctl-bsnap" }) })
      expect(r.status).toBe(403)
      expect(errorCode(r)).toBe("refused")
      const missing = yield* call(h, "/rollback", { method: "POST", token: a.token, body: JSON.stringify({ snapshot: "ctl-nothing" }) })
      expect(missing.status).toBe(404)
      expect(h.backend.calls.filter((c) => c.method === "rollback").every((c) => c.vmid === 101)).toBe(true)
      expect(mutationsOf(h.backend, 102)).toHaveLength(1) // only B's own snapshot
    }))

  it.scoped("each ApiFailure code maps to its status (404/409/403/422/503), with its message", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      const cases = [["not_found", 404], ["conflict", 409], ["refused", 403], ["unprocessable", 422], ["unavailable", 503]] as const
      for (const [code, status] of cases) {
        h.backend.faults.set("backup", code)
        const r = yield* call(h, "/backup", { method: "POST", token: a.token, body: "{}" })
        expect(r.status).toBe(status)
        expect(r.json).toEqual({ error: { code, message: `injected ${code}` } })
      }
    }))

  it.scoped("a backend defect is a logged 500 (a bug), never a crash of the server", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      h.backend.faults.set("storage", "die")
      const r = yield* call(h, "/storage", { token: a.token })
      expect(r.status).toBe(500)
      expect(r.json).toEqual({ error: { code: "internal", message: "internal error" } })
      expect(h.logs.some((l) => l.includes("handler defect"))).toBe(true)
      h.backend.faults.delete("storage")
      expect((yield* call(h, "/storage", { token: a.token })).status).toBe(200)
    }))

  it.scoped("GET /health needs no token; every other endpoint without one is 401 with WWW-Authenticate: Bearer", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const health = yield* call(h, "/health")
      expect(health.status).toBe(200)
      expect(health.json).toMatchObject({ status: "ok" })
      for (const path of [...GETS, ...POSTS.map(([p]) => p)]) {
        const method = GETS.includes(path as (typeof GETS)[number]) ? "GET" : "POST"
        const r = yield* call(h, path, method === "POST" ? { method, body: "{}" } : { method })
        expect(r.status, path).toBe(401)
        expect(r.headers["www-authenticate"]).toBe("Bearer")
      }
      expect(h.backend.calls).toHaveLength(0)
    }))

  it.scoped("revoked → 401 at once (replayed after revoke too); another token of the guest keeps working", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const old = yield* h.mint(101)
      const fresh = yield* h.mint(101)
      expect((yield* call(h, "/storage", { token: old.token })).status).toBe(200)
      yield* h.tokens.revoke(old.id)
      for (let i = 0; i < 3; i++) expect((yield* call(h, "/storage", { token: old.token })).status).toBe(401)
      expect((yield* call(h, "/storage", { token: fresh.token })).status).toBe(200)
      yield* h.tokens.revokeGuest(101 as never)
      expect((yield* call(h, "/storage", { token: fresh.token })).status).toBe(401)
    }))

  it.scoped("mutations are audited before and after, with the token id and never the token", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      yield* call(h, "/snapshot", { method: "POST", token: a.token, body: JSON.stringify({ name: "s1" }) })
      h.backend.faults.set("backup", "conflict")
      yield* call(h, "/backup", { method: "POST", token: a.token, body: "{}" })
      yield* call(h, "/storage", { token: a.token }) // reads are not audited
      const tail = yield* h.audit.auditTail(10)
      expect(tail.map((e) => [e.actor, e.action, e.target, e.decision])).toEqual([
        ["local-api", "local-api.snapshot", "101", "requested"],
        ["local-api", "local-api.snapshot", "101", "ok"],
        ["local-api", "local-api.backup", "101", "requested"],
        ["local-api", "local-api.backup", "101", "conflict"]
      ])
      expect(tail[1]!.detail).toMatchObject({ token_id: a.id, name: "s1", status: 201 })
      expect(JSON.stringify(tail)).not.toContain(a.token.slice(22))
      expect((yield* h.audit.verifyAudit).ok).toBe(true)
    }))
})

describe("LocalApi: TLS and pins", () => {
  it.scoped("a client pinning another key fails the handshake; nothing reaches the backend", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      const exit = yield* Effect.exit(call(h, "/storage", { token: a.token, pin: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(Exit.isFailure(exit) ? exit.cause : "")).toContain("pin mismatch")
      expect(h.backend.calls).toHaveLength(0)
      expect((yield* h.api.pins)).toEqual([(yield* h.cert.state).current.pin])
    }))

  it.scoped("rotation: staged next is in pins; promote swaps the served certificate without a restart", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      const before = (yield* h.cert.state).current.pin
      const next = yield* h.cert.stage
      expect(yield* h.api.pins).toEqual([before, next])
      // still the old one served
      expect((yield* call(h, "/storage", { token: a.token, pin: before.spki_sha256 })).status).toBe(200)
      yield* h.cert.promote
      // the swap runs on the changes stream: let it run, then a new handshake sees the new key
      let served = ""
      for (let i = 0; i < 50 && served !== next.spki_sha256; i++) {
        yield* Effect.yieldNow()
        const ok = yield* Effect.exit(call(h, "/storage", { token: a.token, pin: next.spki_sha256 }))
        if (Exit.isSuccess(ok)) served = next.spki_sha256
      }
      expect(served).toBe(next.spki_sha256)
      const old = yield* Effect.exit(call(h, "/storage", { token: a.token, pin: before.spki_sha256 }))
      expect(Exit.isFailure(old)).toBe(true)
      expect(yield* h.api.pins).toEqual([next])
    }))
})

describe("LocalApi: per-token rate limit on the TestClock", () => {
  it.scoped("burst then 429 with Retry-After; the clock refills it; another token is unaffected", () =>
    Effect.gen(function*() {
      const h = yield* startApi({ rate_per_minute: 6, rate_burst: 3 })
      const a = yield* h.mint(101)
      const b = yield* h.mint(102)
      for (let i = 0; i < 3; i++) expect((yield* call(h, "/backup/due", { token: a.token })).status).toBe(200)
      const limited = yield* call(h, "/backup/due", { token: a.token })
      expect(limited.status).toBe(429)
      expect(limited.headers["retry-after"]).toBe("10")
      expect((yield* call(h, "/backup/due", { token: b.token })).status).toBe(200)
      yield* TestClock.adjust("9 seconds")
      expect((yield* call(h, "/backup/due", { token: a.token })).status).toBe(429)
      yield* TestClock.adjust("1 second")
      expect((yield* call(h, "/backup/due", { token: a.token })).status).toBe(200)
      // a limited call reached nothing (no contact, no backend)
      expect(h.backend.calls.filter((c) => c.vmid === 101 && c.method === "backupDue")).toHaveLength(4)
    }))
})

describe("LocalApi: the token bucket (unit, TestClock)", () => {
  it.effect("burst, then one per 60/rate seconds; Retry-After is the whole seconds to the next token; keys are separate", () =>
    Effect.gen(function*() {
      const l = makeRateLimiter(30, 2)
      expect((yield* l.take("a")).ok).toBe(true)
      expect((yield* l.take("a")).ok).toBe(true)
      expect(yield* l.take("a")).toEqual({ ok: false, retryAfterSeconds: 2 })
      expect(yield* l.peek("a")).toEqual({ ok: false, retryAfterSeconds: 2 })
      expect((yield* l.take("b")).ok).toBe(true)
      yield* TestClock.adjust("1 second")
      expect(yield* l.take("a")).toEqual({ ok: false, retryAfterSeconds: 1 })
      yield* TestClock.adjust("1 second")
      expect((yield* l.peek("a")).ok).toBe(true)
      expect((yield* l.take("a")).ok).toBe(true)
      expect((yield* l.take("a")).ok).toBe(false)
      // refill never exceeds the burst
      yield* TestClock.adjust("1 hour")
      expect((yield* l.take("a")).ok).toBe(true)
      expect((yield* l.take("a")).ok).toBe(true)
      expect((yield* l.take("a")).ok).toBe(false)
    }))

  it.effect.prop(
    "never grants more than burst + elapsed × rate, and a refusal's Retry-After is honest",
    [fc.integer({ min: 1, max: 600 }), fc.integer({ min: 1, max: 50 }), fc.array(fc.integer({ min: 0, max: 5000 }), { maxLength: 200 })],
    ([perMinute, burst, gaps]) =>
      Effect.gen(function*() {
        const l = makeRateLimiter(perMinute, burst)
        let granted = 0
        let elapsed = 0
        for (const gap of gaps) {
          yield* TestClock.adjust(gap)
          elapsed += gap
          const r = yield* l.take("k")
          if (r.ok) granted++
          else {
            // waiting Retry-After seconds always earns a token
            yield* TestClock.adjust(r.retryAfterSeconds * 1000)
            elapsed += r.retryAfterSeconds * 1000
            expect((yield* l.peek("k")).ok).toBe(true)
          }
          expect(granted).toBeLessThanOrEqual(burst + Math.floor((elapsed * perMinute) / 60_000) + 1e-9)
        }
      }),
    { fastCheck: { numRuns: 100 } }
  )
})
