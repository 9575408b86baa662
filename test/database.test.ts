/**
 * The state database: pragmas that make commits durable, idempotent migrations, state_dir mode,
 * and the state epoch (written once at creation, on the Clock).
 */
import { Migrator, SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schema, TestClock } from "effect"
import { mkdtempSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerFrom } from "../src/layers/Config.js"
import { DatabaseLive, layerAt, migrations, readStateEpoch, STATE_EPOCH_KEY } from "../src/layers/Database.js"
import { AgentConfigFile } from "../src/schema/config.js"

const pragma = (name: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<Record<string, unknown>>(`PRAGMA ${name}`)).pipe(
    Effect.map((rows) => Object.values(rows[0] ?? {})[0])
  )

describe("state database", () => {
  it.effect("WAL journal and synchronous=FULL on the real file", () =>
    Effect.gen(function*() {
      expect(yield* pragma("journal_mode")).toBe("wal")
      expect(yield* pragma("synchronous")).toBe(2) // FULL
    }).pipe(Effect.provide(layerAt(join(mkdtempSync(join(tmpdir(), "felhom-db-")), "state.db")))))

  it.effect("migrations run once: reopening the same file keeps the data and the schema", () =>
    Effect.gen(function*() {
      const path = join(mkdtempSync(join(tmpdir(), "felhom-db-")), "state.db")
      yield* Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql`INSERT INTO nonces VALUES (${"n1"}, ${"SHA256:x"}, ${"op"}, ${1}, ${0})`).pipe(Effect.provide(layerAt(path)))
      const rows = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT nonce FROM nonces`).pipe(Effect.provide(layerAt(path)))
      expect(rows).toEqual([{ nonce: "n1" }])
      const applied = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT migration_id FROM felhom_migrations ORDER BY migration_id`).pipe(
        Effect.provide(layerAt(path))
      )
      // each migration in the record exactly once, however many later ones are added
      expect(applied).toEqual(Object.keys(migrations).map((k) => ({ migration_id: Number(k.split("_")[0]) })))
    }))

  it.effect("DatabaseLive creates state_dir 0700 and state.db inside it", () =>
    Effect.gen(function*() {
      const stateDir = join(mkdtempSync(join(tmpdir(), "felhom-db-")), "var", "felhom")
      const file = Schema.decodeUnknownSync(AgentConfigFile)({ state_dir: stateDir })
      yield* pragma("journal_mode").pipe(
        Effect.provide(DatabaseLive.pipe(Layer.provide(Layer.merge(layerFrom(file), NodeFileSystem.layer))))
      )
      expect(statSync(stateDir).mode & 0o777).toBe(0o700)
      expect(statSync(join(stateDir, "state.db")).isFile()).toBe(true)
    }))

  it.effect("an unusable path is a DatabaseError naming it", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(pragma("journal_mode").pipe(Effect.provide(layerAt("/proc/felhom-cannot-exist/state.db"))))
      expect(e._tag).toBe("DatabaseError")
      expect(e.message).toContain("/proc/felhom-cannot-exist/state.db")
    }))
})

describe("state epoch", () => {
  const freshFile = () => join(mkdtempSync(join(tmpdir(), "felhom-db-")), "state.db")
  const T = Date.parse("2026-03-01T10:00:00Z")

  it.effect("a new database records its creation time on the Clock, and reopening later keeps it", () =>
    Effect.gen(function*() {
      const path = freshFile()
      yield* TestClock.setTime(T)
      expect(yield* readStateEpoch.pipe(Effect.provide(layerAt(path)))).toBe(T)
      yield* TestClock.adjust("2 days")
      expect(yield* readStateEpoch.pipe(Effect.provide(layerAt(path)))).toBe(T)
      // a re-created file is a new epoch
      const other = freshFile()
      expect(yield* readStateEpoch.pipe(Effect.provide(layerAt(other)))).toBe(T + 2 * 86_400_000)
    }))

  it.effect("the epoch row is write-once: UPDATE and DELETE are refused", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T)
      const path = freshFile()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const update = yield* Effect.flip(sql`UPDATE meta SET value = ${T + 1} WHERE key = ${STATE_EPOCH_KEY}`)
        expect(String(update.cause)).toContain("write-once")
        yield* Effect.flip(sql`DELETE FROM meta`)
        yield* Effect.flip(sql`INSERT INTO meta (key, value) VALUES (${STATE_EPOCH_KEY}, ${0})`)
        expect(yield* readStateEpoch).toBe(T)
      }).pipe(Effect.provide(layerAt(path)))
    }))

  it.effect("a database from before the epoch migration gets the upgrade time (later than its creation: conservative)", () =>
    Effect.gen(function*() {
      const path = freshFile()
      yield* TestClock.setTime(T)
      // the file as an older agent left it: 0001 and 0002 only, with a nonce in it
      const older = Object.fromEntries(Object.entries(migrations).filter(([k]) => k < "0003"))
      yield* Effect.gen(function*() {
        yield* Migrator.make({})({ loader: Migrator.fromRecord(older), table: "felhom_migrations" })
        const sql = yield* SqlClient.SqlClient
        yield* sql`INSERT INTO nonces VALUES (${"n1"}, ${"SHA256:x"}, ${"op"}, ${1}, ${0})`
      }).pipe(Effect.provide(SqliteClient.layer({ filename: path })))
      yield* TestClock.adjust("30 days")
      const [epoch, nonces] = yield* Effect.all([
        readStateEpoch,
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ nonce: string }>`SELECT nonce FROM nonces`)
      ]).pipe(Effect.provide(layerAt(path)))
      expect(epoch).toBe(T + 30 * 86_400_000)
      expect(nonces).toEqual([{ nonce: "n1" }])
    }))

  it.effect("a database without an epoch row is a DatabaseError, never a guess", () =>
    Effect.gen(function*() {
      const path = freshFile()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`DROP TRIGGER meta_no_delete`
        yield* sql`DELETE FROM meta`
      }).pipe(Effect.provide(layerAt(path)))
      const e = yield* Effect.flip(readStateEpoch.pipe(Effect.provide(layerAt(path))))
      expect(e._tag).toBe("DatabaseError")
      expect(e.message).toContain(STATE_EPOCH_KEY)
    }))
})
