/**
 * The signed storage jobs (issue 10): `storage-detach` and `storage-decommission`, params exactly
 * `{ storage }`, host-level (guest_id null). Both are destructive in the gate (a target that may
 * hold data, whatever the manifest says), so they run only with an operator signature bound to
 * exactly that target.
 *
 * What runs, as one journaled op (`storage-removal`, admitted with the signature's nonce): a USB
 * target's mount unit is disabled and removed through Privileged (an unmount; a busy filesystem
 * fails it and changes nothing), then the target is recorded detached (it may be attached again,
 * class unchanged) or decommissioned (retired; its id may later be attached as a new target).
 * Nothing is ever deleted: no archive, no volume, not the PVE storage entry (PVE shows it
 * inactive; the operator removes it with `pvesm remove` if the data is no longer wanted).
 *
 * The executor is a service (StorageRemover) the daemon provides: jobs.ts finds it with
 * `Effect.serviceOption`, so a process without Privileged refuses these jobs before admission
 * (their nonce unspent) instead of requiring Privileged everywhere.
 */
import { Context, Data, Effect, Layer, Option } from "effect"
import type { JournalError } from "../../layers/Journal.js"
import { Privileged } from "../../layers/Privileged.js"
import { type RecordState, StorageTargetStore, type TargetRecord } from "../../layers/StorageTargetStore.js"
import type { StorageId } from "../../schema/ids.js"
import type { SignedAuthorization } from "../../schema/operations.js"
import type { Grant } from "../control/gate.js"
import { admissionOf, BadJob, runOperation } from "../control/steps.js"
import type { RemovalMode } from "./storage.js"

export class StorageRemovalFailed extends Data.TaggedError("StorageRemovalFailed")<{ readonly message: string }> {}

export interface StorageRemoverShape {
  readonly target: (storage: string) => Effect.Effect<Option.Option<TargetRecord>, JournalError>
  /** Unmounts a USB target (idempotent: no unit, nothing to do); never deletes anything. */
  readonly unmount: (storage: string) => Effect.Effect<void, StorageRemovalFailed>
  readonly record: (storage: string, state: RecordState) => Effect.Effect<void, JournalError>
}

export class StorageRemover extends Context.Tag("felhom/StorageRemover")<StorageRemover, StorageRemoverShape>() {}

export const StorageRemoverLive: Layer.Layer<StorageRemover, never, Privileged | StorageTargetStore> = Layer.effect(
  StorageRemover,
  Effect.gen(function*() {
    const priv = yield* Privileged
    const store = yield* StorageTargetStore
    return {
      target: (storage) => Effect.map(store.records, (rs) => Option.fromNullable(rs.find((r) => r.id === storage))),
      unmount: (storage) =>
        priv.unmountUsb(storage).pipe(
          Effect.asVoid,
          Effect.mapError((e) => new StorageRemovalFailed({ message: `unmounting ${storage} failed, nothing changed: ${e.message}` }))
        ),
      record: (storage, state) => store.setState(storage, state)
    } satisfies StorageRemoverShape
  })
)

/** Runs an approved storage-detach / storage-decommission of `storage` (see the module comment). */
export const runStorageRemoval = (
  mode: RemovalMode,
  storage: StorageId,
  grant: Grant,
  authorization: SignedAuthorization,
  key: string | null
) =>
  Effect.flatMap(Effect.serviceOption(StorageRemover), (svc) =>
    Effect.gen(function*() {
      if (Option.isNone(svc)) {
        return yield* new BadJob({ message: `${mode === "detach" ? "storage-detach" : "storage-decommission"} needs the storage service, which this process does not run` })
      }
      const remover = svc.value
      const rec = yield* remover.target(storage)
      if (Option.isNone(rec) || rec.value.state === "decommissioned") {
        return yield* new BadJob({ message: `'${storage}' is not a storage target this agent has attached` })
      }
      const target = rec.value
      yield* runOperation({ _tag: "storage-removal", vmid: null, storage, mode, authorization }, (s) =>
        Effect.gen(function*() {
          yield* s.started("unmount")
          if (target.type === "usb" && target.state === "attached") yield* remover.unmount(storage)
          yield* s.done("unmount")
          yield* s.started("record")
          yield* remover.record(storage, mode === "detach" ? "detached" : "decommissioned")
          yield* s.done("record")
        }), admissionOf(grant, key))
    }))
