/**
 * A relay sent to a node address before the process now serving it started was meant for a
 * process that died there. Its sender gives it up once it reads the new process's start and sends
 * what it carried again as entity messages; so the new process must not serve it, whatever
 * Effect cluster's retries brought it: a send without `client_msg_id` would be stored twice. The
 * real relay handler (NodeInbox), a real Conversation entity and database.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { processStartedAt, type RelayBody, relayHandler, type SendItem } from "../src/cluster/NodeInbox.ts"
import { Conversation } from "../src/conversation/Protocol.ts"
import { conversationEntityLayer } from "./support/entity.ts"
import { settingsFor } from "./support/server.ts"

const TestLayer = conversationEntityLayer(settingsFor("embedded"))

const relayOf = (sentAt: number, sends: ReadonlyArray<SendItem>): string =>
  JSON.stringify({ sentAt, pushes: [], delivers: [{ sessions: ["b"], messages: [] }], sends } satisfies RelayBody)

describe("relays across a restart", () => {
  it.live("a relay sent before this process started is not served; one sent after is", () =>
    Effect.gen(function* () {
      yield* (yield* Conversation.client)("conv-relay").Create({ conversationType: 0, sessions: ["a", "b"] })
      const relay = yield* relayHandler
      const send = (content: string): SendItem => ({
        conversationId: "conv-relay",
        session: "a",
        status: 0,
        type: 0,
        content
      })

      const before = JSON.parse(yield* relay(relayOf(processStartedAt - 1, [send("for the dead process")])))
      assert.deepStrictEqual(before.outcomes, [{ _tag: "NotHere" }], "handed back to go as an entity message")
      assert.deepStrictEqual(before.missing, [["b"]])

      const after = JSON.parse(yield* relay(relayOf(Date.now(), [send("for this process")])))
      assert.strictEqual(after.outcomes[0]._tag, "Sent")

      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ content: string }>`SELECT content FROM messages WHERE conversation_id = 'conv-relay'`
      assert.deepStrictEqual(rows.map((r) => r.content), ["for this process"])
    }).pipe(Effect.provide(TestLayer)))
})
