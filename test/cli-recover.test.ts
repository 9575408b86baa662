/**
 * `felhom-agent recover` (issue 12) as the operator runs it: the shipped bin against `sim pve` in
 * another process. --plan (human and JSON), a recovery that would overwrite refused without a
 * signature (exit 4, nothing journaled, the exact op commands printed), those very commands run
 * and the signed recovery completing, a fresh recovery of a vmid the agent knows nothing of, a
 * partial-loss recovery left link-down until --confirm, the journal replay's report, exit codes,
 * JSON output and progress lines without a TTY, and the state lock.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { type ChildProcess, execFileSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { Journal, JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { shellQuote, signingCommands } from "../src/programs/cli/recover.js"
import { holdStateLockIn } from "../src/programs/cli/stateLock.js"
import type { RecoverPlan } from "../src/programs/bringup/tiers.js"
import { encodeOperation } from "../src/schema/operations.js"
import { VmId } from "../src/schema/ids.js"
import { durations } from "./support.js"
import { cleanEnv, nodeRunner, root, startSimPve } from "./bin-support.js"

const HOST = "host-rec"

const work = mkdtempSync(join(tmpdir(), "felhom-rec-"))
const emptyConfig = join(work, "empty.json")
writeFileSync(emptyConfig, "{}")
const env = (extra: Record<string, string> = {}) => cleanEnv(emptyConfig, extra)
const runner = nodeRunner(env)
const run = runner.run

let sim: ChildProcess
let exports: Record<string, string> = {}
/** The operator's key, and a config naming it as a signer of this host. */
let config = ""
let key = ""

beforeAll(async () => {
  // the default seed with quick tasks, plus backups of two guests that are gone (120, 121)
  const seed = JSON.parse(readFileSync(join(root, "configs", "sim", "pve.json"), "utf8")) as {
    backups: Array<{ vmid: number; time: string; notes?: string; config: Record<string, unknown> }>
  }
  const of100 = seed.backups.find((b) => b.vmid === 100)!
  const lost = (vmid: number, hostname: string) => ({
    ...of100,
    vmid,
    time: "2026-01-15T03:00:00Z",
    notes: `${hostname} nightly`,
    config: { ...of100.config, hostname, rootfs: `local-lvm:vm-${vmid}-disk-0,size=16G` }
  })
  const seedFile = join(work, "seed.json")
  writeFileSync(seedFile, JSON.stringify({ ...seed, backups: [...seed.backups, lost(120, "cust-lost"), lost(121, "cust-split")], ...durations(300) }))
  const started = await startSimPve(env(), seedFile)
  sim = started.child
  exports = started.exports
  key = join(work, "op")
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key])
  config = join(work, "agent.json")
  writeFileSync(config, JSON.stringify({
    host_id: HOST,
    authz: { signers: [`role=operational,key-id=alice ${readFileSync(`${key}.pub`, "utf8").trim()}`] }
  }))
})

afterAll(() => {
  sim?.kill("SIGTERM")
  runner.kill()
})

/** A fresh state directory (its database created now: signatures made later are valid for it). */
const stateDir = async (setup: (j: JournalShape) => Effect.Effect<unknown, unknown> = () => Effect.void) => {
  const dir = join(mkdtempSync(join(work, "state-")), "state")
  mkdirSync(dir, { mode: 0o700 })
  await Effect.runPromise(Effect.flatMap(Journal, setup).pipe(Effect.provide(JournalLive.pipe(Layer.provide(layerAt(join(dir, "state.db"))))), Effect.orDie))
  return dir
}

const ANSI = /\u001b/
const journalOf = async (dir: string) =>
  JSON.parse((await run(["journal", "list", "--json"], { FELHOM_AGENT_STATE_DIR: dir })).stdout) as Array<{ kind: string; vmid: number; status: string }>

describe("signingCommands", () => {
  it("quotes the params exactly as the gate will compare them, for any text", () => {
    expect(shellQuote("it's")).toBe(`'it'\\''s'`)
    const plan = {
      vmid: VmId.make(120),
      point: { tier: "vzdump" },
      gatedParams: { scenario: "guest-loss-total", tier: "vzdump", point: "local:backup/o'brien.tar.zst", storage: "local-lvm" }
    } as unknown as RecoverPlan
    const [opNew] = signingCommands(plan, HOST, "total")
    // what a POSIX shell makes of the printed word is the JSON the plan binds
    const word = /--params ('(?:[^']|'\\'')*')/.exec(opNew!)![1]!
    expect(execFileSync("sh", ["-c", `printf %s ${word}`], { encoding: "utf8" })).toBe(JSON.stringify(plan.gatedParams))
  })
})

describe("felhom-agent recover (the shipped bin against sim pve)", () => {
  it("--plan: the tier, point, age, identity and what to sign; nothing changes", async () => {
    const dir = await stateDir()
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir, FELHOM_AGENT_CONFIG: config }
    const json = await run(["recover", "--vmid", "100", "--plan", "--json"], e)
    expect(json.status, json.stderr).toBe(0)
    expect(json.stdout.trim().split("\n")).toHaveLength(1)
    const out = JSON.parse(json.stdout) as { plan: RecoverPlan; signature: { needed: boolean; commands: Array<string> } }
    expect(out.plan).toMatchObject({ vmid: 100, mode: "overwrite", guestExists: true, needsSignature: true, point: { tier: "vzdump" } })
    expect(out.signature.commands[0]).toContain(`--op recover --host '${HOST}' --guest 100 --params '${JSON.stringify(out.plan.gatedParams)}'`)
    const snapshot = await run(["recover", "--vmid", "101", "--plan"], e)
    expect(snapshot.status).toBe(0)
    expect(snapshot.stdout).toContain("roll guest 101 back to its snapshot")
    expect(snapshot.stdout).toContain("nothing changed (--plan)")
    const partial = await run(["recover", "--vmid", "120", "--scenario", "partial", "--plan"], e)
    expect(partial.stdout).toContain("restore guest 120 (absent)")
    expect(partial.stdout).toMatch(/fresh: mac/)
    expect(partial.stdout).toContain("link-down until an operator confirms")
    expect(partial.stdout).toContain("no signature needed")
    expect(snapshot.stdout + partial.stdout + json.stdout).not.toMatch(ANSI)
    expect(await journalOf(dir)).toEqual([])
  }, 60_000)

  it("an overwrite without a signature: exit 4, nothing runs, and the printed commands make the signature that runs it", async () => {
    const dir = await stateDir()
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir, FELHOM_AGENT_CONFIG: config }
    const refused = await run(["recover", "--vmid", "100"], e)
    expect(refused.status, refused.stderr).toBe(4)
    expect(refused.stdout).toContain("guest 100: PENDING_SIGNATURE")
    expect(refused.stderr.trim().split("\n").at(-1)).toMatch(/^felhom-agent: recover of 100 needs an operator signature \(op recover, params \{/)
    expect(await journalOf(dir)).toEqual([])
    const commands = refused.stdout.split("\n").filter((l) => l.startsWith("  felhom-agent ")).map((l) => l.trim())
    expect(commands).toHaveLength(3)
    // run them as printed, with the placeholders filled in and this working directory
    const shell = (c: string) =>
      c.replace("<your-key-id>", "alice").replace("<your ssh key>", key).replace(/recover-100\.json/g, join(work, "recover-100.json"))
    const argv = (c: string) => execFileSync("sh", ["-c", `for a in ${shell(c).replace(/^felhom-agent /, "")}; do printf '%s\\0' "$a"; done`]).toString().split("\0").slice(0, -1)
    for (const c of commands.slice(0, 2)) {
      const r = await run(argv(c), e)
      expect(r.status, `${c}\n${r.stderr}`).toBe(0)
    }
    const signed = await run([...argv(commands[2]!), "--json"], e)
    expect(signed.status, signed.stderr).toBe(0)
    const result = JSON.parse(signed.stdout) as { result: { outcome: string; opId: string } }
    expect(result.result.outcome).toBe("done")
    expect((await journalOf(dir)).map((o) => `${o.kind}:${o.vmid}:${o.status}`)).toEqual(["recover:100:done"])
    // the nonce is spent: the same signature does not run twice
    const replay = await run(argv(commands[2]!), e)
    expect(replay.status).toBe(1)
    expect(replay.stdout).toMatch(/REJECTED: Replay/)
  }, 90_000)

  it("a fresh recovery of a vmid the agent knows nothing of runs unsigned: exit 0, JSON on stdout, JSON lines on stderr", async () => {
    const dir = await stateDir()
    const r = await run(["recover", "--vmid", "120", "--json"], { ...exports, FELHOM_AGENT_STATE_DIR: dir })
    expect(r.status, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout) as { plan: RecoverPlan; result: { outcome: string } }
    expect(out.plan.mode).toBe("fresh")
    expect(out.result.outcome).toBe("done")
    const events = r.stderr.trim().split("\n").map((l) => JSON.parse(l) as { event: string; step?: string; state?: string })
    expect(events[0]).toMatchObject({ event: "op" })
    expect(events.filter((ev) => ev.state === "done").map((ev) => ev.step)).toEqual(expect.arrayContaining(["restore", "seal", "start"]))
    expect(r.stdout + r.stderr).not.toMatch(ANSI)
    expect(r.stdout + r.stderr).not.toContain(exports["FELHOM_AGENT_PROXMOX_TOKEN_SECRET"]!)
  }, 60_000)

  it("a lost guest the journal knows needs a signature even when nothing is overwritten", async () => {
    const dir = await stateDir((j) => j.markLost(121, "gone"))
    const r = await run(["recover", "--vmid", "121", "--scenario", "partial"], { ...exports, FELHOM_AGENT_STATE_DIR: dir })
    expect(r.status).toBe(4)
    expect(r.stdout).toContain("--host '<host_id>'") // no host_id configured: the operator fills it in
    expect(await journalOf(dir)).toEqual([])
  }, 60_000)

  it("partial loss: the recovered guest stays link-down until --confirm", async () => {
    const dir = await stateDir()
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir }
    const notYet = await run(["recover", "--vmid", "121", "--confirm"], e)
    expect(notYet.status).toBe(1)
    expect(notYet.stderr).toContain("has no completed partial-loss recovery to confirm")
    const r = await run(["recover", "--vmid", "121", "--scenario", "partial"], e)
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toContain("guest 121: DONE")
    const confirmed = await run(["recover", "--vmid", "121", "--confirm", "--json"], e)
    expect(confirmed.status, confirmed.stderr).toBe(0)
    expect(JSON.parse(confirmed.stdout)).toEqual({ vmid: 121, link_up: ["net0"] })
    const again = await run(["recover", "--vmid", "121", "--confirm"], e)
    expect(again.stdout).toContain("no link-down NIC; nothing changed")
  }, 90_000)

  it("--journal replays what a crash left in flight and reports each op; held ops make it exit 1", async () => {
    const empty = await stateDir()
    const none = await run(["recover", "--journal", "--json"], { ...exports, FELHOM_AGENT_STATE_DIR: empty })
    expect(none.status, none.stderr).toBe(0)
    expect(JSON.parse(none.stdout)).toEqual({ recovered: [] })
    const crashed = await stateDir((j) =>
      Effect.zipRight(
        j.begin({ kind: "start", vmid: 100, payload: encodeOperation({ _tag: "start", vmid: VmId.make(100) }) }),
        j.begin({ kind: "stop", vmid: 102, payload: { not: "an operation" } })
      ))
    // a guest with an op a crash left in flight is not recovered over it: the replay comes first
    const early = await run(["recover", "--vmid", "102"], { ...exports, FELHOM_AGENT_STATE_DIR: crashed })
    expect(early.status).toBe(1)
    expect(early.stderr).toMatch(/stop op .* on guest 102 is still in flight \(a crash\): run `felhom-agent recover --journal` first/)
    const r = await run(["recover", "--journal"], { ...exports, FELHOM_AGENT_STATE_DIR: crashed })
    expect(r.status).toBe(1)
    expect(r.stdout).toContain("journal: 2 operation(s) were in flight")
    // an interrupted start is settled as failed (the next reconcile plans it again): no attention needed
    expect(r.stdout).toMatch(/failed +start +100 .*interrupted/)
    expect(r.stdout).toMatch(/needs_operator +stop +102 .*does not decode/)
    expect(r.stderr.trim().split("\n").at(-1)).toMatch(/^felhom-agent: 1 operation\(s\) still need attention: .* needs_operator$/)
    const journal = await journalOf(crashed)
    expect(journal.map((o) => `${o.kind}:${o.status}`).sort()).toEqual(["start:failed", "stop:needs_operator"])
  }, 60_000)

  it("usage errors are exit 2 with one line; no restore point is exit 1 naming where it looked", async () => {
    const dir = await stateDir()
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir }
    for (const args of [["recover"], ["recover", "--journal", "--vmid", "100"], ["recover", "--vmid", "100", "--confirm", "--plan"]]) {
      const r = await run(args, e)
      expect(r.status, args.join(" ")).toBe(2)
      expect(r.stderr.trim().split("\n"), args.join(" ")).toHaveLength(1)
    }
    const blob = join(work, "nothing.json")
    writeFileSync(blob, "{}")
    const noAuthz = await run(["recover", "--vmid", "100", "--signed", blob], e)
    expect(noAuthz.status).toBe(2)
    expect(noAuthz.stderr).toContain("--signed needs host_id and authz.signers")
    const nothing = await run(["recover", "--vmid", "777", "--plan"], e)
    expect(nothing.status).toBe(1)
    expect(nothing.stderr.trim().split("\n")).toHaveLength(1)
    expect(nothing.stderr).toMatch(/777/)
  }, 60_000)

  it("never beside another holder of the state lock (the daemon): refused, --plan still answers", async () => {
    const dir = await stateDir()
    const e = { ...exports, FELHOM_AGENT_STATE_DIR: dir }
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      yield* holdStateLockIn(dir, "daemon")
      for (const args of [["recover", "--journal"], ["recover", "--vmid", "120"], ["recover", "--vmid", "121", "--confirm"]]) {
        const r = yield* Effect.promise(() => run(args, e))
        expect(r.status, args.join(" ")).toBe(1)
        expect(r.stderr, args.join(" ")).toContain("the daemon is running")
      }
      const plan = yield* Effect.promise(() => run(["recover", "--vmid", "120", "--plan"], e))
      expect(plan.status).toBe(0)
    })))
    expect(await journalOf(dir)).toEqual([])
  }, 60_000)
})
