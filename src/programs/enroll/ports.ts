/**
 * What the enrollment programs (enroll.ts, rotate.ts) talk to, as narrow services so the programs
 * can be driven by tests and wired by the CLI:
 *
 * - EnrollHub: the hub's enrollment call (the operator's one-time token as bearer) and the host's
 *   escrow calls (its api key as bearer). Live: src/programs/enroll/hubLive.ts over HubEnroll and
 *   the Hub client.
 * - EnrollIO: the person at the box. Secrets typed in are read without echo on a terminal, or a
 *   line of stdin otherwise; the recovery code is shown exactly once.
 * - EnrollSteps: the step table (migration 0014_enrollment): which steps are done, with public
 *   facts only.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Data, Effect, Layer, Option, type Redacted, Schema } from "effect"
import type { EnrollRequest, EnrollResponse, EscrowBlob, EscrowUpload, EscrowUploadResponse } from "../../schema/escrow.js"
import type { HubError } from "../../schema/hub.js"

export interface EnrollHubShape {
  readonly enroll: (token: Redacted.Redacted<string>, req: EnrollRequest) => Effect.Effect<EnrollResponse, HubError>
  /** The host's current escrow blob (its api key as bearer). */
  readonly escrow: (apiKey: Redacted.Redacted<string>) => Effect.Effect<Option.Option<EscrowBlob>, HubError>
  /** Compare-and-swap upload; a 409 is HubError reason Conflict (the hub kept what it had). */
  readonly putEscrow: (apiKey: Redacted.Redacted<string>, u: EscrowUpload) => Effect.Effect<EscrowUploadResponse, HubError>
}

export class EnrollHub extends Context.Tag("felhom/EnrollHub")<EnrollHub, EnrollHubShape>() {}

export interface EnrollIOShape {
  /** A line for the person (stdout). */
  readonly say: (text: string) => Effect.Effect<void>
  /** A secret line: no echo on a terminal, else the next line of stdin; None at the end of input. */
  readonly secretLine: (prompt: string) => Effect.Effect<Option.Option<string>>
  /** The recovery code's one display (stdout); the only place it is ever written. */
  readonly showSecret: (text: string) => Effect.Effect<void>
  /** After the code was typed back: a terminal clears it from the screen; a pipe does nothing. */
  readonly forgetSecret: Effect.Effect<void>
}

export class EnrollIO extends Context.Tag("felhom/EnrollIO")<EnrollIO, EnrollIOShape>() {}

/** Why enrollment (or a rotation) stopped; the message is for the person and never holds a secret. */
export class EnrollFailed extends Data.TaggedError("EnrollFailed")<{
  readonly step: string
  readonly message: string
  /** The CLI's exit code: 1 failed, 2 usage. */
  readonly code?: number
}> {}

// ---------------------------------------------------------------------------------------------
// The step table

export interface StepRow {
  readonly step: string
  readonly status: "started" | "done"
  /** Public facts only (JSON object). */
  readonly detail: Readonly<Record<string, unknown>>
}

export interface EnrollStepsShape {
  readonly all: Effect.Effect<ReadonlyArray<StepRow>, EnrollFailed>
  readonly started: (step: string) => Effect.Effect<void, EnrollFailed>
  readonly done: (step: string, detail?: Readonly<Record<string, unknown>>) => Effect.Effect<void, EnrollFailed>
}

export class EnrollSteps extends Context.Tag("felhom/EnrollSteps")<EnrollSteps, EnrollStepsShape>() {}

const Rows = Schema.Array(Schema.Struct({
  step: Schema.String,
  status: Schema.Literal("started", "done"),
  detail: Schema.parseJson(Schema.Record({ key: Schema.String, value: Schema.Unknown }))
}))

const storeError = (e: unknown) =>
  new EnrollFailed({ step: "journal", message: `the state database: ${e instanceof Error ? e.message : "cannot be read or written"}` })

export const EnrollStepsLive: Layer.Layer<EnrollSteps, never, SqlClient.SqlClient> = Layer.effect(
  EnrollSteps,
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const all = sql`SELECT step, status, detail FROM enrollment_steps ORDER BY updated_at_ms, step`.pipe(
      Effect.flatMap(Schema.decodeUnknown(Rows)),
      Effect.mapError(storeError)
    )
    const write = (step: string, status: "started" | "done", detail: Readonly<Record<string, unknown>> | undefined) =>
      Effect.gen(function*() {
        const at = yield* Clock.currentTimeMillis
        const text = detail === undefined ? null : JSON.stringify(detail)
        yield* sql`INSERT INTO enrollment_steps (step, status, detail, updated_at_ms) VALUES (${step}, ${status}, ${text ?? "{}"}, ${at})
          ON CONFLICT (step) DO UPDATE SET status = excluded.status, updated_at_ms = excluded.updated_at_ms,
          detail = CASE WHEN ${text} IS NULL THEN enrollment_steps.detail ELSE excluded.detail END`
      }).pipe(Effect.mapError(storeError))
    return EnrollSteps.of({
      all,
      started: (step) => write(step, "started", undefined),
      done: (step, detail) => write(step, "done", detail ?? {})
    })
  })
)
