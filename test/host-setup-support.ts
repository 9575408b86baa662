/**
 * A scratch host for HostSetup and enroll tests: a root prefix, and fake `pveum`, `systemctl` and
 * `visudo` executables (node scripts: they need nothing from the agent's environment, which the
 * runner clears) that record every argv as a JSON line. The fake pveum keeps PVE's user database
 * (roles, users, tokens, ACLs) in a JSON file, prints what the real one prints for
 * `--output-format json`, and can be told to fail one subcommand. The fake visudo records its argv
 * and runs the real visudo when there is one (so a broken file really is refused).
 */
import { NodeContext } from "@effect/platform-node"
import { Layer } from "effect"
import { spawnSync } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { hostSetupLayer, type HostSetupOptions } from "../src/layers/HostSetup.js"

export const CONFIGS_DIR = join(__dirname, "..", "configs")
const NODE = process.execPath
const REAL_VISUDO = spawnSync("sh", ["-c", "command -v visudo"], { encoding: "utf8" }).stdout.trim()

export interface PveumState {
  roles: Record<string, ReadonlyArray<string>>
  users: Array<string>
  tokens: Record<string, { privsep: number }>
  acl: Array<{ path: string; ugid: string; roleid: string; type: "user" | "token" }>
  /** The secret the next `token add` prints. */
  nextSecret: string
  /** A subcommand (e.g. "token add", "role modify") that exits 1. */
  failOn?: string
}

const PVEUM_SCRIPT = `
const fs = require("fs")
const dir = __dirname
const args = process.argv.slice(2)
fs.appendFileSync(dir + "/pveum.calls", JSON.stringify(args) + "\\n")
const state = JSON.parse(fs.readFileSync(dir + "/pveum.state.json", "utf8"))
const save = () => fs.writeFileSync(dir + "/pveum.state.json", JSON.stringify(state))
const opt = (name) => { const i = args.indexOf("--" + name); return i < 0 ? undefined : args[i + 1] }
const sub = args[0] === "user" && args[1] === "token" ? "token " + args[2] : args[0] + " " + args[1]
if (state.failOn === sub) { process.stderr.write("simulated failure of " + sub + "\\n"); process.exit(1) }
const out = (v) => process.stdout.write(JSON.stringify(v))
switch (sub) {
  case "role list": out(Object.entries(state.roles).map(([roleid, privs]) => ({ roleid, privs: privs.join(","), special: 0 }))); break
  case "role add":
    if (state.roles[args[2]]) { process.stderr.write("role '" + args[2] + "' already exists\\n"); process.exit(255) }
    state.roles[args[2]] = opt("privs").split(","); save(); break
  case "role modify": state.roles[args[2]] = opt("privs").split(","); save(); break
  case "user list": out(state.users.map((userid) => ({ userid, enable: 1 }))); break
  case "user add":
    if (state.users.includes(args[2])) { process.stderr.write("user '" + args[2] + "' already exists\\n"); process.exit(255) }
    state.users.push(args[2]); save(); break
  case "token list": out(Object.entries(state.tokens).map(([tokenid, t]) => ({ tokenid, privsep: t.privsep }))); break
  case "token add":
    if (state.tokens[args[4]]) { process.stderr.write("Token already exists.\\n"); process.exit(255) }
    state.tokens[args[4]] = { privsep: Number(opt("privsep")) }; save()
    out({ "full-tokenid": args[3] + "!" + args[4], info: { privsep: opt("privsep") }, value: state.nextSecret }); break
  case "token remove": delete state.tokens[args[4]]; save(); break
  case "acl modify": {
    const users = opt("users"), tokens = opt("tokens")
    const ugid = users ?? tokens, type = users ? "user" : "token"
    if (!state.acl.some((a) => a.path === args[2] && a.ugid === ugid && a.roleid === opt("roles")))
      state.acl.push({ path: args[2], ugid, roleid: opt("roles"), type })
    save(); break
  }
  default: process.stderr.write("fake pveum: unknown " + sub + "\\n"); process.exit(2)
}
`

const RECORDER = (name: string, tail: string) => `
const fs = require("fs")
fs.appendFileSync(__dirname + "/${name}.calls", JSON.stringify(process.argv.slice(2)) + "\\n")
${tail}
`

export const makeFakeHost = (opts: { readonly state?: Partial<PveumState> } = {}) => {
  const base = realpathSync(mkdtempSync(join(tmpdir(), "felhom-host-")))
  chmodSync(base, 0o755)
  const prefix = join(base, "root")
  mkdirSync(prefix, { mode: 0o755 })
  const bin = join(base, "bin")
  mkdirSync(bin, { mode: 0o755 })
  const exe = (name: string, body: string) => {
    const p = join(bin, name)
    writeFileSync(p, `#!${NODE}\n${body}`)
    chmodSync(p, 0o755)
    return p
  }
  const initial: PveumState = { roles: {}, users: [], tokens: {}, acl: [], nextSecret: "11111111-2222-4333-8444-555555555555", ...opts.state }
  writeFileSync(join(bin, "pveum.state.json"), JSON.stringify(initial))
  const pveum = exe("pveum", PVEUM_SCRIPT)
  const systemctl = exe("systemctl", RECORDER("systemctl", `process.exit(Number(process.env.FAKE_SYSTEMCTL_EXIT ?? 0))`))
  const visudo = exe(
    "visudo",
    RECORDER(
      "visudo",
      REAL_VISUDO === ""
        ? `process.exit(fs.readFileSync(process.argv[4], "utf8").includes("BROKEN") ? 1 : 0)`
        : `const r = require("child_process").spawnSync(${JSON.stringify(REAL_VISUDO)}, process.argv.slice(2), { stdio: "inherit" }); process.exit(r.status ?? 1)`
    )
  )
  const calls = (name: string): ReadonlyArray<ReadonlyArray<string>> => {
    const f = join(bin, `${name}.calls`)
    return existsSync(f) ? readFileSync(f, "utf8").split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l) as Array<string>) : []
  }
  const state = (): PveumState => JSON.parse(readFileSync(join(bin, "pveum.state.json"), "utf8")) as PveumState
  const setState = (patch: Partial<PveumState>) => writeFileSync(join(bin, "pveum.state.json"), JSON.stringify({ ...state(), ...patch }))
  const options = (extra: Partial<HostSetupOptions> = {}): HostSetupOptions => ({
    prefix,
    configsDir: CONFIGS_DIR,
    binaries: { pveum, systemctl, visudo },
    timeout: "30 seconds",
    ...extra
  })
  const layer = (extra: Partial<HostSetupOptions> = {}) => hostSetupLayer(options(extra)).pipe(Layer.provide(NodeContext.layer))
  return { base, prefix, bin, pveum, systemctl, visudo, calls, state, setState, options, layer, cleanup: () => rmSync(base, { recursive: true, force: true }) }
}

export type FakeHost = ReturnType<typeof makeFakeHost>
