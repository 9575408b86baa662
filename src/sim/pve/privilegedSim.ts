/**
 * The Privileged layer for the in-process simulator (the demo, `felhom-agent sim stack`), where
 * the agent runs as a normal user: no `pct`, no chown to 100000. The controller's bootstrap half
 * is simulated, everything else is the real layer:
 * - writeBootstrap / removeBootstrap write plain files (mode 0600, the current user) below a
 *   scratch bootstrap root, atomically like the root helper (temp file, rename);
 * - bindMountIntoGuest / unbindFromGuest set or delete `mpN: <hostPath>,mp=<guestPath>,ro=1,backup=0`
 *   on the simulated guest's config through SimPve.setMountPoint (running or stopped, refused while
 *   locked), which is where the simulated controller (src/sim/controller/) finds its directory.
 * Arguments are validated by the same schemas as the real layer, so a test against the simulator
 * fails where production would. Pass the scratch root as `privileged.bootstrap_root` too, so the
 * programs compute the same host paths the real layer would.
 */
import { Effect, Layer, Option } from "effect"
import { mkdir, open, rename, rm, rmdir } from "node:fs/promises"
import { join } from "node:path"
import {
  type BootstrapWriteSpec,
  check,
  type GuestBindMountSpec,
  type GuestUnbindSpec,
  invalid,
  Privileged,
  type PrivilegedShape,
  validBootstrapFiles
} from "../../layers/Privileged.js"
import { BOOTSTRAP_FILES } from "../../schema/bootstrap.js"
import { VmId } from "../../schema/ids.js"
import {
  GuestPath,
  isSafeAbsolutePath,
  isStrictlyInside,
  MountPointIndex,
  PrivilegedError
} from "../../schema/privileged.js"
import type { SetMountPointResult, SimPve } from "./sim.js"

/** What pct prints for each refusal (exit 255, as pct's own errors). */
const PCT_REFUSAL: { readonly [K in Exclude<SetMountPointResult, "ok">]: string } = {
  absent: "Configuration file does not exist",
  locked: "CT is locked",
  invalid: "invalid mount point format"
}

const errnoOf = (e: unknown): string => {
  const code = (e as { code?: unknown } | undefined)?.code
  return typeof code === "string" ? code : "unknown error"
}

const fsFailure = (what: string) => (e: unknown) =>
  new PrivilegedError({
    reason: "NonZeroExit",
    command: "felhom-bootstrap",
    exitCode: 1,
    message: `felhom-bootstrap: ${what} failed (${errnoOf(e)})`
  })

/** The simulated Privileged service over `real` (everything but the four bootstrap methods). */
export const makePrivilegedSim = (real: PrivilegedShape, sim: SimPve, scratchRoot: string): PrivilegedShape => {
  const pctSet = (vmid: VmId, key: string, value: string | null) =>
    Effect.flatMap(sim.setMountPoint(vmid, key, value), (r) =>
      r === "ok"
        ? Effect.void
        : Effect.fail(
          new PrivilegedError({
            reason: "NonZeroExit",
            command: "pct",
            exitCode: 255,
            stderrTail: `${PCT_REFUSAL[r]}\n`,
            message: "pct: exited with status 255"
          })
        ))

  const bindMountIntoGuest = (spec: GuestBindMountSpec) =>
    Effect.gen(function*() {
      const vmid = yield* check("pct", "vmid", VmId)(spec.vmid)
      const index = yield* check("pct", "mpIndex", MountPointIndex)(spec.mpIndex)
      const guestPath = yield* check("pct", "guestPath", GuestPath)(spec.guestPath)
      if (typeof spec.readOnly !== "boolean") return yield* invalid("pct", "readOnly")
      if (!isSafeAbsolutePath(spec.hostPath) || !isStrictlyInside(scratchRoot, spec.hostPath)) {
        return yield* invalid("pct", "hostPath")
      }
      yield* pctSet(vmid, `mp${index}`, `${spec.hostPath},mp=${guestPath},ro=${spec.readOnly ? 1 : 0},backup=0`)
    })

  const unbindFromGuest = (spec: GuestUnbindSpec) =>
    Effect.gen(function*() {
      const vmid = yield* check("pct", "vmid", VmId)(spec.vmid)
      const index = yield* check("pct", "mpIndex", MountPointIndex)(spec.mpIndex)
      yield* pctSet(vmid, `mp${index}`, null)
    })

  const writeBootstrap = (spec: BootstrapWriteSpec) =>
    Effect.gen(function*() {
      const vmid = yield* check("felhom-bootstrap", "vmid", VmId)(spec.vmid)
      const files = yield* validBootstrapFiles(spec.files)
      const dir = join(scratchRoot, String(vmid))
      yield* Effect.tryPromise({ try: () => mkdir(dir, { recursive: true, mode: 0o755 }), catch: fsFailure("mkdir") })
      for (const [name, bytes] of files) {
        const tmp = join(dir, `.felhom-bootstrap.${process.pid}.${name}`)
        yield* Effect.tryPromise({
          try: async () => {
            const fh = await open(tmp, "w", 0o600)
            try {
              await fh.writeFile(bytes)
              await fh.sync()
            } finally {
              await fh.close()
            }
            await rename(tmp, join(dir, name))
          },
          catch: fsFailure("write")
        })
      }
    })

  const removeBootstrap = (vmidIn: VmId) =>
    Effect.gen(function*() {
      const vmid = yield* check("felhom-bootstrap", "vmid", VmId)(vmidIn)
      const dir = join(scratchRoot, String(vmid))
      for (const name of Object.values(BOOTSTRAP_FILES)) {
        yield* Effect.tryPromise({ try: () => rm(join(dir, name), { force: true }), catch: fsFailure("remove") })
      }
      const gone = yield* Effect.tryPromise(() => rmdir(dir)).pipe(
        Effect.as(true),
        Effect.catchAll((e) =>
          errnoOf(e.error) === "ENOENT"
            ? Effect.succeed(false)
            : Effect.fail(fsFailure("rmdir (the directory holds files the agent did not write)")(e.error))
        )
      )
      return { removed: gone }
    })

  return { ...real, bindMountIntoGuest, unbindFromGuest, writeBootstrap, removeBootstrap }
}

/** The layer: the real Privileged from the context, its bootstrap half simulated. */
export const privilegedSimLayer = (sim: SimPve, scratchRoot: string) =>
  Layer.effect(Privileged, Effect.map(Privileged, (real) => makePrivilegedSim(real, sim, scratchRoot)))

/** The directory a guest's bootstrap mount names in its simulated config, if it has one. */
export const bootstrapDirOf = (sim: SimPve, vmid: number, guestPath = "/etc/felhom-bootstrap") =>
  Effect.map(sim.guest(vmid), (g) =>
    Option.flatMap(g, (view) => {
      for (const [key, value] of Object.entries(view.config)) {
        if (!/^mp\d+$/.test(key) || typeof value !== "string") continue
        const [source, ...props] = value.split(",")
        if (source !== undefined && props.includes(`mp=${guestPath}`)) return Option.some(source)
      }
      return Option.none()
    }))
