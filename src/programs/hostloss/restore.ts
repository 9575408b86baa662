/**
 * Host-loss DR (issue 13, SPEC §10): restore mode on a new box. The hub's restore bundle names the
 * lost host's storage manifest and the guests to bring back; the person typed the recovery code,
 * which unwrapped the PBS key K (installed through PbsKey before this runs). `restoreHost`:
 *
 * 1. checks the bundle against this host before touching anything (the hub is hostile input):
 *    the installed key is K; the manifest names a PBS target; every directed vmid is unique, outside
 *    the scratch range and ABSENT on this node (restore mode restores into empty vmids only: it
 *    never overwrites or destroys anything that exists); the escrow the hub names is for K;
 * 2. attaches the manifest's targets (the storage pass: a PBS target without a creds key gets this
 *    host's K, added disabled and enabled only once PVE lists K's fingerprint on it) and waits,
 *    bounded, until a PBS storage holding K is reachable;
 * 3. per directed guest, in order, each on its own (one failure never stops the others): its PBS
 *    snapshots (tiers.ts), only those of its vmid encrypted with exactly K (an unencrypted or
 *    other-key snapshot is refused: a hostile hub or PBS cannot plant a plaintext archive); the
 *    directive's pinned point must be one of them, else the newest; then the recover saga, mode
 *    fresh, scenario host-loss, on the recovery-code basis (recoverGuest.ts: runHostLossRecover),
 *    which re-attaches surviving bulk volumes after its seal, as every recovery does.
 *
 * Identity (schema/identity.ts, host-loss row): MAC, hostname, restic identity and tunnel come
 * back as the archive holds them; machine-id and SSH host keys are reset at first boot by the
 * bootstrap directive once one is delivered. Controller identity: the state database is new, so no
 * controller is deployed on this host and the recovery publishes no bootstrap; the daemon's next
 * reconcile deploys a fresh controller bootstrap for each guest the desired state gives a
 * controller (a new local-API token, this host's certificate pins, the same host id and hub
 * channel, since the hub bound this box to the lost host's identity), and its first-boot directive
 * resets machine-id and host keys. Until then the restored controller cannot reach the local API
 * (its old token is unknown here); the guests themselves serve as before.
 *
 * Nothing here sees K or the recovery code: fingerprints only. The bundle's tunnel token is not
 * read here.
 */
import { Clock, Data, Duration, Effect, Either, Option, Schema } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { Journal } from "../../layers/Journal.js"
import { PbsKey } from "../../layers/PbsKey.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { KeyFingerprint, RestoreBundle } from "../../schema/escrow.js"
import { StorageId, VmId } from "../../schema/ids.js"
import { RecoverOperation } from "../../schema/operations.js"
import type { StorageTarget } from "../../schema/storage.js"
import { runHostLossRecover } from "../bringup/recoverGuest.js"
import { recoverPlan, type SurvivingPoint, survivingPoints, toRecoverPoint } from "../bringup/tiers.js"
import { existing } from "../control/steps.js"
import { inScratchRange, RestoreTestSettings } from "../protection/scratch.js"
import { storageReconcilePass } from "../protection/storage.js"

export type GuestRestoreOutcome = "restored" | "failed" | "refused" | "skipped"

export interface GuestRestoreReport {
  readonly vmid: number
  readonly name: string
  readonly outcome: GuestRestoreOutcome
  /** The PBS snapshot it was (or would have been) restored from. */
  readonly point?: string
  /** The journal op of its recovery, when one began. */
  readonly opId?: string
  readonly detail: string
}

export interface HostRestoreReport {
  readonly keyFingerprint: KeyFingerprint
  /** The manifest's targets after the attach: id, verdict, reachable, why. */
  readonly storage: ReadonlyArray<{ readonly id: string; readonly verdict: string; readonly available: boolean | null; readonly detail: string | null }>
  readonly guests: ReadonlyArray<GuestRestoreReport>
  /** What happens next that the person should know (controllers, storage). */
  readonly notes: ReadonlyArray<string>
}

/** The bundle cannot be used on this host at all; nothing was changed. */
export class HostRestoreRefused extends Data.TaggedError("HostRestoreRefused")<{
  readonly reason: "KeyNotInstalled" | "NoPbsTarget"
  readonly message: string
}> {}

export interface RestoreHostInput {
  readonly bundle: RestoreBundle
  readonly keyFingerprint: KeyFingerprint
}

/** How long restore mode waits for a PBS storage holding K to become reachable. */
export const PBS_WAIT = { attempts: 24, every: Duration.seconds(5) } as const

const CONTROLLER_NOTE =
  "controllers: this host's state database is new, so no controller bootstrap was published; the daemon's next reconcile deploys a fresh one " +
  "(new local-API token, the same host id and hub channel) for each guest the desired state gives a controller, and its first-boot directive " +
  "resets machine-id and SSH host keys"

const short = (fp: string) => fp.split(":").slice(0, 8).join(":")

/** Why each point of `all` that is not usable was refused, for the guest's detail. */
const describeUnusable = (p: SurvivingPoint, fp: KeyFingerprint): string =>
  p.encrypted === null
    ? `${p.point} is not encrypted (refused: a plaintext archive may have been planted)`
    : `${p.point} is encrypted with key ${p.encrypted === "1" ? "(unknown fingerprint)" : short(p.encrypted)}, not this host's ${short(fp)}`

const decodeRecover = Schema.decodeUnknownOption(RecoverOperation)

/**
 * The host-loss recovery this state database finished for `vmid` under key `fp`, if any: what a
 * re-run of restore mode (after a partial restore) finds in place. Only the journal's word
 * counts; a guest that merely exists at the vmid is not ours and stays refused.
 */
const restoredEarlier = (vmid: number, fp: KeyFingerprint) =>
  Effect.gen(function*() {
    const journal = yield* Journal
    const done = yield* journal.list({ status: "done" })
    return Option.fromNullable(done.find((op) => {
      if (op.kind !== "recover" || op.vmid !== vmid) return false
      const typed = decodeRecover(op.payload)
      return Option.isSome(typed) && typed.value.scenario === "host-loss" &&
        typed.value.authorization?.basis === "recovery-code" && typed.value.authorization.fingerprint === fp
    }))
  })

const newest = (ps: ReadonlyArray<SurvivingPoint>): SurvivingPoint | undefined =>
  ps.reduce<SurvivingPoint | undefined>((b, p) => (b === undefined || p.takenAtMs > b.takenAtMs || (p.takenAtMs === b.takenAtMs && p.point > b.point) ? p : b), undefined)

/** The PBS storages that hold exactly K and are reachable now. */
const readyPbs = (targets: ReadonlyArray<StorageTarget>, fp: KeyFingerprint) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const [configs, nodes] = yield* Effect.all([pve.storageList, pve.nodeStorage])
    return targets.filter((t) => {
      const c = configs.find((x) => x.storage === t.id)
      const n = nodes.find((x) => x.storage === t.id)
      return c !== undefined && c.type === "pbs" && c.disable !== 1 && (c["encryption-key"] ?? "").toLowerCase() === fp && n !== undefined && n.active === 1
    }).map((t) => t.id as StorageId)
  })

export const restoreHost = (input: RestoreHostInput) =>
  Effect.gen(function*() {
    const { bundle, keyFingerprint: fp } = input
    const pbsKey = yield* PbsKey
    const settings = yield* RestoreTestSettings
    const auditLog = yield* AuditLog

    // 1. the bundle against this host: nothing is changed before these hold
    const installed = yield* pbsKey.fingerprint
    if (Option.isNone(installed) || installed.value !== fp) {
      return yield* new HostRestoreRefused({
        reason: "KeyNotInstalled",
        message: `the PBS key ${short(fp)} is not the one installed on this host (${Option.match(installed, { onNone: () => "none", onSome: short })}): install the unwrapped key first`
      })
    }
    const pbsTargets = bundle.storage.filter((t) => t.type === "pbs" && t.state === "attached")
    if (pbsTargets.length === 0) {
      return yield* new HostRestoreRefused({ reason: "NoPbsTarget", message: "the restore bundle's storage manifest names no attached PBS target: there is nothing to restore from" })
    }

    // by position: a directive may name a vmid twice
    const guests = bundle.directive.guests.map((g, i) => ({ ...g, i }))
    const counts = new Map<number, number>()
    for (const g of guests) counts.set(g.vmid, (counts.get(g.vmid) ?? 0) + 1)
    const verdicts = new Map<number, GuestRestoreReport>()
    const settle = (g: (typeof guests)[number], outcome: GuestRestoreOutcome, detail: string, extra: { readonly point?: string; readonly opId?: string } = {}) => {
      verdicts.set(g.i, { vmid: g.vmid, name: g.name, outcome, detail, ...extra })
    }
    for (const g of guests) {
      if ((counts.get(g.vmid) ?? 0) > 1) settle(g, "refused", `vmid ${g.vmid} is named ${counts.get(g.vmid)} times in the directive: which one is meant cannot be known, none is restored`)
      else if (inScratchRange(settings, g.vmid)) settle(g, "refused", `vmid ${g.vmid} is in this host's scratch range ${settings.scratchMin}..${settings.scratchMax} (restore-tests): not restored`)
      else {
        const here = yield* Effect.either(existing(VmId.make(g.vmid)))
        if (Either.isLeft(here)) settle(g, "refused", `whether vmid ${g.vmid} is empty could not be read (${here.left._tag}): nothing is restored on a guess`)
        else if (Option.isSome(here.right)) {
          const earlier = yield* restoredEarlier(g.vmid, fp).pipe(Effect.orElseSucceed(() => Option.none()))
          if (Option.isSome(earlier)) settle(g, "restored", `restored earlier by this host (op ${earlier.value.id}); left as it is`, { opId: earlier.value.id })
          else settle(g, "refused", `a guest already exists at vmid ${g.vmid}: restore mode never overwrites; it is left untouched`)
        }
      }
    }
    const pending = () => guests.filter((g) => !verdicts.has(g.i))
    const escrowFp = bundle.escrow.fingerprint
    if (escrowFp !== fp) {
      // the key the person unwrapped is not the one the hub says this host's backups are under
      for (const g of pending()) settle(g, "refused", `the key does not match: this host's PBS key is ${short(fp)}, the escrow names ${short(escrowFp)}; nothing restored`)
    }

    // 2. the storage, once there is anything to restore
    let storage: HostRestoreReport["storage"] = []
    let ready: ReadonlyArray<StorageId> = []
    if (escrowFp === fp && (guests.length === 0 || pending().length > 0)) {
      for (let attempt = 1; attempt <= PBS_WAIT.attempts; attempt++) {
        const pass = yield* Effect.either(storageReconcilePass({ storage: bundle.storage, policies: undefined }))
        if (Either.isRight(pass)) {
          storage = pass.right.targets.map((t) => ({ id: t.id, verdict: t.verdict, available: t.available, detail: t.detail ?? t.availabilityDetail }))
        }
        ready = yield* readyPbs(pbsTargets, fp).pipe(Effect.orElseSucceed((): ReadonlyArray<StorageId> => []))
        // an operator's problem (a refused entry, another key on it) does not go away by waiting
        const stuck = pbsTargets.every((t) => storage.find((s) => s.id === t.id)?.verdict === "needs_operator")
        if (ready.length > 0 || stuck || attempt === PBS_WAIT.attempts) break
        yield* Effect.sleep(PBS_WAIT.every)
      }
      if (ready.length === 0) {
        const why = pbsTargets.map((t) => {
          const s = storage.find((x) => x.id === t.id)
          return `${t.id}: ${s === undefined ? "not attached" : s.detail ?? (s.available === true ? "reachable, but it does not hold this host's key" : "not reachable")}`
        }).join("; ")
        for (const g of pending()) settle(g, "skipped", `no PBS storage holding this host's key is reachable (${why}); nothing restored`)
      }
    }

    // 3. each guest on its own
    const primary = bundle.storage.find((t) => t.role === "primary" && t.state === "attached")?.id
    const queue = yield* Effect.serviceOption(GuestQueue)
    for (const g of pending()) {
      const vmid = VmId.make(g.vmid)
      const one = Effect.gen(function*() {
        const survivors = yield* survivingPoints(vmid)
        const pbs = survivors.points.filter((p) => p.tier === "pbs" && p.vmid === g.vmid && p.storage !== null && ready.includes(p.storage))
        const usable = pbs.filter((p) => p.encrypted !== null && p.encrypted.toLowerCase() === fp)
        let chosen: SurvivingPoint | undefined
        if (g.point !== undefined) {
          const pinned = g.point
          chosen = usable.find((p) => p.point === pinned)
          if (chosen === undefined) {
            const seen = pbs.find((p) => p.point === pinned)
            return settle(g, "refused", seen === undefined
              ? `the pinned point ${pinned} is not a PBS snapshot of guest ${g.vmid} on ${ready.join(", ")}: nothing restored`
              : `the pinned point ${describeUnusable(seen, fp)}${seen.encrypted === null ? "" : ": the key does not match"}; nothing restored`, { point: pinned })
          }
        } else {
          chosen = newest(usable)
          if (chosen === undefined) {
            return pbs.length === 0
              ? settle(g, "failed", `no PBS snapshot of guest ${g.vmid} on ${ready.join(", ")}: nothing to restore from`)
              : settle(g, "refused", `none of its ${pbs.length} PBS snapshot(s) is encrypted with this host's key ${short(fp)}: the key does not match (${pbs.map((p) => describeUnusable(p, fp)).join("; ")}); nothing restored`)
          }
        }
        const point = chosen
        const plan = yield* Effect.either(recoverPlan(vmid, {
          scenario: "host-loss",
          source: "pbs",
          point: toRecoverPoint(point),
          desired: null,
          placement: undefined,
          manifest: bundle.storage,
          provisioningStorage: primary
        }))
        if (Either.isLeft(plan)) return settle(g, "failed", `${plan.left.message}; nothing restored`, { point: point.point })
        if (plan.right.mode !== "fresh") return settle(g, "refused", `a guest appeared at vmid ${g.vmid}: restore mode never overwrites; left untouched`, { point: point.point })
        const run = runHostLossRecover(plan.right, fp)
        const r = yield* (Option.isSome(queue) ? queue.value.serialize(vmid)(run) : run)
        const op = r.opId === null ? {} : { opId: r.opId }
        switch (r.outcome) {
          case "done":
            return settle(g, "restored", r.detail, { point: point.point, ...op })
          case "rejected":
          case "pending_signature":
            return settle(g, "refused", r.detail, { point: point.point, ...op })
          case "rolled_back":
          case "needs_operator":
          case "failed":
            return settle(g, "failed", r.detail, { point: point.point, ...op })
        }
      })
      const ran = yield* Effect.either(one)
      if (Either.isLeft(ran)) settle(g, "failed", `${ran.left._tag}: ${ran.left.message}`)
    }

    const report: HostRestoreReport = {
      keyFingerprint: fp,
      storage,
      guests: guests.map((g) => verdicts.get(g.i) ?? { vmid: g.vmid, name: g.name, outcome: "skipped", detail: "not reached" }),
      notes: [CONTROLLER_NOTE]
    }
    const tally = (o: GuestRestoreOutcome) => report.guests.filter((g) => g.outcome === o).map((g) => g.vmid)
    yield* auditLog.audit({
      actor: "restore-mode",
      action: "host-restore",
      target: null,
      decision: "done",
      detail: { fingerprint: fp, restored: tally("restored"), failed: tally("failed"), refused: tally("refused"), skipped: tally("skipped"), at: yield* Clock.currentTimeMillis }
    })
    yield* Effect.logInfo(`restore mode: ${tally("restored").length} of ${guests.length} guest(s) restored`)
    return report
  }).pipe(Effect.withSpan("restoreHost"))
