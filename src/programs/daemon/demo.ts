/**
 * The demo: the PVE simulator and the dev hub on loopback, and the real daemon between them,
 * all in one process. A scripted scenario shows the control loop end to end: convergence, a
 * destroy held for a signature, the signed job executed once, its replay refused, and a kill
 * in the middle of a restore followed by recovery.
 */
import { Command, FileSystem } from "@effect/platform"
import { Console, Data, Duration, Effect, Fiber, Layer, Option, Queue, Ref, Schema } from "effect"
import { layerFrom } from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { Journal, JournalLive } from "../../layers/Journal.js"
import { AgentConfigFile } from "../../schema/config.js"
import { DesiredState } from "../../schema/desired.js"
import { VmId } from "../../schema/ids.js"
import type { SignedJob } from "../../schema/hub.js"
import { serveDevHub } from "../../sim/hub/index.js"
import { decodeSeed, defaultSeedJson, serveSimPve } from "../../sim/pve/index.js"
import { type DaemonState, initialState, runDaemon } from "./loop.js"
import { protectionBoardLayer, protectionLayerWith, servicesLayer } from "./root.js"
import { startProtection } from "./protection.js"
import { protectionEnvLayer } from "../protection/env.js"
import { reportNowFromQueue } from "../protection/status.js"
import { guestHealthFromSim } from "../../layers/GuestHealth.js"
import { DEFAULT_HOST_PATHS, privilegedLayerAt } from "../../layers/Privileged.js"
import { newOp, signOp } from "../cli/op.js"
import { pbsKeySimLayer } from "../../sim/pve/pbsKeySim.js"
import { privilegedSimLayer } from "../../sim/pve/privilegedSim.js"
import { simControllers } from "../../sim/controller/index.js"
import { controllersLayer, daemonGates, startControllers } from "./controllers.js"
import { createServer } from "node:net"

export class DemoFailed extends Data.TaggedError("DemoFailed")<{ readonly message: string }> {}

const HOST = "demo-host"
const API_KEY = "demo-hub-key-0123456789abcdef"

const say = (s: string) => Console.log(`[demo] ${s}`)

/** Polls `check` (real time) until it yields a value, poking the agent so it does not wait a full interval. */
const waitFor = <A, E, R>(what: string, poke: Queue.Queue<void>, check: Effect.Effect<Option.Option<A>, E, R>, seconds = 45) =>
  Effect.gen(function*() {
    for (let i = 0; i < seconds * 4; i++) {
      const r = yield* check
      if (Option.isSome(r)) return r.value
      if (i % 4 === 0) yield* Queue.offer(poke, undefined)
      yield* Effect.sleep("250 millis")
    }
    return yield* new DemoFailed({ message: `timed out waiting for: ${what}` })
  })

/** A loopback port free now: the local API keeps it across the demo's agent restart (the guests' bootstraps name it). */
const freePort = Effect.async<number>((resume) => {
  const srv = createServer()
  srv.listen(0, "127.0.0.1", () => {
    const a = srv.address()
    const port = typeof a === "object" && a !== null ? a.port : 0
    srv.close(() => resume(Effect.succeed(port)))
  })
})

const REPO = "registry.felhom.dev/felhom/controller"
const ctl = (tag: string) => ({ controller: { image: `${REPO}:${tag}` } })

const desiredOf = (guests: ReadonlyArray<Record<string, unknown>>) =>
  Schema.decodeUnknownSync(DesiredState)({
    generation: 0,
    provisioning: { golden_archive: "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst", storage: "local-lvm" },
    guests
  })

const g100 = { vmid: 100, hostname: "cust-alpha", cores: 2, memory_bytes: 2048 * 1048576, swap_mib: 512, rootfs_gib: 20, power: "stopped", description: "felhom customer guest alpha", tags: ["customer", "felhom"] }
const g101 = { vmid: 101, hostname: "cust-beta", cores: 1, memory_bytes: 2048 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "", tags: ["customer", "felhom"] }
const g102 = { vmid: 102, hostname: "ops-tools", memory_bytes: 512 * 1048576, swap_mib: 512, rootfs_gib: 4, power: "stopped", description: "", tags: [] }
const g111 = { vmid: 111, hostname: "cust-delta", cores: 1, memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "felhom customer guest delta", tags: ["customer", "felhom"], ...ctl("1.0.0") }
const g110 = { vmid: 110, hostname: "cust-gamma", cores: 2, memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "felhom customer guest gamma", tags: ["customer", "felhom"] }

export const runDemo = Effect.scoped(
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "felhom-demo-" })
    const started = Date.now()

    // the outside world: PVE and the hub, on loopback
    const seed = yield* decodeSeed(
      {
        ...(defaultSeedJson as object),
        task_durations_ms: { vzrestore: 2500, vzstart: 800, vzstop: 800, vzshutdown: 800, resize: 800, vzdestroy: 800, vzdump: 1500, imgdel: 300 },
        storages: [
          ...((defaultSeedJson as { storages: ReadonlyArray<unknown> }).storages),
          // an NFS share the watchdog watches (no server behind it: the simulator answers for it)
          { storage: "nas", type: "nfs", server: "nas.lan", export: "/export/felhom", path: "/mnt/pve/nas", content: ["backup"], total: 2_000_000_000_000, used: 0 },
          // a USB disk's directory storage, where the agent mounts it (is_mountpoint: offline when pulled)
          { storage: "usb-backup", type: "dir", path: "/mnt/felhom/usb-backup", is_mountpoint: "yes", content: ["backup"], total: 1_000_000_000_000, used: 0 }
        ]
      },
      "demo"
    )
    const pve = yield* serveSimPve({ host: "127.0.0.1", port: 0, seed })
    const hubServer = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { [API_KEY]: HOST }, pollIntervalSeconds: 60 })
    const hub = hubServer.hub
    yield* say(`PVE simulator on ${pve.url} (TLS pinned ${pve.fingerprint256.slice(0, 23)}...), dev hub on ${hubServer.url}`)

    // the operator's throwaway key, made by the real ssh-keygen
    const keyPath = `${dir}/operator`
    yield* Command.exitCode(Command.make("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "demo-operator", "-f", keyPath))
    const pub = (yield* fs.readFileString(`${keyPath}.pub`)).trim()
    yield* fs.writeFileString(`${dir}/hub-ca.pem`, hubServer.caPem)

    const bootRoot = `${dir}/bootstrap`
    yield* fs.makeDirectory(bootRoot)
    const localApiPort = yield* freePort
    const file = yield* Schema.decodeUnknown(AgentConfigFile)({
      host_id: HOST,
      state_dir: `${dir}/state`,
      proxmox: { url: pve.url, token_id: pve.tokenId, token_secret: pve.tokenSecret, tls: { fingerprint_sha256: pve.fingerprint256 } },
      hub: { url: hubServer.url, api_key: API_KEY, ca_file: `${dir}/hub-ca.pem` },
      authz: { signers: [`role=operational,key-id=demo-operator ${pub}`] },
      protection: { time_zone: "UTC", pass_interval_seconds: 10, watchdog_interval_seconds: 2 },
      // the guests' bootstrap directories: a scratch tree here (root-owned on a real host)
      privileged: { bootstrap_root: bootRoot },
      // the simulated controllers call every endpoint each 2 s: more than a real one, so a higher rate
      local_api: { listen: "127.0.0.1", port: localApiPort, rate_per_minute: 600, rate_burst: 60 },
      controllers: { repositories: [REPO], health_deadline_seconds: 10, contact_window_seconds: 30, heal_interval_seconds: 5 }
    }).pipe(Effect.mapError((e) => new DemoFailed({ message: `demo config: ${e.message}` })))

    const poke = yield* Queue.sliding<void>(1)
    const state = yield* Ref.make<DaemonState>(initialState)
    // the host's USB disk as the real Privileged layer reads it (udev's by-uuid link and the mount
    // table), in a scratch tree: plugged in and mounted where the agent mounts it
    const USB_UUID = "6c1f0e2a-9b3d-4e5f-8a7b-1c2d3e4f5a60"
    const host = `${dir}/host`
    yield* fs.makeDirectory(`${host}/by-uuid`, { recursive: true })
    yield* fs.writeFileString(`${host}/sdz1`, "")
    yield* fs.symlink(`${host}/sdz1`, `${host}/by-uuid/${USB_UUID}`)
    yield* fs.writeFileString(`${host}/mountinfo`, `100 1 8:33 / /mnt/felhom/usb-backup rw,noatime shared:1 - ext4 ${host}/sdz1 rw\n`)
    const reportNow = yield* Queue.sliding<void>(1)
    // the daemon's own graph, with the protection sweep every 10 s instead of hourly (so retention
    // shows within the demo) and the storage watchdog's out-of-cycle reports
    const agentLayer = protectionBoardLayer.pipe(
      Layer.provideMerge(Layer.mergeAll(
        servicesLayer,
        protectionLayerWith(
          protectionEnvLayer({ timeZone: "UTC", maxConcurrentBackups: 2, passIntervalSeconds: 10, sweepIntervalSeconds: 10 }),
          // the simulator's guest model answers for a restored guest's services (no real guest to exec into)
          guestHealthFromSim(pve.sim),
          // the real layer, with the bootstrap writes and the pct bind mounts played by the simulator
          privilegedSimLayer(pve.sim, bootRoot).pipe(
            Layer.provide(privilegedLayerAt({ ...DEFAULT_HOST_PATHS, byUuidDir: `${host}/by-uuid`, mountInfo: `${host}/mountinfo` }))
          )
        ),
        reportNowFromQueue(reportNow),
        // the host's PBS key as the simulator plays it (none installed unless enrolled)
        pbsKeySimLayer(pve.sim, `${dir}/pbs-key`)
      )),
      Layer.provideMerge(layerFrom(file))
    )
    const startAgent = Effect.forkScoped(
      runDaemon({ poke, state, reportNow, alongside: Effect.zipRight(startProtection(state), startControllers) }).pipe(
        Effect.provide(controllersLayer(daemonGates(state))),
        Effect.provide(agentLayer)
      )
    )
    // each running guest with a bootstrap mount gets a simulated controller (the golden image's unit)
    const controllers = yield* simControllers(pve.sim, { period: "2 seconds", scan: "500 millis" })
    const lastReport = Effect.map(hub.reports(HOST), (rs) => Option.fromNullable(rs.at(-1)?.report))
    const guest = (vmid: number) => pve.sim.guest(vmid)

    let agent = yield* startAgent
    yield* say("agent started (it recovers its journal, then reports to the hub)")

    // 1. converge
    const gen1 = yield* hub.setDesired(HOST, desiredOf([g100, g101, g102]))
    yield* say(`hub publishes desired state generation ${gen1}: stop and grow 100, start 101 with 2 GiB`)
    yield* waitFor("convergence", poke, Effect.map(lastReport, Option.filter((r) => r.desired_generation_applied === gen1)))
    const g100v = yield* guest(100)
    const g101v = yield* guest(101)
    yield* say(
      `converged: 100 ${Option.match(g100v, { onNone: () => "?", onSome: (g) => `${g.status}, ${String(g.config["rootfs"])}` })}; ` +
        `101 ${Option.match(g101v, { onNone: () => "?", onSome: (g) => `${g.status}, ${String(g.config["memory"])} MiB` })}`
    )

    // 2. a destroy from the hub alone: held for a signature
    const gen2 = yield* hub.setDesired(HOST, desiredOf([g100, g102]))
    yield* say(`hub publishes generation ${gen2} without guest 101 (a destroy)`)
    const pending = yield* waitFor("pending signature", poke, Effect.map(lastReport, Option.flatMap((r) =>
      Option.fromNullable(r.pending_signatures.find((p) => p.op === "decommission" && p.vmid === 101)))))
    yield* say(`agent reports pending_signature for ${pending.op} ${pending.vmid}; guest 101 untouched: ${Option.isSome(yield* guest(101))}`)

    // 3. the operator signs; the job runs once
    const blob = yield* newOp({ op: "decommission", hostId: HOST, guestId: 101, params: "{}", expiresIn: Duration.minutes(10), notBefore: undefined, keyId: "demo-operator" })
    const blobPath = `${dir}/decommission-101.json`
    yield* fs.writeFile(blobPath, blob)
    const sigPath = yield* signOp({ keyFile: keyPath, file: blobPath })
    const signature = yield* fs.readFileString(sigPath)
    yield* say("operator signs 'decommission 101' with ssh-keygen -Y sign -n felhom-op-v1")
    const job: SignedJob = { id: "job-1", op: "decommission", guest_id: VmId.make(101), params: {}, blob: Buffer.from(blob).toString("base64"), signature }
    yield* hub.enqueueJob(HOST, job)
    const r1 = yield* waitFor("job-1 result", poke, Effect.map(hub.jobResults(HOST), (rs) => Option.fromNullable(rs.find((r) => r.result.id === "job-1"))))
    yield* say(`job-1: ${r1.result.status} (${r1.result.reason}); guest 101 exists: ${Option.isSome(yield* guest(101))}`)

    // 4. the same signed blob again, under a new job id
    yield* hub.enqueueJob(HOST, { ...job, id: "job-2" })
    const r2 = yield* waitFor("job-2 result", poke, Effect.map(hub.jobResults(HOST), (rs) => Option.fromNullable(rs.find((r) => r.result.id === "job-2"))))
    yield* say(`replayed as job-2: ${r2.result.status} (${r2.result.reason.split(":")[0]})`)

    // 5. the operator vouches for the golden archive: the hub alone cannot name a provisioning
    // source (it could point at another customer's backup)
    const golden = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"
    const gblob = yield* newOp({ op: "golden-register", hostId: HOST, guestId: null, params: JSON.stringify({ archive: golden }), expiresIn: Duration.minutes(10), notBefore: undefined, keyId: "demo-operator" })
    const gblobPath = `${dir}/golden-register.json`
    yield* fs.writeFile(gblobPath, gblob)
    const gsignature = yield* fs.readFileString(yield* signOp({ keyFile: keyPath, file: gblobPath }))
    yield* hub.enqueueJob(HOST, {
      id: "job-golden",
      op: "golden-register",
      guest_id: null,
      params: { archive: golden },
      blob: Buffer.from(gblob).toString("base64"),
      signature: gsignature
    })
    const rg = yield* waitFor("job-golden result", poke, Effect.map(hub.jobResults(HOST), (rs) => Option.fromNullable(rs.find((r) => r.result.id === "job-golden"))))
    yield* say(`operator signs 'golden-register ${golden}': ${rg.result.status}`)

    // 6. killed in the middle of a restore, restarted: recovery, then convergence
    const gen3 = yield* hub.setDesired(HOST, desiredOf([g100, g102, { ...g110, ...ctl("1.0.0") }, g111]))
    yield* say(`hub publishes generation ${gen3}: new guests 110 and 111 (restore of the golden archive, size, then the controller's back half)`)
    yield* waitFor("the restore of 110 to be running", poke, Effect.map(pve.sim.tasks, (ts) =>
      Option.fromNullable(ts.find((t) => t.type === "vzrestore" && t.id === "110" && t.status === "running"))))
    yield* Fiber.interrupt(agent)
    yield* say("agent killed while the restore of 110 runs")
    agent = yield* startAgent
    yield* say("agent restarted")
    yield* waitFor("generation 3 applied", poke, Effect.map(lastReport, Option.filter((r) => r.desired_generation_applied === gen3)))
    const built = yield* waitFor("guest 110 running", poke, Effect.map(guest(110), Option.filter((g) => g.status === "running")))
    const ops = yield* Effect.flatMap(Journal, (j) => j.list({ limit: 50 })).pipe(
      Effect.provide(JournalLive.pipe(Layer.provide(DatabaseLive), Layer.provide(layerFrom(file))))
    )
    const creates = ops.filter((o) => o.kind === "create" && o.vmid === 110).map((o) => o.status)
    yield* say(
      `recovery rolled the half-built guest back, then reconcile built it again: 110 is ${built.status} ` +
        `with features ${String(built.config["features"])}; create ops in the journal: ${creates.join(", ")}`
    )
    // 7. controllers: the back half put a token and a bootstrap into each new guest; the
    // simulated controller (the golden image's unit) reads it, pins the local API and calls it
    for (const vmid of [110, 111]) {
      const v = yield* controllers.waitFor(vmid, (c) => c.reported === "healthy" && c.callCount >= 5).pipe(
        Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => new DemoFailed({ message: `timed out waiting for the controller of ${vmid}` }) })
      )
      const seen = [...new Set(v.calls.filter((c) => c.status !== null).map((c) => `${c.method} ${c.path} ${c.status}`))].sort()
      yield* say(`controller of ${vmid} up (${v.image}, bootstrap generation ${v.generation}, local API pinned): ${seen.join(", ")}`)
    }
    const snap = yield* controllers.probe(111, { method: "POST", path: "/snapshot", body: { name: "before-import" } })
    yield* say(`111's controller takes a snapshot: POST /snapshot ${snap.status} ${snap.body}`)
    const other = yield* controllers.probeOtherGuest(110, 111)
    yield* say(`110's controller asks to roll back to 111's ${other.snapshot}: ${other.status} ${other.body}`)
    const anon = yield* controllers.probe(110, { method: "GET", path: "/backup/due", auth: "none" })
    yield* say(`a call without a token: ${anon.status}`)
    const listed = yield* waitFor("controllers in the host report", poke, Effect.map(lastReport, Option.filter((r) =>
      [110, 111].every((vmid) => r.versions.controllers.some((c) => c.vmid === vmid && c.state === "ok" && c.version !== null)))))
    yield* say(`host report versions.controllers: ${listed.versions.controllers.map((c) => `${c.vmid} ${c.version} ${c.state}`).join(", ")}`)

    // a controller update whose new image fails its health check: rolled back to the snapshot
    const journalOps = Effect.flatMap(Journal, (j) => j.list({ limit: 200 })).pipe(
      Effect.provide(JournalLive.pipe(Layer.provide(DatabaseLive), Layer.provide(layerFrom(file))))
    )
    const updates = Effect.map(journalOps, (os) => os.filter((o) => o.kind === "controller-update" && o.vmid === 110 && o.status !== "in_flight"))
    const genBroken = yield* hub.setDesired(HOST, desiredOf([g100, g102, { ...g110, ...ctl("2.0.0-broken") }, g111]))
    yield* say(`hub publishes generation ${genBroken}: controller of 110 to ${REPO}:2.0.0-broken (in the operator's repositories: a policy update)`)
    const broken = yield* waitFor("the broken update to end", poke, Effect.map(updates, (os) => Option.fromNullable(os.at(0))), 90)
    const back = yield* controllers.waitFor(110, (c) => c.image === `${REPO}:1.0.0` && c.reported === "healthy").pipe(
      Effect.timeout("60 seconds"),
      Effect.catchTag("TimeoutException", () =>
        Effect.flatMap(controllers.view(110), (v) =>
          Effect.fail(new DemoFailed({
            message: `timed out waiting for 110's controller to come back (${Option.match(v, { onNone: () => "no controller", onSome: (x) => `${x.state}, ${x.image}, last error ${x.lastError}` })})`
          }))))
    )
    yield* say(`update of 110 to 2.0.0-broken: ${broken.status} (${broken.detail ?? ""}); its controller runs ${back.image} again, healthy`)
    const genGood = yield* hub.setDesired(HOST, desiredOf([g100, g102, { ...g110, ...ctl("1.1.0") }, g111]))
    yield* say(`hub publishes generation ${genGood}: controller of 110 to 1.1.0; after a rollback no policy update runs for 6 h, so the operator signs it`)
    const image = `${REPO}:1.1.0`
    const ublob = yield* newOp({ op: "controller-update", hostId: HOST, guestId: 110, params: JSON.stringify({ image }), expiresIn: Duration.minutes(10), notBefore: undefined, keyId: "demo-operator" })
    const ublobPath = `${dir}/controller-update-110.json`
    yield* fs.writeFile(ublobPath, ublob)
    const usignature = yield* fs.readFileString(yield* signOp({ keyFile: keyPath, file: ublobPath }))
    yield* hub.enqueueJob(HOST, { id: "job-ctl-110", op: "controller-update", guest_id: VmId.make(110), params: { image }, blob: Buffer.from(ublob).toString("base64"), signature: usignature })
    const ru = yield* waitFor("job-ctl-110 result", poke, Effect.map(hub.jobResults(HOST), (rs) => Option.fromNullable(rs.find((r) => r.result.id === "job-ctl-110"))), 90)
    yield* say(`job-ctl-110 (signed controller-update 110 to 1.1.0): ${ru.result.status}`)
    const good = yield* waitFor("the 1.1.0 update to end", poke, Effect.map(updates, (os) => Option.fromNullable(os.find((o) => o.status === "done"))), 90)
    const now110 = yield* controllers.view(110)
    yield* say(`update of 110 to 1.1.0: ${good.status}; its controller runs ${Option.match(now110, { onNone: () => "?", onSome: (c) => `${c.image}, ${c.reported}` })}`)

    // 8. data protection: the hub publishes a storage manifest with a backup policy
    const manifest = {
      storage: [
        { id: "local", type: "local-dir", durable_id: "/var/lib/vz", class: "slow", role: "vzdump-target", policy: { schedule: "daily", retention: { keep_last: 2 } }, state: "attached" },
        { id: "nas", type: "nfs", durable_id: "nas.lan:/export/felhom", class: "slow", role: "vzdump-target", state: "attached" },
        { id: "usb-backup", type: "usb", durable_id: USB_UUID, class: "slow", role: "vzdump-target", state: "attached" }
      ]
    }
    const gen4 = yield* hub.setDesired(
      HOST,
      Schema.decodeUnknownSync(DesiredState)({ ...Schema.encodeSync(DesiredState)(desiredOf([g100, g102, { ...g110, ...ctl("1.1.0") }, g111])), ...manifest })
    )
    yield* say(`hub publishes generation ${gen4}: targets 'local' (daily backups, keep-last 2), 'nas' (NFS) and 'usb-backup' (a USB disk)`)
    const ours = (vmid: number) =>
      Effect.map(pve.sim.storageContent("local"), (vs) =>
        vs.filter((v) => v["content"] === "backup" && v["vmid"] === vmid).map((v) => ({ volid: String(v["volid"]), notes: v["notes"] })))
    const scheduled = yield* waitFor("the scheduled backups", poke, Effect.map(lastReport, Option.filter((r) =>
      [100, 102, 110].every((vmid) => r.protection.some((p) => p.vmid === vmid && p.status === "ok")))), 90)
    const p100 = scheduled.protection.find((p) => p.vmid === 100)
    yield* say(`scheduled backups ran (never backed up: due at once): 100 ${p100?.status}, newest vzdump ${p100?.tiers.find((t) => t.tier === "vzdump")?.newest_at ?? "?"}, crash-consistent`)
    // the newest archive of 102 is damaged (it restores, but its services do not come up)
    const newest102 = (yield* ours(102)).map((v) => v.volid).sort().at(-1)
    if (newest102 !== undefined) yield* pve.sim.setArchive(newest102, { corrupt: "health" })
    yield* say(`${newest102 ?? "no archive of 102"} is damaged on disk (the simulator's guest model will fail its health check)`)
    const before = (yield* ours(100)).map((v) => v.volid)
    yield* say(`guest 100 on 'local': ${before.length} archives (one is the operator's 'cust-alpha nightly', not the agent's)`)

    // two more backups of 100 (unsigned force-backup jobs: benign), then the policy's retention
    for (const id of ["fb-100-a", "fb-100-b"]) {
      yield* hub.enqueueJob(HOST, { id, op: "force-backup", guest_id: VmId.make(100), params: { storage: "local" } })
      yield* waitFor(`${id} result`, poke, Effect.map(hub.jobResults(HOST), (rs) => Option.fromNullable(rs.find((r) => r.result.id === id))))
      yield* Effect.sleep("1100 millis") // archives are named by the second
    }
    const grown = (yield* ours(100)).length
    const pruned = yield* waitFor("retention pruning", poke, Effect.map(ours(100), (vs) => (vs.length < grown ? Option.some(vs) : Option.none())), 60)
    yield* say(
      `retention keep-last 2 pruned ${grown - pruned.length} of the agent's archives of 100 (${grown} -> ${pruned.length}); ` +
        `the operator's archive is kept: ${pruned.some((v) => before.includes(v.volid) && v.notes === "cust-alpha nightly")}`
    )

    // self-restore-tests: each guest's newest backup restored into a scratch guest, booted, checked, torn down
    const tested = yield* waitFor("restore-tests of 100 and 102", poke, Effect.map(lastReport, Option.filter((r) =>
      r.restore_tests.some((t) => t.vmid === 100 && t.result === "pass") && r.restore_tests.some((t) => t.vmid === 102 && t.result === "fail"))), 120)
    for (const vmid of [100, 102]) {
      const t = tested.restore_tests.find((x) => x.vmid === vmid && x.result !== "skipped")
      if (t !== undefined) {
        yield* say(
          `restore-test of ${vmid}: ${t.result} (${t.detail}); restore ${t.timings_ms.restore ?? "-"} ms, start ${t.timings_ms.start ?? "-"} ms, ` +
            `check ${t.timings_ms.check ?? "-"} ms, teardown ${t.timings_ms.teardown ?? "-"} ms`
        )
      }
    }
    const scratchLeft = (yield* pve.sim.tasks).length >= 0 ? (yield* Effect.forEach([999900, 999901, 999902], (v) => guest(v))).filter(Option.isSome).length : 0
    yield* say(`scratch guests left behind: ${scratchLeft}`)

    // 10. guest-loss DR: 110 is lost (its disk fails); the hub still wants it. Never recreated
    // blank: the agent offers a recover from its fastest surviving backup, pending a signature
    const before110 = Option.getOrThrow(yield* guest(110))
    const mac110 = /hwaddr=([0-9A-F:]+)/i.exec(String(before110.config["net0"]))?.[1] ?? "?"
    const inner110 = Option.getOrThrow(yield* pve.sim.guestInner(110))
    const tokenBefore = yield* fs.readFileString(`${bootRoot}/110/local-token`)
    yield* pve.sim.loseGuest(110, "local-lvm")
    yield* say(`guest 110 is lost: its config and rootfs on local-lvm are gone (MAC ${mac110}, machine-id ${inner110.machineId.slice(0, 8)}…)`)
    const offered = yield* waitFor("a recover pending signature for 110", poke, Effect.map(lastReport, Option.flatMap((r) =>
      Option.fromNullable(r.pending_signatures.find((p) => p.op === "recover" && p.vmid === 110)))), 60)
    yield* say(`plan: recover 110 PENDING_SIGNATURE from ${String(offered.params["tier"])} ${String(offered.params["point"])} to ${String(offered.params["storage"])} (${offered.reason})`)
    const rparams = JSON.stringify(offered.params)
    const rblob = yield* newOp({ op: "recover", hostId: HOST, guestId: 110, params: rparams, expiresIn: Duration.minutes(10), notBefore: undefined, keyId: "demo-operator" })
    const rblobPath = `${dir}/recover-110.json`
    yield* fs.writeFile(rblobPath, rblob)
    const rsignature = yield* fs.readFileString(yield* signOp({ keyFile: keyPath, file: rblobPath }))
    yield* say("operator signs 'recover 110' with exactly those params")
    yield* hub.enqueueJob(HOST, { id: "job-recover-110", op: "recover", guest_id: VmId.make(110), params: offered.params as Record<string, never>, blob: Buffer.from(rblob).toString("base64"), signature: rsignature })
    const rr = yield* waitFor("job-recover-110 result", poke, Effect.map(hub.jobResults(HOST), (rs) => Option.fromNullable(rs.find((r) => r.result.id === "job-recover-110"))), 90)
    const back110 = yield* waitFor("110 running again", poke, Effect.map(guest(110), Option.filter((g) => g.status === "running")), 60)
    const bootCfg = JSON.parse(yield* fs.readFileString(`${bootRoot}/110/controller.json`)) as {
      generation: number
      identity: { scenario: string; reset: ReadonlyArray<string>; directive_id: string }
      hub: { channel: string }
    }
    // the golden first-boot unit applies the directive before the controller starts
    const innerAfter = yield* waitFor("110's first boot to apply the directive", poke, Effect.map(pve.sim.guestInner(110), Option.filter((i) =>
      i.applied.includes(bootCfg.identity.directive_id))), 60)
    const ctl110 = yield* controllers.waitFor(110, (c) => c.state === "running" && c.generation === bootCfg.generation && c.reported === "healthy").pipe(
      Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => new DemoFailed({ message: "timed out waiting for 110's controller after the recovery" }) })
    )
    const macAfter = /hwaddr=([0-9A-F:]+)/i.exec(String(back110.config["net0"]))?.[1] ?? "?"
    const tokenKept = (yield* fs.readFileString(`${bootRoot}/110/local-token`)) === tokenBefore
    const health = yield* pve.sim.guestHealth(110)
    yield* say(
      `job-recover-110: ${rr.result.status}; 110 is ${back110.status}, restored from ${Option.match(health, { onNone: () => "?", onSome: (h) => h.restored_from ?? "?" })}; ` +
        `kept: MAC ${macAfter === mac110 ? "same" : `CHANGED ${macAfter}`}, hub channel ${bootCfg.hub.channel}, local-API token ${tokenKept ? "same" : "CHANGED"}; ` +
        `reset at first boot (${bootCfg.identity.scenario}: ${bootCfg.identity.reset.join(", ")}): machine-id ${innerAfter.machineId !== inner110.machineId ? "new" : "SAME"}, ` +
        `SSH host key ${innerAfter.sshHostKey !== inner110.sshHostKey ? "new" : "SAME"}; its controller ${ctl110.image} ${ctl110.reported}`
    )

    // 9. the USB disk is pulled, then the NFS server goes away: the watchdog reports each out of cycle
    const noPoke = yield* Queue.sliding<void>(1) // no poke: the reports must come from the watchdog
    yield* waitFor("'usb-backup' attached", poke, Effect.map(lastReport, Option.filter((r) =>
      r.storage.some((st) => st.storage === "usb-backup" && st.state === "attached"))), 30)
    for (const [target, what, pull] of [
      ["usb-backup", "the USB disk behind 'usb-backup' is pulled", Effect.zipRight(fs.remove(`${host}/by-uuid/${USB_UUID}`), pve.sim.setStorage("usb-backup", { online: false }))],
      ["nas", "the NFS server behind 'nas' stops answering", pve.sim.setStorage("nas", { online: false })]
    ] as const) {
      const dropAt = Date.now()
      yield* pull
      yield* say(what)
      const dropped = yield* waitFor(`'${target}' reported disconnected`, noPoke, Effect.map(lastReport, Option.filter((r) =>
        r.storage.some((st) => st.storage === target && st.state === "disconnected"))), 30)
      const st = dropped.storage.find((x) => x.storage === target)
      yield* say(`the hub has it ${((Date.now() - dropAt) / 1000).toFixed(1)} s later (out of cycle; the poll interval is 60 s): '${target}' ${st?.state}${st?.target?.detail ? ` (${st.target.detail})` : ""}`)
    }
    yield* Fiber.interrupt(agent)

    const reports = (yield* hub.reports(HOST)).length
    yield* say(
      `summary: ${reports} reports received by the hub, overdue hosts: ${(yield* hub.overdue).length}, ` +
        `signed job executed once and its replay refused, no half-built guest; ${((Date.now() - started) / 1000).toFixed(1)} s`
    )
  })
)
