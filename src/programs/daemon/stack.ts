/**
 * `felhom-agent sim stack`: the whole dev environment on loopback in one process, for people
 * building the controller against the agent. The PVE simulator and the dev hub, the daemon wired
 * as production wires it on a host with a local API (only its Privileged bootstrap half is
 * simulated: plain files in a scratch root, bind mounts as simulated guest config), N guests the
 * hub wants provisioned from the seed's golden archive with a controller each, and a simulated
 * controller in every running guest that has its bootstrap mount. Once every controller has
 * reported healthy through the local API it prints the endpoints and writes `--info FILE`; then
 * it runs until interrupted, and everything (temp dir included) goes with the scope.
 *
 * Threat notes: every listener is on 127.0.0.1 and refuses anything else (the simulators' keys
 * and tokens are public). The info file holds live secrets of this stack only (PVE token, hub
 * key, each guest's local-API token): written 0600 and atomically, marked dev_only, and the
 * printed summary names where they are instead of printing them.
 */
import { Command, FileSystem } from "@effect/platform"
import { Cause, Clock, Console, Data, Duration, Effect, Either, Exit, Fiber, Layer, Option, Queue, Redacted, Ref, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { layerFrom } from "../../layers/Config.js"
import { guestHealthFromSim } from "../../layers/GuestHealth.js"
import { DEFAULT_HOST_PATHS, privilegedLayerAt } from "../../layers/Privileged.js"
import { AgentConfigFile } from "../../schema/config.js"
import { DesiredState } from "../../schema/desired.js"
import { SignedJob } from "../../schema/hub.js"
import type { CertPin } from "../../schema/bootstrap.js"
import { readBootstrap, simControllers } from "../../sim/controller/index.js"
import { serveDevHub } from "../../sim/hub/index.js"
import { decodeSeed, defaultSeedJson, serveSimPve } from "../../sim/pve/index.js"
import { pbsKeySimLayer } from "../../sim/pve/pbsKeySim.js"
import { bootstrapDirOf, privilegedSimLayer } from "../../sim/pve/privilegedSim.js"
import { newOp, signOp } from "../cli/op.js"
import { ProtectionEnvLive } from "../protection/env.js"
import { reportNowFromQueue } from "../protection/status.js"
import { controllersLayer, daemonGates, startControllers } from "./controllers.js"
import { type DaemonState, initialState, runDaemon } from "./loop.js"
import { startProtection } from "./protection.js"
import { protectionBoardLayer, protectionLayerWith, servicesLayer } from "./root.js"

export class StackFailed extends Data.TaggedError("StackFailed")<{ readonly message: string }> {}

export interface StackOptions {
  /** How many guests (vmids 200..) the hub wants, each with a controller: 1 to 20. */
  readonly guests: number
  readonly pvePort: number
  readonly hubPort: number
  /** The local API's port; 0 picks a free one (the info file says which). */
  readonly localApiPort: number
  /** Where to write the info JSON (0600), once every controller is healthy. */
  readonly infoFile: string | undefined
  /** Give up on the controllers coming up after this long (default 180 s). */
  readonly readyTimeout?: Duration.DurationInput
}

export const STACK_HOST_ID = "stack-host"
export const STACK_KEY_ID = "stack-operator"
export const STACK_IMAGE = "registry.felhom.dev/felhom/controller:1.0.0"
export const STACK_FIRST_VMID = 200
const GOLDEN = "local:backup/vzdump-lxc-9000-2026_01_10-02_00_00.tar.zst"

const say = (s: string) => Console.log(`[stack] ${s}`)

// ---------------------------------------------------------------------------------------------
// small pieces the demo could share

/** A throwaway operator key made by the real ssh-keygen, and its authz signer line. */
export const makeOperatorKey = (dir: string, keyId: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const keyFile = `${dir}/operator`
    const code = yield* Command.exitCode(Command.make("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", keyId, "-f", keyFile))
    if (code !== 0) return yield* new StackFailed({ message: `ssh-keygen exited with ${code} making the operator key` })
    const pub = (yield* fs.readFileString(`${keyFile}.pub`)).trim()
    return { keyFile, keyId, signer: `role=operational,key-id=${keyId} ${pub}` }
  })

/** An op signed with the operator key (ssh-keygen -Y sign), as the hub hands it to the agent. */
export const signedJob = (o: {
  readonly dir: string
  readonly key: { readonly keyFile: string; readonly keyId: string }
  readonly hostId: string
  readonly id: string
  readonly op: string
  readonly guestId: number | null
  readonly params: Readonly<Record<string, unknown>>
}) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const blob = yield* newOp({
      op: o.op,
      hostId: o.hostId,
      guestId: o.guestId,
      params: JSON.stringify(o.params),
      expiresIn: Duration.minutes(10),
      notBefore: undefined,
      keyId: o.key.keyId
    })
    const blobPath = `${o.dir}/${o.id}.json`
    yield* fs.writeFile(blobPath, blob)
    const signature = yield* fs.readFileString(yield* signOp({ keyFile: o.key.keyFile, file: blobPath }))
    // decoded like any job off the hub's wire, so a bad id or op fails here, not in the agent
    return yield* Schema.decodeUnknown(SignedJob)({
      id: o.id,
      op: o.op,
      guest_id: o.guestId,
      params: o.params,
      blob: Buffer.from(blob).toString("base64"),
      signature
    }).pipe(Effect.mapError((e) => new StackFailed({ message: `job ${o.id}: ${e.message}` })))
  })

/**
 * Polls `check` (real time) until it yields a value, poking the agent so it does not wait its
 * poll interval; fails when `agent` ends first (its failure is the reason) or time runs out.
 */
export const waitForAgent = <A, E, R, AE>(o: {
  readonly what: string
  readonly poke: Queue.Queue<void>
  readonly agent: Fiber.Fiber<unknown, AE>
  readonly check: Effect.Effect<Option.Option<A>, E, R>
  readonly timeout: Duration.DurationInput
}) =>
  Effect.gen(function*() {
    const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(Duration.decode(o.timeout))
    for (let i = 0;; i++) {
      const done = yield* Fiber.poll(o.agent)
      if (Option.isSome(done)) {
        return yield* new StackFailed({
          message: Exit.match(done.value, {
            onSuccess: () => `the agent stopped while waiting for ${o.what}`,
            onFailure: (c) => `the agent failed while waiting for ${o.what}: ${firstLine(c)}`
          })
        })
      }
      const r = yield* o.check
      if (Option.isSome(r)) return r.value
      if ((yield* Clock.currentTimeMillis) > deadline) return yield* new StackFailed({ message: `timed out waiting for ${o.what}` })
      if (i % 4 === 0) yield* Queue.offer(o.poke, undefined)
      yield* Effect.sleep("250 millis")
    }
  })

const firstLine = (c: Cause.Cause<unknown>): string =>
  Cause.pretty(c).split("\n").find((l) => l.trim() !== "")?.trim() ?? "unknown"

// ---------------------------------------------------------------------------------------------
// the info file

const InfoPin = Schema.Struct({ spki_sha256: Schema.String, cert_sha256: Schema.String })

/** What `--info FILE` holds (dev only: live secrets of this stack). */
export const StackInfo = Schema.Struct({
  dev_only: Schema.Literal(true),
  work_dir: Schema.String,
  pve: Schema.Struct({ url: Schema.String, token_id: Schema.String, token_secret: Schema.String, fingerprint_sha256: Schema.String }),
  hub: Schema.Struct({ url: Schema.String, api_key: Schema.String, host_id: Schema.String, ca_pem_file: Schema.String }),
  local_api: Schema.Struct({ url: Schema.String, pins: Schema.Array(InfoPin) }),
  guests: Schema.Array(Schema.Struct({
    vmid: Schema.Int,
    hostname: Schema.String,
    image: Schema.String,
    bootstrap_dir: Schema.String,
    token: Schema.String
  })),
  operator: Schema.Struct({ key_file: Schema.String, key_id: Schema.String })
})
export type StackInfo = typeof StackInfo.Type

/** `--info` names a file that is there and is not a stack's info file: never clobbered. */
export class StackInfoRefused extends Data.TaggedError("StackInfoRefused")<{ readonly message: string }> {}

/**
 * The info file describes a running stack, so its presence means "ready": a previous stack's
 * file is removed before anything starts (anything else at that path is refused, not
 * overwritten: a mistyped --info must not eat a file), and this stack's is removed with it.
 */
const clearStaleInfo = (path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const stat = yield* Effect.either(fs.stat(path))
    if (Either.isLeft(stat)) return
    const refused = new StackInfoRefused({ message: `--info ${path} exists and is not a sim stack info file: not overwriting it` })
    if (stat.right.type !== "File" || stat.right.size > 1024 * 1024) return yield* refused
    const text = yield* Effect.mapError(fs.readFileString(path), () => refused)
    if (Either.isLeft(Schema.decodeUnknownEither(Schema.parseJson(StackInfo))(text))) return yield* refused
    yield* fs.remove(path)
  })

/**
 * Written beside itself (created exclusively, 0600 from the first byte: nothing planted at the
 * temp name is followed) and renamed, so a reader never sees half of it.
 */
const writePrivate = (path: string, text: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const tmp = `${path}.${process.pid}.tmp`
    yield* fs.writeFileString(tmp, text, { mode: 0o600, flag: "wx" })
    yield* fs.rename(tmp, path).pipe(Effect.tapError(() => fs.remove(tmp).pipe(Effect.ignore)))
  })

// ---------------------------------------------------------------------------------------------

const desiredGuest = (vmid: number) => ({
  vmid,
  hostname: `stack-${vmid}`,
  cores: 1,
  memory_bytes: 512 * 1048576,
  swap_mib: 0,
  rootfs_gib: 4,
  power: "running",
  description: "felhom sim stack guest",
  tags: ["felhom"],
  controller: { image: STACK_IMAGE }
})

export const runStack = (o: StackOptions) =>
  Effect.scoped(Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    if (o.infoFile !== undefined) yield* clearStaleInfo(o.infoFile)
    const dir = yield* fs.makeTempDirectoryScoped({ prefix: "felhom-stack-" })
    const bootstrapRoot = `${dir}/bootstrap`
    yield* fs.makeDirectory(bootstrapRoot, { mode: 0o755 })

    // an empty node but for the golden archive: the stack's guests are the agent's own
    const seed = yield* decodeSeed(
      {
        ...(defaultSeedJson as object),
        guests: [],
        task_durations_ms: { vzrestore: 1500, vzstart: 500, vzstop: 500, vzshutdown: 500, resize: 500, vzdestroy: 500, vzdump: 1500, imgdel: 300 }
      },
      "stack"
    )
    const pve = yield* serveSimPve({ host: "127.0.0.1", port: o.pvePort, seed })
    const apiKey = `stack-hub-key-${randomBytes(16).toString("hex")}`
    const hubServer = yield* serveDevHub({ host: "127.0.0.1", port: o.hubPort, apiKeys: { [apiKey]: STACK_HOST_ID } })
    const hub = hubServer.hub
    const caFile = `${dir}/hub-ca.pem`
    yield* fs.writeFileString(caFile, hubServer.caPem)

    const key = yield* makeOperatorKey(dir, STACK_KEY_ID)
    const file = yield* Schema.decodeUnknown(AgentConfigFile)({
      host_id: STACK_HOST_ID,
      state_dir: `${dir}/state`,
      proxmox: { url: pve.url, token_id: pve.tokenId, token_secret: pve.tokenSecret, tls: { fingerprint_sha256: pve.fingerprint256 } },
      hub: { url: hubServer.url, api_key: apiKey, ca_file: caFile },
      authz: { signers: [key.signer] },
      privileged: { bootstrap_root: bootstrapRoot },
      protection: { time_zone: "UTC" },
      local_api: { listen: "127.0.0.1", port: o.localApiPort },
      controllers: {
        repositories: ["registry.felhom.dev/felhom/controller"],
        health_deadline_seconds: 30,
        contact_window_seconds: 60,
        heal_interval_seconds: 10
      }
    }).pipe(Effect.mapError((e) => new StackFailed({ message: `stack config: ${e.message}` })))

    // the daemon's graph as cli/daemon.ts builds it, but for the simulator's Privileged bootstrap
    // half and guest health (no real guest to probe)
    const poke = yield* Queue.sliding<void>(1)
    const reportNow = yield* Queue.sliding<void>(1)
    const state = yield* Ref.make<DaemonState>(initialState)
    const privileged = privilegedSimLayer(pve.sim, bootstrapRoot).pipe(Layer.provide(privilegedLayerAt(DEFAULT_HOST_PATHS)))
    const agentLayer = protectionBoardLayer.pipe(
      Layer.provideMerge(Layer.mergeAll(
        servicesLayer,
        protectionLayerWith(ProtectionEnvLive, guestHealthFromSim(pve.sim), privileged),
        reportNowFromQueue(reportNow),
        // the host's PBS key as the simulator plays it (none installed unless enrolled)
        pbsKeySimLayer(pve.sim, `${dir}/pbs-key`)
      )),
      Layer.provideMerge(layerFrom(file))
    )
    const agent = yield* Effect.forkScoped(
      runDaemon({ poke, state, reportNow, alongside: Effect.zipRight(startProtection(state), startControllers) }).pipe(
        Effect.provide(controllersLayer(daemonGates(state))),
        Effect.provide(agentLayer)
      )
    )
    const controllers = yield* simControllers(pve.sim)
    yield* say(`PVE simulator on ${pve.url}, dev hub on ${hubServer.url}; agent starting (work dir ${dir})`)

    // the operator vouches for the golden archive (the hub alone cannot name a provisioning source)
    yield* hub.enqueueJob(STACK_HOST_ID, yield* signedJob({
      dir,
      key,
      hostId: STACK_HOST_ID,
      id: "golden-register",
      op: "golden-register",
      guestId: null,
      params: { archive: GOLDEN }
    }))
    const timeout = o.readyTimeout ?? Duration.seconds(180)
    const golden = yield* waitForAgent({
      what: "the golden-register job",
      poke,
      agent,
      timeout,
      check: Effect.map(hub.jobResults(STACK_HOST_ID), (rs) => Option.fromNullable(rs.find((r) => r.result.id === "golden-register")))
    })
    if (golden.result.status !== "done") {
      return yield* new StackFailed({ message: `the golden archive was not registered: ${golden.result.status} (${golden.result.reason})` })
    }

    const vmids = Array.from({ length: o.guests }, (_, i) => STACK_FIRST_VMID + i)
    // only then the guests: before it, reconcile would only note golden_unverified
    const desired = yield* Schema.decodeUnknown(DesiredState)({
      generation: 0,
      provisioning: { golden_archive: GOLDEN, storage: "local-lvm" },
      guests: vmids.map(desiredGuest)
    }).pipe(Effect.mapError((e) => new StackFailed({ message: `stack desired state: ${e.message}` })))
    yield* hub.setDesired(STACK_HOST_ID, desired)
    yield* say(`hub wants ${vmids.length} guest(s) (${vmids.join(", ")}) from the golden archive, each with controller ${STACK_IMAGE}`)

    // healthy twice over: each simulated controller's own heartbeat was answered, and the agent's
    // host report shows it ok (the local API recorded it)
    const healthy = Effect.gen(function*() {
      const views = yield* controllers.views
      const report = (yield* hub.reports(STACK_HOST_ID)).at(-1)?.report
      const reported = report?.versions.controllers ?? []
      const ok = vmids.every((vmid) =>
        views.some((v) => v.vmid === vmid && v.state === "running" && v.reported === "healthy") &&
        reported.some((c) => c.vmid === vmid && c.state === "ok")
      )
      return ok ? Option.some(reported) : Option.none()
    })
    yield* waitForAgent({ what: `every controller (${vmids.join(", ")}) to report healthy`, poke, agent, timeout, check: healthy })

    // what each controller was given, read back from its bootstrap mount
    const guests = yield* Effect.forEach(vmids, (vmid) =>
      Effect.gen(function*() {
        const bootDir = yield* Effect.flatMap(bootstrapDirOf(pve.sim, vmid), Option.match({
          onNone: () => Effect.fail(new StackFailed({ message: `guest ${vmid} has no bootstrap mount` })),
          onSome: Effect.succeed
        }))
        const boot = yield* Effect.mapError(readBootstrap(bootDir), (e) => new StackFailed({ message: `guest ${vmid}: ${e.message}` }))
        return { vmid, bootDir, boot }
      }))
    const first = guests[0]!.boot.config.local_api
    const pins: ReadonlyArray<CertPin> = first.pins
    const info: StackInfo = {
      dev_only: true,
      work_dir: dir,
      pve: { url: pve.url, token_id: pve.tokenId, token_secret: pve.tokenSecret, fingerprint_sha256: pve.fingerprint256 },
      hub: { url: hubServer.url, api_key: apiKey, host_id: STACK_HOST_ID, ca_pem_file: caFile },
      local_api: { url: first.url, pins: pins.map((p) => ({ spki_sha256: p.spki_sha256, cert_sha256: p.cert_sha256 })) },
      guests: guests.map(({ vmid, bootDir, boot }) => ({
        vmid,
        hostname: boot.config.guest.hostname,
        image: boot.config.controller.image,
        bootstrap_dir: bootDir,
        token: Redacted.value(boot.token)
      })),
      operator: { key_file: key.keyFile, key_id: key.keyId }
    }
    if (o.infoFile !== undefined) {
      const infoFile = o.infoFile
      const text = `${JSON.stringify(info, null, 2)}\n`
      // removed on the way out only while it is still this stack's (another stack may own the path now)
      yield* Effect.acquireRelease(writePrivate(infoFile, text), () =>
        fs.readFileString(infoFile).pipe(
          Effect.flatMap((now) => (now === text ? fs.remove(infoFile) : Effect.void)),
          Effect.ignore
        ))
    }

    const lines = [
      "ready: every controller reported healthy through the local API",
      `  PVE simulator  ${pve.url}  token ${pve.tokenId}  TLS sha256 ${pve.fingerprint256}`,
      `  dev hub        ${hubServer.url}  host ${STACK_HOST_ID}  CA ${caFile}`,
      `  local API      ${first.url}  pins ${pins.map((p) => `spki ${p.spki_sha256}`).join(", ")}`,
      ...guests.map(({ vmid, bootDir, boot }) =>
        `  guest ${vmid}      ${boot.config.guest.hostname}  ${boot.config.controller.image}  bootstrap ${bootDir}`),
      `  operator key   ${key.keyFile} (key id ${key.keyId}; felhom-agent op sign --key ${key.keyFile})`,
      o.infoFile === undefined
        ? "  secrets (dev only): each guest's token is the local-token file in its bootstrap dir"
        : `  secrets (dev only: tokens, keys) are in ${o.infoFile}`,
      `Ctrl-C stops everything and removes the work dir${o.infoFile === undefined ? "" : " and the info file"}`
    ]
    yield* Effect.forEach(lines, say, { discard: true })

    // until interrupted, or until the agent itself ends (then the stack fails with its reason)
    const end = yield* Fiber.await(agent)
    return yield* new StackFailed({
      message: Exit.match(end, { onSuccess: () => "the agent stopped", onFailure: (c) => `the agent failed: ${firstLine(c)}` })
    })
  }))
