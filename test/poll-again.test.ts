/**
 * A long-poll client that gives up on a waiting request (a timeout of its own, a network change)
 * polls again at once with the same cursor, while the server may still hold the first request:
 * its end reaches the session's Mailbox later (across nodes, under load, seconds later). Found by
 * `npm run chaos`: a message handed to that abandoned request was lost, and the cursor of the next
 * poll, equal to the newest answer, did not tell the server.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import type { MsgData } from "../src/domain/Conversation.ts"
import { sleep } from "./support/push.ts"
import { settingsFor, startServer } from "./support/server.ts"

describe("poll again", () => {
  it("a poll with the cursor of a request still waiting takes over from it: nothing goes to the abandoned one", async () => {
    const server = await startServer(settingsFor("embedded", { pollWait: Duration.seconds(3) }))
    try {
      const [a, b] = ["a", "b"].map((s) => `${s}-${crypto.randomUUID().slice(0, 8)}`)
      const [ta, tb] = [await server.token(a), await server.token(b)]
      const conversation = (await server.post("/inner/create_conversation", { sessions: [a, b] })).body.data
        .ConversationId
      const send = async (content: string) =>
        (await server.post("/send_msg", { conversation_id: conversation, content }, ta)).body.data.MsgID as string
      const poll = (cursor: string) => fetch(`${server.url}/notify?protoc=poll&token=${tb}&last_msg_id=${cursor}`)

      const first = await send("first")
      const firstAnswer = await poll(first)
      assert.strictEqual(firstAnswer.status, 204)
      // The abandoned request: the client stops waiting for it, but it stays open at the server.
      const abandoned = poll(first)
      await sleep(300)
      const received: Array<string> = []
      let cursor = first
      let next = poll(cursor)
      await sleep(300)
      const sent = [await send("one"), await send("two")]
      for (const deadline = Date.now() + 10_000; received.length < sent.length && Date.now() < deadline;) {
        const res = await next
        if (res.status === 200) {
          const message: MsgData = await res.json()
          received.push(message.MsgId)
          cursor = message.MsgId
        } else await res.body?.cancel()
        next = poll(cursor)
      }
      await (await next).body?.cancel()
      await (await abandoned).body?.cancel()
      assert.deepStrictEqual(received, sent)
    } finally {
      await server.stop()
    }
  })
})
