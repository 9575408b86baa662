/**
 * The CLI's Progress renderers (src/layers/Progress.ts is the contract; sagas emit through
 * `emitProgress`). Two forms:
 *
 * - TTY (a person at a terminal, stderr): each finished step as a permanent line, and below them
 *   a live block redrawn in place: the current step, its elapsed time and the op's, and the last
 *   few lines of the PVE task log of the task the step waits on, read with `taskLogTail` once per
 *   interval on the Clock while a task runs (no PVE call between tasks).
 * - Structured (`--json`, or no TTY): one JSON object per line on stderr, no ANSI, no tailing;
 *   stdout keeps the command's own result.
 *
 * Everything printed is remote or derived text: PVE task log lines (already scrubbed of the token
 * by the Proxmox layer), step details (error messages) and notes. Each is scrubbed again here of
 * every secret the config holds, and stripped of control and bidi characters first, so a hostile
 * task log can neither reveal a secret nor drive the terminal (escape sequences that move the
 * cursor, rewrite earlier lines or set the title).
 */
import { Clock, Duration, Effect, Option, Redacted, type Scope } from "effect"
import type { ProgressEvent, ProgressShape } from "../../layers/Progress.js"
import type { AgentConfigFile } from "../../schema/config.js"
import type { Upid } from "../../schema/ids.js"
import { makeScrubber } from "../../schema/text.js"

export interface ProgressOutput {
  readonly write: (text: string) => void
  /** Terminal width, when known: live lines are cut to it so a wrap cannot break the redraw. */
  readonly columns: () => number | undefined
}

/** How a renderer reads a task's log tail; failures are ignored (the previous lines stay). */
export type TailReader = (upid: Upid, lines: number) => Effect.Effect<ReadonlyArray<string>, unknown>

// C0/C1 controls (ESC, CR, BS, ...), DEL, and the bidi/zero-width characters that reorder or hide text
const CSI = /\u001b\[[0-?]*[ -/]*[@-~]/g
const BREAKS = /[\t\n\r\v\f]+/g
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069]/g
const MAX_TEXT = 400

/**
 * Printable, secret-free, bounded text: escape sequences and control characters out first (a
 * secret split by one is joined again and so still found), then the scrubber.
 */
export const cleanText = (scrub: (s: string) => string) => (text: string): string => {
  const plain = text.replace(CSI, "").replace(BREAKS, " ").replace(CONTROLS, "")
  const scrubbed = scrub(plain)
  return scrubbed.length > MAX_TEXT ? `${scrubbed.slice(0, MAX_TEXT)}…` : scrubbed
}

/** The secrets the config holds (PVE token, hub key, registry password): the renderers' second scrub. */
export const configSecrets = (file: AgentConfigFile): ReadonlyArray<string> =>
  [
    file.proxmox?.token_secret,
    file.hub?.api_key,
    file.controllers.registry?.password
  ].flatMap((s) => (s === undefined ? [] : [Redacted.value(s)]))

export const scrubberFor = (secrets: ReadonlyArray<string>) => makeScrubber(secrets).scrub

/** `m:ss` (or `h:mm:ss`). */
export const formatElapsed = (ms: number): string => {
  const s = Math.max(0, Math.floor(ms / 1000))
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const ss = String(s % 60).padStart(2, "0")
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`
}

export interface TtyOptions {
  readonly out: ProgressOutput
  readonly tail: TailReader
  readonly scrub: (s: string) => string
  /** Between two task log reads (and redraws); default 1 s. */
  readonly interval?: Duration.DurationInput
  /** Task log lines shown; default 3. */
  readonly lines?: number
}

/**
 * The terminal renderer. Scoped: its tail fiber lives in the caller's scope, and closing the
 * scope erases the live block so the command's result prints on a clean line.
 */
export const makeTtyProgress = (opts: TtyOptions): Effect.Effect<ProgressShape, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clean = cleanText(opts.scrub)
    const tailLines = opts.lines ?? 3
    const interval = Duration.decode(opts.interval ?? Duration.seconds(1))
    const state = {
      // the command's start until an op event says when the op began
      opStartMs: (yield* Clock.currentTimeMillis) as number | null,
      step: null as { readonly name: string; readonly startedMs: number } | null,
      task: null as Upid | null,
      tail: [] as ReadonlyArray<string>,
      drawn: 0
    }
    const fit = (line: string) => {
      const cols = opts.out.columns()
      return cols !== undefined && cols > 1 && line.length >= cols ? `${line.slice(0, cols - 2)}…` : line
    }
    const erase = () => {
      // up to the first live line, then clear to the end of the screen
      if (state.drawn > 0) opts.out.write(`\u001b[${state.drawn}A\r\u001b[J`)
      state.drawn = 0
    }
    const draw = (nowMs: number) => {
      erase()
      if (state.step === null) return
      const total = state.opStartMs === null ? "" : `  (total ${formatElapsed(nowMs - state.opStartMs)})`
      const lines = [
        `  … ${state.step.name}  ${formatElapsed(nowMs - state.step.startedMs)}${total}${state.task === null ? "" : "  [PVE task running]"}`,
        ...state.tail.map((l) => `      │ ${l}`)
      ].map(fit)
      opts.out.write(lines.map((l) => `${l}\n`).join(""))
      state.drawn = lines.length
    }
    /** A permanent line above the live block. */
    const print = (line: string, nowMs: number) => {
      erase()
      opts.out.write(`${fit(line)}\n`)
      draw(nowMs)
    }

    const emit = (event: ProgressEvent): Effect.Effect<void> =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        switch (event.kind) {
          case "op":
            state.opStartMs = now
            print(`${clean(event.op)}${event.vmid === null ? "" : ` of guest ${event.vmid}`} (op ${clean(event.opId)})`, now)
            return
          case "step":
            if (event.state === "started") {
              state.step = { name: clean(event.step), startedMs: now }
              state.task = null
              state.tail = []
              draw(now)
              return
            }
            {
              const took = state.step === null ? "" : `  ${formatElapsed(now - state.step.startedMs)}`
              state.step = null
              state.task = null
              state.tail = []
              print(
                event.state === "done"
                  ? `  ✓ ${clean(event.step)}${took}`
                  : `  ✗ ${clean(event.step)}${took}${event.detail === undefined ? "" : `: ${clean(event.detail)}`}`,
                now
              )
            }
            return
          case "task":
            state.task = event.upid
            state.tail = []
            draw(now)
            return
          case "note":
            print(`  · ${clean(event.text)}`, now)
            return
        }
      })

    // One read per interval, only while a task runs; a read still in flight delays the next
    // (never two at once), and lines of a task that has meanwhile ended are dropped.
    const tick = Effect.gen(function*() {
      yield* Effect.sleep(interval)
      const upid = state.task
      if (upid !== null) {
        const read = yield* Effect.option(opts.tail(upid, tailLines))
        if (Option.isSome(read) && state.task === upid) state.tail = read.value.slice(-tailLines).map(clean)
      }
      if (state.step !== null) draw(yield* Clock.currentTimeMillis)
    })
    yield* Effect.forkScoped(Effect.forever(tick))
    // a step that never ended (its saga failed or was interrupted) stays visible as such
    yield* Effect.addFinalizer(() =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        erase()
        if (state.step !== null) opts.out.write(`${fit(`  ✗ ${state.step.name}  ${formatElapsed(now - state.step.startedMs)} (did not finish)`)}\n`)
      })
    )
    return { emit } satisfies ProgressShape
  })

export interface StructuredOptions {
  readonly out: ProgressOutput
  readonly scrub: (s: string) => string
}

/** One JSON object per line: `{"event":"step","step":"restore","state":"done","at":"…","elapsed_ms":…}`. */
export const makeStructuredProgress = (opts: StructuredOptions): Effect.Effect<ProgressShape> =>
  Effect.map(Clock.currentTimeMillis, (startMs) => {
    const clean = cleanText(opts.scrub)
    let opStartMs = startMs
    const emit = (event: ProgressEvent): Effect.Effect<void> =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        if (event.kind === "op") opStartMs = now
        const base = { at: new Date(now).toISOString(), elapsed_ms: now - opStartMs }
        const line = (() => {
          switch (event.kind) {
            case "op":
              return { event: "op", op: clean(event.op), op_id: clean(event.opId), vmid: event.vmid, ...base }
            case "step":
              return {
                event: "step",
                step: clean(event.step),
                state: event.state,
                ...(event.detail === undefined ? {} : { detail: clean(event.detail) }),
                ...base
              }
            case "task":
              return { event: "task", step: clean(event.step), upid: clean(event.upid), ...base }
            case "note":
              return { event: "note", text: clean(event.text), ...base }
          }
        })()
        opts.out.write(`${JSON.stringify(line)}\n`)
      })
    return { emit } satisfies ProgressShape
  })

/** What an interrupted run tells the operator (the journal holds whatever was in flight). */
export const INTERRUPTED =
  "felhom-agent: interrupted; an operation left in flight is settled by `felhom-agent recover --journal` (or by the daemon when it starts)"

/** stderr as a progress output. */
export const stderrOutput: ProgressOutput = {
  write: (text) => void process.stderr.write(text),
  columns: () => (process.stderr.isTTY ? process.stderr.columns : undefined)
}

/** The TTY renderer only for a person at a terminal: not with --json, and both streams a TTY. */
export const wantsTty = (json: boolean): boolean => !json && process.stdout.isTTY === true && process.stderr.isTTY === true
