/**
 * No backup goes to a PBS storage without this host's key (issue 13). Once a host has its own PBS
 * key K installed (PbsKey.fingerprint is Some), a vzdump to a PBS storage is sent only when PVE
 * lists that storage's encryption key as exactly K's fingerprint: a storage without a key would
 * write plaintext offsite, one with another key (a hub's, a stranger's) backups the escrow cannot
 * bring back. Without the PbsKey service, or before a key is installed, nothing changes.
 *
 * Fingerprints only: the key never passes through here.
 */
import { Effect, Option } from "effect"
import { PbsKey } from "../../layers/PbsKey.js"
import { Proxmox } from "../../layers/Proxmox.js"
import type { StorageId } from "../../schema/ids.js"

/** Why a backup to `storage` must not be sent; None: it may. Reads fail safe (refused). */
export const pbsBackupRefusal = (storage: StorageId): Effect.Effect<Option.Option<string>, never, Proxmox> =>
  Effect.gen(function*() {
    const service = yield* Effect.serviceOption(PbsKey)
    if (Option.isNone(service)) return Option.none()
    const installed = yield* Effect.either(service.value.fingerprint)
    const pve = yield* Proxmox
    const listed = yield* Effect.either(pve.storageList)
    if (listed._tag === "Left") {
      // the type cannot be read either: a key installed means every PBS backup must be proven keyed
      return installed._tag === "Right" && Option.isNone(installed.right)
        ? Option.none()
        : Option.some(`storage ${storage} could not be read to check its PBS key (${listed.left._tag}); not backed up`)
    }
    const entry = listed.right.find((s) => s.storage === storage)
    if (entry === undefined || entry.type !== "pbs") return Option.none()
    if (installed._tag === "Left") return Option.some(`this host's PBS key could not be read (${installed.left.reason}); nothing is backed up to PBS storage ${storage}`)
    if (Option.isNone(installed.right)) return Option.none()
    const want = installed.right.value
    const have = entry["encryption-key"]
    if (have === undefined || have === "") return Option.some(`PBS storage ${storage} has no encryption key: nothing is backed up to it without this host's key (${want.slice(0, 23)})`)
    if (have.toLowerCase() !== want) {
      return Option.some(`PBS storage ${storage} holds another encryption key (fingerprint ${have}) than this host's (${want}): nothing is backed up to it`)
    }
    return Option.none()
  })
