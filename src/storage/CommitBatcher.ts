/**
 * Group commit across conversations. Each Conversation entity still decides ids and sequence
 * alone and waits for its own commit; what it hands over while other commits are in flight is
 * written together with the other entities' batches, in one statement (one transaction, one WAL
 * flush). On PostgreSQL that raised send throughput and cut the WAL flushes (bench/RESULTS.md); the
 * rest of the send path's cost is CPU elsewhere.
 *
 * One conversation's bad rows never fail another's: a merged statement that fails is tried again
 * once per conversation, alone, and only what fails alone fails.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as SqlClient from "effect/sql/SqlClient"
import type * as SqlError from "effect/sql/SqlError"
import { causeIsUnreachable } from "./DatabaseHealth.ts"

/** One message as the messages table stores it (the store's rows, written by `append`). */
export interface MessageRow {
  readonly conversation_id: string
  readonly msg_id: string
  readonly seq: number
  readonly from_session: string
  readonly send_time: string
  readonly status: number
  readonly type: number
  readonly content: string
  readonly client_msg_id: string | null
}

/**
 * A member's read position moved forward (never back: a move to an older seq changes nothing), to
 * a known message, or to the last message at or before `anchor` (compared as an id).
 */
export type ReadMove =
  & { readonly conversation_id: string; readonly session_id: string }
  & ({ readonly seq: number; readonly msg_id: string } | { readonly anchor: string })

/** A read position the statement moved. */
export interface MovedRead {
  readonly conversation_id: string
  readonly session_id: string
  readonly seq: number
  readonly msg_id: string
}

interface Pending {
  readonly rows: ReadonlyArray<MessageRow>
  readonly reads: ReadonlyArray<ReadMove>
  /** For `rows`' conversation: how far its members were handed everything (conversations.redeliver_after). */
  readonly handed: string | null
  /** About the JSON this Pending adds to a statement (UTF-16 units, not exact bytes). */
  readonly bytes: number
  /** Called with the moves of `reads` the statement made: through `answer`, so once. */
  readonly done: (exit: Exit.Exit<ReadonlyArray<MovedRead>, SqlError.SqlError>) => void
  answered: boolean
}

const answer = (p: Pending, exit: Exit.Exit<ReadonlyArray<MovedRead>, SqlError.SqlError>) => {
  if (p.answered) return
  p.answered = true
  p.done(exit)
}

/** Bounds on one merged statement; a single Pending beyond them still goes, alone. */
export interface CommitBounds {
  readonly maxRows: number
  readonly maxBytes: number
}

export const defaultCommitBounds: CommitBounds = { maxRows: 1024, maxBytes: 4 * 1024 * 1024 }

/** Field names, ids, numbers and the conversation's last-message entry of one row in the JSON. */
const ROW_OVERHEAD = 320

const sizeOf = (rows: ReadonlyArray<MessageRow>, reads: ReadonlyArray<ReadMove>) => {
  let bytes = reads.length * ROW_OVERHEAD
  for (const r of rows) {
    bytes += ROW_OVERHEAD + r.content.length + r.conversation_id.length + r.from_session.length
      + (r.client_msg_id?.length ?? 0)
  }
  return bytes
}

const nothingMoved: Exit.Exit<ReadonlyArray<MovedRead>> = Exit.succeed([])

/** The database could not be reached: every statement would fail alike, so none is tried again. */
const isUnreachable = (exit: Exit.Exit<unknown, SqlError.SqlError>) =>
  Exit.isFailure(exit) && causeIsUnreachable(exit.cause)

/**
 * `inFlightMax`: commits in flight at once; further batches wait and are merged. One is the default:
 * against four in flight it gave more sends per second on one node and on three (fewer, larger
 * commits, less of PostgreSQL's CPU per send) and lower latency, since a commit's round trip is
 * short next to the queue (pairs push benchmark, bench/RESULTS.md).
 */
export const makeCommitBatcher = (
  sql: SqlClient.SqlClient,
  inFlightMax: number,
  bounds: CommitBounds = defaultCommitBounds
) => {
  let queue: Array<Pending> = []
  let queuedRows = 0
  let queuedBytes = 0
  let inFlight = 0

  // Messages, each conversation's last-message fields and read positions (each sender's: a sender
  // has read what it sends; and those marked), as JSON decoded by the database: one statement
  // whatever the batch's size, so it is atomic without BEGIN/COMMIT round trips. Unread counts rely
  // on that atomicity: a member's own messages are never above its read position. A mark to an
  // anchor is resolved here too, against what was committed before (a conversation's marks follow
  // its commits: its entity waits for each). The answer: the positions moved.
  const write = (batch: ReadonlyArray<Pending>) => {
    const rows = batch.flatMap((p) => p.rows)
    const lastByConversation = new Map<string, { readonly row: MessageRow; readonly handed: string | null }>()
    const senders = new Map<string, ReadMove>()
    for (const p of batch) {
      for (const r of p.rows) {
        lastByConversation.set(r.conversation_id, { row: r, handed: p.handed })
        // Rows come in seq order: the last one of each sender is its position.
        senders.set(`${r.conversation_id}\u0000${r.from_session}`, {
          conversation_id: r.conversation_id,
          session_id: r.from_session,
          seq: r.seq,
          msg_id: r.msg_id
        })
      }
    }
    const reads = [...senders.values(), ...batch.flatMap((p) => p.reads)]
    const lasts = [...lastByConversation.values()].map(({ handed, row: r }) => ({
      id: r.conversation_id,
      last_msg_id: r.msg_id,
      last_send_time: r.send_time,
      last_send_session: r.from_session,
      last_seq: r.seq,
      redeliver_after: handed
    }))
    return sql<
      { conversation_id: string; session_id: string; read_seq: string; read_msg_id: string }
    >`WITH inserted AS (
        INSERT INTO messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content, client_msg_id)
        SELECT conversation_id, msg_id, seq, from_session, send_time, status, type, content, client_msg_id
        FROM jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) AS r(conversation_id text, msg_id text, seq bigint,
          from_session text, send_time text, status integer, type integer, content text, client_msg_id text)
        RETURNING 1),
      moves AS (
        SELECT DISTINCT ON (r.conversation_id, r.session_id) r.conversation_id, r.session_id,
          COALESCE(r.seq, t.seq) AS seq, COALESCE(r.msg_id, t.msg_id) AS msg_id
        FROM jsonb_to_recordset(${JSON.stringify(reads)}::jsonb) AS r(conversation_id text, session_id text,
          seq bigint, msg_id text, anchor text)
        LEFT JOIN LATERAL (SELECT o.seq, o.msg_id FROM messages o WHERE r.anchor IS NOT NULL
          AND o.conversation_id = r.conversation_id AND o.msg_id <= r.anchor ORDER BY o.msg_id DESC LIMIT 1) t ON true
        WHERE COALESCE(r.seq, t.seq) IS NOT NULL
        ORDER BY r.conversation_id, r.session_id, COALESCE(r.seq, t.seq) DESC),
      readers AS (
        UPDATE conversation_members m SET read_seq = v.seq, read_msg_id = v.msg_id FROM moves v
        WHERE m.conversation_id = v.conversation_id AND m.session_id = v.session_id AND m.read_seq < v.seq
        RETURNING m.conversation_id, m.session_id, m.read_seq, m.read_msg_id),
      lasts AS (
        UPDATE conversations c SET last_msg_id = v.last_msg_id, last_send_time = v.last_send_time,
          last_send_session = v.last_send_session, last_seq = v.last_seq, redeliver_after = v.redeliver_after,
          last_msg_at = v.last_send_time::timestamptz, last_xid = pg_current_xact_id()
        FROM jsonb_to_recordset(${JSON.stringify(lasts)}::jsonb) AS v(id text, last_msg_id text, last_send_time text,
          last_send_session text, last_seq bigint, redeliver_after text)
        WHERE c.id = v.id
        RETURNING 1)
      SELECT conversation_id, session_id, read_seq, read_msg_id FROM readers`
  }

  /** A throw while building the statement (odd data, a bug) becomes this batch's failure, not a wedge. */
  const attempt = (batch: ReadonlyArray<Pending>) =>
    Effect.exit(
      Effect.suspend(() => write(batch)).pipe(Effect.map((moved) =>
        moved.map((m): MovedRead => ({
          conversation_id: m.conversation_id,
          session_id: m.session_id,
          seq: Number(m.read_seq),
          msg_id: m.read_msg_id
        }))
      ))
    )

  /** Each waiter gets the moves of the reads it asked for (a sender's own move is not asked for). */
  const settle = (p: Pending, exit: Exit.Exit<ReadonlyArray<MovedRead>, SqlError.SqlError>) => {
    if (Exit.isFailure(exit)) return answer(p, exit)
    if (p.reads.length === 0) return answer(p, nothingMoved)
    const asked = new Set(p.reads.map((r) => `${r.conversation_id}\u0000${r.session_id}`))
    answer(p, Exit.succeed(exit.value.filter((m) => asked.has(`${m.conversation_id}\u0000${m.session_id}`))))
  }

  const commit = (batch: ReadonlyArray<Pending>) =>
    Effect.gen(function* () {
      const exit = yield* attempt(batch)
      if (Exit.isSuccess(exit) || batch.length === 1 || isUnreachable(exit)) {
        for (const p of batch) settle(p, exit)
        return
      }
      // Once, each conversation's rows alone: only the offending ones fail. Never more than that.
      for (const p of batch) settle(p, yield* attempt([p]))
    })

  /** What the next statement carries: everything queued, unless that passes a bound. */
  const take = (): Array<Pending> => {
    if (queuedRows <= bounds.maxRows && queuedBytes <= bounds.maxBytes) {
      const batch = queue
      queue = []
      queuedRows = 0
      queuedBytes = 0
      return batch
    }
    let n = 0
    let rows = 0
    let bytes = 0
    for (; n < queue.length; n++) {
      const p = queue[n]
      const count = p.rows.length + p.reads.length
      if (n > 0 && (rows + count > bounds.maxRows || bytes + p.bytes > bounds.maxBytes)) break
      rows += count
      bytes += p.bytes
    }
    const batch = queue.slice(0, n)
    queue = queue.slice(n)
    queuedRows -= rows
    queuedBytes -= bytes
    return batch
  }

  /**
   * Queues `rows` (one conversation's, in order, with how far its members were handed everything:
   * `handed`, null when unknown) and read positions `reads`, to be written durably in
   * a statement shared with others waiting; `done` is called once with the outcome. True: a commit
   * slot is free, and the caller must run `start` (the commits of everything queued, in a fiber of
   * their own that keeps going while work remains; everyone only waits for its answer).
   */
  const submit = (
    rows: ReadonlyArray<MessageRow>,
    reads: ReadonlyArray<ReadMove>,
    done: Pending["done"],
    handed: string | null = null
  ): boolean => {
    const bytes = sizeOf(rows, reads)
    queue.push({ rows, reads, handed, bytes, done, answered: false })
    queuedRows += rows.length + reads.length
    queuedBytes += bytes
    return inFlight < inFlightMax
  }

  /** `submit` as an effect: its outcome, once written. */
  const append = (
    rows: ReadonlyArray<MessageRow>,
    reads: ReadonlyArray<ReadMove> = []
  ): Effect.Effect<ReadonlyArray<MovedRead>, SqlError.SqlError> =>
    Effect.suspend(() => {
      const done = Deferred.makeUnsafe<ReadonlyArray<MovedRead>, SqlError.SqlError>()
      const free = submit(rows, reads, (exit) => Deferred.doneUnsafe(done, exit))
      return free ? Effect.andThen(start, Deferred.await(done)) : Deferred.await(done)
    })

  const drain = Effect.uninterruptible(Effect.gen(function* () {
    while (queue.length > 0 && inFlight < inFlightMax) {
      const batch = take()
      inFlight++
      // Whatever happens, the slot is given back, every waiter in the batch is answered and
      // this loop goes on with what queued meanwhile (those waiters count on it).
      const exit = yield* Effect.exit(commit(batch))
      inFlight--
      if (Exit.isFailure(exit)) {
        for (const p of batch) answer(p, Exit.failCause(exit.cause))
      }
    }
  }))

  /**
   * Commits what is queued until nothing is, in a fiber of its own. Whoever finds a free slot starts
   * it (it runs at once, up to its first statement) and then waits for its own answer like the
   * others. Run by the caller instead, the loop kept it committing the other conversations'
   * batches for as long as more kept coming: under a steady load one conversation at a time had
   * its sends answered up to 1.7 s late, all at once (bench/RESULTS.md, "The committer's convoy").
   */
  const start = Effect.asVoid(Effect.forkDetach(drain, { startImmediately: true }))

  return { append, submit, start }
}
