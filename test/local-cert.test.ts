/**
 * LocalCert (issue 11): the local API's self-signed certificate, DER-encoded by the agent.
 * Interop with openssl and node's X509Certificate; kept across restarts; a damaged key or
 * certificate is a typed error, never a silent new certificate; rotation keeps both pins.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { execFileSync } from "node:child_process"
import { createHash, X509Certificate } from "node:crypto"
import { chmodSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { generateCertificate, ipBytes, makeLocalCert, pinOf, readyToPromote } from "../src/layers/LocalCert.js"

const newDir = () => join(mkdtempSync(join(tmpdir(), "felhom-cert-")), "local-api")
const openssl = (args: ReadonlyArray<string>, input?: string | Buffer) =>
  execFileSync("openssl", args, { input, stdio: ["pipe", "pipe", "pipe"] })

describe("LocalCert: the certificate", () => {
  it("openssl parses it: v3, ecdsa-with-SHA256, P-256, SAN IP + DNS, ~10 years, not a CA", () => {
    const now = Date.UTC(2026, 10, 30, 12, 0, 0)
    const { certPem, keyPem } = generateCertificate("10.10.0.1", now)
    const text = openssl(["x509", "-noout", "-text"], certPem).toString()
    expect(text).toContain("Version: 3 (0x2)")
    expect(text).toContain("Signature Algorithm: ecdsa-with-SHA256")
    expect(text).toMatch(/NIST CURVE: P-256|prime256v1/)
    expect(text).toContain("IP Address:10.10.0.1")
    expect(text).toContain("DNS:felhom-agent.local")
    expect(text).toContain("CA:FALSE")
    expect(text).toContain("Digital Signature")
    expect(text).toContain("TLS Web Server Authentication")
    const x = new X509Certificate(certPem)
    expect(x.verify(x.publicKey)).toBe(true)
    const years = (Date.parse(x.validTo) - now) / (365.25 * 86_400_000)
    expect(years).toBeGreaterThan(9.9)
    expect(years).toBeLessThan(10.1)
    expect(Date.parse(x.validFrom)).toBeLessThanOrEqual(now)
    // the key openssl reads is the one the certificate names
    const pubFromKey = openssl(["pkey", "-pubout", "-outform", "der"], keyPem)
    expect(pubFromKey.equals(x.publicKey.export({ type: "spki", format: "der" }))).toBe(true)
    // openssl's own signature check against itself as the trust anchor
    const dir = mkdtempSync(join(tmpdir(), "felhom-cert-v-"))
    writeFileSync(join(dir, "c.pem"), certPem)
    expect(openssl(["verify", "-CAfile", join(dir, "c.pem"), "-partial_chain", join(dir, "c.pem")]).toString()).toContain("OK")
  })

  it("pins: spki_sha256 equals openssl's pubkey DER sha256 (base64), cert_sha256 its SHA-256 fingerprint", () => {
    const { certPem } = generateCertificate("127.0.0.1", Date.now())
    const pin = pinOf(new X509Certificate(certPem))
    const spkiDer = openssl(["pkey", "-pubin", "-outform", "der"], openssl(["x509", "-pubkey", "-noout"], certPem))
    expect(pin.spki_sha256).toBe(createHash("sha256").update(spkiDer).digest("base64"))
    const fp = openssl(["x509", "-noout", "-fingerprint", "-sha256"], certPem).toString().trim().split("=")[1]!
    expect(pin.cert_sha256).toBe(fp.replace(/:/g, "").toLowerCase())
  })

  it("random serials; IPv6 SANs (with :: and an embedded IPv4) are encoded as 16 bytes", () => {
    const a = new X509Certificate(generateCertificate("::1", Date.now()).certPem)
    const b = new X509Certificate(generateCertificate("::1", Date.now()).certPem)
    expect(a.serialNumber).not.toBe(b.serialNumber)
    expect(a.subjectAltName).toContain("IP Address:0:0:0:0:0:0:0:1")
    expect(ipBytes("fd00::10:1")!.toString("hex")).toBe("fd000000000000000000000000100001")
    expect(ipBytes("::ffff:10.1.2.3")!.toString("hex")).toBe("00000000000000000000ffff0a010203")
    expect(ipBytes("2001:db8:0:0:1:0:0:1")!.toString("hex")).toBe("20010db8000000000001000000000001")
    expect(ipBytes("not-an-ip")).toBeNull()
    const c = new X509Certificate(generateCertificate("fd00::10:1", Date.now()).certPem)
    expect(openssl(["x509", "-noout", "-ext", "subjectAltName"], c.toString()).toString()).toContain("FD00:0:0:0:0:0:10:1")
  })
})

describe("LocalCert: on disk", () => {
  it.effect("generated once (dir 0700, file 0600), the same certificate on the next start", () =>
    Effect.gen(function*() {
      const dir = newDir()
      const first = yield* makeLocalCert({ dir, listen: "127.0.0.1" })
      const again = yield* makeLocalCert({ dir, listen: "127.0.0.1" })
      expect((yield* again.state).current.pin).toEqual((yield* first.state).current.pin)
      expect(statSync(dir).mode & 0o777).toBe(0o700)
      expect(statSync(join(dir, "current.pem")).mode & 0o777).toBe(0o600)
      expect(readdirSync(dir)).toEqual(["current.pem"])
      expect(yield* first.pins).toHaveLength(1)
    }))

  it.effect("a corrupt, truncated, mismatched or unreadable file is a typed error and is left as it is", () =>
    Effect.gen(function*() {
      const dir = newDir()
      const cert = yield* makeLocalCert({ dir, listen: "127.0.0.1" })
      const good = readFileSync(join(dir, "current.pem"), "utf8")
      const other = generateCertificate("127.0.0.1", Date.now())
      const keyOnly = good.slice(0, good.indexOf("-----BEGIN CERTIFICATE-----"))
      const cases = [
        good.slice(0, good.length - 40),
        good.replace(/(BEGIN PRIVATE KEY-----\n)(.)/, (_m, h: string, c: string) => `${h}${c === "A" ? "B" : "A"}`),
        `${keyOnly}${other.certPem}`,
        "garbage"
      ]
      for (const text of cases) {
        writeFileSync(join(dir, "current.pem"), text)
        const exit = yield* Effect.exit(makeLocalCert({ dir, listen: "127.0.0.1" }))
        expect(Exit.isFailure(exit)).toBe(true)
        const err = yield* Effect.flip(makeLocalCert({ dir, listen: "127.0.0.1" }))
        expect(err._tag).toBe("LocalCertError")
        expect(err.message).toContain("not regenerated")
        expect(err.message).not.toContain("PRIVATE KEY")
        expect(readFileSync(join(dir, "current.pem"), "utf8")).toBe(text)
      }
      if (process.getuid?.() !== 0) {
        writeFileSync(join(dir, "current.pem"), good)
        chmodSync(join(dir, "current.pem"), 0o000)
        const err = yield* Effect.flip(makeLocalCert({ dir, listen: "127.0.0.1" }))
        expect(err.message).toContain("cannot be read")
      }
      expect(cert).toBeDefined()
    }))

  it.effect("a directory others can read is refused (it holds the key)", () =>
    Effect.gen(function*() {
      const dir = newDir()
      yield* makeLocalCert({ dir, listen: "127.0.0.1" })
      chmodSync(dir, 0o755)
      const err = yield* Effect.flip(makeLocalCert({ dir, listen: "127.0.0.1" }))
      expect(err.message).toContain("0700")
    }))

  it.effect("rotation: stage keeps next (pins [current, next]), survives a restart, promote swaps and drops the old", () =>
    Effect.gen(function*() {
      const dir = newDir()
      const c = yield* makeLocalCert({ dir, listen: "127.0.0.1" })
      const cur = (yield* c.state).current.pin
      const next = yield* c.stage
      expect(yield* c.stage).toEqual(next) // idempotent: a published next pin is never replaced
      expect(yield* c.pins).toEqual([cur, next])
      const restarted = yield* makeLocalCert({ dir, listen: "127.0.0.1" })
      expect(yield* restarted.pins).toEqual([cur, next])
      expect(yield* restarted.promote).toEqual(next)
      expect(yield* restarted.pins).toEqual([next])
      expect(readdirSync(dir)).toEqual(["current.pem"])
      const third = yield* makeLocalCert({ dir, listen: "127.0.0.1" })
      expect(yield* third.pins).toEqual([next])
      const none = yield* Effect.flip(third.promote)
      expect(none.message).toContain("no next certificate")
    }))

  it("readyToPromote: only when every deployed guest's published pins include next", () => {
    const cur = { spki_sha256: "A", cert_sha256: "a" }
    const nxt = { spki_sha256: "B", cert_sha256: "b" }
    expect(readyToPromote("B", [])).toBe(true)
    expect(readyToPromote("B", [[cur, nxt], [nxt]])).toBe(true)
    expect(readyToPromote("B", [[cur, nxt], [cur]])).toBe(false)
    expect(readyToPromote("B", new Map([[101, [cur]]]).values())).toBe(false)
  })
})
