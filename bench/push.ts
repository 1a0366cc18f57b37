/**
 * Push benchmark (not a test). Workloads, each over ws, sse and poll against a real quick-im
 * process on PostgreSQL (every message persisted), and over ws against the in-repo ceiling
 * (bench/ceiling.ts: a plain ws broadcast from memory):
 *   pairs: 200 conversations of 2 members, 20,000 messages, 64 concurrent senders
 *   group: one conversation of 500 connected members, 200 messages
 * Each run is preceded by a warm-up that is delivered but not measured (400 messages in pairs, 10 in group).
 * Reports sends/s, deliveries/s, send→receive latency, lost and duplicate deliveries, server RSS
 * and CPU µs per delivery; appends the table to bench/RESULTS.md.
 *
 *   npm run bench:push                 # everything
 *   BENCH_PAIRS_MESSAGES=2000 npm run bench:push -- ws   # smaller, one protocol
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { freePort, type NodeProcess, root, spawnServer } from "../test/support/process.ts"
import { readSseEvents } from "../test/support/push.ts"
import { makeHttpClient } from "./http-client.ts"

const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"
const PAIRS = Number(process.env.BENCH_PAIRS ?? 200)
const PAIRS_MESSAGES = Number(process.env.BENCH_PAIRS_MESSAGES ?? 20_000)
const PAIRS_SENDERS = Number(process.env.BENCH_PAIRS_SENDERS ?? 64)
const GROUP = Number(process.env.BENCH_GROUP ?? 500)
const GROUP_MESSAGES = Number(process.env.BENCH_GROUP_MESSAGES ?? 200)
const PAIRS_WARMUP = Number(process.env.BENCH_PAIRS_WARMUP ?? 2 * PAIRS)
const GROUP_WARMUP = Number(process.env.BENCH_GROUP_WARMUP ?? 10)
const IDLE = Number(process.env.BENCH_IDLE ?? 1000)
const TICKS = 100 // Linux clock ticks per second for /proc/<pid>/stat

type Proto = "ws" | "sse" | "poll"

interface Target {
  readonly name: string
  /** Connects `user` and calls `onMessage` with each pushed payload. */
  readonly connect: (user: number, onMessage: (content: string) => void) => Promise<() => void>
  /** Sends `content` from `from` into conversation `conv`, whose members are `members`. */
  readonly send: (from: number, conv: number, members: ReadonlyArray<number>, content: string) => Promise<void>
  /** The server processes (several in a multi-node run): CPU and RSS are summed over them. */
  readonly pids: ReadonlyArray<number>
}

const percentile = (sorted: Array<number>, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]

const procStat1 = (pid: number) => {
  const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const rssKb = Number(status.match(/VmRSS:\s+(\d+)/)?.[1] ?? 0)
  const fields = Fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")
  return { rssMb: rssKb / 1024, cpuUs: ((Number(fields[11]) + Number(fields[12])) / TICKS) * 1e6 }
}
const procStat = (pids: ReadonlyArray<number>) =>
  pids.map(procStat1).reduce((a, b) => ({ rssMb: a.rssMb + b.rssMb, cpuUs: a.cpuUs + b.cpuUs }))

/** CPU time of every PostgreSQL process on the machine (the server's database work). */
const postgresCpuUs = () => {
  let total = 0
  for (const pid of Fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
      if (!stat.includes("(postgres)")) continue
      const fields = stat.split(") ")[1].split(" ")
      total += ((Number(fields[11]) + Number(fields[12])) / TICKS) * 1e6
    } catch {
      // the process ended meanwhile
    }
  }
  return total
}

const sseConnect = async (url: string, onData: (data: string) => void) => {
  const controller = new AbortController()
  const res = await fetch(url, { signal: controller.signal })
  readSseEvents(res.body!, (e) => {
    if (e.event === "message") onData(e.data)
  })
  return () => controller.abort()
}

/**
 * quick-im on `nodes` processes sharing one fresh database (multi-node mode when more than one):
 * user u connects to node u % nodes, and sends go to the nodes in turn, so in pairs most
 * deliveries cross nodes.
 */
const quickIm = async (protocol: Proto, users: number, conversations: Array<ReadonlyArray<number>>, nodes = 1) => {
  const dbName = `quickim_bench_${process.pid}_${Date.now().toString(36)}`
  execFileSync("psql", [ADMIN, "-qAtc", `CREATE DATABASE ${dbName}`])
  const spawnNode = async () =>
    spawnServer({
      env: {
        ...(nodes > 1 ? { QUICKIM_RUNNER_HOST: "127.0.0.1", QUICKIM_RUNNER_PORT: String(await freePort()) } : {}),
        DATABASE_URL: ADMIN.replace(/\/[^/]*$/, `/${dbName}`),
        QUICKIM_JWT_SECRET: "bench-secret-bench-secret",
        QUICKIM_DB_POOL: "16",
        // BENCH_SERVER_V8_FLAGS tries V8 settings on the server alone (the driver keeps its own).
        ...(process.env.BENCH_SERVER_V8_FLAGS ? { DENO_V8_FLAGS: process.env.BENCH_SERVER_V8_FLAGS } : {})
      },
      // BENCH_NODE=/path/to/node runs the server under Node instead; BENCH_NODE_FLAGS="--cpu-prof" profiles it.
      ...(process.env.BENCH_NODE
        ? {
          runtime: {
            node: process.env.BENCH_NODE,
            flags: (process.env.BENCH_NODE_FLAGS ?? "").split(" ").filter(Boolean)
          }
        }
        : {})
    })
  const servers: Array<NodeProcess> = []
  for (let i = 0; i < nodes; i++) servers.push(await spawnNode())
  const server = servers[0]
  if (nodes > 1) await new Promise((r) => setTimeout(r, 3000)) // shards assigned to every runner
  const tokens: Array<string> = []
  for (let i = 0; i < users; i += 50) {
    tokens.push(
      ...await Promise.all(Array.from({ length: Math.min(50, users - i) }, (_, k) => server.token(`u${i + k}`)))
    )
  }
  const ids: Array<string> = []
  for (const members of conversations) {
    const r = await server.post("/inner/create_conversation", { sessions: members.map((m) => `u${m}`) })
    ids.push(r.body.data.ConversationId)
  }
  const clients = servers.map((s) => makeHttpClient(s.url))
  let turn = 0
  const target: Target & { readonly stop: () => Promise<void> } = {
    name: nodes > 1 ? `quick-im ${protocol}, ${nodes} nodes` : `quick-im ${protocol}`,
    pids: servers.map((s) => s.child.pid!),
    connect: async (user, onMessage) => {
      const base = `${
        servers[user % nodes].url.replace("http", protocol === "ws" ? "ws" : "http")
      }/notify?protoc=${protocol}&token=${tokens[user]}`
      if (protocol === "ws") {
        const ws = new WebSocket(base)
        ws.onmessage = (e) => onMessage(JSON.parse(String(e.data)).Content)
        await new Promise((r, j) => {
          ws.onopen = r
          ws.onerror = j
        })
        return () => ws.close()
      }
      if (protocol === "sse") return sseConnect(base, (data) => onMessage(JSON.parse(data).Content))
      let stopped = false
      const controller = new AbortController()
      ;(async () => {
        while (!stopped) {
          try {
            const res = await fetch(base, { signal: controller.signal })
            if (res.status === 200) onMessage(((await res.json()) as { Content: string }).Content)
            else await res.body?.cancel()
          } catch {
            // stopped
          }
        }
      })()
      await new Promise((r) => setTimeout(r, 5))
      return () => {
        stopped = true
        controller.abort()
      }
    },
    send: async (from, conv, _members, content) => {
      const node = turn++ % nodes
      const tails = () => servers.map((s, i) => `--- node ${i} (${s.url}) ---\n${s.output().slice(-3000)}`).join("\n")
      const r = await clients[node].post("/send_msg", { conversation_id: ids[conv], content }, tokens[from]).catch(
        (error) => {
          throw new Error(`send to node ${node} failed: ${error}\n${tails()}`)
        }
      )
      let code: unknown = undefined
      try {
        code = JSON.parse(r.body).code
      } catch {
        // not JSON: reported below with the servers' output
      }
      if (code !== 0) {
        throw new Error(`send to node ${node} failed: ${r.status} ${r.body}\n${tails()}`)
      }
    },
    stop: async () => {
      await Promise.all(servers.map((s) => s.stop()))
      // BENCH_LOG_DIR=/tmp/x keeps each server's output for a look afterwards.
      if (process.env.BENCH_LOG_DIR) {
        servers.forEach((s, i) => Fs.writeFileSync(Path.join(process.env.BENCH_LOG_DIR!, `node-${i}.log`), s.output()))
      }
      execFileSync("psql", [
        ADMIN,
        "-qAtc",
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname='${dbName}'`
      ])
      execFileSync("psql", [ADMIN, "-qAtc", `DROP DATABASE IF EXISTS ${dbName}`])
    }
  }
  return target
}

const ceiling = async () => {
  const port = await freePort()
  const child: ChildProcess = spawn(Path.join(root, "node_modules/.bin/deno"), [
    "run",
    "-A",
    Path.join(root, "bench/ceiling.ts")
  ], {
    env: { ...process.env, PORT: String(port) },
    stdio: ["ignore", "pipe", "inherit"]
  })
  await new Promise((r) => child.stdout!.once("data", r))
  const http = makeHttpClient(`http://127.0.0.1:${port}`)
  return {
    name: "ceiling ws",
    pids: [child.pid!],
    connect: async (user: number, onMessage: (content: string) => void) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/?id=${user}`)
      ws.onmessage = (e) => onMessage(JSON.parse(String(e.data)).Content)
      await new Promise((r) => (ws.onopen = r))
      return () => ws.close()
    },
    send: async (from: number, _conv: number, members: ReadonlyArray<number>, content: string) => {
      await http.post("/send", { to: members.map(String), message: { FromSession: `u${from}`, Content: content } })
    },
    stop: async () => {
      child.kill("SIGTERM")
    }
  }
}

interface Result {
  readonly workload: string
  readonly target: string
  readonly sendsPerSec: number
  readonly deliveriesPerSec: number
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
  readonly lost: number
  readonly duplicates: number
  readonly rssMb: number
  readonly cpuUsPerDelivery: number
}

/**
 * Connects everyone, warms up (`warmup` messages, delivered but not measured: entity activation
 * and the JIT's first passes), sends, waits for every delivery (or 30 s of silence), measures.
 */
const runWorkload = async (
  workload: string,
  target: Target,
  users: number,
  conversations: Array<ReadonlyArray<number>>,
  messages: number,
  senders: number,
  warmup: number
): Promise<Result> => {
  const sentAt = new Map<string, number>()
  const latencies: Array<number> = []
  const acks: Array<number> = [] // send request → answer
  const seen = new Map<string, number>() // `${user}:${content}` → count
  let deliveries = 0
  let warmed = 0
  let lastDelivery = performance.now()
  const closers: Array<() => void> = []
  for (let u = 0; u < users; u += 50) {
    closers.push(
      ...await Promise.all(
        Array.from({ length: Math.min(50, users - u) }, (_, k) =>
          target.connect(u + k, (content) => {
            if (content.startsWith("warmup-")) return void warmed++
            const now = performance.now()
            const key = `${u + k}:${content}`
            seen.set(key, (seen.get(key) ?? 0) + 1)
            deliveries++
            lastDelivery = now
            const t0 = sentAt.get(content)
            if (t0 !== undefined) latencies.push(now - t0)
          }))
      )
    )
  }
  await new Promise((r) => setTimeout(r, 1000))
  let nextWarm = 0
  await Promise.all(Array.from({ length: senders }, async () => {
    while (nextWarm < warmup) {
      const n = nextWarm++
      const members = conversations[n % conversations.length]
      await target.send(members[n % members.length], n % conversations.length, members, `warmup-${n}`)
    }
  }))
  for (let waited = 0; warmed < warmup * conversations[0].length && waited < 10_000; waited += 50) {
    await new Promise((r) => setTimeout(r, 50))
  }
  const before = procStat(target.pids)
  const driverBefore = process.cpuUsage()
  const postgresBefore = postgresCpuUs()
  const started = performance.now()
  let next = 0
  await Promise.all(Array.from({ length: senders }, async () => {
    while (next < messages) {
      const n = next++
      const conv = n % conversations.length
      const members = conversations[conv]
      const content = `${workload}-${n}`
      const t0 = performance.now()
      sentAt.set(content, t0)
      await target.send(members[n % members.length], conv, members, content)
      acks.push(performance.now() - t0)
    }
  }))
  const sendSeconds = (performance.now() - started) / 1000
  const expected = messages * conversations[0].length
  while (deliveries < expected && performance.now() - lastDelivery < 30_000) {
    await new Promise((r) => setTimeout(r, 50))
  }
  const seconds = (lastDelivery - started) / 1000
  const after = procStat(target.pids)
  const driverCpu = process.cpuUsage(driverBefore)
  const busy = (us: number) => (us / 1e6 / seconds).toFixed(2)
  acks.sort((a, b) => a - b)
  console.error(
    `${workload} ${target.name}: send answered p50 ${percentile(acks, 50).toFixed(1)} ms, p99 ${
      percentile(acks, 99).toFixed(1)
    } ms; cores busy over ${seconds.toFixed(1)} s: server ${busy(after.cpuUs - before.cpuUs)}, `
      + `driver ${busy(driverCpu.user + driverCpu.system)}, postgres ${busy(postgresCpuUs() - postgresBefore)}`
  )
  for (const close of closers) close()
  let unique = 0
  let duplicates = 0
  for (const count of seen.values()) {
    unique++
    duplicates += count - 1
  }
  latencies.sort((a, b) => a - b)
  return {
    workload,
    target: target.name,
    sendsPerSec: Math.round(messages / sendSeconds),
    deliveriesPerSec: Math.round(deliveries / seconds),
    p50: percentile(latencies, 50),
    p95: percentile(latencies, 95),
    p99: percentile(latencies, 99),
    max: latencies[latencies.length - 1],
    lost: expected - unique,
    duplicates,
    rssMb: after.rssMb,
    cpuUsPerDelivery: (after.cpuUs - before.cpuUs) / Math.max(1, deliveries)
  }
}

const pairs = Array.from({ length: PAIRS }, (_, i) => [2 * i, 2 * i + 1] as const)
const group = [Array.from({ length: GROUP }, (_, i) => i)]
const only = process.argv.slice(2).filter((a): a is Proto => a === "ws" || a === "sse" || a === "poll")
const protocols: Array<Proto> = only.length > 0 ? only : ["ws", "sse", "poll"]
const results: Array<Result> = []

// BENCH_WORKLOADS=pairs (or group) narrows a run while tuning; the ceiling always runs for the ratios.
const workloads = (process.env.BENCH_WORKLOADS ?? "pairs,group").split(",")
{
  const c = await ceiling()
  if (workloads.includes("pairs")) {
    results.push(await runWorkload("pairs", c, PAIRS * 2, pairs, PAIRS_MESSAGES, PAIRS_SENDERS, PAIRS_WARMUP))
  }
  if (workloads.includes("group")) {
    results.push(await runWorkload("group", c, GROUP, group, GROUP_MESSAGES, 4, GROUP_WARMUP))
  }
  await c.stop()
}
// BENCH_NODES=1,3 runs each workload on one node and on three (multi-node mode, same machine).
const nodeCounts = (process.env.BENCH_NODES ?? "1").split(",").map(Number)
for (const protocol of protocols) {
  for (const nodes of nodeCounts) {
    if (workloads.includes("pairs")) {
      const p = await quickIm(protocol, PAIRS * 2, pairs, nodes)
      results.push(await runWorkload("pairs", p, PAIRS * 2, pairs, PAIRS_MESSAGES, PAIRS_SENDERS, PAIRS_WARMUP))
      await p.stop()
    }
    if (workloads.includes("group")) {
      const g = await quickIm(protocol, GROUP, group, nodes)
      results.push(await runWorkload("group", g, GROUP, group, GROUP_MESSAGES, 4, GROUP_WARMUP))
      await g.stop()
    }
  }
}

// Memory holding idle connections.
let idleRss = NaN
if (IDLE > 0) {
  const p = await quickIm("ws", IDLE, [[0, 1]])
  const closers: Array<() => void> = []
  for (let u = 0; u < IDLE; u += 50) {
    closers.push(
      ...await Promise.all(Array.from({ length: Math.min(50, IDLE - u) }, (_, k) => p.connect(u + k, () => {})))
    )
  }
  await new Promise((r) => setTimeout(r, 3000))
  idleRss = procStat(p.pids).rssMb
  for (const close of closers) close()
  await p.stop()
}

const ceilingOf = (workload: string) => results.find((r) => r.workload === workload && r.target === "ceiling ws")!
const f1 = (n: number) => Number.isFinite(n) ? n.toFixed(1) : "–"
const table = [
  "| workload | target | sends/s | deliveries/s | × ceiling | p50 ms | p95 ms | p99 ms | max ms | lost | dup | RSS MB | CPU µs/delivery |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ...results.map((r) => {
    const c = ceilingOf(r.workload)
    const ratio = r.workload === "pairs" ? r.sendsPerSec / c.sendsPerSec : r.deliveriesPerSec / c.deliveriesPerSec
    return `| ${r.workload} | ${r.target} | ${r.sendsPerSec} | ${r.deliveriesPerSec} | ${ratio.toFixed(2)} | ${
      f1(r.p50)
    } | ${f1(r.p95)} | ${f1(r.p99)} | ${f1(r.max)} | ${r.lost} | ${r.duplicates} | ${r.rssMb.toFixed(0)} | ${
      f1(r.cpuUsPerDelivery)
    } |`
  })
].join("\n")
const summary = `${table}\n\nIdle: ${IDLE} WebSocket connections held with ${idleRss.toFixed(0)} MB RSS.\n`
console.log(summary)
const machine = `${Os.cpus().length} cores, ${Math.round(Os.totalmem() / 2 ** 30)} GiB, ${Os.cpus()[0]?.model ?? "cpu"}`
Fs.appendFileSync(
  Path.join(root, "bench/RESULTS.md"),
  `\n## Push benchmark — ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC\n\n`
    + `Machine: ${machine}; quick-im on Deno (${
      nodeCounts.join(" and ")
    } node(s)), PostgreSQL 15, every message persisted; driver (Deno) on the same cores. `
    + `pairs: ${PAIRS} conversations × 2 members, ${PAIRS_MESSAGES} messages, ${PAIRS_SENDERS} senders (each message is delivered to both members); `
    + `group: ${GROUP} members, ${GROUP_MESSAGES} messages. "× ceiling" is sends/s (pairs) or deliveries/s (group) over the plain ws broadcast's.\n\n`
    + summary
)
if (results.some((r) => r.lost > 0)) process.exit(1)
