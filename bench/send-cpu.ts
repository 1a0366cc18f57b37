/**
 * Server CPU per send, without push connections (not a test): for each checkout named on the
 * command line, in turn and ROUNDS times over, starts its server on a fresh PostgreSQL database,
 * creates 200 two-member conversations, warms up with 1,000 sends, then sends SENDS more from 64
 * concurrent keep-alive clients and reads the server's CPU time from /proc. Alternating checkouts
 * run by run keeps a machine whose speed drifts from favouring one of them; compare pairs.
 *
 *   deno run -A bench/send-cpu.ts /path/to/before /path/to/after      # ROUNDS=5 SENDS=6000
 *   SHUFFLE=1 deno run -A bench/send-cpu.ts A A2 B     # each round in a random order; A2 a second
 *                                                      # checkout of A shows the noise (A/A)
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"

const dirs = process.argv.slice(2)
const ROUNDS = Number(process.env.ROUNDS ?? 5)
const SENDS = Number(process.env.SENDS ?? 6000)
const ADMIN = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"
const TICKS_MS = 10 // /proc/<pid>/stat counts CPU in 100 Hz ticks

const cpuMs = (pid: number) => {
  const f = Fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")
  return (Number(f[11]) + Number(f[12])) * TICKS_MS
}
const psql = (sql: string) => execFileSync("psql", [ADMIN, "-qAtc", sql])

const results = new Map<string, Array<number>>()
for (let round = 0; round < ROUNDS; round++) {
  const order = process.env.SHUFFLE === "1" ? [...dirs].sort(() => Math.random() - 0.5) : dirs
  for (const dir of order) {
    // Each checkout's own server and client code.
    const { spawnServer } = await import(`${dir}/test/support/process.ts`)
    const { makeHttpClient } = await import(`${dir}/bench/http-client.ts`)
    const db = `sendcpu_${process.pid}_${round}_${dirs.indexOf(dir)}`
    psql(`CREATE DATABASE ${db}`)
    const server = await spawnServer({
      env: {
        DATABASE_URL: ADMIN.replace(/\/[^/]*$/, `/${db}`),
        QUICKIM_JWT_SECRET: "bench-secret-bench-secret-bench-secret",
        QUICKIM_LOG_LEVEL: "Warn"
      }
    })
    const http = makeHttpClient(server.url)
    const tokens: Array<string> = []
    for (let u = 0; u < 400; u++) {
      tokens.push(JSON.parse((await http.post("/inner/get_token", { session: `u${u}`, platform: 1 })).body).data)
    }
    const ids: Array<string> = []
    for (let c = 0; c < 200; c++) {
      const sessions = [`u${2 * c}`, `u${2 * c + 1}`]
      const r = await http.post("/inner/create_conversation", { conversation_type: 1, sessions })
      ids.push(JSON.parse(r.body).data.ConversationId)
    }
    const run = async (n: number) => {
      let next = 0
      await Promise.all(Array.from({ length: 64 }, async () => {
        while (next < n) {
          const i = next++
          const c = i % 200
          const r = await http.post("/send_msg", { conversation_id: ids[c], content: `m${i}` }, tokens[2 * c + (i & 1)])
          if (r.status !== 200) throw new Error(r.body)
        }
      }))
    }
    await run(1000)
    const before = cpuMs(server.child.pid!)
    const started = performance.now()
    await run(SENDS)
    const seconds = (performance.now() - started) / 1000
    const us = ((cpuMs(server.child.pid!) - before) * 1000) / SENDS
    results.set(dir, [...(results.get(dir) ?? []), us])
    console.log(`${round} ${dir}: ${Math.round(SENDS / seconds)} sends/s, ${us.toFixed(0)} µs CPU per send`)
    await server.stop()
    psql(`DROP DATABASE ${db} WITH (FORCE)`)
  }
}
for (const [dir, xs] of results) {
  const s = [...xs].sort((a, b) => a - b)
  console.log(
    `${dir}: median ${s[Math.floor(s.length / 2)].toFixed(0)} µs (${s[0].toFixed(0)}–${s[s.length - 1].toFixed(0)})`
  )
}
process.exit(0)
