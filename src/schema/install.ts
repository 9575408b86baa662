/**
 * The installed layout (issue 14, SPEC §15), shared by the package build (scripts/package.mjs),
 * the maintainer scripts (configs/debian/), the root helpers felhom-update and felhom-healthgate
 * (configs/libexec/) and the agent's update program. Everything below the prefix is root-owned;
 * the service user only reads it, so nothing root runs from here can be planted by the agent.
 *
 *   <prefix>/package/          the release the .deb ships (dpkg-owned)
 *   <prefix>/slots/a, slots/b  self-update slots (root-owned, removed on purge)
 *   <prefix>/current           symlink → package | slots/a | slots/b   (what runs)
 *   <prefix>/last-good         symlink → the same set                  (what the gate reverts to)
 *   <prefix>/update.json       the gate's journal (state machine below), written by rename
 *   /usr/bin/felhom-agent      symlink → <prefix>/current/bin/felhom-agent
 *
 * A release tree: bin/node (pinned runtime), bin/felhom-agent (sh wrapper: node flags + the
 * bundle), lib/felhom-agent.cjs (+ code cache), lib/node_modules/better-sqlite3 (native addon
 * built for bin/node), RELEASE.json (+ .sig for self-update releases).
 */
export const DEFAULT_PREFIX = "/opt/felhom-agent"

/** Relative symlink targets `current` and `last-good` may hold; anything else is refused. */
export const SLOT_TARGETS = ["package", "slots/a", "slots/b"] as const
export type SlotTarget = (typeof SLOT_TARGETS)[number]

/**
 * update.json states (the health gate's journal):
 * - idle: nothing in progress (also: no file);
 * - staged: a verified release sits in `slot`; the gate flips `current` to it when it runs;
 * - trial: `current` points at `slot`, `previous` is what it pointed at; the health window runs
 *   (after a crash or reboot, the gate's next run restarts the window);
 * - committed: the window was clean; `last-good` → `slot`;
 * - reverted: the window failed; `current` → `previous` again, `reason` says why.
 */
export const UPDATE_STATES = ["idle", "staged", "trial", "committed", "reverted"] as const
export type UpdateState = (typeof UPDATE_STATES)[number]

export const UPDATE_STATE_FILE = "update.json"

/** The units the package ships (configs/systemd/). */
export const UNITS = {
  agent: "felhom-agent.service",
  gate: "felhom-agent-gate.service",
  cloudflared: "felhom-cloudflared.service",
  breakGlass: "felhom-breakglass.service"
} as const

/** The daemon's status endpoint default (config status_endpoint; the gate unit names the same). */
export const DEFAULT_STATUS_PORT = 8719
