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
 *   BENCH_NODES=1,3i,3l,3 BENCH_WORKLOADS=pairs BENCH_IDLE=0 npm run bench:push -- ws
 *       # one node; three independent nodes; three nodes with local placement; three nodes (see quickIm)
 *   BENCH_NODES=3,3n,3l ...            # spread; Mailboxes near their connections; local placement
 *
 * BENCH_FLOOR=1 also runs the pairs workload against the persisting floor (bench/floor.ts: plain
 * node:http, ws and pg with a group commit, no framework and no checks), beside the ceiling.
 *
 * Tuning aids: BENCH_PERF=task-clock,context-switches counts perf events in the servers over the
 * measured part; BENCH_PERF_RECORD=/tmp/x records CPU samples there; BENCH_SERVER_V8_FLAGS passes V8
 * flags to the servers, comma-separated (in DENO_V8_FLAGS: the flags of src/RuntimeFlags.ts, on
 * the command line, win over the same flag there); BENCH_NODE=/path/to/node runs them under Node (BENCH_NODE_FLAGS=--cpu-prof);
 * BENCH_METRICS=regex prints, per node, the /metrics lines matching it, and the database's
 * transactions and rows written (pg_stat_database), when a multi-node target stops.
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
/**
 * BENCH_GROUP_OFFLINE=9500: the group also has this many members that never connect (a large
 * group with few members online); deliveries are counted for the connected ones only.
 */
const GROUP_OFFLINE = Number(process.env.BENCH_GROUP_OFFLINE ?? 0)
const PAIRS_WARMUP = Number(process.env.BENCH_PAIRS_WARMUP ?? 2 * PAIRS)
const GROUP_WARMUP = Number(process.env.BENCH_GROUP_WARMUP ?? 10)
const IDLE = Number(process.env.BENCH_IDLE ?? 1000)
const TICKS = 100 // Linux clock ticks per second for /proc/<pid>/stat
/**
 * BENCH_DB=embedded: the node on its embedded PostgreSQL (no DATABASE_URL, a fresh QUICKIM_DATA_DIR)
 * instead of the machine's PostgreSQL; its server's processes count as the node's.
 */
const EMBEDDED = process.env.BENCH_DB === "embedded"

/** The embedded PostgreSQL server's postmaster and its children (backends and helpers). */
const embeddedServerPids = (dataDir: string): Array<number> => {
  let postmaster: number
  try {
    postmaster = Number(Fs.readFileSync(Path.join(dataDir, "postgres", "postmaster.pid"), "utf8").split("\n")[0])
  } catch {
    return []
  }
  const children = Fs.readdirSync(`/proc/${postmaster}/task`).flatMap((task) =>
    Fs.readFileSync(`/proc/${postmaster}/task/${task}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number)
  )
  return [postmaster, ...children]
}

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
/** Read and write system calls the processes have made (all their threads), from /proc/<pid>/io. */
const syscalls = (pids: ReadonlyArray<number>) =>
  pids.map((pid) => {
    const io = Fs.readFileSync(`/proc/${pid}/io`, "utf8")
    return { reads: Number(io.match(/syscr:\s+(\d+)/)?.[1] ?? 0), writes: Number(io.match(/syscw:\s+(\d+)/)?.[1] ?? 0) }
  }).reduce((a, b) => ({ reads: a.reads + b.reads, writes: a.writes + b.writes }))

/**
 * PSS (proportional set size) summed over `pids`, MB: a page shared by n processes counts 1/n in
 * each, so the sum is the memory the processes take together. Summed RSS counts PostgreSQL's
 * shared buffers once per backend that touched them.
 */
const pssMb = (pids: ReadonlyArray<number>) => {
  let kb = 0
  for (const pid of pids) {
    try {
      kb += Number(Fs.readFileSync(`/proc/${pid}/smaps_rollup`, "utf8").match(/^Pss:\s+(\d+)/m)?.[1] ?? 0)
    } catch {
      // the process ended meanwhile
    }
  }
  return kb / 1024
}

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
  }, controller.signal)
  return () => controller.abort()
}

/** The default-group shard of an entity id, as Effect cluster computes it (its internal hashString). */
const shardOf = (entityId: string, shardsPerGroup = 300) => {
  let h = 5381
  for (let i = entityId.length; i;) h = (h * 33) ^ entityId.charCodeAt(--i)
  h = (h & 0xbfffffff) | ((h >>> 1) & 0x40000000)
  return Math.abs(h % shardsPerGroup) + 1
}

/**
 * quick-im on `nodes` processes. "spread" (the benchmark): one fresh database shared by all (multi-node
 * mode when more than one); user u connects to node u % nodes, and sends go to the nodes in turn, so
 * in pairs most deliveries cross nodes. Two diagnostics of what the crossing costs (pairs only):
 * "independent", single nodes with a database each and conversation c with its members on node
 * c % nodes (three processes on these cores with no cluster at all); "local", the same cluster as
 * "spread" with conversation c and its members' Mailboxes placed on one node, which its members
 * connect and send to (the cluster with nothing crossing nodes); "near", "spread" with each user's
 * Mailbox on the node the user connects to (what the hop from a Mailbox to its connections costs).
 */
const quickIm = async (
  protocol: Proto,
  users: number,
  conversations: Array<ReadonlyArray<number>>,
  nodes = 1,
  placement: "spread" | "independent" | "local" | "near" = "spread",
  offline = 0
) => {
  const independent = placement === "independent"
  const local = placement === "local"
  const near = placement === "near"
  const stamp = `${process.pid}_${Date.now().toString(36)}`
  // Independent nodes each have a database of their own; a cluster's nodes share one.
  const dbNames = !EMBEDDED
    ? Array.from({ length: independent ? nodes : 1 }, (_, i) => `quickim_bench_${stamp}_${i}`)
    : []
  for (const dbName of dbNames) execFileSync("psql", [ADMIN, "-qAtc", `CREATE DATABASE ${dbName}`])
  const dataDir = !EMBEDDED ? undefined : Fs.mkdtempSync(Path.join(Os.tmpdir(), "quickim-bench-"))
  const cluster = nodes > 1 && !independent
  const spawnNode = async (i: number) =>
    spawnServer({
      env: {
        ...(cluster ? { QUICKIM_RUNNER_HOST: "127.0.0.1", QUICKIM_RUNNER_PORT: String(await freePort()) } : {}),
        ...(dataDir === undefined
          ? { DATABASE_URL: ADMIN.replace(/\/[^/]*$/, `/${dbNames[independent ? i : 0]}`) }
          : { QUICKIM_DATA_DIR: dataDir }),
        QUICKIM_JWT_SECRET: "bench-secret-bench-secret-bench-secret",
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
  for (let i = 0; i < nodes; i++) servers.push(await spawnNode(i))
  const server = servers[0]
  if (cluster) await new Promise((r) => setTimeout(r, 3000)) // shards assigned to every runner
  // Independent nodes: conversation c and its members live on node c % nodes, so nothing crosses.
  const homeOfConversation = (c: number) => independent ? c % nodes : 0
  const homeOfUser = new Map<number, number>()
  if (independent || local) conversations.forEach((members, c) => members.forEach((m) => homeOfUser.set(m, c % nodes)))
  // Local placement (a diagnostic): a cluster whose traffic never crosses nodes. Each conversation's
  // members are named so that their Mailboxes' shards are on the node that hosts the conversation,
  // and they connect and send there.
  const names = Array.from({ length: users }, (_, u) => `u${u}`)
  const nodeOfShard = new Map<number, number>()
  if (local || near) {
    // Every shard reported, by every node: the reports come every 2 s and shards settle after a join.
    for (let tries = 0; nodeOfShard.size < 300 || new Set(nodeOfShard.values()).size < nodes; tries++) {
      if (tries > 0) await new Promise((r) => setTimeout(r, 1000))
      if (tries > 20) throw new Error("the nodes' reports do not cover every shard")
      nodeOfShard.clear()
      const rows = execFileSync("psql", [
        ADMIN.replace(/\/[^/]*$/, `/${dbNames[0]}`),
        "-qAtc",
        "SELECT http_url, shard_ids FROM quickim_nodes"
      ], { encoding: "utf8" }).trim().split("\n")
      for (const row of rows) {
        const [url, shards] = row.split("|")
        const node = servers.findIndex((s) => new URL(s.url).port === new URL(url).port)
        for (const id of shards.split(",")) if (id !== "" && node >= 0) nodeOfShard.set(Number(id), node)
      }
    }
    // "near": user u's Mailbox on the node u connects to (u % nodes); the rest as in "spread".
    const need = Array.from({ length: nodes }, () => 0)
    if (near) { for (let u = 0; u < users; u++) need[u % nodes]++ }
    else conversations.forEach((members, c) => (need[c % nodes] += members.length))
    const nameOn = new Map(need.map((_, n) => [n, [] as Array<string>]))
    for (let k = 0, missing = users; missing > 0; k++) {
      const name = `u${k}`
      const list = nameOn.get(nodeOfShard.get(shardOf(name))!)!
      if (list.length < need[nodeOfShard.get(shardOf(name))!]) {
        list.push(name)
        missing--
      }
    }
    if (near) { for (let u = 0; u < users; u++) names[u] = nameOn.get(u % nodes)!.pop()! }
    else conversations.forEach((members, c) => members.forEach((m) => (names[m] = nameOn.get(c % nodes)!.pop()!)))
  }
  const tokens: Array<string> = []
  for (let i = 0; i < users; i += 50) {
    tokens.push(
      ...await Promise.all(Array.from({ length: Math.min(50, users - i) }, (_, k) => server.token(names[i + k])))
    )
  }
  const ids: Array<string> = []
  for (const [c, members] of conversations.entries()) {
    for (;;) {
      const r = await servers[homeOfConversation(c)].post("/inner/create_conversation", {
        sessions: members.map((m) => names[m])
      })
      const id: string = r.body.data.ConversationId
      // Local placement: created again until its shard is on the members' node (the others stay idle).
      if (local && nodeOfShard.get(shardOf(id)) !== c % nodes) continue
      ids.push(id)
      // Members that never connect, added in requests the body limit allows.
      for (let i = 0; i < offline; i += 500) {
        const sessions = Array.from({ length: Math.min(500, offline - i) }, (_, k) => `offline-${c}-${i + k}`)
        const added = await servers[homeOfConversation(c)].post("/inner/join_conversation", {
          conversation_id: id,
          sessions
        })
        if (added.body.code !== 0) throw new Error(`adding offline members: ${JSON.stringify(added.body)}`)
      }
      break
    }
  }
  const clients = servers.map((s) => makeHttpClient(s.url))
  let turn = 0
  const target: Target & { readonly stop: () => Promise<void> } = {
    name: independent
      ? `quick-im ${protocol}, ${nodes} independent nodes`
      : local
      ? `quick-im ${protocol}, ${nodes} nodes, local placement`
      : near
      ? `quick-im ${protocol}, ${nodes} nodes, mailboxes near`
      : nodes > 1
      ? `quick-im ${protocol}, ${nodes} nodes`
      : `quick-im ${protocol}`,
    // An embedded PostgreSQL server's processes count as the node's.
    get pids() {
      return [...servers.map((s) => s.child.pid!), ...(dataDir === undefined ? [] : embeddedServerPids(dataDir))]
    },
    connect: async (user, onMessage) => {
      const base = `${
        servers[independent || local ? homeOfUser.get(user)! : user % nodes].url.replace(
          "http",
          protocol === "ws" ? "ws" : "http"
        )
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
      const node = independent || local ? conv % nodes : turn++ % nodes
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
      if (cluster) {
        // What crossed between nodes: relays sent, entity messages they carried, handed back (since
        // start, warm-up included; each node reports every 2 s).
        await new Promise((r) => setTimeout(r, 2500))
        const view = await (await fetch(`${server.url}/inner/cluster`)).json()
        const relays = view.data.Nodes.map((n: any) => n.Relays)
        const sum = (k: string) => relays.reduce((a: number, r: any) => a + r[k], 0)
        console.error(
          `${nodes} nodes: ${sum("Sent")} relays carried ${sum("Carried")} entity messages (${
            (sum("Carried") / Math.max(1, sum("Sent"))).toFixed(1)
          } each), ${sum("HandedBack")} handed back`
        )
      }
      // BENCH_METRICS=regex prints each node's /metrics lines that match it (what each node did).
      if (process.env.BENCH_METRICS) {
        const pattern = new RegExp(process.env.BENCH_METRICS)
        for (const [i, s] of servers.entries()) {
          const text = await (await fetch(`${s.url}/metrics`)).text()
          console.error(
            `--- node ${i} ---\n${text.split("\n").filter((l) => !l.startsWith("#") && pattern.test(l)).join("\n")}`
          )
        }
        for (const dbName of dbNames) {
          const stats = execFileSync("psql", [
            ADMIN,
            "-qAtc",
            `SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database WHERE datname = '${dbName}'`
          ], { encoding: "utf8" }).trim()
          console.error(`database ${dbName}: transactions|inserted|updated ${stats}`)
        }
      }
      await Promise.all(servers.map((s) => s.stop()))
      // BENCH_LOG_DIR=/tmp/x keeps each server's output for a look afterwards.
      if (process.env.BENCH_LOG_DIR) {
        servers.forEach((s, i) => Fs.writeFileSync(Path.join(process.env.BENCH_LOG_DIR!, `node-${i}.log`), s.output()))
      }
      execFileSync("psql", [
        ADMIN,
        "-qAtc",
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname LIKE 'quickim_bench_${stamp}_%'`
      ])
      for (const dbName of dbNames) execFileSync("psql", [ADMIN, "-qAtc", `DROP DATABASE IF EXISTS ${dbName}`])
    }
  }
  return target
}

/**
 * A plain server of bench/ceiling.ts's protocol, as its own process: the ceiling itself, or the
 * persisting floor (bench/floor.ts, on a database of its own, dropped when it stops).
 */
const plain = async (name: string, script: string, database?: string) => {
  const port = await freePort()
  if (database !== undefined) execFileSync("psql", [ADMIN, "-qAtc", `CREATE DATABASE ${database}`])
  const child: ChildProcess = spawn(Path.join(root, "node_modules/.bin/deno"), [
    "run",
    "-A",
    Path.join(root, script)
  ], {
    env: {
      ...process.env,
      PORT: String(port),
      ...(database === undefined ? {} : { DATABASE_URL: ADMIN.replace(/\/[^/]*$/, `/${database}`) })
    },
    stdio: ["ignore", "pipe", "inherit"]
  })
  await new Promise((r) => child.stdout!.once("data", r))
  const http = makeHttpClient(`http://127.0.0.1:${port}`)
  return {
    name,
    pids: [child.pid!],
    connect: async (user: number, onMessage: (content: string) => void) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/?id=${user}`)
      ws.onmessage = (e) => onMessage(JSON.parse(String(e.data)).Content)
      await new Promise((r) => (ws.onopen = r))
      return () => ws.close()
    },
    send: async (from: number, conv: number, members: ReadonlyArray<number>, content: string) => {
      await http.post("/send", {
        to: members.map(String),
        conversation: `c${conv}`,
        message: { FromSession: `u${from}`, Content: content }
      })
    },
    stop: async () => {
      const exited = new Promise((r) => child.once("exit", r))
      child.kill("SIGTERM")
      await exited
      if (database !== undefined) execFileSync("psql", [ADMIN, "-qAtc", `DROP DATABASE IF EXISTS ${database}`])
    }
  }
}

const ceiling = () => plain("ceiling ws", "bench/ceiling.ts")

/** BENCH_FLOOR=1: the persisting floor runs beside the ceiling, in the pairs workload. */
const floor = () => plain("floor ws", "bench/floor.ts", `quickim_bench_floor_${process.pid}_${Date.now().toString(36)}`)

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
  readonly peakPssMb: number
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
  const callsBefore = syscalls(target.pids)
  // BENCH_PERF="task-clock,context-switches" counts those events in the servers over the measured part.
  // BENCH_PERF_RECORD=/tmp/x records CPU samples instead, to /tmp/x.<target> (with
  // BENCH_SERVER_V8_FLAGS=--perf-basic-prof for JavaScript names).
  const perfArgs = process.env.BENCH_PERF_RECORD
    ? [
      "record",
      "-F",
      "999",
      // BENCH_PERF_GRAPH=1: with call stacks (JavaScript frames keep their frame pointers).
      ...(process.env.BENCH_PERF_GRAPH === "1" ? ["-g"] : []),
      "-o",
      `${process.env.BENCH_PERF_RECORD}.${target.name.replace(/\W+/g, "-")}`
    ]
    : process.env.BENCH_PERF
    ? ["stat", "-e", process.env.BENCH_PERF]
    : undefined
  const perf = perfArgs === undefined || target.name.startsWith("ceiling")
    ? undefined
    : spawn("perf", [...perfArgs, "-p", target.pids.join(",")], { stdio: ["ignore", "ignore", "pipe"] })
  let perfOutput = ""
  perf?.stderr!.on("data", (d) => (perfOutput += d))
  const driverBefore = process.cpuUsage()
  const postgresBefore = postgresCpuUs()
  // Peak memory over the measured part: PSS of the server's processes, sampled twice a second.
  // Split between the server's own processes and its PostgreSQL's (embedded), at the sum's peak.
  const isPostgres = (pid: number) => {
    try {
      return Fs.readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "postgres"
    } catch {
      return false
    }
  }
  let peakPss = 0
  let peakSplit = ""
  const samplePss = () => {
    const node = pssMb(target.pids.filter((p) => !isPostgres(p)))
    const database = pssMb(target.pids.filter(isPostgres))
    if (node + database < peakPss) return
    peakPss = node + database
    peakSplit = `server ${node.toFixed(0)} MB, its PostgreSQL ${database.toFixed(0)} MB`
  }
  samplePss()
  const sampler = setInterval(samplePss, 500)
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
  const callsAfter = syscalls(target.pids)
  clearInterval(sampler)
  samplePss()
  if (perf !== undefined) {
    perf.kill("SIGINT")
    await new Promise((r) => perf.once("close", r))
    console.error(`${workload} ${target.name}, perf over ${messages} sends:\n${perfOutput.trim()}`)
  }
  const driverCpu = process.cpuUsage(driverBefore)
  const busy = (us: number) => (us / 1e6 / seconds).toFixed(2)
  acks.sort((a, b) => a - b)
  console.error(
    `${workload} ${target.name}: send answered p50 ${percentile(acks, 50).toFixed(1)} ms, p99 ${
      percentile(acks, 99).toFixed(1)
    } ms; cores busy over ${seconds.toFixed(1)} s: server ${busy(after.cpuUs - before.cpuUs)}, `
      + `driver ${busy(driverCpu.user + driverCpu.system)}, postgres ${busy(postgresCpuUs() - postgresBefore)}; `
      + `peak PSS ${peakPss.toFixed(0)} MB (${peakSplit}); system calls per send: `
      + `${((callsAfter.reads - callsBefore.reads) / messages).toFixed(2)} reads, `
      + `${((callsAfter.writes - callsBefore.writes) / messages).toFixed(2)} writes`
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
    peakPssMb: peakPss,
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
  if (process.env.BENCH_FLOOR === "1" && workloads.includes("pairs")) {
    const f = await floor()
    results.push(await runWorkload("pairs", f, PAIRS * 2, pairs, PAIRS_MESSAGES, PAIRS_SENDERS, PAIRS_WARMUP))
    await f.stop()
  }
}
// BENCH_NODES=1,3 runs each workload on one node and on three (multi-node mode, same machine).
// "3i": three independent single nodes, each with its own database and a third of the pairs (its
// conversations' members connect to it and send to it): what three processes on this machine do with
// no cross-node work at all, the bound for a three-node cluster here.
const nodeCounts = (process.env.BENCH_NODES ?? "1").split(",")
for (const protocol of protocols) {
  for (const spec of nodeCounts) {
    const nodes = parseInt(spec, 10)
    const placement = spec.endsWith("i")
      ? "independent"
      : spec.endsWith("l")
      ? "local"
      : spec.endsWith("n")
      ? "near"
      : "spread"
    const independent = placement === "independent"
    if (workloads.includes("pairs")) {
      const p = await quickIm(protocol, PAIRS * 2, pairs, nodes, placement)
      results.push(await runWorkload("pairs", p, PAIRS * 2, pairs, PAIRS_MESSAGES, PAIRS_SENDERS, PAIRS_WARMUP))
      await p.stop()
    }
    if (workloads.includes("group") && !independent) {
      const g = await quickIm(protocol, GROUP, group, nodes, "spread", GROUP_OFFLINE)
      results.push(await runWorkload("group", g, GROUP, group, GROUP_MESSAGES, 4, GROUP_WARMUP))
      await g.stop()
    }
  }
}

// Memory holding idle connections: RSS with them, and without any (the same node before they connect).
let idleRss = NaN
let baseRss = NaN
if (IDLE > 0) {
  const p = await quickIm("ws", IDLE, [[0, 1]])
  await new Promise((r) => setTimeout(r, 3000))
  baseRss = procStat(p.pids).rssMb
  const closers: Array<() => void> = []
  for (let u = 0; u < IDLE; u += 50) {
    closers.push(
      ...await Promise.all(Array.from({ length: Math.min(50, IDLE - u) }, (_, k) => p.connect(u + k, () => {})))
    )
  }
  // BENCH_IDLE_HOLD_MS holds them longer (a heap snapshot of the server meanwhile).
  await new Promise((r) => setTimeout(r, Number(process.env.BENCH_IDLE_HOLD_MS ?? 3000)))
  idleRss = procStat(p.pids).rssMb
  for (const close of closers) close()
  await p.stop()
}

const ceilingOf = (workload: string) => results.find((r) => r.workload === workload && r.target === "ceiling ws")!
const f1 = (n: number) => Number.isFinite(n) ? n.toFixed(1) : "–"
const table = [
  "| workload | target | sends/s | deliveries/s | × ceiling | p50 ms | p95 ms | p99 ms | max ms | lost | dup | RSS MB | peak PSS MB | CPU µs/delivery |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ...results.map((r) => {
    const c = ceilingOf(r.workload)
    const ratio = r.workload === "pairs" ? r.sendsPerSec / c.sendsPerSec : r.deliveriesPerSec / c.deliveriesPerSec
    return `| ${r.workload} | ${r.target} | ${r.sendsPerSec} | ${r.deliveriesPerSec} | ${ratio.toFixed(2)} | ${
      f1(r.p50)
    } | ${f1(r.p95)} | ${f1(r.p99)} | ${f1(r.max)} | ${r.lost} | ${r.duplicates} | ${r.rssMb.toFixed(0)} | ${
      r.peakPssMb.toFixed(0)
    } | ${f1(r.cpuUsPerDelivery)} |`
  })
].join("\n")
const idleLine = IDLE > 0
  ? `\n\nIdle: ${IDLE} WebSocket connections held with ${idleRss.toFixed(0)} MB RSS (${
    baseRss.toFixed(0)
  } MB before they connected: ${(((idleRss - baseRss) * 1024) / IDLE).toFixed(1)} KB per connection).`
  : ""
const summary = `${table}${idleLine}\n`
console.log(summary)
const machine = `${Os.cpus().length} cores, ${Math.round(Os.totalmem() / 2 ** 30)} GiB, ${Os.cpus()[0]?.model ?? "cpu"}`
Fs.appendFileSync(
  Path.join(root, "bench/RESULTS.md"),
  `\n## Push benchmark — ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC\n\n`
    + `Machine: ${machine}; quick-im on Deno (${nodeCounts.join(", ")} node(s)${
      nodeCounts.some((n) => /[iln]$/.test(n))
        ? '; "independent": single nodes with a database each and a third of the pairs each, nothing crossing; "local placement": one cluster with each conversation and its members\' Mailboxes on one node, nothing crossing; "mailboxes near": each user\'s Mailbox on the node it connects to, the rest spread'
        : ""
    }), PostgreSQL 15, every message persisted; driver (Deno) on the same cores. `
    + `pairs: ${PAIRS} conversations × 2 members, ${PAIRS_MESSAGES} messages, ${PAIRS_SENDERS} senders (each message is delivered to both members); `
    + `group: ${GROUP} members${
      GROUP_OFFLINE > 0 ? ` online and ${GROUP_OFFLINE} more that never connect` : ""
    }, ${GROUP_MESSAGES} messages. "× ceiling" is sends/s (pairs) or deliveries/s (group) over the plain ws broadcast's.\n\n`
    + summary
)
if (results.some((r) => r.lost > 0)) process.exit(1)
