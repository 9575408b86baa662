/** `demo`: PVE simulator, dev hub and the daemon in one process, the control loop end to end. */
import * as NodeCommandExecutor from "@effect/platform-node/NodeCommandExecutor"
import { Effect } from "effect"
import { runDemo } from "../daemon/demo.js"
import { toCliFailure } from "./failure.js"

export const demo = () => runDemo.pipe(Effect.mapError((e) => toCliFailure(e)), Effect.provide(NodeCommandExecutor.layer))
