/**
 * SQL access for conversations, members and messages. Writes are called only by the owning
 * Conversation entity; reads serve the HTTP handlers directly.
 */
import { Context, Effect, Layer, Option } from "effect"
import { SqlClient, type SqlError } from "effect/sql"
import type { ConversationDetail, MsgData } from "../domain/Conversation.ts"
import { AppConfig } from "../Config.ts"
import { defaultCommitBounds, makeCommitBatcher } from "./CommitBatcher.ts"
import { queryDuration, storeOperation } from "../observability/Telemetry.ts"

export interface ConversationState {
  readonly conversationType: number
  readonly isArchive: boolean
  readonly lastMsgId: string | undefined
  readonly lastSeq: number
  readonly members: Map<string, number>
}

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

export interface StoredMessage {
  readonly msg_id: string
  readonly conversation_id: string
  readonly from_session: string
  readonly send_time: string
  readonly status: number
  readonly type: number
  readonly content: string
}

export const toMsgData = (r: StoredMessage): MsgData => ({
  MsgId: r.msg_id,
  ConversationID: r.conversation_id,
  FromSession: r.from_session,
  SendTime: r.send_time,
  Status: Number(r.status),
  Type: Number(r.type),
  Content: r.content
})

/** `sql.insert` takes a non-empty list; callers never pass an empty one. */
const rowsOf = <A extends object>(rows: ReadonlyArray<A>) =>
  rows as unknown as readonly [Record<string, unknown>, ...Array<Record<string, unknown>>]

export const PAGE = 30
export const RANGE_LIMIT = 1000

type Sql<A> = Effect.Effect<A, SqlError.SqlError>

/** Every store operation timed into `quickim_db_query_duration_seconds{op}` and counted while in flight. */
const timedStore = (store: ConversationStore["Service"]): ConversationStore["Service"] => {
  const out: Record<string, unknown> = {}
  for (const [op, value] of Object.entries(store)) {
    const metric = queryDuration(op)
    out[op] = Effect.isEffect(value)
      ? storeOperation(metric, value)
      : (...args: Array<unknown>) =>
        storeOperation(metric, (value as (...a: Array<unknown>) => Effect.Effect<unknown>)(...args))
  }
  return ConversationStore.of(out as unknown as ConversationStore["Service"])
}

export class ConversationStore extends Context.Service<ConversationStore, {
  readonly load: (id: string) => Sql<Option.Option<ConversationState>>
  readonly create: (id: string, conversationType: number, sessions: ReadonlyArray<string>) => Sql<void>
  readonly addMembers: (id: string, sessions: ReadonlyArray<string>, joinedSeq: number) => Sql<void>
  readonly removeMembers: (id: string, sessions: ReadonlyArray<string>) => Sql<void>
  readonly setArchive: (id: string, isArchive: boolean) => Sql<void>
  readonly appendMessages: (id: string, rows: ReadonlyArray<MessageRow>) => Sql<void>
  readonly findByClientIds: (
    id: string,
    keys: ReadonlyArray<{ readonly session: string; readonly clientMsgId: string }>
  ) => Sql<ReadonlyArray<{ session: string; clientMsgId: string; msgId: string; seq: number; sendTime: string }>>
  readonly isMember: (id: string, session: string) => Sql<boolean>
  readonly exists: (ids: ReadonlyArray<string>) => Sql<ReadonlyArray<string>>
  readonly joined: (session: string) => Sql<ReadonlyArray<string>>
  readonly detail: (id: string) => Sql<Option.Option<ConversationDetail>>
  readonly lastMsgId: (id: string) => Sql<string | null>
  readonly range: (id: string, start: string, end: string, desc: boolean) => Sql<ReadonlyArray<MsgData>>
  readonly before: (id: string, anchor: string, desc: boolean) => Sql<ReadonlyArray<MsgData>>
  readonly after: (id: string, anchor: string, desc: boolean) => Sql<ReadonlyArray<MsgData>>
  readonly last: (id: string, count: number, desc: boolean) => Sql<ReadonlyArray<MsgData>>
  /** The newest `count` messages after `floor`, oldest first (a re-hosted conversation's hand-over). */
  readonly newestAfter: (id: string, floor: string, count: number) => Sql<ReadonlyArray<MsgData>>
  readonly ping: Sql<void>
}>()("quick-im/ConversationStore") {
  static readonly layer = Layer.effect(
    ConversationStore,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const config = yield* AppConfig
      const batcher = makeCommitBatcher(sql, config.commitsInFlight, {
        maxRows: config.commitMaxRows ?? defaultCommitBounds.maxRows,
        maxBytes: config.commitMaxBytes ?? defaultCommitBounds.maxBytes
      })
      const columns = sql`msg_id, conversation_id, from_session, send_time, status, type, content`
      const ordered = (rows: ReadonlyArray<StoredMessage>, rowsAreDesc: boolean, desc: boolean) => {
        const out = rows.map(toMsgData)
        return rowsAreDesc === desc ? out : out.reverse()
      }

      return timedStore({
        load: (id) =>
          Effect.gen(function* () {
            const rows = yield* sql<{
              conversation_type: string
              is_archive: boolean
              last_msg_id: string | null
              last_seq: string
            }>`SELECT conversation_type, is_archive, last_msg_id, last_seq FROM conversations WHERE id = ${id}`
            if (rows.length === 0) return Option.none()
            const members = yield* sql<{ session_id: string; joined_seq: string }>`
              SELECT session_id, joined_seq FROM conversation_members WHERE conversation_id = ${id}`
            const row = rows[0]
            return Option.some({
              conversationType: Number(row.conversation_type),
              isArchive: row.is_archive,
              lastMsgId: row.last_msg_id ?? undefined,
              lastSeq: Number(row.last_seq),
              members: new Map(members.map((m) => [m.session_id, Number(m.joined_seq)]))
            })
          }),
        create: (id, conversationType, sessions) =>
          sql.withTransaction(Effect.gen(function* () {
            yield* sql`INSERT INTO conversations ${sql.insert({ id, conversation_type: conversationType })}
              ON CONFLICT (id) DO NOTHING`
            yield* sql`INSERT INTO conversation_members ${
              sql.insert(rowsOf(sessions.map((s) => ({ conversation_id: id, session_id: s, joined_seq: 0 }))))
            } ON CONFLICT DO NOTHING`
          })),
        addMembers: (id, sessions, joinedSeq) =>
          sql`INSERT INTO conversation_members ${
            sql.insert(rowsOf(sessions.map((s) => ({ conversation_id: id, session_id: s, joined_seq: joinedSeq }))))
          } ON CONFLICT DO NOTHING`.pipe(Effect.asVoid),
        removeMembers: (id, sessions) =>
          sql`DELETE FROM conversation_members WHERE conversation_id = ${id} AND ${sql.in("session_id", sessions)}`
            .pipe(Effect.asVoid),
        setArchive: (id, isArchive) =>
          sql`UPDATE conversations SET is_archive = ${isArchive} WHERE id = ${id}`.pipe(Effect.asVoid),
        appendMessages: (_id, rows) => batcher.append(rows),
        findByClientIds: (id, keys) =>
          sql<{ from_session: string; client_msg_id: string; msg_id: string; seq: string; send_time: string }>`
            SELECT from_session, client_msg_id, msg_id, seq, send_time FROM messages
            WHERE conversation_id = ${id} AND ${sql.in("client_msg_id", [...new Set(keys.map((k) => k.clientMsgId))])}`
            .pipe(Effect.map((rows) =>
              rows.map((r) => ({
                session: r.from_session,
                clientMsgId: r.client_msg_id,
                msgId: r.msg_id,
                seq: Number(r.seq),
                sendTime: r.send_time
              }))
            )),
        isMember: (id, session) =>
          sql`SELECT 1 FROM conversation_members WHERE conversation_id = ${id} AND session_id = ${session}`.pipe(
            Effect.map((rows) => rows.length > 0)
          ),
        exists: (ids) =>
          ids.length === 0
            ? Effect.succeed([])
            : sql<{ id: string }>`SELECT id FROM conversations WHERE ${sql.in("id", ids)}`.pipe(
              Effect.map((rows) => rows.map((r) => r.id))
            ),
        joined: (session) =>
          sql<{ conversation_id: string }>`SELECT conversation_id FROM conversation_members
            WHERE session_id = ${session} ORDER BY joined_at, conversation_id`.pipe(
            Effect.map((rows) => rows.map((r) => r.conversation_id))
          ),
        detail: (id) =>
          sql<{
            id: string
            last_msg_id: string | null
            last_send_time: string | null
            is_delete: boolean
            conversation_type: string
            last_send_session: string | null
            is_archive: boolean
          }>`SELECT id, last_msg_id, last_send_time, is_delete, conversation_type, last_send_session, is_archive
            FROM conversations WHERE id = ${id}`.pipe(
            Effect.map((rows) =>
              Option.map(Option.fromNullishOr(rows[0]), (r) => ({
                ConversationID: r.id,
                LastMsgID: r.last_msg_id,
                LastSendTime: r.last_send_time,
                IsDelete: r.is_delete,
                ConversationType: Number(r.conversation_type),
                LastSendSession: r.last_send_session,
                IsArchive: r.is_archive
              }))
            )
          ),
        lastMsgId: (id) =>
          sql<{ last_msg_id: string | null }>`SELECT last_msg_id FROM conversations WHERE id = ${id}`.pipe(
            Effect.map((rows) => rows[0]?.last_msg_id ?? null)
          ),
        range: (id, start, end, desc) =>
          sql<StoredMessage>`SELECT ${columns} FROM messages WHERE conversation_id = ${id}
            AND msg_id >= ${start} AND msg_id <= ${end} ORDER BY msg_id ASC LIMIT ${RANGE_LIMIT}`.pipe(
            Effect.map((rows) => ordered(rows, false, desc))
          ),
        before: (id, anchor, desc) =>
          sql<StoredMessage>`SELECT ${columns} FROM messages WHERE conversation_id = ${id}
            AND msg_id < ${anchor} ORDER BY msg_id DESC LIMIT ${PAGE}`.pipe(
            Effect.map((rows) => ordered(rows, true, desc))
          ),
        after: (id, anchor, desc) =>
          sql<StoredMessage>`SELECT ${columns} FROM messages WHERE conversation_id = ${id}
            AND msg_id > ${anchor} ORDER BY msg_id ASC LIMIT ${PAGE}`.pipe(
            Effect.map((rows) => ordered(rows, false, desc))
          ),
        last: (id, count, desc) =>
          sql<StoredMessage>`SELECT ${columns} FROM messages WHERE conversation_id = ${id}
            ORDER BY msg_id DESC LIMIT ${count}`.pipe(
            Effect.map((rows) => ordered(rows, true, desc))
          ),
        newestAfter: (id, floor, count) =>
          sql<StoredMessage>`SELECT ${columns} FROM messages WHERE conversation_id = ${id}
            AND msg_id > ${floor} ORDER BY msg_id DESC LIMIT ${count}`.pipe(
            Effect.map((rows) => ordered(rows, true, false))
          ),
        ping: sql`SELECT 1`.pipe(Effect.asVoid)
      })
    })
  )
}
