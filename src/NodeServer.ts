/**
 * Taking chosen requests of a Node server before whatever listens after: WebSocket upgrades of
 * `/notify` (push/WebSocketTransport.ts) and the usual `send_msg` (server/SendRoute.ts) are served
 * by their own code; everything else reaches the listeners Effect's platform adds.
 */
import type * as Http from "node:http"

/**
 * Makes every later listener of `event` on `server` see only what `take` leaves: `take` gets the
 * event's arguments and returns true when it has taken them. Call before anything listens for `event`.
 *
 * `take` decides once per event, however many listeners there are: Effect's platform adds more
 * than one `request` listener in some releases (one answering 503 while no handler is attached),
 * and a send taken once per listener would be stored once per listener. A listener removed with
 * `off` (or `removeListener`) is removed, though what the server holds is its wrapper.
 */
export const divert = <Args extends Array<any>>(
  server: Http.Server,
  event: "request" | "upgrade",
  take: (...args: Args) => boolean
): Http.Server => {
  const on = server.on.bind(server)
  const off = server.off.bind(server)
  const wrappers = new WeakMap<(...args: Array<any>) => void, (...args: Args) => void>()
  // Listeners run one after another for one event: its first argument (the request) tells it apart.
  let last: unknown = undefined
  let lastTaken = false
  const taken = (args: Args) => {
    if (args[0] !== last) {
      last = args[0]
      lastTaken = take(...args)
    }
    return lastTaken
  }
  const wrap = (name: string | symbol, listener: (...args: Array<any>) => void) => {
    if (name !== event) return on(name as string, listener)
    const wrapper = (...args: Args) => {
      if (!taken(args)) listener(...args)
    }
    wrappers.set(listener, wrapper)
    return on(event, wrapper)
  }
  const unwrap = (name: string | symbol, listener: (...args: Array<any>) => void) =>
    off(name as string, name === event ? wrappers.get(listener) ?? listener : listener)
  server.on = wrap as typeof server.on
  server.addListener = wrap as typeof server.addListener
  server.off = unwrap as typeof server.off
  server.removeListener = unwrap as typeof server.removeListener
  return server
}
