/**
 * Host loss end to end (issue 13), on the live clock: box A enrolls (new: K generated, R shown and
 * typed back, the escrow at the dev hub over loopback HTTPS), attaches the simulated PBS with K and
 * backs its guests up; the node is wiped; box B (fresh state, creds key and key directory) enrolls
 * in restore mode with A's code: K unwrapped from the hub's blob and installed, the restore engine
 * (src/programs/hostloss/restore.ts) brings every directed guest back from PBS. With a wrong code
 * nothing is installed and nothing is restored. Root only (HostSetup's files are root-owned).
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Option, Redacted, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { JournalLive } from "../src/layers/Journal.js"
import { type PbsKey } from "../src/layers/PbsKey.js"
import { Proxmox } from "../src/layers/Proxmox.js"
import { StorageTargetStoreLive } from "../src/layers/StorageTargetStore.js"
import { type HostSetup, hostSetupLayer } from "../src/layers/HostSetup.js"
import { enroll, type EnrollDeps, type EnrollInput } from "../src/programs/enroll/enroll.js"
import { enrollHubLayer } from "../src/programs/enroll/hubLive.js"
import { stateDatabase } from "../src/programs/enroll/services.js"
import { type EnrollHub, type EnrollSteps, EnrollStepsLive } from "../src/programs/enroll/ports.js"
import { restoreHost } from "../src/programs/hostloss/restore.js"
import { backupSaga } from "../src/programs/protection/backup.js"
import { UTC } from "../src/programs/protection/calendar.js"
import { credsVaultAt, makeVault, sealCreds } from "../src/programs/protection/creds.js"
import { StorageRemoverLive } from "../src/programs/protection/detach.js"
import { restoreTestSettings } from "../src/programs/protection/scratch.js"
import { StorageStatusLive } from "../src/programs/protection/status.js"
import { storageReconcilePass } from "../src/programs/protection/storage.js"
import { StorageId, VmId } from "../src/schema/ids.js"
import { StorageManifest } from "../src/schema/storage.js"
import { serveDevHub } from "../src/sim/hub/index.js"
import { makeSimPve, type SimPve } from "../src/sim/pve/index.js"
import { pbsKeySimLayer } from "../src/sim/pve/pbsKeySim.js"
import { NodeContext } from "@effect/platform-node"
import { type EnrollHost, makeEnrollHost, makePerson, type Responder, typeBack, writeCa } from "./enroll-support.js"
import { authzLayer } from "./engine-support.js"
import { isRoot } from "./privileged-support.js"
import { fakePrivileged, makeUsbWorld, PBS_FP } from "./storage-support.js"
import { durations, inProcessProxmox, seedWith } from "./support.js"

const PBS = StorageId.make("pbs-off")
const REPO = "felhom@pbs!host1@pbs.example.net:8007:store1"
const GUESTS = [{ vmid: 100, name: "cust-alpha" }, { vmid: 101, name: "cust-beta" }]

const hosts: Array<EnrollHost> = []
afterAll(() => {
  for (const h of hosts) h.cleanup()
})
const freshBox = () => {
  const h = makeEnrollHost()
  hosts.push(h)
  return h
}

const manifest = (pub: string) =>
  Schema.decodeUnknownSync(StorageManifest)([{
    id: PBS,
    type: "pbs",
    durable_id: { repo: REPO, fingerprint: PBS_FP },
    class: "slow",
    role: "pbs-offsite",
    creds: { ciphertext: sealCreds(pub, PBS, { password: "pbs-token-secret-0001" }) },
    state: "attached"
  }])

const pbsDirOf = (box: EnrollHost) => join(box.base, "pbs")

/** What the daemon would run on `box` over the simulator (its state dir holds the creds key and the database). */
const agentOn = (sim: SimPve, box: EnrollHost) => {
  const db = stateDatabase(box.stateDir)
  const store = StorageTargetStoreLive.pipe(Layer.provide(db))
  const priv = fakePrivileged(makeUsbWorld())
  return Layer.mergeAll(
    db,
    inProcessProxmox(sim, { node: "pve" }),
    JournalLive.pipe(Layer.provide(db)),
    authzLayer().pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    store,
    priv,
    StorageStatusLive,
    credsVaultAt(box.stateDir),
    StorageRemoverLive.pipe(Layer.provide(Layer.merge(store, priv))),
    pbsKeySimLayer(sim, pbsDirOf(box)),
    restoreTestSettings({ scratchMin: 9000, scratchMax: 9099, timeZone: UTC, passIntervalSeconds: 60 })
  ).pipe(Layer.orDie)
}

/** enroll's services with the simulator's PbsKey (K where the storage pass attaches it from). */
const enrollOn = (sim: SimPve, box: EnrollHost, hub: { url: string; caFile: string }): Layer.Layer<PbsKey | HostSetup | EnrollHub | EnrollSteps> =>
  Layer.mergeAll(
    hostSetupLayer(box.options()).pipe(Layer.provide(NodeContext.layer)),
    pbsKeySimLayer(sim, pbsDirOf(box)),
    enrollHubLayer({ url: hub.url, ca_file: hub.caFile }),
    EnrollStepsLive.pipe(Layer.provide(stateDatabase(box.stateDir)))
  ).pipe(Layer.orDie)

const input = (box: EnrollHost, hub: { url: string; caFile: string }, mode: "new" | "restore", token: string): EnrollInput => ({
  mode,
  hubUrl: hub.url,
  hubCa: hub.caFile,
  token: Effect.succeed(Redacted.make(token)),
  node: "pve",
  base: box.baseConfig,
  paperkey: false,
  golden: false
})

const runEnroll = (sim: SimPve, box: EnrollHost, hub: { url: string; caFile: string }, i: EnrollInput, respond: Responder) =>
  Effect.gen(function*() {
    const person = makePerson(respond)
    const deps: EnrollDeps = {
      isRoot: true,
      buildGolden: Effect.succeed(""),
      restoreHost: (r) =>
        restoreHost(r).pipe(
          Effect.map((report) => ({ ok: report.guests.every((g) => g.outcome === "restored"), human: JSON.stringify(report.guests), json: report })),
          Effect.provide(agentOn(sim, box)),
          Effect.orDie
        )
    }
    const exit = yield* enroll(i, deps).pipe(Effect.provide(enrollOn(sim, box, hub)), Effect.provide(person.layer), Effect.exit)
    return { exit, person }
  })

/** Box A: enrolled, PBS attached with K, its guests backed up; then the node is wiped. */
const liveAndDie = (sim: SimPve, hub: Effect.Effect.Success<ReturnType<typeof serveDevHub>> & { caFile: string }) =>
  Effect.gen(function*() {
    const a = freshBox()
    const token = `et${randomBytes(16).toString("hex")}`
    yield* hub.hub.addEnrollmentToken(token, { mode: "new" })
    const first = yield* runEnroll(sim, a, hub, input(a, hub, "new", token), typeBack)
    if (Exit.isFailure(first.exit)) throw new Error(`box A did not enroll: ${JSON.stringify(first.exit.cause)}`)
    const enrolled = first.exit.value
    const pub = (yield* Effect.orDie(makeVault(a.stateDir))).publicKey
    yield* Effect.gen(function*() {
      const snap = yield* storageReconcilePass({ storage: manifest(pub), policies: undefined })
      expect(snap.targets.find((t) => t.id === PBS), JSON.stringify(snap.targets)).toMatchObject({ verdict: "ok", available: true })
      const entry = (yield* Effect.flatMap(Proxmox, (p) => p.storageList)).find((s) => s.storage === PBS)
      expect(entry?.["encryption-key"]).toBe(enrolled.keyFingerprint)
      for (const g of GUESTS) {
        const r = yield* backupSaga(VmId.make(g.vmid), PBS, "schedule")
        expect(r.result, r.detail).toBe("ok")
      }
    }).pipe(Effect.provide(agentOn(sim, a)))
    yield* sim.wipeNode()
    expect(yield* sim.guests).toEqual([])
    const restoreToken = `et${randomBytes(16).toString("hex")}`
    yield* hub.hub.addEnrollmentToken(restoreToken, {
      mode: "restore",
      host_id: enrolled.hostId,
      bundle: {
        pbs_namespace: "host1",
        tunnel_token: Redacted.make("tunnel-token-secret-abcdef0123"),
        storage: manifest,
        directive: { guests: GUESTS }
      }
    })
    return { code: first.person.code()!, fingerprint: enrolled.keyFingerprint, hostId: enrolled.hostId, restoreToken }
  })

describe.skipIf(!isRoot)("host loss, end to end: enroll → back up → wipe → enroll --restore-mode", () => {
  it.live("with the code: K back, every directed guest restored and running; with a wrong code first: nothing installed or restored", () =>
    Effect.scoped(Effect.gen(function*() {
      const sim = yield* makeSimPve(yield* seedWith(durations(200)))
      const hubBox = freshBox()
      const served = yield* serveDevHub({ host: "127.0.0.1", port: 0, apiKeys: {} })
      const hub = { ...served, caFile: writeCa(hubBox.base, served.caPem) }
      const lost = yield* liveAndDie(sim, hub)
      const b = freshBox()
      // a wrong code (a valid-looking one): nothing installed, nothing restored
      const answers = ["abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"]
      const wrong = yield* runEnroll(sim, b, hub, input(b, hub, "restore", lost.restoreToken), () => answers.shift())
      expect(wrong.person.said.join("\n")).toContain("does not unwrap the escrowed key")
      expect(Exit.isFailure(wrong.exit)).toBe(true)
      expect(yield* sim.guests).toEqual([])
      expect(existsSync(join(pbsDirOf(b), "encryption-key.json"))).toBe(false)
      // the code
      const right = yield* runEnroll(sim, b, hub, input(b, hub, "restore", lost.restoreToken), () => lost.code)
      if (Exit.isFailure(right.exit)) throw new Error(JSON.stringify(right.exit.cause))
      const r = right.exit.value
      expect(r.hostId).toBe(lost.hostId)
      expect(r.keyFingerprint).toBe(lost.fingerprint)
      expect(r.restore?.ok, r.restore?.human).toBe(true)
      for (const g of GUESTS) {
        const guest = Option.getOrThrow(yield* sim.guest(g.vmid))
        expect(guest.status).toBe("running")
        expect(guest.config["hostname"]).toBe(g.name)
      }
      expect(readFileSync(join(pbsDirOf(b), "encryption-key.json"), "utf8")).toContain(
        (JSON.parse(readFileSync(join(pbsDirOf(hosts[1]!), "encryption-key.json"), "utf8")) as { data: string }).data
      )
    })), 180_000)
})
