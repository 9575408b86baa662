/**
 * The FelhomAgent role (SPEC §2, docs/operations.md §2): exactly the privileges the agent's PVE
 * token has. One list for `enroll` (HostSetup's `pveum role add|modify`) and the simulator's seed,
 * so the role the tests run under is the role a host gets. There is no VM.Config.CPUMemory.
 */
export const FELHOM_ROLE = "FelhomAgent"

export const FELHOM_ROLE_PRIVS = [
  "VM.Allocate",
  "VM.Audit",
  "VM.Config.Disk",
  "VM.Config.CPU",
  "VM.Config.Memory",
  "VM.Config.Network",
  "VM.Config.Options",
  "VM.PowerMgmt",
  "VM.Snapshot",
  "VM.Snapshot.Rollback",
  "VM.Backup",
  "Datastore.Allocate",
  "Datastore.AllocateSpace",
  "Datastore.Audit",
  "Sys.Audit",
  "SDN.Use"
] as const
