/**
 * `felhom-agent provision --vmid N (--from-desired | --desired FILE | --spec FILE)`: the bring-up
 * saga for one new guest, run by an operator (src/programs/bringup/provision.ts). `--plan` (or
 * `--dry-run`) prints the steps, the gate's verdict and any refusal, and changes nothing.
 *
 * Output: the result on stdout (human, or one JSON object with --json); progress on stderr (live
 * on a terminal, JSON lines otherwise). Exit 0 done; 1 refused, failed, rolled back or held for
 * an operator (the reason on stdout and in the journal); 2 usage or configuration; 3 a bug.
 * A run takes the state lock: it never races the daemon (or another command) on the state.
 */
import { Console, Effect, Layer, Option } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import { Progress } from "../../layers/Progress.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { DesiredGuest, DesiredState } from "../../schema/desired.js"
import { VmId } from "../../schema/ids.js"
import type { CreateSource } from "../../schema/operations.js"
import type { GuestPlacement } from "../../schema/storage.js"
import { type ProvisionPreview, provisionGuest, provisionPreview, type ProvisionResult } from "../bringup/provision.js"
import { desiredFromHub, guestOf, readDesiredFile, readGuestFile, sourceOf } from "./desiredInput.js"
import { CliFailure, toCliFailure, usage } from "./failure.js"
import { cliServices, HubFromConfig } from "./graph.js"
import { configSecrets, INTERRUPTED, makeStructuredProgress, makeTtyProgress, scrubberFor, stderrOutput, wantsTty } from "./progress.js"
import { holdStateLock } from "./stateLock.js"

export interface ProvisionCommand {
  readonly vmid: number
  readonly fromDesired: boolean
  readonly desired: Option.Option<string>
  readonly spec: Option.Option<string>
  readonly archive: Option.Option<string>
  readonly storage: Option.Option<string>
  readonly plan: boolean
  readonly dryRun: boolean
  readonly json: boolean
  readonly config: Option.Option<string>
}

/** The guest and its golden archive, from exactly one of --from-desired, --desired, --spec. */
const target = (o: ProvisionCommand) =>
  Effect.gen(function*() {
    const given = [o.fromDesired, Option.isSome(o.desired), Option.isSome(o.spec)].filter(Boolean).length
    if (given !== 1) return yield* usage("give exactly one of --from-desired, --desired FILE, --spec FILE")
    const vmid = VmId.make(o.vmid)
    const flags = { archive: Option.getOrUndefined(o.archive), storage: Option.getOrUndefined(o.storage) }
    if (Option.isSome(o.spec)) {
      const spec = yield* readGuestFile(o.spec.value)
      if (spec.vmid !== vmid) return yield* usage(`${o.spec.value} is guest ${spec.vmid}, not --vmid ${vmid}`)
      if (flags.archive === undefined) return yield* usage("--spec needs the golden archive: --archive VOLID --storage ID")
      return { spec, source: yield* sourceOf(flags, null), placement: undefined }
    }
    const desired: DesiredState = Option.isSome(o.desired)
      ? yield* readDesiredFile(o.desired.value)
      : yield* desiredFromHub.pipe(Effect.provide(HubFromConfig))
    const from = Option.isSome(o.desired) ? o.desired.value : "the hub's desired state"
    return {
      spec: yield* guestOf(desired, vmid, from),
      source: yield* sourceOf(flags, desired),
      placement: desired.policies?.guests.find((g) => g.vmid === vmid)
    }
  })

export const renderPreview = (p: ProvisionPreview): string => {
  const width = Math.max(...p.steps.map((s) => s.step.length))
  return [
    `provision guest ${p.vmid} from ${p.source.archive} onto ${p.source.storage}`,
    `gate: ${p.gate.verdict.toUpperCase()} (${p.gate.reason})`,
    "steps:",
    ...p.steps.map((s, i) => `  ${String(i + 1).padStart(2)}. ${s.step.padEnd(width)}  ${s.what}`),
    ...(p.controller === null ? [] : [`controller: ${p.controller.image}: ${p.controller.detail}`]),
    p.refusal === null ? "ready: nothing changed (--plan)" : `REFUSED: ${p.refusal}`
  ].join("\n")
}

export const renderResult = (r: ProvisionResult): string =>
  [
    `guest ${r.vmid}: ${r.outcome.toUpperCase()}${r.opId === null ? "" : ` (op ${r.opId})`}: ${r.detail}`,
    `controller: ${r.controller.state}${r.controller.detail === "" ? "" : ` (${r.controller.detail})`}`
  ].join("\n")

const run = (o: ProvisionCommand, spec: DesiredGuest, source: CreateSource, placement: GuestPlacement | undefined) =>
  Effect.scoped(Effect.gen(function*() {
    yield* holdStateLock(`provision ${spec.vmid}`)
    const { file } = yield* AgentConfigLayer.AgentConfig
    const pve = yield* Proxmox
    const scrub = scrubberFor(configSecrets(file))
    const progress = wantsTty(o.json)
      ? yield* makeTtyProgress({ out: stderrOutput, tail: (u, n) => pve.taskLogTail(u, n), scrub })
      : yield* makeStructuredProgress({ out: stderrOutput, scrub })
    return yield* provisionGuest(spec, source, { actor: "cli", placement }).pipe(
      Effect.provideService(Progress, progress),
      // a crash or Ctrl-C leaves the op in flight: recovery settles it, never a guess here
      Effect.onInterrupt(() => Console.error(INTERRUPTED))
    )
  }))

export const provision = (o: ProvisionCommand) =>
  Effect.gen(function*() {
    const { placement, source, spec } = yield* target(o)
    if (o.plan || o.dryRun) {
      const preview = yield* provisionPreview(spec, source, placement)
      return yield* Console.log(o.json ? JSON.stringify(preview) : renderPreview(preview))
    }
    const result = yield* run(o, spec, source, placement)
    yield* Console.log(o.json ? JSON.stringify(result) : renderResult(result))
    if (result.outcome !== "done") {
      return yield* new CliFailure({ code: 1, message: `provision of ${result.vmid}: ${result.outcome}` })
    }
  }).pipe(
    Effect.provide(cliServices.pipe(Layer.provideMerge(AgentConfigLayer.layer({ path: o.config, mode: "selftest" })))),
    Effect.mapError((e) => toCliFailure(e))
  )
