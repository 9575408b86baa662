/**
 * The golden build's root half (issue 12): PrivilegedGolden's argv and validation over fake
 * executables, the sudoers rules for it, the real root helper configs/libexec/felhom-golden
 * against a fake pct, and the golden-baked scripts of configs/golden (first-boot identity
 * directive, controller deploy) against scratch trees and a fake docker.
 */
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import { spawnSync } from "node:child_process"
import { createHash } from "node:crypto"
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import {
  DEFAULT_COMMAND_PATHS,
  DEFAULT_HOST_PATHS,
  PrivilegedGolden,
  privilegedGoldenLayerAt,
  type PrivilegedGoldenShape
} from "../src/layers/Privileged.js"
import { AgentConfigFile } from "../src/schema/config.js"
import { ARGUMENT_RULES, type ArgumentName, type PrivilegedError } from "../src/schema/privileged.js"
import { VmId } from "../src/schema/ids.js"
import { type Bin, expectError, expectValue, isRoot, makeBinDir, makeSudoSandbox, shq } from "./privileged-support.js"

const UUID = "3f2a9c1e-8d47-4a36-9e0b-3c7f1a2d6e84"
const MARKER = `felhom-golden-${UUID}`
const VMID = VmId.make(999999)
const HELPER = join(__dirname, "..", "configs", "libexec", "felhom-golden")
const GOLDEN_DIR = join(__dirname, "..", "configs", "golden")

/** The golden layer over `bin` (felhom-golden → `<bin>/felhom-golden` unless given). */
const goldenLayer = (bin: Bin, extra: { readonly mode?: "sudo" | "direct"; readonly sudo_path?: string; readonly archive_storage_paths?: ReadonlyArray<string>; readonly helper?: string } = {}) => {
  const file = Schema.decodeUnknownSync(AgentConfigFile)({
    privileged: {
      mode: extra.mode ?? "direct",
      timeout_seconds: 10,
      ...(extra.sudo_path === undefined ? {} : { sudo_path: extra.sudo_path }),
      ...(extra.archive_storage_paths === undefined ? {} : { archive_storage_paths: extra.archive_storage_paths }),
      commands: { "felhom-golden": extra.helper ?? join(bin.dir, "felhom-golden") }
    }
  })
  return privilegedGoldenLayerAt(DEFAULT_HOST_PATHS).pipe(
    Layer.provide(Layer.succeed(AgentConfig, { source: undefined, file })),
    Layer.provide(NodeContext.layer)
  )
}

const withGolden = <A>(bin: Bin, f: (g: PrivilegedGoldenShape) => Effect.Effect<A, PrivilegedError>, extra: Parameters<typeof goldenLayer>[1] = {}) =>
  Effect.flatMap(PrivilegedGolden, (g) => Effect.either(f(g))).pipe(Effect.provide(goldenLayer(bin, extra)))

/** A root-owned storage path `<base>/vz` with dump/ and one archive in it (0600). */
const makeStorage = () => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-golden-vz-")))
  chmodSync(base, 0o755)
  const vz = join(base, "vz")
  mkdirSync(join(vz, "dump"), { recursive: true, mode: 0o755 })
  const name = "vzdump-lxc-999999-2026_01_10-02_00_00.tar.zst"
  const archive = join(vz, "dump", name)
  writeFileSync(archive, "a golden archive\n", { mode: 0o600 })
  return { base, vz, archive, name, cleanup: () => rmSync(base, { recursive: true, force: true }) }
}

describe("PrivilegedGolden.installGolden", () => {
  for (const mode of ["direct", "sudo"] as const) {
    it.live(`runs felhom-golden install <vmid> <marker> <bridge> (${mode})`, () => {
      const bin = makeBinDir()
      const helper = bin.fake("felhom-golden", { stdout: "installed 999999\n" })
      const sudo = bin.fakeSudo()
      return withGolden(bin, (g) => g.installGolden({ vmid: VMID, hostname: MARKER, bridge: "vmbr0" }), { mode, sudo_path: sudo }).pipe(
        Effect.map((r) => {
          expectValue(r)
          expect(bin.argv("felhom-golden")).toEqual([helper, "install", "999999", MARKER, "vmbr0"])
          if (mode === "sudo") expect(bin.argv("sudo")).toEqual([sudo, "-n", helper, "install", "999999", MARKER, "vmbr0"])
          // the fixed child environment, nothing of the agent's
          expect(Object.keys(bin.env("felhom-golden")).filter((k) => !["PATH", "LC_ALL", "PWD", "SHLVL", "_"].includes(k))).toEqual([])
        }),
        Effect.ensuring(Effect.sync(bin.cleanup))
      )
    })
  }

  const hostile: ReadonlyArray<readonly [argument: ArgumentName, what: string, spec: { vmid: unknown; hostname: unknown; bridge: unknown }]> = [
    ["goldenHostname", "a customer guest's hostname", { vmid: VMID, hostname: "cust-alpha", bridge: "vmbr0" }],
    ["goldenHostname", "the marker prefix alone", { vmid: VMID, hostname: "felhom-golden-", bridge: "vmbr0" }],
    ["goldenHostname", "an upper-case uuid", { vmid: VMID, hostname: MARKER.toUpperCase(), bridge: "vmbr0" }],
    ["goldenHostname", "the marker with an option after it", { vmid: VMID, hostname: `${MARKER} --net0`, bridge: "vmbr0" }],
    ["goldenHostname", "the marker with a newline", { vmid: VMID, hostname: `${MARKER}\nhostname: x`, bridge: "vmbr0" }],
    ["goldenHostname", "command substitution", { vmid: VMID, hostname: "$(touch /tmp/x)", bridge: "vmbr0" }],
    ["bridge", "a bridge smuggling net0 options", { vmid: VMID, hostname: MARKER, bridge: "vmbr0,ip=10.0.0.9/24" }],
    ["bridge", "a bridge with a space", { vmid: VMID, hostname: MARKER, bridge: "vmbr0 x" }],
    ["bridge", "a dash-led bridge", { vmid: VMID, hostname: MARKER, bridge: "-vmbr0" }],
    ["bridge", "a bridge longer than IFNAMSIZ", { vmid: VMID, hostname: MARKER, bridge: "vmbr0123456789ab" }],
    ["vmid", "a vmid below 100", { vmid: 99, hostname: MARKER, bridge: "vmbr0" }],
    ["vmid", "a vmid with an option", { vmid: "100 --purge", hostname: MARKER, bridge: "vmbr0" }]
  ]
  for (const [argument, what, spec] of hostile) {
    it.live(`refuses ${what} before anything runs (${argument})`, () => {
      const bin = makeBinDir()
      bin.fake("felhom-golden", { stdout: "installed 999999\n" })
      return withGolden(bin, (g) => g.installGolden(spec as Parameters<PrivilegedGoldenShape["installGolden"]>[0])).pipe(
        Effect.map((r) => {
          const e = expectError(r)
          expect([e.reason, e.argument]).toEqual(["InvalidArgument", argument])
          expect(bin.recorded()).toEqual([])
          // the rule is quoted, never the value
          expect(e.message).toBe(ARGUMENT_RULES[argument])
        }),
        Effect.ensuring(Effect.sync(bin.cleanup))
      )
    })
  }

  it.live("an answer for another container is a Decode error; a refusal is NonZeroExit with the helper's words and without the hostname", () => {
    const bin = makeBinDir()
    bin.fake("felhom-golden", { stdout: "installed 100\n" })
    return withGolden(bin, (g) => g.installGolden({ vmid: VMID, hostname: MARKER, bridge: "vmbr0" })).pipe(
      Effect.map((r) => expect(expectError(r).reason).toBe("Decode")),
      Effect.zipRight(Effect.sync(() => bin.fake("felhom-golden", { stderr: "felhom-golden: refusing: container 999999 is not the golden build container\n", exit: 3 }))),
      Effect.zipRight(withGolden(bin, (g) => g.installGolden({ vmid: VMID, hostname: MARKER, bridge: "vmbr0" }))),
      Effect.map((r) => {
        const e = expectError(r)
        expect([e.reason, e.exitCode]).toEqual(["NonZeroExit", 3])
        expect(e.stderrTail).toContain("not the golden build container")
        expect(e.message).not.toContain(UUID)
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })
})

describe("PrivilegedGolden.archiveChecksum", () => {
  it.live("refuses paths that are not a zstd vzdump archive of a configured storage, before anything runs", () => {
    const bin = makeBinDir()
    bin.fake("felhom-golden", { stdout: `sha256 ${"0".repeat(64)}\n` })
    const paths = [
      "/etc/shadow",
      "/var/lib/vz/dump/../../../etc/shadow",
      "/var/lib/vz/dump/vzdump-lxc-999999-2026_01_10-02_00_00.tar.gz",
      "/var/lib/vz/dump/vzdump-qemu-999999-2026_01_10-02_00_00.vma.zst",
      "/srv/elsewhere/dump/vzdump-lxc-999999-2026_01_10-02_00_00.tar.zst",
      "relative/dump/vzdump-lxc-999999-2026_01_10-02_00_00.tar.zst"
    ]
    return Effect.forEach(paths, (p) => withGolden(bin, (g) => g.archiveChecksum(p))).pipe(
      Effect.map((rs) => {
        for (const r of rs) expect([expectError(r).reason, expectError(r).argument]).toEqual(["InvalidArgument", "archivePath"])
        expect(bin.recorded()).toEqual([])
      }),
      Effect.ensuring(Effect.sync(bin.cleanup))
    )
  })

  it.live.skipIf(!isRoot)("reads the archive's path as resolved, in a trusted tree; a symlink out of it or a garbled answer is refused (needs root)", () => {
    const bin = makeBinDir()
    const st = makeStorage()
    const sum = createHash("sha256").update(readFileSync(st.archive)).digest("hex")
    const helper = bin.logged("felhom-golden", `s=$(sha256sum "$2") || exit 3; echo "sha256 \${s%% *}"`)
    const linked = join(st.vz, "dump", "vzdump-lxc-999999-2026_01_11-02_00_00.tar.zst")
    const outside = join(st.base, "x.tar.zst")
    writeFileSync(outside, "elsewhere")
    symlinkSync(outside, linked)
    return Effect.gen(function*() {
      const ok = expectValue(yield* withGolden(bin, (g) => g.archiveChecksum(st.archive), { archive_storage_paths: [st.vz], helper }))
      expect(ok).toEqual({ path: st.archive, sha256: sum })
      expect(bin.calls("felhom-golden")).toEqual([["checksum", st.archive]])
      const viaLink = expectError(yield* withGolden(bin, (g) => g.archiveChecksum(linked), { archive_storage_paths: [st.vz], helper }))
      expect(viaLink.argument).toBe("archivePath")
      expect(bin.calls("felhom-golden").length).toBe(1)
      bin.fake("felhom-golden", { stdout: "sha256 not-a-digest\n" })
      const garbled = expectError(yield* withGolden(bin, (g) => g.archiveChecksum(st.archive), { archive_storage_paths: [st.vz] }))
      expect(garbled.reason).toBe("Decode")
    }).pipe(Effect.ensuring(Effect.sync(() => {
      bin.cleanup()
      st.cleanup()
    })))
  })
})

// ---------------------------------------------------------------------------------------------
// sudoers

const sandbox = makeSudoSandbox()

describe.skipIf(sandbox === undefined)("sudoers: the golden helper's two rules (needs root, visudo, unshare)", () => {
  const helper = DEFAULT_COMMAND_PATHS["felhom-golden"]
  const archive = "/var/lib/vz/dump/vzdump-lxc-999999-2026_01_10-02_00_00.tar.zst"
  it("allows exactly the argv the layer produces", () => {
    expect(sandbox!.allows([helper, "install", "999999", MARKER, "vmbr0"])).toBe(true)
    expect(sandbox!.allows([helper, "checksum", archive])).toBe(true)
    expect(sandbox!.allows([helper, "checksum", "/mnt/felhom/usb1/dump/vzdump-lxc-999999-2026_01_10-02_00_00.tar.zst"])).toBe(true)
  })
  it("refuses a customer's hostname, extra arguments, smuggled options, other paths and compressions", () => {
    for (
      const argv of [
        [helper, "install", "101", "cust-alpha", "vmbr0"],
        [helper, "install", "999999", MARKER, "vmbr0", "extra"],
        [helper, "install", "999999", MARKER, "vmbr0,ip=1.2.3.4/24"],
        [helper, "install", "999999", `${MARKER}x`, "vmbr0"],
        [helper, "checksum", "/etc/shadow"],
        [helper, "checksum", "/var/lib/vz/dump/vzdump-lxc-999999-2026_01_10-02_00_00.tar.gz"],
        [helper, "checksum", "/var/lib/vz/dump/../../../etc/shadow"],
        [helper, "checksum", archive, archive],
        [helper, "remove", "999999"]
      ]
    ) expect(sandbox!.allows(argv), argv.join(" ")).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------
// The real helper, as root, against a fake pct

/** A fake pct: logs every call; `config` prints `config`, `status` prints `status: <status>`. */
const fakePct = (dir: string, opts: { readonly config: string; readonly status?: string; readonly aptFails?: boolean }) => {
  const path = join(dir, "pct")
  writeFileSync(join(dir, "pct.config"), opts.config)
  writeFileSync(path, [
    "#!/bin/sh",
    `{ printf '%s\\037' "$@"; printf '\\n'; } >> ${shq(join(dir, "pct.calls"))}`,
    `case "$1" in`,
    `  config) cat ${shq(join(dir, "pct.config"))} ;;`,
    `  status) echo "status: ${opts.status ?? "running"}" ;;`,
    `  exec) ${opts.aptFails === true ? `[ "$6" = "update" ] && exit 100` : ":"} ;;`,
    "esac",
    "exit 0",
    ""
  ].join("\n"))
  chmodSync(path, 0o755)
  const calls = () =>
    existsSync(join(dir, "pct.calls"))
      ? readFileSync(join(dir, "pct.calls"), "utf8").split("\n").slice(0, -1).map((l) => l.split("\x1f").slice(0, -1))
      : []
  return { path, calls }
}

const buildConfig = (hostname = MARKER, features = "keyctl=1,nesting=1") =>
  [`arch: amd64`, `cores: 2`, `features: ${features}`, `hostname: ${hostname}`, `memory: 1024`, `rootfs: local-lvm:vm-999999-disk-0,size=4G`, `unprivileged: 1`, ""].join("\n")

/** A root-owned copy of configs/golden (as installed under /usr/local/share/felhom-agent/golden). */
const goldenFiles = () => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-golden-files-")))
  chmodSync(base, 0o755)
  const files = join(base, "golden")
  mkdirSync(files, { mode: 0o755 })
  chmodSync(files, 0o755)
  for (const f of ["felhom-controller.path", "felhom-controller.service", "felhom-firstboot.service", "felhom-controller-start", "felhom-firstboot"]) {
    copyFileSync(join(GOLDEN_DIR, f), join(files, f))
    chmodSync(join(files, f), f.includes(".") ? 0o644 : 0o755)
  }
  return { base, files }
}

const runHelper = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  spawnSync(HELPER, [...args], { encoding: "utf8", env: { PATH: "/usr/bin:/bin", ...env } })

describe.skipIf(!isRoot)("felhom-golden install: the real helper as root, against a fake pct", () => {
  const setup = (pct: Parameters<typeof fakePct>[1]) => {
    const dir = mkdtempSync(join(tmpdir(), "felhom-golden-pct-"))
    const fake = fakePct(dir, pct)
    const g = goldenFiles()
    const env = { FELHOM_GOLDEN_TEST_PCT: fake.path, FELHOM_GOLDEN_TEST_FILES: g.files, FELHOM_GOLDEN_TEST_APT_TRIES: "2" }
    return { ...fake, env, files: g.files, cleanup: () => [dir, g.base].forEach((d) => rmSync(d, { recursive: true, force: true })) }
  }

  it("into the build container: net0, apt-get, the units and scripts pushed and enabled, identity cleared; fixed argv only", () => {
    const s = setup({ config: buildConfig() })
    try {
      const r = runHelper(["install", "999999", MARKER, "vmbr0"], s.env)
      expect(r.status, r.stderr).toBe(0)
      expect(r.stdout).toBe("installed 999999\n")
      const F = s.files
      expect(s.calls()).toEqual([
        ["config", "999999"],
        ["status", "999999"],
        ["set", "999999", "--net0", "name=eth0,bridge=vmbr0,firewall=1,ip=dhcp,type=veth"],
        ["exec", "999999", "--", "apt-get", "-q", "update"],
        ["exec", "999999", "--", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y", "--no-install-recommends", "install", "docker.io", "jq", "ca-certificates"],
        ["exec", "999999", "--", "mkdir", "-p", "/usr/local/libexec/felhom"],
        ["push", "999999", `${F}/felhom-controller.path`, "/etc/systemd/system/felhom-controller.path", "--perms", "0644", "--user", "0", "--group", "0"],
        ["push", "999999", `${F}/felhom-controller.service`, "/etc/systemd/system/felhom-controller.service", "--perms", "0644", "--user", "0", "--group", "0"],
        ["push", "999999", `${F}/felhom-firstboot.service`, "/etc/systemd/system/felhom-firstboot.service", "--perms", "0644", "--user", "0", "--group", "0"],
        ["push", "999999", `${F}/felhom-controller-start`, "/usr/local/libexec/felhom/felhom-controller-start", "--perms", "0755", "--user", "0", "--group", "0"],
        ["push", "999999", `${F}/felhom-firstboot`, "/usr/local/libexec/felhom/felhom-firstboot", "--perms", "0755", "--user", "0", "--group", "0"],
        ["exec", "999999", "--", "systemctl", "enable", "docker.service", "felhom-controller.path", "felhom-controller.service", "felhom-firstboot.service"],
        ["exec", "999999", "--", "apt-get", "-q", "clean"],
        ["exec", "999999", "--", "truncate", "-s", "0", "/etc/machine-id"],
        ["exec", "999999", "--", "rm", "-f", "/var/lib/dbus/machine-id"],
        ["exec", "999999", "--", "find", "/etc/ssh", "-maxdepth", "1", "-name", "ssh_host_*", "-type", "f", "-delete"]
      ])
    } finally {
      s.cleanup()
    }
  })

  const refusals: ReadonlyArray<readonly [what: string, pct: Parameters<typeof fakePct>[1], calls: number]> = [
    ["a customer guest (another hostname)", { config: buildConfig("cust-alpha") }, 1],
    ["a container carrying another op's marker", { config: buildConfig(`felhom-golden-${"0".repeat(8)}-0000-0000-0000-${"0".repeat(12)}`) }, 1],
    ["a container without keyctl", { config: buildConfig(MARKER, "nesting=1") }, 1],
    ["a stopped container", { config: buildConfig(), status: "stopped" }, 2]
  ]
  for (const [what, pct, calls] of refusals) {
    it(`refuses ${what}: exit 3, nothing set, run or pushed inside it`, () => {
      const s = setup(pct)
      try {
        const r = runHelper(["install", "999999", MARKER, "vmbr0"], s.env)
        expect(r.status).toBe(3)
        expect(r.stdout).toBe("")
        expect(s.calls().length).toBe(calls)
        expect(s.calls().every((c) => c[0] === "config" || c[0] === "status")).toBe(true)
      } finally {
        s.cleanup()
      }
    })
  }

  it("validates every argument itself (exit 2, pct never runs)", () => {
    const s = setup({ config: buildConfig() })
    try {
      for (
        const args of [
          ["install", "99", MARKER, "vmbr0"],
          ["install", "999999", MARKER.toUpperCase(), "vmbr0"],
          ["install", "999999", MARKER, "vmbr0,ip=1.2.3.4"],
          ["install", "999999", MARKER, "vmbr0", "x"],
          ["install", "999999", MARKER],
          ["destroy", "999999"],
          []
        ]
      ) expect(runHelper(args, s.env).status, args.join(" ")).toBe(2)
      expect(s.calls()).toEqual([])
    } finally {
      s.cleanup()
    }
  })

  it("refuses a files directory another user could write, before touching the container", () => {
    const s = setup({ config: buildConfig() })
    try {
      chmodSync(s.files, 0o775)
      expect(runHelper(["install", "999999", MARKER, "vmbr0"], s.env).status).toBe(3)
      chmodSync(s.files, 0o755)
      chmodSync(join(s.files, "felhom-firstboot"), 0o757)
      expect(runHelper(["install", "999999", MARKER, "vmbr0"], s.env).status).toBe(3)
      expect(s.calls()).toEqual([])
    } finally {
      s.cleanup()
    }
  })

  it("an apt-get update that keeps failing is retried, then exit 4 with nothing pushed", () => {
    const s = setup({ config: buildConfig(), aptFails: true })
    try {
      const r = runHelper(["install", "999999", MARKER, "vmbr0"], s.env)
      expect(r.status).toBe(4)
      expect(r.stderr).toContain("apt-get update")
      expect(s.calls().filter((c) => c[0] === "exec").length).toBe(2)
      expect(s.calls().some((c) => c[0] === "push")).toBe(false)
    } finally {
      s.cleanup()
    }
  }, 20_000)
})

describe.skipIf(!isRoot)("felhom-golden checksum: the real helper as root", () => {
  it("prints the sha256 of a regular archive; refuses a symlink, a directory, other names and '..'", () => {
    const st = makeStorage()
    try {
      const r = runHelper(["checksum", st.archive])
      expect(r.status, r.stderr).toBe(0)
      expect(r.stdout).toBe(`sha256 ${createHash("sha256").update(readFileSync(st.archive)).digest("hex")}\n`)
      const link = join(st.vz, "dump", "vzdump-lxc-999999-2026_01_11-02_00_00.tar.zst")
      symlinkSync(st.archive, link)
      expect(runHelper(["checksum", link]).status).toBe(3)
      const dir = join(st.vz, "dump", "vzdump-lxc-999999-2026_01_12-02_00_00.tar.zst")
      mkdirSync(dir)
      expect(runHelper(["checksum", dir]).status).toBe(3)
      expect(runHelper(["checksum", join(st.vz, "dump", "vzdump-lxc-999999-2026_01_10-02_00_00.tar.gz")]).status).toBe(2)
      expect(runHelper(["checksum", `${st.vz}/dump/../dump/${st.name}`]).status).toBe(2)
      expect(runHelper(["checksum", "/etc/shadow"]).status).toBe(2)
    } finally {
      st.cleanup()
    }
  })
})

// ---------------------------------------------------------------------------------------------
// The golden-baked units and scripts

describe("configs/golden: the units", () => {
  const read = (f: string) => readFileSync(join(GOLDEN_DIR, f), "utf8")
  it("the path unit restarts the controller service on a new controller.json; the service reruns on every activation", () => {
    expect(read("felhom-controller.path")).toMatch(/^PathChanged=\/etc\/felhom-bootstrap\/controller\.json$/m)
    expect(read("felhom-controller.path")).toMatch(/^Unit=felhom-controller\.service$/m)
    const service = read("felhom-controller.service")
    expect(service).toMatch(/^Type=oneshot$/m)
    // RemainAfterExit would make a second activation a no-op
    expect(service).not.toMatch(/^RemainAfterExit=/m)
    expect(service).toMatch(/^ExecStart=\/usr\/local\/libexec\/felhom\/felhom-controller-start$/m)
    expect(service).toMatch(/^After=.*felhom-firstboot\.service/m)
  })
  it("the first-boot unit runs before SSH and the controller", () => {
    const unit = read("felhom-firstboot.service")
    expect(unit).toMatch(/^Before=.*ssh\.service.*felhom-controller\.service/m)
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/libexec\/felhom\/felhom-firstboot$/m)
  })
})

/** A guest's root: its bootstrap mount with `identity`, and an identity of its own. */
const guestRoot = (identity: unknown, hostname = "cust-new") => {
  const root = mkdtempSync(join(tmpdir(), "felhom-guest-"))
  mkdirSync(join(root, "etc", "felhom-bootstrap"), { recursive: true })
  mkdirSync(join(root, "etc", "ssh"), { recursive: true })
  mkdirSync(join(root, "var", "lib", "dbus"), { recursive: true })
  writeFileSync(join(root, "etc", "machine-id"), "0123456789abcdef0123456789abcdef\n")
  writeFileSync(join(root, "etc", "ssh", "ssh_host_ed25519_key"), "the golden image's key\n")
  writeFileSync(join(root, "etc", "hostname"), "felhom-golden\n")
  const write = (id: unknown) =>
    writeFileSync(join(root, "etc", "felhom-bootstrap", "controller.json"), JSON.stringify({ generation: 1, guest: { vmid: 120, hostname }, identity: id }))
  write(identity)
  const state = () => ({
    machineId: readFileSync(join(root, "etc", "machine-id"), "utf8"),
    sshKey: existsSync(join(root, "etc", "ssh", "ssh_host_ed25519_key")) ? readFileSync(join(root, "etc", "ssh", "ssh_host_ed25519_key"), "utf8") : null,
    hostname: readFileSync(join(root, "etc", "hostname"), "utf8").trim()
  })
  const run = () => spawnSync(join(GOLDEN_DIR, "felhom-firstboot"), [], { encoding: "utf8", env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", FELHOM_GUEST_ROOT: root } })
  return { root, write, state, run, cleanup: () => rmSync(root, { recursive: true, force: true }) }
}

describe("configs/golden/felhom-firstboot: the identity directive, once per directive_id", () => {
  it("resets what the directive names, records it, and does nothing on the next boot; a new directive resets again", () => {
    const g = guestRoot({ scenario: "provision", reset: ["machine-id", "ssh-host-keys", "hostname"], directive_id: "d-1" })
    try {
      const before = g.state()
      const r = g.run()
      expect(r.status, r.stderr).toBe(0)
      const after = g.state()
      expect(after.machineId).toMatch(/^[0-9a-f]{32}\n$/)
      expect(after.machineId).not.toBe(before.machineId)
      expect(after.sshKey).not.toBe(before.sshKey)
      expect(after.sshKey).toContain("PRIVATE KEY")
      expect(after.hostname).toBe("cust-new")
      expect(readFileSync(join(g.root, "var", "lib", "felhom", "identity-directive"), "utf8")).toBe("d-1\n")
      // a reboot: nothing changes
      expect(g.run().status).toBe(0)
      expect(g.state()).toEqual(after)
      // a recovery's directive naming only the host keys
      g.write({ scenario: "guest-loss-total", reset: ["ssh-host-keys"], directive_id: "d-2" })
      expect(g.run().status).toBe(0)
      const third = g.state()
      expect([third.machineId, third.hostname]).toEqual([after.machineId, after.hostname])
      expect(third.sshKey).not.toBe(after.sshKey)
    } finally {
      g.cleanup()
    }
  })

  it("a malformed directive resets nothing (exit 1); unknown resets are ignored", () => {
    for (const bad of [null, { reset: ["machine-id"] }, { reset: ["machine-id"], directive_id: "../../etc/x" }, { reset: ["machine-id"], directive_id: 7 }]) {
      const g = guestRoot(bad)
      try {
        const before = g.state()
        expect(g.run().status, JSON.stringify(bad)).toBe(1)
        expect(g.state()).toEqual(before)
        expect(existsSync(join(g.root, "var", "lib", "felhom", "identity-directive"))).toBe(false)
      } finally {
        g.cleanup()
      }
    }
    const g = guestRoot({ scenario: "provision", reset: ["rm -rf /", "machine-id; reboot"], directive_id: "d-9" })
    try {
      const before = g.state()
      expect(g.run().status).toBe(0)
      expect(g.state()).toEqual(before)
    } finally {
      g.cleanup()
    }
  })
})

describe("configs/golden/felhom-controller-start: deploys the image the bootstrap names", () => {
  /** A guest root with controller.json and registry-password, and a fake docker logging argv and stdin. */
  const setup = (config: Record<string, unknown>) => {
    const root = mkdtempSync(join(tmpdir(), "felhom-ctl-"))
    mkdirSync(join(root, "etc", "felhom-bootstrap"), { recursive: true })
    writeFileSync(join(root, "etc", "felhom-bootstrap", "controller.json"), JSON.stringify(config))
    writeFileSync(join(root, "etc", "felhom-bootstrap", "registry-password"), "s3cret-pull-token\n")
    const bin = join(root, "bin")
    mkdirSync(bin)
    writeFileSync(join(bin, "docker"), [
      "#!/bin/sh",
      `{ printf '%s\\037' "$@"; printf '\\n'; } >> ${shq(join(root, "docker.calls"))}`,
      `[ "$1" = "login" ] && cat > ${shq(join(root, "docker.stdin"))}`,
      "exit 0",
      ""
    ].join("\n"))
    chmodSync(join(bin, "docker"), 0o755)
    const run = () =>
      spawnSync(join(GOLDEN_DIR, "felhom-controller-start"), [], { encoding: "utf8", env: { PATH: `${bin}:/usr/bin:/bin`, FELHOM_GUEST_ROOT: root } })
    const calls = () => existsSync(join(root, "docker.calls")) ? readFileSync(join(root, "docker.calls"), "utf8").split("\n").slice(0, -1).map((l) => l.split("\x1f").slice(0, -1)) : []
    return { root, run, calls, stdin: () => readFileSync(join(root, "docker.stdin"), "utf8"), cleanup: () => rmSync(root, { recursive: true, force: true }) }
  }
  const IMAGE = "registry.felhom.eu/felhom/controller:1.2.0"
  const base = { generation: 4, controller: { image: IMAGE }, registry: { server: "registry.felhom.eu", username: "pull-host", password_file: "/etc/passwd" } }

  it("logs in with the password on stdin only (from the file beside controller.json), pulls and recreates the container", () => {
    const s = setup(base)
    try {
      const r = s.run()
      expect(r.status, r.stderr).toBe(0)
      expect(s.calls()).toEqual([
        ["login", "--username", "pull-host", "--password-stdin", "registry.felhom.eu"],
        ["pull", "--quiet", IMAGE],
        ["rm", "--force", "felhom-controller"],
        ["run", "--detach", "--name", "felhom-controller", "--restart", "unless-stopped", "--network", "host", "--label", "felhom.generation=4",
          "--volume", "/etc/felhom-bootstrap:/etc/felhom-bootstrap:ro", "--volume", "/var/run/docker.sock:/var/run/docker.sock", IMAGE]
      ])
      expect(s.stdin()).toBe("s3cret-pull-token\n")
      expect(JSON.stringify(s.calls())).not.toContain("s3cret")
      expect(r.stdout + r.stderr).not.toContain("s3cret")
    } finally {
      s.cleanup()
    }
  })

  it("a hostile image, registry or generation runs nothing", () => {
    for (
      const config of [
        { ...base, controller: { image: "x; touch /tmp/pwned" } },
        { ...base, controller: { image: "--privileged" } },
        { ...base, registry: { ...base.registry, server: "-H tcp://evil" } },
        { ...base, registry: { ...base.registry, username: "--password=x" } },
        { ...base, generation: "4; reboot" }
      ]
    ) {
      const s = setup(config)
      try {
        expect(s.run().status, JSON.stringify(config)).toBe(1)
        expect(s.calls()).toEqual([])
      } finally {
        s.cleanup()
      }
    }
  })
})
