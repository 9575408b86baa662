/**
 * Issue 8, finding 4: the hub client inherited the PVE TLS trust. Two Effect layers built from
 * the same HttpClient layer value share one memoized instance within one build, so the daemon's
 * graph gave both clients whichever transport was built first.
 *
 * These tests build the daemon's real composition (`servicesLayer`) against two real HTTPS
 * servers on 127.0.0.1 with DISTINCT certificates: the PVE simulator (configs/sim/tls/pve-sim.*)
 * and a hub recording every request (the dev hub's certificate, configs/sim/tls/hub-sim.*).
 * Each assertion fails whichever client the old code built first (see the comments).
 */
import { NodeContext } from "@effect/platform-node"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import { X509Certificate } from "node:crypto"
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer, type Server } from "node:https"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerFrom } from "../src/layers/Config.js"
import { Hub } from "../src/layers/Hub.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { servicesLayer } from "../src/programs/daemon/root.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { hubCertPem, hubKeyPem } from "../src/sim/hub/tlsMaterial.js"
import { serveSimPve, simCertPem } from "../src/sim/pve/index.js"

const HUB_KEY = "fhk_isolation-marker-4c1d9e7a2b5f8036"
const dir = mkdtempSync(join(tmpdir(), "felhom-isolation-"))
const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text)
  return join(dir, name)
}
const pveCa = file("pve-sim.crt", simCertPem)
const hubCa = file("hub-sim.crt", hubCertPem)
// a third, unrelated certificate: trusts neither server
execFileSync("openssl", [
  "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
  "-subj", "/CN=unrelated", "-addext", "subjectAltName=IP:127.0.0.1",
  "-keyout", join(dir, "unrelated.key"), "-out", join(dir, "unrelated.crt")
], { stdio: "pipe" })
const unrelatedCa = join(dir, "unrelated.crt")

/** What the hub server saw: every HTTP request (with its Authorization header) and every failed handshake. */
const seen = { requests: [] as Array<{ url: string; authorization: string | undefined }>, tlsErrors: 0 }
let hubServer: Server
let hubUrl = ""

beforeAll(async () => {
  hubServer = createServer({ key: hubKeyPem, cert: hubCertPem }, (req, res) => {
    seen.requests.push({ url: req.url ?? "", authorization: req.headers.authorization })
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify({ jobs: [] }))
  })
  hubServer.on("tlsClientError", () => void seen.tlsErrors++)
  await new Promise<void>((resolve) => hubServer.listen(0, "127.0.0.1", resolve))
  hubUrl = `https://127.0.0.1:${(hubServer.address() as AddressInfo).port}`
})
afterAll(async () => {
  await new Promise<void>((resolve) => hubServer.close(() => resolve()))
  rmSync(dir, { recursive: true, force: true })
})

const eventually = async (ok: () => boolean, ms = 3000) => {
  for (const end = Date.now() + ms; !ok() && Date.now() < end;) await new Promise((r) => setTimeout(r, 20))
}

/** The daemon's services, exactly as the daemon composes them, over this config. */
const daemonServices = (pve: { url: string; tokenId: string; tokenSecret: string }, pveTls: Record<string, unknown>, hubCaFile: string) => {
  const config = Schema.decodeUnknownSync(AgentConfigFile)({
    host_id: "host-isolation",
    state_dir: mkdtempSync(join(tmpdir(), "felhom-isolation-state-")),
    proxmox: { url: pve.url, token_id: pve.tokenId, token_secret: pve.tokenSecret, node: "pve", tls: pveTls },
    hub: { url: hubUrl, api_key: HUB_KEY, ca_file: hubCaFile },
    authz: { signers: [] }
  })
  return servicesLayer.pipe(Layer.provide(layerFrom(config)), Layer.provide(NodeContext.layer))
}

const bothClients = Effect.gen(function*() {
  const proxmox = yield* Proxmox
  const hub = yield* Hub
  const pve = yield* Effect.either(proxmox.version)
  const jobs = yield* Effect.either(hub.signedJobs)
  return { pve, jobs }
})

describe("each client has its own transport from its own config block (issue 8, finding 4)", () => {
  it("the dev hub and the PVE simulator serve distinct certificates, and the embedded copies match configs/sim/tls", () => {
    expect(new X509Certificate(hubCertPem).fingerprint256).not.toBe(new X509Certificate(simCertPem).fingerprint256)
    expect(readFileSync(join(__dirname, "..", "configs", "sim", "tls", "hub-sim.crt"), "utf8").trim()).toBe(hubCertPem.trim())
    expect(readFileSync(join(__dirname, "..", "configs", "sim", "tls", "hub-sim.key"), "utf8").trim()).toBe(hubKeyPem.trim())
  })

  it.scoped("PVE insecure_skip_verify (loopback) never lends its trust to the hub: an untrusted hub gets a TLS error and no bearer token", () =>
    Effect.gen(function*() {
      const pve = yield* serveSimPve({ host: "127.0.0.1", port: 0 })
      const before = { requests: seen.requests.length, tlsErrors: seen.tlsErrors }
      // hub.ca_file trusts neither server. Old code, PVE client built first: the hub client
      // inherited "verify nothing" and sent the token; hub client first: PVE got the hub's CA
      // and failed. Either way one of the assertions below failed.
      const { pve: version, jobs } = yield* bothClients.pipe(Effect.provide(daemonServices(pve, { insecure_skip_verify: true }, unrelatedCa)))

      expect(version._tag, "PVE over loopback insecure_skip_verify works").toBe("Right")
      expect(jobs._tag).toBe("Left")
      if (jobs._tag !== "Left") return
      expect(jobs.left.reason).toBe("Transport")
      expect(jobs.left.message).toMatch(/certificate|self[- ]signed|unable to verify/i)
      expect(JSON.stringify(jobs.left)).not.toContain(HUB_KEY)
      // the hub's server saw the handshake fail (the client's alert may arrive after the client
      // gave up: wait for it) and never an HTTP request, so never the token
      yield* Effect.promise(() => eventually(() => seen.tlsErrors > before.tlsErrors))
      expect(seen.tlsErrors).toBeGreaterThan(before.tlsErrors)
      expect(seen.requests.slice(before.requests)).toEqual([])
      expect(seen.requests.some((r) => r.authorization?.includes(HUB_KEY) === true)).toBe(false)
    }))

  it.scoped("a pinned PVE and a hub trusted through hub.ca_file both work in the same built graph", () =>
    Effect.gen(function*() {
      const pve = yield* serveSimPve({ host: "127.0.0.1", port: 0 })
      const before = seen.requests.length
      // Old code, PVE first: the hub client pinned the PVE fingerprint and refused the hub;
      // hub first: the PVE client verified against the hub's CA and refused PVE.
      const { pve: version, jobs } = yield* bothClients.pipe(
        Effect.provide(daemonServices(pve, { fingerprint_sha256: pve.fingerprint256 }, hubCa))
      )
      expect(version._tag, JSON.stringify(version)).toBe("Right")
      expect(jobs._tag, JSON.stringify(jobs)).toBe("Right")
      expect(seen.requests.slice(before).map((r) => [r.url, r.authorization])).toEqual([["/api/v1/signed-jobs", `Bearer ${HUB_KEY}`]])
    }))

  it.scoped("a PVE CA file does not make the PVE certificate trusted for the hub, nor the hub's for PVE", () =>
    Effect.gen(function*() {
      const pve = yield* serveSimPve({ host: "127.0.0.1", port: 0 })
      const before = seen.requests.length
      // PVE trusts pve-sim.crt only, the hub trusts pve-sim.crt only: PVE works, the hub (hub-sim.crt) must not
      const { pve: version, jobs } = yield* bothClients.pipe(Effect.provide(daemonServices(pve, { ca_file: pveCa }, pveCa)))
      expect(version._tag).toBe("Right")
      expect(jobs._tag).toBe("Left")
      expect(seen.requests.length).toBe(before)
    }))
})
