/**
 * The golden base archive, built as root (SPEC §10, issue 12): the `golden-build` saga.
 *
 *   create    `pct create` of a container with keyctl=1,nesting=1 from the configured Debian
 *             template (Privileged: keyctl is root@pam only), in a vmid from the top of the
 *             agent's reserved scratch range, its hostname `felhom-golden-<op id>`
 *   install   started through the API, the root helper installs Docker and the golden-baked units
 *             (PrivilegedGolden.installGolden), stopped through the API
 *   dump      root's vzdump (stop mode, zstd, remove=0: no archive is ever pruned)
 *   checksum  PVE lists the archive; root reads its sha256
 *   destroy   the build container removed (Privileged.destroyGoldenContainer)
 *   register  the archive registered with its version and sha256 (GoldenStore), current
 *
 * The build container is the op's own and never held customer data: a failure or a crash before
 * `destroy` removes it (`compensate_destroy`, or recovery). The only destroy here goes through
 * `destroyBuildContainer`, which proves first, from the journal and PVE, that the guest at that
 * vmid is exactly this op's build container (`buildContainerVerdict`): the op is an in-flight
 * golden-build of that vmid, the vmid is in the reserved range, the journal's provenance for it
 * is this op's with its hostname marker, no customer or lost guest is recorded there, and PVE's
 * config carries the marker hostname and the keyctl+nesting features. Anything else is refused
 * (audited) and held for an operator. No clearance is involved: the container is root's (created
 * by `pct create`, removed by `pct destroy`), not something the gate's API calls can reach.
 *
 * An archive dumped but not registered (a failure or crash after the dump) is never deleted: it
 * is reported (op detail, recovery outcome) and left where it is.
 */
import { Clock, Context, Data, Effect, Either, Layer, Option, Schema } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import { AgentConfig } from "../../layers/Config.js"
import { GoldenStore } from "../../layers/GoldenStore.js"
import { GuestQueue } from "../../layers/GuestQueue.js"
import { GuestRecords } from "../../layers/GuestRecords.js"
import type { JournalOp, StoreServices } from "../../layers/Journal.js"
import { OpLog } from "../../layers/OpLog.js"
import { Privileged, PrivilegedGolden } from "../../layers/Privileged.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { ConfigError } from "../../schema/errors.js"
import { type StorageId, StorageId as StorageIdSchema, VmId, type VolumeId, VolumeId as VolumeIdSchema } from "../../schema/ids.js"
import { decodeOperation, type OperationOf, type SignedAuthorization } from "../../schema/operations.js"
import type { ProxmoxError } from "../../schema/proxmox.js"
import type { Outcome } from "../control/recover.js"
import { beginOperation, emitProgress, type Saga, sagaOf, type StepError } from "../control/steps.js"
import { inScratchRange, RestoreTestSettings } from "../protection/scratch.js"
import { freeScratchVmid } from "../protection/restoreTest.js"

// ---------------------------------------------------------------------------------------------
// Inputs

/** The build container's hostname, its instance marker: derived from the op's random id. */
export const goldenHostname = (opId: string): string => `felhom-golden-${opId}`

/** A version label: what `golden list` shows and the archive is registered as. */
export const GoldenVersion = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, {
    message: () => "a version is a letter or digit, then up to 63 of [A-Za-z0-9._-]"
  })
)

/** The version a build gets when none is given: its UTC start, `YYYY.MM.DD-HHMMSS`. */
export const defaultVersion = (ms: number): string => {
  const iso = new Date(ms).toISOString()
  return `${iso.slice(0, 4)}.${iso.slice(5, 7)}.${iso.slice(8, 10)}-${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}`
}

export interface GoldenBuildRequest {
  /** `<storage>:vztmpl/<file>` */
  readonly template: VolumeId
  /** rootfs storage of the build container */
  readonly storage: StorageId
  /** backup storage that receives the archive */
  readonly dumpStorage: StorageId
  readonly version: string
  readonly basis: "enrollment" | "policy" | "signed"
  readonly authorization: SignedAuthorization | null
}

/** The configured golden block (src/schema/config.ts GoldenConfig), as the build reads it. */
export interface GoldenSettingsShape {
  readonly template: VolumeId
  readonly storage: StorageId
  readonly dumpStorage: StorageId
  readonly bridge: string
  readonly memoryMiB: number
  readonly cores: number
  readonly rootfsGiB: number
  readonly refreshDays: number
  readonly retryHours: number
}

export class GoldenSettings extends Context.Tag("felhom/GoldenSettings")<GoldenSettings, GoldenSettingsShape>() {}

/** From the config's `golden` block; a ConfigError naming it when the host has none. */
export const GoldenSettingsLive: Layer.Layer<GoldenSettings, ConfigError, AgentConfig> = Layer.effect(
  GoldenSettings,
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    const g = file.golden
    if (g === undefined) return yield* new ConfigError({ key: "golden", message: "golden: not configured (no golden build on this host)" })
    const decode = <A, I>(schema: Schema.Schema<A, I>, key: string, value: unknown) =>
      Schema.decodeUnknown(schema)(value).pipe(Effect.mapError(() => new ConfigError({ key: `golden.${key}`, message: `golden.${key}: not valid` })))
    return {
      template: yield* decode(VolumeIdSchema, "template", g.template),
      storage: yield* decode(StorageIdSchema, "storage", g.storage),
      dumpStorage: yield* decode(StorageIdSchema, "dump_storage", g.dump_storage),
      bridge: g.bridge,
      memoryMiB: g.memory_mib,
      cores: g.cores,
      rootfsGiB: g.rootfs_gib,
      refreshDays: g.refresh_days,
      retryHours: g.retry_hours
    } satisfies GoldenSettingsShape
  })
)

export const goldenSettings = (s: GoldenSettingsShape): Layer.Layer<GoldenSettings> => Layer.succeed(GoldenSettings, s)

// ---------------------------------------------------------------------------------------------
// Errors and results

/** The build ended without a registered archive; `outcome` is how its op ended. */
export class GoldenBuildFailed extends Data.TaggedError("GoldenBuildFailed")<{
  readonly message: string
  readonly opId: string | null
  readonly outcome: "rolled_back" | "needs_operator" | "in_flight" | "failed"
  /** An archive the build wrote and left in place, unregistered. */
  readonly archive: string | null
}> {}

/** The guest at a build vmid is not provably this op's build container: nothing is done to it. */
export class BuildContainerRefused extends Data.TaggedError("BuildContainerRefused")<{ readonly message: string }> {}

/** A step's own failure (the helper or PVE said something the saga cannot accept). */
export class GoldenStepFailed extends Data.TaggedError("GoldenStepFailed")<{ readonly message: string }> {}

export interface GoldenBuildResult {
  readonly opId: string
  readonly vmid: VmId
  readonly volid: string
  readonly archive: string
  readonly version: string
  readonly sha256: string
}

// ---------------------------------------------------------------------------------------------
// The proof and the one destroy

export type BuildContainerVerdict =
  /** Nothing at that vmid: nothing to remove. */
  | { readonly _tag: "absent" }
  /** Exactly this op's build container. */
  | { readonly _tag: "ours"; readonly status: "running" | "stopped" }
  /** Locked by a task still running (a create or a vzdump that outlived a crash): try again later. */
  | { readonly _tag: "busy"; readonly reason: string }
  /** Not proven: never stopped or destroyed; held for an operator. */
  | { readonly _tag: "refused"; readonly reason: string }

const notFound = (e: ProxmoxError) => e._tag === "PveApiError" && e.kind === "not_found"

const hasFeatures = (features: string | undefined): boolean => {
  const set = new Set((features ?? "").split(",").map((f) => f.trim()))
  return set.has("keyctl=1") && set.has("nesting=1")
}

/**
 * Whether the guest at `vmid` is provably golden-build `opId`'s build container. All of: the op
 * is in flight, is a golden-build, and its payload and row name exactly this vmid; the vmid is in
 * the reserved scratch range; the journal's provenance for it is `same_transaction` of this op,
 * with the marker `felhom-golden-<op id>`; no customer or lost guest is recorded at it; and PVE's
 * config carries that hostname, keyctl=1 and nesting=1, unprivileged. Nothing at the vmid is
 * `absent` once the op and the range check out (there is nothing to remove). Reads only.
 */
export const buildContainerVerdict = (opId: string, vmid: VmId) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const guests = yield* GuestRecords
    const settings = yield* RestoreTestSettings
    const pve = yield* Proxmox
    const refused = (reason: string): BuildContainerVerdict => ({ _tag: "refused", reason })
    const op = yield* ops.get(opId)
    if (Option.isNone(op) || op.value.status !== "in_flight") return refused(`op ${opId} is not in flight`)
    const typed = decodeOperation(op.value.payload)
    if (Either.isLeft(typed) || typed.right._tag !== "golden-build" || op.value.kind !== "golden-build" || typed.right.vmid !== vmid || op.value.vmid !== vmid) {
      return refused(`op ${opId} is not a golden build at ${vmid}`)
    }
    if (!inScratchRange(settings, vmid)) return refused(`${vmid} is outside the reserved range ${settings.scratchMin}..${settings.scratchMax}`)
    // nothing there: nothing to remove, whatever else holds (a crash before pct create)
    const config = yield* pve.guestConfig(vmid).pipe(Effect.map(Option.some), Effect.catchIf(notFound, () => Effect.succeedNone))
    if (Option.isNone(config)) return { _tag: "absent" } as BuildContainerVerdict
    const marker = goldenHostname(opId)
    const p = yield* guests.provenanceOf(vmid)
    if (Option.isNone(p) || p.value.kind !== "same_transaction" || p.value.opId !== opId || p.value.marker !== marker) {
      return refused(`the journal does not record ${vmid} as op ${opId}'s build container`)
    }
    if ((yield* guests.guestRecords).some((r) => r.vmid === vmid)) return refused(`${vmid} is recorded as a customer guest`)
    if (config.value.hostname !== marker) return refused(`the guest at ${vmid} is not named ${marker}`)
    if (!hasFeatures(config.value.features) || config.value.unprivileged !== 1) {
      return refused(`the guest at ${vmid} is not an unprivileged keyctl+nesting container`)
    }
    if (config.value.lock !== undefined) return { _tag: "busy", reason: `${vmid} is locked (${config.value.lock})` } as BuildContainerVerdict
    const status = yield* pve.guestStatus(vmid)
    return { _tag: "ours", status: status.status } as BuildContainerVerdict
  })

/** Proves, audits, and fails unless the verdict is `ours` or `absent`. */
const proveForDestroy = (opId: string, vmid: VmId) =>
  Effect.gen(function*() {
    const auditLog = yield* AuditLog
    const verdict = yield* buildContainerVerdict(opId, vmid)
    const audit = (decision: string, reason: string) =>
      auditLog.audit({ actor: "golden", action: "destroy", target: String(vmid), decision, detail: { op: opId, reason } })
    switch (verdict._tag) {
      case "absent":
      case "ours":
        return verdict
      case "busy":
        return yield* new GoldenStepFailed({ message: `build container ${vmid}: ${verdict.reason}` })
      case "refused":
        yield* audit("refused:golden-build", verdict.reason)
        return yield* new BuildContainerRefused({ message: `destroying ${vmid} refused: ${verdict.reason}` })
    }
  })

/**
 * Removes golden-build `opId`'s build container at `vmid` as step `step`, after proving it is
 * exactly that (stopped through the API first when running, proven again before the destroy).
 * Idempotent: nothing there is done. The provenance goes once nothing is left.
 */
export const destroyBuildContainer = (s: Saga<"golden-build">, step: "destroy" | "compensate_destroy") =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const guests = yield* GuestRecords
    const auditLog = yield* AuditLog
    const pve = yield* Proxmox
    const priv = yield* Privileged
    const vmid = s.op.vmid
    yield* s.started(step)
    const first = yield* proveForDestroy(s.id, vmid)
    if (first._tag === "ours") {
      if (first.status === "running") {
        const upid = yield* pve.stop(vmid)
        yield* ops.recordUpid(s.id, step, upid)
        yield* pve.waitTask(upid)
      }
      const again = yield* proveForDestroy(s.id, vmid)
      if (again._tag === "ours") {
        if (again.status === "running") return yield* new GoldenStepFailed({ message: `build container ${vmid} is running again` })
        yield* auditLog.audit({
          actor: "golden",
          action: "destroy",
          target: String(vmid),
          decision: "allowed",
          detail: { op: s.id, reason: `golden build ${s.id}'s own build container (provenance, marker ${goldenHostname(s.id)})` }
        })
        yield* priv.destroyGoldenContainer(vmid)
        const after = yield* pve.guestConfig(vmid).pipe(Effect.as(true), Effect.catchIf(notFound, () => Effect.succeed(false)))
        if (after) return yield* new GoldenStepFailed({ message: `build container ${vmid} is still there after pct destroy` })
      }
    }
    yield* guests.clearProvenance(vmid)
    yield* s.done(step)
    return first._tag === "absent" ? "absent" as const : "destroyed" as const
  })

// ---------------------------------------------------------------------------------------------
// Choosing the build vmid

/** How many vmids are asked of PVE at most (each probe is one nextid call). */
const MAX_VMID_PROBES = 20

/**
 * A free vmid from the top of the reserved scratch range (restore-tests pick from the bottom):
 * not listed by PVE, unknown to the journal (records, provenance, ops in flight or held), and
 * free by PVE's nextid.
 */
// suspended: evaluated at call time, not while an import cycle may still be loading restoreTest.ts
export const pickBuildVmid = Effect.suspend(() => freeScratchVmid("top", MAX_VMID_PROBES))

// ---------------------------------------------------------------------------------------------
// The saga

interface Dumped {
  readonly archive: string
  readonly volid: string
}

const stepData = (op: JournalOp, name: string): Record<string, unknown> => {
  const d = op.steps.find((s) => s.name === name)?.data
  return typeof d === "object" && d !== null ? (d as Record<string, unknown>) : {}
}

/** What the journal says was dumped (the dump or checksum step's data), if anything. */
const dumpedOf = (op: JournalOp): Option.Option<Dumped> => {
  for (const name of ["checksum", "dump"]) {
    const d = stepData(op, name)
    if (typeof d["archive"] === "string" && typeof d["volid"] === "string") return Option.some({ archive: d["archive"], volid: d["volid"] })
  }
  return Option.none()
}

const buildSteps = (s: Saga<"golden-build">, settings: GoldenSettingsShape) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const pve = yield* Proxmox
    const priv = yield* Privileged
    const golden = yield* PrivilegedGolden
    const store = yield* GoldenStore
    const { dumpStorage, storage, template, version, vmid } = s.op
    const hostname = goldenHostname(s.id)

    yield* s.started("create", { hostname })
    yield* priv.createGoldenContainer({
      vmid,
      ostemplate: template,
      storage,
      hostname,
      memory: settings.memoryMiB,
      cores: settings.cores,
      rootfsGiB: settings.rootfsGiB
    })
    yield* s.done("create", { hostname })

    yield* s.started("install")
    // started and stopped through the API (a root `pct start` inherits the agent's sandbox)
    const proof = yield* buildContainerVerdict(s.id, vmid)
    if (proof._tag !== "ours") return yield* new GoldenStepFailed({ message: `the build container ${vmid} is not there as created (${proof._tag})` })
    if (proof.status !== "running") {
      const up = yield* pve.start(vmid)
      yield* ops.recordUpid(s.id, "install", up)
      yield* pve.waitTask(up)
    }
    yield* golden.installGolden({ vmid, hostname, bridge: settings.bridge })
    const down = yield* pve.stop(vmid)
    yield* ops.recordUpid(s.id, "install", down)
    yield* pve.waitTask(down)
    yield* s.done("install")

    yield* s.started("dump")
    const written = yield* priv.dumpGoldenArchive({ vmid, storage: dumpStorage })
    const archive = written.archive
    const volid = written.volumeId
    const expected = new RegExp(`^${dumpStorage.replace(/[.]/g, "\\.")}:backup/vzdump-lxc-${vmid}-[0-9_-]+\\.tar\\.zst$`)
    if (archive === undefined || volid === undefined || !expected.test(volid)) {
      return yield* new GoldenStepFailed({ message: `vzdump of ${vmid} did not name a zstd archive on ${dumpStorage}` })
    }
    const dumped: Dumped = { archive, volid }
    yield* s.done("dump", dumped)

    yield* s.started("checksum", dumped)
    const listed = yield* pve.storageContent(dumpStorage, { content: "backup", vmid })
    if (!listed.some((e) => e.volid === volid)) return yield* new GoldenStepFailed({ message: `PVE does not list ${volid} on ${dumpStorage}` })
    const sum = yield* golden.archiveChecksum(archive)
    yield* s.done("checksum", { ...dumped, sha256: sum.sha256 })

    yield* destroyBuildContainer(s, "destroy")

    yield* s.started("register", { volid, version, sha256: sum.sha256 })
    yield* store.registerBuilt({ volid, version, sha256: sum.sha256, opId: s.id })
    yield* s.done("register", { volid, version, sha256: sum.sha256 })
    // a new provisioning source: customer-visible, like an operator's signed registration
    yield* Effect.flatMap(AuditLog, (a) =>
      a.audit({ actor: "golden", action: "golden-build", target: null, decision: "registered", detail: { op: s.id, volid, version, sha256: sum.sha256, basis: s.op.basis } }))
    return { opId: s.id, vmid, volid, archive, version, sha256: sum.sha256 } satisfies GoldenBuildResult
  })

/** Archives of the build vmid on the dump storage, made since the op began and not registered. */
const leftArchives = (op: JournalOp, vmid: VmId, dumpStorage: StorageId) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const guests = yield* GuestRecords
    const registered = yield* guests.goldenArchives
    const fromJournal = Option.toArray(Option.map(dumpedOf(op), (d) => d.volid))
    const listed = yield* pve.storageContent(dumpStorage, { content: "backup", vmid }).pipe(
      Effect.map((entries) => entries.filter((e) => (e.ctime ?? 0) * 1000 >= op.createdAtMs - 60_000).map((e) => e.volid)),
      Effect.orElseSucceed(() => [] as ReadonlyArray<string>)
    )
    return [...new Set([...fromJournal, ...listed])].filter((v) => !registered.has(v)).sort()
  })

const archivesNote = (left: ReadonlyArray<string>) =>
  left.length === 0 ? "no archive was left" : `archive ${left.join(", ")} left in place, not registered (never deleted by the agent)`

/**
 * Ends a build that failed before its registration: the build container removed (proven, never on
 * a guess), the op rolled back; a container that cannot be proven is held (needs_operator); one
 * PVE or the runner failed to remove is left in flight for recovery to retry.
 */
const rollBackBuild = (s: Saga<"golden-build">, why: string) =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const auditLog = yield* AuditLog
    const op = Option.getOrElse(yield* ops.get(s.id), () => null)
    const destroyed = op !== null && op.steps.some((x) => x.name === "destroy" && x.status === "done")
    const removed = destroyed ? Either.right("destroyed" as const) : yield* Effect.either(destroyBuildContainer(s, "compensate_destroy"))
    const after = Option.getOrElse(yield* ops.get(s.id), () => op)
    const left = after === null ? [] : yield* leftArchives(after, s.op.vmid, s.op.dumpStorage)
    const archive = left[0] ?? null
    if (Either.isRight(removed)) {
      const detail = `${why}; the build container ${removed.right === "absent" ? "was never created" : "was removed"}; ${archivesNote(left)}`
      yield* ops.finish(s.id, "rolled_back", detail)
      return new GoldenBuildFailed({ message: detail, opId: s.id, outcome: "rolled_back", archive })
    }
    const e = removed.left
    if (e._tag === "JournalError") return yield* Effect.fail(e)
    if (e._tag === "BuildContainerRefused") {
      const detail = `${why}; ${e.message}; held for an operator; ${archivesNote(left)}`
      yield* ops.finish(s.id, "needs_operator", detail)
      yield* auditLog.audit({ actor: "golden", action: "golden-build", target: String(s.op.vmid), decision: "needs_operator", detail: { op: s.id, reason: e.message } })
      return new GoldenBuildFailed({ message: detail, opId: s.id, outcome: "needs_operator", archive })
    }
    // PVE or the runner failed: recovery (the daemon's next idle cycle) proves and tries again
    return new GoldenBuildFailed({
      message: `${why}; removing the build container ${s.op.vmid} failed (${e._tag}: ${e.message}); left in flight for recovery; ${archivesNote(left)}`,
      opId: s.id,
      outcome: "in_flight",
      archive
    })
  })

/**
 * Builds and registers a golden archive. Picks the build vmid, then runs the saga in that vmid's
 * queue turn. The op is journaled before anything runs, its build container's provenance before
 * `pct create`. Fails with GoldenBuildFailed (the op rolled back, held, or left in flight),
 * JournalError (the store failed: the op is recovered later), or before any op with
 * GoldenStepFailed (no vmid free, a bad version).
 */
export const buildGolden = (req: GoldenBuildRequest) =>
  Effect.gen(function*() {
    const settings = yield* GoldenSettings
    const queue = yield* GuestQueue
    const version = yield* Schema.decodeUnknown(GoldenVersion)(req.version).pipe(
      Effect.mapError(() => new GoldenStepFailed({ message: "the version must be a letter or digit, then up to 63 of [A-Za-z0-9._-]" }))
    )
    const picked = yield* pickBuildVmid
    if (Option.isNone(picked)) return yield* new GoldenStepFailed({ message: "no free vmid in the reserved scratch range for the build container" })
    const vmid = picked.value
    return yield* queue.serialize(vmid)(Effect.gen(function*() {
      // taken meanwhile (the pick ran outside the turn)?
      const pve = yield* Proxmox
      const guests = yield* GuestRecords
      const stillFree = yield* Effect.either(pve.nextId(vmid))
      if (Either.isLeft(stillFree) || stillFree.right !== vmid || Option.isSome(yield* guests.provenanceOf(vmid))) {
        return yield* new GoldenStepFailed({ message: `the build vmid ${vmid} was taken meanwhile; try again` })
      }
      const ops = yield* OpLog
      const s = yield* beginOperation<"golden-build">({
        _tag: "golden-build",
        vmid,
        template: req.template,
        storage: req.storage,
        dumpStorage: req.dumpStorage,
        version,
        basis: req.basis,
        authorization: req.authorization
      })
      yield* emitProgress({ kind: "op", opId: s.id, op: "golden-build", vmid })
      // provenance first: from here the vmid is this op's, whatever pct create does
      yield* guests.recordProvenance(vmid, "same_transaction", s.id, goldenHostname(s.id))
      const built = yield* Effect.either(buildSteps(s, settings))
      if (Either.isRight(built)) {
        yield* ops.finish(s.id, "done", `registered ${built.right.volid} as golden ${version} (sha256 ${built.right.sha256})`)
        return built.right
      }
      if (built.left._tag === "JournalError") return yield* Effect.fail(built.left)
      const failed = yield* rollBackBuild(s, built.left.message)
      return yield* Effect.fail(failed)
    }))
  })

/** A request from the configured golden block. */
export const requestFromSettings = (
  settings: GoldenSettingsShape,
  version: string,
  basis: GoldenBuildRequest["basis"],
  authorization: SignedAuthorization | null = null
): GoldenBuildRequest => ({
  template: settings.template,
  storage: settings.storage,
  dumpStorage: settings.dumpStorage,
  version,
  basis,
  authorization
})

/** The default version for a build starting now. */
export const versionNow = Effect.map(Clock.currentTimeMillis, defaultVersion)

// ---------------------------------------------------------------------------------------------
// Recovery

/**
 * An interrupted golden build. Never resumed (nothing is run twice): registered → done; otherwise
 * the build container is removed (proven exactly as in the saga, through the privileged runner
 * and the scratch range settings, taken from the graph when present) and the op rolled back; an
 * archive it dumped is reported and left, unregistered. A container that cannot be proven is held
 * for an operator; a PVE or runner failure, or a graph without the runner, leaves the op in flight
 * with the reason (the daemon's next idle cycle recovers it again).
 */
export const recoverGoldenBuild = (op: JournalOp, typed: OperationOf<"golden-build">): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const guests = yield* GuestRecords
    const auditLog = yield* AuditLog
    const done = new Set(op.steps.filter((x) => x.status === "done").map((x) => x.name))
    const dumped = dumpedOf(op)
    const registered = Option.isSome(dumped) && (yield* guests.goldenArchives).has(dumped.value.volid)
    if (done.has("register") || (done.has("destroy") && registered)) {
      yield* ops.finish(op.id, "done", "recovered: the archive had been registered")
      return { outcome: "done", detail: `golden ${typed.version} had been registered` }
    }
    const listedLeft = (o: JournalOp) => leftArchives(o, typed.vmid, typed.dumpStorage).pipe(Effect.orElseSucceed(() => [] as ReadonlyArray<string>))
    if (done.has("destroy")) {
      const note = archivesNote(yield* listedLeft(op))
      yield* ops.finish(op.id, "failed", `recovered: interrupted before the registration; ${note}`)
      return { outcome: "failed", detail: `interrupted before the registration; the build container was removed; ${note}` }
    }
    const priv = yield* Effect.serviceOption(Privileged)
    const settings = yield* Effect.serviceOption(RestoreTestSettings)
    if (Option.isNone(priv) || Option.isNone(settings)) {
      return {
        outcome: "in_flight",
        detail: `golden build interrupted; its build container ${typed.vmid} is removed only by the privileged runner within the scratch range, ` +
          "not both configured in this process; left in flight"
      }
    }
    const s = sagaOf(op.id, typed)
    const removed = yield* Effect.either(
      destroyBuildContainer(s, "compensate_destroy").pipe(
        Effect.provideService(Privileged, priv.value),
        Effect.provideService(RestoreTestSettings, settings.value)
      )
    )
    if (Either.isLeft(removed)) {
      const e = removed.left
      if (e._tag === "JournalError") return yield* Effect.fail(e)
      if (e._tag === "BuildContainerRefused") {
        const note = archivesNote(yield* listedLeft(op))
        yield* ops.finish(op.id, "needs_operator", `recovered: golden build interrupted; ${e.message}; held for an operator; ${note}`)
        yield* auditLog.audit({ actor: "golden", action: "golden-build", target: String(typed.vmid), decision: "needs_operator", detail: { op: op.id, reason: e.message } })
        return { outcome: "needs_operator", detail: `golden build interrupted; ${e.message}; held for an operator` }
      }
      return { outcome: "in_flight", detail: `golden build interrupted; removing its build container failed (${e._tag}: ${e.message}); still in flight` }
    }
    const after = Option.getOrElse(yield* ops.get(op.id), () => op)
    const note = archivesNote(yield* listedLeft(after))
    const what = removed.right === "absent" ? "no build container was left" : "the build container was removed"
    yield* ops.finish(op.id, "rolled_back", `recovered: golden build interrupted; ${what}; ${note}`)
    return { outcome: "rolled_back", detail: `golden build interrupted; ${what}; ${note}` }
  })
