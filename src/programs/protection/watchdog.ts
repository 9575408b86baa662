/**
 * The storage watchdog (SPEC §13, issue 10): every `protection.watchdog_interval_seconds` (default
 * 2 s, Effect's Clock) it reads whether each watched target is reachable — one
 * `GET /nodes/{node}/storage` for PVE's `active` flags, and for a USB disk Privileged.usbState
 * (a lstat and a read of mountinfo, no child process, no sudo) — and when any target comes or goes
 * it asks the daemon for a host report at once (ReportNow), not at the next poll. A dropped disk
 * or an unreachable NFS/CIFS/PBS server is thus reported within the interval plus one report.
 *
 * Which targets and how to probe them is the storage pass's decision (StorageStatus); the
 * watchdog changes nothing on the host. A reading it cannot take (PVE unreachable, mountinfo
 * unreadable) leaves that target's last known state alone: "unknown" never reads as a drop.
 */
import { Duration, Effect, Either, Schedule } from "effect"
import { Privileged } from "../../layers/Privileged.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { NodeStorageEntry } from "../../schema/proxmox.js"
import { type AvailabilityChange, ReportNow, StorageStatus } from "./status.js"

const USB_DETAIL = {
  absent: "the disk is gone (pulled, or its power failed)",
  stale: "the disk was pulled while mounted",
  unmounted: "the disk is present but not mounted",
  foreign: "another filesystem is mounted where the disk belongs"
} as const

/**
 * One check: reads every watched target, records the readings, and requests a report when any
 * target's reachability changed. Returns the changes.
 */
export const storageWatchdogCheck: Effect.Effect<ReadonlyArray<AvailabilityChange>, never, Proxmox | Privileged | StorageStatus | ReportNow> = Effect
  .gen(function*() {
    const status = yield* StorageStatus
    const pve = yield* Proxmox
    const priv = yield* Privileged
    const watched = (yield* status.snapshot).targets.filter((t) => t.probe !== null)
    if (watched.length === 0) return []
    const nodes = yield* Effect.either(pve.nodeStorage)
    const byId = Either.isRight(nodes) ? new Map<string, NodeStorageEntry>(nodes.right.map((n) => [n.storage, n] as const)) : undefined
    const readings: Array<{ readonly id: string; readonly available: boolean; readonly detail: string | null }> = []
    for (const t of watched) {
      const probe = t.probe!
      let usb: { readonly ok: boolean; readonly detail: string | null } | undefined
      if (probe.usbUuid !== null) {
        const st = yield* Effect.either(priv.usbState({ targetId: t.id, uuid: probe.usbUuid }))
        // an unreadable state is no reading
        if (Either.isLeft(st)) continue
        usb = st.right.state === "mounted" ? { ok: true, detail: null } : { ok: false, detail: USB_DETAIL[st.right.state] }
      }
      if (usb !== undefined && !usb.ok) {
        readings.push({ id: t.id, available: false, detail: usb.detail })
        continue
      }
      // PVE unreadable: a USB disk still mounted says nothing about PVE; no reading
      if (byId === undefined) continue
      const n = byId.get(t.id)
      if (n === undefined) {
        // not created yet: reachability is the pass's to say, unless the disk just came back
        if (usb !== undefined) readings.push({ id: t.id, available: false, detail: "PVE has no storage entry for it yet" })
        continue
      }
      readings.push(
        n.active === 1
          ? { id: t.id, available: true, detail: null }
          : { id: t.id, available: false, detail: "PVE reports it inactive: the server does not answer or the disk is not mounted" }
      )
    }
    const changes = yield* status.observe(readings)
    if (changes.length > 0) {
      for (const c of changes) {
        const what = c.to ? "reachable again" : `unreachable: ${c.detail ?? "no detail"}`
        yield* (c.to ? Effect.logInfo : Effect.logWarning)(`storage watchdog: ${c.id} ${what}`)
      }
      yield* Effect.flatMap(ReportNow, (r) => r.request)
    }
    return changes
  })
  .pipe(
    Effect.catchAllCause((cause) => Effect.as(Effect.logWarning("storage watchdog check failed", cause), [] as ReadonlyArray<AvailabilityChange>))
  )

/** The watchdog fiber's body: a check, then every `every` (Effect's Clock), until interrupted. */
export const storageWatchdog = (every: Duration.DurationInput = Duration.seconds(2)) =>
  Effect.repeat(storageWatchdogCheck, Schedule.spaced(every)).pipe(Effect.asVoid)
