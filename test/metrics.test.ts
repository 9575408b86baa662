/**
 * /metrics (issue 14): the exposition is strict Prometheus text 0.0.4 (parsed here by a parser
 * that refuses anything loose), label values are escaped so no value can forge a line or a
 * series, the counters move after a cycle that reconciles against the simulator, the per-guest
 * figures come from the protection store at scrape, and no secret reaches /metrics or /status.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Option, Schema } from "effect"
import { ProtectionStore } from "../src/layers/ProtectionStore.js"
import { render } from "../src/programs/daemon/metrics.js"
import { DesiredState } from "../src/schema/desired.js"
import { advance, get, HOST, KEY, startDaemonWithEndpoint } from "./status-support.js"

// ---------------------------------------------------------------------------------------------
// A strict parser of the text format

interface ParsedSample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}
interface ParsedFamily {
  help: string | null
  type: string | null
  readonly samples: Array<ParsedSample>
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*"
const VALUE_RE = /^(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]Inf|NaN)$/

const parseValue = (v: string) => {
  if (!VALUE_RE.test(v)) throw new Error(`bad value ${JSON.stringify(v)}`)
  return v === "+Inf" ? Infinity : v === "-Inf" ? -Infinity : v === "NaN" ? NaN : Number(v)
}

const parseLabels = (text: string): Record<string, string> => {
  const out: Record<string, string> = {}
  let i = 0
  while (i < text.length) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(text.slice(i))
    if (m === null) throw new Error(`bad label at ${JSON.stringify(text.slice(i))}`)
    i += m[0].length
    let value = ""
    for (;;) {
      const c = text[i]
      if (c === undefined) throw new Error("unterminated label value")
      if (c === "\"") break
      if (c === "\n") throw new Error("raw newline in a label value")
      if (c === "\\") {
        const n = text[i + 1]
        if (n === "\\") value += "\\"
        else if (n === "\"") value += "\""
        else if (n === "n") value += "\n"
        else throw new Error(`bad escape \\${n}`)
        i += 2
        continue
      }
      value += c
      i++
    }
    i++ // closing quote
    if (m[1]! in out) throw new Error(`duplicate label ${m[1]}`)
    out[m[1]!] = value
    if (i < text.length) {
      if (text[i] !== ",") throw new Error(`expected , at ${JSON.stringify(text.slice(i))}`)
      i++
    }
  }
  return out
}

/** Families by name; throws on anything the 0.0.4 format does not allow or we promise not to do. */
export const parseExposition = (text: string): Map<string, ParsedFamily> => {
  if (!text.endsWith("\n")) throw new Error("no final newline")
  const families = new Map<string, ParsedFamily>()
  const seen = new Set<string>()
  const family = (name: string) => {
    const f = families.get(name) ?? { help: null, type: null, samples: [] }
    families.set(name, f)
    return f
  }
  for (const line of text.slice(0, -1).split("\n")) {
    if (line === "") throw new Error("blank line")
    const help = new RegExp(`^# HELP (${NAME}) (.*)$`).exec(line)
    const type = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line)
    if (help !== null) {
      const f = family(help[1]!)
      if (f.help !== null || f.samples.length > 0) throw new Error(`HELP for ${help[1]} repeated or after samples`)
      if (/\\[^\\n]/.test(help[2]!.replace(/\\\\/g, ""))) throw new Error("bad escape in HELP")
      f.help = help[2]!
      continue
    }
    if (type !== null) {
      const f = family(type[1]!)
      if (f.type !== null || f.samples.length > 0) throw new Error(`TYPE for ${type[1]} repeated or after samples`)
      f.type = type[2]!
      continue
    }
    if (line.startsWith("#")) throw new Error(`unexpected comment ${line}`)
    const sample = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)$`).exec(line)
    if (sample === null) throw new Error(`bad sample line ${JSON.stringify(line)}`)
    const name = sample[1]!
    const labels = parseLabels(sample[2] ?? "")
    const value = parseValue(sample[3]!)
    const base = /_(bucket|sum|count)$/.test(name) && families.get(name.replace(/_(bucket|sum|count)$/, ""))?.type === "histogram"
      ? name.replace(/_(bucket|sum|count)$/, "")
      : name
    const f = families.get(base)
    if (f === undefined || f.type === null || f.help === null) throw new Error(`sample ${name} before its HELP and TYPE`)
    const key = `${name}{${Object.entries(labels).sort().map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(",")}}`
    if (seen.has(key)) throw new Error(`duplicate series ${key}`)
    seen.add(key)
    if (f.type === "counter" && (!name.endsWith("_total") || value < 0)) throw new Error(`bad counter ${key}`)
    f.samples.push({ name, labels, value })
  }
  for (const [name, f] of families) {
    if (f.type !== "histogram") continue
    const series = new Map<string, Array<ParsedSample>>()
    for (const s of f.samples) {
      const { le: _le, ...rest } = s.labels
      const k = JSON.stringify(Object.entries(rest).sort())
      series.set(k, [...(series.get(k) ?? []), s])
    }
    for (const [k, ss] of series) {
      const buckets = ss.filter((s) => s.name === `${name}_bucket`)
      const count = ss.find((s) => s.name === `${name}_count`)
      const sum = ss.find((s) => s.name === `${name}_sum`)
      if (count === undefined || sum === undefined || buckets.length === 0) throw new Error(`histogram ${name}${k} incomplete`)
      let prevLe = -Infinity
      let prevN = 0
      for (const b of buckets) {
        const le = parseValue(b.labels["le"] ?? "x")
        if (!(le > prevLe) || b.value < prevN) throw new Error(`histogram ${name}${k} not cumulative`)
        prevLe = le
        prevN = b.value
      }
      if (buckets.at(-1)!.labels["le"] !== "+Inf" || buckets.at(-1)!.value !== count.value) throw new Error(`histogram ${name}${k}: +Inf bucket ≠ count`)
    }
  }
  return families
}

const value = (fs: Map<string, ParsedFamily>, name: string, labels: Record<string, string> = {}) =>
  fs.get(name.replace(/_(bucket|sum|count)$/, ""))?.samples
    .concat(fs.get(name)?.samples ?? [])
    .find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value ?? 0

// ---------------------------------------------------------------------------------------------

describe("the exposition format", () => {
  it("the parser is strict (it is not vacuous)", () => {
    const ok = "# HELP felhom_x_total x\n# TYPE felhom_x_total counter\nfelhom_x_total{a=\"b\"} 1\n"
    expect(parseExposition(ok).get("felhom_x_total")?.samples).toHaveLength(1)
    for (const bad of [
      "felhom_x_total 1\n", // no HELP/TYPE
      ok.replace("\n", ""), // glued lines
      ok + "felhom_x_total{a=\"b\"} 2\n", // duplicate series
      ok.replace("{a=\"b\"}", "{a=\"b\\q\"}"), // bad escape
      ok.replace(" 1\n", " one\n"),
      ok.slice(0, -1), // no final newline
      "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n" // not cumulative
    ]) expect(() => parseExposition(bad), bad).toThrow()
  })

  it("label values are escaped: a hostile value stays one label of one series", () => {
    const hostile = "a\"b\\c\nd} 1\nfelhom_forged_total 9\n# TYPE x counter"
    const text = render([{
      name: "felhom_guest_info",
      help: "help with a \\ and a\nnewline",
      type: "gauge",
      samples: [{ name: "felhom_guest_info", labels: [["note", hostile]], value: 1 }]
    }])
    const fs = parseExposition(text)
    expect([...fs.keys()]).toEqual(["felhom_guest_info"])
    expect(fs.get("felhom_guest_info")?.samples[0]?.labels["note"]).toBe(hostile)
    expect(text.split("\n")).toHaveLength(4)
  })

  it("non-finite values and bad names", () => {
    const text = render([
      { name: "felhom_a", help: "a", type: "gauge", samples: [{ name: "felhom_a", labels: [["k", "1"]], value: Infinity }, { name: "felhom_a", labels: [["k", "2"]], value: NaN }] },
      { name: "bad name", help: "x", type: "gauge", samples: [{ name: "bad name", labels: [], value: 1 }] }
    ])
    const fs = parseExposition(text)
    expect(value(fs, "felhom_a", { k: "1" })).toBe(Infinity)
    expect(Number.isNaN(value(fs, "felhom_a", { k: "2" }))).toBe(true)
    expect(fs.has("bad name")).toBe(false)
  })
})

describe("the daemon's /metrics", () => {
  it.scoped("counters move after a cycle that reconciles against the simulator; per-guest figures come from the protection store", () =>
    Effect.gen(function*() {
      const d = yield* startDaemonWithEndpoint({ seed: { task_durations_ms: { vzstart: 20_000 } } })
      yield* advance(2)
      const port = yield* Deferred.await(d.port)
      const before = yield* get(port, "/metrics")
      expect(before.status).toBe(200)
      expect(before.contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
      const b = parseExposition(before.body)

      const desired = Schema.decodeUnknownSync(DesiredState)({
        generation: 0,
        guests: [
          { vmid: 100, hostname: "cust-alpha", cores: 2, memory_bytes: 2048 * 1048576, swap_mib: 512, rootfs_gib: 16, power: "running", description: "felhom customer guest alpha", tags: ["customer", "felhom"] },
          { vmid: 101, hostname: "cust-beta", memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "", tags: [] },
          { vmid: 102, hostname: "ops-tools", memory_bytes: 512 * 1048576, swap_mib: 512, rootfs_gib: 4, power: "running", description: "", tags: [] }
        ]
      })
      yield* d.hub.setDesired(HOST, desired)
      const store = yield* Effect.provide(ProtectionStore, d.context)
      yield* store.recordRun({ kind: "backup", vmid: 100, storage: "local", result: "ok", detail: "" })
      yield* store.recordRun({ kind: "backup", vmid: 101, storage: "local", result: "failed", detail: "no space" })
      yield* store.recordRun({ kind: "restore_test", vmid: 100, storage: "local", result: "failed", detail: "did not boot" })
      yield* advance(90, 2)

      const after = yield* get(port, "/metrics")
      const a = parseExposition(after.body)
      const moved = (name: string, labels: Record<string, string> = {}) => value(a, name, labels) - value(b, name, labels)
      expect(moved("felhom_reconcile_cycles_total")).toBeGreaterThanOrEqual(1)
      expect(moved("felhom_hub_polls_total", { outcome: "ok" })).toBeGreaterThanOrEqual(1)
      expect(moved("felhom_actions_total", { action: "start", verdict: "allowed", result: "applied" })).toBeGreaterThanOrEqual(1)
      expect(moved("felhom_pve_requests_total", { method: "GET", outcome: "ok" })).toBeGreaterThan(0)
      expect(moved("felhom_pve_requests_total", { method: "POST", outcome: "ok" })).toBeGreaterThan(0)
      expect(moved("felhom_pve_request_duration_seconds_count", { method: "GET" })).toBeGreaterThan(0)
      // the start task took 20 s of (test) clock: counted in the 30 s bucket, not the 15 s one
      expect(moved("felhom_pve_task_duration_seconds_count", { type: "vzstart" })).toBeGreaterThanOrEqual(1)
      expect(moved("felhom_pve_task_duration_seconds_bucket", { type: "vzstart", le: "30" }) -
        moved("felhom_pve_task_duration_seconds_bucket", { type: "vzstart", le: "15" })).toBeGreaterThanOrEqual(1)
      expect(value(a, "felhom_hub_last_success_timestamp_seconds")).toBeGreaterThan(0)
      expect(value(a, "felhom_watchdog_state", { state: "armed" })).toBe(1)
      expect(value(a, "felhom_watchdog_state", { state: "stalled" })).toBe(0)
      expect(value(a, "felhom_agent_info", { version: "0.1.0" })).toBe(1)
      expect(a.get("felhom_break_glass_active")?.samples.map((x) => x.value)).toEqual([0])
      // at scrape, from the store: 100's backup is ~90 s old, 101 never succeeded, 100's restore-test failed
      const age = value(a, "felhom_backup_age_seconds", { vmid: "100" })
      expect(age).toBeGreaterThanOrEqual(85)
      expect(age).toBeLessThanOrEqual(95)
      expect(value(a, "felhom_backup_age_seconds", { vmid: "101" })).toBe(Infinity)
      expect(value(a, "felhom_restore_test_last_result", { vmid: "100" })).toBe(0)
      // labels stay bounded: no UPID, URL or message anywhere
      expect(after.body).not.toMatch(/UPID:|https?:\/\/|no space|did not boot/)
    }), 120_000)

  it.scoped("no secret in /metrics or /status, even when the hub echoes the api key and PVE's token secret in an error", () =>
    Effect.gen(function*() {
      const d = yield* startDaemonWithEndpoint()
      yield* advance(2)
      const port = yield* Deferred.await(d.port)
      d.fault.answer = { status: 500, body: JSON.stringify({ error: `bad key ${KEY} / ${d.tokenSecret}`, message: `Bearer ${KEY}` }) }
      yield* advance(65, 5)
      const status = yield* get(port, "/status")
      const metrics = yield* get(port, "/metrics")
      const health = yield* get(port, "/health")
      const body = JSON.parse(status.body) as { last_hub_error: string | null }
      expect(body.last_hub_error).not.toBeNull()
      for (const text of [status.body, metrics.body, health.body]) {
        expect(text).not.toContain(KEY)
        expect(text).not.toContain(d.tokenSecret)
        expect(text).not.toContain(KEY.slice(0, 16))
      }
      expect(value(parseExposition(metrics.body), "felhom_hub_polls_total", { outcome: "error" })).toBeGreaterThanOrEqual(1)
      expect(Option.isSome(Option.fromNullable(body.last_hub_error))).toBe(true)
    }), 120_000)
})
