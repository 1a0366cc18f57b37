/**
 * Read-state benchmark (not a test), against a real quick-im process on the machine's PostgreSQL,
 * its data filled through SQL (not the API):
 *   unread: `get_unread` for a session in 1,000 conversations, 10 of them with 10,000 unread
 *   inbox:  `get_inbox` (limit 50) for a session in 10,000 conversations: the first page, and a
 *           later page (its cursor from the first)
 *   marks:  `mark_read` against `send_msg`, alternating rounds of each (5 of 3,000 calls): 64
 *           concurrent clients in 32 conversations of two; each mark moves its reader's position by
 *           one, to an id before the last message (looked up by the statement that moves it)
 * Prints p50/p99/max (ms) and, for marks and sends, calls per second; appends them to
 * bench/RESULTS.md.
 *
 *   npm run bench:read
 *   BENCH_READS=1000 BENCH_ROUND_CALLS=5000 BENCH_ROUNDS=7 npm run bench:read
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { encode } from "../src/domain/MsgId.ts"
import { formatSendTime } from "../src/domain/SendTime.ts"
import { spawnServer } from "../test/support/process.ts"
import { sql } from "../test/support/postgres.ts"
import { makeHttpClient } from "./http-client.ts"

const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"
const READS = Number(process.env.BENCH_READS ?? 500)
/** Calls per round of marks (and of sends), and rounds of each, alternating. */
const ROUND_CALLS = Number(process.env.BENCH_ROUND_CALLS ?? 3000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const CLIENTS = 64

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
const summary = (latencies: Array<number>) => {
  const sorted = [...latencies].sort((a, b) => a - b)
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] }
}
const ms = (n: number) => n.toFixed(1)
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const dbName = `quickim_bench_read_${process.pid}_${Date.now().toString(36)}`
const url = ADMIN.replace(/\/[^/]*$/, `/${dbName}`)
execFileSync("psql", [ADMIN, "-qAtc", `CREATE DATABASE ${dbName}`], { stdio: "pipe" })
const server = await spawnServer({
  env: {
    DATABASE_URL: url,
    QUICKIM_JWT_SECRET: "bench-secret-bench-secret-bench-secret",
    QUICKIM_RATE_SENDS: "0",
    QUICKIM_RATE_MARKS: "0"
  }
})
const http = makeHttpClient(server.url)

/** Rows inserted a chunk at a time through jsonb_to_recordset. */
const insert = async (table: string, columns: string, types: string, rows: ReadonlyArray<object>) => {
  for (let i = 0; i < rows.length; i += 5000) {
    const chunk = JSON.stringify(rows.slice(i, i + 5000)).replace(/'/g, "''")
    await sql(
      url,
      `INSERT INTO ${table} (${columns}) SELECT ${columns} FROM jsonb_to_recordset('${chunk}'::jsonb) AS r(${types})`
    )
  }
}

/** Conversation `id` with `count` messages from `from`, one per millisecond ending at `end`; its last-message fields. */
const messagesOf = (id: string, count: number, from: string, end: number) =>
  Array.from({ length: count }, (_, i) => {
    const millis = end - count + 1 + i
    return {
      conversation_id: id,
      msg_id: encode({ millis, seq: 0, conversationType: 0, hash: 0 }),
      seq: i + 1,
      from_session: from,
      send_time: formatSendTime(millis),
      status: 0,
      type: 0,
      content: `m${i}`
    }
  })

const messageColumns = "conversation_id, msg_id, seq, from_session, send_time, status, type, content"
const messageTypes =
  "conversation_id text, msg_id text, seq bigint, from_session text, send_time text, status integer, type integer, content text"

/** Conversations with their members and messages (`counts[i]` messages in the i-th), through SQL. */
const fill = async (prefix: string, reader: string, counts: ReadonlyArray<number>) => {
  const now = Date.now() - 60_000
  const conversations: Array<object> = []
  const members: Array<object> = []
  let messages: Array<ReturnType<typeof messagesOf>[number]> = []
  for (const [i, count] of counts.entries()) {
    const id = `${prefix}-${i}`
    const rows = messagesOf(id, count, "other", now - (counts.length - i) * 20_000)
    const last = rows[rows.length - 1]
    conversations.push({
      id,
      conversation_type: 0,
      last_msg_id: last?.msg_id ?? null,
      last_send_time: last?.send_time ?? null,
      last_send_session: last === undefined ? null : "other",
      last_seq: count,
      last_msg_at: last?.send_time ?? null
    })
    members.push({ conversation_id: id, session_id: reader, joined_seq: 0 })
    members.push({ conversation_id: id, session_id: "other", joined_seq: 0 })
    messages = messages.concat(rows)
    if (messages.length > 50_000) {
      await insert("messages", messageColumns, messageTypes, messages)
      messages = []
    }
  }
  await insert(
    "conversations",
    "id, conversation_type, last_msg_id, last_send_time, last_send_session, last_seq, last_msg_at",
    "id text, conversation_type bigint, last_msg_id text, last_send_time text, last_send_session text, last_seq bigint, last_msg_at timestamptz",
    conversations
  )
  await insert(
    "conversation_members",
    "conversation_id, session_id, joined_seq",
    "conversation_id text, session_id text, joined_seq bigint",
    members
  )
  await insert("messages", messageColumns, messageTypes, messages)
  await sql(url, "ANALYZE")
}

const timed = async (calls: number, call: () => Promise<void>) => {
  const latencies: Array<number> = []
  for (let i = 0; i < calls; i++) {
    const t0 = performance.now()
    await call()
    latencies.push(performance.now() - t0)
  }
  return summary(latencies)
}

const ok = async (path: string, body: unknown, token: string) => {
  const answer = await http.post(path, body, token)
  const parsed = JSON.parse(answer.body)
  if (parsed.code !== 0) throw new Error(`${path}: ${answer.body.slice(0, 200)}`)
  return parsed.data
}

try {
  // unread: 1,000 conversations, every hundredth with 10,000 messages the reader has not read.
  const unreadCounts = Array.from({ length: 1000 }, (_, i) => (i % 100 === 0 ? 10_000 : 10))
  await fill("u", "reader", unreadCounts)
  // inbox: 10,000 conversations with one message each.
  await fill("i", "boxer", Array.from({ length: 10_000 }, () => 1))
  const reader = await server.token("reader")
  const boxer = await server.token("boxer")

  const expectedTotal = unreadCounts.reduce((a, b) => a + b, 0)
  const check = await ok("/get_unread", {}, reader)
  if (check.Total !== expectedTotal || check.Conversations.length !== 1000) {
    throw new Error(`get_unread answered ${check.Total} in ${check.Conversations.length}, expected ${expectedTotal}`)
  }
  await timed(50, async () => void (await ok("/get_unread", {}, reader)))
  const unread = await timed(READS, async () => void (await ok("/get_unread", {}, reader)))
  const first = await ok("/get_inbox", { limit: 50 }, boxer)
  if (first.Conversations[0].ConversationId !== "i-9999" || first.NextCursor === null) throw new Error("inbox order")
  await timed(50, async () => void (await ok("/get_inbox", { limit: 50 }, boxer)))
  const inboxFirst = await timed(READS, async () => void (await ok("/get_inbox", { limit: 50 }, boxer)))
  const inboxNext = await timed(
    READS,
    async () => void (await ok("/get_inbox", { limit: 50, cursor: first.NextCursor }, boxer))
  )

  // marks against sends: 32 conversations of two, each with enough messages to mark one by one.
  const pairs = CLIENTS / 2
  const perPair = Math.ceil((ROUND_CALLS * ROUNDS) / pairs) + 2
  await fill("p", "p-reader", Array.from({ length: pairs }, () => perPair))
  // The second member of each: its own session, so each pair's reader and sender are apart.
  await sql(
    url,
    `UPDATE conversation_members SET session_id = 'p-writer-' || split_part(conversation_id, '-', 2)
    WHERE session_id = 'other' AND conversation_id LIKE 'p-%'`
  )
  await sql(
    url,
    `UPDATE conversation_members SET session_id = 'p-reader-' || split_part(conversation_id, '-', 2)
    WHERE session_id = 'p-reader'`
  )
  const ids = new Map<string, Array<string>>()
  for (
    const line of (await sql(
      url,
      "SELECT conversation_id, msg_id FROM messages WHERE conversation_id LIKE 'p-%' ORDER BY conversation_id, msg_id"
    )).split("\n")
  ) {
    const [c, m] = line.split("|")
    ids.set(c, [...(ids.get(c) ?? []), m])
  }
  const readerTokens = await Promise.all(Array.from({ length: pairs }, (_, i) => server.token(`p-reader-${i}`)))
  const writerTokens = await Promise.all(Array.from({ length: pairs }, (_, i) => server.token(`p-writer-${i}`)))
  const marked = new Array<number>(pairs).fill(0)

  /** `total` calls from 64 clients (two per conversation); calls per second and latencies. */
  const load = async (total: number, call: (pair: number, client: number) => Promise<void>) => {
    const latencies: Array<number> = []
    let next = 0
    const started = performance.now()
    await Promise.all(Array.from({ length: CLIENTS }, async (_, client) => {
      while (next < total) {
        next++
        const t0 = performance.now()
        await call(client % pairs, client)
        latencies.push(performance.now() - t0)
      }
    }))
    return { perSec: total / ((performance.now() - started) / 1000), ...summary(latencies) }
  }
  const marks = () =>
    load(ROUND_CALLS, async (pair) => {
      const list = ids.get(`p-${pair}`)!
      const at = Math.min(list.length - 1, marked[pair]++)
      await ok("/mark_read", { conversation_id: `p-${pair}`, msg_id: list[at] }, readerTokens[pair])
    })
  const sends = () =>
    load(
      ROUND_CALLS,
      async (pair) => void (await ok("/send_msg", { conversation_id: `p-${pair}`, content: "x" }, writerTokens[pair]))
    )
  // Warm-up: every conversation entity active.
  for (let pair = 0; pair < pairs; pair++) {
    await ok("/send_msg", { conversation_id: `p-${pair}`, content: "warm" }, writerTokens[pair])
    await ok("/mark_read", { conversation_id: `p-${pair}`, msg_id: ids.get(`p-${pair}`)![0] }, readerTokens[pair])
  }
  marked.fill(1)
  const rounds: Array<{ marks: Awaited<ReturnType<typeof marks>>; sends: Awaited<ReturnType<typeof sends>> }> = []
  for (let r = 0; r < ROUNDS; r++) rounds.push({ marks: await marks(), sends: await sends() })

  const date = new Date().toISOString().slice(0, 10)
  const table = [
    `\n## Read state (${date}, ${process.env.BENCH_LABEL ?? "bench/read-state.ts"})\n`,
    "One node on the machine's PostgreSQL, data filled through SQL; server, PostgreSQL and driver share 2 cores.\n",
    "| read | calls | p50 ms | p99 ms | max ms |",
    "|---|---|---|---|---|",
    `| get_unread, 1,000 conversations (10 with 10,000 unread; Total ${expectedTotal}) | ${READS} | ${
      ms(unread.p50)
    } | ${ms(unread.p99)} | ${ms(unread.max)} |`,
    `| get_inbox first page (limit 50), 10,000 conversations | ${READS} | ${ms(inboxFirst.p50)} | ${
      ms(inboxFirst.p99)
    } | ${ms(inboxFirst.max)} |`,
    `| get_inbox second page (cursor) | ${READS} | ${ms(inboxNext.p50)} | ${ms(inboxNext.p99)} | ${
      ms(inboxNext.max)
    } |`,
    "",
    `64 clients in 32 conversations of two, ${ROUND_CALLS} calls per round, rounds alternating (each mark moves a position by one):\n`,
    "| round | mark_read /s | p50 | p99 | send_msg /s | p50 | p99 |",
    "|---|---|---|---|---|---|---|",
    ...rounds.map((r, i) =>
      `| ${i + 1} | ${Math.round(r.marks.perSec)} | ${ms(r.marks.p50)} | ${ms(r.marks.p99)} | ${
        Math.round(r.sends.perSec)
      } | ${ms(r.sends.p50)} | ${ms(r.sends.p99)} |`
    ),
    `| median | ${Math.round(median(rounds.map((r) => r.marks.perSec)))} | ${
      ms(median(rounds.map((r) => r.marks.p50)))
    } | ${ms(median(rounds.map((r) => r.marks.p99)))} | ${Math.round(median(rounds.map((r) => r.sends.perSec)))} | ${
      ms(median(rounds.map((r) => r.sends.p50)))
    } | ${ms(median(rounds.map((r) => r.sends.p99)))} |`,
    ""
  ].join("\n")
  console.log(table)
  Fs.appendFileSync(Path.join(import.meta.dirname ?? ".", "RESULTS.md"), table)
} finally {
  await server.stop()
  // BENCH_KEEP_DB=1: the filled database stays, for EXPLAIN.
  if (process.env.BENCH_KEEP_DB === "1") console.log(`kept database ${dbName}`)
  else execFileSync("psql", [ADMIN, "-qAtc", `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`], { stdio: "pipe" })
}
