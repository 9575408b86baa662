/**
 * enroll --restore-mode's last step: the host-loss restore engine (src/programs/hostloss/restore.ts)
 * over the services the daemon would use, built from the config enroll just wrote (its secrets
 * from secrets.env, overlaid by the caller), and its per-guest report for a person and as JSON.
 * Loaded only in restore mode.
 */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { Effect, Layer, Option } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import { PbsKeyLive } from "../../layers/PbsKey.js"
import { PrivilegedLive, PrivilegedPbsKeyLive } from "../../layers/Privileged.js"
import { StorageTargetStoreLive } from "../../layers/StorageTargetStore.js"
import type { KeyFingerprint, RestoreBundle } from "../../schema/escrow.js"
import type { RestoreOutcome } from "../enroll/enroll.js"
import { type HostRestoreReport, restoreHost } from "../hostloss/restore.js"
import { CredsVaultLive } from "../protection/creds.js"
import { StorageRemoverLive } from "../protection/detach.js"
import { StorageStatusLive } from "../protection/status.js"
import { recover as replayJournal } from "../control/recover.js"
import { cliServices } from "./graph.js"
import { holdStateLock } from "./stateLock.js"

export const renderHostRestore = (r: HostRestoreReport): string =>
  [
    `restore mode: key ${r.keyFingerprint.split(":").slice(0, 8).join(":")}`,
    ...r.storage.map((s) => `  storage ${s.id}: ${s.verdict}${s.available === null ? "" : s.available ? " (reachable)" : " (unreachable)"}${s.detail === null ? "" : `: ${s.detail}`}`),
    ...r.guests.map((g) => `  guest ${g.vmid} ${g.name}: ${g.outcome.toUpperCase()}${g.point === undefined ? "" : ` from ${g.point}`}: ${g.detail}`),
    ...r.notes.map((n) => `  note: ${n}`)
  ].join("\n")

const privileged = Layer.mergeAll(PrivilegedLive, PrivilegedPbsKeyLive).pipe(Layer.provide(NodeCommandExecutor.layer), Layer.provide(NodeFileSystem.layer))

/**
 * The state lock first (a daemon started meanwhile never runs beside a restore: stateLock.ts), then
 * the journal replay the daemon runs at start: a guest whose recovery a crash interrupted is
 * finished or undone before restoreHost looks at its vmid (else it would be refused as existing).
 */
const settled = (input: { readonly bundle: RestoreBundle; readonly keyFingerprint: KeyFingerprint }) =>
  Effect.scoped(Effect.gen(function*() {
    yield* holdStateLock("enroll --restore-mode")
    const replayed = yield* replayJournal
    const open = replayed.filter((r) => r.outcome === "in_flight" || r.outcome === "needs_operator")
    if (open.length > 0) {
      yield* Effect.logWarning(`restore mode: ${open.length} interrupted operation(s) still need attention: ${open.map((r) => `${r.id} ${r.outcome}`).join(", ")}`)
    }
    return yield* restoreHost(input)
  }))

export const runHostRestore = (input: { readonly bundle: RestoreBundle; readonly keyFingerprint: KeyFingerprint }) =>
  settled(input).pipe(
    Effect.map((report): RestoreOutcome => ({
      // a re-run after a partial restore reports the guests this host restored before as restored
      // (from its journal); a guest that merely exists at a directed vmid is refused, not ok
      ok: report.guests.every((g) => g.outcome === "restored"),
      human: renderHostRestore(report),
      json: report
    })),
    Effect.provide(Layer.mergeAll(
      StorageTargetStoreLive,
      StorageStatusLive,
      CredsVaultLive,
      PbsKeyLive,
      StorageRemoverLive.pipe(Layer.provide(StorageTargetStoreLive))
    ).pipe(Layer.provideMerge(privileged), Layer.provideMerge(cliServices))),
    Effect.provide(AgentConfigLayer.layer({ path: Option.none(), mode: "daemon" })),
    Effect.provide(NodeFileSystem.layer)
  )
