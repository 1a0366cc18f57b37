/**
 * A Conversation entity's state: loaded from SQL when first needed, dropped after a failed write
 * and loaded again. Each load hands over again what a previous host, or a write of unknown outcome
 * here, may have left undelivered (Delivery `again`) before anything new is committed.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as SqlError from "effect/sql/SqlError"
import { decode, MsgIdClock } from "../domain/MsgId.ts"
import type { Handovers } from "../push/Delivery.ts"
import type { ConversationState, ConversationStore } from "../storage/ConversationStore.ts"
import { floorOf } from "../storage/Replay.ts"

export interface Loaded {
  readonly state: ConversationState & { lastSeq: number; lastMsgId: string | undefined }
  readonly clock: MsgIdClock
}

/** The most messages a conversation hands over again: when re-hosted, or after writes of unknown outcome. */
const REDELIVER_MAX = 1000

export interface StateHolder {
  /** The state; null: no such conversation. */
  readonly load: Effect.Effect<Loaded | null, SqlError.SqlError>
  /** The state when it is loaded (null: no such conversation); undefined when `load` has work to do. */
  readonly current: () => Loaded | null | undefined
  /** The state of a conversation just created here: the whole state, with nothing to hand over. */
  readonly created: (conversationType: number, sessions: ReadonlyArray<string>) => void
  /**
   * Drops the state; `outcomeUnknown`: a write failed that may have committed, so the next load
   * hands over everything after the last message known now, however old. Returns whether such a
   * load is owed (the caller schedules one).
   */
  readonly drop: (outcomeUnknown: boolean) => boolean
  /**
   * Whether the conversation's row may say that hand-overs are owed (redeliver_after): it did when
   * loaded, or this host committed since (each commit records how far hand-overs went).
   */
  readonly mayOwe: () => boolean
  /** This host committed: its row records how far hand-overs went then. */
  readonly committed: () => void
}

export const makeStateHolder = (
  id: string,
  store: ConversationStore["Service"],
  resumeWindow: Duration.Duration,
  handovers: Handovers
): StateHolder => {
  // undefined: not loaded yet (or dropped after a failed write); null: no such conversation.
  let loaded: Loaded | null | undefined = undefined
  /**
   * After a write whose outcome is unknown: the last MsgId known to be handed over ("": none).
   * The next load hands over everything after it, however old: that write may have committed.
   */
  let unknownAfter: string | undefined = undefined
  let owes = false

  // Loaded already is every send's case: answered without running the load's generator.
  const load = Effect.suspend(() => loaded !== undefined ? Effect.succeed(loaded) : loadFresh)

  const loadFresh = Effect.gen(function* () {
    const found = yield* store.load(id)
    const next = Option.isNone(found) ? null : {
      state: { ...found.value },
      clock: new MsgIdClock(id, found.value.conversationType, found.value.lastMsgId)
    }
    // Loaded only once the hand-over is queued: a failure here leaves the next load to do it.
    if (next !== null) {
      // After an unknown outcome here, or a previous host's stop with hand-overs outstanding,
      // from the earlier of the two positions.
      // And from before what a previous host dropped for some member within two resume windows: it
      // may have died before telling them, so they would take newer messages with no replay first.
      const dropped = next.state.gapFrom === undefined ? undefined : floorOf(next.state.gapFrom, Duration.millis(1))
      const marks = [unknownAfter, next.state.redeliverAfter, dropped].filter((m) => m !== undefined).sort()
      const from = yield* redeliverRecent(next.state, marks[0])
      if (from === undefined) handovers.handedFrom(next.state.lastMsgId ?? "")
    }
    loaded = next
    unknownAfter = undefined
    if (next?.state.redeliverAfter !== undefined) owes = true
    return next
  })

  /**
   * The previous host of this conversation may have died between a commit and its hand-over
   * to the members' mailboxes. So a conversation that had messages within the resume window
   * hands those over again before anything new, in order; connections drop what they already
   * have by MsgId (Feed, Mailbox), and nothing new can overtake what was missed. With `after`
   * (the last position known to be handed over: recorded by every commit, by a stopping host, or
   * known here after a write of unknown outcome), from there if earlier, however old.
   * Returns the position it hands over from, if it hands over anything (and then starts the
   * hand-overs' count from there: `handedFrom`).
   */
  const redeliverRecent = (state: Loaded["state"], after: string | undefined) =>
    Effect.gen(function* () {
      if (state.lastMsgId === undefined) return undefined
      const now = yield* Clock.currentTimeMillis
      const windowFloor = floorOf(state.lastMsgId, resumeWindow)
      const floor = after !== undefined && after < windowFloor ? after : windowFloor
      if (after === undefined && decode(state.lastMsgId).millis < now - Duration.toMillis(resumeWindow)) {
        return undefined
      }
      // The newest of the window: what a dead host may not have handed over is its newest
      // messages (a busy conversation may have more in the window than a hand-over should carry).
      const recent = yield* store.newestAfter(id, floor, REDELIVER_MAX)
      if (recent.length === 0) return undefined
      // What was owed (after the last position known to be handed over) and is older than the
      // resume window (a host killed between a commit and its hand-over, and this conversation
      // hosted again only now): a member may have moved its cursor more than the window past it
      // meanwhile (other conversations' messages), and its replay would not reach back to it.
      // Recorded as a gap, which replays read however old (Replay), before anyone is handed it.
      // The rest of the window was most likely handed over already: no gap for it.
      const owed = after === undefined ? -1 : recent.findIndex((m) => m.MsgId > after)
      if (owed >= 0 && decode(recent[owed].MsgId).millis < now - Duration.toMillis(resumeWindow)) {
        yield* store.markGap(id, recent[owed].MsgId, recent[recent.length - 1].MsgId)
      }
      // Old by nature, so each gets the budget from now; a member only what followed its join.
      // Handed over from the floor on, as far as the hand-overs go (they may finish right away).
      handovers.handedFrom(floor)
      yield* handovers.again(state.members, recent, state.lastSeq, now)
      return floor
    })

  return {
    load,
    current: () => loaded,
    created: (conversationType, sessions) => {
      const state = {
        conversationType,
        lastMsgId: undefined,
        lastSeq: 0,
        members: new Map(sessions.map((s) => [s, 0] as const)),
        reads: new Map(sessions.map((s) => [s, { seq: 0, msgId: null }] as const)),
        redeliverAfter: undefined
      }
      loaded = { state, clock: new MsgIdClock(id, conversationType, undefined) }
      handovers.handedFrom("")
    },
    drop: (outcomeUnknown) => {
      if (outcomeUnknown && loaded) unknownAfter ??= loaded.state.lastMsgId ?? ""
      loaded = undefined
      return unknownAfter !== undefined
    },
    mayOwe: () => owes,
    committed: () => {
      owes = true
    }
  }
}
