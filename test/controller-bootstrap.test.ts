/**
 * A controller's bootstrap (issue 11): what renderBootstrap/publishBootstrap write (the config a
 * controller decodes, the secrets as files beside it and nowhere else), and the simulated
 * Privileged bootstrap half the demo and `sim stack` run on (src/sim/pve/privilegedSim.ts).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Option, Redacted, Schema } from "effect"
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type BootstrapFile, type BootstrapWriteSpec, Privileged, type PrivilegedShape } from "../src/layers/Privileged.js"
import { hubChannelOf, provisionDirective, publishBootstrap, renderBootstrap } from "../src/programs/controller/bootstrap.js"
import { ControllerContext, type ControllerContextShape } from "../src/programs/controller/context.js"
import { BOOTSTRAP_FORMAT, ControllerBootstrap } from "../src/schema/bootstrap.js"
import { VmId } from "../src/schema/ids.js"
import { makeSimPve } from "../src/sim/pve/index.js"
import { bootstrapDirOf, makePrivilegedSim, privilegedSimLayer } from "../src/sim/pve/privilegedSim.js"
import { seedWith } from "./support.js"

const TOKEN = "fla1_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
const PASSWORD = "registry-SECRET-pw"
const PINS = [{ spki_sha256: "c3BraQ==", cert_sha256: "ab".repeat(32) }, { spki_sha256: "bmV4dA==", cert_sha256: "cd".repeat(32) }]

const ctx = (registry: boolean): ControllerContextShape => ({
  hostId: "host-7f3c2a90",
  hubUrl: null,
  localApiUrl: "https://10.10.0.1:7443",
  pins: Effect.succeed(PINS),
  registry: registry ? { server: "registry.example.net", username: "pull-101", password: Redacted.make(PASSWORD) } : null
})

const input = {
  vmid: VmId.make(101),
  hostname: "cust-alpha",
  image: "registry.example.net/felhom/controller:1.4.2@sha256:" + "0".repeat(64),
  generation: 3,
  identity: { scenario: "provision" as const, reset: ["machine-id" as const, "ssh-host-keys" as const], directive_id: "d1" },
  token: Redacted.make(TOKEN),
  pins: PINS
}

const text = (f: BootstrapFile) => (Redacted.isRedacted(f.content) ? Redacted.value(f.content) : f.content)

describe("renderBootstrap", () => {
  it("controller.json decodes with the ControllerBootstrap schema and says what the guest needs", () => {
    const r = renderBootstrap(ctx(true), input)
    const json = r.files.find((f) => f.name === "controller.json")
    expect(json).toBeDefined()
    const decoded = Schema.decodeUnknownSync(Schema.parseJson(ControllerBootstrap))(text(json!))
    expect(decoded).toEqual(r.config)
    expect(decoded.format).toBe(BOOTSTRAP_FORMAT)
    expect(decoded.generation).toBe(3)
    expect(decoded.guest).toEqual({ vmid: 101, hostname: "cust-alpha" })
    expect(decoded.controller.image).toBe(input.image)
    expect(decoded.local_api).toEqual({ url: "https://10.10.0.1:7443", token_file: "/etc/felhom-bootstrap/local-token", pins: PINS })
    expect(decoded.registry).toEqual({ server: "registry.example.net", username: "pull-101", password_file: "/etc/felhom-bootstrap/registry-password" })
    expect(decoded.hub).toEqual({ url: null, channel: hubChannelOf("host-7f3c2a90", VmId.make(101)) })
    expect(decoded.identity).toEqual(input.identity)
  })

  it("secrets are files of their own (Redacted until written), never in controller.json; config last", () => {
    const r = renderBootstrap(ctx(true), input)
    expect(r.files.map((f) => f.name)).toEqual(["local-token", "registry-password", "controller.json"])
    const token = r.files[0]!
    const password = r.files[1]!
    expect(Redacted.isRedacted(token.content) && Redacted.isRedacted(password.content)).toBe(true)
    expect(text(token)).toBe(`${TOKEN}\n`)
    expect(text(password)).toBe(`${PASSWORD}\n`)
    const config = text(r.files[2]!)
    expect(config).not.toContain(TOKEN)
    expect(config).not.toContain(PASSWORD)
    expect(String(token.content)).not.toContain(TOKEN)
    expect(JSON.stringify(r.files.map((f) => f.content))).not.toContain(PASSWORD)
  })

  it("without a registry: no password file, registry null", () => {
    const r = renderBootstrap(ctx(false), input)
    expect(r.files.map((f) => f.name)).toEqual(["local-token", "controller.json"])
    expect(r.config.registry).toBeNull()
  })

  it.effect("a provision directive resets machine-id and SSH host keys, with a fresh random id each time", () =>
    Effect.gen(function*() {
      const a = yield* provisionDirective
      const b = yield* provisionDirective
      expect(a.scenario).toBe("provision")
      expect(a.reset).toEqual(["machine-id", "ssh-host-keys"])
      expect(a.directive_id).toMatch(/^[0-9a-f]{32}$/)
      expect(a.directive_id).not.toBe(b.directive_id)
    }))

  it.effect("publishBootstrap hands exactly the rendered files to Privileged.writeBootstrap", () =>
    Effect.gen(function*() {
      const calls: Array<{ vmid: number; names: ReadonlyArray<string> }> = []
      const recording = Layer.succeed(Privileged, {
        writeBootstrap: (spec: BootstrapWriteSpec) =>
          Effect.sync(() => {
            calls.push({ vmid: spec.vmid, names: spec.files.map((f) => f.name) })
          })
      } as unknown as PrivilegedShape)
      const config = yield* publishBootstrap(input).pipe(Effect.provide(Layer.merge(recording, Layer.succeed(ControllerContext, ctx(true)))))
      expect(calls).toEqual([{ vmid: 101, names: ["local-token", "registry-password", "controller.json"] }])
      expect(config.generation).toBe(3)
    }))
})

// ---------------------------------------------------------------------------------------------
// The simulated bootstrap half

const unreachable = () => Effect.dieMessage("delegated")
const realStub = { sensors: () => Effect.succeed([]) } as unknown as PrivilegedShape

describe("privilegedSim", () => {
  const scratch = () => join(mkdtempSync(join(tmpdir(), "felhom-psim-")), "bootstrap")

  it.scoped("writes plain 0600 files atomically under the scratch root and removes only ours, idempotently", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const root = scratch()
      const p = makePrivilegedSim(realStub, sim, root)
      yield* p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "local-token", content: Redacted.make("t1\n") }, { name: "controller.json", content: "{}" }] })
      const dir = join(root, "101")
      expect(readdirSync(dir).sort()).toEqual(["controller.json", "local-token"])
      expect(statSync(join(dir, "local-token")).mode & 0o777).toBe(0o600)
      expect(readFileSync(join(dir, "local-token"), "utf8")).toBe("t1\n")
      yield* p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "local-token", content: Redacted.make("t2\n") }] })
      expect(readFileSync(join(dir, "local-token"), "utf8")).toBe("t2\n")
      expect(yield* p.removeBootstrap(VmId.make(101))).toEqual({ removed: true })
      expect(existsSync(dir)).toBe(false)
      expect(yield* p.removeBootstrap(VmId.make(101))).toEqual({ removed: false })
      // a directory holding anything else is left in place (like the helper's exit 5)
      yield* p.writeBootstrap({ vmid: VmId.make(102), files: [{ name: "controller.json", content: "{}" }] })
      writeFileSync(join(root, "102", "notes"), "keep")
      const e = yield* Effect.either(p.removeBootstrap(VmId.make(102)))
      expect(Either.isLeft(e)).toBe(true)
      expect(readdirSync(join(root, "102"))).toEqual(["notes"])
      // the same validation as the real layer
      const bad = yield* Effect.either(p.writeBootstrap({ vmid: VmId.make(101), files: [{ name: "../x" as "local-token", content: "x" }] }))
      expect(Either.isLeft(bad) && bad.left.reason === "InvalidArgument").toBe(true)
    }))

  it.scoped("bind/unbind set and delete mpN on the simulated guest, running or stopped; refused when locked, absent or outside the root", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const root = scratch()
      const p = makePrivilegedSim(realStub, sim, root)
      const running = Option.getOrThrow(yield* sim.guest(100))
      const stopped = Option.getOrThrow(yield* sim.guest(101))
      expect([running.status, stopped.status]).toEqual(["running", "stopped"])
      for (const vmid of [100, 101]) {
        const hostPath = `${root}/${vmid}`
        yield* p.bindMountIntoGuest({ vmid: VmId.make(vmid), mpIndex: 9, hostPath, guestPath: "/etc/felhom-bootstrap", readOnly: true })
        const g = Option.getOrThrow(yield* sim.guest(vmid))
        expect(g.config["mp9"]).toBe(`${hostPath},mp=/etc/felhom-bootstrap,ro=1,backup=0`)
        expect(yield* bootstrapDirOf(sim, vmid)).toEqual(Option.some(hostPath))
        yield* p.unbindFromGuest({ vmid: VmId.make(vmid), mpIndex: 9 })
        expect(Option.getOrThrow(yield* sim.guest(vmid)).config["mp9"]).toBeUndefined()
        expect(Option.isNone(yield* bootstrapDirOf(sim, vmid))).toBe(true)
      }
      // unplugging an absent key is a no-op, as pct's --delete
      yield* p.unbindFromGuest({ vmid: VmId.make(100), mpIndex: 9 })
      yield* sim.setLock(100, "backup")
      const locked = yield* Effect.either(p.bindMountIntoGuest({ vmid: VmId.make(100), mpIndex: 9, hostPath: `${root}/100`, guestPath: "/etc/felhom-bootstrap", readOnly: true }))
      expect(Either.isLeft(locked) && locked.left.reason === "NonZeroExit" && locked.left.exitCode === 255).toBe(true)
      yield* sim.setLock(100, undefined)
      const absent = yield* Effect.either(p.bindMountIntoGuest({ vmid: VmId.make(4242), mpIndex: 0, hostPath: `${root}/4242`, guestPath: "/etc/felhom-bootstrap", readOnly: true }))
      expect(Either.isLeft(absent) && absent.left.reason === "NonZeroExit").toBe(true)
      for (const hostPath of ["/etc", root, `${root}/../x`, `${root}-x/100`]) {
        const r = yield* Effect.either(p.bindMountIntoGuest({ vmid: VmId.make(100), mpIndex: 0, hostPath, guestPath: "/etc/felhom-bootstrap", readOnly: true }))
        expect(Either.isLeft(r) && r.left.reason === "InvalidArgument" && r.left.argument === "hostPath", hostPath).toBe(true)
      }
      expect(Option.getOrThrow(yield* sim.guest(100)).config["mp0"]).toBeUndefined()
    }))

  it.scoped("the layer delegates everything else to the real service", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      const real = Layer.succeed(Privileged, { ...realStub, smart: unreachable } as unknown as PrivilegedShape)
      const readings = yield* Effect.flatMap(Privileged, (p) => p.sensors()).pipe(
        Effect.provide(privilegedSimLayer(sim, scratch()).pipe(Layer.provide(real)))
      )
      expect(readings).toEqual([])
    }))
})
