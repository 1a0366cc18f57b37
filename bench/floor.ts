/**
 * The persisting floor the push benchmark can compare against (BENCH_FLOOR=1): what a persisted
 * one-to-one send costs on this runtime with no framework and no checks. Plain node:http, `ws` and
 * `pg`, one database connection, and a group commit as quick-im's: sends that arrive while a commit
 * is in flight wait for the next, which writes them all in one statement (the messages, and each
 * conversation's last sequence number). Once it is committed each message is written to its
 * members' sockets and its sender is answered. It speaks the ceiling's protocol (bench/ceiling.ts)
 * plus the conversation: `POST /send` with `{to, conversation, message}`. Run as its own process
 * with DATABASE_URL set; it persists, so it is a floor for quick-im, which also authenticates,
 * bounds, orders and resumes.
 */
import * as Http from "node:http"
import pg from "pg"
import { clientSockets } from "./plain-clients.ts"

interface Pending {
  readonly conversation: string
  readonly seq: number
  readonly from: string
  readonly content: string
  readonly to: ReadonlyArray<string>
  readonly res: Http.ServerResponse
}

const port = Number(process.env.PORT ?? 8091)
const db = new pg.Client({ connectionString: process.env.DATABASE_URL })
await db.connect()
await db.query(`
  CREATE TABLE IF NOT EXISTS floor_conversations (id text PRIMARY KEY, last_seq bigint NOT NULL);
  CREATE TABLE IF NOT EXISTS floor_messages (
    conversation_id text NOT NULL, seq bigint NOT NULL, from_session text NOT NULL,
    send_time text NOT NULL, content text NOT NULL, PRIMARY KEY (conversation_id, seq)
  )`)
const commit = `
  WITH m AS (
    INSERT INTO floor_messages (conversation_id, seq, from_session, send_time, content)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
    RETURNING conversation_id, seq
  )
  INSERT INTO floor_conversations (id, last_seq) SELECT conversation_id, max(seq) FROM m GROUP BY conversation_id
  ON CONFLICT (id) DO UPDATE SET last_seq = EXCLUDED.last_seq`

const seqs = new Map<string, number>()
let pending: Array<Pending> = []
let committing = false

const flush = async () => {
  committing = true
  while (pending.length > 0) {
    const batch = pending
    pending = []
    const now = new Date().toISOString()
    await db.query(commit, [
      batch.map((p) => p.conversation),
      batch.map((p) => p.seq),
      batch.map((p) => p.from),
      batch.map(() => now),
      batch.map((p) => p.content)
    ])
    for (const p of batch) {
      const msgId = `${p.conversation}-${p.seq}`
      const frame = JSON.stringify({ MsgID: msgId, FromSession: p.from, Content: p.content, SendTime: now })
      for (const id of p.to) for (const ws of clients.get(id) ?? []) ws.send(frame)
      p.res.writeHead(200, { "content-type": "application/json" })
      p.res.end(`{"code":0,"data":{"MsgID":"${msgId}"}}`)
    }
  }
  committing = false
}

const server = Http.createServer((req, res) => {
  let body = ""
  req.on("data", (d) => (body += d))
  req.on("end", () => {
    const { to, conversation, message } = JSON.parse(body) as {
      to: Array<string>
      conversation: string
      message: { FromSession: string; Content: string }
    }
    const seq = (seqs.get(conversation) ?? 0) + 1
    seqs.set(conversation, seq)
    pending.push({ conversation, seq, from: message.FromSession, content: message.Content, to, res })
    if (committing) return
    committing = true
    setImmediate(() =>
      flush().catch((error) => {
        console.error(error)
        process.exit(1)
      })
    )
  })
})
const clients = clientSockets(server)
server.listen(port, "127.0.0.1", () => console.log(`floor listening on ${port}`))
// Exit by the runtime's own path (a Node CPU profile is written then).
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => process.exit(0))
