/**
 * The node-to-node link. Every node in multi-node mode hosts one `NodeInbox` entity, keyed by its
 * runner address and placed in a shard group only that node serves, so a message to
 * `NodeInbox(address)` always lands on that node: an addressable node built from Effect cluster's
 * own routing, not a side channel. Other nodes batch into it (NodeOutbox) what would otherwise be
 * one cluster message per entity message:
 *
 * - `Relay`: pushes for this node's connections (from mailboxes elsewhere), and committed messages
 *   for mailboxes whose shards this node holds (from conversations elsewhere);
 * - `SendMany`: sends for conversations whose shards this node holds (from gateways elsewhere).
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
import { ConversationNotFound, type MsgData, NotMember } from "../domain/Conversation.ts"
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
  | { readonly _tag: "Refused"; readonly error: ConversationNotFound | NotMember }
  /** This node does not hold the conversation's shard (any more): the sender uses the entity message. */
  | { readonly _tag: "NotHere" }
  /** The conversation failed the write (a defect there); the sender answers with a defect too. */
  | { readonly _tag: "Failed"; readonly message: string }

/**
 * The bodies are JSON text, written and read with the runtime's own JSON: both ends are this code,
 * and a schema-driven codec over every message of a batch cost more CPU than the rest of the relay
 * (measured: Schema and binary codec work was the largest share of a relayed delivery).
 */
export const Relay = Rpc.make("Relay", {
  /** `{ pushes: PushItem[], delivers: DeliverItem[] }` */
  payload: { body: Schema.String },
  /** Per deliver item, the sessions whose mailbox is not active here (they take the entity message): `string[][]`. */
  success: Schema.String
})

export const SendMany = Rpc.make("SendMany", {
  /** `SendItem[]` */
  payload: { body: Schema.String },
  /** `SendOutcome[]`, a refusal's error as its encoded fields. */
  success: Schema.String
})

export const encodeOutcomes = (outcomes: ReadonlyArray<SendOutcome>) =>
  JSON.stringify(outcomes.map((o) => o._tag === "Refused" ? { _tag: "Refused", error: { ...o.error } } : o))

export const decodeOutcomes = (body: string): Array<SendOutcome> =>
  (JSON.parse(body) as Array<any>).map((o) => {
    if (o._tag !== "Refused") return o
    const e = o.error
    return {
      _tag: "Refused",
      error: e._tag === "NotMember"
        ? new NotMember({ conversationId: e.conversationId, session: e.session })
        : new ConversationNotFound({ conversationId: e.conversationId })
    }
  })

export const NodeInbox = Entity.make("NodeInbox", [Relay, SendMany]).annotate(ClusterSchema.ShardGroup, inboxGroup)

const notHere: SendOutcome = { _tag: "NotHere" }

/**
 * Serves what other nodes relay. `Relay` is synchronous, so each sender's relays (one in flight at
 * a time) are handled in order; `SendMany` waits for commits, and runs beside them.
 */
export const NodeInboxLive = NodeInbox.toLayer(
  Effect.gen(function* () {
    const here = yield* LocalConnections
    const routes = yield* ShardRoutes
    const conversations = yield* Conversation.client
    const buffer = here.buffer
    here.inboxes.active++
    yield* Effect.addFinalizer(() => Effect.sync(() => here.inboxes.active--))
    return NodeInbox.of({
      Relay: ({ payload }) =>
        Effect.sync(() => {
          const { pushes, delivers } = JSON.parse(payload.body) as {
            pushes: ReadonlyArray<PushItem>
            delivers: ReadonlyArray<DeliverItem>
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
          return JSON.stringify(delivers.map((item) => {
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
          }))
        }),
      SendMany: ({ payload }) =>
        Effect.forEach(
          JSON.parse(payload.body) as ReadonlyArray<SendItem>,
          ({ conversationId, ...send }) =>
            routes.holds(conversationId)
              ? conversations(conversationId).Send(send).pipe(
                Effect.matchCause({
                  onSuccess: (sent): SendOutcome => ({ _tag: "Sent", ...sent }),
                  onFailure: (cause): SendOutcome => {
                    const error = Option.getOrUndefined(Cause.findErrorOption(cause))
                    return error instanceof ConversationNotFound || error instanceof NotMember
                      ? { _tag: "Refused", error }
                      : { _tag: "Failed", message: String(Cause.squash(cause)) }
                  }
                })
              )
              : Effect.succeed(notHere),
          { concurrency: "unbounded" }
        ).pipe(Effect.map(encodeOutcomes))
    })
  }),
  { concurrency: "unbounded" }
)
