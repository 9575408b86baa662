/**
 * The CLI's Progress renderers (src/programs/cli/progress.ts): the TTY renderer reads a running
 * task's log once per second on the Clock and never between tasks or twice at once; the
 * structured renderer writes one JSON object per line; neither lets a secret or a terminal
 * control sequence from PVE text through. All under TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck, TestClock } from "effect"
import type { ProgressShape } from "../src/layers/Progress.js"
import {
  cleanText,
  formatElapsed,
  makeStructuredProgress,
  makeTtyProgress,
  type ProgressOutput,
  scrubberFor,
  type TailReader
} from "../src/programs/cli/progress.js"
import type { Upid } from "../src/schema/ids.js"

const SECRET = "5b2f9c1e-8d47-4a36-9e0b-3c7f1a2d6e84"
const HUB_KEY = "hub-key-abcdefghijklmnop"
const scrub = scrubberFor([SECRET, HUB_KEY])
const UPID_A = "UPID:pve:00000A01:00000001:65A0B0C0:vzrestore:110:felhom@pve!agent:" as Upid
const UPID_B = "UPID:pve:00000A02:00000002:65A0B0C1:vzstart:110:felhom@pve!agent:" as Upid

const capture = () => {
  const chunks: Array<string> = []
  const out: ProgressOutput = { write: (t) => void chunks.push(t), columns: () => 120 }
  return { out, text: () => chunks.join(""), chunks }
}

/** Lets forked fibers run between clock steps. */
const settle = Effect.promise(() => new Promise<void>((r) => setImmediate(r))).pipe(Effect.repeatN(2))
const advance = (seconds: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < seconds * 4; i++) {
      yield* TestClock.adjust("250 millis")
      yield* settle
    }
  })

/** The only escape sequences the TTY renderer itself writes: cursor up N lines, clear below. */
const OWN_ESCAPES = /\u001b\[\d+A\r\u001b\[J/g

describe("TTY progress renderer", () => {
  it.scoped("reads the task log once per second while a task runs, and never between tasks", () =>
    Effect.gen(function*() {
      const calls: Array<Upid> = []
      const tail: TailReader = (upid) => Effect.sync(() => (calls.push(upid), [`line ${calls.length}`]))
      const { out, text } = capture()
      const p: ProgressShape = yield* makeTtyProgress({ out, tail, scrub })
      yield* p.emit({ kind: "step", step: "restore", state: "started" })
      yield* advance(3)
      expect(calls).toEqual([]) // a step without a task: nothing to read
      yield* p.emit({ kind: "task", step: "restore", upid: UPID_A })
      yield* advance(1)
      expect(calls).toEqual([UPID_A])
      yield* advance(4)
      expect(calls.length).toBe(5)
      expect(text()).toContain("line 5")
      yield* p.emit({ kind: "step", step: "restore", state: "done" })
      yield* advance(5)
      expect(calls.length).toBe(5) // no task: no PVE call
      yield* p.emit({ kind: "step", step: "start", state: "started" })
      yield* p.emit({ kind: "task", step: "start", upid: UPID_B })
      yield* advance(2)
      expect(calls.slice(5)).toEqual([UPID_B, UPID_B])
      expect(text()).toContain("✓ restore  0:08")
    }))

  it.scoped("a slow log read delays the next one: never two reads at once", () =>
    Effect.gen(function*() {
      let running = 0
      let most = 0
      let calls = 0
      const tail: TailReader = () =>
        Effect.gen(function*() {
          calls++
          running++
          most = Math.max(most, running)
          yield* Effect.sleep("2500 millis")
          running--
          return ["slow"]
        })
      const { out } = capture()
      const p = yield* makeTtyProgress({ out, tail, scrub })
      yield* p.emit({ kind: "step", step: "restore", state: "started" })
      yield* p.emit({ kind: "task", step: "restore", upid: UPID_A })
      yield* advance(20)
      expect(most).toBe(1)
      // one read per (1 s wait + 2.5 s read): at most 6 in 20 s, not 20
      expect(calls).toBeGreaterThanOrEqual(5)
      expect(calls).toBeLessThanOrEqual(6)
    }))

  it.scoped("shows the last three lines of the running task; a new step starts without the old task's lines", () =>
    Effect.gen(function*() {
      const tail: TailReader = (upid) => Effect.succeed(upid === UPID_A ? ["a1", "a2", "a3", "a4", "a5"] : ["b1"])
      const { out, chunks } = capture()
      const p = yield* makeTtyProgress({ out, tail, scrub })
      yield* p.emit({ kind: "step", step: "restore", state: "started" })
      yield* p.emit({ kind: "task", step: "restore", upid: UPID_A })
      yield* advance(1)
      const frame = chunks.at(-1)!
      expect(frame).toContain("│ a3")
      expect(frame).toContain("│ a5")
      expect(frame).not.toContain("│ a2")
      yield* p.emit({ kind: "step", step: "restore", state: "done" })
      yield* p.emit({ kind: "step", step: "start", state: "started" })
      const next = chunks.at(-1)!
      expect(next).toContain("start")
      expect(next).not.toContain("a5")
    }))

  it.scoped("a read that returns after its task ended prints nothing stale", () =>
    Effect.gen(function*() {
      const tail: TailReader = () => Effect.as(Effect.sleep("2 seconds"), ["stale-line"])
      const { out, text } = capture()
      const p = yield* makeTtyProgress({ out, tail, scrub })
      yield* p.emit({ kind: "step", step: "resize", state: "started" })
      yield* p.emit({ kind: "task", step: "resize", upid: UPID_A })
      yield* advance(1.5) // the read is in flight
      yield* p.emit({ kind: "step", step: "resize", state: "done" })
      yield* advance(3)
      expect(text()).not.toContain("stale-line")
    }))

  it.scoped("the live block is redrawn in place, and erased when the scope closes; an unfinished step stays on screen", () =>
    Effect.gen(function*() {
      const { out, text } = capture()
      yield* Effect.scoped(Effect.gen(function*() {
        const p = yield* makeTtyProgress({ out, tail: () => Effect.succeed(["x"]), scrub })
        yield* p.emit({ kind: "step", step: "restore", state: "started" })
        yield* p.emit({ kind: "task", step: "restore", upid: UPID_A })
        yield* advance(2)
      }))
      // each redraw first moves up over the lines it drew (1 status + 1 log line)
      expect(text().match(/\u001b\[2A\r\u001b\[J/g)?.length).toBeGreaterThanOrEqual(2)
      expect(text().endsWith("\u001b[2A\r\u001b[J  ✗ restore  0:02 (did not finish)\n")).toBe(true)
    }))

  it.scoped("PVE text cannot leak a secret or drive the terminal", () =>
    Effect.gen(function*() {
      const hostile = [
        `auth failed: Authorization: PVEAPIToken=felhom@pve!agent=${SECRET}`,
        `url-encoded ${encodeURIComponent(SECRET)} and upper ${SECRET.toUpperCase()}`,
        "\u001b]0;owned-title\u0007\u001b[2J\u001b[1;1Hfake prompt $ \u001b[8mhidden",
        `split by an escape ${SECRET.slice(0, 18)}\u001b[0m${SECRET.slice(18)}`,
        `bidi \u202egnirts desrever\u202c and the hub key ${HUB_KEY}`
      ]
      const { out, text } = capture()
      const p = yield* makeTtyProgress({ out, tail: () => Effect.succeed(hostile), scrub, lines: 5 })
      yield* p.emit({ kind: "step", step: `restore ${SECRET}`, state: "started" })
      yield* p.emit({ kind: "task", step: "restore", upid: UPID_A })
      yield* advance(2)
      yield* p.emit({ kind: "step", step: "restore", state: "failed", detail: `PveTaskFailed: ${SECRET}\n\u001b[31mred` })
      yield* p.emit({ kind: "note", text: `hub said ${HUB_KEY}` })
      const all = text()
      expect(all).toContain("auth failed") // the lines did reach the terminal
      for (const needle of [SECRET, SECRET.slice(3, 11), encodeURIComponent(SECRET), HUB_KEY, SECRET.toUpperCase()]) {
        expect(all.toLowerCase()).not.toContain(needle.toLowerCase())
      }
      // only the renderer's own cursor movement; no title, clear-screen, cursor or colour codes
      expect(all.replace(OWN_ESCAPES, "")).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e]/)
    }))
})

describe("structured progress renderer", () => {
  it.effect("one JSON object per line, no ANSI, no secret, elapsed from the command's start", () =>
    Effect.gen(function*() {
      const { out, text } = capture()
      yield* TestClock.adjust("10 seconds")
      const p = yield* makeStructuredProgress({ out, scrub })
      yield* TestClock.adjust("2 seconds")
      yield* p.emit({ kind: "op", opId: "op-1", op: "create", vmid: 110 })
      yield* p.emit({ kind: "step", step: "restore", state: "started" })
      yield* p.emit({ kind: "task", step: "restore", upid: UPID_A })
      yield* TestClock.adjust("3 seconds")
      yield* p.emit({ kind: "step", step: "restore", state: "failed", detail: `boom ${SECRET}\u001b[31m` })
      yield* p.emit({ kind: "note", text: `\u001b]0;t\u0007note ${HUB_KEY}` })
      const lines = text().split("\n").filter((l) => l.length > 0)
      expect(lines).toHaveLength(5)
      const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
      expect(events.map((e) => e["event"])).toEqual(["op", "step", "task", "step", "note"])
      expect(events[0]).toMatchObject({ op: "create", op_id: "op-1", vmid: 110, elapsed_ms: 0 })
      expect(events[2]).toMatchObject({ upid: UPID_A })
      expect(events[3]).toMatchObject({ state: "failed", elapsed_ms: 3000 })
      expect(text()).not.toContain("\u001b")
      expect(text()).not.toContain(SECRET)
      expect(text()).not.toContain(HUB_KEY)
    }))
})

describe("cleanText", () => {
  it("never lets the secret or a control character through, whatever surrounds it", () => {
    const clean = cleanText(scrub)
    FastCheck.assert(
      FastCheck.property(
        FastCheck.string({ maxLength: 40 }),
        FastCheck.string({ maxLength: 40 }),
        FastCheck.constantFrom(SECRET, SECRET.toUpperCase(), encodeURIComponent(SECRET), HUB_KEY),
        FastCheck.constantFrom("", "\u001b[0m", "\u0007", "\n", "\u202e"),
        (before, after, secret, splitter) => {
          const cut = Math.floor(secret.length / 2)
          const out = clean(`${before}${secret.slice(0, cut)}${splitter}${secret.slice(cut)}${after}`)
          return !out.toLowerCase().includes(secret.toLowerCase()) &&
            !/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/.test(out)
        }
      ),
      { seed: 12, numRuns: 300 }
    )
  })

  it("keeps ordinary task log text and bounds its length", () => {
    const clean = cleanText(scrub)
    expect(clean("extracting archive '/var/lib/vz/dump/vzdump-lxc-9000.tar.zst'")).toBe("extracting archive '/var/lib/vz/dump/vzdump-lxc-9000.tar.zst'")
    expect(clean("x".repeat(1000)).length).toBeLessThanOrEqual(401)
    expect(formatElapsed(0)).toBe("0:00")
    expect(formatElapsed(61_500)).toBe("1:01")
    expect(formatElapsed(3_600_000 + 62_000)).toBe("1:01:02")
  })
})
