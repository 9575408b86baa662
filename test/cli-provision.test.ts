/**
 * `felhom-agent provision` (issue 12). In-process (TestClock, the simulator, a real journal):
 * provisionGuest refuses what reconcile would refuse (an unregistered archive, a lost, existing or
 * held guest), creates through the gate and the create saga, deploys the controller in the same
 * queue turn, rolls back a failed build, and keeps the token out of the progress it prints. As
 * the operator runs it (the shipped bin against `sim pve` in another process): --plan, a
 * provision that succeeds, exit codes, JSON on stdout and JSON lines on stderr without a TTY,
 * and the state lock held by a running daemon.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Schema } from "effect"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { Journal, JournalLive } from "../src/layers/Journal.js"
import { Progress } from "../src/layers/Progress.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { provisionGuest, provisionPreview, provisionSteps } from "../src/programs/bringup/provision.js"
import { ControllerOpFailed, ControllerOps, type ControllerOpsShape } from "../src/programs/controller/ops.js"
import { makeTtyProgress, type ProgressOutput } from "../src/programs/cli/progress.js"
import { holdStateLockIn } from "../src/programs/cli/stateLock.js"
import { DesiredGuest } from "../src/schema/desired.js"
import { GuestPlacement } from "../src/schema/storage.js"
import { StorageId, type VmId, VolumeId } from "../src/schema/ids.js"
import { makeSimPve } from "../src/sim/pve/index.js"
import { agentLayer, dbFile, GOLDEN, registerGolden, runTimed, settle } from "./engine-support.js"
import { durations, seedWith } from "./support.js"
import { bin, cleanEnv, nodeRunner, root, startSimPve } from "./bin-support.js"

const MIXED = join(root, "test", "fixtures", "desired", "sim-mixed.json")
const IMAGE = "registry.example/felhom/controller:1.4.2"
const SOURCE = { archive: VolumeId.make(GOLDEN), storage: StorageId.make("local-lvm") }
/** Guest 100's nightly backup in the seed: another customer's data, never a provisioning source. */
const FOREIGN_BACKUP = "local:backup/vzdump-lxc-100-2026_01_14-03_00_02.tar.zst"

const guest = (vmid: number, extra: Record<string, unknown> = {}) =>
  Schema.decodeUnknownSync(DesiredGuest)({
    vmid,
    hostname: `cust-${vmid}`,
    cores: 2,
    memory_bytes: 2 * 1024 ** 3,
    swap_mib: 512,
    rootfs_gib: 16,
    power: "running",
    description: `guest ${vmid}`,
    tags: ["customer"],
    ...extra
  })

/** A controller service that records what it is asked (the deploy saga has its own tests). */
const fakeControllers = (events: Array<string>, fail = false): Layer.Layer<ControllerOps> =>
  Layer.succeed(ControllerOps, {
    view: Effect.succeed({
      deployed: new Map<VmId, string>(),
      repositories: ["registry.example/felhom/controller"],
      failedUpdates: new Map<VmId, { readonly image: string; readonly recent: boolean }>()
    }),
    deploy: (vmid: VmId, image: string) =>
      Effect.suspend(() => {
        events.push(`deploy ${vmid} ${image}`)
        return fail ? Effect.fail(new ControllerOpFailed({ message: "controller deploy failed (simulated)" })) : Effect.void
      }),
    update: () => Effect.dieMessage("no update here"),
    reidentify: () => Effect.dieMessage("no reidentify here"),
    undeploy: () => Effect.dieMessage("no undeploy here")
  } satisfies ControllerOpsShape)

const withAgent = (seed: Record<string, unknown> = {}) =>
  Effect.gen(function*() {
    const sim = yield* makeSimPve(yield* seedWith({ ...durations(2000), ...seed }))
    const path = dbFile()
    return { sim, path, layer: agentLayer(sim, path) }
  })

describe("provisionSteps and provisionPreview", () => {
  it("the front half's steps, then the back half's when the guest asks for a controller (and the first start after it)", () => {
    expect(provisionSteps(guest(110), SOURCE).map((s) => s.step)).toEqual(["restore", "resize", "mounts", "configure", "seal", "untag", "start"])
    const withController = provisionSteps(guest(110, { controller: { image: IMAGE } }), SOURCE)
    expect(withController.map((s) => s.step)).toEqual([
      "restore",
      "resize",
      "mounts",
      "configure",
      "seal",
      "untag",
      "deploy_controller:mint",
      "deploy_controller:write",
      "deploy_controller:mount",
      "deploy_controller:commit",
      "start"
    ])
    expect(withController[0]!.what).toContain(GOLDEN)
    expect(provisionSteps(guest(110, { power: "stopped" }), SOURCE).at(-1)!.what).toContain("leave the guest stopped")
  })

  it.scoped("--plan judges like reconcile and changes nothing: no op, no audit entry, no PVE write", () =>
    Effect.gen(function*() {
      const { layer, sim } = yield* withAgent()
      yield* Effect.gen(function*() {
        const journal = yield* Journal
        const unregistered = yield* runTimed(provisionPreview(guest(110), SOURCE))
        expect(unregistered.refusal).toMatch(/golden_unverified/)
        expect(unregistered.gate.verdict).toBe("allowed")
        yield* registerGolden
        const ready = yield* runTimed(provisionPreview(guest(110, { controller: { image: IMAGE } }), SOURCE))
        expect(ready.refusal).toBeNull()
        // no local API in this graph: the back half is reported, not planned
        expect(ready.controller).toMatchObject({ image: IMAGE, deploy: false })
        expect(ready.controller!.detail).toMatch(/local API/)
        const withCtl = yield* runTimed(provisionPreview(guest(110, { controller: { image: IMAGE } }), SOURCE).pipe(
          Effect.provide(fakeControllers([]))
        ))
        expect(withCtl.controller).toMatchObject({ deploy: true })
        expect(yield* journal.list({ limit: 10 })).toEqual([])
        expect(yield* journal.auditTail(10)).toEqual([])
        expect((yield* sim.requests).filter((r) => r.method !== "GET")).toEqual([])
      }).pipe(Effect.provide(layer))
    }))
})

describe("provisionGuest", () => {
  it.scoped("creates the guest through the gate and the create saga, then deploys its controller in the same queue turn", () =>
    Effect.gen(function*() {
      const { layer, sim } = yield* withAgent()
      const events: Array<string> = []
      const result = yield* Effect.gen(function*() {
        yield* registerGolden
        const queue = yield* GuestQueue
        const fiber = yield* Effect.fork(runTimed(provisionGuest(guest(110, { controller: { image: IMAGE } }), SOURCE, { actor: "cli" })))
        yield* settle
        // submitted while provision holds 110's turn: runs only after the back half
        const other = yield* Effect.fork(queue.serialize(110)(Effect.sync(() => void events.push("next in 110's queue"))))
        const r = yield* Fiber.join(fiber)
        yield* Fiber.join(other)
        const journal = yield* Journal
        const ops = yield* journal.list({ limit: 10 })
        // the create does not start the guest: its first boot comes after the bootstrap is mounted
        expect(ops.map((o) => `${o.kind}:${o.status}`)).toEqual(["start:done", "create:done"])
        expect(r.opId).toBe(ops[1]!.id)
        const audit = yield* journal.auditTail(10)
        expect(audit.filter((a) => a.actor === "cli").map((a) => `${a.action}:${a.decision}`)).toEqual(["create:allowed", "controller-deploy:allowed"])
        return r
      }).pipe(Effect.provide(Layer.merge(layer, fakeControllers(events))))
      expect(result).toMatchObject({ vmid: 110, outcome: "done", controller: { state: "deployed", detail: IMAGE } })
      expect(events).toEqual([`deploy 110 ${IMAGE}`, "next in 110's queue"])
      const created = yield* sim.guest(110)
      expect(Option.map(created, (g) => g.status)).toEqual(Option.some("running"))
    }))

  it.scoped("the placement's volumes are allocated as mount points (bulk as backup=0), as reconcile's create does", () =>
    Effect.gen(function*() {
      const { layer, sim } = yield* withAgent()
      const placement = Schema.decodeUnknownSync(GuestPlacement)({
        vmid: 110,
        volumes: [
          { volume: "mp0", kind: "hot", target: "local-lvm", path: "/srv/db", size_gib: 4 },
          { volume: "mp1", kind: "bulk", target: "local-lvm", path: "/srv/media", size_gib: 8, backup: { none: { reason: "re-downloadable" } } }
        ]
      })
      expect(provisionSteps(guest(110), SOURCE, placement).find((s) => s.step === "mounts")!.what).toContain("mp1 local-lvm:8,mp=/srv/media,backup=0")
      const r = yield* Effect.zipRight(registerGolden, runTimed(provisionGuest(guest(110), SOURCE, { actor: "cli", placement })))
        .pipe(Effect.provide(layer))
      expect(r.outcome).toBe("done")
      const config = Option.getOrThrow(yield* sim.guest(110)).config
      expect(String(config["mp0"])).toMatch(/^local-lvm:vm-110-disk-\d+,mp=\/srv\/db,size=4G$/)
      expect(String(config["mp1"])).toMatch(/,mp=\/srv\/media,.*backup=0|,backup=0.*mp=\/srv\/media/)
    }))

  it.scoped("without a local API the guest is created and the controller reported skipped", () =>
    Effect.gen(function*() {
      const { layer } = yield* withAgent()
      const r = yield* Effect.zipRight(registerGolden, runTimed(provisionGuest(guest(110, { controller: { image: IMAGE } }), SOURCE, { actor: "cli" })))
        .pipe(Effect.provide(layer))
      expect(r).toMatchObject({ outcome: "done", controller: { state: "skipped" } })
      expect(r.controller.detail).toMatch(/no local API/)
    }))

  it.scoped("refuses an archive nobody registered (e.g. another customer's backup): nothing is journaled or sent", () =>
    Effect.gen(function*() {
      const { layer, sim } = yield* withAgent()
      yield* Effect.gen(function*() {
        yield* registerGolden
        const r = yield* runTimed(provisionGuest(guest(110), { archive: VolumeId.make(FOREIGN_BACKUP), storage: SOURCE.storage }, { actor: "cli" }))
        expect(r).toMatchObject({ outcome: "refused", opId: null })
        expect(r.detail).toMatch(/golden_unverified/)
        expect(yield* Effect.flatMap(Journal, (j) => j.list({ limit: 10 }))).toEqual([])
      }).pipe(Effect.provide(layer))
      expect((yield* sim.requests).filter((r) => r.method !== "GET")).toEqual([])
      expect(Option.isNone(yield* sim.guest(110))).toBe(true)
    }))

  it.scoped("refuses a lost guest (recover it, never recreate it blank), an existing one and a held one", () =>
    Effect.gen(function*() {
      const { layer, sim } = yield* withAgent()
      yield* Effect.gen(function*() {
        const journal = yield* Journal
        yield* registerGolden
        yield* journal.markCustomer(120, "created by op earlier")
        const lost = yield* runTimed(provisionGuest(guest(120), SOURCE, { actor: "cli" }))
        expect(lost.outcome).toBe("refused")
        expect(lost.detail).toMatch(/lost/)
        const existing = yield* runTimed(provisionGuest(guest(100), SOURCE, { actor: "cli" }))
        expect(existing.outcome).toBe("refused")
        expect(existing.detail).toMatch(/guest 100 exists/)
        const held = yield* journal.begin({ kind: "create", vmid: 130, payload: {} })
        yield* journal.finish(held.id, "needs_operator", "half-built")
        const heldResult = yield* runTimed(provisionGuest(guest(130), SOURCE, { actor: "cli" }))
        expect(heldResult.outcome).toBe("refused")
        expect(heldResult.detail).toMatch(/needs an operator/)
      }).pipe(Effect.provide(layer))
      expect((yield* sim.requests).filter((r) => r.method !== "GET")).toEqual([])
    }))

  it.scoped("a restore that fails is rolled back: no guest, no controller deploy", () =>
    Effect.gen(function*() {
      const { layer, sim } = yield* withAgent({ faults: { task_failure_types: ["vzrestore"] } })
      const events: Array<string> = []
      const r = yield* Effect.zipRight(registerGolden, runTimed(provisionGuest(guest(110, { controller: { image: IMAGE } }), SOURCE, { actor: "cli" })))
        .pipe(Effect.provide(Layer.merge(layer, fakeControllers(events))))
      expect(r.outcome).toBe("rolled_back")
      expect(r.opId).not.toBeNull()
      expect(r.controller.state).toBe("not_run")
      expect(events).toEqual([])
      expect(Option.isNone(yield* sim.guest(110))).toBe(true)
    }))

  it.scoped("PVE echoing the token into a failing task's log: the operator's terminal never shows it", () =>
    Effect.gen(function*() {
      const MARKER = "7d3e9a41-c6b2-4f85-a0d9-e2b81f5c4a6d"
      const { layer } = yield* withAgent({
        tokens: [{ tokenid: "felhom@pve!agent", secret: MARKER, privsep: true }],
        faults: { echo_headers: ["message", "reason", "params", "task"], task_failure_types: ["vzstart"] }
      })
      const chunks: Array<string> = []
      const out: ProgressOutput = { write: (t) => void chunks.push(t), columns: () => 200 }
      const r = yield* Effect.scoped(Effect.gen(function*() {
        yield* registerGolden
        const pve = yield* Proxmox
        // no second scrub here: what reaches the renderer must already be clean at the source
        const progress = yield* makeTtyProgress({ out, tail: (u, n) => pve.taskLogTail(u, n), scrub: (s) => s })
        return yield* runTimed(provisionGuest(guest(110), SOURCE, { actor: "cli" }).pipe(Effect.provideService(Progress, progress)))
      })).pipe(Effect.provide(layer))
      const text = chunks.join("")
      expect(r.outcome).toBe("failed") // sealed before the start: the guest is kept
      expect(text).toContain("PVEAPIToken=felhom@pve!agent=") // the echo did reach the terminal's tail
      expect(text).toMatch(/✗ start {2}0:0\d \(did not finish\)\n$/)
      for (let i = 0; i + 8 <= MARKER.length; i++) expect(text).not.toContain(MARKER.slice(i, i + 8))
      expect(JSON.stringify(r)).not.toContain(MARKER.slice(0, 8))
    }))
})

// ---------------------------------------------------------------------------------------------
// The shipped CLI

const emptyConfig = join(mkdtempSync(join(tmpdir(), "felhom-prov-")), "empty.json")
writeFileSync(emptyConfig, "{}")
const env = (extra: Record<string, string> = {}) => cleanEnv(emptyConfig, extra)
const runner = nodeRunner(env)
const run = runner.run
const running = runner.running

let sim: ChildProcess
let exports: Record<string, string> = {}

beforeAll(async () => {
  // the default seed with quick tasks (the sim runs on the wall clock here)
  const seed = JSON.parse(readFileSync(join(root, "configs", "sim", "pve.json"), "utf8")) as Record<string, unknown>
  const seedFile = join(mkdtempSync(join(tmpdir(), "felhom-prov-seed-")), "seed.json")
  // a start long enough to be seen running by the terminal renderer's one-second tail
  writeFileSync(seedFile, JSON.stringify({ ...seed, task_durations_ms: { ...durations(300).task_durations_ms, vzstart: 2500 } }))
  const started = await startSimPve(env(), seedFile)
  sim = started.child
  exports = started.exports
})

afterAll(() => {
  sim?.kill("SIGTERM")
  runner.kill()
})

/** A fresh state directory, with the seed's golden archive registered when asked. */
const stateDir = async (registered: boolean) => {
  const dir = join(mkdtempSync(join(tmpdir(), "felhom-prov-state-")), "state")
  mkdirSync(dir, { mode: 0o700 })
  await Effect.runPromise(
    Effect.flatMap(Journal, (j) => (registered ? j.registerGolden(GOLDEN, "signed", "test-setup") : Effect.void)).pipe(
      Effect.provide(JournalLive.pipe(Layer.provide(layerAt(join(dir, "state.db"))))),
      Effect.orDie
    )
  )
  return dir
}

const ANSI = /\u001b/

describe("felhom-agent provision (the shipped bin against sim pve)", () => {
  it("--plan: the steps and the gate's verdict, a refusal for an unregistered archive, nothing changed", async () => {
    const dir = await stateDir(false)
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir }
    const refused = await run(["provision", "--vmid", "110", "--desired", MIXED, "--plan", "--json"], e)
    expect(refused.status, refused.stderr).toBe(0)
    expect(refused.stdout.trim().split("\n")).toHaveLength(1)
    const preview = JSON.parse(refused.stdout) as { steps: Array<{ step: string }>; gate: { verdict: string }; refusal: string | null }
    expect(preview.steps.map((s) => s.step)).toEqual(["restore", "resize", "mounts", "configure", "seal", "untag", "start"])
    expect(preview.gate.verdict).toBe("allowed")
    expect(preview.refusal).toMatch(/not a registered golden archive/)

    const ready = await stateDir(true)
    const human = await run(["provision", "--vmid", "110", "--desired", MIXED, "--dry-run"], { ...exports, FELHOM_AGENT_STATE_DIR: ready })
    expect(human.status, human.stderr).toBe(0)
    expect(human.stdout).toContain("gate: ALLOWED")
    expect(human.stdout).toMatch(/1\. restore +restore local:backup\/vzdump-lxc-9000/)
    expect(human.stdout).toContain("ready: nothing changed (--plan)")
    expect(human.stdout).not.toMatch(ANSI)
    const journal = await run(["journal", "list", "--json"], { FELHOM_AGENT_STATE_DIR: ready })
    expect(JSON.parse(journal.stdout)).toEqual([])
  }, 60_000)

  it("provisions guest 110: exit 0, the result as JSON on stdout, progress as JSON lines on stderr, no ANSI, no secret", async () => {
    const dir = await stateDir(true)
    const r = await run(["provision", "--vmid", "110", "--desired", MIXED, "--json"], { ...exports, FELHOM_AGENT_STATE_DIR: dir })
    expect(r.status, r.stderr).toBe(0)
    const result = JSON.parse(r.stdout) as { vmid: number; outcome: string; opId: string }
    expect(result).toMatchObject({ vmid: 110, outcome: "done" })
    const events = r.stderr.trim().split("\n").map((l) => JSON.parse(l) as { event: string; step?: string; state?: string })
    expect(events.filter((e) => e.event === "step" && e.state === "done").map((e) => e.step)).toEqual(
      expect.arrayContaining(["restore", "resize", "configure", "seal", "untag", "start"])
    )
    expect(events.some((e) => e.event === "task")).toBe(true)
    expect(r.stdout + r.stderr).not.toMatch(ANSI)
    expect(r.stdout + r.stderr).not.toContain(exports["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"]!)
    const ops = JSON.parse((await run(["journal", "list", "--json"], { FELHOM_AGENT_STATE_DIR: dir })).stdout) as Array<{ id: string; kind: string; status: string }>
    expect(ops.map((o) => `${o.kind}:${o.status}:${o.id}`)).toEqual([`create:done:${result.opId}`])
    // human output without --json (and still no ANSI without a TTY): the guest exists now
    const again = await run(["provision", "--vmid", "110", "--desired", MIXED], { ...exports, FELHOM_AGENT_STATE_DIR: dir })
    expect(again.status).toBe(1)
    expect(again.stdout).toContain("guest 110: REFUSED: guest 110 exists")
    expect(again.stderr.trim().split("\n").at(-1)).toBe("felhom-agent: provision of 110: refused")
  }, 60_000)

  it("bad input is exit 2 with one line; another customer's backup as the archive is refused (exit 1)", async () => {
    const dir = await stateDir(true)
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir }
    const oneLine = (r: { stderr: string }) => expect(r.stderr.trim().split("\n")).toHaveLength(1)
    const none = await run(["provision", "--vmid", "110"], e)
    expect(none.status).toBe(2)
    expect(none.stderr).toContain("exactly one of --from-desired, --desired FILE, --spec FILE")
    const notThere = await run(["provision", "--vmid", "199", "--desired", MIXED], e)
    expect(notThere.status).toBe(2)
    expect(notThere.stderr).toContain("guest 199 is not in")
    oneLine(notThere)
    const specDir = mkdtempSync(join(tmpdir(), "felhom-prov-spec-"))
    const spec = join(specDir, "g.json")
    writeFileSync(spec, JSON.stringify(Schema.encodeSync(DesiredGuest)(guest(111))))
    const mismatch = await run(["provision", "--vmid", "112", "--spec", spec, "--archive", GOLDEN, "--storage", "local-lvm"], e)
    expect(mismatch.status).toBe(2)
    expect(mismatch.stderr).toContain("not --vmid 112")
    const noArchive = await run(["provision", "--vmid", "111", "--spec", spec], e)
    expect(noArchive.status).toBe(2)
    expect(noArchive.stderr).toContain("--archive")
    const unknownKey = join(specDir, "bad.json")
    writeFileSync(unknownKey, JSON.stringify({ ...Schema.encodeSync(DesiredGuest)(guest(111)), privileged: true }))
    const strict = await run(["provision", "--vmid", "111", "--spec", unknownKey, "--archive", GOLDEN, "--storage", "local-lvm"], e)
    expect(strict.status).toBe(2)
    oneLine(strict)
    const foreign = await run(["provision", "--vmid", "111", "--spec", spec, "--archive", FOREIGN_BACKUP, "--storage", "local-lvm", "--json"], e)
    expect(foreign.status).toBe(1)
    expect(JSON.parse(foreign.stdout)).toMatchObject({ outcome: "refused", opId: null })
    expect((JSON.parse(foreign.stdout) as { detail: string }).detail).toMatch(/golden_unverified/)
  }, 60_000)

  it("never runs beside a daemon: a running daemon holds the state lock, provision (and a second daemon) are refused", async () => {
    const dir = await stateDir(true)
    const keyDir = mkdtempSync(join(tmpdir(), "felhom-prov-key-"))
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(keyDir, "op")])
    const config = join(keyDir, "agent.json")
    writeFileSync(config, JSON.stringify({
      host_id: "host-prov",
      state_dir: dir,
      // an unreachable hub: the daemon keeps running and retrying
      hub: { url: "https://127.0.0.1:9", api_key: "hub-key-for-the-lock-test" },
      authz: { signers: [`role=operational,key-id=alice ${readFileSync(join(keyDir, "op.pub"), "utf8").trim()}`] }
    }))
    const e = { ...exports, FELHOM_AGENT_CONFIG: config }
    const daemon = spawn(process.execPath, [bin, "daemon"], { env: env(e), stdio: ["ignore", "pipe", "pipe"] })
    running.add(daemon)
    let log = ""
    daemon.stdout!.on("data", (c: Buffer) => (log += c.toString()))
    daemon.stderr!.on("data", (c: Buffer) => (log += c.toString()))
    try {
      const holder = join(dir, "agent.lock.json")
      for (let i = 0; i < 200 && !(existsSync(holder) && readFileSync(holder, "utf8").includes(`"pid":${daemon.pid}`)); i++) {
        await new Promise((r) => setTimeout(r, 100))
      }
      expect(readFileSync(holder, "utf8"), log).toContain(`"holder":"daemon"`)
      const refused = await run(["provision", "--vmid", "110", "--desired", MIXED], e)
      expect(refused.status).toBe(1)
      expect(refused.stderr.trim()).toMatch(new RegExp(`^felhom-agent: StateLocked: the daemon is running: daemon \\(pid ${daemon.pid}, since `))
      expect(refused.stderr).toContain("systemctl stop felhom-agent")
      // a preview changes nothing: it does not need the lock
      expect((await run(["provision", "--vmid", "110", "--desired", MIXED, "--plan"], e)).status).toBe(0)
      const second = await run(["daemon"], e)
      expect(second.status).toBe(1)
      expect(second.stderr).toContain("the daemon is running")
    } finally {
      daemon.kill("SIGTERM")
      await new Promise((r) => daemon.once("close", r))
    }
    // the lock went with the daemon
    const spec = join(keyDir, "g115.json")
    writeFileSync(spec, JSON.stringify(Schema.encodeSync(DesiredGuest)(guest(115))))
    const after = await run(["provision", "--vmid", "115", "--spec", spec, "--archive", GOLDEN, "--storage", "local-lvm", "--json"], e)
    expect(after.status, after.stderr).toBe(0)
  }, 90_000)

  it.skipIf(!existsSync("/usr/bin/script"))("at a terminal: finished steps as lines, the live step redrawn in place with the task log tail", async () => {
    const dir = await stateDir(true)
    const specDir = mkdtempSync(join(tmpdir(), "felhom-prov-tty-"))
    const spec = join(specDir, "g116.json")
    writeFileSync(spec, JSON.stringify(Schema.encodeSync(DesiredGuest)(guest(116))))
    // util-linux script(1) gives the command a pseudo-terminal on stdout and stderr
    const command = [process.execPath, bin, "provision", "--vmid", "116", "--spec", spec, "--archive", GOLDEN, "--storage", "local-lvm"]
      .map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ")
    const r = await new Promise<{ status: number | null; out: string }>((resolve, reject) => {
      const child = spawn("/usr/bin/script", ["-qec", command, "/dev/null"], { env: env({ ...exports, FELHOM_AGENT_STATE_DIR: dir }), stdio: ["ignore", "pipe", "pipe"] })
      running.add(child)
      let out = ""
      child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c))
      child.on("error", reject)
      child.on("close", (status) => (running.delete(child), resolve({ status, out })))
    })
    expect(r.status, r.out).toBe(0)
    expect(r.out).toMatch(/✓ resize {2}0:0\d/)
    expect(r.out).toMatch(/… start {2}0:0\d {2}\(total 0:\d\d\) {2}\[PVE task running\]/)
    expect(r.out).toMatch(/\u001b\[\d+A\r\u001b\[J/) // redrawn in place
    expect(r.out).toMatch(/… start .*\r?\n {6}│ /) // a line of the start task's log under it
    expect(r.out).toContain("guest 116: DONE")
    expect(r.out).not.toContain(exports["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"]!)
  }, 60_000)

  it("interrupted mid-saga (Ctrl-C): the op stays in flight, the operator is told, and recover --journal rolls it back", async () => {
    const dir = await stateDir(true)
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir }
    const specDir = mkdtempSync(join(tmpdir(), "felhom-prov-int-"))
    const spec = join(specDir, "g117.json")
    writeFileSync(spec, JSON.stringify(Schema.encodeSync(DesiredGuest)(guest(117))))
    const child = spawn(process.execPath, [bin, "provision", "--vmid", "117", "--spec", spec, "--archive", GOLDEN, "--storage", "local-lvm"], {
      env: env(e),
      stdio: ["ignore", "pipe", "pipe"]
    })
    running.add(child)
    let stderr = ""
    child.stdout!.resume()
    const closed = new Promise((r) => child.once("close", r))
    await new Promise<void>((resolve) => {
      child.stderr!.setEncoding("utf8").on("data", (c: string) => {
        stderr += c
        if (stderr.includes(`"step":"restore","state":"started"`)) resolve()
      })
    })
    child.kill("SIGINT")
    await closed
    running.delete(child)
    expect(stderr).toContain("interrupted; an operation left in flight is settled by `felhom-agent recover --journal`")
    const inFlight = await run(["journal", "list", "--json"], { FELHOM_AGENT_STATE_DIR: dir })
    expect((JSON.parse(inFlight.stdout) as Array<{ kind: string; status: string }>).map((o) => `${o.kind}:${o.status}`)).toEqual(["create:in_flight"])
    const replay = await run(["recover", "--journal", "--json"], e)
    expect(replay.status, replay.stderr).toBe(0)
    const recovered = (JSON.parse(replay.stdout) as { recovered: Array<{ kind: string; vmid: number; outcome: string }> }).recovered
    expect(recovered.map((r) => `${r.kind}:${r.vmid}:${r.outcome}`)).toEqual(["create:117:rolled_back"])
    // nothing half-built is left: the same provision runs again from scratch
    const again = await run(["provision", "--vmid", "117", "--spec", spec, "--archive", GOLDEN, "--storage", "local-lvm", "--json"], e)
    expect(again.status, again.stderr).toBe(0)
  }, 90_000)

  it.effect("the lock is the kernel's: held across processes, released when its holder's scope ends", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "felhom-lock-"))
      const exit = yield* Effect.exit(Effect.scoped(Effect.zipRight(
        holdStateLockIn(dir, "provision 110"),
        Effect.scoped(holdStateLockIn(dir, "recover 111"))
      )))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("provision 110 (pid")
      // released: taken again at once
      yield* Effect.scoped(holdStateLockIn(dir, "recover 111"))
    }))
})
