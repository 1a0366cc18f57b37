/**
 * `quick-im cluster status [--url URL]`: prints the cluster as `GET /inner/cluster` of one node
 * reports it (runners and their health, shards, live entities, push connections and relays per
 * node: RELAYS is sent/carried/handed back, see NodeOutbox).
 * The node must accept this machine's address for inner endpoints; QUICKIM_ADMIN_KEY is sent
 * when set.
 */
import { ADMIN_KEY_HEADER } from "../api/Security.ts"

interface View {
  readonly Mode: string
  readonly ShardsPerGroup: number
  readonly Runners: ReadonlyArray<{ Address: string; Healthy: boolean; LastHeartbeat: string }>
  readonly Nodes: ReadonlyArray<{
    Runner: string | null
    Url: string
    Alive: boolean
    Shards: number
    Conversations: number
    Mailboxes: number
    Connections: { ws: number; sse: number; poll: number }
    Relays?: { Sent: number; Carried: number; HandedBack: number }
    UpdatedAt: string
  }>
}

const table = (rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n")
}

export const formatClusterView = (view: View) => {
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

/** Runs the command; returns the process exit code. */
export const clusterStatus = async (args: ReadonlyArray<string>): Promise<number> => {
  if (args[0] !== "status" || args.includes("--help")) {
    console.log(
      "usage: quick-im cluster status [--url http://host:port]\n\n"
        + "Shows runners, shard assignments, live entities and push connections per node.\n"
        + "Default URL: http://127.0.0.1:$PORT (8080)."
    )
    return args.includes("--help") ? 0 : 2
  }
  const at = args.indexOf("--url")
  const url = at >= 0 ? args[at + 1] : `http://127.0.0.1:${process.env.PORT ?? 8080}`
  try {
    const key = process.env.QUICKIM_ADMIN_KEY
    const res = await fetch(`${url}/inner/cluster`, {
      headers: key ? { [ADMIN_KEY_HEADER]: key } : {},
      signal: AbortSignal.timeout(10_000)
    })
    const body = await res.json() as { code: number; error?: string; data?: View }
    if (body.code !== 0 || body.data === undefined) {
      console.error(`${url} refused: ${body.error ?? `code ${body.code}`}`)
      return 1
    }
    process.stdout.write(formatClusterView(body.data))
    return 0
  } catch (e) {
    console.error(`could not reach ${url}: ${e instanceof Error ? e.message : String(e)}`)
    return 1
  }
}
