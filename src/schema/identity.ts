/**
 * Identity policy per bring-up scenario (SPEC §10, issue 12), as data: which identity a guest
 * brought up from an archive gets fresh, keeps from the archive, or has reset inside the guest.
 * A correctness boundary: resetting the restic identity orphans the backup chain, keeping a MAC
 * while the source may still be live puts two guests on one DHCP reservation.
 *
 * Who acts on a row: PVE at restore (MAC: `unique=1` or the backup's), the agent's config step
 * (link down), the bootstrap directive read by the golden-baked first-boot unit inside the guest
 * (machine-id, SSH host keys, hostname; never `pct exec`), the agent's token store and bootstrap
 * publication (controller identity). restic and tunnel identity live inside the guest's data: the
 * agent never touches them, so "kept" means the bring-up carries the archive's, and "fresh" means
 * the archive (a golden one) has none yet and the controller enrols a new one.
 */

export const SCENARIOS = ["provision", "guest-loss-total", "guest-loss-partial", "restore-test", "host-loss"] as const
export type Scenario = (typeof SCENARIOS)[number]

export const IDENTITY_ATTRIBUTES = [
  "mac",
  "hostname",
  "machine-id",
  "ssh-host-keys",
  "controller-identity",
  "restic-identity",
  "tunnel"
] as const
export type IdentityAttribute = (typeof IDENTITY_ATTRIBUTES)[number]

/**
 * fresh: newly made for this guest (nothing of the archive's); kept: the archive's carries over;
 * reset: the archive's is replaced at first boot (inside the guest, by the directive); withheld:
 * the guest gets none (a restore-test's scratch copy has no bootstrap mount: no token, no channel).
 */
export type Treatment = "fresh" | "kept" | "reset" | "withheld"

export interface ScenarioPolicy {
  readonly identity: { readonly [A in IdentityAttribute]: Treatment }
  /** Every NIC stays link-down until an operator confirms (`recover --confirm`). */
  readonly linkDown: boolean
  /** Why, for `recover --plan` and the docs. */
  readonly why: string
}

/** The decision table. Tested exhaustively against every scenario (test/identity.test.ts). */
export const IDENTITY_TABLE: { readonly [S in Scenario]: ScenarioPolicy } = {
  provision: {
    identity: {
      mac: "fresh",
      hostname: "fresh",
      "machine-id": "fresh",
      "ssh-host-keys": "fresh",
      "controller-identity": "fresh",
      "restic-identity": "fresh",
      tunnel: "fresh"
    },
    linkDown: false,
    why: "a golden archive is shared by every guest: nothing of it may identify one"
  },
  "guest-loss-total": {
    identity: {
      mac: "kept",
      hostname: "kept",
      "machine-id": "reset",
      "ssh-host-keys": "reset",
      "controller-identity": "kept",
      "restic-identity": "kept",
      tunnel: "kept"
    },
    linkDown: false,
    why: "the source is gone for good: keep what others know it by (DHCP reservation, backup chain, tunnel, hub binding); reset what must never be reused"
  },
  "guest-loss-partial": {
    identity: {
      mac: "fresh",
      hostname: "kept",
      "machine-id": "reset",
      "ssh-host-keys": "reset",
      "controller-identity": "kept",
      "restic-identity": "kept",
      tunnel: "kept"
    },
    linkDown: true,
    why: "the source may still be live: a fresh MAC and no link until an operator confirms the source is gone"
  },
  "restore-test": {
    identity: {
      mac: "fresh",
      hostname: "kept",
      "machine-id": "kept",
      "ssh-host-keys": "kept",
      "controller-identity": "withheld",
      "restic-identity": "kept",
      tunnel: "kept"
    },
    linkDown: true,
    why:
      "a scratch copy beside a live source: it never reaches a network (link down, fresh MAC) and is torn down after its checks, so nothing of it can collide; it boots as the backup holds it, which is what the test checks, and gets no bootstrap (no token, no directive)"
  },
  "host-loss": {
    identity: {
      mac: "kept",
      hostname: "kept",
      "machine-id": "reset",
      "ssh-host-keys": "reset",
      "controller-identity": "kept",
      "restic-identity": "kept",
      tunnel: "kept"
    },
    linkDown: false,
    // restore mode on a new box (src/programs/hostloss/restore.ts), from PBS only. The state database
    // is new, so no controller is deployed here and the recovery publishes no directive: machine-id
    // and host keys are reset by the first-boot directive of the fresh controller bootstrap the daemon
    // deploys on its next reconcile. "kept" for the controller is the hub binding (the same host id
    // and hub channel: the hub binds this box to the lost host's identity); the local-API token that
    // bootstrap carries is new, since the archive's is unknown to this host's token store
    why:
      "the whole box is gone: as a total guest loss (MAC, hostname, restic, tunnel and the hub binding kept), on a new host the hub binds to the old identity; " +
      "machine-id and host keys are reset once a bootstrap reaches the guest (the daemon's fresh controller deploy), with a new local-API token"
  }
}

/** What the restore call does with the MACs: `unique=1` when the scenario wants them fresh. */
export const freshMac = (s: Scenario): boolean => IDENTITY_TABLE[s].identity.mac === "fresh"

/** The first-boot resets the bootstrap directive asks of the guest's unit. */
export type DirectiveReset = "machine-id" | "ssh-host-keys" | "hostname"

export const directiveResets = (s: Scenario): ReadonlyArray<DirectiveReset> => {
  const id = IDENTITY_TABLE[s].identity
  // provision: the golden archive's own identity is replaced at first boot too ("fresh")
  const inGuest = (a: DirectiveReset) => id[a] === "reset" || (s === "provision" && id[a] === "fresh" && a !== "hostname")
  return (["machine-id", "ssh-host-keys", "hostname"] as const).filter(inGuest)
}

/** The rows of one scenario, in table order, for `recover --plan` and the docs. */
export const identityRows = (s: Scenario): ReadonlyArray<{ readonly attribute: IdentityAttribute; readonly treatment: Treatment }> =>
  IDENTITY_ATTRIBUTES.map((attribute) => ({ attribute, treatment: IDENTITY_TABLE[s].identity[attribute] }))

/** The guest-loss scenarios `recover --scenario` names. */
export type LossScenario = "total" | "partial"
export const lossScenario = (s: LossScenario): Scenario => (s === "total" ? "guest-loss-total" : "guest-loss-partial")
