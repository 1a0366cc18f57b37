/**
 * Resume by cursor: every message of a session's current conversations that a client holding
 * MsgId `cursor` may not have seen, per conversation in order. docs/architecture.md ("Why resume loses
 * nothing") gives the argument for the window.
 *
 * A replay is read in pages bounded in rows and in bytes (`QUICKIM_REPLAY_PAGE_BYTES`), and its
 * position is a small value, so a reader holds one page at a time and can stop and go on later
 * (a long-poll client takes a page per few polls). Each replay reads up to a snapshot taken when
 * it starts: every conversation's newest MsgId at that moment. Its pages are read at different
 * times, so without it a later page could bring a message that overtakes an older one of its
 * conversation committed after an earlier page had passed its place; with it, a replay is a
 * consistent prefix of each conversation, and what commits later reaches the reader live.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as SqlClient from "effect/sql/SqlClient"
import type * as SqlError from "effect/sql/SqlError"
import { AppConfig } from "../Config.ts"
import { conversationHash, decode, encode } from "../domain/MsgId.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { gapMemoryMillis, type StoredMessage, toMsgData } from "./ConversationStore.ts"
import { replayPageBytes, replayPages } from "../observability/Telemetry.ts"

/** Rows per page at most, however small they are. */
const PAGE = 500
/** Added to a message's content length to estimate its JSON size (ids, time, field names). */
const ROW_OVERHEAD = 200
/** Default of `QUICKIM_REPLAY_PAGE_BYTES`. */
export const REPLAY_PAGE_BYTES = 512 * 1024

/** The smallest MsgId of millisecond `millis`: ids compare as strings, across conversations. */
export const floorOf = (cursor: string, window: Duration.Duration) =>
  encode({
    millis: Math.max(0, decode(cursor).millis - Duration.toMillis(window)),
    seq: 0,
    conversationType: 0,
    hash: 0
  })

/** Where a replay stands: what the next page reads from. */
export interface ReplayPosition {
  readonly cursor: string
  readonly floor: string
  /** The cursor's own conversation: nothing of it up to the cursor is replayed. */
  readonly own: string
  /** `[{id, last}]` as JSON: each conversation's newest MsgId when the replay started. */
  readonly snapshot: string
  /**
   * `[{id, lo, hi}]` as JSON: ranges below the floor read too, however old: what a conversation
   * dropped for some member within the gap memory (ConversationStore.markGap).
   */
  readonly gaps?: string
  /** The last row read (MsgId, conversation). */
  readonly id: string
  readonly conversation: string
}

export interface ReplayPage {
  readonly messages: ReadonlyArray<MsgData>
  /** Estimated JSON bytes of `messages`. */
  readonly bytes: number
  /** Undefined: the replay is complete. */
  readonly next: ReplayPosition | undefined
}

export class Replay extends Context.Service<Replay, {
  /** Messages after `cursor` (minus the resume window) in the session's current conversations. */
  readonly after: (session: string, cursor: string) => Stream.Stream<MsgData, SqlError.SqlError>
  /** Starts a replay after `cursor`: call it once the reader receives live messages (its snapshot is taken now). */
  readonly start: (session: string, cursor: string) => Effect.Effect<ReplayPosition, SqlError.SqlError>
  /** The next page of a replay. */
  readonly page: (session: string, position: ReplayPosition) => Effect.Effect<ReplayPage, SqlError.SqlError>
}>()("quick-im/Replay") {
  static readonly layer = Layer.effect(
    Replay,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const config = yield* AppConfig
      const pageBytes = config.replayPageBytes ?? REPLAY_PAGE_BYTES

      const start = (session: string, cursor: string) =>
        Effect.gen(function* () {
          const floor = floorOf(cursor, config.resumeWindow)
          // Ranges a conversation dropped for some member within the gap memory are read however old:
          // a member may have been told of the gap only after newer messages moved its cursor on.
          const since = decode(cursor).millis - gapMemoryMillis(config.resumeWindow)
          // The cursor's own conversation was seen in order up to the cursor: nothing of it before.
          const hash = decode(cursor).hash
          const candidates = yield* sql<{ conversation_id: string }>`
            SELECT m.conversation_id FROM conversation_members cm
            JOIN messages m ON m.conversation_id = cm.conversation_id AND m.msg_id = ${cursor}
            WHERE cm.session_id = ${session}`
          const own = candidates.find((c) => conversationHash(c.conversation_id) === hash)?.conversation_id ?? ""
          // A conversation's messages and its `last_msg_id` are written by one statement.
          const gap = sql`g.gap_at >= ${since} AND g.gap_from <= ${floor}`
          const lasts = yield* sql<{ id: string; last: string; lo: string | null; hi: string | null }>`
            SELECT c.id, c.last_msg_id AS last,
              CASE WHEN ${gap} THEN g.gap_from END AS lo,
              CASE WHEN ${gap} THEN LEAST(g.gap_to, ${floor}) END AS hi
            FROM conversation_members cm
            JOIN conversations c ON c.id = cm.conversation_id
            LEFT JOIN conversation_gaps g ON g.conversation_id = c.id
            WHERE (c.last_msg_id > ${floor} OR (${gap})) AND cm.session_id = ${session}`
          let id = floor
          const gaps: Array<{ id: string; lo: string; hi: string }> = []
          for (const c of lasts) {
            if (c.lo === null || c.hi === null) continue
            gaps.push({ id: c.id, lo: c.lo, hi: c.hi })
            if (c.lo < id) id = c.lo
          }
          const snapshot = JSON.stringify(lasts.map((c) => ({ id: c.id, last: c.last })))
          const position: ReplayPosition = { cursor, floor, own, snapshot, id, conversation: "" }
          return gaps.length === 0 ? position : { ...position, gaps: JSON.stringify(gaps) }
        })

      const columns = sql`m.msg_id, m.conversation_id, m.from_session, m.send_time, m.status, m.type, m.content, m.seq`

      /** Messages above the floor, each conversation up to its newest when the replay started. */
      const aboveFloor = (session: string, at: ReplayPosition) => {
        // Below the floor (a replay with gaps starts there) the position says nothing here; the
        // index's range starts at whichever bound is higher.
        const below = at.id < at.floor
        return sql`SELECT ${columns}
            FROM jsonb_to_recordset(${at.snapshot}::jsonb) AS s(id text, last text)
            JOIN conversation_members cm ON cm.conversation_id = s.id AND cm.session_id = ${session}
            JOIN messages m ON m.conversation_id = s.id AND m.msg_id > ${at.floor} AND m.msg_id <= s.last
              AND m.seq > cm.joined_seq
            WHERE NOT (m.conversation_id = ${at.own} AND m.msg_id <= ${at.cursor})
              AND (m.msg_id, m.conversation_id) > (${below ? at.floor : at.id}, ${below ? "" : at.conversation})`
      }

      const page = (session: string, at: ReplayPosition) =>
        // One order across conversations (by MsgId), so that any message a client received during
        // a replay is itself a safe cursor: everything after it in the replay sorts above it. The
        // running size stops a page at the first row past the byte bound (a page has one row at least).
        // Gap ranges (below the floor) are a second index range per conversation, merged in order.
        sql<StoredMessage & { readonly running: string | number }>`SELECT * FROM (
            SELECT m.*,
              sum(octet_length(m.content) + ${ROW_OVERHEAD}) OVER (ORDER BY m.msg_id, m.conversation_id) AS running,
              octet_length(m.content) + ${ROW_OVERHEAD} AS size
            FROM (${
          at.gaps === undefined ? aboveFloor(session, at) : sql`(${aboveFloor(session, at)}
              ORDER BY m.msg_id, m.conversation_id LIMIT ${PAGE})
              UNION ALL
              (SELECT ${columns}
              FROM jsonb_to_recordset(${at.gaps}::jsonb) AS g(id text, lo text, hi text)
              JOIN conversation_members cm ON cm.conversation_id = g.id AND cm.session_id = ${session}
              JOIN messages m ON m.conversation_id = g.id AND m.msg_id >= g.lo AND m.msg_id <= g.hi
                AND m.seq > cm.joined_seq
              WHERE NOT (m.conversation_id = ${at.own} AND m.msg_id <= ${at.cursor})
                AND (m.msg_id, m.conversation_id) > (${at.id}, ${at.conversation})
              ORDER BY m.msg_id, m.conversation_id LIMIT ${PAGE})`
        }) m
            ORDER BY m.msg_id, m.conversation_id LIMIT ${PAGE}
          ) p WHERE running - size < ${pageBytes}`.pipe(
          Effect.map((rows) => {
            const last = rows[rows.length - 1] as (typeof rows)[number] | undefined
            const bytes = last === undefined ? 0 : Number(last.running)
            const more = last !== undefined && (rows.length === PAGE || bytes >= pageBytes)
            return {
              messages: rows.map(toMsgData),
              bytes,
              next: more ? { ...at, id: last.msg_id, conversation: last.conversation_id } : undefined
            } satisfies ReplayPage
          }),
          Effect.tap((p) => Effect.andThen(Metric.update(replayPages, 1), Metric.update(replayPageBytes, p.bytes)))
        )

      const after = (session: string, cursor: string) =>
        Stream.unwrap(
          Effect.map(start(session, cursor), (first) =>
            Stream.paginate(first, (at: ReplayPosition) =>
              Effect.map(page(session, at), (p) =>
                [p.messages, Option.fromUndefinedOr(p.next)] as const)))
        )

      return Replay.of({ after, start, page })
    })
  )
}
