/**
 * Test wiring for the local API (issue 11): the real LocalApi layer on 127.0.0.1 with a real
 * certificate, real tokens and a real audit log (SQLite), and a backend double that records every
 * call with the vmid it was given. The HTTPS client pins the SPKI the way a controller does.
 */
import { Effect, Layer, Logger, Option, Redacted, type Scope, TestClock } from "effect"
import { createHash, X509Certificate } from "node:crypto"
import { mkdtempSync } from "node:fs"
import { type Agent, request } from "node:https"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerAt } from "../src/layers/Database.js"
import { JournalLive } from "../src/layers/Journal.js"
import { LocalApi, LocalApiLive, type LocalApiOptions, localApiSettings, type LocalApiShape } from "../src/layers/LocalApi.js"
import { LocalCert, LocalCertLive, type LocalCertShape } from "../src/layers/LocalCert.js"
import { LocalTokens, LocalTokensLive, type LocalTokensShape } from "../src/layers/LocalTokens.js"
import { AuditLog, type AuditLogShape } from "../src/layers/AuditLog.js"
import { LocalApiBackend, type LocalApiBackendShape } from "../src/programs/localapi/backend.js"
import { LocalApiConfig } from "../src/schema/config.js"
import type { VmId } from "../src/schema/ids.js"
import { ApiFailure, type ApiFailureCode } from "../src/schema/localApi.js"

export interface BackendCall {
  readonly method: keyof LocalApiBackendShape
  readonly vmid: number
  readonly body?: unknown
}

export interface RecordingBackend {
  readonly shape: LocalApiBackendShape
  readonly calls: Array<BackendCall>
  /** ctl- snapshots each guest took (a rollback to another guest's is refused, as the real gate does). */
  readonly snapshots: Map<number, Set<string>>
  /** Make every call of these methods fail with this code (or die, to prove defects are caught). */
  readonly faults: Map<keyof LocalApiBackendShape, ApiFailureCode | "die">
}

export const recordingBackend = (): RecordingBackend => {
  const calls: Array<BackendCall> = []
  const snapshots = new Map<number, Set<string>>()
  const faults = new Map<keyof LocalApiBackendShape, ApiFailureCode | "die">()
  let jobs = 0
  const at = "2026-11-30T12:00:00.000Z"
  const run = <A>(method: keyof LocalApiBackendShape, vmid: VmId, body: unknown, f: () => Effect.Effect<A, ApiFailure>) =>
    Effect.suspend(() => {
      calls.push(body === undefined ? { method, vmid } : { method, vmid, body })
      const fault = faults.get(method)
      if (fault === "die") return Effect.die(new Error("backend bug"))
      if (fault !== undefined) return Effect.fail(new ApiFailure({ code: fault, message: `injected ${fault}` }))
      return f()
    })
  const shape: LocalApiBackendShape = {
    storage: (vmid) =>
      run("storage", vmid, undefined, () =>
        Effect.succeed({ mounts: [{ key: "rootfs", path: "/", class: "fast" as const, storage: `local-${vmid}`, size_gib: 8, backup: true }] })),
    snapshot: (vmid, req) =>
      run("snapshot", vmid, req, () => {
        const name = `ctl-${req.name}`
        const mine = snapshots.get(vmid) ?? new Set<string>()
        mine.add(name)
        snapshots.set(vmid, mine)
        return Effect.succeed({ snapshot: name, taken_at: at })
      }),
    rollback: (vmid, req) =>
      run("rollback", vmid, req, () => {
        if (snapshots.get(vmid)?.has(req.snapshot) === true) return Effect.succeed({ snapshot: req.snapshot, rolled_back_at: at })
        const others = [...snapshots].some(([v, s]) => v !== vmid && s.has(req.snapshot))
        return Effect.fail(new ApiFailure(others
          ? { code: "refused", message: "that snapshot is not one this guest may roll back to" }
          : { code: "not_found", message: "no such snapshot of this guest" }))
      }),
    backup: (vmid) => run("backup", vmid, undefined, () => Effect.succeed({ job: `job-${++jobs}`, state: "queued" as const })),
    backupDue: (vmid) =>
      run("backupDue", vmid, undefined, () =>
        Effect.succeed({ due: true, reason: "slot_passed", target: "local", last_success_at: null, next_due_at: at })),
    backupStatus: (vmid) =>
      run("backupStatus", vmid, undefined, () => Effect.succeed({ jobs: [], last_success_at: null, last_archive: null })),
    restoreTestStatus: (vmid) =>
      run("restoreTestStatus", vmid, undefined, () =>
        Effect.succeed({ last_result: null, last_at: null, archive: null, detail: null, last_pass_at: null })),
    heartbeat: (vmid, req) => run("heartbeat", vmid, req, () => Effect.void),
    contact: (vmid) => Effect.sync(() => void calls.push({ method: "contact", vmid })),
    health: Effect.succeed({ status: "ok" as const, version: "test", checks: { journal: "ok" as const } })
  }
  return { shape, calls, snapshots, faults }
}

export interface ApiHarness {
  readonly api: LocalApiShape
  readonly tokens: LocalTokensShape
  readonly cert: LocalCertShape
  readonly audit: AuditLogShape
  readonly backend: RecordingBackend
  readonly certDir: string
  /** Every log line the layer wrote (message and cause), to sweep for secrets. */
  readonly logs: Array<string>
  readonly mint: (vmid: number) => Effect.Effect<{ readonly id: string; readonly token: string }>
}

export const testConfig = (overrides: Partial<ConstructorParameters<typeof LocalApiConfig>[0]> = {}) =>
  LocalApiConfig.make({ listen: "127.0.0.1", port: 0, ...overrides })

export const startApi = (
  overrides: Partial<ConstructorParameters<typeof LocalApiConfig>[0]> = {},
  options: LocalApiOptions = {}
): Effect.Effect<ApiHarness, never, Scope.Scope> =>
  Effect.gen(function*() {
    // the certificate's validity comes from the Clock: under TestClock, start it at the real now
    yield* TestClock.setTime(Date.now())
    const backend = recordingBackend()
    const logs: Array<string> = []
    const certDir = join(mkdtempSync(join(tmpdir(), "felhom-localapi-")), "local-api")
    const store = JournalLive.pipe(Layer.provideMerge(LocalTokensLive), Layer.provideMerge(layerAt(":memory:")))
    const deps = Layer.mergeAll(
      store,
      LocalCertLive({ dir: certDir, listen: "127.0.0.1" }),
      localApiSettings(testConfig(overrides)),
      Layer.succeed(LocalApiBackend, backend.shape)
    )
    const logger = Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ cause, message }) => void logs.push(`${JSON.stringify(message)} ${String(cause)}`))
    )
    const ctx = yield* Layer.build(LocalApiLive(options).pipe(Layer.provideMerge(deps), Layer.provide(logger))).pipe(Effect.orDie)
    const tokens = yield* Effect.provide(LocalTokens, ctx)
    const mint = (vmid: number) =>
      Effect.gen(function*() {
        const id = yield* tokens.newId
        const m = yield* tokens.mint(vmid as VmId, id)
        return { id, token: Redacted.value(m.token) }
      }).pipe(Effect.orDie)
    return {
      api: yield* Effect.provide(LocalApi, ctx),
      tokens,
      cert: yield* Effect.provide(LocalCert, ctx),
      audit: yield* Effect.provide(AuditLog, ctx),
      backend,
      certDir,
      logs,
      mint
    }
  })

export interface Reply {
  readonly status: number
  readonly headers: Record<string, string | Array<string> | undefined>
  readonly text: string
  readonly json: unknown
}

export const spkiOf = (raw: Buffer): string =>
  createHash("sha256").update(new X509Certificate(raw).publicKey.export({ type: "spki", format: "der" })).digest("base64")

export interface CallOptions {
  readonly method?: string
  readonly token?: string
  /** A raw Authorization header (wins over token). */
  readonly authorization?: string
  readonly body?: string | Buffer
  /** Send the body chunked (no Content-Length). */
  readonly chunked?: boolean
  readonly headers?: Record<string, string>
  /** The SPKI pin the client accepts (default: the API's current one). */
  readonly pin?: string
  readonly agent?: Agent
}

/** One HTTPS request to the API, trusting only its certificate and only with the pinned key. */
export const call = (h: ApiHarness, path: string, o: CallOptions = {}): Effect.Effect<Reply, Error> =>
  Effect.gen(function*() {
    const state = yield* h.cert.state
    const pin = o.pin ?? state.current.pin.spki_sha256
    const cas = [state.current.certPem, ...(state.next === null ? [] : [state.next.certPem])]
    return yield* Effect.async<Reply, Error>((resume) => {
      const headers: Record<string, string> = { ...o.headers }
      if (o.authorization !== undefined) headers["authorization"] = o.authorization
      else if (o.token !== undefined) headers["authorization"] = `Bearer ${o.token}`
      if (o.body !== undefined && o.chunked !== true) headers["content-length"] = String(Buffer.byteLength(o.body))
      // node's client frames chunks by default only for methods that expect a body: without the
      // header, a DELETE's or OPTIONS's body would go out unframed and read as a next request
      if (o.body !== undefined && o.chunked === true) headers["transfer-encoding"] = "chunked"
      if (o.body !== undefined) headers["content-type"] = "application/json"
      const req = request({
        host: h.api.host,
        port: h.api.port,
        method: o.method ?? "GET",
        path,
        headers,
        ca: cas,
        agent: o.agent ?? false,
        checkServerIdentity: (_host, cert) =>
          spkiOf(cert.raw) === pin ? undefined : new Error("certificate pin mismatch")
      }, (res) => {
        const chunks: Array<Buffer> = []
        res.on("data", (c: Buffer) => chunks.push(c))
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8")
          let parsed: unknown = undefined
          try {
            parsed = JSON.parse(text)
          } catch {
            parsed = undefined
          }
          resume(Effect.succeed({ status: res.statusCode ?? 0, headers: res.headers, text, json: parsed }))
        })
        res.on("error", (e) => resume(Effect.fail(e)))
      })
      req.on("error", (e) => resume(Effect.fail(e)))
      if (o.body !== undefined) req.write(o.body)
      req.end()
    })
  })

/** The mutations the backend saw, per vmid. */
export const mutationsOf = (b: RecordingBackend, vmid: number) =>
  b.calls.filter((c) => c.vmid === vmid && (c.method === "snapshot" || c.method === "rollback" || c.method === "backup"))

export const errorCode = (r: Reply): string | undefined =>
  Option.getOrUndefined(Option.fromNullable(
    (r.json as { readonly error?: { readonly code?: string } } | undefined)?.error?.code
  ))
