/**
 * The dev hub: the operator's hub simulated on Effect's Clock (agent protocol of
 * docs/hub-protocol.md plus an admin surface), in-process or served on loopback.
 */
export { layerAppHttpClient, makeAppHttpClient } from "./client.js"
export { DevHubBindRefused, DevHubEnrollRefused, DevHubReleaseRefused, DevHubServeError, DevHubUnknownHost } from "./errors.js"
export {
  DEV_HUB_MAX_BODY_BYTES,
  type DevHub,
  type DevHubHostView,
  type DevHubOptions,
  type DevHubRelease,
  type EnrollmentGrant,
  type EnrollmentRecord,
  type EscrowPutFault,
  makeDevHub,
  type ReceivedReport,
  type RecordedJobResult,
  type StateAlert,
  stateAlerts
} from "./hub.js"
export {
  devHubCaPem,
  type DevHubServer,
  runDevHubCli,
  type RunDevHubCliOptions,
  serveApp,
  type ServeAppOptions,
  type ServedApp,
  serveDevHub,
  type ServeDevHubOptions
} from "./server.js"
