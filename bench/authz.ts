/**
 * Authz: full-pipeline verify throughput (armor → ... → nonce commit) for ed25519 and
 * ecdsa-p256, with an in-memory nonce table and with the real file (WAL, synchronous=FULL),
 * each as a ratio to a bare crypto.verify over the same signed data in the same run.
 * Then nonce commit latency (median, p99) on the real file against the in-memory table.
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

const N = Number(process.env["BENCH_OPS"] ?? 400)
const HOST = "host-bench"

const inputs = (key: TestKey) =>
  Array.from({ length: N }, () => {
    const blob = new TextEncoder().encode(JSON.stringify({
      op: "decommission", host_id: HOST, guest_id: 105, params: {}, nonce: crypto.randomBytes(32).toString("base64url"),
      expires_at: new Date(Date.now() + 3_600_000).toISOString(), key_id: "bench"
    }))
    return { blob, signature: signSshsig({ message: blob, namespace: OP_NAMESPACE, key }) }
  })

/** The baseline: crypto.verify over the SSHSIG signed data, key imported once, same count. */
const rawRate = (key: TestKey) => {
  const pub = crypto.createPublicKey(key.privateKey)
  const msgs = Array.from({ length: N }, (_, i) => sshsigSignedData(OP_NAMESPACE, "sha512", Buffer.from(`message ${i}`)))
  const sigs = msgs.map((m) => key.type === "ssh-ed25519" ? crypto.sign(null, m, key.privateKey) : crypto.sign("sha256", m, key.privateKey))
  const t0 = performance.now()
  for (let i = 0; i < N; i++) {
    const ok = key.type === "ssh-ed25519" ? crypto.verify(null, msgs[i]!, pub, sigs[i]!) : crypto.verify("sha256", msgs[i]!, pub, sigs[i]!)
    if (!ok) throw new Error("baseline does not verify")
  }
  return N / ((performance.now() - t0) / 1000)
}

const pipelineRate = (key: TestKey, filename: string) =>
  Effect.gen(function*() {
    const signers = yield* parseSigners([`role=operational,key-id=bench ${key.publicKey.line}`])
    const authz = yield* makeAuthz({ hostId: HOST, signers, clockSkewSeconds: 60 })
    const ops = inputs(key)
    const t0 = performance.now()
    for (const op of ops) yield* authz.verify(op)
    return N / ((performance.now() - t0) / 1000)
  }).pipe(Effect.provide(layerAt(filename)))

const commitLatencies = (filename: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const times: Array<number> = []
    for (let i = 0; i < N; i++) {
      const nonce = crypto.randomBytes(32).toString("base64url")
      const t0 = performance.now()
      yield* sql`INSERT INTO nonces (nonce, signer_fingerprint, op, expires_at_ms, recorded_at_ms)
                 VALUES (${nonce}, ${"SHA256:x"}, ${"bench"}, ${Date.now() + 3_600_000}, ${Date.now()})`.pipe(sql.withTransaction)
      times.push(performance.now() - t0)
    }
    times.sort((a, b) => a - b)
    return { median: times[Math.floor(N / 2)]!, p99: times[Math.floor(N * 0.99)]! }
  }).pipe(Effect.provide(layerAt(filename)))

export const authzBench = Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "felhom-bench-"))
  console.log(`Authz.verify, full pipeline with nonce commit (${N} ops each), vs bare crypto.verify`)
  for (const type of ["ssh-ed25519", "ecdsa-sha2-nistp256"] as const) {
    const key = makeKey(type)
    const raw = rawRate(key)
    const mem = yield* pipelineRate(key, ":memory:")
    const file = yield* pipelineRate(key, join(dir, `${type}.db`))
    console.log(
      `  ${type.padEnd(20)} raw ${raw.toFixed(0).padStart(6)}/s | in-memory ${mem.toFixed(0).padStart(6)}/s (${(raw / mem).toFixed(2)}x slower)` +
        ` | file, synchronous=FULL ${file.toFixed(0).padStart(6)}/s (${(raw / file).toFixed(2)}x slower)`
    )
  }
  const mem = yield* commitLatencies(":memory:")
  const full = yield* commitLatencies(join(dir, "latency.db"))
  console.log(
    `nonce commit latency: file synchronous=FULL median ${full.median.toFixed(3)} ms, p99 ${full.p99.toFixed(3)} ms;` +
      ` in-memory median ${mem.median.toFixed(3)} ms (${(full.median / mem.median).toFixed(1)}x)`
  )
  rmSync(dir, { recursive: true, force: true })
})

if (process.argv[1] === fileURLToPath(import.meta.url)) void Effect.runPromise(authzBench)
