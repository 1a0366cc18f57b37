/**
 * Tokens end to end over real sockets: `exp` and `iat` are required, a short signing key refuses
 * start-up, push connections end when their token expires, `inner/revoke_tokens` refuses earlier
 * tokens and closes live connections (on every node), and the token never reaches traces or logs.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Duration, Option, Redacted } from "effect"
import * as Http from "node:http"
import * as Jose from "jose"
import { runSubscription } from "../src/client/Push.ts"
import { hasChromium, launchChromium } from "./support/browser.ts"
import { settled, startCluster, type TestCluster } from "./support/cluster.ts"
import { startCollector } from "./support/otlp.ts"
import { pgAdminUrl, sql } from "./support/postgres.ts"
import { spawnServer } from "./support/process.ts"
import { connectSse, connectWs, sleep } from "./support/push.ts"
import { settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

/** The page's own `document`, in functions evaluated in the browser. */
declare const document: any

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`
const SECRET = "test-secret-test-secret-test-secret"

/** Resolves with `promise`'s value, or rejects after `ms` (a bound, not a timing assertion). */
const within = <A>(promise: Promise<A>, ms: number, what: string) =>
  Promise.race([
    promise,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms))
  ])

const sign = (claims: Record<string, unknown>, build: (jwt: Jose.SignJWT) => Jose.SignJWT) =>
  build(new Jose.SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuer("quick-im"))
    .sign(new TextEncoder().encode(SECRET))

/** One long poll with the token in the Authorization header. */
const poll = (base: string, token: string) =>
  fetch(`${base}/notify?protoc=poll`, { headers: { authorization: `Bearer ${token}` } }).then(async (res) => ({
    status: res.status,
    body: res.status === 204 ? undefined : await res.json()
  }))

describe("token claims and keys", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())

  it("a token without exp is refused on every call, over the API and /notify", async () => {
    const token = await sign({ sid: unique("noexp"), platform: 1 }, (jwt) => jwt.setIssuedAt())
    for (let i = 0; i < 3; i++) {
      const reply = await server.post("/get_joined_conversation", {}, token)
      assert.strictEqual(reply.status, 401)
      assert.strictEqual(reply.body.code, 10101)
      assert.include(reply.body.error, "exp")
    }
    const notify = await poll(server.url, token)
    assert.strictEqual(notify.status, 401)
    assert.strictEqual(notify.body.code, 10101)
  })

  it("a token without iat is refused", async () => {
    const token = await sign({ sid: unique("noiat"), platform: 1 }, (jwt) => jwt.setExpirationTime("1h"))
    const reply = await server.post("/get_joined_conversation", {}, token)
    assert.strictEqual(reply.status, 401)
    assert.include(reply.body.error, "iat")
  })

  it("a token with exp and iat signed with the key is accepted", async () => {
    const token = await sign({ sid: unique("ok"), platform: 1 }, (jwt) => jwt.setIssuedAt().setExpirationTime("1h"))
    assert.strictEqual((await server.post("/get_joined_conversation", {}, token)).body.code, 0)
  })

  it("a signing key shorter than 32 bytes refuses start-up with a clear message", async () => {
    const short = settingsFor("postgres", { jwtSecret: Option.some(Redacted.make("only-31-bytes-long-secret-12345")) })
    const failure = await startServer(short).then(() => undefined, (e: unknown) => e)
    assert.isDefined(failure, "the server started with a 31-byte key")
    assert.include(String(failure), "at least 32")
  })

  it("revoke_tokens needs at least one session", async () => {
    const reply = await server.post("/inner/revoke_tokens", { sessions: [] })
    assert.strictEqual(reply.status, 400)
    assert.strictEqual(reply.body.code, 10001)
    assert.include(reply.body.error, "sessions")
  })
})

describe("revocation on one node", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())

  it("refuses earlier tokens, ends live ws, sse and poll, and a token issued afterwards works", async () => {
    const alice = unique("alice")
    const old = await server.token(alice)
    const ws = await connectWs(server.url, old)
    const sse = await connectSse(server.url, old)
    const waiting = poll(server.url, old)
    await sleep(300)
    const revoked = await server.post("/inner/revoke_tokens", { sessions: [alice] })
    assert.strictEqual(revoked.body.code, 0, JSON.stringify(revoked.body))
    assert.isString(revoked.body.data.RevokedAt)

    const closed = await within(ws.closed, 5000, "ws close")
    assert.strictEqual(closed.code, 4001)
    assert.strictEqual(closed.reason, "token revoked")
    await within(sse.closed, 5000, "sse end")
    assert.deepStrictEqual(sse.errors.map((e) => JSON.parse(e)), [{ code: 10101, error: "token revoked" }])
    const answer = await within(waiting, 5000, "poll answer")
    assert.strictEqual(answer.status, 401)
    assert.deepStrictEqual(answer.body, { code: 10101, error: "token revoked" })

    const refused = await server.post("/get_joined_conversation", {}, old)
    assert.strictEqual(refused.status, 401)
    assert.strictEqual(refused.body.error, "token revoked")
    assert.strictEqual((await poll(server.url, old)).status, 401)

    const fresh = await server.token(alice)
    assert.strictEqual((await server.post("/get_joined_conversation", {}, fresh)).body.code, 0)
    const again = await connectWs(server.url, fresh)
    again.close()
  })

  it("a revocation for one platform leaves the session's other platforms alone", async () => {
    const bob = unique("bob")
    const [phone, desktop] = [await server.token(bob, 1), await server.token(bob, 2)]
    const phoneWs = await connectWs(server.url, phone)
    const desktopWs = await connectWs(server.url, desktop)
    const reply = await server.post("/inner/revoke_tokens", { sessions: [bob], platform: 1 })
    assert.strictEqual(reply.body.code, 0)
    assert.strictEqual((await within(phoneWs.closed, 5000, "ws close")).code, 4001)
    assert.strictEqual((await server.post("/get_joined_conversation", {}, phone)).status, 401)
    assert.strictEqual((await server.post("/get_joined_conversation", {}, desktop)).body.code, 0)
    // The other platform's connection is still open: it receives a message sent now.
    const conversation_id = (await server.post("/inner/create_conversation", { sessions: [bob] })).body.data
      .ConversationId
    const sent = await server.post("/send_msg", { conversation_id, content: "still here" }, desktop)
    assert.strictEqual(sent.body.code, 0)
    await desktopWs.until((m) => m.some((x) => x.MsgId === sent.body.data.MsgID), 5000)
    desktopWs.close()
  })
})

describe("push connections end when their token expires", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { tokenTtl: Duration.seconds(2) }))
  })
  afterAll(() => server?.stop())

  it("ws closes with 4001, sse sends event: error 10101 and ends, a waiting poll answers 401", async () => {
    const token = await server.token(unique("carol"))
    const ws = await connectWs(server.url, token)
    const sse = await connectSse(server.url, token)
    const waiting = poll(server.url, token)
    const closed = await within(ws.closed, 8000, "ws close")
    assert.strictEqual(closed.code, 4001)
    assert.strictEqual(closed.reason, "token expired")
    await within(sse.closed, 8000, "sse end")
    assert.deepStrictEqual(sse.errors.map((e) => JSON.parse(e)), [{ code: 10101, error: "token expired" }])
    const answer = await within(waiting, 8000, "poll answer")
    assert.strictEqual(answer.status, 401)
    assert.deepStrictEqual(answer.body, { code: 10101, error: "token expired" })
  })

  for (const protocol of ["ws", "sse", "poll"] as const) {
    it(`the SDK (${protocol}) ends the subscription for good when its token expires`, async () => {
      const token = await server.token(unique("dave"))
      const states: Array<string> = []
      const refusal = new Promise<{ status: number; message: string }>((resolve) => {
        const sub = runSubscription(
          { baseUrl: server.url, token, protocol, onState: (s) => states.push(s._tag), minDelayMs: 50 },
          () => {},
          (e) => {
            sub.stop()
            resolve(e)
          }
        )
      })
      const refused = await within(refusal, 8000, "SDK refusal")
      assert.strictEqual(refused.status, 401)
      assert.include(refused.message, "token expired")
    })
  }
})

describe("the SDK sends tokens in headers where the transport allows", () => {
  for (const protocol of ["sse", "poll"] as const) {
    it(`${protocol}: Authorization header, no token in the URL`, async () => {
      const seen: Array<{ url: string; authorization: string | undefined }> = []
      const recorder = Http.createServer((req, res) => {
        seen.push({ url: req.url ?? "", authorization: req.headers.authorization })
        res.writeHead(401, { "content-type": "application/json" }).end(
          JSON.stringify({ code: 10101, error: "invalid token" })
        )
      })
      await new Promise<void>((r) => recorder.listen(0, "127.0.0.1", r))
      try {
        const base = `http://127.0.0.1:${(recorder.address() as { port: number }).port}`
        const refused = await within(
          new Promise((resolve) => runSubscription({ baseUrl: base, token: "tok-123", protocol }, () => {}, resolve)),
          5000,
          "SDK refusal"
        )
        assert.isDefined(refused)
        assert.strictEqual(seen.length, 1)
        assert.notInclude(seen[0].url, "tok-123")
        assert.notInclude(seen[0].url, "token=")
        assert.strictEqual(seen[0].authorization, "Bearer tok-123")
      } finally {
        recorder.close()
      }
    })
  }
})

describe("revocation across nodes", () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await startCluster(2)
    await settled(cluster, 2)
  }, 120_000)
  afterAll(() => cluster?.stop())

  it("a revocation on node 1 closes connections on node 2 and refuses the old token there", async () => {
    const [one, two] = cluster.nodes
    const erin = unique("erin")
    const old = await one.token(erin)
    const ws = await connectWs(two.url, old)
    const sse = await connectSse(two.url, old)
    await sleep(300)
    const started = Date.now()
    const reply = await one.post("/inner/revoke_tokens", { sessions: [erin] })
    assert.strictEqual(reply.body.code, 0, JSON.stringify(reply.body))
    const [closed] = await within(Promise.all([ws.closed, sse.closed]), 5000, "connections on node 2 to end")
    console.log(`revocation on node 1 ended node 2's connections ${Date.now() - started} ms after the request`)
    assert.strictEqual(closed.code, 4001)
    assert.deepStrictEqual(sse.errors.map((e) => JSON.parse(e)), [{ code: 10101, error: "token revoked" }])
    const refused = await two.post("/get_joined_conversation", {}, old)
    assert.strictEqual(refused.status, 401)
    assert.strictEqual(refused.body.error, "token revoked")
    const fresh = await two.token(erin)
    assert.strictEqual((await two.post("/get_joined_conversation", {}, fresh)).body.code, 0)
    assert.strictEqual((await one.post("/get_joined_conversation", {}, fresh)).body.code, 0)
  }, 60_000)

  it("every node listens for revocations, and listens again when its connection is cut", async () => {
    const [one, two] = cluster.nodes
    const db = cluster.databaseUrl.replace(/.*\//, "")
    const psql = (text: string) => sql(pgAdminUrl(), text)
    const listeners = `SELECT pid FROM pg_stat_activity WHERE datname = '${db}' AND query ILIKE 'LISTEN%'`
    const listening = async (count: number, except: ReadonlyArray<string>) => {
      for (let i = 0; i < 100; i++) {
        const pids = (await psql(listeners)).split("\n").filter((p) => p !== "" && !except.includes(p))
        if (pids.length >= count) return pids
        await sleep(100)
      }
      throw new Error(`fewer than ${count} nodes listening: ${await psql(listeners)}`)
    }
    const before = await listening(2, [])
    await psql(`SELECT pg_terminate_backend(pid) FROM (${listeners}) AS l`)
    // Both nodes listen again, on new connections.
    await listening(2, before)
    const frank = unique("frank")
    const old = await one.token(frank)
    const ws = await connectWs(two.url, old)
    await sleep(300)
    assert.strictEqual((await one.post("/inner/revoke_tokens", { sessions: [frank] })).body.code, 0)
    assert.strictEqual((await within(ws.closed, 5000, "ws on node 2 to end")).code, 4001)
    assert.strictEqual((await two.post("/get_joined_conversation", {}, old)).status, 401)
  }, 60_000)
})

describe("the token stays out of traces and logs", () => {
  it("a /notify?token= request's spans and the access log hold no token", async () => {
    const collector = await startCollector()
    const spans = collector.spans
    const node = await spawnServer({
      env: {
        DATABASE_URL: testDatabaseUrl(),
        QUICKIM_JWT_SECRET: SECRET,
        QUICKIM_OTLP_ENDPOINT: collector.url,
        QUICKIM_ACCESS_LOG: "true",
        QUICKIM_LOG_FORMAT: "json",
        QUICKIM_POLL_WAIT: "1 second"
      }
    })
    try {
      const token = await node.token(unique("frank"))
      const wrong = token.slice(0, -4) + "AAAA"
      assert.strictEqual((await fetch(`${node.url}/notify?protoc=poll&token=${token}`)).status, 204)
      const refused = await fetch(`${node.url}/notify?protoc=poll&token=${wrong}`)
      await refused.body?.cancel()
      assert.strictEqual(refused.status, 401)
      const notifySpans = () =>
        spans.filter((s) => s.attributes.some((a) => a.key === "url.path" && a.value.stringValue === "/notify"))
      for (let i = 0; i < 100 && notifySpans().length < 2; i++) await sleep(100)
      assert.isAtLeast(notifySpans().length, 2, `spans: ${spans.map((s) => s.name).join(", ")}`)
      const full = notifySpans().map((s) => s.attributes.find((a) => a.key === "url.full")?.value.stringValue)
      for (const url of full) assert.include(url, "token=REDACTED")
      const everything = JSON.stringify(spans)
      const output = node.output()
      for (const secret of [token, wrong, token.split(".")[2], wrong.split(".")[2]]) {
        assert.notInclude(everything, secret)
        assert.notInclude(output, secret)
      }
      // The access log did write the requests (so the check above looked at them).
      assert.include(output, "/notify")
    } finally {
      await node.stop()
      collector.close()
    }
  }, 60_000)
})

describe.skipIf(!hasChromium)("the console and tokens", () => {
  let server: TestServer
  beforeAll(async () => {
    // A poll announces "connected" with its first answer: keep the wait short.
    server = await startServer(settingsFor("postgres", { pollWait: Duration.seconds(1), consoleSignIn: true }))
  })
  afterAll(() => server?.stop())

  it("polls with the token in a header, and a revoked token stops every protocol for good", async () => {
    const browser = await launchChromium()
    try {
      for (const protocol of ["poll", "ws", "sse"]) {
        const session = unique(`console-${protocol}`)
        const page = await (await browser.newContext()).newPage()
        const notify: Array<{ url: string; authorization: string | undefined }> = []
        page.on("request", (r) => {
          if (r.url().includes("/notify")) notify.push({ url: r.url(), authorization: r.headers().authorization })
        })
        await page.goto(`${server.url}/console`)
        await page.getByLabel("Session").fill(session)
        await page.getByLabel("Push over").selectOption(protocol)
        await page.getByRole("button", { name: "Sign in" }).click()
        await page.waitForFunction(() => document.getElementById("status")!.textContent!.includes("connected"))
        if (protocol === "poll") {
          assert.isAbove(notify.length, 0)
          for (const r of notify) {
            assert.notInclude(r.url, "token=")
            assert.match(r.authorization ?? "", /^Bearer /)
          }
        }
        const reply = await server.post("/inner/revoke_tokens", { sessions: [session] })
        assert.strictEqual(reply.body.code, 0)
        await page.waitForFunction(
          () => document.getElementById("status")!.textContent!.includes("Push refused"),
          undefined,
          { timeout: 10_000 }
        )
        await page.close()
      }
    } finally {
      await browser.close()
    }
  }, 90_000)
})
