/**
 * StorageTargetStore (issue 10): the storage targets this agent attached, in the state database
 * (migration 0008). What is fixed at attach stays here (type, durable id, class: a manifest that
 * changes them later is refused), with where each target stands and its creds exactly as they
 * arrived, sealed to this host's key (src/programs/protection/creds.ts): nothing here is plain
 * text a reader of the database could use. Agent-internal: a hub can only cause an attach (of a
 * target it lists) through the storage pass, never write a row directly. Store failures are
 * JournalError, so the daemon treats them as an unhealthy store.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Schema } from "effect"
import type { StorageTarget, TargetClass, TargetRole, TargetType } from "../schema/storage.js"
import { JournalError } from "./Journal.js"

/** attached: in use; detached: unmounted (empty, or by a signed storage-detach); decommissioned: retired for good. */
export type RecordState = "attached" | "detached" | "decommissioned"

export interface TargetRecord {
  readonly id: string
  readonly type: TargetType
  /** The durable id as attached: a string, or the pbs `{ repo, fingerprint }` as canonical JSON. */
  readonly durableId: string
  readonly class: TargetClass
  readonly role: TargetRole
  readonly state: RecordState
  readonly attachedMs: number
  readonly changedMs: number
  /** The ciphertext the creds arrived as (sealed to this host); null for none or a `{ ref }`. */
  readonly credsSealed: string | null
}

export interface StorageTargetStoreShape {
  readonly records: Effect.Effect<ReadonlyArray<TargetRecord>, JournalError>
  /** A (re)attach: type, durable id, class and role fixed from now on; state attached. */
  readonly recordAttach: (t: StorageTarget) => Effect.Effect<void, JournalError>
  readonly setState: (id: string, state: RecordState) => Effect.Effect<void, JournalError>
  readonly setCreds: (id: string, sealed: string | null) => Effect.Effect<void, JournalError>
}

export class StorageTargetStore extends Context.Tag("felhom/StorageTargetStore")<StorageTargetStore, StorageTargetStoreShape>() {}

/** One spelling per durable id, so a comparison never differs by key order. */
export const durableIdText = (t: Pick<StorageTarget, "durable_id">): string =>
  typeof t.durable_id === "string" ? t.durable_id : JSON.stringify({ repo: t.durable_id.repo, fingerprint: t.durable_id.fingerprint ?? null })

const Row = Schema.Struct({
  id: Schema.String,
  type: Schema.Literal("local-dir", "usb", "nfs", "cifs", "pbs"),
  durable_id: Schema.String,
  class: Schema.Literal("fast", "slow"),
  role: Schema.Literal("primary", "vzdump-target", "pbs-offsite", "bulk-data"),
  state: Schema.Literal("attached", "detached", "decommissioned"),
  attached_ms: Schema.Int,
  changed_ms: Schema.Int,
  creds_sealed: Schema.NullOr(Schema.String)
})

const storeError = (what: string) => (e: unknown) =>
  new JournalError({
    message: `storage target store: ${what}: ${typeof e === "object" && e !== null && "message" in e && typeof e.message === "string" ? e.message : String(e)}`
  })

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const records: StorageTargetStoreShape["records"] = sql`SELECT id, type, durable_id, class, role, state, attached_ms, changed_ms, creds_sealed
    FROM storage_targets ORDER BY id`.pipe(
    Effect.flatMap(Schema.decodeUnknown(Schema.Array(Row))),
    Effect.map((rows) =>
      rows.map((r): TargetRecord => ({
        id: r.id,
        type: r.type,
        durableId: r.durable_id,
        class: r.class,
        role: r.role,
        state: r.state,
        attachedMs: r.attached_ms,
        changedMs: r.changed_ms,
        credsSealed: r.creds_sealed
      }))
    ),
    Effect.mapError(storeError("reading targets"))
  )

  const recordAttach: StorageTargetStoreShape["recordAttach"] = (t) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      // a new attach forgets the old creds: they were sealed for what was there before
      yield* sql`INSERT INTO storage_targets (id, type, durable_id, class, role, state, attached_ms, changed_ms, creds_sealed)
        VALUES (${t.id}, ${t.type}, ${durableIdText(t)}, ${t.class}, ${t.role}, 'attached', ${now}, ${now}, NULL)
        ON CONFLICT (id) DO UPDATE SET type = excluded.type, durable_id = excluded.durable_id, class = excluded.class,
          role = excluded.role, state = 'attached', attached_ms = excluded.attached_ms, changed_ms = excluded.changed_ms,
          creds_sealed = NULL`
    }).pipe(Effect.mapError(storeError("recording an attach")))

  const setState: StorageTargetStoreShape["setState"] = (id, state) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      yield* sql`UPDATE storage_targets SET state = ${state}, changed_ms = ${now} WHERE id = ${id}`
    }).pipe(Effect.mapError(storeError("recording a target's state")))

  const setCreds: StorageTargetStoreShape["setCreds"] = (id, sealed) =>
    sql`UPDATE storage_targets SET creds_sealed = ${sealed} WHERE id = ${id}`.pipe(
      Effect.asVoid,
      Effect.mapError(storeError("recording sealed creds"))
    )

  return { records, recordAttach, setState, setCreds } satisfies StorageTargetStoreShape
})

export const StorageTargetStoreLive: Layer.Layer<StorageTargetStore, never, SqlClient.SqlClient> = Layer.effect(StorageTargetStore, make)
