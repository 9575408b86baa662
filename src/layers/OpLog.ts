/**
 * OpLog: the operation log (SPEC §9): journaled ops with their steps and in-flight UPIDs, and the
 * admission that spends a signature's nonce and claims a job key with the op. One of the four
 * services the state store provides (src/layers/Journal.ts implements them on SQLite).
 */
import { Context } from "effect"
import type { JournalShape } from "./Journal.js"

export type OpLogShape = Pick<
  JournalShape,
  "begin" | "admit" | "probe" | "nonceRecorded" | "stepStarted" | "recordUpid" | "stepDone" | "stepCompensated" | "finish" | "get" | "inFlight" | "list"
>

export class OpLog extends Context.Tag("felhom/OpLog")<OpLog, OpLogShape>() {}
