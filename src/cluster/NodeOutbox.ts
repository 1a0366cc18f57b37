/**
 * The sending side of the node-to-node link (NodeInbox). Per target node there are two lanes, each
 * with at most one cluster message in flight: whatever queued while it was on its way goes out
 * together in the next one, so under load one message carries many entity messages' worth, in
 * order. `relay` carries pushes and deliveries (served synchronously over there); `send` carries
 * sends, which wait for commits, so they never hold pushes up.
 *
 * Nothing relayed can be lost silently: a relay that fails or times out (the node died, froze or
 * stopped) ends the subscriptions of the connections it was for (they subscribe again and replay
 * from their last MsgId), and hands its deliveries and sends back to their callers, which send
 * them again as ordinary entity messages; those wait for the shard's new home.
 */
import { Context, Effect, Fiber, Layer } from "effect"
import type { MsgData } from "../domain/Conversation.ts"
import { decodeOutcomes, NodeInbox, type SendItem, type SendOutcome } from "./NodeInbox.ts"
import { ShardRoutes } from "./ShardRoutes.ts"

/** How long one relay may take before its contents take the slow, sure way. */
const RELAY_TIMEOUT = "5 seconds"

interface PushEntry {
  readonly _tag: "push"
  readonly connections: ReadonlyArray<string>
  readonly incarnation: string
  readonly messages: ReadonlyArray<MsgData>
  readonly failed: () => void
}

interface DeliverEntry {
  readonly _tag: "deliver"
  readonly sessions: ReadonlyArray<string>
  readonly messages: ReadonlyArray<MsgData>
  /** The sessions not served there (all of them when the relay failed). */
  readonly done: (missing: ReadonlyArray<string>) => void
}

interface SendEntry {
  readonly item: SendItem
  /** undefined: the relay failed or the node does not hold the conversation; send the entity message. */
  readonly done: (outcome: SendOutcome | undefined) => void
}

interface Lane<I> {
  pending: Array<I>
  draining: boolean
}

export class NodeOutbox extends Context.Service<NodeOutbox, {
  /** Queues `messages` for `connections` on the node whose inbox is `inbox`; never blocks. */
  readonly push: (
    inbox: string,
    connections: ReadonlyArray<string>,
    incarnation: string,
    messages: ReadonlyArray<MsgData>,
    failed: () => void
  ) => void
  /**
   * Hands `messages` to the mailboxes of `sessions` on the node `inbox`; succeeds with the sessions
   * it could not serve there (their mailbox is elsewhere or not active, or the node did not answer).
   */
  readonly deliver: (
    inbox: string,
    sessions: ReadonlyArray<string>,
    messages: ReadonlyArray<MsgData>
  ) => Effect.Effect<ReadonlyArray<string>>
  /** A send for a conversation on the node `inbox`; undefined: send the entity message instead. */
  readonly send: (inbox: string, item: SendItem) => Effect.Effect<SendOutcome | undefined>
}>()("quick-im/cluster/NodeOutbox") {
  static readonly layer = Layer.effect(
    NodeOutbox,
    Effect.gen(function* () {
      const inboxes = yield* NodeInbox.client
      const routes = yield* ShardRoutes
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const running = new Set<Fiber.Fiber<void>>()
      yield* Effect.addFinalizer(() => Fiber.interruptAll(running))

      /** A lane per target node; at most one drain each, sending everything queued at once. */
      const lanes = <I>(flush: (inbox: string, batch: Array<I>, lane: Lane<I>) => Effect.Effect<void>) => {
        const byTarget = new Map<string, Lane<I>>()
        const drain = (inbox: string, lane: Lane<I>) =>
          Effect.gen(function* () {
            // Whatever else this turn of the event loop queues (a commit wakes many conversations
            // at once) goes in the same cluster message.
            yield* Effect.yieldNow
            while (lane.pending.length > 0) {
              const batch = lane.pending
              lane.pending = []
              yield* flush(inbox, batch, lane)
            }
            lane.draining = false
          })
        return (inbox: string, item: I) => {
          let lane = byTarget.get(inbox)
          if (lane === undefined) {
            lane = { pending: [], draining: false }
            byTarget.set(inbox, lane)
          }
          lane.pending.push(item)
          if (lane.draining) return
          lane.draining = true
          const fiber = runFork(drain(inbox, lane))
          running.add(fiber)
          fiber.addObserver(() => running.delete(fiber))
        }
      }

      const relay = lanes<PushEntry | DeliverEntry>((inbox, batch, lane) => {
        const pushes = batch.filter((e): e is PushEntry => e._tag === "push")
        const delivers = batch.filter((e): e is DeliverEntry => e._tag === "deliver")
        const body = JSON.stringify({
          pushes: pushes.map((p) => ({ connections: p.connections, incarnation: p.incarnation, messages: p.messages })),
          delivers: delivers.map((d) => ({ sessions: d.sessions, messages: d.messages }))
        })
        return inboxes(inbox).Relay({ body }).pipe(
          Effect.timeout(RELAY_TIMEOUT),
          Effect.matchCauseEffect({
            onSuccess: (reply) =>
              Effect.sync(() => {
                const missing = JSON.parse(reply) as Array<ReadonlyArray<string>>
                delivers.forEach((d, i) => d.done(missing[i] ?? d.sessions))
              }),
            onFailure: (cause) =>
              Effect.sync(() => {
                routes.avoid(inbox)
                // Nothing queued after the failed relay may reach these connections before they
                // resubscribe, or a later message would land ahead of the missing ones.
                const cut = new Set(pushes.flatMap((p) => p.connections))
                lane.pending = lane.pending.flatMap((e): Array<PushEntry | DeliverEntry> => {
                  if (e._tag === "deliver") return [e]
                  const rest = e.connections.filter((c) => !cut.has(c))
                  return rest.length === 0 ? [] : [{ ...e, connections: rest }]
                })
                for (const p of pushes) p.failed()
                for (const d of delivers) d.done(d.sessions)
              }).pipe(
                Effect.andThen(
                  Effect.logWarning("relay to a node failed; its connections replay, its deliveries go again", cause)
                    .pipe(Effect.annotateLogs({ inbox }))
                )
              )
          })
        )
      })

      const sends = lanes<SendEntry>((inbox, batch) =>
        inboxes(inbox).SendMany({ body: JSON.stringify(batch.map((e) => e.item)) }).pipe(
          Effect.timeout(RELAY_TIMEOUT),
          Effect.matchCauseEffect({
            onSuccess: (reply) =>
              Effect.sync(() => {
                const outcomes = decodeOutcomes(reply)
                batch.forEach((e, i) => e.done(outcomes[i]))
              }),
            onFailure: (cause) =>
              Effect.sync(() => {
                routes.avoid(inbox)
                for (const e of batch) e.done(undefined)
              }).pipe(
                Effect.andThen(
                  Effect.logWarning("send relay to a node failed; its sends go again as entity messages", cause).pipe(
                    Effect.annotateLogs({ inbox })
                  )
                )
              )
          })
        )
      )

      return NodeOutbox.of({
        push: (inbox, connections, incarnation, messages, failed) =>
          relay(inbox, { _tag: "push", connections, incarnation, messages, failed }),
        deliver: (inbox, sessions, messages) =>
          Effect.callback<ReadonlyArray<string>>((resume) => {
            relay(inbox, { _tag: "deliver", sessions, messages, done: (missing) => resume(Effect.succeed(missing)) })
          }),
        send: (inbox, item) =>
          Effect.callback<SendOutcome | undefined>((resume) => {
            sends(inbox, { item, done: (outcome) => resume(Effect.succeed(outcome)) })
          })
      })
    })
  )
}
