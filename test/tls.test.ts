/**
 * Proxmox TLS trust modes over real HTTPS on loopback, with openssl-generated certificates:
 * the right pin connects, a wrong pin fails the handshake before any request byte is sent,
 * CA mode verifies the chain and the name, and insecure mode is loopback-only.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { createServer, type Server } from "node:https"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { X509Certificate } from "node:crypto"
import { proxmoxSettings } from "../src/layers/Config.js"
import { Proxmox, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { layerFor } from "../src/layers/PveTransport.js"
import { AgentConfigFile } from "../src/schema/config.js"

const SECRET = "0b9d5c1e-2f4a-4e6b-8c0d-1a3b5c7d9e2f"
const dir = mkdtempSync(join(tmpdir(), "felhom-tls-"))
const openssl = (...args: Array<string>) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" })
const selfSigned = (name: string, san: string) =>
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
    "-subj", `/CN=${name}`, "-addext", `subjectAltName=${san}`, "-keyout", `${name}.key`, "-out", `${name}.crt`)

let server: Server
let namedServer: Server
let port = 0
let namedPort = 0
let requests = 0
let fingerprint = ""

beforeAll(async () => {
  selfSigned("pve", "IP:127.0.0.1,DNS:localhost")
  selfSigned("other", "IP:127.0.0.1")
  selfSigned("named", "DNS:pve.example.invalid")
  namedServer = createServer({ key: readFileSync(join(dir, "named.key")), cert: readFileSync(join(dir, "named.crt")) }, (_req, res) => {
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify({ data: { version: "9.0.11" } }))
  })
  await new Promise<void>((resolve) => namedServer.listen(0, "127.0.0.1", resolve))
  namedPort = (namedServer.address() as AddressInfo).port
  fingerprint = new X509Certificate(readFileSync(join(dir, "pve.crt"))).fingerprint256
  server = createServer({ key: readFileSync(join(dir, "pve.key")), cert: readFileSync(join(dir, "pve.crt")) }, (req, res) => {
    requests++
    if (req.url === "/api2/json/version") {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({ data: { version: "9.0.11", release: "9.0", repoid: "3bf5476b8a4699e2" } }))
    } else {
      // PVE < 8.3: the error text is only in the reason phrase
      res.writeHead(403, "Permission check failed (/nodes/pve, Sys.Audit)", { "content-type": "application/json" })
      res.end(JSON.stringify({ data: null }))
    }
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  port = (server.address() as AddressInfo).port
})
afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()))
  await new Promise<void>((resolve) => namedServer.close(() => resolve()))
  rmSync(dir, { recursive: true, force: true })
})

const proxmoxWith = (tls: Record<string, unknown>, host = "127.0.0.1", onPort = () => port) => {
  const file = Schema.decodeUnknownSync(AgentConfigFile)({
    proxmox: { url: `https://${host}:${onPort()}`, token_id: "felhom@pve!agent", token_secret: SECRET, node: "pve", tls }
  })
  return ProxmoxWithoutClient.pipe(Layer.provide(layerFor(file.proxmox!.tls, file.proxmox!.url)), Layer.provide(proxmoxSettings(file.proxmox!)))
}

const version = Effect.flatMap(Proxmox, (p) => p.version)

describe("PVE TLS trust", () => {
  it.live("the right pinned fingerprint connects", () =>
    Effect.gen(function*() {
      const v = yield* version.pipe(Effect.provide(proxmoxWith({ fingerprint_sha256: fingerprint })))
      expect(v.version).toBe("9.0.11")
    }))

  it.live("the pin holds on every new connection (no session resumption without a certificate)", () =>
    Effect.gen(function*() {
      // several concurrent calls force several connections; later ones would resume the TLS session
      const results = yield* Effect.forEach(Array.from({ length: 8 }), () => version, { concurrency: 8 }).pipe(
        Effect.zipRight(Effect.forEach(Array.from({ length: 8 }), () => version, { concurrency: 8 })),
        Effect.provide(proxmoxWith({ fingerprint_sha256: fingerprint }))
      )
      expect(results.every((v) => v.version === "9.0.11")).toBe(true)
    }))

  it.live("a pin written in lower case without colons still matches only the same certificate", () =>
    Effect.gen(function*() {
      const v = yield* version.pipe(Effect.provide(proxmoxWith({ fingerprint_sha256: fingerprint.toLowerCase() })))
      expect(v.release).toBe("9.0")
    }))

  it.live("a wrong pin fails the handshake with a clear error and sends no request", () =>
    Effect.gen(function*() {
      const before = requests
      const wrong = fingerprint.split(":").reverse().join(":")
      const e = yield* version.pipe(Effect.provide(proxmoxWith({ fingerprint_sha256: wrong })), Effect.flip)
      expect(e._tag).toBe("PveTransportError")
      expect(e.message).toContain("fingerprint mismatch")
      expect(e.message).toContain(fingerprint)
      expect(requests).toBe(before)
      expect(JSON.stringify(e)).not.toContain(SECRET)
    }))

  it.live("CA mode verifies the chain: the right CA connects, another CA is refused", () =>
    Effect.gen(function*() {
      const ok = yield* version.pipe(Effect.provide(proxmoxWith({ ca_file: join(dir, "pve.crt") })))
      expect(ok.version).toBe("9.0.11")
      const before = requests
      const e = yield* version.pipe(Effect.provide(proxmoxWith({ ca_file: join(dir, "other.crt") })), Effect.flip)
      expect(e._tag).toBe("PveTransportError")
      expect(e.message).toMatch(/self[- ]signed|unable to verify|certificate/i)
      expect(requests).toBe(before)
    }))

  it.live("CA mode still checks the host name", () =>
    Effect.gen(function*() {
      // trusted CA, valid chain, but the certificate names pve.example.invalid, not 127.0.0.1
      const e = yield* version.pipe(
        Effect.provide(proxmoxWith({ ca_file: join(dir, "named.crt") }, "127.0.0.1", () => namedPort)),
        Effect.flip
      )
      expect(e._tag).toBe("PveTransportError")
      expect(e.message).toMatch(/altnames|Hostname\/IP does not match/i)
    }))

  it.live("a missing CA file is a ConfigError naming the key", () =>
    Effect.gen(function*() {
      const e = yield* version.pipe(Effect.provide(proxmoxWith({ ca_file: join(dir, "absent.crt") })), Effect.flip)
      expect(e._tag).toBe("ConfigError")
      expect(e.message).toContain("absent.crt")
    }))

  it.live("insecure_skip_verify works on loopback only", () =>
    Effect.gen(function*() {
      const v = yield* version.pipe(Effect.provide(proxmoxWith({ insecure_skip_verify: true })))
      expect(v.version).toBe("9.0.11")
      const refused = yield* version.pipe(Effect.provide(proxmoxWith({ insecure_skip_verify: true }, "pve.example.invalid")), Effect.flip)
      expect(refused._tag).toBe("ConfigError")
    }))

  it.live("a PVE 7 error with the text only in the reason phrase still names the privilege", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flatMap(Proxmox, (p) => p.nodeStatus).pipe(
        Effect.provide(proxmoxWith({ fingerprint_sha256: fingerprint })),
        Effect.flip
      )
      expect(e._tag).toBe("PveApiError")
      if (e._tag !== "PveApiError") return
      expect(e.status).toBe(403)
      expect(e.permission).toEqual({ aclPath: "/nodes/pve", privileges: ["Sys.Audit"] })
    }))
})
