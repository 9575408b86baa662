/**
 * `felhom-agent golden build [--version V] [--json]` and `felhom-agent golden list [--json]`
 * (issue 12): the golden base archive built as root from the config's `golden` block, at
 * enrollment or by hand (src/programs/golden/build.ts), and the archives the agent may provision
 * from with their version, digest and state.
 *
 * build: takes the state lock (never beside the daemon or another mutating command), runs the
 * golden-build saga, then retires what the new archive supersedes (unless an in-flight create
 * restores from it). Progress on stderr (live on a terminal, JSON lines otherwise), the result on
 * stdout. Exit 0 registered; 1 failed (rolled back, held for an operator, or left in flight for
 * recovery: the reason is printed and journaled); 2 usage or configuration.
 */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { Console, Effect, Either, Layer, Option } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { type GoldenRecord, GoldenStore, GoldenStoreLive } from "../../layers/GoldenStore.js"
import { PrivilegedGoldenLive, PrivilegedLive } from "../../layers/Privileged.js"
import { Progress } from "../../layers/Progress.js"
import { Proxmox } from "../../layers/Proxmox.js"
import { buildGolden, type GoldenBuildResult, GoldenSettings, GoldenSettingsLive, requestFromSettings, versionNow } from "../golden/build.js"
import { type RetireOutcome, retireSuperseded } from "../golden/refresh.js"
import { CliFailure, toCliFailure } from "./failure.js"
import { cliServices } from "./graph.js"
import { configSecrets, makeStructuredProgress, makeTtyProgress, scrubberFor, stderrOutput, wantsTty } from "./progress.js"
import { holdStateLock } from "./stateLock.js"

/** The CLI's mutating graph plus the golden services (the privileged runner's both halves). */
const goldenServices = Layer.mergeAll(
  GoldenSettingsLive,
  GoldenStoreLive.pipe(Layer.provide(DatabaseLive)),
  Layer.mergeAll(PrivilegedLive, PrivilegedGoldenLive).pipe(Layer.provide(NodeCommandExecutor.layer))
).pipe(Layer.provideMerge(cliServices))

export interface GoldenBuildCommand {
  readonly version: Option.Option<string>
  readonly json: boolean
  readonly config: Option.Option<string>
}

const describeRetire = (r: RetireOutcome): ReadonlyArray<string> => [
  ...r.retired.map((v) => `retired ${v} (kept on disk and still accepted; only no longer current)`),
  ...r.kept.map((k) => `kept ${k.volid} current: in-flight create ${k.op} restores from it`)
]

export const renderBuilt = (b: GoldenBuildResult, r: RetireOutcome): string =>
  [
    `golden ${b.version}: DONE (op ${b.opId}): registered ${b.volid}`,
    `  sha256 ${b.sha256}`,
    `  built in container ${b.vmid} (removed)`,
    ...describeRetire(r).map((l) => `  ${l}`)
  ].join("\n")

export const goldenBuild = (o: GoldenBuildCommand) =>
  Effect.scoped(Effect.gen(function*() {
    yield* holdStateLock("golden build")
    const { file } = yield* AgentConfigLayer.AgentConfig
    const pve = yield* Proxmox
    const settings = yield* GoldenSettings
    const scrub = scrubberFor(configSecrets(file))
    const progress = wantsTty(o.json)
      ? yield* makeTtyProgress({ out: stderrOutput, tail: (u, n) => pve.taskLogTail(u, n), scrub })
      : yield* makeStructuredProgress({ out: stderrOutput, scrub })
    const version = Option.isSome(o.version) ? o.version.value : yield* versionNow
    const built = yield* Effect.either(
      buildGolden(requestFromSettings(settings, version, "enrollment")).pipe(Effect.provideService(Progress, progress))
    )
    if (Either.isLeft(built)) {
      const e = built.left
      if (e._tag === "GoldenBuildFailed") {
        yield* Console.log(o.json
          ? JSON.stringify({ outcome: e.outcome, opId: e.opId, detail: e.message, archive: e.archive })
          : `golden ${version}: ${e.outcome.toUpperCase()}${e.opId === null ? "" : ` (op ${e.opId})`}: ${e.message}`)
        return yield* new CliFailure({ code: 1, message: `golden build: ${e.outcome}` })
      }
      return yield* Effect.fail(e)
    }
    const retire = yield* retireSuperseded
    yield* Console.log(o.json ? JSON.stringify({ outcome: "done", ...built.right, retire }) : renderBuilt(built.right, retire))
  })).pipe(
    Effect.provide(goldenServices.pipe(Layer.provideMerge(AgentConfigLayer.layer({ path: o.config, mode: "selftest" })))),
    Effect.mapError((e) => toCliFailure(e))
  )

export const renderList = (records: ReadonlyArray<GoldenRecord>): string =>
  records.length === 0
    ? "no golden archive registered (felhom-agent golden build, or an operator's signed golden-register)"
    : records.map((r) =>
      [
        `${r.state === "current" ? "*" : " "} ${r.volid}`,
        `    ${r.basis === "built" ? `built, version ${r.version ?? "?"}` : "signed by an operator"}; ${r.state}; ` +
        `registered ${new Date(r.recordedAtMs).toISOString()} by op ${r.opId}`,
        ...(r.sha256 === null ? [] : [`    sha256 ${r.sha256}`]),
        ...(r.stateDetail === null ? [] : [`    ${r.stateDetail}`])
      ].join("\n")
    ).join("\n")

export const goldenList = (o: { readonly json: boolean; readonly config: Option.Option<string> }) =>
  Effect.gen(function*() {
    const records = yield* Effect.flatMap(GoldenStore, (s) => s.records)
    yield* Console.log(o.json ? JSON.stringify(records, null, 2) : renderList(records))
  }).pipe(
    Effect.provide(GoldenStoreLive.pipe(Layer.provide(DatabaseLive), Layer.provideMerge(AgentConfigLayer.layer({ path: o.config, mode: "none" })))),
    Effect.mapError((e) => toCliFailure(e))
  )
