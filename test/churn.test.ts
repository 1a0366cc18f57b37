/**
 * Churn: clients of 50 conversations over all three protocols disconnect and reconnect at random
 * (resuming by their last MsgId) while messages flow. In the end every client holds every message
 * of its conversations exactly once after MsgId dedupe, each conversation in order.
 */
import { assert, describe, it } from "@effect/vitest"
import type { MsgData } from "../src/domain/Conversation.ts"
import { connect, dedupe, type Protocol, type PushClient, sleep } from "./support/push.ts"
import { settingsFor, startServer } from "./support/server.ts"

const SESSIONS = 30
const CONVERSATIONS = 50
const SEND_MS = 6_000
const SENDERS = 6

// A small deterministic PRNG, so a failure can be replayed.
const rng = (seed: number) => () => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x7fffffff
}

describe("churn", () => {
  it("random disconnects and resumes lose nothing and keep each conversation's order", async () => {
    const random = rng(20261125)
    const server = await startServer(settingsFor("embedded"))
    try {
      const sessions = Array.from({ length: SESSIONS }, (_, i) => `churn-${i}-${crypto.randomUUID().slice(0, 6)}`)
      const tokens = await Promise.all(sessions.map((s, i) => server.token(s, 1 + (i % 3))))
      const conversations: Array<{ id: string; members: Array<number> }> = []
      for (let c = 0; c < CONVERSATIONS; c++) {
        const members = [...new Set([c % SESSIONS, Math.floor(random() * SESSIONS), Math.floor(random() * SESSIONS)])]
        const reply = await server.post("/inner/create_conversation", { sessions: members.map((m) => sessions[m]) })
        conversations.push({ id: reply.body.data.ConversationId, members })
      }

      // Each conversation gets a first message, and each client starts as an app does: it loads its
      // conversations' history, then connects with the last MsgId it holds.
      const sent = new Map<string, Array<string>>()
      const seeds: Array<MsgData> = []
      for (const c of conversations) {
        const token = tokens[c.members[0]]
        const id = (await server.post("/send_msg", { conversation_id: c.id, content: "seed" }, token)).body.data.MsgID
        sent.set(c.id, [id])
        seeds.push(
          (await server.post("/get_conversation_lastone_msg", { conversation_id: c.id }, token)).body.data.Msg[0]
        )
      }
      const received: Array<Array<MsgData>> = sessions.map((_, i) =>
        seeds.filter((m) => conversations.some((c) => c.id === m.ConversationID && c.members.includes(i)))
          .sort((a, b) => a.MsgId < b.MsgId ? -1 : 1)
      )
      const protocols: Array<Protocol> = sessions.map((_, i) => (["ws", "sse", "poll"] as const)[i % 3])
      let churning = true
      const churn = sessions.map(async (_, i) => {
        while (churning) {
          const last = received[i][received[i].length - 1]?.MsgId
          let client: PushClient
          try {
            client = await connect(protocols[i], server.url, tokens[i], last)
          } catch {
            await sleep(50)
            continue
          }
          await sleep(100 + random() * 500)
          client.close()
          received[i].push(...client.messages)
          await sleep(random() * 200)
        }
      })

      const deadline = Date.now() + SEND_MS
      await Promise.all(Array.from({ length: SENDERS }, async () => {
        while (Date.now() < deadline) {
          const c = conversations[Math.floor(random() * conversations.length)]
          const from = c.members[Math.floor(random() * c.members.length)]
          const reply = await server.post("/send_msg", { conversation_id: c.id, content: "c" }, tokens[from])
          assert.strictEqual(reply.body.code, 0)
          sent.set(c.id, [...(sent.get(c.id) ?? []), reply.body.data.MsgID])
        }
      }))
      churning = false
      await Promise.all(churn)

      // A last reconnection each, resuming from what it holds, until it has everything.
      const expected = sessions.map((_, i) =>
        conversations.filter((c) => c.members.includes(i)).flatMap((c) => sent.get(c.id) ?? [])
      )
      await Promise.all(sessions.map(async (_, i) => {
        const last = received[i][received[i].length - 1]?.MsgId
        const client = await connect(protocols[i], server.url, tokens[i], last)
        const want = new Set(expected[i])
        try {
          await client.until(
            (m) => dedupe([...received[i], ...m]).filter((x) => want.has(x.MsgId)).length >= want.size,
            20_000
          )
        } finally {
          client.close()
          received[i].push(...client.messages)
        }
      }))

      let total = 0
      for (let i = 0; i < SESSIONS; i++) {
        const unique = dedupe(received[i])
        const mine = new Set(conversations.filter((c) => c.members.includes(i)).map((c) => c.id))
        for (const m of unique) assert.isTrue(mine.has(m.ConversationID), `session ${i} got a foreign message`)
        for (const c of conversations.filter((c) => c.members.includes(i))) {
          const got = unique.filter((m) => m.ConversationID === c.id).map((m) => m.MsgId)
          // Replies of concurrent senders can cross; MsgId order is the conversation's commit order.
          const order = [...(sent.get(c.id) ?? [])].sort()
          assert.deepStrictEqual(got, order, `session ${i}, conversation ${c.id}`)
          total += got.length
        }
      }
      assert.isAbove(total, 500, "enough traffic to mean something")
    } finally {
      await server.stop()
    }
  })
})
