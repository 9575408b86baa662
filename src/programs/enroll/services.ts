/**
 * The services `enroll` and `rotate-recovery-code` run on, over explicit locations (the CLI gives
 * the production ones, tests a scratch root): HostSetup, the live PbsKey, the hub (EnrollHub),
 * and the step table in the state database.
 */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { Effect, Layer } from "effect"
import { mkdirSync } from "node:fs"
import { layerAt, STATE_DB_FILE } from "../../layers/Database.js"
import { hostSetupLayer, type HostSetupOptions } from "../../layers/HostSetup.js"
import { pbsKeyLayer } from "../../layers/PbsKey.js"
import { PrivilegedPbsKey } from "../../layers/Privileged.js"
import { PrivilegedError } from "../../schema/privileged.js"
import { enrollHubLayer, type EnrollHubSettings } from "./hubLive.js"
import { EnrollStepsLive } from "./ports.js"

export interface EnrollLocations {
  readonly setup: HostSetupOptions
  /** escrow.key_file (production: /etc/felhom-agent/pbs/encryption-key.json). */
  readonly keyFile: string
  /** state_dir: the state database (its step table) and the storage-creds key. */
  readonly stateDir: string
  readonly hub: EnrollHubSettings
  /** Tests stand in a non-root uid. */
  readonly uid?: () => number
}

/** enroll never attaches the key to a storage (the daemon does, through the root helper). */
const noAttach = Layer.succeed(PrivilegedPbsKey, {
  attachPbsKey: () =>
    Effect.fail(new PrivilegedError({ reason: "SpawnFailed", command: "felhom-pbskey", message: "felhom-pbskey: not used during enrollment" }))
})

/** The state database in `dir` (created 0700), migrated. */
export const stateDatabase = (dir: string) =>
  Layer.unwrapEffect(Effect.sync(() => {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    return layerAt(`${dir.replace(/\/+$/, "")}/${STATE_DB_FILE}`)
  }))

export const enrollServices = (l: EnrollLocations) =>
  Layer.mergeAll(
    hostSetupLayer(l.setup).pipe(Layer.provide(NodeCommandExecutor.layer), Layer.provide(NodeFileSystem.layer)),
    pbsKeyLayer({ keyFile: l.keyFile, ...(l.uid === undefined ? {} : { uid: l.uid }) }).pipe(Layer.provide(noAttach)),
    enrollHubLayer(l.hub),
    EnrollStepsLive
  ).pipe(Layer.provideMerge(stateDatabase(l.stateDir)))
