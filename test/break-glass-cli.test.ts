/**
 * Break-glass on the host: the unit's three systemctl commands through the real Privileged runner
 * (fake systemctl recording argv; fixed argv, cleared env, states parsed fail-closed), the sudoers
 * rule (exactly those argv, nothing else), and `break-glass status` / `disable` against a state
 * database and a fake systemctl.
 */
import { describe, expect, it } from "@effect/vitest"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { Effect, Either, Layer, Option, Schema } from "effect"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { BREAK_GLASS_UNIT, DEFAULT_COMMAND_PATHS, PrivilegedBreakGlass, PrivilegedBreakGlassLive } from "../src/layers/Privileged.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { breakGlassDisable, breakGlassStatus } from "../src/programs/cli/breakglass.js"
import { makeStore } from "../src/programs/breakglass/store.js"
import { Journal, JournalLive } from "../src/layers/Journal.js"
import { type Bin, makeBinDir, makeSudoSandbox } from "./privileged-support.js"
import { afterAll } from "vitest"

/** A fake systemctl: logs every call; `is-active` prints the state in <dir>/unit.state (exit 0 only when active). */
const fakeSystemctl = (bin: Bin, opts: { readonly failStop?: boolean } = {}) => {
  const stateFile = join(bin.dir, "unit.state")
  writeFileSync(stateFile, "inactive\n")
  const path = bin.logged("systemctl", [
    `s=${JSON.stringify(stateFile)}`,
    `case "$1" in`,
    `  start) echo active > "$s" ;;`,
    `  stop) ${opts.failStop === true ? `echo "Failed to stop: Access denied" >&2; exit 1` : `echo inactive > "$s"`} ;;`,
    `  is-active) st=$(cat "$s"); echo "$st"; [ "$st" = active ] && exit 0; exit 3 ;;`,
    `esac`,
    `env > ${JSON.stringify(join(bin.dir, "systemctl.env"))}`
  ].join("\n"))
  return { path, setState: (s: string) => writeFileSync(stateFile, `${s}\n`) }
}

const privLayer = (systemctl: string) =>
  PrivilegedBreakGlassLive.pipe(
    Layer.provide(Layer.succeed(AgentConfig, {
      source: undefined,
      file: Schema.decodeUnknownSync(AgentConfigFile)({ privileged: { mode: "direct", timeout_seconds: 10, commands: { systemctl } } })
    })),
    Layer.provide(NodeContext.layer)
  )

describe("PrivilegedBreakGlass", () => {
  it.live("start, stop and is-active run exactly `systemctl <verb> felhom-breakglass.service` with a cleared environment", () => {
    const bin = makeBinDir()
    const fake = fakeSystemctl(bin)
    return Effect.gen(function*() {
      const unit = yield* PrivilegedBreakGlass
      expect(yield* unit.state).toBe("inactive")
      process.env["FELHOM_AGENT_HUB_API_KEY"] = "bg-test-secret-must-not-leak"
      yield* unit.start.pipe(Effect.ensuring(Effect.sync(() => delete process.env["FELHOM_AGENT_HUB_API_KEY"])))
      const env = readFileSync(join(bin.dir, "systemctl.env"), "utf8")
      expect(env).not.toContain("bg-test-secret-must-not-leak")
      expect(env).toContain("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
      expect(yield* unit.state).toBe("active")
      yield* unit.stop
      expect(yield* unit.state).toBe("inactive")
      fake.setState("failed")
      expect(yield* unit.state).toBe("failed")
      // anything systemd would not print counts as not-inactive: the expiry stops it (fail closed)
      fake.setState("sudo: a terminal is required")
      expect(yield* unit.state).toBe("unknown")
      expect(bin.calls("systemctl")).toEqual([
        ["is-active", BREAK_GLASS_UNIT],
        ["start", BREAK_GLASS_UNIT],
        ["is-active", BREAK_GLASS_UNIT],
        ["stop", BREAK_GLASS_UNIT],
        ["is-active", BREAK_GLASS_UNIT],
        ["is-active", BREAK_GLASS_UNIT],
        ["is-active", BREAK_GLASS_UNIT]
      ])
    }).pipe(Effect.provide(privLayer(fake.path)), Effect.ensuring(Effect.sync(bin.cleanup)))
  })

  it.live("a failing stop is a typed NonZeroExit naming systemctl", () => {
    const bin = makeBinDir()
    const fake = fakeSystemctl(bin, { failStop: true })
    return Effect.gen(function*() {
      const r = yield* Effect.either(Effect.flatMap(PrivilegedBreakGlass, (u) => u.stop))
      expect(Either.isLeft(r) && r.left.reason).toBe("NonZeroExit")
      expect(Either.isLeft(r) && r.left.command).toBe("systemctl")
    }).pipe(Effect.provide(privLayer(fake.path)), Effect.ensuring(Effect.sync(bin.cleanup)))
  })
})

describe("configs/sudoers/felhom-agent: break-glass", () => {
  const sandbox = makeSudoSandbox()
  afterAll(() => sandbox?.cleanup())
  it.skipIf(sandbox === undefined)("allows exactly start/stop/is-active of felhom-breakglass.service (needs root + unshare)", () => {
    if (sandbox === undefined) return
    const systemctl = DEFAULT_COMMAND_PATHS.systemctl
    for (const verb of ["start", "stop", "is-active"]) expect(sandbox.allows([systemctl, verb, BREAK_GLASS_UNIT]), verb).toBe(true)
    for (const denied of [
      [systemctl, "start", "ssh.service"],
      [systemctl, "stop", "felhom-agent.service"],
      [systemctl, "enable", BREAK_GLASS_UNIT],
      [systemctl, "start", BREAK_GLASS_UNIT, "ssh.service"],
      [systemctl, "start", "felhom-breakglassXservice"],
      [systemctl, "start", `${BREAK_GLASS_UNIT}.d`],
      [systemctl, "edit", BREAK_GLASS_UNIT],
      [systemctl, "set-property", BREAK_GLASS_UNIT, "RuntimeMaxSec=infinity"],
      [systemctl, "--runtime", "start", BREAK_GLASS_UNIT]
    ]) {
      expect(sandbox.allows(denied), denied.join(" ")).toBe(false)
    }
  })
})

describe("felhom-agent break-glass status / disable", () => {
  const setup = () => {
    const root = mkdtempSync(join(tmpdir(), "felhom-bg-cli-"))
    const bin = makeBinDir()
    const fake = fakeSystemctl(bin)
    const stateDir = join(root, "state")
    mkdirSync(stateDir, { mode: 0o700 })
    const config = join(root, "agent.json")
    writeFileSync(config, JSON.stringify({ state_dir: stateDir, privileged: { mode: "direct", commands: { systemctl: fake.path } } }))
    const db = () => layerAt(join(stateDir, "state.db"))
    return { root, bin, fake, stateDir, config, db, cleanup: () => (rmSync(root, { recursive: true, force: true }), bin.cleanup()) }
  }

  const capture = <A, E, R>(eff: Effect.Effect<A, E, R>) =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const base = yield* Effect.console
      const exit = yield* Effect.either(Effect.withConsole(eff, { ...base, log: (...args: ReadonlyArray<unknown>) => Effect.sync(() => void lines.push(args.map(String).join(" "))) }))
      return { lines, exit }
    })

  it.live("status shows the open session; disable stops the unit and ends it, audited with the local user; status then says closed", () => {
    const t = setup()
    return Effect.gen(function*() {
      const now = Date.now()
      // the daemon's enable, as it leaves the store: a session row, then the unit started
      yield* Effect.flatMap(makeStore, (s) =>
        s.insert({ id: "bg-0123456789abcdef", opId: "op-1", jobId: "job-1", enabledAtMs: now, untilMs: now + 3_600_000, signer: "alice", fingerprint: "SHA256:abc", reason: "ticket 4711" })).pipe(
        Effect.provide(Layer.orDie(t.db()))
      )
      t.fake.setState("active")
      const open = yield* capture(breakGlassStatus({ config: Option.some(t.config), json: true }))
      expect(Either.isRight(open.exit)).toBe(true)
      const body = JSON.parse(open.lines.join("\n"))
      expect(body).toMatchObject({ active: true, unit: "active", session: { id: "bg-0123456789abcdef", signer: "alice", reason: "ticket 4711" }, problems: [] })

      const off = yield* capture(breakGlassDisable({ config: Option.some(t.config), json: false }))
      expect(Either.isRight(off.exit)).toBe(true)
      expect(off.lines.join("\n")).toContain("session bg-0123456789abcdef ended (disabled)")
      expect(t.bin.calls("systemctl").map((c) => c[0])).toContain("stop")

      const closed = yield* capture(breakGlassStatus({ config: Option.some(t.config), json: true }))
      expect(Either.isRight(closed.exit)).toBe(true)
      expect(JSON.parse(closed.lines.join("\n"))).toMatchObject({ active: false, unit: "inactive", session: null, last_ended: { end_reason: "disabled" } })

      const audit = yield* Effect.flatMap(Journal, (j) => j.auditTail(10)).pipe(Effect.provide(JournalLive.pipe(Layer.provide(t.db()), Layer.orDie)))
      const ended = audit.find((e) => e.decision === "ended:disabled")
      expect(ended?.actor).toMatch(/^cli:/)
    }).pipe(Effect.provide(NodeContext.layer), Effect.ensuring(Effect.sync(t.cleanup)))
  })

  it.live("status exits 1 when the unit runs without an open session", () => {
    const t = setup()
    return Effect.gen(function*() {
      t.fake.setState("active")
      const r = yield* capture(breakGlassStatus({ config: Option.some(t.config), json: false }))
      expect(Either.isLeft(r.exit) && r.exit.left.code).toBe(1)
      expect(r.lines.join("\n")).toContain("PROBLEM: the unit is active without an open session")
    }).pipe(Effect.provide(NodeContext.layer), Effect.ensuring(Effect.sync(t.cleanup)))
  })
})
