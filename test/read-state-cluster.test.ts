/**
 * Read state across nodes: one session connected on two nodes (two platforms) and another member
 * on a third; a mark_read through any node reaches all of them as a `read` event, and typing,
 * membership and conversation events cross nodes the same way. Real processes on loopback.
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { settled, startCluster, type TestCluster } from "./support/cluster.ts"
import { connectLive, type LiveClient, type Protocol } from "./support/push.ts"

describe("read state across nodes", () => {
  let cluster: TestCluster | undefined
  afterAll(() => cluster?.stop())

  it("mark_read on one platform reaches the session's connections and the members on every node", {
    timeout: 120_000
  }, async () => {
    cluster = await startCluster(3)
    await settled(cluster, 3)
    const [n0, n1, n2] = cluster.nodes
    const tag = crypto.randomUUID().slice(0, 6)
    const a = `rs-${tag}-a`
    const b = `rs-${tag}-b`
    const c = `rs-${tag}-c`
    const conv = (await n0.post("/inner/create_conversation", { sessions: [a, b] })).body.data.ConversationId
    // a on platform 2 at node 1 (ws) and platform 3 at node 2 (sse); b at node 0 (poll); a reads
    // through node 0 on platform 1.
    const protocols: Array<[Protocol, typeof n0, string, number]> = [
      ["ws", n1, a, 2],
      ["sse", n2, a, 3],
      ["poll", n0, b, 1]
    ]
    const clients: Array<LiveClient> = []
    for (const [protocol, node, session, platform] of protocols) {
      clients.push(await connectLive(protocol, node.url, await node.token(session, platform), "read,member,typing"))
    }
    try {
      const bToken = await n2.token(b, 1)
      // Until every connection has a message: then each is registered with its Mailbox.
      for (let i = 0; i < 50 && !clients.every((x) => x.messages.length > 0); i++) {
        await n2.post("/send_msg", { conversation_id: conv, content: `m${i}` }, bToken)
        await new Promise((r) => setTimeout(r, 200))
      }
      const last = (await n2.post("/get_lastone_msgid", { conversation_id: conv }, bToken)).body.data.MsgId
      for (const x of clients) await x.until((m) => m.some((y) => y.MsgId === last))
      const read = await n0.post("/mark_read", { conversation_id: conv, msg_id: last }, await n0.token(a, 1))
      assert.strictEqual(read.status, 200, JSON.stringify(read.body))
      const seq = read.body.data.ReadSeq
      for (const x of clients) {
        await x.untilEvent((e) => e.some((y) => y.Event === "read"), 10_000)
        assert.deepStrictEqual(x.events.find((y) => y.Event === "read"), {
          Event: "read",
          ConversationId: conv,
          Session: a,
          ReadMsgId: last,
          ReadSeq: seq
        })
      }
      // Typing from b (through node 1): a's connections hear it on both nodes, b's own does not.
      assert.strictEqual((await n1.post("/typing", { conversation_id: conv }, await n1.token(b, 1))).status, 200)
      for (const x of clients.slice(0, 2)) await x.untilEvent((e) => e.some((y) => y.Event === "typing"), 10_000)
      // c joins through node 2: everyone hears it, wherever the conversation lives.
      assert.strictEqual(
        (await n2.post("/inner/join_conversation", { conversation_id: conv, sessions: [c] })).status,
        200
      )
      for (const x of clients) {
        await x.untilEvent((e) => e.some((y) => y.Event === "member" && y.Session === c), 10_000)
      }
      assert.deepStrictEqual(clients[2].events.filter((y) => y.Event === "typing"), [])
    } finally {
      for (const x of clients) x.close()
    }
  })
})
