/**
 * Crash-safe file writes shared by the root-side layers that install files (HostSetup, PbsKey): a
 * temp file beside the target (O_EXCL, O_NOFOLLOW, its mode set after open since the umask may
 * narrow it, synced), renamed or linked into place by the caller, then the directory synced. Not a
 * service: plain fs steps, failing with the platform's UnknownException for the caller to name.
 */
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { constants } from "node:fs"
import { open, unlink } from "node:fs/promises"
import { basename, dirname } from "node:path"

/** fsync of a directory: a rename or link in it survives a power loss. */
export const syncDir = (dir: string) =>
  Effect.acquireUseRelease(
    Effect.tryPromise(() => open(dir, constants.O_RDONLY | constants.O_DIRECTORY)),
    (h) => Effect.tryPromise(() => h.sync()),
    (h) => Effect.promise(() => h.close())
  )

/** Writes a new temp file beside `target` (O_EXCL, `mode`), synced; returns its path. */
export const writeTemp = (target: string, content: string | Uint8Array, mode: number) =>
  Effect.gen(function*() {
    const tmp = `${dirname(target)}/.${basename(target)}.tmp-${randomBytes(6).toString("hex")}`
    yield* Effect.acquireUseRelease(
      Effect.tryPromise(() => open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode)),
      (h) =>
        Effect.tryPromise(async () => {
          await h.chmod(mode)
          await h.writeFile(content)
          await h.sync()
        }),
      (h) => Effect.promise(() => h.close())
    )
    return tmp
  })

/** Removes a temp file left by a failed step; a missing one is fine. */
export const removeQuietly = (path: string) => Effect.promise(() => unlink(path).catch(() => undefined))
