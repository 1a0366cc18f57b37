/**
 * Several quick-im nodes as real processes on loopback, sharing one PostgreSQL database of their
 * own (a cluster must not see the runners of other tests), and push clients that move to another
 * node when theirs goes away, resuming by their last MsgId.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import type { MsgData } from "../../src/domain/Conversation.ts"
import { freePort, type NodeProcess, spawnServer } from "./process.ts"
import { databaseUrlOn, pgAdminUrl, sql } from "./postgres.ts"
import { connectSse, connectWs, type Protocol, sleep } from "./push.ts"
import { testDatabaseUrl } from "./server.ts"

export interface ClusterNode extends NodeProcess {
  readonly runnerPort: number
  alive: boolean
}

export interface TestCluster {
  readonly nodes: Array<ClusterNode>
  readonly databaseUrl: string
  readonly live: () => Array<ClusterNode>
  /** Starts another node, on `runnerPort` if given (a node coming back on its address). */
  readonly addNode: (runnerPort?: number) => Promise<ClusterNode>
  readonly kill: (node: ClusterNode, signal?: NodeJS.Signals) => Promise<number | string | null>
  readonly stop: () => Promise<void>
}

let clusters = 0

/**
 * `together`: the nodes start at the same moment (a cold start), not one after another.
 * `adminUrl`: the PostgreSQL server to create the cluster's database on (by default the run's).
 * `nodeDatabaseUrl`: the URL the nodes use for that database (a proxy in front of it).
 */
export const startCluster = async (
  count: number,
  env: Record<string, string> = {},
  options: {
    readonly together?: boolean
    readonly adminUrl?: string
    readonly nodeDatabaseUrl?: (url: string) => string
  } = {}
): Promise<TestCluster> => {
  const admin = options.adminUrl ?? pgAdminUrl()
  const name = `${testDatabaseUrl().replace(/.*\//, "")}_c${++clusters}`
  await sql(admin, `CREATE DATABASE ${name}`)
  const databaseUrl = databaseUrlOn(admin, name)
  const nodes: Array<ClusterNode> = []
  const addNode = async (port?: number) => {
    const runnerPort = port ?? await freePort()
    const server = await spawnServer({
      env: {
        DATABASE_URL: options.nodeDatabaseUrl?.(databaseUrl) ?? databaseUrl,
        QUICKIM_JWT_SECRET: "cluster-test-secret-cluster-test-secret",
        QUICKIM_RUNNER_HOST: "127.0.0.1",
        QUICKIM_RUNNER_PORT: String(runnerPort),
        QUICKIM_DB_POOL: "6",
        // Tests burst from few sessions and reconnect fast in failovers: per-session rates off (test/bounds.test.ts).
        QUICKIM_RATE_SENDS: "0",
        QUICKIM_RATE_CREATES: "0",
        QUICKIM_RATE_JOINS: "0",
        QUICKIM_RATE_CONNECTS: "0",
        QUICKIM_RATE_POLLS: "0",
        ...env
      }
    })
    const node: ClusterNode = Object.assign(server, { runnerPort, alive: true })
    nodes.push(node)
    return node
  }
  if (options.together === true) await Promise.all(Array.from({ length: count }, () => addNode()))
  else for (let i = 0; i < count; i++) await addNode()
  const kill = async (node: ClusterNode, signal: NodeJS.Signals = "SIGKILL") => {
    node.alive = false
    return node.stop(signal)
  }
  return {
    nodes,
    databaseUrl,
    live: () => nodes.filter((n) => n.alive),
    addNode,
    kill,
    stop: async () => {
      await Promise.all(nodes.filter((n) => n.alive).map((n) => kill(n, "SIGKILL")))
      // For a failure's post-mortem: each node's output in the directory QUICKIM_TEST_NODE_LOGS names.
      const logs = process.env.QUICKIM_TEST_NODE_LOGS
      if (logs) {
        Fs.mkdirSync(logs, { recursive: true })
        nodes.forEach((n, i) => Fs.writeFileSync(Path.join(logs, `${name}-node${i}.log`), n.output()))
      }
      await sql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    }
  }
}

/** Waits until every live node's cluster view shows `runners` healthy runners holding all shards. */
export const settled = async (
  cluster: { readonly live: () => ReadonlyArray<Pick<NodeProcess, "raw">> },
  runners: number,
  timeoutMs = 30_000
) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const views = await Promise.all(cluster.live().map((n) => n.raw("/inner/cluster", { method: "GET" })))
    const ok = views.every((v) => {
      const data = v.body?.data
      if (data === undefined) return false
      const alive = data.Nodes.filter((n: any) => n.Alive && n.Runner !== null)
      const shards = alive.reduce((sum: number, n: any) => sum + n.Shards, 0)
      return data.Runners.filter((r: any) => r.Healthy).length === runners && alive.length === runners
        && shards === data.ShardsPerGroup
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`cluster did not settle on ${runners} runners`)
    await sleep(250)
  }
}

/**
 * A push client that, when its connection ends, reconnects to the next live node with the last
 * MsgId it received. `messages` holds everything received, across connections. `nodes` is a
 * cluster, or any list of nodes (one node: it reconnects to that one).
 */
export const follow = (
  protocol: Protocol,
  nodes: { readonly live: () => ReadonlyArray<{ readonly url: string }> },
  token: string,
  start = 0
) => {
  const messages: Array<MsgData> = []
  let stopped = false
  let closeCurrent: () => void = () => {}
  let reconnects = 0
  let turn = start
  const next = () => {
    const live = nodes.live()
    return live.length === 0 ? undefined : live[turn++ % live.length].url
  }
  const done = (async () => {
    while (!stopped) {
      const url = next()
      if (url === undefined) break
      const cursor = messages.at(-1)?.MsgId
      try {
        if (protocol === "poll") {
          // One request at a time, each with the last MsgId received (as README asks of poll
          // clients); a request that cannot reach the node means it is gone: move on.
          const controller = new AbortController()
          closeCurrent = () => controller.abort()
          for (;;) {
            if (stopped) break
            const last = messages.at(-1)?.MsgId
            const c = last ? `&last_msg_id=${last}` : ""
            const res = await fetch(`${url}/notify?protoc=poll&token=${token}${c}`, { signal: controller.signal })
            if (res.status === 200) messages.push(await res.json())
            else {
              await res.body?.cancel()
              // A refusal (503 while the database is away) comes at once: wait before asking again.
              if (res.status !== 204) await sleep(200)
            }
          }
        } else {
          const client = protocol === "ws" ? await connectWs(url, token, cursor) : await connectSse(url, token, cursor)
          closeCurrent = client.close
          let seen = 0
          const pump = setInterval(() => {
            while (seen < client.messages.length) messages.push(client.messages[seen++])
          }, 5)
          await client.closed
          clearInterval(pump)
          while (seen < client.messages.length) messages.push(client.messages[seen++])
        }
      } catch {
        // the node went away or refused: try the next one
      }
      if (!stopped) {
        reconnects++
        await sleep(200)
      }
    }
  })()
  return {
    messages,
    reconnects: () => reconnects,
    stop: async () => {
      stopped = true
      closeCurrent()
      // A close handshake with a node under test can take long; the loop ends on its own.
      await Promise.race([done, sleep(2000)])
    }
  }
}
