import { FileSystem, HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { request as httpsRequest } from "node:https"
import { Effect, Either, Exit, Fiber, Option, TestClock } from "effect"
import { parseUpidParts } from "../src/schema/ids.js"
import {
  decodeSeed,
  defaultSeed,
  defaultSeedJson,
  FELHOM_AGENT_ROLE,
  layerSimHttpClient,
  loadSeed,
  makeSimHttpClient,
  makeSimPve,
  serveSimPve,
  simCertPem,
  simKeyPem,
  type SimPve,
  type SimPveFaults
} from "../src/sim/pve/index.js"

// ---------------------------------------------------------------------------------------------
// helpers

interface Body {
  readonly data: unknown
  readonly message?: string
  readonly errors?: Record<string, string>
  readonly total?: number
}
interface Res {
  readonly status: number
  readonly reason: string
  readonly body: Body
}

const REASON = "x-sim-reason"
const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
const TOKEN = "felhom@pve!agent"

type Method = "GET" | "POST" | "PUT" | "DELETE"

const call = (
  sim: SimPve,
  method: Method,
  path: string,
  opts: { readonly form?: Record<string, string>; readonly json?: unknown; readonly auth?: string | null } = {}
) =>
  Effect.gen(function*() {
    let req = HttpClientRequest.make(method)(`https://pve.sim:8006/api2/json${path}`)
    const auth = opts.auth === undefined ? sim.authorization : opts.auth
    if (auth !== null) req = HttpClientRequest.setHeader(req, "Authorization", auth)
    if (opts.form !== undefined) req = HttpClientRequest.bodyUrlParams(req, opts.form)
    if (opts.json !== undefined) req = HttpClientRequest.bodyUnsafeJson(req, opts.json)
    const res = yield* makeSimHttpClient(sim, { reasonHeader: REASON }).execute(req)
    const body = (yield* res.json) as Body
    return { status: res.status, reason: res.headers[REASON] ?? "", body } satisfies Res
  }).pipe(Effect.orDie)

const ok = (r: Res): unknown => {
  assert.strictEqual(r.status, 200, `expected 200, got ${r.status} ${r.reason}`)
  return r.body.data
}

const upidOf = (r: Res): string => {
  const data = ok(r)
  assert.isString(data)
  assert.isTrue(Either.isRight(parseUpidParts(String(data))), `not a UPID: ${String(data)}`)
  return String(data)
}

const taskPath = (upid: string, what: "status" | "log") => `/nodes/pve/tasks/${encodeURIComponent(upid)}/${what}`

const taskStatus = (sim: SimPve, upid: string) =>
  Effect.map(call(sim, "GET", taskPath(upid, "status")), (r) => ok(r) as Record<string, unknown>)

const taskLog = (sim: SimPve, upid: string) =>
  Effect.map(call(sim, "GET", `${taskPath(upid, "log")}?limit=0`), (r) => (ok(r) as Array<{ n: number; t: string }>).map((l) => l.t))

/** Lets simulated time pass until the task stops (a minute at a time, up to an hour). */
const finish = (sim: SimPve, upid: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 60; i++) {
      const st = yield* taskStatus(sim, upid)
      if (st["status"] === "stopped") return st
      yield* TestClock.adjust("1 minute")
    }
    return assert.fail(`task ${upid} never stopped`)
  })

const setup = (faults?: Partial<SimPveFaults>) =>
  Effect.flatMap(defaultSeed, (seed) => makeSimPve(seed, { faults, tlsFingerprint: "AA:BB" }))

const guest = (sim: SimPve, vmid: number) =>
  Effect.map(sim.guest(vmid), (o) => Option.getOrElse(o, () => assert.fail(`guest ${vmid} is gone`)))

// ---------------------------------------------------------------------------------------------

describe("sim-pve: seed and material", () => {
  it.effect("the default seed decodes and carries the FelhomAgent role", () =>
    Effect.gen(function*() {
      const seed = yield* defaultSeed
      assert.sameMembers([...(seed.roles["FelhomAgent"] ?? [])], [...FELHOM_AGENT_ROLE])
      assert.strictEqual(seed.tokens[0]?.tokenid, TOKEN)
      assert.isTrue(seed.version.version.startsWith("9."))
    }))

  it.effect("loadSeed reads configs/sim/pve.json like the embedded copy", () =>
    Effect.gen(function*() {
      const fromFile = yield* loadSeed("configs/sim/pve.json")
      assert.deepStrictEqual(fromFile, yield* defaultSeed)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it.effect("a bad seed is one clear typed error", () =>
    Effect.gen(function*() {
      const json = structuredClone(defaultSeedJson) as { roles: Record<string, Array<string>>; acl: Array<{ roles: Array<string> }> }
      json.roles["FelhomAgent"] = [...(json.roles["FelhomAgent"] ?? []), "VM.Monitor"]
      const e1 = yield* Effect.flip(decodeSeed(json, "test"))
      assert.strictEqual(e1._tag, "SimPveSeedError")
      assert.include(e1.message, "unknown PVE 9 privilege 'VM.Monitor'")
      const json2 = structuredClone(defaultSeedJson) as { acl: Array<{ roles: Array<string> }> }
      json2.acl[0]!.roles = ["Nope"]
      const e2 = yield* Effect.flip(decodeSeed(json2, "test"))
      assert.include(e2.message, "role 'Nope' is not defined")
    }))

  it.effect("the embedded TLS material matches configs/sim/tls", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      assert.strictEqual((yield* fs.readFileString("configs/sim/tls/pve-sim.crt")).trim(), simCertPem.trim())
      assert.strictEqual((yield* fs.readFileString("configs/sim/tls/pve-sim.key")).trim(), simKeyPem.trim())
    }).pipe(Effect.provide(NodeFileSystem.layer)))
})

describe("sim-pve: envelopes, auth, errors", () => {
  it.scoped("success envelopes and PVE's number/string typing", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const version = ok(yield* call(sim, "GET", "/version")) as Record<string, unknown>
      assert.deepStrictEqual(Object.keys(version).sort(), ["release", "repoid", "version"])
      const nodes = ok(yield* call(sim, "GET", "/nodes")) as Array<Record<string, unknown>>
      assert.strictEqual(nodes[0]?.["ssl_fingerprint"], "AA:BB")
      assert.strictEqual(nodes[0]?.["id"], "node/pve")
      const status = ok(yield* call(sim, "GET", "/nodes/pve/status")) as Record<string, unknown>
      assert.deepStrictEqual(status["loadavg"], ["0.21", "0.27", "0.25"])
      const list = ok(yield* call(sim, "GET", "/nodes/pve/lxc")) as Array<Record<string, unknown>>
      assert.deepStrictEqual(list.map((g) => g["vmid"]), [100, 101, 102])
      assert.strictEqual(list[0]?.["status"], "running")
      assert.strictEqual(list[2]?.["cpus"], "1.5")
      const cfg = ok(yield* call(sim, "GET", "/nodes/pve/lxc/100/config")) as Record<string, unknown>
      assert.strictEqual(cfg["features"], "keyctl=1,nesting=1")
      assert.strictEqual(cfg["memory"], 2048)
      assert.match(String(cfg["digest"]), /^[0-9a-f]{40}$/)
      const cur = ok(yield* call(sim, "GET", "/nodes/pve/lxc/100/status/current")) as Record<string, unknown>
      assert.deepStrictEqual(cur["ha"], { managed: 0 })
      assert.strictEqual(cur["vmid"], 100)
      assert.strictEqual(ok(yield* call(sim, "GET", "/cluster/nextid")), "103")
      const perms = ok(yield* call(sim, "GET", "/access/permissions")) as Record<string, Record<string, number>>
      assert.strictEqual(perms["/"]?.["VM.Allocate"], 1)
      assert.strictEqual(Object.keys(perms["/vms"] ?? {}).length, 16)
      const storages = ok(yield* call(sim, "GET", "/nodes/pve/storage?content=backup")) as Array<Record<string, unknown>>
      assert.deepStrictEqual(storages.map((s) => [s["storage"], s["content"], s["active"]]), [["local", "backup,iso,vztmpl", 1]])
    }))

  it.scoped("the lxc list vmid is a string with the pre-8.2 quirk", () =>
    Effect.gen(function*() {
      const seed = yield* defaultSeed
      const sim = yield* makeSimPve({ ...seed, quirks: { ...seed.quirks, vmid_as_string: true } })
      const list = ok(yield* call(sim, "GET", "/nodes/pve/lxc")) as Array<Record<string, unknown>>
      assert.strictEqual(list[0]?.["vmid"], "100")
    }))

  it.scoped("errors: 500 without 404, reason phrase = first line, message only on >= 8.3", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const missing = yield* call(sim, "GET", "/nodes/pve/lxc/999/status/current")
      assert.strictEqual(missing.status, 500)
      assert.strictEqual(missing.reason, "Configuration file 'nodes/pve/lxc/999.conf' does not exist")
      assert.deepStrictEqual(missing.body, { data: null, message: "Configuration file 'nodes/pve/lxc/999.conf' does not exist\n" })
      const seed = yield* defaultSeed
      const old = yield* makeSimPve({ ...seed, quirks: { ...seed.quirks, error_message_body: false } })
      const oldMissing = yield* call(old, "GET", "/nodes/pve/lxc/999/config")
      assert.deepStrictEqual(oldMissing.body, { data: null })
      assert.strictEqual(oldMissing.reason, "Configuration file 'nodes/pve/lxc/999.conf' does not exist")
    }))

  it.scoped("501 for unknown paths and methods", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const r = yield* call(sim, "GET", "/nodes/pve/qemu")
      assert.strictEqual(r.status, 501)
      assert.strictEqual(r.body.message, "Method 'GET /nodes/pve/qemu' not implemented\n")
      const m = yield* call(sim, "POST", "/version")
      assert.strictEqual(m.reason, "Method 'POST /version' not implemented")
    }))

  it.scoped("401 for a missing or wrong token", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const none = yield* call(sim, "GET", "/version", { auth: null })
      assert.strictEqual(none.status, 401)
      const wrong = yield* call(sim, "GET", "/version", { auth: `PVEAPIToken=${TOKEN}=00000000-0000-0000-0000-000000000000` })
      assert.strictEqual(wrong.status, 401)
      assert.strictEqual(wrong.reason, "authentication failure")
      assert.strictEqual(wrong.body.data, null)
      // the value is URL-unescaped and split at the last '='
      const escaped = yield* call(sim, "GET", "/version", { auth: `PVEAPIToken=${encodeURIComponent(TOKEN)}=${sim.tokenSecret}` })
      assert.strictEqual(escaped.status, 200)
    }))

  it.scoped("403 with PVE's text after a privilege is revoked", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      yield* sim.revoke(TOKEN, "/vms/100", ["VM.Allocate"])
      const del = yield* call(sim, "DELETE", "/nodes/pve/lxc/100?force=1")
      assert.strictEqual(del.status, 403)
      assert.strictEqual(del.reason, "Permission check failed (/vms/100, VM.Allocate)")
      assert.strictEqual(del.body.message, "Permission check failed (/vms/100, VM.Allocate)\n")
      // other guests keep it; the user side alone does not grant it back
      const perms = ok(yield* call(sim, "GET", "/access/permissions?path=/vms/101")) as Record<string, Record<string, number>>
      assert.strictEqual(perms["/vms/101"]?.["VM.Allocate"], 1)
      // any-of checks list every privilege with '|'
      yield* sim.revoke(TOKEN, "/vms/101", ["VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options"])
      const put = yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { memory: "2048" } })
      assert.strictEqual(
        put.reason,
        "Permission check failed (/vms/101, VM.Config.Disk|VM.Config.CPU|VM.Config.Memory|VM.Config.Network|VM.Config.Options)"
      )
      // the guest disappears from the list without VM.Audit
      yield* sim.revoke(TOKEN, "/vms/102", ["VM.Audit"])
      const list = ok(yield* call(sim, "GET", "/nodes/pve/lxc")) as Array<Record<string, unknown>>
      assert.deepStrictEqual(list.map((g) => g["vmid"]), [100, 101])
      // granting on the token alone is not enough: privsep intersects with the user
      yield* sim.revoke("felhom@pve", "/vms/102", ["VM.Audit"])
      yield* sim.grant(TOKEN, "/vms/102", ["VM.Audit"])
      assert.strictEqual((ok(yield* call(sim, "GET", "/nodes/pve/lxc")) as Array<unknown>).length, 2)
      yield* sim.grant("felhom@pve", "/vms/102", ["VM.Audit"])
      assert.strictEqual((ok(yield* call(sim, "GET", "/nodes/pve/lxc")) as Array<unknown>).length, 3)
    }))

  it.scoped("form booleans must be 1/0; JSON literals are accepted; 400 errors map", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const form = yield* call(sim, "POST", "/nodes/pve/lxc", {
        form: { vmid: "130", ostemplate: GOLDEN, restore: "true", storage: "local-lvm" }
      })
      assert.strictEqual(form.status, 400)
      assert.strictEqual(form.reason, "Parameter verification failed.")
      assert.deepStrictEqual(form.body.errors, { restore: "type check ('boolean') failed - got 'true'" })
      const json = yield* call(sim, "POST", "/nodes/pve/lxc", {
        json: { vmid: 130, ostemplate: GOLDEN, restore: true, storage: "local-lvm" }
      })
      upidOf(json)
      const bad = yield* call(sim, "GET", "/nodes/pve/lxc/abc/config")
      assert.deepStrictEqual(bad.body.errors, { vmid: "type check ('integer') failed - got 'abc'" })
      const extra = yield* call(sim, "POST", "/nodes/pve/lxc/100/snapshot", { form: { snapname: "s1", vmstate: "1" } })
      assert.deepStrictEqual(extra.body.errors, {
        vmstate: "property is not defined in schema and the schema does not allow additional properties"
      })
      const missing = yield* call(sim, "PUT", "/nodes/pve/lxc/100/resize", { form: { disk: "rootfs" } })
      assert.deepStrictEqual(missing.body.errors, { size: "property is missing and it is not optional" })
    }))

  it.scoped("nextid is a string; a taken vmid is a 400 with errors.vmid", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      assert.strictEqual(ok(yield* call(sim, "GET", "/cluster/nextid?vmid=555")), "555")
      const taken = yield* call(sim, "GET", "/cluster/nextid?vmid=100")
      assert.strictEqual(taken.status, 400)
      assert.deepStrictEqual(taken.body.errors, { vmid: "VM 100 already exists" })
    }))
})

describe("sim-pve: tasks and locks", () => {
  it.scoped("a task runs on the Clock: running, then stopped with TASK OK", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const upid = upidOf(yield* call(sim, "POST", "/nodes/pve/lxc/101/status/start"))
      const parts = Either.getOrThrow(parseUpidParts(upid))
      assert.strictEqual(parts.type, "vzstart")
      assert.strictEqual(parts.id, "101")
      assert.strictEqual(parts.user, TOKEN)
      const st1 = yield* taskStatus(sim, upid)
      assert.strictEqual(st1["status"], "running")
      assert.strictEqual(st1["user"], "felhom@pve")
      assert.strictEqual(st1["tokenid"], "agent")
      assert.notProperty(st1, "exitstatus")
      yield* TestClock.adjust("2 seconds")
      assert.strictEqual((yield* taskStatus(sim, upid))["status"], "running")
      yield* TestClock.adjust("2 seconds")
      const st2 = yield* taskStatus(sim, upid)
      assert.strictEqual(st2["status"], "stopped")
      assert.strictEqual(st2["exitstatus"], "OK")
      const log = yield* call(sim, "GET", taskPath(upid, "log"))
      assert.deepStrictEqual(log.body, { data: [{ n: 1, t: "TASK OK" }], total: 1 })
      assert.strictEqual((yield* guest(sim, 101)).status, "running")
      const listed = yield* call(sim, "GET", "/nodes/pve/tasks?source=all&vmid=101")
      assert.strictEqual(listed.body.total, 1)
      assert.deepInclude((listed.body.data as Array<Record<string, unknown>>)[0], { upid, status: "OK", type: "vzstart" })
      const again = yield* call(sim, "POST", "/nodes/pve/lxc/101/status/start")
      assert.strictEqual(again.reason, "CT 101 already running")
      const notRunning = yield* call(sim, "POST", "/nodes/pve/lxc/102/status/stop")
      assert.strictEqual(notRunning.reason, "CT 102 not running")
    }))

  it.scoped("vzdump holds lock: backup; conflicting writes get CT is locked; the archive lands in storage", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      yield* TestClock.adjust("1 hour")
      const upid = upidOf(
        yield* call(sim, "POST", "/nodes/pve/vzdump", {
          form: { vmid: "101", storage: "local", mode: "snapshot", compress: "zstd", "notes-template": "{{guestname}} manual" }
        })
      )
      assert.strictEqual(Either.getOrThrow(parseUpidParts(upid)).id, "101")
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* guest(sim, 101)).lock, "backup")
      const put = yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { memory: "1536" } })
      assert.strictEqual(put.status, 500)
      assert.strictEqual(put.reason, "CT is locked (backup)")
      const listed = ok(yield* call(sim, "GET", "/nodes/pve/lxc")) as Array<Record<string, unknown>>
      assert.strictEqual(listed.find((g) => g["vmid"] === 101)?.["lock"], "backup")
      const st = yield* finish(sim, upid)
      assert.strictEqual(st["exitstatus"], "OK")
      const log = yield* taskLog(sim, upid)
      assert.include(log[0], "INFO: starting new backup job: vzdump 101")
      assert.include(log.join("\n"), "INFO: creating vzdump archive '/var/lib/vz/dump/vzdump-lxc-101-1970_01_01-01_00_00.tar.zst'")
      assert.strictEqual(log[log.length - 2], "INFO: Backup job finished successfully")
      assert.strictEqual(log[log.length - 1], "TASK OK")
      assert.isUndefined((yield* guest(sim, 101)).lock)
      const content = ok(yield* call(sim, "GET", "/nodes/pve/storage/local/content?content=backup&vmid=101")) as Array<Record<string, unknown>>
      assert.strictEqual(content.length, 1)
      assert.deepInclude(content[0], {
        volid: "local:backup/vzdump-lxc-101-1970_01_01-01_00_00.tar.zst",
        content: "backup",
        format: "tar.zst",
        subtype: "lxc",
        vmid: 101,
        ctime: 3600,
        notes: "cust-beta manual"
      })
      assert.strictEqual(ok(yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { memory: "1536" } })), null)
      // the archive holds the config as it was: restore it under a new id
      const r = upidOf(yield* call(sim, "POST", "/nodes/pve/lxc", {
        form: { vmid: "150", ostemplate: String(content[0]?.["volid"]), restore: "1", storage: "local-lvm" }
      }))
      assert.strictEqual((yield* finish(sim, r))["exitstatus"], "OK")
      const restored = yield* guest(sim, 150)
      assert.strictEqual(restored.config["memory"], 1024)
      assert.strictEqual(restored.config["hostname"], "cust-beta")
    }))

  it.scoped("stopping a task (DELETE .../tasks/{upid}) ends it; vzdump clears its lock", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const upid = upidOf(yield* call(sim, "POST", "/nodes/pve/vzdump", { form: { vmid: "100", storage: "local", compress: "zstd" } }))
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* guest(sim, 100)).lock, "backup")
      assert.strictEqual(ok(yield* call(sim, "DELETE", `/nodes/pve/tasks/${encodeURIComponent(upid)}`)), null)
      const st = yield* finish(sim, upid)
      assert.strictEqual(st["exitstatus"], "interrupted by signal")
      assert.isUndefined((yield* guest(sim, 100)).lock)
    }))

  it.scoped("vzdump answers OK when no guest is local, and refuses root-only options", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      assert.strictEqual(ok(yield* call(sim, "POST", "/nodes/pve/vzdump", { form: { vmid: "555", storage: "local" } })), "OK")
      const root = yield* call(sim, "POST", "/nodes/pve/vzdump", { form: { vmid: "100", dumpdir: "/tmp" } })
      assert.deepStrictEqual(root.body.errors, { dumpdir: "Only root may set this option." })
      const wrong = upidOf(yield* call(sim, "POST", "/nodes/pve/vzdump", { form: { vmid: "100", storage: "local-lvm" } }))
      const st = yield* finish(sim, wrong)
      assert.strictEqual(st["exitstatus"], "can't use storage 'local-lvm' for backups - wrong content type")
    }))

  it.scoped("snapshot lock during the task; snapshot, rollback, delete", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const snap = upidOf(yield* call(sim, "POST", "/nodes/pve/lxc/100/snapshot", { form: { snapname: "before", description: "pre" } }))
      yield* TestClock.adjust("500 millis")
      assert.strictEqual((yield* guest(sim, 100)).lock, "snapshot")
      const conflict = yield* call(sim, "PUT", "/nodes/pve/lxc/100/config", { form: { cores: "4" } })
      assert.strictEqual(conflict.reason, "CT is locked (snapshot)")
      assert.strictEqual((yield* finish(sim, snap))["exitstatus"], "OK")
      const snaps = ok(yield* call(sim, "GET", "/nodes/pve/lxc/100/snapshot")) as Array<Record<string, unknown>>
      assert.deepStrictEqual(snaps.map((s) => s["name"]), ["before", "current"])
      assert.deepInclude(snaps[1], { description: "You are here!", running: 1, parent: "before" })
      assert.include((yield* taskLog(sim, snap)).join("\n"), `Logical volume "snap_vm-100-disk-0_before" created.`)

      assert.strictEqual(ok(yield* call(sim, "PUT", "/nodes/pve/lxc/100/config", { form: { memory: "4096", delete: "tags" } })), null)
      const dup = upidOf(yield* call(sim, "POST", "/nodes/pve/lxc/100/snapshot", { form: { snapname: "before" } }))
      assert.strictEqual((yield* finish(sim, dup))["exitstatus"], "snapshot name 'before' already used")
      const reserved = yield* call(sim, "POST", "/nodes/pve/lxc/100/snapshot", { form: { snapname: "vzdump" } })
      assert.strictEqual(reserved.reason, "unable to use snapshot name 'vzdump' (reserved name)")

      const rb = upidOf(yield* call(sim, "POST", "/nodes/pve/lxc/100/snapshot/before/rollback"))
      assert.strictEqual((yield* finish(sim, rb))["exitstatus"], "OK")
      const after = yield* guest(sim, 100)
      assert.strictEqual(after.config["memory"], 2048)
      assert.strictEqual(after.config["tags"], "customer;felhom")
      assert.strictEqual(after.status, "stopped")

      const missing = upidOf(yield* call(sim, "DELETE", "/nodes/pve/lxc/100/snapshot/nope"))
      assert.strictEqual((yield* finish(sim, missing))["exitstatus"], "snapshot 'nope' does not exist")
      const del = upidOf(yield* call(sim, "DELETE", "/nodes/pve/lxc/100/snapshot/before"))
      assert.strictEqual((yield* finish(sim, del))["exitstatus"], "OK")
      const left = ok(yield* call(sim, "GET", "/nodes/pve/lxc/100/snapshot")) as Array<Record<string, unknown>>
      assert.deepStrictEqual(left, [{ name: "current", description: "You are here!", digest: left[0]?.["digest"], running: 0 }])
      const cfgErr = yield* call(sim, "GET", "/nodes/pve/lxc/100/config?snapshot=before")
      assert.strictEqual(cfgErr.reason, "snapshot 'before' does not exist")
    }))

  it.scoped("PUT config is synchronous (null), checks the digest and per-key root-only rules", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const cfg = ok(yield* call(sim, "GET", "/nodes/pve/lxc/101/config")) as Record<string, unknown>
      const stale = yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { cores: "2", digest: "0".repeat(40) } })
      assert.strictEqual(stale.reason, "detected modified configuration - file changed by other user? Try again.")
      assert.strictEqual(
        ok(yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { cores: "2", digest: String(cfg["digest"]) } })),
        null
      )
      const keyctl = yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { features: "nesting=1" } })
      assert.strictEqual(keyctl.status, 403)
      assert.strictEqual(keyctl.reason, "Permission check failed (changing feature flags (except nesting) is only allowed for root@pam)")
      const bind = yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { mp0: "/srv/data,mp=/data" } })
      assert.strictEqual(bind.reason, "Permission check failed (mount point type bind is only allowed for root@pam)")
      const none = yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: {} })
      assert.strictEqual(none.reason, "no options specified")
      assert.strictEqual(ok(yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { mp0: "local-lvm:2,mp=/data,backup=0" } })), null)
      const g = yield* guest(sim, 101)
      assert.strictEqual(g.config["mp0"], "local-lvm:vm-101-disk-1,mp=/data,backup=0,size=2G")
      assert.strictEqual(g.config["cores"], 2)
    }))

  it.scoped("resize grows rootfs in a task; shrinking is refused before the task", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const shrink = yield* call(sim, "PUT", "/nodes/pve/lxc/101/resize", { form: { disk: "rootfs", size: "4G" } })
      assert.strictEqual(shrink.reason, "unable to shrink disk size")
      const up = upidOf(yield* call(sim, "PUT", "/nodes/pve/lxc/101/resize", { form: { disk: "rootfs", size: "+2G" } }))
      assert.strictEqual((yield* finish(sim, up))["exitstatus"], "OK")
      assert.strictEqual((yield* guest(sim, 101)).config["rootfs"], "local-lvm:vm-101-disk-0,size=10G")
      assert.include((yield* taskLog(sim, up)).join("\n"), "successfully resized")
    }))

  it.scoped("destroy: protection and running checks before the task, volumes gone after", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      assert.strictEqual((yield* call(sim, "DELETE", "/nodes/pve/lxc/102")).reason, "can't remove CT 102 - protection mode enabled")
      assert.strictEqual((yield* call(sim, "DELETE", "/nodes/pve/lxc/100")).reason, "unable to destroy CT 100 - container is running")
      const upid = upidOf(yield* call(sim, "DELETE", "/nodes/pve/lxc/101"))
      assert.strictEqual((yield* finish(sim, upid))["exitstatus"], "OK")
      assert.isTrue(Option.isNone(yield* sim.guest(101)))
      const content = yield* sim.storageContent("local-lvm")
      assert.notInclude(content.map((c) => c["volid"]), "local-lvm:vm-101-disk-0")
      assert.include((yield* taskLog(sim, upid)).join("\n"), `Logical volume "vm-101-disk-0" successfully removed.`)
    }))
})

describe("sim-pve: restore", () => {
  it.scoped("restore from the golden archive keeps features (keyctl survives a token restore)", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const upid = upidOf(
        yield* call(sim, "POST", "/nodes/pve/lxc", {
          form: { vmid: "120", ostemplate: GOLDEN, restore: "1", storage: "local-lvm", unique: "1", hostname: "cust-gamma", cores: "1" }
        })
      )
      // the id is reserved with lock: create while the task runs
      const during = ok(yield* call(sim, "GET", "/nodes/pve/lxc/120/status/current")) as Record<string, unknown>
      assert.strictEqual(during["lock"], "create")
      const again = yield* call(sim, "POST", "/nodes/pve/lxc", { form: { vmid: "120", ostemplate: GOLDEN, restore: "1" } })
      assert.strictEqual(again.reason, "CT 120 already exists on node 'pve'")
      assert.strictEqual((yield* finish(sim, upid))["exitstatus"], "OK")
      const log = yield* taskLog(sim, upid)
      assert.strictEqual(log[0], `recovering backed-up configuration from '${GOLDEN}'`)
      assert.include(log, `restoring '${GOLDEN}' now..`)
      assert.include(log, "merging backed-up and given configuration..")
      const cfg = ok(yield* call(sim, "GET", "/nodes/pve/lxc/120/config")) as Record<string, unknown>
      assert.strictEqual(cfg["features"], "keyctl=1,nesting=1")
      assert.strictEqual(cfg["hostname"], "cust-gamma")
      assert.strictEqual(cfg["cores"], 1)
      assert.strictEqual(cfg["memory"], 1024)
      assert.strictEqual(cfg["unprivileged"], 1)
      assert.strictEqual(cfg["rootfs"], "local-lvm:vm-120-disk-0,size=4G")
      assert.notInclude(String(cfg["net0"]), "BC:24:11:90:00:00")
      assert.notProperty(cfg, "lock")
    }))

  it.scoped("restore pre-task errors and the root-only features rule", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const exists = yield* call(sim, "POST", "/nodes/pve/lxc", { form: { vmid: "100", ostemplate: GOLDEN, restore: "1" } })
      assert.strictEqual(exists.reason, "CT 100 already exists on node 'pve'")
      const running = yield* call(sim, "POST", "/nodes/pve/lxc", { form: { vmid: "100", ostemplate: GOLDEN, restore: "1", force: "1" } })
      assert.strictEqual(running.reason, "can't overwrite running container")
      const dir = yield* call(sim, "POST", "/nodes/pve/lxc", { form: { vmid: "121", ostemplate: GOLDEN, restore: "1" } })
      assert.deepStrictEqual(dir.body.errors, { storage: "storage 'local' does not support container directories" })
      const keyctl = yield* call(sim, "POST", "/nodes/pve/lxc", {
        form: { vmid: "121", ostemplate: GOLDEN, restore: "1", storage: "local-lvm", features: "keyctl=1,nesting=1" }
      })
      assert.strictEqual(keyctl.status, 403)
      assert.strictEqual(keyctl.body.message, "Permission check failed (changing feature flags (except nesting) is only allowed for root@pam)\n")
      yield* sim.revoke(TOKEN, "/vms/121", ["VM.Allocate"])
      const alloc = yield* call(sim, "POST", "/nodes/pve/lxc", { form: { vmid: "121", ostemplate: GOLDEN, restore: "1", storage: "local-lvm" } })
      assert.strictEqual(alloc.reason, "Permission check failed")
    }))

  it.scoped("backups of guests without VM.Backup are hidden and cannot be restored", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const before = ok(yield* call(sim, "GET", "/nodes/pve/storage/local/content?content=backup")) as Array<Record<string, unknown>>
      assert.include(before.map((c) => c["volid"]), GOLDEN)
      yield* sim.revoke(TOKEN, "/vms/9000", ["VM.Backup"])
      // Datastore.Allocate on the storage still shows everything
      const stillAll = ok(yield* call(sim, "GET", "/nodes/pve/storage/local/content?content=backup")) as Array<Record<string, unknown>>
      assert.include(stillAll.map((c) => c["volid"]), GOLDEN)
      yield* sim.revoke(TOKEN, "/storage/local", ["Datastore.Allocate"])
      const after = ok(yield* call(sim, "GET", "/nodes/pve/storage/local/content?content=backup")) as Array<Record<string, unknown>>
      assert.notInclude(after.map((c) => c["volid"]), GOLDEN)
      assert.strictEqual(after.length, 1)
      const restore = yield* call(sim, "POST", "/nodes/pve/lxc", { form: { vmid: "122", ostemplate: GOLDEN, restore: "1", storage: "local-lvm" } })
      assert.strictEqual(restore.reason, "Permission check failed (/vms/9000, VM.Backup)")
    }))

  it.scoped("an authorization failure can surface inside the task (bind mount in the archive)", () =>
    Effect.gen(function*() {
      const json = structuredClone(defaultSeedJson) as { backups: Array<Record<string, unknown>> }
      json.backups.push({
        storage: "local",
        vmid: 9100,
        time: "2026-01-12T02:00:00Z",
        size: 1000,
        config: { hostname: "legacy", rootfs: "local-lvm:vm-9100-disk-0,size=2G", mp0: "/srv/shared,mp=/shared", unprivileged: 1 }
      })
      const sim = yield* makeSimPve(yield* decodeSeed(json, "test"))
      const upid = upidOf(yield* call(sim, "POST", "/nodes/pve/lxc", {
        form: { vmid: "131", ostemplate: "local:backup/vzdump-lxc-9100-2026_01_12-02_00_00.tar.zst", restore: "1", storage: "local-lvm" }
      }))
      const st = yield* finish(sim, upid)
      assert.strictEqual(st["exitstatus"], "unable to restore CT 131 - restoring 'mp0' to bind mount is only possible for root")
      assert.isTrue(Option.isNone(yield* sim.guest(131)))
    }))

  it.scoped("a failed overwrite-restore (force=1) leaves the guest gone", () =>
    Effect.gen(function*() {
      const sim = yield* setup({ task_failure_rate: 1 })
      const upid = upidOf(
        yield* call(sim, "POST", "/nodes/pve/lxc", {
          form: { vmid: "101", ostemplate: GOLDEN, restore: "1", force: "1", storage: "local-lvm" }
        })
      )
      const st = yield* finish(sim, upid)
      assert.match(String(st["exitstatus"]), /^unable to restore CT 101 - command 'lxc-usernsexec .* failed: exit code 2$/)
      assert.isTrue(Option.isNone(yield* sim.guest(101)))
      const volids = (yield* sim.storageContent("local-lvm")).map((c) => c["volid"])
      assert.notInclude(volids, "local-lvm:vm-101-disk-0")
      assert.notInclude(volids, "local-lvm:vm-101-disk-1")
      const log = yield* taskLog(sim, upid)
      assert.include(log, `  Logical volume "vm-101-disk-0" successfully removed.`)
      assert.match(log[log.length - 1] ?? "", /^TASK ERROR: unable to restore CT 101 - /)
    }))
})

describe("sim-pve: faults", () => {
  const statuses = (seed: number) =>
    Effect.gen(function*() {
      const sim = yield* setup({ seed, http_error_rate: 0.4 })
      const out: Array<number> = []
      for (let i = 0; i < 25; i++) out.push((yield* call(sim, "GET", "/nodes/pve/lxc")).status)
      return out
    })

  it.scoped("5xx injection is deterministic for a seed", () =>
    Effect.gen(function*() {
      const a = yield* statuses(7)
      const b = yield* statuses(7)
      const c = yield* statuses(8)
      assert.deepStrictEqual(a, b)
      assert.notDeepEqual(a, c)
      assert.isTrue(a.some((s) => s !== 200))
      assert.isTrue(a.every((s) => [200, 500, 595, 596].includes(s)))
    }))

  it.scoped("a 596 on a write: the change lands, the client sees the proxy timeout", () =>
    Effect.gen(function*() {
      const sim = yield* setup({ http_error_rate: 1, http_error_statuses: [596] })
      const r = yield* call(sim, "PUT", "/nodes/pve/lxc/101/config", { form: { memory: "768" } })
      assert.strictEqual(r.status, 596)
      assert.strictEqual(r.reason, "Errors during TLS negotiation, request sending and header processing: Connection timed out")
      assert.strictEqual((yield* guest(sim, 101)).config["memory"], 768)
    }))

  it.scoped("lock conflicts, latency and task failures", () =>
    Effect.gen(function*() {
      const sim = yield* setup({ lock_conflict_rate: 1 })
      const r = yield* call(sim, "POST", "/nodes/pve/lxc/101/status/start")
      assert.strictEqual(r.status, 500)
      assert.isTrue(r.reason === "CT is locked (backup)" || r.reason === "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout")
      yield* sim.setFaults({ lock_conflict_rate: 0, latency_ms: 2000, task_failure_rate: 1 })
      const fiber = yield* Effect.fork(call(sim, "POST", "/nodes/pve/lxc/101/status/start"))
      yield* TestClock.adjust("1999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 millis")
      const upid = upidOf(yield* Fiber.join(fiber))
      yield* sim.setFaults({ latency_ms: 0 })
      const st = yield* finish(sim, upid)
      assert.strictEqual(st["exitstatus"], "startup for container '101' failed")
      assert.strictEqual((yield* guest(sim, 101)).status, "stopped")
    }))
})

describe("sim-pve: serving", () => {
  it.scoped("refuses to bind anything but loopback", () =>
    Effect.gen(function*() {
      for (const host of ["0.0.0.0", "192.168.1.10", "::", "pve.example.com"]) {
        const exit = yield* Effect.exit(serveSimPve({ host, port: 0 }))
        assert.isTrue(Exit.isFailure(exit))
        const err = yield* Effect.flip(serveSimPve({ host, port: 0 }))
        assert.strictEqual(err._tag, "SimPveBindRefused")
      }
    }))

  it.live("serves HTTPS on 127.0.0.1 with the committed certificate and PVE reason phrases", () =>
    Effect.scoped(
      Effect.gen(function*() {
        const s = yield* serveSimPve({ host: "127.0.0.1", port: 0 })
        assert.isAbove(s.port, 0)
        assert.match(s.fingerprint256, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/)
        const get = (path: string, auth: string) =>
          Effect.async<{ status: number; reason: string; body: string }, Error>((resume) => {
            const req = httpsRequest(
              `${s.url}/api2/json${path}`,
              { ca: simCertPem, headers: { Authorization: auth } },
              (res) => {
                let body = ""
                res.setEncoding("utf8")
                res.on("data", (c: string) => (body += c))
                res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, reason: res.statusMessage ?? "", body })))
              }
            )
            req.on("error", (e) => resume(Effect.fail(e)))
            req.end()
          })
        const auth = `PVEAPIToken=${s.tokenId}=${s.tokenSecret}`
        const nodes = yield* get("/nodes", auth)
        assert.strictEqual(nodes.status, 200)
        const parsed = JSON.parse(nodes.body) as { data: Array<{ ssl_fingerprint: string }> }
        assert.strictEqual(parsed.data[0]?.ssl_fingerprint, s.fingerprint256)
        const missing = yield* get("/nodes/pve/lxc/999/config", auth)
        assert.strictEqual(missing.status, 500)
        assert.strictEqual(missing.reason, "Configuration file 'nodes/pve/lxc/999.conf' does not exist")
        assert.strictEqual((yield* get("/version", "PVEAPIToken=nobody@pve!x=1")).status, 401)
      })
    ))

  it.scoped("layerSimHttpClient provides an HttpClient", () =>
    Effect.gen(function*() {
      const sim = yield* setup()
      const res = yield* Effect.gen(function*() {
        const client = yield* HttpClient.HttpClient
        return yield* client.execute(
          HttpClientRequest.get("https://pve.sim:8006/api2/json/version").pipe(
            HttpClientRequest.setHeader("Authorization", sim.authorization)
          )
        )
      }).pipe(Effect.provide(layerSimHttpClient(sim)))
      assert.strictEqual(res.status, 200)
      assert.deepInclude((yield* res.json) as object, { data: { version: "9.1.1", release: "9.1", repoid: "42db4a6cf33dac83" } })
    }))
})
