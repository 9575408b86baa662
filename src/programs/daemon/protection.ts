/**
 * The daemon's data-protection fibers (issue 10), forked beside the hub loop once the journal is
 * recovered: the backup scheduler with its retention pruning, the self-restore-tests, the
 * integrity verify, the storage manifest's reconcile, and the storage watchdog. Each reads the desired state the hub loop holds and mutates nothing
 * while the state store is unhealthy or recovery has not run; each logs its own failures and
 * goes on, so none of them can stop the others or the hub loop.
 */
import { Duration, Effect, Option, type Ref } from "effect"
import { AgentConfig } from "../../layers/Config.js"
import { protectionLoop } from "../protection/pass.js"
import { restoreTestLoop } from "../protection/restoreTest.js"
import { verifyLoop } from "../protection/verify.js"
import { storageReconcileLoop } from "../protection/storage.js"
import { ProtectionBoard } from "../protection/view.js"
import { storageWatchdog } from "../protection/watchdog.js"
import { startGolden } from "../golden/refresh.js"
import type { DaemonState } from "./loop.js"

export const startProtection = (state: Ref.Ref<DaemonState>) =>
  Effect.gen(function*() {
    const { file } = yield* AgentConfig
    const board = yield* ProtectionBoard
    const mayMutate = Effect.map(state.get, (s) => s.store.healthy && s.recovered)
    // the desired state only while changes are allowed: None stops every pass that would mutate
    const desired = Effect.map(state.get, (s) => (s.store.healthy && s.recovered ? s.desired : Option.none()))
    const every = Duration.seconds(file.protection.pass_interval_seconds)

    yield* Effect.forkScoped(protectionLoop({
      desired,
      mayMutate,
      // the desired state the pass ran on (it may have changed since)
      publish: (report, ranOn) => board.publish(ranOn, report)
    }))
    yield* Effect.forkScoped(restoreTestLoop(desired))
    yield* Effect.forkScoped(verifyLoop(desired))
    yield* Effect.forkScoped(storageReconcileLoop(Effect.map(desired, Option.map((d) => ({ storage: d.storage, policies: d.policies }))), every))
    // the watchdog only reads (PVE's active flags, the USB mounts); it runs even while the store is unhealthy
    yield* Effect.forkScoped(storageWatchdog(Duration.seconds(file.protection.watchdog_interval_seconds)))
    yield* Effect.logInfo("data protection started: backup scheduler, restore-tests, integrity verify, storage reconcile, storage watchdog")
    // the golden archive's refresh (issue 12): off without a `golden` block
    yield* startGolden(mayMutate)
  })
