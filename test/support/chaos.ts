/**
 * The chaos harness behind `npm run chaos` and test/chaos.test.ts: a PostgreSQL server of its own,
 * three quick-im nodes as real processes, push clients over ws, sse and poll that close and resume
 * at random, and one sender per conversation; meanwhile a node is killed with SIGKILL at every
 * fault slot (round robin, restarted on its runner address a few seconds later) and PostgreSQL is
 * restarted once, mid-run. Afterwards it checks what every client and the history hold
 * (test/support/chaosCheck.ts).
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { makeHttpClient } from "../../bench/http-client.ts"
import { type ChaosClient, chaosClient } from "./chaosClient.ts"
import { type ChaosFindings, check } from "./chaosCheck.ts"
import { settled } from "./cluster.ts"
import { type CpuSample, cpuSampler } from "./cpuSampler.ts"
import { databaseUrlOn, sql, startPostgres } from "./postgres.ts"
import { freePort, type NodeProcess, spawnServer } from "./process.ts"
import { type Protocol, sleep } from "./push.ts"

export interface ChaosOptions {
  readonly clients: number
  readonly conversations: number
  /** Sends per second over all conversations, while faults run. */
  readonly rate: number
  /** How long faults and sends run. */
  readonly seconds: number
  /** A fault every this many seconds: a SIGKILL, or at the slot nearest mid-run the PostgreSQL restart. */
  readonly faultEverySeconds: number
  /** How long a killed node stays down before it starts again. */
  readonly nodeDownSeconds: number
  readonly postgresDownSeconds: number
  /** All nodes up, no faults, no sends, before checking. */
  readonly settleSeconds: number
  /** Mean time between a client's random closes. */
  readonly churnMeanSeconds: number
  readonly seed: number
  /** Where each node's output goes at the end (one file per process), if anywhere. */
  readonly logs?: string
  readonly progress: (line: string) => void
}

/** What happened when, in seconds since the faults started. */
export interface FaultEvent {
  readonly at: number
  readonly what: "kill" | "up" | "pg-stop" | "pg-start" | "settled"
  readonly node?: number
}

/** One acknowledged send: first attempt and acknowledgement in seconds since the faults started. */
export interface Send {
  readonly conversation: number
  readonly id: string
  readonly started: number
  readonly acked: number
  readonly attempts: number
  /** The node that acknowledged it. */
  readonly node: string
  /** Each failed attempt: when it ended, which node slot took it, and why it failed. */
  readonly failed: ReadonlyArray<{ readonly at: number; readonly node: string; readonly failure: string }>
}

export interface ChaosRun {
  readonly options: ChaosOptions
  readonly protocols: Record<Protocol, number>
  readonly events: ReadonlyArray<FaultEvent>
  readonly sends: ReadonlyArray<Send>
  /** Failed attempts by cause: `code N`, `status N`, `network`, `timeout`. */
  readonly failures: Record<string, number>
  /** Sends given up after the harness's own deadline (never acknowledged: not counted as lost). */
  readonly abandoned: number
  readonly cpu: ReadonlyArray<CpuSample>
  readonly findings: ChaosFindings
  /** Set when the cluster did not come back to three settled nodes after the faults. */
  readonly unsettled?: string
  /** Warnings and errors the nodes logged, by message, over every process of the run. */
  readonly logged: Record<string, number>
}

const SECRET = "chaos-harness-secret-chaos-harness-secret"
/** A send is retried for this long at most; past it the harness reports it rather than wait forever. */
const SEND_GIVE_UP_MS = 120_000
const ATTEMPT_TIMEOUT_MS = 20_000

/** A small deterministic PRNG, so that a run's membership and timings can be replayed. */
const rng = (seed: number) => () => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x7fffffff
}

interface Node {
  process: NodeProcess
  http: ReturnType<typeof makeHttpClient>
  alive: boolean
  readonly runnerPort: number
  /** Slot and incarnation, as in the log file names: `node1-2` is slot 1's third process. */
  readonly name: string
}

export const runChaos = async (options: ChaosOptions): Promise<ChaosRun> => {
  const random = rng(options.seed)
  const say = options.progress
  const pg = await startPostgres()
  const databaseUrl = databaseUrlOn(pg.adminUrl, "chaos")
  await sql(pg.adminUrl, "CREATE DATABASE chaos")
  const outputs: Array<{ readonly name: string; readonly output: () => string }> = []
  const nodes: Array<Node> = []
  const live = () => nodes.filter((n) => n.alive)
  const spawn = async (slot: number, runnerPort: number) => {
    const process_ = await spawnServer({
      env: {
        DATABASE_URL: databaseUrl,
        QUICKIM_JWT_SECRET: SECRET,
        QUICKIM_RUNNER_HOST: "127.0.0.1",
        QUICKIM_RUNNER_PORT: String(runnerPort),
        QUICKIM_LOG_FORMAT: "json",
        // A thousand sessions reconnecting after every kill from one address: per-session rates
        // off, as in the cluster tests (loopback is exempt from the per-address ones already).
        QUICKIM_RATE_SENDS: "0",
        QUICKIM_RATE_CREATES: "0",
        QUICKIM_RATE_JOINS: "0",
        QUICKIM_RATE_CONNECTS: "0",
        QUICKIM_RATE_POLLS: "0"
      }
    })
    const name = `node${slot}-${outputs.filter((o) => o.name.startsWith(`node${slot}-`)).length}`
    outputs.push({ name, output: process_.output })
    nodes[slot] = { process: process_, http: makeHttpClient(process_.url), alive: true, runnerPort, name }
  }
  const cluster = { live: () => live().map((n) => n.process) }
  let t0 = performance.now()
  const now = () => (performance.now() - t0) / 1000
  const events: Array<FaultEvent> = []
  const event = (what: FaultEvent["what"], node?: number) => {
    events.push({ at: now(), what, ...(node === undefined ? {} : { node }) })
    say(`${now().toFixed(1)} s: ${what}${node === undefined ? "" : ` node ${node}`}`)
  }
  const clients: Array<ChaosClient> = []
  const sends: Array<Send> = []
  let findings: ChaosFindings | undefined
  let sampler: ReturnType<typeof cpuSampler> | undefined
  try {
    for (let slot = 0; slot < 3; slot++) await spawn(slot, await freePort())
    await settled(cluster, 3, 60_000)
    say(`3 nodes settled; PostgreSQL on port ${pg.port}`)

    // Sessions and conversations of 3 to 5 members: walking a shuffled list of the sessions round
    // and round puts every session in at least one conversation once there are enough members.
    const tag = Date.now().toString(36)
    const sessions = Array.from({ length: options.clients }, (_, i) => `chaos-${tag}-${i}`)
    const tokens = await inBatches(sessions, 50, (s, i) => nodes[i % 3].process.token(s, 1))
    const order = sessions.map((_, i) => i).sort(() => random() - 0.5)
    let walk = 0
    const members = Array.from({ length: options.conversations }, (_, c) => {
      const size = 3 + (c % 3)
      return Array.from({ length: size }, () => order[walk++ % order.length])
        .filter((m, i, all) => all.indexOf(m) === i)
    })
    const conversations = await inBatches(members, 20, async (m, c) => {
      const r = await nodes[c % 3].process.post("/inner/create_conversation", { sessions: m.map((i) => sessions[i]) })
      if (r.body?.code !== 0) throw new Error(`create_conversation: ${JSON.stringify(r.body)}`)
      return r.body.data.ConversationId as string
    })

    const failures: Record<string, number> = {}
    let abandoned = 0
    let turn = 0
    /** Sends until acknowledged, each attempt through the next live node, always with the same client_msg_id. */
    const sendSurely = async (c: number, content: string) => {
      const from = members[c][Math.floor(random() * members[c].length)]
      const started = now()
      const giveUp = performance.now() + SEND_GIVE_UP_MS
      const failed: Array<Send["failed"][number]> = []
      for (let attempt = 1;; attempt++) {
        const targets = live()
        const node = targets[turn++ % Math.max(1, targets.length)]
        let failure = "no node"
        if (node !== undefined) {
          const answer = await Promise.race([
            node.http.post(
              "/send_msg",
              { conversation_id: conversations[c], content, client_msg_id: content },
              tokens[from]
            ).catch(() => "network" as const),
            sleep(ATTEMPT_TIMEOUT_MS).then(() => "timeout" as const)
          ])
          if (typeof answer === "string") failure = answer
          else {
            let body: { code?: number; data?: { MsgID?: string } } | undefined
            try {
              body = JSON.parse(answer.body)
            } catch {
              // cut off mid-answer by a dying node: retried like any failure
            }
            if (body?.code === 0 && body.data?.MsgID !== undefined) {
              const send = {
                conversation: c,
                id: body.data.MsgID,
                started,
                acked: now(),
                attempts: attempt,
                node: node.name,
                failed
              }
              sends.push(send)
              return send
            }
            failure = body?.code === undefined ? `status ${answer.status}` : `code ${body.code}`
          }
        }
        failures[failure] = (failures[failure] ?? 0) + 1
        failed.push({ at: now(), node: node?.name ?? "none", failure })
        if (performance.now() > giveUp) {
          abandoned++
          return undefined
        }
        await sleep(100 + random() * 100)
      }
    }

    // Every conversation starts with one message, and each client with its conversations' history
    // (as an app loads it before connecting): its cursor covers everything sent after.
    const seeds = await inBatches(conversations, 20, (_, c) => sendSurely(c, `seed-${c}`))
    const protocols: Array<Protocol> = ["ws", "sse", "poll"]
    for (let i = 0; i < sessions.length; i++) {
      const history = members.flatMap((m, c) => m.includes(i) && seeds[c] ? [seeds[c]] : [])
        .sort((a, b) => (a.id < b.id ? -1 : 1))
        .map((s) => ({ id: s.id, conversation: conversations[s.conversation] }))
      clients.push(chaosClient({
        protocol: protocols[i % 3],
        token: tokens[i],
        live: () => live().map((n) => n.process.url),
        random,
        now,
        churnMeanMs: options.churnMeanSeconds * 1000,
        history
      }))
    }
    for (const deadline = performance.now() + 60_000; performance.now() < deadline; await sleep(250)) {
      if (clients.every((c) => c.protocol === "poll" || c.connected())) break
    }
    say(`${clients.length} clients connecting or connected; sends and faults start`)

    sends.length = 0 // the seeds are history, not part of the run's figures
    t0 = performance.now()
    sampler = cpuSampler({
      nodePids: () => live().flatMap((n) => n.process.child.pid ?? []),
      postgresPort: pg.port
    })
    const endsAt = options.seconds
    const senders = conversations.map(async (_, c) => {
      const meanMs = (options.conversations / options.rate) * 1000
      for (let i = 0;; i++) {
        await sleep(meanMs * (0.5 + random()))
        if (now() >= endsAt) return
        await sendSurely(c, `m-${c}-${i}`)
      }
    })
    const progress = setInterval(() => {
      const s = sampler!.samples.at(-1)
      say(
        `${now().toFixed(0)} s: ${sends.length} acked, ${live().length} nodes up`
          + (s
            ? `, cores busy ${s.machine.toFixed(2)} (nodes ${s.nodes.toFixed(2)}, driver ${s.driver.toFixed(2)}, `
              + `postgres ${s.postgres.toFixed(2)}), load ${s.load1.toFixed(1)}`
            : "")
      )
    }, 10_000)

    // Faults: a SIGKILL per slot, round robin, each node back on its runner address before the next
    // kill; the slot nearest mid-run restarts PostgreSQL instead, so each stall has one cause.
    const slots: Array<number> = []
    for (let at = options.faultEverySeconds; at < options.seconds; at += options.faultEverySeconds) slots.push(at)
    const pgSlot = slots.reduce(
      (best, at) => Math.abs(at - options.seconds / 2) < Math.abs(best - options.seconds / 2) ? at : best,
      slots[0]
    )
    let kills = 0
    for (const at of slots) {
      await sleep((at - now()) * 1000)
      if (at === pgSlot) {
        event("pg-stop")
        await pg.stop()
        await sleep(options.postgresDownSeconds * 1000)
        await pg.start()
        event("pg-start")
        continue
      }
      const slot = kills++ % 3
      const victim = nodes[slot]
      victim.alive = false
      event("kill", slot)
      await victim.process.stop("SIGKILL")
      await sleep(options.nodeDownSeconds * 1000)
      for (let attempt = 1;; attempt++) {
        try {
          await spawn(slot, victim.runnerPort)
          break
        } catch (e) {
          say(`node ${slot} did not start again (attempt ${attempt}): ${String(e).slice(0, 2000)}`)
          if (attempt === 3) throw e
        }
      }
      event("up", slot)
    }
    await Promise.all(senders)
    clearInterval(progress)
    for (const client of clients) client.calm()
    let unsettled: string | undefined
    try {
      await settled(cluster, 3, 60_000)
      event("settled")
    } catch (e) {
      unsettled = String(e)
      say(`after the faults: ${unsettled}`)
    }
    say(`${sends.length} sends acknowledged; settling for ${options.settleSeconds} s`)
    await sleep(options.settleSeconds * 1000)
    sampler.stop()

    // Clients that still lack something get until this deadline: what they lack then is lost.
    const acked = new Map<string, Array<string>>()
    for (const s of [...seeds.flatMap((s) => s ? [s] : []), ...sends]) {
      const list = acked.get(conversations[s.conversation]) ?? []
      list.push(s.id)
      acked.set(conversations[s.conversation], list)
    }
    const expected = clients.map((_, i) =>
      members.flatMap((m, c) => (m.includes(i) ? acked.get(conversations[c]) ?? [] : []))
    )
    for (const deadline = performance.now() + 30_000; performance.now() < deadline; await sleep(500)) {
      if (clients.every((client, i) => new Set(client.ids).size >= expected[i].length)) break
    }
    await Promise.all(clients.map((c) => c.stop()))

    const history = await sql(databaseUrl, "SELECT conversation_id, msg_id, client_msg_id FROM messages")
    findings = check({
      conversations,
      members,
      acked,
      clients,
      history: history === "" ? [] : history.split("\n").map((line) => line.split("|") as [string, string, string])
    })
    const logged: Record<string, number> = {}
    for (const o of outputs) {
      for (const line of o.output().split("\n")) {
        const m = /^\{"message":"([^"]{0,80})[^"]*","level":"(WARN|ERROR|FATAL)"/.exec(line)
        if (m !== null) logged[`${m[2]} ${m[1]}`] = (logged[`${m[2]} ${m[1]}`] ?? 0) + 1
      }
    }
    return {
      options,
      logged,
      protocols: { ws: count(clients, "ws"), sse: count(clients, "sse"), poll: count(clients, "poll") },
      events,
      sends,
      failures,
      abandoned,
      cpu: sampler.samples,
      findings,
      ...(unsettled === undefined ? {} : { unsettled })
    }
  } finally {
    sampler?.stop()
    await Promise.all(clients.map((c) => c.stop()))
    await Promise.all(live().map((n) => n.process.stop("SIGKILL")))
    if (options.logs !== undefined) {
      Fs.mkdirSync(options.logs, { recursive: true })
      for (const o of outputs) Fs.writeFileSync(Path.join(options.logs, `${o.name}.log`), o.output())
      Fs.writeFileSync(Path.join(options.logs, "postgres.log"), pg.log())
      Fs.writeFileSync(
        Path.join(options.logs, "run.json"),
        JSON.stringify({ startedAt: new Date(Date.now() - now() * 1000).toISOString(), events, sends }, null, 1)
      )
      for (const i of findings?.failing ?? []) {
        Fs.writeFileSync(Path.join(options.logs, `client${i}.trace`), clients[i].trace.join("\n"))
      }
    }
    await pg.dispose()
  }
}

const count = (clients: ReadonlyArray<ChaosClient>, protocol: Protocol) =>
  clients.filter((c) => c.protocol === protocol).length

/** Runs `f` over `items`, `size` at a time, keeping the results in order. */
const inBatches = async <A, B>(items: ReadonlyArray<A>, size: number, f: (a: A, i: number) => Promise<B>) => {
  const results: Array<B> = []
  for (let i = 0; i < items.length; i += size) {
    results.push(...await Promise.all(items.slice(i, i + size).map((a, j) => f(a, i + j))))
  }
  return results
}
