/**
 * Domain shapes of conversations and messages, with the field names of the wire contract.
 * Shared by the HTTP contract, the Conversation entity protocol and clients.
 */
import * as Schema from "effect/Schema"
import { CONVERSATION_TYPE_MAX, MsgId } from "./MsgId.ts"

// NUL, or a UTF-16 surrogate not in a high-low pair: PostgreSQL refuses the first in text and
// both in jsonb, and the driver silently replaces lone surrogates in parameters.
const suspect = /[\u0000\ud800-\udfff]/
const unsafe = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

/** Whether a string can be stored and answered as it came: no NUL, no unpaired surrogate. */
export const isStorableText = (s: string) => !suspect.test(s) || !unsafe.test(s)

/**
 * The check every string of the wire contract carries: such a string is refused at the edge
 * (400, 10001) with a message naming `field`, instead of failing deep in a write.
 */
export const isStorable = (field: string) =>
  Schema.makeFilter<string>((s) =>
    isStorableText(s) || `${field} must not contain NUL characters or unpaired UTF-16 surrogates`
  )

export const ConversationId = Schema.String.check(
  Schema.isMinLength(1, { message: "conversation_id must not be empty" }),
  Schema.isMaxLength(128, { message: "conversation_id is longer than 128 characters" }),
  isStorable("conversation_id")
)

export const SessionId = Schema.String.check(
  Schema.isMinLength(1, { message: "session id must not be empty" }),
  Schema.isMaxLength(128, { message: "session id is longer than 128 characters" }),
  isStorable("session id")
)

/** int32 as the reference declares `Status` and `Type`. */
export const Int32 = Schema.Int.check(Schema.isBetween({ minimum: -2147483648, maximum: 2147483647 }))

/** int64 on the wire; the range check (0..15, the bits MsgId reserves) is a domain rule with its own code. */
export const ConversationType = Schema.Int

export const isConversationTypeInRange = (t: number) => t >= 0 && t <= CONVERSATION_TYPE_MAX

/**
 * One message as history and push return it (the document's MsgData), with our `Seq`: its gapless
 * position in the conversation (1, 2, 3, ...), so a client sees a gap when `Seq` jumps.
 */
export const MsgData = Schema.Struct({
  MsgId: MsgId,
  ConversationID: Schema.String,
  FromSession: Schema.String,
  SendTime: Schema.String,
  Status: Schema.Int,
  Type: Schema.Int,
  Content: Schema.String,
  Seq: Schema.Int
})
export type MsgData = typeof MsgData.Type

export const ConversationDetail = Schema.Struct({
  ConversationID: Schema.String,
  LastMsgID: Schema.NullOr(Schema.String),
  LastSendTime: Schema.NullOr(Schema.String),
  IsDelete: Schema.Boolean,
  ConversationType: Schema.Int,
  LastSendSession: Schema.NullOr(Schema.String),
  IsArchive: Schema.Boolean,
  // Extension (read state): the conversation's name and product data, and the caller's read state.
  Name: Schema.String,
  Extra: Schema.String,
  Unread: Schema.Int,
  ReadMsgId: Schema.NullOr(Schema.String)
})
export type ConversationDetail = typeof ConversationDetail.Type

// Failures the Conversation entity reports; mapped to codes at the HTTP edge.
export class ConversationNotFound extends Schema.TaggedError<ConversationNotFound>()("ConversationNotFound", {
  conversationId: Schema.String
}) {}

export class NotMember extends Schema.TaggedError<NotMember>()("NotMember", {
  conversationId: Schema.String,
  session: Schema.String
}) {}

/** The backend removed this session (kick): only the backend can bring it back (`inner/join_conversation`). */
export class RemovedFromConversation extends Schema.TaggedError<RemovedFromConversation>()("RemovedFromConversation", {
  conversationId: Schema.String,
  session: Schema.String
}) {}

/** Public joins are invite-only (`QUICKIM_PUBLIC_JOIN=invite`): a non-member needs the backend to add it. */
export class JoinNeedsInvitation extends Schema.TaggedError<JoinNeedsInvitation>()("JoinNeedsInvitation", {
  conversationId: Schema.String,
  session: Schema.String
}) {}

export class ConversationTypeOutOfRange
  extends Schema.TaggedError<ConversationTypeOutOfRange>()("ConversationTypeOutOfRange", {
    conversationType: Schema.Number
  }) {}

/**
 * The database refused a message's text as invalid data (a NUL or unpaired surrogate that got past
 * the edge): the send's own fault, answered once, and the conversation carries on.
 */
export class UnstorableMessage extends Schema.TaggedError<UnstorableMessage>()("UnstorableMessage", {
  conversationId: Schema.String
}) {}

export class EmptyMembers extends Schema.TaggedError<EmptyMembers>()("EmptyMembers", {}) {}

/**
 * The database could not be reached, or the connection broke before a write's outcome was known
 * (it may have committed): retry. A send retried with its client_msg_id is answered with its
 * original MsgId if it did commit, and is never stored twice.
 */
export class DatabaseUnavailable extends Schema.TaggedError<DatabaseUnavailable>()("DatabaseUnavailable", {}) {}
