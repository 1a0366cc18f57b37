/**
 * This process's push connections, by connection id. A Mailbox entity that runs in the same
 * process as a connection hands it messages here directly; only connections on other nodes are
 * fed through the cluster's streaming RPC. Likewise a Conversation entity calls an active local
 * Mailbox directly. Measured in the group benchmark: cluster messaging (RPC client and server)
 * was the largest share of the server's CPU per delivery; the direct hand-off is one queue offer.
 */
import { type Cause, Context, Effect, Layer } from "effect"
import type { Queue } from "effect"
import { randomUUID } from "node:crypto"
import type { MsgData } from "../domain/Conversation.ts"
import type { PushEvent, SlowConsumer } from "./Protocol.ts"

export type ConnectionQueue = Queue.Queue<PushEvent, SlowConsumer | Cause.Done>

export class LocalConnections extends Context.Service<LocalConnections, {
  /** Identifies this process among the cluster's nodes. */
  readonly nodeId: string
  readonly queues: Map<string, ConnectionQueue>
  /**
   * Mailbox entities active in this process, by session. A Conversation entity on this node
   * delivers to them with a direct call instead of a cluster message (see ConversationEntity).
   */
  readonly mailboxes: Map<string, (messages: ReadonlyArray<MsgData>) => void>
}>()("quick-im/push/LocalConnections") {
  static readonly layer = Layer.effect(
    LocalConnections,
    Effect.sync(() => LocalConnections.of({ nodeId: randomUUID(), queues: new Map(), mailboxes: new Map() }))
  )
}
