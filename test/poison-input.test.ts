/**
 * Poison input: NUL characters and unpaired UTF-16 surrogates are refused at the edge naming the
 * field, and a row the database refuses anyway (below the edge) fails only its own send: never its
 * conversation's later sends, nor other conversations' sends that shared its group commit.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Layer } from "effect"
import { SqlClient } from "effect/sql"
import * as Jose from "jose"
import { AppConfig } from "../src/Config.ts"
import { Conversation } from "../src/conversation/Protocol.ts"
import { type CommitBounds, defaultCommitBounds, makeCommitBatcher } from "../src/storage/CommitBatcher.ts"
import type { MessageRow } from "../src/storage/ConversationStore.ts"
import { DatabaseLive } from "../src/storage/Database.ts"
import { conversationEntityLayer } from "./support/entity.ts"
import { type DbKind, settingsFor, startServer, type TestServer } from "./support/server.ts"

const NUL = "x\u0000y"
const LONE = ["\ud800", "a\udc00b", "\udc00\ud800"]
const POISONS = [NUL, ...LONE]

describe("poison input at the edge", () => {
  let server: TestServer
  let token: string
  let conversation: string
  const me = `me-${crypto.randomUUID()}`

  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
    token = await server.token(me)
    conversation = (await server.post("/inner/create_conversation", { sessions: [me] })).body.data.ConversationId
  })
  afterAll(() => server?.stop())

  const cases = (bad: string): Array<{ path: string; body: unknown; field: string; auth: boolean }> => [
    { path: "/send_msg", body: { conversation_id: conversation, content: bad }, field: "content", auth: true },
    {
      path: "/send_msg",
      body: { conversation_id: conversation, content: "ok", client_msg_id: bad },
      field: "client_msg_id",
      auth: true
    },
    { path: "/send_msg", body: { conversation_id: bad, content: "ok" }, field: "conversation_id", auth: true },
    { path: "/check_joined_conversation", body: { conversation_id: bad }, field: "conversation_id", auth: true },
    { path: "/join_conversation", body: { conversation_id: bad }, field: "conversation_id", auth: true },
    { path: "/get_conversation_last_30_msg", body: { conversation_id: bad }, field: "conversation_id", auth: true },
    { path: "/get_joined_conversation", body: { SessionId: bad }, field: "SessionId", auth: true },
    { path: "/inner/get_token", body: { session: bad, platform: 1 }, field: "session", auth: false },
    { path: "/inner/create_conversation", body: { sessions: [me, bad] }, field: "sessions", auth: false },
    {
      path: "/inner/join_conversation",
      body: { conversation_id: conversation, sessions: [bad] },
      field: "sessions",
      auth: false
    },
    {
      path: "/inner/kickout_conversation",
      body: { conversation_id: conversation, sessions: [bad] },
      field: "sessions",
      auth: false
    },
    {
      path: "/inner/set_archive_conversations",
      body: { conversation_ids: [conversation, bad], is_archive: true },
      field: "conversation_ids",
      auth: false
    }
  ]

  it("NUL and unpaired surrogates in any string field answer 400/10001 naming the field, and write nothing", async () => {
    for (const bad of POISONS) {
      for (const c of cases(bad)) {
        const reply = await server.post(c.path, c.body, c.auth ? token : undefined)
        const label = `${c.path} ${JSON.stringify(c.body)} → ${reply.status} ${JSON.stringify(reply.body)}`
        assert.strictEqual(reply.status, 400, label)
        assert.strictEqual(reply.body?.code, 10001, label)
        assert.include(reply.body.error, c.field, label)
        assert.include(reply.body.error, "NUL characters or unpaired UTF-16 surrogates", label)
      }
    }
    // Nothing was written: no message, no member, no archive flag; the conversation works on.
    const history = await server.post("/get_conversation_last_30_msg", { conversation_id: conversation }, token)
    assert.deepStrictEqual(history.body.data.Msg, [])
    const detail = await server.post("/get_conversation_detail", { conversation_id: conversation }, token)
    assert.strictEqual(detail.body.data.IsArchive, false)
    const joined = await server.post("/get_joined_conversation", {}, token)
    assert.deepStrictEqual(joined.body.data.Conversations, [conversation])
    // A well-formed pair (an emoji) is text like any other.
    const sent = await server.post("/send_msg", { conversation_id: conversation, content: "ok 😀" }, token)
    assert.strictEqual(sent.body?.code, 0, JSON.stringify(sent.body))
    const after = await server.post("/get_conversation_last_30_msg", { conversation_id: conversation }, token)
    assert.deepStrictEqual(after.body.data.Msg.map((m: any) => m.Content), ["ok 😀"])
  })

  it("a token whose sid holds NUL or a lone surrogate is refused (401), and /notify never fails on NUL", async () => {
    const key = new TextEncoder().encode("test-secret-test-secret-test-secret")
    for (const sid of POISONS) {
      const now = Math.floor(Date.now() / 1000)
      const forged = await new Jose.SignJWT({ sid, platform: 1 })
        .setProtectedHeader({ alg: "HS256", typ: "JWT" })
        .setIssuer("quick-im")
        .setIssuedAt(now)
        .setExpirationTime(now + 600)
        .sign(key)
      const reply = await server.post("/get_joined_conversation", {}, forged)
      assert.strictEqual(reply.status, 401, JSON.stringify(reply.body))
      assert.strictEqual(reply.body?.code, 10101)
      const poll = await server.raw(`/notify?protoc=poll&token=${encodeURIComponent(forged)}`, {})
      assert.strictEqual(poll.status, 401, JSON.stringify(poll.body))
    }
    for (
      const query of ["protoc=poll&token=%00", "protoc=sse&token=a%00b", `protoc=poll&token=${token}&last_msg_id=%00`]
    ) {
      const reply = await server.raw(`/notify?${query}`, {})
      assert.oneOf(reply.status, [400, 401], `${query} → ${reply.status} ${JSON.stringify(reply.body)}`)
      assert.isNumber(reply.body?.code)
    }
  })
})

const entityLayer = (db: DbKind) => conversationEntityLayer(settingsFor(db))

const databaseLayer = (db: DbKind) => DatabaseLive.pipe(Layer.provideMerge(AppConfig.make(settingsFor(db))))

const row = (conversationId: string, seq: number, content: string): MessageRow => ({
  conversation_id: conversationId,
  msg_id: `m-${String(seq).padStart(6, "0")}`,
  seq,
  from_session: "a",
  send_time: "2026-01-01T00:00:00.000+00:00",
  status: 0,
  type: 0,
  content,
  client_msg_id: null
})

/** The messages of the conversations starting with `prefix`, grouped by the transaction that wrote them. */
const statements = (prefix: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ tx: string; n: string }>`
      SELECT xmin::text AS tx, count(*) AS n FROM messages WHERE conversation_id LIKE ${prefix + "%"} GROUP BY 1`
    return rows.map((r) => Number(r.n))
  })

const stored = (prefix: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ conversation_id: string }>`
      SELECT conversation_id FROM messages WHERE conversation_id LIKE ${prefix + "%"} ORDER BY 1`
    return rows.map((r) => r.conversation_id)
  })

/**
 * A batcher with one commit in flight, and `appends` started together behind a first one: the
 * first goes alone and the others queue meanwhile, so they share the next statement.
 */
const behindOne = (bounds: CommitBounds, prefix: string, appends: ReadonlyArray<ReadonlyArray<MessageRow>>) =>
  Effect.gen(function* () {
    const batcher = makeCommitBatcher(yield* SqlClient.SqlClient, 1, bounds)
    return yield* Effect.forEach(
      [[row(`${prefix}lead`, 1, "lead")], ...appends],
      (rows) => Effect.exit(batcher.append(rows)),
      { concurrency: "unbounded" }
    ).pipe(Effect.map((exits) => ({ batcher, exits: exits.slice(1) })))
  })

// The entity path on both databases (their errors differ); the batcher alone on PostgreSQL.
for (const db of ["embedded", "postgres"] as const) {
  describe(`poison rows below the edge (${db})`, () => {
    it.live("a send the database refuses fails alone, once; the others of its commit and later sends succeed", () =>
      Effect.gen(function* () {
        const clientFor = yield* Conversation.client
        const prefix = `poison-${crypto.randomUUID()}-`
        const poisoned = clientFor(`${prefix}bad`)
        const others = [1, 2, 3].map((i) => clientFor(`${prefix}ok${i}`))
        for (const c of [poisoned, ...others]) yield* c.Create({ conversationType: 0, sessions: ["a"] })
        const send = (c: typeof poisoned, content: string) =>
          c.Send({ session: "a", status: 0, type: 0, content }).pipe(Effect.timeout("20 seconds"), Effect.exit)
        // The poison among good sends of its own conversation and of others, all at once.
        const [bad, ...good] = yield* Effect.all([
          send(poisoned, NUL),
          send(poisoned, "same conversation 1"),
          send(poisoned, "same conversation 2"),
          ...others.map((c) => send(c, "other conversation"))
        ], { concurrency: "unbounded" })
        assert.isTrue(Exit.isFailure(bad), String(bad))
        if (Exit.isFailure(bad)) {
          const error = Cause.findErrorOption(bad.cause)
          assert.strictEqual(
            error._tag === "Some" ? (error.value as any)._tag : Cause.pretty(bad.cause),
            "UnstorableMessage"
          )
        }
        for (const exit of good) assert.isTrue(Exit.isSuccess(exit), String(exit))
        // The conversation goes on, for a lone surrogate too, with a gapless sequence.
        const lone = yield* send(poisoned, "\ud800")
        assert.isTrue(Exit.isFailure(lone), String(lone))
        // Any other write the database refuses is answered once too (a defect, 10002 at the edge),
        // never replayed by an entity restart.
        const join = yield* poisoned.Join({ sessions: [NUL] }).pipe(Effect.timeout("20 seconds"), Effect.exit)
        assert.isTrue(Exit.isFailure(join) && Cause.hasDies(join.cause), String(join))
        const later = yield* send(poisoned, "later")
        assert.isTrue(Exit.isSuccess(later), String(later))
        if (Exit.isSuccess(later)) assert.strictEqual(later.value.seq, 3)
        const sql = yield* SqlClient.SqlClient
        const rows = yield* sql<{ content: string; seq: string }>`
          SELECT content, seq FROM messages WHERE conversation_id = ${`${prefix}bad`} ORDER BY seq`
        assert.deepStrictEqual(rows.map((r) => Number(r.seq)), [1, 2, 3])
        assert.deepStrictEqual(rows[2].content, "later")
        assert.deepStrictEqual((yield* stored(prefix)).length, 6)
      }).pipe(Effect.provide(entityLayer(db))))
  })
}

describe("group commit (postgres)", () => {
  const db = "postgres"
  it.live("a merged commit that fails is retried per conversation: only the offending rows fail", () =>
    Effect.gen(function* () {
      const prefix = `merged-${crypto.randomUUID()}-`
      const { exits } = yield* behindOne(defaultCommitBounds, prefix, [
        [row(`${prefix}a`, 1, "fine")],
        [row(`${prefix}bad`, 1, NUL)],
        [row(`${prefix}b`, 1, "fine"), row(`${prefix}b`, 2, "fine too")],
        [row(`${prefix}lone`, 1, "\udfff")],
        [row(`${prefix}c`, 1, "fine")]
      ])
      assert.deepStrictEqual(exits.map((e) => e._tag), ["Success", "Failure", "Success", "Failure", "Success"])
      assert.deepStrictEqual(yield* stored(prefix), [
        `${prefix}a`,
        `${prefix}b`,
        `${prefix}b`,
        `${prefix}c`,
        `${prefix}lead`
      ])
    }).pipe(Effect.provide(databaseLayer(db))))

  it.live("a synchronous throw while building a commit fails only its rows and never wedges the committer", () =>
    Effect.gen(function* () {
      const prefix = `throw-${crypto.randomUUID()}-`
      // JSON.stringify throws on a bigint: a stand-in for any bug in building the statement.
      const odd = { ...row(`${prefix}odd`, 1, "odd"), seq: 1n as unknown as number }
      const { batcher, exits } = yield* behindOne(defaultCommitBounds, prefix, [
        [row(`${prefix}a`, 1, "fine")],
        [odd],
        [row(`${prefix}b`, 1, "fine")]
      ]).pipe(Effect.timeout("10 seconds"))
      assert.deepStrictEqual(exits.map((e) => e._tag), ["Success", "Failure", "Success"])
      // Alone too, and the next commit still goes through.
      const alone = yield* Effect.exit(batcher.append([odd]))
      assert.isTrue(Exit.isFailure(alone))
      const next = yield* batcher.append([row(`${prefix}c`, 1, "after")]).pipe(
        Effect.timeout("10 seconds"),
        Effect.exit
      )
      assert.isTrue(Exit.isSuccess(next), String(next))
      assert.deepStrictEqual(yield* stored(prefix), [`${prefix}a`, `${prefix}b`, `${prefix}c`, `${prefix}lead`])
    }).pipe(Effect.provide(databaseLayer(db))))

  it.live("whoever starts the commits gets its answer with its own commit, however many others follow", () =>
    Effect.gen(function* () {
      const prefix = `steady-${crypto.randomUUID()}-`
      const batcher = makeCommitBatcher(yield* SqlClient.SqlClient, 1, defaultCommitBounds)
      // A steady load: each of another conversation's 40 batches is queued as the one before it
      // is answered, so the queue is never empty until the last.
      const others = 40
      let answered = 0
      const next = () =>
        batcher.submit([row(`${prefix}other`, answered + 1, "m")], [], () => {
          answered++
          if (answered < others) next()
        })
      // Queued with no commit under way (its caller does not start one): the append below starts
      // the commits, and its own rows go in the first.
      next()
      yield* batcher.append([row(`${prefix}first`, 1, "m")]).pipe(Effect.timeout("20 seconds"))
      const whenAnswered = answered
      for (let i = 0; i < 400 && answered < others; i++) yield* Effect.sleep("50 millis")
      assert.strictEqual(answered, others, "every queued batch was committed")
      // Answered with the first commit, not once the others stopped coming.
      assert.isAtMost(whenAnswered, 2)
      assert.strictEqual((yield* stored(prefix)).length, others + 1)
    }).pipe(Effect.provide(databaseLayer(db))))

  it.live("each merged commit stays within its bounds in rows and bytes; a larger Pending goes alone", () =>
    Effect.gen(function* () {
      const byRows = `rows-${crypto.randomUUID()}-`
      const nine = Array.from({ length: 9 }, (_, i) => [row(`${byRows}${i}`, 1, "m")])
      yield* behindOne({ maxRows: 2, maxBytes: defaultCommitBounds.maxBytes }, byRows, [
        ...nine,
        [1, 2, 3].map((seq) => row(`${byRows}big`, seq, "m"))
      ])
      const rowGroups = yield* statements(byRows)
      // lead alone, 9 singles in pairs (2,2,2,2,1), then the 3-row Pending alone.
      assert.strictEqual(rowGroups.reduce((a, b) => a + b, 0), 13)
      assert.deepStrictEqual([...rowGroups].sort(), [1, 1, 2, 2, 2, 2, 3])

      const byBytes = `bytes-${crypto.randomUUID()}-`
      yield* behindOne(
        { maxRows: 1024, maxBytes: 2_400 },
        byBytes,
        Array.from({ length: 6 }, (_, i) => [row(`${byBytes}${i}`, 1, "b".repeat(700))])
      )
      const byteGroups = yield* statements(byBytes)
      assert.deepStrictEqual([...byteGroups].sort(), [1, 2, 2, 2])

      // Unbounded, the same queue shares one statement (the fast path).
      const merged = `merged-${crypto.randomUUID()}-`
      yield* behindOne(
        defaultCommitBounds,
        merged,
        Array.from({ length: 9 }, (_, i) => [row(`${merged}${i}`, 1, "m")])
      )
      assert.deepStrictEqual([...(yield* statements(merged))].sort(), [1, 9])
    }).pipe(Effect.provide(databaseLayer(db))))
})
