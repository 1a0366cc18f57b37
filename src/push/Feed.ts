/**
 * One push connection's message stream, the same for every transport: attach to the session's
 * mailbox first, then (with a cursor) replay what the client may have missed, then live messages,
 * dropping live ones the replay already gave. Per-conversation order holds throughout.
 */
import { type Cause, Context, Effect, Layer, Queue, Result, Stream } from "effect"
import { randomUUID } from "node:crypto"
import type { MsgData } from "../domain/Conversation.ts"
import { Replay } from "../storage/Replay.ts"
import { AppConfig } from "../Config.ts"
import { type ConnectionQueue, LocalConnections } from "./LocalConnections.ts"
import { Mailbox, type PushEvent, type SlowConsumer } from "./Protocol.ts"

export class Feed extends Context.Service<Feed, {
  readonly open: (session: string, platform: number, cursor: string | undefined) => Stream.Stream<MsgData, unknown>
}>()("quick-im/push/Feed") {
  static readonly layer = Layer.effect(
    Feed,
    Effect.gen(function* () {
      const mailboxes = yield* Mailbox.client
      const replay = yield* Replay
      const here = yield* LocalConnections
      const buffer = (yield* AppConfig).connectionBuffer
      return Feed.of({
        open: (session, platform, cursor) =>
          Stream.unwrap(Effect.gen(function* () {
            const connectionId = randomUUID()
            // A mailbox on this node fills `queue` directly; one elsewhere streams over the cluster.
            const queue: ConnectionQueue = yield* Queue.bounded<PushEvent, SlowConsumer | Cause.Done>(buffer)
            here.queues.set(connectionId, queue)
            yield* Effect.addFinalizer(() => Effect.sync(() => here.queues.delete(connectionId)))
            const remote = yield* mailboxes(session).Subscribe({ connectionId, platform, nodeId: here.nodeId }, {
              asQueue: true
            })
            // The first event says the connection is registered: from here on nothing committed is missed.
            yield* Queue.take(remote)
            const replayed = new Set<string>()
            const backlog = cursor === undefined
              ? Stream.empty
              : replay.after(session, cursor).pipe(Stream.tap((m) => Effect.sync(() => replayed.add(m.MsgId))))
            const fresh = Stream.merge(Stream.fromQueue(queue), Stream.fromQueue(remote)).pipe(
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
