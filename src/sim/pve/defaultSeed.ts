/**
 * The default seed (configs/sim/pve.json) as a module, so the esbuild-bundled CLI carries it and
 * needs no file lookup relative to an unknown cwd.
 */
import type { Effect } from "effect"
import seedJson from "../../../configs/sim/pve.json" with { type: "json" }
import type { SimPveSeedError } from "./errors.js"
import { decodeSeed, type SimPveSeed } from "./seed.js"

export const defaultSeedJson: unknown = seedJson

/** The default seed, decoded and cross-checked. */
export const defaultSeed: Effect.Effect<SimPveSeed, SimPveSeedError> = decodeSeed(seedJson, "configs/sim/pve.json (embedded)")
