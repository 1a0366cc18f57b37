/**
 * `GET /notify` shared parts: who is connecting (token from the `Authorization` header or
 * `?token=`), which protocol, and from which cursor (`Last-Event-ID` or `?last_msg_id=`).
 */
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import type * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import type { LimitRefusal } from "../access/RateLimits.ts"
import { ErrorCode } from "../api/Errors.ts"
import { MsgIdPattern } from "../domain/MsgId.ts"
import { EVENT_KINDS, type EventKind } from "../domain/Events.ts"
import type { TokenClaims } from "../access/Revocations.ts"
import type { Tokens } from "../access/Tokens.ts"

export const PROTOCOLS = ["ws", "sse", "poll"] as const
export type Protocol = (typeof PROTOCOLS)[number]

export interface NotifyRequest {
  readonly session: string
  readonly platform: number
  readonly protocol: Protocol
  readonly cursor: string | undefined
  /** The live event kinds opted in to with `events=` (none: messages only, as before). */
  readonly events: ReadonlyArray<EventKind>
  /** The token's claims: the connection ends when the token expires or is revoked. */
  readonly claims: TokenClaims
}

/**
 * A refusal before any streaming starts, or a poll that ends without an answer: the envelope with
 * this status (and `Retry-After` when set).
 */
export class NotifyRefused extends Schema.TaggedError<NotifyRefused>()("NotifyRefused", {
  status: Schema.Number,
  code: Schema.Number,
  error: Schema.String,
  retryAfter: Schema.optionalKey(Schema.Number)
}) {}

const refuse = (status: number, code: number, error: string): Effect.Effect<never, NotifyRefused> =>
  Effect.fail(new NotifyRefused({ status, code, error }))

/** How an HTTP transport (SSE, poll) serves a `/notify` request once it is parsed. */
export type ServeNotify = (
  notify: NotifyRequest,
  request: HttpServerRequest.HttpServerRequest
) => Effect.Effect<HttpServerResponse.HttpServerResponse, NotifyRefused>

/** A rate limit's refusal, as the transports answer it. */
export const limited = (refusal: LimitRefusal) =>
  new NotifyRefused({
    status: refusal.status,
    code: refusal.code,
    error: refusal.error,
    retryAfter: refusal.retryAfter
  })

/** The envelope of a refusal, as an HTTP response (SSE and poll; a WebSocket upgrade writes it to its socket). */
export const refusedResponse = (refused: NotifyRefused) =>
  HttpServerResponse.jsonUnsafe({ code: refused.code, error: refused.error }, {
    status: refused.status,
    ...(refused.retryAfter === undefined ? {} : { headers: { "retry-after": String(refused.retryAfter) } })
  })

/** Who is asking for `/notify` and how; `tokens` verifies the token. */
export const parseNotify = Effect.fnUntraced(function* (
  tokens: Tokens["Service"],
  url: string,
  headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
) {
  const params = new URL(url, "http://notify").searchParams
  const header = (name: string) => {
    const v = headers[name]
    return typeof v === "string" ? v : Array.isArray(v) ? v[0] : undefined
  }
  const protocol = params.get("protoc") ?? ""
  if (!(PROTOCOLS as ReadonlyArray<string>).includes(protocol)) {
    return yield* refuse(400, ErrorCode.UnsupportedProtocol, `protoc must be one of ws, sse, poll (got '${protocol}')`)
  }
  const bearer = header("authorization")?.match(/^Bearer\s+(.+)$/i)?.[1]
  const token = bearer ?? params.get("token") ?? ""
  if (token.length === 0) return yield* refuse(401, ErrorCode.InvalidToken, "missing token")
  const claims = yield* tokens.verify(token).pipe(
    Effect.catch((e) => refuse(401, ErrorCode.InvalidToken, e.reason))
  )
  // Last-Event-ID first: an EventSource sends it on each reconnect by itself, newer than the
  // `last_msg_id` fixed in its URL when it was created.
  const cursor = header("last-event-id") ?? params.get("last_msg_id") ?? undefined
  if (cursor !== undefined && cursor !== "" && !MsgIdPattern.test(cursor)) {
    return yield* refuse(400, ErrorCode.InvalidParameter, "last_msg_id (or Last-Event-ID) is not a MsgId")
  }
  const events = (params.get("events") ?? "").split(",").filter((kind) => kind !== "")
  const unknown = events.find((kind) => !(EVENT_KINDS as ReadonlyArray<string>).includes(kind))
  if (unknown !== undefined) {
    return yield* refuse(
      400,
      ErrorCode.InvalidParameter,
      `events must be a comma list of ${EVENT_KINDS.join(", ")} (got '${unknown.slice(0, 32)}')`
    )
  }
  return {
    session: claims.sid,
    platform: claims.platform,
    protocol: protocol as Protocol,
    cursor: cursor === "" ? undefined : cursor,
    events: [...new Set(events)] as ReadonlyArray<EventKind>,
    claims
  } satisfies NotifyRequest
})

export const isNotifyPath = (url: string | undefined) => url !== undefined && /^\/notify(\?|$)/.test(url)
