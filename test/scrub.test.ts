/**
 * The shared secret scrubber (src/schema/text.ts): every encoded form, case-insensitively, long
 * fragments, nothing else touched, and bounded work on large remote bodies.
 */
import { describe, expect, it } from "@effect/vitest"
import { encodedForms, excerpt, FRAGMENT_MIN, makeScrubber, REDACTED, withoutActual } from "../src/schema/text.js"

const SECRET = "0b9d5c1e-2f4a-4e6b-8c0d-1a3b5c7d9e2f"
const ODD = `k3y/with+odd "chars" & spaces=é`
const scrub = makeScrubber([SECRET, ODD]).scrub

describe("makeScrubber", () => {
  it("removes the secret in every encoded form: raw, JSON (once, twice), URL (once, twice, form style)", () => {
    for (const form of encodedForms(ODD)) {
      const out = scrub(`before ${form} after`)
      expect(out, form).toBe(`before ${REDACTED} after`)
    }
    expect(encodedForms(ODD).length).toBeGreaterThanOrEqual(5)
  })

  it("removes the PVE header value wherever it is echoed, and ignores ASCII case", () => {
    const header = `PVEAPIToken=felhom@pve!agent=${SECRET}`
    expect(scrub(`Authorization: ${header}\n`)).toBe(`Authorization: PVEAPIToken=felhom@pve!agent=${REDACTED}\n`)
    expect(scrub(`AUTHORIZATION: ${header.toUpperCase()}`)).not.toContain(SECRET.slice(0, FRAGMENT_MIN).toUpperCase())
    expect(scrub(JSON.stringify({ headers: { authorization: header } }))).not.toContain(SECRET.slice(9, 9 + FRAGMENT_MIN))
  })

  it("removes every fragment of at least FRAGMENT_MIN characters, at any offset, and merges adjacent runs", () => {
    for (let start = 0; start + FRAGMENT_MIN <= SECRET.length; start += 3) {
      const fragment = SECRET.slice(start, start + FRAGMENT_MIN + (start % 5))
      const out = scrub(`x${fragment}y`)
      expect(out, fragment).toBe(`x${REDACTED}y`)
    }
    // two different fragments back to back are one redaction
    expect(scrub(`[${SECRET.slice(0, 10)}${SECRET.slice(20, 30)}]`)).toBe(`[${REDACTED}]`)
  })

  it("leaves ordinary text alone, including short runs that occur by chance", () => {
    const text = `UPID:pve:0000A1B2:00C3D4E5:65A1B2C3:vzdump:100:felhom@pve!agent: digest 3f786850e387550fdab836ed7e6dc881de23001b ${SECRET.slice(0, FRAGMENT_MIN - 1)}`
    expect(scrub(text)).toBe(text)
    expect(scrub("")).toBe("")
    expect(makeScrubber([]).scrub(SECRET)).toBe(SECRET)
    expect(makeScrubber([""]).scrub("anything")).toBe("anything")
  })

  it("a secret shorter than FRAGMENT_MIN is still removed where it occurs whole", () => {
    const short = makeScrubber(["s3cr3t"]).scrub
    expect(short("a s3cr3t b S3CR3T c s3cr")).toBe(`a ${REDACTED} b ${REDACTED} c s3cr`)
  })

  it("does linear work on a large body, even one built from pieces of the secret (4 MiB each)", () => {
    const MiB4 = 4 * 1024 * 1024
    for (const body of [
      "0123456789abcdef-".repeat(Math.ceil(MiB4 / 17)) + SECRET,
      SECRET.slice(0, 4).repeat(MiB4 / 4) + SECRET,
      (SECRET.slice(0, FRAGMENT_MIN - 1) + "x").repeat(MiB4 / FRAGMENT_MIN) + SECRET
    ]) {
      const flat = Buffer.from(body).toString()
      const started = performance.now()
      const out = scrub(flat)
      expect(performance.now() - started).toBeLessThan(4000)
      expect(out.endsWith(REDACTED)).toBe(true)
    }
  })

  it("excerpt reads only a bounded head: a 64 MiB body costs what a short one does, and is scrubbed", () => {
    const { excerpt: safeExcerpt } = makeScrubber([SECRET])
    const huge = `error: ${SECRET}\n` + "x".repeat(64 * 1024 * 1024)
    safeExcerpt(huge, 120) // flattens the concatenated string once, outside the measurement
    const started = performance.now()
    const out = safeExcerpt(huge, 120)
    expect(performance.now() - started).toBeLessThan(200)
    expect(out.startsWith(`error: ${REDACTED} xxx`)).toBe(true)
    expect(out.length).toBeLessThanOrEqual(121)
  })

  it("a secret cut at the excerpt window's edge leaves fewer than FRAGMENT_MIN of its characters", () => {
    const { excerpt: safeExcerpt } = makeScrubber([SECRET])
    for (let pad = 0; pad < 2000; pad += 7) {
      const out = safeExcerpt(" ".repeat(pad) + SECRET + " tail", 300)
      for (let i = 0; i + FRAGMENT_MIN <= SECRET.length; i++) {
        expect(out.includes(SECRET.slice(i, i + FRAGMENT_MIN)), `pad ${pad}: ${out}`).toBe(false)
      }
    }
  })
})

describe("text helpers", () => {
  it("excerpt is one bounded line; withoutActual drops Schema's echo of the input", () => {
    expect(excerpt("a\n  b\tc", 10)).toBe("a b c")
    expect(excerpt("x".repeat(20), 5)).toBe("xxxxx…")
    expect(withoutActual(`Expected number, actual "${SECRET}"`)).toBe("Expected number")
  })
})
