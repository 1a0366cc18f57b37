/**
 * Fuzz run (not a test): a real quick-im process on a fresh PostgreSQL database gets FUZZ_REQUESTS
 * (default 100,000) requests made by the generators of test/support/fuzz.ts, FUZZ_CONCURRENCY (32)
 * at a time over loopback. Reports requests, the status histogram, 5xx answers (503 counted apart),
 * answers that are not the envelope, requests not answered within FUZZ_TIMEOUT_MS (hangs), server
 * RSS before and after (and its peak), and whether the server still answers /healthz at the end;
 * appends the figures to bench/RESULTS.md.
 *
 *   npm run fuzz
 *   FUZZ_REQUESTS=10000 npm run fuzz
 *   FUZZ_SEED=42 FUZZ_MAX_SECONDS=300 npm run fuzz     # replay a run; stop sending after 5 minutes
 *   FUZZ_POISON=0 npm run fuzz                         # without NUL and unpaired surrogates
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import fc from "fast-check"
import { build, describe, type FuzzWorld, judge, type Plan, plan, POISON_STRINGS, send } from "../test/support/fuzz.ts"
import { root, spawnServer } from "../test/support/process.ts"

const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"
const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 100_000)
const CONCURRENCY = Number(process.env.FUZZ_CONCURRENCY ?? 32)
const TIMEOUT_MS = Number(process.env.FUZZ_TIMEOUT_MS ?? 15_000)
const MAX_SECONDS = Number(process.env.FUZZ_MAX_SECONDS ?? 1800)
const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
const BATCH = 500

const memory = (pid: number) => {
  const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const kb = (field: string) => Number(status.match(new RegExp(`${field}:\\s+(\\d+)`))?.[1] ?? 0)
  return { rssMb: kb("VmRSS") / 1024, peakMb: kb("VmHWM") / 1024 }
}

const stamp = `${process.pid}_${Date.now().toString(36)}`
const dbName = `quickim_fuzz_${stamp}`
execFileSync("psql", [ADMIN, "-qAtc", `CREATE DATABASE ${dbName}`])
const server = await spawnServer({
  env: {
    DATABASE_URL: ADMIN.replace(/\/[^/]*$/, `/${dbName}`),
    QUICKIM_JWT_SECRET: "fuzz-secret-fuzz-secret-fuzz-secret-fuzz",
    QUICKIM_POLL_WAIT: "1 second"
  }
})
const pid = server.child.pid!

try {
  // The world plans refer to: sessions with tokens, a few conversations, and what the run adds.
  const sessions = Array.from({ length: 16 }, (_, i) => `fuzz-${i}`)
  const tokens: Array<string> = []
  for (const s of sessions) tokens.push(await server.token(s))
  const conversations: Array<string> = []
  for (let i = 0; i < 8; i++) {
    const r = await server.post("/inner/create_conversation", { sessions: sessions.slice(i * 2, i * 2 + 4) })
    conversations.push(r.body.data.ConversationId)
  }
  const msgIds: Array<string> = []
  const world: FuzzWorld = { sessions, tokens, conversations, msgIds }

  await new Promise((r) => setTimeout(r, 1000))
  const before = memory(pid)
  const statuses = new Map<number, number>()
  const problems = new Map<string, { count: number; example: string }>()
  let sent = 0
  let answered = 0
  let hangs = 0
  let nonEnvelope = 0
  let clientErrors = 0
  const started = performance.now()
  const deadline = started + MAX_SECONDS * 1000

  const note = (kind: string, example: string) => {
    const entry = problems.get(kind) ?? { count: 0, example }
    entry.count++
    problems.set(kind, entry)
  }

  let batch = 0
  let queue: Array<Plan> = []
  const next = (): Plan => {
    if (queue.length === 0) queue = fc.sample(plan, { numRuns: BATCH, seed: SEED + batch++ })
    return queue.pop()!
  }

  const worker = async () => {
    while (sent < REQUESTS && performance.now() < deadline) {
      sent++
      const req = build(next(), world)
      let answer
      try {
        answer = await send(server.url, req, TIMEOUT_MS)
      } catch (e) {
        clientErrors++
        note(`client error ${(e as Error).message}`, describe(req))
        continue
      }
      if (answer === "timeout") {
        hangs++
        note(`no answer within ${TIMEOUT_MS} ms on ${req.path}`, describe(req))
        continue
      }
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1)
      const problem = judge(req, answer)
      if (problem !== undefined) {
        if (!problem.startsWith("status")) nonEnvelope++
        note(`${problem.slice(0, 80)} on ${req.method} ${req.path}`, `${describe(req)} → ${answer.text.slice(0, 200)}`)
      }
      if (answer.status === 200 && req.method === "POST") {
        const body = JSON.parse(answer.text)
        if (req.path.endsWith("/create_conversation") && conversations.length < 256) {
          conversations.push(body.data.ConversationId)
        }
        if (req.path === "/send_msg" && msgIds.length < 1024) msgIds.push(body.data.MsgID)
      }
      if (++answered % 10_000 === 0) {
        console.error(`${answered} answered, ${Math.round(answered / ((performance.now() - started) / 1000))}/s`)
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  const seconds = (performance.now() - started) / 1000
  const after = memory(pid)
  const health = await server.raw("/healthz", { method: "GET", signal: AbortSignal.timeout(5000) }).catch(() => null)
  const alive = server.child.exitCode === null && health?.status === 200

  const count5xx = [...statuses].filter(([s]) => s >= 500 && s !== 503).reduce((a, [, n]) => a + n, 0)
  const count503 = statuses.get(503) ?? 0
  const histogram = [...statuses].sort(([a], [b]) => a - b).map(([s, n]) => `${s}: ${n}`).join(", ")
  console.log(
    `\n${sent} requests in ${seconds.toFixed(0)} s (${(sent / seconds).toFixed(0)}/s), seed ${SEED}`
      + `${POISON_STRINGS ? ", with NUL and unpaired surrogates" : ""}\nstatuses: ${histogram}\n`
      + `5xx other than 503: ${count5xx}; 503: ${count503}; not an envelope: ${nonEnvelope}; hangs: ${hangs}; `
      + `client errors: ${clientErrors}\nRSS ${before.rssMb.toFixed(0)} MB before, ${after.rssMb.toFixed(0)} MB after `
      + `(peak ${after.peakMb.toFixed(0)} MB); server alive: ${alive ? "yes" : "no"}`
  )
  for (const [kind, { count, example }] of [...problems].sort(([, a], [, b]) => b.count - a.count)) {
    console.log(`\n${count} × ${kind}\n  e.g. ${example.slice(0, 600)}`)
  }

  const cpu = Os.cpus()
  const section = `
## Fuzz run — ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC

Machine: ${cpu.length} cores, ${(Os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${
    cpu[0]?.model.trim() ?? "?"
  }; quick-im on Deno, one node, PostgreSQL; generators of test/support/fuzz.ts${
    POISON_STRINGS ? " with NUL and unpaired surrogates" : " without NUL and unpaired surrogates"
  }, seed ${SEED}, ${CONCURRENCY} at a time over loopback.

| requests | seconds | req/s | 5xx (not 503) | 503 | not an envelope | hangs (> ${
    TIMEOUT_MS / 1000
  } s) | RSS MB before | RSS MB after | peak RSS MB | alive |
|---|---|---|---|---|---|---|---|---|---|---|
| ${sent} | ${seconds.toFixed(0)} | ${
    (sent / seconds).toFixed(0)
  } | ${count5xx} | ${count503} | ${nonEnvelope} | ${hangs} | ${before.rssMb.toFixed(0)} | ${
    after.rssMb.toFixed(0)
  } | ${after.peakMb.toFixed(0)} | ${alive ? "yes" : "no"} |

Statuses: ${histogram}.
`
  Fs.appendFileSync(Path.join(root, "bench/RESULTS.md"), section)
  if (!alive || count5xx > 0 || hangs > 0 || nonEnvelope > 0) process.exitCode = 1
} finally {
  await server.stop()
  execFileSync("psql", [
    ADMIN,
    "-qAtc",
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${dbName}'`
  ])
  execFileSync("psql", [ADMIN, "-qAtc", `DROP DATABASE IF EXISTS ${dbName}`])
}
