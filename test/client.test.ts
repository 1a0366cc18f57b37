/**
 * The client SDK against a real server on PostgreSQL: the typed calls, and the push subscriber's
 * reconnect, resume and dedupe when a real TCP proxy between it and the server cuts every
 * connection mid-burst (ws, sse, poll), as the Effect Stream and as the async iterator.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Fiber, Option, Stream } from "effect"
import { spawn } from "node:child_process"
import * as Net from "node:net"
import * as Path from "node:path"
import {
  type LiveEvent,
  makeClient,
  type MsgData,
  type PushProtocol,
  PushRefused,
  type PushState
} from "../src/client/index.ts"
import { denoBin, root } from "./support/process.ts"
import { sleep } from "./support/push.ts"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

/** A loopback TCP proxy to `target` whose `cut()` drops every connection through it, as a network fault would. */
const startProxy = async (target: URL) => {
  const sockets = new Set<Net.Socket>()
  let accepted = 0
  let dropNextResponse = false
  const server = Net.createServer((client) => {
    accepted++
    const upstream = Net.connect(Number(target.port), target.hostname)
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on("close", () => sockets.delete(s))
      s.on("error", () => s.destroy())
    }
    client.pipe(upstream)
    upstream.on("data", (data) => {
      // A response lost on the way: the connection breaks just as the answer arrives.
      if (dropNextResponse) {
        dropNextResponse = false
        client.destroy()
        upstream.destroy()
      } else client.write(data)
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  return {
    url: `http://127.0.0.1:${(server.address() as Net.AddressInfo).port}`,
    /** Connections accepted so far. */
    accepted: () => accepted,
    /** The next bytes the server sends are dropped with their connection. */
    dropNextResponse: () => (dropNextResponse = true),
    cut: () => {
      for (const s of sockets) s.destroy()
    },
    close: () => {
      for (const s of sockets) s.destroy()
      server.close()
    }
  }
}

describe("client SDK", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())

  it("covers the endpoints: tokens, conversations, sends with client_msg_id, history, membership, archive", async () => {
    await Effect.runPromise(Effect.gen(function* () {
      const admin = yield* makeClient({ baseUrl: server.url })
      const alice = unique("alice")
      const bob = unique("bob")
      const carol = unique("carol")
      const im = yield* admin.as(yield* admin.token(alice))
      const conversation = yield* admin.createConversation([alice, bob])
      assert.deepStrictEqual(yield* im.joined, [conversation])
      const ids: Array<string> = []
      for (let i = 0; i < 35; i++) ids.push(yield* im.send(conversation, `m${i}`, { clientMsgId: `c${i}` }))
      assert.strictEqual(yield* im.send(conversation, "again", { clientMsgId: "c0" }), ids[0])
      const last = yield* im.last30(conversation)
      assert.deepStrictEqual(last.map((m) => m.MsgId), ids.slice(5))
      assert.deepStrictEqual((yield* im.before(conversation, ids[5])).map((m) => m.MsgId), ids.slice(0, 5))
      assert.deepStrictEqual((yield* im.after(conversation, ids[29])).map((m) => m.MsgId), ids.slice(30))
      assert.deepStrictEqual(yield* im.lastMsgId(conversation), Option.some(ids[34]))
      assert.strictEqual((yield* im.detail(conversation)).LastMsgID, ids[34])
      // The raw generated client reaches every documented endpoint, e.g. one without a helper.
      const check = yield* im.api.conversation.check_joined_conversation({ payload: { conversation_id: conversation } })
      assert.isTrue(check.data.Joined)

      yield* admin.join(conversation, [carol])
      const carolIm = yield* admin.as(yield* admin.token(carol))
      assert.deepStrictEqual(yield* carolIm.joined, [conversation])
      yield* admin.kick(conversation, [carol])
      const refused = yield* Effect.flip(carolIm.send(conversation, "gone"))
      assert.strictEqual((refused as { code?: number }).code, 90021)
      yield* admin.archive([conversation])
      assert.isTrue((yield* im.detail(conversation)).IsArchive)
      const view = yield* admin.cluster
      assert.strictEqual(view.Mode, "single")
    }))
  })

  it("read state: typed calls, and typed live events beside the messages on every protocol", async () => {
    await Effect.runPromise(Effect.gen(function* () {
      const admin = yield* makeClient({ baseUrl: server.url })
      const alice = unique("alice")
      const bob = unique("bob")
      const im = yield* admin.as(yield* admin.token(alice))
      const bobIm = yield* admin.as(yield* admin.token(bob))
      const conversation = yield* admin.createConversation([alice, bob], 0, { name: "Support", extra: "{}" })
      yield* admin.updateConversation(conversation, { name: "Support desk" })
      const events: Record<string, Array<LiveEvent>> = { ws: [], sse: [], poll: [] }
      const received: Record<string, Array<MsgData>> = { ws: [], sse: [], poll: [] }
      const fibers = []
      for (const protocol of ["ws", "sse", "poll"] as const) {
        const token = yield* admin.token(bob, protocol === "ws" ? 1 : protocol === "sse" ? 2 : 3)
        const bobOn = yield* admin.as(token)
        fibers.push(
          yield* bobOn.subscribe({ protocol, events: ["read", "typing"], onEvent: (e) => events[protocol].push(e) })
            .pipe(
              Stream.runForEach((m) => Effect.sync(() => received[protocol].push(m))),
              Effect.forkDetach
            )
        )
      }
      // Until every subscription is registered: each has a message.
      for (let i = 0; i < 100 && Object.values(received).some((r) => r.length === 0); i++) {
        yield* im.send(conversation, `m${i}`)
        yield* Effect.sleep("50 millis")
      }
      const last = Option.getOrThrow(yield* im.lastMsgId(conversation))
      const unread = yield* bobIm.unread([conversation])
      assert.strictEqual(unread.Total, unread.Conversations[0].Unread)
      assert.isAbove(unread.Total, 0)
      assert.deepStrictEqual(yield* bobIm.markRead(conversation, last), {
        ReadMsgId: last,
        ReadSeq: unread.Total,
        Unread: 0
      })
      yield* im.typing(conversation)
      const inbox = yield* bobIm.inbox(10)
      assert.strictEqual(inbox.Conversations[0].ConversationId, conversation)
      assert.strictEqual(inbox.Conversations[0].Name, "Support desk")
      assert.strictEqual(inbox.Conversations[0].LastMsg?.MsgId, last)
      assert.isNull(inbox.NextCursor)
      const members = yield* im.members(conversation)
      assert.deepStrictEqual(
        members.Members.map((m) => [m.Session, m.ReadMsgId]).sort(),
        [[alice, last], [bob, last]].sort()
      )
      for (let i = 0; i < 200 && Object.values(events).some((e) => e.length < 2); i++) yield* Effect.sleep("25 millis")
      for (const protocol of ["ws", "sse", "poll"]) {
        assert.deepStrictEqual(events[protocol], [
          { Event: "read", ConversationId: conversation, Session: bob, ReadMsgId: last, ReadSeq: unread.Total },
          { Event: "typing", ConversationId: conversation, Session: alice }
        ], protocol)
        assert.isTrue(received[protocol].every((m) => typeof m.Seq === "number"))
      }
      for (const fiber of fibers) yield* Fiber.interrupt(fiber)
    }))
  })

  for (const protocol of ["ws", "sse", "poll"] as const) {
    it(`${protocol}: the subscriber reconnects after every connection is cut and delivers each message once, in order`, async () => {
      const proxy = await startProxy(new URL(server.url))
      try {
        const alice = unique("alice")
        const bob = unique("bob")
        const received: Array<MsgData> = []
        const states: Array<PushState["_tag"]> = []
        await Effect.runPromise(Effect.gen(function* () {
          const admin = yield* makeClient({ baseUrl: server.url })
          const aliceIm = yield* admin.as(yield* admin.token(alice))
          const conversations = [
            yield* admin.createConversation([alice, bob]),
            yield* admin.createConversation([alice, bob])
          ]
          // Bob listens through the proxy; Alice sends straight to the server, so sends go on while he is cut off.
          const bobIm = yield* makeClient({ baseUrl: proxy.url, token: yield* admin.token(bob) })
          const fiber = yield* bobIm.subscribe({
            protocol: protocol as PushProtocol,
            minDelayMs: 50,
            maxDelayMs: 200,
            onState: (s) => states.push(s._tag)
          }).pipe(Stream.runForEach((m) => Effect.sync(() => received.push(m))), Effect.forkChild)
          yield* Effect.promise(async () => {
            for (let i = 0; i < 100 && !states.includes("Open"); i++) await sleep(20)
          })
          const sent: Array<string> = []
          let acceptedAtCut = 0
          for (let i = 0; i < 60; i++) {
            sent.push(yield* aliceIm.send(conversations[i % 2], `m${i}`))
            if (i === 20 || i === 40) {
              acceptedAtCut = proxy.accepted()
              proxy.cut()
            }
            // A few sends go out while Bob is cut off; then he must have come back before the next cut.
            if (i === 25 || i === 45) {
              yield* Effect.promise(async () => {
                for (let k = 0; k < 200 && proxy.accepted() === acceptedAtCut; k++) await sleep(20)
              })
            }
          }
          yield* Effect.promise(async () => {
            for (let i = 0; i < 300 && received.length < sent.length; i++) await sleep(50)
          })
          yield* Fiber.interrupt(fiber)
          const ids = received.map((m) => m.MsgId)
          assert.strictEqual(new Set(ids).size, ids.length, "a message was delivered twice")
          assert.deepStrictEqual([...ids].sort(), [...sent].sort(), "what was received is not what was sent")
          for (const c of conversations) {
            const mine = received.filter((m) => m.ConversationID === c).map((m) => m.MsgId)
            assert.deepStrictEqual(mine, [...mine].sort(), "out of order within a conversation")
          }
        }))
        // The cuts were real: new connections came through the proxy after each. A stream (ws, sse)
        // sees its connection close and opens again; an idempotent poll request the runtime's
        // fetch may simply retry on a new connection.
        assert.isAtLeast(proxy.accepted(), 3)
        if (protocol !== "poll") {
          assert.isAtLeast(states.filter((s) => s === "Closed").length, 2, states.join(","))
          assert.isAtLeast(states.filter((s) => s === "Open").length, 3, states.join(","))
        }
      } finally {
        proxy.close()
      }
    })
  }

  it("the async iterator yields the same stream; a refused token ends it with PushRefused", async () => {
    const alice = unique("alice")
    const admin = await Effect.runPromise(makeClient({ baseUrl: server.url }))
    const token = await Effect.runPromise(admin.token(alice))
    const im = await Effect.runPromise(admin.as(token))
    const conversation = await Effect.runPromise(admin.createConversation([alice]))
    const got: Array<string> = []
    const reading = (async () => {
      for await (const m of im.messages({ protocol: "sse" })) {
        got.push(m.Content)
        if (got.length === 3) break
      }
    })()
    await sleep(300)
    for (const text of ["a", "b", "c"]) await Effect.runPromise(im.send(conversation, text))
    await reading
    assert.deepStrictEqual(got, ["a", "b", "c"])

    const bad = await Effect.runPromise(makeClient({ baseUrl: server.url, token: "not-a-token" }))
    for (const protocol of ["ws", "sse", "poll"] as const) {
      const error = await Effect.runPromise(Effect.flip(Stream.runDrain(bad.subscribe({ protocol }))))
      assert.instanceOf(error, PushRefused)
      assert.strictEqual(error.status, 401)
    }
  })

  it("the echo bot of docs/api.md answers a member's message", async () => {
    const bot = spawn(denoBin, ["run", "-A", Path.join(root, "test/fixtures/echo-bot.ts")], {
      cwd: root,
      env: { ...process.env, QUICKIM_URL: server.url },
      stdio: ["ignore", "inherit", "inherit"]
    })
    try {
      const alice = unique("alice")
      const admin = await Effect.runPromise(makeClient({ baseUrl: server.url }))
      const im = await Effect.runPromise(admin.as(await Effect.runPromise(admin.token(alice))))
      const conversation = await Effect.runPromise(admin.createConversation([alice, "echo-bot"]))
      const answer = (async () => {
        for await (const m of im.messages()) if (m.FromSession === "echo-bot") return m.Content
      })()
      // The bot subscribes from "now": keep saying hello until it is listening.
      let reply: string | undefined
      for (let i = 0; i < 40 && reply === undefined; i++) {
        await Effect.runPromise(im.send(conversation, "hello", { clientMsgId: `hello-${i}` }))
        reply = await Promise.race([answer, sleep(250).then(() => undefined)])
      }
      assert.strictEqual(reply, "echo: hello")
    } finally {
      bot.kill()
    }
  })

  it("poll: an answer lost on the way is replayed, and a repeat in the replay does not stall the subscriber", async () => {
    const proxy = await startProxy(new URL(server.url))
    try {
      const alice = unique("alice")
      const received: Array<string> = []
      await Effect.runPromise(Effect.gen(function* () {
        const admin = yield* makeClient({ baseUrl: server.url })
        const aliceIm = yield* admin.as(yield* admin.token(alice))
        const [a, b] = [yield* admin.createConversation([alice]), yield* admin.createConversation([alice])]
        const listener = yield* makeClient({ baseUrl: proxy.url, token: yield* admin.token(alice, 2) })
        const fiber = yield* listener.subscribe({ protocol: "poll", minDelayMs: 50, maxDelayMs: 200 }).pipe(
          Stream.runForEach((m) => Effect.sync(() => received.push(m.Content))),
          Effect.forkChild
        )
        const until = (n: number) =>
          Effect.promise(async () => {
            for (let i = 0; i < 200 && received.length < n; i++) await sleep(50)
          })
        yield* Effect.sleep("300 millis")
        yield* aliceIm.send(a, "a1")
        yield* until(1)
        yield* aliceIm.send(b, "b1")
        yield* until(2)
        yield* Effect.sleep("200 millis") // the next poll is waiting
        // The answer carrying b2 is lost: the server replays from b1, and a1 (another conversation,
        // inside the resume window) comes first as a repeat the subscriber drops.
        proxy.dropNextResponse()
        yield* aliceIm.send(b, "b2")
        yield* until(3)
        yield* Fiber.interrupt(fiber)
      }))
      assert.deepStrictEqual(received, ["a1", "b1", "b2"])
    } finally {
      proxy.close()
    }
  })

  it("a malformed cursor ends the subscription with PushRefused (400) instead of retrying", async () => {
    const admin = await Effect.runPromise(makeClient({ baseUrl: server.url }))
    const im = await Effect.runPromise(admin.as(await Effect.runPromise(admin.token(unique("alice")))))
    for (const protocol of ["ws", "sse", "poll"] as const) {
      const error = await Effect.runPromise(Effect.flip(Stream.runDrain(im.subscribe({ protocol, cursor: "junk" }))))
      assert.instanceOf(error, PushRefused)
      assert.strictEqual(error.status, 400)
    }
  })
})
