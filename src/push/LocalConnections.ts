/**
 * This process's push connections, by connection id. A Mailbox entity that runs in the same
 * process as a connection hands it messages here directly, by a plain function call; only
 * connections on other nodes are fed through the cluster's streaming RPC. Likewise a Conversation
 * entity calls an active local Mailbox directly. Measured: cluster messaging per delivery was the
 * largest share of the group benchmark's CPU, and a queue plus stream stages per connection the
 * largest share of the pairs benchmark's delivery cost; the direct path is a few function calls.
 */
import { Context, Deferred, Effect, Exit, Layer, Option } from "effect"
import { AppConfig } from "../Config.ts"
import { randomUUID } from "node:crypto"
import type { MsgData } from "../domain/Conversation.ts"
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
}

export class LocalConnections extends Context.Service<LocalConnections, {
  /** Identifies this process among the cluster's nodes. */
  readonly nodeId: string
  /** Multi-node mode: this node's runner address, the id of its NodeInbox entity. */
  readonly inbox: string | undefined
  /** Messages a connection may have waiting before it is cut off as a slow consumer. */
  readonly buffer: number
  readonly sinks: Map<string, ConnectionSink>
  /**
   * Mailbox entities active in this process, by session. A Conversation entity on this node
   * delivers to them with a direct call instead of a cluster message (see ConversationEntity).
   */
  readonly mailboxes: Map<string, (messages: ReadonlyArray<MsgData>, gap?: boolean) => void>
  /** Open push connections by protocol (poll: requests waiting), for the cluster view. */
  readonly open: { ws: number; sse: number; poll: number }
  /** Active NodeInbox entities in this process (0 or 1), left out of the cluster view's conversation count. */
  readonly inboxes: { active: number }
  /**
   * Done once this node starts stopping (its HTTP server closes, or at the latest when this layer
   * is released): every push connection ends then, so that its client resumes on another node at
   * once instead of holding the server's close open (WebSocketGateway, Feed, NotifyRoutes).
   */
  readonly stopping: Deferred.Deferred<void>
}>()("quick-im/push/LocalConnections") {
  static readonly layer = Layer.effect(
    LocalConnections,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const stopping = Deferred.makeUnsafe<void>()
      yield* Effect.addFinalizer(() => Effect.sync(() => Deferred.doneUnsafe(stopping, Exit.void)))
      return LocalConnections.of({
        nodeId: randomUUID(),
        inbox: Option.getOrUndefined(Option.map(config.runnerPort, (port) => `${config.runnerHost}:${port}`)),
        buffer: config.connectionBuffer,
        sinks: new Map(),
        mailboxes: new Map(),
        open: { ws: 0, sse: 0, poll: 0 },
        inboxes: { active: 0 },
        stopping
      })
    })
  )
}
