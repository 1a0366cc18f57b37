/**
 * The embedded PostgreSQL (no DATABASE_URL): the node starts a server of
 * its own in its data directory, stops it when it stops, and what it acknowledged survives the
 * node and the database server both killed with SIGKILL mid-burst (PostgreSQL's crash recovery:
 * a commit is acknowledged after its WAL record was synced).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { freePort, runToExit, spawnServer } from "./support/process.ts"
import { sleep } from "./support/push.ts"
import { tempDir } from "./support/server.ts"

const env = (dataDir: string) => ({
  QUICKIM_DATA_DIR: dataDir,
  QUICKIM_JWT_SECRET: "embedded-test-secret-embedded-test-secret"
})

const postmaster = (dataDir: string) => {
  try {
    return Number(Fs.readFileSync(Path.join(dataDir, "postgres", "postmaster.pid"), "utf8").split("\n")[0])
  } catch {
    return undefined
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("embedded PostgreSQL", () => {
  it("every acknowledged message survives SIGKILL of the node and of its database server mid-burst", {
    timeout: 120_000
  }, async () => {
    const dataDir = tempDir()
    const first = await spawnServer({ env: env(dataDir) })
    const server = postmaster(dataDir)
    assert.isDefined(server)
    const alice = `alice-${crypto.randomUUID()}`
    const token = await first.token(alice)
    const conversation =
      (await first.post("/inner/create_conversation", { sessions: [alice, "bob"] })).body.data.ConversationId
    const acked: Array<string> = []
    let sending = true
    const senders = Array.from({ length: 8 }, async (_, s) => {
      for (let i = 0; sending; i++) {
        try {
          const r = await first.post("/send_msg", { conversation_id: conversation, content: `m-${s}-${i}` }, token)
          if (r.body?.code === 0) acked.push(r.body.data.MsgID)
        } catch {
          return // the node is gone
        }
      }
    })
    await sleep(1000)
    // Both at once, mid-burst: nothing gets to shut down cleanly.
    process.kill(server!, "SIGKILL")
    await first.stop("SIGKILL")
    sending = false
    await Promise.all(senders)
    assert.isAbove(acked.length, 20)
    for (let i = 0; i < 50 && alive(server!); i++) await sleep(100)

    const second = await spawnServer({ env: env(dataDir) })
    try {
      const sorted = [...acked].sort()
      const history = await second.post("/get_conversation_msg_by_range", {
        conversation_id: conversation,
        start_msg_id: sorted[0],
        end_msg_id: sorted[sorted.length - 1]
      }, await second.token(alice))
      assert.strictEqual(history.body.code, 0, JSON.stringify(history.body))
      const stored = history.body.data.Msg.map((m: any) => m.MsgId as string)
      assert.isBelow(stored.length, 1000, "the range answers 1,000 at most: a shorter burst is needed")
      assert.strictEqual(new Set(stored).size, stored.length)
      const missing = acked.filter((id) => !stored.includes(id))
      assert.deepStrictEqual(missing, [], `${missing.length} of ${acked.length} acknowledged messages lost`)
    } finally {
      assert.include([0, "SIGTERM"], await second.stop(), second.output())
    }
    // The node that started the server stopped it.
    const restarted = postmaster(dataDir)
    assert.isTrue(restarted === undefined || !alive(restarted))
  })

  it("a cluster's nodes on one data directory share its server; the last one to stop stops it", {
    timeout: 90_000
  }, async () => {
    const dataDir = tempDir()
    const node = async () =>
      spawnServer({
        env: { ...env(dataDir), QUICKIM_RUNNER_HOST: "127.0.0.1", QUICKIM_RUNNER_PORT: String(await freePort()) }
      })
    const a = await node()
    const b = await node()
    const server = postmaster(dataDir)!
    try {
      // Written through one, read through the other.
      const alice = `alice-${crypto.randomUUID()}`
      const conversation = (await a.post("/inner/create_conversation", { sessions: [alice] })).body.data.ConversationId
      const sent = await a.post("/send_msg", { conversation_id: conversation, content: "hi" }, await a.token(alice))
      assert.strictEqual(sent.body.code, 0)
      const seen = await b.post(
        "/get_conversation_lastone_msg",
        { conversation_id: conversation },
        await b.token(alice)
      )
      assert.strictEqual(seen.body.data.Msg[0].MsgId, sent.body.data.MsgID)
      await a.stop()
      assert.isTrue(alive(server), "the server outlives the first node to stop")
      assert.strictEqual((await b.raw("/healthz", { method: "GET" })).status, 200)
    } finally {
      await a.stop()
      await b.stop()
    }
    for (let i = 0; i < 50 && alive(server); i++) await sleep(100)
    assert.isFalse(alive(server), "the last node to stop stopped the server")
  })

  it("a single node holds its data directory alone: a second one refuses to start", { timeout: 60_000 }, async () => {
    const dataDir = tempDir()
    const first = await spawnServer({ env: env(dataDir) })
    try {
      const second = await runToExit({ env: { ...env(dataDir), PORT: String(await freePort()) } })
      assert.notStrictEqual(second.code, 0)
      assert.include(second.output, "is in use by process")
      assert.strictEqual((await first.raw("/healthz", { method: "GET" })).status, 200)
    } finally {
      await first.stop()
    }
  })
})
