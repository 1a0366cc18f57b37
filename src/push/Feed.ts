/**
 * One push connection's messages, the same for every transport: attach to the session's mailbox
 * first, then (with a cursor) replay what the client may have missed, then live messages.
 * Per-conversation order holds throughout, and no message is written twice: within a
 * conversation messages arrive in MsgId order, so the newest MsgId written per conversation
 * filters out anything a replay or a late live delivery repeats.
 *
 * On the node that holds the session's shard a connection registers with the session's mailbox
 * there (LocalMailboxes) and wakes no entity; elsewhere it subscribes to the session's Mailbox
 * entity with the streaming `Subscribe`.
 *
 * The connection outlives cluster changes: when its subscription ends (the mailbox moved
 * to another node, or its node died) it subscribes again wherever the mailbox now lives, and when
 * any runner leaves (RunnerWatch) it replays from its last MsgId, which covers messages a dead
 * node committed but never handed over. Clients see neither.
 *
 * `attach` hands messages to a plain function (the WebSocket gateway writes frames from it, with
 * no queue or fiber between the Conversation entity's commit and the socket); `open` offers them
 * as a Stream over a queue bounded in messages and bytes (SSE).
 *
 * Memory per connection stays bounded: live messages wait in the transport's buffer (bytes) or,
 * while a replay runs, in `held` (messages and bytes); a replay reads one page at a time and
 * writes it in slices, each once the transport has room again (`ready`), so a replay follows the
 * reader's pace instead of filling its buffer.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { randomUUID } from "node:crypto"
import { RunnerWatch } from "../cluster/RunnerWatch.ts"
import type { MsgData } from "../domain/Conversation.ts"
import type { EventKind, LiveEvent } from "../domain/Events.ts"
import { encode } from "../domain/MsgId.ts"
import { Replay } from "../storage/Replay.ts"
import { AppConfig } from "../Config.ts"
import { NodeIdentity } from "../cluster/NodeIdentity.ts"
import { Connections, type ConnectionSink } from "./Connections.ts"
import { LocalMailboxes } from "./LocalMailboxes.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import { Mailbox, SlowConsumer } from "./Protocol.ts"
import { recordReplay } from "../observability/Telemetry.ts"
import { eventJson, messageSize } from "./Frames.ts"
import { Seen } from "./Seen.ts"

/** Writes messages to a transport; false when its buffer is full (the connection is then cut as a slow consumer). */
export type Write = (messages: ReadonlyArray<MsgData>) => boolean

/** Completes once the transport's buffer is at most half full: a replay writes its next slice then. */
export type Ready = Effect.Effect<void>

/**
 * Live events a connection opted in to, and where they go: written at once, beside messages, never
 * held or replayed (live only; a full buffer drops them).
 */
export interface Live {
  readonly kinds: ReadonlyArray<EventKind>
  readonly write: (event: LiveEvent) => void
}

/** Default of `QUICKIM_CONNECTION_BUFFER_BYTES`. */
export const CONNECTION_BUFFER_BYTES = 1024 * 1024

/** How long a connection keeps trying to reach its mailbox while the cluster re-hosts it. */
const RESUBSCRIBE_FOR = Duration.seconds(30)

/** How a round ended: its subscription was lost, it must replay, the connection ended, or this node stops. */
type Outcome = "lost" | "resync" | "ended" | "stop"

export class Feed extends Context.Service<Feed, {
  /**
   * Feeds `write` until the scope closes or this node starts stopping (then it ends); fails with
   * SlowConsumer, or when the mailbox stays unreachable.
   * Replays wait for `ready` before each slice (without it, a slice that does not fit cuts the connection).
   */
  readonly attach: (
    session: string,
    platform: number,
    cursor: string | undefined,
    write: Write,
    ready?: Ready,
    live?: Live
  ) => Effect.Effect<void, unknown, Scope.Scope>
  /** Messages, and the live events of `kinds` (objects with an `Event` field), as one stream. */
  readonly open: (
    session: string,
    platform: number,
    cursor: string | undefined,
    kinds?: ReadonlyArray<EventKind>
  ) => Stream.Stream<MsgData | LiveEvent, unknown>
}>()("quick-im/push/Feed") {
  static readonly layerNoDeps = Layer.effect(
    Feed,
    Effect.gen(function* () {
      const mailboxes = yield* Mailbox.client
      const replay = yield* Replay
      const identity = yield* NodeIdentity
      const connections = yield* Connections
      const watch = yield* RunnerWatch
      const here = yield* LocalMailboxes
      const routes = yield* ShardRoutes
      const config = yield* AppConfig
      const buffer = config.connectionBuffer
      const maxBytes = config.connectionBufferBytes ?? CONNECTION_BUFFER_BYTES
      // A replay writes at most this many messages at once, so that a slice fits a half-empty buffer.
      const slice = Math.max(1, Math.floor(buffer / 2))
      // This node is stopping: every connection's feed ends (its client resumes on another node) and
      // none subscribes again (the mailboxes are moving away with the shards).
      yield* Effect.addFinalizer(() => Effect.sync(() => connections.stop()))
      // Across nodes a mailbox here may have no entity to stop when its shard leaves this node (a node
      // joined): its connections subscribe again, wherever it is now, as soon as the shard is gone.
      yield* Effect.acquireRelease(
        Effect.sync(() =>
          routes.onShardsLost((shards) => {
            for (const mailbox of here.all()) {
              if (shards.has(routes.shardOf(mailbox.session))) here.drop(mailbox.session)
            }
          })
        ),
        (off) => Effect.sync(off)
      )

      const attach = Effect.fnUntraced(function* (
        session: string,
        platform: number,
        cursor: string | undefined,
        write: Write,
        ready?: Ready,
        live?: Live
      ) {
        const connectionId = randomUUID()
        const ended = yield* Deferred.make<never, unknown>()
        /** Wakes a round on this node waiting for its end (one Deferred, no fiber per connection). */
        let wake: ((outcome: Outcome) => void) | undefined = undefined
        const end = (error: unknown) => {
          Deferred.doneUnsafe(ended, Exit.fail(error))
          wake?.("ended")
        }
        const slow = () => end(new SlowConsumer({ buffered: buffer }))
        // What was written (dedupe by MsgId), and the last message written at all (the resync cursor).
        const seen = new Seen()
        let last = cursor ?? encode({ millis: Date.now(), seq: 0, conversationType: 0, hash: 0 })
        const emit = (messages: ReadonlyArray<MsgData>) => {
          const out = seen.fresh(messages)
          if (out.length === 0) return true
          last = out[out.length - 1].MsgId
          return write(out)
        }
        /**
         * Each mailbox (a session's, on the node holding its shard: LocalMailboxes) has its own
         * incarnation, carried by its `Ready` and by every batch it pushes; its Mailbox entity's
         * activations there share it. When a mailbox's node dies, Effect cluster sends the open
         * Subscribe again to the mailbox's next host, under the same call: the stream goes on with a
         * new `Ready`, and the new mailbox knows nothing of what the dead one took and never pushed.
         * So only the incarnation this round subscribed to is written; anything else (a new host, or
         * a late push of an old one) ends the round, and the next one replays from the last message
         * written. Until a round knows its incarnation and has replayed, live batches wait in `held`
         * (bounded): written at once, a live message could overtake an older one of its conversation
         * that only the replay brings, and the older one would then be dropped as a repeat.
         */
        let current: string | undefined = undefined
        let held: Array<{ readonly incarnation: string; readonly messages: ReadonlyArray<MsgData> }> | undefined = []
        let heldCount = 0
        let heldBytes = 0
        let resync: () => void = () => {}
        const sink: ConnectionSink = {
          push: (messages, incarnation) => {
            if (held === undefined) {
              if (incarnation === current) return emit(messages)
              held = []
              heldCount = 0
              heldBytes = 0
              resync()
              return true
            }
            if (heldCount + messages.length > buffer || heldBytes > maxBytes) return false
            held.push({ incarnation, messages })
            heldCount += messages.length
            for (const m of messages) heldBytes += messageSize(m)
            return true
          },
          fail: end,
          event: (event) => live?.write(event)
        }
        /** Writes what was held for the current incarnation; another's means the mailbox moved again. */
        const release = () => {
          const rest = held ?? []
          held = undefined
          heldCount = 0
          heldBytes = 0
          let foreign = false
          for (const entry of rest) {
            if (entry.incarnation !== current) foreign = true
            else if (!emit(entry.messages)) return slow()
          }
          if (foreign) {
            held = []
            resync()
          }
        }
        const subscription = {
          connectionId,
          platform,
          nodeId: identity.nodeId,
          ...(identity.runner === undefined ? {} : { inbox: identity.runner }),
          ...(live === undefined || live.kinds.length === 0 ? {} : { events: live.kinds })
        }
        const events: ReadonlySet<string> = new Set(live?.kinds ?? [])
        const remove = connections.add(connectionId, sink)
        yield* Effect.addFinalizer(() => Effect.sync(remove))

        /** Replays from `from`, a page at a time, each written in slices as the transport has room. */
        const catchUp = Effect.fnUntraced(function* (from: string) {
          let at = yield* replay.start(session, from)
          let replayed = 0
          for (;;) {
            const page = yield* replay.page(session, at)
            for (let i = 0; i < page.messages.length; i += slice) {
              if (ready !== undefined) yield* ready
              const part = page.messages.length <= slice ? page.messages : page.messages.slice(i, i + slice)
              if (!emit(part)) return yield* new SlowConsumer({ buffered: buffer })
            }
            replayed += page.messages.length
            if (page.next === undefined) break
            at = page.next
          }
          yield* recordReplay(replayed)
        })

        /** One subscription: until it is lost, the mailbox moves, or a runner leaves. */
        const round = (from: string | undefined) =>
          Effect.scoped(Effect.gen(function* () {
            const outcome = yield* Deferred.make<Outcome>()
            current = undefined
            held ??= []
            resync = () => Deferred.doneUnsafe(outcome, Exit.succeed("resync"))
            // The first event says the connection is registered: from here on nothing committed is missed.
            // The mailbox may be between nodes (its node died or is handing over): keep trying a while.
            const remote = yield* Effect.gen(function* () {
              const events = yield* mailboxes(session).Subscribe(subscription, {
                asQueue: true
              })
              const ready = yield* Queue.take(events)
              if (ready._tag === "Ready") current = ready.incarnation
              return events
            }).pipe(
              Effect.retry({ schedule: Schedule.spaced("250 millis") }),
              Effect.timeoutOrElse({
                duration: RESUBSCRIBE_FOR,
                orElse: () => Effect.fail(new Error("mailbox unreachable"))
              })
            )
            const unwatch = watch.onRunnerLeft(() => Deferred.doneUnsafe(outcome, Exit.succeed("resync")))
            yield* Effect.addFinalizer(() => Effect.sync(unwatch))
            // A mailbox on another node without an inbox streams its messages; otherwise the stream
            // only says `Ready` (again, if the call moved to a new host) and ends with the subscription.
            let streamed = current!
            yield* Stream.fromQueue(remote).pipe(
              Stream.runForEachArray((events) =>
                Effect.sync(() => {
                  for (const event of events) {
                    if (event._tag === "Ready") {
                      streamed = event.incarnation
                      if (streamed !== current) {
                        held ??= []
                        resync()
                      }
                    } else if (event._tag === "Announced") sink.event(event.event)
                    else if (!sink.push([event.message], streamed)) return slow()
                  }
                })
              ),
              Effect.exit,
              Effect.flatMap((exit) => {
                const slowConsumer = Exit.isFailure(exit) && exit.cause.reasons.some((r) =>
                  r._tag === "Fail" && (r.error as { _tag?: string })?._tag === "SlowConsumer"
                )
                return slowConsumer ? Effect.sync(slow) : Deferred.succeed(outcome, "lost")
              }),
              Effect.forkScoped
            )
            // A connection cut off while the replay waits for room ends the replay too.
            if (from !== undefined) yield* Effect.raceFirst(catchUp(from), Deferred.await(ended))
            release()
            const result = yield* Deferred.await(outcome)
            // The next round replays from `last`: hold what still arrives on this subscription until then.
            held ??= []
            return result
          }))

        /**
         * One registration with the session's mailbox on this node, which holds the session's shard:
         * no entity message, and while idle nothing but one waiting fiber (this one). Until the
         * mailbox ends it (a gap, its shard leaving), a runner leaves, or the connection ends.
         */
        const localRound = (from: string | undefined) =>
          Effect.suspend(() => {
            const mailbox = here.open(session, buffer)
            current = mailbox.incarnation
            held ??= []
            const outcome = Deferred.makeUnsafe<Outcome>()
            wake = (o) => Deferred.doneUnsafe(outcome, Exit.succeed(o))
            resync = () => wake?.("resync")
            const disconnect = mailbox.connect(connectionId, { sink, events, end: resync })
            const unwatch = watch.onRunnerLeft(resync)
            const unstop = connections.onStop(() => wake?.("stop"))
            return Effect.gen(function* () {
              if (Deferred.isDoneUnsafe(ended)) return "ended" as const
              // A connection cut off while the replay waits for room ends the replay too.
              if (from !== undefined) yield* Effect.raceFirst(catchUp(from), Deferred.await(ended))
              release()
              return yield* Deferred.await(outcome)
            }).pipe(Effect.ensuring(Effect.sync(() => {
              disconnect()
              unwatch()
              unstop()
              wake = undefined
              // The next round replays from `last`: hold what still arrives until then.
              held ??= []
            })))
          })

        /** A subscription to the session's Mailbox entity on another node, until this node stops. */
        const remoteRound = (from: string | undefined) =>
          Effect.raceFirst(
            Effect.raceFirst(round(from), Deferred.await(ended)),
            Deferred.await(connections.stopping).pipe(Effect.as("stop" as const))
          )

        let from: string | undefined = cursor
        for (;;) {
          if (Deferred.isDoneUnsafe(connections.stopping)) return
          const outcome = yield* (routes.holds(session) ? localRound(from) : remoteRound(from))
          // Ending, not failing: the transport tells its client to come back (to any node) with its cursor.
          if (outcome === "stop") return
          if (outcome === "ended") return yield* Deferred.await(ended)
          if (outcome === "lost") yield* Effect.logDebug("push subscription lost; subscribing again")
          from = last
        }
      })

      return Feed.of({
        attach,
        open: (session, platform, cursor, kinds) =>
          Stream.unwrap(Effect.gen(function* () {
            // Bounded by the counts below (messages and JSON bytes waiting), checked before each batch.
            const queue = yield* Queue.unbounded<MsgData | LiveEvent, unknown | Cause.Done>()
            let count = 0
            let bytes = 0
            let room: Deferred.Deferred<void> | undefined = undefined
            const roomy = () => count <= slice && bytes <= maxBytes / 2
            const write: Write = (messages) => {
              if (count + messages.length > buffer || bytes > maxBytes) return false
              for (const m of messages) {
                bytes += messageSize(m)
                Queue.offerUnsafe(queue, m)
              }
              count += messages.length
              return true
            }
            const ready: Ready = Effect.suspend(() => {
              if (roomy()) return Effect.void
              room ??= Deferred.makeUnsafe<void>()
              return Deferred.await(room)
            })
            // An event counts as one message and its JSON bytes as a message's would; dropped when full.
            const live: Live | undefined = kinds === undefined || kinds.length === 0 ? undefined : {
              kinds,
              write: (event) => {
                const size = eventJson(event).length
                if (count + 1 > buffer || bytes > maxBytes) return
                bytes += size
                count++
                Queue.offerUnsafe(queue, event)
              }
            }
            yield* attach(session, platform, cursor, write, ready, live).pipe(Queue.into(queue), Effect.forkScoped)
            return Stream.fromQueue(queue).pipe(Stream.mapArray((messages) => {
              count -= messages.length
              for (const m of messages) bytes -= "Event" in m ? eventJson(m).length : messageSize(m)
              if (room !== undefined && roomy()) {
                Deferred.doneUnsafe(room, Exit.void)
                room = undefined
              }
              return messages
            }))
          }))
      })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([
      Connections.layer,
      LocalMailboxes.layer,
      NodeIdentity.layer,
      Replay.layer,
      RunnerWatch.layer,
      ShardRoutes.layer
    ])
  )
}
