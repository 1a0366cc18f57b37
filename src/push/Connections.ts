/**
 * This process's push connections, by connection id, whatever their transport. A Mailbox entity
 * in the same process hands a connection messages directly, by a plain function call; a mailbox on
 * another node reaches it through the node link (MailboxRelay). Also the signal that ends every
 * push connection when this node starts stopping.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type { MsgData } from "../domain/Conversation.ts"
import type { LiveEvent } from "../domain/Events.ts"
import type { SlowConsumer } from "./Protocol.ts"

/** Where a connection takes its messages. */
export interface ConnectionSink {
  /**
   * Hands over messages in order, from the mailbox activation `incarnation`; false when the
   * connection's buffer is full (it is then failed).
   */
  readonly push: (messages: ReadonlyArray<MsgData>, incarnation: string) => boolean
  /** Ends the connection with a reason the client acts on (it resumes by cursor). */
  readonly fail: (error: SlowConsumer) => void
  /** A live event the connection opted in to: written if its buffer has room, else dropped (live only). */
  readonly event: (event: LiveEvent) => void
}

export class Connections extends Context.Service<Connections, {
  /** Makes `sink` reachable under `id` until the returned function is called. */
  readonly add: (id: string, sink: ConnectionSink) => () => void
  readonly get: (id: string) => ConnectionSink | undefined
  /**
   * Done once this node starts stopping (its HTTP server closes, or at the latest when this layer
   * is released): every push connection ends then, so that its client resumes on another node at
   * once instead of holding the server's close open.
   */
  readonly stopping: Deferred.Deferred<void>
  /** Completes `stopping` and calls every `onStop` callback (once). */
  readonly stop: () => void
  /** Calls `f` when this node starts stopping, unless the returned function was called before. */
  readonly onStop: (f: () => void) => () => void
}>()("quick-im/push/Connections") {
  static readonly layer = Layer.effect(
    Connections,
    Effect.gen(function* () {
      const stopping = Deferred.makeUnsafe<void>()
      const callbacks = new Set<() => void>()
      const stop = () => {
        if (!Deferred.doneUnsafe(stopping, Exit.void)) return
        for (const f of callbacks) f()
        callbacks.clear()
      }
      yield* Effect.addFinalizer(() => Effect.sync(stop))
      const sinks = new Map<string, ConnectionSink>()
      return Connections.of({
        add: (id, sink) => {
          sinks.set(id, sink)
          return () => {
            if (sinks.get(id) === sink) sinks.delete(id)
          }
        },
        get: (id) => sinks.get(id),
        stopping,
        stop,
        onStop: (f) => {
          if (Deferred.isDoneUnsafe(stopping)) {
            f()
            return () => {}
          }
          // Each registration its own entry: the same function may be registered twice.
          const entry = () => f()
          callbacks.add(entry)
          return () => callbacks.delete(entry)
        }
      })
    })
  )
}
