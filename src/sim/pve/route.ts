/**
 * A simulated endpoint: its parameter schema, the schema-level permission rule (PVE checks it
 * before validating parameters, with the raw values substituted into the path), and the handler.
 */
import type { Effect } from "effect"
import type { RequestCtx } from "./env.js"
import type { PveApiError } from "./errors.js"
import { nodeSpec, type ParamSchema, type ParamSpec, vmidSpec } from "./params.js"

export interface Reply {
  readonly data: unknown
  readonly total?: number
}

export type PermRule =
  /** any authenticated caller; the handler filters or checks itself */
  | { readonly kind: "all" }
  | {
    readonly kind: "perm"
    readonly path: (raw: Readonly<Record<string, string>>) => string
    readonly privs: ReadonlyArray<string>
    readonly any?: boolean
  }

export interface RouteDef {
  readonly method: "GET" | "POST" | "PUT" | "DELETE"
  /** relative to /api2/json, `:name` for path parameters */
  readonly path: string
  readonly schema: ParamSchema
  readonly perm: PermRule
  /** writes on one guest: subject to injected lock conflicts */
  readonly guestWrite?: boolean
  readonly handler: (ctx: RequestCtx) => Effect.Effect<Reply, PveApiError>
}

export const reply = (data: unknown, total?: number): Reply => (total === undefined ? { data } : { data, total })

export const ALL: PermRule = { kind: "all" }

export const vmPerm = (privs: ReadonlyArray<string>, any = false): PermRule => ({
  kind: "perm",
  path: (raw) => `/vms/${raw["vmid"] ?? ""}`,
  privs,
  any
})

export const nodePerm = (privs: ReadonlyArray<string>): PermRule => ({
  kind: "perm",
  path: (raw) => `/nodes/${raw["node"] ?? ""}`,
  privs
})

/** Schema with the usual `node` (and `vmid`) path parameters. */
export const schema = (
  props: Readonly<Record<string, ParamSpec>>,
  opts: { readonly vmid?: boolean; readonly patternProperties?: ParamSchema["patternProperties"] } = {}
): ParamSchema => ({
  properties: { node: nodeSpec, ...(opts.vmid === true ? { vmid: vmidSpec } : {}), ...props },
  ...(opts.patternProperties !== undefined ? { patternProperties: opts.patternProperties } : {})
})

export const optional = (spec: ParamSpec): ParamSpec => ({ ...spec, optional: true })
