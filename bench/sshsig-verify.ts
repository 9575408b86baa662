/**
 * SSHSIG verification cost: our full path (dearmor + blob/key parse + verifySignatureBlob) and
 * verifySignatureBlob alone, against a bare crypto.verify over the same signed data with a key
 * imported once. Inputs are the committed ssh-keygen fixtures (ed25519, ecdsa-p256). Paired
 * blocks in CPU time (bench/table.ts); ratio = our verifications per second ÷ raw's.
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
import { pairedRate, perSec, printTable, type Row, row } from "./table.js"

const fixture = (name: string) => readFileSync(new URL(`../test/fixtures/sshsig/${name}`, import.meta.url))

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

export const sshsigBench = (): ReadonlyArray<Row> => {
  const message = fixture("messages/op.json")
  const rows: Array<Row> = []
  for (const [label, file, ecdsa] of [["ed25519", "ed25519.op.sha512.sig", false], ["P-256", "ecdsa256.op.sha512.sig", true]] as const) {
    const armored = fixture(`sigs/${file}`).toString("utf8")
    const sig = Either.getOrThrow(parseSignatureBlob(Either.getOrThrow(dearmor(armored))))
    const key = Either.getOrThrow(parsePublicKeyBlob(sig.publicKey))
    const data = signedData(FELHOM_OP_NAMESPACE, sig.hashAlgorithm, message)
    const rawSig = rawSignature(sig.signature, ecdsa)
    const rawKey = key.key
    const must = (ok: boolean) => {
      if (!ok) throw new Error("benchmark input does not verify")
    }
    const raw = () => must(ecdsa
      ? crypto.verify("sha256", data, { key: rawKey, dsaEncoding: "ieee-p1363" }, rawSig)
      : crypto.verify(null, data, rawKey, rawSig))
    const fullPath = () => {
      const s = Either.getOrThrow(parseSignatureBlob(Either.getOrThrow(dearmor(armored))))
      const k = Either.getOrThrow(parsePublicKeyBlob(s.publicKey))
      must(Either.isRight(verifySignatureBlob(s, k, FELHOM_OP_NAMESPACE, message)))
    }
    const verifyOnly = () => must(Either.isRight(verifySignatureBlob(sig, key, FELHOM_OP_NAMESPACE, message)))
    const full = pairedRate(fullPath, raw)
    rows.push(row({
      metric: `SSHSIG dearmor+parse+verify, ${label} (verifications per CPU s)`,
      ours: perSec(full.oursPerSec),
      baseline: `${perSec(full.basePerSec)} raw crypto.verify`,
      ratio: full.ratio,
      goal: "≥ 0.8×"
    }))
    const only = pairedRate(verifyOnly, raw)
    rows.push(row({
      metric: `SSHSIG verifySignatureBlob alone, ${label}`,
      ours: perSec(only.oursPerSec),
      baseline: `${perSec(only.basePerSec)} raw crypto.verify`,
      ratio: only.ratio,
      goal: "—"
    }))
  }
  return rows
}

if (process.argv[1] === fileURLToPath(import.meta.url)) printTable("sshsig verify", sshsigBench())
