/**
 * `felhom-agent release` (issue 14): the two ends of a release's signature.
 *
 * - `release manifest --dir D --version V [--node X]`: writes D/RELEASE.json for the tree in D
 *   (the package build runs it through the built bundle). Sign it afterwards, on the release
 *   key's machine: `ssh-keygen -Y sign -n felhom-release-v1 -f <key> D/RELEASE.json` writes
 *   D/RELEASE.json.sig. The manifest's bytes are what is signed: never re-serialize it.
 * - `release verify --dir D [--config F] [--expect-version V]`: the root helper's check of a
 *   staged tree (run as root from `<prefix>/current/bin/felhom-agent`): the SSHSIG by one of
 *   `update.release_signers`, then every file. Exit 0 printing `verified <version>`, else exit 1
 *   with one line. Loads the config in mode "none" (no proxmox, hub or authz needed), opens no
 *   state database and no socket, writes nothing.
 */
import { Console, Effect, Either, Option } from "effect"
import { renameSync } from "node:fs"
import { posix } from "node:path"
import { loadConfig } from "../../layers/Config.js"
import { removeQuietly, syncDir, writeTemp } from "../../layers/durableFile.js"
import { MANIFEST_FILE } from "../../schema/release.js"
import { buildManifest, encodeManifest, parseReleaseSigners, verifyReleaseDir } from "../update/manifest.js"
import { CliFailure } from "./failure.js"

export interface ReleaseManifestCommand {
  readonly dir: string
  readonly version: string
  readonly node: Option.Option<string>
}

export interface ReleaseVerifyCommand {
  readonly dir: string
  readonly config: Option.Option<string>
  readonly expectVersion: Option.Option<string>
}

const failed = (message: string) => new CliFailure({ code: 1, message })

export const releaseManifest = (o: ReleaseManifestCommand) =>
  Effect.gen(function*() {
    const dir = posix.resolve(o.dir)
    const node = Option.getOrElse(o.node, () => process.versions.node)
    const manifest = yield* Either.match(buildManifest(dir, o.version, node, new Date()), {
      onLeft: (e) => Effect.fail(failed(`release manifest: ${e.message}`)),
      onRight: Effect.succeed
    })
    const target = posix.join(dir, MANIFEST_FILE)
    const tmp = yield* writeTemp(target, encodeManifest(manifest), 0o644).pipe(
      Effect.mapError(() => failed(`release manifest: cannot write ${target}`))
    )
    yield* Effect.try({ try: () => renameSync(tmp, target), catch: () => failed(`release manifest: cannot rename into ${target}`) }).pipe(
      Effect.tapError(() => removeQuietly(tmp))
    )
    yield* syncDir(dir).pipe(Effect.mapError(() => failed(`release manifest: cannot sync ${dir}`)))
    const bytes = manifest.files.reduce((n, f) => n + f.size, 0)
    yield* Console.log(`wrote ${target}: ${manifest.version}, ${manifest.files.length} files, ${bytes} bytes`)
  })

export const releaseVerify = (o: ReleaseVerifyCommand) =>
  Effect.gen(function*() {
    // every failure is exit 1 with one line: the helper only tells "verified" from "not"
    const { file } = yield* loadConfig({ path: o.config, mode: "none" }).pipe(
      Effect.mapError((e) => failed(`release verify: config: ${e.message}`))
    )
    const signers = yield* Either.match(parseReleaseSigners(file.update.release_signers), {
      onLeft: (e) => Effect.fail(failed(`release verify: ${e.message}`)),
      onRight: Effect.succeed
    })
    const m = yield* Either.match(verifyReleaseDir(posix.resolve(o.dir), signers, Option.getOrUndefined(o.expectVersion)), {
      onLeft: (e) => Effect.fail(failed(`release verify: ${e.message}`)),
      onRight: Effect.succeed
    })
    yield* Console.log(`verified ${m.version}`)
  })
