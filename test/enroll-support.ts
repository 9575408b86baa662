/**
 * Fixtures for the enroll and rotate-recovery-code tests: a scratch host (fake pveum, systemctl,
 * visudo, a PVE certificate under the prefix), the dev hub served over loopback HTTPS, the
 * services enroll runs on, and a scripted person at the box who reads the recovery code off the
 * screen and types it back (or something else).
 */
import { createRequire } from "node:module"
import { Effect, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { EnrollIO } from "../src/programs/enroll/ports.js"
import { enrollServices } from "../src/programs/enroll/services.js"
import { makeFakeHost } from "./host-setup-support.js"

export const SIGNER_LINE =
  "role=operational,key-id=alice ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8x2yJTfRVqs/M1t+mpONmgEdR/ip4zV+OnmjrKcO/c alice@ops-laptop"

export const TOKEN_SECRET = "11111111-2222-4333-8444-555555555555"

/** A scratch PVE host for enrollment. */
export const makeEnrollHost = (signers: ReadonlyArray<string> = [SIGNER_LINE]) => {
  const h = makeFakeHost({ state: { nextSecret: TOKEN_SECRET } })
  const pveLocal = join(h.prefix, "etc", "pve", "local")
  mkdirSync(pveLocal, { recursive: true })
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=pve", "-days", "2",
    "-keyout", join(h.base, "pve-ssl.key"), "-out", join(pveLocal, "pve-ssl.pem")], { stdio: "ignore" })
  const stateDir = join(h.base, "state")
  const keyFile = join(h.prefix, "etc", "felhom-agent", "pbs", "encryption-key.json")
  const baseConfig = {
    state_dir: stateDir,
    escrow: { key_file: keyFile },
    authz: { signers: [...signers] },
    proxmox: { url: "https://127.0.0.1:8006", node: "pve" }
  }
  return { ...h, stateDir, keyFile, baseConfig }
}
export type EnrollHost = ReturnType<typeof makeEnrollHost>

export const services = (h: EnrollHost, hub: { readonly url: string; readonly caFile: string }) =>
  enrollServices({ setup: h.options(), keyFile: h.keyFile, stateDir: h.stateDir, hub: { url: hub.url, ca_file: hub.caFile } })

/** The words of the last recovery code shown (formatForPaper's numbered words). */
export const wordsShown = (shown: ReadonlyArray<string>): string | undefined => {
  for (let i = shown.length - 1; i >= 0; i--) {
    const words = [...shown[i]!.matchAll(/\b\d{1,2}\. ([a-z]+)/g)].map((m) => m[1]!)
    if (words.length === 12) return words.join(" ")
  }
  return undefined
}

export type Responder = (prompt: string, lastCode: string | undefined) => string | undefined

/** Types back exactly what was shown. */
export const typeBack: Responder = (_p, code) => code

/** A person at the box: everything said and shown is kept; answers come from `respond`. */
export const makePerson = (respond: Responder) => {
  const said: Array<string> = []
  const shown: Array<string> = []
  const prompts: Array<string> = []
  const layer = Layer.succeed(EnrollIO, {
    say: (t) => Effect.sync(() => void said.push(t)),
    showSecret: (t) => Effect.sync(() => void shown.push(t)),
    forgetSecret: Effect.void,
    secretLine: (p) =>
      Effect.sync(() => {
        prompts.push(p)
        return Option.fromNullable(respond(p, wordsShown(shown)))
      })
  })
  return { said, shown, prompts, layer, code: () => wordsShown(shown) }
}

/** Collects every log line at every level (the sweep looks for secrets there too). */
export const makeLogSink = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ message }) => void lines.push(typeof message === "string" ? message : JSON.stringify(message)))
  return { lines, provide: <A, E, R>(e: Effect.Effect<A, E, R>) => e.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)), Logger.withMinimumLogLevel(LogLevel.All)) }
}

/** Every row of every table of the state database, as text. */
export const dumpStateDb = (stateDir: string): string => {
  const file = join(stateDir, "state.db")
  if (!existsSync(file)) return ""
  const Database = createRequire(import.meta.url)("better-sqlite3") as new(p: string, o: { readonly: boolean }) => {
    prepare: (q: string) => { all: () => Array<unknown> }
    close: () => void
  }
  const db = new Database(file, { readonly: true })
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>
    return tables.map((t) => JSON.stringify(db.prepare(`SELECT * FROM "${t.name}"`).all())).join("\n")
  } finally {
    db.close()
  }
}

/** Every file under `dir` except those named, as text. */
export const dumpFiles = (dir: string, except: (path: string) => boolean): string => {
  const out: Array<string> = []
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.isFile() && !except(p)) out.push(`${p}:\n${readFileSync(p, "latin1")}`)
    }
  }
  if (existsSync(dir)) walk(dir)
  return out.join("\n")
}

/** K's raw bytes in the encodings a leak would take. */
export const keyEncodings = (keyFile: string): ReadonlyArray<string> => {
  const data = (JSON.parse(readFileSync(keyFile, "utf8")) as { data: string }).data
  const raw = Buffer.from(data, "base64")
  return [data, raw.toString("hex"), raw.toString("base64url")]
}

export const writeCa = (dir: string, pem: string) => {
  const p = join(dir, "hub-ca.pem")
  writeFileSync(p, pem)
  return p
}

export const redacted = Redacted.make
