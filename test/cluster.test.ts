/**
 * Scale-out with real processes on loopback: nodes sharing one PostgreSQL database through Effect
 * cluster's runner transport. Clients on different nodes converse over all three protocols; a node
 * killed with SIGKILL during a send burst loses no acknowledged message; a node joins under load;
 * a node stopped with SIGTERM tells its clients to reconnect and hands its shards over.
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import type { MsgData } from "../src/domain/Conversation.ts"
import { follow, settled, startCluster, type TestCluster } from "./support/cluster.ts"
import { connectWs, dedupe, type Protocol, sleep } from "./support/push.ts"

// Each test's nodes stop when it ends: idle nodes still refresh their shard locks and report,
// and a dozen of them left running would load the two cores the next test measures on.
const clusters: Array<TestCluster> = []
afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.stop()))
})

const start = async (count: number, env: Record<string, string> = {}) => {
  const cluster = await startCluster(count, env)
  clusters.push(cluster)
  await settled(cluster, count)
  return cluster
}

interface World {
  readonly sessions: Array<string>
  readonly tokens: Array<string>
  readonly conversations: Array<{ readonly id: string; readonly members: ReadonlyArray<number> }>
}

/**
 * Sessions and conversations of three members each, created through every node in turn;
 * conversation c has sessions c·stride, c·stride+1 and c·stride+2 (modulo `sessions`).
 */
const world = async (cluster: TestCluster, sessions: number, conversations: number, stride = 1): Promise<World> => {
  const tag = crypto.randomUUID().slice(0, 6)
  const names = Array.from({ length: sessions }, (_, i) => `c-${tag}-${i}`)
  const nodes = cluster.live()
  const tokens = await Promise.all(names.map((s, i) => nodes[i % nodes.length].token(s, 1)))
  const convs = []
  for (let c = 0; c < conversations; c++) {
    const members = [0, 1, 2].map((m) => (c * stride + m) % sessions)
    const r = await nodes[c % nodes.length].post("/inner/create_conversation", {
      sessions: members.map((m) => names[m])
    })
    assert.strictEqual(r.body.code, 0)
    convs.push({ id: r.body.data.ConversationId as string, members })
  }
  return { sessions: names, tokens, conversations: convs }
}

/**
 * Sends `content` into a conversation through a live node, retrying on other nodes with the same
 * client_msg_id until it is acknowledged (a node may die mid-request). Returns the MsgId.
 */
const sendSurely = async (
  cluster: TestCluster,
  turn: number,
  token: string,
  conversationId: string,
  content: string
) => {
  const deadline = Date.now() + 60_000
  for (let attempt = 0;; attempt++) {
    const live = cluster.live()
    const node = live[(turn + attempt) % live.length]
    try {
      const r = await node.raw("/send_msg", {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ conversation_id: conversationId, content, client_msg_id: content }),
        signal: AbortSignal.timeout(20_000)
      })
      if (r.body?.code === 0) return r.body.data.MsgID as string
    } catch {
      // the node went away mid-request: the same client_msg_id on another node cannot duplicate it
    }
    if (Date.now() > deadline) throw new Error(`send of ${content} not acknowledged within 60 s`)
    await sleep(100)
  }
}

/**
 * One sender per conversation (its members in turn) until `stop`, each send acknowledged before the
 * next, `pauseMs` apart; `sent` sees each acknowledged send's conversation and start time. `stop`
 * returns the acknowledged MsgIds per conversation, in order.
 */
const steadySenders = (
  cluster: TestCluster,
  w: World,
  tag: string,
  pauseMs: number,
  sent: (conversation: string, started: number) => void
) => {
  let running = true
  const acked = new Map<string, Array<string>>()
  const done = Promise.all(w.conversations.map(async (c, k) => {
    const ids: Array<string> = []
    acked.set(c.id, ids)
    for (let i = 0; running; i++) {
      const started = Date.now()
      ids.push(await sendSurely(cluster, k + i, w.tokens[c.members[i % c.members.length]], c.id, `${tag}-${k}-${i}`))
      sent(c.id, started)
      await sleep(pauseMs)
    }
  }))
  return {
    stop: async () => {
      running = false
      await done
      return acked
    }
  }
}

/**
 * 8 s of sends, one sender per conversation, each send acknowledged before its conversation's
 * next one, so acknowledgement order is each conversation's order. `onTurn` runs before each send
 * (to kill or add a node mid-burst). Returns the acknowledged MsgIds per conversation.
 */
const burst = async (cluster: TestCluster, w: World, tag: string, onTurn: (turn: number) => void) => {
  const acked = new Map<string, Array<string>>()
  let n = 0
  const ends = Date.now() + 8_000
  await Promise.all(w.conversations.map(async (c, k) => {
    const ids: Array<string> = []
    acked.set(c.id, ids)
    while (Date.now() < ends) {
      const turn = n++
      onTurn(turn)
      ids.push(await sendSurely(cluster, turn, w.tokens[c.members[turn % 3]], c.id, `${tag}-${k}-${turn}`))
      await sleep(20)
    }
  }))
  return acked
}

/** Every client holds every acknowledged message of its conversations once (after dedupe), in order. */
const expectDelivered = async (
  w: World,
  acked: Map<string, Array<string>>,
  clients: Array<{ readonly session: number; readonly messages: Array<MsgData> }>
) => {
  const deadline = Date.now() + 40_000
  for (const client of clients) {
    const mine = w.conversations.filter((c) => c.members.includes(client.session))
    const wanted = mine.reduce((n, c) => n + (acked.get(c.id)?.length ?? 0), 0)
    while (dedupe(client.messages).filter((m) => acked.get(m.ConversationID)?.includes(m.MsgId)).length < wanted) {
      if (Date.now() > deadline) break
      await sleep(100)
    }
    const got = dedupe(client.messages)
    for (const c of mine) {
      const ids = got.filter((m) => m.ConversationID === c.id).map((m) => m.MsgId)
      assert.deepStrictEqual(ids, acked.get(c.id) ?? [], `session ${client.session}, conversation ${c.id}`)
    }
  }
}

describe("cluster", () => {
  it("a burst of large messages crosses nodes in bounded relays: all stored once, all delivered", {
    timeout: 120_000
  }, async () => {
    const cluster = await start(3)
    const w = await world(cluster, 3, 3)
    const clients = [0, 1, 2].map((i) => ({ session: i, ...follow("ws", cluster, w.tokens[i], i) }))
    await sleep(2500) // every node has reported its shards: relays carry the burst
    const c = w.conversations[0]
    const big = "x".repeat(60_000)
    // Far more than one cluster frame may carry (16 MB) if it all went in one relay.
    const answers = await Promise.all(Array.from({ length: 300 }, (_, n) =>
      cluster.nodes[n % 3].post(
        "/send_msg",
        { conversation_id: c.id, content: `${n}:${big}`, client_msg_id: `big-${n}` },
        w.tokens[c.members[n % 3]]
      )))
    for (const a of answers) assert.strictEqual(a.body.code, 0, JSON.stringify(a.body).slice(0, 300))
    const ids = answers.map((a) => a.body.data.MsgID as string).sort()
    assert.strictEqual(new Set(ids).size, 300)
    await expectDelivered(w, new Map([[c.id, ids]]), clients)
    const view = (await cluster.nodes[0].raw("/inner/cluster", { method: "GET" })).body.data
    for (const node of view.Nodes) assert.isAtLeast(node.Relays.Carried, node.Relays.Sent)
    for (const client of clients) await client.stop()
  })

  it("clients on different nodes exchange messages over ws, sse and poll", { timeout: 120_000 }, async () => {
    const cluster = await start(3)
    const w = await world(cluster, 3, 9)
    const protocols: Array<Protocol> = ["ws", "sse", "poll"]
    // Session i listens on node i over protocols[i], so every delivery crosses nodes somewhere.
    const clients = protocols.map((p, i) => ({ session: i, ...follow(p, cluster, w.tokens[i], i) }))
    await sleep(1000)
    const acked = new Map<string, Array<string>>()
    for (let n = 0; n < 45; n++) {
      const c = w.conversations[n % w.conversations.length]
      const from = c.members[n % 3]
      const id = await sendSurely(cluster, n, w.tokens[from], c.id, `x-${n}`)
      acked.set(c.id, [...(acked.get(c.id) ?? []), id])
    }
    await expectDelivered(w, acked, clients)
    // Cross-node traffic went through batched relays (NodeOutbox), as the nodes' reports show.
    let view = (await cluster.nodes[0].raw("/inner/cluster", { method: "GET" })).body.data
    const relays = (v: any) => v.Nodes.reduce((n: number, x: any) => n + x.Relays.Sent, 0)
    for (let i = 0; i < 50 && relays(view) === 0; i++) {
      await sleep(200)
      view = (await cluster.nodes[0].raw("/inner/cluster", { method: "GET" })).body.data
    }
    assert.isAbove(relays(view), 0)
    for (const node of view.Nodes) assert.isAtLeast(node.Relays.Carried, node.Relays.Sent)
    assert.strictEqual(view.Mode, "cluster")
    assert.strictEqual(view.Nodes.length, 3)
    assert.strictEqual(view.Nodes.reduce((n: number, x: any) => n + x.Shards, 0), view.ShardsPerGroup)
    for (const client of clients) {
      assert.strictEqual(client.reconnects(), 0)
      await client.stop()
    }
  })

  it(
    "SIGKILL of a node during a send burst loses no acknowledged message (ws, sse, poll)",
    { timeout: 180_000 },
    async () => {
      const cluster = await start(3)
      const w = await world(cluster, 6, 12)
      const protocols: Array<Protocol> = ["ws", "sse", "poll", "ws", "sse", "poll"]
      const clients = protocols.map((p, i) => ({ session: i, ...follow(p, cluster, w.tokens[i], i) }))
      await sleep(1000)
      let killed = false
      const acked = await burst(cluster, w, "k", (turn) => {
        if (!killed && turn >= 60) {
          killed = true
          void cluster.kill(cluster.nodes[2])
        }
      })
      assert.isTrue(killed)
      // Everything acknowledged is in history, in acknowledgement order.
      for (const c of w.conversations) {
        const ids = acked.get(c.id)!
        const r = await cluster.live()[0].post("/get_conversation_msg_by_range", {
          conversation_id: c.id,
          start_msg_id: ids[0],
          end_msg_id: ids[ids.length - 1]
        }, w.tokens[c.members[0]])
        assert.deepStrictEqual(r.body.data.Msg.map((m: MsgData) => m.MsgId), ids)
      }
      await expectDelivered(w, acked, clients)
      // Clients of the killed node moved and resumed.
      assert.isTrue(clients.some((c) => c.reconnects() > 0))
      for (const client of clients) await client.stop()
    }
  )

  it(
    "a node frozen for 8 s (SIGSTOP) under load: its connections miss nothing once it wakes (ws, sse, poll)",
    { timeout: 180_000 },
    async () => {
      const cluster = await start(3)
      const w = await world(cluster, 6, 12)
      const protocols: Array<Protocol> = ["ws", "sse", "poll", "sse", "poll", "ws"]
      // Sessions 2 and 5 listen on the node that freezes: pushes to it time out, so the mailboxes
      // elsewhere cut those connections off, and they must subscribe again and replay on waking.
      const clients = protocols.map((p, i) => ({ session: i, ...follow(p, cluster, w.tokens[i], i) }))
      await sleep(1000)
      const frozen = cluster.nodes[2]
      let thawed: Promise<void> | undefined
      const acked = await burst(cluster, w, "f", (turn) => {
        if (thawed === undefined && turn >= 40) {
          frozen.alive = false // senders and reconnecting clients stay away meanwhile
          process.kill(frozen.child.pid!, "SIGSTOP")
          thawed = sleep(8_000).then(async () => {
            process.kill(frozen.child.pid!, "SIGCONT")
            // Senders come back to it once it has caught up with the cluster: right after waking
            // it may for a moment still act on shards that moved (cluster/README.md, Known gaps).
            const deadline = Date.now() + 30_000
            while (Date.now() < deadline) {
              const view = await frozen.raw("/inner/cluster", { method: "GET" }).catch(() => undefined)
              const me = view?.body?.data?.Nodes?.find((n: any) => n.Url === frozen.url)
              if (me?.Alive && view?.body.data.Runners.filter((r: any) => r.Healthy).length === 3) break
              await sleep(250)
            }
            frozen.alive = true
          })
        }
      })
      await thawed
      assert.isDefined(thawed)
      await expectDelivered(w, acked, clients)
      for (const client of clients) await client.stop()
    }
  )

  it("a node joins under load and takes its share of shards (ws, sse, poll)", { timeout: 120_000 }, async () => {
    const cluster = await start(2)
    const w = await world(cluster, 4, 8)
    const protocols: Array<Protocol> = ["ws", "sse", "poll", "ws"]
    const clients = protocols.map((p, i) => ({ session: i, ...follow(p, cluster, w.tokens[i], i) }))
    await sleep(1000)
    let joined: Promise<unknown> | undefined
    const acked = await burst(cluster, w, "j", (turn) => {
      if (joined === undefined && turn >= 40) joined = cluster.addNode()
    })
    await joined
    await settled(cluster, 3)
    await expectDelivered(w, acked, clients)
    const view = (await cluster.nodes[2].raw("/inner/cluster", { method: "GET" })).body.data
    const newcomer = view.Nodes.find((x: any) => x.Url === cluster.nodes[2].url)
    assert.isTrue(newcomer.Shards > 0)
    for (const client of clients) await client.stop()
  })

  it(
    "a node joins while every session holds a push connection: no send waits out the 15 s entity termination timeout",
    { timeout: 120_000 },
    async () => {
      // Six shards per group: every shard that moves holds both conversations and mailboxes with a
      // live subscription, so a send meets a shard waiting for such a mailbox in every run.
      const cluster = await start(1, { QUICKIM_SHARDS_PER_GROUP: "6" })
      const w = await world(cluster, 24, 24)
      // A live subscription on every session's mailbox: the shards that move to the newcomer hold
      // mailboxes whose Subscribe never ends by itself.
      const clients = w.tokens.map((t, i) => ({ session: i, ...follow("ws", cluster, t, i) }))
      await sleep(1000)
      let longest = 0
      const senders = steadySenders(cluster, w, "s", 50, (_, started) => {
        longest = Math.max(longest, Date.now() - started)
      })
      await sleep(1000)
      await cluster.addNode()
      await settled(cluster, 2)
      // Sends go on long enough to overlap a hand-over that waits out the timeout.
      await sleep(20_000)
      const acked = await senders.stop()
      console.log(`while a node joined, the longest send took ${longest} ms`)
      // Waiting out the termination timeout held sends 15 s or more (16-17 s in bench/failover.ts).
      assert.isBelow(longest, 12_000)
      await expectDelivered(w, acked, clients)
      for (const client of clients) await client.stop()
    }
  )

  it("SIGTERM: clients are told to reconnect and the shards move to the others", { timeout: 120_000 }, async () => {
    const cluster = await start(3)
    const w = await world(cluster, 3, 6)
    const leaving = cluster.nodes[1]
    const direct = await connectWs(leaving.url, w.tokens[0])
    const clients = (["ws", "sse", "poll"] as Array<Protocol>).map((p, i) => ({
      session: i,
      ...follow(p, cluster, w.tokens[i], i)
    }))
    await sleep(1000)
    // Each client first holds a message (as an app does after loading history), so it has a cursor.
    const acked = new Map<string, Array<string>>()
    const send = async (n: number) => {
      const c = w.conversations[n % w.conversations.length]
      const id = await sendSurely(cluster, n, w.tokens[c.members[n % 3]], c.id, `t-${n}`)
      acked.set(c.id, [...(acked.get(c.id) ?? []), id])
    }
    for (let n = 0; n < 6; n++) await send(n)
    await expectDelivered(w, acked, clients)
    const exit = await cluster.kill(leaving, "SIGTERM")
    assert.strictEqual(exit, "SIGTERM")
    const closed = await direct.closed
    assert.strictEqual(closed.code, 1012)
    await settled(cluster, 2)
    // After the hand-over every conversation still takes messages, and everyone gets them.
    for (let n = 6; n < 30; n++) await send(n)
    await expectDelivered(w, acked, clients)
    for (const client of clients) await client.stop()
  })
})

describe("cluster graceful stop", () => {
  it(
    "SIGTERM of a node holding 36 push connections (ws, sse, poll) under traffic: it exits within 8 s, its clients move at once and miss nothing",
    { timeout: 180_000 },
    async () => {
      const cluster = await start(3)
      // 18 conversations over 36 sessions: every session is in one or two of them.
      const w = await world(cluster, 36, 18, 2)
      const leaving = cluster.nodes[1]
      const protocols: Array<Protocol> = ["ws", "sse", "poll"]
      // Every client starts on the node that stops (follow's `start` 1), then moves to the others.
      const clients = w.sessions.map((_, i) => ({ session: i, ...follow(protocols[i % 3], cluster, w.tokens[i], 1) }))
      // The node reports its connections every 2 s: wait until it counts them all (polls between requests aside).
      const deadline = Date.now() + 15_000
      for (;;) {
        const view = (await leaving.raw("/inner/cluster", { method: "GET" })).body.data
        const open = view.Nodes.find((n: any) => n.NodeId === view.Self).Connections
        if (open.ws >= 12 && open.sse >= 12 && open.ws + open.sse + open.poll >= 30) break
        if (Date.now() > deadline) assert.fail(`the node holds only ${JSON.stringify(open)}`)
        await sleep(250)
      }
      let stoppedAt = 0
      const firstAfterStop = new Map<string, number>()
      const senders = steadySenders(cluster, w, "g", 100, (conversation, started) => {
        if (stoppedAt > 0 && started >= stoppedAt && !firstAfterStop.has(conversation)) {
          firstAfterStop.set(conversation, Date.now() - stoppedAt)
        }
      })
      await sleep(2000)
      stoppedAt = Date.now()
      const exited = cluster.kill(leaving, "SIGTERM").then((exit) => ({ exit, ms: Date.now() - stoppedAt }))
      // Every client's connection ends and it connects to another node.
      let movedMs = -1
      while (movedMs < 0 && Date.now() - stoppedAt < 30_000) {
        if (clients.every((c) => c.reconnects() > 0)) movedMs = Date.now() - stoppedAt
        else await sleep(50)
      }
      const { exit, ms: exitMs } = await exited
      await sleep(4000)
      const acked = await senders.stop()
      const handOver = Math.max(...firstAfterStop.values())
      console.log(
        `SIGTERM with ${clients.length} push connections: exit after ${exitMs} ms (${exit}), every client `
          + `moved within ${movedMs} ms, every conversation took a send again within ${handOver} ms`
      )
      if (exitMs > 8_000) console.log(leaving.output().split("\n").slice(-60).join("\n"))
      // Correctness bounds, not a benchmark (the goal is 3 s): without ending its push connections
      // first the node waited out Effect's 20 s graceful shutdown timeout for them.
      assert.isBelow(exitMs, 8_000)
      assert.isAtLeast(movedMs, 0)
      assert.isBelow(movedMs, 8_000)
      assert.strictEqual(firstAfterStop.size, w.conversations.length)
      assert.isBelow(handOver, 8_000)
      await expectDelivered(w, acked, clients)
      for (const client of clients) await client.stop()
    }
  )
})
