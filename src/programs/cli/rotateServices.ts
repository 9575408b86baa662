/**
 * What rotate-recovery-code's gate needs beside the enrollment services: the installed config
 * (host_id, authz signers), the state database's journal (audit, provenance, the nonce store)
 * and Authz. A module of its own so `enroll` never loads it.
 */
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { Layer, Option } from "effect"
import { AuthzLive } from "../../layers/Authz.js"
import * as AgentConfigLayer from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { JournalLive } from "../../layers/Journal.js"

export const authzServices = (configPath: string) =>
  Layer.mergeAll(JournalLive, AuthzLive).pipe(
    Layer.provideMerge(DatabaseLive),
    Layer.provideMerge(AgentConfigLayer.layer({ path: Option.some(configPath), mode: "authz" })),
    Layer.provide(NodeFileSystem.layer)
  )
