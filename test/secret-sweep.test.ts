/**
 * Issue 8, finding 5, end to end: the PVE token secret echoed back by PVE (every text the
 * simulator's `faults.echo_headers` can reach) must appear nowhere the agent writes it: not in
 * the daemon's log, not in the state database (any table, nor the raw file and its WAL), and
 * not in anything posted to the hub (job results, host reports).
 *
 * The real control path: the daemon loop (`runDaemon`) with the production Proxmox and Hub
 * clients over the in-process PVE simulator and dev hub, a real SQLite state DB in a temp dir,
 * failing scenarios from both directions (signed jobs from the hub, reconcile of a desired
 * state), under TestClock.
 */
import { HttpClient, type HttpClientRequest } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Fiber, Layer, Logger, Queue, Ref, Schema, TestClock } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { Authz, make as makeAuthz } from "../src/layers/Authz.js"
import { hubSettings, layerFrom, proxmoxSettings } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { HubWithoutClient } from "../src/layers/Hub.js"
import { JournalLive } from "../src/layers/Journal.js"
import { ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { REASON_HEADER } from "../src/layers/PveTransport.js"
import { makeSystemdLayer } from "../src/layers/Systemd.js"
import { type DaemonState, initialState, runDaemon } from "../src/programs/daemon/loop.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { DesiredState } from "../src/schema/desired.js"
import { makeAppHttpClient, makeDevHub } from "../src/sim/hub/index.js"
import { makeSimHttpClient, makeSimPve } from "../src/sim/pve/index.js"
import { dbFile, settle } from "./engine-support.js"
import { seedWith } from "./support.js"

const HOST = "host-sweep"
const HUB_KEY = "sweep-hub-key-0123456789"
/** The marker: the PVE token secret this test's simulator accepts and echoes. */
const MARKER = "7d3e9a41-c6b2-4f85-a0d9-e2b81f5c4a6d"
/** What PVE's echo looks like up to the secret: proof the echoed texts did reach the agent. */
const ECHO = "PVEAPIToken=felhom@pve!agent="

/** Every form of the marker worth finding: whole, URL/JSON-encoded, and any 8-character run. */
const needles = (() => {
  const out = new Set([MARKER, encodeURIComponent(MARKER), JSON.stringify(MARKER)])
  for (let i = 0; i + 8 <= MARKER.length; i++) out.add(MARKER.slice(i, i + 8))
  return [...out].map((n) => n.toLowerCase())
})()
const found = (where: string, text: string): ReadonlyArray<string> => {
  const lower = text.toLowerCase()
  return needles.filter((n) => lower.includes(n)).map((n) => `${where}: ${n}`)
}

const advance = (seconds: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < seconds * 2; i++) {
      yield* settle
      yield* TestClock.adjust("500 millis")
    }
    yield* settle
  })

describe("the PVE token secret never leaves the transport boundary (issue 8, finding 5)", () => {
  it.scoped("failing jobs and a failing reconcile with PVE echoing the header: nothing in logs, SQLite or what the hub receives", () =>
    Effect.gen(function*() {
      const path = dbFile()
      const logs: Array<string> = []
      const sentToHub: Array<string> = []

      yield* Effect.scoped(Effect.gen(function*() {
        const seed = yield* seedWith({
          tokens: [{ tokenid: "felhom@pve!agent", secret: MARKER, privsep: true }],
          faults: { echo_headers: ["message", "reason", "params", "task"], task_failure_rate: 1, seed: 11 }
        })
        const sim = yield* makeSimPve(seed)
        expect(sim.tokenSecret).toBe(MARKER)
        const hub = yield* makeDevHub({ apiKeys: { [HUB_KEY]: HOST }, pollIntervalSeconds: 60 })
        const file = Schema.decodeUnknownSync(AgentConfigFile)({
          host_id: HOST,
          proxmox: { url: "https://127.0.0.1:8006", token_id: sim.tokenId, token_secret: sim.tokenSecret, node: "pve", tls: { insecure_skip_verify: true } },
          hub: { url: "https://hub.example.invalid", api_key: HUB_KEY },
          authz: { signers: [] }
        })
        // everything the agent sends the hub, recorded before the dev hub reads it
        const hubApp = makeAppHttpClient(hub.app)
        const recordingHub = HttpClient.make((request: HttpClientRequest.HttpClientRequest) => {
          const body = request.body
          if (body._tag === "Uint8Array") sentToHub.push(new TextDecoder().decode(body.body))
          else if (body._tag === "Raw" && typeof body.body === "string") sentToHub.push(body.body)
          return hubApp.execute(request)
        })
        const db = layerAt(path)
        const services = Layer.mergeAll(
          ProxmoxWithoutClient.pipe(
            Layer.provide(Layer.succeed(HttpClient.HttpClient, makeSimHttpClient(sim, { reasonHeader: REASON_HEADER }))),
            Layer.provide(proxmoxSettings(file.proxmox!))
          ),
          HubWithoutClient.pipe(Layer.provide(Layer.succeed(HttpClient.HttpClient, recordingHub)), Layer.provide(hubSettings(file.hub!))),
          JournalLive.pipe(Layer.provide(db)),
          Layer.effect(Authz, makeAuthz({ hostId: HOST, signers: [], clockSkewSeconds: 60 })).pipe(Layer.provide(db)),
          GuestQueue.layer(4),
          makeSystemdLayer({ systemctl: "/bin/false", systemdNotify: "/bin/false" }).pipe(Layer.provide(NodeContext.layer))
        ).pipe(Layer.provideMerge(layerFrom(file)), Layer.orDie)
        const capture = Logger.replace(
          Logger.defaultLogger,
          Logger.make(({ annotations, cause, logLevel, message }) => {
            logs.push([
              logLevel.label,
              ...(Array.isArray(message) ? message : [message]).map((m) => (typeof m === "string" ? m : JSON.stringify(m))),
              Cause.isEmpty(cause) ? "" : Cause.pretty(cause),
              JSON.stringify([...annotations])
            ].join(" "))
          })
        )

        // failing signed jobs from the hub: a backup whose task fails (exitstatus and log echo the
        // header), and a backup of a guest that does not exist (500 whose message, reason phrase
        // and parameter errors echo it)
        yield* hub.enqueueJob(HOST, { id: "sweep-backup-100", op: "force-backup", guest_id: 100 as never, params: { storage: "local" } } as never)
        yield* hub.enqueueJob(HOST, { id: "sweep-backup-555", op: "force-backup", guest_id: 555 as never, params: { storage: "local" } } as never)
        // a desired state whose reconcile fails: a new guest from the golden archive (the restore task fails)
        const golden = (yield* sim.storageContent("local")).find((b) => b["vmid"] === 9000 && b["content"] === "backup")!
        yield* hub.setDesired(HOST, Schema.decodeUnknownSync(DesiredState)({
          generation: 0,
          provisioning: { golden_archive: golden["volid"], storage: "local-lvm" },
          guests: [
            { vmid: 100, hostname: "cust-alpha", cores: 4, memory_bytes: 2048 * 1048576, swap_mib: 512, rootfs_gib: 16, power: "running", description: "felhom customer guest alpha", tags: ["customer", "felhom"] },
            { vmid: 101, hostname: "cust-beta", memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "stopped", description: "", tags: [] },
            { vmid: 102, hostname: "ops-tools", memory_bytes: 512 * 1048576, swap_mib: 512, rootfs_gib: 4, power: "stopped", description: "", tags: [] },
            { vmid: 103, hostname: "cust-new", memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "", tags: ["customer"] }
          ]
        }))

        const poke = yield* Queue.sliding<void>(1)
        const state = yield* Ref.make<DaemonState>(initialState)
        const fiber = yield* Effect.forkScoped(runDaemon({ poke, state }).pipe(Effect.provide(services), Effect.provide(capture)))
        yield* advance(125)
        // then PVE also fails reads at random, echoing the header in every answer
        yield* sim.setFaults({ http_error_rate: 0.5 })
        yield* advance(125)
        yield* Fiber.interrupt(fiber)

        // the scenarios did fail, and PVE's texts did reach the agent (else this test proves nothing)
        const results = yield* hub.jobResults(HOST)
        expect(results.map((r) => [r.result.id, r.result.status])).toEqual([["sweep-backup-100", "failed"], ["sweep-backup-555", "failed"]])
        expect(results.some((r) => r.result.reason.includes(ECHO))).toBe(true)
        expect(logs.some((l) => l.includes(ECHO))).toBe(true)
      }))

      // the daemon's scope is closed: the database is closed and its WAL checkpointed or left on disk
      const leaks: Array<string> = []
      logs.forEach((l, i) => leaks.push(...found(`log line ${i}`, l)))
      sentToHub.forEach((b, i) => leaks.push(...found(`hub request ${i}`, b)))
      // the raw bytes first (before anything opens the file again), then every row of every table
      for (const suffix of ["", "-wal", "-journal"]) {
        if (existsSync(path + suffix)) leaks.push(...found(`raw ${path}${suffix}`, readFileSync(path + suffix).toString("latin1")))
      }
      const dump = yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const tables = yield* sql<{ name: string }>`SELECT name FROM sqlite_master WHERE type = 'table'`
        return yield* Effect.forEach(tables, ({ name }) =>
          Effect.map(sql.unsafe<Record<string, unknown>>(`SELECT * FROM "${name.replace(/"/g, "\"\"")}"`), (rows) => [name, rows] as const))
      }).pipe(Effect.provide(SqliteClient.layer({ filename: path, readonly: true })), Effect.orDie)
      expect(dump.length).toBeGreaterThan(0)
      for (const [name, rows] of dump) leaks.push(...found(`table ${name}`, JSON.stringify(rows)))
      expect(JSON.stringify(dump)).toContain(ECHO) // the failures (and PVE's echo) were journaled
      expect(leaks).toEqual([])
    }), 120_000)
})
