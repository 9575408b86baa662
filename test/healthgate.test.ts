/**
 * The health gate (issue 14): configs/libexec/felhom-healthgate run for real against a scratch
 * prefix with fake releases and a fake systemctl that starts and kills the fake agent `current`
 * names. A good release is committed after a clean window; a bad one (failing health, exits at
 * start, a stale process answering the old version, healthy then failing mid-window) is reverted.
 * Crash injection: the gate is SIGKILLed after every step (its own test hook, and the fake
 * systemctl killing the gate's process group before/after each call); `current` must name a
 * whole release at that instant, and a re-run (as at boot) must converge. Windows are ~1 s.
 */
import { afterAll, describe, expect, it, vi } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DEFAULT_STATUS_PORT, UNITS } from "../src/schema/install.js"
import { type Behaviour, type GateTiming, type Host, makeHost, runGate, runScript, runUpdate, watchInvariants, writeAgentConfig, writeDownload } from "./update-gate-support.js"

const hosts: Array<Host> = []
afterAll(() => {
  for (const h of hosts) h.cleanup()
})

const isRoot = process.getuid?.() === 0
// The shared CI machine runs at several times its core count: each test here waits on child
// processes that may start slowly, so the per-test limit is generous (the windows stay short).
vi.setConfig({ testTimeout: 120_000 })
// Every suite and test runs concurrently: they wait on windows and child processes, not CPU.
const rootSuite = isRoot ? describe.concurrent : describe.skip

/** A host running package 1.0.0 with release `version` staged in slots/a. */
const stagedHost = async (behaviour: Behaviour, version = "1.1.0", flakyAfter?: number) => {
  const h = await makeHost({ version: "1.0.0" })
  hosts.push(h)
  h.writeRelease(join(h.prefix, "slots", "a"), { version, behaviour, ...(flakyAfter === undefined ? {} : { flakyAfter }) })
  h.writeState({ state: "staged", slot: "slots/a", version, staged_at: "2026-11-30T00:00:00Z", activated_at: "2026-11-30T00:01:00Z" })
  // the agent runs the old release, as before activation
  await runScript([h.systemctl, "restart", "felhom-agent.service"], {})
  h.writeState({ state: "staged", slot: "slots/a", version, staged_at: "2026-11-30T00:00:00Z", activated_at: "2026-11-30T00:01:00Z" })
  rmSync(join(h.base, "systemctl.log"), { force: true })
  rmSync(join(h.base, "systemctl.calls"), { force: true })
  return h
}

const expectCommitted = async (h: Host, version = "1.1.0") => {
  expect(h.state()).toMatchObject({ state: "committed", slot: "slots/a", previous: "package", version })
  expect(h.link("current")).toBe("slots/a")
  expect(h.link("last-good")).toBe("slots/a")
  expect(await h.health()).toBe(version)
}

const expectReverted = async (h: Host, reason: RegExp) => {
  const s = h.state()
  expect(s).toMatchObject({ state: "reverted", slot: "slots/a", previous: "package", version: "1.1.0" })
  expect(String(s?.reason)).toMatch(reason)
  expect(h.link("current")).toBe("package")
  expect(h.link("last-good")).toBe("package")
  // the old release runs again
  expect(await h.health()).toBe("1.0.0")
}

rootSuite("felhom-healthgate: the window", () => {
  it("commits a good release: trial written, current flipped, agent restarted, clean window, last-good moved", async () => {
    const h = await stagedHost("ok")
    const stop = watchInvariants(h)
    const r = await runGate(h)
    const seen = stop()
    expect(r.code, r.stderr).toBe(0)
    await expectCommitted(h)
    // sampled throughout: current always a whole release, the journal always whole
    expect(seen.violations).toEqual([])
    expect(seen.samples).toBeGreaterThan(50)
    const log = h.systemctlLog()
    expect(log[0]).toBe("restart felhom-agent.service")
    expect(log.filter((l) => l === "is-active felhom-agent.service").length).toBeGreaterThanOrEqual(2)
    expect(r.stdout).toMatch(/committed 1\.1\.0 \(slots\/a\)/)
    // the journal's line is compact JSON with the fields in the fixed order
    expect(h.state()?.committed_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    // no temp files left behind
    expect(readdirSync(h.prefix).filter((f) => f.endsWith(".tmp"))).toEqual([])
  })

  it.each([
    ["failing health (503 status failing)", "failing" as const, /not healthy within 2s of the restart: no 2xx answer/],
    ["exits at start", "exit" as const, /not healthy within 2s of the restart: no 2xx answer/],
    ["answers ok with the OLD version (a stale process)", "old" as const, /version 0\.0\.1 answers, expected 1\.1\.0/]
  ])("reverts a release with %s: current back, agent restarted, last-good untouched, reason named", async (_, behaviour, reason) => {
    const h = await stagedHost(behaviour)
    const stop = watchInvariants(h)
    // the stale process must be up within the grace for its answer to be the reason
    const r = await runGate(h, {}, { grace: behaviour === "old" ? 8 : 2 })
    expect(stop().violations).toEqual([])
    expect(r.code, r.stderr).toBe(0)
    await expectReverted(h, reason)
    const log = h.systemctlLog()
    expect(log[0]).toBe("restart felhom-agent.service")
    expect(log.at(-1)).toBe("restart felhom-agent.service")
    expect(r.stdout).toMatch(/reverted 1\.1\.0 \(slots\/a\) to package/)
  })

  it("reverts a release healthy at first and failing mid-window", async () => {
    const h = await stagedHost("flaky", "1.1.0", 2)
    const r = await runGate(h, {}, { window: 5 })
    expect(r.code, r.stderr).toBe(0)
    await expectReverted(h, /unhealthy \ds into the 5s window: no 2xx answer/)
    expect(r.stdout).toMatch(/healthy: 1\.1\.0 answers; clean window/)
  })

  it("reverts when the unit is not active although something answers ok with the new version", async () => {
    const h = await stagedHost("ok")
    // a systemctl that restarts for real but reports the unit failed
    const wrapper = join(h.base, "systemctl-failed")
    writeFileSync(wrapper, `#!/bin/sh\nif [ "$1" = is-active ]; then echo failed; exit 3; fi\nexec ${h.systemctl} "$@"\n`, { mode: 0o755 })
    const r = await runGate(h, { FELHOM_GATE_TEST_SYSTEMCTL: wrapper }, { grace: 8 })
    expect(r.code, r.stderr).toBe(0)
    await expectReverted(h, /felhom-agent\.service is failed/)
  })

  it("does nothing without a journal, or when idle, committed or reverted are already applied", async () => {
    const h = await makeHost()
    hosts.push(h)
    for (const s of [undefined, { state: "idle" }, { state: "committed", slot: "slots/a", previous: "package", version: "1.1.0" }, { state: "reverted", slot: "slots/a", previous: "package", version: "1.1.0", reason: "x" }]) {
      if (s === undefined) rmSync(join(h.prefix, "update.json"), { force: true })
      else h.writeState(s)
      const r = await runGate(h)
      expect(r.code, r.stderr).toBe(0)
      expect(h.systemctlLog()).toEqual([])
      expect(h.link("current")).toBe("package")
      expect(h.link("last-good")).toBe("package")
      expect(h.state()).toEqual(s)
    }
  })

  it("leaves a staged release that was never activated alone (the boot run): no flip, no restart, still staged", async () => {
    // an update that stopped between stage and activate is abandoned in the agent's journal
    // ("nothing changed"); the boot-time gate must not start it later, outside the update window
    const h = await stagedHost("ok")
    const line = { state: "staged", slot: "slots/a", version: "1.1.0", staged_at: "2026-11-30T00:00:00Z" }
    h.writeState(line)
    const r = await runGate(h)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/never activated/)
    expect(h.link("current")).toBe("package")
    expect(h.link("last-good")).toBe("package")
    expect(h.systemctlLog()).toEqual([])
    expect(h.state()).toEqual(line)
    expect(await h.health()).toBe("1.0.0")
  })

  it("refuses a non-loopback health URL and bad timings (exit 2), touching nothing", async () => {
    const h = await stagedHost("ok")
    for (const url of ["http://10.0.0.1:8719/health", "https://127.0.0.1:8719/health", "http://127.0.0.1.evil:80/health", "http://localhost:8719/health", "http://127.0.0.1:8719/h'x"]) {
      const r = await runGate(h, { FELHOM_GATE_HEALTH_URL: url })
      expect(r.code, url).toBe(2)
    }
    expect((await runGate(h, { FELHOM_GATE_WINDOW_SECONDS: "1e3" })).code).toBe(2)
    expect((await runGate(h, { FELHOM_GATE_INTERVAL_SECONDS: "-1" })).code).toBe(2)
    expect(h.state()?.state).toBe("staged")
    expect(h.link("current")).toBe("package")
    expect(h.systemctlLog()).toEqual([])
  })

  it("never trials an incomplete or mislabelled staged slot: reverted without a flip or restart", async () => {
    const h = await stagedHost("ok")
    rmSync(join(h.prefix, "slots", "a", "bin", "felhom-agent"))
    const r = await runGate(h)
    expect(r.code, r.stderr).toBe(0)
    expect(h.state()).toMatchObject({ state: "reverted", reason: expect.stringMatching(/does not hold a complete release/) })
    expect(h.link("current")).toBe("package")
    expect(h.systemctlLog()).toEqual([])

    const h2 = await stagedHost("ok")
    h2.writeState({ state: "staged", slot: "slots/a", version: "1.2.0", staged_at: "x", activated_at: "x" })
    expect((await runGate(h2)).code).toBe(0)
    expect(h2.state()).toMatchObject({ state: "reverted", version: "1.2.0" })
    expect(h2.link("current")).toBe("package")
  })

  it("repairs a current or last-good that is missing, foreign or names an incomplete release", async () => {
    const h = await makeHost()
    hosts.push(h)
    h.setLink("current", "/etc")
    h.setLink("last-good", "slots/b")
    const r = await runGate(h)
    expect(r.code, r.stderr).toBe(0)
    expect(h.link("current")).toBe("package")
    expect(h.link("last-good")).toBe("package")
    expect(h.systemctlLog()).toEqual(["restart felhom-agent.service"])

    rmSync(join(h.prefix, "current"))
    h.writeRelease(join(h.prefix, "slots", "b"), { version: "1.1.0" })
    h.setLink("last-good", "slots/b")
    expect((await runGate(h)).code).toBe(0)
    expect(h.link("current")).toBe("slots/b")
    expect(h.link("last-good")).toBe("slots/b")

    // a journal that cannot be parsed: back to last-good, journal reset to idle
    h.setLink("current", "package")
    writeFileSync(join(h.prefix, "update.json"), "{\"state\":\"trial\",\"slot\":\"../../etc\"}\n")
    expect((await runGate(h)).code).toBe(0)
    expect(h.link("current")).toBe("slots/b")
    expect(h.state()?.state).toBe("idle")
  })

  it("a trial interrupted MAX_ATTEMPTS times is reverted without another try", async () => {
    const h = await stagedHost("ok")
    h.setLink("current", "slots/a")
    h.writeState({ state: "trial", slot: "slots/a", previous: "package", version: "1.1.0", started_at: "x", attempt: 3 })
    const r = await runGate(h)
    expect(r.code, r.stderr).toBe(0)
    await expectReverted(h, /interrupted 3 times/)
    expect(h.systemctlLog()).toEqual(["restart felhom-agent.service"])
  })
})

/**
 * Where the gate is killed. Its own hook covers the steps without a systemctl call (the journal
 * writes and link flips); the fake systemctl kills the gate's process group just before or just
 * after a call (call 1 is the trial's restart, so "before 1" is right after the flip; 2 and 3 are
 * is-active probes inside the window).
 */
const GOOD_HOOKS = ["trial-written", "flipped", "decided", "last-good-flipped"] as const
const BAD_HOOKS = ["trial-written", "flipped", "decided", "current-reverted"] as const

interface Crash {
  readonly label: string
  readonly env: Record<string, string>
}

const crashes = (hooks: ReadonlyArray<string>, calls: ReadonlyArray<number>): Array<Crash> => [
  ...hooks.map((s) => ({ label: `after step ${s}`, env: { FELHOM_GATE_TEST_CRASH_AFTER: s } })),
  ...calls.flatMap((n) => (["before", "after"] as const).map((w) => ({ label: `${w} systemctl call ${n}`, env: { FAKE_CRASH_CALL: String(n), FAKE_CRASH_WHEN: w } })))
]

/**
 * Crash, check `current` at that instant, then a power loss (the agent dies too), a boot (systemd
 * starts the agent from `current`), and the gate's boot run.
 */
const crashAndBoot = async (h: Host, crash: Crash, t: GateTiming = {}) => {
  const first = await runGate(h, crash.env, t)
  expect(first.signal, `${crash.label}: ${first.stdout}${first.stderr}`).toBe("SIGKILL")
  const atCrash = h.currentRelease()
  h.killAgent()
  const boot = await runScript([h.systemctl, "restart", "felhom-agent.service"], {})
  expect(boot.code).toBe(0)
  const second = await runGate(h, {}, t)
  expect(second.code, `${crash.label}: ${second.stderr}`).toBe(0)
  return atCrash
}

/** All cases at once (they wait on windows, not CPU); every failure is reported with its label. */
const allCases = async (cases: ReadonlyArray<Crash>, one: (c: Crash) => Promise<void>) => {
  const results = await Promise.allSettled(cases.map(one))
  const failed = results.flatMap((r, i) => (r.status === "rejected" ? [`${cases[i]!.label}: ${String(r.reason)}`] : []))
  expect(failed).toEqual([])
}

rootSuite("felhom-healthgate: SIGKILL at every step, then a reboot", () => {
  const good = crashes(GOOD_HOOKS, [1, 2, 3])
  it(`a good release converges to committed, crashed at each of ${good.length} points`, async () => {
    await allCases(good, async (crash) => {
      const h = await stagedHost("ok")
      const atCrash = await crashAndBoot(h, crash)
      expect(["1.0.0", "1.1.0"], crash.label).toContain(atCrash)
      await expectCommitted(h)
    })
  })

  // healthy at the first probe, failing at the second: the trial always reaches the window
  const bad = crashes(BAD_HOOKS, [1, 2])
  it(`a bad release converges to reverted, crashed at each of ${bad.length} points`, async () => {
    await allCases(bad, async (crash) => {
      const h = await stagedHost("flaky", "1.1.0", 1)
      const atCrash = await crashAndBoot(h, crash, { window: 5 })
      expect(["1.0.0", "1.1.0"], crash.label).toContain(atCrash)
      await expectReverted(h, /unhealthy \ds into the 5s window|interrupted/)
    })
  })

  it("crashes in a row: a good release still commits on its third trial; a fourth trial is never started (reverted)", async () => {
    const h = await stagedHost("ok")
    // trial 1 dies right after the flip, trial 2 inside the window (its first is-active probe)
    for (const env of [{ FELHOM_GATE_TEST_CRASH_AFTER: "flipped" }, { FAKE_CRASH_CALL: "2", FAKE_CRASH_WHEN: "before" }]) {
      rmSync(join(h.base, "systemctl.calls"), { force: true })
      const r = await runGate(h, env)
      expect(r.signal).toBe("SIGKILL")
      expect(h.currentRelease()).toBe("1.1.0")
    }
    expect(h.state()).toMatchObject({ state: "trial", attempt: 2 })
    rmSync(join(h.base, "systemctl.calls"), { force: true })
    expect((await runGate(h)).code).toBe(0)
    await expectCommitted(h)

    // a release whose trials keep dying (say it takes the host down): three starts, then reverted
    const h2 = await stagedHost("ok")
    for (let i = 1; i <= 3; i++) {
      rmSync(join(h2.base, "systemctl.calls"), { force: true })
      const r = await runGate(h2, { FAKE_CRASH_CALL: "1", FAKE_CRASH_WHEN: "after" })
      expect(r.signal).toBe("SIGKILL")
      expect(h2.state()).toMatchObject({ state: "trial", attempt: i })
      expect(h2.currentRelease()).toBe("1.1.0")
    }
    rmSync(join(h2.base, "systemctl.calls"), { force: true })
    expect((await runGate(h2)).code).toBe(0)
    await expectReverted(h2, /the health window was interrupted 3 times/)
  })

  it("a bad release crashed just before or after the revert's own restart converges to reverted", async () => {
    const h = await stagedHost("flaky", "1.1.0", 1)
    expect((await runGate(h, {}, { window: 5 })).code).toBe(0)
    const calls = h.systemctlLog().length
    expect(h.systemctlLog().at(-1)).toBe("restart felhom-agent.service")
    await allCases(crashes([], [calls]), async (crash) => {
      const h2 = await stagedHost("flaky", "1.1.0", 1)
      const atCrash = await crashAndBoot(h2, crash, { window: 5 })
      expect(["1.0.0", "1.1.0"], crash.label).toContain(atCrash)
      await expectReverted(h2, /unhealthy \ds into the 5s window/)
    })
  })
})

rootSuite("felhom-update and the gate together", () => {
  it("stage → activate → gate commits a good release; the next bad one is reverted to it", async () => {
    const h = await makeHost({ version: "1.0.0" })
    hosts.push(h)
    writeAgentConfig(h)
    await runScript([h.systemctl, "restart", "felhom-agent.service"], {})
    writeDownload(h, { version: "1.1.0" })
    const staged = await runUpdate(h, ["stage", "1.1.0"])
    expect(staged.stdout, staged.stderr).toBe("staged a 1.1.0\n")
    // staged, not yet activated: a gate run (as at boot) leaves it alone
    expect((await runGate(h)).code).toBe(0)
    expect(h.state()).toMatchObject({ state: "staged", slot: "slots/a", version: "1.1.0" })
    expect(h.link("current")).toBe("package")
    const act = await runUpdate(h, ["activate"])
    expect(act.stdout, act.stderr).toBe("activating 1.1.0\n")
    expect(h.systemctlLog().at(-1)).toBe("start --no-block felhom-agent-gate.service")
    expect(h.state()?.activated_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    expect((await runGate(h)).code).toBe(0)
    expect(h.state()).toMatchObject({ state: "committed", slot: "slots/a", version: "1.1.0" })
    expect(await h.health()).toBe("1.1.0")

    // 1.2.0 goes to slots/b (slots/a is current and last-good) and fails its window
    writeDownload(h, { version: "1.2.0", behaviour: "failing" })
    const staged2 = await runUpdate(h, ["stage", "1.2.0"])
    expect(staged2.stdout, staged2.stderr).toBe("staged b 1.2.0\n")
    expect((await runUpdate(h, ["activate"])).code).toBe(0)
    expect((await runGate(h, {}, { grace: 1 })).code).toBe(0)
    expect(h.state()).toMatchObject({ state: "reverted", slot: "slots/b", previous: "slots/a", version: "1.2.0" })
    expect(h.link("current")).toBe("slots/a")
    expect(h.link("last-good")).toBe("slots/a")
    expect(await h.health()).toBe("1.1.0")
    // activate again is refused: nothing staged
    expect((await runUpdate(h, ["activate"])).code).toBe(3)
  })
})

const UNIT = join(__dirname, "..", "configs", "systemd", UNITS.gate)
const hasAnalyze = spawnSync("sh", ["-c", "command -v systemd-analyze"]).status === 0

describe("the gate unit", () => {
  const text = readFileSync(UNIT, "utf8")
  it("runs the gate as a oneshot at boot after the agent, probing the status endpoint's default port on loopback", () => {
    expect(text).toMatch(/^Type=oneshot$/m)
    expect(text).toMatch(/^ExecStart=\/usr\/local\/libexec\/felhom-agent\/felhom-healthgate run$/m)
    expect(text).toMatch(/^After=felhom-agent\.service$/m)
    expect(text).toMatch(/^WantedBy=multi-user\.target$/m)
    expect(text).toContain(`Environment=FELHOM_GATE_HEALTH_URL=http://127.0.0.1:${DEFAULT_STATUS_PORT}/health\n`)
    // no test hook is ever set by the unit
    expect(text).not.toMatch(/FELHOM_GATE_TEST_/)
    // the script's defaults are the unit's
    const script = readFileSync(join(__dirname, "..", "configs", "libexec", "felhom-healthgate"), "utf8")
    for (const [k, v] of [...text.matchAll(/^Environment=(FELHOM_GATE_[A-Z_]+)=(\S+)$/gm)].map((m) => [m[1]!, m[2]!] as const)) {
      expect(script, k).toContain(`\${${k}:-${v}}`)
    }
  })

  it.skipIf(!hasAnalyze)("passes systemd-analyze verify", () => {
    const dir = mkdtempSync(join(tmpdir(), "felhom-gate-unit-"))
    try {
      const copy = join(dir, UNITS.gate)
      writeFileSync(copy, text.replace(/^ExecStart=\S+ /m, "ExecStart=/bin/true "))
      const r = spawnSync("systemd-analyze", ["verify", "--man=no", copy], { encoding: "utf8", env: { ...process.env, SYSTEMD_LOG_COLOR: "0" } })
      expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ status: 0, stdout: "", stderr: "" })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
