/**
 * History at depth (not a test): one conversation of 1,000,000 messages, filled through SQL (COPY,
 * not the API), against a real quick-im process on the machine's PostgreSQL. Times each history
 * read from one keep-alive client, anchors spread over the whole conversation:
 *   get_conversation_30msg_before_the_id, get_conversation_30msg_after_the_id (both directions),
 *   get_conversation_msg_by_range (30 messages apart), get_conversation_last_30_msg,
 *   get_conversation_lastone_msg
 * Each kind is measured after BENCH_HISTORY_WARMUP (300) unmeasured reads of every kind. Prints
 * p50/p99/max (ms) per read and appends them to bench/RESULTS.md.
 *
 *   deno run -A bench/history.ts
 *   BENCH_HISTORY_MESSAGES=100000 BENCH_HISTORY_READS=500 deno run -A bench/history.ts
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { conversationHash, encode } from "../src/domain/MsgId.ts"
import { formatSendTime } from "../src/domain/SendTime.ts"
import { spawnServer } from "../test/support/process.ts"
import { makeHttpClient } from "./http-client.ts"

const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"
const MESSAGES = Number(process.env.BENCH_HISTORY_MESSAGES ?? 1_000_000)
const READS = Number(process.env.BENCH_HISTORY_READS ?? 1000)
const WARMUP = Number(process.env.BENCH_HISTORY_WARMUP ?? 300)
const CONVERSATION = "deep"

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
const ms = (n: number) => n.toFixed(2)

const dbName = `quickim_bench_history_${process.pid}_${Date.now().toString(36)}`
const url = ADMIN.replace(/\/[^/]*$/, `/${dbName}`)
const psql = (target: string, command: string) => execFileSync("psql", [target, "-qAtc", command], { stdio: "pipe" })
psql(ADMIN, `CREATE DATABASE ${dbName}`)
const server = await spawnServer({
  env: {
    DATABASE_URL: url,
    QUICKIM_JWT_SECRET: "bench-secret-bench-secret-bench-secret",
    QUICKIM_RATE_SENDS: "0"
  }
})
const http = makeHttpClient(server.url)

try {
  // The messages: one per millisecond from a day ago, two senders, contents of 20–60 characters.
  const start = Date.now() - 86_400_000 - MESSAGES
  const hash = conversationHash(CONVERSATION)
  const ids: Array<string> = new Array(MESSAGES)
  const file = Path.join(Fs.mkdtempSync(Path.join(Os.tmpdir(), "quickim-history-")), "messages.tsv")
  const out = Fs.openSync(file, "w")
  let chunk = ""
  for (let i = 0; i < MESSAGES; i++) {
    const millis = start + i
    ids[i] = encode({ millis, seq: 0, conversationType: 1, hash })
    const from = i % 2 === 0 ? "alice" : "bob"
    chunk += `${CONVERSATION}\t${ids[i]}\t${i + 1}\t${from}\t${formatSendTime(millis)}\t0\t0\tmessage ${i} ${
      "x".repeat(20 + (i % 40))
    }\n`
    if (chunk.length > 1 << 20) {
      Fs.writeSync(out, chunk)
      chunk = ""
    }
  }
  Fs.writeSync(out, chunk)
  Fs.closeSync(out)
  const t0 = performance.now()
  psql(
    url,
    `\\copy messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content) FROM '${file}'`
  )
  const last = ids[MESSAGES - 1]
  psql(
    url,
    `INSERT INTO conversations (id, conversation_type, last_msg_id, last_send_time, last_send_session, last_seq)
     VALUES ('${CONVERSATION}', 1, '${last}', '${formatSendTime(start + MESSAGES - 1)}', 'bob', ${MESSAGES});
     INSERT INTO conversation_members (conversation_id, session_id, joined_seq, read_seq)
     VALUES ('${CONVERSATION}', 'alice', 0, ${MESSAGES}), ('${CONVERSATION}', 'bob', 0, ${MESSAGES});
     ANALYZE`
  )
  Fs.rmSync(Path.dirname(file), { recursive: true })
  console.log(`filled ${MESSAGES} messages in ${((performance.now() - t0) / 1000).toFixed(1)} s`)

  const token = JSON.parse((await http.post("/inner/get_token", { session: "alice", platform: 1 })).body).data
  /** An anchor anywhere in the conversation, the same sequence for every read kind. */
  let rng = 1
  const anchor = () => {
    rng = (rng * 1103515245 + 12345) & 0x7fffffff
    return 1 + (rng % (MESSAGES - 2))
  }
  const reads: Record<string, (i: number) => object> = {
    "get_conversation_30msg_before_the_id": (i) => ({ msg_id: ids[i] }),
    "get_conversation_30msg_before_the_id desc": (i) => ({ msg_id: ids[i], desc: true }),
    "get_conversation_30msg_after_the_id": (i) => ({ msg_id: ids[i] }),
    "get_conversation_30msg_after_the_id desc": (i) => ({ msg_id: ids[i], desc: true }),
    "get_conversation_msg_by_range": (i) => ({
      start_msg_id: ids[Math.max(0, i - 30)],
      end_msg_id: ids[i]
    }),
    "get_conversation_last_30_msg": () => ({}),
    "get_conversation_lastone_msg": () => ({})
  }
  const rows: Array<string> = []
  const callOf = (name: string) => {
    const path = `/${name.split(" ")[0]}`
    return async () => {
      const answer = await http.post(path, { conversation_id: CONVERSATION, ...reads[name](anchor()) }, token)
      const parsed = JSON.parse(answer.body)
      if (parsed.code !== 0 || parsed.data.Msg.length === 0) throw new Error(`${path}: ${answer.body.slice(0, 200)}`)
    }
  }
  // Warm-up, not measured: every kind in turn, WARMUP times (the server's JIT, the database's caches).
  for (let i = 0; i < WARMUP; i++) for (const name of Object.keys(reads)) await callOf(name)()
  for (const name of Object.keys(reads)) {
    const call = callOf(name)
    const latencies: Array<number> = []
    for (let i = 0; i < READS; i++) {
      const t = performance.now()
      await call()
      latencies.push(performance.now() - t)
    }
    latencies.sort((a, b) => a - b)
    const row = `| ${name} | ${READS} | ${ms(percentile(latencies, 50))} | ${ms(percentile(latencies, 99))} | ${
      ms(latencies[latencies.length - 1])
    } |`
    console.log(row)
    rows.push(row)
  }
  const section = [
    `## History at depth — ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
    "",
    `One conversation of ${
      MESSAGES.toLocaleString("en")
    } messages (filled by COPY), quick-im on Deno, one node, the machine's PostgreSQL; ${READS} reads of each kind from one keep-alive client after ${WARMUP} unmeasured of every kind, anchors spread over the conversation.`,
    "",
    "| read | calls | p50 ms | p99 ms | max ms |",
    "|---|---|---|---|---|",
    ...rows,
    ""
  ].join("\n")
  Fs.appendFileSync(new URL("./RESULTS.md", import.meta.url), "\n" + section)
} finally {
  await server.stop()
  psql(ADMIN, `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
}
