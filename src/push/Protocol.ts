/**
 * The Mailbox entity's protocol. One Mailbox per session (`sid`) knows the session's live
 * connections, on any node, and delivers to them in one order. Conversations hand it committed
 * messages with `Deliver`; gateways attach a connection with the streaming `Subscribe`; long-poll
 * clients take messages with `Poll`.
 */
import * as Schema from "effect/Schema"
import * as ClusterSchema from "effect/cluster/ClusterSchema"
import * as Entity from "effect/cluster/Entity"
import * as Rpc from "effect/rpc/Rpc"
import { MsgData } from "../domain/Conversation.ts"
import { LiveEvent } from "../domain/Events.ts"

/**
 * Committed messages of one conversation, in commit order. `gap`: the conversation dropped
 * messages for this session before these (they came too late, see ConversationEntity): every
 * connection subscribes again and replays, and each poll platform replays from its last answer.
 */
export const Deliver = Rpc.make("Deliver", {
  payload: { messages: Schema.Array(MsgData), gap: Schema.optionalKey(Schema.Boolean) }
})

/** `incarnation` names this activation of the mailbox; every batch it pushes carries it too (see Feed). */
export const Ready = Schema.TaggedStruct("Ready", { incarnation: Schema.String })
export const Pushed = Schema.TaggedStruct("Pushed", { message: MsgData })
/** A live event for a connection that opted in to its kind. */
export const Announced = Schema.TaggedStruct("Announced", { event: LiveEvent })
/**
 * A subscription first yields `Ready` (the connection is registered: nothing delivered from now on
 * is missed), then messages and the live events it opted in to.
 */
export const PushEvent = Schema.Union([Ready, Pushed, Announced])
export type PushEvent = typeof PushEvent.Type

/** The connection's buffer overflowed: the consumer is too slow. The client resumes by cursor. */
export class SlowConsumer extends Schema.TaggedError<SlowConsumer>()("SlowConsumer", {
  buffered: Schema.Number
}) {}

/**
 * Subscriptions and waiting polls never end by themselves, so both are interrupted as soon as
 * their mailbox starts to terminate (its shard moves to a joining node, or this node stops):
 * otherwise the shard, and every conversation in it, waits out Effect cluster's entity
 * termination timeout (15 s) before the new owner may serve it. The connection subscribes again
 * (Feed) and a poll answers 503; both resume by cursor on the new owner.
 */
export const Subscribe = Rpc.make("Subscribe", {
  /**
   * `nodeId`: where the connection lives; on the mailbox's own node messages bypass the stream.
   * `inbox`: that node's NodeInbox (multi-node mode); messages go there and the stream only says
   * `Ready` and, by ending, that the connection must subscribe again.
   */
  payload: {
    connectionId: Schema.String,
    platform: Schema.Number,
    nodeId: Schema.String,
    inbox: Schema.optionalKey(Schema.String),
    /** The live event kinds the connection opted in to (`events=` on `/notify`). */
    events: Schema.optionalKey(Schema.Array(Schema.String))
  },
  success: PushEvent,
  error: SlowConsumer,
  stream: true
}).annotate(ClusterSchema.InterruptOnTermination, true)

/**
 * Long-poll: the next message for this (session, platform), waiting up to `waitMs`. The mailbox
 * keeps the platform's position between polls; `cursor` (a MsgId) restarts from there.
 */
export const Poll = Rpc.make("Poll", {
  payload: {
    platform: Schema.Number,
    cursor: Schema.optionalKey(Schema.String),
    waitMs: Schema.Number,
    /** The live event kinds this poll opted in to: an answer may be such an event instead of a message. */
    events: Schema.optionalKey(Schema.Array(Schema.String))
  },
  success: Schema.NullOr(Schema.Union([MsgData, LiveEvent]))
}).annotate(ClusterSchema.InterruptOnTermination, true)

/**
 * A live event for the session's connections that opted in to its kind: sent as an entity message
 * only where no relay could take it (the mailbox's node unknown or moving); never persisted.
 */
export const Announce = Rpc.make("Announce", { payload: { event: LiveEvent } })

export const Mailbox = Entity.make("Mailbox", [Deliver, Subscribe, Poll, Announce])
