/**
 * The chaos harness's push client: one session over one protocol, connected to a random live node,
 * reconnecting with its last MsgId whenever its connection ends — because its node died, or because
 * it closed the connection itself at a random moment, as a phone changing networks does.
 *
 * A thousand of these share one process with the harness, so each keeps what it received as two
 * flat arrays and writes straight from the socket's event (no timers per client).
 */
import { type Protocol, readSseEvents, sleep } from "./push.ts"

export interface ChaosClient {
  readonly protocol: Protocol
  /** Every MsgId received, repeats included, in arrival order; `conversations` runs alongside. */
  readonly ids: Array<string>
  readonly conversations: Array<string>
  /** Connections that ended because the client closed them on purpose. */
  readonly churned: () => number
  /** Connections that ended otherwise (their node died or refused), or could not be opened. */
  readonly dropped: () => number
  /** Whether a connection is open right now (for poll: a request was answered since the last connect). */
  readonly connected: () => boolean
  /** The client's recent doings (connects, answers, closes), newest last, for a failure's post-mortem. */
  readonly trace: ReadonlyArray<string>
  /** Stops the random closes; the client stays connected and still reconnects when cut off. */
  readonly calm: () => void
  readonly stop: () => Promise<void>
}

export interface ChaosClientOptions {
  readonly protocol: Protocol
  readonly token: string
  /** The base URLs of the nodes alive now. */
  readonly live: () => ReadonlyArray<string>
  readonly random: () => number
  /** Mean time between random closes (exponentially distributed). */
  readonly churnMeanMs: number
  /** The harness's clock, for the trace. */
  readonly now: () => number
  /** What the client holds before connecting (its conversations' history), oldest first. */
  readonly history: ReadonlyArray<{ readonly id: string; readonly conversation: string }>
}

export const chaosClient = (options: ChaosClientOptions): ChaosClient => {
  const { protocol, token, random } = options
  const ids = options.history.map((m) => m.id)
  const conversations = options.history.map((m) => m.conversation)
  const trace: Array<string> = []
  const note = (line: string) => {
    if (trace.length >= 600) trace.splice(0, 200)
    trace.push(`${options.now().toFixed(2)} ${line}`)
  }
  const receive = (id: string, conversation: string) => {
    ids.push(id)
    conversations.push(conversation)
    note(`got ${id} ${conversation}`)
  }
  let stopped = false
  let churning = true
  let open = false
  let churned = 0
  let dropped = 0
  // Set by a random close so that the end of that connection is not counted as a drop.
  let closing = false
  let closeCurrent: (() => void) | undefined
  let churnTimer: ReturnType<typeof setTimeout> | undefined
  const scheduleChurn = () => {
    if (!churning || stopped) return
    churnTimer = setTimeout(() => {
      if (closeCurrent !== undefined) {
        churned++
        closing = true
        note("random close")
        closeCurrent()
      }
      scheduleChurn()
    }, -Math.log(1 - random()) * options.churnMeanMs)
  }

  /** One connection to `base`; resolves when it ends, however it ends. */
  const session = (base: string): Promise<void> => {
    const cursor = ids.at(-1)
    note(`connect ${base} cursor ${cursor}`)
    if (protocol === "ws") {
      return new Promise((resolve) => {
        const ws = new WebSocket(
          `${base.replace(/^http/, "ws")}/notify?protoc=ws&token=${token}${cursor ? `&last_msg_id=${cursor}` : ""}`
        )
        closeCurrent = () => ws.close()
        ws.onopen = () => (open = true)
        ws.onmessage = (e) => {
          const m = JSON.parse(String(e.data))
          receive(m.MsgId, m.ConversationID)
        }
        ws.onerror = () => {}
        ws.onclose = (e) => {
          note(`closed ${e.code}`)
          resolve()
        }
      })
    }
    const controller = new AbortController()
    closeCurrent = () => controller.abort()
    if (protocol === "sse") {
      return (async () => {
        const res = await fetch(`${base}/notify?protoc=sse&token=${token}`, {
          headers: cursor ? { "last-event-id": cursor } : {},
          signal: controller.signal
        })
        note(`status ${res.status}`)
        if (res.status !== 200) return void (await res.body?.cancel())
        open = true
        await readSseEvents(res.body!, ({ event, data }) => {
          if (event !== "message") return
          const m = JSON.parse(data)
          receive(m.MsgId, m.ConversationID)
        }, controller.signal)
      })().catch(() => {})
    }
    return (async () => {
      // One request at a time, each with the MsgId of the last answer (README, "Resume": poll).
      while (!controller.signal.aborted) {
        const last = ids.at(-1)
        note(`poll ${last}`)
        const res = await fetch(`${base}/notify?protoc=poll&token=${token}${last ? `&last_msg_id=${last}` : ""}`, {
          signal: controller.signal
        })
        if (res.status === 200) {
          open = true
          const m = await res.json()
          receive(m.MsgId, m.ConversationID)
        } else if (res.status === 204) {
          open = true
          await res.body?.cancel()
        } else {
          // 503 (the node is stopping, or the database is away) or a refusal: try elsewhere.
          note(`status ${res.status}`)
          await res.body?.cancel()
          return
        }
      }
    })().catch((e) => note(`failed ${String(e).slice(0, 100)}`))
  }

  const done = (async () => {
    scheduleChurn()
    while (!stopped) {
      const live = options.live()
      if (live.length === 0) {
        await sleep(200)
        continue
      }
      closing = false
      await session(live[Math.floor(random() * live.length)])
      open = false
      closeCurrent = undefined
      if (stopped) break
      if (!closing) dropped++
      // A short random pause, so the clients of a dead node do not all come back in one instant.
      await sleep(closing ? 20 : 100 + random() * 400)
    }
  })()

  return {
    protocol,
    ids,
    conversations,
    churned: () => churned,
    dropped: () => dropped,
    connected: () => open,
    trace,
    calm: () => {
      churning = false
      clearTimeout(churnTimer)
    },
    stop: async () => {
      stopped = true
      churning = false
      clearTimeout(churnTimer)
      closeCurrent?.()
      await Promise.race([done, sleep(2000)])
    }
  }
}
