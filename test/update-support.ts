/**
 * Fixtures for the self-update tests: a small release tree, release keys made and used with the
 * real ssh-keygen (`-Y sign -n felhom-release-v1`, exactly what an operator runs), and the
 * manifest written by the agent's own builder.
 */
import { Either } from "effect"
import { execFileSync } from "node:child_process"
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { buildManifest, encodeManifest, parseReleaseSigners } from "../src/programs/update/manifest.js"
import { MANIFEST_FILE, RELEASE_NAMESPACE, type ReleaseManifest, SIGNATURE_FILE } from "../src/schema/release.js"
import type { SshPublicKey } from "../src/schema/sshsig.js"

export const scratch = (label: string) => mkdtempSync(join(tmpdir(), `felhom-${label}-`))

export interface ReleaseKey {
  readonly file: string
  readonly line: string
  readonly key: SshPublicKey
}

export const makeReleaseKey = (comment = "release@felhom"): ReleaseKey => {
  const dir = scratch("relkey")
  const file = join(dir, "id_ed25519")
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file])
  const line = readFileSync(`${file}.pub`, "utf8").trim()
  const parsed = parseReleaseSigners([line])
  if (Either.isLeft(parsed)) throw new Error(parsed.left.message)
  return { file, line, key: parsed.right[0]! }
}

/** `ssh-keygen -Y sign -n <namespace> -f <key> <file>`: writes `<file>.sig`, returns its bytes. */
export const sshSign = (key: ReleaseKey, file: string, namespace = RELEASE_NAMESPACE): Buffer => {
  execFileSync("ssh-keygen", ["-q", "-Y", "sign", "-n", namespace, "-f", key.file, file], { stdio: ["ignore", "ignore", "pipe"] })
  return readFileSync(`${file}.sig`)
}

/** A release tree of four files (the three required ones and a native addon). */
export const makeTree = (dir: string, version: string): void => {
  mkdirSync(join(dir, "bin"), { recursive: true })
  mkdirSync(join(dir, "lib", "node_modules", "better-sqlite3", "build"), { recursive: true })
  writeFileSync(join(dir, "bin", "node"), Buffer.concat([Buffer.from("\x7fELF fake node "), Buffer.alloc(70_000, 7)]))
  chmodSync(join(dir, "bin", "node"), 0o755)
  writeFileSync(join(dir, "bin", "felhom-agent"), `#!/bin/sh\nexec "$(dirname "$0")/node" "$(dirname "$0")/../lib/felhom-agent.cjs" "$@"\n`)
  chmodSync(join(dir, "bin", "felhom-agent"), 0o755)
  writeFileSync(join(dir, "lib", "felhom-agent.cjs"), `// felhom-agent ${version}\nconsole.log("${version}")\n`)
  chmodSync(join(dir, "lib", "felhom-agent.cjs"), 0o644)
  writeFileSync(join(dir, "lib", "node_modules", "better-sqlite3", "build", "better_sqlite3.node"), Buffer.alloc(5000, 3))
  chmodSync(join(dir, "lib", "node_modules", "better-sqlite3", "build", "better_sqlite3.node"), 0o644)
}

/** A signed release in a fresh directory: the tree, RELEASE.json (our builder), RELEASE.json.sig (ssh-keygen). */
export const makeRelease = (key: ReleaseKey, version: string): { readonly dir: string; readonly manifest: ReleaseManifest; readonly bytes: Buffer } => {
  const dir = scratch("release")
  makeTree(dir, version)
  const m = buildManifest(dir, version, "20.20.2", new Date("2026-11-30T12:00:00Z"))
  if (Either.isLeft(m)) throw new Error(m.left.message)
  writeFileSync(join(dir, MANIFEST_FILE), encodeManifest(m.right))
  sshSign(key, join(dir, MANIFEST_FILE))
  return { dir, manifest: m.right, bytes: readFileSync(join(dir, MANIFEST_FILE)) }
}

export const sigOf = (dir: string) => readFileSync(join(dir, SIGNATURE_FILE))
