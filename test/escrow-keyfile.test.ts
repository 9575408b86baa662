/**
 * PBS key files (src/programs/escrow/keyFile.ts): PBS's fingerprint vector, round trips for every
 * KDF, interop both ways with an independent Python implementation (hashlib + cryptography's
 * AESGCM), tampering and wrong passphrases rejected in PBS's wording, hostile files refused as
 * Malformed without throwing, and no key byte or passphrase in any error.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { Effect, Either, FastCheck, Redacted } from "effect"
import {
  generatePbsKey,
  inspectKeyFile,
  KeyFileError,
  paperkeyText,
  pbsFingerprint,
  plainKeyFile,
  shortFingerprint,
  unwrapKey,
  wrapKey
} from "../src/programs/escrow/keyFile.js"

const VECTOR_KEY = Uint8Array.from({ length: 32 }, (_, i) => i)
const VECTOR_FP = "0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b"
const NOW = Date.UTC(2026, 10, 30, 12, 34, 56, 789)
const PASS = "correct horse battery staple"
const pass = (s: string) => Redacted.make(s)

/** Every message a test saw: checked at the end for secrets. */
const seenMessages: Array<string> = []
const secretsUsed = new Set<string>([PASS])
const keysUsed: Array<Uint8Array> = [VECTOR_KEY]

const fail = <A>(e: Effect.Effect<A, KeyFileError>) =>
  Effect.flip(e).pipe(Effect.tap((err) => Effect.sync(() => seenMessages.push(err.message))))
const leftOf = <A>(r: Either.Either<A, KeyFileError>): KeyFileError => {
  if (Either.isRight(r)) throw new Error(`expected a KeyFileError, got ${JSON.stringify(r.right)}`)
  seenMessages.push(r.left.message)
  return r.left
}

// --- an independent implementation ------------------------------------------------------------

const PY = String.raw`
import base64, hashlib, json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
req = json.load(sys.stdin)
def fp(key):
    idk = hashlib.pbkdf2_hmac("sha256", key, b"_id_key", 10, 32)
    d = hashlib.sha256(hashlib.sha256(b"Proxmox Backup Encryption Key Fingerprint").digest() + idk).digest()
    return ":".join("%02x" % b for b in d)
def derive(kdf, pw):
    if "Scrypt" in kdf:
        k = kdf["Scrypt"]
        return hashlib.scrypt(pw, salt=base64.b64decode(k["salt"]), n=k["n"], r=k["r"], p=k["p"], maxmem=256*1024*1024, dklen=32)
    k = kdf["PBKDF2"]
    return hashlib.pbkdf2_hmac("sha256", pw, base64.b64decode(k["salt"]), k["iter"], 32)
if req["op"] == "fingerprint":
    print(" ".join(fp(bytes.fromhex(k)) for k in req["keys"]))
elif req["op"] == "unwrap":
    f = json.loads(req["file"])
    raw = base64.b64decode(f["data"], validate=True)
    if f["kdf"] is None:
        key = raw
    else:
        dk = derive(f["kdf"], req["pass"].encode())
        key = AESGCM(dk).decrypt(raw[:16], raw[32:] + raw[16:32], None)
    print(json.dumps({"key": key.hex(), "fingerprint": fp(key), "stored": f.get("fingerprint")}))
elif req["op"] == "wrap":
    key = bytes.fromhex(req["key"])
    salt = os.urandom(32)
    if req["kdf"] == "scrypt":
        kdf = {"Scrypt": {"n": 65536, "r": 8, "p": 1, "salt": base64.b64encode(salt).decode()}}
    elif req["kdf"] == "pbkdf2":
        kdf = {"PBKDF2": {"iter": 65535, "salt": base64.b64encode(salt).decode()}}
    else:
        kdf = None
    if kdf is None:
        data = key
    else:
        iv = os.urandom(16)
        ct = AESGCM(derive(kdf, req["pass"].encode())).encrypt(iv, key, None)
        data = iv + ct[-16:] + ct[:-16]
    out = {"kdf": kdf, "created": "2024-06-05T16:24:36+02:00", "modified": "2024-06-05T16:24:36+02:00",
           "data": base64.b64encode(data).decode(), "fingerprint": fp(key)}
    if req.get("hint"):
        out["hint"] = req["hint"]
    print(json.dumps(out, separators=(",", ":")))
`

/** Runs the Python reference asynchronously (a long spawnSync would stall vitest's worker RPC). */
const python = (req: Record<string, unknown>) =>
  Effect.async<string, Error>((resume) => {
    const child = execFile("python3", ["-c", PY], { timeout: 30_000 }, (err, stdout, stderr) =>
      resume(err === null ? Effect.succeed(stdout.trim()) : Effect.fail(new Error(`python: ${stderr || err.message}`))))
    child.stdin!.end(JSON.stringify(req))
  })

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex")
const fileOf = (text: string) => JSON.parse(text) as Record<string, unknown> & { data: string; kdf: Record<string, Record<string, unknown>> | null }
const b64Flip = (b64: string, at: number) => {
  const b = Buffer.from(b64, "base64")
  b[at] = b[at]! ^ 0x01
  return b.toString("base64")
}

// Files for the tamper tests, written once (each wrap costs a scrypt).
const freshKey = () => {
  const k = Redacted.value(generatePbsKey())
  keysUsed.push(k)
  return k
}

describe("fingerprint", () => {
  it("PBS's vector: key bytes 00..1f give 0e:ab:d4:46:0b:6e:b9:ca:...:15:9b", () => {
    const fp = pbsFingerprint(VECTOR_KEY)
    expect(fp.startsWith("0e:ab:d4:46:0b:6e:b9:ca:")).toBe(true)
    expect(fp.endsWith(":15:9b")).toBe(true)
    expect(fp).toBe(VECTOR_FP)
    expect(shortFingerprint(fp)).toBe("0e:ab:d4:46:0b:6e:b9:ca")
  })

  it.effect("agrees with the independent implementation on random keys", () =>
    Effect.gen(function*() {
      const keys = [VECTOR_KEY, freshKey(), freshKey(), freshKey()]
      const theirs = (yield* python({ op: "fingerprint", keys: keys.map(hex) })).split(" ")
      expect(theirs).toEqual(keys.map(pbsFingerprint))
      expect(theirs[0]).toBe(VECTOR_FP)
    }))

  it("generatePbsKey: 32 random bytes, different every time", () => {
    const a = Redacted.value(generatePbsKey())
    const b = Redacted.value(generatePbsKey())
    expect(a.length).toBe(32)
    expect(hex(a)).not.toBe(hex(b))
    expect(String(generatePbsKey())).not.toContain(hex(a).slice(0, 8))
  })
})

describe("plain key files", () => {
  it.effect("one line, PBS field order, no fractional seconds; inspect and unwrap read it back", () =>
    Effect.gen(function*() {
      const text = plainKeyFile(VECTOR_KEY, NOW)
      expect(text).not.toContain("\n")
      expect(Object.keys(JSON.parse(text))).toEqual(["kdf", "created", "modified", "data", "fingerprint"])
      expect(text).toBe(
        `{"kdf":null,"created":"2026-11-30T12:34:56Z","modified":"2026-11-30T12:34:56Z","data":"${Buffer.from(VECTOR_KEY).toString("base64")}","fingerprint":"${VECTOR_FP}"}`
      )
      const info = Either.getOrThrow(inspectKeyFile(text))
      expect(info).toEqual({ kdf: "none", created: "2026-11-30T12:34:56Z", modified: "2026-11-30T12:34:56Z", fingerprint: VECTOR_FP, hint: undefined })
      const u = yield* unwrapKey(text, undefined)
      expect(hex(Redacted.value(u.key))).toBe(hex(VECTOR_KEY))
      expect(u).toMatchObject({ fingerprint: VECTOR_FP, kdf: "none", created: "2026-11-30T12:34:56Z" })
    }))

  it.effect("a plain file with a wrong fingerprint is refused in PBS's wording, by inspect and unwrap", () =>
    Effect.gen(function*() {
      const other = pbsFingerprint(freshKey())
      const text = JSON.stringify({ ...fileOf(plainKeyFile(VECTOR_KEY, NOW)), fingerprint: other })
      const want = `KeyConfig contains wrong fingerprint ${other}, contained key has fingerprint ${VECTOR_FP}`
      expect(leftOf(inspectKeyFile(text))).toMatchObject({ reason: "FingerprintMismatch", message: want })
      expect(yield* fail(unwrapKey(text, undefined))).toMatchObject({ reason: "FingerprintMismatch", message: want })
    }))

  it.effect("a plain file where a passphrase is expected (an escrow blob) is refused, not silently accepted", () =>
    Effect.gen(function*() {
      const e = yield* fail(unwrapKey(plainKeyFile(VECTOR_KEY, NOW), pass(PASS)))
      expect(e.reason).toBe("Malformed")
      expect(e.message).toContain("kdf null")
    }))

  it.effect("a plain file without a fingerprint is accepted (PBS: optional on read) and gets one computed", () =>
    Effect.gen(function*() {
      const f = fileOf(plainKeyFile(VECTOR_KEY, NOW))
      delete f["fingerprint"]
      expect(Either.getOrThrow(inspectKeyFile(JSON.stringify(f))).fingerprint).toBe(VECTOR_FP)
      expect((yield* unwrapKey(JSON.stringify(f), undefined)).fingerprint).toBe(VECTOR_FP)
    }))
})

describe("wrapped key files", () => {
  for (const kdf of ["scrypt", "pbkdf2"] as const) {
    it.effect(`${kdf}: PBS's parameters and layout, fresh salt and IV, round trip, Python unwraps it`, () =>
      Effect.gen(function*() {
        const key = freshKey()
        const text = yield* wrapKey(key, pass(PASS), { kdf, nowMs: NOW, hint: "the paper in the drawer" })
        expect(text).not.toContain("\n")
        const f = fileOf(text)
        expect(Object.keys(f)).toEqual(["kdf", "created", "modified", "data", "fingerprint", "hint"])
        expect(f.created).toBe("2026-11-30T12:34:56Z")
        if (kdf === "scrypt") {
          expect(Object.keys(f.kdf!)).toEqual(["Scrypt"])
          expect(Object.keys(f.kdf!["Scrypt"]!)).toEqual(["n", "r", "p", "salt"])
          expect(f.kdf!["Scrypt"]).toMatchObject({ n: 65536, r: 8, p: 1 })
          expect(Buffer.from(f.kdf!["Scrypt"]!["salt"] as string, "base64").length).toBe(32)
        } else {
          expect(Object.keys(f.kdf!["PBKDF2"]!)).toEqual(["iter", "salt"])
          expect(f.kdf!["PBKDF2"]!["iter"]).toBe(65535)
        }
        expect(Buffer.from(f.data, "base64").length).toBe(64)
        expect(f.fingerprint).toBe(pbsFingerprint(key))

        const u = yield* unwrapKey(text, pass(PASS))
        expect(hex(Redacted.value(u.key))).toBe(hex(key))
        expect(u).toMatchObject({ kdf, fingerprint: pbsFingerprint(key), created: "2026-11-30T12:34:56Z" })
        expect(Either.getOrThrow(inspectKeyFile(text))).toEqual({
          kdf, created: "2026-11-30T12:34:56Z", modified: "2026-11-30T12:34:56Z", fingerprint: pbsFingerprint(key), hint: "the paper in the drawer"
        })

        const py = JSON.parse(yield* python({ op: "unwrap", file: text, pass: PASS })) as Record<string, string>
        expect(py).toEqual({ key: hex(key), fingerprint: pbsFingerprint(key), stored: pbsFingerprint(key) })

        // a second wrap of the same key: new salt and IV, same fingerprint; created kept, modified now
        const again = fileOf(yield* wrapKey(key, pass(PASS), { kdf, nowMs: NOW + 86_400_000, created: "2024-06-05T16:24:36+02:00" }))
        expect(again.data.slice(0, 22)).not.toBe(f.data.slice(0, 22))
        expect(JSON.stringify(again.kdf)).not.toBe(JSON.stringify(f.kdf))
        expect(again).toMatchObject({ created: "2024-06-05T16:24:36+02:00", modified: "2026-12-01T12:34:56Z", fingerprint: f.fingerprint })
        expect("hint" in again).toBe(false)
      }))
  }

  for (const kdf of ["scrypt", "pbkdf2", "none"] as const) {
    it.effect(`${kdf}: a file written by the Python implementation (local-offset times) unwraps here`, () =>
      Effect.gen(function*() {
        const key = freshKey()
        const text = yield* python({ op: "wrap", kdf, key: hex(key), pass: PASS })
        const u = yield* unwrapKey(text, kdf === "none" ? undefined : pass(PASS))
        expect(hex(Redacted.value(u.key))).toBe(hex(key))
        expect(u).toMatchObject({ kdf, fingerprint: pbsFingerprint(key), created: "2024-06-05T16:24:36+02:00" })
        if (kdf !== "none") {
          expect(yield* fail(unwrapKey(text, pass(PASS + "!")))).toMatchObject({
            reason: "WrongPassphrase",
            message: "Unable to decrypt key (wrong password?)"
          })
        }
      }))
  }

  it.effect("wrapKey never blocks the event loop while scrypt runs", () =>
    Effect.gen(function*() {
      let ticks = 0
      const timer = setInterval(() => ticks++, 5)
      yield* wrapKey(freshKey(), pass(PASS), { kdf: "scrypt", nowMs: NOW }).pipe(Effect.ensuring(Effect.sync(() => clearInterval(timer))))
      expect(ticks).toBeGreaterThanOrEqual(3)
    }))
})

describe("refusals in PBS's wording", () => {
  it.effect("tampered iv, tag, ciphertext, salt or KDF parameters: Unable to decrypt key (wrong password?)", () =>
    Effect.gen(function*() {
      const key = freshKey()
      const scrypt = fileOf(yield* wrapKey(key, pass(PASS), { kdf: "scrypt", nowMs: NOW }))
      const pbkdf2 = fileOf(yield* wrapKey(key, pass(PASS), { kdf: "pbkdf2", nowMs: NOW }))
      const s = scrypt.kdf!["Scrypt"]!
      const p = pbkdf2.kdf!["PBKDF2"]!
      const tampered: Record<string, unknown> = {
        iv: { ...pbkdf2, data: b64Flip(pbkdf2.data, 3) },
        tag: { ...pbkdf2, data: b64Flip(pbkdf2.data, 20) },
        ciphertext: { ...pbkdf2, data: b64Flip(pbkdf2.data, 40) },
        "pbkdf2 salt": { ...pbkdf2, kdf: { PBKDF2: { ...p, salt: b64Flip(p["salt"] as string, 0) } } },
        "pbkdf2 iter": { ...pbkdf2, kdf: { PBKDF2: { ...p, iter: 65534 } } },
        "scrypt salt": { ...scrypt, kdf: { Scrypt: { ...s, salt: b64Flip(s["salt"] as string, 31) } } },
        "scrypt n": { ...scrypt, kdf: { Scrypt: { ...s, n: 32768 } } },
        "scrypt as pbkdf2": { ...scrypt, kdf: { PBKDF2: { iter: 65535, salt: s["salt"] } } }
      }
      for (const [what, f] of Object.entries(tampered)) {
        const e = yield* fail(unwrapKey(JSON.stringify(f), pass(PASS)))
        expect({ what, reason: e.reason, message: e.message }).toEqual({ what, reason: "WrongPassphrase", message: "Unable to decrypt key (wrong password?)" })
      }
      // the untouched files still open
      expect((yield* unwrapKey(JSON.stringify(scrypt), pass(PASS))).fingerprint).toBe(pbsFingerprint(key))
      expect((yield* unwrapKey(JSON.stringify(pbkdf2), pass(PASS))).fingerprint).toBe(pbsFingerprint(key))
    }))

  it.effect("a wrong stored fingerprint over a valid wrap: KeyConfig contains wrong fingerprint ...", () =>
    Effect.gen(function*() {
      const key = freshKey()
      const f = fileOf(yield* wrapKey(key, pass(PASS), { kdf: "pbkdf2", nowMs: NOW }))
      const e = yield* fail(unwrapKey(JSON.stringify({ ...f, fingerprint: VECTOR_FP }), pass(PASS)))
      expect(e.reason).toBe("FingerprintMismatch")
      expect(e.message).toBe(`KeyConfig contains wrong fingerprint ${VECTOR_FP}, contained key has fingerprint ${pbsFingerprint(key)}`)
      // inspect cannot know without the passphrase: it reports the stored (claimed) fingerprint
      expect(Either.getOrThrow(inspectKeyFile(JSON.stringify({ ...f, fingerprint: VECTOR_FP }))).fingerprint).toBe(VECTOR_FP)
    }))

  it.effect("wrong passphrase, with and without a hint; short and missing passphrases", () =>
    Effect.gen(function*() {
      const text = yield* wrapKey(freshKey(), pass(PASS), { kdf: "pbkdf2", nowMs: NOW, hint: "drawer" })
      expect(yield* fail(unwrapKey(text, pass("Correct horse battery staple")))).toMatchObject({
        reason: "WrongPassphrase",
        message: "Unable to decrypt key (password hint: drawer)"
      })
      expect(yield* fail(unwrapKey(text, pass("abcd")))).toMatchObject({ reason: "PassphraseTooShort", message: "Passphrase is too short!" })
      expect(yield* fail(unwrapKey(text, undefined))).toMatchObject({ reason: "PassphraseRequired" })
      expect(yield* fail(wrapKey(freshKey(), pass("abcd"), { kdf: "pbkdf2", nowMs: NOW }))).toMatchObject({ reason: "PassphraseTooShort" })
      // five bytes, fewer characters: PBS counts bytes
      const euro = yield* wrapKey(VECTOR_KEY, pass("ab€"), { kdf: "pbkdf2", nowMs: NOW })
      expect((yield* unwrapKey(euro, pass("ab€"))).fingerprint).toBe(VECTOR_FP)
    }))
})

describe("hostile files", () => {
  const plain = fileOf(plainKeyFile(VECTOR_KEY, NOW))
  const salt = Buffer.alloc(32, 7).toString("base64")
  const data64 = Buffer.alloc(64, 9).toString("base64")
  const wrapped = { ...plain, kdf: { PBKDF2: { iter: 65535, salt } }, data: data64 }
  const cases: Record<string, string> = {
    "not JSON": "{kdf:null}",
    "an array": "[]",
    "null": "null",
    "__proto__ key": `{"__proto__":{"polluted":1},${JSON.stringify(plain).slice(1)}`,
    "constructor key": JSON.stringify({ ...plain, constructor: 1 }),
    "an unknown field": JSON.stringify({ ...plain, extra: true }),
    "a duplicated field (serde refuses; JSON.parse keeps the last)": `${JSON.stringify(plain).slice(0, -1)},"data":${JSON.stringify(Buffer.alloc(32, 1).toString("base64"))}}`,
    "a duplicated kdf parameter": JSON.stringify({ ...wrapped, kdf: { PBKDF2: { iter: 65535, salt } } }).replace("\"iter\":65535", "\"iter\":1,\"iter\":65535"),
    "kdf missing": JSON.stringify({ created: plain.created, modified: plain.modified, data: plain.data }),
    "an unknown kdf": JSON.stringify({ ...wrapped, kdf: { Argon2: { salt } } }),
    "kdf as a string": JSON.stringify({ ...wrapped, kdf: "Scrypt" }),
    "two kdf variants": JSON.stringify({ ...wrapped, kdf: { PBKDF2: { iter: 65535, salt }, Scrypt: { n: 65536, r: 8, p: 1, salt } } }),
    "extra kdf parameter": JSON.stringify({ ...wrapped, kdf: { PBKDF2: { iter: 65535, salt, rounds: 1 } } }),
    "scrypt n of 2^30 (128 GiB)": JSON.stringify({ ...wrapped, kdf: { Scrypt: { n: 2 ** 30, r: 8, p: 1, salt } } }),
    "scrypt n not a power of two": JSON.stringify({ ...wrapped, kdf: { Scrypt: { n: 65535, r: 8, p: 1, salt } } }),
    "scrypt p huge": JSON.stringify({ ...wrapped, kdf: { Scrypt: { n: 65536, r: 8, p: 1e9, salt } } }),
    "pbkdf2 iter 10^10": JSON.stringify({ ...wrapped, kdf: { PBKDF2: { iter: 1e10, salt } } }),
    "pbkdf2 iter fractional": JSON.stringify({ ...wrapped, kdf: { PBKDF2: { iter: 1.5, salt } } }),
    "salt of 31 bytes": JSON.stringify({ ...wrapped, kdf: { PBKDF2: { iter: 65535, salt: Buffer.alloc(31).toString("base64") } } }),
    "wrapped data of 63 bytes": JSON.stringify({ ...wrapped, data: Buffer.alloc(63).toString("base64") }),
    "wrapped data of 65 bytes": JSON.stringify({ ...wrapped, data: Buffer.alloc(65).toString("base64") }),
    "plain data of 64 bytes": JSON.stringify({ ...plain, data: data64, fingerprint: undefined }),
    "plain data of 31 bytes": JSON.stringify({ ...plain, data: Buffer.alloc(31).toString("base64"), fingerprint: undefined }),
    "unpadded base64": JSON.stringify({ ...plain, data: plain.data.replace(/=+$/, "") }),
    "base64 with a newline": JSON.stringify({ ...plain, data: `${plain.data.slice(0, 20)}\n${plain.data.slice(20)}` }),
    "url-safe base64": JSON.stringify({ ...plain, data: Buffer.from(VECTOR_KEY.map((b) => b | 0xfc)).toString("base64url") + "=" }),
    "non-canonical trailing bits": JSON.stringify({ ...plain, data: plain.data.replace(/8=$/, "9=") }),
    "a huge string": JSON.stringify({ ...plain, hint: "x".repeat(20_000) }),
    "a huge hint (wrapped)": JSON.stringify({ ...wrapped, hint: "x".repeat(1000) }),
    "a hint with a terminal escape": JSON.stringify({ ...wrapped, hint: "\u001b]0;pwned\u0007" }),
    "kdf null with a hint": JSON.stringify({ ...plain, hint: "nothing to hint at" }),
    "fractional-second created": JSON.stringify({ ...plain, created: "2026-11-30T12:34:56.789Z" }),
    "created without a zone": JSON.stringify({ ...plain, created: "2026-11-30T12:34:56" }),
    "created February 30": JSON.stringify({ ...plain, created: "2026-02-30T12:34:56Z" }),
    "modified as a number": JSON.stringify({ ...plain, modified: 1764506096 }),
    "fingerprint not hex": JSON.stringify({ ...plain, fingerprint: "zz" + VECTOR_FP.slice(2) }),
    "fingerprint too short": JSON.stringify({ ...plain, fingerprint: VECTOR_FP.slice(0, 92) })
  }

  it.effect.each(Object.entries(cases))("refused as Malformed: %s", ([, text]) =>
    Effect.gen(function*() {
      expect(leftOf(inspectKeyFile(text)).reason).toBe("Malformed")
      const e = yield* fail(unwrapKey(text, pass(PASS)))
      expect(e.reason).toBe("Malformed")
      expect(e.message.length).toBeLessThan(200)
      expect(({} as Record<string, unknown>)["polluted"]).toBeUndefined()
    }))

  it("accepted as PBS accepts them: +hh:mm offsets, null hint, uppercase or colon-less fingerprints", () => {
    const ok = (f: Record<string, unknown>) => Either.getOrThrow(inspectKeyFile(JSON.stringify(f)))
    expect(ok({ ...plain, created: "2024-06-05T16:24:36+02:00", modified: "2024-06-05T16:24:36-05:30" }).created).toBe("2024-06-05T16:24:36+02:00")
    expect(ok({ ...plain, hint: null }).hint).toBeUndefined()
    expect(ok({ ...plain, fingerprint: VECTOR_FP.toUpperCase() }).fingerprint).toBe(VECTOR_FP)
    expect(ok({ ...plain, fingerprint: VECTOR_FP.replace(/:/g, "") }).fingerprint).toBe(VECTOR_FP)
    expect(ok({ ...wrapped, hint: "drawer" })).toMatchObject({ kdf: "pbkdf2", hint: "drawer" })
  })

  it("property: any mutation of a key file's text is a Right or a KeyFileError, never a throw", () => {
    const base = [JSON.stringify(plain), JSON.stringify({ ...wrapped, hint: "h" }), JSON.stringify({ ...wrapped, kdf: { Scrypt: { n: 65536, r: 8, p: 1, salt } } })]
    FastCheck.assert(
      FastCheck.property(
        FastCheck.constantFrom(...base),
        FastCheck.array(FastCheck.tuple(FastCheck.nat(), FastCheck.nat(), FastCheck.string({ maxLength: 3 })), { minLength: 1, maxLength: 4 }),
        (text, edits) => {
          let t = text
          for (const [at, del, ins] of edits) {
            const i = at % (t.length + 1)
            t = t.slice(0, i) + ins + t.slice(i + (del % 3))
          }
          const r = inspectKeyFile(t)
          if (Either.isLeft(r)) {
            expect(r.left).toBeInstanceOf(KeyFileError)
            expect(r.left.message).not.toContain(plain.data)
          }
        }
      ),
      { seed: 1313, numRuns: 2000 }
    )
  })
})

describe("paperkey", () => {
  it.effect("PBS's text paperkey: markers around the pretty JSON of the same file, subject first", () =>
    Effect.gen(function*() {
      const text = yield* wrapKey(VECTOR_KEY, pass(PASS), { kdf: "pbkdf2", nowMs: NOW, hint: "drawer" })
      const paper = paperkeyText(text, "felhom host pve1")
      const lines = paper.split("\n")
      expect(lines.slice(0, 3)).toEqual(["Subject: felhom host pve1", "", "-----BEGIN PROXMOX BACKUP KEY-----"])
      const end = lines.indexOf("-----END PROXMOX BACKUP KEY-----")
      const body = lines.slice(3, end).join("\n")
      expect(body).toBe(JSON.stringify(JSON.parse(text), null, 2))
      expect(lines[4]).toBe(`  "kdf": {`)
      expect(JSON.parse(body)).toEqual(JSON.parse(text))
      // a paper copy is still a key file PBS (and we) can read
      expect((yield* unwrapKey(body, pass(PASS))).fingerprint).toBe(VECTOR_FP)
      expect(paperkeyText(plainKeyFile(VECTOR_KEY, NOW)).startsWith("-----BEGIN PROXMOX BACKUP KEY-----\n{\n  \"kdf\": null,\n")).toBe(true)
    }))
})

describe("secrets", () => {
  it("no KeyFileError message seen in this file holds a key (hex or base64) or a passphrase", () => {
    expect(seenMessages.length).toBeGreaterThan(40)
    for (const m of seenMessages) {
      for (const k of keysUsed) {
        expect(m).not.toContain(hex(k))
        expect(m).not.toContain(Buffer.from(k).toString("base64").slice(0, 40))
      }
      for (const s of secretsUsed) expect(m).not.toContain(s)
      expect(m).not.toContain("horse")
    }
  })
})
