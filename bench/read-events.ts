/**
 * Multi-device read events across nodes (benchmark, not a test): three nodes on the machine's
 * PostgreSQL; session A holds a WebSocket on node 1 (platform 2) and an SSE stream on node 2
 * (platform 3), both with `events=read`; B, the other member, sends through node 0 and A marks each
 * message read through node 0 (platform 1). Measures, per mark, the time from sending `mark_read`
 * to the `read` event on each of A's other connections: p50, p99 and max over BENCH_MARKS marks
 * (default 200). Appends the figures to bench/RESULTS.md.
 *
 *   npm run bench:read-events
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { settled, startCluster } from "../test/support/cluster.ts"
import { connectLive } from "../test/support/push.ts"

const MARKS = Number(process.env.BENCH_MARKS ?? 200)
const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"
process.env.QUICKIM_TEST_DATABASE_URL ??= ADMIN.replace(/\/[^/]*$/, `/quickim_bench_events_${process.pid}`)

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]

const cluster = await startCluster(3, { QUICKIM_RATE_MARKS: "0" })
try {
  await settled(cluster, 3)
  const [n0, n1, n2] = cluster.nodes
  const tag = crypto.randomUUID().slice(0, 6)
  const a = `ev-${tag}-a`
  const b = `ev-${tag}-b`
  const conv = (await n0.post("/inner/create_conversation", { sessions: [a, b] })).body.data.ConversationId
  const ws = await connectLive("ws", n1.url, await n1.token(a, 2), "read")
  const sse = await connectLive("sse", n2.url, await n2.token(a, 3), "read")
  const aToken = await n0.token(a, 1)
  const bToken = await n0.token(b, 1)
  // Until both connections are registered: each has a message.
  for (let i = 0; i < 100 && (ws.messages.length === 0 || sse.messages.length === 0); i++) {
    await n0.post("/send_msg", { conversation_id: conv, content: "hello" }, bToken)
    await new Promise((r) => setTimeout(r, 100))
  }
  const latencies: Record<"ws" | "sse", Array<number>> = { ws: [], sse: [] }
  for (let i = 0; i < MARKS; i++) {
    const id = (await n0.post("/send_msg", { conversation_id: conv, content: `m${i}` }, bToken)).body.data.MsgID
    const t0 = performance.now()
    const seen = (client: typeof ws, into: Array<number>, name: string) =>
      client.untilEvent((e) => e.some((x) => x.ReadMsgId === id), 10_000).then(
        () => into.push(performance.now() - t0),
        (e) => {
          throw new Error(`mark ${i}: no read event on ${name} (${client.events.length} events so far): ${e}`)
        }
      )
    const both = Promise.all([seen(ws, latencies.ws, "ws"), seen(sse, latencies.sse, "sse")])
    const read = await n0.post("/mark_read", { conversation_id: conv, msg_id: id }, aToken)
    if (read.status !== 200) throw new Error(JSON.stringify(read.body))
    await both
  }
  ws.close()
  sse.close()
  const row = (name: string, xs: Array<number>) => {
    const s = [...xs].sort((x, y) => x - y)
    return `| ${name} | ${s.length} | ${percentile(s, 50).toFixed(1)} | ${percentile(s, 99).toFixed(1)} | ${
      s[s.length - 1].toFixed(1)
    } |`
  }
  const table = [
    `\n## Read events across nodes (${new Date().toISOString().slice(0, 10)}, bench/read-events.ts)\n`,
    "Three nodes on one machine's PostgreSQL; `mark_read` through node 0, the reader's other connections on nodes 1 and 2. From sending `mark_read` to the `read` event:\n",
    "| connection | marks | p50 ms | p99 ms | max ms |",
    "|---|---|---|---|---|",
    row("ws on node 1", latencies.ws),
    row("sse on node 2", latencies.sse),
    ""
  ].join("\n")
  console.log(table)
  Fs.appendFileSync(Path.join(import.meta.dirname ?? ".", "RESULTS.md"), table)
} finally {
  await cluster.stop()
}
