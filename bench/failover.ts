/**
 * Failover benchmark (not a test): three quick-im nodes on one PostgreSQL database carry steady
 * sends into 60 conversations; one node is killed with SIGKILL (five times, the killed node coming
 * back on the same runner address after each) and then stopped with SIGTERM (three times, a new
 * node joining after each). For each event it reports how long the conversations it hosted were
 * unavailable to senders: the longest time, over all conversations, from the event to that
 * conversation's first acknowledged send after it. For each join (the node's start until its
 * shards settled, plus 5 s) it reports the longest time one send took, first attempt to
 * acknowledgement: how long a conversation held or refused sends while shards moved to the
 * newcomer. Senders retry on another node with the same client_msg_id. At the end every
 * acknowledged MsgId must be in history exactly once. Appends the table to bench/RESULTS.md.
 *
 *   npm run bench:failover
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { freePort, type NodeProcess, root, spawnServer } from "../test/support/process.ts"
import { makeHttpClient } from "./http-client.ts"

const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"
const CONVERSATIONS = Number(process.env.BENCH_FAILOVER_CONVERSATIONS ?? 60)
const KILLS = Number(process.env.BENCH_FAILOVER_KILLS ?? 5)
const STOPS = Number(process.env.BENCH_FAILOVER_STOPS ?? 3)
/** BENCH_FAILOVER_PUSH=1: every conversation's peer also holds a ws push connection (live Mailbox entities). */
const PUSH = process.env.BENCH_FAILOVER_PUSH === "1"

const dbName = `quickim_failover_${process.pid}_${Date.now().toString(36)}`
const databaseUrl = ADMIN.replace(/\/[^/]*$/, `/${dbName}`)
const psql = (sql: string) =>
  execFileSync("psql", [ADMIN.replace(/\/[^/]*$/, `/${dbName}`), "-qAtc", sql], { maxBuffer: 1 << 28 }).toString()
execFileSync("psql", [ADMIN, "-qAtc", `CREATE DATABASE ${dbName}`])

interface Node {
  readonly process: NodeProcess
  readonly http: ReturnType<typeof makeHttpClient>
  alive: boolean
  readonly runnerPort: number
}
const nodes: Array<Node> = []
const live = () => nodes.filter((n) => n.alive)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const addNode = async (runnerPort?: number) => {
  const port = runnerPort ?? await freePort()
  const process_ = await spawnServer({
    env: {
      DATABASE_URL: databaseUrl,
      QUICKIM_JWT_SECRET: "failover-bench-secret-failover-bench",
      QUICKIM_RUNNER_HOST: "127.0.0.1",
      QUICKIM_RUNNER_PORT: String(port),
      QUICKIM_DB_POOL: "6",
      // All senders share one session: its rate limit (50 sends/s per node) would hold the retries
      // of a failover, and the figures would measure the limiter instead of the failover.
      QUICKIM_RATE_SENDS: "0",
      QUICKIM_RATE_SENDS_PER_ADDRESS: "0"
    }
  })
  const node = { process: process_, http: makeHttpClient(process_.url), alive: true, runnerPort: port }
  nodes.push(node)
  return node
}

/** Until every live node reports all shards held by live runners. */
const settled = async () => {
  for (const deadline = Date.now() + 60_000; Date.now() < deadline; await sleep(200)) {
    const views = await Promise.all(live().map((n) => n.process.raw("/inner/cluster", { method: "GET" })))
    const ok = views.every((v) => {
      const d = v.body?.data
      const alive = d?.Nodes.filter((n: any) => n.Alive) ?? []
      return alive.length === live().length && alive.reduce((s: number, n: any) => s + n.Shards, 0) === d.ShardsPerGroup
    })
    if (ok) return
  }
  throw new Error("cluster did not settle")
}

for (let i = 0; i < 3; i++) await addNode()
await settled()
const token = await nodes[0].process.token("failover-bench")
let running = true
const conversations: Array<string> = []
for (let c = 0; c < CONVERSATIONS; c++) {
  const r = await nodes[c % 3].process.post("/inner/create_conversation", { sessions: ["failover-bench", `peer-${c}`] })
  conversations.push(r.body.data.ConversationId)
}

/** Each acknowledged send: its MsgId, when it was acknowledged, when its first attempt started. */
// Push connections, each reconnected to a live node (with the last MsgId it got) when it ends.
const receivers = PUSH
  ? await Promise.all(conversations.map(async (_, c) => {
    const peerToken = await nodes[0].process.token(`peer-${c}`)
    let last: string | undefined = undefined
    let turn = c
    const connect = () => {
      const targets = live()
      const base = targets[turn++ % targets.length].process.url
      const ws = new WebSocket(
        `${base.replace(/^http/, "ws")}/notify?protoc=ws&token=${peerToken}${last ? `&last_msg_id=${last}` : ""}`
      )
      ws.onmessage = (e) => (last = JSON.parse(String(e.data)).MsgId)
      ws.onclose = () => {
        if (running) setTimeout(connect, 200)
      }
      ws.onerror = () => {}
      return ws
    }
    return connect
  }))
  : []

const acked = new Map<string, Array<{ id: string; at: number; started: number }>>(conversations.map((c) => [c, []]))
let n = 0
for (const connect of receivers) connect()
const senders = conversations.map(async (conversation) => {
  while (running) {
    const content = `f-${n++}`
    const started = performance.now()
    for (let attempt = 0;; attempt++) {
      const targets = live()
      const node = targets[(n + attempt) % targets.length]
      const answer = await Promise.race([
        node.http.post("/send_msg", { conversation_id: conversation, content, client_msg_id: content }, token)
          .then((a) => a, () => undefined),
        sleep(20_000).then(() => undefined)
      ])
      let body: { code?: number; data?: { MsgID: string } } | undefined = undefined
      try {
        body = answer === undefined ? undefined : JSON.parse(answer.body)
      } catch {
        // a node cut the answer off while stopping: retried like any failed send
      }
      if (body?.code === 0) {
        acked.get(conversation)!.push({ id: body.data!.MsgID, at: performance.now(), started })
        break
      }
      await sleep(100)
    }
    await sleep(50)
  }
})

/** Longest time from `at` to a conversation's first acknowledgement after it. */
const unavailableFor = async (at: number) => {
  for (;;) {
    const firsts = conversations.map((c) => acked.get(c)!.find((a) => a.at > at)?.at)
    if (firsts.every((t) => t !== undefined)) return Math.max(...firsts.map((t) => t! - at)) / 1000
    await sleep(100)
  }
}

const events: Array<{ kind: string; seconds: number }> = []
await sleep(2000)
for (let k = 0; k < KILLS + STOPS; k++) {
  const signal = k < KILLS ? "SIGKILL" : "SIGTERM"
  const victim = live()[k % live().length]
  victim.alive = false
  const at = performance.now()
  const exited = victim.process.stop(signal)
  const seconds = await unavailableFor(at)
  await exited
  events.push({ kind: signal, seconds })
  console.log(`${signal}: conversations unavailable for ${seconds.toFixed(2)} s at most`)
  // A killed node comes back on its own runner address; a stopped one is replaced by a new node.
  const joinAt = performance.now()
  await addNode(signal === "SIGKILL" ? victim.runnerPort : undefined)
  await settled()
  // Reports are 2 s apart: give the newcomer's shards time to finish moving before the next event.
  await sleep(5000)
  const joinEnd = performance.now()
  // The longest send started in the join's window (waiting for those still unanswered).
  for (let i = 0; i < 300; i++) {
    const all = conversations.every((c) => acked.get(c)!.some((a) => a.started >= joinEnd))
    if (all) break
    await sleep(100)
  }
  const took = [...acked.values()].flat().filter((a) => a.started >= joinAt && a.started < joinEnd)
    .reduce((m, a) => Math.max(m, a.at - a.started), 0) / 1000
  events.push({ kind: `join after ${signal}`, seconds: took })
  console.log(`join after ${signal}: longest send ${took.toFixed(2)} s`)
}
running = false
await Promise.all(senders)

// Every acknowledged MsgId is in history exactly once.
const inHistory = new Map<string, number>()
for (const line of psql("SELECT msg_id, count(*) FROM messages GROUP BY msg_id").trim().split("\n")) {
  const [id, count] = line.split("|")
  inHistory.set(id, Number(count))
}
let ackedTotal = 0
let missing = 0
for (const list of acked.values()) {
  for (const a of list) {
    ackedTotal++
    if (inHistory.get(a.id) !== 1) missing++
  }
}
for (const node of live()) await node.process.stop("SIGKILL")
execFileSync("psql", [
  ADMIN,
  "-qAtc",
  `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname='${dbName}'`
])
execFileSync("psql", [ADMIN, "-qAtc", `DROP DATABASE IF EXISTS ${dbName}`])

const stats = (kind: string) => {
  const s = events.filter((e) => e.kind === kind).map((e) => e.seconds).sort((a, b) => a - b)
  return s.length === 0
    ? "–"
    : `${s[0].toFixed(2)} / ${s[Math.floor(s.length / 2)].toFixed(2)} / ${s[s.length - 1].toFixed(2)}`
}
const summary = [
  "| event | count | unavailable s (min / median / max) | each |",
  "|---|---|---|---|",
  `| SIGKILL | ${KILLS} | ${stats("SIGKILL")} | ${
    events.filter((e) => e.kind === "SIGKILL").map((e) => e.seconds.toFixed(2)).join(", ")
  } |`,
  `| SIGTERM | ${STOPS} | ${stats("SIGTERM")} | ${
    events.filter((e) => e.kind === "SIGTERM").map((e) => e.seconds.toFixed(2)).join(", ")
  } |`,
  "",
  "| join | count | longest send s (min / median / max) | each |",
  "|---|---|---|---|",
  ...["SIGKILL", "SIGTERM"].map((signal) => {
    const kind = `join after ${signal}`
    const each = events.filter((e) => e.kind === kind).map((e) => e.seconds.toFixed(2)).join(", ")
    const what = signal === "SIGKILL" ? "the killed node back, same address" : "a new node"
    return `| ${what} | ${signal === "SIGKILL" ? KILLS : STOPS} | ${stats(kind)} | ${each} |`
  }),
  "",
  `Acknowledged sends: ${ackedTotal}; missing from history or duplicated: ${missing}.`
].join("\n")
console.log(summary)
const machine = `${Os.cpus().length} cores, ${Math.round(Os.totalmem() / 2 ** 30)} GiB, ${Os.cpus()[0]?.model ?? "cpu"}`
Fs.appendFileSync(
  Path.join(root, "bench/RESULTS.md"),
  `\n## Failover benchmark — ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC\n\n`
    + `Machine: ${machine}; three quick-im nodes (Deno) on one PostgreSQL 15 database, ${CONVERSATIONS} conversations `
    + `with one sender each (a send every 50 ms, retried on another node with the same client_msg_id); after a SIGKILL `
    + `the node comes back on its runner address, after a SIGTERM a new node joins. "Unavailable" is the longest time `
    + `from the event to a conversation's first acknowledged send after it; "longest send" is the longest time one `
    + `send took (first attempt to acknowledgement) while the node joined (shard lock expiration 5 s, lock refresh `
    + `${process.env.QUICKIM_SHARD_LOCK_REFRESH ?? "1500 millis"}, assignments re-read every `
    + `${process.env.QUICKIM_ASSIGNMENTS_REFRESH ?? "500 millis"}, runner health check 2 s; send rate limits off)`
    + `${PUSH ? "; every conversation's peer holds a ws push connection (BENCH_FAILOVER_PUSH=1)" : ""}.\n\n`
    + `${summary}\n`
)
if (missing > 0) process.exit(1)
