/**
 * SSHSIG verification cost: our full path (dearmor + blob/key parse + verifySignatureBlob) and
 * verifySignatureBlob alone, against a bare crypto.verify over the same signed data with a key
 * imported once. Inputs are the committed ssh-keygen fixtures (ed25519, ecdsa-p256).
 */
import { Either } from "effect"
import * as crypto from "node:crypto"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import {
  dearmor,
  FELHOM_OP_NAMESPACE,
  parsePublicKeyBlob,
  parseSignatureBlob,
  signedData,
  verifySignatureBlob
} from "../src/schema/sshsig.js"

const fixture = (name: string) => readFileSync(new URL(`../test/fixtures/sshsig/${name}`, import.meta.url))

export interface SshsigBenchRow {
  readonly keyType: string
  /** verifications per second */
  readonly raw: number
  readonly verifyOnly: number
  readonly fullPath: number
  /** raw / ours: how many times slower our path is than a bare crypto.verify */
  readonly verifyOnlyRatio: number
  readonly fullPathRatio: number
}

/** Runs `f` repeatedly for about `ms` milliseconds after a warm-up; returns calls per second. */
const rate = (f: () => boolean, ms: number): number => {
  for (let i = 0; i < 200; i++) if (!f()) throw new Error("benchmark input does not verify")
  let n = 0
  const start = performance.now()
  let now = start
  while (now - start < ms) {
    for (let i = 0; i < 100; i++) if (!f()) throw new Error("benchmark input does not verify")
    n += 100
    now = performance.now()
  }
  return (n * 1000) / (now - start)
}

/** The top-level SSH strings of `b`, in order. */
const strings = (b: Buffer): Array<Buffer> => {
  const out: Array<Buffer> = []
  for (let o = 0; o + 4 <= b.length; ) {
    const n = b.readUInt32BE(o)
    out.push(b.subarray(o + 4, o + 4 + n))
    o += 4 + n
  }
  return out
}

/** The inner signature in the form node:crypto takes (ECDSA: r || s, each 32 bytes). */
const rawSignature = (inner: Uint8Array, ecdsa: boolean): Buffer => {
  const body = strings(Buffer.from(inner))[1] ?? Buffer.alloc(0)
  if (!ecdsa) return body
  const pad = (x: Buffer) => Buffer.concat([Buffer.alloc(32), x]).subarray(-32) // drops the mpint sign byte
  return Buffer.concat(strings(body).map(pad))
}

export const sshsigBench = (ms = 1000): ReadonlyArray<SshsigBenchRow> => {
  const message = fixture("messages/op.json")
  const rows: Array<SshsigBenchRow> = []
  for (const [label, file, ecdsa] of [["ssh-ed25519", "ed25519.op.sha512.sig", false], ["ecdsa-sha2-nistp256", "ecdsa256.op.sha512.sig", true]] as const) {
    const armored = fixture(`sigs/${file}`).toString("utf8")
    const sig = Either.getOrThrow(parseSignatureBlob(Either.getOrThrow(dearmor(armored))))
    const key = Either.getOrThrow(parsePublicKeyBlob(sig.publicKey))
    const data = signedData(FELHOM_OP_NAMESPACE, sig.hashAlgorithm, message)
    const rawSig = rawSignature(sig.signature, ecdsa)
    const rawKey = key.key
    const raw = rate(() => ecdsa
      ? crypto.verify("sha256", data, { key: rawKey, dsaEncoding: "ieee-p1363" }, rawSig)
      : crypto.verify(null, data, rawKey, rawSig), ms)
    const verifyOnly = rate(() => Either.isRight(verifySignatureBlob(sig, key, FELHOM_OP_NAMESPACE, message)), ms)
    const fullPath = rate(() => {
      const s = Either.getOrThrow(parseSignatureBlob(Either.getOrThrow(dearmor(armored))))
      const k = Either.getOrThrow(parsePublicKeyBlob(s.publicKey))
      return Either.isRight(verifySignatureBlob(s, k, FELHOM_OP_NAMESPACE, message))
    }, ms)
    rows.push({ keyType: label, raw, verifyOnly, fullPath, verifyOnlyRatio: raw / verifyOnly, fullPathRatio: raw / fullPath })
  }
  console.log("sshsig verify: verifications/s, ours vs a bare crypto.verify on the same input (ratio = times slower)")
  for (const r of rows) {
    console.log(
      `  ${r.keyType.padEnd(20)} raw ${r.raw.toFixed(0).padStart(7)}/s | verifySignatureBlob ${r.verifyOnly.toFixed(0).padStart(7)}/s (${r.verifyOnlyRatio.toFixed(2)}x)` +
        ` | dearmor+parse+verify ${r.fullPath.toFixed(0).padStart(7)}/s (${r.fullPathRatio.toFixed(2)}x)`
    )
  }
  return rows
}

if (process.argv[1] === fileURLToPath(import.meta.url)) sshsigBench()
