/**
 * The text of `quick-im cluster status` (Cli.ts): the cluster as `GET /inner/cluster` of one node
 * reports it (runners and their health, shards, live entities, push connections and relays per
 * node: RELAYS is sent/carried/handed back, see NodeLink).
 */
import type { ClusterView } from "../domain/ClusterView.ts"

const table = (rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n")
}

export const formatClusterView = (view: ClusterView) => {
  const runners = view.Runners.length === 0 ? "(none)" : table([
    ["RUNNER", "HEALTHY", "LAST HEARTBEAT"],
    ...view.Runners.map((r) => [r.Address, r.Healthy ? "yes" : "no", r.LastHeartbeat])
  ])
  const nodes = table([
    ["NODE", "RUNNER", "ALIVE", "SHARDS", "CONVERSATIONS", "MAILBOXES", "WS", "SSE", "POLL", "RELAYS", "REPORTED"],
    ...view.Nodes.map((n) => [
      n.Url,
      n.Runner ?? "-",
      n.Alive ? "yes" : "no",
      String(n.Shards),
      String(n.Conversations),
      String(n.Mailboxes),
      String(n.Connections.ws),
      String(n.Connections.sse),
      String(n.Connections.poll),
      n.Relays === undefined ? "-" : `${n.Relays.Sent}/${n.Relays.Carried}/${n.Relays.HandedBack}`,
      n.UpdatedAt
    ])
  ])
  return `mode: ${view.Mode}, ${view.ShardsPerGroup} shards per group\n\n${runners}\n\n${nodes}\n`
}
