/**
 * Push memory is bounded in bytes on PostgreSQL: readers that stop reading are cut off once their
 * bytes pass the bound (whatever the message count), a resume then replays everything a page at a
 * time at the reader's pace, a poll client far behind reads its backlog a page per few polls, and a
 * poller whose queue passes its byte bound loses nothing: it reads the rest back from SQL, in order.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import type { MsgData } from "../src/domain/Conversation.ts"
import { connectSse, connectWs, dedupe, sleep, stalledClient, wsUpgradeHeaders } from "./support/push.ts"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

/** Sums the samples of metric `name` (with `le` when given) in the server's /metrics text. */
const metric = async (server: TestServer, name: string, le?: string) => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  let sum = 0
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-z_]+)(?:\{(.*)\})? (\S+)$/)
    if (m === null || m[1] !== name) continue
    if (le !== undefined && !(m[2] ?? "").includes(`le="${le}"`)) continue
    sum += Number(m[3])
  }
  return sum
}

/** Polls one message at a time, always sending the last answer as its cursor (as docs/api.md asks). */
const poller = (server: TestServer, token: string, cursor: string | undefined) => {
  const messages: Array<MsgData> = []
  let last = cursor
  const pollOnce = async () => {
    const res = await fetch(`${server.url}/notify?protoc=poll&token=${token}${last ? `&last_msg_id=${last}` : ""}`)
    if (res.status !== 200) {
      await res.body?.cancel()
      return undefined
    }
    const message = (await res.json()) as MsgData
    messages.push(message)
    last = message.MsgId
    return message
  }
  return { messages, pollOnce }
}

const byConversation = (messages: ReadonlyArray<MsgData>) => {
  const out = new Map<string, Array<string>>()
  for (const m of messages) {
    const list = out.get(m.ConversationID) ?? []
    list.push(m.MsgId)
    out.set(m.ConversationID, list)
  }
  return out
}

describe("push bounds", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", {
      // The message count never binds here: only bytes do.
      connectionBuffer: 100_000,
      connectionBufferBytes: 256 * 1024,
      wsMaxBufferedBytes: 256 * 1024,
      replayPageBytes: 64 * 1024,
      pollPendingBytes: 64 * 1024,
      pollWait: Duration.seconds(1)
    }))
  })
  afterAll(() => server?.stop())

  const send = async (token: string, conversation_id: string, content: string) => {
    const reply = await server.post("/send_msg", { conversation_id, content, type: 1 }, token)
    assert.strictEqual(reply.body.code, 0, JSON.stringify(reply.body))
    return reply.body.data.MsgID as string
  }

  it("non-reading ws and sse readers are cut off by bytes; a resume replays everything, a page at a time", async () => {
    const sids = [unique("sender"), unique("stalled")]
    const [sender, stalled] = await Promise.all(sids.map((s) => server.token(s)))
    const id = (await server.post("/inner/create_conversation", { sessions: sids })).body.data.ConversationId
    const cursor = await send(sender, id, "before")
    const stalledSse = await stalledClient(`${server.url}/notify?protoc=sse&token=${stalled}`)
    const stalledWs = await stalledClient(`${server.url}/notify?protoc=ws&token=${stalled}`, wsUpgradeHeaders)
    // 200 messages of 50 KB (10 MB): more than loopback socket buffers hold, far fewer than the count bound.
    const content = "x".repeat(50_000)
    const sent: Array<string> = []
    for (let i = 0; i < 200; i++) sent.push(await send(sender, id, content))
    const sseText = await stalledSse.drain(10_000)
    assert.include(sseText, "event: error")
    assert.include(sseText, `"code":10007`)
    const wsBytes = await stalledWs.drain(10_000)
    assert.include(wsBytes, "\x0f\xa8slow consumer: reconnect with last_msg_id")

    const pagesBefore = await metric(server, "quickim_replay_pages_total")
    const boundedBefore = await metric(server, "quickim_replay_page_bytes_bucket", "262144")
    const ws = await connectWs(server.url, stalled, cursor)
    const sse = await connectSse(server.url, stalled, cursor)
    await ws.until((m) => m.length >= sent.length, 60_000)
    await sse.until((m) => m.length >= sent.length, 60_000)
    ws.close()
    sse.close()
    assert.deepStrictEqual(dedupe(ws.messages).map((m) => m.MsgId), sent)
    assert.deepStrictEqual(dedupe(sse.messages).map((m) => m.MsgId), sent)
    assert.deepStrictEqual(sse.errors, [])
    // Each replay read 10 MB in pages of 64 KB plus at most one message: many pages, none large.
    const pages = (await metric(server, "quickim_replay_pages_total")) - pagesBefore
    assert.isAtLeast(pages, 2 * Math.floor((200 * 50_000) / (64 * 1024 + 50_300)))
    assert.strictEqual((await metric(server, "quickim_replay_page_bytes_bucket", "262144")) - boundedBefore, pages)
  })

  it("poll: a cursor far back gets everything in order, read a page at a time as the polls take it", async () => {
    const sids = [unique("sender"), unique("poller")]
    const [sender, polling] = await Promise.all(sids.map((s) => server.token(s)))
    const a = (await server.post("/inner/create_conversation", { sessions: sids })).body.data.ConversationId
    const b = (await server.post("/inner/create_conversation", { sessions: sids })).body.data.ConversationId
    const cursor = await send(sender, a, "before")
    const content = "y".repeat(10_000)
    const sent: Array<MsgData["MsgId"]> = []
    for (let i = 0; i < 300; i++) sent.push(await send(sender, i % 3 === 0 ? b : a, content))

    const pagesBefore = await metric(server, "quickim_replay_pages_total")
    const client = poller(server, polling, cursor)
    while (client.messages.length < sent.length) {
      const got = await client.pollOnce()
      assert.isDefined(got, `poll came back empty after ${client.messages.length} messages`)
      if (client.messages.length % 50 === 0) {
        // A page holds 7 of these messages (64 KB): never more pages read than the polls took, plus one.
        const pages = (await metric(server, "quickim_replay_pages_total")) - pagesBefore
        assert.isAtMost(pages, Math.ceil(client.messages.length / 6) + 1)
      }
    }
    // A replay goes in MsgId order. Two sends to different conversations within one millisecond
    // share the time part, so their MsgIds order them by conversation, not by which was sent first:
    // the expected order is the MsgIds', which within each conversation is the order sent.
    assert.deepStrictEqual(client.messages.map((m) => m.MsgId), [...sent].sort())
    const pages = (await metric(server, "quickim_replay_pages_total")) - pagesBefore
    assert.isAtLeast(pages, Math.floor(300 / 7))
  })

  it("poll: a poller that falls behind past its byte bound loses nothing; the rest comes from SQL in order", async () => {
    const sids = [unique("sender"), unique("poller")]
    const [sender, polling] = await Promise.all(sids.map((s) => server.token(s)))
    const a = (await server.post("/inner/create_conversation", { sessions: sids })).body.data.ConversationId
    const b = (await server.post("/inner/create_conversation", { sessions: sids })).body.data.ConversationId
    // Polling from "first" on: nothing follows it yet, so the poll waits and answers 204, and the
    // platform's queue exists from then on.
    const first = await send(sender, a, "first")
    const client = poller(server, polling, first)
    assert.isUndefined(await client.pollOnce())

    const overflowsBefore = await metric(server, "quickim_poll_overflows_total")
    const content = "z".repeat(10_000)
    const sent: Array<MsgData> = []
    const sendSome = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const conversation = i % 2 === 0 ? a : b
        sent.push({ MsgId: await send(sender, conversation, content), ConversationID: conversation } as MsgData)
      }
    }
    // 1 MB while the poller is away: 16 times its bound.
    await sendSome(100)
    // Then more while it polls: live messages and the replay meet.
    let done = false
    const more = sendSome(100).then(() => (done = true))
    let empty = 0
    while (client.messages.length < 200) {
      const got = await client.pollOnce()
      empty = got === undefined && done ? empty + 1 : 0
      assert.isBelow(empty, 3, `polls came back empty with ${client.messages.length} of 200 messages`)
    }
    await more
    assert.isAtLeast((await metric(server, "quickim_poll_overflows_total")) - overflowsBefore, 1)
    const received = client.messages
    assert.strictEqual(dedupe(received).length, received.length, "no message twice")
    assert.deepStrictEqual(byConversation(received), byConversation(sent))
  })
})
