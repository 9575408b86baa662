/**
 * A subset of PVE::JSONSchema parameter validation, reproducing its per-parameter error texts and
 * check order (missing → type → format → pattern → length → range → enum), so clients see the
 * same 400 `errors` map a real host returns.
 */
import { Either } from "effect"

/** A value as it arrives: form/query values are strings; JSON bodies may carry numbers and booleans. */
export type RawValue = string | number | boolean

/** A validated value: integers and numbers become numbers, booleans become 0/1, strings stay strings. */
export type ParamValue = string | number

export type Params = Readonly<Record<string, ParamValue>>

export interface ParamSpec {
  readonly type: "string" | "integer" | "number" | "boolean"
  readonly optional?: boolean
  readonly minimum?: number
  readonly maximum?: number
  readonly maxLength?: number
  readonly enum?: ReadonlyArray<string>
  /** Anchored like Perl's `m/^$pattern$/`. */
  readonly pattern?: RegExp
  /** A registered format: return the text PVE's verifier dies with (it gets an "invalid format - " prefix). */
  readonly format?: (value: string) => string | undefined
}

export interface ParamSchema {
  readonly properties: Readonly<Record<string, ParamSpec>>
  /** e.g. netN, mpN: checked when no exact property matches. */
  readonly patternProperties?: ReadonlyArray<readonly [RegExp, ParamSpec]>
}

const INTEGER_RE = /^-?\d+$/
const NUMBER_RE = /^-?(?:\d+|\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?$/

const show = (v: RawValue): string => (typeof v === "boolean" ? (v ? "true" : "false") : String(v))

/** Returns the error text for one property, or the normalized value. */
export const checkProp = (spec: ParamSpec, raw: RawValue): Either.Either<ParamValue, string> => {
  let value: ParamValue
  switch (spec.type) {
    case "integer": {
      if (typeof raw === "boolean" || !INTEGER_RE.test(String(raw))) {
        return Either.left(`type check ('integer') failed - got '${show(raw)}'`)
      }
      value = Number(raw)
      break
    }
    case "number": {
      if (typeof raw === "boolean" || !NUMBER_RE.test(String(raw))) {
        return Either.left(`type check ('number') failed - got '${show(raw)}'`)
      }
      value = Number(raw)
      break
    }
    case "boolean": {
      // JSON literals are fine; in form bodies only 1/0 pass (the classic `true` trap)
      if (typeof raw === "boolean") value = raw ? 1 : 0
      else if (raw === 1 || raw === "1") value = 1
      else if (raw === 0 || raw === "0") value = 0
      else return Either.left(`type check ('boolean') failed - got '${show(raw)}'`)
      break
    }
    case "string": {
      if (typeof raw === "boolean") return Either.left(`type check ('string') failed - got '${show(raw)}'`)
      value = String(raw)
      break
    }
  }
  const text = String(value)
  if (spec.format !== undefined) {
    const err = spec.format(text)
    if (err !== undefined) return Either.left(`invalid format - ${err.endsWith("\n") ? err : `${err}\n`}`)
  }
  if (spec.pattern !== undefined && !anchored(spec.pattern).test(text)) {
    return Either.left("value does not match the regex pattern")
  }
  if (spec.maxLength !== undefined && text.length > spec.maxLength) {
    return Either.left(`value may only be ${spec.maxLength} characters long`)
  }
  if (typeof value === "number") {
    if (spec.maximum !== undefined && value > spec.maximum) {
      return Either.left(`value must have a maximum value of ${spec.maximum}`)
    }
    if (spec.minimum !== undefined && value < spec.minimum) {
      return Either.left(`value must have a minimum value of ${spec.minimum}`)
    }
  }
  if (spec.enum !== undefined && !spec.enum.includes(text)) {
    return Either.left(`value '${text}' does not have a value in the enumeration '${spec.enum.join(", ")}'`)
  }
  return Either.right(value)
}

const anchoredCache = new WeakMap<RegExp, RegExp>()
const anchored = (re: RegExp): RegExp => {
  const hit = anchoredCache.get(re)
  if (hit !== undefined) return hit
  const made = new RegExp(`^(?:${re.source})$`, re.flags)
  anchoredCache.set(re, made)
  return made
}

export const specFor = (schema: ParamSchema, name: string): ParamSpec | undefined => {
  const exact = schema.properties[name]
  if (exact !== undefined) return exact
  for (const [re, spec] of schema.patternProperties ?? []) {
    if (anchored(re).test(name)) return spec
  }
  return undefined
}

/** Validates all parameters (additionalProperties = 0, as on every endpoint the simulator serves). */
export const validateParams = (
  schema: ParamSchema,
  raw: Readonly<Record<string, RawValue>>
): Either.Either<Params, Record<string, string>> => {
  const errors: Record<string, string> = {}
  const out: Record<string, ParamValue> = {}
  for (const [name, value] of Object.entries(raw)) {
    const spec = specFor(schema, name)
    if (spec === undefined) {
      errors[name] = "property is not defined in schema and the schema does not allow additional properties"
      continue
    }
    const checked = checkProp(spec, value)
    if (Either.isLeft(checked)) errors[name] = checked.left
    else out[name] = checked.right
  }
  for (const [name, spec] of Object.entries(schema.properties)) {
    if (spec.optional !== true && raw[name] === undefined && errors[name] === undefined) {
      errors[name] = "property is missing and it is not optional"
    }
  }
  return Object.keys(errors).length > 0 ? Either.left(errors) : Either.right(out)
}

// ---------------------------------------------------------------------------------------------
// Registered formats used by the endpoints (texts as PVE's verifiers die with them)

export const fmtVmid = (v: string): string | undefined =>
  /^[1-9][0-9]{2,8}$/.test(v) ? undefined : "value does not look like a valid VM ID"

export const fmtVmidList = (v: string): string | undefined => {
  for (const item of v.split(/[,;\s]+/).filter((s) => s.length > 0)) {
    if (!/^[1-9][0-9]{2,8}$/.test(item)) return "value does not look like a valid VM ID"
  }
  return undefined
}

export const fmtNode = (v: string): string | undefined =>
  /^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$/.test(v) ? undefined : `value does not look like a valid node name`

export const fmtStorageId = (v: string): string | undefined =>
  /^[a-z][a-z0-9\-_.]*[a-z0-9]$/i.test(v) ? undefined : `storage ID '${v}' contains illegal characters`

export const fmtConfigId = (v: string): string | undefined =>
  /^[a-z][a-z0-9_-]+$/i.test(v) ? undefined : `invalid configuration ID '${v}'`

export const fmtConfigIdList = (v: string): string | undefined => {
  for (const item of v.split(/[,;\s]+/).filter((s) => s.length > 0)) {
    const err = fmtConfigId(item)
    if (err !== undefined) return err
  }
  return undefined
}

export const fmtDnsName = (v: string): string | undefined =>
  /^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)\.)*(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)$/.test(v)
    ? undefined
    : `value does not look like a valid DNS name`

export const STORAGE_CONTENT_TYPES = ["backup", "images", "import", "iso", "rootdir", "snippets", "vztmpl"] as const

export const fmtContentList = (v: string): string | undefined => {
  for (const item of v.split(/[,;\s]+/).filter((s) => s.length > 0)) {
    if (!(STORAGE_CONTENT_TYPES as ReadonlyArray<string>).includes(item)) return `invalid content type '${item}'`
  }
  return undefined
}

export const vmidSpec: ParamSpec = { type: "integer", format: fmtVmid, minimum: 100, maximum: 999_999_999 }
export const nodeSpec: ParamSpec = { type: "string", format: fmtNode }
export const storageSpec: ParamSpec = { type: "string", format: fmtStorageId }
