/**
 * Enrollment and key escrow on the wire (issue 13): the HubEnroll client and Hub's escrow calls
 * against the dev hub over real HTTPS on 127.0.0.1 (CA-verified with the dev hub's certificate),
 * and against hostile hubs. What is asserted:
 * - enroll new: a fresh host id and api key the hub then accepts; the token is one-time;
 * - enroll restore: the lost host's id, a new api key (the old one revoked), a bundle whose creds
 *   open with the new box's creds key and whose escrow is the host's current blob; 409 without one;
 * - escrow compare-and-swap: a lost swap is Conflict and the hub keeps the old blob; a crash
 *   between storing and answering leaves the new blob (before storing: the old);
 * - every error text is free of the enrollment token, the api key and the tunnel token, even when
 *   the hub echoes them back or hides them in a key name; a hostile answer is a typed Decode.
 */
import { HttpClient, HttpClientRequest, HttpServerRequest, HttpServerResponse, type HttpApp } from "@effect/platform"
import { describe, expect, expectTypeOf, it } from "@effect/vitest"
import type { CommandExecutor } from "@effect/platform"
import { type MethodR, type RIn } from "./fence-support.js"
import { Effect, Either, Exit, FastCheck as fc, Layer, Option, Redacted, Schema } from "effect"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { inspect } from "node:util"
import { hubSettings } from "../src/layers/Config.js"
import { Hub, hubHttpClientLayer, layerWithoutClient } from "../src/layers/Hub.js"
import {
  HubEnroll,
  HubEnrollHttpClientLive,
  hubEnrollLayer,
  hubEnrollLayerWithoutClient,
  type HubEnrollSettings,
  hubEnrollSettings,
  type HubEnrollShape,
  HubEnrollWithoutClient
} from "../src/layers/HubEnroll.js"
import { makeVault, sealCreds } from "../src/programs/protection/creds.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { type EnrollRequest, type EscrowUpload } from "../src/schema/escrow.js"
import { HostReport } from "../src/schema/hub.js"
import { StorageManifest } from "../src/schema/storage.js"
import { devHubCaPem, layerAppHttpClient, serveApp, serveDevHub, type DevHubServer } from "../src/sim/hub/index.js"

const dir = mkdtempSync(join(tmpdir(), "felhom-hub-enroll-"))
const caFile = join(dir, "hub-ca.pem")
writeFileSync(caFile, devHubCaPem)

const ENROLL_TOKEN = "fhe_enroll-TOKEN-3b7d9f1a3c5e7a9c1e3b5d7f9a1c3e5b"
const OLD_KEY = "fhk_old-api-KEY-0a2c4e6f8b0d2f4a6c8e0b2d4f6a8c0e2b"
const HOST = "pve-hel1-07"
const H2_KEY = "fhk_h2-api-key-9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a"
const FP = "0e:ab:d4:46:0b:6e:b9:ca:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:15:9b"
const FP2 = "ff:ab:d4:46:0b:6e:b9:ca:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:15:9b"
const PBS_FP = "0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9"
const TUNNEL = "eyJhIjoidHVubmVsLXRva2VuLXNlY3JldC0xMjM0NTY3ODkwIn0"
const PBS_SECRET = "pbs-token-secret-5f1e2d3c4b5a"

/** A wrapped key file's shape (its content is opaque to the hub). */
const wrappedKey = (fp: string, salt = "c2FsdA==") =>
  JSON.stringify({ kdf: { Scrypt: { n: 65536, r: 8, p: 1, salt } }, created: "2026-11-30T12:00:00Z", modified: "2026-11-30T12:00:00Z", data: "ZGF0YQ==", fingerprint: fp })

const golden = JSON.parse(readFileSync(join(__dirname, "fixtures", "hub", "host-report.golden.json"), "utf8")) as Record<string, unknown>
const reportFor = (hostId: string) => Schema.decodeUnknownSync(HostReport)({ ...golden, host_id: hostId })

const hubAs = (url: string, apiKey: string) =>
  layerWithoutClient({ requestTimeout: "5 seconds" }).pipe(
    Layer.provide(hubHttpClientLayer(caFile)),
    Layer.provide(hubSettings(Schema.decodeUnknownSync(AgentConfigFile)({ hub: { url, api_key: apiKey, ca_file: caFile } }).hub!)),
    Layer.orDie
  )

const enrollClient = (url: string) => hubEnrollLayer({ url, ca_file: caFile }, { requestTimeout: "5 seconds" }).pipe(Layer.orDie)

const requestFor = (mode: "new" | "restore", credsPublicKey: string): EnrollRequest => ({
  mode,
  hostname: "pve-new.lan",
  node: "pve",
  agent_version: "0.13.0",
  creds_public_key: credsPublicKey
})

/** A creds key pair for the enrolling box (the agent's storage-creds key in a scratch state dir). */
const newVault = Effect.suspend(() => makeVault(mkdtempSync(join(tmpdir(), "felhom-vault-")))).pipe(Effect.orDie)

const withHub = <A, E>(body: (s: DevHubServer) => Effect.Effect<A, E>) =>
  Effect.scoped(Effect.flatMap(serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { [OLD_KEY]: HOST, [H2_KEY]: "h2" } }), body))

const enroll = (url: string, token: string, req: EnrollRequest) =>
  Effect.flatMap(HubEnroll, (c) => c.enroll(Redacted.make(token), req)).pipe(Effect.provide(enrollClient(url)))

const restoreGrant = {
  mode: "restore" as const,
  host_id: HOST,
  bundle: {
    pbs_namespace: "hosts/pve-hel1-07",
    tunnel_token: Redacted.make(TUNNEL),
    directive: { guests: [{ vmid: 101, name: "cust-beta" }, { vmid: 110, name: "cust-gamma", point: "offsite:backup/ct/110/2026-11-29T02:00:00Z" }] },
    storage: (pub: string) =>
      Schema.decodeUnknownSync(StorageManifest)([{
        id: "offsite",
        type: "pbs",
        durable_id: { repo: "felhom@pbs!hel1@pbs.example.net:felhom", fingerprint: PBS_FP },
        class: "slow",
        role: "pbs-offsite",
        creds: { ciphertext: sealCreds(pub, "offsite", { password: PBS_SECRET }) },
        state: "attached"
      }])
  }
}

/** No secret of this file in `text`, whole or as a 10-character run. */
const leaks = (text: string) =>
  [ENROLL_TOKEN, OLD_KEY, TUNNEL, PBS_SECRET].some((s) => {
    for (let i = 0; i + 10 <= s.length; i++) if (text.includes(s.slice(i, i + 10))) return true
    return false
  })

const shown = (e: unknown) => `${inspect(e, { depth: 8 })}\n${JSON.stringify(e)}\n${String(e)}`

describe("dev hub enrollment over HTTPS", () => {
  it.live("new: a fresh host id and a ≥ 32-byte api key the hub accepts at once; the token is one-time", () =>
    withHub((s) =>
      Effect.gen(function*() {
        yield* s.hub.addEnrollmentToken(ENROLL_TOKEN, { mode: "new" })
        const vault = yield* newVault
        const res = yield* enroll(s.url, ENROLL_TOKEN, requestFor("new", vault.publicKey))
        expect(res.host_id).toMatch(/^host-[0-9a-f]{12}$/)
        expect(res.restore).toBeUndefined()
        const key = Redacted.value(res.api_key)
        expect(Buffer.from(key.replace(/^fhk_/, ""), "base64url").length).toBeGreaterThanOrEqual(32)
        expect(s.hub.hosts).toContain(res.host_id)
        // the new key works for the ordinary protocol and for escrow
        const envelope = yield* Effect.flatMap(Hub, (h) => h.report(reportFor(res.host_id))).pipe(Effect.provide(hubAs(s.url, key)))
        expect(envelope.desired_generation).toBe(0)
        expect((yield* s.hub.view(res.host_id)).enrollments).toMatchObject([{ mode: "new", hostname: "pve-new.lan", node: "pve" }])
        // spent
        const again = yield* Effect.flip(enroll(s.url, ENROLL_TOKEN, requestFor("new", vault.publicKey)))
        expect([again._tag, again.reason, again.status]).toEqual(["HubError", "Status", 401])
        expect(leaks(shown(again))).toBe(false)
        const unknown = yield* Effect.flip(enroll(s.url, "fhe_never-registered-0123456789", requestFor("new", vault.publicKey)))
        expect(unknown.status).toBe(401)
      })))

  it.live("restore: the host's id, a new api key (the old one revoked), a bundle whose creds open with the new box's key, the current escrow blob", () =>
    withHub((s) =>
      Effect.gen(function*() {
        // the lost box had escrowed its key
        const blob = yield* Effect.flatMap(Hub, (h) => h.putEscrow({ generation: 1, replaces: null, fingerprint: FP, key: wrappedKey(FP) })).pipe(
          Effect.provide(hubAs(s.url, OLD_KEY))
        )
        expect(blob.generation).toBe(1)
        yield* s.hub.addEnrollmentToken(ENROLL_TOKEN, restoreGrant)
        const vault = yield* newVault
        const res = yield* enroll(s.url, ENROLL_TOKEN, requestFor("restore", vault.publicKey))
        expect(res.host_id).toBe(HOST)
        const key = Redacted.value(res.api_key)
        expect(key).not.toBe(OLD_KEY)
        const bundle = res.restore!
        expect(bundle.pbs_namespace).toBe("hosts/pve-hel1-07")
        expect(Redacted.value(bundle.tunnel_token)).toBe(TUNNEL)
        expect(bundle.directive.guests.map((g) => g.vmid)).toEqual([101, 110])
        expect(bundle.escrow).toEqual({ host_id: HOST, generation: 1, fingerprint: FP, key: wrappedKey(FP) })
        const opened = yield* vault.open("offsite", bundle.storage[0]!.creds!)
        expect(opened.kind === "sealed" && Redacted.value(opened.secret.password)).toBe(PBS_SECRET)
        // the creds were sealed to this box: another box's key does not open them
        const other = yield* newVault
        expect((yield* Effect.either(other.open("offsite", bundle.storage[0]!.creds!)))._tag).toBe("Left")
        // the lost box's key is revoked, the new one works
        const revoked = yield* Effect.flip(Effect.flatMap(Hub, (h) => h.escrow).pipe(Effect.provide(hubAs(s.url, OLD_KEY))))
        expect(revoked.status).toBe(401)
        expect(leaks(shown(revoked))).toBe(false)
        const current = yield* Effect.flatMap(Hub, (h) => h.escrow).pipe(Effect.provide(hubAs(s.url, key)))
        expect(Option.getOrThrow(current).generation).toBe(1)
        expect(yield* s.hub.apiKeyCount(HOST)).toBe(1)
        // nothing secret in what the result prints
        expect(leaks(inspect(res, { depth: 8 }))).toBe(false)
      })))

  it.live("restore without an escrowed key: 409, the token kept; a mode mismatch: 409, the token kept", () =>
    withHub((s) =>
      Effect.gen(function*() {
        yield* s.hub.addEnrollmentToken(ENROLL_TOKEN, restoreGrant)
        const vault = yield* newVault
        const none = yield* Effect.flip(enroll(s.url, ENROLL_TOKEN, requestFor("restore", vault.publicKey)))
        expect([none.reason, none.status]).toEqual(["Status", 409])
        expect(none.message).toContain("no escrowed key")
        const mismatch = yield* Effect.flip(enroll(s.url, ENROLL_TOKEN, requestFor("new", vault.publicKey)))
        expect(mismatch.status).toBe(409)
        yield* s.hub.setEscrow(HOST, { fingerprint: FP, key: wrappedKey(FP) })
        const res = yield* enroll(s.url, ENROLL_TOKEN, requestFor("restore", vault.publicKey))
        expect(res.restore?.escrow.generation).toBe(1)
        // the admin side refuses what cannot work
        const dup = yield* Effect.flip(s.hub.addEnrollmentToken("fhe_another-token-0123456789", { ...restoreGrant, host_id: "no-such-host" }))
        expect(dup._tag).toBe("DevHubUnknownHost")
      })))

  it.live("two enrollments racing on one token: exactly one wins", () =>
    withHub((s) =>
      Effect.gen(function*() {
        yield* s.hub.addEnrollmentToken(ENROLL_TOKEN, { mode: "new" })
        const vault = yield* newVault
        const results = yield* Effect.all(
          Array.from({ length: 4 }, () => Effect.either(enroll(s.url, ENROLL_TOKEN, requestFor("new", vault.publicKey)))),
          { concurrency: "unbounded" }
        )
        expect(results.filter(Either.isRight).length).toBe(1)
        // the losers left nothing behind: one host, one key
        expect(s.hub.hosts).toEqual([HOST, "h2", Either.getOrThrow(results.find(Either.isRight)!).host_id])
        expect(results.filter(Either.isLeft).map((r) => Either.isLeft(r) && r.left.status)).toEqual([401, 401, 401])
      })))
})

describe("escrow compare-and-swap", () => {
  const put = (url: string, key: string, u: EscrowUpload) => Effect.flatMap(Hub, (h) => h.putEscrow(u)).pipe(Effect.provide(hubAs(url, key)))
  const get = (url: string, key: string) => Effect.flatMap(Hub, (h) => h.escrow).pipe(Effect.provide(hubAs(url, key)))

  it.live("none yet is None; a stale replaces is Conflict and the old blob stays; the blob is bound to the bearer's host", () =>
    withHub((s) =>
      Effect.gen(function*() {
        expect(Option.isNone(yield* get(s.url, OLD_KEY))).toBe(true)
        yield* put(s.url, OLD_KEY, { generation: 1, replaces: null, fingerprint: FP, key: wrappedKey(FP, "b25l") })
        // a second "first upload" loses
        const first = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 1, replaces: null, fingerprint: FP, key: wrappedKey(FP, "dHdv") }))
        expect([first.reason, first.status, first.method]).toEqual(["Conflict", 409, "PUT"])
        yield* put(s.url, OLD_KEY, { generation: 2, replaces: 1, fingerprint: FP, key: wrappedKey(FP, "dHdv") })
        const stale = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 3, replaces: 1, fingerprint: FP, key: wrappedKey(FP, "dGhyZWU=") }))
        expect(stale.reason).toBe("Conflict")
        const kept = Option.getOrThrow(yield* s.hub.escrowOf(HOST))
        expect([kept.generation, kept.key]).toEqual([2, wrappedKey(FP, "dHdv")])
        expect(Option.getOrThrow(yield* get(s.url, OLD_KEY))).toEqual(kept)
        expect(kept.host_id).toBe(HOST)
        // the superseded blob is kept, never deleted: an api key alone cannot make R's blob vanish
        expect((yield* s.hub.escrowHistoryOf(HOST)).map((b) => [b.generation, b.key])).toEqual([[1, wrappedKey(FP, "b25l")]])
        // K never changes: a blob for another key is refused, the old one kept
        const otherKey = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 3, replaces: 2, fingerprint: FP2, key: wrappedKey(FP2) }))
        expect(otherKey.reason).toBe("Conflict")
        // a declared fingerprint that differs from the key file's is refused outright
        const lying = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 3, replaces: 2, fingerprint: FP, key: wrappedKey(FP2) }))
        expect([lying.reason, lying.status]).toEqual(["Status", 400])
        expect(Option.getOrThrow(yield* s.hub.escrowOf(HOST)).generation).toBe(2)
        // a generation must move forward
        const backwards = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 2, replaces: 2, fingerprint: FP, key: wrappedKey(FP) }))
        expect(backwards.status).toBe(400)
        for (const e of [first, stale, otherKey, lying, backwards]) expect(leaks(shown(e))).toBe(false)
        // another host's key sees only its own (none) and cannot swap this host's blob
        expect(Option.isNone(yield* get(s.url, H2_KEY))).toBe(true)
        const foreign = yield* Effect.flip(put(s.url, H2_KEY, { generation: 3, replaces: 2, fingerprint: FP, key: wrappedKey(FP) }))
        expect(foreign.reason).toBe("Conflict")
        // a body naming a host is not an EscrowUpload: 400, nothing stored
        const named = yield* HttpClient.HttpClient.pipe(
          Effect.flatMap((c) =>
            c.execute(HttpClientRequest.put("https://hub.test/api/v1/escrow").pipe(
              HttpClientRequest.bearerToken(H2_KEY),
              HttpClientRequest.bodyUnsafeJson({ generation: 1, replaces: null, fingerprint: FP, key: wrappedKey(FP), host_id: HOST })
            ))
          ),
          Effect.map((r) => r.status),
          Effect.provide(layerAppHttpClient(s.hub.app)),
          Effect.orDie
        )
        expect(named).toBe(400)
        expect(Option.isNone(yield* s.hub.escrowOf("h2"))).toBe(true)
        yield* put(s.url, H2_KEY, { generation: 1, replaces: null, fingerprint: FP, key: wrappedKey(FP) })
        expect(Option.getOrThrow(yield* s.hub.escrowOf("h2")).host_id).toBe("h2")
        expect(Option.getOrThrow(yield* s.hub.escrowOf(HOST)).generation).toBe(2)
      })))

  it.live("a crash between storing and answering: the client sees a failure, the hub holds the new blob; before storing: the old", () =>
    withHub((s) =>
      Effect.gen(function*() {
        yield* put(s.url, OLD_KEY, { generation: 1, replaces: null, fingerprint: FP, key: wrappedKey(FP, "b25l") })
        yield* s.hub.failNextEscrowPut(HOST, { when: "before-store" })
        const before = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 2, replaces: 1, fingerprint: FP, key: wrappedKey(FP, "dHdv") }))
        expect([before.reason, before.status]).toEqual(["Status", 500])
        expect(Option.getOrThrow(yield* s.hub.escrowOf(HOST)).generation).toBe(1)
        yield* s.hub.failNextEscrowPut(HOST, { when: "after-store", status: 502 })
        const after = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 2, replaces: 1, fingerprint: FP, key: wrappedKey(FP, "dHdv") }))
        expect(after.status).toBe(502)
        // the retry of the same upload now loses the swap: the caller reads back to learn it landed
        const retry = yield* Effect.flip(put(s.url, OLD_KEY, { generation: 2, replaces: 1, fingerprint: FP, key: wrappedKey(FP, "dHdv") }))
        expect(retry.reason).toBe("Conflict")
        const now = Option.getOrThrow(yield* get(s.url, OLD_KEY))
        expect([now.generation, now.key]).toEqual([2, wrappedKey(FP, "dHdv")])
      })))
})

describe("hostile hubs", () => {
  const fake = (respond: (req: HttpServerRequest.HttpServerRequest, body: string) => HttpServerResponse.HttpServerResponse) => {
    const app: HttpApp.Default = Effect.gen(function*() {
      const req = yield* HttpServerRequest.HttpServerRequest
      const body = yield* req.text.pipe(Effect.orElseSucceed(() => ""))
      return respond(req, body)
    })
    return serveApp(app, { host: "127.0.0.1", port: 0 })
  }
  const bearerOf = (req: HttpServerRequest.HttpServerRequest) => (req.headers["authorization"] ?? "").replace(/^Bearer /, "")
  const json = (status: number, body: unknown) => HttpServerResponse.unsafeJson(body, { status })
  const req = requestFor("new", Buffer.alloc(32, 7).toString("base64"))
  const restoreReq = requestFor("restore", Buffer.alloc(32, 7).toString("base64"))

  it.live("errors echoing the enrollment token (raw, JSON-escaped, truncated, in a key name) never carry it", () =>
    Effect.scoped(Effect.gen(function*() {
      const answers: ReadonlyArray<(t: string) => HttpServerResponse.HttpServerResponse> = [
        (t) => json(401, { error: `bad token Bearer ${t}` }),
        (t) => json(500, { error: JSON.stringify({ authorization: `Bearer ${t}` }), part: t.slice(3, 20) }),
        (t) => json(200, { host_id: "h1", api_key: "k".repeat(40), [t]: 1 }),
        (t) => json(200, { host_id: t, api_key: "k".repeat(40) }),
        (t) => json(200, { host_id: "h1", api_key: t.slice(0, 10) })
      ]
      for (const answer of answers) {
        const s = yield* fake((r) => answer(bearerOf(r)))
        const e = yield* Effect.flip(enroll(s.url, ENROLL_TOKEN, req))
        expect(e._tag).toBe("HubError")
        expect(leaks(shown(e))).toBe(false)
      }
    })))

  it.live("hostile answers are typed Decode errors that echo no value: excess keys, a short api key, restore in new mode, none in restore mode, an escrow of another host, the token anywhere", () =>
    Effect.scoped(Effect.gen(function*() {
      const blob = { host_id: HOST, generation: 1, fingerprint: FP, key: wrappedKey(FP) }
      const bundle = { pbs_namespace: "ns", tunnel_token: TUNNEL, storage: [], directive: { guests: [] }, escrow: blob }
      const cases: ReadonlyArray<readonly [EnrollRequest, unknown, string]> = [
        [req, { host_id: HOST, api_key: "fhk_" + "a".repeat(40), extra: TUNNEL }, "is unexpected"],
        [req, { host_id: HOST, api_key: "short" }, "api_key"],
        [req, { host_id: HOST, api_key: "fhk_" + "a".repeat(40), restore: bundle }, "answered with a restore bundle"],
        [restoreReq, { host_id: HOST, api_key: "fhk_" + "a".repeat(40) }, "without a restore bundle"],
        [restoreReq, { host_id: HOST, api_key: "fhk_" + "a".repeat(40), restore: { ...bundle, escrow: { ...blob, host_id: "someone-else" } } }, "another host"],
        [restoreReq, { host_id: HOST, api_key: "fhk_" + "a".repeat(40), restore: { ...bundle, tunnel_token: "" } }, "tunnel_token"],
        [req, { host_id: HOST, api_key: ENROLL_TOKEN }, "carries the enrollment token"]
      ]
      for (const [request, answer, expected] of cases) {
        const s = yield* fake(() => json(200, answer))
        const e = yield* Effect.flip(enroll(s.url, ENROLL_TOKEN, request))
        expect([e.reason, e.method]).toEqual(["Decode", "POST"])
        expect(e.message).toContain(expected)
        expect(leaks(shown(e))).toBe(false)
        expect(shown(e)).not.toContain("a".repeat(40))
      }
    })))

  it.live("escrow answers are strict: an excess key or a wrong confirmation is Decode; 404 is None; an oversized answer is TooLarge", () =>
    Effect.scoped(Effect.gen(function*() {
      const blob = { host_id: HOST, generation: 1, fingerprint: FP, key: wrappedKey(FP) }
      const excess = yield* fake(() => json(200, { ...blob, note: OLD_KEY }))
      const e1 = yield* Effect.flip(Effect.flatMap(Hub, (h) => h.escrow).pipe(Effect.provide(hubAs(excess.url, OLD_KEY))))
      expect([e1.reason, e1.method]).toEqual(["Decode", "GET"])
      expect(leaks(shown(e1))).toBe(false)
      const wrongGen = yield* fake(() => json(200, { generation: 7 }))
      const e2 = yield* Effect.flip(
        Effect.flatMap(Hub, (h) => h.putEscrow({ generation: 2, replaces: 1, fingerprint: FP, key: wrappedKey(FP) })).pipe(Effect.provide(hubAs(wrongGen.url, OLD_KEY)))
      )
      expect([e2.reason, e2.method]).toEqual(["Decode", "PUT"])
      expect(e2.message).toContain("confirmed generation 7")
      const missing = yield* fake(() => json(404, { error: "none" }))
      expect(Option.isNone(yield* Effect.flatMap(Hub, (h) => h.escrow).pipe(Effect.provide(hubAs(missing.url, OLD_KEY))))).toBe(true)
      const huge = yield* fake(() => json(200, { host_id: HOST, api_key: "x".repeat(5 * 1024 * 1024) }))
      const e3 = yield* Effect.flip(enroll(huge.url, ENROLL_TOKEN, req))
      expect(e3.reason).toBe("TooLarge")
      // the conflict text of a hub that echoes the api key is scrubbed
      const echo = yield* fake((r) => json(409, { error: `stale for ${bearerOf(r)}` }))
      const e4 = yield* Effect.flip(
        Effect.flatMap(Hub, (h) => h.putEscrow({ generation: 2, replaces: 1, fingerprint: FP, key: wrappedKey(FP) })).pipe(Effect.provide(hubAs(echo.url, OLD_KEY)))
      )
      expect([e4.reason, e4.status]).toEqual(["Conflict", 409])
      expect(leaks(shown(e4))).toBe(false)
    })))

  it.live("verified TLS only: an http:// URL is refused before anything is sent; the PVE simulator's CA does not verify the hub", () =>
    Effect.scoped(Effect.gen(function*() {
      const e = yield* Effect.flip(enroll("http://127.0.0.1:9", ENROLL_TOKEN, req))
      expect([e.reason, e.message]).toEqual(["Transport", "POST /api/v1/enroll: the hub URL must be https:// (verified TLS only)"])
      const s = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: {} })
      const { simCertPem } = yield* Effect.promise(() => import("../src/sim/pve/index.js"))
      const wrongCa = join(dir, "pve-ca.pem")
      writeFileSync(wrongCa, simCertPem)
      const bad = yield* Effect.flip(
        Effect.flatMap(HubEnroll, (c) => c.enroll(Redacted.make(ENROLL_TOKEN), req)).pipe(Effect.provide(hubEnrollLayer({ url: s.url, ca_file: wrongCa }).pipe(Layer.orDie)))
      )
      expect(bad._tag === "HubError" && bad.reason).toBe("Transport")
    })))
})

describe("the enrollment token never leaks (property)", () => {
  const tokenArb = fc.stringMatching(/^[A-Za-z0-9_-]{24,64}$/)
  const placement = fc.constantFrom("body", "json", "key", "host_id", "api_key", "fragment", "namespace")
  const statusArb = fc.constantFrom(200, 400, 401, 409, 500)

  it.effect.prop(
    "whatever the hub does with the token, neither the result nor the error shows a 10-character run of it",
    [tokenArb, placement, statusArb, fc.nat({ max: 14 })],
    ([token, where, status, cut]) =>
      Effect.gen(function*() {
        const key = "fhk_" + "b".repeat(43)
        const echo = (t: string): unknown => {
          const frag = t.slice(cut % (t.length - 10), (cut % (t.length - 10)) + 10)
          switch (where) {
            case "body":
              return { error: `Bearer ${t}` }
            case "json":
              return { error: JSON.stringify({ authorization: `Bearer ${t}` }) }
            case "key":
              return { host_id: "h1", api_key: key, [t]: true }
            case "host_id":
              return { host_id: `h${t.replace(/[^A-Za-z0-9._-]/g, "")}`.slice(0, 128), api_key: key }
            case "api_key":
              return { host_id: "h1", api_key: `${key}${t}` }
            case "fragment":
              return { host_id: `h-${frag}`.replace(/[^A-Za-z0-9._-]/g, "x"), api_key: key }
            default:
              return {
                host_id: "h1",
                api_key: key,
                restore: { pbs_namespace: t, tunnel_token: "tt", storage: [], directive: { guests: [] }, escrow: { host_id: "h1", generation: 1, fingerprint: FP, key: "{}" } }
              }
          }
        }
        const app: HttpApp.Default = Effect.map(HttpServerRequest.HttpServerRequest, (r) =>
          HttpServerResponse.unsafeJson(echo((r.headers["authorization"] ?? "").replace(/^Bearer /, "")), { status }))
        const client = hubEnrollLayerWithoutClient({}).pipe(Layer.provide(layerAppHttpClient(app)), Layer.provide(hubEnrollSettings({ url: "https://hub.test" })))
        const exit = yield* Effect.exit(Effect.flatMap(HubEnroll, (c) => c.enroll(Redacted.make(token), where === "namespace" ? requestFor("restore", Buffer.alloc(32, 1).toString("base64")) : requestFor("new", Buffer.alloc(32, 1).toString("base64")))).pipe(Effect.provide(client)))
        const text = Exit.match(exit, { onSuccess: (v) => inspect(v, { depth: 8 }), onFailure: (c) => `${inspect(c, { depth: 8 })}\n${JSON.stringify(c)}` })
        for (let i = 0; i + 10 <= token.length; i++) expect(text.includes(token.slice(i, i + 10))).toBe(false)
        // an answer that carries the token is never taken
        if (status === 200 && where !== "body" && where !== "json") expect(Exit.isFailure(exit)).toBe(true)
      }),
    { fastCheck: { numRuns: 80 } }
  )
})

describe("the fence in types", () => {
  it("HubEnroll needs only an HttpClient and its own settings, never a CommandExecutor; its method needs nothing", () => {
    expectTypeOf<RIn<typeof HubEnrollWithoutClient>>().toEqualTypeOf<HttpClient.HttpClient | HubEnrollSettings>()
    expectTypeOf<RIn<typeof HubEnrollHttpClientLive>>().toEqualTypeOf<HubEnrollSettings>()
    expectTypeOf<Extract<RIn<typeof HubEnrollWithoutClient>, CommandExecutor.CommandExecutor>>().toBeNever()
    expectTypeOf<MethodR<HubEnrollShape>>().toBeNever()
  })
})
