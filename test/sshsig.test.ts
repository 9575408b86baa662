/**
 * SSHSIG verifier against real ssh-keygen output (test/fixtures/sshsig) and the negatives of
 * reference/sshsig.md, each also run through `ssh-keygen -Y check-novalidate` to prove we agree
 * with OpenSSH, or differ exactly where the module header says we do.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import { spawnSync } from "node:child_process"
import { join } from "node:path"
import { parsePublicKeyLine, sshFingerprint, type SshsigErrorKind, strictBase64 } from "../src/schema/sshkeys.js"
import {
  dearmor,
  FELHOM_OP_NAMESPACE,
  parsePublicKeyBlob,
  parseSignatureBlob,
  signedData,
  SSHSIG_MAX_ARMOR_BYTES,
  SshsigError,
  verifyArmored,
  verifySignatureBlob
} from "../src/schema/sshsig.js"
import {
  FIXTURE_DIR,
  manifest,
  opensshVersion,
  readMessage,
  readPub,
  readSig,
  sshKeygenAccepts,
  sshKeygenAvailable
} from "./fixtures/sshsig/fixtures.js"
import { armor, keyFromPrivate, makeKey, mpint, signSshsig, sshsigBlob, sshString, u32 } from "./sshsig-sign.js"

const NS = FELHOM_OP_NAMESPACE

const left = <A>(e: Either.Either<A, SshsigError>, kind?: SshsigErrorKind, match?: RegExp): SshsigError => {
  if (Either.isRight(e)) throw new Error(`expected a ${kind ?? "SshsigError"}, got success`)
  expect(e.left).toBeInstanceOf(SshsigError)
  if (kind !== undefined) expect(e.left.kind, e.left.message).toBe(kind)
  if (match !== undefined) expect(e.left.message).toMatch(match)
  return e.left
}
const right = <A>(e: Either.Either<A, SshsigError>): A => {
  if (Either.isLeft(e)) throw new Error(`expected success, got ${e.left.kind}: ${e.left.message}`)
  return e.right
}

// ---------------------------------------------------------------------------------------------
// Building blocks for the negatives: fixture blobs taken apart and put back together

const fixture = (sig: string) => {
  const armored = readSig(sig)
  const blob = right(dearmor(armored))
  return { armored, blob, parsed: right(parseSignatureBlob(blob)) }
}
const ed = fixture("ed25519.text.sha512.sig")
const edFile = fixture("ed25519.text.file.sig")
const ecdsa = fixture("ecdsa256.text.sha512.sig")
const text = readMessage("text.txt")
const lines = ed.armored.split("\n")

type Parsed = typeof ed.parsed
const rebuild = (p: Parsed, o: Partial<{ version: number; namespace: string; reserved: Uint8Array; hashAlgorithm: string; signature: Uint8Array; trailing: Uint8Array }> = {}) =>
  armor(sshsigBlob({
    version: o.version ?? p.version,
    publicKey: p.publicKey,
    namespace: o.namespace ?? p.namespace,
    reserved: o.reserved ?? p.reserved,
    hashAlgorithm: o.hashAlgorithm ?? p.hashAlgorithm,
    signature: o.signature ?? p.signature,
    ...(o.trailing ? { trailing: o.trailing } : {})
  }))

/** Splits an inner signature blob into its top-level strings plus whatever follows them. */
const strings = (b: Uint8Array, count: number) => {
  const buf = Buffer.from(b)
  const out: Array<Buffer> = []
  let o = 0
  for (let i = 0; i < count; i++) {
    const n = buf.readUInt32BE(o)
    out.push(buf.subarray(o + 4, o + 4 + n))
    o += 4 + n
  }
  return { parts: out, rest: buf.subarray(o) }
}

/** The same Ed25519 signature with S replaced by S + L (the group order): non-canonical. */
const malleate = (inner: Uint8Array) => {
  const { parts: [type, sig] } = strings(inner, 2)
  const L = (1n << 252n) + 27742317777372353535851937790883648493n
  const s = BigInt("0x" + Buffer.from(sig!.subarray(32)).reverse().toString("hex")) + L
  const sBytes = Buffer.from(s.toString(16).padStart(64, "0"), "hex").reverse()
  return Buffer.concat([sshString(type!), sshString(Buffer.concat([sig!.subarray(0, 32), sBytes]))])
}

const nodeEd = makeKey("ssh-ed25519")
const nodeRsa = makeKey("ssh-rsa", { bits: 2048 })

/** A node-made RSA signature whose s starts with 0x00, re-encoded one byte short (OpenSSH pads it). */
const shortRsaSignature = () => {
  for (let i = 0; i < 5000; i++) {
    const message = Buffer.from(`short s ${i}`)
    const sig = signSshsig({ message, namespace: NS, key: nodeRsa })
    const p = right(parseSignatureBlob(right(dearmor(sig))))
    const { parts: [type, s] } = strings(p.signature, 2)
    if (s !== undefined && type !== undefined && s[0] === 0) {
      return { armored: rebuild(p, { signature: Buffer.concat([sshString(type), sshString(s.subarray(1))]) }), message }
    }
  }
  throw new Error("no RSA signature with a leading zero byte in 5000 tries")
}
const shortRsa = shortRsaSignature()

interface Case {
  readonly name: string
  readonly armored: string | Uint8Array
  readonly message: Uint8Array
  readonly namespace?: string
  readonly ours: "valid" | SshsigErrorKind
  readonly match?: RegExp
  /** Where ssh-keygen deliberately differs from us (module header of src/schema/sshsig.ts). */
  readonly sshKeygen?: { readonly accepts: boolean; readonly why: string } | "skip"
}

const crlfAccepted = opensshVersion === undefined ? undefined : opensshVersion[0] > 9 || (opensshVersion[0] === 9 && opensshVersion[1] >= 5)

const cases: ReadonlyArray<Case> = [
  // armor (reference §2)
  { name: "junk '*' inside the base64", armored: ed.armored.replace(lines[1]!, lines[1]!.slice(0, 10) + "*" + lines[1]!.slice(10)), message: text, ours: "Malformed", match: /strict base64/ },
  { name: "junk '!' inside the base64", armored: ed.armored.replace(lines[2]!, "!" + lines[2]!), message: text, ours: "Malformed", match: /strict base64/ },
  { name: "a non-ASCII byte inside the base64", armored: Buffer.concat([Buffer.from(lines.slice(0, 2).join("\n")), Buffer.of(0xc3, 0xa9), Buffer.from("\n" + lines.slice(2).join("\n"))]), message: text, ours: "Malformed" },
  { name: "missing END line", armored: lines.filter((l) => !l.startsWith("-----END")).join("\n"), message: text, ours: "Malformed", match: /missing END/ },
  { name: "leading whitespace", armored: " " + ed.armored, message: text, ours: "Malformed", match: /byte 0/ },
  { name: "leading text", armored: "Signature:\n" + ed.armored, message: text, ours: "Malformed", match: /byte 0/ },
  { name: "BEGIN line without its newline", armored: ed.armored.replace("-----\n", "----- "), message: text, ours: "Malformed" },
  { name: "END line not at the start of a line", armored: ed.armored.replace("\n-----END", " -----END"), message: text, ours: "Malformed", match: /missing END/ },
  { name: "re-wrapped at 64 columns", armored: armor(ed.blob, 64), message: text, ours: "valid" },
  { name: "all on one line", armored: armor(ed.blob, 100000), message: text, ours: "valid" },
  { name: "text after the END line is ignored", armored: ed.armored + "trailing words\n", message: text, ours: "valid" },
  {
    name: "CR LF line endings",
    armored: ed.armored.replaceAll("\n", "\r\n"),
    message: text,
    ours: "valid",
    sshKeygen: crlfAccepted === undefined ? "skip" : { accepts: crlfAccepted, why: "OpenSSH accepts CR LF only from 9.5" }
  },
  {
    name: "armor over the 16 KiB cap",
    armored: ed.armored.replace("\n-----END", "\n" + " ".repeat(SSHSIG_MAX_ARMOR_BYTES) + "\n-----END"),
    message: text,
    ours: "Malformed",
    match: /larger than/,
    sshKeygen: { accepts: true, why: "OpenSSH has no size cap" }
  },
  // blob (reference §3)
  { name: "trailing byte after the blob", armored: rebuild(ed.parsed, { trailing: Uint8Array.of(0) }), message: text, ours: "Malformed", match: /trailing/ },
  { name: "version 2", armored: rebuild(ed.parsed, { version: 2 }), message: text, ours: "Malformed", match: /version 2/ },
  { name: "version 0", armored: rebuild(ed.parsed, { version: 0 }), message: text, ours: "Malformed", match: /version 0/, sshKeygen: { accepts: true, why: "OpenSSH accepts version 0, which nothing produces" } },
  { name: "empty namespace field", armored: rebuild(ed.parsed, { namespace: "" }), message: text, ours: "Malformed", match: /empty namespace/ },
  { name: "NUL inside the namespace field", armored: rebuild(ed.parsed, { namespace: "felhom\0op-v1" }), message: text, ours: "Malformed", match: /NUL/ },
  {
    name: "trailing NUL on the namespace field",
    armored: rebuild(ed.parsed, { namespace: NS + "\0" }),
    message: text,
    ours: "Malformed",
    match: /NUL/,
    sshKeygen: { accepts: true, why: "sshbuf_get_cstring allows one NUL at the very end" }
  },
  {
    name: "trailing NUL on the hash algorithm field",
    armored: rebuild(ed.parsed, { hashAlgorithm: "sha512\0" }),
    message: text,
    ours: "Malformed",
    match: /NUL/,
    sshKeygen: { accepts: true, why: "sshbuf_get_cstring allows one NUL at the very end" }
  },
  { name: "non-empty reserved field (not signed; OpenSSH ignores it)", armored: rebuild(ed.parsed, { reserved: Buffer.from("x") }), message: text, ours: "valid" },
  { name: "magic changed", armored: armor(Buffer.concat([Buffer.from("SSHSIH"), ed.blob.subarray(6)])), message: text, ours: "Malformed", match: /magic/ },
  { name: "truncated blob", armored: armor(ed.blob.subarray(0, ed.blob.length - 10)), message: text, ours: "Malformed", match: /truncated/ },
  // namespace and signed data (reference §4)
  { name: "'file' signature checked as felhom-op-v1", armored: edFile.armored, message: text, ours: "Namespace" },
  { name: "'file' signature relabelled felhom-op-v1", armored: rebuild(edFile.parsed, { namespace: NS }), message: text, ours: "BadSignature" },
  { name: "hash algorithm rewritten sha512 → sha256", armored: rebuild(ed.parsed, { hashAlgorithm: "sha256" }), message: text, ours: "BadSignature" },
  { name: "message without its trailing newline", armored: ed.armored, message: text.subarray(0, text.length - 1), ours: "BadSignature" },
  { name: "message with an extra trailing newline", armored: ed.armored, message: Buffer.concat([text, Buffer.from("\n")]), ours: "BadSignature" },
  { name: "message with CR LF", armored: ed.armored, message: Buffer.from(Buffer.from(text).toString().replace("\n", "\r\n")), ours: "BadSignature" },
  // hash algorithms (reference §5): otherwise-correct signatures over sha384 / sha1
  { name: "sha384 SSHSIG hash", armored: signSshsig({ message: text, namespace: NS, key: nodeEd, hashAlgorithm: "sha384" }), message: text, ours: "Malformed", match: /unsupported hash algorithm "sha384"/ },
  { name: "sha1 SSHSIG hash", armored: signSshsig({ message: text, namespace: NS, key: nodeEd, hashAlgorithm: "sha1" }), message: text, ours: "Malformed", match: /unsupported hash algorithm "sha1"/ },
  { name: "SHA512 (wrong case) SSHSIG hash", armored: signSshsig({ message: text, namespace: NS, key: nodeEd, hashAlgorithm: "SHA512" }), message: text, ours: "Malformed", match: /unsupported hash/ },
  // signature types (reference §6)
  { name: "ed25519 key with sigtype ssh-rsa", armored: signSshsig({ message: text, namespace: NS, key: nodeEd, sigType: "ssh-rsa" }), message: text, ours: "BadSignature", match: /does not match the key type/ },
  {
    name: "ed25519 signature malleated to S + L",
    armored: rebuild(ed.parsed, { signature: malleate(ed.parsed.signature) }),
    message: text,
    ours: "BadSignature",
    sshKeygen: { accepts: true, why: "OpenSSH 9.2's bundled ref10 Ed25519 does not check S < L; OpenSSL does" }
  },
  {
    name: "ed25519 signature of 65 bytes",
    armored: rebuild(ed.parsed, { signature: (() => { const { parts: [t, s] } = strings(ed.parsed.signature, 2); return Buffer.concat([sshString(t!), sshString(Buffer.concat([s!, Buffer.of(0)]))]) })() }),
    message: text,
    ours: "Malformed",
    match: /65 bytes/
  },
  { name: "ed25519 signature blob with a trailing byte", armored: rebuild(ed.parsed, { signature: Buffer.concat([ed.parsed.signature, Buffer.of(0)]) }), message: text, ours: "Malformed", match: /trailing/ },
  {
    name: "ECDSA r/s sub-blob with a trailing byte",
    armored: rebuild(ecdsa.parsed, { signature: (() => { const { parts: [t, rs] } = strings(ecdsa.parsed.signature, 2); return Buffer.concat([sshString(t!), sshString(Buffer.concat([rs!, Buffer.of(0)]))]) })() }),
    message: text,
    ours: "Malformed",
    match: /trailing/
  },
  { name: "ECDSA signature blob with a trailing byte", armored: rebuild(ecdsa.parsed, { signature: Buffer.concat([ecdsa.parsed.signature, Buffer.of(0)]) }), message: text, ours: "Malformed", match: /trailing/ },
  {
    name: "ECDSA r replaced by a negative mpint",
    armored: rebuild(ecdsa.parsed, { signature: (() => { const { parts: [t, rs] } = strings(ecdsa.parsed.signature, 2); const { parts: [, s] } = strings(rs!, 2); return Buffer.concat([sshString(t!), sshString(Buffer.concat([sshString(Buffer.of(0x80, 1)), sshString(s!)]))]) })() }),
    message: text,
    ours: "Malformed",
    match: /negative/
  },
  { name: "legacy ssh-rsa (SHA-1) signature, mathematically valid", armored: signSshsig({ message: text, namespace: NS, key: nodeRsa, sigType: "ssh-rsa" }), message: text, ours: "BadSignature", match: /legacy ssh-rsa/ },
  { name: "rsa-sha2-256 with hashalg sha256 (OpenSSH >= 10 pairing)", armored: signSshsig({ message: text, namespace: NS, key: nodeRsa, sigType: "rsa-sha2-256", hashAlgorithm: "sha256" }), message: text, ours: "valid" },
  { name: "rsa-sha2-256 with hashalg sha512", armored: signSshsig({ message: text, namespace: NS, key: nodeRsa, sigType: "rsa-sha2-256" }), message: text, ours: "valid" },
  { name: "RSA s one byte short (left-padded, as OpenSSH does)", armored: shortRsa.armored, message: shortRsa.message, ours: "valid" },
  {
    name: "RSA s longer than the modulus",
    armored: signSshsig({ message: text, namespace: NS, key: nodeRsa, mapInner: (inner) => { const { parts: [t, s] } = strings(inner, 2); return Buffer.concat([sshString(t!), sshString(Buffer.concat([Buffer.of(0), s!]))]) } }),
    message: text,
    ours: "BadSignature",
    match: /longer than the modulus/
  },
  { name: "RSA signature type rsa-sha2-384", armored: signSshsig({ message: text, namespace: NS, key: nodeRsa, sigType: "rsa-sha2-384" }), message: text, ours: "BadSignature", match: /unsupported RSA signature algorithm/ },
  // keys
  { name: "certificate key (ssh-keygen signed with a cert)", armored: readSig("ed25519-cert.text.sha512.sig"), message: text, ours: "UnsupportedKey", match: /certificate/, sshKeygen: { accepts: true, why: "felhom pins plain keys only" } },
  { name: "RSA 1024-bit key", armored: readSig("rsa1024.text.sha512.sig"), message: text, ours: "UnsupportedKey", match: /1024 bits/, sshKeygen: { accepts: true, why: "OpenSSH's floor is 1024 bits, ours 2048" } }
]

describe("committed ssh-keygen fixtures", () => {
  it("covers every key type, message and hash", () => {
    expect(manifest.fixtures.length).toBe(37)
    expect(manifest.generator).toMatch(/OpenSSH/)
  })

  for (const f of manifest.fixtures) {
    it(`${f.sig} → ${f.expect}`, () => {
      const message = readMessage(f.message)
      const result = verifyArmored(readSig(f.sig), f.namespace, message)
      if (f.expect !== "valid") {
        left(result, f.expect)
        return
      }
      const ok = right(result)
      const pub = right(parsePublicKeyLine(readPub(f.key)))
      expect(ok.key.fingerprint).toBe(pub.key.fingerprint)
      expect(ok.hashAlgorithm).toBe(f.hash)
      expect(ok.namespace).toBe(f.namespace)
      // pinned to the .pub key, and through the Authz-order pipeline
      right(verifyArmored(readSig(f.sig), f.namespace, message, { publicKey: pub.key }))
      const sig = right(parseSignatureBlob(right(dearmor(readSig(f.sig)))))
      right(verifySignatureBlob(sig, right(parsePublicKeyBlob(sig.publicKey)), f.namespace, message))
      // a signature for one namespace is never valid for another
      left(verifyArmored(readSig(f.sig), f.namespace === NS ? "file" : NS, message), "Namespace")
    })
  }

  it.runIf(sshKeygenAvailable)("ssh-keygen -Y check-novalidate accepts every fixture (the refused keys included)", () => {
    for (const f of manifest.fixtures) {
      expect(sshKeygenAccepts(readSig(f.sig), f.namespace, readMessage(f.message)), f.sig).toBe(true)
    }
  })

  it.runIf(sshKeygenAvailable)("fingerprints match ssh-keygen -l", () => {
    for (const k of ["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa3072"]) {
      const out = spawnSync("ssh-keygen", ["-l", "-f", join(FIXTURE_DIR, "keys", `${k}.pub`)], { encoding: "utf8" }).stdout
      expect(out.split(" ")[1]).toBe(right(parsePublicKeyLine(readPub(`${k}.pub`))).key.fingerprint)
    }
  })
})

describe("negatives and edge cases (reference/sshsig.md)", () => {
  for (const c of cases) {
    it(`${c.name} → ${c.ours}`, () => {
      const result = verifyArmored(c.armored, c.namespace ?? NS, c.message)
      if (c.ours === "valid") right(result)
      else left(result, c.ours, c.match)
    })
  }

  it.runIf(sshKeygenAvailable)("ssh-keygen -Y check-novalidate agrees, except where documented", () => {
    const disagreements: Array<string> = []
    for (const c of cases) {
      if (c.sshKeygen === "skip") continue
      const expected = c.sshKeygen?.accepts ?? c.ours === "valid"
      if (sshKeygenAccepts(c.armored, c.namespace ?? NS, c.message) !== expected) disagreements.push(c.name)
    }
    expect(disagreements).toEqual([])
  })
})

describe("pipeline pieces", () => {
  it("parseSignatureBlob does not judge the namespace; verifySignatureBlob does (kind Namespace)", () => {
    expect(edFile.parsed.namespace).toBe("file")
    const key = right(parsePublicKeyBlob(edFile.parsed.publicKey))
    left(verifySignatureBlob(edFile.parsed, key, NS, text), "Namespace", /"file" is not the expected "felhom-op-v1"/)
    right(verifySignatureBlob(edFile.parsed, key, "file", text))
  })

  it("verifySignatureBlob signs over the expected namespace, not the blob's field", () => {
    const relabelled = { ...edFile.parsed, namespace: NS }
    left(verifySignatureBlob(relabelled, right(parsePublicKeyBlob(relabelled.publicKey)), NS, text), "BadSignature")
  })

  it("verifySignatureBlob refuses a key other than the embedded one", () => {
    const other = right(parsePublicKeyLine(readPub("ecdsa256.pub"))).key
    left(verifySignatureBlob(ed.parsed, other, NS, text), "BadSignature", /different public key/)
  })

  it("verifyArmored with a pinned key requires the embedded key to be that key", () => {
    const other = right(parsePublicKeyLine(readPub("ecdsa256.pub"))).key
    left(verifyArmored(ed.armored, NS, text, { publicKey: other }), "BadSignature", /not by the given key SHA256:/)
  })

  it("signedData is the 104-byte layout of reference §4", () => {
    const data = signedData(NS, "sha512", text)
    expect(data.length).toBe(104)
    expect(Buffer.from(data.subarray(0, 36)).toString("hex")).toBe(
      "535348534947" + "0000000c" + Buffer.from(NS).toString("hex") + "00000000" + "00000006" + Buffer.from("sha512").toString("hex")
    )
    expect(Buffer.from(data.subarray(36, 40)).toString("hex")).toBe("00000040")
    expect(signedData(NS, "sha256", text).length).toBe(72)
  })

  it("dearmor takes bytes as well as text and refuses oversized input before decoding", () => {
    expect(right(dearmor(Buffer.from(ed.armored)))).toEqual(ed.blob)
    left(dearmor(Buffer.alloc(SSHSIG_MAX_ARMOR_BYTES + 1, 0x41)), "Malformed", /larger than 16384 bytes/)
    left(dearmor("é".repeat(SSHSIG_MAX_ARMOR_BYTES / 2 + 1)), "Malformed", /larger than/)
  })

  it("strict base64: no junk, no missing padding, no non-zero pad bits", () => {
    const wrap = (body: string) => `-----BEGIN SSH SIGNATURE-----\n${body}\n-----END SSH SIGNATURE-----\n`
    expect(Buffer.from(right(dearmor(wrap("AA==")))).toString("hex")).toBe("00")
    left(dearmor(wrap("AB==")), "Malformed", /non-canonical/)
    left(dearmor(wrap("AA")), "Malformed", /strict base64/)
    left(dearmor(wrap("AA=A")), "Malformed", /strict base64/)
    left(dearmor(wrap("AA\vA=")), "Malformed", /strict base64/)
    left(dearmor(wrap("AAA-")), "Malformed", /strict base64/) // base64url is not base64
    left(strictBase64("A===", "x"), "Malformed")
  })

  it("error messages never echo large input", () => {
    const huge = "n".repeat(5000)
    const e = left(verifyArmored(rebuild(ed.parsed, { namespace: huge }), NS, text), "Namespace")
    expect(e.message.length).toBeLessThan(200)
    const e2 = left(parsePublicKeyBlob(sshString("x".repeat(5000))), "UnsupportedKey")
    expect(e2.message.length).toBeLessThan(200)
  })
})

describe("public keys", () => {
  const edPub = right(parsePublicKeyLine(readPub("ed25519.pub")))
  const ecPub = right(parsePublicKeyLine(readPub("ecdsa256.pub")))
  const [, , ecPoint] = strings(strings(ecPub.key.blob, 0).rest, 3).parts

  it("parses the fixture .pub lines with comment, bits and fingerprint", () => {
    expect(edPub.comment).toBe("felhom-test-ed25519")
    expect(edPub.key.type).toBe("ssh-ed25519")
    expect(edPub.key.fingerprint).toBe(sshFingerprint(edPub.key.blob))
    expect(right(parsePublicKeyLine(readPub("rsa3072.pub"))).key.bits).toBe(3072)
    expect(right(parsePublicKeyLine(readPub("ecdsa521.pub"))).key.bits).toBe(521)
  })

  it("key lines: whitespace, no comment, CR LF; and what is refused", () => {
    const [type, b64] = readPub("ed25519.pub").split(" ")
    expect(right(parsePublicKeyLine(`  ${type}\t${b64}\r\n`)).comment).toBe("")
    expect(right(parsePublicKeyLine(`${type} ${b64} two words`)).comment).toBe("two words")
    left(parsePublicKeyLine(`ssh-rsa ${b64}`), "Malformed", /does not match the key \(ssh-ed25519\)/)
    left(parsePublicKeyLine(`restrict ${type} ${b64}`), "Malformed", /options prefixes/)
    left(parsePublicKeyLine(`${type} ${b64!.slice(0, 20)}*${b64!.slice(20)}`), "Malformed", /strict base64/)
    left(parsePublicKeyLine(`${type} ${b64}\n${type} ${b64}`), "Malformed", /single line/)
    left(parsePublicKeyLine(`${type}`), "Malformed")
    left(parsePublicKeyLine(""), "Malformed")
    left(parsePublicKeyLine(readPub("ed25519-cert.pub")), "UnsupportedKey", /certificate/)
    left(parsePublicKeyLine(readPub("rsa1024.pub")), "UnsupportedKey", /below the 2048-bit floor/)
  })

  it("key blobs: unknown types, trailing bytes, bad sizes, curves and points", () => {
    left(parsePublicKeyBlob(Buffer.concat([sshString("ssh-dss"), mpint(Buffer.of(1))])), "UnsupportedKey", /"ssh-dss" is not supported/)
    left(parsePublicKeyBlob(new Uint8Array(0)), "Malformed", /truncated/)
    left(parsePublicKeyBlob(Buffer.concat([edPub.key.blob, Buffer.of(0)])), "Malformed", /trailing/)
    left(parsePublicKeyBlob(Buffer.concat([sshString("ssh-ed25519"), sshString(Buffer.alloc(31))])), "Malformed", /31 bytes/)
    left(parsePublicKeyBlob(Buffer.concat([sshString("ssh-ed25519\0"), sshString(Buffer.alloc(32))])), "Malformed", /NUL/)
    const ec = (type: string, curve: string, q: Uint8Array) => Buffer.concat([sshString(type), sshString(curve), sshString(q)])
    right(parsePublicKeyBlob(ec("ecdsa-sha2-nistp256", "nistp256", ecPoint!)))
    left(parsePublicKeyBlob(ec("ecdsa-sha2-nistp256", "nistp384", ecPoint!)), "Malformed", /curve/)
    const offCurve = Buffer.from(ecPoint!)
    offCurve[offCurve.length - 1]! ^= 1
    left(parsePublicKeyBlob(ec("ecdsa-sha2-nistp256", "nistp256", offCurve)), "Malformed", /rejected the key material/)
    const compressed = Buffer.concat([Buffer.of(2 + ((ecPoint![64] ?? 0) & 1)), ecPoint!.subarray(1, 33)])
    left(parsePublicKeyBlob(ec("ecdsa-sha2-nistp256", "nistp256", compressed)), "Malformed", /uncompressed/)
    left(parsePublicKeyBlob(Buffer.concat([sshString("sk-ecdsa-sha2-nistp256@openssh.com"), sshString("nistp256"), sshString(ecPoint!)])), "Malformed", /truncated application/)
  })

  it("RSA keys: floor, exponent, and 0x00-prefixed mpints", () => {
    const k = makeKey("ssh-rsa", { bits: 2048 })
    const parsed = right(parsePublicKeyBlob(k.publicKey.blob))
    expect(parsed.bits).toBe(2048)
    const { parts: [, , n] } = strings(k.publicKey.blob, 3)
    const rsa = (e: Uint8Array) => Buffer.concat([sshString("ssh-rsa"), sshString(e), sshString(n!)])
    left(parsePublicKeyBlob(rsa(Buffer.of(0x01, 0x00, 0x00))), "Malformed", /exponent/)
    left(parsePublicKeyBlob(rsa(Buffer.of(1))), "Malformed", /exponent/)
    left(parsePublicKeyBlob(rsa(Buffer.of(0x81))), "Malformed", /negative/)
    // a redundant leading zero is trimmed, as OpenSSH does (and the blob keeps its own bytes)
    right(parsePublicKeyBlob(rsa(Buffer.of(0, 0, 1, 0, 1))))
    const small = keyFromPrivate("ssh-rsa", makeKey("ssh-rsa", { bits: 1024 }).privateKey)
    left(parsePublicKeyBlob(small.publicKey.blob), "UnsupportedKey", /1024 bits/)
    left(parsePublicKeyBlob(Buffer.concat([sshString("ssh-rsa"), mpint(Buffer.of(1, 0, 1)), u32(0)])), "UnsupportedKey", /0 bits/)
  })
})
