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
 *
 * The usual request is answered beside the router altogether (SendListener, below): one
 * implementation (SendMsg) serves both ways, in plain code where it can and as effects where it
 * must.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
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
import { authenticate, bearerCredential, remoteAddressOf } from "../access/Access.ts"
import { RateLimits } from "../access/RateLimits.ts"
import { Tokens } from "../access/Tokens.ts"
import { AppConfig, DEFAULT_MAX_CONTENT_BYTES } from "../Config.ts"
import { KnownConversations } from "../conversation/KnownConversations.ts"
import { ConversationSender, type SendItem } from "../conversation/Sender.ts"
import { ConversationNotFound, NotMember } from "../domain/Conversation.ts"
import { sendDuration, sendsTotal, Telemetry } from "../observability/Telemetry.ts"
import { divert } from "../NodeServer.ts"
import { answerCause, bodyTooLarge } from "./Edge.ts"
import { mapped, mappedFor, notInTime, REQUEST_TIMEOUT } from "./ErrorMapping.ts"

/** As HttpApi decodes a JSON payload: the union of the endpoint's payload schemas (here one). */
const decodePayload = Schema.decodeUnknownEffect(Schema.Union([SendMsgPayload]))

const payloadError = (cause: Schema.SchemaError) => new HttpApiError.HttpApiSchemaError({ kind: "Payload", cause })

const notJson = payloadError(
  new Schema.SchemaError(new SchemaIssue.InvalidValue({ message: "Expected a valid JSON body" }))
)

const decoder = new TextDecoder()

/**
 * Reads a body that declared its length by callbacks on Node's message: `done` gets its text, or
 * the error that cut it short (the message is then destroyed).
 */
const readDeclared = (source: Http.IncomingMessage, done: (text: string | undefined, error?: unknown) => void) => {
  const chunks: Array<Uint8Array> = []
  const onData = (chunk: Uint8Array) => void chunks.push(chunk)
  const cleanup = finished(source, { readable: true, writable: false }, (error) => {
    source.off("data", onData)
    cleanup()
    if (error) {
      source.destroy()
      return done(undefined, error)
    }
    done(decoder.decode(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)))
  })
  source.on("data", onData)
  return () => {
    source.off("data", onData)
    cleanup()
    source.destroy()
  }
}

/** Whether the platform's reader is needed: no declared length, over the limit, or `Expect`. */
const needsPlatformReader = (headers: Http.IncomingHttpHeaders, maxBytes: number) => {
  const declared = headers["content-length"]
  return declared === undefined || headers.expect !== undefined || headers["transfer-encoding"] !== undefined
    || !(Number(declared) <= maxBytes)
}

/**
 * The body's text as `request.text` gives it, read straight from Node's message when it declares
 * a length within the limit and no `Expect`: the platform's reader runs two fibers per request
 * (its body effect is made by `runSync` and cached), this reads by one callback. Anything else
 * goes to the platform, which also answers `Expect: 100-continue` and bodies that outgrow the
 * limit. An aborted body fails as the platform's does (a parse error: the edge answers 400).
 */
const textOf = (request: HttpServerRequest.HttpServerRequest, maxBytes: number) => {
  const source = NodeHttpServerRequest.toIncomingMessage(request) as Http.IncomingMessage
  if (needsPlatformReader(request.headers, maxBytes) || typeof source?.on !== "function") return request.text
  return Effect.callback<string, HttpServerError.HttpServerError>((resume) => {
    const stop = readDeclared(source, (text, error) =>
      resume(
        text !== undefined ? Effect.succeed(text) : Effect.fail(
          new HttpServerError.HttpServerError({
            reason: new HttpServerError.RequestParseError({ request, reason: "Parse", cause: error })
          })
        )
      ))
    return Effect.sync(stop)
  })
}

const answer = (error: ApiError) =>
  HttpServerResponse.jsonUnsafe({ code: error.code, error: error.error }, { status: statusOf(error) })

/** An answer known without running an effect: its status, its JSON text, and Retry-After in seconds. */
interface Plain {
  readonly _tag: "Plain"
  readonly status: number
  readonly body: string
  readonly retryAfter?: number
}

const plainError = (
  error: { readonly code: number; readonly error: string },
  status: number,
  retryAfter?: number
): Plain => ({
  _tag: "Plain",
  status,
  body: JSON.stringify({ code: error.code, error: error.error }),
  ...(retryAfter === undefined ? {} : { retryAfter })
})

/** A send's answer: plain, or an effect that makes the response (it dies with HttpApi's defects, for the edge). */
type Answer = Plain | Effect.Effect<HttpServerResponse.HttpServerResponse>

/** Refusals as the contract's envelope. */
const answered = <R>(effect: Effect.Effect<HttpServerResponse.HttpServerResponse, ApiError, R>) =>
  Effect.catch(effect, (error) => Effect.succeed(answer(error)))

const isPlain = (answer: Answer): answer is Plain => (answer as Plain)._tag === "Plain"

const responseOf = (plain: Plain) =>
  HttpServerResponse.text(plain.body, {
    status: plain.status,
    contentType: "application/json",
    ...(plain.retryAfter === undefined ? {} : { headers: { "retry-after": String(plain.retryAfter) } })
  })

const outcomes = {
  accepted: sendsTotal("accepted"),
  duplicate: sendsTotal("duplicate"),
  refused: sendsTotal("refused"),
  failed: sendsTotal("failed")
}

/**
 * What answers a `send_msg` body, for the route below and for SendListener: the caller is known,
 * the body read. Every way to an answer is here once; the usual one (valid, within bounds, to a
 * conversation active on this node) runs no effect.
 */
export class SendMsg extends Context.Service<SendMsg, {
  /**
   * Answers the body `text` of `session`'s request from `address`, received at `nowMs`: `reply` is
   * called once.
   */
  readonly answerText: (
    text: string,
    session: string,
    address: string | undefined,
    nowMs: number,
    reply: (answer: Answer) => void
  ) => void
}>()("quick-im/server/SendMsg") {
  static readonly layerNoDeps = Layer.effect(
    SendMsg,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const limits = yield* RateLimits
      const known = yield* KnownConversations
      const sender = yield* ConversationSender
      const context = yield* Effect.context<never>()
      const multiNode = Option.isSome(config.runnerPort)
      const tracing = config.otlpEndpoint !== undefined
      /** Domain errors to the contract's; on several nodes also bounded by the request timeout. */
      const withinLimits = mappedFor(multiNode)
      const maxContent = config.maxContentBytes ?? DEFAULT_MAX_CONTENT_BYTES
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
      /** The send counted by outcome, and timed from `started` to its answer. */
      const record = (exit: Exit.Exit<{ readonly duplicate: boolean }, unknown>, started: number) => {
        outcomeOf(exit).updateUnsafe(1, context)
        sendDuration.updateUnsafe((performance.now() - started) / 1000, context)
      }
      const sent = (msgId: string): Plain => ({
        _tag: "Plain",
        status: 200,
        body: JSON.stringify({ code: 0, data: { MsgID: msgId } })
      })

      const itemOf = (payload: typeof SendMsgPayload.Type, session: string): SendItem => ({
        conversationId: payload.conversation_id,
        session,
        status: payload.status,
        type: payload.type,
        content: payload.content,
        ...(payload.client_msg_id === undefined ? {} : { clientMsgId: payload.client_msg_id })
      })

      /** The send as an effect: by the entity, or when the database or the conversation is elsewhere. */
      const sendEffect = (item: SendItem) =>
        Effect.suspend(() => {
          const started = performance.now()
          return sender.sendWhileReachable(item).pipe(
            Effect.onExit((exit) => Effect.sync(() => record(exit, started))),
            Effect.map((done) => responseOf(sent(done.msgId))),
            withinLimits
          )
        })

      /**
       * The send; to a conversation active here with no effect (on several nodes bounded by the
       * request timeout too).
       */
      const send = (item: SendItem, reply: (answer: Answer) => void) => {
        const started = performance.now()
        let over = false
        const timer = multiNode
          ? setTimeout(() => {
            over = true
            reply(plainError(notInTime, statusOf(notInTime)))
          }, Duration.toMillis(Duration.fromInputUnsafe(REQUEST_TIMEOUT)))
          : undefined
        // While tracing, the send goes as an effect: its commit's span is a child of the request's.
        const taken = !tracing && sender.sendHere(item, (exit) => {
          if (over) return
          over = true
          if (timer !== undefined) clearTimeout(timer)
          record(exit, started)
          if (Exit.isSuccess(exit)) return reply(sent(exit.value.msgId))
          reply(answered(Effect.map(mapped(exit), (done) => responseOf(sent(done.msgId)))))
        })
        if (taken) return
        if (timer !== undefined) clearTimeout(timer)
        reply(answered(sendEffect(item)))
      }

      /** The bounds, in HttpApi's handler order: the content's size, the caller's rate, the conversation. */
      const bounded = (
        payload: typeof SendMsgPayload.Type,
        session: string,
        address: string | undefined,
        nowMs: number,
        reply: (answer: Answer) => void
      ) => {
        if (payload.content.length * 3 > maxContent && Buffer.byteLength(payload.content) > maxContent) {
          return reply(plainError(tooLarge, statusOf(tooLarge)))
        }
        const refused = limits.admit("sends", session, address, nowMs)
        if (refused !== undefined) return reply(plainError(refused, refused.status, refused.retryAfter))
        const item = itemOf(payload, session)
        if (known.has(payload.conversation_id)) return send(item, reply)
        reply(answered(Effect.andThen(mapped(known.require(payload.conversation_id)), sendEffect(item))))
      }

      const answerText = (
        text: string,
        session: string,
        address: string | undefined,
        nowMs: number,
        reply: (answer: Answer) => void
      ) => {
        // Anything but a plainly valid body is answered through the contract's schema, as HttpApi would.
        let json: unknown = undefined
        if (text !== "") {
          try {
            json = JSON.parse(text)
          } catch {
            return reply(Effect.die(notJson))
          }
        }
        const payload = decodeSendMsgFast(json)
        if (payload !== undefined) return bounded(payload, session, address, nowMs, reply)
        reply(
          Effect.catch(decodePayload(json), (error) => Effect.die(payloadError(error))).pipe(
            Effect.flatMap((decoded) =>
              Effect.callback<HttpServerResponse.HttpServerResponse>((resume) =>
                bounded(decoded, session, address, nowMs, (answer) => resume(toEffect(answer)))
              )
            )
          )
        )
      }

      return SendMsg.of({ answerText })
    })
  )

  /** With the services it shares with the HttpApi handlers (layers are built once per node, by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([ConversationSender.layer, KnownConversations.layer, RateLimits.layer])
  )
}

/** An answer as an effect; its refusals answered with the contract's envelope. */
const toEffect = (answer: Answer): Effect.Effect<HttpServerResponse.HttpServerResponse> =>
  isPlain(answer) ? Effect.succeed(responseOf(answer)) : answer

/**
 * `POST /send_msg` as a route of Effect's router: the caller first (a token verified before is
 * taken without an effect), then the body, then SendMsg. Requests that SendListener leaves to the
 * router come here: a token not yet verified, a body without a declared length, CORS, access logs
 * and tracing.
 */
export const SendRoute = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const tokens = yield* Tokens
  const caller = authenticate(tokens)
  const sendMsg = yield* SendMsg
  // What BodyLimitLive (src/server/Edge.ts) sets as the server's MaxBodySize.
  const maxBody = config.maxBodyBytes

  const handle = (request: HttpServerRequest.HttpServerRequest) =>
    Effect.clockWith((clock) => {
      const now = clock.currentTimeMillisUnsafe()
      const token = bearerCredential(request.headers.authorization)
      const claims = tokens.known(token, now)
      const session: Effect.Effect<{ readonly sid: string }, ApiError> = claims !== undefined
        ? Effect.succeed(claims)
        : caller(token)
      return session.pipe(
        Effect.flatMap(({ sid }) =>
          Effect.flatMap(Effect.orDie(textOf(request, maxBody)), (text) =>
            Effect.callback<HttpServerResponse.HttpServerResponse>((resume) =>
              sendMsg.answerText(text, sid, remoteAddressOf(request), now, (answer) =>
                resume(toEffect(answer)))
            ))
        ),
        Effect.catch((error) =>
          Effect.succeed(answer(error))
        )
      )
    })

  return HttpRouter.add("POST", "/send_msg", handle)
}))

/** With the services it shares with the HttpApi handlers (layers are built once per node, by reference). */
export const SendRouteLive = SendRoute.pipe(Layer.provide([SendMsg.layer, Tokens.layer]))

/**
 * `POST /send_msg` served by Node's server itself, before Effect's router, for the requests that
 * need nothing of it: a caller whose token this node verified before, a body of declared length
 * within the limit, no `Expect`, no `Origin` (CORS), no access log and no tracing. The answer is the
 * route's to the byte (SendMsg); what it saves is the router's and the platform's work per
 * request: its request and response objects, the middleware, the request's fiber
 * (bench/RESULTS.md, "send_msg beside the router"). Every other request goes to Effect's router.
 */
export class SendListener extends Context.Service<SendListener, {
  /** Makes `server` answer such requests here; call before anything listens for `request`. */
  readonly attach: (server: Http.Server) => Http.Server
}>()("quick-im/server/SendListener") {
  static readonly layerNoDeps = Layer.effect(
    SendListener,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const tokens = yield* Tokens
      const telemetry = yield* Telemetry
      const sendMsg = yield* SendMsg
      const run = Effect.runCallbackWith(yield* Effect.context<never>())
      const maxBody = config.maxBodyBytes
      const tooLarge = bodyTooLarge(maxBody)
      const enabled = !config.accessLog && config.otlpEndpoint === undefined

      const write = (
        response: Http.ServerResponse,
        status: number,
        headers: Http.OutgoingHttpHeaders,
        body?: string | Uint8Array
      ) => {
        telemetry.request("/send_msg", status)
        if (response.destroyed || response.writableEnded) return
        try {
          response.writeHead(status, headers)
          response.end(body)
        } catch {
          // Node refused to write the answer: the connection is closed.
          response.destroy()
        }
      }
      const writePlain = (response: Http.ServerResponse, plain: Plain) =>
        write(response, plain.status, {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(plain.body),
          ...(plain.retryAfter === undefined ? {} : { "retry-after": String(plain.retryAfter) })
        }, plain.body)
      const writeResponse = (response: Http.ServerResponse, answer: HttpServerResponse.HttpServerResponse) => {
        const body = answer.body
        write(
          response,
          answer.status,
          answer.headers,
          body._tag === "Uint8Array" ? body.body : undefined
        )
      }

      const handle = (request: Http.IncomingMessage, response: Http.ServerResponse): boolean => {
        if (request.method !== "POST" || request.url !== "/send_msg") return false
        const headers = request.headers
        if (headers.origin !== undefined || needsPlatformReader(headers, maxBody)) return false
        const now = Date.now()
        const claims = tokens.known(bearerCredential(headers.authorization), now)
        if (claims === undefined) return false
        telemetry.sendsBesideRouter.count++
        const respond = (answer: Answer) => {
          if (isPlain(answer)) return writePlain(response, answer)
          run(Effect.catchCause(answer, (cause) => answerCause(cause, tooLarge)), {
            onExit: (exit) => Exit.isSuccess(exit) ? writeResponse(response, exit.value) : response.destroy()
          })
        }
        readDeclared(request, (text) => {
          // A body cut short: the client is gone, nothing was sent.
          if (text === undefined) return
          try {
            sendMsg.answerText(text, claims.sid, request.socket.remoteAddress, now, respond)
          } catch (defect) {
            // A bug, answered as the router answers a defect (logged; 500 / 10002), not a crash of the node.
            respond(Effect.die(defect))
          }
        })
        return true
      }

      const attach = (server: Http.Server) => {
        if (!enabled) return server
        return divert(server, "request", handle)
      }

      return SendListener.of({ attach })
    })
  )

  static readonly layer = this.layerNoDeps.pipe(Layer.provide([SendMsg.layer, Tokens.layer, Telemetry.layer]))
}
