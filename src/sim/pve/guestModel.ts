/**
 * The simulator's guest model: what PVE cannot tell, i.e. whether a guest's services answer.
 * Sim-only, outside the PVE API (README: "Guest model").
 *
 * - Every guest has `services` (healthy | failing; seeded, default healthy). vzdump copies it
 *   into the archive; a restore gives the new guest the archive's value, or `failing` when the
 *   archive carries the `health` damage (a `restore` damage fails the restore task instead).
 * - Once running for the seed's `guest_boot_ms` of Clock time, a guest is `up` and its services
 *   answer `ok` or `failing`; before that it is `booting`, and a stopped guest answers nothing.
 * - `GET /sim-guest/{vmid}/health` is the stand-in for "its services answer": 200 when up and
 *   healthy, 503 otherwise (booting, stopped, failing), 404 for no such guest. Like a check run
 *   inside the guest (`pct exec`), it does not need the guest's network link.
 * - Starting a guest with a NIC whose link is up and whose MAC another guest also has (on a
 *   link-up NIC) is recorded in `state.macConflicts`: on a real LAN that is an address conflict
 *   with a customer guest, the thing a restore-test's scratch guest must never cause.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { Clock, Effect, Either } from "effect"
import { type LxcConfig, parseNet } from "./lxcconf.js"
import type { GuestInner, GuestState, MacConflict, SimState } from "./state.js"
import { randomBytes } from "node:crypto"

export const SIM_GUEST_PREFIX = "/sim-guest"

export interface SimNic {
  readonly iface: string
  readonly hwaddr: string | null
  readonly link: "up" | "down"
}

export interface SimGuestHealth {
  readonly vmid: number
  readonly status: "running" | "stopped"
  readonly phase: "stopped" | "booting" | "up"
  /** null while nothing answers (stopped, booting) */
  readonly services: "ok" | "failing" | null
  /** ms of Clock time until it is up (booting only) */
  readonly up_in_ms: number | null
  readonly restored_from: string | null
  readonly nics: ReadonlyArray<SimNic>
}

export const nicsOf = (config: Readonly<LxcConfig>): ReadonlyArray<SimNic> =>
  Object.keys(config)
    .filter((k) => /^net\d+$/.test(k))
    .sort()
    .flatMap((iface) =>
      Either.match(parseNet(iface, String(config[iface])), {
        onLeft: () => [],
        onRight: (net) => [{
          iface,
          hwaddr: net["hwaddr"]?.toUpperCase() ?? null,
          link: net["link_down"] === "1" ? "down" as const : "up" as const
        }]
      })
    )

export const guestHealth = (state: SimState, g: GuestState, nowMs: number): SimGuestHealth => {
  const base = { vmid: g.vmid, status: g.status, restored_from: g.restoredFrom ?? null, nics: nicsOf(g.config) }
  if (g.status !== "running" || g.startedAtMs === undefined) return { ...base, phase: "stopped", services: null, up_in_ms: null }
  const upAt = g.startedAtMs + state.guestBootMs
  if (nowMs < upAt) return { ...base, phase: "booting", services: null, up_in_ms: upAt - nowMs }
  return { ...base, phase: "up", services: g.services === "failing" ? "failing" : "ok", up_in_ms: null }
}

/** MAC conflicts a start of `g` causes (its link-up NICs against every other guest's link-up NICs). */
export const macConflictsOf = (state: SimState, g: GuestState, nowMs: number): ReadonlyArray<MacConflict> => {
  const mine = nicsOf(g.config).filter((n) => n.link === "up" && n.hwaddr !== null)
  const out: Array<MacConflict> = []
  for (const other of state.guests.values()) {
    if (other.vmid === g.vmid) continue
    for (const theirs of nicsOf(other.config)) {
      if (theirs.link !== "up" || theirs.hwaddr === null) continue
      for (const n of mine) {
        if (n.hwaddr !== theirs.hwaddr) continue
        out.push({
          atMs: nowMs,
          vmid: g.vmid,
          iface: n.iface,
          hwaddr: n.hwaddr,
          otherVmid: other.vmid,
          otherIface: theirs.iface,
          otherLive: other.status === "running"
        })
      }
    }
  }
  return out
}

const json = (status: number, body: unknown) => HttpServerResponse.unsafeJson(body, { status })

/** `/sim-guest/{vmid}/health` (no PVE token: a guest's services do not know it). */
export const makeSimGuestApp = (state: SimState): HttpApp.Default =>
  Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const path = req.url.split("?")[0] ?? ""
    const m = /^\/sim-guest\/(\d{3,9})\/health$/.exec(path)
    if (req.method !== "GET" || m === null) return json(404, { error: "the guest model answers GET /sim-guest/{vmid}/health only" })
    const g = state.guests.get(Number(m[1]))
    if (g === undefined) return json(404, { error: `no guest ${m[1]}` })
    const h = guestHealth(state, g, yield* Clock.currentTimeMillis)
    return json(h.services === "ok" ? 200 : 503, h)
  })

/** 16 or 32 random bytes as hex: a machine-id, an SSH host key's stand-in. */
export const newHex = (bytes: number): string => randomBytes(bytes).toString("hex")

/**
 * A guest's in-guest identity, made on first look for a guest that has none yet (a seeded one, or
 * one restored from a golden archive, before its first-boot unit ran).
 */
export const innerOf = (g: GuestState): GuestInner => {
  if (g.inner === undefined) {
    g.inner = { machineId: newHex(16), sshHostKey: newHex(32), hostname: typeof g.config["hostname"] === "string" ? g.config["hostname"] : null, applied: [] }
  }
  return g.inner
}
