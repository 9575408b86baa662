/** The host report's versions.controllers: each deployed controller's version, image and state as heal sees it. */
import { describe, expect, it } from "@effect/vitest"
import type { ControllerRecord } from "../src/layers/ControllerStore.js"
import { reportControllers } from "../src/programs/controller/report.js"
import type { VmId } from "../src/schema/ids.js"

const HEAL = { contactWindowSeconds: 600, healWindowSeconds: 3600, healIntervalSeconds: 30 }
const NOW = Date.UTC(2026, 10, 30, 12)
const rec = (vmid: number, over: Partial<ControllerRecord> = {}): ControllerRecord => ({
  vmid: vmid as VmId,
  image: "registry.felhom.eu/felhom/controller:1.0.0",
  generation: 1,
  tokenId: "0123456789abcdef",
  mpIndex: 0,
  pins: [],
  deployedMs: NOW - 3_600_000,
  lastContactMs: NOW - 10_000,
  version: "1.0.0",
  reportedImage: "registry.felhom.eu/felhom/controller:1.0.0",
  health: "healthy",
  healthDetail: null,
  lastRestartMs: null,
  unresponsiveSinceMs: null,
  identity: null,
  ...over
})

describe("versions.controllers", () => {
  it("ok, unhealthy (its own words), silent past the contact window, unresponsive after a heal restart; sorted by vmid", () => {
    const out = reportControllers([
      rec(104, { unresponsiveSinceMs: NOW - 1000, lastContactMs: NOW - 7_200_000, lastRestartMs: NOW - 3_000_000 }),
      rec(101),
      rec(103, { lastContactMs: NOW - 601_000 }),
      rec(102, { health: "unhealthy", healthDetail: "database unreachable" }),
      rec(105, { lastContactMs: null, version: null, deployedMs: NOW - 1000 })
    ], NOW, HEAL)
    expect(out.map((c) => `${c.vmid} ${c.state}`)).toEqual(["101 ok", "102 unhealthy", "103 silent", "104 unresponsive", "105 ok"])
    expect(out[1]?.detail).toBe("database unreachable")
    expect(out[2]?.detail).toMatch(/no local-API contact for over 600 s/)
    expect(out[4]).toMatchObject({ version: null, last_contact_at: null })
    expect(out[0]?.last_contact_at).toBe(new Date(NOW - 10_000).toISOString())
  })
})
