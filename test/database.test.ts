/** The state database: pragmas that make commits durable, idempotent migrations, state_dir mode. */
import { SqlClient } from "@effect/sql"
import { NodeFileSystem } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import { mkdtempSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layerFrom } from "../src/layers/Config.js"
import { DatabaseLive, layerAt, migrations } from "../src/layers/Database.js"
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
