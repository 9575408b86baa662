/**
 * Wiring for engine, gate, job and recovery tests: the in-process simulator (on the test's
 * clock), a real Journal and Authz on a real SQLite file, and the serializer.
 */
import { Effect, Fiber, Layer, TestClock } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Authz, make as makeAuthz, parseSigners } from "../src/layers/Authz.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { Journal, JournalLive, type StoreServices } from "../src/layers/Journal.js"
import type { Proxmox } from "../src/layers/Proxmox.js"
import { OP_NAMESPACE } from "../src/schema/op.js"
import { VmId } from "../src/schema/ids.js"
import type { JsonObject } from "../src/schema/json.js"
import type { SignedJob } from "../src/programs/control/jobs.js"
import type { SimPve } from "../src/sim/pve/index.js"
import { makeKey, signSshsig, type TestKey } from "./sshsig-sign.js"
import { inProcessProxmox } from "./support.js"

export const HOST = "host-7f3c2a90"
export const operator = makeKey("ssh-ed25519", { comment: "alice@ops" })
export const recoveryKey = makeKey("ssh-ed25519", { comment: "escrow@safe" })
export const stranger = makeKey("ssh-ed25519", { comment: "mallory" })
export const SIGNERS = [
  `role=operational,key-id=alice ${operator.publicKey.line}`,
  `role=recovery,key-id=escrow ${recoveryKey.publicKey.line}`
]

export const dbFile = () => join(mkdtempSync(join(tmpdir(), "felhom-engine-")), "state.db")

export const authzLayer = (hostId = HOST) =>
  Layer.effect(
    Authz,
    Effect.flatMap(parseSigners(SIGNERS), (signers) => makeAuthz({ hostId, signers, clockSkewSeconds: 60 }))
  )

/** Everything the engine needs, over one database file (reopen = a new call with the same path). */
export const agentLayer = (sim: SimPve, path: string) => {
  const db = layerAt(path)
  return Layer.mergeAll(
    inProcessProxmox(sim, { node: "pve" }),
    JournalLive.pipe(Layer.provide(db)),
    authzLayer().pipe(Layer.provide(db)),
    GuestQueue.layer(4)
  ).pipe(Layer.orDie)
}

export type AgentServices = Proxmox | Journal | StoreServices | Authz | GuestQueue

/** Lets in-process HTTP settle between clock steps. */
export const settle = Effect.promise(() => new Promise<void>((r) => setImmediate(r))).pipe(Effect.repeatN(3))

/** Runs `eff` to its exit (success, failure or interruption), advancing simulated time in 500 ms steps (at most `maxSeconds`). */
export const runToExit = <A, E, R>(eff: Effect.Effect<A, E, R>, maxSeconds = 3600) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(eff)
    for (let i = 0; i < maxSeconds * 2; i++) {
      yield* settle
      if (fiber.unsafePoll() !== null) break
      yield* TestClock.adjust("500 millis")
    }
    return yield* Fiber.await(fiber)
  })

/** Runs `eff` to completion, advancing simulated time in 500 ms steps (at most `maxSeconds`). */
export const runTimed = <A, E, R>(eff: Effect.Effect<A, E, R>, maxSeconds = 3600) =>
  Effect.flatMap(runToExit(eff, maxSeconds), (exit) => exit)

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z")
let counter = 0

/** An op blob and its signature, made at simulated time `nowMs`. */
export const signedOp = (
  fields: { readonly op: string; readonly guest_id: number | null; readonly params?: Record<string, unknown>; readonly host_id?: string; readonly expiresInMs?: number },
  key: TestKey = operator,
  nowMs = 0
) => {
  const blob = new TextEncoder().encode(JSON.stringify({
    op: fields.op,
    host_id: fields.host_id ?? HOST,
    guest_id: fields.guest_id,
    params: fields.params ?? {},
    nonce: `nonce-${Date.now().toString(36)}-${(counter++).toString().padStart(24, "0")}`,
    expires_at: iso(nowMs + (fields.expiresInMs ?? 3_600_000)),
    key_id: "alice"
  }))
  return { blob, signature: signSshsig({ message: blob, namespace: OP_NAMESPACE, key }) }
}

export const b64 = (u: Uint8Array) => Buffer.from(u).toString("base64")

/** The simulator seed's golden archive (guest 9000's backup). */
export const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"

/** As an operator's signed golden-register would leave the journal. */
export const registerGolden = Effect.flatMap(Journal, (j) => j.registerGolden(GOLDEN, "signed", "test-setup"))

/** A hub job with a random id, carrying `signed` (an op blob and its signature) when given. */
export const job = (
  fields: { readonly op: string; readonly guest_id: number | null; readonly params?: JsonObject },
  signed?: { blob: Uint8Array; signature: string }
): SignedJob => ({
  id: `job-${Math.random().toString(36).slice(2)}`,
  op: fields.op,
  guest_id: fields.guest_id === null ? null : VmId.make(fields.guest_id),
  params: fields.params ?? {},
  ...(signed === undefined ? {} : { blob: b64(signed.blob), signature: signed.signature })
})
