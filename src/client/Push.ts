/**
 * The client side of `/notify`: one logical subscription that survives disconnects. It connects
 * over ws, sse or poll with the platform's own `WebSocket` and `fetch` (Deno, Node ≥ 22,
 * browsers), reconnects with capped exponential backoff and jitter, resumes from the last MsgId it
 * delivered (docs/api.md, "Resume"), and drops repeats by MsgId, so the caller sees every message of its
 * conversations once, per conversation in order. The token travels in the `Authorization` header
 * on sse and poll (fetch); only ws, whose browser API sets no headers, puts it in the URL. A token
 * that expires or is revoked ends the subscription with PushRefused (status 401).
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import type { MsgData } from "../domain/Conversation.ts"
import type { EventKind, LiveEvent } from "../domain/Events.ts"

export type PushProtocol = "ws" | "sse" | "poll"

export interface SubscribeOptions {
  /** The server, e.g. `http://localhost:8080`. */
  readonly baseUrl: string
  /** A session token (`inner/get_token`). */
  readonly token: string
  readonly protocol?: PushProtocol
  /** Resume after this MsgId (the last one the client holds); without it, from now on. */
  readonly cursor?: string
  /** First reconnect delay (ms), doubled per failed attempt up to `maxDelayMs`. */
  readonly minDelayMs?: number
  readonly maxDelayMs?: number
  /** Told of each connection state change, e.g. for a status light. */
  readonly onState?: (state: PushState) => void
  /**
   * A connection silent for this long (ms; no message or heartbeat on SSE, no answer to a poll) is
   * taken for dead and replaced. Keep it above the server's `QUICKIM_SSE_HEARTBEAT` and
   * `QUICKIM_POLL_WAIT` (15 s and 30 s by default).
   */
  readonly idleTimeoutMs?: number
  /**
   * Live events to receive (`read`, `member`, `typing`; `conversation` events come with `member`),
   * each handed to `onEvent`. Live only: after a reconnect, read the state again (`unread`, `inbox`,
   * `members`), which `onState` tells of.
   */
  readonly events?: ReadonlyArray<EventKind>
  readonly onEvent?: (event: LiveEvent) => void
}

export type PushState =
  | { readonly _tag: "Connecting"; readonly attempt: number }
  | { readonly _tag: "Open" }
  | { readonly _tag: "Closed"; readonly reason: string; readonly retryInMs: number }

/**
 * Ends the subscription for good: the token (401: invalid, expired or revoked) or the cursor (400)
 * was refused; retrying cannot help. Ask the backend for a new token and subscribe again.
 */
export class PushRefused extends Schema.TaggedError<PushRefused>()("PushRefused", {
  status: Schema.Number,
  message: Schema.String
}) {}

interface Connection {
  readonly close: () => void
}

/** Repeats are dropped per conversation: messages of one conversation arrive in MsgId order. */
const makeDedupe = () => {
  const marks = new Map<string, string>()
  return (m: MsgData) => {
    const mark = marks.get(m.ConversationID)
    if (mark !== undefined && m.MsgId <= mark) return false
    marks.set(m.ConversationID, m.MsgId)
    return true
  }
}

/** The token goes in the URL only for a WebSocket (pass it then); fetch sends it as a header. */
const notifyUrl = (
  base: string,
  protocol: PushProtocol,
  token: string | undefined,
  cursor: string | undefined,
  events: ReadonlyArray<EventKind> = []
) => {
  const url = new URL("/notify", base)
  url.searchParams.set("protoc", protocol)
  if (events.length > 0) url.searchParams.set("events", events.join(","))
  if (token !== undefined) url.searchParams.set("token", token)
  if (cursor !== undefined && protocol !== "sse") url.searchParams.set("last_msg_id", cursor)
  if (protocol === "ws") url.protocol = url.protocol === "https:" ? "wss:" : "ws:"
  return url.toString()
}

/** The server ended a stream for a reason retrying with the same token cannot mend (10101). */
class StreamRefused extends Error {
  readonly body: string
  constructor(body: string) {
    super(body)
    this.body = body
  }
}

/** Reads `data:` lines of `event: message` blocks (and of live events, to `onEvent`) from an SSE body. */
const readSse = async (
  body: ReadableStream<Uint8Array>,
  onChunk: () => void,
  onData: (data: string) => void,
  onEvent: (data: string) => void
) => {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ""
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    onChunk()
    buffer += value
    let end: number
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      let event = "message"
      const data: Array<string> = []
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim()
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""))
      }
      if (data.length === 0) continue
      if (event === "message") onData(data.join("\n"))
      else if (event !== "error") onEvent(data.join("\n"))
      else {
        const body = data.join("\n")
        let code: unknown = undefined
        try {
          code = JSON.parse(body)?.code
        } catch {
          // not JSON: an ordinary end
        }
        throw code === 10101 ? new StreamRefused(body) : new Error(`server ended the stream: ${body}`)
      }
    }
  }
}

/**
 * Runs the subscription, calling `emit` with each new message, until `stop()`; `fail` is called
 * once if the server refuses the token.
 */
export const runSubscription = (
  options: SubscribeOptions,
  emit: (message: MsgData) => void,
  fail: (error: PushRefused) => void
): { readonly stop: () => void } => {
  const protocol = options.protocol ?? "ws"
  const minDelay = options.minDelayMs ?? 250
  const maxDelay = options.maxDelayMs ?? 10_000
  const idle = options.idleTimeoutMs ?? 45_000
  const fresh = makeDedupe()
  let cursor = options.cursor
  let stopped = false
  let attempt = 0
  let openedAt = 0
  let current: Connection | undefined
  let timer: ReturnType<typeof setTimeout> | undefined
  const state = (s: PushState) => {
    try {
      options.onState?.(s)
    } catch {
      // a listener's failure is not the subscription's
    }
  }

  const opened = () => {
    openedAt = Date.now()
    state({ _tag: "Open" })
  }

  const events = options.events ?? []
  const announce = (event: LiveEvent) => {
    if (stopped) return
    try {
      options.onEvent?.(event)
    } catch {
      // a listener's failure is not the subscription's
    }
  }
  /** A message, or (with an `Event` field) a live event. */
  const take = (value: MsgData | LiveEvent) => "Event" in value ? announce(value) : deliver(value)

  const deliver = (m: MsgData) => {
    if (stopped) return
    // A poll's cursor is the last answer the server gave, a repeat too: a cursor that differs from
    // it means "that answer was lost" to the server, which would replay again and again.
    if (protocol === "poll") cursor = m.MsgId
    if (!fresh(m)) return
    cursor = m.MsgId
    attempt = 0
    emit(m)
  }

  const retry = (reason: string) => {
    current = undefined
    if (stopped) return
    // A connection that lasted a while starts the backoff afresh; one dropped at once does not.
    if (openedAt > 0 && Date.now() - openedAt > 5_000) attempt = 0
    openedAt = 0
    const delay = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 16)) * (0.5 + Math.random() / 2)
    attempt++
    state({ _tag: "Closed", reason, retryInMs: Math.round(delay) })
    timer = setTimeout(open, delay)
  }

  const refused = (status: number, body: string) => {
    if (stopped) return
    stopped = true
    fail(new PushRefused({ status, message: `the server refused the push subscription (${status}): ${body}` }))
  }

  /** A refusal that retrying cannot mend: a bad token (401) or a malformed cursor (400). */
  const fatal = (status: number) => status === 400 || status === 401
  const authorization = { authorization: `Bearer ${options.token}` }

  const openWs = (): Connection => {
    // A browser's WebSocket cannot send headers: the token goes in the URL (redacted in server traces).
    const ws = new WebSocket(notifyUrl(options.baseUrl, "ws", options.token, cursor, events))
    let open = false
    ws.onopen = () => {
      open = true
      opened()
    }
    ws.onmessage = (e) => take(JSON.parse(String(e.data)))
    ws.onclose = (e) => {
      if (stopped) return
      // 4001: the token expired or was revoked.
      if (e.code === 4001) return refused(401, JSON.stringify({ code: 10101, error: e.reason }))
      if (open) return retry(`closed ${e.code}${e.reason ? `: ${e.reason}` : ""}`)
      // A refused upgrade never opens and the WebSocket API hides why: the same request without
      // the upgrade says (401 for a bad token, 400 for a bad cursor, 426 when it would be accepted).
      const probe = notifyUrl(options.baseUrl, "ws", undefined, cursor).replace(/^ws/, "http")
      fetch(probe, { headers: authorization, signal: AbortSignal.timeout(10_000) }).then(async (res) => {
        const body = await res.text()
        if (fatal(res.status)) refused(res.status, body)
        else retry("could not connect")
      }).catch(() => retry("could not connect"))
    }
    return { close: () => ws.close() }
  }

  const openSse = (): Connection => {
    const controller = new AbortController()
    ;(async () => {
      try {
        const res = await fetch(notifyUrl(options.baseUrl, "sse", undefined, undefined, events), {
          headers: cursor === undefined ? authorization : { ...authorization, "last-event-id": cursor },
          signal: controller.signal
        })
        if (res.status !== 200 || res.body === null) {
          const body = await res.text()
          if (fatal(res.status)) return refused(res.status, body)
          throw new Error(`answered ${res.status}`)
        }
        opened()
        // The server sends a heartbeat every 15 s: silence for longer than `idle` is a dead connection.
        let watchdog = setTimeout(() => controller.abort(), idle)
        await readSse(
          res.body,
          () => {
            clearTimeout(watchdog)
            watchdog = setTimeout(() => controller.abort(), idle)
          },
          (data) => deliver(JSON.parse(data)),
          (data) => announce(JSON.parse(data))
        )
        clearTimeout(watchdog)
        throw new Error("stream ended")
      } finally {
        controller.abort()
      }
    })().catch((e) => {
      if (e instanceof StreamRefused) refused(401, e.body)
      else if (!stopped) retry(e instanceof Error ? e.message : String(e))
    })
    return { close: () => controller.abort() }
  }

  const openPoll = (): Connection => {
    const controller = new AbortController()
    ;(async () => {
      let announced = false
      while (!stopped) {
        // The cursor goes with every poll: it is what lets a new mailbox continue where a dead node's left off.
        const res = await fetch(notifyUrl(options.baseUrl, "poll", undefined, cursor, events), {
          headers: authorization,
          signal: AbortSignal.any([controller.signal, AbortSignal.timeout(idle)])
        })
        if (res.status !== 200 && res.status !== 204) {
          const body = await res.text()
          if (fatal(res.status)) return refused(res.status, body)
          throw new Error(`answered ${res.status}`)
        }
        if (!announced) {
          announced = true
          opened()
        }
        if (res.status === 200) take(await res.json())
        else await res.body?.cancel()
      }
    })().catch((e) => {
      if (!stopped) retry(e instanceof Error ? e.message : String(e))
    })
    return { close: () => controller.abort() }
  }

  function open() {
    if (stopped) return
    state({ _tag: "Connecting", attempt })
    current = protocol === "ws" ? openWs() : protocol === "sse" ? openSse() : openPoll()
  }

  open()
  return {
    stop: () => {
      stopped = true
      if (timer !== undefined) clearTimeout(timer)
      current?.close()
    }
  }
}

/** The session's messages as a Stream: it never ends by itself, and fails only with PushRefused. */
export const subscribe = (options: SubscribeOptions): Stream.Stream<MsgData, PushRefused> =>
  Stream.callback<MsgData, PushRefused>((queue) =>
    Effect.acquireRelease(
      Effect.sync(() =>
        runSubscription(
          options,
          (m) => Queue.offerUnsafe(queue, m),
          (e) => Queue.failCauseUnsafe(queue, Cause.fail(e))
        )
      ),
      (subscription) => Effect.sync(subscription.stop)
    )
  )

/** The same as a plain async iterator (`for await (const m of messages(options))`); `break` ends it. */
export const messages = (options: SubscribeOptions): AsyncIterable<MsgData> =>
  Stream.toAsyncIterable(subscribe(options))
