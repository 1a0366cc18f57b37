/**
 * Long-poll clients that have received nothing yet (no cursor to give) when the node they poll
 * through dies, with it a third of their Mailboxes. A Mailbox's next host takes the first message
 * after the death before the client's next poll reaches it: the platform's position, kept in SQL
 * from its first poll on, makes that poll replay it instead of finding nothing to start from.
 */
import { afterAll, assert, describe, it } from "vitest"
import { follow, settled, startCluster, type TestCluster } from "./support/cluster.ts"
import { sql } from "./support/postgres.ts"
import { dedupe, sleep } from "./support/push.ts"

/**
 * Three nodes, 12 sessions `${prefix}-<tag>-<i>` (enough that some have their Mailbox on each node),
 * each in a conversation with one sender.
 */
const world = async (prefix: string) => {
  const cluster = await startCluster(3)
  await settled(cluster, 3)
  const [gateway, ...others] = cluster.nodes
  const tag = crypto.randomUUID().slice(0, 6)
  const sessions = Array.from({ length: 12 }, (_, i) => `${prefix}-${tag}-${i}`)
  const sender = `s-${tag}`
  const senderToken = await others[0].token(sender)
  const conversations: Array<string> = []
  for (const s of sessions) {
    const r = await others[0].post("/inner/create_conversation", { sessions: [s, sender] })
    conversations.push(r.body.data.ConversationId)
  }
  /** Waits until every session's first poll of platform 3 has reached its Mailbox (its position is in SQL). */
  const firstPollsIn = async () => {
    const positions = () =>
      sql(
        cluster.databaseUrl,
        `SELECT count(*) FROM poll_positions WHERE platform = 3 AND session_id LIKE '${prefix}-${tag}-%'`
      ).then((n) => Number(n.trim()))
    for (let i = 0; i < 100 && (await positions()) < sessions.length; i++) await sleep(200)
    assert.strictEqual(await positions(), sessions.length, "every first poll reached its Mailbox")
  }
  return { cluster, gateway, others, sessions, senderToken, conversations, firstPollsIn }
}

describe("poll failover", () => {
  let cluster: TestCluster | undefined
  afterAll(() => cluster?.stop())

  it("clients with no cursor yet lose nothing when their node and a third of their Mailboxes die", {
    timeout: 120_000
  }, async () => {
    const w = await world("p")
    cluster = w.cluster
    const { gateway, others, sessions, senderToken, conversations } = w
    // Each client polls through the node that will die (start = its index in the live list).
    const clients = await Promise.all(sessions.map(async (s) => follow("poll", cluster!, await gateway.token(s, 3), 0)))
    await w.firstPollsIn()
    await sleep(300) // and waits there
    await cluster.kill(gateway)
    await sleep(3000) // the clients poll again on the other nodes
    const sent = new Map<string, Array<string>>()
    for (let round = 0; round < 3; round++) {
      for (const [i, id] of conversations.entries()) {
        const r = await others[round % 2].post("/send_msg", { conversation_id: id, content: `m${round}` }, senderToken)
        assert.strictEqual(r.body.code, 0, JSON.stringify(r.body))
        sent.set(sessions[i], [...(sent.get(sessions[i]) ?? []), r.body.data.MsgID])
      }
      await sleep(300)
    }
    const deadline = Date.now() + 30_000
    const missing = () =>
      sessions.flatMap((s, i) => {
        const got = new Set(clients[i].messages.map((m) => m.MsgId))
        return sent.get(s)!.filter((id) => !got.has(id)).map((id) => `${s}:${id}`)
      })
    while (missing().length > 0 && Date.now() < deadline) await sleep(250)
    assert.deepStrictEqual(
      missing(),
      [],
      JSON.stringify(sessions.map((s, i) => ({ s, sent: sent.get(s), got: clients[i].messages.map((m) => m.MsgId) })))
    )
    for (const [i, s] of sessions.entries()) {
      assert.deepStrictEqual(dedupe(clients[i].messages).map((m) => m.MsgId), sent.get(s))
    }
    await Promise.all(clients.map((c) => c.stop()))
  })

  it(
    "a poll still waiting through a node that died takes no message: the client's next poll, without a cursor, gets it",
    {
      timeout: 120_000
    },
    async () => {
      await cluster?.stop()
      const w = await world("w")
      cluster = w.cluster
      const { gateway, others, sessions, senderToken, conversations } = w
      const tokens = await Promise.all(sessions.map((s) => gateway.token(s, 3)))
      // One poll per session through the node that will die, left waiting there; nothing polls again
      // until the message is in.
      const waiting = tokens.map((t) =>
        fetch(`${gateway.url}/notify?protoc=poll&token=${t}`).then((r) => r.status, () => "cut")
      )
      await w.firstPollsIn()
      await sleep(300)
      await cluster.kill(gateway)
      assert.deepStrictEqual(new Set(await Promise.all(waiting)), new Set(["cut"]))
      // Seconds after the node died, as above; whatever still holds its waiting polls must not answer them.
      await sleep(4000)
      const sent: Array<string> = []
      for (const id of conversations) {
        const r = await others[1].post("/send_msg", { conversation_id: id, content: "after" }, senderToken)
        assert.strictEqual(r.body.code, 0, JSON.stringify(r.body))
        sent.push(r.body.data.MsgID)
      }
      await sleep(500)
      // The clients poll again elsewhere, with no cursor (they never got anything).
      const got = await Promise.all(tokens.map(async (t) => {
        const r = await fetch(`${others[0].url}/notify?protoc=poll&token=${t}`)
        return r.status === 200 ? ((await r.json()) as { MsgId: string }).MsgId : `status ${r.status}`
      }))
      assert.deepStrictEqual(got, sent)
    }
  )

  it(
    "a poll whose mailbox lives on is not cut when another node dies: it answers with the next message",
    { timeout: 120_000 },
    async () => {
      await cluster?.stop()
      const w = await world("l")
      cluster = w.cluster
      const { gateway, others, sessions, senderToken, conversations } = w
      const [through, sendVia] = others
      const tokens = await Promise.all(sessions.map((s) => through.token(s, 3)))
      // One poll per session through a node that stays; the node that dies holds about a third of
      // the Mailboxes. A poll cut when a runner leaves ends 503 (its client polls again).
      const poll = (t: string) =>
        fetch(`${through.url}/notify?protoc=poll&token=${t}`).then(async (r) =>
          r.status === 200 ? ((await r.json()) as { MsgId: string }).MsgId : `status ${r.status}`
        )
      const waiting = tokens.map((t) => {
        let answer: string | undefined = undefined
        const done = poll(t).then((a) => (answer = a))
        return { done, answer: () => answer }
      })
      await w.firstPollsIn()
      await cluster.kill(gateway)
      // Past the moment the survivors see its runner leave (its heartbeat 5 s old, read each second).
      await sleep(9000)
      const stillWaiting = waiting.filter((p) => p.answer() === undefined).length
      const cut = waiting.filter((p) => p.answer() !== undefined).map((p) => p.answer())
      // Before the fix, every waiting poll of every node was cut at that moment, whichever node held
      // its Mailbox; a third of them here is on the dead node.
      assert.isAbove(stillWaiting, 0, `answers so far: ${JSON.stringify(cut)}`)
      for (const answer of cut) assert.strictEqual(answer, "status 503")
      const sent: Array<string> = []
      for (const id of conversations) {
        const r = await sendVia.post("/send_msg", { conversation_id: id, content: "after" }, senderToken)
        assert.strictEqual(r.body.code, 0, JSON.stringify(r.body))
        sent.push(r.body.data.MsgID)
      }
      // The polls still waiting answer with the message; a cut one's client polls again (no cursor).
      const got = await Promise.all(waiting.map(async (p, i) => {
        const first = await p.done
        return first === "status 503" ? poll(tokens[i]) : first
      }))
      assert.deepStrictEqual(got, sent)
    }
  )
})
