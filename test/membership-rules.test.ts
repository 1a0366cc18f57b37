/**
 * Who may (re-)join a conversation, and archiving as one all-or-nothing write: a kick bans the
 * session until the backend adds it again, leaving by oneself does not, public joins can be made
 * invite-only, and set_archive_conversations changes every named conversation or none.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { sql } from "./support/postgres.ts"
import { connectWs } from "./support/push.ts"
import { type Reply, settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`
const psql = (text: string) => sql(testDatabaseUrl(), text)

const ok = (reply: Reply) => {
  assert.strictEqual(reply.status, 200, JSON.stringify(reply.body))
  assert.strictEqual(reply.body.code, 0)
  return reply.body.data
}
const failed = (reply: Reply, status: number, code: number) => {
  assert.strictEqual(reply.status, status, JSON.stringify(reply.body))
  assert.strictEqual(reply.body.code, code, JSON.stringify(reply.body))
  assert.isString(reply.body.error)
  assert.notProperty(reply.body, "data")
}

const helpers = (server: () => TestServer) => ({
  user: async () => {
    const sid = unique("u")
    return { sid, token: await server().token(sid) }
  },
  create: async (...sessions: Array<string>) =>
    ok(await server().post("/inner/create_conversation", { conversation_type: 0, sessions })).ConversationId as string,
  send: async (token: string, conversation_id: string, content: string) =>
    ok(await server().post("/send_msg", { conversation_id, content }, token)).MsgID as string,
  join: (token: string, conversation_id: string) => server().post("/join_conversation", { conversation_id }, token),
  innerJoin: (conversation_id: string, ...sessions: Array<string>) =>
    server().post("/inner/join_conversation", { conversation_id, sessions }),
  kick: (conversation_id: string, ...sessions: Array<string>) =>
    server().post("/inner/kickout_conversation", { conversation_id, sessions }),
  history: (token: string, conversation_id: string) =>
    server().post("/get_conversation_last_30_msg", { conversation_id }, token)
})

describe("membership rules on postgres", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())
  const { user, create, send, join, innerJoin, kick, history } = helpers(() => server)

  it("a kicked session cannot join again by itself (403 / 90022), reads nothing and gets no pushes", async () => {
    const alice = await user()
    const bob = await user()
    const id = await create(alice.sid, bob.sid)
    const bobPush = await connectWs(server.url, bob.token)
    try {
      ok(await kick(id, bob.sid))
      const whileOut = await send(alice.token, id, "said while bob was out")
      failed(await join(bob.token, id), 403, 90022)
      failed(await join(bob.token, id), 403, 90022) // still refused: nothing changed by the first try
      failed(await history(bob.token, id), 403, 90021)
      failed(await server.post("/send_msg", { conversation_id: id, content: "x" }, bob.token), 403, 90021)
      assert.isFalse(ok(await server.post("/check_joined_conversation", { conversation_id: id }, bob.token)).Joined)

      // The backend brings bob back: from then on he receives, and what was said while he was out
      // never reached him (one conversation's pushes reach a member in commit order).
      ok(await innerJoin(id, bob.sid))
      const afterReadmit = await send(alice.token, id, "bob is back")
      await bobPush.until((m) => m.some((x) => x.MsgId === afterReadmit))
      assert.notInclude(bobPush.messages.map((m) => m.MsgId), whileOut)
      ok(await join(bob.token, id)) // a member joining again: a no-op success
      ok(await history(bob.token, id))
      await send(bob.token, id, "hello again")
    } finally {
      bobPush.close()
    }
  })

  it("leaving by oneself is no ban: leave, then join again works", async () => {
    const alice = await user()
    const bob = await user()
    const id = await create(alice.sid, bob.sid)
    ok(await server.post("/leave_conversation", { conversation_id: id }, bob.token))
    failed(await history(bob.token, id), 403, 90021)
    ok(await join(bob.token, id))
    await send(bob.token, id, "back")
  })

  it("a kick bans even a session that was not a member; a re-admitted member who leaves may join again", async () => {
    const alice = await user()
    const carol = await user()
    const id = await create(alice.sid)
    ok(await kick(id, carol.sid))
    failed(await join(carol.token, id), 403, 90022)
    ok(await innerJoin(id, carol.sid))
    ok(await server.post("/leave_conversation", { conversation_id: id }, carol.token))
    ok(await join(carol.token, id))
    ok(await history(carol.token, id))
  })

  it("a ban survives a restart (it lives in SQL) until inner/join_conversation lifts it", async () => {
    const alice = await user()
    const bob = await user()
    const id = await create(alice.sid, bob.sid)
    ok(await kick(id, bob.sid))
    await server.stop()
    server = await startServer(settingsFor("postgres"))
    failed(await join(bob.token, id), 403, 90022)
    ok(await innerJoin(id, bob.sid))
    ok(await history(bob.token, id))
    assert.strictEqual(await psql(`SELECT count(*) FROM conversation_bans WHERE conversation_id = '${id}'`), "0")
  })

  it("set_archive_conversations: an unknown id anywhere in the list changes nothing", async () => {
    const alice = await user()
    const a = await create(alice.sid)
    const b = await create(alice.sid)
    const archived = async (id: string) =>
      ok(await server.post("/get_conversation_detail", { conversation_id: id }, alice.token)).IsArchive as boolean
    failed(
      await server.post("/inner/set_archive_conversations", {
        conversation_ids: [a, b, "no-such-id"],
        is_archive: true
      }),
      404,
      90020
    )
    assert.isFalse(await archived(a))
    assert.isFalse(await archived(b))
    ok(await server.post("/inner/set_archive_conversations", { conversation_ids: [a, b, a], is_archive: true }))
    assert.isTrue(await archived(a))
    assert.isTrue(await archived(b))
  })

  it("set_archive_conversations: a write failing on a late conversation leaves every one unchanged", async () => {
    const alice = await user()
    const ids = [await create(alice.sid), await create(alice.sid), await create(alice.sid)]
    // Conversations with messages have active entities holding what they loaded from SQL.
    for (const id of ids) await send(alice.token, id, "x")
    const archived = async (id: string) =>
      ok(await server.post("/get_conversation_detail", { conversation_id: id }, alice.token)).IsArchive as boolean
    // A real failure inside the database, on the last conversation only.
    const name = `refuse_archive_${crypto.randomUUID().replaceAll("-", "")}`
    await psql(`CREATE FUNCTION ${name}() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'refused by the test'; END $$`)
    await psql(`CREATE TRIGGER ${name} BEFORE UPDATE OF is_archive ON conversations FOR EACH ROW
      WHEN (NEW.id = '${ids[2]}') EXECUTE FUNCTION ${name}()`)
    try {
      failed(
        await server.post("/inner/set_archive_conversations", { conversation_ids: ids, is_archive: true }),
        500,
        10002
      )
      for (const id of ids) assert.isFalse(await archived(id), id)
    } finally {
      await psql(`DROP TRIGGER ${name} ON conversations; DROP FUNCTION ${name}()`)
    }
    ok(await server.post("/inner/set_archive_conversations", { conversation_ids: ids, is_archive: true }))
    for (const id of ids) assert.isTrue(await archived(id), id)
    // No entity keeps a copy of the flag that a later request could trust: changed behind everyone's
    // back, the next request still writes what it asks for.
    await psql(`UPDATE conversations SET is_archive = false WHERE id = '${ids[0]}'`)
    ok(await server.post("/inner/set_archive_conversations", { conversation_ids: [ids[0]], is_archive: true }))
    assert.isTrue(await archived(ids[0]))
    ok(await server.post("/inner/set_archive_conversations", { conversation_ids: ids, is_archive: false }))
    for (const id of ids) assert.isFalse(await archived(id), id)
  })
})

describe("invite-only public joins (QUICKIM_PUBLIC_JOIN=invite) on pglite", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("pglite", { publicJoin: "invite" }))
  })
  afterAll(() => server?.stop())
  const { user, create, send, join, innerJoin, kick, history } = helpers(() => server)

  it("refuses a non-member's public join with 90023; members and the backend's joins still work", async () => {
    const alice = await user()
    const carol = await user()
    const id = await create(alice.sid)
    failed(await join(carol.token, id), 403, 90023)
    failed(await history(carol.token, id), 403, 90021)
    ok(await join(alice.token, id)) // a member joining again: a no-op success
    ok(await innerJoin(id, carol.sid))
    ok(await history(carol.token, id))
    await send(carol.token, id, "invited")
    // Created by a session itself: it is the first member.
    const own = ok(await server.post("/create_conversation", { conversation_type: 0 }, carol.token)).ConversationId
    await send(carol.token, own, "mine")
    // A kicked session is told why (90022) rather than just "needs an invitation".
    ok(await kick(id, carol.sid))
    failed(await join(carol.token, id), 403, 90022)
    failed(await join(carol.token, "no-such-conversation"), 404, 90020)
  })
})
