/**
 * What each node reports about itself, and the cluster view built from those reports.
 *
 * Every node writes one row of `quickim_nodes` every 2 s (shards held, active entities, open push
 * connections; the list of shards also routes batched relays, see ShardRoutes) and deletes it when
 * it stops; runners and their health come from Effect cluster's own `cluster_runners` table. So any
 * node answers `GET /inner/cluster` for all of them with one query each, and no node has to call
 * another.
 *
 * The retention job (a cluster singleton: one node runs it) deletes processed cluster messages and
 * their replies older than `QUICKIM_CLUSTER_RETENTION`, and reports of nodes gone that long.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as MachineId from "effect/cluster/MachineId"
import * as Sharding from "effect/cluster/Sharding"
import * as Snowflake from "effect/cluster/Snowflake"
import * as SqlClient from "effect/sql/SqlClient"
import * as HttpServer from "effect/http/HttpServer"
import { AppConfig, type AppSettings } from "../Config.ts"
import type { ClusterView } from "../domain/ClusterView.ts"
import { Telemetry } from "../observability/Telemetry.ts"
import { NodeIdentity } from "./NodeIdentity.ts"
import { heldShards } from "./ShardRoutes.ts"

/** A report older than this marks its node as not alive. */
const STALE_AFTER_SECONDS = 10
const REPORT_EVERY = Duration.seconds(2)

const iso = (value: unknown) => value instanceof Date ? value.toISOString() : String(value)

const runnerOf = (config: AppSettings) =>
  Option.match(config.runnerPort, { onNone: () => null, onSome: (port) => `${config.runnerHost}:${port}` })

/** The URL this node serves on, given the port it listens on. */
const urlOf = (config: AppSettings, port: number) => {
  const host = config.host === "0.0.0.0" || config.host === "::" ? config.runnerHost : config.host
  return config.publicUrl ?? `http://${host}:${port}`
}

export class NodeStatus extends Context.Service<NodeStatus, {
  /** The cluster as the nodes' reports and Effect cluster's runner table show it. */
  readonly view: Effect.Effect<ClusterView, unknown>
}>()("quick-im/cluster/NodeStatus") {
  static readonly layerNoDeps = Layer.effect(
    NodeStatus,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const identity = yield* NodeIdentity
      const sql = yield* SqlClient.SqlClient
      const runner = runnerOf(config)

      const view = Effect.gen(function* () {
        const runners = yield* sql<{ address: string; healthy: boolean; last_heartbeat: unknown }>`
          SELECT address, healthy, last_heartbeat FROM cluster_runners ORDER BY address`.pipe(
          // A node that never ran a multi-node runner has no such table yet.
          Effect.orElseSucceed(() => [])
        )
        const nodes = yield* sql<{
          node_id: string
          runner_address: string | null
          http_url: string
          shards: number
          conversations: number
          mailboxes: number
          ws: number
          sse: number
          poll: number
          relays: string | number
          relayed: string | number
          handed_back: string | number
          started_at: unknown
          updated_at: unknown
          alive: boolean
        }>`SELECT *, updated_at > now() - make_interval(secs => ${STALE_AFTER_SECONDS}) AS alive
          FROM quickim_nodes ORDER BY runner_address NULLS FIRST, http_url`
        return {
          Mode: runner === null ? "single" as const : "cluster" as const,
          Self: identity.nodeId,
          ShardsPerGroup: config.shardsPerGroup,
          Runners: runners.map((r) => ({
            Address: r.address,
            Healthy: r.healthy,
            LastHeartbeat: iso(r.last_heartbeat)
          })),
          Nodes: nodes.map((n) => ({
            NodeId: n.node_id,
            Runner: n.runner_address,
            Url: n.http_url,
            Alive: n.alive,
            Shards: n.shards,
            Conversations: n.conversations,
            Mailboxes: n.mailboxes,
            Connections: { ws: n.ws, sse: n.sse, poll: n.poll },
            Relays: { Sent: Number(n.relays), Carried: Number(n.relayed), HandedBack: Number(n.handed_back) },
            StartedAt: iso(n.started_at),
            UpdatedAt: iso(n.updated_at)
          }))
        }
      })

      return NodeStatus.of({ view })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(Layer.provide(NodeIdentity.layer))
}

/** Conversation entities active on this node, and the sessions' mailboxes here (with their entity or without). */
const activeEntities = (sharding: Sharding.Sharding["Service"], active: Telemetry["Service"]["active"]) =>
  Effect.map(sharding.activeEntityCount, (entities) => ({
    conversations: Math.max(0, entities - active.mailboxEntities - active.inboxes),
    mailboxes: active.mailboxes
  }))

/**
 * Multi-node mode: this process's row of `quickim_nodes`, written as soon as the database is up,
 * before the runner joins the cluster (App.ts puts it below ClusterLive), with no shards and the
 * process's start time. A node killed and started again on the same runner address never looks
 * gone, so relays other nodes sent to the dead process are given up only when they read that a
 * newer process reports from the address (relayWatchdog); the first full report comes only once
 * the node serves HTTP, which in the chaos run was up to 2.7 s later than this row. In every mode
 * this layer deletes the node's row when it stops.
 */
export const NodeAnnouncementLive = Layer.effectDiscard(Effect.gen(function* () {
  const config = yield* AppConfig
  const identity = yield* NodeIdentity
  const sql = yield* SqlClient.SqlClient
  const runner = runnerOf(config)
  // This node's row goes when the node stops, in every mode: released after the reporter above has
  // stopped, so no report in flight writes it again.
  yield* Effect.addFinalizer(() =>
    sql`DELETE FROM quickim_nodes WHERE node_id = ${identity.nodeId}`.pipe(Effect.ignore)
  )
  if (runner === null) return
  yield* sql`INSERT INTO quickim_nodes (node_id, runner_address, http_url, started_at)
        VALUES (${identity.nodeId}, ${runner}, ${urlOf(config, config.port)}, to_timestamp(${
    identity.startedAt / 1000
  }))
        ON CONFLICT (node_id) DO NOTHING`.pipe(
    Effect.catchCause((cause) => Effect.logWarning("could not announce this node", cause))
  )
}))

/**
 * This node's report every 2 s, and the retention singleton. It needs the HTTP server (the URL
 * it really serves on), so App.ts puts it above the gateway.
 */
export const NodeReporterLive = Layer.effectDiscard(Effect.gen(function* () {
  const config = yield* AppConfig
  const sharding = yield* Sharding.Sharding
  const identity = yield* NodeIdentity
  const telemetry = yield* Telemetry
  const { connections: open, relays } = telemetry
  const sql = yield* SqlClient.SqlClient
  const bound = (yield* HttpServer.HttpServer).address
  const runner = runnerOf(config)
  const url = urlOf(config, "port" in bound ? bound.port : config.port)

  const report = Effect.gen(function* () {
    const held = heldShards(sharding, config.shardsPerGroup)
    const shards = held.length
    const shardIds = held.join(",")
    const { conversations, mailboxes } = yield* activeEntities(sharding, telemetry.active)
    yield* sql`INSERT INTO quickim_nodes (node_id, runner_address, http_url, shards, shard_ids, conversations, mailboxes, ws, sse, poll,
            relays, relayed, handed_back, started_at)
          VALUES (${identity.nodeId}, ${runner}, ${url}, ${shards}, ${shardIds}, ${conversations}, ${mailboxes},
            ${open.ws}, ${open.sse}, ${open.poll},
            ${relays.sent}, ${relays.carried}, ${relays.handedBack}, to_timestamp(${identity.startedAt / 1000}))
          ON CONFLICT (node_id) DO UPDATE SET http_url = EXCLUDED.http_url, shards = EXCLUDED.shards, shard_ids = EXCLUDED.shard_ids,
            conversations = EXCLUDED.conversations, mailboxes = EXCLUDED.mailboxes, ws = EXCLUDED.ws, sse = EXCLUDED.sse,
            poll = EXCLUDED.poll, relays = EXCLUDED.relays, relayed = EXCLUDED.relayed,
            handed_back = EXCLUDED.handed_back, updated_at = now()`
  }).pipe(Effect.catchCause((cause) => Effect.logWarning("could not report node status", cause)))

  // Its row is deleted when the node stops by NodeAnnouncementLive, below this layer.
  yield* report.pipe(Effect.repeat(Schedule.spaced(REPORT_EVERY)), Effect.forkScoped)

  const retain = Effect.gen(function* () {
    const now = yield* Effect.clockWith((clock) => clock.currentTimeMillis)
    const cutoff = Snowflake.make({
      timestamp: Math.max(Snowflake.constEpochMillis, now - Duration.toMillis(config.clusterRetention)),
      machineId: MachineId.make(0),
      sequence: 0
    }).toString()
    const seconds = Math.ceil(Duration.toSeconds(config.clusterRetention))
    yield* sql`DELETE FROM cluster_replies WHERE request_id IN
          (SELECT id FROM cluster_messages WHERE processed AND id < ${cutoff}::bigint)`
    yield* sql`DELETE FROM cluster_messages WHERE processed AND id < ${cutoff}::bigint`
    yield* sql`DELETE FROM quickim_nodes WHERE updated_at < now() - make_interval(secs => ${seconds})`
  })

  yield* sharding.registerSingleton(
    "quick-im/retention",
    retain.pipe(
      Effect.catchCause((cause) => Effect.logWarning("cluster retention failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.min(Duration.minutes(1), config.clusterRetention))),
      Effect.asVoid
    )
  )
}))
