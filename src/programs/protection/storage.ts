/**
 * The storage pass (SPEC §13, issue 10): the desired state's storage manifest reconciled with the
 * host, one target at a time, and the guests' volume placement checked against it.
 *
 * Per target the manifest lists as `attached`:
 * - what was fixed at attach stays (StorageTargetStore): a manifest that changes a target's class,
 *   type or durable id is refused (needs_operator) and nothing is done to it;
 * - a USB disk is mounted by filesystem UUID through Privileged (a persistent systemd mount unit)
 *   when it is present and not mounted; absent, pulled or foreign is reported, never forced;
 * - the PVE storage entry of the same id is matched (type, server, export, path, fingerprint,
 *   `is_mountpoint` for a USB disk, enabled, content) or, when missing, created through the API
 *   with `prune-backups=keep-all=1` where the token may and the agent can (a `local-dir` path or a
 *   `{ ref }` credential is always the operator's): otherwise needs_operator with the exact
 *   `pvesm add` command and, for a 403, the missing privilege;
 * - reachability is PVE's `active` flag (and the USB mount); the watchdog keeps it current.
 * `disconnected` in the manifest: nothing is mounted or created, reachability is reported.
 *
 * A target the manifest removes (detach) or marks `decommissioned` that may hold data (any backup
 * or guest volume PVE lists on it, any backup the agent made there, or when that cannot be known)
 * is held for an operator signature (`storage-detach` / `storage-decommission`, params
 * `{ storage }`): reported, nothing unmounted, nothing deleted. Only a target PVE lists as empty is
 * detached or decommissioned unsigned (a USB disk unmounted), and that decision is audited.
 *
 * A PBS target whose creds carry no `encryption_key` takes this host's own key K when one is
 * installed (PbsKey, issue 13): added disabled and keyless, K attached through the root helper,
 * the fingerprint PVE lists then checked against K's, only then enabled; an entry holding another
 * key is reported and left as it is (backup.ts never sends a backup to it: pbsGuard.ts).
 *
 * Creds are opened (creds.ts) only to build the createStorage call and compare with those the
 * target was created with; no text built here contains one.
 */
import { Clock, type Duration, Effect, Either, Layer, Option, Redacted, Schedule } from "effect"
import { AuditLog } from "../../layers/AuditLog.js"
import type { JournalError } from "../../layers/Journal.js"
import { PbsKey } from "../../layers/PbsKey.js"
import { Privileged } from "../../layers/Privileged.js"
import { ProtectionStore } from "../../layers/ProtectionStore.js"
import { type CreateStorageParams, Proxmox, type StorageContentType } from "../../layers/Proxmox.js"
import { durableIdText, StorageTargetStore, StorageTargetStoreLive, type TargetRecord } from "../../layers/StorageTargetStore.js"
import type { KeyFingerprint } from "../../schema/escrow.js"
import type { ReportPendingSignature, ReportPlacementFinding } from "../../schema/hub.js"
import type { VmId } from "../../schema/ids.js"
import { USB_MOUNT_ROOT } from "../../schema/privileged.js"
import type { GuestConfig, NodeStorageEntry, ProxmoxError, StorageConfigEntry } from "../../schema/proxmox.js"
import {
  classChangeRefused,
  type ProtectionPolicies,
  type StorageManifest,
  type StorageTarget,
  type TargetClass,
  type TargetRole,
  type TargetType
} from "../../schema/storage.js"
import { CredsVault, CredsVaultLive, sameSecret, type StorageSecret } from "./creds.js"
import { StorageRemoverLive } from "./detach.js"
import { ReportNow, type StorageSnapshot, StorageStatus, StorageStatusLive, type TargetProbe, type TargetStatus, type TargetVerdict } from "./status.js"

export interface StorageInput {
  /** undefined: the desired state has no manifest (nothing is decided, recorded targets are watched). */
  readonly storage: StorageManifest | undefined
  readonly policies: ProtectionPolicies | undefined
}

/** What a target's PVE storage holds, by role. */
export const STORAGE_CONTENT: { readonly [R in TargetRole]: ReadonlyArray<StorageContentType> } = {
  primary: ["rootdir", "images"],
  "vzdump-target": ["backup"],
  "pbs-offsite": ["backup"],
  "bulk-data": ["rootdir"]
}

export const STORAGE_DETACH_OP = "storage-detach"
export const STORAGE_DECOMMISSION_OP = "storage-decommission"
export type RemovalMode = "detach" | "decommission"
export const removalOp = (mode: RemovalMode) => (mode === "detach" ? STORAGE_DETACH_OP : STORAGE_DECOMMISSION_OP)

// ---------------------------------------------------------------------------------------------
// Durable ids, as PVE storage options

export const usbMountPoint = (id: string) => `${USB_MOUNT_ROOT}/${id}`

/** `server:/export` (an IPv6 server in brackets); the export has no ':' (StorageManifest checks it). */
export const nfsParts = (id: string) => {
  const at = id.lastIndexOf(":")
  return { server: unbracket(id.slice(0, at)), export: id.slice(at + 1) }
}

/** `server:share[/subdir]`. */
export const cifsParts = (id: string) => {
  const at = id.lastIndexOf(":")
  const rest = id.slice(at + 1)
  const slash = rest.indexOf("/")
  return {
    server: unbracket(id.slice(0, at)),
    share: slash < 0 ? rest : rest.slice(0, slash),
    subdir: slash < 0 ? undefined : rest.slice(slash)
  }
}

/** `[user@realm[!token]@]server[:port]:datastore`, as proxmox-backup-client takes it. */
export const pbsParts = (repo: string) => {
  const last = repo.lastIndexOf(":")
  const datastore = repo.slice(last + 1)
  const head = repo.slice(0, last)
  const at = head.lastIndexOf("@")
  const auth = at < 0 ? undefined : head.slice(0, at)
  const hostPort = head.slice(at + 1)
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$/.exec(hostPort)
  return {
    server: unbracket(m?.[1] ?? hostPort),
    port: m?.[2] === undefined ? undefined : Number(m[2]),
    datastore,
    username: auth
  }
}

const unbracket = (s: string) => (s.startsWith("[") && s.endsWith("]") ? s.slice(1, -1) : s)

const flagOn = (v: string | undefined) => v !== undefined && v !== "" && v !== "0" && v.toLowerCase() !== "no"

const contentOf = (e: { readonly content?: string | undefined }) =>
  (e.content ?? "").split(/[,;\s]+/).filter((c) => c.length > 0)

// ---------------------------------------------------------------------------------------------
// What the operator runs when the agent cannot (no secret in any of it)

const q = (s: string) => (/^[A-Za-z0-9._:/@!+-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`)

/** The exact `pvesm add` that creates the target's PVE storage (secrets left for pvesm to prompt). */
export const operatorCommand = (t: StorageTarget): string => {
  const content = `--content ${STORAGE_CONTENT[t.role].join(",")} --prune-backups keep-all=1`
  const id = q(t.id)
  const d = t.durable_id
  switch (t.type) {
    case "usb":
      return `pvesm add dir ${id} --path ${q(usbMountPoint(t.id))} --is_mountpoint yes ${content}`
    case "local-dir":
      return `pvesm add dir ${id} --path ${q(typeof d === "string" ? d : "")} ${content}`
    case "nfs": {
      const p = nfsParts(typeof d === "string" ? d : "")
      return `pvesm add nfs ${id} --server ${q(p.server)} --export ${q(p.export)} ${content}`
    }
    case "cifs": {
      const p = cifsParts(typeof d === "string" ? d : "")
      return `pvesm add cifs ${id} --server ${q(p.server)} --share ${q(p.share)}${p.subdir === undefined ? "" : ` --subdir ${q(p.subdir)}`}` +
        ` --username <user> --password ${content}`
    }
    case "pbs": {
      const p = pbsParts(typeof d === "string" ? d : d.repo)
      const fp = typeof d === "string" ? "" : d.fingerprint ?? ""
      return `pvesm add pbs ${id} --server ${q(p.server)}${p.port === undefined ? "" : ` --port ${p.port}`} --datastore ${q(p.datastore)}` +
        ` --username ${q(p.username ?? "<user@realm!token>")} --fingerprint ${q(fp)} --password --encryption-key <key file> ${content}`
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Matching an existing PVE storage entry

const LOCAL_BLOCK_TYPES = new Set(["lvmthin", "lvm", "zfspool"])

/** Why PVE's entry is not this target (or not safe to use as it), with the fix; undefined: it matches. */
export const entryMismatch = (t: StorageTarget, e: StorageConfigEntry): string | undefined => {
  const d = t.durable_id
  const is = `PVE storage '${t.id}' is ${e.type}`
  switch (t.type) {
    case "usb": {
      if (e.type !== "dir") return `${is}, a usb target is a directory storage: ${operatorCommand(t)} (after pvesm remove ${t.id})`
      if (e.path !== usbMountPoint(t.id)) return `PVE storage '${t.id}' is a directory at ${e.path ?? "no path"}, not ${usbMountPoint(t.id)} where the agent mounts the disk`
      if (!flagOn(e.is_mountpoint)) {
        return `PVE storage '${t.id}' has no is_mountpoint: while the disk is away PVE would write backups onto the root filesystem; run: pvesm set ${t.id} --is_mountpoint yes`
      }
      break
    }
    case "local-dir": {
      if (LOCAL_BLOCK_TYPES.has(e.type)) break // block storage: no path to compare
      if (e.type !== "dir" && e.type !== "btrfs") return `${is}, not a local directory`
      if (e.path !== d) return `PVE storage '${t.id}' is at ${e.path ?? "no path"}, the manifest says ${typeof d === "string" ? d : ""}`
      break
    }
    case "nfs": {
      const p = nfsParts(typeof d === "string" ? d : "")
      if (e.type !== "nfs") return `${is}, not nfs`
      if (e.server !== p.server || e.export !== p.export) return `PVE storage '${t.id}' mounts ${e.server ?? "?"}:${e.export ?? "?"}, the manifest says ${p.server}:${p.export}`
      break
    }
    case "cifs": {
      const p = cifsParts(typeof d === "string" ? d : "")
      if (e.type !== "cifs") return `${is}, not cifs`
      if (e.server !== p.server || e.share !== p.share || (e.subdir ?? undefined) !== p.subdir) {
        return `PVE storage '${t.id}' mounts //${e.server ?? "?"}/${e.share ?? "?"}${e.subdir ?? ""}, the manifest says //${p.server}/${p.share}${p.subdir ?? ""}`
      }
      break
    }
    case "pbs": {
      if (e.type !== "pbs" || typeof d === "string") return `${is}, not pbs`
      const p = pbsParts(d.repo)
      if (e.server !== p.server || e.datastore !== p.datastore || (p.port !== undefined && e.port !== undefined && e.port !== p.port)) {
        return `PVE storage '${t.id}' is ${e.server ?? "?"}:${e.datastore ?? "?"}, the manifest says ${p.server}:${p.datastore}`
      }
      if ((e.fingerprint ?? "").toLowerCase() !== (d.fingerprint ?? "").toLowerCase()) {
        return `PVE storage '${t.id}' pins another certificate fingerprint than the manifest: check the server, then pvesm set ${t.id} --fingerprint <manifest's>`
      }
      if (e["encryption-key"] === undefined) {
        return `PVE storage '${t.id}' has no client-side encryption key: PBS offsite backups must be encrypted (pvesm set ${t.id} --encryption-key <key file>)`
      }
      break
    }
  }
  if (e.disable === 1) return `PVE storage '${t.id}' is disabled; run: pvesm set ${t.id} --disable 0`
  const have = contentOf(e)
  const missing = STORAGE_CONTENT[t.role].filter((c) => t.type !== "local-dir" || !LOCAL_BLOCK_TYPES.has(e.type) ? !have.includes(c) : false)
  if (missing.length > 0) return `PVE storage '${t.id}' does not allow ${missing.join(",")}; run: pvesm set ${t.id} --content ${[...new Set([...have, ...STORAGE_CONTENT[t.role]])].join(",")}`
  return undefined
}

// ---------------------------------------------------------------------------------------------
// Creating it

/** The createStorage call for a target, or why the agent leaves it to the operator. */
export const createParams = (
  t: StorageTarget,
  secret: Option.Option<StorageSecret>,
  /** The host's own PBS key will be attached (issue 13): a pbs entry without a creds key is made disabled, keyless. */
  opts: { readonly hostKey?: boolean } = {}
): Either.Either<CreateStorageParams, string> => {
  const content = STORAGE_CONTENT[t.role]
  const d = t.durable_id
  const operator = (why: string) => Either.left(`${why}; run: ${operatorCommand(t)}`)
  switch (t.type) {
    case "usb":
      return Either.right({ storage: t.id, type: "dir", content, path: usbMountPoint(t.id), isMountpoint: true, createBasePath: false })
    case "local-dir":
      // a directory on the host is the operator's to choose: a hub naming /etc or / gets nothing
      return operator("the agent never creates a directory storage on a host path the manifest names")
    case "nfs": {
      const p = nfsParts(typeof d === "string" ? d : "")
      return Either.right({ storage: t.id, type: "nfs", content, server: p.server, export: p.export })
    }
    case "cifs": {
      const p = cifsParts(typeof d === "string" ? d : "")
      if (t.creds !== undefined && Option.isNone(secret)) return operator("its creds are a reference to a credential on the host, which the agent does not read")
      const s = Option.getOrUndefined(secret)
      return Either.right({
        storage: t.id,
        type: "cifs",
        content,
        server: p.server,
        share: p.share,
        ...(p.subdir === undefined ? {} : { subdir: p.subdir }),
        ...(s === undefined ? {} : { password: s.password, ...(s.username === undefined ? {} : { username: s.username }), ...(s.domain === undefined ? {} : { domain: s.domain }) })
      })
    }
    case "pbs": {
      if (typeof d === "string") return operator("a pbs target's durable_id is { repo, fingerprint }")
      if (Option.isNone(secret)) return operator("its creds are a reference to a credential on the host, which the agent does not read")
      const p = pbsParts(d.repo)
      const username = p.username ?? secret.value.username
      if (username === undefined) return operator("neither the repo nor the creds name the PBS user (user@realm!token)")
      const key = secret.value.encryptionKey
      if (key === undefined && opts.hostKey !== true) {
        return operator("the creds carry no encryption_key and this host has no PBS key installed: PBS offsite backups are always client-side encrypted")
      }
      return Either.right({
        storage: t.id,
        type: "pbs",
        content,
        server: p.server,
        datastore: p.datastore,
        username,
        password: secret.value.password,
        ...(d.fingerprint === undefined ? {} : { fingerprint: d.fingerprint }),
        ...(p.port === undefined ? {} : { port: p.port }),
        // without a creds key: added disabled, so nothing is backed up to it before the host's key is on it
        ...(key === undefined ? { disable: true } : { encryptionKey: key })
      })
    }
  }
}

/** PVE's activation texts: the storage exists but its disk or server is not there right now. */
const UNREACHABLE = /not online|unable to activate|error fetching datastores|Can't connect|Connection refused|No route to host|timed out|is not mounted/i

const describe = (e: ProxmoxError) => `${e._tag}: ${e.message}`

// ---------------------------------------------------------------------------------------------
// Placement

interface VolumeRef {
  /** The storage id, or undefined for a bind mount (a host path). */
  readonly storage: string | undefined
  readonly options: ReadonlyMap<string, string>
}

/** `local-lvm:vm-101-disk-1,mp=/data,backup=1,size=8G` → storage and options. */
export const parseVolume = (raw: string): VolumeRef => {
  const [head = "", ...rest] = raw.split(",")
  const options = new Map<string, string>()
  for (const part of rest) {
    const eq = part.indexOf("=")
    if (eq > 0) options.set(part.slice(0, eq), part.slice(eq + 1))
  }
  // `volume=` may name the volume explicitly instead of the first position
  const volume = options.get("volume") ?? (head.includes("=") ? "" : head)
  const colon = volume.indexOf(":")
  return { storage: volume.startsWith("/") || colon <= 0 ? undefined : volume.slice(0, colon), options }
}

/**
 * Placement findings per target id. `configs` holds the guests present on the node (a guest not
 * there yet has no findings); `classOf` is each target's class as fixed at attach.
 */
export const placementFindings = (
  policies: ProtectionPolicies | undefined,
  classOf: (id: string) => TargetClass | undefined,
  configs: ReadonlyMap<number, GuestConfig>
): ReadonlyMap<string, ReadonlyArray<ReportPlacementFinding>> => {
  const out = new Map<string, Array<ReportPlacementFinding>>()
  const add = (target: string, f: ReportPlacementFinding) => {
    const list = out.get(target) ?? []
    list.push(f)
    out.set(target, list)
  }
  for (const g of policies?.guests ?? []) {
    const config = configs.get(g.vmid)
    if (config === undefined) continue
    for (const v of g.volumes) {
      const at = `${v.volume} of ${g.vmid}`
      const finding = (problem: ReportPlacementFinding["problem"], detail: string) =>
        add(v.target, { vmid: g.vmid, volume: v.volume, kind: v.kind, problem, detail })
      const raw = Object.hasOwn(config, v.volume) ? config[v.volume] : undefined
      if (typeof raw !== "string") {
        finding("missing", `the guest has no ${v.volume}`)
        continue
      }
      const ref = parseVolume(raw)
      if (ref.storage !== v.target) finding("misplaced", `${at} lives on ${ref.storage ?? "a host path"}, its placement says ${v.target}`)
      const home = ref.storage ?? v.target
      if (v.kind === "hot") {
        const cls = classOf(home)
        if (cls !== "fast") finding("hot_not_fast", `${at} is hot (databases, config) but ${home} is ${cls ?? "not a manifest target"}: hot volumes belong on fast targets`)
      } else {
        // PVE leaves a mount point out of vzdump unless backup=1 (rootfs is always in)
        if (ref.options.get("backup") === "1") finding("bulk_backed_up", `${at} is bulk but has backup=1: vzdump would capture it; set backup=0`)
        if (v.backup === undefined) finding("unprotected", `bulk volume ${at} has no backup decision: it is in no backup`)
      }
    }
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// The pass

interface PassContext {
  readonly configs: ReadonlyArray<StorageConfigEntry>
  nodes: ReadonlyArray<NodeStorageEntry>
  readonly prevPending: ReadonlyMap<string, ReportPendingSignature>
  readonly nowIso: string
}

interface TargetOutcome {
  readonly status: TargetStatus | undefined
  readonly pending: ReportPendingSignature | undefined
}

const pendingKey = (op: string, storage: string) => `${op} ${storage}`

const probeOf = (type: TargetType, durableId: string): TargetProbe => ({ pveEntry: true, usbUuid: type === "usb" ? durableId : null })

export const storageReconcilePass = (input: StorageInput) =>
  Effect.gen(function*() {
    const pve = yield* Proxmox
    const priv = yield* Privileged
    const store = yield* StorageTargetStore
    const status = yield* StorageStatus
    const vault = yield* CredsVault
    const auditLog = yield* AuditLog
    const pbsKey = yield* Effect.serviceOption(PbsKey)

    const [configs, nodes] = yield* Effect.all([pve.storageList, pve.nodeStorage], { concurrency: 2 })
    const records = new Map((yield* store.records).map((r) => [r.id, r] as const))
    const prev = yield* status.snapshot
    const ctx: PassContext = {
      configs,
      nodes,
      prevPending: new Map(prev.pending.map((p) => [pendingKey(p.op, String(p.params["storage"])), p] as const)),
      nowIso: new Date(yield* Clock.currentTimeMillis).toISOString().replace(/\.\d{3}Z$/, "Z")
    }
    let created = false

    const audit = (action: string, target: string, decision: string, detail: Record<string, unknown>) =>
      auditLog.audit({ actor: "storage", action, target, decision, detail })

    const nodeEntry = (id: string) => ctx.nodes.find((n) => n.storage === id)

    /** PVE's view of reachability for a target whose entry exists. */
    const pveReachable = (id: string): { readonly available: boolean; readonly detail: string | null } => {
      const n = nodeEntry(id)
      if (n === undefined) return { available: false, detail: "PVE has no storage entry for it yet" }
      if (n.active === 1) return { available: true, detail: null }
      return { available: false, detail: "PVE reports it inactive: the server does not answer or the disk is not mounted" }
    }

    /** Whether a target may hold data; unknown counts as yes (fail safe). */
    const holdsData = (id: string) =>
      Effect.gen(function*() {
        const n = nodeEntry(id)
        if (n === undefined) return { holds: true, why: "PVE has no entry for it, so what is on it cannot be listed" }
        if (n.active !== 1) return { holds: true, why: "it is not reachable now, so what is on it cannot be listed" }
        const listed = yield* Effect.either(pve.storageContent(id as StorageTarget["id"]))
        if (Either.isLeft(listed)) return { holds: true, why: `its content could not be listed (${describe(listed.left)})` }
        const backups = listed.right.filter((e) => e.content === "backup").length
        const volumes = listed.right.length - backups
        if (listed.right.length > 0) return { holds: true, why: `it holds ${backups} backup(s) and ${volumes} other volume(s)` }
        const runs = yield* Effect.serviceOption(ProtectionStore).pipe(
          Effect.flatMap(Option.match({
            onNone: () => Effect.succeed(false),
            onSome: (ps) => Effect.map(ps.runs, (rs) => rs.some((r) => r.storage === id && r.lastSuccessMs !== null))
          })),
          Effect.orElseSucceed(() => true)
        )
        if (runs) return { holds: true, why: "the agent has made backups on it" }
        return { holds: false, why: "PVE lists nothing on it" }
      })

    /** A target the manifest removed (detach) or decommissions, given its record. */
    const remove = (rec: TargetRecord, mode: RemovalMode): Effect.Effect<TargetOutcome, JournalError> =>
      Effect.gen(function*() {
        const op = removalOp(mode)
        const base: TargetStatus = {
          id: rec.id,
          type: rec.type,
          role: rec.role,
          class: rec.class,
          verdict: "needs_operator",
          detail: null,
          available: null,
          availabilityDetail: null,
          placement: [],
          probe: probeOf(rec.type, rec.durableId)
        }
        const holds = yield* holdsData(rec.id)
        if (holds.holds) {
          const key = pendingKey(op, rec.id)
          const known = ctx.prevPending.get(key)
          const reason = `${op} of storage target '${rec.id}': ${holds.why}`
          if (known === undefined) yield* audit(op, rec.id, "pending_signature", { reason: holds.why })
          return {
            status: {
              ...base,
              detail: `${holds.why}: it is ${mode === "detach" ? "detached" : "decommissioned"} only with an operator signature ` +
                `(op ${op}, params {"storage":"${rec.id}"}); nothing is unmounted or deleted meanwhile`
            },
            pending: { op, vmid: null, params: { storage: rec.id }, reason, since: known?.since ?? ctx.nowIso }
          }
        }
        if (rec.type === "usb" && rec.state === "attached") {
          const un = yield* Effect.either(priv.unmountUsb(rec.id))
          if (Either.isLeft(un)) {
            return { status: { ...base, detail: `empty, but could not be unmounted: ${un.left.message}` }, pending: undefined }
          }
        }
        yield* store.setState(rec.id, mode === "detach" ? "detached" : "decommissioned")
        yield* audit(op, rec.id, "allowed", { reason: `${holds.why}: nothing to lose`, basis: "empty" })
        yield* Effect.logInfo(`storage: ${rec.id} ${mode === "detach" ? "detached" : "decommissioned"} (${holds.why})`)
        return {
          status: mode === "detach" ? undefined : { ...base, verdict: "decommissioned", detail: null, probe: null },
          pending: undefined
        }
      })

    /** A target the manifest lists. */
    const reconcile = (t: StorageTarget, rec: TargetRecord | undefined): Effect.Effect<TargetOutcome, JournalError> =>
      Effect.gen(function*() {
        const live = rec !== undefined && rec.state !== "decommissioned" ? rec : undefined
        const base: TargetStatus = {
          id: t.id,
          type: live?.type ?? t.type,
          role: t.role,
          class: live?.class ?? t.class,
          verdict: "ok",
          detail: null,
          available: null,
          availabilityDetail: null,
          placement: [],
          probe: probeOf(live?.type ?? t.type, live?.durableId ?? durableIdText(t))
        }
        const verdict = (v: TargetVerdict, detail: string | null, extra: Partial<TargetStatus> = {}): TargetOutcome => ({
          status: { ...base, verdict: v, detail, ...extra },
          pending: undefined
        })
        const reach = () => pveReachable(t.id)

        // what was fixed at attach
        if (live !== undefined) {
          if (live.type !== t.type || live.durableId !== durableIdText(t)) {
            const r = reach()
            return verdict("needs_operator", `'${t.id}' was attached as ${live.type} ${live.durableId}: a manifest cannot change what a target is ` +
              "(decommission it, then attach the new storage under a new id)", { available: r.available, availabilityDetail: r.detail })
          }
          const refused = classChangeRefused([{ ...t, class: live.class }], [t])[0]
          if (refused !== undefined) {
            const r = reach()
            return verdict("needs_operator", refused.message, { available: r.available, availabilityDetail: r.detail })
          }
        }

        if (t.state === "decommissioned") {
          if (live !== undefined) return yield* remove(live, "decommission")
          return verdict("decommissioned", null, { probe: null })
        }
        if (t.state === "disconnected") {
          // expected away (a rotated disk): nothing mounted or created; reachability reported
          const r = reach()
          return verdict("ok", "disconnected in the manifest: not mounted or created by the agent", { available: r.available, availabilityDetail: r.detail })
        }

        // attached: record it (class fixed from now on), audited once
        if (live === undefined || live.state !== "attached") {
          if (live === undefined) yield* store.recordAttach(t)
          else yield* store.setState(t.id, "attached")
          yield* audit("storage-attach", t.id, "allowed", { type: t.type, class: t.class, role: t.role, durable_id: durableIdText(t) })
        }

        // a USB disk: mounted by UUID when present
        let usbMounted = true
        let usbDetail: string | null = null
        if (t.type === "usb" && typeof t.durable_id === "string") {
          const uuid = t.durable_id
          const st = yield* Effect.either(priv.usbState({ targetId: t.id, uuid }))
          if (Either.isLeft(st)) {
            usbMounted = false
            usbDetail = `its mount state could not be read: ${st.left.message}`
          } else {
            switch (st.right.state) {
              case "mounted":
                break
              case "unmounted": {
                const m = yield* Effect.either(priv.mountUsb({ targetId: t.id, uuid }))
                if (Either.isLeft(m)) {
                  const e = m.left
                  if (e.reason === "InvalidArgument" || e.reason === "UntrustedPath") return verdict("needs_operator", `not mounted: ${e.message}`, { available: false })
                  usbMounted = false
                  usbDetail = `mounting failed: ${e.message}`
                } else {
                  yield* Effect.logInfo(`storage: ${t.id} mounted at ${m.right.mountPoint} (${m.right.unit})`)
                }
                break
              }
              case "absent":
                usbMounted = false
                usbDetail = `the disk (filesystem UUID ${uuid}) is not plugged in`
                break
              case "stale":
                usbMounted = false
                usbDetail = "the disk was pulled while mounted; plug it back in"
                break
              case "foreign":
                return verdict("needs_operator", `another filesystem is mounted at ${usbMountPoint(t.id)}; the agent mounts nothing over it`, { available: false })
            }
          }
        }

        // the PVE entry: matched, or created where the agent may
        let entry = ctx.configs.find((c) => c.storage === t.id)
        let opened: Option.Option<{ readonly sealed: Redacted.Redacted<string>; readonly secret: StorageSecret }> = Option.none()
        if (t.creds !== undefined) {
          const o = yield* Effect.either(vault.open(t.id, t.creds))
          if (Either.isLeft(o)) return verdict("needs_operator", `creds: ${o.left.message}`)
          if (o.right.kind === "sealed") opened = Option.some({ sealed: o.right.sealed, secret: o.right.secret })
        }

        // a PBS target whose creds carry no key uses this host's own key K (issue 13): the entry is
        // added disabled and keyless, K attached through the root helper, the fingerprint PVE then
        // lists checked against K's, and only then enabled. A pass after a crash in between finds
        // the disabled entry and finishes it; an entry holding another key is reported, never enabled
        let hostKey: Option.Option<KeyFingerprint> = Option.none()
        if (t.type === "pbs" && Option.isSome(opened) && opened.value.secret.encryptionKey === undefined && Option.isSome(pbsKey)) {
          const fp = yield* Effect.either(pbsKey.value.fingerprint)
          if (Either.isLeft(fp)) return verdict("needs_operator", `this host's PBS key: ${fp.left.message}`)
          hostKey = fp.right
        }
        /** attach K (unless PVE already lists it), read back, require K's fingerprint, enable; the entry as it now is, or the outcome. */
        const finishHostKey = (fp: KeyFingerprint, alreadyOn: boolean) =>
          Effect.gen(function*() {
            const keep = "the storage stays disabled and nothing is backed up to it"
            if (!alreadyOn) {
              const a = yield* Effect.either(pbsKey.pipe(Effect.flatMap((k) => k.attachToStorage(t.id))))
              if (Either.isLeft(a)) {
                const why = a.left._tag === "NoSuchElementException" ? "no PbsKey service" : a.left.message
                return Either.left(verdict("needs_operator", `attaching this host's PBS key to '${t.id}' failed: ${why}; ${keep}`, { available: false }))
              }
            }
            const reread = yield* Effect.either(pve.storageList)
            if (Either.isLeft(reread)) {
              return Either.left(verdict("ok", null, { available: false, availabilityDetail: `its key could not be read back (${describe(reread.left)}); ${keep} until a pass can` }))
            }
            const now = reread.right.find((c) => c.storage === t.id)
            const got = now?.["encryption-key"]
            if (now === undefined || got === undefined || got.toLowerCase() !== fp) {
              yield* audit("storage-key-attach", t.id, "refused", { fingerprint: fp, listed: got ?? null })
              return Either.left(verdict("needs_operator", `after attaching this host's PBS key, PVE lists ${got === undefined ? "no key" : `key fingerprint ${got}`} on '${t.id}', not this host's ${fp}; ${keep}`, { available: false }))
            }
            const enabled = yield* Effect.either(pve.setStorageDisabled(t.id, false))
            if (Either.isLeft(enabled)) {
              return Either.left(verdict("ok", null, { available: false, availabilityDetail: `it holds this host's key; enabling it failed (${describe(enabled.left)}): the next pass tries again` }))
            }
            yield* audit("storage-key-attach", t.id, "allowed", { fingerprint: fp })
            yield* Effect.logInfo(`storage: ${t.id} holds this host's PBS key (${fp.slice(0, 23)}) and is enabled`)
            created = true
            const { disable: _disabled, ...rest } = now
            return Either.right(rest as StorageConfigEntry)
          })
        if (Option.isSome(hostKey) && entry !== undefined && entry.type === "pbs") {
          const fp = hostKey.value
          const have = entry["encryption-key"]
          if (have !== undefined && have !== "" && have.toLowerCase() !== fp) {
            return verdict("needs_operator", `PVE storage '${t.id}' holds another encryption key (fingerprint ${have}) than this host's (${fp}): ` +
              `nothing is backed up to it; remove its key (pvesm set ${t.id} --delete encryption-key) and the agent attaches this host's`)
          }
          // disabled: the agent's own attach, interrupted (keyless, or keyed but not enabled yet)
          if (entry.disable === 1) {
            const done = yield* finishHostKey(fp, have !== undefined && have !== "")
            if (Either.isLeft(done)) return done.left
            entry = done.right
          }
        }
        if (entry !== undefined) {
          const mismatch = entryMismatch(t, entry)
          if (mismatch !== undefined) return verdict("needs_operator", mismatch)
          // creds the entry was created with, against the manifest's now
          const stored = live?.credsSealed ?? null
          if (stored !== null && Option.isSome(opened)) {
            const before = yield* Effect.either(vault.openStored(t.id, stored))
            if (Either.isRight(before) && !sameSecret(before.right, opened.value.secret)) {
              return verdict("needs_operator", `the manifest's creds for '${t.id}' changed; the agent does not rewrite a storage's secret: ` +
                `pvesm set ${t.id} --password (and --encryption-key for a new key), then the agent records them`)
            }
          }
        } else if (usbMounted) {
          const params = createParams(t, Option.map(opened, (o) => o.secret), { hostKey: Option.isSome(hostKey) })
          if (Either.isLeft(params)) return verdict("needs_operator", `PVE has no storage '${t.id}': ${params.left}`)
          const made = yield* Effect.either(pve.createStorage(params.right))
          if (Either.isLeft(made)) {
            const e = made.left
            if (e._tag === "PveApiError" && e.kind === "permission") {
              const missing = e.permission === undefined ? "a privilege" : `${e.permission.privileges.join("|")} on ${e.permission.aclPath}`
              return verdict("needs_operator", `the agent's token may not create storages (missing ${missing}); run: ${operatorCommand(t)}`)
            }
            if (e._tag === "PveApiError" && UNREACHABLE.test(e.message)) {
              return verdict("ok", null, { available: false, availabilityDetail: `not created yet, PVE cannot reach it: ${e.message}` })
            }
            if (e._tag === "PveApiError") return verdict("needs_operator", `PVE refused to create storage '${t.id}': ${e.message}`)
            return verdict("ok", null, { available: null, availabilityDetail: `not created yet: ${describe(e)}` })
          }
          created = true
          if (Option.isSome(opened)) yield* store.setCreds(t.id, Redacted.value(opened.value.sealed))
          yield* audit("storage-create", t.id, "allowed", { type: params.right.type, content: params.right.content.join(",") })
          yield* Effect.logInfo(`storage: created PVE storage ${t.id} (${params.right.type})`)
          if (Option.isSome(hostKey)) {
            const done = yield* finishHostKey(hostKey.value, false)
            if (Either.isLeft(done)) return done.left
          }
          return verdict("ok", null, { available: null })
        }
        if (!usbMounted) return verdict("ok", null, { available: false, availabilityDetail: usbDetail })
        const r = reach()
        return verdict("ok", null, { available: r.available, availabilityDetail: r.detail })
      })

    const outcomes: Array<TargetOutcome> = []
    if (input.storage !== undefined) {
      for (const t of input.storage) outcomes.push(yield* reconcile(t, records.get(t.id)))
      const listed = new Set(input.storage.map((t) => t.id as string))
      for (const rec of records.values()) {
        if (!listed.has(rec.id) && rec.state === "attached") outcomes.push(yield* remove(rec, "detach"))
      }
    } else {
      // no manifest: nothing is decided; what the agent attached is still watched and reported
      for (const rec of records.values()) {
        if (rec.state !== "attached") continue
        const r = pveReachable(rec.id)
        outcomes.push({
          status: {
            id: rec.id,
            type: rec.type,
            role: rec.role,
            class: rec.class,
            verdict: "ok",
            detail: "the desired state has no storage manifest: nothing is changed",
            available: r.available,
            availabilityDetail: r.detail,
            placement: [],
            probe: probeOf(rec.type, rec.durableId)
          },
          pending: undefined
        })
      }
    }
    // a storage just created is activated by PVE: read its state again
    if (created) ctx.nodes = yield* pve.nodeStorage

    let targets = outcomes.flatMap((o) => (o.status === undefined ? [] : [o.status])).map((t): TargetStatus => {
      if (t.available !== null || t.probe === null || t.verdict !== "ok") return t
      const r = pveReachable(t.id)
      return { ...t, available: r.available, availabilityDetail: r.detail }
    })

    // placement, against the classes fixed at attach (best effort: an unreadable guest list or
    // config leaves that part out, as in the host report)
    const guestIds = new Set((input.policies?.guests ?? []).map((g) => g.vmid as number))
    const listedGuests = guestIds.size === 0 ? [] : yield* pve.listGuests.pipe(Effect.orElseSucceed(() => []))
    const present = listedGuests.filter((g) => guestIds.has(g.vmid))
    const guestConfigs = new Map<number, GuestConfig>()
    for (const g of present) {
      const c = yield* Effect.either(pve.guestConfig(g.vmid as VmId))
      if (Either.isRight(c)) guestConfigs.set(g.vmid, c.right)
    }
    const classes = new Map(targets.map((t) => [t.id, t.class] as const))
    const findings = placementFindings(input.policies, (id) => classes.get(id), guestConfigs)
    targets = targets.map((t) => ({ ...t, placement: findings.get(t.id) ?? [] }))

    const snapshot: StorageSnapshot = { targets, pending: outcomes.flatMap((o) => (o.pending === undefined ? [] : [o.pending])) }
    for (const t of targets) {
      if (t.verdict === "needs_operator" && prev.targets.find((p) => p.id === t.id)?.detail !== t.detail) {
        yield* Effect.logWarning(`storage: ${t.id} needs an operator: ${t.detail ?? ""}`)
      }
    }
    const changed = yield* status.replace(snapshot)
    if (changed.length > 0) {
      // a drop (or return) the pass measured before the watchdog did: reported at once all the same
      for (const c of changed) yield* (c.to ? Effect.logInfo : Effect.logWarning)(`storage: ${c.id} ${c.to ? "reachable again" : `unreachable: ${c.detail ?? "no detail"}`}`)
      yield* Effect.flatMap(Effect.serviceOption(ReportNow), Option.match({ onNone: () => Effect.void, onSome: (r) => r.request }))
    }
    return snapshot
  }).pipe(Effect.withSpan("storageReconcilePass"))

// ---------------------------------------------------------------------------------------------
// For the daemon

/**
 * The pass on a schedule: now, then every `every` (protection.pass_interval_seconds), over the
 * desired state `current` yields at that moment (None: nothing published yet, no pass). A failed
 * pass is logged and the loop goes on; the last statuses stay in StorageStatus meanwhile.
 */
export const storageReconcileLoop = <R>(current: Effect.Effect<Option.Option<StorageInput>, never, R>, every: Duration.DurationInput) =>
  Effect.repeat(
    Effect.flatMap(current, Option.match({
      onNone: () => Effect.void,
      onSome: (i) =>
        storageReconcilePass(i).pipe(
          Effect.asVoid,
          Effect.catchAllCause((cause) => Effect.logWarning("storage pass failed; the previous target states stand", cause))
        )
    })),
    Schedule.spaced(every)
  ).pipe(Effect.asVoid)

/**
 * The storage services the pass, the watchdog, the report hook and the signed storage jobs share
 * (one StorageStatus for all of them). Needs Privileged, the state database and AgentConfig (the
 * creds key lives in state_dir); ReportNow comes from the daemon (reportNowFromQueue).
 */
export const StorageServicesLive = Layer.mergeAll(StorageStatusLive, CredsVaultLive, StorageRemoverLive).pipe(
  Layer.provideMerge(StorageTargetStoreLive)
)
