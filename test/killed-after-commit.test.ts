/**
 * A conversation's host killed between a commit and its hand-over, and the conversation hosted
 * again only after the resume window: the next host hands over what was committed, however old,
 * before anything new (each commit records how far hand-overs had gone, conversations.redeliver_after).
 * A member that kept receiving other conversations' messages meanwhile gets it live, and a member
 * that was away gets it in its replay although its cursor is more than the window past it (the
 * next host records it as a gap). A host that stops with everything handed over clears the record.
 */
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { startCluster, type TestCluster } from "./support/cluster.ts"
import { type PgProxy, startPgProxy } from "./support/pgProxy.ts"
import { pgAdminUrl, sql } from "./support/postgres.ts"
import { connectWs, type PushClient, sleep } from "./support/push.ts"

const WINDOW_MS = 2000

describe("a host killed right after a commit", () => {
  let proxy: PgProxy
  let cluster: TestCluster
  beforeAll(async () => {
    proxy = await startPgProxy(pgAdminUrl())
    cluster = await startCluster(1, { QUICKIM_RESUME_WINDOW: `${WINDOW_MS} millis` }, { nodeDatabaseUrl: proxy.via })
  })
  afterAll(async () => {
    await cluster?.stop()
    await proxy?.close()
  })

  it(
    "the next host hands the committed message over however late, live and in replays, once and in order",
    { timeout: 120_000 },
    async () => {
      const tag = crypto.randomUUID().slice(0, 6)
      const [a, b, c] = ["a", "b", "c"].map((s) => `${s}-${tag}`)
      const first = cluster.nodes[0]
      const aToken = await first.token(a)
      const create = async () =>
        (await first.post("/inner/create_conversation", { sessions: [a, b, c] })).body.data.ConversationId as string
      const talk = await create()
      const other = await create()
      const send = async (node: typeof first, id: string, key: string) => {
        const reply = await node.post("/send_msg", { conversation_id: id, content: `${key}-${tag}`, type: 1 }, aToken)
        assert.strictEqual(reply.body?.code, 0, JSON.stringify(reply.body))
        return reply.body.data.MsgID as string
      }
      const clients: Array<PushClient> = []
      try {
        const before = await connectWs(first.url, await first.token(b))
        clients.push(before)
        await sleep(400)
        const m1 = await send(first, talk, "m1")
        await before.until((m) => m.length >= 1)

        // The commit of m2 goes through; its host is killed as the database answers it, before it
        // hears the answer, let alone hands m2 over.
        proxy.cutAfter(`m2-${tag}`, () => first.child.kill("SIGKILL"))
        const lost = await first.post(
          "/send_msg",
          { conversation_id: talk, content: `m2-${tag}`, type: 1 },
          aToken
        ).then(() => "answered", () => "no answer")
        assert.strictEqual(lost, "no answer")
        assert.strictEqual(proxy.cuts(), 1)
        await cluster.kill(first)
        const stored = await sql(
          cluster.databaseUrl,
          `SELECT m.msg_id, c.redeliver_after FROM messages m JOIN conversations c ON c.id = m.conversation_id
           WHERE m.conversation_id = '${talk}' ORDER BY m.msg_id`
        )
        const rows = stored.split("\n").map((r) => r.split("|"))
        assert.strictEqual(rows.length, 2, stored)
        assert.strictEqual(rows[0][0], m1)
        const m2 = rows[1][0]
        // The commit recorded how far hand-overs had gone when it was written: through m1.
        assert.strictEqual(rows[1][1], m1)

        // Hosted again only after the resume window.
        await sleep(WINDOW_MS + 500)
        const second = await cluster.addNode()
        const live = await connectWs(second.url, await second.token(b))
        clients.push(live)
        await sleep(400)
        // b's last message is now newer than m2 by more than the window.
        const m3 = await send(second, other, "m3")
        await live.until((m) => m.some((x) => x.MsgId === m3))
        const m4 = await send(second, talk, "m4")
        await live.until((m) => m.some((x) => x.MsgId === m4))
        await live.until((m) => m.some((x) => x.MsgId === m2), 10_000)
        await sleep(300)
        // What a connection got of `talk`, but m1: the next host hands over its last window again
        // (m1 with it), which clients drop by MsgId; m1 came before m2, so it changes no order.
        const ofTalk = (client: PushClient) =>
          client.messages.filter((m) => m.ConversationID === talk && m.MsgId !== m1).map((m) => m.MsgId)
        assert.deepStrictEqual(ofTalk(live), [m2, m4])

        // c was away throughout and comes back with m3 as its last message: its replay reaches m2.
        const away = await connectWs(second.url, await second.token(c), m3)
        clients.push(away)
        await away.until((m) => m.some((x) => x.MsgId === m4))
        await sleep(300)
        assert.deepStrictEqual(ofTalk(away), [m2, m4])

        // A host that stops with everything handed over clears the record: the next one owes nothing.
        assert.notStrictEqual(
          await sql(
            cluster.databaseUrl,
            `SELECT coalesce(redeliver_after, '-') FROM conversations WHERE id = '${talk}'`
          ),
          "-"
        )
        for (const client of clients) client.close()
        assert.include([0, "SIGTERM"], await second.stop("SIGTERM"))
        second.alive = false
        assert.strictEqual(
          await sql(
            cluster.databaseUrl,
            `SELECT count(*) FROM conversations WHERE id IN ('${talk}', '${other}') AND redeliver_after IS NOT NULL`
          ),
          "0"
        )
      } finally {
        for (const client of clients) client.close()
      }
    }
  )
})
