/**
 * ControllerContext (issue 11): what a controller's bootstrap needs from the host, built by the
 * daemon from its config and the local API's certificate. The bootstrap programs read only this,
 * so a test or the simulator stack hands them a host without a config file or a certificate.
 */
import { Context, type Effect, type Redacted } from "effect"
import type { CertPin } from "../../schema/bootstrap.js"

export interface RegistryCredentials {
  readonly server: string
  readonly username: string
  /** Written only into the guest's `registry-password` file (0600, guest root's), never into controller.json. */
  readonly password: Redacted.Redacted<string>
}

export interface ControllerContextShape {
  readonly hostId: string
  /** The hub the controller talks to; null on a host without a hub (dev, sim without one). */
  readonly hubUrl: string | null
  /** The local API as guests reach it (the bridge address, https). */
  readonly localApiUrl: string
  /**
   * Every pin a controller must accept right now: the local API's current certificate, and during
   * a rotation the next one too. An effect: a rotation changes it while the agent runs.
   */
  readonly pins: Effect.Effect<ReadonlyArray<CertPin>>
  /** Registry pull credentials, if the controllers' images need any. */
  readonly registry: RegistryCredentials | null
}

export class ControllerContext extends Context.Tag("felhom/ControllerContext")<ControllerContext, ControllerContextShape>() {}
