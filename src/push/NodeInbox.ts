/**
 * Delivery to connections on another node. Every node in multi-node mode hosts one `NodeInbox`
 * entity, keyed by its runner address and placed in a shard group only that node serves, so a
 * message to `NodeInbox(address)` always lands on that node: an addressable node built from Effect
 * cluster's own routing, not a side channel.
 *
 * A Mailbox hands messages for its remote connections to `NodeOutbox`, which sends them, per
 * target node, in one `Push` at a time: whatever queued while the previous `Push` was on its way
 * goes out together, so under load one cluster message carries many deliveries (from every
 * mailbox of this node), in order. Measured: a remote delivery over the Subscribe stream cost
 * four runner messages (chunk, two acknowledgements and a reply), a `Push` costs two and is shared.
 *
 * A `Push` that fails (the node died or stopped answering) ends the Subscribe streams of the
 * connections it was for: those connections subscribe again and replay from their last MsgId, so
 * a lost `Push` never becomes a silent gap.
 */
import { Context, Effect, Fiber, Layer, Schema } from "effect"
import { ClusterSchema, Entity } from "effect/cluster"
import { Rpc } from "effect/rpc"
import { MsgData } from "../domain/Conversation.ts"
import { LocalConnections } from "./LocalConnections.ts"
import { SlowConsumer } from "./Protocol.ts"

/** The shard group only the node at runner `address` serves. */
export const inboxGroup = (address: string) => `node:${address}`

export const Push = Rpc.make("Push", {
  payload: {
    items: Schema.Array(Schema.Struct({
      connections: Schema.Array(Schema.String),
      incarnation: Schema.String,
      messages: Schema.Array(MsgData)
    }))
  }
})

export const NodeInbox = Entity.make("NodeInbox", [Push]).annotate(ClusterSchema.ShardGroup, inboxGroup)

/** How long one `Push` may take before its connections are made to resubscribe and replay. */
const PUSH_TIMEOUT = "5 seconds"

/** Hands pushed messages to this node's connections; a full one is cut off as a slow consumer. */
export const NodeInboxLive = NodeInbox.toLayer(Effect.gen(function* () {
  const here = yield* LocalConnections
  const buffer = here.buffer
  here.inboxes.active++
  yield* Effect.addFinalizer(() => Effect.sync(() => here.inboxes.active--))
  return NodeInbox.of({
    Push: ({ payload }) =>
      Effect.sync(() => {
        for (const item of payload.items) {
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
      })
  })
}))

interface Item {
  readonly connections: ReadonlyArray<string>
  /** The sending mailbox's activation. */
  readonly incarnation: string
  readonly messages: ReadonlyArray<MsgData>
  /** The push failed: the connections resubscribe and replay. */
  readonly failed: () => void
}

export class NodeOutbox extends Context.Service<NodeOutbox, {
  /** Queues `messages` for `connections` on the node whose inbox is `inbox`; never blocks. */
  readonly send: (
    inbox: string,
    connections: ReadonlyArray<string>,
    incarnation: string,
    messages: ReadonlyArray<MsgData>,
    failed: () => void
  ) => void
}>()("quick-im/push/NodeOutbox") {
  static readonly layer = Layer.effect(
    NodeOutbox,
    Effect.gen(function* () {
      const inboxes = yield* NodeInbox.client
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const running = new Set<Fiber.Fiber<void>>()
      yield* Effect.addFinalizer(() => Fiber.interruptAll(running))
      const targets = new Map<string, { pending: Array<Item>; draining: boolean }>()

      /** At most one drain per target: each Push carries everything queued while the previous one was out. */
      const drain = (inbox: string, target: { pending: Array<Item>; draining: boolean }) =>
        Effect.gen(function* () {
          const client = inboxes(inbox)
          for (;;) {
            if (target.pending.length === 0) {
              target.draining = false
              return
            }
            const batch = target.pending
            target.pending = []
            yield* client.Push({
              items: batch.map((i) => ({
                connections: i.connections,
                incarnation: i.incarnation,
                messages: i.messages
              }))
            })
              .pipe(
                Effect.timeout(PUSH_TIMEOUT),
                Effect.catchCause((cause) =>
                  Effect.sync(() => {
                    // Nothing queued after the failed batch may reach these connections before they
                    // resubscribe, or a later message would land ahead of the missing ones.
                    const cut = new Set(batch.flatMap((i) => i.connections))
                    target.pending = target.pending.flatMap((i) => {
                      const rest = i.connections.filter((c) => !cut.has(c))
                      return rest.length === 0 ? [] : [{ ...i, connections: rest }]
                    })
                    for (const item of batch) item.failed()
                  }).pipe(
                    Effect.andThen(
                      Effect.logWarning("push to a node failed; its connections resubscribe and replay", cause).pipe(
                        Effect.annotateLogs({ inbox })
                      )
                    )
                  )
                )
              )
          }
        })

      return NodeOutbox.of({
        send: (inbox, connections, incarnation, messages, failed) => {
          let target = targets.get(inbox)
          if (target === undefined) {
            target = { pending: [], draining: false }
            targets.set(inbox, target)
          }
          target.pending.push({ connections, incarnation, messages, failed })
          if (target.draining) return
          target.draining = true
          const fiber = runFork(drain(inbox, target))
          running.add(fiber)
          fiber.addObserver(() => running.delete(fiber))
        }
      })
    })
  )
}
