/**
 * A chaos run's figures: the longest stall per conversation (the longest one send took, first
 * attempt to acknowledgement) split by what was going on — a node killed and rejoining, PostgreSQL
 * restarting, or neither — and the lines and markdown row the harness prints.
 */
import * as Os from "node:os"
import type { ChaosRun, FaultEvent, Send } from "./chaos.ts"
import { clean } from "./chaosCheck.ts"
import { cpuSummary } from "./cpuSampler.ts"
import type { Protocol } from "./push.ts"

/** A fault's effects are attributed to it until this long after it ended (shards settle, clients resume). */
const AFTERMATH_S = 10

export type Cause = "node" | "postgres" | "quiet"

interface Window {
  readonly cause: Exclude<Cause, "quiet">
  readonly label: string
  readonly from: number
  readonly to: number
}

export const faultWindows = (events: ReadonlyArray<FaultEvent>): Array<Window> =>
  events.flatMap((e, i): Array<Window> => {
    if (e.what === "kill") {
      const up = events.slice(i + 1).find((x) => x.what === "up" && x.node === e.node)
      return [{
        cause: "node",
        label: `kill node ${e.node} at ${e.at.toFixed(0)} s`,
        from: e.at,
        to: (up?.at ?? Infinity) + AFTERMATH_S
      }]
    }
    if (e.what === "pg-stop") {
      const start = events.slice(i + 1).find((x) => x.what === "pg-start")
      return [{
        cause: "postgres",
        label: `PostgreSQL restart at ${e.at.toFixed(0)} s`,
        from: e.at,
        to: (start?.at ?? Infinity) + AFTERMATH_S
      }]
    }
    return []
  })

const overlaps = (s: Send, w: Window) => s.started <= w.to && s.acked >= w.from

/** The PostgreSQL restart wins over a node's: it stalls every conversation at once. */
export const causeOf = (s: Send, windows: ReadonlyArray<Window>): Cause =>
  windows.some((w) => w.cause === "postgres" && overlaps(s, w))
    ? "postgres"
    : windows.some((w) => overlaps(s, w))
    ? "node"
    : "quiet"

export interface Stall {
  /** Longest single send, seconds. */
  readonly max: number
  /** 99th percentile over conversations of each conversation's longest send, seconds. */
  readonly p99: number
  readonly sends: number
}

const stallOf = (sends: ReadonlyArray<Send>): Stall => {
  const longest = new Map<number, number>()
  for (const s of sends) longest.set(s.conversation, Math.max(longest.get(s.conversation) ?? 0, s.acked - s.started))
  const sorted = [...longest.values()].sort((a, b) => a - b)
  return {
    max: sorted.at(-1) ?? 0,
    p99: sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)],
    sends: sends.length
  }
}

export const stalls = (run: ChaosRun) => {
  const windows = faultWindows(run.events)
  const by = (cause: Cause) => run.sends.filter((s) => causeOf(s, windows) === cause)
  return {
    all: stallOf(run.sends),
    node: stallOf(by("node")),
    postgres: stallOf(by("postgres")),
    quiet: stallOf(by("quiet")),
    perFault: windows.map((w) => ({ label: w.label, longest: stallOf(run.sends.filter((s) => overlaps(s, w))).max })),
    afterRejoin: afterRejoin(run)
  }
}

/**
 * Per kill, the longest a send waited after the killed node was back (its process started again
 * and listening), until this kill's window ends: what the rejoin itself held up, apart from the time
 * the node was away (its shards' locks have not expired then, so nobody else serves them).
 */
const afterRejoin = (run: ChaosRun) =>
  run.events.flatMap((e, i) => {
    if (e.what !== "kill") return []
    const up = run.events.slice(i + 1).find((x) => x.what === "up" && x.node === e.node)
    if (up === undefined) return []
    const waited = run.sends
      .filter((s) => s.acked > up.at && s.started <= up.at + AFTERMATH_S)
      .map((s) => s.acked - Math.max(s.started, up.at))
    return [{ node: e.node, up: up.at, longest: Math.max(0, ...waited) }]
  })

const protocols: ReadonlyArray<Protocol> = ["ws", "sse", "poll"]
const s = (x: number) => x.toFixed(2)

/** The run's figures as lines for the console. */
export const summary = (run: ChaosRun): Array<string> => {
  const st = stalls(run)
  const f = run.findings
  const cpu = (k: "machine" | "nodes" | "driver" | "postgres") => {
    const c = cpuSummary(run.cpu, k)
    return `${s(c.mean)} mean, ${s(c.max)} max`
  }
  return [
    `${run.options.seconds} s of faults, ${run.options.clients} clients (ws ${run.protocols.ws}, sse ${run.protocols.sse}, `
    + `poll ${run.protocols.poll}), ${run.options.conversations} conversations, ${run.sends.length} sends acknowledged `
    + `(${s(run.sends.length / run.options.seconds)}/s), ${run.abandoned} abandoned; seed ${run.options.seed}`,
    `faults: ${
      run.events.map((e) => `${e.what}${e.node === undefined ? "" : ` ${e.node}`} @${e.at.toFixed(1)}`).join(", ")
    }`,
    ...(run.unsettled === undefined ? [] : [`NOT SETTLED after the faults: ${run.unsettled}`]),
    `node warnings and errors: ${
      Object.entries(run.logged).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${v}`).join("; ") || "none"
    }`,
    `failed attempts: ${Object.entries(run.failures).map(([k, v]) => `${k}: ${v}`).join(", ") || "none"}`,
    "| protocol | clients | random closes | drops | received | raw repeats | lost | duplicates after dedupe | conversations out of order | foreign |",
    "|---|---|---|---|---|---|---|---|---|---|",
    ...protocols.map((p) => {
      const x = f.byProtocol[p]
      return `| ${p} | ${x.clients} | ${x.churned} | ${x.dropped} | ${x.received} | ${x.repeats} | ${x.lost} | ${x.duplicates} | ${x.outOfOrder} | ${x.foreign} |`
    }),
    `history: ${f.history.missing} acknowledged missing, ${f.history.repeated} stored twice, ${f.history.unacknowledged} stored but never acknowledged`,
    `longest stall per conversation (s): all sends max ${s(st.all.max)}, p99 ${
      s(st.all.p99)
    }; around node kills/rejoins `
    + `max ${s(st.node.max)}, p99 ${s(st.node.p99)} (${st.node.sends} sends); around the PostgreSQL restart max `
    + `${s(st.postgres.max)}, p99 ${s(st.postgres.p99)} (${st.postgres.sends} sends); otherwise max ${
      s(st.quiet.max)
    }, `
    + `p99 ${s(st.quiet.p99)} (${st.quiet.sends} sends)`,
    `longest send per fault: ${st.perFault.map((x) => `${x.label}: ${s(x.longest)} s`).join("; ")}`,
    `longest wait after a killed node was back: max ${s(Math.max(0, ...st.afterRejoin.map((x) => x.longest)))} s (${
      st.afterRejoin.map((x) => `node ${x.node} up at ${x.up.toFixed(0)} s: ${s(x.longest)}`).join("; ")
    })`,
    ...[...run.sends].sort((a, b) => (b.acked - b.started) - (a.acked - a.started)).slice(0, 5).map((x) =>
      `slow send ${x.id} (conversation ${x.conversation}): ${s(x.started)} → ${s(x.acked)} s, attempts: `
      + x.failed.map((a) => `${a.failure} from ${a.node} at ${s(a.at)}`).join("; ")
    ),
    `cores busy (of ${Os.cpus().length}): machine ${cpu("machine")}; nodes ${cpu("nodes")}; PostgreSQL ${
      cpu("postgres")
    }; `
    + `driver ${cpu("driver")}; load average max ${s(Math.max(0, ...run.cpu.map((c) => c.load1)))}`,
    ...f.examples,
    clean(f) && run.unsettled === undefined ? "PASS" : "FAIL"
  ]
}

export const resultsHeader = [
  "| date (UTC) | s | clients ws / sse / poll | conversations | sends acked (/s) | kills, PG restarts | lost ws / sse / poll | dup after dedupe | out of order | raw repeats ws / sse / poll | history | longest stall s: max (node / PG / quiet) | p99 over conversations s (node / PG / quiet) | cores busy: machine mean / max; nodes, PG, driver mean |",
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
]

/** One row of the "Chaos" table in bench/RESULTS.md. */
export const resultsRow = (run: ChaosRun, date: Date) => {
  const st = stalls(run)
  const f = run.findings
  const each = (k: "lost" | "repeats") => protocols.map((p) => f.byProtocol[p][k]).join(" / ")
  const sum = (k: "duplicates" | "outOfOrder") => protocols.reduce((n, p) => n + f.byProtocol[p][k], 0)
  const h = f.history
  const mean = (k: "machine" | "nodes" | "driver" | "postgres") => s(cpuSummary(run.cpu, k).mean)
  return `| ${date.toISOString().slice(0, 16).replace("T", " ")} | ${run.options.seconds} | ${run.protocols.ws} / `
    + `${run.protocols.sse} / ${run.protocols.poll} | ${run.options.conversations} | ${run.sends.length} `
    + `(${(run.sends.length / run.options.seconds).toFixed(0)}) | ${
      run.events.filter((e) => e.what === "kill").length
    }, `
    + `${run.events.filter((e) => e.what === "pg-stop").length} | ${each("lost")} | ${sum("duplicates")} | `
    + `${sum("outOfOrder")} | ${each("repeats")} | `
    + `${
      h.missing === 0 && h.repeated === 0 && h.unacknowledged === 0
        ? "every acked MsgId once"
        : `${h.missing} missing, ${h.repeated} repeated, ${h.unacknowledged} unacked`
    } | `
    + `${s(st.all.max)} (${s(st.node.max)} / ${s(st.postgres.max)} / ${s(st.quiet.max)}) | `
    + `${s(st.all.p99)} (${s(st.node.p99)} / ${s(st.postgres.p99)} / ${s(st.quiet.p99)}) | `
    + `${mean("machine")} / ${s(cpuSummary(run.cpu, "machine").max)}; ${mean("nodes")}, ${mean("postgres")}, ${
      mean("driver")
    } |`
}
