/**
 * Effect cluster's runner health check (a cluster singleton pings every runner every
 * `QUICKIM_RUNNER_HEALTH_CHECK`; a runner found dead is marked unhealthy and its shards are
 * assigned to the others), with two changes for a node killed and started again on the same
 * address, as a supervisor does within seconds:
 *
 * - A verdict of dead waits until the runner's shard locks have expired (its heartbeat, written
 *   with every lock refresh, is `QUICKIM_SHARD_LOCK_EXPIRATION` old), or that long for a runner
 *   that still beats but does not answer. No other node could take its shards sooner anyway; a
 *   node back within that time keeps them instead of seeing them move to the others and back
 *   (in the chaos runs such double moves held sends up to 3.4 s after the node was back).
 * - It does not count when a process started on the address while the check ran: the check
 *   retries a failing ping for about 2.5 s, and its verdict about the dead process was written
 *   after the new one had registered, marking the new one unhealthy (sends then waited up to
 *   6.4 s). Each process writes its start into `quickim_nodes` before it joins the cluster
 *   (NodeAnnouncementLive). A new process that really does not answer is found by the next check.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as RunnerHealth from "effect/cluster/RunnerHealth"
import * as Runners from "effect/cluster/Runners"
import * as SqlClient from "effect/sql/SqlClient"
import { AppConfig } from "../Config.ts"

/** Effect cluster's `RunnerHealth` by ping, as above; needs `Runners` (their RPC clients) and the database. */
export const RunnerHealthCheckLive = Layer.effect(
  RunnerHealth.RunnerHealth,
  Effect.gen(function* () {
    const ping = yield* RunnerHealth.makePing
    const runners = yield* Runners.Runners
    const sql = yield* SqlClient.SqlClient
    const expiration = Duration.toMillis((yield* AppConfig).shardLockExpiration)
    /** When the newest process on `address` started (epoch ms; 0 when none reported). */
    const startedAt = (address: string) =>
      sql<{ ms: number | null }>`
        SELECT extract(epoch FROM max(started_at))::float8 * 1000 AS ms FROM quickim_nodes
        WHERE runner_address = ${address}`.pipe(
        Effect.map((rows) => Number(rows[0]?.ms ?? 0)),
        // Without the reports the verdict stands, as in Effect cluster's own check.
        Effect.orElseSucceed(() => 0)
      )
    /** How long ago the runner at `address` last beat (ms; Infinity when unknown). */
    const heartbeatAge = (address: string) =>
      sql<{ ms: number | null }>`
        SELECT extract(epoch FROM now() - last_heartbeat)::float8 * 1000 AS ms FROM cluster_runners
        WHERE address = ${address}`.pipe(
        Effect.map((rows) => rows[0]?.ms == null ? Infinity : Number(rows[0].ms)),
        Effect.orElseSucceed(() => Infinity)
      )
    return RunnerHealth.RunnerHealth.of({
      isAlive: (address) =>
        Effect.gen(function* () {
          const began = yield* Clock.currentTimeMillis
          if (yield* ping.isAlive(address)) return true
          const key = `${address.host}:${address.port}`
          const wait = Math.min(expiration, expiration - (yield* heartbeatAge(key)))
          if (wait > 0) yield* Effect.sleep(Duration.millis(wait))
          if ((yield* startedAt(key)) > began) return true
          return yield* runners.ping(address).pipe(Effect.timeout("1 second"), Effect.isSuccess)
        })
    })
  })
)
