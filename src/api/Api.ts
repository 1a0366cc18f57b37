/**
 * The HTTP contract (docs/api.md), declared once: the server, the OpenAPI document
 * and typed clients all derive from it. Every body is the `{code, error, data}` envelope.
 */
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as HttpApi from "effect/http-api/HttpApi"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import * as OpenApi from "effect/http-api/OpenApi"
import {
  ConversationDetail,
  ConversationId,
  ConversationType,
  Int32,
  isStorable,
  isStorableText,
  MsgData,
  SessionId
} from "../domain/Conversation.ts"
import { ClusterView } from "../domain/ClusterView.ts"
import { MsgId } from "../domain/MsgId.ts"
import { ApiErrors } from "./Errors.ts"
import { Authorization, InnerGuard } from "./Security.ts"

/** Success envelope: `{"code": 0, "data": ...}`. */
const ok = <S extends Schema.Top>(data: S) => Schema.Struct({ code: Schema.Literal(0), data })

const defaultTo = <S extends Schema.Top>(schema: S, value: S["Encoded"]) =>
  schema.pipe(Schema.withDecodingDefaultKey(Effect.succeed(value)))

const Conversation = { conversation_id: ConversationId }

/** A string's length in UTF-8 bytes (also in browsers, where the SDK uses this contract). */
const utf8Bytes = (s: string) => {
  let bytes = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) bytes += 1
    else if (c < 0x800) bytes += 2
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      bytes += 4
      i++
    } else bytes += 3
  }
  return bytes
}

// Read state (extension): a conversation's own fields, pages and their cursors.
const Name = Schema.String.check(
  Schema.makeFilter<string>((s) => [...s].length <= 200 || "name is longer than 200 characters"),
  isStorable("name")
)
const Extra = Schema.String.check(
  Schema.makeFilter<string>((s) =>
    (s.length <= 1365 || utf8Bytes(s) <= 4096) || "extra is larger than 4096 bytes (UTF-8)"
  ),
  isStorable("extra")
)
const ConversationFields = { name: Schema.optionalKey(Name), extra: Schema.optionalKey(Extra) }
/** An opaque page cursor as a previous answer's `NextCursor` gave it. */
const Cursor = Schema.optionalKey(
  Schema.NullOr(Schema.String.check(Schema.isMaxLength(4096, { message: "cursor is not one this server gave" })))
)
const limit = (max: number, fallback: number) =>
  defaultTo(
    Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: max }, { message: `limit must be 1 to ${max}` })),
    fallback
  )
const ReadMsgId = Schema.NullOr(Schema.String)

const UnreadEntry = Schema.Struct({
  ConversationId: Schema.String,
  Unread: Schema.Int,
  ReadMsgId,
  LastMsgId: Schema.NullOr(Schema.String)
})
const InboxEntry = Schema.Struct({
  ConversationId: Schema.String,
  ConversationType: Schema.Int,
  Name: Schema.String,
  Extra: Schema.String,
  IsArchive: Schema.Boolean,
  LastMsg: Schema.NullOr(MsgData),
  Unread: Schema.Int,
  ReadMsgId
})
const MemberEntry = Schema.Struct({ Session: Schema.String, JoinedAt: Schema.String, ReadMsgId })
const NextCursor = Schema.NullOr(Schema.String)
const Sessions = Schema.Array(SessionId).check(Schema.isMaxLength(10_000))
const ConversationIdData = ok(Schema.Struct({ ConversationId: Schema.String }))
const Messages = ok(Schema.Struct({ Msg: Schema.Array(MsgData) }))
const Desc = { desc: defaultTo(Schema.Boolean, false) }

const post = <const Name extends string, P extends Schema.Struct.Fields, S extends Schema.Top>(
  name: Name,
  payload: P,
  success: S
) => HttpApiEndpoint.post(name, `/${name}`, { payload: Schema.Struct(payload), success, error: ApiErrors })

export class ConversationApi extends HttpApiGroup.make("conversation")
  .add(
    post("check_joined_conversation", Conversation, ok(Schema.Struct({ Joined: Schema.Boolean }))),
    post(
      "get_joined_conversation",
      { SessionId: Schema.optionalKey(Schema.String.check(isStorable("SessionId"))) },
      ok(Schema.Struct({ Conversations: Schema.Array(Schema.String) }))
    ),
    post("get_conversation_detail", Conversation, ok(ConversationDetail)),
    post("join_conversation", Conversation, ConversationIdData),
    post("create_conversation", { conversation_type: defaultTo(ConversationType, 0) }, ConversationIdData),
    post("leave_conversation", Conversation, ConversationIdData),
    post("get_lastone_msgid", Conversation, ok(Schema.Struct({ MsgId: Schema.NullOr(Schema.String) })))
  )
  .middleware(Authorization) {}

/** Extension: read positions, unread counts, the inbox, members and typing (docs/api.md, "Read state"). */
export class ReadStateApi extends HttpApiGroup.make("readState")
  .add(
    post(
      "mark_read",
      { ...Conversation, msg_id: MsgId },
      ok(Schema.Struct({ ReadMsgId, ReadSeq: Schema.Int, Unread: Schema.Int }))
    ),
    post(
      "get_unread",
      {
        conversation_ids: Schema.optionalKey(
          Schema.Array(ConversationId).check(
            Schema.isMaxLength(1000, { message: "at most 1000 conversation_ids per call" })
          )
        )
      },
      ok(Schema.Struct({ Conversations: Schema.Array(UnreadEntry), Total: Schema.Int }))
    ),
    post(
      "get_inbox",
      { limit: limit(200, 50), cursor: Cursor },
      ok(Schema.Struct({ Conversations: Schema.Array(InboxEntry), NextCursor }))
    ),
    post(
      "get_conversation_members",
      { ...Conversation, limit: limit(1000, 200), cursor: Cursor },
      ok(Schema.Struct({ Members: Schema.Array(MemberEntry), NextCursor }))
    ),
    post("typing", Conversation, ok(Schema.Struct({})))
  )
  .middleware(Authorization) {}

/** `send_msg`'s body, also decoded by its own route (src/server/SendRoute.ts). */
export const SendMsgPayload = Schema.Struct({
  ...Conversation,
  status: defaultTo(Int32, 0),
  type: defaultTo(Int32, 0),
  content: Schema.String.check(isStorable("content")),
  client_msg_id: Schema.optionalKey(
    Schema.String.check(Schema.isBetweenLength(1, 128), isStorable("client_msg_id"))
  )
})

const isInt32 = (n: unknown): n is number =>
  typeof n === "number" && Number.isSafeInteger(n) && n >= -2147483648 && n <= 2147483647

/**
 * What `SendMsgPayload` decodes a plainly valid body to, without the schema interpreter (16–31 µs
 * of a send's 250–320, bench/RESULTS.md); undefined when anything is not plainly valid, and then
 * the schema itself decodes and words the error. Accepts nothing the schema refuses, and gives the
 * same value (test/send-route.test.ts compares the two on generated bodies).
 */
export const decodeSendMsgFast = (input: unknown): typeof SendMsgPayload.Type | undefined => {
  if (typeof input !== "object" || input === null || Array.isArray(input)) return undefined
  const body = input as Record<string, unknown>
  const { conversation_id, content, client_msg_id } = body
  if (
    typeof conversation_id !== "string" || conversation_id.length < 1 || conversation_id.length > 128
    || !isStorableText(conversation_id)
  ) return undefined
  if (typeof content !== "string" || !isStorableText(content)) return undefined
  const status = Object.hasOwn(body, "status") ? body.status : 0
  const type = Object.hasOwn(body, "type") ? body.type : 0
  if (!isInt32(status) || !isInt32(type)) return undefined
  if (!Object.hasOwn(body, "client_msg_id")) return { conversation_id, status, type, content }
  if (
    typeof client_msg_id !== "string" || client_msg_id.length < 1 || client_msg_id.length > 128
    || !isStorableText(client_msg_id)
  ) return undefined
  return { conversation_id, status, type, content, client_msg_id }
}

const sendMsg = HttpApiEndpoint.post("send_msg", "/send_msg", {
  payload: SendMsgPayload,
  success: ok(Schema.Struct({ MsgID: Schema.String })),
  error: ApiErrors
})

const historyEndpoints = [
  post("get_conversation_msg_by_range", {
    ...Conversation,
    start_msg_id: MsgId,
    end_msg_id: MsgId,
    ...Desc
  }, Messages),
  post("get_conversation_30msg_before_the_id", { ...Conversation, msg_id: MsgId, ...Desc }, Messages),
  post("get_conversation_30msg_after_the_id", { ...Conversation, msg_id: MsgId, ...Desc }, Messages),
  post("get_conversation_last_30_msg", { ...Conversation, ...Desc }, Messages),
  post("get_conversation_lastone_msg", { ...Conversation, ...Desc }, Messages)
] as const

export class MessageApi extends HttpApiGroup.make("message")
  .add(sendMsg, ...historyEndpoints)
  .middleware(Authorization) {}

/**
 * The "message" group as HttpApi serves it: `send_msg`, the hot path, has its own route
 * (src/server/SendRoute.ts), which answers exactly as this contract says at less CPU per send.
 */
export class ServedMessageApi extends HttpApiGroup.make("message")
  .add(...historyEndpoints)
  .middleware(Authorization) {}

const innerPost = <const Name extends string, P extends Schema.Struct.Fields, S extends Schema.Top>(
  name: Name,
  payload: P,
  success: S
) => HttpApiEndpoint.post(name, `/inner/${name}`, { payload: Schema.Struct(payload), success, error: ApiErrors })

export class InnerApi extends HttpApiGroup.make("inner")
  .add(
    innerPost("get_token", { session: SessionId, platform: Int32 }, ok(Schema.String)),
    innerPost(
      "create_conversation",
      { conversation_type: defaultTo(ConversationType, 0), sessions: Sessions, ...ConversationFields },
      ConversationIdData
    ),
    // Extension: the conversation's name and the product's own data (docs/api.md, "Read state").
    innerPost("update_conversation", { ...Conversation, ...ConversationFields }, ConversationIdData),
    innerPost("kickout_conversation", { ...Conversation, sessions: Sessions }, ConversationIdData),
    innerPost("join_conversation", { ...Conversation, sessions: Sessions }, ConversationIdData),
    innerPost(
      "set_archive_conversations",
      { conversation_ids: Schema.Array(ConversationId).check(Schema.isMaxLength(10_000)), is_archive: Schema.Boolean },
      Schema.Struct({ code: Schema.Literal(0) })
    ),
    // Extension: refuse every token issued to `sessions` (on `platform`, or on all) until now.
    innerPost(
      "revoke_tokens",
      { sessions: Sessions.check(Schema.isMinLength(1)), platform: Schema.optionalKey(Int32) },
      ok(Schema.Struct({ RevokedAt: Schema.String }))
    ),
    // Extension: the cluster as every node reports it (src/cluster/NodeStatus.ts).
    HttpApiEndpoint.get("cluster", "/inner/cluster", { success: ok(ClusterView), error: ApiErrors })
  )
  .middleware(InnerGuard) {}

export class SystemApi extends HttpApiGroup.make("system").add(
  HttpApiEndpoint.get("healthz", "/healthz", {
    success: ok(Schema.Struct({ status: Schema.Literal("ok") })),
    error: ApiErrors
  })
) {}

const annotations = OpenApi.annotations({
  title: "quick-im gateway API",
  description: "Conversations, durable time-ordered messages and push. Every body is {code, error, data}."
})

/** The whole contract: the OpenAPI document (`/openapi.json`) and the typed client derive from it. */
export class Api extends HttpApi.make("quick-im")
  .add(ConversationApi)
  .add(MessageApi)
  .add(ReadStateApi)
  .add(InnerApi)
  .add(SystemApi)
  .annotateMerge(annotations) {}

/** What HttpApi serves: the contract but `send_msg` (ServedMessageApi). */
export class ServedApi extends HttpApi.make("quick-im")
  .add(ConversationApi)
  .add(ServedMessageApi)
  .add(ReadStateApi)
  .add(InnerApi)
  .add(SystemApi)
  .annotateMerge(annotations) {}

/** With QUICKIM_INNER_PORT, the public listener's contract (its OpenAPI document). */
export const PublicApi = HttpApi.make("quick-im").add(ConversationApi).add(MessageApi).add(ReadStateApi).add(SystemApi)
  .annotateMerge(annotations)

/** With QUICKIM_INNER_PORT: the public listener's part and the inner listener's part, as HttpApi serves them. */
export const ServedPublicApi = HttpApi.make("quick-im").add(ConversationApi).add(ServedMessageApi).add(ReadStateApi)
  .add(SystemApi)
export const ServedInnerApi = HttpApi.make("quick-im").add(InnerApi).add(SystemApi)
