/**
 * The local API against hostile controllers and clients (issue 11), over real HTTPS on 127.0.0.1:
 * forged and mangled tokens, oversized / malformed / deeply nested bodies, slow clients, the
 * connection cap, a failed-auth flood, and a fuzzer of 1,000 random requests. Nothing may reach
 * another guest, nothing may be a 5xx, and no response or log line may carry a token.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck as fc } from "effect"
import { Agent } from "node:https"
import { connect, type TLSSocket } from "node:tls"
import { call, errorCode, type Reply, startApi } from "./local-api-harness.js"

/** Flips the case of the first letter at or after `from` (a digit, `-` or `_` has no case: skipping
 * it keeps the result always a different token). */
const flipCase = (s: string, from: number) => {
  let i = from % s.length
  while (!/[A-Za-z]/.test(s[i]!)) i = (i + 1) % s.length
  return s.slice(0, i) + (s[i] === s[i]!.toUpperCase() ? s[i]!.toLowerCase() : s[i]!.toUpperCase()) + s.slice(i + 1)
}

const noSecretIn = (text: string, tokens: ReadonlyArray<string>) => {
  for (const t of tokens) {
    expect(text).not.toContain(t.slice(22)) // the secret
    expect(text).not.toContain(t.slice(22, 38)) // any long piece of it
  }
}

describe("LocalApi hostile: tokens", () => {
  it.scoped("truncated, extended, case-flipped, spliced and wrongly framed tokens are all 401 and reach nothing", () =>
    Effect.gen(function*() {
      const h = yield* startApi({}, { authFailureBurst: 1000 })
      const a = yield* h.mint(101)
      const b = yield* h.mint(102)
      const auths = [
        `Bearer ${a.token.slice(0, -1)}`,
        `Bearer ${a.token}x`,
        `Bearer ${flipCase(a.token, 30)}`,
        `Bearer ${flipCase(a.token, 8)}`,
        `Bearer fla1_${a.id}_${b.token.slice(22)}`,
        `Bearer fla1_${b.id}_${a.token.slice(22)}`,
        `Bearer  ${a.token}`,
        `Bearer ${a.token} ${a.token}`,
        `Basic ${Buffer.from(`x:${a.token}`).toString("base64")}`,
        a.token,
        "Bearer",
        "Bearer ",
        `Bearer ${"A".repeat(5000)}`
      ]
      for (const authorization of auths) {
        const r = yield* call(h, "/storage", { authorization })
        expect(r.status, authorization.slice(0, 40)).toBe(401)
        noSecretIn(r.text, [a.token, b.token])
      }
      // the scheme is case-insensitive (RFC 9110), the token is not
      expect((yield* call(h, "/storage", { authorization: `bearer ${a.token}` })).status).toBe(200)
      expect(h.backend.calls.filter((c) => c.method !== "contact" || c.vmid !== 101)).toHaveLength(1)
    }))

  it.scoped("a failed-auth flood from one address is cut to 429 with Retry-After, before tokens are even checked", () =>
    Effect.gen(function*() {
      const h = yield* startApi({}, { authFailureBurst: 5, authFailuresPerMinute: 6 })
      const a = yield* h.mint(101)
      for (let i = 0; i < 5; i++) expect((yield* call(h, "/storage", { token: `fla1_${"0".repeat(16)}_${"A".repeat(43)}` })).status).toBe(401)
      const cut = yield* call(h, "/storage", { token: "garbage" })
      expect(cut.status).toBe(429)
      expect(cut.headers["retry-after"]).toBe("10")
      // the source is blocked as a whole until its budget refills (a guest's own controller is
      // the only client at its address)
      expect((yield* call(h, "/storage", { token: a.token })).status).toBe(429)
      expect(h.backend.calls).toHaveLength(0)
      // health needs no auth and is never limited by it
      expect((yield* call(h, "/health")).status).toBe(200)
    }))
})

describe("LocalApi hostile: bodies and routes", () => {
  it.scoped("413 by Content-Length and by counting a chunked body; the backend sees nothing", () =>
    Effect.gen(function*() {
      const h = yield* startApi({ max_body_bytes: 1024 })
      const a = yield* h.mint(101)
      const big = JSON.stringify({ name: "x", description: "d".repeat(5000) })
      const byLength = yield* call(h, "/snapshot", { method: "POST", token: a.token, body: big })
      expect(byLength.status).toBe(413)
      expect(byLength.headers["connection"]).toBe("close")
      const chunked = yield* call(h, "/snapshot", { method: "POST", token: a.token, body: big, chunked: true })
      expect(chunked.status).toBe(413)
      const lying = yield* call(h, "/snapshot", { method: "POST", token: a.token, body: "{}", headers: { "content-length": "99999999999999999999" } }).pipe(
        Effect.either
      )
      // node refuses an absurd length itself (400) or we do (413): never a read, never the backend
      if (lying._tag === "Right") expect([400, 413]).toContain(lying.right.status)
      expect(h.backend.calls.filter((c) => c.method === "snapshot")).toHaveLength(0)
      const fits = yield* call(h, "/snapshot", { method: "POST", token: a.token, body: JSON.stringify({ name: "ok" }), chunked: true })
      expect(fits.status).toBe(201)
    }))

  it.scoped("non-JSON, non-objects, deep nesting, prototype keys and schema errors are 400 naming the field, never the value", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      const b = yield* h.mint(102)
      const post = (path: string, body: string) => call(h, path, { method: "POST", token: a.token, body })
      const cases: ReadonlyArray<readonly [string, string, RegExp]> = [
        ["/snapshot", "{not json", /not JSON/],
        ["/snapshot", "[1,2]", /JSON object/],
        ["/snapshot", `"${b.token}"`, /JSON object/],
        ["/snapshot", "[".repeat(5000) + "]".repeat(5000), /nested deeper|JSON object/],
        ["/snapshot", `{"name":"x","d":${"{\"a\":".repeat(20)}1${"}".repeat(20)}}`, /nested deeper/],
        ["/snapshot", `{"name":"x","__proto__":{"admin":true}}`, /not allowed/],
        ["/snapshot", JSON.stringify({}), /name: is required/],
        ["/snapshot", JSON.stringify({ name: b.token }), /^name: name is 1-32/],
        ["/snapshot", JSON.stringify({ name: "ok", [b.token]: 1 }), /\(unknown field\): is not allowed/],
        ["/snapshot", JSON.stringify({ name: 12345 }), /name: has the wrong type/],
        ["/rollback", JSON.stringify({ snapshot: "vzdump-nightly" }), /snapshot: snapshot names a ctl-/],
        ["/rollback", JSON.stringify({ snapshot: `ctl-${b.token}` }), /snapshot: /],
        ["/backup", JSON.stringify({ target: "pbs-other-host" }), /^body: takes no fields/],
        ["/heartbeat", JSON.stringify({ version: "1", image: "x", status: b.token }), /status: /]
      ]
      for (const [path, body, message] of cases) {
        const r = yield* post(path, body)
        expect(r.status, `${path} ${body.slice(0, 60)}`).toBe(400)
        const msg = (r.json as { error: { message: string } }).error.message
        expect(msg, body.slice(0, 60)).toMatch(message)
        noSecretIn(r.text, [a.token, b.token])
        expect(r.text).not.toContain("12345")
      }
      expect(h.backend.calls.filter((c) => c.method !== "contact")).toHaveLength(0)
    }))

  it.scoped("unknown paths 404, wrong methods 405 with Allow, a body on GET is ignored, queries are ignored", () =>
    Effect.gen(function*() {
      const h = yield* startApi()
      const a = yield* h.mint(101)
      for (const p of ["/", "/storage/", "//storage", "/guests/102/storage", "/STORAGE", "/backup/due/../../x", "/%2e%2e/etc"]) {
        const r = yield* call(h, p, { token: a.token })
        expect(r.status, p).toBe(404)
      }
      const wrong = yield* call(h, "/snapshot", { token: a.token })
      expect(wrong.status).toBe(405)
      expect(wrong.headers["allow"]).toBe("POST")
      const del = yield* call(h, "/storage", { method: "DELETE", token: a.token })
      expect(del.status).toBe(405)
      expect(del.headers["allow"]).toBe("GET")
      const withBody = yield* call(h, "/storage?vmid=102", { token: a.token, body: JSON.stringify({ vmid: 102 }) })
      expect(withBody.status).toBe(200)
      expect(h.backend.calls.every((c) => c.vmid === 101)).toBe(true)
    }))
})

describe("LocalApi hostile: connections (real time)", () => {
  const rawConnect = (port: number): Effect.Effect<TLSSocket, Error> =>
    Effect.async((resume) => {
      const s = connect({ host: "127.0.0.1", port, rejectUnauthorized: false })
      s.once("secureConnect", () => resume(Effect.succeed(s)))
      s.once("error", (e) => resume(Effect.fail(e)))
      s.once("close", () => resume(Effect.fail(new Error("closed before the handshake"))))
    })

  // Node's own timers cut the slow client, so this waits on real time: a 1 s header timeout
  // (the config minimum) plus node's check interval, bounded at 3 s.
  it.scoped("a client that never finishes its headers is cut off after the header timeout", () =>
    Effect.gen(function*() {
      const h = yield* startApi({ header_timeout_seconds: 1, request_timeout_seconds: 2 })
      const s = yield* rawConnect(h.api.port)
      const started = Date.now()
      s.write("GET /storage HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
      const outcome = yield* Effect.async<string>((resume) => {
        const guard = setTimeout(() => resume(Effect.succeed("still open")), 3000)
        let got = ""
        s.on("data", (d: Buffer) => (got += d.toString()))
        s.once("close", () => {
          clearTimeout(guard)
          resume(Effect.succeed(got))
        })
      })
      const elapsed = Date.now() - started
      expect(outcome).not.toBe("still open")
      expect(elapsed).toBeGreaterThanOrEqual(900)
      expect(elapsed).toBeLessThan(3000)
      expect(h.backend.calls).toHaveLength(0)
    }))

  // Real time again: node's request timeout (2 s here) cuts a body that stops arriving; ≤ 3 s.
  it.scoped("a client that starts a body and stops is cut off after the request timeout; nothing reaches the backend", () =>
    Effect.gen(function*() {
      const h = yield* startApi({ header_timeout_seconds: 1, request_timeout_seconds: 2 })
      const a = yield* h.mint(101)
      const s = yield* rawConnect(h.api.port)
      const started = Date.now()
      s.write(`POST /snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${a.token}\r\nContent-Length: 100\r\n\r\n{"name":`)
      const outcome = yield* Effect.async<string>((resume) => {
        const guard = setTimeout(() => resume(Effect.succeed("still open")), 3000)
        let got = ""
        s.on("data", (d: Buffer) => (got += d.toString()))
        s.once("close", () => {
          clearTimeout(guard)
          resume(Effect.succeed(got))
        })
      })
      const elapsed = Date.now() - started
      expect(outcome).not.toBe("still open")
      expect(outcome).not.toContain(a.token.slice(22))
      expect(elapsed).toBeLessThan(3000)
      expect(h.backend.calls.filter((c) => c.method === "snapshot")).toHaveLength(0)
    }))

  it.scoped("connections beyond max_connections are closed on accept; a freed slot is usable again", () =>
    Effect.gen(function*() {
      const h = yield* startApi({ max_connections: 2 })
      const a = yield* h.mint(101)
      const s1 = yield* rawConnect(h.api.port)
      const s2 = yield* rawConnect(h.api.port)
      const third = yield* Effect.either(rawConnect(h.api.port))
      expect(third._tag).toBe("Left")
      s1.destroy()
      s2.destroy()
      let r: Reply | undefined
      for (let i = 0; i < 50 && r === undefined; i++) {
        const tried = yield* Effect.either(call(h, "/storage", { token: a.token }))
        if (tried._tag === "Right") r = tried.right
        else yield* Effect.promise(() => new Promise((ok) => setTimeout(ok, 20)))
      }
      expect(r?.status).toBe(200)
    }))
})

describe("LocalApi hostile: fuzzer", () => {
  it.scoped("1,000 random requests: no 5xx, no crash, no call for another guest, no token in any answer or log", () =>
    Effect.gen(function*() {
      const h = yield* startApi({ rate_burst: 1_000_000, rate_per_minute: 1_000_000 }, { authFailureBurst: 1_000_000 })
      const a = yield* h.mint(101)
      const b = yield* h.mint(102)
      const revoked = yield* h.mint(101)
      yield* h.tokens.revoke(revoked.id)
      // B owns a snapshot the fuzzer will try to roll A back to
      expect((yield* call(h, "/snapshot", { method: "POST", token: b.token, body: JSON.stringify({ name: "bsnap" }) })).status).toBe(201)
      const bCallsBefore = h.backend.calls.filter((c) => c.vmid === 102).length
      const paths = ["/storage", "/snapshot", "/rollback", "/backup", "/backup/due", "/backup/status", "/restore-test/status", "/heartbeat", "/health"]
      const token = fc.oneof(
        fc.constant<string | undefined>(a.token),
        fc.constant<string | undefined>(undefined),
        fc.constant(revoked.token),
        fc.constant(b.token.slice(0, -1)),
        fc.constant(`fla1_${b.id}_${a.token.slice(22)}`),
        fc.constant(`fla1_${a.id}_${b.token.slice(22)}`),
        fc.nat(64).map((i) => flipCase(b.token, i)),
        fc.stringMatching(/^fla1_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/),
        fc.string({ maxLength: 80 }).filter((s) => /^[!-~]*$/.test(s))
      )
      const body = fc.oneof(
        fc.constant<string | undefined>(undefined),
        fc.constant(JSON.stringify({ snapshot: "ctl-bsnap" })),
        fc.constant(JSON.stringify({ name: "fz" })),
        fc.constant(JSON.stringify({ vmid: 102, snapshot: "ctl-bsnap" })),
        fc.constant(JSON.stringify({ version: "1.0", image: "r/c:1", status: "healthy" })),
        fc.constant(JSON.stringify({ name: b.token, snapshot: b.token })),
        fc.json({ maxDepth: 6 }),
        fc.string({ maxLength: 300 }),
        fc.nat(40).map((d) => "{\"a\":".repeat(d) + "1" + "}".repeat(d)),
        fc.uint8Array({ maxLength: 200 }).map((u) => Buffer.from(u).toString("latin1"))
      )
      const request = fc.record({
        method: fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"),
        path: fc.oneof(
          fc.constantFrom(...paths),
          fc.constantFrom(...paths).map((p) => `${p}?vmid=102`),
          fc.stringMatching(/^\/[A-Za-z0-9/._~%-]{0,24}$/)
        ),
        token,
        body,
        chunked: fc.boolean()
      })
      const samples = fc.sample(request, { numRuns: 1000, seed: 1101 })
      const agent = new Agent({ keepAlive: true, maxSockets: 8 })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      const replies = yield* Effect.forEach(samples, (s) =>
        call(h, s.path, {
          method: s.method,
          agent,
          chunked: s.chunked,
          ...(s.token === undefined ? {} : { token: s.token }),
          ...(s.body === undefined || s.method === "GET" || s.method === "HEAD" ? {} : { body: s.body })
        }).pipe(Effect.map((r) => ({ s, r }))), { concurrency: 8 })
      expect(replies).toHaveLength(1000)
      const statuses = new Map<number, number>()
      for (const { r } of replies) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1)
      expect([...statuses.keys()].filter((s) => s >= 500)).toEqual([])
      // the generator reached deep: successes, auth failures, validation and routing errors
      for (const s of [200, 400, 401, 404, 405]) expect(statuses.get(s) ?? 0, `status ${s}`).toBeGreaterThan(0)
      expect(h.backend.calls.filter((c) => c.vmid === 102)).toHaveLength(bCallsBefore)
      expect(h.backend.calls.filter((c) => c.method === "rollback" && c.vmid !== 101)).toHaveLength(0)
      for (const { r } of replies) {
        if (r.status === 403) expect(errorCode(r)).toBe("refused")
        noSecretIn(r.text, [a.token, b.token, revoked.token])
      }
      noSecretIn(h.logs.join("\n"), [a.token, b.token, revoked.token])
      const audit = JSON.stringify(yield* h.audit.auditTail(10_000))
      noSecretIn(audit, [a.token, b.token, revoked.token])
      // the server is still up and answers
      expect((yield* call(h, "/storage", { token: a.token })).status).toBe(200)
    }), { timeout: 60_000 })
})
