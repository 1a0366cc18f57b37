/**
 * A send whose commit outcome is unknown (the database connection was lost after COMMIT, before
 * the answer) reaches every member once it is known to exist: the conversation reloads by itself
 * and hands over what that write committed, even if nobody sends again; a retry with the same
 * `client_msg_id` answers the same MsgId, and nobody gets the message twice.
 */
import { Option, Redacted } from "effect"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { type PgProxy, startPgProxy } from "./support/pgProxy.ts"
import { connectPoll, connectSse, connectWs, type PushClient, sleep } from "./support/push.ts"
import { settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

describe("outcome unknown", () => {
  let proxy: PgProxy
  let server: TestServer
  beforeAll(async () => {
    const url = new URL(testDatabaseUrl())
    proxy = await startPgProxy({ host: url.hostname, port: Number(url.port || 5432) })
    url.host = `127.0.0.1:${proxy.port}`
    server = await startServer(settingsFor("postgres", { databaseUrl: Option.some(Redacted.make(url.toString())) }))
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
})
