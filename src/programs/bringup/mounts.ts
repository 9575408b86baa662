/**
 * The mount points a bring-up allocates from a guest's placement (SPEC §13, issue 12): hot
 * volumes on their (fast) target, in the guest's backup; bulk volumes on theirs as `backup=0`
 * mount points, so vzdump never captures them. Only volumes with a path and a size are
 * allocated; the rest are checked by the storage pass and reported, never guessed.
 */
import type { GuestPlacement } from "../../schema/storage.js"

/** `mpN` → `<target>:<GiB>,mp=<path>[,backup=0]`, in volume order. */
export const mountsFor = (placement: GuestPlacement | undefined): Readonly<Record<string, string>> => {
  const out: Record<string, string> = {}
  for (const v of placement?.volumes ?? []) {
    if (v.volume === "rootfs" || v.path === undefined || v.size_gib === undefined) continue
    out[v.volume] = `${v.target}:${v.size_gib},mp=${v.path}${v.kind === "bulk" ? ",backup=0" : ""}`
  }
  return out
}
