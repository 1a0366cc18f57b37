/**
 * What a Conversation entity does beside sequencing messages: read positions (`MarkRead`), typing,
 * the conversation's own fields (`Update`, `Announce`), and the live events each of them and each
 * membership change tells the members (through Delivery, in order with the messages).
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Envelope from "effect/cluster/Envelope"
import { ConversationNotFound, NotMember } from "../domain/Conversation.ts"
import type { MemberChange } from "../domain/Events.ts"
import type { Handovers } from "../push/Delivery.ts"
import type { ConversationInfo, ConversationStore, Position } from "../storage/ConversationStore.ts"
import type { ReadState } from "./Protocol.ts"

/** At most one typing event per session and conversation in this time (ms). */
export const TYPING_EVERY = 2000

interface State {
  readonly members: ReadonlyMap<string, number>
  readonly reads: Map<string, Position>
  readonly lastSeq: number
  readonly lastMsgId: string | undefined
}

type Answer = { readonly success: ReadState | undefined } | { readonly failure: NotMember | ConversationNotFound }

export const make = (id: string, store: ConversationStore["Service"], handovers: Handovers) => {
  /** When each session's last typing event went out (this activation; at most one entry per member). */
  const typedAt = new Map<string, number>()

  const announceInfo = (members: ReadonlyMap<string, number>, info: Option.Option<ConversationInfo>): Answer => {
    if (info._tag === "None") return { failure: new ConversationNotFound({ conversationId: id }) }
    handovers.announce({
      Event: "conversation",
      ConversationId: id,
      IsArchive: info.value.isArchive,
      Name: info.value.name,
      Extra: info.value.extra
    }, members)
    return { success: undefined }
  }

  const handle = Effect.fnUntraced(function* (request: Envelope.Request<any>, state: State) {
    const payload = request.payload as any
    switch (request.tag) {
      case "MarkRead": {
        const session: string = payload.session
        if (!state.members.has(session)) {
          return { failure: new NotMember({ conversationId: id, session }) } satisfies Answer
        }
        const before = state.reads.get(session) ?? { seq: 0, msgId: null }
        // At or past the last message (the usual case, "read everything"): the position is known
        // here; an earlier id is resolved by the statement that moves it. Either way the write is
        // shared with other conversations' commits.
        const toLast = state.lastMsgId !== undefined && payload.msgId >= state.lastMsgId
        if (!toLast || state.lastSeq > before.seq) {
          const moved = yield* store.moveReads(id, [
            toLast
              ? { conversation_id: id, session_id: session, seq: state.lastSeq, msg_id: state.lastMsgId! }
              : { conversation_id: id, session_id: session, anchor: payload.msgId }
          ])
          for (const m of moved) state.reads.set(session, { seq: m.seq, msgId: m.msg_id })
        }
        // Written before it is told or answered: a failure leaves the position as it was (the
        // entity reloads its state).
        const now = state.reads.get(session) ?? before
        if (now.seq > before.seq) {
          handovers.announce(
            { Event: "read", ConversationId: id, Session: session, ReadMsgId: now.msgId, ReadSeq: now.seq },
            state.members
          )
        }
        return {
          success: { readMsgId: now.msgId, readSeq: now.seq, unread: Math.max(0, state.lastSeq - now.seq) }
        } satisfies Answer
      }
      case "Typing": {
        const session: string = payload.session
        if (!state.members.has(session)) {
          return { failure: new NotMember({ conversationId: id, session }) } satisfies Answer
        }
        const now = Date.now()
        const last = typedAt.get(session)
        if (last === undefined || now - last >= TYPING_EVERY) {
          typedAt.set(session, now)
          handovers.announce({ Event: "typing", ConversationId: id, Session: session }, state.members, {
            except: session
          })
        }
        return { success: undefined } satisfies Answer
      }
      case "Update":
        return announceInfo(state.members, yield* store.update(id, payload))
      case "Announce":
        return announceInfo(state.members, yield* store.info(id))
      default:
        return yield* Effect.die(new Error(`unknown request ${request.tag}`))
    }
  })

  return {
    handle,
    /** Tells the members (and each session concerned) that `sessions` joined, left or were kicked. */
    membersChanged: (members: ReadonlyMap<string, number>, sessions: ReadonlyArray<string>, change: MemberChange) => {
      for (const session of sessions) {
        if (change !== "joined") typedAt.delete(session)
        handovers.announce({ Event: "member", ConversationId: id, Session: session, Change: change }, members, {
          also: session
        })
      }
    }
  }
}
