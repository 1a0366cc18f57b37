/**
 * Bounds on what a client can grow, each with its setting lowered for the test (PostgreSQL, real
 * sockets): unknown conversation ids start no entity, rates per session and per address answer
 * 429/10008 with Retry-After, live push connections per session, history responses in bytes, a
 * message's content size, and HTTP header and idle timeouts against slow sockets.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import * as Net from "node:net"
import { defaultRateLimits } from "../src/Config.ts"
import { connectSse, connectWs, sleep } from "./support/push.ts"
import { metricValue, settingsFor, startServer, type TestServer } from "./support/server.ts"

const off = { perSecond: 0, burst: 1 }
const offRates = { sends: off, creates: off, joins: off, connects: off, polls: off, marks: off }
/** One refill a few minutes away: what a test takes past the burst is refused, however slow the machine. */
const only = (burst: number) => ({ perSecond: 0.005, burst })

const session = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

/** A POST with the answer's headers. */
const postFull = async (server: TestServer, path: string, body: unknown, token: string) => {
  const res = await fetch(server.url + path, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(body)
  })
  return { status: res.status, retryAfter: res.headers.get("retry-after"), body: await res.json() }
}

const assertTooMany = (reply: { status: number; retryAfter: string | null; body: any }, what: string) => {
  assert.strictEqual(reply.status, 429, `${what}: ${JSON.stringify(reply.body)}`)
  assert.strictEqual(reply.body.code, 10008, what)
  assert.isString(reply.body.error, what)
  assert.isAtLeast(Number(reply.retryAfter), 1, `${what}: Retry-After`)
}

/** A raw WebSocket upgrade of `/notify`: the status line and headers, and the socket (left open). */
const upgrade = (server: TestServer, token: string) =>
  new Promise<{ status: number; head: string; socket: Net.Socket }>((resolve, reject) => {
    const url = new URL(server.url)
    const socket = Net.connect(Number(url.port), url.hostname)
    let head = ""
    socket.on("error", reject)
    socket.on("connect", () =>
      socket.write(
        `GET /notify?protoc=ws&token=${token} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\n`
          + "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
      ))
    socket.on("data", function onData(chunk) {
      head += chunk.toString("latin1")
      const end = head.indexOf("\r\n\r\n")
      if (end < 0) return
      socket.off("data", onData)
      resolve({ status: Number(head.split(" ")[1]), head: head.slice(0, end).toLowerCase(), socket })
    })
  })

const notify = async (server: TestServer, protocol: "sse" | "poll", token: string) => {
  const res = await fetch(`${server.url}/notify?protoc=${protocol}&token=${token}`)
  const retryAfter = res.headers.get("retry-after")
  const body = res.status === 429 ? await res.json() : undefined
  if (res.status !== 429) await res.body?.cancel()
  return { status: res.status, retryAfter, body }
}

describe("bounds: rate limits", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", {
      pollWait: Duration.seconds(1),
      rateLimits: {
        ...defaultRateLimits,
        perSession: {
          sends: only(3),
          creates: only(2),
          joins: only(2),
          connects: only(2),
          polls: only(1),
          marks: only(2)
        },
        // Loopback is exempt by default; here it is limited, for sends only.
        perAddress: { ...offRates, sends: only(6) },
        addressExempt: []
      }
    }))
  }, 60_000)
  afterAll(() => server?.stop())

  it("sends past a session's rate answer 429/10008 with Retry-After; other sessions still send", async () => {
    const [a, b] = [session("rate-a"), session("rate-b")]
    const [ta, tb] = [await server.token(a), await server.token(b)]
    const id = (await server.post("/inner/create_conversation", { sessions: [a, b] })).body.data.ConversationId
    for (let i = 0; i < 3; i++) {
      const ok = await postFull(server, "/send_msg", { conversation_id: id, content: `a${i}` }, ta)
      assert.strictEqual(ok.body.code, 0, JSON.stringify(ok.body))
    }
    assertTooMany(await postFull(server, "/send_msg", { conversation_id: id, content: "a3" }, ta), "4th send")
    // b has its own bucket; the address's (6) runs out after b's third send.
    for (let i = 0; i < 3; i++) {
      const ok = await postFull(server, "/send_msg", { conversation_id: id, content: `b${i}` }, tb)
      assert.strictEqual(ok.body.code, 0, JSON.stringify(ok.body))
    }
    const c = session("rate-c")
    const tc = await server.token(c)
    await server.post("/inner/join_conversation", { conversation_id: id, sessions: [c] })
    assertTooMany(await postFull(server, "/send_msg", { conversation_id: id, content: "c0" }, tc), "per address")
    // Nothing refused was stored.
    const stored = (await server.post("/get_conversation_last_30_msg", { conversation_id: id }, tb)).body.data.Msg
    assert.deepStrictEqual(stored.map((m: any) => m.Content), ["a0", "a1", "a2", "b0", "b1", "b2"])
  })

  it("public creates and joins past a session's rate answer 429/10008; inner endpoints are not limited", async () => {
    const s = session("rate-cj")
    const t = await server.token(s)
    for (let i = 0; i < 2; i++) assert.strictEqual((await postFull(server, "/create_conversation", {}, t)).body.code, 0)
    assertTooMany(await postFull(server, "/create_conversation", {}, t), "3rd create")
    const ids: Array<string> = []
    for (let i = 0; i < 4; i++) {
      const r = await server.post("/inner/create_conversation", { sessions: [session("owner")] })
      assert.strictEqual(r.body.code, 0, "inner create is not limited")
      ids.push(r.body.data.ConversationId)
    }
    for (let i = 0; i < 2; i++) {
      assert.strictEqual((await postFull(server, "/join_conversation", { conversation_id: ids[i] }, t)).body.code, 0)
    }
    assertTooMany(await postFull(server, "/join_conversation", { conversation_id: ids[2] }, t), "3rd join")
    const joined = (await server.post("/get_joined_conversation", {}, t)).body.data.Conversations
    assert.notInclude(joined, ids[2])
  })

  it("push connects and polls past a session's rate answer 429/10008 with Retry-After, ws before upgrading", async () => {
    const t = await server.token(session("rate-push"))
    const ws = await connectWs(server.url, t)
    const sse = await connectSse(server.url, t)
    const refusedWs = await upgrade(server, t)
    assert.strictEqual(refusedWs.status, 429)
    assert.match(refusedWs.head, /retry-after: \d+/)
    refusedWs.socket.destroy()
    const refusedSse = await notify(server, "sse", t)
    assert.strictEqual(refusedSse.status, 429)
    assert.strictEqual(refusedSse.body.code, 10008)
    assert.isAtLeast(Number(refusedSse.retryAfter), 1)
    assert.strictEqual((await notify(server, "poll", t)).status, 204)
    const refusedPoll = await notify(server, "poll", t)
    assert.strictEqual(refusedPoll.status, 429)
    assert.strictEqual(refusedPoll.body.code, 10008)
    assert.isAtLeast(Number(refusedPoll.retryAfter), 1)
    ws.close()
    sse.close()
  })
})

describe("bounds: entities, connections, sizes, timeouts", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", {
      maxConnectionsPerSession: 2,
      maxHistoryBytes: 10_000,
      maxContentBytes: 20_000,
      pollWait: Duration.seconds(1),
      sseHeartbeat: Duration.seconds(1),
      httpTimeouts: {
        headers: Duration.seconds(1),
        request: Duration.seconds(2),
        keepAlive: Duration.seconds(1),
        idle: Duration.seconds(3)
      }
    }))
  }, 60_000)
  afterAll(() => server?.stop())

  it("unknown conversation ids answer 404/90020 and start no Conversation entity", async () => {
    const me = session("unknown")
    const t = await server.token(me)
    // One real conversation, so the activation counter exists.
    const real = (await server.post("/create_conversation", {}, t)).body.data.ConversationId
    assert.strictEqual((await server.post("/send_msg", { conversation_id: real, content: "x" }, t)).body.code, 0)
    const before = await metricValue(server, "quickim_entity_activations_total", `entity="Conversation"`)
    assert.isAtLeast(before, 1)
    const ids = Array.from({ length: 200 }, () => crypto.randomUUID())
    for (let i = 0; i < ids.length; i += 20) {
      const replies = await Promise.all(
        ids.slice(i, i + 20).flatMap((conversation_id) => [
          server.post("/join_conversation", { conversation_id }, t),
          server.post("/send_msg", { conversation_id, content: "x" }, t)
        ])
      )
      for (const r of replies) {
        assert.strictEqual(r.status, 404, JSON.stringify(r.body))
        assert.strictEqual(r.body.code, 90020)
      }
    }
    for (const path of ["/leave_conversation"]) {
      assert.strictEqual((await server.post(path, { conversation_id: ids[0] }, t)).body.code, 90020)
    }
    for (const path of ["/inner/join_conversation", "/inner/kickout_conversation"]) {
      assert.strictEqual((await server.post(path, { conversation_id: ids[1], sessions: [me] })).body.code, 90020)
    }
    assert.strictEqual(await metricValue(server, "quickim_entity_activations_total", `entity="Conversation"`), before)
  })

  it("a session holds at most QUICKIM_MAX_CONNECTIONS_PER_SESSION push connections; a closed one frees its place", async () => {
    const t = await server.token(session("conns"))
    const sse = await connectSse(server.url, t)
    const ws = await connectWs(server.url, t)
    const third = await upgrade(server, t)
    assert.strictEqual(third.status, 429)
    assert.match(third.head, /retry-after: \d+/)
    third.socket.destroy()
    for (const protocol of ["sse", "poll"] as const) {
      const refused = await notify(server, protocol, t)
      assert.strictEqual(refused.status, 429, protocol)
      assert.strictEqual(refused.body.code, 10008, protocol)
      assert.isAtLeast(Number(refused.retryAfter), 1, protocol)
    }
    sse.close()
    let status = 0
    for (let i = 0; i < 100 && status !== 101; i++) {
      const attempt = await upgrade(server, t)
      status = attempt.status
      if (status === 101) ws.close()
      attempt.socket.destroy()
      if (status !== 101) await sleep(50)
    }
    assert.strictEqual(status, 101, "a place is free again once a connection closed")
  })

  it("SSE clients that leave while messages flow free their places at once, time after time", async () => {
    // Two places each, no heartbeat to reveal a dead connection: four sessions connect twenty
    // times each, one connection at a time, and leave while messages keep coming. A place a
    // closed connection kept would soon refuse the next one.
    const own = await startServer(
      settingsFor("embedded", { maxConnectionsPerSession: 2, sseHeartbeat: Duration.minutes(5) })
    )
    let sending = true
    try {
      const sessions = Array.from({ length: 4 }, () => session("sse-again"))
      const tokens = await Promise.all(sessions.map((s) => own.token(s)))
      const c = (await own.post("/inner/create_conversation", { sessions })).body.data.ConversationId
      const sender = (async () => {
        while (sending) {
          assert.strictEqual(
            (await own.post("/send_msg", { conversation_id: c, content: "m" }, tokens[0])).body.code,
            0
          )
          await sleep(20)
        }
      })()
      await Promise.all(tokens.map(async (t, s) => {
        for (let i = 0; i < 20; i++) {
          let client: Awaited<ReturnType<typeof connectSse>> | undefined
          for (let attempt = 0; attempt < 10 && client === undefined; attempt++) {
            client = await connectSse(own.url, t).catch(() => sleep(100).then(() => undefined))
          }
          assert.isDefined(client, `session ${s}: connection ${i + 1} admitted within 1 s`)
          await sleep(Math.random() * 300)
          client!.close()
          await sleep(Math.random() * 100)
        }
      }))
      sending = false
      await sender
    } finally {
      sending = false
      await own.stop()
    }
  })

  it("history answers stop at QUICKIM_MAX_HISTORY_BYTES on a message boundary, at least one message", async () => {
    const me = session("history")
    const t = await server.token(me)
    const id = (await server.post("/create_conversation", {}, t)).body.data.ConversationId
    const sent: Array<string> = []
    for (let i = 0; i < 10; i++) {
      const r = await server.post("/send_msg", { conversation_id: id, content: `${i}:${"y".repeat(3000)}` }, t)
      sent.push(r.body.data.MsgID)
    }
    const ids = (path: string, body: object) =>
      server.post(path, { conversation_id: id, ...body }, t).then((r) => r.body.data.Msg.map((m: any) => m.MsgId))
    // 3 messages of ~3.2 KB fit in 10,000 bytes, a 4th would not.
    assert.deepStrictEqual(await ids("/get_conversation_last_30_msg", {}), sent.slice(7))
    assert.deepStrictEqual(await ids("/get_conversation_last_30_msg", { desc: true }), sent.slice(7).reverse())
    assert.deepStrictEqual(await ids("/get_conversation_30msg_before_the_id", { msg_id: sent[7] }), sent.slice(4, 7))
    assert.deepStrictEqual(await ids("/get_conversation_30msg_after_the_id", { msg_id: sent[0] }), sent.slice(1, 4))
    // A range pages on from the last id it got (which comes again first).
    const paged: Array<string> = []
    let start = sent[0]
    for (let i = 0; i < 10 && paged.at(-1) !== sent[9]; i++) {
      const page = await ids("/get_conversation_msg_by_range", { start_msg_id: start, end_msg_id: sent[9] })
      assert.isAtMost(page.length, 3)
      paged.push(...(paged.length === 0 ? page : page.slice(1)))
      start = page.at(-1)
    }
    assert.deepStrictEqual(paged, sent)
    // One message larger than the bound still comes, alone.
    const big = await server.post("/send_msg", { conversation_id: id, content: "z".repeat(15_000) }, t)
    assert.deepStrictEqual(await ids("/get_conversation_last_30_msg", {}), [big.body.data.MsgID])
    assert.deepStrictEqual(await ids("/get_conversation_lastone_msg", {}), [big.body.data.MsgID])
  })

  it("content larger than QUICKIM_MAX_CONTENT_BYTES (UTF-8) answers 413/10005 naming content", async () => {
    const t = await server.token(session("content"))
    const id = (await server.post("/create_conversation", {}, t)).body.data.ConversationId
    // 10,001 characters, 20,002 bytes: over by bytes, not by characters.
    const over = await server.post("/send_msg", { conversation_id: id, content: "é".repeat(10_001) }, t)
    assert.strictEqual(over.status, 413)
    assert.strictEqual(over.body.code, 10005)
    assert.include(over.body.error, "content")
    assert.strictEqual(
      (await server.post("/send_msg", { conversation_id: id, content: "é".repeat(10_000) }, t)).body.code,
      0
    )
    const stored = (await server.post("/get_conversation_last_30_msg", { conversation_id: id }, t)).body.data.Msg
    assert.strictEqual(stored.length, 1)
  })

  it(
    "300 slow sockets do not stop a new client, the server closes them after the header timeout, and push connections outlive the timeouts",
    {
      timeout: 60_000
    },
    async () => {
      const me = session("slow")
      const t = await server.token(me)
      const id = (await server.post("/create_conversation", {}, t)).body.data.ConversationId
      const ws = await connectWs(server.url, t)
      const sse = await connectSse(server.url, t)
      const opened = Date.now()
      const url = new URL(server.url)
      let closed = 0
      const sockets = Array.from({ length: 300 }, (_, i) => {
        const socket = Net.connect(Number(url.port), url.hostname)
        socket.on("error", () => {})
        socket.on("close", () => closed++)
        socket.on("data", () => {})
        // Half send a partial request head and stop; half send nothing at all.
        if (i % 2 === 0) socket.on("connect", () => socket.write("POST /send_msg HTTP/1.1\r\nHost: x\r\n"))
        return socket
      })
      await sleep(200)
      const fresh = await server.post("/get_joined_conversation", {}, t)
      assert.strictEqual(fresh.body.code, 0)
      for (let i = 0; i < 200 && closed < sockets.length; i++) await sleep(100)
      assert.strictEqual(closed, sockets.length, "the server closed every slow socket")
      // Past the header, request, keep-alive and idle timeouts (the idle one is at least the poll wait
      // plus 10 s), the push connections still deliver.
      await sleep(Math.max(0, opened + 12_000 - Date.now()))
      const sent = (await server.post("/send_msg", { conversation_id: id, content: "still here" }, t)).body.data.MsgID
      await ws.until((m) => m.some((x) => x.MsgId === sent))
      await sse.until((m) => m.some((x) => x.MsgId === sent))
      ws.close()
      sse.close()
    }
  )
})
