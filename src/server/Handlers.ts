/**
 * HTTP handlers: translate requests into Conversation entity messages (writes) and SQL reads.
 * Business rules live in the entity; here only the caller's identity and membership for reads.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import { randomUUID } from "node:crypto"
import { ServedApi } from "../api/Api.ts"
import { type ApiError, ErrorCode, Unavailable } from "../api/Errors.ts"
import { CurrentSession } from "../api/Security.ts"
import { NodeStatus } from "../cluster/NodeStatus.ts"
import { Conversation } from "../conversation/Protocol.ts"
import { KnownConversations } from "../conversation/KnownConversations.ts"
import { ConversationNotFound, type MsgData, NotMember } from "../domain/Conversation.ts"
import { ConversationStore, PAGE } from "../storage/ConversationStore.ts"
import { ReadStore } from "../storage/ReadStore.ts"
import { decodeInboxCursor, decodeMembersCursor, encodeInboxCursor, encodeMembersCursor } from "./Cursors.ts"
import { DatabaseHealth } from "../storage/DatabaseHealth.ts"
import { AuthorizationLive, InnerGuardLive } from "../access/Access.ts"
import { mapped, mappedFor } from "./ErrorMapping.ts"
import { AppConfig } from "../Config.ts"
import type * as HttpServerRequest from "effect/http/HttpServerRequest"
import { RateLimits } from "../access/RateLimits.ts"
import { Tokens } from "../access/Tokens.ts"
import { Revocations } from "../access/Revocations.ts"

/** Reads are for current members only; a non-member learns whether the conversation exists. */
const requireMember = Effect.fnUntraced(function* (store: ConversationStore["Service"], conversationId: string) {
  const { sid } = yield* CurrentSession
  if (yield* store.isMember(conversationId, sid)) return
  const exists = yield* store.exists([conversationId])
  return yield* exists.length > 0
    ? Effect.fail(new NotMember({ conversationId, session: sid }))
    : Effect.fail(new ConversationNotFound({ conversationId }))
})

type Check = (payload: any) => Effect.Effect<void, ApiError, CurrentSession | HttpServerRequest.HttpServerRequest>

/**
 * Bounds checked before a handler's own work, by endpoint: the caller's rate (RateLimits) and that
 * the conversation named exists (KnownConversations), so that no Conversation entity is started for
 * an id nobody created. `send_msg` checks the same and a message's size in its own route (SendRoute).
 */
const bounded = (checks: Record<string, Check>) => <H extends object>(handlers: H): H => {
  const out: Record<string, unknown> = { ...(handlers as Record<string, unknown>) }
  for (const [name, check] of Object.entries(checks)) {
    const handler = (handlers as Record<string, (request: any) => Effect.Effect<unknown, unknown, unknown>>)[name]
    out[name] = (request: any) => Effect.andThen(check(request.payload), handler(request))
  }
  return out as H
}

/** The bounds' services, and a check that the conversation a payload names exists. */
const boundsOf = Effect.gen(function* () {
  const limits = yield* RateLimits
  const known = yield* KnownConversations
  const exists = (payload: { readonly conversation_id: string }) =>
    known.has(payload.conversation_id) ? Effect.void : known.require(payload.conversation_id).pipe(mapped)
  return { limits, known, exists }
})

const ConversationHandlers = HttpApiBuilder.group(
  ServedApi,
  "conversation",
  Effect.fn(function* (handlers) {
    const mapped = mappedFor(Option.isSome((yield* AppConfig).runnerPort))
    const store = yield* ConversationStore
    const conversations = yield* Conversation.client
    const { whileReachable } = yield* DatabaseHealth
    const { exists, known, limits } = yield* boundsOf
    const guarded = bounded({
      join_conversation: (payload) => Effect.andThen(limits.guard("joins"), exists(payload)),
      create_conversation: () => limits.guard("creates"),
      leave_conversation: exists
    })
    return handlers.handleAll(guarded({
      check_joined_conversation: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          return { code: 0 as const, data: { Joined: yield* store.isMember(payload.conversation_id, sid) } }
        }).pipe(mapped),
      get_joined_conversation: () =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          return { code: 0 as const, data: { Conversations: yield* store.joined(sid) } }
        }).pipe(mapped),
      get_conversation_detail: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          const detail = yield* store.detail(payload.conversation_id, sid)
          if (detail._tag === "None") {
            yield* requireMember(store, payload.conversation_id)
            return yield* new ConversationNotFound({ conversationId: payload.conversation_id })
          }
          return { code: 0 as const, data: detail.value }
        }).pipe(mapped),
      join_conversation: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          yield* whileReachable(conversations(payload.conversation_id).Join({ sessions: [sid], byBackend: false }))
          return { code: 0 as const, data: { ConversationId: payload.conversation_id } }
        }).pipe(mapped),
      create_conversation: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          const id = randomUUID()
          yield* whileReachable(
            conversations(id).Create({ conversationType: payload.conversation_type, sessions: [sid] })
          )
          known.remember(id)
          return { code: 0 as const, data: { ConversationId: id } }
        }).pipe(mapped),
      leave_conversation: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          yield* whileReachable(conversations(payload.conversation_id).Remove({ sessions: [sid], byBackend: false }))
          return { code: 0 as const, data: { ConversationId: payload.conversation_id } }
        }).pipe(mapped),
      get_lastone_msgid: ({ payload }) =>
        Effect.gen(function* () {
          yield* requireMember(store, payload.conversation_id)
          return { code: 0 as const, data: { MsgId: yield* store.lastMsgId(payload.conversation_id) } }
        }).pipe(mapped)
    }))
  })
)

const MessageHandlers = HttpApiBuilder.group(
  ServedApi,
  "message",
  Effect.fn(function* (handlers) {
    const mapped = mappedFor(Option.isSome((yield* AppConfig).runnerPort))
    const store = yield* ConversationStore
    /** A page read only if the caller is a member, in one statement; an empty one tells which it was. */
    const history = (
      conversationId: string,
      read: (reader: string) => Effect.Effect<ReadonlyArray<MsgData>, any>
    ) =>
      Effect.gen(function* () {
        const { sid } = yield* CurrentSession
        const messages = yield* read(sid)
        if (messages.length === 0) yield* requireMember(store, conversationId)
        return { code: 0 as const, data: { Msg: messages } }
      }).pipe(mapped)
    return handlers.handleAll({
      get_conversation_msg_by_range: ({ payload: p }) =>
        history(p.conversation_id, (r) => store.range(p.conversation_id, p.start_msg_id, p.end_msg_id, p.desc, r)),
      get_conversation_30msg_before_the_id: ({ payload: p }) =>
        history(p.conversation_id, (r) => store.before(p.conversation_id, p.msg_id, p.desc, r)),
      get_conversation_30msg_after_the_id: ({ payload: p }) =>
        history(p.conversation_id, (r) => store.after(p.conversation_id, p.msg_id, p.desc, r)),
      get_conversation_last_30_msg: ({ payload: p }) =>
        history(p.conversation_id, (r) => store.last(p.conversation_id, PAGE, p.desc, r)),
      get_conversation_lastone_msg: ({ payload: p }) =>
        history(p.conversation_id, (r) => store.last(p.conversation_id, 1, p.desc, r))
    })
  })
)

/** Read state (extension): writes go to the conversation's entity, reads to SQL. */
const ReadStateHandlers = HttpApiBuilder.group(
  ServedApi,
  "readState",
  Effect.fn(function* (handlers) {
    const mapped = mappedFor(Option.isSome((yield* AppConfig).runnerPort))
    const store = yield* ConversationStore
    const reads = yield* ReadStore
    const conversations = yield* Conversation.client
    const { whileReachable } = yield* DatabaseHealth
    const { exists, limits } = yield* boundsOf
    const guarded = bounded({
      mark_read: (payload) => Effect.andThen(limits.guard("marks"), exists(payload)),
      typing: (payload) => Effect.andThen(limits.guard("marks"), exists(payload))
    })
    return handlers.handleAll(guarded({
      mark_read: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          const state = yield* whileReachable(
            conversations(payload.conversation_id).MarkRead({ session: sid, msgId: payload.msg_id })
          )
          return {
            code: 0 as const,
            data: { ReadMsgId: state.readMsgId, ReadSeq: state.readSeq, Unread: state.unread }
          }
        }).pipe(mapped),
      get_unread: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          const ids = payload.conversation_ids
          const entries = yield* reads.unread(sid, ids)
          if (ids !== undefined && entries.length < new Set(ids).size) {
            // One id the caller may not read refuses the whole call: an unknown one first (404).
            const have = new Set(entries.map((e) => e.ConversationId))
            const missing = [...new Set(ids)].filter((id) => !have.has(id))
            const existing = new Set(yield* store.exists(missing))
            const unknown = missing.find((id) => !existing.has(id))
            return yield* unknown !== undefined
              ? Effect.fail(new ConversationNotFound({ conversationId: unknown }))
              : Effect.fail(new NotMember({ conversationId: missing[0], session: sid }))
          }
          let total = 0
          for (const e of entries) total += e.Unread
          return { code: 0 as const, data: { Conversations: entries, Total: total } }
        }).pipe(mapped),
      get_inbox: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          const cursor = yield* decodeInboxCursor(payload.cursor)
          const page = yield* reads.inbox(sid, payload.limit, cursor)
          return {
            code: 0 as const,
            data: {
              Conversations: page.entries,
              NextCursor: page.next === undefined ? null : encodeInboxCursor(page.next)
            }
          }
        }).pipe(mapped),
      get_conversation_members: ({ payload }) =>
        Effect.gen(function* () {
          const cursor = yield* decodeMembersCursor(payload.cursor)
          yield* requireMember(store, payload.conversation_id)
          const page = yield* reads.members(payload.conversation_id, payload.limit, cursor)
          return {
            code: 0 as const,
            data: {
              Members: page.entries,
              NextCursor: page.next === undefined ? null : encodeMembersCursor(page.next)
            }
          }
        }).pipe(mapped),
      typing: ({ payload }) =>
        Effect.gen(function* () {
          const { sid } = yield* CurrentSession
          yield* whileReachable(conversations(payload.conversation_id).Typing({ session: sid }))
          return { code: 0 as const, data: {} }
        }).pipe(mapped)
    }))
  })
)

const InnerHandlers = HttpApiBuilder.group(
  ServedApi,
  "inner",
  Effect.fn(function* (handlers) {
    const mapped = mappedFor(Option.isSome((yield* AppConfig).runnerPort))
    const store = yield* ConversationStore
    const tokens = yield* Tokens
    const conversations = yield* Conversation.client
    const { whileReachable } = yield* DatabaseHealth
    const status = yield* NodeStatus
    const { exists, known } = yield* boundsOf
    const guarded = bounded({
      kickout_conversation: exists,
      join_conversation: exists,
      update_conversation: exists
    })
    // Members hear of an archive change from each conversation's entity, after the answer and
    // at a bounded pace: a change to 10,000 conversations is one transaction, its events follow.
    const announceAll = (ids: ReadonlyArray<string>) =>
      Effect.forEach(
        [...new Set(ids)],
        (id) => conversations(id).Announce().pipe(Effect.timeout("10 seconds"), Effect.ignore),
        { concurrency: 16, discard: true }
      ).pipe(Effect.forkDetach)
    const revocations = yield* Revocations
    return handlers.handleAll(guarded({
      get_token: ({ payload }) =>
        tokens.issue(payload.session, payload.platform).pipe(
          Effect.map((token) => ({ code: 0 as const, data: token }))
        ),
      create_conversation: ({ payload }) =>
        Effect.gen(function* () {
          const id = randomUUID()
          yield* whileReachable(
            conversations(id).Create({
              conversationType: payload.conversation_type,
              sessions: payload.sessions,
              ...(payload.name === undefined ? {} : { name: payload.name }),
              ...(payload.extra === undefined ? {} : { extra: payload.extra })
            })
          )
          known.remember(id)
          return { code: 0 as const, data: { ConversationId: id } }
        }).pipe(mapped),
      kickout_conversation: ({ payload }) =>
        Effect.gen(function* () {
          yield* whileReachable(
            conversations(payload.conversation_id).Remove({ sessions: payload.sessions, byBackend: true })
          )
          return { code: 0 as const, data: { ConversationId: payload.conversation_id } }
        }).pipe(mapped),
      join_conversation: ({ payload }) =>
        Effect.gen(function* () {
          yield* whileReachable(
            conversations(payload.conversation_id).Join({ sessions: payload.sessions, byBackend: true })
          )
          return { code: 0 as const, data: { ConversationId: payload.conversation_id } }
        }).pipe(mapped),
      set_archive_conversations: ({ payload }) =>
        Effect.gen(function* () {
          // All or nothing, also when it fails half-way: one transaction in the store (which says why
          // this write does not go through the Conversation entities).
          yield* store.setArchive(payload.conversation_ids, payload.is_archive)
          yield* announceAll(payload.conversation_ids)
          return { code: 0 as const }
        }).pipe(mapped),
      update_conversation: ({ payload }) =>
        Effect.gen(function* () {
          yield* whileReachable(
            conversations(payload.conversation_id).Update({
              ...(payload.name === undefined ? {} : { name: payload.name }),
              ...(payload.extra === undefined ? {} : { extra: payload.extra })
            })
          )
          return { code: 0 as const, data: { ConversationId: payload.conversation_id } }
        }).pipe(mapped),
      revoke_tokens: ({ payload }) =>
        revocations.revoke(payload.sessions, payload.platform).pipe(
          Effect.map((at) => ({ code: 0 as const, data: { RevokedAt: new Date(at).toISOString() } })),
          mapped
        ),
      cluster: () =>
        status.view.pipe(
          Effect.map((view) => ({ code: 0 as const, data: view })),
          Effect.catchCause((cause) =>
            Effect.logWarning("cluster view failed", cause).pipe(
              Effect.andThen(
                Effect.fail(new Unavailable({ code: ErrorCode.Unavailable, error: "database unavailable" }))
              )
            )
          )
        )
    }))
  })
)

const SystemHandlers = HttpApiBuilder.group(
  ServedApi,
  "system",
  Effect.fn(function* (handlers) {
    const store = yield* ConversationStore
    return handlers.handleAll({
      healthz: () =>
        store.ping.pipe(
          Effect.timeout("2 seconds"),
          Effect.as({ code: 0 as const, data: { status: "ok" as const } }),
          Effect.catch(() =>
            Effect.fail(new Unavailable({ code: ErrorCode.Unavailable, error: "database unavailable" }))
          )
        )
    })
  })
)

export const HandlersLive = Layer.mergeAll(
  ConversationHandlers,
  MessageHandlers,
  ReadStateHandlers,
  InnerHandlers,
  SystemHandlers
).pipe(
  Layer.provide([AuthorizationLive, InnerGuardLive]),
  Layer.provide([
    ConversationStore.layer,
    KnownConversations.layer,
    NodeStatus.layer,
    RateLimits.layer,
    ReadStore.layer,
    Tokens.layer
  ])
)
