/**
 * GuestHealth (issue 10): whether a booted guest's services answer, the last question of a
 * self-restore-test. PVE cannot tell (a container is `running` as soon as its init runs), and the
 * scratch guest's NIC is link-down, so the answer comes from inside the guest:
 *
 * - production (`GuestHealthLive`): `pct exec <vmid> -- systemctl is-system-running` through
 *   Privileged. `running` is up and healthy, `degraded` (a unit failed) up and failing,
 *   `initializing`/`starting` still booting; anything else, or no answer, is not up.
 * - the simulator (`guestHealthFromSim`): the PVE simulator's guest model (src/sim/pve/guestModel.ts),
 *   which derives the answer from the archive the guest was restored from.
 *
 * One probe per call; the restore-test polls it on Effect's Clock until up or its deadline.
 */
import { Context, Data, Effect, Layer, Option } from "effect"
import type { VmId } from "../schema/ids.js"
import type { SimGuestHealth } from "../sim/pve/guestModel.js"
import { Privileged } from "./Privileged.js"

export type HealthReading =
  /** Nothing runs (the guest is stopped or its init has not started). */
  | { readonly phase: "stopped"; readonly detail: string }
  /** Running, services not settled yet. */
  | { readonly phase: "booting"; readonly detail: string }
  /** Booted: the services answer (`ok`) or do not. */
  | { readonly phase: "up"; readonly ok: boolean; readonly detail: string }

/** The probe itself could not be made (no such guest, the runner failed); never a verdict. */
export class GuestHealthError extends Data.TaggedError("GuestHealthError")<{ readonly message: string }> {}

export interface GuestHealthShape {
  readonly probe: (vmid: VmId) => Effect.Effect<HealthReading, GuestHealthError>
}

export class GuestHealth extends Context.Tag("felhom/GuestHealth")<GuestHealth, GuestHealthShape>() {}

/** Production: systemd's own summary from inside the guest, through the fenced root runner. */
export const GuestHealthLive: Layer.Layer<GuestHealth, never, Privileged> = Layer.effect(
  GuestHealth,
  Effect.map(Privileged, (priv): GuestHealthShape => ({
    probe: (vmid) =>
      priv.guestSystemState(vmid).pipe(
        Effect.mapError((e) => new GuestHealthError({ message: `pct exec ${vmid}: ${e.reason}: ${e.message}` })),
        Effect.map((state): HealthReading => {
          switch (state) {
            case "running":
              return { phase: "up", ok: true, detail: "systemd: running" }
            case "degraded":
              return { phase: "up", ok: false, detail: "systemd: degraded (a unit failed)" }
            case "initializing":
            case "starting":
              return { phase: "booting", detail: `systemd: ${state}` }
            default:
              // maintenance, stopping, offline, unknown: not a system that came up
              return { phase: "stopped", detail: `systemd: ${state}` }
          }
        })
      )
  }))
)

/** The simulator's guest model, in process (tests, the demo). */
export const guestHealthFromSim = (sim: {
  readonly guestHealth: (vmid: number) => Effect.Effect<Option.Option<SimGuestHealth>>
}): Layer.Layer<GuestHealth> =>
  Layer.succeed(GuestHealth, {
    probe: (vmid) =>
      Effect.flatMap(sim.guestHealth(vmid), (h) => {
        if (Option.isNone(h)) return Effect.fail(new GuestHealthError({ message: `no guest ${vmid}` }))
        const g = h.value
        if (g.phase === "stopped") return Effect.succeed<HealthReading>({ phase: "stopped", detail: `guest ${vmid} is ${g.status}` })
        if (g.phase === "booting") return Effect.succeed<HealthReading>({ phase: "booting", detail: `booting (up in ${g.up_in_ms ?? "?"} ms)` })
        return Effect.succeed<HealthReading>({
          phase: "up",
          ok: g.services === "ok",
          detail: g.services === "ok" ? "services answer" : "services failing"
        })
      })
  })
