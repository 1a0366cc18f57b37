/**
 * Where each long-poll platform of a session stands: the last message its poller surely has. Kept
 * across passivation, restarts and a mailbox moving to another node, so a poller without a cursor
 * resumes from here.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as SqlClient from "effect/sql/SqlClient"
import type * as SqlError from "effect/sql/SqlError"
import { encode } from "../domain/MsgId.ts"

export class PollPositions extends Context.Service<PollPositions, {
  /**
   * The platform's position; on its first poll ever there is none, and one is written at once at
   * `now` (so should this node die before the client has received anything, the mailbox's next
   * host replays from there for a client that has no cursor to give). `known`: it was found.
   */
  readonly open: (
    session: string,
    platform: number,
    now: number
  ) => Effect.Effect<{ readonly position: string; readonly known: boolean }, SqlError.SqlError>
  readonly save: (session: string, platform: number, position: string) => Effect.Effect<void, SqlError.SqlError>
}>()("quick-im/storage/PollPositions") {
  static readonly layer = Layer.effect(
    PollPositions,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      return PollPositions.of({
        open: (session, platform, now) =>
          Effect.gen(function* () {
            const [row] = yield* sql<{ last_msg_id: string }>`
              SELECT last_msg_id FROM poll_positions WHERE session_id = ${session} AND platform = ${platform}`
            if (row !== undefined) return { position: row.last_msg_id, known: true }
            const start = encode({ millis: now, seq: 0, conversationType: 0, hash: 0 })
            yield* sql`INSERT INTO poll_positions (session_id, platform, last_msg_id)
              VALUES (${session}, ${platform}, ${start}) ON CONFLICT (session_id, platform) DO NOTHING`
            return { position: start, known: false }
          }),
        save: (session, platform, position) =>
          sql`INSERT INTO poll_positions (session_id, platform, last_msg_id) VALUES (${session}, ${platform}, ${position})
            ON CONFLICT (session_id, platform) DO UPDATE SET last_msg_id = EXCLUDED.last_msg_id, updated_at = now()`
            .pipe(Effect.asVoid)
      })
    })
  )
}
