/**
 * Send benchmark (not a test): 2,000 sends to one conversation from 32 concurrent clients, on
 * the embedded PostgreSQL and on the machine's PostgreSQL, each against a real server process. Checks that every send
 * was accepted and that history returns all of them in MsgId order; prints sends/s and latency
 * percentiles and appends the table to bench/RESULTS.md.
 *
 *   npm run bench            # both databases
 *   npm run bench -- embedded  # one
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { spawnServer } from "../test/support/process.ts"

const SENDS = Number(process.env.BENCH_SENDS ?? 2000)
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 32)
const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"

const percentile = (sorted: Array<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]

interface Row {
  readonly db: string
  readonly sendsPerSec: number
  readonly p50: number
  readonly p99: number
  readonly max: number
  readonly accepted: number
  readonly inOrder: boolean
}

const run = async (db: "embedded" | "postgres"): Promise<Row> => {
  const dbName = `quickim_bench_${process.pid}_${Date.now().toString(36)}`
  const psql = (sql: string) => execFileSync("psql", [ADMIN, "-qAtc", sql], { stdio: "pipe" })
  const dataDir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "quickim-bench-"))
  if (db === "postgres") psql(`CREATE DATABASE ${dbName}`)
  const env: Record<string, string> = db === "postgres"
    ? {
      DATABASE_URL: ADMIN.replace(/\/[^/]*$/, `/${dbName}`),
      QUICKIM_JWT_SECRET: "bench-secret-bench-secret-bench-secret"
    }
    : { QUICKIM_DATA_DIR: dataDir, QUICKIM_JWT_SECRET: "bench-secret-bench-secret-bench-secret" }
  const server = await spawnServer({ env })
  try {
    const sessions = Array.from({ length: CLIENTS }, (_, i) => `bench-${i}`)
    const tokens = await Promise.all(sessions.map((s) => server.token(s)))
    const created = await server.post("/inner/create_conversation", { conversation_type: 1, sessions })
    const conversation = created.body.data.ConversationId as string
    // Warm-up: activate the entity and open connections.
    await Promise.all(
      tokens.map((t) => server.post("/send_msg", { conversation_id: conversation, content: "warm" }, t))
    )

    const latencies: Array<number> = []
    const acked: Array<string> = []
    let next = 0
    let failures = 0
    const started = performance.now()
    await Promise.all(tokens.map(async (token, client) => {
      let previous = ""
      while (next < SENDS) {
        const n = next++
        const t0 = performance.now()
        const reply = await server.post(
          "/send_msg",
          { conversation_id: conversation, type: 1, content: `m${n}` },
          token
        )
        latencies.push(performance.now() - t0)
        if (reply.body?.code !== 0) {
          failures++
          continue
        }
        const id = reply.body.data.MsgID as string
        // One client's sends are sequential: its acknowledged ids must increase.
        if (id <= previous) throw new Error(`client ${client}: ${id} after ${previous}`)
        previous = id
        acked.push(id)
      }
    }))
    const elapsed = (performance.now() - started) / 1000

    // Read everything back with the documented paging endpoints.
    const history: Array<string> = []
    let cursor = "22222-2222-2222-222"
    for (;;) {
      const page = await server.post(
        "/get_conversation_30msg_after_the_id",
        { conversation_id: conversation, msg_id: cursor },
        tokens[0]
      )
      const ids = page.body.data.Msg.map((m: { MsgId: string }) => m.MsgId)
      if (ids.length === 0) break
      history.push(...ids)
      cursor = ids[ids.length - 1]
    }
    const ackedSet = new Set(acked)
    const benchHistory = history.filter((id) => ackedSet.has(id))
    const inOrder = benchHistory.length === acked.length
      && benchHistory.every((id, i) => i === 0 || id > benchHistory[i - 1])
      && history.length === acked.length + CLIENTS
    latencies.sort((a, b) => a - b)
    if (failures > 0) console.error(`${db}: ${failures} sends failed`)
    return {
      db,
      sendsPerSec: Math.round(acked.length / elapsed),
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: latencies[latencies.length - 1],
      accepted: acked.length,
      inOrder
    }
  } finally {
    await server.stop()
    if (db === "postgres") {
      psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${dbName}'`)
      psql(`DROP DATABASE IF EXISTS ${dbName}`)
    }
    Fs.rmSync(dataDir, { recursive: true, force: true })
  }
}

const which = process.argv.slice(2).filter((a) => a === "embedded" || a === "postgres") as Array<
  "embedded" | "postgres"
>
const rows: Array<Row> = []
for (const db of which.length > 0 ? which : (["embedded", "postgres"] as const)) rows.push(await run(db))

const table = [
  `| database | sends | clients | accepted | sends/s | p50 ms | p99 ms | max ms | history complete and in order |`,
  `|---|---|---|---|---|---|---|---|---|`,
  ...rows.map((r) =>
    `| ${r.db} | ${SENDS} | ${CLIENTS} | ${r.accepted} | ${r.sendsPerSec} | ${r.p50.toFixed(1)} | ${
      r.p99.toFixed(1)
    } | ${r.max.toFixed(1)} | ${r.inOrder ? "yes" : "NO"} |`
  )
].join("\n")
console.log(table)

const machine = `${Os.cpus().length} cores, ${Math.round(Os.totalmem() / 2 ** 30)} GiB, ${Os.cpus()[0]?.model ?? "cpu"}`
const section = `\n## Send benchmark — ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC\n\n`
  + `Machine: ${machine}; server: Deno, one node; driver on the same cores.\n\n${table}\n`
const results = Path.join(import.meta.dirname ?? ".", "RESULTS.md")
if (!Fs.existsSync(results)) Fs.writeFileSync(results, "# Benchmark results\n")
Fs.appendFileSync(results, section)
if (rows.some((r) => !r.inOrder || r.accepted !== SENDS)) process.exit(1)
