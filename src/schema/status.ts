/**
 * The daemon's loopback status endpoint (issue 14; config `status_endpoint`):
 * - `GET /health`: HealthBody, 200 when status is "ok", 503 otherwise. The health gate
 *   (configs/libexec/felhom-healthgate, a shell script) matches the compact JSON's leading
 *   `{"status":"ok","version":"<v>"` literally, so those two fields come first, in that order,
 *   with no whitespace.
 * - `GET /metrics`: Prometheus text exposition 0.0.4.
 * - `GET /status`: StatusBody, what `felhom-agent status` adds to what it reads from the state DB.
 * Nothing here is secret; the endpoint still binds loopback only.
 */
import { Schema } from "effect"

export const CheckState = Schema.Literal("ok", "failing")

export const HealthBody = Schema.Struct({
  /** "ok" when every check is ok, else "failing". */
  status: Schema.Literal("ok", "failing"),
  version: Schema.String,
  pid: Schema.Int,
  started_at: Schema.String,
  checks: Schema.Struct({
    /** The hub loop progressed within status_endpoint.stall_seconds (the watchdog's rule). */
    loop: CheckState,
    /** Journal recovery has run; until then nothing is mutated. */
    recovered: CheckState,
    /** The state store's last probe succeeded. */
    store: CheckState,
    /** At least one hub exchange succeeded since this process started. */
    hub: CheckState
  })
})
export type HealthBody = typeof HealthBody.Type

export const HEALTH_PATH = "/health"
export const METRICS_PATH = "/metrics"
export const STATUS_PATH = "/status"

export const PendingSignatureView = Schema.Struct({
  op: Schema.String,
  vmid: Schema.NullOr(Schema.Int),
  reason: Schema.String,
  since: Schema.String
})

export const StatusBody = Schema.Struct({
  health: HealthBody,
  cycles: Schema.Int,
  last_cycle_at: Schema.NullOr(Schema.String),
  /** The last hub exchange that succeeded, and the last error since then (null if none). */
  last_hub_contact_at: Schema.NullOr(Schema.String),
  last_hub_error: Schema.NullOr(Schema.String),
  applied_generation: Schema.NullOr(Schema.Int),
  pending_signatures: Schema.Array(PendingSignatureView),
  /** Guests the desired state wants that PVE no longer has (planned as `recover`). */
  lost_guests: Schema.Array(Schema.Int),
  watchdog: Schema.Literal("armed", "stalled", "off"),
  cloudflared: Schema.Literal("running", "stopped", "unknown", "disabled")
})
export type StatusBody = typeof StatusBody.Type
