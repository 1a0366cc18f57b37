/**
 * `GET /notify` over plain HTTP: `protoc=sse` (an event stream) and `protoc=poll` (one message
 * per request, waiting up to QUICKIM_POLL_WAIT, 204 when none came). `protoc=ws` arrives as an
 * upgrade and is served by WebSocketGateway; without the upgrade headers it is refused here.
 * When the token expires or is revoked, a stream ends with `event: error` (code 10101) and a
 * waiting poll answers 401/10101.
 */
import { Cause, Deferred, Duration, Effect, Exit, Layer, Queue, Stream } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { ErrorCode } from "../api/Errors.ts"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { RunnerWatch } from "../cluster/RunnerWatch.ts"
import { Telemetry } from "../observability/Telemetry.ts"
import { Feed } from "./Feed.ts"
import { Connections } from "./Connections.ts"
import { messageJson } from "./Frames.ts"
import { type NotifyRequest, parseNotify } from "./Notify.ts"
import { Revocations, TokenEnded } from "../access/Revocations.ts"
import { Mailbox } from "./Protocol.ts"
import { RateLimits } from "../access/RateLimits.ts"
import { remoteAddressOf } from "../access/Access.ts"

const encoder = new TextEncoder()

const END = encoder.encode("\n\n")

/** One chunk per batch the connection has waiting: one write instead of one per message. */
const sseEvents = (messages: ReadonlyArray<MsgData>) => {
  const parts: Array<Uint8Array> = []
  let size = 0
  for (const m of messages) {
    const head = encoder.encode(`event: message\nid: ${m.MsgId}\ndata: `)
    const body = messageJson(m)
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

export const NotifyRoutes = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const feed = yield* Feed
  const mailboxes = yield* Mailbox.client
  const connections = yield* Connections
  const telemetry = yield* Telemetry
  const watch = yield* RunnerWatch
  const limits = yield* RateLimits
  const heartbeat = Duration.toMillis(config.sseHeartbeat)
  const waitMs = Duration.toMillis(config.pollWait)

  const revocations = yield* Revocations

  /** Fails with TokenEnded when the connection's token expires or is revoked; emits nothing. */
  const tokenEnd = (notify: NotifyRequest) =>
    Stream.callback<never, TokenEnded>((queue) =>
      Effect.acquireRelease(
        Effect.sync(() =>
          revocations.watch(notify.claims, (reason) =>
            Queue.failCauseUnsafe(queue, Cause.fail(new TokenEnded({ reason }))))
        ),
        (unwatch) =>
          Effect.sync(unwatch)
      )
    )

  return HttpRouter.add("GET", "/notify", (request) =>
    Effect.gen(function* () {
      const notify = yield* parseNotify(request.url, request.headers)
      switch (notify.protocol) {
        case "ws":
          return HttpServerResponse.jsonUnsafe({
            code: ErrorCode.UnsupportedProtocol,
            error: "protoc=ws needs a WebSocket upgrade request"
          }, { status: 426, headers: { upgrade: "websocket" } })
        case "poll": {
          const release = yield* limits.admitPush("polls", notify.session, remoteAddressOf(request))
          telemetry.connections.poll++
          // A runner leaving may have taken the session's mailbox with it, and a call to it is
          // answered by nobody: answer 503 then, and the client polls again with its cursor.
          const runnerLeft = yield* Deferred.make<void>()
          const unwatch = watch.onRunnerLeft(() => Deferred.doneUnsafe(runnerLeft, Exit.void))
          const unavailable = { status: 503, code: ErrorCode.Unavailable, error: "push unavailable, retry" }
          const tokenEnded = yield* Deferred.make<never, { status: number; code: number; error: string }>()
          const unwatchToken = revocations.watch(notify.claims, (reason) =>
            Deferred.doneUnsafe(tokenEnded, Exit.fail({ status: 401, code: ErrorCode.InvalidToken, error: reason })))
          const message = yield* mailboxes(notify.session).Poll({
            platform: notify.platform,
            waitMs,
            ...(notify.cursor === undefined ? {} : { cursor: notify.cursor })
          }).pipe(
            // The session's mailbox may be between nodes; past the wait plus a margin, ask for a retry.
            Effect.timeoutOrElse({
              duration: Duration.millis(waitMs + 10_000),
              orElse: () =>
                Effect.fail(unavailable)
            }),
            Effect.raceFirst(Deferred.await(runnerLeft).pipe(Effect.andThen(Effect.fail(unavailable)))),
            // This node is stopping: the client polls again, on another node, with its cursor.
            Effect.raceFirst(Deferred.await(connections.stopping).pipe(Effect.andThen(Effect.fail(unavailable)))),
            Effect.raceFirst(Deferred.await(tokenEnded)),
            Effect.ensuring(Effect.sync(() => {
              release()
              telemetry.connections.poll--
              unwatch()
              unwatchToken()
            }))
          )
          if (message !== null) {
            telemetry.deliveries.poll++
          }
          return message === null
            ? HttpServerResponse.empty({ status: 204 })
            : HttpServerResponse.jsonUnsafe(message, { headers: { "cache-control": "no-store" } })
        }
        case "sse": {
          const release = yield* limits.admitPush(
            "connects",
            notify.session,
            remoteAddressOf(request)
          )
          const events = feed.open(notify.session, notify.platform, notify.cursor).pipe(
            Stream.ensuring(Effect.sync(release)),
            Stream.onStart(Effect.sync(() =>
              telemetry.connections.sse++
            )),
            Stream.ensuring(Effect.sync(() => telemetry.connections.sse--)),
            Stream.chunks,
            Stream.map((messages) => {
              telemetry.deliveries.sse += messages.length
              return sseEvents(messages)
            }),
            Stream.merge(tokenEnd(notify), { haltStrategy: "left" }),
            // A slow reader or a failure ends the stream with a reason; EventSource reconnects with
            // Last-Event-ID (an expired or revoked token is then refused with 401).
            Stream.catchCause((cause) => {
              const failure = cause.reasons.find((r) => r._tag === "Fail")
              const tag = failure?._tag === "Fail" ? (failure.error as any)?._tag : undefined
              if (tag === "SlowConsumer") telemetry.slowConsumers.sse++
              return Stream.succeed(encoder.encode(
                `event: error\ndata: ${
                  JSON.stringify(
                    tag === "SlowConsumer"
                      ? { code: ErrorCode.SlowConsumer, error: "slow consumer" }
                      : tag === "TokenEnded"
                      ? { code: ErrorCode.InvalidToken, error: (failure as any).error.reason }
                      : { code: ErrorCode.Internal, error: "internal error" }
                  )
                }\n\n`
              ))
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
        }
      }
    }).pipe(
      Effect.catch((e: any) =>
        "status" in e && "code" in e
          ? Effect.succeed(
            HttpServerResponse.jsonUnsafe({ code: e.code, error: e.error }, {
              status: e.status,
              ...("retryAfter" in e ? { headers: { "retry-after": String(e.retryAfter) } } : {})
            })
          )
          : Effect.die(e)
      )
    ))
}))
