/**
 * One push connection's messages, the same for every transport: attach to the session's mailbox
 * first, then (with a cursor) replay what the client may have missed, then live messages,
 * dropping live ones the replay already gave. Per-conversation order holds throughout.
 *
 * `attach` hands messages to a plain function (the WebSocket gateway writes frames from it, with
 * no queue or fiber between the Conversation entity's commit and the socket); `open` offers them
 * as a Stream over a bounded queue (SSE).
 */
import { Cause, Context, Deferred, Effect, Exit, Layer, Queue, type Scope, Stream } from "effect"
import { randomUUID } from "node:crypto"
import type { MsgData } from "../domain/Conversation.ts"
import { Replay } from "../storage/Replay.ts"
import { AppConfig } from "../Config.ts"
import { type ConnectionSink, LocalConnections } from "./LocalConnections.ts"
import { Mailbox, SlowConsumer } from "./Protocol.ts"

/** Writes messages to a transport; false when its buffer is full (the connection is then cut as a slow consumer). */
export type Write = (messages: ReadonlyArray<MsgData>) => boolean

export class Feed extends Context.Service<Feed, {
  /** Feeds `write` until the scope closes; fails with SlowConsumer, or ends when the mailbox's subscription does. */
  readonly attach: (
    session: string,
    platform: number,
    cursor: string | undefined,
    write: Write
  ) => Effect.Effect<void, unknown, Scope.Scope>
  readonly open: (session: string, platform: number, cursor: string | undefined) => Stream.Stream<MsgData, unknown>
}>()("quick-im/push/Feed") {
  static readonly layer = Layer.effect(
    Feed,
    Effect.gen(function* () {
      const mailboxes = yield* Mailbox.client
      const replay = yield* Replay
      const here = yield* LocalConnections
      const buffer = (yield* AppConfig).connectionBuffer

      const attach = Effect.fnUntraced(function* (
        session: string,
        platform: number,
        cursor: string | undefined,
        write: Write
      ) {
        const connectionId = randomUUID()
        const ended = yield* Deferred.make<void, unknown>()
        const slow = () => Deferred.doneUnsafe(ended, Exit.fail(new SlowConsumer({ buffered: buffer })))
        // While a replay runs, live messages wait here (bounded); afterwards those the replay gave are dropped.
        let held: Array<MsgData> | undefined = cursor === undefined ? undefined : []
        let replayed: Set<string> | undefined = undefined
        const sink: ConnectionSink = {
          push: (messages) => {
            if (held !== undefined) {
              if (held.length + messages.length > buffer) return false
              for (const m of messages) held.push(m)
              return true
            }
            if (replayed === undefined) return write(messages)
            const seen = replayed
            const fresh = messages.filter((m) => !seen.has(m.MsgId))
            return fresh.length === 0 || write(fresh)
          },
          fail: (error) => Deferred.doneUnsafe(ended, Exit.fail(error))
        }
        here.sinks.set(connectionId, sink)
        yield* Effect.addFinalizer(() => Effect.sync(() => here.sinks.delete(connectionId)))
        const remote = yield* mailboxes(session).Subscribe({ connectionId, platform, nodeId: here.nodeId }, {
          asQueue: true
        })
        // The first event says the connection is registered: from here on nothing committed is missed.
        yield* Queue.take(remote)
        // A mailbox on another node streams its messages; one on this node calls `sink` directly and
        // its stream only ends with the subscription.
        yield* Stream.fromQueue(remote).pipe(
          Stream.runForEachArray((events) =>
            Effect.sync(() => {
              const messages = events.flatMap((e) => e._tag === "Pushed" ? [e.message] : [])
              if (messages.length > 0 && !sink.push(messages)) slow()
            })
          ),
          Effect.exit,
          Effect.flatMap((exit) => Deferred.done(ended, exit)),
          Effect.forkScoped
        )
        if (cursor !== undefined) {
          const seen = new Set<string>()
          yield* replay.after(session, cursor).pipe(
            Stream.runForEachArray((messages) =>
              Effect.suspend(() => {
                for (const m of messages) seen.add(m.MsgId)
                return write(messages) ? Effect.void : Effect.fail(new SlowConsumer({ buffered: buffer }))
              })
            )
          )
          const rest = held!.filter((m) => !seen.has(m.MsgId))
          held = undefined
          replayed = seen
          if (rest.length > 0 && !write(rest)) slow()
        }
        return yield* Deferred.await(ended)
      })

      return Feed.of({
        attach,
        open: (session, platform, cursor) =>
          Stream.unwrap(Effect.gen(function* () {
            const queue = yield* Queue.bounded<MsgData, unknown | Cause.Done>(buffer)
            const write: Write = (messages) => {
              for (const m of messages) if (!Queue.offerUnsafe(queue, m)) return false
              return true
            }
            yield* attach(session, platform, cursor, write).pipe(Queue.into(queue), Effect.forkScoped)
            return Stream.fromQueue(queue)
          }))
      })
    })
  )
}
