/**
 * AuditLog: the customer-visible, hash-chained audit log (SPEC §9). Implemented by the state store
 * (src/layers/Journal.ts); the chain rules are pure in src/schema/journal.ts.
 */
import { Context } from "effect"
import type { JournalShape } from "./Journal.js"

export type AuditLogShape = Pick<JournalShape, "audit" | "auditTail" | "verifyAudit">

export class AuditLog extends Context.Tag("felhom/AuditLog")<AuditLog, AuditLogShape>() {}
