/**
 * `POST /send_msg`, the hot path, as its own route rather than through HttpApi. It answers exactly
 * as HttpApi would for the contract's `send_msg` (src/api/Api.ts, which still describes it for the
 * OpenAPI document and the client): the bearer token first, then the body, then the bounds in
 * the same order, the same errors with the same statuses (test/send-route.test.ts holds HttpApi's
 * answers). A plainly valid body is decoded by `decodeSendMsgFast`; any other goes through the
 * contract's schema, whose failure is the same `HttpApiSchemaError` defect that the edge turns into
 * 400 / 10001. What this saves is HttpApi's own work per request (its middleware chain, a copy of
 * the request's whole context, the answer encoded through the endpoint's schemas) and the schema
 * interpreter (bench/RESULTS.md, "send_msg by its own route").
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Clock from "effect/Clock"
import * as Schema from "effect/Schema"
import type * as Http from "node:http"
import { finished } from "node:stream"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerError from "effect/http/HttpServerError"
import type * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as HttpApiError from "effect/http-api/HttpApiError"
import * as SchemaIssue from "effect/SchemaIssue"
import { decodeSendMsgFast, SendMsgPayload } from "../api/Api.ts"
import { type ApiError, ErrorCode, PayloadTooLarge, statusOf } from "../api/Errors.ts"
import { authenticate, bearerCredential } from "../access/Access.ts"
import { RateLimits } from "../access/RateLimits.ts"
import { Tokens } from "../access/Tokens.ts"
import { AppConfig, DEFAULT_MAX_CONTENT_BYTES } from "../Config.ts"
import { KnownConversations } from "../conversation/KnownConversations.ts"
import { ConversationSender } from "../conversation/Sender.ts"
import { ConversationNotFound, NotMember } from "../domain/Conversation.ts"
import { sendDuration, sendsTotal } from "../observability/Telemetry.ts"
import { mapped, mappedFor } from "./ErrorMapping.ts"

/** As HttpApi decodes a JSON payload: the union of the endpoint's payload schemas (here one). */
const decodePayload = Schema.decodeUnknownEffect(Schema.Union([SendMsgPayload]))

const payloadError = (cause: Schema.SchemaError) => new HttpApiError.HttpApiSchemaError({ kind: "Payload", cause })

const notJson = payloadError(
  new Schema.SchemaError(new SchemaIssue.InvalidValue({ message: "Expected a valid JSON body" }))
)

const decoder = new TextDecoder()

/**
 * The body's text as `request.text` gives it, read straight from Node's message when it declares
 * a length within the limit and no `Expect`: the platform's reader runs two fibers per request
 * (its body effect is made by `runSync` and cached), this reads by one callback. Anything else
 * goes to the platform, which also answers `Expect: 100-continue` and bodies that outgrow the
 * limit. An aborted body fails as the platform's does (a parse error: the edge answers 400).
 */
const textOf = (request: HttpServerRequest.HttpServerRequest, maxBytes: number) => {
  const source = NodeHttpServerRequest.toIncomingMessage(request) as Http.IncomingMessage
  const declared = request.headers["content-length"]
  if (
    declared === undefined || request.headers.expect !== undefined || !(Number(declared) <= maxBytes)
    || typeof source?.on !== "function"
  ) return request.text
  return Effect.callback<string, HttpServerError.HttpServerError>((resume) => {
    const chunks: Array<Uint8Array> = []
    const onData = (chunk: Uint8Array) => void chunks.push(chunk)
    const cleanup = finished(source, { readable: true, writable: false }, (error) => {
      source.off("data", onData)
      cleanup()
      if (error) {
        source.destroy()
        return resume(Effect.fail(
          new HttpServerError.HttpServerError({
            reason: new HttpServerError.RequestParseError({ request, reason: "Parse", cause: error })
          })
        ))
      }
      resume(Effect.succeed(decoder.decode(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks))))
    })
    source.on("data", onData)
    return Effect.sync(() => {
      source.off("data", onData)
      cleanup()
      source.destroy()
    })
  })
}

/** The body as HttpApi reads it: unreadable or too large is a defect (the edge answers 400 or 413). */
const payloadOf = (request: HttpServerRequest.HttpServerRequest, maxBytes: number) =>
  Effect.flatMap(Effect.orDie(textOf(request, maxBytes)), (text) => {
    let json: unknown = undefined
    if (text !== "") {
      try {
        json = JSON.parse(text)
      } catch {
        return Effect.die(notJson)
      }
    }
    const payload = decodeSendMsgFast(json)
    return payload !== undefined
      ? Effect.succeed(payload)
      : Effect.catch(decodePayload(json), (error) => Effect.die(payloadError(error)))
  })

const answer = (error: ApiError) =>
  HttpServerResponse.jsonUnsafe({ code: error.code, error: error.error }, { status: statusOf(error) })

const outcomes = {
  accepted: sendsTotal("accepted"),
  duplicate: sendsTotal("duplicate"),
  refused: sendsTotal("refused"),
  failed: sendsTotal("failed")
}

export const SendRoute = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const tokens = yield* Tokens
  const caller = authenticate(tokens)
  const limits = yield* RateLimits
  const known = yield* KnownConversations
  const sender = yield* ConversationSender
  /** Domain errors to the contract's; on several nodes also bounded by the request timeout. */
  const withinLimits = mappedFor(Option.isSome(config.runnerPort))
  const maxContent = config.maxContentBytes ?? DEFAULT_MAX_CONTENT_BYTES
  // What BodyLimitLive (src/server/Edge.ts) sets as the server's MaxBodySize.
  const maxBody = config.maxBodyBytes
  const tooLarge = new PayloadTooLarge({
    code: ErrorCode.BodyTooLarge,
    error: `content is larger than ${maxContent} bytes (UTF-8)`
  })

  const outcomeOf = (exit: Exit.Exit<{ readonly duplicate: boolean }, unknown>) =>
    Exit.isSuccess(exit)
      ? exit.value.duplicate ? outcomes.duplicate : outcomes.accepted
      : exit.cause.reasons.some((r) =>
          r._tag === "Fail" && (r.error instanceof NotMember || r.error instanceof ConversationNotFound)
        )
      ? outcomes.refused
      : outcomes.failed

  /** The send, counted by outcome and timed from here to its answer (one exit hook for both). */
  const send = (payload: typeof SendMsgPayload.Type, session: string) =>
    Effect.suspend(() => {
      const started = performance.now()
      return sender.sendWhileReachable({
        conversationId: payload.conversation_id,
        session,
        status: payload.status,
        type: payload.type,
        content: payload.content,
        ...(payload.client_msg_id === undefined ? {} : { clientMsgId: payload.client_msg_id })
      }).pipe(
        Effect.onExit((exit) =>
          Effect.andThen(
            Metric.update(outcomeOf(exit), 1),
            Metric.update(sendDuration, (performance.now() - started) / 1000)
          )
        ),
        Effect.map((sent) => HttpServerResponse.jsonUnsafe({ code: 0, data: { MsgID: sent.msgId } })),
        withinLimits
      )
    })

  /** The bounds, in HttpApi's handler order: the content's size, the caller's rate, the conversation. */
  const bounded = (
    payload: typeof SendMsgPayload.Type,
    session: string,
    request: HttpServerRequest.HttpServerRequest,
    clock: Clock.Clock
  ) => {
    if (payload.content.length * 3 > maxContent && Buffer.byteLength(payload.content) > maxContent) {
      return Effect.fail(tooLarge)
    }
    return Effect.andThen(
      limits.check("sends", session, request, clock.currentTimeMillisUnsafe()),
      known.has(payload.conversation_id)
        ? send(payload, session)
        : Effect.andThen(mapped(known.require(payload.conversation_id)), send(payload, session))
    )
  }

  /**
   * The caller first (a token verified before is taken without an effect), then the body, then the
   * bounds and the send; every refusal answered as HttpApi answers the contract's errors.
   */
  const handle = (request: HttpServerRequest.HttpServerRequest) =>
    Effect.clockWith((clock) => {
      const token = bearerCredential(request.headers.authorization)
      const claims = tokens.known(token, clock.currentTimeMillisUnsafe())
      const session: Effect.Effect<{ readonly sid: string }, ApiError> = claims !== undefined
        ? Effect.succeed(claims)
        : caller(token)
      return session.pipe(
        Effect.flatMap(({ sid }) =>
          Effect.flatMap(payloadOf(request, maxBody), (payload) => bounded(payload, sid, request, clock))
        ),
        Effect.catch((error) => Effect.succeed(answer(error)))
      )
    })

  return HttpRouter.add("POST", "/send_msg", handle)
}))

/** With the services it shares with the HttpApi handlers (layers are built once per node, by reference). */
export const SendRouteLive = SendRoute.pipe(
  Layer.provide([
    ConversationSender.layer,
    KnownConversations.layer,
    RateLimits.layer,
    Tokens.layer
  ])
)
