/**
 * Malformed requests per endpoint: each gets the envelope with its precise code and HTTP status,
 * no stack trace, and writes nothing.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Option, Redacted } from "effect"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

interface Case {
  readonly path: string
  readonly body: unknown
  readonly status: number
  readonly code: number
  readonly auth?: boolean
}

describe("bad input", () => {
  let server: TestServer
  let token: string
  let conversation: string
  const me = `me-${crypto.randomUUID()}`

  beforeAll(async () => {
    server = await startServer(settingsFor("embedded", { maxBodyBytes: 2048 }))
    token = await server.token(me)
    conversation = (await server.post("/inner/create_conversation", { sessions: [me] })).body.data.ConversationId
  })
  afterAll(() => server?.stop())

  const id = () => conversation
  const validMsgId = "EDCZL-SY32-243Y-VWQ"
  const cases = (): Array<Case> => [
    // conversation endpoints
    { path: "/check_joined_conversation", body: {}, status: 400, code: 10001 },
    { path: "/check_joined_conversation", body: { conversation_id: 42 }, status: 400, code: 10001 },
    { path: "/check_joined_conversation", body: { conversation_id: "" }, status: 400, code: 10001 },
    { path: "/get_joined_conversation", body: "[1,2", status: 400, code: 10001 },
    { path: "/get_conversation_detail", body: { conversation_id: null }, status: 400, code: 10001 },
    { path: "/get_conversation_detail", body: { conversation_id: "x".repeat(200) }, status: 400, code: 10001 },
    { path: "/join_conversation", body: [], status: 400, code: 10001 },
    { path: "/create_conversation", body: { conversation_type: "1" }, status: 400, code: 10001 },
    { path: "/create_conversation", body: { conversation_type: 1.5 }, status: 400, code: 10001 },
    { path: "/create_conversation", body: { conversation_type: 16 }, status: 400, code: 90010 },
    { path: "/create_conversation", body: { conversation_type: -1 }, status: 400, code: 90010 },
    { path: "/leave_conversation", body: { conversation_id: ["a"] }, status: 400, code: 10001 },
    { path: "/get_lastone_msgid", body: "not json", status: 400, code: 10001 },
    // send
    { path: "/send_msg", body: { conversation_id: id(), type: 1 }, status: 400, code: 10001 },
    { path: "/send_msg", body: { conversation_id: id(), content: 5 }, status: 400, code: 10001 },
    { path: "/send_msg", body: { conversation_id: id(), content: "x", status: "0" }, status: 400, code: 10001 },
    { path: "/send_msg", body: { conversation_id: id(), content: "x", type: 2 ** 40 }, status: 400, code: 10001 },
    { path: "/send_msg", body: { conversation_id: id(), content: "x", client_msg_id: "" }, status: 400, code: 10001 },
    { path: "/send_msg", body: { conversation_id: id(), content: "x".repeat(4096) }, status: 413, code: 10005 },
    // history
    {
      path: "/get_conversation_msg_by_range",
      body: { conversation_id: id(), start_msg_id: validMsgId },
      status: 400,
      code: 10001
    },
    {
      path: "/get_conversation_msg_by_range",
      body: { conversation_id: id(), start_msg_id: "bogus", end_msg_id: validMsgId },
      status: 400,
      code: 10001
    },
    { path: "/get_conversation_30msg_before_the_id", body: { conversation_id: id() }, status: 400, code: 10001 },
    {
      path: "/get_conversation_30msg_after_the_id",
      body: { conversation_id: id(), msg_id: "edczl-sy32-243y-vwq" },
      status: 400,
      code: 10001
    },
    { path: "/get_conversation_last_30_msg", body: { conversation_id: id(), desc: "yes" }, status: 400, code: 10001 },
    { path: "/get_conversation_lastone_msg", body: {}, status: 400, code: 10001 },
    // inner
    { path: "/inner/get_token", body: { session: "s" }, status: 400, code: 10001, auth: false },
    { path: "/inner/get_token", body: { session: "", platform: 1 }, status: 400, code: 10001, auth: false },
    { path: "/inner/get_token", body: { session: "s", platform: "1" }, status: 400, code: 10001, auth: false },
    {
      path: "/inner/create_conversation",
      body: { conversation_type: 0, sessions: [] },
      status: 400,
      code: 90011,
      auth: false
    },
    { path: "/inner/create_conversation", body: { conversation_type: 0 }, status: 400, code: 10001, auth: false },
    {
      path: "/inner/create_conversation",
      body: { conversation_type: 99, sessions: ["a"] },
      status: 400,
      code: 90010,
      auth: false
    },
    { path: "/inner/create_conversation", body: { sessions: [""] }, status: 400, code: 10001, auth: false },
    {
      path: "/inner/kickout_conversation",
      body: { conversation_id: id(), sessions: [] },
      status: 400,
      code: 90011,
      auth: false
    },
    {
      path: "/inner/kickout_conversation",
      body: { conversation_id: id(), sessions: "a" },
      status: 400,
      code: 10001,
      auth: false
    },
    {
      path: "/inner/join_conversation",
      body: { conversation_id: id(), sessions: [] },
      status: 400,
      code: 90011,
      auth: false
    },
    { path: "/inner/join_conversation", body: { sessions: ["a"] }, status: 400, code: 10001, auth: false },
    {
      path: "/inner/set_archive_conversations",
      body: { conversation_ids: [id()] },
      status: 400,
      code: 10001,
      auth: false
    },
    {
      path: "/inner/set_archive_conversations",
      body: { conversation_ids: id(), is_archive: true },
      status: 400,
      code: 10001,
      auth: false
    }
  ]

  it("every malformed request gets its code, status and a message, and nothing is written", async () => {
    for (const c of cases()) {
      const reply = await server.post(c.path, c.body, c.auth === false ? undefined : token)
      const label = `${c.path} ${JSON.stringify(c.body).slice(0, 80)} → ${JSON.stringify(reply.body)}`
      assert.strictEqual(reply.status, c.status, label)
      assert.strictEqual(reply.body?.code, c.code, label)
      assert.isString(reply.body.error, label)
      assert.isAbove(reply.body.error.length, 0, label)
      assert.notProperty(reply.body, "data", label)
      assert.notMatch(reply.body.error, /\bat .*\.ts:\d+/, `no stack trace: ${label}`)
    }
    // Nothing was stored by any of them.
    const history = await server.post("/get_conversation_last_30_msg", { conversation_id: conversation }, token)
    assert.deepStrictEqual(history.body.data.Msg, [])
    const joined = await server.post("/get_joined_conversation", {}, token)
    assert.deepStrictEqual(joined.body.data.Conversations, [conversation])
  })

  it("unknown paths and methods answer 10004 in the envelope", async () => {
    const reply = await server.raw("/no_such_endpoint", { method: "POST", body: "{}" })
    assert.strictEqual(reply.status, 404)
    assert.strictEqual(reply.body.code, 10004)
    const get = await server.raw("/send_msg", { method: "GET" })
    assert.strictEqual(get.body.code, 10004)
  })

  it("CORS preflight is answered for browser clients", async () => {
    const res = await fetch(server.url + "/send_msg", {
      method: "OPTIONS",
      headers: { origin: "http://example.test", "access-control-request-method": "POST" }
    })
    assert.isBelow(res.status, 300)
    assert.isNotNull(res.headers.get("access-control-allow-origin"))
  })
})

describe("inner endpoint guard", () => {
  it("refuses callers outside QUICKIM_INNER_ALLOW with 10003", async () => {
    const server = await startServer(settingsFor("embedded", { innerAllow: ["10.0.0.0/8"] }))
    try {
      const reply = await server.post("/inner/get_token", { session: "s", platform: 1 })
      assert.strictEqual(reply.status, 403)
      assert.strictEqual(reply.body.code, 10003)
    } finally {
      await server.stop()
    }
  })

  it("with QUICKIM_ADMIN_KEY set, requires the key as well", async () => {
    const server = await startServer(settingsFor("embedded", { adminKey: Option.some(Redacted.make("k3y")) }))
    try {
      const body = { session: "s", platform: 1 }
      assert.strictEqual((await server.post("/inner/get_token", body)).body.code, 10003)
      assert.strictEqual(
        (await server.post("/inner/get_token", body, undefined, { "x-quickim-admin-key": "wrong" })).body.code,
        10003
      )
      const ok = await server.post("/inner/get_token", body, undefined, { "x-quickim-admin-key": "k3y" })
      assert.strictEqual(ok.body.code, 0)
    } finally {
      await server.stop()
    }
  })
})
