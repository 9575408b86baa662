/**
 * Fixtures shared by the Privileged tests: fake executables that record their argv (NUL-separated,
 * so any byte but NUL survives) and environment, the layer built over them, a root-owned scratch
 * bootstrap tree for the on-disk path checks, and a sandbox that asks the real sudo whether the
 * shipped sudoers drop-in allows an argv.
 */
import { NodeContext } from "@effect/platform-node"
import { Effect, Either, Layer, Schema } from "effect"
import { spawnSync } from "node:child_process"
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AgentConfig } from "../src/layers/Config.js"
import {
  DEFAULT_COMMAND_PATHS,
  DEFAULT_HOST_PATHS,
  Privileged,
  privilegedLayerAt,
  type PrivilegedHostPaths,
  type PrivilegedShape
} from "../src/layers/Privileged.js"
import { AgentConfigFile, type PrivilegedCommand } from "../src/schema/config.js"
import type { PrivilegedError } from "../src/schema/privileged.js"

export const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`

export interface Canned {
  readonly stdout?: string
  readonly stderr?: string
  readonly exit?: number
  /** Extra shell lines run before output (e.g. sleeping). */
  readonly script?: string
}

/** A temp dir holding fake binaries; each records into `<dir>/<name>.argv` and `.env`. */
export const makeBinDir = (label = "bin") => {
  const root = mkdtempSync(join(tmpdir(), "felhom-priv-"))
  const dir = join(root, label)
  mkdirSync(dir, { recursive: true })
  const fake = (name: string, canned: Canned = {}) => {
    const path = join(dir, name)
    if (canned.stdout !== undefined) writeFileSync(`${path}.stdout`, canned.stdout)
    if (canned.stderr !== undefined) writeFileSync(`${path}.stderr`, canned.stderr)
    writeFileSync(path, [
      "#!/bin/sh",
      `p=${shq(path)}`,
      `printf '%s\\0' "$0" "$@" > "$p.argv"`,
      `/usr/bin/env -0 > "$p.env"`,
      canned.script ?? "",
      `[ -f "$p.stdout" ] && cat "$p.stdout"`,
      `[ -f "$p.stderr" ] && cat "$p.stderr" >&2`,
      `exit ${canned.exit ?? 0}`,
      ""
    ].join("\n"))
    chmodSync(path, 0o755)
    return path
  }
  /** Records its argv, insists on -n, then execs the rest (what sudo does once allowed). */
  const fakeSudo = (canned?: Canned) => {
    const path = join(dir, "sudo")
    writeFileSync(path, [
      "#!/bin/sh",
      `p=${shq(path)}`,
      `printf '%s\\0' "$0" "$@" > "$p.argv"`,
      // every call too, one per line (a USB mount is three sudo calls)
      `{ printf '%s\\037' "$@"; printf '\\n'; } >> "$p.calls"`,
      canned === undefined ? "" : [
        canned.stderr === undefined ? "" : `printf '%s' ${shq(canned.stderr)} >&2`,
        `exit ${canned.exit ?? 1}`
      ].join("\n"),
      `[ "$1" = "-n" ] || exit 97`,
      "shift",
      `exec "$@"`,
      ""
    ].join("\n"))
    chmodSync(path, 0o755)
    return path
  }
  /**
   * A fake that appends every call (argv without $0, fields separated by US, one call per line)
   * to `<name>.calls`, then runs `script` (which sees the arguments as "$@").
   */
  const logged = (name: string, script = "exit 0") => {
    const path = join(dir, name)
    writeFileSync(path, [
      "#!/bin/sh",
      `{ printf '%s\\037' "$@"; printf '\\n'; } >> ${shq(`${path}.calls`)}`,
      script,
      ""
    ].join("\n"))
    chmodSync(path, 0o755)
    return path
  }
  /** Every call a `logged` fake received, oldest first. */
  const calls = (name: string): ReadonlyArray<ReadonlyArray<string>> => {
    const file = join(dir, `${name}.calls`)
    if (!existsSync(file)) return []
    return readFileSync(file, "utf8").split("\n").slice(0, -1).map((l) => l.split("\x1f").slice(0, -1))
  }
  const argv = (name: string): ReadonlyArray<string> | undefined => {
    const file = join(dir, `${name}.argv`)
    if (!existsSync(file)) return undefined
    return readFileSync(file, "utf8").split("\0").slice(0, -1)
  }
  const env = (name: string): Record<string, string> =>
    Object.fromEntries(
      readFileSync(join(dir, `${name}.env`), "utf8").split("\0").filter((l) => l.length > 0).map((l) => {
        const i = l.indexOf("=")
        return [l.slice(0, i), l.slice(i + 1)]
      })
    )
  /** Every command that ran (sudo included): one `.argv` file each. */
  const recorded = () => readdirSync(dir).filter((f) => f.endsWith(".argv") || f.endsWith(".calls"))
  return {
    root,
    dir,
    fake,
    fakeSudo,
    logged,
    calls,
    argv,
    env,
    recorded,
    cleanup: () => rmSync(root, { recursive: true, force: true })
  }
}

export type Bin = ReturnType<typeof makeBinDir>

export const ALL: ReadonlyArray<PrivilegedCommand> = [
  "pct",
  "vzdump",
  "felhom-mount-unit",
  "systemctl",
  "smartctl",
  "sensors",
  "tar",
  "zstd",
  "gzip",
  "lzop"
]

export interface LayerOptions {
  readonly mode?: "sudo" | "direct"
  readonly timeout_seconds?: number
  readonly sudo_path?: string
  readonly bootstrap_root?: string
  readonly state_dir?: string
  readonly archive_storage_paths?: ReadonlyArray<string>
  readonly archive_test_timeout_seconds?: number
  /** Commands pointed elsewhere than `<bin dir>/<name>` (e.g. the real tar, the real helper). */
  readonly commands?: Partial<Record<PrivilegedCommand, string>>
  /** Host paths other than the production ones (scratch unit dir, mount root, mountinfo). */
  readonly paths?: Partial<PrivilegedHostPaths>
}

/** Config pointing every command at `<dir>/<name>`. */
export const layerFor = (bin: Bin, extra: LayerOptions = {}) => {
  const { state_dir, commands: overrides, paths, ...privileged } = extra
  const commands = { ...Object.fromEntries(ALL.map((c) => [c, join(bin.dir, c)])), ...overrides }
  const file = Schema.decodeUnknownSync(AgentConfigFile)({
    ...(state_dir === undefined ? {} : { state_dir }),
    privileged: { mode: "direct", timeout_seconds: 10, commands, ...privileged }
  })
  return privilegedLayerAt({ ...DEFAULT_HOST_PATHS, ...paths }).pipe(
    Layer.provide(Layer.succeed(AgentConfig, { source: undefined, file })),
    Layer.provide(NodeContext.layer)
  )
}

/** Runs `f` against a fresh layer and returns its Either. */
export const withPriv = <A>(
  bin: Bin,
  f: (p: PrivilegedShape) => Effect.Effect<A, PrivilegedError>,
  extra?: LayerOptions
) =>
  Effect.flatMap(Privileged, (p) => Effect.either(f(p))).pipe(
    Effect.provide(layerFor(bin, extra))
  )

export const expectError = <A>(result: Either.Either<A, PrivilegedError>): PrivilegedError => {
  if (Either.isRight(result)) throw new Error(`expected a PrivilegedError, got ${JSON.stringify(result.right)}`)
  return result.left
}
export const expectValue = <A>(result: Either.Either<A, PrivilegedError>): A => {
  if (Either.isLeft(result)) throw new Error(`expected success, got ${result.left.reason}: ${result.left.message}`)
  return result.right
}

// ---------------------------------------------------------------------------------------------
// A root-owned bootstrap tree

export const isRoot = process.getuid?.() === 0

/** A scratch uid standing in for the felhom-agent service user (nobody). */
export const SERVICE_UID = 65534

/**
 * `<base>/bootstrap/<dirs...>`, every directory root-owned and 0755 (the on-disk check passes),
 * below the host's temp dir (root-owned and sticky, which the check allows above the root). Only
 * root can make it: everything the tests create is owned by whoever runs them.
 */
export const makeTrustedTree = (...dirs: ReadonlyArray<string>) => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-tree-")))
  chmodSync(base, 0o755)
  const root = join(base, "bootstrap")
  const mkdir = (p: string) => {
    mkdirSync(p)
    chmodSync(p, 0o755)
  }
  mkdir(root)
  for (const d of dirs) {
    let at = root
    for (const part of d.split("/")) {
      at = join(at, part)
      if (!existsSync(at)) mkdir(at)
    }
  }
  return { base, root, cleanup: () => rmSync(base, { recursive: true, force: true }) }
}

// ---------------------------------------------------------------------------------------------
// The sudoers drop-in

export const SUDOERS = join(__dirname, "..", "configs", "sudoers", "felhom-agent")
/** The root helper that writes and removes USB mount units, as shipped. */
export const MOUNT_UNIT_HELPER = join(__dirname, "..", "configs", "libexec", "felhom-mount-unit")
export const hasVisudo = spawnSync("sh", ["-c", "command -v visudo"], { encoding: "utf8" }).status === 0

/**
 * `allows(argv)` asks `sudo -l -U felhom-agent <argv>` inside a private mount namespace where the
 * drop-in is bound over /etc/sudoers (with a felhom-agent user) and stub binaries are overlaid at
 * the default paths. Needs root, unshare and overlayfs; undefined elsewhere.
 */
export function makeSudoSandbox() {
  if (process.getuid?.() !== 0 || !hasVisudo) return undefined
  const dir = mkdtempSync(join(tmpdir(), "felhom-sudoers-"))
  const etc = join(dir, "etc")
  mkdirSync(etc)
  writeFileSync(join(etc, "sudoers"), readFileSync(SUDOERS))
  chmodSync(join(etc, "sudoers"), 0o440)
  writeFileSync(join(etc, "passwd"), `${readFileSync("/etc/passwd", "utf8")}felhom-agent:x:64999:64999::/nonexistent:/usr/sbin/nologin\n`)
  writeFileSync(join(etc, "group"), `${readFileSync("/etc/group", "utf8")}felhom-agent:x:64999:\n`)
  for (const [, path] of Object.entries(DEFAULT_COMMAND_PATHS)) {
    const stub = join(dir, "stubs", path)
    mkdirSync(join(stub, ".."), { recursive: true })
    writeFileSync(stub, "#!/bin/sh\nexit 0\n")
    chmodSync(stub, 0o755)
  }
  const script = [
    "set -e",
    `d=${shq(dir)}`,
    `for f in sudoers passwd group; do mount --bind "$d/etc/$f" "/etc/$f"; done`,
    `for b in /usr/bin /usr/sbin /usr/local; do mkdir -p "$d/stubs$b"; mount -t overlay overlay -o "lowerdir=$d/stubs$b:$b" "$b"; done`,
    `exec sudo -l -U felhom-agent "$@"`
  ].join("\n")
  const allowsRaw = (argv: ReadonlyArray<string>) =>
    spawnSync("unshare", ["-m", "--", "sh", "-c", script, "sh", ...argv], { encoding: "utf8" })
  const probe = allowsRaw([DEFAULT_COMMAND_PATHS.sensors, "-j"])
  if (probe.status !== 0) {
    rmSync(dir, { recursive: true, force: true })
    return undefined
  }
  return {
    allows: (argv: ReadonlyArray<string>) => allowsRaw(argv).status === 0,
    cleanup: () => rmSync(dir, { recursive: true, force: true })
  }
}
