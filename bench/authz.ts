/**
 * Authz throughput for ed25519 and ecdsa-p256 against a bare crypto.verify in the same run
 * (paired blocks in CPU time after a warm-up of both, bench/table.ts): `check` (every stage,
 * nonce only read), `verify` committing the nonce in memory, and to the real file (WAL,
 * synchronous=FULL; the one fsync is the physical floor). Then the nonce commit latency.
 */
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import * as crypto from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { make as makeAuthz, parseSigners } from "../src/layers/Authz.js"
import { layerAt } from "../src/layers/Database.js"
import { OP_NAMESPACE } from "../src/schema/op.js"
import { makeKey, signSshsig, sshsigSignedData, type TestKey } from "../test/sshsig-sign.js"
import { pairedRateEffect, perSec, printTable, type Row, row } from "./table.js"

const HOST = "host-bench"
const ROUNDS = 31
const PER_BLOCK = 50

const signedOp = (key: TestKey) => {
  const blob = new TextEncoder().encode(JSON.stringify({
    op: "decommission", host_id: HOST, guest_id: 105, params: {}, nonce: crypto.randomBytes(32).toString("base64url"),
    expires_at: new Date(Date.now() + 3_600_000).toISOString(), key_id: "bench"
  }))
  return { blob, signature: signSshsig({ message: blob, namespace: OP_NAMESPACE, key }) }
}

/** The baseline: one crypto.verify over SSHSIG signed data, key imported once (cycling over a few inputs). */
const rawVerify = (key: TestKey): (() => void) => {
  const pub = crypto.createPublicKey(key.privateKey)
  const msgs = Array.from({ length: 16 }, (_, i) => sshsigSignedData(OP_NAMESPACE, "sha512", Buffer.from(`message ${i}`)))
  const sigs = msgs.map((m) => key.type === "ssh-ed25519" ? crypto.sign(null, m, key.privateKey) : crypto.sign("sha256", m, key.privateKey))
  let i = 0
  return () => {
    const k = i++ % msgs.length
    const ok = key.type === "ssh-ed25519" ? crypto.verify(null, msgs[k]!, pub, sigs[k]!) : crypto.verify("sha256", msgs[k]!, pub, sigs[k]!)
    if (!ok) throw new Error("baseline does not verify")
  }
}

/**
 * `stage`: "check" runs every stage and only reads the nonce; "verify" also records it (a
 * transaction on the nonce table: in memory, or the real file with WAL and synchronous=FULL).
 * Each call gets a fresh signed op (verify refuses a replay); they are signed beforehand.
 */
const pipeline = (key: TestKey, filename: string, stage: "check" | "verify") =>
  Effect.gen(function*() {
    const signers = yield* parseSigners([`role=operational,key-id=bench ${key.publicKey.line}`])
    const authz = yield* makeAuthz({ hostId: HOST, signers, clockSkewSeconds: 60 })
    const ops = Array.from({ length: (ROUNDS + 3) * PER_BLOCK }, () => signedOp(key))
    let i = 0
    const one = Effect.suspend(() => authz[stage](ops[i++ % ops.length]!)).pipe(Effect.asVoid)
    return yield* pairedRateEffect(one, rawVerify(key), { rounds: ROUNDS, perBlock: PER_BLOCK })
  }).pipe(Effect.provide(layerAt(filename)))

const commitLatencies = (filename: string, n: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const times: Array<number> = []
    for (let i = 0; i < n; i++) {
      const nonce = crypto.randomBytes(32).toString("base64url")
      const t0 = performance.now()
      yield* sql`INSERT INTO nonces (nonce, signer_fingerprint, op, expires_at_ms, recorded_at_ms)
                 VALUES (${nonce}, ${"SHA256:x"}, ${"bench"}, ${Date.now() + 3_600_000}, ${Date.now()})`.pipe(sql.withTransaction)
      times.push(performance.now() - t0)
    }
    times.sort((a, b) => a - b)
    return { median: times[Math.floor(n / 2)]!, p99: times[Math.floor(n * 0.99)]! }
  }).pipe(Effect.provide(layerAt(filename)))

export const authzBench = Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "felhom-bench-"))
  const rows: Array<Row> = []
  // Warm-up: one discarded run of each pipeline for both key types, so the Effect runtime and the
  // SQL path are JIT-compiled before anything is timed (else the first key type measured pays it).
  for (const type of ["ssh-ed25519", "ecdsa-sha2-nistp256"] as const) {
    yield* pipeline(makeKey(type), ":memory:", "check")
    yield* pipeline(makeKey(type), ":memory:", "verify")
  }
  for (const [type, label] of [["ssh-ed25519", "ed25519"], ["ecdsa-sha2-nistp256", "P-256"]] as const) {
    const key = makeKey(type)
    const check = yield* pipeline(key, ":memory:", "check")
    rows.push(row({
      metric: `Authz.check (every stage, no durable commit), ${label}`,
      ours: perSec(check.oursPerSec),
      baseline: `${perSec(check.basePerSec)} raw crypto.verify`,
      ratio: check.ratio,
      goal: "≥ 0.3×"
    }))
    const mem = yield* pipeline(key, ":memory:", "verify")
    rows.push(row({
      metric: `Authz.verify, nonce committed in memory, ${label}`,
      ours: perSec(mem.oursPerSec),
      baseline: `${perSec(mem.basePerSec)} raw crypto.verify`,
      ratio: mem.ratio,
      goal: "—"
    }))
    const file = yield* pipeline(key, join(dir, `${type}.db`), "verify")
    rows.push(row({
      metric: `Authz.verify, nonce committed to the file (WAL, synchronous=FULL), ${label}`,
      ours: perSec(file.oursPerSec),
      baseline: `${perSec(file.basePerSec)} raw crypto.verify`,
      ratio: file.ratio,
      goal: "—"
    }))
  }
  const mem = yield* commitLatencies(":memory:", 400)
  const full = yield* commitLatencies(join(dir, "latency.db"), 400)
  rows.push(row({
    metric: "nonce commit latency, file synchronous=FULL (median; p99 in ours)",
    ours: `${full.median.toFixed(3)} ms (p99 ${full.p99.toFixed(3)})`,
    baseline: `${mem.median.toFixed(3)} ms in memory`,
    ratio: full.median / mem.median,
    goal: "—"
  }))
  rmSync(dir, { recursive: true, force: true })
  return rows
})

if (process.argv[1] === fileURLToPath(import.meta.url)) void Effect.runPromise(authzBench).then((rows) => printTable("authz", rows))
