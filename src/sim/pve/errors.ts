/**
 * Errors of the PVE simulator. `PveApiError` is what a handler fails with; the router turns it into
 * PVE's wire shape (status, reason phrase = first line, `{"data":null,...}`). The others are the
 * simulator's own typed failures (bad seed, refused bind, server start).
 */
import { Data } from "effect"

/** An API error exactly as PVE would raise it: `message` keeps PVE's trailing newline. */
export class PveApiError extends Data.TaggedError("PveApiError")<{
  readonly status: number
  readonly message: string
  readonly errors?: Readonly<Record<string, string>> | undefined
}> {}

const withNewline = (text: string): string => (text.endsWith("\n") ? text : `${text}\n`)

/** A plain `die "..."` in a handler: HTTP 500 with the text. */
export const die500 = (text: string): PveApiError => new PveApiError({ status: 500, message: withNewline(text) })

/** `raise_param_exc`: 400 with a per-parameter error map. */
export const paramError = (errors: Readonly<Record<string, string>>): PveApiError =>
  new PveApiError({ status: 400, message: "Parameter verification failed.\n", errors })

/** `raise_perm_exc("$path, $privs")` from `check`/`check_any`: privileges of an any-of check joined with `|`. */
export const permDenied = (path: string, privs: ReadonlyArray<string>): PveApiError =>
  new PveApiError({ status: 403, message: `Permission check failed (${path}, ${privs.join("|")})\n` })

/** `raise_perm_exc($text)` with free text, or bare when no single privilege applies. */
export const permDeniedText = (text?: string): PveApiError =>
  new PveApiError({
    status: 403,
    message: text === undefined ? "Permission check failed\n" : `Permission check failed (${text})\n`
  })

/** What PVE says when a CT's config file is absent (there is no 404 in PVE). */
export const noSuchGuest = (node: string, vmid: number | string): PveApiError =>
  die500(`Configuration file 'nodes/${node}/lxc/${vmid}.conf' does not exist`)

/** The seed file (or seed value) is unusable. `path` is the JSON path at fault when known. */
export class SimPveSeedError extends Data.TaggedError("SimPveSeedError")<{
  readonly source: string
  readonly message: string
}> {}

/** serveSimPve only binds loopback: the simulator's key is public and its token fixed. */
export class SimPveBindRefused extends Data.TaggedError("SimPveBindRefused")<{
  readonly host: string
  readonly message: string
}> {}

/** The HTTPS listener could not be started (port in use, ...). */
export class SimPveServeError extends Data.TaggedError("SimPveServeError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** A task body failing: `message` becomes `TASK ERROR: <message>` and the exitstatus. */
export class TaskFailure extends Data.TaggedError("TaskFailure")<{
  readonly message: string
}> {}
