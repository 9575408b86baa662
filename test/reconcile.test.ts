/**
 * Reconcile: the desired-state decoder, normalization of PVE round-trip quirks, and the plan.
 * The properties run the plan through applyPlanToActual, which models what PVE stores and
 * returns, so convergence also exercises the normalization.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc, Schema } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { type DesiredGuest, type DesiredState, decodeDesiredState } from "../src/schema/desired.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { GuestConfig, GuestSummary } from "../src/schema/proxmox.js"
import {
  type Action,
  type ActualGuest,
  normalizeActual,
  normalizeConfig,
  normalizeDescription,
  normalizeDesired,
  plan as planWith,
  type Plan,
  type PlanContext,
  type Power,
  rootfsGib,
  unboundedContext
} from "../src/programs/control/plan.js"
import { actualFromDesiredGuest, applyPlanToActual } from "./plan-model.js"

/** The pure diff with nothing held and no bounds (the bounds have their own tests below). */
const plan = (actual: ReadonlyArray<ActualGuest>, desired: DesiredState, ctx: PlanContext = unboundedContext) => planWith(actual, desired, ctx)

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const root = join(__dirname, "..")

const decodeConfig = Schema.decodeUnknownSync(GuestConfig)
const decodeSummary = Schema.decodeUnknownSync(GuestSummary)

const desiredOrThrow = (u: unknown): DesiredState =>
  Either.getOrElse(decodeDesiredState(u), (e) => {
    throw new Error(e)
  })

const fixture = (name: string): DesiredState =>
  desiredOrThrow(JSON.parse(readFileSync(join(root, "test", "fixtures", "desired", name), "utf8")))

/** The error text of a rejected decode ("" if it was accepted, which the assertions then catch). */
const leftOf = (r: Either.Either<unknown, string>): string => Either.match(r, { onLeft: (e) => e, onRight: () => "" })

const actualFrom = (d: DesiredState): ReadonlyArray<ActualGuest> => d.guests.map(actualFromDesiredGuest)

const guest = (over: Partial<Record<keyof DesiredGuest, unknown>> = {}): Record<string, unknown> => ({
  vmid: 101,
  hostname: "cust-beta",
  cores: 2,
  memory_bytes: 2 * GiB,
  swap_mib: 512,
  rootfs_gib: 8,
  power: "running",
  description: "x",
  tags: ["a", "b"],
  ...over
})

const withoutCores = ({ cores: _, ...g }: Record<string, unknown>) => g

const source = {
  golden_archive: "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst",
  storage: "local-lvm"
}

// ---------------------------------------------------------------------------------------------
// Arbitraries

const tagPool = ["a", "b", "customer", "felhom", "ops", "x_y", "web+1", "db.2", "a-b", "0"]
const hostPool = ["cust-alpha", "cust-beta", "ops-tools", "a", "h0", "x-1-y"]
const descPool = ["", "x", "felhom customer guest", "line one\nline two", "trailing  ", "crlf\r\nline", "ünïcode ✓ 100%"]
const vmidArb = fc.integer({ min: 100, max: 112 }).map((n) => VmId.make(n))

const memoryBytesArb = fc.oneof(
  fc.integer({ min: 64, max: 65536 }).map((m) => m * MiB),
  fc.integer({ min: 64 * MiB, max: 64 * GiB }),
  fc.constant(2 * GiB + 1)
)

const desiredGuestArb = (vmid: fc.Arbitrary<VmId>): fc.Arbitrary<DesiredGuest> =>
  fc.record(
    {
      vmid,
      hostname: fc.constantFrom(...hostPool),
      cores: fc.integer({ min: 1, max: 8 }),
      memory_bytes: memoryBytesArb,
      swap_mib: fc.integer({ min: 0, max: 4096 }),
      rootfs_gib: fc.integer({ min: 1, max: 64 }),
      power: fc.constantFrom("running" as const, "stopped" as const),
      description: fc.oneof(fc.constantFrom(...descPool), fc.string({ maxLength: 40 })),
      tags: fc.array(fc.constantFrom(...tagPool), { maxLength: 4 })
    },
    { requiredKeys: ["vmid", "hostname", "memory_bytes", "swap_mib", "rootfs_gib", "power", "description", "tags"] }
  )

const desiredStateArb: fc.Arbitrary<DesiredState> = fc.record({
  generation: fc.nat(),
  guests: fc.uniqueArray(desiredGuestArb(vmidArb), { selector: (g) => g.vmid, maxLength: 8 }),
  provisioning: fc.oneof(
    { arbitrary: fc.constant({ golden_archive: VolumeId.make(source.golden_archive), storage: StorageId.make(source.storage) }), weight: 5 },
    { arbitrary: fc.constant(undefined), weight: 1 }
  )
}).map(({ provisioning, ...rest }) => (provisioning === undefined ? rest : { ...rest, provisioning }))

/** Raw PVE config JSON with the quirks: numeric strings, CRLF, other tag separators, odd units. */
const rawConfigArb: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    hostname: fc.constantFrom(...hostPool),
    cores: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 8 }).map(String)),
    cpulimit: fc.constantFrom("1.5", "2", 1),
    memory: fc.oneof(fc.integer({ min: 16, max: 65536 }), fc.integer({ min: 16, max: 65536 }).map(String)),
    swap: fc.oneof(fc.integer({ min: 0, max: 4096 }), fc.integer({ min: 0, max: 4096 }).map(String)),
    rootfs: fc.oneof(
      fc.integer({ min: 1, max: 64 }).map((g) => `local-lvm:vm-100-disk-0,size=${g}G`),
      fc.integer({ min: 1, max: 65536 }).map((m) => `local-lvm:vm-100-disk-0,size=${m}M`),
      fc.integer({ min: 1, max: 64 }).map((g) => `local:100/vm-100-disk-0.raw,size=${g * GiB + 512},acl=1`),
      fc.constant("local-lvm:vm-100-disk-0")
    ),
    description: fc.constantFrom(...descPool).map((d) => `${d.replace(/\n/g, "\r\n")}\n`),
    tags: fc.array(fc.constantFrom(...tagPool, "Felhom", "OPS"), { maxLength: 4 }).chain((ts) =>
      fc.constantFrom(";", ",", " ", "; ").map((sep) => ts.join(sep))
    )
  },
  { requiredKeys: [] }
)

const actualGuestArb = (vmid: fc.Arbitrary<VmId>): fc.Arbitrary<ActualGuest> =>
  fc.record({
    vmid,
    status: fc.constantFrom("running", "stopped"),
    lock: fc.oneof(
      { arbitrary: fc.constant(undefined), weight: 6 },
      { arbitrary: fc.constantFrom("backup", "snapshot", "create"), weight: 1 }
    ),
    config: fc.oneof({ arbitrary: rawConfigArb, weight: 8 }, { arbitrary: fc.constant(null), weight: 1 })
  }).map(({ config, lock, status, vmid }) =>
    normalizeActual(
      decodeSummary({ vmid, status, ...(lock === undefined ? {} : { lock }) }),
      config === null ? null : decodeConfig(config)
    )
  )

const actualArb = fc.uniqueArray(actualGuestArb(vmidArb), { selector: (g) => g.vmid, maxLength: 8 })

/** Actual state derived from a desired one, then drifted on every axis the plan watches. */
const driftedArb = desiredStateArb.chain((d) =>
  fc.tuple(
    fc.constant(d),
    fc.constant(actualFrom(d)).chain((as) =>
      fc.tuple(...as.map((a) =>
        fc.record({
          status: fc.constantFrom<Power>(a.status, "running", "stopped"),
          memory: fc.option(fc.integer({ min: 16, max: 8192 }), { nil: undefined }),
          rootfs: fc.option(fc.integer({ min: 1, max: 64 }), { nil: undefined }),
          tags: fc.option(fc.array(fc.constantFrom(...tagPool), { maxLength: 3 }), { nil: undefined }),
          description: fc.option(fc.constantFrom(...descPool), { nil: undefined })
        }).map((drift): ActualGuest =>
          a.spec === null ? a : {
            ...a,
            status: drift.status,
            spec: {
              ...a.spec,
              ...(drift.memory === undefined ? {} : { memory_mib: drift.memory }),
              ...(drift.rootfs === undefined ? {} : { rootfs_gib: drift.rootfs }),
              ...(drift.tags === undefined ? {} : { tags: [...new Set(drift.tags)].sort() }),
              ...(drift.description === undefined ? {} : { description: drift.description.trimEnd() })
            }
          }
        )
      ))
    )
  )
)

// ---------------------------------------------------------------------------------------------
// Helpers for the properties

const order: Record<Action["kind"], number> = { create: 0, destroy: 0, set_config: 1, resize: 2, deploy_controller: 2.5, start: 3, stop: 3, update_controller: 4, recover: 0 }

/** Actions grouped by vmid ascending, per guest in execution order. */
const wellOrdered = (p: Plan): boolean =>
  p.actions.every((a, i) => {
    const prev = p.actions[i - 1]
    return prev === undefined || prev.vmid < a.vmid || (prev.vmid === a.vmid && order[prev.kind] < order[a.kind])
  })

/** After one pass only creates without a source remain: the executor cannot run them. */
const converged = (p: Plan): boolean => p.actions.every((a) => a.kind === "create" && a.source === null)

describe("decodeDesiredState", () => {
  it("accepts both sim fixtures", () => {
    expect(fixture("sim-converged.json").guests.map((g) => g.vmid)).toEqual([100, 101, 102])
    expect(fixture("sim-mixed.json").guests.map((g) => g.vmid)).toEqual([100, 101, 110])
  })

  it("rejects duplicate vmids, naming the vmid and where", () => {
    const r = decodeDesiredState({ generation: 1, guests: [guest(), guest({ vmid: 102 }), guest()] })
    expect(r).toStrictEqual(Either.left("invalid desired state: guests[2].vmid: duplicate vmid 101 (first at guests[0])"))
  })

  it("rejects a hostname that is not an RFC 1123 label", () => {
    for (const hostname of ["cust_beta", "-beta", "beta-", "a.b", "", "x".repeat(64)]) {
      const r = decodeDesiredState({ generation: 1, guests: [guest({ hostname })] })
      expect(Either.isLeft(r)).toBe(true)
      expect(leftOf(r)).toContain("guests[0].hostname: a hostname is an RFC 1123 label")
    }
    expect(Either.isRight(decodeDesiredState({ generation: 1, guests: [guest({ hostname: "x".repeat(63) })] }))).toBe(true)
  })

  it("rejects negative, too small and fractional memory", () => {
    for (const memory_bytes of [-1, 0, 16 * MiB - 1, 2.5 * GiB + 0.5]) {
      const r = decodeDesiredState({ generation: 0, guests: [guest({ memory_bytes })] })
      expect(r).toStrictEqual(
        Either.left(`invalid desired state: guests[0].memory_bytes: memory_bytes is an integer between ${16 * MiB} and ${Number.MAX_SAFE_INTEGER}`)
      )
    }
    expect(Either.isRight(decodeDesiredState({ generation: 0, guests: [guest({ memory_bytes: 16 * MiB })] }))).toBe(true)
  })

  it("rejects unknown fields at any level, naming them", () => {
    const inGuest = decodeDesiredState({ generation: 1, guests: [{ ...guest(), colour: "red" }] })
    expect(leftOf(inGuest)).toMatch(/^invalid desired state: guests\[0\]\.colour: is unexpected/)
    const top = decodeDesiredState({ generation: 1, guests: [], extra: true })
    expect(leftOf(top)).toMatch(/^invalid desired state: extra: is unexpected/)
    const prov = decodeDesiredState({ generation: 1, guests: [], provisioning: { ...source, node: "pve" } })
    expect(leftOf(prov)).toMatch(/provisioning\.node: is unexpected/)
  })

  it("rejects bad tags, power, rootfs and provisioning ids, listing every issue", () => {
    const r = decodeDesiredState({
      generation: -1,
      guests: [guest({ tags: ["ok", "Bad"], power: "paused", rootfs_gib: 0 })],
      provisioning: { golden_archive: "no-colon", storage: "9bad" }
    })
    const msg = leftOf(r)
    for (const path of ["generation:", "guests[0].tags[1]:", "guests[0].power:", "guests[0].rootfs_gib:", "provisioning.golden_archive:", "provisioning.storage:"]) {
      expect(msg).toContain(path)
    }
  })

  it("accepts a storage manifest and policies (typed in src/schema/storage.ts), and a guest without cores", () => {
    const r = decodeDesiredState({
      generation: 3,
      guests: [withoutCores(guest())],
      storage: [{
        id: "usb-1",
        type: "usb",
        durable_id: "0b6f1c2e-2b7a-4c1d-9f3e-5a6b7c8d9e0f",
        class: "slow",
        role: "vzdump-target",
        policy: { schedule: "daily", retention: { keep_daily: 7 } },
        state: "attached"
      }],
      policies: { guests: [] }
    })
    expect(Either.isRight(r)).toBe(true)
    expect(Either.getOrThrow(r).guests[0]?.cores).toBeUndefined()
  })

  it("never echoes a huge input", () => {
    const big = "x".repeat(100_000)
    for (const input of [
      { generation: 1, guests: [guest({ hostname: big })] },
      { generation: 1, guests: [guest({ description: big })] },
      { generation: 1, guests: [guest({ power: big })] },
      { generation: 1, guests: big },
      big
    ]) {
      const r = decodeDesiredState(input)
      expect(Either.isLeft(r)).toBe(true)
      const msg = leftOf(r)
      expect(msg.length).toBeLessThan(600)
    }
  })
})

describe("normalization", () => {
  it("parses the rootfs size in any unit, rounding down to whole GiB", () => {
    expect(rootfsGib("local-lvm:vm-101-disk-0,size=8G")).toBe(8)
    expect(rootfsGib("local-lvm:vm-101-disk-0,size=8192M")).toBe(8)
    expect(rootfsGib("local-lvm:vm-101-disk-0,size=8704M")).toBe(8) // 8.5 GiB: satisfies 8, not 9
    expect(rootfsGib("local-lvm:vm-101-disk-0,size=1T")).toBe(1024)
    expect(rootfsGib(`local:101/vm-101-disk-0.raw,size=${4 * 1024 * 1024}K,acl=1`)).toBe(4)
    expect(rootfsGib(`local:101/vm-101-disk-0.raw,size=${3 * GiB}`)).toBe(3)
    expect(rootfsGib("local-lvm:vm-101-disk-0,size=512M")).toBe(0)
    expect(rootfsGib("local-lvm:vm-101-disk-0")).toBeNull()
    expect(rootfsGib(undefined)).toBeNull()
  })

  it("reads absent keys as PVE's defaults and keeps an unset cores null", () => {
    expect(normalizeConfig({})).toStrictEqual({
      hostname: null,
      cores: null,
      memory_mib: 512,
      swap_mib: 512,
      rootfs_gib: null,
      description: "",
      tags: []
    })
  })

  it("normalizes descriptions and tags the same way on both sides", () => {
    const actual = normalizeConfig(decodeConfig({ description: "two\r\nlines  \r\n\n", tags: "Felhom, customer;felhom ops" }))
    const desired = normalizeDesired(desiredOrThrow({
      generation: 0,
      guests: [guest({ description: "two\nlines", tags: ["ops", "customer", "felhom", "ops"] })]
    }).guests[0]!)
    expect(normalizeDescription("  indented\r\n  \n")).toBe("  indented") // leading space is content
    expect(actual.description).toBe("two\nlines")
    expect(desired.description).toBe("two\nlines")
    expect(actual.tags).toEqual(["customer", "felhom", "ops"])
    expect(desired.tags).toEqual(["customer", "felhom", "ops"])
  })

  it("rounds desired memory up to whole MiB", () => {
    const mem = (memory_bytes: number) =>
      normalizeDesired(desiredOrThrow({ generation: 0, guests: [guest({ memory_bytes })] }).guests[0]!).memory_mib
    expect(mem(2 * GiB)).toBe(2048)
    expect(mem(2 * GiB + 1)).toBe(2049)
    expect(mem(2 * GiB - 1)).toBe(2048)
  })

  it("a realistic PVE config with every quirk reads as no drift", () => {
    const config = decodeConfig({
      arch: "amd64",
      cores: 2,
      cpulimit: "1.5",
      description: "x\n",
      digest: "3f1c5e0b9a7d2c4e6f8a0b1c2d3e4f5a6b7c8d9e",
      features: "keyctl=1,nesting=1",
      hostname: "cust-beta",
      memory: "2048",
      net0: "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:3A:5C:02,ip=dhcp,type=veth",
      ostype: "debian",
      rootfs: "local-lvm:vm-101-disk-0,size=8G",
      swap: 512,
      tags: "b;a",
      unprivileged: 1
    })
    expect(config.memory).toBe(2048)
    const summary = decodeSummary({ vmid: "101", status: "running", lock: "", cpus: "1.5", tags: "b;a" })
    const actual = normalizeActual(summary, config)
    const desired = desiredOrThrow({ generation: 4, guests: [guest()], provisioning: source })
    expect(plan([actual], desired)).toStrictEqual({ generation: 4, actions: [], notes: [] })
  })
})

describe("plan", () => {
  const desired = (guests: ReadonlyArray<Record<string, unknown>>, prov = true) =>
    desiredOrThrow({ generation: 1, guests, ...(prov ? { provisioning: source } : {}) })
  const actualOf = (g: Record<string, unknown>, over: Partial<ActualGuest> = {}): ActualGuest => ({
    ...actualFromDesiredGuest(desired([g]).guests[0]!),
    ...over
  })

  // issue 11: the controller's back half and updates, decided from the agent's config only
  describe("controllers", () => {
    const REPO = "registry.felhom.eu/felhom/controller"
    const img = (tag: string, repo = REPO) => `${repo}:${tag}`
    const withCtl = (deployed: ReadonlyMap<VmId, string> = new Map()): PlanContext => ({
      ...unboundedContext,
      controllers: { deployed, repositories: [REPO] }
    })

    it("a new guest with a controller: create, then the deploy, in one guest's turn", () => {
      const p = plan([], desired([guest({ controller: { image: img("1.0.0") } })]), withCtl())
      // a running guest is started only after its bootstrap (the first-boot directive) is mounted
      expect(p.actions.map((a) => a.kind)).toEqual(["create", "deploy_controller", "start"])
      expect(p.actions[0]).toMatchObject({ kind: "create", deferStart: true })
      expect(p.actions[1]).toStrictEqual({ kind: "deploy_controller", vmid: 101, image: img("1.0.0") })
    })

    it("an existing guest without a controller gets the deploy; a deployed one with the same image nothing", () => {
      const a = actualOf(guest())
      const d = desired([guest({ controller: { image: img("1.0.0") } })])
      expect(plan([a], d, withCtl()).actions).toStrictEqual([{ kind: "deploy_controller", vmid: 101, image: img("1.0.0") }])
      expect(plan([a], d, withCtl(new Map([[VmId.make(101), img("1.0.0")]]))).actions).toEqual([])
    })

    it("an image outside the operator's repositories is never deployed; an update to it needs a signature", () => {
      const a = actualOf(guest())
      const evil = img("1.0.0", "evil.example/felhom/controller")
      const p = plan([a], desired([guest({ controller: { image: evil } })]), withCtl())
      expect(p.actions).toEqual([])
      expect(p.notes).toMatchObject([{ vmid: 101, reason: "controller_refused" }])
      // a look-alike repository (prefix, or the allowed one as a path component) is not the repository
      for (const near of [`${REPO}-x:1`, `${REPO}/sub:1`, `evil.example/${REPO}:1`]) {
        expect(plan([a], desired([guest({ controller: { image: near } })]), withCtl()).notes.map((n) => n.reason), near).toEqual(["controller_refused"])
      }
      const deployed = withCtl(new Map([[VmId.make(101), img("1.0.0")]]))
      expect(plan([a], desired([guest({ controller: { image: evil } })]), deployed).actions).toStrictEqual([
        { kind: "update_controller", vmid: 101, from: img("1.0.0"), to: evil, basis: "signed" }
      ])
      expect(plan([a], desired([guest({ controller: { image: img("1.1.0") } })]), deployed).actions).toStrictEqual([
        { kind: "update_controller", vmid: 101, from: img("1.0.0"), to: img("1.1.0"), basis: "policy" }
      ])
    })

    it("an update that was rolled back is not retried for the same image; a new image is", () => {
      const a = actualOf(guest())
      const ctx: PlanContext = {
        ...unboundedContext,
        controllers: { deployed: new Map([[VmId.make(101), img("1.0.0")]]), repositories: [REPO], failedUpdates: new Map([[VmId.make(101), { image: img("2.0.0"), recent: false }]]) }
      }
      const same = plan([a], desired([guest({ controller: { image: img("2.0.0") } })]), ctx)
      expect(same.actions).toEqual([])
      expect(same.notes.map((n) => n.reason)).toEqual(["controller_update_failed"])
      expect(plan([a], desired([guest({ controller: { image: img("2.0.1") } })]), ctx).actions.map((x) => x.kind)).toEqual(["update_controller"])
      // within the cool-down a hub alternating images gets no policy update at all; a signed one still plans
      const recent: PlanContext = {
        ...ctx,
        controllers: { ...ctx.controllers!, failedUpdates: new Map([[VmId.make(101), { image: img("2.0.0"), recent: true }]]) }
      }
      expect(plan([a], desired([guest({ controller: { image: img("2.0.1") } })]), recent).notes.map((n) => n.reason)).toEqual(["controller_update_failed"])
      const outside = "other.example/ctl:9"
      expect(plan([a], desired([guest({ controller: { image: outside } })]), recent).actions).toMatchObject([{ kind: "update_controller", basis: "signed" }])
    })

    it("no local API on this host: a note, no controller action; held and lost guests get none either", () => {
      const a = actualOf(guest())
      const d = desired([guest({ controller: { image: img("1.0.0") } })])
      const none = plan([a], d, { ...unboundedContext, controllers: null })
      expect(none.actions).toEqual([])
      expect(none.notes.map((n) => n.reason)).toEqual(["no_local_api"])
      const held = plan([a], d, { ...withCtl(), held: new Map([[VmId.make(101), "in flight"]]) })
      expect(held.actions).toEqual([])
      const lost = plan([], d, { ...withCtl(), customer: new Set([VmId.make(101)]) })
      expect(lost.actions).toEqual([])
      expect(lost.notes.map((n) => n.reason)).toEqual(["lost"])
    })
  })

  it("puts only the changed keys into set_config, then resize, then power", () => {
    const a = actualOf(guest({ power: "stopped" }))
    const d = desired([guest({ cores: 4, tags: ["a", "c"], rootfs_gib: 10 })])
    expect(plan([a], d).actions).toStrictEqual([
      { kind: "set_config", vmid: 101, set: { cores: 4, tags: "a;c" } },
      { kind: "resize", vmid: 101, disk: "rootfs", sizeGib: 10 },
      { kind: "start", vmid: 101 }
    ])
  })

  it("clears description and tags with empty values", () => {
    const a = actualOf(guest())
    const d = desired([guest({ description: "  \n", tags: [] })])
    expect(plan([a], d).actions).toStrictEqual([{ kind: "set_config", vmid: 101, set: { description: "", tags: "" } }])
  })

  // issue 8, finding 6: a guest the journal knows held customer data is never recreated blank
  it("a known customer guest that is gone is lost: a note, never a create", () => {
    const d = desired([guest({ vmid: 105 })])
    const ctx: PlanContext = { ...unboundedContext, customer: new Set([VmId.make(105)]) }
    const p = plan([], d, ctx)
    expect(p.actions).toEqual([])
    expect(p.notes).toMatchObject([{ vmid: 105, reason: "lost" }])
    // an unknown vmid is still provisioned
    expect(plan([], d).actions.map((a) => a.kind)).toEqual(["create"])
  })

  // finding 2: a guest held for an operator is left entirely alone
  it("a held guest gets no action at all, not even a destroy or a start", () => {
    const a = actualOf(guest({ power: "stopped" }))
    const ctx: PlanContext = { ...unboundedContext, held: new Map([[VmId.make(101), "create op-1 needs an operator"]]) }
    for (const d of [desired([guest({ cores: 7 })]), desired([])]) {
      const p = plan([a], d, ctx)
      expect(p.actions).toEqual([])
      expect(p.notes.map((n) => n.reason)).toEqual(["held"])
    }
  })

  // finding 9: irreversible grows and nonsense memory are bounded by what PVE reports
  it("refuses a grow beyond the storage's free space, or when free space is unknown", () => {
    const a = actualOf(guest({ rootfs_gib: 8 }))
    const d = desired([guest({ rootfs_gib: 60000 })])
    const tight: PlanContext = { ...unboundedContext, rootfsFreeGib: () => 100 }
    expect(plan([a], d, tight).actions).toEqual([])
    expect(plan([a], d, tight).notes).toMatchObject([{ reason: "resize_refused" }])
    expect(plan([a], d, { ...unboundedContext, rootfsFreeGib: () => undefined }).notes.map((n) => n.reason)).toEqual(["resize_refused"])
    const ok = plan([a], desired([guest({ rootfs_gib: 100 })]), tight)
    expect(ok.actions).toStrictEqual([{ kind: "resize", vmid: 101, disk: "rootfs", sizeGib: 100 }])
  })

  it("refuses memory below the floor or above the host, and swap above the host's memory", () => {
    const a = actualOf(guest())
    const host: PlanContext = { ...unboundedContext, hostMemoryMiB: 8192 }
    for (const over of [{ memory_bytes: 32 * MiB }, { memory_bytes: 64 * GiB }, { swap_mib: 1024 * 1024 }]) {
      const p = plan([a], desired([guest(over)]), host)
      expect(p.actions, JSON.stringify(over)).toEqual([])
      expect(p.notes.map((n) => n.reason)).toEqual(["memory_refused"])
    }
    // other keys of the same change still apply
    const mixed = plan([a], desired([guest({ memory_bytes: 64 * GiB, cores: 6 })]), host)
    expect(mixed.actions).toStrictEqual([{ kind: "set_config", vmid: 101, set: { cores: 6 } }])
    // nor is such a guest created
    expect(plan([], desired([guest({ memory_bytes: 64 * GiB })]), host).actions).toEqual([])
  })

  it("never plans a shrink: it is a note", () => {
    const p = plan([actualOf(guest({ rootfs_gib: 16 }))], desired([guest({ rootfs_gib: 8, power: "stopped" })]))
    expect(p.actions).toStrictEqual([{ kind: "stop", vmid: 101 }])
    expect(p.notes.map((n) => n.reason)).toEqual(["shrink_refused"])
    expect(p.notes[0]?.message).toContain("16 GiB")
  })

  it("plans nothing for a locked guest, not even a destroy", () => {
    const d = desired([guest({ power: "stopped", cores: 8 })])
    const locked = actualOf(guest(), { lock: "backup" })
    const stray = actualOf(guest({ vmid: 150 }), { lock: "snapshot" })
    const p = plan([locked, stray], d)
    expect(p.actions).toEqual([])
    expect(p.notes.map((n) => [n.vmid, n.reason])).toEqual([[101, "locked"], [150, "locked"]])
  })

  it("for an unreadable config plans only power, with a note", () => {
    const p = plan([{ vmid: VmId.make(101), status: "stopped", lock: null, spec: null }], desired([guest()]))
    expect(p.actions).toStrictEqual([{ kind: "start", vmid: 101 }])
    expect(p.notes.map((n) => n.reason)).toEqual(["config_unreadable"])
  })

  it("does not resize a rootfs of unknown size", () => {
    const a = actualOf(guest())
    const p = plan([{ ...a, spec: { ...a.spec!, rootfs_gib: null } }], desired([guest({ rootfs_gib: 20 })]))
    expect(p.actions).toEqual([])
    expect(p.notes.map((n) => n.reason)).toEqual(["rootfs_size_unknown"])
  })

  it("cores: unset in PVE is drift only when desired sets it", () => {
    const a = actualOf(guest())
    const unset = { ...a, spec: { ...a.spec!, cores: null } }
    const noCores = withoutCores(guest())
    expect(plan([unset], desired([guest({ cores: 2 })])).actions).toStrictEqual([
      { kind: "set_config", vmid: 101, set: { cores: 2 } }
    ])
    expect(plan([unset], desired([noCores])).actions).toEqual([])
    expect(plan([a], desired([noCores])).actions).toEqual([])
  })

  it("creates with the provisioning source, or with null and a note without one", () => {
    const d = desired([guest({ vmid: 110 })])
    expect(plan([], d)).toStrictEqual({
      generation: 1,
      actions: [{ kind: "create", vmid: 110, spec: d.guests[0], source: { archive: source.golden_archive, storage: source.storage } }],
      notes: []
    })
    const bare = plan([], desired([guest({ vmid: 110 })], false))
    expect(bare.actions).toStrictEqual([{ kind: "create", vmid: 110, spec: d.guests[0], source: null }])
    expect(bare.notes.map((n) => n.reason)).toEqual(["no_provisioning"])
  })

  it("a non-MiB-aligned memory converges in one pass and stays converged", () => {
    const d = desired([guest({ memory_bytes: 2 * GiB + 1 })])
    const a0 = [actualOf(guest({ memory_bytes: 2 * GiB }))]
    const p1 = plan(a0, d)
    expect(p1.actions).toStrictEqual([{ kind: "set_config", vmid: 101, set: { memory: 2049 } }])
    const a1 = applyPlanToActual(a0, p1)
    expect(a1[0]?.spec?.memory_mib).toBe(2049)
    expect(plan(a1, d).actions).toEqual([])
    const a2 = applyPlanToActual(a1, plan(a1, d))
    expect(a2).toStrictEqual(a1)
    expect(plan(a2, d).actions).toEqual([])
  })

  it.prop("plan(actualFrom(D), D) is empty", [desiredStateArb], ([d]) => {
    expect(plan(actualFrom(d), d)).toStrictEqual({ generation: d.generation, actions: [], notes: [] })
  }, { fastCheck: { numRuns: 300 } })

  it.prop("one pass converges: arbitrary actual, arbitrary desired", [actualArb, desiredStateArb], ([a, d]) => {
    const p1 = plan(a, d)
    expect(wellOrdered(p1)).toBe(true)
    const p2 = plan(applyPlanToActual(a, p1), d)
    expect(converged(p2)).toBe(true)
    // What could not converge is still reported, and nothing new appeared.
    expect(p2.notes).toStrictEqual(p1.notes)
  }, { fastCheck: { numRuns: 500 } })

  it.prop("one pass converges from drift on every axis", [driftedArb], ([[d, a]]) => {
    const p1 = plan(a, d)
    expect(wellOrdered(p1)).toBe(true)
    const after = applyPlanToActual(a, p1)
    const p2 = plan(after, d)
    expect(p2.actions).toEqual([])
    expect(p2.notes.every((n) => n.reason === "shrink_refused")).toBe(true)
    expect(applyPlanToActual(after, p2)).toStrictEqual(after)
  }, { fastCheck: { numRuns: 300 } })

  it.prop("the plan is minimal and ignores input order", [actualArb, desiredStateArb, fc.nat()], ([a, d, seed]) => {
    const p = plan(a, d)
    const have = new Map(a.map((g) => [g.vmid, g]))
    const want = new Map(d.guests.map((g) => [g.vmid, g]))
    for (const act of p.actions) {
      const g = have.get(act.vmid)
      if (act.kind === "create") expect(g).toBeUndefined()
      else expect(g?.lock).toBeNull()
      if (act.kind === "destroy") expect(want.has(act.vmid)).toBe(false)
      if (act.kind === "set_config") {
        expect(Object.keys(act.set).length).toBeGreaterThan(0)
        const w = normalizeDesired(want.get(act.vmid)!)
        const s = g!.spec!
        if (act.set.memory !== undefined) expect(act.set.memory).not.toBe(s.memory_mib)
        if (act.set.cores !== undefined) expect(act.set.cores).not.toBe(s.cores)
        if (act.set.tags !== undefined) expect(act.set.tags).not.toBe(s.tags.join(";"))
        if (act.set.description !== undefined) expect(w.description).not.toBe(s.description)
      }
      if (act.kind === "resize") expect(act.sizeGib).toBeGreaterThan(have.get(act.vmid)!.spec!.rootfs_gib!)
    }
    const rotate = <A>(xs: ReadonlyArray<A>) => xs.map((_, i) => xs[(i + seed) % xs.length]!)
    expect(plan(rotate(a), { ...d, guests: rotate(d.guests) })).toStrictEqual(p)
  }, { fastCheck: { numRuns: 300 } })
})

// ---------------------------------------------------------------------------------------------
// The simulator's default seed

interface SeedGuest {
  readonly vmid: number
  readonly status: string
  readonly config: Record<string, unknown>
}
const seedActual = (): ReadonlyArray<ActualGuest> => {
  const seed = JSON.parse(readFileSync(join(root, "configs", "sim", "pve.json"), "utf8")) as { guests: ReadonlyArray<SeedGuest> }
  return seed.guests.map((g) =>
    normalizeActual(decodeSummary({ vmid: g.vmid, status: g.status }), decodeConfig(g.config))
  )
}

describe("against the simulator's default seed", () => {
  it("sim-converged.json plans nothing", () => {
    expect(plan(seedActual(), fixture("sim-converged.json"))).toStrictEqual({ generation: 1, actions: [], notes: [] })
  })

  it("sim-mixed.json plans benign and destructive changes, and converges", () => {
    const d = fixture("sim-mixed.json")
    const p = plan(seedActual(), d)
    expect(p).toStrictEqual({
      generation: 2,
      actions: [
        { kind: "resize", vmid: 100, disk: "rootfs", sizeGib: 32 },
        { kind: "set_config", vmid: 101, set: { memory: 2048 } },
        { kind: "start", vmid: 101 },
        { kind: "destroy", vmid: 102, reason: "absent_from_desired" },
        {
          kind: "create",
          vmid: 110,
          spec: d.guests[2],
          source: { archive: source.golden_archive, storage: source.storage }
        }
      ],
      notes: []
    })
    expect(plan(applyPlanToActual(seedActual(), p), d).actions).toEqual([])
  })
})
