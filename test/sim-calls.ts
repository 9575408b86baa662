/**
 * Reading the simulator's request log (`sim.requests`) for the property suites: which calls the
 * agent sent could destroy or irreversibly change customer data. Measured on the PVE side, so
 * the count does not depend on the agent's own bookkeeping.
 */
import type { SimRequestView } from "../src/sim/pve/index.js"

/** A call PVE would act on irreversibly (or that would let the storage prune backups). */
export type IrreversibleRequest =
  | { readonly kind: "destroy"; readonly vmid: number }
  | { readonly kind: "restore-overwrite"; readonly vmid: number; readonly archive: string }
  | { readonly kind: "rollback"; readonly vmid: number; readonly snapshot: string }
  | { readonly kind: "delete-snapshot"; readonly vmid: number; readonly snapshot: string }
  | { readonly kind: "resize"; readonly vmid: number; readonly disk: string; readonly size: string }
  | { readonly kind: "config-volumes"; readonly vmid: number; readonly keys: ReadonlyArray<string> }
  | { readonly kind: "vzdump-may-prune"; readonly vmid: string; readonly remove: string | undefined }
  | { readonly kind: "delete-backup"; readonly volume: string }
  /** a mutating call the suites do not know: counted as irreversible until someone looks */
  | { readonly kind: "unknown-mutation"; readonly method: string; readonly path: string }

const TRUE = new Set(["1", "true", "yes", "on"])
const truthy = (v: string | undefined) => v !== undefined && TRUE.has(v.toLowerCase())

/** Config keys that hold or reference a volume: setting or deleting one may drop data. */
export const VOLUME_KEY = /^(rootfs|mp\d+|unused\d+)$/

const splitList = (s: string | undefined) => (s === undefined ? [] : s.split(/[,;\s]+/).filter((x) => x.length > 0))

/** What an irreversible call is, or null for a read or a call that keeps all data. */
export const classifyRequest = (r: SimRequestView): IrreversibleRequest | null => {
  if (r.method === "GET") return null
  const p = r.params
  const path = r.path.split("?")[0]!
  let m: RegExpExecArray | null
  if ((m = /^\/nodes\/[^/]+\/lxc\/(\d+)$/.exec(path)) !== null) {
    return r.method === "DELETE" ? { kind: "destroy", vmid: Number(m[1]) } : { kind: "unknown-mutation", method: r.method, path }
  }
  if ((m = /^\/nodes\/[^/]+\/lxc\/(\d+)\/snapshot\/([^/]+)\/rollback$/.exec(path)) !== null && r.method === "POST") {
    return { kind: "rollback", vmid: Number(m[1]), snapshot: decodeURIComponent(m[2]!) }
  }
  if ((m = /^\/nodes\/[^/]+\/lxc\/(\d+)\/snapshot\/([^/]+)$/.exec(path)) !== null && r.method === "DELETE") {
    return { kind: "delete-snapshot", vmid: Number(m[1]), snapshot: decodeURIComponent(m[2]!) }
  }
  if ((m = /^\/nodes\/[^/]+\/lxc\/(\d+)\/resize$/.exec(path)) !== null && r.method === "PUT") {
    return { kind: "resize", vmid: Number(m[1]), disk: p["disk"] ?? "", size: p["size"] ?? "" }
  }
  if ((m = /^\/nodes\/[^/]+\/lxc\/(\d+)\/config$/.exec(path)) !== null && r.method === "PUT") {
    const keys = [...Object.keys(p), ...splitList(p["delete"]), ...splitList(p["revert"])].filter((k) => VOLUME_KEY.test(k))
    return keys.length === 0 ? null : { kind: "config-volumes", vmid: Number(m[1]), keys: [...new Set(keys)].sort() }
  }
  if (/^\/nodes\/[^/]+\/lxc$/.test(path) && r.method === "POST") {
    // a create or a restore into a free vmid keeps all data; with force it replaces a guest
    return truthy(p["force"]) ? { kind: "restore-overwrite", vmid: Number(p["vmid"]), archive: p["ostemplate"] ?? "" } : null
  }
  if (/^\/nodes\/[^/]+\/vzdump$/.test(path) && r.method === "POST") {
    // remove=0 prunes nothing; keep-all=1 besides only lifts PVE's backup-count limit
    return p["remove"] === "0" && (p["prune-backups"] === undefined || p["prune-backups"] === "keep-all=1")
      ? null
      : { kind: "vzdump-may-prune", vmid: p["vmid"] ?? "", remove: p["remove"] }
  }
  if ((m = /^\/nodes\/[^/]+\/storage\/[^/]+\/content\/([^/]+)$/.exec(path)) !== null && r.method === "DELETE") {
    return { kind: "delete-backup", volume: decodeURIComponent(m[1]!) }
  }
  // a new storage entry holds no data yet
  if (path === "/storage" && r.method === "POST") return null
  if (/^\/nodes\/[^/]+\/lxc\/\d+\/status\/(start|stop|shutdown)$/.test(path) && r.method === "POST") return null
  if (/^\/nodes\/[^/]+\/lxc\/\d+\/snapshot$/.test(path) && r.method === "POST") return null
  return { kind: "unknown-mutation", method: r.method, path }
}

export const describeRequest = (c: IrreversibleRequest): string => {
  switch (c.kind) {
    case "destroy":
      return `destroy:${c.vmid}`
    case "restore-overwrite":
      return `restore-overwrite:${c.vmid}:${c.archive}`
    case "rollback":
      return `rollback:${c.vmid}:${c.snapshot}`
    case "delete-snapshot":
      return `delete-snapshot:${c.vmid}:${c.snapshot}`
    case "resize":
      return `resize:${c.vmid}:${c.disk}:${c.size}`
    case "config-volumes":
      return `config-volumes:${c.vmid}:${c.keys.join(",")}`
    case "vzdump-may-prune":
      return `vzdump-may-prune:${c.vmid}:remove=${c.remove ?? "(unset)"}`
    case "delete-backup":
      return `delete-backup:${c.volume}`
    case "unknown-mutation":
      return `unknown-mutation:${c.method} ${c.path}`
  }
}

/** The irreversible calls among the log entries after `afterSeq`. */
export const irreversibleSince = (log: ReadonlyArray<SimRequestView>, afterSeq = 0) =>
  log.filter((r) => r.seq > afterSeq).flatMap((r) => {
    const c = classifyRequest(r)
    return c === null ? [] : [{ request: r, call: c }]
  })

export const lastSeq = (log: ReadonlyArray<SimRequestView>) => log.at(-1)?.seq ?? 0

/** The vmid a guest call names (path or body), or null. */
export const requestVmid = (r: SimRequestView): number | null => {
  const m = /^\/nodes\/[^/]+\/lxc\/(\d+)(\/|$)/.exec(r.path)
  if (m !== null) return Number(m[1])
  const v = r.params["vmid"]
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : null
}
