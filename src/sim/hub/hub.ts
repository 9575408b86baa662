/**
 * makeDevHub: the operator's hub, simulated (SPEC §14). It speaks the agent protocol of
 * docs/hub-protocol.md (host report → control envelope, desired state, signed jobs handed out
 * once, job results recorded), keeps per-host heartbeats for the dead-man's switch, and offers
 * an admin surface (methods here, /admin/* over HTTP with a separate token) for tests, the demo
 * and `felhom-agent sim hub`. Every timestamp comes from Effect's Clock, so TestClock drives it.
 *
 * It keeps each host's last audit head and state epoch and flags a state reset: an audit seq
 * lower than the last seen (or the same seq with another hash, or no head after one), or a new
 * state epoch. A real hub would alert; this one lists them in the host view (`state_alerts`).
 *
 * Enrollment and escrow (issue 13, docs/hub-protocol.md): one-time enrollment tokens registered
 * by the admin (`addEnrollmentToken`) are spent by POST /api/v1/enroll, which mints a host id and
 * api key (mode new) or hands a restore-mode box the lost host's identity with a fresh api key
 * (the old ones are revoked) and its restore bundle, storage creds sealed at answer time to the
 * new box's creds key. Each host keeps one escrow blob under compare-and-swap (GET/PUT
 * /api/v1/escrow); `failNextEscrowPut` injects the crash between storing and answering.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { HttpApp } from "@effect/platform"
import { randomBytes, timingSafeEqual } from "node:crypto"
import { Clock, Data, Effect, Either, Option, ParseResult, Redacted, Ref, Schema, type Scope } from "effect"
import { DesiredState, decodeDesiredState } from "../../schema/desired.js"
import {
  clampPollInterval,
  type ControlEnvelope,
  HostReport,
  type JobResult,
  JobResultsRequest,
  type ReportRestoreTest,
  SignedJob,
  type SignedJobsResponse
} from "../../schema/hub.js"
import {
  EnrollRequest,
  type EnrollResponse,
  EnrollResponse as EnrollResponseSchema,
  type EscrowBlob,
  EscrowBlob as EscrowBlobSchema,
  EscrowUpload,
  type EscrowUploadResponse,
  HostId,
  type RestoreBundle
} from "../../schema/escrow.js"
import type { StorageManifest } from "../../schema/storage.js"
import { DevHubEnrollRefused, DevHubReleaseRefused, DevHubUnknownHost } from "./errors.js"
import { readFileSync } from "node:fs"
import { isAbsolute, join } from "node:path"
import { MANIFEST_FILE, SIGNATURE_FILE } from "../../schema/release.js"

export interface DevHubOptions {
  /** api key → host id. Several keys may name the same host (rotation). */
  readonly apiKeys: Readonly<Record<string, string>>
  /** What the envelope asks for, unclamped (the agent clamps). Default 60. */
  readonly pollIntervalSeconds?: number
  /** Silence longer than this makes a host overdue. Default 3 × the clamped poll interval. */
  readonly overdueAfterSeconds?: number
  /** Bearer token of the /admin endpoints; random when absent. */
  readonly adminToken?: string
  /** Log protocol events at INFO (the CLI) rather than DEBUG. */
  readonly verbose?: boolean
}

/**
 * What an enrollment token is good for. `new`: a fresh host (its id given, or minted). `restore`:
 * the existing host `host_id` comes back on a new box; the bundle's storage manifest is built
 * when the token is spent, from the enrolling box's creds public key (seal the creds to it with
 * sealCreds), and the escrow is the host's blob at that moment.
 */
export type EnrollmentGrant =
  | { readonly mode: "new"; readonly host_id?: string }
  | {
    readonly mode: "restore"
    readonly host_id: string
    readonly bundle: Omit<RestoreBundle, "escrow" | "storage"> & { readonly storage: (credsPublicKey: string) => StorageManifest }
  }

/** One spent enrollment, as the host view lists it (never the token, never the key). */
export interface EnrollmentRecord {
  readonly at: string
  readonly mode: "new" | "restore"
  readonly hostname: string
  readonly node: string
  readonly agent_version: string
}

/** The next PUT /api/v1/escrow of a host fails with `status`, before or after storing the blob. */
export interface EscrowPutFault {
  readonly when: "before-store" | "after-store"
  /** Default 500. */
  readonly status?: number
}

export interface ReceivedReport {
  /** Epoch milliseconds on the hub's Clock. */
  readonly receivedAt: number
  readonly report: HostReport
}

export interface RecordedJobResult {
  readonly receivedAt: number
  readonly result: JobResult
}

/** What GET /admin/hosts/{host} answers. */
export interface DevHubHostView {
  readonly host_id: string
  readonly last_seen: string | null
  readonly overdue: boolean
  readonly blocked: boolean
  readonly desired_generation: number
  readonly queued_jobs: ReadonlyArray<string>
  readonly handed_out_jobs: ReadonlyArray<string>
  readonly reports_received: number
  readonly last_report: HostReport | null
  readonly job_results: ReadonlyArray<JobResult>
  /** The last audit head and state epoch reported. */
  readonly audit_head: HostReport["audit_head"]
  readonly state_epoch: string | null
  /** Signs of a reset or rewritten agent state, oldest first. */
  readonly state_alerts: ReadonlyArray<StateAlert>
  /** Every self-restore-test the host reported, newest first (the last 200). */
  readonly restore_tests: ReadonlyArray<ReportRestoreTest>
  /** The escrowed blob's generation and key fingerprint (never the blob), null without one. */
  readonly escrow: { readonly generation: number; readonly fingerprint: string } | null
  readonly enrollments: ReadonlyArray<EnrollmentRecord>
}

/** What the dev hub concluded from a report's audit head and state epoch. */
export interface StateAlert {
  readonly at: string
  readonly kind: "audit_seq_regressed" | "audit_head_rewritten" | "state_epoch_changed"
  readonly message: string
}

export interface DevHub {
  /** The whole HTTP surface: agent protocol under /api/v1, admin under /admin. */
  readonly app: HttpApp.Default
  readonly adminToken: string
  /** Every host some api key maps to. */
  readonly hosts: ReadonlyArray<string>
  readonly pollIntervalSeconds: number
  readonly overdueAfterSeconds: number
  /** Publishes `desired` for the host under the next generation (its own `generation` is replaced). */
  readonly setDesired: (hostId: string, desired: DesiredState) => Effect.Effect<number, DevHubUnknownHost>
  readonly desired: (hostId: string) => Effect.Effect<Option.Option<DesiredState>, DevHubUnknownHost>
  readonly enqueueJob: (hostId: string, job: SignedJob) => Effect.Effect<void, DevHubUnknownHost>
  /** Reports received, oldest first (the last 100). */
  readonly reports: (hostId: string) => Effect.Effect<ReadonlyArray<ReceivedReport>, DevHubUnknownHost>
  /** Results received, one per job id (a re-post replaces the earlier one), in first-arrival order. */
  readonly jobResults: (hostId: string) => Effect.Effect<ReadonlyArray<RecordedJobResult>, DevHubUnknownHost>
  /** Epoch milliseconds of the last accepted report. */
  readonly lastSeen: (hostId: string) => Effect.Effect<Option.Option<number>, DevHubUnknownHost>
  /** Hosts silent for longer than overdueAfterSeconds (counted from hub start if never seen). */
  readonly overdue: Effect.Effect<ReadonlyArray<string>>
  readonly setBlocked: (hostId: string, blocked: boolean) => Effect.Effect<void, DevHubUnknownHost>
  readonly view: (hostId: string) => Effect.Effect<DevHubHostView, DevHubUnknownHost>
  /**
   * Registers a one-time enrollment token (the operator hands it to the person at the box). A
   * restore grant names a host this hub knows; a token already registered is refused.
   */
  readonly addEnrollmentToken: (token: string, grant: EnrollmentGrant) => Effect.Effect<void, DevHubUnknownHost | DevHubEnrollRefused>
  /** The host's current escrow blob. */
  readonly escrowOf: (hostId: string) => Effect.Effect<Option.Option<EscrowBlob>, DevHubUnknownHost>
  /**
   * Every superseded blob of the host, oldest first. A hub never deletes one: the api key alone
   * can replace the current blob (a compromised service user holds it), so a blob the customer's
   * code opens must survive a replacement by one it does not (docs/hub-protocol.md).
   */
  readonly escrowHistoryOf: (hostId: string) => Effect.Effect<ReadonlyArray<EscrowBlob>, DevHubUnknownHost>
  /** Sets the host's blob as if the host had uploaded it (next generation); for tests and the demo. */
  readonly setEscrow: (hostId: string, blob: { readonly fingerprint: string; readonly key: string }) => Effect.Effect<EscrowBlob, DevHubUnknownHost>
  /** Makes the host's next PUT /api/v1/escrow fail (once). */
  readonly failNextEscrowPut: (hostId: string, fault: EscrowPutFault) => Effect.Effect<void, DevHubUnknownHost>
  /** How many api keys currently authenticate as the host (a restore revokes the old ones). */
  readonly apiKeyCount: (hostId: string) => Effect.Effect<number, DevHubUnknownHost>
  /**
   * Serves the release in `dir` (issue 14): RELEASE.json and .sig as they are, and each listed
   * file's bytes under the SHA-256 the manifest lists (whatever the file now holds: tests tamper
   * with it to play a hostile hub). Every host's api key may fetch it. Returns the version.
   */
  readonly addRelease: (dir: string) => Effect.Effect<string, DevHubReleaseRefused>
  /** A release given byte for byte (hostile-hub tests choose the manifest and which bytes each hash serves). */
  readonly putRelease: (version: string, release: DevHubRelease) => Effect.Effect<void>
}

/** What the dev hub serves for one release version. */
export interface DevHubRelease {
  readonly manifest: Uint8Array
  readonly signature: Uint8Array
  /** sha256 (as requested) → body */
  readonly files: ReadonlyMap<string, Uint8Array>
}

interface HostState {
  readonly lastSeen: Option.Option<number>
  readonly blocked: boolean
  readonly generation: number
  readonly desired: Option.Option<DesiredState>
  readonly queue: ReadonlyArray<SignedJob>
  readonly handedOut: ReadonlyArray<SignedJob>
  readonly reports: ReadonlyArray<ReceivedReport>
  readonly results: ReadonlyArray<RecordedJobResult>
  readonly auditHead: HostReport["audit_head"]
  readonly stateEpoch: string | null
  readonly alerts: ReadonlyArray<StateAlert>
  readonly restoreTests: ReadonlyArray<ReportRestoreTest>
  readonly escrow: Option.Option<EscrowBlob>
  readonly escrowHistory: ReadonlyArray<EscrowBlob>
  readonly escrowFault: Option.Option<EscrowPutFault>
  readonly enrollments: ReadonlyArray<EnrollmentRecord>
}

/** Compares a report's audit head and state epoch with the last ones seen. */
export const stateAlerts = (
  last: { readonly auditHead: HostReport["audit_head"]; readonly stateEpoch: string | null },
  r: HostReport,
  at: string
): ReadonlyArray<StateAlert> => {
  const out: Array<StateAlert> = []
  if (last.stateEpoch !== null && last.stateEpoch !== r.state_epoch) {
    out.push({ at, kind: "state_epoch_changed", message: `state epoch changed from ${last.stateEpoch} to ${r.state_epoch}: the agent's state was reset` })
  }
  const was = last.auditHead
  const now = r.audit_head
  if (was !== null && (now === null || now.seq < was.seq)) {
    out.push({ at, kind: "audit_seq_regressed", message: `audit head went from seq ${was.seq} to ${now === null ? "an empty log" : `seq ${now.seq}`}` })
  } else if (was !== null && now !== null && now.seq === was.seq && now.hash !== was.hash) {
    out.push({ at, kind: "audit_head_rewritten", message: `audit entry ${now.seq} changed its hash: the chain was rewritten` })
  }
  return out
}

const MAX_ALERTS = 100

/** Restore-tests a report carries that the hub has not seen yet (a report repeats the recent ones). */
export const newRestoreTests = (seen: ReadonlyArray<ReportRestoreTest>, r: HostReport): ReadonlyArray<ReportRestoreTest> => {
  const key = (t: ReportRestoreTest) => `${t.vmid} ${t.at} ${t.archive} ${t.result}`
  const known = new Set(seen.map(key))
  return r.restore_tests.filter((t) => !known.has(key(t)))
}

const seconds = (ms: number | null) => (ms === null ? "-" : `${(ms / 1000).toFixed(1)} s`)

/** One line per restore-test, as the dev hub logs it. */
export const describeRestoreTest = (host: string, t: ReportRestoreTest): string =>
  `host ${host}: restore-test of guest ${t.vmid} from ${t.archive}: ${t.result.toUpperCase()} ` +
  `(restore ${seconds(t.timings_ms.restore)}, start ${seconds(t.timings_ms.start)}, check ${seconds(t.timings_ms.check)}, ` +
  `teardown ${seconds(t.timings_ms.teardown)}): ${t.detail}`

const MAX_RESTORE_TESTS = 200

const emptyHost: HostState = {
  lastSeen: Option.none(),
  blocked: false,
  generation: 0,
  desired: Option.none(),
  queue: [],
  handedOut: [],
  reports: [],
  results: [],
  auditHead: null,
  stateEpoch: null,
  alerts: [],
  restoreTests: [],
  escrow: Option.none(),
  escrowHistory: [],
  escrowFault: Option.none(),
  enrollments: []
}

const MAX_REPORTS = 100
/** Request bodies above this are refused (a host report is a few hundred KiB at most). */
export const DEV_HUB_MAX_BODY_BYTES = 4 * 1024 * 1024

/** An HTTP answer other than success, produced by a handler. */
class HttpFailure extends Data.TaggedError("HttpFailure")<{ readonly status: number; readonly message: string }> {}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.000Z$/, "Z")

const safeEqual = (a: string, b: string): boolean => {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length === bb.length && timingSafeEqual(ab, bb)
}

/** `path: message` per issue, without Schema's `actual <input>` tail, bounded. */
const formatIssues = (e: ParseResult.ParseError): string => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(e)
  const lines = issues.slice(0, 8).map((i) =>
    `${i.path.length === 0 ? "(root)" : i.path.map(String).join(".")}: ${i.message.replace(/,?\s*actual[\s\S]*$/, "").trim().slice(0, 160)}`
  )
  if (issues.length > 8) lines.push(`(${issues.length - 8} more)`)
  return lines.join("; ")
}

/** The `fingerprint` a PBS key file declares in clear (a wrapped file too), if any. */
const keyFileFingerprint = (text: string): string | undefined => {
  try {
    const parsed: unknown = JSON.parse(text)
    if (typeof parsed !== "object" || parsed === null) return undefined
    const fp = (parsed as { readonly fingerprint?: unknown }).fingerprint
    return typeof fp === "string" ? fp : undefined
  } catch {
    return undefined
  }
}

const errorResponse = (status: number, message: string) =>
  HttpServerResponse.unsafeJson(
    { error: message },
    { status, headers: status === 401 ? { "www-authenticate": `Bearer realm="felhom-hub"` } : {} }
  )

export const makeDevHub = (options: DevHubOptions): Effect.Effect<DevHub, never, Scope.Scope> =>
  Effect.gen(function*() {
    // api key → host; grows with enrollments, shrinks when a restore revokes a lost box's keys
    const keys = new Map<string, string>(Object.entries(options.apiKeys))
    const hosts = [...new Set(keys.values())]
    // enrollment token → what it grants; deleted when spent
    const enrollTokens = new Map<string, EnrollmentGrant>()
    const adminToken = options.adminToken ?? `fha_${randomBytes(24).toString("base64url")}`
    const pollIntervalSeconds = options.pollIntervalSeconds ?? 60
    const overdueAfterSeconds = options.overdueAfterSeconds ?? 3 * clampPollInterval(pollIntervalSeconds)
    const startedAt = yield* Clock.currentTimeMillis
    const state = yield* Ref.make<ReadonlyMap<string, HostState>>(new Map(hosts.map((h) => [h, emptyHost])))
    const note = (message: string) => (options.verbose === true ? Effect.logInfo(message) : Effect.logDebug(message))
    yield* Effect.addFinalizer(() => note("dev hub stopped"))

    const unknownHost = (hostId: string) =>
      new DevHubUnknownHost({ hostId, message: `no api key of this dev hub belongs to host '${hostId}'` })

    const modifyHost = <A>(hostId: string, f: (s: HostState) => readonly [A, HostState]) =>
      Ref.modify(state, (m): readonly [Option.Option<A>, ReadonlyMap<string, HostState>] => {
        const s = m.get(hostId)
        if (s === undefined) return [Option.none(), m]
        const [a, next] = f(s)
        return [Option.some(a), new Map(m).set(hostId, next)]
      }).pipe(Effect.flatMap(Option.match({ onNone: () => Effect.fail(unknownHost(hostId)), onSome: Effect.succeed })))

    const getHost = (hostId: string) => modifyHost(hostId, (s) => [s, s] as const)

    const isOverdue = (s: HostState, now: number) =>
      now - Option.getOrElse(s.lastSeen, () => startedAt) > overdueAfterSeconds * 1000

    /** Handed out, but no result posted yet (e.g. an agent-update deferred to the update window). */
    const unanswered = (s: HostState): ReadonlyArray<SignedJob> =>
      s.handedOut.filter((j) => !s.results.some((r) => r.result.id === j.id))

    const envelopeOf = (s: HostState): ControlEnvelope => ({
      poll_interval_seconds: pollIntervalSeconds,
      blocked: s.blocked,
      desired_generation: s.generation,
      has_signed_ops: s.queue.length > 0 || unanswered(s).length > 0
    })

    const setDesired = (hostId: string, desired: DesiredState) =>
      modifyHost(hostId, (s) => {
        const generation = s.generation + 1
        return [generation, { ...s, generation, desired: Option.some({ ...desired, generation }) }] as const
      }).pipe(Effect.tap((g) => note(`desired state for ${hostId}: generation ${g}, ${desired.guests.length} guest(s)`)))

    const enqueueJob = (hostId: string, job: SignedJob) =>
      modifyHost(hostId, (s) => [undefined, { ...s, queue: [...s.queue, job] }] as const).pipe(
        Effect.tap(() => note(`job ${job.id} (${job.op}) queued for ${hostId}`))
      )

    const setBlocked = (hostId: string, blocked: boolean) =>
      modifyHost(hostId, (s) => [undefined, { ...s, blocked }] as const)

    const overdue = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const m = yield* Ref.get(state)
      return [...m].filter(([, s]) => isOverdue(s, now)).map(([h]) => h)
    })

    const view = (hostId: string) =>
      Effect.gen(function*() {
        const s = yield* getHost(hostId)
        const now = yield* Clock.currentTimeMillis
        return {
          host_id: hostId,
          last_seen: Option.match(s.lastSeen, { onNone: () => null, onSome: iso }),
          overdue: isOverdue(s, now),
          blocked: s.blocked,
          desired_generation: s.generation,
          queued_jobs: s.queue.map((j) => j.id),
          handed_out_jobs: s.handedOut.map((j) => j.id),
          reports_received: s.reports.length,
          last_report: s.reports.length === 0 ? null : s.reports[s.reports.length - 1]!.report,
          job_results: s.results.map((r) => r.result),
          audit_head: s.auditHead,
          state_epoch: s.stateEpoch,
          state_alerts: s.alerts,
          restore_tests: s.restoreTests,
          escrow: Option.match(s.escrow, { onNone: () => null, onSome: (b) => ({ generation: b.generation, fingerprint: b.fingerprint }) }),
          enrollments: s.enrollments
        } satisfies DevHubHostView
      })

    // -------------------------------------------------------------------------------------------
    // Enrollment and escrow (admin side)

    const addEnrollmentToken = (token: string, grant: EnrollmentGrant) =>
      Effect.gen(function*() {
        if (token.length < 16 || token.length > 512 || /\s/.test(token)) {
          return yield* new DevHubEnrollRefused({ message: "an enrollment token is 16-512 characters without whitespace" })
        }
        if (enrollTokens.has(token)) return yield* new DevHubEnrollRefused({ message: "this enrollment token is already registered" })
        if (grant.host_id !== undefined && !Schema.is(HostId)(grant.host_id)) {
          return yield* new DevHubEnrollRefused({ message: "not a host id: 1-128 of A-Z a-z 0-9 . _ -, starting alphanumeric" })
        }
        if (grant.mode === "restore") yield* getHost(grant.host_id)
        else if (grant.host_id !== undefined && hosts.includes(grant.host_id)) {
          return yield* new DevHubEnrollRefused({ message: `host '${grant.host_id}' already exists: a new enrollment needs a new host id` })
        }
        enrollTokens.set(token, grant)
        yield* note(`enrollment token registered (${grant.mode}${grant.host_id === undefined ? "" : ` for ${grant.host_id}`})`)
      })

    const setEscrow = (hostId: string, blob: { readonly fingerprint: string; readonly key: string }) =>
      modifyHost(hostId, (s) => {
        const next: EscrowBlob = {
          host_id: hostId,
          generation: Option.match(s.escrow, { onNone: () => 1, onSome: (b) => b.generation + 1 }),
          fingerprint: blob.fingerprint,
          key: blob.key
        }
        return [next, { ...s, escrow: Option.some(next), escrowHistory: Option.match(s.escrow, { onNone: () => s.escrowHistory, onSome: (b) => [...s.escrowHistory, b] }) }] as const
      })

    const failNextEscrowPut = (hostId: string, fault: EscrowPutFault) =>
      modifyHost(hostId, (s) => [undefined, { ...s, escrowFault: Option.some(fault) }] as const)

    const apiKeyCount = (hostId: string) =>
      Effect.map(getHost(hostId), () => [...keys.values()].filter((h) => h === hostId).length)

    // -------------------------------------------------------------------------------------------
    // Releases (issue 14): served as stored; the agent verifies everything

    const releases = new Map<string, DevHubRelease>()

    const putRelease = (version: string, release: DevHubRelease) =>
      Effect.sync(() => void releases.set(version, release)).pipe(Effect.zipRight(note(`release ${version} served`)))

    const addRelease = (dir: string) =>
      Effect.try({
        try: () => {
          const manifest = readFileSync(join(dir, MANIFEST_FILE))
          const signature = readFileSync(join(dir, SIGNATURE_FILE))
          const parsed = JSON.parse(manifest.toString("utf8")) as { readonly version?: unknown; readonly files?: unknown }
          if (typeof parsed.version !== "string" || !Array.isArray(parsed.files)) throw new Error(`${MANIFEST_FILE} names no version or files`)
          const files = new Map<string, Uint8Array>()
          for (const f of parsed.files as ReadonlyArray<{ readonly path?: unknown; readonly sha256?: unknown }>) {
            // a path leaving the directory is listed but not served (the agent refuses it anyway)
            if (typeof f.path !== "string" || typeof f.sha256 !== "string" || isAbsolute(f.path) || f.path.split("/").includes("..")) continue
            files.set(f.sha256, readFileSync(join(dir, f.path)))
          }
          return { version: parsed.version, release: { manifest, signature, files } }
        },
        catch: (e) => new DevHubReleaseRefused({ message: `cannot serve the release in ${dir}: ${e instanceof Error ? e.message : String(e)}` })
      }).pipe(Effect.tap(({ release, version }) => putRelease(version, release)), Effect.map(({ version }) => version))

    // -------------------------------------------------------------------------------------------
    // HTTP

    const bearer = Effect.map(HttpServerRequest.HttpServerRequest, (req) => {
      const m = /^Bearer ([^\s]+)\s*$/.exec(req.headers["authorization"] ?? "")
      return m === null ? undefined : m[1]!
    })

    const agentHost = Effect.flatMap(bearer, (token) => {
      // Compare against every key so timing does not tell how many matched.
      const matches = token === undefined ? [] : [...keys].filter(([k]) => safeEqual(k, token))
      return matches.length === 1
        ? Effect.succeed(matches[0]![1])
        : Effect.fail(new HttpFailure({ status: 401, message: "unknown or missing bearer token" }))
    })

    const admin = Effect.flatMap(bearer, (token) =>
      token !== undefined && safeEqual(token, adminToken)
        ? Effect.void
        : Effect.fail(new HttpFailure({ status: 401, message: "admin endpoints need the admin bearer token" })))

    const adminHost = Effect.zipRight(
      admin,
      Effect.flatMap(HttpRouter.params, (p) => {
        const host = p["host"] ?? ""
        return hosts.includes(host)
          ? Effect.succeed(host)
          : Effect.fail(new HttpFailure({ status: 404, message: `no such host '${host.slice(0, 128)}'` }))
      })
    )

    const jsonBody = Effect.gen(function*() {
      const req = yield* HttpServerRequest.HttpServerRequest
      const text = yield* req.text.pipe(
        Effect.mapError(() => new HttpFailure({ status: 400, message: `request body unreadable or larger than ${DEV_HUB_MAX_BODY_BYTES} bytes` }))
      )
      return yield* Effect.try({
        try: (): unknown => JSON.parse(text),
        catch: () => new HttpFailure({ status: 400, message: "request body is not valid JSON" })
      })
    })

    /** Strict: an unknown field is an error, so contract drift shows up in development. */
    const body = <A, I>(schema: Schema.Schema<A, I>, what: string) =>
      Effect.flatMap(jsonBody, (u) =>
        Schema.decodeUnknown(schema, { errors: "all", onExcessProperty: "error" })(u).pipe(
          Effect.mapError((e) => new HttpFailure({ status: 400, message: `invalid ${what}: ${formatIssues(e)}` }))
        ))

    const json = (status: number, value: unknown) => Effect.succeed(HttpServerResponse.unsafeJson(value, { status }))
    const noHost = (e: DevHubUnknownHost) => Effect.fail(new HttpFailure({ status: 404, message: e.message }))

    const report = Effect.gen(function*() {
      const host = yield* agentHost
      const r = yield* body(HostReport, "host report")
      if (r.host_id !== host) {
        return yield* new HttpFailure({ status: 403, message: `this api key belongs to host '${host}', the report names another host` })
      }
      const now = yield* Clock.currentTimeMillis
      const [s, alerts, tests] = yield* modifyHost(host, (s) => {
        const alerts = stateAlerts(s, r, iso(now))
        const tests = newRestoreTests(s.restoreTests, r)
        const next: HostState = {
          ...s,
          restoreTests: [...tests, ...s.restoreTests].slice(0, MAX_RESTORE_TESTS),
          lastSeen: Option.some(now),
          reports: [...s.reports, { receivedAt: now, report: r }].slice(-MAX_REPORTS),
          auditHead: r.audit_head,
          stateEpoch: r.state_epoch,
          alerts: [...s.alerts, ...alerts].slice(-MAX_ALERTS)
        }
        return [[next, alerts, tests], next] as const
      })
      yield* note(`report from ${host}: ${r.guests.length} guest(s), applied generation ${r.desired_generation_applied ?? "none"}`)
      for (const a of alerts) yield* Effect.logWarning(`host ${host}: ${a.kind}: ${a.message}`)
      // restore-tests are shown as they arrive: a failure as a warning
      for (const t of [...tests].reverse()) yield* (t.result === "fail" ? Effect.logWarning : Effect.logInfo)(describeRestoreTest(host, t))
      return yield* json(200, envelopeOf(s))
    })

    // Read-only (issue 14, `selftest hub`): never a heartbeat, never a state change.
    const envelopeGet = Effect.gen(function*() {
      const host = yield* agentHost
      const s = yield* getHost(host)
      return yield* json(200, envelopeOf(s))
    })

    const desiredState = Effect.gen(function*() {
      const host = yield* agentHost
      const s = yield* getHost(host)
      if (Option.isNone(s.desired)) {
        return yield* new HttpFailure({ status: 404, message: `no desired state published for host '${host}' yet (generation 0)` })
      }
      // the wire form, not the decoded value: decoded creds are Redacted and would serialize as "<redacted>"
      const wire = yield* Schema.encode(DesiredState)(s.desired.value).pipe(
        Effect.mapError(() => new HttpFailure({ status: 500, message: "the published desired state does not encode" }))
      )
      return yield* json(200, wire)
    })

    const signedJobs = Effect.gen(function*() {
      const host = yield* agentHost
      // The queue empties as it is read; a job handed out earlier whose result never came is handed
      // out again (hub-protocol: redelivery until answered; the agent's idempotency makes it harmless)
      const jobs = yield* modifyHost(host, (s) => [[...unanswered(s), ...s.queue], { ...s, queue: [], handedOut: [...s.handedOut, ...s.queue] }] as const)
      if (jobs.length > 0) yield* note(`${jobs.length} job(s) handed to ${host}`)
      const response: SignedJobsResponse = { jobs }
      return yield* json(200, response)
    })

    const jobResults = Effect.gen(function*() {
      const host = yield* agentHost
      const { results } = yield* body(JobResultsRequest, "job results")
      const now = yield* Clock.currentTimeMillis
      yield* modifyHost(host, (s) => {
        const recorded = [...s.results]
        for (const result of results) {
          const at = recorded.findIndex((r) => r.result.id === result.id)
          if (at >= 0) recorded[at] = { receivedAt: now, result }
          else recorded.push({ receivedAt: now, result })
        }
        return [undefined, { ...s, results: recorded }] as const
      })
      for (const r of results) yield* note(`job ${r.id} on ${host}: ${r.status}: ${r.reason}`)
      return HttpServerResponse.empty({ status: 204 })
    })

    // POST /api/v1/enroll: the bearer is a one-time enrollment token, spent only by a success
    const enroll = Effect.gen(function*() {
      const token = yield* bearer
      const unknown = new HttpFailure({ status: 401, message: "unknown, used or missing enrollment token" })
      if (token === undefined) return yield* unknown
      const held = [...enrollTokens].filter(([t]) => safeEqual(t, token))
      if (held.length !== 1) return yield* unknown
      const grant = held[0]![1]
      const req = yield* body(EnrollRequest, "enroll request")
      if (req.mode !== grant.mode) {
        return yield* new HttpFailure({ status: 409, message: `this enrollment token is for mode '${grant.mode}', the request asks for '${req.mode}'` })
      }
      const now = yield* Clock.currentTimeMillis
      const record: EnrollmentRecord = { at: iso(now), mode: req.mode, hostname: req.hostname, node: req.node, agent_version: req.agent_version }
      const apiKey = `fhk_${randomBytes(32).toString("base64url")}`
      let response: EnrollResponse
      if (grant.mode === "new") {
        const hostId = grant.host_id ?? `host-${randomBytes(6).toString("hex")}`
        response = { host_id: hostId, api_key: Redacted.make(apiKey) }
      } else {
        const s = yield* getHost(grant.host_id)
        if (Option.isNone(s.escrow)) {
          return yield* new HttpFailure({ status: 409, message: `host '${grant.host_id}' has no escrowed key: a restore cannot unlock its backups` })
        }
        const storage = yield* Effect.try({
          try: () => grant.bundle.storage(req.creds_public_key),
          catch: () => new HttpFailure({ status: 500, message: "the restore bundle's storage manifest could not be built" })
        })
        const { storage: _fn, ...rest } = grant.bundle
        response = { host_id: grant.host_id, api_key: Redacted.make(apiKey), restore: { ...rest, storage, escrow: s.escrow.value } }
      }
      const wire = yield* Schema.encode(EnrollResponseSchema)(response).pipe(
        Effect.mapError(() => new HttpFailure({ status: 500, message: "the enrollment answer does not encode (check the registered bundle)" }))
      )
      // Spent, and its effects applied, only now and in one synchronous step: a token cannot be
      // spent twice, a refused request leaves it usable, and the loser of a race changes nothing.
      const hostId = response.host_id
      const outcome = yield* Effect.sync(() => {
        if (!enrollTokens.has(held[0]![0])) return "spent" as const
        if (grant.mode === "new" && hosts.includes(hostId)) return "exists" as const
        enrollTokens.delete(held[0]![0])
        // a restore revokes every key of the lost box
        if (grant.mode === "restore") {
          for (const [k, h] of [...keys]) if (h === hostId) keys.delete(k)
        } else {
          hosts.push(hostId)
        }
        keys.set(apiKey, hostId)
        return "enrolled" as const
      })
      if (outcome === "spent") return yield* unknown
      if (outcome === "exists") return yield* new HttpFailure({ status: 409, message: `host '${hostId}' already exists` })
      yield* Ref.update(state, (m) => new Map(m).set(hostId, { ...(m.get(hostId) ?? emptyHost), enrollments: [...(m.get(hostId)?.enrollments ?? []), record] }))
      yield* note(`enrolled ${response.host_id} (${req.mode}) from ${req.hostname}`)
      return yield* json(200, wire)
    })

    const escrowGet = Effect.gen(function*() {
      const host = yield* agentHost
      const s = yield* getHost(host)
      if (Option.isNone(s.escrow)) return yield* new HttpFailure({ status: 404, message: `no escrowed key for host '${host}'` })
      return yield* json(200, Schema.encodeSync(EscrowBlobSchema)(s.escrow.value))
    })

    // PUT /api/v1/escrow: compare-and-swap on the generation, bound to the bearer's host
    const escrowPut = Effect.gen(function*() {
      const host = yield* agentHost
      const u = yield* body(EscrowUpload, "escrow upload")
      if (u.generation <= (u.replaces ?? 0)) {
        return yield* new HttpFailure({ status: 400, message: "generation must be greater than the one it replaces" })
      }
      const declared = keyFileFingerprint(u.key)
      if (declared !== undefined && declared !== u.fingerprint) {
        return yield* new HttpFailure({ status: 400, message: "fingerprint differs from the one the key file declares" })
      }
      type Outcome =
        | { readonly _tag: "stored"; readonly fault: Option.Option<EscrowPutFault> }
        | { readonly _tag: "conflict"; readonly message: string }
        | { readonly _tag: "fault"; readonly status: number }
      const outcome = yield* modifyHost(host, (s): readonly [Outcome, HostState] => {
        const fault = s.escrowFault
        const cleared = { ...s, escrowFault: Option.none<EscrowPutFault>() }
        if (Option.isSome(fault) && fault.value.when === "before-store") return [{ _tag: "fault", status: fault.value.status ?? 500 }, cleared]
        const current = Option.getOrUndefined(s.escrow)
        if ((current?.generation ?? null) !== u.replaces) {
          return [{ _tag: "conflict", message: `the current generation is ${current?.generation ?? "none"}, not ${u.replaces ?? "none"}` }, s]
        }
        if (current !== undefined && current.fingerprint !== u.fingerprint) {
          // K never changes (SPEC §13): a blob for another key would orphan every offsite backup
          return [{ _tag: "conflict", message: "the escrowed key has another fingerprint: the key itself is never replaced" }, s]
        }
        const blob: EscrowBlob = { host_id: host, generation: u.generation, fingerprint: u.fingerprint, key: u.key }
        return [{ _tag: "stored", fault }, { ...cleared, escrow: Option.some(blob), escrowHistory: current === undefined ? s.escrowHistory : [...s.escrowHistory, current] }]
      })
      switch (outcome._tag) {
        case "fault":
          return yield* new HttpFailure({ status: outcome.status, message: "injected failure before storing" })
        case "conflict":
          return yield* new HttpFailure({ status: 409, message: outcome.message })
        case "stored": {
          yield* note(`escrow of ${host}: generation ${u.generation} stored`)
          if (Option.isSome(outcome.fault)) {
            return yield* new HttpFailure({ status: outcome.fault.value.status ?? 500, message: "injected failure after storing" })
          }
          const answer: EscrowUploadResponse = { generation: u.generation }
          return yield* json(200, answer)
        }
      }
    })

    const releaseOf = Effect.gen(function*() {
      yield* agentHost
      const p = yield* HttpRouter.params
      const r = releases.get(p["version"] ?? "")
      if (r === undefined) return yield* new HttpFailure({ status: 404, message: "no such release" })
      return { release: r, params: p }
    })

    const releaseManifest = Effect.map(releaseOf, ({ release }) => HttpServerResponse.uint8Array(release.manifest, { status: 200, contentType: "application/json" }))
    const releaseSignature = Effect.map(releaseOf, ({ release }) => HttpServerResponse.uint8Array(release.signature, { status: 200, contentType: "text/plain" }))
    const releaseFile = Effect.flatMap(releaseOf, ({ params, release }) => {
      const body = release.files.get(params["sha256"] ?? "")
      return body === undefined
        ? Effect.fail(new HttpFailure({ status: 404, message: "no such file in this release" }))
        : Effect.succeed(HttpServerResponse.uint8Array(body, { status: 200, contentType: "application/octet-stream" }))
    })

    const adminEnrollToken = Effect.gen(function*() {
      yield* admin
      const b = yield* body(Schema.Struct({ token: Schema.String, host_id: Schema.optional(Schema.String) }), "enrollment token (mode new)")
      yield* addEnrollmentToken(b.token, b.host_id === undefined ? { mode: "new" } : { mode: "new", host_id: b.host_id }).pipe(
        Effect.mapError((e) => new HttpFailure({ status: e._tag === "DevHubUnknownHost" ? 404 : 400, message: e.message }))
      )
      return yield* json(201, { registered: true })
    })

    const adminEscrow = Effect.gen(function*() {
      const host = yield* adminHost
      const blob = yield* Effect.map(getHost(host), (s) => s.escrow)
      return yield* json(200, Option.match(blob, { onNone: () => null, onSome: (b) => Schema.encodeSync(EscrowBlobSchema)(b) }))
    })

    const adminDesired = Effect.gen(function*() {
      const host = yield* adminHost
      const raw = yield* jsonBody
      // The hub owns generations: one in the body is replaced, a missing one is fine.
      const withGeneration = typeof raw === "object" && raw !== null && !Array.isArray(raw) && !("generation" in raw)
        ? { ...raw, generation: 0 }
        : raw
      const desired = decodeDesiredState(withGeneration)
      if (Either.isLeft(desired)) return yield* new HttpFailure({ status: 400, message: desired.left })
      const generation = yield* setDesired(host, desired.right)
      return yield* json(200, { host_id: host, generation })
    })

    const adminJob = Effect.gen(function*() {
      const host = yield* adminHost
      const job = yield* body(SignedJob, "signed job")
      yield* enqueueJob(host, job)
      const s = yield* getHost(host)
      return yield* json(202, { host_id: host, queued: s.queue.map((j) => j.id) })
    })

    const adminBlocked = Effect.gen(function*() {
      const host = yield* adminHost
      const { blocked } = yield* body(Schema.Struct({ blocked: Schema.Boolean }), "blocked flag")
      yield* setBlocked(host, blocked)
      return yield* json(200, { host_id: host, blocked })
    })

    const adminView = Effect.flatMap(adminHost, (host) => Effect.flatMap(view(host), (v) => json(200, v)))
    const adminHosts = Effect.zipRight(admin, Effect.flatMap(Effect.forEach(hosts, view), (vs) => json(200, { hosts: vs })))
    const adminOverdue = Effect.zipRight(admin, Effect.flatMap(overdue, (hs) => json(200, { hosts: hs })))

    const router = HttpRouter.empty.pipe(
      HttpRouter.post("/api/v1/host-report", report),
      HttpRouter.get("/api/v1/desired-state", desiredState),
      HttpRouter.get("/api/v1/envelope", envelopeGet),
      HttpRouter.get("/api/v1/signed-jobs", signedJobs),
      HttpRouter.post("/api/v1/job-results", jobResults),
      HttpRouter.post("/api/v1/enroll", enroll),
      HttpRouter.get("/api/v1/escrow", escrowGet),
      HttpRouter.put("/api/v1/escrow", escrowPut),
      HttpRouter.get("/api/v1/releases/:version/manifest", releaseManifest),
      HttpRouter.get("/api/v1/releases/:version/signature", releaseSignature),
      HttpRouter.get("/api/v1/releases/:version/files/:sha256", releaseFile),
      HttpRouter.post("/admin/enrollment-tokens", adminEnrollToken),
      HttpRouter.get("/admin/hosts/:host/escrow", adminEscrow),
      HttpRouter.get("/admin/hosts", adminHosts),
      HttpRouter.get("/admin/hosts/:host", adminView),
      HttpRouter.post("/admin/hosts/:host/desired", adminDesired),
      HttpRouter.post("/admin/hosts/:host/jobs", adminJob),
      HttpRouter.post("/admin/hosts/:host/blocked", adminBlocked),
      HttpRouter.get("/admin/overdue", adminOverdue)
    )

    const app: HttpApp.Default = router.pipe(
      Effect.catchTag("DevHubUnknownHost", noHost),
      Effect.catchTags({
        HttpFailure: (e) => Effect.succeed(errorResponse(e.status, e.message)),
        RouteNotFound: () => Effect.succeed(errorResponse(404, "no such endpoint"))
      }),
      HttpServerRequest.withMaxBodySize(Option.some(DEV_HUB_MAX_BODY_BYTES))
    )

    return {
      app,
      adminToken,
      hosts,
      pollIntervalSeconds,
      overdueAfterSeconds,
      setDesired,
      desired: (hostId) => Effect.map(getHost(hostId), (s) => s.desired),
      enqueueJob,
      reports: (hostId) => Effect.map(getHost(hostId), (s) => s.reports),
      jobResults: (hostId) => Effect.map(getHost(hostId), (s) => s.results),
      lastSeen: (hostId) => Effect.map(getHost(hostId), (s) => s.lastSeen),
      overdue,
      setBlocked,
      view,
      addEnrollmentToken,
      escrowOf: (hostId) => Effect.map(getHost(hostId), (s) => s.escrow),
      escrowHistoryOf: (hostId) => Effect.map(getHost(hostId), (s) => s.escrowHistory),
      setEscrow,
      failNextEscrowPut,
      apiKeyCount,
      addRelease,
      putRelease
    } satisfies DevHub
  })
