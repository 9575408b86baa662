/**
 * Clearance: the only key to an irreversible PVE call (issue 8, "the gate is a type").
 *
 * Every Proxmox method that can destroy or irreversibly change customer data (destroy, restore
 * over an existing guest, rollback, delete snapshot, resize, config changes that touch volumes,
 * deleting a backup archive)
 * takes a `Clearance` for exactly that call. A Clearance has a private constructor and an
 * ECMAScript-private brand, so no module can build one (a test proves an object literal or a
 * missing argument fails to compile, and `redeem` refuses anything not minted here at run time).
 *
 * Minting is reserved to the gate: `takeIssuer` hands the minting function out once per process,
 * the gate module takes it at load, and the import-boundary lint fails the build if any other
 * module names it. A clearance is bound to one exact call (kind, guest and arguments), says on
 * what basis it was issued (for the audit), and can be redeemed once.
 */
import { Data, Either } from "effect"
import type { SnapshotName, StorageId, VmId, VolumeId } from "./ids.js"

/** One irreversible PVE call, with every argument that decides what it destroys. */
export type IrreversibleCall =
  | { readonly call: "destroy"; readonly vmid: VmId }
  | { readonly call: "restore-overwrite"; readonly vmid: VmId; readonly archive: VolumeId }
  | { readonly call: "rollback"; readonly vmid: VmId; readonly snapshot: SnapshotName }
  | { readonly call: "delete-snapshot"; readonly vmid: VmId; readonly snapshot: SnapshotName }
  /** `size` exactly as PVE takes it ("16G"); grows are irreversible (PVE cannot shrink). */
  | { readonly call: "resize"; readonly vmid: VmId; readonly disk: string; readonly size: string }
  /** A config change whose keys may detach or drop a volume (rootfs, mpN, unusedN, ...). */
  | { readonly call: "set-config-volumes"; readonly vmid: VmId; readonly keys: ReadonlyArray<string> }
  /** Deleting a backup archive (vzdump file or PBS snapshot); `vmid` is the guest it backs up. */
  | { readonly call: "delete-backup"; readonly vmid: VmId; readonly storage: StorageId; readonly volume: VolumeId }

export type CallKind = IrreversibleCall["call"]
export type CallOf<K extends CallKind> = Extract<IrreversibleCall, { readonly call: K }>

/** Why the gate issued it: recorded in the audit entry of the call. */
export type ClearanceBasis =
  | { readonly basis: "signed"; readonly signer: string; readonly nonce: string }
  | { readonly basis: "provenance"; readonly opId: string }
  | { readonly basis: "benign"; readonly reason: string }
  | { readonly basis: "resume"; readonly opId: string }
  | { readonly basis: "console"; readonly reason: string }

/** A clearance that does not fit the call it was offered for; the call is not made. */
export class ClearanceRefused extends Data.TaggedError("ClearanceRefused")<{ readonly message: string }> {}

const describe = (c: IrreversibleCall): string => {
  switch (c.call) {
    case "destroy":
      return `destroy ${c.vmid}`
    case "restore-overwrite":
      return `restore ${c.vmid} over from ${c.archive}`
    case "rollback":
      return `rollback ${c.vmid} to ${c.snapshot}`
    case "delete-snapshot":
      return `delete snapshot ${c.snapshot} of ${c.vmid}`
    case "resize":
      return `resize ${c.disk} of ${c.vmid} to ${c.size}`
    case "set-config-volumes":
      return `config of ${c.vmid} touching ${[...c.keys].sort().join(",")}`
    case "delete-backup":
      return `delete backup ${c.volume} of ${c.vmid} on ${c.storage}`
  }
}

const sameCall = (a: IrreversibleCall, b: IrreversibleCall): boolean => {
  if (a.call !== b.call || a.vmid !== b.vmid) return false
  switch (a.call) {
    case "destroy":
      return true
    case "restore-overwrite":
      return a.archive === (b as typeof a).archive
    case "rollback":
    case "delete-snapshot":
      return a.snapshot === (b as typeof a).snapshot
    case "resize":
      return a.disk === (b as typeof a).disk && a.size === (b as typeof a).size
    case "set-config-volumes": {
      const want = [...a.keys].sort().join(",")
      return want === [...(b as typeof a).keys].sort().join(",")
    }
    case "delete-backup":
      return a.storage === (b as typeof a).storage && a.volume === (b as typeof a).volume
  }
}

export class Clearance<K extends CallKind> {
  readonly #call: CallOf<K>
  readonly #basis: ClearanceBasis
  #redeemed = false

  private constructor(call: CallOf<K>, basis: ClearanceBasis) {
    // frozen copies: the holder cannot retarget a clearance after the gate issued it
    this.#call = Object.freeze({ ...call, ...("keys" in call ? { keys: Object.freeze([...call.keys]) } : {}) }) as CallOf<K>
    this.#basis = Object.freeze({ ...basis })
  }

  get call(): CallOf<K> {
    return this.#call
  }

  get basis(): ClearanceBasis {
    return this.#basis
  }

  toString(): string {
    return `Clearance(${describe(this.#call)}; ${this.#basis.basis})`
  }

  toJSON(): unknown {
    return { clearance: describe(this.#call), basis: this.#basis.basis }
  }

  /**
   * Spends the clearance on `call`: it must be a genuine Clearance (not a look-alike), issued for
   * exactly this call, and not spent before. Checked by the Proxmox layer before any request.
   */
  static redeem<K extends CallKind>(c: Clearance<K>, call: CallOf<K>): Either.Either<ClearanceBasis, ClearanceRefused> {
    if (typeof c !== "object" || c === null || !(#call in c)) {
      return Either.left(new ClearanceRefused({ message: `${describe(call)}: no gate-issued clearance` }))
    }
    if (c.#redeemed) return Either.left(new ClearanceRefused({ message: `${describe(call)}: clearance already used` }))
    if (!sameCall(c.#call, call)) {
      return Either.left(new ClearanceRefused({ message: `${describe(call)}: clearance was issued for ${describe(c.#call)}` }))
    }
    c.#redeemed = true
    return Either.right(c.#basis)
  }

  /** Reserved for takeIssuer below. */
  static #mint<K extends CallKind>(call: CallOf<K>, basis: ClearanceBasis): Clearance<K> {
    return new Clearance(call, basis)
  }

  static #issuerTaken = false

  /** @internal see takeIssuer */
  static takeIssuer(): <K extends CallKind>(call: CallOf<K>, basis: ClearanceBasis) => Clearance<K> {
    if (Clearance.#issuerTaken) throw new Error("the clearance issuer was already taken: only the gate may mint clearances")
    Clearance.#issuerTaken = true
    return (call, basis) => Clearance.#mint(call, basis)
  }
}

/**
 * The minting function, handed out once per process. Only src/programs/control/gate.ts may call
 * this (scripts/check-boundaries.mjs); a second call throws at load, so a rogue taker is a crash
 * at start, never a silent second issuer.
 */
export const takeIssuer = () => Clearance.takeIssuer()
