/**
 * FIDO (sk-*) keys: synthetic authenticator signatures from test/sshsig-sign.ts (PROTOCOL.u2f
 * layout, application "ssh:"), verified through the same path as everything else and checked
 * against ssh-keygen, which verifies sk signatures in software.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import {
  dearmor,
  FELHOM_OP_NAMESPACE,
  parsePublicKeyBlob,
  parsePublicKeyLine,
  parseSignatureBlob,
  type SshKeyType,
  type SshsigError,
  verifyArmored,
  verifySignatureBlob
} from "../src/schema/sshsig.js"
import { sshKeygenAccepts, sshKeygenAvailable } from "./fixtures/sshsig/fixtures.js"
import { makeKey, signSshsig, type SignOptions } from "./sshsig-sign.js"

const NS = FELHOM_OP_NAMESPACE
const message = Buffer.from('{"op":"guest.destroy","guest_id":"101"}')

const kindOf = (e: Either.Either<unknown, SshsigError>) => (Either.isLeft(e) ? e.left.kind : "valid")
const messageOf = (e: Either.Either<unknown, SshsigError>) => (Either.isLeft(e) ? e.left.message : "")

const setByte = (offsetFromEnd: number, value: number) => (inner: Buffer) => {
  const b = Buffer.from(inner)
  b[b.length - offsetFromEnd] = value
  return b
}

for (const type of ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"] as const satisfies ReadonlyArray<SshKeyType>) {
  describe(type, () => {
    const key = makeKey(type)
    const sign = (o: Partial<SignOptions> = {}) => signSshsig({ message, namespace: NS, key, ...o })

    interface Case {
      readonly name: string
      readonly armored: string
      readonly ours: "valid" | SshsigError["kind"]
      readonly match?: RegExp
      readonly sshKeygenAccepts?: boolean
    }
    const cases: ReadonlyArray<Case> = [
      { name: "user present (flags 0x01)", armored: sign(), ours: "valid" },
      { name: "user present and verified (flags 0x05)", armored: sign({ flags: 0x05 }), ours: "valid" },
      { name: "sha256 SSHSIG hash", armored: sign({ hashAlgorithm: "sha256" }), ours: "valid" },
      {
        name: "user presence missing (flags 0x00)",
        armored: sign({ flags: 0 }),
        ours: "BadSignature",
        match: /user presence flag not set/,
        sshKeygenAccepts: true // ssh-keygen -Y does not look at the flags; sshd and felhom do
      },
      { name: "UV set but UP missing (flags 0x04)", armored: sign({ flags: 0x04 }), ours: "BadSignature", match: /user presence/, sshKeygenAccepts: true },
      { name: "flags byte flipped in the blob (0x01 → 0x05)", armored: sign({ mapInner: setByte(5, 0x05) }), ours: "BadSignature", match: /does not verify/ },
      { name: "UP bit set in the blob of a flags-0 signature", armored: sign({ flags: 0, mapInner: setByte(5, 0x01) }), ours: "BadSignature", match: /does not verify/ },
      { name: "counter changed in the blob", armored: sign({ counter: 7, mapInner: setByte(1, 8) }), ours: "BadSignature", match: /does not verify/ },
      { name: "signed for another application", armored: sign({ application: "ssh:other" }), ours: "BadSignature", match: /does not verify/ },
      { name: "flags and counter missing", armored: sign({ mapInner: (inner) => inner.subarray(0, inner.length - 5) }), ours: "Malformed", match: /truncated sk flags/ },
      { name: "a byte after the counter", armored: sign({ mapInner: (inner) => Buffer.concat([inner, Buffer.of(0)]) }), ours: "Malformed", match: /trailing/ },
      {
        name: "relabelled as the other sk type",
        armored: sign({ sigType: type === "sk-ssh-ed25519@openssh.com" ? "sk-ecdsa-sha2-nistp256@openssh.com" : "sk-ssh-ed25519@openssh.com" }),
        ours: "BadSignature",
        match: /does not match the key type/
      },
      { name: "relabelled as the plain key type", armored: sign({ sigType: type.startsWith("sk-ssh") ? "ssh-ed25519" : "ecdsa-sha2-nistp256" }), ours: "BadSignature" },
      ...(type === "sk-ecdsa-sha2-nistp256@openssh.com"
        ? [{ name: "webauthn-sk signature form", armored: sign({ sigType: "webauthn-sk-ecdsa-sha2-nistp256@openssh.com" }), ours: "BadSignature", match: /webauthn-sk signatures are not supported/ } as const]
        : [])
    ]

    for (const c of cases) {
      it(`${c.name} → ${c.ours}`, () => {
        const r = verifyArmored(c.armored, NS, message)
        expect(kindOf(r), messageOf(r)).toBe(c.ours)
        if (c.match) expect(messageOf(r)).toMatch(c.match)
      })
    }

    it.runIf(sshKeygenAvailable)("ssh-keygen -Y check-novalidate agrees, except on the UP policy", () => {
      for (const c of cases) {
        expect(sshKeygenAccepts(c.armored, NS, message), c.name).toBe(c.sshKeygenAccepts ?? c.ours === "valid")
      }
    })

    it("Authz-order pipeline returns the flags and counter; the policy can waive UP", () => {
      const sig = Either.getOrThrow(parseSignatureBlob(Either.getOrThrow(dearmor(sign({ flags: 0x05, counter: 4242 })))))
      const parsed = Either.getOrThrow(parsePublicKeyBlob(sig.publicKey))
      expect(parsed.application).toBe("ssh:")
      expect(parsed.type).toBe(type)
      expect(Either.getOrThrow(verifySignatureBlob(sig, parsed, NS, message))).toEqual({ flags: 5, counter: 4242 })
      const noUp = Either.getOrThrow(parseSignatureBlob(Either.getOrThrow(dearmor(sign({ flags: 0 })))))
      expect(kindOf(verifySignatureBlob(noUp, parsed, NS, message))).toBe("BadSignature")
      expect(Either.getOrThrow(verifySignatureBlob(noUp, parsed, NS, message, { requireUserPresence: false }))).toEqual({ flags: 0, counter: 1 })
      expect(kindOf(verifyArmored(sign({ flags: 0 }), NS, message, { requireUserPresence: false }))).toBe("valid")
    })

    it("the application is part of the key: a non-default one verifies, and the key line carries it", () => {
      const custom = makeKey(type, { application: "ssh:felhom" })
      const r = verifyArmored(signSshsig({ message, namespace: NS, key: custom }), NS, message)
      expect(Either.getOrThrow(r).key.application).toBe("ssh:felhom")
      expect(Either.getOrThrow(parsePublicKeyLine(custom.publicKey.line)).key.application).toBe("ssh:felhom")
      // same key material, other application: a different key for the allow-list and the signature
      const line = Either.getOrThrow(parsePublicKeyLine(key.publicKey.line)).key
      expect(kindOf(verifyArmored(signSshsig({ message, namespace: NS, key: custom }), NS, message, { publicKey: line }))).toBe("BadSignature")
    })
  })
}
