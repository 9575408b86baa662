/**
 * `plan`: what reconcile would do now against the node, with each action's gate verdict. Offered
 * signatures are checked against a throwaway in-memory nonce store: a preview consumes nothing.
 */
import { Console, Effect, Either, Layer, Option } from "effect"
import { type AuthzShape, make as makeAuthz, parseSigners } from "../../layers/Authz.js"
import * as AgentConfigLayer from "../../layers/Config.js"
import { DatabaseLive, layerAt } from "../../layers/Database.js"
import { JournalLive } from "../../layers/Journal.js"
import { ProtectionStoreLive } from "../../layers/ProtectionStore.js"
import { ProxmoxWithoutClient } from "../../layers/Proxmox.js"
import { PveHttpClientLive } from "../../layers/PveTransport.js"
import { decodeDesiredState } from "../../schema/desired.js"
import { VmId } from "../../schema/ids.js"
import { signatureKey } from "../control/apply.js"
import { planReport, renderPlan } from "../control/preview.js"
import { CliFailure, toCliFailure } from "./failure.js"
import { readBytes } from "./input.js"

export const plan = (o: {
  readonly desired: string
  readonly signed: ReadonlyArray<string>
  readonly config: Option.Option<string>
  readonly json: boolean
}) =>
  Effect.scoped(Effect.gen(function*() {
    const raw = new TextDecoder().decode(yield* readBytes(o.desired))
    const desired = yield* Effect.try({
      try: () => JSON.parse(raw) as unknown,
      catch: () => new CliFailure({ code: 2, message: `${o.desired} is not JSON` })
    }).pipe(
      Effect.flatMap((u) =>
        Either.match(decodeDesiredState(u), {
          onLeft: (m) => Effect.fail(new CliFailure({ code: 2, message: `${o.desired}: ${m}` })),
          onRight: Effect.succeed
        })
      )
    )
    const { file } = yield* AgentConfigLayer.AgentConfig
    const offered = new Map<string, { blob: Uint8Array; signature: Uint8Array }>()
    for (const path of o.signed) {
      const blob = yield* readBytes(path)
      const head = yield* Effect.try({
        try: () => JSON.parse(new TextDecoder().decode(blob)) as { op?: unknown; guest_id?: unknown },
        catch: () => new CliFailure({ code: 2, message: `${path} is not an op blob` })
      })
      const vmid = typeof head.guest_id === "number" ? VmId.make(head.guest_id) : null
      offered.set(signatureKey(String(head.op), vmid), { blob, signature: yield* readBytes(`${path}.sig`) })
    }
    let authz = Option.none<AuthzShape>()
    if (offered.size > 0) {
      if (file.host_id === undefined || file.authz === undefined) {
        return yield* new CliFailure({ code: 2, message: "--signed needs host_id and authz.signers in the config" })
      }
      const signers = yield* parseSigners(file.authz.signers)
      const memory = yield* Layer.build(layerAt(":memory:"))
      authz = Option.some(
        yield* makeAuthz({ hostId: file.host_id, signers, clockSkewSeconds: file.authz.clock_skew_seconds }).pipe(
          Effect.provide(memory)
        )
      )
    }
    const report = yield* planReport(desired, offered, authz, file.protection.time_zone)
    yield* Console.log(o.json ? JSON.stringify(report, null, 2) : renderPlan(report))
  })).pipe(
    Effect.provide(
      Layer.mergeAll(
        ProxmoxWithoutClient.pipe(Layer.provide(PveHttpClientLive), Layer.provide(AgentConfigLayer.ProxmoxSettingsLive)),
        Layer.merge(JournalLive, ProtectionStoreLive).pipe(Layer.provide(DatabaseLive))
      ).pipe(Layer.provideMerge(AgentConfigLayer.layer({ path: o.config, mode: "selftest" })))
    ),
    Effect.mapError((e) => toCliFailure(e))
  )
