/**
 * Sends taken by direct call (LocalConversations): a Conversation entity active in the gateway's
 * process takes its sends without a cluster message. The cluster passivates an entity after
 * `QUICKIM_ENTITY_IDLE` without one, so the entity keeps itself active while such sends come, and
 * sends racing its passivation go round by the entity message: none lost, none stored twice.
 * PostgreSQL, real sockets.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import pg from "pg"
import { sleep } from "./support/push.ts"
import { expectOk, metricValue, settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

const session = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`
const activations = (server: TestServer) =>
  metricValue(server, "quickim_entity_activations_total", `entity="Conversation"`)

/** How often each stored MsgId of the conversation is there, read from the database itself. */
const storedCounts = async (conversationId: string) => {
  const db = new pg.Client({ connectionString: testDatabaseUrl() })
  await db.connect()
  try {
    const rows = (await db.query(
      "SELECT msg_id, count(*)::int AS n FROM messages WHERE conversation_id = $1 GROUP BY msg_id",
      [conversationId]
    )).rows as Array<{ msg_id: string; n: number }>
    return new Map(rows.map((r) => [r.msg_id, r.n]))
  } finally {
    await db.end()
  }
}

describe("sends by direct call to a conversation in the same process", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { entityIdle: Duration.seconds(1) }))
  }, 60_000)
  afterAll(() => server?.stop())

  const conversationOf = async (token: string) =>
    expectOk(await server.post("/create_conversation", { conversation_type: 1 }, token)).ConversationId as string
  const send = async (conversationId: string, token: string, content: string) =>
    expectOk(await server.post("/send_msg", { conversation_id: conversationId, content }, token)).MsgID as string

  it("a conversation busy with such sends stays active past QUICKIM_ENTITY_IDLE", async () => {
    const t = await server.token(session("busy"))
    const id = await conversationOf(t)
    const ids = [await send(id, t, "first")]
    const before = await activations(server)
    // Eleven times the idle time, a send every 200 ms, not one of them a cluster message: the cluster
    // looks for idle entities every 5 s, so at least two looks fall in it.
    const until = Date.now() + 11_000
    while (Date.now() < until) {
      ids.push(await send(id, t, `m${ids.length}`))
      await sleep(200)
    }
    assert.strictEqual(await activations(server), before, "the conversation was passivated and started again")
    const stored = await storedCounts(id)
    assert.strictEqual(stored.size, ids.length)
    for (const msgId of ids) assert.strictEqual(stored.get(msgId), 1, msgId)
  }, 30_000)

  it("sends around the conversation's passivation are each stored once", async () => {
    const t = await server.token(session("idle"))
    const id = await conversationOf(t)
    const before = await activations(server)
    const ids: Array<string> = []
    const burst = async (round: number) =>
      ids.push(...await Promise.all(Array.from({ length: 20 }, (_, i) => send(id, t, `r${round}-${i}`))))
    // A burst, a wait until no Conversation entity is active on the node, the next burst: each finds
    // its conversation stopped (its sends take the entity message, the later ones the direct call).
    for (let round = 0; round < 3; round++) {
      await burst(round)
      const until = Date.now() + 20_000
      while (await metricValue(server, "effect_cluster_entities", "Conversation") > 0) {
        if (Date.now() > until) throw new Error("the conversation stayed active")
        await sleep(50)
      }
    }
    // Then bursts with pauses about the idle time, some of them meeting the conversation stopping.
    const until = Date.now() + 8_000
    for (let round = 3; Date.now() < until; round++) {
      await burst(round)
      await sleep(700 + (round % 5) * 200)
    }
    assert.isAtLeast(await activations(server), before + 3, "the conversation did not stop between bursts")
    assert.strictEqual(new Set(ids).size, ids.length)
    const stored = await storedCounts(id)
    assert.strictEqual(stored.size, ids.length)
    for (const msgId of ids) assert.strictEqual(stored.get(msgId), 1, msgId)
  }, 90_000)
})
