/**
 * The fence (SPEC §1) as types: Proxmox never requires a CommandExecutor, Privileged never an
 * HttpClient. The @ts-expect-error lines fail `tsc` if the allow-lists ever stop rejecting.
 * The second half runs the import-boundary script over broken trees to prove it catches leaks.
 */
import { type MethodR, type RIn, runFenceCheck } from "./fence-support.js"
import { CommandExecutor, HttpClient } from "@effect/platform"
import { describe, expect, expectTypeOf, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type { SqlClient } from "@effect/sql"
import { AuthzLive, type AuthzShape } from "../src/layers/Authz.js"
import { AgentConfig, type HubSettings, type ProxmoxSettings } from "../src/layers/Config.js"
import { JournalLive, type JournalShape } from "../src/layers/Journal.js"
import { PrivilegedLive, type PrivilegedShape } from "../src/layers/Privileged.js"
import { Privileged } from "../src/layers/Privileged.js"
import { Proxmox, type ProxmoxShape, ProxmoxWithoutClient } from "../src/layers/Proxmox.js"
import { PveHttpClientLive } from "../src/layers/PveTransport.js"
import type { AuditLog } from "../src/layers/AuditLog.js"
import { LocalApi, LocalApiLive, type LocalApiSettings, type LocalApiShape } from "../src/layers/LocalApi.js"
import { type LocalCert, LocalCertFromConfig } from "../src/layers/LocalCert.js"
import { type LocalTokens, LocalTokensLive, type LocalTokensShape } from "../src/layers/LocalTokens.js"
import type { LocalApiBackend, LocalApiBackendShape } from "../src/programs/localapi/backend.js"
import { HubReleasesWithoutClient, type HubReleasesShape } from "../src/layers/HubReleases.js"
import { PrivilegedBreakGlassLive, PrivilegedCloudflaredLive, PrivilegedUpdateLive } from "../src/layers/Privileged.js"


describe("the fence (types)", () => {
  it("Proxmox's layer requires only HttpClient and its own config block, never a CommandExecutor", () => {
    expectTypeOf<Extract<RIn<typeof ProxmoxWithoutClient>, CommandExecutor.CommandExecutor>>().toBeNever()
    expectTypeOf<RIn<typeof ProxmoxWithoutClient>>().toEqualTypeOf<HttpClient.HttpClient | ProxmoxSettings>()
    expectTypeOf<RIn<typeof PveHttpClientLive>>().toEqualTypeOf<ProxmoxSettings>()
    expectTypeOf<MethodR<ProxmoxShape>>().toBeNever()
  })

  it("neither Proxmox nor its transport can read the whole config (the hub key) or the hub block", () => {
    expectTypeOf<Extract<RIn<typeof ProxmoxWithoutClient> | RIn<typeof PveHttpClientLive>, AgentConfig | HubSettings>>().toBeNever()
  })

  it("a Proxmox layer that reads the whole config does not compile", () => {
    const readsAll = Layer.effect(Proxmox, Effect.as(AgentConfig, {} as ProxmoxShape))
    // @ts-expect-error AgentConfig (which holds the hub key) is outside Proxmox's allow-list
    const fenced = readsAll.pipe(Layer.ensureRequirementsType<HttpClient.HttpClient | ProxmoxSettings>())
    expect(fenced).toBeDefined()
  })

  it("Privileged's layer requires only CommandExecutor and AgentConfig, never an HttpClient", () => {
    expectTypeOf<Extract<RIn<typeof PrivilegedLive>, HttpClient.HttpClient>>().toBeNever()
    expectTypeOf<MethodR<PrivilegedShape>>().toBeNever()
  })

  // issue 14: the release downloads are the hub client's kind (HTTP only); the self-update,
  // break-glass and cloudflared root commands are Privileged's (processes only)
  it("HubReleases requires only HttpClient and the hub block, never a CommandExecutor", () => {
    expectTypeOf<RIn<typeof HubReleasesWithoutClient>>().toEqualTypeOf<HttpClient.HttpClient | HubSettings>()
    expectTypeOf<MethodR<HubReleasesShape>>().toBeNever()
  })

  it("the update, break-glass and cloudflared runners never require an HttpClient", () => {
    expectTypeOf<Extract<RIn<typeof PrivilegedUpdateLive> | RIn<typeof PrivilegedBreakGlassLive> | RIn<typeof PrivilegedCloudflaredLive>, HttpClient.HttpClient>>()
      .toBeNever()
  })

  it("Authz's layer requires only SqlClient and AgentConfig: no HTTP, no processes", () => {
    expectTypeOf<RIn<typeof AuthzLive>>().toEqualTypeOf<SqlClient.SqlClient | AgentConfig>()
    expectTypeOf<MethodR<AuthzShape>>().toBeNever()
  })

  it("Journal's layer requires only SqlClient", () => {
    expectTypeOf<RIn<typeof JournalLive>>().toEqualTypeOf<SqlClient.SqlClient>()
    expectTypeOf<MethodR<Omit<JournalShape, "runOnce">>>().toBeNever()
  })

  // SPEC §1: LocalApi may depend on HttpServer, the journal (audit) and the work queue, never a CommandExecutor
  it("LocalApi and its token and certificate layers never require a CommandExecutor or an HttpClient", () => {
    type LocalApiR = RIn<ReturnType<typeof LocalApiLive>>
    expectTypeOf<Extract<LocalApiR | RIn<typeof LocalTokensLive> | RIn<typeof LocalCertFromConfig>, CommandExecutor.CommandExecutor | HttpClient.HttpClient>>().toBeNever()
    expectTypeOf<LocalApiR>().toEqualTypeOf<LocalApiSettings | LocalCert | LocalTokens | LocalApiBackend | AuditLog>()
    expectTypeOf<MethodR<LocalApiBackendShape>>().toBeNever()
    expectTypeOf<MethodR<LocalTokensShape>>().toBeNever()
  })

  it("a LocalApi layer that shells out does not compile", () => {
    const shellsOut = Layer.effect(LocalApi, Effect.as(CommandExecutor.CommandExecutor, {} as LocalApiShape))
    // @ts-expect-error CommandExecutor is outside LocalApi's allow-list
    const fenced = shellsOut.pipe(Layer.ensureRequirementsType<LocalApiSettings | LocalCert | LocalTokens | LocalApiBackend | AuditLog>())
    expect(fenced).toBeDefined()
  })

  it("a Proxmox layer that shells out does not compile", () => {
    const shellsOut = Layer.effect(Proxmox, Effect.as(CommandExecutor.CommandExecutor, {} as ProxmoxShape))
    // @ts-expect-error CommandExecutor is outside Proxmox's allow-list
    const fenced = shellsOut.pipe(Layer.ensureRequirementsType<HttpClient.HttpClient | ProxmoxSettings>())
    expect(fenced).toBeDefined()
  })

  it("a Privileged layer that does HTTP does not compile", () => {
    const doesHttp = Layer.effect(Privileged, Effect.as(HttpClient.HttpClient, {} as PrivilegedShape))
    // @ts-expect-error HttpClient is outside Privileged's allow-list
    const fenced = doesHttp.pipe(Layer.ensureRequirementsType<CommandExecutor.CommandExecutor | AgentConfig>())
    expect(fenced).toBeDefined()
  })
})

describe("the fence (import boundaries)", () => {
  const runOn = (files: Record<string, string>) => runFenceCheck(files)
  const clean = {
    "src/layers/Proxmox.ts": `import { HttpClient } from "@effect/platform"\nexport const x = HttpClient\n`,
    "src/layers/PveTransport.ts": `export const y = 1\n`,
    "src/layers/Privileged.ts": `import { Command } from "@effect/platform"\nexport const z = Command\n`,
    "src/layers/Authz.ts": `import { SqlClient } from "@effect/sql"\nexport const a = SqlClient\n`,
    "src/layers/Database.ts": `export const d = 1\n`
  }

  it("passes on the real tree", () => {
    const r = runFenceCheck(undefined)
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
  })

  it("passes on a clean tree", () => {
    expect(runOn(clean).status).toBe(0)
  })

  it("catches Proxmox importing child_process through a helper module", () => {
    const r = runOn({
      ...clean,
      "src/layers/Proxmox.ts": `import { run } from "../util/run.js"\nexport const x = run\n`,
      "src/util/run.ts": `import { spawn } from "node:child_process"\nexport const run = spawn\n`
    })
    expect(r.status).toBe(1)
    expect(r.stderr).toContain("src/layers/Proxmox.ts -> src/util/run.ts")
  })

  it("catches a runtime import that follows an `export type` statement", () => {
    const r = runOn({
      ...clean,
      "src/layers/Proxmox.ts": `export type Shape = {\n  a: string\n}\nimport { spawn } from "node:child_process"\nexport const x = spawn\n`
    })
    expect(r.status).toBe(1)
    expect(r.stderr).toContain("node:child_process")
  })

  it("catches Proxmox importing CommandExecutor from the platform barrel", () => {
    const r = runOn({ ...clean, "src/layers/Proxmox.ts": `import { CommandExecutor } from "@effect/platform"\nexport const x = CommandExecutor\n` })
    expect(r.status).toBe(1)
    expect(r.stderr).toContain("imports CommandExecutor")
  })

  it("catches Authz reaching a process or the network, and the shelling SqliteMigrator", () => {
    for (const body of [
      `import { Command } from "@effect/platform"\nexport const a = Command\n`,
      `import { HttpClient } from "@effect/platform"\nexport const a = HttpClient\n`,
      `import { SqliteMigrator } from "@effect/sql-sqlite-node"\nexport const a = SqliteMigrator\n`,
      `import { execFile } from "node:child_process"\nexport const a = execFile\n`
    ]) {
      const r = runOn({ ...clean, "src/layers/Authz.ts": body })
      expect(r.status, body).toBe(1)
    }
  })

  it("catches Privileged importing HttpClient, undici, node:https or calling fetch", () => {
    for (const body of [
      `import { HttpClient } from "@effect/platform"\nexport const z = HttpClient\n`,
      `import { request } from "undici"\nexport const z = request\n`,
      `import https from "node:https"\nexport const z = https\n`,
      `export const z = () => fetch("https://example.invalid")\n`,
      `import { x } from "./Proxmox.js"\nexport const z = x\n`
    ]) {
      const r = runOn({ ...clean, "src/layers/Privileged.ts": body })
      expect(r.status, body).toBe(1)
    }
  })
})
