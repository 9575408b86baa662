/**
 * What reconcile and the job runner may ask of controllers (issue 11), as one service so their
 * own requirements stay narrow: the deploy, update and undeploy sagas need the privileged runner,
 * the token store, the controller store and the bootstrap context, which only a host that serves
 * a local API has. A graph without this service plans no controller work (the plan notes it) and
 * a job that asks for it fails as a bad job.
 *
 * Callers hold the guest's queue turn; none of these serializes itself.
 */
import { Context, Data, type Effect } from "effect"
import type { IdentityDirective } from "../../schema/bootstrap.js"
import type { VmId } from "../../schema/ids.js"
import type { SignedAuthorization } from "../../schema/operations.js"
import type { Admission } from "../control/steps.js"

export class ControllerOpFailed extends Data.TaggedError("ControllerOpFailed")<{ readonly message: string }> {}

export type UpdateBasis = { readonly basis: "policy" } | { readonly basis: "signed"; readonly authorization: SignedAuthorization }

export interface ControllerPlanView {
  /** The deployed image per guest. */
  readonly deployed: ReadonlyMap<VmId, string>
  readonly repositories: ReadonlyArray<string>
  /** Per guest whose newest controller update was rolled back: its image, and whether that was within the cool-down. */
  readonly failedUpdates: ReadonlyMap<VmId, { readonly image: string; readonly recent: boolean }>
}

export interface ControllerOpsShape {
  /** The deployed image per guest (the plan's view), and the operator's allowed repositories. */
  readonly view: Effect.Effect<ControllerPlanView, ControllerOpFailed>
  readonly deploy: (vmid: VmId, image: string) => Effect.Effect<void, ControllerOpFailed>
  /** `admission`: a signed update's grant nonce (and job key), spent as its op is admitted. */
  readonly update: (vmid: VmId, image: string, basis: UpdateBasis, admission: Admission) => Effect.Effect<void, ControllerOpFailed>
  /**
   * A recovered guest (issue 12): its bootstrap mounted again (a token restore drops bind mounts)
   * and republished with `identity` (kept from then on; null keeps the one in force, as after a
   * restore-now of the same guest). "no_controller" when the guest has none deployed on this host.
   */
  readonly reidentify: (vmid: VmId, identity: IdentityDirective | null) => Effect.Effect<"republished" | "no_controller", ControllerOpFailed>
  /** Before a guest is destroyed: its tokens revoked (durably, first), its bootstrap files removed. */
  readonly undeploy: (vmid: VmId) => Effect.Effect<void, ControllerOpFailed>
}

export class ControllerOps extends Context.Tag("felhom/ControllerOps")<ControllerOps, ControllerOpsShape>() {}
