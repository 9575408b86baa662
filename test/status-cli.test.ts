/**
 * `felhom-agent status` (issue 14): a state DB seeded through the real layers (journal ops in
 * flight and needs_operator, a lost guest, backups of various ages, a failing restore test, a
 * storage target with sealed creds, an open break-glass session) and a fake daemon /status on
 * loopback. Exit codes, one finding per problem, --json decoding with StatusReport, the DB opened
 * read-only (never created, never migrated, never written), and no secret in any output.
 */
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option, Schema, TestClock } from "effect"
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { createServer, type Server } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { Journal, JournalLive } from "../src/layers/Journal.js"
import { ProtectionStore, ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { StorageTargetStore, StorageTargetStoreLive } from "../src/layers/StorageTargetStore.js"
import { makeStore as makeBreakGlassStore } from "../src/programs/breakglass/store.js"
import { CliFailure } from "../src/programs/cli/failure.js"
import { renderStatus, StatusReport, statusCommand, statusReport } from "../src/programs/cli/status.js"
import { StorageTarget } from "../src/schema/storage.js"
import type { StatusBody } from "../src/schema/status.js"
import { SqlClient } from "@effect/sql"

const HOUR = 3_600_000
const NOW = Date.parse("2026-11-30T12:00:00Z")
const SECRETS = {
  hub: "fhk_status-HUB-key-0a1b2c3d4e5f6a7b8c9d",
  pve: "pve-token-secret-5e6f7a8b-9c0d-1e2f",
  tunnel: "eyJhIjoidHVubmVsLXRva2VuLXN0YXR1cy10ZXN0In0",
  sealed: "SEALED-CREDS-CIPHERTEXT-7c1d"
}

const body = (over: Partial<StatusBody> = {}): StatusBody => ({
  health: {
    status: "ok",
    version: "0.1.0",
    pid: 4242,
    started_at: "2026-11-30T11:00:00Z",
    checks: { loop: "ok", recovered: "ok", store: "ok", hub: "ok" }
  },
  cycles: 12,
  last_cycle_at: "2026-11-30T11:59:00Z",
  last_hub_contact_at: "2026-11-30T11:59:00Z",
  last_hub_error: null,
  applied_generation: 3,
  pending_signatures: [],
  lost_guests: [],
  watchdog: "armed",
  cloudflared: "running",
  ...over
})

/** A fake daemon /status on loopback; `answer` may be changed between runs. */
const fakeDaemon = Effect.acquireRelease(
  Effect.async<{ server: Server; port: number; set: (b: unknown, status?: number) => void }>((resume) => {
    let answer: { body: unknown; status: number } = { body: body(), status: 200 }
    const server = createServer((req, res) => {
      if (req.url !== "/status") {
        res.writeHead(404).end()
        return
      }
      res.writeHead(answer.status, { "content-type": "application/json" }).end(JSON.stringify(answer.body))
    })
    server.listen(0, "127.0.0.1", () => {
      const a = server.address()
      resume(Effect.succeed({
        server,
        port: typeof a === "object" && a !== null ? a.port : 0,
        set: (b, status = 200) => { answer = { body: b, status } }
      }))
    })
  }),
  ({ server }) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
)

const writeConfig = (stateDir: string, port: number, enabled = true) => {
  const path = join(stateDir, "..", `agent-${port}-${enabled}.json`)
  writeFileSync(path, JSON.stringify({
    host_id: "pve-status-1",
    state_dir: stateDir,
    proxmox: { url: "https://127.0.0.1:8006", token_id: "felhom@pve!agent", token_secret: SECRETS.pve, tls: { insecure_skip_verify: true } },
    hub: { url: "https://hub.example", api_key: SECRETS.hub },
    cloudflared: { enabled: true, token: SECRETS.tunnel },
    status_endpoint: { enabled, port }
  }))
  return Option.some(path)
}

/** Seeds the state DB through the real layers at chosen times (TestClock). */
const seed = (dbPath: string) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const protection = yield* ProtectionStore
    const targets = yield* StorageTargetStore
    const at = (ms: number) => TestClock.setTime(ms)

    yield* at(NOW - 100 * HOUR)
    for (const vmid of [101, 102, 103, 104, 105]) yield* journal.markCustomer(vmid, "seeded")
    // 101: fresh backup, passing restore test
    yield* at(NOW - 2 * HOUR)
    yield* protection.recordRun({ kind: "backup", vmid: 101, storage: "local", result: "ok", detail: "" })
    yield* protection.recordRestoreTest({ opId: "rt-101", vmid: 101, archive: "local:backup/a.tar.zst", startedMs: NOW - 2 * HOUR, endedMs: NOW - HOUR, result: "pass", detail: "healthy", timings: {} })
    // 102: 72 h old backup, failing restore test
    yield* at(NOW - 72 * HOUR)
    yield* protection.recordRun({ kind: "backup", vmid: 102, storage: "local", result: "ok", detail: "" })
    yield* protection.recordRestoreTest({ opId: "rt-102", vmid: 102, archive: "local:backup/b.tar.zst", startedMs: NOW - 3 * HOUR, endedMs: NOW - 3 * HOUR, result: "fail", detail: "guest did not reach running", timings: {} })
    // 103: an older success, then a failed attempt
    yield* at(NOW - 5 * HOUR)
    yield* protection.recordRun({ kind: "backup", vmid: 103, storage: "usb1", result: "ok", detail: "" })
    yield* at(NOW - HOUR)
    yield* protection.recordRun({ kind: "backup", vmid: 103, storage: "usb1", result: "failed", detail: "vzdump exit 255" })
    // 104: never backed up; 105: lost
    yield* journal.markLost(105, "gone from PVE")
    // ops: one in flight, one needs_operator
    const running = yield* journal.begin({ kind: "backup", vmid: 101, payload: { storage: "local" } })
    yield* journal.stepStarted(running.id, "vzdump")
    const stuck = yield* journal.begin({ kind: "create", vmid: 106, payload: { note: "x" } })
    yield* journal.finish(stuck.id, "needs_operator", "compensation failed: destroy 106 refused")
    // a storage target with sealed creds
    yield* targets.recordAttach(Schema.decodeUnknownSync(StorageTarget)({
      id: "backup-dir", type: "local-dir", durable_id: "/srv/backup", class: "slow", role: "vzdump-target", state: "attached"
    }))
    yield* targets.setCreds("backup-dir", SECRETS.sealed)
    // break-glass open (engineer D's store)
    const sql = yield* SqlClient.SqlClient
    const bg = yield* Effect.provideService(makeBreakGlassStore, SqlClient.SqlClient, sql)
    yield* bg.insert({ id: "bg-1", opId: "op-bg-1", jobId: null, enabledAtMs: NOW - HOUR, untilMs: NOW + 3 * HOUR, signer: "alice", fingerprint: "SHA256:abc", reason: "support ticket 42" })
    yield* at(NOW)
  }).pipe(
    Effect.provide(Layer.mergeAll(JournalLive, ProtectionStoreLive, StorageTargetStoreLive).pipe(Layer.provideMerge(layerAt(dbPath)))),
    Effect.scoped
  )

const fresh = () => {
  const root = mkdtempSync(join(tmpdir(), "felhom-status-"))
  const stateDir = join(root, "state")
  return { root, stateDir, dbPath: join(stateDir, "state.db") }
}

const run = (config: Option.Option<string>) => statusReport(config).pipe(Effect.provide(NodeFileSystem.layer))
const command = (config: Option.Option<string>, json: boolean) =>
  Effect.exit(statusCommand({ config, json }).pipe(Effect.provide(NodeFileSystem.layer)))

const noSecrets = (r: StatusReport) => {
  const json = JSON.stringify(Schema.encodeSync(StatusReport)(r))
  // --json decodes with the schema, strictly
  expect(Schema.decodeUnknownSync(StatusReport)(JSON.parse(json), { onExcessProperty: "error" })).toEqual(r)
  for (const text of [json, renderStatus(r)]) for (const s of Object.values(SECRETS)) expect(text).not.toContain(s)
}

describe("felhom-agent status", () => {
  it.scoped("a seeded host with problems: every finding listed, exit 1, no secret anywhere", () =>
    Effect.gen(function*() {
      const { stateDir, dbPath } = fresh()
      const { mkdirSync } = yield* Effect.promise(() => import("node:fs"))
      mkdirSync(stateDir, { recursive: true })
      yield* seed(dbPath)
      const daemon = yield* fakeDaemon
      daemon.set(body({ pending_signatures: [{ op: "decommission", vmid: 104, reason: "destroy needs a signature", since: "2026-11-30T10:00:00Z" }], lost_guests: [107] }))
      const config = writeConfig(stateDir, daemon.port)
      const dbBefore = readFileSync(dbPath)
      const walBefore = existsSync(`${dbPath}-wal`) ? readFileSync(`${dbPath}-wal`) : null
      const r = yield* run(config)
      noSecrets(r)
      expect(r.ok).toBe(false)
      expect(r.daemon.state).toBe("running")
      expect(r.state_db.state).toBe("ok")
      const messages = r.findings.map((f) => `${f.area}: ${f.message}`)
      expect(messages).toEqual(expect.arrayContaining([
        expect.stringMatching(/^signatures: decommission 104 waits/),
        expect.stringMatching(/^operations: create 106 .* needs an operator: compensation failed/),
        "guests: guest 105 is lost (recover it from a backup)",
        "guests: guest 107 is lost (recover it from a backup)",
        "backups: guest 102's newest backup is 72 h old (over 48 h)",
        "backups: guest 103's last backup to usb1 failed",
        "backups: guest 104 has no successful backup",
        expect.stringMatching(/^restore_tests: guest 102's last restore test failed: guest did not reach running/),
        expect.stringMatching(/^break_glass: break-glass access is OPEN until 2026-11-30T15:00:00Z \(enabled by alice\)$/)
      ]))
      // the in-flight op is listed, but with a daemon answering it is not a finding
      expect(r.operations.map((o) => [o.status, o.kind, o.vmid, o.step])).toEqual([
        ["in_flight", "backup", 101, "vzdump"],
        ["needs_operator", "create", 106, null]
      ])
      expect(messages.some((m) => m.includes("in flight"))).toBe(false)
      // 101 is well: no finding names it
      expect(messages.some((m) => / 101\b/.test(m))).toBe(false)
      const g = Object.fromEntries(r.guests.map((x) => [x.vmid, x]))
      expect(g[101]).toMatchObject({ backup_age_hours: 2, last_backup_result: "ok", restore_test_result: "pass" })
      expect(g[103]).toMatchObject({ backup_age_hours: 5, last_backup_result: "failed", last_backup_storage: "usb1" })
      expect(g[105]?.record).toBe("lost")
      expect(r.storage_targets).toEqual([{ id: "backup-dir", type: "local-dir", class: "slow", role: "vzdump-target", state: "attached", since: "2026-11-30T11:00:00Z" }])
      expect(r.break_glass).toMatchObject({ state: "open", signer: "alice", fingerprint: "SHA256:abc", reason: "support ticket 42" })
      expect(r.lost_guests).toEqual([105, 107])
      // read-only: the file is byte-identical, no journal/wal appeared beside it
      expect(readFileSync(dbPath).equals(dbBefore)).toBe(true)
      // SQLite may open an empty -wal beside a WAL-mode file for a reader; no frame is ever written to it
      const walAfter = existsSync(`${dbPath}-wal`) ? readFileSync(`${dbPath}-wal`) : null
      expect(walAfter === null || walAfter.length === 0 || (walBefore !== null && walAfter.equals(walBefore))).toBe(true)
      expect(existsSync(`${dbPath}-journal`)).toBe(false)
      // exit 1, and the human form lists findings first, one line each
      const exit = yield* command(config, false)
      expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : null).toMatchObject({ _tag: "CliFailure", code: 1 })
      const text = renderStatus(r).split("\n")
      expect(text[0]).toBe(`felhom-agent status: ${r.findings.length} finding(s)`)
      expect(text.slice(1, 1 + r.findings.length).every((l) => l.startsWith("  ! "))).toBe(true)
    }))

  it.scoped("whatever answers on the status port (a local user squatting it) cannot drive root's terminal: no control characters in the output", () =>
    Effect.gen(function*() {
      const { stateDir } = fresh()
      const daemon = yield* fakeDaemon
      // an escape sequence (OSC title, clear screen, cursor up) and a forged line in every string
      const evil = "\u001b]0;owned\u0007\u001b[2J\u001b[1A\r\n  ! all well\u009b"
      const h = body().health
      daemon.set(body({
        health: { ...h, status: "failing", version: `9.9.9${evil}`, started_at: `t${evil}` },
        last_hub_error: `boom${evil}`,
        last_hub_contact_at: `c${evil}`,
        pending_signatures: [{ op: `decommission${evil}`, vmid: 101, reason: `r${evil}`, since: `s${evil}` }]
      }))
      const config = writeConfig(stateDir, daemon.port)
      const r = yield* run(config)
      expect(r.ok).toBe(false)
      const text = renderStatus(r)
      expect(text).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/)
      // no line but the ones the report makes: each finding stays on its own line
      expect(text.split("\n").filter((l) => l.startsWith("  ! ")).length).toBe(r.findings.length)
      const exit = yield* command(config, false)
      const failure = Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : null
      expect(failure).toMatchObject({ _tag: "CliFailure", code: 1 })
      expect(String((failure as { message?: string } | null)?.message)).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/)
    }))

  it.scoped("all well: exit 0; the daemon's own health failing, stalled, no hub contact: findings", () =>
    Effect.gen(function*() {
      const { stateDir, dbPath } = fresh()
      const { mkdirSync } = yield* Effect.promise(() => import("node:fs"))
      mkdirSync(stateDir, { recursive: true })
      yield* Effect.gen(function*() {
        const journal = yield* Journal
        const protection = yield* ProtectionStore
        yield* TestClock.setTime(NOW - 3 * HOUR)
        yield* journal.markCustomer(201, "seeded")
        yield* protection.recordRun({ kind: "backup", vmid: 201, storage: "local", result: "ok", detail: "" })
        yield* TestClock.setTime(NOW)
      }).pipe(Effect.provide(Layer.mergeAll(JournalLive, ProtectionStoreLive).pipe(Layer.provideMerge(layerAt(dbPath)))), Effect.scoped)
      const daemon = yield* fakeDaemon
      const config = writeConfig(stateDir, daemon.port)
      const good = yield* run(config)
      noSecrets(good)
      expect(good.findings).toEqual([])
      expect(good.ok).toBe(true)
      expect(Exit.isSuccess(yield* command(config, true))).toBe(true)

      daemon.set(body({
        health: { ...body().health, status: "failing", checks: { loop: "failing", recovered: "ok", store: "ok", hub: "failing" } },
        watchdog: "stalled",
        last_hub_contact_at: null,
        last_hub_error: "GET /api/v1/desired-state: HTTP 503",
        cloudflared: "stopped"
      }))
      const bad = yield* run(config)
      noSecrets(bad)
      expect(bad.findings.map((f) => f.message)).toEqual([
        "health check loop is failing",
        "health check hub is failing",
        "the hub loop is stalled: systemd's watchdog will restart the daemon",
        "no hub contact since the daemon started",
        "last hub exchange failed: GET /api/v1/desired-state: HTTP 503",
        "cloudflared is not ready (the tunnel is down)"
      ])
    }))

  it.scoped("no daemon answering (refused, garbage, HTTP 500): 'not running or not answering', exit 1; in-flight ops become findings", () =>
    Effect.gen(function*() {
      const { stateDir, dbPath } = fresh()
      const { mkdirSync } = yield* Effect.promise(() => import("node:fs"))
      mkdirSync(stateDir, { recursive: true })
      yield* Effect.gen(function*() {
        const journal = yield* Journal
        yield* journal.begin({ kind: "restore-test", vmid: 301, payload: {} })
      }).pipe(Effect.provide(JournalLive.pipe(Layer.provideMerge(layerAt(dbPath)))), Effect.scoped)
      const daemon = yield* fakeDaemon
      daemon.set({ status: "ok" })
      const garbage = yield* run(writeConfig(stateDir, daemon.port))
      expect(garbage.daemon.state).toBe("not_answering")
      expect(garbage.findings[0]?.message).toMatch(/^not running or not answering \(.*not a StatusBody\)$/)
      expect(garbage.findings.some((f) => f.area === "operations" && /restore-test 301 .* in flight with no daemon answering/.test(f.message))).toBe(true)
      daemon.set(body(), 500)
      expect((yield* run(writeConfig(stateDir, daemon.port))).findings[0]?.message).toMatch(/HTTP 500/)
      // a port nobody listens on
      const closed = yield* Effect.scoped(Effect.map(fakeDaemon, (d) => d.port))
      const refused = yield* run(writeConfig(stateDir, closed))
      noSecrets(refused)
      expect(refused.findings[0]).toEqual({ area: "daemon", message: `not running or not answering (http://127.0.0.1:${closed}/status: ECONNREFUSED)` })
      const exit = yield* command(writeConfig(stateDir, closed), false)
      expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error.code : null).toBe(1)
    }))

  it.scoped("a missing state DB is a finding and is never created; a bad config is exit 2", () =>
    Effect.gen(function*() {
      const { stateDir, dbPath, root } = fresh()
      const daemon = yield* fakeDaemon
      const r = yield* run(writeConfig(stateDir, daemon.port))
      expect(r.state_db.state).toBe("missing")
      expect(r.findings).toEqual([{ area: "state_db", message: `no state database at ${dbPath} (never started, or state_dir is wrong)` }])
      expect(existsSync(stateDir)).toBe(false)
      // the status endpoint disabled: health unknown is a finding too
      const off = yield* run(writeConfig(stateDir, daemon.port, false))
      expect(off.daemon.state).toBe("not_configured")
      expect(off.findings[0]?.message).toMatch(/^status endpoint disabled/)
      // a config that does not decode: exit 2, the secret in it not echoed
      const badPath = join(root, "bad.json")
      writeFileSync(badPath, JSON.stringify({ hub: { url: "http://plain", api_key: SECRETS.hub }, surprise: true }))
      const exit = yield* command(Option.some(badPath), false)
      const failure = Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : null
      expect(failure).toBeInstanceOf(CliFailure)
      expect(failure?.code).toBe(2)
      expect(failure?.message).not.toContain(SECRETS.hub)
      expect(readdirSync(root).sort()).toEqual(["bad.json", expect.stringMatching(/^agent-/), expect.stringMatching(/^agent-/)].sort())
      expect(statSync(root).isDirectory()).toBe(true)
    }))
})
