/**
 * The sending side of the node-to-node link (NodeInbox). Per target node at most one relay is in
 * flight: whatever queued while it was on its way goes out together in the next one, so under load
 * one cluster message carries many entity messages' worth, in order. Measured: a relay costs about
 * 0.6 ms of CPU (both ends, Effect cluster's request path) whatever it carries, so pushes,
 * deliveries and sends share one.
 *
 * Nothing relayed can be lost silently: a relay that fails or times out (the node died, froze or
 * stopped) ends the subscriptions of the connections it was for (they subscribe again and replay
 * from their last MsgId), and hands its deliveries and sends back to their callers, which send
 * them again as ordinary entity messages; those wait for the shard's new home.
 */
import { Clock, Context, Effect, Fiber, Layer } from "effect"
import type { MsgData } from "../domain/Conversation.ts"
import {
  boundBytes,
  boundText,
  chunked,
  decodeOutcomes,
  NodeInbox,
  type SendItem,
  type SendOutcome
} from "./NodeInbox.ts"
import { ShardRoutes } from "./ShardRoutes.ts"

/** The most one relay carries (a bound, see boundBytes): half of what the runner transport accepts. */
const RELAY_BYTES = 8 * 1024 * 1024

/** A bound of the bytes a list of ids takes in a relay's JSON. */
const idsBytes = (ids: ReadonlyArray<string>) => {
  let bytes = 0
  for (const id of ids) bytes += boundText(id) + 3
  return bytes
}

/** How long one relay may take before its contents take the slow, sure way: 20 checks 250 ms apart. */
const RELAY_CHECKS = 20

/**
 * Fails after 5 s, or sooner (checked every 250 ms) once the node at `inbox` has left the cluster,
 * or once a process that started after this relay was sent reports from its address: a node killed
 * and started again on the same address within seconds never looks gone (its heartbeat goes on),
 * yet the process this relay went to is dead and will not answer it. (A relay sent while the
 * address had no process at all may still reach the new one through Effect cluster's retries: the
 * new process answers it with nothing served, as its `sentAt` is older than its own start, so its
 * sends are stored only once, as the entity messages sent instead.) `sentAt`: when the relay went
 * out, as its body says.
 */
export const relayWatchdog = (
  inbox: string,
  routes: Pick<ShardRoutes["Service"], "gone" | "startedAt">,
  sentAt: number
) =>
  Effect.gen(function* () {
    let checks = 0
    const restarted = () => (routes.startedAt(inbox) ?? -Infinity) > sentAt
    return yield* Effect.sleep("250 millis").pipe(
      Effect.repeat({ until: () => routes.gone(inbox) || restarted() || ++checks >= RELAY_CHECKS }),
      Effect.andThen(Clock.currentTimeMillis),
      Effect.flatMap((now) => {
        const why = routes.gone(inbox) ? "it left the cluster" : restarted() ? "its process restarted" : "no answer"
        return Effect.fail(new Error(`no answer from node ${inbox} after ${now - sentAt} ms: ${why}`))
      })
    )
  })

interface PushEntry {
  readonly _tag: "push"
  readonly bytes: number
  readonly connections: ReadonlyArray<string>
  readonly incarnation: string
  readonly messages: ReadonlyArray<MsgData>
  readonly failed: () => void
}

interface DeliverEntry {
  readonly _tag: "deliver"
  readonly bytes: number
  readonly sessions: ReadonlyArray<string>
  readonly messages: ReadonlyArray<MsgData>
  /** The sessions not served there (all of them when the relay failed). */
  readonly done: (missing: ReadonlyArray<string>) => void
}

interface SendEntry {
  readonly _tag: "send"
  readonly bytes: number
  readonly item: SendItem
  /** undefined: the relay failed or the node does not hold the conversation; send the entity message. */
  readonly done: (outcome: SendOutcome | undefined) => void
}

type Entry = PushEntry | DeliverEntry | SendEntry

interface Lane {
  pending: Array<Entry>
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
   * Hands `messages` (at most ITEM_BYTES of them: see `chunked`) to the mailboxes of the sessions
   * listed per node inbox in `targets`, all relays at once; succeeds when every one has answered,
   * with the sessions not served (their mailbox is elsewhere or not active, or the node did not
   * answer).
   */
  readonly deliver: (
    targets: ReadonlyMap<string, ReadonlyArray<string>>,
    messages: ReadonlyArray<MsgData>
  ) => Effect.Effect<ReadonlyArray<string>>
  /** A send for a conversation on the node `inbox`; undefined: send the entity message instead. */
  readonly send: (inbox: string, item: SendItem) => Effect.Effect<SendOutcome | undefined>
  /** Since start: relays sent, entity messages they carried, and those handed back to go as entity messages. */
  readonly stats: { readonly relays: number; readonly relayed: number; readonly handedBack: number }
}>()("quick-im/cluster/NodeOutbox") {
  static readonly layer = Layer.effect(
    NodeOutbox,
    Effect.gen(function* () {
      const inboxes = yield* NodeInbox.client
      const routes = yield* ShardRoutes
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const running = new Set<Fiber.Fiber<void>>()
      yield* Effect.addFinalizer(() => Fiber.interruptAll(running))

      /** Per target node, at most one relay in flight, carrying everything queued meanwhile. */
      const lanes = new Map<string, Lane>()
      const stats = { relays: 0, relayed: 0, handedBack: 0 }

      const flush = (inbox: string, batch: Array<Entry>, lane: Lane) => {
        const pushes: Array<PushEntry> = []
        const delivers: Array<DeliverEntry> = []
        const sends: Array<SendEntry> = []
        for (const e of batch) {
          if (e._tag === "push") pushes.push(e)
          else if (e._tag === "deliver") delivers.push(e)
          else sends.push(e)
        }
        stats.relays++
        stats.relayed += batch.length
        // The receiver serves it only if its process was running by then (NodeInbox `processStartedAt`).
        const sentAt = Date.now()
        const body = JSON.stringify({
          sentAt,
          pushes: pushes.map((p) => ({ connections: p.connections, incarnation: p.incarnation, messages: p.messages })),
          delivers: delivers.map((d) => ({ sessions: d.sessions, messages: d.messages })),
          sends: sends.map((s) => s.item)
        })
        return inboxes(inbox).Relay({ body }).pipe(
          // A node that died or stopped is noticed by its runner's heartbeat (ShardRoutes) well before
          // the timeout; either way the relay's contents take the sure way.
          Effect.raceFirst(relayWatchdog(inbox, routes, sentAt)),
          Effect.matchCauseEffect({
            onSuccess: (reply) =>
              Effect.sync(() => {
                const answer = JSON.parse(reply) as { missing: Array<ReadonlyArray<string>>; outcomes: Array<unknown> }
                delivers.forEach((d, i) => {
                  const missing = answer.missing[i] ?? d.sessions
                  stats.handedBack += missing.length
                  d.done(missing)
                })
                const outcomes = decodeOutcomes(answer.outcomes)
                sends.forEach((s, i) => {
                  if (outcomes[i] === undefined || outcomes[i]._tag === "NotHere") stats.handedBack++
                  s.done(outcomes[i])
                })
              }),
            onFailure: (cause) =>
              Effect.sync(() => {
                routes.avoid(inbox)
                // Everything for that node goes the sure way, what was queued behind the failed relay
                // too: a second relay to a dead node would only wait as long again. Pushes end
                // their connections' subscriptions (they resubscribe and replay), so nothing later
                // can land ahead of what was lost.
                const rest = lane.pending
                lane.pending = []
                stats.handedBack += batch.length + rest.length
                for (const e of [...batch, ...rest]) {
                  if (e._tag === "push") e.failed()
                  else if (e._tag === "deliver") e.done(e.sessions)
                  else e.done(undefined)
                }
              }).pipe(
                Effect.andThen(
                  Effect.logWarning(
                    "relay to a node failed; its connections replay, its deliveries and sends go as entity messages",
                    cause
                  ).pipe(Effect.annotateLogs({ inbox }))
                )
              )
          })
        )
      }

      const drain = (inbox: string, lane: Lane) =>
        Effect.gen(function* () {
          // Whatever else this turn of the event loop queues (a commit wakes many conversations at
          // once) goes in the same relay.
          yield* Effect.yieldNow
          while (lane.pending.length > 0) {
            // As much as the budget allows, in order (always at least one entry).
            let take = 0
            let bytes = 0
            while (take < lane.pending.length && (take === 0 || bytes + lane.pending[take].bytes <= RELAY_BYTES)) {
              bytes += lane.pending[take].bytes
              take++
            }
            const batch = take === lane.pending.length ? lane.pending : lane.pending.slice(0, take)
            lane.pending = take === lane.pending.length ? [] : lane.pending.slice(take)
            yield* flush(inbox, batch, lane)
          }
          lane.draining = false
        })

      const enqueue = (inbox: string, entry: Entry) => {
        let lane = lanes.get(inbox)
        if (lane === undefined) {
          lane = { pending: [], draining: false }
          lanes.set(inbox, lane)
        }
        lane.pending.push(entry)
        if (lane.draining) return
        lane.draining = true
        const fiber = runFork(drain(inbox, lane))
        running.add(fiber)
        fiber.addObserver(() => running.delete(fiber))
      }

      return NodeOutbox.of({
        stats,
        push: (inbox, connections, incarnation, messages, failed) => {
          for (const chunk of chunked(messages)) {
            enqueue(inbox, {
              _tag: "push",
              bytes: boundBytes(chunk),
              connections,
              incarnation,
              messages: chunk,
              failed
            })
          }
        },
        deliver: (targets, messages) =>
          Effect.callback<ReadonlyArray<string>>((resume) => {
            // One callback for every target: no fiber per relay awaited.
            let waiting = targets.size
            let notServed: Array<string> = []
            for (const [inbox, sessions] of targets) {
              enqueue(inbox, {
                _tag: "deliver",
                bytes: boundBytes(messages) + idsBytes(sessions),
                sessions,
                messages,
                done: (missing) => {
                  if (missing.length > 0) notServed = notServed.concat(missing)
                  if (--waiting === 0) resume(Effect.succeed(notServed))
                }
              })
            }
          }),
        send: (inbox, item) =>
          Effect.callback<SendOutcome | undefined>((resume) => {
            enqueue(inbox, {
              _tag: "send",
              bytes: boundText(item.content) + boundText(item.session) + boundText(item.conversationId) + 256,
              item,
              done: (outcome) => resume(Effect.succeed(outcome))
            })
          })
      })
    })
  )
}
