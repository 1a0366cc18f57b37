/**
 * A conversation that drops a batch instead of handing it over late tells each member's mailbox
 * with its next delivery (`gap`): every connection of the session, on each protocol, then replays
 * from its last message and gets what was dropped, once and in order: also when that last message
 * is newer than the resume window around what was dropped, and when the member was away and comes
 * back with its own cursor (the conversation records what it dropped, and replays read it).
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

describe("delivery gap, a commit that outlasts the resume window", () => {
  // Budget two thirds of 1.5 s: a commit held 2.5 s is handed over past it, and dropped.
  const window = Duration.millis(1500)
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { resumeWindow: window, pollWait: Duration.seconds(2) }))
  })
  afterAll(() => server?.stop())

  const scenarios = [
    ["stays connected", false],
    ["is away when it is dropped, and comes back with its own cursor", true]
  ] as const
  for (const [what, away] of scenarios) {
    it(`a member whose last message is newer than the window around a dropped one still gets it: ${what}`, async () => {
      const [a, b, x] = [`late-a-${away}`, `late-b-${away}`, `late-x-${away}`]
      const aToken = await server.token(a)
      const create = async (sessions: ReadonlyArray<string>) =>
        (await server.post("/inner/create_conversation", { sessions })).body.data.ConversationId as string
      const slow = await create([a, x])
      const other = await create([b, x])
      const first = (await server.post("/send_msg", { conversation_id: slow, content: "first", type: 1 }, aToken))
        .body.data.MsgID as string
      const connectAll = async (cursor: string) => [
        await connectWs(server.url, await server.token(x, 1), cursor),
        await connectSse(server.url, await server.token(x, 2), cursor),
        connectPoll(server.url, await server.token(x, 3), cursor)
      ]
      let clients = await connectAll(first)
      const sql = Context.get(server.context, SqlClient.SqlClient)
      let release = () => {}
      const released = new Promise<void>((resolve) => (release = resolve))
      let locked = () => {}
      const isLocked = new Promise<void>((resolve) => (locked = resolve))
      // Another transaction holds the conversation's row: its next commit waits for it.
      const holder = Effect.runPromise(sql.withTransaction(
        sql`SELECT id FROM conversations WHERE id = ${slow} FOR UPDATE`.pipe(
          Effect.andThen(Effect.sync(locked)),
          Effect.andThen(Effect.promise(() => released))
        )
      ))
      try {
        await sleep(400)
        await isLocked
        const sent = server.post("/send_msg", { conversation_id: slow, content: "late", type: 1 }, aToken)
        await sleep(2200)
        // Meanwhile another conversation (as if on another node) hands the member a newer message:
        // its clients' last message is now more than the window past the one still committing.
        const newer = encode({ millis: Date.now(), seq: 1, conversationType: 0, hash: conversationHash(other) })
        await Effect.runPromise(sql`
          INSERT INTO messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content)
          VALUES (${other}, ${newer}, 1, ${b}, ${new Date().toISOString()}, 0, 1, 'newer')`.pipe(
          Effect.andThen(sql`UPDATE conversations SET last_msg_id = ${newer}, last_seq = 1 WHERE id = ${other}`)
        ))
        Context.get(server.context, LocalMailboxes).get(x)!.deliver([{
          MsgId: newer,
          ConversationID: other,
          FromSession: b,
          SendTime: new Date().toISOString(),
          Status: 0,
          Type: 1,
          Content: "newer",
          Seq: 1
        }])
        for (const c of clients) await c.until((m) => m.some((x) => x.MsgId === newer))
        if (away) {
          for (const c of clients) c.close()
          await sleep(300)
        }
        release()
        await holder
        const reply = (await sent).body
        assert.strictEqual(reply.code, 0, JSON.stringify(reply))
        const late = reply.data.MsgID as string
        // Acknowledged, handed over past its budget: dropped, and the members told of the gap.
        if (away) clients = await connectAll(newer)
        for (const c of clients) await c.until((m) => m.some((x) => x.MsgId === late), 10_000)
        for (const c of clients) {
          assert.deepStrictEqual(c.messages.filter((m) => m.ConversationID === slow).map((m) => m.MsgId), [late])
        }
      } finally {
        release()
        for (const c of clients) c.close()
      }
    })
  }
})

describe("delivery gap, a host that died before telling the members", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { pollWait: Duration.seconds(2) }))
  })
  afterAll(() => server?.stop())

  it("the conversation's next host hands over again from what was dropped lately, before anything new", async () => {
    const [a, x] = ["dead-host-a", "dead-host-x"]
    const id = `dead-host-${crypto.randomUUID()}`
    const sql = Context.get(server.context, SqlClient.SqlClient)
    // The conversation as a host that died left it: two messages older than the resume window, the
    // second dropped for the member and never handed over; no host has it loaded now.
    const at = Date.now() - 60_000
    const ids = [1, 2].map((seq) =>
      encode({ millis: at + seq * 20_000, seq, conversationType: 0, hash: conversationHash(id) })
    )
    await Effect.runPromise(Effect.gen(function* () {
      yield* sql`INSERT INTO conversations (id, conversation_type, last_msg_id, last_seq)
        VALUES (${id}, 0, ${ids[1]}, 2)`
      yield* sql`INSERT INTO conversation_members (conversation_id, session_id, joined_seq) VALUES
        (${id}, ${a}, 0), (${id}, ${x}, 0)`
      for (const [i, msgId] of ids.entries()) {
        yield* sql`INSERT INTO messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content)
          VALUES (${id}, ${msgId}, ${i + 1}, ${a}, ${new Date(at).toISOString()}, 0, 1, ${`old ${i + 1}`})`
      }
    }))
    // The member's clients connect with no cursor (they had the first message on another device).
    const clients = [
      await connectWs(server.url, await server.token(x, 1)),
      await connectSse(server.url, await server.token(x, 2)),
      connectPoll(server.url, await server.token(x, 3))
    ]
    try {
      await sleep(600)
      for (const c of clients) assert.deepStrictEqual(c.messages.map((m) => m.MsgId), [])
      // The host died after recording what it dropped, before telling the members.
      await Effect.runPromise(
        sql`INSERT INTO conversation_gaps (conversation_id, gap_from, gap_to, gap_at)
          VALUES (${id}, ${ids[1]}, ${ids[1]}, ${Date.now()})`
      )
      const reply =
        (await server.post("/send_msg", { conversation_id: id, content: "new", type: 1 }, await server.token(a)))
          .body
      assert.strictEqual(reply.code, 0, JSON.stringify(reply))
      for (const c of clients) await c.until((m) => m.some((x) => x.MsgId === reply.data.MsgID))
      for (const c of clients) assert.deepStrictEqual(c.messages.map((m) => m.MsgId), [ids[1], reply.data.MsgID])
    } finally {
      for (const c of clients) c.close()
    }
  })
})
