/**
 * The node-to-node link: a transport that knows no entity. Every node in multi-node mode hosts one
 * `NodeInbox` entity, keyed by its runner address and placed in a shard group only that node
 * serves, so a message to `NodeInbox(address)` always lands on that node: an addressable node built
 * from Effect cluster's own routing, not a side channel.
 *
 * What travels is registered by the modules that carry it (push: messages for connections and
 * mailboxes; conversation: sends), each under a kind, with a handler on the receiving side that
 * answers every item. Per target node at most one relay is in flight: whatever was posted while it
 * was on its way goes out together in the next one, so under load one cluster message carries many
 * entity messages' worth, in order. A cluster message costs about the same CPU whatever it carries
 * (bench/RESULTS.md), so this replaces one per entity message with one per node pair and round trip.
 *
 * Nothing relayed is lost silently: each item's poster learns its answer, or `undefined` when the
 * item was not served (the relay failed or timed out, or reached a process that started after it
 * was sent), and then takes the sure way itself (an entity message, or a replay).
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as ClusterSchema from "effect/cluster/ClusterSchema"
import * as Entity from "effect/cluster/Entity"
import * as Rpc from "effect/rpc/Rpc"
import { Telemetry } from "../observability/Telemetry.ts"
import { NodeIdentity } from "./NodeIdentity.ts"
import { ShardRoutes } from "./ShardRoutes.ts"

/** The shard group only the node at runner `address` serves. */
export const inboxGroup = (address: string) => `node:${address}`

/** A bound of the bytes `text` takes as a JSON string's contents: JSON escapes a control character in six bytes. */
export const boundText = (text: string) => 6 * text.length

/**
 * The most one relay carries (a bound the posters give per item): half of what the runner
 * transport accepts. Effect cluster's runner transport refuses a frame over 16 MB, and the
 * connection it came on with it.
 */
const RELAY_BYTES = 8 * 1024 * 1024

/** What one relay carries: per kind, in the order first posted, the items in posting order. */
export interface RelayBody {
  /** When the sender sent it (epoch ms, the sender's clock, as `relayWatchdog` compares it). */
  readonly sentAt: number
  readonly items: ReadonlyArray<readonly [kind: string, items: ReadonlyArray<unknown>]>
}

/** Per kind of the body, the answers of its items, in order; a kind missing: none of its items was served. */
export type RelayAnswer = Record<string, ReadonlyArray<unknown>>

/**
 * The bodies are JSON text, written and read with the runtime's own JSON: both ends are this code,
 * and a schema-driven codec over every message of a batch cost more CPU than the rest of the relay
 * (measured: Schema and binary codec work was the largest share of a relayed delivery).
 */
export const Relay = Rpc.make("Relay", {
  /** A `RelayBody`. */
  payload: { body: Schema.String },
  /** A `RelayAnswer`. */
  success: Schema.String
})

export const NodeInbox = Entity.make("NodeInbox", [Relay]).annotate(ClusterSchema.ShardGroup, inboxGroup)

/** Serves the items of one kind from one relay, in order: an answer per item (JSON values). */
export type Serve = (items: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<unknown>>

/** How long one relay may take before its contents take the slow, sure way: 20 checks 250 ms apart. */
const RELAY_CHECKS = 20

/**
 * Fails after 5 s, or sooner (checked every 250 ms) once the node at `inbox` has left the cluster,
 * or once a process that started after this relay was sent reports from its address: a node killed
 * and started again on the same address within seconds never looks gone (its heartbeat goes on),
 * yet the process this relay went to is dead and will not answer it. (A relay sent while the
 * address had no process at all may still reach the new one through Effect cluster's retries: the
 * new process answers it with nothing served, as its `sentAt` is older than its own start, so what
 * it carried is done only once, the sure way its posters take instead.)
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

interface Entry {
  readonly kind: string
  readonly item: unknown
  readonly bytes: number
  readonly done: (answer: unknown | undefined) => void
}

interface Lane {
  pending: Array<Entry>
  draining: boolean
}

export class NodeLink extends Context.Service<NodeLink, {
  /** The receiving side of `kind`: registered once, before any node relays it (at layer build). */
  readonly register: (kind: string, serve: Serve) => void
  /**
   * Posts `item` (a JSON value of at most `bytes` bytes as JSON) of `kind` to the node at runner
   * address `node`; never blocks. `done` gets the item's answer, or undefined when it was not served.
   */
  readonly post: (node: string, kind: string, item: unknown, bytes: number, done: (answer: unknown) => void) => void
  /** Serves one relay's body (the NodeInbox entity's handler): the answer to send back. */
  readonly serve: (body: string) => Effect.Effect<string>
}>()("quick-im/cluster/NodeLink") {
  static readonly layerNoDeps = Layer.effect(
    NodeLink,
    Effect.gen(function* () {
      const inboxes = yield* NodeInbox.client
      const routes = yield* ShardRoutes
      const identity = yield* NodeIdentity
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const running = new Set<Fiber.Fiber<void>>()
      yield* Effect.addFinalizer(() => Fiber.interruptAll(running))
      const handlers = new Map<string, Serve>()

      /** Per target node, at most one relay in flight, carrying everything posted meanwhile. */
      const lanes = new Map<string, Lane>()
      const stats = (yield* Telemetry).relays

      const flush = (inbox: string, batch: Array<Entry>, lane: Lane) => {
        const byKind = new Map<string, Array<Entry>>()
        for (const e of batch) {
          const entries = byKind.get(e.kind)
          if (entries === undefined) byKind.set(e.kind, [e])
          else entries.push(e)
        }
        stats.sent++
        stats.carried += batch.length
        // The receiver serves it only if its process was running by then (`serve`).
        const sentAt = Date.now()
        const body = JSON.stringify(
          {
            sentAt,
            items: [...byKind].map(([kind, entries]) => [kind, entries.map((e) => e.item)] as const)
          } satisfies RelayBody
        )
        return inboxes(inbox).Relay({ body }).pipe(
          // A node that died or stopped is noticed by its runner's heartbeat (ShardRoutes) well before
          // the timeout; either way the relay's contents take the sure way.
          Effect.raceFirst(relayWatchdog(inbox, routes, sentAt)),
          Effect.matchCauseEffect({
            onSuccess: (reply) =>
              Effect.sync(() => {
                const answer = JSON.parse(reply) as RelayAnswer
                for (const [kind, entries] of byKind) {
                  const answers = answer[kind]
                  if (answers === undefined) stats.handedBack += entries.length
                  entries.forEach((e, i) => e.done(answers?.[i]))
                }
              }),
            onFailure: (cause) =>
              Effect.sync(() => {
                routes.avoid(inbox)
                // Everything for that node goes the sure way, what was posted behind the failed relay
                // too: a second relay to a dead node would only wait as long again. Its posters end
                // their connections' subscriptions (they resubscribe and replay), so nothing later
                // can land ahead of what was lost.
                const rest = lane.pending
                lane.pending = []
                stats.handedBack += batch.length + rest.length
                for (const e of batch) e.done(undefined)
                for (const e of rest) e.done(undefined)
              }).pipe(
                Effect.andThen(
                  Effect.logWarning("relay to a node failed; what it carried goes the sure way", cause).pipe(
                    Effect.annotateLogs({ inbox })
                  )
                )
              )
          })
        )
      }

      const drain = (inbox: string, lane: Lane) =>
        Effect.gen(function* () {
          // Whatever else this turn of the event loop posts (a commit wakes many conversations at
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

      const post = (inbox: string, kind: string, item: unknown, bytes: number, done: (answer: unknown) => void) => {
        let lane = lanes.get(inbox)
        if (lane === undefined) {
          lane = { pending: [], draining: false }
          lanes.set(inbox, lane)
        }
        lane.pending.push({ kind, item, bytes, done })
        if (lane.draining) return
        lane.draining = true
        const fiber = runFork(drain(inbox, lane))
        running.add(fiber)
        fiber.addObserver(() => running.delete(fiber))
      }

      /**
       * Each kind's items are handed to its handler in order; the kinds are served side by side (a
       * send waits for its commit; messages for connections and mailboxes are handed over at once).
       * A relay sent before this process started was meant for a process that died on this address,
       * and its sender gives it up as soon as it reads this process's start (`relayWatchdog`): it is
       * answered with nothing served, whatever Effect cluster's retries brought it, or its sends
       * would be stored here and again as the entity messages their posters send instead.
       */
      const serve = (body: string) =>
        Effect.suspend(() => {
          const { sentAt, items } = JSON.parse(body) as RelayBody
          if (!(sentAt >= identity.startedAt)) return Effect.succeed("{}")
          const answer: Record<string, ReadonlyArray<unknown>> = {}
          return Effect.forEach(items, ([kind, entries]) => {
            const handler = handlers.get(kind)
            if (handler === undefined) return Effect.void
            return Effect.map(handler(entries), (answers) => {
              answer[kind] = answers
            })
          }, { concurrency: "unbounded", discard: true }).pipe(Effect.map(() => JSON.stringify(answer)))
        })

      return NodeLink.of({
        register: (kind, handler) => {
          handlers.set(kind, handler)
        },
        post,
        serve
      })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(Layer.provide([ShardRoutes.layer, NodeIdentity.layer, Telemetry.layer]))
}

/** Multi-node mode: this node's NodeInbox, through which other nodes reach it. */
export const NodeInboxLive = NodeInbox.toLayer(
  Effect.gen(function* () {
    const link = yield* NodeLink
    const active = (yield* Telemetry).active
    active.inboxes++
    yield* Effect.addFinalizer(() => Effect.sync(() => active.inboxes--))
    return NodeInbox.of({ Relay: ({ payload }) => link.serve(payload.body) })
  }),
  { concurrency: "unbounded" }
).pipe(Layer.provide([NodeLink.layer, Telemetry.layer]))
