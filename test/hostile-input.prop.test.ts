/**
 * Property (issue 8, "Tests that must exist"): random hub-supplied job batches and desired
 * states never produce an unsigned irreversible PVE call.
 *
 * The hub is the attacker here: it sends any JSON text (prototype keys at any depth, extra keys,
 * deep nesting, wrong types, huge numbers, vmids of existing guests, every op and unknown ones)
 * and relays signatures it cannot forge: none, garbage, an unknown key's, the recovery key's, an
 * operator's for another op, guest, params or host, an expired one, a replayed one, and sometimes
 * a valid one for exactly the job. The text is parsed with JSON.parse (as the hub client does) and
 * goes through the real entry points: `runJobBatch(entries.map(decodeJobEntry))` for jobs,
 * `decodeDesiredState` → `planNow` → `executePlan` for desired states, against the in-process
 * simulator with the real gate, journal and Authz.
 *
 * Measured on the simulator: every call it received that could destroy or irreversibly change
 * data (destroy, restore with force, rollback, snapshot delete, resize, a config PUT touching a
 * volume key, a vzdump that may prune, any mutation the suite does not know) must be covered by a
 * valid operator signature for exactly that action, each signature covering at most one call.
 * The only unsigned irreversible calls the design allows are grows of a rootfs (the plan bounds
 * them: to the desired size, within the storage's free space) and a create's sizing of the guest
 * it just restored; both are checked against those bounds.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Either, FastCheck as fc, Option } from "effect"
import { Journal } from "../src/layers/Journal.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { executePlan, planNow, signatureKey, type Signatures } from "../src/programs/control/apply.js"
import { runJobBatch } from "../src/programs/control/jobs.js"
import { decodeDesiredState, type DesiredState } from "../src/schema/desired.js"
import { decodeJobEntry } from "../src/schema/hub.js"
import { VmId } from "../src/schema/ids.js"
import { OP_NAMESPACE } from "../src/schema/op.js"
import { logRequest, makeRequestLog } from "../src/sim/pve/env.js"
import { makeSimPve, REQUEST_LOG_LIMIT, type SimPve } from "../src/sim/pve/index.js"
import { agentLayer, type AgentServices, b64, dbFile, HOST, operator, recoveryKey, registerGolden, runTimed, stranger } from "./engine-support.js"
import { describeRequest, irreversibleSince, lastSeq } from "./sim-calls.js"
import { signSshsig, type TestKey } from "./sshsig-sign.js"
import { durations, seedWith } from "./support.js"

const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
const BACKUP_100 = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"
const GiB = 1024 ** 3
const MiB = 1024 ** 2

/** numRuns per property (jobs are cheaper than converges); PROP_RUNS / PROP_SEED widen or reproduce a run. */
const fcParams = (numRuns: number) => ({
  numRuns: Number(process.env["PROP_RUNS"] ?? numRuns),
  ...(process.env["PROP_SEED"] === undefined ? {} : { seed: Number(process.env["PROP_SEED"]) }),
  // shrinking re-runs the simulator: keep a failure's report within the test timeout
  interruptAfterTimeLimit: 100_000,
  markInterruptAsFailure: true
})

// ---------------------------------------------------------------------------------------------
// JSON as text, so keys JSON.parse turns into own properties (`__proto__`) survive, and numbers
// JSON cannot hold exactly (1e400 → Infinity, 2^53+1) arrive as the hub would send them.

type J = { readonly lit: string } | { readonly arr: ReadonlyArray<J> } | { readonly obj: ReadonlyArray<readonly [string, J]> }

const jtext = (j: J): string =>
  "lit" in j
    ? j.lit
    : "arr" in j
    ? `[${j.arr.map(jtext).join(",")}]`
    : `{${j.obj.map(([k, v]) => `${JSON.stringify(k)}:${jtext(v)}`).join(",")}}`

const lit = (v: unknown): J => ({ lit: JSON.stringify(v) })
const raw = (text: string): J => ({ lit: text })
const fromJs = (v: unknown): J =>
  Array.isArray(v)
    ? { arr: v.map(fromJs) }
    : v !== null && typeof v === "object"
    ? { obj: Object.entries(v).map(([k, x]) => [k, fromJs(x)] as const) }
    : lit(v)
const nest = (depth: number, inner: J, viaObj: boolean): J => {
  let j = inner
  for (let i = 0; i < depth; i++) j = viaObj ? { obj: [["x", j]] } : { arr: [j] }
  return j
}

const FORBIDDEN = ["__proto__", "constructor", "prototype"] as const

const leafArb: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom(
    "null", "true", "false", "0", "-0", "1", "100", "101", "102", "110", "-1", "1.5", "1e308", "1e400", "-1e400",
    "9007199254740993", "4294967296", "1e-400", "65536", "999999999999"
  ).map(raw),
  fc.constantFrom("", "pre_upgrade", "local", "local-lvm", BACKUP_100, GOLDEN, "../../etc/passwd", "rootfs", "mp0", "a".repeat(200), "scratch")
    .map(lit),
  fc.string({ maxLength: 6 }).map(lit)
)

const keyArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...FORBIDDEN) },
  {
    weight: 5,
    arbitrary: fc.constantFrom("snapshot", "backup", "storage", "backup_storage", "x", "rootfs", "mp0", "force", "purge", "vmid", "guest_id", "op")
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 5 }) }
)

const anyJ: fc.Arbitrary<J> = fc.letrec<{ j: J }>((tie) => ({
  j: fc.oneof(
    { maxDepth: 4, depthIdentifier: "anyJ" },
    leafArb,
    fc.array(tie("j"), { maxLength: 3 }).map((arr): J => ({ arr })),
    fc.array(fc.tuple(keyArb, tie("j")), { maxLength: 4 }).map((obj): J => ({ obj }))
  )
})).j

/** How the hub bends a clean object before sending it. */
type Mutation =
  | { readonly m: "none" }
  | { readonly m: "extra"; readonly key: string; readonly value: J }
  | { readonly m: "proto"; readonly key: (typeof FORBIDDEN)[number]; readonly depth: number; readonly payload: J }
  | { readonly m: "wrongType"; readonly index: number; readonly value: J }
  | { readonly m: "replace"; readonly value: J }
  | { readonly m: "deep"; readonly depth: number; readonly viaObj: boolean }
  | { readonly m: "drop"; readonly index: number }

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 10, arbitrary: fc.constant({ m: "none" as const }) },
  { weight: 2, arbitrary: fc.record({ m: fc.constant("extra" as const), key: keyArb, value: anyJ }) },
  {
    weight: 4,
    arbitrary: fc.record({
      m: fc.constant("proto" as const),
      key: fc.constantFrom(...FORBIDDEN),
      depth: fc.integer({ min: 0, max: 20 }),
      // the finding-1 payload, or anything
      payload: fc.oneof(fc.constant(fromJs({ snapshot: "pre_upgrade" })), fc.constant(fromJs({ backup: BACKUP_100 })), anyJ)
    })
  },
  { weight: 2, arbitrary: fc.record({ m: fc.constant("wrongType" as const), index: fc.nat(), value: anyJ }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant("replace" as const), value: anyJ }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant("deep" as const), depth: fc.integer({ min: 10, max: 400 }), viaObj: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant("drop" as const), index: fc.nat() }) }
)

const mutate = (entries: ReadonlyArray<readonly [string, J]>, mu: Mutation): J | undefined => {
  const n = entries.length
  switch (mu.m) {
    case "none":
      return { obj: entries }
    case "extra":
      return { obj: [...entries, [mu.key, mu.value]] }
    case "proto": {
      const evil: J = { obj: [[mu.key, mu.payload]] }
      return mu.depth === 0 ? { obj: [...entries, [mu.key, mu.payload]] } : { obj: [...entries, ["x", nest(mu.depth - 1, evil, mu.depth % 2 === 0)]] }
    }
    case "wrongType":
      return n === 0 ? { obj: [["x", mu.value]] } : { obj: entries.map(([k, v], i) => [k, i === mu.index % n ? mu.value : v] as const) }
    case "replace":
      return mu.value
    case "deep":
      return { obj: [...entries, ["x", nest(mu.depth, lit(1), mu.viaObj)]] }
    case "drop":
      return n === 0 ? undefined : { obj: entries.filter((_, i) => i !== mu.index % n) }
  }
}

const objEntries = (v: Record<string, unknown>): ReadonlyArray<readonly [string, J]> => Object.entries(v).map(([k, x]) => [k, fromJs(x)] as const)

// ---------------------------------------------------------------------------------------------
// Signatures

const KEYS: Record<"operator" | "stranger" | "recovery", TestKey> = { operator, stranger, recovery: recoveryKey }

type Skew = "exact" | "otherOp" | "otherGuest" | "otherParams" | "otherHost" | "expired" | "protoInBlob"

const skewArb: fc.Arbitrary<Skew> = fc.oneof(
  { weight: 8, arbitrary: fc.constant("exact" as const) },
  { weight: 6, arbitrary: fc.constantFrom<Skew>("otherOp", "otherGuest", "otherParams", "otherHost", "expired", "protoInBlob") }
)

let nonceCounter = 0
const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")

interface Blob {
  readonly text: string
  readonly nonce: string
  readonly key: keyof typeof KEYS
  readonly expiresMs: number
}

/** An op blob as an operator's tool would write it (params as JSON text), and its signature. */
const makeBlob = (
  f: { readonly op: string; readonly guest: number | null; readonly params: J; readonly host: string; readonly expiresMs: number },
  key: keyof typeof KEYS
) => {
  const nonce = `n${(nonceCounter++).toString(36).padStart(10, "0")}${Math.random().toString(36).slice(2, 14).padEnd(12, "0")}`
  const text = `{"op":${JSON.stringify(f.op)},"host_id":${JSON.stringify(f.host)},"guest_id":${JSON.stringify(f.guest)},"params":${jtext(f.params)},` +
    `"nonce":"${nonce}","expires_at":"${iso(f.expiresMs)}","key_id":"alice"}`
  const bytes = new TextEncoder().encode(text)
  return { blob: { text, nonce, key, expiresMs: f.expiresMs } satisfies Blob, bytes, signature: signSshsig({ message: bytes, namespace: OP_NAMESPACE, key: KEYS[key] }) }
}

/** What the signer meant, bent by `skew` (the hub relays it whatever it is). */
const skewed = (intent: Intent, skew: Skew, nowMs: number) => {
  const base = { op: intent.op, guest: intent.guest, params: fromJs(intent.params), host: HOST, expiresMs: nowMs + 3_600_000 }
  switch (skew) {
    case "exact":
      return base
    case "otherOp":
      return { ...base, op: intent.op === "decommission" ? "restore-now" : "decommission" }
    case "otherGuest":
      return { ...base, guest: intent.guest === 101 ? 100 : 101 }
    case "otherParams":
      return { ...base, params: { obj: [...objEntries(intent.params), ["snapshot", lit("other")]] } as J }
    case "otherHost":
      return { ...base, host: "host-other" }
    case "expired":
      return { ...base, expiresMs: nowMs - 60_000 }
    case "protoInBlob":
      return { ...base, params: { obj: [...objEntries(intent.params), ["__proto__", fromJs({ snapshot: "pre_upgrade" })]] } as J }
  }
}

// ---------------------------------------------------------------------------------------------
// Independent judgement of what a hub job may make PVE do irreversibly (an upper bound: the
// agent may be stricter, never looser)

const isSafe = (v: unknown, depth = 0): boolean => {
  if (v === null || typeof v === "string" || typeof v === "boolean") return true
  if (typeof v === "number") return Number.isFinite(v)
  if (depth >= 16 || typeof v !== "object") return false
  if (Array.isArray(v)) return v.every((x) => isSafe(x, depth + 1))
  return Object.keys(v).every((k) => !(FORBIDDEN as ReadonlyArray<string>).includes(k) && isSafe((v as Record<string, unknown>)[k], depth + 1))
}

const canon = (v: unknown): string =>
  Array.isArray(v)
    ? `[${v.map(canon).join(",")}]`
    : v !== null && typeof v === "object"
    ? `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canon((v as Record<string, unknown>)[k])}`).join(",")}}`
    : JSON.stringify(v)

const isVmid = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 100 && v <= 999_999_999
const hasExactKeys = (o: Record<string, unknown>, keys: ReadonlyArray<string>) =>
  canon(Object.keys(o).sort()) === canon([...keys].sort()) && keys.every((k) => typeof o[k] === "string")

/** The irreversible calls a validly signed (op, guest, params) entails, as describeRequest keys. */
const entailed = (op: string, guest: number, params: Record<string, unknown>): ReadonlyArray<string> => {
  // The executor means to refuse a decommission whose params are not {} (strict per-op decode),
  // but it does not today (see the BUG test below); the operator signed it exactly, so the
  // destroy is not unsigned, which is what this property is about.
  if (op === "decommission") return [`destroy:${guest}`]
  if (op === "restore-now" && hasExactKeys(params, ["snapshot"])) return [`rollback:${guest}:${String(params["snapshot"])}`]
  if (op === "restore-now" && hasExactKeys(params, ["backup", "storage", "backup_storage"])) {
    return [`restore-overwrite:${guest}:${String(params["backup"])}`]
  }
  return []
}

interface Allowance {
  readonly nonce: string
  readonly calls: ReadonlyArray<string>
}

/** What a hub job (as parsed from its text) carrying this blob may cause, or nothing. */
const allowanceOf = (jobText: string, blob: Blob | undefined, nowMs: number): Allowance | null => {
  if (blob === undefined || blob.key !== "operator" || blob.expiresMs <= nowMs + 60_000) return null
  const hub: unknown = JSON.parse(jobText)
  const signed = JSON.parse(blob.text) as Record<string, unknown>
  if (typeof hub !== "object" || hub === null) return null
  const h = hub as Record<string, unknown>
  const own = (k: string) => (Object.hasOwn(h, k) ? h[k] : undefined)
  const id = own("id")
  if (typeof id !== "string" || !/^[A-Za-z0-9._:-]{1,128}$/.test(id)) return null
  if (signed["host_id"] !== HOST || own("op") !== signed["op"] || typeof signed["op"] !== "string") return null
  if (!isVmid(signed["guest_id"]) || own("guest_id") !== signed["guest_id"]) return null
  const hp = own("params")
  const sp = signed["params"]
  if (!isSafe(hp) || !isSafe(sp) || typeof sp !== "object" || sp === null || Array.isArray(sp) || canon(hp) !== canon(sp)) return null
  const calls = entailed(signed["op"], signed["guest_id"], sp as Record<string, unknown>)
  return calls.length === 0 ? null : { nonce: blob.nonce, calls }
}

/**
 * Every irreversible call since `afterSeq` must be covered by an allowance (each allowance covers
 * at most one call) or by `benign` (the design's bounded unsigned calls). Returns the violations.
 */
const uncovered = (
  sim: SimPve,
  afterSeq: number,
  allowances: ReadonlyArray<Allowance>,
  used: Set<string>,
  benign: (call: string, vmid: number | null) => boolean = () => false
) =>
  Effect.map(sim.requests, (log) => {
    const bad: Array<string> = []
    for (const { call, request } of irreversibleSince(log, afterSeq)) {
      const key = describeRequest(call)
      const a = allowances.find((x) => !used.has(x.nonce) && x.calls.includes(key))
      if (a !== undefined) {
        used.add(a.nonce)
        continue
      }
      if (benign(key, "vmid" in call && typeof call.vmid === "number" ? call.vmid : null)) continue
      bad.push(`${key} (request #${request.seq} ${request.method} ${request.path}, handled=${request.handled}, status=${request.status})`)
    }
    return bad
  })

// ---------------------------------------------------------------------------------------------
// Jobs

interface Intent {
  readonly op: string
  readonly guest: number | null
  readonly params: Record<string, unknown>
}

const intentArb: fc.Arbitrary<Intent> = fc.oneof(
  fc.record({ op: fc.constant("decommission"), guest: fc.constantFrom(100, 101, 102, 110), params: fc.constant({}) }),
  fc.record({
    op: fc.constant("restore-now"),
    guest: fc.constantFrom(100, 101),
    params: fc.constantFrom<Record<string, unknown>>(
      { snapshot: "pre_upgrade" },
      { snapshot: "nope" },
      { backup: BACKUP_100, storage: "local-lvm", backup_storage: "local" },
      { backup: GOLDEN, storage: "local-lvm", backup_storage: "local" }
    )
  }),
  fc.record({
    op: fc.constant("force-backup"),
    guest: fc.constantFrom(100, 101, 102, 110),
    params: fc.constantFrom<Record<string, unknown>>({ storage: "local" }, { storage: "local-lvm" })
  }),
  fc.record({
    op: fc.constantFrom(
      "storage-wipe", "break-glass-enable", "destroy", "resize", "set_config", "start", "stop", "create", "rotate-escrow", "wipe-everything",
      "snapshot", "golden-register"
    ),
    guest: fc.constantFrom<number | null>(100, 101, null),
    params: fc.constantFrom<Record<string, unknown>>({}, { disk: "rootfs", size_gib: 64 }, { rootfs: "local-lvm:0" }, { memory: 16 }, { archive: BACKUP_100 })
  })
)

type SigModel =
  | { readonly m: "none" }
  | { readonly m: "garbage"; readonly blob: string; readonly signature: string }
  | { readonly m: "signed"; readonly key: keyof typeof KEYS; readonly skew: Skew }
  | { readonly m: "replay"; readonly of: number }

const sigArb: fc.Arbitrary<SigModel> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ m: "none" as const }) },
  {
    weight: 1,
    arbitrary: fc.record({
      m: fc.constant("garbage" as const),
      blob: fc.constantFrom("", "!!!notbase64", b64(new TextEncoder().encode("{}")), "e30="),
      signature: fc.constantFrom("", "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n", "garbage")
    })
  },
  {
    weight: 8,
    arbitrary: fc.record({
      m: fc.constant("signed" as const),
      key: fc.oneof({ weight: 5, arbitrary: fc.constant("operator" as const) }, { weight: 2, arbitrary: fc.constantFrom("stranger" as const, "recovery" as const) }),
      skew: skewArb
    })
  },
  { weight: 1, arbitrary: fc.record({ m: fc.constant("replay" as const), of: fc.nat() }) }
)

/** Mostly nothing; sometimes a hostile replacement. */
const rarely = <A>(arb: fc.Arbitrary<A>): fc.Arbitrary<Option.Option<A>> =>
  fc.oneof({ weight: 7, arbitrary: fc.constant(Option.none<A>()) }, { weight: 1, arbitrary: arb.map(Option.some) })

interface JobModel {
  readonly intent: Intent
  readonly id: { readonly k: "fresh" } | { readonly k: "dup" } | { readonly k: "bad"; readonly value: J } | { readonly k: "missing" }
  readonly hubOp: Option.Option<J>
  readonly hubGuest: Option.Option<J>
  readonly params: Mutation
  readonly extraTop: ReadonlyArray<readonly [string, J]>
  readonly sig: SigModel
}

const jobArb: fc.Arbitrary<JobModel> = fc.record({
  intent: intentArb,
  id: fc.oneof(
    { weight: 12, arbitrary: fc.constant({ k: "fresh" as const }) },
    { weight: 1, arbitrary: fc.constant({ k: "dup" as const }) },
    { weight: 1, arbitrary: fc.constant({ k: "missing" as const }) },
    { weight: 1, arbitrary: fc.record({ k: fc.constant("bad" as const), value: fc.oneof(leafArb, fc.constant(lit("a b")), fc.constant(lit("x".repeat(200)))) }) }
  ),
  hubOp: rarely(fc.oneof(leafArb, fc.constantFrom("decommission", "restore-now", "Decommission", "restore-now ", "force-backup").map(lit))),
  // 1e2 and 100.0 are the number 100 after JSON.parse: the same guest, spelled differently
  hubGuest: rarely(fc.oneof(leafArb, fc.constantFrom("100", "1e400", "100.0", "1e2", "null").map(raw))),
  params: mutationArb,
  extraTop: fc.oneof(
    { weight: 6, arbitrary: fc.constant([]) },
    { weight: 1, arbitrary: fc.array(fc.tuple(fc.oneof(keyArb, fc.constantFrom("params", "guest_id", "op")), anyJ), { maxLength: 2 }) }
  ),
  sig: sigArb
})

interface BuiltJob {
  readonly id: string | null
  readonly text: string
  readonly blob: Blob | undefined
}

let jobCounter = 0

const buildJob = (m: JobModel, earlier: ReadonlyArray<BuiltJob & { readonly raw: { blob: string; signature: string } | undefined }>, nowMs: number) => {
  const fields: Array<readonly [string, J]> = []
  const freshId = `job-${(jobCounter++).toString(36)}`
  const prevId = [...earlier].reverse().find((e) => e.id !== null)?.id
  const id = m.id.k === "fresh" ? freshId : m.id.k === "dup" ? (prevId ?? freshId) : null
  if (id !== null) fields.push(["id", lit(id)])
  else if (m.id.k === "bad") fields.push(["id", m.id.value])
  fields.push(["op", Option.getOrElse(m.hubOp, () => lit(m.intent.op))])
  fields.push(["guest_id", Option.getOrElse(m.hubGuest, () => lit(m.intent.guest))])
  const params = mutate(objEntries(m.intent.params), m.params)
  if (params !== undefined) fields.push(["params", params])
  let blob: Blob | undefined
  let sent: { blob: string; signature: string } | undefined
  switch (m.sig.m) {
    case "none":
      break
    case "garbage":
      sent = { blob: m.sig.blob, signature: m.sig.signature }
      break
    case "signed": {
      const made = makeBlob(skewed(m.intent, m.sig.skew, nowMs), m.sig.key)
      blob = made.blob
      sent = { blob: b64(made.bytes), signature: made.signature }
      break
    }
    case "replay": {
      const withSig = earlier.filter((e) => e.raw !== undefined)
      const src = withSig.length === 0 ? undefined : withSig[m.sig.of % withSig.length]
      if (src !== undefined) {
        blob = src.blob
        sent = src.raw
      }
      break
    }
  }
  if (sent !== undefined) fields.push(["blob", lit(sent.blob)], ["signature", lit(sent.signature)])
  fields.push(...m.extraTop)
  const text = jtext({ obj: fields })
  return { id, text, blob, raw: sent }
}

// ---------------------------------------------------------------------------------------------
// Desired states

interface GuestIntent {
  readonly vmid: number
  readonly hostname: string
  readonly cores: number | undefined
  readonly memory_bytes: number
  readonly swap_mib: number
  readonly rootfs_gib: number
  readonly power: "running" | "stopped"
  readonly description: string
  readonly tags: ReadonlyArray<string>
}

const guestIntentArb: fc.Arbitrary<GuestIntent> = fc.record({
  vmid: fc.constantFrom(100, 101, 102, 110, 111),
  hostname: fc.constantFrom("cust-alpha", "cust-beta", "ops-tools", "cust-gamma", "x"),
  cores: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
  memory_bytes: fc.constantFrom(16 * MiB, 512 * MiB, 1024 * MiB, 2048 * MiB, 4096 * MiB, 64 * GiB, Number.MAX_SAFE_INTEGER),
  swap_mib: fc.constantFrom(0, 256, 512, 64 * 1024 * 1024),
  rootfs_gib: fc.constantFrom(1, 4, 8, 16, 20, 32, 400, 65536),
  power: fc.constantFrom("running" as const, "stopped" as const),
  description: fc.constantFrom("", "felhom customer guest alpha", "scratch restore-test"),
  tags: fc.constantFrom<ReadonlyArray<string>>([], ["customer", "felhom"], ["scratch"], ["felhom-prov-0123456789abcdef"])
})

const guestModelArb = fc.record({
  intent: guestIntentArb,
  mutation: fc.oneof({ weight: 8, arbitrary: fc.constant<Mutation>({ m: "none" }) }, { weight: 1, arbitrary: mutationArb })
})

interface DesiredModel {
  readonly generation: J
  readonly guests: ReadonlyArray<{ readonly intent: GuestIntent; readonly mutation: Mutation }>
  readonly provisioning: "golden" | "customer-backup" | "missing" | "hostile"
  readonly provisioningMutation: Mutation
  readonly policies: Option.Option<J>
  readonly storage: Option.Option<J>
  readonly top: Mutation
  /** decommission signatures the executor is offered, by vmid */
  readonly signatures: ReadonlyArray<{ readonly vmid: number; readonly key: keyof typeof KEYS; readonly skew: Skew }>
}

const desiredArb: fc.Arbitrary<DesiredModel> = fc.record({
  generation: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 1, max: 1000 }).map(lit) }, { weight: 1, arbitrary: leafArb }),
  guests: fc.oneof(
    { weight: 6, arbitrary: fc.uniqueArray(guestModelArb, { maxLength: 5, selector: (g) => g.intent.vmid }) },
    // duplicated vmids: refused whole
    { weight: 1, arbitrary: fc.array(guestModelArb, { maxLength: 5 }) }
  ),
  provisioning: fc.constantFrom("golden", "golden", "customer-backup", "missing", "hostile"),
  provisioningMutation: fc.oneof({ weight: 8, arbitrary: fc.constant({ m: "none" as const }) }, { weight: 1, arbitrary: mutationArb }),
  policies: fc.oneof(
    { weight: 4, arbitrary: fc.constant(Option.none<J>()) },
    { weight: 2, arbitrary: fc.constant(Option.some(fromJs({ nightly: { keep_last: 3 } }))) },
    { weight: 1, arbitrary: anyJ.map(Option.some) }
  ),
  storage: fc.oneof(
    { weight: 4, arbitrary: fc.constant(Option.none<J>()) },
    { weight: 2, arbitrary: fc.constant(Option.some(fromJs([]))) },
    { weight: 1, arbitrary: anyJ.map((j) => Option.some<J>({ arr: [j] })) }
  ),
  top: fc.oneof({ weight: 8, arbitrary: fc.constant({ m: "none" as const }) }, { weight: 1, arbitrary: mutationArb }),
  signatures: fc.array(
    fc.record({
      vmid: fc.constantFrom(100, 101, 102, 110, 111),
      key: fc.oneof({ weight: 3, arbitrary: fc.constant("operator" as const) }, { weight: 2, arbitrary: fc.constantFrom("stranger" as const, "recovery" as const) }),
      skew: skewArb
    }),
    { maxLength: 3 }
  )
})

const desiredText = (m: DesiredModel): string => {
  // the first occurrence of a vmid wins in the hub's list; a duplicate is the hub's mistake to make
  const guests = m.guests.map(({ intent, mutation }) => {
    const { cores, ...rest } = intent
    return mutate(objEntries({ ...rest, ...(cores === undefined ? {} : { cores }), tags: [...intent.tags] }), mutation) ?? lit(null)
  })
  const prov = m.provisioning === "golden"
    ? objEntries({ golden_archive: GOLDEN, storage: "local-lvm" })
    : m.provisioning === "customer-backup"
    ? objEntries({ golden_archive: BACKUP_100, storage: "local-lvm" })
    : m.provisioning === "hostile"
    ? objEntries({ golden_archive: "local:backup/../../etc/shadow", storage: "local-lvm" })
    : undefined
  const top: Array<readonly [string, J]> = [["generation", m.generation], ["guests", { arr: guests }]]
  if (prov !== undefined) top.push(["provisioning", mutate(prov, m.provisioningMutation) ?? lit(null)])
  if (Option.isSome(m.policies)) top.push(["policies", m.policies.value])
  if (Option.isSome(m.storage)) top.push(["storage", m.storage.value])
  return jtext(mutate(top, m.top) ?? lit(null))
}

/** Current rootfs size (whole GiB, rounded down) per guest, and free GiB on local-lvm. */
const sizesNow = (sim: SimPve) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const storages = yield* pve.nodeStorage
    const free = Math.floor((storages.find((s) => s.storage === "local-lvm")?.avail ?? 0) / GiB)
    const sizes = new Map<number, number>()
    for (const g of yield* sim.guests) {
      const m = /size=(\d+(?:\.\d+)?)([KMGT]?)/.exec(String(g.config["rootfs"] ?? ""))
      if (m === null) continue
      const unit = { "": 1, K: 1024, M: MiB, G: GiB, T: 1024 * GiB }[m[2] as "" | "K" | "M" | "G" | "T"]
      sizes.set(g.vmid, Math.floor((Number(m[1]) * unit) / GiB))
    }
    return { free, sizes }
  })

// ---------------------------------------------------------------------------------------------

const withAgent = <A, E>(body: (sim: SimPve) => Effect.Effect<A, E, AgentServices>) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith(durations(1000)))
    // the operator registered the golden archive (a signed golden-register) before the hub speaks
    return yield* Effect.zipRight(registerGolden, body(sim)).pipe(Effect.provide(agentLayer(sim, dbFile())))
  })

/** Coverage of the generators (PROP_STATS=1 prints it): how much of the input reached PVE. */
const stats: Record<string, number> = {}
const count = (k: string, n = 1) => void (stats[k] = (stats[k] ?? 0) + n)
afterAll(() => {
  if (process.env["PROP_STATS"] !== undefined) console.log(JSON.stringify(stats, null, 1))
})

const report = (what: string, inputs: unknown, bad: ReadonlyArray<string>) =>
  `${what}: irreversible PVE calls no signature covers:\n  ${bad.join("\n  ")}\ninputs:\n${JSON.stringify(inputs, null, 1).slice(0, 4000)}`

describe("the simulator's request log (measuring instrument)", () => {
  it.scoped("records what was sent, whether the handler ran, and the task it started; counts a signed destroy and nothing unsigned", () =>
    withAgent((sim) =>
      Effect.gen(function*() {
        const backups = (yield* sim.storageContent("local")).map((c) => String(c["volid"]))
        expect(backups).toContain(BACKUP_100)
        expect(backups).toContain(GOLDEN)
        const now = yield* Clock.currentTimeMillis
        // unsigned decommission and a benign force-backup: no irreversible call, the vzdump keeps remove=0
        const unsigned = jtext({ obj: [["id", lit("j-1")], ["op", lit("decommission")], ["guest_id", lit(101)], ["params", { obj: [] }]] })
        const backup = jtext({ obj: [["id", lit("j-2")], ["op", lit("force-backup")], ["guest_id", lit(100)], ["params", fromJs({ storage: "local" })]] })
        const r1 = yield* runTimed(runJobBatch([unsigned, backup].map((t) => decodeJobEntry(JSON.parse(t)))))
        expect(r1.map((r) => r.status)).toEqual(["pending_signature", "done"])
        const log1 = yield* sim.requests
        expect(yield* sim.requestSeq).toBe(lastSeq(log1))
        expect(log1.map((r) => r.seq)).toEqual(log1.map((_, i) => i + 1))
        expect(irreversibleSince(log1)).toEqual([])
        const dump = log1.find((r) => r.path === "/nodes/pve/vzdump")
        expect(dump).toMatchObject({ method: "POST", handled: true, status: 200, params: { vmid: "100", remove: "0" } })
        expect(dump?.upid).toMatch(/^UPID:pve:.*:vzdump:100:/)
        // a valid signature for exactly the decommission: one destroy, covered by its allowance
        const made = makeBlob({ op: "decommission", guest: 101, params: { obj: [] }, host: HOST, expiresMs: now + 3_600_000 }, "operator")
        const signed = jtext({
          obj: [["id", lit("j-3")], ["op", lit("decommission")], ["guest_id", lit(101)], ["params", { obj: [] }], ["blob", lit(b64(made.bytes))], [
            "signature",
            lit(made.signature)
          ]]
        })
        const seq = lastSeq(log1)
        const r2 = yield* runTimed(runJobBatch([decodeJobEntry(JSON.parse(signed))]))
        expect(r2.map((r) => r.status)).toEqual(["done"])
        const calls = irreversibleSince(yield* sim.requests, seq)
        expect(calls.map((c) => describeRequest(c.call))).toEqual(["destroy:101"])
        const allowance = allowanceOf(signed, made.blob, now)
        expect(allowance?.calls).toEqual(["destroy:101"])
        expect(yield* uncovered(sim, seq, [allowance!], new Set())).toEqual([])
        expect(yield* uncovered(sim, seq, [], new Set())).toHaveLength(1)
      })))

  it("keeps only the newest REQUEST_LOG_LIMIT calls, numbering all of them", () => {
    const log = makeRequestLog()
    for (let i = 0; i < REQUEST_LOG_LIMIT + 5; i++) logRequest(log, { method: "GET", path: `/r/${i}`, params: {} })
    expect(log.entries).toHaveLength(REQUEST_LOG_LIMIT)
    expect(log.entries[0]).toMatchObject({ seq: 6, path: "/r/5", handled: false })
    expect(log.seq).toBe(REQUEST_LOG_LIMIT + 5)
  })
})

describe("found by the job property (fixed; regression tests)", () => {
  // BUG: `NoParams = Schema.Struct({})` in src/programs/control/jobs.ts accepts any object even
  // with { onExcessProperty: "error" } (an empty Struct is TypeScript's `{}`), so the documented
  // strict per-op decode ("an extra key is a refusal", docs/security.md: "signed op whose own
  // params carry extra keys → BadJob, nothing runs") does not hold for decommission: a
  // decommission signed with params { snapshot } destroys the guest. Signed and bound, so not
  // an unsigned call; a careless operator's blob runs where it should be refused.
  it.scoped("a signed decommission whose own params carry a key is refused (BadJob), nothing runs", () =>
    withAgent((sim) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const params = fromJs({ snapshot: "pre_upgrade" })
        const made = makeBlob({ op: "decommission", guest: 101, params, host: HOST, expiresMs: now + 3_600_000 }, "operator")
        const text = jtext({
          obj: [["id", lit("j-np")], ["op", lit("decommission")], ["guest_id", lit(101)], ["params", params], ["blob", lit(b64(made.bytes))], [
            "signature",
            lit(made.signature)
          ]]
        })
        const [r] = yield* runTimed(runJobBatch([decodeJobEntry(JSON.parse(text))]))
        expect(r?.reason).toContain("BadJob")
        expect(Option.isSome(yield* sim.guest(101))).toBe(true)
      })))
})

describe("property: random hub input never produces an unsigned irreversible PVE call", () => {
  it.scoped.prop(
    "job batches: prototype keys, extra keys, deep nesting, wrong types, every op, every kind of signature",
    { rounds: fc.array(fc.array(jobArb, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 3 }) },
    ({ rounds }) =>
      withAgent((sim) =>
        Effect.gen(function*() {
          const allowances: Array<Allowance> = []
          const used = new Set<string>()
          const sent: Array<string> = []
          for (const batch of rounds) {
            const now = yield* Clock.currentTimeMillis
            const seq = lastSeq(yield* sim.requests)
            const built: Array<ReturnType<typeof buildJob>> = []
            for (const m of batch) built.push(buildJob(m, built, now))
            for (const b of built) {
              const a = allowanceOf(b.text, b.blob, now)
              if (a !== null && !allowances.some((x) => x.nonce === a.nonce)) allowances.push(a)
            }
            sent.push(...built.map((b) => b.text.slice(0, 600)))
            // the hub client's own parse, then one decode per entry
            const results = yield* runTimed(runJobBatch(built.map((b) => decodeJobEntry(JSON.parse(b.text)))))
            expect(results).toHaveLength(built.length)
            for (const r of results) count(`job:${r.status}:${r.reason.slice(0, 70)}`)
            count("job:allowances", allowances.length)
            for (const c of irreversibleSince(yield* sim.requests, seq)) count(`job:call:${c.call.kind}`)
            const bad = yield* uncovered(sim, seq, allowances, used)
            if (bad.length > 0) expect.fail(report("job batch", { sent, results }, bad))
          }
          const journal = yield* Journal
          expect(yield* journal.inFlight).toEqual([])
          expect((yield* journal.verifyAudit).ok).toBe(true)
        })),
    { timeout: 120_000, fastCheck: fcParams(25) }
  )

  it.scoped.prop(
    "desired states: random specs over existing and new vmids, dropped guests, hostile blocks, offered signatures",
    { passes: fc.array(desiredArb, { minLength: 1, maxLength: 3 }) },
    ({ passes }) =>
      withAgent((sim) =>
        Effect.gen(function*() {
          const allowances: Array<Allowance> = []
          const used = new Set<string>()
          const journal = yield* Journal
          for (const m of passes) {
            const text = desiredText(m)
            const decoded = decodeDesiredState(JSON.parse(text))
            count(Either.isLeft(decoded) ? `desired:refused:${decoded.left.slice(22, 90)}` : "desired:decoded")
            if (Either.isLeft(decoded)) continue // refused whole: nothing can run
            const desired: DesiredState = decoded.right
            const now = yield* Clock.currentTimeMillis
            const seq = lastSeq(yield* sim.requests)
            const before = yield* sizesNow(sim)
            const signatures = new Map<string, { blob: Uint8Array; signature: string }>()
            for (const s of m.signatures) {
              const made = makeBlob(skewed({ op: "decommission", guest: s.vmid, params: {} }, s.skew, now), s.key)
              signatures.set(signatureKey("decommission", VmId.make(s.vmid)), { blob: made.bytes, signature: made.signature })
              // the executor's action is { op: decommission, guest, params: {} }: judge it as a job would be
              const asJob = jtext({ obj: [["id", lit("x")], ["op", lit("decommission")], ["guest_id", lit(s.vmid)], ["params", { obj: [] }]] })
              const a = allowanceOf(asJob, made.blob, now)
              if (a !== null) allowances.push(a)
            }
            const p = yield* planNow(desired)
            const outcomes = yield* runTimed(executePlan(p, signatures as Signatures))
            const want = new Map(desired.guests.map((g) => [g.vmid as number, g]))
            const restoredNow = new Set(
              (yield* sim.requests).filter((r) => r.seq > seq && r.method === "POST" && /^\/nodes\/[^/]+\/lxc$/.test(r.path)).map((r) => Number(r.params["vmid"]))
            )
            // a restore (create) only into a vmid that was free when the pass began
            for (const v of restoredNow) expect(before.sizes.has(v), `create over existing guest ${v}`).toBe(false)
            const boundedGrow = (call: string, vmid: number | null): boolean => {
              const r = /^resize:(\d+):rootfs:(\d+)G$/.exec(call)
              if (r === null || vmid === null) return false
              const d = want.get(vmid)
              if (d === undefined || Number(r[2]) !== d.rootfs_gib) return false
              // the create's sizing of the guest it just restored
              if (!before.sizes.has(vmid)) return restoredNow.has(vmid)
              const cur = before.sizes.get(vmid)!
              return d.rootfs_gib > cur && d.rootfs_gib - cur <= before.free
            }
            for (const o of outcomes) count(`desired:${o.action}:${o.verdict}:${o.result}${o.result === "failed" ? `:${o.reason.slice(0, 120)}` : ""}`)
            for (const n of p.notes) count(`desired:note:${n.reason}`)
            for (const c of irreversibleSince(yield* sim.requests, seq)) count(`desired:call:${c.call.kind}`)
            const bad = yield* uncovered(sim, seq, allowances, used, boundedGrow)
            if (bad.length > 0) expect.fail(report("desired-state pass", { desired: text.slice(0, 3000), plan: p, outcomes }, bad))
          }
          expect(yield* journal.inFlight).toEqual([])
          expect((yield* journal.verifyAudit).ok).toBe(true)
        })),
    { timeout: 120_000, fastCheck: fcParams(12) }
  )
})
