/**
 * Issue 8, finding 7: privilege escalation through the bootstrap path. The service user owns its
 * state directory, so it could rename a root-owned `<state>/bootstrap` away and put a symlink to
 * `/` in its place; sudoers and the validator both accepted `pct set N --mp0
 * <state>/bootstrap/etc,...`, and root would bind-mount the host's /etc into a guest.
 *
 * What holds now, and what proves it here:
 * - bind-mount sources live below `privileged.bootstrap_root`, a separate root-owned tree, and the
 *   config refuses a root that overlaps state_dir (config cases);
 * - the validator accepts only canonical paths strictly below that root (properties);
 * - before spawning, the layer lstats every component from `/` down and refuses a symlink, a
 *   component not owned by root, or one that group/others can write, naming it (runtime cases,
 *   root only: only root can make root-owned directories, and chown to a scratch uid);
 * - nothing is spawned for a refused path, in direct or sudo mode (the fake binaries record
 *   every run). The sudoers half is in privileged.test.ts.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, Schema } from "effect"
import { spawnSync } from "node:child_process"
import { chmodSync, chownSync, lchownSync, lstatSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs"
import { join, posix } from "node:path"
import { decodeConfigObject } from "../src/layers/Config.js"
import { DEFAULT_BOOTSTRAP_ROOT } from "../src/layers/Privileged.js"
import { VmId } from "../src/schema/ids.js"
import { bootstrapHostPathUnder, type UntrustedPathReason } from "../src/schema/privileged.js"
import {
  ALL,
  expectError,
  expectValue,
  isRoot,
  makeBinDir,
  makeTrustedTree,
  SERVICE_UID,
  withPriv
} from "./privileged-support.js"

const bind = { vmid: VmId.make(101), mpIndex: 0, guestPath: "/etc/felhom-bootstrap", readOnly: true }

const trees: Array<{ cleanup: () => void }> = []
const tree = (...dirs: ReadonlyArray<string>) => {
  const t = makeTrustedTree(...dirs)
  trees.push(t)
  return t
}
afterAll(() => {
  for (const t of trees) t.cleanup()
})

/** Runs `script` as the scratch service uid (the attacker), like the felhom-agent user would. */
const asServiceUser = (script: string) =>
  spawnSync("sh", ["-c", script], { uid: SERVICE_UID, gid: SERVICE_UID, encoding: "utf8" })

/**
 * Asks for a bind mount of `hostPath` with `root` configured, in direct and sudo mode, and expects
 * the refusal `expected` (an UntrustedPath naming `component`, or InvalidArgument) with nothing run.
 */
const expectRefused = (
  root: string | undefined,
  hostPath: string,
  expected: { readonly component: string; readonly why: UntrustedPathReason } | "InvalidArgument"
) => {
  const bin = makeBinDir()
  for (const c of ALL) bin.fake(c)
  const sudo = bin.fakeSudo()
  return Effect.gen(function*() {
    for (const mode of ["direct", "sudo"] as const) {
      const e = expectError(yield* withPriv(bin, (p) => p.bindMountIntoGuest({ ...bind, hostPath }), {
        mode,
        sudo_path: sudo,
        ...(root === undefined ? {} : { bootstrap_root: root })
      }))
      expect(e.argument).toBe("hostPath")
      if (expected === "InvalidArgument") {
        expect(e.reason).toBe("InvalidArgument")
      } else {
        expect(e.reason, e.message).toBe("UntrustedPath")
        expect(e.component).toBe(expected.component)
        expect(e.untrusted).toBe(expected.why)
        expect(e.message).toContain(expected.component)
      }
    }
    // Neither sudo nor pct ran.
    expect(bin.recorded()).toEqual([])
  }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
}

const expectRuns = (root: string, hostPath: string) => {
  const bin = makeBinDir()
  const pct = bin.fake("pct")
  const sudo = bin.fakeSudo()
  return Effect.gen(function*() {
    for (const mode of ["direct", "sudo"] as const) {
      expectValue(yield* withPriv(bin, (p) => p.bindMountIntoGuest({ ...bind, hostPath }), {
        mode,
        sudo_path: sudo,
        bootstrap_root: root
      }))
      expect(bin.argv("pct")).toEqual([pct, "set", "101", "--mp0", `${hostPath},mp=/etc/felhom-bootstrap,ro=1,backup=0`])
    }
  }).pipe(Effect.ensuring(Effect.sync(bin.cleanup)))
}

// ---------------------------------------------------------------------------------------------

describe("finding 7: the finding's own argv", () => {
  it.live("a bind source under the service user's state dir is refused before anything runs (default config)", () =>
    Effect.gen(function*() {
      yield* expectRefused(undefined, "/var/lib/felhom-agent/bootstrap/etc", "InvalidArgument")
      yield* expectRefused(undefined, "/var/lib/felhom-agent/bootstrap/101", "InvalidArgument")
    }))
})

describe("finding 7: the config keeps the bootstrap tree out of state_dir", () => {
  const decode = (config: Record<string, unknown>) => decodeConfigObject(config)
  const refused = (state_dir: string, bootstrap_root: string) => {
    const r = decode({ state_dir, privileged: { bootstrap_root } })
    if (Either.isRight(r)) throw new Error(`accepted state_dir=${state_dir} bootstrap_root=${bootstrap_root}`)
    return r.left
  }

  it("defaults to a root-owned tree outside the default state dir", () => {
    const r = decode({})
    if (Either.isLeft(r)) throw new Error(r.left.message)
    expect(r.right.state_dir).toBe("/var/lib/felhom-agent")
    expect(r.right.privileged.bootstrap_root).toBe(DEFAULT_BOOTSTRAP_ROOT)
    expect(DEFAULT_BOOTSTRAP_ROOT).toBe("/var/lib/felhom-agent-root/bootstrap")
  })

  it("refuses a bootstrap_root that is state_dir, inside it, or contains it (normalized, component-wise)", () => {
    for (const [state, root] of [
      ["/var/lib/felhom-agent", "/var/lib/felhom-agent/bootstrap"], // the finding's layout
      ["/var/lib/felhom-agent", "/var/lib/felhom-agent"],
      ["/var/lib/felhom-agent/", "/var/lib/felhom-agent/bootstrap"],
      ["/var/lib//felhom-agent/../felhom-agent/.", "/var/lib/felhom-agent/x/bootstrap"],
      ["/srv/boot/state", "/srv/boot"], // the state dir inside the tree
      ["/", "/srv/boot"]
    ] as const) {
      const e = refused(state, root)
      expect(e.key).toBe("privileged.bootstrap_root")
      expect(e.message).toContain("state_dir")
    }
  })

  it("accepts trees that only share a string prefix with state_dir", () => {
    for (const [state, root] of [
      ["/var/lib/felhom-agent", "/var/lib/felhom-agent-root/bootstrap"],
      ["/var/lib/felhom-agent-root", "/var/lib/felhom-agent"],
      ["/srv/state", "/etc/felhom-agent/bootstrap"]
    ] as const) {
      const r = decode({ state_dir: state, privileged: { bootstrap_root: root } })
      expect(Either.isRight(r), `${state} / ${root}`).toBe(true)
    }
  })

  it("refuses a bootstrap_root that is not canonical or that sudoers could not name", () => {
    for (const root of ["/", "relative/boot", "/srv/../boot", "/srv//boot", "/srv/boot/", "/srv/./boot", "/srv/bo ot",
      "/srv/boot,mp=/x", "/srv/.boot", "/srv/-boot"]) {
      const r = decode({ privileged: { bootstrap_root: root } })
      if (Either.isRight(r)) throw new Error(`accepted bootstrap_root=${root}`)
      expect(r.left.key).toBe("privileged.bootstrap_root")
    }
  })
})

// ---------------------------------------------------------------------------------------------

describe.skipIf(!isRoot)("finding 7: the on-disk check before pct runs (needs root)", () => {
  it.live("a well-formed root-owned tree runs pct (below the host's sticky temp dir)", () => {
    const t = tree("101")
    return expectRuns(t.root, join(t.root, "101"))
  })

  it.live("the rename attack: a tree below a directory the service user owns is refused, before and after the swap", () => {
    const t = tree()
    // The finding's layout: <state> owned by the service user, a root-owned bootstrap/ in it.
    const state = join(t.base, "state")
    const boot = join(state, "bootstrap")
    mkdirSync(join(boot, "101"), { recursive: true })
    for (const d of [state, boot, join(boot, "101")]) chmodSync(d, 0o755)
    chownSync(state, SERVICE_UID, SERVICE_UID)
    return Effect.gen(function*() {
      // Refused before any swap: the owner of <state> can swap it at any moment, even after pct
      // ran (the source is resolved again at every guest start).
      yield* expectRefused(boot, join(boot, "101"), { component: state, why: "NotRootOwned" })

      // The attack, run as the service user: rename the root-owned tree away, bootstrap -> /.
      const attack = asServiceUser(`mv ${boot} ${boot}.orig && ln -s / ${boot}`)
      expect(attack.status, attack.stderr).toBe(0)
      expect(lstatSync(boot).isSymbolicLink()).toBe(true)
      yield* expectRefused(boot, join(boot, "etc"), { component: state, why: "NotRootOwned" })

      // Even were <state> root-owned again, the planted symlink itself is refused.
      chownSync(state, 0, 0)
      yield* expectRefused(boot, join(boot, "etc"), { component: boot, why: "Symlink" })
    })
  })

  it.live("the same attack on the root-owned tree fails: the service user cannot rename or plant anything in it", () => {
    const t = tree("101")
    const leaf = join(t.root, "101")
    const r1 = asServiceUser(`mv ${t.root} ${t.root}.orig`)
    const r2 = asServiceUser(`mv ${leaf} ${leaf}.orig`)
    const r3 = asServiceUser(`ln -s / ${join(t.root, "102")}`)
    expect([r1.status, r2.status, r3.status].every((s) => s !== 0)).toBe(true)
    expect(lstatSync(t.root).isDirectory() && lstatSync(leaf).isDirectory()).toBe(true)
    return expectRuns(t.root, leaf)
  })

  it.live("a symlink component is refused (bootstrap -> /, and a per-guest dir -> /etc)", () => {
    const t = tree()
    const linkRoot = join(t.base, "linked")
    symlinkSync("/", linkRoot)
    const leaf = join(t.root, "101")
    symlinkSync("/etc", leaf)
    // A symlink owned by the service user, where the walk reaches it first.
    const userLink = join(t.root, "102")
    symlinkSync("/", userLink)
    lchownSync(userLink, SERVICE_UID, SERVICE_UID)
    return Effect.gen(function*() {
      yield* expectRefused(linkRoot, join(linkRoot, "etc"), { component: linkRoot, why: "Symlink" })
      yield* expectRefused(t.root, leaf, { component: leaf, why: "Symlink" })
      yield* expectRefused(t.root, join(userLink, "etc"), { component: userLink, why: "Symlink" })
    })
  })

  it.live("a component owned by a non-root uid is refused (the per-guest dir, the root, an ancestor)", () => {
    const t = tree("101", "102")
    chownSync(join(t.root, "101"), SERVICE_UID, SERVICE_UID)
    return Effect.gen(function*() {
      yield* expectRefused(t.root, join(t.root, "101"), { component: join(t.root, "101"), why: "NotRootOwned" })
      chownSync(t.root, SERVICE_UID, 0)
      yield* expectRefused(t.root, join(t.root, "102"), { component: t.root, why: "NotRootOwned" })
      chownSync(t.root, 0, 0)
      // A sticky, world-writable ancestor is allowed only when root owns it (like /tmp).
      chownSync(t.base, SERVICE_UID, SERVICE_UID)
      chmodSync(t.base, 0o1777)
      yield* expectRefused(t.root, join(t.root, "102"), { component: t.base, why: "NotRootOwned" })
      chownSync(t.base, 0, 0)
      yield* expectRuns(t.root, join(t.root, "102"))
    })
  })

  it.live("a group- or other-writable component is refused (sticky included, at or below the root)", () => {
    const t = tree("101")
    const leaf = join(t.root, "101")
    const writable = (path: string, mode: number) =>
      Effect.gen(function*() {
        chmodSync(path, mode)
        yield* expectRefused(t.root, leaf, { component: path, why: "GroupOrOtherWritable" })
        chmodSync(path, 0o755)
      })
    return Effect.gen(function*() {
      yield* writable(leaf, 0o775)
      yield* writable(leaf, 0o757)
      yield* writable(t.root, 0o775)
      yield* writable(t.root, 0o1777)
      // above the root, without the sticky bit
      yield* writable(t.base, 0o777)
      yield* expectRuns(t.root, leaf)
    })
  })

  it.live("a missing component or a file is refused", () => {
    const t = tree()
    writeFileSync(join(t.root, "file"), "")
    return Effect.gen(function*() {
      yield* expectRefused(t.root, join(t.root, "101"), { component: join(t.root, "101"), why: "Missing" })
      yield* expectRefused(t.root, join(t.root, "file"), { component: join(t.root, "file"), why: "NotADirectory" })
      yield* expectRefused(t.root, join(t.root, "file", "x"), { component: join(t.root, "file"), why: "NotADirectory" })
    })
  })
})

// ---------------------------------------------------------------------------------------------
// Properties of the validator: nothing outside the root validates, whatever the string.

const isCanonicalUnder = (root: string, p: string): boolean => {
  const rel = posix.relative(root, p)
  return p.startsWith(`${root}/`) &&
    posix.normalize(p) === p &&
    !p.endsWith("/") &&
    !p.includes("//") &&
    p.split("/").every((c) => c !== "." && c !== "..") &&
    /^[A-Za-z0-9._/-]+$/.test(p) &&
    rel.length > 0 && !rel.startsWith("..") && !posix.isAbsolute(rel)
}

const SEGMENT_CHARS = "abcXYZ019._-".split("")
const segment = fc.array(fc.constantFrom(...SEGMENT_CHARS), { minLength: 1, maxLength: 8 }).map((cs) => cs.join(""))
const validSegment = segment.filter((s) => /^[A-Za-z0-9_]/.test(s))
const validRoot = fc.array(validSegment, { minLength: 1, maxLength: 4 }).map((ss) => `/${ss.join("/")}`)

/** Strings assembled from the pieces an attacker would try, around (and inside) the root. */
const hostileFor = (root: string) => {
  const token = fc.oneof(
    fc.constantFrom(
      "/", "//", ".", "..", "/..", "/../", "./", "101", "etc", ",", ",mp=/root", "=", ":", " ", "\t", "\n", "\0", "-",
      "~", "\\", "%2e%2e", "é", "\u202e", root, `${root}/`, `${root}-x`, posix.dirname(root), "/var/lib/felhom-agent",
      "/var/lib/felhom-agent/bootstrap", "bootstrap"
    ),
    segment,
    fc.string({ maxLength: 6 })
  )
  return fc.oneof(
    fc.array(token, { maxLength: 12 }).map((ts) => ts.join("")),
    fc.array(token, { maxLength: 6 }).map((ts) => `${root}/${ts.join("")}`),
    fc.string({ maxLength: 300 })
  )
}

const validates = (root: string, p: unknown) => Either.isRight(Schema.decodeUnknownEither(bootstrapHostPathUnder(root))(p))

describe("finding 7: the bind-source validator (properties)", () => {
  it("random strings validate only as canonical paths strictly below the default root", () => {
    fc.assert(
      fc.property(hostileFor(DEFAULT_BOOTSTRAP_ROOT), (p) => !validates(DEFAULT_BOOTSTRAP_ROOT, p) || isCanonicalUnder(DEFAULT_BOOTSTRAP_ROOT, p)),
      { numRuns: 5000 }
    )
  })

  it("for any root, random strings validate only strictly below it, never the root or its parent", () => {
    fc.assert(
      fc.property(validRoot.chain((root) => fc.tuple(fc.constant(root), hostileFor(root))), ([root, p]) => {
        if (!validates(root, p)) return true
        return isCanonicalUnder(root, p) && !validates(root, root) && !validates(root, posix.dirname(root))
      }),
      { numRuns: 3000 }
    )
  })

  it("every canonical path strictly below the root validates (the rule is not merely strict)", () => {
    fc.assert(
      fc.property(validRoot, fc.array(validSegment, { minLength: 1, maxLength: 5 }), (root, segs) => {
        const p = `${root}/${segs.join("/")}`
        return p.length > 255 || validates(root, p)
      }),
      { numRuns: 2000 }
    )
  })

  it("non-strings never validate", () => {
    for (const v of [undefined, null, 101, ["/var/lib/felhom-agent-root/bootstrap/101"], { toString: () => "x" }]) {
      expect(validates(DEFAULT_BOOTSTRAP_ROOT, v)).toBe(false)
    }
  })
})

