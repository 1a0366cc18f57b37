/**
 * A typed client of a quick-im server, derived from the same HttpApi contract the server serves
 * (`src/api/Api.ts`), over the platform's `fetch` (Deno, Node ≥ 22, browsers). `api` is the
 * generated client with every documented endpoint; the methods beside it unwrap the
 * `{code, data}` envelope for the common cases. `subscribe`/`messages` follow the session's push
 * stream with reconnect, resume and dedupe (Push.ts).
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as FetchHttpClient from "effect/http/FetchHttpClient"
import * as HttpClient from "effect/http/HttpClient"
import * as HttpClientRequest from "effect/http/HttpClientRequest"
import * as HttpApiClient from "effect/http-api/HttpApiClient"
import { Api } from "../api/Api.ts"
import { ADMIN_KEY_HEADER } from "../api/Security.ts"
import { messages, subscribe, type SubscribeOptions } from "./Push.ts"

export interface ClientOptions {
  /** The server, e.g. `http://localhost:8080`. */
  readonly baseUrl: string
  /** A session token: public endpoints act as that session. */
  readonly token?: string | undefined
  /** Sent as `X-QuickIM-Admin-Key` to `inner/*` when the server has `QUICKIM_ADMIN_KEY`. */
  readonly adminKey?: string | undefined
}

export interface SendOptions {
  /** Retries with the same value never store the message twice. */
  readonly clientMsgId?: string
  readonly status?: number
  readonly type?: number
}

type PushOptions = Omit<SubscribeOptions, "baseUrl" | "token">

const withHeaders = (options: ClientOptions) => (request: HttpClientRequest.HttpClientRequest) => {
  let r = request
  if (options.token !== undefined) r = HttpClientRequest.bearerToken(r, options.token)
  if (options.adminKey !== undefined) r = HttpClientRequest.setHeader(r, ADMIN_KEY_HEADER, options.adminKey)
  return r
}

/** The client; its requests fail with the documented errors (`code`, `error`) or a transport error. */
export const makeClient = (options: ClientOptions) =>
  Effect.gen(function* () {
    const api = yield* HttpApiClient.make(Api, {
      baseUrl: options.baseUrl,
      transformClient: HttpClient.mapRequest(withHeaders(options))
    })
    const needToken = () => {
      if (options.token === undefined) throw new Error("this call needs a session token (makeClient({ token }))")
      return options.token
    }
    const conversation = (conversation_id: string) => ({ payload: { conversation_id } })
    return {
      api,
      /** A token for `session` on `platform` (inner endpoint). */
      token: (session: string, platform = 1) =>
        api.inner.get_token({ payload: { session, platform } }).pipe(Effect.map((r) => r.data)),
      /** The same client acting as the session of `token`. */
      as: (token: string) => makeClient({ ...options, token }),
      /** Creates a conversation with `sessions` as its members (inner endpoint). */
      createConversation: (
        sessions: ReadonlyArray<string>,
        conversationType = 0,
        fields: { readonly name?: string; readonly extra?: string } = {}
      ) =>
        api.inner.create_conversation({ payload: { sessions, conversation_type: conversationType, ...fields } }).pipe(
          Effect.map((r) => r.data.ConversationId)
        ),
      /** Sets a conversation's name and/or extra data (inner endpoint); members hear a `conversation` event. */
      updateConversation: (conversationId: string, fields: { readonly name?: string; readonly extra?: string }) =>
        api.inner.update_conversation({ payload: { conversation_id: conversationId, ...fields } }).pipe(
          Effect.asVoid
        ),
      join: (conversationId: string, sessions: ReadonlyArray<string>) =>
        api.inner.join_conversation({ payload: { conversation_id: conversationId, sessions } }).pipe(Effect.asVoid),
      kick: (conversationId: string, sessions: ReadonlyArray<string>) =>
        api.inner.kickout_conversation({ payload: { conversation_id: conversationId, sessions } }).pipe(
          Effect.asVoid
        ),
      archive: (conversationIds: ReadonlyArray<string>, isArchive = true) =>
        api.inner.set_archive_conversations({ payload: { conversation_ids: conversationIds, is_archive: isArchive } })
          .pipe(Effect.asVoid),
      cluster: api.inner.cluster().pipe(Effect.map((r) => r.data)),
      /** Sends as the token's session; the MsgId once stored. */
      send: (conversationId: string, content: string, send: SendOptions = {}) =>
        api.message.send_msg({
          payload: {
            conversation_id: conversationId,
            content,
            status: send.status ?? 0,
            type: send.type ?? 0,
            ...(send.clientMsgId === undefined ? {} : { client_msg_id: send.clientMsgId })
          }
        }).pipe(Effect.map((r) => r.data.MsgID)),
      joined: api.conversation.get_joined_conversation({ payload: {} }).pipe(Effect.map((r) => r.data.Conversations)),
      detail: (conversationId: string) =>
        api.conversation.get_conversation_detail(conversation(conversationId)).pipe(Effect.map((r) => r.data)),
      /** The newest 30 messages, oldest first. */
      last30: (conversationId: string) =>
        api.message.get_conversation_last_30_msg({ payload: { conversation_id: conversationId, desc: false } }).pipe(
          Effect.map((r) => r.data.Msg)
        ),
      /** The 30 messages before `msgId` (excluded), oldest first: scrolling back. */
      before: (conversationId: string, msgId: string) =>
        api.message.get_conversation_30msg_before_the_id({
          payload: { conversation_id: conversationId, msg_id: msgId, desc: false }
        }).pipe(Effect.map((r) => r.data.Msg)),
      /** The 30 messages after `msgId` (excluded), oldest first. */
      after: (conversationId: string, msgId: string) =>
        api.message.get_conversation_30msg_after_the_id({
          payload: { conversation_id: conversationId, msg_id: msgId, desc: false }
        }).pipe(Effect.map((r) => r.data.Msg)),
      lastMsgId: (conversationId: string) =>
        api.conversation.get_lastone_msgid(conversation(conversationId)).pipe(
          Effect.map((r) => Option.fromNullishOr(r.data.MsgId))
        ),
      /** Marks everything up to and including `msgId` read (never back); the read state after it. */
      markRead: (conversationId: string, msgId: string) =>
        api.readState.mark_read({ payload: { conversation_id: conversationId, msg_id: msgId } }).pipe(
          Effect.map((r) => r.data)
        ),
      /** Unread counts in `conversationIds` (at most 1,000), or in every conversation joined. */
      unread: (conversationIds?: ReadonlyArray<string>) =>
        api.readState.get_unread({
          payload: conversationIds === undefined ? {} : { conversation_ids: conversationIds }
        }).pipe(Effect.map((r) => r.data)),
      /** A page of the chat list, most recent activity first; pass `NextCursor` back for the next. */
      inbox: (limit = 50, cursor?: string | null) =>
        api.readState.get_inbox({ payload: { limit, ...(cursor == null ? {} : { cursor }) } }).pipe(
          Effect.map((r) => r.data)
        ),
      /** A page of a conversation's members in join order, with their read positions. */
      members: (conversationId: string, limit = 200, cursor?: string | null) =>
        api.readState.get_conversation_members({
          payload: { conversation_id: conversationId, limit, ...(cursor == null ? {} : { cursor }) }
        }).pipe(Effect.map((r) => r.data)),
      /** Tells the other members this session is typing (at most one event per 2 s goes out). */
      typing: (conversationId: string) => api.readState.typing(conversation(conversationId)).pipe(Effect.asVoid),
      /** The session's push stream (needs a token): reconnects, resumes by cursor, drops repeats. */
      subscribe: (push: PushOptions = {}) => subscribe({ ...push, baseUrl: options.baseUrl, token: needToken() }),
      /** The same as an async iterator. */
      messages: (push: PushOptions = {}) => messages({ ...push, baseUrl: options.baseUrl, token: needToken() })
    }
  }).pipe(Effect.provide(FetchHttpClient.layer))

export type QuickImClient = Effect.Success<ReturnType<typeof makeClient>>
