/**
 * Read endpoints: version, nodes, node status, CT list/status/config, storages and content,
 * nextid, permissions, and the task endpoints (status, log, list, stop).
 */
import { Effect, Either, Fiber } from "effect"
import { parseUpidParts } from "../../../schema/ids.js"
import { check, hasPriv, pBool, pNum, pStr, type RequestCtx, requireGuest, requireNode } from "../env.js"
import { die500, paramError } from "../errors.js"
import { fmtConfigId, fmtContentList, fmtVmid, storageSpec } from "../params.js"
import { type PrivMap, tokenPrivileges, type TokenIdentity } from "../privileges.js"
import { ALL, nodePerm, optional, reply, type RouteDef, schema, vmPerm } from "../route.js"
import {
  configJson,
  guestDigest,
  guestStatusJson,
  releaseMajor,
  runningGuestsMem,
  type SimState,
  storageContentString,
  type StorageState,
  taskStatusJson,
  type TaskState,
  type VolumeState
} from "../state.js"
import { sha1Hex } from "../lxcconf.js"
import { activationError, storageSpace, volumeOnLayer } from "../storage.js"

const version: RouteDef = {
  method: "GET",
  path: "/version",
  schema: { properties: {} },
  perm: ALL,
  handler: (ctx) => Effect.succeed(reply({ ...ctx.env.state.version }))
}

const nodes: RouteDef = {
  method: "GET",
  path: "/nodes",
  schema: { properties: {} },
  perm: ALL,
  handler: (ctx) =>
    Effect.sync(() => {
      const st = ctx.env.state
      return reply(
        [...st.nodes.values()].map((n) => {
          const base: Record<string, unknown> = {
            node: n.node,
            status: n.status,
            id: `node/${n.node}`,
            type: "node",
            level: n.level
          }
          if (st.tlsFingerprint !== undefined) base["ssl_fingerprint"] = st.tlsFingerprint
          if (n.status === "online" && hasPriv(ctx.env, ctx.token, `/nodes/${n.node}`, "Sys.Audit")) {
            Object.assign(base, {
              cpu: n.cpu,
              maxcpu: n.maxcpu,
              mem: n.mem_used + runningGuestsMem(st, n.node, ctx.nowMs),
              maxmem: n.maxmem,
              disk: n.disk_used,
              maxdisk: n.maxdisk,
              uptime: Math.floor((ctx.nowMs - n.bootMs) / 1000)
            })
          }
          return base
        })
      )
    })
}

const nodeStatus: RouteDef = {
  method: "GET",
  path: "/nodes/:node/status",
  schema: schema({}),
  perm: nodePerm(["Sys.Audit"]),
  handler: (ctx) =>
    Effect.map(requireNode(ctx.env, String(ctx.params["node"])), (n) => {
      const st = ctx.env.state
      const memUsed = n.mem_used + runningGuestsMem(st, n.node, ctx.nowMs)
      const load = n.loadavg.map((x) => (st.quirks.loadavg_strings ? x.toFixed(2) : x))
      const release = n.kernel_release
      const data: Record<string, unknown> = {
        uptime: Math.floor((ctx.nowMs - n.bootMs) / 1000),
        idle: 0,
        cpu: n.cpu,
        wait: 0.00112,
        loadavg: load,
        kversion: n.kversion,
        pveversion: `pve-manager/${st.version.version}/${st.version.repoid}`,
        cpuinfo: {
          model: n.cpu_model,
          sockets: n.sockets,
          cores: Math.max(1, Math.floor(n.maxcpu / n.sockets)),
          cpus: n.maxcpu,
          mhz: n.cpu_mhz,
          hvm: "1",
          user_hz: 100,
          flags: "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx pdpe1gb rdtscp lm constant_tsc aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch avx2 smep bmi2 erms invpcid"
        },
        memory: {
          total: n.maxmem,
          used: memUsed,
          free: n.maxmem - memUsed,
          ...(releaseMajor(st) >= 9 ? { available: n.maxmem - memUsed } : {})
        },
        swap: { total: n.swap_total, used: 0, free: n.swap_total },
        ksm: { shared: 0 },
        rootfs: { total: n.maxdisk, used: n.disk_used, free: n.maxdisk - n.disk_used, avail: n.maxdisk - n.disk_used },
        "boot-info": { mode: n.boot_mode, ...(n.boot_mode === "efi" ? { secureboot: 0 } : {}) },
        "current-kernel": {
          sysname: "Linux",
          release,
          version: n.kversion.replace(/^Linux \S+ /, ""),
          machine: "x86_64"
        }
      }
      return reply(data)
    })
}

const lxcList: RouteDef = {
  method: "GET",
  path: "/nodes/:node/lxc",
  schema: schema({}),
  perm: ALL,
  handler: (ctx) =>
    Effect.map(requireNode(ctx.env, String(ctx.params["node"])), (n) =>
      reply(
        [...ctx.env.state.guests.values()]
          .filter((g) => g.node === n.node && hasPriv(ctx.env, ctx.token, `/vms/${g.vmid}`, "VM.Audit"))
          .sort((a, b) => a.vmid - b.vmid)
          .map((g) => guestStatusJson(ctx.env.state, g, ctx.nowMs, "list"))
      ))
}

const statusCurrent: RouteDef = {
  method: "GET",
  path: "/nodes/:node/lxc/:vmid/status/current",
  schema: schema({}, { vmid: true }),
  perm: vmPerm(["VM.Audit"]),
  handler: (ctx) => Effect.map(requireGuest(ctx), (g) => reply(guestStatusJson(ctx.env.state, g, ctx.nowMs, "current")))
}

const configGet: RouteDef = {
  method: "GET",
  path: "/nodes/:node/lxc/:vmid/config",
  schema: schema(
    {
      current: optional({ type: "boolean" }),
      snapshot: optional({ type: "string", format: fmtConfigId, maxLength: 40 })
    },
    { vmid: true }
  ),
  perm: vmPerm(["VM.Audit"]),
  handler: (ctx) =>
    Effect.gen(function*() {
      const snapshot = pStr(ctx.params, "snapshot")
      if (snapshot !== undefined && pBool(ctx.params, "current")) {
        const text = "cannot use 'snapshot' parameter with 'current'"
        return yield* Effect.fail(paramError({ snapshot: text, current: text }))
      }
      const g = yield* requireGuest(ctx)
      const digest = guestDigest(g)
      if (snapshot === undefined) return reply(configJson(ctx.env.state, g.config, digest))
      const snap = g.snapshots.find((s) => s.name === snapshot)
      if (snap === undefined) return yield* Effect.fail(die500(`snapshot '${snapshot}' does not exist`))
      return reply(
        configJson(
          ctx.env.state,
          {
            ...snap.config,
            ...(snap.description.length > 0 ? { description: snap.description } : {}),
            snaptime: snap.snaptime,
            ...(snap.snapstate !== undefined ? { snapstate: snap.snapstate } : {})
          },
          digest
        )
      )
    })
}

// ---------------------------------------------------------------------------------------------
// Storage

const storageVisible = (ctx: RequestCtx, storage: string): boolean =>
  hasPriv(ctx.env, ctx.token, `/storage/${storage}`, "Datastore.Audit") ||
  hasPriv(ctx.env, ctx.token, `/storage/${storage}`, "Datastore.AllocateSpace")

/** storage.cfg keys listed per storage, in PVE's order of no importance (secrets are never here). */
const CONFIG_KEYS = [
  "path",
  "vgname",
  "thinpool",
  "server",
  "export",
  "options",
  "share",
  "subdir",
  "domain",
  "smbversion",
  "datastore",
  "namespace",
  "username",
  "fingerprint",
  "encryption-key",
  "is_mountpoint",
  "prune-backups"
] as const

/** One storage's storage.cfg section as GET /storage lists it (without digest). */
export const storageConfigJson = (s: StorageState): Record<string, unknown> => {
  const out: Record<string, unknown> = { storage: s.storage, type: s.type, content: storageContentString(s) }
  for (const key of CONFIG_KEYS) {
    const value = s[key]
    if (value !== undefined) out[key] = value
  }
  if (s.port !== undefined) out["port"] = s.port
  if (s["max-protected-backups"] !== undefined) out["max-protected-backups"] = s["max-protected-backups"]
  if (s.masterPubkey === true) out["master-pubkey"] = 1
  if (s.shared) out["shared"] = 1
  if (s.disable) out["disable"] = 1
  if (s.nodes !== undefined) out["nodes"] = s.nodes.join(",")
  return out
}

const storageCfgDigest = (st: SimState): string =>
  sha1Hex([...st.storages.values()].map((s) => JSON.stringify(storageConfigJson(s))).join("\n"))

const storageList: RouteDef = {
  method: "GET",
  path: "/storage",
  schema: { properties: { type: optional({ type: "string" }) } },
  perm: ALL,
  handler: (ctx) =>
    Effect.sync(() => {
      const st = ctx.env.state
      const digest = storageCfgDigest(st)
      const type = pStr(ctx.params, "type")
      return reply(
        [...st.storages.values()]
          .filter((s) => (type === undefined || s.type === type) && storageVisible(ctx, s.storage))
          .map((s) => ({ ...storageConfigJson(s), digest }))
      )
    })
}

const FORMATS: Readonly<Record<string, ReadonlyArray<string>>> = {
  dir: ["raw", "qcow2", "vmdk", "subvol"],
  nfs: ["raw", "qcow2", "vmdk", "subvol"],
  cifs: ["raw", "qcow2", "vmdk", "subvol"],
  btrfs: ["raw", "subvol"],
  lvmthin: ["raw"],
  lvm: ["raw"],
  zfspool: ["raw", "subvol"],
  pbs: []
}

const nodeStorage: RouteDef = {
  method: "GET",
  path: "/nodes/:node/storage",
  schema: schema({
    storage: optional(storageSpec),
    content: optional({ type: "string", format: fmtContentList }),
    enabled: optional({ type: "boolean" }),
    target: optional({ type: "string" }),
    format: optional({ type: "boolean" })
  }),
  perm: ALL,
  handler: (ctx) =>
    Effect.map(requireNode(ctx.env, String(ctx.params["node"])), (n) => {
      const st = ctx.env.state
      const only = pStr(ctx.params, "storage")
      const contents = pStr(ctx.params, "content")?.split(/[,;\s]+/).filter((c) => c.length > 0)
      const enabledOnly = pBool(ctx.params, "enabled")
      const withFormats = pBool(ctx.params, "format")
      return reply(
        [...st.storages.values()]
          .filter((s) => s.nodes === undefined || s.nodes.includes(n.node))
          .filter((s) => only === undefined || s.storage === only)
          .filter((s) => contents === undefined || contents.some((c) => (s.content as ReadonlyArray<string>).includes(c)))
          .filter((s) => !enabledOnly || !s.disable)
          .filter((s) => storageVisible(ctx, s.storage))
          .map((s) => {
            // an unreachable server or an unmounted is_mountpoint: active 0, sizes 0
            const { active, total, used } = storageSpace(st, s)
            const out: Record<string, unknown> = {
              storage: s.storage,
              type: s.type,
              content: storageContentString(s),
              enabled: s.disable ? 0 : 1,
              active: active ? 1 : 0,
              shared: s.shared ? 1 : 0,
              total,
              used,
              avail: Math.max(0, total - used)
            }
            if (active && total > 0) out["used_fraction"] = used / total
            if (withFormats) out["format"] = [Object.fromEntries((FORMATS[s.type] ?? []).map((f) => [f, 1])), "raw"]
            return out
          })
      )
    })
}

/** PVE's check_volume_access as applied by the content listing (vmid undef). */
const volumeVisible = (ctx: RequestCtx, v: VolumeState): boolean => {
  const sp = `/storage/${v.storage}`
  if (hasPriv(ctx.env, ctx.token, sp, "Datastore.Allocate")) return true
  if (v.content === "iso" || v.content === "vztmpl") {
    return hasPriv(ctx.env, ctx.token, sp, "Datastore.AllocateSpace") || hasPriv(ctx.env, ctx.token, sp, "Datastore.Audit")
  }
  if (v.content === "backup" && v.vmid !== undefined) {
    return hasPriv(ctx.env, ctx.token, sp, "Datastore.AllocateSpace") && hasPriv(ctx.env, ctx.token, `/vms/${v.vmid}`, "VM.Backup")
  }
  return false
}

export const contentEntry = (v: VolumeState): Record<string, unknown> => {
  const out: Record<string, unknown> = { volid: v.volid, content: v.content, format: v.format, size: v.size, ctime: v.ctime }
  if (v.vmid !== undefined) out["vmid"] = v.vmid
  if (v.content === "backup") out["subtype"] = "lxc"
  if (v.notes !== undefined && v.notes.length > 0) out["notes"] = v.notes.split("\n")[0]
  if (v.protected === true) out["protected"] = 1
  if (v.encrypted !== undefined) out["encrypted"] = v.encrypted
  if (v.verification !== undefined) out["verification"] = { state: v.verification.state, upid: v.verification.upid }
  return out
}

const storageContent: RouteDef = {
  method: "GET",
  path: "/nodes/:node/storage/:storage/content",
  schema: schema({
    storage: storageSpec,
    content: optional({ type: "string", format: fmtContentList }),
    vmid: optional({ type: "integer", format: fmtVmid, minimum: 100, maximum: 999_999_999 })
  }),
  perm: { kind: "perm", path: (raw) => `/storage/${raw["storage"] ?? ""}`, privs: ["Datastore.Audit", "Datastore.AllocateSpace"], any: true },
  handler: (ctx) =>
    Effect.gen(function*() {
      const n = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const st = ctx.env.state
      const id = String(ctx.params["storage"])
      const s = st.storages.get(id)
      if (s === undefined) return yield* Effect.fail(die500(`storage '${id}' does not exist`))
      if (s.nodes !== undefined && !s.nodes.includes(n.node)) {
        return yield* Effect.fail(die500(`storage '${id}' is not available on node '${n.node}'`))
      }
      // volume_list activates the storage first: an unreachable or unmounted one fails the listing
      const activation = activationError(s)
      if (activation !== undefined) return yield* Effect.fail(die500(activation))
      const content = pStr(ctx.params, "content")
      const vmid = pNum(ctx.params, "vmid")
      return reply(
        [...st.volumes.values()]
          .filter((v) => v.storage === id && volumeOnLayer(s, v))
          .filter((v) => content === undefined || v.content === content)
          .filter((v) => vmid === undefined || v.vmid === vmid)
          .filter((v) => volumeVisible(ctx, v))
          .sort((a, b) => a.volid.localeCompare(b.volid))
          .map(contentEntry)
      )
    })
}

// ---------------------------------------------------------------------------------------------
// nextid, permissions

const nextid: RouteDef = {
  method: "GET",
  path: "/cluster/nextid",
  schema: { properties: { vmid: optional({ type: "integer", format: fmtVmid, minimum: 100, maximum: 999_999_999 }) } },
  perm: ALL,
  handler: (ctx) =>
    Effect.suspend(() => {
      const st = ctx.env.state
      const want = pNum(ctx.params, "vmid")
      if (want !== undefined) {
        // returned as given: PVE hands back the parameter string
        return st.guests.has(want) ? Effect.fail(paramError({ vmid: `VM ${want} already exists` })) : Effect.succeed(reply(String(want)))
      }
      for (let id = st.nextid.lower; id < st.nextid.upper; id++) {
        if (!st.guests.has(id)) return Effect.succeed(reply(String(id)))
      }
      return Effect.fail(die500("unable to get any free VMID in range [100, 1000000)"))
    })
}

const privMapJson = (m: PrivMap): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const p of [...m.keys()].sort()) out[p] = m.get(p) === true ? 1 : 0
  return out
}

const permissions: RouteDef = {
  method: "GET",
  path: "/access/permissions",
  schema: { properties: { userid: optional({ type: "string" }), path: optional({ type: "string", maxLength: 2048 }) } },
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      const st = ctx.env.state
      const userid = pStr(ctx.params, "userid") ?? ctx.token.tokenid
      if (userid !== ctx.token.tokenid && userid !== ctx.token.userid) yield* check(ctx, "/access", ["Sys.Audit"])
      const subject: TokenIdentity | undefined =
        st.tokens.get(userid) ??
        (st.users.has(userid) ? { tokenid: userid, userid, tokenName: "", privsep: false } : undefined)
      if (subject === undefined) return yield* Effect.fail(die500(`no such user ('${userid}')`))
      const privsOf = (path: string): PrivMap =>
        subject.tokenName === "" ? tokenPrivileges(st.acl, { ...subject, privsep: false }, path) : tokenPrivileges(st.acl, subject, path)
      const path = pStr(ctx.params, "path")
      const paths = path !== undefined
        ? [path]
        : [...new Set(["/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms", ...st.acl.map((e) => e.path)])]
      const data: Record<string, Record<string, number>> = {}
      for (const p of paths.sort()) {
        const m = privsOf(p)
        if (m.size > 0) data[p] = privMapJson(m)
      }
      return reply(data)
    })
}

// ---------------------------------------------------------------------------------------------
// Tasks

const findTask = (ctx: RequestCtx) =>
  Effect.suspend(() => {
    const upid = String(ctx.params["upid"])
    if (Either.isLeft(parseUpidParts(upid))) return Effect.fail(paramError({ upid: "unable to parse worker upid" }))
    const t = ctx.env.state.tasks.find((x) => x.upid === upid)
    return t === undefined ? Effect.fail(paramError({ upid: "no such task" })) : Effect.succeed(t)
  })

/** Owner (the token itself, or its user) or Sys.Audit on the node. */
const taskAccess = (ctx: RequestCtx, t: TaskState, priv: "Sys.Audit" | "Sys.Modify") =>
  t.token.tokenid === ctx.token.tokenid || (ctx.token.tokenName === "" && t.token.userid === ctx.token.userid)
    ? Effect.void
    : check(ctx, `/nodes/${String(ctx.params["node"])}`, [priv])

const taskStatus: RouteDef = {
  method: "GET",
  path: "/nodes/:node/tasks/:upid/status",
  schema: schema({ upid: { type: "string" } }),
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      yield* requireNode(ctx.env, String(ctx.params["node"]))
      const t = yield* findTask(ctx)
      yield* taskAccess(ctx, t, "Sys.Audit")
      return reply(taskStatusJson(t))
    })
}

const taskLog: RouteDef = {
  method: "GET",
  path: "/nodes/:node/tasks/:upid/log",
  schema: schema({
    upid: { type: "string" },
    start: optional({ type: "integer", minimum: 0 }),
    limit: optional({ type: "integer", minimum: 0 }),
    download: optional({ type: "boolean" })
  }),
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      yield* requireNode(ctx.env, String(ctx.params["node"]))
      const t = yield* findTask(ctx)
      yield* taskAccess(ctx, t, "Sys.Audit")
      const start = pNum(ctx.params, "start") ?? 0
      const limit = pNum(ctx.params, "limit") ?? 50
      const lines = t.log.length === 0 ? ["no content"] : t.log
      const slice = limit === 0 ? lines.slice(start) : lines.slice(start, start + limit)
      return reply(
        slice.map((text, i) => ({ n: start + i + 1, t: text })),
        lines.length
      )
    })
}

const taskList: RouteDef = {
  method: "GET",
  path: "/nodes/:node/tasks",
  schema: schema({
    start: optional({ type: "integer", minimum: 0 }),
    limit: optional({ type: "integer", minimum: 0 }),
    vmid: optional({ type: "integer", format: fmtVmid, minimum: 100, maximum: 999_999_999 }),
    typefilter: optional({ type: "string" }),
    userfilter: optional({ type: "string" }),
    errors: optional({ type: "boolean" }),
    source: optional({ type: "string", enum: ["archive", "active", "all"] }),
    since: optional({ type: "integer" }),
    until: optional({ type: "integer" }),
    statusfilter: optional({ type: "string" })
  }),
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      const n = yield* requireNode(ctx.env, String(ctx.params["node"]))
      const auditor = hasPriv(ctx.env, ctx.token, `/nodes/${n.node}`, "Sys.Audit")
      const source = pStr(ctx.params, "source") ?? "archive"
      const vmid = pNum(ctx.params, "vmid")
      const typefilter = pStr(ctx.params, "typefilter")
      const userfilter = pStr(ctx.params, "userfilter")
      const since = pNum(ctx.params, "since")
      const until = pNum(ctx.params, "until")
      const errorsOnly = pBool(ctx.params, "errors")
      const start = pNum(ctx.params, "start") ?? 0
      const limit = pNum(ctx.params, "limit") ?? 50
      const all = ctx.env.state.tasks
        .filter((t) => t.node === n.node)
        .filter((t) => auditor || t.token.tokenid === ctx.token.tokenid)
        .filter((t) => source === "all" || (source === "active" ? t.status === "running" : t.status === "stopped"))
        .filter((t) => vmid === undefined || t.id === String(vmid))
        .filter((t) => typefilter === undefined || t.type === typefilter)
        .filter((t) => userfilter === undefined || t.token.tokenid.includes(userfilter))
        .filter((t) => since === undefined || t.starttime >= since)
        .filter((t) => until === undefined || t.starttime <= until)
        .filter((t) => !errorsOnly || (t.status === "stopped" && t.exitstatus !== "OK"))
        .sort((a, b) => b.starttime - a.starttime || b.pid - a.pid)
      const page = (limit === 0 ? all.slice(start) : all.slice(start, start + limit)).map((t) => {
        const base = taskStatusJson(t)
        const out: Record<string, unknown> = { ...base }
        delete out["exitstatus"]
        if (t.status === "stopped") {
          out["status"] = t.exitstatus
          out["endtime"] = t.endtime
        } else {
          // PVE: `$task->{status} = 'RUNNING' if !$task->{status}` for the active list
          out["status"] = "RUNNING"
        }
        return out
      })
      return reply(page, all.length)
    })
}

const taskStop: RouteDef = {
  method: "DELETE",
  path: "/nodes/:node/tasks/:upid",
  schema: schema({ upid: { type: "string" } }),
  perm: ALL,
  handler: (ctx) =>
    Effect.gen(function*() {
      yield* requireNode(ctx.env, String(ctx.params["node"]))
      const t = yield* findTask(ctx)
      yield* taskAccess(ctx, t, "Sys.Modify")
      const fiber = ctx.env.fibers.get(t.upid)
      // PVE's kill only signals the worker; the task finishes on its own
      if (fiber !== undefined) yield* Fiber.interruptFork(fiber)
      return reply(null)
    })
}

export const readRoutes: ReadonlyArray<RouteDef> = [
  version,
  nodes,
  nodeStatus,
  lxcList,
  statusCurrent,
  configGet,
  storageList,
  nodeStorage,
  storageContent,
  nextid,
  permissions,
  taskStatus,
  taskLog,
  taskList,
  taskStop
]
