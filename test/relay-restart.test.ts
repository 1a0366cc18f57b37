/**
 * A relay sent to a node address before the process now serving it started was meant for a
 * process that died there. Its sender gives it up once it reads the new process's start and sends
 * what it carried again as entity messages; so the new process must not serve it, whatever
 * Effect cluster's retries brought it: a send without `client_msg_id` would be stored twice. The
 * real node link (NodeLink), with the send and mailbox handlers registered, a real Conversation
 * entity and database.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { processStartedAt } from "../src/cluster/NodeIdentity.ts"
import { NodeLink, type RelayBody } from "../src/cluster/NodeLink.ts"
import { Conversation } from "../src/conversation/Protocol.ts"
import type { SendItem } from "../src/conversation/Sender.ts"
import { conversationEntityLayer } from "./support/entity.ts"
import { settingsFor } from "./support/server.ts"

const TestLayer = conversationEntityLayer(settingsFor("embedded"))

const relayOf = (sentAt: number, sends: ReadonlyArray<SendItem>): string =>
  JSON.stringify(
    {
      sentAt,
      items: [["deliver", [{ sessions: ["b"], messages: [] }]], ["send", sends]]
    } satisfies RelayBody
  )

describe("relays across a restart", () => {
  it.live("a relay sent before this process started is not served; one sent after is", () =>
    Effect.gen(function* () {
      yield* (yield* Conversation.client)("conv-relay").Create({ conversationType: 0, sessions: ["a", "b"] })
      const link = yield* NodeLink
      const send = (content: string): SendItem => ({
        conversationId: "conv-relay",
        session: "a",
        status: 0,
        type: 0,
        content
      })

      const before = JSON.parse(yield* link.serve(relayOf(processStartedAt - 1, [send("for the dead process")])))
      assert.deepStrictEqual(before, {}, "nothing served: the sender sends it again as an entity message")

      const after = JSON.parse(yield* link.serve(relayOf(Date.now(), [send("for this process")])))
      assert.strictEqual(after.send[0]._tag, "Sent")
      assert.deepStrictEqual(after.deliver, [[]], "b's mailbox is not active here: b is offline, nothing is owed")

      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ content: string }>`SELECT content FROM messages WHERE conversation_id = 'conv-relay'`
      assert.deepStrictEqual(rows.map((r) => r.content), ["for this process"])
    }).pipe(Effect.provide(TestLayer)))
})
