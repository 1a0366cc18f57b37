/**
 * Under Deno, `node:http` keeps its server's request-timeout bookkeeping (`headersTimeout`,
 * `requestTimeout`) in a JavaScript `ConnectionsList` whose `_active` is a `Map` from socket to the
 * request being read: every request sets an entry and every answer deletes it. A long-lived `Map`
 * that entries come and go through keeps every entry it ever held reachable for V8's
 * young-generation collections (see `src/storage/Waiters.ts`), and each entry holds the request,
 * so every request, and what its listeners reach (the send, its rows, the commit statement), was
 * promoted and piled up as garbage in the old generation: about 40 % of what a send left there
 * (bench/RESULTS.md, "A bounded heap").
 *
 * `keepRequestsOnSockets` keeps the same record on the socket itself, with the same meaning, so
 * nothing is added to or taken out of a long-lived table per request. It changes nothing where the
 * list is not that JavaScript class (Node's is native): it reports whether it applied.
 */
import type { Server } from "node:http"

interface Active {
  headersCompleted: boolean
  readonly startTime: number
  req: { readonly complete?: boolean } | null
}

interface RuntimeConnectionsList {
  _all: Set<object>
  _active: Map<object, Active>
  pushActive(socket: object): void
  popActive(socket: object): void
  popActiveIfReq(socket: object, req: unknown): void
  markHeadersCompleted(socket: object, req: Active["req"]): void
  remove(socket: object): void
  expired(headersTimeout: number, requestTimeout: number): Array<{ readonly socket: object }>
}

const ACTIVE = Symbol("quickim.activeRequest")

type Tracked = { [ACTIVE]?: Active | undefined }

const isRuntimeList = (list: unknown): list is RuntimeConnectionsList => {
  if (typeof list !== "object" || list === null) return false
  const l = list as Partial<RuntimeConnectionsList>
  // Its `Set` and `Map` are the runtime's own copies (not `instanceof` this realm's): by shape.
  const has = (o: unknown, names: ReadonlyArray<PropertyKey>) =>
    typeof o === "object" && o !== null
    && names.every((n) => typeof (o as Record<PropertyKey, unknown>)[n] === "function")
  return has(l._all, ["add", "delete", Symbol.iterator])
    && has(l._active, ["get", "set", "delete", "clear", Symbol.iterator])
    && ["pushActive", "popActive", "popActiveIfReq", "markHeadersCompleted", "remove", "expired"]
      .every((name) => typeof (l as Record<string, unknown>)[name] === "function")
}

/** The server's connection list, once it listens (the runtime creates it then). */
const connectionsList = (server: Server): unknown => {
  const key = Object.getOwnPropertySymbols(server).find((s) => s.description === "http.server.connections")
  return key === undefined ? undefined : (server as unknown as Record<symbol, unknown>)[key]
}

/** Moves `list`'s per-request record onto each socket. Same semantics as the runtime's methods. */
const moveOntoSockets = (list: RuntimeConnectionsList) => {
  const all = list._all
  for (const [socket, active] of list._active) (socket as Tracked)[ACTIVE] = active
  list._active.clear()
  list.pushActive = (socket) => {
    ;(socket as Tracked)[ACTIVE] = { headersCompleted: false, startTime: performance.now(), req: null }
  }
  list.popActive = (socket) => {
    ;(socket as Tracked)[ACTIVE] = undefined
  }
  list.popActiveIfReq = (socket, req) => {
    if ((socket as Tracked)[ACTIVE]?.req === req) (socket as Tracked)[ACTIVE] = undefined
  }
  list.markHeadersCompleted = (socket, req) => {
    const active = (socket as Tracked)[ACTIVE]
    if (active !== undefined) {
      active.headersCompleted = true
      active.req = req
    }
  }
  list.remove = (socket) => {
    all.delete(socket)
    ;(socket as Tracked)[ACTIVE] = undefined
  }
  // As the runtime's: a request whose head is not complete after `headersTimeout`, or that is not
  // complete after `requestTimeout` (0: that check is off), counting from its first byte.
  list.expired = (headersTimeout, requestTimeout) => {
    const now = performance.now()
    const expired: Array<{ readonly socket: object }> = []
    for (const socket of all) {
      const active = (socket as Tracked)[ACTIVE]
      if (active === undefined) continue
      const age = now - active.startTime
      if (!active.headersCompleted && headersTimeout > 0 && age >= headersTimeout) {
        expired.push({ socket })
        continue
      }
      if (requestTimeout > 0 && age >= requestTimeout && active.req?.complete !== true) expired.push({ socket })
    }
    return expired
  }
}

/**
 * Applies the change to `server` once it listens. `applied` (for tests) is called with whether
 * the runtime's list was the JavaScript one this replaces.
 */
export const keepRequestsOnSockets = (server: Server, applied?: (done: boolean) => void): Server => {
  server.once("listening", () => {
    const list = connectionsList(server)
    const runtimeList = isRuntimeList(list)
    if (runtimeList) moveOntoSockets(list)
    applied?.(runtimeList)
  })
  return server
}
