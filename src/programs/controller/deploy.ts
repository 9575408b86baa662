/**
 * The provisioning back half (issue 11, SPEC §12) as the `controller-deploy` saga:
 *
 *   mint → write → mount → commit → revoke_previous
 *
 * The token id is in the op's payload (journaled before the token exists), so recovery always
 * knows which token an interrupted deploy may have minted. `commit` is ControllerStore.recordDeploy:
 * the deploy counts as made when the record names this op's token (a crash between the record and
 * the journal's step is read back from the store). Until then a failure or a crash is compensated
 * in reverse (compensate_unmount → compensate_remove → compensate_revoke), so the guest ends with
 * its token and files both in place (and recorded) or both gone, never a live token without files
 * nor files holding a revoked token. Compensation stops at the first step that fails: the op is
 * then held for an operator (in the saga) or left in flight (in recovery), with what is left named.
 *
 * A redeploy (a new token, a new image) keeps the previous token valid until the new files are
 * committed, then revokes it. If it fails before its first file is written, only the new token is
 * revoked and the previous deploy stands untouched; once a file may have been overwritten the
 * previous deploy is gone too, so the whole controller is taken down (mount, files, every token of
 * the guest, the record) and reconcile deploys it again from scratch. The hub only names the image
 * (checked against `controllers.repositories` by the plan); nothing it sends reaches a path,
 * argv or the mount.
 *
 * The mount is `<bootstrap_root>/<vmid>` at /etc/felhom-bootstrap, read-only, at the previous
 * deploy's mpN, else the lowest mpN free in the guest's config. A mount point is only ever
 * removed when its value, read back from PVE, names exactly that directory: sudoers cannot tell a
 * bind mount from a customer volume, this check does.
 *
 * Threats (each has a test in test/controller-deploy.test.ts or test/privileged-bootstrap-files.test.ts):
 * - hostile hub: it names an image and a guest; the image must be an ImageRef (refused before
 *   anything is journaled) and only ever lands JSON-encoded in controller.json; paths, argv and
 *   the mount are derived from the vmid and the configured root alone.
 * - hostile controller (another guest): each guest sees only its own `<root>/<vmid>`, read-only;
 *   it cannot plant a symlink there, and the helper refuses symlinked or foreign directories/files.
 * - faulty PVE: a refused or locked `pct set` fails the mount step → compensated; a failing unplug
 *   during compensation stops it before the files go (a guest whose bind source vanished no longer
 *   starts) → held (saga) or left in flight (recovery), files still matching a live token.
 * - a crash at any write: recovery finishes a committed deploy or compensates an uncommitted one.
 * - a redeploy taken down whole also forgets the record's snapshot provenance (ControllerStore.forget);
 *   the snapshots stay in PVE, only a controller's right to roll back to the older ones is lost.
 */
import { Data, Effect, Either, Option, Schema } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import { AgentConfig } from "../../layers/Config.js"
import { type ControllerRecord, ControllerStore } from "../../layers/ControllerStore.js"
import type { AdmissionRefused, JournalError, JournalOp, StoreServices } from "../../layers/Journal.js"
import { LocalTokens } from "../../layers/LocalTokens.js"
import { OpLog } from "../../layers/OpLog.js"
import { Privileged } from "../../layers/Privileged.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { BOOTSTRAP_GUEST_PATH, type IdentityDirective, ImageRef } from "../../schema/bootstrap.js"
import type { VmId } from "../../schema/ids.js"
import type { OperationOf } from "../../schema/operations.js"
import type { PrivilegedError } from "../../schema/privileged.js"
import type { GuestConfig, ProxmoxError } from "../../schema/proxmox.js"
import type { Outcome } from "../control/recover.js"
import { beginOperation, existing, type Saga, type StepError } from "../control/steps.js"
import { provisionDirectiveFor, publishBootstrap } from "./bootstrap.js"
import { ControllerContext } from "./context.js"

// ---------------------------------------------------------------------------------------------
// Errors and results

/** A deploy that did not happen (refused before it began, or failed and compensated or held). */
export class ControllerDeployFailed extends Data.TaggedError("ControllerDeployFailed")<{
  readonly message: string
  /** refused: nothing was journaled; rolled_back / needs_operator: how the op ended. */
  readonly outcome: "refused" | "rolled_back" | "needs_operator"
}> {}

export interface DeploySpec {
  /** The controller image, as the desired state names it (validated as an ImageRef here again). */
  readonly image: string
  /** The first-boot directive; by default the guest's provision directive (identityFor). */
  readonly identity?: IdentityDirective
}

export interface DeployResult {
  readonly opId: string
  readonly vmid: VmId
  readonly tokenId: string
  readonly generation: number
  readonly mpIndex: number
}

type DeployServices =
  | StoreServices
  | Proxmox
  | Privileged
  | LocalTokens
  | ControllerStore
  | ControllerContext
  | AgentConfig

// ---------------------------------------------------------------------------------------------
// The guest's mount points

const MP_MAX = 255

/** A mount point's value, own keys only (a config is decoded into a record; never its prototype). */
export const mountValue = (config: GuestConfig, index: number): string | undefined => {
  const key = `mp${index}`
  if (!Object.prototype.hasOwnProperty.call(config, key)) return undefined
  const v = (config as Readonly<Record<string, unknown>>)[key]
  return typeof v === "string" ? v : undefined
}

/** Whether `value` is our bootstrap mount of exactly `hostPath` (the source, then `mp=`). */
export const isBootstrapMount = (value: string | undefined, hostPath: string): boolean => {
  if (value === undefined) return false
  const [source, ...props] = value.split(",")
  return source === hostPath && props.includes(`mp=${BOOTSTRAP_GUEST_PATH}`)
}

/**
 * The mpN for the deploy: the previous deploy's when it is free or still ours, else one already
 * holding our directory (a crashed deploy's), else the lowest free one; undefined when all 256 are taken.
 */
export const pickMpIndex = (config: GuestConfig, hostPath: string, previous: number | null): number | undefined => {
  if (previous !== null) {
    const v = mountValue(config, previous)
    if (v === undefined || isBootstrapMount(v, hostPath)) return previous
  }
  for (let i = 0; i <= MP_MAX; i++) if (isBootstrapMount(mountValue(config, i), hostPath)) return i
  for (let i = 0; i <= MP_MAX; i++) if (mountValue(config, i) === undefined) return i
  return undefined
}

export const hostPathOf = (root: string, vmid: VmId) => `${root}/${vmid}`

// The identity directive: bootstrap.ts (provisionDirectiveFor, identityFor), shared with republishing.
export { identityFor, provisionDirectiveFor } from "./bootstrap.js"

// ---------------------------------------------------------------------------------------------
// Compensation

type CompensationError = JournalError | PrivilegedError | ProxmoxError

/**
 * "token-only": a redeploy that never wrote a file; its new token is revoked, the previous deploy
 * stands. "full": unmount (only a key that is exactly our mount), remove the files, revoke every
 * token of the guest, forget the record: nothing of a controller is left.
 */
type Scope = "token-only" | "full"

const scopeOf = (replacesToken: string | null, stepsSeen: ReadonlySet<string>): Scope =>
  replacesToken !== null && !stepsSeen.has("write") && !stepsSeen.has("mount") ? "token-only" : "full"

const compensate = (
  s: Saga<"controller-deploy">,
  scope: Scope
): Effect.Effect<void, CompensationError, DeployServices> =>
  Effect.gen(function*() {
    const { mpIndex, tokenId, vmid } = s.op
    const tokens = yield* LocalTokens
    if (scope === "token-only") {
      yield* s.started("compensate_revoke")
      yield* tokens.revoke(tokenId)
      return yield* s.done("compensate_revoke")
    }
    const pve = yield* Proxmox
    const privileged = yield* Privileged
    const store = yield* ControllerStore
    const hostPath = hostPathOf((yield* AgentConfig).file.privileged.bootstrap_root, vmid)
    // the mount goes first: a guest whose bind source is gone no longer starts
    yield* s.started("compensate_unmount")
    if (Option.isSome(yield* existing(vmid))) {
      const config = yield* pve.guestConfig(vmid)
      const record = yield* store.get(vmid)
      const candidates = [mpIndex, ...Option.toArray(Option.map(record, (r) => r.mpIndex))]
      for (let i = 0; i <= MP_MAX; i++) candidates.push(i)
      for (const i of new Set(candidates)) {
        if (isBootstrapMount(mountValue(config, i), hostPath)) yield* privileged.unbindFromGuest({ vmid, mpIndex: i })
      }
    }
    yield* s.done("compensate_unmount")
    yield* s.started("compensate_remove")
    yield* privileged.removeBootstrap(vmid)
    yield* s.done("compensate_remove")
    yield* s.started("compensate_revoke")
    yield* tokens.revoke(tokenId)
    yield* tokens.revokeGuest(vmid)
    if (Option.isSome(yield* store.get(vmid))) yield* store.forget(vmid)
    yield* s.done("compensate_revoke")
  })

const describeScope = (scope: Scope) =>
  scope === "token-only"
    ? "the new token was revoked; the previous deploy is untouched"
    : "the mount, the files and the guest's tokens were removed"

// ---------------------------------------------------------------------------------------------
// The saga

/** After the commit: the previous token (and any other but this deploy's) revoked, the op done. */
const afterCommit = (s: Saga<"controller-deploy">) =>
  Effect.gen(function*() {
    const tokens = yield* LocalTokens
    yield* s.started("revoke_previous")
    yield* tokens.revokeGuest(s.op.vmid, s.op.tokenId)
    yield* s.done("revoke_previous")
  })

/**
 * Deploys (or redeploys) the controller of guest `vmid` with `spec.image`. The caller runs it in
 * the guest's queue turn. Fails with ControllerDeployFailed (refused, rolled back, or held for an
 * operator); a failure after the commit leaves the op in flight for recovery to finish (the deploy
 * stands, only the previous token's revocation is left) and fails with the cause.
 */
export const deployController = (vmid: VmId, spec: DeploySpec): Effect.Effect<DeployResult, ControllerDeployFailed | JournalError | AdmissionRefused, DeployServices> =>
  Effect.gen(function*() {
    const refuse = (message: string) => new ControllerDeployFailed({ message: `controller deploy on ${vmid} refused: ${message}`, outcome: "refused" })
    const image = yield* Schema.decodeUnknown(ImageRef)(spec.image).pipe(
      Effect.mapError(() => refuse("the image is not an image reference"))
    )
    const ops = yield* OpLog
    const auditLog = yield* AuditLog
    const pve = yield* Proxmox
    const privileged = yield* Privileged
    const tokens = yield* LocalTokens
    const store = yield* ControllerStore
    const ctx = yield* ControllerContext
    const hostPath = hostPathOf((yield* AgentConfig).file.privileged.bootstrap_root, vmid)

    const previous: Option.Option<ControllerRecord> = yield* store.get(vmid)
    const config = yield* pve.guestConfig(vmid).pipe(Effect.mapError((e) => refuse(`the guest's config cannot be read (${e.message})`)))
    const mpIndex = pickMpIndex(config, hostPath, Option.match(previous, { onNone: () => null, onSome: (r) => r.mpIndex }))
    if (mpIndex === undefined) return yield* refuse("every mount point mp0..mp255 of the guest is taken")
    const hostname = typeof config.hostname === "string" ? config.hostname : `ct${vmid}`
    const generation = Option.match(previous, { onNone: () => 1, onSome: (r) => r.generation + 1 })
    const replacesToken = Option.match(previous, { onNone: () => null, onSome: (r) => r.tokenId })

    // the id first, in the op's payload: recovery knows which token this op may have minted
    const tokenId = yield* tokens.newId
    const s = yield* beginOperation<"controller-deploy">({ _tag: "controller-deploy", vmid, tokenId, image, generation, mpIndex, replacesToken })
    const seen = new Set<string>()
    const step = <A, E, R>(name: "mint" | "write" | "mount" | "commit", body: Effect.Effect<A, E, R>) =>
      Effect.gen(function*() {
        seen.add(name)
        yield* s.started(name)
        const a = yield* body
        yield* s.done(name)
        return a
      })

    const forward = Effect.gen(function*() {
      const minted = yield* step("mint", tokens.mint(vmid, tokenId))
      const identity = spec.identity ??
        Option.getOrNull(Option.flatMapNullable(previous, (r) => r.identity)) ??
        provisionDirectiveFor(ctx.hostId, vmid, yield* tokens.forGuest(vmid), tokenId)
      const pins = yield* ctx.pins
      yield* step("write", publishBootstrap({ vmid, hostname, image, generation, identity, token: minted.token, pins }))
      yield* step(
        "mount",
        Effect.gen(function*() {
          // read again: the guest may have changed since the plan (an operator, another mount)
          const now = mountValue(yield* pve.guestConfig(vmid), mpIndex)
          if (isBootstrapMount(now, hostPath)) return
          if (now !== undefined) {
            return yield* new ControllerDeployFailed({ message: `mp${mpIndex} of ${vmid} was taken meanwhile`, outcome: "rolled_back" })
          }
          yield* privileged.bindMountIntoGuest({ vmid, mpIndex, hostPath, guestPath: BOOTSTRAP_GUEST_PATH, readOnly: true })
        })
      )
      yield* step("commit", store.recordDeploy({ vmid, image, generation, tokenId, mpIndex, pins }))
    })

    const went = yield* Effect.either(forward)
    if (Either.isLeft(went)) {
      const why = went.left.message
      const scope = scopeOf(replacesToken, seen)
      const undone = yield* Effect.either(compensate(s, scope))
      if (Either.isRight(undone)) {
        yield* ops.finish(s.id, "rolled_back", `${why}; ${describeScope(scope)}`)
        return yield* new ControllerDeployFailed({ message: `controller deploy on ${vmid} failed (${why}); rolled back`, outcome: "rolled_back" })
      }
      const detail = `${why}; compensation stopped (${undone.left._tag}: ${undone.left.message}); held for an operator`
      yield* ops.finish(s.id, "needs_operator", detail)
      yield* auditLog.audit({ actor: "executor", action: "controller-deploy", target: String(vmid), decision: "needs_operator", detail: { op: s.id, reason: undone.left.message } })
      return yield* new ControllerDeployFailed({ message: `controller deploy on ${vmid} failed (${why}); ${detail}`, outcome: "needs_operator" })
    }
    yield* afterCommit(s)
    yield* ops.finish(s.id, "done")
    return { opId: s.id, vmid, tokenId, generation, mpIndex } satisfies DeployResult
  })

// ---------------------------------------------------------------------------------------------
// Undeploy (a decommission)

/**
 * Takes a guest's controller down for good: every token revoked first (durably, so a token never
 * outlives its guest into a reused vmid), the mount removed if the guest still exists and the key
 * is exactly ours, the files removed, the record forgotten. Idempotent.
 */
export const undeployController = (vmid: VmId): Effect.Effect<void, JournalError | PrivilegedError | ProxmoxError, DeployServices> =>
  Effect.gen(function*() {
    const tokens = yield* LocalTokens
    const store = yield* ControllerStore
    const privileged = yield* Privileged
    const pve = yield* Proxmox
    const hostPath = hostPathOf((yield* AgentConfig).file.privileged.bootstrap_root, vmid)
    yield* tokens.revokeGuest(vmid)
    if (Option.isSome(yield* existing(vmid))) {
      const config = yield* pve.guestConfig(vmid)
      for (let i = 0; i <= MP_MAX; i++) {
        if (isBootstrapMount(mountValue(config, i), hostPath)) yield* privileged.unbindFromGuest({ vmid, mpIndex: i })
      }
    }
    yield* privileged.removeBootstrap(vmid)
    yield* store.forget(vmid)
  })

// ---------------------------------------------------------------------------------------------
// Recovery

/**
 * An interrupted controller-deploy. Committed (the step done, or the store's record naming this
 * op's token) → the previous token is revoked and the op is done. Otherwise it is compensated in
 * the saga's own scope and ends rolled_back. A PVE or privileged failure while compensating
 * leaves the op in flight for the next recovery; without the controller services in this process
 * it is left in flight untouched (nothing is undone on a guess).
 */
export const recoverControllerDeploy = (
  op: JournalOp,
  typed: OperationOf<"controller-deploy">
): Effect.Effect<Outcome, StepError, StoreServices | Proxmox> =>
  Effect.gen(function*() {
    const tokens = yield* Effect.serviceOption(LocalTokens)
    const store = yield* Effect.serviceOption(ControllerStore)
    const privileged = yield* Effect.serviceOption(Privileged)
    const config = yield* Effect.serviceOption(AgentConfig)
    const ctx = yield* Effect.serviceOption(ControllerContext)
    if (Option.isNone(tokens) || Option.isNone(store) || Option.isNone(privileged) || Option.isNone(config)) {
      return {
        outcome: "in_flight",
        detail: "controller-deploy interrupted; this process has no token store, controller store or privileged runner; left in flight"
      } satisfies Outcome
    }
    return yield* recoverWith(op, typed).pipe(
      Effect.provideService(LocalTokens, tokens.value),
      Effect.provideService(ControllerStore, store.value),
      Effect.provideService(Privileged, privileged.value),
      Effect.provideService(AgentConfig, config.value),
      // compensation never reads the context; a stand-in keeps the requirement satisfied
      Effect.provideService(ControllerContext, Option.getOrElse(ctx, () => ({
        hostId: "",
        hubUrl: null,
        localApiUrl: "",
        pins: Effect.succeed([]),
        registry: null
      })))
    )
  })

const recoverWith = (op: JournalOp, typed: OperationOf<"controller-deploy">): Effect.Effect<Outcome, StepError, DeployServices> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const store = yield* ControllerStore
    const s: Saga<"controller-deploy"> = {
      id: op.id,
      op: typed,
      task: () => Effect.dieMessage("controller-deploy has no PVE task steps"),
      config: () => Effect.dieMessage("controller-deploy has no config steps"),
      started: (step, data) => ops.stepStarted(op.id, step, data),
      done: (step, data) => ops.stepDone(op.id, step, data)
    }
    const done = new Set(op.steps.filter((x) => x.status === "done").map((x) => x.name))
    const seen = new Set(op.steps.map((x) => x.name))
    const record = yield* store.get(typed.vmid)
    const committed = done.has("commit") || Option.exists(record, (r) => r.tokenId === typed.tokenId)
    if (committed) {
      if (!done.has("commit")) yield* s.done("commit")
      yield* afterCommit(s)
      yield* ops.finish(op.id, "done", "recovered: committed before the crash; the previous token revoked")
      return { outcome: "done", detail: "committed; the previous token revoked" }
    }
    const scope = scopeOf(typed.replacesToken, seen)
    const undone = yield* Effect.either(compensate(s, scope))
    if (Either.isLeft(undone)) {
      if (undone.left._tag === "JournalError") return yield* Effect.fail(undone.left)
      return {
        outcome: "in_flight",
        detail: `controller-deploy interrupted before its commit; compensation could not finish (${undone.left._tag}: ${undone.left.message}); still in flight`
      }
    }
    yield* ops.finish(op.id, "rolled_back", `recovered: interrupted before the commit; ${describeScope(scope)}`)
    return { outcome: "rolled_back", detail: `interrupted before the commit; ${describeScope(scope)}` }
  })
