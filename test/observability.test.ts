/**
 * `GET /metrics` through a real server on PostgreSQL: the text parses as Prometheus exposition
 * format, and the counters move by exactly what the traffic did (sends by outcome, deliveries by
 * protocol, requests by route and code, resumes, store queries); the inner guard applies. And the
 * logs of a real process: JSON lines, with the conversation and MsgId on the lines about a message.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Option, Redacted } from "effect"
import { startCollector } from "./support/otlp.ts"
import { connect, type PushClient } from "./support/push.ts"
import { spawnServer } from "./support/process.ts"
import { settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`

interface Sample {
  readonly name: string
  readonly labels: Record<string, string>
  readonly value: number
}

/**
 * A strict reader of the text format: every line is a comment (`# HELP`/`# TYPE` naming the
 * family), blank, or `name{label="value",…} number`; every sample belongs to a declared family.
 */
const parsePrometheus = (text: string): Array<Sample> => {
  const types = new Map<string, string>()
  const samples: Array<Sample> = []
  for (const line of text.split("\n")) {
    if (line === "") continue
    const comment = line.match(/^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/)
    if (comment) {
      if (comment[1] === "TYPE") {
        assert.include(["counter", "gauge", "histogram", "summary", "untyped"], comment[3], line)
        types.set(comment[2], comment[3])
      }
      continue
    }
    const sample = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$/)
    assert.isNotNull(sample, `not a Prometheus sample line: ${line}`)
    const [, name, labelText, value] = sample!
    const labels: Record<string, string> = {}
    for (const m of (labelText ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]] = m[2]
    const family = name.replace(/_(bucket|sum|count|total)$/, "")
    assert.isTrue(types.has(name) || types.has(family), `no TYPE for ${name}`)
    samples.push({ name, labels, value: Number(value) })
  }
  return samples
}

/** The value of the sample `name` whose labels include `labels` (0 when absent). */
const valueOf = (samples: ReadonlyArray<Sample>, name: string, labels: Record<string, string> = {}) =>
  samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0)

describe("metrics", () => {
  let server: TestServer
  const scrape = async () => {
    const res = await fetch(`${server.url}/metrics`)
    assert.strictEqual(res.status, 200)
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain/)
    return parsePrometheus(await res.text())
  }

  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())

  it("counters move with the traffic: sends by outcome, deliveries by protocol, requests, resumes, queries", async () => {
    const alice = unique("alice")
    const bob = unique("bob")
    const mallory = unique("mallory")
    const [aliceToken, bobToken, malloryToken] = await Promise.all([
      server.token(alice),
      server.token(bob),
      server.token(mallory)
    ])
    const created = await server.post("/inner/create_conversation", { sessions: [alice, bob] })
    const conversation_id = created.body.data.ConversationId as string
    const before = await scrape()

    const clients: Array<PushClient> = [
      await connect("ws", server.url, bobToken),
      await connect("sse", server.url, aliceToken)
    ]
    const during = await scrape()
    assert.isAtLeast(valueOf(during, "quickim_connections", { protocol: "ws" }), 1)
    assert.isAtLeast(valueOf(during, "quickim_connections", { protocol: "sse" }), 1)

    const send = (token: string, content: string, client_msg_id?: string) =>
      server.post("/send_msg", { conversation_id, content, ...(client_msg_id ? { client_msg_id } : {}) }, token)
    const ids: Array<string> = []
    for (const content of ["one", "two", "three"]) {
      const r = await send(aliceToken, content, `c-${content}`)
      assert.strictEqual(r.body.code, 0)
      ids.push(r.body.data.MsgID)
    }
    assert.strictEqual((await send(aliceToken, "one again", "c-one")).body.data.MsgID, ids[0]) // duplicate
    assert.strictEqual((await send(malloryToken, "intruder")).status, 403) // refused
    await Promise.all(clients.map((c) => c.until((m) => m.length >= 3)))
    assert.strictEqual((await server.raw("/no/such/path", { method: "GET" })).status, 404)

    // Bob reconnects from the first message: a resume that replays the other two.
    clients[0].close()
    const resumed = await connect("ws", server.url, bobToken, ids[0])
    await resumed.until((m) => m.length >= 2)
    resumed.close()
    clients[1].close()

    const after = await scrape()
    const delta = (name: string, labels: Record<string, string> = {}) =>
      valueOf(after, name, labels) - valueOf(before, name, labels)
    assert.strictEqual(delta("quickim_sends_total", { outcome: "accepted" }), 3)
    assert.strictEqual(delta("quickim_sends_total", { outcome: "duplicate" }), 1)
    assert.strictEqual(delta("quickim_sends_total", { outcome: "refused" }), 1)
    assert.strictEqual(delta("quickim_send_duration_seconds_count"), 5)
    assert.isAbove(delta("quickim_send_duration_seconds_sum"), 0)
    // Bob's first connection took three, his resumed one two; Alice's SSE stream three.
    assert.strictEqual(delta("quickim_deliveries_total", { protocol: "ws" }), 5)
    assert.strictEqual(delta("quickim_deliveries_total", { protocol: "sse" }), 3)
    assert.strictEqual(delta("quickim_http_requests_total", { route: "/send_msg", code: "200" }), 4)
    assert.strictEqual(delta("quickim_http_requests_total", { route: "/send_msg", code: "403" }), 1)
    assert.strictEqual(delta("quickim_http_requests_total", { route: "unknown", code: "404" }), 1)
    assert.isAtLeast(delta("quickim_resume_replays_total"), 1)
    assert.isAtLeast(delta("quickim_resume_replay_messages_sum"), 2)
    assert.isAtLeast(delta("quickim_db_query_duration_seconds_count", { op: "appendMessages" }), 1)
    assert.isAtLeast(valueOf(after, "quickim_entity_activations_total", { entity: "Conversation" }), 1)
    // Connections on the node that holds their session's shard register with its mailbox here and
    // wake no Mailbox entity (a poll, or a connection on another node, would).
    assert.strictEqual(delta("quickim_entity_activations_total", { entity: "Mailbox" }), 0)
    assert.strictEqual(valueOf(after, "quickim_shards"), 300)
    assert.strictEqual(valueOf(after, "quickim_db_pool_connections"), 8)
    // Nothing is under way between requests: the gauge goes back down.
    assert.strictEqual(valueOf(after, "quickim_db_operations_in_flight"), 0)
    assert.isTrue(after.some((s) => s.name === "quickim_db_operations_in_flight"))
    // The process's memory, as the runtime reports it: a heap in use within the heap reserved,
    // within the resident set.
    const memory = (kind: string) => valueOf(after, "quickim_memory_bytes", { kind })
    assert.isAbove(memory("heap_used"), 1_000_000)
    assert.isAtMost(memory("heap_used"), memory("heap_total"))
    assert.isAbove(memory("rss"), memory("heap_used"))
    assert.isAbove(memory("external"), 0)
  })

  it("is behind the inner guard: with an admin key set, a scrape without it is refused", async () => {
    const guarded = await startServer(settingsFor("postgres", { adminKey: Option.some(Redacted.make("k-123")) }))
    try {
      const refused = await guarded.raw("/metrics", { method: "GET" })
      assert.strictEqual(refused.status, 403)
      assert.strictEqual(refused.body.code, 10003)
      const allowed = await fetch(`${guarded.url}/metrics`, { headers: { "x-quickim-admin-key": "k-123" } })
      assert.strictEqual(allowed.status, 200)
      assert.isAbove(parsePrometheus(await allowed.text()).length, 0)
    } finally {
      await guarded.stop()
    }
  })
})

describe("logs", () => {
  it("are JSON lines off a terminal, and a committed message's line names its conversation and MsgId", async () => {
    const node = await spawnServer({
      env: {
        DATABASE_URL: testDatabaseUrl(),
        QUICKIM_JWT_SECRET: "test-secret-test-secret-test-secret",
        QUICKIM_LOG_FORMAT: "json",
        QUICKIM_LOG_LEVEL: "Debug"
      }
    })
    try {
      const alice = unique("alice")
      const token = await node.token(alice)
      const created = await node.post("/inner/create_conversation", { sessions: [alice] })
      const conversationId = created.body.data.ConversationId as string
      const sent = await node.post("/send_msg", { conversation_id: conversationId, content: "logged" }, token)
      const msgId = sent.body.data.MsgID as string
      const lines = () =>
        node.output().split("\n").filter((l) => l.trim().length > 0).map((l) => {
          try {
            return JSON.parse(l)
          } catch {
            assert.fail(`not a JSON log line: ${l}`)
          }
        })
      for (let i = 0; i < 50 && !lines().some((l) => l.annotations?.msgId === msgId); i++) {
        await new Promise((r) => setTimeout(r, 100))
      }
      const all = lines()
      assert.isAbove(all.length, 1)
      for (const line of all) {
        assert.isString(line.level)
        assert.isString(line.timestamp)
        assert.property(line, "message")
      }
      const committed = all.find((l) => l.annotations?.msgId === msgId)
      assert.isDefined(committed, node.output())
      assert.strictEqual(committed.annotations.conversationId, conversationId)
      assert.strictEqual(committed.level, "DEBUG")
    } finally {
      await node.stop()
    }
  })
})

describe("traces", () => {
  it("with an OTLP endpoint, one trace runs from the HTTP send through the Conversation's commit and SQL to the Mailbox", async () => {
    const collector = await startCollector()
    const spans = collector.spans
    const node = await spawnServer({
      env: {
        DATABASE_URL: testDatabaseUrl(),
        QUICKIM_JWT_SECRET: "test-secret-test-secret-test-secret",
        QUICKIM_OTLP_ENDPOINT: collector.url
      }
    })
    try {
      const alice = unique("alice")
      const bob = unique("bob")
      const [aliceToken, bobToken] = await Promise.all([node.token(alice), node.token(bob)])
      const created = await node.post("/inner/create_conversation", { sessions: [alice, bob] })
      const conversation_id = created.body.data.ConversationId as string
      const bobWs = await connect("ws", node.url, bobToken)
      const sent = await node.post("/send_msg", { conversation_id, content: "traced" }, aliceToken)
      assert.strictEqual(sent.body.code, 0)
      await bobWs.until((m) => m.length === 1)
      bobWs.close()
      const named = (name: string) => spans.filter((s) => s.name === name)
      for (let i = 0; i < 100 && named("Mailbox.deliver").length === 0; i++) {
        await new Promise((r) => setTimeout(r, 100))
      }
      const commit = named("Conversation.commit").find((s) =>
        s.attributes.some((a: any) => a.key === "conversationId" && a.value.stringValue === conversation_id)
      )
      assert.isDefined(commit, `spans: ${[...new Set(spans.map((s) => s.name))].join(", ")}`)
      const trace = spans.filter((s) => s.traceId === commit!.traceId)
      const names = new Set(trace.map((s) => s.name))
      // The HTTP request is the trace's root; SQL and the hand-over to the mailbox are in it.
      const root = trace.find((s) => s.parentSpanId === undefined || s.parentSpanId === "")
      assert.isDefined(root, [...names].join(", "))
      assert.match(root!.name, /http|POST|send_msg/i)
      assert.isTrue(
        trace.some((s) => s.attributes.some((a: any) => a.key.startsWith("db."))),
        `no SQL span in ${[...names].join(", ")}`
      )
      assert.isTrue(names.has("Conversation.deliver"), [...names].join(", "))
      assert.isTrue(names.has("Mailbox.deliver"), [...names].join(", "))
    } finally {
      await node.stop()
      collector.close()
    }
  })
})
