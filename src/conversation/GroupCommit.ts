/**
 * One group commit: the sends a Conversation entity took from its mailbox together are checked,
 * numbered and written in one append, and each is answered from the outcome. A send repeating a
 * `client_msg_id` of its session gets the stored message back (`duplicate`), whether it was stored
 * long ago or earlier in the same batch.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"
import type * as Rpc from "effect/rpc/Rpc"
import type * as SqlError from "effect/sql/SqlError"
import { NotMember, UnstorableMessage } from "../domain/Conversation.ts"
import type { MsgIdClock } from "../domain/MsgId.ts"
import { formatSendTime } from "../domain/SendTime.ts"
import type { ConversationStore, MessageRow, Position } from "../storage/ConversationStore.ts"
import type { Send, SentMessage } from "./Protocol.ts"

export type SendPayload = Rpc.Payload<typeof Send>

/** What the commit needs of the conversation's state; `lastSeq` and `lastMsgId` advance with it. */
export interface Sequence {
  readonly members: ReadonlyMap<string, number>
  /** Read positions: a sender's moves to its message with the commit (the store writes it so). */
  readonly reads: Map<string, Position>
  lastSeq: number
  lastMsgId: string | undefined
}

export interface Committed {
  /** Per send, in order: the message (new or the duplicate's original), or the refusal. */
  readonly answers: ReadonlyArray<SentMessage | NotMember>
  /** The rows written, in MsgId order (empty: nothing new). */
  readonly rows: ReadonlyArray<MessageRow>
}

const dedupeKey = (session: string, clientMsgId: string) => `${session}\u0000${clientMsgId}`

/** Where a request carries its sender's span: an entity message, or a send taken by direct call. */
interface SpanHolder {
  readonly traceId?: string | undefined
  readonly spanId?: string | undefined
  readonly sampled?: boolean | undefined
}

/** The span a request came with (its sender's trace), if any. */
const spanOf = (request: SpanHolder) =>
  request.traceId !== undefined && request.spanId !== undefined
    ? Tracer.externalSpan({ traceId: request.traceId, spanId: request.spanId, sampled: request.sampled ?? true })
    : undefined

/** `commit` traced as a child of the first send's span (the others are linked), when tracing. */
export const traced = <A, E, R>(
  conversationId: string,
  requests: ReadonlyArray<SpanHolder>,
  commit: Effect.Effect<A, E, R>
) => {
  const parent = spanOf(requests[0])
  const links = requests.slice(1).flatMap((r) => {
    const span = spanOf(r)
    return span === undefined ? [] : [{ span, attributes: {} }]
  })
  return commit.pipe(
    Effect.withSpan("Conversation.commit", {
      ...(parent === undefined ? {} : { parent }),
      links,
      attributes: { conversationId, sends: requests.length }
    })
  )
}

/** The store refused the data of a batch's messages (it wrote nothing): see ConversationStore. */
export const isUnstorable = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((r) => Cause.isFailReason(r) && r.error instanceof UnstorableMessage)

/** Whether `sends` need the stored messages their client_msg_ids name before they are numbered. */
export const needsLookup = (state: Sequence, sends: ReadonlyArray<SendPayload>) => sends.some(looksUp(state))

/** A member's send with a client_msg_id: its session may have stored that message already. */
const looksUp = (state: Sequence) => (p: SendPayload) => p.clientMsgId !== undefined && state.members.has(p.session)

/**
 * Numbers and stores `sends` of conversation `id` at wall-clock time `now`. The state advances only
 * once the append committed; a failure leaves it as it was (the caller reloads it: the outcome of a
 * failed append is unknown).
 */
export const commitSends = (
  store: ConversationStore["Service"],
  id: string,
  state: Sequence,
  clock: MsgIdClock,
  sends: ReadonlyArray<SendPayload>,
  now: number,
  handedThrough?: string
): Effect.Effect<Committed, SqlError.SqlError | UnstorableMessage> =>
  Effect.suspend(() => {
    const withClientId = sends.filter(looksUp(state))
    if (withClientId.length === 0) {
      return stored(store, id, state, number(id, state, clock, sends, now, new Map()), handedThrough)
    }
    return Effect.flatMap(
      store.findByClientIds(id, withClientId.map((p) => ({ session: p.session, clientMsgId: p.clientMsgId! }))),
      (found) => {
        const known = new Map<string, SentMessage>()
        for (const f of found) {
          known.set(dedupeKey(f.session, f.clientMsgId), {
            msgId: f.msgId,
            seq: f.seq,
            sendTime: f.sendTime,
            duplicate: true
          })
        }
        return stored(store, id, state, number(id, state, clock, sends, now, known), handedThrough)
      }
    )
  })

/** `committed` written, and the state advanced past it (nothing to write: answered at once). */
const stored = (
  store: ConversationStore["Service"],
  id: string,
  state: Sequence,
  committed: Committed,
  handedThrough: string | undefined
) =>
  committed.rows.length === 0
    ? Effect.succeed(committed)
    : Effect.map(store.appendMessages(id, committed.rows, handedThrough), () => {
      advance(state, committed.rows)
      return committed
    })

/** The state past `rows`, once they committed. */
export const advance = (state: Sequence, rows: ReadonlyArray<MessageRow>) => {
  const last = rows[rows.length - 1]
  state.lastSeq = last.seq
  state.lastMsgId = last.msg_id
  for (const r of rows) state.reads.set(r.from_session, { seq: r.seq, msgId: r.msg_id })
}

/**
 * The answers and rows of `sends`, numbered after the state (which does not move: see `advance`),
 * with the stored messages their client_msg_ids already name (`known`).
 */
export const number = (
  id: string,
  state: Sequence,
  clock: MsgIdClock,
  sends: ReadonlyArray<SendPayload>,
  now: number,
  known: Map<string, SentMessage>
): Committed => {
  const sendTime = formatSendTime(now)
  const rows: Array<MessageRow> = []
  const answers: Array<SentMessage | NotMember> = []
  let seq = state.lastSeq
  for (const p of sends) {
    if (!state.members.has(p.session)) {
      answers.push(new NotMember({ conversationId: id, session: p.session }))
      continue
    }
    const key = p.clientMsgId === undefined ? undefined : dedupeKey(p.session, p.clientMsgId)
    const earlier = key === undefined ? undefined : known.get(key)
    if (earlier !== undefined) {
      answers.push({ ...earlier, duplicate: true })
      continue
    }
    seq++
    const sent: SentMessage = { msgId: clock.next(now), seq, sendTime, duplicate: false }
    if (key !== undefined) known.set(key, sent)
    rows.push({
      conversation_id: id,
      msg_id: sent.msgId,
      seq,
      from_session: p.session,
      send_time: sendTime,
      status: p.status,
      type: p.type,
      content: p.content,
      client_msg_id: p.clientMsgId ?? null
    })
    answers.push(sent)
  }
  return { answers, rows }
}
