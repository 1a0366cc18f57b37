/**
 * Inner endpoints are for the backend only: no CORS on `inner/*`, the cluster view and `/metrics`;
 * requests that come from a web page (`Origin`, `Sec-Fetch-Site` other than `none`) are refused
 * with 10003 (the console page only with QUICKIM_CONSOLE_SIGN_IN, same origin, loopback host);
 * QUICKIM_INNER_PORT serves them on a listener of their own, and the public one answers 404; a
 * node that exposes them beyond loopback without an admin key says so at start.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Option, Redacted } from "effect"
import * as Http from "node:http"
import { innerExposure } from "../src/App.ts"
import { freePort, runToExit, spawnServer } from "./support/process.ts"
import { settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

interface Answer {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: any
}

/** A request with exactly these headers (fetch would not let a test set `Host` or `Sec-Fetch-*`). */
const send = (base: string, method: string, path: string, headers: Record<string, string> = {}, body?: unknown) =>
  new Promise<Answer>((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body)
    const req = Http.request(base + path, {
      method,
      headers: { ...(data === undefined ? {} : { "content-type": "application/json" }), ...headers }
    }, (res) => {
      let text = ""
      res.setEncoding("utf8")
      res.on("data", (chunk) => (text += chunk))
      res.on("end", () => {
        let parsed: unknown = text
        try {
          parsed = text.length > 0 ? JSON.parse(text) : undefined
        } catch {
          // not JSON (metrics)
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed })
      })
    })
    req.on("error", reject)
    req.end(data)
  })

const CORS_HEADERS = (headers: Http.IncomingHttpHeaders) =>
  Object.keys(headers).filter((name) => name.startsWith("access-control-"))

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

describe("inner endpoints on the public listener", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())

  it("inner endpoints, the cluster view and /metrics answer without CORS headers; public ones keep them", async () => {
    const token = await send(server.url, "POST", "/inner/get_token", {}, { session: unique("s"), platform: 1 })
    assert.strictEqual(token.status, 200)
    assert.deepStrictEqual(CORS_HEADERS(token.headers), [])
    const cluster = await send(server.url, "GET", "/inner/cluster")
    assert.strictEqual(cluster.status, 200)
    assert.deepStrictEqual(CORS_HEADERS(cluster.headers), [])
    const metrics = await send(server.url, "GET", "/metrics")
    assert.strictEqual(metrics.status, 200)
    assert.deepStrictEqual(CORS_HEADERS(metrics.headers), [])

    const joined = await send(server.url, "POST", "/get_joined_conversation", {
      authorization: `Bearer ${token.body.data}`,
      origin: "http://app.example"
    }, {})
    assert.strictEqual(joined.status, 200)
    assert.strictEqual(joined.headers["access-control-allow-origin"], "*")
  })

  it("preflights to inner paths and /metrics are not approved; public preflights are", async () => {
    const preflight = { origin: "http://evil.example", "access-control-request-method": "POST" }
    for (const path of ["/inner/get_token", "/inner/create_conversation", "/inner/cluster", "/metrics"]) {
      const answer = await send(server.url, "OPTIONS", path, {
        ...preflight,
        "access-control-request-headers": "content-type,x-quickim-admin-key"
      })
      assert.deepStrictEqual(CORS_HEADERS(answer.headers), [], path)
      assert.notStrictEqual(answer.status, 204, path)
    }
    const open = await send(server.url, "OPTIONS", "/send_msg", {
      ...preflight,
      "access-control-request-headers": "authorization,content-type"
    })
    assert.strictEqual(open.status, 204)
    assert.strictEqual(open.headers["access-control-allow-origin"], "*")
  })

  it("a request with Origin, or Sec-Fetch-Site other than none, is refused with 10003 naming the header", async () => {
    const session = unique("victim")
    // A page's no-preflight POST: text/plain, from another origin.
    const simple = await send(server.url, "POST", "/inner/get_token", {
      origin: "http://evil.example",
      "content-type": "text/plain"
    }, { session, platform: 1 })
    assert.strictEqual(simple.status, 403)
    assert.strictEqual(simple.body.code, 10003)
    assert.include(simple.body.error, "Origin: http://evil.example")
    assert.deepStrictEqual(CORS_HEADERS(simple.headers), [])

    for (const site of ["cross-site", "same-site", "same-origin"]) {
      const create = await send(server.url, "POST", "/inner/create_conversation", { "sec-fetch-site": site }, {
        sessions: [session]
      })
      assert.strictEqual(create.status, 403, site)
      assert.strictEqual(create.body.code, 10003, site)
      assert.include(create.body.error, `Sec-Fetch-Site: ${site}`)
    }
    const cluster = await send(server.url, "GET", "/inner/cluster", { "sec-fetch-site": "cross-site" })
    assert.strictEqual(cluster.status, 403)
    assert.strictEqual(cluster.body.code, 10003)
    const metrics = await send(server.url, "GET", "/metrics", { origin: "http://evil.example" })
    assert.strictEqual(metrics.status, 403)
    assert.strictEqual(metrics.body.code, 10003)
    // The console page is refused too unless QUICKIM_CONSOLE_SIGN_IN is set.
    const host = new URL(server.url).host
    const console = await send(server.url, "POST", "/inner/get_token", {
      origin: server.url,
      "sec-fetch-site": "same-origin",
      host
    }, { session, platform: 1 })
    assert.strictEqual(console.status, 403)
    assert.strictEqual(console.body.code, 10003)

    // Typed into the address bar (`none`) or sent by a backend (neither header): allowed.
    const typed = await send(server.url, "GET", "/inner/cluster", { "sec-fetch-site": "none" })
    assert.strictEqual(typed.status, 200)
    const backend = await send(server.url, "POST", "/inner/get_token", {}, { session, platform: 1 })
    assert.strictEqual(backend.status, 200)
  })
})

describe("the console page with QUICKIM_CONSOLE_SIGN_IN", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { consoleSignIn: true }))
  })
  afterAll(() => server?.stop())

  it("may call its inner endpoints from the same loopback origin, and nothing else", async () => {
    const host = new URL(server.url).host
    const page = { origin: `http://${host}`, "sec-fetch-site": "same-origin", host }
    const body = { session: unique("dev"), platform: 1 }
    assert.strictEqual((await send(server.url, "POST", "/inner/get_token", page, body)).status, 200)
    const { origin: _, ...get } = page
    assert.strictEqual((await send(server.url, "GET", "/inner/cluster", get)).status, 200)
    assert.strictEqual((await send(server.url, "GET", "/metrics", get)).status, 200)

    const refused = async (headers: Record<string, string>, path = "/inner/get_token", payload: unknown = body) => {
      const answer = await send(server.url, "POST", path, headers, payload)
      assert.strictEqual(answer.status, 403, JSON.stringify(headers))
      assert.strictEqual(answer.body.code, 10003)
    }
    // Not one of the console's endpoints.
    await refused(page, "/inner/create_conversation", { sessions: ["x"] })
    // Another origin, another site, or a DNS name rebound to this machine (or a reverse proxy's name).
    await refused({ ...page, origin: "http://evil.example" })
    await refused({ ...page, "sec-fetch-site": "cross-site" })
    const port = new URL(server.url).port
    await refused({
      origin: `http://rebound.example:${port}`,
      "sec-fetch-site": "same-origin",
      host: `rebound.example:${port}`
    })
  })
})

describe("QUICKIM_INNER_PORT: a listener of their own", () => {
  let server: TestServer
  let inner: string
  beforeAll(async () => {
    const innerPort = await freePort()
    inner = `http://127.0.0.1:${innerPort}`
    server = await startServer(settingsFor("postgres", { innerPort, innerHost: "127.0.0.1" }))
  })
  afterAll(() => server?.stop())

  it("inner endpoints answer on the inner listener only; the public one answers 404 for them", async () => {
    const session = unique("split")
    const token = await send(inner, "POST", "/inner/get_token", {}, { session, platform: 1 })
    assert.strictEqual(token.status, 200)
    const created = await send(inner, "POST", "/inner/create_conversation", {}, { sessions: [session] })
    assert.strictEqual(created.body.code, 0)
    assert.strictEqual((await send(inner, "GET", "/inner/cluster")).status, 200)
    assert.strictEqual((await send(inner, "GET", "/metrics")).status, 200)

    for (const path of ["/inner/get_token", "/%69nner/get_token", "/inner/create_conversation"]) {
      const answer = await send(server.url, "POST", path, {}, { session, platform: 1, sessions: [session] })
      assert.strictEqual(answer.status, 404, path)
      assert.strictEqual(answer.body.code, 10004, path)
    }
    for (const path of ["/inner/cluster", "/metrics"]) {
      const answer = await send(server.url, "GET", path)
      assert.strictEqual(answer.status, 404, path)
      assert.strictEqual(answer.body.code, 10004, path)
    }

    // Public endpoints work on the public listener, and are not served on the inner one.
    const bearer = { authorization: `Bearer ${token.body.data}` }
    const conversation = created.body.data.ConversationId
    const sent = await send(server.url, "POST", "/send_msg", bearer, { conversation_id: conversation, content: "hi" })
    assert.strictEqual(sent.body.code, 0)
    assert.strictEqual((await send(inner, "POST", "/send_msg", bearer, { conversation_id: conversation })).status, 404)
    // Read state is public too (it was left out of the public listener's API once: 404).
    const marked = await send(server.url, "POST", "/mark_read", bearer, {
      conversation_id: conversation,
      msg_id: sent.body.data.MsgID
    })
    assert.strictEqual(marked.status, 200, JSON.stringify(marked.body))
    assert.strictEqual(marked.body.data.ReadMsgId, sent.body.data.MsgID)
    const unread = await send(server.url, "POST", "/get_unread", bearer, {})
    assert.strictEqual(unread.status, 200, JSON.stringify(unread.body))
    assert.strictEqual((await send(inner, "POST", "/get_unread", bearer, {})).status, 404)
    // The public listener's OpenAPI document describes what it serves, send_msg included, no inner path.
    const paths = Object.keys((await send(server.url, "GET", "/openapi.json")).body.paths)
    assert.includeMembers(paths, ["/send_msg", "/mark_read", "/get_unread", "/get_conversation_last_30_msg"])
    assert.isFalse(paths.some((path) => path.startsWith("/inner")), paths.join(" "))
    assert.strictEqual((await send(server.url, "GET", "/healthz")).status, 200)
  })

  it("the command line reaches inner endpoints through --inner-url and the public API through --url", async () => {
    const session = unique("cli")
    const created = await send(inner, "POST", "/inner/create_conversation", {}, { sessions: [session] })
    const conversation = created.body.data.ConversationId
    const args = ["--url", server.url, "--inner-url", inner, "send", "--session", session, conversation, "hello"]
    const sent = await runToExit({ env: {}, args })
    assert.strictEqual(sent.code, 0, sent.output)
    assert.match(sent.output.trim(), /^[0-9A-Za-z-]+$/)
    // Without it, inner calls go to --url, which does not serve them.
    const lost = await runToExit({ env: {}, args: ["--url", server.url, "token", "--session", session] })
    assert.strictEqual(lost.code, 1)
    assert.include(lost.output, "unknown path")
  })
})

describe("exposure warning", () => {
  it("decides from the hosts and the admin key", () => {
    const base = settingsFor("postgres")
    assert.isUndefined(innerExposure({ ...base, host: "127.0.0.1" }))
    assert.isUndefined(innerExposure({ ...base, host: "localhost" }))
    assert.isDefined(innerExposure({ ...base, host: "0.0.0.0" }))
    assert.isDefined(innerExposure({ ...base, host: "::" }))
    assert.isUndefined(innerExposure({ ...base, host: "0.0.0.0", adminKey: Option.some(Redacted.make("k")) }))
    assert.isUndefined(innerExposure({ ...base, host: "0.0.0.0", innerPort: 9000, innerHost: "127.0.0.1" }))
    assert.isDefined(innerExposure({ ...base, host: "127.0.0.1", innerPort: 9000, innerHost: "0.0.0.0" }))
  })

  it("a node on 0.0.0.0 without an admin key warns once at start", async () => {
    const node = await spawnServer({
      env: {
        HOST: "0.0.0.0",
        QUICKIM_LOG_FORMAT: "json",
        DATABASE_URL: testDatabaseUrl(),
        QUICKIM_JWT_SECRET: "test-secret-test-secret-test-secret"
      }
    })
    try {
      const warnings = node.output().split("\n").filter((line) => line.includes("without QUICKIM_ADMIN_KEY"))
      assert.strictEqual(warnings.length, 1, node.output())
      assert.include(warnings[0], "QUICKIM_INNER_PORT")
      assert.include(JSON.parse(warnings[0]).level, "WARN")
    } finally {
      await node.stop()
    }
  })
})
