/**
 * What every handler and task works with: the state, the simulator's scope (tasks are fibers
 * forked into it), seeded PRNGs, PVE's per-guest config flock and per-node vzdump lock, the task
 * runner, and permission helpers that fail with PVE's exact 403 texts.
 */
import { Clock, Duration, Effect, Fiber, Random, type Scope } from "effect"
import { die500, noSuchGuest, permDenied, PveApiError, TaskFailure } from "./errors.js"
import type { Params } from "./params.js"
import { tokenPrivileges, type TokenIdentity } from "./privileges.js"
import type { SimTaskType } from "./seed.js"
import { type GuestState, newTask, type NodeState, type SimState, type TaskState } from "./state.js"
import { taskSleep } from "./taskClock.js"

export interface SimRng {
  faults: Random.Random
  tasks: Random.Random
  macs: Random.Random
}

export interface SimEnv {
  readonly state: SimState
  readonly scope: Scope.Scope
  readonly rng: SimRng
  readonly flocks: Map<number, Effect.Semaphore>
  readonly vzdumpLocks: Map<string, Effect.Semaphore>
  readonly fibers: Map<string, Fiber.RuntimeFiber<void, never>>
  readonly requests: RequestLog
}

// ---------------------------------------------------------------------------------------------
// The request log: what a client sent, for tests that count the calls a program made

/** One authenticated API call as the simulator received it. */
export interface SimRequest {
  /** 1-based, counts every logged call (also those the bounded log no longer holds) */
  readonly seq: number
  readonly method: "GET" | "POST" | "PUT" | "DELETE"
  /** relative to /api2/json, as sent (path parameters in place) */
  readonly path: string
  /** body and query parameters with the path parameters, as strings */
  readonly params: Readonly<Record<string, string>>
  /** the handler ran (past injected faults, permission and parameter checks): it may have acted */
  handled: boolean
  /** the task the handler started, also when an injected 596 hid it from the client */
  upid: string | undefined
  /** the HTTP status answered; undefined while the call is in progress */
  status: number | undefined
}

export interface RequestLog {
  seq: number
  readonly entries: Array<SimRequest>
}

/** The log keeps the newest calls only, so a long-running simulator does not grow without bound. */
export const REQUEST_LOG_LIMIT = 20_000

export const makeRequestLog = (): RequestLog => ({ seq: 0, entries: [] })

export const logRequest = (
  log: RequestLog,
  r: { readonly method: SimRequest["method"]; readonly path: string; readonly params: Readonly<Record<string, string>> }
): SimRequest => {
  const entry: SimRequest = { seq: ++log.seq, ...r, handled: false, upid: undefined, status: undefined }
  log.entries.push(entry)
  if (log.entries.length > REQUEST_LOG_LIMIT) log.entries.splice(0, log.entries.length - REQUEST_LOG_LIMIT)
  return entry
}

export const makeRng = (seed: number): SimRng => ({
  faults: Random.make(`faults:${seed}`),
  tasks: Random.make(`tasks:${seed}`),
  macs: Random.make(`macs:${seed}`)
})

/** One API call, after authentication and parameter validation. */
export interface RequestCtx {
  readonly env: SimEnv
  readonly token: TokenIdentity
  readonly params: Params
  readonly nowMs: number
}

// ---------------------------------------------------------------------------------------------
// Permissions

export const hasPriv = (env: SimEnv, token: TokenIdentity, path: string, priv: string): boolean =>
  tokenPrivileges(env.state.acl, token, path).has(priv)

/** `$rpcenv->check`: all privileges required, the first missing one is named. */
export const check = (ctx: RequestCtx, path: string, privs: ReadonlyArray<string>): Effect.Effect<void, PveApiError> =>
  Effect.suspend(() => {
    const have = tokenPrivileges(ctx.env.state.acl, ctx.token, path)
    for (const p of privs) if (!have.has(p)) return Effect.fail(permDenied(path, [p]))
    return Effect.void
  })

/** `$rpcenv->check_any`: one of the privileges suffices; the message lists them all. */
export const checkAny = (ctx: RequestCtx, path: string, privs: ReadonlyArray<string>): Effect.Effect<void, PveApiError> =>
  Effect.suspend(() => {
    const have = tokenPrivileges(ctx.env.state.acl, ctx.token, path)
    return privs.some((p) => have.has(p)) ? Effect.void : Effect.fail(permDenied(path, privs))
  })

// ---------------------------------------------------------------------------------------------
// Lookups with PVE's error texts

export const requireNode = (env: SimEnv, node: string): Effect.Effect<NodeState, PveApiError> => {
  const n = env.state.nodes.get(node)
  return n === undefined
    ? Effect.fail(die500(`hostname lookup '${node}' failed - failed to get address info for: ${node}: Name or service not known`))
    : Effect.succeed(n)
}

export const findGuest = (env: SimEnv, node: string, vmid: number): GuestState | undefined => {
  const g = env.state.guests.get(vmid)
  return g !== undefined && g.node === node ? g : undefined
}

/** The guest named by the `node` and `vmid` parameters, or PVE's missing-config 500. */
export const requireGuest = (ctx: RequestCtx): Effect.Effect<GuestState, PveApiError> =>
  Effect.flatMap(requireNode(ctx.env, String(ctx.params["node"])), (n) => {
    const vmid = Number(ctx.params["vmid"])
    const g = findGuest(ctx.env, n.node, vmid)
    return g === undefined ? Effect.fail(noSuchGuest(n.node, vmid)) : Effect.succeed(g)
  })

export const lockedError = (lock: string): PveApiError => die500(`CT is locked (${lock})`)

export const guestLock = (g: GuestState): string | undefined => {
  const lock = g.config["lock"]
  return typeof lock === "string" ? lock : undefined
}

// ---------------------------------------------------------------------------------------------
// The config flock (`lock_config`, 10 s wait) and the node-wide vzdump lock

export const flockTimeoutText = (vmid: number): string => `can't lock file '/run/lock/lxc/pve-config-${vmid}.lock' - got timeout`

const semaphoreFor = <K>(map: Map<K, Effect.Semaphore>, key: K): Effect.Semaphore => {
  let sem = map.get(key)
  if (sem === undefined) {
    sem = Effect.unsafeMakeSemaphore(1)
    map.set(key, sem)
  }
  return sem
}

/** Takes the guest's config flock, waiting at most 10 s (Clock time) like PVE's lock_config. */
export const takeFlock = <E>(env: SimEnv, vmid: number, onTimeout: () => E): Effect.Effect<Effect.Effect<void>, E> =>
  Effect.suspend(() => {
    const sem = semaphoreFor(env.flocks, vmid)
    return sem.take(1).pipe(
      Effect.timeoutFail({ duration: Duration.seconds(10), onTimeout }),
      Effect.as(sem.release(1).pipe(Effect.asVoid))
    )
  })

export const withFlock = <A, E, R, E2>(
  env: SimEnv,
  vmid: number,
  onTimeout: () => E2,
  body: Effect.Effect<A, E, R>
): Effect.Effect<A, E | E2, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(restore(takeFlock(env, vmid, onTimeout)), (release) => Effect.ensuring(restore(body), release))
  )

export const vzdumpLock = (env: SimEnv, node: string): Effect.Semaphore => semaphoreFor(env.vzdumpLocks, node)

// ---------------------------------------------------------------------------------------------
// Tasks

export interface TaskCtx {
  readonly env: SimEnv
  readonly task: TaskState
  /** the fault injector decided this task fails (each type fails in its own realistic way) */
  readonly injectFailure: boolean
  readonly log: (line: string) => Effect.Effect<void>
  readonly warn: (line: string) => Effect.Effect<void>
  /** sleeps this share of the type's configured duration */
  readonly step: (share: number) => Effect.Effect<void>
  readonly now: Effect.Effect<number>
}

export const taskFailure = (message: string): TaskFailure => new TaskFailure({ message })

const drawBelow = (rng: Random.Random, rate: number): Effect.Effect<boolean> =>
  Effect.map(rng.next, (r) => rate > 0 && r < rate)

/**
 * Registers a task (UPID from the counter and Clock), forks its body into the simulator scope and
 * returns the UPID at once. The body's failure text becomes `TASK ERROR: ...` and the exitstatus.
 */
export const startTask = (
  env: SimEnv,
  args: {
    readonly node: NodeState
    readonly type: SimTaskType
    readonly id: string
    readonly token: TokenIdentity
    readonly body: (t: TaskCtx) => Effect.Effect<void, TaskFailure>
    /** runs if the task is killed (DELETE .../tasks/{upid}, overrule-shutdown) */
    readonly onKill?: Effect.Effect<void>
  }
): Effect.Effect<string> =>
  Effect.gen(function*() {
    const nowMs = yield* Clock.currentTimeMillis
    const drawn = yield* drawBelow(env.rng.tasks, env.state.faults.task_failure_rate)
    const injectFailure = drawn || env.state.faults.task_failure_types.includes(args.type)
    const task = newTask(env.state, { node: args.node, type: args.type, id: args.id, token: args.token, nowMs })
    let warnings = 0
    const duration = env.state.durations[args.type]
    const ctx: TaskCtx = {
      env,
      task,
      injectFailure,
      log: (line) => Effect.sync(() => void task.log.push(line)),
      warn: (line) =>
        Effect.sync(() => {
          warnings++
          task.log.push(`WARN: ${line}`)
        }),
      step: (share) => taskSleep(env, Math.max(0, Math.round(duration * share))),
      now: Clock.currentTimeMillis
    }
    const finish = (exit: { readonly ok: true } | { readonly ok: false; readonly message: string }) =>
      Effect.flatMap(Clock.currentTimeMillis, (endMs) =>
        Effect.sync(() => {
          if (exit.ok) {
            task.log.push(warnings > 0 ? `TASK WARNINGS: ${warnings}` : "TASK OK")
            task.exitstatus = warnings > 0 ? `WARNINGS: ${warnings}` : "OK"
          } else {
            let text = exit.message.replace(/\n+$/, "").replace(/\n/g, " ")
            if (env.state.faults.echo_headers.includes("task")) {
              // faults.echo_headers: the starting request's header, as the task would have seen it
              const secret = env.state.tokens.get(args.token.tokenid)?.secret ?? ""
              const header = `Authorization: PVEAPIToken=${args.token.tokenid}=${secret}`
              task.log.push(`request headers: ${header}`)
              text = `${text} (request: ${header})`
            }
            task.log.push(`TASK ERROR: ${text}`)
            task.exitstatus = text
          }
          task.status = "stopped"
          task.endtime = Math.floor(endMs / 1000)
          env.fibers.delete(task.upid)
        })
      )
    const run = args.body(ctx).pipe(
      Effect.matchEffect({
        onSuccess: () =>
          Effect.zipRight(
            env.state.faults.task_warning_types.includes(args.type) && warnings === 0
              ? ctx.warn("tar: ./var/log/syslog: file changed as we read it")
              : Effect.void,
            finish({ ok: true })
          ),
        onFailure: (e) => finish({ ok: false, message: e.message })
      }),
      Effect.onInterrupt(() =>
        Effect.zipRight(
          args.onKill ?? Effect.void,
          finish({ ok: false, message: args.type === "vzdump" ? "interrupted by signal" : "received interrupt" })
        )
      )
    )
    const fiber = yield* Effect.forkIn(run, env.scope)
    env.fibers.set(task.upid, fiber)
    return task.upid
  })

/** Random locally administered MAC with Proxmox's OUI prefix (BC:24:11), as PVE generates them. */
export const randomMac = (env: SimEnv): Effect.Effect<string> =>
  Effect.map(
    Effect.all([env.rng.macs.nextIntBetween(0, 256), env.rng.macs.nextIntBetween(0, 256), env.rng.macs.nextIntBetween(0, 256)]),
    (bytes) => ["BC", "24", "11", ...bytes.map((b) => b.toString(16).toUpperCase().padStart(2, "0"))].join(":")
  )

/** Reads a validated param with its type. */
export const pStr = (p: Params, k: string): string | undefined => {
  const v = p[k]
  return v === undefined ? undefined : String(v)
}
export const pNum = (p: Params, k: string): number | undefined => {
  const v = p[k]
  return v === undefined ? undefined : Number(v)
}
export const pBool = (p: Params, k: string): boolean => p[k] === 1
