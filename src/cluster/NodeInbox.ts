/**
 * The node-to-node link. Every node in multi-node mode hosts one `NodeInbox` entity, keyed by its
 * runner address and placed in a shard group only that node serves, so a message to
 * `NodeInbox(address)` always lands on that node: an addressable node built from Effect cluster's
 * own routing, not a side channel. Other nodes batch into one `Relay` (NodeOutbox) what would
 * otherwise be one cluster message per entity message: pushes for this node's connections (from
 * mailboxes elsewhere), committed messages for mailboxes whose shards this node holds (from
 * conversations elsewhere), and sends for conversations whose shards it holds (from gateways
 * elsewhere).
 *
 * Measured: a cluster message costs the same CPU whether it carries one delivery or fifty, so under
 * load one message per node pair and round trip replaces one per entity message. Routing is by
 * the nodes' reports (ShardRoutes), checked here against the shards this node really holds: what
 * is not here is handed back, and the sender falls back to the ordinary entity message.
 */
import { Cause, Effect, Option, Schema } from "effect"
import { ClusterSchema, Entity } from "effect/cluster"
import { Rpc } from "effect/rpc"
import { Conversation, type SentMessage } from "../conversation/Protocol.ts"
import {
  ConversationNotFound,
  DatabaseUnavailable,
  type MsgData,
  NotMember,
  UnstorableMessage
} from "../domain/Conversation.ts"
import { LocalConnections } from "../push/LocalConnections.ts"
import { SlowConsumer } from "../push/Protocol.ts"
import { ShardRoutes } from "./ShardRoutes.ts"

/** The shard group only the node at runner `address` serves. */
export const inboxGroup = (address: string) => `node:${address}`

/** Messages for connections on the receiving node, from one mailbox activation (see Feed). */
export interface PushItem {
  readonly connections: ReadonlyArray<string>
  readonly incarnation: string
  readonly messages: ReadonlyArray<MsgData>
}

/** Messages of one conversation for the mailboxes of `sessions`, in commit order. */
export interface DeliverItem {
  readonly sessions: ReadonlyArray<string>
  readonly messages: ReadonlyArray<MsgData>
}

export interface SendItem {
  readonly conversationId: string
  readonly session: string
  readonly status: number
  readonly type: number
  readonly content: string
  readonly clientMsgId?: string
}

export type SendOutcome =
  | ({ readonly _tag: "Sent" } & SentMessage)
  | {
    readonly _tag: "Refused"
    readonly error: ConversationNotFound | NotMember | UnstorableMessage | DatabaseUnavailable
  }
  /** This node does not hold the conversation's shard (any more): the sender uses the entity message. */
  | { readonly _tag: "NotHere" }
  /** The conversation failed the write (a defect there); the sender answers with a defect too. */
  | { readonly _tag: "Failed"; readonly message: string }

/**
 * An upper bound of the bytes `messages` take in a relay: JSON text escapes a control character in
 * six bytes, and nothing takes more. Effect cluster's runner transport refuses a frame over 16 MB
 * and the connection it came on with it, so relays stay well below (NodeOutbox).
 */
export const boundBytes = (messages: ReadonlyArray<MsgData>) => {
  let bytes = 0
  for (const m of messages) bytes += boundMessage(m)
  return bytes
}

/** A bound of the bytes `text` takes as a JSON string's contents (see boundBytes). */
export const boundText = (text: string) => 6 * text.length

const boundMessage = (m: MsgData) => boundText(m.Content) + boundText(m.FromSession) + 256

/** The most one deliver or push item carries (a bound, see boundBytes); larger batches are split. */
export const ITEM_BYTES = 2 * 1024 * 1024

/** `messages` in consecutive runs of at most ITEM_BYTES each (a single larger message runs alone). */
export const chunked = (messages: ReadonlyArray<MsgData>): ReadonlyArray<ReadonlyArray<MsgData>> => {
  if (boundBytes(messages) <= ITEM_BYTES) return [messages]
  const out: Array<Array<MsgData>> = []
  let current: Array<MsgData> = []
  let bytes = 0
  for (const m of messages) {
    const size = boundMessage(m)
    if (current.length > 0 && bytes + size > ITEM_BYTES) {
      out.push(current)
      current = []
      bytes = 0
    }
    current.push(m)
    bytes += size
  }
  if (current.length > 0) out.push(current)
  return out
}

/**
 * When this process started (epoch ms). A relay sent before it (`RelayBody.sentAt`) was meant for
 * a process that died on this address, and its sender gives it up as soon as it reads this
 * process's start (`relayWatchdog`); so it is not served here, whatever Effect cluster's retries
 * brought it: its sends would otherwise be stored here and again as the entity messages the sender
 * sends instead (a duplicate for a send without `client_msg_id`).
 */
export const processStartedAt = performance.timeOrigin

/** What one relay carries from one node to another: everything queued for it since the last one. */
export interface RelayBody {
  /** When the sender sent it (epoch ms, the sender's clock, as `relayWatchdog` compares it). */
  readonly sentAt: number
  readonly pushes: ReadonlyArray<PushItem>
  readonly delivers: ReadonlyArray<DeliverItem>
  readonly sends: ReadonlyArray<SendItem>
}

/**
 * The bodies are JSON text, written and read with the runtime's own JSON: both ends are this code,
 * and a schema-driven codec over every message of a batch cost more CPU than the rest of the relay
 * (measured: Schema and binary codec work was the largest share of a relayed delivery).
 */
export const Relay = Rpc.make("Relay", {
  /** A `RelayBody`. */
  payload: { body: Schema.String },
  /**
   * `{ missing: string[][], outcomes: SendOutcome[] }`: per deliver item the sessions whose mailbox
   * is not active here (they take the entity message), per send its outcome (a refusal's error as
   * its encoded fields).
   */
  success: Schema.String
})

const encodeOutcomes = (outcomes: ReadonlyArray<SendOutcome>) =>
  outcomes.map((o) => o._tag === "Refused" ? { _tag: "Refused", error: { ...o.error } } : o)

export const decodeOutcomes = (encoded: ReadonlyArray<any>): Array<SendOutcome> =>
  encoded.map((o) => {
    if (o._tag !== "Refused") return o
    const e = o.error
    return {
      _tag: "Refused",
      error: e._tag === "NotMember"
        ? new NotMember({ conversationId: e.conversationId, session: e.session })
        : e._tag === "UnstorableMessage"
        ? new UnstorableMessage({ conversationId: e.conversationId })
        : e._tag === "DatabaseUnavailable"
        ? new DatabaseUnavailable()
        : new ConversationNotFound({ conversationId: e.conversationId })
    }
  })

export const NodeInbox = Entity.make("NodeInbox", [Relay]).annotate(ClusterSchema.ShardGroup, inboxGroup)

const notHere: SendOutcome = { _tag: "NotHere" }

/**
 * Serves what other nodes relay. Pushes and deliveries are handed over at once, in order (each
 * sender has one relay in flight at a time); the answer waits for the sends' commits, and relays
 * from several nodes are served side by side. A relay sent before this process started is answered
 * with nothing served (see `processStartedAt`).
 */
export const relayHandler = Effect.gen(function* () {
  const here = yield* LocalConnections
  const routes = yield* ShardRoutes
  const conversations = yield* Conversation.client
  const buffer = here.buffer
  const send = ({ conversationId, ...payload }: SendItem): Effect.Effect<SendOutcome> =>
    routes.holds(conversationId)
      ? conversations(conversationId).Send(payload).pipe(
        Effect.matchCause({
          onSuccess: (sent): SendOutcome => ({ _tag: "Sent", ...sent }),
          onFailure: (cause): SendOutcome => {
            const error = Option.getOrUndefined(Cause.findErrorOption(cause))
            return error instanceof ConversationNotFound || error instanceof NotMember
                || error instanceof UnstorableMessage || error instanceof DatabaseUnavailable
              ? { _tag: "Refused", error }
              : { _tag: "Failed", message: String(Cause.squash(cause)) }
          }
        })
      )
      : Effect.succeed(notHere)
  return (body: string) =>
    Effect.suspend(() => {
      const { sentAt, pushes, delivers, sends } = JSON.parse(body) as RelayBody
      if (!(sentAt >= processStartedAt)) {
        return Effect.succeed(JSON.stringify({
          missing: delivers.map((item) => item.sessions),
          outcomes: sends.map(() => notHere)
        }))
      }
      for (const item of pushes) {
        for (const id of item.connections) {
          const sink = here.sinks.get(id)
          if (sink === undefined) continue // closed meanwhile: its mailbox forgets it when its stream ends
          let taken = false
          try {
            taken = sink.push(item.messages, item.incarnation)
          } catch {
            // a transport that throws is treated like a full one
          }
          if (!taken) sink.fail(new SlowConsumer({ buffered: buffer }))
        }
      }
      const missing = delivers.map((item) => {
        const missing: Array<string> = []
        for (const session of item.sessions) {
          // A mailbox active here on a shard this node holds takes the messages by a direct call,
          // as from a conversation on this node; any other goes back for the entity message, which
          // also wakes a passivated mailbox.
          const direct = routes.holds(session) ? here.mailboxes.get(session) : undefined
          if (direct === undefined) missing.push(session)
          else direct(item.messages)
        }
        return missing
      })
      if (sends.length === 0) return Effect.succeed(JSON.stringify({ missing, outcomes: [] }))
      return Effect.forEach(sends, send, { concurrency: "unbounded" }).pipe(
        Effect.map((outcomes) => JSON.stringify({ missing, outcomes: encodeOutcomes(outcomes) }))
      )
    })
})

export const NodeInboxLive = NodeInbox.toLayer(
  Effect.gen(function* () {
    const here = yield* LocalConnections
    const relay = yield* relayHandler
    here.inboxes.active++
    yield* Effect.addFinalizer(() => Effect.sync(() => here.inboxes.active--))
    return NodeInbox.of({ Relay: ({ payload }) => relay(payload.body) })
  }),
  { concurrency: "unbounded" }
)
