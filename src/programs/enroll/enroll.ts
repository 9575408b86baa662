/**
 * `felhom-agent enroll` (issue 13, SPEC §10, §13): a fresh PVE host becomes a felhom host, run once
 * as root and safe to run again. Each step is recorded in the step table (migration
 * 0014_enrollment); a re-run skips a done step after a cheap check that it still holds, and every
 * step is idempotent, so a crash anywhere is recovered by running enroll again.
 *
 * New host:     preflight → pve-access → config → sudoers → units → register → golden → pbs-key
 *               → recovery-code → done
 * Restore mode: preflight → register (restore bundle) → unwrap-key (the person types R) →
 *               pve-access → config → sudoers → units → restore → done
 *
 * What can go wrong, and what stops it:
 * - K is generated once and never replaced (PbsKey.install refuses another key; a re-run reads
 *   the installed one). Replacing K would orphan every offsite backup.
 * - R is uploaded (wrapped) only after the person typed it back; the hub keeps the previous blob
 *   until it answers the compare-and-swap PUT. A crash after the PUT: the re-run finds the hub
 *   holding a blob for this key and is done (the PUT happened only after the type-back).
 * - The one-time enrollment token is spent by the hub's answer: the api key and host id are
 *   written to disk at once, and a re-run with them on disk never registers again.
 * - A hostile hub: the escrow blob must unwrap with the person's code to the fingerprint the hub
 *   states, and be bound to the host id it handed out; the tunnel token goes to a 0600 file; the
 *   restore directive is handed to the restore engine, which checks what it names again.
 * - Secrets (K, R, the token secret, the api key, the tunnel token) never reach the step table,
 *   an error, a log line or agent.json.
 */
import { Clock, Effect, Option, Redacted, Schema } from "effect"
import { hostname as osHostname } from "node:os"
import { readFile } from "node:fs/promises"
import { HostSetup, FELHOM_TOKEN_ID, HOST_FILES } from "../../layers/HostSetup.js"
import { PbsKey } from "../../layers/PbsKey.js"
import { decodeConfigObject, validateForMode } from "../../layers/Config.js"
import { type EnrollMode, type KeyFingerprint, RestoreBundle } from "../../schema/escrow.js"
import { makeVault } from "../protection/creds.js"
import { generatePbsKey, paperkeyText, plainKeyFile, unwrapKey, wrapKey } from "../escrow/keyFile.js"
import { generateRecoveryCode } from "../escrow/recoveryCode.js"
import { VERSION } from "../../version.js"
import { askAndUnwrap, showAndConfirm } from "./code.js"
import { EnrollFailed, EnrollHub, EnrollIO, EnrollSteps, type StepRow } from "./ports.js"

export const NEW_STEPS = ["preflight", "pve-access", "config", "sudoers", "units", "register", "golden", "pbs-key", "recovery-code", "done"] as const
export const RESTORE_STEPS = ["preflight", "register", "unwrap-key", "pve-access", "config", "sudoers", "units", "restore", "done"] as const

/** Where the restore bundle is kept between the hub's answer and the restore (root-only; no tunnel token). */
export const RESTORE_BUNDLE_FILE = "/etc/felhom-agent/restore-bundle.json"

export interface RestoreOutcome {
  readonly ok: boolean
  /** The per-guest report, for a person. */
  readonly human: string
  /** The same, for --json. */
  readonly json: unknown
}

export interface EnrollInput {
  readonly mode: EnrollMode
  readonly hubUrl: string
  readonly hubCa: string | undefined
  /** The operator's one-time enrollment token, read only when the hub must be asked. */
  readonly token: Effect.Effect<Redacted.Redacted<string>, EnrollFailed>
  /** The PVE node; default: the base config's proxmox.node, else this host's short name. */
  readonly node: string | undefined
  /** The base config (--config): authz signers, golden, local_api...; its secrets are moved out. */
  readonly base: Readonly<Record<string, unknown>>
  readonly paperkey: boolean
  readonly golden: boolean
}

export interface EnrollDeps {
  /** Whether this process is root. */
  readonly isRoot: boolean
  /** Builds the golden archive with the written config (the bring-up program); a description. */
  readonly buildGolden: Effect.Effect<string, EnrollFailed>
  /** Restores the host's guests (the host-loss engine) with the written config. */
  readonly restoreHost: (input: { readonly bundle: RestoreBundle; readonly keyFingerprint: KeyFingerprint }) => Effect.Effect<RestoreOutcome, EnrollFailed>
  /** Tests: runs after a step's work, before it is recorded done (a crash there). */
  readonly afterWork?: (step: string) => Effect.Effect<void>
}

export interface EnrollResult {
  readonly mode: EnrollMode
  readonly hostId: string
  readonly keyFingerprint: KeyFingerprint
  readonly escrowGeneration: number | null
  readonly steps: ReadonlyArray<{ readonly step: string; readonly outcome: "done" | "skipped" | "redone" }>
  readonly restore: RestoreOutcome | null
}

const DEFAULT_PVE_URL = "https://127.0.0.1:8006"

type Json = Record<string, unknown>
const isObject = (u: unknown): u is Json => typeof u === "object" && u !== null && !Array.isArray(u)
const obj = (u: unknown): Json => (isObject(u) ? { ...u } : {})

const fail = (step: string, message: string, code?: number) => new EnrollFailed({ step, message, ...(code === undefined ? {} : { code }) })

/** The base config without the secrets it may carry (they live in secrets.env). */
const withoutSecrets = (base: Readonly<Json>): Json => {
  const out: Json = structuredClone(base) as Json
  if (isObject(out["proxmox"])) delete (out["proxmox"] as Json)["token_secret"]
  if (isObject(out["hub"])) delete (out["hub"] as Json)["api_key"]
  // the tunnel token reaches the daemon through secrets.env (FELHOM_AGENT_CLOUDFLARED_TOKEN)
  if (isObject(out["cloudflared"])) delete (out["cloudflared"] as Json)["token"]
  return out
}

/** agent.json as it will be written: no secret in it. */
export const agentConfigObject = (input: EnrollInput, facts: { readonly hostId: string | undefined; readonly pin: string; readonly node: string }): Json => {
  const base = withoutSecrets(input.base)
  const proxmox = obj(base["proxmox"])
  const hub = obj(base["hub"])
  delete hub["ca_file"]
  return {
    ...base,
    ...(facts.hostId === undefined ? {} : { host_id: facts.hostId }),
    proxmox: {
      ...proxmox,
      url: typeof proxmox["url"] === "string" ? proxmox["url"] : DEFAULT_PVE_URL,
      token_id: FELHOM_TOKEN_ID,
      node: facts.node,
      tls: { fingerprint_sha256: facts.pin }
    },
    hub: { ...hub, url: input.hubUrl, ...(input.hubCa === undefined ? {} : { ca_file: input.hubCa }) }
  }
}

/** Checks a config object as the daemon will read it (secrets from the env file stand in). */
const validate = (step: string, config: Json, mode: "selftest" | "daemon") => {
  const withSecrets = structuredClone(config) as Json
  ;(withSecrets["proxmox"] as Json)["token_secret"] = "placeholder-secret"
  ;(withSecrets["hub"] as Json)["api_key"] = "placeholder-api-key-0123456789"
  const decoded = decodeConfigObject(withSecrets)
  if (decoded._tag === "Left") return Effect.fail(fail(step, `the agent config would not load: ${decoded.left.message}`, 2))
  const valid = validateForMode(decoded.right, mode)
  return valid._tag === "Left" ? Effect.fail(fail(step, `the agent config would not load: ${valid.left.message}`, 2)) : Effect.succeed(decoded.right)
}

const readJsonFile = (path: string) =>
  Effect.tryPromise(() => readFile(path, "utf8")).pipe(
    Effect.flatMap((t) => Effect.try(() => JSON.parse(t) as unknown)),
    Effect.option,
    Effect.map(Option.filter(isObject))
  )

export const enroll = (input: EnrollInput, deps: EnrollDeps) =>
  Effect.gen(function*() {
    const io = yield* EnrollIO
    const setup = yield* HostSetup
    const pbsKey = yield* PbsKey
    const hub = yield* EnrollHub
    const table = yield* EnrollSteps
    const rows = new Map<string, StepRow>((yield* table.all).map((r) => [r.step, r]))
    const outcomes: Array<EnrollResult["steps"][number]> = []
    const say = (s: string) => io.say(s)

    const earlier = rows.get("register")?.detail["mode"]
    if (earlier !== undefined && earlier !== input.mode) {
      return yield* fail("preflight", `this host was already registered in ${String(earlier)} mode; it cannot enroll in ${input.mode} mode now`, 2)
    }

    /**
     * One step: a done step is skipped when `verify` still holds (else redone); otherwise its work
     * runs (every work is idempotent) and it is recorded done with its public facts.
     */
    const step = <D extends Json, R = never>(name: string, work: Effect.Effect<D, EnrollFailed, R>, verify: (detail: Json) => Effect.Effect<boolean, EnrollFailed> = () => Effect.succeed(true)) =>
      Effect.gen(function*() {
        const row = rows.get(name)
        let outcome: "done" | "redone" = "done"
        if (row?.status === "done") {
          if (yield* verify(row.detail)) {
            outcomes.push({ step: name, outcome: "skipped" })
            yield* say(`enroll: ${name}: already done`)
            return row.detail as D
          }
          outcome = "redone"
          yield* say(`enroll: ${name}: recorded done but no longer holds; doing it again`)
        }
        yield* table.started(name)
        const detail = yield* work
        if (deps.afterWork !== undefined) yield* deps.afterWork(name)
        yield* table.done(name, detail)
        rows.set(name, { step: name, status: "done", detail })
        outcomes.push({ step: name, outcome })
        yield* say(`enroll: ${name}: done`)
        return detail
      })

    // --- facts every step may need -------------------------------------------------------------

    const agentJsonPath = setup.path(HOST_FILES.agentJson)
    const bundlePath = setup.path(RESTORE_BUNDLE_FILE)
    const baseProxmox = obj(input.base["proxmox"])
    const node = input.node ?? (typeof baseProxmox["node"] === "string" ? baseProxmox["node"] : osHostname().split(".")[0] ?? "pve")
    const stateDir = typeof input.base["state_dir"] === "string" ? input.base["state_dir"] : "/var/lib/felhom-agent"

    const writtenHostId = Effect.map(readJsonFile(agentJsonPath), (c) =>
      Option.flatMap(c, (j) => (typeof j["host_id"] === "string" ? Option.some(j["host_id"]) : Option.none())))

    const writeConfig = (hostId: string | undefined, mode: "selftest" | "daemon", stepName: string) =>
      Effect.gen(function*() {
        const pin = yield* setup.pveTlsFingerprint.pipe(Effect.mapError((e) => fail(stepName, e.message)))
        const config = agentConfigObject(input, { hostId, pin, node })
        yield* validate(stepName, config, mode)
        yield* setup.writeConfig(JSON.stringify(config, null, 2)).pipe(Effect.mapError((e) => fail(stepName, e.message)))
      })

    const secrets = setup.readSecrets.pipe(Effect.mapError((e) => fail("secrets", e.message)))

    /** The daemon's unit, enabled (not started) only now: never before the key is escrowed or the restore ran. */
    const enableUnits = setup.enableUnits.pipe(Effect.mapError((e) => fail("done", e.message)), Effect.as({}))

    // --- the steps -------------------------------------------------------------------------------

    const preflight = step("preflight", Effect.gen(function*() {
      if (!deps.isRoot) return yield* fail("preflight", "enroll must run as root (it installs the PBS key, the sudoers drop-in and the units)", 2)
      if (!input.hubUrl.startsWith("https://")) return yield* fail("preflight", "--hub must be an https:// URL", 2)
      const signers = obj(input.base["authz"])["signers"]
      if (!Array.isArray(signers) || signers.length === 0) {
        return yield* fail("preflight", "the base config (--config) needs authz.signers: the operator keys that sign destructive and rotation ops", 2)
      }
      yield* setup.pveTlsFingerprint.pipe(Effect.mapError((e) => fail("preflight", `${e.message} (is this a PVE host?)`)))
      return {}
    }), () => Effect.succeed(deps.isRoot))

    const pveAccess = step("pve-access", Effect.gen(function*() {
      const stored = yield* secrets
      const r = yield* setup.pveAccess({ haveSecret: Option.isSome(stored.proxmoxTokenSecret) }).pipe(Effect.mapError((e) => fail("pve-access", e.message)))
      // the secret is shown by PVE once: onto disk before anything else can fail
      if (Option.isSome(r.tokenSecret)) {
        yield* setup.writeSecrets({ proxmoxTokenSecret: r.tokenSecret.value }).pipe(Effect.mapError((e) => fail("pve-access", e.message)))
      }
      return { role: r.role, user: r.user, token: Option.isSome(r.tokenSecret) ? "made" : "kept" }
    }), () => Effect.map(secrets, (s) => Option.isSome(s.proxmoxTokenSecret)))

    const config = step("config", Effect.gen(function*() {
      const hostId = Option.getOrUndefined(yield* writtenHostId)
      yield* writeConfig(hostId, "selftest", "config")
      return {}
    }), () => Effect.map(readJsonFile(agentJsonPath), Option.isSome))

    const sudoers = step("sudoers", Effect.gen(function*() {
      yield* setup.installSudoers.pipe(Effect.mapError((e) => fail("sudoers", e.message)))
      yield* setup.installHelpers.pipe(Effect.mapError((e) => fail("sudoers", e.message)))
      return {}
    }), () => Effect.tryPromise(() => readFile(setup.path(HOST_FILES.sudoers))).pipe(Effect.as(true), Effect.orElseSucceed(() => false)))

    const units = step("units", Effect.gen(function*() {
      yield* setup.installUnits.pipe(Effect.mapError((e) => fail("units", e.message)))
      return {}
    }), () => Effect.tryPromise(() => readFile(setup.path(`${HOST_FILES.unitDir}/felhom-agent.service`))).pipe(Effect.as(true), Effect.orElseSucceed(() => false)))

    const register = step("register", Effect.gen(function*() {
      const stored = yield* secrets
      // the hub answered before (a crash before this was recorded): never register twice; the
      // host id was written with the api key in one atomic write
      if (Option.isSome(stored.hubApiKey)) {
        const known = Option.orElse(stored.hostId, () => Option.none<string>())
        if (Option.isNone(known)) {
          return yield* fail("register", "an api key is stored without the host id it belongs to: ask the operator for a new enrollment token and remove the hub api key line from secrets.env")
        }
        if (input.mode === "restore" && Option.isNone(yield* readJsonFile(bundlePath))) {
          return yield* fail("register", `registered, but the restore bundle ${bundlePath} is gone: ask the operator for a new restore-mode enrollment token`)
        }
        yield* writeConfig(known.value, "daemon", "register")
        return { host_id: known.value, mode: input.mode }
      }
      // everything that can be checked before the one-time token is spent
      const pinNow = yield* setup.pveTlsFingerprint.pipe(Effect.mapError((e) => fail("register", e.message)))
      yield* validate("register", agentConfigObject(input, { hostId: "host-pending", pin: pinNow, node }), "daemon")
      const vault = yield* makeVault(stateDir).pipe(Effect.mapError((e) => fail("register", e.message)))
      const token = yield* input.token
      const hostname = osHostname()
      const res = yield* hub.enroll(token, {
        mode: input.mode,
        hostname: /^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$/.test(hostname) ? hostname : node,
        node,
        agent_version: VERSION.slice(0, 64),
        creds_public_key: vault.publicKey
      }).pipe(Effect.mapError((e) =>
        fail("register", `${e.message}${e.status === 401 || e.status === 403 ? " (the enrollment token was refused: spent, expired or mistyped?)" : ""}`)
      ))
      if (input.mode === "restore" && res.restore === undefined) return yield* fail("register", "the hub answered a restore-mode enrollment without a restore bundle")
      if (input.mode === "new" && res.restore !== undefined) return yield* fail("register", "the hub answered a new-host enrollment with a restore bundle; refusing it")
      // the token is spent now: the api key and its host id go to disk (one atomic write) before anything else
      yield* setup.writeSecrets({ hubApiKey: res.api_key, hostId: res.host_id }).pipe(Effect.mapError((e) => fail("register", e.message)))
      if (res.restore !== undefined) {
        const bundle = res.restore
        if (bundle.escrow.host_id !== res.host_id) {
          return yield* fail("register", `the restore bundle's escrow blob belongs to host ${bundle.escrow.host_id}, not ${res.host_id}; refusing it`)
        }
        yield* setup.writeTunnelToken(bundle.tunnel_token).pipe(Effect.mapError((e) => fail("register", e.message)))
        const { tunnel_token: _omit, ...kept } = Schema.encodeSync(RestoreBundle)(bundle)
        yield* setup.writeSecretFile(RESTORE_BUNDLE_FILE, JSON.stringify(kept)).pipe(Effect.mapError((e) => fail("register", e.message)))
      }
      yield* writeConfig(res.host_id, "daemon", "register")
      return { host_id: res.host_id, mode: input.mode }
    }), (d) => Effect.map(secrets, (s) => Option.isSome(s.hubApiKey) && typeof d["host_id"] === "string"))

    const hostIdOf = (d: Json) => String(d["host_id"])

    const readBundle = Effect.gen(function*() {
      const stored = yield* readJsonFile(bundlePath)
      if (Option.isNone(stored)) return yield* fail("restore", `cannot read the restore bundle ${bundlePath}`)
      const tunnel = yield* Effect.tryPromise(() => readFile(setup.path(HOST_FILES.tunnelToken), "utf8")).pipe(
        Effect.mapError(() => fail("restore", `cannot read ${setup.path(HOST_FILES.tunnelToken)}`))
      )
      return yield* Schema.decodeUnknown(RestoreBundle)({ ...stored.value, tunnel_token: tunnel.trim() }).pipe(
        Effect.mapError(() => fail("restore", `${bundlePath} is not a restore bundle`))
      )
    })

    // --- new host --------------------------------------------------------------------------------

    const keyStep = step("pbs-key", Effect.gen(function*() {
      const installed = yield* pbsKey.fingerprint.pipe(Effect.mapError((e) => fail("pbs-key", e.message)))
      if (Option.isSome(installed)) {
        // never regenerated: check the installed one and keep it
        yield* pbsKey.read.pipe(Effect.mapError((e) => fail("pbs-key", e.message)))
        return { fingerprint: installed.value }
      }
      const now = yield* Clock.currentTimeMillis
      const k = generatePbsKey()
      const r = yield* pbsKey.install(Redacted.make(plainKeyFile(Redacted.value(k), now))).pipe(Effect.mapError((e) => fail("pbs-key", e.message)))
      return { fingerprint: r.fingerprint }
    }), (d) =>
      pbsKey.fingerprint.pipe(
        Effect.map((fp) => Option.isSome(fp) && fp.value === d["fingerprint"]),
        Effect.orElseSucceed(() => false)
      ))

    const escrowStep = (fingerprint: KeyFingerprint) =>
      step("recovery-code", Effect.gen(function*() {
        const apiKey = Option.getOrUndefined((yield* secrets).hubApiKey)
        if (apiKey === undefined) return yield* fail("recovery-code", "no hub api key is stored (the register step did not finish)")
        const current = yield* hub.escrow(apiKey).pipe(Effect.mapError((e) => fail("recovery-code", e.message)))
        if (Option.isSome(current)) {
          if (current.value.fingerprint === fingerprint) {
            // uploaded before a crash: the upload happens only after the code was typed back
            yield* say("enroll: recovery-code: the hub already holds this key's escrow (uploaded before an interruption)")
            return { generation: current.value.generation }
          }
          return yield* fail("recovery-code", `the hub holds an escrow blob for another key (${current.value.fingerprint}); refusing to replace it: ask the operator`)
        }
        const plain = yield* pbsKey.read.pipe(Effect.mapError((e) => fail("recovery-code", e.message)))
        const k = yield* unwrapKey(Redacted.value(plain), undefined).pipe(Effect.mapError((e) => fail("recovery-code", e.message)))
        const code = generateRecoveryCode()
        const now = yield* Clock.currentTimeMillis
        const wrapped = yield* wrapKey(Redacted.value(k.key), code, { kdf: "scrypt", nowMs: now }).pipe(Effect.mapError((e) => fail("recovery-code", e.message)))
        // never escrow a blob that does not open with the code to this key
        const check = yield* unwrapKey(wrapped, code).pipe(Effect.mapError(() => fail("recovery-code", "the wrapped key does not unwrap with its own code (a bug); nothing uploaded")))
        if (check.fingerprint !== fingerprint) return yield* fail("recovery-code", "the wrapped key unwraps to another fingerprint (a bug); nothing uploaded")
        // if enroll stops before the hub confirms, this code opens nothing: the re-run shows a new one
        yield* say("The code below is in force once this command says the recovery code is escrowed; if it stops before that, run enroll again: it shows a new code, and this one is void.")
        yield* showAndConfirm(code, "recovery-code")
        const put = yield* hub.putEscrow(apiKey, { generation: 1, replaces: null, fingerprint, key: wrapped }).pipe(
          Effect.mapError((e) =>
            fail(
              "recovery-code",
              e.reason === "Conflict"
                ? "the hub's escrow changed meanwhile (409): nothing was changed; run enroll again"
                : `${e.message}; the hub may not hold the escrow: run enroll again (a new code will be shown)`
            )
          )
        )
        yield* say(`recovery code escrowed: the hub holds it as generation ${put.generation}; the code you wrote down is now the one in force`)
        return { generation: put.generation }
      }), (d) =>
        Effect.gen(function*() {
          const apiKey = Option.getOrUndefined((yield* secrets).hubApiKey)
          if (apiKey === undefined) return false
          const current = yield* hub.escrow(apiKey).pipe(Effect.mapError((e) => fail("recovery-code", e.message)))
          return Option.isSome(current) && current.value.fingerprint === fingerprint && current.value.generation === d["generation"]
        }))

    yield* preflight
    if (input.mode === "new") {
      yield* pveAccess
      yield* config
      yield* sudoers
      yield* units
      const reg = yield* register
      if (input.golden) {
        yield* step("golden", Effect.map(deps.buildGolden, (d) => ({ result: d })))
      }
      const key = yield* keyStep
      const fingerprint = key["fingerprint"] as KeyFingerprint
      if (input.paperkey) {
        const plain = yield* pbsKey.read.pipe(Effect.mapError((e) => fail("paperkey", e.message)))
        yield* say("\nWARNING: the following is the RAW PBS encryption key. Anyone holding it can read every offsite backup of this host.")
        yield* say("Print it and lock it away, or do not keep it at all; never store it beside the box.\n")
        yield* io.showSecret(paperkeyText(Redacted.value(plain), `felhom host ${hostIdOf(reg)}`))
      }
      const escrow = yield* escrowStep(fingerprint)
      yield* step("done", enableUnits)
      return {
        mode: input.mode,
        hostId: hostIdOf(reg),
        keyFingerprint: fingerprint,
        escrowGeneration: typeof escrow["generation"] === "number" ? escrow["generation"] : null,
        steps: outcomes,
        restore: null
      } satisfies EnrollResult
    }

    // --- restore mode ----------------------------------------------------------------------------

    const reg = yield* register
    const bundle = yield* readBundle
    const key = yield* step("unwrap-key", Effect.gen(function*() {
      const installed = yield* pbsKey.fingerprint.pipe(Effect.mapError((e) => fail("unwrap-key", e.message)))
      if (Option.isSome(installed)) {
        if (installed.value === bundle.escrow.fingerprint) return { fingerprint: installed.value }
        return yield* fail("unwrap-key", `another PBS key (${installed.value}) is installed on this box; the escrowed one is ${bundle.escrow.fingerprint}`)
      }
      yield* say(`Type the recovery code of host ${bundle.escrow.host_id} (escrowed key ${bundle.escrow.fingerprint.slice(0, 23)}…).`)
      const unwrapped = yield* askAndUnwrap(bundle.escrow.key, bundle.escrow.fingerprint, "unwrap-key")
      const now = yield* Clock.currentTimeMillis
      const r = yield* pbsKey.install(Redacted.make(plainKeyFile(Redacted.value(unwrapped.key), now))).pipe(Effect.mapError((e) => fail("unwrap-key", e.message)))
      return { fingerprint: r.fingerprint }
    }), (d) => Effect.map(pbsKey.fingerprint.pipe(Effect.orElseSucceed(() => Option.none())), (fp) => Option.isSome(fp) && fp.value === d["fingerprint"]))
    const fingerprint = key["fingerprint"] as KeyFingerprint
    yield* pveAccess
    yield* config
    yield* sudoers
    yield* units
    const restored: { outcome: RestoreOutcome | null } = { outcome: null }
    yield* step("restore", Effect.gen(function*() {
      const r = yield* deps.restoreHost({ bundle, keyFingerprint: fingerprint })
      restored.outcome = r
      yield* say(r.human)
      if (!r.ok) return yield* fail("restore", "not every guest was restored (see the report); run enroll --restore-mode again to retry")
      return { guests: bundle.directive.guests.length }
    }))
    yield* step("done", Effect.gen(function*() {
      // restored: the bundle (sealed creds, the escrow blob) has served its purpose
      yield* setup.removeFile(RESTORE_BUNDLE_FILE).pipe(Effect.mapError((e) => fail("done", e.message)))
      return yield* enableUnits
    }))
    return {
      mode: input.mode,
      hostId: hostIdOf(reg),
      keyFingerprint: fingerprint,
      escrowGeneration: bundle.escrow.generation,
      steps: outcomes,
      restore: restored.outcome
    } satisfies EnrollResult
  })
