/**
 * `felhom-agent recover` (issue 12): guest-loss DR, the journal replay on demand, and the
 * operator's confirmation that a partial loss's source is gone.
 *
 * - `recover --vmid N [--scenario total|partial] [--source auto|snapshot|vzdump|pbs] [--plan]
 *   [--signed BLOB] [--desired FILE | --from-desired]`: the plan (bringup/tiers.ts: the fastest
 *   surviving tier, its point and age, the restore target, what is kept and reset, bulk volumes
 *   this host cannot bring back) and, without --plan, the recovery saga (bringup/recoverGuest.ts)
 *   in the guest's queue turn. A recovery that overwrites or replaces anything runs only with an
 *   operator's signed op `recover` bound to the plan's exact params; without one nothing runs,
 *   the command prints the plan and the `op new` / `op sign` commands that make the signature,
 *   and exits 4.
 * - `recover --journal`: the recovery the daemon runs at start (control/recover.ts), with a report.
 * - `recover --vmid N --confirm`: a partial-loss recovery's NICs come up (recoverGuest.confirmLink).
 *
 * Output as `provision`: the result on stdout (human, or one JSON object), progress on stderr
 * (live on a terminal, JSON lines otherwise). Exit 0 done; 1 failed, rolled back, held, rejected
 * or refused; 2 usage or configuration; 4 needs an operator signature. Every run but --plan takes
 * the state lock.
 */
import { Console, Effect, Layer, Option } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { OpLog } from "../../layers/OpLog.js"
import { Progress } from "../../layers/Progress.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { DesiredGuest, DesiredState } from "../../schema/desired.js"
import { VmId } from "../../schema/ids.js"
import { confirmLink, type RecoverResult, runRecover } from "../bringup/recoverGuest.js"
import { formatRecoverPlan, type RecoverPlan, recoverPlan, type RecoverSource } from "../bringup/tiers.js"
import type { SignedOp } from "../control/gate.js"
import { recover as replayJournal, type RecoveredOp } from "../control/recover.js"
import { desiredFromHub, readDesiredFile } from "./desiredInput.js"
import { CliFailure, NEEDS_SIGNATURE, toCliFailure, usage } from "./failure.js"
import { cliServices, HubFromConfig } from "./graph.js"
import { readBytes } from "./input.js"
import { configSecrets, INTERRUPTED, makeStructuredProgress, makeTtyProgress, scrubberFor, stderrOutput, wantsTty } from "./progress.js"
import { holdStateLock } from "./stateLock.js"

export interface RecoverCommand {
  readonly vmid: Option.Option<number>
  readonly scenario: "total" | "partial"
  readonly source: RecoverSource
  readonly plan: boolean
  readonly signed: Option.Option<string>
  readonly desired: Option.Option<string>
  readonly fromDesired: boolean
  readonly confirm: boolean
  readonly journal: boolean
  readonly json: boolean
  readonly config: Option.Option<string>
}

// ---------------------------------------------------------------------------------------------
// What the operator signs

/** A word for a POSIX shell, in single quotes. */
export const shellQuote = (s: string): string => `'${s.replace(/'/g, "'\\''")}'`

/**
 * The commands that make the signature this plan needs, then run it: `op new` with exactly the
 * plan's gated params (what the gate binds the signature to), `op sign`, and this command again.
 */
export const signingCommands = (plan: RecoverPlan, hostId: string | undefined, scenario: "total" | "partial"): ReadonlyArray<string> => {
  const file = `recover-${plan.vmid}.json`
  return [
    `felhom-agent op new --op recover --host ${shellQuote(hostId ?? "<host_id>")} --guest ${plan.vmid} --params ${shellQuote(JSON.stringify(plan.gatedParams))} --key-id <your-key-id> --out ${file}`,
    `felhom-agent op sign --key <your ssh key> --in ${file}`,
    `felhom-agent recover --vmid ${plan.vmid} --scenario ${scenario} --source ${plan.point.tier} --signed ${file}`
  ]
}

// ---------------------------------------------------------------------------------------------
// Inputs

const signedOf = (path: Option.Option<string>) =>
  Effect.gen(function*() {
    if (Option.isNone(path)) return Option.none<SignedOp>()
    const { file } = yield* AgentConfigLayer.AgentConfig
    if (file.host_id === undefined || file.authz === undefined) {
      return yield* usage("--signed needs host_id and authz.signers in the config")
    }
    const blob = yield* readBytes(path.value)
    const signature = yield* readBytes(`${path.value}.sig`)
    return Option.some<SignedOp>({ blob, signature })
  })

/** The desired state, when asked for: it sizes and configures the guest; without, the backup's own config stands. */
const desiredOf = (o: RecoverCommand) =>
  Effect.gen(function*() {
    if (Option.isSome(o.desired) && o.fromDesired) return yield* usage("give --desired FILE or --from-desired, not both")
    if (Option.isSome(o.desired)) return Option.some(yield* readDesiredFile(o.desired.value))
    if (o.fromDesired) return Option.some(yield* desiredFromHub.pipe(Effect.provide(HubFromConfig)))
    return Option.none<DesiredState>()
  })

const planFor = (vmid: VmId, o: RecoverCommand, desired: Option.Option<DesiredState>) =>
  Effect.gen(function*() {
    const d = Option.getOrNull(desired)
    const spec: DesiredGuest | null = d?.guests.find((g) => g.vmid === vmid) ?? null
    const plan = yield* recoverPlan(vmid, {
      scenario: o.scenario,
      source: o.source,
      desired: spec,
      placement: d?.policies?.guests.find((g) => g.vmid === vmid),
      manifest: d?.storage ?? [],
      provisioningStorage: d?.provisioning?.storage
    }).pipe(
      // no point to restore, a PBS key missing, no storage to restore into: nothing can run (exit 1)
      Effect.catchTags({
        NoRestorePoint: (e) => Effect.fail(new CliFailure({ code: 1, message: e.message })),
        PbsKeyMissing: (e) => Effect.fail(new CliFailure({ code: 1, message: e.message })),
        RecoverPlanRefused: (e) => Effect.fail(new CliFailure({ code: 1, message: e.message }))
      })
    )
    return { plan, spec }
  })

/** An op on this guest still in flight (a crash): the journal replay settles it first. */
const refuseInFlight = (vmid: VmId) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const mine = (yield* ops.inFlight).find((op) => op.vmid === vmid)
    if (mine !== undefined) {
      return yield* new CliFailure({
        code: 1,
        message: `${mine.kind} op ${mine.id} on guest ${vmid} is still in flight (a crash): run \`felhom-agent recover --journal\` first`
      })
    }
  })

const withProgress = <A, E, R>(json: boolean, body: Effect.Effect<A, E, R>) =>
  Effect.scoped(Effect.gen(function*() {
    const { file } = yield* AgentConfigLayer.AgentConfig
    const pve = yield* Proxmox
    const scrub = scrubberFor(configSecrets(file))
    const progress = wantsTty(json)
      ? yield* makeTtyProgress({ out: stderrOutput, tail: (u, n) => pve.taskLogTail(u, n), scrub })
      : yield* makeStructuredProgress({ out: stderrOutput, scrub })
    return yield* body.pipe(Effect.provideService(Progress, progress))
  }))

// ---------------------------------------------------------------------------------------------
// The three forms

const exitOf = (outcome: RecoverResult["outcome"]): number =>
  outcome === "done" ? 0 : outcome === "pending_signature" ? NEEDS_SIGNATURE : 1

const guestRecovery = (o: RecoverCommand, vmid: VmId) =>
  Effect.gen(function*() {
    const { file } = yield* AgentConfigLayer.AgentConfig
    const desired = yield* desiredOf(o)
    const signed = yield* signedOf(o.signed)
    if (o.plan) {
      const { plan } = yield* planFor(vmid, o, desired)
      const commands = plan.needsSignature ? signingCommands(plan, file.host_id, o.scenario) : []
      if (o.json) return yield* Console.log(JSON.stringify({ plan, signature: { needed: plan.needsSignature, commands } }))
      return yield* Console.log([
        formatRecoverPlan(plan),
        ...(commands.length === 0 ? [] : ["", "to sign it:", ...commands.map((c) => `  ${c}`)]),
        "nothing changed (--plan)"
      ].join("\n"))
    }
    const outcome = yield* Effect.scoped(Effect.gen(function*() {
      yield* holdStateLock(`recover ${vmid}`)
      const queue = yield* GuestQueue
      return yield* queue.serialize(vmid)(Effect.gen(function*() {
        yield* refuseInFlight(vmid)
        // planned again in the turn, from what PVE shows now; a signature binds the exact point
        const { plan, spec } = yield* planFor(vmid, o, desired)
        if (!o.json) yield* Console.log(formatRecoverPlan(plan))
        const result = yield* withProgress(o.json, runRecover(plan, signed, "cli", { spec })).pipe(Effect.onInterrupt(() => Console.error(INTERRUPTED)))
        return { plan, result }
      }))
    }))
    const { plan, result } = outcome
    const commands = result.outcome === "pending_signature" ? signingCommands(plan, file.host_id, o.scenario) : []
    if (o.json) {
      yield* Console.log(JSON.stringify({ plan, result, signature: { needed: plan.needsSignature, commands } }))
    } else {
      yield* Console.log([
        `guest ${vmid}: ${result.outcome.toUpperCase()}${result.opId === null ? "" : ` (op ${result.opId})`}: ${result.detail}`,
        ...result.bulk.filter((b) => b.status !== "reattachable").map((b) => `  bulk ${b.volume} ${b.path}: ${b.status}`),
        ...(commands.length === 0 ? [] : ["", "it needs an operator signature; to make one:", ...commands.map((c) => `  ${c}`)])
      ].join("\n"))
    }
    const code = exitOf(result.outcome)
    if (code !== 0) {
      return yield* new CliFailure({
        code,
        message: result.outcome === "pending_signature"
          ? `recover of ${vmid} needs an operator signature (op recover, params ${JSON.stringify(plan.gatedParams)})`
          : `recover of ${vmid}: ${result.outcome}`
      })
    }
  })

const confirm = (o: RecoverCommand, vmid: VmId) =>
  Effect.scoped(Effect.gen(function*() {
    yield* holdStateLock(`recover --confirm ${vmid}`)
    const queue = yield* GuestQueue
    const nics = yield* queue.serialize(vmid)(withProgress(o.json, confirmLink(vmid))).pipe(
      Effect.catchTag("BadJob", (e) => Effect.fail(new CliFailure({ code: 1, message: e.message })))
    )
    yield* Console.log(o.json
      ? JSON.stringify({ vmid, link_up: nics })
      : nics.length === 0
      ? `guest ${vmid}: no link-down NIC; nothing changed`
      : `guest ${vmid}: link up on ${nics.join(", ")}`)
  }))

export const renderJournalReport = (ops: ReadonlyArray<RecoveredOp>): string =>
  ops.length === 0
    ? "journal: no operation was in flight; nothing to recover"
    : [
      `journal: ${ops.length} operation(s) were in flight`,
      ...ops.map((r) => `  ${r.outcome.padEnd(14)} ${r.kind.padEnd(16)} ${String(r.vmid ?? "-").padEnd(6)} ${r.id}  ${r.detail}`)
    ].join("\n")

const journal = (o: RecoverCommand) =>
  Effect.scoped(Effect.gen(function*() {
    yield* holdStateLock("recover --journal")
    const queue = yield* GuestQueue
    // as the daemon does: only while nothing of ours runs (nothing does: we hold the lock)
    const ran = yield* queue.whenIdle(withProgress(o.json, replayJournal))
    const ops = Option.getOrElse(ran, () => [] as ReadonlyArray<RecoveredOp>)
    yield* Console.log(o.json ? JSON.stringify({ recovered: ops }) : renderJournalReport(ops))
    const open = ops.filter((r) => r.outcome === "in_flight" || r.outcome === "needs_operator")
    if (open.length > 0) {
      return yield* new CliFailure({ code: 1, message: `${open.length} operation(s) still need attention: ${open.map((r) => `${r.id} ${r.outcome}`).join(", ")}` })
    }
  }))

export const recover = (o: RecoverCommand) =>
  Effect.gen(function*() {
    if (o.journal) {
      if (Option.isSome(o.vmid) || o.confirm || o.plan || Option.isSome(o.signed)) {
        return yield* usage("--journal takes no --vmid, --confirm, --plan or --signed")
      }
      return yield* journal(o)
    }
    if (Option.isNone(o.vmid)) return yield* usage("give --vmid N (or --journal)")
    const vmid = VmId.make(o.vmid.value)
    if (o.confirm) {
      if (o.plan || Option.isSome(o.signed)) return yield* usage("--confirm takes no --plan or --signed")
      return yield* confirm(o, vmid)
    }
    return yield* guestRecovery(o, vmid)
  }).pipe(
    Effect.provide(cliServices.pipe(Layer.provideMerge(AgentConfigLayer.layer({ path: o.config, mode: "selftest" })))),
    Effect.mapError((e) => toCliFailure(e))
  )
