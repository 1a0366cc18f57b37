/**
 * Push end to end over real sockets: each protocol, multi-device, membership changes, resume
 * after a forced disconnect mid-burst, and slow consumers.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Context, Duration } from "effect"
import type { MsgData } from "../src/domain/Conversation.ts"
import { LocalMailboxes } from "../src/push/LocalMailboxes.ts"
import {
  connect,
  connectPoll,
  connectSse,
  connectWs,
  dedupe,
  type Protocol,
  sleep,
  stalledClient,
  wsUpgradeHeaders
} from "./support/push.ts"
import { metricValue, settingsFor, startServer, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`
const PROTOCOLS: ReadonlyArray<Protocol> = ["ws", "sse", "poll"]

describe("push", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("embedded", { pollWait: Duration.seconds(2) }))
  })
  afterAll(() => server?.stop())

  const session = async (platform = 1) => {
    const sid = unique("s")
    return { sid, token: await server.token(sid, platform) }
  }
  const conversationOf = async (...sessions: Array<string>) =>
    (await server.post("/inner/create_conversation", { sessions })).body.data.ConversationId as string
  const send = async (token: string, conversation_id: string, content: string) => {
    const reply = await server.post("/send_msg", { conversation_id, content, type: 1 }, token)
    assert.strictEqual(reply.body.code, 0, JSON.stringify(reply.body))
    return reply.body.data.MsgID as string
  }
  /** A poll client only exists from its first request on. */
  const settle = (protocol: Protocol) => sleep(protocol === "poll" ? 400 : 50)

  for (const protocol of PROTOCOLS) {
    it(`${protocol}: a member receives each message once, as the MsgData of history`, async () => {
      const a = await session()
      const b = await session(2)
      const id = await conversationOf(a.sid, b.sid)
      const client = await connect(protocol, server.url, b.token)
      await settle(protocol)
      try {
        const ids = [await send(a.token, id, "one"), await send(a.token, id, "two"), await send(a.token, id, "three")]
        await client.until((m) => m.length >= 3)
        await sleep(200)
        assert.deepStrictEqual(client.messages.map((m) => m.MsgId), ids)
        const history =
          (await server.post("/get_conversation_last_30_msg", { conversation_id: id }, b.token)).body.data.Msg
        assert.deepStrictEqual(client.messages, history)
      } finally {
        client.close()
      }
    })

    it(`${protocol}: resumes after a forced disconnect mid-burst with nothing lost`, async () => {
      const a = await session()
      const b = await session(3)
      const id = await conversationOf(a.sid, b.sid)
      const first = await connect(protocol, server.url, b.token)
      await settle(protocol)
      const burst = (async () => {
        const ids: Array<string> = []
        for (let i = 0; i < 120; i++) ids.push(await send(a.token, id, `m${i}`))
        return ids
      })()
      await first.until((m) => m.length >= 20)
      first.close()
      const seen = [...first.messages]
      const cursor = seen[seen.length - 1].MsgId
      await sleep(100)
      const second = await connect(protocol, server.url, b.token, cursor)
      const sent = await burst
      try {
        await second.until((m) => dedupe([...seen, ...m]).length >= sent.length)
        const all = dedupe([...seen, ...second.messages]).map((m) => m.MsgId)
        assert.deepStrictEqual(all, sent, "every message once, in order")
      } finally {
        second.close()
      }
    })
  }

  it("every device of a session receives, including the sender's own other devices", async () => {
    const a = await session(1)
    const aPhone = await server.token(a.sid, 2)
    const b = await session()
    const id = await conversationOf(a.sid, b.sid)
    const clients = [
      await connectWs(server.url, a.token),
      await connectWs(server.url, a.token), // a second connection on the same platform
      await connectSse(server.url, aPhone),
      await connectWs(server.url, b.token)
    ]
    try {
      const msgId = await send(a.token, id, "to everyone")
      for (const c of clients) await c.until((m) => m.some((x) => x.MsgId === msgId))
    } finally {
      for (const c of clients) c.close()
    }
  })

  it("a kicked member gets nothing more; a new member receives from the moment it joined", async () => {
    const a = await session()
    const b = await session()
    const c = await session()
    const id = await conversationOf(a.sid, b.sid)
    const before = await send(a.token, id, "before c joined")
    const bClient = await connectWs(server.url, b.token)
    const cClient = await connectWs(server.url, c.token, before)
    try {
      await server.post("/inner/join_conversation", { conversation_id: id, sessions: [c.sid] })
      const joined = await send(a.token, id, "after c joined")
      await cClient.until((m) => m.some((x) => x.MsgId === joined))
      await server.post("/inner/kickout_conversation", { conversation_id: id, sessions: [b.sid] })
      const afterKick = await send(a.token, id, "after b was kicked")
      await cClient.until((m) => m.some((x) => x.MsgId === afterKick))
      await sleep(300)
      assert.notInclude(bClient.messages.map((m) => m.MsgId), afterKick)
      assert.notInclude(cClient.messages.map((m) => m.MsgId), before, "nothing from before joining, even on resume")
      // A resume after the kick does not hand the kicked member anything either.
      const resumed = await connectWs(server.url, b.token, joined)
      await sleep(300)
      assert.deepStrictEqual(resumed.messages, [])
      resumed.close()
    } finally {
      bClient.close()
      cClient.close()
    }
  })

  for (const protocol of PROTOCOLS) {
    it(`${protocol}: a member with no live connection is handed nothing (no Mailbox starts for it) and replays what it missed when it connects`, async () => {
      const a = await session()
      const b = await session(2)
      const id = await conversationOf(a.sid, b.sid)
      const local = Context.get(server.context, LocalMailboxes)
      const m0 = await send(a.token, id, "before")
      const missed = [await send(a.token, id, "one"), await send(a.token, id, "two")]
      await sleep(300)
      assert.isUndefined(local.get(b.sid), "no Mailbox was started for the offline member")
      const client = await connect(protocol, server.url, b.token, m0)
      try {
        await client.until((m) => m.length >= 2)
        await sleep(200)
        assert.deepStrictEqual(client.messages.map((m) => m.MsgId), missed)
      } finally {
        client.close()
      }
    })
  }

  it("ws and sse connections wake no Mailbox entity; a poll of the same session wakes it, and all three get what follows", async () => {
    const activations = () => metricValue(server, "quickim_entity_activations_total", `entity="Mailbox"`)
    const a = await session()
    const b = await session(2)
    const id = await conversationOf(a.sid, b.sid)
    const before = await activations()
    const ws = await connect("ws", server.url, b.token)
    const sse = await connect("sse", server.url, await server.token(b.sid, 3))
    await settle("sse")
    try {
      const first = await send(a.token, id, "first")
      await ws.until((m) => m.length >= 1)
      await sse.until((m) => m.length >= 1)
      assert.strictEqual(await activations(), before, "an idle connection costs no entity")
      const poll = connectPoll(server.url, await server.token(b.sid, 5))
      await settle("poll")
      try {
        assert.strictEqual(await activations(), before + 1, "the poll woke the session's Mailbox")
        const second = await send(a.token, id, "second")
        await Promise.all([ws, sse, poll].map((c) => c.until((m) => m.some((x) => x.MsgId === second))))
        await sleep(200)
        assert.deepStrictEqual(ws.messages.map((m) => m.MsgId), [first, second])
        assert.deepStrictEqual(sse.messages.map((m) => m.MsgId), [first, second])
        assert.deepStrictEqual(poll.messages.map((m) => m.MsgId), [second])
      } finally {
        poll.close()
      }
    } finally {
      ws.close()
      sse.close()
    }
  })

  it("the session's mailbox here goes with its last connection: closed connections leave nothing behind", async () => {
    const local = Context.get(server.context, LocalMailboxes)
    const a = await session()
    const b = await session(2)
    const id = await conversationOf(a.sid, b.sid)
    const clients = [await connect("ws", server.url, b.token), await connect("sse", server.url, b.token)]
    await settle("sse")
    assert.isDefined(local.get(b.sid), "the connections registered with the session's mailbox")
    const first = await send(a.token, id, "first")
    await Promise.all(clients.map((c) => c.until((m) => m.some((x) => x.MsgId === first))))
    clients[0].close()
    await sleep(300)
    assert.isDefined(local.get(b.sid), "one connection left")
    clients[1].close()
    for (let i = 0; i < 50 && local.get(b.sid) !== undefined; i++) await sleep(100)
    assert.isUndefined(local.get(b.sid), "no connection left, no mailbox")
  })

  it("poll: what arrives between polls comes with the next poll, in order", async () => {
    const a = await session()
    const b = await session(5)
    const id = await conversationOf(a.sid, b.sid)
    const first = await fetch(`${server.url}/notify?protoc=poll&token=${b.token}`)
    assert.strictEqual(first.status, 204)
    const ids = [await send(a.token, id, "x"), await send(a.token, id, "y")]
    const got: Array<string> = []
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${server.url}/notify?protoc=poll&token=${b.token}`)
      assert.strictEqual(res.status, 200)
      got.push(((await res.json()) as MsgData).MsgId)
    }
    assert.deepStrictEqual(got, ids)
    const empty = await fetch(`${server.url}/notify?protoc=poll&token=${b.token}`)
    assert.strictEqual(empty.status, 204)
  })

  it("poll: a cursor equal to the last answer repeats nothing; an older one brings back what followed it", async () => {
    const a = await session()
    const b = await session(5)
    const one = await conversationOf(a.sid, b.sid)
    const two = await conversationOf(a.sid, b.sid)
    const poll = async (cursor?: string) => {
      const res = await fetch(
        `${server.url}/notify?protoc=poll&token=${b.token}${cursor ? `&last_msg_id=${cursor}` : ""}`
      )
      if (res.status === 204) return undefined
      assert.strictEqual(res.status, 200)
      return ((await res.json()) as MsgData).MsgId
    }
    assert.strictEqual(await poll(), undefined)
    const sent = [await send(a.token, one, "x"), await send(a.token, two, "p"), await send(a.token, one, "y")]
    // A client that sends its cursor with every poll gets each message once: a cursor that
    // re-opened the position every time would repeat the other conversation's recent messages.
    const got: Array<string> = []
    let cursor: string | undefined = undefined
    for (;;) {
      const next = await poll(cursor)
      if (next === undefined) break
      got.push(next)
      cursor = next
    }
    assert.deepStrictEqual(got, sent)
    // The answer with `y` was "lost": polling with the cursor before it brings `y` again.
    const again: Array<string> = []
    for (let next = await poll(sent[1]); next !== undefined; next = await poll(next)) again.push(next)
    assert.include(again, sent[2])
  })

  it("refuses unknown protocols (90013) and bad tokens (10101) with the envelope", async () => {
    const { token } = await session()
    const bad = await fetch(`${server.url}/notify?protoc=mqtt&token=${token}`)
    assert.strictEqual(bad.status, 400)
    assert.strictEqual(((await bad.json()) as any).code, 90013)
    const noToken = await fetch(`${server.url}/notify?protoc=sse`)
    assert.strictEqual(noToken.status, 401)
    assert.strictEqual(((await noToken.json()) as any).code, 10101)
    const wsBad = await connectWs(server.url, "forged").then(() => "opened", () => "refused")
    assert.strictEqual(wsBad, "refused")
    const cursor = await fetch(`${server.url}/notify?protoc=sse&token=${token}&last_msg_id=nope`)
    assert.strictEqual(((await cursor.json()) as any).code, 10001)
  })
})

describe("slow consumers", () => {
  it("readers that stop reading are cut off with a reason; the sender and other members are not slowed", async () => {
    const server = await startServer(settingsFor("embedded", { connectionBuffer: 50, wsMaxBufferedBytes: 256 * 1024 }))
    try {
      const sids = [unique("sender"), unique("fast"), unique("stalled")]
      const [sender, fast, stalled] = await Promise.all(sids.map((s) => server.token(s)))
      const id = (await server.post("/inner/create_conversation", { sessions: sids })).body.data.ConversationId
      const fastClient = await connectWs(server.url, fast)
      const stalledSse = await stalledClient(`${server.url}/notify?protoc=sse&token=${stalled}`)
      const stalledWs = await stalledClient(`${server.url}/notify?protoc=ws&token=${stalled}`, wsUpgradeHeaders)
      // ~16 MB in all: more than loopback socket buffers hold.
      const content = "x".repeat(16_000)
      const sent: Array<string> = []
      for (let i = 0; i < 1000; i++) {
        const r = await server.post("/send_msg", { conversation_id: id, content }, sender)
        assert.strictEqual(r.body.code, 0)
        sent.push(r.body.data.MsgID)
      }
      await fastClient.until((m) => m.length >= sent.length, 30_000)
      assert.deepStrictEqual(fastClient.messages.map((m) => m.MsgId), sent)
      fastClient.close()
      const sseText = await stalledSse.drain(10_000)
      assert.include(sseText, "event: error")
      assert.include(sseText, "slow consumer")
      const wsBytes = await stalledWs.drain(10_000)
      assert.include(wsBytes, "101 Switching Protocols")
      // The close frame carries code 4008 and a reason telling the client to resume.
      assert.include(wsBytes, "\x0f\xa8slow consumer: reconnect with last_msg_id")
    } finally {
      await server.stop()
    }
  })
})
