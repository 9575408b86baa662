import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc, Schema } from "effect"
import { formatUpid, parseUpidParts, Upid, type UpidParts } from "../src/schema/ids.js"

const label = fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?$/)
const field = fc.stringMatching(/^[^:\s/]{1,24}$/)
const parts: fc.Arbitrary<UpidParts> = fc.record({
  node: label,
  pid: fc.integer({ min: 0, max: 0xffffffff }),
  // 9 hex digits after ~497 days of uptime: still a safe JS integer
  pstart: fc.integer({ min: 0, max: 0xfffffffff }),
  starttime: fc.integer({ min: 0, max: 0xffffffff }),
  type: field,
  id: fc.oneof(fc.constant(""), fc.stringMatching(/^[^:\s/]{1,12}$/)),
  user: fc.oneof(field, fc.constant("felhom@pve!agent"), fc.constant("root@pam"))
})

describe("UPID", () => {
  it.prop("format → parse is the identity on parts", [parts], ([p]) => {
    const s = formatUpid(p)
    expect(Either.getOrThrow(parseUpidParts(s))).toEqual(p)
    expect(Schema.is(Upid)(s)).toBe(true)
  })

  it.prop("parse → format round-trips PVE's canonical (upper-case) strings", [parts], ([p]) => {
    const s = formatUpid(p)
    expect(formatUpid(Either.getOrThrow(parseUpidParts(s)))).toBe(s)
  })

  it("parses a real token-owned UPID and a 9-digit pstart", () => {
    const p = Either.getOrThrow(parseUpidParts("UPID:pve:0003A1F9:1B2C4D5E0:691F0A99:vzrestore:105:felhom@pve!agent:"))
    expect(p).toEqual({
      node: "pve",
      pid: 0x3a1f9,
      pstart: 0x1b2c4d5e0,
      starttime: 0x691f0a99,
      type: "vzrestore",
      id: "105",
      user: "felhom@pve!agent"
    })
  })

  it("parses vzdump's empty id", () => {
    expect(Either.getOrThrow(parseUpidParts("UPID:pve:00001234:00ABCDEF:691F0A99:vzdump::root@pam:")).id).toBe("")
  })

  it.each([
    "UPID:pve:0003A1F9:1B2C4D5E0:691F0A99:vzrestore:105:felhom@pve!agent", // no trailing colon
    "UPID:-pve:0003A1F9:1B2C4D5E:691F0A99:vzrestore:105:root@pam:",
    "UPID:pve:3A1F9:1B2C4D5E:691F0A99:vzrestore:105:root@pam:", // short pid
    "UPID:pve:0003A1F9:1B2C4D5E:691F0A99::105:root@pam:", // empty type
    "UPID:pve:0003A1F9:1B2C4D5E:691F0A99:vz/restore:105:root@pam:",
    "upid:pve:0003A1F9:1B2C4D5E:691F0A99:vzrestore:105:root@pam:",
    "UPID:pve:0003A1F9:1B2C4D5E:691F0A99:vzrestore:105:root@pam:\n"
  ])("rejects %j", (s) => {
    expect(Either.isLeft(parseUpidParts(s))).toBe(true)
    expect(Schema.is(Upid)(s)).toBe(false)
  })
})
