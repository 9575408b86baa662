/**
 * GuestRecords: what the agent knows about guests beyond PVE, all agent-internal (never from the
 * hub): same-transaction and scratch provenance, guests holding customer data and guests found
 * lost, and the golden archives an operator vouched for. Implemented by the state store
 * (src/layers/Journal.ts).
 */
import { Context } from "effect"
import type { JournalShape } from "./Journal.js"

export type GuestRecordsShape = Pick<
  JournalShape,
  "recordProvenance" | "clearProvenance" | "provenanceOf" | "markCustomer" | "markRecovered" | "markLost" | "forgetGuest" | "guestRecords" | "registerGolden" | "goldenArchives"
>

export class GuestRecords extends Context.Tag("felhom/GuestRecords")<GuestRecords, GuestRecordsShape>() {}
