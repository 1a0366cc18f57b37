/**
 * Operating a cluster: the cluster view (endpoint and CLI command) and the retention job that keeps
 * Effect cluster's message tables from growing forever.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import { execFile } from "node:child_process"
import { formatClusterView } from "../src/cli/ClusterStatus.ts"
import { sql } from "./support/postgres.ts"
import { denoBin, root } from "./support/process.ts"
import { sleep } from "./support/push.ts"
import { settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

const psql = (text: string) => sql(testDatabaseUrl(), text)

describe("cluster operations", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { clusterRetention: Duration.seconds(2) }))
  })
  afterAll(() => server.stop())

  it("GET /inner/cluster shows this node, its shards and its push connections", async () => {
    const token = await server.token("ops-viewer")
    const ws = new WebSocket(`${server.url.replace("http", "ws")}/notify?protoc=ws&token=${token}`)
    await new Promise((r) => (ws.onopen = r))
    let view: any
    // Reports are written every 2 s: wait for one that counts the connection.
    for (let i = 0; i < 40; i++) {
      const r = await server.raw("/inner/cluster", { method: "GET" })
      assert.strictEqual(r.body.code, 0)
      view = r.body.data
      const self = view.Nodes.find((n: any) => n.NodeId === view.Self)
      if (self !== undefined && self.Connections.ws >= 1) break
      await sleep(250)
    }
    ws.close()
    assert.strictEqual(view.Mode, "single")
    const self = view.Nodes.find((n: any) => n.NodeId === view.Self)
    assert.strictEqual(self.Url, server.url)
    assert.strictEqual(self.Shards, view.ShardsPerGroup)
    assert.isTrue(self.Alive)
    assert.isAtLeast(self.Connections.ws, 1)
    assert.isAtLeast(self.Mailboxes, 1)
  })

  it("`cluster status` prints the view, and says so plainly when no node answers", async () => {
    // Asynchronously: the server answering it runs in this process.
    const cli = (url: string) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        execFile(
          denoBin,
          ["run", "-A", "src/main.ts", "cluster", "status", "--url", url],
          { cwd: root },
          (e, stdout, stderr) => resolve({ code: e ? (e as any).code ?? 1 : 0, stdout, stderr })
        )
      })
    const ok = await cli(server.url)
    assert.strictEqual(ok.code, 0)
    assert.include(ok.stdout, "mode: single")
    assert.include(ok.stdout, server.url)
    assert.match(ok.stdout, /NODE\s+RUNNER\s+ALIVE\s+SHARDS/)
    const failed = await cli("http://127.0.0.1:9")
    assert.strictEqual(failed.code, 1)
    assert.include(failed.stderr, "could not reach http://127.0.0.1:9")
  })

  it("formats runners and nodes as aligned tables", () => {
    const text = formatClusterView({
      Mode: "cluster",
      Self: "n1",
      ShardsPerGroup: 300,
      Runners: [{ Address: "10.0.0.11:34431", Healthy: false, LastHeartbeat: "2026-11-26T00:00:00.000Z" }],
      Nodes: [{
        NodeId: "n1",
        Runner: "10.0.0.11:34431",
        Url: "http://10.0.0.11:8080",
        Alive: false,
        Shards: 0,
        Conversations: 3,
        Mailboxes: 4,
        Connections: { ws: 5, sse: 6, poll: 7 },
        Relays: { Sent: 8, Carried: 90, HandedBack: 1 },
        StartedAt: "2026-11-25T00:00:00.000Z",
        UpdatedAt: "2026-11-26T00:00:00.000Z"
      }]
    })
    assert.include(text, "mode: cluster, 300 shards per group")
    assert.match(text, /10\.0\.0\.11:34431\s+no\s+2026/)
    assert.match(text, /http:\/\/10\.0\.0\.11:8080\s+10\.0\.0\.11:34431\s+no\s+0\s+3\s+4\s+5\s+6\s+7\s+8\/90\/1/)
  })

  it("the retention job deletes processed cluster messages and their replies once old enough", async () => {
    // An old processed message with a reply, and a recent one that must stay (ids are snowflakes:
    // milliseconds since 2025-01-01, shifted left by 22 bits).
    const snowflake = (ms: number) => (BigInt(ms - Date.UTC(2025, 0, 1)) << 22n).toString()
    const old = snowflake(Date.now() - 60_000)
    const recent = snowflake(Date.now() + 60_000)
    await psql(`INSERT INTO cluster_messages (id, shard_id, entity_type, entity_id, kind, processed, request_id)
      VALUES (${old}, 'default:1', 'RetentionTest', 'x', 0, true, ${old}),
             (${recent}, 'default:1', 'RetentionTest', 'y', 0, true, ${recent})`)
    await psql(`INSERT INTO cluster_replies (id, kind, request_id, payload) VALUES (${old}, 0, ${old}, '{}')`)
    let left = ""
    for (let i = 0; i < 60; i++) {
      left = await psql(
        `SELECT string_agg(entity_id, ',' ORDER BY entity_id) FROM cluster_messages WHERE entity_type = 'RetentionTest'`
      )
      if (left === "y") break
      await sleep(250)
    }
    assert.strictEqual(left, "y")
    assert.strictEqual(await psql(`SELECT count(*) FROM cluster_replies WHERE request_id = ${old}`), "0")
    await psql(`DELETE FROM cluster_messages WHERE entity_type = 'RetentionTest'`)
  })
})
