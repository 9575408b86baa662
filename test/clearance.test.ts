/**
 * The gate is a type (issue 8): irreversible Proxmox calls do not compile without a gate-issued
 * Clearance, a look-alike is refused at run time before any request, a clearance fits exactly
 * one call once, and only the gate can mint (a second issuer crashes; the lint names any other
 * module that tries).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Layer, Option } from "effect"
import { layerAt } from "../src/layers/Database.js"
import { JournalLive } from "../src/layers/Journal.js"
import { execFileSync } from "node:child_process"
import { cpSync, mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Proxmox, type ProxmoxShape } from "../src/layers/Proxmox.js"
import { clearForConsole, consoleGrant } from "../src/programs/control/gate.js"
import { Clearance, takeIssuer } from "../src/schema/clearance.js"
import { SnapshotName, VmId } from "../src/schema/ids.js"
import { makeSimPve } from "../src/sim/pve/index.js"
import { inProcessProxmox, seedWith } from "./support.js"

const v = VmId.make
const root = join(__dirname, "..")

// Compile-time half: every line below must fail to type-check (tsc runs in `npm test`).
export const typeLevel = (pve: ProxmoxShape) => {
  // @ts-expect-error destroy without a clearance
  void pve.destroy(v(101), { purge: true })
  // @ts-expect-error an object literal is not a Clearance (private brand)
  void pve.destroy(v(101), { purge: true }, { call: { call: "destroy", vmid: v(101) } })
  // @ts-expect-error a clearance for another kind of call
  void pve.destroy(v(101), {}, clearForConsole({ call: "resize", vmid: v(101), disk: "rootfs", size: "9G" }, "t"))
  // @ts-expect-error the constructor is private
  void new Clearance({ call: "destroy", vmid: v(101) }, { basis: "benign", reason: "x" })
  // @ts-expect-error rollback without a clearance
  void pve.rollback(v(101), SnapshotName.make("s"), {})
  // @ts-expect-error resize without a clearance
  void pve.resize(v(101), "rootfs", "9G")
  // @ts-expect-error restore over an existing guest takes a clearance
  void pve.restoreOverwrite({ vmid: v(101), archive: "local:backup/x", storage: "local-lvm" })
}

describe("Clearance at run time", () => {
  it("a look-alike object is refused; a clearance fits one call, once", () => {
    const fake = Object.create(Clearance.prototype) as Clearance<"destroy">
    expect(Either.isLeft(Clearance.redeem(fake, { call: "destroy", vmid: v(101) }))).toBe(true)
    const c = clearForConsole({ call: "destroy", vmid: v(101) }, "test")
    expect(Either.isLeft(Clearance.redeem(c, { call: "destroy", vmid: v(102) }))).toBe(true)
    expect(Either.isRight(Clearance.redeem(c, { call: "destroy", vmid: v(101) }))).toBe(true)
    expect(Either.isLeft(Clearance.redeem(c, { call: "destroy", vmid: v(101) }))).toBe(true)
  })

  it("the issuer can be taken once per process: the gate already has it", () => {
    expect(() => takeIssuer()).toThrow(/already taken/)
  })

  it("a grant clears only the calls its action entails", () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const g = consoleGrant({ op: "decommission", vmid: v(101), params: {} }, "test")
      expect(Exit.isSuccess(yield* Effect.exit(g.clear({ call: "destroy", vmid: v(101) })))).toBe(true)
      expect(Exit.isFailure(yield* Effect.exit(g.clear({ call: "destroy", vmid: v(102) })))).toBe(true)
      expect(Exit.isFailure(yield* Effect.exit(g.clear({ call: "resize", vmid: v(101), disk: "rootfs", size: "99G" })))).toBe(true)
      const r = consoleGrant({ op: "restore-now", vmid: v(100), params: { backup: "local:backup/a.tar.zst", storage: "x", backup_storage: "y" } }, "t")
      expect(Exit.isSuccess(yield* Effect.exit(r.clear({ call: "restore-overwrite", vmid: v(100), archive: "local:backup/a.tar.zst" as never })))).toBe(true)
      expect(Exit.isFailure(yield* Effect.exit(r.clear({ call: "restore-overwrite", vmid: v(100), archive: "local:backup/b.tar.zst" as never })))).toBe(true)
      expect(Exit.isFailure(yield* Effect.exit(r.clear({ call: "rollback", vmid: v(100), snapshot: SnapshotName.make("pre_upgrade") })))).toBe(true)
    }).pipe(Effect.provide(JournalLive.pipe(Layer.provide(layerAt(":memory:")), Layer.orDie))))))

  it.scoped("the Proxmox layer sends nothing for a mismatched clearance or an unsafe config key", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith({}))
      yield* Effect.gen(function*() {
        const pve = yield* Proxmox
        const before = (yield* sim.tasks).length
        const wrong = yield* Effect.exit(pve.destroy(v(101), { purge: true }, clearForConsole({ call: "destroy", vmid: v(100) }, "t")))
        expect(Exit.isFailure(wrong) && JSON.stringify(wrong.cause)).toContain("ClearanceRefused")
        const unsafe = yield* Effect.exit(pve.setConfig(v(101), { set: { mp0: "local-lvm:8,mp=/srv" } }))
        expect(Exit.isFailure(unsafe) && JSON.stringify(unsafe.cause)).toContain("ClearanceRefused")
        const dropVolume = yield* Effect.exit(pve.setConfig(v(101), { set: {}, delete: ["unused0"] }))
        expect(Exit.isFailure(dropVolume)).toBe(true)
        expect((yield* sim.tasks).length).toBe(before)
        expect(Option.isSome(yield* sim.guest(101))).toBe(true)
      }).pipe(Effect.provide(inProcessProxmox(sim, { node: "pve" })))
    }))

  it("the lint refuses any other module that takes the issuer or mints console clearances", () => {
    const tree = mkdtempSync(join(tmpdir(), "felhom-mint-"))
    cpSync(join(root, "src"), join(tree, "src"), { recursive: true })
    writeFileSync(join(tree, "src", "programs", "control", "rogue.ts"), `import { takeIssuer } from "../../schema/clearance.js"\nexport const m = takeIssuer()\n`)
    writeFileSync(join(tree, "src", "programs", "daemon", "sneaky.ts"), `import { clearForConsole } from "../control/gate.js"\nexport const c = clearForConsole\n`)
    let out = ""
    try {
      execFileSync(process.execPath, [join(root, "scripts", "check-boundaries.mjs")], { env: { ...process.env, FENCE_ROOT: tree }, encoding: "utf8", stdio: "pipe" })
    } catch (e) {
      out = String((e as { stderr?: string }).stderr)
    }
    expect(out).toContain("rogue.ts takes the clearance issuer")
    expect(out).toContain("sneaky.ts mints console clearances")
  })
})
