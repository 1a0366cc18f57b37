/**
 * The `quick-im` command line (effect/cli): `serve` and `migrate` run this node; the others talk
 * to a running server through the client SDK (`--url`; `inner/*` through `--inner-url`, which is
 * `--url` unless the server has a separate inner listener, from an allowed address, with
 * `--admin-key` when the server has one). Exit codes: 0 done, 1 the server refused or could not
 * be reached (the reason in plain words), 2 the command line itself was wrong.
 */
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as Argument from "effect/cli/Argument"
import * as CliError from "effect/cli/CliError"
import * as Command from "effect/cli/Command"
import * as Flag from "effect/cli/Flag"
import { MainLive } from "../App.ts"
import { makeClient, type QuickImClient } from "../client/Client.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { AppConfig } from "../Config.ts"
import { DatabaseLive } from "../storage/Database.ts"
import { LoggingLive } from "../observability/Logging.ts"
import { formatClusterView } from "./ClusterStatus.ts"

/** A request the server refused, or a server that could not be reached, said in plain words. */
export class RequestFailed extends Schema.TaggedError<RequestFailed>()("RequestFailed", { message: Schema.String }) {
  override get [CliError.userMessage]() {
    return this.message
  }
}

/** How long one request may take before the command gives up on the server. */
const REQUEST_TIMEOUT = "15 seconds"

/**
 * Turns the SDK's failures into one plain sentence (the documented `{code, error}` or the
 * transport's reason), and a server that does not answer into a failure too.
 */
const plainly = (url: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.mapError(effect, (e: any) => {
    if (typeof e?.code === "number" && typeof e?.error === "string") {
      return new RequestFailed({ message: `${url} refused: ${e.error} (code ${e.code})` })
    }
    const reason = e?._tag === "HttpClientError" || e?.reason !== undefined
      ? String(e?.reason?.cause?.message ?? e?.reason?.message ?? e?.message ?? e)
      : String(e?.message ?? e)
    return new RequestFailed({ message: `could not reach ${url}: ${reason}` })
  }).pipe(
    Effect.timeoutOrElse({
      duration: REQUEST_TIMEOUT,
      orElse: () => Effect.fail(new RequestFailed({ message: `${url} did not answer within ${REQUEST_TIMEOUT}` }))
    })
  )

const url = Flag.String("url").pipe(
  Flag.withDescription("The server (default $QUICKIM_URL, else http://127.0.0.1:$PORT, else :8080)"),
  Flag.withFallbackConfig(Config.String("QUICKIM_URL")),
  Flag.withDefault(`http://127.0.0.1:${process.env.PORT ?? 8080}`)
)
const adminKey = Flag.String("admin-key").pipe(
  Flag.withDescription("X-QuickIM-Admin-Key for inner endpoints (default $QUICKIM_ADMIN_KEY)"),
  Flag.withFallbackConfig(Config.String("QUICKIM_ADMIN_KEY")),
  Flag.optional
)
const innerUrl = Flag.String("inner-url").pipe(
  Flag.withDescription("The server's inner listener, for inner/* (default $QUICKIM_INNER_URL, else --url)"),
  Flag.withFallbackConfig(Config.String("QUICKIM_INNER_URL")),
  Flag.optional
)
const shared = { url, innerUrl, adminKey }

const root = Command.make("quick-im").pipe(
  Command.withSharedFlags(shared),
  Command.withDescription("quick-im: clustered instant-messaging core. Run a node, or operate a running one.")
)

/**
 * The SDK clients for the root flags, with failures in plain words: `inner` for `inner/*` (at
 * `--inner-url`, with the admin key), `im` for the public API (at `--url`).
 */
const client = Effect.gen(function* () {
  const flags = yield* root
  const innerUrl = Option.getOrElse(flags.innerUrl, () => flags.url)
  const inner = yield* makeClient({ baseUrl: innerUrl, adminKey: Option.getOrUndefined(flags.adminKey) })
  const im = yield* makeClient({ baseUrl: flags.url })
  return { im, inner, flags, plain: plainly(flags.url), plainInner: plainly(innerUrl) }
})

const serve = Command.make("serve", {}, () => Layer.launch(MainLive)).pipe(
  Command.withDescription(
    "Run a node (the default with no command): settings from the environment (docs/operations.md)"
  )
)

const migrate = Command.make("migrate", {}, () =>
  Effect.logInfo("database migrated").pipe(
    Effect.provide(Layer.merge(DatabaseLive, LoggingLive).pipe(Layer.provide(AppConfig.layer)))
  )).pipe(Command.withDescription("Apply the schema/ migrations to the configured database and exit"))

const session = Flag.String("session").pipe(Flag.withDescription("The session (user) id"))
const platform = Flag.Int("platform").pipe(Flag.withDescription("The platform (device kind)"), Flag.withDefault(1))

const token = Command.make("token", { session, platform }, ({ platform, session }) =>
  Effect.gen(function* () {
    const { inner, plainInner } = yield* client
    yield* Console.log(yield* plainInner(inner.token(session, platform)))
  })).pipe(Command.withDescription("Mint a token for a session (inner/get_token)"))

const conversationId = Argument.String("conversation").pipe(Argument.withDescription("The conversation id"))
const sessions = Argument.String("sessions").pipe(Argument.withDescription("Session ids"), Argument.atLeast(1))

const create = Command.make("create", {
  sessions,
  type: Flag.Int("type").pipe(Flag.withDescription("Conversation type, 0-15"), Flag.withDefault(0))
}, ({ sessions, type }) =>
  Effect.gen(function* () {
    const { inner, plainInner } = yield* client
    yield* Console.log(yield* plainInner(inner.createConversation(sessions, type)))
  })).pipe(Command.withDescription("Create a conversation with these members; prints its id"))

/** `join` and `kick`: a conversation and the sessions to add or remove. */
const membership = (
  name: "join" | "kick",
  description: string,
  done: string,
  act: (im: QuickImClient, conversation: string, sessions: ReadonlyArray<string>) => Effect.Effect<void, unknown>
) =>
  Command.make(name, { conversationId, sessions }, ({ conversationId, sessions }) =>
    Effect.gen(function* () {
      const { inner, plainInner } = yield* client
      yield* plainInner(act(inner, conversationId, sessions))
      yield* Console.log(`${done} ${sessions.join(", ")}: ${conversationId}`)
    })).pipe(Command.withDescription(description))

const join = membership("join", "Add members to a conversation", "joined", (im, c, s) => im.join(c, s))
const kick = membership("kick", "Remove members from a conversation", "removed", (im, c, s) => im.kick(c, s))

const archive = Command.make("archive", {
  conversations: Argument.String("conversations").pipe(
    Argument.withDescription("Conversation ids"),
    Argument.atLeast(1)
  ),
  undo: Flag.Boolean("undo").pipe(Flag.withDescription("Unarchive instead"), Flag.withDefault(false))
}, ({ conversations, undo }) =>
  Effect.gen(function* () {
    const { inner, plainInner } = yield* client
    yield* plainInner(inner.archive(conversations, !undo))
    yield* Console.log(`${undo ? "unarchived" : "archived"} ${conversations.join(", ")}`)
  })).pipe(Command.withDescription("Archive conversations (all or nothing)"))

const conversation = Command.make("conversation").pipe(
  Command.withDescription("Create conversations and manage their members"),
  Command.withSubcommands([create, join, kick, archive])
)

/** The client acting as `session`, with a token minted through the inner endpoint. */
const sessionClient = (session: string, platform: number) =>
  Effect.gen(function* () {
    const { im, inner, plain, plainInner } = yield* client
    return { im: yield* im.as(yield* plainInner(inner.token(session, platform))), plain }
  })

const send = Command.make("send", {
  session,
  platform,
  conversationId,
  text: Argument.String("text").pipe(Argument.withDescription("The message content")),
  clientMsgId: Flag.String("client-msg-id").pipe(
    Flag.withDescription("Idempotency key: sending it again stores nothing new"),
    Flag.optional
  )
}, ({ clientMsgId, conversationId, platform, session, text }) =>
  Effect.gen(function* () {
    const { im, plain } = yield* sessionClient(session, platform)
    const options = Option.isSome(clientMsgId) ? { clientMsgId: clientMsgId.value } : {}
    yield* Console.log(yield* plain(im.send(conversationId, text, options)))
  })).pipe(Command.withDescription("Send a message as a session; prints its MsgId"))

const line = (m: MsgData) => `${m.SendTime}  ${m.ConversationID}  ${m.FromSession}: ${m.Content}  [${m.MsgId}]`

const tail = Command.make("tail", {
  session,
  platform,
  protocol: Flag.Literals("protocol", ["ws", "sse", "poll"]).pipe(
    Flag.withDescription("Push protocol"),
    Flag.withDefault("ws" as const)
  ),
  cursor: Flag.String("cursor").pipe(
    Flag.withDescription("Start after this MsgId (the last one you saw): what came since is shown first"),
    Flag.optional
  ),
  json: Flag.Boolean("json").pipe(Flag.withDescription("One MsgData JSON object per line"), Flag.withDefault(false))
}, ({ cursor, json, platform, protocol, session }) =>
  Effect.gen(function* () {
    const { im } = yield* sessionClient(session, platform)
    yield* im.subscribe({
      protocol,
      ...(Option.isSome(cursor) ? { cursor: cursor.value } : {}),
      onState: (s) => {
        if (s._tag === "Open") console.error(`[connected over ${protocol}]`)
        if (s._tag === "Closed") console.error(`[disconnected: ${s.reason}; reconnecting in ${s.retryInMs} ms]`)
      }
    }).pipe(
      Stream.runForEach((m) => Console.log(json ? JSON.stringify(m) : line(m))),
      Effect.mapError((e) => new RequestFailed({ message: e.message }))
    )
  })).pipe(
    Command.withDescription(
      "Follow a session's push stream: reconnects and resumes from the last MsgId shown, never printing one twice"
    )
  )

/** One inbox line: unread badge, name (or id), the last message. */
const inboxLine = (e: {
  readonly ConversationId: string
  readonly Name: string
  readonly Unread: number
  readonly IsArchive: boolean
  readonly LastMsg: MsgData | null
}) =>
  `${e.Unread > 0 ? `(${e.Unread})` : "   "}  ${e.Name === "" ? e.ConversationId : `${e.Name} [${e.ConversationId}]`}${
    e.IsArchive ? " (archived)" : ""
  }${e.LastMsg === null ? "" : `  ${e.LastMsg.SendTime}  ${e.LastMsg.FromSession}: ${e.LastMsg.Content}`}`

const inbox = Command.make("inbox", {
  session,
  platform,
  limit: Flag.Int("limit").pipe(Flag.withDescription("Conversations per page (1-200)"), Flag.withDefault(50)),
  all: Flag.Boolean("all").pipe(Flag.withDescription("Every page, not just the first"), Flag.withDefault(false)),
  json: Flag.Boolean("json").pipe(Flag.withDescription("One inbox entry JSON object per line"), Flag.withDefault(false))
}, ({ all, json, limit, platform, session }) =>
  Effect.gen(function* () {
    const { im, plain } = yield* sessionClient(session, platform)
    let cursor: string | null = null
    let total = 0
    do {
      const page: Effect.Success<ReturnType<typeof im.inbox>> = yield* plain(im.inbox(limit, cursor))
      for (const e of page.Conversations) {
        total += e.Unread
        yield* Console.log(json ? JSON.stringify(e) : inboxLine(e))
      }
      cursor = page.NextCursor
    } while (all && cursor !== null)
    if (!json) yield* Console.log(`${total} unread${cursor === null ? "" : " on this page (more: --all)"}`)
  })).pipe(
    Command.withDescription("A session's chat list: most recent activity first, with unread counts and last messages")
  )

const status = Command.make("status", {}, () =>
  Effect.gen(function* () {
    const { inner, plainInner } = yield* client
    yield* Console.log(formatClusterView(yield* plainInner(inner.cluster)).trimEnd())
  })).pipe(Command.withDescription("Runners and their health, shards, live entities and connections per node"))

const cluster = Command.make("cluster").pipe(
  Command.withDescription("See the cluster"),
  Command.withSubcommands([status])
)

export const cli = root.pipe(
  Command.withSubcommands([serve, migrate, token, conversation, send, tail, inbox, cluster])
)
