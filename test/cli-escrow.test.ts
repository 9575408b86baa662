/**
 * `felhom-agent escrow inspect` through the shipped bin: plain and wrapped files, the code or a
 * passphrase on stdin (forgiving spelling), --json, and one-line refusals in PBS's wording for a
 * wrong code, a tampered file and a fingerprint mismatch. No output ever holds key bytes or the code.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Redacted } from "effect"
import { pbsFingerprint, plainKeyFile, wrapKey } from "../src/programs/escrow/keyFile.js"
import { bin, type RunResult } from "./bin-support.js"

const dir = mkdtempSync(join(tmpdir(), "felhom-escrow-"))
const KEY = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff)
const FP = pbsFingerprint(KEY)
const CODE = "legal winner thank year wave sausage worth useful legal winner thank yellow"
const PASSPHRASE = "a raw PBS passphrase"
const NOW = Date.UTC(2026, 10, 30, 8, 0, 0)
const file = (name: string) => join(dir, name)

const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("FELHOM_AGENT_"))) as NodeJS.ProcessEnv
const running = new Set<ChildProcess>()
/** The bin with `stdin` piped in, asynchronously (a long spawnSync stalls vitest's worker RPC). */
const inspect = (args: ReadonlyArray<string>, stdin = "") =>
  new Promise<RunResult>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, "escrow", "inspect", ...args], { env, stdio: ["pipe", "pipe", "pipe"], timeout: 60_000 })
    running.add(child)
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c))
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c))
    child.on("error", reject)
    child.on("close", (status) => {
      running.delete(child)
      outputs.push(stdout, stderr)
      resolve({ status, stdout, stderr })
    })
    child.stdin.end(stdin)
  })
const outputs: Array<string> = []

/** A refusal: non-zero, nothing on stdout, exactly one line on stderr. */
const refused = (r: RunResult, status = 1) => {
  expect(r.status, r.stderr).toBe(status)
  expect(r.stdout).toBe("")
  expect(r.stderr.endsWith("\n")).toBe(true)
  expect(r.stderr.trimEnd().split("\n")).toHaveLength(1)
  return r.stderr.trimEnd()
}

beforeAll(async () => {
  writeFileSync(file("plain.json"), plainKeyFile(KEY, NOW))
  const scrypt = await Effect.runPromise(wrapKey(KEY, Redacted.make(CODE), { kdf: "scrypt", nowMs: NOW }))
  writeFileSync(file("scrypt.json"), scrypt)
  writeFileSync(file("pbkdf2.json"), await Effect.runPromise(wrapKey(KEY, Redacted.make(PASSPHRASE), { kdf: "pbkdf2", nowMs: NOW, hint: "the blue folder" })))
  const f = JSON.parse(scrypt) as Record<string, string>
  const data = Buffer.from(f["data"]!, "base64")
  data[40] = data[40]! ^ 0x80
  writeFileSync(file("tampered.json"), JSON.stringify({ ...f, data: data.toString("base64") }))
  writeFileSync(file("wrong-fp.json"), JSON.stringify({ ...f, fingerprint: pbsFingerprint(new Uint8Array(32)) }))
  writeFileSync(file("plain-wrong-fp.json"), JSON.stringify({ ...JSON.parse(plainKeyFile(KEY, NOW)), fingerprint: pbsFingerprint(new Uint8Array(32)) }))
  writeFileSync(file("garbage.json"), "{\"kdf\":{\"Argon2\":{}},\"created\":\"x\"}")
})

afterAll(() => {
  for (const c of running) c.kill("SIGKILL")
  rmSync(dir, { recursive: true, force: true })
})

describe("escrow inspect", () => {
  it("a plain file: kdf none, times, fingerprint and its short form, checked; no stdin needed", async () => {
    const r = await inspect([file("plain.json")])
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toContain("kdf:               none")
    expect(r.stdout).toContain("created:           2026-11-30T08:00:00Z")
    expect(r.stdout).toContain(`fingerprint:       ${FP}`)
    expect(r.stdout).toContain(`short fingerprint: ${FP.slice(0, 23)}`)
  })

  it("a scrypt file opened with the recovery code on stdin, typed loosely (case, lines, 4-letter prefixes)", async () => {
    const typed = "LEGA winn THAN year\nWAVE saus wort usef\n  lega WINNER thank yell\n"
    const r = await inspect([file("scrypt.json")], typed)
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toContain("kdf:               scrypt")
    expect(r.stdout).toContain(`fingerprint:       ${FP}`)
    expect(r.stdout).toContain("unwrapped, fingerprint checked")
  })

  it("--json: the same facts, machine-readable; a pbkdf2 file opened with a raw passphrase", async () => {
    const r = await inspect([file("pbkdf2.json"), "--json"], `${PASSPHRASE}\n`)
    expect(r.status, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout)).toEqual({
      kdf: "pbkdf2",
      created: "2026-11-30T08:00:00Z",
      modified: "2026-11-30T08:00:00Z",
      fingerprint: FP,
      short_fingerprint: FP.slice(0, 23),
      hint: "the blue folder",
      verified: true
    })
  })

  it("a wrong code (a valid one, just not this file's): exit 1, PBS's one line", async () => {
    const other = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
    expect(refused(await inspect([file("scrypt.json")], other))).toBe("felhom-agent: Unable to decrypt key (wrong password?)")
    expect(refused(await inspect([file("pbkdf2.json")], "not the passphrase"))).toBe("felhom-agent: Unable to decrypt key (password hint: the blue folder)")
    expect(refused(await inspect([file("scrypt.json")], ""))).toBe("felhom-agent: Passphrase is too short!")
  })

  it("a mistyped code names the wrong word, not the word itself", async () => {
    const typo = CODE.replace("sausage", "sausagx")
    expect(refused(await inspect([file("scrypt.json")], typo))).toBe("felhom-agent: recovery code: word 6 is not a recovery-code word")
  })

  it("tampered data, a wrong stored fingerprint, garbage: exit 1 with PBS's wording", async () => {
    expect(refused(await inspect([file("tampered.json")], CODE))).toBe("felhom-agent: Unable to decrypt key (wrong password?)")
    expect(refused(await inspect([file("wrong-fp.json")], CODE))).toBe(
      `felhom-agent: KeyConfig contains wrong fingerprint ${pbsFingerprint(new Uint8Array(32))}, contained key has fingerprint ${FP}`
    )
    expect(refused(await inspect([file("plain-wrong-fp.json")]))).toBe(
      `felhom-agent: KeyConfig contains wrong fingerprint ${pbsFingerprint(new Uint8Array(32))}, contained key has fingerprint ${FP}`
    )
    expect(refused(await inspect([file("garbage.json")]))).toMatch(/^felhom-agent: not a PBS key file: /)
    expect(refused(await inspect([file("missing.json")]), 2)).toMatch(/^felhom-agent: cannot read /)
    expect(refused(await inspect([dir]), 2)).toContain("not a regular file")
  })

  it.skipIf(!existsSync("/usr/bin/script"))("at a terminal: a prompt, the code typed with echo off, the key checked", async () => {
    // util-linux script(1) gives the command a pseudo-terminal; the code is typed once the prompt shows
    const command = `${JSON.stringify(process.execPath)} ${JSON.stringify(bin)} escrow inspect ${JSON.stringify(file("scrypt.json"))}`
    const child = spawn("/usr/bin/script", ["-qfec", command, "/dev/null"], { env, stdio: ["pipe", "pipe", "pipe"] })
    running.add(child)
    let out = ""
    let typed = false
    const status = await new Promise<number | null>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no prompt: ${out}`)), 30_000)
      child.stdout!.setEncoding("utf8").on("data", (c: string) => {
        out += c
        if (!typed && out.includes("Recovery code or passphrase: ")) {
          typed = true
          child.stdin!.write("lega winn than year wave saus wort usef lega winn than yell\r")
        }
      })
      child.on("close", (code) => {
        clearTimeout(timer)
        running.delete(child)
        resolve(code)
      })
    })
    outputs.push(out)
    expect(status, out).toBe(0)
    expect(out).toContain(`fingerprint:       ${FP}`)
    expect(out).not.toContain("lega winn")
  })

  it("a failure message never carries a control character to the terminal (main.ts; here a file name with ESC)", async () => {
    const line = refused(await inspect([file("no\u001b[31msuch\u0007file.json")]), 2)
    expect(line).toContain("no?[31msuch?file.json")
    expect(line).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/)
  })

  it("no output of any run above holds the key (hex or base64), the code or the passphrase", () => {
    expect(outputs.length).toBeGreaterThanOrEqual(24)
    const keyHex = Buffer.from(KEY).toString("hex")
    const keyB64 = Buffer.from(KEY).toString("base64")
    for (const out of outputs) {
      expect(out).not.toContain(keyHex)
      expect(out).not.toContain(keyB64.slice(0, 40))
      expect(out).not.toContain(PASSPHRASE)
      for (const w of new Set(CODE.split(" "))) expect(out.toLowerCase()).not.toMatch(new RegExp(`\\b${w}\\b`))
    }
  })
})
