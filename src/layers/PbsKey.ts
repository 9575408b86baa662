/**
 * PbsKey: the live PBS encryption key K on this host (issue 13, SPEC §13). K is a plain PBS key
 * file (`kdf: null`), root-owned 0600 at `escrow.key_file`; its fingerprint (public) beside it.
 *
 * Who may do what:
 * - `fingerprint` reads only the public sidecar: the daemon uses it to check that a PVE storage
 *   entry holds this key (PVE lists only fingerprints).
 * - `install` and `read` need root (enrollment and code rotation are run as root): in sudo mode
 *   they fail with NotRoot rather than widen the sudoers allowlist, so the service user can never
 *   read K.
 * - `attachToStorage` hands K to PVE through the root helper (`felhom-pbskey attach <storage>`,
 *   which runs `pvesm set <storage> --encryption-key <key_file>`): K goes from a root file to
 *   PVE's root-only store without passing through the service user.
 *
 * Errors never carry key material, only paths, storage ids and fingerprints.
 */
import { Context, Data, Effect, Either, Layer, Option, Redacted, Schema } from "effect"
import { constants } from "node:fs"
import { chmod, link, lstat, mkdir, readFile, rename } from "node:fs/promises"
import { dirname } from "node:path"
import { inspectKeyFile, unwrapKey } from "../programs/escrow/keyFile.js"
import { KeyFingerprint } from "../schema/escrow.js"
import type { StorageId } from "../schema/ids.js"
import { DEFAULT_PBS_KEY_FILE } from "../schema/config.js"
import { AgentConfig } from "./Config.js"
import { removeQuietly, syncDir, writeTemp } from "./durableFile.js"
import { PrivilegedPbsKey, type PrivilegedPbsKeyShape } from "./Privileged.js"

export class PbsKeyError extends Data.TaggedError("PbsKeyError")<{
  /**
   * - Missing: no key installed (no key file / no sidecar).
   * - Exists: install of a key with another fingerprint over the installed one (refused: K is never replaced).
   * - Unreadable: the file is not a plain PBS key file, or its fingerprint does not match the sidecar.
   * - Untrusted: the file or a directory above it is not root-owned, or the file is readable by others.
   * - NotRoot: the call needs root and this process is not (sudo mode).
   * - Io: a write, rename or fsync failed.
   * - Attach: the root helper failed to attach the key to a PVE storage.
   */
  readonly reason: "Missing" | "Exists" | "Unreadable" | "Untrusted" | "NotRoot" | "Io" | "Attach"
  readonly message: string
}> {}

export interface PbsKeyShape {
  /** The installed key's fingerprint from the public sidecar; None when no key is installed. */
  readonly fingerprint: Effect.Effect<Option.Option<KeyFingerprint>, PbsKeyError>
  /**
   * Installs K (a plain PBS key file's JSON text) atomically, 0600 root, and its sidecar.
   * Idempotent for the same key; a different key over an installed one fails with Exists.
   */
  readonly install: (keyFile: Redacted.Redacted<string>) => Effect.Effect<{ readonly fingerprint: KeyFingerprint }, PbsKeyError>
  /** K's file text, checked against its sidecar (root only). */
  readonly read: Effect.Effect<Redacted.Redacted<string>, PbsKeyError>
  /** Attaches K to the PVE storage entry `storage` (a pbs storage) through the root helper. */
  readonly attachToStorage: (storage: StorageId) => Effect.Effect<void, PbsKeyError>
}

export class PbsKey extends Context.Tag("felhom/PbsKey")<PbsKey, PbsKeyShape>() {}

// ---------------------------------------------------------------------------------------------
// The live implementation: real files, as root

/** The key file is `<dir>/<name>`; its public fingerprint sits beside it. */
export const sidecarOf = (keyFile: string): string => `${keyFile}.fingerprint`

/**
 * The key directory's mode: root-only writable, traversable (not listable) by others, because the
 * daemon (the service user) reads the public sidecar in it; K itself is 0600.
 */
export const KEY_DIR_MODE = 0o711
export const KEY_FILE_MODE = 0o600
export const SIDECAR_MODE = 0o644

export interface PbsKeyOptions {
  readonly keyFile: string
  /** The process's uid (tests stand in a non-root one); default process.getuid(). */
  readonly uid?: () => number
}

const S_IWGRP = 0o020
const S_IWOTH = 0o002
const S_ISVTX = 0o1000

const codeOf = (e: unknown): string => {
  const inner = (e as { error?: unknown } | undefined)?.error ?? e
  const code = (inner as { code?: unknown } | undefined)?.code
  return typeof code === "string" ? code : "unknown error"
}

const fail = (reason: PbsKeyError["reason"], message: string) => new PbsKeyError({ reason, message })

/** `/a/b/c` → `/`, `/a`, `/a/b`, `/a/b/c`. */
const componentsOf = (path: string): ReadonlyArray<string> => {
  const parts = path.split("/").filter((p) => p.length > 0)
  return ["/", ...parts.map((_, i) => `/${parts.slice(0, i + 1).join("/")}`)]
}

/**
 * Refuses `dir` unless every existing component from `/` down is a root-owned directory that only
 * root can write, and none is a symlink (as Privileged's trustedTree). A root-owned sticky
 * directory above it (a /tmp) is allowed: others may create entries there but cannot rename or
 * remove root's. Returns the first missing component, if any.
 */
const trustedDir = (dir: string): Effect.Effect<string | undefined, PbsKeyError> =>
  Effect.gen(function*() {
    const all = componentsOf(dir)
    for (const [i, c] of all.entries()) {
      const st = yield* Effect.tryPromise(() => lstat(c)).pipe(Effect.either)
      if (Either.isLeft(st)) {
        if (codeOf(st.left) === "ENOENT") return c
        return yield* fail("Untrusted", `${c} cannot be inspected (${codeOf(st.left)})`)
      }
      const s = st.right
      const why = s.isSymbolicLink()
        ? "is a symlink"
        : !s.isDirectory()
        ? "is not a directory"
        : s.uid !== 0
        ? "is not owned by root"
        : (s.mode & (S_IWGRP | S_IWOTH)) !== 0 && !((s.mode & S_ISVTX) !== 0 && i < all.length - 1)
        ? "is writable by its group or by others"
        : undefined
      if (why !== undefined) {
        return yield* fail("Untrusted", `${c} ${why}; every directory above the PBS key must be root-owned, only root-writable, and no symlink`)
      }
    }
    return undefined
  })

/** The key file's own check (lstat): a root-owned regular file nobody else can read or write. */
const trustedKeyFile = (path: string): Effect.Effect<boolean, PbsKeyError> =>
  Effect.gen(function*() {
    const st = yield* Effect.tryPromise(() => lstat(path)).pipe(Effect.either)
    if (Either.isLeft(st)) {
      if (codeOf(st.left) === "ENOENT") return false
      return yield* fail("Untrusted", `${path} cannot be inspected (${codeOf(st.left)})`)
    }
    const s = st.right
    if (s.isSymbolicLink()) return yield* fail("Untrusted", `${path} is a symlink`)
    if (!s.isFile()) return yield* fail("Untrusted", `${path} is not a regular file`)
    if (s.uid !== 0) return yield* fail("Untrusted", `${path} is not owned by root`)
    if ((s.mode & 0o077) !== 0) return yield* fail("Untrusted", `${path} is readable or writable by others than root (it must be 0600)`)
    return true
  })

const readText = (path: string) =>
  Effect.tryPromise(() => readFile(path, { encoding: "utf8", flag: constants.O_RDONLY | constants.O_NOFOLLOW })).pipe(
    Effect.mapError((e) => fail("Io", `cannot read ${path} (${codeOf(e)})`))
  )

/** The sidecar's fingerprint; None when there is none. */
const readSidecar = (path: string): Effect.Effect<Option.Option<KeyFingerprint>, PbsKeyError> =>
  Effect.tryPromise(() => readFile(path, "utf8")).pipe(
    Effect.either,
    Effect.flatMap((r) => {
      if (Either.isLeft(r)) {
        return codeOf(r.left) === "ENOENT" ? Effect.succeed(Option.none()) : Effect.fail(fail("Io", `cannot read ${path} (${codeOf(r.left)})`))
      }
      return Schema.decodeUnknown(KeyFingerprint)(r.right.trim()).pipe(
        Effect.map(Option.some),
        Effect.mapError(() => fail("Unreadable", `${path} does not hold a PBS key fingerprint`))
      )
    })
  )

/** A plain (kdf null) PBS key file's fingerprint, checked by unwrapping it; the text never in an error. */
const plainFingerprint = (text: Redacted.Redacted<string>, what: string): Effect.Effect<KeyFingerprint, PbsKeyError> =>
  Effect.gen(function*() {
    const info = inspectKeyFile(Redacted.value(text))
    if (Either.isLeft(info)) return yield* fail("Unreadable", `${what} is not a PBS key file`)
    if (info.right.kdf !== "none") {
      return yield* fail("Unreadable", `${what} is a passphrase-protected key file; the live key must be a plain (kdf null) key file`)
    }
    const unwrapped = yield* unwrapKey(Redacted.value(text), undefined).pipe(
      Effect.mapError((e) => fail("Unreadable", `${what} is not a usable PBS key file (${e.reason})`))
    )
    return unwrapped.fingerprint
  })

export const makePbsKey = (opts: PbsKeyOptions, privileged: PrivilegedPbsKeyShape): PbsKeyShape => {
  const keyFile = opts.keyFile
  const sidecar = sidecarOf(keyFile)
  const dir = dirname(keyFile)
  const uid = opts.uid ?? (() => process.getuid?.() ?? -1)
  const needRoot = (what: string) =>
    uid() === 0 ? Effect.void : Effect.fail(fail("NotRoot", `${what} needs root (run it as root: the service user never reads the PBS key)`))

  const writeSidecar = (fp: KeyFingerprint) =>
    Effect.gen(function*() {
      const tmp = yield* writeTemp(sidecar, `${fp}\n`, SIDECAR_MODE)
      yield* Effect.tryPromise(() => rename(tmp, sidecar)).pipe(Effect.tapError(() => removeQuietly(tmp)))
      yield* syncDir(dir)
    }).pipe(Effect.mapError((e) => e instanceof PbsKeyError ? e : fail("Io", `cannot write ${sidecar} (${codeOf(e)})`)))

  /** K's text and fingerprint as installed, after every check; None when no key file exists. */
  const installed = Effect.gen(function*() {
    const missing = yield* trustedDir(dir)
    if (missing !== undefined) return Option.none<{ text: Redacted.Redacted<string>; fingerprint: KeyFingerprint }>()
    if (!(yield* trustedKeyFile(keyFile))) return Option.none()
    const text = Redacted.make(yield* readText(keyFile))
    const fingerprint = yield* plainFingerprint(text, keyFile)
    return Option.some({ text, fingerprint })
  })

  const fingerprint: PbsKeyShape["fingerprint"] = readSidecar(sidecar).pipe(Effect.withSpan("PbsKey.fingerprint"))

  const read: PbsKeyShape["read"] = Effect.gen(function*() {
    yield* needRoot("reading the PBS key")
    const k = yield* installed
    if (Option.isNone(k)) return yield* fail("Missing", `no PBS key is installed at ${keyFile}`)
    const side = yield* readSidecar(sidecar)
    if (Option.isNone(side)) return yield* fail("Unreadable", `${sidecar} is missing: the installed key cannot be checked against it`)
    if (side.value !== k.value.fingerprint) {
      return yield* fail("Unreadable", `${keyFile} holds key ${k.value.fingerprint} but ${sidecar} names ${side.value}`)
    }
    return k.value.text
  }).pipe(Effect.withSpan("PbsKey.read"))

  const install: PbsKeyShape["install"] = (text) =>
    Effect.gen(function*() {
      yield* needRoot("installing the PBS key")
      const fp = yield* plainFingerprint(text, "the key to install")
      const missing = yield* trustedDir(dir)
      if (missing !== undefined) {
        // create what is missing, root-owned; the key directory itself only traversable by others
        yield* Effect.tryPromise(async () => {
          await mkdir(dirname(dir), { recursive: true, mode: 0o755 })
          await mkdir(dir, { mode: KEY_DIR_MODE }).catch((e: unknown) => {
            if (codeOf(e) !== "EEXIST") throw e
          })
          await chmod(dir, KEY_DIR_MODE)
        }).pipe(Effect.mapError((e) => fail("Io", `cannot create ${dir} (${codeOf(e)})`)))
        const still = yield* trustedDir(dir)
        if (still !== undefined) return yield* fail("Io", `cannot create ${still}`)
      }
      const side = yield* readSidecar(sidecar)
      const current = yield* installed
      if (Option.isSome(current)) {
        if (current.value.fingerprint !== fp) {
          return yield* fail("Exists", `another PBS key (${current.value.fingerprint}) is installed at ${keyFile}; it is never replaced: every offsite backup made under it needs it`)
        }
        if (Option.isSome(side) && side.value !== fp) {
          return yield* fail("Unreadable", `${keyFile} holds key ${fp} but ${sidecar} names ${side.value}`)
        }
        if (Option.isNone(side)) yield* writeSidecar(fp) // a crash between the key and its sidecar
        return { fingerprint: fp }
      }
      // no key file: a sidecar naming another key means K was here once (removed by hand?)
      if (Option.isSome(side) && side.value !== fp) {
        return yield* fail("Exists", `${sidecar} names another PBS key (${side.value}); refusing to install ${fp} in its place`)
      }
      const tmp = yield* writeTemp(keyFile, Redacted.value(text), KEY_FILE_MODE).pipe(
        Effect.mapError((e) => fail("Io", `cannot write a temp file beside ${keyFile} (${codeOf(e)})`))
      )
      // link(2), not rename(2): it fails rather than replace a key file that appeared meanwhile
      const linked = yield* Effect.tryPromise(() => link(tmp, keyFile)).pipe(Effect.either)
      yield* removeQuietly(tmp)
      if (Either.isLeft(linked)) {
        if (codeOf(linked.left) === "EEXIST") {
          return yield* fail("Exists", `a PBS key file appeared at ${keyFile} while installing; it is left as it is`)
        }
        return yield* fail("Io", `cannot install ${keyFile} (${codeOf(linked.left)})`)
      }
      yield* syncDir(dir).pipe(Effect.mapError((e) => fail("Io", `cannot sync ${dir} (${codeOf(e)})`)))
      yield* writeSidecar(fp)
      return { fingerprint: fp }
    }).pipe(Effect.withSpan("PbsKey.install"))

  const attachToStorage: PbsKeyShape["attachToStorage"] = (storage) =>
    Effect.gen(function*() {
      const side = yield* readSidecar(sidecar)
      if (Option.isNone(side)) return yield* fail("Missing", `no PBS key is installed (no ${sidecar}); run felhom-agent enroll`)
      yield* privileged.attachPbsKey(storage).pipe(
        Effect.mapError((e) => fail("Attach", `attaching the PBS key to storage ${storage}: ${e.message}`))
      )
    }).pipe(Effect.withSpan("PbsKey.attachToStorage"))

  return PbsKey.of({ fingerprint, install, read, attachToStorage })
}

/** PbsKey over an explicit key file (tests: a scratch directory, a stand-in uid). */
export const pbsKeyLayer = (opts: PbsKeyOptions): Layer.Layer<PbsKey, never, PrivilegedPbsKey> =>
  Layer.effect(PbsKey, Effect.map(PrivilegedPbsKey, (p) => makePbsKey(opts, p)))

/** The production layer: `escrow.key_file` from the config. */
export const PbsKeyLive: Layer.Layer<PbsKey, never, PrivilegedPbsKey | AgentConfig> = Layer.effect(
  PbsKey,
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    const made = makePbsKey({ keyFile: file.escrow.key_file }, yield* PrivilegedPbsKey)
    if (file.escrow.key_file === DEFAULT_PBS_KEY_FILE) return made
    // the root helper attaches only the fixed path (the service user never names a file root reads)
    return PbsKey.of({
      ...made,
      attachToStorage: () =>
        Effect.fail(new PbsKeyError({
          reason: "Attach",
          message: `the root helper felhom-pbskey attaches only ${DEFAULT_PBS_KEY_FILE}; escrow.key_file is ${file.escrow.key_file}: use the default path`
        }))
    })
  })
)
