/**
 * A controller's bootstrap (issue 11, SPEC §12): the files the agent writes into the guest's
 * root-owned bootstrap directory, which is bind-mounted read-only at /etc/felhom-bootstrap.
 * `controller.json` is the controller's own config (src/schema/bootstrap.ts), with no secret in
 * it; the local-API token and the registry password are files beside it, each one line, so the
 * golden-baked unit can hand them to `docker login --password-stdin` and the controller without
 * ever putting them in an environment or argv.
 */
import { Data, Effect, Option, Redacted, Schema } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { ControllerStore } from "../../layers/ControllerStore.js"
import type { JournalError } from "../../layers/Journal.js"
import { LocalTokens, type TokenRecord } from "../../layers/LocalTokens.js"
import { type BootstrapFile, Privileged } from "../../layers/Privileged.js"
import { Proxmox } from "../../layers/Proxmox.js"
import {
  BOOTSTRAP_FILES,
  BOOTSTRAP_FORMAT,
  BOOTSTRAP_GUEST_PATH,
  type CertPin,
  ControllerBootstrap,
  type IdentityDirective,
  ImageRef
} from "../../schema/bootstrap.js"
import type { VmId } from "../../schema/ids.js"
import type { PrivilegedError } from "../../schema/privileged.js"
import type { ProxmoxError } from "../../schema/proxmox.js"
import { ControllerContext, type ControllerContextShape } from "./context.js"

export interface BootstrapInput {
  readonly vmid: VmId
  readonly hostname: string
  readonly image: ImageRef
  readonly generation: number
  readonly identity: IdentityDirective
  /** The guest's local-API token (the secret goes only into the `local-token` file). */
  readonly token: Redacted.Redacted<string>
  /** The pins to publish (read once by the caller, so the files and the record agree). */
  readonly pins: ReadonlyArray<CertPin>
}

export interface RenderedBootstrap {
  readonly config: ControllerBootstrap
  readonly files: ReadonlyArray<BootstrapFile>
}

/** A fresh first-boot directive for a provisioned guest: new machine-id and SSH host keys, once. */
export const provisionDirective = Effect.sync((): IdentityDirective => ({
  scenario: "provision",
  reset: ["machine-id", "ssh-host-keys"],
  directive_id: randomBytes(16).toString("hex")
}))

/** The hub channel a guest's controller uses: this host, this guest. */
export const hubChannelOf = (hostId: string, vmid: VmId) => `${hostId}/${vmid}`

/**
 * The config and the files for one guest. The config is encoded through the schema, so what is
 * written is exactly what a controller decodes; an image that is not an ImageRef is a defect of
 * the caller (the desired state decodes it already).
 */
export const renderBootstrap = (ctx: ControllerContextShape, input: BootstrapInput): RenderedBootstrap => {
  const { config, json } = renderConfig(ctx, input)
  const files: Array<BootstrapFile> = [
    // secrets first: the config that names them is written last, so a guest that sees a new
    // controller.json (its path unit watches it) finds the files it points at already in place
    { name: BOOTSTRAP_FILES.token, content: Redacted.make(`${Redacted.value(input.token)}\n`) },
    ...(ctx.registry === null
      ? []
      : [{ name: BOOTSTRAP_FILES.registryPassword, content: Redacted.make(`${Redacted.value(ctx.registry.password)}\n`) }]),
    { name: BOOTSTRAP_FILES.config, content: json }
  ]
  return { config, files }
}

/** controller.json alone (no secret in it), as the schema encodes it. */
export const renderConfig = (ctx: ControllerContextShape, input: Omit<BootstrapInput, "token">) => {
  const config: ControllerBootstrap = {
    format: BOOTSTRAP_FORMAT,
    generation: input.generation,
    host_id: ctx.hostId,
    guest: { vmid: input.vmid, hostname: input.hostname },
    identity: input.identity,
    controller: { image: input.image },
    registry: ctx.registry === null
      ? null
      : {
        server: ctx.registry.server,
        username: ctx.registry.username,
        password_file: `${BOOTSTRAP_GUEST_PATH}/${BOOTSTRAP_FILES.registryPassword}`
      },
    hub: { url: ctx.hubUrl, channel: hubChannelOf(ctx.hostId, input.vmid) },
    local_api: {
      url: ctx.localApiUrl,
      token_file: `${BOOTSTRAP_GUEST_PATH}/${BOOTSTRAP_FILES.token}`,
      pins: input.pins
    }
  }
  const json = `${JSON.stringify(Schema.encodeSync(ControllerBootstrap)(config), null, 2)}\n`
  return { config, json }
}

/** Renders and writes a guest's bootstrap files through Privileged (the root helper). */
export const publishBootstrap = (input: BootstrapInput): Effect.Effect<ControllerBootstrap, PrivilegedError, ControllerContext | Privileged> =>
  Effect.gen(function*() {
    const ctx = yield* ControllerContext
    const privileged = yield* Privileged
    const rendered = renderBootstrap(ctx, input)
    yield* privileged.writeBootstrap({ vmid: input.vmid, files: rendered.files })
    return rendered.config
  })

// ---------------------------------------------------------------------------------------------
// The identity directive, and republishing

/**
 * The provision directive of a guest: fresh machine-id and SSH host keys at first boot, once.
 * Its id is derived from the guest's oldest token (the first deploy's; revoked tokens keep their
 * records), so every later deploy or republish names the same directive and a running guest is
 * never reset again, while a new guest at a reused vmid (new token history) gets a new one.
 */
export const provisionDirectiveFor = (hostId: string, vmid: VmId, tokens: ReadonlyArray<TokenRecord>, fallbackTokenId: string): IdentityDirective => {
  const oldest = [...tokens].sort((a, b) => a.createdMs - b.createdMs || a.id.localeCompare(b.id))[0]?.id ?? fallbackTokenId
  const id = createHash("sha256").update(`felhom-provision\0${hostId}\0${vmid}\0${oldest}`).digest("hex").slice(0, 32)
  return { scenario: "provision", reset: ["machine-id", "ssh-host-keys"], directive_id: id }
}

/** The directive for a guest now (for republishers: the same one its deploy wrote). */
export const identityFor = (vmid: VmId, fallbackTokenId: string) =>
  Effect.gen(function*() {
    const ctx = yield* ControllerContext
    const tokens = yield* LocalTokens
    return provisionDirectiveFor(ctx.hostId, vmid, yield* tokens.forGuest(vmid), fallbackTokenId)
  })

/** The guest has no deployed controller to republish. */
export class NothingToRepublish extends Data.TaggedError("NothingToRepublish")<{ readonly message: string }> {}

/**
 * Rewrites only controller.json of a deployed guest with `image` and `generation` (update, heal):
 * the token file, the registry password, the directive and the hub channel stay as they are, the
 * pins are the current ones (returned, for the record). Idempotent for the same arguments. This
 * is the body of update.ts's ControllerPublisher (the daemon wraps it into that service).
 */
export const republishConfig = (
  vmid: VmId,
  change: { readonly image: string; readonly generation: number }
): Effect.Effect<ReadonlyArray<CertPin>, PrivilegedError | ProxmoxError | JournalError | NothingToRepublish, ControllerContext | Privileged | LocalTokens | ControllerStore | Proxmox> =>
  Effect.gen(function*() {
    const ctx = yield* ControllerContext
    const privileged = yield* Privileged
    const record = yield* Effect.flatMap(ControllerStore, (s) => s.get(vmid))
    if (Option.isNone(record)) return yield* Effect.fail(new NothingToRepublish({ message: `no controller is deployed on ${vmid}` }))
    const image = yield* Schema.decodeUnknown(ImageRef)(change.image).pipe(
      Effect.mapError(() => new NothingToRepublish({ message: `${vmid}: the image is not an image reference` }))
    )
    const config = yield* Effect.flatMap(Proxmox, (p) => p.guestConfig(vmid))
    const hostname = typeof config.hostname === "string" ? config.hostname : `ct${vmid}`
    // a recovery's directive stays in force; otherwise the provision one (stable per guest)
    const identity = record.value.identity ?? (yield* identityFor(vmid, record.value.tokenId))
    const pins = yield* ctx.pins
    const { json } = renderConfig(ctx, { vmid, hostname, image, generation: change.generation, identity, pins })
    yield* privileged.writeBootstrap({ vmid, files: [{ name: BOOTSTRAP_FILES.config, content: json }] })
    return pins
  })
