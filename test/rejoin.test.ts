/**
 * A node killed and started again on the same runner address never looks gone to the others (its
 * address's heartbeat goes on), so relays they sent to the dead process are given up only when
 * they see that a newer process reports from the address (relayWatchdog). That report must come
 * as soon as the new process has its database, not once it has joined the cluster and serves HTTP:
 * in the chaos run, the later report held sends up to 2.7 s longer after a node came back.
 */
import { assert, describe, it } from "@effect/vitest"
import pg from "pg"
import { startCluster } from "./support/cluster.ts"
import { sleep } from "./support/push.ts"

describe("rejoin", () => {
  it("a node coming back on its address announces its process before it joins the cluster", async () => {
    const cluster = await startCluster(1)
    const lock = new pg.Client({ connectionString: cluster.databaseUrl })
    const reader = new pg.Client({ connectionString: cluster.databaseUrl })
    try {
      const [first] = cluster.nodes
      await cluster.kill(first)
      const killedAt = Date.now()
      await lock.connect()
      await reader.connect()
      // While this lock is held, the new process cannot set up its cluster storage, so it cannot join.
      await lock.query("BEGIN")
      await lock.query("LOCK TABLE cluster_migrations IN ACCESS EXCLUSIVE MODE")
      let joined = false
      const second = cluster.addNode(first.runnerPort).then((node) => {
        joined = true
        return node
      })
      second.catch(() => {})
      const newer = async () =>
        (await reader.query(
          `SELECT http_url FROM quickim_nodes
           WHERE runner_address = $1 AND extract(epoch FROM started_at) * 1000 > $2`,
          [`127.0.0.1:${first.runnerPort}`, killedAt]
        )).rows
      let rows = await newer()
      for (let i = 0; i < 240 && rows.length === 0; i++) {
        await sleep(250)
        rows = await newer()
      }
      assert.strictEqual(rows.length, 1, "the new process's row is there while it cannot join the cluster")
      assert.isFalse(joined, "the node did not serve before it joined")
      await lock.query("COMMIT")
      const node = await second
      assert.strictEqual((await node.raw("/healthz", { method: "GET" })).status, 200)
    } finally {
      await lock.end().catch(() => {})
      await reader.end().catch(() => {})
      await cluster.stop()
    }
  }, 120_000)
})
