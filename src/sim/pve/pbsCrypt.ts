/**
 * PBS client-side encryption as the simulated host sees it (issue 13): what
 * `proxmox-backup-client` makes of a storage's key (PVE's private store, `priv/storage/<id>.enc`),
 * and why it refuses to read an encrypted snapshot.
 *
 * - A snapshot written through a storage with a key carries that key's real fingerprint (PBS's
 *   manifest `key-fingerprint`, listed by PVE as `encrypted`).
 * - The storage config's `encryption-key` is what PVE's on_add/on_update hooks write: the key
 *   file's `fingerprint` field, or `1` when the file has none (PBSPlugin.pm).
 * - The client loads the key from the fd PVE hands it: a plain key's fingerprint is computed from
 *   its bytes and must equal a stored one (pbs-key-config KeyConfig::decrypt); a passphrase-wrapped
 *   key cannot be opened without a TTY or PBS_ENCRYPTION_PASSWORD, which PVE never sets.
 * - Reading an encrypted snapshot (restore, extractconfig) checks the manifest's key against the
 *   client's (pbs-datastore manifest.rs: `from_data`, then `check_fingerprint`). Fingerprints in
 *   these texts are PBS's `Display` form: the first 8 bytes.
 *
 * A seeded storage (the key itself is never seeded) holds a key whose fingerprint is its
 * `encryption-key` value.
 */
import { pbsFingerprint } from "../../programs/escrow/keyFile.js"
import type { StorageState } from "./state.js"

/** What the client holds for a storage: no key, a usable key, or a key it cannot load. */
export type ClientKey =
  | { readonly _tag: "none" }
  | { readonly _tag: "key"; readonly fingerprint: string }
  | { readonly _tag: "broken"; readonly error: string }

/** PBS's short key id (Fingerprint's Display): the first 8 bytes. Anything else is shown as is. */
export const shortKeyId = (fp: string): string => {
  const parts = fp.toLowerCase().split(":")
  return parts.length === 32 ? parts.slice(0, 8).join(":") : fp
}

const sameKey = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase()

/** The key file as the hooks read it (decode_json, must have `data`); undefined when PVE refuses it. */
export const parseKeyFileJson = (text: string): Record<string, unknown> | undefined => {
  let decoded: unknown
  try {
    decoded = JSON.parse(text)
  } catch {
    return undefined
  }
  return typeof decoded === "object" && decoded !== null && !Array.isArray(decoded) && "data" in decoded
    ? (decoded as Record<string, unknown>)
    : undefined
}

/** What on_add_hook / on_update_hook write into storage.cfg: `fingerprint || 1`. */
export const configFingerprintOf = (key: Record<string, unknown>): string => {
  const fp = key["fingerprint"]
  return typeof fp === "string" && fp.length > 0 ? fp : "1"
}

/** How the client loads a key file's text (KeyConfig::decrypt with no password source). */
export const clientKeyOfText = (text: string): ClientKey => {
  const key = parseKeyFileJson(text)
  if (key === undefined) return { _tag: "broken", error: "unable to parse encryption key file" } // [inf]
  const stored = typeof key["fingerprint"] === "string" ? key["fingerprint"] : undefined
  if (key["kdf"] !== null && key["kdf"] !== undefined) {
    // a wrapped key needs its passphrase: PVE passes none and the task has no TTY
    return { _tag: "broken", error: "no password input mechanism available" }
  }
  const data = typeof key["data"] === "string" ? Buffer.from(key["data"], "base64") : Buffer.alloc(0)
  if (data.length !== 32) return { _tag: "broken", error: "unable to parse encryption key file" } // [inf]
  const real = pbsFingerprint(data)
  if (stored !== undefined && !sameKey(stored, real)) {
    return { _tag: "broken", error: `KeyConfig contains wrong fingerprint ${shortKeyId(stored)}, contained key has fingerprint ${shortKeyId(real)}` }
  }
  return { _tag: "key", fingerprint: real }
}

/** The key the client is handed for this storage. */
export const clientKeyOf = (st: StorageState): ClientKey => {
  if (st.type !== "pbs") return { _tag: "none" }
  const text = st.secrets?.encryptionKey
  if (text !== undefined) return clientKeyOfText(text)
  // seeded: the key is never seeded, its fingerprint stands for it
  const configured = st["encryption-key"]
  return configured === undefined ? { _tag: "none" } : { _tag: "key", fingerprint: configured.toLowerCase() }
}

/**
 * The client's crypt arguments as PVE's run_raw_client_cmd passes them (backup, restore): quoted
 * as run_command's error text prints a command, plain as the `run:` log line joins it.
 */
export const cryptArgs = (st: StorageState, quoted = true): string => {
  const args = clientKeyOf(st)._tag === "none" ? ["--crypt-mode=none"] : ["--crypt-mode=encrypt", "--keyfd=14"]
  return args.map((a) => (quoted ? `'${a}'` : a)).join(" ")
}

/**
 * Why the client cannot read snapshot `encrypted` (its manifest's key fingerprint, undefined when
 * it was not encrypted) through this storage, as the client's error text (without `Error: `).
 */
export const snapshotReadError = (st: StorageState, encrypted: string | undefined): string | undefined => {
  const key = clientKeyOf(st)
  if (key._tag === "broken") return key.error
  if (encrypted === undefined) return undefined
  if (key._tag === "none") return `missing key - manifest was created with key ${shortKeyId(encrypted)}`
  if (!sameKey(key.fingerprint, encrypted)) {
    return `wrong key - unable to verify signature since manifest's key ${shortKeyId(encrypted)} does not match provided key ${shortKeyId(key.fingerprint)}`
  }
  return undefined
}
