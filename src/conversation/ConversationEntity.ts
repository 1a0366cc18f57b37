/**
 * The Conversation entity: the single writer of one conversation. It keeps membership,
 * the last MsgId and the sequence in memory (rebuilt from SQL on activation) and drains its
 * mailbox in batches, so sends that arrive together share one transaction (group commit).
 * A send is answered only after its transaction committed.
 */
import {
  Cause,
  Clock,
  Duration,
  Effect,
  Fiber,
  Layer,
  Metric,
  Option,
  Queue,
  Schedule,
  Scope,
  Semaphore,
  Tracer
} from "effect"
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
import { deliveryGaps, entityActivations } from "../observability/Telemetry.ts"
import { messageSize } from "../push/Frames.ts"
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
  /** Empty: the delivery of a gap alone, to the gapped members. */
  readonly messages: ReadonlyArray<MsgData>
  /** Estimated JSON bytes of `messages` (the backlog's bound). */
  readonly bytes: number
  /** When the hand-over is given up (epoch millis): the budget after the commit. */
  readonly deadline: number
  /** The commit's span, when tracing: the hand-over continues its trace. */
  readonly span?: Tracer.Span
}

/** How long a stopping conversation waits for its hand-overs before leaving them to its next host. */
const HANDOVER_WAIT = "1 second"
const DELIVER_ATTEMPT = "5 seconds"
/** Default of `QUICKIM_DELIVERY_BACKLOG_BYTES`. */
const DELIVERY_BACKLOG_BYTES = 4 * 1024 * 1024
/** How soon a conversation reloads after a write whose outcome is unknown, and retries. */
const RELOAD_AFTER = "1 second"
/** The most messages a conversation hands over again: when re-hosted, or after writes of unknown outcome. */
const REDELIVER_MAX = 1000

/** SQLSTATE class 22, data exception: the statement's data was refused, so nothing was written. */
const isInvalidData = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((r) => {
    if (!Cause.isFailReason(r)) return false
    const e = r.error as { _tag?: unknown; reason?: { cause?: { code?: unknown } } }
    return e._tag === "SqlError" && String(e.reason?.cause?.code ?? "").startsWith("22")
  })

const sizeOf = (messages: ReadonlyArray<MsgData>) => {
  let bytes = 0
  for (const m of messages) bytes += messageSize(m)
  return bytes
}

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
      // to every member's mailbox, batch after batch, so each mailbox sees the conversation's
      // messages in commit order. A slow or absent member never delays the sender, nor the other
      // members: a member whose previous batch is still on its way (an entity message waiting for
      // its mailbox's new home) skips the next ones and is told so with the one after (`gap`).
      //
      // Resume covers a message only if it reached the mailbox within the resume window of its
      // commit (README, "Why resume loses nothing"), so every hand-over is bounded by `budget`, two
      // thirds of the window from the commit (the rest is margin for clock skew between nodes). A
      // batch that waited longer, or that does not fit the conversation's backlog
      // (QUICKIM_DELIVERY_BACKLOG_BYTES), is dropped, and its members are told of the gap instead:
      // their mailbox ends every subscription, and each connection replays from its last message.
      const budget = Math.max(1, Math.floor((Duration.toMillis(config.resumeWindow) * 2) / 3))
      const backlogMax = config.deliveryBacklogBytes ?? DELIVERY_BACKLOG_BYTES
      const deliveries = yield* Queue.unbounded<Delivery>()
      let undelivered = 0 // batches queued or being handed over
      let backlogBytes = 0 // of the batches queued
      /** Members that missed a batch: their next delivery carries `gap`. */
      const gapped = new Set<string>()
      /** Members with an entity-message delivery on its way: they skip batches until it settles. */
      const busy = new Set<string>()
      /** A delivery of nothing but the gap is queued. */
      let gapQueued = false
      /** The newest MsgId of the batches handOver has dealt with (handed, relayed, sent on, or dropped). */
      let processedThrough: string | undefined = undefined
      /**
       * Every member was handed everything up to this MsgId, or told of the gap: with hand-overs
       * outstanding when the conversation stops, its next host hands over everything after it.
       */
      let handedThrough: string | undefined = undefined
      const settledUpTo = () => {
        if (busy.size === 0 && gapped.size === 0 && processedThrough !== undefined) handedThrough = processedThrough
      }
      /** A fresh start of the hand-overs (load, create): everything up to `position` counts as handed over. */
      const handedFrom = (position: string) => {
        processedThrough = undefined
        handedThrough = position
      }
      // Closed after the hand-over wait below (scopes close last-in first-out).
      const scope = yield* Scope.fork(yield* Scope.Scope)
      /**
       * Entity-message deliveries on their way. When the conversation stops they are interrupted
       * without waiting for them: interrupting a call to a mailbox whose node died or is moving
       * waits for the cluster to tell that node, seconds in which the shard could not move. What
       * they carried is owed to the next host (the stop records how far hand-overs went).
       */
      const inFlight = new Set<Fiber.Fiber<void>>()
      yield* Scope.addFinalizer(
        scope,
        Effect.sync(() => {
          for (const fiber of inFlight) fiber.interruptUnsafe()
          inFlight.clear()
        })
      )

      /** Queues a delivery of nothing but `gap` for the gapped members that can take it now. */
      const queueGap = () => {
        if (gapQueued) return
        let waiting = false
        for (const member of gapped) {
          if (!busy.has(member)) {
            waiting = true
            break
          }
        }
        if (!waiting) return
        gapQueued = true
        undelivered++
        Queue.offerUnsafe(deliveries, { members: [], messages: [], bytes: 0, deadline: Date.now() + budget })
      }

      /**
       * Hands `parts` (a batch in consecutive parts) to one member's Mailbox entity, in the
       * background: a mailbox whose node died or that is moving answers nobody until it is hosted
       * again, so each attempt is bounded and retried until `deadline`. Missed: the member is gapped.
       */
      const deliverToEntity = (
        member: string,
        parts: ReadonlyArray<ReadonlyArray<MsgData>>,
        gap: boolean,
        deadline: number
      ) => {
        busy.add(member)
        // Carried from here on; owed again if this delivery fails. A batch skipped meanwhile (see
        // handOver) owes a new one.
        if (gap) gapped.delete(member)
        let settled = false
        const client = mailboxes(member)
        return Effect.forEach(
          parts,
          (messages, i) => client.Deliver(i === 0 && gap ? { messages, gap: true } : { messages }),
          { discard: true }
        ).pipe(
          Effect.timeout(DELIVER_ATTEMPT),
          Effect.retry({ schedule: Schedule.spaced("250 millis") }),
          Effect.timeout(Duration.millis(Math.max(0, deadline - Date.now()))),
          Effect.matchCauseEffect({
            onSuccess: () =>
              Effect.sync(() => {
                settled = true
              }),
            onFailure: (cause) =>
              Effect.sync(() => {
                settled = true
                gapped.add(member)
              }).pipe(
                Effect.andThen(Effect.logWarning("push to mailbox failed; its connections replay", cause)),
                Effect.annotateLogs({ conversationId: id, session: member })
              )
          }),
          Effect.ensuring(Effect.sync(() => {
            busy.delete(member)
            // Interrupted (the conversation stops): the batch is left to the next host (Redeliver).
            if (!settled) gapped.add(member)
            else if (gapped.has(member)) queueGap()
            else settledUpTo()
          })),
          Effect.forkDetach,
          Effect.map((fiber) => {
            inFlight.add(fiber)
            fiber.addObserver(() => inFlight.delete(fiber))
          })
        )
      }

      // A member's mailbox active in this process is called directly; mailboxes on another node
      // take the batch in that node's relay (NodeOutbox: one cluster message for many conversations),
      // and any the relay did not serve, or whose node is unknown, or that is told of a gap, an
      // entity message in the background (deliverToEntity).
      const handOver = Effect.fnUntraced(function* ({ members, messages, deadline, bytes }: Delivery) {
        backlogBytes -= bytes
        if (messages.length === 0) gapQueued = false
        else processedThrough = messages[messages.length - 1].MsgId
        if (Date.now() >= deadline) {
          // Waited out its budget in the queue (behind a slow relay): too late to be resumed safely.
          // Its members hear of the gap with the next delivery, queued now if none follows.
          for (const member of members) gapped.add(member)
          yield* Metric.update(deliveryGaps, 1)
          queueGap()
          return
        }
        // A delivery of nothing is the gap alone, for whoever still waits for it.
        const targets = messages.length === 0 ? [...gapped] : members
        const entityMessage: Array<string> = []
        let byNode: Map<string, Array<string>> | undefined = undefined
        for (const member of targets) {
          if (busy.has(member)) {
            // Its previous batch is still on its way: this one must not overtake it.
            gapped.add(member)
            continue
          }
          const gap = gapped.has(member)
          const direct = here.mailboxes.get(member)
          if (direct !== undefined) {
            if (tracing) {
              yield* Effect.sync(() => direct(messages, gap)).pipe(
                Effect.withSpan("Mailbox.deliver", { attributes: { session: member } })
              )
            } else direct(messages, gap)
            if (gap) gapped.delete(member)
            continue
          }
          const node = gap ? undefined : routes.nodeOf(member)
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
        for (let i = 0; byNode !== undefined && i < parts.length; i++) {
          const notServed = yield* outbox.deliver(byNode, parts[i])
          if (notServed.length === 0) continue
          // Not served by the relay: this part and the rest go to them as entity messages.
          const rest = parts.slice(i)
          for (const member of notServed) yield* deliverToEntity(member, rest, false, deadline)
          const left = new Set(notServed)
          const remaining = new Map<string, Array<string>>()
          for (const [node, group] of byNode) {
            const still = group.filter((m) => !left.has(m))
            if (still.length > 0) remaining.set(node, still)
          }
          byNode = remaining.size === 0 ? undefined : remaining
        }
        for (const member of entityMessage) yield* deliverToEntity(member, parts, gapped.has(member), deadline)
        queueGap()
        settledUpTo()
      })
      const offer = Effect.fnUntraced(function* (delivery: Delivery) {
        if (backlogBytes + delivery.bytes > backlogMax && Queue.sizeUnsafe(deliveries) > 0) {
          // The backlog is full (its hand-overs are slower than the conversation's commits): what is
          // queued is dropped, and its members told of the gap with their next delivery.
          for (const dropped of yield* Queue.clear(deliveries)) {
            undelivered--
            backlogBytes -= dropped.bytes
            if (dropped.messages.length === 0) gapQueued = false
            for (const member of dropped.members) gapped.add(member)
          }
          yield* Metric.update(deliveryGaps, 1)
        }
        undelivered++
        backlogBytes += delivery.bytes
        Queue.offerUnsafe(deliveries, delivery)
      })
      yield* Queue.take(deliveries).pipe(
        Effect.flatMap((delivery) =>
          (delivery.span === undefined ? handOver(delivery) : handOver(delivery).pipe(
            Effect.withSpan("Conversation.deliver", {
              parent: delivery.span,
              attributes: {
                ...aboutMessages(id, delivery.messages.map((m) => m.MsgId)),
                members: delivery.members.length
              }
            })
          )).pipe(Effect.ensuring(Effect.sync(() => undelivered--)))
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
          const stopping = Date.now()
          // Across nodes, entity-message deliveries still on their way are not waited for: they
          // wait for a mailbox whose node died or is moving (often the node this shard moves to,
          // which cannot serve it before this stop ends), and the next host hands them over again.
          yield* Effect.sleep("5 millis").pipe(
            Effect.repeat({ until: () => undelivered === 0 && (multiNode || busy.size === 0) }),
            Effect.timeout(multiNode ? HANDOVER_WAIT : "3 seconds"),
            Effect.ignore
          )
          const waited = Date.now() - stopping
          if ((undelivered === 0 && busy.size === 0 && gapped.size === 0) || !multiNode) {
            if (debug) {
              yield* Effect.logDebug("conversation stopped").pipe(Effect.annotateLogs({ conversationId: id, waited }))
            }
            return
          }
          const left = { undelivered, busy: busy.size, gapped: gapped.size, handedThrough }
          // The next host may start later than the resume window covers: it hands over everything
          // after this position however old (read when it loads), before anything new. Both writes
          // at once: the shard (and so the next host's start) waits for this finalizer.
          const record = handedThrough === undefined ? Effect.void : store.markRedeliverAfter(id, handedThrough).pipe(
            Effect.timeout("2 seconds"),
            Effect.catchCause((cause) =>
              Effect.logWarning("could not record how far hand-overs went", cause).pipe(
                Effect.annotateLogs({ conversationId: id })
              )
            )
          )
          const redeliver = self.Redeliver(undefined, { discard: true }).pipe(
            Effect.timeout("2 seconds"),
            Effect.catchCause((cause) =>
              Effect.logWarning("could not leave a redelivery for the next host", cause).pipe(
                Effect.annotateLogs({ conversationId: id })
              )
            )
          )
          yield* Effect.all([record, redeliver], { concurrency: 2, discard: true })
          if (debug) {
            yield* Effect.logDebug("conversation stopped, its hand-overs left to the next host").pipe(
              Effect.annotateLogs({ conversationId: id, waited, redelivery: Date.now() - stopping - waited, ...left })
            )
          }
        })
      )

      return (mailbox, replier) => {
        // undefined: not loaded yet (or dropped after a failed write); null: no such conversation.
        let loaded: Loaded | null | undefined = undefined
        /**
         * After a write whose outcome is unknown: the last MsgId known to be handed over ("": none).
         * The next load hands over everything after it, however old: that write may have committed.
         */
        let unknownAfter: string | undefined = undefined
        /** A reload is scheduled (see failAll). */
        let reloading = false
        // Requests and a scheduled reload take turns.
        const lock = Semaphore.makeUnsafe(1)

        const load = Effect.gen(function* () {
          if (loaded !== undefined) return loaded
          const state = yield* store.load(id)
          const next = Option.match(state, {
            onNone: () => null,
            onSome: (s) => ({ state: { ...s }, clock: new MsgIdClock(id, s.conversationType, s.lastMsgId) })
          })
          // Loaded only once the hand-over is queued: a failure here leaves the next load to do it.
          if (next !== null) {
            // After an unknown outcome here, or a previous host's stop with hand-overs outstanding,
            // from the earlier of the two positions.
            const marks = [unknownAfter, next.state.redeliverAfter].filter((m) => m !== undefined).sort()
            const from = yield* redeliverRecent(next.state, marks[0])
            handedFrom(from ?? next.state.lastMsgId ?? "")
          }
          loaded = next
          unknownAfter = undefined
          return next
        })

        /**
         * The previous host of this conversation may have died between a commit and its hand-over
         * to the members' mailboxes. So a conversation that had messages within the resume window
         * hands those over again before anything new, in order; connections drop what they already
         * have by MsgId (Feed, Mailbox), and nothing new can overtake what was missed. With `after`
         * (the last position known to be handed over), from there if earlier, however old.
         * Returns the position it hands over from, if it hands over anything.
         */
        const redeliverRecent = (state: Loaded["state"], after: string | undefined) =>
          Effect.gen(function* () {
            if (state.lastMsgId === undefined) return undefined
            const now = yield* Clock.currentTimeMillis
            const windowFloor = floorOf(state.lastMsgId, config.resumeWindow)
            const floor = after !== undefined && after < windowFloor ? after : windowFloor
            if (after === undefined && decode(state.lastMsgId).millis < now - Duration.toMillis(config.resumeWindow)) {
              return undefined
            }
            // The newest of the window: what a dead host may not have handed over is its newest
            // messages (a busy conversation may have more in the window than a hand-over should carry).
            const recent = yield* store.newestAfter(id, floor, REDELIVER_MAX)
            if (recent.length === 0) return undefined
            // Seqs are gapless in MsgId order: recent[i] has seq firstSeq + i. A member gets only
            // what was sent after it joined.
            const firstSeq = state.lastSeq - recent.length + 1
            const bySlice = new Map<number, Array<string>>()
            for (const [member, joinedSeq] of state.members) {
              const from = Math.max(0, joinedSeq - firstSeq + 1)
              if (from < recent.length) bySlice.set(from, [...(bySlice.get(from) ?? []), member])
            }
            // Old by nature, so each gets the budget from now.
            const deadline = (yield* Clock.currentTimeMillis) + budget
            for (const [from, members] of bySlice) {
              const messages = recent.slice(from)
              yield* offer({ members, messages, bytes: sizeOf(messages), deadline })
            }
            return floor
          })

        const reply = (request: Request, value: unknown) => replier.succeed(request as any, value as any)
        const fail = (request: Request, error: unknown) => replier.fail(request as any, error as any)

        /**
         * A write whose outcome is unknown: reload state before the next one, and answer
         * DatabaseUnavailable (503 / 10006 at the edge: retry) when the database could not be reached
         * or the connection broke, a defect (10002) for anything else. The entity runs with fatal defects off, so the answer is final: the
         * cluster does not restart the entity and replay these requests (which, for a request that
         * can never succeed, went on forever and left the conversation answering nobody).
         *
         * The write may have committed all the same (the connection was lost after COMMIT). So the
         * state is reloaded soon, whether or not another request comes (a database outage ends, and
         * the sender may never retry), and everything after the last position known to be handed
         * over goes to the members then: a message that exists reaches every member.
         */
        const failAll = (requests: ReadonlyArray<Request>, cause: Cause.Cause<unknown>) =>
          Effect.gen(function* () {
            if (Cause.hasInterruptsOnly(cause)) return yield* Effect.failCause(cause as Cause.Cause<never>)
            if (loaded) unknownAfter ??= loaded.state.lastMsgId ?? ""
            loaded = undefined
            if (unknownAfter !== undefined && !reloading) {
              reloading = true
              yield* Effect.sleep(RELOAD_AFTER).pipe(
                Effect.andThen(lock.withPermit(load)),
                Effect.retry({ schedule: Schedule.spaced(RELOAD_AFTER) }),
                Effect.ensuring(Effect.sync(() => (reloading = false))),
                Effect.forkIn(scope)
              )
            }
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
              yield* store.appendMessages(id, rows)
              const last = rows[rows.length - 1]
              state.lastSeq = last.seq
              state.lastMsgId = last.msg_id
              if (debug) {
                yield* Effect.logDebug("messages committed").pipe(
                  Effect.annotateLogs(aboutMessages(id, rows.map((r) => r.msg_id)))
                )
              }
              const span = tracing ? Option.getOrUndefined(yield* Effect.option(Effect.currentSpan)) : undefined
              const messages = rows.map(toMsgData)
              yield* offer({
                members: [...state.members.keys()],
                messages,
                bytes: sizeOf(messages),
                deadline: now + budget,
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
                    members: new Map(sessions.map((s) => [s, 0] as const)),
                    redeliverAfter: undefined
                  }
                  loaded = { state, clock: new MsgIdClock(id, state.conversationType, undefined) }
                  handedFrom("")
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
            lock.withPermit(
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
            )
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
