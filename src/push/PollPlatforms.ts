/**
 * The long-poll platforms of one session, held by its Mailbox entity: a pending queue per platform
 * that outlives each request, so what arrives between polls comes with the next one; its position
 * is kept in SQL (PollPositions) across passivation and restarts. A platform holds at most one
 * replay page plus `QUICKIM_POLL_PENDING_BYTES` of live messages: a replay is read a page at a time
 * as the poller takes it, and a poller that falls further behind stops getting live messages queued
 * and reads them from SQL instead (see PollState). Replay and dedupe are the ones every transport
 * uses (Replay, Seen).
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import { kindOf, type LiveEvent } from "../domain/Events.ts"
import { decode, encode } from "../domain/MsgId.ts"
import { pollOverflows, replayMessages, replaysTotal } from "../observability/Telemetry.ts"
import { PollPositions } from "../storage/PollPositions.ts"
import { Replay, type ReplayPosition } from "../storage/Replay.ts"
import { messageSize } from "./Frames.ts"
import { Seen } from "./Seen.ts"

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
  /** What was handed out: repeats are skipped. */
  readonly seen: Seen
  /** The live event kinds the platform's latest poll opted in to, and the events waiting for a poll (live only). */
  eventKinds: ReadonlySet<string>
  events: Array<LiveEvent>
}

/** The most live events a poll platform keeps between polls; older ones are dropped first (live only). */
const POLL_EVENTS_MAX = 64

type Answer = MsgData | LiveEvent

const isEvent = (answer: Answer): answer is LiveEvent => "Event" in answer

/** A poll waiting for a message (null: end empty), the cursor it came with and the event kinds it opted in to. */
interface Waiter {
  readonly deferred: Deferred.Deferred<Answer | null>
  readonly cursor: string | undefined
  readonly kinds: ReadonlySet<string>
}

const replaying = (state: PollState) => state.replay !== undefined || state.startFrom !== undefined

/** Records `answer` as answered to the client (a message moves its position; an event does not). */
const handOut = (state: PollState, answer: Answer) => {
  if (isEvent(answer)) return answer
  state.seen.mark(answer)
  state.last = answer.MsgId
  return answer
}

/** The next message not yet handed out, repeats skipped (not yet recorded: see handOut). */
const takeNext = (state: PollState): MsgData | undefined => {
  for (;;) {
    const next = state.pending.shift()
    if (next !== undefined) state.pendingBytes -= messageSize(next)
    if (next === undefined || !state.seen.isRepeat(next)) return next
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

/** One session's poll platforms. */
export interface SessionPolls {
  /** Committed messages of one conversation, in order, for every platform. */
  readonly deliver: (messages: ReadonlyArray<MsgData>) => void
  /** Messages were dropped for this session: every platform replays from its last answer. */
  readonly resync: () => void
  /**
   * The next message for `platform` (null: none came within `waitMs`). `cursor`, the last message
   * its client has, restarts from there when it is not the last answer.
   */
  readonly poll: (
    platform: number,
    cursor: string | undefined,
    waitMs: number,
    events?: ReadonlyArray<string>
  ) => Effect.Effect<Answer | null>
  /** A live event, for the platforms whose latest poll opted in to its kind. */
  readonly event: (event: LiveEvent) => void
}

export class PollPlatforms extends Context.Service<PollPlatforms, {
  /** The poll platforms of `session` until the scope closes (its mailbox stops; positions are saved then). */
  readonly open: (session: string) => Effect.Effect<SessionPolls, never, Scope.Scope>
}>()("quick-im/push/PollPlatforms") {
  static readonly layerNoDeps = Layer.effect(
    PollPlatforms,
    Effect.gen(function* () {
      const replay = yield* Replay
      const positions = yield* PollPositions
      const pendingMax = (yield* AppConfig).pollPendingBytes ?? POLL_PENDING_BYTES

      const open = Effect.fnUntraced(function* (session: string) {
        const polls = new Map<number, PollState>()

        const savePositions = Effect.gen(function* () {
          for (const [platform, state] of polls) {
            if (!state.dirty || state.acked === undefined) continue
            state.dirty = false
            yield* positions.save(session, platform, state.acked)
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
              state.last = encode({
                millis: decode(state.pending[0].MsgId).millis,
                seq: 0,
                conversationType: 0,
                hash: 0
              })
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
            if (state.heldBytes > pendingMax) return detach(state)
            state.held.push(message)
            state.heldBytes += messageSize(message)
            return
          }
          if (state.pendingBytes > pendingMax) return detach(state)
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
                if (state.seen.isRepeat(m)) continue
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
            seen: new Seen(),
            eventKinds: previous?.eventKinds ?? new Set(),
            events: previous?.events ?? []
          }
          // Registered before reading SQL: whatever commits from now on reaches `held`.
          if (previous !== undefined) previous.retired = true
          polls.set(platform, state)
          let from = cursor ?? previous?.last
          if (from === undefined && previous === undefined) {
            state.fetching = true
            const known = yield* positions.open(session, platform, Date.now()).pipe(
              Effect.ensuring(Effect.sync(() => (state.fetching = false)))
            )
            // The platform's first poll: its position starts now (written at once, see PollPositions).
            if (!known.known) {
              state.last = known.position
              state.acked = known.position
            }
            from = known.known ? known.position : undefined
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

        const poll = Effect.fnUntraced(function* (
          platform: number,
          cursor: string | undefined,
          waitMs: number,
          events: ReadonlyArray<string> | undefined
        ) {
          const existing = polls.get(platform)
          // A cursor other than the last answer: that answer was lost on the way, or this mailbox
          // is new here (its node died) and knows nothing of the client: replay from the cursor.
          // The cursor of a client that got the last answer changes nothing.
          const state = existing === undefined || (cursor !== undefined && cursor !== existing.last)
            ? yield* openPoll(platform, cursor)
            : existing
          // A waiting poll with this cursor got no answer, and its client is polling again: that
          // request is gone, though its end may reach this mailbox only later (from another node,
          // under load, seconds later). It takes nothing more (it ends empty at its wait's end):
          // an answer to it would be lost, and the next poll's cursor, equal to the newest
          // answer, would not tell.
          for (let i = state.waiters.length - 1; i >= 0; i--) {
            if (state.waiters[i].cursor === cursor) state.waiters.splice(i, 1)
          }
          // Polling again: the previous answer arrived.
          if (state.acked !== state.last) {
            state.acked = state.last
            state.dirty = true
          }
          const kinds: ReadonlySet<string> = new Set(events ?? [])
          state.eventKinds = kinds
          if (kinds.size === 0) state.events = []
          let next: Answer | undefined = state.fetching ? undefined : takeNext(state)
          if (next === undefined && !state.fetching && replaying(state)) {
            yield* refill(state)
            next = takeNext(state)
          }
          if (next === undefined) {
            // The first waiting event this poll opted in to (another poll of the platform may have asked for others).
            const i = state.events.findIndex((e) => kinds.has(kindOf(e)))
            if (i >= 0) next = state.events.splice(i, 1)[0]
          }
          if (next !== undefined) return handOut(state, next)
          const waiter = yield* Deferred.make<Answer | null>()
          const forget = () => {
            const i = state.waiters.findIndex((w) => w.deferred === waiter)
            if (i >= 0) state.waiters.splice(i, 1)
          }
          state.waiters.push({ deferred: waiter, cursor, kinds })
          const got = yield* Deferred.await(waiter).pipe(
            Effect.timeoutOption(waitMs),
            // The poller went away (its HTTP request was aborted): forget its waiter, and if a
            // message reached it in the meantime, keep that message for the next poll.
            Effect.onInterrupt(() =>
              Effect.gen(function* () {
                forget()
                const reached = yield* Deferred.poll(waiter)
                const message = Option.isSome(reached) ? yield* reached.value : null
                if (message !== null && isEvent(message)) state.events.unshift(message)
                else if (message !== null) {
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
        })
        return {
          deliver: (messages) => {
            for (const state of polls.values()) {
              for (const message of messages) pushPoll(state, message)
            }
          },
          resync: () => {
            for (const state of polls.values()) replayFromLast(state)
          },
          poll: (platform, cursor, waitMs, events) => poll(platform, cursor, waitMs, events).pipe(Effect.orDie),
          event: (event) => {
            const kind = kindOf(event)
            for (const state of polls.values()) {
              if (state.retired) continue
              // A waiting poll that opted in to the kind takes it; else it waits for the next poll,
              // if the platform's latest poll opted in.
              const i = state.waiters.findIndex((w) => w.kinds.has(kind))
              if (i >= 0) {
                Deferred.doneUnsafe(state.waiters.splice(i, 1)[0].deferred, Effect.succeed(event))
                continue
              }
              if (!state.eventKinds.has(kind)) continue
              state.events.push(event)
              if (state.events.length > POLL_EVENTS_MAX) state.events.shift()
            }
          }
        } satisfies SessionPolls
      })

      return PollPlatforms.of({ open })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(Layer.provide([PollPositions.layer, Replay.layer]))
}
