/**
 * Which node holds an entity's shard, as the nodes' own reports say: a hint for batching, never
 * the authority. Nodes send many conversations' sends and many mailboxes' deliveries to one node
 * in one cluster message (NodeOutbox); the receiving node serves only what its shards really hold
 * (`Sharding.hasShardId`, the same check Effect cluster makes for an incoming request) and hands
 * back the rest, which then takes the ordinary entity message. A stale or missing route therefore
 * costs a second hop, never a wrong delivery.
 *
 * Each node writes the default-group shards it holds into its `quickim_nodes` report (every 2 s,
 * NodeStatus); every node reads the reports twice a second and keeps those of nodes whose runner
 * beats (RunnerWatch).
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as ShardId from "effect/cluster/ShardId"
import * as Sharding from "effect/cluster/Sharding"
import * as SqlClient from "effect/sql/SqlClient"
import { AppConfig } from "../Config.ts"
import { NodeIdentity } from "./NodeIdentity.ts"
import { RunnerWatch } from "./RunnerWatch.ts"

/** A runner whose heartbeat is older than this is not routed to (runners beat about once a second). */
const HEARTBEAT_FRESH_SECONDS = 4
/** A report older than this is not routed by (nodes report every 2 s). */
const REPORT_FRESH_SECONDS = 5
/** How often the reports are read: a relay to a process that died waits for the read that shows its successor. */
const READ_EVERY = "500 millis"
/** After a relay to a node failed, it is not routed to for this long: entity messages find the shard's new home. */
const AVOID_MILLIS = 10_000
/**
 * How often the shards held are looked at (`onShardsLost`): far quicker than a shard can leave and
 * come back (another node acquires it, then releases it, each through the shard locks).
 */
const SHARD_WATCH = "100 millis"

/** The default-group shards (Conversations and Mailboxes) this node holds now. */
export const heldShards = (sharding: Sharding.Sharding["Service"], shardsPerGroup: number) => {
  const held: Array<number> = []
  for (let i = 1; i <= shardsPerGroup; i++) {
    if (sharding.hasShardId(ShardId.make("default", i))) held.push(i)
  }
  return held
}

export class ShardRoutes extends Context.Service<ShardRoutes, {
  /**
   * The NodeInbox (runner address) of the other node that holds `entityId`'s shard, by the last
   * reports; undefined when it is this node, or unknown.
   */
  readonly nodeOf: (entityId: string) => string | undefined
  /** A relay to `inbox` failed: route nothing there until its reports say it is back. */
  readonly avoid: (inbox: string) => void
  /** The node at `inbox` was seen in the cluster and has left it (its runner stopped beating or was removed). */
  readonly gone: (inbox: string) => boolean
  /**
   * When the process that last reported from `inbox` started (epoch ms), or undefined before any
   * report. It moves on when a node comes back on the same runner address: a relay sent before
   * that went to a process that is dead now, however fresh the address's heartbeat looks.
   */
  readonly startedAt: (inbox: string) => number | undefined
  /** Whether this node holds `entityId`'s shard now (what Effect cluster checks for an incoming request). */
  readonly holds: (entityId: string) => boolean
  /** The default-group shard of `entityId`. */
  readonly shardOf: (entityId: string) => number
  /**
   * Calls `f` with the default-group shards this node held and no longer holds (a node joined, or
   * this one stops), checked every 100 ms; until the returned function is called. One node: never.
   */
  readonly onShardsLost: (f: (shards: ReadonlySet<number>) => void) => () => void
}>()("quick-im/cluster/ShardRoutes") {
  static readonly layerNoDeps = Layer.effect(
    ShardRoutes,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const sharding = yield* Sharding.Sharding
      const identity = yield* NodeIdentity
      const sql = yield* SqlClient.SqlClient
      const runners = yield* RunnerWatch
      const holds = (entityId: string) => sharding.hasShardId(sharding.getShardId(entityId as any, "default"))
      const shardOf = (entityId: string) => sharding.getShardId(entityId as any, "default").id
      if (Option.isNone(config.runnerPort)) {
        return ShardRoutes.of({
          nodeOf: () => undefined,
          avoid: () => {},
          gone: () => false,
          startedAt: () => undefined,
          holds,
          shardOf,
          onShardsLost: () => () => {}
        })
      }
      // Shards held at the last look, and who wants to hear of those this node stops holding.
      let held: ReadonlySet<number> = new Set()
      const lostListeners = new Set<(shards: ReadonlySet<number>) => void>()
      yield* Effect.sync(() => {
        const now = new Set(heldShards(sharding, config.shardsPerGroup))
        let lost: Set<number> | undefined = undefined
        for (const shard of held) if (!now.has(shard)) (lost ??= new Set()).add(shard)
        held = now
        if (lost !== undefined) { for (const f of lostListeners) f(lost) }
      }).pipe(Effect.repeat(Schedule.spaced(SHARD_WATCH)), Effect.forkScoped)
      let routes = new Map<number, string>()
      let started = new Map<string, number>()
      const avoided = new Map<string, number>()
      /** Runners seen beating: one that stops is gone. */
      const seen = new Set<string>()
      const live = (address: string) => (runners.ages().get(address) ?? Infinity) < HEARTBEAT_FRESH_SECONDS

      yield* Effect.gen(function* () {
        for (const address of runners.ages().keys()) if (live(address)) seen.add(address)
        const rows = yield* sql<{ runner_address: string; shard_ids: string; started_ms: number; fresh: boolean }>`
          SELECT runner_address, shard_ids, extract(epoch FROM started_at)::float8 * 1000 AS started_ms,
            updated_at > now() - make_interval(secs => ${REPORT_FRESH_SECONDS}) AS fresh
          FROM quickim_nodes WHERE runner_address IS NOT NULL ORDER BY updated_at`
        const now = Date.now()
        const next = new Map<number, string>()
        const processes = new Map<string, number>()
        // The newest process on each address, however long ago it reported (a new one may still be starting).
        for (const row of rows) {
          processes.set(row.runner_address, Math.max(processes.get(row.runner_address) ?? 0, Number(row.started_ms)))
        }
        // Newest report last: while a shard moves, the node that took it most recently wins. A dead
        // process's shards are not its successor's until the successor reports them.
        for (const row of rows) {
          if (!row.fresh || !live(row.runner_address)) continue
          if (Number(row.started_ms) < processes.get(row.runner_address)!) continue
          if (row.runner_address === identity.runner) continue
          const until = avoided.get(row.runner_address)
          if (until !== undefined) {
            if (until > now) continue
            avoided.delete(row.runner_address)
          }
          for (const id of row.shard_ids.split(",")) if (id !== "") next.set(Number(id), row.runner_address)
        }
        routes = next
        started = processes
      }).pipe(
        Effect.catchCause((cause) => Effect.logDebug("could not read shard routes", cause)),
        Effect.repeat(Schedule.spaced(READ_EVERY)),
        Effect.forkScoped
      )

      return ShardRoutes.of({
        nodeOf: (entityId) => {
          const shard = sharding.getShardId(entityId as any, "default")
          if (sharding.hasShardId(shard)) return undefined
          return routes.get(shard.id)
        },
        avoid: (inbox) => {
          avoided.set(inbox, Date.now() + AVOID_MILLIS)
          const next = new Map<number, string>()
          for (const [shard, node] of routes) if (node !== inbox) next.set(shard, node)
          routes = next
        },
        gone: (inbox) => seen.has(inbox) && !live(inbox),
        startedAt: (inbox) => started.get(inbox),
        holds,
        shardOf,
        onShardsLost: (f) => {
          const entry = (shards: ReadonlySet<number>) => f(shards)
          lostListeners.add(entry)
          return () => lostListeners.delete(entry)
        }
      })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(Layer.provide([NodeIdentity.layer, RunnerWatch.layer]))
}
