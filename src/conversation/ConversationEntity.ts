/**
 * The Conversation entity: the single writer of one conversation. It keeps membership,
 * the last MsgId and the sequence in memory (rebuilt from SQL on activation) and drains its
 * mailbox in batches, so sends that arrive together share one transaction (group commit).
 * A send is answered only after its transaction committed.
 */
import { Cause, Clock, Duration, Effect, Layer, Metric, Option, Queue, Schedule, Tracer } from "effect"
import { Entity, type Envelope } from "effect/cluster"
import { AppConfig } from "../Config.ts"
import {
  ConversationNotFound,
  ConversationTypeOutOfRange,
  DatabaseUnavailable,
  EmptyMembers,
  isConversationTypeInRange,
  JoinNeedsInvitation,
  type MsgData,
  NotMember,
  RemovedFromConversation,
  UnstorableMessage
} from "../domain/Conversation.ts"
import { decode, MsgIdClock } from "../domain/MsgId.ts"
import { floorOf } from "../storage/Replay.ts"
import { formatSendTime } from "../domain/SendTime.ts"
import { type ConversationState, ConversationStore, type MessageRow, toMsgData } from "../storage/ConversationStore.ts"
import { causeIsUnreachable } from "../storage/DatabaseHealth.ts"
import { chunked } from "../cluster/NodeInbox.ts"
import { NodeOutbox } from "../cluster/NodeOutbox.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import { LocalConnections } from "../push/LocalConnections.ts"
import { entityActivations } from "../observability/Telemetry.ts"
import { aboutMessages, debugEnabled } from "../observability/Logging.ts"
import { Mailbox } from "../push/Protocol.ts"
import { Conversation, type Send, type SentMessage } from "./Protocol.ts"

type Request = Envelope.Request<any>
type SendRequest = Envelope.Request<typeof Send>

interface Loaded {
  readonly state: ConversationState & { lastSeq: number; lastMsgId: string | undefined }
  readonly clock: MsgIdClock
}

interface Delivery {
  readonly members: ReadonlyArray<string>
  readonly messages: ReadonlyArray<MsgData>
  /** The commit's span, when tracing: the hand-over continues its trace. */
  readonly span?: Tracer.Span
}

/** How long a stopping conversation waits for its hand-overs before leaving them to its next host. */
const HANDOVER_WAIT = "1 second"
const DELIVER_ATTEMPT = "5 seconds"
const DELIVER_DEADLINE = "30 seconds"
/** The most messages a conversation hands over again: when re-hosted, or after writes of unknown outcome. */
const REDELIVER_MAX = 1000

/** SQLSTATE class 22, data exception: the statement's data was refused, so nothing was written. */
const isInvalidData = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((r) => {
    if (!Cause.isFailReason(r)) return false
    const e = r.error as { _tag?: unknown; reason?: { cause?: { code?: unknown } } }
    return e._tag === "SqlError" && String(e.reason?.cause?.code ?? "").startsWith("22")
  })

const dedupeKey = (session: string, clientMsgId: string) => `${session}\u0000${clientMsgId}`

const entityLayer = (maxIdleTime: Duration.Duration) =>
  Conversation.toLayerQueue(
    Effect.gen(function* () {
      const address = yield* Entity.CurrentAddress
      const id = address.entityId
      yield* Metric.update(entityActivations("Conversation"), 1)
      const store = yield* ConversationStore
      const config = yield* AppConfig
      const debug = debugEnabled(config.logLevel)
      const publicJoin = config.publicJoin ?? "open"
      const tracing = config.otlpEndpoint !== undefined
      const mailboxes = yield* Mailbox.client
      const here = yield* LocalConnections
      const routes = yield* ShardRoutes
      const outbox = yield* NodeOutbox

      // Push after commit, off the send path: one fiber per conversation hands each committed batch
      // to every member's mailbox (fire-and-forget), batch after batch, so each mailbox sees the
      // conversation's messages in commit order. A slow or absent member never delays the sender.
      const deliveries = yield* Queue.unbounded<Delivery>()
      let undelivered = 0 // batches queued or being handed over
      // A member's mailbox active in this process is called directly; mailboxes on another node
      // take the batch in that node's relay (NodeOutbox: one cluster message for many conversations),
      // and any the relay did not serve, or whose node is unknown, an entity message. Each is awaited
      // until handled, so nothing for a later batch can overtake it.
      const deliverOne = (messages: ReadonlyArray<MsgData>) => (member: string) =>
        mailboxes(member).Deliver({ messages }).pipe(
          // A mailbox whose node died or that is moving answers nobody until it is hosted
          // again: each attempt is bounded and retried until DELIVER_DEADLINE, so the member
          // still gets the batch (a repeat is dropped by MsgId) and later batches wait for it.
          Effect.timeout(DELIVER_ATTEMPT),
          Effect.retry({ schedule: Schedule.spaced("250 millis") }),
          Effect.timeout(DELIVER_DEADLINE),
          Effect.catchCause((cause) =>
            Effect.logWarning("push to mailbox failed; the member resumes by cursor", cause).pipe(
              Effect.annotateLogs({ ...aboutMessages(id, messages.map((m) => m.MsgId)), session: member })
            )
          )
        )
      const handOver = Effect.fnUntraced(function* ({ members, messages }: Delivery) {
        const entityMessage: Array<string> = []
        let byNode: Map<string, Array<string>> | undefined = undefined
        for (const member of members) {
          const direct = here.mailboxes.get(member)
          if (direct !== undefined) {
            if (tracing) {
              yield* Effect.sync(() => direct(messages)).pipe(
                Effect.withSpan("Mailbox.deliver", { attributes: { session: member } })
              )
            } else direct(messages)
            continue
          }
          const node = routes.nodeOf(member)
          if (node === undefined) {
            entityMessage.push(member)
            continue
          }
          byNode ??= new Map()
          const group = byNode.get(node)
          if (group === undefined) byNode.set(node, [member])
          else group.push(member)
        }
        // Relays first (they answer in one round trip), then entity messages for whatever they did
        // not serve and for mailboxes whose node is unknown. A large batch goes in parts, each whole
        // before the next, so no cluster message grows past what the runner transport accepts.
        const parts = byNode === undefined && entityMessage.length === 0 ? [] : chunked(messages)
        for (const part of parts) {
          const notServed = byNode === undefined ? [] : yield* outbox.deliver(byNode, part)
          const rest = notServed.length === 0 ? entityMessage : [...entityMessage, ...notServed]
          if (rest.length > 0) yield* Effect.forEach(rest, deliverOne(part), { concurrency: 64, discard: true })
        }
        undelivered--
      })
      yield* Queue.take(deliveries).pipe(
        Effect.flatMap((delivery) =>
          delivery.span === undefined ? handOver(delivery) : handOver(delivery).pipe(
            Effect.withSpan("Conversation.deliver", {
              parent: delivery.span,
              attributes: {
                ...aboutMessages(id, delivery.messages.map((m) => m.MsgId)),
                members: delivery.members.length
              }
            })
          )
        ),
        Effect.forever,
        Effect.forkScoped
      )
      // Passivation or a shard moving to another node (join, graceful stop): hand over what is
      // committed before the fiber stops, so connected members miss nothing. The wait is short:
      // a Mailbox on this node's shards moves with it and cannot take anything until this node has
      // stopped. What is still pending then goes to the next host as a persisted `Redeliver`,
      // which starts the conversation there, and it hands the resume window over again.
      const self = (yield* Conversation.client)(id)
      const multiNode = Option.isSome(config.runnerPort)
      yield* Effect.addFinalizer(() =>
        Effect.gen(function* () {
          yield* Effect.sleep("5 millis").pipe(
            Effect.repeat({ until: () => undelivered === 0 }),
            Effect.timeout(multiNode ? HANDOVER_WAIT : "3 seconds"),
            Effect.ignore
          )
          if (undelivered === 0 || !multiNode) return
          yield* self.Redeliver(undefined, { discard: true }).pipe(
            Effect.timeout("2 seconds"),
            Effect.catchCause((cause) =>
              Effect.logWarning("could not leave a redelivery for the next host", cause).pipe(
                Effect.annotateLogs({ conversationId: id })
              )
            )
          )
        })
      )

      return (mailbox, replier) => {
        // undefined: not loaded yet (or dropped after a failed write); null: no such conversation.
        let loaded: Loaded | null | undefined = undefined
        // The messages of writes whose outcome is unknown (the connection broke during the commit):
        // when the state is loaded again, those that did commit are handed over before anything
        // else. The resume-window hand-over below would miss them after an outage longer than the
        // window, and their senders, retrying, get them back as duplicates, which push nothing.
        let uncertain: Array<MessageRow> = []

        const load = Effect.gen(function* () {
          if (loaded !== undefined) return loaded
          const state = yield* store.load(id)
          const next = Option.match(state, {
            onNone: () => null,
            onSome: (s) => ({ state: { ...s }, clock: new MsgIdClock(id, s.conversationType, s.lastMsgId) })
          })
          if (next !== null && uncertain.length > 0) {
            const committed = yield* store.stored(id, uncertain.map((r) => r.msg_id))
            if (committed.length > 0) {
              undelivered++
              Queue.offerUnsafe(deliveries, { members: [...next.state.members.keys()], messages: committed })
            }
          }
          uncertain = []
          loaded = next
          if (loaded !== null) yield* redeliverRecent(loaded.state)
          return loaded
        })

        /**
         * The previous host of this conversation may have died between a commit and its hand-over
         * to the members' mailboxes. So a conversation that had messages within the resume window
         * hands those over again before anything new, in order; connections drop what they already
         * have by MsgId (Feed, Mailbox), and nothing new can overtake what was missed.
         */
        const redeliverRecent = (state: Loaded["state"]) =>
          Effect.gen(function* () {
            if (state.lastMsgId === undefined) return
            const now = yield* Clock.currentTimeMillis
            if (decode(state.lastMsgId).millis < now - Duration.toMillis(config.resumeWindow)) return
            // The newest of the window: what a dead host may not have handed over is its newest
            // messages (a busy conversation may have more in the window than a hand-over should carry).
            const recent = yield* store.newestAfter(id, floorOf(state.lastMsgId, config.resumeWindow), REDELIVER_MAX)
            if (recent.length === 0) return
            // Seqs are gapless in MsgId order: recent[i] has seq firstSeq + i. A member gets only
            // what was sent after it joined.
            const firstSeq = state.lastSeq - recent.length + 1
            const bySlice = new Map<number, Array<string>>()
            for (const [member, joinedSeq] of state.members) {
              const from = Math.max(0, joinedSeq - firstSeq + 1)
              if (from < recent.length) bySlice.set(from, [...(bySlice.get(from) ?? []), member])
            }
            for (const [from, members] of bySlice) {
              undelivered++
              Queue.offerUnsafe(deliveries, { members, messages: recent.slice(from) })
            }
          })

        const reply = (request: Request, value: unknown) => replier.succeed(request as any, value as any)
        const fail = (request: Request, error: unknown) => replier.fail(request as any, error as any)

        /**
         * A write whose outcome is unknown: reload state before the next one, and answer
         * DatabaseUnavailable (503 / 10006 at the edge: retry) when the database could not be reached
         * or the connection broke, a defect (10002) for anything else. The entity runs with fatal
         * defects off, so the answer is final: the cluster does not restart the entity and replay these
         * requests (which, for a request that can never succeed, went on forever and left the
         * conversation answering nobody).
         */
        const failAll = (requests: ReadonlyArray<Request>, cause: Cause.Cause<unknown>) =>
          Effect.gen(function* () {
            if (Cause.hasInterruptsOnly(cause)) return yield* Effect.failCause(cause as Cause.Cause<never>)
            loaded = undefined
            const unreachable = causeIsUnreachable(cause)
            yield* (unreachable
              ? Effect.logWarning("conversation write failed: database unreachable", cause)
              : Effect.logError("conversation write failed", cause)).pipe(Effect.annotateLogs({ conversationId: id }))
            const defect = Cause.die(Cause.squash(cause))
            for (const r of requests) {
              // Redeliver declares no errors: it is retried by its next host whatever happens here.
              if (unreachable && r.tag !== "Redeliver") yield* fail(r, new DatabaseUnavailable())
              else yield* replier.failCause(r as any, defect as any)
            }
          })

        /**
         * The database refused the sends' data (a NUL or unpaired surrogate that got past the edge):
         * nothing was written. Each send is tried again alone, on reloaded state, so only the
         * offending one fails, with its own error, once.
         */
        const refuseInvalid = (requests: ReadonlyArray<SendRequest>, cause: Cause.Cause<unknown>) =>
          Effect.gen(function* () {
            loaded = undefined
            if (requests.length > 1) {
              for (const r of requests) yield* commitSends([r])
              return
            }
            yield* Effect.logWarning("send refused: the database rejected its data", cause).pipe(
              Effect.annotateLogs({ conversationId: id })
            )
            yield* fail(requests[0], new UnstorableMessage({ conversationId: id }))
          })

        /** The span a request came with (its sender's trace), if any. */
        const spanOf = (request: Request) =>
          request.traceId !== undefined && request.spanId !== undefined
            ? Tracer.externalSpan({
              traceId: request.traceId,
              spanId: request.spanId,
              sampled: request.sampled ?? true
            })
            : undefined

        /** One group commit, traced as a child of the first send's span (the others are linked). */
        const handleSends = (requests: ReadonlyArray<SendRequest>) => {
          if (!tracing) return commitSends(requests)
          const parent = spanOf(requests[0])
          const links = requests.slice(1).flatMap((r) => {
            const span = spanOf(r)
            return span === undefined ? [] : [{ span, attributes: {} }]
          })
          return commitSends(requests).pipe(
            Effect.withSpan("Conversation.commit", {
              ...(parent === undefined ? {} : { parent }),
              links,
              attributes: { conversationId: id, sends: requests.length }
            })
          )
        }

        const commitSends = (requests: ReadonlyArray<SendRequest>): Effect.Effect<void> =>
          Effect.gen(function* () {
            const current = yield* load
            if (current === null) {
              for (const r of requests) yield* fail(r, new ConversationNotFound({ conversationId: id }))
              return
            }
            const { state, clock } = current
            const known = new Map<string, SentMessage>()
            const withClientId = requests.filter((r) =>
              r.payload.clientMsgId !== undefined && state.members.has(r.payload.session)
            )
            if (withClientId.length > 0) {
              const found = yield* store.findByClientIds(
                id,
                withClientId.map((r) => ({ session: r.payload.session, clientMsgId: r.payload.clientMsgId! }))
              )
              for (const f of found) {
                known.set(dedupeKey(f.session, f.clientMsgId), {
                  msgId: f.msgId,
                  seq: f.seq,
                  sendTime: f.sendTime,
                  duplicate: true
                })
              }
            }
            const now = yield* Clock.currentTimeMillis
            const sendTime = formatSendTime(now)
            const rows: Array<MessageRow> = []
            const accepted: Array<[SendRequest, SentMessage]> = []
            const answers: Array<[SendRequest, SentMessage | NotMember]> = []
            let seq = state.lastSeq
            for (const r of requests) {
              const p = r.payload
              if (!state.members.has(p.session)) {
                answers.push([r, new NotMember({ conversationId: id, session: p.session })])
                continue
              }
              const key = p.clientMsgId === undefined ? undefined : dedupeKey(p.session, p.clientMsgId)
              const earlier = key === undefined ? undefined : known.get(key)
              if (earlier !== undefined) {
                answers.push([r, { ...earlier, duplicate: true }])
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
              accepted.push([r, sent])
              answers.push([r, sent])
            }
            if (rows.length > 0) {
              yield* store.appendMessages(id, rows).pipe(
                Effect.tapCause((cause) =>
                  Effect.sync(() => {
                    // Bounded like the resume-window hand-over: the newest, should a flapping database
                    // leave many writes unknown before the state loads again.
                    if (causeIsUnreachable(cause)) uncertain = [...uncertain, ...rows].slice(-REDELIVER_MAX)
                  })
                )
              )
              const last = rows[rows.length - 1]
              state.lastSeq = last.seq
              state.lastMsgId = last.msg_id
              if (debug) {
                yield* Effect.logDebug("messages committed").pipe(
                  Effect.annotateLogs(aboutMessages(id, rows.map((r) => r.msg_id)))
                )
              }
              undelivered++
              const span = tracing ? Option.getOrUndefined(yield* Effect.option(Effect.currentSpan)) : undefined
              Queue.offerUnsafe(deliveries, {
                members: [...state.members.keys()],
                messages: rows.map(toMsgData),
                ...(span === undefined ? {} : { span })
              })
            }
            for (const [r, answer] of answers) {
              if (answer instanceof NotMember) yield* fail(r, answer)
              else yield* reply(r, answer)
            }
          }).pipe(
            Effect.catchCause((cause) =>
              isInvalidData(cause) ? refuseInvalid(requests, cause) : failAll(requests, cause)
            )
          )

        const handleOne = (request: Request) =>
          Effect.gen(function* () {
            const payload = request.payload as any
            switch (request.tag) {
              case "Create": {
                if (!isConversationTypeInRange(payload.conversationType)) {
                  return yield* fail(
                    request,
                    new ConversationTypeOutOfRange({ conversationType: payload.conversationType })
                  )
                }
                const sessions = [...new Set<string>(payload.sessions)]
                if (sessions.length === 0) return yield* fail(request, new EmptyMembers())
                const current = yield* load
                if (current === null) {
                  yield* store.create(id, payload.conversationType, sessions)
                  // What was just written is the whole state: the first send needs no reload.
                  const state = {
                    conversationType: payload.conversationType,
                    lastMsgId: undefined,
                    lastSeq: 0,
                    members: new Map(sessions.map((s) => [s, 0] as const))
                  }
                  loaded = { state, clock: new MsgIdClock(id, state.conversationType, undefined) }
                }
                return yield* reply(request, undefined)
              }
              case "Join":
              case "Remove": {
                const sessions = [...new Set<string>(payload.sessions)]
                if (sessions.length === 0) return yield* fail(request, new EmptyMembers())
                const current = yield* load
                if (current === null) return yield* fail(request, new ConversationNotFound({ conversationId: id }))
                const { members } = current.state
                const byBackend = payload.byBackend === true
                if (request.tag === "Join") {
                  const added = sessions.filter((s) => !members.has(s))
                  if (added.length > 0 && !byBackend) {
                    // Bans are read from SQL, not kept in memory: a join by a non-member is rare, and
                    // nothing can go stale across passivation, restarts or a shard moving.
                    const banned = yield* store.bannedAmong(id, added)
                    if (banned.length > 0) {
                      return yield* fail(
                        request,
                        new RemovedFromConversation({ conversationId: id, session: banned[0] })
                      )
                    }
                    if (publicJoin === "invite") {
                      return yield* fail(request, new JoinNeedsInvitation({ conversationId: id, session: added[0] }))
                    }
                  }
                  if (added.length > 0) {
                    yield* store.addMembers(id, added, current.state.lastSeq, byBackend)
                    for (const s of added) members.set(s, current.state.lastSeq)
                  }
                } else if (byBackend) {
                  // A kick bans every named session, members or not: the backend's word is that they
                  // stay out until it adds them again.
                  yield* store.removeMembers(id, sessions, true)
                  for (const s of sessions) members.delete(s)
                } else {
                  const removed = sessions.filter((s) => members.has(s))
                  if (removed.length > 0) {
                    yield* store.removeMembers(id, removed, false)
                    for (const s of removed) members.delete(s)
                  }
                }
                return yield* reply(request, undefined)
              }
              case "Redeliver": {
                // Starting is the point: `load` hands the resume window over again.
                yield* load
                return yield* reply(request, undefined)
              }
            }
          }).pipe(Effect.catchCause((cause) => failAll([request], cause)))

        return Queue.takeBetween(mailbox, 1, config.groupCommitMax).pipe(
          Effect.flatMap((batch) =>
            Effect.gen(function* () {
              let i = 0
              while (i < batch.length) {
                if (batch[i].tag === "Send") {
                  let j = i
                  while (j < batch.length && batch[j].tag === "Send") j++
                  yield* handleSends(batch.slice(i, j) as Array<SendRequest>)
                  i = j
                } else {
                  yield* handleOne(batch[i])
                  i++
                }
              }
              // A defect no handler caught must not end the loop (with fatal defects off, nothing
              // would restart it): whoever is still unanswered in the batch gets it (answers are
              // given once, so the others are untouched).
            }).pipe(Effect.catchCause((cause) => failAll(batch, cause)))
          ),
          Effect.forever,
          Effect.orDie
        ) as Effect.Effect<never>
      }
    }),
    // A defect answers its own request only: no restart that would replay the mailbox (see failAll).
    { maxIdleTime, disableFatalDefects: true }
  )

/** Idle conversations passivate after `QUICKIM_ENTITY_IDLE` and rebuild their state from SQL when next used. */
export const ConversationEntityLive = Layer.unwrap(Effect.map(AppConfig, (c) => entityLayer(c.entityIdle)))
