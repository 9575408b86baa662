/**
 * cloudflared (issue 14, SPEC §15: managed and health-watched, never embedded):
 * - the manager's schedule under TestClock: bring-up (start, or restart for a changed token),
 *   restarts after failures_before_restart failed checks with the backoff doubling to its max
 *   (the exact restart times), reset by a ready check; control failures leave it running;
 * - the root helper felhom-cloudflared, for real: token from stdin only, validated, written root
 *   0600 atomically only when it differs, symlinked or foreign directories refused;
 * - the whole path with real processes: Privileged (direct mode) → the real helper → a FAKE
 *   systemctl starting a FAKE cloudflared (test/fixtures/cloudflared/fake-cloudflared.mjs) that
 *   serves /ready on loopback; 503 and kill -9 are noticed and repaired by restarts; the token is
 *   in the fake's environment, never in any argv (/proc/<pid>/cmdline), log line or error.
 */
import { NodeContext } from "@effect/platform-node"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Layer, Logger, Option, Redacted, Ref, Schema, TestClock } from "effect"
import { spawnSync } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import { DEFAULT_HOST_PATHS, PrivilegedCloudflared, privilegedCloudflaredLayerAt, type PrivilegedCloudflaredShape, PrivilegedError } from "../src/layers/Privileged.js"
import { makeSudoSandbox } from "./privileged-support.js"
import type { SystemdShape } from "../src/layers/Systemd.js"
import {
  CloudflaredState,
  type CloudflaredView,
  cloudflaredReportStatus,
  layerWith,
  type ManagerSettings,
  probeReady,
  runManager,
  settingsOf
} from "../src/programs/cloudflared/manager.js"
import { AgentConfigFile } from "../src/schema/config.js"

const TOKEN = "eyJhIjoiZmVsaG9tLXRlc3QtdHVubmVsLXRva2VuIiwidCI6IjdmOWExYzJlIn0="
const HELPER = join(__dirname, "..", "configs", "libexec", "felhom-cloudflared")
const FAKE = join(__dirname, "fixtures", "cloudflared", "fake-cloudflared.mjs")
const isRoot = process.getuid?.() === 0

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`

/** Log lines, for the "never logged" checks. */
const capture = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ message }) => void lines.push(JSON.stringify(message)))
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

// ---------------------------------------------------------------------------------------------

describe("cloudflared manager: the schedule (TestClock)", () => {
  const settings = (over: Partial<ManagerSettings> = {}): ManagerSettings => ({
    token: Redacted.make(TOKEN),
    checkInterval: Duration.seconds(15),
    failuresBeforeRestart: 3,
    backoffMin: Duration.seconds(30),
    backoffMax: Duration.seconds(120),
    ...over
  })

  /** A control recording (time in s, action); `writeResult` per call, failures on demand. */
  const fakeControl = (writeResult: ReadonlyArray<"changed" | "unchanged"> = ["unchanged"], failWrite = false) =>
    Effect.gen(function*() {
      const calls = yield* Ref.make<Array<readonly [number, string]>>([])
      let writes = 0
      const note = (what: string) => Effect.flatMap(TestClock.currentTimeMillis, (ms) => Ref.update(calls, (c) => [...c, [ms / 1000, what] as const]))
      return {
        calls,
        control: {
          writeToken: (t: Redacted.Redacted<string>) =>
            Effect.zipRight(
              note(`write:${Redacted.value(t) === TOKEN ? "token" : "other"}`),
              failWrite
                ? Effect.fail(new PrivilegedError({ reason: "NonZeroExit", command: "felhom-cloudflared", exitCode: 3, message: "felhom-cloudflared: exited with status 3" }))
                : Effect.succeed(writeResult[Math.min(writes++, writeResult.length - 1)]!)
            ),
          start: note("start"),
          restart: note("restart")
        }
      }
    })

  it.effect("never ready: restarts after 3 failed checks, pausing 30, 60, 120, 120 s: at 45, 120, 225, 390, 555, 720 s", () =>
    Effect.gen(function*() {
      const { calls, control } = yield* fakeControl()
      const view = yield* Ref.make<CloudflaredView>("disabled")
      const fiber = yield* Effect.fork(runManager(settings(), control, Effect.succeed(false), view))
      yield* TestClock.adjust("14 seconds")
      expect(yield* Ref.get(view)).toBe("unknown")
      yield* TestClock.adjust("1 second")
      expect(yield* Ref.get(view)).toBe("stopped")
      yield* TestClock.adjust("800 seconds")
      const c = yield* Ref.get(calls)
      expect(c.filter(([, a]) => a === "restart").map(([t]) => t)).toEqual([45, 120, 225, 390, 555, 720])
      // bring-up: token, then start (unchanged); every restart re-ensures the token first
      expect(c.slice(0, 2)).toEqual([[0, "write:token"], [0, "start"]])
      expect(c.filter(([, a]) => a === "write:token").map(([t]) => t)).toEqual([0, 45, 120, 225, 390, 555, 720])
      yield* Fiber.interrupt(fiber)
    }))

  it.effect("a ready check resets failures and the backoff; a changed token at bring-up restarts instead of start", () =>
    Effect.gen(function*() {
      const { calls, control } = yield* fakeControl(["changed", "unchanged"])
      const view = yield* Ref.make<CloudflaredView>("disabled")
      // checks every 15 s: 6 failures, 1 ready, then failing again
      const script = [false, false, false, false, false, false, true]
      const probes = yield* Ref.make(0)
      const probe = Effect.map(Ref.getAndUpdate(probes, (n) => n + 1), (n) => script[n] ?? false)
      const fiber = yield* Effect.fork(runManager(settings(), control, probe, view))
      yield* TestClock.adjust("1000 seconds")
      const restarts = (yield* Ref.get(calls)).filter(([, a]) => a === "restart").map(([t]) => t)
      // bring-up restart at 0 (changed token); failures: 15, 30, 45 → restart 45, pause 30;
      // 90, 105, 120 → restart 120, pause 60 → 180; 195 ready (reset); 210, 225, 240 → restart at
      // 240 with the pause back at 30 → 270; 285, 300, 315 → 315, pause 60 → 375; 390, 405, 420 → 420
      expect(restarts.slice(0, 6)).toEqual([0, 45, 120, 240, 315, 420])
      expect((yield* Ref.get(calls)).some(([, a]) => a === "start")).toBe(false)
      yield* Fiber.interrupt(fiber)
    }))

  it.effect("ready: the view is running; a failed helper leaves the view unknown and the loop alive; no token in any log line", () =>
    Effect.gen(function*() {
      const logs = capture()
      const failing = yield* fakeControl(["unchanged"], true)
      const view = yield* Ref.make<CloudflaredView>("disabled")
      const fiber = yield* Effect.fork(runManager(settings({ failuresBeforeRestart: 1 }), failing.control, Effect.succeed(false), view).pipe(Effect.provide(logs.layer)))
      yield* TestClock.adjust("15 seconds")
      // the check failed (stopped), the restart's token write failed: unknown, and it goes on
      expect(yield* Ref.get(view)).toBe("unknown")
      yield* TestClock.adjust("300 seconds")
      expect((yield* Ref.get(failing.calls)).filter(([, a]) => a === "write:token").length).toBeGreaterThan(3)
      expect(logs.lines.some((l) => l.includes("restart failed: NonZeroExit"))).toBe(true)
      for (const l of logs.lines) expect(l).not.toContain(TOKEN)
      yield* Fiber.interrupt(fiber)

      const ok = yield* fakeControl()
      const view2 = yield* Ref.make<CloudflaredView>("disabled")
      const f2 = yield* Effect.fork(runManager(settings(), ok.control, Effect.succeed(true), view2))
      yield* TestClock.adjust("15 seconds")
      expect(yield* Ref.get(view2)).toBe("running")
      yield* TestClock.adjust("1000 seconds")
      expect((yield* Ref.get(ok.calls)).filter(([, a]) => a === "restart")).toEqual([])
      yield* Fiber.interrupt(f2)
    }))

  it("settings: disabled without enabled or token; a max below the min is raised to it", () => {
    const base = { enabled: true, token: Redacted.make(TOKEN), check_interval_seconds: 15, failures_before_restart: 3, backoff_min_seconds: 60, backoff_max_seconds: 10 }
    expect(Option.isNone(settingsOf({ ...base, enabled: false }))).toBe(true)
    expect(Option.isNone(settingsOf({ ...base, token: undefined }))).toBe(true)
    expect(Option.map(settingsOf(base), (s) => Duration.toSeconds(s.backoffMax))).toEqual(Option.some(60))
  })

  it.effect("the host report's status: the manager's view (disabled reads stopped), else systemd's word", () =>
    Effect.gen(function*() {
      const systemd = { cloudflaredStatus: Effect.succeed("running" as const) } as unknown as SystemdShape
      expect(yield* cloudflaredReportStatus(systemd)).toBe("running")
      const withView = (v: CloudflaredView) => cloudflaredReportStatus(systemd).pipe(Effect.provideService(CloudflaredState, { view: Effect.succeed(v) }))
      expect(yield* withView("disabled")).toBe("stopped")
      expect(yield* withView("unknown")).toBe("unknown")
      expect(yield* withView("stopped")).toBe("stopped")
    }))
})

// ---------------------------------------------------------------------------------------------

const runHelper = (root: string, input: string | Buffer, args: ReadonlyArray<string> = ["write-token"]) =>
  spawnSync("sh", [HELPER, ...args], { input, encoding: "utf8", env: { FELHOM_CLOUDFLARED_TEST_ROOT: root, PATH: "/usr/bin:/bin" } })

describe.skipIf(!isRoot)("felhom-cloudflared: the real root helper", () => {
  const scratch = () => mkdtempSync(join(tmpdir(), "felhom-cfhelper-"))
  const tokenFile = (root: string) => join(root, "etc", "felhom-agent", "cloudflared", "token.env")

  it("writes TUNNEL_TOKEN=<token> root 0600 in a 0700 directory, only when it differs", () => {
    const root = scratch()
    const first = runHelper(root, `${TOKEN}\n`)
    expect([first.status, first.stdout]).toEqual([0, "changed\n"])
    expect(readFileSync(tokenFile(root), "utf8")).toBe(`TUNNEL_TOKEN=${TOKEN}\n`)
    expect(statSync(tokenFile(root)).mode & 0o777).toBe(0o600)
    expect(statSync(join(root, "etc", "felhom-agent", "cloudflared")).mode & 0o777).toBe(0o700)
    const inode = statSync(tokenFile(root)).ino
    // the same token (without the newline too): unchanged, the file untouched
    expect(runHelper(root, TOKEN).stdout).toBe("unchanged\n")
    expect(statSync(tokenFile(root)).ino).toBe(inode)
    // another: replaced by rename (a new inode), no temp file left behind
    expect(runHelper(root, "another_token-1\n").stdout).toBe("changed\n")
    expect(readFileSync(tokenFile(root), "utf8")).toBe("TUNNEL_TOKEN=another_token-1\n")
    expect(statSync(tokenFile(root)).ino).not.toBe(inode)
    expect(readdirSync(join(root, "etc", "felhom-agent", "cloudflared"))).toEqual(["token.env"])
    // a file chmod'ed by hand is rewritten 0600 even with the same token
    chmodSync(tokenFile(root), 0o644)
    expect(runHelper(root, "another_token-1\n").stdout).toBe("changed\n")
    expect(statSync(tokenFile(root)).mode & 0o777).toBe(0o600)
  })

  it("refuses a bad token (exit 2, nothing written, the value never echoed) and bad arguments", () => {
    const root = scratch()
    for (const bad of ["", "\n", "two words\n", "a\nb\n", "x\ny", `quote"d`, "dollar$HOME", "back\\slash", "nul\0byte", `${"a".repeat(4097)}`, "TUNNEL=x y"]) {
      const r = runHelper(root, bad)
      expect(r.status).toBe(2)
      expect(r.stdout).toBe("")
      if (bad.length > 2) expect(r.stderr).not.toContain(bad.slice(0, 8))
      expect(existsSync(tokenFile(root))).toBe(false)
    }
    expect(runHelper(root, "a".repeat(4096)).stdout).toBe("changed\n")
    expect(runHelper(root, TOKEN, [TOKEN]).status).toBe(2)
    expect(runHelper(root, TOKEN, ["write-token", "extra"]).status).toBe(2)
    expect(runHelper(root, TOKEN, []).status).toBe(2)
  })

  it("refuses a symlinked token directory or file, and a directory others can write (exit 3)", () => {
    const root = scratch()
    const elsewhere = mkdtempSync(join(tmpdir(), "felhom-cfelse-"))
    mkdirSync(join(root, "etc", "felhom-agent"), { recursive: true, mode: 0o755 })
    symlinkSync(elsewhere, join(root, "etc", "felhom-agent", "cloudflared"))
    expect(runHelper(root, TOKEN).status).toBe(3)
    expect(readdirSync(elsewhere)).toEqual([])
    unlinkSync(join(root, "etc", "felhom-agent", "cloudflared"))
    mkdirSync(join(root, "etc", "felhom-agent", "cloudflared"), { mode: 0o700 })
    symlinkSync(join(elsewhere, "target"), tokenFile(root))
    expect(runHelper(root, TOKEN).status).toBe(3)
    expect(existsSync(join(elsewhere, "target"))).toBe(false)
    unlinkSync(tokenFile(root))
    chmodSync(join(root, "etc", "felhom-agent"), 0o777)
    expect(runHelper(root, TOKEN).status).toBe(3)
    expect(existsSync(tokenFile(root))).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------

const freePort = () =>
  Effect.async<number>((resume) => {
    const srv = createServer()
    srv.listen(0, "127.0.0.1", () => {
      const a = srv.address()
      srv.close(() => resume(Effect.succeed(typeof a === "object" && a !== null ? a.port : 0)))
    })
  })

/** The fake host: the real helper under a test root (a wrapper sets the hook sudo would strip), a fake systemctl. */
const fakeHost = (port: number) => {
  const dir = mkdtempSync(join(tmpdir(), "felhom-cfhost-"))
  const root = join(dir, "root")
  const control = join(dir, "control")
  mkdirSync(root, { mode: 0o755 })
  mkdirSync(control)
  const helper = join(dir, "felhom-cloudflared")
  writeFileSync(helper, [
    "#!/bin/sh",
    `printf '%s\\0' "$0" "$@" >> ${shq(join(dir, "helper.argv"))}`,
    `FELHOM_CLOUDFLARED_TEST_ROOT=${shq(root)} exec /bin/sh ${shq(HELPER)} "$@"`,
    ""
  ].join("\n"))
  chmodSync(helper, 0o755)
  const pidFile = join(dir, "cloudflared.pid")
  const systemctl = join(dir, "systemctl")
  writeFileSync(systemctl, [
    "#!/bin/sh",
    "set -eu",
    `printf '%s\\n' "$*" >> ${shq(join(dir, "systemctl.calls"))}`,
    `[ "$#" -eq 2 ] && [ "$2" = felhom-cloudflared.service ] || exit 5`,
    `pidf=${shq(pidFile)}`,
    `alive() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }`,
    `stop() { if [ -f "$pidf" ]; then p=$(cat "$pidf"); kill "$p" 2>/dev/null || true; i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; kill -9 "$p" 2>/dev/null || true; rm -f "$pidf"; fi; }`,
    // what systemd does with EnvironmentFile: the token reaches the process's environment only
    `launch() { token=$(sed -n 's/^TUNNEL_TOKEN=//p' ${shq(join(root, "etc", "felhom-agent", "cloudflared", "token.env"))}); ` +
      `TUNNEL_TOKEN=$token FAKE_CLOUDFLARED_CONTROL=${shq(control)} setsid ${shq(process.execPath)} ${shq(FAKE)} --no-autoupdate --metrics 127.0.0.1:${port} tunnel run ` +
      `>>${shq(join(dir, "cloudflared.log"))} 2>&1 </dev/null & echo $! > "$pidf"; }`,
    `case $1 in start) alive || launch ;; restart) stop; launch ;; *) exit 5 ;; esac`,
    ""
  ].join("\n"))
  chmodSync(systemctl, 0o755)
  const pid = (): number | null => (existsSync(pidFile) ? Number(readFileSync(pidFile, "utf8").trim()) : null)
  return { dir, root, control, helper, systemctl, pid, calls: () => (existsSync(join(dir, "systemctl.calls")) ? readFileSync(join(dir, "systemctl.calls"), "utf8") : "") }
}

/** Polls (real time, bounded) until `f` holds. */
const until = (what: string, f: () => Effect.Effect<boolean>, limitMs = 10_000) =>
  Effect.gen(function*() {
    const started = Date.now()
    while (!(yield* f())) {
      if (Date.now() - started > limitMs) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("100 millis")
    }
  })

describe.skipIf(!isRoot)("cloudflared with a fake binary: real processes, real loopback HTTP", () => {
  it.live("bring-up, 503 and kill -9 repaired by restarts; the token only in the fake's environment", () =>
    Effect.gen(function*() {
      const port = yield* freePort()
      const host = fakeHost(port)
      const logs = capture()
      yield* Effect.addFinalizer(() => Effect.sync(() => {
        const p = host.pid()
        if (p !== null) try { process.kill(p, "SIGKILL") } catch { /* gone */ }
      }))
      const file = Schema.decodeUnknownSync(AgentConfigFile)({
        privileged: { mode: "direct", timeout_seconds: 10, commands: { systemctl: host.systemctl, "felhom-cloudflared": host.helper } },
        cloudflared: { enabled: true, token: TOKEN, metrics_port: port, check_interval_seconds: 1, failures_before_restart: 2, backoff_min_seconds: 1, backoff_max_seconds: 2 }
      })
      const layer = layerWith(privilegedCloudflaredLayerAt(DEFAULT_HOST_PATHS)).pipe(
        Layer.provide(Layer.succeed(AgentConfig, { source: undefined, file })),
        Layer.provide(NodeContext.layer)
      )
      const ctx = yield* Layer.build(layer).pipe(Effect.provide(logs.layer))
      const state = ctx.unsafeMap.get(CloudflaredState.key) as { view: Effect.Effect<CloudflaredView> }
      const viewIs = (v: CloudflaredView) => () => Effect.map(state.view, (x) => x === v)

      yield* until("running", viewIs("running"))
      expect(yield* probeReady(port)).toBe(true)
      const first = host.pid()!
      // the token file: root 0600; the token in the fake's environment, never in its argv
      const tf = join(host.root, "etc", "felhom-agent", "cloudflared", "token.env")
      expect(statSync(tf).mode & 0o777).toBe(0o600)
      expect(readFileSync(join(host.control, `seen-token.${first}`), "utf8")).toBe(TOKEN)
      const cmdline = readFileSync(`/proc/${first}/cmdline`, "utf8")
      expect(cmdline).toContain("tunnel\0run")
      expect(cmdline).not.toContain(TOKEN)
      expect(readFileSync(`/proc/${first}/environ`, "utf8")).toContain(`TUNNEL_TOKEN=${TOKEN}`)
      // a new token file (changed): restart rather than start
      expect(host.calls()).toBe("restart felhom-cloudflared.service\n")
      const restarts = () => host.calls().split("\n").filter((l) => l.startsWith("restart")).length

      // 503: noticed, restarted (a new process), still 503 until told otherwise, then running
      writeFileSync(join(host.control, "answer-503"), "")
      yield* until("stopped", viewIs("stopped"))
      yield* until("a restart", () => Effect.sync(() => restarts() >= 2))
      yield* until("a new process", () => Effect.sync(() => host.pid() !== null && host.pid() !== first))
      unlinkSync(join(host.control, "answer-503"))
      yield* until("running again", viewIs("running"))
      const second = host.pid()!

      // kill -9: the port goes dead, the manager restarts it
      process.kill(second, "SIGKILL")
      yield* until("stopped after kill", viewIs("stopped"))
      yield* until("running after kill", () => Effect.map(state.view, (v) => v === "running" && host.pid() !== second))

      // the token: in no argv (helper, systemctl), no log line, no systemctl call
      const helperArgv = readFileSync(join(host.dir, "helper.argv"), "utf8")
      expect(helperArgv.split("\0").filter((a) => a === "write-token").length).toBeGreaterThanOrEqual(3)
      for (const text of [helperArgv, host.calls(), ...logs.lines]) expect(text).not.toContain(TOKEN)
      expect(host.calls().split("\n").filter((l) => l.length > 0).every((l) => /^(start|restart) felhom-cloudflared\.service$/.test(l))).toBe(true)
      expect(readFileSync(`/proc/${host.pid()!}/cmdline`, "utf8")).not.toContain(TOKEN)
      rmSync(host.control, { recursive: true, force: true })
    }).pipe(Effect.scoped), 40_000)

  it.live("disabled: nothing is spawned and the view says so", () =>
    Effect.gen(function*() {
      const port = yield* freePort()
      const host = fakeHost(port)
      const file = Schema.decodeUnknownSync(AgentConfigFile)({
        privileged: { mode: "direct", commands: { systemctl: host.systemctl, "felhom-cloudflared": host.helper } },
        cloudflared: { enabled: false, token: TOKEN, metrics_port: port }
      })
      const v = yield* Effect.flatMap(CloudflaredState, (s) => s.view).pipe(
        Effect.provide(layerWith(privilegedCloudflaredLayerAt(DEFAULT_HOST_PATHS)).pipe(
          Layer.provide(Layer.succeed(AgentConfig, { source: undefined, file })),
          Layer.provide(NodeContext.layer)
        ))
      )
      expect(v).toBe("disabled")
      expect(host.calls()).toBe("")
      expect(existsSync(join(host.dir, "helper.argv"))).toBe(false)
    }))
})

// ---------------------------------------------------------------------------------------------

describe("PrivilegedCloudflared: the argv and stdin it hands over", () => {
  it.live("write-token carries the token on stdin only; a bad token is refused before anything is spawned", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "felhom-cfpriv-"))
      const helper = join(dir, "felhom-cloudflared")
      writeFileSync(helper, [
        "#!/bin/sh",
        `printf '%s\\0' "$@" > ${shq(join(dir, "argv"))}`,
        `cat > ${shq(join(dir, "stdin"))}`,
        "echo changed",
        ""
      ].join("\n"))
      chmodSync(helper, 0o755)
      const file = Schema.decodeUnknownSync(AgentConfigFile)({ privileged: { mode: "direct", timeout_seconds: 10, commands: { "felhom-cloudflared": helper } } })
      const run = <A, E>(f: (p: PrivilegedCloudflaredShape) => Effect.Effect<A, E>) =>
        Effect.flatMap(PrivilegedCloudflared, f).pipe(
          Effect.provide(privilegedCloudflaredLayerAt(DEFAULT_HOST_PATHS).pipe(
            Layer.provide(Layer.succeed(AgentConfig, { source: undefined, file })),
            Layer.provide(NodeContext.layer)
          ))
        )
      expect(yield* run((p) => p.writeToken(Redacted.make(TOKEN)))).toBe("changed")
      expect(readFileSync(join(dir, "argv"), "utf8")).toBe("write-token\0")
      expect(readFileSync(join(dir, "stdin"), "utf8")).toBe(`${TOKEN}\n`)
      for (const bad of ["two words", "line\nbreak", "", "q\"uote", "a".repeat(4097)]) {
        rmSync(join(dir, "argv"), { force: true })
        const e = yield* Effect.flip(run((p) => p.writeToken(Redacted.make(bad))))
        expect(e).toMatchObject({ _tag: "PrivilegedError", reason: "InvalidArgument", command: "felhom-cloudflared", argument: "token" })
        if (bad.length > 0) expect(e.message).not.toContain(bad.slice(0, 5))
        expect(existsSync(join(dir, "argv"))).toBe(false)
      }
    }))
})

const sandbox = makeSudoSandbox()
afterAll(() => sandbox?.cleanup())

describe.skipIf(sandbox === undefined)("sudoers: the cloudflared rules", () => {
  it("allows write-token (no argument) and start/restart of the one unit, nothing else", () => {
    const helper = "/usr/local/libexec/felhom-agent/felhom-cloudflared"
    expect(sandbox!.allows([helper, "write-token"])).toBe(true)
    expect(sandbox!.allows([helper, "write-token", TOKEN])).toBe(false)
    expect(sandbox!.allows([helper, "write-token", "/etc/shadow"])).toBe(false)
    expect(sandbox!.allows([helper])).toBe(false)
    expect(sandbox!.allows(["/usr/bin/systemctl", "start", "felhom-cloudflared.service"])).toBe(true)
    expect(sandbox!.allows(["/usr/bin/systemctl", "restart", "felhom-cloudflared.service"])).toBe(true)
    expect(sandbox!.allows(["/usr/bin/systemctl", "stop", "felhom-cloudflared.service"])).toBe(false)
    expect(sandbox!.allows(["/usr/bin/systemctl", "restart", "felhom-agent.service"])).toBe(false)
    expect(sandbox!.allows(["/usr/bin/systemctl", "restart", "felhom-cloudflaredXservice"])).toBe(false)
    expect(sandbox!.allows(["/usr/bin/systemctl", "start", "felhom-cloudflared.service", "ssh.service"])).toBe(false)
    expect(sandbox!.allows(["/usr/bin/systemctl", "edit", "felhom-cloudflared.service"])).toBe(false)
  })
})
