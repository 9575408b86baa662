/**
 * The Systemd layer run for real: the real systemd-notify sending to a unix datagram socket that
 * a python3 listener binds (Node has no AF_UNIX DGRAM), fake systemctl / systemd-notify scripts
 * for the mappings and failure paths, and `systemd-analyze verify` over the shipped unit file.
 */
import { NodeContext } from "@effect/platform-node"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Fiber, Layer, Logger, Option, TestClock } from "effect"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  DEFAULT_PATHS,
  makeSystemdLayer,
  sanitizeStatus,
  Systemd,
  type SystemdPaths,
  unitStatusOf,
  watchdogIntervalOf
} from "../src/layers/Systemd.js"

const onPath = (bin: string) => spawnSync("sh", ["-c", `command -v ${bin}`]).status === 0
const hasPython = onPath("python3")
const hasNotify = existsSync(DEFAULT_PATHS.systemdNotify)
const hasAnalyze = onPath("systemd-analyze")

const tempDirs: Array<string> = []
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "felhom-systemd-"))
  tempDirs.push(d)
  return d
}
afterAll(() => {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true })
})

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`

/** A fake binary: records argv (one per line) and NOTIFY_SOCKET into `<path>.calls`, then runs `body`. */
const fakeBin = (dir: string, name: string, body: string) => {
  const path = join(dir, name)
  writeFileSync(path, [
    "#!/bin/sh",
    `{ printf 'argv:'; printf ' %s' "$@"; printf '\\n'; printf 'socket:%s\\n' "\${NOTIFY_SOCKET-unset}"; printf 'home:%s\\n' "\${HOME-unset}"; } >> ${shq(`${path}.calls`)}`,
    body,
    ""
  ].join("\n"))
  chmodSync(path, 0o755)
  return path
}
const callsOf = (path: string) => (existsSync(`${path}.calls`) ? readFileSync(`${path}.calls`, "utf8") : null)

/** Runs `body` with the layer built from `paths` under exactly `env` (never the test process's environment). */
const withSystemd = <A, E>(paths: SystemdPaths, env: Record<string, string>, body: Effect.Effect<A, E, Systemd>) =>
  body.pipe(
    Effect.provide(makeSystemdLayer(paths).pipe(Layer.provide(NodeContext.layer))),
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))
  )

/** Collects log lines at Warning and above. */
const captureLogs = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => {
    if (logLevel._tag === "Warning" || logLevel._tag === "Error") {
      lines.push(Array.isArray(message) ? message.map(String).join(" ") : String(message))
    }
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

// ---------------------------------------------------------------------------------------------

const LISTENER = String.raw`
import json, os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print("LISTENING", flush=True)
while True:
    data, anc, flags, _ = s.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
    fds = 0
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(payload) - len(payload) % 4
            for fd in memoryview(payload)[:n].cast("i"):
                fds += 1
                os.close(fd)  # closing the barrier pipe releases systemd-notify
    print(json.dumps({"payload": data.decode("utf-8", "replace"), "fds": fds}), flush=True)
`

interface Datagram {
  readonly payload: string
  readonly fds: number
}

/** A python3 process bound to a unix datagram socket, printing each datagram as one JSON line. */
const startListener = (socketPath: string) =>
  Effect.acquireRelease(
    Effect.async<{ readonly proc: ChildProcess; readonly datagrams: Array<Datagram> }, Error>((resume) => {
      const proc = spawn("python3", ["-c", LISTENER, socketPath], { stdio: ["ignore", "pipe", "pipe"] })
      const datagrams: Array<Datagram> = []
      let buffered = ""
      let ready = false
      proc.stdout.setEncoding("utf8")
      proc.stdout.on("data", (chunk: string) => {
        buffered += chunk
        let nl: number
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl)
          buffered = buffered.slice(nl + 1)
          if (line === "LISTENING") {
            ready = true
            resume(Effect.succeed({ proc, datagrams }))
          } else if (line.length > 0) {
            datagrams.push(JSON.parse(line) as Datagram)
          }
        }
      })
      proc.on("exit", (code) => {
        if (!ready) resume(Effect.fail(new Error(`listener exited ${code}`)))
      })
    }),
    ({ proc }) => Effect.sync(() => proc.kill("SIGKILL"))
  )

const waitFor = (pred: () => boolean, what: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200; i++) {
      if (pred()) return
      yield* Effect.sleep("25 millis")
    }
    return yield* Effect.dieMessage(`timed out waiting for ${what}`)
  })

const assignmentsOf = (d: Datagram) => d.payload.split("\n").filter((l) => l.length > 0)

describe.skipIf(!hasPython || !hasNotify)("Systemd notify over a real datagram socket (needs python3 and systemd-notify)", () => {
  it.live("READY=1, WATCHDOG=1, STOPPING=1 and STATUS= reach NOTIFY_SOCKET, one datagram each, in order", () =>
    Effect.scoped(Effect.gen(function*() {
      const socketPath = join(tempDir(), "notify.sock")
      const { datagrams } = yield* startListener(socketPath)
      const logs = captureLogs()
      yield* withSystemd(DEFAULT_PATHS, { NOTIFY_SOCKET: socketPath }, Effect.gen(function*() {
        const sd = yield* Systemd
        yield* sd.ready
        yield* sd.watchdog
        yield* sd.status("reconciling 3 guests\nREADY=1")
        yield* sd.stopping
      })).pipe(Effect.provide(logs.layer))

      const messages = () => datagrams.filter((d) => !d.payload.startsWith("BARRIER=1"))
      yield* waitFor(() => messages().length >= 4, "four notifications")
      expect(messages().map(assignmentsOf)).toEqual([
        ["READY=1"],
        ["WATCHDOG=1"],
        // the newline cannot smuggle a second assignment in
        ["STATUS=reconciling 3 guests READY=1"],
        ["STOPPING=1"]
      ])
      // systemd-notify synchronised each message (BARRIER=1 with a pipe fd) and saw it released
      expect(datagrams.filter((d) => d.payload.startsWith("BARRIER=1")).map((d) => d.fds)).toEqual([1, 1, 1, 1])
      expect(logs.lines).toEqual([])
    })))

  it.live("a socket nobody listens on: each notify is logged and the caller carries on", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      yield* withSystemd(DEFAULT_PATHS, { NOTIFY_SOCKET: join(tempDir(), "nobody.sock") }, Effect.gen(function*() {
        const sd = yield* Systemd
        yield* sd.ready
        yield* sd.watchdog
      })).pipe(Effect.provide(logs.layer))
      expect(logs.lines).toHaveLength(2)
      expect(logs.lines[0]).toMatch(/^systemd notify READY=1 failed: exit \d+/)
      expect(logs.lines[1]).toMatch(/^systemd notify WATCHDOG=1 failed/)
    }))
})

describe("Systemd notify with fake systemd-notify", () => {
  it.live("no NOTIFY_SOCKET: nothing is spawned and nothing fails", () =>
    Effect.gen(function*() {
      const notify = fakeBin(tempDir(), "systemd-notify", "exit 0")
      const logs = captureLogs()
      for (const env of [{}, { NOTIFY_SOCKET: "" }, { NOTIFY_SOCKET: "   " }]) {
        yield* withSystemd({ ...DEFAULT_PATHS, systemdNotify: notify }, env, Effect.gen(function*() {
          const sd = yield* Systemd
          yield* sd.ready
          yield* sd.watchdog
          yield* sd.status("x")
          yield* sd.stopping
        })).pipe(Effect.provide(logs.layer))
      }
      expect(callsOf(notify)).toBeNull()
      expect(logs.lines).toEqual([])
    }))

  it.live("with NOTIFY_SOCKET the binary gets the assignment as argv and only the socket from the environment", () =>
    Effect.gen(function*() {
      const notify = fakeBin(tempDir(), "systemd-notify", "exit 0")
      yield* withSystemd({ ...DEFAULT_PATHS, systemdNotify: notify }, { NOTIFY_SOCKET: "@felhom/test", HOME: "/root" }, Effect.gen(function*() {
        const sd = yield* Systemd
        yield* sd.ready
        yield* sd.status("a; rm -rf / $(id)")
      }))
      expect(callsOf(notify)).toBe([
        "argv: READY=1", "socket:@felhom/test", "home:unset",
        "argv: STATUS=a; rm -rf / $(id)", "socket:@felhom/test", "home:unset", ""
      ].join("\n"))
    }))

  it.live("a failing or missing systemd-notify is logged with its stderr, never fatal", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      const failing = fakeBin(dir, "failing-notify", "echo 'Failed to notify: Connection refused' >&2; exit 1")
      const logs = captureLogs()
      yield* withSystemd({ ...DEFAULT_PATHS, systemdNotify: failing }, { NOTIFY_SOCKET: "/run/x.sock" }, Effect.flatMap(Systemd, (sd) => sd.ready))
        .pipe(Effect.provide(logs.layer))
      yield* withSystemd({ ...DEFAULT_PATHS, systemdNotify: join(dir, "absent") }, { NOTIFY_SOCKET: "/run/x.sock" }, Effect.flatMap(Systemd, (sd) => sd.stopping))
        .pipe(Effect.provide(logs.layer))
      expect(logs.lines).toEqual([
        "systemd notify READY=1 failed: exit 1: Failed to notify: Connection refused",
        expect.stringMatching(/^systemd notify STOPPING=1 failed: could not run: NotFound/)
      ])
    }))

  it.effect("a hanging systemd-notify is terminated after NOTIFY_TIMEOUT and logged", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      const hanging = fakeBin(dir, "hanging-notify", `echo started > ${shq(join(dir, "started"))}; exec sleep 60`)
      const logs = captureLogs()
      const fiber = yield* withSystemd({ ...DEFAULT_PATHS, systemdNotify: hanging }, { NOTIFY_SOCKET: "/run/x.sock" }, Effect.flatMap(Systemd, (sd) => sd.watchdog))
        .pipe(Effect.provide(logs.layer), Effect.fork)
      // the child is real: wait (in real time) until it runs, then move the test clock past the timeout
      yield* Effect.promise(() => waitReal(() => existsSync(join(dir, "started"))))
      yield* TestClock.adjust("11 seconds")
      yield* Fiber.join(fiber)
      expect(logs.lines).toEqual(["systemd notify WATCHDOG=1 failed: no exit within 10s"])
    }))
})

const waitReal = async (pred: () => boolean) => {
  for (let i = 0; i < 400 && !pred(); i++) await new Promise((r) => setTimeout(r, 25))
  if (!pred()) throw new Error("condition not reached")
}

describe("Systemd watchdog interval", () => {
  const interval = (env: Record<string, string>) =>
    withSystemd(DEFAULT_PATHS, env, Effect.map(Systemd, (sd) => Option.map(sd.watchdogInterval, Duration.toMillis)))

  it.effect("WATCHDOG_USEC=30000000 → 15 s; WATCHDOG_PID must be this process when set", () =>
    Effect.gen(function*() {
      expect(yield* interval({ WATCHDOG_USEC: "30000000" })).toEqual(Option.some(15_000))
      expect(yield* interval({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: String(process.pid) })).toEqual(Option.some(15_000))
      expect(yield* interval({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: String(process.pid + 1) })).toEqual(Option.none())
      expect(yield* interval({})).toEqual(Option.none())
    }))

  it("malformed values disable the watchdog instead of failing", () => {
    for (const v of ["", "abc", "-5", "0", "1.5e6", "99999999999999999999"]) {
      expect(watchdogIntervalOf(Option.some(v), Option.none(), 1)).toEqual(Option.none())
    }
    expect(watchdogIntervalOf(Option.some("3"), Option.none(), 1).pipe(Option.map(Duration.toNanos))).toEqual(Option.some(Option.some(1000n)))
  })
})

describe("Systemd cloudflaredStatus (fake systemctl)", () => {
  const statusWith = (systemctl: string) =>
    withSystemd({ ...DEFAULT_PATHS, systemctl }, {}, Effect.flatMap(Systemd, (sd) => sd.cloudflaredStatus))

  it.live("maps is-active output: active → running, inactive/failed → stopped, anything else → unknown", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      const cases: ReadonlyArray<readonly [string, number, string]> = [
        ["active", 0, "running"],
        ["inactive", 3, "stopped"],
        ["failed", 3, "stopped"],
        ["activating", 3, "unknown"],
        ["deactivating", 3, "unknown"],
        ["", 4, "unknown"],
        ["active", 1, "running"]
      ]
      for (const [i, [out, code, want]] of cases.entries()) {
        const bin = fakeBin(dir, `systemctl-${i}`, `printf '%s\\n' ${shq(out)}; exit ${code}`)
        expect([out, yield* statusWith(bin)]).toEqual([out, want])
        expect(callsOf(bin)).toContain("argv: is-active cloudflared\n")
      }
    }))

  it.live("a missing systemctl or one killed by a signal → unknown, never a failure", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      expect(yield* statusWith(join(dir, "no-such-systemctl"))).toBe("unknown")
      const crashing = fakeBin(dir, "crashing", "kill -9 $$")
      expect(yield* statusWith(crashing)).toBe("unknown")
    }))

  it("unitStatusOf reads only the first line and tolerates whitespace", () => {
    expect(unitStatusOf("  active \n")).toBe("running")
    expect(unitStatusOf("failed\nextra")).toBe("stopped")
    expect(unitStatusOf("Active")).toBe("unknown")
  })

  it("sanitizeStatus flattens control characters and bounds the length", () => {
    expect(sanitizeStatus("a\nb\r\nc\u0000d\te")).toBe("a b c d e")
    expect(sanitizeStatus("x".repeat(500))).toHaveLength(200)
  })
})

// ---------------------------------------------------------------------------------------------

describe.skipIf(!hasAnalyze)("the unit file (needs systemd-analyze)", () => {
  const unitPath = join(__dirname, "..", "configs", "systemd", "felhom-agent.service")

  it("passes systemd-analyze verify without a single message", () => {
    // The shipped ExecStart binary does not exist here; a copy pointing at /bin/true is verified
    // instead, so nothing needs to be ignored.
    const text = readFileSync(unitPath, "utf8")
    // the installed release's wrapper (test/startup-flags.test.ts checks its V8 flags are the bin's)
    expect(text).toMatch(/^ExecStart=\/opt\/felhom-agent\/current\/bin\/felhom-agent daemon$/m)
    const dir = tempDir()
    const copy = join(dir, "felhom-agent.service")
    writeFileSync(copy, text.replace(/^ExecStart=\S+ /m, "ExecStart=/bin/true "))
    const r = spawnSync("systemd-analyze", ["verify", copy], { encoding: "utf8", env: { ...process.env, SYSTEMD_LOG_COLOR: "0" } })
    expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ status: 0, stdout: "", stderr: "" })
  })

  it("a broken copy is caught (the check is not vacuous)", () => {
    const dir = tempDir()
    const copy = join(dir, "felhom-agent.service")
    writeFileSync(copy, readFileSync(unitPath, "utf8").replace(/^ExecStart=\S+/m, "ExecStart=/bin/true").replace("Type=notify", "Type=notify\nWatchdogSecs=5"))
    const r = spawnSync("systemd-analyze", ["verify", copy], { encoding: "utf8" })
    expect(r.stderr).toMatch(/Unknown key 'WatchdogSecs'/)
  })

  it("states the settings SPEC §15 and the deployment rely on", () => {
    const text = readFileSync(unitPath, "utf8")
    const settings = new Map<string, Array<string>>()
    for (const line of text.split("\n")) {
      const m = /^([A-Za-z]+)=(.*)$/.exec(line)
      if (m !== null) settings.set(m[1]!, [...(settings.get(m[1]!) ?? []), m[2]!])
    }
    const one = (k: string) => settings.get(k)?.join(" ")
    expect(one("Type")).toBe("notify")
    expect(one("NotifyAccess")).toBe("all")
    expect(one("User")).toBe("felhom-agent")
    expect(one("Restart")).toBe("always")
    expect(one("RestartSec")).toBe("5")
    expect(one("WatchdogSec")).toBe("60")
    expect(one("TimeoutStopSec")).toBe("90")
    expect(one("EnvironmentFile")).toBe("/etc/felhom-agent/secrets.env")
    expect(one("StateDirectory")).toBe("felhom-agent")
    expect(one("StateDirectoryMode")).toBe("0700")
    expect(one("ProtectSystem")).toBe("strict")
    expect(settings.get("ReadWritePaths")?.[0]).toBe("/var/lib/felhom-agent")
    expect(one("StandardOutput")).toBe("journal")
    expect(one("RestrictAddressFamilies")).toBe("AF_UNIX AF_INET AF_INET6 AF_NETLINK")
    for (const k of ["ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "LockPersonality", "RestrictRealtime"]) {
      expect([k, one(k)]).toEqual([k, "yes"])
    }
    for (const k of ["MemoryMax", "TasksMax", "LimitNOFILE", "SystemCallArchitectures"]) expect(settings.has(k)).toBe(true)
    // sudo needs its setuid bit honoured
    expect(settings.has("NoNewPrivileges")).toBe(false)
  })
})
