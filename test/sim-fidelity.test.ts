/**
 * Fidelity of the simulator to real PVE: its answers carry the same field names and JSON types
 * as the response fixtures written from the PVE sources (test/fixtures/pve). A field the
 * simulator invents, or a number it sends where PVE sends a string, fails here.
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { makeSimHttpClient, makeSimPve, simFingerprint256 } from "../src/sim/pve/index.js"
import { seedWith } from "./support.js"

type Obj = Record<string, unknown>
const fixture = (name: string): Obj => JSON.parse(readFileSync(join(__dirname, "fixtures", "pve", name), "utf8"))
const first = (data: unknown): Obj => (Array.isArray(data) ? (data[0] as Obj) : (data as Obj))
const jsonType = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v)

const CASES: ReadonlyArray<readonly [path: string, fixture: string, mustHave: ReadonlyArray<string>]> = [
  ["/version", "version-pve9.json", ["version", "release", "repoid"]],
  ["/nodes", "nodes.json", ["node", "status", "id", "type", "ssl_fingerprint", "maxcpu", "maxmem", "uptime"]],
  ["/nodes/pve/status", "node-status.json", ["uptime", "cpu", "loadavg", "kversion", "pveversion", "cpuinfo", "memory", "swap", "rootfs"]],
  ["/nodes/pve/lxc", "lxc-list-pve9.json", ["vmid", "type", "status", "name", "cpus", "maxmem", "maxdisk", "uptime"]],
  ["/nodes/pve/lxc/100/status/current", "lxc-status-current.json", ["vmid", "status", "name", "maxmem", "ha"]],
  ["/nodes/pve/lxc/100/config", "lxc-config.json", ["digest", "hostname", "memory", "cores", "rootfs", "net0", "features"]],
  ["/storage", "storage.json", ["storage", "type", "content", "digest"]],
  ["/nodes/pve/storage", "node-storage.json", ["storage", "type", "content", "enabled", "active", "total", "used", "avail"]],
  ["/nodes/pve/storage/local/content?content=backup", "storage-content-backup.json", ["volid", "content", "format", "size", "ctime", "vmid", "subtype"]],
  ["/cluster/nextid", "nextid.json", []]
]

describe("simulator fidelity to PVE response shapes", () => {
  it.scoped.each(CASES)("%s matches %s", ([path, name, mustHave]) =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith(), { tlsFingerprint: simFingerprint256 })
      const client = makeSimHttpClient(sim)
      const res = yield* client.execute(
        HttpClientRequest.get(`https://127.0.0.1:8006/api2/json${path}`).pipe(HttpClientRequest.setHeader("Authorization", sim.authorization))
      )
      expect(res.status).toBe(200)
      const body = (yield* res.json) as Obj
      const real = fixture(name)
      expect(Object.keys(body)).toEqual(Object.keys(real).filter((k) => k !== "total"))
      if (mustHave.length === 0) {
        expect(jsonType(body["data"])).toBe(jsonType(real["data"]))
        return
      }
      const simObj = first(body["data"])
      const realObj = first(real["data"])
      for (const key of mustHave) expect(simObj, `simulator omits ${key}`).toHaveProperty(key)
      for (const [key, value] of Object.entries(simObj)) {
        if (!(key in realObj)) continue // fields PVE sends only in some states (lock, pid, template, ...)
        expect(jsonType(value), `${path} ${key}`).toBe(jsonType(realObj[key]))
      }
    }))

  it.scoped("task status and log: same fields and types as a real finished task", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({ task_durations_ms: { vzsnapshot: 0 } }))
      const client = makeSimHttpClient(sim).pipe(
        HttpClient.mapRequest((r) => r.pipe(HttpClientRequest.prependUrl("https://127.0.0.1:8006/api2/json"), HttpClientRequest.setHeader("Authorization", sim.authorization)))
      )
      const post = yield* client.execute(HttpClientRequest.post("/nodes/pve/lxc/101/snapshot").pipe(HttpClientRequest.bodyUrlParams({ snapname: "fid" })))
      const upid = ((yield* post.json) as { data: string }).data
      yield* Effect.yieldNow()
      const status = (yield* (yield* client.execute(HttpClientRequest.get(`/nodes/pve/tasks/${encodeURIComponent(upid)}/status`))).json) as Obj
      const real = first(fixture("task-status-ok.json")["data"])
      const simObj = first(status["data"])
      expect(Object.keys(simObj).sort()).toEqual(Object.keys(real).sort())
      for (const [k, v] of Object.entries(real)) expect(jsonType(simObj[k]), k).toBe(jsonType(v))
      const log = (yield* (yield* client.execute(HttpClientRequest.get(`/nodes/pve/tasks/${encodeURIComponent(upid)}/log`))).json) as Obj
      expect(Object.keys(log).sort()).toEqual(["data", "total"])
      expect(Object.keys(first(log["data"])).sort()).toEqual(["n", "t"])
    }))
})
