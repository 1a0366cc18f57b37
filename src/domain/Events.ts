/**
 * Live events (extension, docs/api.md "Live events"): what a connection that opted in with
 * `events=` on `/notify` receives beside messages. Live only: never stored, never replayed; a
 * client that reconnects reads the state again.
 */
import * as Schema from "effect/Schema"

export type ReadEvent = typeof ReadEvent.Type
export const ReadEvent = Schema.Struct({
  Event: Schema.Literal("read"),
  ConversationId: Schema.String,
  Session: Schema.String,
  ReadMsgId: Schema.NullOr(Schema.String),
  ReadSeq: Schema.Int
})

export const MemberChange = Schema.Literals(["joined", "left", "kicked"])
export type MemberChange = typeof MemberChange.Type

export type MemberEvent = typeof MemberEvent.Type
export const MemberEvent = Schema.Struct({
  Event: Schema.Literal("member"),
  ConversationId: Schema.String,
  Session: Schema.String,
  Change: MemberChange
})

export type ConversationEvent = typeof ConversationEvent.Type
export const ConversationEvent = Schema.Struct({
  Event: Schema.Literal("conversation"),
  ConversationId: Schema.String,
  IsArchive: Schema.Boolean,
  Name: Schema.String,
  Extra: Schema.String
})

export type TypingEvent = typeof TypingEvent.Type
export const TypingEvent = Schema.Struct({
  Event: Schema.Literal("typing"),
  ConversationId: Schema.String,
  Session: Schema.String
})

export const LiveEvent = Schema.Union([ReadEvent, MemberEvent, ConversationEvent, TypingEvent])
export type LiveEvent = typeof LiveEvent.Type

/** What a connection opts in to (`events=read,member,typing`). */
export const EVENT_KINDS = ["read", "member", "typing"] as const
export type EventKind = (typeof EVENT_KINDS)[number]

/** The opt-in that brings `event`: `conversation` events come with `member`. */
export const kindOf = (event: LiveEvent): EventKind => event.Event === "conversation" ? "member" : event.Event
