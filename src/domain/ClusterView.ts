/**
 * The cluster as `GET /inner/cluster` shows it: Effect cluster's runners and their health, and
 * each node's own report (shards, live entities, push connections, relays). Declared once: the
 * contract (Api.ts), the node that builds it (NodeStatus) and `quick-im cluster status` use it.
 */
import * as Schema from "effect/Schema"

export const RunnerView = Schema.Struct({
  Address: Schema.String,
  Healthy: Schema.Boolean,
  LastHeartbeat: Schema.String
})

export const NodeView = Schema.Struct({
  NodeId: Schema.String,
  Runner: Schema.NullOr(Schema.String),
  Url: Schema.String,
  Alive: Schema.Boolean,
  Shards: Schema.Number,
  Conversations: Schema.Number,
  Mailboxes: Schema.Number,
  /** Open push connections (poll: requests waiting). */
  Connections: Schema.Struct({ ws: Schema.Number, sse: Schema.Number, poll: Schema.Number }),
  /** Batched relays to other nodes since start: sent, items carried, items handed back to go as entity messages. */
  Relays: Schema.Struct({ Sent: Schema.Number, Carried: Schema.Number, HandedBack: Schema.Number }),
  StartedAt: Schema.String,
  UpdatedAt: Schema.String
})

export const ClusterView = Schema.Struct({
  Mode: Schema.Literals(["single", "cluster"]),
  Self: Schema.String,
  ShardsPerGroup: Schema.Number,
  Runners: Schema.Array(RunnerView),
  Nodes: Schema.Array(NodeView)
})
export type ClusterView = typeof ClusterView.Type
