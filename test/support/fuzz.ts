/**
 * Hostile requests for every endpoint of the contract and the rule every answer obeys, shared by
 * the property test (test/fuzz.test.ts: shrinking, a model of what was written) and the volume
 * run against a real process (bench/fuzz.ts). Requests are generated as plans that name known
 * sessions, conversations and message ids by index, resolved against the world of the run.
 */
import fc from "fast-check"

/**
 * NUL characters and unpaired surrogates inside JSON strings (`"\u0000"`, `"\ud800"`): refused at the edge
 * (400/10001 naming the field). FUZZ_POISON=0 leaves them out of one run.
 */
export const POISON_STRINGS = process.env.FUZZ_POISON !== "0"

/** The known things of a run that plans refer to by index. */
export interface FuzzWorld {
  readonly sessions: ReadonlyArray<string>
  readonly tokens: ReadonlyArray<string>
  readonly conversations: ReadonlyArray<string>
  readonly msgIds: ReadonlyArray<string>
}

// --- values ----------------------------------------------------------------------------------

/** Placeholders inside generated JSON, written out by `toJson`. */
type Ref = { readonly $ref: "conversation" | "session" | "msgId"; readonly i: number }
/** A number literal as text, so JSON can carry what a double cannot (1e400, -0, 9007199254740993). */
type Raw = { readonly $raw: string }
/** `depth` nested arrays or objects, written out without building them. */
type Nest = { readonly $nest: number; readonly as: "array" | "object" }
/** A long string of one repeated piece. */
type Long = { readonly $long: number; readonly piece: string }
type Value =
  | null
  | boolean
  | number
  | string
  | Ref
  | Raw
  | Nest
  | Long
  | ReadonlyArray<Value>
  | { readonly [key: string]: Value }

const OMIT = Symbol.for("quick-im/fuzz/omit")

const isMarker = <K extends string>(v: unknown, key: K): v is Record<K, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v) && key in v

const MSGID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
const nth = <A>(items: ReadonlyArray<A>, i: number): A | undefined =>
  items.length === 0 ? undefined : items[i % items.length]

/** Removes what POISON_STRINGS guards while it is off: NUL and unpaired surrogates. */
export const tame = (s: string) => POISON_STRINGS ? s : s.replaceAll("\u0000", "").toWellFormed()

export const toJson = (value: Value, world: FuzzWorld): string => {
  if (value === null || typeof value !== "object") {
    return typeof value === "string" ? JSON.stringify(tame(value)) : JSON.stringify(value)
  }
  if (Array.isArray(value)) return `[${value.map((v) => toJson(v, world)).join(",")}]`
  if (isMarker(value, "$ref")) {
    const ref = value as Ref
    const pool = ref.$ref === "conversation"
      ? world.conversations
      : ref.$ref === "session"
      ? world.sessions
      : world.msgIds
    const fallback = ref.$ref === "msgId" ? "22222-2222-2222-222" : `unknown-${ref.i}`
    return JSON.stringify(nth(pool, ref.i) ?? fallback)
  }
  if (isMarker(value, "$raw")) return (value as Raw).$raw
  if (isMarker(value, "$nest")) {
    const { $nest: depth, as } = value as Nest
    return as === "array" ? "[".repeat(depth) + "]".repeat(depth) : '{"a":'.repeat(depth) + "1" + "}".repeat(depth)
  }
  if (isMarker(value, "$long")) {
    const { $long: length, piece } = value as Long
    return JSON.stringify(tame(piece.repeat(Math.ceil(length / piece.length))))
  }
  const entries = Object.entries(value as Record<string, Value>).map(([k, v]) =>
    `${JSON.stringify(tame(k))}:${toJson(v, world)}`
  )
  return `{${entries.join(",")}}`
}

/** Strings people and attackers actually send: direction marks, joiners, emoji, combining marks. */
const oddPieces = [
  "\u202e",
  "\u200b",
  "\u200d",
  "\ufeff",
  "\u2028",
  "\u2029",
  "\uffff",
  "\ufffd",
  "\u{10ffff}",
  "👨‍👩‍👧‍👦",
  "🏳️‍🌈",
  "e\u0301\u0301\u0301",
  "Z̴̡̛̗a̶l̷g̸o",
  "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
  "\t\r\n",
  "\u001b[31m",
  "'; DROP TABLE messages; --",
  "%s%n%x",
  "../../etc/passwd",
  "<script>alert(1)</script>",
  "\\u0000",
  "🙂"
]
const poisonPieces = ["\u0000", "\ud800", "\udfff", "a\udc00b", "\u0000\u0000"]

const oddString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(...oddPieces, ...poisonPieces),
  fc.array(fc.constantFrom(...oddPieces, ...poisonPieces, "a", " "), { minLength: 1, maxLength: 8 }).map((p) =>
    p.join("")
  ),
  fc.string({ unit: "binary", maxLength: 24 }),
  fc.string({ unit: "grapheme", maxLength: 12 })
)

const rawNumbers = [
  "1e400",
  "-1e400",
  "-0",
  "1.5",
  "0.1e1",
  "1E2",
  "9007199254740993",
  "2147483648",
  "-2147483649",
  "123456789012345678901234567890",
  "1e-400",
  "NaN",
  "Infinity",
  "0x10",
  "01"
]

const number: fc.Arbitrary<Value> = fc.oneof(
  fc.integer(),
  fc.constantFrom(2 ** 31, -(2 ** 31) - 1, 2 ** 53, -(2 ** 53), Number.MAX_VALUE, Number.MIN_VALUE, -1, 0),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.constantFrom(...rawNumbers).map((s): Raw => ({ $raw: s }))
)

const long: fc.Arbitrary<Value> = fc.record({
  $long: fc.oneof(fc.integer({ min: 129, max: 4096 }), fc.integer({ min: 4097, max: 100_000 })),
  piece: fc.constantFrom("x", "é", "🙂", "\u0301", "\u202e")
})

const nest: fc.Arbitrary<Value> = fc.record({
  $nest: fc.oneof(fc.integer({ min: 2, max: 100 }), fc.integer({ min: 1000, max: 30_000 })),
  as: fc.constantFrom("array" as const, "object" as const)
})

/** Any JSON value of the wrong kind, size or shape for a field. */
export const hostile: fc.Arbitrary<Value> = fc.oneof(
  fc.constantFrom<Value>(null, true, false, [], {}, "", " "),
  number,
  oddString,
  long,
  nest,
  fc.array(fc.oneof(oddString, fc.integer(), fc.constant(null)), { maxLength: 4 }),
  fc.dictionary(fc.constantFrom("a", "__proto__", "constructor", "0"), fc.oneof(fc.integer(), oddString), {
    maxKeys: 2
  })
)

// --- fields of the contract ------------------------------------------------------------------

const conversationRef = fc.nat({ max: 63 }).map((i): Ref => ({ $ref: "conversation", i }))
const sessionRef = fc.nat({ max: 63 }).map((i): Ref => ({ $ref: "session", i }))
const msgIdRef = fc.nat({ max: 1023 }).map((i): Ref => ({ $ref: "msgId", i }))
const msgIdShaped = fc.array(fc.constantFrom(...MSGID_ALPHABET), { minLength: 16, maxLength: 16 }).map((c) =>
  `${c.slice(0, 5).join("")}-${c.slice(5, 9).join("")}-${c.slice(9, 13).join("")}-${c.slice(13).join("")}`
)

const plausible = {
  conversation: fc.oneof({ weight: 8, arbitrary: conversationRef }, fc.uuid(), fc.string({ minLength: 1 })),
  session: fc.oneof({ weight: 6, arbitrary: sessionRef }, fc.string({ minLength: 1, maxLength: 20 }), oddString),
  content: fc.oneof({ weight: 3, arbitrary: fc.string({ maxLength: 40 }) }, oddString),
  int32: fc.oneof(fc.integer({ min: 0, max: 9 }), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 })),
  clientMsgId: fc.oneof(fc.constantFrom("dup-1", "dup-2"), fc.string({ minLength: 1, maxLength: 24 }), oddString),
  msgId: fc.oneof({ weight: 2, arbitrary: msgIdRef }, msgIdShaped),
  bool: fc.boolean(),
  conversationType: fc.integer({ min: -2, max: 17 }),
  limit: fc.oneof(fc.integer({ min: 1, max: 50 }), fc.integer({ min: -2, max: 1002 })),
  // Opaque cursors: none, junk, and base64url JSON shaped like ours with odd snapshots, times and ids.
  cursor: fc.oneof(
    fc.constant(null),
    fc.string({ maxLength: 40 }),
    oddString,
    fc.record({
      s: fc.oneof(
        fc.constantFrom("1:1:", "5:9:6,7", "9:1:", "0:0:", "1:2:3", "1:9:5,4", "x", "99999999999999999999:1:"),
        oddString
      ),
      a: fc.oneof(fc.constantFrom("0", "-1", "1700000000000000", "9223372036854775808", "1e3"), oddString),
      c: fc.oneof(fc.string({ maxLength: 4 }), oddString),
      j: fc.oneof(fc.constantFrom("0", "9007199254740993", "-9223372036854775808"), oddString)
    }).map((v) => Buffer.from(JSON.stringify(v)).toString("base64url"))
  ),
  name: fc.oneof(
    { weight: 3, arbitrary: fc.string({ maxLength: 40 }) },
    fc.string({ minLength: 195, maxLength: 205 }),
    oddString
  ),
  extra: fc.oneof({ weight: 3, arbitrary: fc.json({ maxDepth: 2 }) }, oddString)
} satisfies Record<string, fc.Arbitrary<Value>>

type Kind = keyof typeof plausible | "sessions" | "conversations" | "strangers"
const plausibleOf = (kind: Kind): fc.Arbitrary<Value> =>
  kind === "sessions"
    ? fc.array(plausible.session, { maxLength: 4 })
    // Sessions outside the run's world: revoking them leaves the tokens the run sends with alone.
    : kind === "strangers"
    ? fc.array(fc.oneof(fc.string({ minLength: 1, maxLength: 20 }).map((s) => `stranger-${s}`), oddString), {
      maxLength: 4
    })
    : kind === "conversations"
    ? fc.array(plausible.conversation, { maxLength: 4 })
    : plausible[kind]

/** Fields of each POST endpoint; `?` marks an optional one. */
export const POSTS: Record<string, Record<string, Kind>> = {
  "/check_joined_conversation": { conversation_id: "conversation" },
  "/get_joined_conversation": { "SessionId?": "session" },
  "/get_conversation_detail": { conversation_id: "conversation" },
  "/join_conversation": { conversation_id: "conversation" },
  "/create_conversation": { "conversation_type?": "conversationType" },
  "/leave_conversation": { conversation_id: "conversation" },
  "/get_lastone_msgid": { conversation_id: "conversation" },
  "/send_msg": {
    conversation_id: "conversation",
    content: "content",
    "status?": "int32",
    "type?": "int32",
    "client_msg_id?": "clientMsgId"
  },
  "/get_conversation_msg_by_range": {
    conversation_id: "conversation",
    start_msg_id: "msgId",
    end_msg_id: "msgId",
    "desc?": "bool"
  },
  "/get_conversation_30msg_before_the_id": { conversation_id: "conversation", msg_id: "msgId", "desc?": "bool" },
  "/get_conversation_30msg_after_the_id": { conversation_id: "conversation", msg_id: "msgId", "desc?": "bool" },
  "/get_conversation_last_30_msg": { conversation_id: "conversation", "desc?": "bool" },
  "/get_conversation_lastone_msg": { conversation_id: "conversation", "desc?": "bool" },
  "/inner/get_token": { session: "session", platform: "int32" },
  "/inner/create_conversation": {
    "conversation_type?": "conversationType",
    sessions: "sessions",
    "name?": "name",
    "extra?": "extra"
  },
  "/inner/update_conversation": { conversation_id: "conversation", "name?": "name", "extra?": "extra" },
  "/mark_read": { conversation_id: "conversation", msg_id: "msgId" },
  "/get_unread": { "conversation_ids?": "conversations" },
  "/get_inbox": { "limit?": "limit", "cursor?": "cursor" },
  "/get_conversation_members": { conversation_id: "conversation", "limit?": "limit", "cursor?": "cursor" },
  "/typing": { conversation_id: "conversation" },
  "/inner/kickout_conversation": { conversation_id: "conversation", sessions: "sessions" },
  "/inner/join_conversation": { conversation_id: "conversation", sessions: "sessions" },
  "/inner/set_archive_conversations": { conversation_ids: "conversations", is_archive: "bool" },
  "/inner/revoke_tokens": { sessions: "strangers", "platform?": "int32" }
}

export const GETS = ["/healthz", "/openapi.json", "/metrics", "/inner/cluster", "/console", "/console/console.js"]

/** A body: valid-looking fields, each sometimes replaced by a hostile value or left out, plus extras. */
const objectFor = (fields: Record<string, Kind>): fc.Arbitrary<Value> =>
  fc.tuple(
    fc.tuple(
      ...Object.entries(fields).map(([name, kind]) =>
        fc.oneof(
          { weight: 8, arbitrary: plausibleOf(kind) },
          { weight: 2, arbitrary: hostile },
          { weight: name.endsWith("?") ? 3 : 1, arbitrary: fc.constant(OMIT) }
        ).map((v) => [name.replace("?", ""), v] as const)
      )
    ),
    fc.oneof(
      { weight: 6, arbitrary: fc.constant({}) },
      fc.dictionary(
        fc.oneof(fc.constantFrom("__proto__", "constructor", "extra", "Conversation_Id", ""), oddString),
        hostile,
        { maxKeys: 3 }
      )
    )
  ).map(([entries, extra]) => {
    const body: Record<string, Value> = { ...(extra as Record<string, Value>) }
    for (const [name, v] of entries) if (v !== OMIT) body[name] = v as Value
    return body
  })

// --- requests --------------------------------------------------------------------------------

type Body =
  | { readonly kind: "none" }
  | { readonly kind: "json"; readonly value: Value }
  | { readonly kind: "text"; readonly text: string }
  | { readonly kind: "badUtf8"; readonly value: Value; readonly bytes: ReadonlyArray<number> }

type Auth =
  | { readonly kind: "session"; readonly i: number }
  | { readonly kind: "tampered"; readonly i: number }
  | { readonly kind: "none" }
  | { readonly kind: "raw"; readonly value: string }

export interface Plan {
  readonly method: string
  readonly path: string
  readonly query?: ReadonlyArray<readonly [string, string | Ref | { $token: number }]>
  readonly auth: Auth
  readonly contentType: string | undefined
  readonly headers: Readonly<Record<string, string>>
  readonly body: Body
}

export interface FuzzRequest {
  readonly method: string
  /** Path and query as sent. */
  readonly target: string
  /** The route it aims at, without the query. */
  readonly path: string
  readonly headers: Record<string, string>
  readonly body: Uint8Array | undefined
  /** The pool session whose valid token the request carries. */
  readonly session: number | undefined
  /** The body as the server parses it, when it is JSON. */
  readonly json: unknown
  readonly plan: Plan
}

const auth: fc.Arbitrary<Auth> = fc.oneof(
  { weight: 14, arbitrary: fc.nat({ max: 63 }).map((i): Auth => ({ kind: "session", i })) },
  fc.constant<Auth>({ kind: "none" }),
  fc.nat({ max: 63 }).map((i): Auth => ({ kind: "tampered", i })),
  fc.oneof(
    fc.constantFrom("Bearer", "Bearer ", "bearer a.b.c", "Basic Zm9vOmJhcg==", "Bearer null", "Token x", "Bearer ,,,"),
    fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 60 })
      .map((s) => `Bearer ${s}`),
    fc.integer({ min: 200, max: 4000 }).map((n) => `Bearer ${"a".repeat(n)}`)
  ).map((value): Auth => ({ kind: "raw", value }))
)

const contentType = fc.oneof(
  { weight: 8, arbitrary: fc.constant("application/json") },
  fc.constantFrom(
    undefined,
    "",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=utf-16",
    "application/octet-stream",
    "text/json",
    "application/json;;;",
    "*/*"
  )
)

type Headers = Readonly<Record<string, string>>
const browserish: fc.Arbitrary<Headers> = fc.oneof(
  { weight: 6, arbitrary: fc.constant({}) },
  fc.constantFrom<Headers>(
    { origin: "http://evil.example" },
    { "sec-fetch-site": "cross-site" },
    { "x-forwarded-for": "203.0.113.9" },
    { "x-quickim-admin-key": "guess" },
    { accept: "text/html" },
    { "content-encoding": "gzip" },
    { "accept-encoding": "br" }
  )
)

const badBytes = fc.constantFrom(
  [0xff],
  [0xc0, 0x80],
  [0xed, 0xa0, 0x80],
  [0xe2, 0x82],
  [0x80],
  [0xf4, 0x90, 0x80, 0x80],
  [0xfe, 0xfe, 0xff, 0xff]
)

const bodyFor = (fields: Record<string, Kind>): fc.Arbitrary<Body> =>
  fc.oneof(
    { weight: 12, arbitrary: objectFor(fields).map((value): Body => ({ kind: "json", value })) },
    { weight: 2, arbitrary: hostile.map((value): Body => ({ kind: "json", value })) },
    fc.constant<Body>({ kind: "none" }),
    fc.oneof(
      fc.constantFrom("", "{", "[1,2", "not json", "null", "\ufeff{}", "{}{}", '{"a":1,}', "'x'", '{"a" 1}'),
      fc.string({ unit: "binary", maxLength: 40 })
    ).map((text): Body => ({ kind: "text", text })),
    fc.tuple(objectFor(fields), badBytes).map(([value, bytes]): Body => ({ kind: "badUtf8", value, bytes }))
  )

const post: fc.Arbitrary<Plan> = fc.constantFrom(...Object.keys(POSTS)).chain((path) =>
  fc.record({
    method: fc.oneof({ weight: 20, arbitrary: fc.constant("POST") }, fc.constantFrom("GET", "PUT", "DELETE", "PATCH")),
    path: fc.constant(path),
    auth,
    contentType,
    headers: browserish,
    body: bodyFor(POSTS[path])
  })
)

const queryValue = fc.oneof(fc.string({ maxLength: 12 }), oddString)
const notify: fc.Arbitrary<Plan> = fc.record({
  method: fc.oneof({ weight: 6, arbitrary: fc.constant("GET") }, fc.constantFrom("POST", "HEAD", "OPTIONS")),
  path: fc.constant("/notify"),
  query: fc.array(
    fc.oneof(
      { weight: 4, arbitrary: fc.tuple(fc.constant("protoc"), fc.constantFrom("sse", "poll", "ws")) },
      fc.tuple(fc.constant("protoc"), fc.oneof(fc.constantFrom("", "SSE", "poll ", "sse\u0000"), queryValue)),
      { weight: 3, arbitrary: fc.tuple(fc.constant("token"), fc.nat({ max: 63 }).map((i) => ({ $token: i }))) },
      fc.tuple(fc.constant("token"), queryValue),
      fc.tuple(fc.constant("last_msg_id"), fc.oneof(msgIdRef, msgIdShaped, queryValue)),
      fc.tuple(
        fc.constant("events"),
        fc.oneof(fc.constantFrom("read", "read,member,typing", "member,member", "bogus", "", ","), queryValue)
      ),
      fc.tuple(fc.constantFrom("x", "", "protoc[]", "%"), queryValue)
    ),
    { maxLength: 5 }
  ),
  auth: fc.oneof(fc.constant<Auth>({ kind: "none" }), auth),
  contentType: fc.constant(undefined),
  headers: fc.oneof(
    { weight: 4, arbitrary: fc.constant<Headers>({}) },
    fc.constantFrom<Headers>({ "last-event-id": "bogus" }, { "last-event-id": "22222-2222-2222-222" }, {
      "last-event-id": ""
    }),
    browserish
  ),
  body: fc.constant<Body>({ kind: "none" })
})

const fixedGet: fc.Arbitrary<Plan> = fc.record({
  method: fc.constantFrom("GET", "GET", "HEAD", "POST", "OPTIONS"),
  path: fc.constantFrom(...GETS),
  auth,
  contentType: fc.constant(undefined),
  headers: browserish,
  body: fc.constant<Body>({ kind: "none" })
})

const oddRoute: fc.Arbitrary<Plan> = fc.record({
  method: fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"),
  path: fc.oneof(
    fc.constantFrom(
      "/",
      "/send_msg/",
      "/SEND_MSG",
      "/inner",
      "/inner/",
      "/inner/nope",
      "//healthz",
      "/%00",
      "/%ff%fe",
      "/notify/x",
      "/send_msg%00",
      "/..%2f..%2fetc%2fpasswd",
      "/console/../openapi.json",
      `/${"a".repeat(3000)}`
    ),
    fc.webPath()
  ),
  auth,
  contentType,
  headers: browserish,
  body: fc.oneof(fc.constant<Body>({ kind: "none" }), fc.constant<Body>({ kind: "json", value: {} }))
})

/** One request plan for any endpoint of the contract, or none of them. */
export const plan: fc.Arbitrary<Plan> = fc.oneof(
  { weight: 14, arbitrary: post },
  { weight: 2, arbitrary: notify },
  { weight: 1, arbitrary: fixedGet },
  { weight: 1, arbitrary: oddRoute }
)

const encoder = new TextEncoder()
const decoder = new TextDecoder()

const tryParse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** encodeURIComponent, except that an unpaired surrogate becomes the bytes of its (invalid) UTF-8 form. */
const encodeQuery = (s: string) => {
  let out = ""
  for (const ch of s) {
    const c = ch.codePointAt(0)!
    out += c >= 0xd800 && c <= 0xdfff
      ? [0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f)].map((b) => `%${b.toString(16).toUpperCase()}`)
        .join("")
      : encodeURIComponent(ch)
  }
  return out
}

/** A valid token with one signature character changed. */
const tamper = (token: string) => token.slice(0, -2) + (token.at(-2) === "A" ? "B" : "A") + token.at(-1)

export const build = (p: Plan, world: FuzzWorld): FuzzRequest => {
  const headers: Record<string, string> = { ...p.headers }
  if (p.contentType !== undefined) headers["content-type"] = p.contentType
  let session: number | undefined
  const token = (i: number) => nth(world.tokens, i) ?? "no-token"
  switch (p.auth.kind) {
    case "session":
      session = world.tokens.length === 0 ? undefined : p.auth.i % world.tokens.length
      headers.authorization = `Bearer ${token(p.auth.i)}`
      break
    case "tampered":
      headers.authorization = `Bearer ${tamper(token(p.auth.i))}`
      break
    case "raw":
      headers.authorization = p.auth.value
      break
  }
  let body: Uint8Array | undefined
  switch (p.body.kind) {
    case "json":
      body = encoder.encode(toJson(p.body.value, world))
      break
    case "text":
      body = encoder.encode(tame(p.body.text))
      break
    case "badUtf8": {
      const text = toJson(p.body.value, world)
      const at = text.indexOf(':"') >= 0 ? text.indexOf(':"') + 2 : Math.min(1, text.length)
      const head = encoder.encode(text.slice(0, at))
      const tail = encoder.encode(text.slice(at))
      body = new Uint8Array([...head, ...p.body.bytes, ...tail])
      break
    }
  }
  const withBody = p.method !== "GET" && p.method !== "HEAD"
  if (!withBody) body = undefined
  const query = (p.query ?? []).map(([k, v]) => {
    const value = typeof v === "string"
      ? tame(v)
      : "$token" in v
      ? token(v.$token)
      : JSON.parse(toJson(v as Ref, world)) as string
    return `${encodeQuery(k)}=${encodeQuery(value)}`
  })
  const target = p.path + (query.length > 0 ? `?${query.join("&")}` : "")
  const notifyBySession = p.path === "/notify" && session === undefined
    ? (p.query ?? []).find(([k, v]) => k === "token" && typeof v === "object" && "$token" in v)
    : undefined
  if (notifyBySession !== undefined && world.tokens.length > 0) {
    session = (notifyBySession[1] as { $token: number }).$token % world.tokens.length
  }
  return {
    method: p.method,
    target,
    path: p.path,
    headers,
    body,
    session,
    json: body === undefined ? undefined : tryParse(decoder.decode(body)),
    plan: p
  }
}

// --- answers ---------------------------------------------------------------------------------

export interface Answer {
  readonly status: number
  readonly contentType: string
  readonly text: string
}

const STACK = /\bat .*\.(ts|js):\d+|node_modules|Error:\s/

/**
 * What every answer must be: never a 5xx other than 503, and the `{code, error}` / `{code, data}`
 * envelope except where the contract documents another body. Returns the problem, if any.
 */
export const judge = (req: FuzzRequest, answer: Answer): string | undefined => {
  const { status, contentType, text } = answer
  if (status >= 500 && status !== 503) return `status ${status}`
  if (req.method === "HEAD") return undefined
  if (req.method === "OPTIONS" && (status === 204 || status === 200) && text === "") return undefined
  if (req.method === "GET" && status === 200) {
    if (req.path === "/openapi.json") return tryParse(text) !== undefined ? undefined : "openapi.json is not JSON"
    if (req.path === "/metrics" || req.path.startsWith("/console")) return text.length > 0 ? undefined : "empty page"
    if (req.path === "/notify" && contentType.startsWith("text/event-stream")) return undefined
    if (req.path === "/notify") {
      const message = tryParse(text) as any
      if (typeof message?.MsgId === "string") return undefined
      // A live event, only of a kind the poll opted in to (`conversation` comes with `member`).
      const optedIn = (new URL(req.target, "http://x").searchParams.get("events") ?? "").split(",")
      const kind = message?.Event === "conversation" ? "member" : message?.Event
      return typeof kind === "string" && optedIn.includes(kind) ? undefined : `poll answered ${text.slice(0, 200)}`
    }
  }
  if (req.method === "GET" && req.path === "/notify" && status === 204 && text === "") return undefined
  const body = tryParse(text) as any
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return `not an envelope: ${JSON.stringify(text.slice(0, 200))}`
  }
  if (!contentType.includes("application/json")) return `envelope with content type ${contentType}`
  if (!Number.isInteger(body.code)) return `envelope without a numeric code: ${text.slice(0, 200)}`
  if (status >= 200 && status < 300) {
    return body.code === 0 ? undefined : `status ${status} with code ${body.code}`
  }
  if (body.code === 0) return `status ${status} with code 0`
  if (typeof body.error !== "string" || body.error.length === 0) return `error envelope without a message`
  if ("data" in body) return `error envelope with data`
  if (STACK.test(body.error)) return `stack trace in error: ${body.error.slice(0, 200)}`
  return undefined
}

/** Sends one request; a stream answer (SSE) is judged by its headers and then dropped. */
export const send = async (baseUrl: string, req: FuzzRequest, timeoutMs: number): Promise<Answer | "timeout"> => {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), timeoutMs)
  try {
    const res = await fetch(baseUrl + req.target, {
      method: req.method,
      headers: req.headers,
      body: req.body as BodyInit | undefined,
      signal: controller.signal,
      redirect: "manual"
    })
    const contentType = res.headers.get("content-type") ?? ""
    if (contentType.startsWith("text/event-stream")) {
      await res.body?.cancel().catch(() => {})
      return { status: res.status, contentType, text: "" }
    }
    return { status: res.status, contentType, text: await res.text() }
  } catch (e) {
    if (controller.signal.aborted) return "timeout"
    throw e
  } finally {
    clearTimeout(timer)
  }
}

/** A short label of a request for reports. */
export const describe = (req: FuzzRequest) => {
  const body = req.body === undefined ? "" : decoder.decode(req.body)
  return `${req.method} ${req.target.slice(0, 120)} ${
    body.length > 300 ? `${body.slice(0, 300)}… (${req.body!.length} bytes)` : body
  } headers=${JSON.stringify({ ...req.headers, authorization: req.headers.authorization?.slice(0, 24) })}`
}
