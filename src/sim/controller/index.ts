/** The simulated controller (issue 11): the golden-baked unit and controller of each guest. */
export {
  CALL_HISTORY,
  type ControllerBoard,
  type ControllerCall,
  type ControllerFault,
  type ControllerState,
  imageTag,
  makeBoard,
  modeOf,
  runSimController,
  type SimControllerOptions,
  type SimControllerView,
  type SimTransport,
  versionOf
} from "./controller.js"
export { BootstrapUnreadable, readBootstrap, readConfig } from "./bootstrapFiles.js"
export { matchesPins, pinnedCall, pinsOf, SimCallError, type SimCallRequest, type SimCallResult } from "./pinnedHttps.js"
export {
  bootstrapDirOf,
  type ProbeRequest,
  type ProbeResult,
  type SimControllers,
  simControllers,
  type SimControllersOptions,
  SimProbeError
} from "./fleet.js"
