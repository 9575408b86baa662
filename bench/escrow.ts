/**
 * Escrow key wrapping cost: our wrapKey / unwrapKey (scrypt N=65536 r=8 p=1 + AES-256-GCM with a
 * 16-byte IV, fingerprint, strict parse, JSON) against a bare node:crypto scrypt + AES-GCM of the
 * same parameters. Both run scrypt on libuv's threadpool; timed in process CPU time (all threads),
 * median of paired rounds in alternating order. ratio = ours ÷ raw per operation (a cost).
 */
import { Effect, Redacted } from "effect"
import * as crypto from "node:crypto"
import { fileURLToPath } from "node:url"
import { unwrapKey, wrapKey } from "../src/programs/escrow/keyFile.js"
import { printTable, type Row, row } from "./table.js"

const CODE = Redacted.make("legal winner thank year wave sausage worth useful legal winner thank yellow")
const SCRYPT = { N: 65536, r: 8, p: 1, maxmem: 256 * 1024 * 1024 }

const scrypt = (pass: string, salt: Buffer) =>
  new Promise<Buffer>((resolve, reject) => crypto.scrypt(pass, salt, 32, SCRYPT, (e, k) => (e === null ? resolve(k) : reject(e))))

/** The floor: derive, then seal (or open) 32 bytes; no format, no fingerprint, no checks. */
const rawWrap = async (key: Buffer) => {
  const salt = crypto.randomBytes(32)
  const iv = crypto.randomBytes(16)
  const c = crypto.createCipheriv("aes-256-gcm", await scrypt(Redacted.value(CODE), salt), iv)
  const ct = Buffer.concat([c.update(key), c.final()])
  return { salt, data: Buffer.concat([iv, c.getAuthTag(), ct]) }
}
const rawUnwrap = async (w: { readonly salt: Buffer; readonly data: Buffer }) => {
  const d = crypto.createDecipheriv("aes-256-gcm", await scrypt(Redacted.value(CODE), w.salt), w.data.subarray(0, 16))
  d.setAuthTag(w.data.subarray(16, 32))
  return Buffer.concat([d.update(w.data.subarray(32)), d.final()])
}

const cpuMicros = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}
const timed = async (f: () => Promise<unknown>) => {
  const t0 = cpuMicros()
  await f()
  return Math.max(1, cpuMicros() - t0)
}
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/** Median over `rounds` of (ours ÷ base) CPU time, one call each per round, order alternating. */
const paired = async (ours: () => Promise<unknown>, base: () => Promise<unknown>, rounds: number) => {
  await ours() // warm-up
  await base()
  const ratios: Array<number> = []
  const o: Array<number> = []
  const b: Array<number> = []
  for (let i = 0; i < rounds; i++) {
    let x: number
    let y: number
    if (i % 2 === 0) {
      x = await timed(ours)
      y = await timed(base)
    } else {
      y = await timed(base)
      x = await timed(ours)
    }
    o.push(x)
    b.push(y)
    ratios.push(x / y)
  }
  return { ratio: median(ratios), ours: median(o), base: median(b) }
}

const ms = (us: number) => `${(us / 1000).toFixed(0)} ms`

export const escrowBench = async (rounds = 9): Promise<ReadonlyArray<Row>> => {
  const key = crypto.randomBytes(32)
  const file = await Effect.runPromise(wrapKey(key, CODE, { kdf: "scrypt", nowMs: Date.now() }))
  const raw = await rawWrap(key)
  const wrap = await paired(() => Effect.runPromise(wrapKey(key, CODE, { kdf: "scrypt", nowMs: Date.now() })), () => rawWrap(key), rounds)
  const unwrap = await paired(() => Effect.runPromise(unwrapKey(file, CODE)), () => rawUnwrap(raw), rounds)
  return [
    row({ metric: "escrow wrapKey, scrypt (CPU per wrap)", ours: ms(wrap.ours), baseline: `${ms(wrap.base)} raw scrypt+AES-GCM`, ratio: wrap.ratio, goal: "≤ 1.1×" }),
    row({ metric: "escrow unwrapKey, scrypt (CPU per unwrap)", ours: ms(unwrap.ours), baseline: `${ms(unwrap.base)} raw scrypt+AES-GCM`, ratio: unwrap.ratio, goal: "≤ 1.1×" })
  ]
}

if (process.argv[1] === fileURLToPath(import.meta.url)) void escrowBench().then((rows) => printTable("escrow key wrapping", rows))
