/**
 * The runner health check (RunnerHealthCheckLive) pings a runner for about 2.5 s before it finds it
 * dead. A node killed and started again on the same address must not be marked unhealthy by a
 * verdict about the process that died, nor lose its shards to the others while its locks have not
 * even expired: they would go to the other nodes and come back seconds later. Real pings over the
 * runner transport to an address where nothing listens, Effect cluster's real runner table, and
 * the real `quickim_nodes` table where each process writes its start.
 */
import { NodeClusterSocket } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer } from "effect"
import { MessageStorage, RunnerAddress, RunnerHealth, Runners, ShardingConfig, SqlRunnerStorage } from "effect/cluster"
import { RpcSerialization } from "effect/rpc"
import { SqlClient } from "effect/sql"
import { RunnerHealthCheckLive } from "../src/cluster/RunnerHealthCheck.ts"
import { AppConfig } from "../src/Config.ts"
import { DatabaseLive } from "../src/storage/Database.ts"
import { freePort } from "./support/ports.ts"
import { settingsFor } from "./support/server.ts"

const TestLayer = RunnerHealthCheckLive.pipe(
  Layer.provide(Runners.layerRpc),
  Layer.provide(NodeClusterSocket.layerClientProtocol),
  Layer.provide(RpcSerialization.layerSchemaBinary()),
  Layer.provide(MessageStorage.layerNoop),
  // Creates Effect cluster's runner table, where the test writes heartbeats.
  Layer.provideMerge(Layer.orDie(SqlRunnerStorage.layer)),
  Layer.provide(ShardingConfig.layer()),
  Layer.provideMerge(DatabaseLive),
  Layer.provide(AppConfig.make(settingsFor("postgres")))
)

/** A process on `address` reports its start (as NodeAnnouncementLive does), `agoMs` before now. */
const announce = (address: string, agoMs: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`INSERT INTO quickim_nodes (node_id, runner_address, http_url, started_at)
        VALUES (${crypto.randomUUID()}, ${address}, 'http://127.0.0.1:1', now() - make_interval(secs => ${
      agoMs / 1000
    }))`
  })

/** The runner at `address` last beat `agoMs` before now (its shard locks were refreshed then). */
const beat = (address: string, agoMs: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`INSERT INTO cluster_runners (address, runner, healthy, last_heartbeat)
        VALUES (${address}, 'test', true, now() - make_interval(secs => ${agoMs / 1000}))`
  })

describe("runner health check", () => {
  it.live("a runner that does not answer and whose locks have expired is found dead", () =>
    Effect.gen(function* () {
      const port = yield* Effect.promise(freePort)
      const health = yield* RunnerHealth.RunnerHealth
      yield* announce(`127.0.0.1:${port}`, 60_000)
      yield* beat(`127.0.0.1:${port}`, 60_000)
      assert.isFalse(yield* health.isAlive(RunnerAddress.make("127.0.0.1", port)))
    }).pipe(Effect.provide(TestLayer)), 60_000)

  it.live("a process that started on the address while the check ran is not found dead", () =>
    Effect.gen(function* () {
      const port = yield* Effect.promise(freePort)
      const health = yield* RunnerHealth.RunnerHealth
      // The process the check is about, long running, then killed: nothing listens on its port.
      yield* announce(`127.0.0.1:${port}`, 60_000)
      const check = yield* health.isAlive(RunnerAddress.make("127.0.0.1", port)).pipe(Effect.forkChild)
      yield* Effect.sleep("500 millis")
      // Its successor starts on the same address while the pings still fail.
      yield* announce(`127.0.0.1:${port}`, 0)
      assert.isTrue(yield* Fiber.join(check))
    }).pipe(Effect.provide(TestLayer)), 60_000)

  it.live(
    "a runner is not found dead before its shard locks expire: a node back by then keeps its shards",
    () =>
      Effect.gen(function* () {
        const port = yield* Effect.promise(freePort)
        const health = yield* RunnerHealth.RunnerHealth
        // Killed just now: its last heartbeat (and lock refresh) is fresh, nothing answers its pings.
        yield* announce(`127.0.0.1:${port}`, 60_000)
        yield* beat(`127.0.0.1:${port}`, 0)
        const check = yield* health.isAlive(RunnerAddress.make("127.0.0.1", port)).pipe(Effect.forkChild)
        // After the pings have failed (about 2.5 s) and before the locks expire (5 s), a new process
        // starts on the address.
        yield* Effect.sleep("3500 millis")
        yield* announce(`127.0.0.1:${port}`, 0)
        assert.isTrue(yield* Fiber.join(check))
      }).pipe(Effect.provide(TestLayer)),
    60_000
  )
})
