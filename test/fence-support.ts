/** Runs scripts/check-boundaries.mjs over a throwaway tree, to prove the lint catches a leak. */
import type { Effect, Layer } from "effect"
import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const script = join(__dirname, "..", "scripts", "check-boundaries.mjs")

export const runFenceCheck = (files: Record<string, string> | undefined) => {
  if (files === undefined) return spawnSync(process.execPath, [script], { encoding: "utf8" })
  const root = mkdtempSync(join(tmpdir(), "fence-"))
  try {
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(join(root, path, ".."), { recursive: true })
      writeFileSync(join(root, path), text)
    }
    return spawnSync(process.execPath, [script], { env: { ...process.env, FENCE_ROOT: root }, encoding: "utf8" })
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
}

/** What a layer requires. */
export type RIn<L> = L extends Layer.Layer<infer _A, infer _E, infer R> ? R : never

/** The union of what a service shape's methods require (never, for a fenced service). */
export type MethodR<S> = {
  [K in keyof S]: S[K] extends (...args: ReadonlyArray<never>) => Effect.Effect<infer _A, infer _E, infer R> ? R
    : S[K] extends Effect.Effect<infer _A, infer _E, infer R> ? R
    : never
}[keyof S]
