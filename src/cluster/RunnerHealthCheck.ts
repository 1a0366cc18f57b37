/**
 * Effect cluster's runner health check (a cluster singleton pings every runner every
 * `QUICKIM_RUNNER_HEALTH_CHECK`; a runner found dead is marked unhealthy and loses its shards),
 * except that a verdict of dead does not count for a process that started on the runner's address
 * while the check ran.
 *
 * Why: the check retries a failing ping for about 2.5 s. A node killed and started again on the
 * same address within that time registers (healthy) before the verdict about the dead process is
 * written, which then marks the new process unhealthy. In the chaos run its shards went to the
 * other nodes and came back 2.5 s later, and sends waited for both moves (up to 6.4 s after the
 * node was back). Each process writes its start into `quickim_nodes` before it joins the cluster
 * (NodeAnnouncementLive), so the check can tell. A new process that is really unreachable is found
 * by the next check.
 */
import { Clock, Effect, Layer } from "effect"
import { RunnerHealth } from "effect/cluster"
import { SqlClient } from "effect/sql"

/** Effect cluster's `RunnerHealth` by ping, as above; needs `Runners` (their RPC clients) and the database. */
export const RunnerHealthCheckLive = Layer.effect(
  RunnerHealth.RunnerHealth,
  Effect.gen(function* () {
    const ping = yield* RunnerHealth.makePing
    const sql = yield* SqlClient.SqlClient
    /** When the newest process on `address` started (epoch ms; 0 when none reported). */
    const startedAt = (address: string) =>
      sql<{ ms: number | null }>`
          SELECT extract(epoch FROM max(started_at))::float8 * 1000 AS ms FROM quickim_nodes
          WHERE runner_address = ${address}`.pipe(
        Effect.map((rows) => Number(rows[0]?.ms ?? 0)),
        // Without the reports the verdict stands, as in Effect cluster's own check.
        Effect.orElseSucceed(() => 0)
      )
    return RunnerHealth.RunnerHealth.of({
      isAlive: (address) =>
        Effect.gen(function* () {
          const began = yield* Clock.currentTimeMillis
          if (yield* ping.isAlive(address)) return true
          return (yield* startedAt(`${address.host}:${address.port}`)) > began
        })
    })
  })
)
