// The quick-im console: plain browser JavaScript against the documented HTTP API and /notify,
// served as is (no build step). Sessions sign in with a pasted token, or in dev mode
// (QUICKIM_CONSOLE_SIGN_IN) through the inner token endpoint.
const $ = (id) => document.getElementById(id)
const state = {
  token: undefined,
  adminKey: "",
  session: undefined,
  protocol: "ws",
  conversations: [], // the inbox: {ConversationId, Name, Unread, LastMsg, ...}, most recent first
  current: undefined,
  members: new Map(), // of the open conversation: session → its ReadMsgId (read receipts)
  oldest: undefined,
  marks: new Map(), // newest MsgId seen per conversation: anything at or below it is a repeat
  cursor: undefined, // the last MsgId received, for resume
  push: undefined
}

const say = (text) => ($("status").textContent = text)

/** Headers for inner endpoints and /metrics: the admin key, when one was given. */
const innerHeaders = () => (state.adminKey ? { "x-quickim-admin-key": state.adminKey } : {})

const api = async (path, body) => {
  const res = await fetch(path, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(state.token ? { authorization: `Bearer ${state.token}` } : {}),
      ...(path.startsWith("/inner/") ? innerHeaders() : {})
    },
    body: JSON.stringify(body ?? {})
  })
  const reply = await res.json().catch(() => ({ code: -1, error: `HTTP ${res.status}` }))
  if (reply.code !== 0) throw new Error(`${reply.error} (code ${reply.code})`)
  return reply.data
}

const attempt = (f) => async (event) => {
  event?.preventDefault()
  try {
    await f(event)
  } catch (e) {
    say(`Error: ${e.message}`)
  }
}

// ---- tabs: arrow keys move between them (WAI-ARIA tabs pattern)
const tabs = [$("tab-chat"), $("tab-ops")]
const select = (tab) => {
  for (const t of tabs) {
    const on = t === tab
    t.setAttribute("aria-selected", String(on))
    t.tabIndex = on ? 0 : -1
    $(t.getAttribute("aria-controls")).hidden = !on
  }
  tab.focus()
  if (tab.id === "tab-ops") refreshOps()
}
for (const [i, tab] of tabs.entries()) {
  tab.addEventListener("click", () => select(tab))
  tab.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      select(tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length])
    }
  })
}

// ---- conversations: the server's inbox (order and unread counts), refreshed as things happen
const renderConversations = () => {
  const list = $("conversations")
  list.replaceChildren()
  for (const entry of state.conversations) {
    const id = entry.ConversationId
    const item = document.createElement("li")
    const button = document.createElement("button")
    button.type = "button"
    const label = entry.Name || `${id.slice(0, 8)}…`
    button.textContent = `${label}${entry.Unread > 0 ? ` (${entry.Unread} unread)` : ""}`
    button.title = id
    button.dataset.id = id
    button.dataset.unread = String(entry.Unread)
    if (id === state.current) button.setAttribute("aria-current", "true")
    button.addEventListener("click", attempt(() => open(id)))
    item.append(button)
    if (entry.LastMsg) {
      const last = document.createElement("small")
      last.textContent = `${entry.LastMsg.FromSession}: ${entry.LastMsg.Content}`
      item.append(last)
    }
    list.append(item)
  }
}

/** "read by N": the other members whose read position is at or after `msgId` (ids compare in order). */
const readBy = (msgId) => {
  let n = 0
  for (const [session, read] of state.members) if (session !== state.session && read !== null && read >= msgId) n++
  return n
}

const renderReceipts = () => {
  for (const receipt of document.querySelectorAll("#messages [data-receipt]")) {
    receipt.textContent = `read by ${readBy(receipt.dataset.receipt)}`
  }
}

const messageItem = (m) => {
  const item = document.createElement("li")
  item.dataset.msgId = m.MsgId
  if (m.FromSession === state.session) item.className = "mine"
  const who = document.createElement("strong")
  who.textContent = m.FromSession
  const when = document.createElement("time")
  when.dateTime = m.SendTime
  when.textContent = new Date(m.SendTime).toLocaleTimeString()
  const text = document.createElement("p")
  text.textContent = m.Content
  item.append(who, " ", when, text)
  if (m.FromSession === state.session) {
    const receipt = document.createElement("small")
    receipt.dataset.receipt = m.MsgId
    receipt.textContent = `read by ${readBy(m.MsgId)}`
    item.append(receipt)
  }
  return item
}

/** A line about the conversation itself (someone joined or left). */
const noteItem = (text) => {
  const item = document.createElement("li")
  item.className = "note"
  const p = document.createElement("p")
  p.textContent = text
  item.append(p)
  return item
}

const loadMembers = async (id) => {
  const members = new Map()
  let cursor = null
  do {
    const page = await api("/get_conversation_members", { conversation_id: id, limit: 1000, cursor })
    for (const m of page.Members) members.set(m.Session, m.ReadMsgId)
    cursor = page.NextCursor
  } while (cursor !== null)
  if (id === state.current) state.members = members
}

/** Marks the open conversation read up to `msgId`; the inbox follows (by its own refresh). */
const markRead = async (msgId) => {
  if (state.current === undefined || msgId === undefined) return
  await api("/mark_read", { conversation_id: state.current, msg_id: msgId })
  refreshSoon()
}

let refreshTimer
/** The inbox again, once things settle (a burst of messages or events refreshes it once). */
const refreshSoon = () => {
  clearTimeout(refreshTimer)
  refreshTimer = setTimeout(() => loadConversations().catch((e) => say(`Error: ${e.message}`)), 150)
}

const open = async (id) => {
  state.current = id
  state.members = new Map()
  const entry = state.conversations.find((e) => e.ConversationId === id)
  $("room-title").textContent = entry?.Name || "Conversation"
  $("room-id").textContent = id
  $("typing").textContent = ""
  $("compose").hidden = false
  // From here on, what is pushed for this conversation is listed as it comes (see receive).
  $("messages").replaceChildren()
  await loadMembers(id)
  const { Msg } = await api("/get_conversation_last_30_msg", { conversation_id: id, desc: false })
  if (state.current !== id) return // another conversation was opened meanwhile
  // The history goes before what was pushed while it loaded: messages newer than it, and notes.
  const newest = Msg.at(-1)?.MsgId ?? ""
  const pushed = [...$("messages").children].filter((li) => li.dataset.msgId === undefined || li.dataset.msgId > newest)
  $("messages").replaceChildren(...Msg.map(messageItem), ...pushed)
  state.oldest = Msg[0]?.MsgId
  $("older").hidden = Msg.length < 30
  renderConversations()
  $("text").focus()
  await markRead(Msg.at(-1)?.MsgId)
}

$("older").addEventListener(
  "click",
  attempt(async () => {
    if (state.oldest === undefined) return
    const { Msg } = await api("/get_conversation_30msg_before_the_id", {
      conversation_id: state.current,
      msg_id: state.oldest,
      desc: false
    })
    $("messages").prepend(...Msg.map(messageItem))
    state.oldest = Msg[0]?.MsgId ?? state.oldest
    $("older").hidden = Msg.length < 30
  })
)

const loadConversations = async () => {
  state.conversations = (await api("/get_inbox", { limit: 200 })).Conversations
  renderConversations()
}

$("create").addEventListener(
  "submit",
  attempt(async () => {
    const { ConversationId } = await api("/create_conversation", { conversation_type: 0 })
    await loadConversations()
    await open(ConversationId)
  })
)

$("join").addEventListener(
  "submit",
  attempt(async () => {
    const id = $("join-id").value.trim()
    await api("/join_conversation", { conversation_id: id })
    $("join-id").value = ""
    await loadConversations()
    await open(id)
  })
)

$("compose").addEventListener(
  "submit",
  attempt(async () => {
    const content = $("text").value
    if (content.length === 0) return
    // A client_msg_id makes a retry of this send harmless.
    await api("/send_msg", { conversation_id: state.current, content, client_msg_id: crypto.randomUUID() })
    $("text").value = ""
  })
)

// Typing: the server sends at most one event per 2 s; the page asks no more often either.
let typedAt = 0
$("text").addEventListener("input", () => {
  if (state.current === undefined || Date.now() - typedAt < 2000) return
  typedAt = Date.now()
  api("/typing", { conversation_id: state.current }).catch(() => {})
})

// ---- push: one subscription that reconnects with backoff and resumes from the last MsgId
const receive = (m, protocol) => {
  // A poll's cursor is the last answer the server gave, a repeat too (another cursor would mean
  // "that answer was lost" and make the server replay again).
  if (protocol === "poll") state.cursor = m.MsgId
  const mark = state.marks.get(m.ConversationID)
  if (mark !== undefined && m.MsgId <= mark) return // a repeat after a resume
  state.marks.set(m.ConversationID, m.MsgId)
  state.cursor = m.MsgId
  if (m.ConversationID === state.current) {
    if (!$("messages").querySelector(`[data-msg-id="${m.MsgId}"]`)) $("messages").append(messageItem(m))
    // On screen is read (the sender's own messages move its position by themselves).
    if (m.FromSession !== state.session) markRead(m.MsgId).catch(() => {})
  }
  refreshSoon()
}

const CHANGES = { joined: "joined", left: "left", kicked: "was removed" }
const typingTimers = new Map()

/** A live event (`events=read,member,typing`): the server's read state, typing and member changes. */
const onEvent = (e) => {
  const here = e.ConversationId === state.current
  if (e.Event === "read") {
    if (here) {
      state.members.set(e.Session, e.ReadMsgId)
      renderReceipts()
    }
    // Read on another device of this session: the badge clears here too.
    if (e.Session === state.session) refreshSoon()
  } else if (e.Event === "typing" && here) {
    clearTimeout(typingTimers.get(e.Session))
    const names = () => [...typingTimers.keys()].join(", ")
    typingTimers.set(
      e.Session,
      setTimeout(() => {
        typingTimers.delete(e.Session)
        $("typing").textContent = typingTimers.size > 0 ? `${names()} typing…` : ""
      }, 3000)
    )
    $("typing").textContent = `${names()} typing…`
  } else if (e.Event === "member") {
    if (here) {
      $("messages").append(noteItem(`${e.Session} ${CHANGES[e.Change] ?? e.Change}`))
      if (e.Change === "joined") state.members.set(e.Session, null)
      else state.members.delete(e.Session)
      renderReceipts()
    }
    refreshSoon()
  } else if (e.Event === "conversation") {
    if (here) $("room-title").textContent = e.Name || "Conversation"
    refreshSoon()
  }
}

/** A frame of the push stream: a live event (it has `Event`) or a message. */
const take = (value, protocol) => ("Event" in value ? onEvent(value) : receive(value, protocol))

// The token rides in the URL only where the browser API cannot send headers (WebSocket,
// EventSource); fetch sends it as `Authorization`. The server redacts `token` from its traces.
const notifyUrl = (protocol, scheme = protocol === "ws" ? "ws" : "http", inUrl = protocol !== "poll") => {
  const url = new URL("/notify", location.href)
  url.searchParams.set("protoc", protocol)
  url.searchParams.set("events", "read,member,typing")
  if (inUrl) url.searchParams.set("token", state.token)
  if (state.cursor) url.searchParams.set("last_msg_id", state.cursor)
  if (scheme === "ws") url.protocol = url.protocol === "https:" ? "wss:" : "ws:"
  return url
}

const subscribe = (protocol) => {
  let stopped = false
  let failures = 0
  let close = () => {}
  const connected = () => {
    failures = 0
    say(`Signed in as ${state.session} · push connected over ${protocol}`)
    // Events are live only: what changed while disconnected is read again.
    refreshSoon()
    if (state.current !== undefined) loadMembers(state.current).then(renderReceipts, () => {})
  }
  /** The server refused for good (an expired token, a bad cursor): retrying cannot help. */
  const refused = (status) => {
    stopped = true
    close()
    say(`Push refused (HTTP ${status}): sign in again`)
  }
  const retry = (why) => {
    if (stopped) return
    const delay = Math.min(10_000, 250 * 2 ** failures++) * (0.5 + Math.random() / 2)
    say(`Signed in as ${state.session} · push ${why}; reconnecting in ${Math.round(delay)} ms`)
    setTimeout(connect, delay)
  }
  /** A connection that failed without saying why: the same request without the upgrade or stream says. */
  const probe = async (why) => {
    if (stopped) return
    try {
      const res = await fetch(notifyUrl(protocol, "http", false), {
        headers: { authorization: `Bearer ${state.token}` },
        signal: AbortSignal.timeout(10_000)
      })
      await res.body?.cancel()
      if (res.status === 400 || res.status === 401) return refused(res.status)
    } catch {
      // unreachable: retry below
    }
    retry(why)
  }
  const connect = () => {
    if (stopped) return
    if (protocol === "ws") {
      const ws = new WebSocket(notifyUrl("ws"))
      let open = false
      ws.onopen = () => {
        open = true
        connected()
      }
      ws.onmessage = (e) => take(JSON.parse(e.data), protocol)
      // 4001: the token expired or was revoked; the same token cannot reconnect.
      ws.onclose = (e) =>
        e.code === 4001 ? refused(401) : open ? retry(`closed (${e.code})`) : probe("could not connect")
      close = () => ws.close()
    } else if (protocol === "sse") {
      const es = new EventSource(notifyUrl("sse"))
      es.onopen = connected
      es.addEventListener("message", (e) => receive(JSON.parse(e.data), protocol))
      for (const kind of ["read", "member", "typing", "conversation"]) {
        es.addEventListener(kind, (e) => onEvent(JSON.parse(e.data)))
      }
      // EventSource reconnects by itself with Last-Event-ID; one that gave up gets a fresh one.
      es.onerror = (e) => {
        // The server's own `event: error`: 10101 means the token expired or was revoked.
        let code
        try {
          code = JSON.parse(e.data ?? "null")?.code
        } catch {
          // not the server's event
        }
        if (code === 10101) return refused(401)
        if (es.readyState === EventSource.CLOSED) probe("closed")
      }
      close = () => es.close()
    } else {
      const controller = new AbortController()
      close = () => controller.abort()
      ;(async () => {
        let announced = false
        while (!stopped) {
          const res = await fetch(notifyUrl("poll"), {
            headers: { authorization: `Bearer ${state.token}` },
            signal: controller.signal
          })
          if (res.status === 400 || res.status === 401) return refused(res.status)
          if (res.status !== 200 && res.status !== 204) throw new Error(`HTTP ${res.status}`)
          if (!announced) {
            announced = true
            connected()
          }
          if (res.status === 200) take(await res.json(), protocol)
        }
      })().catch((e) => retry(e.message))
    }
  }
  connect()
  return () => {
    stopped = true
    close()
  }
}

/** The `sid` claim of a token, read without checking it (the server does). */
const tokenSubject = (token) => {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")
    return String(JSON.parse(atob(payload)).sid ?? "")
  } catch {
    throw new Error("that is not a token")
  }
}

$("signin").addEventListener(
  "submit",
  attempt(async () => {
    const pasted = $("token").value.trim()
    let session = $("session").value.trim()
    const platform = Number($("platform").value || 1)
    state.token = undefined
    state.adminKey = $("admin-key").value
    if (pasted) {
      // The session is the token's subject; the server checks the token on every call.
      session = tokenSubject(pasted)
      state.token = pasted
    } else {
      if (!session) throw new Error("a session, or a token")
      state.token = await api("/inner/get_token", { session, platform })
    }
    state.session = session
    state.protocol = $("protocol").value
    state.push?.()
    state.push = subscribe(state.protocol)
    $("signin").hidden = true
    $("chat").hidden = false
    await loadConversations()
  })
)

// ---- operator tab: the cluster view and a few of this node's metrics
const METRICS = [
  ["quickim_sends_total", "Sends"],
  ["quickim_deliveries_total", "Deliveries"],
  ["quickim_connections", "Open connections"],
  ["quickim_resume_replays_total", "Resumes"],
  ["quickim_slow_consumer_disconnects_total", "Slow-consumer disconnects"],
  ["quickim_http_requests_total", "HTTP requests"]
]

const refreshOps = async () => {
  if ($("panel-ops").hidden) return
  try {
    const view = await (await fetch("/inner/cluster", { headers: innerHeaders() })).json()
    if (view.code !== 0) throw new Error(view.error)
    $("cluster-mode").textContent = `Mode: ${view.data.Mode}, ${view.data.ShardsPerGroup} shards per group`
    $("nodes").replaceChildren(...view.data.Nodes.map((n) => {
      const row = document.createElement("tr")
      for (
        const value of [
          n.Url,
          n.Runner ?? "–",
          n.Alive ? "yes" : "no",
          n.Shards,
          n.Conversations,
          n.Mailboxes,
          n.Connections.ws,
          n.Connections.sse,
          n.Connections.poll
        ]
      ) {
        const cell = document.createElement("td")
        cell.textContent = String(value)
        row.append(cell)
      }
      return row
    }))
    const text = await (await fetch("/metrics", { headers: innerHeaders() })).text()
    const totals = new Map()
    for (const line of text.split("\n")) {
      const m = line.match(/^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/)
      if (!m) continue
      const [, name, labels, value] = m
      const entry = totals.get(name) ?? { sum: 0, parts: [] }
      entry.sum += Number(value)
      if (labels) entry.parts.push(`${labels.replace(/"/g, "")}: ${value}`)
      totals.set(name, entry)
    }
    $("metrics").replaceChildren(...METRICS.flatMap(([name, label]) => {
      const dt = document.createElement("dt")
      dt.textContent = label
      const dd = document.createElement("dd")
      dd.dataset.metric = name
      const entry = totals.get(name)
      dd.textContent = entry === undefined ? "0" : `${entry.sum} (${entry.parts.join(", ")})`
      return [dt, dd]
    }))
  } catch (e) {
    $("cluster-mode").textContent = `Could not read the cluster view: ${e.message}`
  }
}
setInterval(refreshOps, 2000)
