/**
 * Read state in SQL: the reads a chat list and a chat window need: unread counts, the inbox, the
 * member list. Read positions are moved by the Conversation entity (ConversationStore.moveReads).
 *
 * Unread is exact by construction: a member's own messages are never above its read position
 * (sending moves it, in the statement that stores the message: CommitBatcher), and joining sets
 * it to the last message, so the messages above it from others number `last_seq - read_seq`.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as SqlClient from "effect/sql/SqlClient"
import type * as SqlError from "effect/sql/SqlError"
import type { MsgData } from "../domain/Conversation.ts"
import { formatSendTime } from "../domain/SendTime.ts"
import { type StoredMessage, timedStore, toMsgData } from "./ConversationStore.ts"
import { DatabaseHealth } from "./DatabaseHealth.ts"

type Sql<A> = Effect.Effect<A, SqlError.SqlError>

export interface UnreadEntry {
  readonly ConversationId: string
  readonly Unread: number
  readonly ReadMsgId: string | null
  readonly LastMsgId: string | null
}

export interface InboxEntry {
  readonly ConversationId: string
  readonly ConversationType: number
  readonly Name: string
  readonly Extra: string
  readonly IsArchive: boolean
  readonly LastMsg: MsgData | null
  readonly Unread: number
  readonly ReadMsgId: string | null
}

export interface MemberEntry {
  readonly Session: string
  readonly JoinedAt: string
  readonly ReadMsgId: string | null
}

/**
 * Where an inbox page continues: the snapshot its first page was read in (`pg_snapshot` text), and
 * the sort key of the last entry given (activity in microseconds since the epoch, conversation id).
 * Every later page sorts the conversations as that snapshot saw them, so a conversation that moves
 * up meanwhile is neither given twice nor skipped.
 */
export interface InboxCursor {
  readonly snapshot: string
  readonly activity: string
  readonly conversationId: string
}

/** Where a member list continues: after this member in join order (joined_at in microseconds). */
export interface MembersCursor {
  readonly joinedAt: string
  readonly session: string
}

export interface Page<A, C> {
  readonly entries: ReadonlyArray<A>
  readonly next: C | undefined
}

/**
 * Microseconds since the epoch of a timestamptz, exact. Cursors carry it and turn it back into a
 * timestamp through `epoch + n * 1 µs`, exact below 2^53 µs (the year 2255).
 */
const micros = (column: string) => `(extract(epoch FROM ${column}) * 1000000)::bigint`

interface UnreadRow {
  readonly id: string
  readonly unread: string
  readonly read_msg_id: string | null
  readonly last_msg_id: string | null
}

export class ReadStore extends Context.Service<ReadStore, {
  /** `session`'s unread counts in `ids` (in that order; those it is not a member of are left out), or in all it joined. */
  readonly unread: (session: string, ids: ReadonlyArray<string> | undefined) => Sql<ReadonlyArray<UnreadEntry>>
  readonly inbox: (
    session: string,
    limit: number,
    cursor: InboxCursor | undefined
  ) => Sql<Page<InboxEntry, InboxCursor>>
  readonly members: (
    id: string,
    limit: number,
    cursor: MembersCursor | undefined
  ) => Sql<Page<MemberEntry, MembersCursor>>
}>()("quick-im/storage/ReadStore") {
  static readonly layer = Layer.effect(
    ReadStore,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const health = yield* DatabaseHealth
      const joinedMicros = sql.literal(micros("joined_at"))
      /** The activity of membership `m` in `c` as snapshot `s.snap` saw it (its last message then, or its join). */
      const seenActivity = sql.literal(`COALESCE((SELECT o.send_time::timestamptz FROM messages o
        WHERE o.conversation_id = c.id AND (o.txid IS NULL OR pg_visible_in_snapshot(o.txid, s.snap))
        ORDER BY o.msg_id DESC LIMIT 1), m.joined_at)`)
      /** The entries of the page `keys` (id, at) of `session`'s inbox, in order, with `snapshot`. */
      const entries = (session: string, snapshot: ReturnType<typeof sql.literal>) =>
        sql`SELECT c.id, c.conversation_type, c.name, c.extra, c.is_archive, c.last_seq - m.read_seq AS unread,
            m.read_msg_id, ${sql.literal(micros("keys.at"))} AS activity, ${snapshot} AS snapshot,
            lm.msg_id, lm.conversation_id, lm.from_session, lm.send_time, lm.status, lm.type, lm.content, lm.seq
          FROM keys JOIN conversations c ON c.id = keys.id
          JOIN conversation_members m ON m.conversation_id = keys.id AND m.session_id = ${session}
          LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.msg_id = c.last_msg_id
          ORDER BY keys.at DESC, keys.id DESC`

      type InboxRow = StoredMessage & {
        readonly id: string
        readonly conversation_type: string
        readonly name: string
        readonly extra: string
        readonly is_archive: boolean
        readonly unread: string
        readonly read_msg_id: string | null
        readonly activity: string
        readonly snapshot: string
      }

      const inboxPage = (rows: ReadonlyArray<InboxRow>, limit: number, snapshot: string | undefined) => {
        const entries = rows.slice(0, limit).map((r): InboxEntry => ({
          ConversationId: r.id,
          ConversationType: Number(r.conversation_type),
          Name: r.name,
          Extra: r.extra,
          IsArchive: r.is_archive,
          LastMsg: r.msg_id === null ? null : toMsgData(r),
          Unread: Number(r.unread),
          ReadMsgId: r.read_msg_id
        }))
        const last = rows[limit - 1]
        return {
          entries,
          next: rows.length > limit
            ? { snapshot: snapshot ?? rows[0].snapshot, activity: String(last.activity), conversationId: last.id }
            : undefined
        }
      }

      return ReadStore.of(timedStore({
        unread: (session, ids) =>
          (ids !== undefined && ids.length === 0 ? Effect.succeed<ReadonlyArray<UnreadRow>>([]) : sql<UnreadRow>`
              SELECT m.conversation_id AS id, c.last_seq - m.read_seq AS unread, m.read_msg_id, c.last_msg_id
              FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
              WHERE m.session_id = ${session} ${
            ids === undefined ? sql`` : sql`AND ${sql.in("m.conversation_id", ids)}`
          }
              ORDER BY m.joined_at, m.conversation_id`).pipe(
            Effect.map((rows) => {
              const entries = rows.map((r): UnreadEntry => ({
                ConversationId: r.id,
                Unread: Number(r.unread),
                ReadMsgId: r.read_msg_id,
                LastMsgId: r.last_msg_id
              }))
              if (ids === undefined) return entries
              const byId = new Map(entries.map((e) => [e.ConversationId, e]))
              return [...new Set(ids)].flatMap((id) => byId.get(id) ?? [])
            })
          ),
        // The page's keys first, over every membership of the session (narrow rows: ten thousand
        // memberships sort in a few milliseconds), then the page's entries in full.
        inbox: (session, limit, cursor) =>
          (cursor === undefined
            ? sql<InboxRow>`WITH keys AS (
                  SELECT m.conversation_id AS id, COALESCE(c.last_msg_at, m.joined_at) AS at
                  FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
                  WHERE m.session_id = ${session}
                  ORDER BY at DESC, id DESC LIMIT ${limit + 1})
                ${entries(session, sql`pg_current_snapshot()::text`)}`
            // As the first page's snapshot saw them: a conversation whose last message that snapshot did
            // not see sorts by the last one it did see (or its join); memberships it did not see are left out.
            : sql<InboxRow>`WITH seen AS (
                  SELECT m.conversation_id AS id,
                    CASE WHEN c.last_xid IS NULL OR pg_visible_in_snapshot(c.last_xid, s.snap)
                      THEN COALESCE(c.last_msg_at, m.joined_at) ELSE ${seenActivity} END AS at
                  FROM (SELECT ${cursor.snapshot}::pg_snapshot AS snap) s, conversation_members m
                  JOIN conversations c ON c.id = m.conversation_id
                  WHERE m.session_id = ${session} AND pg_visible_in_snapshot(m.joined_xid, s.snap)),
                keys AS (
                  SELECT * FROM seen WHERE (at, id) <
                    (TIMESTAMPTZ 'epoch' + ${cursor.activity}::bigint * INTERVAL '1 microsecond', ${cursor.conversationId})
                  ORDER BY at DESC, id DESC LIMIT ${limit + 1})
                ${entries(session, sql`''`)}`).pipe(Effect.map((rows) => inboxPage(rows, limit, cursor?.snapshot))),
        members: (id, limit, cursor) =>
          sql<{ session_id: string; joined_us: string; read_msg_id: string | null }>`
            SELECT session_id, ${joinedMicros} AS joined_us, read_msg_id FROM conversation_members
            WHERE conversation_id = ${id} ${
            cursor === undefined ? sql`` : sql`AND (joined_at, session_id) >
                (TIMESTAMPTZ 'epoch' + ${cursor.joinedAt}::bigint * INTERVAL '1 microsecond', ${cursor.session})`
          }
            ORDER BY joined_at, session_id LIMIT ${limit + 1}`.pipe(
            Effect.map((rows) => {
              const last = rows[limit - 1]
              return {
                entries: rows.slice(0, limit).map((r): MemberEntry => ({
                  Session: r.session_id,
                  JoinedAt: formatSendTime(Math.floor(Number(r.joined_us) / 1000)),
                  ReadMsgId: r.read_msg_id
                })),
                next: rows.length > limit ? { joinedAt: String(last.joined_us), session: last.session_id } : undefined
              }
            })
          )
      }, health))
    })
  ).pipe(Layer.provideMerge(DatabaseHealth.layer))
}
