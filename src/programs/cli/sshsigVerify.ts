/**
 * sshsig verify: one SSHSIG signature of a message checked against one OpenSSH public key line,
 * like `ssh-keygen -Y check-novalidate` with the key pinned (no allow-list, no op-blob rules).
 * Never fails: unreadable files and every rejection become `{ valid: false, reason }`.
 */
import { FileSystem } from "@effect/platform"
import { Effect, Either } from "effect"
import { parsePublicKeyLine, SSH_KEY_LINE_MAX_CHARS } from "../../schema/sshkeys.js"
import { SSHSIG_MAX_ARMOR_BYTES, verifyArmored } from "../../schema/sshsig.js"

export interface SshsigVerifyInput {
  readonly namespace: string
  /** An OpenSSH .pub file: one "type base64 [comment]" line. */
  readonly keyFile: string
  /** An armored `-----BEGIN SSH SIGNATURE-----` file. */
  readonly signatureFile: string
  /** The signed bytes, exactly as received. */
  readonly message: Uint8Array
}

export interface SshsigVerifyResult {
  readonly valid: boolean
  readonly reason?: string
  readonly keyType?: string
  readonly fingerprint?: string
}

/** Reads a small file, refusing (by stat, before reading) anything over `cap` bytes. */
const readSmall = (fs: FileSystem.FileSystem, path: string, what: string, cap: number) =>
  Effect.gen(function*() {
    const info = yield* fs.stat(path)
    if (Number(info.size) > cap) return Either.left(`${what} is larger than ${cap} bytes`)
    return Either.right(yield* fs.readFile(path))
  }).pipe(Effect.catchAll((e) => Effect.succeed(Either.left(`cannot read ${what}: ${e.message}`))))

export const sshsigVerify: (
  input: SshsigVerifyInput
) => Effect.Effect<SshsigVerifyResult, never, FileSystem.FileSystem> = Effect.fn("sshsigVerify")(function*(input: SshsigVerifyInput) {
  const fs = yield* FileSystem.FileSystem
  const keyBytes = yield* readSmall(fs, input.keyFile, "key file", SSH_KEY_LINE_MAX_CHARS)
  if (Either.isLeft(keyBytes)) return { valid: false, reason: keyBytes.left } satisfies SshsigVerifyResult
  const line = yield* Effect.sync(() => parsePublicKeyLine(Buffer.from(keyBytes.right).toString("utf8")))
  if (Either.isLeft(line)) {
    return { valid: false, reason: `key file: ${line.left.kind}: ${line.left.message}` } satisfies SshsigVerifyResult
  }
  const { key } = line.right
  const known = { keyType: key.type, fingerprint: key.fingerprint }
  const sig = yield* readSmall(fs, input.signatureFile, "signature file", SSHSIG_MAX_ARMOR_BYTES)
  if (Either.isLeft(sig)) return { valid: false, reason: sig.left, ...known } satisfies SshsigVerifyResult
  const verified = yield* Effect.sync(() => verifyArmored(sig.right, input.namespace, input.message, { publicKey: key }))
  return Either.match(verified, {
    onLeft: (e): SshsigVerifyResult => ({ valid: false, reason: `${e.kind}: ${e.message}`, ...known }),
    onRight: (): SshsigVerifyResult => ({ valid: true, ...known })
  })
})
