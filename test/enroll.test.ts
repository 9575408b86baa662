/**
 * `felhom-agent enroll` (issue 13): the program against the dev hub served in-process over loopback
 * HTTPS and a scratch host (fake pveum/systemctl/visudo under a root prefix). A full run; a re-run
 * that changes nothing (K unchanged, no second registration, no new code); a crash after every
 * step, then a re-run that completes; a wrong typed-back code uploads nothing; restore mode with
 * the right code installs the same K and calls the restore engine, with a wrong code installs
 * nothing. The secrets sweep: K, R, the PVE token secret, the api key, the enrollment and tunnel
 * tokens appear in no output (but R's one display), log line, state database row or agent.json.
 * Needs root (files must be root-owned).
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Option, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { existsSync, lstatSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { HOST_FILES } from "../src/layers/HostSetup.js"
import { unwrapKey } from "../src/programs/escrow/keyFile.js"
import { enroll, type EnrollDeps, type EnrollInput, type EnrollResult, NEW_STEPS, RESTORE_BUNDLE_FILE, RESTORE_STEPS, type RestoreOutcome } from "../src/programs/enroll/enroll.js"
import { EnrollFailed } from "../src/programs/enroll/ports.js"
import type { KeyFingerprint, RestoreBundle } from "../src/schema/escrow.js"
import { serveDevHub } from "../src/sim/hub/index.js"
import {
  dumpFiles,
  dumpStateDb,
  type EnrollHost,
  keyEncodings,
  makeEnrollHost,
  makeLogSink,
  makePerson,
  type Responder,
  services,
  TOKEN_SECRET,
  typeBack,
  writeCa
} from "./enroll-support.js"
import { isRoot } from "./privileged-support.js"

const hosts: Array<EnrollHost> = []
afterAll(() => {
  for (const h of hosts) h.cleanup()
})
const freshHost = () => {
  const h = makeEnrollHost()
  hosts.push(h)
  return h
}

/** Random: the hub client refuses an answer sharing any long fragment with the token. */
const newToken = () => `et${randomBytes(16).toString("hex")}`

const inputFor = (h: EnrollHost, hub: { url: string; caFile: string }, token: string | undefined, extra: Partial<EnrollInput> = {}): EnrollInput => ({
  mode: "new",
  hubUrl: hub.url,
  hubCa: hub.caFile,
  token: token === undefined
    ? Effect.fail(new EnrollFailed({ step: "register", message: "test: no token should be needed" }))
    : Effect.succeed(Redacted.make(token)),
  node: "pve",
  base: h.baseConfig,
  paperkey: false,
  golden: false,
  ...extra
})

const noRestore: EnrollDeps["restoreHost"] = () => Effect.die("restoreHost not expected")
const depsWith = (extra: Partial<EnrollDeps> = {}): EnrollDeps => ({
  isRoot: true,
  buildGolden: Effect.succeed("golden built (test)"),
  restoreHost: noRestore,
  ...extra
})

/** Runs enroll once for `h` with a scripted person; the Exit, what the person saw, the logs. */
const runEnroll = (h: EnrollHost, hub: { url: string; caFile: string }, input: EnrollInput, deps: EnrollDeps, respond: Responder = typeBack) =>
  Effect.gen(function*() {
    const person = makePerson(respond)
    const logs = makeLogSink()
    const exit = yield* logs.provide(enroll(input, deps)).pipe(
      Effect.provide(services(h, hub)),
      Effect.provide(person.layer),
      Effect.exit
    )
    return { exit, person, logs }
  })

const value = <A, E>(exit: Exit.Exit<A, E>): A => {
  if (Exit.isFailure(exit)) throw new Error(`expected success, got ${JSON.stringify(exit.cause)}`)
  return exit.value
}
const failure = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  const f = exit.cause._tag === "Fail" ? exit.cause.error : undefined
  if (f === undefined) throw new Error(`expected a typed failure, got ${JSON.stringify(exit.cause)}`)
  return f
}

/** The dev hub on loopback HTTPS for the test's scope, and its CA as a file. */
const devHub = (h: EnrollHost) =>
  Effect.map(serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: {} }), (s) => ({ ...s, caFile: writeCa(h.base, s.caPem) }))

const fingerprintOfKeyFile = (keyFile: string) => Effect.map(unwrapKey(readFileSync(keyFile, "utf8"), undefined), (r) => r.fingerprint)

describe.skipIf(!isRoot)("enroll: a new host", () => {
  it.live("a full run: K installed, the escrow at the hub unwraps with the code shown to K's fingerprint; files and the secrets sweep", () =>
    Effect.scoped(Effect.gen(function*() {
      const h = freshHost()
      const hub = yield* devHub(h)
      const token = newToken()
      yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
      const { exit, person, logs } = yield* runEnroll(h, hub, inputFor(h, hub, token), depsWith())
      const r: EnrollResult = value(exit)
      expect(r.steps.map((s) => s.step)).toEqual(NEW_STEPS.filter((s) => s !== "golden"))
      const fp = yield* fingerprintOfKeyFile(h.keyFile)
      expect(r.keyFingerprint).toBe(fp)
      const blob = yield* hub.hub.escrowOf(r.hostId)
      expect(Option.isSome(blob)).toBe(true)
      const b = Option.getOrThrow(blob)
      expect(b.fingerprint).toBe(fp)
      expect(b.generation).toBe(r.escrowGeneration)
      const code = person.code()!
      expect(code.split(" ")).toHaveLength(12)
      const unwrapped = yield* unwrapKey(b.key, Redacted.make(code))
      expect(unwrapped.fingerprint).toBe(fp)
      expect(b.key).toContain("\"Scrypt\"")
      // the person saw the loss statement and was asked once
      expect(person.said.join("\n")).toContain("unrecoverable by anyone")
      expect(person.prompts).toHaveLength(1)
      // files
      const agent = JSON.parse(readFileSync(join(h.prefix, HOST_FILES.agentJson), "utf8")) as Record<string, any>
      expect(agent["host_id"]).toBe(r.hostId)
      expect(agent["proxmox"]["token_id"]).toBe("felhom-agent@pve!agent")
      expect(agent["proxmox"]["tls"]["fingerprint_sha256"]).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/)
      expect(agent["hub"]).toEqual({ url: hub.url, ca_file: hub.caFile })
      const secretsEnv = readFileSync(join(h.prefix, HOST_FILES.secretsEnv), "utf8")
      expect(secretsEnv).toContain(`FELHOM_AGENT_PROXMOX_TOKEN_SECRET=${TOKEN_SECRET}`)
      const apiKey = /FELHOM_AGENT_HUB_API_KEY=(\S+)/.exec(secretsEnv)![1]!
      expect(lstatSync(join(h.prefix, HOST_FILES.secretsEnv)).mode & 0o777).toBe(0o600)
      expect(existsSync(join(h.prefix, HOST_FILES.sudoers))).toBe(true)
      expect(existsSync(join(h.prefix, HOST_FILES.unitDir, "felhom-agent.service"))).toBe(true)
      // the sweep
      const secrets = [...keyEncodings(h.keyFile), code, TOKEN_SECRET, apiKey, token]
      const output = [...person.said, ...person.prompts].join("\n")
      const shownOnce = person.shown.join("\n")
      const db = dumpStateDb(h.stateDir)
      expect(db).toContain("\"step\":\"recovery-code\"")
      const agentText = readFileSync(join(h.prefix, HOST_FILES.agentJson), "utf8")
      const files = dumpFiles(h.prefix, (p) => p === h.keyFile || p === join(h.prefix, HOST_FILES.secretsEnv))
      for (const s of secrets) {
        expect(output).not.toContain(s)
        expect(logs.lines.join("\n")).not.toContain(s)
        expect(db).not.toContain(s)
        expect(agentText).not.toContain(s)
        expect(files).not.toContain(s)
        expect(dumpFiles(h.stateDir, () => false)).not.toContain(s)
      }
      // R is shown exactly once; K never
      expect(shownOnce.split(code.split(" ")[0]!).length).toBeGreaterThan(1)
      expect(person.shown).toHaveLength(1)
      for (const k of keyEncodings(h.keyFile)) expect(shownOnce).not.toContain(k)
    })))

  it.live("a re-run changes nothing: K unchanged, no second registration, no new code; the golden step runs when asked", () =>
    Effect.scoped(Effect.gen(function*() {
      const h = freshHost()
      const hub = yield* devHub(h)
      const token = newToken()
      yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
      const first = value((yield* runEnroll(h, hub, inputFor(h, hub, token), depsWith())).exit)
      const keyBefore = readFileSync(h.keyFile, "utf8")
      const pveumCalls = h.calls("pveum").length
      let golden = 0
      const again = yield* runEnroll(h, hub, inputFor(h, hub, undefined, { golden: true }), depsWith({ buildGolden: Effect.sync(() => `built ${++golden}`) }), () => undefined)
      const r = value(again.exit)
      expect(r.hostId).toBe(first.hostId)
      expect(readFileSync(h.keyFile, "utf8")).toBe(keyBefore)
      expect(again.person.shown).toEqual([])
      expect(again.person.prompts).toEqual([])
      expect(r.steps.filter((s) => s.outcome !== "skipped").map((s) => s.step)).toEqual(["golden"])
      expect(golden).toBe(1)
      expect((yield* hub.hub.view(first.hostId)).enrollments).toHaveLength(1)
      expect(Option.getOrThrow(yield* hub.hub.escrowOf(first.hostId)).generation).toBe(first.escrowGeneration)
      // pveum was only asked to list and re-grant the ACLs? no: pve-access was skipped entirely
      expect(h.calls("pveum").length).toBe(pveumCalls)
    })))

  it.live("a crash after each step's work: a re-run completes, with one registration, one K and one escrow", () =>
    Effect.scoped(Effect.gen(function*() {
      for (const crashAt of NEW_STEPS.filter((s) => s !== "golden")) {
        const h = freshHost()
        const hub = yield* devHub(h)
        const token = newToken()
        yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
        const crashed = yield* runEnroll(h, hub, inputFor(h, hub, token), depsWith({
          afterWork: (s) => (s === crashAt ? Effect.dieMessage(`crash after ${s}`) : Effect.void)
        }))
        expect(Exit.isFailure(crashed.exit), crashAt).toBe(true)
        const keyAfterCrash = existsSync(h.keyFile) ? readFileSync(h.keyFile, "utf8") : undefined
        // the unit is enabled by the last step only: a reboot mid-enrollment starts no daemon
        const enabled = () => h.calls("systemctl").some((c) => c[0] === "enable")
        expect(enabled(), crashAt).toBe(crashAt === "done")
        const rerun = yield* runEnroll(h, hub, inputFor(h, hub, token), depsWith())
        const r = value(rerun.exit)
        expect(enabled(), crashAt).toBe(true)
        if (keyAfterCrash !== undefined) expect(readFileSync(h.keyFile, "utf8"), crashAt).toBe(keyAfterCrash)
        const blob = Option.getOrThrow(yield* hub.hub.escrowOf(r.hostId))
        expect(blob.fingerprint, crashAt).toBe(yield* fingerprintOfKeyFile(h.keyFile))
        expect(blob.generation, crashAt).toBe(1)
        expect((yield* hub.hub.view(r.hostId)).enrollments, crashAt).toHaveLength(1)
        // the code that unwraps the escrow is one the person saw
        const codes = [crashed.person.code(), rerun.person.code()].filter((c): c is string => c !== undefined)
        const opens = yield* Effect.forEach(codes, (c) => Effect.either(unwrapKey(blob.key, Redacted.make(c))))
        expect(opens.some(Either.isRight), crashAt).toBe(true)
        if (crashAt === "recovery-code") expect(rerun.person.shown, "uploaded before the crash: no new code").toEqual([])
      }
    })), 120_000)

  it.live("a wrong typed-back code three times uploads nothing; the re-run shows a new code and completes with the same K", () =>
    Effect.scoped(Effect.gen(function*() {
      const h = freshHost()
      const hub = yield* devHub(h)
      const token = newToken()
      yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
      // a checksum-valid other code, a typo'd word, and nothing
      const answers = ["abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"]
      const bad = yield* runEnroll(h, hub, inputFor(h, hub, token), depsWith(), (_p, code) => {
        const next = answers.shift()
        if (next !== undefined) return next
        if (code === undefined) return undefined
        const w = code.split(" ")
        return answers.length === 0 && w[4] !== "zzzz" ? [...w.slice(0, 4), "zzzz", ...w.slice(5)].join(" ") : undefined
      })
      const e = failure(bad.exit)
      expect((e as EnrollFailed).step).toBe("recovery-code")
      expect(e.message).toContain("nothing was uploaded")
      expect(bad.person.said.join("\n")).toMatch(/word 5 is not a recovery-code word/)
      const hostId = JSON.parse(readFileSync(join(h.prefix, HOST_FILES.agentJson), "utf8"))["host_id"] as string
      expect(Option.isNone(yield* hub.hub.escrowOf(hostId))).toBe(true)
      const code1 = bad.person.code()!
      expect(e.message).not.toContain(code1)
      const keyBefore = readFileSync(h.keyFile, "utf8")
      const good = yield* runEnroll(h, hub, inputFor(h, hub, undefined), depsWith())
      value(good.exit)
      expect(readFileSync(h.keyFile, "utf8")).toBe(keyBefore)
      expect(good.person.code()).not.toBe(code1)
      const blob = Option.getOrThrow(yield* hub.hub.escrowOf(hostId))
      expect((yield* Effect.either(unwrapKey(blob.key, Redacted.make(code1))))._tag).toBe("Left")
      expect((yield* unwrapKey(blob.key, Redacted.make(good.person.code()!))).fingerprint).toBe(blob.fingerprint)
    })), 60_000)

  it.live("--paperkey prints the raw key after a warning; not root: preflight refuses before anything", () =>
    Effect.scoped(Effect.gen(function*() {
      const h = freshHost()
      const hub = yield* devHub(h)
      const token = newToken()
      yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
      const notRoot = yield* runEnroll(h, hub, inputFor(h, hub, token), depsWith({ isRoot: false }))
      expect(failure(notRoot.exit).message).toContain("must run as root")
      expect(h.calls("pveum")).toEqual([])
      const run = yield* runEnroll(h, hub, inputFor(h, hub, token, { paperkey: true }), depsWith())
      value(run.exit)
      expect(run.person.said.join("\n")).toContain("RAW PBS encryption key")
      const paper = run.person.shown.find((s) => s.includes("BEGIN PROXMOX BACKUP KEY"))
      expect(paper).toBeDefined()
      expect(paper).toContain(keyEncodings(h.keyFile)[0])
    })), 60_000)
})

// ---------------------------------------------------------------------------------------------
// Restore mode

/** Enrolls a first box as host H and returns its code and key, then a restore grant for H. */
const lostHost = (hub: Effect.Effect.Success<ReturnType<typeof devHub>>) =>
  Effect.gen(function*() {
    const old = freshHost()
    const token = newToken()
    yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
    const first = yield* runEnroll(old, { url: hub.url, caFile: hub.caFile }, inputFor(old, hub, token), depsWith())
    const r = value(first.exit)
    const restoreToken = newToken()
    yield* hub.hub.addEnrollmentToken(restoreToken, {
      mode: "restore",
      host_id: r.hostId,
      bundle: {
        pbs_namespace: `felhom/${r.hostId}`,
        tunnel_token: Redacted.make("tunnel-token-0123456789"),
        storage: () => [],
        directive: { guests: [{ vmid: 110, name: "nextcloud" }] }
      }
    })
    return { code: first.person.code()!, keyText: readFileSync(old.keyFile, "utf8"), hostId: r.hostId, fingerprint: r.keyFingerprint, restoreToken }
  })

describe.skipIf(!isRoot)("enroll --restore-mode", () => {
  it.live("the right code (abbreviated): K installed with the escrow's fingerprint, restoreHost called with it, tunnel token 0600", () =>
    Effect.scoped(Effect.gen(function*() {
      const hub = yield* devHub(freshHost())
      const lost = yield* lostHost(hub)
      const box = freshHost()
      const calls: Array<{ bundle: RestoreBundle; keyFingerprint: KeyFingerprint }> = []
      const restoreHost: EnrollDeps["restoreHost"] = (i) =>
        Effect.sync((): RestoreOutcome => {
          calls.push(i)
          return { ok: true, human: "guest 110 nextcloud: restored", json: { guests: [{ vmid: 110, outcome: "restored" }] } }
        })
      const abbreviated = lost.code.split(" ").map((w) => w.slice(0, 4).toUpperCase()).join("   ")
      const run = yield* runEnroll(box, hub, inputFor(box, hub, lost.restoreToken, { mode: "restore" }), depsWith({ restoreHost }), () => abbreviated)
      const r = value(run.exit)
      expect(r.mode).toBe("restore")
      expect(r.hostId).toBe(lost.hostId)
      expect(r.steps.map((s) => s.step)).toEqual([...RESTORE_STEPS])
      expect(r.keyFingerprint).toBe(lost.fingerprint)
      expect(yield* fingerprintOfKeyFile(box.keyFile)).toBe(lost.fingerprint)
      expect(JSON.parse(readFileSync(box.keyFile, "utf8")).data).toBe(JSON.parse(lost.keyText).data)
      expect(calls).toHaveLength(1)
      expect(calls[0]!.keyFingerprint).toBe(lost.fingerprint)
      expect(calls[0]!.bundle.directive.guests.map((g) => g.vmid)).toEqual([110])
      expect(r.restore?.ok).toBe(true)
      const tunnel = join(box.prefix, HOST_FILES.tunnelToken)
      expect(readFileSync(tunnel, "utf8")).toBe("tunnel-token-0123456789\n")
      expect(lstatSync(tunnel).mode & 0o777).toBe(0o600)
      // the bundle (sealed creds, the escrow blob) served its purpose: gone with the done step
      expect(existsSync(join(box.prefix, RESTORE_BUNDLE_FILE))).toBe(false)
      expect(run.person.shown).toEqual([])
      // the sweep: R, K, the tunnel token in no output, log, state row or agent.json
      const secrets = [lost.code, ...keyEncodings(box.keyFile), "tunnel-token-0123456789", lost.restoreToken]
      const db = dumpStateDb(box.stateDir)
      const agentText = readFileSync(join(box.prefix, HOST_FILES.agentJson), "utf8")
      for (const s of secrets) {
        expect(run.person.said.join("\n")).not.toContain(s)
        expect(run.logs.lines.join("\n")).not.toContain(s)
        expect(db).not.toContain(s)
        expect(agentText).not.toContain(s)
      }
    })), 60_000)

  it.live("a wrong code installs and restores nothing, names the wrong word, and may be retried", () =>
    Effect.scoped(Effect.gen(function*() {
      const hub = yield* devHub(freshHost())
      const lost = yield* lostHost(hub)
      const box = freshHost()
      let restored = 0
      const restoreHost: EnrollDeps["restoreHost"] = () => Effect.sync(() => (restored++, { ok: true, human: "ok", json: {} }))
      // one word swapped for another valid word at position 3 (checksum may or may not hold)
      const words = lost.code.split(" ")
      const typos = [
        [...words.slice(0, 2), "qqqq", ...words.slice(3)].join(" "),
        words.slice(0, 11).join(" ")
      ]
      const bad = yield* runEnroll(box, hub, inputFor(box, hub, lost.restoreToken, { mode: "restore" }), depsWith({ restoreHost }), () => typos.shift())
      const e = failure(bad.exit)
      expect(e.message).toContain("nothing was installed or restored")
      expect(bad.person.said.join("\n")).toContain("word 3 is not a recovery-code word")
      expect(existsSync(box.keyFile)).toBe(false)
      expect(restored).toBe(0)
      expect(box.calls("pveum")).toEqual([])
      // the retry (register is done: no token needed)
      const good = yield* runEnroll(box, hub, inputFor(box, hub, undefined, { mode: "restore" }), depsWith({ restoreHost }), () => lost.code)
      value(good.exit)
      expect(restored).toBe(1)
      expect(yield* fingerprintOfKeyFile(box.keyFile)).toBe(lost.fingerprint)
    })), 60_000)
})
