/**
 * The self-update saga (issue 14) against the dev hub over loopback HTTPS (real HTTP, the hub
 * client's own verified-TLS transport) and a fake root helper `felhom-update` (a shell script
 * recording its argv, playing stage and activate on a scratch prefix).
 *
 * Hostile hub: tampered bytes, an oversized body, a manifest other than the one signed for, a
 * signed manifest with a path-traversal entry, a version swap, an unsigned manifest, an error
 * body echoing the api key. Invariant: nothing reaches a slot unless signed by a release key;
 * the hub alone can at most withhold an update. Crashes after each step, then recovery: nothing
 * staged from a partial download, activate never re-run.
 */
import { HttpServerResponse } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Schema, TestClock } from "effect"
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { AgentConfig, hubSettings } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { hubHttpClientLayer } from "../src/layers/Hub.js"
import { HubReleases, type HubReleasesShape, HubReleasesWithoutClient } from "../src/layers/HubReleases.js"
import { type JournalOp, JournalLive } from "../src/layers/Journal.js"
import { OpLog } from "../src/layers/OpLog.js"
import { PrivilegedUpdate, privilegedUpdateLayerAt, DEFAULT_HOST_PATHS, type PrivilegedUpdateShape } from "../src/layers/Privileged.js"
import { GATE_START_GRACE_MS, recoverAgentUpdate, runAgentUpdate, UpdateSettings, type UpdateSettingsShape } from "../src/programs/update/saga.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { decodeOperation } from "../src/schema/operations.js"
import { MANIFEST_FILE } from "../src/schema/release.js"
import { devHubCaPem, serveApp, serveDevHub } from "../src/sim/hub/index.js"
import { shq } from "./privileged-support.js"
import { makeRelease, makeReleaseKey, scratch, sigOf, sshSign } from "./update-support.js"
import { createHash } from "node:crypto"

const TOKEN = "fhk_s3cr3t-release-api-key-0123456789abcdefABCDEF"
const HOST = "pve-upd-01"
const key = makeReleaseKey()
const stranger = makeReleaseKey("mallory@hub")
const V = "1.4.0"
const caFile = join(scratch("hubca"), "ca.pem")
writeFileSync(caFile, devHubCaPem)

const shaOf = (b: Uint8Array) => createHash("sha256").update(b).digest("hex")

/** A scratch install: state dir, prefix with package/ as current, and the fake helper. */
const makeHost = () => {
  const root = scratch("host")
  const stateDir = join(root, "state")
  const prefix = join(root, "opt")
  mkdirSync(stateDir, { recursive: true })
  mkdirSync(join(prefix, "package"), { recursive: true })
  mkdirSync(join(prefix, "slots"), { recursive: true })
  writeFileSync(join(prefix, "package", MANIFEST_FILE), JSON.stringify({ version: "1.3.0" }))
  const calls = join(root, "helper.calls")
  const helper = join(root, "felhom-update")
  // stage: copy the fixed source dir into slots/a, update.json staged; activate: what the gate
  // does once started (flip current, trial); FAKE_ACTIVATE=revert|none lets a test choose
  writeFileSync(helper, [
    "#!/bin/sh",
    "set -e",
    `calls=${shq(calls)}; state=${shq(stateDir)}; prefix=${shq(prefix)}`,
    `printf '%s\\n' "$*" >> "$calls"`,
    `mode=$(cat ${shq(join(root, "activate-mode"))} 2>/dev/null || echo trial)`,
    "case \"$1\" in",
    "  stage)",
    "    [ -f \"$state/update/$2/RELEASE.json\" ] || { echo 'no complete download' >&2; exit 3; }",
    "    rm -rf \"$prefix/slots/a\"; cp -a \"$state/update/$2\" \"$prefix/slots/a\"",
    "    printf '{\"state\":\"staged\",\"slot\":\"a\",\"version\":\"%s\"}' \"$2\" > \"$prefix/update.json\"",
    "    echo \"staged a $2\" ;;",
    "  activate)",
    "    v=$(sed -n 's/.*\"version\":\"\\([^\"]*\\)\".*/\\1/p' \"$prefix/update.json\")",
    "    case \"$mode\" in",
    "      trial) ln -sfn slots/a \"$prefix/current\"; printf '{\"state\":\"trial\",\"slot\":\"a\",\"version\":\"%s\"}' \"$v\" > \"$prefix/update.json\" ;;",
    "      revert) printf '{\"state\":\"reverted\",\"slot\":\"a\",\"version\":\"%s\",\"reason\":\"health window failed: /health never ok\"}' \"$v\" > \"$prefix/update.json\" ;;",
    "      none) : ;;",
    "    esac",
    "    echo \"activating $v\" ;;",
    "  *) exit 2 ;;",
    "esac",
    ""
  ].join("\n"))
  chmodSync(helper, 0o755)
  writeFileSync(join(root, "activate-mode"), "trial")
  return {
    root,
    stateDir,
    prefix,
    helperCalls: () => (existsSync(calls) ? readFileSync(calls, "utf8").trim().split("\n").filter((l) => l !== "") : []),
    setActivate: (m: "trial" | "revert" | "none") => writeFileSync(join(root, "activate-mode"), m),
    privileged: privilegedUpdateLayerAt(DEFAULT_HOST_PATHS).pipe(
      Layer.provide(Layer.succeed(AgentConfig, {
        source: undefined,
        file: Schema.decodeUnknownSync(AgentConfigFile)({ privileged: { mode: "direct", timeout_seconds: 10, commands: { "felhom-update": helper } } })
      })),
      Layer.provide(NodeContext.layer)
    )
  }
}
type Host = ReturnType<typeof makeHost>

const settingsFor = (h: Host, over: Partial<UpdateSettingsShape> = {}): UpdateSettingsShape => ({
  stateDir: h.stateDir,
  helperStateDir: h.stateDir,
  prefix: h.prefix,
  signers: [key.key],
  maxReleaseBytes: 64 * 1024 * 1024,
  ...over
})

const releasesAt = (url: string) =>
  HubReleasesWithoutClient.pipe(
    Layer.provide(hubHttpClientLayer(caFile)),
    Layer.provide(hubSettings(Schema.decodeUnknownSync(AgentConfigFile)({ host_id: HOST, hub: { url, api_key: TOKEN } }).hub!))
  )

/** The saga's services over a fresh journal; `wrapHub`/`wrapPriv` inject crashes. */
const servicesFor = (
  h: Host,
  url: string,
  o: { settings?: Partial<UpdateSettingsShape>; wrapHub?: (r: HubReleasesShape) => HubReleasesShape; wrapPriv?: (p: PrivilegedUpdateShape) => PrivilegedUpdateShape } = {}
) => {
  const db = layerAt(join(h.root, "state.db"))
  const hub = Layer.effect(HubReleases, Effect.map(HubReleases, (r) => (o.wrapHub ?? ((x) => x))(r))).pipe(Layer.provide(releasesAt(url)))
  const priv = Layer.effect(PrivilegedUpdate, Effect.map(PrivilegedUpdate, (p) => (o.wrapPriv ?? ((x) => x))(p))).pipe(Layer.provide(h.privileged))
  return Layer.mergeAll(JournalLive.pipe(Layer.provide(db)), hub, priv, Layer.succeed(UpdateSettings, settingsFor(h, o.settings))).pipe(Layer.orDie)
}

const withHub = <A, E>(body: (url: string, hub: Effect.Effect.Success<ReturnType<typeof serveDevHub>>["hub"]) => Effect.Effect<A, E>) =>
  Effect.scoped(Effect.flatMap(serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: { [TOKEN]: HOST } }), (s) => body(s.url, s.hub)))

const inFlight = Effect.flatMap(OpLog, (l) => l.inFlight)
const lastOp = Effect.flatMap(OpLog, (l) => l.list({ limit: 1 })).pipe(Effect.map((ops) => ops[0]!))

const recoverAll = Effect.gen(function*() {
  const out: Array<{ op: JournalOp; outcome: string; detail: string }> = []
  for (const op of yield* inFlight) {
    const typed = decodeOperation(op.payload)
    if (Either.isLeft(typed) || typed.right._tag !== "agent-update") throw new Error("unexpected op")
    const r = yield* recoverAgentUpdate(op, typed.right)
    out.push({ op, ...r })
  }
  return out
})

/** Everything below the prefix's slots (what reached a slot). */
const slotFiles = (h: Host) => (existsSync(join(h.prefix, "slots", "a")) ? readdirSync(join(h.prefix, "slots", "a"), { recursive: true }).map(String).sort() : [])

const expectNoSecret = (text: string) => {
  expect(text).not.toContain(TOKEN)
  expect(text).not.toContain(TOKEN.slice(4, 30))
}

describe("agent-update against the dev hub (loopback HTTPS)", () => {
  it.live("a signed release: downloaded, staged by the helper, activated; recovery then sees it running", () => {
    const h = makeHost()
    const r = makeRelease(key, V)
    return withHub((url, hub) =>
      Effect.gen(function*() {
        yield* hub.addRelease(r.dir)
        const started = yield* runAgentUpdate(V, shaOf(r.bytes), null)
        expect(started.activating).toBe(V)
        expect(h.helperCalls()).toEqual([`stage ${V}`, "activate"])
        // what reached the slot is exactly the signed tree, modes included
        expect(slotFiles(h)).toContain("bin/node")
        expect(statSync(join(h.prefix, "slots", "a", "bin", "node")).mode & 0o777).toBe(0o755)
        expect(readFileSync(join(h.prefix, "slots", "a", MANIFEST_FILE))).toEqual(r.bytes)
        // the download directory is removed once the helper holds its own copy
        expect(existsSync(join(h.stateDir, "update", V))).toBe(false)
        // the op stays in flight until the next process's recovery reads the gate's verdict
        const op = (yield* inFlight)[0]!
        expect(op.steps.map((s) => [s.name, s.status])).toEqual([["download", "done"], ["stage", "done"], ["activate", "done"]])
        const rec = yield* recoverAll
        expect(rec[0]).toMatchObject({ outcome: "done" })
        expect(rec[0]!.detail).toMatch(/1\.4\.0 is running \(trial/)
        expect(h.helperCalls()).toEqual([`stage ${V}`, "activate"])
      }).pipe(Effect.provide(servicesFor(h, url))))
  })

  const refusedCase = (
    name: string,
    setup: (hub: Effect.Effect.Success<ReturnType<typeof serveDevHub>>["hub"], r: ReturnType<typeof makeRelease>) => Effect.Effect<unknown, unknown>,
    pattern: RegExp,
    o: { sha?: (r: ReturnType<typeof makeRelease>) => string; settings?: Partial<UpdateSettingsShape> } = {}
  ) =>
    it.live(name, () => {
      const h = makeHost()
      const r = makeRelease(key, V)
      return withHub((url, hub) =>
        Effect.gen(function*() {
          yield* setup(hub, r)
          const e = yield* Effect.flip(runAgentUpdate(V, o.sha?.(r) ?? shaOf(r.bytes), null))
          expect(e.message).toMatch(pattern)
          expectNoSecret(e.message)
          // nothing reached a slot, the helper never ran, the download is gone, the op failed
          expect(h.helperCalls()).toEqual([])
          expect(slotFiles(h)).toEqual([])
          expect(existsSync(join(h.stateDir, "update", V))).toBe(false)
          const op = yield* lastOp
          if (op !== undefined && e._tag === "UpdateFailed" && e.step !== "precheck") {
            expect(op.status).toBe("failed")
            expectNoSecret(op.detail ?? "")
          }
        }).pipe(Effect.provide(servicesFor(h, url, o.settings === undefined ? {} : { settings: o.settings }))))
    })

  refusedCase("a file whose bytes do not match the signed SHA-256", (hub, r) => {
    const p = join(r.dir, "lib", "felhom-agent.cjs")
    const b = readFileSync(p)
    b[5] = b[5]! ^ 0x20
    writeFileSync(p, b)
    return hub.addRelease(r.dir)
  }, /do not match the signed manifest's SHA-256/)

  refusedCase("an oversized body (more bytes than the manifest lists)", (hub, r) => {
    writeFileSync(join(r.dir, "bin", "node"), Buffer.concat([readFileSync(join(r.dir, "bin", "node")), Buffer.alloc(4096)]))
    return hub.addRelease(r.dir)
  }, /declares \d+ bytes, more than the 70015 expected/)

  refusedCase("a manifest other than the one the operator signed for", (hub, r) => hub.addRelease(r.dir), /not the one signed for/, {
    sha: () => "0".repeat(64)
  })

  refusedCase("a manifest signed by a key that is not a release signer", (hub, r) => {
    rmSync(join(r.dir, `${MANIFEST_FILE}.sig`))
    sshSign(stranger, join(r.dir, MANIFEST_FILE))
    return hub.addRelease(r.dir)
  }, /not a configured release signer/)

  refusedCase("an operator-op signature over the release bytes (wrong namespace)", (hub, r) => {
    rmSync(join(r.dir, `${MANIFEST_FILE}.sig`))
    sshSign(key, join(r.dir, MANIFEST_FILE), "felhom-op-v1")
    return hub.addRelease(r.dir)
  }, /namespace/)

  let evilSha = ""
  refusedCase("a validly signed manifest naming a path outside the tree", (hub, r) => {
    const evil = JSON.parse(r.bytes.toString("utf8")) as { files: Array<{ path: string; sha256: string; size: number; mode: number }> }
    evil.files.push({ path: "../../../../etc/cron.d/evil", sha256: shaOf(Buffer.from("x")), size: 1, mode: 420 })
    const dir = scratch("evil")
    const m = join(dir, MANIFEST_FILE)
    writeFileSync(m, JSON.stringify(evil, null, 2))
    evilSha = shaOf(readFileSync(m))
    const sig = sshSign(key, m)
    return hub.putRelease(V, { manifest: readFileSync(m), signature: sig, files: new Map([[shaOf(Buffer.from("x")), Buffer.from("x")]]) })
  }, /does not match the manifest schema: files\.4\.path/, { sha: () => evilSha })

  refusedCase("a release of another version served under this one", (hub) => {
    const other = makeRelease(key, "1.3.9")
    return hub.putRelease(V, { manifest: other.bytes, signature: sigOf(other.dir), files: new Map() })
  }, /version 1\.3\.9 for 1\.4\.0/)

  refusedCase("a release larger than update.max_release_bytes", (hub, r) => hub.addRelease(r.dir), /more than update\.max_release_bytes/, {
    settings: { maxReleaseBytes: 50_000 }
  })

  refusedCase("no release signers configured", (hub, r) => hub.addRelease(r.dir), /no release signers configured/, { settings: { signers: [] } })

  refusedCase("a state_dir the helper does not stage from", (hub, r) => hub.addRelease(r.dir), /self-update needs the default state_dir/, {
    settings: { helperStateDir: "/var/lib/felhom-agent" }
  })

  refusedCase("a release the hub does not have (it can withhold one)", () => Effect.void, /HTTP 404/)

  it.live("a symlinked <state_dir>/update (planted by the service user): refused, nothing written through it", () => {
    const h = makeHost()
    const r = makeRelease(key, V)
    const elsewhere = scratch("elsewhere")
    mkdirSync(join(elsewhere, V))
    writeFileSync(join(elsewhere, V, "keep"), "not the agent's")
    symlinkSync(elsewhere, join(h.stateDir, "update"))
    return withHub((url, hub) =>
      Effect.gen(function*() {
        yield* hub.addRelease(r.dir)
        const e = yield* Effect.flip(runAgentUpdate(V, shaOf(r.bytes), null))
        expect(e.message).toMatch(/update is not a directory/)
        expect(readdirSync(elsewhere, { recursive: true }).map(String).sort()).toEqual([V, `${V}/keep`])
        expect(h.helperCalls()).toEqual([])
      }).pipe(Effect.provide(servicesFor(h, url))))
  })

  it.live("a hub echoing the api key in its error body: the key never reaches the error", () => {
    const h = makeHost()
    const app = Effect.succeed(HttpServerResponse.text(`upstream said: Authorization: Bearer ${TOKEN}`, { status: 500 }))
    return Effect.scoped(Effect.gen(function*() {
      const s = yield* serveApp(app, { host: "127.0.0.1", port: 0 })
      const e = yield* Effect.flip(runAgentUpdate(V, "a".repeat(64), null).pipe(Effect.provide(servicesFor(h, s.url))))
      expect(e.message).toMatch(/HTTP 500/)
      expectNoSecret(e.message)
    }))
  })
})

describe("agent-update: a crash after each step, then recovery", () => {
  it.live("mid-download: nothing is staged from the partial download; recovery abandons it and removes it", () => {
    const h = makeHost()
    const r = makeRelease(key, V)
    let files = 0
    return withHub((url, hub) =>
      Effect.gen(function*() {
        yield* hub.addRelease(r.dir)
        const wrapHub = (x: HubReleasesShape): HubReleasesShape => ({
          ...x,
          file: (v, f, t) => (++files === 3 ? Effect.interrupt : x.file(v, f, t))
        })
        yield* Effect.exit(runAgentUpdate(V, shaOf(r.bytes), null).pipe(Effect.provide(servicesFor(h, url, { wrapHub }))))
        expect(existsSync(join(h.stateDir, "update", V, "bin", "felhom-agent"))).toBe(true)
        expect(existsSync(join(h.stateDir, "update", V, MANIFEST_FILE))).toBe(false)
        // the helper refuses a download without RELEASE.json even if asked
        const rec = yield* recoverAll.pipe(Effect.provide(servicesFor(h, url)))
        expect(rec.map((x) => [x.outcome, x.detail])).toEqual([["failed", "interrupted before activation; nothing changed"]])
        expect(existsSync(join(h.stateDir, "update", V))).toBe(false)
        expect(h.helperCalls()).toEqual([])
        expect(slotFiles(h)).toEqual([])
      }))
  })

  it.live("after download, before stage ran; and after stage, before activate: abandoned, activate never run", () => {
    const h = makeHost()
    const r = makeRelease(key, V)
    return withHub((url, hub) =>
      Effect.gen(function*() {
        yield* hub.addRelease(r.dir)
        const beforeStage = (p: PrivilegedUpdateShape): PrivilegedUpdateShape => ({ ...p, stage: () => Effect.interrupt })
        yield* Effect.exit(runAgentUpdate(V, shaOf(r.bytes), null).pipe(Effect.provide(servicesFor(h, url, { wrapPriv: beforeStage }))))
        expect(existsSync(join(h.stateDir, "update", V, MANIFEST_FILE))).toBe(true)
        const rec1 = yield* recoverAll.pipe(Effect.provide(servicesFor(h, url)))
        expect(rec1.map((x) => x.outcome)).toEqual(["failed"])
        expect(existsSync(join(h.stateDir, "update", V))).toBe(false)
        expect(h.helperCalls()).toEqual([])

        // the helper staged, the process died before recording it (so before activate)
        const afterStage = (p: PrivilegedUpdateShape): PrivilegedUpdateShape => ({ ...p, stage: (v) => Effect.zipRight(p.stage(v), Effect.interrupt) })
        yield* Effect.exit(runAgentUpdate(V, shaOf(r.bytes), null).pipe(Effect.provide(servicesFor(h, url, { wrapPriv: afterStage }))))
        expect(h.helperCalls()).toEqual([`stage ${V}`])
        const rec2 = yield* recoverAll.pipe(Effect.provide(servicesFor(h, url)))
        expect(rec2.map((x) => [x.outcome, x.detail])).toEqual([["failed", "interrupted before activation; nothing changed"]])
        // recovery never runs activate: the staged slot stays inert, current unchanged
        expect(h.helperCalls()).toEqual([`stage ${V}`])
        expect(existsSync(join(h.prefix, "current"))).toBe(false)
      }))
  })

  it.live("killed right after the helper started the gate: recovery reads the gate's verdict (trial → done, reverted → failed); activate runs once", () => {
    const h = makeHost()
    const r = makeRelease(key, V)
    return withHub((url, hub) =>
      Effect.gen(function*() {
        yield* hub.addRelease(r.dir)
        const dieAfter = (p: PrivilegedUpdateShape): PrivilegedUpdateShape => ({ ...p, activate: Effect.zipRight(p.activate, Effect.interrupt) })
        yield* Effect.exit(runAgentUpdate(V, shaOf(r.bytes), null).pipe(Effect.provide(servicesFor(h, url, { wrapPriv: dieAfter }))))
        const rec = yield* recoverAll.pipe(Effect.provide(servicesFor(h, url)))
        expect(rec.map((x) => x.outcome)).toEqual(["done"])
        expect(h.helperCalls()).toEqual([`stage ${V}`, "activate"])

        h.setActivate("revert")
        yield* Effect.exit(runAgentUpdate(V, shaOf(r.bytes), null).pipe(Effect.provide(servicesFor(h, url, { wrapPriv: dieAfter }))))
        const rec2 = yield* recoverAll.pipe(Effect.provide(servicesFor(h, url)))
        expect(rec2.map((x) => [x.outcome, x.detail])).toEqual([["failed", "the health gate reverted 1.4.0: health window failed: /health never ok"]])
        expect(h.helperCalls()).toEqual([`stage ${V}`, "activate", `stage ${V}`, "activate"])
      }))
  })

  it.effect("activated but the gate has not run yet: in flight within the grace, failed after it (TestClock)", () => {
    const h = makeHost()
    const r = makeRelease(key, V)
    h.setActivate("none")
    return Effect.gen(function*() {
      // the saga itself over real loopback HTTP runs outside the test clock
      yield* Effect.promise(() =>
        Effect.runPromise(withHub((url, hub) =>
          Effect.gen(function*() {
            yield* hub.addRelease(r.dir)
            yield* runAgentUpdate(V, shaOf(r.bytes), null).pipe(Effect.provide(servicesFor(h, url)))
          })))
      )
      const services = servicesFor(h, "https://127.0.0.1:1")
      const op = (yield* inFlight.pipe(Effect.provide(services)))[0]!
      const activatedAt = op.steps.find((s) => s.name === "activate")!.updatedAtMs
      yield* TestClock.setTime(activatedAt + 60_000)
      const first = yield* recoverAll.pipe(Effect.provide(services))
      expect(first.map((x) => x.outcome)).toEqual(["in_flight"])
      yield* TestClock.setTime(activatedAt + GATE_START_GRACE_MS + 1)
      const second = yield* recoverAll.pipe(Effect.provide(services))
      expect(second.map((x) => x.outcome)).toEqual(["failed"])
      expect(second[0]!.detail).toMatch(/activation did not take effect \(update\.json: staged/)
      expect(h.helperCalls()).toEqual([`stage ${V}`, "activate"])
    })
  })
})
