/**
 * `/notify?protoc=ws`: one JSON text frame per message, protocol-level pings, a bounded send
 * buffer, and close codes that tell the client what to do.
 *
 * Why not Effect's `request.upgrade`: its Socket exposes neither WebSocket ping frames nor the
 * send buffer's size, and both are needed here (dead-peer detection; slow-consumer cut-off). So
 * `attach` routes `/notify` upgrades of the Node server to this module (the `ws` package, which
 * Effect uses underneath too) and every other upgrade to Effect as before.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import type * as Http from "node:http"
import type { Duplex } from "node:stream"
import { WebSocket, WebSocketServer } from "ws"
import { ErrorCode } from "../api/Errors.ts"
import { AppConfig } from "../Config.ts"
import { Tokens } from "../access/Tokens.ts"
import { Feed } from "./Feed.ts"
import { Telemetry } from "../observability/Telemetry.ts"
import { Connections } from "./Connections.ts"
import { eventJson, messageJson } from "./Frames.ts"
import { isNotifyPath, limited, NotifyRefused, type NotifyRequest, parseNotify } from "./Notify.ts"
import { RateLimits } from "../access/RateLimits.ts"
import { divert } from "../NodeServer.ts"
import { SlowConsumer } from "./Protocol.ts"
import { Revocations } from "../access/Revocations.ts"

const TEXT = { binary: false } as const

/** Close codes (4000–4999 are the application's). */
export const CloseCode = {
  /** The server is stopping: reconnect (to any node) with `last_msg_id`. */
  Restart: 1012,
  /** The client sent a data frame: `/notify` is one-way. */
  PolicyViolation: 1008,
  Internal: 1011,
  /** The client read too slowly and its buffer filled: reconnect with `last_msg_id`. */
  SlowConsumer: 4008,
  /** The token expired or was revoked (the reason says which): reconnect only with a new token. */
  TokenEnded: 4001
} as const

const reasons: Record<number, string> = { 401: "Unauthorized", 429: "Too Many Requests" }

const refuseUpgrade = (socket: Duplex, refusal: NotifyRefused) => {
  const body = JSON.stringify({ code: refusal.code, error: refusal.error })
  socket.end(
    `HTTP/1.1 ${refusal.status} ${reasons[refusal.status] ?? "Bad Request"}\r\n`
      + (refusal.retryAfter === undefined ? "" : `Retry-After: ${refusal.retryAfter}\r\n`)
      + `Content-Type: application/json\r\nContent-Length: ${
        Buffer.byteLength(body)
      }\r\nConnection: close\r\n\r\n${body}`
  )
}

export class WebSocketTransport extends Context.Service<WebSocketTransport, {
  /**
   * Makes `server` send `/notify` upgrades here, and end every push connection when it closes.
   * Call before anything listens for `upgrade`.
   */
  readonly attach: (server: Http.Server) => Http.Server
}>()("quick-im/push/WebSocketTransport") {
  static readonly layerNoDeps = Layer.effect(
    WebSocketTransport,
    Effect.gen(function* () {
      const context = yield* Effect.context<Feed | AppConfig>()
      const tokens = yield* Tokens
      const feed = yield* Feed
      const revocations = yield* Revocations
      const connections = yield* Connections
      const telemetry = yield* Telemetry
      const config = yield* AppConfig
      const limits = yield* RateLimits
      const pingEvery = Duration.toMillis(config.wsPing)
      // Bytes queued in a socket's send buffer before the connection is cut as a slow consumer.
      const maxBuffered = config.wsMaxBufferedBytes
      const run = Effect.runForkWith(context)
      const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 4096 })
      const open = new Set<WebSocket>()
      // Stopping: every client is told to come back (to any node) and resume by cursor.
      const stop = () => {
        connections.stop()
        for (const ws of open) ws.close(CloseCode.Restart, "server restarting: reconnect with last_msg_id")
        wss.close()
      }
      yield* Effect.addFinalizer(() => Effect.sync(stop))

      const serve = (ws: WebSocket, notify: NotifyRequest) => {
        // A handshake that completed as the node began stopping.
        if (Deferred.isDoneUnsafe(connections.stopping)) {
          return ws.close(CloseCode.Restart, "server restarting: reconnect with last_msg_id")
        }
        const { session, platform, cursor } = notify
        open.add(ws)
        telemetry.connections.ws++
        let alive = true
        const ping = setInterval(() => {
          if (!alive) return ws.terminate()
          alive = false
          ws.ping()
        }, pingEvery)
        ws.on("pong", () => (alive = true))
        const close = (code: number, reason: string) => {
          if (ws.readyState === WebSocket.OPEN) ws.close(code, reason)
        }
        // Frames are written straight from the mailbox's delivery; a full send buffer cuts the connection.
        // A replay waits between slices until the send buffer is half empty (`ws` has no drain event).
        const ready = Effect.gen(function* () {
          while (ws.bufferedAmount > maxBuffered / 2 && ws.readyState === WebSocket.OPEN) yield* Effect.sleep(5)
        })
        const fiber = run(
          Effect.scoped(feed.attach(
            session,
            platform,
            cursor,
            (messages) => {
              if (ws.bufferedAmount > maxBuffered) return false
              for (const message of messages) ws.send(messageJson(message), TEXT)
              telemetry.deliveries.ws += messages.length
              return true
            },
            ready,
            {
              kinds: notify.events,
              // Live only: an event that finds the send buffer full is dropped (a message would cut the connection).
              write: (event) => {
                if (ws.bufferedAmount <= maxBuffered && ws.readyState === WebSocket.OPEN) {
                  ws.send(eventJson(event), TEXT)
                }
              }
            }
          ))
        )
        fiber.addObserver((exit) => {
          if (Exit.isSuccess(exit)) return close(CloseCode.Restart, "stream ended: reconnect with last_msg_id")
          const slow = exit.cause.reasons.some((r) => r._tag === "Fail" && r.error instanceof SlowConsumer)
          if (slow) telemetry.slowConsumers.ws++
          if (slow) return close(CloseCode.SlowConsumer, "slow consumer: reconnect with last_msg_id")
          if (Cause.hasInterruptsOnly(exit.cause)) {
            return close(CloseCode.Restart, "server restarting: reconnect with last_msg_id")
          }
          if (ws.readyState === WebSocket.OPEN) {
            run(Effect.logWarning("push connection failed", exit.cause))
            close(CloseCode.Internal, "internal error: reconnect with last_msg_id")
          }
        })
        const unwatchToken = revocations.watch(notify.claims, (reason) => close(CloseCode.TokenEnded, reason))
        ws.on("message", () => close(CloseCode.PolicyViolation, "/notify is one-way: clients send no data frames"))
        ws.on("close", () => {
          open.delete(ws)
          telemetry.connections.ws--
          clearInterval(ping)
          unwatchToken()
          run(Fiber.interrupt(fiber))
        })
        ws.on("error", () => ws.terminate())
      }

      const handle = (request: Http.IncomingMessage, socket: Duplex, head: Buffer) => {
        const refuse = (refusal: NotifyRefused) => Effect.sync(() => refuseUpgrade(socket, refusal))
        run(
          parseNotify(tokens, request.url ?? "/", request.headers).pipe(
            Effect.matchEffect({
              onFailure: refuse,
              onSuccess: (notify) => {
                if (notify.protocol !== "ws") {
                  return refuse(
                    new NotifyRefused({
                      status: 400,
                      code: ErrorCode.UnsupportedProtocol,
                      error: `a WebSocket upgrade needs protoc=ws (got ${notify.protocol})`
                    })
                  )
                }
                return limits.admitPush("connects", notify.session, request.socket.remoteAddress).pipe(
                  Effect.mapError(limited),
                  Effect.matchEffect({
                    onFailure: refuse,
                    onSuccess: (release) =>
                      Effect.sync(() => {
                        // The connection's place is freed when its socket closes, also if the handshake fails.
                        if (socket.destroyed) return release()
                        socket.once("close", release)
                        wss.handleUpgrade(
                          request,
                          socket,
                          head,
                          (ws) => serve(ws, notify)
                        )
                      })
                  })
                )
              }
            })
          )
        )
      }

      /**
       * Also: closing `server` stops this node's push first. Node's `close` waits for every open
       * connection, and Effect's HTTP server waits for it (up to its 20 s graceful shutdown timeout)
       * before the node can exit: WebSockets and SSE streams, which never end by themselves, and
       * polls waiting for a message would hold it that long while their clients get nothing new.
       */
      const attach = (server: Http.Server) => {
        const close = server.close.bind(server)
        server.close = ((callback?: (error?: Error) => void) => {
          stop()
          return close(callback)
        }) as typeof server.close
        return divert(server, "upgrade", (request: Http.IncomingMessage, socket: Duplex, head: Buffer) => {
          if (!isNotifyPath(request.url)) return false
          handle(request, socket, head)
          return true
        })
      }

      return WebSocketTransport.of({ attach })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([Feed.layer, Connections.layer, RateLimits.layer, Revocations.layer, Telemetry.layer, Tokens.layer])
  )
}
