/**
 * The push side of the plain servers the push benchmark compares against (bench/ceiling.ts,
 * bench/floor.ts): clients connect to `/?id=<client id>`; the map gives each id's open sockets.
 */
import type * as Http from "node:http"
import { type WebSocket, WebSocketServer } from "ws"

export const clientSockets = (server: Http.Server): ReadonlyMap<string, Set<WebSocket>> => {
  const clients = new Map<string, Set<WebSocket>>()
  const wss = new WebSocketServer({ server, perMessageDeflate: false })
  wss.on("connection", (ws, req) => {
    const id = new URL(req.url ?? "/", "http://x").searchParams.get("id") ?? ""
    const set = clients.get(id) ?? new Set()
    set.add(ws)
    clients.set(id, set)
    ws.on("close", () => set.delete(ws))
  })
  return clients
}
