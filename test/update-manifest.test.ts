/**
 * Release manifests and `release verify` (issue 14): the signature by a release key under its own
 * namespace over the exact bytes, then every file of the tree. Signed with the real ssh-keygen.
 */
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Schema } from "effect"
import { appendFileSync, chmodSync, copyFileSync, cpSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { releaseManifest, releaseVerify } from "../src/programs/cli/release.js"
import { verifyReleaseDir } from "../src/programs/update/manifest.js"
import { MANIFEST_FILE, ReleaseManifest, SIGNATURE_FILE } from "../src/schema/release.js"
import { makeRelease, makeReleaseKey, makeTree, scratch, sshSign } from "./update-support.js"

const key = makeReleaseKey()
const stranger = makeReleaseKey("mallory@elsewhere")
const V = "1.4.0"

/** A fresh signed release, then `mutate` applied to its directory. */
const releaseWith = (mutate: (dir: string) => void = () => {}) => {
  const r = makeRelease(key, V)
  mutate(r.dir)
  return r
}

const refusal = (dir: string, expect?: string) => {
  const r = verifyReleaseDir(dir, [key.key], expect)
  if (Either.isRight(r)) throw new Error("expected a refusal")
  return r.left
}

describe("release manifest", () => {
  it("round trip: files sorted, modes from the x bit, sizes and hashes; decodes strictly; verifies", () => {
    const r = releaseWith()
    const raw: unknown = JSON.parse(readFileSync(join(r.dir, MANIFEST_FILE), "utf8"))
    const decoded = Schema.decodeUnknownSync(ReleaseManifest)(raw, { onExcessProperty: "error" })
    expect(decoded).toEqual(r.manifest)
    expect(decoded.files.map((f) => f.path)).toEqual([
      "bin/felhom-agent",
      "bin/node",
      "lib/felhom-agent.cjs",
      "lib/node_modules/better-sqlite3/build/better_sqlite3.node"
    ])
    expect(decoded.files.map((f) => f.mode)).toEqual([0o755, 0o755, 0o644, 0o644])
    expect(decoded.files.find((f) => f.path === "bin/node")?.size).toBe(70_015)
    const ok = verifyReleaseDir(r.dir, [key.key], V)
    expect(Either.isRight(ok) && ok.right.version).toBe(V)
  })

  it("refuses a tree with a symlink or a missing required file", () => {
    const dir = scratch("tree")
    makeTree(dir, V)
    symlinkSync("/etc/passwd", join(dir, "lib", "passwd"))
    const built = Effect.runSync(Effect.either(releaseManifest({ dir, version: V, node: Option.some("20.20.2") })))
    expect(Either.isLeft(built) && built.left.message).toMatch(/lib\/passwd is a symlink/)
    rmSync(join(dir, "lib", "passwd"))
    rmSync(join(dir, "bin", "node"))
    const again = Effect.runSync(Effect.either(releaseManifest({ dir, version: V, node: Option.some("20.20.2") })))
    expect(Either.isLeft(again) && again.left.message).toMatch(/lacks bin\/node/)
  })
})

describe("release verify refuses", () => {
  it("a signature in the operator-op namespace over the same bytes", () => {
    const r = releaseWith((dir) => {
      rmSync(join(dir, SIGNATURE_FILE))
      sshSign(key, join(dir, MANIFEST_FILE), "felhom-op-v1")
    })
    expect(refusal(r.dir)).toMatchObject({ reason: "Namespace" })
  })

  it("a signature by a key that is not a release signer", () => {
    const r = releaseWith((dir) => {
      rmSync(join(dir, SIGNATURE_FILE))
      sshSign(stranger, join(dir, MANIFEST_FILE))
    })
    expect(refusal(r.dir)).toMatchObject({ reason: "UnknownSigner" })
  })

  it("no release signers configured", () => {
    const r = releaseWith()
    const res = verifyReleaseDir(r.dir, [], undefined)
    expect(Either.isLeft(res) && res.left.message).toMatch(/no release signers configured/)
  })

  it("a tampered file (same size)", () => {
    const r = releaseWith((dir) => {
      const p = join(dir, "lib", "felhom-agent.cjs")
      const b = readFileSync(p)
      b[3] = b[3]! ^ 1
      writeFileSync(p, b)
    })
    expect(refusal(r.dir).message).toMatch(/lib\/felhom-agent\.cjs: SHA-256 differs/)
  })

  it("an extra file, an extra directory", () => {
    expect(refusal(releaseWith((dir) => writeFileSync(join(dir, "bin", "evil"), "x")).dir).message).toMatch(/bin\/evil is not in the manifest/)
    expect(refusal(releaseWith((dir) => cpSync(join(dir, "bin"), join(dir, "extra"), { recursive: true })).dir).message).toMatch(/extra\/ is not in the manifest/)
  })

  it("a missing file", () => {
    expect(refusal(releaseWith((dir) => rmSync(join(dir, "lib", "felhom-agent.cjs"))).dir).message).toMatch(/lib\/felhom-agent\.cjs is missing/)
  })

  it("a symlink in place of a listed file, and a symlinked RELEASE.json", () => {
    const r = releaseWith((dir) => {
      rmSync(join(dir, "bin", "node"))
      symlinkSync("/usr/bin/env", join(dir, "bin", "node"))
    })
    expect(refusal(r.dir).message).toMatch(/bin\/node is a symlink/)
    const m = releaseWith((dir) => {
      const real = join(dir, "..", `m-${Math.random()}`)
      copyFileSync(join(dir, MANIFEST_FILE), real)
      rmSync(join(dir, MANIFEST_FILE))
      symlinkSync(real, join(dir, MANIFEST_FILE))
    })
    expect(refusal(m.dir).message).toMatch(/RELEASE\.json: is a symlink/)
  })

  it("a wrong mode (setuid, or an executable bit the manifest does not list)", () => {
    expect(refusal(releaseWith((dir) => chmodSync(join(dir, "lib", "felhom-agent.cjs"), 0o755)).dir).message).toMatch(/mode 755, the manifest says 644/)
    expect(refusal(releaseWith((dir) => chmodSync(join(dir, "bin", "node"), 0o4755)).dir).message).toMatch(/mode 4755/)
  })

  it("a version other than the expected one", () => {
    expect(refusal(releaseWith().dir, "1.5.0")).toMatchObject({ reason: "Version" })
  })

  it("a manifest re-serialized (whitespace only): bad signature", () => {
    const r = releaseWith((dir) => {
      const p = join(dir, MANIFEST_FILE)
      writeFileSync(p, JSON.stringify(JSON.parse(readFileSync(p, "utf8"))))
    })
    expect(refusal(r.dir)).toMatchObject({ reason: "Signature" })
  })

  it("a file grown by one byte", () => {
    const r = releaseWith((dir) => appendFileSync(join(dir, "bin", "felhom-agent"), "\n"))
    expect(refusal(r.dir).message).toMatch(/bin\/felhom-agent: size/)
  })
})

describe("release verify (the command)", () => {
  const configWith = (signers: ReadonlyArray<string>) => {
    const f = join(scratch("cfg"), "agent.json")
    // a config with no proxmox, hub or authz block: verify needs none of them
    writeFileSync(f, JSON.stringify({ update: { release_signers: signers } }))
    return f
  }
  const verify = (dir: string, config: string, expect?: string) =>
    Effect.runPromise(Effect.either(releaseVerify({ dir, config: Option.some(config), expectVersion: Option.fromNullable(expect) })).pipe(Effect.provide(NodeContext.layer)))

  it.live("exit 0 path for a good release; one-line exit-1 failures otherwise", () =>
    Effect.promise(async () => {
      const r = releaseWith()
      expect(Either.isRight(await verify(r.dir, configWith([key.line]), V))).toBe(true)
      const none = await verify(r.dir, configWith([]))
      expect(Either.isLeft(none) && none.left).toMatchObject({ code: 1 })
      expect(Either.isLeft(none) && none.left.message).toMatch(/no release signers configured/)
      const wrong = await verify(r.dir, configWith([stranger.line]))
      expect(Either.isLeft(wrong) && wrong.left.message).not.toMatch(/\n/)
    }))
})
