/**
 * `GET /notify` over plain HTTP: who is asking and how (Notify), then the transport that serves
 * it (SseTransport, PollTransport). `protoc=ws` arrives as an upgrade and is served by
 * WebSocketTransport; without the upgrade headers it is refused here.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { ErrorCode } from "../api/Errors.ts"
import { parseNotify, refusedResponse } from "./Notify.ts"
import { PollTransport } from "./PollTransport.ts"
import { SseTransport } from "./SseTransport.ts"
import { Tokens } from "../access/Tokens.ts"

export const NotifyRoutes = Layer.unwrap(Effect.gen(function* () {
  const sse = yield* SseTransport
  const poll = yield* PollTransport
  const tokens = yield* Tokens
  return HttpRouter.add("GET", "/notify", (request) =>
    parseNotify(tokens, request.url, request.headers).pipe(
      Effect.flatMap((notify) => {
        switch (notify.protocol) {
          case "ws":
            return Effect.succeed(HttpServerResponse.jsonUnsafe({
              code: ErrorCode.UnsupportedProtocol,
              error: "protoc=ws needs a WebSocket upgrade request"
            }, { status: 426, headers: { upgrade: "websocket" } }))
          case "poll":
            return poll.serve(notify, request)
          case "sse":
            return sse.serve(notify, request)
        }
      }),
      Effect.catchTag("NotifyRefused", (refused) => Effect.succeed(refusedResponse(refused)))
    ))
})).pipe(Layer.provide([SseTransport.layer, PollTransport.layer, Tokens.layer]))
