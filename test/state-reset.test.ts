/**
 * A reset agent state, seen from the hub (issue 8, finding 8): every host report carries the
 * audit chain head and the state database's epoch; the dev hub keeps the last of each per host
 * and flags a reset. End to end: real reports collected from the PVE simulator and a real
 * Journal on SQLite files, posted to the dev hub in-process, all on TestClock.
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schema, TestClock } from "effect"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { layerAt } from "../src/layers/Database.js"
import { Journal, JournalLive } from "../src/layers/Journal.js"
import { collectReport } from "../src/programs/daemon/report.js"
import { HostReport } from "../src/schema/hub.js"
import { type DevHub, makeAppHttpClient, makeDevHub, stateAlerts } from "../src/sim/hub/index.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { inProcessProxmox, seedWith } from "./support.js"

const HOST = "host-reset"
const KEY = "reset-api-key-0123456789abcdef"
const T0 = Date.parse("2026-03-01T10:00:00Z")

/** The agent's services over one state database file. */
const agentOn = (sim: SimPve, path: string) => {
  const db = layerAt(path)
  return Layer.mergeAll(
    inProcessProxmox(sim),
    JournalLive.pipe(Layer.provide(db)),
    Layer.effect(Authz, makeAuthz({ hostId: HOST, signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db))
  ).pipe(Layer.orDie)
}

/** Writes `n` audit entries, collects a report and posts it to the hub; returns the report. */
const cycle = (sim: SimPve, path: string, hub: DevHub, n: number) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    for (let i = 0; i < n; i++) yield* journal.audit({ actor: "agent", action: `step-${i}`, target: null, decision: "allowed" })
    const report = yield* collectReport({
      hostId: HOST,
      desiredGenerationApplied: null,
      pendingSignatures: [],
      cloudflared: Effect.succeed("running" as const)
    })
    const http = makeAppHttpClient(hub.app).pipe(HttpClient.mapRequest(HttpClientRequest.bearerToken(KEY)))
    const status = yield* http.execute(
      HttpClientRequest.post("https://hub.invalid/api/v1/host-report").pipe(HttpClientRequest.bodyUnsafeJson(report))
    ).pipe(Effect.map((r) => r.status), Effect.orDie)
    expect(status).toBe(200)
    return report
  }).pipe(Effect.provide(agentOn(sim, path)))

describe("the hub sees a reset state", () => {
  it.scoped("audit_head and state_epoch travel in every report; a deleted state.db shows as a new epoch and a lower seq", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const sim = yield* makeSimPve(yield* seedWith({}))
      const hub = yield* makeDevHub({ apiKeys: { [KEY]: HOST } })
      const stateDir = mkdtempSync(join(tmpdir(), "felhom-reset-hub-"))
      const path = join(stateDir, "state.db")

      const first = yield* cycle(sim, path, hub, 3)
      expect(first.audit_head).toEqual({ seq: 3, hash: expect.stringMatching(/^[0-9a-f]{64}$/) })
      expect(first.state_epoch).toBe("2026-03-01T10:00:00.000Z")
      yield* TestClock.adjust("10 minutes")
      const second = yield* cycle(sim, path, hub, 2)
      expect(second.audit_head?.seq).toBe(5)
      expect(second.state_epoch).toBe(first.state_epoch)
      const before = yield* hub.view(HOST)
      expect(before).toMatchObject({ audit_head: second.audit_head, state_epoch: first.state_epoch, state_alerts: [] })

      // state lost: the file goes, the agent comes back with a fresh database
      for (const f of ["state.db", "state.db-wal", "state.db-shm"]) rmSync(join(stateDir, f), { force: true })
      yield* TestClock.adjust("1 hour")
      const third = yield* cycle(sim, path, hub, 1)
      expect(third.audit_head?.seq).toBe(1)
      expect(third.state_epoch).toBe("2026-03-01T11:10:00.000Z")

      const after = yield* hub.view(HOST)
      expect(after.state_alerts.map((a) => a.kind)).toEqual(["state_epoch_changed", "audit_seq_regressed"])
      expect(after.state_alerts[0]!.message).toContain("2026-03-01T10:00:00.000Z")
      expect(after.state_alerts[1]!.message).toContain("seq 5 to seq 1")
      // the new head is adopted: the next report from the new state raises nothing new
      expect(after).toMatchObject({ audit_head: third.audit_head, state_epoch: third.state_epoch })
      yield* cycle(sim, path, hub, 1)
      expect((yield* hub.view(HOST)).state_alerts).toHaveLength(2)
    }))
})

describe("stateAlerts", () => {
  const golden = Schema.decodeUnknownSync(HostReport)(
    JSON.parse(readFileSync(join(__dirname, "fixtures", "hub", "host-report.golden.json"), "utf8"))
  )
  const head = golden.audit_head!
  const last = { auditHead: head, stateEpoch: golden.state_epoch }
  const at = "2026-11-22T10:05:00Z"

  it("the first report and a report that only moves forward raise nothing", () => {
    expect(stateAlerts({ auditHead: null, stateEpoch: null }, golden, at)).toEqual([])
    expect(stateAlerts(last, golden, at)).toEqual([])
    expect(stateAlerts(last, { ...golden, audit_head: { seq: head.seq + 7, hash: "1".repeat(64) } }, at)).toEqual([])
  })

  it("an empty log after a head, the same seq with another hash, or a new epoch each raise one alert", () => {
    expect(stateAlerts(last, { ...golden, audit_head: null }, at).map((a) => a.kind)).toEqual(["audit_seq_regressed"])
    expect(stateAlerts(last, { ...golden, audit_head: { seq: head.seq, hash: "2".repeat(64) } }, at).map((a) => a.kind)).toEqual([
      "audit_head_rewritten"
    ])
    expect(stateAlerts(last, { ...golden, state_epoch: "2026-11-22T10:04:00Z" }, at)).toEqual([
      { at, kind: "state_epoch_changed", message: expect.stringContaining("2026-11-22T10:04:00Z") }
    ])
  })
})
