/**
 * A send whose commit outcome is unknown (the database connection was lost after COMMIT, before
 * the answer) reaches every member once it is known to exist: the conversation reloads by itself
 * and hands over what that write committed, even if nobody sends again; a retry with the same
 * `client_msg_id` answers the same MsgId, and nobody gets the message twice. A commit that finds
 * its place taken by another host's write is answered 503 (retry), not as a fault.
 */
import { Context, Effect, Option, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { conversationHash, encode } from "../src/domain/MsgId.ts"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { type PgProxy, startPgProxy } from "./support/pgProxy.ts"
import { connectPoll, connectSse, connectWs, type PushClient, sleep } from "./support/push.ts"
import { settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

describe("outcome unknown", () => {
  let proxy: PgProxy
  let server: TestServer
  beforeAll(async () => {
    proxy = await startPgProxy(testDatabaseUrl())
    server = await startServer(
      settingsFor("postgres", { databaseUrl: Option.some(Redacted.make(proxy.via(testDatabaseUrl()))) })
    )
  })
  afterAll(async () => {
    await server?.stop()
    await proxy?.close()
  })

  it("a message committed while its answer was lost reaches every member, once, without a retry", async () => {
    const tag = crypto.randomUUID().slice(0, 6)
    const [a, b, c, d] = ["a", "b", "c", "d"].map((s) => `${s}-${tag}`)
    const aToken = await server.token(a)
    const id = (await server.post("/inner/create_conversation", { sessions: [a, b, c, d] })).body.data
      .ConversationId as string
    const clients: Array<PushClient> = [
      await connectWs(server.url, await server.token(b)),
      await connectSse(server.url, await server.token(c)),
      connectPoll(server.url, await server.token(d))
    ]
    await sleep(400)
    try {
      // The content is the message's own; the proxy spots its write by it (findByClientIds reads by
      // client_msg_id only).
      const send = (key: string) =>
        server.post("/send_msg", { conversation_id: id, content: `${key}-${tag}`, type: 1, client_msg_id: key }, aToken)
      const first = await send("first")
      assert.strictEqual(first.body.code, 0)
      for (const client of clients) await client.until((m) => m.length >= 1)
      // The write of the next message commits, and its connection is cut before the answer arrives.
      proxy.cutAfter(`lost-${tag}`)
      const lost = await send("lost")
      assert.strictEqual(proxy.cuts(), 1)
      assert.notStrictEqual(lost.body.code, 0, JSON.stringify(lost.body))
      // Nobody sends again: the conversation finds the write committed and hands it over by itself.
      for (const client of clients) await client.until((m) => m.some((x) => x.Content === `lost-${tag}`), 20_000)
      // The sender's retry with the same client_msg_id gets the message that exists.
      const retry = await send("lost")
      assert.strictEqual(retry.body.code, 0, JSON.stringify(retry.body))
      const after = await send("after")
      assert.strictEqual(after.body.code, 0)
      for (const client of clients) await client.until((m) => m.some((x) => x.Content === `after-${tag}`))
      await sleep(300)
      for (const client of clients) {
        assert.deepStrictEqual(
          client.messages.map((m) => m.Content),
          ["first", "lost", "after"].map((k) => `${k}-${tag}`)
        )
        assert.strictEqual(client.messages[1].MsgId, retry.body.data.MsgID)
      }
    } finally {
      for (const client of clients) client.close()
    }
  })

  it("a commit that finds its seq taken by another host's write is answered 503, and the retry goes through", async () => {
    const tag = crypto.randomUUID().slice(0, 6)
    const [a, b] = ["a", "b"].map((s) => `${s}-${tag}`)
    const aToken = await server.token(a)
    const id = (await server.post("/inner/create_conversation", { sessions: [a, b] })).body.data
      .ConversationId as string
    const listener = await connectWs(server.url, await server.token(b))
    await sleep(400)
    try {
      const send = (key: string) =>
        server.post("/send_msg", { conversation_id: id, content: `${key}-${tag}`, type: 1 }, aToken)
      const first = await send("first")
      assert.strictEqual(first.body.code, 0)
      // What a previous host of the conversation, still writing, commits behind this host's back:
      // seq 2, and the conversation's row moved past it.
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const millis = Date.now()
      const theirs = encode({ millis, seq: 2, conversationType: 0, hash: conversationHash(id) })
      await Effect.runPromise(sql`
        INSERT INTO messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content)
        VALUES (${id}, ${theirs}, 2, ${a}, ${new Date(millis).toISOString()}, 0, 1, ${`theirs-${tag}`})`.pipe(
        Effect.andThen(sql`UPDATE conversations SET last_msg_id = ${theirs}, last_seq = 2 WHERE id = ${id}`)
      ))
      const clash = await send("clash")
      assert.strictEqual(clash.status, 503, JSON.stringify(clash.body))
      assert.strictEqual(clash.body.code, 10006, JSON.stringify(clash.body))
      const retry = await send("clash")
      assert.strictEqual(retry.body.code, 0, JSON.stringify(retry.body))
      assert.isTrue(retry.body.data.MsgID > theirs)
      // The other host's message reaches the members too (the conversation reloads and hands over
      // everything after what it had handed over), before the retry's.
      await listener.until((m) => m.length >= 3, 20_000)
      await sleep(300)
      assert.deepStrictEqual(
        listener.messages.map((m) => m.Content),
        ["first", "theirs", "clash"].map((k) => `${k}-${tag}`)
      )
    } finally {
      listener.close()
    }
  })
})
