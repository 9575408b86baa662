/**
 * `felhom-agent update` (issue 14): the self-update saga (src/programs/update/saga.ts) run by a
 * local operator, root at the host's console, so without an operator signature (authorization
 * null, like `recover` at the console). The release itself must still be signed by a release
 * key: nothing unsigned reaches a slot whoever asks.
 *
 * - `update --release V [--yes]` (not --version: @effect/cli answers that flag itself): fetches
 *   and verifies the release's manifest, shows what it is, asks (unless --yes), then runs
 *   download → stage → activate under the state lock (the daemon holds it: stop it first; the
 *   health gate starts the new version). Progress on stderr.
 * - `update --status`: update.json (the gate's journal) and the versions `current` and
 *   `last-good` point at.
 *
 * Exit 0 activation requested (the gate decides) or status shown; 1 refused or failed; 2 usage.
 */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { createHash } from "node:crypto"
import { readlinkSync } from "node:fs"
import { posix } from "node:path"
import { createInterface } from "node:readline"
import { Console, Effect, Either, Layer, Option } from "effect"
import * as AgentConfigLayer from "../../layers/Config.js"
import { DatabaseLive } from "../../layers/Database.js"
import { HubReleases, HubReleasesLive } from "../../layers/HubReleases.js"
import { JournalLive } from "../../layers/Journal.js"
import { PrivilegedUpdateLive } from "../../layers/Privileged.js"
import { Progress, type ProgressEvent } from "../../layers/Progress.js"
import { ReleaseVersion } from "../../schema/release.js"
import { verifySignedManifest } from "../update/manifest.js"
import { readUpdateStatus, releaseVersionAt, runAgentUpdate, UpdateSettings, UpdateSettingsLive } from "../update/saga.js"
import { CliFailure, toCliFailure, usage } from "./failure.js"
import { cleanText, configSecrets, scrubberFor } from "./progress.js"
import { holdStateLock } from "./stateLock.js"
import { Schema } from "effect"

export interface UpdateCommand {
  readonly version: Option.Option<string>
  readonly yes: boolean
  readonly status: boolean
  readonly config: Option.Option<string>
}

const linkOf = (prefix: string, name: "current" | "last-good"): string => {
  try {
    return readlinkSync(posix.join(prefix, name))
  } catch {
    return "(none)"
  }
}

const showStatus = Effect.gen(function*() {
  const { file } = yield* AgentConfigLayer.AgentConfig
  const prefix = file.update.prefix
  const st = readUpdateStatus(prefix)
  const lines = [
    `update.json: ${Option.match(st, {
      onNone: () => "none (idle)",
      onSome: (s) => [s.state, s.version === null ? "" : `version ${s.version}`, s.slot === null ? "" : `slot ${s.slot}`, s.reason === null ? "" : `reason: ${s.reason}`].filter((x) => x !== "").join(", ")
    })}`,
    `current:     ${linkOf(prefix, "current")} (${Option.getOrElse(releaseVersionAt(prefix, "current"), () => "version unknown")})`,
    `last-good:   ${linkOf(prefix, "last-good")} (${Option.getOrElse(releaseVersionAt(prefix, "last-good"), () => "version unknown")})`
  ]
  yield* Console.log(lines.join("\n"))
})

const ask = (question: string) =>
  Effect.async<boolean>((resume) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr })
    rl.question(question, (answer) => {
      rl.close()
      resume(Effect.succeed(/^y(es)?$/i.test(answer.trim())))
    })
  })

const stderrProgress = (scrub: (s: string) => string) => {
  const clean = cleanText(scrub)
  const line = (e: ProgressEvent): string => {
    switch (e.kind) {
      case "op":
        return `op ${e.opId}: ${e.op}`
      case "step":
        return `${e.step}: ${e.state}${e.detail === undefined ? "" : ` (${e.detail})`}`
      case "task":
        return `${e.step}: task ${e.upid}`
      case "note":
        return e.text
    }
  }
  return Progress.of({ emit: (e) => Effect.sync(() => process.stderr.write(`${clean(line(e))}\n`)) })
}

const runUpdate = (versionIn: string, yes: boolean) =>
  Effect.gen(function*() {
    const { file } = yield* AgentConfigLayer.AgentConfig
    if (process.getuid?.() !== 0) return yield* usage("update runs as root on the host (the service user updates only on an operator-signed job)")
    if (file.hub === undefined) return yield* new CliFailure({ code: 2, message: "hub: required for 'update' (releases come from the hub)" })
    const version = yield* Schema.decodeUnknown(ReleaseVersion)(versionIn).pipe(Effect.mapError(() => usage("--release: expected a release version like 1.4.0")))
    const settings = yield* UpdateSettings
    const hub = yield* HubReleases
    // what the operator agrees to: the manifest's exact bytes, verified before anything is shown
    const fetched = yield* hub.manifest(version)
    const m = yield* Either.match(verifySignedManifest(fetched.manifest, fetched.signature, settings.signers), {
      onLeft: (e) => Effect.fail(new CliFailure({ code: 1, message: `release ${version} refused: ${e.message}` })),
      onRight: Effect.succeed
    })
    const sha = createHash("sha256").update(fetched.manifest).digest("hex")
    const bytes = m.files.reduce((n, f) => n + f.size, 0)
    yield* Console.error(`release ${m.version} (node ${m.node}, ${m.files.length} files, ${bytes} bytes, created ${m.created_at}), manifest sha256 ${sha}`)
    if (!yes) {
      if (process.stdin.isTTY !== true) return yield* usage("not a terminal: pass --yes to update without asking")
      if (!(yield* ask(`install ${m.version}? the health gate restarts the agent and reverts on a failed health window [y/N] `))) {
        return yield* new CliFailure({ code: 1, message: "not confirmed; nothing changed" })
      }
    }
    yield* holdStateLock(`update ${version}`)
    const started = yield* runAgentUpdate(version, sha, null)
    yield* Console.log(`op ${started.opId}: activating ${started.activating}; the health gate decides (felhom-agent update --status)`)
  }).pipe(Effect.scoped)

export const update = (o: UpdateCommand) =>
  Effect.gen(function*() {
    if (o.status) {
      if (Option.isSome(o.version)) return yield* usage("--status takes no --release")
      return yield* showStatus
    }
    if (Option.isNone(o.version)) return yield* usage("update needs --release V (or --status)")
    const { file } = yield* AgentConfigLayer.AgentConfig
    const scrub = scrubberFor(configSecrets(file))
    const services = Layer.mergeAll(
      JournalLive.pipe(Layer.provideMerge(DatabaseLive)),
      HubReleasesLive.pipe(Layer.provide(AgentConfigLayer.HubSettingsLive)),
      PrivilegedUpdateLive.pipe(Layer.provide(NodeCommandExecutor.layer)),
      UpdateSettingsLive
    )
    return yield* runUpdate(o.version.value, o.yes).pipe(
      Effect.provideService(Progress, stderrProgress(scrub)),
      Effect.provide(services)
    )
  }).pipe(
    Effect.mapError((e) => (e._tag === "CliFailure" ? e : toCliFailure(e))),
    Effect.provide(AgentConfigLayer.layer({ path: o.config, mode: "none" }))
  )
