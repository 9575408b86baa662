/**
 * PUT /storage/{storage}, after pve-storage `API2/Storage/Config.pm` (update), for what the agent
 * changes: `disable` (issue 13: a PBS entry is added disabled and enabled once it holds the host's
 * key). Other options are not modelled. Datastore.Allocate on /storage/{storage}; like PVE it
 * writes storage.cfg and does not activate the storage.
 */
import { Effect } from "effect"
import { die500 } from "../errors.js"
import { storageSpec } from "../params.js"
import { optional, reply, type RouteDef } from "../route.js"

const updateStorage: RouteDef = {
  method: "PUT",
  path: "/storage/:storage",
  // no node: storage.cfg is cluster-wide
  schema: { properties: { storage: storageSpec, disable: optional({ type: "boolean" }), digest: optional({ type: "string", maxLength: 64 }) } },
  perm: { kind: "perm", path: (p) => `/storage/${String(p["storage"])}`, privs: ["Datastore.Allocate"] },
  handler: (ctx) =>
    Effect.gen(function*() {
      const state = ctx.env.state
      const storeid = String(ctx.params["storage"])
      const st = state.storages.get(storeid)
      if (st === undefined) return yield* Effect.fail(die500(`storage '${storeid}' does not exist`))
      // changed in place: running tasks hold this object
      if (ctx.params["disable"] !== undefined) (st as { disable: boolean }).disable = ctx.params["disable"] === 1
      return reply(null)
    })
}

export const storageUpdateRoutes: ReadonlyArray<RouteDef> = [updateStorage]
