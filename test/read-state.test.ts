/**
 * Read state (docs/api.md, "Read state"): Seq, read positions, unread counts, the inbox, members,
 * conversation fields, typing and the live events, through a real server on PostgreSQL.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { sql } from "./support/postgres.ts"
import { connectLive, type Protocol, sleep } from "./support/push.ts"
import { expectFailed, expectOk, settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

describe("read state", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())

  const ok = expectOk
  const failed = expectFailed
  const users = async (...names: Array<string>) => {
    const out: Array<{ id: string; token: string }> = []
    for (const n of names) {
      const id = unique(n)
      out.push({ id, token: await server.token(id) })
    }
    return out
  }
  const create = async (sessions: Array<string>, fields: Record<string, unknown> = {}) =>
    ok(await server.post("/inner/create_conversation", { sessions, ...fields })).ConversationId as string
  const send = async (token: string, conversation_id: string, content = "hi") =>
    ok(await server.post("/send_msg", { conversation_id, content }, token)).MsgID as string
  const unread = async (token: string, conversation_ids?: Array<string>) =>
    ok(await server.post("/get_unread", conversation_ids === undefined ? {} : { conversation_ids }, token))
  const markRead = (token: string, conversation_id: string, msg_id: string) =>
    server.post("/mark_read", { conversation_id, msg_id }, token)

  it("messages carry a gapless Seq in history", async () => {
    const [a, b] = await users("a", "b")
    const c = await create([a.id, b.id])
    for (let i = 0; i < 5; i++) await send(i % 2 === 0 ? a.token : b.token, c, `m${i}`)
    const msgs = ok(await server.post("/get_conversation_last_30_msg", { conversation_id: c }, a.token)).Msg
    assert.deepStrictEqual(msgs.map((m: any) => m.Seq), [1, 2, 3, 4, 5])
  })

  it("unread counts others' messages above the read position; mark_read moves it forward only", async () => {
    const [a, b] = await users("a", "b")
    const c = await create([a.id, b.id])
    const ids: Array<string> = []
    for (let i = 0; i < 3; i++) ids.push(await send(a.token, c, `m${i}`))
    // Own messages never count; the sender's position is at its last message.
    assert.deepStrictEqual(await unread(a.token, [c]), {
      Conversations: [{ ConversationId: c, Unread: 0, ReadMsgId: ids[2], LastMsgId: ids[2] }],
      Total: 0
    })
    assert.deepStrictEqual(await unread(b.token, [c]), {
      Conversations: [{ ConversationId: c, Unread: 3, ReadMsgId: null, LastMsgId: ids[2] }],
      Total: 3
    })
    assert.deepStrictEqual(ok(await markRead(b.token, c, ids[1])), { ReadMsgId: ids[1], ReadSeq: 2, Unread: 1 })
    // An older id is a no-op that answers the current state.
    assert.deepStrictEqual(ok(await markRead(b.token, c, ids[0])), { ReadMsgId: ids[1], ReadSeq: 2, Unread: 1 })
    // Beyond the last: the last.
    assert.deepStrictEqual(ok(await markRead(b.token, c, "ZZZZZ-ZZZZ-ZZZZ-ZZZ")), {
      ReadMsgId: ids[2],
      ReadSeq: 3,
      Unread: 0
    })
    // b answers: its position moves to its message, and a's unread counts b's message only.
    const reply = await send(b.token, c, "reply")
    assert.strictEqual((await unread(b.token, [c])).Total, 0)
    assert.deepStrictEqual((await unread(a.token, [c])).Conversations[0], {
      ConversationId: c,
      Unread: 1,
      ReadMsgId: ids[2],
      LastMsgId: reply
    })
    const detail = ok(await server.post("/get_conversation_detail", { conversation_id: c }, a.token))
    assert.strictEqual(detail.Unread, 1)
    assert.strictEqual(detail.ReadMsgId, ids[2])
  })

  it("an id between messages marks up to the message before it", async () => {
    const [a, b] = await users("a", "b")
    const c = await create([a.id, b.id])
    const ids: Array<string> = []
    for (let i = 0; i < 3; i++) {
      ids.push(await send(a.token, c, `m${i}`))
      await sleep(5)
    }
    // Just above ids[1] and below ids[2]: ids[1] with its last character one step up the alphabet
    // (MsgIds are 5 ms apart here, so the step never reaches ids[2]; a "Z" is bumped a place earlier).
    const alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    const bump = (id: string, at: number): string =>
      id[at] === "Z" || id[at] === "-"
        ? bump(id, at - 1)
        : id.slice(0, at) + alphabet[alphabet.indexOf(id[at]) + 1] + id.slice(at + 1)
    const between = bump(ids[1], ids[1].length - 1)
    assert.isTrue(between > ids[1] && between < ids[2])
    assert.deepStrictEqual(ok(await markRead(b.token, c, between)), { ReadMsgId: ids[1], ReadSeq: 2, Unread: 1 })
  })

  it("joining never makes old history unread", async () => {
    const [a, b, late] = await users("a", "b", "late")
    const c = await create([a.id, b.id])
    let last = ""
    for (let i = 0; i < 4; i++) last = await send(a.token, c, `m${i}`)
    ok(await server.post("/join_conversation", { conversation_id: c }, late.token))
    assert.deepStrictEqual(await unread(late.token, [c]), {
      Conversations: [{ ConversationId: c, Unread: 0, ReadMsgId: last, LastMsgId: last }],
      Total: 0
    })
    await send(b.token, c, "after")
    assert.strictEqual((await unread(late.token)).Total, 1)
  })

  it("get_unread refuses bad id lists whole, and answers [] with nothing", async () => {
    const [a, b] = await users("a", "b")
    const mine = await create([a.id])
    const theirs = await create([b.id])
    failed(await server.post("/get_unread", { conversation_ids: [mine, theirs] }, a.token), 403, 90021)
    failed(await server.post("/get_unread", { conversation_ids: [mine, theirs, "nope"] }, a.token), 404, 90020)
    failed(
      await server.post("/get_unread", { conversation_ids: Array.from({ length: 1001 }, (_, i) => `c${i}`) }, a.token),
      400,
      10001
    )
    assert.deepStrictEqual(await unread(a.token, []), { Conversations: [], Total: 0 })
    assert.deepStrictEqual((await unread(a.token)).Conversations.map((e: any) => e.ConversationId), [mine])
  })

  it("mark_read, typing and members refuse non-members and unknown conversations", async () => {
    const [a, b] = await users("a", "b")
    const c = await create([a.id])
    const id = await send(a.token, c)
    failed(await markRead(b.token, c, id), 403, 90021)
    failed(await markRead(b.token, "nope-" + c, id), 404, 90020)
    failed(await markRead(a.token, c, "not-an-id"), 400, 10001)
    failed(await server.post("/typing", { conversation_id: c }, b.token), 403, 90021)
    failed(await server.post("/get_conversation_members", { conversation_id: c }, b.token), 403, 90021)
    failed(await server.post("/get_conversation_members", { conversation_id: "nope-" + c }, a.token), 404, 90020)
    failed(await server.post("/get_conversation_members", { conversation_id: c, limit: 0 }, a.token), 400, 10001)
    failed(await server.post("/get_conversation_members", { conversation_id: c, cursor: "x" }, a.token), 400, 10001)
    failed(await server.post("/get_inbox", { limit: 201 }, a.token), 400, 10001)
    const encode = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url")
    for (
      const cursor of [
        "",
        "e30",
        encode({ s: "9:1:", a: "1", c: "x" }),
        // Found by the fuzz run: an id with NUL characters would reach SQL.
        encode({ s: "5:9:6,7", a: "0", c: "\u0000\u0000" })
      ]
    ) {
      failed(await server.post("/get_inbox", { cursor }, a.token), 400, 10001)
    }
    failed(
      await server.post("/get_conversation_members", {
        conversation_id: c,
        cursor: encode({ j: "0", s: "\u0000\u0000" })
      }, a.token),
      400,
      10001
    )
  })

  it("members in join order, paged, with their read positions", async () => {
    const [a, b, c, d] = await users("a", "b", "c", "d")
    const conv = await create([a.id])
    for (const u of [b, c, d]) {
      ok(await server.post("/inner/join_conversation", { conversation_id: conv, sessions: [u.id] }))
    }
    const m1 = await send(b.token, conv)
    const page1 = ok(await server.post("/get_conversation_members", { conversation_id: conv, limit: 2 }, a.token))
    assert.deepStrictEqual(page1.Members.map((m: any) => m.Session), [a.id, b.id])
    assert.deepStrictEqual(page1.Members.map((m: any) => m.ReadMsgId), [null, m1])
    assert.isString(page1.NextCursor)
    for (const m of page1.Members) assert.isFalse(Number.isNaN(Date.parse(m.JoinedAt)))
    const page2 = ok(
      await server.post(
        "/get_conversation_members",
        { conversation_id: conv, limit: 2, cursor: page1.NextCursor },
        a.token
      )
    )
    assert.deepStrictEqual(page2.Members.map((m: any) => m.Session), [c.id, d.id])
    assert.isNull(page2.NextCursor)
  })

  it("conversation name and extra: set at create, updated, bounded", async () => {
    const [a] = await users("a")
    const c = await create([a.id], { name: "Team 🚀", extra: '{"k":1}' })
    let detail = ok(await server.post("/get_conversation_detail", { conversation_id: c }, a.token))
    assert.strictEqual(detail.Name, "Team 🚀")
    assert.strictEqual(detail.Extra, '{"k":1}')
    ok(await server.post("/inner/update_conversation", { conversation_id: c, name: "Renamed" }))
    detail = ok(await server.post("/get_conversation_detail", { conversation_id: c }, a.token))
    assert.strictEqual(detail.Name, "Renamed")
    assert.strictEqual(detail.Extra, '{"k":1}')
    ok(await server.post("/inner/update_conversation", { conversation_id: c, name: "😀".repeat(200) }))
    failed(await server.post("/inner/update_conversation", { conversation_id: c, name: "x".repeat(201) }), 400, 10001)
    ok(await server.post("/inner/update_conversation", { conversation_id: c, extra: "é".repeat(2048) }))
    failed(await server.post("/inner/update_conversation", { conversation_id: c, extra: "é".repeat(2049) }), 400, 10001)
    failed(await server.post("/inner/update_conversation", { conversation_id: "nope-" + c, name: "n" }), 404, 90020)
    failed(await server.post("/inner/create_conversation", { sessions: [a.id], name: "x\u0000" }), 400, 10001)
  })

  it("the inbox: most recent activity first, pages that neither repeat nor skip under concurrent sends", async () => {
    const [a, b] = await users("a", "b")
    const convs: Array<string> = []
    for (let i = 0; i < 7; i++) {
      convs.push(await create([a.id, b.id], { name: `c${i}` }))
      await sleep(2)
    }
    // Activity: c0..c6 in order of their messages, except c3 which has none (its join time, older).
    // A millisecond apart at least: activity is kept to the millisecond (a tie sorts by id).
    for (const [i, c] of convs.entries()) {
      if (i === 3) continue
      await send(b.token, c, `in ${i}`)
      await sleep(2)
    }
    const expected = [6, 5, 4, 2, 1, 0, 3].map((i) => convs[i])
    const first = ok(await server.post("/get_inbox", { limit: 3 }, a.token))
    assert.deepStrictEqual(first.Conversations.map((e: any) => e.ConversationId), expected.slice(0, 3))
    const entry = first.Conversations[0]
    assert.strictEqual(entry.Name, "c6")
    assert.strictEqual(entry.Unread, 1)
    assert.strictEqual(entry.LastMsg.Content, "in 6")
    assert.strictEqual(entry.LastMsg.Seq, 1)
    assert.isNull(entry.ReadMsgId)
    // Meanwhile: the oldest two get new messages (they would jump to the top) and a new one appears.
    await send(b.token, convs[0], "late")
    await sleep(2)
    await send(b.token, convs[3], "late")
    await sleep(2)
    const added = await create([a.id, b.id])
    const seen = [...first.Conversations.map((e: any) => e.ConversationId)]
    let cursor = first.NextCursor
    while (cursor !== null) {
      const page = ok(await server.post("/get_inbox", { limit: 3, cursor }, a.token))
      seen.push(...page.Conversations.map((e: any) => e.ConversationId))
      cursor = page.NextCursor
    }
    // Every page after the first sorts as the first page's snapshot did.
    assert.deepStrictEqual(seen, expected)
    assert.notInclude(seen, added)
    // A new first page sees the changes.
    const fresh = ok(await server.post("/get_inbox", { limit: 3 }, a.token)).Conversations.map((e: any) =>
      e.ConversationId
    )
    assert.deepStrictEqual(fresh, [added, convs[3], convs[0]])
  })

  /** Waits until each (session, platform)'s first poll has its position in SQL. */
  const firstPollsIn = async (platforms: ReadonlyArray<readonly [string, number]>) => {
    const positions = () =>
      sql(
        testDatabaseUrl(),
        `SELECT count(*) FROM poll_positions WHERE ${
          platforms.map(([s, p]) => `(session_id = '${s}' AND platform = ${p})`).join(" OR ")
        }`
      ).then((n) => Number(n.trim()))
    for (let i = 0; i < 100 && (await positions()) < platforms.length; i++) await sleep(100)
    assert.strictEqual(await positions(), platforms.length, "every first poll reached its Mailbox")
  }

  describe.each<Protocol>(["ws", "sse", "poll"])("live events over %s", (protocol) => {
    it("read reaches the reader's other platforms and the members; member, conversation and typing follow", async () => {
      const [a, b, c] = await users("a", "b", "c")
      const conv = await create([a.id, b.id])
      const aPhone = await connectLive(protocol, server.url, await server.token(a.id, 2), "read,member,typing")
      const bLive = await connectLive(protocol, server.url, b.token, "read,member,typing")
      const bQuiet = await connectLive(protocol, server.url, await server.token(b.id, 3), "member")
      try {
        // A platform's first poll starts its position when it reaches the server: wait for all
        // three, or the first message may come before one of them and never reach it.
        if (protocol === "poll") await firstPollsIn([[a.id, 2], [b.id, 1], [b.id, 3]])
        const first = await send(b.token, conv, "first")
        // Every connection is registered once it has the message.
        for (const client of [aPhone, bLive, bQuiet]) await client.until((m) => m.some((x) => x.MsgId === first))
        assert.strictEqual(aPhone.messages[0].Seq, 1)
        // Mark read on a's desktop (platform 1): its phone hears it, and so does b.
        ok(await markRead(a.token, conv, first))
        const read = { Event: "read", ConversationId: conv, Session: a.id, ReadMsgId: first, ReadSeq: 1 }
        await aPhone.untilEvent((e) => e.some((x) => x.Event === "read"))
        await bLive.untilEvent((e) => e.some((x) => x.Event === "read"))
        assert.deepStrictEqual(aPhone.events.find((x) => x.Event === "read"), read)
        // A mark that does not move the position says nothing.
        ok(await markRead(a.token, conv, first))
        // Typing: b hears a; a's own connections do not. At most once per 2 s.
        ok(await server.post("/typing", { conversation_id: conv }, a.token))
        ok(await server.post("/typing", { conversation_id: conv }, a.token))
        await bLive.untilEvent((e) => e.some((x) => x.Event === "typing"))
        // Membership and the conversation's fields.
        ok(await server.post("/inner/join_conversation", { conversation_id: conv, sessions: [c.id] }))
        ok(await server.post("/inner/update_conversation", { conversation_id: conv, name: "N", extra: "E" }))
        ok(await server.post("/inner/set_archive_conversations", { conversation_ids: [conv], is_archive: true }))
        ok(await server.post("/inner/kickout_conversation", { conversation_id: conv, sessions: [c.id] }))
        const last = await send(b.token, conv, "last")
        for (const client of [aPhone, bLive, bQuiet]) {
          await client.until((m) => m.some((x) => x.MsgId === last))
          await client.untilEvent((e) => e.filter((x) => x.Event === "member").length === 2)
          await client.untilEvent((e) => e.filter((x) => x.Event === "conversation").length === 2)
        }
        for (const client of [aPhone, bLive, bQuiet]) {
          assert.deepStrictEqual(client.events.filter((x) => x.Event === "member"), [
            { Event: "member", ConversationId: conv, Session: c.id, Change: "joined" },
            { Event: "member", ConversationId: conv, Session: c.id, Change: "kicked" }
          ])
          assert.deepStrictEqual(client.events.filter((x) => x.Event === "conversation"), [
            { Event: "conversation", ConversationId: conv, IsArchive: false, Name: "N", Extra: "E" },
            { Event: "conversation", ConversationId: conv, IsArchive: true, Name: "N", Extra: "E" }
          ])
        }
        assert.deepStrictEqual(aPhone.events.filter((x) => x.Event === "read"), [read])
        assert.deepStrictEqual(aPhone.events.filter((x) => x.Event === "typing"), [])
        assert.deepStrictEqual(bLive.events.filter((x) => x.Event === "typing"), [
          { Event: "typing", ConversationId: conv, Session: a.id }
        ])
        // Only what a connection opted in to.
        assert.deepStrictEqual(bQuiet.events.filter((x) => x.Event === "read" || x.Event === "typing"), [])
        assert.deepStrictEqual(aPhone.messages.map((m) => m.Content), ["first", "last"])
      } finally {
        for (const client of [aPhone, bLive, bQuiet]) client.close()
      }
    })
  })

  it("a poll gets only the event kinds it opted in to, also beside another poll of its platform that did not", async () => {
    const [a, b] = await users("a", "b")
    const conv = await create([a.id, b.id])
    const m1 = await send(b.token, conv, "m1")
    const poll = (query: string) =>
      fetch(`${server.url}/notify?protoc=poll&token=${a.token}${query}`).then(async (res) => ({
        status: res.status,
        body: res.status === 200 ? await res.json() : undefined
      }))
    // Both wait on platform 1: the first from the last message, without events; then one with them.
    const plain = poll(`&last_msg_id=${m1}`)
    await sleep(300)
    const live = poll("&events=member")
    await sleep(300)
    const [c] = await users("c")
    ok(await server.post("/inner/join_conversation", { conversation_id: conv, sessions: [c.id] }))
    assert.deepStrictEqual(await live, {
      status: 200,
      body: { Event: "member", ConversationId: conv, Session: c.id, Change: "joined" }
    })
    // The plain poll gets the next message, never the event.
    const m2 = await send(b.token, conv, "m2")
    const answer = await plain
    assert.strictEqual(answer.status, 200)
    assert.strictEqual(answer.body.MsgId, m2)
  })

  it("an unknown event kind is refused", async () => {
    const [a] = await users("a")
    const res = await fetch(`${server.url}/notify?protoc=sse&events=read,bogus&token=${a.token}`)
    assert.strictEqual(res.status, 400)
    assert.strictEqual((await res.json()).code, 10001)
  })
})
