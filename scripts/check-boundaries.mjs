// Import-boundary check (run by `npm test`): the fence of SPEC §1 as a lint over the transitive
// import closure of each fenced layer. The type-level half lives in test/fence.test.ts.
//   Proxmox (and its transport) never reaches a process-spawning module; nor does the Hub client.
//   Privileged never reaches an HTTP/network client module, nor calls fetch.
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"

// FENCE_ROOT lets the test run the same check over a deliberately broken tree.
const root = process.env.FENCE_ROOT ?? resolve(dirname(new URL(import.meta.url).pathname), "..")

const RULES = [
  {
    name: "Proxmox, the Hub client and the local API never shell out",
    entries: [
      "src/layers/Proxmox.ts", "src/layers/PveTransport.ts", "src/layers/TlsDispatcher.ts", "src/layers/Hub.ts", "src/layers/HubEnroll.ts",
      "src/layers/HubReleases.ts", "src/layers/HubExchange.ts",
      "src/layers/LocalApi.ts", "src/layers/LocalCert.ts", "src/layers/LocalTokens.ts", "src/layers/StatusServer.ts"
    ],
    modules: [
      /^(node:)?child_process$/,
      /^@effect\/platform\/(Command|CommandExecutor)$/,
      /^@effect\/platform-node\/(NodeCommandExecutor|NodeContext)$/,
      /^@effect\/platform-node-shared\/NodeCommandExecutor$/
    ],
    named: {
      "@effect/platform": ["Command", "CommandExecutor"],
      "@effect/platform-node": ["NodeCommandExecutor", "NodeContext"]
    },
    files: ["src/layers/Privileged.ts"],
    source: []
  },
  {
    name: "Authz, Journal, the queue and the state database neither shell out nor do HTTP",
    entries: ["src/layers/Authz.ts", "src/layers/Database.ts", "src/layers/Journal.ts", "src/layers/GuestQueue.ts"],
    modules: [
      /^(node:)?child_process$/,
      /^(node:)?(http|https|http2|net|tls|dgram)$/,
      /^undici$/,
      /^@effect\/platform\/(Command|CommandExecutor|HttpClient|HttpClientRequest|HttpClientResponse|FetchHttpClient)$/,
      /^@effect\/platform-node\/(NodeCommandExecutor|NodeContext|NodeHttpClient|Undici)$/,
      // SqliteMigrator shells out to the sqlite3 binary (SPEC §17)
      /^@effect\/sql-sqlite-node\/SqliteMigrator$/
    ],
    named: {
      "@effect/platform": ["Command", "CommandExecutor", "HttpClient", "HttpClientRequest", "HttpClientResponse", "FetchHttpClient"],
      "@effect/platform-node": ["NodeCommandExecutor", "NodeContext", "NodeHttpClient", "Undici"],
      "@effect/sql-sqlite-node": ["SqliteMigrator"]
    },
    files: ["src/layers/Proxmox.ts", "src/layers/PveTransport.ts", "src/layers/TlsDispatcher.ts", "src/layers/Privileged.ts"],
    source: [/\bfetch\s*\(/]
  },
  {
    name: "Privileged and HostSetup never do HTTP",
    entries: ["src/layers/Privileged.ts", "src/layers/HostSetup.ts"],
    modules: [
      /^(node:)?(http|https|http2|net|tls|dgram)$/,
      /^undici$/,
      /^@effect\/platform\/(HttpClient|HttpClientRequest|HttpClientResponse|FetchHttpClient|HttpApiClient|Socket)$/,
      /^@effect\/platform-node\/(NodeHttpClient|Undici|NodeSocket)$/
    ],
    named: {
      "@effect/platform": ["HttpClient", "HttpClientRequest", "HttpClientResponse", "FetchHttpClient", "HttpApiClient", "Socket"],
      "@effect/platform-node": ["NodeHttpClient", "Undici", "NodeSocket"]
    },
    files: ["src/layers/Proxmox.ts", "src/layers/PveTransport.ts", "src/layers/TlsDispatcher.ts", "src/layers/Hub.ts", "src/layers/HubEnroll.ts", "src/layers/HubExchange.ts"],
    source: [/\bfetch\s*\(/, /\bXMLHttpRequest\b/, /\bWebSocket\b/]
  }
]

// The clause may span lines (multi-line import lists) but never another import/export statement:
// without semicolons, a lazy match from `export type X = ...` would swallow the next import.
const IMPORT_RE = /(?:^|\n)\s*(?:import|export)\s+(type\s+)?((?:(?!\n\s*(?:import|export)\b)[^;])*?)\s*from\s*["']([^"']+)["']|import\s*\(\s*["']([^"']+)["']\s*\)|(?:^|\n)\s*import\s+["']([^"']+)["']/g

const parseImports = (text) => {
  const out = []
  for (const m of text.matchAll(IMPORT_RE)) {
    const spec = m[3] ?? m[4] ?? m[5]
    const typeOnly = m[1] !== undefined
    const clause = m[2] ?? ""
    const names = []
    const braces = /\{([^}]*)\}/.exec(clause)
    if (braces) {
      for (const part of braces[1].split(",")) {
        const p = part.trim().replace(/^type\s+/, "")
        if (p) names.push(p.split(/\s+as\s+/)[0].trim())
      }
    }
    const star = /\*\s+as\s+\w+/.test(clause)
    out.push({ spec, typeOnly, names, star })
  }
  return out
}

const resolveLocal = (fromFile, spec) => {
  if (!spec.startsWith(".")) return undefined
  const base = resolve(dirname(fromFile), spec)
  for (const cand of [base.replace(/\.js$/, ".ts"), base + ".ts", join(base, "index.ts"), base]) {
    if (existsSync(cand) && cand.endsWith(".ts")) return cand
  }
  return undefined
}

let failures = 0
for (const rule of RULES) {
  const seen = new Set()
  const queue = rule.entries.map((e) => join(root, e)).filter((f) => existsSync(f))
  const via = new Map(queue.map((f) => [f, null]))
  while (queue.length > 0) {
    const file = queue.shift()
    if (seen.has(file)) continue
    seen.add(file)
    const rel = relative(root, file)
    const chain = () => {
      const parts = []
      for (let f = file; f !== null && f !== undefined; f = via.get(f)) parts.unshift(relative(root, f))
      return parts.join(" -> ")
    }
    if (rule.files.includes(rel) && !rule.entries.includes(rel)) {
      console.error(`fence: ${rule.name}: reaches ${rel} (${chain()})`)
      failures++
    }
    const text = readFileSync(file, "utf8")
    for (const pattern of rule.source) {
      if (pattern.test(text)) {
        console.error(`fence: ${rule.name}: ${rel} uses ${pattern} (${chain()})`)
        failures++
      }
    }
    for (const imp of parseImports(text)) {
      // Type-only imports carry no runtime capability; the type-level test covers requirements.
      if (imp.typeOnly) continue
      if (rule.modules.some((re) => re.test(imp.spec))) {
        console.error(`fence: ${rule.name}: ${rel} imports ${imp.spec} (${chain()})`)
        failures++
      }
      const banned = rule.named[imp.spec]
      if (banned !== undefined) {
        const hit = imp.star ? ["* (whole module)"] : imp.names.filter((n) => banned.includes(n))
        if (imp.star && !imp.names.length) {
          console.error(`fence: ${rule.name}: ${rel} imports * from ${imp.spec}, which includes ${banned.join(", ")}`)
          failures++
        } else if (hit.length > 0) {
          console.error(`fence: ${rule.name}: ${rel} imports ${hit.join(", ")} from ${imp.spec} (${chain()})`)
          failures++
        }
      }
      const local = resolveLocal(file, imp.spec)
      if (local !== undefined && !seen.has(local)) {
        if (!via.has(local)) via.set(local, file)
        queue.push(local)
      }
    }
  }
  if (seen.size === 0) {
    console.error(`fence: ${rule.name}: none of ${rule.entries.join(", ")} exists`)
    failures++
  }
}

// The gate is a type (issue 8): only the gate may take the clearance issuer, and only the
// console (selftest task) and the test suite may use the gate's console clearances.
const MINT_RULES = [
  { pattern: /\btakeIssuer\b|\bClearance\.takeIssuer\b/, allowed: ["src/schema/clearance.ts", "src/programs/control/gate.ts"], what: "takes the clearance issuer" },
  { pattern: /\bclearForConsole\b|\bconsoleGrant\b/, allowed: ["src/programs/control/gate.ts", "src/programs/cli/selftest.ts"], what: "mints console clearances" }
]
const walk = (dir) => {
  const out = []
  if (!existsSync(dir)) return out
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...walk(p))
    else if (/\.(ts|mts|js|mjs|cjs)$/.test(e.name)) out.push(p)
  }
  return out
}
for (const file of walk(join(root, "src"))) {
  const rel = relative(root, file)
  const text = readFileSync(file, "utf8")
  for (const r of MINT_RULES) {
    if (!r.allowed.includes(rel) && r.pattern.test(text)) {
      console.error(`fence: only ${r.allowed.join(", ")} may do this: ${rel} ${r.what}`)
      failures++
    }
  }
}

if (failures > 0) {
  console.error(`fence: ${failures} violation(s)`)
  process.exit(1)
}
console.log("fence: import boundaries hold")
