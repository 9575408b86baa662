/**
 * One mutator per state directory (issue 12). The daemon holds `<state_dir>/agent.lock` for its
 * whole life, and the CLI's mutating commands (provision, recover) take it for theirs, so an
 * operator's command never races the daemon's reconcile, jobs or recovery on the same guest, and
 * two operators' commands never race each other.
 *
 * The lock is an SQLite file held in exclusive locking mode with an open exclusive transaction:
 * underneath, a POSIX fcntl lock that the kernel drops when the holder exits, however it exits.
 * A daemon killed with SIGKILL therefore never leaves a stale lock behind (a pid file would, and
 * a reused pid would make it look alive). It is a separate file: closing any descriptor of
 * state.db would drop the state database's own fcntl locks.
 *
 * `agent.lock.json` beside it names the holder (pid, what, since) for the refusal message only;
 * it decides nothing.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Clock, Context, Data, Effect, Layer, type Scope } from "effect"
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { AgentConfig } from "../../layers/Config.js"

export const STATE_LOCK_FILE = "agent.lock"
export const STATE_LOCK_HOLDER_FILE = "agent.lock.json"

/** Another felhom-agent process holds the state directory (or the lock cannot be taken at all). */
export class StateLocked extends Data.TaggedError("StateLocked")<{ readonly message: string }> {}

interface Holder {
  readonly pid: number
  readonly holder: string
  readonly since: string
}

const readHolder = (dir: string): Holder | null => {
  try {
    const h = JSON.parse(readFileSync(join(dir, STATE_LOCK_HOLDER_FILE), "utf8")) as Partial<Holder>
    return typeof h.pid === "number" && typeof h.holder === "string" && typeof h.since === "string"
      ? { pid: h.pid, holder: h.holder.slice(0, 80), since: h.since.slice(0, 40) }
      : null
  } catch {
    return null
  }
}

const busy = (e: unknown): boolean => {
  const cause = typeof e === "object" && e !== null && "cause" in e ? (e as { cause: unknown }).cause : e
  const code = typeof cause === "object" && cause !== null && "code" in cause ? String((cause as { code: unknown }).code) : ""
  return code === "SQLITE_BUSY" || code === "SQLITE_LOCKED"
}

const describe = (e: unknown): string => {
  const cause = typeof e === "object" && e !== null && "cause" in e ? (e as { cause: unknown }).cause : e
  return cause instanceof Error ? cause.message : String(cause)
}

/**
 * Holds the state lock in `dir` until the scope closes, or fails at once (no waiting) naming the
 * holder. `holder` says who takes it ("daemon", "provision 110", ...).
 */
export const holdStateLockIn = (dir: string, holder: string): Effect.Effect<void, StateLocked, Scope.Scope> =>
  Effect.gen(function*() {
    const path = join(dir, STATE_LOCK_FILE)
    const cannot = (e: unknown) => new StateLocked({ message: `cannot take the state lock ${path}: ${describe(e)}` })
    yield* Effect.try({ try: () => mkdirSync(dir, { recursive: true, mode: 0o700 }), catch: cannot })
    const context = yield* Layer.build(SqliteClient.layer({ filename: path, disableWAL: true })).pipe(Effect.mapError(cannot))
    const sql = Context.get(context, SqlClient.SqlClient)
    const refused = () => {
      const h = readHolder(dir)
      const who = h === null ? "another felhom-agent process" : `${h.holder} (pid ${h.pid}, since ${h.since})`
      return new StateLocked({
        message: h?.holder === "daemon"
          ? `the daemon is running: ${who} holds ${path}; stop it first (systemctl stop felhom-agent), or let it do this`
          : `${who} holds ${path}; wait for it to finish`
      })
    }
    // no busy wait: a holder answers at once
    yield* sql.unsafe("PRAGMA busy_timeout = 0").pipe(Effect.mapError(cannot))
    yield* sql.unsafe("PRAGMA locking_mode = EXCLUSIVE").pipe(Effect.mapError(cannot))
    yield* sql.unsafe("BEGIN EXCLUSIVE").pipe(Effect.mapError((e) => (busy(e) ? refused() : cannot(e))))
    // a write inside the transaction: the exclusive lock is taken on the file now, not lazily
    yield* sql.unsafe("CREATE TABLE IF NOT EXISTS held (at INTEGER)").pipe(Effect.mapError((e) => (busy(e) ? refused() : cannot(e))))
    const now = yield* Clock.currentTimeMillis
    const info: Holder = { pid: process.pid, holder, since: new Date(now).toISOString() }
    yield* Effect.try({
      try: () => {
        const tmp = join(dir, `${STATE_LOCK_HOLDER_FILE}.${process.pid}.tmp`)
        writeFileSync(tmp, `${JSON.stringify(info)}\n`, { mode: 0o600 })
        renameSync(tmp, join(dir, STATE_LOCK_HOLDER_FILE))
      },
      catch: cannot
    })
  })

/** The state lock in the configured state_dir. */
export const holdStateLock = (holder: string): Effect.Effect<void, StateLocked, AgentConfig | Scope.Scope> =>
  Effect.flatMap(AgentConfig, ({ file }) => holdStateLockIn(file.state_dir, holder))
