/**
 * The audit chain's hashing rules, kept pure so a verifier outside the agent (the hub, a support
 * tool reading an exported log) can recompute the chain byte for byte.
 *
 *   hash = sha256hex(canonicalJson({ seq, atMs, actor, action, target, decision, detail, prevHash }))
 *
 * The first entry's prevHash is GENESIS_HASH (64 zeros).
 */
import { createHash } from "node:crypto"

export const GENESIS_HASH = "0".repeat(64)

/**
 * JSON with object keys sorted (by UTF-16 code unit, recursively), no whitespace. Values that
 * JSON cannot carry are dropped or nulled exactly as JSON.stringify does, so
 * canonicalJson(JSON.parse(canonicalJson(x))) === canonicalJson(x). Throws where JSON.stringify
 * throws (BigInt, cycles): callers wrap it in Effect.try.
 */
export const canonicalJson = (value: unknown): string => JSON.stringify(sortKeys(toJsonValue(value))) ?? "null"

// Runs toJSON (Dates, tagged errors) and drops what JSON drops, so sorting sees plain data.
const toJsonValue = (value: unknown): unknown => {
  const text = JSON.stringify(value)
  return text === undefined ? null : JSON.parse(text)
}

const sortKeys = (value: unknown): unknown => {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (typeof value === "object" && value !== null) {
    // fromEntries defines own properties, so a "__proto__" key stays data (assignment would not)
    return Object.fromEntries(
      Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => [k, sortKeys(v)])
    )
  }
  return value
}

export interface AuditContent {
  readonly seq: number
  readonly atMs: number
  readonly actor: string
  readonly action: string
  readonly target: string | null
  readonly decision: string
  readonly detail: unknown
  readonly prevHash: string
}

export const auditHash = (c: AuditContent): string =>
  createHash("sha256")
    .update(canonicalJson({
      seq: c.seq,
      atMs: c.atMs,
      actor: c.actor,
      action: c.action,
      target: c.target,
      decision: c.decision,
      detail: c.detail,
      prevHash: c.prevHash
    }), "utf8")
    .digest("hex")
