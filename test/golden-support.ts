/**
 * Wiring for the golden-build tests: the real Privileged and PrivilegedGolden layers over fake
 * root executables (pct, vzdump, felhom-golden) that record every argv, write a real archive file
 * under a root-owned scratch storage path and print vzdump's log; each call's effect on the host
 * is mirrored into the in-process PVE simulator (sim.rootCreate / rootDump / rootDestroy), so the
 * archive is one the simulator can restore (keyctl=1,nesting=1 and all). Plus the in-process
 * Proxmox client, a real journal and golden store on one SQLite file, and the settings.
 *
 * Faults: `failNext(bin, "pct.create")` makes that fake's next such call exit 1 (once).
 */
import { NodeContext } from "@effect/platform-node"
import { Effect, Layer, Schema } from "effect"
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import { layerAt } from "../src/layers/Database.js"
import { GoldenStoreLive } from "../src/layers/GoldenStore.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { JournalLive } from "../src/layers/Journal.js"
import {
  DEFAULT_HOST_PATHS,
  Privileged,
  PrivilegedError,
  PrivilegedGolden,
  privilegedGoldenLayerAt,
  privilegedLayerAt,
  type PrivilegedShape
} from "../src/layers/Privileged.js"
import { goldenSettings, type GoldenSettingsShape } from "../src/programs/golden/build.js"
import { restoreTestSettings } from "../src/programs/protection/scratch.js"
import { UTC } from "../src/programs/protection/calendar.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { StorageId, VolumeId } from "../src/schema/ids.js"
import type { SimPve } from "../src/sim/pve/index.js"
import { makeBinDir, shq } from "./privileged-support.js"
import { inProcessProxmox } from "./support.js"

export const SCRATCH_MIN = 999_900
export const SCRATCH_MAX = 999_999

export const SETTINGS: GoldenSettingsShape = {
  template: VolumeId.make("local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst"),
  storage: StorageId.make("local-lvm"),
  dumpStorage: StorageId.make("local"),
  bridge: "vmbr0",
  memoryMiB: 1024,
  cores: 2,
  rootfsGiB: 4,
  refreshDays: 30,
  retryHours: 12
}

/** The fake root world: a bin dir of recording fakes and a root-owned storage path with dump/. */
export const makeRootWorld = () => {
  const bin = makeBinDir("golden")
  // the storage path must be root-owned and only root-writable (the archive's trusted tree)
  const vz = join(bin.root, "vz")
  mkdirSync(join(vz, "dump"), { recursive: true })
  chmodSync(bin.root, 0o755)
  chmodSync(vz, 0o755)
  chmodSync(join(vz, "dump"), 0o755)
  const dump = join(vz, "dump")
  const failIf = (name: string) =>
    `if [ -f ${shq(join(bin.dir, `fail.${name}`))} ]; then rm -f ${shq(join(bin.dir, `fail.${name}`))}; ` +
    `echo ${shq(`${name}: failed (injected)`)} >&2; exit 1; fi; ` +
    `if [ -f ${shq(join(bin.dir, `always.${name}`))} ]; then echo ${shq(`${name}: failed (injected)`)} >&2; exit 1; fi`
  bin.logged("pct", [
    `case "$1" in`,
    `  create) ${failIf("pct.create")} ;;`,
    `  destroy) ${failIf("pct.destroy")} ;;`,
    `esac`,
    "exit 0"
  ].join("\n"))
  const counter = join(bin.dir, "vzdump.counter")
  bin.logged("vzdump", [
    failIf("vzdump"),
    `n=$(cat ${shq(counter)} 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > ${shq(counter)}`,
    `f=${shq(dump)}/vzdump-lxc-$1-2026_01_10-0$((n / 3600 % 10))_$(printf '%02d' $((n / 60 % 60)))_$(printf '%02d' $((n % 60))).tar.zst`,
    `printf 'felhom golden archive %s of %s\\n' "$n" "$1" > "$f"`,
    `chmod 0600 "$f"`,
    `echo "INFO: starting new backup job: vzdump $*"`,
    `echo "INFO: creating vzdump archive '$f'"`,
    `echo "INFO: Finished Backup of VM $1 (00:00:42)"`
  ].join("\n"))
  bin.logged("felhom-golden", [
    `case "$1" in`,
    `  install) ${failIf("golden.install")}; echo "installed $2" ;;`,
    `  checksum) ${failIf("golden.checksum")}; s=$(sha256sum "$2") || exit 3; echo "sha256 \${s%% *}" ;;`,
    `  *) exit 2 ;;`,
    `esac`
  ].join("\n"))
  type Fault = "pct.create" | "pct.destroy" | "vzdump" | "golden.install" | "golden.checksum"
  const failNext = (what: Fault) => writeFileSync(join(bin.dir, `fail.${what}`), "")
  /** Every such call fails until `heal(what)`. */
  const failAlways = (what: Fault) => writeFileSync(join(bin.dir, `always.${what}`), "")
  const heal = (what: Fault) => rmSync(join(bin.dir, `always.${what}`), { force: true })
  /** Every archive file the fake vzdump wrote, by name. */
  const archives = () => readdirSync(dump).filter((f) => f.endsWith(".tar.zst")).sort()
  const archiveBytes = (name: string) => readFileSync(join(dump, name))
  return { bin, vz, dump, failNext, failAlways, heal, archives, archiveBytes, exists: (name: string) => existsSync(join(dump, name)) }
}

export type RootWorld = ReturnType<typeof makeRootWorld>

const configFor = (world: RootWorld) =>
  Schema.decodeUnknownSync(AgentConfigFile)({
    privileged: {
      mode: "direct",
      timeout_seconds: 10,
      archive_storage_paths: [world.vz],
      commands: {
        pct: join(world.bin.dir, "pct"),
        vzdump: join(world.bin.dir, "vzdump"),
        "felhom-golden": join(world.bin.dir, "felhom-golden")
      }
    },
    golden: { template: SETTINGS.template, storage: SETTINGS.storage, install_timeout_seconds: 60 }
  })

const pctRefusal = (message: string) =>
  new PrivilegedError({ reason: "NonZeroExit", command: "pct", exitCode: 255, stderrTail: `${message}\n`, message: "pct: exited with status 255" })

/**
 * The real layers over the fakes, each call mirrored into the simulator as the real command would
 * change the host: pct create → a stopped keyctl+nesting container (its net0 on vmbr0, which the
 * helper's install would add); felhom-golden install → refused unless the simulated container
 * carries the marker and runs (as the helper checks); vzdump → the archive as a backup volume;
 * pct destroy → the container gone (refused while running or locked, as pct does).
 */
export const rootLayers = (world: RootWorld, sim: SimPve) => {
  const config = Layer.succeed(AgentConfig, { source: undefined, file: configFor(world) })
  const real = Layer.mergeAll(privilegedLayerAt(DEFAULT_HOST_PATHS), privilegedGoldenLayerAt(DEFAULT_HOST_PATHS)).pipe(
    Layer.provide(config),
    Layer.provide(NodeContext.layer)
  )
  const mirrored = Layer.effect(
    Privileged,
    Effect.map(Privileged, (p): PrivilegedShape => ({
      ...p,
      createGoldenContainer: (spec) =>
        Effect.tap(p.createGoldenContainer(spec), () =>
          Effect.flatMap(
            sim.rootCreate(spec.vmid, {
              arch: "amd64",
              ostype: "debian",
              hostname: spec.hostname,
              cores: spec.cores,
              memory: spec.memory,
              swap: 512,
              features: "keyctl=1,nesting=1",
              unprivileged: 1,
              net0: "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:99:00:01,ip=dhcp,type=veth",
              rootfs: `${spec.storage}:vm-${spec.vmid}-disk-0,size=${spec.rootfsGiB}G`
            }),
            (r) => (r === "ok" ? Effect.void : Effect.fail(pctRefusal(`CT ${spec.vmid} already exists on node 'pve'`)))
          )),
      dumpGoldenArchive: (spec) =>
        Effect.tap(p.dumpGoldenArchive(spec), (a) =>
          a.volumeId === undefined ? Effect.void : Effect.asVoid(sim.rootDump(spec.vmid, a.volumeId))),
      destroyGoldenContainer: (vmid) =>
        Effect.tap(p.destroyGoldenContainer(vmid), () =>
          Effect.flatMap(sim.rootDestroy(vmid), (r) =>
            r === "ok" ? Effect.void : Effect.fail(pctRefusal(r === "running" ? `CT ${vmid} is running - destroy failed` : `CT ${vmid} is locked`))))
    }))
  ).pipe(Layer.provide(real))
  const goldenMirrored = Layer.effect(
    PrivilegedGolden,
    Effect.map(PrivilegedGolden, (g) => ({
      ...g,
      installGolden: (spec: Parameters<typeof g.installGolden>[0]) =>
        Effect.flatMap(sim.guest(spec.vmid), (guest) =>
          guest._tag === "Some" && guest.value.config["hostname"] === spec.hostname && guest.value.status === "running"
            ? g.installGolden(spec)
            : Effect.fail(new PrivilegedError({ reason: "NonZeroExit", command: "felhom-golden", exitCode: 3, message: "felhom-golden: exited with status 3" })))
    }))
  ).pipe(Layer.provide(real))
  return Layer.mergeAll(mirrored, goldenMirrored)
}

/** Proxmox, a real journal and golden store on one database file, the queue, the settings. */
export const storeLayers = (sim: SimPve, path: string) => {
  const db = layerAt(path)
  return Layer.mergeAll(
    inProcessProxmox(sim, { node: "pve" }),
    JournalLive.pipe(Layer.provide(db)),
    GoldenStoreLive.pipe(Layer.provide(db)),
    GuestQueue.layer(4),
    goldenSettings(SETTINGS),
    restoreTestSettings({ scratchMin: SCRATCH_MIN, scratchMax: SCRATCH_MAX, timeZone: UTC, passIntervalSeconds: 60 })
  ).pipe(Layer.orDie)
}
