/**
 * Group commit across conversations. Each Conversation entity still decides ids and sequence
 * alone and waits for its own commit; what it hands over while other commits are in flight is
 * written together with the other entities' batches, in one statement (one transaction, one WAL
 * flush). Measured on PostgreSQL, 200 two-member conversations, 64 senders, no receivers: 1,028 →
 * 1,159 sends/s, with far fewer WAL flushes; the rest of the send path's cost is CPU elsewhere.
 */
import { Deferred, Effect } from "effect"
import type { SqlClient, SqlError } from "effect/sql"
import type { MessageRow } from "./ConversationStore.ts"

interface Pending {
  readonly rows: ReadonlyArray<MessageRow>
  readonly done: Deferred.Deferred<void, SqlError.SqlError>
}

/**
 * `inFlightMax`: commits in flight at once; further batches wait and are merged. One is the default:
 * measured on PostgreSQL (pairs push benchmark), 1 against 4 in flight gave 3,904 → 4,055 sends/s on
 * one node and 1,963 → 2,392 on three (fewer, larger commits: PostgreSQL's CPU per send fell by
 * about a third), with lower latency too, since a commit's round trip is short next to the queue.
 */
export const makeCommitBatcher = (sql: SqlClient.SqlClient, inFlightMax: number) => {
  let queue: Array<Pending> = []
  let inFlight = 0

  // Messages and each conversation's last-message fields, as JSON decoded by the database: one
  // statement whatever the batch's size, so it is atomic without BEGIN/COMMIT round trips.
  const write = (batch: ReadonlyArray<Pending>) => {
    const rows = batch.flatMap((p) => p.rows)
    const lastByConversation = new Map<string, MessageRow>()
    for (const r of rows) lastByConversation.set(r.conversation_id, r)
    const lasts = [...lastByConversation.values()].map((r) => ({
      id: r.conversation_id,
      last_msg_id: r.msg_id,
      last_send_time: r.send_time,
      last_send_session: r.from_session,
      last_seq: r.seq
    }))
    return sql`WITH inserted AS (
        INSERT INTO messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content, client_msg_id)
        SELECT conversation_id, msg_id, seq, from_session, send_time, status, type, content, client_msg_id
        FROM jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) AS r(conversation_id text, msg_id text, seq bigint,
          from_session text, send_time text, status integer, type integer, content text, client_msg_id text)
        RETURNING 1)
      UPDATE conversations c SET last_msg_id = v.last_msg_id, last_send_time = v.last_send_time,
        last_send_session = v.last_send_session, last_seq = v.last_seq
      FROM jsonb_to_recordset(${JSON.stringify(lasts)}::jsonb) AS v(id text, last_msg_id text, last_send_time text,
        last_send_session text, last_seq bigint)
      WHERE c.id = v.id`
  }

  /** Writes `rows` (one conversation's, in order) durably; shares the statement with others waiting. */
  const append = (rows: ReadonlyArray<MessageRow>): Effect.Effect<void, SqlError.SqlError> =>
    Effect.gen(function* () {
      const done = yield* Deferred.make<void, SqlError.SqlError>()
      queue.push({ rows, done })
      // Whoever finds a free slot commits everything queued, then keeps going while work remains.
      yield* Effect.uninterruptible(Effect.gen(function* () {
        while (queue.length > 0 && inFlight < inFlightMax) {
          const batch = queue
          queue = []
          inFlight++
          const exit = yield* Effect.exit(write(batch))
          inFlight--
          for (const p of batch) Deferred.doneUnsafe(p.done, exit._tag === "Success" ? Effect.void : exit)
        }
      }))
      return yield* Deferred.await(done)
    })

  return { append }
}
