/**
 * Runs an N-node quick-im cluster on this machine against one PostgreSQL database:
 *
 *   npm run cluster -- --nodes 3 [--database-url URL] [--http-port 8080] [--runner-port 34431]
 *
 * Node i (0-based) serves HTTP on http-port + i and its cluster runner on runner-port + i, all on
 * 127.0.0.1. Every node gets the same QUICKIM_JWT_SECRET (yours, or one generated for this run),
 * so a token from any node works on all. Output is prefixed with the node's number; Ctrl-C stops
 * every node gracefully (SIGTERM: shards handed over, clients told to reconnect).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as Path from "node:path"
import { parseArgs } from "node:util"
import { denoV8Flags } from "../src/RuntimeFlags.ts"

const root = Path.resolve(import.meta.dirname ?? ".", "..")
const { values } = parseArgs({
  options: {
    nodes: { type: "string", default: "3" },
    "database-url": { type: "string" },
    "http-port": { type: "string", default: "8080" },
    "runner-port": { type: "string", default: "34431" },
    help: { type: "boolean", default: false }
  }
})
if (values.help) {
  console.log("usage: npm run cluster -- --nodes N [--database-url URL] [--http-port P] [--runner-port R]")
  process.exit(0)
}
const count = Number(values.nodes)
if (!Number.isInteger(count) || count < 1) {
  console.error(`--nodes must be a positive integer (got ${values.nodes})`)
  process.exit(2)
}
const databaseUrl = values["database-url"] ?? process.env.DATABASE_URL
  ?? "postgresql://postgres@127.0.0.1:5432/postgres"
const secret = process.env.QUICKIM_JWT_SECRET ?? randomBytes(32).toString("base64url")
const httpPort = Number(values["http-port"])
const runnerPort = Number(values["runner-port"])
const deno = Path.join(root, "node_modules/.bin/deno")

const children: Array<ChildProcess> = []
let stopping = false
const stopAll = () => {
  if (stopping) return
  stopping = true
  console.log("stopping every node (SIGTERM)…")
  for (const child of children) child.kill("SIGTERM")
}
process.on("SIGINT", stopAll)
process.on("SIGTERM", stopAll)

const prefix = (i: number, stream: NodeJS.ReadableStream, out: NodeJS.WritableStream) => {
  let rest = ""
  stream.on("data", (chunk: Buffer) => {
    const lines = (rest + chunk.toString()).split("\n")
    rest = lines.pop() ?? ""
    for (const line of lines) out.write(`[node ${i}] ${line}\n`)
  })
}

for (let i = 0; i < count; i++) {
  const child = spawn(deno, ["run", "-A", denoV8Flags, Path.join(root, "src/main.ts")], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      PORT: String(httpPort + i),
      HOST: process.env.HOST ?? "127.0.0.1",
      QUICKIM_RUNNER_HOST: process.env.QUICKIM_RUNNER_HOST ?? "127.0.0.1",
      QUICKIM_RUNNER_PORT: String(runnerPort + i),
      QUICKIM_JWT_SECRET: secret
    },
    stdio: ["ignore", "pipe", "pipe"]
  })
  prefix(i, child.stdout!, process.stdout)
  prefix(i, child.stderr!, process.stderr)
  child.on("exit", (code, signal) => {
    console.log(`[node ${i}] exited (${signal ?? code})`)
    if (children.every((c) => c.exitCode !== null || c.signalCode !== null)) process.exit(0)
  })
  children.push(child)
}

const urls = children.map((_, i) => `http://127.0.0.1:${httpPort + i}`)
const deadline = Date.now() + 60_000
for (const url of urls) {
  while (!stopping) {
    const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false)
    if (ok) break
    if (Date.now() > deadline) {
      console.error(`${url} did not answer /healthz within 60 s`)
      stopAll()
      break
    }
    await new Promise((r) => setTimeout(r, 250))
  }
}
if (!stopping) {
  console.log(`\nquick-im cluster of ${count} node(s) on ${databaseUrl.replace(/\/\/[^@]*@/, "//…@")}:`)
  urls.forEach((url, i) => console.log(`  node ${i}: ${url}  (runner 127.0.0.1:${runnerPort + i})`))
  console.log(`\ncluster view: deno run -A src/main.ts cluster status --url ${urls[0]}`)
  if (process.env.QUICKIM_JWT_SECRET === undefined) {
    console.log("tokens: every node shares a JWT secret generated for this run (set QUICKIM_JWT_SECRET to keep one)")
  }
}
