/**
 * Database outages, against a PostgreSQL server of this file's own that it stops and starts
 * (test/support/postgres.ts), never the run's shared one. While PostgreSQL is away every send is
 * answered within the request timeout, either stored or 503 / 10006 (never a 500, never a hang);
 * senders retrying with their client_msg_id lose and duplicate nothing; push connections stay or
 * resume and end up with every acknowledged message; the nodes serve again by themselves once
 * PostgreSQL is back.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import type { MsgData } from "../src/domain/Conversation.ts"
import { follow, settled, startCluster } from "./support/cluster.ts"
import { startPgProxy } from "./support/pgProxy.ts"
import { databaseUrlOn, type OwnPostgres, sql, startPostgres } from "./support/postgres.ts"
import { type NodeProcess, spawnServer } from "./support/process.ts"
import { type Protocol, sleep } from "./support/push.ts"

/** How long a client waits for an answer before calling the send hung. */
const REQUEST_TIMEOUT_MS = 12_000
const secret = "outage-test-secret-outage-test-secret"
// Senders retry fast and push clients reconnect fast: per-session and per-address rates off.
const noRates = {
  QUICKIM_RATE_SENDS: "0",
  QUICKIM_RATE_CREATES: "0",
  QUICKIM_RATE_JOINS: "0",
  QUICKIM_RATE_CONNECTS: "0",
  QUICKIM_RATE_POLLS: "0"
}

interface Answer {
  /** When the request went out, and how long its answer took (ms). */
  readonly at: number
  readonly ms: number
  readonly status: number
  readonly code: number | undefined
}

/** A send answered 200, by its MsgId. */
interface Acked {
  readonly session: string
  readonly clientMsgId: string
  readonly at: number
}

interface Sender {
  readonly session: string
  readonly token: string
  readonly conversation: string
}

/**
 * Senders that each send one message after another, each with its own client_msg_id, retrying it
 * (same id) after a 503 or no answer until it is stored, adding it to `acked`. Anything but 200 / 0
 * and 503 / 10006, and any request unanswered within REQUEST_TIMEOUT_MS, is recorded in `problems`.
 */
const startLoad = (
  nodes: () => ReadonlyArray<{ readonly url: string }>,
  senders: ReadonlyArray<Sender>,
  acked: Map<string, Acked>
) => {
  const answers: Array<Answer> = []
  const problems: Array<string> = []
  let stopping = false
  let turn = 0
  const post = async (sender: Sender, clientMsgId: string) => {
    const live = nodes()
    const url = live[turn++ % live.length].url
    const at = Date.now()
    try {
      const res = await fetch(`${url}/send_msg`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${sender.token}` },
        body: JSON.stringify({
          conversation_id: sender.conversation,
          content: clientMsgId,
          client_msg_id: clientMsgId
        }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
      })
      const body = await res.json()
      answers.push({ at, ms: Date.now() - at, status: res.status, code: body?.code })
      if (res.status === 200 && body.code === 0) return body.data.MsgID as string
      if (res.status !== 503 || body.code !== 10006) {
        problems.push(`${clientMsgId}: answered ${res.status} ${JSON.stringify(body)} after ${Date.now() - at} ms`)
      }
    } catch (e) {
      answers.push({ at, ms: Date.now() - at, status: 0, code: undefined })
      problems.push(`${clientMsgId}: no answer within ${Date.now() - at} ms (${e})`)
    }
    return undefined
  }
  const loops = senders.map(async (sender) => {
    for (let n = 0; !stopping; n++) {
      const clientMsgId = `${sender.session}-${n}`
      // Once stopping, the message under way is still seen through (bounded), so that what is
      // stored and what was acknowledged can be compared exactly.
      const deadline = Date.now() + 60_000
      for (;;) {
        const msgId = await post(sender, clientMsgId)
        if (msgId !== undefined) {
          acked.set(msgId, { session: sender.session, clientMsgId, at: Date.now() })
          break
        }
        if (Date.now() > deadline) {
          problems.push(`${clientMsgId}: not stored within 60 s of retries`)
          return
        }
        await sleep(200)
      }
      await sleep(20)
    }
  })
  return {
    answers,
    acked,
    problems,
    /** Sends acknowledged after `t`. */
    ackedSince: (t: number) => [...acked.values()].filter((a) => a.at > t).length,
    stop: async () => {
      stopping = true
      await Promise.all(loops)
    }
  }
}

const median = (xs: ReadonlyArray<number>) => {
  if (xs.length === 0) return 0
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

/** Polls `check` until it holds (a generous bound: only a hang or a loss fails it). */
const eventually = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(100)
  }
}

/** Unique in one MsgId per message, in first-received order. */
const dedupe = (messages: ReadonlyArray<MsgData>) => {
  const seen = new Set<string>()
  return messages.filter((m) => !seen.has(m.MsgId) && (seen.add(m.MsgId), true))
}

interface Scenario {
  readonly name: string
  readonly nodes: () => ReadonlyArray<NodeProcess>
  readonly databaseUrl: string
  /** How long PostgreSQL stays stopped. */
  readonly downMs: number
}

/**
 * Two conversations, two senders each, and a reader in both with a ws, an sse and a poll client;
 * the load runs before, through and after the outage. Returns what it measured, for the log.
 */
const runOutage = async (pg: OwnPostgres, scenario: Scenario) => {
  const [first] = scenario.nodes()
  const run = crypto.randomUUID().slice(0, 8)
  const reader = `reader-${run}`
  const senders: Array<Sender> = []
  const conversations: Array<string> = []
  for (const c of [0, 1]) {
    const names = [`s${c}a-${run}`, `s${c}b-${run}`]
    const created = await first.post("/inner/create_conversation", { sessions: [...names, reader] })
    assert.strictEqual(created.body.code, 0, JSON.stringify(created.body))
    const conversation = created.body.data.ConversationId as string
    conversations.push(conversation)
    for (const session of names) senders.push({ session, token: await first.token(session), conversation })
  }
  const readerToken = await first.token(reader)
  const nodes = { live: scenario.nodes }
  const clients = (["ws", "sse", "poll"] as Array<Protocol>).map((protocol, i) => ({
    protocol,
    client: follow(protocol, nodes, readerToken, i)
  }))
  // Clients without a cursor start once their connection (or first poll) reaches the session's
  // mailbox, which may be on the other node: probe each conversation every half second until every
  // client has a probe of each, so all are subscribed before the load begins. The probes are stored
  // messages outside the load's accounting: a client may have missed the earlier ones.
  const acked = new Map<string, Acked>()
  const probes = new Set<string>()
  const probed = () =>
    clients.every(({ client }) =>
      conversations.every((c) => client.messages.some((r) => r.ConversationID === c && probes.has(r.MsgId)))
    )
  for (let round = 0; !probed(); round++) {
    if (round === 60) throw new Error("push clients subscribed: not within 30 s")
    for (const sender of [senders[0], senders[2]]) {
      const sent = await first.post(
        "/send_msg",
        { conversation_id: sender.conversation, content: "probe" },
        sender.token
      )
      assert.strictEqual(sent.body.code, 0, JSON.stringify(sent.body))
      probes.add(sent.body.data.MsgID)
    }
    await sleep(500)
  }
  const load = startLoad(scenario.nodes, senders, acked)
  try {
    await eventually("sends before the outage", () => load.ackedSince(0) >= 40)
    const down = Date.now()
    await pg.stop()
    // Reads go to the database straight from the handler: refused the same way, never a 500.
    const read = await first.post(
      "/get_conversation_last_30_msg",
      { conversation_id: conversations[0] },
      senders[0].token
    )
    assert.deepStrictEqual([read.status, read.body.code], [503, 10006], JSON.stringify(read.body))
    await sleep(scenario.downMs - (Date.now() - down))
    await pg.start()
    const back = Date.now()
    // The nodes recover by themselves: every sender gets sends through again.
    await eventually(
      "every sender stored again after PostgreSQL came back",
      () =>
        senders.every((s) => [...load.acked.values()].filter((a) => a.session === s.session && a.at > back).length >= 5)
    )
    await load.stop()
    const during = load.answers.filter((a) => a.at >= down - 1000 && a.at <= back)
    const refused = load.answers.filter((a) => a.status === 503)
    const figures = {
      scenario: scenario.name,
      outageMs: back - down,
      sends: load.acked.size,
      requests: load.answers.length,
      answered503: refused.length,
      duringOutage: {
        requests: during.length,
        maxMs: Math.max(0, ...during.map((a) => a.ms)),
        medianMs: median(during.map((a) => a.ms))
      },
      all: { maxMs: Math.max(...load.answers.map((a) => a.ms)), medianMs: median(load.answers.map((a) => a.ms)) },
      reconnects: Object.fromEntries(clients.map(({ protocol, client }) => [protocol, client.reconnects()]))
    }
    console.log(`database outage: ${JSON.stringify(figures)}`)
    assert.deepStrictEqual(load.problems, [], "every send answered in time with 200 or 503 / 10006")

    // Stored is exactly what was acknowledged: nothing lost, nothing stored twice or unanswered.
    const stored = (await sql(
      scenario.databaseUrl,
      `SELECT msg_id, from_session, client_msg_id FROM messages
       WHERE conversation_id IN (${conversations.map((c) => `'${c}'`).join(",")}) ORDER BY msg_id`
    )).split("\n").filter((l) => l !== "").map((l) => l.split("|"))
    const loaded = stored.filter(([m]) => !probes.has(m))
    assert.strictEqual(stored.length - loaded.length, probes.size, "every probe stored")
    assert.strictEqual(
      new Set(loaded.map(([, s, c]) => `${s}/${c}`)).size,
      loaded.length,
      "a client_msg_id stored twice"
    )
    assert.sameMembers(loaded.map(([m]) => m), [...load.acked.keys()], "stored messages are the acknowledged ones")
    for (const [msgId, session, clientMsgId] of loaded) {
      assert.deepInclude(load.acked.get(msgId), { session, clientMsgId })
    }

    // Every push client ends with every acknowledged message once (after MsgId dedupe), each
    // conversation in order. Probes are outside this too: a probe sent before a client was
    // subscribed may reach it later, with a replay (a replay reaches back the resume window before
    // its cursor), after messages that followed it.
    for (const { protocol, client } of clients) {
      const missing = () => {
        const got = new Set(client.messages.map((m) => m.MsgId))
        return [...load.acked.keys()].filter((m) => !got.has(m))
      }
      await eventually(`${protocol} client received every acknowledged message`, () => missing().length === 0).catch(
        (e) => {
          const lost = missing().map((m) => ({
            msgId: m,
            ...load.acked.get(m),
            sinceDown: load.acked.get(m)!.at - down
          }))
          throw new Error(`${e.message}: missing ${JSON.stringify(lost)} of ${load.acked.size}`)
        }
      )
      const unique = dedupe(client.messages)
      for (const conversation of conversations) {
        const ids = unique.filter((m) => m.ConversationID === conversation && !probes.has(m.MsgId)).map((m) => m.MsgId)
        assert.deepStrictEqual(ids, [...ids].sort(), `${protocol}: conversation ${conversation} in order`)
      }
    }
  } finally {
    // A failed check may leave PostgreSQL stopped, where senders would retry until their deadline.
    await pg.start()
    await load.stop()
    await Promise.all(clients.map(({ client }) => client.stop()))
  }
}

describe("database outage", () => {
  let pg: OwnPostgres
  beforeAll(async () => {
    pg = await startPostgres()
  })
  afterAll(() => pg?.dispose())

  describe("one node", () => {
    let node: NodeProcess
    let databaseUrl: string
    beforeAll(async () => {
      databaseUrl = databaseUrlOn(pg.adminUrl, "outage_single")
      await sql(pg.adminUrl, "CREATE DATABASE outage_single")
      node = await spawnServer({ env: { DATABASE_URL: databaseUrl, QUICKIM_JWT_SECRET: secret, ...noRates } })
    })
    afterAll(async () => {
      await node?.stop()
    })

    it("PostgreSQL restarted under send load: sends answer 200 or a prompt 503, nothing is lost", async () => {
      await runOutage(pg, { name: "one node, restart", nodes: () => [node], databaseUrl, downMs: 3000 })
      assert.strictEqual(node.child.exitCode, null, node.output())
    }, 60_000)

    it("PostgreSQL away for 30 s: sends answer 503 throughout, and the node serves again by itself", async () => {
      await runOutage(pg, { name: "one node, 30 s away", nodes: () => [node], databaseUrl, downMs: 30_000 })
      assert.strictEqual(node.child.exitCode, null, node.output())
    }, 90_000)
  })

  it("a send whose commit lost its answer is answered 503, and its message still reaches push clients", async () => {
    await sql(pg.adminUrl, "CREATE DATABASE outage_lost_answer")
    const databaseUrl = databaseUrlOn(pg.adminUrl, "outage_lost_answer")
    const marker = `lost-answer-${crypto.randomUUID()}`
    const proxy = await startPgProxy({ host: "127.0.0.1", port: pg.port })
    proxy.cutAfter(marker)
    // A resume window shorter than the wait below: the hand-over of a reloaded conversation's
    // recent messages cannot be what brings the message to the reader.
    const node = await spawnServer({
      env: {
        DATABASE_URL: databaseUrl.replace(`:${pg.port}/`, `:${proxy.port}/`),
        QUICKIM_JWT_SECRET: secret,
        QUICKIM_RESUME_WINDOW: "1 second",
        ...noRates
      }
    })
    const reader = follow("ws", { live: () => [node] }, await node.token("reader"))
    try {
      const created = await node.post("/inner/create_conversation", { sessions: ["alice", "reader"] })
      const conversation = created.body.data.ConversationId as string
      const alice = await node.token("alice")
      const send = (content: string, clientMsgId: string) =>
        node.post("/send_msg", { conversation_id: conversation, content, client_msg_id: clientMsgId }, alice)
      const first = (await send("first", "m0")).body.data.MsgID as string
      await eventually("the reader subscribed", () => reader.messages.some((m) => m.MsgId === first))

      const lost = await send(marker, "m1")
      assert.deepStrictEqual([lost.status, lost.body.code], [503, 10006], JSON.stringify(lost.body))
      // It did commit: the answer was what got lost.
      const stored = await sql(databaseUrl, `SELECT msg_id FROM messages WHERE client_msg_id = 'm1'`)
      assert.notStrictEqual(stored, "", "the statement whose answer was lost committed")
      await sleep(2000)

      const retried = await send(marker, "m1")
      assert.strictEqual(retried.body.data?.MsgID, stored, JSON.stringify(retried.body))
      const next = (await send("next", "m2")).body.data.MsgID as string
      await eventually(
        "the reader received the message whose answer was lost",
        () => [stored, next].every((id) => reader.messages.some((m) => m.MsgId === id))
      )
      assert.deepStrictEqual(dedupe(reader.messages).map((m) => m.MsgId), [first, stored, next])
    } finally {
      await reader.stop()
      await node.stop()
      await proxy.close()
    }
  }, 60_000)

  it("two nodes: PostgreSQL restarted under send load, across nodes, nothing is lost", async () => {
    const cluster = await startCluster(2, { QUICKIM_JWT_SECRET: secret }, { adminUrl: pg.adminUrl })
    try {
      await settled(cluster, 2)
      await runOutage(pg, {
        name: "two nodes, restart",
        nodes: cluster.live,
        databaseUrl: cluster.databaseUrl,
        downMs: 3000
      })
      for (const node of cluster.nodes) assert.strictEqual(node.child.exitCode, null, node.output())
    } finally {
      await cluster.stop()
    }
  }, 90_000)
})
