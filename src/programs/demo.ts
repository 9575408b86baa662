/**
 * Demo v0: the PVE simulator on loopback HTTPS, and the production Proxmox client pointed at it
 * with the simulator's certificate pinned — selftest read, then the snapshot → rollback → delete
 * cycle on a running guest. Later issues grow this into the full daemon scenario.
 */
import { Console, Data, Effect, Layer, Schema } from "effect"
import { layerFrom } from "../layers/Config.js"
import { ProxmoxWithoutClient } from "../layers/Proxmox.js"
import { layerFor } from "../layers/PveTransport.js"
import { AgentConfigFile } from "../schema/config.js"
import { serveSimPve } from "../sim/pve/index.js"
import { renderReport, renderTask, selftestRead, selftestTask } from "./selftest.js"

export class DemoFailed extends Data.TaggedError("DemoFailed")<{ readonly message: string }> {}

export const runDemo = Effect.scoped(
  Effect.gen(function*() {
    const server = yield* serveSimPve({ host: "127.0.0.1", port: 0 })
    yield* Console.log(`[demo] PVE simulator listening on ${server.url} (node '${server.sim.node}')`)
    yield* Console.log(`[demo] agent pins the simulator's TLS certificate: ${server.fingerprint256}`)

    const file = yield* Schema.decodeUnknown(AgentConfigFile)({
      proxmox: {
        url: server.url,
        token_id: server.tokenId,
        token_secret: server.tokenSecret,
        tls: { fingerprint_sha256: server.fingerprint256 },
        task_timeout_seconds: 120
      }
    }).pipe(Effect.mapError((e) => new DemoFailed({ message: `demo config: ${e.message}` })))
    const proxmox = ProxmoxWithoutClient.pipe(
      Layer.provide(layerFor(file.proxmox!.tls, file.proxmox!.url)),
      Layer.provide(layerFrom(file))
    )

    return yield* Effect.gen(function*() {
      yield* Console.log("\n[demo] selftest read")
      const report = yield* selftestRead
      yield* Console.log(renderReport(report))
      if (!report.healthy) return yield* new DemoFailed({ message: `selftest unhealthy: ${report.problems.join("; ")}` })

      const target = report.guests.find((g) => g.status === "running" && g.lock === null) ??
        report.guests.find((g) => g.lock === null)
      if (target === undefined) return yield* new DemoFailed({ message: "no unlocked guest to exercise" })
      yield* Console.log(`\n[demo] selftest task on guest ${target.vmid} (${target.name ?? "-"}): snapshot → rollback → delete`)
      const task = yield* selftestTask(target.vmid)
      yield* Console.log(renderTask(task))
      if (!task.ok) return yield* new DemoFailed({ message: "selftest task failed" })

      const after = yield* server.sim.guest(target.vmid)
      const leftovers = after._tag === "Some" ? after.value.snapshots.filter((s) => s.name === task.snapshot).length : -1
      yield* Console.log(
        `\n[demo] done: host healthy, ${report.guests.length} guests, ${task.steps.length} tasks completed with exitstatus OK, ` +
          `snapshot left behind: ${leftovers === 0 ? "none" : leftovers}`
      )
    }).pipe(Effect.provide(proxmox))
  })
)
