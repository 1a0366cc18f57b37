/**
 * The Mailbox entity of one session: the registry of its live connections (every platform, on
 * any node) and the single place that orders its deliveries. Each connection has a bounded
 * buffer; overflow ends that subscription with `SlowConsumer` and never slows anyone else.
 * Long-poll platforms get a pending queue that outlives each request, so what arrives between
 * polls comes with the next one; its position is kept in SQL across passivation and restarts.
 * A poll platform holds at most one replay page plus `QUICKIM_POLL_PENDING_BYTES` of live
 * messages: a replay is read a page at a time as the poller takes it, and a poller that falls
 * further behind stops getting live messages queued and reads them from SQL instead (see PollState).
 */
import { Cause, Deferred, Effect, Layer, Metric, Option, Queue, Schedule, Stream } from "effect"
import { Entity } from "effect/cluster"
import { randomUUID } from "node:crypto"
import { Rpc } from "effect/rpc"
import { SqlClient } from "effect/sql"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { Replay, type ReplayPosition } from "../storage/Replay.ts"
import { decode, encode } from "../domain/MsgId.ts"
import { messageSize } from "./Frames.ts"
import { CONNECTION_BUFFER_BYTES } from "./Feed.ts"
import { Connections, type ConnectionSink } from "./Connections.ts"
import { LocalMailboxes } from "./LocalMailboxes.ts"
import { MailboxRelay } from "./MailboxRelay.ts"
import { NodeIdentity } from "../cluster/NodeIdentity.ts"
import { Mailbox, type PushEvent, SlowConsumer } from "./Protocol.ts"
import {
  entityActivations,
  pollOverflows,
  replayMessages,
  replaysTotal,
  Telemetry
} from "../observability/Telemetry.ts"

interface Connection {
  readonly platform: number
  /** Takes messages directly (this node) or into the Subscribe stream (another node, no inbox). */
  readonly sink: ConnectionSink | undefined
  /** Another node's runner address: messages go through MailboxRelay. */
  readonly inbox: string | undefined
  /** Ends the subscription: the connection subscribes again and replays. */
  readonly end: () => void
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
  fail: (error) => Queue.failCauseUnsafe(queue, Cause.fail(error))
})

/**
 * One poll platform. Three ways a message reaches `pending`: live, from the Mailbox, when no replay
 * runs; from a replay, a page at a time, read when `pending` is empty (`replay`, `startFrom`);
 * live while a replay runs, through `held`, which follows the replay's last page. When live
 * messages would pass the byte bound, they stop being queued (`detached`): what was queued is let
 * go and a replay from the last message answered brings it back, in order, from SQL. A replay
 * that ends detached starts another from the last answer, with live messages queued again: each
 * replay reads up to a snapshot taken when it starts (Replay), and whatever commits after that
 * reaches `held`, or, detached, the next replay, whose window reaches back before the snapshot.
 */
interface PollState {
  /** Messages to hand out, in order. */
  pending: Array<MsgData>
  pendingBytes: number
  /** Live messages that arrived while a replay runs: they follow it. */
  held: Array<MsgData>
  heldBytes: number
  /** The running replay's next page. */
  replay: ReplayPosition | undefined
  /** A replay to start when `pending` is empty: after this cursor, or (null) after the last answer. */
  startFrom: string | null | undefined
  /** Live messages are not queued: the poller fell behind; a replay brings them. */
  detached: boolean
  /** A page is being read. */
  fetching: boolean
  /** Messages the running replay brought so far (for the replay metric). */
  replayed: number
  /** Overflows not yet counted in the metric (counted at the next refill). */
  overflows: number
  /** Replaced by a poll with another cursor: a page still being read here goes to nobody. */
  retired: boolean
  readonly waiters: Array<Waiter>
  /** The last message answered. */
  last: string | undefined
  /**
   * The last message the poller surely has: a poll acknowledges the answer before it (one poller
   * per platform). This, not `last`, is what is kept in SQL, so an answer lost on the way (the
   * request cut off, or the mailbox moving to another node mid-answer) is replayed, not skipped.
   */
  acked: string | undefined
  dirty: boolean
  /** Newest MsgId handed out per conversation: anything at or below it is a repeat and is skipped. */
  readonly marks: Map<string, string>
}

/** A poll waiting for a message (null: end empty), and the cursor it came with. */
interface Waiter {
  readonly deferred: Deferred.Deferred<MsgData | null>
  readonly cursor: string | undefined
}

const replaying = (state: PollState) => state.replay !== undefined || state.startFrom !== undefined

const isRepeat = (state: PollState, message: MsgData) => {
  const mark = state.marks.get(message.ConversationID)
  return mark !== undefined && message.MsgId <= mark
}

/** Records `message` as answered to the client. */
const handOut = (state: PollState, message: MsgData) => {
  state.marks.set(message.ConversationID, message.MsgId)
  state.last = message.MsgId
  return message
}

/** The next message not yet handed out, repeats skipped (not yet recorded: see handOut). */
const takeNext = (state: PollState): MsgData | undefined => {
  for (;;) {
    const next = state.pending.shift()
    if (next !== undefined) state.pendingBytes -= messageSize(next)
    if (next === undefined || !isRepeat(state, next)) return next
  }
}

/** Gives waiting pollers what is pending (each records it when it answers). */
const serveWaiters = (state: PollState) => {
  if (state.retired) return
  while (state.waiters.length > 0 && state.pending.length > 0) {
    const next = takeNext(state)
    if (next === undefined) return
    Deferred.doneUnsafe(state.waiters.shift()!.deferred, Effect.succeed(next))
  }
}

/** Default of `QUICKIM_POLL_PENDING_BYTES`. */
const POLL_PENDING_BYTES = 1024 * 1024

const entityLayer = (options: {
  readonly buffer: number
  readonly bufferBytes: number
  readonly pollPendingBytes: number
  readonly idle: import("effect").Duration.Duration
}) =>
  Mailbox.toLayer(
    Effect.gen(function* () {
      const session = (yield* Entity.CurrentAddress).entityId
      yield* Metric.update(entityActivations("Mailbox"), 1)
      // This activation: connections write only what the mailbox they subscribed to pushes (Feed).
      const incarnation = randomUUID()
      const replay = yield* Replay
      const identity = yield* NodeIdentity
      const localConnections = yield* Connections
      const active = yield* LocalMailboxes
      const relay = yield* MailboxRelay
      const telemetry = yield* Telemetry
      const sql = yield* SqlClient.SqlClient
      const connections = new Map<string, Connection>()
      const polls = new Map<number, PollState>()

      const savePositions = Effect.gen(function* () {
        for (const [platform, state] of polls) {
          if (!state.dirty || state.acked === undefined) continue
          state.dirty = false
          yield* sql`INSERT INTO poll_positions (session_id, platform, last_msg_id) VALUES (${session}, ${platform}, ${state.acked})
            ON CONFLICT (session_id, platform) DO UPDATE SET last_msg_id = EXCLUDED.last_msg_id, updated_at = now()`
        }
      }).pipe(Effect.catchCause((cause) => Effect.logWarning("could not save poll positions", cause)))
      yield* Effect.addFinalizer(() => savePositions)
      yield* savePositions.pipe(Effect.repeat(Schedule.spaced("5 seconds")), Effect.forkScoped)

      /** Stops queueing live messages: a replay from the last answer brings them, and what was queued. */
      const detach = (state: PollState) => {
        replayFromLast(state)
        state.overflows++
      }

      /** From here on the platform reads from SQL, from its last answer on (see detach). */
      const replayFromLast = (state: PollState) => {
        state.detached = true
        state.held = []
        state.heldBytes = 0
        if (!replaying(state)) {
          // Nothing answered yet: the replay starts just before the first message let go.
          if (state.last === undefined && state.pending.length > 0) {
            state.last = encode({ millis: decode(state.pending[0].MsgId).millis, seq: 0, conversationType: 0, hash: 0 })
          }
          state.pending = []
          state.pendingBytes = 0
          state.startFrom = null
        }
        // Only a poll reads the replay: one waiting now ends empty, so that its client's next poll
        // reads it rather than after the wait (QUICKIM_POLL_WAIT, 30 s).
        for (const waiter of state.waiters.splice(0)) Deferred.doneUnsafe(waiter.deferred, Effect.succeed(null))
      }

      const pushPoll = (state: PollState, message: MsgData) => {
        if (state.detached) return
        if (replaying(state)) {
          if (state.heldBytes > options.pollPendingBytes) return detach(state)
          state.held.push(message)
          state.heldBytes += messageSize(message)
          return
        }
        if (state.pendingBytes > options.pollPendingBytes) return detach(state)
        state.pending.push(message)
        state.pendingBytes += messageSize(message)
        if (!state.fetching) serveWaiters(state)
      }

      /**
       * Reads replay pages while `pending` is empty and a replay has more; when the replay ends,
       * what was held follows it, or (detached) another replay starts from the last answer.
       */
      const refill = (state: PollState) =>
        Effect.gen(function* () {
          if (state.overflows > 0) {
            yield* Metric.update(pollOverflows, state.overflows)
            state.overflows = 0
          }
          if (state.fetching) return
          state.fetching = true
          while (state.pending.length === 0 && replaying(state)) {
            if (state.replay === undefined) {
              const from = state.startFrom ?? state.last
              // From here on live messages are queued again (in `held`), before the snapshot is read.
              state.detached = false
              if (from === undefined) {
                state.startFrom = undefined
                state.pending = state.held
                state.pendingBytes = state.heldBytes
                state.held = []
                state.heldBytes = 0
                break
              }
              state.replayed = 0
              yield* Metric.update(replaysTotal, 1)
              state.replay = yield* replay.start(session, from)
              state.startFrom = undefined
            }
            const page = yield* replay.page(session, state.replay)
            state.replay = page.next
            // Repeats stay repeats (marks only grow): leaving them out now keeps a page that has only
            // repeats from looking like something to hand out.
            for (const m of page.messages) {
              if (isRepeat(state, m)) continue
              state.pending.push(m)
              state.pendingBytes += messageSize(m)
            }
            state.replayed += page.messages.length
            if (page.next !== undefined) continue
            yield* Metric.update(replayMessages, state.replayed)
            if (state.detached) {
              state.startFrom = null
            } else {
              for (const m of state.held) state.pending.push(m)
              state.pendingBytes += state.heldBytes
              state.held = []
              state.heldBytes = 0
            }
          }
        }).pipe(Effect.ensuring(Effect.sync(() => {
          state.fetching = false
          serveWaiters(state)
        })))

      const openPoll = Effect.fnUntraced(function* (platform: number, cursor: string | undefined) {
        const previous = polls.get(platform)
        const state: PollState = {
          pending: [],
          pendingBytes: 0,
          held: [],
          heldBytes: 0,
          replay: undefined,
          startFrom: undefined,
          detached: false,
          fetching: false,
          replayed: 0,
          overflows: 0,
          retired: false,
          waiters: previous?.waiters ?? [],
          last: undefined,
          acked: undefined,
          dirty: false,
          marks: new Map()
        }
        // Registered before reading SQL: whatever commits from now on reaches `held`.
        if (previous !== undefined) previous.retired = true
        polls.set(platform, state)
        let from = cursor ?? previous?.last
        if (from === undefined && previous === undefined) {
          state.fetching = true
          const known = yield* Effect.gen(function* () {
            const [row] = yield* sql<{ last_msg_id: string }>`
              SELECT last_msg_id FROM poll_positions WHERE session_id = ${session} AND platform = ${platform}`
            if (row !== undefined) return row.last_msg_id
            // The platform's first poll: its position starts now, and is kept in SQL at once, not at
            // the next save. Should this node die before the client has received anything, the
            // mailbox's next host replays from here for a client that has no cursor to give, instead
            // of dropping what reached it before that client's next poll.
            const start = encode({ millis: Date.now(), seq: 0, conversationType: 0, hash: 0 })
            yield* sql`INSERT INTO poll_positions (session_id, platform, last_msg_id)
              VALUES (${session}, ${platform}, ${start}) ON CONFLICT (session_id, platform) DO NOTHING`
            state.last = start
            state.acked = start
            return undefined
          }).pipe(Effect.ensuring(Effect.sync(() => (state.fetching = false))))
          from = known
        }
        if (from !== undefined) {
          state.last = from
          state.acked = from
          // What arrived while the position was read is in `pending`: the replay covers it.
          state.held = state.pending
          state.heldBytes = state.pendingBytes
          state.pending = []
          state.pendingBytes = 0
          state.startFrom = from
        }
        return state
      })

      /** The push to `inbox` failed: its connections subscribe again and replay what they missed. */
      const cutOff = (inbox: string, ids: ReadonlyArray<string>) => () => {
        for (const id of ids) {
          const connection = connections.get(id)
          if (connection?.inbox !== inbox) continue
          connections.delete(id)
          connection.end()
        }
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
        for (const state of polls.values()) replayFromLast(state)
      }

      const deliver = (messages: ReadonlyArray<MsgData>, gap?: boolean) => {
        if (gap === true) resync()
        let remote: Map<string, Array<string>> | undefined = undefined
        for (const [id, connection] of connections) {
          if (connection.inbox !== undefined) {
            remote ??= new Map()
            const ids = remote.get(connection.inbox)
            if (ids === undefined) remote.set(connection.inbox, [id])
            else ids.push(id)
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
        for (const state of polls.values()) {
          for (const message of messages) pushPoll(state, message)
        }
      }
      // Registered for direct calls from Conversation entities in this process, until passivation.
      const unregister = active.add(session, deliver)
      telemetry.active.mailboxes++
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          unregister()
          telemetry.active.mailboxes--
        })
      )

      return Mailbox.of({
        Deliver: ({ payload }) => Effect.sync(() => deliver(payload.messages, payload.gap)),
        Subscribe: ({ payload }) =>
          Rpc.fork(Stream.unwrap(Effect.gen(function* () {
            // One slot more than the buffer for the leading `Ready`.
            const queue = yield* Queue.bounded<PushEvent, SlowConsumer | Cause.Done>(options.buffer + 1)
            Queue.offerUnsafe(queue, { _tag: "Ready", incarnation })
            const local = payload.nodeId === identity.nodeId ? localConnections.get(payload.connectionId) : undefined
            const inbox = local === undefined ? payload.inbox : undefined
            const bytes = { queued: 0, max: options.bufferBytes }
            const sink = local ?? (inbox === undefined ? queueSink(queue, bytes) : undefined)
            const connection: Connection = {
              platform: payload.platform,
              sink,
              inbox,
              end: () => Queue.endUnsafe(queue)
            }
            connections.set(payload.connectionId, connection)
            if (local !== undefined) {
              // Same process: messages go straight to the connection's queue; this stream only
              // says `Ready` (from the queue) and lives as long as the connection or until the
              // mailbox ends it (`end`); its end unregisters it.
              return Stream.fromQueue(queue).pipe(
                Stream.ensuring(Effect.sync(() => {
                  // Only this subscription's registration: the connection may have subscribed again meanwhile.
                  if (connections.get(payload.connectionId) === connection) connections.delete(payload.connectionId)
                }))
              )
            }
            return Stream.fromQueue(queue).pipe(
              Stream.mapArray((events) => {
                for (const event of events) if (event._tag === "Pushed") bytes.queued -= messageSize(event.message)
                return events
              }),
              Stream.ensuring(Effect.sync(() => {
                if (connections.get(payload.connectionId) === connection) connections.delete(payload.connectionId)
              }))
            )
          }))),

        Poll: ({ payload }) =>
          Rpc.fork(
            Effect.gen(function* () {
              const existing = polls.get(payload.platform)
              // A cursor other than the last answer: that answer was lost on the way, or this mailbox
              // is new here (its node died) and knows nothing of the client: replay from the cursor.
              // The cursor of a client that got the last answer changes nothing.
              const state = existing === undefined || (payload.cursor !== undefined && payload.cursor !== existing.last)
                ? yield* openPoll(payload.platform, payload.cursor)
                : existing
              // A waiting poll with this cursor got no answer, and its client is polling again: that
              // request is gone, though its end may reach this mailbox only later (from another node,
              // under load, seconds later). It takes nothing more (it ends empty at its wait's end):
              // an answer to it would be lost, and the next poll's cursor, equal to the newest
              // answer, would not tell.
              for (let i = state.waiters.length - 1; i >= 0; i--) {
                if (state.waiters[i].cursor === payload.cursor) state.waiters.splice(i, 1)
              }
              // Polling again: the previous answer arrived.
              if (state.acked !== state.last) {
                state.acked = state.last
                state.dirty = true
              }
              let next = state.fetching ? undefined : takeNext(state)
              if (next === undefined && !state.fetching && replaying(state)) {
                yield* refill(state)
                next = takeNext(state)
              }
              if (next !== undefined) return handOut(state, next)
              const waiter = yield* Deferred.make<MsgData | null>()
              const forget = () => {
                const i = state.waiters.findIndex((w) => w.deferred === waiter)
                if (i >= 0) state.waiters.splice(i, 1)
              }
              state.waiters.push({ deferred: waiter, cursor: payload.cursor })
              const got = yield* Deferred.await(waiter).pipe(
                Effect.timeoutOption(payload.waitMs),
                // The poller went away (its HTTP request was aborted): forget its waiter, and if a
                // message reached it in the meantime, keep that message for the next poll.
                Effect.onInterrupt(() =>
                  Effect.gen(function* () {
                    forget()
                    const reached = yield* Deferred.poll(waiter)
                    const message = Option.isSome(reached) ? yield* reached.value : null
                    if (message !== null) {
                      state.pending.unshift(message)
                      state.pendingBytes += messageSize(message)
                      // A poll waiting meanwhile takes it now rather than with the next delivery.
                      if (!state.fetching) serveWaiters(state)
                    }
                  })
                )
              )
              if (Option.isNone(got)) {
                forget()
                // Raced with a delivery that completed the waiter just now: hand it over all the same.
                const done = yield* Deferred.poll(waiter)
                const late = Option.isNone(done) ? null : yield* done.value
                return late === null ? null : handOut(state, late)
              }
              return got.value === null ? null : handOut(state, got.value)
            }).pipe(Effect.orDie)
          )
      })
    }),
    { maxIdleTime: options.idle }
  )

/** Mailboxes passivate after `QUICKIM_MAILBOX_IDLE` without connections or polls. */
export const MailboxEntityLive = Layer.unwrap(
  Effect.map(AppConfig, (c) =>
    entityLayer({
      buffer: c.connectionBuffer,
      bufferBytes: c.connectionBufferBytes ?? CONNECTION_BUFFER_BYTES,
      pollPendingBytes: c.pollPendingBytes ?? POLL_PENDING_BYTES,
      idle: c.mailboxIdle
    }))
)
