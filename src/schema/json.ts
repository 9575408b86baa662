/**
 * Hub- and operator-supplied free-form JSON (job params, op-blob params, policy blocks), checked
 * before anything reads it (issue 8, findings 1 and 9):
 * - only plain JSON values: objects whose prototype is Object.prototype or null, arrays, strings,
 *   finite numbers, booleans, null;
 * - no key that can reach or shadow a prototype (`__proto__`, `constructor`, `prototype`), so a
 *   binding check over own keys and a reader of the same object can never see different fields;
 * - bounded depth and size, checked iteratively, so a hostile nesting cannot overflow the stack
 *   of any later recursive walk (canonical JSON for the audit chain, the binding comparison).
 */
import { Schema } from "effect"

export const MAX_JSON_DEPTH = 16
export const MAX_JSON_NODES = 10_000

const FORBIDDEN_KEYS: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"])

export type JsonValue = null | boolean | number | string | ReadonlyArray<JsonValue> | { readonly [k: string]: JsonValue }
export type JsonObject = { readonly [k: string]: JsonValue }

const isPlainObject = (v: object): boolean => {
  const proto = Object.getPrototypeOf(v) as unknown
  return proto === Object.prototype || proto === null
}

/** Why `u` is not safe JSON, or undefined when it is. Never echoes the value. */
export const unsafeJsonReason = (u: unknown, opts: { readonly requireObject?: boolean } = {}): string | undefined => {
  if (opts.requireObject === true && (typeof u !== "object" || u === null || Array.isArray(u))) return "expected a JSON object"
  const stack: Array<{ readonly v: unknown; readonly depth: number; readonly path: string }> = [{ v: u, depth: 0, path: "" }]
  let nodes = 0
  while (stack.length > 0) {
    const { depth, path, v } = stack.pop()!
    if (++nodes > MAX_JSON_NODES) return `more than ${MAX_JSON_NODES} values`
    if (v === null || typeof v === "boolean" || typeof v === "string") continue
    if (typeof v === "number") {
      if (!Number.isFinite(v)) return `${path || "(root)"}: not a finite number`
      continue
    }
    if (typeof v !== "object") return `${path || "(root)"}: not a JSON value`
    if (depth >= MAX_JSON_DEPTH) return `nested deeper than ${MAX_JSON_DEPTH} levels`
    if (Array.isArray(v)) {
      if (Object.getPrototypeOf(v) !== Array.prototype) return `${path || "(root)"}: not a plain array`
      v.forEach((x, i) => stack.push({ v: x, depth: depth + 1, path: `${path}[${i}]` }))
      continue
    }
    if (!isPlainObject(v)) return `${path || "(root)"}: not a plain object`
    // own keys only, symbols included: a symbol key is not JSON
    for (const key of Reflect.ownKeys(v)) {
      if (typeof key !== "string") return `${path || "(root)"}: a non-string key`
      if (FORBIDDEN_KEYS.has(key)) return `${path || "(root)"}: key '${key}' is not allowed`
      const d = Object.getOwnPropertyDescriptor(v, key)
      if (d === undefined || !("value" in d)) return `${path || "(root)"}.${key.slice(0, 32)}: not a data property`
      stack.push({ v: d.value, depth: depth + 1, path: `${path}.${key.slice(0, 32)}` })
    }
  }
  return undefined
}

/** A plain JSON object, checked as above; decode returns the same object (nothing to rebuild). */
export const SafeJsonObject: Schema.Schema<JsonObject> = Schema.declare(
  (u: unknown): u is JsonObject => unsafeJsonReason(u, { requireObject: true }) === undefined,
  {
    identifier: "SafeJsonObject",
    message: (issue) => ({ message: unsafeJsonReason(issue.actual, { requireObject: true }) ?? "expected a JSON object", override: true })
  }
)

/** Any plain JSON value (array items of free-form blocks). */
export const SafeJsonValue: Schema.Schema<JsonValue> = Schema.declare(
  (u: unknown): u is JsonValue => unsafeJsonReason(u) === undefined,
  { identifier: "SafeJsonValue", message: (issue) => ({ message: unsafeJsonReason(issue.actual) ?? "expected JSON", override: true }) }
)

/** Key-order-insensitive equality of two checked JSON values (both already bounded). */
export const jsonEqual = (a: JsonValue, b: JsonValue): boolean => {
  if (a === b) return true
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false
    return a.every((x, i) => jsonEqual(x, (b as ReadonlyArray<JsonValue>)[i]!))
  }
  const ao = a as JsonObject
  const bo = b as JsonObject
  const ak = Object.keys(ao)
  const bk = Object.keys(bo)
  if (ak.length !== bk.length) return false
  return ak.every((k) => Object.hasOwn(bo, k) && jsonEqual(ao[k]!, bo[k]!))
}
