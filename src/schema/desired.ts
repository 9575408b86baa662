/**
 * The hub's desired state (SPEC §7a): which guests should exist, their spec and power state, and
 * where new guests are provisioned from (the golden archive, SPEC §10). Decoded strictly: an
 * unknown key is an error, because a field the agent silently ignores is a change the hub thinks
 * it made.
 */
import { Either, ParseResult, Schema } from "effect"
import { ImageRef } from "./bootstrap.js"
import { StorageId, VmId, VolumeId } from "./ids.js"
import { ProtectionPolicies, protectionIssues, redactCredsIn, StorageManifest } from "./storage.js"

const MiB = 1024 * 1024

/** RFC 1123 label: PVE puts it in /etc/hostname, so no dots and at most 63 characters. */
export const Hostname = Schema.String.pipe(
  Schema.filter((s) => /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(s), {
    message: () => "a hostname is an RFC 1123 label: 1-63 of [A-Za-z0-9-], not starting or ending with '-'"
  })
)

/** PVE's tag format (pve-tag); lower-case only, so the tag set compares without case folding. */
export const PveTag = Schema.String.pipe(
  Schema.filter((s) => s.length <= 128 && /^[a-z0-9_][a-z0-9_+.-]*$/.test(s), {
    message: () => "a tag is [a-z0-9_] then [a-z0-9_+.-], at most 128 characters"
  })
)

// Custom messages on every refinement: the default text echoes the rejected value.
const intIn = (min: number, max: number, what: string) =>
  Schema.Number.pipe(
    Schema.filter((n) => Number.isSafeInteger(n) && n >= min && n <= max, {
      message: () => `${what} is an integer between ${min} and ${max}`
    })
  )

export const DesiredGuest = Schema.Struct({
  vmid: VmId,
  hostname: Hostname,
  /** Absent: leave cores unmanaged (PVE's default is all host cores). */
  cores: Schema.optional(intIn(1, 512, "cores")),
  /** Bytes, as the hub speaks; the plan rounds up to whole MiB. */
  memory_bytes: intIn(16 * MiB, Number.MAX_SAFE_INTEGER, "memory_bytes"),
  swap_mib: intIn(0, 64 * 1024 * 1024, "swap_mib"),
  rootfs_gib: intIn(1, 65536, "rootfs_gib"),
  power: Schema.Literal("running", "stopped").annotations({
    message: () => ({ message: "power is \"running\" or \"stopped\"", override: true })
  }),
  // pve-container's own limit on the description
  description: Schema.String.pipe(
    Schema.filter((s) => s.length <= 8192, { message: () => "a description is at most 8192 characters" })
  ),
  tags: Schema.Array(PveTag),
  /**
   * The controller this guest runs (issue 11): deployed after the create (the back half), updated
   * when the image changes. Only images in `controllers.repositories` of the agent's config are
   * deployed or updated on the hub's word; anything else needs an operator's signature.
   */
  controller: Schema.optional(Schema.Struct({ image: ImageRef }).annotations({ message: () => "controller is an object { image }" }))
}).annotations({ message: () => "a guest is an object" })
export type DesiredGuest = typeof DesiredGuest.Type

export const Provisioning = Schema.Struct({
  golden_archive: VolumeId,
  storage: StorageId
}).annotations({ message: () => "provisioning is an object { golden_archive, storage }" })
export type Provisioning = typeof Provisioning.Type

/** A filter issue per repeated vmid, pointing at the later occurrence. */
const uniqueVmids = (guests: ReadonlyArray<DesiredGuest>): Array<Schema.FilterIssue> => {
  const first = new Map<number, number>()
  const issues: Array<Schema.FilterIssue> = []
  guests.forEach((g, i) => {
    const seen = first.get(g.vmid)
    if (seen === undefined) first.set(g.vmid, i)
    else issues.push({ path: [i, "vmid"], message: `duplicate vmid ${g.vmid} (first at guests[${seen}])` })
  })
  return issues
}

/** "HH:MM", 00:00 to 23:59. */
const WallTime = Schema.String.pipe(
  Schema.filter((s) => /^([01][0-9]|2[0-3]):[0-5][0-9]$/.test(s), { message: () => "a time is \"HH:MM\" (00:00 to 23:59)" })
)

/**
 * When the agent may act on an `agent-update` job (issue 14): from `start` to `end` (exclusive)
 * on the wall clock of `protection.time_zone`; `end` before `start` crosses midnight. Absent:
 * any time. A job outside it is left unanswered until a poll inside it.
 */
export const UpdateWindow = Schema.Struct({ start: WallTime, end: WallTime }).pipe(
  Schema.filter((w) => w.start !== w.end || "an update window's start and end differ (an empty window would defer every update)")
).annotations({ message: () => "update_window is an object { start: \"HH:MM\", end: \"HH:MM\" }" })
export type UpdateWindow = typeof UpdateWindow.Type

export const DesiredState = Schema.Struct({
  generation: intIn(0, Number.MAX_SAFE_INTEGER, "generation"),
  guests: Schema.Array(DesiredGuest).pipe(Schema.filter(uniqueVmids)),
  /** Needed only to create guests; a create without it is reported by the executor. */
  provisioning: Schema.optional(Provisioning),
  /** The storage manifest (SPEC §13, src/schema/storage.ts); absent: no targets managed. */
  storage: Schema.optionalWith(StorageManifest, { exact: true }),
  /** Per-guest volume placement and backup decisions; cross-checked against `storage`. */
  policies: Schema.optionalWith(ProtectionPolicies, { exact: true }),
  /**
   * The customer's consent to break-glass (issue 14, SPEC §15): an operator-signed
   * break-glass-enable runs only while this is true; a newer desired state without it ends an
   * open session. Absent: no consent.
   */
  break_glass_consent: Schema.optionalWith(
    Schema.Boolean.annotations({ message: () => "break_glass_consent is true or false" }),
    { exact: true }
  ),
  /** When self-update jobs may run (src/programs/update/window.ts); absent: no limit. */
  update_window: Schema.optionalWith(UpdateWindow, { exact: true })
}).annotations({ message: () => "the desired state is an object { generation, guests, provisioning?, storage?, policies?, break_glass_consent?, update_window? }" }).pipe(
  Schema.filter((d) => protectionIssues(d.storage, d.policies))
)
export type DesiredState = typeof DesiredState.Type

const decode = Schema.decodeUnknownEither(DesiredState, { errors: "all", onExcessProperty: "error" })

const MAX_ISSUES = 8
const MAX_MESSAGE = 200

const formatPath = (path: ReadonlyArray<PropertyKey>): string =>
  path.length === 0
    ? "(root)"
    : path
      .map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? String(k) : `.${String(k)}`))
      .join("")

const clip = (s: string): string => (s.length > MAX_MESSAGE ? `${s.slice(0, MAX_MESSAGE)}…` : s)

/** Storage creds wrapped before decoding, so no parse issue holds them (see redactCredsIn). */
const withCredsRedacted = (u: unknown): unknown =>
  typeof u === "object" && u !== null && !Array.isArray(u) && Object.hasOwn(u, "storage")
    ? { ...u, storage: redactCredsIn((u as { readonly storage: unknown }).storage) }
    : u

/**
 * Decodes the hub's JSON. Errors name the path of each issue; messages are clipped so a huge or
 * hostile input is never echoed back whole.
 */
export const decodeDesiredState = (u: unknown): Either.Either<DesiredState, string> =>
  Either.mapLeft(decode(withCredsRedacted(u)), (e) => {
    const issues = ParseResult.ArrayFormatter.formatErrorSync(e)
    const lines = issues.slice(0, MAX_ISSUES).map((i) => `${formatPath(i.path)}: ${clip(i.message)}`)
    if (issues.length > MAX_ISSUES) lines.push(`(${issues.length - MAX_ISSUES} more issues)`)
    return `invalid desired state: ${lines.join("; ")}`
  })
