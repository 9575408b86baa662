/**
 * A recovered guest's first-boot identity (issue 12): the backup holds the controller, so there is
 * no deploy; the guest's existing bootstrap (same token, hub channel and host id: controller
 * identity kept) is mounted again (a token restore drops bind mounts) and republished with the
 * scenario's directive and generation + 1. The directive is recorded first, so every later
 * republish (update, heal, redeploy) keeps it instead of reverting to the provision one.
 */
import { Effect, Option } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { ControllerStore } from "../../layers/ControllerStore.js"
import { Privileged } from "../../layers/Privileged.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { BOOTSTRAP_GUEST_PATH, type IdentityDirective } from "../../schema/bootstrap.js"
import type { VmId } from "../../schema/ids.js"
import { NothingToRepublish, republishConfig } from "./bootstrap.js"
import { hostPathOf, isBootstrapMount, mountValue, pickMpIndex } from "./deploy.js"

export type ReidentifyResult = "republished" | "no_controller"

/** `identity` null: the directive in force stays (a restore of the same guest: only the mount is back). */
export const reidentifyController = (vmid: VmId, identity: IdentityDirective | null) =>
  Effect.gen(function*() {
    const store = yield* ControllerStore
    const pve = yield* Proxmox
    const privileged = yield* Privileged
    const record = yield* store.get(vmid)
    if (Option.isNone(record)) return "no_controller" as ReidentifyResult
    const r = record.value
    if (identity !== null) yield* store.setIdentity(vmid, identity)
    const hostPath = hostPathOf((yield* AgentConfig).file.privileged.bootstrap_root, vmid)
    const config = yield* pve.guestConfig(vmid)
    const mpIndex = pickMpIndex(config, hostPath, r.mpIndex)
    if (mpIndex === undefined) return yield* new NothingToRepublish({ message: `every mount point of ${vmid} is taken` })
    if (!isBootstrapMount(mountValue(config, mpIndex), hostPath)) {
      yield* privileged.bindMountIntoGuest({ vmid, mpIndex, hostPath, guestPath: BOOTSTRAP_GUEST_PATH, readOnly: true })
    }
    const generation = r.generation + 1
    // recorded before the write, as heal does: a crash between them never reuses a generation
    yield* store.recordDeploy({ vmid, image: r.image, generation, tokenId: r.tokenId, mpIndex, pins: r.pins })
    const pins = yield* republishConfig(vmid, { image: r.image, generation })
    yield* store.recordDeploy({ vmid, image: r.image, generation, tokenId: r.tokenId, mpIndex, pins })
    return "republished" as ReidentifyResult
  })
