/**
 * Taking chosen requests of a Node server before whatever listens after: WebSocket upgrades of
 * `/notify` (push/WebSocketTransport.ts) and the usual `send_msg` (server/SendRoute.ts) are served
 * by their own code; everything else reaches the listeners Effect's platform adds.
 */
import type * as Http from "node:http"

/**
 * Makes every later listener of `event` on `server` see only what `take` leaves: `take` gets the
 * event's arguments and returns true when it has taken them. Call before anything listens for `event`.
 */
export const divert = <Args extends Array<any>>(
  server: Http.Server,
  event: "request" | "upgrade",
  take: (...args: Args) => boolean
): Http.Server => {
  const on = server.on.bind(server)
  const wrap = (name: string | symbol, listener: (...args: Array<any>) => void) =>
    name === event
      ? on(event, (...args: Args) => {
        if (!take(...args)) listener(...args)
      })
      : on(name as string, listener)
  server.on = wrap as typeof server.on
  server.addListener = wrap as typeof server.addListener
  return server
}
