/**
 * The update window and the signed hub job `agent-update` (issue 14): a job outside the desired
 * state's window is left unanswered with its nonce unspent, inside it runs on an operator's
 * signature bound to {version, manifest_sha256}; unsigned it waits for one. Windows crossing
 * midnight, in the protection time zone, on TestClock. And PrivilegedUpdate's argv and output
 * checks against a fake `felhom-update`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Either, FastCheck as fc, Layer, Option, Schema, TestClock } from "effect"
import { Journal } from "../src/layers/Journal.js"
import { OpLog } from "../src/layers/OpLog.js"
import { classify } from "../src/programs/control/gate.js"
import { runJobBatch } from "../src/programs/control/jobs.js"
import { beginOperation } from "../src/programs/control/steps.js"
import { type TimeZone, UTC } from "../src/programs/protection/calendar.js"
import { AgentUpdater } from "../src/programs/update/saga.js"
import { inUpdateWindow } from "../src/programs/update/window.js"
import { decodeDesiredState, UpdateWindow } from "../src/schema/desired.js"
import type { SignedAuthorization } from "../src/schema/operations.js"
import { makeSimPve } from "../src/sim/pve/index.js"
import { agentLayer, dbFile, job, signedOp } from "./engine-support.js"
import { expectError, expectValue, makeBinDir } from "./privileged-support.js"
import { seedWith } from "./support.js"
import { PrivilegedUpdate, privilegedUpdateLayerAt, DEFAULT_HOST_PATHS } from "../src/layers/Privileged.js"
import { AgentConfig } from "../src/layers/Config.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { NodeContext } from "@effect/platform-node"
import { join } from "node:path"
import { readFileSync } from "node:fs"

const HOUR = 3_600_000
const at = (hh: number, mm = 0) => (hh * 60 + mm) * 60_000
const w = (start: string, end: string) => Schema.decodeUnknownSync(UpdateWindow)({ start, end })
const budapest = "Europe/Budapest" as TimeZone

describe("update window", () => {
  it.effect("a same-day window and one crossing midnight, read on the clock (TestClock)", () =>
    Effect.gen(function*() {
      const day = w("01:00", "02:00")
      const night = w("22:00", "04:00")
      const check = (window: UpdateWindow) => Effect.map(Clock.currentTimeMillis, (now) => inUpdateWindow(window, UTC, now))
      const seen: Array<[string, boolean, boolean]> = []
      for (const [label, ms] of [["00:59", at(0, 59)], ["01:00", at(1)], ["01:59", at(1, 59)], ["02:00", at(2)], ["21:59", at(21, 59)], ["22:00", at(22)], ["23:59", at(23, 59)], ["24:00", at(24)], ["03:59", at(27, 59)], ["04:00", at(28)]] as const) {
        yield* TestClock.setTime(ms)
        seen.push([label, yield* check(day), yield* check(night)])
      }
      expect(seen).toEqual([
        ["00:59", false, true],
        ["01:00", true, true],
        ["01:59", true, true],
        ["02:00", false, true],
        ["21:59", false, false],
        ["22:00", false, true],
        ["23:59", false, true],
        ["24:00", false, true],
        ["03:59", false, true],
        ["04:00", false, false]
      ])
      // no window: any time
      expect(inUpdateWindow(undefined, UTC, at(13))).toBe(true)
    }))

  it("read in protection.time_zone: 21:30 UTC is 22:30 in Budapest in winter, 23:30 in summer", () => {
    const night = w("22:00", "04:00")
    expect(inUpdateWindow(night, budapest, Date.UTC(2026, 0, 15, 21, 30))).toBe(true)
    expect(inUpdateWindow(night, UTC, Date.UTC(2026, 0, 15, 21, 30))).toBe(false)
    expect(inUpdateWindow(w("23:00", "23:59"), budapest, Date.UTC(2026, 6, 15, 21, 30))).toBe(true)
  })

  it.prop("[s, e) and [e, s) split every minute of the day exactly", [
    fc.integer({ min: 0, max: 1439 }),
    fc.integer({ min: 0, max: 1439 }),
    fc.integer({ min: 0, max: 1439 })
  ], ([s, e, m]) => {
    fc.pre(s !== e)
    const hhmm = (x: number) => `${String(Math.floor(x / 60)).padStart(2, "0")}:${String(x % 60).padStart(2, "0")}`
    const now = Date.UTC(2026, 10, 30, 0, 0) + m * 60_000
    expect(inUpdateWindow(w(hhmm(s), hhmm(e)), UTC, now)).not.toBe(inUpdateWindow(w(hhmm(e), hhmm(s)), UTC, now))
  })

  it("the desired state's update_window decodes strictly", () => {
    const base = { generation: 1, guests: [] }
    expect(Either.isRight(decodeDesiredState({ ...base, update_window: { start: "22:00", end: "04:00" } }))).toBe(true)
    for (const bad of [{ start: "24:00", end: "04:00" }, { start: "22:00", end: "22:00" }, { start: "2:00", end: "04:00" }, { start: "22:00", end: "04:00", days: "mon" }]) {
      expect(Either.isLeft(decodeDesiredState({ ...base, update_window: bad }))).toBe(true)
    }
  })
})

describe("the agent-update job", () => {
  const SHA = "ab".repeat(32)
  const params = { version: "1.4.0", manifest_sha256: SHA }
  const recorded: Array<{ version: string; sha: string; authorization: SignedAuthorization | null }> = []
  // records the call and admits the op as the real saga does (so the nonce is spent by admission)
  const fakeUpdater = Layer.succeed(AgentUpdater, AgentUpdater.of({
    run: (version, sha, authorization, admission) =>
      Effect.gen(function*() {
        recorded.push({ version, sha, authorization })
        const s = yield* beginOperation({ _tag: "agent-update", vmid: null, version, manifestSha256: sha, authorization }, admission)
        return { opId: s.id, activating: version }
      })
  }))
  const window = { window: w("01:00", "02:00"), timeZone: UTC }
  const withAgent = <A, E>(body: Effect.Effect<A, E, Layer.Layer.Success<ReturnType<typeof agentLayer>> | AgentUpdater>) =>
    Effect.scoped(Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith())
      return yield* body.pipe(Effect.provide(Layer.merge(agentLayer(sim, dbFile()), fakeUpdater)))
    }))

  it.effect("outside the window: unanswered, nothing admitted, the nonce unspent; inside: run on the signature", () => {
    const signed = signedOp({ op: "agent-update", guest_id: null, params, expiresInMs: 6 * HOUR }, undefined, 0)
    const nonce = (JSON.parse(new TextDecoder().decode(signed.blob)) as { nonce: string }).nonce
    const j = job({ op: "agent-update", guest_id: null, params }, signed)
    return Effect.gen(function*() {
      const journal = yield* Journal
      const ops = yield* OpLog
      const outside = yield* runJobBatch([Either.right(j)], window)
      expect(outside).toEqual([])
      expect(yield* journal.nonceRecorded(nonce)).toBe(false)
      expect(yield* ops.list()).toEqual([])
      expect(recorded).toEqual([])

      yield* TestClock.setTime(at(1, 30))
      const inside = yield* runJobBatch([Either.right(j)], window)
      expect(inside.map((r) => r.status)).toEqual(["done"])
      expect(recorded).toEqual([{ version: "1.4.0", sha: SHA, authorization: expect.objectContaining({ basis: "signed", job: j.id }) }])
      expect(yield* journal.nonceRecorded(nonce)).toBe(true)
      expect((yield* ops.list()).map((o) => o.kind)).toEqual(["agent-update"])
      // redelivered: a duplicate, not a second update
      expect((yield* runJobBatch([Either.right(j)], window)).map((r) => r.status)).toEqual(["duplicate"])
    }).pipe(withAgent)
  })

  it.effect("unsigned: waits for a signature (SIGNED_ONLY); bad params or a guest: refused; other jobs are never deferred", () => {
    return Effect.gen(function*() {
      const c = classify({ op: "agent-update", vmid: null, params }, Option.none())
      expect(c).toEqual({ class: "destructive", reason: "runs new agent code as the service user and root's CLI: only an operator vouches for a release" })
      const unsigned = yield* runJobBatch([Either.right(job({ op: "agent-update", guest_id: null, params }))])
      expect(unsigned.map((r) => r.status)).toEqual(["pending_signature"])
      const extra = { ...params, url: "https://evil.example/x" }
      const bad = yield* runJobBatch([Either.right(job({ op: "agent-update", guest_id: null, params: extra }, signedOp({ op: "agent-update", guest_id: null, params: extra })))])
      expect(bad.map((r) => [r.status, r.reason.split(":")[0]])).toEqual([["failed", "BadJob"]])
      // a force-backup outside the window still runs (the window is for self-update only)
      const other = yield* runJobBatch([Either.right(job({ op: "force-backup", guest_id: 101, params: { storage: "nope" } }))], window)
      expect(other).toHaveLength(1)
    }).pipe(withAgent)
  })
})

describe("PrivilegedUpdate (fake felhom-update)", () => {
  const layerWith = (bin: ReturnType<typeof makeBinDir>) =>
    privilegedUpdateLayerAt(DEFAULT_HOST_PATHS).pipe(
      Layer.provide(Layer.succeed(AgentConfig, {
        source: undefined,
        file: Schema.decodeUnknownSync(AgentConfigFile)({ privileged: { mode: "direct", timeout_seconds: 10, commands: { "felhom-update": join(bin.dir, "felhom-update") } } })
      })),
      Layer.provide(NodeContext.layer)
    )
  const argv = (bin: ReturnType<typeof makeBinDir>) => readFileSync(join(bin.dir, "felhom-update.argv"), "utf8").split("\0").slice(1, -1)

  it.effect("stage <version> and activate: exact argv, answers parsed; a bad version never spawns", () =>
    Effect.gen(function*() {
      const bin = makeBinDir()
      bin.fake("felhom-update", { stdout: "staged b 1.4.0\n" })
      const p = yield* Effect.provide(PrivilegedUpdate, layerWith(bin))
      expect(expectValue(yield* Effect.either(p.stage("1.4.0")))).toEqual({ slot: "b", version: "1.4.0" })
      expect(argv(bin)).toEqual(["stage", "1.4.0"])
      for (const bad of ["../1.4.0", "1.4", "1.4.0 --force", "-1.4.0"]) {
        expect(expectError(yield* Effect.either(p.stage(bad)))).toMatchObject({ reason: "InvalidArgument", argument: "releaseVersion" })
      }
      expect(argv(bin)).toEqual(["stage", "1.4.0"])
      // an answer for another version is not a success
      bin.fake("felhom-update", { stdout: "staged a 1.3.0\n" })
      expect(expectError(yield* Effect.either(p.stage("1.4.0")))).toMatchObject({ reason: "Decode" })
      bin.fake("felhom-update", { stdout: "activating 1.4.0\n" })
      expect(expectValue(yield* Effect.either(p.activate))).toBe("1.4.0")
      expect(argv(bin)).toEqual(["activate"])
      bin.fake("felhom-update", { stderr: "update.json is not staged\n", exit: 1 })
      expect(expectError(yield* Effect.either(p.activate))).toMatchObject({ reason: "NonZeroExit" })
    }))
})
