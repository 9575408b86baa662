/**
 * The controller's bootstrap config (SPEC §12, issue 11): the files the agent writes into a
 * root-owned host directory `<privileged.bootstrap_root>/<vmid>/` and bind-mounts read-only at
 * `/etc/felhom-bootstrap` in the guest. This is the controller's own config format (the
 * golden-baked unit hands the directory to the controller as is), not an intermediate.
 *
 * Files, each owned 100000:100000 (guest root under the unprivileged-LXC mapping) mode 0600:
 * - `controller.json`   this schema (no secret in it: the secrets are files beside it);
 * - `local-token`       the guest's local-API bearer token, one line;
 * - `registry-password` the registry pull credential, one line (only when a registry is set).
 *
 * The golden-baked `felhom-controller.path` unit watches `controller.json`: a new `generation`
 * (a new image, new pins, or a restart request) restarts the controller with it.
 */
import { Schema } from "effect"
import { SCENARIOS } from "./identity.js"

export const BOOTSTRAP_FORMAT = "felhom-controller-bootstrap/1"
export const BOOTSTRAP_GUEST_PATH = "/etc/felhom-bootstrap"
export const BOOTSTRAP_FILES = { config: "controller.json", token: "local-token", registryPassword: "registry-password" } as const
export type BootstrapFileName = (typeof BOOTSTRAP_FILES)[keyof typeof BOOTSTRAP_FILES]
/** uid/gid of root inside an unprivileged LXC (PVE's default id map). */
export const GUEST_ROOT_HOST_ID = 100000

/** A container image reference: `[registry/]path[:tag][@sha256:digest]`, printable, no spaces. */
export const ImageRef = Schema.String.pipe(
  Schema.filter((s) => s.length <= 255 && /^[a-z0-9][a-z0-9._\-/:]*(@sha256:[0-9a-f]{64})?$/.test(s), {
    message: () => "an image is [registry/]path[:tag][@sha256:<64 hex>], lower-case, at most 255 characters"
  })
)
export type ImageRef = typeof ImageRef.Type

/** One pin of the local API's certificate, in both forms a TLS client can check. */
export const CertPin = Schema.Struct({
  /** base64 of SHA-256 over the DER SubjectPublicKeyInfo (the HPKP / curl --pinnedpubkey form). */
  spki_sha256: Schema.String,
  /** hex of SHA-256 over the DER certificate (what `openssl x509 -fingerprint -sha256` prints, without colons). */
  cert_sha256: Schema.String
})
export type CertPin = typeof CertPin.Type

/**
 * What first boot resets inside the guest (SPEC §10, the table in identity.ts): a provisioned
 * guest gets fresh machine-id and SSH host keys, a recovered one has them reset; `directive_id`
 * changes when a new reset is wanted, so the unit does it once per directive and never again on a
 * reboot.
 */
export const IdentityDirective = Schema.Struct({
  /** The bring-up scenario (src/schema/identity.ts); the unit only logs it, `reset` is what it acts on. */
  scenario: Schema.Literal(...SCENARIOS),
  reset: Schema.Array(Schema.Literal("machine-id", "ssh-host-keys", "hostname")),
  directive_id: Schema.String
})
export type IdentityDirective = typeof IdentityDirective.Type

export const ControllerBootstrap = Schema.Struct({
  format: Schema.Literal(BOOTSTRAP_FORMAT),
  /** Bumped on every write; the guest's path unit restarts the controller on a new one. */
  generation: Schema.Int,
  host_id: Schema.String,
  guest: Schema.Struct({ vmid: Schema.Int, hostname: Schema.String }),
  identity: IdentityDirective,
  controller: Schema.Struct({ image: ImageRef }),
  /** Pull credentials; the password is the file `registry-password` beside this one. */
  registry: Schema.NullOr(Schema.Struct({ server: Schema.String, username: Schema.String, password_file: Schema.String })),
  hub: Schema.Struct({ url: Schema.NullOr(Schema.String), channel: Schema.String }),
  local_api: Schema.Struct({
    url: Schema.String,
    token_file: Schema.String,
    /** Every pin the controller must accept: the current certificate, and during a rotation the next. */
    pins: Schema.Array(CertPin)
  })
})
export type ControllerBootstrap = typeof ControllerBootstrap.Type
