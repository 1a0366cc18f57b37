/**
 * The Mailbox entity of one session: what its mailbox needs beyond the connections on its own node
 * (LocalMailboxes): the session's connections on other nodes (their `Subscribe` streams) and its
 * long-poll platforms, which keep their queue and position here between requests (PollPlatforms).
 * It joins the session's mailbox on this node, so deliveries still have a single order. Each
 * connection has a bounded buffer; overflow ends that subscription with `SlowConsumer` and never
 * slows anyone else.
 */
import * as Cause from "effect/Cause"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import * as Entity from "effect/cluster/Entity"
import * as Rpc from "effect/rpc/Rpc"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { type EventKind, kindOf, type LiveEvent } from "../domain/Events.ts"
import { messageSize } from "./Frames.ts"
import { CONNECTION_BUFFER_BYTES } from "./Feed.ts"
import { Connections, type ConnectionSink } from "./Connections.ts"
import { LocalMailboxes } from "./LocalMailboxes.ts"
import { MailboxRelay } from "./MailboxRelay.ts"
import { NodeIdentity } from "../cluster/NodeIdentity.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import { addTo, type Groups } from "./Groups.ts"
import { PollPlatforms } from "./PollPlatforms.ts"
import { Mailbox, type PushEvent, SlowConsumer } from "./Protocol.ts"
import { entityActivations, Telemetry } from "../observability/Telemetry.ts"

/** A connection on another node. */
interface Connection {
  readonly platform: number
  /** Takes messages into the Subscribe stream (no inbox). */
  readonly sink: ConnectionSink | undefined
  /** Another node's runner address: messages go through MailboxRelay. */
  readonly inbox: string | undefined
  /** Ends the subscription: the connection subscribes again and replays. */
  readonly end: () => void
  /** The live event kinds it opted in to. */
  readonly events: ReadonlySet<string>
}

/**
 * A connection on another node: its messages go into the Subscribe stream's queue, bounded in
 * messages (the queue) and in bytes (`bytes.queued`, taken off as the stream sends them on).
 */
const queueSink = (
  queue: Queue.Queue<PushEvent, SlowConsumer | Cause.Done>,
  bytes: { queued: number; readonly max: number }
): ConnectionSink => ({
  push: (messages) => {
    if (bytes.queued > bytes.max) return false
    for (const message of messages) {
      if (!Queue.offerUnsafe(queue, { _tag: "Pushed", message })) return false
      bytes.queued += messageSize(message)
    }
    return true
  },
  fail: (error) => Queue.failCauseUnsafe(queue, Cause.fail(error)),
  event: (event) => {
    if (bytes.queued <= bytes.max) Queue.offerUnsafe(queue, { _tag: "Announced", event })
  }
})

const entityLayer = (options: {
  readonly buffer: number
  readonly bufferBytes: number
  readonly idle: Duration.Duration
}) =>
  Mailbox.toLayer(
    Effect.gen(function* () {
      const session = (yield* Entity.CurrentAddress).entityId
      yield* Metric.update(entityActivations("Mailbox"), 1)
      const identity = yield* NodeIdentity
      const localConnections = yield* Connections
      const here = yield* LocalMailboxes
      const routes = yield* ShardRoutes
      const relay = yield* MailboxRelay
      const telemetry = yield* Telemetry
      /** Connections on other nodes, by id. */
      const connections = new Map<string, Connection>()
      const polls = yield* (yield* PollPlatforms).open(session)

      /** The push to `inbox` failed: its connections subscribe again and replay what they missed. */
      const cutOff = (inbox: string, ids: ReadonlyArray<string>) => () => {
        for (const id of ids) {
          const connection = connections.get(id)
          if (connection?.inbox !== inbox) continue
          connections.delete(id)
          connection.end()
        }
      }

      const deliver = (messages: ReadonlyArray<MsgData>, incarnation: string) => {
        let remote: Groups<string, string> = undefined
        for (const [id, connection] of connections) {
          if (connection.inbox !== undefined) {
            remote = addTo(remote, connection.inbox, id)
            continue
          }
          const sink = connection.sink!
          let taken = false
          try {
            taken = sink.push(messages, incarnation)
          } catch {
            // A transport that throws is treated like a full one: cut off, and the client resumes.
          }
          if (!taken) {
            connections.delete(id)
            sink.fail(new SlowConsumer({ buffered: options.buffer }))
          }
        }
        if (remote !== undefined) {
          for (const [inbox, ids] of remote) relay.push(inbox, ids, incarnation, messages, cutOff(inbox, ids))
        }
        polls.deliver(messages)
      }
      /** A live event to the connections that opted in to its kind (live only: a failure drops it). */
      const announce = (event: LiveEvent) => {
        const kind: EventKind = kindOf(event)
        let remote: Groups<string, string> = undefined
        for (const [id, connection] of connections) {
          if (!connection.events.has(kind)) continue
          if (connection.inbox !== undefined) {
            remote = addTo(remote, connection.inbox, id)
            continue
          }
          try {
            connection.sink!.event(event)
          } catch {
            // live only
          }
        }
        if (remote !== undefined) { for (const [inbox, ids] of remote) relay.pushEvent(inbox, ids, event) }
        polls.event(event)
      }
      /**
       * A conversation dropped messages for this session (they would have come too late, see
       * ConversationEntity): every subscription ends, and the connection subscribes again and
       * replays from its last message; each poll platform replays from its last answer.
       */
      const resync = () => {
        for (const [id, connection] of connections) {
          connections.delete(id)
          connection.end()
        }
        polls.resync()
      }
      // The session's mailbox here: its connections on this node are there already (they registered
      // without waking this entity); this entity adds its polls and its connections on other nodes.
      // Opened and joined in one step: a mailbox with nothing in it goes at its next delivery.
      const { incarnation, mailbox } = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const mailbox = here.open(session, options.buffer)
          const leave = mailbox.join({ deliver, event: announce, resync })
          telemetry.active.mailboxEntities++
          return { mailbox, leave, incarnation: mailbox.incarnation }
        }),
        ({ leave }) =>
          Effect.sync(() => {
            leave()
            telemetry.active.mailboxEntities--
            // The shard is leaving this node (a node joined, or this one stops): the connections here
            // subscribe again wherever the mailbox goes. Passivation while the shard stays keeps them.
            if (!routes.holds(session)) here.drop(session)
          })
      )

      return Mailbox.of({
        Deliver: ({ payload }) => Effect.sync(() => mailbox.deliver(payload.messages, payload.gap)),
        Announce: ({ payload }) => Effect.sync(() => mailbox.event(payload.event)),
        Subscribe: ({ payload }) =>
          Rpc.fork(Stream.unwrap(Effect.gen(function* () {
            // One slot more than the buffer for the leading `Ready`.
            const queue = yield* Queue.bounded<PushEvent, SlowConsumer | Cause.Done>(options.buffer + 1)
            Queue.offerUnsafe(queue, { _tag: "Ready", incarnation })
            const local = payload.nodeId === identity.nodeId ? localConnections.get(payload.connectionId) : undefined
            const end = () => Queue.endUnsafe(queue)
            if (local !== undefined) {
              // Same process (the connection found the shard elsewhere a moment ago): it joins the
              // mailbox's connections here; this stream only says `Ready` (from the queue) and lives
              // as long as the connection or until the mailbox ends it (`end`); its end unregisters it.
              const disconnect = mailbox.connect(payload.connectionId, {
                sink: local,
                events: new Set(payload.events ?? []),
                end
              })
              return Stream.fromQueue(queue).pipe(Stream.ensuring(Effect.sync(disconnect)))
            }
            const inbox = payload.inbox
            const bytes = { queued: 0, max: options.bufferBytes }
            const connection: Connection = {
              platform: payload.platform,
              sink: inbox === undefined ? queueSink(queue, bytes) : undefined,
              inbox,
              end,
              events: new Set(payload.events ?? [])
            }
            connections.set(payload.connectionId, connection)
            return Stream.fromQueue(queue).pipe(
              Stream.mapArray((events) => {
                for (const event of events) if (event._tag === "Pushed") bytes.queued -= messageSize(event.message)
                return events
              }),
              Stream.ensuring(Effect.sync(() => {
                // Only this subscription's registration: the connection may have subscribed again meanwhile.
                if (connections.get(payload.connectionId) === connection) connections.delete(payload.connectionId)
              }))
            )
          }))),

        Poll: ({ payload }) => Rpc.fork(polls.poll(payload.platform, payload.cursor, payload.waitMs, payload.events))
      })
    }),
    { maxIdleTime: options.idle }
  )

/** Mailbox entities passivate after `QUICKIM_MAILBOX_IDLE` without polls or connections on other nodes (connections here need none). */
export const MailboxEntityLive = Layer.unwrap(
  Effect.map(AppConfig, (c) =>
    entityLayer({
      buffer: c.connectionBuffer,
      bufferBytes: c.connectionBufferBytes ?? CONNECTION_BUFFER_BYTES,
      idle: c.mailboxIdle
    }))
).pipe(
  Layer.provide([
    Connections.layer,
    LocalMailboxes.layer,
    MailboxRelay.layer,
    NodeIdentity.layer,
    PollPlatforms.layer,
    ShardRoutes.layer,
    Telemetry.layer
  ])
)
