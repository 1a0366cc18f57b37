/** Push clients for tests: real WebSocket, EventSource-style SSE over fetch, and long-poll loops. */
import * as Net from "node:net"
import type { MsgData } from "../../src/domain/Conversation.ts"

export interface PushClient {
  readonly messages: Array<MsgData>
  /** Resolves when the server or the test ended the connection. */
  readonly closed: Promise<{ readonly code?: number; readonly reason?: string }>
  readonly close: () => void
  /** Waits until `predicate` holds over the received messages. */
  readonly until: (predicate: (messages: ReadonlyArray<MsgData>) => boolean, timeoutMs?: number) => Promise<void>
}

const waiter =
  <T = MsgData>(messages: Array<T>, listeners: Set<() => void>) =>
  (predicate: (m: ReadonlyArray<T>) => boolean, timeoutMs = 15_000) =>
    new Promise<void>((resolve, reject) => {
      if (predicate(messages)) return resolve()
      const check = () => {
        if (predicate(messages)) {
          listeners.delete(check)
          clearTimeout(timer)
          resolve()
        }
      }
      const timer = setTimeout(() => {
        listeners.delete(check)
        reject(new Error(`timed out after ${timeoutMs} ms with ${messages.length} messages`))
      }, timeoutMs)
      listeners.add(check)
    })

export const connectWs = (base: string, token: string, cursor?: string, platformQuery = ""): Promise<PushClient> =>
  new Promise((resolve, reject) => {
    const url = `${base.replace(/^http/, "ws")}/notify?protoc=ws&token=${token}${
      cursor ? `&last_msg_id=${cursor}` : ""
    }${platformQuery}`
    const ws = new WebSocket(url)
    const messages: Array<MsgData> = []
    const listeners = new Set<() => void>()
    let resolveClosed!: (v: { code?: number; reason?: string }) => void
    const closed = new Promise<{ code?: number; reason?: string }>((r) => (resolveClosed = r))
    ws.onmessage = (e) => {
      messages.push(JSON.parse(String(e.data)))
      for (const l of [...listeners]) l()
    }
    ws.onclose = (e) => resolveClosed({ code: e.code, reason: e.reason })
    ws.onerror = () => reject(new Error("websocket failed to open"))
    ws.onopen = () => resolve({ messages, closed, close: () => ws.close(), until: waiter(messages, listeners) })
  })

export interface SseEvent {
  readonly event: string | undefined
  readonly id: string | undefined
  readonly data: string
}

/**
 * Reads an event stream until it ends or `signal` aborts it, calling `onEvent` for each event block.
 * The abort cancels the body too: Deno's fetch keeps the connection open when only its signal
 * aborts once the body is being read, and the server then rightly counts it as still connected.
 */
export const readSseEvents = async (
  body: ReadableStream<Uint8Array>,
  onEvent: (e: SseEvent) => void,
  signal?: AbortSignal
) => {
  const reader = body.getReader()
  const cancel = () => void reader.cancel().catch(() => {})
  if (signal?.aborted) cancel()
  signal?.addEventListener("abort", cancel, { once: true })
  const decoder = new TextDecoder()
  let buffer = ""
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return
      buffer += decoder.decode(value, { stream: true })
      let end: number
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, end).split("\n")
        buffer = buffer.slice(end + 2)
        onEvent({
          event: lines.find((l) => l.startsWith("event: "))?.slice(7),
          id: lines.find((l) => l.startsWith("id: "))?.slice(4),
          data: lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n")
        })
      }
    }
  } catch {
    // aborted by the caller
  }
}

export const connectSse = async (base: string, token: string, cursor?: string): Promise<
  PushClient & {
    readonly errors: Array<string>
  }
> => {
  const controller = new AbortController()
  const res = await fetch(`${base}/notify?protoc=sse&token=${token}`, {
    headers: cursor ? { "last-event-id": cursor } : {},
    signal: controller.signal
  })
  if (res.status !== 200) throw new Error(`sse answered ${res.status}: ${await res.text()}`)
  const messages: Array<MsgData> = []
  const errors: Array<string> = []
  const listeners = new Set<() => void>()
  const closed = readSseEvents(res.body!, ({ event, id, data }) => {
    if (event === "message") {
      const m = JSON.parse(data) as MsgData
      if (id !== m.MsgId) throw new Error(`SSE id ${id} does not match MsgId ${m.MsgId}`)
      messages.push(m)
      for (const l of [...listeners]) l()
    } else if (event === "error") errors.push(data)
  }, controller.signal).then(() => ({}))
  return { messages, errors, closed, close: () => controller.abort(), until: waiter(messages, listeners) }
}

/** Polls in a loop (one request at a time) until closed. */
export const connectPoll = (base: string, token: string, cursor?: string): PushClient => {
  const messages: Array<MsgData> = []
  const listeners = new Set<() => void>()
  let stopped = false
  const controller = new AbortController()
  const closed = (async () => {
    let first = true
    while (!stopped) {
      const c = first && cursor ? `&last_msg_id=${cursor}` : ""
      first = false
      try {
        const res = await fetch(`${base}/notify?protoc=poll&token=${token}${c}`, { signal: controller.signal })
        if (res.status === 200) {
          messages.push(await res.json())
          for (const l of [...listeners]) l()
        } else await res.body?.cancel()
      } catch {
        if (!stopped) await new Promise((r) => setTimeout(r, 50))
      }
    }
    return {}
  })()
  return {
    messages,
    closed,
    close: () => {
      stopped = true
      controller.abort()
    },
    until: waiter(messages, listeners)
  }
}

export type Protocol = "ws" | "sse" | "poll"

export const connect = (protocol: Protocol, base: string, token: string, cursor?: string): Promise<PushClient> =>
  protocol === "ws"
    ? connectWs(base, token, cursor)
    : protocol === "sse"
    ? connectSse(base, token, cursor)
    : Promise.resolve(connectPoll(base, token, cursor))

/** Messages deduplicated by MsgId, first occurrence kept. */
export const dedupe = (messages: ReadonlyArray<MsgData>) => {
  const seen = new Set<string>()
  return messages.filter((m) => !seen.has(m.MsgId) && seen.add(m.MsgId))
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * A client that connects and then stops reading: after the kernel's socket buffers fill, the
 * server sees it as slow. Returns everything it received once `drain()` lets it read again.
 */
export const stalledClient = async (url: string, headers: Record<string, string> = {}) => {
  const { hostname, port, pathname, search } = new URL(url)
  const socket = Net.connect(Number(port), hostname)
  await new Promise((r) => socket.once("connect", r))
  const chunks: Array<Buffer> = []
  socket.on("data", (d) => chunks.push(d))
  const ended = new Promise((r) => socket.once("close", r))
  socket.write(
    `GET ${pathname}${search} HTTP/1.1\r\nHost: ${hostname}\r\n`
      + Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n"
  )
  await sleep(200)
  socket.pause()
  return {
    drain: async (ms: number) => {
      socket.resume()
      await Promise.race([ended, sleep(ms)])
      socket.destroy()
      return Buffer.concat(chunks).toString("latin1")
    }
  }
}

/** Headers that make `stalledClient` ask for a WebSocket upgrade. */
export const wsUpgradeHeaders = {
  Connection: "Upgrade",
  Upgrade: "websocket",
  "Sec-WebSocket-Version": "13",
  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="
}

/** A push connection that opted in to live events: messages and events apart, each awaitable. */
export interface LiveClient extends PushClient {
  readonly events: Array<Record<string, unknown> & { readonly Event: string }>
  readonly untilEvent: (
    predicate: (events: ReadonlyArray<Record<string, unknown> & { readonly Event: string }>) => boolean,
    timeoutMs?: number
  ) => Promise<void>
}

/** Connects with `events=<kinds>` over `protocol`; each JSON object with an `Event` field is an event. */
export const connectLive = async (
  protocol: Protocol,
  base: string,
  token: string,
  kinds: string
): Promise<LiveClient> => {
  const messages: Array<MsgData> = []
  const events: LiveClient["events"] = []
  const listeners = new Set<() => void>()
  const eventListeners = new Set<() => void>()
  const take = (value: any) => {
    if (value !== null && typeof value === "object" && "Event" in value) {
      events.push(value)
      for (const l of [...eventListeners]) l()
    } else {
      messages.push(value)
      for (const l of [...listeners]) l()
    }
  }
  const query = `events=${kinds}&token=${token}`
  const base2 = {
    messages,
    until: waiter(messages, listeners),
    events,
    untilEvent: waiter(events, eventListeners)
  }
  if (protocol === "ws") {
    return await new Promise((resolve, reject) => {
      const ws = new WebSocket(`${base.replace(/^http/, "ws")}/notify?protoc=ws&${query}`)
      let resolveClosed!: (v: { code?: number; reason?: string }) => void
      const closed = new Promise<{ code?: number; reason?: string }>((r) => (resolveClosed = r))
      ws.onmessage = (e) => take(JSON.parse(String(e.data)))
      ws.onclose = (e) => resolveClosed({ code: e.code, reason: e.reason })
      ws.onerror = () => reject(new Error("websocket failed to open"))
      ws.onopen = () => resolve({ ...base2, closed, close: () => ws.close() } as LiveClient)
    })
  }
  const controller = new AbortController()
  if (protocol === "sse") {
    const res = await fetch(`${base}/notify?protoc=sse&${query}`, { signal: controller.signal })
    if (res.status !== 200) throw new Error(`sse answered ${res.status}: ${await res.text()}`)
    const closed = readSseEvents(res.body!, ({ event, id, data }) => {
      if (event === "message" || (event !== undefined && event !== "error")) {
        const value = JSON.parse(data)
        // Events carry no id (they do not move the resume cursor); messages carry their MsgId.
        if (event === "message" ? id !== value.MsgId : id !== undefined || value.Event !== event) {
          throw new Error(`SSE ${event} has id ${id}`)
        }
        take(value)
      }
    }, controller.signal).then(() => ({}))
    return { ...base2, closed, close: () => controller.abort() } as LiveClient
  }
  let stopped = false
  const closed = (async () => {
    while (!stopped) {
      try {
        const res = await fetch(`${base}/notify?protoc=poll&${query}`, { signal: controller.signal })
        if (res.status === 200) take(await res.json())
        else await res.body?.cancel()
      } catch {
        if (!stopped) await new Promise((r) => setTimeout(r, 50))
      }
    }
    return {}
  })()
  return {
    ...base2,
    closed,
    close: () => {
      stopped = true
      controller.abort()
    }
  } as LiveClient
}
