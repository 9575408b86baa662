/**
 * The agent's configuration file contract. Keys are snake_case as written in JSON; every key is
 * documented in configs/agent.example.json. Secrets decode straight into `Redacted` and carry a
 * message override so a value that fails to decode is never echoed in the error.
 */
import { Either, Schema } from "effect"
import { readFileSync, readlinkSync } from "node:fs"
import { posix } from "node:path"
import { parseTimeZone } from "../programs/protection/calendar.js"
import { NodeName } from "./ids.js"
import {
  DEFAULT_ARCHIVE_STORAGE_PATHS,
  DEFAULT_BOOTSTRAP_ROOT,
  isSafeAbsolutePath,
  pathsOverlap,
  SAFE_PATH_RULE
} from "./privileged.js"

/** ParseError text prints the offending input; the override keeps a mistyped secret out of it. */
export const Secret = Schema.Redacted(
  Schema.String.pipe(
    Schema.minLength(1),
    Schema.annotations({
      message: () => ({ message: "expected a non-empty string (value hidden)", override: true })
    })
  )
).annotations({
  message: () => ({ message: "expected a non-empty string (value hidden)", override: true })
})

const AbsolutePath = Schema.String.pipe(
  Schema.filter((s) => s.startsWith("/") || "expected an absolute path (starting with '/')")
)

const HttpsUrl = Schema.String.pipe(
  Schema.filter((s) => {
    try {
      const u = new URL(s)
      return (u.protocol === "https:" && u.username === "" && u.password === "") ||
        "expected an https:// URL without credentials in it"
    } catch {
      return "expected an https:// URL"
    }
  })
)

export const Fingerprint256 = Schema.String.pipe(
  Schema.pattern(/^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$/, {
    message: () => "expected a SHA-256 fingerprint: 32 hex pairs joined by ':' (as in PVE's ssl_fingerprint)"
  })
)

export const PveTokenId = Schema.String.pipe(
  Schema.pattern(/^[^\s@!:=]+@[A-Za-z][A-Za-z0-9._-]*![A-Za-z][A-Za-z0-9._-]*$/, {
    message: () => "expected a PVE API token id 'user@realm!tokenname'"
  })
)

export class TlsTrust extends Schema.Class<TlsTrust>("TlsTrust")({
  /** Full chain verification against this CA bundle (PEM). */
  ca_file: Schema.optional(AbsolutePath),
  /** Exact match of the leaf certificate's SHA-256 fingerprint. */
  fingerprint_sha256: Schema.optional(Fingerprint256),
  /** No verification at all; refused unless the endpoint is loopback. */
  insecure_skip_verify: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

export class ProxmoxConfig extends Schema.Class<ProxmoxConfig>("ProxmoxConfig")({
  url: HttpsUrl,
  token_id: PveTokenId,
  token_secret: Secret,
  /** The node this agent manages; when absent, the only node of the cluster is used. */
  node: Schema.optional(NodeName),
  tls: TlsTrust,
  request_timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 600)), { default: () => 30 }),
  task_timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(10, 86_400)), { default: () => 3600 })
}) {}

export const PrivilegedCommand = Schema.Literal(
  "pct",
  "vzdump",
  "felhom-mount-unit",
  "systemctl",
  "smartctl",
  "sensors",
  "tar",
  "zstd",
  "gzip",
  "lzop",
  "felhom-bootstrap",
  "felhom-golden",
  "felhom-pbskey",
  "pveum",
  "felhom-update",
  "felhom-cloudflared"
)
export type PrivilegedCommand = typeof PrivilegedCommand.Type

/**
 * The root-owned tree that bind-mount sources live in. Canonical and made of the same characters
 * the sudoers rule matches, so that the rule can name it literally; never "/".
 */
const BootstrapRoot = Schema.String.pipe(
  Schema.filter((s) =>
    isSafeAbsolutePath(s) ||
    `expected ${SAFE_PATH_RULE}; the pct set rule in configs/sudoers/felhom-agent must name the same path`
  )
)

export class PrivilegedConfig extends Schema.Class<PrivilegedConfig>("PrivilegedConfig")({
  /** `sudo`: non-root service user + sudoers allowlist (production). `direct`: already root. */
  mode: Schema.optionalWith(Schema.Literal("sudo", "direct"), { default: () => "sudo" as const }),
  /**
   * Root-owned (0755 root:root) directory whose subdirectories are bind-mounted into guests (one
   * per guest, SPEC §12). Must not overlap state_dir, which the service user owns (checked below).
   */
  bootstrap_root: Schema.optionalWith(BootstrapRoot, { default: () => DEFAULT_BOOTSTRAP_ROOT }),
  sudo_path: Schema.optionalWith(AbsolutePath, { default: () => "/usr/bin/sudo" }),
  /** Absolute paths of the allowlisted binaries; must match configs/sudoers/felhom-agent. */
  commands: Schema.optionalWith(Schema.partial(Schema.Record({ key: PrivilegedCommand, value: AbsolutePath })), {
    default: () => ({})
  }),
  timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 86_400)), { default: () => 600 }),
  /**
   * Directory storages whose `dump/` archives the integrity test may read as root (USB targets
   * are always included). Canonical, so the sudoers rules can name them literally.
   */
  archive_storage_paths: Schema.optionalWith(
    Schema.Array(Schema.String.pipe(
      Schema.filter((s) =>
        isSafeAbsolutePath(s) ||
        `expected ${SAFE_PATH_RULE}; the archive test rules in configs/sudoers/felhom-agent must name the same path`
      )
    )),
    { default: () => [...DEFAULT_ARCHIVE_STORAGE_PATHS] }
  ),
  /** An archive test reads the whole archive twice; a large one on a slow disk takes hours. */
  archive_test_timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 86_400)), {
    default: () => 14_400
  })
}) {}

export class HubConfig extends Schema.Class<HubConfig>("HubConfig")({
  url: HttpsUrl,
  api_key: Secret,
  ca_file: Schema.optional(AbsolutePath)
}) {}

/** Bounds and default of authz.max_validity_seconds: a minute, a week, a day. */
export const MIN_VALIDITY_SECONDS = 60
export const MAX_VALIDITY_SECONDS = 7 * 86_400
export const DEFAULT_MAX_VALIDITY_SECONDS = 86_400

export class AuthzConfig extends Schema.Class<AuthzConfig>("AuthzConfig")({
  /**
   * Operator keys, authorized_keys style: `role=<operational|recovery>,key-id=<id> <type> <base64> [comment]`.
   * Parsed (and each bad line named) when the Authz layer starts.
   */
  signers: Schema.Array(Schema.String),
  /** Tolerance for clock differences between the operator's machine and this host. */
  clock_skew_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 900)), { default: () => 120 }),
  /**
   * The longest validity a signed op may carry (`not_before` to `expires_at`); longer ones are
   * refused. An op without `not_before` counts as issued `max_validity_seconds` before its expiry.
   */
  max_validity_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(MIN_VALIDITY_SECONDS, MAX_VALIDITY_SECONDS)), {
    default: () => DEFAULT_MAX_VALIDITY_SECONDS
  })
}) {}

/**
 * The host's own IANA zone, found as ICU finds it (TZ, then the /etc/localtime link, then
 * /etc/timezone) but without loading ICU's zone data at start-up (issue 9: idle RSS); UTC when
 * none names a zone.
 */
const hostTimeZone = (): string => {
  const named = (s: string | undefined): string | undefined => {
    const z = s?.trim().replace(/^:/, "")
    return z !== undefined && z.length > 0 && Either.isRight(parseTimeZone(z)) ? z : undefined
  }
  const fromLink = (): string | undefined => {
    try {
      const m = /\/zoneinfo\/(.+)$/.exec(readlinkSync("/etc/localtime"))
      return m === null ? undefined : m[1]
    } catch {
      return undefined
    }
  }
  const fromFile = (): string | undefined => {
    try {
      return readFileSync("/etc/timezone", "utf8")
    } catch {
      return undefined
    }
  }
  return named(process.env["TZ"]) ?? named(fromLink()) ?? named(fromFile()) ?? "UTC"
}

/** Data protection on this host (issue 10). */
export class ProtectionConfig extends Schema.Class<ProtectionConfig>("ProtectionConfig")({
  /** Schedules and retention periods are evaluated in this zone (PVE buckets by local time). */
  time_zone: Schema.optionalWith(
    Schema.String.pipe(Schema.filter((tz) =>
      Either.isRight(parseTimeZone(tz)) || "an IANA time zone the host knows, such as Europe/Budapest or UTC"
    )),
    { default: hostTimeZone }
  ),
  /** Backups running at once on this host. 1: PVE runs one vzdump per node anyway (a second waits for its lock, and is polled meanwhile). */
  max_concurrent_backups: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 16)), { default: () => 1 }),
  /**
   * The vmids reserved for self-restore-test scratch guests, inclusive. No customer guest may live
   * here: the agent refuses to plan or adopt one in this range, and tears down only guests here
   * that carry its scratch marker.
   */
  scratch_vmid_min: Schema.optionalWith(Schema.Int.pipe(Schema.between(100, 999_999_999)), { default: () => 999_900 }),
  scratch_vmid_max: Schema.optionalWith(Schema.Int.pipe(Schema.between(100, 999_999_999)), { default: () => 999_999 }),
  /** How often the protection pass looks for due work (seconds). */
  pass_interval_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(10, 3600)), { default: () => 60 }),
  /** How often the storage watchdog checks the targets (seconds): a drop is reported within this. */
  watchdog_interval_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 60)), { default: () => 2 })
}) {}

/** An IPv4 dotted quad or an IPv6 literal (without brackets); no node:net here (the fence lint). */
export const isIpLiteral = (s: string): boolean => {
  if (/^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/.test(s)) return true
  if (!/^[0-9A-Fa-f:.]+$/.test(s) || !s.includes(":")) return false
  try {
    return new URL(`https://[${s}]/`).hostname.length > 2
  } catch {
    return false
  }
}

/**
 * The local API for controllers (issue 11, SPEC §11): HTTPS on the host's bridge address. Anything
 * on the LAN can reach it, so its bearer tokens are the only gate; these limits bound what an
 * unauthenticated or hostile client can cost.
 */
export class LocalApiConfig extends Schema.Class<LocalApiConfig>("LocalApiConfig")({
  /** The address to bind: the bridge the guests are on (e.g. 10.10.0.1); an IP literal. */
  listen: Schema.String.pipe(Schema.filter((s) => isIpLiteral(s) || "an IPv4 or IPv6 address literal (the guests' bridge address)")),
  port: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 65535)), { default: () => 7443 }),
  /** What guests are told to connect to; default https://<listen>:<port>. */
  advertise_url: Schema.optional(HttpsUrl),
  /** Request bodies above this are refused with 413 before they are read further. */
  max_body_bytes: Schema.optionalWith(Schema.Int.pipe(Schema.between(256, 1024 * 1024)), { default: () => 16 * 1024 }),
  /** Connections held at once; more are closed on accept. */
  max_connections: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 65536)), { default: () => 512 }),
  /** Requests per token per minute (a token bucket of `rate_burst`), then 429 with Retry-After. */
  rate_per_minute: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 1_000_000)), { default: () => 120 }),
  rate_burst: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 1_000_000)), { default: () => 30 }),
  /** A client must finish sending its headers within this (slowloris). */
  header_timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 120)), { default: () => 10 }),
  /** A whole request (headers and body) within this. */
  request_timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 600)), { default: () => 30 }),
  /** An idle keep-alive connection is closed after this. */
  idle_timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3600)), { default: () => 30 })
}) {}

/** How controllers are deployed, updated and healed (issue 11, SPEC §12). */
export class ControllersConfig extends Schema.Class<ControllersConfig>("ControllersConfig")({
  /** Registry pull credentials written into each guest's bootstrap (read-only, narrow as the registry allows). */
  registry: Schema.optional(Schema.Struct({ server: Schema.String, username: Schema.String, password: Secret })),
  /**
   * Image repositories (`registry/path`, no tag) the hub may deploy and update to on policy; an
   * image anywhere else is never deployed, and an update to it needs an operator's signature.
   */
  repositories: Schema.optionalWith(Schema.Array(Schema.String.pipe(Schema.filter((s) =>
    /^[a-z0-9][a-z0-9._\-/:]*[a-z0-9]$/.test(s) && !s.includes("@") || "a repository is registry/path without tag or digest"
  ))), { default: () => [] }),
  /** A controller update must report healthy with the new image within this, or it is rolled back. */
  health_deadline_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(10, 3600)), { default: () => 300 }),
  /** A running guest's controller silent for this long is restarted (heal). */
  contact_window_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(30, 86_400)), { default: () => 600 }),
  /** At most one heal restart per controller in this window; still silent after it: reported. */
  heal_window_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(60, 7 * 86_400)), { default: () => 3600 }),
  /** `ctl-` snapshots a controller may keep; a `POST /snapshot` beyond this is refused (409). */
  max_snapshots: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 50)), { default: () => 5 }),
  /** How often the heal loop looks (seconds). */
  heal_interval_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3600)), { default: () => 30 })
}) {}

/**
 * The golden base archive (SPEC §10, issue 12): what the agent builds it from and how often it
 * rebuilds it. Absent: no golden build on this host (provisioning uses operator-registered
 * archives only). The build container takes a vmid from the top of the reserved scratch range
 * (`protection.scratch_vmid_min..max`), which reconcile never plans a customer guest into.
 */
export class GoldenConfig extends Schema.Class<GoldenConfig>("GoldenConfig")({
  /** The Debian container template the build starts from, `<storage>:vztmpl/<file>`. */
  template: Schema.String.pipe(Schema.filter((s) =>
    /^[A-Za-z][A-Za-z0-9._-]*:vztmpl\/[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/.test(s) || "a container template volume '<storage>:vztmpl/<file>'"
  )),
  /** Storage for the build container's root filesystem (removed with the container). */
  storage: Schema.String.pipe(Schema.pattern(/^[A-Za-z][A-Za-z0-9._-]*$/, { message: () => "a PVE storage id" })),
  /**
   * The backup storage the archive is written to: a directory storage whose path is one of
   * `privileged.archive_storage_paths` (the checksum is read there, as root).
   */
  dump_storage: Schema.optionalWith(Schema.String.pipe(Schema.pattern(/^[A-Za-z][A-Za-z0-9._-]*$/, { message: () => "a PVE storage id" })), {
    default: () => "local"
  }),
  /** The bridge the build container's (and so every provisioned guest's) net0 is on. */
  bridge: Schema.optionalWith(Schema.String.pipe(Schema.pattern(/^[A-Za-z][A-Za-z0-9_.-]{0,14}$/, { message: () => "a Linux bridge name" })), {
    default: () => "vmbr0"
  }),
  memory_mib: Schema.optionalWith(Schema.Int.pipe(Schema.between(256, 65_536)), { default: () => 1024 }),
  cores: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 64)), { default: () => 2 }),
  /** The archive's rootfs size; provisioned guests are grown from it. */
  rootfs_gib: Schema.optionalWith(Schema.Int.pipe(Schema.between(2, 1024)), { default: () => 4 }),
  /** The daemon rebuilds the archive this many days after the newest built one; 0: never on its own. */
  refresh_days: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 365)), { default: () => 30 }),
  /** A failed build is retried after this many hours at the earliest. */
  retry_hours: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 720)), { default: () => 12 }),
  /** The root helper's install step (apt-get of Docker inside the build container) is killed after this. */
  install_timeout_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(60, 86_400)), { default: () => 1800 })
}) {}

/**
 * The PBS encryption key escrow (issue 13, SPEC §13). The live key K is a plain PBS key file,
 * root-owned 0600, written by `enroll` (or a restore-mode enrollment) and read only by root: the
 * daemon never reads it, it asks the root helper to attach it to a PVE storage entry. Its
 * fingerprint (public) sits beside it in `<key_file>.fingerprint`, 0644.
 */
export class EscrowConfig extends Schema.Class<EscrowConfig>("EscrowConfig")({
  key_file: Schema.optionalWith(AbsolutePath, { default: () => DEFAULT_PBS_KEY_FILE })
}) {}

export const DEFAULT_PBS_KEY_FILE = "/etc/felhom-agent/pbs/encryption-key.json"

/**
 * The daemon's loopback status endpoint (issue 14): `GET /health` (the self-update health gate
 * probes it), `GET /metrics` (Prometheus text), `GET /status` (what `felhom-agent status` reads).
 * Loopback only: it carries no secret but names guests and operations.
 */
export class StatusEndpointConfig extends Schema.Class<StatusEndpointConfig>("StatusEndpointConfig")({
  enabled: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  host: Schema.optionalWith(Schema.Literal("127.0.0.1", "::1"), { default: () => "127.0.0.1" as const }),
  /** 0 picks a free port (tests); the health gate unit names the default. */
  port: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 65535)), { default: () => 8719 }),
  /**
   * The hub loop counts as hung when it has made no progress (a cycle step, a PVE task poll) for
   * this long outside its sleep between cycles: /health fails and systemd's watchdog is no longer
   * pinged, so systemd kills and restarts the daemon.
   */
  stall_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(30, 86_400)), { default: () => 600 })
}) {}

/**
 * Self-update (issue 14, SPEC §15): releases are SSHSIG-signed manifests (namespace
 * felhom-release-v1, src/schema/release.ts) by one of these keys, authorized_keys style
 * (`<type> <base64> [comment]`); none configured: no update is ever accepted.
 */
export class UpdateConfig extends Schema.Class<UpdateConfig>("UpdateConfig")({
  release_signers: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** The install prefix holding `package/`, `slots/{a,b}`, `current` and `last-good`. */
  prefix: Schema.optionalWith(AbsolutePath, { default: () => "/opt/felhom-agent" }),
  /** A release larger than this (all files) is refused before download. */
  max_release_bytes: Schema.optionalWith(Schema.Int.pipe(Schema.between(1024 * 1024, 2 * 1024 * 1024 * 1024)), {
    default: () => 512 * 1024 * 1024
  })
}) {}

/**
 * cloudflared (issue 14, SPEC §15): a separate systemd service the daemon manages (token config
 * written 0600 by a root helper, started, restarted with backoff) and health-watches through its
 * readiness endpoint on loopback. The token comes from FELHOM_AGENT_CLOUDFLARED_TOKEN
 * (secrets.env), never the config file in production.
 */
export class CloudflaredConfig extends Schema.Class<CloudflaredConfig>("CloudflaredConfig")({
  enabled: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  token: Schema.optional(Secret),
  /** cloudflared's --metrics port on 127.0.0.1 (its /ready endpoint). */
  metrics_port: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 65535)), { default: () => 20241 }),
  check_interval_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3600)), { default: () => 15 }),
  /** Consecutive failed readiness checks before a restart. */
  failures_before_restart: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 100)), { default: () => 3 }),
  /** Restart backoff: doubles from min to max, reset by a ready check. */
  backoff_min_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3600)), { default: () => 30 }),
  backoff_max_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 86_400)), { default: () => 900 })
}) {}

/**
 * Break-glass (issue 14, SPEC §15): the emergency access unit, started only by an operator-signed
 * `break-glass-enable` with the customer's consent in the desired state, stopped at its expiry.
 */
export class BreakGlassConfig extends Schema.Class<BreakGlassConfig>("BreakGlassConfig")({
  /** The longest a signed enable may keep access open; the unit's own RuntimeMaxSec matches it. */
  max_hours: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 72)), { default: () => 24 }),
  /** How often the expiry is re-checked against the wall clock (catches clock jumps). */
  check_interval_seconds: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 3600)), { default: () => 30 })
}) {}

export class AgentConfigFile extends Schema.Class<AgentConfigFile>("AgentConfigFile")(
  Schema.Struct({
    host_id: Schema.optional(Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/))),
    state_dir: Schema.optionalWith(AbsolutePath, { default: () => "/var/lib/felhom-agent" }),
    proxmox: Schema.optional(ProxmoxConfig),
    privileged: Schema.optionalWith(PrivilegedConfig, { default: () => PrivilegedConfig.make({}) }),
    hub: Schema.optional(HubConfig),
    authz: Schema.optional(AuthzConfig),
    protection: Schema.optionalWith(ProtectionConfig, { default: () => ProtectionConfig.make({}) }),
    /** Absent: no local API is served (no controllers can be deployed on this host). */
    local_api: Schema.optional(LocalApiConfig),
    controllers: Schema.optionalWith(ControllersConfig, { default: () => ControllersConfig.make({}) }),
    /** Absent: the agent builds no golden archive on this host. */
    golden: Schema.optional(GoldenConfig),
    escrow: Schema.optionalWith(EscrowConfig, { default: () => EscrowConfig.make({}) }),
    status_endpoint: Schema.optionalWith(StatusEndpointConfig, { default: () => StatusEndpointConfig.make({}) }),
    update: Schema.optionalWith(UpdateConfig, { default: () => UpdateConfig.make({}) }),
    cloudflared: Schema.optionalWith(CloudflaredConfig, { default: () => CloudflaredConfig.make({}) }),
    break_glass: Schema.optionalWith(BreakGlassConfig, { default: () => BreakGlassConfig.make({}) })
  }).pipe(
    // The service user owns state_dir and can rename anything in it; a bootstrap tree there (or
    // a state_dir inside the bootstrap tree) would hand it the bind-mount sources (issue 8,
    // finding 7). Compared component-wise on the normalized paths; a symlinked state_dir is
    // caught at run time instead, where every component of a source must be root-owned.
    Schema.filter((c) =>
      c.protection.scratch_vmid_min <= c.protection.scratch_vmid_max || {
        path: ["protection", "scratch_vmid_max"],
        message: "must not be below scratch_vmid_min"
      }
    ),
    Schema.filter((c) =>
      !pathsOverlap(posix.resolve(c.state_dir), c.privileged.bootstrap_root) || {
        path: ["privileged", "bootstrap_root"],
        message: "must not be state_dir, inside it, or contain it: the service user owns state_dir, so " +
          "the bind-mount sources must live in a separate root-owned tree (e.g. " +
          `${DEFAULT_BOOTSTRAP_ROOT})`
      }
    )
  ),
  {
  // Unknown keys are typos more often than not; reject them by name.
  parseOptions: { onExcessProperty: "error" }
}) {}

/** What the running subcommand needs; validation checks exactly that and names what is missing. */
export type ConfigMode = "selftest" | "privileged" | "daemon" | "authz" | "none"
