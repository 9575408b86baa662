/**
 * PbsKey: the live PBS encryption key K on this host (issue 13, SPEC §13). K is a plain PBS key
 * file (`kdf: null`), root-owned 0600 at `escrow.key_file`; its fingerprint (public) beside it.
 *
 * Who may do what:
 * - `fingerprint` reads only the public sidecar: the daemon uses it to check that a PVE storage
 *   entry holds this key (PVE lists only fingerprints).
 * - `install` and `read` need root (enrollment and code rotation are run as root): in sudo mode
 *   they fail with NotRoot rather than widen the sudoers allowlist, so the service user can never
 *   read K.
 * - `attachToStorage` hands K to PVE through the root helper (`felhom-pbskey attach <storage>`,
 *   which runs `pvesm set <storage> --encryption-key <key_file>`): K goes from a root file to
 *   PVE's root-only store without passing through the service user.
 *
 * Errors never carry key material, only paths, storage ids and fingerprints.
 */
import { Context, Data, type Effect, type Option, type Redacted } from "effect"
import type { KeyFingerprint } from "../schema/escrow.js"
import type { StorageId } from "../schema/ids.js"

export class PbsKeyError extends Data.TaggedError("PbsKeyError")<{
  /**
   * - Missing: no key installed (no key file / no sidecar).
   * - Exists: install of a key with another fingerprint over the installed one (refused: K is never replaced).
   * - Unreadable: the file is not a plain PBS key file, or its fingerprint does not match the sidecar.
   * - Untrusted: the file or a directory above it is not root-owned, or the file is readable by others.
   * - NotRoot: the call needs root and this process is not (sudo mode).
   * - Io: a write, rename or fsync failed.
   * - Attach: the root helper failed to attach the key to a PVE storage.
   */
  readonly reason: "Missing" | "Exists" | "Unreadable" | "Untrusted" | "NotRoot" | "Io" | "Attach"
  readonly message: string
}> {}

export interface PbsKeyShape {
  /** The installed key's fingerprint from the public sidecar; None when no key is installed. */
  readonly fingerprint: Effect.Effect<Option.Option<KeyFingerprint>, PbsKeyError>
  /**
   * Installs K (a plain PBS key file's JSON text) atomically, 0600 root, and its sidecar.
   * Idempotent for the same key; a different key over an installed one fails with Exists.
   */
  readonly install: (keyFile: Redacted.Redacted<string>) => Effect.Effect<{ readonly fingerprint: KeyFingerprint }, PbsKeyError>
  /** K's file text, checked against its sidecar (root only). */
  readonly read: Effect.Effect<Redacted.Redacted<string>, PbsKeyError>
  /** Attaches K to the PVE storage entry `storage` (a pbs storage) through the root helper. */
  readonly attachToStorage: (storage: StorageId) => Effect.Effect<void, PbsKeyError>
}

export class PbsKey extends Context.Tag("felhom/PbsKey")<PbsKey, PbsKeyShape>() {}
