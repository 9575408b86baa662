/**
 * How the simulated controller reads its bootstrap mount: `controller.json` and the token file,
 * from its own guest's bootstrap directory and nowhere else. A file name that leaves the
 * directory (a path, `..`) is refused, and files are opened without following a symlink, so a
 * hostile bootstrap tree cannot point the sim at another guest's token.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs"
import { join } from "node:path"
import { Data, Effect, Either, Redacted, Schema } from "effect"
import { BOOTSTRAP_FILES, BOOTSTRAP_GUEST_PATH, ControllerBootstrap } from "../../schema/bootstrap.js"
import { parseLocalToken } from "../../schema/localApi.js"

export class BootstrapUnreadable extends Data.TaggedError("BootstrapUnreadable")<{ readonly message: string }> {}

const MAX_FILE_BYTES = 64 * 1024

/** Reads one plain file directly inside `dir` (no symlink, at most 64 KiB). */
const readIn = (dir: string, name: string): Effect.Effect<string, BootstrapUnreadable> =>
  Effect.try({
    try: () => {
      if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
        throw new Error(`'${name}' is not a file name in the bootstrap directory`)
      }
      const fd = openSync(join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW)
      try {
        const st = fstatSync(fd)
        if (!st.isFile()) throw new Error(`${name} is not a regular file`)
        if (st.size > MAX_FILE_BYTES) throw new Error(`${name} is over 64 KiB`)
        const buf = Buffer.alloc(st.size)
        let off = 0
        while (off < st.size) {
          const n = readSync(fd, buf, off, st.size - off, off)
          if (n === 0) break
          off += n
        }
        return buf.subarray(0, off).toString("utf8")
      } finally {
        closeSync(fd)
      }
    },
    catch: (e) => new BootstrapUnreadable({ message: e instanceof Error ? e.message.replace(dir, "<bootstrap>") : String(e) })
  })

/** The guest path the config names, as a file name in the mounted directory (or null when it points elsewhere). */
export const guestFileName = (guestPath: string): string | null => {
  const prefix = `${BOOTSTRAP_GUEST_PATH}/`
  const rest = guestPath.startsWith(prefix) ? guestPath.slice(prefix.length) : guestPath
  return /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(rest) ? rest : null
}

const decodeBootstrap = Schema.decodeUnknownEither(Schema.parseJson(ControllerBootstrap))

/** controller.json, decoded. */
export const readConfig = (dir: string): Effect.Effect<ControllerBootstrap, BootstrapUnreadable> =>
  Effect.flatMap(readIn(dir, BOOTSTRAP_FILES.config), (text) =>
    Either.match(decodeBootstrap(text), {
      onLeft: () => Effect.fail(new BootstrapUnreadable({ message: `${BOOTSTRAP_FILES.config} does not decode as ${"felhom-controller-bootstrap/1"}` })),
      onRight: Effect.succeed
    }))

export interface Bootstrap {
  readonly config: ControllerBootstrap
  readonly token: Redacted.Redacted<string>
}

/** The config and its token file; a token that is not one line of the token format is unreadable (never echoed). */
export const readBootstrap = (dir: string): Effect.Effect<Bootstrap, BootstrapUnreadable> =>
  Effect.gen(function*() {
    const config = yield* readConfig(dir)
    const name = guestFileName(config.local_api.token_file)
    if (name === null) {
      return yield* new BootstrapUnreadable({ message: "local_api.token_file is not a file in the bootstrap mount" })
    }
    const raw = yield* readIn(dir, name)
    const token = raw.replace(/\r?\n$/, "")
    if (parseLocalToken(token) === null) return yield* new BootstrapUnreadable({ message: `${name} does not hold a local-API token` })
    return { config, token: Redacted.make(token) }
  })
