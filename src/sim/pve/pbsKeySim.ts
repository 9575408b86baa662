/**
 * PbsKey for the simulator and non-root dev machines (issue 13): the live key K as a plain PBS key
 * file in a scratch directory, its public fingerprint in the sidecar beside it, and
 * `attachToStorage` doing what the root helper's `pvesm set <storage> --encryption-key <file>`
 * does, through SimPve.setStorageEncryptionKey.
 *
 * The live layer's checks that make sense for a non-root user are kept: K must be a plain
 * (`kdf: null`) PBS key file whose fingerprint checks out; the file is written atomically (temp
 * file, fsync, rename) with mode 0600 before its sidecar, so a sidecar always names a key that is
 * there; a symlink or a key file others can read is refused (Untrusted); installing another key
 * over an installed one is refused (Exists), the same key is idempotent. Root ownership is not
 * checked (the whole point is to run unprivileged). Errors carry paths, storage ids and
 * fingerprints, never key material.
 */
import { Effect, Either, Layer, Option, Redacted, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { constants } from "node:fs"
import { lstat, mkdir, open, readFile, rename, unlink } from "node:fs/promises"
import { join } from "node:path"
import { PbsKey, PbsKeyError, type PbsKeyShape } from "../../layers/PbsKey.js"
import { inspectKeyFile, unwrapKey } from "../../programs/escrow/keyFile.js"
import { KeyFingerprint } from "../../schema/escrow.js"
import type { SimPve } from "./sim.js"

export const SIM_KEY_FILE = "encryption-key.json"

const fail = (reason: PbsKeyError["reason"], message: string) => new PbsKeyError({ reason, message })

const codeOf = (e: unknown): string => {
  const inner = (e as { error?: unknown } | undefined)?.error ?? e
  const code = (inner as { code?: unknown } | undefined)?.code
  return typeof code === "string" ? code : "unknown error"
}

const decodeFingerprint = Schema.decodeUnknownEither(KeyFingerprint)

/** A plain PBS key file's fingerprint (unwrapped to check it); never the text in an error. */
const plainFingerprint = (text: string, what: string): Effect.Effect<KeyFingerprint, PbsKeyError> =>
  Effect.gen(function*() {
    const info = inspectKeyFile(text)
    if (Either.isLeft(info)) return yield* fail("Unreadable", `${what} is not a PBS key file`)
    if (info.right.kdf !== "none") return yield* fail("Unreadable", `${what} is passphrase-protected; the live key is a plain (kdf null) key file`)
    const k = yield* unwrapKey(text, undefined).pipe(Effect.mapError((e) => fail("Unreadable", `${what} is not a usable PBS key file (${e.reason})`)))
    return k.fingerprint
  })

/** Writes `text` at `path` atomically with `mode` (temp file in the same directory, fsync, rename). */
const writeAtomic = (path: string, text: string, mode: number) =>
  Effect.tryPromise({
    try: async () => {
      const tmp = `${path}.tmp-${randomBytes(6).toString("hex")}`
      const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode)
      try {
        await fh.writeFile(text, "utf8")
        await fh.sync()
      } finally {
        await fh.close()
      }
      try {
        await rename(tmp, path)
      } catch (e) {
        await unlink(tmp).catch(() => undefined)
        throw e
      }
    },
    catch: (e) => fail("Io", `cannot write ${path} (${codeOf(e)})`)
  })

/** The PbsKey service over `dir` (created 0700 if missing) and the simulator `sim`. */
export const makePbsKeySim = (sim: SimPve, dir: string): PbsKeyShape => {
  const keyFile = join(dir, SIM_KEY_FILE)
  const sidecar = `${keyFile}.fingerprint`

  /** The key file's text: None when absent; a symlink, a non-file or a file others may read is Untrusted. */
  const readKey: Effect.Effect<Option.Option<Redacted.Redacted<string>>, PbsKeyError> = Effect.gen(function*() {
    const st = yield* Effect.either(Effect.tryPromise(() => lstat(keyFile)))
    if (Either.isLeft(st)) {
      if (codeOf(st.left) === "ENOENT") return Option.none()
      return yield* fail("Untrusted", `${keyFile} cannot be inspected (${codeOf(st.left)})`)
    }
    if (st.right.isSymbolicLink()) return yield* fail("Untrusted", `${keyFile} is a symlink`)
    if (!st.right.isFile()) return yield* fail("Untrusted", `${keyFile} is not a regular file`)
    if ((st.right.mode & 0o077) !== 0) return yield* fail("Untrusted", `${keyFile} is readable or writable by others than its owner (it must be 0600)`)
    const text = yield* Effect.tryPromise({
      try: () => readFile(keyFile, { encoding: "utf8", flag: constants.O_RDONLY | constants.O_NOFOLLOW }),
      catch: (e) => fail("Io", `cannot read ${keyFile} (${codeOf(e)})`)
    })
    return Option.some(Redacted.make(text))
  })

  const fingerprint: PbsKeyShape["fingerprint"] = Effect.gen(function*() {
    const r = yield* Effect.either(Effect.tryPromise(() => readFile(sidecar, "utf8")))
    if (Either.isLeft(r)) {
      if (codeOf(r.left) === "ENOENT") return Option.none()
      return yield* fail("Io", `cannot read ${sidecar} (${codeOf(r.left)})`)
    }
    const fp = decodeFingerprint(r.right.trim())
    if (Either.isLeft(fp)) return yield* fail("Unreadable", `${sidecar} does not hold a PBS key fingerprint`)
    return Option.some(fp.right)
  })

  const read: PbsKeyShape["read"] = Effect.gen(function*() {
    const want = yield* fingerprint
    if (Option.isNone(want)) return yield* fail("Missing", `no PBS key is installed (${sidecar} is missing)`)
    const text = yield* readKey
    if (Option.isNone(text)) return yield* fail("Missing", `no PBS key is installed (${keyFile} is missing)`)
    const have = yield* plainFingerprint(Redacted.value(text.value), keyFile)
    if (have !== want.value) return yield* fail("Unreadable", `${keyFile} holds the key ${have}, its sidecar names ${want.value}`)
    return text.value
  })

  const install: PbsKeyShape["install"] = (text) =>
    Effect.gen(function*() {
      const fp = yield* plainFingerprint(Redacted.value(text), "the key to install")
      yield* Effect.tryPromise({ try: () => mkdir(dir, { recursive: true, mode: 0o700 }), catch: (e) => fail("Io", `cannot create ${dir} (${codeOf(e)})`) })
      const installed = yield* fingerprint
      if (Option.isSome(installed) && installed.value !== fp) {
        return yield* fail("Exists", `a PBS key (${installed.value}) is installed; it is never replaced by another (${fp})`)
      }
      const present = yield* readKey
      if (Option.isSome(present)) {
        const have = yield* plainFingerprint(Redacted.value(present.value), keyFile)
        // a key file without its sidecar is an install cut short: only the same key finishes it
        if (have !== fp) return yield* fail("Exists", `${keyFile} holds another PBS key (${have}); it is never replaced by ${fp}`)
      } else {
        yield* writeAtomic(keyFile, Redacted.value(text), 0o600)
      }
      if (Option.isNone(installed)) yield* writeAtomic(sidecar, `${fp}\n`, 0o644)
      return { fingerprint: fp }
    })

  const attachToStorage: PbsKeyShape["attachToStorage"] = (storage) =>
    Effect.gen(function*() {
      const text = yield* read
      const r = yield* sim.setStorageEncryptionKey(storage, Redacted.value(text))
      if (r._tag === "refused") return yield* fail("Attach", `pvesm set ${storage} --encryption-key: ${r.message}`)
    })

  return { fingerprint, install, read, attachToStorage }
}

/** The simulator's PbsKey layer: K under `dir` (a scratch directory), attached through `sim`. */
export const pbsKeySimLayer = (sim: SimPve, dir: string): Layer.Layer<PbsKey> => Layer.succeed(PbsKey, makePbsKeySim(sim, dir))
