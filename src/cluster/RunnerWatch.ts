/**
 * Tells this node's push connections when a runner leaves the cluster (killed, or stopped).
 *
 * A Conversation entity hands committed messages to Mailboxes after the commit; if its node dies
 * in between, those messages are in history but were never pushed. Every connection on the
 * surviving nodes therefore replays from its last MsgId when a runner leaves (see Feed), which
 * covers them with the same argument as a client's resume. In single-node mode nothing leaves.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as SqlClient from "effect/sql/SqlClient"
import { AppConfig } from "../Config.ts"

/** A runner whose heartbeat is older than this has left (runners beat about once a second). */
const HEARTBEAT_STALE_SECONDS = 5

export class RunnerWatch extends Context.Service<RunnerWatch, {
  /**
   * Calls `listener` whenever runners that were healthy are no longer, with their addresses;
   * returns the unsubscribe.
   */
  readonly onRunnerLeft: (listener: (left: ReadonlySet<string>) => void) => () => void
  /**
   * At the last read (once a second), the healthy runners that had beaten within
   * HEARTBEAT_STALE_SECONDS, with their heartbeat's age in seconds. ShardRoutes reads it too, so
   * the runner table is read once a second per node, not once per reader.
   */
  readonly ages: () => ReadonlyMap<string, number>
}>()("quick-im/cluster/RunnerWatch") {
  static readonly layer = Layer.effect(
    RunnerWatch,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const sql = yield* SqlClient.SqlClient
      const listeners = new Set<(left: ReadonlySet<string>) => void>()
      /** Healthy runners that beat within HEARTBEAT_STALE_SECONDS, with their heartbeat's age in seconds. */
      let ages = new Map<string, number>()
      if (Option.isSome(config.runnerPort)) {
        let known: ReadonlySet<string> | undefined = undefined
        // A killed runner is not always marked unhealthy soon (measured: still "healthy" 25 s after a
        // SIGKILL when the runner doing health checks was the one killed), but it stops beating.
        yield* sql<{ address: string; age: number }>`
          SELECT address, extract(epoch FROM now() - last_heartbeat)::float8 AS age FROM cluster_runners
          WHERE healthy AND last_heartbeat > now() - make_interval(secs => ${HEARTBEAT_STALE_SECONDS})`.pipe(
          Effect.map((rows) => {
            ages = new Map(rows.map((r) => [r.address, Number(r.age)]))
            const healthy = new Set(ages.keys())
            const left = new Set(known === undefined ? [] : [...known].filter((a) => !healthy.has(a)))
            known = healthy
            if (left.size > 0) {
              for (const listener of [...listeners]) listener(left)
            }
          }),
          Effect.catchCause((cause) => Effect.logDebug("could not read the cluster runners", cause)),
          Effect.repeat(Schedule.spaced("1 second")),
          Effect.forkScoped
        )
      }
      return RunnerWatch.of({
        onRunnerLeft: (listener) => {
          listeners.add(listener)
          return () => listeners.delete(listener)
        },
        ages: () => ages
      })
    })
  )
}
