/**
 * The Conversation entity's protocol: every write to a conversation goes through the one
 * entity that owns it (keyed by conversation id), which makes it the single writer.
 */
import * as Schema from "effect/Schema"
import * as ClusterSchema from "effect/cluster/ClusterSchema"
import * as Entity from "effect/cluster/Entity"
import * as Rpc from "effect/rpc/Rpc"
import {
  ConversationNotFound,
  ConversationTypeOutOfRange,
  DatabaseUnavailable,
  EmptyMembers,
  JoinNeedsInvitation,
  NotMember,
  RemovedFromConversation,
  UnstorableMessage
} from "../domain/Conversation.ts"

export const Create = Rpc.make("Create", {
  payload: {
    conversationType: Schema.Number,
    sessions: Schema.Array(Schema.String),
    name: Schema.optionalKey(Schema.String),
    extra: Schema.optionalKey(Schema.String)
  },
  error: Schema.Union([ConversationTypeOutOfRange, EmptyMembers, DatabaseUnavailable])
})

/**
 * `byBackend` (inner/join_conversation): adds the sessions whatever they did before and lifts their
 * bans. Without it (a session joining by itself, the public join_conversation) a banned session is
 * refused, and so is any non-member when public joins are invite-only; a member joining again is a
 * no-op. Absent means "by itself": the careful reading, for any caller that does not say.
 */
export const Join = Rpc.make("Join", {
  payload: { sessions: Schema.Array(Schema.String), byBackend: Schema.optionalKey(Schema.Boolean) },
  error: Schema.Union([
    ConversationNotFound,
    EmptyMembers,
    RemovedFromConversation,
    JoinNeedsInvitation,
    DatabaseUnavailable
  ])
})

/**
 * Leave (one session, by itself) and kick (`byBackend`, inner/kickout_conversation) both remove
 * members; a kick also bans the sessions from joining again by themselves.
 */
export const Remove = Rpc.make("Remove", {
  payload: { sessions: Schema.Array(Schema.String), byBackend: Schema.optionalKey(Schema.Boolean) },
  error: Schema.Union([ConversationNotFound, EmptyMembers, DatabaseUnavailable])
})

export const SentMessage = Schema.Struct({
  msgId: Schema.String,
  seq: Schema.Number,
  sendTime: Schema.String,
  duplicate: Schema.Boolean
})
export type SentMessage = typeof SentMessage.Type

export const Send = Rpc.make("Send", {
  payload: {
    session: Schema.String,
    status: Schema.Number,
    type: Schema.Number,
    content: Schema.String,
    clientMsgId: Schema.optionalKey(Schema.String)
  },
  success: SentMessage,
  error: Schema.Union([ConversationNotFound, NotMember, UnstorableMessage, DatabaseUnavailable])
})

/** What `MarkRead` answers: the caller's read position after it, and its unread count then. */
export const ReadState = Schema.Struct({
  readMsgId: Schema.NullOr(Schema.String),
  readSeq: Schema.Number,
  unread: Schema.Number
})
export type ReadState = typeof ReadState.Type

/**
 * Moves `session`'s read position forward to the last message at or before `msgId` (never back).
 * When it moved, every member's connections that opted in hear a `read` event.
 */
export const MarkRead = Rpc.make("MarkRead", {
  payload: { session: Schema.String, msgId: Schema.String },
  success: ReadState,
  error: Schema.Union([ConversationNotFound, NotMember, DatabaseUnavailable])
})

/** `session` is typing: the other members hear it, at most once per 2 s per session. */
export const Typing = Rpc.make("Typing", {
  payload: { session: Schema.String },
  error: Schema.Union([ConversationNotFound, NotMember])
})

/** Sets the conversation's name and/or extra data (inner/update_conversation); members hear a `conversation` event. */
export const Update = Rpc.make("Update", {
  payload: { name: Schema.optionalKey(Schema.String), extra: Schema.optionalKey(Schema.String) },
  error: Schema.Union([ConversationNotFound, DatabaseUnavailable])
})

/**
 * The conversation's fields changed outside the entity (inner/set_archive_conversations, one
 * transaction over many conversations): it reads them and tells its members (`conversation` event).
 */
export const Announce = Rpc.make("Announce", {
  error: Schema.Union([ConversationNotFound, DatabaseUnavailable])
})

/**
 * Sent by a conversation to itself when it stops (a node stopping or handing its shards over)
 * with hand-overs still pending: persisted, so the conversation's next host receives it, starts
 * the conversation at once and hands the messages of the resume window over again (repeats are
 * dropped by MsgId). The stopping node therefore never waits for a Mailbox that moves with it.
 */
export const Redeliver = Rpc.make("Redeliver").annotate(ClusterSchema.Persisted, true)

/**
 * Sent by a conversation to itself, fire and forget, while it takes its sends by direct call
 * (LocalConversations): the cluster passivates an entity that has seen no message of its own for
 * `QUICKIM_ENTITY_IDLE`, and this is such a message.
 */
export const Touch = Rpc.make("Touch")

export const Conversation = Entity.make("Conversation", [
  Create,
  Join,
  Remove,
  Send,
  Redeliver,
  MarkRead,
  Typing,
  Update,
  Announce,
  Touch
])
