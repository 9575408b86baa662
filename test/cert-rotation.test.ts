/**
 * Issue 11: the local API's certificate rotation as the daemon runs it (certRotationPass). A year
 * before expiry the next certificate is staged; every deployed guest's bootstrap is republished
 * with both pins (in the guest's queue turn); only when every guest has the new pin does the
 * server switch to it. A guest whose republish fails keeps the old certificate served.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, TestClock } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ControllerStore, ControllerStoreLive } from "../src/layers/ControllerStore.js"
import { layerAt } from "../src/layers/Database.js"
import { GuestQueue } from "../src/layers/GuestQueue.js"
import { LocalCert, LocalCertLive } from "../src/layers/LocalCert.js"
import { certRotationPass } from "../src/programs/daemon/controllers.js"
import { ControllerPublisher, ControllerPublishFailed } from "../src/programs/controller/update.js"
import { VmId } from "../src/schema/ids.js"

const DAY = 86_400_000
const T0 = Date.UTC(2026, 10, 30)

/** Republishes by reading the certificate's pins now, as the real one does; `failing` guests fail. */
const publisher = (published: Array<string>, failing: Set<number>) =>
  Layer.effect(ControllerPublisher, Effect.map(LocalCert, (cert) => ({
    publish: (vmid: VmId, change: { readonly image: string; readonly generation: number }) =>
      failing.has(vmid)
        ? Effect.fail(new ControllerPublishFailed({ message: "simulated: the bootstrap directory is not writable" }))
        : Effect.map(cert.pins, (pins) => {
          published.push(`${vmid}@${change.generation}`)
          return pins
        })
  })))

const world = (published: Array<string>, failing: Set<number>) => {
  const dir = mkdtempSync(join(tmpdir(), "felhom-rotation-"))
  const cert = LocalCertLive({ dir: join(dir, "local-api"), listen: "127.0.0.1" })
  return Layer.mergeAll(publisher(published, failing), ControllerStoreLive.pipe(Layer.provide(layerAt(join(dir, "state.db")))), GuestQueue.layer(2)).pipe(
    Layer.provideMerge(cert),
    Layer.orDie
  )
}

const deployTwo = Effect.gen(function*() {
  const cert = yield* LocalCert
  const store = yield* ControllerStore
  const pins = yield* cert.pins
  for (const vmid of [101, 102]) {
    yield* store.recordDeploy({ vmid: VmId.make(vmid), image: "r/x:1", generation: 1, tokenId: `t${vmid}`, mpIndex: 0, pins })
  }
  return pins[0]!
})

describe("certRotationPass", () => {
  it.effect("stages a year before expiry, republishes every guest with both pins, then promotes", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const published: Array<string> = []
      return yield* Effect.gen(function*() {
        const first = yield* deployTwo
        expect(yield* certRotationPass).toBe("nothing staged")
        expect(published).toEqual([])
        // nine years and a bit later: within a year of the 10-year expiry
        yield* TestClock.setTime(T0 + 9 * 365 * DAY + 10 * DAY)
        expect(yield* certRotationPass).toBe("promoted")
        expect(published.sort()).toEqual(["101@2", "102@2"])
        const cert = yield* LocalCert
        const now = yield* cert.state
        expect(now.next).toBeNull()
        expect(now.current.pin.spki_sha256).not.toBe(first.spki_sha256)
        for (const r of yield* Effect.flatMap(ControllerStore, (s) => s.records)) {
          expect(r.pins.map((p) => p.spki_sha256).sort()).toEqual([first.spki_sha256, now.current.pin.spki_sha256].sort())
          expect(r.generation).toBe(2)
        }
      }).pipe(Effect.provide(world(published, new Set())))
    }))

  it.effect("a guest that cannot be given the new pin keeps the old certificate served", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(T0)
      const published: Array<string> = []
      const failing = new Set([102])
      return yield* Effect.gen(function*() {
        const first = yield* deployTwo
        const cert = yield* LocalCert
        yield* cert.stage
        const r = yield* Effect.either(certRotationPass)
        expect(r._tag).toBe("Left")
        expect((yield* cert.state).current.pin.spki_sha256).toBe(first.spki_sha256)
        expect((yield* cert.state).next).not.toBeNull()
        // fixed: the next pass publishes 102 and promotes; 101 is not published again
        failing.delete(102)
        expect(yield* certRotationPass).toBe("promoted")
        expect(published).toEqual(["101@2", "102@2"])
      }).pipe(Effect.provide(world(published, failing)))
    }))
})
