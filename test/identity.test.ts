/**
 * The identity decision table (src/schema/identity.ts, SPEC §10, issue 12), exhaustively: every
 * scenario × attribute has exactly one treatment and each row is the one the spec asks for; the
 * derived answers (the restore's MAC, the first-boot directive's resets, the plan's rows) agree
 * with the table. Then against the simulator, what the sagas really do agrees with it too:
 * provision (a fresh MAC, the provision directive, a new controller identity), guest-loss recovery
 * total and partial with the real controller service (the MAC kept or fresh, link down exactly
 * when the row says, the republished directive's resets, the controller identity kept), and the
 * restore-test path (a fresh MAC and no link while it runs).
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Layer, Option, Schema, TestClock } from "effect"
import { mkdtempSync, readFileSync, realpathSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import { ControllerStore, ControllerStoreLive } from "../src/layers/ControllerStore.js"
import { layerAt } from "../src/layers/Database.js"
import { guestHealthFromSim } from "../src/layers/GuestHealth.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { Journal, JournalLive } from "../src/layers/Journal.js"
import { LocalTokens, LocalTokensLive } from "../src/layers/LocalTokens.js"
import { Privileged, type PrivilegedShape } from "../src/layers/Privileged.js"
import { ProtectionStoreLive } from "../src/layers/ProtectionStore.js"
import { Proxmox, type ProxmoxShape } from "../src/layers/Proxmox.js"
import { provisionGuest } from "../src/programs/bringup/provision.js"
import { runRecover } from "../src/programs/bringup/recoverGuest.js"
import { formatRecoverPlan, recoverPlan } from "../src/programs/bringup/tiers.js"
import { provisionDirective, provisionDirectiveFor } from "../src/programs/controller/bootstrap.js"
import { ControllerContext } from "../src/programs/controller/context.js"
import { ControllerOpsLive } from "../src/programs/controller/live.js"
import { ControllerOps } from "../src/programs/controller/ops.js"
import { ControllerPublisher } from "../src/programs/controller/update.js"
import { UTC } from "../src/programs/protection/calendar.js"
import { restoreTestPass } from "../src/programs/protection/restoreTest.js"
import { restoreTestSettings } from "../src/programs/protection/scratch.js"
import { ControllerBootstrap, IdentityDirective } from "../src/schema/bootstrap.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { DesiredGuest, DesiredState } from "../src/schema/desired.js"
import {
  directiveResets,
  freshMac,
  IDENTITY_ATTRIBUTES,
  IDENTITY_TABLE,
  type IdentityAttribute,
  identityRows,
  lossScenario,
  type Scenario,
  SCENARIOS,
  type Treatment
} from "../src/schema/identity.js"
import { StorageId, VmId, VolumeId } from "../src/schema/ids.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { bootstrapDirOf, makePrivilegedSim } from "../src/sim/pve/privilegedSim.js"
import { authzLayer, dbFile, GOLDEN, operator, registerGolden, runTimed, signedOp } from "./engine-support.js"
import { protectionSeed, T0, USB } from "./protection-support.js"
import { durations, inProcessProxmox, seedWith } from "./support.js"

const row = (s: Scenario) => IDENTITY_TABLE[s].identity

// ---------------------------------------------------------------------------------------------
// The table as data

describe("identity decision table", () => {
  it("every scenario × attribute has exactly one treatment, and nothing else is in the table", () => {
    expect(Object.keys(IDENTITY_TABLE).sort()).toEqual([...SCENARIOS].sort())
    for (const s of SCENARIOS) {
      expect(Object.keys(row(s)).sort(), s).toEqual([...IDENTITY_ATTRIBUTES].sort())
      for (const a of IDENTITY_ATTRIBUTES) expect(["fresh", "kept", "reset", "withheld"], `${s} × ${a}`).toContain(row(s)[a])
      expect(typeof IDENTITY_TABLE[s].linkDown, s).toBe("boolean")
      expect(IDENTITY_TABLE[s].why.length, `${s}: the plan shows why`).toBeGreaterThan(20)
    }
  })

  it("provision: fresh everything, link up", () => {
    for (const a of IDENTITY_ATTRIBUTES) expect(row("provision")[a], a).toBe("fresh")
    expect(IDENTITY_TABLE.provision.linkDown).toBe(false)
  })

  const lossRow: { readonly [A in IdentityAttribute]: Treatment } = {
    mac: "kept",
    hostname: "kept",
    "machine-id": "reset",
    "ssh-host-keys": "reset",
    "controller-identity": "kept",
    "restic-identity": "kept",
    tunnel: "kept"
  }

  it("guest-loss total: keeps the MAC (DHCP reservations), restic identity (the backup chain), tunnel and hub binding; resets machine-id and SSH host keys; link up", () => {
    expect(row("guest-loss-total")).toEqual(lossRow)
    expect(IDENTITY_TABLE["guest-loss-total"].linkDown).toBe(false)
  })

  it("guest-loss partial: as total, but a fresh MAC and link down (the source may still be live)", () => {
    expect(row("guest-loss-partial")).toEqual({ ...lossRow, mac: "fresh" })
    expect(IDENTITY_TABLE["guest-loss-partial"].linkDown).toBe(true)
  })

  it("restore-test: a fresh MAC and link down; boots as the backup holds it (machine-id, host keys kept); no controller identity at all (withheld)", () => {
    expect(row("restore-test")).toEqual({ ...lossRow, mac: "fresh", "machine-id": "kept", "ssh-host-keys": "kept", "controller-identity": "withheld" })
    expect(IDENTITY_TABLE["restore-test"].linkDown).toBe(true)
  })

  it("host-loss: as a total guest loss", () => {
    expect(IDENTITY_TABLE["host-loss"].identity).toEqual(IDENTITY_TABLE["guest-loss-total"].identity)
    expect(IDENTITY_TABLE["host-loss"].linkDown).toBe(IDENTITY_TABLE["guest-loss-total"].linkDown)
  })

  it("what others know a recovered guest by is never reset or made fresh (resetting restic orphans the backup chain; a new tunnel or hub binding is another customer)", () => {
    for (const s of SCENARIOS.filter((x) => x !== "provision")) {
      for (const a of ["restic-identity", "tunnel"] as const) expect(row(s)[a], `${s} × ${a}`).toBe("kept")
      // the hub binding is kept, or the copy gets none at all: never a new one
      expect(["kept", "withheld"], `${s} × controller-identity`).toContain(row(s)["controller-identity"])
    }
    // "withheld" only where no bootstrap reaches the guest: the scratch copy
    expect(SCENARIOS.filter((s) => Object.values(row(s)).includes("withheld"))).toEqual(["restore-test"])
  })

  it("what must never be reused (machine-id, host keys, a MAC) is kept only by a copy that can never reach a network beside its source", () => {
    for (const s of SCENARIOS) {
      const isolated = IDENTITY_TABLE[s].linkDown && row(s)["controller-identity"] === "withheld"
      for (const a of ["machine-id", "ssh-host-keys"] as const) {
        if (row(s)[a] === "kept") expect(isolated, `${s} × ${a} kept on a copy that may reach the network`).toBe(true)
      }
      // a kept MAC means the source is gone for good: link up; a fresh one after a loss: link down until confirmed
      if (row(s).mac === "kept") expect(IDENTITY_TABLE[s].linkDown, s).toBe(false)
      if (s !== "provision" && row(s).mac === "fresh") expect(IDENTITY_TABLE[s].linkDown, s).toBe(true)
    }
  })

  it("freshMac (the restore's unique=1) is the table's MAC row for every scenario", () => {
    for (const s of SCENARIOS) expect(freshMac(s), s).toBe(row(s).mac === "fresh")
    expect(SCENARIOS.filter(freshMac)).toEqual(["provision", "guest-loss-partial", "restore-test"])
  })

  it("directiveResets is what the first-boot unit must do: every in-guest reset, and for provision the golden archive's machine-id and host keys; never a kept attribute", () => {
    const inGuest = ["machine-id", "ssh-host-keys", "hostname"] as const
    for (const s of SCENARIOS) {
      // a hostname is set by the config (fresh: the spec's; kept: the backup's), never by the unit here
      expect(directiveResets(s), s).not.toContain("hostname")
      const resets = directiveResets(s)
      expect(new Set(resets).size, `${s}: no duplicates`).toBe(resets.length)
      for (const a of inGuest) {
        const t = row(s)[a]
        if (t === "reset") expect(resets, `${s} × ${a}`).toContain(a)
        if (t === "kept") expect(resets, `${s} × ${a}`).not.toContain(a)
      }
      // the directive decodes as the bootstrap schema the guest's unit reads
      const d = Schema.decodeUnknownSync(IdentityDirective)({ scenario: s, reset: resets, directive_id: "x" })
      expect(d.reset, s).toEqual(resets)
    }
    expect(directiveResets("provision")).toEqual(["machine-id", "ssh-host-keys"])
    for (const s of ["guest-loss-total", "guest-loss-partial", "host-loss"] as const) {
      expect(directiveResets(s), s).toEqual(["machine-id", "ssh-host-keys"])
    }
    // the scratch copy gets no directive (no bootstrap) and asks for none
    expect(directiveResets("restore-test")).toEqual([])
  })

  it.effect("the provision directive a deploy writes is the table's provision resets", () =>
    Effect.gen(function*() {
      const d = yield* provisionDirective
      expect(d.scenario).toBe("provision")
      expect(d.reset).toEqual(directiveResets("provision"))
      expect(provisionDirectiveFor("host-test", VmId.make(110), [], "tok").reset).toEqual(directiveResets("provision"))
    }))

  it("identityRows lists the table's rows in attribute order; lossScenario names the guest-loss rows", () => {
    for (const s of SCENARIOS) {
      expect(identityRows(s), s).toEqual(IDENTITY_ATTRIBUTES.map((attribute) => ({ attribute, treatment: row(s)[attribute] })))
    }
    expect(lossScenario("total")).toBe("guest-loss-total")
    expect(lossScenario("partial")).toBe("guest-loss-partial")
  })
})

// ---------------------------------------------------------------------------------------------
// Against the simulator

const IMAGE = "registry.example/felhom/controller:1.4.2"
const V100 = VmId.make(100)
const MAC100 = "BC:24:11:3A:5C:01"
const GOLDEN_MAC = "BC:24:11:90:00:00"

const context = Layer.succeed(ControllerContext, {
  hostId: "host-test",
  hubUrl: "https://hub.example.net",
  localApiUrl: "https://10.10.0.1:7443",
  pins: Effect.succeed([{ spki_sha256: "c3BraQ==", cert_sha256: "ab".repeat(32) }]),
  registry: null
})

/**
 * The agent with the real controller service over one state DB: the deploy and reidentify sagas,
 * the token and controller stores, the root helper's bootstrap half simulated (files below `root`,
 * the bind mount on the simulated guest's config).
 */
const agent = (sim: SimPve, path: string, root: string, proxmox: Layer.Layer<Proxmox> = inProcessProxmox(sim, { node: "pve" })) => {
  const db = layerAt(path)
  const config = Layer.succeed(AgentConfig, {
    source: undefined,
    file: Schema.decodeUnknownSync(AgentConfigFile)({
      host_id: "host-test",
      privileged: { bootstrap_root: root },
      controllers: { repositories: ["registry.example/felhom/controller"] }
    })
  })
  const services = Layer.mergeAll(
    proxmox,
    JournalLive.pipe(Layer.provide(db)),
    authzLayer().pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    LocalTokensLive.pipe(Layer.provide(db)),
    ControllerStoreLive.pipe(Layer.provide(db)),
    // the root helper's other commands are never reached here
    Layer.succeed(Privileged, makePrivilegedSim({} as PrivilegedShape, sim, root)),
    config,
    context,
    Layer.succeed(ControllerPublisher, { publish: () => Effect.dieMessage("no controller update here") })
  )
  return Layer.provideMerge(ControllerOpsLive, services).pipe(Layer.orDie)
}

const scratchRoot = () => join(realpathSync(mkdtempSync(join(tmpdir(), "felhom-identity-"))), "bootstrap")

const bootstrapOf = (root: string, vmid: number) =>
  Schema.decodeUnknownSync(Schema.parseJson(ControllerBootstrap))(readFileSync(join(root, String(vmid), "controller.json"), "utf8"))

const tokenFileOf = (root: string, vmid: number) => readFileSync(join(root, String(vmid), "local-token"), "utf8")

const nics = (config: Readonly<Record<string, unknown>>) =>
  Object.entries(config).filter(([k, v]) => /^net\d+$/.test(k) && typeof v === "string").map(([, v]) => String(v))

const hwaddrOf = (nic: string) => /(?:^|,)hwaddr=([0-9A-Fa-f:]+)/.exec(nic)?.[1]?.toUpperCase() ?? null

const restorePost = (sim: SimPve, vmid: number) =>
  Effect.map(sim.requests, (rs) => rs.filter((r) => r.method === "POST" && r.path === "/nodes/pve/lxc" && r.params["vmid"] === String(vmid)))

describe("the sagas against the table", () => {
  it.scoped("provision: a fresh MAC (unique=1), link up, the spec's hostname, and a new controller identity with the provision directive", () =>
    Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith(durations(1000)))
      const root = scratchRoot()
      const spec = Schema.decodeUnknownSync(DesiredGuest)({
        vmid: 110,
        hostname: "cust-gamma",
        cores: 2,
        memory_bytes: 2 * 1024 ** 3,
        swap_mib: 512,
        rootfs_gib: 16,
        power: "running",
        description: "guest 110",
        tags: ["customer"],
        controller: { image: IMAGE }
      })
      const source = { archive: VolumeId.make(GOLDEN), storage: StorageId.make("local-lvm") }
      const r = yield* Effect.zipRight(registerGolden, runTimed(provisionGuest(spec, source, { actor: "cli" }))).pipe(Effect.provide(agent(sim, dbFile(), root)))
      expect(r).toMatchObject({ outcome: "done", controller: { state: "deployed" } })
      const [post] = yield* restorePost(sim, 110)
      expect(post?.params["unique"]).toBe(freshMac("provision") ? "1" : undefined)
      const g = Option.getOrThrow(yield* sim.guest(110))
      for (const nic of nics(g.config)) {
        expect(hwaddrOf(nic)).not.toBeNull()
        expect(hwaddrOf(nic)).not.toBe(GOLDEN_MAC)
        expect(nic.includes("link_down=1")).toBe(IDENTITY_TABLE.provision.linkDown)
      }
      expect(g.config["hostname"]).toBe("cust-gamma")
      const boot = bootstrapOf(root, 110)
      expect(boot.identity.scenario).toBe("provision")
      expect(boot.identity.reset).toEqual(directiveResets("provision"))
      expect(boot.hub.channel).toBe("host-test/110")
      expect(tokenFileOf(root, 110)).toMatch(/^fla1_/)
      // first boot: the golden unit applies the directive; the golden archive's machine-id and host key are gone
      const golden = Option.getOrThrow(yield* sim.guestInner(110))
      expect(yield* sim.applyDirective(110, boot.identity)).toBe("applied")
      const booted = Option.getOrThrow(yield* sim.guestInner(110))
      expect(booted.machineId).not.toBe(golden.machineId)
      expect(booted.sshHostKey).not.toBe(golden.sshHostKey)
    }))

  /** Guest 100 with a deployed controller, backed up to usb1, then lost (its bootstrap dir on the host outlives it). */
  const lostWithController = (sim: SimPve, root: string) =>
    Effect.gen(function*() {
      const pve = yield* Proxmox
      const controllers = yield* ControllerOps
      yield* controllers.deploy(V100, IMAGE)
      // what identifies the guest inside: the backup takes it along
      const inner = Option.getOrThrow(yield* sim.guestInner(100))
      const before = { boot: bootstrapOf(root, 100), token: tokenFileOf(root, 100), inner }
      const dump = yield* pve.vzdump({ vmid: V100, storage: USB, mode: "snapshot" })
      yield* pve.waitTask(Option.getOrThrow(dump))
      yield* Effect.flatMap(Journal, (j) => j.markCustomer(V100, "test setup"))
      yield* pve.waitTask(yield* pve.stop(V100))
      // the loss: config and rootfs gone (the bind mount first, as pct would refuse nothing here)
      const mp = Object.entries(Option.getOrThrow(yield* sim.guest(100)).config).find(([k, v]) => /^mp\d+$/.test(k) && String(v).includes("/etc/felhom-bootstrap"))
      if (mp !== undefined) yield* sim.setMountPoint(100, mp[0], null)
      expect(yield* sim.rootDestroy(100)).toBe("ok")
      yield* Effect.flatMap(Journal, (j) => j.markLost(V100, "test: gone"))
      return before
    })

  for (const loss of ["total", "partial"] as const) {
    const scenario = lossScenario(loss)
    it.scoped(`recover, ${scenario}: MAC ${freshMac(scenario) ? "fresh" : "kept"}, link ${IDENTITY_TABLE[scenario].linkDown ? "down" : "up"}, the republished directive resets exactly ${directiveResets(scenario).join(" and ")}, controller identity kept`, () =>
      Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const sim = yield* makeSimPve(yield* protectionSeed(durations(1000)))
        const root = scratchRoot()
        yield* Effect.gen(function*() {
          const before = yield* runTimed(lostWithController(sim, root))
          expect(before.boot.identity.scenario).toBe("provision")
          const plan = yield* runTimed(recoverPlan(V100, { scenario: loss, source: "auto", desired: null, placement: undefined, manifest: [] }))
          expect(plan.mode).toBe("fresh")
          // the plan an operator signs shows the table's rows for this scenario
          expect(plan.identity).toEqual(identityRows(scenario))
          expect(plan.linkDown).toBe(IDENTITY_TABLE[scenario].linkDown)
          const text = formatRecoverPlan(plan)
          for (const t of ["kept", "reset", "fresh"] as const) {
            const attrs = identityRows(scenario).filter((r) => r.treatment === t).map((r) => r.attribute)
            if (attrs.length > 0) expect(text).toContain(`${t}: ${attrs.join(", ")}`)
          }
          const now = yield* Clock.currentTimeMillis
          const signed = signedOp({ op: "recover", guest_id: 100, params: { ...plan.gatedParams } }, operator, now)
          const r = yield* runTimed(runRecover(plan, Option.some(signed), "test"))
          expect(r.outcome).toBe("done")

          // MAC: PVE keeps the backup's unless the restore asks for unique ones
          const [post] = yield* restorePost(sim, 100)
          expect(post?.params["unique"] === "1").toBe(freshMac(scenario))
          const g = Option.getOrThrow(yield* sim.guest(100))
          const ifaces = nics(g.config)
          expect(ifaces.length).toBeGreaterThan(0)
          for (const nic of ifaces) {
            expect(hwaddrOf(nic) === MAC100, nic).toBe(row(scenario).mac === "kept")
            expect(hwaddrOf(nic), nic).not.toBeNull()
            expect(nic.includes("link_down=1"), nic).toBe(IDENTITY_TABLE[scenario].linkDown)
          }
          // hostname kept: from the backup, and no directive to reset it
          expect(g.config["hostname"]).toBe("cust-alpha")

          // the directive the guest's first-boot unit reads, through the re-mounted bootstrap
          expect(Option.getOrNull(yield* bootstrapDirOf(sim, 100))).toBe(join(root, "100"))
          const after = bootstrapOf(root, 100)
          expect(after.identity.scenario).toBe(scenario)
          expect(after.identity.reset).toEqual(directiveResets(scenario))
          expect(after.identity.directive_id).not.toBe(before.boot.identity.directive_id)
          expect(after.generation).toBe(before.boot.generation + 1)
          // controller identity kept: the same token, host id and hub channel; the token still valid
          expect(tokenFileOf(root, 100)).toBe(before.token)
          expect(after.host_id).toBe(before.boot.host_id)
          expect(after.hub).toEqual(before.boot.hub)
          const verified = yield* Effect.flatMap(LocalTokens, (t) => t.verify(before.token.trim()))
          expect(Option.map(verified, (v) => v.vmid)).toEqual(Option.some(100))
          // and it stays the directive in force (a later republish keeps it)
          const rec = Option.getOrThrow(yield* Effect.flatMap(ControllerStore, (s) => s.get(V100)))
          expect(rec.identity).toEqual(after.identity)

          // inside the guest: restored as the backup held it, then the first-boot unit applies the directive
          const restored = Option.getOrThrow(yield* sim.guestInner(100))
          expect(restored.machineId).toBe(before.inner.machineId)
          expect(yield* sim.applyDirective(100, after.identity)).toBe("applied")
          const booted = Option.getOrThrow(yield* sim.guestInner(100))
          expect(booted.machineId === before.inner.machineId).toBe(row(scenario)["machine-id"] === "kept")
          expect(booted.sshHostKey === before.inner.sshHostKey).toBe(row(scenario)["ssh-host-keys"] === "kept")
          expect(booted.hostname).toBe(before.inner.hostname)
        }).pipe(Effect.provide(agent(sim, dbFile(), root)))
      }))
  }

  it.scoped("restore-test honours its row: a fresh MAC and every NIC link-down when started, no bootstrap (controller identity withheld), booted as the backup holds it", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const sim = yield* makeSimPve(yield* seedWith(durations(1000)))
      const path = dbFile()
      const root = scratchRoot()
      const atStart: Array<{ readonly config: Readonly<Record<string, unknown>>; readonly inner: Option.Option<unknown> }> = []
      // the scratch guest as PVE holds it when its start is asked for
      const observed = Layer.effect(
        Proxmox,
        Effect.map(Proxmox, (real): ProxmoxShape => ({
          ...real,
          start: (vmid) =>
            Effect.zipRight(
              Effect.flatMap(Effect.zip(sim.guest(vmid), sim.guestInner(vmid)), ([g, inner]) =>
                Effect.sync(() => void atStart.push({ config: Option.getOrThrow(g).config, inner }))),
              real.start(vmid)
            )
        }))
      ).pipe(Layer.provide(inProcessProxmox(sim, { node: "pve" })))
      const layer = Layer.mergeAll(
        agent(sim, path, root, observed),
        ProtectionStoreLive.pipe(Layer.provide(layerAt(path)), Layer.orDie),
        guestHealthFromSim(sim),
        restoreTestSettings({ scratchMin: 999_900, scratchMax: 999_999, timeZone: UTC, passIntervalSeconds: 60 })
      )
      const desired = Schema.decodeUnknownSync(DesiredState)({
        generation: 1,
        guests: [{ vmid: 100, hostname: "cust-alpha", cores: 2, memory_bytes: 2 * 1024 ** 3, swap_mib: 512, rootfs_gib: 16, power: "running", description: "", tags: [] }],
        storage: [{ id: "local", type: "local-dir", durable_id: "/var/lib/vz", class: "slow", role: "vzdump-target", policy: { schedule: "02:00", retention: { keep_last: 7 } }, state: "attached" }]
      })
      const { backup, inner, o } = yield* Effect.gen(function*() {
        // 100 has a controller (its bootstrap bind mount is in the backup's config) and a fresh backup
        yield* Effect.flatMap(ControllerOps, (c) => c.deploy(V100, IMAGE))
        const pve = yield* Proxmox
        const inner = Option.getOrThrow(yield* sim.guestInner(100))
        const dump = yield* runTimed(pve.vzdump({ vmid: V100, storage: StorageId.make("local"), mode: "snapshot" }))
        yield* runTimed(pve.waitTask(Option.getOrThrow(dump)))
        const backup = (yield* sim.storageContent("local")).map((e) => String(e["volid"])).filter((v) => v.includes("vzdump-lxc-100-2026_03_02")).at(0)
        const o = yield* runTimed(restoreTestPass(desired))
        return { backup, inner, o }
      }).pipe(Effect.provide(layer))
      expect(o._tag).toBe("tested")
      if (o._tag !== "tested") return
      expect(o.candidate.archive).toBe(backup)
      expect(IDENTITY_TABLE["restore-test"].linkDown).toBe(true)
      expect(freshMac("restore-test")).toBe(true)
      const scratch = (yield* sim.requests).find((r) => r.method === "POST" && r.path === "/nodes/pve/lxc" && r.params["vmid"] === String(o.scratch))
      // no hwaddr asked for: PVE generates a fresh one; the link is down from the restore on
      expect(scratch?.params["net0"]).toContain("link_down=1")
      expect(scratch?.params["net0"]).not.toContain("hwaddr")
      expect(atStart.length).toBe(1)
      const ifaces = nics(atStart[0]!.config)
      expect(ifaces.length).toBeGreaterThan(0)
      for (const nic of ifaces) {
        expect(nic).toContain("link_down=1")
        expect(hwaddrOf(nic)).not.toBeNull()
        expect(hwaddrOf(nic)).not.toBe(MAC100)
      }
      // controller identity withheld: no bootstrap mount, so no token, channel or directive reaches the copy
      expect(Object.values(atStart[0]!.config).filter((v) => String(v).includes("/etc/felhom-bootstrap"))).toEqual([])
      // machine-id and host key kept: it boots exactly as the backup holds it
      expect(atStart[0]!.inner).toEqual(Option.some(inner))
      expect(yield* sim.macConflicts).toEqual([])
    }))
})
