/** The `sshsig verify` program over real files: fixtures, wrong keys, unreadable and oversized files. */
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { sshsigVerify } from "../src/programs/cli/sshsigVerify.js"
import { SSHSIG_MAX_ARMOR_BYTES } from "../src/schema/sshsig.js"
import { FIXTURE_DIR, readMessage } from "./fixtures/sshsig/fixtures.js"

const key = (name: string) => join(FIXTURE_DIR, "keys", name)
const sig = (name: string) => join(FIXTURE_DIR, "sigs", name)
const text = readMessage("text.txt")
const run = (namespace: string, keyFile: string, signatureFile: string, message: Uint8Array = text) =>
  sshsigVerify({ namespace, keyFile, signatureFile, message }).pipe(Effect.provide(NodeFileSystem.layer))

describe("sshsigVerify", () => {
  it.effect("a good fixture signature is valid and names the key", () =>
    Effect.gen(function*() {
      const r = yield* run("felhom-op-v1", key("ecdsa384.pub"), sig("ecdsa384.text.sha512.sig"))
      expect(r.valid).toBe(true)
      expect(r.keyType).toBe("ecdsa-sha2-nistp384")
      expect(r.fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/)
      expect(r.reason).toBeUndefined()
    }))

  it.effect("rejections carry the stage in the reason", () =>
    Effect.gen(function*() {
      const wrongNs = yield* run("file", key("ed25519.pub"), sig("ed25519.text.sha512.sig"))
      expect(wrongNs).toMatchObject({ valid: false, keyType: "ssh-ed25519" })
      expect(wrongNs.reason).toMatch(/^Namespace: /)
      const otherKey = yield* run("felhom-op-v1", key("rsa3072.pub"), sig("ed25519.text.sha512.sig"))
      expect(otherKey.reason).toMatch(/^BadSignature: signed by ssh-ed25519 SHA256:.*not by the given key/)
      const changed = yield* run("felhom-op-v1", key("ed25519.pub"), sig("ed25519.text.sha512.sig"), text.subarray(1))
      expect(changed.reason).toMatch(/^BadSignature: ed25519 signature does not verify/)
      const cert = yield* run("felhom-op-v1", key("ed25519-cert.pub"), sig("ed25519-cert.text.sha512.sig"))
      expect(cert).toMatchObject({ valid: false })
      expect(cert.reason).toMatch(/^key file: UnsupportedKey: certificate/)
    }))

  it.effect("unreadable, malformed and oversized files are invalid, not failures", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "felhom-sshsig-prog-"))
      const missing = yield* run("felhom-op-v1", join(dir, "nope.pub"), sig("ed25519.text.sha512.sig"))
      expect(missing.valid).toBe(false)
      expect(missing.reason).toMatch(/^cannot read key file/)
      writeFileSync(join(dir, "big.sig"), "A".repeat(SSHSIG_MAX_ARMOR_BYTES + 1))
      const big = yield* run("felhom-op-v1", key("ed25519.pub"), join(dir, "big.sig"))
      expect(big.reason).toMatch(/signature file is larger than 16384 bytes/)
      writeFileSync(join(dir, "junk.pub"), "not a key\n")
      const junk = yield* run("felhom-op-v1", join(dir, "junk.pub"), sig("ed25519.text.sha512.sig"))
      expect(junk.reason).toMatch(/^key file: Malformed/)
      rmSync(dir, { recursive: true, force: true })
    }))
})
