/**
 * Self-update releases (issue 14, SPEC §15). A release is a manifest naming every file of one
 * release tree (the layout of src/schema/install.ts: bin/, lib/) with its size, mode and SHA-256,
 * signed as SSHSIG over the manifest's exact bytes under RELEASE_NAMESPACE by a key in
 * `update.release_signers`. Files are fetched by their checksum, so the signed manifest alone
 * decides every byte that lands in a slot.
 */
import { Schema } from "effect"

/** Never the operator-op namespace: a signed op can never pass as a release, nor the reverse. */
export const RELEASE_NAMESPACE = "felhom-release-v1"
export const RELEASE_FORMAT = "felhom-release-v1"

/** The manifest and its signature as files in a release directory (and in every slot). */
export const MANIFEST_FILE = "RELEASE.json"
export const SIGNATURE_FILE = "RELEASE.json.sig"

/** 1.2.3, 1.2.3-rc.1, 1.2.3+build.5: no slashes, no dots at the ends, bounded. */
export const ReleaseVersion = Schema.String.pipe(
  Schema.pattern(/^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,64})?$/, {
    message: () => "expected a release version like 1.4.0 or 1.4.0-rc.1"
  })
)
export type ReleaseVersion = typeof ReleaseVersion.Type

export const Sha256Hex = Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/, { message: () => "expected 64 lowercase hex digits" }))

/**
 * A relative POSIX path inside the release tree: components of safe characters, no `.`/`..`,
 * no leading slash, at most 8 deep. The manifest files themselves are not listed in it.
 */
export const ReleasePath = Schema.String.pipe(
  Schema.filter((p) => {
    if (p.length === 0 || p.length > 256) return "expected a relative path of 1-256 characters"
    const parts = p.split("/")
    if (parts.length > 8) return "expected at most 8 path components"
    for (const c of parts) {
      if (c === "" || c === "." || c === "..") return "expected a relative path without empty, '.' or '..' components"
      if (!/^[A-Za-z0-9_@+][A-Za-z0-9._@+-]{0,127}$/.test(c)) return `unsafe path component '${c.slice(0, 40)}'`
    }
    if (p === MANIFEST_FILE || p === SIGNATURE_FILE) return "the manifest does not list itself"
    return true
  })
)

export const ReleaseFile = Schema.Struct({
  path: ReleasePath,
  sha256: Sha256Hex,
  size: Schema.Int.pipe(Schema.between(0, 1024 * 1024 * 1024)),
  /** Only these two: nothing setuid, nothing writable by others. */
  mode: Schema.Literal(0o644, 0o755)
})
export type ReleaseFile = typeof ReleaseFile.Type

export const ReleaseManifest = Schema.Struct({
  format: Schema.Literal(RELEASE_FORMAT),
  version: ReleaseVersion,
  /** ISO 8601 UTC; informational. */
  created_at: Schema.String,
  /** The bundled Node runtime's version (bin/node), e.g. "20.20.2". */
  node: Schema.String.pipe(Schema.pattern(/^[0-9]+\.[0-9]+\.[0-9]+$/)),
  files: Schema.Array(ReleaseFile).pipe(
    Schema.minItems(1),
    Schema.maxItems(10_000),
    Schema.filter((fs) => {
      const seen = new Set<string>()
      for (const f of fs) {
        if (seen.has(f.path)) return `duplicate path ${f.path}`
        seen.add(f.path)
      }
      // a file may not also be a directory of another entry (a/b and a/b/c)
      for (const f of fs) {
        const parts = f.path.split("/")
        for (let i = 1; i < parts.length; i++) {
          if (seen.has(parts.slice(0, i).join("/"))) return `${parts.slice(0, i).join("/")} is both a file and a directory`
        }
      }
      return true
    })
  )
})
export type ReleaseManifest = typeof ReleaseManifest.Type

/** Files every release must carry (the layout the unit and the health gate run). */
export const REQUIRED_RELEASE_FILES = ["bin/node", "bin/felhom-agent", "lib/felhom-agent.cjs"] as const

/**
 * Hub endpoints (docs/hub-protocol.md): bearer-authenticated GETs over the hub client's pinned
 * transport. The manifest and signature are returned as raw bytes (verified as received); a
 * file is addressed by its SHA-256, so the hub cannot choose what a listed path holds.
 */
export const RELEASE_PATHS = {
  manifest: (version: ReleaseVersion) => `/api/v1/releases/${version}/manifest`,
  signature: (version: ReleaseVersion) => `/api/v1/releases/${version}/signature`,
  file: (version: ReleaseVersion, sha256: string) => `/api/v1/releases/${version}/files/${sha256}`
} as const
