/**
 * PbsKeyLive (issue 13): K as a root-owned plain PBS key file with its public sidecar, written
 * atomically and never replaced; the root helper felhom-pbskey (configs/libexec/) run for real
 * against a scratch root with a fake pvesm; the Privileged method that runs it. Needs root (the
 * files must be root-owned); no key bytes in any error.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Option, Redacted } from "effect"
import { spawnSync } from "node:child_process"
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { generatePbsKey, pbsFingerprint, plainKeyFile, wrapKey } from "../src/programs/escrow/keyFile.js"
import { PbsKey, type PbsKeyError, pbsKeyLayer, sidecarOf } from "../src/layers/PbsKey.js"
import { NodeContext } from "@effect/platform-node"
import { Schema } from "effect"
import { AgentConfig } from "../src/layers/Config.js"
import { DEFAULT_HOST_PATHS, PrivilegedPbsKey, privilegedPbsKeyLayerAt, type PrivilegedPbsKeyShape } from "../src/layers/Privileged.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { StorageId } from "../src/schema/ids.js"
import { PrivilegedError } from "../src/schema/privileged.js"
import { isRoot, makeBinDir, makeSudoSandbox } from "./privileged-support.js"

/** The PBS key's runner over a fake helper (direct mode). */
const pbsKeyRunner = (helper: string) =>
  privilegedPbsKeyLayerAt(DEFAULT_HOST_PATHS).pipe(
    Layer.provide(Layer.succeed(AgentConfig, {
      source: undefined,
      file: Schema.decodeUnknownSync(AgentConfigFile)({ privileged: { mode: "direct", timeout_seconds: 10, commands: { "felhom-pbskey": helper } } })
    })),
    Layer.provide(NodeContext.layer)
  )

const HELPER = join(__dirname, "..", "configs", "libexec", "felhom-pbskey")
const dirs: Array<string> = []
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
})

/** A root-owned 0755 scratch base below the (sticky) temp dir. */
const scratch = () => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-pbskey-")))
  chmodSync(base, 0o755)
  dirs.push(base)
  return base
}

const newKey = () => {
  const k = generatePbsKey()
  const bytes = Redacted.value(k)
  const text = plainKeyFile(bytes, Date.now())
  return {
    bytes,
    text,
    fp: pbsFingerprint(bytes),
    hex: Buffer.from(bytes).toString("hex"),
    b64: Buffer.from(bytes).toString("base64")
  }
}

const noAttach: PrivilegedPbsKeyShape = {
  attachPbsKey: () => Effect.die("attach not expected")
}

const run = <A>(keyFile: string, f: (k: typeof PbsKey.Service) => Effect.Effect<A, PbsKeyError>, opts: { uid?: () => number; priv?: PrivilegedPbsKeyShape } = {}) =>
  Effect.flatMap(PbsKey, (k) => Effect.either(f(k))).pipe(
    Effect.provide(pbsKeyLayer({ keyFile, ...(opts.uid === undefined ? {} : { uid: opts.uid }) }).pipe(
      Layer.provide(Layer.succeed(PrivilegedPbsKey, opts.priv ?? noAttach))
    ))
  )

const left = <A>(r: Either.Either<A, PbsKeyError>): PbsKeyError => {
  if (Either.isRight(r)) throw new Error(`expected a PbsKeyError, got success`)
  return r.left
}
const right = <A>(r: Either.Either<A, PbsKeyError>): A => {
  if (Either.isLeft(r)) throw new Error(`expected success, got ${r.left.reason}: ${r.left.message}`)
  return r.right
}

/** No error text may carry key material, in any encoding we know of. */
const expectNoKey = (text: string, k: ReturnType<typeof newKey>) => {
  expect(text).not.toContain(k.hex)
  expect(text).not.toContain(k.b64)
  expect(text).not.toContain(k.text)
}

describe.skipIf(!isRoot)("PbsKeyLive: install, read, fingerprint (as root)", () => {
  it.effect("installs K 0600 root in a 0711 root directory it creates, with a 0644 sidecar; read gives it back", () =>
    Effect.gen(function*() {
      const base = scratch()
      const keyFile = join(base, "etc", "felhom-agent", "pbs", "encryption-key.json")
      const k = newKey()
      const before = yield* run(keyFile, (p) => p.fingerprint)
      expect(right(before)).toEqual(Option.none())
      const r = right(yield* run(keyFile, (p) => p.install(Redacted.make(k.text))))
      expect(r.fingerprint).toBe(k.fp)
      const st = lstatSync(keyFile)
      expect(st.mode & 0o7777).toBe(0o600)
      expect(st.uid).toBe(0)
      expect(lstatSync(join(base, "etc", "felhom-agent", "pbs")).mode & 0o7777).toBe(0o711)
      const side = lstatSync(sidecarOf(keyFile))
      expect(side.mode & 0o7777).toBe(0o644)
      expect(readFileSync(sidecarOf(keyFile), "utf8")).toBe(`${k.fp}\n`)
      expect(readFileSync(keyFile, "utf8")).toBe(k.text)
      // no temp file left behind
      expect(readdirSync(join(base, "etc", "felhom-agent", "pbs")).sort()).toEqual(["encryption-key.json", "encryption-key.json.fingerprint"])
      expect(right(yield* run(keyFile, (p) => p.fingerprint))).toEqual(Option.some(k.fp))
      expect(Redacted.value(right(yield* run(keyFile, (p) => p.read)))).toBe(k.text)
    }))

  it.effect("the same key again is ok; another key over it is Exists and K stays byte for byte", () =>
    Effect.gen(function*() {
      const base = scratch()
      const keyFile = join(base, "pbs", "key.json")
      const k = newKey()
      right(yield* run(keyFile, (p) => p.install(Redacted.make(k.text))))
      const again = right(yield* run(keyFile, (p) => p.install(Redacted.make(k.text))))
      expect(again.fingerprint).toBe(k.fp)
      const other = newKey()
      const e = left(yield* run(keyFile, (p) => p.install(Redacted.make(other.text))))
      expect(e.reason).toBe("Exists")
      expect(readFileSync(keyFile, "utf8")).toBe(k.text)
      expect(readFileSync(sidecarOf(keyFile), "utf8")).toBe(`${k.fp}\n`)
      expectNoKey(e.message, other)
      expectNoKey(e.message, k)
    }))

  it.effect("a crash between K and its sidecar: the same key again writes the sidecar; another key is refused", () =>
    Effect.gen(function*() {
      const base = scratch()
      const keyFile = join(base, "pbs", "key.json")
      const k = newKey()
      mkdirSync(join(base, "pbs"), { mode: 0o711 })
      writeFileSync(keyFile, k.text, { mode: 0o600 })
      expect(left(yield* run(keyFile, (p) => p.read)).reason).toBe("Unreadable")
      expect(left(yield* run(keyFile, (p) => p.install(Redacted.make(newKey().text)))).reason).toBe("Exists")
      right(yield* run(keyFile, (p) => p.install(Redacted.make(k.text))))
      expect(readFileSync(sidecarOf(keyFile), "utf8")).toBe(`${k.fp}\n`)
    }))

  it.effect("a sidecar naming another key: read is Unreadable; an install without K of another key is Exists", () =>
    Effect.gen(function*() {
      const base = scratch()
      const keyFile = join(base, "pbs", "key.json")
      const k = newKey()
      const other = newKey()
      right(yield* run(keyFile, (p) => p.install(Redacted.make(k.text))))
      writeFileSync(sidecarOf(keyFile), `${other.fp}\n`)
      const e = left(yield* run(keyFile, (p) => p.read))
      expect(e.reason).toBe("Unreadable")
      expectNoKey(e.message, k)
      rmSync(keyFile)
      expect(left(yield* run(keyFile, (p) => p.install(Redacted.make(k.text)))).reason).toBe("Exists")
      // the key the sidecar names may come back (a restore)
      right(yield* run(keyFile, (p) => p.install(Redacted.make(other.text))))
    }))

  it.effect("refuses a wrapped (passphrase) key file, garbage and an empty text as Unreadable, with no key bytes", () =>
    Effect.gen(function*() {
      const base = scratch()
      const keyFile = join(base, "pbs", "key.json")
      const k = newKey()
      const wrapped = yield* wrapKey(k.bytes, Redacted.make("correct horse battery staple"), { kdf: "pbkdf2", nowMs: Date.now() })
      for (const text of [wrapped, "{}", "", k.text.replace(k.b64, Buffer.alloc(32).toString("base64"))]) {
        const e = left(yield* run(keyFile, (p) => p.install(Redacted.make(text))))
        expect(e.reason).toBe("Unreadable")
        expectNoKey(e.message, k)
      }
      expect(existsSync(keyFile)).toBe(false)
    }))

  it.effect("not root: install and read are NotRoot and touch nothing; fingerprint (the public sidecar) works", () =>
    Effect.gen(function*() {
      const base = scratch()
      const keyFile = join(base, "pbs", "key.json")
      const k = newKey()
      const uid = () => 65534
      expect(left(yield* run(keyFile, (p) => p.install(Redacted.make(k.text)), { uid })).reason).toBe("NotRoot")
      expect(existsSync(join(base, "pbs"))).toBe(false)
      right(yield* run(keyFile, (p) => p.install(Redacted.make(k.text))))
      expect(left(yield* run(keyFile, (p) => p.read, { uid })).reason).toBe("NotRoot")
      expect(right(yield* run(keyFile, (p) => p.fingerprint, { uid }))).toEqual(Option.some(k.fp))
    }))

  it.effect("untrusted: a symlinked, foreign-owned or group-writable directory, a key file readable by others, a symlinked key", () =>
    Effect.gen(function*() {
      const k = newKey()
      // a symlink on the way
      const b1 = scratch()
      mkdirSync(join(b1, "real"), { mode: 0o755 })
      symlinkSync(join(b1, "real"), join(b1, "link"))
      expect(left(yield* run(join(b1, "link", "pbs", "key.json"), (p) => p.install(Redacted.make(k.text)))).reason).toBe("Untrusted")
      expect(readdirSync(join(b1, "real"))).toEqual([])
      // a directory owned by someone else
      const b2 = scratch()
      mkdirSync(join(b2, "pbs"), { mode: 0o700 })
      chownSync(join(b2, "pbs"), 65534, 65534)
      expect(left(yield* run(join(b2, "pbs", "key.json"), (p) => p.install(Redacted.make(k.text)))).reason).toBe("Untrusted")
      // group-writable
      const b3 = scratch()
      mkdirSync(join(b3, "pbs"))
      chmodSync(join(b3, "pbs"), 0o775)
      expect(left(yield* run(join(b3, "pbs", "key.json"), (p) => p.install(Redacted.make(k.text)))).reason).toBe("Untrusted")
      // a key file readable by others
      const b4 = scratch()
      const kf = join(b4, "pbs", "key.json")
      right(yield* run(kf, (p) => p.install(Redacted.make(k.text))))
      chmodSync(kf, 0o644)
      const e = left(yield* run(kf, (p) => p.read))
      expect(e.reason).toBe("Untrusted")
      expectNoKey(e.message, k)
      // the key file a symlink (to a file with the same key)
      const b5 = scratch()
      mkdirSync(join(b5, "pbs"), { mode: 0o711 })
      writeFileSync(join(b5, "elsewhere.json"), k.text, { mode: 0o600 })
      symlinkSync(join(b5, "elsewhere.json"), join(b5, "pbs", "key.json"))
      expect(left(yield* run(join(b5, "pbs", "key.json"), (p) => p.read)).reason).toBe("Untrusted")
      expect(left(yield* run(join(b5, "pbs", "key.json"), (p) => p.install(Redacted.make(k.text)))).reason).toBe("Untrusted")
    }))

  it.effect("read: no key is Missing", () =>
    Effect.gen(function*() {
      const base = scratch()
      expect(left(yield* run(join(base, "pbs", "key.json"), (p) => p.read)).reason).toBe("Missing")
    }))

  it.effect("attachToStorage: Missing without a key; the helper's failure is Attach; success runs it once", () =>
    Effect.gen(function*() {
      const base = scratch()
      const keyFile = join(base, "pbs", "key.json")
      const calls: Array<string> = []
      const priv: PrivilegedPbsKeyShape = {
        attachPbsKey: (s) => {
          calls.push(s)
          return s === "bad"
            ? Effect.fail(new PrivilegedError({ reason: "NonZeroExit", command: "felhom-pbskey", message: "felhom-pbskey: exited with status 3" }))
            : Effect.succeed("attached" as const)
        }
      }
      expect(left(yield* run(keyFile, (p) => p.attachToStorage(StorageId.make("pbs1")), { priv })).reason).toBe("Missing")
      right(yield* run(keyFile, (p) => p.install(Redacted.make(newKey().text))))
      right(yield* run(keyFile, (p) => p.attachToStorage(StorageId.make("pbs1")), { priv, uid: () => 65534 }))
      const e = left(yield* run(keyFile, (p) => p.attachToStorage(StorageId.make("bad")), { priv }))
      expect(e.reason).toBe("Attach")
      expect(calls).toEqual(["pbs1", "bad"])
    }))
})

// ---------------------------------------------------------------------------------------------
// The root helper, for real

/** A scratch root laid out like a PVE host, with K installed and a fake pvesm recording argv. */
const helperRoot = (opts: { storageCfg?: string } = {}) => {
  const root = scratch()
  const k = newKey()
  const mk = (p: string, mode = 0o755) => {
    mkdirSync(join(root, p), { recursive: true })
    chmodSync(join(root, p), mode)
  }
  mk("etc")
  mk("etc/felhom-agent")
  mk("etc/felhom-agent/pbs", 0o711)
  mk("etc/pve")
  mk("etc/pve/priv/storage", 0o700)
  const keyFile = join(root, "etc/felhom-agent/pbs/encryption-key.json")
  writeFileSync(keyFile, k.text, { mode: 0o600 })
  writeFileSync(join(root, "etc/pve/storage.cfg"), opts.storageCfg ?? "dir: local\n\tpath /var/lib/vz\n\npbs: offsite\n\tserver 10.0.0.5\n")
  const bin = join(root, "bin")
  mkdirSync(bin)
  const pvesm = join(bin, "pvesm")
  writeFileSync(pvesm, [
    "#!/bin/sh",
    `printf '%s\\n' "$@" > ${JSON.stringify(join(bin, "pvesm.argv"))}`,
    // what PVE does: keep the key file's content as the storage's key
    `[ "$3" = --encryption-key ] && cp "$4" ${JSON.stringify(join(root, "etc/pve/priv/storage"))}/"$2".enc`,
    "exit ${PVESM_EXIT:-0}",
    ""
  ].join("\n"))
  chmodSync(pvesm, 0o755)
  const helper = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
    spawnSync(HELPER, [...args], {
      encoding: "utf8",
      env: { FELHOM_PBSKEY_TEST_ROOT: root, FELHOM_PBSKEY_TEST_PVESM: pvesm, PATH: "/usr/bin:/bin", ...env }
    })
  const argv = () => existsSync(join(bin, "pvesm.argv")) ? readFileSync(join(bin, "pvesm.argv"), "utf8").split("\n").slice(0, -1) : undefined
  return { root, k, keyFile, helper, argv, enc: (s: string) => join(root, "etc/pve/priv/storage", `${s}.enc`) }
}

describe.skipIf(!isRoot)("felhom-pbskey: the real root helper", () => {
  it("attach runs pvesm set <storage> --encryption-key <the fixed key path>, prints attached; again: unchanged", () => {
    const h = helperRoot()
    const r = h.helper(["attach", "offsite"])
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    expect(r.stdout).toBe("attached offsite\n")
    expect(h.argv()).toEqual(["set", "offsite", "--encryption-key", h.keyFile])
    rmSync(join(h.root, "bin", "pvesm.argv"))
    const again = h.helper(["attach", "offsite"])
    expect(again.status).toBe(0)
    expect(again.stdout).toBe("unchanged offsite\n")
    expect(h.argv()).toBeUndefined()
    expectNoKey(r.stdout + r.stderr + again.stdout + again.stderr, h.k)
  })

  it("refuses a storage already holding another key (exit 3) and never runs pvesm", () => {
    const h = helperRoot()
    writeFileSync(h.enc("offsite"), newKey().text, { mode: 0o600 })
    const r = h.helper(["attach", "offsite"])
    expect(r.status).toBe(3)
    expect(r.stderr).toContain("already holds another encryption key")
    expect(h.argv()).toBeUndefined()
    expectNoKey(r.stderr, h.k)
  })

  it("bad arguments are exit 2 and run nothing: another action, a shell-ish id, extra arguments, a key path", () => {
    const h = helperRoot()
    for (const args of [["detach", "offsite"], ["attach", "off;site"], ["attach", "-x"], ["attach", "$(id)"], ["attach", "offsite", "/tmp/k.json"], ["attach"], ["attach", "a".repeat(65)]]) {
      const r = h.helper(args)
      expect(r.status, args.join(" ")).toBe(2)
    }
    expect(h.argv()).toBeUndefined()
  })

  it("refuses (exit 3) a storage that is not pbs in storage.cfg, a key readable by others, a foreign-owned key, a symlinked key dir", () => {
    const notPbs = helperRoot()
    expect(notPbs.helper(["attach", "local"]).status).toBe(3)
    const readable = helperRoot()
    chmodSync(readable.keyFile, 0o644)
    expect(readable.helper(["attach", "offsite"]).status).toBe(3)
    const foreign = helperRoot()
    chownSync(foreign.keyFile, 65534, 65534)
    expect(foreign.helper(["attach", "offsite"]).status).toBe(3)
    const linked = helperRoot()
    const pbs = join(linked.root, "etc/felhom-agent/pbs")
    const moved = join(linked.root, "etc/felhom-agent/pbs-real")
    spawnSync("mv", [pbs, moved])
    symlinkSync(moved, pbs)
    expect(linked.helper(["attach", "offsite"]).status).toBe(3)
    const groupWritable = helperRoot()
    chmodSync(join(groupWritable.root, "etc/felhom-agent"), 0o775)
    expect(groupWritable.helper(["attach", "offsite"]).status).toBe(3)
    for (const h of [notPbs, readable, foreign, linked, groupWritable]) expect(h.argv()).toBeUndefined()
  })

  it("no key installed is exit 4; pvesm failing is exit 5", () => {
    const none = helperRoot()
    rmSync(none.keyFile)
    expect(none.helper(["attach", "offsite"]).status).toBe(4)
    const failing = helperRoot()
    const r = failing.helper(["attach", "offsite"], { PVESM_EXIT: "1" })
    expect(r.status).toBe(5)
    expect(r.stdout).toBe("")
  })
})

describe("Privileged.attachPbsKey: the runner's argv and verdicts", () => {
  it.effect("runs `felhom-pbskey attach <storage>`, reads the verdict, refuses a bad id before spawning", () =>
    Effect.gen(function*() {
      const bin = makeBinDir()
      const attached = bin.fake("felhom-pbskey", { stdout: "attached pbs-1\n" })
      const attach = (s: string, path = attached) =>
        Effect.flatMap(PrivilegedPbsKey, (p) => Effect.either(p.attachPbsKey(s as StorageId))).pipe(
          Effect.provide(pbsKeyRunner(path))
        )
      const ok = yield* attach("pbs-1")
      expect(ok).toEqual(Either.right("attached"))
      expect(bin.argv("felhom-pbskey")?.slice(1)).toEqual(["attach", "pbs-1"])
      const wrong = yield* attach("pbs-2")
      expect(Either.isLeft(wrong) && wrong.left.reason).toBe("Decode")
      for (const bad of ["-rf", "a b", "../x", "a".repeat(65), ""]) {
        const r = yield* attach(bad)
        expect(Either.isLeft(r) && r.left.reason).toBe("InvalidArgument")
      }
      bin.cleanup()
    }))
})

const sandbox = makeSudoSandbox()
afterAll(() => sandbox?.cleanup())

describe.skipIf(sandbox === undefined)("sudoers: the felhom-pbskey rule", () => {
  it("allows attach <storage id> and nothing else", () => {
    const helper = "/usr/local/libexec/felhom-agent/felhom-pbskey"
    expect(sandbox!.allows([helper, "attach", "offsite"])).toBe(true)
    expect(sandbox!.allows([helper, "attach", "pbs.offsite-2"])).toBe(true)
    expect(sandbox!.allows([helper, "attach", "offsite", "/tmp/other-key.json"])).toBe(false)
    expect(sandbox!.allows([helper, "attach", "-x"])).toBe(false)
    expect(sandbox!.allows([helper, "attach", "a".repeat(65)])).toBe(false)
    expect(sandbox!.allows([helper, "detach", "offsite"])).toBe(false)
    expect(sandbox!.allows(["/usr/sbin/pvesm", "set", "offsite", "--encryption-key", "/tmp/k.json"])).toBe(false)
    expect(sandbox!.allows(["/usr/sbin/pveum", "role", "list"])).toBe(false)
  })
})
