/**
 * The HTTP listeners' connection timeouts (QUICKIM_HTTP_HEADERS_TIMEOUT, QUICKIM_HTTP_REQUEST_TIMEOUT,
 * QUICKIM_HTTP_IDLE_TIMEOUT), enforced by one periodic sweep instead of per-socket timers.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http"
import type { Socket } from "node:net"

interface Watched {
  readonly since: number
  /** The request being served or last served, and its response. */
  request: IncomingMessage | undefined
  response: ServerResponse | undefined
  requestAt: number
  /** Bytes moved at the last sweep, and since when they have not moved. */
  read: number
  written: number
  stillSince: number
}

const REQUEST_TIMEOUT_ANSWER = "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

/**
 * The timeouts of every connection, checked by one sweep over the open connections (every quarter
 * of the shortest timeout, at least 250 ms), at no cost per request beyond noting it:
 * - headers: a connection's first request head must be complete within `headersMs` (a later
 *   head on a kept-alive connection that stops arriving is closed by the idle timeout, or by the
 *   runtime's own 60 s headers timeout if it trickles);
 * - request: a request's body must be complete within `requestMs` of its head;
 * - idle: a connection that moved no byte either way for `idleMs` (a client that stopped reading a
 *   response, say) is closed.
 * Node's own `server.timeout`, `headersTimeout` and `requestTimeout` do the same, but under Deno
 * the first costs a timer re-armed on every read and write (about 2 % of a busy node's CPU in
 * profiles of the send path); the runtime's defaults for the other two stay on as a backstop.
 * Each timeout takes effect up to a sweep interval late.
 */
export const watchConnections = (
  server: Server,
  limits: { readonly headersMs: number; readonly requestMs: number; readonly idleMs: number }
) => {
  const watched = new Map<Socket, Watched>()
  server.on("connection", (socket: Socket) => {
    const now = Date.now()
    watched.set(socket, {
      since: now,
      request: undefined,
      response: undefined,
      requestAt: 0,
      read: -1,
      written: -1,
      stillSince: now
    })
    socket.once("close", () => watched.delete(socket))
  })
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    const state = watched.get(request.socket as Socket)
    if (state === undefined) return
    state.request = request
    state.response = response
    state.requestAt = Date.now()
  })
  server.on("upgrade", (_request, socket: Socket) => watched.delete(socket))
  const refuse = (socket: Socket, answered: boolean) => {
    watched.delete(socket)
    if (!answered && socket.writable) socket.end(REQUEST_TIMEOUT_ANSWER)
    socket.destroySoon?.()
    setTimeout(() => socket.destroy(), 1_000).unref()
  }
  const sweep = setInterval(() => {
    const now = Date.now()
    for (const [socket, state] of watched) {
      const read = socket.bytesRead
      const written = socket.bytesWritten
      if (read !== state.read || written !== state.written) {
        state.read = read
        state.written = written
        state.stillSince = now
      } else if (now - state.stillSince >= limits.idleMs) {
        watched.delete(socket)
        // A reset where the runtime has one: what is still queued for the client is dropped.
        if (typeof socket.resetAndDestroy === "function") socket.resetAndDestroy()
        else socket.destroy()
        continue
      }
      const { request, response } = state
      if (request === undefined) {
        if (now - state.since >= limits.headersMs) refuse(socket, false)
      } else if (!request.complete) {
        if (now - state.requestAt >= limits.requestMs) refuse(socket, response?.headersSent === true)
      }
    }
  }, Math.max(250, Math.floor(Math.min(limits.headersMs, limits.requestMs, limits.idleMs) / 4)))
  sweep.unref()
  server.once("close", () => clearInterval(sweep))
}
