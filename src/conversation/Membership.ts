/**
 * Membership changes of one conversation, applied by its entity (the single writer): a session
 * joining by itself is refused when banned, or when public joins are invite-only; the backend adds
 * whomever it names and lifts their bans; a kick bans, a leave does not. Each change is written
 * before the in-memory member list follows it.
 */
import * as Effect from "effect/Effect"
import { JoinNeedsInvitation, RemovedFromConversation } from "../domain/Conversation.ts"
import type { ConversationStore, Position } from "../storage/ConversationStore.ts"

export interface Members {
  /** Session → the seq of the last message before it joined (it gets only what follows). */
  readonly members: Map<string, number>
  /** Session → its read position. */
  readonly reads: Map<string, Position>
  readonly lastSeq: number
  readonly lastMsgId: string | undefined
}

/**
 * Adds the sessions not yet members, their read position at the last message (history from before
 * the join never counts as unread); returns the refusal, if the join is refused, else those added.
 */
export const join = Effect.fnUntraced(function* (
  store: ConversationStore["Service"],
  id: string,
  state: Members,
  sessions: ReadonlyArray<string>,
  byBackend: boolean,
  publicJoin: "open" | "invite"
) {
  const added = sessions.filter((s) => !state.members.has(s))
  if (added.length === 0) return added
  if (!byBackend) {
    // Bans are read from SQL, not kept in memory: a join by a non-member is rare, and nothing can go
    // stale across passivation, restarts or a shard moving.
    const banned = yield* store.bannedAmong(id, added)
    if (banned.length > 0) return new RemovedFromConversation({ conversationId: id, session: banned[0] })
    if (publicJoin === "invite") return new JoinNeedsInvitation({ conversationId: id, session: added[0] })
  }
  const at = { seq: state.lastSeq, msgId: state.lastMsgId ?? null }
  yield* store.addMembers(id, added, at, byBackend)
  for (const s of added) {
    state.members.set(s, state.lastSeq)
    state.reads.set(s, at)
  }
  return added
})

const forget = (state: Members, session: string) => {
  state.members.delete(session)
  state.reads.delete(session)
}

/** Removes the sessions; returns those that were members. */
export const remove = Effect.fnUntraced(function* (
  store: ConversationStore["Service"],
  id: string,
  state: Members,
  sessions: ReadonlyArray<string>,
  byBackend: boolean
) {
  if (byBackend) {
    // A kick bans every named session, members or not: the backend's word is that they stay out
    // until it adds them again.
    const removed = sessions.filter((s) => state.members.has(s))
    yield* store.removeMembers(id, sessions, true)
    for (const s of sessions) forget(state, s)
    return removed
  }
  const removed = sessions.filter((s) => state.members.has(s))
  if (removed.length === 0) return removed
  yield* store.removeMembers(id, removed, false)
  for (const s of removed) forget(state, s)
  return removed
})
