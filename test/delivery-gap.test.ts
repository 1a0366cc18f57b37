/**
 * A conversation that drops a batch instead of handing it over late tells each member's mailbox
 * with its next delivery (`gap`): every connection of the session, on each protocol, then replays
 * from its last message and gets what was dropped, once and in order.
 */
import { Context, Duration } from "effect"
import { SqlClient } from "effect/sql"
import { Effect } from "effect"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { conversationHash, encode } from "../src/domain/MsgId.ts"
import { LocalMailboxes } from "../src/push/LocalMailboxes.ts"
import { connectPoll, connectSse, connectWs, sleep } from "./support/push.ts"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

/**
 * The second message of conversation `id` (from `from`), committed but never handed over, as a
 * dropped batch is: written behind the conversation entity's back, so nothing pushes it.
 */
const writeDropped = async (server: TestServer, id: string, from: string) => {
  const sql = Context.get(server.context, SqlClient.SqlClient)
  const millis = Date.now()
  const dropped = encode({ millis, seq: 2, conversationType: 0, hash: conversationHash(id) })
  await Effect.runPromise(sql`
    INSERT INTO messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content)
    VALUES (${id}, ${dropped}, 2, ${from}, ${new Date(millis).toISOString()}, 0, 1, 'dropped')`.pipe(
    Effect.andThen(sql`UPDATE conversations SET last_msg_id = ${dropped}, last_seq = 2 WHERE id = ${id}`)
  ))
  return dropped
}

describe("delivery gap", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("embedded", { pollWait: Duration.seconds(2) }))
  })
  afterAll(() => server?.stop())

  it("connections of every protocol replay what a conversation dropped, once told of the gap", async () => {
    const a = "gap-a"
    const b = "gap-b"
    const aToken = await server.token(a)
    const id = (await server.post("/inner/create_conversation", { sessions: [a, b] })).body.data
      .ConversationId as string
    const send = async (content: string) => {
      const reply = await server.post("/send_msg", { conversation_id: id, content, type: 1 }, aToken)
      assert.strictEqual(reply.body.code, 0, JSON.stringify(reply.body))
      return reply.body.data.MsgID as string
    }
    const clients = [
      await connectWs(server.url, await server.token(b, 1)),
      await connectSse(server.url, await server.token(b, 2)),
      connectPoll(server.url, await server.token(b, 3))
    ]
    await sleep(400)
    try {
      const first = await send("first")
      for (const c of clients) await c.until((m) => m.length >= 1)
      const dropped = await writeDropped(server, id, a)
      await sleep(300)
      for (const c of clients) assert.deepStrictEqual(c.messages.map((m) => m.MsgId), [first])
      // The gap alone, as the conversation hands it over when nothing follows the dropped batch.
      const mailbox = Context.get(server.context, LocalMailboxes).get(b)
      assert.isDefined(mailbox)
      mailbox!.deliver([], true)
      for (const c of clients) await c.until((m) => m.length >= 2)
      await sleep(300)
      for (const c of clients) {
        assert.deepStrictEqual(c.messages.map((m) => m.MsgId), [first, dropped])
        assert.strictEqual(c.messages[1].Content, "dropped")
      }
    } finally {
      for (const c of clients) c.close()
    }
  })
})

describe("delivery gap, long polls", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("embedded", { pollWait: Duration.seconds(30) }))
  })
  afterAll(() => server?.stop())

  it("a poll waiting when its mailbox is told of a gap ends at once, and the next poll brings what was dropped", async () => {
    const [a, b] = ["gap-long-a", "gap-long-b"]
    const aToken = await server.token(a)
    const id = (await server.post("/inner/create_conversation", { sessions: [a, b] })).body.data
      .ConversationId as string
    const first = (await server.post("/send_msg", { conversation_id: id, content: "first" }, aToken)).body.data
      .MsgID as string
    const poller = connectPoll(server.url, await server.token(b), first)
    try {
      await sleep(400) // the poll waits at the mailbox
      const dropped = await writeDropped(server, id, a)
      Context.get(server.context, LocalMailboxes).get(b)!.deliver([], true)
      // Without ending the waiting poll, the replay came with the poll after it: 30 s later.
      await poller.until((m) => m.length >= 1, 5_000)
      assert.deepStrictEqual(poller.messages.map((m) => m.MsgId), [dropped])
    } finally {
      poller.close()
    }
  })
})
