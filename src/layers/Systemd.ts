/**
 * Systemd: the host-integration half of SPEC §15. Readiness, watchdog, stopping and status go to
 * the service manager; cloudflared's unit state comes back from it.
 *
 * Node cannot open AF_UNIX datagram sockets, so notifications are sent by running
 * systemd-notify (argv only, no shell). The sender is therefore a child process, not the main
 * PID, which is why the unit needs NotifyAccess=all (configs/systemd/felhom-agent.service).
 * systemd-notify waits (BARRIER=1) until the manager has read the message, so the message is
 * not lost to the race of a sender that exits before PID 1 attributes it to our cgroup.
 *
 * Without NOTIFY_SOCKET (not under systemd: a terminal, tests, the demo) every notification is a
 * no-op and nothing is spawned. A notification that fails is logged and never fails the caller:
 * a missed READY fails the start, a missed WATCHDOG restarts us, both by systemd's own rules.
 */
import { Command, CommandExecutor } from "@effect/platform"
import { Config, Context, Duration, Effect, Layer, Option, Stream } from "effect"
import { excerpt } from "../schema/text.js"

export type UnitStatus = "running" | "stopped" | "unknown"

export interface SystemdShape {
  /** READY=1: startup finished (after journal recovery, before the first loop iteration). */
  readonly ready: Effect.Effect<void>
  /** WATCHDOG=1: send every `watchdogInterval` while the main loop is healthy. */
  readonly watchdog: Effect.Effect<void>
  /** STOPPING=1: shutdown has begun; in-flight work is being finished or journaled. */
  readonly stopping: Effect.Effect<void>
  /** STATUS=...: one line for `systemctl status` (control characters become spaces). */
  readonly status: (text: string) => Effect.Effect<void>
  /** Half of $WATCHDOG_USEC when the watchdog is enabled for this process; None otherwise. */
  readonly watchdogInterval: Option.Option<Duration.Duration>
  /** `systemctl is-active cloudflared`: active → running, inactive|failed → stopped, else unknown. */
  readonly cloudflaredStatus: Effect.Effect<UnitStatus>
}

export class Systemd extends Context.Tag("felhom/Systemd")<Systemd, SystemdShape>() {}

export interface SystemdPaths {
  readonly systemctl: string
  readonly systemdNotify: string
}

export const DEFAULT_PATHS: SystemdPaths = { systemctl: "/usr/bin/systemctl", systemdNotify: "/usr/bin/systemd-notify" }

/** systemd-notify's own barrier waits up to 5 s; past this the child is terminated. */
export const NOTIFY_TIMEOUT = Duration.seconds(10)
export const SYSTEMCTL_TIMEOUT = Duration.seconds(10)
const STATUS_MAX_CHARS = 200
const OUTPUT_CAP_BYTES = 4096

/** Children get only what they need: the notify socket (when set), a fixed PATH and the C locale. */
const BASE_ENV: Readonly<Record<string, string>> = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" }

/**
 * The notify protocol is newline-separated assignments: a newline in a status text could smuggle
 * in READY=1 or MAINPID=..., so every control character becomes a space.
 */
export const sanitizeStatus = (text: string): string => {
  const one = text.replace(/[\u0000-\u001f\u007f]+/g, " ").trim()
  return one.length > STATUS_MAX_CHARS ? `${one.slice(0, STATUS_MAX_CHARS - 1)}…` : one
}

export const unitStatusOf = (isActiveOutput: string): UnitStatus => {
  const state = isActiveOutput.trim().split("\n")[0]?.trim() ?? ""
  if (state === "active") return "running"
  if (state === "inactive" || state === "failed") return "stopped"
  return "unknown"
}

/** Half the watchdog timeout (systemd's advice), if it is set, valid and meant for this process. */
export const watchdogIntervalOf = (usec: Option.Option<string>, watchdogPid: Option.Option<string>, ownPid: number): Option.Option<Duration.Duration> =>
  Option.flatMap(usec, (raw) => {
    if (!/^\d+$/.test(raw.trim())) return Option.none()
    const micros = Number(raw.trim())
    if (!Number.isSafeInteger(micros) || micros <= 0) return Option.none()
    // WATCHDOG_PID names the process the watchdog is for; a child that inherited the variables is not it.
    const forUs = Option.match(watchdogPid, { onNone: () => true, onSome: (p) => p.trim() === String(ownPid) })
    return forUs ? Option.some(Duration.micros(BigInt(micros) / 2n)) : Option.none()
  })

interface Completed {
  readonly exitCode: number
  readonly stdout: string
  readonly stderr: string
}

const nonEmpty = (name: string) =>
  Config.option(Config.string(name)).pipe(
    Effect.map(Option.filter((v) => v.trim().length > 0)),
    // A malformed provider is the same as an unset variable: not under systemd's supervision.
    Effect.orElseSucceed(() => Option.none<string>())
  )

const collect = (stream: Stream.Stream<Uint8Array, unknown>): Effect.Effect<string, unknown> =>
  Stream.runFold(stream, Buffer.alloc(0), (acc, chunk) =>
    acc.length >= OUTPUT_CAP_BYTES ? acc : Buffer.concat([acc, chunk]).subarray(0, OUTPUT_CAP_BYTES)).pipe(
      Effect.map((b) => b.toString("utf8"))
    )

const make = (paths: SystemdPaths) =>
  Effect.gen(function*() {
    const executor = yield* CommandExecutor.CommandExecutor
    const socket = yield* nonEmpty("NOTIFY_SOCKET")
    const usec = yield* nonEmpty("WATCHDOG_USEC")
    const watchdogPid = yield* nonEmpty("WATCHDOG_PID")
    const ownPid = yield* Effect.sync(() => process.pid)
    const watchdogInterval = watchdogIntervalOf(usec, watchdogPid, ownPid)

    /** Runs argv to completion with a timeout; fails with a one-line reason. */
    const run = (exe: string, args: ReadonlyArray<string>, env: Record<string, string>, timeout: Duration.Duration) =>
      Effect.scoped(
        Effect.gen(function*() {
          const command = Command.make(exe, ...args).pipe(Command.env(env, { extendEnv: false }), Command.stdin(Stream.empty))
          const proc = yield* executor.start(command)
          const [stdout, stderr, exitCode] = yield* Effect.all([collect(proc.stdout), collect(proc.stderr), proc.exitCode], {
            concurrency: "unbounded"
          })
          return { exitCode, stdout, stderr } satisfies Completed
        })
      ).pipe(
        Effect.timeoutFail({ duration: timeout, onTimeout: () => `no exit within ${Duration.format(timeout)}` }),
        Effect.mapError((e) => (typeof e === "string" ? e : describePlatformError(e)))
      )

    const notify = (label: string, args: ReadonlyArray<string>): Effect.Effect<void> =>
      Option.match(socket, {
        onNone: () => Effect.void,
        onSome: (path) =>
          run(paths.systemdNotify, args, { ...BASE_ENV, NOTIFY_SOCKET: path }, NOTIFY_TIMEOUT).pipe(
            Effect.flatMap((done) =>
              done.exitCode === 0
                ? Effect.void
                : Effect.logWarning(`systemd notify ${label} failed: exit ${done.exitCode}: ${oneLine(done.stderr)}`)
            ),
            Effect.catchAll((reason) => Effect.logWarning(`systemd notify ${label} failed: ${reason}`))
          )
      })

    const cloudflaredStatus: Effect.Effect<UnitStatus> = run(paths.systemctl, ["is-active", "cloudflared"], { ...BASE_ENV }, SYSTEMCTL_TIMEOUT).pipe(
      // is-active exits non-zero for every state but active; the printed state is the answer.
      Effect.map((done) => unitStatusOf(done.stdout)),
      Effect.catchAll((reason) => Effect.as(Effect.logDebug(`systemctl is-active cloudflared failed: ${reason}`), "unknown" as const))
    )

    const shape: SystemdShape = {
      // READY=1 etc. as plain assignments: `--stopping` only exists from systemd 253, PVE 8 ships 252.
      ready: notify("READY=1", ["READY=1"]),
      watchdog: notify("WATCHDOG=1", ["WATCHDOG=1"]),
      stopping: notify("STOPPING=1", ["STOPPING=1"]),
      status: (text) => notify("STATUS", [`STATUS=${sanitizeStatus(text)}`]),
      watchdogInterval,
      cloudflaredStatus
    }
    return shape
  })

const oneLine = (s: string) => excerpt(s, 300)

const describePlatformError = (e: unknown): string => {
  if (typeof e === "object" && e !== null && "_tag" in e && e._tag === "SystemError" && "reason" in e) {
    return `could not run: ${String(e.reason)}`
  }
  if (typeof e === "object" && e !== null && "message" in e && typeof e.message === "string") return oneLine(e.message)
  return "failed"
}

/** Systemd with explicit binaries (tests point them at fake scripts). */
export const makeSystemdLayer = (paths: SystemdPaths): Layer.Layer<Systemd, never, CommandExecutor.CommandExecutor> =>
  Layer.effect(Systemd, make(paths)).pipe(Layer.ensureRequirementsType<CommandExecutor.CommandExecutor>())

export const SystemdLive = makeSystemdLayer(DEFAULT_PATHS)
