/**
 * Release manifests (issue 14, SPEC §15, src/schema/release.ts): building one for a release tree,
 * verifying its SSHSIG (namespace felhom-release-v1, signers from `update.release_signers`) over
 * the manifest's exact bytes, and verifying a tree against a verified manifest.
 *
 * Order matters: the signature is checked over the raw bytes BEFORE they are parsed, so nothing
 * a hub (or anyone else) wrote is interpreted until a release key vouched for it; then the
 * manifest is decoded strictly; then every byte of the tree is compared with it. Tree checks use
 * lstat and never follow a symlink. Plain synchronous fs: `release verify` runs as root from the
 * root helper and must open nothing but the tree and the config.
 */
import { createHash } from "node:crypto"
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readSync } from "node:fs"
import { posix } from "node:path"
import { Data, Either, ParseResult, Schema } from "effect"
import { ConfigError } from "../../schema/errors.js"
import {
  MANIFEST_FILE,
  RELEASE_FORMAT,
  RELEASE_NAMESPACE,
  type ReleaseFile,
  ReleaseManifest,
  REQUIRED_RELEASE_FILES,
  SIGNATURE_FILE
} from "../../schema/release.js"
import { dearmor, parsePublicKeyLine, parseSignatureBlob, type SshPublicKey, verifySignatureBlob } from "../../schema/sshsig.js"
import { bytesEqual } from "../../schema/sshkeys.js"

/** Why a release was refused; `message` is one line naming the reason, never file content. */
export class ReleaseRefused extends Data.TaggedError("ReleaseRefused")<{
  readonly reason: "NoSigners" | "Signature" | "UnknownSigner" | "Namespace" | "Manifest" | "Version" | "Tree" | "Io"
  readonly message: string
}> {}

/** A manifest or signature larger than this is refused unread (10,000 files fit in ~2 MiB). */
export const MANIFEST_MAX_BYTES = 4 * 1024 * 1024
export const SIGNATURE_MAX_BYTES = 16 * 1024

const refused = (reason: ReleaseRefused["reason"], message: string) => new ReleaseRefused({ reason, message })

// ---------------------------------------------------------------------------------------------
// Signers

/** `update.release_signers`: plain authorized_keys lines (`<type> <base64> [comment]`). */
export const parseReleaseSigners = (lines: ReadonlyArray<string>): Either.Either<ReadonlyArray<SshPublicKey>, ConfigError> => {
  const out: Array<SshPublicKey> = []
  for (const [i, line] of lines.entries()) {
    const key = `update.release_signers[${i}]`
    const parsed = parsePublicKeyLine(line)
    if (Either.isLeft(parsed)) return Either.left(new ConfigError({ key, message: `${key}: bad public key: ${parsed.left.message}` }))
    if (out.some((k) => bytesEqual(k.blob, parsed.right.key.blob))) {
      return Either.left(new ConfigError({ key, message: `${key}: the same key is listed twice` }))
    }
    out.push(parsed.right.key)
  }
  return Either.right(out)
}

// ---------------------------------------------------------------------------------------------
// Signature, then manifest

const utf8 = new TextDecoder("utf-8", { fatal: true })

const issuesOf = (e: ParseResult.ParseError): string =>
  ParseResult.ArrayFormatter.formatErrorSync(e).slice(0, 4).map((i) =>
    `${i.path.length === 0 ? "(root)" : i.path.map(String).join(".")}: ${i.message.replace(/,?\s*actual[\s\S]*$/, "").slice(0, 120)}`
  ).join("; ")

/**
 * Verifies `signature` (armored SSHSIG) over `manifestBytes` exactly as given, by one of
 * `signers`, in RELEASE_NAMESPACE (an operator-op signature over the same bytes is refused:
 * Namespace), then decodes the manifest strictly. Nothing of the manifest is read before the
 * signature verifies.
 */
export const verifySignedManifest = (
  manifestBytes: Uint8Array,
  signature: Uint8Array,
  signers: ReadonlyArray<SshPublicKey>
): Either.Either<ReleaseManifest, ReleaseRefused> => {
  if (signers.length === 0) return Either.left(refused("NoSigners", "no release signers configured (update.release_signers)"))
  if (manifestBytes.length > MANIFEST_MAX_BYTES) return Either.left(refused("Manifest", `${MANIFEST_FILE} is larger than ${MANIFEST_MAX_BYTES} bytes`))
  if (signature.length > SIGNATURE_MAX_BYTES) return Either.left(refused("Signature", `${SIGNATURE_FILE} is larger than ${SIGNATURE_MAX_BYTES} bytes`))
  const blob = dearmor(signature)
  if (Either.isLeft(blob)) return Either.left(refused("Signature", `bad signature: ${blob.left.message}`))
  const sig = parseSignatureBlob(blob.right)
  if (Either.isLeft(sig)) return Either.left(refused("Signature", `bad signature: ${sig.left.message}`))
  if (sig.right.namespace !== RELEASE_NAMESPACE) {
    return Either.left(refused("Namespace", `signature namespace is ${JSON.stringify(sig.right.namespace.slice(0, 64))}, expected "${RELEASE_NAMESPACE}"`))
  }
  const signer = signers.find((k) => bytesEqual(k.blob, sig.right.publicKey))
  if (signer === undefined) return Either.left(refused("UnknownSigner", "the signing key is not a configured release signer"))
  const checked = verifySignatureBlob(sig.right, signer, RELEASE_NAMESPACE, manifestBytes, { requireUserPresence: true })
  if (Either.isLeft(checked)) {
    return Either.left(refused(checked.left.kind === "Namespace" ? "Namespace" : "Signature", `bad signature: ${checked.left.message}`))
  }
  let raw: unknown
  try {
    raw = JSON.parse(utf8.decode(manifestBytes))
  } catch {
    return Either.left(refused("Manifest", `${MANIFEST_FILE} is not valid UTF-8 JSON`))
  }
  return Either.mapLeft(
    Schema.decodeUnknownEither(ReleaseManifest)(raw, { errors: "all", onExcessProperty: "error" }),
    (e) => refused("Manifest", `${MANIFEST_FILE} does not match the manifest schema: ${issuesOf(e)}`)
  ).pipe(Either.flatMap((m) => {
    const missing = REQUIRED_RELEASE_FILES.filter((p) => !m.files.some((f) => f.path === p))
    return missing.length === 0 ? Either.right(m) : Either.left(refused("Manifest", `the release lacks ${missing.join(", ")}`))
  }))
}

// ---------------------------------------------------------------------------------------------
// Trees

interface TreeEntry {
  readonly path: string
  readonly kind: "file" | "dir"
  readonly size: number
  readonly mode: number
}

/** Walks `dir` with lstat (never following a link); a symlink or special file ends the walk. */
const walk = (dir: string): Either.Either<ReadonlyArray<TreeEntry>, ReleaseRefused> => {
  const out: Array<TreeEntry> = []
  const visit = (rel: string, depth: number): ReleaseRefused | undefined => {
    if (depth > 16) return refused("Tree", `${rel}: nested too deep`)
    let names: Array<string>
    try {
      names = readdirSync(rel === "" ? dir : posix.join(dir, rel))
    } catch (e) {
      return refused("Io", `cannot read ${rel === "" ? "the release directory" : rel}: ${codeOf(e)}`)
    }
    for (const name of names.sort()) {
      const path = rel === "" ? name : `${rel}/${name}`
      let st
      try {
        st = lstatSync(posix.join(dir, path))
      } catch (e) {
        return refused("Io", `cannot stat ${path}: ${codeOf(e)}`)
      }
      if (st.isSymbolicLink()) return refused("Tree", `${path} is a symlink`)
      if (st.isDirectory()) {
        out.push({ path, kind: "dir", size: 0, mode: st.mode & 0o7777 })
        const bad = visit(path, depth + 1)
        if (bad !== undefined) return bad
      } else if (st.isFile()) {
        out.push({ path, kind: "file", size: st.size, mode: st.mode & 0o7777 })
      } else {
        return refused("Tree", `${path} is not a regular file or directory`)
      }
    }
    return undefined
  }
  const top = (() => {
    try {
      return lstatSync(dir)
    } catch (e) {
      return codeOf(e)
    }
  })()
  if (typeof top === "string") return Either.left(refused("Io", `cannot stat the release directory: ${top}`))
  if (!top.isDirectory()) return Either.left(refused("Tree", "the release directory is not a directory (or is a symlink)"))
  const bad = visit("", 0)
  return bad === undefined ? Either.right(out) : Either.left(bad)
}

const codeOf = (e: unknown): string =>
  typeof e === "object" && e !== null && "code" in e ? String((e as { readonly code: unknown }).code) : "error"

/** SHA-256 of a regular file opened without following a link; its size as read. */
export const hashFile = (path: string): Either.Either<{ readonly sha256: string; readonly size: number }, string> => {
  let fd: number | undefined
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
    if (!fstatSync(fd).isFile()) return Either.left("not a regular file")
    const h = createHash("sha256")
    const buf = Buffer.allocUnsafe(1024 * 1024)
    let size = 0
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null)
      if (n === 0) break
      h.update(buf.subarray(0, n))
      size += n
    }
    return Either.right({ sha256: h.digest("hex"), size })
  } catch (e) {
    return Either.left(codeOf(e))
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

const isManifestFile = (path: string) => path === MANIFEST_FILE || path === SIGNATURE_FILE

/**
 * A manifest for the tree in `dir` (RELEASE.json and its .sig at the top are not listed): files
 * sorted by path, mode 0755 when any execute bit is set, else 0644. Symlinks and special files
 * are refused. Validated against the schema, so it never writes what verify would refuse.
 */
export const buildManifest = (
  dir: string,
  version: string,
  node: string,
  createdAt: Date
): Either.Either<ReleaseManifest, ReleaseRefused> =>
  Either.flatMap(walk(dir), (entries) => {
    const files: Array<ReleaseFile> = []
    for (const e of entries) {
      if (e.kind !== "file" || isManifestFile(e.path)) continue
      const h = hashFile(posix.join(dir, e.path))
      if (Either.isLeft(h)) return Either.left(refused("Io", `cannot read ${e.path}: ${h.left}`))
      files.push({ path: e.path, sha256: h.right.sha256, size: h.right.size, mode: (e.mode & 0o111) !== 0 ? 0o755 : 0o644 })
    }
    files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
    const candidate = {
      format: RELEASE_FORMAT,
      version,
      created_at: createdAt.toISOString(),
      node,
      files
    }
    return Either.mapLeft(
      Schema.decodeUnknownEither(ReleaseManifest)(candidate, { errors: "all", onExcessProperty: "error" }),
      (e) => refused("Manifest", `the tree does not make a valid release: ${issuesOf(e)}`)
    ).pipe(Either.flatMap((m) => {
      const missing = REQUIRED_RELEASE_FILES.filter((p) => !m.files.some((f) => f.path === p))
      return missing.length === 0 ? Either.right(m) : Either.left(refused("Manifest", `the tree lacks ${missing.join(", ")}`))
    }))
  })

/** The bytes written as RELEASE.json: what is signed, so never re-serialized afterwards. */
export const encodeManifest = (m: ReleaseManifest): string =>
  `${JSON.stringify(Schema.encodeSync(ReleaseManifest)(m), null, 2)}\n`

/**
 * Checks the tree in `dir` against a verified manifest: every listed file present as a regular
 * file with its exact size, mode and SHA-256; nothing else (RELEASE.json and its .sig at the top
 * excepted), no directory that holds no listed file, no symlink, no special file.
 */
export const verifyTree = (dir: string, m: ReleaseManifest): Either.Either<void, ReleaseRefused> =>
  Either.flatMap(walk(dir), (entries) => {
    const listed = new Map(m.files.map((f) => [f.path, f]))
    const dirs = new Set<string>()
    for (const f of m.files) {
      const parts = f.path.split("/")
      for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"))
    }
    const seen = new Set<string>()
    for (const e of entries) {
      if (e.kind === "dir") {
        if (!dirs.has(e.path)) return Either.left(refused("Tree", `${e.path}/ is not in the manifest`))
        continue
      }
      if (isManifestFile(e.path)) continue
      const f = listed.get(e.path)
      if (f === undefined) return Either.left(refused("Tree", `${e.path} is not in the manifest`))
      if (e.size !== f.size) return Either.left(refused("Tree", `${e.path}: size ${e.size}, the manifest says ${f.size}`))
      if (e.mode !== f.mode) return Either.left(refused("Tree", `${e.path}: mode ${e.mode.toString(8)}, the manifest says ${f.mode.toString(8)}`))
      const h = hashFile(posix.join(dir, e.path))
      if (Either.isLeft(h)) return Either.left(refused("Io", `cannot read ${e.path}: ${h.left}`))
      if (h.right.sha256 !== f.sha256 || h.right.size !== f.size) return Either.left(refused("Tree", `${e.path}: SHA-256 differs from the manifest`))
      seen.add(e.path)
    }
    const missing = m.files.find((f) => !seen.has(f.path))
    return missing === undefined ? Either.void : Either.left(refused("Tree", `${missing.path} is missing`))
  })

/**
 * `release verify`: RELEASE.json and its .sig read from `dir` (regular files, not links), the
 * signature verified over the file's bytes, the manifest decoded, its version compared with
 * `expectVersion`, then the whole tree checked.
 */
export const verifyReleaseDir = (
  dir: string,
  signers: ReadonlyArray<SshPublicKey>,
  expectVersion: string | undefined
): Either.Either<ReleaseManifest, ReleaseRefused> => {
  if (signers.length === 0) return Either.left(refused("NoSigners", "no release signers configured (update.release_signers)"))
  const manifest = readSmall(posix.join(dir, MANIFEST_FILE), MANIFEST_MAX_BYTES)
  if (Either.isLeft(manifest)) return Either.left(refused("Io", `${MANIFEST_FILE}: ${manifest.left}`))
  const signature = readSmall(posix.join(dir, SIGNATURE_FILE), SIGNATURE_MAX_BYTES)
  if (Either.isLeft(signature)) return Either.left(refused("Io", `${SIGNATURE_FILE}: ${signature.left}`))
  return verifySignedManifest(manifest.right, signature.right, signers).pipe(
    Either.flatMap((m) =>
      expectVersion !== undefined && m.version !== expectVersion
        ? Either.left(refused("Version", `the release is version ${m.version}, expected ${expectVersion}`))
        : Either.right(m)
    ),
    Either.flatMap((m) => Either.map(verifyTree(dir, m), () => m))
  )
}

/** A regular file (never through a link) of at most `max` bytes. */
export const readSmall = (path: string, max: number): Either.Either<Uint8Array, string> => {
  let fd: number | undefined
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
    const st = fstatSync(fd)
    if (!st.isFile()) return Either.left("not a regular file")
    if (st.size > max) return Either.left(`larger than ${max} bytes`)
    const buf = Buffer.alloc(st.size)
    let off = 0
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, null)
      if (n === 0) break
      off += n
    }
    return Either.right(buf.subarray(0, off))
  } catch (e) {
    const code = codeOf(e)
    return Either.left(code === "ENOENT" ? "missing" : code === "ELOOP" ? "is a symlink" : code)
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}
