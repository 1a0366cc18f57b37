/**
 * Every documented endpoint through a real HTTP server, once on the embedded PostgreSQL and once on
 * PostgreSQL: fields, orders, page semantics, membership rules and the error envelope.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { MsgIdPattern } from "../src/domain/MsgId.ts"
import { type DbKind, settingsFor, startServer, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

describe.each<DbKind>(["embedded", "postgres"])("API on %s", (db) => {
  let server: TestServer
  let alice: string
  let bob: string
  let aliceToken: string
  let bobToken: string

  beforeAll(async () => {
    server = await startServer(settingsFor(db))
    alice = unique("alice")
    bob = unique("bob")
    aliceToken = await server.token(alice)
    bobToken = await server.token(bob, 2)
  })
  afterAll(() => server?.stop())

  const ok = (reply: { status: number; body: any }) => {
    assert.strictEqual(reply.status, 200, JSON.stringify(reply.body))
    assert.strictEqual(reply.body.code, 0)
    assert.notProperty(reply.body, "error")
    return reply.body.data
  }
  const failed = (reply: { status: number; body: any }, status: number, code: number) => {
    assert.strictEqual(reply.status, status, JSON.stringify(reply.body))
    assert.strictEqual(reply.body.code, code)
    assert.isString(reply.body.error)
    assert.notProperty(reply.body, "data")
  }

  const createWith = async (sessions: Array<string>, conversation_type = 0) =>
    ok(await server.post("/inner/create_conversation", { conversation_type, sessions })).ConversationId as string

  it("healthz answers and openapi.json describes every documented path", async () => {
    assert.deepStrictEqual(ok(await server.raw("/healthz", { method: "GET" })), { status: "ok" })
    const spec = (await server.raw("/openapi.json", { method: "GET" })).body
    for (
      const path of [
        "/send_msg",
        "/check_joined_conversation",
        "/get_joined_conversation",
        "/get_conversation_detail",
        "/join_conversation",
        "/create_conversation",
        "/leave_conversation",
        "/get_lastone_msgid",
        "/inner/get_token",
        "/inner/create_conversation",
        "/inner/kickout_conversation",
        "/inner/join_conversation",
        "/inner/set_archive_conversations",
        "/get_conversation_msg_by_range",
        "/get_conversation_30msg_before_the_id",
        "/get_conversation_30msg_after_the_id",
        "/get_conversation_last_30_msg",
        "/get_conversation_lastone_msg",
        // Extensions (read state)
        "/mark_read",
        "/get_unread",
        "/get_inbox",
        "/get_conversation_members",
        "/typing",
        "/inner/update_conversation"
      ]
    ) assert.property(spec.paths, path)
  })

  it("a created conversation has its creator as member and a detail with null last fields", async () => {
    const id = ok(await server.post("/create_conversation", { conversation_type: 3 }, aliceToken)).ConversationId
    assert.match(id, /^[0-9a-f-]{36}$/)
    assert.deepStrictEqual(ok(await server.post("/check_joined_conversation", { conversation_id: id }, aliceToken)), {
      Joined: true
    })
    assert.deepStrictEqual(ok(await server.post("/check_joined_conversation", { conversation_id: id }, bobToken)), {
      Joined: false
    })
    assert.deepStrictEqual(ok(await server.post("/get_conversation_detail", { conversation_id: id }, aliceToken)), {
      ConversationID: id,
      LastMsgID: null,
      LastSendTime: null,
      IsDelete: false,
      ConversationType: 3,
      LastSendSession: null,
      IsArchive: false,
      // Extension (read state)
      Name: "",
      Extra: "",
      Unread: 0,
      ReadMsgId: null
    })
    assert.deepStrictEqual(ok(await server.post("/get_lastone_msgid", { conversation_id: id }, aliceToken)), {
      MsgId: null
    })
    assert.deepStrictEqual(
      ok(await server.post("/get_conversation_lastone_msg", { conversation_id: id }, aliceToken)),
      {
        Msg: []
      }
    )
  })

  it("joined list is the token's own, whatever SessionId the body names", async () => {
    const a = await createWith([alice])
    const b = await createWith([alice, bob])
    const list = ok(await server.post("/get_joined_conversation", { SessionId: bob }, aliceToken)).Conversations
    assert.includeMembers(list, [a, b])
    const bobs = ok(await server.post("/get_joined_conversation", {}, bobToken)).Conversations
    assert.include(bobs, b)
    assert.notInclude(bobs, a)
  })

  it("send stores the message; history and detail show it with every documented field", async () => {
    const id = await createWith([alice, bob], 1)
    const sent = ok(
      await server.post("/send_msg", { conversation_id: id, status: 2, type: 1, content: "你好" }, aliceToken)
    )
    assert.match(sent.MsgID, MsgIdPattern)
    const [msg] = ok(await server.post("/get_conversation_last_30_msg", { conversation_id: id }, bobToken)).Msg
    assert.strictEqual(msg.MsgId, sent.MsgID)
    assert.strictEqual(msg.ConversationID, id)
    assert.strictEqual(msg.FromSession, alice)
    assert.match(msg.SendTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/)
    assert.strictEqual(msg.Status, 2)
    assert.strictEqual(msg.Type, 1)
    assert.strictEqual(msg.Content, "你好")
    const detail = ok(await server.post("/get_conversation_detail", { conversation_id: id }, bobToken))
    assert.strictEqual(detail.LastMsgID, sent.MsgID)
    assert.strictEqual(detail.LastSendTime, msg.SendTime)
    assert.strictEqual(detail.LastSendSession, alice)
    assert.strictEqual(ok(await server.post("/get_lastone_msgid", { conversation_id: id }, bobToken)).MsgId, sent.MsgID)
  })

  it("history pages: last 30, 30 before/after excluding the anchor, inclusive range, desc", async () => {
    const id = await createWith([alice])
    const ids: Array<string> = []
    for (let i = 0; i < 70; i++) {
      ids.push(ok(await server.post("/send_msg", { conversation_id: id, type: 1, content: `m${i}` }, aliceToken)).MsgID)
    }
    const sorted = [...ids].sort()
    assert.deepStrictEqual(ids, sorted, "ids increase in send order")
    const page = async (path: string, body: object) =>
      ok(await server.post(path, { conversation_id: id, ...body }, aliceToken)).Msg.map((m: any) => m.MsgId)

    assert.deepStrictEqual(await page("/get_conversation_last_30_msg", {}), ids.slice(40))
    assert.deepStrictEqual(await page("/get_conversation_last_30_msg", { desc: true }), ids.slice(40).reverse())
    assert.deepStrictEqual(await page("/get_conversation_30msg_before_the_id", { msg_id: ids[40] }), ids.slice(10, 40))
    assert.deepStrictEqual(
      await page("/get_conversation_30msg_before_the_id", { msg_id: ids[5], desc: true }),
      ids.slice(0, 5).reverse()
    )
    assert.deepStrictEqual(await page("/get_conversation_30msg_after_the_id", { msg_id: ids[9] }), ids.slice(10, 40))
    assert.deepStrictEqual(await page("/get_conversation_30msg_after_the_id", { msg_id: ids[69] }), [])
    assert.deepStrictEqual(
      await page("/get_conversation_msg_by_range", { start_msg_id: ids[3], end_msg_id: ids[7] }),
      ids.slice(3, 8)
    )
    assert.deepStrictEqual(
      await page("/get_conversation_msg_by_range", { start_msg_id: ids[3], end_msg_id: ids[7], desc: true }),
      ids.slice(3, 8).reverse()
    )
    assert.deepStrictEqual(await page("/get_conversation_lastone_msg", {}), [ids[69]])
  })

  it("a repeated client_msg_id returns the original MsgID and stores nothing new", async () => {
    const id = await createWith([alice, bob])
    const body = { conversation_id: id, type: 1, content: "once", client_msg_id: "c-1" }
    const first = ok(await server.post("/send_msg", body, aliceToken)).MsgID
    const again = ok(await server.post("/send_msg", body, aliceToken)).MsgID
    assert.strictEqual(again, first)
    // Another sender may use the same client id for its own message.
    const bobs = ok(await server.post("/send_msg", body, bobToken)).MsgID
    assert.notStrictEqual(bobs, first)
    const all = ok(await server.post("/get_conversation_last_30_msg", { conversation_id: id }, aliceToken)).Msg
    assert.strictEqual(all.length, 2)
  })

  it("concurrent sends all land, with strictly increasing ids and nothing lost", async () => {
    const id = await createWith([alice])
    const replies = await Promise.all(
      Array.from(
        { length: 100 },
        (_, i) => server.post("/send_msg", { conversation_id: id, content: `c${i}` }, aliceToken)
      )
    )
    const ids = replies.map((r) => ok(r).MsgID as string)
    assert.strictEqual(new Set(ids).size, 100)
    let cursor = ids.slice().sort()[0]
    const seen = [cursor]
    for (;;) {
      const next = ok(
        await server.post("/get_conversation_30msg_after_the_id", { conversation_id: id, msg_id: cursor }, aliceToken)
      ).Msg
      if (next.length === 0) break
      seen.push(...next.map((m: any) => m.MsgId))
      cursor = seen[seen.length - 1]
    }
    assert.deepStrictEqual(seen, ids.slice().sort())
  })

  it("membership: join, leave, kick take effect at once for send and history", async () => {
    const id = await createWith([alice])
    const send = (token: string) => server.post("/send_msg", { conversation_id: id, content: "x" }, token)
    const history = (token: string) => server.post("/get_conversation_last_30_msg", { conversation_id: id }, token)
    failed(await send(bobToken), 403, 90021)
    failed(await history(bobToken), 403, 90021)
    failed(await server.post("/get_conversation_detail", { conversation_id: id }, bobToken), 403, 90021)
    failed(await server.post("/get_lastone_msgid", { conversation_id: id }, bobToken), 403, 90021)

    assert.deepStrictEqual(ok(await server.post("/join_conversation", { conversation_id: id }, bobToken)), {
      ConversationId: id
    })
    ok(await send(bobToken))
    ok(await history(bobToken))

    ok(await server.post("/leave_conversation", { conversation_id: id }, bobToken))
    failed(await send(bobToken), 403, 90021)
    failed(await history(bobToken), 403, 90021)

    ok(await server.post("/inner/join_conversation", { conversation_id: id, sessions: [bob] }))
    ok(await send(bobToken))
    assert.deepStrictEqual(
      ok(await server.post("/inner/kickout_conversation", { conversation_id: id, sessions: [bob] })),
      { ConversationId: id }
    )
    failed(await send(bobToken), 403, 90021)
    assert.isFalse(ok(await server.post("/check_joined_conversation", { conversation_id: id }, bobToken)).Joined)
  })

  it("archive flips IsArchive for every named conversation, all or nothing", async () => {
    const a = await createWith([alice])
    const b = await createWith([alice])
    const reply = await server.post("/inner/set_archive_conversations", { conversation_ids: [a, b], is_archive: true })
    assert.strictEqual(reply.status, 200)
    assert.deepStrictEqual(reply.body, { code: 0 })
    for (const id of [a, b]) {
      assert.isTrue(ok(await server.post("/get_conversation_detail", { conversation_id: id }, aliceToken)).IsArchive)
    }
    failed(
      await server.post("/inner/set_archive_conversations", { conversation_ids: [a, "no-such-id"], is_archive: false }),
      404,
      90020
    )
    assert.isTrue(ok(await server.post("/get_conversation_detail", { conversation_id: a }, aliceToken)).IsArchive)
  })

  it("unknown conversations answer 90020", async () => {
    failed(await server.post("/send_msg", { conversation_id: "nope", content: "x" }, aliceToken), 404, 90020)
    failed(await server.post("/join_conversation", { conversation_id: "nope" }, aliceToken), 404, 90020)
    failed(await server.post("/get_conversation_detail", { conversation_id: "nope" }, aliceToken), 404, 90020)
    failed(await server.post("/inner/join_conversation", { conversation_id: "nope", sessions: [bob] }), 404, 90020)
  })

  it("tokens: missing, forged, alg none and expired are refused with 10101", async () => {
    const body = { conversation_id: "x" }
    failed(await server.post("/check_joined_conversation", body), 401, 10101)
    failed(await server.post("/check_joined_conversation", body, "not-a-jwt"), 401, 10101)
    const [h, p] = aliceToken.split(".")
    failed(await server.post("/check_joined_conversation", body, `${h}.${p}.AAAA`), 401, 10101)
    const none = Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")
    failed(await server.post("/check_joined_conversation", body, `${none}.${p}.`), 401, 10101)
    const { SignJWT } = await import("jose")
    const key = new TextEncoder().encode("test-secret-test-secret-test-secret")
    const expired = await new SignJWT({ sid: alice, platform: 1 }).setProtectedHeader({ alg: "HS256" })
      .setIssuer("quick-im").setIssuedAt(Math.floor(Date.now() / 1000) - 120)
      .setExpirationTime(Math.floor(Date.now() / 1000) - 60).sign(key)
    const expiredReply = await server.post("/check_joined_conversation", body, expired)
    failed(expiredReply, 401, 10101)
    assert.include(expiredReply.body.error, "expired")
  })

  it("a body without content-type JSON is still read as JSON (curl -d)", async () => {
    const reply = await server.raw("/inner/get_token", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: JSON.stringify({ session: alice, platform: 1 })
    })
    assert.strictEqual(reply.body.code, 0)
  })
})
