/**
 * LXC config knowledge: the config keys PVE accepts (with their JSON-schema types, so validation
 * and output typing match: integers/booleans come back as numbers, `cpulimit` as a string),
 * property-string parsing (rootfs/mpN/netN/features), sizes, and the digest (sha1 of the config
 * file text, written the way pve-container writes it).
 */
import { createHash } from "node:crypto"
import { Either } from "effect"
import {
  checkProp,
  fmtDnsName,
  type ParamSchema,
  type ParamSpec,
  type ParamValue,
  type RawValue,
  specFor
} from "./params.js"

/** A CT config as PVE stores it: flat keys, integers/booleans as numbers, everything else text. */
export type LxcConfig = Record<string, ParamValue>

// ---------------------------------------------------------------------------------------------
// Property strings

export interface PropString {
  readonly [key: string]: string
}

/** Parses `local-lvm:vm-100-disk-0,size=8G` (first bare item goes to `defaultKey`). */
export const parsePropString = (text: string, defaultKey?: string): Either.Either<PropString, string> => {
  const out: Record<string, string> = {}
  for (const part of text.split(",")) {
    if (part.length === 0) continue
    const eq = part.indexOf("=")
    if (eq === -1) {
      if (defaultKey === undefined || out[defaultKey] !== undefined) return Either.left(`value without key, but schema does not define a default key`)
      out[defaultKey] = part
      continue
    }
    const key = part.slice(0, eq)
    if (out[key] !== undefined) return Either.left(`duplicate key in comma-separated list property: ${key}`)
    out[key] = part.slice(eq + 1)
  }
  return Either.right(out)
}

/** Prints a property string with the default key first, as PVE's print_property_string does. */
export const printPropString = (props: PropString, order: ReadonlyArray<string>, defaultKey?: string): string => {
  const parts: Array<string> = []
  if (defaultKey !== undefined && props[defaultKey] !== undefined) parts.push(props[defaultKey])
  const keys = Object.keys(props).filter((k) => k !== defaultKey)
  keys.sort((a, b) => {
    const ia = order.indexOf(a)
    const ib = order.indexOf(b)
    return (ia === -1 ? 999 : ia) - (ib === -1 ? 999 : ib) || a.localeCompare(b)
  })
  for (const k of keys) parts.push(`${k}=${props[k]}`)
  return parts.join(",")
}

// ---------------------------------------------------------------------------------------------
// Sizes (binary units, as PVE's parse_size/format_size)

export const GiB_BYTES = 1024 ** 3

const UNIT: Readonly<Record<string, number>> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

export const parseSize = (text: string): number | undefined => {
  const m = /^(\d+(?:\.\d+)?)([KMGT])?$/.exec(text)
  if (m === null) return undefined
  return Math.round(Number(m[1]) * (m[2] === undefined ? 1 : UNIT[m[2]]!))
}

export const formatSize = (bytes: number): string => {
  const size = Math.trunc(bytes)
  const kb = Math.trunc(size / 1024)
  if (kb * 1024 !== size) return `${size}`
  const mb = Math.trunc(kb / 1024)
  if (mb * 1024 !== kb) return `${kb}K`
  const gb = Math.trunc(mb / 1024)
  if (gb * 1024 !== mb) return `${mb}M`
  const tb = Math.trunc(gb / 1024)
  if (tb * 1024 !== gb) return `${gb}G`
  return `${tb}T`
}

// ---------------------------------------------------------------------------------------------
// Mount points, networks, features

export interface MountPoint {
  readonly key: string
  /** `<storage>:<volname>` for volumes, an absolute path for bind mounts, `/dev/...` for devices */
  readonly volume: string
  readonly type: "volume" | "bind" | "device"
  readonly storage: string | undefined
  readonly size: number | undefined
  readonly props: PropString
}

const MP_KEYS = ["mp", "acl", "backup", "mountoptions", "quota", "replicate", "ro", "shared", "size"]

export const isMountKey = (key: string): boolean => key === "rootfs" || /^mp\d+$/.test(key)

export const parseMountPoint = (key: string, text: string): Either.Either<MountPoint, string> =>
  Either.flatMap(parsePropString(text, "volume"), (props) => {
    const volume = props["volume"]
    if (volume === undefined) return Either.left(`${key}.volume: property is missing and it is not optional`)
    for (const k of Object.keys(props)) {
      if (k !== "volume" && !MP_KEYS.includes(k)) {
        return Either.left(`${key}.${k}: property is not defined in schema and the schema does not allow additional properties`)
      }
    }
    if (key !== "rootfs" && props["mp"] === undefined) return Either.left(`${key}.mp: property is missing and it is not optional`)
    let size: number | undefined
    if (props["size"] !== undefined) {
      size = parseSize(props["size"])
      if (size === undefined) return Either.left(`${key}.size: unable to parse size '${props["size"]}'`)
    }
    const type = volume.startsWith("/dev/") ? "device" : volume.startsWith("/") ? "bind" : "volume"
    const colon = volume.indexOf(":")
    const storage = type === "volume" && colon > 0 ? volume.slice(0, colon) : undefined
    return Either.right({ key, volume, type, storage, size, props })
  })

export const printMountPoint = (props: PropString): string => printPropString(props, MP_KEYS, "volume")

const NET_KEYS = ["name", "bridge", "firewall", "gw", "gw6", "hwaddr", "ip", "ip6", "link_down", "mtu", "rate", "tag", "trunks", "type"]

export const parseNet = (key: string, text: string): Either.Either<PropString, string> =>
  Either.flatMap(parsePropString(text), (props) => {
    for (const k of Object.keys(props)) {
      if (!NET_KEYS.includes(k)) {
        return Either.left(`${key}.${k}: property is not defined in schema and the schema does not allow additional properties`)
      }
    }
    if (props["name"] === undefined) return Either.left(`${key}.name: property is missing and it is not optional`)
    if (props["hwaddr"] !== undefined && !/^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$/.test(props["hwaddr"])) {
      return Either.left(`${key}.hwaddr: value does not match the regex pattern`)
    }
    return Either.right(props)
  })

export const printNet = (props: PropString): string => printPropString(props, NET_KEYS)

const FEATURE_KEYS = ["fuse", "keyctl", "mknod", "mount", "nesting", "force_rw_sys"]

export const parseFeatures = (text: string): Either.Either<PropString, string> =>
  Either.flatMap(parsePropString(text), (props) => {
    for (const [k, v] of Object.entries(props)) {
      if (!FEATURE_KEYS.includes(k)) {
        return Either.left(`features.${k}: property is not defined in schema and the schema does not allow additional properties`)
      }
      if (k !== "mount" && v !== "0" && v !== "1") return Either.left(`features.${k}: type check ('boolean') failed - got '${v}'`)
    }
    return Either.right(props)
  })

// ---------------------------------------------------------------------------------------------
// The config key schema (what PUT config and POST lxc accept as config keys)

const fmtMount = (key: string) => (v: string) => Either.match(parseMountPoint(key, v), { onLeft: (e) => `format error\n${e}`, onRight: () => undefined })
const fmtNetwork = (key: string) => (v: string) => Either.match(parseNet(key, v), { onLeft: (e) => `format error\n${e}`, onRight: () => undefined })
const fmtFeatures = (v: string) => Either.match(parseFeatures(v), { onLeft: (e) => `format error\n${e}`, onRight: () => undefined })

const opt = (spec: ParamSpec): ParamSpec => ({ ...spec, optional: true })

export const CONFIG_PROPERTIES: Readonly<Record<string, ParamSpec>> = {
  arch: opt({ type: "string", enum: ["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"] }),
  cmode: opt({ type: "string", enum: ["shell", "console", "tty"] }),
  console: opt({ type: "boolean" }),
  cores: opt({ type: "integer", minimum: 1, maximum: 8192 }),
  cpulimit: opt({ type: "number", minimum: 0, maximum: 8192 }),
  cpuunits: opt({ type: "integer", minimum: 0, maximum: 500000 }),
  debug: opt({ type: "boolean" }),
  description: opt({ type: "string", maxLength: 8192 }),
  entrypoint: opt({ type: "string" }),
  env: opt({ type: "string" }),
  features: opt({ type: "string", format: fmtFeatures }),
  hookscript: opt({ type: "string" }),
  hostname: opt({ type: "string", format: fmtDnsName, maxLength: 255 }),
  memory: opt({ type: "integer", minimum: 16 }),
  nameserver: opt({ type: "string" }),
  onboot: opt({ type: "boolean" }),
  ostype: opt({
    type: "string",
    enum: ["debian", "devuan", "ubuntu", "centos", "fedora", "opensuse", "archlinux", "alpine", "gentoo", "nixos", "unmanaged"]
  }),
  protection: opt({ type: "boolean" }),
  rootfs: opt({ type: "string", format: fmtMount("rootfs") }),
  searchdomain: opt({ type: "string" }),
  startup: opt({ type: "string" }),
  swap: opt({ type: "integer", minimum: 0 }),
  tags: opt({ type: "string" }),
  template: opt({ type: "boolean" }),
  timezone: opt({ type: "string" }),
  tty: opt({ type: "integer", minimum: 0, maximum: 6 }),
  unprivileged: opt({ type: "boolean" })
}

export const CONFIG_PATTERN_PROPERTIES: ReadonlyArray<readonly [RegExp, ParamSpec]> = [
  [/net(?:[0-9]|[12][0-9]|3[01])/, opt({ type: "string" })],
  [/mp(?:[0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])/, opt({ type: "string" })],
  [/unused(?:[0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])/, opt({ type: "string" })],
  [/dev(?:[0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])/, opt({ type: "string" })]
]

export const CONFIG_SCHEMA: ParamSchema = { properties: CONFIG_PROPERTIES, patternProperties: CONFIG_PATTERN_PROPERTIES }

/** The spec of one config key with the key-specific format (netN/mpN formats depend on the key). */
export const configKeySpec = (key: string): ParamSpec | undefined => {
  const base = specFor(CONFIG_SCHEMA, key)
  if (base === undefined) return undefined
  if (/^net\d+$/.test(key)) return { ...base, format: fmtNetwork(key) }
  if (/^mp\d+$/.test(key)) return { ...base, format: fmtMount(key) }
  return base
}

/** Validates a map of config keys (seed configs, archive configs): key → error text. */
export const validateConfig = (raw: Readonly<Record<string, RawValue>>): Either.Either<LxcConfig, Record<string, string>> => {
  const errors: Record<string, string> = {}
  const out: LxcConfig = {}
  for (const [k, v] of Object.entries(raw)) {
    if (k === "lock" || k === "parent" || k === "digest") {
      if (typeof v === "string" && k !== "digest") out[k] = v
      continue
    }
    const spec = configKeySpec(k)
    if (spec === undefined) {
      errors[k] = "property is not defined in schema and the schema does not allow additional properties"
      continue
    }
    Either.match(checkProp(spec, v), { onLeft: (e) => (errors[k] = e), onRight: (value) => (out[k] = value) })
  }
  return Object.keys(errors).length > 0 ? Either.left(errors) : Either.right(out)
}

// ---------------------------------------------------------------------------------------------
// Config file text and digest

export interface SnapshotSection {
  readonly name: string
  readonly config: LxcConfig
}

const configLines = (conf: LxcConfig): string => {
  let raw = ""
  const descr = conf["description"]
  if (typeof descr === "string" && descr.length > 0) {
    for (const line of descr.split("\n")) raw += `#${encodeURIComponent(line).replace(/%20/g, " ")}\n`
  }
  for (const key of Object.keys(conf).sort()) {
    if (key === "description" || key === "digest") continue
    raw += `${key}: ${conf[key]}\n`
  }
  return raw
}

/** The text pve-container would write for this config (snapshots as `[name]` sections). */
export const configFileText = (conf: LxcConfig, snapshots: ReadonlyArray<SnapshotSection>): string => {
  let raw = configLines(conf)
  for (const snap of [...snapshots].sort((a, b) => a.name.localeCompare(b.name))) {
    raw += `\n[${snap.name}]\n${configLines(snap.config)}`
  }
  return raw
}

export const sha1Hex = (text: string): string => createHash("sha1").update(text).digest("hex")

/** Default `memory`, `swap` and `hostname` PVE fills in on create/restore. */
export const withCreateDefaults = (vmid: number, conf: LxcConfig): LxcConfig => ({
  ...conf,
  hostname: conf["hostname"] ?? `CT${vmid}`,
  memory: conf["memory"] ?? 512,
  swap: conf["swap"] ?? 512
})

export const isFeatureChangeNestingOnly = (
  oldFeatures: PropString | undefined,
  newFeatures: PropString | undefined
): { readonly nesting: boolean; readonly other: boolean } => {
  let nesting = false
  let other = false
  const o = oldFeatures ?? {}
  const n = newFeatures ?? {}
  for (const key of new Set([...Object.keys(o), ...Object.keys(n)])) {
    if ((o[key] ?? "") !== (n[key] ?? "")) {
      if (key === "nesting") nesting = true
      else other = true
    }
  }
  return { nesting, other }
}
