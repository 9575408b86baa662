/**
 * Where `provision` and `recover` take the desired state from: a file in the hub's format
 * (`--desired FILE`, as `plan --desired`), the hub itself (`--from-desired`, the same call the
 * daemon's loop makes), or one guest's JSON (`--spec FILE`). Every rejection is a usage error
 * (exit 2) that names the file and the path of each issue, never echoing the input.
 */
import type { FileSystem } from "@effect/platform"
import { Effect, Either, ParseResult, Schema } from "effect"
import { Hub } from "../../layers/Hub.js"
import { DesiredGuest, type DesiredState, decodeDesiredState } from "../../schema/desired.js"
import { StorageId, type VmId, VolumeId } from "../../schema/ids.js"
import type { CreateSource } from "../../schema/operations.js"
import { clip, withoutActual } from "../../schema/text.js"
import { CliFailure, usage } from "./failure.js"
import { readBytes } from "./input.js"

const parseJson = (path: string, bytes: Uint8Array) =>
  Effect.try({
    try: () => JSON.parse(new TextDecoder().decode(bytes)) as unknown,
    catch: () => usage(`${path} is not JSON`)
  })

/** A desired-state file in the hub's format. */
export const readDesiredFile = (path: string): Effect.Effect<DesiredState, CliFailure, FileSystem.FileSystem> =>
  Effect.flatMap(Effect.flatMap(readBytes(path), (b) => parseJson(path, b)), (u) =>
    Either.match(decodeDesiredState(u), { onLeft: (m) => Effect.fail(usage(`${path}: ${m}`)), onRight: Effect.succeed }))

/** The hub's current desired state; a hub that cannot be asked is an operation failure (exit 1). */
export const desiredFromHub: Effect.Effect<DesiredState, CliFailure, Hub> = Effect.flatMap(Hub, (hub) => hub.desiredState).pipe(
  Effect.mapError((e) => new CliFailure({ code: 1, message: `the hub's desired state: ${e.message}` }))
)

const decodeGuest = Schema.decodeUnknownEither(DesiredGuest, { errors: "all", onExcessProperty: "error" })

/** One DesiredGuest (`--spec FILE`): strict, an unknown key is an error as in the hub's format. */
export const readGuestFile = (path: string): Effect.Effect<DesiredGuest, CliFailure, FileSystem.FileSystem> =>
  Effect.flatMap(Effect.flatMap(readBytes(path), (b) => parseJson(path, b)), (u) =>
    Either.match(decodeGuest(u), {
      onLeft: (e) => {
        const issues = ParseResult.ArrayFormatter.formatErrorSync(e).slice(0, 8)
        const where = (p: ReadonlyArray<PropertyKey>) => (p.length === 0 ? "(root)" : p.map(String).join("."))
        return Effect.fail(usage(`${path}: not a guest spec: ${issues.map((i) => `${where(i.path)}: ${clip(withoutActual(i.message), 160)}`).join("; ")}`))
      },
      onRight: Effect.succeed
    }))

/** Guest `vmid` of a desired state, or a usage error saying where it was looked for. */
export const guestOf = (desired: DesiredState, vmid: VmId, from: string): Effect.Effect<DesiredGuest, CliFailure> => {
  const g = desired.guests.find((x) => x.vmid === vmid)
  return g === undefined ? Effect.fail(usage(`guest ${vmid} is not in ${from} (generation ${desired.generation})`)) : Effect.succeed(g)
}

/**
 * The golden archive and its storage: the flags when given (both), else the desired state's
 * `provisioning`. Whether the archive is registered is the planner's question, not this one's.
 */
export const sourceOf = (
  flags: { readonly archive: string | undefined; readonly storage: string | undefined },
  desired: DesiredState | null
): Effect.Effect<CreateSource, CliFailure> => {
  if (flags.archive !== undefined || flags.storage !== undefined) {
    if (flags.archive === undefined || flags.storage === undefined) return Effect.fail(usage("--archive and --storage go together"))
    const archive = Schema.decodeUnknownOption(VolumeId)(flags.archive)
    const storage = Schema.decodeUnknownOption(StorageId)(flags.storage)
    if (archive._tag === "None") return Effect.fail(usage("--archive is a PVE volume id, e.g. local:backup/vzdump-lxc-9000-….tar.zst"))
    if (storage._tag === "None") return Effect.fail(usage("--storage is a PVE storage id, e.g. local-lvm"))
    return Effect.succeed({ archive: archive.value, storage: storage.value })
  }
  const p = desired?.provisioning
  return p === undefined
    ? Effect.fail(usage("no golden archive: the desired state has no provisioning block; give --archive and --storage"))
    : Effect.succeed({ archive: p.golden_archive, storage: p.storage })
}
