/**
 * One push connection's message stream, the same for every transport: attach to the session's
 * mailbox first, then (with a cursor) replay what the client may have missed, then live messages,
 * dropping live ones the replay already gave. Per-conversation order holds throughout.
 */
import { Context, Effect, Layer, Queue, Result, Stream } from "effect"
import { randomUUID } from "node:crypto"
import type { MsgData } from "../domain/Conversation.ts"
import { Replay } from "../storage/Replay.ts"
import { Mailbox } from "./Protocol.ts"

export class Feed extends Context.Service<Feed, {
  readonly open: (session: string, platform: number, cursor: string | undefined) => Stream.Stream<MsgData, unknown>
}>()("quick-im/push/Feed") {
  static readonly layer = Layer.effect(
    Feed,
    Effect.gen(function* () {
      const mailboxes = yield* Mailbox.client
      const replay = yield* Replay
      return Feed.of({
        open: (session, platform, cursor) =>
          Stream.unwrap(Effect.gen(function* () {
            const live = yield* mailboxes(session).Subscribe({ connectionId: randomUUID(), platform }, {
              asQueue: true
            })
            // The first event says the connection is registered: from here on nothing committed is missed.
            yield* Queue.take(live)
            const replayed = new Set<string>()
            const backlog = cursor === undefined
              ? Stream.empty
              : replay.after(session, cursor).pipe(Stream.tap((m) => Effect.sync(() => replayed.add(m.MsgId))))
            const fresh = Stream.fromQueue(live).pipe(
              Stream.filterMap((event) =>
                event._tag === "Pushed" && !replayed.has(event.message.MsgId)
                  ? Result.succeed(event.message)
                  : Result.fail(undefined)
              )
            )
            return Stream.concat(backlog, fresh)
          }))
      })
    })
  )
}
