/**
 * PVE's permission model, reduced to what the simulator needs: ACL entries (path, user or token,
 * privileges, propagate), PVE's resolution rule (the deepest level that has an applicable entry
 * for the entity replaces everything inherited), and privilege separation (a privsep token gets
 * the intersection of its own and its user's privileges).
 */
import { FELHOM_ROLE_PRIVS } from "../../schema/pveRole.js"

/** PVE 9 privilege names (VM.Monitor is gone in 9; a role naming it is refused). */
export const PVE_PRIVILEGES = [
  "Datastore.Allocate",
  "Datastore.AllocateSpace",
  "Datastore.AllocateTemplate",
  "Datastore.Audit",
  "Group.Allocate",
  "Mapping.Audit",
  "Mapping.Modify",
  "Mapping.Use",
  "Permissions.Modify",
  "Pool.Allocate",
  "Pool.Audit",
  "Realm.Allocate",
  "Realm.AllocateUser",
  "SDN.Allocate",
  "SDN.Audit",
  "SDN.Use",
  "Sys.AccessNetwork",
  "Sys.Audit",
  "Sys.Console",
  "Sys.Incoming",
  "Sys.Modify",
  "Sys.PowerMgmt",
  "Sys.Syslog",
  "User.Modify",
  "VM.Allocate",
  "VM.Audit",
  "VM.Backup",
  "VM.Clone",
  "VM.Config.CDROM",
  "VM.Config.CPU",
  "VM.Config.Cloudinit",
  "VM.Config.Disk",
  "VM.Config.HWType",
  "VM.Config.Memory",
  "VM.Config.Network",
  "VM.Config.Options",
  "VM.Console",
  "VM.GuestAgent.Audit",
  "VM.GuestAgent.FileRead",
  "VM.GuestAgent.FileSystemMgmt",
  "VM.GuestAgent.FileWrite",
  "VM.GuestAgent.Unrestricted",
  "VM.Migrate",
  "VM.PowerMgmt",
  "VM.Replicate",
  "VM.Snapshot",
  "VM.Snapshot.Rollback"
] as const
export type PvePrivilege = (typeof PVE_PRIVILEGES)[number]

const KNOWN = new Set<string>(PVE_PRIVILEGES)
export const isPrivilege = (s: string): s is PvePrivilege => KNOWN.has(s)

/** The FelhomAgent role (SPEC §2): enroll's list (src/schema/pveRole.ts), each a privilege this simulator knows. */
export const FELHOM_AGENT_ROLE: ReadonlyArray<PvePrivilege> = FELHOM_ROLE_PRIVS.filter(isPrivilege)
if (FELHOM_AGENT_ROLE.length !== FELHOM_ROLE_PRIVS.length) throw new Error("the FelhomAgent role names a privilege the simulator does not know")

/** One resolved ACL entry. `ugid` is a user id (`user@realm`) or a token id (`user@realm!name`). */
export interface AclEntry {
  readonly path: string
  readonly ugid: string
  readonly privs: ReadonlySet<string>
  readonly propagate: boolean
}

/** privilege -> propagates (PVE's /access/permissions value: 1 propagates, 0 this path only). */
export type PrivMap = ReadonlyMap<string, boolean>

/** "/vms/100" -> ["/", "/vms", "/vms/100"] */
export const pathLevels = (path: string): ReadonlyArray<string> => {
  const parts = path.split("/").filter((p) => p.length > 0)
  const levels = ["/"]
  let acc = ""
  for (const part of parts) {
    acc = `${acc}/${part}`
    levels.push(acc)
  }
  return levels
}

/** Privileges one ACL subject (user or token) has on `path`, by PVE's override-by-depth rule. */
export const subjectPrivileges = (acl: ReadonlyArray<AclEntry>, ugid: string, path: string): PrivMap => {
  const levels = pathLevels(path)
  let current = new Map<string, boolean>()
  for (const level of levels) {
    const isFinal = level === levels[levels.length - 1]
    const applicable = acl.filter((e) => e.ugid === ugid && e.path === level && (e.propagate || isFinal))
    if (applicable.length === 0) continue
    const next = new Map<string, boolean>()
    for (const entry of applicable) {
      for (const priv of entry.privs) next.set(priv, (next.get(priv) ?? false) || entry.propagate)
    }
    current = next
  }
  return current
}

export interface TokenIdentity {
  /** `user@realm!name` */
  readonly tokenid: string
  /** `user@realm` */
  readonly userid: string
  /** `name` */
  readonly tokenName: string
  readonly privsep: boolean
}

/** Effective privileges of a token on `path`: privsep intersects with the owning user. */
export const tokenPrivileges = (acl: ReadonlyArray<AclEntry>, token: TokenIdentity, path: string): PrivMap => {
  const user = subjectPrivileges(acl, token.userid, path)
  if (!token.privsep) return user
  const own = subjectPrivileges(acl, token.tokenid, path)
  const result = new Map<string, boolean>()
  for (const [priv, propagate] of own) {
    const fromUser = user.get(priv)
    if (fromUser !== undefined) result.set(priv, propagate && fromUser)
  }
  return result
}

export const splitTokenId = (tokenid: string): { readonly userid: string; readonly tokenName: string } | undefined => {
  const m = /^([^\s:!]+@[A-Za-z][A-Za-z0-9.\-_]+)!([A-Za-z][A-Za-z0-9.\-_]+)$/.exec(tokenid)
  if (m === null) return undefined
  return { userid: m[1]!, tokenName: m[2]! }
}
