/**
 * Resume by cursor: every message of a session's current conversations that a client holding
 * MsgId `cursor` may not have seen, per conversation in order. README ("Why resume loses
 * nothing") gives the argument for the window.
 */
import { Context, Duration, Effect, Layer, Option, Stream } from "effect"
import { SqlClient, type SqlError } from "effect/sql"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { conversationHash, decode, encode } from "../domain/MsgId.ts"

const PAGE = 500

interface Row {
  readonly msg_id: string
  readonly conversation_id: string
  readonly from_session: string
  readonly send_time: string
  readonly status: number
  readonly type: number
  readonly content: string
}

const toMsgData = (r: Row): MsgData => ({
  MsgId: r.msg_id,
  ConversationID: r.conversation_id,
  FromSession: r.from_session,
  SendTime: r.send_time,
  Status: Number(r.status),
  Type: Number(r.type),
  Content: r.content
})

/** The smallest MsgId of millisecond `millis`: ids compare as strings, across conversations. */
export const floorOf = (cursor: string, window: Duration.Duration) =>
  encode({
    millis: Math.max(0, decode(cursor).millis - Duration.toMillis(window)),
    seq: 0,
    conversationType: 0,
    hash: 0
  })

export class Replay extends Context.Service<Replay, {
  /** Messages after `cursor` (minus the resume window) in the session's current conversations. */
  readonly after: (session: string, cursor: string) => Stream.Stream<MsgData, SqlError.SqlError>
}>()("quick-im/Replay") {
  static readonly layer = Layer.effect(
    Replay,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const config = yield* AppConfig

      const after = (session: string, cursor: string) =>
        Stream.unwrap(Effect.gen(function* () {
          const floor = floorOf(cursor, config.resumeWindow)
          // Only conversations with something at or after the floor; `joined_seq` hides what came before joining.
          const conversations = yield* sql<{ conversation_id: string; joined_seq: string }>`
            SELECT cm.conversation_id, cm.joined_seq FROM conversation_members cm
            JOIN conversations c ON c.id = cm.conversation_id
            WHERE cm.session_id = ${session} AND c.last_msg_id > ${floor}
            ORDER BY cm.conversation_id`
          // The cursor's own conversation was seen in order up to the cursor: start right after it there.
          const hash = decode(cursor).hash
          const start = new Map<string, string>()
          for (const c of conversations) {
            if (conversationHash(c.conversation_id) !== hash) continue
            const hit =
              yield* sql`SELECT 1 FROM messages WHERE conversation_id = ${c.conversation_id} AND msg_id = ${cursor}`
            if (hit.length > 0) start.set(c.conversation_id, cursor)
          }
          return Stream.fromIterable(conversations).pipe(
            Stream.flatMap((c) =>
              Stream.paginate(start.get(c.conversation_id) ?? floor, (from: string) =>
                sql<Row>`SELECT msg_id, conversation_id, from_session, send_time, status, type, content
                  FROM messages WHERE conversation_id = ${c.conversation_id} AND msg_id > ${from}
                  AND seq > ${Number(c.joined_seq)} ORDER BY msg_id LIMIT ${PAGE}`.pipe(
                  Effect.map((rows) =>
                    [
                      rows.map(toMsgData),
                      rows.length === PAGE ? Option.some(rows[rows.length - 1].msg_id) : Option.none()
                    ] as const
                  )
                )), { concurrency: 1 })
          )
        }))

      return Replay.of({ after })
    })
  )
}
