/**
 * `send_msg` has its own route (src/server/SendRoute.ts) instead of HttpApi's. Every answer below
 * was recorded from the server when HttpApi still served `send_msg` (8be07a0): status, code and
 * error text, for each way a request can be wrong and the ways it can be right. The route must
 * answer each the same, and store exactly the sends it accepted.
 */
import * as Net from "node:net"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Exit from "effect/Exit"
import * as Schema from "effect/Schema"
import { decodeSendMsgFast, SendMsgPayload } from "../src/api/Api.ts"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

interface Answer {
  readonly status: number
  readonly code: number
  readonly error?: string
}

const invalid = (why: string): Answer => ({ status: 400, code: 10001, error: `invalid request body: ${why}` })
const at = (why: string, key: string) => invalid(`${why} at ["${key}"]`)
const MISSING_TOKEN: Answer = { status: 401, code: 10101, error: "missing bearer token" }
const SENT: Answer = { status: 200, code: 0 }

/** The node's count of send_msg requests answered beside the router. */
const besideRouter = async (server: TestServer) => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith("quickim_send_msg_beside_router_total"))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1))
}

// Each request is answered beside Effect's router (SendListener) when it can be, through it when the
// access log is on: the same answers either way.
describe.each([
  { way: "beside the router", accessLog: false },
  { way: "through the router", accessLog: true }
])("send_msg by its own route, $way", ({ accessLog }) => {
  let server: TestServer
  let conversation: string
  let member: string
  let outsider: string

  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { maxContentBytes: 1000, accessLog }))
    const alice = unique("alice")
    member = await server.token(alice)
    outsider = await server.token(unique("bob"))
    const created = await server.post("/inner/create_conversation", { sessions: [alice] })
    conversation = created.body.data.ConversationId
  })
  afterAll(() => server?.stop())

  const send = async (
    body: string | undefined,
    headers: Record<string, string>,
    method = "POST",
    path = "/send_msg"
  ) => {
    const response = await fetch(server.url + path, { method, headers, body })
    return { status: response.status, headers: response.headers, body: await response.json() }
  }
  const json = (token: string | null = member) => ({
    "content-type": "application/json",
    ...(token === null ? {} : { authorization: `Bearer ${token}` })
  })
  const expect = (reply: { status: number; body: any }, answer: Answer, what: string) => {
    assert.strictEqual(reply.status, answer.status, `${what}: ${JSON.stringify(reply.body)}`)
    assert.strictEqual(reply.body.code, answer.code, what)
    if (answer.error !== undefined) assert.strictEqual(reply.body.error, answer.error, what)
    if (answer.status === 200) assert.isString(reply.body.data.MsgID, what)
    else assert.notProperty(reply.body, "data", what)
  }

  it("answers every wrong request as HttpApi did, and stores only what it accepted", async () => {
    const ok = JSON.stringify({ conversation_id: conversation, content: "hi" })
    const body = (fields: Record<string, unknown>) => JSON.stringify({ conversation_id: conversation, ...fields })
    const cases: ReadonlyArray<[string, string | undefined, Record<string, string>, Answer]> = [
      ["no token", ok, json(null), MISSING_TOKEN],
      ["empty bearer", ok, { ...json(null), authorization: "Bearer " }, MISSING_TOKEN],
      ["bearer of spaces", ok, { ...json(null), authorization: "Bearer    " }, MISSING_TOKEN],
      ["basic scheme", ok, { ...json(null), authorization: "Basic abc" }, MISSING_TOKEN],
      ["bad token", ok, { ...json(null), authorization: "Bearer abc.def.ghi" }, {
        status: 401,
        code: 10101,
        error: "invalid token"
      }],
      ["bad token before bad body", "{", { ...json(null), authorization: "Bearer abc" }, {
        status: 401,
        code: 10101,
        error: "invalid token"
      }],
      ["empty body", "", json(), invalid("Expected object")],
      ["not JSON", "{", json(), invalid("Expected a valid JSON body")],
      ["an array", "[]", json(), invalid("Expected object")],
      ["null", "null", json(), invalid("Expected object")],
      ["a number", "3", json(), invalid("Expected object")],
      ["no conversation_id", JSON.stringify({ content: "x" }), json(), at("Missing key", "conversation_id")],
      ["conversation_id a number", JSON.stringify({ conversation_id: 3, content: "x" }), json(), {
        ...at("Expected string", "conversation_id")
      }],
      ["empty conversation_id", body({ conversation_id: "", content: "x" }), json(), {
        ...at("conversation_id must not be empty", "conversation_id")
      }],
      ["long conversation_id", body({ conversation_id: "c".repeat(300), content: "x" }), json(), {
        ...at("conversation_id is longer than 128 characters", "conversation_id")
      }],
      ["no content", body({}), json(), at("Missing key", "content")],
      ["content with NUL", body({ content: "a\u0000b" }), json(), {
        ...at("content must not contain NUL characters or unpaired UTF-16 surrogates", "content")
      }],
      ["content with a lone surrogate", `{"conversation_id":"${conversation}","content":"a\\ud800b"}`, json(), {
        ...at("content must not contain NUL characters or unpaired UTF-16 surrogates", "content")
      }],
      ["empty client_msg_id", body({ content: "x", client_msg_id: "" }), json(), {
        ...at("Expected a value with a length between 1 and 128", "client_msg_id")
      }],
      ["long client_msg_id", body({ content: "x", client_msg_id: "a".repeat(129) }), json(), {
        ...at("Expected a value with a length between 1 and 128", "client_msg_id")
      }],
      ["status not an integer", body({ content: "x", status: 1.5 }), json(), at("Expected an integer", "status")],
      ["status past int32", body({ content: "x", status: 2 ** 31 }), json(), {
        ...at("Expected a value between -2147483648 and 2147483647", "status")
      }],
      ["type a string", body({ content: "x", type: "1" }), json(), at("Expected number", "type")],
      ["two wrong fields: the first", JSON.stringify({ conversation_id: 1, content: 2 }), json(), {
        ...at("Expected string", "conversation_id")
      }],
      ["unknown conversation", body({ conversation_id: "nope-1", content: "x" }), json(), {
        status: 404,
        code: 90020,
        error: "conversation nope-1 not found"
      }],
      ["not a member", ok, json(outsider), {
        status: 403,
        code: 90021,
        error: `not a member of conversation ${conversation}`
      }],
      ["content over QUICKIM_MAX_CONTENT_BYTES", body({ content: "a".repeat(1001) }), json(), {
        status: 413,
        code: 10005,
        error: "content is larger than 1000 bytes (UTF-8)"
      }],
      ["content over the limit in UTF-8 only", body({ content: "é".repeat(501) }), json(), {
        status: 413,
        code: 10005,
        error: "content is larger than 1000 bytes (UTF-8)"
      }],
      ["body over QUICKIM_MAX_BODY_BYTES", body({ content: "a".repeat(70_000) }), json(), {
        status: 413,
        code: 10005,
        error: "request body is larger than 65536 bytes"
      }]
    ]
    const before = await besideRouter(server)
    for (const [what, payload, headers, answer] of cases) expect(await send(payload, headers), answer, what)
    // All but six without a valid token, the body over the limit, and each token's first use (which
    // verifies it) are answered beside the router.
    const beside = await besideRouter(server) - before
    if (accessLog) assert.strictEqual(beside, 0)
    else assert.strictEqual(beside, cases.length - 6 - 1 - 2)

    const accepted: Array<[string, string | undefined, Record<string, string>]> = [
      ["lower-case scheme, two spaces", ok, { ...json(null), authorization: `bearer  ${member}` }],
      ["unknown fields are ignored", body({ content: "x", zzz: 1 }), json()],
      ["text/plain", ok, { ...json(), "content-type": "text/plain" }],
      ["form content type", ok, { ...json(), "content-type": "application/x-www-form-urlencoded" }],
      ["no content type", ok, { authorization: `Bearer ${member}` }],
      ["content at the limit in UTF-8", body({ content: "é".repeat(500) }), json()],
      ["every field", body({ content: "full", status: 3, type: -2, client_msg_id: "m1" }), json()]
    ]
    const ids: Array<string> = []
    for (const [what, payload, headers] of accepted) {
      const reply = await send(payload, headers)
      expect(reply, SENT, what)
      assert.strictEqual(reply.headers.get("content-type"), "application/json", what)
      ids.push(reply.body.data.MsgID)
    }
    // The same client_msg_id again: the first send's MsgID, nothing stored twice.
    const again = await send(body({ content: "full", status: 3, type: -2, client_msg_id: "m1" }), json())
    expect(again, SENT, "a retried client_msg_id")
    assert.strictEqual(again.body.data.MsgID, ids[ids.length - 1])

    const history = await server.post("/get_conversation_last_30_msg", { conversation_id: conversation }, member)
    assert.deepStrictEqual(history.body.data.Msg.map((m: any) => m.MsgId), ids)
    const last = history.body.data.Msg[ids.length - 1]
    assert.deepInclude(last, { Content: "full", Status: 3, Type: -2 })
  })

  /**
   * One request over a raw connection: `parts` are written in turn, 20 ms apart; `afterContinue`
   * is written once the server answers 100 Continue; `end` ends the client's side after the parts.
   * The answer is read until the server closes.
   */
  const raw = (parts: ReadonlyArray<string | Uint8Array>, afterContinue?: string, end = false) =>
    new Promise<{ status: number; body: any; text: string }>((resolve, reject) => {
      const url = new URL(server.url)
      const socket = Net.connect(Number(url.port), url.hostname)
      let text = ""
      socket.setEncoding("latin1")
      socket.on("data", (chunk: string) => {
        text += chunk
        if (afterContinue !== undefined && text.startsWith("HTTP/1.1 100")) {
          text = text.slice(text.indexOf("\r\n\r\n") + 4)
          socket.write(afterContinue)
          afterContinue = undefined
        }
      })
      socket.on("error", reject)
      socket.on("close", () => {
        const status = Number(text.split(" ")[1])
        const payload = text.slice(text.indexOf("\r\n\r\n") + 4)
        let body: any = undefined
        try {
          body = JSON.parse(payload)
        } catch {
          // not JSON: the test says what it expected
        }
        resolve({ status, body, text })
      })
      socket.on("connect", async () => {
        for (const part of parts) {
          socket.write(part)
          await new Promise((r) => setTimeout(r, 20))
        }
        if (end) socket.end()
      })
    })
  const head = (headers: Record<string, string | number>) =>
    "POST /send_msg HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
    + Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n"

  it("reads a body however it is framed", async () => {
    const auth = { authorization: `Bearer ${member}`, "content-type": "application/json" }
    const ok = JSON.stringify({ conversation_id: conversation, content: "framed é" })
    const bytes = Buffer.from(ok)
    const accepted: Array<[string, ReadonlyArray<string | Uint8Array>, string?]> = [
      ["in one write", [head({ ...auth, "content-length": bytes.length }) + ok]],
      ["in three writes", [
        head({ ...auth, "content-length": bytes.length }),
        bytes.subarray(0, 10),
        bytes.subarray(10)
      ]],
      // The byte order mark is dropped, as the platform's reader drops it.
      ["after a byte order mark", [head({ ...auth, "content-length": bytes.length + 3 }) + "\uFEFF" + ok]],
      ["chunked", [
        head({ ...auth, "transfer-encoding": "chunked" }),
        `${bytes.subarray(0, 7).length.toString(16)}\r\n`,
        bytes.subarray(0, 7),
        `\r\n${bytes.subarray(7).length.toString(16)}\r\n`,
        bytes.subarray(7),
        "\r\n0\r\n\r\n"
      ]],
      ["after 100 Continue", [head({ ...auth, "content-length": bytes.length, expect: "100-continue" })], ok]
    ]
    const ids: Array<string> = []
    for (const [what, parts, afterContinue] of accepted) {
      const reply = await raw(parts, afterContinue)
      expect(reply, SENT, what)
      ids.push(reply.body.data.MsgID)
    }

    // Larger than QUICKIM_MAX_BODY_BYTES without saying so beforehand: the platform's reader stops it.
    const big = JSON.stringify({ conversation_id: conversation, content: "a".repeat(70_000) })
    const chunked = await raw([
      head({ ...auth, "transfer-encoding": "chunked" }),
      `${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`
    ])
    expect(
      chunked,
      { status: 413, code: 10005, error: "request body is larger than 65536 bytes" },
      "chunked, too large"
    )

    // A body cut short: nothing stored, nobody else harmed.
    const cut = await raw([head({ ...auth, "content-length": bytes.length + 50 }) + ok], undefined, true)
    assert.notStrictEqual(cut.status, 200, cut.text)
    const after = await send(ok, json())
    expect(after, SENT, "a send after the cut one")
    ids.push(after.body.data.MsgID)

    const history = await server.post("/get_conversation_last_30_msg", { conversation_id: conversation }, member)
    const stored = history.body.data.Msg.filter((m: any) => m.Content === "framed é").map((m: any) => m.MsgId)
    assert.deepStrictEqual(stored, ids)
  })

  it("is POST only, on the router's usual spellings of its path, with CORS", async () => {
    const ok = JSON.stringify({ conversation_id: conversation, content: "path" })
    for (const method of ["GET", "PUT"]) {
      expect(await send(method === "GET" ? undefined : ok, json(), method), {
        status: 404,
        code: 10004,
        error: "unknown path or method"
      }, method)
    }
    for (const path of ["/send_msg/", "/SEND_MSG", "//send_msg", "/send_msg?x=1"]) {
      expect(await send(ok, json(), "POST", path), SENT, path)
    }
    const fromPage = await send(ok, { ...json(), origin: "http://example.com" })
    expect(fromPage, SENT, "with an Origin")
    assert.strictEqual(fromPage.headers.get("access-control-allow-origin"), "*")
    const preflight = await fetch(server.url + "/send_msg", {
      method: "OPTIONS",
      headers: { origin: "http://example.com", "access-control-request-method": "POST" }
    })
    await preflight.body?.cancel()
    assert.strictEqual(preflight.status, 204)
    assert.include(preflight.headers.get("access-control-allow-methods") ?? "", "POST")
  })
})

describe("send_msg's fast decoding", () => {
  // Values each field may take (absent included), chosen at the schema's edges.
  const ABSENT = Symbol("absent")
  const text = [
    "",
    "a",
    "c".repeat(128),
    "c".repeat(129),
    "a\u0000b",
    "\ud800",
    "x\udc00",
    "\ud83d\ude00",
    "é".repeat(70)
  ]
  const others = [3, 0, null, true, [], {}, ["a"], { a: 1 }]
  const ints = [
    0,
    -1,
    7,
    -0,
    2147483647,
    2147483648,
    -2147483648,
    -2147483649,
    1.5,
    2 ** 53,
    1e300,
    "1",
    null,
    [],
    true
  ]
  const pools: Record<string, ReadonlyArray<unknown>> = {
    conversation_id: [ABSENT, ...text, ...others],
    content: [ABSENT, ...text, ...others],
    status: [ABSENT, ...ints],
    type: [ABSENT, ...ints],
    client_msg_id: [ABSENT, ...text, ...others],
    zzz: [ABSENT, 1, "x", null],
    __proto__: [ABSENT, { content: "p" }]
  }
  const wholes: ReadonlyArray<unknown> = [null, [], 3, "body", true, undefined]
  const schema = Schema.decodeUnknownExit(Schema.Union([SendMsgPayload]))

  it("accepts exactly what the schema accepts, as the same value", () => {
    // mulberry32: a seeded generator whose low bits are as random as its high ones.
    let seed = 20261206
    const random = (n: number) => {
      seed = (seed + 0x6d2b79f5) | 0
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
      return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n)
    }
    let accepted = 0
    for (let i = 0; i < 20_000; i++) {
      let body: unknown
      if (random(50) === 0) body = wholes[random(wholes.length)]
      else {
        // Fields made as JSON.parse makes them: own properties only, "__proto__" included.
        const fields: Array<string> = []
        for (const [key, pool] of Object.entries(pools)) {
          // Valid-looking values are likelier, so that plenty of bodies pass.
          const value = random(3) === 0 ? pool[random(pool.length)] : pool[Math.min(pool.length - 1, random(3))]
          if (value !== ABSENT) fields.push(`${JSON.stringify(key)}:${JSON.stringify(value)}`)
        }
        body = JSON.parse(`{${fields.join(",")}}`)
      }
      const fast = decodeSendMsgFast(body)
      const slow = schema(body)
      if (Exit.isSuccess(slow)) accepted++
      const what = JSON.stringify(body)
      assert.strictEqual(fast !== undefined, Exit.isSuccess(slow), what)
      if (fast !== undefined && Exit.isSuccess(slow)) assert.deepStrictEqual(fast, slow.value, what)
    }
    // Enough of both kinds to mean something.
    assert.isAbove(accepted, 1_000)
    assert.isBelow(accepted, 19_000)
  })
})
