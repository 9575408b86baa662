/** `sshsig verify`: one SSHSIG signature of stdin against one key (the program is sshsigVerify.ts). */
import { Console, Effect } from "effect"
import { CliFailure } from "./failure.js"
import { readStdin } from "./input.js"
import { sshsigVerify } from "./sshsigVerify.js"

export const sshsigVerifyCommand = (o: { readonly namespace: string; readonly key: string; readonly signature: string }) =>
  Effect.gen(function*() {
    const message = yield* readStdin
    const r = yield* sshsigVerify({ namespace: o.namespace, keyFile: o.key, signatureFile: o.signature, message })
    if (r.valid) {
      yield* Console.log(`Good "${o.namespace}" signature with ${r.keyType ?? "?"} key ${r.fingerprint ?? "?"}`)
    } else {
      return yield* new CliFailure({ code: 1, message: `Could not verify signature: ${r.reason ?? "invalid"}` })
    }
  })
