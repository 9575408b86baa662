/**
 * The pure `systemd-escape --path` of src/schema/privileged.ts against the real binary: the
 * mount unit name the agent enables must be exactly the one systemd requires for `Where=` (and
 * the one the root helper computes with the binary). Cases where the binary is absent are
 * skipped, and say so; the expected values pinned below were taken from systemd 252.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { spawnSync } from "node:child_process"
import { escapeSystemdPath, mountUnitName, parseMountInfo } from "../src/schema/privileged.js"

const hasEscape = spawnSync("sh", ["-c", "command -v systemd-escape"]).status === 0

/** The binary's verdict: the escaped name, or undefined when it refuses. */
const real = (path: string): string | undefined => {
  const r = spawnSync("systemd-escape", ["--path", "--", path], { encoding: "utf8" })
  return r.status === 0 ? r.stdout.replace(/\n$/, "") : undefined
}
const ours = (path: string): string | undefined => {
  const r = escapeSystemdPath(path)
  return r.ok ? r.name : undefined
}

const PINNED: ReadonlyArray<readonly [string, string | undefined]> = [
  ["/mnt/felhom/usb-backup", "mnt-felhom-usb\\x2dbackup"],
  ["/mnt/felhom/usb_backup.2", "mnt-felhom-usb_backup.2"],
  ["/", "-"],
  ["", "-"],
  ["//a//b/", "a-b"],
  ["/a/./b", "a-b"],
  ["/a/.", "a"],
  ["/.a/b", "\\x2ea-b"],
  ["/a/.b", "a-.b"],
  ["/...", "\\x2e.."],
  ["/ä", "\\xc3\\xa4"],
  ["/a b", "a\\x20b"],
  ["/a\\b", "a\\x5cb"],
  ["/a:b_c.d", "a:b_c.d"],
  ["/a~b", "a\\x7eb"],
  ["/-x", "\\x2dx"],
  ["/a\nb", "a\\x0ab"],
  ["a/b", "a-b"],
  ["./a", "a"],
  ["/a/../b", undefined],
  ["/a/..", undefined],
  ["..", undefined],
  [".", undefined],
  [`/${"a".repeat(255)}`, "a".repeat(255)],
  [`/${"a".repeat(256)}`, undefined]
]

describe("escapeSystemdPath (systemd-escape --path)", () => {
  for (const [input, expected] of PINNED) {
    it(`${JSON.stringify(input.length > 40 ? `${input.slice(0, 20)}…(${input.length})` : input)} → ${expected ?? "refused"}`, () => {
      expect(ours(input)).toBe(expected)
    })
  }

  it("refuses a path of PATH_MAX bytes or more after simplification, accepts one byte less", () => {
    const of = (n: number) => {
      let s = "/"
      while (s.length < n) s += (s.length > 1 ? "/" : "") + "a".repeat(Math.min(200, n - s.length - (s.length > 1 ? 1 : 0)))
      return s.slice(0, n)
    }
    expect(of(4095)).toHaveLength(4095)
    expect(ours(of(4095))).toBeDefined()
    expect(ours(of(4096))).toBeUndefined()
    // a trailing slash is simplified away before the length check
    expect(ours(`${of(4095)}/`)).toBeDefined()
  })

  it.skipIf(!hasEscape)("matches the real binary on every pinned case (skipped only when systemd-escape is not installed)", () => {
    for (const [input] of PINNED) expect(ours(input), JSON.stringify(input)).toBe(real(input))
  })

  // Random paths over the characters that matter (separators, dots, dashes, backslashes, spaces,
  // multibyte, ':' and '_'), plus target-shaped mount points.
  const char = fc.constantFrom("/", "/", ".", "-", "\\", " ", "a", "Z", "0", ":", "_", "~", "ä", "€", "\t")
  const anyPath = fc.array(char, { maxLength: 24 }).map((cs) => cs.join(""))
  const mountPoint = fc.stringMatching(/^[A-Za-z][A-Za-z0-9._-]{0,47}$/).map((id) => `/mnt/felhom/${id}`)

  // One process for every path we accept (the binary prints the escaped arguments separated by
  // spaces, which an escaped name never contains, and fails as a whole if it refuses any), one per
  // path we refuse: spawning per sample is too slow.
  it.skipIf(!hasEscape)("matches the real binary on random paths (skipped only when systemd-escape is not installed)", () => {
    const runs = Number(process.env["PROP_RUNS"] ?? 500)
    // a fixed seed (PROP_SEED to explore): unseeded, a run drew 500 accepted paths and failed the
    // both-outcomes check below
    const seed = Number(process.env["PROP_SEED"] ?? 20261201)
    const samples = fc.sample(fc.oneof(anyPath, mountPoint), { numRuns: runs, seed })
    const accepted = samples.filter((p) => ours(p) !== undefined)
    const r = spawnSync("systemd-escape", ["--path", "--", ...accepted], { encoding: "utf8" })
    expect(r.status, r.stderr.split("\n").filter((l) => l.includes("failed")).join("\n")).toBe(0)
    expect(r.stdout.replace(/\n$/, "").split(" ")).toEqual(accepted.map(ours))
    for (const p of samples.filter((q) => ours(q) === undefined)) expect(real(p), JSON.stringify(p)).toBeUndefined()
    // the generator must actually reach both outcomes
    expect(accepted.length).toBeGreaterThan(0)
    expect(accepted.length).toBeLessThan(samples.length)
  }, 60_000)

  it("every USB target id gives a valid .mount name that fits systemd's 255 characters", () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[A-Za-z][A-Za-z0-9._-]{0,47}$/), (id) => {
        const name = mountUnitName(`/mnt/felhom/${id}`)
        expect(name).toBeDefined()
        expect(name!.length).toBeLessThanOrEqual(255)
        expect(name!.startsWith("mnt-felhom-")).toBe(true)
        expect(name).toMatch(/^mnt-felhom-[A-Za-z]([A-Za-z0-9_.]|\\x2d)*\.mount$/)
      })
    )
    expect(mountUnitName(`/mnt/felhom/${"-".repeat(70)}`)).toBeUndefined()
  })
})

describe("parseMountInfo (proc(5))", () => {
  it("decodes octal escapes, keeps the order and reads ro from mount and superblock options", () => {
    const text = [
      "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw",
      "40 26 8:17 / /mnt/felhom/usb\\040backup rw,noatime shared:20 - ext4 /dev/sdb1 rw",
      "41 40 8:33 / /mnt/felhom/usb\\040backup ro,noatime shared:21 master:3 - vfat /dev/sdc1 rw,fmask=0022",
      "42 26 8:49 / /mnt/felhom/x rw - ext4 /dev/sdd1 ro,errors=remount-ro",
      "garbage line",
      ""
    ].join("\n")
    expect(parseMountInfo(text)).toEqual([
      { mountPoint: "/sys", source: "sysfs", fsType: "sysfs", readOnly: false },
      { mountPoint: "/mnt/felhom/usb backup", source: "/dev/sdb1", fsType: "ext4", readOnly: false },
      { mountPoint: "/mnt/felhom/usb backup", source: "/dev/sdc1", fsType: "vfat", readOnly: true },
      { mountPoint: "/mnt/felhom/x", source: "/dev/sdd1", fsType: "ext4", readOnly: true }
    ])
  })

  it("reads this machine's own /proc/self/mountinfo and finds the root mount", async () => {
    const { readFileSync } = await import("node:fs")
    const entries = parseMountInfo(readFileSync("/proc/self/mountinfo", "utf8"))
    expect(entries.some((e) => e.mountPoint === "/")).toBe(true)
    expect(entries.some((e) => e.mountPoint === "/proc" && e.fsType === "proc")).toBe(true)
  })
})
