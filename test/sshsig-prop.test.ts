/**
 * Properties: mutated signatures never verify and nothing ever throws. Every outcome is either
 * success or an SshsigError value, and never the "internal error" safety net (which would mean
 * some code path threw and was only caught by the guard).
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck } from "effect"
import {
  dearmor,
  FELHOM_OP_NAMESPACE,
  parsePublicKeyBlob,
  parsePublicKeyLine,
  parseSignatureBlob,
  SshsigError,
  verifyArmored,
  verifySignatureBlob
} from "../src/schema/sshsig.js"
import { readMessage, readSig } from "./fixtures/sshsig/fixtures.js"
import { armor, makeKey, signSshsig, sshString } from "./sshsig-sign.js"

const NS = FELHOM_OP_NAMESPACE
const text = readMessage("text.txt")
const skKey = makeKey("sk-ecdsa-sha2-nistp256@openssh.com")
const sources: ReadonlyArray<string> = [
  readSig("ed25519.text.sha512.sig"),
  readSig("ecdsa256.text.sha256.sig"),
  readSig("rsa3072.text.sha512.sig"),
  signSshsig({ message: text, namespace: NS, key: skKey })
]
const blobs = sources.map((s) => Either.getOrThrow(dearmor(s)))

/** A typed failure, never an exception and never the guard's catch-all. */
const settled = <A>(f: () => Either.Either<A, SshsigError>): Either.Either<A, SshsigError> => {
  let r: Either.Either<A, SshsigError>
  try {
    r = f()
  } catch (e) {
    throw new Error(`threw instead of returning an SshsigError: ${String(e)}`)
  }
  if (Either.isLeft(r)) {
    expect(r.left).toBeInstanceOf(SshsigError)
    expect(["Malformed", "Namespace", "UnsupportedKey", "BadSignature"]).toContain(r.left.kind)
    expect(r.left.message).not.toMatch(/internal error/)
  }
  return r
}

type Mutation =
  | { readonly op: "flip"; readonly pos: number; readonly xor: number }
  | { readonly op: "insert"; readonly pos: number; readonly byte: number }
  | { readonly op: "delete"; readonly pos: number }
  | { readonly op: "truncate"; readonly len: number }

const mutation: FastCheck.Arbitrary<Mutation> = FastCheck.oneof(
  FastCheck.record({ op: FastCheck.constant("flip" as const), pos: FastCheck.nat(), xor: FastCheck.integer({ min: 1, max: 255 }) }),
  FastCheck.record({ op: FastCheck.constant("insert" as const), pos: FastCheck.nat(), byte: FastCheck.integer({ min: 0, max: 255 }) }),
  FastCheck.record({ op: FastCheck.constant("delete" as const), pos: FastCheck.nat() }),
  FastCheck.record({ op: FastCheck.constant("truncate" as const), len: FastCheck.nat() })
)

const mutate = (input: Uint8Array, m: Mutation): Uint8Array => {
  const b = Buffer.from(input)
  if (b.length === 0) return b
  switch (m.op) {
    case "flip": {
      const p = m.pos % b.length
      b[p] = (b[p] ?? 0) ^ m.xor
      return b
    }
    case "insert": {
      const p = m.pos % (b.length + 1)
      return Buffer.concat([b.subarray(0, p), Buffer.of(m.byte), b.subarray(p)])
    }
    case "delete": {
      const p = m.pos % b.length
      return Buffer.concat([b.subarray(0, p), b.subarray(p + 1)])
    }
    case "truncate":
      return b.subarray(0, m.len % b.length)
  }
}

/**
 * An independent reading of what the armor encodes (lines between BEGIN and the first END,
 * whitespace dropped), to tell harmless armor edits (whitespace in the body, text after END)
 * from real ones.
 */
const encodedBody = (bytes: Uint8Array): string | undefined => {
  const lines = Buffer.from(bytes).toString("latin1").split("\n")
  const begin = "-----BEGIN SSH SIGNATURE-----"
  if (lines[0] !== begin && lines[0] !== `${begin}\r`) return undefined
  const end = lines.findIndex((l, i) => i > 0 && l.startsWith("-----END SSH SIGNATURE-----"))
  return end < 0 ? undefined : lines.slice(1, end).join("").replace(/[ \t\r]/g, "")
}

const pipeline = (blob: Uint8Array) =>
  Either.gen(function*() {
    const sig = yield* parseSignatureBlob(blob)
    const key = yield* parsePublicKeyBlob(sig.publicKey)
    return yield* verifySignatureBlob(sig, key, NS, text)
  })

describe("mutation properties", () => {
  it.prop(
    "mutated armor never verifies unless it still encodes the same blob",
    { source: FastCheck.integer({ min: 0, max: sources.length - 1 }), edits: FastCheck.array(mutation, { minLength: 1, maxLength: 2 }) },
    ({ edits, source }) => {
      const original = Buffer.from(sources[source]!)
      const mutated = edits.reduce<Uint8Array>(mutate, original)
      const r = settled(() => verifyArmored(mutated, NS, text))
      if (Either.isRight(r)) expect(encodedBody(mutated)).toBe(encodedBody(original))
    },
    { fastCheck: { numRuns: 400 } }
  )

  it.prop(
    "a mutated signature blob never verifies (Authz pipeline and armored)",
    { source: FastCheck.integer({ min: 0, max: blobs.length - 1 }), edit: mutation },
    ({ edit, source }) => {
      const original = blobs[source]!
      const mutated = mutate(original, edit)
      if (Buffer.from(mutated).equals(original)) return
      expect(Either.isLeft(settled(() => pipeline(mutated)))).toBe(true)
      expect(Either.isLeft(settled(() => verifyArmored(armor(mutated), NS, text)))).toBe(true)
    },
    { fastCheck: { numRuns: 400 } }
  )

  it("the unmutated sources verify (so the properties above test something)", () => {
    for (const s of sources) expect(Either.isRight(verifyArmored(s, NS, text))).toBe(true)
    for (const b of blobs) expect(Either.isRight(pipeline(b))).toBe(true)
  })
})

describe("arbitrary input never throws", () => {
  it.prop("random bytes", [FastCheck.uint8Array({ maxLength: 600 })], ([bytes]) => {
    settled(() => dearmor(bytes))
    settled(() => parseSignatureBlob(bytes))
    settled(() => parsePublicKeyBlob(bytes))
    settled(() => pipeline(Buffer.concat([Buffer.from("SSHSIG\0\0\0\x01"), bytes])))
    settled(() => verifyArmored(armor(bytes), NS, text))
  }, { fastCheck: { numRuns: 300 } })

  it.prop("random key blobs behind a known type name", [
    FastCheck.constantFrom("ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp521", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-rsa"),
    FastCheck.uint8Array({ maxLength: 300 })
  ], ([type, tail]) => {
    settled(() => parsePublicKeyBlob(Buffer.concat([sshString(type), tail])))
  }, { fastCheck: { numRuns: 300 } })

  it.prop("random strings as key lines and armor", [FastCheck.string({ maxLength: 300 })], ([s]) => {
    settled(() => parsePublicKeyLine(s))
    settled(() => parsePublicKeyLine(`ssh-ed25519 ${s}`))
    settled(() => dearmor(s))
    settled(() => dearmor(`-----BEGIN SSH SIGNATURE-----\n${s}\n-----END SSH SIGNATURE-----\n`))
  }, { fastCheck: { numRuns: 300 } })
})
