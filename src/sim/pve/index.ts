/**
 * The PVE simulator: a Proxmox VE API (under /api2/json) that behaves like a host (async tasks
 * with UPIDs and logs, locks, privilege checks with PVE's 403 texts, storage content, vzdump
 * archives, snapshots, fault injection) on Effect's Clock. See docs in each module.
 */
export { layerSimHttpClient, makeSimHttpClient, type SimHttpClientOptions } from "./client.js"
export { defaultSeed, defaultSeedJson } from "./defaultSeed.js"
export { PveApiError, SimPveBindRefused, SimPveSeedError, SimPveServeError } from "./errors.js"
export { FELHOM_AGENT_ROLE, PVE_PRIVILEGES, type PvePrivilege } from "./privileges.js"
export {
  DEFAULT_TASK_DURATIONS_MS,
  decodeSeed,
  defaultSeedPath,
  loadSeed,
  SimPveFaultsSeed,
  SimPveQuirks,
  SimPveSeed,
  type SimPveFaults,
  type SimPveSeedEncoded,
  type SimTaskType,
  TASK_TYPES
} from "./seed.js"
export {
  isLoopbackHost,
  runSimPveCli,
  type RunSimPveCliOptions,
  serveSimPve,
  type ServeSimPveOptions,
  simFingerprint256,
  type SimPveServer
} from "./server.js"
export { REQUEST_LOG_LIMIT, type SimRequest } from "./env.js"
export {
  INSTALLER_STORAGES,
  makeSimPve,
  type SetMountPointResult,
  type SetStorageKeyResult,
  type SimGuestView,
  type SimPve,
  type SimPveOptions,
  type SimRequestView,
  type SimTaskView,
  type WipeNodeResult
} from "./sim.js"
export { type ClientKey, clientKeyOfText, shortKeyId } from "./pbsCrypt.js"
export { type SimGuestHealth, type SimNic, SIM_GUEST_PREFIX } from "./guestModel.js"
export { type SimStorageView } from "./routes/storage.js"
export { type MacConflict, type StorageRuntime } from "./state.js"
export { ArchiveCorruption, ServiceHealth } from "./seed.js"
export { simCertPem, simKeyPem } from "./tlsMaterial.js"
