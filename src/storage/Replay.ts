/**
 * Resume by cursor: every message of a session's current conversations that a client holding
 * MsgId `cursor` may not have seen, per conversation in order. README ("Why resume loses
 * nothing") gives the argument for the window.
 */
import { Context, Duration, Effect, Layer, Option, Stream } from "effect"
import { SqlClient, type SqlError } from "effect/sql"
import { AppConfig } from "../Config.ts"
import { conversationHash, decode, encode } from "../domain/MsgId.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { type StoredMessage, toMsgData } from "./ConversationStore.ts"

const PAGE = 500

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
          // The cursor's own conversation was seen in order up to the cursor: nothing of it before.
          const hash = decode(cursor).hash
          const candidates = yield* sql<{ conversation_id: string }>`
            SELECT m.conversation_id FROM conversation_members cm
            JOIN messages m ON m.conversation_id = cm.conversation_id AND m.msg_id = ${cursor}
            WHERE cm.session_id = ${session}`
          const own = candidates.find((c) => conversationHash(c.conversation_id) === hash)?.conversation_id ?? ""
          // One order across conversations (by MsgId), so that any message a client received during
          // a replay is itself a safe cursor: everything after it in the replay sorts above it.
          return Stream.paginate(
            { id: floor, conversation: "" },
            (after: { readonly id: string; readonly conversation: string }) =>
              sql<
                StoredMessage
              >`SELECT m.msg_id, m.conversation_id, m.from_session, m.send_time, m.status, m.type, m.content
                FROM conversation_members cm
                JOIN conversations c ON c.id = cm.conversation_id AND c.last_msg_id > ${floor}
                JOIN messages m ON m.conversation_id = cm.conversation_id AND m.msg_id > ${floor}
                  AND m.seq > cm.joined_seq
                WHERE cm.session_id = ${session}
                  AND NOT (m.conversation_id = ${own} AND m.msg_id <= ${cursor})
                  AND (m.msg_id, m.conversation_id) > (${after.id}, ${after.conversation})
                ORDER BY m.msg_id, m.conversation_id LIMIT ${PAGE}`.pipe(
                Effect.map((rows) => {
                  const last = rows[rows.length - 1]
                  return [
                    rows.map(toMsgData),
                    rows.length === PAGE
                      ? Option.some({ id: last.msg_id, conversation: last.conversation_id })
                      : Option.none()
                  ] as const
                })
              )
          )
        }))

      return Replay.of({ after })
    })
  )
}
