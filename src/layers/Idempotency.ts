/**
 * Idempotency: keys claimed once across retries and restarts, with their outcome. Implemented by
 * the state store (src/layers/Journal.ts).
 */
import { Context } from "effect"
import type { JournalShape } from "./Journal.js"

export type IdempotencyShape = Pick<JournalShape, "idempotencyGet" | "idempotencyClaim" | "idempotencyComplete" | "runOnce">

export class Idempotency extends Context.Tag("felhom/Idempotency")<Idempotency, IdempotencyShape>() {}
