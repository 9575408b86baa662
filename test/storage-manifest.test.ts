/**
 * The typed storage manifest, backup policies and volume placement (src/schema/storage.ts) as the
 * desired state decodes them: strict keys, per-type durable ids, cross-references, class fixed at
 * attach, and creds that never print (String, JSON, inspect, Effect's formatting, any decode error).
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Either, Inspectable, Layer, ParseResult, Redacted, Schema } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { inspect } from "node:util"
import { hubSettings } from "../src/layers/Config.js"
import { Hub, HubWithoutClient } from "../src/layers/Hub.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { decodeDesiredState } from "../src/schema/desired.js"
import { layerAppHttpClient, makeDevHub } from "../src/sim/hub/index.js"
import {
  classChangeRefused,
  redactCredsIn,
  scheduledBackupTargets,
  StorageManifest,
  type StorageTarget,
  tierOf
} from "../src/schema/storage.js"

const SECRET = "s3cr3t-token-value-7f3a9b"
const CIPHER = "Q0lQSEVSVEVYVFNFQ1JFVA=="
const FP = Array.from({ length: 32 }, (_, i) => (i * 7 % 256).toString(16).padStart(2, "0").toUpperCase()).join(":")

const usb = { id: "usb-1", type: "usb", durable_id: "0b6f1c2e-2b7a-4c1d-9f3e-5a6b7c8d9e0f", class: "slow", role: "vzdump-target", state: "attached", policy: { schedule: "mon..fri 02:00", retention: { keep_daily: 7, keep_weekly: 4 } } }
const nfs = { id: "nas", type: "nfs", durable_id: "nas.lan:/export/felhom", class: "slow", role: "bulk-data", state: "attached" }
const cifs = { id: "smb", type: "cifs", durable_id: "192.168.1.20:backups/host1", class: "slow", role: "vzdump-target", creds: { ref: "cifs-smb" }, state: "disconnected" }
const pbs = {
  id: "pbs-offsite",
  type: "pbs",
  durable_id: { repo: "felhom@pbs!host1@pbs.example.net:8007:felhom", fingerprint: FP },
  class: "slow",
  role: "pbs-offsite",
  creds: { ciphertext: CIPHER },
  policy: { schedule: "*-*-* 03:30", retention: { keep_last: 3, keep_daily: 14, keep_monthly: 6 }, restore_test: "sun 05:00", verify: "sat 04:00" },
  state: "attached"
}
const local = { id: "local-lvm", type: "local-dir", durable_id: "/var/lib/vz", class: "fast", role: "primary", state: "attached" }
const manifest = [local, usb, nfs, cifs, pbs]

const guest = { vmid: 100, hostname: "cust-alpha", memory_bytes: 1024 * 1048576, swap_mib: 512, rootfs_gib: 8, power: "running", description: "", tags: [] }
const desired = (storage: unknown, policies?: unknown) => ({ generation: 1, guests: [guest], storage, ...(policies === undefined ? {} : { policies }) })

const decodeRaw = Schema.decodeUnknownEither(StorageManifest, { errors: "all", onExcessProperty: "error" })
const decodeManifest = (u: unknown) => decodeRaw(redactCredsIn(u))
const leftOf = <A>(r: Either.Either<A, string>): string => {
  if (Either.isRight(r)) throw new Error("expected a refusal")
  return r.left
}
const refused = (storage: unknown, policies?: unknown) => leftOf(decodeDesiredState(desired(storage, policies)))
const accepted = (storage: unknown, policies?: unknown) => {
  const r = decodeDesiredState(desired(storage, policies))
  if (Either.isLeft(r)) throw new Error(r.left)
  return r.right
}

describe("storage manifest: decoding", () => {
  it("decodes every target type; policies get their restore-test and verify defaults", () => {
    const d = accepted(manifest)
    expect(d.storage?.map((t) => [t.id, t.type, t.class, t.role, t.state])).toEqual([
      ["local-lvm", "local-dir", "fast", "primary", "attached"],
      ["usb-1", "usb", "slow", "vzdump-target", "attached"],
      ["nas", "nfs", "slow", "bulk-data", "attached"],
      ["smb", "cifs", "slow", "vzdump-target", "disconnected"],
      ["pbs-offsite", "pbs", "slow", "pbs-offsite", "attached"]
    ])
    const u = d.storage?.[1]
    expect(u?.policy).toEqual({ schedule: "mon..fri 02:00", retention: { keep_daily: 7, keep_weekly: 4 }, restore_test: "weekly", verify: "daily" })
    expect(d.storage?.[4]?.policy?.restore_test).toBe("sun 05:00")
    expect(Redacted.isRedacted(d.storage?.[4]?.creds)).toBe(true)
    expect(Redacted.value(d.storage![4]!.creds!)).toEqual({ ciphertext: CIPHER })
  })

  it("existing desired states still decode: no storage, an empty manifest and empty policies", () => {
    const fixture = JSON.parse(readFileSync(join(__dirname, "fixtures", "desired", "sim-converged.json"), "utf8")) as unknown
    expect(Either.isRight(decodeDesiredState(fixture))).toBe(true)
    expect(Either.isRight(decodeDesiredState({ generation: 1, guests: [] }))).toBe(true)
    expect(accepted([], {}).policies).toEqual({ guests: [] })
  })

  it("unknown keys are errors, at every level", () => {
    expect(refused([{ ...usb, mountpoint: "/mnt" }])).toContain("storage[0].mountpoint: is unexpected")
    expect(refused([{ ...usb, policy: { ...usb.policy, prune: true } }])).toContain("storage[0].policy.prune: is unexpected")
    expect(refused([{ ...usb, policy: { ...usb.policy, retention: { "keep-last": 3 } } }])).toContain("storage[0].policy.retention.keep-last: is unexpected")
    expect(refused([local], { guests: [], defaults: {} })).toContain("policies.defaults: is unexpected")
    const proto = JSON.parse(`[{"id":"usb-1","type":"usb","durable_id":"0b6f1c2e-2b7a-4c1d-9f3e-5a6b7c8d9e0f","class":"slow","role":"vzdump-target","state":"attached","__proto__":{"class":"fast"}}]`) as unknown
    expect(refused(proto)).toContain("storage[0].__proto__: is unexpected")
  })

  it("checks each type's durable id without echoing it", () => {
    const cases: ReadonlyArray<readonly [object, string, string]> = [
      [{ ...usb, durable_id: "/dev/sdb1" }, "storage[0].durable_id: a usb target's durable_id is its filesystem UUID", "/dev/sdb1"],
      [{ ...usb, durable_id: "0b6f1c2e-2b7a-4c1d-9f3e-5a6b7c8d9e0f\n" }, "storage[0].durable_id: a usb target's", "\n"],
      [{ ...nfs, durable_id: "nas.lan:export" }, "storage[0].durable_id: an nfs target's durable_id is 'server:/export'", "nas.lan:export"],
      [{ ...nfs, durable_id: "nas.lan:/export/../etc" }, "storage[0].durable_id: an nfs target's", "/../etc"],
      [{ ...local, durable_id: "var/lib/vz" }, "storage[0].durable_id: a local-dir target's durable_id is its absolute directory path", "var/lib/vz"],
      [{ ...pbs, durable_id: "pbs.example.net:felhom" }, "storage[0].durable_id: a pbs target's durable_id is { repo, fingerprint }", "pbs.example.net"],
      [{ ...pbs, durable_id: { repo: "felhom" , fingerprint: FP } }, "storage[0].durable_id.repo: repo is [user@realm[!token]@]server[:port]:datastore", "felhom\""],
      [{ ...usb, durable_id: { repo: "pbs.example.net:felhom", fingerprint: FP } }, "storage[0].durable_id: a usb target's durable_id is a string", FP]
    ]
    for (const [target, message, value] of cases) {
      const msg = refused([target])
      expect(msg).toContain(message)
      expect(msg).not.toContain(value)
    }
  })

  it("a pbs target must have a SHA-256 fingerprint and creds", () => {
    expect(refused([{ ...pbs, durable_id: { repo: pbs.durable_id.repo } }])).toContain(
      "storage[0].durable_id.fingerprint: a pbs target needs the server certificate's SHA-256 fingerprint"
    )
    const sha1 = FP.split(":").slice(0, 20).join(":")
    expect(refused([{ ...pbs, durable_id: { ...pbs.durable_id, fingerprint: sha1 } }])).toContain("storage[0].durable_id.fingerprint:")
    const { creds: _, ...noCreds } = pbs
    expect(refused([noCreds])).toContain("storage[0].creds: a pbs target needs creds")
  })

  it("usb, nfs and local-dir targets have no creds", () => {
    for (const t of [usb, nfs, local]) {
      const msg = refused([{ ...t, creds: { ref: SECRET } }])
      expect(msg).toContain(`storage[0].creds: a ${t.type} target has no creds`)
      expect(msg).not.toContain(SECRET)
    }
  })

  it("roles and policies fit the target", () => {
    expect(refused([{ ...usb, role: "pbs-offsite" }])).toContain("storage[0].role: role pbs-offsite is for type pbs")
    expect(refused([{ ...pbs, role: "vzdump-target" }])).toContain("storage[0].role:")
    expect(refused([{ ...local, policy: usb.policy }])).toContain("storage[0].policy: a primary target holds guest volumes, not backups")
    expect(refused([{ ...usb, class: "medium" }])).toContain("storage[0].class: class is one of \"fast\", \"slow\"")
    expect(refused([{ ...usb, state: "gone" }])).toContain("storage[0].state: state is one of \"attached\", \"disconnected\", \"decommissioned\"")
    expect(refused([{ ...usb, type: "zfs" }])).toContain("storage[0].type: type is one of")
    expect(refused([{ ...usb, id: "9usb" }])).toContain("storage[0].id: a storage id starts with a letter")
    expect(refused([usb, { ...nfs, id: "usb-1" }])).toContain("storage[1].id: duplicate target id 'usb-1' (first at [0])")
  })

  it("schedules are checked by the calendar parser, retention counts are non-negative integers", () => {
    expect(refused([{ ...usb, policy: { ...usb.policy, schedule: "mon..fri 22" } }])).toContain(
      "storage[0].policy.schedule: invalid schedule: a time without ':'"
    )
    expect(refused([{ ...usb, policy: { ...usb.policy, restore_test: "fortnightly" } }])).toContain("storage[0].policy.restore_test: invalid schedule")
    expect(refused([{ ...usb, policy: { ...usb.policy, retention: { keep_daily: -1 } } }])).toContain(
      "storage[0].policy.retention.keep_daily: a keep count is an integer between 0 and 100000"
    )
    expect(refused([{ ...usb, policy: { ...usb.policy, retention: { keep_daily: 1.5 } } }])).toContain("storage[0].policy.retention.keep_daily:")
    expect(refused([{ ...usb, policy: { ...usb.policy, retention: { keep_all: true, keep_last: 2 } } }])).toContain(
      "storage[0].policy.retention: keep_all cannot be combined with keep_* counts above 0"
    )
    expect(accepted([{ ...usb, policy: { ...usb.policy, retention: { keep_all: true, keep_last: 0 } } }]).storage?.[0]?.policy?.retention).toEqual({
      keep_all: true,
      keep_last: 0
    })
  })
})

describe("storage manifest: creds never print", () => {
  const decoded = (): StorageTarget => {
    const r = decodeManifest([{ ...pbs, creds: { ref: SECRET } }])
    if (Either.isLeft(r)) throw new Error(String(r.left))
    return r.right[0]!
  }

  it("not through String, JSON, util.inspect, Effect's Inspectable or Cause.pretty", () => {
    const t = decoded()
    const renderings = [
      String(t.creds),
      `${String(t.creds)}`,
      JSON.stringify(t),
      JSON.stringify({ manifest: [t] }),
      inspect(t, { depth: 10 }),
      inspect(t.creds, { depth: 10, showHidden: true }),
      Inspectable.format(t),
      Inspectable.toStringUnknown(t),
      Cause.pretty(Cause.fail(t)),
      Cause.pretty(Cause.die(t))
    ]
    for (const s of renderings) {
      expect(s).not.toContain(SECRET)
    }
    expect(JSON.stringify(t)).toContain("\"creds\":\"<redacted>\"")
  })

  it("not in any decode error: malformed creds, or another field wrong beside valid creds", () => {
    const inputs: ReadonlyArray<unknown> = [
      [{ ...pbs, creds: SECRET }],
      [{ ...pbs, creds: { ref: SECRET, extra: SECRET } }],
      [{ ...pbs, creds: { [SECRET]: "x" } }],
      [{ ...pbs, creds: { ciphertext: `${SECRET}!` } }],
      [{ ...pbs, creds: { ref: 42, ciphertext: SECRET } }],
      [{ ...pbs, creds: [SECRET] }],
      [{ ...pbs, creds: { ref: SECRET }, class: "medium" }],
      [{ ...pbs, creds: { ref: SECRET }, durable_id: "pbs.example.net:felhom" }],
      [{ ...pbs, creds: { ref: SECRET }, policy: { schedule: "fortnightly", retention: {} } }],
      [{ ...pbs, creds: { ref: SECRET }, surplus: true }],
      [usb, { ...pbs, creds: { ref: SECRET } }, { ...usb }],
      [{ ...usb, creds: { ref: SECRET } }]
    ]
    for (const input of inputs) {
      const r = decodeManifest(input)
      expect(Either.isLeft(r)).toBe(true)
      if (Either.isRight(r)) continue
      const e = r.left
      const texts = [
        String(e),
        e.message,
        ParseResult.TreeFormatter.formatErrorSync(e),
        JSON.stringify(ParseResult.ArrayFormatter.formatErrorSync(e)),
        inspect(e.issue, { depth: 20 }),
        leftOf(decodeDesiredState(desired(input)))
      ]
      for (const s of texts) expect(s).not.toContain(SECRET)
    }
  })

  it.scoped("the dev hub serves the wire form: the agent decodes the same creds it was given", () =>
    Effect.gen(function*() {
      const hub = yield* makeDevHub({ apiKeys: { "hub-key": "host-1" }, pollIntervalSeconds: 60 })
      const published = accepted([{ ...pbs, creds: { ref: SECRET } }])
      yield* hub.setDesired("host-1", published)
      const settings = Schema.decodeUnknownSync(AgentConfigFile)({ host_id: "host-1", hub: { url: "https://hub.invalid", api_key: "hub-key" } }).hub!
      const client = HubWithoutClient.pipe(Layer.provide(layerAppHttpClient(hub.app)), Layer.provide(hubSettings(settings)))
      const got = yield* Effect.flatMap(Hub, (h) => h.desiredState).pipe(Effect.provide(client), Effect.orDie)
      expect(Redacted.value(got.storage![0]!.creds!)).toEqual({ ref: SECRET })
      expect(got.storage?.[0]?.policy).toEqual(published.storage?.[0]?.policy)
    }))

  it("Schema.encode gives the wire value back (the dev hub serves what it was given)", () => {
    const t = decoded()
    const wire = Schema.encodeSync(StorageManifest)([t])
    expect((wire[0] as { creds: unknown }).creds).toEqual({ ref: SECRET })
  })
})

describe("volume placement and backup decisions", () => {
  const place = (volumes: ReadonlyArray<object>, vmid = 100) => ({ guests: [{ vmid, volumes }] })

  it("accepts hot volumes on fast targets and bulk volumes with or without a decision", () => {
    const d = accepted(manifest, place([
      { volume: "rootfs", kind: "hot", target: "local-lvm" },
      { volume: "mp0", kind: "bulk", target: "nas", backup: { target: "usb-1" } },
      { volume: "mp1", kind: "bulk", target: "nas", backup: { none: { reason: "re-downloadable media library" } } },
      { volume: "mp2", kind: "bulk", target: "nas" }
    ]))
    expect(d.policies?.guests[0]?.volumes.map((v) => v.volume)).toEqual(["rootfs", "mp0", "mp1", "mp2"])
  })

  it("refuses placements that break the rules, each at its path", () => {
    const cases: ReadonlyArray<readonly [ReadonlyArray<object>, string]> = [
      [[{ volume: "mp0", kind: "hot", target: "nas" }], "policies.guests[0].volumes[0].target: a hot volume must live on a fast target; 'nas' is slow"],
      [[{ volume: "mp0", kind: "bulk", target: "nowhere" }], "policies.guests[0].volumes[0].target: unknown storage target 'nowhere'"],
      [[{ volume: "rootfs", kind: "bulk", target: "nas" }], "policies.guests[0].volumes[0].kind: rootfs is always hot"],
      [[{ volume: "mp0", kind: "hot", target: "local-lvm", backup: { target: "usb-1" } }], "policies.guests[0].volumes[0].backup: only bulk volumes carry a backup decision"],
      [[{ volume: "mp0", kind: "bulk", target: "nas", backup: { target: "nas" } }], "policies.guests[0].volumes[0].backup.target: a bulk volume's backup must go to another target"],
      [[{ volume: "mp0", kind: "bulk", target: "nas", backup: { target: "gone" } }], "policies.guests[0].volumes[0].backup.target: unknown storage target 'gone'"],
      [[{ volume: "mp0", kind: "bulk", target: "pbs-offsite" }], "policies.guests[0].volumes[0].target: a volume cannot live on pbs target 'pbs-offsite'"],
      [[{ volume: "mp0", kind: "bulk", target: "nas", backup: { none: { reason: "  " } } }], "policies.guests[0].volumes[0].backup: backup is { target } or { none: { reason } }"],
      [[{ volume: "mp0", kind: "bulk", target: "nas", backup: { target: "usb-1", none: { reason: "x" } } }], "policies.guests[0].volumes[0].backup:"],
      [[{ volume: "mp256", kind: "bulk", target: "nas" }], "policies.guests[0].volumes[0].volume: a volume is rootfs or mp0..mp255"],
      [[{ volume: "mp0", kind: "bulk", target: "nas" }, { volume: "mp0", kind: "bulk", target: "nas" }], "policies.guests[0].volumes[1].volume: duplicate volume mp0"]
    ]
    for (const [volumes, message] of cases) expect(refused(manifest, place(volumes))).toContain(message)
    const decommissioned = manifest.map((t) => (t.id === "usb-1" ? { ...t, state: "decommissioned" } : t))
    expect(refused(decommissioned, place([{ volume: "mp0", kind: "bulk", target: "nas", backup: { target: "usb-1" } }]))).toContain(
      "policies.guests[0].volumes[0].backup.target: target 'usb-1' is decommissioned"
    )
    expect(refused(manifest, { guests: [{ vmid: 100, volumes: [] }, { vmid: 100, volumes: [] }] })).toContain("policies.guests[1].vmid: duplicate placement for vmid 100")
  })

  it("placement without a manifest refers to unknown targets", () => {
    const r = decodeDesiredState({ generation: 1, guests: [guest], policies: place([{ volume: "rootfs", kind: "hot", target: "local-lvm" }]) })
    expect(leftOf(r)).toContain("policies.guests[0].volumes[0].target: unknown storage target 'local-lvm'")
  })
})

describe("class is fixed at attach; lookups", () => {
  const targets = (): ReadonlyArray<StorageTarget> => Either.getOrThrow(decodeManifest(manifest))

  it("a class change of an existing target is refused with a clear message; new and unchanged targets pass", () => {
    const before = targets()
    const after = before.map((t) => (t.id === "usb-1" ? { ...t, class: "fast" as const } : t))
    const refusals = classChangeRefused(before, after)
    expect(refusals).toHaveLength(1)
    expect(refusals[0]).toMatchObject({ id: "usb-1", from: "slow", to: "fast" })
    expect(refusals[0]?.message).toContain("target 'usb-1' is slow: a target's class is fixed at attach and cannot change to fast")
    expect(classChangeRefused(before, before)).toEqual([])
    expect(classChangeRefused(before.slice(0, 2), before)).toEqual([])
    expect(classChangeRefused(before, [])).toEqual([])
  })

  it("scheduled backup targets: attached, backup roles, with a policy; tier by type", () => {
    const t = targets()
    expect(scheduledBackupTargets(t).map((x) => x.id)).toEqual(["usb-1", "pbs-offsite"])
    expect(t.map((x) => [x.id, tierOf(x)])).toEqual([["local-lvm", "vzdump"], ["usb-1", "vzdump"], ["nas", "vzdump"], ["smb", "vzdump"], ["pbs-offsite", "pbs"]])
    const off = t.map((x) => (x.id === "usb-1" ? { ...x, state: "disconnected" as const } : x))
    expect(scheduledBackupTargets(off).map((x) => x.id)).toEqual(["pbs-offsite"])
  })
})
