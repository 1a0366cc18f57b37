/**
 * The node-to-node link. Every node in multi-node mode hosts one `NodeInbox` entity, keyed by its
 * runner address and placed in a shard group only that node serves, so a message to
 * `NodeInbox(address)` always lands on that node: an addressable node built from Effect cluster's
 * own routing, not a side channel. Other nodes batch into it (NodeOutbox) what would otherwise be
 * one cluster message per entity message:
 *
 * - `Relay`: pushes for this node's connections (from mailboxes elsewhere), and committed messages
 *   for mailboxes whose shards this node holds (from conversations elsewhere);
 * - `SendMany`: sends for conversations whose shards this node holds (from gateways elsewhere).
 *
 * Measured: a cluster message costs the same CPU whether it carries one delivery or fifty, so under
 * load one message per node pair and round trip replaces one per entity message. Routing is by
 * the nodes' reports (ShardRoutes), checked here against the shards this node really holds: what
 * is not here is handed back, and the sender falls back to the ordinary entity message.
 */
import { Cause, Effect, Option, Schema } from "effect"
import { ClusterSchema, Entity } from "effect/cluster"
import { Rpc } from "effect/rpc"
import { Conversation, SentMessage } from "../conversation/Protocol.ts"
import { ConversationNotFound, MsgData, NotMember } from "../domain/Conversation.ts"
import { LocalConnections } from "../push/LocalConnections.ts"
import { SlowConsumer } from "../push/Protocol.ts"
import { ShardRoutes } from "./ShardRoutes.ts"

/** The shard group only the node at runner `address` serves. */
export const inboxGroup = (address: string) => `node:${address}`

export const PushItem = Schema.Struct({
  connections: Schema.Array(Schema.String),
  /** The sending mailbox's activation (see Feed). */
  incarnation: Schema.String,
  messages: Schema.Array(MsgData)
})

export const DeliverItem = Schema.Struct({
  sessions: Schema.Array(Schema.String),
  messages: Schema.Array(MsgData)
})

export const Relay = Rpc.make("Relay", {
  payload: { pushes: Schema.Array(PushItem), delivers: Schema.Array(DeliverItem) },
  /** Per deliver item, the sessions whose mailbox is not active here: they take the entity message. */
  success: Schema.Array(Schema.Array(Schema.String))
})

export const SendItem = Schema.Struct({
  conversationId: Schema.String,
  session: Schema.String,
  status: Schema.Number,
  type: Schema.Number,
  content: Schema.String,
  clientMsgId: Schema.optionalKey(Schema.String)
})
export type SendItem = typeof SendItem.Type

export const SendOutcome = Schema.Union([
  Schema.TaggedStruct("Sent", SentMessage.fields),
  Schema.TaggedStruct("Refused", { error: Schema.Union([ConversationNotFound, NotMember]) }),
  /** This node does not hold the conversation's shard (any more): the sender uses the entity message. */
  Schema.TaggedStruct("NotHere", {}),
  /** The conversation failed the write (a defect there); the sender answers with a defect too. */
  Schema.TaggedStruct("Failed", { message: Schema.String })
])
export type SendOutcome = typeof SendOutcome.Type

export const SendMany = Rpc.make("SendMany", {
  payload: { items: Schema.Array(SendItem) },
  success: Schema.Array(SendOutcome)
})

export const NodeInbox = Entity.make("NodeInbox", [Relay, SendMany]).annotate(ClusterSchema.ShardGroup, inboxGroup)

const notHere: SendOutcome = { _tag: "NotHere" }

/**
 * Serves what other nodes relay. `Relay` is synchronous, so each sender's relays (one in flight at
 * a time) are handled in order; `SendMany` waits for commits, and runs beside them.
 */
export const NodeInboxLive = NodeInbox.toLayer(
  Effect.gen(function* () {
    const here = yield* LocalConnections
    const routes = yield* ShardRoutes
    const conversations = yield* Conversation.client
    const buffer = here.buffer
    here.inboxes.active++
    yield* Effect.addFinalizer(() => Effect.sync(() => here.inboxes.active--))
    return NodeInbox.of({
      Relay: ({ payload }) =>
        Effect.sync(() => {
          for (const item of payload.pushes) {
            for (const id of item.connections) {
              const sink = here.sinks.get(id)
              if (sink === undefined) continue // closed meanwhile: its mailbox forgets it when its stream ends
              let taken = false
              try {
                taken = sink.push(item.messages, item.incarnation)
              } catch {
                // a transport that throws is treated like a full one
              }
              if (!taken) sink.fail(new SlowConsumer({ buffered: buffer }))
            }
          }
          return payload.delivers.map((item) => {
            const missing: Array<string> = []
            for (const session of item.sessions) {
              // A mailbox active here on a shard this node holds takes the messages by a direct call,
              // as from a conversation on this node; any other goes back for the entity message, which
              // also wakes a passivated mailbox.
              const direct = routes.holds(session) ? here.mailboxes.get(session) : undefined
              if (direct === undefined) missing.push(session)
              else direct(item.messages)
            }
            return missing
          })
        }),
      SendMany: ({ payload }) =>
        Effect.forEach(
          payload.items,
          ({ conversationId, ...send }) =>
            routes.holds(conversationId)
              ? conversations(conversationId).Send(send).pipe(
                Effect.matchCause({
                  onSuccess: (sent): SendOutcome => ({ _tag: "Sent", ...sent }),
                  onFailure: (cause): SendOutcome => {
                    const error = Option.getOrUndefined(Cause.findErrorOption(cause))
                    return error instanceof ConversationNotFound || error instanceof NotMember
                      ? { _tag: "Refused", error }
                      : { _tag: "Failed", message: String(Cause.squash(cause)) }
                  }
                })
              )
              : Effect.succeed(notHere),
          { concurrency: "unbounded" }
        )
    })
  }),
  { concurrency: "unbounded" }
)
