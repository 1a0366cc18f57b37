/**
 * `GET /notify?protoc=sse`: an event stream fed by the push core (Feed), one `message` event per
 * message with its MsgId as the event id, so an EventSource resumes by itself with
 * `Last-Event-ID`. A slow reader, an expired or revoked token, or a failure ends the stream with
 * `event: error` and a code the client acts on.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import type * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { remoteAddressOf } from "../access/Access.ts"
import { RateLimits } from "../access/RateLimits.ts"
import { Revocations, TokenEnded } from "../access/Revocations.ts"
import { ErrorCode } from "../api/Errors.ts"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import type { LiveEvent } from "../domain/Events.ts"
import { Telemetry } from "../observability/Telemetry.ts"
import { Feed } from "./Feed.ts"
import { eventJson, messageJson } from "./Frames.ts"
import { limited, type NotifyRequest, type ServeNotify } from "./Notify.ts"
import { SlowConsumer } from "./Protocol.ts"

const encoder = new TextEncoder()

const END = encoder.encode("\n\n")

/**
 * One chunk per batch the connection has waiting: one write instead of one per message. A live
 * event is `event: <kind>` without an `id:`, so it never moves the EventSource's resume cursor.
 */
const sseEvents = (items: ReadonlyArray<MsgData | LiveEvent>) => {
  const parts: Array<Uint8Array> = []
  let size = 0
  for (const m of items) {
    const isEvent = "Event" in m
    const head = encoder.encode(isEvent ? `event: ${m.Event}\ndata: ` : `event: message\nid: ${m.MsgId}\ndata: `)
    const body = isEvent ? eventJson(m) : messageJson(m)
    parts.push(head, body, END)
    size += head.length + body.length + END.length
  }
  const chunk = new Uint8Array(size)
  let at = 0
  for (const part of parts) {
    chunk.set(part, at)
    at += part.length
  }
  return chunk
}

/** The `event: error` that ends a stream, by why it ended. */
const endEvent = (cause: Cause.Cause<unknown>) => {
  const error = Cause.squash(cause)
  const body = error instanceof SlowConsumer
    ? { code: ErrorCode.SlowConsumer, error: "slow consumer" }
    : error instanceof TokenEnded
    ? { code: ErrorCode.InvalidToken, error: error.reason }
    : { code: ErrorCode.Internal, error: "internal error" }
  return encoder.encode(`event: error\ndata: ${JSON.stringify(body)}\n\n`)
}

export class SseTransport extends Context.Service<SseTransport, {
  readonly serve: ServeNotify
}>()("quick-im/push/SseTransport") {
  static readonly layerNoDeps = Layer.effect(
    SseTransport,
    Effect.gen(function* () {
      const feed = yield* Feed
      const telemetry = yield* Telemetry
      const limits = yield* RateLimits
      const revocations = yield* Revocations
      const heartbeat = Duration.toMillis((yield* AppConfig).sseHeartbeat)

      /** Fails with TokenEnded when the connection's token expires or is revoked; emits nothing. */
      const tokenEnd = (notify: NotifyRequest) =>
        Stream.callback<never, TokenEnded>((queue) =>
          Effect.acquireRelease(
            Effect.sync(() =>
              revocations.watch(
                notify.claims,
                (reason) => Queue.failCauseUnsafe(queue, Cause.fail(new TokenEnded({ reason })))
              )
            ),
            (unwatch) => Effect.sync(unwatch)
          )
        )

      const serve = Effect.fnUntraced(function* (notify: NotifyRequest, request: HttpServerRequest.HttpServerRequest) {
        const release = yield* limits.admitPush("connects", notify.session, remoteAddressOf(request)).pipe(
          Effect.mapError(limited)
        )
        const events = feed.open(notify.session, notify.platform, notify.cursor, notify.events).pipe(
          Stream.ensuring(Effect.sync(release)),
          Stream.onStart(Effect.sync(() => telemetry.connections.sse++)),
          Stream.ensuring(Effect.sync(() => telemetry.connections.sse--)),
          Stream.chunks,
          Stream.map((messages) => {
            telemetry.deliveries.sse += messages.length
            return sseEvents(messages)
          }),
          Stream.merge(tokenEnd(notify), { haltStrategy: "left" }),
          // EventSource reconnects with Last-Event-ID (an expired or revoked token is then refused with 401).
          Stream.catchCause((cause) => {
            if (Cause.squash(cause) instanceof SlowConsumer) telemetry.slowConsumers.sse++
            return Stream.succeed(endEvent(cause))
          }),
          Stream.merge(Stream.tick(heartbeat).pipe(Stream.map(() => encoder.encode(": ping\n\n"))), {
            haltStrategy: "left"
          })
        )
        // The first chunk goes out at once so the headers are flushed before any message.
        return HttpServerResponse.stream(Stream.concat(Stream.succeed(encoder.encode("retry: 2000\n\n")), events), {
          contentType: "text/event-stream",
          headers: { "cache-control": "no-store", "x-accel-buffering": "no", connection: "keep-alive" }
        })
      })

      return SseTransport.of({ serve })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([Feed.layer, RateLimits.layer, Revocations.layer, Telemetry.layer])
  )
}
