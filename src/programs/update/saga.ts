/**
 * The self-update saga `agent-update` (issue 14, SPEC §15): download → stage → activate.
 *
 * - download: the manifest and its signature from the hub (HubReleases), the signature verified
 *   over the raw bytes by a release key (namespace felhom-release-v1), the manifest's version and
 *   SHA-256 compared with what the operator signed (the job's params) or asked for (the CLI), the
 *   total checked against update.max_release_bytes, then every file fetched by its SHA-256 into
 *   `<state_dir>/update/<version>/` (streamed, capped, hashed, renamed only when it matches),
 *   RELEASE.json and its .sig written last, and the tree checked once more as a whole.
 * - stage: the root helper copies that directory into a root-owned staging dir, runs `release
 *   verify` on it as root, and renames it into the inactive slot (update.json `staged`).
 * - activate: the root helper starts the health gate, which flips `current` and restarts the
 *   agent: this process's last step. The op stays in flight; the journal recovery of the next
 *   process (the new version's, or the old one's after a revert) reads update.json and ends it.
 *
 * A hostile hub can withhold a release or serve junk (refused: signature, size, hash), never
 * put a byte into a slot that a release key did not sign. Nothing here writes outside the
 * download directory; the slots, `current` and update.json are root's, changed by the helper only.
 */
import { createHash } from "node:crypto"
import { lstatSync, mkdirSync, rmSync } from "node:fs"
import { posix } from "node:path"
import { Clock, Context, Data, Effect, Either, Layer, Option, Schema } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { removeQuietly, syncDir, writeTemp } from "../../layers/durableFile.js"
import { HubReleases, type ReleaseWriteError } from "../../layers/HubReleases.js"
import type { AdmissionRefused, JournalError, JournalOp, StoreServices } from "../../layers/Journal.js"
import { beat, coverFor } from "../../layers/LoopProgress.js"
import { OpLog } from "../../layers/OpLog.js"
import { PrivilegedUpdate, UPDATE_STAGE_TIMEOUT } from "../../layers/Privileged.js"
import type { ConfigError } from "../../schema/errors.js"
import type { HubError } from "../../schema/hub.js"
import { DEFAULT_PREFIX, UPDATE_STATE_FILE, UPDATE_STATES, type UpdateState } from "../../schema/install.js"
import { AgentUpdateOperation, type OperationOf, type SignedAuthorization } from "../../schema/operations.js"
import { MANIFEST_FILE, type ReleaseManifest, SIGNATURE_FILE } from "../../schema/release.js"
import type { SshPublicKey } from "../../schema/sshsig.js"
import { type Admission, beginOperation, emitProgress, noAdmission, type Saga } from "../control/steps.js"
import type { Outcome } from "../control/recover.js"
import { parseReleaseSigners, readSmall, verifySignedManifest, verifyTree } from "./manifest.js"

/** The one state_dir the root helper stages from (fixed inside configs/libexec/felhom-update). */
export const HELPER_STATE_DIR = "/var/lib/felhom-agent"

export interface UpdateSettingsShape {
  readonly stateDir: string
  /** The one state_dir the helper stages from: HELPER_STATE_DIR (tests: their scratch dir). */
  readonly helperStateDir: string
  readonly prefix: string
  readonly signers: ReadonlyArray<SshPublicKey>
  readonly maxReleaseBytes: number
}

export class UpdateSettings extends Context.Tag("felhom/UpdateSettings")<UpdateSettings, UpdateSettingsShape>() {}

/** From the config: state_dir and the update block (signers parsed; none is not an error here). */
export const UpdateSettingsLive: Layer.Layer<UpdateSettings, ConfigError, AgentConfig> = Layer.effect(
  UpdateSettings,
  Effect.flatMap(AgentConfig, ({ file }) =>
    Either.match(parseReleaseSigners(file.update.release_signers), {
      onLeft: Effect.fail,
      onRight: (signers) =>
        Effect.succeed({ stateDir: file.state_dir, helperStateDir: HELPER_STATE_DIR, prefix: file.update.prefix, signers, maxReleaseBytes: file.update.max_release_bytes })
    }))
)

/** Why an update did not go ahead; one line, never a secret (hub texts are scrubbed upstream). */
export class UpdateFailed extends Data.TaggedError("UpdateFailed")<{
  readonly step: "precheck" | "download" | "stage" | "activate"
  readonly message: string
}> {}

export const downloadDirOf = (stateDir: string, version: string) => posix.join(stateDir, "update", version)

export interface UpdateStarted {
  readonly opId: string
  /** The version the helper is activating (`activating <version>`): the gate now decides. */
  readonly activating: string
}

const codeOf = (e: unknown): string =>
  typeof e === "object" && e !== null && "code" in e ? String((e as { readonly code: unknown }).code) : "error"

/**
 * Removes the download directory; never through a link: its parent `update` must be a real
 * directory (the service user owns state_dir; a planted link would aim root's CLI elsewhere), and
 * rmSync removes a link inside itself, not its target.
 */
const removeDownload = (dir: string) => Effect.sync(() => {
  try {
    if (!lstatSync(posix.dirname(dir)).isDirectory()) return
    rmSync(dir, { recursive: true, force: true })
  } catch {
    // best effort: a leftover is replaced by the next download of this version
  }
})

/** A fresh, empty download directory below `<state_dir>/update` (a real directory, never a link). */
const freshDir = (stateDir: string, version: string) => {
  const parent = posix.join(stateDir, "update")
  const dir = downloadDirOf(stateDir, version)
  const cannot = (why: string) => new UpdateFailed({ step: "download", message: `cannot prepare ${dir}: ${why}` })
  return Effect.try({ try: () => mkdirSync(parent, { recursive: true, mode: 0o755 }), catch: (e) => cannot(codeOf(e)) }).pipe(
    // a symlinked `update` (the service user owns state_dir) would send the writes elsewhere
    Effect.zipRight(Effect.try({ try: () => lstatSync(parent).isDirectory(), catch: (e) => cannot(codeOf(e)) })),
    Effect.filterOrFail((isDir) => isDir, () => cannot(`${parent} is not a directory`)),
    Effect.zipRight(Effect.try({
      try: () => {
        rmSync(dir, { recursive: true, force: true })
        mkdirSync(dir, { mode: 0o755 })
        return dir
      },
      catch: (e) => cannot(codeOf(e))
    }))
  )
}

const sha256Hex = (b: Uint8Array) => createHash("sha256").update(b).digest("hex")

/** Writes one of the manifest files (0644) by temp + rename. */
const placeSmall = (dir: string, name: string, bytes: Uint8Array) =>
  Effect.gen(function*() {
    const target = posix.join(dir, name)
    const tmp = yield* writeTemp(target, bytes, 0o644)
    yield* Effect.tryPromise(() => import("node:fs/promises").then((fs) => fs.rename(tmp, target))).pipe(Effect.tapError(() => removeQuietly(tmp)))
  }).pipe(Effect.mapError((e) => new UpdateFailed({ step: "download", message: `cannot write ${name}: ${codeOf(e.error)}` })))

const fromHub = (e: HubError | ReleaseWriteError) => new UpdateFailed({ step: "download", message: e.message })

/**
 * The download step. Verifies before it reads, checks the signed version and manifest hash, then
 * fetches; RELEASE.json(.sig) land last, so a directory without them is a partial download.
 */
export const download = (s: Saga<"agent-update">) =>
  Effect.gen(function*() {
    const settings = yield* UpdateSettings
    const hub = yield* HubReleases
    const { manifestSha256, version } = s.op
    const dir = downloadDirOf(settings.stateDir, version)
    yield* s.started("download", { dir })
    const fetched = yield* Effect.mapError(hub.manifest(version), fromHub)
    const manifest: ReleaseManifest = yield* Either.match(verifySignedManifest(fetched.manifest, fetched.signature, settings.signers), {
      onLeft: (e) => Effect.fail(new UpdateFailed({ step: "download", message: `release ${version} refused: ${e.message}` })),
      onRight: Effect.succeed
    })
    if (manifest.version !== version) {
      return yield* new UpdateFailed({ step: "download", message: `the hub served a release of version ${manifest.version} for ${version}; refused` })
    }
    if (sha256Hex(fetched.manifest) !== manifestSha256) {
      return yield* new UpdateFailed({
        step: "download",
        message: `the manifest of ${version} is not the one signed for (SHA-256 differs from ${manifestSha256.slice(0, 16)}…); refused`
      })
    }
    const total = manifest.files.reduce((n, f) => n + f.size, 0)
    if (total > settings.maxReleaseBytes) {
      return yield* new UpdateFailed({ step: "download", message: `release ${version} is ${total} bytes, more than update.max_release_bytes (${settings.maxReleaseBytes}); refused` })
    }
    yield* freshDir(settings.stateDir, version)
    for (const [i, f] of manifest.files.entries()) {
      const target = posix.join(dir, f.path)
      yield* Effect.try({
        try: () => mkdirSync(posix.dirname(target), { recursive: true, mode: 0o755 }),
        catch: (e) => new UpdateFailed({ step: "download", message: `cannot create the directory of ${f.path}: ${codeOf(e)}` })
      })
      yield* emitProgress({ kind: "note", text: `download ${i + 1}/${manifest.files.length}: ${f.path} (${f.size} bytes)` })
      yield* Effect.mapError(hub.file(version, f, target), fromHub)
    }
    yield* placeSmall(dir, SIGNATURE_FILE, fetched.signature)
    yield* placeSmall(dir, MANIFEST_FILE, fetched.manifest)
    yield* Effect.mapError(syncDir(dir), () => new UpdateFailed({ step: "download", message: "cannot sync the download directory" }))
    // the whole tree once more, as the helper will: nothing else got in, nothing changed since
    yield* Either.match(verifyTree(dir, manifest), {
      onLeft: (e) => Effect.fail(new UpdateFailed({ step: "download", message: `the downloaded tree does not match: ${e.message}` })),
      onRight: () => Effect.void
    })
    yield* s.done("download", { dir, files: manifest.files.length, bytes: total })
    return dir
  })

/** Journals and runs the saga; see the module comment. The op is admitted with `admission`. */
export const runAgentUpdate = (
  version: string,
  manifestSha256: string,
  authorization: SignedAuthorization | null,
  admission: Admission = noAdmission
): Effect.Effect<UpdateStarted, UpdateFailed | AdmissionRefused | JournalError, StoreServices | UpdateSettings | HubReleases | PrivilegedUpdate> =>
  Effect.gen(function*() {
    const settings = yield* UpdateSettings
    const priv = yield* PrivilegedUpdate
    const ops = yield* OpLog
    // checked before anything is admitted: a refusal here spends no nonce and journals nothing
    if (posix.resolve(settings.stateDir) !== settings.helperStateDir) {
      return yield* new UpdateFailed({
        step: "precheck",
        message: `state_dir is ${settings.stateDir}: the root helper stages only from ${settings.helperStateDir}/update/<version>/ (fixed inside it); self-update needs the default state_dir`
      })
    }
    if (!Schema.is(AgentUpdateOperation.fields.version)(version) || !Schema.is(AgentUpdateOperation.fields.manifestSha256)(manifestSha256)) {
      return yield* new UpdateFailed({ step: "precheck", message: "expected a release version like 1.4.0 and a manifest SHA-256 of 64 lowercase hex digits" })
    }
    if (settings.signers.length === 0) return yield* new UpdateFailed({ step: "precheck", message: "no release signers configured (update.release_signers)" })
    const busy = (yield* ops.inFlight).find((o) => o.kind === "agent-update")
    if (busy !== undefined) {
      return yield* new UpdateFailed({ step: "precheck", message: `update op ${busy.id} is still in flight (its outcome is read at the next start); not started again` })
    }
    const s = yield* beginOperation<"agent-update">({ _tag: "agent-update", vmid: null, version, manifestSha256, authorization }, admission)
    yield* emitProgress({ kind: "op", opId: s.id, op: "agent-update", vmid: null })
    const failed = (e: { readonly message: string }) => ops.finish(s.id, "failed", e.message)
    const dir = yield* download(s).pipe(
      Effect.tapError((e) => Effect.zipRight(removeDownload(downloadDirOf(settings.stateDir, version)), failed(e)))
    )
    yield* s.started("stage")
    // copying and verifying as root may take minutes without a beat; bounded by the helper's timeout
    yield* coverFor("update stage", UPDATE_STAGE_TIMEOUT)
    const staged = yield* priv.stage(version).pipe(
      Effect.mapError((e) => new UpdateFailed({ step: "stage", message: e.message })),
      Effect.tapError((e) => Effect.zipRight(removeDownload(dir), failed(e)))
    )
    yield* s.done("stage", { slot: staged.slot })
    yield* beat("update staged")
    // the helper made its own root-owned copy: the download is no longer needed
    yield* removeDownload(dir)
    yield* s.started("activate", { prefix: settings.prefix })
    const answer = yield* priv.activate.pipe(
      Effect.catchAll((e) => {
        const err = new UpdateFailed({ step: "activate", message: e.message })
        // the helper refused (exit status): the gate was not started, nothing changed. Anything
        // else (a timeout, garbled output) may have started it: left in flight for the recovery.
        return e.reason === "NonZeroExit" || e.reason === "InvalidArgument" ? Effect.zipRight(failed(err), Effect.fail(err)) : Effect.fail(err)
      })
    )
    yield* s.done("activate", { prefix: settings.prefix, answer })
    if (answer !== version) {
      // the gate runs whatever was staged; recovery compares what then runs with this op's version
      return yield* new UpdateFailed({ step: "activate", message: `the helper is activating ${answer}, not ${version}; the health gate decides, recovery records the outcome` })
    }
    return { opId: s.id, activating: answer }
  })

// ---------------------------------------------------------------------------------------------
// Recovery

export interface UpdateStatusFile {
  readonly state: UpdateState
  readonly version: string | null
  readonly slot: string | null
  readonly reason: string | null
}

const str = (u: unknown, max = 300): string | null => (typeof u === "string" ? u.slice(0, max) : null)

/** `<prefix>/update.json` (written by the helper and the gate); None when absent or unreadable. */
export const readUpdateStatus = (prefix: string): Option.Option<UpdateStatusFile> => {
  const raw = readSmall(posix.join(prefix, UPDATE_STATE_FILE), 64 * 1024)
  if (Either.isLeft(raw)) return Option.none()
  try {
    const u: unknown = JSON.parse(Buffer.from(raw.right).toString("utf8"))
    if (typeof u !== "object" || u === null) return Option.none()
    const o = u as Record<string, unknown>
    const state = UPDATE_STATES.find((s) => s === o["state"])
    if (state === undefined) return Option.none()
    return Option.some({ state, version: str(o["version"], 80), slot: str(o["slot"], 40), reason: str(o["reason"]) })
  } catch {
    return Option.none()
  }
}

/** The version in `<prefix>/<link>/RELEASE.json` (what runs, or what the gate reverts to). */
export const releaseVersionAt = (prefix: string, link: "current" | "last-good"): Option.Option<string> => {
  const raw = readSmall(posix.join(prefix, link, MANIFEST_FILE), 4 * 1024 * 1024)
  if (Either.isLeft(raw)) return Option.none()
  try {
    const u: unknown = JSON.parse(Buffer.from(raw.right).toString("utf8"))
    const v = typeof u === "object" && u !== null ? (u as Record<string, unknown>)["version"] : undefined
    return typeof v === "string" ? Option.some(v.slice(0, 80)) : Option.none()
  } catch {
    return Option.none()
  }
}

/** How long an activated update may stay `staged` before the gate counts as never having run. */
export const GATE_START_GRACE_MS = 30 * 60 * 1000

const stepData = (op: JournalOp, name: string): Record<string, unknown> => {
  const d = op.steps.find((s) => s.name === name)?.data
  return typeof d === "object" && d !== null ? (d as Record<string, unknown>) : {}
}

/**
 * The recovery rule (control/recover.ts). Never re-runs a step, never touches a slot:
 * - activate not recorded: abandoned; the download directory (if any) removed; failed, nothing
 *   changed (a staged slot only runs when a later activate starts the gate);
 * - activate recorded: update.json and current's RELEASE.json decide: committed or trial with
 *   this version running → done; reverted → failed with the gate's reason; still staged within
 *   GATE_START_GRACE_MS of the activate → left in flight (the gate has not run yet); anything
 *   else → failed, nothing to undo (the agent never changes `current` itself).
 */
export const recoverAgentUpdate = (op: JournalOp, typed: OperationOf<"agent-update">): Effect.Effect<Outcome, JournalError, StoreServices> =>
  Effect.gen(function*() {
    const ops = yield* OpLog
    const end = (outcome: "done" | "failed", detail: string) => Effect.as(ops.finish(op.id, outcome, `recovered: ${detail}`), { outcome, detail })
    if (!op.steps.some((s) => s.name === "activate")) {
      const dir = str(stepData(op, "download")["dir"], 4096)
      // only ever this op's own download directory (`.../update/<version>`), whatever the journal says
      if (dir !== null && posix.isAbsolute(dir) && dir === posix.normalize(dir) && dir.endsWith(`/update/${typed.version}`)) {
        yield* removeDownload(dir)
      }
      return yield* end("failed", "interrupted before activation; nothing changed")
    }
    const prefixData = str(stepData(op, "activate")["prefix"], 4096)
    const prefix = prefixData !== null && posix.isAbsolute(prefixData) ? prefixData : DEFAULT_PREFIX
    const status = readUpdateStatus(prefix)
    const running = releaseVersionAt(prefix, "current")
    if (Option.isNone(status)) return yield* end("failed", `activation requested, but ${UPDATE_STATE_FILE} is absent or unreadable; nothing to undo`)
    const st = status.value
    const ours = Option.contains(running, typed.version) && (st.version === null || st.version === typed.version)
    if ((st.state === "committed" || st.state === "trial") && ours) {
      return yield* end("done", `${typed.version} is running (${st.state}${st.state === "trial" ? ": the health gate's window is open" : ""})`)
    }
    if (st.state === "reverted") {
      return yield* end("failed", `the health gate reverted ${typed.version}: ${st.reason ?? "no reason given"}`)
    }
    // The daemon recovers an in-flight op whenever it is idle, so this process may look before the
    // gate it just started has flipped anything: still `staged` is left in flight, for a bounded time.
    const activatedAt = op.steps.find((x) => x.name === "activate")?.updatedAtMs ?? op.updatedAtMs
    if (st.state === "staged" && (yield* Clock.currentTimeMillis) - activatedAt < GATE_START_GRACE_MS) {
      return { outcome: "in_flight" as const, detail: "activation requested; the health gate has not run yet" }
    }
    return yield* end("failed", `activation did not take effect (${UPDATE_STATE_FILE}: ${st.state}, running ${Option.getOrElse(running, () => "unknown")}); nothing to undo`)
  })

// ---------------------------------------------------------------------------------------------
// The daemon's hook (jobs.ts): present only where the update services are wired

export interface AgentUpdaterShape {
  readonly run: (
    version: string,
    manifestSha256: string,
    authorization: SignedAuthorization | null,
    admission: Admission
  ) => Effect.Effect<UpdateStarted, UpdateFailed | AdmissionRefused | JournalError, StoreServices>
}

export class AgentUpdater extends Context.Tag("felhom/AgentUpdater")<AgentUpdater, AgentUpdaterShape>() {}

/** The saga with its services captured; jobs.ts finds it through Effect.serviceOption. */
export const AgentUpdaterLive: Layer.Layer<AgentUpdater, never, UpdateSettings | HubReleases | PrivilegedUpdate> = Layer.effect(
  AgentUpdater,
  Effect.gen(function*() {
    const ctx = yield* Effect.context<UpdateSettings | HubReleases | PrivilegedUpdate>()
    return AgentUpdater.of({
      run: (version, sha, authorization, admission) => runAgentUpdate(version, sha, authorization, admission).pipe(Effect.provide(ctx))
    })
  })
)
